//! A VM's saved state as QEMU's migration stream in a file: `save` writes a stopped VM's
//! device state and RAM, `load` feeds the file to a QEMU started with `-incoming defer`.
//! The agent opens the file and passes QEMU the descriptor (`fd:` URI): QEMU runs as an
//! unprivileged user that cannot reach the agent's files (and QEMU 7.2 has no `file:` URI).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::qmp::QmpClient;
use super::{StateKind, VmmError};

/// Save at disk speed: QEMU's default bandwidth cap (128 MiB/s) is for live migration over a
/// network, not for a stopped VM going to a local file.
const MAX_BANDWIDTH: u64 = 1 << 40;

/// How long a migration of `memory_mb` may take (generous: disks and TCG hosts are slow).
pub(crate) fn deadline(memory_mb: u32) -> Duration {
    Duration::from_secs(60 + u64::from(memory_mb) / 16)
}

/// The name the state file's descriptor goes by in QEMU (`getfd`); QEMU drops it once the
/// migration took it.
const FD_NAME: &str = "wrenn-state";

fn open_error(path: &Path, e: std::io::Error) -> VmmError {
    VmmError::Migration(format!("{}: {e}", path.display()))
}

/// Writes the stopped VM's state to `path` (created or truncated) and waits until done.
pub(crate) async fn save(
    qmp: &QmpClient,
    path: &Path,
    memory_mb: u32,
    kind: StateKind,
) -> Result<(), VmmError> {
    set_kind(qmp, kind).await?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": MAX_BANDWIDTH })),
    )
    .await?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    qmp.pass_fd(FD_NAME, &file).await?;
    qmp.execute("migrate", Some(json!({ "uri": format!("fd:{FD_NAME}") })))
        .await?;
    wait_completed(qmp, deadline(memory_mb)).await
}

/// Loads `path` into a QEMU waiting with `-incoming defer` and waits until done.
pub(crate) async fn load(
    qmp: &QmpClient,
    path: &Path,
    memory_mb: u32,
    kind: StateKind,
) -> Result<(), VmmError> {
    set_kind(qmp, kind).await?;
    let file = std::fs::File::open(path).map_err(|e| open_error(path, e))?;
    qmp.pass_fd(FD_NAME, &file).await?;
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("fd:{FD_NAME}") })),
    )
    .await?;
    wait_completed(qmp, deadline(memory_mb)).await
}

/// Both ends must agree: `x-ignore-shared` changes the stream's format.
async fn set_kind(qmp: &QmpClient, kind: StateKind) -> Result<(), VmmError> {
    let on = kind == StateKind::DevicesOnly;
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] })),
    )
    .await?;
    Ok(())
}

async fn wait_completed(qmp: &QmpClient, within: Duration) -> Result<(), VmmError> {
    let start = tokio::time::Instant::now();
    loop {
        let r = qmp.execute("query-migrate", None).await?;
        match r.get("status").and_then(|s| s.as_str()) {
            Some("completed") => return Ok(()),
            Some(s @ ("failed" | "cancelled")) => {
                let why = r
                    .get("error-desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("no reason given");
                return Err(VmmError::Migration(format!("{s}: {why}")));
            }
            _ => {}
        }
        if start.elapsed() > within {
            let _ = qmp.execute("migrate_cancel", None).await;
            return Err(VmmError::Migration(format!(
                "not completed within {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
