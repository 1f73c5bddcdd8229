use axum::http::{Method, StatusCode};
use serde_json::json;
use wrenn_cp::db_test;

use super::{App, PASSWORD, code, token};

db_test! {
    async fn health_is_public(db) {
        let app = App::new(db);
        let (s, v) = app.get("/health", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["status"], "ok");
        let (s, v) = app.get("/nope", None).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    }
}

db_test! {
    async fn signup_login_me_and_first_user_is_admin(db) {
        let app = App::new(db);
        let a = app.signup("Ada@Example.com", "Ada").await;
        assert_eq!(a["user"]["email"], "ada@example.com");
        assert_eq!(a["user"]["is_admin"], true, "first user is platform admin");
        assert_eq!(a["role"], "owner");
        assert!(a["user"].get("password_hash").is_none(), "{a}");
        let b = app.signup("bob@example.com", "Bob").await;
        assert_eq!(b["user"]["is_admin"], false, "second user is not");
        assert_ne!(a["team"]["id"], b["team"]["id"], "each gets a personal team");

        let (s, me) = app.get("/v1/me", Some(&token(&a))).await;
        assert_eq!(s, StatusCode::OK, "{me}");
        assert_eq!(me["user"]["id"], a["user"]["id"]);
        assert_eq!(me["team_id"], a["team"]["id"]);
        assert_eq!(me["teams"].as_array().unwrap().len(), 1);

        let (s, l) = app
            .post("/v1/auth/login", None, json!({"email": "ADA@example.com", "password": PASSWORD}))
            .await;
        assert_eq!(s, StatusCode::OK, "{l}");
        assert_eq!(l["team"]["id"], a["team"]["id"]);
        let (s, me) = app.get("/v1/me", Some(&token(&l))).await;
        assert_eq!((s, &me["user"]["email"]), (StatusCode::OK, &json!("ada@example.com")));

        // Wrong password and unknown email: the same 401, word for word.
        let (s1, wrong) = app
            .post("/v1/auth/login", None, json!({"email": "ada@example.com", "password": "nope-nope-nope"}))
            .await;
        let (s2, unknown) = app
            .post("/v1/auth/login", None, json!({"email": "who@example.com", "password": PASSWORD}))
            .await;
        assert_eq!(s1, StatusCode::UNAUTHORIZED);
        assert_eq!((s1, &wrong), (s2, &unknown));

        let (s, v) = app
            .post("/v1/auth/signup", None, json!({"email": "ada@EXAMPLE.com", "password": PASSWORD, "name": "A2"}))
            .await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "email_taken"));
        let (s, _) = app.get("/v1/me", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}

db_test! {
    async fn teams_and_switch_team(db) {
        let app = App::new(db);
        let a = app.signup("ada@example.com", "Ada").await;
        let b = app.signup("bob@example.com", "Bob").await;
        let t = token(&a);
        let (s, created) = app.post("/v1/teams", Some(&t), json!({"name": "Second"})).await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        assert_eq!(created["role"], "owner");
        let (_, list) = app.get("/v1/teams", Some(&t)).await;
        assert_eq!(list["teams"].as_array().unwrap().len(), 2);

        let (s, sw) = app
            .post("/v1/auth/switch-team", Some(&t), json!({"team_id": created["id"]}))
            .await;
        assert_eq!(s, StatusCode::OK, "{sw}");
        let (_, me) = app.get("/v1/me", Some(&token(&sw))).await;
        assert_eq!(me["team_id"], created["id"]);

        // Another team's ID is as good as a missing one.
        let (s, v) = app
            .post("/v1/auth/switch-team", Some(&t), json!({"team_id": b["team"]["id"]}))
            .await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
        let (s, v) = app
            .post("/v1/auth/switch-team", Some(&t), json!({"team_id": "team-123"}))
            .await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"));
        let (s, _) = app
            .send(Method::POST, "/v1/auth/switch-team", None, Some(json!({"team_id": created["id"]})))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}

db_test! {
    async fn logins_are_rate_limited_per_address_and_per_account(db) {
        use axum::body::Body;
        use axum::extract::ConnectInfo;
        use axum::http::Request;
        use wrenn_cp::server::PeerAddr;

        let app = App::new(db.clone());
        app.signup("ada@example.com", "Ada").await;
        let login = |ip: &str, email: &str| {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri("/v1/auth/login")
                .header("content-type", "application/json")
                .body(Body::from(json!({"email": email, "password": "wrong password"}).to_string()))
                .unwrap();
            req.extensions_mut().insert(ConnectInfo(PeerAddr(format!("{ip}:40000").parse().unwrap())));
            let router = app.router.clone();
            async move {
                use tower::ServiceExt;
                let resp = router.oneshot(req).await.unwrap();
                let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (resp.status(), retry)
            }
        };
        // One address: a burst of 20 attempts (each a 401), then 429 with Retry-After.
        for n in 0..20 {
            let (st, _) = login("203.0.113.9", &format!("u{n}@example.com")).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED);
        }
        let (st, retry) = login("203.0.113.9", "u99@example.com").await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
        assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
        // Another address is not held back by it.
        assert_eq!(login("203.0.113.10", "x@example.com").await.0, StatusCode::UNAUTHORIZED);
        // One account, from many addresses: 10 attempts, then 429, even with the right
        // password; other accounts still answer.
        for n in 0..10 {
            let (st, _) = login(&format!("198.51.100.{n}"), "ada@example.com").await;
            assert_eq!(st, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(login("198.51.100.200", "ada@example.com").await.0, StatusCode::TOO_MANY_REQUESTS);
        let (st, v) = app.post("/v1/auth/login", None, json!({"email": "ada@example.com", "password": PASSWORD})).await;
        assert_eq!((st, code(&v)), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{v}");
        assert_eq!(login("198.51.100.201", "bob@example.com").await.0, StatusCode::UNAUTHORIZED);
    }
}

db_test! {
    async fn signup_open_closed_and_by_invitation(db) {
        use wrenn_cp::db::SignupGate;
        use wrenn_cp::db::testing::count_rows;
        use wrenn_cp::server::{AppState, StateOptions};

        let with = |signup: SignupGate| {
            let mut app = App::new(db.clone());
            let state = AppState::with_options(
                db.clone(), crate::SECRET, wrenn_rpcauth::CpSigner::generate().unwrap(),
                StateOptions { signup, ..Default::default() },
            ).unwrap();
            app.router = wrenn_cp::server::router(state.clone());
            app.state = state;
            app
        };
        async fn signup(app: &App, email: &str) -> (StatusCode, serde_json::Value) {
            app.post("/v1/auth/signup", None, json!({"email": email, "password": PASSWORD, "name": "X"})).await
        }
        // Closed: the first account still gets in (it is the platform admin), no one after.
        let closed = with(SignupGate::Closed);
        let (st, a) = signup(&closed, "ada@example.com").await;
        assert_eq!(st, StatusCode::CREATED, "{a}");
        let users = count_rows(&db, "users").await;
        let (st, v) = signup(&closed, "bob@example.com").await;
        assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
        assert_eq!(count_rows(&db, "users").await, users);

        // Invite: only an invited email, which then joins the inviting team.
        let invite = with(SignupGate::Invite);
        let ta = token(&a);
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();
        let (st, v) = signup(&invite, "bob@example.com").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
        let inv_path = format!("/v1/teams/{team_a}/invitations");
        let (st, inv) = invite.post(&inv_path, Some(&ta), json!({"email": "Bob@Example.com", "role": "admin"})).await;
        assert_eq!(st, StatusCode::CREATED, "{inv}");
        assert_eq!((inv["email"].as_str(), inv["role"].as_str()), (Some("bob@example.com"), Some("admin")));
        // An email with an account is added as a member, not invited; bad bodies are 400.
        let (st, v) = invite.post(&inv_path, Some(&ta), json!({"email": "ada@example.com"})).await;
        assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
        for bad in [json!({"email": "nope"}), json!({"email": "c@example.com", "role": "owner"}), json!({})] {
            let (st, v) = invite.post(&inv_path, Some(&ta), bad.clone()).await;
            assert_eq!((st, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {v}");
        }
        let (st, list) = invite.get(&inv_path, Some(&ta)).await;
        assert_eq!((st, list.as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{list}");

        let (st, b) = signup(&invite, "bob@example.com").await;
        assert_eq!(st, StatusCode::CREATED, "{b}");
        // Bob's default team is his own; he is an admin of Ada's; the invitation is used.
        assert_ne!(b["team"]["id"], a["team"]["id"]);
        let (_, me) = invite.get("/v1/me", Some(&token(&b))).await;
        let roles: Vec<(String, String)> = me["teams"].as_array().unwrap().iter()
            .map(|m| (m["id"].as_str().unwrap().to_owned(), m["role"].as_str().unwrap().to_owned()))
            .collect();
        assert!(roles.contains(&(team_a.clone(), "admin".to_owned())), "{me}");
        assert_eq!(count_rows(&db, "invitations").await, 0);
        // Bob (now an admin of team A) cannot withdraw what is gone; Cy cannot sign up.
        let (st, _) = signup(&invite, "cy@example.com").await;
        assert_eq!(st, StatusCode::FORBIDDEN);
        let (_, inv) = invite.post(&inv_path, Some(&ta), json!({"email": "cy@example.com"})).await;
        let (st, _) = invite.send(Method::DELETE, &format!("{inv_path}/{}", inv["id"].as_str().unwrap()), Some(&ta), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
        let (st, _) = signup(&invite, "cy@example.com").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "a withdrawn invitation admits no one");
    }
}
