//! The heartbeat loop of a registered host (spec §6.2): a beat right away, then every
//! interval. A refused host JWT (401/403) or one close to expiry is rotated through the
//! refresh token and the new credentials are saved before use; a refused refresh means the
//! host's credentials were revoked, so the loop stops (the operator must register the host
//! again). A 404 means the host was deleted. Network errors are retried on the next beat.
//!
//! Each beat carries what [`Report`] produces (the host's capacity), so the scheduler places
//! sandboxes by what the host has free.
//!
//! Cut off: after [`CutOff::after`] failed beats in a row, or when the refresh is refused, the
//! loop says so once through [`CutOff::notify`] (the agent then pauses its sandboxes); a
//! successful beat arms it again.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cp_http::CpClient;
use super::{CP_CALL_TIMEOUT, Credentials, RegistrationError, refresh, save};

/// Rotate the host JWT when it has less than this left.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The refresh token was refused: credentials revoked.
    Revoked,
    /// The control plane no longer knows this host.
    HostDeleted,
}

enum Beat {
    Ok,
    Unauthorized,
    Gone,
    Failed(String),
}

/// The body of each beat, produced fresh for every beat.
pub type Report = std::sync::Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, serde_json::Value> + Send + Sync,
>;

/// How the loop reports losing the control plane.
pub struct CutOff {
    /// Failed beats in a row that count as cut off; 0 = never.
    pub after: u32,
    pub notify: std::sync::Arc<tokio::sync::Notify>,
}

impl CutOff {
    fn fire(&self, why: &str) {
        tracing::warn!(reason = why, "cut off from the control plane");
        self.notify.notify_one();
    }
}

/// Beats until the host is revoked or deleted; runs for the agent's lifetime otherwise.
pub async fn run(
    mut creds: Credentials,
    path: PathBuf,
    interval: Duration,
    cut_off: CutOff,
    report: Report,
) -> Stopped {
    let stopped = beat_loop(&mut creds, &path, interval, &cut_off, &report).await;
    if stopped == Stopped::Revoked {
        cut_off.fire("this host's credentials were revoked");
    }
    stopped
}

async fn beat_loop(
    creds: &mut Credentials,
    path: &std::path::Path,
    interval: Duration,
    cut_off: &CutOff,
    report: &Report,
) -> Stopped {
    let mut missed = 0u32;
    // A beat that hangs (a link dropping packets) counts as missed within about one
    // interval, so a cut-off agent notices after ~N intervals, not N × the call timeout.
    let timeout = interval.clamp(Duration::from_secs(2), CP_CALL_TIMEOUT);
    let client = match super::CpClient::new(&creds.cp_url, creds.cp_trust.as_ref(), timeout) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "heartbeat HTTP client");
            return Stopped::Revoked;
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if expires_soon(creds) {
            match rotate(creds, path).await {
                Ok(c) => *creds = c,
                Err(stop) => return stop,
            }
        }
        let body = report().await;
        let ok = match beat(&client, creds, &body).await {
            Beat::Ok => true,
            Beat::Unauthorized => match rotate(creds, path).await {
                Ok(c) => {
                    *creds = c;
                    match beat(&client, creds, &body).await {
                        Beat::Ok => true,
                        _ => {
                            tracing::warn!("heartbeat after refresh failed");
                            false
                        }
                    }
                }
                Err(stop) => return stop,
            },
            Beat::Gone => {
                tracing::error!(host_id = %creds.host_id, "the control plane no longer knows this host; heartbeats stop");
                return Stopped::HostDeleted;
            }
            Beat::Failed(e) => {
                tracing::warn!(host_id = %creds.host_id, error = %e, "heartbeat failed; retrying next beat");
                false
            }
        };
        if ok {
            missed = 0;
        } else {
            missed = missed.saturating_add(1);
            // Exactly once per outage: at the beat that reaches the limit.
            if cut_off.after > 0 && missed == cut_off.after {
                cut_off.fire("heartbeats failed");
            }
        }
    }
}

fn expires_soon(c: &Credentials) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    c.host_jwt_expires_at < now + REFRESH_BEFORE_EXPIRY.as_secs()
}

async fn beat(client: &CpClient, c: &Credentials, body: &serde_json::Value) -> Beat {
    let path = format!("/v1/hosts/{}/heartbeat", c.host_id);
    match client.post_json(&path, Some(&c.host_jwt), body).await {
        Ok(r) if (200..300).contains(&r.status) => Beat::Ok,
        Ok(r) if matches!(r.status, 401 | 403) => Beat::Unauthorized,
        Ok(r) if r.status == 404 => Beat::Gone,
        Ok(r) => Beat::Failed(format!("HTTP {}", r.status)),
        Err(e) => Beat::Failed(e.to_string()),
    }
}

async fn rotate(c: &Credentials, path: &std::path::Path) -> Result<Credentials, Stopped> {
    match refresh(c).await {
        Ok(new) => {
            if let Err(e) = save(path, &new) {
                // Keep going with the new tokens in memory; the old refresh token in the file
                // is revoked now, so a restart would need a new registration.
                tracing::error!(error = %e, "could not save refreshed credentials");
            }
            tracing::info!(host_id = %new.host_id, "host credentials refreshed");
            Ok(new)
        }
        Err(RegistrationError::Refused {
            status: 401 | 403 | 404,
            message,
            ..
        }) => {
            tracing::error!(host_id = %c.host_id, %message, "refresh refused: this host's credentials were revoked; register it again with --register");
            Err(Stopped::Revoked)
        }
        Err(e) => {
            // Transient: keep the current credentials and try again next beat.
            tracing::warn!(error = %e, "credential refresh failed");
            Ok(c.clone())
        }
    }
}
