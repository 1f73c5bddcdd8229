//! The result table: markdown for people, JSON for machines.

use serde::Serialize;

use crate::stats::{RatioSpread, Summary, diff_spread, ratio_spread, summarize};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub unit: String,
    pub ours: Option<Summary>,
    pub baseline_name: String,
    pub baseline: Option<Summary>,
    /// Spread of per-pair ours/baseline.
    pub ratio: Option<RatioSpread>,
    /// Spread of per-pair ours - baseline (same unit).
    pub diff: Option<RatioSpread>,
    /// Why the scenario produced no numbers, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    pub fn paired(
        scenario: &str,
        unit: &str,
        baseline_name: &str,
        ours: &[f64],
        base: &[f64],
    ) -> Row {
        Row {
            scenario: scenario.into(),
            unit: unit.into(),
            ours: Some(summarize(ours)),
            baseline_name: baseline_name.into(),
            baseline: Some(summarize(base)),
            ratio: Some(ratio_spread(ours, base)),
            diff: Some(diff_spread(ours, base)),
            error: None,
        }
    }

    /// Summaries over all samples (e.g. every request's latency) beside a spread from
    /// paired per-round values (e.g. each round's median), when the samples themselves do
    /// not pair up one to one.
    pub fn spread(
        scenario: &str,
        unit: &str,
        baseline_name: &str,
        ours: Summary,
        base: Summary,
        ours_rounds: &[f64],
        base_rounds: &[f64],
    ) -> Row {
        Row {
            scenario: scenario.into(),
            unit: unit.into(),
            ours: Some(ours),
            baseline_name: baseline_name.into(),
            baseline: Some(base),
            ratio: Some(ratio_spread(ours_rounds, base_rounds)),
            diff: Some(diff_spread(ours_rounds, base_rounds)),
            error: None,
        }
    }

    /// A single measured value (no baseline), e.g. memory.
    pub fn single(scenario: &str, unit: &str, value: f64) -> Row {
        Row {
            scenario: scenario.into(),
            unit: unit.into(),
            ours: Some(summarize(&[value])),
            baseline_name: String::new(),
            baseline: None,
            ratio: None,
            diff: None,
            error: None,
        }
    }

    pub fn not_available(scenario: &str) -> Row {
        Row {
            scenario: scenario.into(),
            unit: String::new(),
            ours: None,
            baseline_name: String::new(),
            baseline: None,
            ratio: None,
            diff: None,
            error: None,
        }
    }

    /// A scenario that failed: no numbers, the error (first line) instead.
    pub fn failed(scenario: &str, error: &anyhow::Error) -> Row {
        Row {
            error: Some(
                format!("{error:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            ..Row::not_available(scenario)
        }
    }
}

fn num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | unit | ours p50 | ours p95 | baseline | base p50 | base p95 | ratio p50 (p5–p95) | diff p50 (p5–p95) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        match (&r.ours, &r.baseline, &r.ratio, &r.diff) {
            (Some(o), Some(b), Some(q), Some(d)) => out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} ({}–{}) | {} ({}–{}) |\n",
                r.scenario,
                r.unit,
                num(o.p50),
                num(o.p95),
                r.baseline_name,
                num(b.p50),
                num(b.p95),
                num(q.p50),
                num(q.p5),
                num(q.p95),
                num(d.p50),
                num(d.p5),
                num(d.p95),
            )),
            (Some(o), None, _, _) => out.push_str(&format!(
                "| {} | {} | {} | | | | | | |\n",
                r.scenario,
                r.unit,
                num(o.p50)
            )),
            _ => match &r.error {
                Some(e) => out.push_str(&format!(
                    "| {} | **failed**: {} | | | | | | | |\n",
                    r.scenario,
                    e.replace('|', "/")
                )),
                None => out.push_str(&format!(
                    "| {} | not available | | | | | | | |\n",
                    r.scenario
                )),
            },
        }
    }
    out
}
