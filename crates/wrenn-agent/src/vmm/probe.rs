//! Accelerator choice. `/dev/kvm` existing is not enough: a paravirtual KVM (as on our build
//! machines) crashes stock kernels, so we boot the real kernel under KVM once and take KVM only
//! if it reaches userspace. The answer is cached per (kernel file, QEMU version, host kernel).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{Accel, VmmError};

/// Console lines that mean the kernel got as far as starting init.
const USERSPACE_MARKERS: [&str; 2] = ["Run /init as init process", "Freeing unused kernel image"];

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    entries: BTreeMap<String, CacheEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    accel: Accel,
    reason: String,
    probed_at_unix: u64,
}

/// Picks the accelerator for guests booting `kernel` + `initrd`: `override_` if given, else
/// the cached answer, else a KVM boot probe bounded by `timeout` (anything but reaching
/// userspace means TCG). Returns the choice and a sentence saying why, for the log.
pub async fn choose_accel(
    kernel: &Path,
    initrd: &Path,
    cache_file: &Path,
    override_: Option<Accel>,
    timeout: Duration,
) -> Result<(Accel, String), VmmError> {
    choose_accel_with(
        &crate::preflight::path(crate::preflight::Tool::Qemu),
        kernel,
        initrd,
        cache_file,
        override_,
        timeout,
    )
    .await
}

/// `choose_accel` with an explicit QEMU binary.
pub async fn choose_accel_with(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    cache_file: &Path,
    override_: Option<Accel>,
    timeout: Duration,
) -> Result<(Accel, String), VmmError> {
    if let Some(a) = override_ {
        return Ok((a, format!("{a} forced by configuration (probe skipped)")));
    }
    let key = cache_key(qemu, kernel).await?;
    let mut cache = read_cache(cache_file);
    if let Some(e) = cache.entries.get(&key) {
        return Ok((e.accel, format!("{} (cached probe result)", e.reason)));
    }
    let (accel, reason) = probe(qemu, kernel, initrd, timeout).await?;
    cache.entries.insert(
        key,
        CacheEntry {
            accel,
            reason: reason.clone(),
            probed_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
    );
    if let Err(e) = write_cache(cache_file, &cache) {
        // A lost cache costs one more probe at the next start, nothing else.
        tracing::warn!(
            "cannot write accelerator cache {}: {e}",
            cache_file.display()
        );
    }
    Ok((accel, reason))
}

async fn cache_key(qemu: &Path, kernel: &Path) -> Result<String, VmmError> {
    // Path, size and mtime identify the kernel well enough (a rebuilt or replaced kernel
    // changes its mtime) and cost nothing, unlike hashing 14 MB at every agent start.
    let kernel = std::path::absolute(kernel)?;
    let meta = std::fs::metadata(&kernel)
        .map_err(|e| VmmError::Probe(format!("kernel {}: {e}", kernel.display())))?;
    let out = Command::new(qemu)
        .arg("--version")
        .output()
        .await
        .map_err(|source| VmmError::Spawn {
            binary: qemu.to_path_buf(),
            source,
        })?;
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    Ok(format!(
        "kernel={}:{}:{}.{};qemu={version};host={host}",
        kernel.display(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

fn read_cache(path: &Path) -> Cache {
    std::fs::read(path)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default()
}

fn write_cache(path: &Path, cache: &Cache) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(cache)?)?;
    std::fs::rename(&tmp, path)
}

async fn probe(
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    timeout: Duration,
) -> Result<(Accel, String), VmmError> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Ok((Accel::Tcg, format!("tcg: /dev/kvm cannot be opened ({e})")));
    }
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args([
            "-M",
            "microvm,accel=kvm,pit=on,pic=on,rtc=on",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-append",
            "console=ttyS0 loglevel=7 panic=-1",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| VmmError::Spawn {
            binary: qemu.to_path_buf(),
            source,
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| VmmError::Probe("no stdout".into()))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| VmmError::Probe("no stderr".into()))?;
    // Keep the last console lines: they say why a boot failed.
    let mut tail: Vec<String> = Vec::new();
    let watch = async {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if USERSPACE_MARKERS.iter().any(|m| line.contains(m)) {
                return true;
            }
            if tail.len() == 5 {
                tail.remove(0);
            }
            tail.push(line);
        }
        false
    };
    let outcome = tokio::time::timeout(timeout, watch).await;
    let _ = child.start_kill();
    let status = child.wait().await.ok();
    let mut err = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err).await;
    let secs = started.elapsed().as_secs_f64();
    Ok(match outcome {
        Ok(true) => (
            Accel::Kvm,
            format!("kvm: a KVM test boot reached userspace in {secs:.1}s"),
        ),
        Ok(false) => (
            Accel::Tcg,
            format!(
                "tcg: the KVM test boot failed after {secs:.1}s (QEMU {}; {}{})",
                status.map(|s| s.to_string()).unwrap_or_default(),
                err.trim(),
                last_lines(&tail)
            ),
        ),
        Err(_) => (
            Accel::Tcg,
            format!(
                "tcg: the KVM test boot did not reach userspace within {:.0}s{}",
                timeout.as_secs_f64(),
                last_lines(&tail)
            ),
        ),
    })
}

fn last_lines(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last console output: {}", tail.join(" | "))
    }
}
