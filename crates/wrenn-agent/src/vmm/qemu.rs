//! The qemu driver: `qemu-system-x86_64 -M microvm`, daemonized so the VM outlives the agent,
//! controlled over QMP on a Unix socket in the sandbox's run directory.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tracing::Instrument;

use super::migrate;
use super::process::{alive, is_our_qemu, read_pid_file, sigkill, wait_gone};
use super::qmp::QmpClient;
use super::{
    Accel, StateKind, VmEvent, VmHandle, VmSpec, VmStatus, Vmm, VmmError, pid_file, qmp_socket,
    spec_file,
};

/// Kernel arguments every guest gets. The TSC ones make the Debian kernel's clock calibration
/// reliable under TCG (it hangs at random without them) and are harmless under KVM.
pub const BASE_KERNEL_ARGS: &str = "console=ttyS0 root=/dev/vda rw panic=-1 \
    tsc_early_khz=2000000 tsc=reliable no_timer_check lpj=4000000 quiet";

/// Longest path a Unix socket address holds (`sun_path`, minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Scans for a half-daemonized QEMU's processes (parent, middle, daemon) before giving up.
const DAEMONIZE_RESCANS: usize = 5;

#[derive(Debug, Clone)]
pub struct QemuVmm {
    binary: PathBuf,
    /// How long QEMU may take to initialise and daemonize, and then to answer QMP.
    start_timeout: Duration,
    /// How long `destroy` waits after QMP `quit` before SIGKILL.
    grace: Duration,
    /// Where each VM gets its memory/CPU group; `None`: none (tests of the driver alone).
    cgroups: Option<std::sync::Arc<super::cgroup::Hierarchy>>,
    /// Whether this QEMU has `-run-with user=` (9.1+; `-runas` before), asked once.
    run_with: std::sync::Arc<tokio::sync::OnceCell<bool>>,
}

impl Default for QemuVmm {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuVmm {
    /// Uses the QEMU the agent's preflight resolved (`qemu-system-x86_64`; `WRENN_QEMU`
    /// overrides it).
    pub fn new() -> Self {
        Self::with_binary(crate::preflight::path(crate::preflight::Tool::Qemu))
    }

    pub fn with_binary(binary: impl Into<PathBuf>) -> Self {
        QemuVmm {
            binary: binary.into(),
            start_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(3),
            cgroups: None,
            run_with: Default::default(),
        }
    }

    /// Runs every VM in a group of its own under `h` (see [`super::cgroup`]).
    pub fn with_cgroups(mut self, h: super::cgroup::Hierarchy) -> Self {
        self.cgroups = Some(std::sync::Arc::new(h));
        self
    }

    async fn remove_group(&self, run_dir: &Path) {
        if let Some(h) = &self.cgroups {
            h.remove(&super::cgroup::group_name(run_dir)).await;
        }
    }

    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Kills whatever QEMU of ours still runs in `run_dir` (pid file + command-line check) and
    /// waits until it is gone: for cleaning up a half-made sandbox that cannot be adopted.
    pub async fn kill_run_dir(&self, run_dir: &Path) -> Result<(), VmmError> {
        let run_dir = std::path::absolute(run_dir)?;
        if let Some(pid) = read_pid_file(&pid_file(&run_dir)).ok().flatten() {
            stop(pid, &run_dir, None, self.grace).await?;
        }
        // A QEMU still daemonizing has no pid file yet (an agent killed mid-boot): find it by
        // its command line, which names this run dir's QMP socket. `-daemonize` forks twice
        // (the waiting parent, a short-lived middle, the daemon), so a scan can see a parent
        // whose daemon appears only after it: scan again until none is left.
        let socket = qmp_socket(&run_dir);
        for _ in 0..DAEMONIZE_RESCANS {
            let pids = super::process::pids_of_qemu_with(&socket);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                stop(pid, &run_dir, None, self.grace).await?;
            }
        }
        if let Some(&pid) = super::process::pids_of_qemu_with(&socket).first() {
            return Err(VmmError::StillRunning { pid });
        }
        remove_runtime_files(&run_dir);
        self.remove_group(&run_dir).await;
        Ok(())
    }

    /// The arguments that make QEMU drop to `uid` after its setup.
    async fn run_as_args(&self, uid: u32) -> Vec<String> {
        let binary = self.binary.clone();
        let run_with = *self
            .run_with
            .get_or_init(|| async move {
                tokio::process::Command::new(binary)
                    .arg("-help")
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("-run-with"))
            })
            .await;
        run_as_args(uid, run_with)
    }

    async fn spawn(&self, spec: &VmSpec, extra: &[&str]) -> Result<i32, VmmError> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        // An unprivileged QEMU gets its disk as descriptors the agent opened: it reopens the
        // image when it resumes after a restore (read-only until then), which by path it
        // could not. Kept open until spawn returns: the child inherits them.
        let (run_as, disk) = match spec.uid {
            Some(uid) => (
                self.run_as_args(uid).await,
                Some(DiskFds::open(&spec.root_disk)?),
            ),
            None => (Vec::new(), None),
        };
        let args = match &disk {
            Some(d) => qemu_args_with_disk(spec, &d.path(), &d.args()),
            None => qemu_args(spec),
        };
        cmd.args(args)
            .args(run_as)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Only the short-lived daemonizing parent is our child; never leave it hanging.
            .kill_on_drop(true);
        // Opened here and kept open until spawn returns: the child joins it before exec.
        let netns_file = match &spec.netns {
            Some(ns) => {
                Some(
                    std::fs::File::open(netns_path(ns)).map_err(|source| VmmError::Netns {
                        netns: ns.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        // Its memory/CPU group, joined before exec so every allocation is counted.
        let procs = match &self.cgroups {
            Some(h) => {
                let limits = super::cgroup::Limits::for_vm(spec.vcpus, spec.memory_mb);
                h.create(&super::cgroup::group_name(&spec.run_dir), limits)?
                    .procs_files()?
            }
            None => Vec::new(),
        };
        if !procs.is_empty() {
            // SAFETY: join_from_child makes raw syscalls only on memory prepared before fork.
            unsafe {
                cmd.pre_exec(move || super::cgroup::join_from_child(&procs));
            }
        }
        if let Some(file) = &netns_file {
            let fd = file.as_raw_fd();
            // SAFETY: setns is a plain syscall, safe between fork and exec; `fd` stays open
            // until `output()` below has forked.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(
                        BorrowedFd::borrow_raw(fd),
                        nix::sched::CloneFlags::CLONE_NEWNET,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        if let Some(d) = &disk {
            let fds = d.raw();
            // SAFETY: fcntl only, between fork and exec, on descriptors open in the parent.
            unsafe {
                cmd.pre_exec(move || {
                    for fd in fds {
                        nix::fcntl::fcntl(
                            BorrowedFd::borrow_raw(fd),
                            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                        )
                        .map_err(std::io::Error::from)?;
                    }
                    Ok(())
                });
            }
        }
        let out = tokio::time::timeout(self.start_timeout, cmd.output())
            .await
            .map_err(|_| VmmError::StartTimeout(self.start_timeout))?
            .map_err(|source| VmmError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        drop(netns_file);
        drop(disk);
        if !out.status.success() {
            self.remove_group(&spec.run_dir).await;
            return Err(VmmError::QemuFailed {
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // QEMU's daemonizing sets its own umask (027): keep what it made (QMP socket, console
        // log) the agent's alone, as the rest of the run dir.
        private_files(&spec.run_dir);
        // -daemonize returns after QEMU wrote its pid file and finished initialising.
        let path = pid_file(&spec.run_dir);
        read_pid_file(&path)
            .map_err(|e| VmmError::PidFile {
                path: path.clone(),
                reason: e.to_string(),
            })?
            .ok_or(VmmError::PidFile {
                path,
                reason: "missing after QEMU started".into(),
            })
    }
}

impl QemuVmm {
    /// A QEMU for `spec` loaded from `state`; running when `run`, else left stopped.
    async fn load(
        &self,
        spec: &VmSpec,
        state: &Path,
        kind: StateKind,
        run: bool,
    ) -> Result<VmHandle, VmmError> {
        let meta = std::fs::metadata(state).map_err(|e| VmmError::BadState {
            path: state.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !meta.is_file() || meta.len() == 0 {
            return Err(VmmError::BadState {
                path: state.to_path_buf(),
                reason: "not a saved VM state".into(),
            });
        }
        let state = std::path::absolute(state)?;
        // -S: the guest does not start by itself once the state is in.
        let vm = self.start(spec, &["-S", "-incoming", "defer"]).await?;
        let span = tracing::info_span!("vm_restore", sandbox_id = %vm.sandbox_id, pid = vm.pid);
        let loaded = async {
            let started = std::time::Instant::now();
            migrate::load(&vm.qmp, &state, vm.spec.memory_mb, kind).await?;
            if run {
                vm.qmp.execute("cont", None).await?;
            }
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "VM restored"
            );
            Ok::<(), VmmError>(())
        }
        .instrument(span)
        .await;
        if let Err(e) = loaded {
            let _ = self.destroy(&vm).await;
            // QEMU exits when it cannot load a stream: whatever broke, the file did not restore.
            return Err(VmmError::BadState {
                path: state,
                reason: e.to_string(),
            });
        }
        Ok(vm)
    }

    /// Starts QEMU for `spec` with `extra` arguments and connects to its QMP socket.
    async fn start(&self, spec: &VmSpec, extra: &[&str]) -> Result<VmHandle, VmmError> {
        let spec = normalize(spec)?;
        let span = tracing::info_span!("vm_boot", sandbox_id = %spec.sandbox_id);
        async {
            prepare_run_dir(&spec)?;
            let started = std::time::Instant::now();
            let pid = match self.spawn(&spec, extra).await {
                Ok(pid) => pid,
                Err(e) => {
                    // A timed-out start may have left a daemon behind.
                    let _ = self.kill_run_dir(&spec.run_dir).await;
                    return Err(e);
                }
            };
            let qmp = match QmpClient::connect_within(&spec.qmp_socket(), self.start_timeout).await
            {
                Ok(q) => q,
                Err(e) => {
                    let _ = stop(pid, &spec.run_dir, None, self.grace).await;
                    return Err(e.into());
                }
            };
            tracing::info!(
                pid,
                accel = %spec.accel,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "VM process started"
            );
            Ok(VmHandle {
                sandbox_id: spec.sandbox_id.clone(),
                pid,
                run_dir: spec.run_dir.clone(),
                spec: spec.clone(),
                qmp: std::sync::Arc::new(qmp),
            })
        }
        .instrument(span)
        .await
    }
}

#[async_trait::async_trait]
impl Vmm for QemuVmm {
    async fn boot(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.start(spec, &[]).await
    }

    async fn save(&self, vm: &VmHandle, state: &Path, kind: StateKind) -> Result<(), VmmError> {
        let span = tracing::info_span!("vm_save", sandbox_id = %vm.sandbox_id, pid = vm.pid);
        async {
            let started = std::time::Instant::now();
            let tmp = temp_name(state);
            vm.qmp.execute("stop", None).await?;
            let saved = async {
                migrate::save(&vm.qmp, &tmp, vm.spec.memory_mb, kind).await?;
                sync_and_rename(&tmp, state)
            }
            .await;
            if let Err(e) = saved {
                let _ = std::fs::remove_file(&tmp);
                // The sandbox keeps running: a failed save must not cost it.
                if let Err(c) = vm.qmp.execute("cont", None).await {
                    tracing::warn!(error = %c, "cannot resume the VM after a failed save");
                }
                return Err(e);
            }
            stop(vm.pid, &vm.run_dir, Some(&vm.qmp), self.grace).await?;
            remove_runtime_files(&vm.run_dir);
            self.remove_group(&vm.run_dir).await;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                bytes = std::fs::metadata(state).map(|m| m.len()).unwrap_or(0),
                "VM saved"
            );
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn restore(
        &self,
        spec: &VmSpec,
        state: &Path,
        kind: StateKind,
    ) -> Result<VmHandle, VmmError> {
        self.load(spec, state, kind, true).await
    }

    async fn restore_stopped(
        &self,
        spec: &VmSpec,
        state: &Path,
        kind: StateKind,
    ) -> Result<VmHandle, VmmError> {
        self.load(spec, state, kind, false).await
    }

    async fn destroy(&self, vm: &VmHandle) -> Result<(), VmmError> {
        let span = tracing::info_span!("vm_destroy", sandbox_id = %vm.sandbox_id, pid = vm.pid);
        async {
            stop(vm.pid, &vm.run_dir, Some(&vm.qmp), self.grace).await?;
            remove_runtime_files(&vm.run_dir);
            self.remove_group(&vm.run_dir).await;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn adopt(&self, run_dir: &Path) -> Result<Option<VmHandle>, VmmError> {
        let run_dir = std::path::absolute(run_dir)?;
        let pid = match read_pid_file(&pid_file(&run_dir)) {
            Ok(Some(pid)) => pid,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(run_dir = %run_dir.display(), "unreadable pid file: {e}");
                return Ok(None);
            }
        };
        if !is_our_qemu(pid, &qmp_socket(&run_dir)) {
            return Ok(None);
        }
        let fail = |reason: String| VmmError::AdoptFailed { pid, reason };
        let raw = std::fs::read(spec_file(&run_dir))
            .map_err(|e| fail(format!("{}: {e}", spec_file(&run_dir).display())))?;
        let spec: VmSpec = serde_json::from_slice(&raw)
            .map_err(|e| fail(format!("{}: {e}", spec_file(&run_dir).display())))?;
        let qmp = QmpClient::connect_within(&qmp_socket(&run_dir), Duration::from_secs(5))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(sandbox_id = %spec.sandbox_id, pid, "adopted running VM");
        Ok(Some(VmHandle {
            sandbox_id: spec.sandbox_id.clone(),
            pid,
            run_dir,
            spec,
            qmp: std::sync::Arc::new(qmp),
        }))
    }

    async fn status(&self, vm: &VmHandle) -> Result<VmStatus, VmmError> {
        if !is_our_qemu(vm.pid, &qmp_socket(&vm.run_dir)) {
            return Ok(VmStatus::Exited);
        }
        let reply = match vm.qmp.execute("query-status", None).await {
            Ok(r) => r,
            // QEMU may exit between the check and the command.
            Err(_) if !alive(vm.pid) => return Ok(VmStatus::Exited),
            Err(e) => return Err(e.into()),
        };
        let status = reply
            .get("status")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                VmmError::Qmp(super::qmp::QmpError::Protocol(format!(
                    "query-status without status: {reply}"
                )))
            })?;
        Ok(VmStatus::from_qmp(status))
    }

    async fn kill_run_dir(&self, run_dir: &Path) -> Result<(), VmmError> {
        QemuVmm::kill_run_dir(self, run_dir).await
    }

    fn events(&self, vm: &VmHandle) -> tokio::sync::broadcast::Receiver<VmEvent> {
        vm.qmp.subscribe()
    }
}

/// Takes group and other bits off the files directly in `dir`.
fn private_files(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let mode = m.permissions().mode();
        if !m.is_dir() && mode & 0o077 != 0 {
            let private = std::fs::Permissions::from_mode(mode & 0o700);
            if let Err(err) = std::fs::set_permissions(e.path(), private) {
                tracing::warn!(path = %e.path().display(), error = %err, "chmod");
            }
        }
    }
}

/// Stops the QEMU at `pid` if it is still ours: QMP `quit`, then SIGKILL after `grace`;
/// without a QMP connection (cleanup of a half-made VM) SIGKILL right away.
async fn stop(
    pid: i32,
    run_dir: &Path,
    qmp: Option<&QmpClient>,
    grace: Duration,
) -> Result<(), VmmError> {
    let socket = qmp_socket(run_dir);
    if !is_our_qemu(pid, &socket) {
        return Ok(());
    }
    if let Some(qmp) = qmp.filter(|q| !q.is_closed()) {
        let started = tokio::time::Instant::now();
        // The reply may lose the race with QEMU closing the socket: the exit is what counts.
        let _ = tokio::time::timeout(grace, qmp.execute("quit", None)).await;
        if wait_gone(pid, grace.saturating_sub(started.elapsed())).await {
            return Ok(());
        }
        tracing::warn!(pid, "VM did not quit within {grace:?}: SIGKILL");
    }
    if is_our_qemu(pid, &socket) {
        sigkill(pid);
    }
    if wait_gone(pid, Duration::from_secs(10)).await {
        Ok(())
    } else {
        Err(VmmError::StillRunning { pid })
    }
}

/// `<state>.tmp`: where a save writes before the rename makes it the state.
fn temp_name(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    state.with_file_name(name)
}

/// fsyncs `tmp`, renames it to `path` and fsyncs the directory: a crash leaves either the old
/// state or the new, never a torn file under the final name.
fn sync_and_rename(tmp: &Path, path: &Path) -> Result<(), VmmError> {
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn remove_runtime_files(run_dir: &Path) {
    for f in [pid_file(run_dir), qmp_socket(run_dir)] {
        if let Err(e) = std::fs::remove_file(&f)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", f.display());
        }
    }
}

fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

/// Checks a spec and makes its paths absolute (QEMU chdirs to / when it daemonizes, and
/// `adopt` recognises a VM by the exact QMP socket path on its command line).
fn normalize(spec: &VmSpec) -> Result<VmSpec, VmmError> {
    let bad = |m: String| Err(VmmError::InvalidSpec(m));
    let mut s = spec.clone();
    if s.sandbox_id.is_empty() {
        return bad("empty sandbox_id".into());
    }
    if !(1..=64).contains(&s.vcpus) {
        return bad(format!("vcpus {} out of range 1..=64", s.vcpus));
    }
    if s.memory_mb < 64 {
        return bad(format!("memory_mb {} below 64", s.memory_mb));
    }
    for p in [
        &mut s.kernel,
        &mut s.initrd,
        &mut s.root_disk,
        &mut s.run_dir,
    ] {
        *p = std::path::absolute(&*p)?;
    }
    for (what, p) in [
        ("kernel", &s.kernel),
        ("initrd", &s.initrd),
        ("root_disk", &s.root_disk),
    ] {
        if !p.is_file() {
            return bad(format!("{what} {} is not a file", p.display()));
        }
    }
    let sock = qmp_socket(&s.run_dir);
    if sock.as_os_str().len() > MAX_SOCKET_PATH {
        return bad(format!("QMP socket path too long: {}", sock.display()));
    }
    // These go into QEMU's comma-separated options: no room for anything unexpected.
    if let Some(tap) = &s.tap
        && (tap.is_empty()
            || tap.len() > 15
            || !tap
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        return bad(format!("invalid TAP name {tap:?}"));
    }
    if let Some(mac) = &s.guest_mac {
        let parts: Vec<&str> = mac.split(':').collect();
        if parts.len() != 6
            || !parts
                .iter()
                .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return bad(format!("invalid MAC {mac:?}"));
        }
    }
    if let Some(ns) = &s.netns
        && (ns.is_empty() || (!ns.starts_with('/') && ns.contains('/')))
    {
        return bad(format!("invalid netns {ns:?}"));
    }
    Ok(s)
}

/// Refuses a run dir with a live VM in it, clears stale runtime files, and writes spec.json.
fn prepare_run_dir(spec: &VmSpec) -> Result<(), VmmError> {
    std::fs::create_dir_all(&spec.run_dir)?;
    if let Ok(Some(pid)) = read_pid_file(&spec.pid_file())
        && is_our_qemu(pid, &spec.qmp_socket())
    {
        return Err(VmmError::InvalidSpec(format!(
            "a VM (pid {pid}) already runs in {}",
            spec.run_dir.display()
        )));
    }
    remove_runtime_files(&spec.run_dir);
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| VmmError::InvalidSpec(format!("cannot serialise spec: {e}")))?;
    let tmp = spec_file(&spec.run_dir).with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, spec_file(&spec.run_dir))?;
    Ok(())
}

/// QEMU's option syntax doubles commas inside values.
fn opt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// TCG's translated-code cache per VM, in MiB. QEMU's default (1 GiB) fills as guest code
/// runs at new addresses (every `exec` under ASLR), so an idle-looking sandbox grew to 1.5 GiB
/// RSS after 1,000 `exec`s; a full cache is simply flushed and refilled.
pub const TCG_TB_SIZE_MB: u32 = 64;

/// `-runas uid:gid` (deprecated since QEMU 9.1) or its successor `-run-with user=uid:gid`.
/// QEMU changes user after opening everything it was given, before running the guest.
fn run_as_args(uid: u32, run_with: bool) -> Vec<String> {
    if run_with {
        vec!["-run-with".into(), format!("user={uid}:{uid}")]
    } else {
        vec!["-runas".into(), format!("{uid}:{uid}")]
    }
}

/// A root disk handed to QEMU as an fd set (`-add-fd`, `/dev/fdset/N`): one read-write and one
/// read-only descriptor, as QEMU picks the one whose access mode matches each open.
struct DiskFds {
    rw: std::fs::File,
    ro: std::fs::File,
}

/// The fd set the root disk goes in.
const DISK_FDSET: u32 = 1;

impl DiskFds {
    fn open(path: &Path) -> Result<DiskFds, VmmError> {
        let open = |write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(path)
                .map_err(|e| VmmError::Disk(format!("{}: {e}", path.display())))
        };
        Ok(DiskFds {
            rw: open(true)?,
            ro: open(false)?,
        })
    }

    fn raw(&self) -> [i32; 2] {
        [self.rw.as_raw_fd(), self.ro.as_raw_fd()]
    }

    fn path(&self) -> String {
        format!("/dev/fdset/{DISK_FDSET}")
    }

    fn args(&self) -> Vec<String> {
        self.raw()
            .iter()
            .flat_map(|fd| ["-add-fd".into(), format!("fd={fd},set={DISK_FDSET}")])
            .collect()
    }
}

/// The full QEMU command line (without the binary) for `spec`, whose paths must be absolute.
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    qemu_args_with_disk(spec, &opt(&spec.root_disk), &[])
}

/// [`qemu_args`] with the root disk given as `disk` (QEMU's syntax, commas doubled) after
/// `before_disk` (e.g. the `-add-fd` its path refers to).
fn qemu_args_with_disk(spec: &VmSpec, disk: &str, before_disk: &[String]) -> Vec<String> {
    let (machine, accel, cpu) = match spec.accel {
        Accel::Kvm => ("microvm,accel=kvm,pit=on,pic=on,rtc=on", None, "host"),
        Accel::Tcg => (
            "microvm,pit=on,pic=on,rtc=on",
            Some(format!("tcg,tb-size={TCG_TB_SIZE_MB}")),
            "max",
        ),
    };
    // RAM is always the backend `mem`, file or anonymous: a state saved by one restores into
    // the other (a paused clone resumes without its base's file).
    let machine = format!("{machine},memory-backend=mem");
    let mut append = BASE_KERNEL_ARGS.to_string();
    if !spec.kernel_args.trim().is_empty() {
        append.push(' ');
        append.push_str(spec.kernel_args.trim());
    }
    let mut a: Vec<String> = before_disk.to_vec();
    a.extend([
        // microvm's ACPI stays on: it is how the guest finds the virtio-mmio devices.
        "-M".into(),
        machine,
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        spec.memory_mb.to_string(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        // A guest reboot or panic ends the process instead of looping.
        "-no-reboot".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initrd.display().to_string(),
        "-append".into(),
        append,
        "-drive".into(),
        // werror/rerror=report: a full host disk is an error the guest sees and QMP reports
        // (BLOCK_IO_ERROR), instead of QEMU's default of silently pausing the VM.
        format!(
            "id=root,file={disk},format=qcow2,if=none,cache=writeback,discard=unmap,\
             werror=report,rerror=report"
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
    ]);
    if let Some(accel) = accel {
        a.push("-accel".into());
        a.push(accel);
    }
    a.push("-object".into());
    a.push(match &spec.memory_file {
        Some(m) => format!(
            "memory-backend-file,id=mem,mem-path={},size={}M,share={}",
            opt(&m.path),
            spec.memory_mb,
            if m.shared { "on" } else { "off" }
        ),
        None => format!("memory-backend-ram,id=mem,size={}M", spec.memory_mb),
    });
    if let Some(tap) = &spec.tap {
        a.push("-netdev".into());
        a.push(format!("tap,id=net0,ifname={tap},script=no,downscript=no"));
        a.push("-device".into());
        a.push(match &spec.guest_mac {
            Some(mac) => format!("virtio-net-device,netdev=net0,mac={mac}"),
            None => "virtio-net-device,netdev=net0".into(),
        });
    }
    a.extend([
        // Appended to a file the agent keeps under SERIAL_LOG_LIMIT (the sampler truncates
        // it): a guest printing nonstop must not fill the host's disk.
        "-chardev".into(),
        format!("file,id=serial0,path={},append=on", opt(&spec.serial_log())),
        "-serial".into(),
        "chardev:serial0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", spec.qmp_socket().display()),
        "-pidfile".into(),
        spec.pid_file().display().to_string(),
        // Re-parented to init: the VM outlives the agent. Returns once QEMU is initialised.
        "-daemonize".into(),
        // seccomp: QEMU's filter, plus no obsolete syscalls and no scheduler/affinity
        // changes. `spawn` and `elevateprivileges` stay allowed: -daemonize forks and
        // -runas switches user after the filter is in place (QEMU 7.2 exits at start with
        // either denied).
        "-sandbox".into(),
        "on,obsolete=deny,resourcecontrol=deny".into(),
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            sandbox_id: "abc".into(),
            vcpus: 2,
            memory_mb: 256,
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd.img".into(),
            kernel_args: "wrenn.net=169.254.0.21/30,169.254.0.22".into(),
            root_disk: "/s/abc/root,1.qcow2".into(),
            netns: Some("ns1".into()),
            tap: Some("tap0".into()),
            guest_mac: Some("02:fc:00:00:00:05".into()),
            run_dir: "/run/wrenn/abc".into(),
            accel,
            memory_file: None,
            uid: None,
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_argv() {
        let a = qemu_args(&spec(Accel::Tcg));
        assert_eq!(
            after(&a, "-M"),
            ["microvm,pit=on,pic=on,rtc=on,memory-backend=mem"]
        );
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-ram,id=mem,size=256M"]
        );
        assert_eq!(after(&a, "-accel"), ["tcg,tb-size=64"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        assert_eq!(after(&a, "-m"), ["256"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        for flag in ["-nodefaults", "-no-user-config", "-no-reboot", "-daemonize"] {
            assert!(a.iter().any(|x| x == flag), "{flag} missing");
        }
        assert!(
            !a.iter().any(|x| x == "-nographic"),
            "-nographic breaks -daemonize"
        );
        let append = after(&a, "-append")[0];
        assert!(append.starts_with("console=ttyS0 root=/dev/vda rw panic=-1 "));
        assert!(append.contains("tsc_early_khz=2000000 tsc=reliable no_timer_check"));
        assert!(append.ends_with(" quiet wrenn.net=169.254.0.21/30,169.254.0.22"));
        let drive = after(&a, "-drive")[0];
        assert!(drive.starts_with("id=root,file=/s/abc/root,,1.qcow2,format=qcow2,if=none,"));
        assert!(drive.contains("werror=report,rerror=report"));
        assert_eq!(
            after(&a, "-device"),
            [
                "virtio-blk-device,drive=root",
                "virtio-net-device,netdev=net0,mac=02:fc:00:00:00:05"
            ]
        );
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no"]
        );
        assert_eq!(
            after(&a, "-chardev"),
            ["file,id=serial0,path=/run/wrenn/abc/serial.log,append=on"]
        );
        assert_eq!(
            after(&a, "-sandbox"),
            ["on,obsolete=deny,resourcecontrol=deny"]
        );
        assert_eq!(after(&a, "-serial"), ["chardev:serial0"]);
        assert_eq!(
            after(&a, "-qmp"),
            ["unix:/run/wrenn/abc/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(after(&a, "-pidfile"), ["/run/wrenn/abc/vmm.pid"]);
    }

    #[test]
    fn kvm_argv_without_network() {
        let mut s = spec(Accel::Kvm);
        s.tap = None;
        s.kernel_args = String::new();
        let a = qemu_args(&s);
        assert_eq!(
            after(&a, "-M"),
            ["microvm,accel=kvm,pit=on,pic=on,rtc=on,memory-backend=mem"]
        );
        assert_eq!(after(&a, "-cpu"), ["host"]);
        assert!(
            after(&a, "-accel").is_empty(),
            "KVM keeps QEMU's own defaults"
        );
        assert!(after(&a, "-netdev").is_empty());
        assert!(after(&a, "-append")[0].ends_with(" quiet"));
    }

    #[test]
    fn normalize_rejects_bad_input() {
        let dir = std::env::temp_dir();
        let f = dir.join(format!("wrenn-vmm-unit-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        let mut s = spec(Accel::Tcg);
        s.kernel = f.clone();
        s.initrd = f.clone();
        s.root_disk = f.clone();
        s.run_dir = dir.join("run");
        assert!(normalize(&s).is_ok());
        for mutate in [
            (|s: &mut VmSpec| s.tap = Some("tap0,script=/bin/evil".into())) as fn(&mut VmSpec),
            |s| s.guest_mac = Some("02:fc:00:00:00".into()),
            |s| s.netns = Some("../etc".into()),
            |s| s.vcpus = 0,
            |s| s.memory_mb = 16,
            |s| s.sandbox_id.clear(),
            |s| s.kernel = "/nonexistent/vmlinuz".into(),
            |s| s.run_dir = PathBuf::from("/").join("x".repeat(120)),
        ] {
            let mut bad = s.clone();
            mutate(&mut bad);
            assert!(
                matches!(normalize(&bad), Err(VmmError::InvalidSpec(_))),
                "{bad:?} accepted"
            );
        }
        std::fs::remove_file(f).unwrap();
    }
}
