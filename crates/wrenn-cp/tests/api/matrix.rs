//! The authorization matrix (issue 14): every route × every kind of caller → the status the
//! server must answer, and for every refusal, that no row of any table changed.
//!
//! The documented routes come from the served OpenAPI document: a route added there without a
//! row here fails the test. Routes outside the document (the E2B API, `/openapi.json`, `/docs`,
//! `/metrics`, the proxy) are listed by hand.
//!
//! The callers (columns of [`ROWS`]), against the objects of one team T (the "world"):
//!
//! | column | caller |
//! |---|---|
//! | `none` | no credentials |
//! | `junk` | T's owner's JWT with its signature altered |
//! | `exp`  | T's owner's JWT, expired |
//! | `revk` | a revoked API key of T |
//! | `othK` | another team's API key |
//! | `strg` | a stranger's JWT: the owner of that other team, no platform power |
//! | `memb` | a plain member of T |
//! | `ownr` | T's owner |
//! | `ownK` | an API key of T |
//! | `admn` | the platform admin (the first signup), who is not in T |
//! | `host` | the host JWT of T's own host (the one in the paths) |
//! | `hst2` | the host JWT of another (platform) host |
//!
//! Expected: a status (the refusal: 401/403/404, or the route's own answer when the
//! credential is the body), or `ok`: past authorization. Sandboxes sit on a host whose agent
//! never answers (loopback port 1), so a sandbox call that got through is a 502/503 or a 409
//! (`ok` excludes 400, 401, 403, 404, 405, 415, 422 and 500); WebSocket routes go over TCP and
//! `ok` is the 101 of the upgrade. An allowed call of another team's caller must not show any
//! of T's IDs.

use std::collections::BTreeSet;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde_json::{Value, json};
use std::future::IntoFuture;
use tower::ServiceExt;
use wrenn_cp::auth::jwt::{Role, UserIdentity};
use wrenn_cp::db::testing::new_sandbox;
use wrenn_cp::db::{Db, HostStatus, NewSandbox, SandboxStatus, SignupGate, TemplateSpec};
use wrenn_cp::db_test;
use wrenn_cp::ids::{TeamId, UserId};

use super::{App, PASSWORD, token};

/// The callers, in the order of the columns of [`ROWS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    None,
    Junk,
    Expired,
    Revoked,
    OtherKey,
    Stranger,
    Member,
    Owner,
    OwnerKey,
    Admin,
    Host,
    OtherHost,
}

const CREDS: [Cred; 12] = [
    Cred::None,
    Cred::Junk,
    Cred::Expired,
    Cred::Revoked,
    Cred::OtherKey,
    Cred::Stranger,
    Cred::Member,
    Cred::Owner,
    Cred::OwnerKey,
    Cred::Admin,
    Cred::Host,
    Cred::OtherHost,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// In-process, through the router.
    Http,
    /// Over TCP with WebSocket upgrade headers (an in-process request cannot upgrade).
    Ws,
}

struct Row {
    method: Method,
    /// The OpenAPI template (`{id}` is T's object of that resource), then `?query`.
    path: &'static str,
    /// JSON (or, for `PUT …/files`, raw bytes); `$team`, `$sandbox`, `$host`, `$spare`,
    /// `$login` and `$uniq` are filled in from the world.
    body: Option<&'static str>,
    /// Extra headers (the proxy's), filled in the same way.
    headers: &'static [(&'static str, &'static str)],
    via: Via,
    /// An allowed call uses up the world's object (a delete, a revoke): build a new world.
    consumes: bool,
    /// One token per column of [`CREDS`].
    want: &'static str,
}

const fn row(method: Method, path: &'static str, want: &'static str) -> Row {
    Row {
        method,
        path,
        body: None,
        headers: &[],
        via: Via::Http,
        consumes: false,
        want,
    }
}

impl Row {
    const fn body(mut self, b: &'static str) -> Row {
        self.body = Some(b);
        self
    }
    const fn consumes(mut self) -> Row {
        self.consumes = true;
        self
    }
    const fn ws(mut self) -> Row {
        self.via = Via::Ws;
        self
    }
    const fn headers(mut self, h: &'static [(&'static str, &'static str)]) -> Row {
        self.headers = h;
        self
    }
}

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PUT: Method = Method::PUT;
const PATCH: Method = Method::PATCH;
const DELETE: Method = Method::DELETE;

// Columns, in every expectation below: none junk exp revk othK strg memb ownr ownK admn host
// hst2 (see the module docs). The recurring ones follow. User routes refuse everything but user JWTs with 401; team routes
// (`TeamAuth`) take T's key too; another team's caller gets 404 for T's objects, never 403.
/// Credentials are ignored (open routes).
const OPEN: &str = "ok   ok   ok   ok   ok   ok   ok   ok   ok   ok   ok   ok";
/// Any user, acting on their own team.
const USER: &str = "401  401  401  401  401  ok   ok   ok   401  ok   401  401";
/// Any caller of a team (key or user), on their own team.
const TEAM: &str = "401  401  401  401  ok   ok   ok   ok   ok   ok   401  401";
/// T's object, to any caller of T (key or user); the admin has no say in T.
const T_OBJ: &str = "401  401  401  401  404  404  ok   ok   ok   404  401  401";
/// T's object, to any user of T.
const T_USER: &str = "401  401  401  401  401  404  ok   ok   401  404  401  401";
/// T's owners and admins.
const T_MANAGER: &str = "401  401  401  401  401  404  403  ok   401  404  401  401";
/// T's host: its owners and admins, and the platform admin.
const T_HOST: &str = "401  401  401  401  401  404  403  ok   401  ok   401  401";
/// Platform admins only.
const ADMIN: &str = "401  401  401  401  401  403  403  403  401  ok   401  401";

/// Every route × caller. `ok`: past authorization; a number: exactly that status.
const ROWS: &[Row] = &[
    row(GET, "/health", OPEN),
    row(GET, "/openapi.json", OPEN),
    row(GET, "/docs", OPEN),
    row(GET, "/metrics", OPEN),
    row(POST, "/v1/auth/signup", OPEN)
        .body(r#"{"email":"$uniq@example.com","password":"$password","name":"New"}"#),
    row(POST, "/v1/auth/login", OPEN).body(r#"{"email":"$login","password":"$password"}"#),
    // The body's token is the credential: a header (even a host JWT) changes nothing.
    row(POST, "/v1/hosts/register", "401  401  401  401  401  401  401  401  401  401  401  401")
        .body(r#"{"token":"00000000000000000000000000000000000000000000000000000000000000aa","address":"https://10.0.0.9:1","tls_fingerprint":"sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}"#),
    row(POST, "/v1/hosts/auth/refresh", "401  401  401  401  401  401  401  401  401  401  401  401")
        .body(r#"{"host_id":"$host","refresh_token":"00000000000000000000000000000000000000000000000000000000000000aa"}"#),
    // Accounts and teams.
    row(GET, "/v1/me", USER),
    row(GET, "/v1/teams", USER),
    row(POST, "/v1/teams", USER).body(r#"{"name":"Another"}"#),
    row(POST, "/v1/auth/switch-team", T_USER).body(r#"{"team_id":"$team"}"#),
    row(GET, "/v1/teams/{id}/members", T_USER),
    row(POST, "/v1/teams/{id}/members", T_MANAGER).body(r#"{"email":"$spare"}"#),
    row(PATCH, "/v1/teams/{id}/members/{user_id}", T_MANAGER).body(r#"{"role":"member"}"#),
    row(DELETE, "/v1/teams/{id}/members/{user_id}", T_MANAGER).consumes(),
    row(GET, "/v1/teams/{id}/audit", "401  401  401  401  401  404  403  ok   401  404  401  401"),
    row(POST, "/v1/teams/{id}/invitations", T_MANAGER).body(r#"{"email":"$uniq@example.org"}"#),
    row(GET, "/v1/teams/{id}/invitations", T_MANAGER),
    row(DELETE, "/v1/teams/{id}/invitations/{invitation_id}", T_MANAGER).consumes(),
    // API keys: any member may mint and revoke them (wrenn-spec §2.2); keys may only read.
    row(POST, "/v1/api-keys", USER).body(r#"{"name":"k"}"#),
    row(GET, "/v1/api-keys", TEAM),
    row(GET, "/v1/api-keys/{id}", T_OBJ),
    row(DELETE, "/v1/api-keys/{id}", T_USER).consumes(),
    // Hosts. A team's host needs a BYOC team (only T is); a platform host needs the admin.
    row(POST, "/v1/hosts/registration-tokens", "401  401  401  401  401  403  403  ok   401  403  401  401")
        .body(r#"{"name":"h"}"#),
    row(POST, "/v1/hosts/registration-tokens", "401  401  401  401  401  403  403  403  401  ok   401  401")
        .body(r#"{"name":"h","platform":true}"#),
    row(GET, "/v1/hosts", TEAM),
    row(GET, "/v1/hosts/{id}", "401  401  401  401  404  404  ok   ok   ok   ok   401  401"),
    row(GET, "/v1/hosts/{id}/delete-preview", T_HOST),
    row(POST, "/v1/hosts/{id}/revoke", T_HOST).consumes(),
    // 409 when allowed: T's sandboxes are on it.
    row(DELETE, "/v1/hosts/{id}", T_HOST).consumes(),
    row(POST, "/v1/hosts/{id}/heartbeat", "401  401  401  401  401  401  401  401  401  401  ok   403"),
    // Platform administration.
    row(GET, "/v1/admin/users", ADMIN),
    row(GET, "/v1/admin/teams", ADMIN),
    row(PUT, "/v1/admin/teams/{id}/byoc", ADMIN).body(r#"{"enabled":true}"#),
    row(GET, "/v1/admin/teams/{id}/quota", ADMIN),
    row(PUT, "/v1/admin/teams/{id}/quota", ADMIN).body(r#"{"max_sandboxes":50}"#),
    row(GET, "/v1/admin/hosts", ADMIN),
    row(GET, "/v1/admin/audit", ADMIN),
    // Sandboxes, templates, snapshots: any caller of the team, whatever the role.
    row(POST, "/v1/sandboxes", TEAM).body("{}"),
    row(GET, "/v1/sandboxes", TEAM),
    row(GET, "/v1/sandboxes/{id}", T_OBJ),
    row(DELETE, "/v1/sandboxes/{id}", T_OBJ),
    row(POST, "/v1/sandboxes/{id}/keepalive", T_OBJ),
    row(POST, "/v1/sandboxes/{id}/pause", T_OBJ),
    row(POST, "/v1/sandboxes/{id}/resume", T_OBJ),
    row(GET, "/v1/templates", TEAM),
    row(POST, "/v1/snapshots", T_OBJ).body(r#"{"sandbox_id":"$sandbox","name":"snap-new"}"#),
    row(GET, "/v1/snapshots", TEAM),
    row(DELETE, "/v1/snapshots/{name}", T_OBJ).consumes(),
    row(POST, "/v1/sandboxes/{id}/exec", T_OBJ).body(r#"{"cmd":"true"}"#),
    row(GET, "/v1/sandboxes/{id}/exec/stream", T_OBJ).ws(),
    row(POST, "/v1/sandboxes/{id}/processes", T_OBJ).body(r#"{"cmd":"sleep","args":["9"]}"#),
    row(GET, "/v1/sandboxes/{id}/processes", T_OBJ),
    row(DELETE, "/v1/sandboxes/{id}/processes/{selector}", T_OBJ),
    row(GET, "/v1/sandboxes/{id}/processes/{selector}/stream", T_OBJ).ws(),
    row(GET, "/v1/sandboxes/{id}/pty", T_OBJ).ws(),
    row(PUT, "/v1/sandboxes/{id}/files?path=/tmp/x", T_OBJ).body("raw bytes"),
    row(GET, "/v1/sandboxes/{id}/files?path=/tmp/x", T_OBJ),
    row(DELETE, "/v1/sandboxes/{id}/files?path=/tmp/x", T_OBJ),
    row(GET, "/v1/sandboxes/{id}/files/list?path=/tmp", T_OBJ),
    row(POST, "/v1/sandboxes/{id}/files/mkdir", T_OBJ).body(r#"{"path":"/tmp/d"}"#),
    // The E2B API (not in the document): the same rules in E2B's shapes.
    row(POST, "/sandboxes", TEAM).body(r#"{"templateID":"base"}"#),
    row(POST, "/v2/sandboxes", TEAM).body(r#"{"templateID":"base"}"#),
    row(GET, "/v2/sandboxes", TEAM),
    row(GET, "/sandboxes/{id}", T_OBJ),
    row(DELETE, "/sandboxes/{id}", T_OBJ),
    row(POST, "/sandboxes/{id}/connect", T_OBJ).body(r#"{"timeout":60}"#),
    row(POST, "/v2/sandboxes/{id}/connect", T_OBJ).body(r#"{"timeout":60}"#),
    row(POST, "/sandboxes/{id}/timeout", T_OBJ).body(r#"{"timeout":60}"#),
    row(POST, "/sandboxes/{id}/pause", T_OBJ),
    row(GET, "/sandboxes/{id}/metrics", T_OBJ),
    row(POST, "/sandboxes/{id}/snapshots", T_OBJ).body("{}"),
    row(POST, "/sandboxes/{id}/fork", T_OBJ).body("{}"),
    row(GET, "/snapshots", TEAM),
    row(DELETE, "/templates/{name}", T_OBJ).consumes(),
    // The proxy: envd's port takes the sandbox's access token, which none of these is; a
    // paused auto-resume sandbox is not woken by a caller who may not reach it.
    row(GET, "/", "401  401  401  401  401  401  401  401  401  401  401  401")
        .headers(&[("e2b-sandbox-id", "$sandbox")]),
    row(GET, "/", "401  401  401  401  401  401  401  401  401  401  401  401")
        .headers(&[("e2b-sandbox-id", "$paused")]),
    // Any other port of a public sandbox is open to all (502: nothing listens).
    row(GET, "/", OPEN).headers(&[("e2b-sandbox-id", "$sandbox"), ("e2b-sandbox-port", "8080")]),
];

/// Callers that exist once: the admin, the other team, the other host.
struct Outsiders {
    admin: String,
    stranger: String,
    other_key: String,
    other_host: String,
}

/// Team T and its objects; rebuilt after a call that used one of them up.
struct World {
    team: String,
    owner_email: String,
    member_email: String,
    owner: String,
    member: String,
    owner_key: String,
    revoked_key: String,
    junk: String,
    expired: String,
    key_id: String,
    target_user: String,
    spare_email: String,
    invitation: String,
    host: String,
    host_jwt: String,
    sandbox: String,
    paused: String,
    snapshot: String,
    /// Every ID of T's that another team's caller must never be shown.
    secrets: Vec<String>,
}

impl App {
    async fn ok_post(&self, path: &str, auth: &str, body: Value) -> Value {
        let (s, v) = self.post(path, Some(auth), body).await;
        assert!(s.is_success(), "{path}: {s} {v}");
        v
    }

    fn user_jwt(&self, user: &str, team: &str, role: Role, iat: Option<u64>) -> String {
        let who = UserIdentity {
            user_id: UserId::parse(user).unwrap(),
            team_id: TeamId::parse(team).unwrap(),
            role,
            email: "x@example.com".into(),
            name: "X".into(),
            is_admin: false,
        };
        match iat {
            Some(iat) => self.state.jwt.issue_user_at(&who, iat),
            None => self.state.jwt.issue_user(&who),
        }
        .unwrap()
        .token
    }

    /// Registers a host with a fresh registration token made by `user`; returns (id, JWT).
    /// The agent "listens" on loopback port 1, where nothing answers at once.
    async fn dead_host(&self, user: &str, body: Value) -> (String, String) {
        let t = self
            .ok_post("/v1/hosts/registration-tokens", user, body)
            .await;
        let r = self
            .ok_post(
                "/v1/hosts/register",
                user,
                json!({
                    "token": t["registration_token"],
                    "address": "https://10.0.0.2:50051",
                    "tls_fingerprint": format!("sha256:{}", "ab".repeat(32)),
                }),
            )
            .await;
        let id = r["host"]["id"].as_str().unwrap().to_owned();
        self.db
            .set_host_status(&id, HostStatus::Online, Some("127.0.0.1:1"))
            .await
            .unwrap();
        (id, r["host_jwt"].as_str().unwrap().to_owned())
    }

    async fn outsiders(&self) -> Outsiders {
        // The first signup is the platform admin.
        let a = self.signup("admin@example.com", "Admin").await;
        assert_eq!(a["user"]["is_admin"], true, "{a}");
        let admin = token(&a);
        let s = self.signup("stranger@example.com", "Stranger").await;
        let stranger = token(&s);
        let (_, other_key) = self.key(&stranger).await;
        let (_, other_host) = self
            .dead_host(&admin, json!({"name": "platform", "platform": true}))
            .await;
        Outsiders {
            admin,
            stranger,
            other_key,
            other_host,
        }
    }

    async fn world(&self, n: usize, hash: &str) -> World {
        let db = &self.db;
        let email = |who: &str| format!("{who}{n}@example.com");
        let (owner_u, team) = db
            .signup(&email("owner"), Some(hash), "Owner", "T", SignupGate::Open)
            .await
            .unwrap();
        let team = team.id;
        db.set_team_byoc(&team, true).await.unwrap();
        let mut members = Vec::new();
        for who in ["member", "target"] {
            let u = db
                .create_user(&email(who), Some(hash), who, false)
                .await
                .unwrap();
            db.add_member(&team, &u.id, wrenn_cp::db::Role::Member)
                .await
                .unwrap();
            members.push(u.id);
        }
        let spare = db
            .create_user(&email("spare"), None, "Spare", false)
            .await
            .unwrap();
        let owner = self.user_jwt(&owner_u.id, &team, Role::Owner, None);
        let member = self.user_jwt(&members[0], &team, Role::Member, None);
        let expired = self.user_jwt(&owner_u.id, &team, Role::Owner, Some(1_000_000_000));
        // Same header and claims, another signature.
        let junk = format!("{}AAAA", &owner[..owner.len() - 4]);
        let (owner_key_id, owner_key) = self.key(&owner).await;
        let (key_id, _) = self.key(&owner).await;
        let (revoked_id, revoked_key) = self.key(&owner).await;
        let (s, _) = self
            .send(
                DELETE,
                &format!("/v1/api-keys/{revoked_id}"),
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let inv = self
            .ok_post(
                &format!("/v1/teams/{team}/invitations"),
                &owner,
                json!({"email": email("invitee")}),
            )
            .await;
        let (host, host_jwt) = self.dead_host(&owner, json!({"name": "t-host"})).await;
        let sandbox = running(db, &team, &host, false).await;
        let paused = running(db, &team, &host, true).await;
        db.transition_sandbox(&paused, SandboxStatus::Paused, None)
            .await
            .unwrap();
        let snapshot = format!("snap-{n}");
        db.insert_team_template(&team, &snap(&snapshot))
            .await
            .unwrap();
        let invitation = inv["id"].as_str().unwrap().to_owned();
        let secrets = vec![
            team.clone(),
            owner_u.id.clone(),
            members[0].clone(),
            members[1].clone(),
            owner_key_id,
            key_id.clone(),
            invitation.clone(),
            host.clone(),
            sandbox.clone(),
            paused.clone(),
            snapshot.clone(),
        ];
        World {
            team,
            owner_email: email("owner"),
            member_email: email("member"),
            owner,
            member,
            owner_key,
            revoked_key,
            junk,
            expired,
            key_id,
            target_user: members[1].clone(),
            spare_email: spare.email,
            invitation,
            host,
            host_jwt,
            sandbox,
            paused,
            snapshot,
            secrets,
        }
    }

    /// One query reading every row of every table as `table|col|col…` text. API keys'
    /// `last_used_at` is left out: a key that authenticated is recorded as used even when the
    /// call is then refused.
    async fn snapshot_query(&self) -> String {
        let pg = self.db.backend() == wrenn_cp::db::Backend::Postgres;
        let (tables, columns) = if pg {
            (
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '\\_%'",
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
            )
        } else {
            (
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%'",
                "SELECT name FROM pragma_table_info($1)",
            )
        };
        let pool = self.db.pool();
        let tables: Vec<String> = sqlx::query_scalar(tables).fetch_all(pool).await.unwrap();
        assert!(
            tables.len() >= 10 && tables.contains(&"sandboxes".to_owned()),
            "{tables:?}"
        );
        let mut selects = Vec::new();
        for t in tables {
            let cols: Vec<String> = sqlx::query_scalar(columns)
                .bind(&t)
                .fetch_all(pool)
                .await
                .unwrap();
            let text: Vec<String> = cols
                .iter()
                .filter(|c| !(t == "api_keys" && *c == "last_used_at"))
                .map(|c| format!("COALESCE(CAST(\"{c}\" AS TEXT), '∅')"))
                .collect();
            selects.push(format!(
                "SELECT '{t}|' || {} FROM {t}",
                text.join(" || '|' || ")
            ));
        }
        selects.join(" UNION ALL ")
    }

    /// Every row of the database (by [`App::snapshot_query`]), sorted.
    async fn rows(&self, query: &str) -> Vec<String> {
        let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .fetch_all(self.db.pool())
            .await
            .unwrap();
        rows.sort();
        rows
    }
}

fn snap(name: &str) -> TemplateSpec {
    TemplateSpec {
        name: name.into(),
        default_user: "user".into(),
        default_env: json!({}),
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 5120,
        is_snapshot: true,
        size_bytes: 1 << 20,
    }
}

/// A running sandbox row of `team` on `host`, as if its create had finished.
async fn running(db: &Db, team: &str, host: &str, auto_resume: bool) -> String {
    let sb = db
        .insert_pending_sandbox(NewSandbox {
            envd_token: Some("envd-secret"),
            auto_resume,
            ..new_sandbox(team, Some(host))
        })
        .await
        .unwrap();
    db.transition_sandbox(&sb.id, SandboxStatus::Running, None)
        .await
        .unwrap();
    sb.id
}

impl World {
    fn credential(&self, o: &Outsiders, c: Cred) -> Option<String> {
        Some(match c {
            Cred::None => return None,
            Cred::Junk => self.junk.clone(),
            Cred::Expired => self.expired.clone(),
            Cred::Revoked => self.revoked_key.clone(),
            Cred::OtherKey => o.other_key.clone(),
            Cred::Stranger => o.stranger.clone(),
            Cred::Member => self.member.clone(),
            Cred::Owner => self.owner.clone(),
            Cred::OwnerKey => self.owner_key.clone(),
            Cred::Admin => o.admin.clone(),
            Cred::Host => self.host_jwt.clone(),
            Cred::OtherHost => o.other_host.clone(),
        })
    }

    /// The row's path with T's objects in it: `{id}` is the object the path's resource names.
    fn path(&self, tpl: &str) -> String {
        let id = if tpl.starts_with("/v1/teams/") || tpl.starts_with("/v1/admin/teams/") {
            &self.team
        } else if tpl.starts_with("/v1/api-keys/") {
            &self.key_id
        } else if tpl.starts_with("/v1/hosts/") {
            &self.host
        } else {
            &self.sandbox
        };
        tpl.replace("{id}", id)
            .replace("{user_id}", &self.target_user)
            .replace("{invitation_id}", &self.invitation)
            .replace("{name}", &self.snapshot)
            .replace("{selector}", "1")
    }

    fn fill(&self, s: &str, n: usize, col: usize) -> String {
        // Two accounts take turns logging in: twelve attempts on one would meet the
        // per-account login limit (a burst of 10).
        let login = if col.is_multiple_of(2) {
            &self.owner_email
        } else {
            &self.member_email
        };
        s.replace("$team", &self.team)
            .replace("$sandbox", &self.sandbox)
            .replace("$paused", &self.paused)
            .replace("$host", &self.host)
            .replace("$spare", &self.spare_email)
            .replace("$login", login)
            .replace("$password", PASSWORD)
            .replace("$uniq", &format!("u{n}c{col}"))
    }
}

/// Sends one cell's request; returns the status and the body (as text).
async fn call(
    app: &App,
    addr: std::net::SocketAddr,
    w: &World,
    r: &Row,
    auth: Option<&str>,
    n: usize,
    col: usize,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(r.method.clone())
        .uri(w.path(r.path));
    if let Some(t) = auth {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in r.headers {
        req = req.header(*k, w.fill(v, n, col));
    }
    match r.via {
        Via::Http => {
            let body = match r.body {
                Some(b) => {
                    req = req.header("content-type", "application/json");
                    Body::from(w.fill(b, n, col))
                }
                None => Body::empty(),
            };
            let resp = app
                .router
                .clone()
                .oneshot(req.body(body).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
        Via::Ws => {
            let req = req
                .header("host", addr.to_string())
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn.with_upgrades());
            let resp = tx.send_request(req).await.unwrap();
            let status = resp.status();
            let body = if status == StatusCode::SWITCHING_PROTOCOLS {
                String::new()
            } else {
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8_lossy(&bytes).into_owned()
            };
            (status, body)
        }
    }
}

/// Statuses that mean the call did not get past authorization, or never reached it.
const NOT_PAST: [u16; 8] = [400, 401, 403, 404, 405, 415, 422, 500];

/// (method, template) of every operation in the served OpenAPI document.
fn documented() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(wrenn_cp::api::openapi()).unwrap();
    let mut out = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

db_test! {
    async fn authorization_matrix(db) {
        let started = std::time::Instant::now();
        // Every documented route has a row (and so an expectation for every caller).
        let rows: BTreeSet<(String, String)> = ROWS
            .iter()
            .map(|r| (r.method.to_string(), r.path.split('?').next().unwrap().to_owned()))
            .collect();
        let missing: Vec<_> = documented().difference(&rows).cloned().collect();
        assert!(missing.is_empty(), "routes without a row in the matrix: {missing:?}");
        for r in ROWS {
            assert_eq!(r.want.split_whitespace().count(), CREDS.len(), "{} {}", r.method, r.path);
        }

        wrenn_cp::api::sandboxes::ensure_platform_templates(&db).await.unwrap();
        let app = App::new(db.clone());
        // WebSocket handshakes need a real connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, app.router.clone()).into_future());

        let hash = wrenn_cp::auth::password::hash_password(PASSWORD).unwrap();
        let o = app.outsiders().await;
        let snapshot = app.snapshot_query().await;
        let mut worlds = 0;
        let mut w = app.world(worlds, &hash).await;
        let mut failures = Vec::new();
        let mut cells = 0;
        for (i, r) in ROWS.iter().enumerate() {
            for (col, (cred, want)) in CREDS.iter().zip(r.want.split_whitespace()).enumerate() {
                cells += 1;
                let n = i * CREDS.len() + col;
                // Only refusals are held to "nothing changed".
                let before = if want == "ok" { None } else { Some(app.rows(&snapshot).await) };
                let auth = w.credential(&o, *cred);
                let (status, body) = call(&app, addr, &w, r, auth.as_deref(), n, col).await;
                let cell = format!("{} {} {:?} as {cred:?}", r.method, r.path, r.headers);
                if want == "ok" {
                    if NOT_PAST.contains(&status.as_u16()) {
                        failures.push(format!("{cell}: want past authorization, got {status}: {body}"));
                    }
                    // Another team's caller sees its own objects only (on open routes the
                    // body, not the header, says whose they are).
                    if matches!(cred, Cred::OtherKey | Cred::Stranger)
                        && r.want != OPEN
                        && let Some(leak) = w.secrets.iter().find(|s| body.contains(s.as_str()))
                    {
                        failures.push(format!("{cell}: {status} shows T's {leak}: {body}"));
                    }
                    if r.consumes && status.is_success() {
                        worlds += 1;
                        w = app.world(worlds, &hash).await;
                    }
                } else {
                    let want: u16 = want.parse().unwrap();
                    if status.as_u16() != want {
                        failures.push(format!("{cell}: want {want}, got {status}: {body}"));
                    }
                    let before = before.expect("taken for refusals");
                    let after = app.rows(&snapshot).await;
                    if after != before {
                        // The tables of the rows that differ.
                        let changed: BTreeSet<&str> = after
                            .iter()
                            .filter(|r| !before.contains(r))
                            .chain(before.iter().filter(|r| !after.contains(r)))
                            .filter_map(|r| r.split('|').next())
                            .collect();
                        failures.push(format!("{cell}: refused with {status} but changed {changed:?}"));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{} of {cells} cells wrong:\n{}", failures.len(), failures.join("\n"));
        eprintln!(
            "authorization matrix: {} rows × {} callers = {cells} requests, {} worlds, {:?} ({:?})",
            ROWS.len(),
            CREDS.len(),
            worlds + 1,
            started.elapsed(),
            db.backend(),
        );
    }
}
