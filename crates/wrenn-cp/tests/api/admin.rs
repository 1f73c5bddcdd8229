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
