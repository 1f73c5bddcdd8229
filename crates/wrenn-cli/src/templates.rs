//! `wrenn templates`: what sandboxes can be created from.

use clap::Args;
use serde_json::Value;

use crate::Global;
use crate::client::{Client, Need};
use crate::output;

#[derive(Debug, Args)]
pub struct TemplatesArgs {
    #[command(flatten)]
    pub global: Global,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: TemplatesArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.global, Need::Team)?;
    let v: Value = client.get("v1/templates").await?;
    let templates = v["templates"].as_array().cloned().unwrap_or_default();
    if args.json {
        output::json(&Value::Array(templates));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = templates
        .iter()
        .map(|t| {
            vec![
                output::cell(&t["name"]),
                output::cell(&t["type"]),
                output::cell(&t["vcpus"]),
                output::cell(&t["memory_mb"]),
                if t["platform"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    output::table(&["NAME", "TYPE", "VCPUS", "MEMORY_MB", "PLATFORM"], &rows);
    Ok(())
}
