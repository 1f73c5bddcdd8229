use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use wrenn_cp::auth::sha256_hex;
use wrenn_cp::db::{NewRegistrationToken, now_ms};
use wrenn_cp::db_test;

use super::{App, SECRET, code, token};

/// What the tests' team hosts register with (see [`App::register`]).
const TEAM_HOST_ADDRESS: &str = "https://10.0.0.2:50051";
/// The certificate fingerprint a TLS agent registers with.
const AGENT_FINGERPRINT: &str =
    "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const UNKNOWN_TOKEN: &str = "00000000000000000000000000000000000000000000000000000000000000aa";

impl App {
    /// Row counts of the host tables.
    async fn host_counts(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for t in ["hosts", "host_registration_tokens", "host_refresh_tokens"] {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
                    .fetch_one(self.db.pool())
                    .await
                    .unwrap();
            out.push(n);
        }
        out
    }

    /// Makes the team of `user`'s token bring its own hosts (as a platform admin would).
    async fn make_byoc(&self, user: &str) {
        let (st, me) = self.get("/v1/me", Some(user)).await;
        assert_eq!(st, StatusCode::OK, "{me}");
        self.db
            .set_team_byoc(me["team_id"].as_str().unwrap(), true)
            .await
            .unwrap();
    }

    /// Creates a registration token with `user` (a team token: its team made BYOC first);
    /// returns the response.
    async fn reg_token(&self, user: &str, body: Value) -> Value {
        if body["platform"] != json!(true) {
            self.make_byoc(user).await;
        }
        let (s, v) = self
            .post("/v1/hosts/registration-tokens", Some(user), body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// Registers with `reg_token`. A team's host may not give a loopback address (the API
    /// refuses it) and these tests must reach nothing off this machine, so a team host
    /// registers as 10.0.0.2 and its row is then pointed at loopback, where nothing answers.
    async fn register(&self, reg_token: &str) -> (StatusCode, Value) {
        let team_host = matches!(
            self.db
                .registration_token_team(&sha256_hex(reg_token))
                .await,
            Ok(Some(_))
        );
        let address = if team_host {
            TEAM_HOST_ADDRESS
        } else {
            "127.0.0.1:50051"
        };
        let r = self
            .post(
                "/v1/hosts/register",
                None,
                json!({
                    "token": reg_token,
                    "name": "rack-1",
                    "address": address,
                    "tls_fingerprint": team_host.then_some(AGENT_FINGERPRINT),
                    "specs": {"cpu_count": 2, "memory_bytes": 4_294_967_296_u64, "arch": "x86_64"},
                }),
            )
            .await;
        if team_host && r.0 == StatusCode::CREATED {
            let id = r.1["host"]["id"].as_str().unwrap();
            self.db
                .set_host_status(
                    id,
                    wrenn_cp::db::HostStatus::Online,
                    Some("127.0.0.1:50051"),
                )
                .await
                .unwrap();
        }
        r
    }

    async fn heartbeat(&self, host_id: &str, auth: &str) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            &format!("/v1/hosts/{host_id}/heartbeat"),
            Some(auth),
            None,
        )
        .await
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_owned()
}

db_test! {
    async fn host_register_heartbeat_refresh(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let ta = token(&a);
        let created = app.reg_token(&ta, json!({"name": "first"})).await;
        let reg = s(&created, "registration_token");
        assert_eq!(reg.len(), 64);
        let host_id = s(&created["host"], "id");
        assert_eq!(created["host"]["status"], "pending");
        assert_eq!(created["host"]["team_id"], a["team"]["id"]);

        let (st, r) = app.register(&reg).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        assert_eq!(r["host"]["id"], host_id.as_str());
        assert_eq!(r["host"]["status"], "online");
        assert_eq!(r["host"]["name"], "rack-1");
        assert_eq!(r["host"]["address"], TEAM_HOST_ADDRESS);
        assert_eq!(r["host"]["tls_fingerprint"], AGENT_FINGERPRINT);
        assert_eq!(r["host"]["specs"]["cpu_count"], 2);
        let jwt = s(&r, "host_jwt");
        let refresh1 = s(&r, "refresh_token");

        // Heartbeat with the host JWT.
        let (st, v) = app.heartbeat(&host_id, &jwt).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        let h = db.host_by_id(&host_id).await.unwrap();
        assert!(h.last_heartbeat_at.is_some());
        assert_eq!((h.capacity.clone(), h.capacity_at), (json!({}), None));

        // A beat carrying its capacity: stored with the time heard, shown on the host.
        let cap = json!({"vcpus": 4, "vcpus_allocated": 2, "memory_mib": 8192, "memory_available_mib": 6000,
                         "memory_allocated_mib": 1024, "disk_free_mib": 50_000, "sandboxes": 2, "future_field": 1});
        let url = format!("/v1/hosts/{host_id}/heartbeat");
        let (st, v) = app.send(Method::POST, &url, Some(&jwt), Some(json!({"capacity": cap}))).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        let (_, shown) = app.get(&format!("/v1/hosts/{host_id}"), Some(&ta)).await;
        assert_eq!(shown["capacity"]["vcpus_allocated"], 2, "{shown}");
        assert_eq!(shown["capacity"]["disk_free_mib"], 50_000, "{shown}");
        assert!(shown["capacity_at"].as_i64().unwrap() >= h.last_heartbeat_at.unwrap());
        // A plain beat keeps the last report; a malformed one is refused and changes nothing.
        assert_eq!(app.heartbeat(&host_id, &jwt).await.0, StatusCode::NO_CONTENT);
        let kept = db.host_by_id(&host_id).await.unwrap();
        assert_eq!(kept.capacity["memory_mib"], 8192);
        for bad in [json!({"capacity": {"vcpus": -1}}), json!({"capacity": "lots"}), json!([1])] {
            let (st, v) = app.send(Method::POST, &url, Some(&jwt), Some(bad.clone())).await;
            assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
        }
        let after = db.host_by_id(&host_id).await.unwrap();
        assert_eq!((after.capacity, after.capacity_at), (kept.capacity, kept.capacity_at));

        // The token is one-time.
        let before = app.host_counts().await;
        let (st, v) = app.register(&reg).await;
        assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{v}");
        let (st, _) = app.register(UNKNOWN_TOKEN).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        let (st, _) = app.register("not-hex").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert_eq!(app.host_counts().await, before);

        // Refresh rotation. The old token survives a lost response: presented again within
        // its grace it gets another token, and the one issued before is superseded.
        let body = |t: &str| json!({"host_id": host_id, "refresh_token": t});
        let (st, r2) = app.post("/v1/hosts/auth/refresh", None, body(&refresh1)).await;
        assert_eq!(st, StatusCode::OK, "{r2}");
        let refresh2 = s(&r2, "refresh_token");
        assert_ne!(refresh1, refresh2);
        let (st, _) = app.heartbeat(&host_id, &s(&r2, "host_jwt")).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, r3) = app.post("/v1/hosts/auth/refresh", None, body(&refresh1)).await;
        assert_eq!(st, StatusCode::OK, "retry within the grace: {r3}");
        let refresh3 = s(&r3, "refresh_token");
        // Presented for another host: refused and not rotated.
        let other = app.reg_token(&ta, json!({})).await;
        let other_id = s(&other["host"], "id");
        let (st, _) = app
            .post("/v1/hosts/auth/refresh", None, json!({"host_id": other_id, "refresh_token": refresh3}))
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        // The replacement's first use ends the old token's grace.
        let (st, r4) = app.post("/v1/hosts/auth/refresh", None, body(&refresh3)).await;
        assert_eq!(st, StatusCode::OK, "{r4}");
        let refresh4 = s(&r4, "refresh_token");
        assert_eq!(app.heartbeat(&host_id, &s(&r4, "host_jwt")).await.0, StatusCode::NO_CONTENT);
        // A token presented after it was revoked (here the superseded refresh2) is a replay:
        // every refresh token of the host goes, refresh4 included; the host JWT still works
        // until it expires (the agent must register again then).
        let (st, v) = app.post("/v1/hosts/auth/refresh", None, body(&refresh2)).await;
        assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
        for t in [&refresh1, &refresh3, &refresh4] {
            let (st, _) = app.post("/v1/hosts/auth/refresh", None, body(t)).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED);
        }

        // Another host's path: 403.
        let (st, v) = app.heartbeat(&other_id, &jwt).await;
        assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));

        // Token kinds do not cross.
        let (st, _) = app.heartbeat(&host_id, &ta).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "user JWT on a host route");
        for path in ["/v1/me", "/v1/hosts", "/v1/api-keys"] {
            let (st, _) = app.get(path, Some(&jwt)).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "host JWT on {path}");
        }
        let (st, _) = app.post("/v1/hosts/registration-tokens", Some(&jwt), json!({})).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
}

db_test! {
    async fn host_expired_registration_token(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let created = app.reg_token(&token(&a), json!({})).await;
        let host_id = s(&created["host"], "id");
        let plaintext = "ab".repeat(32);
        db.create_registration_token(NewRegistrationToken {
            token_hash: &sha256_hex(&plaintext),
            team_id: None,
            host_id: Some(&host_id),
            created_by: None,
            expires_at: now_ms() - 1000,
        })
        .await
        .unwrap();
        let before = app.host_counts().await;
        let (st, v) = app.register(&plaintext).await;
        assert_eq!((st, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{v}");
        assert_eq!(app.host_counts().await, before);
        assert_eq!(db.host_by_id(&host_id).await.unwrap().status.as_str(), "pending");
    }
}

db_test! {
    async fn host_token_permissions_and_visibility(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await; // platform admin, owns team A
        let b = app.signup("bob@example.com", "Bob").await; // owns team B
        let c = app.signup("cy@example.com", "Cy").await;
        let (ta, tb) = (token(&a), token(&b));
        let team_a = s(&a["team"], "id");

        // Cy, a member of team A, may not create a token for it.
        let (st, v) = app
            .post(&format!("/v1/teams/{team_a}/members"), Some(&ta), json!({"email": "cy@example.com"}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let (st, sw) = app.post("/v1/auth/switch-team", Some(&token(&c)), json!({"team_id": team_a})).await;
        assert_eq!(st, StatusCode::OK, "{sw}");
        let tc = token(&sw);
        let before = app.host_counts().await;
        // Bob owns team B, but B does not bring its own hosts (yet).
        let (st, v) = app.post("/v1/hosts/registration-tokens", Some(&tb), json!({})).await;
        assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("BYOC"), "{v}");
        app.make_byoc(&ta).await;
        let (st, v) = app.post("/v1/hosts/registration-tokens", Some(&tc), json!({})).await;
        assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
        // Only a platform admin makes platform tokens.
        let (st, _) = app.post("/v1/hosts/registration-tokens", Some(&tb), json!({"platform": true})).await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        assert_eq!(app.host_counts().await, before);

        let platform = app.reg_token(&ta, json!({"platform": true, "name": "p1"})).await;
        assert!(platform["host"]["team_id"].is_null());
        let ha = app.reg_token(&ta, json!({"name": "a1"})).await;
        let ha_id = s(&ha["host"], "id");
        let hb = app.reg_token(&tb, json!({"name": "b1"})).await;
        let hb_id = s(&hb["host"], "id");
        let (st, _) = app.register(&s(&hb, "registration_token")).await;
        assert_eq!(st, StatusCode::CREATED);

        // Team B sees its host only; A's is a 404, by user token and by API key.
        let (_, kb) = app.key(&tb).await;
        for cred in [&tb, &kb] {
            let (st, list) = app.get("/v1/hosts", Some(cred)).await;
            assert_eq!(st, StatusCode::OK, "{list}");
            let ids: Vec<&str> = list.as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
            assert_eq!(ids, [hb_id.as_str()]);
            let (st, v) = app.get(&format!("/v1/hosts/{ha_id}"), Some(cred)).await;
            assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
            let (st, v) = app.get(&format!("/v1/hosts/{hb_id}"), Some(cred)).await;
            assert_eq!((st, v["id"].as_str()), (StatusCode::OK, Some(hb_id.as_str())));
        }
        // The platform admin sees every host.
        let (_, all) = app.get("/v1/hosts", Some(&ta)).await;
        assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
        assert_eq!(app.get(&format!("/v1/hosts/{hb_id}"), Some(&ta)).await.0, StatusCode::OK);
        // A member sees the team's hosts.
        let (_, list) = app.get("/v1/hosts", Some(&tc)).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        let (st, v) = app.get("/v1/hosts/not-a-host-id", Some(&tb)).await;
        assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
    }
}

db_test! {
    async fn host_malformed_bodies(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let ta = token(&a);
        let created = app.reg_token(&ta, json!({})).await;
        let reg = s(&created, "registration_token");
        let host_id = s(&created["host"], "id");
        let before = app.host_counts().await;
        let bad_tokens: Vec<Value> = vec![
            json!({"name": ""}),
            json!({"name": 5}),
            json!({"platform": "yes"}),
            json!({"team": "x"}),
            json!([]),
        ];
        for b in bad_tokens {
            let (st, v) = app.post("/v1/hosts/registration-tokens", Some(&ta), b.clone()).await;
            assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{b}: {v}");
        }
        let bad_registers: Vec<Value> = vec![
            json!({}),
            json!({"token": reg}),
            json!({"token": reg, "address": ""}),
            json!({"token": reg, "address": "nowhere"}),
            json!({"token": reg, "address": "ftp://x:1"}),
            json!({"token": reg, "address": "127.0.0.1:1", "specs": {"cpu_count": -1}}),
            json!({"token": reg, "address": "127.0.0.1:1", "specs": {"gpus": 1}}),
            json!({"token": reg, "address": "127.0.0.1:1", "name": ""}),
            json!({"token": reg, "address": "127.0.0.1:1", "extra": true}),
            json!({"token": 1, "address": "127.0.0.1:1"}),
            // A team's host: an IP address, never loopback, link-local (metadata) or a name.
            json!({"token": reg, "address": "127.0.0.1:50051"}),
            json!({"token": reg, "address": "http://169.254.169.254:80"}),
            json!({"token": reg, "address": "[::1]:50051"}),
            json!({"token": reg, "address": "https://agent.example:443", "tls_fingerprint": AGENT_FINGERPRINT}),
            // Off loopback only TLS, to the certificate named.
            json!({"token": reg, "address": "10.0.0.2:50051"}),
            json!({"token": reg, "address": "http://10.0.0.2:50051"}),
            json!({"token": reg, "address": "https://10.0.0.2:50051"}),
            json!({"token": reg, "address": "https://10.0.0.2:50051", "tls_fingerprint": "sha256:zz"}),
            json!({"token": reg, "address": "127.0.0.1:1", "tls_fingerprint": AGENT_FINGERPRINT}),
        ];
        for b in bad_registers {
            let (st, v) = app.post("/v1/hosts/register", None, b.clone()).await;
            assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{b}: {v}");
        }
        for b in [json!({}), json!({"host_id": "nope", "refresh_token": UNKNOWN_TOKEN}), json!({"host_id": host_id})] {
            let (st, v) = app.post("/v1/hosts/auth/refresh", None, b.clone()).await;
            assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{b}: {v}");
        }
        assert_eq!(app.host_counts().await, before);
        // None of that burnt the token.
        let (st, v) = app.register(&reg).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
}

db_test! {
    async fn host_concurrent_registration_one_wins(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let created = app.reg_token(&token(&a), json!({})).await;
        let reg = s(&created, "registration_token");
        let (r1, r2, r3, r4) = tokio::join!(
            app.register(&reg),
            app.register(&reg),
            app.register(&reg),
            app.register(&reg)
        );
        let results = [r1, r2, r3, r4];
        let wins = results.iter().filter(|(st, _)| *st == StatusCode::CREATED).count();
        assert_eq!(wins, 1, "{results:?}");
        assert!(results.iter().all(|(st, _)| matches!(*st, StatusCode::CREATED | StatusCode::UNAUTHORIZED)));
        assert_eq!(app.host_counts().await[2], 1, "one refresh token issued");
    }
}

db_test! {
    async fn host_revoke_withdraws_every_credential(db) {
        use wrenn_cp::db::SandboxStatus::*;
        use wrenn_cp::db::testing::new_sandbox;

        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await; // platform admin
        let b = app.signup("bob@example.com", "Bob").await; // owns team B
        let (ta, tb) = (token(&a), token(&b));
        let created = app.reg_token(&tb, json!({"name": "byoc"})).await;
        let host_id = s(&created["host"], "id");
        let (st, r) = app.register(&s(&created, "registration_token")).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        // The agent learns whom to trust and its generation at registration.
        assert!(s(&r, "cp_public_key").starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(r["credential_gen"], 1);
        let jwt = s(&r, "host_jwt");
        let refresh = s(&r, "refresh_token");
        assert_eq!(app.heartbeat(&host_id, &jwt).await.0, StatusCode::NO_CONTENT);

        let revoke = format!("/v1/hosts/{host_id}/revoke");
        // Bad ID → 400; a user of another team → 404 (platform admin aside); no token → 401.
        let before = app.host_counts().await;
        let (st, v) = app.post("/v1/hosts/NOT-AN-ID/revoke", Some(&tb), json!({})).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        let c = app.signup("cy@example.com", "Cy").await;
        let (st, _) = app.post(&revoke, Some(&token(&c)), json!({})).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(app.post(&revoke, None, json!({})).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(app.host_counts().await, before);
        assert_eq!(app.heartbeat(&host_id, &jwt).await.0, StatusCode::NO_CONTENT);
        // Sandboxes on it: running, paused, stopped.
        let team_b = s(&b["team"], "id");
        let mut rows = Vec::new();
        for path in [&[Running][..], &[Running, Paused], &[Running, Stopped]] {
            let sb = db.insert_pending_sandbox(new_sandbox(&team_b, Some(&host_id))).await.unwrap();
            for to in path {
                db.transition_sandbox(&sb.id, *to, None).await.unwrap();
            }
            rows.push(sb.id);
        }

        let (st, h) = app.post(&revoke, Some(&tb), json!({})).await;
        assert_eq!(st, StatusCode::OK, "{h}");
        assert_eq!(h["credential_gen"], 2);
        assert_eq!(h["status"], "pending");
        // Nothing answers for its sandboxes now: missing (the stopped one stays stopped), and
        // a forced delete later stops them.
        let mut got = Vec::new();
        for id in &rows {
            got.push(db.get_sandbox(&team_b, id).await.unwrap().status);
        }
        assert_eq!(got, [Missing, Missing, Stopped]);
        // The host JWT and the refresh token are dead.
        let (st, v) = app.heartbeat(&host_id, &jwt).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        let (st, v) = app
            .post("/v1/hosts/auth/refresh", None, json!({"host_id": host_id, "refresh_token": refresh}))
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        // A platform admin may revoke any host.
        let (st, h) = app.post(&revoke, Some(&ta), json!({})).await;
        assert_eq!(st, StatusCode::OK, "{h}");
        assert_eq!(h["credential_gen"], 3);
        let (st, v) = app.send(Method::DELETE, &format!("/v1/hosts/{host_id}?force=true"), Some(&tb), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        for id in &rows {
            assert_eq!(db.get_sandbox(&team_b, id).await.unwrap().status, Stopped);
        }
    }
}

db_test! {
    async fn silent_host_becomes_unreachable_and_its_sandboxes_missing(db) {
        use wrenn_cp::db::SandboxStatus::*;
        use wrenn_cp::db::testing::new_sandbox;
        use wrenn_cp::hostmonitor::{STALE_AFTER, check_hosts};

        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let ta = token(&a);
        let team = s(&a["team"], "id");
        let created = app.reg_token(&ta, json!({"name": "h"})).await;
        let host_id = s(&created["host"], "id");
        let (st, r) = app.register(&s(&created, "registration_token")).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let jwt = s(&r, "host_jwt");
        let mut rows = Vec::new();
        for path in [&[Running][..], &[Running, Paused], &[Running, Stopped], &[]] {
            let sb = db.insert_pending_sandbox(new_sandbox(&team, Some(&host_id))).await.unwrap();
            for to in path {
                db.transition_sandbox(&sb.id, *to, None).await.unwrap();
            }
            rows.push(sb.id);
        }
        let status = |id: String| {
            let db = db.clone();
            let team = team.clone();
            async move { db.get_sandbox(&team, &id).await.unwrap().status }
        };

        // Just registered (seen now): nothing to do.
        assert_eq!(check_hosts(&app.state, STALE_AFTER).await, 0);
        assert_eq!(db.host_by_id(&host_id).await.unwrap().status.as_str(), "online");

        // Silent for longer than the limit.
        sqlx::query("UPDATE hosts SET last_heartbeat_at = $1 WHERE id = $2")
            .bind(now_ms() - STALE_AFTER.as_millis() as i64 - 1_000)
            .bind(&host_id)
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(check_hosts(&app.state, STALE_AFTER).await, 1);
        assert_eq!(db.host_by_id(&host_id).await.unwrap().status.as_str(), "unreachable");
        let after: Vec<_> = futures::future::join_all(rows.iter().cloned().map(status)).await;
        assert_eq!(after, [Missing, Missing, Stopped, Pending], "running and paused → missing; the rest unchanged");
        let (st, v) = app.send(Method::GET, &format!("/v1/sandboxes/{}", rows[0]), Some(&ta), None).await;
        assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("missing")), "{v}");
        let audit: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'host.marked_down' AND target_id = $1")
            .bind(&host_id)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(audit, 1);
        // A second pass (or another replica) finds nothing more to mark.
        assert_eq!(check_hosts(&app.state, STALE_AFTER).await, 0);

        // The agent beats again: online; its sandboxes wait for the reconciler's check.
        let (st, v) = app.heartbeat(&host_id, &jwt).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        assert_eq!(db.host_by_id(&host_id).await.unwrap().status.as_str(), "online");
        assert_eq!(status(rows[0].clone()).await, Missing);
        // Coming back is audited once, not at every later beat.
        assert_eq!(app.heartbeat(&host_id, &jwt).await.0, StatusCode::NO_CONTENT);
        let up: Vec<(String, Option<String>)> = sqlx::query_as("SELECT actor_type, team_id FROM audit_log WHERE action = 'host.marked_up' AND target_id = $1")
            .bind(&host_id)
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(up, [("system".to_owned(), Some(team.clone()))]);
    }
}

db_test! {
    async fn host_delete_is_refused_while_sandboxes_live_and_forced_stops_them(db) {
        use wrenn_cp::db::SandboxStatus::*;
        use wrenn_cp::db::testing::new_sandbox;

        let app = App::new(db.clone());
        let _admin = app.signup("ada@example.com", "Ada").await; // platform admin
        let b = app.signup("bob@example.com", "Bob").await; // owns team B
        let tb = token(&b);
        let team = s(&b["team"], "id");
        let created = app.reg_token(&tb, json!({"name": "byoc"})).await;
        let host_id = s(&created["host"], "id");
        let (st, r) = app.register(&s(&created, "registration_token")).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
        let (jwt, refresh) = (s(&r, "host_jwt"), s(&r, "refresh_token"));
        let mut ids = Vec::new();
        for path in [&[Running][..], &[Running, Paused], &[Running, Stopped]] {
            let sb = db.insert_pending_sandbox(new_sandbox(&team, Some(&host_id))).await.unwrap();
            for to in path {
                db.transition_sandbox(&sb.id, *to, None).await.unwrap();
            }
            ids.push(sb.id);
        }
        let live = json!([ids[0], ids[1]]);
        let path = format!("/v1/hosts/{host_id}");
        let preview = format!("{path}/delete-preview");

        // Nobody else may look or delete: no token, another team's user, a malformed query.
        let c = app.signup("cy@example.com", "Cy").await;
        let before = app.host_counts().await;
        for auth in [None, Some(token(&c))] {
            let (st, _) = app.send(Method::DELETE, &path, auth.as_deref(), None).await;
            assert!(matches!(st, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND), "{st}");
            let (st, _) = app.send(Method::GET, &preview, auth.as_deref(), None).await;
            assert!(matches!(st, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND), "{st}");
        }
        let (st, v) = app.send(Method::DELETE, &format!("{path}?force=maybe"), Some(&tb), None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

        // The preview and a plain delete name the live sandboxes; nothing changes.
        let (st, v) = app.send(Method::GET, &preview, Some(&tb), None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!((v["host"]["id"].as_str(), &v["sandbox_ids"]), (Some(host_id.as_str()), &live));
        let (st, v) = app.send(Method::DELETE, &path, Some(&tb), None).await;
        assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        assert_eq!(v["error"]["sandbox_ids"], live);
        assert_eq!(app.host_counts().await, before);
        assert_eq!(app.heartbeat(&host_id, &jwt).await.0, StatusCode::NO_CONTENT);

        // Forced: the sandboxes stop (the agent at the host's address does not answer: the
        // delete goes on), the host and its credentials are gone, its agent gets 404.
        let (st, v) = app.send(Method::DELETE, &format!("{path}?force=true"), Some(&tb), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
        for id in &ids {
            assert_eq!(db.get_sandbox(&team, id).await.unwrap().status, Stopped);
        }
        assert_eq!(app.send(Method::GET, &path, Some(&tb), None).await.0, StatusCode::NOT_FOUND);
        assert_eq!(app.heartbeat(&host_id, &jwt).await.0, StatusCode::NOT_FOUND);
        let (st, v) = app
            .post("/v1/hosts/auth/refresh", None, json!({"host_id": host_id, "refresh_token": refresh}))
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        let audit: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'host.delete' AND target_id = $1")
            .bind(&host_id)
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(audit, 1);
        assert_eq!(app.send(Method::DELETE, &path, Some(&tb), None).await.0, StatusCode::NOT_FOUND);

        // A host with nothing on it goes without force.
        let created = app.reg_token(&tb, json!({"name": "empty"})).await;
        let empty = s(&created["host"], "id");
        let (st, v) = app.send(Method::DELETE, &format!("/v1/hosts/{empty}"), Some(&tb), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    }
}

db_test! {
    async fn round_robin_placement_ignores_load_least_loaded_follows_it(db) {
        use wrenn_cp::db::SandboxStatus::Running;
        use wrenn_cp::db::testing::new_sandbox;
        use wrenn_cp::scheduler::Placement;

        wrenn_cp::api::sandboxes::ensure_platform_templates(&db).await.unwrap();
        let mut app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let ta = token(&a);
        let team = s(&a["team"], "id");
        // Two online platform hosts (nothing answers at their address: creates fail there,
        // after the scheduler chose); the first is busy.
        let mut hosts = Vec::new();
        for name in ["h1", "h2"] {
            let t = app.reg_token(&ta, json!({"platform": true, "name": name})).await;
            let (st, _) = app.register(&s(&t, "registration_token")).await;
            assert_eq!(st, StatusCode::CREATED);
            hosts.push(s(&t["host"], "id"));
        }
        hosts.sort();
        for _ in 0..3 {
            let sb = db.insert_pending_sandbox(new_sandbox(&team, Some(&hosts[0]))).await.unwrap();
            db.transition_sandbox(&sb.id, Running, None).await.unwrap();
        }
        let (_, key) = app.key(&ta).await;
        async fn placed(app: &App, key: &str, team: &str) -> Vec<String> {
            use wrenn_cp::db::{PageRequest, SandboxFilter, SandboxStatus};
            let mut out = Vec::new();
            for _ in 0..4 {
                let (st, v) = app.post("/v1/sandboxes", Some(key), json!({})).await;
                assert_eq!(st, StatusCode::BAD_GATEWAY, "{v}");
                // The failed create's row (status error) names the host it was placed on.
                let filter = SandboxFilter { statuses: vec![SandboxStatus::Error], ..Default::default() };
                let rows = app.db.list_sandboxes(team, &filter, &PageRequest::first(100).unwrap()).await.unwrap().items;
                assert_eq!(rows.len(), 1, "{rows:?}");
                out.push(rows[0].host_id.clone().unwrap());
                app.db.transition_sandbox(&rows[0].id, SandboxStatus::Stopped, None).await.unwrap();
            }
            out
        }
        // Least loaded (the default): always the idle host.
        let got = placed(&app, &key, &team).await;
        assert_eq!(got, vec![hosts[1].clone(); 4]);
        // Round-robin: both, in turn, whatever the load.
        let options = wrenn_cp::server::StateOptions { placement: Placement::RoundRobin, ..Default::default() };
        let state = wrenn_cp::server::AppState::with_options(
            db.clone(), SECRET, wrenn_rpcauth::CpSigner::generate().unwrap(), options,
        ).unwrap();
        app.router = wrenn_cp::server::router(state.clone());
        app.state = state;
        let got = placed(&app, &key, &team).await;
        assert_eq!(got, [hosts[0].clone(), hosts[1].clone(), hosts[0].clone(), hosts[1].clone()]);
    }
}

db_test! {
    async fn a_team_has_at_most_max_hosts(db) {
        use wrenn_cp::api::hosts::MAX_HOSTS_PER_TEAM;
        let app = App::new(db.clone());
        let _admin = app.signup("ada@example.com", "Ada").await;
        let b = app.signup("bob@example.com", "Bob").await;
        let tb = token(&b);
        app.make_byoc(&tb).await;
        for n in 0..MAX_HOSTS_PER_TEAM {
            let (st, v) = app.post("/v1/hosts/registration-tokens", Some(&tb), json!({"name": format!("h{n}")})).await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
        }
        let before = app.host_counts().await;
        let (st, v) = app.post("/v1/hosts/registration-tokens", Some(&tb), json!({"name": "one-more"})).await;
        assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        assert_eq!(app.host_counts().await, before);
    }
}
