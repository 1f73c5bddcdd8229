//! Running the host tools the build drives (apt, dpkg-deb, debootstrap, mkfs.ext4, cpio).

use std::process::{Command, Output};

use crate::error::{ImageError, IoContext, Result};

/// Lines of a failed command's output kept in the error.
const TAIL_LINES: usize = 20;

/// Runs `cmd` to completion, capturing its output; a non-zero exit becomes an error that
/// quotes the end of stderr (or stdout, for tools that report there).
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    tracing::debug!(command = %line, "running");
    let output = cmd.output().ctx(|| format!("cannot run `{line}`"))?;
    if output.status.success() {
        return Ok(output);
    }
    let text = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &output.stderr
    } else {
        &output.stdout
    };
    Err(ImageError::Command {
        command: line,
        status: output.status.to_string(),
        output: tail(&String::from_utf8_lossy(text), TAIL_LINES),
    })
}

/// Runs `cmd` and returns its stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let output = run(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The command line as a human would type it (for messages).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_quotes_stderr_tail() {
        let err = run(Command::new("sh").args(["-c", "echo out; echo bad >&2; exit 3"]))
            .expect_err("exit 3 is a failure");
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        // stderr is quoted, stdout (which had text too) is not.
        assert!(msg.ends_with("exit status: 3):\nbad"), "{msg}");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
