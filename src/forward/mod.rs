//! Forwarding mechanics: turn a client request into an upstream request for one account, send it, and
//! stream the answer back byte for byte. Knows nothing of routing policy beyond "try the candidates in
//! order".

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use secrecy::ExposeSecret;

use crate::accounts::{Account, Credential, Pool, Unavailable, Want};
use crate::anthropic::{
    IdentityMode, MessageBody, Peek, RateLimitInfo, Verdict, forward_request_header, merge_beta, model_family,
    pass_back_response_header,
};
use crate::config::Config;
use crate::error::ApiError;
use crate::ledger::{PayloadPolicy, Pricing, RawPayload, RequestLog, SseTap, Usage, json_usage};
use crate::store::RequestRow;

pub mod count_cache;
pub mod models;
pub mod tls;

/// A client request, already read and size-checked by the server.
#[derive(Debug)]
pub struct Inbound {
    pub method: Method,
    /// Path and query exactly as the client sent them (`/v1/messages?beta=true`).
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client key that sent it, when keys are in use.
    pub caller: Option<Arc<crate::access::ClientKey>>,
    /// The client's dialect (`anthropic`, `openai`): the body is an Anthropic request either way.
    pub dialect: &'static str,
    /// When the request's head arrived, and how long of that was spent waiting for the client (its
    /// body): with the upstream waits counted here, the rest is Switchyard's own time.
    pub clock: Clock,
}

/// Time spent on one request, split into waiting (for the client, the upstream, a back-off pause)
/// and the rest, which is Switchyard's own work (`switchyard_overhead_seconds`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub arrived: Instant,
    pub waited: Duration,
}

pin_project_lite::pin_project! {
    /// A future whose time until ready is counted as waiting on its clock.
    pub struct Waiting<'a, F> {
        clock: &'a mut Clock,
        started: Instant,
        #[pin]
        inner: F,
    }
}

impl<F: std::future::Future> std::future::Future for Waiting<'_, F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        let ready = std::task::ready!(this.inner.poll(cx));
        this.clock.waited += this.started.elapsed();
        std::task::Poll::Ready(ready)
    }
}

impl Clock {
    pub fn start() -> Self {
        Self { arrived: Instant::now(), waited: Duration::ZERO }
    }

    /// `f`, with the time until it is ready counted as waiting. A plain future rather than an `async fn`:
    /// an `async fn` would hold `f` twice (as its argument and as the value it awaits).
    pub fn wait<F: std::future::Future>(&mut self, f: F) -> Waiting<'_, F> {
        Waiting { clock: self, started: Instant::now(), inner: f }
    }

    /// Switchyard's own time so far.
    pub fn own(&self) -> Duration {
        self.arrived.elapsed().saturating_sub(self.waited)
    }
}

#[derive(Debug)]
pub struct Forwarder {
    http: UpstreamClients,
    pool: Arc<Pool>,
    base: String,
    /// `host:port` of the upstream, for messages (the URL itself might carry credentials).
    upstream_host: String,
    identity: IdentityMode,
    identity_prompt: String,
    affinity: crate::accounts::Affinity,
    models: models::Models,
    /// Recent `count_tokens` answers (`SWITCHYARD_COUNT_TOKENS_CACHE_SECS`), when on.
    count_cache: Option<count_cache::CountCache>,
    oauth_beta: String,
    anthropic_version: HeaderValue,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    retry: Retry,
    log: Option<Arc<RequestLog>>,
    pricing: Arc<Pricing>,
    payloads: Option<Arc<PayloadPolicy>>,
}

/// Failover budget: how many upstream attempts a request may make and how long to wait between them.
#[derive(Debug, Clone, Copy)]
struct Retry {
    max_attempts: u32,
    delay: Duration,
    backoff: f64,
}

/// Why an attempt produced no answer, which decides what the failover loop does next.
enum SendFailure {
    /// No connection could be made (refused, DNS, TLS, pin): not worth a pause or a second try on this
    /// account; the next account is tried at once.
    Unreachable(ApiError),
    /// The request's first-byte budget is spent: nothing more is tried.
    TimedOut(ApiError),
    /// The connection broke after it was made: transient, retried after a pause.
    Broken(ApiError),
}

/// Who caused a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Anthropic's load or a server error: not the account's fault, the same account may be asked again.
    Upstream,
    /// The account's limits, credential or entitlement: another account may serve, this one not now.
    Account,
}

/// What an upstream answer means for the request, decided here alone: the failover loop reads this
/// instead of lists of statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The client's answer: a success, or the client's own error (400, 404, 413, …).
    Answer,
    /// Try another account; `pause` first when waiting may help (Anthropic is loaded, or a 429 that
    /// named no window: a limit that is the account's needs no pause before the next account).
    FailOver { cause: Cause, pause: bool },
}

impl Outcome {
    fn of(status: StatusCode, verdict: &Verdict, entitlement: bool) -> Self {
        match status.as_u16() {
            500 | 502 | 503 | 504 | 529 => Outcome::FailOver { cause: Cause::Upstream, pause: true },
            429 => Outcome::FailOver {
                cause: Cause::Account,
                pause: !entitlement && matches!(verdict, Verdict::RequestScoped),
            },
            // The credential is refused even after a refresh: another account may do.
            401 | 403 => Outcome::FailOver { cause: Cause::Account, pause: false },
            _ => Outcome::Answer,
        }
    }
}

/// The last failed attempt, answered to the client when nothing better comes.
enum Failure {
    Upstream {
        response: hyper::Response<UpstreamBody>,
        transient: bool,
        account: String,
        /// Logged instead of the body's error type (`entitlement`).
        error_type: Option<&'static str>,
    },
    Gateway(ApiError),
}

impl Failure {
    /// Not the account's fault (overload, server error, network): the same account may be tried again.
    fn transient(&self) -> bool {
        match self {
            Self::Upstream { transient, .. } => *transient,
            Self::Gateway(_) => true,
        }
    }

    fn into_answer(self, forwarder: &Forwarder, trace: &mut Trace) -> Result<Response, ApiError> {
        match self {
            Self::Upstream { response, account, error_type, .. } => {
                let info = RateLimitInfo::parse(response.headers());
                trace.row.error_type = error_type.map(str::to_owned);
                let recorder = forwarder.recorder(trace, Some(&account), &response, &info);
                Ok(stream_back(response, None, recorder, forwarder.idle_timeout))
            }
            Self::Gateway(error) => Err(error),
        }
    }
}

/// Whether the caller may read account names in errors: open mode (the operator's own machine) and keys
/// that may read the logs anyway. A `user` key gets messages without them.
fn sees_accounts(caller: Option<&crate::access::ClientKey>) -> bool {
    caller.is_none_or(|key| key.role.allows(crate::access::Permission::LogsView))
}

/// The client's answer when no account can take the request: 429 when waiting helps, else 503. The full
/// story, with account names, goes to the log; a caller who may not see accounts gets it without them.
fn unavailable_error(
    unavailable: &Unavailable,
    reasons: &[String],
    caller: Option<&crate::access::ClientKey>,
) -> ApiError {
    let mut detailed = unavailable.message();
    if !reasons.is_empty() {
        detailed = format!("{detailed}; {}", reasons.join("; "));
    }
    let message = if sees_accounts(caller) {
        detailed.clone()
    } else {
        tracing::warn!(reason = %detailed, "no account could serve the request");
        match reasons.len() {
            0 => unavailable.generic_message(),
            n => format!("{}; {n} attempt(s) on other accounts failed", unavailable.generic_message()),
        }
    };
    match unavailable {
        Unavailable::AllLimited { until_ms, .. } => {
            crate::alerts::raise("all_accounts_limited", "*", &detailed);
            let secs = (until_ms - crate::now_ms()).max(0) / 1000 + 1;
            ApiError::all_limited(message, u64::try_from(secs).unwrap_or(1))
        }
        Unavailable::Forbidden { .. } => ApiError::forbidden(message),
        Unavailable::UnknownAccount { .. } => ApiError::not_found(message),
        _ => ApiError::no_account(message),
    }
}

/// The client for upstream calls: hyper's pooled client over rustls (h2 or HTTP/1.1 by ALPN; plain HTTP
/// only reaches here for loopback upstreams, which the configuration checks). Used directly rather than
/// through reqwest: on the hot path its URL parsing, redirect and timeout layers cost more CPU per request
/// than the rest of the proxying together. No decompression (bytes pass through untouched); connect time
/// bounded here, first byte and idle time by the forwarder; no overall timeout (a stream may run for many
/// minutes).
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One upstream client (and so one connection pool) per worker thread: a request then finds its upstream
/// connection driven on its own thread, rather than handing every request and body frame to a task on the
/// other core and waking it.
#[derive(Debug, Clone)]
pub struct UpstreamClients(Arc<[UpstreamClient]>);

impl UpstreamClients {
    pub fn new(config: &Config) -> Result<Self, ApiError> {
        let threads = config.workers;
        let clients = (0..threads).map(|_| upstream_client(config)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self(clients.into()))
    }

    fn get(&self) -> &UpstreamClient {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        &self.0[SLOT.with(|slot| *slot) % self.0.len()]
    }
}

fn upstream_client(config: &Config) -> Result<UpstreamClient, ApiError> {
    let mut tls =
        tls::tls_config(&config.pins, config.upstream_ca.as_deref()).map_err(|e| ApiError::internal(e.to_string()))?;
    // The connector offers exactly the versions enabled below.
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // Idle HTTP/1.1 connections kept per thread: enough for a busy steady load; after a burst of
        // thousands of streams the rest close, so their descriptors and buffers go back (HTTP/2 keeps one).
        .pool_max_idle_per_host(UPSTREAM_IDLE_PER_THREAD)
        .pool_timer(TokioTimer::new())
        .build(https))
}

/// Idle upstream connections one thread's pool keeps open.
const UPSTREAM_IDLE_PER_THREAD: usize = 128;

/// The innermost cause of a transport error (a TLS or pin failure reads better than "connect error").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn header_value(secret: &str) -> Result<HeaderValue, ApiError> {
    let mut value = HeaderValue::from_str(secret)
        .map_err(|_| ApiError::internal("a stored credential is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Forwarder {
    pub fn new(
        config: &Config,
        http: UpstreamClients,
        pool: Arc<Pool>,
        log: Option<Arc<RequestLog>>,
        pricing: Arc<Pricing>,
        payloads: Option<Arc<PayloadPolicy>>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            http,
            pool,
            base: config.upstream_url.as_str().trim_end_matches('/').to_owned(),
            upstream_host: format!(
                "{}:{}",
                config.upstream_url.host_str().unwrap_or("?"),
                config.upstream_url.port_or_known_default().unwrap_or(0)
            ),
            identity: config.identity,
            affinity: config.affinity,
            models: models::Models::new(config.model_aliases.clone()),
            count_cache: count_cache::CountCache::new(config.count_tokens_cache),
            identity_prompt: config.identity_prompt.clone(),
            oauth_beta: config.oauth_beta.clone(),
            anthropic_version: HeaderValue::from_str(&config.anthropic_version)
                .map_err(|_| ApiError::internal("configured anthropic-version is not a valid header value"))?,
            first_byte_timeout: config.first_byte_timeout,
            idle_timeout: config.idle_timeout,
            retry: Retry {
                max_attempts: config.retry_attempts.saturating_add(1),
                delay: config.retry_delay,
                backoff: config.retry_backoff,
            },
            log,
            pricing,
            payloads,
        })
    }

    /// Forward `req` through the first account that can take it, failing over to the next on a limit, an
    /// overload, a server error or a connection failure — all before the first byte reaches the client.
    pub async fn forward(&self, mut req: Inbound) -> Result<Response, ApiError> {
        // Read once: model aliases and the forwarding both use it.
        let mut peek = peek(&req);
        if let Ok(peek) = &mut peek {
            self.resolve_model(&mut req, peek);
        }
        let mut trace = Trace::new(&req);
        if let Some(cache) = &self.count_cache
            && req.method == Method::POST
            && is_count_tokens(&req.path_and_query)
        {
            let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
            let key = count_cache::CountCache::key(
                req.caller.as_ref().map(|k| k.id.as_str()),
                &req.path_and_query,
                &[header("anthropic-version"), header("anthropic-beta")],
                &req.body,
            );
            if let Some(answer) = cache.get(&key) {
                crate::metrics::overhead(trace.clock.own());
                return Ok(self.cached_count(trace, answer));
            }
            trace.count_key = Some(key);
        }
        let req_body = req.body.clone();
        // Every log line of this request carries its id (the same id as in the request log).
        let span = tracing::info_span!("request", id = %trace.row.id);
        let result = match peek {
            Ok(peek) => tracing::Instrument::instrument(self.forward_inner(&req, peek, &mut trace), span).await,
            Err(error) => Err(error),
        };
        crate::metrics::overhead(trace.clock.own());
        // A request that failed over to its end counts as one failed request of the last account tried
        // (each attempt counted as it failed).
        if !trace.answered
            && let Some(account) = &trace.last
        {
            account.request_failed();
        }
        if let (Err(error), Some(log)) = (&result, &self.log) {
            // Answered by Switchyard itself: recorded now; streamed answers are recorded when they end.
            let mut row = trace.row;
            row.account = trace.last.as_ref().map(|a| a.name.clone());
            row.status = i64::from(error.status.as_u16());
            row.error_type = Some(error.kind.to_owned());
            row.duration_ms = millis(trace.started.elapsed());
            let keep = self.payloads.as_ref().is_some_and(|p| p.keeps(row.status, true));
            let raw =
                keep.then(|| RawPayload { request: req_body.clone(), response: error.body().to_string().into_bytes() });
            log.record_with(row, raw);
        }
        result
    }

    async fn forward_inner(&self, req: &Inbound, peek: Peek, trace: &mut Trace) -> Result<Response, ApiError> {
        let started = trace.started;
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        trace.row.model = peek.model.as_deref().map(|m| crate::ledger::prefix_at_most(m, MODEL_MAX).to_owned());
        // One conversation per (client key, session, agent): each agent's prompt cache stays on one account.
        let session = header("x-claude-code-session-id");
        let agent = header("x-claude-code-agent-id");
        let affinity = self.affinity.key(
            req.caller.as_ref().map(|k| k.id.as_str()),
            session.as_deref().or_else(|| peek.session()),
            agent.as_deref(),
        );
        // A token count belongs to no conversation: any available account, and the session stays put.
        let counting = is_count_tokens(&req.path_and_query);
        let affinity = affinity.filter(|_| !counting);
        let want = Want {
            family: trace.row.model.as_deref().map(model_family),
            spread: counting || affinity.as_ref().is_some_and(|(_, subagent)| *subagent),
            affinity: affinity.map(|(key, _)| key),
            pinned: header("x-switchyard-account"),
            allowed: req.caller.as_ref().and_then(|k| k.accounts.clone()),
        };
        let family = want.family.as_deref();

        trace.row.stream = peek.stream;
        // Computed at most once, and only if an OAuth account is used.
        let mut oauth_body: Option<Bytes> = None;
        // Accounts that answered badly (may be tried again for transient failures) and accounts that
        // could not produce a credential (never tried again for this request).
        let mut tried: Vec<String> = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        let mut attempts: u32 = 0;
        let mut delay = self.retry.delay;
        let mut last: Option<Failure> = None;
        // One first-byte budget for the whole request, shared by its attempts and pauses: a silent upstream
        // costs one timeout, not one per attempt.
        let deadline = tokio::time::Instant::from_std(started) + self.first_byte_timeout;
        loop {
            let exclude: Vec<String> = tried.iter().chain(&skipped).cloned().collect();
            let account = match self.pool.candidates(&want, &exclude) {
                Ok(mut candidates) => candidates.swap_remove(0),
                Err(unavailable) => {
                    // Every account failed transiently: go round again while attempts remain.
                    if last.as_ref().is_some_and(Failure::transient)
                        && attempts < self.retry.max_attempts
                        && !tried.is_empty()
                    {
                        tried.clear();
                        continue;
                    }
                    return match last {
                        Some(failure) => failure.into_answer(self, trace),
                        None => Err(unavailable_error(&unavailable, &reasons, req.caller.as_deref())),
                    };
                }
            };
            let credential = match trace.clock.wait(self.pool.credential(&account)).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(account = %account.name, error = %e, "account skipped");
                    reasons.push(e.to_string());
                    skipped.push(account.id.clone());
                    continue;
                }
            };
            let body = match credential {
                Credential::ApiKey(_) => req.body.clone(),
                Credential::Bearer(_) => oauth_body.get_or_insert_with(|| self.oauth_body(req)).clone(),
            };
            attempts += 1;
            trace.tried(&account, attempts);
            let mut sent = trace.clock.wait(self.send(req, &credential, body.clone(), deadline)).await;
            if let (Ok(response), Credential::Bearer(rejected)) = (&sent, &credential)
                && response.status() == StatusCode::UNAUTHORIZED
            {
                tracing::info!(account = %account.name, "upstream refused the access token; refreshing");
                match trace.clock.wait(self.pool.refresh_rejected(&account, rejected)).await {
                    Ok(fresh) => sent = trace.clock.wait(self.send(req, &fresh, body, deadline)).await,
                    Err(e) => {
                        reasons.push(e.to_string());
                        skipped.push(account.id.clone());
                        attempts -= 1;
                        continue;
                    }
                }
            }
            let response = match sent {
                Ok(response) => response,
                Err(SendFailure::TimedOut(error)) => {
                    tracing::warn!(account = %account.name, error = %error.message, "upstream attempt timed out");
                    account.attempt_failed();
                    return Err(error);
                }
                Err(SendFailure::Unreachable(error)) => {
                    tracing::warn!(account = %account.name, error = %error.message, "upstream unreachable");
                    account.attempt_failed();
                    reasons.push(format!("{} could not connect", account.name));
                    // Not tried again for this request: the next account goes at once.
                    skipped.push(account.id.clone());
                    if attempts >= self.retry.max_attempts {
                        return Err(error);
                    }
                    last = Some(Failure::Gateway(error));
                    continue;
                }
                Err(SendFailure::Broken(error)) => {
                    tracing::warn!(account = %account.name, error = %error.message, "upstream attempt failed");
                    account.attempt_failed();
                    tried.push(account.id.clone());
                    if attempts >= self.retry.max_attempts {
                        return Err(error);
                    }
                    last = Some(Failure::Gateway(error));
                    if !trace.clock.wait(self.back_off(&mut delay, deadline)).await {
                        return last.map_or_else(|| Err(self.timed_out()), |f| f.into_answer(self, trace));
                    }
                    continue;
                }
            };
            let status = response.status();
            let info = RateLimitInfo::parse(response.headers());
            // A 429 is read before deciding (it is small): one that says the account lacks an entitlement
            // (extra usage or credits for long context) is no rate limit, and must not bench the account.
            let (response, entitlement) = if status == StatusCode::TOO_MANY_REQUESTS {
                let (parts, body) = response.into_parts();
                let bytes = trace.clock.wait(Box::pin(read_body(body, ERROR_BODY_CAP, deadline))).await;
                let entitlement = crate::anthropic::is_entitlement_error(&bytes)
                    && !matches!(
                        crate::anthropic::classify(429, &info),
                        Verdict::AccountLimited { .. } | Verdict::ModelLimited { .. }
                    );
                (hyper::Response::from_parts(parts, UpstreamBody::Read(Some(bytes))), entitlement)
            } else if status.is_success() && self.lists_models(req) {
                (trace.clock.wait(Box::pin(self.with_aliases(response, deadline))).await, false)
            } else if let (true, Some(key)) = (status == StatusCode::OK, trace.count_key) {
                (trace.clock.wait(Box::pin(self.kept_count(key, response, deadline))).await, false)
            } else {
                (response.map(UpstreamBody::Live), false)
            };
            // An entitlement answer still carries the account's windows: take those in as from any answer.
            let verdict = account.observe(if entitlement { 200 } else { status.as_u16() }, &info, family);
            if let Outcome::FailOver { cause, pause } = Outcome::of(status, &verdict, entitlement) {
                log_answer(req, &account, status, started, attempts);
                account.attempt_failed();
                tried.push(account.id.clone());
                let why = if entitlement { " (not entitled)" } else { "" };
                reasons.push(format!("{} answered {}{why}", account.name, status.as_u16()));
                let error_type = entitlement.then_some("entitlement");
                if attempts >= self.retry.max_attempts {
                    trace.row.error_type = error_type.map(str::to_owned);
                    let recorder = self.recorder(trace, Some(&account.name), &response, &info);
                    return Ok(stream_back(response, None, recorder, self.idle_timeout));
                }
                let transient = cause == Cause::Upstream;
                last = Some(Failure::Upstream { response, transient, account: account.name.clone(), error_type });
                if pause && !trace.clock.wait(self.back_off(&mut delay, deadline)).await {
                    return last.map_or_else(|| Err(self.timed_out()), |f| f.into_answer(self, trace));
                }
                continue;
            }
            log_answer(req, &account, status, started, attempts);
            account.record(!status.is_success());
            trace.answered = true;
            self.pool.served(&account, &want);
            let recorder = self.recorder(trace, Some(&account.name), &response, &info);
            return Ok(stream_back(response, Some(account), recorder, self.idle_timeout));
        }
    }

    /// A `count_tokens` answer from the cache: logged like any request, with no account.
    fn cached_count(&self, mut trace: Trace, answer: Bytes) -> Response {
        if let Some(log) = &self.log {
            let mut row = std::mem::take(&mut trace.row);
            row.status = 200;
            row.ttfb_ms = Some(millis(trace.started.elapsed()));
            row.duration_ms = millis(trace.started.elapsed());
            log.record_with(row, None);
        }
        let mut response = Response::new(Body::from(answer));
        response.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response.headers_mut().insert(HeaderName::from_static("x-switchyard-cache"), HeaderValue::from_static("hit"));
        response
    }

    /// A successful `count_tokens` answer, kept for the next identical request.
    async fn kept_count(
        &self,
        key: [u8; 32],
        response: hyper::Response<Incoming>,
        deadline: tokio::time::Instant,
    ) -> hyper::Response<UpstreamBody> {
        let (parts, body) = response.into_parts();
        let bytes = read_body(body, count_cache::MAX_ANSWER + 1, deadline).await;
        if let Some(cache) = &self.count_cache {
            cache.put(key, bytes.clone());
        }
        hyper::Response::from_parts(parts, UpstreamBody::Read(Some(bytes)))
    }

    /// An Anthropic model list (`GET /v1/models`) while aliases are configured.
    fn lists_models(&self, req: &Inbound) -> bool {
        req.method == Method::GET
            && req.path_and_query.split('?').next() == Some("/v1/models")
            && !self.models.aliases().is_empty()
    }

    /// The upstream's model list with the aliases after its own models (`id` the alias, `display_name`
    /// saying what it stands for). A list that does not read as one goes back as it came.
    async fn with_aliases(
        &self,
        response: hyper::Response<Incoming>,
        deadline: tokio::time::Instant,
    ) -> hyper::Response<UpstreamBody> {
        let (mut parts, body) = response.into_parts();
        let bytes = read_body(body, MODEL_LIST_CAP, deadline).await;
        let listed = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|mut list| {
            let data = list.get_mut("data")?.as_array_mut()?;
            for (alias, model) in self.models.aliases() {
                data.push(serde_json::json!({
                    "type": "model",
                    "id": alias,
                    "display_name": format!("{alias} (alias of {model})"),
                    "created_at": "1970-01-01T00:00:00Z",
                }));
            }
            serde_json::to_vec(&list).ok()
        });
        // The length changes (hyper sets the new one from the body).
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        let body = listed.map_or(bytes, Bytes::from);
        hyper::Response::from_parts(parts, UpstreamBody::Read(Some(body)))
    }

    /// Apply `[models.aliases]` and the `[1m]` suffix before anything else sees the request: the body's
    /// `model` is replaced where it stands (every other byte kept) and the long-context beta added, as if
    /// the client had sent them; `/v1/models/{alias}` asks for the model the alias stands for.
    fn resolve_model(&self, req: &mut Inbound, peek: &mut Peek) {
        if req.method == Method::GET {
            if let Some(name) = req.path_and_query.strip_prefix("/v1/models/")
                && let Some(resolved) = self.models.resolve(name.split('?').next().unwrap_or(name))
            {
                let query = name.find('?').map_or("", |i| &name[i..]);
                req.path_and_query = format!("/v1/models/{}{query}", resolved.model);
            }
            return;
        }
        if req.method != Method::POST || !self.models.may_rewrite(&req.body) {
            return;
        }
        let Some(model) = peek.model.clone() else { return };
        let Some(resolved) = self.models.resolve(&model) else { return };
        let Ok(body) = MessageBody::parse(&req.body) else { return };
        let Ok(name) = serde_json::to_string(&resolved.model) else { return };
        req.body = Bytes::from(body.with_field("model", &name));
        peek.model = Some(resolved.model.clone());
        if resolved.long_context {
            let client: Vec<&str> =
                req.headers.get_all("anthropic-beta").iter().filter_map(|v| v.to_str().ok()).collect();
            let client = (!client.is_empty()).then(|| client.join(","));
            if let Some(beta) = crate::anthropic::beta_list(client.as_deref(), Some(models::LONG_CONTEXT_BETA), None)
                && let Ok(value) = HeaderValue::from_str(&beta)
            {
                req.headers.insert(HeaderName::from_static("anthropic-beta"), value);
            }
        }
        tracing::info!(
            requested = %crate::ledger::prefix_at_most(&model, MODEL_MAX),
            model = %resolved.model,
            long_context = resolved.long_context,
            "model name resolved"
        );
    }

    /// What records this request once its answer has streamed out, if request logging is on.
    fn recorder<B>(
        &self,
        trace: &mut Trace,
        account: Option<&str>,
        response: &hyper::Response<B>,
        info: &RateLimitInfo,
    ) -> Option<Recorder> {
        let log = self.log.clone()?;
        // The answer is final from here on: the row moves into what records it.
        let mut row = std::mem::take(&mut trace.row);
        row.account = account.map(str::to_owned);
        row.status = i64::from(response.status().as_u16());
        row.ttfb_ms = Some(millis(trace.started.elapsed()));
        row.ratelimit_status = info.unified_status.clone();
        Some(Recorder {
            log,
            pricing: self.pricing.clone(),
            row,
            started: trace.started,
            json: Some(Vec::new()),
            completed: false,
            broken: false,
            payload: self.payloads.clone().map(|policy| (policy, trace.body.clone(), Vec::new())),
        })
    }

    /// Pause before the next attempt; `false` (without pausing) when the pause would outlast the request's
    /// first-byte budget, so the caller answers with what it has.
    async fn back_off(&self, delay: &mut Duration, deadline: tokio::time::Instant) -> bool {
        if tokio::time::Instant::now() + *delay >= deadline {
            return false;
        }
        tokio::time::sleep(*delay).await;
        *delay = delay.mul_f64(self.retry.backoff).min(Duration::from_secs(60));
        true
    }

    fn timed_out(&self) -> ApiError {
        ApiError::gateway_timeout(format!(
            "the upstream did not answer within {}s (SWITCHYARD_FIRST_BYTE_TIMEOUT_SECS, shared by all attempts)",
            self.first_byte_timeout.as_secs()
        ))
    }

    /// The body an OAuth account sends: the identity first in `system` (Messages endpoints only).
    fn oauth_body(&self, req: &Inbound) -> Bytes {
        if self.identity != IdentityMode::Inject || req.method != Method::POST {
            return req.body.clone();
        }
        match MessageBody::parse(&req.body).ok().and_then(|body| body.with_identity(&self.identity_prompt)) {
            Some(rewritten) => Bytes::from(rewritten),
            None => req.body.clone(),
        }
    }

    async fn send(
        &self,
        req: &Inbound,
        credential: &Credential,
        body: Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<hyper::Response<Incoming>, SendFailure> {
        let request = self.upstream_request(req, credential, body).map_err(SendFailure::Broken)?;
        match tokio::time::timeout_at(deadline, self.http.get().request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(SendFailure::Unreachable(ApiError::bad_gateway(format!(
                "the upstream is unreachable: cannot connect to {}: {}",
                self.upstream_host,
                root_cause(&e)
            )))),
            Ok(Err(_)) => Err(SendFailure::Broken(ApiError::bad_gateway("the upstream connection failed"))),
            Err(_) => Err(SendFailure::TimedOut(self.timed_out())),
        }
    }

    /// The upstream request for one account: the client's headers minus what must not travel, the
    /// account's credential, and the body it sends.
    fn upstream_request(
        &self,
        req: &Inbound,
        credential: &Credential,
        body: Bytes,
    ) -> Result<hyper::Request<Full<Bytes>>, ApiError> {
        let mut headers = HeaderMap::with_capacity(req.headers.len() + 3);
        let hop = connection_named(&req.headers);
        for (name, value) in &req.headers {
            if forward_request_header(name.as_str())
                && name != "anthropic-beta"
                && !hop.iter().any(|h| h == name.as_str())
            {
                headers.append(name.clone(), value.clone());
            }
        }
        let client_beta: Vec<&str> =
            req.headers.get_all("anthropic-beta").iter().filter_map(|v| v.to_str().ok()).collect();
        let client_beta = (!client_beta.is_empty()).then(|| client_beta.join(","));
        match credential {
            Credential::ApiKey(key) => {
                headers.insert(HeaderName::from_static("x-api-key"), header_value(key.expose_secret())?);
                // A client logged in to Claude Code sends the OAuth beta; an API key must not carry it.
                if let Some(beta) = crate::anthropic::beta_list(client_beta.as_deref(), None, Some(&self.oauth_beta)) {
                    headers.insert(HeaderName::from_static("anthropic-beta"), header_value(&beta)?);
                }
            }
            Credential::Bearer(token) => {
                headers.insert(
                    axum::http::header::AUTHORIZATION,
                    header_value(&format!("Bearer {}", token.expose_secret()))?,
                );
                let beta = merge_beta(client_beta.as_deref(), &self.oauth_beta);
                headers.insert(HeaderName::from_static("anthropic-beta"), header_value(&beta)?);
            }
        }
        if !headers.contains_key("anthropic-version") {
            headers.insert(HeaderName::from_static("anthropic-version"), self.anthropic_version.clone());
        }
        if !body.is_empty() && !headers.contains_key(axum::http::header::CONTENT_TYPE) {
            headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let uri: axum::http::Uri = format!("{}{}", self.base, req.path_and_query)
            .parse()
            .map_err(|_| ApiError::invalid_request("the request path is not a valid URI"))?;
        let mut request = hyper::Request::new(Full::new(body));
        *request.method_mut() = req.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

/// Longest model name kept (in the log and for routing); Anthropic's are under 64 characters.
const MODEL_MAX: usize = 128;

/// Headers the message's `Connection` header names (usually none: no allocation then).
fn connection_named(headers: &HeaderMap) -> Vec<String> {
    if !headers.contains_key(axum::http::header::CONNECTION) {
        return Vec::new();
    }
    crate::anthropic::named_by_connection(
        headers.get_all(axum::http::header::CONNECTION).iter().filter_map(|v| v.to_str().ok()),
    )
}

fn log_answer(req: &Inbound, account: &Account, status: StatusCode, started: Instant, attempt: u32) {
    let path = req.path_and_query.split('?').next().unwrap_or("");
    tracing::info!(
        method = %req.method,
        path,
        account = %account.name,
        status = status.as_u16(),
        attempt,
        first_byte_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "forwarded"
    );
}

/// What a request did, filled in as it goes; becomes its request-log row.
#[derive(Debug)]
struct Trace {
    row: RequestRow,
    started: Instant,
    /// The request body, for payload keeping (a reference-counted view, not a copy).
    body: Bytes,
    /// The account of the last attempt: a request that fails is counted and logged there.
    last: Option<Arc<Account>>,
    /// An account's answer was passed on as a success or a final error, and counted there.
    answered: bool,
    /// A `count_tokens` request's key in the answer cache.
    count_key: Option<[u8; 32]>,
    clock: Clock,
}

impl Trace {
    fn new(req: &Inbound) -> Self {
        let row = RequestRow {
            id: crate::ledger::request_id(),
            at_ms: crate::now_ms(),
            client_key: req.caller.as_ref().map(|k| k.name.clone()),
            method: req.method.to_string(),
            // What the client asked for (a translated request goes to `/v1/messages` upstream).
            path: crate::ledger::bounded_path(
                crate::dialect::client_path(req.dialect).unwrap_or(req.path_and_query.split('?').next().unwrap_or("")),
            ),
            dialect: Some(req.dialect.to_owned()),
            ..RequestRow::default()
        };
        Self {
            row,
            started: Instant::now(),
            body: req.body.clone(),
            last: None,
            answered: false,
            count_key: None,
            clock: req.clock,
        }
    }

    fn tried(&mut self, account: &Arc<Account>, attempts: u32) {
        if !self.row.accounts_tried.is_empty() {
            self.row.accounts_tried.push(',');
        }
        self.row.accounts_tried.push_str(&account.name);
        self.row.attempts = i64::from(attempts);
        self.last = Some(account.clone());
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Completes and queues a request-log row when the answer's stream ends (or the client leaves).
struct Recorder {
    log: Arc<RequestLog>,
    pricing: Arc<Pricing>,
    row: RequestRow,
    started: Instant,
    /// A JSON answer, kept (up to a cap) to read its `usage` at the end.
    json: Option<Vec<u8>>,
    completed: bool,
    broken: bool,
    /// Payload policy, request body and the response captured so far (capped), when payloads are kept.
    payload: Option<(Arc<PayloadPolicy>, Bytes, Vec<u8>)>,
}

/// Largest JSON answer read for its usage; bigger ones are passed through without it.
const JSON_USAGE_CAP: usize = 4 * 1024 * 1024;

impl Recorder {
    fn capture(&mut self, bytes: &[u8]) {
        if let Some((policy, _, response)) = &mut self.payload {
            let room = policy.capture_bytes().saturating_sub(response.len());
            response.extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    fn feed_json(&mut self, bytes: &[u8]) {
        if let Some(buffer) = &mut self.json {
            if buffer.len() + bytes.len() > JSON_USAGE_CAP {
                self.json = None;
            } else {
                buffer.extend_from_slice(bytes);
            }
        }
    }

    fn finish(mut self, sse: Option<&SseTap>) {
        let usage = match (sse, &self.json) {
            (Some(tap), _) => tap.usage.clone(),
            (None, Some(body)) => json_usage(body),
            (None, None) => Usage::default(),
        };
        self.row.input_tokens = usage.input;
        self.row.output_tokens = usage.output;
        self.row.cache_read_tokens = usage.cache_read;
        self.row.cache_creation_tokens = usage.cache_creation;
        self.row.cost_usd = self.pricing.cost(self.row.model.as_deref(), &usage);
        self.row.error_type = if self.broken {
            Some("stream_broken".to_owned())
        } else if !self.completed {
            Some("client_disconnected".to_owned())
        } else {
            // A type the failover loop gave the answer (`entitlement`) says more than the body's.
            self.row.error_type.take().or(usage.error_type)
        };
        self.row.duration_ms = millis(self.started.elapsed());
        let raw = match self.payload.take() {
            Some((policy, request, response)) if policy.keeps(self.row.status, self.row.error_type.is_some()) => {
                Some(RawPayload { request, response })
            }
            _ => None,
        };
        self.log.record_with(self.row, raw);
    }
}

/// The answer's body on its way to the client: forwarded frame by frame, read in passing for usage and
/// errors, and recorded when it ends or is dropped.
/// An upstream answer's body: still arriving, or read already (an error answer the failover loop had to
/// look into before deciding), replayed to the client unchanged.
enum UpstreamBody {
    Live(Incoming),
    Read(Option<Bytes>),
}

impl UpstreamBody {
    fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self {
            Self::Live(inner) => std::pin::Pin::new(inner).poll_frame(cx),
            Self::Read(bytes) => std::task::Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Live(inner) => inner.size_hint(),
            Self::Read(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

struct Tapped {
    inner: UpstreamBody,
    is_sse: bool,
    ended: bool,
    account: Option<Arc<Account>>,
    tap: SseTap,
    recorder: Option<Recorder>,
    /// `content-length` of the answer: hyper stops polling once it has sent that many bytes, so the end
    /// is known by counting rather than by seeing the stream finish.
    expected: Option<u64>,
    seen: u64,
    idle: Idle,
}

/// The upstream's idle limit between two frames. The timer is armed only while the upstream keeps us
/// waiting and is moved only when it fires, so a busy stream costs a clock read per frame, not a timer.
struct Idle {
    limit: Duration,
    last: Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Idle {
    /// Whether the upstream has been silent for longer than the limit (arming the timer otherwise).
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let deadline = tokio::time::Instant::from_std(self.last + self.limit);
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = tokio::time::Instant::from_std(self.last + self.limit);
            if deadline <= tokio::time::Instant::now() {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
    }
}

impl Tapped {
    fn data(&mut self, bytes: &Bytes) {
        self.idle.last = Instant::now();
        self.seen += bytes.len() as u64;
        if let Some(recorder) = &mut self.recorder {
            recorder.capture(bytes);
            if self.expected.is_some_and(|n| self.seen >= n) {
                recorder.completed = true;
            }
        }
        if self.is_sse {
            let had_error = self.tap.usage.error_type.is_some();
            self.tap.feed(bytes);
            if !had_error
                && self.tap.usage.error_type.is_some()
                && let Some(account) = &self.account
            {
                account.stream_failed();
            }
        } else if let Some(recorder) = &mut self.recorder {
            recorder.feed_json(bytes);
        }
    }

    /// The upstream broke off (or went silent): a stream ends with our own `error` event, a JSON answer
    /// with an error the client's HTTP library sees.
    fn broke(&mut self, why: &str) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        self.ended = true;
        tracing::warn!(error = %why, "upstream stream broke mid-way");
        if let Some(recorder) = &mut self.recorder {
            recorder.broken = true;
        }
        if self.tap.usage.error_type.is_none()
            && let Some(account) = &self.account
        {
            account.stream_failed();
        }
        if self.is_sse {
            let error = ApiError::bad_gateway("the upstream connection broke mid-stream");
            Some(Ok(Frame::data(Bytes::from(format!("event: error\ndata: {}\n\n", error.body())))))
        } else {
            Some(Err(std::io::Error::other(why.to_owned())))
        }
    }
}

impl HttpBody for Tapped {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                if this.idle.expired(cx) {
                    let why = format!("the upstream sent nothing for {}s", this.idle.limit.as_secs());
                    return Poll::Ready(this.broke(&why));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(bytes) = frame.data_ref() {
                    this.data(bytes);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(this.broke(&e.to_string())),
            Poll::Ready(None) => {
                this.ended = true;
                if let Some(recorder) = &mut this.recorder {
                    recorder.completed = true;
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        // A stream may gain an `error` event of ours at the end; a JSON answer keeps its length.
        if self.is_sse { SizeHint::default() } else { self.inner.size_hint() }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        if self.is_sse {
            crate::metrics::open_streams(-1.0);
        }
        if let Some(recorder) = self.recorder.take() {
            recorder.finish(self.is_sse.then_some(&self.tap));
        }
    }
}

/// Largest error answer read before the failover loop decides; more is not an error message.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// What routing and the log need from a request's body (nothing for a GET); an empty or malformed body
/// is the client's error.
fn peek(req: &Inbound) -> Result<Peek, ApiError> {
    if req.method != Method::POST {
        return Ok(Peek::default());
    }
    if req.body.is_empty() {
        return Err(ApiError::invalid_request("request body is empty; expected a JSON object"));
    }
    Peek::parse(&req.body).map_err(|e| ApiError::invalid_request(e.to_string()))
}

/// `POST /v1/messages/count_tokens` (with or without a query).
pub fn is_count_tokens(path_and_query: &str) -> bool {
    path_and_query.split('?').next() == Some("/v1/messages/count_tokens")
}

/// Largest model list read to add the aliases to.
const MODEL_LIST_CAP: usize = 4 * 1024 * 1024;

/// Read a (small) answer whole, within the request's first-byte budget; whatever arrived when it ends,
/// breaks or grows past `cap` is what the client gets.
async fn read_body(mut body: Incoming, cap: usize, deadline: tokio::time::Instant) -> Bytes {
    let mut out = Vec::new();
    let read = async {
        while let Some(Ok(frame)) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            if let Some(bytes) = frame.data_ref() {
                out.extend_from_slice(&bytes[..bytes.len().min(cap - out.len())]);
                if out.len() >= cap {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, read).await;
    Bytes::from(out)
}

/// Hand the upstream answer to the client as it arrives: status, headers and each chunk unchanged.
/// A stream that breaks after the first byte ends with an SSE `error` event instead of silently stopping;
/// either that or an upstream `error` event counts as a failure of `account`.
fn stream_back(
    upstream: hyper::Response<UpstreamBody>,
    account: Option<Arc<Account>>,
    recorder: Option<Recorder>,
    idle_limit: Duration,
) -> Response {
    let (parts, inner) = upstream.into_parts();
    let is_sse = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    let hop = connection_named(&parts.headers);
    for (name, value) in &parts.headers {
        if pass_back_response_header(name.as_str()) && !hop.iter().any(|h| h == name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let expected = if is_sse {
        headers.remove(axum::http::header::CONTENT_LENGTH);
        crate::metrics::open_streams(1.0);
        None
    } else {
        inner.size_hint().exact()
    };
    let body = Tapped {
        expected,
        seen: 0,
        inner,
        is_sse,
        ended: false,
        account,
        tap: SseTap::default(),
        recorder,
        idle: Idle { limit: idle_limit, last: Instant::now(), timer: None },
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_in_one_place() {
        let allowed = Verdict::Allowed { warning: false };
        let of = |status: u16, verdict: &Verdict, entitlement: bool| {
            Outcome::of(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), verdict, entitlement)
        };
        for status in [200, 400, 404, 413] {
            assert_eq!(of(status, &allowed, false), Outcome::Answer, "{status}");
        }
        for status in [500, 502, 503, 504, 529] {
            assert_eq!(of(status, &allowed, false), Outcome::FailOver { cause: Cause::Upstream, pause: true });
        }
        let limited = Verdict::AccountLimited { until: None };
        assert_eq!(of(429, &limited, false), Outcome::FailOver { cause: Cause::Account, pause: false });
        assert_eq!(of(429, &Verdict::RequestScoped, false), Outcome::FailOver { cause: Cause::Account, pause: true });
        assert_eq!(of(429, &allowed, true), Outcome::FailOver { cause: Cause::Account, pause: false }, "entitlement");
        assert_eq!(of(401, &allowed, false), Outcome::FailOver { cause: Cause::Account, pause: false });
    }
}
