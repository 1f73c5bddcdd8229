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
