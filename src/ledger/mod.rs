//! The request log: what each proxied request did (account, model, tokens, cost, timing, status), read
//! from the answer as it streams past, and written to the store by a background writer fed through a
//! bounded channel — a full channel drops (and counts) a record rather than slow a request.

mod payload;
mod usage;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

pub use payload::{PayloadMode, PayloadPolicy, RawPayload, reseal_payloads};
pub use usage::{SseTap, Usage, json_usage};

use crate::store::{RequestRow, Store};

/// Handle for recording requests; cheap to share.
#[derive(Debug)]
pub struct RequestLog {
    tx: mpsc::Sender<(RequestRow, Option<RawPayload>)>,
    queued: AtomicU64,
    dropped: AtomicU64,
    /// Rows the writer has finished with (written or given up on).
    done: Arc<AtomicU64>,
    persist: bool,
    /// Where per-key spend is added up for budgets.
    spend: Option<Arc<crate::access::ClientKeys>>,
}

impl RequestLog {
    /// Start the writer; it ends when every handle is gone and the queue is drained.
    /// With `store` `None` nothing is written; requests still feed the metrics.
    pub fn start(
        store: Option<Arc<dyn Store>>,
        capacity: usize,
        spend: Option<Arc<crate::access::ClientKeys>>,
        payloads: Option<Arc<PayloadPolicy>>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let done = Arc::new(AtomicU64::new(0));
        let store_on = store.is_some();
        if let Some(store) = store {
            tokio::spawn(write_batches(store, rx, done.clone(), payloads));
        }
        Arc::new(Self { tx, queued: AtomicU64::new(0), dropped: AtomicU64::new(0), done, persist: store_on, spend })
    }

    /// Queue a record without waiting; when the queue is full the record is dropped and counted.
    pub fn record(&self, row: RequestRow) {
        self.record_with(row, None);
    }

    /// Queue a record with the bodies to keep (the writer redacts and seals them).
    pub fn record_with(&self, row: RequestRow, payload: Option<RawPayload>) {
        crate::metrics::request(&row);
        crate::alerts::request_finished(row.status >= 500 || row.status == 429 || row.error_type.is_some());
        if let (Some(keys), Some(name)) = (&self.spend, &row.client_key) {
            let tokens = row.input_tokens + row.output_tokens + row.cache_read_tokens + row.cache_creation_tokens;
            keys.spend.add(name, row.cost_usd, tokens, row.at_ms);
        }
        if !self.persist {
            return;
        }
        if self.tx.try_send((row, payload)).is_ok() {
            self.queued.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait (at most `limit`) until everything queued so far is written: used at shutdown.
    pub async fn drain(&self, limit: Duration) {
        let target = self.queued.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + limit;
        while self.done.load(Ordering::Relaxed) < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Most rows written in one transaction.
const BATCH: usize = 2048;

/// Longest pause between attempts to write a batch while the database is away.
const MAX_WRITE_BACKOFF: Duration = Duration::from_secs(5);

async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(RequestRow, Option<RawPayload>)>,
    done: Arc<AtomicU64>,
    payloads: Option<Arc<PayloadPolicy>>,
) {
    let seal = |(mut row, raw): (RequestRow, Option<RawPayload>)| {
        if let (Some(policy), Some(raw)) = (&payloads, raw) {
            let (request, response) = policy.seal(&row.id, &raw);
            row.payload_request = request;
            row.payload_response = response;
        }
        row
    };
    let mut incoming = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut incoming, BATCH).await > 0 {
        // Gather for a moment without looking: one wake-up per batch instead of one per request keeps the
        // writer's cost off the proxy's cores; fewer, larger transactions cost less CPU too.
        if incoming.len() < BATCH {
            tokio::time::sleep(Duration::from_millis(50)).await;
            while incoming.len() < BATCH {
                match rx.try_recv() {
                    Ok(item) => incoming.push(item),
                    Err(_) => break,
                }
            }
        }
        let batch: Vec<RequestRow> = incoming.drain(..).map(seal).collect();
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            match store.insert_requests(&batch).await {
                Ok(()) => break,
                // The database is away (restarting, unreachable, busy): hold this batch until it is back.
                // Meanwhile the queue fills and further rows are dropped and counted, never waited for.
                Err(e) if e.retryable() => {
                    tracing::warn!(error = %e, rows = batch.len(), "request log write failed; holding the rows");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_WRITE_BACKOFF);
                }
                Err(e) if attempt < 2 => {
                    tracing::warn!(error = %e, "request log write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, rows = batch.len(), "request log write failed; rows lost");
                    break;
                }
            }
        }
        done.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}

/// Model prices: the first entry whose key occurs in the model name wins; configured entries come first.
#[derive(Debug, Clone)]
pub struct Pricing {
    table: Vec<(String, Price)>,
}

impl Pricing {
    /// Built-in estimates by family, after `configured` (from `[prices.<name>]` in the config file).
    pub fn new(configured: Vec<(String, Price)>) -> Self {
        let defaults = [
            ("opus", Price { input: 15.0, output: 75.0, cache_read: 1.5, cache_write: 18.75 }),
            ("sonnet", Price { input: 3.0, output: 15.0, cache_read: 0.3, cache_write: 3.75 }),
            ("haiku", Price { input: 0.8, output: 4.0, cache_read: 0.08, cache_write: 1.0 }),
        ];
        let mut table = configured;
        table.extend(defaults.into_iter().map(|(k, p)| (k.to_owned(), p)));
        Self { table }
    }

    /// Estimated cost of `usage` on `model`; unknown models cost 0.
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> f64 {
        let Some(model) = model else { return 0.0 };
        let Some((_, p)) = self.table.iter().find(|(k, _)| model.contains(k.as_str())) else { return 0.0 };
        let per = |tokens: i64, price: f64| tokens.max(0) as f64 * price / 1_000_000.0;
        per(usage.input, p.input)
            + per(usage.output, p.output)
            + per(usage.cache_read, p.cache_read)
            + per(usage.cache_creation, p.cache_write)
    }
}

/// Longest path kept in a request-log row: a client chooses the path, and a row lives for weeks.
pub const PATH_MAX: usize = 256;

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
pub fn prefix_at_most(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `path` cut to [`PATH_MAX`] bytes (at a character boundary, marked with `…`).
pub fn bounded_path(path: &str) -> String {
    if path.len() <= PATH_MAX {
        return path.to_owned();
    }
    format!("{}…", prefix_at_most(path, PATH_MAX))
}

/// A fresh request id: time first, so ids sort by time and the log's primary-key index grows at its end
/// (random keys would scatter every insert across the index), then 48 random bits.
pub fn request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random: u64 = rand::random();
    let time = u64::try_from(crate::now_ms()).unwrap_or(0);
    let mut id = String::with_capacity(27);
    id.push_str("sy_");
    // 12 hex digits each, by hand: this runs once per request and `format!` costs more than the rest.
    for value in [time, random] {
        for shift in (0..12).rev() {
            id.push(char::from(HEX[((value >> (shift * 4)) & 0xf) as usize]));
        }
    }
    id
}

/// The start time an id made by `request_id` carries.
pub fn request_id_time(id: &str) -> Option<i64> {
    let hex = id.strip_prefix("sy_")?.get(..12)?;
    i64::from_str_radix(hex, 16).ok()
}

/// Aggregates of a group of requests.
#[derive(Debug, Default, serde::Serialize)]
pub struct Group {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_creation_tokens: i64,
    /// Share of prompt tokens read from the prompt cache: cache reads over all input (fresh, read and
    /// written); 0 without input.
    pub cache_hit_ratio: f64,
    pub cost_usd: f64,
    pub error_rate: f64,
    pub p50_ms: i64,
    pub p95_ms: i64,
}

/// Requests since `since_ms` grouped by `by` (`account`, `model`, `key`, anything else: one group `all`),
/// summed by the store.
pub async fn stats(
    store: &dyn crate::store::Store,
    since_ms: i64,
    by: &str,
) -> Result<std::collections::BTreeMap<String, Group>, crate::store::StoreError> {
    let groups = store.request_stats(since_ms, crate::store::StatsBy::parse(by)).await?;
    Ok(groups
        .into_iter()
        .map(|g| {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            let group = Group {
                requests: count(g.requests),
                errors: count(g.errors),
                input_tokens: g.input_tokens,
                output_tokens: g.output_tokens,
                cache_read_tokens: g.cache_read_tokens,
                cache_creation_tokens: g.cache_creation_tokens,
                cache_hit_ratio: {
                    let prompt = g.input_tokens + g.cache_read_tokens + g.cache_creation_tokens;
                    if prompt > 0 { g.cache_read_tokens as f64 / prompt as f64 } else { 0.0 }
                },
                cost_usd: g.cost_usd,
                error_rate: if g.requests > 0 { g.errors as f64 / g.requests as f64 } else { 0.0 },
                p50_ms: g.p50_ms,
                p95_ms: g.p95_ms,
            };
            (g.group, group)
        })
        .collect())
}

/// One logged request as JSON, with its payload opened (it was redacted before it was sealed), or `None`
/// when no request has this id.
pub async fn request_details(
    store: &dyn crate::store::Store,
    cipher: &crate::secrets::Cipher,
    id: &str,
) -> Result<Option<serde_json::Value>, crate::store::StoreError> {
    let Some(row) = store.get_request(id).await? else {
        return Ok(None);
    };
    let payload = store.get_payload(id).await?.map(|(request, response)| {
        let open = |what: &str, sealed: Option<String>| sealed.and_then(|s| PayloadPolicy::open(cipher, id, what, &s));
        serde_json::json!({ "request": open("request", request), "response": open("response", response) })
    });
    let mut out = serde_json::to_value(&row).unwrap_or_default();
    out["payload"] = payload.unwrap_or(serde_json::Value::Null);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_sort_by_time_and_carry_it() {
        let before = crate::now_ms();
        let id = request_id();
        let at = request_id_time(&id).unwrap_or(0);
        assert!(at >= before && at <= crate::now_ms(), "{id}");
        assert_eq!(id.len(), 27);
        assert!(request_id_time("msg_123").is_none());
        assert!(request_id_time("sy_zz").is_none());
    }

    #[test]
    fn prices_by_family_and_configuration() {
        let usage = Usage { input: 1_000_000, output: 1_000_000, cache_read: 0, cache_creation: 0, error_type: None };
        let pricing = Pricing::new(vec![(
            "claude-sonnet-9".into(),
            Price { input: 1.0, output: 2.0, cache_read: 0.0, cache_write: 0.0 },
        )]);
        assert!((pricing.cost(Some("claude-sonnet-4-5"), &usage) - 18.0).abs() < 1e-9);
        assert!((pricing.cost(Some("claude-sonnet-9-x"), &usage) - 3.0).abs() < 1e-9);
        assert_eq!(pricing.cost(Some("mystery"), &usage), 0.0);
        assert_eq!(pricing.cost(None, &usage), 0.0);
    }
}
