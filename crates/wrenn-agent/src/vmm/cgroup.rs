//! A control group per VM capping its memory and CPU, so one tenant's guest cannot take a
//! host's memory or cores from the others (DESIGN §11). QEMU joins it between fork and exec,
//! so everything it allocates is counted; the group goes when the VM does.
//!
//! The groups nest under the agent's own (`/proc/self/cgroup`): with systemd that is the
//! service's, which the unit delegates (`Delegate=yes`). Both hierarchies are handled:
//! - v1 (this kind of host: one mount per controller): `memory/…/wrenn-vms/<vm>` and
//!   `cpu/…/wrenn-vms/<vm>`;
//! - v2 (one mount): a group may not hold processes and delegate controllers at once, so the
//!   agent first moves itself into `…/agent`, then enables `memory` and `cpu` for
//!   `…/wrenn-vms`.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// The group holding every VM's group, under the agent's own.
const VMS: &str = "wrenn-vms";
/// CFS period; a VM gets `quota / period` CPUs.
const PERIOD_US: u64 = 100_000;
/// Memory beyond the guest's that QEMU needs (its own heap, the TCG translation cache,
/// device buffers).
pub const OVERHEAD_MIB: u64 = 384;

/// What a VM's group allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU time per [`PERIOD_US`], in µs.
    pub cpu_quota_us: u64,
}

impl Limits {
    /// The guest's memory plus [`OVERHEAD_MIB`]; its vCPUs plus one CPU for QEMU's own
    /// threads (I/O, main loop), so the vCPUs get their full share.
    pub fn for_vm(vcpus: u32, memory_mib: u32) -> Limits {
        Limits {
            memory_bytes: (u64::from(memory_mib) + OVERHEAD_MIB) * 1024 * 1024,
            cpu_quota_us: (u64::from(vcpus) + 1) * PERIOD_US,
        }
    }
}

/// Where VM groups are made on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// `memory` and `cpu` parents (each `…/wrenn-vms`).
    V1 { memory: PathBuf, cpu: PathBuf },
    /// The `…/wrenn-vms` parent, with `memory` and `cpu` delegated.
    V2 { vms: PathBuf },
}

/// One VM's group: the directories to join and remove.
#[derive(Debug, Clone)]
pub struct VmGroup {
    dirs: Vec<PathBuf>,
}

impl Hierarchy {
    /// Where [`Hierarchy::setup`] puts (or put) the VMs' groups for this process, changing
    /// nothing: for cleaning up after VMs that are gone (tests).
    pub fn discover() -> io::Result<Hierarchy> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            let path = own_path(&own, |c| c.is_empty())
                .ok_or_else(|| other("no cgroup v2 entry in /proc/self/cgroup"))?;
            return Ok(Hierarchy::V2 {
                vms: join(Path::new(ROOT), &path).join(VMS),
            });
        }
        let parent = |controller: &str| -> io::Result<PathBuf> {
            let mount = Path::new(ROOT).join(controller);
            if !mount.join("cgroup.procs").exists() {
                return Err(other(&format!(
                    "no cgroup v1 {controller} controller at {}",
                    mount.display()
                )));
            }
            let path =
                own_path(&own, |c| c.split(',').any(|x| x == controller)).unwrap_or_default();
            Ok(join(&mount, &path).join(VMS))
        };
        Ok(Hierarchy::V1 {
            memory: parent("memory")?,
            cpu: parent("cpu")?,
        })
    }

    /// Finds the agent's groups ([`Hierarchy::discover`]) and prepares the parent of the VMs'
    /// groups.
    pub fn setup() -> io::Result<Hierarchy> {
        let h = Self::discover()?;
        match &h {
            Hierarchy::V2 { vms } => {
                let base = vms
                    .parent()
                    .ok_or_else(|| other("the VMs' group has no parent"))?;
                // The agent leaves the group it was started in: that group delegates to its
                // children and may hold no process itself (v2's "no internal processes").
                let agent = base.join("agent");
                std::fs::create_dir_all(&agent)?;
                std::fs::write(agent.join("cgroup.procs"), std::process::id().to_string())?;
                std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu")?;
                std::fs::create_dir_all(vms)?;
                std::fs::write(vms.join("cgroup.subtree_control"), "+memory +cpu")?;
            }
            Hierarchy::V1 { memory, cpu } => {
                std::fs::create_dir_all(memory)?;
                std::fs::create_dir_all(cpu)?;
            }
        }
        Ok(h)
    }

    /// Makes (or reuses) the group named `name` with `limits`.
    pub fn create(&self, name: &str, limits: Limits) -> io::Result<VmGroup> {
        let quota = limits.cpu_quota_us.to_string();
        match self {
            Hierarchy::V1 { memory, cpu } => {
                let (m, c) = (memory.join(name), cpu.join(name));
                std::fs::create_dir_all(&m)?;
                std::fs::create_dir_all(&c)?;
                std::fs::write(
                    m.join("memory.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                )?;
                std::fs::write(c.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
                std::fs::write(c.join("cpu.cfs_quota_us"), quota)?;
                Ok(VmGroup { dirs: vec![m, c] })
            }
            Hierarchy::V2 { vms } => {
                let d = vms.join(name);
                std::fs::create_dir_all(&d)?;
                std::fs::write(d.join("memory.max"), limits.memory_bytes.to_string())?;
                std::fs::write(d.join("cpu.max"), format!("{quota} {PERIOD_US}"))?;
                Ok(VmGroup { dirs: vec![d] })
            }
        }
    }

    /// Removes the group named `name` (its processes gone); a missing group is fine.
    pub async fn remove(&self, name: &str) {
        let dirs = match self {
            Hierarchy::V1 { memory, cpu } => vec![memory.join(name), cpu.join(name)],
            Hierarchy::V2 { vms } => vec![vms.join(name)],
        };
        for d in dirs {
            // An exiting QEMU may hold it a moment longer (EBUSY).
            for _ in 0..50 {
                match std::fs::remove_dir(&d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        tracing::warn!(group = %d.display(), error = %e, "cgroup removal");
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

impl VmGroup {
    /// The `cgroup.procs` files to write the child's PID into before exec (prepared here:
    /// nothing may allocate after fork).
    pub fn procs_files(&self) -> io::Result<Vec<CString>> {
        self.dirs
            .iter()
            .map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .map_err(|e| other(&e.to_string()))
            })
            .collect()
    }
}

/// Joins the calling process to every group in `procs` (between fork and exec: only raw
/// syscalls, no allocation).
pub fn join_from_child(procs: &[CString]) -> io::Result<()> {
    let mut buf = [0u8; 20];
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u64;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for path in procs {
        // SAFETY: a NUL-terminated path, a stack buffer; fd closed below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `buf[i..]` is initialised and in bounds.
        let n = unsafe { libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i) };
        let err = io::Error::last_os_error();
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        if n < 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// The path of the group in `/proc/self/cgroup` whose controller list matches.
fn own_path(text: &str, controllers: impl Fn(&str) -> bool) -> Option<String> {
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, c, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers(c).then(|| path.to_owned())
    })
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

fn other(msg: &str) -> io::Error {
    io::Error::other(msg.to_owned())
}

/// The group name of the VM whose run directory is `run_dir` (absolute): unique per sandbox
/// directory, so agents sharing a machine (tests) never meet.
pub fn group_name(run_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(run_dir.as_os_str().as_encoded_bytes());
    format!("vm-{}", hex::encode(&h[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_groups_are_read_per_controller() {
        let text =
            "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/svc\n0::/user.slice\n";
        assert_eq!(
            own_path(text, |c| c.split(',').any(|x| x == "memory")).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(
            own_path(text, |c| c.split(',').any(|x| x == "cpu")).as_deref(),
            Some("/svc")
        );
        assert_eq!(
            own_path(text, str::is_empty).as_deref(),
            Some("/user.slice")
        );
        assert_eq!(
            join(Path::new(ROOT), "/a/b"),
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
    }

    #[test]
    fn limits_leave_qemu_its_overhead() {
        let l = Limits::for_vm(2, 512);
        assert_eq!(l.memory_bytes, (512 + OVERHEAD_MIB) << 20);
        assert_eq!(l.cpu_quota_us, 3 * PERIOD_US);
    }
}
