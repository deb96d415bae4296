//! Prometheus metrics: counters and histograms recorded from each finished request and from token
//! refreshes, rendered at `GET /metrics`. Labels carry account names, models and statuses — never a secret.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::RequestRow;

/// Install the process-wide recorder (once) for counters and gauges; `None` if another recorder is
/// already installed. Histograms are kept here (`Latency`), so the exporter holds no samples to fold.
/// With `instance` (several instances on one database) every series carries `instance="…"`, so that
/// figures scraped from several instances can be told apart and summed.
pub fn install(instance: Option<&str>) -> Option<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    if let Some(instance) = instance {
        builder = builder.add_global_label("instance", instance);
        let _ = INSTANCE.set(escape(instance));
    }
    builder.install_recorder().ok()
}

/// The `instance` label's value (escaped) when several instances share a database.
static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 15] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// A latency histogram kept here rather than in the exporter: the exporter stores every sample in a
/// shared lock-free list until upkeep, which under load costs more than the rest of a request's metrics
/// and makes the proxy's speed depend on which cores its threads land on. Buckets are plain counters.
#[derive(Default)]
struct Latency {
    /// Per bucket (the last one is `+Inf`), not cumulative; rendering adds them up.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Latency {
    fn record(&self, ms: i64) {
        let secs = ms as f64 / 1000.0;
        let slot = BUCKETS.partition_point(|bound| *bound < secs);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(ms).unwrap_or(0) * 1000, Ordering::Relaxed);
    }
}

/// The histograms by name and account, for rendering.
type LatencyTable = Vec<(&'static str, String, Arc<Latency>)>;
static LATENCY: Mutex<LatencyTable> = Mutex::new(Vec::new());

fn latency(name: &'static str, account: &str) -> Arc<Latency> {
    let mut table = LATENCY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, _, h)) = table.iter().find(|(n, a, _)| *n == name && a == account) {
        return h.clone();
    }
    let h = Arc::new(Latency::default());
    table.push((name, account.to_owned(), h.clone()));
    h
}

/// The latency histograms in Prometheus text, to follow the exporter's output.
pub fn render_latency() -> String {
    let table = LATENCY.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = String::new();
    for name in ["switchyard_request_duration_seconds", "switchyard_upstream_ttfb_seconds"] {
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (_, account, h) in table.iter().filter(|(n, _, _)| *n == name) {
            let mut labels = format!("account=\"{}\"", escape(account));
            if let Some(instance) = INSTANCE.get() {
                let _ = write!(labels, ",instance=\"{instance}\"");
            }
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            render_histogram(&mut out, name, &labels, &BUCKETS, &h.buckets, sum);
        }
    }
    render_overhead(&mut out);
    out
}

/// One histogram's series: cumulative buckets (`counts` per bucket, the last one `+Inf`), sum and count.
fn render_histogram(out: &mut String, name: &str, labels: &str, bounds: &[f64], counts: &[AtomicU64], sum: f64) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut total = 0u64;
    for (i, bucket) in counts.iter().enumerate() {
        total += bucket.load(Ordering::Relaxed);
        let le = bounds.get(i).map_or_else(|| "+Inf".to_owned(), f64::to_string);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
    }
    let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braced} {sum}");
    let _ = writeln!(out, "{name}_count{braced} {total}");
}

/// Upper bounds (seconds) of `switchyard_overhead_seconds`: Switchyard's own time is microseconds.
const OVERHEAD_BUCKETS: [f64; 12] =
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];

/// Time spent in Switchyard per request, without the waits for the client and the upstream.
struct Overhead {
    buckets: [AtomicU64; OVERHEAD_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

static OVERHEAD: Overhead =
    Overhead { buckets: [const { AtomicU64::new(0) }; OVERHEAD_BUCKETS.len() + 1], sum_nanos: AtomicU64::new(0) };

/// A request's own time in Switchyard (from its head's arrival to its answer's head, minus waiting).
pub fn overhead(own: std::time::Duration) {
    let secs = own.as_secs_f64();
    let slot = OVERHEAD_BUCKETS.partition_point(|bound| *bound < secs);
    OVERHEAD.buckets[slot].fetch_add(1, Ordering::Relaxed);
    OVERHEAD.sum_nanos.fetch_add(u64::try_from(own.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn render_overhead(out: &mut String) {
    let name = "switchyard_overhead_seconds";
    let labels = INSTANCE.get().map(|i| format!("instance=\"{i}\"")).unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP {name} Time spent in Switchyard per request, without waiting for the client or the upstream"
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let sum = OVERHEAD.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    render_histogram(out, name, &labels, &OVERHEAD_BUCKETS, &OVERHEAD.buckets, sum);
}

/// The handles one (account, model, status) records into.
struct Handles {
    requests: Counter,
    tokens: [Counter; 4],
    cost: Gauge,
    failovers: Counter,
    duration: Arc<Latency>,
    ttfb: Arc<Latency>,
}

const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_creation"];

impl Handles {
    fn new(account: &str, model: &str, status: i64, dialect: &str) -> Self {
        let (account, model) = (account.to_owned(), model.to_owned());
        Self {
            requests: counter!("switchyard_requests_total", "account" => account.clone(), "model" => model.clone(),
                "status" => status.to_string(), "dialect" => dialect.to_owned()),
            tokens: TOKEN_KINDS.map(|kind| {
                counter!("switchyard_tokens_total", "account" => account.clone(), "model" => model.clone(), "kind" => kind)
            }),
            cost: gauge!("switchyard_cost_usd_total", "account" => account.clone(), "model" => model),
            failovers: counter!("switchyard_failovers_total"),
            duration: latency("switchyard_request_duration_seconds", &account),
            ttfb: latency("switchyard_upstream_ttfb_seconds", &account),
        }
    }
}

/// Label combinations seen before, per thread, so a request costs no registry lookups and no label
/// allocations; bounded (cleared past a few thousand combinations, which only costs lookups again).
struct Cache {
    key: String,
    handles: HashMap<String, Handles>,
    /// Tokens per client key and kind (key names are the operator's, so their number is bounded).
    keys: HashMap<String, [Counter; 4]>,
}

thread_local! {
    static CACHE: RefCell<Cache> =
        RefCell::new(Cache { key: String::new(), handles: HashMap::new(), keys: HashMap::new() });
}

/// Distinct model labels at most; later models are counted under `other`. The model is the client's
/// string: without a bound every new name would be a new series, kept for the life of the process.
const MAX_MODEL_LABELS: usize = 64;

static MODEL_LABELS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// The label a model is counted under: itself while it is short and plain and the label set has room,
/// else `other`.
fn model_label(model: &str) -> &str {
    let plain = model.len() <= 64
        && model.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if !plain {
        return "other";
    }
    let known = |labels: &Vec<String>| labels.iter().any(|l| l == model);
    if MODEL_LABELS.read().map(|l| known(&l)).unwrap_or(false) {
        return model;
    }
    let Ok(mut labels) = MODEL_LABELS.write() else { return "other" };
    if known(&labels) {
        return model;
    }
    if labels.len() >= MAX_MODEL_LABELS {
        return "other";
    }
    labels.push(model.to_owned());
    model
}

/// Count a finished request.
pub fn request(row: &RequestRow) {
    let account = row.account.as_deref().unwrap_or("none");
    let model = row.model.as_deref().map_or("none", model_label);
    // Our own names only (never the client's string): `anthropic`, `openai`.
    let dialect = match row.dialect.as_deref() {
        Some("openai") => "openai",
        Some("openai-responses") => "openai-responses",
        _ => "anthropic",
    };
    CACHE.with_borrow_mut(|cache| {
        cache.key.clear();
        let _ = write!(cache.key, "{account}\0{model}\0{}\0{dialect}", row.status);
        if !cache.handles.contains_key(cache.key.as_str()) {
            if cache.handles.len() >= 4096 {
                cache.handles.clear();
            }
            cache.handles.insert(cache.key.clone(), Handles::new(account, model, row.status, dialect));
        }
        let counts = [row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_creation_tokens];
        if let Some(key) = row.client_key.as_deref()
            && counts.iter().any(|n| *n > 0)
        {
            if !cache.keys.contains_key(key) {
                if cache.keys.len() >= 4096 {
                    cache.keys.clear();
                }
                let counters = TOKEN_KINDS
                    .map(|kind| counter!("switchyard_key_tokens_total", "key" => key.to_owned(), "kind" => kind));
                cache.keys.insert(key.to_owned(), counters);
            }
            if let Some(counters) = cache.keys.get(key) {
                for (counter, n) in counters.iter().zip(counts) {
                    if n > 0 {
                        counter.increment(u64::try_from(n).unwrap_or(0));
                    }
                }
            }
        }
        let Some(h) = cache.handles.get(cache.key.as_str()) else { return };
        h.requests.increment(1);
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
        h.duration.record(row.duration_ms);
        if let Some(ttfb) = row.ttfb_ms {
            h.ttfb.record(ttfb);
        }
    });
}

/// A token refresh ended.
pub fn refresh(account: &str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("switchyard_token_refreshes_total", "account" => account.to_owned(), "outcome" => outcome).increment(1);
}

static OPEN_STREAMS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// A stream opened (`+1`) or closed (`-1`).
pub fn open_streams(delta: f64) {
    thread_local! {
        static OPEN: Gauge = gauge!("switchyard_open_streams");
    }
    OPEN.with(|g| g.increment(delta));
    OPEN_STREAMS.fetch_add(if delta > 0.0 { 1 } else { -1 }, std::sync::atomic::Ordering::Relaxed);
}

/// Streams open right now (for the dashboard, which does not parse the exporter's text).
pub fn open_streams_now() -> i64 {
    OPEN_STREAMS.load(std::sync::atomic::Ordering::Relaxed).max(0)
}

/// Values read at scrape time.
pub fn scrape_gauges(rate_limited_accounts: usize, log_dropped: u64) {
    gauge!("switchyard_rate_limited_accounts").set(rate_limited_accounts as f64);
    gauge!("switchyard_request_log_dropped_total").set(log_dropped as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_render_cumulative_with_sum_and_count() {
        let h = latency("switchyard_upstream_ttfb_seconds", "we\"ird");
        for ms in [3, 7, 7, 400_000] {
            h.record(ms);
        }
        let text = render_latency();
        let line = |le: &str| format!("switchyard_upstream_ttfb_seconds_bucket{{account=\"we\\\"ird\",le=\"{le}\"}}");
        assert!(text.contains(&format!("{} 1\n", line("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", line("0.01"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", line("300"))), "{text}");
        assert!(text.contains(&format!("{} 4\n", line("+Inf"))), "{text}");
        assert!(text.contains("switchyard_upstream_ttfb_seconds_count{account=\"we\\\"ird\"} 4\n"), "{text}");
        assert!(text.contains("switchyard_upstream_ttfb_seconds_sum{account=\"we\\\"ird\"} 400.017\n"), "{text}");
    }
}
