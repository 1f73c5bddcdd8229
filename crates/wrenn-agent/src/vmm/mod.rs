//! Virtual machine monitors behind one trait. The qemu driver (`-M microvm`, QMP) is the
//! portable default; a VMM process's lifetime is independent of any request and of the
//! agent itself, and a restarted agent re-adopts it.

pub mod cgroup;
mod migrate;
pub mod probe;
mod process;
pub mod qemu;
pub mod qmp;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use probe::choose_accel;
pub use process::is_qemu_argv0;
pub use qemu::QemuVmm;

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (expected kvm or tcg)"
            )),
        }
    }
}

/// Everything needed to boot one sandbox's VM. Written to `run_dir/spec.json` at boot so a
/// restarted agent knows what it adopted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub sandbox_id: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel arguments appended to the fixed ones (e.g. `wrenn.net=...`).
    pub kernel_args: String,
    /// qcow2 overlay whose backing file is the raw base image.
    pub root_disk: PathBuf,
    /// Network namespace QEMU runs in (where the TAP lives): a name under `/run/netns` or an
    /// absolute path to a namespace file.
    pub netns: Option<String>,
    pub tap: Option<String>,
    pub guest_mac: Option<String>,
    /// Per-sandbox directory: QMP socket, pid file, serial log, spec.json.
    pub run_dir: PathBuf,
    pub accel: Accel,
    /// Guest RAM backed by this file instead of anonymous memory (warm bases and their clones).
    #[serde(default)]
    pub memory_file: Option<MemoryFile>,
    /// The unprivileged user (and group, same number) QEMU switches to once it has opened
    /// its files, TAP and sockets as root: a broken-out guest holds no privilege and cannot
    /// touch another VM's process. `None`: stays root (driver tests, benchmarks).
    #[serde(default)]
    pub uid: Option<u32>,
}

/// A file guest RAM is mapped from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFile {
    pub path: PathBuf,
    /// `true`: the guest's writes go to the file (a warm base being made); `false`: the file
    /// is mapped copy-on-write, so every clone shares its unchanged pages and keeps its own.
    pub shared: bool,
}

/// What a saved VM state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// Devices and all of guest RAM (pause).
    Full,
    /// Devices only: RAM lives in the VM's shared [`MemoryFile`] (QEMU's `x-ignore-shared`);
    /// restoring maps that file copy-on-write.
    DevicesOnly,
}

impl VmSpec {
    pub fn qmp_socket(&self) -> PathBuf {
        qmp_socket(&self.run_dir)
    }
    pub fn pid_file(&self) -> PathBuf {
        pid_file(&self.run_dir)
    }
    pub fn serial_log(&self) -> PathBuf {
        serial_log(&self.run_dir)
    }
}

pub fn qmp_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}
pub fn pid_file(run_dir: &Path) -> PathBuf {
    run_dir.join("vmm.pid")
}
pub fn serial_log(run_dir: &Path) -> PathBuf {
    run_dir.join("serial.log")
}

/// Largest the console log may grow to before it is emptied (checked every metrics round).
pub const SERIAL_LOG_LIMIT: u64 = 1024 * 1024;

/// Empties the console log in `run_dir` once it is over [`SERIAL_LOG_LIMIT`]. QEMU appends
/// (`O_APPEND`), so its next write lands at the new end.
pub fn cap_serial_log(run_dir: &Path) -> std::io::Result<bool> {
    let path = serial_log(run_dir);
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= SERIAL_LOG_LIMIT {
        return Ok(false);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(0)?;
    Ok(true)
}
pub fn spec_file(run_dir: &Path) -> PathBuf {
    run_dir.join("spec.json")
}

/// A running VM. Cheap to clone; all clones share one QMP connection.
#[derive(Debug, Clone)]
pub struct VmHandle {
    pub sandbox_id: String,
    pub pid: i32,
    pub run_dir: PathBuf,
    /// The spec it was booted with (read back from `spec.json` on adopt).
    pub spec: VmSpec,
    pub(crate) qmp: Arc<qmp::QmpClient>,
}

impl VmHandle {
    /// The QMP connection, for commands this trait does not wrap yet.
    pub fn qmp(&self) -> &qmp::QmpClient {
        &self.qmp
    }
}

/// A QMP event, reduced to what the sandbox manager acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// A disk request failed; with `werror=report` the guest sees the error and the VM keeps
    /// running. `nospace` is the host running out of space for the overlay.
    BlockIoError {
        device: String,
        operation: String,
        nospace: bool,
        reason: String,
    },
    /// The VM is shutting down; `guest` is true when the guest asked for it (poweroff, panic
    /// with `-no-reboot`), false when QMP `quit` or a signal did.
    Shutdown {
        guest: bool,
    },
    Stop,
    Resume,
    /// Any other event, by name.
    Other(String),
}

/// The VM's run state (QMP `query-status`), or `Exited` when the process is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStatus {
    Running,
    Paused,
    IoError,
    Shutdown,
    InternalError,
    GuestPanicked,
    Exited,
    Other(String),
}

impl VmStatus {
    fn from_qmp(status: &str) -> Self {
        match status {
            "running" => VmStatus::Running,
            "paused" => VmStatus::Paused,
            "io-error" => VmStatus::IoError,
            "shutdown" => VmStatus::Shutdown,
            "internal-error" => VmStatus::InternalError,
            "guest-panicked" => VmStatus::GuestPanicked,
            other => VmStatus::Other(other.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited with {status}: {stderr}")]
    QemuFailed {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("QEMU did not start within {0:?}")]
    StartTimeout(std::time::Duration),
    #[error("QEMU pid file {path}: {reason}")]
    PidFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    #[error("VM process {pid} is still running after SIGKILL")]
    StillRunning { pid: i32 },
    #[error("VM process {pid} runs but cannot be adopted: {reason}")]
    AdoptFailed { pid: i32, reason: String },
    #[error("accelerator probe: {0}")]
    Probe(String),
    #[error("VM state transfer {0}")]
    Migration(String),
    #[error("VM root disk {0}")]
    Disk(String),
    #[error("saved VM state {path}: {reason}")]
    BadState { path: PathBuf, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A driver that runs VMs.
#[async_trait::async_trait]
pub trait Vmm: Send + Sync {
    /// Starts the VMM process; returns once it runs and QMP answers (the guest may still be
    /// booting). On error nothing is left running.
    async fn boot(&self, spec: &VmSpec) -> Result<VmHandle, VmmError>;
    /// Stops the VM (QMP quit, SIGKILL after a grace period) and waits until the process is
    /// gone. Idempotent.
    async fn destroy(&self, vm: &VmHandle) -> Result<(), VmmError>;
    /// Re-attaches to a VM left running by an earlier agent: `Some` when `run_dir`'s pid file
    /// names a live process that is our QEMU for that directory and QMP answers; `None` when
    /// nothing runs there (the caller cleans up).
    async fn adopt(&self, run_dir: &Path) -> Result<Option<VmHandle>, VmmError>;
    async fn status(&self, vm: &VmHandle) -> Result<VmStatus, VmmError>;
    /// Kills whatever VMM of ours still runs in `run_dir` without adopting it: cleanup of a
    /// half-made or unadoptable sandbox.
    async fn kill_run_dir(&self, run_dir: &Path) -> Result<(), VmmError>;
    /// Stops the VM, writes its device state and memory to `state` (temp name, fsync,
    /// rename) and ends its process. On error the VM runs on and no file is left behind.
    async fn save(&self, vm: &VmHandle, state: &Path, kind: StateKind) -> Result<(), VmmError>;
    /// Starts a VM of `spec` from a file [`Vmm::save`] wrote, running where it stopped. The
    /// spec's machine (vCPUs, memory, devices) must be the saved one's; its network namespace
    /// may differ. On error nothing is left running.
    async fn restore(
        &self,
        spec: &VmSpec,
        state: &Path,
        kind: StateKind,
    ) -> Result<VmHandle, VmmError>;
    /// [`Vmm::restore`], but the VM stays stopped: for saving it again in another form.
    async fn restore_stopped(
        &self,
        spec: &VmSpec,
        state: &Path,
        kind: StateKind,
    ) -> Result<VmHandle, VmmError>;
    /// QMP events from now on (subscribe right after boot/adopt). Each VM has its own
    /// channel; it reports `Closed` once the QMP connection ends, i.e. when QEMU exited.
    fn events(&self, vm: &VmHandle) -> tokio::sync::broadcast::Receiver<VmEvent>;
}

#[cfg(test)]
mod serial_log_tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_oversized_console_log_is_emptied_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!cap_serial_log(dir.path()).unwrap(), "no log yet");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(serial_log(dir.path()))
            .unwrap();
        f.write_all(&vec![b'a'; SERIAL_LOG_LIMIT as usize]).unwrap();
        assert!(!cap_serial_log(dir.path()).unwrap(), "at the limit is fine");
        f.write_all(b"over").unwrap();
        assert!(cap_serial_log(dir.path()).unwrap());
        // The writer (QEMU, O_APPEND) goes on at the new end, not at its old offset.
        f.write_all(b"next").unwrap();
        assert_eq!(std::fs::read(serial_log(dir.path())).unwrap(), b"next");
    }
}
