//! `filesystem.Filesystem`: stat, list, mkdir, move, remove and directory watches.

mod entry;
mod error;
mod ops;
mod service;
mod watch;

pub use entry::{METADATA_XATTR_PREFIX, entry_info};
pub use error::FsError;
pub use service::FilesystemService;
pub use watch::{KEEPALIVE_HEADER, Watchers, keepalive_interval};
