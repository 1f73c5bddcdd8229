//! `wrenn image ...`: flags to [`wrenn_image::BuildOptions`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use wrenn_image::build::{DEFAULT_MIRROR, DEFAULT_SUITE};
use wrenn_image::inputs::Inputs;
use wrenn_image::{BuildOptions, ProgressMode};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a template from Debian packages (instant when nothing changed).
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Files root: kernels/ and images/<template>/ are written below it.
    #[arg(long, env = "AGENT_FILES_ROOTDIR", default_value = wrenn_image::layout::DEFAULT_ROOT)]
    root: PathBuf,
    /// Cache for debootstrap trees, downloaded packages and logs.
    #[arg(long, env = "WRENN_CACHE", default_value = wrenn_image::layout::DEFAULT_CACHE)]
    cache: PathBuf,
    /// Template name.
    #[arg(long, default_value = "base")]
    template: String,
    /// Read the template's inputs from this directory (layout of the repo's images/base/)
    /// instead of the copy compiled into this binary.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// The envd binary to inject [default: `envd` next to this executable].
    #[arg(long, env = "WRENN_ENVD")]
    envd: Option<PathBuf>,
    /// Size of the sparse root image (e.g. 5GiB, 10G, 2048MiB).
    #[arg(long, default_value = "5GiB")]
    size: bytesize::ByteSize,
    /// Debian suite for debootstrap.
    #[arg(long, default_value = DEFAULT_SUITE)]
    suite: String,
    /// Debian mirror for debootstrap.
    #[arg(long, default_value = DEFAULT_MIRROR)]
    mirror: String,
    /// Rebuild even when the image is up to date.
    #[arg(long)]
    force: bool,
    /// Plain progress lines instead of spinners.
    #[arg(long)]
    plain: bool,
}

pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Build(args) => build(args),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let envd = match args.envd {
        Some(p) => p,
        None => sibling_envd()?,
    };
    let inputs = match &args.inputs {
        Some(dir) => {
            Inputs::from_dir(dir).with_context(|| format!("inputs in {}", dir.display()))?
        }
        None if args.template == "base" => Inputs::embedded_base(),
        None => anyhow::bail!(
            "template {} has no built-in inputs: pass --inputs",
            args.template
        ),
    };
    let mut opts = BuildOptions::base(envd);
    opts.root = args.root;
    opts.cache = args.cache;
    opts.template = args.template;
    opts.inputs = inputs;
    opts.image_size = args.size.as_u64();
    opts.suite = args.suite;
    opts.mirror = args.mirror;
    opts.force = args.force;
    opts.progress = if args.plain {
        ProgressMode::Plain
    } else {
        ProgressMode::Auto
    };

    let outcome = wrenn_image::build(&opts).context("wrenn image build")?;
    let m = &outcome.manifest;
    let root = &outcome.layout.root;
    println!("template  {}", m.template);
    println!(
        "kernel    {} ({})",
        root.join(&m.kernel.vmlinuz).display(),
        m.kernel.release
    );
    println!("initrd    {}", root.join(&m.kernel.initrd).display());
    println!("rootfs    {}", root.join(&m.rootfs.path).display());
    println!("envd      {}", m.envd.version);
    println!("inputs    {}", m.inputs_hash);
    println!("took      {:.1}s", outcome.elapsed.as_secs_f64());
    Ok(())
}

/// `envd` beside the running `wrenn`: both are built into the same target directory and
/// installed side by side.
pub(crate) fn sibling_envd() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the wrenn executable")?;
    let envd = exe.with_file_name("envd");
    anyhow::ensure!(
        envd.is_file(),
        "no envd binary next to {} (build it with `cargo build -p envd`, or pass --envd)",
        exe.display()
    );
    Ok(envd)
}
