//! The host agent with real microVMs (QEMU microvm under TCG here): lifecycle, isolation,
//! rollback of every create step, deadlines, restart safety and bad input.
mod agent;

use std::time::{Duration, Instant};

use agent::{AgentEnv, OUTSIDE_IP, OUTSIDE_PORT, create_req, rt, sandbox_id, sh};
use sha2::{Digest, Sha256};
use wrenn_proto::hostagent::v1 as pb;

#[test]
fn create_exec_files_destroy_leaves_nothing() {
    let env = AgentEnv::new();
    rt().block_on(async {
        let c = env.client();
        let before = env.host_state();
        let id = sandbox_id();
        let mut req = create_req(&id);
        // Bigger than the 5 GiB base image: the guest's root filesystem grows to it.
        req.disk_size_mb = 6144;
        let created = c
            .create_sandbox(req)
            .await
            .expect("create")
            .into_owned();
        let info = created.sandbox.as_option().expect("sandbox info").clone();
        assert_eq!(info.sandbox_id, id);
        assert_eq!(
            info.status.as_known(),
            Some(pb::SandboxStatus::SANDBOX_STATUS_RUNNING)
        );
        assert!(!created.envd_access_token.is_empty());

        // The guest's kernel, not the host's.
        let (out, _, code) = sh(&c, &id, "uname -r").await;
        assert_eq!(code, 0);
        let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_ne!(out.trim(), host.trim(), "uname -r must be the guest kernel");
        assert!(out.trim().ends_with("-cloud-amd64"), "guest kernel: {out}");
        let (user, _, _) = sh(&c, &id, "id -un").await;
        assert_eq!(user, "user\n");
        let (size, _, _) = sh(&c, &id, "df -m --output=size / | tail -1").await;
        let size: u64 = size.trim().parse().expect("df size");
        if size <= 5600 {
            let (diag, _, _) = sh(&c, &id, "sudo blockdev --getsize64 /dev/vda; stat -f -c '%b %S' /; sudo resize2fs /dev/vda 2>&1 | tail -3").await;
            panic!("root filesystem should have grown to ~6 GiB, is {size} MiB: {diag}");
        }
        let used_before = info.disk_used_bytes;

        // A guest printing nonstop to its console: the log on the host's disk is emptied
        // once it is over its 1 MiB limit (at the next metrics round, every 5 s).
        let run_dir = env.root.path().join("sandboxes").join(&id).join("run");
        // A sandbox's files (disk, sockets, logs, record) are the agent's alone.
        let mut open_to_others = Vec::new();
        let mut stack = vec![env.root.path().join("sandboxes").join(&id)];
        while let Some(p) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).expect("stat");
            if m.file_type().is_symlink() {
                continue;
            }
            if std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0 {
                open_to_others.push(p.clone());
            }
            if m.is_dir() {
                stack.extend(std::fs::read_dir(&p).expect("dir").flatten().map(|e| e.path()));
            }
        }
        assert!(open_to_others.is_empty(), "group/other bits: {open_to_others:?}");
        let run_bytes = || -> u64 {
            std::fs::read_dir(&run_dir)
                .expect("run dir")
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        };
        let before_console = run_bytes();
        let t = std::time::Instant::now();
        let (_, err, code) = sh(
            &c,
            &id,
            "head -c 2097152 /dev/zero | tr '\\0' A | sudo tee /dev/ttyS0 > /dev/null",
        )
        .await;
        assert_eq!(code, 0, "{err}");
        eprintln!("2 MiB to the console in {} ms", t.elapsed().as_millis());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while run_bytes() > before_console + wrenn_agent::vmm::SERIAL_LOG_LIMIT {
            assert!(
                std::time::Instant::now() < deadline,
                "the console log stayed over its limit: {} bytes",
                run_bytes()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // 10 MiB through WriteFile (client stream) and back through ReadFile.
        let data: Vec<u8> = (0..10 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let want = hex(&Sha256::digest(&data));
        let mut msgs = vec![pb::WriteFileRequest {
            msg: Some(pb::write_file_request::Msg::Meta(Box::new(
                pb::write_file_request::Meta {
                    sandbox_id: id.clone(),
                    path: "/home/user/big.bin".into(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }];
        for chunk in data.chunks(256 * 1024) {
            msgs.push(pb::WriteFileRequest {
                msg: Some(pb::write_file_request::Msg::Chunk(chunk.to_vec())),
                ..Default::default()
            });
        }
        let w = c
            .write_file(futures::stream::iter(msgs))
            .await
            .expect("write")
            .into_owned();
        assert_eq!(w.size, data.len() as u64);
        let (sum, _, _) = sh(&c, &id, "sha256sum /home/user/big.bin | cut -d' ' -f1").await;
        assert_eq!(sum.trim(), want, "sha256 inside the guest");
        let mut stream = c
            .read_file(pb::ReadFileRequest {
                sandbox_id: id.clone(),
                path: "/home/user/big.bin".into(),
                ..Default::default()
            })
            .await
            .expect("read");
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.expect("read chunk") {
            got.extend_from_slice(&m.to_owned_message().chunk);
        }
        assert_eq!(hex(&Sha256::digest(&got)), want, "sha256 read back");
        // Disk usage is the overlay's allocated blocks: it grew by the file written.
        sh(&c, &id, "sync").await;
        let now = c
            .get_sandbox(pb::GetSandboxRequest { sandbox_id: id.clone(), ..Default::default() })
            .await
            .expect("get")
            .into_owned();
        let used = now.sandbox.as_option().unwrap().disk_used_bytes;
        assert!(used >= used_before + 10 * 1024 * 1024, "disk_used_bytes {used_before} -> {used}");

        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("destroy");
        let after = env.host_state();
        assert_eq!(
            before, after,
            "destroy must leave no netns, TAP, qemu, overlay or rules"
        );
        let listed = c
            .list_sandboxes(pb::ListSandboxesRequest::default())
            .await
            .unwrap()
            .into_owned();
        assert!(listed.sandboxes.is_empty());
        // The slot is free again: a new sandbox gets the same address.
        let id2 = sandbox_id();
        let again = c
            .create_sandbox(create_req(&id2))
            .await
            .expect("create 2")
            .into_owned();
        assert_eq!(again.sandbox.as_option().unwrap().host_ip, info.host_ip);
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id2,
            ..Default::default()
        })
        .await
        .expect("destroy 2");
    });
}

/// A TCP listener at a private address (10.99.0.1) in the test's "outside" namespace,
/// routed from the host namespace; killed (by PID) on drop.
struct PrivateListener {
    ip: &'static str,
    child: std::process::Child,
}

impl PrivateListener {
    fn start(env: &AgentEnv) -> PrivateListener {
        let ip = "10.99.0.1";
        let ov = format!("wt{}y", env.tag);
        agent::ip(&[
            "-n",
            &env.outside_ns,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            &ov,
        ]);
        agent::ip(&["route", "add", &format!("{ip}/32"), "via", OUTSIDE_IP]);
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &env.outside_ns,
                "python3",
                "-m",
                "http.server",
                "--bind",
                ip,
            ])
            .arg(OUTSIDE_PORT.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("private listener");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The host reaches it: the positive control for the sandbox's "closed".
        while std::net::TcpStream::connect((ip, OUTSIDE_PORT)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "private listener did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateListener { ip, child }
    }
}

impl Drop for PrivateListener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn sandboxes_are_isolated_and_egress_is_their_own() {
    let env = AgentEnv::new();
    rt().block_on(async {
        let c = env.client();
        let mut ids = Vec::new();
        let mut ips = Vec::new();
        let creates: Vec<_> = (0..5)
            .map(|i| {
                let mut r = create_req(&sandbox_id());
                // The fourth may use the internet: the positive control for egress rules.
                r.allow_internet = i == 3;
                // The fifth may reach one private address and nothing else.
                if i == 4 {
                    r.allow_out = vec!["10.99.0.1".into()];
                }
                r
            })
            .collect();
        let results = futures::future::join_all(creates.into_iter().map(|r| {
            let c = env.client();
            async move { c.create_sandbox(r).await.map(|x| x.into_owned()) }
        }))
        .await;
        for r in results {
            let s = r.expect("create").sandbox.as_option().unwrap().clone();
            ids.push(s.sandbox_id.clone());
            ips.push(s.host_ip.clone());
        }
        // Each VM's QEMU runs as a user of its own, without root or any capability: a guest
        // that broke out of one could neither signal nor read another.
        let mut uids = std::collections::BTreeSet::new();
        for pid in env.qemu_pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
            let line = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or_else(|| panic!("{k} in {status}"))
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            let ids_of = line("Uid:");
            assert!(ids_of.iter().all(|u| u == &ids_of[0] && u != "0"), "QEMU {pid}: {status}");
            assert_eq!(line("Gid:"), ids_of, "QEMU {pid}: {status}");
            assert_eq!(line("CapEff:"), ["0000000000000000"], "QEMU {pid}: {status}");
            uids.insert(ids_of[0].clone());
        }
        assert_eq!(uids.len(), 5, "one user per VM: {uids:?}");
        // A file written in one is absent from the others.
        let (_, _, code) = sh(&c, &ids[0], "echo secret > /home/user/only-here").await;
        assert_eq!(code, 0);
        for id in &ids[1..] {
            let (_, _, code) = sh(&c, id, "test -e /home/user/only-here").await;
            assert_ne!(code, 0, "file leaked into {id}");
        }
        let probe = |ip: &str, port: u16| {
            format!("timeout -s KILL 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' && echo open || echo closed")
        };
        // No sandbox reaches another one, nor the outside without egress.
        for (i, id) in ids.iter().enumerate().take(3) {
            for (j, ip) in ips.iter().enumerate() {
                if i == j {
                    continue;
                }
                let (out, _, _) = sh(&c, id, &probe(ip, 49983)).await;
                assert_eq!(
                    out.trim(),
                    "closed",
                    "sandbox {i} reached sandbox {j} at {ip}"
                );
            }
            let (out, _, _) = sh(&c, id, &probe(OUTSIDE_IP, OUTSIDE_PORT)).await;
            assert_eq!(
                out.trim(),
                "closed",
                "sandbox {i} reached the outside without egress"
            );
        }
        // On the host only root (the agent) reaches a sandbox's envd, not other users.
        let host_probe = |addr: &str, as_nobody: bool| {
            let mut cmd = std::process::Command::new("timeout");
            cmd.args(["-s", "KILL", "5"]);
            if as_nobody {
                cmd.args(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
            }
            cmd.args(["bash", "-c", &format!("exec 3<>/dev/tcp/{addr}")]);
            cmd.status().expect("probe").success()
        };
        let envd = format!("{}/49983", ips[0]);
        assert!(host_probe(&envd, false), "root on the host reaches envd");
        // Positive control: that user does connect elsewhere (the agent's own port).
        assert!(host_probe(&format!("127.0.0.1/{}", env.port), true), "setpriv probe works");
        assert!(!host_probe(&envd, true), "another host user reached envd");
        // Positive control: the sandbox that asked for egress reaches the outside listener...
        let (out, _, _) = sh(&c, &ids[3], &probe(OUTSIDE_IP, OUTSIDE_PORT)).await;
        assert_eq!(
            out.trim(),
            "open",
            "egress-enabled sandbox must reach the outside"
        );
        // ...but still not its neighbours.
        let (out, _, _) = sh(&c, &ids[3], &probe(&ips[0], 49983)).await;
        assert_eq!(
            out.trim(),
            "closed",
            "egress must not open sandbox-to-sandbox"
        );
        // ...nor private ranges: a listener at 10.99.0.1 the host itself reaches.
        let private = PrivateListener::start(&env);
        let (out, _, _) = sh(&c, &ids[3], &probe(private.ip, OUTSIDE_PORT)).await;
        assert_eq!(out.trim(), "closed", "egress must not reach private ranges");
        let (out, _, _) = sh(&c, &ids[3], &probe("169.254.169.254", 80)).await;
        assert_eq!(out.trim(), "closed");
        // The sandbox that opened that one address reaches it, and only it.
        let (out, _, _) = sh(&c, &ids[4], &probe(private.ip, OUTSIDE_PORT)).await;
        assert_eq!(out.trim(), "open", "an opened private address must be reachable");
        for (ip, port) in [(OUTSIDE_IP, OUTSIDE_PORT), (ips[0].as_str(), 49983)] {
            let (out, _, _) = sh(&c, &ids[4], &probe(ip, port)).await;
            assert_eq!(out.trim(), "closed", "allow-list sandbox reached {ip}:{port}");
        }
        // A spoofed source never leaves the sandbox: count what reaches the host.
        agent::run(std::process::Command::new("nft").args([
            "add table inet wspy; add chain inet wspy pre { type filter hook prerouting priority -400; policy accept; }; \
             add rule inet wspy pre ip saddr 192.0.2.77 counter",
        ]));
        let (out, err, code) = sh(
            &c,
            &ids[3],
            &format!(
                "sudo ip addr add 192.0.2.77/32 dev eth0 && \
                 timeout -s KILL 8 python3 -c \"import socket; s=socket.socket(); s.bind(('192.0.2.77', 0)); s.settimeout(4); s.connect(('{OUTSIDE_IP}', {OUTSIDE_PORT}))\"; \
                 echo rc=$?; sudo ip addr del 192.0.2.77/32 dev eth0"
            ),
        )
        .await;
        assert_eq!(code, 0, "{out} {err}");
        assert!(!out.contains("rc=0"), "a spoofed connection went through: {out}");
        let spy = agent::run(std::process::Command::new("nft").args(["list", "chain", "inet", "wspy", "pre"]));
        agent::run(std::process::Command::new("nft").args(["delete", "table", "inet", "wspy"]));
        assert!(spy.contains("packets 0 bytes 0"), "spoofed packets reached the host: {spy}");
        drop(private);
        for id in ids {
            c.destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: id,
                ..Default::default()
            })
            .await
            .expect("destroy");
        }
        assert!(env.sandbox_netns().is_empty());
        assert!(env.qemu_pids().is_empty());
    });
}

#[test]
fn failure_at_each_create_step_leaves_host_unchanged() {
    for step in ["overlay", "slot", "network", "boot", "health", "init"] {
        let env = AgentEnv::with_env(&[("AGENT_FAILPOINT", step)]);
        rt().block_on(async {
            let c = env.client();
            let before = env.host_state();
            let err = c
                .create_sandbox(create_req(&sandbox_id()))
                .await
                .expect_err("create must fail");
            assert!(err.to_string().contains(step), "step {step}: {err}");
            let after = env.host_state();
            assert_eq!(before, after, "failure after step {step} left state behind");
            let listed = c
                .list_sandboxes(pb::ListSandboxesRequest::default())
                .await
                .unwrap()
                .into_owned();
            assert!(listed.sandboxes.is_empty());
        });
    }
}

/// The cgroup directories of process `pid` that the agent made (`…/wrenn-vms/vm-…`).
fn vm_groups(pid: &str) -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    text.lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, controllers, path) = (p.next()?, p.next()?, p.next()?);
            if !path.contains("/wrenn-vms/vm-") {
                return None;
            }
            let mount = if v2 {
                String::new()
            } else {
                ["memory", "cpu"]
                    .into_iter()
                    .find(|c| controllers.split(',').any(|x| x == *c))?
                    .to_owned()
            };
            Some(
                std::path::Path::new("/sys/fs/cgroup")
                    .join(mount)
                    .join(path.trim_start_matches('/')),
            )
        })
        .collect()
}

/// (memory limit in bytes, CPU quota in µs per 100 ms) of a VM's groups.
fn group_limits(groups: &[std::path::PathBuf]) -> (u64, u64) {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).map(|s| s.trim().to_owned());
    let (mut mem, mut cpu) = (0, 0);
    for g in groups {
        if let Ok(m) = read(g.join("memory.limit_in_bytes")).or_else(|_| read(g.join("memory.max")))
        {
            mem = m.parse().expect("memory limit");
        }
        if let Ok(q) = read(g.join("cpu.cfs_quota_us")) {
            cpu = q.parse().expect("quota");
        } else if let Ok(q) = read(g.join("cpu.max")) {
            cpu = q
                .split_whitespace()
                .next()
                .expect("quota")
                .parse()
                .expect("quota");
        }
    }
    (mem, cpu)
}

/// Admission: the agent starts no sandbox past its vCPU overcommit (here 2 CPUs × 0.5 = 1
/// vCPU) or below its free-disk floor; a refusal changes nothing, and room comes back when a
/// sandbox goes.
#[test]
fn admission_refuses_past_the_overcommit_and_the_disk_floor() {
    let env = AgentEnv::with_env(&[("AGENT_CPU_OVERCOMMIT", "0.5")]);
    assert_eq!(
        std::thread::available_parallelism().map(|n| n.get()).ok(),
        Some(2),
        "the limit below assumes 2 CPUs"
    );
    rt().block_on(async {
        let c = env.client();
        let (a, b) = (sandbox_id(), sandbox_id());
        c.create_sandbox(create_req(&a))
            .await
            .expect("the first fits");
        // Its QEMU runs in a group of its own: guest memory + 384 MiB, vCPUs + 1 CPUs.
        let run_dir = env.root.path().join("sandboxes").join(&a).join("run");
        let pid = std::fs::read_to_string(run_dir.join("vmm.pid")).expect("pid file");
        let groups = vm_groups(pid.trim());
        let (memory_limit, cpu_limit) = group_limits(&groups);
        assert_eq!(memory_limit, (256 + 384) << 20, "{groups:?}");
        assert_eq!(cpu_limit, 200_000, "{groups:?}");
        let before = env.host_state();
        let err = c
            .create_sandbox(create_req(&b))
            .await
            .expect_err("a second vCPU is past the limit");
        assert_eq!(err.code, connectrpc::ErrorCode::ResourceExhausted, "{err}");
        assert!(err.to_string().contains("vCPUs"), "{err}");
        assert_eq!(before, env.host_state(), "a refusal leaves nothing behind");
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: a.clone(),
            ..Default::default()
        })
        .await
        .expect("destroy");
        for g in &groups {
            assert!(!g.exists(), "{} outlived its VM", g.display());
        }
        c.create_sandbox(create_req(&b))
            .await
            .expect("room again once the first is gone");
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: b.clone(),
            ..Default::default()
        })
        .await
        .expect("destroy");
    });
    drop(env);
    // No disk left above the floor: nothing starts.
    let env = AgentEnv::with_env(&[("AGENT_MIN_FREE_DISK_MIB", "1000000000")]);
    rt().block_on(async {
        let c = env.client();
        let before = env.host_state();
        let err = c
            .create_sandbox(create_req(&sandbox_id()))
            .await
            .expect_err("below the disk floor");
        assert_eq!(err.code, connectrpc::ErrorCode::ResourceExhausted, "{err}");
        assert!(err.to_string().contains("free on the files root"), "{err}");
        assert_eq!(before, env.host_state());
    });
}

#[test]
fn deadline_destroys_and_reports_in_list() {
    let env = AgentEnv::new();
    rt().block_on(async {
        let c = env.client();
        let id = sandbox_id();
        let mut req = create_req(&id);
        // Far enough out to survive the boot, then moved close by SetTimeout.
        req.end_at_ms = now_ms() + 600_000;
        c.create_sandbox(req).await.expect("create");
        let moved = c
            .set_timeout(pb::SetTimeoutRequest {
                sandbox_id: id.clone(),
                end_at_ms: now_ms() + 1_500,
                ..Default::default()
            })
            .await
            .expect("set timeout")
            .into_owned();
        assert!(moved.sandbox.as_option().unwrap().end_at_ms > 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let l = c
                .list_sandboxes(pb::ListSandboxesRequest::default())
                .await
                .unwrap()
                .into_owned();
            if l.reaped_ids.contains(&id) {
                assert!(l.sandboxes.iter().all(|s| s.sandbox_id != id));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox not reaped at its deadline"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Reported once: the next list no longer carries it.
        let l = c
            .list_sandboxes(pb::ListSandboxesRequest::default())
            .await
            .unwrap()
            .into_owned();
        assert!(!l.reaped_ids.contains(&id));
        assert!(env.qemu_pids().is_empty());
        assert!(env.sandbox_netns().is_empty());
    });
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn restart_after_sigkill_readopts_running_vms() {
    let mut env = AgentEnv::new();
    let ids: Vec<String> = rt().block_on(async {
        let c = env.client();
        let a = sandbox_id();
        let b = sandbox_id();
        for id in [&a, &b] {
            c.create_sandbox(create_req(id)).await.expect("create");
        }
        // A PTY with a tag in each, to re-attach to after the restart.
        for id in [&a, &b] {
            let mut s = c
                .pty_attach(pb::PtyAttachRequest {
                    sandbox_id: id.clone(),
                    tag: "shell".into(),
                    cmd: "/bin/bash".into(),
                    cols: 80,
                    rows: 24,
                    ..Default::default()
                })
                .await
                .expect("pty attach");
            let first = s.message().await.expect("pty event").expect("started");
            assert!(matches!(
                first.to_owned_message().event,
                Some(pb::pty_event::Event::Started(_))
            ));
        }
        vec![a, b]
    });
    let qemu_before = env.qemu_pids();
    assert_eq!(qemu_before.len(), 2);
    env.kill_agent();
    env.start_agent();
    rt().block_on(async {
        let c = env.client();
        let l = c
            .list_sandboxes(pb::ListSandboxesRequest::default())
            .await
            .unwrap()
            .into_owned();
        let mut listed: Vec<String> = l.sandboxes.iter().map(|s| s.sandbox_id.clone()).collect();
        listed.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(listed, want, "both sandboxes listed after restart");
        for id in &ids {
            let (out, _, code) = sh(&c, id, "echo alive").await;
            assert_eq!((out.as_str(), code), ("alive\n", 0));
            // Re-attach to the PTY by tag and drive it.
            let mut s = c
                .pty_attach(pb::PtyAttachRequest {
                    sandbox_id: id.clone(),
                    tag: "shell".into(),
                    ..Default::default()
                })
                .await
                .expect("re-attach");
            let first = s.message().await.expect("event").expect("started");
            assert!(matches!(
                first.to_owned_message().event,
                Some(pb::pty_event::Event::Started(_))
            ));
            c.pty_input(pb::PtyInputRequest {
                sandbox_id: id.clone(),
                tag: "shell".into(),
                data: b"echo $((40+2))\n".to_vec(),
                ..Default::default()
            })
            .await
            .expect("pty input");
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !String::from_utf8_lossy(&seen).contains("42") {
                assert!(Instant::now() < deadline, "no PTY output after re-attach");
                match tokio::time::timeout(Duration::from_secs(20), s.message()).await {
                    Ok(Ok(Some(m))) => {
                        if let Some(pb::pty_event::Event::Output(b)) = m.to_owned_message().event {
                            seen.extend_from_slice(&b);
                        }
                    }
                    other => panic!("pty stream ended: {other:?}"),
                }
            }
            c.pty_kill(pb::PtyKillRequest {
                sandbox_id: id.clone(),
                tag: "shell".into(),
                ..Default::default()
            })
            .await
            .expect("pty kill");
        }
        for id in ids {
            c.destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: id,
                ..Default::default()
            })
            .await
            .expect("destroy after restart");
        }
        assert!(env.qemu_pids().is_empty());
        assert!(env.sandbox_netns().is_empty());
    });
}

#[test]
fn bad_input_and_auth_are_refused_and_change_nothing() {
    let env = AgentEnv::new();
    rt().block_on(async {
        let c = env.client();
        let before = env.host_state();
        let code = |e: connectrpc::ConnectError| e.code;
        let mut r = create_req(&sandbox_id());
        r.vcpus = 0;
        assert_eq!(
            code(c.create_sandbox(r).await.unwrap_err()),
            connectrpc::ErrorCode::InvalidArgument
        );
        let mut r = create_req(&sandbox_id());
        r.memory_mb = 10_000_000;
        assert_eq!(
            code(c.create_sandbox(r).await.unwrap_err()),
            connectrpc::ErrorCode::InvalidArgument
        );
        let mut r = create_req(&sandbox_id());
        r.template = "no-such-template".into();
        assert_eq!(
            code(c.create_sandbox(r).await.unwrap_err()),
            connectrpc::ErrorCode::InvalidArgument
        );
        let mut r = create_req("Bad ID!");
        r.vcpus = 1;
        assert_eq!(
            code(c.create_sandbox(r).await.unwrap_err()),
            connectrpc::ErrorCode::InvalidArgument
        );
        let e = c
            .destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: "nosuchsandbox".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), connectrpc::ErrorCode::NotFound);
        let e = c
            .exec(pb::ExecRequest {
                sandbox_id: "nosuchsandbox".into(),
                cmd: "true".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(e), connectrpc::ErrorCode::NotFound);
        // Without a valid control-plane token nothing is served.
        let other = wrenn_agent::auth::CpSigner::generate().unwrap();
        for bad in [
            String::new(),
            "garbage".into(),
            other.sign(agent::HOST_ID, Duration::from_secs(60)),
            env.signer.sign("another-host", Duration::from_secs(60)),
        ] {
            let e = env
                .client_with_token(&bad)
                .list_sandboxes(pb::ListSandboxesRequest::default())
                .await
                .unwrap_err();
            assert_eq!(code(e), connectrpc::ErrorCode::Unauthenticated);
        }
        assert_eq!(before, env.host_state());
    });
}

#[test]
fn restart_cleans_up_a_create_cut_short_by_sigkill() {
    let mut env = AgentEnv::new();
    let before = env.host_state();
    // Start a create and SIGKILL the agent while the VM boots.
    let (tx, rx) = std::sync::mpsc::channel();
    let client = env.client();
    let id = sandbox_id();
    let create_id = id.clone();
    let handle = std::thread::spawn(move || {
        rt().block_on(async move {
            let _ = tx.send(());
            let _ = client.create_sandbox(create_req(&create_id)).await;
        })
    });
    rx.recv().expect("create started");
    // Wait for QEMU to finish daemonizing: until then the waiting parent is a second QEMU
    // process, and killing the agent does not end it at once (it was the flake: 2 where 1).
    // The guest is still booting then (envd answers seconds later), so the create is cut short.
    let pid_file = env
        .root
        .path()
        .join("sandboxes")
        .join(&id)
        .join("run/vmm.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let daemon = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if daemon.is_some_and(|d| env.qemu_pids() == vec![d]) {
            break;
        }
        assert!(Instant::now() < deadline, "no VM started");
        std::thread::sleep(Duration::from_millis(20));
    }
    env.kill_agent();
    let _ = handle.join();
    assert_eq!(
        env.qemu_pids().len(),
        1,
        "the half-made VM outlives the killed agent"
    );
    env.start_agent();
    rt().block_on(async {
        let c = env.client();
        let l = c
            .list_sandboxes(pb::ListSandboxesRequest::default())
            .await
            .unwrap()
            .into_owned();
        assert!(
            l.sandboxes.is_empty(),
            "a half-made sandbox must not be adopted"
        );
    });
    assert_eq!(
        before,
        env.host_state(),
        "restart must remove the half-made sandbox"
    );
}

/// Starts [`agent::COUNTER`] in the background; its pid.
async fn start_counter(c: &agent::Client, id: &str) -> u32 {
    c.start_background(pb::StartBackgroundRequest {
        sandbox_id: id.to_owned(),
        cmd: "/usr/bin/python3".into(),
        args: vec!["-c".into(), agent::COUNTER.into()],
        tag: "counter".into(),
        ..Default::default()
    })
    .await
    .expect("start the counter")
    .into_owned()
    .pid
}

/// The counter's value, read through its signal handler.
async fn count(
    c: &wrenn_proto::hostagent::v1::HostAgentServiceClient<connectrpc::client::HttpClient>,
    id: &str,
    pid: u32,
) -> u64 {
    let (out, err, code) = sh(c, id, &agent::read_counter(pid)).await;
    assert_eq!(code, 0, "{err}");
    out.trim().parse().expect("a count")
}

fn status_of(info: &pb::SandboxInfo) -> pb::SandboxStatus {
    info.status.as_known().expect("known status")
}

#[test]
fn pause_resume_keep_memory_and_survive_an_agent_sigkill() {
    let mut env = AgentEnv::new();
    let before = env.host_state();
    let id = sandbox_id();
    let (pid, c1) = rt().block_on(async {
        let c = env.client();
        c.create_sandbox(create_req(&id)).await.expect("create");
        let pid = start_counter(&c, &id).await;
        let (_, err, code) = sh(&c, &id, "echo kept-in-tmpfs > /dev/shm/keep").await;
        assert_eq!(code, 0, "{err}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c1 = count(&c, &id, pid).await;
        assert!(c1 > 0);
        // A streaming exec in flight when the sandbox pauses ends with a clear error.
        let mut stream = c
            .exec_stream(pb::ExecRequest {
                sandbox_id: id.clone(),
                cmd: "sleep".into(),
                args: vec!["300".into()],
                ..Default::default()
            })
            .await
            .expect("exec stream");
        stream
            .message()
            .await
            .expect("start event")
            .expect("an event");

        let paused = c
            .pause_sandbox(pb::PauseSandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("pause")
            .into_owned();
        let info = paused.sandbox.as_option().expect("info");
        assert_eq!(status_of(info), pb::SandboxStatus::SANDBOX_STATUS_PAUSED);
        assert!(info.host_ip.is_empty(), "a paused sandbox holds no slot");
        let cut = loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("the stream ends after the pause")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended as if the command had"),
                Err(e) => break e,
            }
        };
        assert_eq!(cut.code, connectrpc::ErrorCode::Aborted, "{cut:?}");
        assert!(
            cut.message.as_deref().unwrap_or("").contains("paused"),
            "{cut:?}"
        );
        (pid, c1)
    });
    // The VM is gone and its network with it; its state and disk stay on disk.
    assert!(env.qemu_pids().is_empty(), "QEMU runs after the pause");
    assert!(
        env.sandbox_netns().is_empty(),
        "the network outlives the pause"
    );
    let dir = env.root.path().join("sandboxes").join(&id);
    assert!(dir.join("vm.state").is_file());
    assert!(dir.join("rootfs.qcow2").is_file());
    rt().block_on(async {
        let c = env.client();
        let again = c
            .pause_sandbox(pb::PauseSandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a paused sandbox cannot pause");
        assert_eq!(again.code, connectrpc::ErrorCode::FailedPrecondition);
        let e = c
            .exec(pb::ExecRequest {
                sandbox_id: id.clone(),
                cmd: "true".into(),
                ..Default::default()
            })
            .await
            .expect_err("no exec while paused");
        assert_eq!(e.code, connectrpc::ErrorCode::FailedPrecondition, "{e:?}");
    });

    // Paused state lives on disk: a SIGKILLed agent's successor still knows and resumes it.
    env.kill_agent();
    env.start_agent();
    rt().block_on(async {
        let c = env.client();
        let l = c
            .list_sandboxes(pb::ListSandboxesRequest::default())
            .await
            .expect("list")
            .into_owned();
        let s = l
            .sandboxes
            .iter()
            .find(|s| s.sandbox_id == id)
            .expect("the paused sandbox after the restart");
        assert_eq!(status_of(s), pb::SandboxStatus::SANDBOX_STATUS_PAUSED);

        tokio::time::sleep(Duration::from_secs(2)).await;
        let resumed = c
            .resume_sandbox(pb::ResumeSandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("resume")
            .into_owned();
        let info = resumed.sandbox.as_option().expect("info");
        assert_eq!(status_of(info), pb::SandboxStatus::SANDBOX_STATUS_RUNNING);
        assert!(!info.host_ip.is_empty());
        let again = c
            .resume_sandbox(pb::ResumeSandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a running sandbox cannot resume");
        assert_eq!(again.code, connectrpc::ErrorCode::FailedPrecondition);

        // The same process, counting on from its value in memory; the tmpfs file is there.
        let c2 = count(&c, &id, pid).await;
        assert!(c2 > c1, "count {c1} before the pause, {c2} after");
        let (out, _, _) = sh(&c, &id, "cat /dev/shm/keep").await;
        assert_eq!(out.trim(), "kept-in-tmpfs");
        // The guest's clock was set forward past the time it spent paused.
        let host_before = now_ms();
        let (out, _, _) = sh(&c, &id, "date +%s%3N").await;
        let host_after = now_ms();
        let guest: i64 = out.trim().parse().expect("guest time");
        assert!(
            guest >= host_before - 1000 && guest <= host_after + 1000,
            "guest clock {guest} vs host {host_before}..{host_after}"
        );
        assert!(!dir.join("vm.state").exists(), "the used state is removed");

        // A paused sandbox's delete removes its files.
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("pause again");
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("destroy the paused sandbox");
    });
    assert!(!dir.exists(), "the paused sandbox's files are removed");
    assert_eq!(before, env.host_state(), "nothing is left behind");
}

#[test]
fn clones_of_one_warm_base_are_each_their_own_machine() {
    let env = AgentEnv::new();
    rt().block_on(async {
        let c = env.client();
        let mut seen = Vec::new();
        // The first create makes the warm base; all three are restored from it.
        for n in 0..3 {
            let id = sandbox_id();
            let mut req = create_req(&id);
            req.default_env = [("CLONE_N".to_string(), n.to_string())].into_iter().collect();
            let made = c.create_sandbox(req).await.expect("create").into_owned();
            let host_before = now_ms();
            let (out, err, code) = sh(
                &c,
                &id,
                "echo $CLONE_N; whoami; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                 cat /proc/sys/kernel/random/uuid; date +%s%3N",
            )
            .await;
            let host_after = now_ms();
            assert_eq!(code, 0, "{err}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 5, "{out}");
            assert_eq!(lines[0], n.to_string(), "its own environment");
            assert_eq!(lines[1], "user", "the template's default user");
            let guest: i64 = lines[4].parse().expect("guest time");
            assert!(
                guest >= host_before - 1000 && guest <= host_after + 1000,
                "clone {n}: guest clock {guest} vs host {host_before}..{host_after}"
            );
            seen.push((
                made.envd_access_token.clone(),
                lines[2].to_owned(),
                lines[3].to_owned(),
            ));
        }
        let dir = env.root.path().join("cache/warm");
        let bases: Vec<_> = std::fs::read_dir(&dir)
            .expect("warm dir")
            .flatten()
            .collect();
        assert_eq!(bases.len(), 1, "one warm base for one shape");
        for i in 0..seen.len() {
            for j in i + 1..seen.len() {
                assert_ne!(seen[i].0, seen[j].0, "envd tokens of clones {i} and {j}");
                assert_ne!(seen[i].1, seen[j].1, "first urandom bytes of clones {i} and {j}");
                assert_ne!(seen[i].2, seen[j].2, "random UUIDs of clones {i} and {j}");
            }
        }
    });
}

/// Rewrites the `state` (and optionally `slot`) of a stopped agent's sandbox record, as a
/// crash in the middle of a pause or a resume would have left it.
fn set_record_state(dir: &std::path::Path, state: &str, slot: Option<u32>) {
    let path = dir.join("sandbox.json");
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("record")).expect("json");
    rec["state"] = state.into();
    if let Some(s) = slot {
        rec["slot"] = s.into();
    }
    std::fs::write(&path, serde_json::to_vec(&rec).expect("json")).expect("write record");
}

async fn status(c: &agent::Client, id: &str) -> (pb::SandboxStatus, String) {
    let s = c
        .get_sandbox(pb::GetSandboxRequest {
            sandbox_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_owned();
    let info = s.sandbox.as_option().expect("info");
    (status_of(info), info.error.clone())
}

#[test]
fn crashes_mid_pause_or_resume_settle_and_a_corrupt_state_is_an_error() {
    let mut env = AgentEnv::new();
    let before = env.host_state();
    let (a, b, r) = (sandbox_id(), sandbox_id(), sandbox_id());
    rt().block_on(async {
        let c = env.client();
        for id in [&a, &b, &r] {
            c.create_sandbox(create_req(id)).await.expect("create");
        }
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: b.clone(),
            ..Default::default()
        })
        .await
        .expect("pause b");
    });
    let sandboxes = env.root.path().join("sandboxes");
    let dir = |id: &str| sandboxes.join(id);
    // a: killed after `pausing` was recorded, before any state was written: it runs on.
    // b: killed mid-resume, its new slot recorded: it is paused again, slot released.
    // r: killed mid-resume after its VM was restored: it goes on running.
    env.kill_agent();
    set_record_state(&dir(&a), "pausing", None);
    set_record_state(&dir(&b), "resuming", Some(7));
    set_record_state(&dir(&r), "resuming", None);
    std::fs::write(dir(&r).join("vm.state"), b"spent").expect("a spent state");
    env.start_agent();
    rt().block_on(async {
        let c = env.client();
        assert_eq!(
            status(&c, &a).await.0,
            pb::SandboxStatus::SANDBOX_STATUS_RUNNING
        );
        let (_, _, code) = sh(&c, &a, "true").await;
        assert_eq!(
            code, 0,
            "the sandbox whose pause never wrote its state still runs"
        );
        assert_eq!(
            status(&c, &b).await.0,
            pb::SandboxStatus::SANDBOX_STATUS_PAUSED
        );
        assert_eq!(
            status(&c, &r).await.0,
            pb::SandboxStatus::SANDBOX_STATUS_RUNNING
        );
        let (_, _, code) = sh(&c, &r, "true").await;
        assert_eq!(code, 0, "the sandbox whose resume had restored its VM runs");
        assert!(
            !dir(&r).join("vm.state").exists(),
            "its spent state is removed"
        );
        c.resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: b.clone(),
            ..Default::default()
        })
        .await
        .expect("b resumes after the crash");
        let (_, _, code) = sh(&c, &b, "true").await;
        assert_eq!(code, 0);

        // A corrupt saved state: resume fails with a clear error, the sandbox is `error`,
        // nothing else is touched, and it can still be deleted.
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: b.clone(),
            ..Default::default()
        })
        .await
        .expect("pause b again");
        std::fs::write(dir(&b).join("vm.state"), b"not a VM state").expect("corrupt");
        let e = c
            .resume_sandbox(pb::ResumeSandboxRequest {
                sandbox_id: b.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a corrupt state does not resume");
        assert!(
            e.message.as_deref().unwrap_or("").contains("restore"),
            "{e:?}"
        );
        let (st, err) = status(&c, &b).await;
        assert_eq!(st, pb::SandboxStatus::SANDBOX_STATUS_ERROR);
        assert!(err.contains("cannot resume"), "{err}");
        assert_eq!(
            status(&c, &a).await.0,
            pb::SandboxStatus::SANDBOX_STATUS_RUNNING
        );
        for id in [&a, &b, &r] {
            c.destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("destroy");
        }
    });
    assert_eq!(before, env.host_state(), "nothing is left behind");
}

#[test]
fn sandboxes_from_a_snapshot_template_start_with_its_memory_and_diverge() {
    let env = AgentEnv::new();
    let before = env.host_state();
    rt().block_on(async {
        let c = env.client();
        let src = sandbox_id();
        let mut req = create_req(&src);
        req.team_id = "team-a".into();
        c.create_sandbox(req).await.expect("create the source");
        let pid = start_counter(&c, &src).await;
        let (_, err, code) = sh(&c, &src, "echo from-source > /dev/shm/keep").await;
        assert_eq!(code, 0, "{err}");
        let snap = |sandbox_id: &str, team: &str| pb::CreateSnapshotRequest {
            sandbox_id: sandbox_id.to_owned(),
            name: "snap1".into(),
            team_id: team.into(),
            ..Default::default()
        };
        let made = c
            .create_snapshot(snap(&src, "team-a"))
            .await
            .expect("snapshot")
            .into_owned();
        let info = made.snapshot.as_option().expect("info");
        assert_eq!((info.vcpus, info.memory_mb), (1, 256));
        assert!(info.size_bytes > 0);
        // The source was paused for the copy and runs again.
        assert_eq!(
            status(&c, &src).await.0,
            pb::SandboxStatus::SANDBOX_STATUS_RUNNING
        );
        let e = c
            .create_snapshot(snap(&src, "team-a"))
            .await
            .expect_err("the name is taken");
        assert_eq!(e.code, connectrpc::ErrorCode::AlreadyExists);

        let mut clones = Vec::new();
        for n in 0..3 {
            let id = sandbox_id();
            let mut req = create_req(&id);
            req.template = "snap1".into();
            req.team_id = "team-a".into();
            c.create_sandbox(req)
                .await
                .expect("create from the snapshot");
            // The template's memory: its tmpfs file and its running process, counting on.
            let (out, _, _) = sh(&c, &id, "cat /dev/shm/keep").await;
            assert_eq!(out.trim(), "from-source", "clone {n}");
            assert!(count(&c, &id, pid).await > 0, "clone {n}: the counter runs");
            let (_, err, code) = sh(&c, &id, &format!("echo {n} > /dev/shm/mine")).await;
            assert_eq!(code, 0, "{err}");
            clones.push(id);
        }
        // Each went its own way.
        for (n, id) in clones.iter().enumerate() {
            let (out, _, _) = sh(&c, id, "cat /dev/shm/mine").await;
            assert_eq!(out.trim(), n.to_string());
        }
        let (_, _, code) = sh(&c, &src, "test ! -e /dev/shm/mine").await;
        assert_eq!(code, 0, "the source is untouched by its clones");

        // Its shape is fixed, and another team does not see it.
        let mut req = create_req(&sandbox_id());
        req.template = "snap1".into();
        req.team_id = "team-a".into();
        req.memory_mb = 512;
        let e = c.create_sandbox(req).await.expect_err("other memory");
        assert_eq!(e.code, connectrpc::ErrorCode::InvalidArgument, "{e:?}");
        let mut req = create_req(&sandbox_id());
        req.template = "snap1".into();
        req.team_id = "team-b".into();
        let e = c.create_sandbox(req).await.expect_err("another team's");
        assert_eq!(e.code, connectrpc::ErrorCode::InvalidArgument, "{e:?}");

        let del = pb::DeleteSnapshotRequest {
            name: "snap1".into(),
            team_id: "team-a".into(),
            ..Default::default()
        };
        // Deleted while clone 0 is paused and the others run: none of them loses anything
        // (their disks hold the template's by a link, their RAM is mapped or saved).
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: clones[0].clone(),
            ..Default::default()
        })
        .await
        .expect("pause clone 0");
        c.delete_snapshot(del.clone()).await.expect("delete");
        let e = c.delete_snapshot(del).await.expect_err("already deleted");
        assert_eq!(e.code, connectrpc::ErrorCode::NotFound);
        c.resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: clones[0].clone(),
            ..Default::default()
        })
        .await
        .expect("resume a clone of a deleted template");
        for (n, id) in clones.iter().enumerate() {
            // Caches dropped first, so the base disk is really read.
            let r = c
                .exec(pb::ExecRequest {
                    sandbox_id: id.clone(),
                    cmd: "/bin/bash".into(),
                    args: vec![
                        "-c".into(),
                        "echo 3 > /proc/sys/vm/drop_caches && md5sum /usr/bin/python3* >/dev/null"
                            .into(),
                    ],
                    user: "root".into(),
                    timeout_sec: 180,
                    ..Default::default()
                })
                .await
                .expect("exec")
                .into_owned();
            assert_eq!(
                r.exit_code,
                0,
                "clone {n}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let (out, err, code) = sh(
                &c,
                id,
                "cat /dev/shm/mine && echo disk > ~/d && sync && cat ~/d",
            )
            .await;
            assert_eq!(code, 0, "clone {n}: {err}");
            assert_eq!(
                out.split_whitespace().collect::<Vec<_>>(),
                [n.to_string().as_str(), "disk"]
            );
        }
        for id in clones.iter().chain([&src]) {
            c.destroy_sandbox(pb::DestroySandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("destroy");
        }
    });
    assert_eq!(before, env.host_state(), "nothing is left behind");
}

/// A tmpfs of `size` mounted on `dir` for the guard's life (lazily unmounted on drop, so a
/// failing test never leaves it behind).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(dir).expect("mount point");
        let target = CString::new(dir.as_os_str().as_bytes()).expect("path");
        let opts = CString::new(format!("size={size},mode=0755")).expect("opts");
        // SAFETY: valid NUL-terminated strings; a tmpfs needs no source.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(target) = std::ffi::CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: unmounting the tmpfs this guard mounted.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn a_pause_that_fills_the_disk_fails_cleanly_and_the_sandbox_runs_on() {
    let mut env = AgentEnv::without_agent(&[]);
    // Sandbox directories on a 48 MiB filesystem: room for overlays, not for the memory of a
    // guest holding 96 MiB of random data.
    let sandboxes = env.root.path().join("sandboxes");
    let mount = Tmpfs::mount(&sandboxes, "48m");
    env.start_agent();
    let before = env.host_state();
    let id = sandbox_id();
    rt().block_on(async {
        let c = env.client();
        c.create_sandbox(create_req(&id)).await.expect("create");
        let pid = start_counter(&c, &id).await;
        let (sum, err, code) = sh(
            &c,
            &id,
            "head -c 96M /dev/urandom > /dev/shm/fill && md5sum < /dev/shm/fill",
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let e = c
            .pause_sandbox(pb::PauseSandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect_err("the state does not fit");
        assert_eq!(e.code, connectrpc::ErrorCode::ResourceExhausted, "{e:?}");
        let msg = e.message.clone().unwrap_or_default();
        assert!(msg.contains("not enough disk space"), "{msg}");
        // Still running, memory intact, nothing half-written left.
        assert_eq!(
            status(&c, &id).await.0,
            pb::SandboxStatus::SANDBOX_STATUS_RUNNING
        );
        let c1 = count(&c, &id, pid).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(count(&c, &id, pid).await > c1, "its processes run on");
        let (again, _, _) = sh(&c, &id, "md5sum < /dev/shm/fill").await;
        assert_eq!(again, sum);
        let left: Vec<String> = std::fs::read_dir(sandboxes.join(&id))
            .expect("sandbox dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("state"))
            .collect();
        assert!(left.is_empty(), "partial state files left: {left:?}");
        let (_, err, code) = sh(&c, &id, "echo ok > ~/after").await;
        assert_eq!(code, 0, "{err}");
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("destroy");
    });
    assert_eq!(before, env.host_state(), "nothing is left behind");
    env.stop_agent();
    drop(mount);
}

/// A tunnel request to `path` on the agent (`GET`, the upgrade headers when `upgrade`), with
/// `Authorization: Bearer <token>` when a token is given.
fn tunnel_request(
    env: &AgentEnv,
    path: &str,
    token: Option<&str>,
    upgrade: bool,
) -> reqwest::RequestBuilder {
    let mut b = reqwest::Client::new().get(format!("http://127.0.0.1:{}{path}", env.port));
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    if upgrade {
        b = b
            .header("connection", "upgrade")
            .header("upgrade", "wrenn-tunnel");
    }
    b
}

/// A refused tunnel's status, Connect code and message.
async fn tunnel_refusal(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["content-type"], "application/json", "{status}");
    let v: serde_json::Value = r.json().await.expect("error JSON");
    (
        status,
        v["code"].as_str().unwrap_or_default().to_owned(),
        v["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Opens a tunnel to `port` of sandbox `id`: the upgraded connection, or the refusal.
async fn open_tunnel(
    env: &AgentEnv,
    id: &str,
    port: u16,
) -> Result<reqwest::Upgraded, (u16, String, String)> {
    let r = tunnel_request(
        env,
        &format!("/v1/tunnel/{id}/{port}"),
        Some(&env.token()),
        true,
    )
    .send()
    .await
    .expect("tunnel request");
    if r.status() != 101 {
        return Err(tunnel_refusal(r).await);
    }
    assert_eq!(r.headers()["upgrade"], "wrenn-tunnel");
    assert!(
        r.headers()["connection"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("upgrade")
    );
    Ok(r.upgrade().await.expect("upgrade"))
}

/// One plain HTTP/1.1 `GET path` over an open tunnel; the whole response (the server closes).
async fn http_get(mut t: reqwest::Upgraded, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    t.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send the request");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), t.read_to_end(&mut out))
        .await
        .expect("the response in time")
        .expect("read the response");
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an open tunnel ends (EOF or an error) within `within`.
async fn tunnel_ends(t: &mut reqwest::Upgraded, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, t.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[test]
fn tunnel_reaches_a_guest_server_and_ends_on_pause_and_destroy() {
    let env = AgentEnv::new();
    let before = env.host_state();
    rt().block_on(async {
        let c = env.client();
        let id = sandbox_id();
        c.create_sandbox(create_req(&id)).await.expect("create");
        let body = "served from the guest through the tunnel\n";
        let (_, err, code) = sh(
            &c,
            &id,
            &format!("mkdir -p /home/user/www && printf '{body}' > /home/user/www/thefile"),
        )
        .await;
        assert_eq!(code, 0, "{err}");
        c.start_background(pb::StartBackgroundRequest {
            sandbox_id: id.clone(),
            cmd: "/usr/bin/python3".into(),
            args: ["-m", "http.server", "8000", "--bind", "0.0.0.0"]
                .map(String::from)
                .to_vec(),
            cwd: "/home/user/www".into(),
            tag: "web".into(),
            ..Default::default()
        })
        .await
        .expect("start the server");

        // The server takes a moment to listen: 502 until then.
        let deadline = Instant::now() + Duration::from_secs(60);
        let t = loop {
            match open_tunnel(&env, &id, 8000).await {
                Ok(t) => break t,
                Err((502, ..)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("tunnel to the server: {e:?}"),
            }
        };
        let resp = http_get(t, "/thefile").await;
        assert!(
            resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
            "{resp}"
        );
        assert!(resp.ends_with(&format!("\r\n\r\n{body}")), "{resp}");

        // Refusals: nothing on the port, no such sandbox, bad port, no upgrade, no token.
        let e = open_tunnel(&env, &id, 8001)
            .await
            .expect_err("port 8001 is closed");
        assert_eq!(
            e,
            (
                502,
                "unavailable".into(),
                format!("port 8001 is not open in sandbox {id}")
            )
        );
        let e = open_tunnel(&env, "no-such-sandbox", 8000)
            .await
            .expect_err("unknown");
        assert_eq!(
            e,
            (
                404,
                "not_found".into(),
                "sandbox no-such-sandbox was not found".into()
            )
        );
        let e = open_tunnel(&env, &id, 0).await.expect_err("port 0");
        assert_eq!((e.0, e.1.as_str()), (400, "invalid_argument"), "{e:?}");
        let r = tunnel_request(
            &env,
            &format!("/v1/tunnel/{id}/8000"),
            Some(&env.token()),
            false,
        )
        .send()
        .await
        .unwrap();
        let e = tunnel_refusal(r).await;
        assert_eq!((e.0, e.1.as_str()), (400, "invalid_argument"), "{e:?}");
        for token in [
            None,
            Some("not-a-token".to_string()),
            Some(env.signer.sign("other-host", Duration::from_secs(60))),
        ] {
            let r = tunnel_request(
                &env,
                &format!("/v1/tunnel/{id}/8000"),
                token.as_deref(),
                true,
            )
            .send()
            .await
            .unwrap();
            let e = tunnel_refusal(r).await;
            assert_eq!(
                (e.0, e.1.as_str()),
                (401, "unauthenticated"),
                "{token:?}: {e:?}"
            );
        }

        // A pause ends an open tunnel promptly; a new one is refused while paused.
        let mut open = open_tunnel(&env, &id, 8000)
            .await
            .expect("tunnel before the pause");
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("pause");
        let paused_at = Instant::now();
        assert!(
            tunnel_ends(&mut open, Duration::from_secs(5)).await,
            "the tunnel outlived the pause"
        );
        let ended_after = paused_at.elapsed();
        assert!(
            ended_after < Duration::from_secs(1),
            "ended {ended_after:?} after the pause"
        );
        let e = open_tunnel(&env, &id, 8000).await.expect_err("paused");
        assert_eq!((e.0, e.1.as_str()), (409, "failed_precondition"), "{e:?}");
        assert!(e.2.contains("paused"), "{e:?}");

        // After the resume the same server answers through a new tunnel.
        c.resume_sandbox(pb::ResumeSandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("resume");
        let t = open_tunnel(&env, &id, 8000)
            .await
            .expect("tunnel after the resume");
        let resp = http_get(t, "/thefile").await;
        assert!(resp.ends_with(&format!("\r\n\r\n{body}")), "{resp}");

        // Destroy ends open tunnels too.
        let mut open = open_tunnel(&env, &id, 8000)
            .await
            .expect("tunnel before destroy");
        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("destroy");
        assert!(
            tunnel_ends(&mut open, Duration::from_secs(5)).await,
            "the tunnel outlived the destroy"
        );
        let e = open_tunnel(&env, &id, 8000).await.expect_err("destroyed");
        assert_eq!(e.0, 404, "{e:?}");
    });
    assert_eq!(before, env.host_state(), "nothing is left behind");
}

async fn metrics(c: &agent::Client, id: &str, start_ms: i64) -> pb::GetMetricsResponse {
    c.get_metrics(pb::GetMetricsRequest {
        sandbox_id: id.into(),
        start_ms,
        ..Default::default()
    })
    .await
    .expect("metrics")
    .into_owned()
}

#[test]
fn metrics_are_sampled_over_time_kept_while_paused_and_dropped_on_destroy() {
    let env = AgentEnv::new();
    let before = env.host_state();
    rt().block_on(async {
        let c = env.client();
        let id = sandbox_id();
        c.create_sandbox(create_req(&id)).await.expect("create");
        // The sampler runs every 5 s: two samples by ~12 s (more time if TCG slowed envd
        // past the sampler's 2 s limit for a round).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let m = loop {
            let m = metrics(&c, &id, 0).await;
            if m.samples.len() >= 2 || Instant::now() > deadline {
                break m;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        assert!(m.samples.len() >= 2, "samples: {:?}", m.samples);
        assert!(
            m.samples
                .windows(2)
                .all(|w| w[0].timestamp_ms < w[1].timestamp_ms),
            "increasing timestamps: {:?}",
            m.samples
        );
        for s in &m.samples {
            assert!(
                s.mem_total_bytes > 0 && s.mem_used_bytes <= s.mem_total_bytes,
                "{s:?}"
            );
            assert!(
                s.cpu_count > 0 && s.disk_total_bytes > 0 && s.disk_allocated_bytes > 0,
                "{s:?}"
            );
        }
        // The current sample, as before the series existed.
        assert!(m.mem_total_bytes > 0 && m.timestamp_ms >= m.samples[0].timestamp_ms);

        // The range applies: from just after the first sample.
        let first = m.samples[0].timestamp_ms;
        let later = metrics(&c, &id, first + 1).await;
        assert!(!later.samples.is_empty());
        assert!(
            later.samples.iter().all(|s| s.timestamp_ms > first),
            "{:?}",
            later.samples
        );
        assert_eq!(later.samples[0].timestamp_ms, m.samples[1].timestamp_ms);
        let bad = c
            .get_metrics(pb::GetMetricsRequest {
                sandbox_id: id.clone(),
                start_ms: -1,
                ..Default::default()
            })
            .await
            .expect_err("negative start");
        assert_eq!(bad.code, connectrpc::ErrorCode::InvalidArgument);

        // Paused: no live sample, the series from before the pause is kept.
        c.pause_sandbox(pb::PauseSandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("pause");
        let paused = metrics(&c, &id, 0).await;
        assert!(
            paused.samples.len() >= m.samples.len(),
            "{:?}",
            paused.samples
        );
        assert_eq!(paused.samples[0].timestamp_ms, first);
        assert_eq!((paused.mem_total_bytes, paused.timestamp_ms), (0, 0));
        let last = paused.samples.last().map(|s| s.timestamp_ms);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let still = metrics(&c, &id, 0).await;
        assert_eq!(
            still.samples.last().map(|s| s.timestamp_ms),
            last,
            "sampled while paused"
        );

        c.destroy_sandbox(pb::DestroySandboxRequest {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("destroy");
        let gone = c
            .get_metrics(pb::GetMetricsRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect_err("destroyed");
        assert_eq!(gone.code, connectrpc::ErrorCode::NotFound);
    });
    assert_eq!(before, env.host_state(), "nothing is left behind");
}
