//! The sandboxes API without VMs: validation, scheduling refusals, access and listing. Rows
//! are made through `db` directly; a create that reaches a host is covered end to end in
//! `crates/wrenn/tests/e2e.rs`.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use wrenn_cp::api::sandboxes::ensure_platform_templates;
use wrenn_cp::db::{NewHost, NewSandbox, OnTimeout, Sandbox, SandboxStatus};
use wrenn_cp::db_test;

use super::{App, code, token};

impl App {
    async fn sandbox_counts(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for t in ["sandboxes", "sandbox_metadata", "audit_log"] {
            out.push(wrenn_cp::db::testing::count_rows(&self.db, t).await);
        }
        out
    }

    async fn insert(&self, team: &str, meta: &[(&str, &str)]) -> Sandbox {
        self.db
            .insert_pending_sandbox(NewSandbox {
                team_id: team,
                host_id: None,
                template: "base",
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 5120,
                timeout_sec: 300,
                end_at: None,
                on_timeout: OnTimeout::Kill,
                metadata: meta
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                envd_token: Some("secret-envd-token"),
                auto_resume: false,
                idempotency_key: None,
            })
            .await
            .unwrap()
    }
}

/// IDs newest first, as lists order them (rows made in the same millisecond sort by ID).
fn newest_first(rows: &[&Sandbox]) -> Vec<String> {
    let mut r: Vec<&&Sandbox> = rows.iter().collect();
    r.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    r.into_iter().map(|s| s.id.clone()).collect()
}

fn ids(v: &Value) -> Vec<String> {
    v["sandboxes"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

db_test! {
    async fn sandbox_create_validation_and_no_hosts(db) {
        ensure_platform_templates(&db).await.unwrap();
        // Idempotent: a second start changes nothing.
        ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let (_, key) = app.key(&token(&a)).await;
        let before = app.sandbox_counts().await;
        let long = "x".repeat(5000);
        let many: BTreeMap<String, String> = (0..65).map(|i| (format!("K{i}"), "v".into())).collect();
        let cases: Vec<(Value, &str)> = vec![
            (json!({"vcpus": 0}), "vcpus"),
            (json!({"vcpus": 9}), "vcpus"),
            (json!({"vcpus": -1}), "vcpus"),
            (json!({"vcpus": 1.5}), "vcpus"),
            (json!({"vcpus": "1"}), "vcpus"),
            (json!({"memory_mb": 127}), "memory_mb"),
            (json!({"memory_mb": 16385}), "memory_mb"),
            (json!({"disk_size_mb": 0}), "disk_size_mb"),
            (json!({"disk_size_mb": 65537}), "disk_size_mb"),
            (json!({"timeout_sec": -1}), "timeout_sec"),
            (json!({"timeout_sec": 86401}), "timeout_sec"),
            (json!({"on_timeout": "explode"}), "on_timeout"),
            (json!({"template": "Bad Name"}), "template"),
            (json!({"template": ""}), "template"),
            (json!({"env": {"1X": "a"}}), "env"),
            (json!({"env": {"A-B": "a"}}), "env"),
            (json!({"env": {"A": long}}), "env.A"),
            (json!({"env": {"A": "a\u{0}b"}}), "env.A"),
            (json!({"env": many}), "env"),
            (json!({"env": {"A": 1}}), "env"),
            (json!({"metadata": {"": "a"}}), "metadata"),
            (json!({"metadata": {"k": "a\nb"}}), "metadata.k"),
            (json!({"metadata": many}), "metadata"),
            (json!({"allow_internet": "yes"}), "allow_internet"),
            (json!({"allow_out": ["1.2.3"]}), "allow_out"),
            (json!({"allow_out": ["1.2.3.4/33"]}), "allow_out"),
            (json!({"deny_out": ["::1"]}), "deny_out"),
            (json!({"allow_out": "1.2.3.4"}), "allow_out"),
            (json!({"deny_out": (0..65).map(|i| format!("8.8.{i}.0/24")).collect::<Vec<_>>()}), "deny_out"),
            (json!({"surprise": 1}), "surprise"),
            (json!([]), ""),
        ];
        for (body, field) in cases {
            let (s, v) = app.post("/v1/sandboxes", Some(&key), body.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert_eq!(code(&v), "invalid_request", "{body}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains(field), "{body}: message names {field:?}: {msg}");
        }
        // Networks no sandbox may open, and networks behind the host for a team without hosts
        // of its own: 403, nothing written.
        for (body, says) in [
            (json!({"allow_internet": true, "allow_out": ["127.0.0.1"]}), "cannot be opened"),
            (json!({"allow_out": ["0.0.0.0/0"]}), "cannot be opened"),
            (json!({"allow_out": ["8.8.8.8", "10.0.0.0/8"]}), "BYOC"),
            (json!({"allow_internet": true, "allow_out": ["169.254.169.254"]}), "BYOC"),
        ] {
            let (s, v) = app.post("/v1/sandboxes", Some(&key), body.clone()).await;
            assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{body}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains(says), "{body}: {v}");
        }
        // Public networks may be opened or closed by anyone (then no host: 503); a BYOC team
        // may open its own networks.
        for body in [
            json!({"allow_out": ["8.8.8.8/32"], "deny_out": ["1.1.1.0/24"]}),
            json!({"allow_internet": true, "deny_out": ["10.0.0.0/8"]}),
        ] {
            let (s, v) = app.post("/v1/sandboxes", Some(&key), body.clone()).await;
            assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available"), "{body}: {v}");
        }
        db.set_team_byoc(a["team"]["id"].as_str().unwrap(), true).await.unwrap();
        let (s, v) = app.post("/v1/sandboxes", Some(&key), json!({"allow_out": ["10.0.0.0/8"]})).await;
        assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available"), "{v}");
        db.set_team_byoc(a["team"]["id"].as_str().unwrap(), false).await.unwrap();

        // Well formed but at odds with what exists: no such template (404), a disk smaller
        // than the template's (409).
        let (s, v) = app.post("/v1/sandboxes", Some(&key), json!({"template": "nope"})).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
        let (s, v) = app.post("/v1/sandboxes", Some(&key), json!({"disk_size_mb": 1024})).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("disk_size_mb"), "{v}");
        let (s, v) = app.raw(
            axum::http::Request::post("/v1/sandboxes")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{\"vcpus\":"))
                .unwrap(),
        ).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
        let (s, v) = app.post("/v1/sandboxes", None, json!({})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

        // A valid request, but no host is online (none registered; then one only pending).
        let (s, v) = app.post("/v1/sandboxes", Some(&key), json!({"memory_mb": 256})).await;
        assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available"), "{v}");
        db.create_host(NewHost { team_id: None, name: "p", address: "127.0.0.1:1", specs: json!({}), created_by: None }).await.unwrap();
        let (s, v) = app.post("/v1/sandboxes", Some(&key), json!({})).await;
        assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available"), "{v}");
        assert_eq!(app.sandbox_counts().await, before, "nothing written");

        let (s, v) = app.get("/v1/templates", Some(&key)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["templates"].as_array().unwrap().len(), 1, "{v}");
        let t = &v["templates"][0];
        assert_eq!((t["name"].as_str(), t["type"].as_str(), t["platform"].as_bool()), (Some("base"), Some("base"), Some(true)));
        assert_eq!((t["vcpus"].as_i64(), t["memory_mb"].as_i64()), (Some(1), Some(512)));
    }
}

db_test! {
    async fn sandbox_create_on_unreachable_host_fails_cleanly(db) {
        ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let (_, key) = app.key(&token(&a)).await;
        // An online platform host whose agent does not listen (loopback port 1).
        let host = db.create_host(NewHost { team_id: None, name: "dead", address: "127.0.0.1:1", specs: json!({}), created_by: None }).await.unwrap();
        db.complete_host_registration(&host.id, "127.0.0.1:1", &json!({}), None, None).await.unwrap();
        let (s, v) = app.post("/v1/sandboxes", Some(&key), json!({"metadata": {"k": "v"}})).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_GATEWAY, "host_unavailable"), "{v}");
        // The row records the failure; nothing stays pending.
        let (_, list) = app.get("/v1/sandboxes?status=error,pending,running", Some(&key)).await;
        let listed = list["sandboxes"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{list}");
        assert_eq!(listed[0]["status"], "error");
        assert_eq!(listed[0]["host_id"], host.id.as_str());
        assert!(listed[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{list}");
        assert_eq!(listed[0]["metadata"], json!({"k": "v"}));
        // A failed sandbox can be deleted (its host is unreachable: the row goes anyway).
        let id = listed[0]["id"].as_str().unwrap();
        let (s, v) = app.send(Method::DELETE, &format!("/v1/sandboxes/{id}"), Some(&key), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        let (_, v) = app.get(&format!("/v1/sandboxes/{id}"), Some(&key)).await;
        assert_eq!(v["status"], "stopped");
    }
}

db_test! {
    async fn sandbox_access_list_and_delete(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let b = app.signup("bob@example.com", "Bob").await;
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();
        let team_b = b["team"]["id"].as_str().unwrap().to_owned();
        let (_, key_a) = app.key(&token(&a)).await;
        let (_, key_b) = app.key(&token(&b)).await;

        let mut made = Vec::new();
        for i in 0..5 {
            let env = if i % 2 == 0 { "ci" } else { "dev" };
            made.push(app.insert(&team_a, &[("env", env), ("n", &i.to_string())]).await);
        }
        let other = app.insert(&team_b, &[("env", "ci")]).await;
        // made[0] running, made[1] stopped, the rest pending.
        db.transition_sandbox(&made[0].id, SandboxStatus::Running, None).await.unwrap();
        db.transition_sandbox(&made[1].id, SandboxStatus::Stopped, None).await.unwrap();

        // Pagination: newest first, 2 per page, stopped excluded by default.
        let mut seen = Vec::new();
        let mut path = "/v1/sandboxes?limit=2".to_owned();
        loop {
            let (s, v) = app.get(&path, Some(&key_a)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            assert!(ids(&v).len() <= 2);
            seen.extend(ids(&v));
            match v["next_cursor"].as_str() {
                Some(c) => path = format!("/v1/sandboxes?limit=2&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen, newest_first(&[&made[4], &made[3], &made[2], &made[0]]));

        let (_, v) = app.get("/v1/sandboxes?status=stopped", Some(&key_a)).await;
        assert_eq!(ids(&v), vec![made[1].id.clone()]);
        let (_, v) = app.get("/v1/sandboxes?status=running,stopped", Some(&key_a)).await;
        assert_eq!(ids(&v), newest_first(&[&made[1], &made[0]]));
        let (_, v) = app.get("/v1/sandboxes?metadata.env=ci", Some(&key_a)).await;
        assert_eq!(ids(&v), newest_first(&[&made[4], &made[2], &made[0]]));
        let (_, v) = app.get("/v1/sandboxes?metadata.env=ci&metadata.n=2", Some(&key_a)).await;
        assert_eq!(ids(&v), vec![made[2].id.clone()]);
        let (_, v) = app.get("/v1/sandboxes?metadata.env=ci", Some(&key_b)).await;
        assert_eq!(ids(&v), vec![other.id.clone()], "only the caller's team");
        for bad in ["?limit=0", "?limit=1001", "?cursor=zzz", "?status=", "?status=nope", "?sort=asc"] {
            let (s, v) = app.get(&format!("/v1/sandboxes{bad}"), Some(&key_a)).await;
            // `?status=` (empty) means no filter; everything else is refused.
            if bad == "?status=" {
                assert_eq!(s, StatusCode::OK, "{bad}: {v}");
            } else {
                assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
            }
        }

        // The sandbox JSON: contract fields, never the envd token.
        let (s, v) = app.get(&format!("/v1/sandboxes/{}", made[0].id), Some(&key_a)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["auto_resume", "created_at", "disk_size_mb", "end_at", "envd_version", "error", "host_id", "host_ip", "id", "last_active_at", "memory_mb", "metadata", "on_timeout", "started_at", "status", "template", "timeout_sec", "vcpus"]);
        assert!(!v.to_string().contains("secret-envd-token"));
        assert_eq!(v["status"], "running");
        assert_eq!(v["metadata"], json!({"env": "ci", "n": "0"}));

        // Another team: 404 everywhere, nothing changes.
        let before = app.sandbox_counts().await;
        for (m, p) in [
            (Method::GET, format!("/v1/sandboxes/{}", made[0].id)),
            (Method::DELETE, format!("/v1/sandboxes/{}", made[0].id)),
            (Method::POST, format!("/v1/sandboxes/{}/keepalive", made[0].id)),
        ] {
            let (s, v) = app.send(m.clone(), &p, Some(&key_b), None).await;
            assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{m} {p}: {v}");
        }
        // Unknown but well-formed ID: the same answer.
        let (s, _) = app.get("/v1/sandboxes/aaaaaaaaaaaaaaaaaaaa", Some(&key_a)).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        for bad in ["AAAAAAAAAAAAAAAAAAAA", "short", "aaaaaaaaaaaaaaaaaaaa-", "aaaaaaaaaaaaaaaaaaa_"] {
            let (s, v) = app.get(&format!("/v1/sandboxes/{bad}"), Some(&key_a)).await;
            assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}");
        }
        assert_eq!(app.sandbox_counts().await, before);
        assert_eq!(db.get_sandbox(&team_a, &made[0].id).await.unwrap().status, SandboxStatus::Running);

        // Keepalive needs a running sandbox; a pending one is 409 and its body is checked first.
        let (s, v) = app.send(Method::POST, &format!("/v1/sandboxes/{}/keepalive", made[2].id), Some(&key_a), None).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "invalid_state"), "{v}");
        let (s, v) = app.post(&format!("/v1/sandboxes/{}/keepalive", made[2].id), Some(&key_a), json!({"timeout_sec": 86401})).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{v}");

        // Deleting a pending sandbox (no host: no agent call) stops it; again is a 204 too.
        for _ in 0..2 {
            let (s, v) = app.send(Method::DELETE, &format!("/v1/sandboxes/{}", made[2].id), Some(&key_a), None).await;
            assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        }
        assert_eq!(db.get_sandbox(&team_a, &made[2].id).await.unwrap().status, SandboxStatus::Stopped);
        let deletes = db
            .list_audit(&team_a, &wrenn_cp::db::PageRequest::first(100).unwrap())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.action == "sandbox.delete")
            .count();
        assert_eq!(deletes, 1, "one audit row per delete that changed something");
    }
}
