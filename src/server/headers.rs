//! Browser-facing headers: CORS only for the origins listed in `SWITCHYARD_ALLOWED_ORIGINS` (none by
//! default), and security headers on everything Switchyard answers itself (not on proxied answers).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Which `Host` values are served. A page on any site can make the browser talk to a loopback port
/// (DNS rebinding points the page's own name at 127.0.0.1): the `Host` header then carries that name, so
/// a loopback server answers only names that mean this machine, plus the configured ones.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    /// Names from `SWITCHYARD_ALLOWED_HOSTS`, lowercase, without port.
    pub names: Arc<Vec<String>>,
    /// Whether the check applies: a loopback bind, or names configured.
    pub enforce: bool,
}

impl Hosts {
    pub fn allows(&self, headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
        if !self.enforce {
            return true;
        }
        // HTTP/2 carries the authority in the URI instead of a Host header.
        let host = match headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
            Some(h) => h.to_owned(),
            None => match uri.authority() {
                Some(a) => a.as_str().to_owned(),
                None => return false,
            },
        };
        let host = host.to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().map(|n| format!("[{n}]")).unwrap_or_default(),
            None => host.split(':').next().unwrap_or("").to_owned(),
        };
        matches!(name.as_str(), "localhost" | "[::1]") || name.starts_with("127.") || self.names.contains(&name)
    }

    pub fn refusal() -> ApiError {
        ApiError::forbidden(
            "this Host is not served here (add it to SWITCHYARD_ALLOWED_HOSTS to reach Switchyard by that name)",
        )
    }
}

/// Refuse requests whose `Host` is not served (see [`Hosts`]).
pub async fn host_check(State(hosts): State<Hosts>, request: Request, next: Next) -> Response {
    if !hosts.allows(request.headers(), request.uri()) {
        return Hosts::refusal().into_response();
    }
    next.run(request).await
}

/// In open mode (no client keys, loopback) a request must come from a program, not a web page: a page
/// elsewhere can send a "simple" cross-site POST without any preflight. Refused: an `Origin` that is not
/// allowed, `Sec-Fetch-Site: cross-site`, and a POST that is not `application/json`.
pub fn open_mode_refusal(cors: &Cors, method: &Method, headers: &HeaderMap) -> Option<ApiError> {
    if headers.get(header::ORIGIN).is_some() && cors.allowed(headers).is_none() {
        return Some(ApiError::forbidden("requests from web pages are refused while no client keys exist"));
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
        return Some(ApiError::forbidden("cross-site requests are refused while no client keys exist"));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if *method == Method::POST && !json {
        return Some(ApiError::invalid_request("send the request body as content-type: application/json"));
    }
    None
}

/// CORS policy: exact origins, e.g. `https://app.example.com`.
#[derive(Debug, Clone)]
pub struct Cors {
    pub origins: Arc<Vec<String>>,
}

const ALLOW_HEADERS: &str = "authorization, x-api-key, content-type, anthropic-version, anthropic-beta, \
    anthropic-dangerous-direct-browser-access, x-switchyard-account, x-csrf-token";
const EXPOSE_HEADERS: &str = "request-id, retry-after, x-should-retry, anthropic-ratelimit-unified-status, \
    anthropic-ratelimit-unified-reset, anthropic-ratelimit-unified-5h-utilization, \
    anthropic-ratelimit-unified-7d-utilization";

impl Cors {
    /// The request's `Origin` when it is on the list.
    pub fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        if self.origins.is_empty() {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.origins.iter().any(|a| a == text).then(|| origin.clone())
    }

    /// Let the allowed origin read the answer.
    pub fn expose(allowed: Option<HeaderValue>, response: &mut Response) {
        if let Some(origin) = allowed {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
            h.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

pub async fn cors(State(policy): State<Cors>, req: Request, next: Next) -> Response {
    let allowed = policy.allowed(req.headers());
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(origin) = allowed else {
            return ApiError::forbidden("this origin is not allowed (SWITCHYARD_ALLOWED_ORIGINS)").into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return response;
    }
    let mut response = next.run(req).await;
    Cors::expose(allowed, &mut response);
    response
}

/// Whether responses travel over TLS (adds HSTS).
#[derive(Debug, Clone, Copy)]
pub struct Tls(pub bool);

/// Security headers for everything Switchyard answers itself.
pub async fn security_headers(State(Tls(tls)): State<Tls>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if tls {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    }
    response
}
