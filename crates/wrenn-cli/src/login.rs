//! `wrenn login`: email + password → session token, or an API key checked against the API.
//! Either replaces whatever was saved before, so one identity is in effect at a time.

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use crate::Global;
use crate::client::{Auth, Client, resolve_url};
use crate::config::{self, Config};
use crate::term;

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub global: Global,
    /// Account email (prompted for when missing).
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

pub async fn run(args: LoginArgs) -> anyhow::Result<()> {
    let path = config::path()?;
    let old = Config::load(&path)?;
    let url = resolve_url(&args.global, &old);
    let password_login = args.email.is_some() || args.password_stdin;
    let cfg = match (&args.global.api_key, password_login) {
        (Some(key), false) => key_login(&url, key).await?,
        _ => password(&url, args.email, args.password_stdin).await?,
    };
    cfg.save(&path)?;
    Ok(())
}

async fn key_login(url: &str, key: &str) -> anyhow::Result<Config> {
    let key = key.trim();
    if !key.starts_with("wrn_") {
        bail!("API keys start with wrn_");
    }
    let client = Client::with_auth(url, Auth::ApiKey(key.to_owned()))?;
    // Any team-scoped route that accepts keys proves the key; this one exists everywhere.
    let url_ = client.url("v1/api-keys?limit=1")?;
    let _: Value = client.json(client.request(Method::GET, url_)).await?;
    println!(
        "Logged in to {} with API key {}…",
        client.base_str(),
        key.get(..12).unwrap_or(key)
    );
    Ok(Config {
        url: Some(client.base_str()),
        api_key: Some(key.to_owned()),
        ..Config::default()
    })
}

async fn password(
    url: &str,
    email: Option<String>,
    password_stdin: bool,
) -> anyhow::Result<Config> {
    let client = Client::with_auth(url, Auth::None)?;
    let email = match email {
        Some(e) => e,
        None if password_stdin => bail!("--password-stdin needs --email"),
        None => term::prompt("Email", false).await?,
    };
    let password = if password_stdin {
        tokio::task::spawn_blocking(|| term::read_line("password"))
            .await
            .context("reader thread")??
    } else {
        term::prompt("Password", true).await?
    };
    let v: Value = client
        .json(
            client
                .request(Method::POST, client.url("v1/auth/login")?)
                .json(&json!({"email": email, "password": password})),
        )
        .await?;
    let token = v["token"]
        .as_str()
        .context("login response has no token")?
        .to_owned();
    let email = v["user"]["email"].as_str().unwrap_or(&email).to_owned();
    match v["team"]["name"].as_str() {
        Some(team) => println!(
            "Logged in to {} as {email} (team {team})",
            client.base_str()
        ),
        None => println!("Logged in to {} as {email}", client.base_str()),
    }
    Ok(Config {
        url: Some(client.base_str()),
        token: Some(token),
        token_expires_at: v["expires_at"].as_u64(),
        email: Some(email),
        api_key: None,
    })
}
