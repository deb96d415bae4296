//! Prometheus metrics: counters and histograms recorded from each finished request and from token
//! refreshes, rendered at `GET /metrics`. Labels carry account names, models and statuses — never a secret.

use std::cell::RefCell;
use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::RequestRow;

static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// Install the process-wide recorder (once); `None` if another recorder is already installed.
pub fn install() -> Option<PrometheusHandle> {
    let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
    let handle = PrometheusBuilder::new().set_buckets(&buckets).ok()?.install_recorder().ok()?;
    Some(HANDLE.get_or_init(|| handle).clone())
}

/// Fold recorded histogram samples into their buckets. The recorder keeps every sample until this (or a
/// scrape) runs, so without it memory grows with each request and allocation slows the proxy.
pub fn upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// The handles one (account, model, status) records into.
struct Handles {
    requests: Counter,
    tokens: [Counter; 4],
    cost: Gauge,
    failovers: Counter,
    duration: Histogram,
    ttfb: Histogram,
}

const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_creation"];

impl Handles {
    fn new(account: &str, model: &str, status: i64) -> Self {
        let (account, model) = (account.to_owned(), model.to_owned());
        Self {
            requests: counter!("switchyard_requests_total", "account" => account.clone(), "model" => model.clone(),
                "status" => status.to_string()),
            tokens: TOKEN_KINDS.map(|kind| {
                counter!("switchyard_tokens_total", "account" => account.clone(), "model" => model.clone(), "kind" => kind)
            }),
            cost: gauge!("switchyard_cost_usd_total", "account" => account.clone(), "model" => model),
            failovers: counter!("switchyard_failovers_total"),
            duration: histogram!("switchyard_request_duration_seconds", "account" => account.clone()),
            ttfb: histogram!("switchyard_upstream_ttfb_seconds", "account" => account),
        }
    }
}

/// Label combinations seen before, per thread, so a request costs no registry lookups and no label
/// allocations; bounded (cleared past a few thousand combinations, which only costs lookups again).
struct Cache {
    key: String,
    handles: HashMap<String, Handles>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache { key: String::new(), handles: HashMap::new() });
}

/// Count a finished request.
pub fn request(row: &RequestRow) {
    let account = row.account.as_deref().unwrap_or("none");
    let model = row.model.as_deref().unwrap_or("none");
    CACHE.with_borrow_mut(|cache| {
        use std::fmt::Write;
        cache.key.clear();
        let _ = write!(cache.key, "{account}\0{model}\0{}", row.status);
        if !cache.handles.contains_key(cache.key.as_str()) {
            if cache.handles.len() >= 4096 {
                cache.handles.clear();
            }
            cache.handles.insert(cache.key.clone(), Handles::new(account, model, row.status));
        }
        let Some(h) = cache.handles.get(cache.key.as_str()) else { return };
        h.requests.increment(1);
        let counts = [row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_creation_tokens];
        for (counter, n) in h.tokens.iter().zip(counts) {
            if n > 0 {
                counter.increment(u64::try_from(n).unwrap_or(0));
            }
        }
        if row.cost_usd > 0.0 {
            h.cost.increment(row.cost_usd);
        }
        if row.attempts > 1 {
            h.failovers.increment(u64::try_from(row.attempts - 1).unwrap_or(0));
        }
        h.duration.record(row.duration_ms as f64 / 1000.0);
        if let Some(ttfb) = row.ttfb_ms {
            h.ttfb.record(ttfb as f64 / 1000.0);
        }
    });
}

/// A token refresh ended.
pub fn refresh(account: &str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("switchyard_token_refreshes_total", "account" => account.to_owned(), "outcome" => outcome).increment(1);
}

/// A stream opened (`+1`) or closed (`-1`).
pub fn open_streams(delta: f64) {
    thread_local! {
        static OPEN: Gauge = gauge!("switchyard_open_streams");
    }
    OPEN.with(|g| g.increment(delta));
}

/// Values read at scrape time.
pub fn scrape_gauges(rate_limited_accounts: usize, log_dropped: u64) {
    gauge!("switchyard_rate_limited_accounts").set(rate_limited_accounts as f64);
    gauge!("switchyard_request_log_dropped_total").set(log_dropped as f64);
}
