//! The `wrenn` client commands: talk to a control plane over its public HTTP + WebSocket API.
//!
//! The `wrenn` binary flattens [`Command`] into its own subcommands and hands the parsed
//! value to [`run`], which returns the process exit code (for `exec` and `shell`, the remote
//! command's). Credentials live in a small config file ([`config`]); `--url` / `WRENN_URL`
//! and `--api-key` / `WRENN_API_KEY` override it per invocation.

mod client;
pub mod config;
mod cp;
mod exec;
mod hosts;
mod keys;
mod login;
mod output;
mod sandbox;
mod shell;
mod snapshot;
mod templates;
mod term;

use clap::{Args, Subcommand};

pub use client::ApiError;

/// Connection flags every client command accepts (before or after its subcommand).
#[derive(Debug, Clone, Default, Args)]
pub struct Global {
    /// Control-plane URL (default: the one saved by `wrenn login`, else http://127.0.0.1:8080).
    #[arg(long, env = "WRENN_URL", global = true, hide_env_values = true)]
    pub url: Option<String>,
    /// API key (`wrn_...`) to use instead of the saved credentials.
    #[arg(long, env = "WRENN_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The client subcommands; the `wrenn` binary flattens them next to `image`, `agent`, `server`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with email + password (stores a session token) or store an API key.
    Login(login::LoginArgs),
    /// API keys of your team (needs a password login: keys cannot manage keys).
    Keys(keys::KeysArgs),
    /// Create, list, inspect and remove sandboxes.
    #[command(alias = "sandboxes")]
    Sandbox(sandbox::SandboxArgs),
    /// List sandboxes (same as `wrenn sandbox ls`).
    Ls(sandbox::LsArgs),
    /// Remove sandboxes (same as `wrenn sandbox rm`).
    Rm(sandbox::RmArgs),
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec(exec::ExecArgs),
    /// Interactive terminal (PTY) in a sandbox; exits with the shell's exit code.
    Shell(shell::ShellArgs),
    /// Copy a file to or from a sandbox: `cp LOCAL ID:/path` or `cp ID:/path LOCAL` (`-` = stdio).
    Cp(cp::CpArgs),
    /// List the templates sandboxes can be created from.
    Templates(templates::TemplatesArgs),
    /// Snapshot templates: freeze a sandbox (memory and disk) to start new ones from.
    #[command(alias = "snapshots")]
    Snapshot(snapshot::SnapshotArgs),
    /// Hosts: list, make a registration token for a new one, delete.
    #[command(alias = "host")]
    Hosts(hosts::HostsArgs),
}

/// Runs one client command to completion and returns the exit code. Errors are printed to
/// stderr as `error: <message> (<code>)` (API errors) or `error: <cause chain>`.
pub fn run(command: Command) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(dispatch(command));
    // A blocking stdin read may still be parked in the pool; don't wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            1
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Login(a) => login::run(a).await.map(|()| 0),
        Command::Keys(a) => keys::run(a).await.map(|()| 0),
        Command::Sandbox(a) => sandbox::run(a).await.map(|()| 0),
        Command::Ls(a) => sandbox::ls(a).await.map(|()| 0),
        Command::Rm(a) => sandbox::rm(a).await.map(|()| 0),
        Command::Exec(a) => exec::run(a).await,
        Command::Shell(a) => shell::run(a).await,
        Command::Cp(a) => cp::run(a).await.map(|()| 0),
        Command::Templates(a) => templates::run(a).await.map(|()| 0),
        Command::Snapshot(a) => snapshot::run(a).await.map(|()| 0),
        Command::Hosts(a) => hosts::run(a).await.map(|()| 0),
    }
}

fn print_error(e: &anyhow::Error) {
    if let Some(api) = e.downcast_ref::<ApiError>() {
        eprintln!("error: {api}");
        if api.status == 401 {
            eprintln!("hint: run `wrenn login` (or pass --api-key / WRENN_API_KEY)");
        }
    } else {
        eprintln!("error: {e:#}");
    }
}

/// Maps a remote exit status to ours: 0–255 as is; a reported signal `n` → 128+n; anything
/// else (-1 = killed or unknown) → 1.
pub fn exit_code(exit_code: Option<i64>, signal: Option<i64>) -> i32 {
    if let Some(n) = signal.filter(|n| (1..=127).contains(n)) {
        return 128 + n as i32;
    }
    match exit_code {
        Some(c) if (0..=255).contains(&c) => c as i32,
        _ => 1,
    }
}

/// `K=V` flag values (env, metadata). The value may contain `=`; the key may not be empty.
pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Stands in for the `wrenn` binary's parser.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("wrenn").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn kv() {
        assert_eq!(parse_kv("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_kv("A="), Ok(("A".into(), String::new())));
        assert!(parse_kv("=x").is_err());
        assert!(parse_kv("novalue").is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(Some(0), None), 0);
        assert_eq!(exit_code(Some(3), None), 3);
        assert_eq!(exit_code(Some(-1), None), 1);
        assert_eq!(exit_code(None, None), 1);
        assert_eq!(exit_code(Some(300), None), 1);
        assert_eq!(exit_code(Some(-1), Some(9)), 137);
    }

    #[test]
    fn exec_args_after_double_dash() {
        let Command::Exec(a) = parse(&[
            "exec",
            "abc",
            "--env",
            "A=1",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo --env",
        ])
        .unwrap() else {
            panic!("not exec")
        };
        assert_eq!(a.id, "abc");
        assert_eq!(a.env, vec![("A".to_owned(), "1".to_owned())]);
        assert_eq!(a.cwd.as_deref(), Some("/tmp"));
        assert_eq!(a.command, ["sh", "-c", "echo --env"]);
        assert!(parse(&["exec", "abc"]).is_err(), "a command is required");
    }

    #[test]
    fn global_flags_anywhere() {
        let Command::Sandbox(a) =
            parse(&["sandbox", "--url", "http://x:1", "ls", "--json"]).unwrap()
        else {
            panic!("not sandbox")
        };
        assert_eq!(a.global.url.as_deref(), Some("http://x:1"));
        let Command::Sandbox(a) =
            parse(&["sandbox", "ls", "--api-key", "wrn_k", "--status", "running"]).unwrap()
        else {
            panic!("not sandbox")
        };
        assert_eq!(a.global.api_key.as_deref(), Some("wrn_k"));
    }

    #[test]
    fn sandbox_create_flags() {
        let Command::Sandbox(a) = parse(&[
            "sandbox",
            "create",
            "--vcpus",
            "2",
            "--memory-mb",
            "1024",
            "--timeout",
            "0",
            "--metadata",
            "team=ml",
            "--env",
            "X=1",
        ])
        .unwrap() else {
            panic!("not sandbox")
        };
        let sandbox::SandboxCommand::Create(c) = a.command else {
            panic!("not create")
        };
        assert_eq!(c.template, "base");
        assert_eq!(
            (c.vcpus, c.memory_mb, c.timeout),
            (Some(2), Some(1024), Some(0))
        );
        assert_eq!(c.metadata, vec![("team".to_owned(), "ml".to_owned())]);
        assert!(parse(&["sandbox", "create", "--env", "bad"]).is_err());
    }

    #[test]
    fn cp_and_rm_parse() {
        assert!(
            parse(&["cp", "a", "b"]).is_ok(),
            "direction is checked at run time"
        );
        let Command::Rm(a) = parse(&["rm", "a", "b"]).unwrap() else {
            panic!("not rm")
        };
        assert_eq!(a.ids, ["a", "b"]);
        assert!(parse(&["rm"]).is_err());
    }
}
