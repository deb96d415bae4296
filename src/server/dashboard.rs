//! The web dashboard at `/dashboard`: a page shell and its script and styles, embedded in the binary (no
//! CDN, works offline). Every number and action on it goes through the JSON admin API under `/admin/api`,
//! so what the dashboard does a script can do too. Without a session the shell redirects to the login page.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::admin::{Admin, session_for};
use crate::access::Permission;

const INDEX: &str = include_str!("dashboard/index.html");
const LOGIN: &str = include_str!("dashboard/login.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const LOGIN_JS: &str = include_str!("dashboard/login.js");
const CSS: &str = include_str!("dashboard/app.css");
const ICON: &str = include_str!("dashboard/icon.svg");
/// What a used or expired login link opens.
pub(super) const LINK_USED: &str = include_str!("dashboard/link_used.html");

pub fn routes(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/dashboard", get(shell))
        .route("/dashboard/", get(shell))
        .route("/dashboard/login", get(|| async { asset(LOGIN, "text/html; charset=utf-8") }))
        .route("/dashboard/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/dashboard/login.js", get(|| async { asset(LOGIN_JS, "text/javascript; charset=utf-8") }))
        .route("/dashboard/app.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .route("/dashboard/icon.svg", get(|| async { asset(ICON, "image/svg+xml") }))
        .with_state(admin)
}

/// The page shell for a session that may view the dashboard; the login page for anyone else.
async fn shell(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(id) = super::admin::cookie_value(&headers).ok().flatten() {
        super::admin::load_session(&admin, &id).await;
    }
    if session_for(&admin, &headers, Permission::DashboardView).is_none() {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard/login")]).into_response();
    }
    asset(INDEX, "text/html; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small, and a new binary may bring new assets: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
