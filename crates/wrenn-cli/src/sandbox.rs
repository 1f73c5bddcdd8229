//! `wrenn sandbox create | ls | get | pause | resume | rm` (and the `wrenn ls` / `wrenn rm`
//! shortcuts).

use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Client, Need};
use crate::keys::seg;
use crate::{Global, output, parse_kv};

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and wait until it runs; prints its ID.
    Create(CreateArgs),
    /// List the team's sandboxes, newest first.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show one sandbox.
    #[command(alias = "inspect")]
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Pause a running sandbox to disk (memory and processes kept; its VM and RAM released).
    Pause { id: String },
    /// Resume a paused sandbox where it stopped.
    Resume { id: String },
    /// Remove sandboxes (their VMs and disks are destroyed).
    #[command(alias = "kill", alias = "delete")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long, default_value = "base")]
    pub template: String,
    #[arg(long)]
    pub vcpus: Option<u32>,
    #[arg(long)]
    pub memory_mb: Option<u32>,
    #[arg(long)]
    pub disk_size_mb: Option<u32>,
    /// Seconds until the sandbox is stopped (0 = never).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Environment for every process: KEY=VALUE (repeatable).
    #[arg(long, value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Labels to filter by later: KEY=VALUE (repeatable).
    #[arg(long, value_parser = parse_kv)]
    pub metadata: Vec<(String, String)>,
    /// Let the sandbox reach the internet.
    #[arg(long)]
    pub allow_internet: bool,
    /// Print the whole sandbox object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub global: Global,
    #[arg(long)]
    pub json: bool,
    /// Only sandboxes in this state (running, paused, stopped, error, ...).
    #[arg(long)]
    pub status: Option<String>,
    /// Only sandboxes with this metadata: KEY=VALUE (repeatable).
    #[arg(long, value_parser = parse_kv)]
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub global: Global,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    match args.command {
        SandboxCommand::Create(c) => create(&args.global, c).await,
        SandboxCommand::Ls(mut l) => {
            merge_global(&mut l.global, &args.global);
            ls(l).await
        }
        SandboxCommand::Get { id, json } => {
            let client = Client::new(&args.global, Need::Team)?;
            let v: Value = client.get(&format!("v1/sandboxes/{}", seg(&id))).await?;
            if json {
                output::json(&v);
            } else {
                print_details(&v);
            }
            Ok(())
        }
        SandboxCommand::Pause { id } => lifecycle(&args.global, &id, "pause").await,
        SandboxCommand::Resume { id } => lifecycle(&args.global, &id, "resume").await,
        SandboxCommand::Rm(mut r) => {
            merge_global(&mut r.global, &args.global);
            rm(r).await
        }
    }
}

/// `POST /v1/sandboxes/{id}/<action>`; says the new status on stderr.
async fn lifecycle(global: &Global, id: &str, action: &str) -> anyhow::Result<()> {
    let client = Client::new(global, Need::Team)?;
    let url = client.url(&format!("v1/sandboxes/{}/{action}", seg(id)))?;
    let v: Value = client.json(client.request(Method::POST, url)).await?;
    eprintln!(
        "{id} is {}",
        v.get("status").and_then(Value::as_str).unwrap_or("?")
    );
    Ok(())
}

/// Flags given before the nested subcommand (`wrenn sandbox --url X ls`) count too.
fn merge_global(inner: &mut Global, outer: &Global) {
    if inner.url.is_none() {
        inner.url.clone_from(&outer.url);
    }
    if inner.api_key.is_none() {
        inner.api_key.clone_from(&outer.api_key);
    }
}

fn map(kv: Vec<(String, String)>) -> BTreeMap<String, String> {
    kv.into_iter().collect()
}

/// The create request body: only what the user set, so server defaults apply otherwise.
pub fn create_body(c: &CreateArgs) -> Value {
    let mut body = Map::new();
    body.insert("template".into(), json!(c.template));
    if let Some(v) = c.vcpus {
        body.insert("vcpus".into(), json!(v));
    }
    if let Some(v) = c.memory_mb {
        body.insert("memory_mb".into(), json!(v));
    }
    if let Some(v) = c.disk_size_mb {
        body.insert("disk_size_mb".into(), json!(v));
    }
    if let Some(v) = c.timeout {
        body.insert("timeout_sec".into(), json!(v));
    }
    if !c.env.is_empty() {
        body.insert("env".into(), json!(map(c.env.clone())));
    }
    if !c.metadata.is_empty() {
        body.insert("metadata".into(), json!(map(c.metadata.clone())));
    }
    if c.allow_internet {
        body.insert("allow_internet".into(), json!(true));
    }
    Value::Object(body)
}

async fn create(global: &Global, c: CreateArgs) -> anyhow::Result<()> {
    let client = Client::new(global, Need::Team)?;
    let v: Value = client
        .json(
            client
                .request(Method::POST, client.url("v1/sandboxes")?)
                .json(&create_body(&c)),
        )
        .await?;
    if c.json {
        output::json(&v);
    } else {
        println!(
            "{}",
            v["id"].as_str().context("response has no sandbox id")?
        );
    }
    Ok(())
}

pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.global, Need::Team)?;
    let mut query: Vec<(String, String)> = Vec::new();
    if let Some(s) = &args.status {
        query.push(("status".into(), s.clone()));
    }
    for (k, v) in &args.metadata {
        query.push((format!("metadata.{k}"), v.clone()));
    }
    let q: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sandboxes = client.list_all("v1/sandboxes", "sandboxes", &q).await?;
    if args.json {
        output::json(&Value::Array(sandboxes));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|s| {
            vec![
                output::cell(&s["id"]),
                output::cell(&s["status"]),
                output::cell(&s["template"]),
                output::cell(&s["vcpus"]),
                output::cell(&s["memory_mb"]),
                output::age(&s["created_at"]),
                metadata_cell(&s["metadata"]),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "STATUS",
            "TEMPLATE",
            "VCPUS",
            "MEMORY_MB",
            "CREATED",
            "METADATA",
        ],
        &rows,
    );
    Ok(())
}

fn metadata_cell(m: &Value) -> String {
    match m.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", output::cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn print_details(v: &Value) {
    let mut rows = Vec::new();
    for key in [
        "id",
        "status",
        "template",
        "vcpus",
        "memory_mb",
        "disk_size_mb",
        "timeout_sec",
        "on_timeout",
        "host_id",
        "host_ip",
        "envd_version",
        "error",
    ] {
        rows.push(vec![key.to_owned(), output::cell(&v[key])]);
    }
    rows.push(vec!["metadata".into(), metadata_cell(&v["metadata"])]);
    for key in ["created_at", "started_at", "last_active_at"] {
        rows.push(vec![key.to_owned(), format_ago(&v[key])]);
    }
    let end = match v["end_at"].as_i64() {
        Some(ms) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            format!("in {}", output::human_secs((ms - now).max(0) / 1000))
        }
        None => "never".into(),
    };
    rows.push(vec!["end_at".into(), end]);
    print!(
        "{}",
        output::render_table(&["FIELD", "VALUE"], &rows)
            .split_once('\n')
            .map(|(_, rest)| rest)
            .unwrap_or("")
    );
}

fn format_ago(ms: &Value) -> String {
    match ms.as_i64() {
        Some(_) => format!("{} ago", output::age(ms)),
        None => "-".into(),
    }
}

pub async fn rm(args: RmArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.global, Need::Team)?;
    let mut failed = None;
    for id in &args.ids {
        let url = client.url(&format!("v1/sandboxes/{}", seg(id)))?;
        match client.send(client.request(Method::DELETE, url)).await {
            Ok(_) => println!("{id}"),
            // Keep going: one bad ID should not leave the rest running.
            Err(e) => {
                eprintln!("error: {id}: {e:#}");
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) if args.ids.len() == 1 => Err(e),
        Some(_) => anyhow::bail!("some sandboxes were not removed"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_sends_only_what_was_set() {
        let c = CreateArgs {
            template: "base".into(),
            vcpus: None,
            memory_mb: Some(256),
            disk_size_mb: None,
            timeout: Some(0),
            env: vec![("A".into(), "1".into())],
            metadata: vec![],
            allow_internet: false,
            json: false,
        };
        assert_eq!(
            create_body(&c),
            json!({"template": "base", "memory_mb": 256, "timeout_sec": 0, "env": {"A": "1"}})
        );
    }
}
