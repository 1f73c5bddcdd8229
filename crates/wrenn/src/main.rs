//! `wrenn`: the one user-facing binary. Parses the command line and hands each subcommand to
//! the library that owns it (`image` → wrenn-image). `server`, `agent`, `up` and `bench`
//! join as further variants of [`Command`].

mod image;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wrenn",
    version,
    about = "Wrenn: microVM sandboxes on your own machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Guest images (templates): kernel, initramfs and root filesystem.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
}

fn main() -> anyhow::Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Image { command } => image::run(command),
    }
}

/// Logs go to stderr, quiet unless `RUST_LOG` asks: progress is shown separately.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
