//! Who this agent is to its control plane, and staying known to it.
//!
//! Three ways to start (DESIGN §7, spec §6.1–6.2):
//! - `--register <token> --cp-url <url>`: present the one-time token at
//!   `POST /v1/hosts/register`; the answer (host ID, host JWT, refresh token, the control
//!   plane's public key, the credential generation) is kept in `host-credentials.json` under
//!   the files root (0600, written atomically). A refused token (used: e.g. still in the
//!   service's settings at a restart) with a credentials file present starts from the file.
//! - neither flag but a credentials file: start as the host it names.
//! - `--host-id` + `--cp-public-key` (tests, static setups): no control plane to talk to.
//!
//! With credentials, [`heartbeat`] keeps the host online and rotates its tokens.
//!
//! The control plane is called over HTTPS unless it is on this machine, and trusted by what
//! the operator gave with the token (`--cp-fingerprint` or `--cp-ca`), never by what the
//! channel says; the choice is kept in the credentials file. An agent that serves TLS
//! registers an `https://` address with its certificate's fingerprint, which the control plane
//! pins.

pub mod cp_http;
pub mod heartbeat;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::CpVerifier;
use crate::config::AgentConfig;
pub use cp_http::CpClient;

/// File name of the credentials under the files root.
pub const CREDENTIALS_FILE: &str = "host-credentials.json";
/// Deadline of each call to the control plane.
pub const CP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "no identity: pass --register <token> with --cp-url, or --host-id with --cp-public-key, or keep {CREDENTIALS_FILE} under the files root"
    )]
    NoIdentity,
    #[error("--register needs --cp-url")]
    NoCpUrl,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("control plane at {url}: {source}")]
    Http {
        url: String,
        source: cp_http::CallError,
    },
    #[error("control plane refused {what} ({status}): {message}")]
    Refused {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("control-plane public key: {0}")]
    Key(#[from] crate::auth::AuthError),
    #[error(
        "{url}: an https:// control plane needs --cp-fingerprint or --cp-ca (given with the registration token)"
    )]
    NoCpTrust { url: String },
    #[error(
        "{url}: plain HTTP only to a control plane on this machine; use its https:// URL with --cp-fingerprint or --cp-ca"
    )]
    PlainCpUrl { url: String },
    #[error("--cp-url {url:?} is not an http(s) URL")]
    BadCpUrl { url: String },
    #[error("--cp-fingerprint: {0}")]
    Fingerprint(#[from] wrenn_tls::PinError),
    #[error("--cp-ca {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("TLS client: {0}")]
    Tls(#[from] rustls::Error),
}

/// How this agent trusts its control plane's HTTPS certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpTrust {
    /// Exactly the certificate with this fingerprint (`sha256:…`).
    Fingerprint(String),
    /// Certificates signed by these CAs (PEM) for the URL's host name.
    Ca(String),
}

/// The trust given by flags, if any.
pub fn trust_from_config(cfg: &AgentConfig) -> Result<Option<CpTrust>, RegistrationError> {
    if let Some(fp) = &cfg.cp_fingerprint {
        return Ok(Some(CpTrust::Fingerprint(wrenn_tls::parse_fingerprint(
            fp,
        )?)));
    }
    let Some(path) = &cfg.cp_ca else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path).map_err(|source| RegistrationError::Io {
        path: path.clone(),
        source,
    })?;
    ca_roots(&pem).map_err(|reason| RegistrationError::Ca {
        path: path.clone(),
        reason,
    })?;
    Ok(Some(CpTrust::Ca(pem)))
}

fn ca_roots(pem: &str) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(roots)
}

/// The TLS client configuration of `trust`. The control plane's listener speaks HTTP/1.1
/// (its sandbox proxy routes on `Host`).
fn tls_config(trust: &CpTrust) -> Result<rustls::ClientConfig, RegistrationError> {
    let alpn: &[&[u8]] = &[b"http/1.1"];
    Ok(match trust {
        CpTrust::Fingerprint(fp) => wrenn_tls::client_config(fp, alpn)?,
        CpTrust::Ca(pem) => {
            let roots = ca_roots(pem).map_err(|reason| RegistrationError::Ca {
                path: PathBuf::from("(credentials file)"),
                reason,
            })?;
            let mut c = rustls::ClientConfig::builder_with_provider(wrenn_tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            c
        }
    })
}

/// What the control plane gave us at registration (and updates on refresh).
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub host_id: String,
    pub cp_url: String,
    pub host_jwt: String,
    /// Unix seconds.
    pub host_jwt_expires_at: u64,
    pub refresh_token: String,
    pub cp_public_key: String,
    pub credential_gen: u64,
    /// How the control plane's certificate is trusted (absent: plain HTTP on loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cp_trust: Option<CpTrust>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("host_id", &self.host_id)
            .field("cp_url", &self.cp_url)
            .field("credential_gen", &self.credential_gen)
            .finish_non_exhaustive()
    }
}

/// The answer of `/v1/hosts/register` and `/v1/hosts/auth/refresh` (fields we use).
#[derive(Deserialize)]
struct CredentialsResponse {
    host: HostRef,
    host_jwt: String,
    host_jwt_expires_at: u64,
    refresh_token: String,
    cp_public_key: String,
    credential_gen: u64,
}

#[derive(Deserialize)]
struct HostRef {
    id: String,
}

impl CredentialsResponse {
    fn into_credentials(self, cp_url: &str, cp_trust: Option<CpTrust>) -> Credentials {
        Credentials {
            host_id: self.host.id,
            cp_url: cp_url.to_owned(),
            host_jwt: self.host_jwt,
            host_jwt_expires_at: self.host_jwt_expires_at,
            refresh_token: self.refresh_token,
            cp_public_key: self.cp_public_key,
            credential_gen: self.credential_gen,
            cp_trust,
        }
    }
}

/// The agent's identity, resolved at start.
#[derive(Debug)]
pub struct Identity {
    pub host_id: String,
    pub verifier: CpVerifier,
    /// Enforced on every control-plane token when set (registered hosts).
    pub generation: Option<u64>,
    /// Present for registered hosts: drives the heartbeat.
    pub credentials: Option<Credentials>,
}

pub fn credentials_path(root: &Path) -> PathBuf {
    root.join(CREDENTIALS_FILE)
}

/// Resolves the identity per the module docs, registering when asked to.
///
/// `rpc_fingerprint`: the certificate the RPC listener serves, when it serves TLS.
pub async fn resolve(
    cfg: &AgentConfig,
    rpc_fingerprint: Option<&str>,
) -> Result<Identity, RegistrationError> {
    let path = credentials_path(&cfg.root);
    let trust = trust_from_config(cfg)?;
    if let Some(token) = &cfg.register {
        let cp_url = cfg.cp_url.as_deref().ok_or(RegistrationError::NoCpUrl)?;
        let creds = match register(cfg, cp_url, trust.clone(), token, rpc_fingerprint).await {
            Ok(c) => c,
            // A one-time token left in the service's settings: a restart must not fail
            // when this host already registered with it (or with an earlier one).
            Err(RegistrationError::Refused { status: 401, .. })
                if matches!(load(&path), Ok(Some(_))) =>
            {
                tracing::warn!(
                    "registration token refused (used or expired); continuing with the saved credentials"
                );
                let mut creds = load(&path)?.ok_or(RegistrationError::NoIdentity)?;
                creds.cp_url = cp_url.trim_end_matches('/').to_owned();
                if trust.is_some() {
                    creds.cp_trust = trust;
                }
                return from_credentials(creds);
            }
            Err(e) => return Err(e),
        };
        save(&path, &creds)?;
        tracing::info!(host_id = %creds.host_id, cp_url, "registered with the control plane");
        return from_credentials(creds);
    }
    if let Some(mut creds) = load(&path)? {
        if let Some(url) = &cfg.cp_url {
            creds.cp_url = url.trim_end_matches('/').to_owned();
        }
        if trust.is_some() {
            creds.cp_trust = trust;
        }
        return from_credentials(creds);
    }
    match (&cfg.host_id, &cfg.cp_public_key) {
        (Some(host_id), Some(key)) => {
            let pem = std::fs::read_to_string(key).map_err(|source| RegistrationError::Io {
                path: key.clone(),
                source,
            })?;
            Ok(Identity {
                host_id: host_id.clone(),
                verifier: CpVerifier::from_public_pem(&pem)?,
                generation: None,
                credentials: None,
            })
        }
        _ => Err(RegistrationError::NoIdentity),
    }
}

fn from_credentials(creds: Credentials) -> Result<Identity, RegistrationError> {
    // Refuse at start, not at the first heartbeat: a URL and trust that cannot work.
    CpClient::new(&creds.cp_url, creds.cp_trust.as_ref(), CP_CALL_TIMEOUT)?;
    Ok(Identity {
        host_id: creds.host_id.clone(),
        verifier: CpVerifier::from_public_pem(&creds.cp_public_key)?,
        generation: Some(creds.credential_gen),
        credentials: Some(creds),
    })
}

async fn register(
    cfg: &AgentConfig,
    cp_url: &str,
    trust: Option<CpTrust>,
    token: &str,
    rpc_fingerprint: Option<&str>,
) -> Result<Credentials, RegistrationError> {
    let cp_url = cp_url.trim_end_matches('/');
    let addr = cfg
        .advertise_addr
        .map_or_else(|| cfg.listen.to_string(), |a| a.to_string());
    let address = match rpc_fingerprint {
        Some(_) => format!("https://{addr}"),
        None => addr,
    };
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty() && h.len() <= 64);
    let body = serde_json::json!({
        "token": token,
        "name": name,
        "address": address,
        "tls_fingerprint": rpc_fingerprint,
        "specs": specs(),
    });
    let client = CpClient::new(cp_url, trust.as_ref(), CP_CALL_TIMEOUT)?;
    let resp = post(&client, cp_url, "/v1/hosts/register", &body, "registration").await?;
    Ok(resp.into_credentials(cp_url, trust))
}

/// Rotates the refresh token and gets a new host JWT.
pub async fn refresh(creds: &Credentials) -> Result<Credentials, RegistrationError> {
    let body = serde_json::json!({
        "host_id": creds.host_id,
        "refresh_token": creds.refresh_token,
    });
    let client = CpClient::new(&creds.cp_url, creds.cp_trust.as_ref(), CP_CALL_TIMEOUT)?;
    let resp = post(
        &client,
        &creds.cp_url,
        "/v1/hosts/auth/refresh",
        &body,
        "refresh",
    )
    .await?;
    Ok(resp.into_credentials(&creds.cp_url, creds.cp_trust.clone()))
}

async fn post(
    client: &cp_http::CpClient,
    cp_url: &str,
    path: &str,
    body: &serde_json::Value,
    what: &'static str,
) -> Result<CredentialsResponse, RegistrationError> {
    let url = format!("{cp_url}{path}");
    let answer =
        client
            .post_json(path, None, body)
            .await
            .map_err(|source| RegistrationError::Http {
                url: url.clone(),
                source,
            })?;
    if !(200..300).contains(&answer.status) {
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v["error"]["message"]
                    .as_str()
                    .or(v["message"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or(text);
        return Err(RegistrationError::Refused {
            what,
            status: answer.status,
            message,
        });
    }
    serde_json::from_slice(&answer.body).map_err(|source| RegistrationError::Parse {
        path: PathBuf::from(url),
        source,
    })
}

fn specs() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = procfs_mem_bytes();
    serde_json::json!({
        "cpu_count": cpus,
        "memory_bytes": mem,
        "arch": std::env::consts::ARCH,
    })
}

fn procfs_mem_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Loads the credentials file; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Credentials>, RegistrationError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RegistrationError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| RegistrationError::Parse {
            path: path.to_owned(),
            source,
        })
}

/// Writes the credentials: temp file (0600) → fsync → rename → fsync of the directory, so a
/// crash leaves the old file or the new one, never half of one.
pub fn save(path: &Path, creds: &Credentials) -> Result<(), RegistrationError> {
    let io = |source| RegistrationError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(creds).map_err(|source| RegistrationError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn plain_http_only_to_loopback_and_https_only_with_a_trust() {
        let t = CP_CALL_TIMEOUT;
        for ok in [
            "http://127.0.0.1:8080",
            "http://[::1]:1",
            "http://localhost:9",
        ] {
            assert!(CpClient::new(ok, None, t).is_ok(), "{ok}");
        }
        assert!(matches!(
            CpClient::new("http://10.0.0.1:8080", None, t),
            Err(RegistrationError::PlainCpUrl { .. })
        ));
        assert!(matches!(
            CpClient::new("https://10.0.0.1:8080", None, t),
            Err(RegistrationError::NoCpTrust { .. })
        ));
        let fp = CpTrust::Fingerprint(wrenn_tls::fingerprint(b"c"));
        assert!(CpClient::new("https://10.0.0.1:8080", Some(&fp), t).is_ok());
        assert!(matches!(
            CpClient::new("ftp://10.0.0.1", Some(&fp), t),
            Err(RegistrationError::BadCpUrl { .. })
        ));
        let not_pem = CpTrust::Ca("nothing".into());
        assert!(CpClient::new("https://cp.example", Some(&not_pem), t).is_err());
    }

    #[test]
    fn credentials_round_trip_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = credentials_path(dir.path());
        assert!(load(&path).unwrap().is_none());
        let c = Credentials {
            host_id: "host-x".into(),
            cp_url: "http://127.0.0.1:8080".into(),
            host_jwt: "j".into(),
            host_jwt_expires_at: 1,
            refresh_token: "r".into(),
            cp_public_key: "k".into(),
            credential_gen: 3,
            cp_trust: Some(CpTrust::Fingerprint(wrenn_tls::fingerprint(b"c"))),
        };
        save(&path, &c).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.host_id, "host-x");
        assert_eq!(back.credential_gen, 3);
        assert_eq!(back.cp_trust, c.cp_trust);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Debug never prints the secrets.
        assert!(!format!("{c:?}").contains("\"r\""));
    }
}
