//! The admin HTTP API under `/admin`: never open without a session, not even on loopback. Sessions come
//! from an admin or viewer key, the administrator password (plus TOTP when set), or the one-time URL
//! `serve` prints while no admin credential exists. Cookies are `HttpOnly; SameSite=Strict` (`Secure`
//! under TLS); every state-changing request needs the session's CSRF token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::access::admin::{
    LoginBrake, LoginMethod, PasswordCheck, Session, SessionOrigin, Sessions, check_password, redeem_login_link,
};
use crate::access::{ClientKeys, KeyCheck, NewKey, Permission, Role, audit, parse_expiry};
use crate::accounts::Pool;
use crate::error::ApiError;
use crate::store::AccountStatus;

const COOKIE: &str = "sy_session";

/// Largest body the admin API reads.
pub const ADMIN_BODY_LIMIT: usize = 16 * 1024;

/// Password checks (Argon2, about 19 MiB and tens of milliseconds each) running at once, at most; more
/// are turned away with 503 rather than queued.
pub const PASSWORD_CHECKS: usize = 2;

/// What the admin API needs.
#[derive(Debug)]
pub struct Admin {
    pub pool: Arc<Pool>,
    pub keys: Arc<ClientKeys>,
    pub sessions: Sessions,
    pub brake: LoginBrake,
    /// Permits for password checks ([`PASSWORD_CHECKS`]).
    pub password_checks: Arc<tokio::sync::Semaphore>,
    pub tls: bool,
    /// How long an admin request's body may take to arrive (at most [`ADMIN_BODY_TIMEOUT`]).
    pub body_timeout: std::time::Duration,
    /// When the upkeep last read accounts, keys and session epochs from the store (epoch ms, the start
    /// of that round); shown by `/health`.
    pub synced_at_ms: std::sync::atomic::AtomicI64,
    /// Why the last upkeep round could not read the store, while it cannot (`/health` says `degraded`).
    pub store_problem: std::sync::Mutex<Option<String>>,
}

type Shared = Arc<Admin>;

pub fn routes(admin: Shared) -> Router {
    let open = Router::new()
        .route("/admin", get(to_dashboard))
        .route("/admin/", get(to_dashboard))
        .route("/admin/login", get(one_time_login))
        .route("/admin/api/login", post(login))
        .route_layer(axum::middleware::from_fn_with_state(admin.clone(), body_in_time));
    Router::new()
        .route("/admin/api/logout", post(logout))
        .route("/admin/api/logout-all", post(logout_all))
        .route("/admin/api/session", get(whoami))
        .route("/admin/api/accounts", get(accounts).post(add_api_key_account))
        .route("/admin/api/accounts/{name}", delete(remove_account))
        .route("/admin/api/accounts/{name}/set", post(set_account))
        .route("/admin/api/accounts/{name}/{action}", post(account_action))
        .route("/admin/api/oauth/start", post(oauth_start))
        .route("/admin/api/oauth/finish", post(oauth_finish))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/series", get(series))
        .route("/admin/api/requests/{id}", get(one_request))
        .route("/admin/api/keys", get(list_keys).post(create_key))
        .route("/admin/api/keys/{name}/revoke", post(revoke_key))
        .route("/admin/api/audit", get(audit_log))
        .route("/admin/api/instances", get(instances))
        .route("/admin/api/requests", get(requests))
        .route("/admin/api/stats", get(stats))
        .route_layer(axum::middleware::from_fn_with_state(admin.clone(), body_in_time))
        // No session, no body read: checked before any extractor runs (and before the body is awaited).
        .route_layer(axum::middleware::from_fn_with_state(admin.clone(), session_first))
        .merge(open)
        // Admin bodies are small JSON: a few KiB, never the proxy's limit, so an unauthenticated caller
        // cannot make the server hold large bodies (the extractors read at most this much).
        .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        .with_state(admin)
}

/// How long an admin request's body may take to arrive at most (`SWITCHYARD_BODY_TIMEOUT_SECS` when
/// shorter): 16 KiB in 10 s is slower than any real client, and a body trickling in one byte at a time
/// would otherwise hold its connection indefinitely.
pub const ADMIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Read the (small, capped) body within the admin body timeout before any handler sees the request.
async fn body_in_time(
    State(admin): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, ADMIN_BODY_LIMIT);
    let bytes = match tokio::time::timeout(admin.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            let message = format!("admin request bodies are at most {ADMIN_BODY_LIMIT} bytes");
            return ApiError::too_large(message).into_response();
        }
        Err(_) => {
            let message = format!("the request body did not arrive within {}s", admin.body_timeout.as_secs());
            return ApiError::request_timeout(message).into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// The session cookie's value; an error when there are several (another program on this host can set a
/// cookie for our name: browsers do not isolate cookies by port, so neither may win).
pub(crate) fn cookie_value(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned());
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::unauthorized(
            "several sy_session cookies were sent (another program on this host may have set one); clear this \
             site's cookies and log in again",
        ));
    }
    Ok(first)
}

fn session_cookie(admin: &Admin, id: &str) -> HeaderValue {
    let secure = if admin.tls { "; Secure" } else { "" };
    let value =
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", admin.sessions.ttl_secs());
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The session of a request, with the permission it needs. The cookie alone is not enough: every call
/// also carries the session secret in `x-csrf-token`, which only the login's answer hands out and which
/// the dashboard keeps in its origin's storage. Browsers send the cookie to every port of this host; the
/// origin (port included) keeps the secret from pages and programs on the others.
fn authorize(admin: &Admin, headers: &HeaderMap, permission: Permission) -> Result<Session, ApiError> {
    let session = cookie_value(headers)?
        .and_then(|id| admin.sessions.get(&id, &admin.keys))
        .ok_or_else(|| ApiError::unauthorized("log in first (POST /admin/api/login)"))?;
    let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !session.secret_matches(given) {
        return Err(ApiError::unauthorized(
            "missing or wrong x-csrf-token: send the session secret from the login's answer with every call",
        ));
    }
    if !session.role.allows(permission) {
        return Err(ApiError::forbidden(format!("role {} may not do this", session.role.as_str())));
    }
    Ok(session)
}

/// Whether a request carries a key or an admin session with `permission` (for routes outside `/admin`).
pub fn allows(admin: &Admin, headers: &HeaderMap, permission: Permission) -> bool {
    if authorize(admin, headers, permission).is_ok() {
        return true;
    }
    let key = super::guard::presented_key(headers);
    matches!(admin.keys.check(key, crate::now_ms()), KeyCheck::Valid(k) if k.role.allows(permission))
}

/// Refuse a call without a valid session before its body is read; each handler then checks its own
/// permission.
async fn session_first(
    State(admin): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A session started on another instance on the same store: take it into memory first.
    if let Ok(Some(id)) = cookie_value(request.headers()) {
        load_session(&admin, &id).await;
    }
    match authorize(&admin, request.headers(), Permission::DashboardView) {
        // A session whose role lacks dashboard.view does not exist (viewer is the least), so any other
        // error is about the session itself.
        Err(e) if e.status == StatusCode::UNAUTHORIZED => e.into_response(),
        _ => next.run(request).await,
    }
}

/// Take the session `id` names into memory from the store, if another instance started it.
pub async fn load_session(admin: &Admin, id: &str) {
    if let Err(e) = admin.sessions.load(admin.pool.store().as_ref(), id).await {
        tracing::warn!(error = %e, "could not read sessions from the store");
    }
}

/// A new session: the cookie, and the session secret in the answer (the only place it is handed out).
async fn logged_in(admin: &Admin, actor: String, role: Role, origin: SessionOrigin) -> (Response, String) {
    let (id, secret, session) = admin.sessions.create(actor.clone(), role, origin);
    // In the store too, so that every instance on it accepts the session (the one that created it does
    // even if this write fails).
    if let Err(e) = admin.sessions.persist(admin.pool.store().as_ref(), &id, &session).await {
        tracing::warn!(error = %e, "could not share the new session with other instances");
    }
    let body = serde_json::json!({ "actor": actor, "role": role.as_str(), "csrf_token": secret });
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(header::SET_COOKIE, session_cookie(admin, &id));
    (response, secret)
}

#[derive(Deserialize)]
struct LoginBody {
    key: Option<String>,
    password: Option<String>,
    totp: Option<String>,
}

async fn login(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<axum::Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let ip = peer.ip();
    let Ok(axum::Json(body)) = body else {
        return ApiError::invalid_request("send JSON: {\"key\": …} or {\"password\": …, \"totp\": …}").into_response();
    };
    let store = admin.pool.store().clone();
    let outcome: Result<(String, Role, SessionOrigin), ApiError> = if let Some(key) = body.key.as_deref() {
        // A key is checked first and a valid one always gets in: keys cannot be guessed, so the brake only
        // bounds how much noise wrong ones make (past it they are not audited either).
        match admin.keys.check_or_lookup(store.as_ref(), Some(key), crate::now_ms()).await {
            KeyCheck::Valid(k) if k.role.allows(Permission::DashboardView) => {
                Ok((format!("key:{}", k.name), k.role, SessionOrigin::Key { id: k.id.clone(), hash: k.hash }))
            }
            KeyCheck::Valid(k) => {
                Err(ApiError::forbidden(format!("key {:?} (role {}) may not log in", k.name, k.role.as_str())))
            }
            _ => match admin.brake.take(ip, LoginMethod::Key) {
                Ok(()) => Err(ApiError::unauthorized("invalid, revoked or expired key")),
                Err(wait) => return too_many_logins(wait),
            },
        }
    } else if let Some(password) = body.password.as_deref() {
        // Counted before it is checked, so a concurrent burst gets no more checks than the brake allows.
        if let Err(wait) = admin.brake.take(ip, LoginMethod::Password) {
            return too_many_logins(wait);
        }
        let Ok(_permit) = admin.password_checks.clone().try_acquire_owned() else {
            admin.brake.give_back(ip, LoginMethod::Password);
            return ApiError::busy("too many password checks are running; try again in a second", 1).into_response();
        };
        let cipher = admin.pool.registry().cipher().clone();
        match check_password(store.as_ref(), &cipher, password, body.totp.as_deref()).await {
            Ok(PasswordCheck::Ok) => {
                admin.brake.give_back(ip, LoginMethod::Password);
                Ok(("password:admin".to_owned(), Role::Admin, SessionOrigin::Password))
            }
            // One answer for every failure: a distinct one would confirm the password without the second
            // factor.
            Ok(PasswordCheck::NeedsTotp | PasswordCheck::Wrong | PasswordCheck::NoPassword) => {
                Err(ApiError::unauthorized("wrong password, or a missing, wrong or already used TOTP code"))
            }
            // The caller is not logged in yet: the cause goes to the log, not to them.
            Err(e) => {
                admin.brake.give_back(ip, LoginMethod::Password);
                tracing::error!(error = %e, "password check failed");
                Err(ApiError::internal("the login could not be checked; see the server's log"))
            }
        }
    } else {
        Err(ApiError::invalid_request("give a key or a password"))
    };
    match outcome {
        Ok((actor, role, origin)) => {
            audit(store.as_ref(), &actor, Some(ip), "admin.login", "session", "ok", role.as_str()).await;
            logged_in(&admin, actor, role, origin).await.0
        }
        Err(error) => {
            audit(store.as_ref(), "unknown", Some(ip), "admin.login", "session", "denied", &error.message).await;
            error.into_response()
        }
    }
}

fn too_many_logins(wait: u64) -> Response {
    ApiError::client_limited("too many failed logins from this address; wait and try again", wait).into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn one_time_login(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let ip = peer.ip();
    let store = admin.pool.store().clone();
    let redeemed = match &query {
        Ok(Query(q)) => match redeem_login_link(store.as_ref(), &q.token).await {
            Ok(redeemed) => redeemed,
            Err(e) => {
                tracing::error!(error = %e, "cannot check the login link");
                return ApiError::internal("the login link could not be checked; see the server's log").into_response();
            }
        },
        Err(_) => false,
    };
    if !redeemed && let Err(wait) = admin.brake.take(ip, LoginMethod::Link) {
        return too_many_logins(wait);
    }
    match query {
        Ok(_) if redeemed => {
            audit(store.as_ref(), "dashboard-link", Some(ip), "admin.login", "session", "ok", "admin").await;
            let (mut response, secret) =
                logged_in(&admin, "dashboard-link".to_owned(), Role::Admin, SessionOrigin::Link).await;
            // The secret rides in the fragment, which the browser keeps to itself: the page moves it to its
            // origin's storage and out of the address bar.
            *response.status_mut() = StatusCode::SEE_OTHER;
            *response.body_mut() = axum::body::Body::empty();
            response.headers_mut().remove(header::CONTENT_TYPE);
            if let Ok(location) = HeaderValue::from_str(&format!("/dashboard#session={secret}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        _ => {
            audit(store.as_ref(), "unknown", Some(ip), "admin.login", "dashboard-link", "denied", "").await;
            // A person followed this link in a browser: a page that says what to do, not JSON.
            (StatusCode::UNAUTHORIZED, axum::response::Html(super::dashboard::LINK_USED)).into_response()
        }
    }
}

/// End every admin session (this one too), on every server using this store.
async fn logout_all(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::KeysManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let store = admin.pool.store();
    let result = crate::access::admin::end_all_sessions(store.as_ref()).await;
    let synced = match result {
        Ok(()) => admin.sessions.sync(store.as_ref()).await,
        Err(e) => Err(e),
    };
    record(&admin, &session, peer.ip(), "admin.logout-all", "sessions", synced.is_ok()).await;
    match synced {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn logout(State(admin): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::DashboardView) {
        return e.into_response();
    }
    if let Ok(Some(id)) = cookie_value(&headers)
        && let Err(e) = admin.sessions.forget(admin.pool.store().as_ref(), &id).await
    {
        tracing::warn!(error = %e, "could not end the session in the store");
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let secure = if admin.tls { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn whoami(State(admin): State<Shared>, headers: HeaderMap) -> Response {
    match authorize(&admin, &headers, Permission::DashboardView) {
        Ok(s) => axum::Json(serde_json::json!({
            "actor": s.actor, "role": s.role.as_str(), "expires_at_ms": s.expires_at_ms,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// The old landing page: the dashboard replaced it.
async fn to_dashboard() -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response()
}

/// The session a request's cookie names, if it has `permission`: for the dashboard's page shell only,
/// which holds no data and redirects to the login page rather than fail (every call the shell makes needs
/// the session secret too).
pub fn session_for(admin: &Admin, headers: &HeaderMap, permission: Permission) -> Option<Session> {
    cookie_value(headers)
        .ok()
        .flatten()
        .and_then(|id| admin.sessions.get(&id, &admin.keys))
        .filter(|s| s.role.allows(permission))
}

async fn accounts(State(admin): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::DashboardView) {
        return e.into_response();
    }
    match admin.pool.registry().views().await {
        Ok(views) => axum::Json(views).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct AddApiKey {
    name: String,
    api_key: secrecy::SecretString,
    /// Save a key that does not look like an Anthropic API key.
    #[serde(default)]
    force: bool,
    #[serde(default)]
    replace: bool,
}

/// Add an API-key account (as `accounts add`); the key is sealed at once and never answered back.
async fn add_api_key_account(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<axum::Json<AddApiKey>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::AccountsManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let Ok(axum::Json(body)) = body else {
        return ApiError::invalid_request("send JSON: {\"name\": …, \"api_key\": \"sk-ant-…\"}").into_response();
    };
    let key = secrecy::SecretString::from(body.api_key.expose_secret().trim().to_owned());
    if !body.force && !crate::accounts::looks_like_api_key(&key) {
        return ApiError::invalid_request(
            "this does not look like an Anthropic API key (they start with sk-ant-); check what was pasted, or send \
             \"force\": true",
        )
        .into_response();
    }
    let result = admin.pool.registry().add_api_key(&body.name, &key, body.replace).await;
    record(&admin, &session, peer.ip(), "accounts.add", &body.name, result.is_ok()).await;
    match result {
        Ok(()) => {
            accounts_changed(&admin).await;
            (StatusCode::CREATED, axum::Json(serde_json::json!({ "name": body.name, "kind": "api_key" })))
                .into_response()
        }
        Err(crate::accounts::AccountError::Invalid(message)) => ApiError::invalid_request(message).into_response(),
        Err(crate::accounts::AccountError::Store(e @ crate::store::StoreError::Duplicate { .. })) => {
            ApiError::invalid_request(e.to_string()).into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn account_action(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::AccountsManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let status = match action.as_str() {
        "pause" => AccountStatus::Paused,
        "resume" => AccountStatus::Active,
        _ => return ApiError::not_found(format!("no account action {action:?}")).into_response(),
    };
    let result = admin.pool.registry().set_status_of(&name, status).await;
    record(&admin, &session, peer.ip(), &format!("accounts.{action}"), &name, result.is_ok()).await;
    answer_account_change(&admin, &name, result, serde_json::json!({ "name": name, "status": status.as_str() })).await
}

/// Answer an account change; a change made is applied to the router at once rather than at the next reload.
async fn answer_account_change(
    admin: &Admin,
    name: &str,
    result: Result<(), crate::accounts::AccountError>,
    ok: serde_json::Value,
) -> Response {
    match result {
        Ok(()) => {
            accounts_changed(admin).await;
            axum::Json(ok).into_response()
        }
        Err(crate::accounts::AccountError::NotFound(_)) => {
            ApiError::not_found(format!("no account named {name:?}")).into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct Routing {
    priority: Option<i64>,
    weight: Option<i64>,
}

/// Set an account's priority and/or weight (`accounts.manage`).
async fn set_account(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<axum::Json<Routing>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::AccountsManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let Ok(axum::Json(body)) = body else {
        return ApiError::invalid_request("send JSON: {\"priority\": N, \"weight\": W}").into_response();
    };
    if body.priority.is_none() && body.weight.is_none() {
        return ApiError::invalid_request("give priority, weight or both").into_response();
    }
    if body.weight.is_some_and(|w| w < 1) {
        return ApiError::invalid_request("weight must be 1 or more").into_response();
    }
    let result = admin.pool.registry().set_routing(&name, body.priority, body.weight).await;
    let detail = serde_json::json!({ "name": name, "priority": body.priority, "weight": body.weight });
    record(&admin, &session, peer.ip(), "accounts.set", &name, result.is_ok()).await;
    answer_account_change(&admin, &name, result, detail).await
}

/// Remove an account and its tokens (`accounts.manage`).
async fn remove_account(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::AccountsManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let result = admin.pool.registry().remove(&name).await;
    record(&admin, &session, peer.ip(), "accounts.remove", &name, result.is_ok()).await;
    answer_account_change(&admin, &name, result, serde_json::json!({ "name": name, "removed": true })).await
}

#[derive(Deserialize, Default)]
struct OAuthStart {
    account: Option<String>,
    #[serde(default)]
    console: bool,
}

/// Start adding an account through OAuth: the authorize URL to open; the page shown after signing in
/// gives a `CODE#STATE` to paste into `/admin/api/oauth/finish` within 10 minutes (`accounts.manage`).
async fn oauth_start(
    State(admin): State<Shared>,
    headers: HeaderMap,
    body: Result<axum::Json<OAuthStart>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::AccountsManage) {
        return e.into_response();
    }
    let Ok(axum::Json(body)) = body else {
        return ApiError::invalid_request("send JSON: {\"account\": NAME, \"console\": false}").into_response();
    };
    let account = body.account.as_deref().map(str::trim).filter(|a| !a.is_empty());
    match crate::accounts::login::begin(admin.pool.registry(), admin.pool.oauth(), body.console, account).await {
        Ok(started) => axum::Json(started).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct OAuthFinish {
    /// `CODE#STATE` as the authorize page shows it.
    code: String,
    account: Option<String>,
}

/// Finish an OAuth login started with `/admin/api/oauth/start`: exchange the code, save the account.
async fn oauth_finish(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<axum::Json<OAuthFinish>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::AccountsManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let Ok(axum::Json(body)) = body else {
        return ApiError::invalid_request("send JSON: {\"code\": \"CODE#STATE\"}").into_response();
    };
    let (code, state) = match crate::oauth::split_pasted(&body.code) {
        Ok(pair) => pair,
        Err(e) => return ApiError::invalid_request(e.to_string()).into_response(),
    };
    let registry = admin.pool.registry();
    let account = body.account.filter(|a| !a.trim().is_empty());
    let result = crate::accounts::login::finish_pending(registry, admin.pool.oauth(), &code, &state, account).await;
    if let Err(e @ crate::accounts::login::LoginError::NoPending) = &result {
        return ApiError::invalid_request(e.to_string()).into_response();
    }
    let target = result.as_ref().map_or("-", |l| l.name.as_str()).to_owned();
    record(&admin, &session, peer.ip(), "auth.login", &target, result.is_ok()).await;
    match result {
        Ok(saved) => {
            accounts_changed(&admin).await;
            (StatusCode::CREATED, axum::Json(saved)).into_response()
        }
        // A refused code is the caller's to fix; an unreachable or failing token endpoint may pass.
        Err(crate::accounts::login::LoginError::OAuth(e)) if e.retryable() => {
            ApiError::bad_gateway(format!("the login could not be finished: {e}")).into_response()
        }
        Err(crate::accounts::login::LoginError::OAuth(e)) => {
            ApiError::invalid_request(format!("the login was refused: {e}")).into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn record(admin: &Admin, session: &Session, ip: IpAddr, action: &str, target: &str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    audit(admin.pool.store().as_ref(), &session.actor, Some(ip), action, target, outcome, "").await;
}

async fn list_keys(State(admin): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::KeysManage) {
        return e.into_response();
    }
    match crate::access::key_listing(admin.pool.store().as_ref(), crate::now_ms()).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// An account changed, added or removed here takes effect in routing at once, not at the next periodic
/// reload.
async fn accounts_changed(admin: &Admin) {
    if let Err(e) = admin.pool.reload().await {
        tracing::warn!(error = %e, "accounts changed; reloading the pool failed (the next reload retries)");
    }
}

/// A key made or revoked here takes effect at once, not at the next periodic reload.
async fn keys_changed(admin: &Admin) {
    if let Err(e) = admin.keys.reload(admin.pool.store().as_ref()).await {
        tracing::warn!(error = %e, "keys changed; reloading them failed (the next reload retries)");
    }
}

#[derive(Deserialize)]
struct CreateKey {
    name: String,
    role: Option<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    concurrency: Option<i64>,
    accounts: Option<Vec<String>>,
    expires: Option<String>,
    budget_usd_day: Option<f64>,
    budget_usd_month: Option<f64>,
    budget_tokens_day: Option<i64>,
}

async fn create_key(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<axum::Json<CreateKey>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::KeysManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let Ok(axum::Json(body)) = body else {
        return ApiError::invalid_request("send JSON: {\"name\": …, \"role\": …}").into_response();
    };
    let role: Role = match body.role.as_deref().unwrap_or("user").parse() {
        Ok(r) => r,
        Err(e) => return ApiError::invalid_request(e).into_response(),
    };
    let expires_at_ms = match body.expires.as_deref().map(|e| parse_expiry(e, crate::now_ms())).transpose() {
        Ok(e) => e,
        Err(e) => return ApiError::invalid_request(e).into_response(),
    };
    let new = NewKey {
        name: body.name.clone(),
        role: Some(role),
        rpm: body.rpm,
        tpm: body.tpm,
        concurrency: body.concurrency,
        accounts: body.accounts,
        expires_at_ms,
        budgets: crate::store::Budgets {
            usd_day: body.budget_usd_day,
            usd_month: body.budget_usd_month,
            tokens_day: body.budget_tokens_day,
        },
    };
    let result = new.create(admin.pool.store().as_ref()).await;
    record(&admin, &session, peer.ip(), "keys.create", &body.name, result.is_ok()).await;
    keys_changed(&admin).await;
    match result {
        Ok(key) => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({ "name": body.name, "role": role.as_str(), "key": key.expose_secret() })),
        )
            .into_response(),
        Err(crate::access::NewKeyError::Invalid(message)) => ApiError::invalid_request(message).into_response(),
        Err(crate::access::NewKeyError::Store(crate::store::StoreError::Duplicate { .. })) => {
            ApiError::invalid_request(format!("a key named {:?} exists", body.name)).into_response()
        }
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn revoke_key(
    State(admin): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let session = match authorize(&admin, &headers, Permission::KeysManage) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let result = admin.pool.store().revoke_client_key(&name, crate::now_ms()).await;
    record(&admin, &session, peer.ip(), "keys.revoke", &name, matches!(result, Ok(true))).await;
    keys_changed(&admin).await;
    match result {
        Ok(true) => axum::Json(serde_json::json!({ "name": name, "revoked": true })).into_response(),
        Ok(false) => ApiError::not_found(format!("no active key named {name:?}")).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct RequestQuery {
    since: Option<String>,
    /// A window in epoch ms instead of `since`: from (inclusive) and to (exclusive).
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    account: Option<String>,
    model: Option<String>,
    status: Option<i64>,
    key: Option<String>,
    /// Id of the last request of the previous page: the page starts after it.
    before: Option<String>,
    limit: Option<i64>,
    by: Option<String>,
}

fn since_ms(text: Option<&str>, default: &str) -> Result<i64, ApiError> {
    crate::since_ms(text.unwrap_or(default)).map_err(|e| ApiError::invalid_request(format!("bad since: {e}")))
}

/// The request log, newest first, filtered and paged (`logs.view`).
async fn requests(
    State(admin): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<RequestQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::LogsView) {
        return e.into_response();
    }
    let Ok(Query(q)) = query else {
        return ApiError::invalid_request("bad query: status and limit are numbers").into_response();
    };
    let since = match (q.from_ms, since_ms(q.since.as_deref(), "1h")) {
        (Some(from), _) => from,
        (None, Ok(s)) => s,
        (None, Err(e)) => return e.into_response(),
    };
    let store = admin.pool.store();
    let before = match q.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(id) => match store.get_request(id).await {
            Ok(Some(row)) => Some((row.at_ms, row.id)),
            Ok(None) => return ApiError::invalid_request(format!("no request with id {id:?}")).into_response(),
            Err(e) => return ApiError::internal(e.to_string()).into_response(),
        },
    };
    let blank = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = crate::store::RequestFilter {
        since_ms: since,
        until_ms: q.to_ms,
        before,
        account: blank(q.account),
        model: blank(q.model),
        status: q.status,
        client_key: blank(q.key),
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    match store.find_requests(&filter).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// One request with its details and its payload when one was kept (`logs.view`).
async fn one_request(State(admin): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::LogsView) {
        return e.into_response();
    }
    let registry = admin.pool.registry();
    match crate::ledger::request_details(registry.store().as_ref(), registry.cipher(), &id).await {
        Ok(Some(details)) => axum::Json(details).into_response(),
        Ok(None) => ApiError::not_found(format!("no request with id {id:?}")).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct SeriesQuery {
    range: Option<String>,
}

/// Requests, errors, tokens and cost per bucket over `range` (`1h` in minutes, `24h` in 15 minutes, `7d`
/// in hours) (`dashboard.view`).
async fn series(State(admin): State<Shared>, headers: HeaderMap, Query(q): Query<SeriesQuery>) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::DashboardView) {
        return e.into_response();
    }
    let (span_ms, bucket_ms) = match q.range.as_deref().unwrap_or("1h") {
        "1h" => (3_600_000, 60_000),
        "24h" => (86_400_000, 900_000),
        "7d" => (7 * 86_400_000, 3_600_000),
        other => return ApiError::invalid_request(format!("range {other:?}: use 1h, 24h or 7d")).into_response(),
    };
    let now = crate::now_ms();
    // Whole buckets only, so the first bar is not a sliver.
    let since = (now - span_ms) / bucket_ms * bucket_ms + bucket_ms;
    match admin.pool.store().request_series(since, bucket_ms).await {
        Ok(points) => axum::Json(serde_json::json!({
            "range": q.range.as_deref().unwrap_or("1h"), "bucket_ms": bucket_ms, "since_ms": since, "now_ms": now,
            "points": points,
        }))
        .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// Accounts by state and what is happening now (`dashboard.view`).
async fn overview(State(admin): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::DashboardView) {
        return e.into_response();
    }
    let views = match admin.pool.registry().views().await {
        Ok(v) => v,
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    let count = |status: &str| views.iter().filter(|v| v.status == status).count();
    axum::Json(serde_json::json!({
        "accounts": {
            "total": views.len(), "available": count("active"), "rate_limited": count("rate-limited"),
            "paused": count("paused"), "needs_login": count("needs-login"),
        },
        "open_streams": crate::metrics::open_streams_now(),
        "now_ms": crate::now_ms(),
    }))
    .into_response()
}

/// Requests, tokens, cost, error rate and latency grouped by `by` (`dashboard.view`).
async fn stats(State(admin): State<Shared>, headers: HeaderMap, Query(q): Query<RequestQuery>) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::DashboardView) {
        return e.into_response();
    }
    let since = match since_ms(q.since.as_deref(), "24h") {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match crate::ledger::stats(admin.pool.store().as_ref(), since, q.by.as_deref().unwrap_or("all")).await {
        Ok(groups) => axum::Json(groups).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct Since {
    since: Option<String>,
}

async fn audit_log(State(admin): State<Shared>, headers: HeaderMap, Query(q): Query<Since>) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::LogsView) {
        return e.into_response();
    }
    let since = match since_ms(q.since.as_deref(), "1d") {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match admin.pool.store().list_audit(since).await {
        Ok(entries) => axum::Json(entries).into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The instances serving from this store, from their heartbeats, most recently seen first
/// (`dashboard.view`): each with `live` (a heartbeat in the last 15 s) and `this` (the one answering).
async fn instances(State(admin): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&admin, &headers, Permission::DashboardView) {
        return e.into_response();
    }
    let listed = match admin.pool.store().list_instances().await {
        Ok(listed) => listed,
        Err(e) => return ApiError::internal(e.to_string()).into_response(),
    };
    let now = crate::now_ms();
    let me = admin.pool.instance_name();
    let rows: Vec<serde_json::Value> = listed
        .iter()
        .map(|i| {
            let mut row = serde_json::to_value(i).unwrap_or_default();
            row["live"] = (now - i.last_seen_ms < super::LIVE_MS).into();
            row["this"] = (i.id == me).into();
            row
        })
        .collect();
    axum::Json(serde_json::json!({ "instances": rows, "now_ms": now })).into_response()
}

/// Every admin API body and query, read from hostile bytes as the handlers read them (the fuzz target's
/// entry): JSON bodies with serde_json, queries as axum's `Query` extractor parses them.
pub(crate) fn read_any_input(data: &[u8]) {
    let _ = serde_json::from_slice::<LoginBody>(data);
    let _ = serde_json::from_slice::<AddApiKey>(data);
    let _ = serde_json::from_slice::<Routing>(data);
    let _ = serde_json::from_slice::<OAuthStart>(data);
    let _ = serde_json::from_slice::<OAuthFinish>(data);
    let _ = serde_json::from_slice::<CreateKey>(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(uri) = format!("/admin/api/x?{text}").parse::<axum::http::Uri>() else { return };
    let _ = Query::<TokenQuery>::try_from_uri(&uri);
    let _ = Query::<RequestQuery>::try_from_uri(&uri);
    let _ = Query::<SeriesQuery>::try_from_uri(&uri);
    let _ = Query::<Since>::try_from_uri(&uri);
}
