//! Child reaping. envd runs as PID 1 in the guest (and as a child subreaper on a host), so
//! every orphan in the sandbox becomes its child. One task reaps them all with
//! `waitpid(-1)` and hands the exit status of the processes envd started to their owners;
//! nothing else in envd may call `wait` on a child.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

impl Exit {
    /// Exit code as E2B envd reports it: -1 when killed by a signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal { .. } => -1,
        }
    }

    pub fn exited(self) -> bool {
        matches!(self, Exit::Code(_))
    }

    /// Status text in the form E2B's envd uses: `exit status 3`, `signal: killed`.
    pub fn status(self) -> String {
        match self {
            Exit::Code(c) => format!("exit status {c}"),
            Exit::Signal {
                signal,
                core_dumped,
            } => {
                let name = signal_text(signal);
                if core_dumped {
                    format!("signal: {name} (core dumped)")
                } else {
                    format!("signal: {name}")
                }
            }
        }
    }
}

fn signal_text(signal: i32) -> String {
    let text = match Signal::try_from(signal) {
        Ok(Signal::SIGHUP) => "hangup",
        Ok(Signal::SIGINT) => "interrupt",
        Ok(Signal::SIGQUIT) => "quit",
        Ok(Signal::SIGILL) => "illegal instruction",
        Ok(Signal::SIGTRAP) => "trace/breakpoint trap",
        Ok(Signal::SIGABRT) => "aborted",
        Ok(Signal::SIGBUS) => "bus error",
        Ok(Signal::SIGFPE) => "floating point exception",
        Ok(Signal::SIGKILL) => "killed",
        Ok(Signal::SIGUSR1) => "user defined signal 1",
        Ok(Signal::SIGSEGV) => "segmentation fault",
        Ok(Signal::SIGUSR2) => "user defined signal 2",
        Ok(Signal::SIGPIPE) => "broken pipe",
        Ok(Signal::SIGALRM) => "alarm clock",
        Ok(Signal::SIGTERM) => "terminated",
        _ => return format!("signal {signal}"),
    };
    text.to_string()
}

/// Pids envd started and whose exit someone awaits. Registration happens under the same
/// lock the reaper takes, so no exit can be reaped before its owner is registered.
#[derive(Default)]
struct Table {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
}

/// Handle to the reaper task.
#[derive(Clone)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

/// Makes this process a child subreaper so orphans of its children are reparented to it
/// (a no-op in effect when envd is PID 1).
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer argument only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "PR_SET_CHILD_SUBREAPER failed");
    }
}

impl Reaper {
    /// Starts the reaper on the current tokio runtime.
    pub fn start() -> io::Result<Reaper> {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let reaper = Reaper {
            table: Arc::default(),
        };
        let table = reaper.table.clone();
        tokio::spawn(async move {
            // The periodic tick covers coalesced or missed SIGCHLDs.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {},
                    _ = tick.tick() => {},
                }
                reap_all(&table);
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd` and registers its pid before the reaper can see it exit.
    /// The returned receiver yields the exit once the process is reaped.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<Exit>)> {
        let (tx, rx) = oneshot::channel();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        table.waiting.insert(child.id() as i32, tx);
        Ok((child, rx))
    }
}

fn reap_all(table: &Mutex<Table>) {
    // Held across `waitpid` (which never blocks here) because `Reaper::spawn` holds it
    // across `Command::spawn`: when exec fails, std waits for the failed child itself and
    // panics if it was reaped first, so reaping must not run during a spawn.
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => s,
        };
        let (pid, exit) = match status {
            WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
            WaitStatus::Signaled(pid, sig, core) => (
                pid,
                Exit::Signal {
                    signal: sig as i32,
                    core_dumped: core,
                },
            ),
            _ => continue,
        };
        match t.waiting.remove(&pid.as_raw()) {
            Some(tx) => {
                let _ = tx.send(exit);
            }
            // An orphan reparented to envd: reaped, nothing to report.
            None => tracing::debug!(pid = pid.as_raw(), ?exit, "reaped orphan"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_match_envd() {
        assert_eq!(Exit::Code(3).status(), "exit status 3");
        assert_eq!(Exit::Code(0).status(), "exit status 0");
        let killed = Exit::Signal {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(killed.status(), "signal: killed");
        assert_eq!(killed.code(), -1);
        assert!(!killed.exited());
        assert_eq!(
            Exit::Signal {
                signal: 15,
                core_dumped: false
            }
            .status(),
            "signal: terminated"
        );
    }
}
