//! The platform admin's routes: teams and their BYOC flag, every host with its team, the
//! whole audit log; and a team's own audit log for its owners.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use wrenn_cp::db_test;

use super::{App, code, token};

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_owned()
}

db_test! {
    async fn admin_routes_byoc_and_audit(db) {
        wrenn_cp::api::sandboxes::ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await; // platform admin
        let b = app.signup("bob@example.com", "Bob").await; // owns team B
        let c = app.signup("cy@example.com", "Cy").await;
        let (ta, tb, tc) = (token(&a), token(&b), token(&c));
        let team_b = s(&b["team"], "id");
        let byoc = format!("/v1/admin/teams/{team_b}/byoc");

        // Not an admin → 403; no user token (or an admin's API key) → 401; nothing changes.
        let (_, ka) = app.key(&ta).await;
        for path in ["/v1/admin/teams", "/v1/admin/hosts", "/v1/admin/audit"] {
            let (st, v) = app.get(path, Some(&tb)).await;
            assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{path}: {v}");
            assert_eq!(app.get(path, None).await.0, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(app.get(path, Some(&ka)).await.0, StatusCode::UNAUTHORIZED, "{path}");
        }
        let (st, _) = app.send(Method::PUT, &byoc, Some(&tb), Some(json!({"enabled": true}))).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        // Bad input: 400 / 404, nothing changes.
        for (path, body) in [
            (byoc.as_str(), json!({"enabled": "yes"})),
            (byoc.as_str(), json!({})),
            ("/v1/admin/teams/not-a-team/byoc", json!({"enabled": true})),
        ] {
            let (st, v) = app.send(Method::PUT, path, Some(&ta), Some(body)).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{path}: {v}");
        }
        let unknown = "team-0190f5a3c2b17e3a9d4f5b6c7d8e9f00";
        let (st, v) = app.send(Method::PUT, &format!("/v1/admin/teams/{unknown}/byoc"), Some(&ta), Some(json!({"enabled": true}))).await;
        assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");
        let (_, teams) = app.get("/v1/admin/teams", Some(&ta)).await;
        let items = teams["items"].as_array().unwrap();
        assert_eq!(items.len(), 3, "{teams}");
        assert!(items.iter().all(|t| t["is_byoc"] == false), "{teams}");

        // Before the flag, team B cannot register a host of its own.
        let (st, v) = app.post("/v1/hosts/registration-tokens", Some(&tb), json!({"name": "b0"})).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");

        // An online platform host: before the flag, team B may be placed there...
        let p = app.post("/v1/hosts/registration-tokens", Some(&ta), json!({"platform": true, "name": "p1"})).await.1;
        let (st, _) = app
            .post("/v1/hosts/register", None, json!({"token": s(&p, "registration_token"), "name": "p1", "address": "127.0.0.1:9",
                  "specs": {"cpu_count": 2, "memory_bytes": 4_294_967_296_u64, "arch": "x86_64"}}))
            .await;
        assert_eq!(st, StatusCode::CREATED);
        // (nothing answers at its address: the create fails there, past the scheduler)
        let (st, v) = app.post("/v1/sandboxes", Some(&tb), json!({})).await;
        assert_eq!(st, StatusCode::BAD_GATEWAY, "{v}");
        // ...the admin makes B BYOC; B's next request, with the token it had, sees it: no
        // platform host for it any more.
        let (st, t) = app.send(Method::PUT, &byoc, Some(&ta), Some(json!({"enabled": true}))).await;
        assert_eq!((st, &t["is_byoc"]), (StatusCode::OK, &json!(true)), "{t}");
        let (st, v) = app.post("/v1/sandboxes", Some(&tb), json!({})).await;
        assert_eq!((st, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available"), "{v}");
        let (_, mine) = app.get("/v1/teams", Some(&tb)).await;
        assert!(mine.to_string().contains("\"is_byoc\":true"), "{mine}");

        // B registers its own host; the admin's host list names its team.
        let h = app.post("/v1/hosts/registration-tokens", Some(&tb), json!({"name": "b1"})).await.1;
        let hb = s(&h["host"], "id");
        let (st, hosts) = app.get("/v1/admin/hosts", Some(&ta)).await;
        assert_eq!(st, StatusCode::OK, "{hosts}");
        let hosts = hosts.as_array().unwrap();
        assert_eq!(hosts.len(), 2);
        for h in hosts {
            if h["id"] == hb.as_str() {
                assert_eq!(h["team_name"], b["team"]["name"], "{h}");
            } else {
                assert!(h["team_name"].is_null() && h["team_id"].is_null(), "{h}");
            }
        }

        // The audit log: everything for the admin; the team's own for its owner only.
        let (_, all) = app.get("/v1/admin/audit?limit=100", Some(&ta)).await;
        let actions: Vec<&str> = all["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert!(actions.contains(&"team.byoc"), "{all}");
        let team_audit = format!("/v1/teams/{team_b}/audit");
        let (st, v) = app.get(&team_audit, Some(&tb)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let items = v["items"].as_array().unwrap();
        assert!(items.iter().all(|e| e["team_id"] == team_b.as_str()), "{v}");
        assert!(items.iter().any(|e| e["action"] == "team.byoc" && e["details"]["enabled"] == true), "{v}");
        // Cy: not a member → 404; a member but not owner → 403.
        assert_eq!(app.get(&team_audit, Some(&tc)).await.0, StatusCode::NOT_FOUND);
        let (st, v) = app.post(&format!("/v1/teams/{team_b}/members"), Some(&tb), json!({"email": "cy@example.com"})).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(app.get(&team_audit, Some(&tc)).await.0, StatusCode::FORBIDDEN);

        // And back.
        let (_, t) = app.send(Method::PUT, &byoc, Some(&ta), Some(json!({"enabled": false}))).await;
        assert_eq!(t["is_byoc"], false);
    }
}

db_test! {
    async fn team_quotas_bound_creates_resumes_and_timeouts(db) {
        use wrenn_cp::db::SandboxStatus::*;
        use wrenn_cp::db::testing::{count_rows, new_sandbox};

        wrenn_cp::api::sandboxes::ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await; // platform admin
        let b = app.signup("bob@example.com", "Bob").await;
        let (ta, tb) = (token(&a), token(&b));
        let team_b = s(&b["team"], "id");
        let (_, kb) = app.key(&tb).await;
        let quota = format!("/v1/admin/teams/{team_b}/quota");

        // Defaults; no deadline is not among them.
        let (st, q) = app.get(&quota, Some(&ta)).await;
        assert_eq!(st, StatusCode::OK, "{q}");
        assert_eq!((q["effective"]["max_sandboxes"].as_i64(), &q["usage"]["sandboxes"]), (Some(100), &json!(0)));
        let (st, v) = app.post("/v1/sandboxes", Some(&kb), json!({"timeout_sec": 0})).await;
        assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
        let (st, v) = app.post("/v1/sandboxes", Some(&kb), json!({"timeout_sec": 86_400})).await;
        assert_eq!((st, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "no_hosts_available"), "within the quota: {v}");

        // Only an admin sets quotas; bad bodies change nothing.
        let (st, _) = app.send(Method::PUT, &quota, Some(&tb), Some(json!({"max_sandboxes": 1000}))).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        for bad in [json!({"max_sandboxes": -1}), json!({"max_cpus": 3}), json!({"max_vcpus": "many"})] {
            let (st, v) = app.send(Method::PUT, &quota, Some(&ta), Some(bad.clone())).await;
            assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
        }
        assert_eq!(count_rows(&db, "team_quotas").await, 0);
        let (st, q) = app
            .send(Method::PUT, &quota, Some(&ta), Some(json!({"max_sandboxes": 2, "max_vcpus": 3, "allow_no_timeout": true, "max_timeout_sec": 600})))
            .await;
        assert_eq!(st, StatusCode::OK, "{q}");
        assert_eq!(q["effective"]["max_sandboxes"], 2);
        assert_eq!(q["effective"]["max_memory_mb"], 262_144, "untouched fields keep the default");

        // The next request sees it: no deadline allowed now, an hour is not.
        let (st, v) = app.post("/v1/sandboxes", Some(&kb), json!({"timeout_sec": 0})).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        let (st, v) = app.post("/v1/sandboxes", Some(&kb), json!({"timeout_sec": 3600})).await;
        assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");

        // Two live sandboxes (one running, one paused): a third is refused before anything
        // is written.
        let running = db.insert_pending_sandbox(new_sandbox(&team_b, None)).await.unwrap();
        db.transition_sandbox(&running.id, Running, None).await.unwrap();
        let host = db
            .create_host(wrenn_cp::db::NewHost { team_id: None, name: "dead", address: "127.0.0.1:1", specs: json!({}), created_by: None })
            .await
            .unwrap();
        let paused = db.insert_pending_sandbox(new_sandbox(&team_b, Some(&host.id))).await.unwrap();
        db.transition_sandbox(&paused.id, Running, None).await.unwrap();
        db.transition_sandbox(&paused.id, Paused, None).await.unwrap();
        let rows = count_rows(&db, "sandboxes").await;
        let (st, v) = app.post("/v1/sandboxes", Some(&kb), json!({"timeout_sec": 60})).await;
        assert_eq!((st, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"), "{v}");
        assert_eq!(count_rows(&db, "sandboxes").await, rows);
        // vCPUs count running sandboxes only: 1 in use, 2 more would make 3 (allowed), a
        // resume of the paused one (1) too; a 3-vCPU create would not fit.
        db.transition_sandbox(&running.id, Stopped, None).await.unwrap();
        let (st, v) = app.post("/v1/sandboxes", Some(&kb), json!({"timeout_sec": 60, "vcpus": 4})).await;
        assert_eq!((st, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("vCPUs"), "{v}");
        let (st, q) = app.get(&quota, Some(&ta)).await;
        assert_eq!((st, &q["usage"]["sandboxes"], &q["usage"]["vcpus"]), (StatusCode::OK, &json!(1), &json!(0)), "{q}");
        // A resume that would pass the vCPU quota is refused too.
        app.send(Method::PUT, &quota, Some(&ta), Some(json!({"max_vcpus": 0}))).await;
        let (st, v) = app.post(&format!("/v1/sandboxes/{}/resume", paused.id), Some(&kb), json!({})).await;
        assert_eq!((st, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"), "{v}");
        assert_eq!(db.get_sandbox(&team_b, &paused.id).await.unwrap().status, Paused);
        // {} resets to the defaults.
        let (st, q) = app.send(Method::PUT, &quota, Some(&ta), Some(json!({}))).await;
        assert_eq!((st, &q["overrides"]), (StatusCode::OK, &json!({})), "{q}");
        assert_eq!(count_rows(&db, "team_quotas").await, 0);
    }
}
