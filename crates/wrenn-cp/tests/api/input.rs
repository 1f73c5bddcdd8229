use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use wrenn_cp::db_test;

use super::{App, PASSWORD, code, token};

db_test! {
    async fn bad_input_is_refused_and_changes_nothing(db) {
        let app = App::new(db);
        let a = app.signup("ada@example.com", "Ada").await;
        let t = token(&a);
        let team = a["team"]["id"].as_str().unwrap().to_owned();
        let ada = a["user"]["id"].as_str().unwrap().to_owned();
        let before = app.counts().await;

        let raw = |method: Method, path: &str, ctype: Option<&str>, body: Vec<u8>| {
            let mut r = Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {t}"));
            if let Some(c) = ctype {
                r = r.header("content-type", c);
            }
            r.body(Body::from(body)).unwrap()
        };
        let json_ct = Some("application/json");
        let big = format!(r#"{{"email":"x@example.com","password":"{}","name":"x"}}"#, "p".repeat(70_000));
        let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
            (raw(Method::POST, "/v1/auth/signup", json_ct, b"{\"email\":".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::POST, "/v1/auth/signup", json_ct, b"[]".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::POST, "/v1/auth/signup", Some("text/plain"),
                json!({"email":"x@example.com","password":PASSWORD,"name":"x"}).to_string().into_bytes()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            (raw(Method::POST, "/v1/auth/signup", None, b"{}".to_vec()), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            (raw(Method::POST, "/v1/auth/signup", json_ct, big.into_bytes()), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            (raw(Method::POST, "/v1/teams", json_ct, b"{}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::POST, "/v1/teams", json_ct, b"{\"name\":\"ok\",\"extra\":1}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::POST, "/v1/api-keys", json_ct, b"{\"name\":7}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::POST, "/v1/api-keys", json_ct, b"{\"name\":\"  \"}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::DELETE, "/v1/api-keys/key-1", None, vec![]), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::GET, "/v1/api-keys/../etc", None, vec![]), StatusCode::NOT_FOUND, "not_found"),
            (raw(Method::GET, "/v1/teams/nope/members", None, vec![]), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::POST, &format!("/v1/teams/{team}/members"), json_ct, b"{\"email\":\"not-an-email\"}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::POST, &format!("/v1/teams/{team}/members"), json_ct, b"{\"email\":\"ada@example.com\",\"role\":\"owner\"}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::PATCH, &format!("/v1/teams/{team}/members/usr-x"), json_ct, b"{\"role\":\"admin\"}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::PATCH, &format!("/v1/teams/{team}/members/{ada}"), json_ct, b"{\"role\":\"god\"}".to_vec()), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::GET, "/v1/api-keys?limit=0", None, vec![]), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::GET, "/v1/api-keys?limit=1001", None, vec![]), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::GET, "/v1/api-keys?cursor=%%%", None, vec![]), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::GET, "/v1/api-keys?bogus=1", None, vec![]), StatusCode::BAD_REQUEST, "invalid_request"),
            (raw(Method::PUT, "/v1/api-keys", json_ct, b"{}".to_vec()), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ];
        for (i, (req, status, want)) in cases.into_iter().enumerate() {
            let (s, v) = app.raw(req).await;
            assert_eq!((s, code(&v)), (status, want), "case {i}: {v}");
        }
        let signups = [
            json!({"email": "x@example.com", "password": "short", "name": "X"}),
            json!({"email": "x@example.com", "password": PASSWORD, "name": ""}),
            json!({"email": "x@example.com", "password": PASSWORD, "name": "x".repeat(101)}),
            json!({"email": "x@example.com", "password": PASSWORD, "name": "a\u{0}b"}),
            json!({"email": "x", "password": PASSWORD, "name": "X"}),
            json!({"email": "x@example.com", "password": PASSWORD}),
            json!({"email": "x@example.com", "password": PASSWORD, "name": "X", "is_admin": true}),
            json!({"email": "x@example.com", "password": "p".repeat(2000), "name": "X"}),
        ];
        for (i, body) in signups.into_iter().enumerate() {
            let (s, v) = app.post("/v1/auth/signup", None, body).await;
            assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_request"), "signup {i}: {v}");
        }
        assert_eq!(app.counts().await, before, "a refused request changed rows");
    }
}
