//! `GET /metrics`: CPU, memory and root-disk usage of the sandbox, for the control plane.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use http::StatusCode;
use procfs::{Current, CurrentSI};
use serde::Serialize;

use super::error::ApiError;

/// Shortest interval over which a CPU percentage is meaningful; a first call (or one right
/// after another) samples twice this far apart.
const MIN_CPU_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Serialize)]
pub struct Metrics {
    pub ts: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f32,
    pub mem_total: u64,
    pub mem_used: u64,
    pub mem_cache: u64,
    pub mem_total_mib: u64,
    pub mem_used_mib: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// Busy and total CPU ticks at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    busy: u64,
    total: u64,
}

/// Remembers the last `/proc/stat` sample so each call reports usage since the previous one.
#[derive(Default)]
pub struct CpuSampler {
    last: Mutex<Option<CpuSample>>,
}

impl CpuSampler {
    async fn used_pct(&self) -> Result<f32, ApiError> {
        let prev = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = match prev {
            Some(p) if p.at.elapsed() >= MIN_CPU_WINDOW => p,
            _ => {
                let p = cpu_sample()?;
                tokio::time::sleep(MIN_CPU_WINDOW).await;
                p
            }
        };
        let now = cpu_sample()?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        Ok(pct(prev, now))
    }
}

fn pct(prev: CpuSample, now: CpuSample) -> f32 {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 {
        return 0.0;
    }
    let busy = now.busy.saturating_sub(prev.busy).min(total);
    (busy as f64 * 100.0 / total as f64) as f32
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"))
}

fn cpu_sample() -> Result<CpuSample, ApiError> {
    let stat = procfs::KernelStats::current().map_err(|e| internal("read /proc/stat", e))?;
    let t = stat.total;
    let idle = t.idle + t.iowait.unwrap_or(0);
    // guest time is already counted in user and nice.
    let busy = t.user
        + t.nice
        + t.system
        + t.irq.unwrap_or(0)
        + t.softirq.unwrap_or(0)
        + t.steal.unwrap_or(0);
    Ok(CpuSample {
        at: Instant::now(),
        busy,
        total: busy + idle,
    })
}

pub async fn metrics(sampler: &CpuSampler) -> Result<Json<Metrics>, ApiError> {
    let cpu_used_pct = sampler.used_pct().await?;
    let cpu_count = procfs::KernelStats::current()
        .map_err(|e| internal("read /proc/stat", e))?
        .cpu_time
        .len() as u32;
    let mem = procfs::Meminfo::current().map_err(|e| internal("read /proc/meminfo", e))?;
    let available = mem
        .mem_available
        .unwrap_or(mem.mem_free + mem.buffers + mem.cached);
    let mem_used = mem.mem_total.saturating_sub(available);
    let fs = nix::sys::statvfs::statvfs("/").map_err(|e| internal("statvfs /", e))?;
    let frsize = fs.fragment_size();
    let disk_total = fs.blocks() * frsize;
    let disk_used = fs.blocks().saturating_sub(fs.blocks_free()) * frsize;
    Ok(Json(Metrics {
        ts: time::OffsetDateTime::now_utc().unix_timestamp(),
        cpu_count,
        cpu_used_pct,
        mem_total: mem.mem_total,
        mem_used,
        mem_cache: mem.cached,
        mem_total_mib: mem.mem_total / (1024 * 1024),
        mem_used_mib: mem_used / (1024 * 1024),
        disk_used,
        disk_total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percentage() {
        let at = Instant::now();
        let s = |busy, total| CpuSample { at, busy, total };
        assert_eq!(pct(s(10, 100), s(60, 200)), 50.0);
        assert_eq!(pct(s(10, 100), s(10, 100)), 0.0);
        assert_eq!(
            pct(s(10, 100), s(5, 90)),
            0.0,
            "counter resets do not go negative"
        );
    }
}
