//! Scenarios of the restore paths, each read against the cold boot measured in the same run:
//!
//! - *pause / resume*: a 512 MiB sandbox with 200 MiB of its memory filled, paused and
//!   resumed through the API (`POST /v1/sandboxes/{id}/pause|resume`, answered once the VM is
//!   on disk / once envd answered again), beside the raw cold boot.
//! - *clone memory*: QEMU PSS of five idle sandboxes restored from one warm base, beside five
//!   idle raw cold boots of the same template and size.
//! - *idle cost curve*: N idle sandboxes (N = 10, 25, 50): host memory in use and `exec true`
//!   through the API, beside `exec true` with one sandbox.
//! - *snapshot spawn*: sandboxes created from a snapshot template of a running sandbox through
//!   the agent's `CreateSandbox`, beside the cold boot.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::cp::{Cp, str_field};
use crate::host::{Floor, host_memory_used_mib, qemu_memory_all};
use crate::report::Row;
use crate::stack::ms;

pub(crate) async fn create(cp: &Cp, memory_mb: u32) -> anyhow::Result<String> {
    let sb = cp
        .call(
            Method::POST,
            "/v1/sandboxes",
            None,
            Some(json!({"memory_mb": memory_mb, "timeout_sec": 3600})),
            201,
        )
        .await?;
    Ok(str_field(&sb, "/id")?.to_owned())
}

pub(crate) async fn delete(cp: &Cp, id: &str) -> anyhow::Result<()> {
    cp.call(
        Method::DELETE,
        &format!("/v1/sandboxes/{id}"),
        None,
        None,
        204,
    )
    .await?;
    Ok(())
}

async fn sh(cp: &Cp, id: &str, script: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let v = cp
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            None,
            Some(json!({"cmd": "bash", "args": ["-c", script], "timeout_sec": 300})),
            200,
        )
        .await?;
    anyhow::ensure!(v["exit_code"] == 0, "`{script}` failed: {v}");
    Ok(ms(t))
}

/// Pause and resume of a 512 MiB sandbox with 200 MiB of its memory in use (tmpfs holds at most half), `rounds` times.
pub(crate) async fn pause_resume(cp: &Cp, cold: &[f64], rounds: usize) -> anyhow::Result<Vec<Row>> {
    let id = create(cp, 512).await?;
    let rounds_done = async {
        // Incompressible data in guest RAM (tmpfs), so the pause writes real memory.
        sh(cp, &id, "head -c 209715200 /dev/urandom > /dev/shm/fill").await?;
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            cp.call(
                Method::POST,
                &format!("/v1/sandboxes/{id}/pause"),
                None,
                None,
                200,
            )
            .await?;
            pause.push(ms(t));
            let t = Instant::now();
            cp.call(
                Method::POST,
                &format!("/v1/sandboxes/{id}/resume"),
                None,
                None,
                200,
            )
            .await?;
            resume.push(ms(t));
        }
        // Still the same machine: the data survived every round trip.
        sh(cp, &id, "test $(stat -c %s /dev/shm/fill) -eq 209715200").await?;
        anyhow::Ok((pause, resume))
    }
    .await;
    // Removed also when a round failed: the later scenarios count this host's VMs.
    delete(cp, &id).await?;
    let (pause, resume) = rounds_done?;
    Ok(vec![
        Row::paired(
            "pause of a 512 MiB sandbox, 200 MiB of it in use, via the API (TCG)",
            "ms",
            "cold boot: same qemu argv, netns/TAP/overlay premade",
            &pause,
            cold,
        ),
        Row::paired(
            "resume → envd answering, via the API (TCG)",
            "ms",
            "cold boot: same qemu argv, netns/TAP/overlay premade",
            &resume,
            cold,
        ),
    ])
}

/// PSS of `n` idle clones beside `n` idle raw cold boots (256 MiB each).
pub(crate) async fn clone_memory(
    cp: &Cp,
    floor: &Floor,
    sandboxes: &Path,
    floor_dir: &Path,
    n: usize,
    idle: Duration,
) -> anyhow::Result<Vec<Row>> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(create(cp, 256).await?);
    }
    tokio::time::sleep(idle).await;
    let clones = qemu_memory_all(sandboxes);
    for id in &ids {
        delete(cp, id).await?;
    }
    let mut vms = Vec::new();
    for i in 0..n {
        vms.push(floor.start(i).await?);
    }
    tokio::time::sleep(idle).await;
    let cold = qemu_memory_all(floor_dir);
    for vm in vms {
        floor.stop(vm).await?;
    }
    anyhow::ensure!(
        clones.len() == n && cold.len() == n,
        "found {} clones and {} cold VMs, expected {n} each",
        clones.len(),
        cold.len()
    );
    let pss = |v: &[(f64, f64)]| v.iter().map(|&(_, p)| p).collect::<Vec<_>>();
    Ok(vec![Row::paired(
        &format!("idle 256 MiB sandbox restored from a warm base, {n} at once: QEMU PSS"),
        "MiB",
        &format!("idle cold boot of the same template, {n} at once: QEMU PSS"),
        &pss(&clones),
        &pss(&cold),
    )])
}

/// Host memory and `exec true` latency with N idle sandboxes.
pub(crate) async fn idle_curve(cp: &Cp, steps: &[usize], execs: usize) -> anyhow::Result<Vec<Row>> {
    let before = host_memory_used_mib();
    let mut ids = vec![create(cp, 256).await?];
    let mut one = Vec::new();
    for _ in 0..execs {
        one.push(sh(cp, &ids[0], "true").await?);
    }
    let mut rows = Vec::new();
    let result = async {
        for &n in steps {
            while ids.len() < n {
                ids.push(create(cp, 256).await?);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            let used = host_memory_used_mib() - before;
            let mut with_n = Vec::new();
            for _ in 0..execs {
                with_n.push(sh(cp, &ids[0], "true").await?);
            }
            rows.push(Row::single(
                &format!("{n} idle 256 MiB sandboxes: host memory in use (TCG)"),
                "MiB",
                used,
            ));
            rows.push(Row::paired(
                &format!("exec `true` via the API with {n} idle sandboxes (TCG)"),
                "ms",
                "the same with 1 sandbox",
                &with_n,
                &one,
            ));
        }
        anyhow::Ok(())
    }
    .await;
    for id in &ids {
        delete(cp, id).await?;
    }
    result.map(|()| rows)
}

/// Sandboxes spawned from a snapshot template through the agent's `CreateSandbox` (the
/// control plane's snapshot routes do not exist yet), beside the cold boot.
pub(crate) async fn snapshot_spawn(
    cp: &Cp,
    agent: &wrenn_cp::agents::Agent,
    cold: &[f64],
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    use anyhow::Context;
    use wrenn_proto::hostagent::v1 as pb;
    let src = create(cp, 256).await?;
    let spawned = async {
        sh(cp, &src, "echo warm > /dev/shm/state").await?;
        agent
            .rpc()
            .create_snapshot_with_options(
                pb::CreateSnapshotRequest {
                    sandbox_id: src.clone(),
                    name: "benchsnap".into(),
                    team_id: cp.team_id.clone(),
                    ..Default::default()
                },
                agent.opts_timeout(Duration::from_secs(300)),
            )
            .await
            .context("CreateSnapshot")?;
        let mut ms_each = Vec::new();
        for i in 0..rounds {
            let id = format!("benchsnap{i:011}");
            let mut req = crate::stack::create_request(&id, &cp.team_id);
            req.template = "benchsnap".into();
            let t = Instant::now();
            agent
                .rpc()
                .create_sandbox_with_options(req, agent.opts_timeout(Duration::from_secs(300)))
                .await
                .context("CreateSandbox from the snapshot")?;
            ms_each.push(ms(t));
            crate::stack::destroy(agent, &id).await?;
        }
        anyhow::Ok(ms_each)
    }
    .await;
    let _ = agent
        .rpc()
        .delete_snapshot_with_options(
            pb::DeleteSnapshotRequest {
                name: "benchsnap".into(),
                team_id: cp.team_id.clone(),
                ..Default::default()
            },
            agent.opts(),
        )
        .await;
    delete(cp, &src).await?;
    Ok(vec![Row::paired(
        "spawn from a snapshot template via agent CreateSandbox RPC (TCG)",
        "ms",
        "cold boot: same qemu argv, netns/TAP/overlay premade",
        &spawned?,
        cold,
    )])
}
