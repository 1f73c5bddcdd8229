//! Control-plane authentication on the agent's side: only the control plane may call the
//! agent. Every request needs a token of [`wrenn_rpcauth`] whose audience is this host's ID
//! (and, once the host registered, whose credential generation is the host's); everything
//! else is refused with Connect `unauthenticated` (HTTP 401).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use wrenn_rpcauth::*;

/// State of [`require_cp_token`]: who verifies, and which host we are.
#[derive(Clone, Debug)]
pub struct AuthState {
    pub verifier: CpVerifier,
    pub host_id: Arc<str>,
    /// The credential generation of a registered host: tokens must carry exactly this one.
    /// `None` (a host configured with a key file) accepts any.
    pub generation: Option<u64>,
}

/// A Connect `unauthenticated` error as an HTTP 401 response (the Connect error JSON, which
/// Connect clients decode for unary and streaming calls alike).
pub fn unauthenticated_response(message: &str) -> Response {
    let err = connectrpc::ConnectError::unauthenticated(message);
    (
        http::StatusCode::UNAUTHORIZED,
        [(http::header::CONTENT_TYPE, "application/json")],
        err.to_json(),
    )
        .into_response()
}

/// axum middleware: every request needs a valid control-plane token. The verified
/// [`Claims`] are put into the request's extensions.
pub async fn require_cp_token(
    State(state): State<AuthState>,
    mut req: Request,
    next: Next,
) -> Response {
    match state.verifier.verify_header(req.headers(), &state.host_id) {
        Ok(claims) if state.generation.is_some() && claims.generation != state.generation => {
            tracing::warn!(token_generation = ?claims.generation, host_generation = ?state.generation, "refused control-plane call: revoked credential generation");
            unauthenticated_response("token of a revoked credential generation")
        }
        Ok(claims) => {
            req.extensions_mut().insert(claims);
            next.run(req).await
        }
        Err(e) => {
            tracing::warn!(error = %e, path = %req.uri().path(), "refused control-plane call");
            unauthenticated_response(&e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOST: &str = "host-a";

    fn pair() -> (CpSigner, CpVerifier) {
        let s = CpSigner::generate().unwrap();
        let v = CpVerifier::from_public_pem(s.public_key_pem()).unwrap();
        (s, v)
    }

    #[tokio::test]
    async fn middleware_refuses_with_connect_401() {
        use tower::ServiceExt;
        let (s, v) = pair();
        let app = axum::Router::new()
            .route(
                "/svc/M",
                axum::routing::post(|req: Request| async move {
                    // The handler sees the verified claims.
                    req.extensions()
                        .get::<Claims>()
                        .map(|c| c.aud.clone())
                        .unwrap_or_default()
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                AuthState {
                    verifier: v,
                    host_id: HOST.into(),
                    generation: Some(2),
                },
                require_cp_token,
            ));
        let call = |auth: Option<String>| {
            let mut b = http::Request::post("/svc/M");
            if let Some(a) = auth {
                b = b.header(http::header::AUTHORIZATION, a);
            }
            app.clone()
                .oneshot(b.body(axum::body::Body::empty()).unwrap())
        };
        let body = |r: Response| async move {
            axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap()
        };

        for auth in [
            None,
            Some("Bearer nope".to_string()),
            Some(format!(
                "Bearer {}",
                s.sign_generation("host-b", Duration::from_secs(60), Some(2))
            )),
            // Right host, but no generation or a revoked one.
            Some(format!("Bearer {}", s.sign(HOST, Duration::from_secs(60)))),
            Some(format!(
                "Bearer {}",
                s.sign_generation(HOST, Duration::from_secs(60), Some(1))
            )),
        ] {
            let r = call(auth).await.unwrap();
            assert_eq!(r.status(), 401);
            assert_eq!(r.headers()[http::header::CONTENT_TYPE], "application/json");
            let v: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
            assert_eq!(v["code"], "unauthenticated");
        }
        let ok = call(Some(format!(
            "Bearer {}",
            s.sign_generation(HOST, Duration::from_secs(60), Some(2))
        )))
        .await
        .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(&body(ok).await[..], HOST.as_bytes());
    }
}
