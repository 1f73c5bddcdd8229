//! Directory watches: inotify events (via `notify`) mapped to E2B's `FilesystemEvent`, for
//! `WatchDir` streams and the polled watchers of `CreateWatcher`/`GetWatcherEvents`.
//!
//! Event mapping follows upstream envd (fsnotify): create → CREATE, data change → WRITE,
//! attribute change → CHMOD, delete → REMOVE, moved away → RENAME (old name), moved in →
//! CREATE (new name). Names are relative to the watched directory (`.` for the directory
//! itself). Dropping the returned watcher closes its inotify instance.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use wrenn_proto::filesystem::{EventType, FilesystemEvent};

use super::entry::entry_info;
use super::error::FsError;

/// Header carrying the client's keepalive interval in seconds.
pub const KEEPALIVE_HEADER: &str = "keepalive-ping-interval";

/// Events a polled watcher holds between two `GetWatcherEvents`; later ones are dropped.
const MAX_BUFFERED_EVENTS: usize = 10_000;

// Filesystem magic numbers (linux/magic.h) of network and FUSE mounts, where inotify
// misses remote changes.
const NFS_SUPER_MAGIC: u32 = 0x6969;
const CIFS_MAGIC: u32 = 0xFF53_4D42;
const SMB_SUPER_MAGIC: u32 = 0x517B;
const SMB2_MAGIC: u32 = 0xFE53_4D42;
const FUSE_SUPER_MAGIC: u32 = 0x6573_5546;

/// What to watch and how to report it.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub root: PathBuf,
    pub recursive: bool,
    pub include_entry: bool,
    pub allow_network_mounts: bool,
}

/// The keepalive interval a streaming request asks for, else `default`.
pub fn keepalive_interval(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get(KEEPALIVE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&secs| secs > 0)
        .map_or(default, Duration::from_secs)
}

/// Starts watching `spec.root`; `on_event` runs on the watcher's thread for every event,
/// and once with an error if the watch breaks (inotify watch limit reached).
pub fn start(
    spec: &WatchSpec,
    mut on_event: impl FnMut(Result<FilesystemEvent, FsError>) + Send + 'static,
) -> Result<RecommendedWatcher, FsError> {
    check_root(&spec.root, spec.allow_network_mounts)?;
    let root = spec.root.clone();
    let include_entry = spec.include_entry;
    let watch_error = |source| FsError::Watch {
        path: spec.root.clone(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(event) => {
                if event.need_rescan() {
                    tracing::warn!(root = %root.display(), "inotify queue overflowed; events were lost");
                }
                for e in map_event(&root, include_entry, &event) {
                    on_event(Ok(e));
                }
            }
            Err(source) if matches!(source.kind, notify::ErrorKind::MaxFilesWatch) => {
                on_event(Err(FsError::Watch {
                    path: root.clone(),
                    source,
                }));
            }
            Err(e) => tracing::warn!(root = %root.display(), error = %e, "watch error"),
        }
    })
    .map_err(watch_error)?;
    let mode = if spec.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    watcher.watch(&spec.root, mode).map_err(watch_error)?;
    Ok(watcher)
}

/// `root` must be a directory (or a link to one) and, unless allowed, not a network mount.
fn check_root(root: &Path, allow_network_mounts: bool) -> Result<(), FsError> {
    let meta = fs::metadata(root).map_err(FsError::io("watch", root))?;
    if !meta.is_dir() {
        return Err(FsError::NotDir(root.to_path_buf()));
    }
    if !allow_network_mounts {
        let st = nix::sys::statfs::statfs(root)
            .map_err(|e| FsError::io("statfs", root)(std::io::Error::from(e)))?;
        // f_type is a C long holding a 32-bit magic number.
        let magic = st.filesystem_type().0 as u64 as u32;
        if matches!(
            magic,
            NFS_SUPER_MAGIC | CIFS_MAGIC | SMB_SUPER_MAGIC | SMB2_MAGIC | FUSE_SUPER_MAGIC
        ) {
            return Err(FsError::NetworkMount(root.to_path_buf()));
        }
    }
    Ok(())
}

fn event_type(kind: &EventKind) -> Option<EventType> {
    match kind {
        EventKind::Create(_) => Some(EventType::EVENT_TYPE_CREATE),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(EventType::EVENT_TYPE_RENAME),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(EventType::EVENT_TYPE_CREATE),
        // `Both` repeats a From/To pair that was already reported.
        EventKind::Modify(ModifyKind::Name(_)) => None,
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(EventType::EVENT_TYPE_CHMOD),
        EventKind::Modify(_) => Some(EventType::EVENT_TYPE_WRITE),
        EventKind::Remove(_) => Some(EventType::EVENT_TYPE_REMOVE),
        EventKind::Access(_) | EventKind::Any | EventKind::Other => None,
    }
}

fn map_event(root: &Path, include_entry: bool, event: &notify::Event) -> Vec<FilesystemEvent> {
    let Some(ty) = event_type(&event.kind) else {
        return Vec::new();
    };
    event
        .paths
        .iter()
        .map(|path| {
            let name = match path.strip_prefix(root) {
                Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
                Ok(rel) => rel.to_string_lossy().into_owned(),
                Err(_) => path.to_string_lossy().into_owned(),
            };
            let entry = if include_entry {
                // Only while the path still exists (not after REMOVE/RENAME).
                entry_info(path).ok()
            } else {
                None
            };
            FilesystemEvent {
                name,
                r#type: ty.into(),
                entry: entry.into(),
                ..Default::default()
            }
        })
        .collect()
}

#[derive(Default)]
struct Buffer {
    events: Vec<FilesystemEvent>,
    dropped: usize,
    failure: Option<String>,
}

struct Polled {
    // Held to keep the inotify watch alive; dropping it stops the watch.
    _watcher: RecommendedWatcher,
    buffer: Arc<Mutex<Buffer>>,
}

/// Registry of polled watchers (CreateWatcher / GetWatcherEvents / RemoveWatcher).
#[derive(Default)]
pub struct Watchers {
    inner: Mutex<HashMap<String, Polled>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchers {
    /// Starts a polled watcher and returns its id. Blocks while the watch is set up.
    pub fn create(&self, spec: &WatchSpec) -> Result<String, FsError> {
        let buffer = Arc::new(Mutex::new(Buffer::default()));
        let sink = buffer.clone();
        let watcher = start(spec, move |item| {
            let mut b = lock(&sink);
            match item {
                Ok(_) if b.events.len() >= MAX_BUFFERED_EVENTS => {
                    if b.dropped == 0 {
                        tracing::warn!("polled watcher buffer full; dropping events");
                    }
                    b.dropped += 1;
                }
                Ok(event) => b.events.push(event),
                Err(e) => b.failure = Some(e.to_string()),
            }
        })?;
        let id = uuid::Uuid::new_v4().to_string();
        lock(&self.inner).insert(
            id.clone(),
            Polled {
                _watcher: watcher,
                buffer,
            },
        );
        Ok(id)
    }

    /// The events gathered since the last call, which are then forgotten.
    pub fn take_events(&self, id: &str) -> Result<Vec<FilesystemEvent>, FsError> {
        let buffer = lock(&self.inner)
            .get(id)
            .map(|p| p.buffer.clone())
            .ok_or_else(|| FsError::UnknownWatcher(id.to_string()))?;
        let mut b = lock(&buffer);
        if let Some(message) = b.failure.take() {
            return Err(FsError::WatcherFailed(message));
        }
        b.dropped = 0;
        Ok(std::mem::take(&mut b.events))
    }

    /// Stops and forgets a watcher.
    pub fn remove(&self, id: &str) -> Result<(), FsError> {
        // Dropped outside the registry lock.
        let removed = lock(&self.inner).remove(id);
        removed
            .map(drop)
            .ok_or_else(|| FsError::UnknownWatcher(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_header() {
        let d = Duration::from_secs(90);
        let mut h = HeaderMap::new();
        assert_eq!(keepalive_interval(&h, d), d);
        h.insert(KEEPALIVE_HEADER, "5".parse().unwrap());
        assert_eq!(keepalive_interval(&h, d), Duration::from_secs(5));
        h.insert(KEEPALIVE_HEADER, "0".parse().unwrap());
        assert_eq!(keepalive_interval(&h, d), d);
        h.insert(KEEPALIVE_HEADER, "soon".parse().unwrap());
        assert_eq!(keepalive_interval(&h, d), d);
    }

    #[test]
    fn names_are_relative_to_the_root() {
        let ev = notify::Event::new(EventKind::Create(notify::event::CreateKind::File))
            .add_path("/w/a/b.txt".into());
        let out = map_event(Path::new("/w"), false, &ev);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "a/b.txt");
        assert_eq!(out[0].r#type, EventType::EVENT_TYPE_CREATE);
        let moved = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/w/x".into())
            .add_path("/w/y".into());
        assert!(map_event(Path::new("/w"), false, &moved).is_empty());
    }
}
