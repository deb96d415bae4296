//! Browser-facing headers: CORS only for the origins listed in `SWITCHYARD_ALLOWED_ORIGINS` (none by
//! default), and security headers on everything Switchyard answers itself (not on proxied answers).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

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
