//! `wrenn hosts ls | token [NAME] [--platform] | rm ID [--force]`: the machines sandboxes run
//! on — the team's own (BYOC) and, for a platform admin, the platform's.

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::Global;
use crate::client::{Client, Need};
use crate::keys::seg;
use crate::output;

#[derive(Debug, Args)]
pub struct HostsArgs {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: HostsCommand,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List the hosts you can see (a platform admin's session sees every host).
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Create a host and its one-time registration token (valid 1 h); prints the token and
    /// the agent command that uses it. Needs a team owner/admin (or, with --platform, a
    /// platform admin) session.
    Token {
        /// The host's name.
        #[arg(default_value = "host")]
        name: String,
        /// A platform host (no team).
        #[arg(long)]
        platform: bool,
        /// Print the whole response object.
        #[arg(long)]
        json: bool,
    },
    /// Delete a host. Refused while sandboxes are on it (they are listed) unless --force,
    /// which destroys them; the host's agent stops.
    #[command(alias = "delete")]
    Rm {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: HostsArgs) -> anyhow::Result<()> {
    match args.command {
        HostsCommand::Ls { json } => {
            let client = Client::new(&args.global, Need::Team)?;
            let v: Value = client.get("v1/hosts").await?;
            let hosts = v.as_array().cloned().unwrap_or_default();
            if json {
                output::json(&Value::Array(hosts));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    vec![
                        output::cell(&h["id"]),
                        output::cell(&h["name"]),
                        output::cell(&h["status"]),
                        if h["team_id"].is_null() {
                            "platform".to_owned()
                        } else {
                            output::cell(&h["team_id"])
                        },
                        output::cell(&h["address"]),
                        output::age(&h["last_heartbeat_at"]),
                    ]
                })
                .collect();
            output::table(
                &["ID", "NAME", "STATUS", "OWNER", "ADDRESS", "LAST HEARTBEAT"],
                &rows,
            );
        }
        HostsCommand::Token {
            name,
            platform,
            json,
        } => {
            let client = Client::new(&args.global, Need::User)?;
            let v: Value = client
                .json(
                    client
                        .request(Method::POST, client.url("v1/hosts/registration-tokens")?)
                        .json(&json!({ "name": name, "platform": platform })),
                )
                .await?;
            if json {
                output::json(&v);
                return Ok(());
            }
            let token = v["registration_token"]
                .as_str()
                .context("response has no registration_token")?;
            println!("{token}");
            // The pin travels with the token: the agent never trusts what the channel says.
            let pin = v["cp_tls_fingerprint"]
                .as_str()
                .map(|fp| format!(" --cp-fingerprint {fp}"))
                .unwrap_or_default();
            eprintln!(
                "Host {} ({}) is pending. On the machine, within the hour (shown once):\n  \
                 sudo wrenn agent --cp-url {}{pin} --register {token}",
                output::cell(&v["host"]["id"]),
                output::cell(&v["host"]["name"]),
                client.base_str(),
            );
        }
        HostsCommand::Rm { id, force } => {
            let client = Client::new(&args.global, Need::User)?;
            let mut url = client.url(&format!("v1/hosts/{}", seg(&id)))?;
            if force {
                url.set_query(Some("force=true"));
            }
            client.send(client.request(Method::DELETE, url)).await?;
            eprintln!("Deleted host {id}");
        }
    }
    Ok(())
}
