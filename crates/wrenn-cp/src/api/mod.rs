//! HTTP routes, one module per resource. Every handler validates all of its input before it
//! touches the database, so a refused request changes nothing; every error is the JSON
//! envelope of [`crate::error`].

mod admin;
mod api_keys;
mod auth;
mod document;
pub mod e2b;
mod health;
pub mod hosts;
pub mod sandboxes;
mod teams;
pub mod validate;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use serde::Deserialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::db::{DbError, PageRequest};
use crate::error::{ApiError, ErrorBody};
use crate::server::AppState;
use crate::telemetry;

/// Largest JSON body the account routes accept (they carry a few short strings).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Where the OpenAPI document and the Swagger UI are served.
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

pub(crate) type State = axum::extract::State<Arc<AppState>>;

/// Names of the security schemes that `#[utoipa::path(security(...))]` refers to.
pub const SECURITY_API_KEY: &str = "api_key";
pub const SECURITY_BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    modifiers(&SecurityAddon),
    // Path parameters name these by reference; utoipa collects only body schemas itself.
    components(schemas(
        ErrorBody,
        crate::ids::SandboxId,
        crate::ids::TeamId,
        crate::ids::UserId,
        crate::ids::ApiKeyId,
        crate::ids::HostId,
        crate::ids::InvitationId,
        sandboxes::MetadataFilter,
        sandboxes::guest::Selector,
    )),
    tags(
        (name = "health", description = "Liveness"),
        (name = "auth", description = "Accounts and user tokens"),
        (name = "teams", description = "Teams and their members"),
        (name = "api-keys", description = "API keys of the caller's team"),
        (name = "admin", description = "Platform administration"),
        (name = "hosts", description = "Host agents: registration, credentials, heartbeats"),
        (name = "sandboxes", description = "Sandboxes (microVMs) and templates"),
        (name = "snapshots", description = "Snapshot templates: sandboxes frozen, memory and disk, to start new ones from"),
    )
)]
struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.info.title = "Wrenn API".to_owned();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc.info.description = Some(
            "Errors are `{\"error\":{\"code\",\"message\"}}` (schema `ErrorBody`); \
             timestamps are Unix milliseconds unless a field says otherwise."
                .to_owned(),
        );
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A team's API key, `wrn_` + 32 hex (also accepted as `Authorization: Bearer`)",
            ))),
        );
        components.add_security_scheme(
            SECURITY_BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user JWT (signup/login) or, on the host routes, a host JWT",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented route: the router and the OpenAPI document come from these same
/// registrations, so neither can list a route the other lacks.
pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::routes())
        .merge(auth::routes())
        .merge(teams::routes())
        .merge(api_keys::routes())
        .merge(admin::routes())
        .merge(hosts::routes())
        .merge(sandboxes::routes())
}

/// The OpenAPI document served at [`OPENAPI_PATH`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    document::complete(routes().into_openapi())
}

/// The whole HTTP surface: the documented API, `/openapi.json`, the Swagger UI at `/docs`
/// (bundled in the binary, no network needed) and `/metrics`; every request is counted.
pub fn router() -> Router<Arc<AppState>> {
    let (api, doc) = routes().split_for_parts();
    let doc = document::complete(doc);
    // Validator "none": the default sends the document to validator.swagger.io.
    let docs = SwaggerUi::new(DOCS_PATH)
        .url(OPENAPI_PATH, doc)
        .config(Config::new([OPENAPI_PATH]).validator_url("none"));
    // Install the recorder before any request can be counted.
    telemetry::handle();
    api.merge(docs)
        .route("/metrics", get(telemetry::metrics_handler))
        .merge(e2b::routes())
        .fallback(crate::dashboard::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(telemetry::track))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        crate::error::ErrorCode::MethodNotAllowed,
        "method not allowed",
    )
}

/// `?limit=&cursor=` of list routes.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size: default 100, at most 1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page (empty: the first page).
    #[param(pattern = "^([0-9]{1,18}\\.[a-z0-9-]{1,64})?$")]
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn request(&self) -> Result<PageRequest, ApiError> {
        PageRequest::new(self.limit, self.cursor.as_deref()).map_err(db_err)
    }
}

/// Maps a database error; `NotFound` names `what` (never whether it exists elsewhere).
pub(crate) fn db_err_for(what: &str) -> impl Fn(DbError) -> ApiError + '_ {
    move |e| match e {
        DbError::NotFound => ApiError::not_found(what),
        e => db_err(e),
    }
}

/// An optional JSON body: empty (or only whitespace) or `null` is `T::default()` (the
/// document states these bodies as optional and nullable); integral floats are integers, as
/// [`crate::error::ApiJson`] reads them. Callers wrap the parse error in their own envelope.
pub(crate) fn optional_json<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut v: serde_json::Value = serde_json::from_slice(body)?;
    crate::error::integral_floats_to_integers(&mut v);
    serde_json::from_value::<Option<T>>(v).map(Option::unwrap_or_default)
}

pub(crate) fn db_err(e: DbError) -> ApiError {
    match e {
        DbError::NotFound => ApiError::not_found("object"),
        DbError::AlreadyExists(_) => ApiError::conflict("already exists"),
        DbError::LastOwner => ApiError::conflict("a team must keep at least one owner"),
        e @ (DbError::InvalidCursor | DbError::InvalidLimit(_)) => {
            ApiError::invalid_request(e.to_string())
        }
        e if e.is_unavailable() => crate::error::database_unavailable(e),
        e => ApiError::internal(e),
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    struct B {
        n: Option<i64>,
    }

    #[test]
    fn optional_json_bodies() {
        for none in ["", "  \n", "null", " null "] {
            assert_eq!(
                super::optional_json::<B>(none.as_bytes()).unwrap(),
                B::default()
            );
        }
        for some in [r#"{"n":3}"#, r#"{"n":3.0}"#] {
            assert_eq!(
                super::optional_json::<B>(some.as_bytes()).unwrap(),
                B { n: Some(3) }
            );
        }
        assert!(super::optional_json::<B>(br#"{"n":3.5}"#).is_err());
        assert!(super::optional_json::<B>(b"[]").is_err());
    }
}
