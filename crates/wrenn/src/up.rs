//! `wrenn up`: the whole system on one machine. Builds the base image if it is missing,
//! runs the control plane in this process (SQLite under the data dir unless `DATABASE_URL`),
//! creates the admin account, team and first API key (idempotently), and starts the host
//! agent as a separate process that registers over HTTP with a one-time token — the same
//! path a remote host takes. Prints the URL and the key; runs until Ctrl-C / SIGTERM.
//!
//! With `--domain D` the listener serves HTTPS for the E2B SDKs' `E2B_DOMAIN=D`, with a
//! local CA and certificate made once under `<data-dir>/tls/`; the agent, whose HTTP client
//! has no TLS, reaches the control plane on a plain loopback listener of its own.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wrenn_agent::registration;
use wrenn_cp::bootstrap;
use wrenn_cp::db::HostStatus;
use wrenn_cp::server::ServerConfig;
use wrenn_cp::server::tls::{LocalCerts, ensure_local_certs, normalize_domain};

/// How long the agent may take to register and come online (the first start probes the
/// accelerator by booting a VM, ~5–30 s under TCG).
const AGENT_ONLINE_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where everything lives: the SQLite database, secrets, images, sandboxes.
    #[arg(long, env = "WRENN_DATA_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// Address of the control plane (API, dashboard, docs).
    #[arg(long, env = "WRENN_CP_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the local agent's RPC listener.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub agent_listen: SocketAddr,
    /// PostgreSQL instead of SQLite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The admin account's email.
    #[arg(long, default_value = "admin@wrenn.local")]
    pub admin_email: String,
    /// Cache for debootstrap trees and packages (image build).
    #[arg(long, env = "WRENN_CACHE", default_value = wrenn_image::layout::DEFAULT_CACHE)]
    pub cache: PathBuf,
    /// The envd binary to put in the image [default: `envd` next to this executable].
    #[arg(long, env = "WRENN_ENVD")]
    pub envd: Option<PathBuf>,
    /// Extra flags for the agent, e.g. `--agent-arg=--accel=tcg` (repeatable).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Serve HTTPS for the E2B SDKs' `E2B_DOMAIN`: the API at `api.<domain>`, sandboxes at
    /// `<port>-<id>.<domain>` (the SDKs use port 443). Makes a local CA once under
    /// `<data-dir>/tls/`.
    #[arg(long, env = "WRENN_DOMAIN")]
    pub domain: Option<String>,
}

/// The agent child: SIGTERM and reaped when dropped (its VMs keep running and are
/// re-adopted by the next start).
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            if let Ok(pid) = i32::try_from(self.0.id()) {
                // SAFETY: signalling our own, not yet reaped, child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = self.0.wait();
        }
    }
}

pub fn run(mut args: UpArgs) -> anyhow::Result<()> {
    args.domain = args.domain.as_deref().map(normalize_domain).transpose()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The agent runs the same checks and exits on a failure; checked here first so a host
    // that cannot run sandboxes says so in seconds, before the image build.
    runtime
        .block_on(wrenn_agent::preflight::check(
            &wrenn_agent::network::Network::new(wrenn_agent::network::NetworkConfig {
                prefix: "wrenn".into(),
                max_slots: 1,
            }),
        ))
        .context("the local host agent")?;
    build_image(&args)?;
    runtime.block_on(up(args))
}

fn build_image(args: &UpArgs) -> anyhow::Result<()> {
    let envd = match &args.envd {
        Some(p) => p.clone(),
        None => crate::image::sibling_envd()?,
    };
    let mut opts = wrenn_image::BuildOptions::base(envd);
    opts.root = args.data_dir.clone();
    opts.cache = args.cache.clone();
    eprintln!("wrenn up: base image (built once, then reused)");
    let outcome = wrenn_image::build(&opts).context("build the base image")?;
    eprintln!(
        "wrenn up: image ready ({:.1}s)",
        outcome.elapsed.as_secs_f64()
    );
    Ok(())
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let certs = match &args.domain {
        Some(d) => Some(
            ensure_local_certs(&args.data_dir.join("tls"), d).context("the local certificates")?,
        ),
        None => None,
    };
    let server = wrenn_cp::server::start(ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        tls: certs.as_ref().map(|c| c.files.clone()),
        domain: args.domain.clone(),
        plain_listen: certs
            .as_ref()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    })
    .await
    .context("control plane")?;
    let url = server.url();
    // What speaks plain HTTP (the agent, the CLI) uses the loopback listener under TLS.
    let local_url = server.plain_url().unwrap_or_else(|| url.clone());
    let db = server.state.db.clone();
    let admin = bootstrap::ensure_admin(&db, &args.data_dir, &args.admin_email)
        .await
        .context("admin account")?;

    let creds_path = registration::credentials_path(&args.data_dir);
    let known = match registration::load(&creds_path).context("agent credentials")? {
        Some(c) if bootstrap::host_is_registered(&db, &c.host_id).await? => Some(c.host_id),
        _ => None,
    };
    let token = match known {
        Some(_) => None,
        None => Some(bootstrap::local_host_token(&db, &admin.user_id).await?),
    };
    let log_path = args.data_dir.join("agent.log");
    let mut agent = spawn_agent(&args, &local_url, token.as_deref(), &log_path)?;
    let host_id = wait_online(
        &db,
        &creds_path,
        &mut agent,
        &log_path,
        token.is_some(),
        args.agent_listen,
    )
    .await?;

    println!();
    println!("Wrenn is up.");
    println!("  API       {url}   (docs: {url}/docs)");
    println!("  API key   {}", admin.api_key);
    match &admin.password {
        Some(_) => println!(
            "  Admin     {} (password in {})",
            admin.email,
            args.data_dir.join(bootstrap::ADMIN_PASSWORD_FILE).display()
        ),
        None => println!("  Admin     {}", admin.email),
    }
    println!("  Host      {host_id} (agent log: {})", log_path.display());
    if local_url != url {
        println!("  Local     {local_url}   (plain HTTP, this machine only: the agent, the CLI)");
    }
    println!();
    println!("Try it:");
    println!(
        "  export WRENN_URL={local_url} WRENN_API_KEY={}",
        admin.api_key
    );
    println!("  ID=$(wrenn sandbox create) && wrenn exec $ID -- echo hi && wrenn sandbox rm $ID");
    if let (Some(domain), Some(certs)) = (&args.domain, &certs) {
        print_e2b(domain, certs, &admin.api_key, server.addr.port());
    }
    println!();
    println!("Ctrl-C stops the control plane and the agent; sandboxes keep running.");

    let exited = tokio::select! {
        () = wrenn_cp::server::shutdown_signal() => None,
        status = wait_exit(&mut agent) => Some(status),
    };
    drop(agent);
    server.stop().await.context("stop the control plane")?;
    if let Some(status) = exited {
        bail!("{}", agent_exited(status, &log_path));
    }
    Ok(())
}

/// How to point the E2B SDKs at this system by domain alone.
fn print_e2b(domain: &str, certs: &LocalCerts, key: &str, port: u16) {
    let ca = certs.ca.display();
    println!();
    println!("E2B SDKs (api.{domain} and *.{domain} must resolve to this machine):");
    println!("  export E2B_DOMAIN={domain} E2B_API_KEY={key}");
    let new = if certs.made { " (made now)" } else { "" };
    println!("  Trust the CA {ca}{new}, one of:");
    println!("    export SSL_CERT_FILE={ca}   # Python SDK (replaces its default CAs)");
    println!("    export NODE_EXTRA_CA_CERTS={ca}   # JS SDK");
    println!("    cp {ca} /usr/local/share/ca-certificates/wrenn.crt && update-ca-certificates");
    if port != 443 {
        println!(
            "  The SDKs reach sandboxes at https://<port>-<id>.{domain} on port 443: listen there \
             (--listen ADDR:443) or forward 443 to {port}."
        );
    }
}

/// Lines of the agent's log shown when it exits.
const LOG_TAIL_LINES: usize = 15;

/// Says that the agent exited, with the end of its log (its reason is the last lines).
fn agent_exited(status: std::process::ExitStatus, log_path: &Path) -> String {
    let tail = std::fs::read(log_path)
        .map(|b| {
            let text = String::from_utf8_lossy(&b).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        })
        .unwrap_or_default();
    format!(
        "the agent exited ({status}); the end of {}:\n{tail}",
        log_path.display()
    )
}

fn spawn_agent(
    args: &UpArgs,
    cp_url: &str,
    token: Option<&str>,
    log_path: &Path,
) -> anyhow::Result<AgentProcess> {
    let exe = std::env::current_exe().context("locate the wrenn executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .arg("--root")
        .arg(&args.data_dir)
        .args(["--listen", &args.agent_listen.to_string()])
        .args(["--cp-url", cp_url])
        .args(&args.agent_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(t) = token {
        // Through the environment, not argv: other users can read a process's argv.
        cmd.env("AGENT_REGISTER_TOKEN", t);
    }
    // SAFETY: prctl only; the agent gets SIGTERM if `wrenn up` dies without cleaning up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(AgentProcess(cmd.spawn().context("start the agent")?))
}

/// Waits until the agent's host is online in the database and this agent process answers on
/// its address (the row stays `online` from an earlier run, so it alone proves nothing).
async fn wait_online(
    db: &wrenn_cp::db::Db,
    creds_path: &Path,
    agent: &mut AgentProcess,
    log_path: &Path,
    registering: bool,
    agent_addr: SocketAddr,
) -> anyhow::Result<String> {
    let started = Instant::now();
    // A re-registration rewrites the file: wait for the new one.
    let before = std::fs::metadata(creds_path)
        .and_then(|m| m.modified())
        .ok();
    loop {
        if let Some(status) = agent.0.try_wait()? {
            bail!("{}", agent_exited(status, log_path));
        }
        let fresh = !registering
            || std::fs::metadata(creds_path)
                .and_then(|m| m.modified())
                .ok()
                .is_some_and(|m| Some(m) != before);
        if fresh && let Some(c) = registration::load(creds_path)? {
            let online =
                matches!(db.host_by_id(&c.host_id).await, Ok(h) if h.status == HostStatus::Online);
            if online && tokio::net::TcpStream::connect(agent_addr).await.is_ok() {
                return Ok(c.host_id);
            }
        }
        if started.elapsed() > AGENT_ONLINE_TIMEOUT {
            bail!(
                "the agent did not come online within {}s; see {}",
                AGENT_ONLINE_TIMEOUT.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_exit(agent: &mut AgentProcess) -> std::process::ExitStatus {
    loop {
        if let Ok(Some(s)) = agent.0.try_wait() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
