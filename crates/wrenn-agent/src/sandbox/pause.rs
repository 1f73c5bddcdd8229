//! Pause and resume. A paused sandbox has no VM, network or slot: its device state and memory
//! are in `vm.state` beside its disk overlay, and its record says `paused`. The record's
//! `pausing` / `resuming` states mark the two operations in flight, so that a restart after a
//! crash finishes or undoes them, never leaving a sandbox half running and half paused: a pause
//! whose state file was renamed into place is paused, else its VM goes on; a resume whose VM
//! was restored goes on running (its guest ran, so its disk moved on from the saved state),
//! else it is paused again (see `Manager::recover` and `Manager::recover_parked`).

use std::path::Path;
use std::sync::Arc;

use tracing::{Instrument, info, info_span, warn};
use wrenn_proto::hostagent::v1 as pb;

use super::record::{self, SandboxRecord, State};
use super::rollback::Rollback;
use super::{Live, Manager, Parked, envd_url, internal, now_ms};
use crate::envd_client::EnvdClient;
use crate::rpc::BackendError;
use crate::vmm::{StateKind, VmSpec, VmmError, spec_file};

/// The saved VM beside the disk overlay in a paused sandbox's directory.
pub(crate) const STATE_FILE: &str = "vm.state";

/// How long a restored guest's envd may take to answer (it was running: no boot).
const RESUMED_ENVD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Random bytes a restored guest reseeds its generator with.
const ENTROPY_BYTES: usize = 64;

impl Manager {
    /// Pauses a running sandbox to disk. On failure it keeps running.
    pub async fn pause_sandbox(&self, id: &str) -> Result<pb::SandboxInfo, BackendError> {
        if !self.claim(id) {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is busy: a create, pause or resume is in progress"
            )));
        }
        let r = self
            .pause_claimed(id)
            .instrument(info_span!("pause", sandbox_id = %id))
            .await;
        self.release_claim(id);
        r
    }

    /// Pauses every running sandbox (the control plane is gone); each paused one is
    /// reported by the next `ListSandboxes` like a deadline pause, so the reconciler settles
    /// its row. A sandbox that fails to pause keeps running. Returns the paused IDs.
    pub async fn pause_all(&self) -> Vec<String> {
        let ids: Vec<String> = self.live.read().await.keys().cloned().collect();
        let mut paused = Vec::new();
        for id in ids {
            match self.pause_sandbox(&id).await {
                Ok(_) => {
                    info!(sandbox_id = %id, "paused: control plane unreachable");
                    paused.push(id);
                }
                Err(e) => warn!(sandbox_id = %id, error = %e, "pause-all: not paused"),
            }
        }
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(paused.iter().cloned());
        paused
    }

    pub(super) async fn pause_claimed(&self, id: &str) -> Result<pb::SandboxInfo, BackendError> {
        let live = match self.live(id).await {
            Ok(l) => l,
            Err(e) => {
                if self.parked.read().await.contains_key(id) {
                    return Err(BackendError::FailedPrecondition(format!(
                        "sandbox {id} is already paused"
                    )));
                }
                return Err(e);
            }
        };
        let mut rec = live.record();
        if rec.state != State::Running {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is not running ({:?})",
                rec.state
            )));
        }
        let started = std::time::Instant::now();
        rec.state = State::Pausing;
        record::save(&live.dir, &rec).map_err(|e| internal("persist record", &e))?;
        *live.rec.lock().unwrap_or_else(|e| e.into_inner()) = rec.clone();
        // The VM's exit is ours, not an error to report.
        live.destroying
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let state = live.dir.join(STATE_FILE);
        if let Err(e) = self.vmm.save(&live.vm, &state, StateKind::Full).await {
            live.destroying
                .store(false, std::sync::atomic::Ordering::SeqCst);
            rec.state = State::Running;
            let _ = record::save(&live.dir, &rec);
            let memory_mb = rec.memory_mb;
            *live.rec.lock().unwrap_or_else(|e| e.into_inner()) = rec;
            warn!(error = %e, "pause failed; the sandbox keeps running");
            // QEMU only sees its pipe break: name the likely cause when the disk is full.
            let free = free_bytes(&live.dir);
            if free.is_some_and(|f| f < u64::from(memory_mb) << 20) {
                return Err(BackendError::ResourceExhausted(format!(
                    "not enough disk space on the host to save the sandbox's memory \
                     ({} MiB free, up to {} MiB needed); it keeps running",
                    free.unwrap_or(0) >> 20,
                    memory_mb
                )));
            }
            return Err(internal("pause", &e));
        }
        self.live.write().await.remove(id);
        // Streams into the VM would wait for a connection nobody will close: end them.
        live.envd
            .mark_gone("the sandbox was paused: resume it and start or attach again");
        live.closed.cancel();
        if let Err(e) = self.net.teardown(live.net.slot).await {
            warn!(error = %e, "network teardown after pause");
        }
        self.slots.release(live.net.slot);
        rec.state = State::Paused;
        rec.slot = None;
        rec.paused_at_ms = now_ms();
        // A failed write leaves `pausing` with the state in place: a restart finishes it.
        if let Err(e) = record::save(&live.dir, &rec) {
            warn!(error = %e, "persist paused record");
        }
        let info = self.info(&rec, &live.dir);
        self.parked.write().await.insert(
            id.to_string(),
            Parked {
                dir: live.dir.clone(),
                rec,
            },
        );
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sandbox paused"
        );
        Ok(info)
    }

    /// Resumes a paused sandbox on a new network slot, memory and processes as they were.
    pub async fn resume_sandbox(&self, id: &str) -> Result<pb::SandboxInfo, BackendError> {
        if !self.claim(id) {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is busy: a create, pause or resume is in progress"
            )));
        }
        let r = self
            .resume_claimed(id)
            .instrument(info_span!("resume", sandbox_id = %id))
            .await;
        self.release_claim(id);
        r
    }

    pub(super) async fn resume_claimed(&self, id: &str) -> Result<pb::SandboxInfo, BackendError> {
        let parked = self.parked.read().await.get(id).cloned();
        let Some(Parked { dir, mut rec }) = parked else {
            if self.live.read().await.contains_key(id) {
                return Err(BackendError::FailedPrecondition(format!(
                    "sandbox {id} is not paused"
                )));
            }
            return Err(BackendError::NotFound(format!("sandbox {id} not found")));
        };
        if rec.state != State::Paused {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} cannot be resumed: {}",
                rec.error
                    .clone()
                    .unwrap_or_else(|| format!("{:?}", rec.state))
            )));
        }
        let started = std::time::Instant::now();
        let size = super::admission::Size {
            vcpus: u64::from(rec.vcpus),
            memory_mib: u64::from(rec.memory_mb),
        };
        self.admit(id, size).await?;
        let mut undo = Rollback::default();
        let r = self.resume_with(&dir, &mut rec, &mut undo).await;
        let r = match r {
            Ok(live) => {
                undo.disarm();
                Ok(live)
            }
            Err(e) => {
                undo.run().await;
                Err(e)
            }
        };
        self.started_or_failed(id).await;
        match r {
            Ok(live) => {
                // The state is spent: the VM has moved on from it.
                if let Err(e) = std::fs::remove_file(dir.join(STATE_FILE)) {
                    warn!(error = %e, "remove the used VM state");
                }
                let info = self.info(&live.record(), &dir);
                self.parked.write().await.remove(id);
                self.watch_events(live.clone());
                self.live.write().await.insert(id.to_string(), live);
                info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox resumed"
                );
                Ok(info)
            }
            Err((e, broken)) => {
                rec.slot = None;
                if broken {
                    // The saved state cannot come back: say so, touch nothing else.
                    rec.state = State::Error;
                    // Shown to the tenant: the cause (paths, QEMU's words) stays in this log.
                    warn!(sandbox_id = %id, error = %e, "saved state cannot be restored");
                    rec.error = Some("cannot resume: its saved state could not be restored".into());
                } else {
                    rec.state = State::Paused;
                }
                let _ = record::save(&dir, &rec);
                if let Some(p) = self.parked.write().await.get_mut(id) {
                    p.rec = rec;
                }
                warn!(error = %e, broken, "resume failed");
                Err(e)
            }
        }
    }

    /// The resume steps; each registers its undo. The `bool` says the saved state is broken.
    async fn resume_with(
        &self,
        dir: &Path,
        rec: &mut SandboxRecord,
        undo: &mut Rollback,
    ) -> Result<Arc<Live>, (BackendError, bool)> {
        let soft = |e: BackendError| (e, false);
        let run_dir = dir.join("run");
        let saved: VmSpec = std::fs::read(spec_file(&run_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                (
                    BackendError::FailedPrecondition(format!(
                        "the paused VM's spec ({}) is missing or unreadable",
                        spec_file(&run_dir).display()
                    )),
                    true,
                )
            })?;
        let slot = self.slots.alloc().ok_or_else(|| {
            soft(BackendError::ResourceExhausted(
                "no free network slot on this host".into(),
            ))
        })?;
        self.undo_slot(undo, slot);
        rec.state = State::Resuming;
        rec.slot = Some(slot);
        record::save(dir, rec).map_err(|e| soft(internal("persist record", &e)))?;

        let net = self
            .net
            .setup(slot, &rec.egress())
            .await
            .map_err(|e| soft(internal("network", &e)))?;
        self.undo_network(undo, slot);
        // Same machine, new place: only the namespace (and so the TAP's home) changes; the
        // guest keeps its address, MAC and everything in memory.
        let spec = VmSpec {
            netns: Some(net.netns.clone()),
            tap: Some(net.tap.clone()),
            guest_mac: Some(net.guest_mac.clone()),
            run_dir: run_dir.clone(),
            // The full state carries every page: a clone no longer needs its base's RAM file
            // (which may be gone: a snapshot template deleted, a warm base collected).
            memory_file: None,
            uid: Some(self.vm_uid(slot)),
            ..saved
        };
        let vm = {
            let _permit = self
                .boots
                .acquire()
                .await
                .map_err(|e| soft(internal("boot limiter", &e)))?;
            self.vmm
                .restore(&spec, &dir.join(STATE_FILE), StateKind::Full)
                .await
                .map_err(|e| {
                    let broken = matches!(e, VmmError::BadState { .. });
                    (internal("restore VM", &e), broken)
                })?
        };
        self.undo_vm(undo, &vm);
        let envd = EnvdClient::new(&envd_url(&net), Some(&rec.envd_token))
            .map_err(|e| soft(internal("envd client", &e)))?;
        envd.wait_healthy(std::time::Instant::now() + RESUMED_ENVD_TIMEOUT)
            .await
            .map_err(|e| soft(internal("envd did not answer after the restore", &e)))?;
        let mut entropy = [0u8; ENTROPY_BYTES];
        getrandom::fill(&mut entropy).map_err(|e| soft(internal("entropy", &e)))?;
        envd.refresh_after_restore(&entropy)
            .await
            .map_err(|e| soft(internal("envd /init after the restore", &e)))?;

        let now = now_ms();
        if rec.end_at_ms > 0 && rec.paused_at_ms > 0 {
            // The deadline stood still while the sandbox was paused.
            rec.end_at_ms += (now - rec.paused_at_ms).max(0);
        }
        rec.paused_at_ms = 0;
        rec.state = State::Running;
        rec.error = None;
        record::save(dir, rec).map_err(|e| soft(internal("persist record", &e)))?;
        Ok(Arc::new(Live {
            dir: dir.to_path_buf(),
            destroying: Default::default(),
            rec: std::sync::Mutex::new(rec.clone()),
            vm,
            net,
            envd,
            closed: Default::default(),
        }))
    }

    /// After a restart: settles a sandbox whose record says it was pausing, paused or
    /// resuming. Returns the parked entry, or `None` when it turned out to be running (a
    /// pause that never wrote its state: the VM was left stopped and goes on).
    pub(super) async fn recover_parked(
        &self,
        dir: &Path,
        mut rec: SandboxRecord,
    ) -> Option<Parked> {
        let state = dir.join(STATE_FILE);
        let mut tmp = state.as_os_str().to_owned();
        tmp.push(".tmp");
        let _ = std::fs::remove_file(&tmp);
        if rec.state == State::Pausing && !state.is_file() {
            return None;
        }
        // No VM of a paused sandbox may run: a crash mid-resume or mid-pause left it behind.
        if let Err(e) = self.vmm.kill_run_dir(&dir.join("run")).await {
            warn!(error = %e, "kill the VM of a paused sandbox");
        }
        if let Some(slot) = rec.slot.take()
            && let Err(e) = self.net.teardown(slot).await
        {
            warn!(slot, error = %e, "network teardown of a paused sandbox");
        }
        if matches!(rec.state, State::Pausing | State::Resuming) {
            if rec.state == State::Pausing {
                rec.paused_at_ms = now_ms();
            }
            rec.state = State::Paused;
        }
        if rec.state == State::Paused && !state.is_file() {
            rec.state = State::Error;
            rec.error = Some(format!(
                "paused, but its saved state {STATE_FILE} is missing"
            ));
        }
        let _ = record::save(dir, &rec);
        info!(sandbox_id = %rec.id, state = ?rec.state, "kept paused sandbox");
        Some(Parked {
            dir: dir.to_path_buf(),
            rec,
        })
    }
}

/// Bytes free for unprivileged writers on the filesystem holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}
