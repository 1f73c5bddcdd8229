//! The sandbox manager: the lifecycle of every sandbox on this host.
//!
//! Create is overlay → slot → network → boot → envd health → `/init`, each step registering
//! its undo so a failure anywhere leaves the host exactly as before. Every sandbox's record is
//! persisted under `sandboxes/<id>/` so that a restarted agent re-adopts the VMs still running
//! and removes what it was half-way through making. A deadline loop destroys (or, with
//! `on_timeout = pause`, pauses) sandboxes whose absolute `end_at` has passed and reports them
//! in the next list. Pause and resume live in `pause`; the metrics sampler in `metrics`.

pub mod admission;
pub mod metrics;
mod pause;
pub mod record;
pub mod rollback;
mod snapshot;
pub mod template;
mod warm;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tokio::sync::{RwLock, Semaphore};
use tracing::{Instrument, info, info_span, warn};
use wrenn_proto::hostagent::v1 as pb;

use crate::config::AgentConfig;
use crate::envd_client::EnvdClient;
use crate::network::{Network, SandboxNet, SlotAllocator};
use crate::rpc::{BackendError, SandboxBackend, TunnelTarget};
use crate::storage;
use crate::vmm::{Accel, MemoryFile, StateKind, VmEvent, VmHandle, VmSpec, Vmm};
use record::{SandboxRecord, State};
use rollback::Rollback;

const ENVD_PORT: u16 = 49983;
/// Below this a Debian guest with envd does not boot reliably.
const MIN_MEMORY_MB: u32 = 128;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A sandbox this agent runs.
struct Live {
    dir: PathBuf,
    /// Set once destroy starts, so the VM's exit is not reported as an error.
    destroying: std::sync::atomic::AtomicBool,
    rec: Mutex<SandboxRecord>,
    vm: VmHandle,
    net: SandboxNet,
    envd: EnvdClient,
    /// Cancelled when the VM goes away (pause, destroy, exit): ends the tunnels into it.
    closed: tokio_util::sync::CancellationToken,
}

/// A paused sandbox (or one whose saved state could not be restored): no VM, no slot.
#[derive(Debug, Clone)]
struct Parked {
    dir: PathBuf,
    rec: SandboxRecord,
}

impl Live {
    fn record(&self) -> SandboxRecord {
        self.rec.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub struct Manager {
    cfg: AgentConfig,
    vmm: Arc<dyn Vmm>,
    accel: Accel,
    net: Network,
    slots: Arc<SlotAllocator>,
    boots: Semaphore,
    live: RwLock<HashMap<String, Arc<Live>>>,
    parked: RwLock<HashMap<String, Parked>>,
    /// `None` when creates boot (`--warm-bases=false`).
    warm: Option<warm::WarmBases>,
    /// IDs with a create, pause or resume in flight.
    busy: Mutex<HashSet<String>>,
    reaped: Mutex<Vec<String>>,
    paused: Mutex<Vec<String>>,
    host_cpus: u32,
    host_mem_mb: u64,
    /// What this host admits (`--cpu-overcommit` ...), and the sandboxes being started.
    limits: admission::Limits,
    starting: tokio::sync::Mutex<admission::Starting>,
    /// Metrics samples per sandbox, taken by the sampler.
    metrics: metrics::History,
    /// Cancelled on drop: ends the sampler.
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn valid_sandbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Wall time of each create step, in order.
struct StepTimes {
    started: std::time::Instant,
    last: std::time::Instant,
    steps: Vec<(&'static str, u128)>,
}

impl StepTimes {
    fn start() -> Self {
        let now = std::time::Instant::now();
        StepTimes {
            started: now,
            last: now,
            steps: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.steps
            .push((step, now.duration_since(self.last).as_millis()));
        self.last = now;
    }

    fn total_ms(&self) -> u64 {
        u64::try_from(self.last.duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the guest of `req` may reach; its lists as the control plane checked them.
fn egress_of(req: &pb::CreateSandboxRequest) -> Result<wrenn_egress::Egress, BackendError> {
    wrenn_egress::Egress::parse(req.allow_internet, &req.allow_out, &req.deny_out)
        .map_err(|e| BackendError::InvalidArgument(format!("egress: {e}")))
}

/// `overlay=12 slot=0 network=80 ...` (milliseconds).
impl std::fmt::Display for StepTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, ms)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={ms}")?;
        }
        Ok(())
    }
}

/// An internal failure of step `what`.
fn internal(what: &str, e: &dyn std::fmt::Display) -> BackendError {
    BackendError::Internal(format!("{what}: {e}"))
}

/// A fresh envd access token from the OS CSPRNG; an error rather than a weak token.
fn random_token() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Creating => "creating",
        State::Running => "running",
        State::Error => "in error",
        State::Pausing => "pausing",
        State::Paused => "paused",
        State::Resuming => "resuming",
    }
}

/// Where the host reaches a sandbox's envd.
fn envd_url(net: &SandboxNet) -> String {
    format!("http://{}:{ENVD_PORT}", net.host_ip)
}

/// A `/proc/meminfo` field in MiB (0 when unreadable).
fn meminfo_mb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

fn host_memory_mb() -> u64 {
    meminfo_mb("MemTotal")
}

/// What a host has and what its sandboxes take of it: sent with every heartbeat, read by the
/// control plane's least-loaded placement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capacity {
    /// CPUs of the machine.
    pub vcpus: u32,
    /// vCPUs of the sandboxes with a VM (may exceed `vcpus`: they are overcommitted).
    pub vcpus_allocated: u64,
    pub memory_mib: u64,
    /// The kernel's MemAvailable.
    pub memory_available_mib: u64,
    /// Guest memory of the sandboxes with a VM.
    pub memory_allocated_mib: u64,
    /// Free space on the files root.
    pub disk_free_mib: u64,
    /// Sandboxes with a VM.
    pub sandboxes: u64,
    /// What this host admits in total (see [`admission`]): the scheduler places a sandbox
    /// only where it fits under these, so a full host is passed over rather than refusing.
    pub vcpus_limit: u64,
    pub memory_limit_mib: u64,
    pub min_free_disk_mib: u64,
}

impl Manager {
    /// Builds the manager, re-adopts what survived a restart and cleans up the rest, then
    /// starts the deadline loop.
    pub async fn start(
        cfg: AgentConfig,
        vmm: Arc<dyn Vmm>,
        accel: Accel,
    ) -> anyhow::Result<Arc<Manager>> {
        std::fs::create_dir_all(cfg.sandboxes_dir())?;
        let warm = if cfg.warm_bases {
            std::fs::create_dir_all(cfg.warm_dir())?;
            let w = warm::WarmBases::new(
                cfg.warm_dir(),
                &crate::preflight::path(crate::preflight::Tool::Qemu),
            );
            // A build cut short by a crash may have left its VM running (it boots in the
            // `.building` dir, on a scratch network slot): kill it before its files go.
            for run in w.building_run_dirs() {
                if let Err(e) = vmm.kill_run_dir(&run).await {
                    warn!(run_dir = %run.display(), error = %e, "kill the VM of an unfinished warm base");
                }
            }
            // Builds a crash cut short, and bases of images, kernels or QEMUs since replaced.
            let stale = w.collect(|info| {
                template::load(&cfg.root, &info.template)
                    .ok()
                    .map(|t| w.key(&t, info.shape, accel))
            });
            if !stale.is_empty() {
                info!(removed = ?stale, "stale warm bases removed");
            }
            Some(w)
        } else {
            None
        };
        let net = Network::new(cfg.network());
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let host_mem_mb = host_memory_mb();
        let limits = admission::Limits::new(
            host_cpus,
            host_mem_mb,
            cfg.cpu_overcommit,
            cfg.memory_overcommit,
            cfg.min_free_disk_mib,
        );
        info!(?limits, "admission limits");
        let mgr = Arc::new(Manager {
            slots: Arc::new(SlotAllocator::new(cfg.max_sandboxes)),
            boots: Semaphore::new(cfg.boots().max(1)),
            cfg,
            vmm,
            accel,
            net,
            live: RwLock::default(),
            parked: RwLock::default(),
            warm,
            busy: Mutex::default(),
            reaped: Mutex::default(),
            paused: Mutex::default(),
            host_cpus,
            host_mem_mb,
            limits,
            starting: tokio::sync::Mutex::default(),
            metrics: metrics::History::default(),
            stop: tokio_util::sync::CancellationToken::new(),
        });
        mgr.recover().await;
        let weak = Arc::downgrade(&mgr);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { return };
                m.enforce_deadlines().await;
            }
        });
        metrics::spawn_sampler(Arc::downgrade(&mgr), mgr.stop.clone());
        Ok(mgr)
    }

    /// Reserves room for a sandbox of `size` about to start (see [`admission`]); the caller
    /// calls [`Manager::started_or_failed`] when the start ended either way.
    async fn admit(&self, id: &str, size: admission::Size) -> Result<(), BackendError> {
        let mut starting = self.starting.lock().await;
        let running = self
            .live
            .read()
            .await
            .values()
            .map(|l| {
                let r = l.record();
                admission::Size {
                    vcpus: u64::from(r.vcpus),
                    memory_mib: u64::from(r.memory_mb),
                }
            })
            .fold(admission::Size::default(), |a, s| a + s);
        let free = pause::free_bytes(&self.cfg.root).unwrap_or(0) / (1024 * 1024);
        starting.admit(&self.limits, id, size, running, free)
    }

    async fn started_or_failed(&self, id: &str) {
        self.starting.lock().await.done(id);
    }

    /// This host's [`Capacity`] now.
    pub async fn capacity(&self) -> Capacity {
        let (mut vcpus, mut memory, mut n) = (0u64, 0u64, 0u64);
        for l in self.live.read().await.values() {
            let r = l.record();
            vcpus += u64::from(r.vcpus);
            memory += u64::from(r.memory_mb);
            n += 1;
        }
        Capacity {
            vcpus: self.host_cpus,
            vcpus_allocated: vcpus,
            memory_mib: self.host_mem_mb,
            memory_available_mib: meminfo_mb("MemAvailable"),
            memory_allocated_mib: memory,
            disk_free_mib: pause::free_bytes(&self.cfg.root).unwrap_or(0) / (1024 * 1024),
            sandboxes: n,
            vcpus_limit: self.limits.vcpus,
            memory_limit_mib: self.limits.memory_mib,
            min_free_disk_mib: self.limits.min_free_disk_mib,
        }
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn failpoint(&self, step: &str) -> Result<(), BackendError> {
        if self.cfg.failpoint.as_deref() == Some(step) {
            return Err(BackendError::Internal(format!(
                "injected failure after step '{step}'"
            )));
        }
        Ok(())
    }

    fn claim(&self, id: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
    }

    fn release_claim(&self, id: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn validate(&self, req: &pb::CreateSandboxRequest) -> Result<(), BackendError> {
        if !valid_sandbox_id(&req.sandbox_id) {
            return Err(BackendError::InvalidArgument(
                "sandbox_id must be 1-64 characters of [a-z0-9-]".into(),
            ));
        }
        if req.vcpus == 0 || req.vcpus > self.host_cpus {
            return Err(BackendError::InvalidArgument(format!(
                "vcpus must be between 1 and {} (this host's cores)",
                self.host_cpus
            )));
        }
        if req.memory_mb < MIN_MEMORY_MB || u64::from(req.memory_mb) > self.host_mem_mb {
            return Err(BackendError::InvalidArgument(format!(
                "memory_mb must be between {MIN_MEMORY_MB} and {} (this host's memory)",
                self.host_mem_mb
            )));
        }
        egress_of(req)?;
        Ok(())
    }

    async fn create_inner(
        &self,
        req: pb::CreateSandboxRequest,
    ) -> Result<(pb::SandboxInfo, String), BackendError> {
        self.validate(&req)?;
        let loaded = template::load(&self.cfg.root, &req.template);
        // Not an image template: maybe one of the team's snapshot templates on this host.
        let snapshot = match &loaded {
            Err(template::TemplateError::Unknown(_)) => {
                self.snapshot_template(&req.team_id, &req.template)
            }
            _ => None,
        };
        let template = match (loaded, &snapshot) {
            (_, Some(s)) => {
                let shape = s.info.shape;
                if (req.vcpus, req.memory_mb) != (shape.vcpus, shape.memory_mb) {
                    return Err(BackendError::InvalidArgument(format!(
                        "snapshot template {} is fixed at {} vCPUs and {} MiB",
                        req.template, shape.vcpus, shape.memory_mb
                    )));
                }
                template::Template {
                    name: req.template.clone(),
                    kernel: s.info.spec.kernel.clone(),
                    initrd: s.info.spec.initrd.clone(),
                    rootfs: s.disk(),
                    default_user: s.info.default_user.clone().unwrap_or_default(),
                    kernel_release: String::new(),
                    envd_version: s.info.envd_version.clone(),
                }
            }
            (Ok(t), None) => t,
            (Err(e), None) => {
                return Err(match e {
                    template::TemplateError::Broken { .. } => BackendError::Internal(e.to_string()),
                    _ => BackendError::InvalidArgument(e.to_string()),
                });
            }
        };
        let id = req.sandbox_id.clone();
        if self.live.read().await.contains_key(&id) || !self.claim(&id) {
            return Err(BackendError::AlreadyExists(format!(
                "sandbox {id} already exists"
            )));
        }
        let size = admission::Size {
            vcpus: u64::from(req.vcpus),
            memory_mib: u64::from(req.memory_mb),
        };
        if let Err(e) = self.admit(&id, size).await {
            self.release_claim(&id);
            return Err(e);
        }
        let result = match &snapshot {
            // A snapshot cannot be booted: only cloned.
            Some(base) => {
                let dir = self.cfg.sandboxes_dir().join(&id);
                let mut undo = Rollback::default();
                match self
                    .create_with(&req, &template, Some(base), &dir, &mut undo)
                    .await
                {
                    Ok(live) => {
                        undo.disarm();
                        Ok(self.started(live).await)
                    }
                    Err(e) => {
                        undo.run().await;
                        Err(e)
                    }
                }
            }
            None => self.create_steps(req, template).await,
        };
        self.started_or_failed(&id).await;
        self.release_claim(&id);
        result
    }

    async fn create_steps(
        &self,
        req: pb::CreateSandboxRequest,
        template: template::Template,
    ) -> Result<(pb::SandboxInfo, String), BackendError> {
        let id = req.sandbox_id.clone();
        let dir = self.cfg.sandboxes_dir().join(&id);
        // Every create is a restore of the warm base; a cold boot when there is none.
        match self.warm_for(&req, &template).await {
            Ok(base) => {
                let mut undo = Rollback::default();
                match self
                    .create_with(&req, &template, Some(&base), &dir, &mut undo)
                    .await
                {
                    Ok(live) => {
                        undo.disarm();
                        return Ok(self.started(live).await);
                    }
                    Err(e) => {
                        warn!(sandbox_id = %id, error = %e, "warm clone failed; booting cold");
                        undo.run().await;
                    }
                }
            }
            Err(reason) => info!(sandbox_id = %id, %reason, "no warm base; booting cold"),
        }
        let mut undo = Rollback::default();
        let r = self
            .create_with(&req, &template, None, &dir, &mut undo)
            .await;
        match r {
            Ok(live) => {
                undo.disarm();
                Ok(self.started(live).await)
            }
            Err(e) => {
                warn!(sandbox_id = %id, error = %e, "create failed; rolling back");
                undo.run().await;
                Err(e)
            }
        }
    }

    /// A network slot and its network for a VM that is no sandbox (a warm base or a snapshot
    /// being made); [`Manager::drop_scratch_net`] gives it back.
    /// The user the VM on network slot `slot` runs as (see `AgentConfig::vm_uid_base`).
    fn vm_uid(&self, slot: u32) -> u32 {
        self.cfg.vm_uid_base.saturating_add(slot)
    }

    async fn scratch_net(&self) -> Result<SandboxNet, BackendError> {
        let slot = self.slots.alloc().ok_or_else(|| {
            BackendError::ResourceExhausted("no free network slot on this host".into())
        })?;
        match self.net.setup(slot, &wrenn_egress::Egress::default()).await {
            Ok(n) => Ok(n),
            Err(e) => {
                self.slots.release(slot);
                Err(internal("network", &e))
            }
        }
    }

    async fn drop_scratch_net(&self, slot: u32) {
        if let Err(e) = self.net.teardown(slot).await {
            warn!(slot, error = %e, "network teardown of a scratch VM");
        }
        self.slots.release(slot);
    }

    fn undo_slot(&self, undo: &mut Rollback, slot: u32) {
        let slots = self.slots.clone();
        undo.push("slot", move || {
            async move {
                slots.release(slot);
            }
            .boxed()
        });
    }

    fn undo_network(&self, undo: &mut Rollback, slot: u32) {
        let n = self.net.clone();
        undo.push("network", move || {
            async move {
                if let Err(e) = n.teardown(slot).await {
                    warn!(slot, error = %e, "network teardown during rollback");
                }
            }
            .boxed()
        });
    }

    fn undo_vm(&self, undo: &mut Rollback, vm: &VmHandle) {
        let (vmm, vm) = (self.vmm.clone(), vm.clone());
        undo.push("vm", move || {
            async move {
                if let Err(e) = vmm.destroy(&vm).await {
                    warn!(error = %e, "VM destroy during rollback");
                }
            }
            .boxed()
        });
    }

    /// A created sandbox joins the live map; returns its info and envd token.
    async fn started(&self, live: Arc<Live>) -> (pb::SandboxInfo, String) {
        let rec = live.record();
        let token = rec.envd_token.clone();
        self.watch_events(live.clone());
        let info = self.info(&rec, &live.dir);
        self.live.write().await.insert(rec.id.clone(), live);
        info!(sandbox_id = %rec.id, "sandbox running");
        (info, token)
    }

    /// The warm base for this create, built now if this is the first of its shape; the
    /// reason when there is none.
    async fn warm_for(
        &self,
        req: &pb::CreateSandboxRequest,
        template: &template::Template,
    ) -> Result<warm::WarmBase, String> {
        let Some(w) = &self.warm else {
            return Err("warm bases are off (--warm-bases=false)".into());
        };
        let shape = warm::Shape {
            vcpus: req.vcpus,
            memory_mb: req.memory_mb,
            disk_size_mb: req.disk_size_mb,
        };
        let key = w.key(template, shape, self.accel);
        if let Some(b) = w.get(&key) {
            w.touch(&b);
            return Ok(b);
        }
        let lock = w.lock(&key).await;
        let _building = lock.lock().await;
        if let Some(b) = w.get(&key) {
            w.touch(&b);
            return Ok(b);
        }
        let started = std::time::Instant::now();
        let built = self
            .build_warm(w, template, shape, &key)
            .instrument(info_span!("warm_base", key = %key, template = %template.name))
            .await;
        match &built {
            Ok(_) => {
                info!(key = %key, ms = started.elapsed().as_millis() as u64, "warm base made");
                let evicted = w.evict(warm::MAX_BASES, &key);
                if !evicted.is_empty() {
                    info!(removed = ?evicted, "least recently used warm bases removed");
                }
            }
            Err(e) => warn!(key = %key, error = %e, "warm base not made"),
        }
        built
    }

    /// Boots `template` with `shape` on a network slot of its own, waits for envd, saves its
    /// device state with RAM left in the shared memory file, and publishes the files.
    async fn build_warm(
        &self,
        w: &warm::WarmBases,
        template: &template::Template,
        shape: warm::Shape,
        key: &str,
    ) -> Result<warm::WarmBase, String> {
        let building = w.building_path(key);
        let _ = tokio::fs::remove_dir_all(&building).await;
        std::fs::create_dir_all(&building).map_err(|e| format!("{}: {e}", building.display()))?;
        let made = async {
            let disk = building.join(warm::DISK);
            storage::create_overlay(
                &template.rootfs,
                &disk,
                (shape.disk_size_mb > 0).then_some(shape.disk_size_mb),
            )
            .await
            .map_err(|e| format!("disk: {e}"))?;
            let net = self.scratch_net().await.map_err(|e| e.to_string())?;
            let spec = VmSpec {
                sandbox_id: format!("warm-{}", &key[..8.min(key.len())]),
                vcpus: shape.vcpus,
                memory_mb: shape.memory_mb,
                kernel: template.kernel.clone(),
                initrd: template.initrd.clone(),
                kernel_args: net.kernel_param(),
                root_disk: disk,
                netns: Some(net.netns.clone()),
                tap: Some(net.tap.clone()),
                guest_mac: Some(net.guest_mac.clone()),
                run_dir: building.join("run"),
                accel: self.accel,
                memory_file: Some(MemoryFile {
                    path: building.join(warm::MEMORY),
                    shared: true,
                }),
                uid: Some(self.vm_uid(net.slot)),
            };
            let saved = async {
                let vm = {
                    let _permit = self.boots.acquire().await.map_err(|e| e.to_string())?;
                    self.vmm
                        .boot(&spec)
                        .await
                        .map_err(|e| format!("boot: {e}"))?
                };
                let ready = async {
                    let envd = EnvdClient::new(&envd_url(&net), None).map_err(|e| e.to_string())?;
                    envd.wait_healthy(std::time::Instant::now() + self.cfg.envd_health_timeout())
                        .await
                        .map_err(|e| format!("envd did not become healthy: {e}"))?;
                    self.vmm
                        .save(&vm, &building.join(warm::STATE), StateKind::DevicesOnly)
                        .await
                        .map_err(|e| format!("save: {e}"))
                }
                .await;
                if ready.is_err() {
                    let _ = self.vmm.destroy(&vm).await;
                }
                ready
            }
            .await;
            self.drop_scratch_net(net.slot).await;
            saved?;
            Ok(spec)
        }
        .await;
        let published = made.and_then(|spec| {
            let info = warm::BaseInfo {
                key: key.to_owned(),
                template: template.name.clone(),
                shape,
                envd_version: template.envd_version.clone(),
                made_at_ms: now_ms(),
                spec,
                envd_token: None,
                default_user: None,
            };
            w.publish(key, &info).map_err(|e| format!("publish: {e}"))
        });
        if published.is_err() {
            let _ = tokio::fs::remove_dir_all(&building).await;
        }
        published
    }

    async fn create_with(
        &self,
        req: &pb::CreateSandboxRequest,
        template: &template::Template,
        base: Option<&warm::WarmBase>,
        dir: &Path,
        undo: &mut Rollback,
    ) -> Result<Arc<Live>, BackendError> {
        let egress = egress_of(req)?;
        std::fs::create_dir(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                BackendError::AlreadyExists(format!("sandbox {} already exists", req.sandbox_id))
            }
            _ => internal("create sandbox dir", &e),
        })?;
        {
            let dir = dir.to_path_buf();
            undo.push("sandbox dir", move || {
                async move {
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                }
                .boxed()
            });
        }
        let mut rec = SandboxRecord {
            id: req.sandbox_id.clone(),
            state: State::Creating,
            template: template.name.clone(),
            vcpus: req.vcpus,
            memory_mb: req.memory_mb,
            disk_size_mb: req.disk_size_mb,
            slot: None,
            created_at_ms: now_ms(),
            end_at_ms: req.end_at_ms,
            on_timeout: match req.on_timeout.as_known() {
                Some(pb::OnTimeout::ON_TIMEOUT_PAUSE) => "pause".into(),
                _ => "kill".into(),
            },
            team_id: req.team_id.clone(),
            metadata: req.metadata.clone().into_iter().collect(),
            allow_internet: egress.internet,
            allow_out: egress.allow.clone(),
            deny_out: egress.deny.clone(),
            default_user: if req.default_user.is_empty() {
                template.default_user.clone()
            } else {
                req.default_user.clone()
            },
            envd_token: random_token().map_err(|e| internal("envd token", &e))?,
            envd_version: template.envd_version.clone(),
            error: None,
            paused_at_ms: 0,
        };
        record::save(dir, &rec).map_err(|e| internal("persist record", &e))?;

        let mut steps = StepTimes::start();
        // 1. Root disk.
        let overlay = dir.join("rootfs.qcow2");
        // A clone's disk is the warm base's frozen disk, already of the requested size.
        let (backing, size) = match base {
            Some(b) => (b.disk(), None),
            None => (
                template.rootfs.clone(),
                (req.disk_size_mb > 0).then_some(req.disk_size_mb),
            ),
        };
        let backing = storage::pin_base(&backing, dir);
        storage::create_overlay(&backing, &overlay, size)
            .await
            .map_err(|e| match e {
                storage::StorageError::InvalidSize { .. } => {
                    BackendError::InvalidArgument(e.to_string())
                }
                other => internal("root disk overlay", &other),
            })?;
        self.failpoint("overlay")?;
        steps.mark("overlay");

        // 2. Network slot.
        let slot = self.slots.alloc().ok_or_else(|| {
            BackendError::ResourceExhausted("no free network slot on this host".into())
        })?;
        self.undo_slot(undo, slot);
        rec.slot = Some(slot);
        record::save(dir, &rec).map_err(|e| internal("persist record", &e))?;
        self.failpoint("slot")?;
        steps.mark("slot");

        // 3. Network.
        let net = self
            .net
            .setup(slot, &egress)
            .await
            .map_err(|e| internal("network", &e))?;
        self.undo_network(undo, slot);
        self.failpoint("network")?;
        steps.mark("network");

        // 4. Boot, or restore the warm base.
        let spec = VmSpec {
            sandbox_id: req.sandbox_id.clone(),
            vcpus: req.vcpus,
            memory_mb: req.memory_mb,
            kernel: template.kernel.clone(),
            initrd: template.initrd.clone(),
            // A clone's machine is exactly its base's (kernel, initramfs, command line).
            kernel_args: base
                .map_or_else(|| net.kernel_param(), |b| b.info.spec.kernel_args.clone()),
            root_disk: overlay.clone(),
            netns: Some(net.netns.clone()),
            tap: Some(net.tap.clone()),
            guest_mac: Some(net.guest_mac.clone()),
            run_dir: dir.join("run"),
            accel: self.accel,
            // Copy-on-write over the base's RAM: clones share the pages none of them wrote.
            memory_file: base.map(|b| MemoryFile {
                path: b.memory(),
                shared: false,
            }),
            uid: Some(self.vm_uid(slot)),
        };
        let vm = {
            let _permit = self
                .boots
                .acquire()
                .await
                .map_err(|e| internal("boot limiter", &e))?;
            steps.mark("boot_queue");
            match base {
                Some(b) => self
                    .vmm
                    .restore(&spec, &b.state(), StateKind::DevicesOnly)
                    .instrument(info_span!("restore", sandbox_id = %req.sandbox_id))
                    .await
                    .map_err(|e| internal("restore the warm base", &e))?,
                None => self
                    .vmm
                    .boot(&spec)
                    .instrument(info_span!("boot", sandbox_id = %req.sandbox_id))
                    .await
                    .map_err(|e| internal("boot VM", &e))?,
            }
        };
        self.undo_vm(undo, &vm);
        self.failpoint("boot")?;
        steps.mark(if base.is_some() { "restore" } else { "boot" });

        // 5. envd health.
        let envd = self.envd_for(&net, base)?;
        let waited = envd
            .wait_healthy(std::time::Instant::now() + self.cfg.envd_health_timeout())
            .instrument(info_span!("envd_health", sandbox_id = %req.sandbox_id))
            .await
            .map_err(|e| internal("envd did not become healthy", &e))?;
        info!(sandbox_id = %req.sandbox_id, ms = waited.as_millis() as u64, "envd healthy");
        self.failpoint("health")?;
        steps.mark("envd_health");

        // 6. /init: fresh token, default user and env.
        let env: HashMap<String, String> = req.default_env.clone().into_iter().collect();
        envd.init(&rec.envd_token, Some(&rec.default_user), env, None)
            .await
            .map_err(|e| internal("envd /init", &e))?;
        if base.is_some() {
            // A clone's clock and random generator are the base's until told otherwise.
            let mut entropy = [0u8; 64];
            getrandom::fill(&mut entropy).map_err(|e| internal("entropy", &e))?;
            envd.refresh_after_restore(&entropy)
                .await
                .map_err(|e| internal("envd /init after the restore", &e))?;
        }
        self.failpoint("init")?;

        rec.state = State::Running;
        record::save(dir, &rec).map_err(|e| internal("persist record", &e))?;
        steps.mark("init");
        // One event per create with every step's time (inside the `create` span): where a
        // cold create's time goes (the benchmark reads these).
        info!(sandbox_id = %req.sandbox_id, steps = %steps, total_ms = steps.total_ms(), "create steps");
        Ok(Arc::new(Live {
            dir: dir.to_path_buf(),
            destroying: Default::default(),
            rec: Mutex::new(rec),
            vm,
            net,
            envd,
            closed: Default::default(),
        }))
    }

    /// Turns VMM events into sandbox state: a block I/O error (e.g. the disk is full) puts the
    /// sandbox in `error` with a message instead of leaving a silently stuck VM.
    fn watch_events(&self, live: Arc<Live>) {
        let mut events = self.vmm.events(&live.vm);
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                };
                let msg = match ev {
                    VmEvent::BlockIoError {
                        device,
                        operation,
                        nospace,
                        reason,
                    } => {
                        if nospace {
                            format!("disk full: {operation} on {device} failed (no space left)")
                        } else {
                            format!("disk I/O error: {operation} on {device}: {reason}")
                        }
                    }
                    VmEvent::Shutdown { guest } => {
                        // Nothing answers in the guest any more.
                        live.closed.cancel();
                        if guest {
                            "the guest shut down".to_string()
                        } else {
                            "the VM exited".to_string()
                        }
                    }
                    _ => continue,
                };
                if live.destroying.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let mut rec = live.rec.lock().unwrap_or_else(|e| e.into_inner());
                warn!(sandbox_id = %rec.id, error = %msg, "sandbox error");
                rec.state = State::Error;
                rec.error = Some(msg);
                let _ = record::save(&live.dir, &rec);
            }
        });
    }

    fn info(&self, rec: &SandboxRecord, dir: &Path) -> pb::SandboxInfo {
        let status = match rec.state {
            State::Creating => pb::SandboxStatus::SANDBOX_STATUS_PENDING,
            State::Running | State::Pausing => pb::SandboxStatus::SANDBOX_STATUS_RUNNING,
            State::Paused | State::Resuming => pb::SandboxStatus::SANDBOX_STATUS_PAUSED,
            State::Error => pb::SandboxStatus::SANDBOX_STATUS_ERROR,
        };
        pb::SandboxInfo {
            sandbox_id: rec.id.clone(),
            status: status.into(),
            template: rec.template.clone(),
            vcpus: rec.vcpus,
            memory_mb: rec.memory_mb,
            disk_size_mb: rec.disk_size_mb,
            host_ip: rec
                .slot
                .map(|s| self.net.describe(s).host_ip.to_string())
                .unwrap_or_default(),
            envd_version: rec.envd_version.clone(),
            created_at_ms: rec.created_at_ms,
            end_at_ms: rec.end_at_ms,
            on_timeout: if rec.on_timeout == "pause" {
                pb::OnTimeout::ON_TIMEOUT_PAUSE.into()
            } else {
                pb::OnTimeout::ON_TIMEOUT_KILL.into()
            },
            team_id: rec.team_id.clone(),
            disk_used_bytes: storage::allocated_bytes(&dir.join("rootfs.qcow2")).unwrap_or(0),
            error: rec.error.clone().unwrap_or_default(),
            metadata: rec.metadata.clone().into_iter().collect(),
            allow_internet: rec.allow_internet,
            ..Default::default()
        }
    }

    /// Destroys a sandbox: VM, network, slot, files. Idempotent for unknown IDs: not found.
    pub async fn destroy_sandbox(&self, id: &str) -> Result<(), BackendError> {
        let live = self.live.write().await.remove(id);
        let Some(live) = live else {
            let parked = self.parked.write().await.remove(id);
            let Some(parked) = parked else {
                return Err(BackendError::NotFound(format!("sandbox {id} not found")));
            };
            self.metrics.remove(id);
            // Its saved memory and disk go with it.
            self.remove_leftover(&parked.dir).await;
            return Ok(());
        };
        // After it left the live map: the sampler records nothing for it from now on.
        self.metrics.remove(id);
        self.teardown(&live).await;
        Ok(())
    }

    async fn teardown(&self, live: &Live) {
        live.destroying
            .store(true, std::sync::atomic::Ordering::SeqCst);
        live.closed.cancel();
        let span = info_span!("destroy", sandbox_id = %live.vm.sandbox_id);
        async {
            if let Err(e) = self.vmm.destroy(&live.vm).await {
                warn!(error = %e, "VM destroy");
            }
            if let Err(e) = self.net.teardown(live.net.slot).await {
                warn!(error = %e, "network teardown");
            }
            self.slots.release(live.net.slot);
            if let Err(e) = tokio::fs::remove_dir_all(&live.dir).await {
                warn!(error = %e, "remove sandbox dir");
            }
            info!("sandbox destroyed");
        }
        .instrument(span)
        .await
    }

    async fn enforce_deadlines(&self) {
        let now = now_ms();
        let due: Vec<String> = self
            .live
            .read()
            .await
            .iter()
            .filter(|(_, l)| {
                let r = l.record();
                r.end_at_ms > 0 && r.end_at_ms <= now
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let pause = self
                .live(&id)
                .await
                .is_ok_and(|l| l.record().on_timeout == "pause");
            if pause {
                match self.pause_sandbox(&id).await {
                    Ok(_) => {
                        info!(sandbox_id = %id, "deadline reached; sandbox paused");
                        self.paused
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(id);
                    }
                    // Never lose a sandbox to a failed pause: it runs on, tried again later.
                    Err(e) => {
                        warn!(sandbox_id = %id, error = %e, "deadline pause failed; retrying in 30 s");
                        if let Ok(l) = self.live(&id).await {
                            let mut rec = l.rec.lock().unwrap_or_else(|e| e.into_inner());
                            rec.end_at_ms = now_ms() + 30_000;
                            let _ = record::save(&l.dir, &rec);
                        }
                    }
                }
                continue;
            }
            if self.destroy_sandbox(&id).await.is_ok() {
                info!(sandbox_id = %id, "deadline reached; sandbox destroyed");
                self.reaped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id);
            }
        }
    }

    /// After a restart: re-adopt running VMs, clean up half-made and dead sandboxes and any
    /// network leftovers of this prefix.
    async fn recover(&self) {
        let mut keep = HashSet::new();
        let entries = match std::fs::read_dir(self.cfg.sandboxes_dir()) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "read sandboxes dir");
                return;
            }
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let rec = record::load(&dir).ok();
            let pausing = rec.as_ref().is_some_and(|r| r.state == State::Pausing);
            let resuming = rec.as_ref().is_some_and(|r| r.state == State::Resuming);
            // A resume cut after its VM was restored: the guest has run and its disk moved on
            // from the saved state, so the sandbox goes on running rather than back to it.
            if resuming && let Some(live) = self.adopt(&dir).await {
                let mut entropy = [0u8; 64];
                let refreshed = match getrandom::fill(&mut entropy) {
                    Ok(()) => live
                        .envd
                        .refresh_after_restore(&entropy)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = refreshed {
                    warn!(error = %e, "clock and entropy of a resume cut short");
                }
                {
                    let mut rec = live.rec.lock().unwrap_or_else(|e| e.into_inner());
                    rec.state = State::Running;
                    rec.paused_at_ms = 0;
                    let _ = record::save(&live.dir, &rec);
                }
                let _ = std::fs::remove_file(live.dir.join(pause::STATE_FILE));
                keep.insert(live.net.slot);
                info!(sandbox_id = %live.vm.sandbox_id, "finished a resume cut short");
                self.watch_events(live.clone());
                self.live
                    .write()
                    .await
                    .insert(live.vm.sandbox_id.clone(), live);
                continue;
            }
            if let Some(rec) = rec
                && (matches!(rec.state, State::Pausing | State::Paused | State::Resuming)
                    || (rec.state == State::Error && dir.join(pause::STATE_FILE).is_file()))
                && let Some(parked) = self.recover_parked(&dir, rec).await
            {
                self.parked
                    .write()
                    .await
                    .insert(parked.rec.id.clone(), parked);
                continue;
            }
            match self.adopt(&dir).await {
                Some(live) => {
                    keep.insert(live.net.slot);
                    if pausing {
                        // A pause that never wrote its state: the VM was stopped; it goes on.
                        if let Err(e) = live.vm.qmp().execute("cont", None).await {
                            warn!(error = %e, "resume the VM of an unfinished pause");
                        }
                        let mut rec = live.rec.lock().unwrap_or_else(|e| e.into_inner());
                        rec.state = State::Running;
                        let _ = record::save(&live.dir, &rec);
                    }
                    // A state left from a resume that finished is spent.
                    let _ = std::fs::remove_file(live.dir.join(pause::STATE_FILE));
                    info!(sandbox_id = %live.vm.sandbox_id, "re-adopted sandbox");
                    self.watch_events(live.clone());
                    self.live
                        .write()
                        .await
                        .insert(live.vm.sandbox_id.clone(), live);
                }
                None => self.remove_leftover(&dir).await,
            }
        }
        match self.net.cleanup_stale(&keep).await {
            Ok(removed) if !removed.is_empty() => {
                info!(?removed, "removed stale sandbox networks")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "network cleanup"),
        }
    }

    async fn adopt(&self, dir: &Path) -> Option<Arc<Live>> {
        let rec = record::load(dir).ok()?;
        if rec.state == State::Creating {
            return None;
        }
        let slot = rec.slot?;
        let vm = self.vmm.adopt(&dir.join("run")).await.ok().flatten()?;
        if !self.net.exists(slot).await {
            let _ = self.vmm.destroy(&vm).await;
            return None;
        }
        self.slots.reserve(slot);
        let net = self.net.describe(slot);
        let envd = EnvdClient::new(&envd_url(&net), Some(&rec.envd_token)).ok()?;
        Some(Arc::new(Live {
            dir: dir.to_path_buf(),
            destroying: Default::default(),
            rec: Mutex::new(rec),
            vm,
            net,
            envd,
            closed: Default::default(),
        }))
    }

    async fn remove_leftover(&self, dir: &Path) {
        let rec = record::load(dir).ok();
        info!(dir = %dir.display(), "cleaning up half-made or dead sandbox");
        if let Err(e) = self.vmm.kill_run_dir(&dir.join("run")).await {
            warn!(error = %e, "kill leftover VM");
        }
        if let Some(slot) = rec.and_then(|r| r.slot) {
            let _ = self.net.teardown(slot).await;
        }
        let _ = tokio::fs::remove_dir_all(dir).await;
    }

    async fn live(&self, id: &str) -> Result<Arc<Live>, BackendError> {
        self.live
            .read()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(format!("sandbox {id} not found")))
    }
}

#[async_trait::async_trait]
impl SandboxBackend for Manager {
    async fn create(
        &self,
        req: pb::CreateSandboxRequest,
    ) -> Result<(pb::SandboxInfo, String), BackendError> {
        let span = info_span!("create", sandbox_id = %req.sandbox_id);
        self.create_inner(req).instrument(span).await
    }

    async fn destroy(&self, id: &str) -> Result<(), BackendError> {
        self.destroy_sandbox(id).await
    }

    async fn list(&self) -> Result<pb::ListSandboxesResponse, BackendError> {
        let mut sandboxes: Vec<pb::SandboxInfo> = self
            .live
            .read()
            .await
            .values()
            .map(|l| self.info(&l.record(), &l.dir))
            .collect();
        sandboxes.extend(
            self.parked
                .read()
                .await
                .values()
                .map(|p| self.info(&p.rec, &p.dir)),
        );
        let reaped = std::mem::take(&mut *self.reaped.lock().unwrap_or_else(|e| e.into_inner()));
        let paused = std::mem::take(&mut *self.paused.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(pb::ListSandboxesResponse {
            sandboxes,
            reaped_ids: reaped,
            paused_ids: paused,
            ..Default::default()
        })
    }

    async fn get(&self, id: &str) -> Result<pb::SandboxInfo, BackendError> {
        if let Some(p) = self.parked.read().await.get(id) {
            return Ok(self.info(&p.rec, &p.dir));
        }
        let l = self.live(id).await?;
        Ok(self.info(&l.record(), &l.dir))
    }

    async fn pause(&self, id: &str) -> Result<pb::SandboxInfo, BackendError> {
        self.pause_sandbox(id).await
    }

    async fn resume(&self, id: &str) -> Result<pb::SandboxInfo, BackendError> {
        self.resume_sandbox(id).await
    }

    async fn snapshot(
        &self,
        id: &str,
        name: &str,
        team_id: &str,
    ) -> Result<pb::SnapshotInfo, BackendError> {
        self.snapshot_sandbox(id, name, team_id).await
    }

    async fn delete_snapshot(&self, name: &str, team_id: &str) -> Result<(), BackendError> {
        Manager::delete_snapshot(self, name, team_id).await
    }

    async fn set_timeout(&self, id: &str, end_at_ms: i64) -> Result<pb::SandboxInfo, BackendError> {
        if end_at_ms < 0 {
            return Err(BackendError::InvalidArgument(
                "end_at_ms must be >= 0".into(),
            ));
        }
        if let Some(p) = self.parked.write().await.get_mut(id) {
            p.rec.end_at_ms = end_at_ms;
            let _ = record::save(&p.dir, &p.rec);
            return Ok(self.info(&p.rec, &p.dir));
        }
        let l = self.live(id).await?;
        let rec = {
            let mut rec = l.rec.lock().unwrap_or_else(|e| e.into_inner());
            rec.end_at_ms = end_at_ms;
            let _ = record::save(&l.dir, &rec);
            rec.clone()
        };
        Ok(self.info(&rec, &l.dir))
    }

    async fn envd(&self, id: &str) -> Result<EnvdClient, BackendError> {
        if self.parked.read().await.contains_key(id) {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is paused: resume it first"
            )));
        }
        let l = self.live(id).await?;
        let rec = l.record();
        if rec.state != State::Running {
            return Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is not running: {}",
                rec.error.unwrap_or_else(|| "not ready".into())
            )));
        }
        Ok(l.envd.clone())
    }

    async fn tunnel_target(&self, id: &str) -> Result<TunnelTarget, BackendError> {
        if let Some(p) = self.parked.read().await.get(id) {
            return Err(BackendError::FailedPrecondition(match p.rec.state {
                State::Error => format!(
                    "sandbox {id} is in error: {}",
                    p.rec.error.as_deref().unwrap_or("unknown")
                ),
                state => format!("sandbox {id} is {}: resume it first", state_name(state)),
            }));
        }
        let l = match self.live(id).await {
            Ok(l) => l,
            // Not yet in the live map while its create runs.
            Err(e) => {
                if self
                    .busy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(id)
                {
                    return Err(BackendError::FailedPrecondition(format!(
                        "sandbox {id} is creating, not running yet"
                    )));
                }
                return Err(e);
            }
        };
        let rec = l.record();
        match rec.state {
            State::Running => Ok(TunnelTarget {
                ip: l.net.host_ip.into(),
                closed: l.closed.clone(),
            }),
            State::Error => Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is in error: {}",
                rec.error.as_deref().unwrap_or("unknown")
            ))),
            state => Err(BackendError::FailedPrecondition(format!(
                "sandbox {id} is {}, not running",
                state_name(state)
            ))),
        }
    }

    async fn disk_allocated(&self, id: &str) -> Result<u64, BackendError> {
        let l = self.live(id).await?;
        storage::allocated_bytes(&l.dir.join("rootfs.qcow2"))
            .map_err(|e| BackendError::Internal(format!("disk usage: {e}")))
    }

    async fn metric_samples(&self, id: &str, start_ms: i64, end_ms: i64) -> Vec<pb::MetricSample> {
        self.metrics.range(id, start_ms, end_ms)
    }

    fn host_facts(&self) -> pb::PingResponse {
        let running = self
            .live
            .try_read()
            .map(|m| m.len() as u32)
            .unwrap_or_default();
        pb::PingResponse {
            host_id: self.cfg.host_id.clone().unwrap_or_default(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            accelerator: match self.accel {
                Accel::Kvm => "kvm".into(),
                Accel::Tcg => "tcg".into(),
            },
            cpu_count: self.host_cpus,
            memory_total_bytes: self.host_mem_mb * 1024 * 1024,
            sandboxes_running: running,
            ..Default::default()
        }
    }
}
