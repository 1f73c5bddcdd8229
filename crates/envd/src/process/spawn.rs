//! Building and spawning a requested process: its user identity, environment, working
//! directory and stdio (pipes or a PTY). Spawning always goes through the reaper, which
//! alone waits on children.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::reaper::{Exit, Reaper};
use crate::users::User;

/// `PATH` every process starts with (before `/init` and request envs).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run and how; built from a `StartRequest` after validation.
pub struct SpawnSpec<'a> {
    pub cmd: &'a str,
    pub args: &'a [String],
    pub user: &'a User,
    pub cwd: PathBuf,
    /// `/init` defaults, applied after the base variables.
    pub default_env: &'a BTreeMap<String, String>,
    /// The request's variables, applied last.
    pub envs: Vec<(String, String)>,
    /// Initial PTY size (cols, rows) when the process gets a terminal.
    pub pty: Option<(u16, u16)>,
    /// Whether stdin is a pipe the client can write to (ignored with a PTY).
    pub stdin: bool,
}

/// The parent's ends of a spawned process's stdio.
pub enum Stdio3 {
    Pipes {
        stdin: Option<pipe::Sender>,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    Pty(pty_process::Pty),
}

pub struct Spawned {
    pub pid: u32,
    pub exit: oneshot::Receiver<Exit>,
    pub io: Stdio3,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cmd is empty")]
    EmptyCmd,
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("cwd '{}' does not exist or is not a directory", .0.display())]
    MissingCwd(PathBuf),
    #[error("failed to start '{cmd}': {source}")]
    Exec { cmd: String, source: io::Error },
    #[error("failed to set up process I/O: {0}")]
    Io(#[source] io::Error),
    #[error("failed to open a pty: {0}")]
    Pty(#[from] pty_process::Error),
}

impl From<SpawnError> for connectrpc::ConnectError {
    fn from(e: SpawnError) -> Self {
        use connectrpc::ConnectError as E;
        let msg = e.to_string();
        match &e {
            SpawnError::EmptyCmd | SpawnError::Nul(_) | SpawnError::MissingCwd(_) => {
                E::invalid_argument(msg)
            }
            SpawnError::Exec { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => E::not_found(msg),
                io::ErrorKind::PermissionDenied => E::permission_denied(msg),
                _ => E::invalid_argument(msg),
            },
            SpawnError::Io(_) | SpawnError::Pty(_) => E::internal(msg),
        }
    }
}

/// Credentials applied in the child when envd runs as root.
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

fn cstring(what: &'static str, bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul(what))
}

/// The environment a process starts with: base variables, then `/init` defaults, then the
/// request's own (later entries win).
pub fn environment(spec: &SpawnSpec<'_>) -> Vec<(String, String)> {
    let user = spec.user;
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), user.home.to_string_lossy().into_owned()),
        ("USER".into(), user.name.clone()),
        ("LOGNAME".into(), user.name.clone()),
        ("SHELL".into(), user.shell.to_string_lossy().into_owned()),
    ];
    if spec.pty.is_some() {
        // Terminal programs need a TERM; /init or the request may override it.
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    env.extend(spec.default_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(spec.envs.iter().cloned());
    env
}

/// Spawns the process described by `spec` through `reaper`.
pub fn spawn(reaper: &Reaper, spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
    if spec.cmd.is_empty() {
        return Err(SpawnError::EmptyCmd);
    }
    if spec.cmd.contains('\0') {
        return Err(SpawnError::Nul("cmd"));
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return Err(SpawnError::Nul("an argument"));
    }
    let env = environment(spec);
    if env
        .iter()
        .any(|(k, v)| k.contains(['\0', '=']) || v.contains('\0'))
    {
        return Err(SpawnError::Nul("an environment variable"));
    }
    if !Path::new(&spec.cwd).is_dir() {
        return Err(SpawnError::MissingCwd(spec.cwd.clone()));
    }
    let cwd = cstring("cwd", spec.cwd.as_os_str().as_bytes())?;
    let identity = nix::unistd::geteuid().is_root().then(|| Identity {
        uid: spec.user.uid.as_raw(),
        gid: spec.user.gid.as_raw(),
        groups: spec.user.groups.iter().map(|g| g.as_raw()).collect(),
    });

    let mut cmd = Command::new(spec.cmd);
    cmd.args(spec.args).env_clear().envs(env);

    let pty = match spec.pty {
        Some((cols, rows)) => {
            let (pty, pts) = pty_process::open()?;
            if cols > 0 && rows > 0 {
                pty.resize(pty_process::Size::new(rows, cols))?;
            }
            let fd = || -> Result<OwnedFd, SpawnError> {
                pts.as_fd().try_clone_to_owned().map_err(SpawnError::Io)
            };
            cmd.stdin(Stdio::from(fd()?))
                .stdout(Stdio::from(fd()?))
                .stderr(Stdio::from(fd()?));
            Some(pty)
        }
        None => {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            None
        }
    };
    let with_tty = pty.is_some();

    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || child_setup(with_tty, identity.as_ref(), &cwd));
    }

    let (mut child, exit) = reaper.spawn(&mut cmd).map_err(|source| SpawnError::Exec {
        cmd: spec.cmd.to_string(),
        source,
    })?;
    // Dropping the command closes the parent's copies of the pts, so reading the pty
    // reports EOF once the child's side is gone.
    drop(cmd);
    let pid = child.id();

    let io = match pty {
        Some(pty) => Stdio3::Pty(pty),
        None => {
            let stdin = child
                .stdin
                .take()
                .map(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)))
                .transpose();
            let stdout = child
                .stdout
                .take()
                .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
                .transpose();
            let stderr = child
                .stderr
                .take()
                .map(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)))
                .transpose();
            match (stdin, stdout, stderr) {
                (Ok(stdin), Ok(Some(stdout)), Ok(Some(stderr))) => Stdio3::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
                (a, b, c) => {
                    let err = a
                        .err()
                        .or(b.err())
                        .or(c.err())
                        .unwrap_or_else(|| io::Error::other("missing stdio pipe"));
                    // The child is running but unusable; the reaper collects it.
                    // SAFETY: kill on a pid we own and have not yet let the reaper report.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return Err(SpawnError::Io(err));
                }
            }
        }
    };
    // `child` is dropped without waiting: the reaper owns its exit status.
    drop(child);
    Ok(Spawned { pid, exit, io })
}

/// Runs in the child between fork and exec.
fn child_setup(with_tty: bool, identity: Option<&Identity>, cwd: &CString) -> io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on valid, pre-built arguments; all async-signal-safe.
    unsafe {
        // A session of its own: a process group envd can signal as a whole, and no way
        // for `kill 0` in the child to reach envd.
        check(libc::setsid())?;
        if with_tty {
            // stdin is the pts by now; make it the controlling terminal.
            check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
        }
        if let Some(id) = identity {
            check(libc::setgroups(id.groups.len(), id.groups.as_ptr()))?;
            check(libc::setgid(id.gid))?;
            check(libc::setuid(id.uid))?;
        }
        // After dropping privileges, so the directory is entered as the user.
        check(libc::chdir(cwd.as_ptr()))?;
    }
    Ok(())
}
