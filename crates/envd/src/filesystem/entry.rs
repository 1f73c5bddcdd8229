//! Building `EntryInfo` from a path's metadata.
//!
//! Symlinks follow upstream envd: `type` and `mode` describe the link's target and
//! `is_symlink` marks the link; `symlink_target` is the fully resolved target path (the raw
//! link text when it does not resolve); `size`, `permissions` (`lrwxrwxrwx`) and
//! `modified_time` are the link's own. A dangling link has type `FILE_TYPE_SYMLINK`, so
//! SDKs still list it (as a symlink) instead of dropping an UNSPECIFIED entry.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use buffa_types::google::protobuf::Timestamp;
use nix::unistd::{Gid, Uid};
use wrenn_proto::filesystem::{EntryInfo, FileType};

use crate::users::User;

/// Prefix of the extended attributes that hold file metadata (`X-Metadata-<key>` on upload).
pub const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// The entry at `path` (not following a final symlink except to describe its target).
pub fn entry_info(path: &Path) -> io::Result<EntryInfo> {
    let meta = fs::symlink_metadata(path)?;
    Ok(entry_from_metadata(path, &meta))
}

/// Builds the entry for `path` from its `lstat` metadata.
pub fn entry_from_metadata(path: &Path, meta: &Metadata) -> EntryInfo {
    let is_symlink = meta.file_type().is_symlink();
    let (r#type, mode, symlink_target) = if is_symlink {
        match fs::metadata(path) {
            Ok(target) => (
                file_type(&target),
                target.mode() & 0o7777,
                fs::canonicalize(path)
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned()),
            ),
            // Dangling (or looping) link: describe the link itself.
            Err(_) => (
                FileType::FILE_TYPE_SYMLINK,
                meta.mode() & 0o7777,
                fs::read_link(path)
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned()),
            ),
        }
    } else {
        (file_type(meta), meta.mode() & 0o7777, None)
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string());
    EntryInfo {
        name,
        r#type: r#type.into(),
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(meta.size()).unwrap_or(i64::MAX),
        mode,
        permissions: permissions_string(meta.mode()),
        owner: User::user_name(Uid::from_raw(meta.uid())),
        group: User::group_name(Gid::from_raw(meta.gid())),
        modified_time: Timestamp::from_unix(meta.mtime(), meta.mtime_nsec() as i32).into(),
        symlink_target,
        metadata: read_metadata(path, is_symlink).into_iter().collect(),
        is_symlink,
        ..Default::default()
    }
}

fn file_type(meta: &Metadata) -> FileType {
    let ft = meta.file_type();
    if ft.is_file() {
        FileType::FILE_TYPE_FILE
    } else if ft.is_dir() {
        FileType::FILE_TYPE_DIRECTORY
    } else if ft.is_symlink() {
        FileType::FILE_TYPE_SYMLINK
    } else {
        FileType::FILE_TYPE_UNSPECIFIED
    }
}

/// `ls -l` style mode string, e.g. `-rw-r--r--`, `drwxrwxrwt`, `lrwxrwxrwx`.
pub fn permissions_string(st_mode: u32) -> String {
    let kind = match st_mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let bit = |mask: u32, c: char| if st_mode & mask != 0 { c } else { '-' };
    // The execute slot also shows setuid/setgid/sticky: lower case when executable too.
    let exec = |x: u32, special: u32, set: char, unset: char| match (
        st_mode & x != 0,
        st_mode & special != 0,
    ) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .into_iter()
    .collect()
}

/// `user.e2b.<key>` extended attributes as `<key> → value`. Missing xattr support, or
/// unreadable attributes, simply yield no metadata.
fn read_metadata(path: &Path, is_symlink: bool) -> Vec<(String, String)> {
    // Only regular files and directories carry user.* xattrs; on a symlink the kernel
    // refuses them, so don't follow it to report the target's metadata as the link's.
    if is_symlink {
        return Vec::new();
    }
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    names
        .filter_map(|name| {
            let key = name
                .to_str()?
                .strip_prefix(METADATA_XATTR_PREFIX)?
                .to_string();
            let value = xattr::get(path, &name).ok().flatten()?;
            Some((key, String::from_utf8_lossy(&value).into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings() {
        assert_eq!(permissions_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(permissions_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(permissions_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx");
        assert_eq!(permissions_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(permissions_string(libc::S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(permissions_string(libc::S_IFREG | 0o2644), "-rw-r-Sr--");
        assert_eq!(permissions_string(libc::S_IFDIR | 0o1770), "drwxrwx--T");
    }
}
