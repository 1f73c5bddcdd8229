//! The one error type of the image builder.

use std::io;
use std::path::PathBuf;

use crate::prereq::Prerequisite;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "missing prerequisites: {}; install them with `apt-get install {}`",
        .0.iter().map(|p| format!("{} (package {})", p.command, p.package)).collect::<Vec<_>>().join(", "),
        crate::prereq::packages(.0).join(" ")
    )]
    MissingPrerequisites(Vec<Prerequisite>),

    #[error("building an image needs root (debootstrap, chroot and device nodes do)")]
    NotRoot,

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}){}", tail_suffix(.output))]
    Command {
        command: String,
        status: String,
        output: String,
    },

    #[error("apt knows no installable version of {package}: run `apt-get update` and try again")]
    NoCandidate { package: String },

    #[error(
        "cannot download {package} (if the mirror no longer has this version, run `apt-get update`): {detail}"
    )]
    AptDownload { package: String, detail: String },

    #[error("unexpected apt metadata for {package}: {detail}")]
    AptMetadata { package: String, detail: String },

    #[error("invalid image inputs: {0}")]
    BadInputs(String),

    #[error("kernel {release}: {detail}")]
    Kernel { release: String, detail: String },

    #[error("kernel module {module} is neither built into kernel {release} nor shipped with it")]
    ModuleNotFound { module: String, release: String },

    #[error("debootstrap failed ({status}); full log: {}{}", .log.display(), tail_suffix(.tail))]
    Debootstrap {
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("the envd binary {} does not run in the guest root: {detail}", .path.display())]
    EnvdUnusable { path: PathBuf, detail: String },

    #[error("the root filesystem holds {content} bytes, more than the image size {size} allows")]
    ImageTooSmall { content: u64, size: u64 },

    #[error("manifest {}: {source}", .path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("refusing to delete {}: something is still mounted below it", .0.display())]
    StillMounted(PathBuf),
}

fn tail_suffix(text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", text.trim_end())
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Adds what was being done to an `io::Error`.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| ImageError::Io {
            what: what(),
            source,
        })
    }
}
