//! VMM processes seen through /proc. After `-daemonize` QEMU is not our child, so we cannot
//! wait() for it: we poll /proc, and we check its command line before trusting or signalling a
//! pid from a file, since pids get recycled.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The process's state letter from /proc/<pid>/stat (`R`, `S`, `Z`...), if it exists.
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: the state follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// True while the process exists and has not exited. A zombie has exited: it only waits for
/// its parent (init, for a daemonized QEMU) to reap it.
pub fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// True if `pid` is a live QEMU whose QMP socket is `qmp_socket`: the socket path is unique
/// per sandbox, so a recycled pid or another sandbox's QEMU never matches.
pub fn is_our_qemu(pid: i32, qmp_socket: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let Some(args) = cmdline(pid) else {
        return false;
    };
    let is_qemu = args.first().is_some_and(|a0| is_qemu_argv0(a0));
    let qmp = format!("unix:{},server=on,wait=off", qmp_socket.display());
    is_qemu && args.contains(&qmp)
}

/// Whether a process's first argument names a QEMU system emulator, by name or by path (the
/// agent runs it by the absolute path its preflight resolved).
pub fn is_qemu_argv0(argv0: &str) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("qemu-system"))
}

/// Every live QEMU whose command line names `qmp_socket` (see [`is_our_qemu`]).
pub fn pids_of_qemu_with(qmp_socket: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| is_our_qemu(pid, qmp_socket))
        .collect()
}

pub fn sigkill(pid: i32) {
    // ESRCH (already gone) is the outcome we want anyway.
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Polls until the process has exited; false if it still runs after `timeout`.
pub async fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let start = tokio::time::Instant::now();
    while alive(pid) {
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// The pid in QEMU's `-pidfile`; `None` when there is no file.
pub fn read_pid_file(path: &Path) -> std::io::Result<Option<i32>> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<i32>().map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_but_not_qemu() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(!is_our_qemu(me, Path::new("/tmp/x/qmp.sock")));
        assert!(!alive(i32::MAX));
    }
}
