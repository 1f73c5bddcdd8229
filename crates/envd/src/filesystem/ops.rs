//! Blocking filesystem operations behind the unary RPCs. envd runs as root, like upstream
//! envd: operations are not permission-checked as the acting user, but everything envd
//! creates is owned by that user.

use std::fs;
use std::io;
use std::os::unix::fs as unix_fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Uid};
use wrenn_proto::filesystem::EntryInfo;

use super::entry::{entry_from_metadata, entry_info};
use super::error::FsError;

/// Who owns what envd creates.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: Uid,
    pub gid: Gid,
}

pub fn stat(path: &Path) -> Result<EntryInfo, FsError> {
    entry_info(path).map_err(FsError::io("stat", path))
}

/// Creates `path` and its missing parents, all owned by `owner`.
pub fn make_dir(path: &Path, owner: Owner) -> Result<EntryInfo, FsError> {
    match fs::symlink_metadata(path) {
        Ok(_) => return Err(FsError::Exists(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsError::io("stat", path)(e)),
    }
    create_dirs(path, owner)?;
    stat(path)
}

/// Creates the missing directories of `path` (like `mkdir -p`), chowning each new one.
pub fn create_dirs(path: &Path, owner: Owner) -> Result<(), FsError> {
    let mut missing = Vec::new();
    for dir in path.ancestors() {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(FsError::NotDir(dir.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(dir),
            Err(e) => return Err(FsError::io("stat", dir)(e)),
        }
    }
    for dir in missing.into_iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => chown(dir, owner)?,
            // Created concurrently: fine as long as it is a directory.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(FsError::io("mkdir", dir)(e)),
        }
    }
    Ok(())
}

fn chown(path: &Path, owner: Owner) -> Result<(), FsError> {
    unix_fs::lchown(path, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))
        .map_err(FsError::io("chown", path))
}

/// Renames `source` to `destination`, creating the destination's parents. Across
/// filesystems (EXDEV) it copies, then removes the source, like `mv`.
pub fn rename(source: &Path, destination: &Path, owner: Owner) -> Result<EntryInfo, FsError> {
    fs::symlink_metadata(source).map_err(FsError::io("stat", source))?;
    if let Some(parent) = destination.parent() {
        create_dirs(parent, owner)?;
    }
    match fs::rename(source, destination) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => move_across(source, destination)?,
        Err(e) => {
            return Err(FsError::Io {
                op: "move",
                path: source.to_path_buf(),
                source: io::Error::new(e.kind(), format!("to {}: {e}", destination.display())),
            });
        }
    }
    stat(destination)
}

/// Moves between filesystems: copy, then remove the source. Like rename, a file replaces
/// an existing non-directory; a directory never replaces anything. A failed copy is
/// removed again, leaving the source untouched.
fn move_across(source: &Path, destination: &Path) -> Result<(), FsError> {
    let source_is_dir = fs::symlink_metadata(source)
        .map_err(FsError::io("stat", source))?
        .is_dir();
    match fs::symlink_metadata(destination) {
        Ok(_) if source_is_dir => return Err(FsError::Exists(destination.to_path_buf())),
        Ok(m) if m.is_dir() => {
            return Err(FsError::io("move", destination)(
                io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        // Replaced, as rename would; removed first so a symlink there isn't followed.
        Ok(_) => fs::remove_file(destination).map_err(FsError::io("remove", destination))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsError::io("stat", destination)(e)),
    }
    if let Err(e) = copy_tree(source, destination) {
        if let Err(cleanup) = remove(destination)
            && !cleanup.is_not_found()
        {
            tracing::warn!(error = %cleanup, "removing a partial cross-filesystem copy");
        }
        return Err(e);
    }
    remove(source)
}

/// Copies a file, symlink or directory tree, keeping modes and ownership.
fn copy_tree(source: &Path, destination: &Path) -> Result<(), FsError> {
    let meta = fs::symlink_metadata(source).map_err(FsError::io("stat", source))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(source).map_err(FsError::io("readlink", source))?;
        unix_fs::symlink(target, destination).map_err(FsError::io("symlink", destination))?;
    } else if ft.is_dir() {
        fs::create_dir(destination).map_err(FsError::io("mkdir", destination))?;
        for child in fs::read_dir(source).map_err(FsError::io("list", source))? {
            let child = child.map_err(FsError::io("list", source))?;
            copy_tree(&child.path(), &destination.join(child.file_name()))?;
        }
        fs::set_permissions(destination, meta.permissions())
            .map_err(FsError::io("chmod", destination))?;
    } else if ft.is_file() {
        fs::copy(source, destination).map_err(FsError::io("copy", source))?;
    } else {
        // Opening a FIFO or device to copy it would block or read a device.
        return Err(FsError::io("copy", source)(io::Error::new(
            io::ErrorKind::Unsupported,
            "special files cannot be moved across filesystems",
        )));
    }
    unix_fs::lchown(destination, Some(meta.uid()), Some(meta.gid()))
        .map_err(FsError::io("chown", destination))
}

/// Entries up to `depth` levels below `path` (a directory, or a link to one), without
/// following symlinked directories below it.
pub fn list_dir(path: &Path, depth: u32) -> Result<Vec<EntryInfo>, FsError> {
    let meta = fs::metadata(path).map_err(FsError::io("list", path))?;
    if !meta.is_dir() {
        return Err(FsError::NotDir(path.to_path_buf()));
    }
    let walker = walkdir::WalkDir::new(path)
        .min_depth(1)
        .max_depth(depth.max(1) as usize)
        .follow_links(false)
        .sort_by_file_name();
    let mut entries = Vec::new();
    for item in walker {
        match item {
            Ok(item) => match item.metadata() {
                Ok(meta) => entries.push(entry_from_metadata(item.path(), &meta)),
                // Removed between reading the directory and looking at the entry.
                Err(e) if e.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound) => {}
                Err(e) => return Err(walk_error(path, e)),
            },
            Err(e) if e.depth() > 0 && is_vanished(&e) => {}
            Err(e) => return Err(walk_error(path, e)),
        }
    }
    Ok(entries)
}

fn is_vanished(e: &walkdir::Error) -> bool {
    e.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound)
}

fn walk_error(root: &Path, e: walkdir::Error) -> FsError {
    let path = e
        .path()
        .map_or_else(|| root.to_path_buf(), Path::to_path_buf);
    let source = e
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("filesystem loop"));
    FsError::Io {
        op: "list",
        path,
        source,
    }
}

/// Removes a file, symlink or whole directory tree.
pub fn remove(path: &Path) -> Result<(), FsError> {
    let meta = fs::symlink_metadata(path).map_err(FsError::io("remove", path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .map_err(FsError::io("remove", path))
}
