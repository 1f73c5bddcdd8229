//! The per-sandbox record persisted in `sandboxes/<id>/sandbox.json`, so a restarted agent
//! knows what it was running (and what it was half-way through making).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const RECORD_FILE: &str = "sandbox.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Create is in progress; after a crash this sandbox is half-made and gets cleaned up.
    Creating,
    Running,
    /// Running but broken (e.g. disk full), or paused with a state that cannot be restored;
    /// `error` says why.
    Error,
    /// A pause is writing the VM's state; after a crash the state file decides: renamed into
    /// place → paused, else the VM runs on.
    Pausing,
    /// No VM: its state is in `vm.state` beside the disk overlay; no network slot.
    Paused,
    /// A resume is restoring the VM into `slot`; after a crash it is paused again.
    Resuming,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub state: State,
    pub template: String,
    pub vcpus: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    pub slot: Option<u32>,
    pub created_at_ms: i64,
    /// Absolute deadline (unix ms); 0 = none.
    pub end_at_ms: i64,
    /// "kill" or "pause".
    pub on_timeout: String,
    pub team_id: String,
    pub metadata: BTreeMap<String, String>,
    pub allow_internet: bool,
    /// Opened and closed networks on top of `allow_internet` (see [`wrenn_egress`]).
    #[serde(default)]
    pub allow_out: Vec<ipnet::Ipv4Net>,
    #[serde(default)]
    pub deny_out: Vec<ipnet::Ipv4Net>,
    pub default_user: String,
    /// envd's access token (the directory is root-only; the file is 0600).
    pub envd_token: String,
    pub envd_version: String,
    pub error: Option<String>,
    /// When the sandbox was last paused (unix ms); its deadline moves on by the paused time.
    #[serde(default)]
    pub paused_at_ms: i64,
}

impl SandboxRecord {
    /// What its guest may reach.
    pub fn egress(&self) -> wrenn_egress::Egress {
        wrenn_egress::Egress {
            internet: self.allow_internet,
            allow: self.allow_out.clone(),
            deny: self.deny_out.clone(),
        }
    }
}

/// Writes the record atomically: temp file, fsync, rename, fsync of the directory.
pub fn save(dir: &Path, rec: &SandboxRecord) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(RECORD_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

pub fn load(dir: &Path) -> std::io::Result<SandboxRecord> {
    let bytes = std::fs::read(dir.join(RECORD_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}
