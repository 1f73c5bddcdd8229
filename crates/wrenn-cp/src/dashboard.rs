//! The dashboard: the SvelteKit single-page app built into `frontend/build` and embedded in the
//! binary by `build.rs`, served on the API's own port. The API keeps priority: only requests no
//! route matched reach [`fallback`], and of those only `GET`/`HEAD` of an embedded file or of a
//! page of the app (`/`, `/login`, `/signup`, `/dashboard/…`, `/admin/…`) get the dashboard;
//! everything else keeps the JSON 404 of the API.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};

use crate::error::not_found_fallback;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// Served as `index.html` when the frontend was not built before the binary.
const PLACEHOLDER: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Wrenn</title></head><body><main><h1>Dashboard not built</h1><p>This binary was \
compiled without the dashboard. Run <code>scripts/run</code>, which builds it \
(<code>frontend/</code>, npm) before the binary.</p></main></body></html>\n";

/// Page prefixes of the app; any other unknown path stays an API 404.
const PAGES: &[&str] = &["/login", "/signup", "/dashboard", "/admin"];

/// Whether the dashboard was embedded (false: the placeholder page).
pub fn built() -> bool {
    assets::BUILT
}

fn asset(path: &str) -> Option<&'static [u8]> {
    assets::ASSETS
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| assets::ASSETS[i].1)
}

fn is_page(path: &str) -> bool {
    path == "/"
        || PAGES.iter().any(|p| {
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// The policy for the app: its own scripts plus the hashed inline boot script, its own
/// origin for fetches and WebSockets. Inline styles stay allowed: Svelte's `style=`
/// attributes and xterm.js's renderer set them, and they cannot run code.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let mut script = String::from("'self'");
        for h in assets::SCRIPT_HASHES {
            script.push(' ');
            script.push_str(h);
        }
        format!(
            "default-src 'self'; script-src {script}; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
    })
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn respond(path: &str, body: &'static [u8], head: bool) -> Response {
    // Hashed names never change content; everything else is revalidated on each load.
    let cache = if path.starts_with("/_app/immutable/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut resp = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body))
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// The router's fallback: an embedded file, the app's page for one of its paths, or the
/// API's JSON 404.
pub async fn fallback(req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return not_found_fallback().await.into_response();
    }
    let path = req.uri().path();
    if let Some(body) = asset(path) {
        return respond(path, body, head);
    }
    if is_page(path) {
        let index = asset("/index.html").unwrap_or(PLACEHOLDER.as_bytes());
        return respond("/index.html", index, head);
    }
    // Including a missing hashed file (an old tab after an upgrade): never HTML in its place.
    not_found_fallback().await.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_api_paths() {
        for p in [
            "/",
            "/login",
            "/dashboard",
            "/dashboard/sandboxes/abc",
            "/admin/hosts",
        ] {
            assert!(is_page(p), "{p}");
        }
        for p in [
            "/v1/nope",
            "/nope",
            "/dashboards",
            "/adminx",
            "/docs",
            "/sandboxes",
        ] {
            assert!(!is_page(p), "{p}");
        }
    }

    #[test]
    fn assets_are_sorted_for_lookup() {
        assert!(assets::ASSETS.windows(2).all(|w| w[0].0 < w[1].0));
        if built() {
            assert!(asset("/index.html").is_some());
        }
    }

    #[test]
    fn types_and_policy() {
        assert_eq!(content_type("/a/b.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("/index.html"), "text/html; charset=utf-8");
        assert!(csp().contains("frame-ancestors 'none'"));
        assert!(!csp().contains("'unsafe-eval'"));
    }
}
