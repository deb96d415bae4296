//! The HTTP front: routes, request reading and limits, background upkeep, graceful shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

mod admin;
mod dashboard;
mod guard;
mod headers;
mod listen;

pub use admin::Admin;
pub(crate) use admin::{cookie_value, read_any_input as read_any_admin_input};
use guard::Asking;
pub use guard::Guard;
pub(crate) use guard::presented_key;
pub use listen::{ListenOptions, parse_allowed_ips, tls_config};

use crate::access::ClientKeys;
use crate::accounts::Pool;
use crate::config::Config;
use crate::dialect::Dialect;
use crate::error::ApiError;
use crate::forward::{Clock, Forwarder, Inbound};
use axum::http::HeaderValue;

/// The proxied Anthropic endpoints behind the guard, the router for `/health`, `/metrics` and the admin
/// API, and JSON errors for everything else.
pub fn front(
    forwarder: Arc<Forwarder>,
    guard: Arc<Guard>,
    admin: Arc<Admin>,
    web: WebOptions,
    body_limit: usize,
    body_timeout: Duration,
) -> Front {
    let cors = headers::Cors { origins: Arc::new(web.allowed_origins) };
    let not_found =
        unrouted(web.log.clone(), |_, uri| ApiError::not_found(format!("no such endpoint: {}", uri.path())));
    let method_not_allowed = unrouted(web.log.clone(), |method, uri| {
        ApiError::method_not_allowed(format!("{method} is not allowed on {}", uri.path()))
    });
    let openai = Arc::new(crate::dialect::openai::OpenAiChat::new(web.openai.clone()));
    let responses = Arc::new(crate::dialect::responses::OpenAiResponses::new(web.openai.clone()));
    let api = Arc::new(Api {
        forwarder,
        guard,
        cors: cors.clone(),
        hosts: web.hosts.clone(),
        body_limit,
        body_timeout,
        openai,
        responses,
    });
    let api_routes = Router::new()
        .route("/v1/messages", post(proxy))
        .route("/v1/messages/count_tokens", post(proxy))
        .route("/v1/chat/completions", post(proxy))
        .route("/v1/responses", post(proxy))
        .route("/v1/models", get(proxy))
        .route("/v1/models/{id}", get(proxy))
        .method_not_allowed_fallback(method_not_allowed.clone())
        .with_state(api.clone());
    let metrics_route = Router::new().route("/metrics", get(metrics)).with_state(MetricsState {
        handle: crate::metrics::install(web.instance.as_deref()),
        admin: admin.clone(),
        log: web.log.clone(),
    });
    let own = Router::new()
        .merge(dashboard::routes(admin.clone()))
        .merge(admin::routes(admin.clone()))
        .route("/health", get(move || health(admin.clone())))
        .merge(metrics_route)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(headers::Tls(web.tls), headers::security_headers));
    let router = own
        .merge(api_routes)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(cors, headers::cors))
        .layer(axum::middleware::from_fn_with_state(web.hosts, headers::host_check));
    Front { api, router }
}

/// The proxied Anthropic endpoints: guard, body, forward. The accept loop calls this directly for the
/// methods and paths `is_api` names (on the hot path the router's layers and extractors cost as much CPU
/// as the forwarding itself); the router lists the same paths, so other methods get 405 and preflights
/// get CORS.
#[derive(Debug)]
pub struct Api {
    forwarder: Arc<Forwarder>,
    guard: Arc<Guard>,
    cors: headers::Cors,
    hosts: headers::Hosts,
    body_limit: usize,
    body_timeout: Duration,
    /// The OpenAI Chat Completions dialect (`/v1/chat/completions`).
    openai: Arc<crate::dialect::openai::OpenAiChat>,
    /// The OpenAI Responses dialect (`/v1/responses`).
    responses: Arc<crate::dialect::responses::OpenAiResponses>,
}

/// Whether `method path` is one of the proxied endpoints.
pub fn is_api(method: &Method, path: &str) -> bool {
    let get = *method == Method::GET || *method == Method::HEAD;
    match path {
        "/v1/messages" | "/v1/messages/count_tokens" | "/v1/chat/completions" | "/v1/responses" => {
            *method == Method::POST
        }
        "/v1/models" => get,
        _ => get && path.strip_prefix("/v1/models/").is_some_and(plain_model_id),
    }
}

/// A model id as Anthropic names them (`claude-sonnet-4-5`, `claude-3-5-haiku@20241022`): nothing that
/// could change the path the account's credential is sent to (no dot segments, `%` escapes or slashes).
fn plain_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

impl Api {
    pub async fn serve<B>(&self, req: axum::http::Request<B>, peer: IpAddr) -> Response
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<axum::BoxError>,
    {
        // Switchyard's own time starts with the request's head (the key check and routing are part of it).
        let clock = Clock::start();
        let (mut parts, body) = req.into_parts();
        if !self.hosts.allows(&parts.headers, &parts.uri) {
            return headers::Hosts::refusal().into_response();
        }
        guard::mark_sensitive(&mut parts.headers);
        let allowed = self.cors.allowed(&parts.headers);
        let mut response = self.proxy(parts, body, peer, clock).await;
        headers::Cors::expose(allowed, &mut response);
        response
    }

    async fn proxy<B>(&self, parts: axum::http::request::Parts, body: B, peer: IpAddr, mut clock: Clock) -> Response
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<axum::BoxError>,
    {
        // The client's dialect decides the shape of every answer, refusals included.
        let dialect: Option<&dyn Dialect> = match parts.uri.path() {
            "/v1/chat/completions" => Some(self.openai.as_ref()),
            "/v1/responses" => Some(self.responses.as_ref()),
            _ => None,
        };
        let refuse = |error: ApiError| match dialect {
            Some(d) => dialect_error(d, error),
            None => error.into_response(),
        };
        if parts.uri.path().strip_prefix("/v1/models/").is_some_and(|id| !plain_model_id(id)) {
            return ApiError::not_found("no such model: a model id is letters, digits and - _ . : @").into_response();
        }
        if self.guard.is_open()
            && let Some(refused) = headers::open_mode_refusal(&self.cors, &parts.method, &parts.headers)
        {
            return refused.into_response();
        }
        let asking = Asking { method: &parts.method, path: parts.uri.path(), headers: &parts.headers, ip: peer };
        let admitted = match self.guard.admit(&asking).await {
            Ok(admitted) => admitted,
            Err(refused) => return refuse(refused),
        };
        let reading = tokio::time::timeout(self.body_timeout, read_body(body, &parts.headers, self.body_limit));
        let body = match clock.wait(reading).await {
            Ok(Ok(body)) => body,
            Ok(Err(error)) => return refuse(error),
            Err(_) => {
                let message = format!("the request body did not arrive within {}s", self.body_timeout.as_secs());
                return refuse(ApiError::request_timeout(message));
            }
        };
        if let Some(key) = &admitted.key
            && self.guard.counts_per_minute(parts.uri.path())
        {
            // Input tokens are known only upstream; a quarter of the body's bytes is the usual estimate.
            let estimate = u32::try_from(body.len() / 4).unwrap_or(u32::MAX);
            if let Err(wait) = key.check_tpm(estimate, crate::now_ms()) {
                let message = format!("API key {:?} is over its input-tokens-per-minute limit", key.name);
                return refuse(ApiError::client_limited(message, wait));
            }
        }
        let (path_and_query, body, translated) = match dialect {
            None => {
                let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str()).to_owned();
                (path, body, None)
            }
            Some(d) => match d.request(&body) {
                // The translated body moves into the request; the answer needs only the rest.
                Ok(mut t) => ("/v1/messages".to_owned(), Bytes::from(std::mem::take(&mut t.body)), Some(t)),
                Err(e) => return refuse(ApiError::invalid_request(e.message)),
            },
        };
        // OpenAI clients list models without `anthropic-version`; Anthropic's always send it.
        let openai_models = parts.method == Method::GET
            && path_and_query.split('?').next() == Some("/v1/models")
            && !parts.headers.contains_key("anthropic-version");
        let mut headers = parts.headers;
        if dialect.is_some() {
            headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let inbound = Inbound {
            method: parts.method,
            path_and_query,
            headers,
            body,
            caller: admitted.key,
            dialect: dialect.map_or("anthropic", |d| d.name()),
            clock,
        };
        let response = match self.forwarder.forward(inbound).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(status = error.status.as_u16(), error = %error.message, "request failed");
                return refuse(error);
            }
        };
        let response = match (dialect, &translated) {
            (Some(d), Some(t)) => Box::pin(dialect_answer(d, response, t)).await,
            _ if openai_models => Box::pin(openai_model_list(response)).await,
            _ => response,
        };
        match admitted.slot {
            // The slot is held until the last byte of the answer (a stream may run for minutes).
            Some(slot) => response.map(|body| {
                axum::body::Body::from_stream(body.into_data_stream().map(move |chunk| {
                    let _held = &slot;
                    chunk
                }))
            }),
            None => response,
        }
    }
}

/// A refusal or gateway error in a dialect's shape, with its status and `retry-after`.
fn dialect_error(dialect: &dyn Dialect, error: ApiError) -> Response {
    let mut response =
        Response::new(axum::body::Body::from(dialect.error(error.status.as_u16(), error.kind, &error.message)));
    *response.status_mut() = error.status;
    response.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = error.retry_after {
        response.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    response
}

/// The upstream's answer (already recorded by the forwarder as it passes) in a dialect's shape: an error
/// with its status and headers, a JSON answer translated whole, an event stream translated event by
/// event as it arrives.
async fn dialect_answer(dialect: &dyn Dialect, response: Response, request: &crate::dialect::Translated) -> Response {
    use http_body_util::BodyExt;
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let sse = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if parts.status.is_success() && sse {
        let stream = TranslatedStream {
            inner: body.into_data_stream(),
            reader: crate::dialect::SseReader::default(),
            translator: dialect.stream(request),
            ended: false,
        };
        return Response::from_parts(parts, axum::body::Body::from_stream(stream));
    }
    let cap = if parts.status.is_success() { crate::dialect::MAX_ANSWER } else { 64 * 1024 };
    let bytes = match http_body_util::Limited::new(body, cap).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return dialect_error(dialect, ApiError::bad_gateway("the upstream answer could not be read whole"));
        }
    };
    parts.headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let out = if parts.status.is_success() {
        match dialect.answer(&bytes, request) {
            Ok(out) => out,
            Err(e) => return dialect_error(dialect, ApiError::bad_gateway(e.message)),
        }
    } else {
        let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let kind = error["error"]["type"].as_str().unwrap_or("api_error");
        let message = error["error"]["message"].as_str().unwrap_or("the upstream refused the request");
        dialect.error(parts.status.as_u16(), kind, message)
    };
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// Anthropic's model list in OpenAI's shape (`{"object":"list","data":[{"id","object":"model",…}]}`); any
/// other answer goes back as it came.
async fn openai_model_list(response: Response) -> Response {
    use http_body_util::BodyExt;
    if !response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(collected) = http_body_util::Limited::new(body, crate::dialect::MAX_ANSWER).collect().await else {
        return ApiError::bad_gateway("the upstream model list could not be read whole").into_response();
    };
    let bytes = collected.to_bytes();
    let Ok(list) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let data: Vec<serde_json::Value> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let created = m["created_at"].as_str().and_then(crate::anthropic::parse_timestamp_ms).unwrap_or(0) / 1000;
            serde_json::json!({"id": m["id"], "object": "model", "created": created, "owned_by": "anthropic"})
        })
        .collect();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let out = serde_json::json!({"object": "list", "data": data});
    Response::from_parts(parts, axum::body::Body::from(out.to_string()))
}

/// An Anthropic event stream translated chunk by chunk, unbuffered: each upstream chunk's complete
/// events go out as soon as they arrive.
struct TranslatedStream<S> {
    inner: S,
    reader: crate::dialect::SseReader,
    translator: Box<dyn crate::dialect::StreamTranslator>,
    ended: bool,
}

impl<S> futures_util::Stream for TranslatedStream<S>
where
    S: futures_util::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let mut out = Vec::new();
                    let translator = &mut this.translator;
                    this.reader.feed(&chunk, |name, data| out.extend(translator.event(name, data)));
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                }
                Poll::Ready(end) => {
                    this.ended = true;
                    let out = this.translator.finish(matches!(end, Some(Err(_))));
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(out))));
                    }
                }
            }
        }
    }
}

/// The whole request body, refused with 413 past `limit` (by its `content-length` before reading a byte).
async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let too_large = || ApiError::too_large("request body exceeds the configured limit");
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(ApiError::invalid_request("could not read the request body")),
    }
}

/// The router's entry to the proxied endpoints (the accept loop normally gets there first).
async fn proxy(State(api): State<Arc<Api>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    api.serve(req, peer.ip()).await
}

/// What the accept loop serves: the proxied endpoints directly, everything else through the router.
#[derive(Debug, Clone)]
pub struct Front {
    pub api: Arc<Api>,
    pub router: Router,
}

/// Liveness, and when the server last picked up the store's changes (accounts, keys, sessions): a value
/// that stops moving means the upkeep is stuck; tests wait on it instead of sleeping.
async fn health(admin: Arc<Admin>) -> Response {
    let synced = admin.synced_at_ms.load(std::sync::atomic::Ordering::Relaxed);
    let problem = admin.store_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    // Degraded still serves (from the accounts and keys in memory), so the status stays 200: a load
    // balancer should keep sending traffic; an operator should look.
    axum::Json(serde_json::json!({
        "status": if problem.is_some() { "degraded" } else { "ok" },
        "reason": problem,
        "version": env!("CARGO_PKG_VERSION"),
        "synced_at_ms": (synced > 0).then_some(synced),
        "live_instances": admin.keys.instances(),
    }))
    .into_response()
}

/// The handler for requests no route takes (404, 405): answers `error` and records the request in the log
/// like every other.
fn unrouted(
    log: Option<Arc<crate::ledger::RequestLog>>,
    error: fn(&Method, &Uri) -> ApiError,
) -> impl Fn(Method, Uri) -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move |method, uri| std::future::ready(answer_unrouted(log.as_deref(), &method, &uri, error(&method, &uri)))
}

fn answer_unrouted(log: Option<&crate::ledger::RequestLog>, method: &Method, uri: &Uri, error: ApiError) -> Response {
    if let Some(log) = log {
        log.record(crate::store::RequestRow {
            id: crate::ledger::request_id(),
            at_ms: crate::now_ms(),
            method: method.to_string(),
            path: crate::ledger::bounded_path(uri.path()),
            status: i64::from(error.status.as_u16()),
            error_type: Some(error.kind.to_owned()),
            ..crate::store::RequestRow::default()
        });
    }
    error.into_response()
}

/// Browser-facing settings.
#[derive(Debug, Clone, Default)]
pub struct WebOptions {
    pub tls: bool,
    pub hosts: headers::Hosts,
    pub allowed_origins: Vec<String>,
    pub log: Option<Arc<crate::ledger::RequestLog>>,
    /// This instance's name, when several share a database: every metric is labelled with it.
    pub instance: Option<String>,
    pub openai: crate::dialect::openai::OpenAiSettings,
}

#[derive(Clone)]
struct MetricsState {
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    admin: Arc<Admin>,
    log: Option<Arc<crate::ledger::RequestLog>>,
}

/// Prometheus text; needs `dashboard.view` (a key or an admin session) once client keys exist.
async fn metrics(State(state): State<MetricsState>, headers: HeaderMap) -> Response {
    if state.admin.keys.any() && !admin::allows(&state.admin, &headers, crate::access::Permission::DashboardView) {
        return ApiError::unauthorized("metrics need a key or session with dashboard.view").into_response();
    }
    let now = crate::now_ms();
    let accounts = state.admin.pool.snapshot();
    let limited = accounts.iter().filter(|a| a.unusable(None, now).is_some()).count();
    for account in &accounts {
        // Bounded: at most 24 windows per account are kept.
        for (window, w) in account.limits().windows {
            metrics::gauge!("switchyard_account_utilization", "account" => account.name.clone(), "window" => window)
                .set(w.utilization);
        }
    }
    crate::metrics::scrape_gauges(limited, state.log.as_ref().map_or(0, |l| l.dropped()));
    match &state.handle {
        Some(handle) => {
            let mut text = handle.render();
            text.push_str(&crate::metrics::render_latency());
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
        }
        None => ApiError::internal("metrics are unavailable in this process").into_response(),
    }
}

/// Everything `serve` runs, built from the configuration.
pub struct Gateway {
    pub pool: Arc<Pool>,
    pub keys: Arc<ClientKeys>,
    pub log: Option<Arc<crate::ledger::RequestLog>>,
    retention: Duration,
    payload_retention: Duration,
    pub admin: Arc<Admin>,
    pub front: Front,
    usage_poll: Duration,
    sync_interval: Duration,
    oauth_beta: String,
    /// The name this instance beats under (its routing state's name).
    instance: String,
    /// The store is shared with other instances (PostgreSQL).
    shared: bool,
    /// The data key is kept in the database: follow its rotations.
    key_feed: Option<KeyFeed>,
}

/// The key set kept in the shared database, as this instance last took it up: a changed value is a
/// rotation, taken up without a restart.
pub struct KeyFeed {
    passphrase: secrecy::SecretString,
    seen: String,
}

impl Gateway {
    pub fn new(
        config: &Config,
        pool: Arc<Pool>,
        keys: Arc<ClientKeys>,
        open_without_keys: bool,
        http: crate::forward::UpstreamClients,
    ) -> Result<Self, ApiError> {
        let store = config.request_log.then(|| pool.store().clone());
        let payloads = match config.payloads {
            crate::ledger::PayloadMode::Off => None,
            mode => Some(Arc::new(
                crate::ledger::PayloadPolicy::new(
                    mode,
                    config.payload_max_bytes,
                    &config.redact,
                    pool.registry().cipher().clone(),
                )
                .map_err(ApiError::internal)?,
            )),
        };
        let log = Some(crate::ledger::RequestLog::start(store, config.log_queue, Some(keys.clone()), payloads.clone()));
        let pricing = Arc::new(crate::ledger::Pricing::new(config.prices.clone()));
        let forwarder = Arc::new(Forwarder::new(config, http, pool.clone(), log.clone(), pricing, payloads)?);
        let guard = Arc::new(
            Guard::new(
                keys.clone(),
                pool.store().clone(),
                log.clone(),
                open_without_keys,
                config.auth_failures_per_minute,
            )
            .with_count_tokens_in_limits(config.count_tokens_in_limits),
        );
        let admin = Arc::new(Admin {
            pool: pool.clone(),
            keys: keys.clone(),
            sessions: crate::access::admin::Sessions::new(8 * 3600 * 1000),
            password_checks: Arc::new(tokio::sync::Semaphore::new(admin::PASSWORD_CHECKS)),
            brake: crate::access::admin::LoginBrake::default(),
            tls: config.tls_cert.is_some(),
            body_timeout: config.body_timeout.min(admin::ADMIN_BODY_TIMEOUT),
            synced_at_ms: std::sync::atomic::AtomicI64::new(0),
            store_problem: std::sync::Mutex::new(None),
        });
        Ok(Self {
            instance: config.instance_name(),
            shared: config.database.is_some(),
            key_feed: None,
            pool,
            keys,
            log: log.clone(),
            retention: config.retention,
            payload_retention: config.payload_retention,
            admin: admin.clone(),
            front: front(
                forwarder,
                guard,
                admin,
                WebOptions {
                    tls: config.tls_cert.is_some(),
                    hosts: headers::Hosts {
                        names: Arc::new(config.allowed_hosts.clone()),
                        enforce: !config.allowed_hosts.is_empty()
                            || config.host == "localhost"
                            || config.host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback()),
                    },
                    allowed_origins: config.allowed_origins.clone(),
                    log: log.clone(),
                    instance: config.database.is_some().then(|| config.instance_name()),
                    openai: crate::dialect::openai::OpenAiSettings { default_max_tokens: config.openai_max_tokens },
                },
                config.body_limit,
                config.body_timeout,
            ),
            usage_poll: config.usage_poll,
            sync_interval: config.sync_interval,
            oauth_beta: config.oauth_beta.clone(),
        })
    }

    /// Follow the key set kept in the database (wrapped under `passphrase`; `seen` is the stored value the
    /// cipher holds, empty to open it again at once), so that `auth storage rotate-key` reaches this instance while it serves.
    pub fn with_key_feed(mut self, passphrase: secrecy::SecretString, seen: String) -> Self {
        self.key_feed = Some(KeyFeed { passphrase, seen });
        self
    }

    /// Serve on `listener` until `shutdown` resolves, keeping the pool fresh in the background. Running
    /// requests get `options.drain` to finish after the signal; streams still open then are cut.
    pub async fn run(
        self,
        listener: TcpListener,
        options: ListenOptions,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let now = crate::now_ms();
        let me = crate::store::InstanceRecord {
            id: self.instance.clone(),
            host: crate::config::host_name(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            address: listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            started_at_ms: now,
            last_seen_ms: now,
            key_version: self.pool.registry().cipher().keys().current,
        };
        metrics::gauge!("switchyard_instance_info", "instance" => me.id.clone(), "version" => me.version.clone())
            .set(1.0);
        let upkeep = tokio::spawn(upkeep(Upkeep {
            pool: self.pool.clone(),
            keys: self.keys.clone(),
            admin: self.admin.clone(),
            retention: self.retention,
            payload_retention: self.payload_retention,
            me,
            shared: self.shared,
            sync_interval: self.sync_interval,
            key_feed: self.key_feed,
        }));
        let poller = (!self.usage_poll.is_zero())
            .then(|| tokio::spawn(poll_usage(self.pool.clone(), self.usage_poll, self.oauth_beta.clone())));
        listen::serve(listener, self.front.clone(), options, shutdown).await;
        upkeep.abort();
        if let Some(poller) = poller {
            poller.abort();
        }
        if let Err(e) = self.pool.flush_states().await {
            tracing::error!(error = %e, "could not save routing state at shutdown");
        }
        if let Some(log) = &self.log {
            log.drain(Duration::from_secs(5)).await;
        }
        Ok(())
    }
}

/// An instance whose heartbeat is older than this no longer counts as live (heartbeats come every 5 s).
pub const LIVE_MS: i64 = 15_000;

/// How long running requests may take to finish after a shutdown signal.
pub const DRAIN: Duration = Duration::from_secs(30);

/// What the background loop keeps, apart from the pool.
struct Upkeep {
    pool: Arc<Pool>,
    keys: Arc<ClientKeys>,
    admin: Arc<Admin>,
    retention: Duration,
    payload_retention: Duration,
    me: crate::store::InstanceRecord,
    /// The store is shared with other instances (PostgreSQL).
    shared: bool,
    /// How often to read the store for changes without being told of them.
    sync_interval: Duration,
    key_feed: Option<KeyFeed>,
}

/// Why the background loop woke.
enum Wake {
    /// The one-second housekeeping tick.
    Tick,
    /// Time for the periodic read of changes, or the change feed announced one.
    Sync,
    /// An account here was benched: the other instances should hear of it now.
    Benched,
}

/// Off the hot path: pick up changes made by the CLI or other instances (at once when the store announces
/// them, else within `sync_interval`), persist routing state, refresh tokens that are about to expire.
async fn upkeep(mut u: Upkeep) {
    // Only a shared store has others to hear from; a feed that cannot start leaves the periodic check.
    let feed = if u.shared {
        u.pool.store().change_feed().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no change feed; changes are read every {:?}", u.sync_interval);
            None
        })
    } else {
        None
    };
    let changed = async |feed: &Option<Arc<tokio::sync::Notify>>| match feed {
        Some(feed) => feed.notified().await,
        None => std::future::pending().await,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = tokio::time::interval(u.sync_interval);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        let wake = tokio::select! {
            _ = tick.tick() => Wake::Tick,
            _ = sync.tick() => Wake::Sync,
            () = changed(&feed) => Wake::Sync,
            () = u.pool.benched().notified() => Wake::Benched,
        };
        match wake {
            Wake::Sync => {
                u.sync().await;
                sync.reset();
            }
            Wake::Benched => {
                if let Err(e) = u.pool.flush_states().await {
                    tracing::error!(error = %e, "saving routing state failed");
                }
            }
            Wake::Tick => {
                u.housekeep(rounds).await;
                rounds = rounds.wrapping_add(1);
            }
        }
    }
}

impl Upkeep {
    /// Take in what changed in the store: the data key, accounts, keys, sessions, other instances'
    /// routing state.
    async fn sync(&mut self) {
        let round = crate::now_ms();
        let mut problem: Option<String> = self.follow_key().await.err();
        let (pool, keys, admin) = (&self.pool, &self.keys, &self.admin);
        if let Err(e) = pool.reload().await {
            tracing::error!(error = %e, "reloading accounts failed");
            problem.get_or_insert(format!("reloading accounts failed: {e}"));
        }
        if let Err(e) = keys.reload(pool.store().as_ref()).await {
            tracing::error!(error = %e, "reloading client keys failed");
            problem.get_or_insert(format!("reloading client keys failed: {e}"));
        }
        // Sessions ended by the CLI or another instance (log out everyone, a password change).
        if let Err(e) = admin.sessions.sync(pool.store().as_ref()).await {
            tracing::error!(error = %e, "reading the admin session epochs failed");
            problem.get_or_insert(format!("reading the admin session epochs failed: {e}"));
        }
        if problem.is_none() {
            // The time the round started: everything written before it is now in effect.
            admin.synced_at_ms.store(round, std::sync::atomic::Ordering::Relaxed);
        }
        // Serving goes on from memory either way; `/health` says which it is, and recovers by itself.
        *admin.store_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
        // What other instances on the same database saw (a 429 there benches the account here).
        if self.shared
            && let Err(e) = pool.share_states().await
        {
            tracing::warn!(error = %e, "reading other instances' routing state failed");
        }
    }

    /// Take up a key set rotated in the database, then say so in this instance's heartbeat at once (the
    /// rotation waits for every instance before it re-seals anything).
    async fn follow_key(&mut self) -> Result<(), String> {
        let Some(feed) = &mut self.key_feed else { return Ok(()) };
        let store = self.pool.store();
        let text = match crate::accounts::shared_keys::read(store.as_ref()).await {
            Ok(Some(text)) if text != feed.seen => text,
            Ok(_) => return Ok(()),
            Err(e) => return Err(format!("reading the data key failed: {e}")),
        };
        let keys = match crate::accounts::shared_keys::unwrap(text.clone(), &feed.passphrase).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::error!(error = %e, "cannot take up the rotated data key; sealing with the one held");
                return Err(e.to_string());
            }
        };
        let (version, versions) = (keys.current, keys.versions());
        let held = self.pool.registry().cipher().keys().versions();
        self.pool.registry().cipher().replace(keys);
        feed.seen = text;
        self.me.key_version = version;
        self.me.last_seen_ms = crate::now_ms();
        if held != versions {
            tracing::info!(version, ?versions, "took up the data key kept in the database");
        }
        if let Err(e) = store.heartbeat(&self.me).await {
            tracing::warn!(error = %e, "writing this instance's heartbeat failed");
        }
        Ok(())
    }

    /// Once a second: save routing state, take in shared spend; every 5 s a heartbeat, every minute the
    /// refresh sweep, every hour retention.
    async fn housekeep(&mut self, rounds: u64) {
        let (pool, keys) = (&self.pool, &self.keys);
        if let Err(e) = pool.flush_states().await {
            tracing::error!(error = %e, "saving routing state failed");
        }
        // What other instances spent against shared budgets (only on a shared database, and only when a
        // budget exists: the sums cost a query over today's logged requests).
        if self.shared
            && keys.any_budget()
            && let Err(e) = keys.spend.share(pool.store().as_ref(), crate::now_ms()).await
        {
            tracing::warn!(error = %e, "reading other instances' spend failed");
        }
        if rounds.is_multiple_of(5) {
            self.me.last_seen_ms = crate::now_ms();
            if let Err(e) = pool.store().heartbeat(&self.me).await {
                tracing::warn!(error = %e, "writing this instance's heartbeat failed");
            }
            // Per-key limits are split among the live instances: only a live instance's share counts.
            if self.shared
                && let Ok(instances) = pool.store().list_instances().await
            {
                let now = crate::now_ms();
                let mut live: Vec<&str> =
                    instances.iter().filter(|i| now - i.last_seen_ms < LIVE_MS).map(|i| i.id.as_str()).collect();
                live.sort_unstable();
                // Not yet listed (its first heartbeat failed): count itself in, last.
                let rank = live.iter().position(|id| *id == self.me.id).unwrap_or(live.len());
                let of = live.len().max(rank + 1);
                if keys.set_share(u64::try_from(rank).unwrap_or(0), u64::try_from(of).unwrap_or(1))
                    && let Err(e) = keys.reload(pool.store().as_ref()).await
                {
                    tracing::error!(error = %e, "reloading client keys for a new share failed");
                }
            }
        }
        if rounds.is_multiple_of(60) {
            pool.refresh_due().await;
        }
        if rounds.is_multiple_of(3600) {
            let before = crate::now_ms() - i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX / 2);
            match pool.store().delete_requests_before(before, false).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "request log: removed rows past retention"),
                Err(e) => tracing::warn!(error = %e, "request log retention failed"),
            }
            let before = crate::now_ms() - i64::try_from(self.payload_retention.as_millis()).unwrap_or(i64::MAX / 2);
            if let Err(e) = pool.store().delete_payloads_before(before, false).await {
                tracing::warn!(error = %e, "payload retention failed");
            }
            if let Err(e) = crate::access::admin::Sessions::purge_expired(pool.store().as_ref()).await {
                tracing::warn!(error = %e, "removing expired sessions failed");
            }
            // Instances gone for a day are forgotten.
            if let Err(e) = pool.store().forget_instances(crate::now_ms() - 86_400_000).await {
                tracing::warn!(error = %e, "forgetting old instances failed");
            }
        }
    }
}

/// Poll each OAuth account's usage (and its profile once) at most every `interval`, jittered, backing off
/// on 429. Runs apart from the proxy; a slow endpoint delays nothing but itself.
async fn poll_usage(pool: Arc<Pool>, interval: Duration, beta: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for account in pool.snapshot() {
            let now = crate::now_ms();
            let Some(token) = account.access_token() else { continue };
            if !account.usage_due(now) || account.usage_is_off() {
                continue;
            }
            if account.plan().is_none() {
                match pool.oauth().profile(&token, &beta).await {
                    Ok(profile) => {
                        if let Err(e) = pool.save_plan(&account, &profile.plan()).await {
                            tracing::warn!(account = %account.name, error = %e, "could not save plan");
                        }
                    }
                    Err(e) => tracing::debug!(account = %account.name, error = %e, "profile unavailable"),
                }
            }
            match pool.oauth().usage(&token, &beta).await {
                Ok(report) => {
                    account.take_usage(&report);
                    account.schedule_usage(interval, false);
                }
                // A token without the scope the endpoint needs will not get it by asking again.
                Err(crate::oauth::OAuthError::Rejected { status: 403, message }) => {
                    let why = if message.contains("user:profile") || message.contains("scope") {
                        "usage polling off: the token lacks the user:profile scope (log in again to grant it)"
                    } else {
                        "usage polling off: the usage endpoint refused this account (403)"
                    };
                    tracing::warn!(account = %account.name, "{why}");
                    account.usage_off(why.to_owned());
                }
                Err(e) => {
                    let backoff = matches!(e, crate::oauth::OAuthError::RateLimited { .. });
                    tracing::debug!(account = %account.name, error = %e, "usage poll failed");
                    account.schedule_usage(interval, backoff);
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
