//! End to end: the real control plane (`wrenn server`, SQLite and PostgreSQL) and the real host
//! agent with QEMU microVMs under TCG, driven over the public HTTP API.
mod agent;
#[path = "e2e/mod.rs"]
mod harness;

use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id in {v}"))
        .to_owned()
}

fn ids(list: &Value) -> Vec<String> {
    list["sandboxes"]
        .as_array()
        .unwrap_or_else(|| panic!("sandboxes in {list}"))
        .iter()
        .map(id_of)
        .collect()
}

/// The audit actions recorded for sandbox `id`, oldest first.
async fn audit_of(sys: &harness::System, id: &str) -> Vec<String> {
    let db = sys.db().await;
    let page = wrenn_cp::db::PageRequest::first(100).unwrap();
    let mut audit: Vec<String> = db
        .list_audit(&sys.team_id, &page)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.target_id.as_deref() == Some(id))
        .map(|e| e.action)
        .collect();
    audit.reverse();
    db.close().await;
    audit
}

e2e_test! {
    fn sandbox_lifecycle_and_access(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let started = Instant::now();
            let sb = sys
                .create_sandbox(json!({
                    "memory_mb": 256,
                    "timeout_sec": 300,
                    "metadata": {"suite": "e2e"},
                    "env": {"GREETING": "hi"},
                }))
                .await;
            eprintln!("create via API: {} ms", started.elapsed().as_millis());
            let id = id_of(&sb);
            assert_eq!(id.len(), 20);
            assert_eq!(sb["status"], "running", "{sb}");
            assert!(sb["host_ip"].as_str().is_some_and(|s| !s.is_empty()), "{sb}");
            assert_eq!(sb["host_id"], sys.host_id.as_str());
            assert_eq!(sb["template"], "base");
            assert_eq!(sb["metadata"], json!({"suite": "e2e"}));
            assert!(sb.get("envd_token").is_none() && !sb.to_string().contains("token"));
            assert_eq!(sys.env.sandbox_netns().len(), 1, "one VM on the agent");

            let (s, got) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(s, StatusCode::OK, "{got}");
            assert_eq!(got["status"], "running");
            assert_eq!(got["host_ip"], sb["host_ip"]);
            // A user JWT of the same team sees it too.
            let (s, _) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(sys.user_jwt()), None).await;
            assert_eq!(s, StatusCode::OK);

            let (s, list) = sys.call(Method::GET, "/v1/sandboxes?metadata.suite=e2e", Some(&key), None).await;
            assert_eq!(s, StatusCode::OK, "{list}");
            assert_eq!(ids(&list), vec![id.clone()]);
            let (_, list) = sys.call(Method::GET, "/v1/sandboxes?metadata.suite=other", Some(&key), None).await;
            assert!(ids(&list).is_empty());

            let end0 = got["end_at"].as_i64().expect("end_at");
            let (s, kept) = sys
                .call(Method::POST, &format!("/v1/sandboxes/{id}/keepalive"), Some(&key), Some(json!({"timeout_sec": 3600})))
                .await;
            assert_eq!(s, StatusCode::OK, "{kept}");
            let end1 = kept["end_at"].as_i64().expect("end_at");
            assert!(end1 > end0 + 3_000_000, "keepalive moved end_at {end0} -> {end1}");

            // Another team: 404 on every route, and nothing changes.
            let (_, key_b, _) = sys.signup("bob@example.com").await;
            let counts = sys.counts().await;
            for (m, path, body) in [
                (Method::GET, format!("/v1/sandboxes/{id}"), None),
                (Method::DELETE, format!("/v1/sandboxes/{id}"), None),
                (Method::POST, format!("/v1/sandboxes/{id}/keepalive"), Some(json!({"timeout_sec": 1}))),
            ] {
                let (s, v) = sys.call(m.clone(), &path, Some(&key_b), body).await;
                assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path}: {v}");
                assert_eq!(v["error"]["code"], "not_found");
            }
            let (_, list_b) = sys.call(Method::GET, "/v1/sandboxes", Some(&key_b), None).await;
            assert!(ids(&list_b).is_empty());

            // Malformed input: 400 with a code, nothing written.
            for (m, path, body) in [
                (Method::GET, "/v1/sandboxes/NOT-AN-ID".to_owned(), None),
                (Method::DELETE, "/v1/sandboxes/short".to_owned(), None),
                (Method::POST, "/v1/sandboxes/x/keepalive".to_owned(), None),
                (Method::POST, format!("/v1/sandboxes/{id}/keepalive"), Some("{\"timeout_sec\": -1}".to_owned())),
                (Method::POST, format!("/v1/sandboxes/{id}/keepalive"), Some("{nope".to_owned())),
                (Method::POST, "/v1/sandboxes".to_owned(), Some("{\"vcpus\":".to_owned())),
                (Method::POST, "/v1/sandboxes".to_owned(), Some("{\"vcpus\": 0}".to_owned())),
                (Method::POST, "/v1/sandboxes".to_owned(), Some("{\"env\": {\"1X\": \"a\"}}".to_owned())),
                (Method::GET, "/v1/sandboxes?status=bogus".to_owned(), None),
            ] {
                let (s, v) = sys.raw(m.clone(), &path, Some(&key), body, Some("application/json")).await;
                assert_eq!(s, StatusCode::BAD_REQUEST, "{m} {path}: {v}");
                assert_eq!(v["error"]["code"], "invalid_request", "{v}");
            }
            // A well-formed template name that does not exist: 404, nothing written either.
            let (s, v) = sys.call(Method::POST, "/v1/sandboxes", Some(&key), Some(json!({"template": "nope"}))).await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{v}");
            assert_eq!(sys.counts().await, counts, "refused requests wrote nothing");
            let (_, still) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(still["status"], "running");
            assert_eq!(still["end_at"].as_i64(), Some(end1));

            let (s, v) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            let (_, gone) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(gone["status"], "stopped", "{gone}");
            assert!(sys.env.sandbox_netns().is_empty(), "the sandbox's netns is gone");
            assert!(sys.env.qemu_pids().is_empty(), "no QEMU left");
            // Idempotent.
            let (s, _) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT);
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/keepalive"), Some(&key), None).await;
            assert_eq!(s, StatusCode::CONFLICT, "{v}");
            assert_eq!(v["error"]["code"], "invalid_state");

            let (_, list) = sys.call(Method::GET, "/v1/sandboxes", Some(&key), None).await;
            assert!(ids(&list).is_empty(), "stopped sandboxes are not listed by default");
            let (_, list) = sys.call(Method::GET, "/v1/sandboxes?status=stopped", Some(&key), None).await;
            assert_eq!(ids(&list), vec![id.clone()]);

            assert_eq!(audit_of(sys, &id).await, ["sandbox.create", "sandbox.delete"]);
        });
    }
}

e2e_test! {
    fn restarting_the_control_plane_loses_nothing(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let mut made = Vec::new();
            let mut ms = Vec::new();
            for i in 0..2 {
                let t = Instant::now();
                let sb = sys
                    .create_sandbox(json!({"memory_mb": 256, "metadata": {"n": i.to_string()}}))
                    .await;
                ms.push(t.elapsed().as_millis());
                made.push(id_of(&sb));
            }
            eprintln!("create via API: {ms:?} ms");
            let before = sys.counts().await;
            let rss = sys.server_rss_kib();
            eprintln!("server RSS {rss} KiB, agent RSS {} KiB", sys.agent_rss_kib());
            sys.restart_server();
            assert_eq!(sys.counts().await, before, "same rows in every table");
            for id in &made {
                let (s, v) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
                assert_eq!(s, StatusCode::OK, "{v}");
                assert_eq!(v["status"], "running", "{v}");
            }
            // The same key and the same agent credentials still work after the restart.
            let (s, v) = sys
                .call(Method::POST, &format!("/v1/sandboxes/{}/keepalive", made[0]), Some(&key), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            for id in &made {
                let (s, v) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
                assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            }
            assert!(sys.env.qemu_pids().is_empty(), "no QEMU left");
            assert!(sys.env.sandbox_netns().is_empty(), "no sandbox netns left");
        });
    }
}

e2e_test! {
    fn revoked_host_credentials_refuse_control_plane_calls(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let sb = sys.create_sandbox(json!({"memory_mb": 256})).await;
            let id = id_of(&sb);
            let (s, v) = sys
                .call(Method::POST, &format!("/v1/hosts/{}/revoke", sys.host_id), Some(sys.user_jwt()), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            // Nothing answers for the sandbox any more: it is missing, not a 502 per call.
            let (_, v) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(v["status"], "missing", "{v}");
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/keepalive"), Some(&key), None).await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("invalid_state")), "{v}");
            // A delete settles the row; the agent refused the destroy (the control plane's
            // tokens are of a revoked generation), so the VM is still there.
            let (s, v) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            let (_, v) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(v["status"], "stopped", "{v}");
            assert_eq!(sys.env.qemu_pids().len(), 1, "the agent refused the revoked control plane's destroy");
        });
    }
}

e2e_test! {
    /// The agent destroys a sandbox at its deadline on its own; the control plane learns it
    /// when the sandbox is read (or listed), without anyone deleting it through the API.
    fn sandboxes_reaped_by_the_agent_are_reconciled_on_read(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let sb = sys.create_sandbox(json!({"memory_mb": 256, "timeout_sec": 2})).await;
            let id = id_of(&sb);
            assert_eq!(sb["status"], "running", "{sb}");
            let deadline = Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let (s, v) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
                assert_eq!(s, StatusCode::OK, "{v}");
                if v["status"] == "stopped" {
                    break;
                }
                assert_eq!(v["status"], "running", "{v}");
                assert!(Instant::now() < deadline, "never reconciled: {v}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            // The default list no longer shows it.
            let (_, list) = sys.call(Method::GET, "/v1/sandboxes", Some(&key), None).await;
            assert!(!ids(&list).contains(&id), "{list}");
        });
    }
}

e2e_test! {
    /// While its host was silent, the host monitor marked the host `unreachable` and its
    /// sandboxes `missing` (done here through the database, as the monitor does). When the
    /// agent beats again, the reconciler asks it: the sandbox that survived is `running` and
    /// usable again; a `missing` row the agent does not know is `stopped`.
    fn missing_sandboxes_are_settled_when_their_host_returns(sys) {
        sys.block_on(async {
            use wrenn_cp::db::testing::new_sandbox;
            use wrenn_cp::db::{HostStatus, SandboxStatus};
            let key = sys.api_key().to_owned();
            let sb = sys.create_sandbox(json!({"memory_mb": 256})).await;
            let id = id_of(&sb);
            let db = sys.db().await;
            let team = db.get_sandbox_any_team(&id).await.unwrap().team_id;
            let ghost = db.insert_pending_sandbox(new_sandbox(&team, Some(&sys.host_id))).await.unwrap();
            db.transition_sandbox(&ghost.id, SandboxStatus::Running, None).await.unwrap();
            db.set_host_status(&sys.host_id, HostStatus::Unreachable, None).await.unwrap();
            let marked = db.transition_host_sandboxes(&sys.host_id, SandboxStatus::Missing).await.unwrap();
            assert_eq!(marked.len(), 2, "{marked:?}");
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/exec"), Some(&key), Some(json!({"cmd": "true"}))).await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("invalid_state")), "{v}");

            // The agent's next heartbeat (every 30 s) brings the host back; the reconciler
            // (every 10 s) settles the rows.
            let deadline = Instant::now() + std::time::Duration::from_secs(90);
            loop {
                let (_, a) = sys.call(Method::GET, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
                let (_, g) = sys.call(Method::GET, &format!("/v1/sandboxes/{}", ghost.id), Some(&key), None).await;
                if a["status"] == "running" && g["status"] == "stopped" {
                    break;
                }
                assert!(a["status"] == "missing" || a["status"] == "running", "{a}");
                assert!(Instant::now() < deadline, "never settled: {a} {g}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/exec"), Some(&key), Some(json!({"cmd": "echo", "args": ["back"]}))).await;
            assert_eq!((s, v["stdout"].as_str()), (StatusCode::OK, Some("back\n")), "{v}");
            let (s, _) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT);
        });
    }
}

async fn sh(sys: &harness::System, id: &str, script: &str) -> (StatusCode, Value) {
    sys.call(
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        Some(sys.api_key()),
        Some(json!({"cmd": "bash", "args": ["-c", script], "timeout_sec": 60})),
    )
    .await
}

/// Starts [`agent::COUNTER`] in sandbox `id` and writes `keep` to its tmpfs
/// (`/dev/shm/keep`): what a pause or a snapshot must carry over. Returns the counter's pid.
async fn counter_and_keep(sys: &harness::System, id: &str, keep: &str) -> i64 {
    let (s, bg) = sys
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/processes"),
            Some(sys.api_key()),
            Some(json!({"cmd": "python3", "args": ["-c", agent::COUNTER], "tag": "counter"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{bg}");
    let (s, v) = sh(sys, id, &format!("echo {keep} > /dev/shm/keep")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    bg["pid"].as_i64().expect("pid")
}

async fn counter_value(sys: &harness::System, id: &str, pid: i64) -> u64 {
    let (s, v) = sh(sys, id, &agent::read_counter(pid)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["stdout"]
        .as_str()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a count: {v}"))
}

e2e_test! {
    fn pause_and_resume_through_the_api(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let sb = sys.create_sandbox(json!({"memory_mb": 256, "timeout_sec": 600})).await;
            let id = id_of(&sb);
            let pid = counter_and_keep(sys, &id, "kept").await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let before = counter_value(sys, &id, pid).await;

            let t = Instant::now();
            let (s, paused) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/pause"), Some(&key), None).await;
            eprintln!("pause via API: {} ms", t.elapsed().as_millis());
            assert_eq!(s, StatusCode::OK, "{paused}");
            assert_eq!(paused["status"], "paused");
            assert!(paused["end_at"].is_null(), "a paused sandbox's deadline stops: {paused}");
            assert!(sys.env.qemu_pids().is_empty(), "QEMU runs while paused");
            assert!(sys.env.sandbox_netns().is_empty(), "its network outlives the pause");
            // The transition table: pause of paused, I/O on paused, resume of running → 409.
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/pause"), Some(&key), None).await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("invalid_state")), "{v}");
            let (s, v) = sh(sys, &id, "true").await;
            assert_eq!(s, StatusCode::CONFLICT, "{v}");
            let (_, list) = sys.call(Method::GET, "/v1/sandboxes?status=paused", Some(&key), None).await;
            assert_eq!(ids(&list), vec![id.clone()]);
            // Another team can neither pause nor resume it.
            let (_, key_b, _) = sys.signup("mallory@example.com").await;
            let (s, _) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/resume"), Some(&key_b), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND);

            let t = Instant::now();
            let (s, resumed) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/resume"), Some(&key), None).await;
            eprintln!("resume via API: {} ms", t.elapsed().as_millis());
            assert_eq!(s, StatusCode::OK, "{resumed}");
            assert_eq!(resumed["status"], "running");
            assert!(resumed["end_at"].as_i64().is_some(), "the timeout runs again: {resumed}");
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/resume"), Some(&key), None).await;
            assert_eq!(s, StatusCode::CONFLICT, "{v}");
            let after = counter_value(sys, &id, pid).await;
            assert!(after > before, "count {before} before the pause, {after} after");
            let (_, v) = sh(sys, &id, "cat /dev/shm/keep").await;
            assert_eq!(v["stdout"].as_str().map(str::trim), Some("kept"), "{v}");

            // A paused sandbox's delete removes its files.
            let (s, _) = sys.call(Method::POST, &format!("/v1/sandboxes/{id}/pause"), Some(&key), None).await;
            assert_eq!(s, StatusCode::OK);
            let (s, v) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            assert!(!sys.env.root.path().join("sandboxes").join(&id).exists(), "files left");

            assert_eq!(
                audit_of(sys, &id).await,
                ["sandbox.create", "sandbox.pause", "sandbox.resume", "sandbox.pause", "sandbox.delete"]
            );
        });
    }
}

e2e_test! {
    fn snapshot_templates_through_the_api(sys) {
        sys.block_on(async {
            let key = sys.api_key().to_owned();
            let src = id_of(&sys.create_sandbox(json!({"memory_mb": 256, "timeout_sec": 600})).await);
            let pid = counter_and_keep(sys, &src, "from-source").await;

            let t = Instant::now();
            let (s, tpl) = sys
                .call(Method::POST, "/v1/snapshots", Some(&key), Some(json!({"sandbox_id": src, "name": "snap"})))
                .await;
            eprintln!("snapshot of a running sandbox via API: {} ms", t.elapsed().as_millis());
            assert_eq!(s, StatusCode::CREATED, "{tpl}");
            assert_eq!((tpl["type"].as_str(), tpl["memory_mb"].as_i64()), (Some("snapshot"), Some(256)));
            assert!(tpl["size_bytes"].as_i64().unwrap_or(0) > 0, "{tpl}");
            // The source runs on, and its address is still right.
            let (_, v) = sys.call(Method::GET, &format!("/v1/sandboxes/{src}"), Some(&key), None).await;
            assert_eq!(v["status"], "running", "{v}");
            let (s, v) = sh(sys, &src, "true").await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let (_, list) = sys.call(Method::GET, "/v1/templates", Some(&key), None).await;
            assert!(list["templates"].as_array().unwrap().iter().any(|t| t["name"] == "snap" && t["type"] == "snapshot"), "{list}");
            let (s, v) = sys
                .call(Method::POST, "/v1/snapshots", Some(&key), Some(json!({"sandbox_id": src, "name": "snap"})))
                .await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{v}");

            // Three sandboxes from it: each starts with its memory, then goes its own way.
            let mut clones = Vec::new();
            for n in 0..3 {
                let t = Instant::now();
                let sb = sys.create_sandbox(json!({"template": "snap", "timeout_sec": 600})).await;
                eprintln!("create from the snapshot via API: {} ms", t.elapsed().as_millis());
                assert_eq!((sb["template"].as_str(), sb["memory_mb"].as_i64()), (Some("snap"), Some(256)));
                assert_eq!(sb["host_id"].as_str(), Some(sys.host_id.as_str()), "placed on the holder");
                let id = id_of(&sb);
                let (_, v) = sh(sys, &id, "cat /dev/shm/keep").await;
                assert_eq!(v["stdout"].as_str().map(str::trim), Some("from-source"), "clone {n}: {v}");
                assert!(counter_value(sys, &id, pid).await > 0, "clone {n}: the counter runs");
                let (s, v) = sh(sys, &id, &format!("echo {n} > /dev/shm/mine")).await;
                assert_eq!(s, StatusCode::OK, "{v}");
                clones.push(id);
            }
            for (n, id) in clones.iter().enumerate() {
                let (_, v) = sh(sys, id, "cat /dev/shm/mine").await;
                assert_eq!(v["stdout"].as_str().map(str::trim), Some(n.to_string().as_str()), "{v}");
            }
            let (s, v) = sys.call(Method::POST, "/v1/sandboxes", Some(&key), Some(json!({"template": "snap", "memory_mb": 512}))).await;
            assert_eq!(s, StatusCode::CONFLICT, "the template's shape is fixed: {v}");

            // Another team neither sees nor uses it, nor deletes it.
            let (_, key_b, _) = sys.signup("mallory@example.com").await;
            let (_, v) = sys.call(Method::GET, "/v1/snapshots", Some(&key_b), None).await;
            assert_eq!(v["templates"], json!([]), "{v}");
            let (s, v) = sys.call(Method::POST, "/v1/sandboxes", Some(&key_b), Some(json!({"template": "snap"}))).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
            let (s, _) = sys.call(Method::DELETE, "/v1/snapshots/snap?force=true", Some(&key_b), None).await;
            assert_eq!(s, StatusCode::NOT_FOUND);

            // A paused clone counts as a user; the refusal lists every one.
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{}/pause", clones[0]), Some(&key), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let (s, v) = sys.call(Method::DELETE, "/v1/snapshots/snap", Some(&key), None).await;
            assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{v}");
            let mut listed: Vec<String> = serde_json::from_value(v["error"]["sandbox_ids"].clone()).unwrap();
            listed.sort();
            let mut want = clones.clone();
            want.sort();
            assert_eq!(listed, want);
            let files = sys.env.root.path().join("snapshots");
            assert!(std::fs::read_dir(&files).map(|d| d.count()).unwrap_or(0) > 0, "the host holds it");
            let (s, v) = sys.call(Method::DELETE, "/v1/snapshots/snap?force=true", Some(&key), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
            assert!(
                walk_files(&files).is_empty(),
                "the host's copy is gone: {:?}", walk_files(&files)
            );
            // Its sandboxes did not notice.
            let (s, v) = sys.call(Method::POST, &format!("/v1/sandboxes/{}/resume", clones[0]), Some(&key), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            for (n, id) in clones.iter().enumerate() {
                let (_, v) = sh(sys, id, "cat /dev/shm/mine").await;
                assert_eq!(v["stdout"].as_str().map(str::trim), Some(n.to_string().as_str()), "{v}");
            }
            let (s, v) = sys.call(Method::POST, "/v1/sandboxes", Some(&key), Some(json!({"template": "snap"}))).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "deleted: {v}");
            for id in clones.iter().chain([&src]) {
                let (s, _) = sys.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
                assert_eq!(s, StatusCode::NO_CONTENT);
            }
        });
    }
}

/// Every regular file under `dir`.
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An agent whose control plane is gone pauses its running sandboxes once (here after 3
/// missed 1 s heartbeats); when the control plane is back, the reconciler settles the row
/// `paused`, and a resume finds memory and processes as they were.
#[test]
fn an_agent_cut_off_from_its_control_plane_pauses_its_sandboxes() {
    let sys = harness::System::with_agent_env(
        harness::Backend::Sqlite,
        &[
            ("AGENT_HEARTBEAT_SECS", "1"),
            ("AGENT_PAUSE_AFTER_MISSED_HEARTBEATS", "3"),
        ],
    );
    let sys = &sys;
    sys.block_on(async {
        let key = sys.api_key().to_owned();
        let sb = sys
            .create_sandbox(json!({"memory_mb": 256, "timeout_sec": 600}))
            .await;
        let id = id_of(&sb);
        let pid = counter_and_keep(sys, &id, "kept").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = counter_value(sys, &id, pid).await;

        // The control plane goes away: the VM is paused to disk, not destroyed.
        sys.stop_server();
        let t = Instant::now();
        while !sys.env.qemu_pids().is_empty() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "the agent never paused its sandbox"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        eprintln!(
            "paused {} ms after the control plane stopped",
            t.elapsed().as_millis()
        );
        let dir = sys.env.root.path().join("sandboxes").join(&id);
        assert!(
            dir.join("vm.state").exists(),
            "no saved state in {}",
            dir.display()
        );

        // Back: the row settles `paused`; a resume continues where it stopped.
        sys.start_server();
        let deadline = Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let (_, v) = sys
                .call(
                    Method::GET,
                    &format!("/v1/sandboxes/{id}"),
                    Some(&key),
                    None,
                )
                .await;
            if v["status"] == "paused" {
                break;
            }
            assert!(Instant::now() < deadline, "never settled paused: {v}");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let (s, v) = sys
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{id}/resume"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let after = counter_value(sys, &id, pid).await;
        assert!(after > before, "count {before} before, {after} after");
        let (_, v) = sh(sys, &id, "cat /dev/shm/keep").await;
        assert_eq!(v["stdout"].as_str().map(str::trim), Some("kept"), "{v}");
        let (s, _) = sys
            .call(
                Method::DELETE,
                &format!("/v1/sandboxes/{id}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(sys.env.qemu_pids().is_empty(), "no QEMU left");
    });
}

/// A VM the agent runs that no row knows (here: its row removed behind the control plane's
/// back) is destroyed by the reconciler once it is older than the grace; a VM with a live
/// row is left alone.
#[test]
fn the_reconciler_destroys_vms_no_row_knows() {
    let sys = harness::System::new(harness::Backend::Sqlite);
    let sys = &sys;
    sys.block_on(async {
        let key = sys.api_key().to_owned();
        let kept = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
        let lost = id_of(&sys.create_sandbox(json!({"memory_mb": 256})).await);
        assert_eq!(sys.env.qemu_pids().len(), 2);
        let db = sys.db().await;
        sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(&lost)
            .execute(db.pool())
            .await
            .unwrap();
        // The grace (60 s) plus a reconcile pass (every 10 s).
        let dir = sys.env.root.path().join("sandboxes");
        let t = Instant::now();
        while dir.join(&lost).exists() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(150),
                "the unknown VM was never destroyed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        eprintln!(
            "unknown VM destroyed {} s after its row went",
            t.elapsed().as_secs()
        );
        assert_eq!(sys.env.qemu_pids().len(), 1, "only the VM with a row runs");
        let (s, v) = sh(sys, &kept, "echo still").await;
        assert_eq!(
            (s, v["stdout"].as_str()),
            (StatusCode::OK, Some("still\n")),
            "{v}"
        );
        let (s, _) = sys
            .call(
                Method::DELETE,
                &format!("/v1/sandboxes/{kept}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(sys.env.qemu_pids().is_empty());
    });
}
