//! Percentiles and paired ratios.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Summary {
        n: s.len(),
        p50: percentile(&s, 50.0),
        p95: percentile(&s, 95.0),
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

/// Per-pair ratios ours/baseline, summarised (p5/p50/p95 give the spread).
#[derive(Debug, Clone, Serialize)]
pub struct RatioSpread {
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
}

pub fn ratio_spread(ours: &[f64], base: &[f64]) -> RatioSpread {
    let mut r: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o / b).collect();
    r.sort_by(|a, b| a.total_cmp(b));
    RatioSpread {
        p5: percentile(&r, 5.0),
        p50: percentile(&r, 50.0),
        p95: percentile(&r, 95.0),
    }
}

/// Per-pair differences ours - baseline, summarised.
pub fn diff_spread(ours: &[f64], base: &[f64]) -> RatioSpread {
    let mut r: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o - b).collect();
    r.sort_by(|a, b| a.total_cmp(b));
    RatioSpread {
        p5: percentile(&r, 5.0),
        p50: percentile(&r, 50.0),
        p95: percentile(&r, 95.0),
    }
}
