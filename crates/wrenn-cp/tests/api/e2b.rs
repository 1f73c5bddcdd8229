//! The E2B-compatible routes and the sandbox proxy without VMs: authentication, E2B's error
//! body, validation, team scoping, listing filters, and the proxy's refusals. The SDKs against
//! real sandboxes: `crates/wrenn/tests/e2b_sdk.rs`.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use wrenn_cp::api::sandboxes::ensure_platform_templates;
use wrenn_cp::db::{NewSandbox, OnTimeout, SandboxPatch, SandboxStatus};
use wrenn_cp::db_test;

use super::{App, token};

/// A request with E2B's `X-API-KEY` and optional extra headers; the E2B error body is
/// checked on every failure.
async fn e2b(
    app: &App,
    method: Method,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"))
    };
    if !status.is_success() {
        assert_eq!(
            v["code"].as_u64(),
            Some(u64::from(status.as_u16())),
            "E2B error body: {v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    (status, v, headers)
}

async fn running(app: &App, team: &str, meta: &[(&str, &str)]) -> String {
    let sb = app
        .db
        .insert_pending_sandbox(NewSandbox {
            team_id: team,
            host_id: None,
            template: "base",
            vcpus: 1,
            memory_mb: 256,
            disk_size_mb: 5120,
            timeout_sec: 300,
            end_at: Some(wrenn_cp::db::now_ms() + 300_000),
            on_timeout: OnTimeout::Kill,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            envd_token: Some("envd-secret"),
            auto_resume: false,
            idempotency_key: None,
        })
        .await
        .unwrap();
    app.db
        .update_sandbox(
            &sb.id,
            SandboxPatch {
                envd_version: Some("0.6.4"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    app.db
        .transition_sandbox(&sb.id, SandboxStatus::Running, None)
        .await
        .unwrap();
    sb.id
}

db_test! {
    async fn e2b_routes_authenticate_validate_and_scope(db) {
        ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let b = app.signup("bob@example.com", "Bob").await;
        let (_, key_a) = app.key(&token(&a)).await;
        let (_, key_b) = app.key(&token(&b)).await;
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();

        // Authentication, in E2B's error shape.
        let (s, _, _) = e2b(&app, Method::POST, "/v2/sandboxes", None, &[], Some(r#"{"templateID":"base"}"#)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _, _) = e2b(&app, Method::GET, "/v2/sandboxes", Some("wrn_00000000000000000000000000000000"), &[], None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // Bad bodies and headers: 400; unknown template: 404; no host: 503, not to be retried.
        for body in ["{not json", r#"{"timeout":10}"#, r#"{"templateID":"base","metadata":{"k":1}}"#, r#"{"templateID":"base","timeout":-5}"#] {
            let (s, v, _) = e2b(&app, Method::POST, "/v2/sandboxes", Some(&key_a), &[], Some(body)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        }
        let (s, v, _) = e2b(&app, Method::POST, "/sandboxes", Some(&key_a), &[], Some(r#"{"templateID":"code-interpreter-v1"}"#)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, _, _) = e2b(&app, Method::POST, "/v2/sandboxes", Some(&key_a), &[("idempotency-key", "Not Valid")], Some(r#"{"templateID":"base"}"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, v, h) = e2b(&app, Method::POST, "/v2/sandboxes", Some(&key_a), &[], Some(r#"{"templateID":"base","network":{"allowOut":[]},"mcp":null}"#)).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(h.get("should-retry").map(|v| v.to_str().unwrap()), Some("false"));

        // Detail, list (metadata and state filters, paging) and scoping.
        let id1 = running(&app, &team_a, &[("env", "ci"), ("n", "1")]).await;
        let id2 = running(&app, &team_a, &[("env", "dev")]).await;
        let (s, v, _) = e2b(&app, Method::GET, &format!("/sandboxes/{id1}"), Some(&key_a), &[], None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for k in ["templateID", "sandboxID", "clientID", "startedAt", "endAt", "envdVersion", "cpuCount", "memoryMB", "diskSizeMB", "state"] {
            assert!(!v[k].is_null(), "{k} missing: {v}");
        }
        assert_eq!((v["state"].as_str(), v["envdVersion"].as_str(), v["envdAccessToken"].as_str()), (Some("running"), Some("0.6.4"), Some("envd-secret")));
        assert_eq!(v["metadata"], json!({"env": "ci", "n": "1"}));
        assert_eq!(v["lifecycle"], json!({"autoResume": false, "onTimeout": "kill"}));
        let (s, v, _) = e2b(&app, Method::GET, "/v2/sandboxes?metadata=env%3Dci", Some(&key_a), &[], None).await;
        assert_eq!(s, StatusCode::OK);
        let ids: Vec<&str> = v.as_array().unwrap().iter().map(|s| s["sandboxID"].as_str().unwrap()).collect();
        assert_eq!(ids, [id1.as_str()]);
        let (_, v, h) = e2b(&app, Method::GET, "/v2/sandboxes?limit=1", Some(&key_a), &[], None).await;
        assert_eq!(v.as_array().unwrap().len(), 1);
        let next = h.get("x-next-token").expect("a next token").to_str().unwrap().to_owned();
        let (_, v2, h2) = e2b(&app, Method::GET, &format!("/v2/sandboxes?limit=1&nextToken={next}"), Some(&key_a), &[], None).await;
        assert_ne!(v2[0]["sandboxID"], v[0]["sandboxID"]);
        assert!(h2.get("x-next-token").is_none(), "last page");
        let (_, v, _) = e2b(&app, Method::GET, "/v2/sandboxes?state=paused", Some(&key_a), &[], None).await;
        assert_eq!(v, json!([]));
        for q in ["state=sleeping", "limit=0", "bogus=1"] {
            let (s, _, _) = e2b(&app, Method::GET, &format!("/v2/sandboxes?{q}"), Some(&key_a), &[], None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
        }
        let (_, v, _) = e2b(&app, Method::GET, "/v2/sandboxes", Some(&key_b), &[], None).await;
        assert_eq!(v, json!([]), "another team's list");
        for (m, p) in [
            (Method::GET, format!("/sandboxes/{id2}")),
            (Method::DELETE, format!("/sandboxes/{id2}")),
            (Method::POST, format!("/sandboxes/{id2}/pause")),
            (Method::POST, format!("/v2/sandboxes/{id2}/connect")),
            (Method::GET, "/sandboxes/aaaaaaaaaaaaaaaaaaaa".to_owned()),
            (Method::GET, "/sandboxes/not-an-id".to_owned()),
            (Method::DELETE, "/templates/nope".to_owned()),
        ] {
            let (s, _, _) = e2b(&app, m.clone(), &p, Some(&key_b), &[], None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}");
        }
        assert_eq!(db.get_sandbox(&team_a, &id2).await.unwrap().status, SandboxStatus::Running);
        let (s, _, _) = e2b(&app, Method::POST, &format!("/sandboxes/{id1}/timeout"), Some(&key_a), &[], Some(r#"{"timeout":"x"}"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, v, _) = e2b(&app, Method::GET, &format!("/sandboxes/{id1}/metrics?start=abc"), Some(&key_a), &[], None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, _, _) = e2b(&app, Method::POST, &format!("/sandboxes/{id1}/fork"), Some(&key_a), &[], Some(r#"{"count":21}"#)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, v, _) = e2b(&app, Method::GET, "/snapshots", Some(&key_a), &[], None).await;
        assert_eq!((s, v), (StatusCode::OK, json!([])));
    }
}

db_test! {
    async fn proxy_refuses_what_it_cannot_route(db) {
        ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();
        let id = running(&app, &team_a, &[]).await;
        let unknown = "aaaaaaaaaaaaaaaaaaaa";
        // Unknown or malformed sandbox: the SDK's "was not found" 502, by header or host name.
        for headers in [
            vec![("e2b-sandbox-id", unknown)],
            vec![("e2b-sandbox-id", "not-an-id"), ("e2b-sandbox-port", "8000")],
        ] {
            let (s, v, _) = e2b(&app, Method::GET, "/health", None, &headers, None).await;
            assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
            assert!(v["message"].as_str().unwrap().contains("was not found"), "{v}");
        }
        let host = format!("8000-{unknown}.wrenn.test");
        let (s, v, _) = e2b(&app, Method::GET, "/", None, &[("host", &host)], None).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
        assert_eq!(v["sandboxId"], unknown);
        let (s, _, _) = e2b(&app, Method::GET, "/", None, &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "http")], None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // envd's port needs the sandbox's token (before anything reaches its host).
        for token in [None, Some("wrong")] {
            let mut h = vec![("e2b-sandbox-id", id.as_str())];
            if let Some(t) = token {
                h.push(("x-access-token", t));
            }
            let (s, v, _) = e2b(&app, Method::POST, "/process.Process/List", None, &h, Some("{}")).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{token:?}: {v}");
        }
        // Other ports are public unless the sandbox is private: then its traffic token.
        app.db
            .update_sandbox(&id, SandboxPatch { traffic_token: Some("traffic-secret"), ..Default::default() })
            .await
            .unwrap();
        for (token, want) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("wrong"), StatusCode::FORBIDDEN),
            // Past the check: this row has no host, so the SDK's "not found".
            (Some("traffic-secret"), StatusCode::BAD_GATEWAY),
        ] {
            let mut h = vec![("e2b-sandbox-id", id.as_str()), ("e2b-sandbox-port", "8000")];
            if let Some(t) = token {
                h.push(("e2b-traffic-access-token", t));
            }
            let (s, v, _) = e2b(&app, Method::GET, "/", None, &h, None).await;
            assert_eq!(s, want, "{token:?}: {v}");
        }
        // A stopped sandbox is not found either; the API itself is untouched by all this.
        db.transition_sandbox(&id, SandboxStatus::Stopped, None).await.unwrap();
        let (s, _, _) = e2b(&app, Method::GET, "/health", None, &[("e2b-sandbox-id", &id), ("x-access-token", "envd-secret")], None).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        let (s, _) = app.get("/health", None).await;
        assert_eq!(s, StatusCode::OK);
    }
}
