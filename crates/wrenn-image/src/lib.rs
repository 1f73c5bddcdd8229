//! wrenn-image: builds Wrenn's guest templates from Debian packages only.
//!
//! It owns everything about making a template under the files root
//! (`AGENT_FILES_ROOTDIR`): resolving and fetching Debian's cloud kernel and busybox,
//! debootstrapping the root tree (cached under `WRENN_CACHE` by its own inputs), adding the
//! default user, the guest init and envd, generating the initramfs, packing the raw ext4
//! image, and the manifest plus the content hash that makes an unchanged rebuild instant.
//! It must not boot, run or track sandboxes (that is the host agent's job), nor download
//! anything but Debian packages through apt and debootstrap.

pub mod apt;
pub mod build;
pub mod cache;
pub mod cmd;
pub mod debootstrap;
pub mod error;
pub mod fsutil;
pub mod initramfs;
pub mod inputs;
pub mod kernel;
pub mod layout;
pub mod manifest;
pub mod memo;
pub mod prereq;
pub mod progress;
pub mod rootfs;

pub use build::{BuildOptions, BuildOutcome, build};
pub use error::ImageError;
pub use layout::Layout;
pub use manifest::Manifest;
pub use progress::ProgressMode;
