//! `filesystem.Filesystem` against the real envd in its sandbox.
//!
//! Fixtures are made from the test process through `/proc/<envd pid>/root`, i.e. inside the
//! sandbox's own private `/tmp` and `/home`, so these tests don't depend on the process
//! service.
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Envd;
use connectrpc::client::{CallOptions, HttpClient};
use connectrpc::{ConnectError, ErrorCode};
use tokio::sync::mpsc;
use wrenn_proto::filesystem::watch_dir_response::Event;
use wrenn_proto::filesystem::*;

type Fs = FilesystemClient<HttpClient>;

/// The host path of `path` inside the sandbox of `envd`.
fn host(envd: &Envd, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root{path}", envd.host_pid()))
}

/// uid/gid of the sandbox's `user` account.
fn sandbox_user(envd: &Envd) -> (u32, u32) {
    let passwd = std::fs::read_to_string(host(envd, "/etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("user:"))
        .expect("sandbox has a `user` account");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

async fn stat(fs: &Fs, path: &str) -> Result<EntryInfo, ConnectError> {
    let r = fs
        .stat(StatRequest {
            path: path.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_owned().entry.into_option().expect("stat entry"))
}

async fn list(fs: &Fs, path: &str, depth: u32) -> Result<Vec<EntryInfo>, ConnectError> {
    let r = fs
        .list_dir(ListDirRequest {
            path: path.into(),
            depth,
            ..Default::default()
        })
        .await?;
    Ok(r.into_owned().entries)
}

async fn make_dir(fs: &Fs, path: &str) -> Result<EntryInfo, ConnectError> {
    let r = fs
        .make_dir(MakeDirRequest {
            path: path.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_owned().entry.into_option().expect("mkdir entry"))
}

async fn remove(fs: &Fs, path: &str) -> Result<(), ConnectError> {
    fs.remove(RemoveRequest {
        path: path.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn rename(fs: &Fs, source: &str, destination: &str) -> Result<EntryInfo, ConnectError> {
    let r = fs
        .r#move(MoveRequest {
            source: source.into(),
            destination: destination.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_owned().entry.into_option().expect("move entry"))
}

fn code<T: std::fmt::Debug>(r: Result<T, ConnectError>) -> ErrorCode {
    r.expect_err("expected an error").code
}

fn names(entries: &[EntryInfo]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn stat_describes_files_and_missing_is_not_found() {
    let envd = Envd::start().await;
    let fs = envd.fs();
    let dir = host(&envd, "/tmp/st");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.txt"), "hello").unwrap();
    std::fs::set_permissions(dir.join("a.txt"), PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(dir.join("suid"), "x").unwrap();
    std::fs::set_permissions(dir.join("suid"), PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::create_dir(dir.join("sticky")).unwrap();
    std::fs::set_permissions(dir.join("sticky"), PermissionsExt::from_mode(0o1777)).unwrap();

    let e = stat(&fs, "/tmp/st/a.txt").await.unwrap();
    assert_eq!(e.name, "a.txt");
    assert_eq!(e.path, "/tmp/st/a.txt");
    assert_eq!(e.r#type, FileType::FILE_TYPE_FILE);
    assert_eq!(e.size, 5);
    assert_eq!(e.mode, 0o640);
    assert_eq!(e.permissions, "-rw-r-----");
    assert_eq!((e.owner.as_str(), e.group.as_str()), ("root", "root"));
    assert!(!e.is_symlink);
    assert_eq!(e.symlink_target, None);
    let mtime = std::fs::metadata(dir.join("a.txt")).unwrap().mtime();
    let ts = e.modified_time.as_option().expect("modified_time");
    assert_eq!(ts.seconds, mtime);

    let e = stat(&fs, "/tmp/st/suid").await.unwrap();
    assert_eq!((e.mode, e.permissions.as_str()), (0o4755, "-rwsr-xr-x"));
    let e = stat(&fs, "/tmp/st/sticky").await.unwrap();
    assert_eq!(e.r#type, FileType::FILE_TYPE_DIRECTORY);
    assert_eq!((e.mode, e.permissions.as_str()), (0o1777, "drwxrwxrwt"));

    let err = stat(&fs, "/tmp/st/nope").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.unwrap_or_default().contains("/tmp/st/nope"));
    // A path through a file.
    assert_eq!(
        code(stat(&fs, "/tmp/st/a.txt/x").await),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn paths_resolve_against_the_acting_users_home() {
    let envd = Envd::start().await;
    std::fs::write(host(&envd, "/home/user/rel.txt"), "1").unwrap();
    let fs = envd.fs();
    assert_eq!(
        stat(&fs, "rel.txt").await.unwrap().path,
        "/home/user/rel.txt"
    );
    assert_eq!(
        stat(&fs, "~/rel.txt").await.unwrap().path,
        "/home/user/rel.txt"
    );
    let home = stat(&fs, "~").await.unwrap();
    assert_eq!(
        (home.path.as_str(), home.owner.as_str()),
        ("/home/user", "user")
    );
    // root's home is /root.
    let root = envd.fs_as(Some("root"), None);
    assert_eq!(stat(&root, "~").await.unwrap().path, "/root");
    // Unknown users are refused.
    let ghost = envd.fs_as(Some("ghost"), None);
    assert_eq!(code(stat(&ghost, "/tmp").await), ErrorCode::Unauthenticated);
    // Empty and NUL paths are invalid.
    assert_eq!(code(stat(&fs, "").await), ErrorCode::InvalidArgument);
    assert_eq!(code(stat(&fs, "a\0b").await), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn symlinks_report_target_type_and_target() {
    let envd = Envd::start().await;
    let fs = envd.fs();
    let dir = host(&envd, "/tmp/ln");
    std::fs::create_dir_all(dir.join("d")).unwrap();
    std::fs::write(dir.join("f"), "12345678").unwrap();
    symlink("f", dir.join("to-file")).unwrap();
    symlink("/tmp/ln/d", dir.join("to-dir")).unwrap();
    symlink("missing", dir.join("dangling")).unwrap();

    let e = stat(&fs, "/tmp/ln/to-file").await.unwrap();
    assert_eq!(e.r#type, FileType::FILE_TYPE_FILE);
    assert!(e.is_symlink);
    assert_eq!(e.symlink_target.as_deref(), Some("/tmp/ln/f"));
    assert_eq!(e.permissions, "lrwxrwxrwx");

    let e = stat(&fs, "/tmp/ln/to-dir").await.unwrap();
    assert_eq!(e.r#type, FileType::FILE_TYPE_DIRECTORY);
    assert!(e.is_symlink);
    assert_eq!(e.symlink_target.as_deref(), Some("/tmp/ln/d"));

    // Dangling: reported as a symlink with its raw target.
    let e = stat(&fs, "/tmp/ln/dangling").await.unwrap();
    assert_eq!(e.r#type, FileType::FILE_TYPE_SYMLINK);
    assert!(e.is_symlink);
    assert_eq!(e.symlink_target.as_deref(), Some("missing"));
}

#[tokio::test]
async fn metadata_comes_from_user_e2b_xattrs() {
    let envd = Envd::start().await;
    let fs = envd.fs();
    let file = host(&envd, "/tmp/meta.txt");
    std::fs::write(&file, "x").unwrap();
    for (name, value) in [
        ("user.e2b.owner", "alice"),
        ("user.e2b.kind", "report"),
        ("user.other", "ignored"),
    ] {
        let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated strings and a buffer of the given length.
        let rc = unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    }
    let e = stat(&fs, "/tmp/meta.txt").await.unwrap();
    assert_eq!(e.metadata.len(), 2, "{:?}", e.metadata);
    assert_eq!(e.metadata.get("owner").map(String::as_str), Some("alice"));
    assert_eq!(e.metadata.get("kind").map(String::as_str), Some("report"));
}

#[tokio::test]
async fn make_dir_creates_parents_owned_by_the_user() {
    let envd = Envd::start().await;
    let (uid, gid) = sandbox_user(&envd);
    let fs = envd.fs();
    let e = make_dir(&fs, "~/a/b/c").await.unwrap();
    assert_eq!(e.path, "/home/user/a/b/c");
    assert_eq!(e.name, "c");
    assert_eq!(e.r#type, FileType::FILE_TYPE_DIRECTORY);
    for p in ["/home/user/a", "/home/user/a/b", "/home/user/a/b/c"] {
        let m = std::fs::metadata(host(&envd, p)).unwrap();
        assert!(m.is_dir());
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{p}");
    }
    // As root: owned by root.
    let root = envd.fs_as(Some("root"), None);
    make_dir(&root, "/tmp/r/s").await.unwrap();
    assert_eq!(std::fs::metadata(host(&envd, "/tmp/r/s")).unwrap().uid(), 0);

    assert_eq!(
        code(make_dir(&fs, "~/a/b/c").await),
        ErrorCode::AlreadyExists
    );
    std::fs::write(host(&envd, "/tmp/file"), "x").unwrap();
    assert_eq!(
        code(make_dir(&fs, "/tmp/file").await),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(make_dir(&fs, "/tmp/file/sub").await),
        ErrorCode::InvalidArgument
    );
}

#[tokio::test]
async fn move_renames_and_creates_destination_parents() {
    let envd = Envd::start().await;
    let (uid, _) = sandbox_user(&envd);
    let fs = envd.fs();
    std::fs::write(host(&envd, "/home/user/m.txt"), "move me").unwrap();

    let e = rename(&fs, "m.txt", "x/y/moved.txt").await.unwrap();
    assert_eq!(e.path, "/home/user/x/y/moved.txt");
    assert_eq!(e.size, 7);
    assert_eq!(
        std::fs::read_to_string(host(&envd, "/home/user/x/y/moved.txt")).unwrap(),
        "move me"
    );
    assert_eq!(code(stat(&fs, "m.txt").await), ErrorCode::NotFound);
    assert_eq!(
        std::fs::metadata(host(&envd, "/home/user/x"))
            .unwrap()
            .uid(),
        uid
    );
    assert_eq!(
        code(rename(&fs, "nope", "other").await),
        ErrorCode::NotFound
    );

    // Across filesystems (/home and /tmp are separate tmpfs mounts): copied, then removed.
    let src = host(&envd, "/home/user/tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/f"), "deep").unwrap();
    symlink("sub/f", src.join("link")).unwrap();
    let e = rename(&fs, "~/tree", "/tmp/tree").await.unwrap();
    assert_eq!(e.r#type, FileType::FILE_TYPE_DIRECTORY);
    assert!(!src.exists());
    let dst = host(&envd, "/tmp/tree");
    assert_eq!(std::fs::read_to_string(dst.join("sub/f")).unwrap(), "deep");
    assert_eq!(
        std::fs::read_link(dst.join("link")).unwrap(),
        Path::new("sub/f")
    );

    // A directory never replaces an existing entry.
    std::fs::create_dir(host(&envd, "/home/user/again")).unwrap();
    assert_eq!(
        code(rename(&fs, "~/again", "/tmp/tree").await),
        ErrorCode::AlreadyExists
    );
    // A tree holding a FIFO can't be copied: nothing is left behind, the source stays.
    let fifo_dir = host(&envd, "/home/user/pipes");
    std::fs::create_dir(&fifo_dir).unwrap();
    std::fs::write(fifo_dir.join("a"), "x").unwrap();
    let fifo = std::ffi::CString::new(fifo_dir.join("z").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert_eq!(
        code(rename(&fs, "~/pipes", "/tmp/pipes").await),
        ErrorCode::FailedPrecondition
    );
    assert!(fifo_dir.join("z").exists());
    assert!(!host(&envd, "/tmp/pipes").exists());
}

#[tokio::test]
async fn list_dir_honours_depth_and_does_not_follow_links() {
    let envd = Envd::start().await;
    let fs = envd.fs();
    let d = host(&envd, "/tmp/ls");
    std::fs::create_dir_all(d.join("sub/subsub")).unwrap();
    std::fs::write(d.join("f1"), "1").unwrap();
    std::fs::write(d.join("sub/f2"), "22").unwrap();
    std::fs::write(d.join("sub/subsub/f3"), "333").unwrap();
    symlink("sub", d.join("link")).unwrap();

    let one = ["/tmp/ls/f1", "/tmp/ls/link", "/tmp/ls/sub"];
    assert_eq!(names(&list(&fs, "/tmp/ls", 0).await.unwrap()), one);
    assert_eq!(names(&list(&fs, "/tmp/ls", 1).await.unwrap()), one);
    let two = list(&fs, "/tmp/ls", 2).await.unwrap();
    assert_eq!(
        names(&two),
        [
            "/tmp/ls/f1",
            "/tmp/ls/link",
            "/tmp/ls/sub",
            "/tmp/ls/sub/f2",
            "/tmp/ls/sub/subsub"
        ]
    );
    let link = two.iter().find(|e| e.name == "link").unwrap();
    assert!(link.is_symlink);
    assert_eq!(link.r#type, FileType::FILE_TYPE_DIRECTORY);
    let f2 = two.iter().find(|e| e.name == "f2").unwrap();
    assert_eq!((f2.size, f2.r#type), (2, FileType::FILE_TYPE_FILE.into()));
    assert_eq!(list(&fs, "/tmp/ls", 3).await.unwrap().len(), 6);

    // Listing through a symlinked directory lists its target.
    assert_eq!(
        names(&list(&fs, "/tmp/ls/link", 1).await.unwrap()),
        ["/tmp/ls/link/f2", "/tmp/ls/link/subsub"]
    );
    assert_eq!(
        code(list(&fs, "/tmp/ls/f1", 1).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(code(list(&fs, "/tmp/nope", 1).await), ErrorCode::NotFound);
}

#[tokio::test]
async fn remove_files_and_trees() {
    let envd = Envd::start().await;
    let fs = envd.fs();
    let d = host(&envd, "/tmp/rm");
    std::fs::create_dir_all(d.join("tree/a/b")).unwrap();
    std::fs::write(d.join("tree/a/b/f"), "x").unwrap();
    std::fs::write(d.join("file"), "x").unwrap();
    symlink("tree", d.join("link")).unwrap();

    remove(&fs, "/tmp/rm/file").await.unwrap();
    assert!(!d.join("file").exists());
    // Removing a link removes the link, not its target.
    remove(&fs, "/tmp/rm/link").await.unwrap();
    assert!(d.join("tree/a/b/f").exists());
    remove(&fs, "/tmp/rm/tree").await.unwrap();
    assert!(!d.join("tree").exists());
    assert_eq!(code(remove(&fs, "/tmp/rm/tree").await), ErrorCode::NotFound);
    // procfs refuses unlink even for root.
    assert_eq!(
        code(remove(&fs, "/proc/version").await),
        ErrorCode::PermissionDenied
    );
}

/// A running WatchDir call; events arrive on `rx`, aborting `task` disconnects.
#[derive(Debug)]
struct Watch {
    rx: mpsc::UnboundedReceiver<Result<WatchDirResponse, ConnectError>>,
    task: tokio::task::JoinHandle<()>,
}

async fn watch(
    fs: &Fs,
    path: &str,
    recursive: bool,
    include_entry: bool,
    keepalive_secs: Option<u64>,
) -> Result<Watch, ConnectError> {
    let mut opts = CallOptions::default();
    if let Some(k) = keepalive_secs {
        opts = opts.with_header("keepalive-ping-interval", k.to_string());
    }
    let req = WatchDirRequest {
        path: path.into(),
        recursive,
        include_entry,
        ..Default::default()
    };
    let mut stream = fs.watch_dir_with_options(req, opts).await?;
    let first = stream
        .message()
        .await?
        .expect("stream ended before start")
        .to_owned_message();
    assert!(
        matches!(first.event, Some(Event::Start(_))),
        "first message must be start, got {first:?}"
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if tx.send(Ok(m.to_owned_message())).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    Ok(Watch { rx, task })
}

impl Watch {
    /// Filesystem events until `done` holds for the ones gathered (at most 10 s).
    async fn events_until(
        &mut self,
        done: impl Fn(&[FilesystemEvent]) -> bool,
    ) -> Vec<FilesystemEvent> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out; events so far: {got:?}"))
                .expect("watch stream ended")
                .expect("watch stream failed");
            if let Some(Event::Filesystem(e)) = msg.event {
                got.push(*e);
            }
        }
        got
    }
}

fn has(events: &[FilesystemEvent], name: &str, ty: EventType) -> bool {
    events.iter().any(|e| e.name == name && e.r#type == ty)
}

fn inotify_fds(envd: &Envd) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", envd.host_pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("inotify"))
        .count()
}

async fn wait_for_inotify_fds(envd: &Envd, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while inotify_fds(envd) != want {
        assert!(
            Instant::now() < deadline,
            "envd holds {} inotify instances, want {want}",
            inotify_fds(envd)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn watch_dir_streams_events() {
    use EventType::*;
    let envd = Envd::start().await;
    let fs = envd.fs();
    let d = host(&envd, "/tmp/w");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    let mut w = watch(&fs, "/tmp/w", false, true, None).await.unwrap();

    std::fs::write(d.join("a.txt"), "data").unwrap();
    let ev = w
        .events_until(|e| has(e, "a.txt", EVENT_TYPE_CREATE) && has(e, "a.txt", EVENT_TYPE_WRITE))
        .await;
    let created = ev.iter().find(|e| e.r#type == EVENT_TYPE_CREATE).unwrap();
    let entry = created.entry.as_option().expect("include_entry");
    assert_eq!(entry.path, "/tmp/w/a.txt");
    assert_eq!(entry.r#type, FileType::FILE_TYPE_FILE);

    std::fs::set_permissions(d.join("a.txt"), PermissionsExt::from_mode(0o600)).unwrap();
    w.events_until(|e| has(e, "a.txt", EVENT_TYPE_CHMOD)).await;

    std::fs::rename(d.join("a.txt"), d.join("b.txt")).unwrap();
    let ev = w
        .events_until(|e| has(e, "a.txt", EVENT_TYPE_RENAME) && has(e, "b.txt", EVENT_TYPE_CREATE))
        .await;
    let renamed = ev.iter().find(|e| e.r#type == EVENT_TYPE_RENAME).unwrap();
    assert!(renamed.entry.is_unset(), "the old name no longer exists");

    std::fs::remove_file(d.join("b.txt")).unwrap();
    w.events_until(|e| has(e, "b.txt", EVENT_TYPE_REMOVE)).await;

    // Not recursive: a file inside `sub` is not reported, the next top-level one is.
    std::fs::write(d.join("sub/inner"), "x").unwrap();
    std::fs::write(d.join("marker"), "x").unwrap();
    let ev = w
        .events_until(|e| has(e, "marker", EVENT_TYPE_CREATE))
        .await;
    assert!(!ev.iter().any(|e| e.name.contains("inner")), "{ev:?}");
    w.task.abort();
}

#[tokio::test]
async fn recursive_watch_covers_new_subdirectories() {
    use EventType::*;
    let envd = Envd::start().await;
    let fs = envd.fs();
    let d = host(&envd, "/home/user/rw");
    std::fs::create_dir_all(d.join("old")).unwrap();
    let mut w = watch(&fs, "rw", true, false, None).await.unwrap();

    std::fs::write(d.join("old/f"), "x").unwrap();
    w.events_until(|e| has(e, "old/f", EVENT_TYPE_CREATE)).await;

    std::fs::create_dir(d.join("new")).unwrap();
    let ev = w.events_until(|e| has(e, "new", EVENT_TYPE_CREATE)).await;
    assert!(ev.iter().all(|e| e.entry.is_unset()), "no include_entry");
    // The watch on a new directory is added right after its CREATE event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(d.join("new/g"), "x").unwrap();
    w.events_until(|e| has(e, "new/g", EVENT_TYPE_CREATE)).await;
    w.task.abort();
}

#[tokio::test]
async fn watch_dir_keepalive_errors_and_cleanup() {
    let envd = Envd::start().await;
    let fs = envd.fs();
    std::fs::create_dir_all(host(&envd, "/tmp/k")).unwrap();
    std::fs::write(host(&envd, "/tmp/k/file"), "x").unwrap();

    assert_eq!(
        code(watch(&fs, "/tmp/missing", false, false, None).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(watch(&fs, "/tmp/k/file", false, false, None).await),
        ErrorCode::InvalidArgument
    );

    let baseline = inotify_fds(&envd);
    let mut w = watch(&fs, "/tmp/k", true, false, Some(1)).await.unwrap();
    assert_eq!(inotify_fds(&envd), baseline + 1);
    let msg = tokio::time::timeout(Duration::from_secs(5), w.rx.recv())
        .await
        .expect("keepalive within the interval")
        .unwrap()
        .unwrap();
    assert!(
        matches!(msg.event, Some(Event::Keepalive(_))),
        "got {msg:?}"
    );

    // Disconnecting ends the watch and frees its inotify instance.
    w.task.abort();
    drop(w);
    wait_for_inotify_fds(&envd, baseline).await;
}

#[tokio::test]
async fn polled_watchers_gather_events_between_calls() {
    use EventType::*;
    let envd = Envd::start().await;
    let fs = envd.fs();
    let d = host(&envd, "/tmp/p");
    std::fs::create_dir_all(&d).unwrap();
    let baseline = inotify_fds(&envd);

    let id = fs
        .create_watcher(CreateWatcherRequest {
            path: "/tmp/p".into(),
            include_entry: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .watcher_id;
    assert!(!id.is_empty());
    let take = |id: String| {
        let fs = fs.clone();
        async move {
            fs.get_watcher_events(GetWatcherEventsRequest {
                watcher_id: id,
                ..Default::default()
            })
            .await
            .map(|r| r.into_owned().events)
        }
    };

    std::fs::write(d.join("one"), "1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !has(&got, "one", EVENT_TYPE_CREATE) {
        assert!(Instant::now() < deadline, "no CREATE event: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        got.extend(take(id.clone()).await.unwrap());
    }
    let created = got.iter().find(|e| e.r#type == EVENT_TYPE_CREATE).unwrap();
    assert_eq!(created.entry.as_option().unwrap().path, "/tmp/p/one");
    // Events are handed out once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    take(id.clone()).await.unwrap();
    assert!(take(id.clone()).await.unwrap().is_empty());

    fs.remove_watcher(RemoveWatcherRequest {
        watcher_id: id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(code(take(id.clone()).await), ErrorCode::NotFound);
    assert_eq!(
        code(
            fs.remove_watcher(RemoveWatcherRequest {
                watcher_id: id,
                ..Default::default()
            })
            .await
        ),
        ErrorCode::NotFound
    );
    wait_for_inotify_fds(&envd, baseline).await;

    assert_eq!(
        code(
            fs.create_watcher(CreateWatcherRequest {
                path: "/tmp/absent".into(),
                ..Default::default()
            })
            .await
        ),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn list_dir_json_uses_camel_case_and_enum_names() {
    let envd = Envd::start().await;
    let d = host(&envd, "/tmp/j");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("f.txt"), "hi").unwrap();
    symlink("f.txt", d.join("l")).unwrap();

    let client = reqwest::Client::new();
    let r = client
        .post(envd.url("/filesystem.Filesystem/ListDir"))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(r#"{"path":"/tmp/j","depth":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    for key in [
        "\"modifiedTime\"",
        "\"isSymlink\"",
        "\"symlinkTarget\"",
        "\"FILE_TYPE_FILE\"",
        "\"entries\"",
    ] {
        assert!(body.contains(key), "{key} missing from {body}");
    }
    assert!(!body.contains("modified_time"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let l = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "l")
        .unwrap();
    assert_eq!(l["type"], "FILE_TYPE_FILE");
    assert_eq!(l["isSymlink"], true);
    assert_eq!(l["symlinkTarget"], "/tmp/j/f.txt");
    assert_eq!(l["permissions"], "lrwxrwxrwx");

    // Malformed requests get a Connect error, and envd keeps serving.
    let r = client
        .post(envd.url("/filesystem.Filesystem/Stat"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_argument");
    let r = client
        .post(envd.url("/filesystem.Filesystem/Stat"))
        .header("content-type", "application/json")
        .body(r#"{"path":"/tmp/j/missing"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "not_found");
}
