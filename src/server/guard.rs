//! The gate in front of the proxy: client key check, role, per-key request rate and concurrency, and a
//! per-IP brake on failed attempts — all before any upstream work.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::{HeaderMap, Method};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::OwnedSemaphorePermit;

use crate::access::{ClientKey, ClientKeys, KeyCheck, Permission};
use crate::error::ApiError;

/// Sources with recent failures remembered before the quiet ones are forgotten.
const MAX_FAILING_SOURCES: usize = 10_000;

/// Shared by every request.
#[derive(Debug)]
pub struct Guard {
    pub keys: Arc<ClientKeys>,
    /// Where a key not in memory is looked up before it is refused.
    store: Arc<dyn crate::store::Store>,
    /// Refusals are requests too: they go to the request log.
    pub log: Option<Arc<crate::ledger::RequestLog>>,
    /// No keys configured and the operator allowed that (loopback, or `--allow-unauthenticated`).
    pub open_without_keys: bool,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// `count_tokens` requests count against a key's per-minute limits (`SWITCHYARD_COUNT_TOKENS_IN_LIMITS`).
    count_tokens_in_limits: bool,
}

impl Guard {
    pub fn new(
        keys: Arc<ClientKeys>,
        store: Arc<dyn crate::store::Store>,
        log: Option<Arc<crate::ledger::RequestLog>>,
        open_without_keys: bool,
        failures_per_minute: u32,
    ) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(failures_per_minute).unwrap_or(NonZeroU32::MIN));
        Self { keys, store, log, open_without_keys, failures: RateLimiter::keyed(quota), count_tokens_in_limits: false }
    }

    /// Count `count_tokens` requests against keys' requests and tokens per minute (they are not, by default:
    /// editors send dozens a second, and they spend nothing).
    pub fn with_count_tokens_in_limits(mut self, counted: bool) -> Self {
        self.count_tokens_in_limits = counted;
        self
    }

    /// Whether a request to `path` counts against a key's per-minute limits.
    pub fn counts_per_minute(&self, path: &str) -> bool {
        self.count_tokens_in_limits || !crate::forward::is_count_tokens(path)
    }

    /// Record a refused request and answer it.
    fn deny(&self, req: &Asking<'_>, key: Option<&str>, error: ApiError) -> ApiError {
        if let Some(log) = &self.log {
            log.record(crate::store::RequestRow {
                id: crate::ledger::request_id(),
                at_ms: crate::now_ms(),
                client_key: key.map(str::to_owned),
                method: req.method.to_string(),
                path: crate::ledger::bounded_path(req.path),
                status: i64::from(error.status.as_u16()),
                error_type: Some(error.kind.to_owned()),
                ..crate::store::RequestRow::default()
            });
        }
        error
    }

    /// A failed attempt from `ip`: 401 normally, 429 once the IP has failed too often.
    fn refuse(&self, req: &Asking<'_>, error: ApiError) -> ApiError {
        // Pruned here rather than on a timer: only refusals add entries.
        if self.failures.len() > MAX_FAILING_SOURCES {
            self.failures.retain_recent();
        }
        if self.failures.check_key(&crate::access::source(req.ip)).is_err() {
            // Past the per-address limit refusals are answered but not logged: the log would otherwise be
            // an unauthenticated way to fill the disk.
            return ApiError::client_limited("too many failed attempts from this address; slow down", 60);
        }
        self.deny(req, None, error)
    }
}

/// The key a client presents: `x-api-key`, or `Authorization: Bearer` (the newer SDKs send that).
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// What the guard looks at.
pub struct Asking<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub ip: IpAddr,
}

/// A request let through: its client key (when keys are in use) and its concurrency slot, which the
/// caller holds until the answer's last byte (a stream may run for minutes).
#[derive(Debug, Default)]
pub struct Admitted {
    pub key: Option<Arc<ClientKey>>,
    pub slot: Option<OwnedSemaphorePermit>,
}

impl Guard {
    /// Whether requests pass without a key (none exists, and this server may be open).
    pub fn is_open(&self) -> bool {
        !self.keys.any() && self.open_without_keys
    }

    /// Let `req` through, or refuse it (the refusal goes to the request log).
    pub async fn admit(&self, req: &Asking<'_>) -> Result<Admitted, ApiError> {
        if self.is_open() {
            return Ok(Admitted::default());
        }
        let presented = presented_key(req.headers);
        let key = match self.keys.check_or_lookup(self.store.as_ref(), presented, crate::now_ms()).await {
            KeyCheck::Valid(key) => key,
            KeyCheck::Missing => {
                let e = ApiError::unauthorized("an API key is required: send it as x-api-key or Authorization: Bearer");
                return Err(self.refuse(req, e));
            }
            KeyCheck::Unknown => return Err(self.refuse(req, ApiError::unauthorized("invalid API key"))),
            KeyCheck::Revoked(name) => {
                return Err(self.refuse(req, ApiError::unauthorized(format!("API key {name:?} has been revoked"))));
            }
            KeyCheck::Expired(name) => {
                return Err(self.refuse(req, ApiError::unauthorized(format!("API key {name:?} has expired"))));
            }
        };
        if !key.role.allows(Permission::ApiRequest) {
            let message = format!("API key {:?} (role {}) may not send API requests", key.name, key.role.as_str());
            return Err(self.deny(req, Some(&key.name), ApiError::forbidden(message)));
        }
        if let Some((budget, wait)) = self.keys.spend.over_budget(&key, crate::now_ms()) {
            let error = ApiError::client_limited(format!("API key {:?} is over its {budget}", key.name), wait);
            return Err(self.deny(req, Some(&key.name), error));
        }
        if self.counts_per_minute(req.path)
            && let Err(wait) = key.check_rpm(crate::now_ms())
        {
            let error =
                ApiError::client_limited(format!("API key {:?} is over its requests-per-minute limit", key.name), wait);
            return Err(self.deny(req, Some(&key.name), error));
        }
        let slot = match &key.concurrency {
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let message = format!("API key {:?} has reached its limit of concurrent requests", key.name);
                    return Err(self.deny(req, Some(&key.name), ApiError::client_limited(message, 1)));
                }
            },
            None => None,
        };
        Ok(Admitted { key: Some(key), slot })
    }
}

/// Client credentials stay out of any `Debug` or trace output from here on.
pub fn mark_sensitive(headers: &mut HeaderMap) {
    for name in ["authorization", "x-api-key", "cookie", "proxy-authorization"] {
        if let axum::http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}
