//! The answers every operation can give because of the extractors it shares with the others,
//! added to the document in one place instead of repeated (and forgotten) on each handler:
//!
//! - a JSON request body (`ApiJson`): 400 (malformed or a field out of range), 413 (over
//!   [`super::BODY_LIMIT`]), 415 (not `application/json`);
//! - credentials (`TeamAuth`, `UserAuth`, `HostAuth`): 401;
//! - path or query parameters (`ApiPath`, `ApiQuery`): 400;
//! - a WebSocket route (it answers 101): the headers of the upgrade, each required, as axum's
//!   `WebSocketUpgrade` checks them (a plain GET is a 400).
//!
//! A status a handler already documents keeps its own description.
//!
//! It also links each create (`POST /v1/sandboxes`, `POST /v1/api-keys`, ...) to the
//! operations on what it made (OpenAPI `links`: the new `id` fills their `{id}`), which is
//! how clients and stateful testers (schemathesis) learn the order of calls.

use serde_json::{Map, Value, json};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `doc` with the shared answers added to every operation.
pub(crate) fn complete(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut v = match serde_json::to_value(&doc) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "OpenAPI document does not serialize");
            return doc;
        }
    };
    if let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for m in METHODS {
                if let Some(op) = item.get_mut(m).and_then(Value::as_object_mut) {
                    complete_operation(op);
                }
            }
        }
        add_links(paths);
    }
    match serde_json::from_value(v) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "completed OpenAPI document does not deserialize");
            doc
        }
    }
}

fn complete_operation(op: &mut Map<String, Value>) {
    let json_body = op
        .get("requestBody")
        .and_then(|b| b.get("content"))
        .and_then(Value::as_object)
        .is_some_and(|c| c.contains_key("application/json"));
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let has_params = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    let upgrade = op.get("responses").and_then(|r| r.get("101")).is_some();
    if upgrade {
        add_upgrade_headers(op);
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses.entry(status).or_insert_with(|| {
            json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            })
        });
    };
    if json_body {
        add(
            "400",
            "Malformed body or a field out of range (named in the message)",
        );
        add("413", "Body too large");
        add("415", "`Content-Type` is not `application/json`");
    }
    if has_params {
        add("400", "Malformed path or query parameter");
    }
    if secured {
        add("401", "Missing or invalid credentials");
    }
}

/// For each `POST <collection>` answering 201 with an `id`, a link to every operation on
/// `<collection>/{id}` and below, by operation ID, with `id` taken from the created object.
fn add_links(paths: &mut Map<String, Value>) {
    let op_ids = |item: &Value| -> Vec<String> {
        METHODS
            .iter()
            .filter_map(|m| {
                item.get(*m)?
                    .get("operationId")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    let collections: Vec<String> = paths
        .iter()
        .filter(|(_, item)| {
            item.get("post")
                .and_then(|p| p.get("responses"))
                .and_then(|r| r.get("201"))
                .is_some()
        })
        .map(|(path, _)| path.clone())
        .collect();
    for collection in collections {
        let prefix = format!("{collection}/{{id}}");
        let targets: Vec<String> = paths
            .iter()
            .filter(|(path, _)| *path == &prefix || path.starts_with(&format!("{prefix}/")))
            .flat_map(|(_, item)| op_ids(item))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let links: Map<String, Value> = targets
            .into_iter()
            .map(|id| {
                let link = json!({
                    "operationId": id,
                    "parameters": {"path.id": "$response.body#/id"},
                });
                (id, link)
            })
            .collect();
        if let Some(created) = paths
            .get_mut(&collection)
            .and_then(|i| i.get_mut("post"))
            .and_then(|p| p.get_mut("responses"))
            .and_then(|r| r.get_mut("201"))
            .and_then(Value::as_object_mut)
        {
            created.insert("links".into(), Value::Object(links));
        }
    }
}

/// The request headers a WebSocket upgrade needs, as axum's `WebSocketUpgrade` checks them:
/// `Connection` containing `upgrade` and `Upgrade: websocket` (both in any case),
/// `Sec-WebSocket-Version: 13`, and a `Sec-WebSocket-Key` (any value).
fn add_upgrade_headers(op: &mut Map<String, Value>) {
    let headers = [
        (
            "Connection",
            json!({"type": "string", "pattern": "^([!-~][ -~]*)?[Uu][Pp][Gg][Rr][Aa][Dd][Ee]([ -~]*[!-~])?$"}),
            "Contains `upgrade` (any case), e.g. `Upgrade`",
        ),
        (
            "Upgrade",
            json!({"type": "string", "pattern": "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"}),
            "`websocket` (any case)",
        ),
        (
            "Sec-WebSocket-Version",
            json!({"type": "string", "enum": ["13"]}),
            "WebSocket protocol version",
        ),
        (
            "Sec-WebSocket-Key",
            json!({"type": "string"}),
            "The client's handshake nonce",
        ),
    ];
    let params = op
        .entry("parameters")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(params) = params.as_array_mut() else {
        return;
    };
    for (name, schema, description) in headers {
        params.push(json!({
            "name": name, "in": "header", "required": true,
            "description": description, "schema": schema,
        }));
    }
}
