//! A VM's saved state as QEMU's migration stream in a file: `save` writes a stopped VM's
//! device state and RAM, `load` feeds the file to a QEMU started with `-incoming defer`.
//! QEMU 7.2 (Debian 12) has no `file:` URI yet, so the stream goes through `exec:cat`.

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

/// `path` as one single-quoted shell word.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
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
    qmp.execute(
        "migrate",
        Some(json!({ "uri": format!("exec:cat > {}", sh_quote(path)) })),
    )
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
    qmp.execute(
        "migrate-incoming",
        Some(json!({ "uri": format!("exec:cat {}", sh_quote(path)) })),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_one_shell_word() {
        assert_eq!(sh_quote(Path::new("/a b/c")), "'/a b/c'");
        assert_eq!(sh_quote(Path::new("/it's")), r"'/it'\''s'");
    }
}
