//! The error a client sees: Anthropic-shaped JSON with the right status, and who caused it.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Who caused an error; decides the status family and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something we will not forward (bad JSON, unknown path, too large).
    Client,
    /// The upstream failed or could not be reached.
    Upstream,
    /// No account could serve the request right now.
    Accounts,
    /// Our own fault (storage, encryption).
    Internal,
}

/// An error answered to a client as `{"type":"error","error":{"type":…,"message":…}}`.
///
/// The message is written for the client and must never carry a secret.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Anthropic error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    pub message: String,
    pub origin: Origin,
    /// Whether the same request may succeed if sent again later.
    pub retryable: bool,
    /// Seconds after which trying again makes sense (`retry-after`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, origin: Origin, message: impl Into<String>) -> Self {
        let retryable = matches!(origin, Origin::Upstream | Origin::Accounts);
        Self { status, kind, message: message.into(), origin, retryable, retry_after: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", Origin::Client, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", Origin::Client, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", Origin::Client, message)
    }

    /// The client is over one of its limits; `retry_after` seconds.
    pub fn client_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Origin::Client, message);
        e.retry_after = Some(retry_after);
        e.retryable = true;
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", Origin::Client, message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", Origin::Client, message)
    }

    /// The client did not send its request in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout_error", Origin::Client, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", Origin::Client, message)
    }

    /// No account can take the request (none configured, all need login, all limited).
    pub fn no_account(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", Origin::Accounts, message)
    }

    /// Every account is rate-limited; `retry_after` is when the first comes back.
    pub fn all_limited(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Origin::Accounts, message);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "api_error", Origin::Upstream, message)
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "api_error", Origin::Upstream, message)
    }

    /// Switchyard is busy with this kind of work (e.g. password checks); try again after `retry_after`.
    pub fn busy(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "api_error", Origin::Internal, message);
        e.retryable = true;
        e.retry_after = Some(retry_after);
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", Origin::Internal, message)
    }

    /// The JSON body, also used for SSE `error` events.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "error",
            "error": { "type": self.kind, "message": self.message },
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.kind, self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = if self.retryable { "true" } else { "false" };
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response.headers_mut().insert("x-should-retry", HeaderValue::from_static(retry));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}
