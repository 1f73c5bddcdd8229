//! `wrenn`: the one user-facing binary. Parses the command line and hands each subcommand to
//! the library that owns it (`image` → wrenn-image, `agent` → wrenn-agent, `server` →
//! wrenn-cp, the client commands `login`, `sandbox`, `exec`, ... → wrenn-cli). `up` and
//! `bench` join as further variants of [`Command`].

mod agent;
mod image;
mod server;
mod up;

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
    /// Run the host agent: microVM sandboxes on this machine, driven by the control plane.
    Agent(agent::AgentArgs),
    /// Run the control plane: accounts, teams, API keys and the public API.
    Server(server::ServerArgs),
    /// Everything on this machine: image, control plane, agent, admin account and API key.
    Up(up::UpArgs),
    /// Client commands against a control plane (login, keys, sandbox, exec, shell, cp, ...).
    #[command(flatten)]
    Client(wrenn_cli::Command),
}

fn main() -> anyhow::Result<()> {
    // A `.env` in the working directory feeds the environment-backed flags.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        anyhow::bail!(".env: {e}");
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Image { command } => {
            init_tracing("warn");
            image::run(command)
        }
        Command::Agent(args) => {
            init_tracing("info");
            agent::run(args)
        }
        Command::Server(args) => {
            init_tracing("info");
            server::run(args)
        }
        Command::Up(args) => {
            init_tracing("warn");
            up::run(args)
        }
        // The exit code is the remote command's for `exec` and `shell`.
        Command::Client(command) => std::process::exit(wrenn_cli::run(command)),
    }
}

/// Logs go to stderr at `default` unless `RUST_LOG` asks otherwise.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
