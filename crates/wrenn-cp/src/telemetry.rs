//! Prometheus metrics: the process-wide recorder, the per-request middleware and `/metrics`.
//!
//! The recorder is installed once per process (the `metrics` facade allows one global
//! recorder); routers may be built any number of times and all render the same handle.
//! `/metrics` needs no credentials: it is meant to be scraped on a private network, and holds
//! only counts and durations per route template (never IDs, users or teams).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "wrenn_http_requests_total";
pub const REQUEST_DURATION: &str = "wrenn_http_request_duration_seconds";

/// Route label of requests no route matched (the 404 fallback): one series for all of them,
/// so scanners probing random paths cannot grow the label set.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Histogram buckets in seconds: API calls take milliseconds, sandbox creation seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle; installs the global recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Only an empty bucket list is refused, and ours is a non-empty constant.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "histogram buckets refused; durations become summaries");
                PrometheusBuilder::new()
            });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            // Someone else installed a recorder first: /metrics will render nothing of ours.
            tracing::warn!(error = %e, "a metrics recorder was already installed");
        }
        metrics::describe_counter!(REQUESTS_TOTAL, "HTTP requests by method, route and status");
        metrics::describe_histogram!(
            REQUEST_DURATION,
            metrics::Unit::Seconds,
            "HTTP request duration by method and route (until the response head)"
        );
        handle
    })
}

/// Drains histogram buffers now and then so memory stays bounded between scrapes. Call once
/// from the server (tests render often enough not to need it).
pub fn spawn_upkeep() -> tokio::task::JoinHandle<()> {
    let h = handle();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            h.run_upkeep();
        }
    })
}

/// Bounded method label: anything but the standard methods counts as `OTHER`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Middleware: counts every request and times it, labelled by the matched route template
/// (`/v1/teams/{id}/members`), never the raw path.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(REQUESTS_TOTAL, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: Prometheus text exposition format.
pub async fn metrics_handler() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        handle().render(),
    )
}
