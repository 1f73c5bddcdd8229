use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::json;
use wrenn_cp::db_test;

use super::{App, code, token};

db_test! {
    async fn api_key_create_use_revoke(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await;
        let t = token(&a);
        let (s, created) = app.post("/v1/api-keys", Some(&t), json!({})).await;
        assert_eq!(s, StatusCode::CREATED, "{created}");
        let key = created["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("wrn_") && key.len() == 36, "{key}");
        assert!(key[4..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(created["name"], "Unnamed API Key");
        assert!(key.starts_with(created["prefix"].as_str().unwrap()));
        let id = created["id"].as_str().unwrap().to_owned();

        // The key authenticates the team-scoped list; the plaintext is never shown again.
        let (s, list) = app.get("/v1/api-keys", Some(&key)).await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["prefix"], created["prefix"]);
        assert!(items[0].get("key").is_none() && items[0].get("key_hash").is_none());
        assert!(items[0]["last_used_at"].is_i64(), "use recorded: {list}");
        let (s, _) = app.get(&format!("/v1/api-keys/{id}"), Some(&key)).await;
        assert_eq!(s, StatusCode::OK);

        // Keys do not manage keys.
        let (s, _) = app.post("/v1/api-keys", Some(&key), json!({})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // A second server process on the same database that has the key cached.
        let other = App::new(db.clone());
        assert_eq!(other.get("/v1/api-keys", Some(&key)).await.0, StatusCode::OK);

        let (s, _) = app.send(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&t), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let revoked = Instant::now();
        // This process: at once.
        let (s, v) = app.get("/v1/api-keys", Some(&key)).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
        // The other: within the 5 s cache TTL.
        loop {
            let (s, _) = other.get("/v1/api-keys", Some(&key)).await;
            if s == StatusCode::UNAUTHORIZED {
                break;
            }
            assert_eq!(s, StatusCode::OK);
            assert!(revoked.elapsed() < Duration::from_millis(5500), "revoked key still works");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (s, _) = app.send(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&t), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "already revoked");
        let (s, list) = app.get("/v1/api-keys", Some(&t)).await;
        assert_eq!((s, list["items"].as_array().unwrap().len()), (StatusCode::OK, 0));
    }
}
