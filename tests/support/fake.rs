//! A fake Anthropic upstream on 127.0.0.1:0: OAuth token endpoint (PKCE-checked code exchange, rotating
//! single-use refresh tokens), `/v1/messages` in JSON and SSE, `count_tokens`, `models`, Console
//! `create_api_key`, and scripted failures. Every request is recorded for assertions.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use sha2::Digest;
use tokio::sync::Semaphore;

/// The authorize page a browser opens: the user is taken as signed in and sent on to `redirect_uri` with a
/// code bound to the PKCE challenge, as the real one does after the user agrees.
async fn authorize_page(
    State(inner): State<Arc<Mutex<Inner>>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let (Some(challenge), Some(redirect), Some(state)) =
        (q.get("code_challenge"), q.get("redirect_uri"), q.get("state"))
    else {
        return (StatusCode::BAD_REQUEST, "missing code_challenge, redirect_uri or state").into_response();
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
    {
        return (StatusCode::BAD_REQUEST, "bad client_id or code_challenge_method").into_response();
    }
    let code = Fake { addr: "127.0.0.1:0".parse().unwrap(), inner }.authorize(challenge, redirect);
    let mut to = url::Url::parse(redirect).unwrap();
    to.query_pairs_mut().append_pair("code", &code).append_pair("state", state);
    (StatusCode::FOUND, [("location", to.to_string())]).into_response()
}

/// The manual-flow callback page: shows `CODE#STATE` for the user to copy.
async fn code_page(axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>) -> Response {
    let code = q.get("code").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    let html = format!(
        "<!doctype html><title>Authentication code</title><p>Paste this code into your application:</p><code id=code>{code}#{state}</code>"
    );
    ([("content-type", "text/html; charset=utf-8")], html).into_response()
}

/// A request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
}

/// A scripted answer for the next `/v1/messages` call.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answer with this status, JSON body and headers.
    Status { status: u16, body: serde_json::Value, headers: Vec<(String, String)> },
    /// Wait before answering normally.
    Delay(Duration),
    /// Stream two events, then drop the connection.
    BreakStream,
    /// Stream two events, then an SSE `error` event (overloaded), then end.
    SseError,
    /// Stream this text as one text delta per piece.
    Text(Vec<String>),
    /// Stream `tool_use` blocks (name, input) and stop for them, as a model calling tools does.
    ToolUse(Vec<(String, serde_json::Value)>),
}

impl Script {
    /// A 429 that rejects the account's 5-hour window until `reset` (epoch seconds).
    pub fn limited(reset: u64) -> Script {
        Script::Status {
            status: 429,
            body: serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":"limit reached"}}),
            headers: vec![
                ("anthropic-ratelimit-unified-status".into(), "rejected".into()),
                ("anthropic-ratelimit-unified-reset".into(), reset.to_string()),
                ("anthropic-ratelimit-unified-5h-status".into(), "rejected".into()),
                ("anthropic-ratelimit-unified-5h-reset".into(), reset.to_string()),
                ("anthropic-ratelimit-unified-representative-claim".into(), "five_hour".into()),
            ],
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[derive(Default)]
pub struct Inner {
    /// Issued codes: code → (challenge, redirect_uri).
    codes: HashMap<String, (String, String)>,
    pub valid_refresh: HashSet<String>,
    pub valid_access: HashSet<String>,
    pub api_keys: HashSet<String>,
    pub refresh_calls: usize,
    pub exchange_calls: usize,
    seq: usize,
    /// Seconds of life given to new access tokens.
    pub access_ttl: u64,
    /// Delay of every token-endpoint answer, to widen race windows.
    pub token_delay: Duration,
    /// Scripted token endpoint answers (status, body, retry-after).
    pub token_script: VecDeque<(u16, serde_json::Value)>,
    pub script: VecDeque<Script>,
    /// Scripted answers for one credential (API key or access token), used before `script`.
    pub script_for: HashMap<String, VecDeque<Script>>,
    /// 5-hour utilization reported in the headers of answers to one credential.
    pub utilization_for: HashMap<String, f64>,
    /// Calls to the usage endpoint, and answers to give it (429s) before the normal one.
    pub usage_calls: usize,
    /// Token requests received, counted as they arrive (before any delay), answered or not.
    pub token_requests_started: usize,
    pub usage_script: VecDeque<u16>,
    /// The `User-Agent` of each usage call.
    pub usage_agents: Vec<String>,
    pub profile_calls: usize,
    pub requests: Vec<Recorded>,
    /// When set, each SSE event after the first waits for a permit.
    pub sse_gate: Option<Arc<Semaphore>>,
    /// Streams whose body was dropped before it finished (client went away).
    pub streams_cancelled: usize,
    pub streams_finished: usize,
    /// Every token and key this fake ever handed out, to search for leaks.
    pub issued: Vec<String>,
    /// When each refresh rotated a token pair (the old refresh token died at that instant).
    pub rotated_at: Vec<std::time::Instant>,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub inner: Arc<Mutex<Inner>>,
}

pub const CLIENT_ID: &str = "fake-client-id";

impl Fake {
    pub async fn start() -> Fake {
        Self::start_with(None).await
    }

    /// A fake that speaks HTTPS with `tls`.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Fake {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Fake {
        let inner = Arc::new(Mutex::new(Inner { access_ttl: 3600, ..Inner::default() }));
        let app = Router::new()
            .route("/v1/oauth/token", post(token))
            .route("/api/oauth/claude_cli/create_api_key", post(create_api_key))
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/models", get(models))
            .route("/v1/models/{id}", get(models))
            .route("/api/oauth/usage", get(usage))
            .route("/api/oauth/profile", get(profile))
            .route("/oauth/authorize", get(authorize_page))
            .route("/console/oauth/authorize", get(authorize_page))
            .route("/oauth/code/callback", get(code_page))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        match tls {
            None => {
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                tokio::spawn(async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else { continue };
                        let (acceptor, app) = (acceptor.clone(), app.clone());
                        tokio::spawn(async move {
                            let Ok(stream) = acceptor.accept(tcp).await else { return };
                            let service = hyper_util::service::TowerToHyperService::new(app);
                            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            }
        }
        Fake { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// What the user's browser does at the authorize page: the server remembers the challenge and hands
    /// out a code.
    pub fn authorize(&self, challenge: &str, redirect_uri: &str) -> String {
        let mut inner = self.lock();
        inner.seq += 1;
        let code = format!("code-{}", inner.seq);
        inner.codes.insert(code.clone(), (challenge.to_owned(), redirect_uri.to_owned()));
        code
    }

    /// A valid refresh token the gateway can import.
    pub fn issue_refresh_token(&self) -> String {
        let mut inner = self.lock();
        inner.seq += 1;
        let rt = format!("sk-ant-ort01-fake-{}", inner.seq);
        inner.valid_refresh.insert(rt.clone());
        inner.issued.push(rt.clone());
        rt
    }

    /// A valid access token.
    pub fn issue_access_token(&self) -> String {
        let mut inner = self.lock();
        inner.seq += 1;
        let at = format!("sk-ant-oat01-fake-{}", inner.seq);
        inner.valid_access.insert(at.clone());
        inner.issued.push(at.clone());
        at
    }

    pub fn add_api_key(&self, key: &str) {
        self.lock().api_keys.insert(key.to_owned());
    }

    pub fn push(&self, script: Script) {
        self.lock().script.push_back(script);
    }

    /// Script the next answer to requests carrying `credential`.
    pub fn push_for(&self, credential: &str, script: Script) {
        self.lock().script_for.entry(credential.to_owned()).or_default().push_back(script);
    }

    /// How many `/v1/messages` requests carried `credential`.
    pub fn served_by(&self, credential: &str) -> usize {
        self.lock().requests.iter().filter(|r| credential_of(&r.headers).as_deref() == Some(credential)).count()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    pub fn last_request(&self) -> Recorded {
        self.lock().requests.last().cloned().expect("no request reached the fake upstream")
    }

    pub fn refresh_calls(&self) -> usize {
        self.lock().refresh_calls
    }
}

type Shared = Arc<Mutex<Inner>>;

fn issue_pair(inner: &mut Inner) -> serde_json::Value {
    inner.seq += 1;
    let n = inner.seq;
    let access = format!("sk-ant-oat01-fake-{n}");
    let refresh = format!("sk-ant-ort01-fake-{n}");
    inner.valid_access.insert(access.clone());
    inner.valid_refresh.insert(refresh.clone());
    inner.issued.extend([access.clone(), refresh.clone()]);
    serde_json::json!({
        "token_type": "Bearer",
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": inner.access_ttl,
        "scope": "user:inference user:profile",
        "organization": { "uuid": "org-uuid-1", "name": "Fake Org" },
        "account": { "uuid": "acct-uuid-1", "email_address": "user@example.com" },
    })
}

fn invalid_grant() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"error":"invalid_grant","error_description":"Invalid or expired token"})),
    )
        .into_response()
}

async fn token(State(inner): State<Shared>, body: Bytes) -> Response {
    let delay = {
        let mut inner = inner.lock().unwrap();
        inner.token_requests_started += 1;
        inner.token_delay
    };
    tokio::time::sleep(delay).await;
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "token requests must be JSON").into_response();
    };
    let mut inner = inner.lock().unwrap();
    let grant = req["grant_type"].as_str().unwrap_or("");
    if grant == "refresh_token" {
        inner.refresh_calls += 1;
    } else {
        inner.exchange_calls += 1;
    }
    if let Some((status, body)) = inner.token_script.pop_front() {
        let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
        if status == 429 {
            response.headers_mut().insert("retry-after", "120".parse().unwrap());
        }
        return response;
    }
    if req["client_id"] != CLIENT_ID {
        return (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error":"invalid_client"}))).into_response();
    }
    match grant {
        "authorization_code" => {
            let code = req["code"].as_str().unwrap_or("");
            let Some((challenge, redirect)) = inner.codes.remove(code) else {
                return invalid_grant();
            };
            let verifier = req["code_verifier"].as_str().unwrap_or("");
            let computed =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
            if computed != challenge
                || req["redirect_uri"].as_str() != Some(redirect.as_str())
                || req["state"].as_str().is_none()
            {
                return invalid_grant();
            }
            axum::Json(issue_pair(&mut inner)).into_response()
        }
        "refresh_token" => {
            let rt = req["refresh_token"].as_str().unwrap_or("");
            // Single use: the old token dies with this call.
            if !inner.valid_refresh.remove(rt) || req["scope"].as_str().is_none() {
                return invalid_grant();
            }
            inner.rotated_at.push(std::time::Instant::now());
            axum::Json(issue_pair(&mut inner)).into_response()
        }
        _ => {
            (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error":"unsupported_grant_type"}))).into_response()
        }
    }
}

/// The API key or bearer token a request carries.
pub fn credential_of(headers: &HeaderMap) -> Option<String> {
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned).or_else(|| bearer(headers))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_owned)
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            serde_json::json!({"type":"error","error":{"type":kind,"message":message},"request_id":"req_fake_err"}),
        ),
    )
        .into_response()
}

async fn create_api_key(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    let mut inner = inner.lock().unwrap();
    match bearer(&headers) {
        Some(t) if inner.valid_access.contains(&t) => {
            inner.seq += 1;
            let key = format!("sk-ant-api03-console-{}", inner.seq);
            inner.api_keys.insert(key.clone());
            inner.issued.push(key.clone());
            axum::Json(serde_json::json!({ "raw_key": key })).into_response()
        }
        _ => anthropic_error(401, "authentication_error", "invalid bearer token"),
    }
}

/// Record the request and check its credential; `Err` is the answer to give instead.
fn admit(inner: &Shared, method: Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Result<(), Response> {
    let mut inner = inner.lock().unwrap();
    inner.requests.push(Recorded {
        method: method.to_string(),
        path_and_query: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let ok = match (api_key, bearer(headers)) {
        (Some(k), None) => inner.api_keys.contains(k),
        (None, Some(t)) => {
            inner.valid_access.contains(&t)
                && headers
                    .get("anthropic-beta")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|b| b.split(',').any(|f| f == "oauth-2025-04-20"))
        }
        _ => false,
    };
    if ok { Ok(()) } else { Err(anthropic_error(401, "authentication_error", "invalid x-api-key")) }
}

fn rate_limit_headers(response: &mut Response, n: usize, utilization: Option<f64>) {
    let h = response.headers_mut();
    h.insert("request-id", format!("req_fake_{n}").parse().unwrap());
    h.insert("anthropic-ratelimit-unified-status", "allowed".parse().unwrap());
    let utilization = utilization.unwrap_or(0.25).to_string();
    h.insert("anthropic-ratelimit-unified-5h-utilization", utilization.parse().unwrap());
    h.insert("anthropic-ratelimit-unified-7d-utilization", "0.3".parse().unwrap());
    h.insert("anthropic-ratelimit-unified-reset", "1900000000".parse().unwrap());
    h.insert("set-cookie", "__cf_bm=account-cookie; path=/".parse().unwrap());
}

/// Counts a stream as finished or cancelled when it is dropped.
struct StreamGuard {
    inner: Shared,
    finished: bool,
}

impl StreamGuard {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().unwrap();
        if self.finished { inner.streams_finished += 1 } else { inner.streams_cancelled += 1 }
    }
}

pub const SSE_ERROR: &str =
    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

pub const SSE_EVENTS: [&str; 7] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_fake\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-fake\",\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

async fn messages(State(inner): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(denied) = admit(&inner, method, &uri, &headers, &body) {
        return denied;
    }
    let credential = credential_of(&headers).unwrap_or_default();
    let (script, n, gate, utilization) = {
        let mut i = inner.lock().unwrap();
        let own = i.script_for.get_mut(&credential).and_then(VecDeque::pop_front);
        let script = own.or_else(|| i.script.pop_front());
        (script, i.requests.len(), i.sse_gate.clone(), i.utilization_for.get(&credential).copied())
    };
    let mut break_stream = false;
    let mut sse_error = false;
    let mut events: Vec<Bytes> = SSE_EVENTS.iter().map(|e| Bytes::from_static(e.as_bytes())).collect();
    match script {
        Some(Script::Status { status, body, headers }) => {
            let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            for (k, v) in headers {
                response
                    .headers_mut()
                    .insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            return response;
        }
        Some(Script::Delay(d)) => tokio::time::sleep(d).await,
        Some(Script::BreakStream) => break_stream = true,
        Some(Script::SseError) => sse_error = true,
        Some(Script::ToolUse(calls)) => {
            let mut blocks = Vec::new();
            for (i, (name, input)) in calls.iter().enumerate() {
                let start = serde_json::json!({"type":"content_block_start","index":i,
                    "content_block":{"type":"tool_use","id":format!("toolu_fake_{n}_{i}"),"name":name,"input":{}}});
                let delta = serde_json::json!({"type":"content_block_delta","index":i,
                    "delta":{"type":"input_json_delta","partial_json":input.to_string()}});
                let stop = serde_json::json!({"type":"content_block_stop","index":i});
                blocks.push(Bytes::from(format!("event: content_block_start\ndata: {start}\n\n")));
                blocks.push(Bytes::from(format!("event: content_block_delta\ndata: {delta}\n\n")));
                blocks.push(Bytes::from(format!("event: content_block_stop\ndata: {stop}\n\n")));
            }
            let end = serde_json::json!({"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},
                "usage":{"output_tokens":5}});
            events = vec![events[0].clone()];
            events.extend(blocks);
            events.push(Bytes::from(format!("event: message_delta\ndata: {end}\n\n")));
            events.push(Bytes::from_static(SSE_EVENTS[6].as_bytes()));
        }
        Some(Script::Text(pieces)) => {
            let deltas = pieces.iter().map(|text| {
                let delta = serde_json::json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": text}});
                Bytes::from(format!("event: content_block_delta\ndata: {delta}\n\n"))
            });
            events.splice(3..4, deltas.collect::<Vec<_>>());
        }
        None => {}
    }
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if req["stream"] == true {
        let guard = StreamGuard { inner: inner.clone(), finished: false };
        let stream = futures_util::stream::unfold((0usize, guard), move |(i, mut guard)| {
            let gate = gate.clone();
            let events = events.clone();
            async move {
                if i >= events.len() {
                    guard.finish();
                    return None;
                }
                if break_stream && i == 2 {
                    guard.finished = true;
                    return Some((Err(std::io::Error::other("upstream broke")), (usize::MAX, guard)));
                }
                if sse_error && i == 2 {
                    guard.finished = true;
                    return Some((Ok(Bytes::from_static(SSE_ERROR.as_bytes())), (usize::MAX, guard)));
                }
                if i > 0 {
                    match &gate {
                        Some(g) => g.acquire().await.unwrap().forget(),
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Some((Ok::<_, std::io::Error>(events[i].clone()), (i + 1, guard)))
            }
        });
        let mut response = Response::new(Body::from_stream(stream));
        response.headers_mut().insert("content-type", "text/event-stream; charset=utf-8".parse().unwrap());
        response.headers_mut().insert("cache-control", "no-cache".parse().unwrap());
        rate_limit_headers(&mut response, n, utilization);
        return response;
    }
    let reply = serde_json::json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": req["model"],
        "content": [{"type":"text","text":"Hello"}], "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    });
    let mut response = axum::Json(reply).into_response();
    rate_limit_headers(&mut response, n, utilization);
    response
}

async fn count_tokens(
    State(inner): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(denied) = admit(&inner, method, &uri, &headers, &body) {
        return denied;
    }
    axum::Json(serde_json::json!({"input_tokens": 42})).into_response()
}

async fn models(State(inner): State<Shared>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(denied) = admit(&inner, method, &uri, &headers, &Bytes::new()) {
        return denied;
    }
    axum::Json(
        serde_json::json!({"data":[{"type":"model","id":"claude-fake","display_name":"Claude Fake"}],"has_more":false}),
    )
    .into_response()
}

fn oauth_bearer_ok(inner: &Inner, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|t| inner.valid_access.contains(&t))
        && headers.get("anthropic-beta").and_then(|v| v.to_str().ok()).is_some_and(|b| b.contains("oauth-2025-04-20"))
}

async fn usage(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    let mut inner = inner.lock().unwrap();
    inner.usage_calls += 1;
    if !oauth_bearer_ok(&inner, &headers) {
        return anthropic_error(401, "authentication_error", "bad token");
    }
    inner.usage_agents.push(headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned());
    if let Some(status) = inner.usage_script.pop_front() {
        return match status {
            403 => anthropic_error(403, "permission_error", "OAuth token does not meet scope requirement user:profile"),
            status => anthropic_error(status, "rate_limit_error", "slow down"),
        };
    }
    // The 2026 shape (limits[] and spend) beside the older fixed fields, as the endpoint answers.
    let body: serde_json::Value = serde_json::from_str(include_str!("../fixtures/usage-2026.json")).unwrap();
    axum::Json(body).into_response()
}

async fn profile(State(inner): State<Shared>, headers: HeaderMap) -> Response {
    let mut inner = inner.lock().unwrap();
    inner.profile_calls += 1;
    if !oauth_bearer_ok(&inner, &headers) {
        return anthropic_error(401, "authentication_error", "bad token");
    }
    axum::Json(serde_json::json!({
        "account": {"uuid": "acct-uuid-1", "email": "user@example.com", "has_claude_max": true, "has_claude_pro": false},
        "organization": {"uuid": "org-uuid-1", "name": "Fake Org", "organization_type": "claude_max", "rate_limit_tier": "default_claude_max_20x"},
    }))
    .into_response()
}
