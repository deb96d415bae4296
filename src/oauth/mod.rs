//! OAuth 2.0 for Claude accounts: PKCE, the authorize URL, code exchange, refresh and the Console
//! `create_api_key` call. A leaf: it speaks HTTP to the token endpoint and knows nothing of storage.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

/// Where and as whom to speak OAuth. Every value is configurable (see `config`).
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub client_id: String,
    /// Claude Pro/Max authorize page.
    pub authorize_url: Url,
    /// Console authorize page (the login creates an API key).
    pub console_authorize_url: Url,
    /// Code exchange and refresh.
    pub token_url: Url,
    /// Redirect URI of the paste flow, whose page shows `CODE#STATE`.
    pub redirect_uri: Url,
    pub scopes: Vec<String>,
    /// API base; `create_api_key` hangs off it.
    pub api_base: Url,
    /// `User-Agent` of usage and profile calls: the usage endpoint answers 429 at once to others.
    pub account_user_agent: String,
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce").field("challenge", &self.challenge).finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// S256 challenge of a verifier: base64url(SHA-256(verifier)).
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Pkce {
    /// A fresh verifier from 32 bytes of OS randomness.
    pub fn generate() -> Self {
        let verifier = random_token();
        let challenge = challenge_of(&verifier);
        Self { verifier: SecretString::from(verifier), challenge }
    }
}

/// A fresh `state`, independent of the verifier (which must never appear in a URL).
pub fn new_state() -> String {
    random_token()
}

/// The authorize URL the user opens in a browser.
pub fn authorize_url(cfg: &OAuthConfig, console: bool, redirect_uri: &str, challenge: &str, state: &str) -> Url {
    let mut url = if console { cfg.console_authorize_url.clone() } else { cfg.authorize_url.clone() };
    url.query_pairs_mut()
        .append_pair("code", "true")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &cfg.scopes.join(" "))
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", state);
    url
}

/// Split a pasted `CODE#STATE`.
pub fn split_pasted(input: &str) -> Result<(String, String), OAuthError> {
    let input = input.trim();
    match input.split_once('#') {
        Some((code, state)) if !code.is_empty() && !state.is_empty() => Ok((code.to_owned(), state.to_owned())),
        _ => Err(OAuthError::BadInput("expected CODE#STATE as shown on the login page".to_owned())),
    }
}

/// The token endpoint's answer.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    /// Absent when the old refresh token stays valid.
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub account: Option<AccountInfo>,
    #[serde(default)]
    pub organization: Option<OrganizationInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AccountInfo {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub email_address: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrganizationInfo {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl TokenResponse {
    /// Expiry as epoch milliseconds; an answer without `expires_in` is treated as expiring in an hour.
    pub fn expires_at_ms(&self, now_ms: i64) -> i64 {
        let secs = i64::try_from(self.expires_in.unwrap_or(3600)).unwrap_or(3600);
        now_ms.saturating_add(secs.saturating_mul(1000))
    }
}

/// Why an OAuth call failed. Messages never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The code or refresh token is spent, expired or revoked: the account needs a new login.
    #[error("the authorization server refused the grant (invalid_grant): {0}")]
    InvalidGrant(String),
    /// The token endpoint rate-limits us; wait before trying again.
    #[error("the authorization server is rate limiting (retry after {}s)", .retry_after.map(|d| d.as_secs()).unwrap_or(0))]
    RateLimited { retry_after: Option<Duration> },
    #[error("the authorization server answered {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("cannot reach the authorization server: {0}")]
    Transport(String),
    #[error("unexpected answer from the authorization server: {0}")]
    BadResponse(String),
    #[error("{0}")]
    BadInput(String),
}

impl OAuthError {
    /// Whether trying again later may help (network, rate limit, 5xx).
    pub fn retryable(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Transport(_) => true,
            Self::Rejected { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Mask secrets with the same patterns as kept payloads (keys anywhere in the text, the values of fields
/// named like tokens), then cap the length: error texts from the server are shown to users and logged,
/// and a token endpoint may echo the refresh token it was sent.
fn sanitize(text: &str) -> String {
    use crate::secrets::redact::Redactor;
    // Plus the authorization code, which only these endpoints see (in a payload, `code` is a user's).
    static REDACTOR: std::sync::LazyLock<Option<Redactor>> =
        std::sync::LazyLock::new(|| Redactor::new(&[r#""code"\s*:\s*"[^"]*""#.to_owned()]).ok());
    let Some(redactor) = REDACTOR.as_ref() else { return "[REDACTED]".to_owned() };
    redactor.redact(text).chars().take(300).collect()
}

/// Talks to the token endpoint.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    cfg: OAuthConfig,
}

impl OAuthClient {
    pub fn new(http: reqwest::Client, cfg: OAuthConfig) -> Self {
        Self { http, cfg }
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.cfg
    }

    /// Exchange an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        code: &str,
        state: &str,
        verifier: &SecretString,
        redirect_uri: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let body = serde_json::json!({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.cfg.client_id,
            "code_verifier": verifier.expose_secret(),
            "state": state,
        });
        self.token_call(&body).await
    }

    /// Trade a refresh token for a new pair. Refresh tokens are single-use: the caller must persist the
    /// answer before using it.
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenResponse, OAuthError> {
        let body = serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose_secret(),
            "client_id": self.cfg.client_id,
            "scope": self.cfg.scopes.join(" "),
        });
        self.token_call(&body).await
    }

    async fn token_call(&self, body: &serde_json::Value) -> Result<TokenResponse, OAuthError> {
        let response = self
            .http
            .post(self.cfg.token_url.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| OAuthError::Transport(sanitize(&without_url(e))))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(|e| OAuthError::Transport(sanitize(&without_url(e))))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| OAuthError::BadResponse(e.to_string()));
        }
        if status.as_u16() == 429 {
            return Err(OAuthError::RateLimited { retry_after });
        }
        let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let code = parsed.get("error").and_then(|e| {
            e.as_str().map(str::to_owned).or_else(|| e.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        });
        let description = parsed
            .get("error_description")
            .and_then(|d| d.as_str())
            .or_else(|| parsed.pointer("/error/message").and_then(|d| d.as_str()))
            .unwrap_or("");
        if code.as_deref() == Some("invalid_grant") {
            return Err(OAuthError::InvalidGrant(sanitize(if description.is_empty() {
                "the code or refresh token is expired, used or revoked"
            } else {
                description
            })));
        }
        let message = match (code, description) {
            (Some(c), "") => c,
            (Some(c), d) => format!("{c}: {d}"),
            (None, d) if !d.is_empty() => d.to_owned(),
            (None, _) => String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        };
        Err(OAuthError::Rejected { status: status.as_u16(), message: sanitize(&message) })
    }

    /// Console login: create an API key with the fresh bearer token.
    pub async fn create_api_key(&self, access_token: &SecretString) -> Result<SecretString, OAuthError> {
        #[derive(Deserialize)]
        struct Created {
            raw_key: SecretString,
        }
        let url = self
            .cfg
            .api_base
            .join("api/oauth/claude_cli/create_api_key")
            .map_err(|e| OAuthError::BadInput(e.to_string()))?;
        let response = self
            .http
            .post(url)
            .bearer_auth(access_token.expose_secret())
            .header("content-type", "application/x-www-form-urlencoded")
            .send()
            .await
            .map_err(|e| OAuthError::Transport(sanitize(&without_url(e))))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| OAuthError::Transport(sanitize(&without_url(e))))?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(OAuthError::Rejected { status: status.as_u16(), message: sanitize(&text) });
        }
        let created: Created = serde_json::from_slice(&bytes).map_err(|e| OAuthError::BadResponse(e.to_string()))?;
        Ok(created.raw_key)
    }
}

/// `GET /api/oauth/usage`: utilization per window, in percent. The current shape is `limits[]` (every
/// window, model-scoped ones included) and `spend`; the fixed fields are the older shape, still read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageReport {
    #[serde(default)]
    pub five_hour: Option<UsageEntry>,
    #[serde(default)]
    pub seven_day: Option<UsageEntry>,
    #[serde(default)]
    pub seven_day_opus: Option<UsageEntry>,
    #[serde(default)]
    pub seven_day_sonnet: Option<UsageEntry>,
    #[serde(default)]
    pub limits: Option<Vec<UsageLimit>>,
    #[serde(default)]
    pub spend: Option<UsageSpend>,
}

/// One entry of `limits[]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageLimit {
    /// `session`, `weekly_all`, `weekly_scoped`, or a kind yet to come.
    #[serde(default)]
    pub kind: Option<String>,
    /// Percent, 0–100 (may exceed 100).
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub resets_at: Option<String>,
    #[serde(default)]
    pub scope: Option<UsageScope>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageScope {
    #[serde(default)]
    pub model: Option<UsageModel>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageModel {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `spend`: extra usage bought with money, amounts in minor units (2276 with exponent 2 is 22.76).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageSpend {
    #[serde(default)]
    pub used: Option<Money>,
    #[serde(default)]
    pub limit: Option<Money>,
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Money {
    #[serde(default)]
    pub amount_minor: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub exponent: Option<u32>,
}

impl Money {
    /// The amount in major units (22.76), when it reads.
    pub fn amount(&self) -> Option<f64> {
        let exponent = i32::try_from(self.exponent.unwrap_or(2).min(6)).unwrap_or(2);
        self.amount_minor.map(|minor| minor as f64 / 10f64.powi(exponent))
    }
}

/// Most windows taken from one answer, and the longest window name.
const MAX_WINDOWS: usize = 16;
const MAX_WINDOW_NAME: usize = 48;

impl UsageReport {
    /// Every window as (name, percent, resets_at): `5h` (the session), `7d` (the week), `7d:<model>`
    /// (a week scoped to a model family), others by their kind. From `limits[]` when the answer has it,
    /// else from the fixed fields. Bounded in count and name length (the answer comes from outside).
    pub fn windows(&self) -> Vec<(String, f64, Option<String>)> {
        let mut out = Vec::new();
        match &self.limits {
            Some(limits) if !limits.is_empty() => {
                for limit in limits.iter().take(MAX_WINDOWS) {
                    let Some(percent) = limit.percent.filter(|p| p.is_finite()) else { continue };
                    let model = limit.scope.as_ref().and_then(|s| s.model.as_ref());
                    let model = model.and_then(|m| m.display_name.clone().or_else(|| m.id.clone()));
                    let name = match (limit.kind.as_deref(), model) {
                        (Some("session"), _) => "5h".to_owned(),
                        (Some("weekly_all"), _) => "7d".to_owned(),
                        (_, Some(model)) => format!("7d:{}", model.to_ascii_lowercase()),
                        (Some(kind), None) => kind.to_owned(),
                        (None, None) => continue,
                    };
                    let name: String = name.chars().filter(|c| !c.is_control()).take(MAX_WINDOW_NAME).collect();
                    out.push((name, percent, limit.resets_at.clone()));
                }
            }
            _ => {
                let fixed = [
                    ("5h", &self.five_hour),
                    ("7d", &self.seven_day),
                    ("7d:opus", &self.seven_day_opus),
                    ("7d:sonnet", &self.seven_day_sonnet),
                ];
                for (name, entry) in fixed {
                    if let Some(e) = entry
                        && let Some(percent) = e.utilization.filter(|p| p.is_finite())
                    {
                        out.push((name.to_owned(), percent, e.resets_at.clone()));
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct UsageEntry {
    /// Percent, 0–100.
    #[serde(default)]
    pub utilization: Option<f64>,
    /// ISO 8601.
    #[serde(default)]
    pub resets_at: Option<String>,
}

/// `GET /api/oauth/profile`, the parts Switchyard shows.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub account: ProfileAccount,
    #[serde(default)]
    pub organization: ProfileOrganization,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProfileAccount {
    #[serde(default)]
    pub has_claude_max: bool,
    #[serde(default)]
    pub has_claude_pro: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProfileOrganization {
    #[serde(default)]
    pub organization_type: Option<String>,
    #[serde(default)]
    pub rate_limit_tier: Option<String>,
}

impl Profile {
    /// `max`, `pro`, or the organization type; with the rate-limit tier when known.
    pub fn plan(&self) -> String {
        let base = if self.account.has_claude_max {
            "max".to_owned()
        } else if self.account.has_claude_pro {
            "pro".to_owned()
        } else {
            self.organization.organization_type.clone().unwrap_or_else(|| "unknown".to_owned())
        };
        match &self.organization.rate_limit_tier {
            Some(tier) => format!("{base} ({tier})"),
            None => base,
        }
    }
}

impl OAuthClient {
    /// The account's current usage; `RateLimited` asks the caller to poll less.
    pub async fn usage(&self, access_token: &SecretString, beta: &str) -> Result<UsageReport, OAuthError> {
        self.account_get("api/oauth/usage", access_token, beta).await
    }

    /// The account's plan and organization.
    pub async fn profile(&self, access_token: &SecretString, beta: &str) -> Result<Profile, OAuthError> {
        self.account_get("api/oauth/profile", access_token, beta).await
    }

    async fn account_get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        access_token: &SecretString,
        beta: &str,
    ) -> Result<T, OAuthError> {
        let url = self.cfg.api_base.join(path).map_err(|e| OAuthError::BadInput(e.to_string()))?;
        let response = self
            .http
            .get(url)
            .bearer_auth(access_token.expose_secret())
            .header("anthropic-beta", beta)
            .header(reqwest::header::USER_AGENT, &self.cfg.account_user_agent)
            .send()
            .await
            .map_err(|e| OAuthError::Transport(sanitize(&without_url(e))))?;
        let status = response.status();
        if status.as_u16() == 429 {
            return Err(OAuthError::RateLimited { retry_after: None });
        }
        let bytes = capped_body(response, ACCOUNT_ANSWER_CAP).await?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(OAuthError::Rejected { status: status.as_u16(), message: sanitize(&text) });
        }
        serde_json::from_slice(&bytes).map_err(|e| OAuthError::BadResponse(e.to_string()))
    }
}

/// Largest usage or profile answer read (they are a few KiB).
const ACCOUNT_ANSWER_CAP: usize = 1024 * 1024;

/// An answer's body, refused past `cap` bytes (the server is outside our control).
async fn capped_body(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, OAuthError> {
    let too_large = || OAuthError::BadResponse(format!("the answer is larger than {cap} bytes"));
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| OAuthError::Transport(sanitize(&without_url(e))))? {
        if out.len() + chunk.len() > cap {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// reqwest errors print their URL; ours carry no secrets in URLs, but keep messages short and uniform.
fn without_url(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The innermost cause says what really happened (a certificate or pin failure, a refused connection);
    // reqwest's own text would add the URL.
    let Some(mut cause) = std::error::Error::source(&e) else { return kind.to_owned() };
    while let Some(next) = cause.source() {
        cause = next;
    }
    format!("{kind}: {cause}")
}

#[cfg(test)]
mod sanitize_tests {
    use super::sanitize;

    #[test]
    fn echoed_tokens_are_masked_anywhere() {
        let echoed = r#"{"error":"invalid_grant","refresh_token":"opaque-token-value","detail":"x sk-ant-ort01-abc_DEF-123, y"}"#;
        let clean = sanitize(echoed);
        assert!(!clean.contains("opaque-token-value") && !clean.contains("sk-ant-ort01"), "{clean}");
        assert!(clean.contains("invalid_grant"), "{clean}");
        assert_eq!(sanitize("plain words stay"), "plain words stay");
        assert!(!sanitize(r#"{"code": "auth-code-1", "code_verifier": "v3r"}"#).contains("auth-code-1"));
        assert!(!sanitize(r#"{"code_verifier": "v3r"}"#).contains("v3r"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg() -> OAuthConfig {
        OAuthConfig {
            client_id: "cid".into(),
            authorize_url: Url::parse("https://claude.example/oauth/authorize").unwrap(),
            console_authorize_url: Url::parse("https://console.example/oauth/authorize").unwrap(),
            token_url: Url::parse("https://console.example/v1/oauth/token").unwrap(),
            redirect_uri: Url::parse("https://console.example/oauth/code/callback").unwrap(),
            scopes: vec!["user:inference".into(), "user:profile".into()],
            api_base: Url::parse("https://api.example").unwrap(),
            account_user_agent: "claude-code/test".into(),
        }
    }

    #[test]
    fn every_usage_window_is_read_from_either_shape() {
        let now: UsageReport = serde_json::from_str(include_str!("../../tests/fixtures/usage-2026.json")).unwrap();
        let names: Vec<(String, f64)> = now.windows().into_iter().map(|(n, p, _)| (n, p)).collect();
        assert_eq!(
            names,
            [("5h".into(), 37.0), ("7d".into(), 12.5), ("7d:opus".into(), 104.0), ("7d:fable".into(), 3.0)]
        );
        let spend = now.spend.unwrap();
        assert_eq!((spend.used.unwrap().amount(), spend.limit.unwrap().amount()), (Some(22.76), Some(50.0)));
        let old: UsageReport = serde_json::from_str(include_str!("../../tests/fixtures/usage-2025.json")).unwrap();
        let names: Vec<String> = old.windows().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, ["5h", "7d", "7d:opus"]);
        // Hostile answers stay bounded.
        let many = serde_json::json!({"limits": (0..100).map(|i| serde_json::json!({"kind": format!("k{i}"), "percent": 1.0})).collect::<Vec<_>>()});
        let many: UsageReport = serde_json::from_value(many).unwrap();
        assert_eq!(many.windows().len(), MAX_WINDOWS);
    }

    #[test]
    fn pkce_challenge_is_s256_of_verifier() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let p = Pkce::generate();
        assert_eq!(p.verifier.expose_secret().len(), 43);
        assert!(!format!("{p:?}").contains(p.verifier.expose_secret()));
    }

    #[test]
    fn authorize_url_has_every_parameter_and_no_verifier() {
        let p = Pkce::generate();
        let state = new_state();
        assert_ne!(state, p.verifier.expose_secret());
        let url = authorize_url(&cfg(), false, "https://cb", &p.challenge, &state);
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["code"], "true");
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], "https://cb");
        assert_eq!(q["scope"], "user:inference user:profile");
        assert_eq!(q["code_challenge"], p.challenge);
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["state"], state);
        assert!(!url.as_str().contains(p.verifier.expose_secret()));
        assert!(authorize_url(&cfg(), true, "x", "c", "s").as_str().starts_with("https://console.example/"));
    }

    #[test]
    fn pasted_code_is_split() {
        assert_eq!(split_pasted(" abc#def\n").unwrap(), ("abc".into(), "def".into()));
        assert!(split_pasted("abc").is_err());
        assert!(split_pasted("#def").is_err());
    }

    #[test]
    fn secrets_are_masked_in_server_messages() {
        assert_eq!(sanitize("bad token sk-ant-ort01-xyz here"), "bad token [REDACTED] here");
    }
}
