//! Snapshot templates without VMs: validation, team scoping, the shape lock, placement on the
//! hosts that hold a template, and deletes refused while sandboxes use one. Making one on a
//! real host is covered end to end in `crates/wrenn/tests/e2e.rs`.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use wrenn_cp::api::sandboxes::ensure_platform_templates;
use wrenn_cp::db::{
    Db, Host, HostStatus, NewHost, NewSandbox, OnTimeout, Sandbox, SandboxStatus, TemplateSpec,
};
use wrenn_cp::db_test;

use super::{App, code, token};

fn snap(name: &str) -> TemplateSpec {
    TemplateSpec {
        name: name.into(),
        default_user: "user".into(),
        default_env: json!({}),
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 5120,
        is_snapshot: true,
        size_bytes: 1 << 20,
    }
}

/// An online platform host whose agent does not listen (loopback port 1).
async fn dead_host(db: &Db, name: &str) -> Host {
    let h = db
        .create_host(NewHost {
            team_id: None,
            name,
            address: "127.0.0.1:1",
            specs: json!({}),
            created_by: None,
        })
        .await
        .unwrap();
    db.complete_host_registration(&h.id, "127.0.0.1:1", &json!({}), None, None)
        .await
        .unwrap();
    h
}

async fn sandbox(db: &Db, team: &str, template: &str, host: Option<&str>) -> Sandbox {
    db.insert_pending_sandbox(NewSandbox {
        team_id: team,
        host_id: host,
        template,
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 5120,
        timeout_sec: 300,
        end_at: None,
        on_timeout: OnTimeout::Kill,
        metadata: Default::default(),
        envd_token: Some("t"),
        auto_resume: false,
        idempotency_key: None,
    })
    .await
    .unwrap()
}

fn names(v: &Value) -> Vec<(String, String)> {
    v["templates"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn templates_rows(db: &Db) -> Vec<i64> {
    let mut out = Vec::new();
    for t in ["templates", "template_hosts", "audit_log"] {
        out.push(wrenn_cp::db::testing::count_rows(db, t).await);
    }
    out
}

db_test! {
    async fn snapshot_create_is_validated_and_team_scoped(db) {
        ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let b = app.signup("bob@example.com", "Bob").await;
        let (_, key_a) = app.key(&token(&a)).await;
        let (_, key_b) = app.key(&token(&b)).await;
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();
        let host = dead_host(&db, "h1").await;
        let pending = sandbox(&db, &team_a, "base", Some(&host.id)).await;
        let running = sandbox(&db, &team_a, "base", Some(&host.id)).await;
        db.transition_sandbox(&running.id, SandboxStatus::Running, None).await.unwrap();
        let before = templates_rows(&db).await;

        for (body, field) in [
            (json!({"sandbox_id": running.id, "name": ""}), "name"),
            (json!({"sandbox_id": running.id, "name": "Upper"}), "name"),
            (json!({"sandbox_id": running.id, "name": "a.b"}), "name"),
            (json!({"sandbox_id": running.id, "name": "../x"}), "name"),
            (json!({"sandbox_id": running.id, "name": "x".repeat(65)}), "name"),
            (json!({"sandbox_id": "nope", "name": "s"}), "sandbox_id"),
            (json!({"name": "s"}), "sandbox_id"),
            (json!({"sandbox_id": running.id, "name": "s", "extra": 1}), "extra"),
        ] {
            let (s, v) = app.post("/v1/snapshots", Some(&key_a), body.clone()).await;
            assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains(field), "{body}: {v}");
        }
        // Another team's sandbox is as unknown as a missing one.
        let (s, v) = app.post("/v1/snapshots", Some(&key_b), json!({"sandbox_id": running.id, "name": "s"})).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
        let (s, v) = app.post("/v1/snapshots", Some(&key_a), json!({"sandbox_id": "a".repeat(20), "name": "s"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        // Only running or paused sandboxes; never a platform template's name.
        let (s, v) = app.post("/v1/snapshots", Some(&key_a), json!({"sandbox_id": pending.id, "name": "s"})).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "invalid_state"), "{v}");
        let (s, v) = app.post("/v1/snapshots", Some(&key_a), json!({"sandbox_id": running.id, "name": "base"})).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        // The name is taken in the team (whatever the host would say).
        db.insert_team_template(&team_a, &snap("taken")).await.unwrap();
        let mut before_taken = before.clone();
        before_taken[0] += 1;
        let (s, v) = app.post("/v1/snapshots", Some(&key_a), json!({"sandbox_id": running.id, "name": "taken"})).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        assert_eq!(templates_rows(&db).await, before_taken, "refusals write nothing");
        // The host does not answer: 502 and the reserved row is gone again.
        let (s, v) = app.post("/v1/snapshots", Some(&key_a), json!({"sandbox_id": running.id, "name": "fresh"})).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_GATEWAY, "host_unavailable"), "{v}");
        assert_eq!(templates_rows(&db).await, before_taken, "a failed make keeps nothing");
        let (s, v) = app.post("/v1/snapshots", None, json!({"sandbox_id": running.id, "name": "s"})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }
}

db_test! {
    async fn snapshot_templates_lock_their_shape_and_place_on_their_hosts(db) {
        ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let b = app.signup("bob@example.com", "Bob").await;
        let (_, key_a) = app.key(&token(&a)).await;
        let (_, key_b) = app.key(&token(&b)).await;
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();
        let holder = dead_host(&db, "holder").await;
        let other = dead_host(&db, "other").await;
        let t = db.insert_team_template(&team_a, &snap("snap")).await.unwrap();
        db.add_template_host(&t.id, &holder.id).await.unwrap();

        // Listed for its team only, as a snapshot.
        let (_, v) = app.get("/v1/templates", Some(&key_a)).await;
        assert_eq!(names(&v), [("base".into(), "base".into()), ("snap".into(), "snapshot".into())]);
        let (_, v) = app.get("/v1/snapshots", Some(&key_a)).await;
        assert_eq!(names(&v), [("snap".to_owned(), "snapshot".to_owned())]);
        assert_eq!(v["templates"][0]["size_bytes"], 1 << 20);
        assert_eq!(v["templates"][0]["memory_mb"], 256);
        let (_, v) = app.get("/v1/templates", Some(&key_b)).await;
        assert_eq!(names(&v), [("base".to_owned(), "base".to_owned())]);
        let (_, v) = app.get("/v1/snapshots", Some(&key_b)).await;
        assert_eq!(names(&v), Vec::<(String, String)>::new());
        let (s, v) = app.post("/v1/sandboxes", Some(&key_b), json!({"template": "snap"})).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "another team's: {v}");

        // Its machine is fixed.
        for (body, field) in [
            (json!({"template": "snap", "memory_mb": 512}), "memory_mb"),
            (json!({"template": "snap", "vcpus": 2}), "vcpus"),
            (json!({"template": "snap", "disk_size_mb": 8192}), "disk_size_mb"),
        ] {
            let (s, v) = app.post("/v1/sandboxes", Some(&key_a), body.clone()).await;
            assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{body}: {v}");
            assert!(v["error"]["message"].as_str().unwrap().contains(field), "{body}: {v}");
        }
        // Same values as the template are fine; placement is on the holder only, though the
        // other host is as idle (unrestricted picks alternate between equals).
        for body in [json!({"template": "snap"}), json!({"template": "snap", "memory_mb": 256, "vcpus": 1}), json!({"template": "snap"})] {
            let (s, v) = app.post("/v1/sandboxes", Some(&key_a), body).await;
            assert_eq!((s, code(&v)), (StatusCode::BAD_GATEWAY, "host_unavailable"), "{v}");
        }
        let (_, list) = app.get("/v1/sandboxes?status=error", Some(&key_a)).await;
        let hosts: Vec<&str> = list["sandboxes"].as_array().unwrap().iter().map(|s| s["host_id"].as_str().unwrap()).collect();
        assert_eq!(hosts, [holder.id.as_str(); 3], "{list}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2 {
            app.post("/v1/sandboxes", Some(&key_a), json!({})).await;
        }
        let (_, list) = app.get("/v1/sandboxes?status=error", Some(&key_a)).await;
        for s in list["sandboxes"].as_array().unwrap() {
            seen.insert(s["host_id"].as_str().unwrap().to_owned());
        }
        assert!(seen.contains(&other.id), "a base create may use any host: {list}");
        // The holder down: no other host may stand in.
        db.set_host_status(&holder.id, HostStatus::Unreachable, None).await.unwrap();
        let (s, v) = app.post("/v1/sandboxes", Some(&key_a), json!({"template": "snap"})).await;
        assert_eq!((s, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available"), "{v}");
    }
}

db_test! {
    async fn snapshot_delete_refuses_while_used_unless_forced(db) {
        ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let b = app.signup("bob@example.com", "Bob").await;
        let (_, key_a) = app.key(&token(&a)).await;
        let (_, key_b) = app.key(&token(&b)).await;
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();
        let t = db.insert_team_template(&team_a, &snap("snap")).await.unwrap();
        let used = sandbox(&db, &team_a, "snap", None).await;
        let paused = sandbox(&db, &team_a, "snap", None).await;
        db.transition_sandbox(&paused.id, SandboxStatus::Running, None).await.unwrap();
        db.transition_sandbox(&paused.id, SandboxStatus::Paused, None).await.unwrap();
        let gone = sandbox(&db, &team_a, "snap", None).await;
        db.transition_sandbox(&gone.id, SandboxStatus::Stopped, None).await.unwrap();
        let del = |q: &str| format!("/v1/snapshots/snap{q}");

        let (s, v) = app.send(Method::DELETE, &del(""), Some(&key_a), None).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        let mut want = vec![used.id.clone(), paused.id.clone()];
        want.sort();
        let mut got: Vec<String> = serde_json::from_value(v["error"]["sandbox_ids"].clone()).unwrap();
        got.sort();
        assert_eq!(got, want, "the dependants, not the stopped one: {v}");
        for (path, status) in [
            (del("?force=maybe"), StatusCode::BAD_REQUEST),
            (del("?forse=true"), StatusCode::BAD_REQUEST),
            ("/v1/snapshots/Bad.Name".to_owned(), StatusCode::BAD_REQUEST),
            ("/v1/snapshots/base".to_owned(), StatusCode::NOT_FOUND),
            ("/v1/snapshots/nope".to_owned(), StatusCode::NOT_FOUND),
        ] {
            let (s, v) = app.send(Method::DELETE, &path, Some(&key_a), None).await;
            assert_eq!(s, status, "{path}: {v}");
        }
        let (s, _) = app.send(Method::DELETE, &del("?force=true"), Some(&key_b), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "another team's");

        // Held by a host that does not answer: 502, and it stays (a retry finishes).
        let host = dead_host(&db, "h").await;
        db.add_template_host(&t.id, &host.id).await.unwrap();
        let (s, v) = app.send(Method::DELETE, &del("?force=true"), Some(&key_a), None).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_GATEWAY, "host_unavailable"), "{v}");
        assert_eq!(db.template_hosts(&t.id).await.unwrap(), vec![host.id.clone()]);
        // Once no host holds it any more, the forced delete goes through.
        db.remove_template_host(&t.id, &host.id).await.unwrap();
        let (s, v) = app.send(Method::DELETE, &del("?force=true"), Some(&key_a), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        let (_, v) = app.get("/v1/snapshots", Some(&key_a)).await;
        assert_eq!(names(&v), Vec::<(String, String)>::new());
        let (s, _) = app.send(Method::DELETE, &del(""), Some(&key_a), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // Its sandboxes are untouched.
        assert_eq!(db.get_sandbox(&team_a, &paused.id).await.unwrap().status, SandboxStatus::Paused);
        let page = wrenn_cp::db::PageRequest::first(10).unwrap();
        let audit = db.list_audit(&team_a, &page).await.unwrap().items;
        assert_eq!(audit[0].action, "snapshot.delete");
        assert_eq!(audit[0].target_id.as_deref(), Some(t.id.as_str()));
    }
}
