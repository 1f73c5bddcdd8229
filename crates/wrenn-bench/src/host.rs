//! The host stand-in the VM scenarios run in: a network namespace this benchmark creates
//! (on its own thread, since namespaces are per thread), the base template, and the raw
//! floor a cold create is read against — the same QEMU argv with its netns, TAP and overlay
//! made beforehand, timed from exec to the first 2xx from envd's `/health`. Everything is
//! removed at the end, also on Ctrl-C.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use wrenn_agent::network::{Network, NetworkConfig};
use wrenn_agent::vmm::qemu::qemu_args;
use wrenn_agent::vmm::{Accel, QemuVmm, VmSpec};

use crate::Args;

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to wrenn-bench (cargo build -p {name})",
            p.display()
        );
    }
    Ok(p)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("ip").args(args).status()?;
    anyhow::ensure!(st.success(), "ip {args:?} failed");
    Ok(())
}

/// Cleans up on drop: agent, VMs under the files root, namespaces.
pub(crate) struct Env {
    pub host_ns: String,
    pub prefix: String,
    pub root: tempfile::TempDir,
    pub agent: Option<Child>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let root = self.root.path().to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let argv0 = cmd.split('\0').next().unwrap_or("");
            if wrenn_agent::vmm::is_qemu_argv0(argv0) && cmd.contains(&root) {
                // SAFETY: a QEMU this benchmark started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with(&format!("{}-", self.prefix))
                    || name.starts_with(&format!("{}r-", self.prefix))
                {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host_ns])
            .status();
    }
}

fn image_root(wrenn: &Path, envd: &Path) -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(
        std::env::var("WRENN_TEST_IMAGE_ROOT")
            .unwrap_or_else(|_| "/var/cache/wrenn/test-root".into()),
    );
    std::fs::create_dir_all(&root)?;
    let lock = std::fs::File::create(root.join(".lock"))?;
    // SAFETY: flock on an fd we own; released when `lock` drops.
    anyhow::ensure!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0,
        "flock"
    );
    let st = Command::new(wrenn)
        .args(["image", "build", "--plain", "--root"])
        .arg(&root)
        .arg("--envd")
        .arg(envd)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(st.success(), "wrenn image build failed");
    Ok(root)
}

fn rand_tag() -> String {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    format!("{:02x}{:02x}", b[0], b[1])
}

/// Runs `f` on a dedicated thread inside a fresh network namespace standing in for the host
/// (everything `f` connects to or spawns lives there), with the base template built under
/// the shared image root. `f` gets the [`Env`] whose drop removes what it made; Ctrl-C drops
/// `f`'s future, so the cleanup runs then too.
pub(crate) fn in_host_ns<T, F, Fut>(args: &Args, multi_thread: bool, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Env, PathBuf, PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let envd = match &args.envd {
        Some(p) => p.clone(),
        None => sibling("envd")?,
    };
    let wrenn = match &args.wrenn {
        Some(p) => p.clone(),
        None => sibling("wrenn")?,
    };
    std::thread::spawn(move || -> anyhow::Result<T> {
        let images = image_root(&wrenn, &envd)?;
        let tag = rand_tag();
        let env = Env {
            host_ns: format!("wb{tag}h"),
            prefix: format!("b{tag}"),
            root: tempfile::tempdir_in("/var/tmp")?,
            agent: None,
        };
        ip(&["netns", "add", &env.host_ns])?;
        ip(&["-n", &env.host_ns, "link", "set", "lo", "up"])?;
        let f_ns = std::fs::File::open(format!("/run/netns/{}", env.host_ns))?;
        // SAFETY: setns for this thread only, on a valid namespace fd. Threads it starts
        // afterwards (runtime workers) inherit the namespace.
        anyhow::ensure!(
            unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
            "setns"
        );
        let rt = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        };
        rt.block_on(crate::interrupt::guarded(f(env, images, wrenn)))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

/// The raw floor of a cold create: QEMU with the agent's own argv for a 256 MiB, 1 vCPU
/// sandbox of the base template, its netns/veth/TAP and qcow2 overlay made before the clock
/// starts; timed from exec until envd's `/health` first answers 2xx.
pub(crate) struct Floor {
    net: Network,
    kernel: PathBuf,
    initrd: PathBuf,
    base: PathBuf,
    work: PathBuf,
    http: reqwest::Client,
}

impl Floor {
    /// `prefix` must differ from the agent's network prefix; `work` is where overlays and run
    /// dirs go (removed after each boot).
    pub fn new(images: &Path, prefix: String, work: PathBuf) -> anyhow::Result<Floor> {
        let manifest =
            match wrenn_image::Manifest::load(&wrenn_image::Layout::new(images).manifest("base")) {
                wrenn_image::manifest::Loaded::Present(m) => m,
                _ => bail!("no base template under {}", images.display()),
            };
        Ok(Floor {
            net: Network::new(NetworkConfig {
                prefix,
                max_slots: 64,
            }),
            kernel: images.join(&manifest.kernel.vmlinuz),
            initrd: images.join(&manifest.kernel.initrd),
            base: images.join(&manifest.rootfs.path),
            work,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        })
    }

    /// One raw boot (the `i`th); milliseconds from exec to `/health` 2xx.
    pub async fn boot(&self, i: usize) -> anyhow::Result<f64> {
        let vm = self.start(i).await?;
        let took = vm.took;
        self.stop(vm).await?;
        Ok(took)
    }

    /// Boots the `i`th raw VM and leaves it running (see [`Floor::stop`]).
    pub async fn start(&self, i: usize) -> anyhow::Result<FloorVm> {
        let slot = 40 + (i as u32 % 20);
        let net = self
            .net
            .setup(slot, &wrenn_agent::network::Egress::default())
            .await?;
        let dir = self.work.join(format!("floor{i}"));
        std::fs::create_dir_all(&dir)?;
        let overlay = dir.join("rootfs.qcow2");
        wrenn_agent::storage::create_overlay(&self.base, &overlay, None).await?;
        let spec = VmSpec {
            sandbox_id: format!("floor{i}"),
            vcpus: 1,
            memory_mb: 256,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            kernel_args: net.kernel_param(),
            root_disk: overlay,
            netns: Some(net.netns.clone()),
            tap: Some(net.tap.clone()),
            guest_mac: Some(net.guest_mac.clone()),
            run_dir: dir.join("run"),
            accel: Accel::Tcg,
            memory_file: None,
            uid: None,
        };
        std::fs::create_dir_all(&spec.run_dir)?;
        let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
        cmd.args(qemu_args(&spec))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        wrenn_agent::network::netns::command_in(&mut cmd, &net.netns)?;
        let url = format!("http://{}:49983/health", net.host_ip);
        let t = Instant::now();
        let st = cmd.status().await?;
        anyhow::ensure!(st.success(), "raw qemu failed to start");
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(180),
                "raw VM never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(FloorVm {
            slot,
            dir,
            run_dir: spec.run_dir,
            took: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub async fn stop(&self, vm: FloorVm) -> anyhow::Result<()> {
        QemuVmm::new().kill_run_dir(&vm.run_dir).await?;
        self.net.teardown(vm.slot).await?;
        std::fs::remove_dir_all(&vm.dir)?;
        Ok(())
    }
}

/// A raw VM [`Floor::start`] left running.
pub(crate) struct FloorVm {
    slot: u32,
    dir: PathBuf,
    run_dir: PathBuf,
    /// Milliseconds from exec to `/health` 2xx.
    pub took: f64,
}

/// RSS and PSS (MiB) of every QEMU whose command line names `under`.
pub(crate) fn qemu_memory_all(under: &Path) -> Vec<(f64, f64)> {
    let under = under.to_string_lossy();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let argv0 = cmd.split('\0').next().unwrap_or("");
        if !(wrenn_agent::vmm::is_qemu_argv0(argv0) && cmd.contains(under.as_ref())) {
            continue;
        }
        let field = |file: &str, key: &str| -> Option<f64> {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
        };
        if let (Some(r), Some(p)) = (field("status", "VmRSS:"), field("smaps_rollup", "Pss:")) {
            out.push((r, p));
        }
    }
    out
}

/// Host memory in use (MemTotal − MemAvailable), MiB.
pub(crate) fn host_memory_used_mib() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("MemTotal:") - kb("MemAvailable:")) / 1024.0
}

/// RSS and PSS (MiB) of the one QEMU running under `root`.
pub(crate) fn qemu_memory(root: &Path) -> anyhow::Result<(f64, f64)> {
    match qemu_memory_all(root)[..] {
        [one] => Ok(one),
        [] => bail!("no QEMU found"),
        ref many => bail!("{} QEMUs found where one was expected", many.len()),
    }
}
