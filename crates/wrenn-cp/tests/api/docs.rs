//! The OpenAPI document against the router it describes, the offline Swagger UI and
//! `/metrics`. SQLite only: these check routing and rendering, not storage.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use wrenn_cp::db::testing::{TestBackend, run};

use super::{App, token};

/// Status, content type and body bytes of one request through the app's router.
async fn fetch(app: &App, method: Method, uri: &str) -> (StatusCode, String, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, ct, body)
}

/// Every operation of the document as (method, path template).
fn operations(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths object") {
        for (m, _) in item.as_object().expect("path item object") {
            let method = Method::from_bytes(m.to_uppercase().as_bytes())
                .unwrap_or_else(|e| panic!("{path}: {m} is not a method: {e}"));
            out.push((method, path.clone()));
        }
    }
    out
}

fn document() -> Value {
    serde_json::to_value(wrenn_cp::api::openapi()).unwrap()
}

#[test]
fn creates_link_to_the_operations_on_what_they_made() {
    let doc = document();
    let paths = doc["paths"].as_object().unwrap();
    let created = &paths["/v1/sandboxes"]["post"]["responses"]["201"];
    let links = created["links"]
        .as_object()
        .unwrap_or_else(|| panic!("{created}"));
    // Every operation on /v1/sandboxes/{id} and below, and nothing else.
    let mut want: Vec<String> = paths
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/sandboxes/{id}"))
        .flat_map(|(_, item)| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str().map(str::to_owned))
        .collect();
    want.sort();
    let mut got: Vec<String> = links.keys().cloned().collect();
    got.sort();
    assert_eq!(got, want);
    assert!(want.len() >= 10, "{want:?}");
    for (name, link) in links {
        assert_eq!(link["operationId"], name.as_str(), "{link}");
        assert_eq!(
            link["parameters"]["path.id"], "$response.body#/id",
            "{link}"
        );
    }
    // The sandbox's create answers an `id` for the links to use.
    let schema = &created["content"]["application/json"]["schema"]["$ref"];
    let name = schema.as_str().unwrap().rsplit('/').next().unwrap();
    assert!(
        doc["components"]["schemas"][name]["properties"]["id"].is_object(),
        "{schema}"
    );
}

#[test]
fn document_is_complete_and_errors_use_the_envelope() {
    let doc = document();
    assert!(
        doc["components"]["schemas"]["ErrorBody"].is_object(),
        "{doc}"
    );
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");

    // Every reference resolves (a dangling one makes the document unusable for clients and
    // test generators alike).
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {r}"
        );
    }

    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "suspiciously few paths: {paths:?}");
    // Generated clients name their functions after operation IDs.
    let mut op_ids = std::collections::HashSet::new();
    for (path, item) in paths {
        let ops = item.as_object().unwrap();
        assert!(!ops.is_empty(), "{path} has no operations");
        for (method, op) in ops {
            let what = format!("{method} {path}");
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no ID"));
            assert!(
                op_ids.insert(id.to_owned()),
                "{what}: duplicate operationId {id}"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{what}: no tag"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{what}: no responses");
            assert!(
                // WebSocket routes succeed with 101 Switching Protocols.
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{what}: no success response"
            );
            for (status, resp) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        resp["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what} {status}: error response without the envelope"
                    );
                }
            }
            // Security requirements name declared schemes only.
            for req in op["security"].as_array().into_iter().flatten() {
                for name in req.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{what}: unknown scheme {name}");
                }
            }
            // Every `{param}` of the template is documented as a path parameter.
            let documented: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for seg in path.split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    assert!(
                        documented.contains(&name),
                        "{what}: {{{name}}} undocumented"
                    );
                }
            }
        }
    }
}

/// Every documented operation reaches a handler: no 404 from the route fallback, no 405.
/// Requests carry no credentials and no body, so handlers answer 4xx of their own (401, 400,
/// 415) — which is fine; only the router's answers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_routes_are_served() {
    run(TestBackend::Sqlite, |db| async move {
        let app = App::new(db);
        let ops = operations(&document());
        assert!(!ops.is_empty());
        for (method, template) in ops {
            // Concrete values for path parameters; malformed IDs are the handler's 400.
            let uri: String = template
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let (status, _, body) = fetch(&app, method.clone(), &uri).await;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {template}: {v}"
            );
            assert!(
                !(status == StatusCode::NOT_FOUND && v["error"]["message"] == "route not found"),
                "{method} {template} hit the route fallback"
            );
        }
        // The check can tell: an undocumented path and method get the router's answers.
        let (s, _, b) = fetch(&app, Method::GET, "/v1/nope").await;
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (s, v["error"]["message"].as_str()),
            (StatusCode::NOT_FOUND, Some("route not found"))
        );
        let (s, _, _) = fetch(&app, Method::PUT, "/v1/teams").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_and_offline_docs() {
    run(TestBackend::Sqlite, |db| async move {
        let app = App::new(db);
        let (s, ct, body) = fetch(&app, Method::GET, "/openapi.json").await;
        assert_eq!(s, StatusCode::OK);
        assert!(ct.starts_with("application/json"), "{ct}");
        let served: Value = serde_json::from_slice(&body).expect("valid JSON");
        assert!(
            served["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            served["openapi"]
        );
        assert_eq!(served["info"]["title"], "Wrenn API");
        assert_eq!(served["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(served, document(), "served document = api::openapi()");

        let (s, _, _) = fetch(&app, Method::GET, "/docs").await;
        assert!(s.is_redirection(), "/docs redirects to /docs/: {s}");
        let (s, ct, html) = fetch(&app, Method::GET, "/docs/").await;
        assert_eq!(s, StatusCode::OK);
        assert!(ct.starts_with("text/html"), "{ct}");
        let html = String::from_utf8(html).unwrap();
        // Every script and stylesheet is a relative URL served from the binary.
        let mut assets = Vec::new();
        for attr in ["src=\"", "href=\""] {
            for (i, _) in html.match_indices(attr) {
                let rest = &html[i + attr.len()..];
                let url = &rest[..rest.find('"').unwrap()];
                assert!(!url.contains("://"), "external asset {url}");
                assets.push(url.trim_start_matches("./").to_owned());
            }
        }
        for needed in [
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "swagger-initializer.js",
        ] {
            assert!(
                assets.iter().any(|a| a == needed),
                "{needed} not in {assets:?}"
            );
        }
        for asset in &assets {
            let (s, _, body) = fetch(&app, Method::GET, &format!("/docs/{asset}")).await;
            assert_eq!(s, StatusCode::OK, "/docs/{asset}");
            assert!(!body.is_empty(), "/docs/{asset} is empty");
        }
        // The initializer loads our document and no online validator.
        let (_, _, init) = fetch(&app, Method::GET, "/docs/swagger-initializer.js").await;
        let init = String::from_utf8(init).unwrap();
        assert!(init.contains("/openapi.json"), "{init}");
        assert!(!init.contains("validator.swagger.io"), "{init}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_use_route_templates() {
    run(TestBackend::Sqlite, |db| async move {
        let app = App::new(db);
        let a = app.signup("ada@example.com", "Ada").await;
        let t = token(&a);
        let team = a["team"]["id"].as_str().unwrap().to_owned();
        let user = a["user"]["id"].as_str().unwrap().to_owned();
        let members = format!("/v1/teams/{team}/members");
        for _ in 0..3 {
            let (s, v) = app.get(&members, Some(&t)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
        let (s, _) = app
            .post(&members, Some(&t), json!({"email": "nobody@example.com"}))
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app.get(&format!("/v1/unknown/{team}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        let (s, ct, body) = fetch(&app, Method::GET, "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert!(ct.starts_with("text/plain"), "{ct}");
        let text = String::from_utf8(body).unwrap();
        let line = |needles: &[&str]| {
            text.lines().find(|l| {
                l.starts_with("wrenn_http_requests_total{") && needles.iter().all(|n| l.contains(n))
            })
        };
        let ok = line(&[
            "method=\"GET\"",
            "route=\"/v1/teams/{id}/members\"",
            "status=\"200\"",
        ])
        .unwrap_or_else(|| panic!("no GET members series:\n{text}"));
        let count: f64 = ok.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 3.0, "{ok}");
        assert!(
            line(&[
                "method=\"POST\"",
                "route=\"/v1/teams/{id}/members\"",
                "status=\"404\""
            ])
            .is_some(),
            "{text}"
        );
        assert!(
            line(&["route=\"unmatched\"", "status=\"404\""]).is_some(),
            "{text}"
        );
        assert!(
            text.lines().any(
                |l| l.starts_with("wrenn_http_request_duration_seconds_bucket{")
                    && l.contains("route=\"/v1/auth/signup\"")
            ),
            "{text}"
        );
        for id in [&team, &user] {
            assert!(
                !text.contains(id.as_str()),
                "{id} leaked into labels:\n{text}"
            );
        }
        assert!(!text.contains("/v1/unknown"), "raw path leaked:\n{text}");
    })
    .await;
}

/// The dashboard shares the port but never shadows the API: its pages and files answer GET,
/// with the app's headers; unknown API paths, other methods and other paths keep the JSON 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_and_api_priority() {
    run(TestBackend::Sqlite, |db| async move {
        let app = App::new(db);
        for page in ["/", "/login", "/dashboard/sandboxes/abc", "/admin/hosts"] {
            let req = Request::builder().uri(page).body(Body::empty()).unwrap();
            let resp = app.router.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{page}");
            let h = resp.headers();
            assert_eq!(
                h[header::CONTENT_TYPE],
                "text/html; charset=utf-8",
                "{page}"
            );
            assert_eq!(h[header::CACHE_CONTROL], "no-cache", "{page}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("default-src 'self'"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("unsafe-eval"), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        for (method, uri) in [
            (Method::GET, "/v1/nope"),
            (Method::GET, "/nope"),
            (Method::GET, "/dashboards"),
            (Method::GET, "/_app/immutable/missing.js"),
            (Method::POST, "/login"),
            (Method::DELETE, "/dashboard"),
        ] {
            let (s, ct, b) = fetch(&app, method.clone(), uri).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}");
            assert!(ct.starts_with("application/json"), "{method} {uri}: {ct}");
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["error"]["code"], "not_found", "{method} {uri}");
        }
        // The API's own routes are untouched.
        let (s, ct, _) = fetch(&app, Method::GET, "/health").await;
        assert_eq!(
            (s, ct.starts_with("application/json")),
            (StatusCode::OK, true)
        );
    })
    .await;
}

/// A built dashboard's hashed files are served immutable, with their type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_assets_when_built() {
    if !wrenn_cp::dashboard::built() {
        eprintln!("dashboard not built into this binary: only the placeholder is served");
        return;
    }
    run(TestBackend::Sqlite, |db| async move {
        let app = App::new(db);
        let (_, _, index) = fetch(&app, Method::GET, "/").await;
        let index = String::from_utf8(index).unwrap();
        let start = index
            .find("/_app/immutable/")
            .expect("index links its files");
        let end = start + index[start..].find('"').expect("quoted");
        let asset = &index[start..end];
        let req = Request::builder().uri(asset).body(Body::empty()).unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        assert_eq!(
            resp.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let ct = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(
            ct.starts_with("text/javascript") || ct.starts_with("text/css"),
            "{ct}"
        );
    })
    .await;
}
