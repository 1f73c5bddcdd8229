//! `wrenn snapshot create ID NAME | ls | rm NAME [--force]`: the team's snapshot templates.

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::Global;
use crate::client::{Client, Need};
use crate::keys::seg;
use crate::output;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Freeze a running (paused for the copy, then resumed) or paused sandbox into template
    /// NAME; `wrenn sandbox create --template NAME` starts from it.
    Create {
        sandbox_id: String,
        name: String,
        /// Print the whole response object.
        #[arg(long)]
        json: bool,
    },
    /// List the team's snapshot templates.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot template from every host that holds it. Refused while sandboxes use
    /// it (they are listed) unless --force.
    #[command(alias = "delete")]
    Rm {
        name: String,
        /// Delete even while sandboxes use it (they keep running).
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.global, Need::Team)?;
    match args.command {
        SnapshotCommand::Create {
            sandbox_id,
            name,
            json,
        } => {
            let v: Value = client
                .json(
                    client
                        .request(Method::POST, client.url("v1/snapshots")?)
                        .json(&json!({ "sandbox_id": sandbox_id, "name": name })),
                )
                .await?;
            if json {
                output::json(&v);
            } else {
                println!("{}", v["name"].as_str().context("response has no name")?);
                eprintln!(
                    "Snapshot of {sandbox_id}: {} vCPUs, {} MiB, {} on disk",
                    output::cell(&v["vcpus"]),
                    output::cell(&v["memory_mb"]),
                    human_bytes(v["size_bytes"].as_i64().unwrap_or(0)),
                );
            }
        }
        SnapshotCommand::Ls { json } => {
            let v: Value = client.get("v1/snapshots").await?;
            let templates = v["templates"].as_array().cloned().unwrap_or_default();
            if json {
                output::json(&Value::Array(templates));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = templates
                .iter()
                .map(|t| {
                    vec![
                        output::cell(&t["name"]),
                        output::cell(&t["vcpus"]),
                        output::cell(&t["memory_mb"]),
                        output::cell(&t["disk_size_mb"]),
                        human_bytes(t["size_bytes"].as_i64().unwrap_or(0)),
                    ]
                })
                .collect();
            output::table(&["NAME", "VCPUS", "MEMORY_MB", "DISK_MB", "SIZE"], &rows);
        }
        SnapshotCommand::Rm { name, force } => {
            let mut url = client.url(&format!("v1/snapshots/{}", seg(&name)))?;
            if force {
                url.set_query(Some("force=true"));
            }
            client.send(client.request(Method::DELETE, url)).await?;
            eprintln!("Deleted {name}");
        }
    }
    Ok(())
}

fn human_bytes(n: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let n = n.max(0) as f64;
    if n >= 1024.0 * MIB {
        format!("{:.1} GiB", n / (1024.0 * MIB))
    } else {
        format!("{:.1} MiB", n / MIB)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::human_bytes(0), "0.0 MiB");
        assert_eq!(super::human_bytes(300 << 20), "300.0 MiB");
        assert_eq!(super::human_bytes(3 << 29), "1.5 GiB");
    }
}
