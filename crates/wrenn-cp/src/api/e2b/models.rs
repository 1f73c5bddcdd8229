//! E2B's request and response bodies (the SDKs' generated models; camelCase, RFC 3339).

use serde::{Deserialize, Serialize};
use wrenn_proto::hostagent::v1 as pb;

use super::{StringMap, now_rfc3339, rfc3339};
use crate::db::{OnTimeout, Sandbox, SandboxStatus};
use crate::error::ApiError;

/// `NewSandbox` (`POST /sandboxes`) and `NewSandboxV2` (`POST /v2/sandboxes`); fields Wrenn
/// has no use for (`mcp`, `iam`, `volumeMounts`, `secure`, most of `network`) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds.
    pub timeout: Option<i64>,
    pub auto_pause: Option<bool>,
    pub auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    pub metadata: Option<StringMap>,
    pub env_vars: Option<StringMap>,
    pub network: Option<NetworkConfig>,
}

/// Of E2B's network options, Wrenn applies whether the sandbox's ports are public and the
/// networks it may (`allowOut`) and may not (`denyOut`) reach.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    pub allow_public_traffic: Option<bool>,
    pub allow_out: Option<Vec<String>>,
    pub deny_out: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    pub timeout: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct TimeoutRequest {
    pub timeout: i64,
}

#[derive(Debug, Default, Deserialize)]
pub struct SnapshotRequest {
    pub name: Option<String>,
}

/// `limit` and `nextToken` are accepted and unused: a team's snapshots come in one page.
#[derive(Debug, Default, Deserialize)]
pub struct SnapshotQuery {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ForkRequest {
    pub timeout: Option<i64>,
    pub count: Option<i64>,
}

/// `Sandbox`: what create and connect answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxOut {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: String,
    envd_version: String,
    alias: String,
    envd_access_token: String,
    traffic_access_token: Option<String>,
    domain: Option<String>,
}

/// The host's ID stands in for E2B's deprecated client ID.
fn client_id(sb: &Sandbox) -> String {
    sb.host_id.clone().unwrap_or_else(|| "wrenn".into())
}

fn envd_version(sb: &Sandbox) -> String {
    sb.envd_version.clone().unwrap_or_else(|| "0.1.0".into())
}

fn state(sb: &Sandbox) -> &'static str {
    if sb.status == SandboxStatus::Paused {
        "paused"
    } else {
        "running"
    }
}

fn started(sb: &Sandbox) -> String {
    rfc3339(sb.started_at.unwrap_or(sb.created_at))
}

/// A paused sandbox or one without a deadline has no end: now stands in (the field is
/// required).
fn ends(sb: &Sandbox) -> String {
    sb.end_at.map_or_else(now_rfc3339, rfc3339)
}

impl SandboxOut {
    pub fn new(sb: &Sandbox, token: String) -> Self {
        Self::with_traffic(sb, token, None)
    }

    /// With the traffic access token of a sandbox whose ports are private.
    pub fn with_traffic(sb: &Sandbox, token: String, traffic: Option<String>) -> Self {
        SandboxOut {
            template_id: sb.template.clone(),
            sandbox_id: sb.id.clone(),
            client_id: client_id(sb),
            envd_version: envd_version(sb),
            alias: sb.template.clone(),
            envd_access_token: token,
            traffic_access_token: traffic,
            domain: None,
        }
    }

    /// The configured domain, from which the SDKs build `<port>-<id>.<domain>`.
    pub fn in_domain(mut self, domain: Option<&str>) -> Self {
        self.domain = domain.map(str::to_owned);
        self
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    auto_resume: bool,
    on_timeout: &'static str,
}

/// `SandboxDetail`: `GET /sandboxes/{id}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: String,
    alias: String,
    started_at: String,
    end_at: String,
    envd_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
    cpu_count: i64,
    #[serde(rename = "memoryMB")]
    memory_mb: i64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: i64,
    state: &'static str,
    metadata: StringMap,
    lifecycle: Lifecycle,
    domain: Option<String>,
}

impl SandboxDetail {
    pub fn new(sb: &Sandbox, token: Option<String>) -> Self {
        SandboxDetail {
            template_id: sb.template.clone(),
            sandbox_id: sb.id.clone(),
            client_id: client_id(sb),
            alias: sb.template.clone(),
            started_at: started(sb),
            end_at: ends(sb),
            envd_version: envd_version(sb),
            envd_access_token: token,
            cpu_count: sb.vcpus,
            memory_mb: sb.memory_mb,
            disk_size_mb: sb.disk_size_mb,
            state: state(sb),
            metadata: sb.metadata.clone(),
            lifecycle: Lifecycle {
                auto_resume: sb.auto_resume,
                on_timeout: match sb.on_timeout {
                    OnTimeout::Kill => "kill",
                    OnTimeout::Pause => "pause",
                },
            },
            domain: None,
        }
    }

    /// The configured domain, from which the SDKs build `<port>-<id>.<domain>`.
    pub fn in_domain(mut self, domain: Option<&str>) -> Self {
        self.domain = domain.map(str::to_owned);
        self
    }
}

/// `ListedSandbox`: an item of `GET /v2/sandboxes`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: String,
    alias: String,
    started_at: String,
    end_at: String,
    cpu_count: i64,
    #[serde(rename = "memoryMB")]
    memory_mb: i64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: i64,
    state: &'static str,
    envd_version: String,
    metadata: StringMap,
}

impl ListedSandbox {
    pub fn new(sb: &Sandbox) -> Self {
        ListedSandbox {
            template_id: sb.template.clone(),
            sandbox_id: sb.id.clone(),
            client_id: client_id(sb),
            alias: sb.template.clone(),
            started_at: started(sb),
            end_at: ends(sb),
            cpu_count: sb.vcpus,
            memory_mb: sb.memory_mb,
            disk_size_mb: sb.disk_size_mb,
            state: state(sb),
            envd_version: envd_version(sb),
            metadata: sb.metadata.clone(),
        }
    }
}

/// `SandboxMetric`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    timestamp: String,
    timestamp_unix: i64,
    cpu_count: u32,
    cpu_used_pct: f64,
    mem_used: u64,
    mem_total: u64,
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

impl SandboxMetric {
    /// The current sample of a response (an agent that reports no `samples`).
    pub fn new(m: &pb::GetMetricsResponse) -> Self {
        Self::from_sample(&pb::MetricSample {
            timestamp_ms: m.timestamp_ms,
            cpu_count: m.cpu_count,
            cpu_used_pct: m.cpu_used_pct,
            mem_total_bytes: m.mem_total_bytes,
            mem_used_bytes: m.mem_used_bytes,
            disk_used_bytes: m.disk_used_bytes,
            disk_total_bytes: m.disk_total_bytes,
            ..Default::default()
        })
    }

    /// One sample of the agent's series.
    pub fn from_sample(m: &pb::MetricSample) -> Self {
        let ms = if m.timestamp_ms > 0 {
            m.timestamp_ms
        } else {
            crate::db::now_ms()
        };
        SandboxMetric {
            timestamp: rfc3339(ms),
            timestamp_unix: ms / 1000,
            cpu_count: m.cpu_count,
            cpu_used_pct: m.cpu_used_pct,
            mem_used: m.mem_used_bytes,
            mem_total: m.mem_total_bytes,
            mem_cache: 0,
            disk_used: m.disk_used_bytes,
            disk_total: m.disk_total_bytes,
        }
    }
}

/// `?start=&end=` of the metrics route: Unix seconds, both optional.
#[derive(Debug, Default, Deserialize)]
pub struct MetricsQuery {
    pub start: Option<String>,
    pub end: Option<String>,
}

/// `SnapshotInfo`: the snapshot's name is both its ID and its only name.
#[derive(Debug, Serialize)]
pub struct SnapshotOut {
    #[serde(rename = "snapshotID")]
    snapshot_id: String,
    names: Vec<String>,
}

impl SnapshotOut {
    pub fn named(name: String) -> Self {
        SnapshotOut {
            snapshot_id: name.clone(),
            names: vec![name],
        }
    }
}

/// One item of a fork's answer: a sandbox or why it was not made.
#[derive(Debug, Serialize)]
pub struct ForkResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<SandboxOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
}

impl ForkResult {
    pub fn sandbox(s: SandboxOut) -> Self {
        ForkResult {
            sandbox: Some(s),
            error: None,
        }
    }

    pub fn error(e: &ApiError) -> Self {
        ForkResult {
            sandbox: None,
            error: Some(
                serde_json::json!({"code": e.status().as_u16(), "message": e.public_message()}),
            ),
        }
    }
}
