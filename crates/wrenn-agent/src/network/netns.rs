//! Named network namespaces (`/run/netns/<name>`, compatible with `ip netns`) and running code
//! inside one. Namespace membership is per thread, so work inside a namespace runs on a
//! short-lived dedicated thread that `setns`es first; the caller's threads never move.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::NetError;

/// Where named namespaces live (the same place `ip netns` uses).
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether a named namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of all named namespaces.
pub fn list() -> Result<Vec<String>, NetError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("read {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format!("read {NETNS_DIR}"), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Opens the named namespace, e.g. for [`setns`](nix::sched::setns) in a child before `exec`.
pub fn open(name: &str) -> Result<OwnedFd, NetError> {
    File::open(path(name))
        .map(OwnedFd::from)
        .map_err(|source| NetError::Netns {
            name: name.to_owned(),
            op: "open",
            source,
        })
}

/// The network namespace of the calling thread.
pub fn open_current() -> Result<OwnedFd, NetError> {
    File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| io_err("open /proc/thread-self/ns/net".into(), e))
}

/// Makes `cmd` start inside the named namespace (e.g. QEMU, so it can open the sandbox's TAP).
pub fn command_in(cmd: &mut tokio::process::Command, name: &str) -> Result<(), NetError> {
    let fd = open(name)?;
    // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd opened before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
        });
    }
    Ok(())
}

/// Creates the named namespace `name`; fails with [`NetError::AlreadyExists`] if the name is
/// taken, so an existing sandbox is never adopted by accident.
pub async fn create(name: &str) -> Result<(), NetError> {
    let name = name.to_owned();
    on_thread(move || create_blocking(&name)).await
}

/// Removes the named namespace; `Ok(false)` if it did not exist. The kernel frees the namespace
/// (and what is left inside it) once no process uses it any more.
pub async fn delete(name: &str) -> Result<bool, NetError> {
    let name = name.to_owned();
    on_thread(move || delete_blocking(&name)).await
}

/// A namespace to run code in.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A named namespace under [`NETNS_DIR`].
    Named(String),
    /// An already opened namespace (the host's, captured at start).
    Fd(Arc<OwnedFd>),
    /// A new, unnamed namespace that only the worker thread holds: it and everything made in
    /// it are gone when the thread ends (for trying things out without touching the host).
    Scratch,
}

/// Runs `f` on a fresh thread inside `target`, with a current-thread tokio runtime, and returns
/// its result. Child processes spawned there (e.g. `nft`) inherit the namespace.
pub(crate) async fn run_in<T, F, Fut>(target: Target, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    on_thread(move || {
        match &target {
            Target::Named(name) => {
                let fd = open(name)?;
                setns(&fd, name)?;
            }
            Target::Fd(fd) => setns(fd, "host")?,
            Target::Scratch => {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
                    name: "scratch".into(),
                    op: "unshare",
                    source: e.into(),
                })?
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io_err("build netns runtime".into(), e))?;
        rt.block_on(f())
    })
    .await
}

fn setns(fd: &OwnedFd, name: &str) -> Result<(), NetError> {
    nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Netns {
        name: name.to_owned(),
        op: "setns",
        source: e.into(),
    })
}

/// Runs blocking `f` on its own thread, so a thread whose namespace `f` changes is thrown away.
async fn on_thread<T, F>(f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wrenn-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| io_err("spawn netns thread".into(), e))?;
    rx.await
        .map_err(|_| NetError::Worker("netns thread ended without a result".into()))?
}

fn create_blocking(name: &str) -> Result<(), NetError> {
    prepare_dir()?;
    let p = path(name);
    let err = |op, source| NetError::Netns {
        name: name.to_owned(),
        op,
        source,
    };
    match OpenOptions::new().write(true).create_new(true).open(&p) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetError::AlreadyExists {
                what: format!("network namespace {name}"),
            });
        }
        Err(e) => return Err(err("create mount point", e)),
    }
    // This thread is dedicated (see `create`), so moving it into the new namespace is harmless.
    let made = nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| err("unshare", e.into()))
        .and_then(|()| {
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| err("bind mount", e.into()))
        });
    if made.is_err() {
        let _ = std::fs::remove_file(&p);
    }
    made
}

fn delete_blocking(name: &str) -> Result<bool, NetError> {
    let p = path(name);
    if std::fs::symlink_metadata(&p).is_err() {
        return Ok(false);
    }
    // EINVAL: not a mount point (a half-made entry); the file still has to go.
    match nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetError::Netns {
                name: name.to_owned(),
                op: "unmount",
                source: e.into(),
            });
        }
    }
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(NetError::Netns {
            name: name.to_owned(),
            op: "remove mount point",
            source,
        }),
    }
}

/// Makes `/run/netns` a shared mount, as `ip netns add` does, so namespace mounts made later
/// propagate into mount namespaces (e.g. `ip netns exec`) created from this one.
fn prepare_dir() -> Result<(), NetError> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *done {
        return Ok(());
    }
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| io_err(format!("create {NETNS_DIR}"), e))?;
    let shared = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_err() {
        // Not a mount point yet: bind it onto itself first.
        nix::mount::mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| io_err(format!("bind mount {NETNS_DIR}"), e.into()))?;
        shared().map_err(|e| io_err(format!("make {NETNS_DIR} shared"), e.into()))?;
    }
    *done = true;
    Ok(())
}

fn io_err(context: String, source: io::Error) -> NetError {
    NetError::Io { context, source }
}
