//! Local terminal handling: raw mode for `wrenn shell` (restored on drop and from the panic
//! hook), the window size, and password entry without echo.

use std::io::{self, BufRead, Write};
use std::sync::{Mutex, Once};

use anyhow::{Context, bail};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

/// The settings to put back; shared with the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
static HOOK: Once = Once::new();

pub fn stdin_is_tty() -> bool {
    nix::unistd::isatty(io::stdin()).unwrap_or(false)
}

fn restore_saved() {
    let saved = SAVED
        .lock()
        .map(|mut g| g.take())
        .unwrap_or_else(|p| p.into_inner().take());
    if let Some(t) = saved {
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSAFLUSH, &t);
    }
}

/// Puts stdin's terminal into `mode` until dropped. The original settings are also restored
/// if the process panics (the hook runs before unwinding or abort).
pub struct TermGuard(());

impl TermGuard {
    fn set(change: impl FnOnce(&mut Termios)) -> anyhow::Result<TermGuard> {
        let orig = termios::tcgetattr(io::stdin()).context("read terminal settings")?;
        let mut t = orig.clone();
        change(&mut t);
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(orig);
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                prev(info);
            }));
        });
        let guard = TermGuard(());
        termios::tcsetattr(io::stdin(), SetArg::TCSAFLUSH, &t).context("set terminal mode")?;
        Ok(guard)
    }

    /// Raw mode: every key goes to the remote PTY (Ctrl-C included), no local echo.
    pub fn raw() -> anyhow::Result<TermGuard> {
        TermGuard::set(termios::cfmakeraw)
    }

    /// Line mode without echo, for passwords.
    pub fn no_echo() -> anyhow::Result<TermGuard> {
        TermGuard::set(|t| t.local_flags.remove(LocalFlags::ECHO))
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore_saved();
    }
}

/// Columns and rows of the terminal on stdout (or stdin); `None` when neither is one.
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [nix::libc::STDOUT_FILENO, nix::libc::STDIN_FILENO] {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the pointed-to struct, which lives
        // for the call; a non-terminal fd just fails with ENOTTY.
        let rc = unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

/// Reads one line from stdin (without its line ending); EOF before any input is an error.
pub fn read_line(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("read {what} from stdin"))?;
    if n == 0 {
        bail!("no {what} on stdin");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Prompts on stderr and reads a line; without echo when stdin is a terminal. Ctrl-C while
/// echo is off restores the terminal before the process exits.
pub async fn prompt(label: &str, secret: bool) -> anyhow::Result<String> {
    eprint!("{label}: ");
    let _ = io::stderr().flush();
    let guard = if secret && stdin_is_tty() {
        Some(TermGuard::no_echo()?)
    } else {
        None
    };
    let what = label.to_lowercase();
    let read = tokio::task::spawn_blocking(move || read_line(&what));
    let line = tokio::select! {
        r = read => r.context("reader thread")?,
        _ = tokio::signal::ctrl_c() => {
            drop(guard);
            eprintln!();
            bail!("interrupted");
        }
    };
    if guard.is_some() {
        // The user's Enter was not echoed.
        eprintln!();
    }
    line
}
