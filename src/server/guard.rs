//! The gate in front of the proxy: client key check, role, per-key request rate and concurrency, and a
//! per-IP brake on failed attempts — all before any upstream work.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::access::{ClientKey, ClientKeys, KeyCheck, Permission};
use crate::error::ApiError;

/// Shared by every request.
#[derive(Debug)]
pub struct Guard {
    pub keys: Arc<ClientKeys>,
    /// No keys configured and the operator allowed that (loopback, or `--allow-unauthenticated`).
    pub open_without_keys: bool,
    failures: DefaultKeyedRateLimiter<IpAddr>,
}

impl Guard {
    pub fn new(keys: Arc<ClientKeys>, open_without_keys: bool, failures_per_minute: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(failures_per_minute).unwrap_or(NonZeroU32::MIN));
        Self { keys, open_without_keys, failures: RateLimiter::keyed(quota) }
    }

    /// A failed attempt from `ip`: 401 normally, 429 once the IP has failed too often.
    fn refuse(&self, ip: IpAddr, error: ApiError) -> Response {
        if self.failures.check_key(&ip).is_err() {
            return ApiError::client_limited("too many failed attempts from this address; slow down", 60)
                .into_response();
        }
        error.into_response()
    }
}

/// The key a client presents: `x-api-key`, or `Authorization: Bearer` (the newer SDKs send that).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// Client credentials stay out of any `Debug` or trace output from here on.
fn mark_sensitive(headers: &mut HeaderMap) {
    for name in ["authorization", "x-api-key", "cookie", "proxy-authorization"] {
        if let axum::http::header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}

/// Middleware on the proxy routes.
pub async fn authorize(
    State(guard): State<Arc<Guard>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    mark_sensitive(req.headers_mut());
    if !guard.keys.any() && guard.open_without_keys {
        return next.run(req).await;
    }
    let key = match guard.keys.check(presented_key(req.headers()), crate::now_ms()) {
        KeyCheck::Valid(key) => key,
        KeyCheck::Missing => {
            let e = ApiError::unauthorized("an API key is required: send it as x-api-key or Authorization: Bearer");
            return guard.refuse(peer.ip(), e);
        }
        KeyCheck::Unknown => return guard.refuse(peer.ip(), ApiError::unauthorized("invalid API key")),
        KeyCheck::Revoked(name) => {
            return guard.refuse(peer.ip(), ApiError::unauthorized(format!("API key {name:?} has been revoked")));
        }
        KeyCheck::Expired(name) => {
            return guard.refuse(peer.ip(), ApiError::unauthorized(format!("API key {name:?} has expired")));
        }
    };
    if !key.role.allows(Permission::ApiRequest) {
        let message = format!("API key {:?} (role {}) may not send API requests", key.name, key.role.as_str());
        return ApiError::forbidden(message).into_response();
    }
    if let Err(wait) = key.check_rpm() {
        return ApiError::client_limited(format!("API key {:?} is over its requests-per-minute limit", key.name), wait)
            .into_response();
    }
    let permit = match &key.concurrency {
        Some(slots) => match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let message = format!("API key {:?} has reached its limit of concurrent requests", key.name);
                return ApiError::client_limited(message, 1).into_response();
            }
        },
        None => None,
    };
    req.extensions_mut().insert(Caller(key));
    let response = next.run(req).await;
    match permit {
        // The slot is held until the last byte of the answer (a stream may run for minutes).
        Some(permit) => response.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &permit;
                chunk
            }))
        }),
        None => response,
    }
}

/// The authenticated client of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<ClientKey>);
