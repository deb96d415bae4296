//! Forwarding mechanics: turn a client request into an upstream request for one account, send it, and
//! stream the answer back byte for byte. Knows nothing of routing policy beyond "try the candidates in
//! order".

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use secrecy::ExposeSecret;

use crate::accounts::{Account, Credential, Pool};
use crate::anthropic::{
    IdentityMode, MessageBody, forward_request_header, merge_beta, pass_back_response_header,
};
use crate::config::Config;
use crate::error::ApiError;

/// A client request, already read and size-checked by the server.
#[derive(Debug)]
pub struct Inbound {
    pub method: Method,
    /// Path and query exactly as the client sent them (`/v1/messages?beta=true`).
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug)]
pub struct Forwarder {
    http: reqwest::Client,
    pool: Arc<Pool>,
    base: String,
    identity: IdentityMode,
    identity_prompt: String,
    oauth_beta: String,
    anthropic_version: HeaderValue,
    first_byte_timeout: Duration,
}

/// The HTTP client for upstream calls: no decompression (bytes pass through untouched), bounded connect
/// and read-idle times, no overall timeout (a stream may run for many minutes).
pub fn upstream_client(config: &Config) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.idle_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

fn header_value(secret: &str) -> Result<HeaderValue, ApiError> {
    let mut value = HeaderValue::from_str(secret)
        .map_err(|_| ApiError::internal("a stored credential is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Forwarder {
    pub fn new(config: &Config, http: reqwest::Client, pool: Arc<Pool>) -> Result<Self, ApiError> {
        Ok(Self {
            http,
            pool,
            base: config
                .upstream_url
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            identity: config.identity,
            identity_prompt: config.identity_prompt.clone(),
            oauth_beta: config.oauth_beta.clone(),
            anthropic_version: HeaderValue::from_str(&config.anthropic_version).map_err(|_| {
                ApiError::internal("configured anthropic-version is not a valid header value")
            })?,
            first_byte_timeout: config.first_byte_timeout,
        })
    }

    /// Forward `req` through the first account that can take it.
    pub async fn forward(&self, req: Inbound) -> Result<Response, ApiError> {
        let started = Instant::now();
        let parsed = if req.method == Method::POST {
            if req.body.is_empty() {
                return Err(ApiError::invalid_request(
                    "request body is empty; expected a JSON object",
                ));
            }
            Some(
                MessageBody::parse(&req.body)
                    .map_err(|e| ApiError::invalid_request(e.to_string()))?,
            )
        } else {
            None
        };
        let candidates = self.pool.candidates().map_err(ApiError::no_account)?;
        // Computed at most once, and only if an OAuth account is used.
        let mut oauth_body: Option<Bytes> = None;
        let mut skipped = Vec::new();
        for account in candidates {
            let credential = match self.pool.credential(&account).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(account = %account.name, error = %e, "account skipped");
                    skipped.push(e.to_string());
                    continue;
                }
            };
            let body = match credential {
                Credential::ApiKey(_) => req.body.clone(),
                Credential::Bearer(_) => oauth_body
                    .get_or_insert_with(|| self.oauth_body(&req.body, parsed.as_ref()))
                    .clone(),
            };
            let mut response = self.send(&req, &credential, body.clone()).await?;
            if let (StatusCode::UNAUTHORIZED, Credential::Bearer(rejected)) =
                (response.status(), &credential)
            {
                tracing::info!(account = %account.name, "upstream refused the access token; refreshing");
                match self.pool.refresh_rejected(&account, rejected).await {
                    Ok(fresh) => response = self.send(&req, &fresh, body).await?,
                    Err(e) => {
                        skipped.push(e.to_string());
                        continue;
                    }
                }
            }
            log_answer(&req, &account, response.status(), started);
            return Ok(stream_back(response));
        }
        Err(ApiError::no_account(format!(
            "no usable account: {}",
            skipped.join("; ")
        )))
    }

    /// The body an OAuth account sends: the identity first in `system` (Messages endpoints only).
    fn oauth_body(&self, original: &Bytes, parsed: Option<&MessageBody>) -> Bytes {
        match (self.identity, parsed) {
            (IdentityMode::Inject, Some(body)) => match body.with_identity(&self.identity_prompt) {
                Some(rewritten) => Bytes::from(rewritten),
                None => original.clone(),
            },
            _ => original.clone(),
        }
    }

    async fn send(
        &self,
        req: &Inbound,
        credential: &Credential,
        body: Bytes,
    ) -> Result<reqwest::Response, ApiError> {
        let mut headers = HeaderMap::with_capacity(req.headers.len() + 3);
        for (name, value) in &req.headers {
            if forward_request_header(name.as_str()) && name != "anthropic-beta" {
                headers.append(name.clone(), value.clone());
            }
        }
        let client_beta: Vec<&str> = req
            .headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let client_beta = (!client_beta.is_empty()).then(|| client_beta.join(","));
        match credential {
            Credential::ApiKey(key) => {
                headers.insert(
                    HeaderName::from_static("x-api-key"),
                    header_value(key.expose_secret())?,
                );
                if let Some(beta) = client_beta {
                    headers.insert(
                        HeaderName::from_static("anthropic-beta"),
                        header_value(&beta)?,
                    );
                }
            }
            Credential::Bearer(token) => {
                headers.insert(
                    axum::http::header::AUTHORIZATION,
                    header_value(&format!("Bearer {}", token.expose_secret()))?,
                );
                let beta = merge_beta(client_beta.as_deref(), &self.oauth_beta);
                headers.insert(
                    HeaderName::from_static("anthropic-beta"),
                    header_value(&beta)?,
                );
            }
        }
        if !headers.contains_key("anthropic-version") {
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                self.anthropic_version.clone(),
            );
        }
        if !body.is_empty() && !headers.contains_key(axum::http::header::CONTENT_TYPE) {
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let url = format!("{}{}", self.base, req.path_and_query);
        let request = self
            .http
            .request(req.method.clone(), url)
            .headers(headers)
            .body(body);
        match tokio::time::timeout(self.first_byte_timeout, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_timeout() => {
                Err(ApiError::gateway_timeout("the upstream timed out"))
            }
            Ok(Err(e)) if e.is_connect() => {
                Err(ApiError::bad_gateway("cannot connect to the upstream"))
            }
            Ok(Err(_)) => Err(ApiError::bad_gateway("the upstream connection failed")),
            Err(_) => Err(ApiError::gateway_timeout(format!(
                "the upstream did not answer within {}s",
                self.first_byte_timeout.as_secs()
            ))),
        }
    }
}

fn log_answer(req: &Inbound, account: &Account, status: StatusCode, started: Instant) {
    let path = req.path_and_query.split('?').next().unwrap_or("");
    tracing::info!(
        method = %req.method,
        path,
        account = %account.name,
        status = status.as_u16(),
        first_byte_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "forwarded"
    );
}

/// Hand the upstream answer to the client as it arrives: status, headers and each chunk unchanged.
/// A stream that breaks after the first byte ends with an SSE `error` event instead of silently stopping.
fn stream_back(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let is_sse = upstream
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut headers = HeaderMap::with_capacity(upstream.headers().len());
    for (name, value) in upstream.headers() {
        if pass_back_response_header(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let chunks = upstream.bytes_stream();
    let body = if is_sse {
        headers.remove(axum::http::header::CONTENT_LENGTH);
        Body::from_stream(chunks.scan(false, |ended, item| {
            let next = match item {
                _ if *ended => None,
                Ok(bytes) => Some(Ok::<Bytes, std::io::Error>(bytes)),
                Err(e) => {
                    *ended = true;
                    tracing::warn!(error = %e, "upstream stream broke mid-way");
                    let error = ApiError::bad_gateway("the upstream connection broke mid-stream");
                    Some(Ok(Bytes::from(format!(
                        "event: error\ndata: {}\n\n",
                        error.body()
                    ))))
                }
            };
            futures_util::future::ready(next)
        }))
    } else {
        Body::from_stream(chunks.map(|item| item.map_err(std::io::Error::other)))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
