//! HTTP API tests: the router driven in-process with `tower::ServiceExt::oneshot`. Every test
//! runs on SQLite and PostgreSQL (`wrenn_cp::db_test!`; PostgreSQL needs `WRENN_TEST_PG_URL`).

mod access;
mod accounts;
mod admin;
mod docs;
mod e2b;
mod hosts;
mod input;
mod keys;
mod matrix;
mod sandboxes;
mod snapshots;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wrenn_cp::db::Db;
use wrenn_cp::server::{AppState, router};

pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
pub const PASSWORD: &str = "correct horse battery";

pub struct App {
    pub db: Db,
    pub state: Arc<AppState>,
    pub router: Router,
}

impl App {
    pub fn new(db: Db) -> Self {
        let state = AppState::new(
            db.clone(),
            SECRET,
            wrenn_rpcauth::CpSigner::generate().unwrap(),
        )
        .unwrap();
        App {
            db,
            router: router(state.clone()),
            state,
        }
    }

    /// Sends a request; `auth` is `Bearer <t>` for JWTs and `wrn_` keys alike.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = auth {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.raw(req.body(body).unwrap()).await
    }

    pub async fn raw(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status}: body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        if !status.is_success() {
            assert!(v["error"]["code"].is_string(), "{status}: no envelope: {v}");
            assert!(
                v["error"]["message"].is_string(),
                "{status}: no envelope: {v}"
            );
        }
        (status, v)
    }

    pub async fn get(&self, path: &str, auth: Option<&str>) -> (StatusCode, Value) {
        self.send(Method::GET, path, auth, None).await
    }

    pub async fn post(&self, path: &str, auth: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, auth, Some(body)).await
    }

    /// Signs up and returns the auth response.
    pub async fn signup(&self, email: &str, name: &str) -> Value {
        let (s, v) = self
            .post(
                "/v1/auth/signup",
                None,
                json!({"email": email, "password": PASSWORD, "name": name}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// Creates an API key in the token's team; returns (id, plaintext).
    pub async fn key(&self, token: &str) -> (String, String) {
        let (s, v) = self
            .post("/v1/api-keys", Some(token), json!({"name": "ci"}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Row counts of every table the account routes write.
    pub async fn counts(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for t in ["users", "teams", "memberships", "api_keys", "audit_log"] {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
                    .fetch_one(self.db.pool())
                    .await
                    .unwrap();
            out.push(n);
        }
        out
    }
}

pub fn token(v: &Value) -> String {
    v["token"].as_str().unwrap().to_owned()
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}
