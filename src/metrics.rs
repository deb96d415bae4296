//! Prometheus metrics: counters and histograms recorded from each finished request and from token
//! refreshes, rendered at `GET /metrics`. Labels carry account names, models and statuses — never a secret.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::RequestRow;

/// Install the process-wide recorder (once); `None` if another recorder is already installed.
pub fn install() -> Option<PrometheusHandle> {
    let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
    PrometheusBuilder::new().set_buckets(&buckets).ok()?.install_recorder().ok()
}

/// Count a finished request.
pub fn request(row: &RequestRow) {
    let account = row.account.clone().unwrap_or_else(|| "none".to_owned());
    let model = row.model.clone().unwrap_or_else(|| "none".to_owned());
    let status = row.status.to_string();
    counter!("switchyard_requests_total", "account" => account.clone(), "model" => model.clone(), "status" => status)
        .increment(1);
    for (kind, n) in [
        ("input", row.input_tokens),
        ("output", row.output_tokens),
        ("cache_read", row.cache_read_tokens),
        ("cache_creation", row.cache_creation_tokens),
    ] {
        if n > 0 {
            counter!("switchyard_tokens_total", "account" => account.clone(), "model" => model.clone(), "kind" => kind)
                .increment(u64::try_from(n).unwrap_or(0));
        }
    }
    if row.cost_usd > 0.0 {
        gauge!("switchyard_cost_usd_total", "account" => account.clone(), "model" => model).increment(row.cost_usd);
    }
    if row.attempts > 1 {
        counter!("switchyard_failovers_total").increment(u64::try_from(row.attempts - 1).unwrap_or(0));
    }
    histogram!("switchyard_request_duration_seconds", "account" => account.clone())
        .record(row.duration_ms as f64 / 1000.0);
    if let Some(ttfb) = row.ttfb_ms {
        histogram!("switchyard_upstream_ttfb_seconds", "account" => account).record(ttfb as f64 / 1000.0);
    }
}

/// A token refresh ended.
pub fn refresh(account: &str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("switchyard_token_refreshes_total", "account" => account.to_owned(), "outcome" => outcome).increment(1);
}

/// A stream opened (`+1`) or closed (`-1`).
pub fn open_streams(delta: f64) {
    gauge!("switchyard_open_streams").increment(delta);
}

/// Values read at scrape time.
pub fn scrape_gauges(rate_limited_accounts: usize, log_dropped: u64) {
    gauge!("switchyard_rate_limited_accounts").set(rate_limited_accounts as f64);
    gauge!("switchyard_request_log_dropped_total").set(log_dropped as f64);
}
