//! `wrenn keys ls | create NAME | rm ID`: the team's API keys (user session only).

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::Global;
use crate::client::{Client, Need};
use crate::output;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the team's active keys.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Create a key; prints it (shown this once).
    Create {
        name: String,
        /// Print the whole response object.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by ID.
    #[command(alias = "revoke")]
    Rm { id: String },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.global, Need::User)?;
    match args.command {
        KeysCommand::Ls { json } => {
            let keys = client.list_all("v1/api-keys", "items", &[]).await?;
            if json {
                output::json(&Value::Array(keys));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        output::cell(&k["id"]),
                        output::cell(&k["name"]),
                        format!("{}…", output::cell(&k["prefix"])),
                        output::age(&k["created_at"]),
                        output::age(&k["last_used_at"]),
                    ]
                })
                .collect();
            output::table(&["ID", "NAME", "PREFIX", "CREATED", "LAST USED"], &rows);
        }
        KeysCommand::Create { name, json } => {
            let v: Value = client
                .json(
                    client
                        .request(Method::POST, client.url("v1/api-keys")?)
                        .json(&json!({ "name": name })),
                )
                .await?;
            if json {
                output::json(&v);
                return Ok(());
            }
            let key = v["key"].as_str().context("response has no key")?;
            println!("{key}");
            eprintln!(
                "Created key {} ({}). Store it now: it is not shown again.",
                output::cell(&v["id"]),
                output::cell(&v["name"])
            );
        }
        KeysCommand::Rm { id } => {
            let url = client.url(&format!("v1/api-keys/{}", seg(&id)))?;
            client.send(client.request(Method::DELETE, url)).await?;
            eprintln!("Revoked {id}");
        }
    }
    Ok(())
}

/// One path segment from user input: anything that would change the path is escaped.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_escaped() {
        assert_eq!(super::seg("key-1_a"), "key-1_a");
        assert_eq!(super::seg("../x?y"), "..%2Fx%3Fy");
    }
}
