//! Shared helpers for the VM tests: the tiny test guest, Drop guards that leave no QEMU and
//! no namespace behind, and serial-console polling.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wrenn_agent::vmm::{Accel, VmSpec};

const BUILD_SCRIPT: &str = include_str!("build-test-guest.sh");

/// Kernel and initramfs of the test guest, built once per script version (under a file lock:
/// test processes run in parallel) into the shared cache.
pub fn test_guest() -> (PathBuf, PathBuf) {
    let hash = Sha256::digest(BUILD_SCRIPT.as_bytes());
    let tag: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let cache = std::env::var_os("WRENN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/wrenn"));
    let out = cache.join("vmm-test-guest").join(tag);
    let (kernel, initrd) = (out.join("vmlinuz"), out.join("initrd.img"));
    if kernel.is_file() && initrd.is_file() {
        return (kernel, initrd);
    }
    std::fs::create_dir_all(&out).expect("create test guest dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/build-test-guest.sh");
    let status = Command::new("flock")
        .arg(out.join(".lock"))
        .arg("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .expect("run flock (util-linux)");
    assert!(status.success(), "building the test guest failed: {status}");
    (kernel, initrd)
}

/// A sparse raw "base image" of `mb` MiB.
pub fn raw_base(dir: &Path, mb: u64) -> PathBuf {
    let p = dir.join("base.raw");
    let f = std::fs::File::create(&p).expect("create base");
    f.set_len(mb * 1024 * 1024).expect("size base");
    p
}

/// The unprivileged user the driver tests' QEMUs run as.
pub const TEST_UID: u32 = 1_999_999_999;

/// A spec for the test guest; `mode` selects what its /init does (`idle`, `write`, `fill`).
pub fn spec(id: &str, dir: &Path, root_disk: &Path, mode: &str) -> VmSpec {
    let (kernel, initrd) = test_guest();
    VmSpec {
        sandbox_id: id.to_string(),
        vcpus: 1,
        memory_mb: 256,
        kernel,
        initrd,
        kernel_args: format!("wrenn.test={mode}"),
        root_disk: root_disk.to_path_buf(),
        netns: None,
        tap: None,
        guest_mac: None,
        run_dir: dir.join("run"),
        accel: Accel::Tcg,
        memory_file: None,
        // As the agent runs them: QEMU drops root once set up (saves and loads included).
        uid: Some(TEST_UID),
    }
}

fn pid_in(run_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(run_dir.join("vmm.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_running_qemu_for(pid: i32, run_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .is_some_and(|s| s == 'Z' || s == 'X');
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let sock = run_dir.join("qmp.sock");
    !zombie && String::from_utf8_lossy(&cmdline).contains(&*sock.to_string_lossy())
}

pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .is_some_and(|s| s == 'Z' || s == 'X')
}

/// Kills the test's QEMU (found through its run dir) when the test ends, pass or fail.
pub struct VmGuard(pub PathBuf);

impl Drop for VmGuard {
    fn drop(&mut self) {
        let Some(pid) = pid_in(&self.0) else { return };
        if !is_running_qemu_for(pid, &self.0) {
            return;
        }
        // SAFETY: plain kill(2) on a pid we just checked is our QEMU.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let start = Instant::now();
        while pid_alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A network namespace created for one test and deleted when it ends.
pub struct NetnsGuard(pub String);

impl NetnsGuard {
    pub fn new(name: &str) -> Self {
        let st = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip");
        assert!(st.success(), "ip netns add {name} failed");
        NetnsGuard(name.to_string())
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn serial(run_dir: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(run_dir.join("serial.log")).unwrap_or_default())
        .into_owned()
}

/// Waits until the serial log satisfies `pred`; panics with the log after `timeout`.
pub async fn wait_serial(run_dir: &Path, timeout: Duration, pred: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let log = serial(run_dir);
        if pred(&log) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "serial log condition not met within {timeout:?}; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
