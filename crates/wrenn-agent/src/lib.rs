//! The Wrenn host agent.
//!
//! Owns everything on one host that makes a sandbox a VM: the VMM processes (`vmm`), the
//! per-sandbox network namespaces, TAPs and firewall rules (`network`), the copy-on-write root
//! disks (`storage`), the sandbox lifecycle with its rollback, deadlines and restart recovery
//! (`sandbox`), and the RPC service the control plane drives (`rpc`), relaying sandbox I/O to
//! each guest's envd (`envd_client`). It must not touch the control plane's database or know
//! about users and teams beyond the IDs it is given.

pub mod auth;
pub mod config;
pub mod envd_client;
pub mod network;
pub mod preflight;
pub mod registration;
pub mod rpc;
pub mod sandbox;
pub mod storage;
pub mod vmm;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::AgentConfig;
use crate::vmm::{QemuVmm, probe};

/// Runs the agent until SIGTERM/SIGINT: resolves its identity (registering when asked),
/// probes the accelerator, re-adopts surviving VMs, serves the control plane's RPCs and,
/// when registered, keeps the host online with heartbeats.
pub async fn run(mut cfg: AgentConfig) -> anyhow::Result<()> {
    // Everything the agent and its QEMUs create (disks, saved memory, sockets, logs,
    // credentials) is its own: 0600 files, 0700 directories.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Before anything else, registration above all: a host that cannot create sandboxes must
    // never come online.
    preflight::check(&network::Network::new(cfg.network())).await?;
    tracing::info!(
        qemu = %preflight::path(preflight::Tool::Qemu).display(),
        qemu_img = %preflight::path(preflight::Tool::QemuImg).display(),
        nft = %preflight::path(preflight::Tool::Nft).display(),
        "host checks passed"
    );
    std::fs::create_dir_all(&cfg.root).with_context(|| format!("create {}", cfg.root.display()))?;
    // Off loopback the RPC listener serves TLS with the host's own certificate, which the
    // control plane pins from the registration.
    let rpc_cert = if cfg.serves_tls() {
        let dir = cfg.tls_dir();
        Some(
            wrenn_tls::selfsigned::HostCert::ensure(&dir)
                .with_context(|| format!("the agent's certificate under {}", dir.display()))?,
        )
    } else {
        None
    };
    let identity = registration::resolve(&cfg, rpc_cert.as_ref().map(|c| c.fingerprint.as_str()))
        .await
        .context("agent identity")?;
    let host_id = identity.host_id.clone();
    cfg.host_id = Some(host_id.clone());
    let verifier = identity.verifier.clone();
    std::fs::create_dir_all(cfg.cache_dir())?;
    let (accel, reason) = match cfg.accel {
        Some(a) => (a, format!("{a} forced by --accel")),
        None => {
            let base = sandbox::template::load(&cfg.root, "base").context(
                "the accelerator probe boots the base template's kernel: build it with `wrenn image build`, or pass --accel",
            )?;
            probe::choose_accel(
                &base.kernel,
                &base.initrd,
                &cfg.cache_dir().join("accel.json"),
                None,
                Duration::from_secs(30),
            )
            .await
            .context("accelerator probe")?
        }
    };
    tracing::info!(accelerator = %accel, %reason, "accelerator chosen");
    let groups = vmm::cgroup::Hierarchy::setup().context(
        "per-VM cgroups (memory and cpu controllers; under systemd the unit needs Delegate=yes)",
    )?;
    tracing::info!(?groups, "VMs run in their own cgroups");
    let vmm: Arc<dyn vmm::Vmm> = Arc::new(QemuVmm::new().with_cgroups(groups));
    let manager = sandbox::Manager::start(cfg.clone(), vmm, accel).await?;
    let app = rpc::router(manager.clone(), verifier, identity.generation);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("bind {}", cfg.listen))?;
    tracing::info!(
        addr = %cfg.listen,
        %host_id,
        tls_fingerprint = rpc_cert.as_ref().map(|c| c.fingerprint.as_str()),
        "agent listening"
    );
    // Cancelled when the control plane deleted this host: the agent then stops.
    let deleted = tokio_util::sync::CancellationToken::new();
    if let Some(creds) = identity.credentials {
        let path = registration::credentials_path(&cfg.root);
        let every = Duration::from_secs(cfg.heartbeat_secs.max(1));
        let deleted = deleted.clone();
        let notify = Arc::new(tokio::sync::Notify::new());
        let cut_off = registration::heartbeat::CutOff {
            after: cfg.pause_after_missed_heartbeats,
            notify: notify.clone(),
        };
        let m = manager.clone();
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                let paused = m.pause_all().await;
                tracing::warn!(
                    count = paused.len(),
                    "control plane unreachable: running sandboxes paused"
                );
            }
        });
        let m = manager.clone();
        let report: registration::heartbeat::Report = Arc::new(move || {
            let m = m.clone();
            Box::pin(async move { serde_json::json!({ "capacity": m.capacity().await }) })
        });
        tokio::spawn(async move {
            let why = registration::heartbeat::run(creds, path, every, cut_off, report).await;
            tracing::error!(reason = ?why, "heartbeats stopped");
            if why == registration::heartbeat::Stopped::HostDeleted {
                deleted.cancel();
            }
        });
    }
    let on_delete = deleted.clone();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = on_delete.cancelled() => {}
        }
    };
    match &rpc_cert {
        // h2 for the Connect calls, http/1.1 for the tunnels' upgrade.
        Some(cert) => {
            let tls = cert.server_config(&[b"h2", b"http/1.1"])?;
            rpc::serve_tls(wrenn_tls::TlsListener::new(listener, tls)?, app, shutdown).await?
        }
        None => rpc::serve(listener, app, shutdown).await?,
    }
    if deleted.is_cancelled() {
        retire(&manager).await;
    }
    Ok(())
}

/// The control plane deleted this host: its sandboxes' rows are stopped and nobody can reach
/// them any more, so their VMs go too (a forced delete already destroyed those the agent was
/// reachable for). The agent then exits; registering again makes a new host.
async fn retire(manager: &sandbox::Manager) {
    use rpc::SandboxBackend as _;
    let ids: Vec<String> = match manager.list().await {
        Ok(l) => l.sandboxes.into_iter().map(|s| s.sandbox_id).collect(),
        Err(e) => {
            tracing::error!(error = %e, "listing sandboxes of a deleted host");
            Vec::new()
        }
    };
    for id in &ids {
        if let Err(e) = manager.destroy_sandbox(id).await {
            tracing::warn!(sandbox = %id, error = %e, "destroying a deleted host's sandbox");
        }
    }
    tracing::info!(
        destroyed = ids.len(),
        "this host was deleted by the control plane; the agent stops (register again to rejoin)"
    );
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    // VMs keep running: a restarted agent re-adopts them.
    tracing::info!("agent stopping; sandboxes keep running");
}
