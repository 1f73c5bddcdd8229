//! Snapshot templates: a running or paused sandbox frozen into a template that new sandboxes
//! start from, with its memory (processes, tmpfs, caches) and disk as they were. Kept in the
//! warm-base format under `snapshots/<team>/<name>/`, so sandboxes made from it are clones as
//! cheap as any create: RAM mapped copy-on-write from `memory`, devices from `vm.state`, an
//! overlay on `disk.qcow2` (the source's whole disk chain flattened into one file, so chains of
//! templates of templates never grow). A template lives on the host that made it.

use std::path::{Path, PathBuf};

use tracing::{Instrument, info, info_span, warn};
use wrenn_proto::hostagent::v1 as pb;

use super::record::State;
use super::warm::{self, Shape};
use super::{Manager, envd_url, internal, now_ms, pause::STATE_FILE, template};
use crate::envd_client::EnvdClient;
use crate::rpc::BackendError;
use crate::storage;
use crate::vmm::{MemoryFile, StateKind, VmSpec, spec_file};

/// Team IDs name a directory: the same characters as template names.
fn valid_team(team: &str) -> bool {
    template::valid_name(team)
}

impl Manager {
    fn snapshot_dir(&self, team_id: &str, name: &str) -> Result<PathBuf, BackendError> {
        if !template::valid_name(name) {
            return Err(BackendError::InvalidArgument(format!(
                "template name {name:?} must be 1-64 characters of [A-Za-z0-9_-]"
            )));
        }
        if !valid_team(team_id) {
            return Err(BackendError::InvalidArgument(
                "team_id must be 1-64 characters of [A-Za-z0-9_-]".into(),
            ));
        }
        Ok(self.cfg.root.join("snapshots").join(team_id).join(name))
    }

    /// The team's snapshot template `name` on this host, if there is one.
    pub(super) fn snapshot_template(&self, team_id: &str, name: &str) -> Option<warm::WarmBase> {
        warm::load(&self.snapshot_dir(team_id, name).ok()?)
    }

    /// Freezes sandbox `id` into the team's template `name`. A running sandbox is paused for
    /// the copy and resumed afterwards; a paused one stays paused.
    pub async fn snapshot_sandbox(
        &self,
        id: &str,
        name: &str,
        team_id: &str,
    ) -> Result<pb::SnapshotInfo, BackendError> {
        let dest = self.snapshot_dir(team_id, name)?;
        if dest.exists() {
            return Err(BackendError::AlreadyExists(format!(
                "template {name} already exists"
            )));
        }
        if !self.claim(id) {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is busy: a create, pause or resume is in progress"
            )));
        }
        let r = async {
            let was_running = self.live.read().await.contains_key(id);
            if was_running {
                self.pause_claimed(id).await?;
            }
            let made = self.freeze(id, name, &dest).await;
            if was_running && let Err(e) = self.resume_claimed(id).await {
                warn!(error = %e, "resume after the snapshot");
            }
            made
        }
        .instrument(info_span!("snapshot", sandbox_id = %id, template = %name))
        .await;
        self.release_claim(id);
        r
    }

    /// Turns paused sandbox `id`'s full state into a template in `dest`: its disk flattened,
    /// its state loaded into a QEMU whose RAM is the template's `memory` file (left stopped)
    /// and saved again with devices only.
    async fn freeze(
        &self,
        id: &str,
        name: &str,
        dest: &Path,
    ) -> Result<pb::SnapshotInfo, BackendError> {
        let parked = self.parked.read().await.get(id).cloned();
        let Some(parked) = parked else {
            return Err(BackendError::NotFound(format!("sandbox {id} not found")));
        };
        if parked.rec.state != State::Paused {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} cannot be snapshotted: {}",
                parked
                    .rec
                    .error
                    .clone()
                    .unwrap_or_else(|| "not paused".into())
            )));
        }
        let started = std::time::Instant::now();
        let saved: VmSpec = std::fs::read(spec_file(&parked.dir.join("run")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| BackendError::Internal("the paused VM's spec is unreadable".into()))?;
        let mut building = dest.as_os_str().to_owned();
        building.push(".building");
        let building = PathBuf::from(building);
        let _ = std::fs::remove_dir_all(&building);
        std::fs::create_dir_all(&building).map_err(|e| internal("template dir", &e))?;
        let made = async {
            let disk = building.join(warm::DISK);
            storage::flatten(&parked.dir.join("rootfs.qcow2"), &disk)
                .await
                .map_err(|e| internal("flatten the disk", &e))?;
            let net = self.scratch_net().await?;
            // Not under `building`: a team ID and a 64-character name would push the QMP
            // socket past the 108 bytes a Unix socket path may have.
            let run_dir = scratch_run_dir(&self.cfg.root, dest);
            let spec = VmSpec {
                sandbox_id: format!("snap-{name}"),
                root_disk: disk,
                netns: Some(net.netns.clone()),
                tap: Some(net.tap.clone()),
                guest_mac: Some(net.guest_mac.clone()),
                run_dir: run_dir.clone(),
                memory_file: Some(MemoryFile {
                    path: building.join(warm::MEMORY),
                    shared: true,
                }),
                uid: Some(self.vm_uid(net.slot)),
                ..saved
            };
            let converted = async {
                let vm = self
                    .vmm
                    .restore_stopped(&spec, &parked.dir.join(STATE_FILE), StateKind::Full)
                    .await
                    .map_err(|e| internal("load the paused state", &e))?;
                self.vmm
                    .save(&vm, &building.join(warm::STATE), StateKind::DevicesOnly)
                    .await
                    .map_err(|e| internal("save the template's devices", &e))
                    .inspect_err(|_| {
                        let (vmm, vm) = (self.vmm.clone(), vm.clone());
                        tokio::spawn(async move { vmm.destroy(&vm).await });
                    })
            }
            .await;
            self.drop_scratch_net(net.slot).await;
            let _ = std::fs::remove_dir_all(&run_dir);
            converted?;
            let rec = &parked.rec;
            let info = warm::BaseInfo {
                key: name.to_owned(),
                template: rec.template.clone(),
                shape: Shape {
                    vcpus: rec.vcpus,
                    memory_mb: rec.memory_mb,
                    disk_size_mb: rec.disk_size_mb,
                },
                envd_version: rec.envd_version.clone(),
                made_at_ms: now_ms(),
                spec,
                envd_token: Some(rec.envd_token.clone()),
                default_user: Some(rec.default_user.clone()),
            };
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| internal("template dir", &e))?;
            }
            warm::publish(&building, dest, &info).map_err(|e| internal("publish", &e))
        }
        .await;
        let base = match made {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&building);
                return Err(e);
            }
        };
        let size = [base.memory(), base.state(), base.disk()]
            .iter()
            .filter_map(|p| storage::allocated_bytes(p).ok())
            .sum();
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            size_bytes = size,
            "snapshot template made"
        );
        Ok(pb::SnapshotInfo {
            name: name.to_owned(),
            vcpus: base.info.shape.vcpus,
            memory_mb: base.info.shape.memory_mb,
            size_bytes: size,
            ..Default::default()
        })
    }

    /// Removes the team's template `name` from this host; `NotFound` when it has none.
    pub async fn delete_snapshot(&self, name: &str, team_id: &str) -> Result<(), BackendError> {
        let dir = self.snapshot_dir(team_id, name)?;
        if !dir.exists() {
            return Err(BackendError::NotFound(format!("template {name} not found")));
        }
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| internal("remove the template", &e))
    }

    /// A clone of a snapshot template presents the token its source's envd already has.
    pub(super) fn envd_for(
        &self,
        net: &crate::network::SandboxNet,
        base: Option<&warm::WarmBase>,
    ) -> Result<EnvdClient, BackendError> {
        let token = base.and_then(|b| b.info.envd_token.as_deref());
        EnvdClient::new(&envd_url(net), token).map_err(|e| internal("envd client", &e))
    }
}

/// A short run directory (QMP socket, pid file) for the VM that converts a snapshot into
/// `dest`: `<root>/tmp/snap-<hash of dest>`.
fn scratch_run_dir(root: &Path, dest: &Path) -> PathBuf {
    use sha2::Digest;
    let h = sha2::Sha256::digest(dest.as_os_str().as_encoded_bytes());
    let short: String = h.iter().take(6).map(|b| format!("{b:02x}")).collect();
    root.join("tmp").join(format!("snap-{short}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn scratch_run_dirs_are_short_and_distinct() {
        let root = std::path::Path::new("/var/lib/wrenn");
        let long = root
            .join("snapshots")
            .join("t".repeat(64))
            .join("n".repeat(64));
        let a = super::scratch_run_dir(root, &long);
        assert!(a.join("qmp.sock").as_os_str().len() < 60, "{}", a.display());
        assert_ne!(
            a,
            super::scratch_run_dir(root, &root.join("snapshots/t/other"))
        );
    }
}
