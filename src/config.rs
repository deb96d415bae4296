//! Configuration: a TOML file, then `SWITCHYARD_*` environment variables, then flags, validated once into
//! a [`Config`] the rest of the code trusts.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::accounts::Strategy;
use crate::anthropic::IdentityMode;
use crate::oauth::OAuthConfig;
use crate::secrets::{SecretSettings, StoreChoice};

/// Default OAuth and API facts (see PROTOCOL.md); every one of them can be overridden.
pub mod defaults {
    pub const UPSTREAM_URL: &str = "https://api.anthropic.com";
    pub const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
    pub const AUTHORIZE_URL: &str = "https://claude.com/cai/oauth/authorize";
    pub const CONSOLE_AUTHORIZE_URL: &str = "https://platform.claude.com/oauth/authorize";
    pub const TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
    pub const REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";
    pub const SCOPES: &str =
        "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload";
    pub const IDENTITY_PROMPT: &str = "You are Claude Code, Anthropic's official CLI for Claude.";
    pub const OAUTH_BETA: &str = "oauth-2025-04-20";
    pub const ANTHROPIC_VERSION: &str = "2023-06-01";
    pub const HOST: &str = "127.0.0.1";
    pub const PORT: u16 = 8080;
    pub const BODY_LIMIT: usize = 32 * 1024 * 1024;
    pub const REFRESH_MARGIN_SECS: u64 = 300;
    pub const CONNECT_TIMEOUT_SECS: u64 = 10;
    pub const FIRST_BYTE_TIMEOUT_SECS: u64 = 600;
    pub const IDLE_TIMEOUT_SECS: u64 = 600;
    pub const SESSION_DURATION_MS: u64 = 5 * 3600 * 1000;
    pub const RETRY_ATTEMPTS: u32 = 3;
    pub const RETRY_DELAY_MS: u64 = 1000;
    pub const RETRY_BACKOFF: f64 = 2.0;
    pub const USAGE_POLL_SECS: u64 = 300;
    pub const USAGE_POLL_MIN_SECS: u64 = 180;
    /// What the usage endpoint expects of its callers.
    pub const ACCOUNT_USER_AGENT: &str = "claude-code/2.1.332";
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    InFile { path: PathBuf, key: &'static str, message: String },
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("no data directory: set SWITCHYARD_HOME")]
    NoHome,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: database, key file. `SWITCHYARD_HOME`, default the platform data dir.
    pub home: PathBuf,
    /// PostgreSQL shared by several instances; `None`: SQLite in the data directory.
    pub database: Option<crate::store::PgSettings>,
    pub host: String,
    pub port: u16,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub body_limit: usize,
    /// A request body must have arrived whole within this time (a trickling body holds a connection).
    pub body_timeout: Duration,
    /// API base; `/v1/…` and `/api/oauth/…` hang off it.
    pub upstream_url: Url,
    pub connect_timeout: Duration,
    /// How long to wait for the upstream's response headers.
    pub first_byte_timeout: Duration,
    /// How long a response body may stay silent before the upstream is given up on.
    pub idle_timeout: Duration,
    pub identity: IdentityMode,
    /// System prompt an OAuth account's requests must open with.
    pub identity_prompt: String,
    /// Beta flag an OAuth bearer token needs.
    pub oauth_beta: String,
    /// `anthropic-version` sent when the client sent none.
    pub anthropic_version: String,
    pub oauth: OAuthConfig,
    /// Refresh an OAuth access token this long before it expires.
    pub refresh_margin: Duration,
    /// How long a call to the token endpoint may take; a refresh lease lasts this plus a margin.
    pub token_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Also write logs to this file, rotated by size.
    pub log_file: Option<crate::telemetry::LogFile>,
    /// `SWITCHYARD_ENCRYPTION_KEY`: base64 data key overriding the key file.
    pub encryption_key: Option<SecretString>,
    /// How the router picks the first account.
    pub strategy: Strategy,
    /// How long identical `count_tokens` requests of one key are answered from memory; zero: never.
    pub count_tokens_cache: Duration,
    /// Whether `count_tokens` requests count against a key's requests and tokens per minute.
    pub count_tokens_in_limits: bool,
    /// What keeps a conversation on one account (`SWITCHYARD_AFFINITY`).
    pub affinity: crate::accounts::Affinity,
    /// `max_tokens` of an OpenAI-dialect request that names none (Anthropic requires one).
    pub openai_max_tokens: u64,
    /// Session strategy: stay on one account this long at most.
    pub session_duration: Duration,
    /// Extra upstream attempts (on other accounts) after the first fails before any byte is sent.
    pub retry_attempts: u32,
    /// Pause before the first retry after an overload, server error or connection failure.
    pub retry_delay: Duration,
    /// Factor the pause grows by with each retry.
    pub retry_backoff: f64,
    /// How often each OAuth account's usage endpoint is polled; zero turns polling off.
    pub usage_poll: Duration,
    /// How often the store is read for changes made elsewhere, announced or not (the fallback under
    /// PostgreSQL's change feed, the only way on SQLite).
    pub sync_interval: Duration,
    /// Where the data-encryption key lives (`SWITCHYARD_SECRET_STORE`).
    pub secret_store: StoreChoice,
    /// `SWITCHYARD_PASSPHRASE`: wraps the key file (Argon2id) and protects backups.
    pub passphrase: Option<SecretString>,
    /// Refuse to start when the data directory's permissions are too open, instead of fixing them.
    pub strict_permissions: bool,
    /// Failed key checks allowed per client IP and minute before answering 429.
    pub auth_failures_per_minute: u32,
    /// Serve without client keys on a non-loopback address.
    pub allow_unauthenticated: bool,
    /// Serve HTTPS with this PEM certificate chain and key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Open connections from one source (loopback is one source, IPv6 a /64); default half the total.
    pub max_connections_per_ip: usize,
    /// Threads serving connections, each with its own event loop and accept loop.
    pub workers: usize,
    /// Time a client has to send a request's headers (slow clients, idle keep-alive).
    pub header_timeout: Duration,
    /// A connection older than this is asked to close once its running requests end (HTTP/2 GOAWAY).
    pub max_connection_age: Duration,
    /// Only these client addresses (CIDRs); others get 403.
    pub allowed_ips: Option<Vec<ipnet::IpNet>>,
    /// Browser origins allowed by CORS; none by default.
    pub allowed_origins: Vec<String>,
    /// Host names (without port) accepted in `Host` besides loopback's; with a loopback bind only these
    /// and `localhost`, `127.0.0.1`, `[::1]` are served (DNS rebinding), elsewhere only these when set.
    pub allowed_hosts: Vec<String>,
    /// SHA-256 pins of SubjectPublicKeyInfos by host (the API host, the token endpoint's host); applied
    /// by every upstream client.
    pub pins: crate::forward::tls::HostPins,
    /// Extra CA (PEM) trusted for upstream and token endpoint connections instead of the platform roots.
    pub upstream_ca: Option<PathBuf>,
    /// Record every request in the database (off the hot path).
    pub request_log: bool,
    /// Records waiting for the writer at most; more are dropped and counted.
    pub log_queue: usize,
    /// Request-log rows older than this are deleted hourly.
    pub retention: Duration,
    /// Where alerts are POSTed (JSON), if anywhere.
    pub alert_webhook: Option<Url>,
    /// 5-hour utilization (0..1) that raises an alert.
    pub alert_utilization: f64,
    /// Which request and response bodies are kept (redacted, sealed).
    pub payloads: crate::ledger::PayloadMode,
    /// Bytes kept per body at most.
    pub payload_max_bytes: usize,
    /// Extra redaction regexes.
    pub redact: Vec<String>,
    /// Payloads older than this are deleted hourly.
    pub payload_retention: Duration,
    /// `[prices.<model substring>]` from the config file, before the built-in estimates.
    pub prices: Vec<(String, crate::ledger::Price)>,
    /// `[models.aliases]`: names clients may use, and the model each stands for.
    pub model_aliases: std::collections::BTreeMap<String, String>,
}

/// Values given as command-line flags; they win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_unauthenticated: bool,
    pub strict_permissions: bool,
    pub home: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawFile {
    alerts: RawAlerts,
    prices: std::collections::BTreeMap<String, crate::ledger::Price>,
    models: RawModels,
    requests: RawRequests,
    secrets: RawSecrets,
    server: RawServer,
    store: RawStore,
    routing: RawRouting,
    upstream: RawUpstream,
    oauth: RawOAuth,
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawModels {
    /// `opus = "claude-opus-4-5"`: a name clients may use for a model.
    aliases: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawServer {
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    workers: Option<usize>,
    header_timeout_secs: Option<u64>,
    max_connection_age_secs: Option<u64>,
    allowed_ips: Option<String>,
    allowed_origins: Option<String>,
    allowed_hosts: Option<String>,
    auth_failures_per_minute: Option<u32>,
    allow_unauthenticated: Option<bool>,
    host: Option<String>,
    port: Option<u16>,
    body_limit: Option<usize>,
    body_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawUpstream {
    pins: Option<String>,
    ca_file: Option<PathBuf>,
    url: Option<String>,
    connect_timeout_secs: Option<u64>,
    first_byte_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    identity: Option<String>,
    identity_prompt: Option<String>,
    oauth_beta: Option<String>,
    anthropic_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOAuth {
    client_id: Option<String>,
    authorize_url: Option<String>,
    console_authorize_url: Option<String>,
    token_url: Option<String>,
    pins: Option<String>,
    redirect_uri: Option<String>,
    scopes: Option<String>,
    refresh_margin_secs: Option<u64>,
    token_timeout_secs: Option<u64>,
    account_user_agent: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAlerts {
    webhook_url: Option<String>,
    utilization: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRequests {
    payloads: Option<String>,
    payload_max_bytes: Option<usize>,
    redact: Option<Vec<String>>,
    payload_retention_days: Option<u64>,
    log: Option<bool>,
    queue: Option<usize>,
    retention_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSecrets {
    store: Option<String>,
    strict_permissions: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStore {
    database_url: Option<String>,
    max_connections: Option<u32>,
    sync_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRouting {
    strategy: Option<String>,
    affinity: Option<String>,
    count_tokens_cache_secs: Option<u64>,
    openai_max_tokens: Option<u64>,
    count_tokens_in_limits: Option<bool>,
    session_duration_ms: Option<u64>,
    retry_attempts: Option<u32>,
    retry_delay_ms: Option<u64>,
    retry_backoff: Option<f64>,
    usage_poll_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    file: Option<PathBuf>,
    max_bytes: Option<u64>,
    keep: Option<usize>,
    level: Option<String>,
    format: Option<String>,
}

/// One setting: the file value, replaced by the environment variable when it is set.
fn pick<T: FromStr>(
    env: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    file: Option<T>,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env(var).filter(|v| !v.is_empty()) {
        Some(raw) => {
            raw.trim().parse().map(Some).map_err(|e| ConfigError::Invalid { name: var, message: format!("{e}") })
        }
        None => Ok(file),
    }
}

fn parse_url(name: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| ConfigError::Invalid { name, message: format!("{e}: {raw}") })?;
    match url.scheme() {
        "https" | "http" => Ok(url),
        other => Err(ConfigError::Invalid { name, message: format!("unsupported scheme {other}") }),
    }
}

/// A URL Switchyard itself calls: HTTPS only, except plain HTTP to a loopback address (tests, local
/// fakes). Certificates are always fully validated.
fn parse_upstream(name: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let url = parse_url(name, raw)?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(ConfigError::Invalid {
            name,
            message: format!("{raw}: upstream connections must use https (plain http only to a loopback address)"),
        });
    }
    Ok(url)
}

/// The data directory when none is configured.
pub fn default_home() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("switchyard")).or_else(|| dirs::home_dir().map(|h| h.join(".switchyard")))
}

/// This machine's name.
pub fn host_name() -> String {
    #[cfg(unix)]
    return rustix::system::uname().nodename().to_string_lossy().into_owned();
    #[cfg(not(unix))]
    return std::env::var("COMPUTERNAME").unwrap_or_else(|_| "host".to_owned());
}

impl Config {
    /// Load from the real process environment.
    pub fn load(flags: &Overrides) -> Result<Self, ConfigError> {
        Self::load_with(flags, &|k| std::env::var(k).ok())
    }

    /// The settings a config file's `text` gives, with no environment and no flags (the fuzz target's
    /// entry: the same parse and validation as `load`).
    pub fn from_file_text(text: &str, home: PathBuf) -> Result<Self, ConfigError> {
        let raw = parse_file(Path::new("config.toml"), text)?;
        Self::assemble(&Overrides::default(), &|_| None, home, raw)
    }

    /// Load with an injected environment, so precedence can be tested without touching the process.
    pub fn load_with(flags: &Overrides, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let home = match flags.home.clone() {
            Some(h) => h,
            None => match env("SWITCHYARD_HOME").filter(|v| !v.is_empty()) {
                Some(h) => PathBuf::from(h),
                None => default_home().ok_or(ConfigError::NoHome)?,
            },
        };
        let file_path = flags
            .config
            .clone()
            .or_else(|| env("SWITCHYARD_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
            .or_else(|| Some(home.join("config.toml")).filter(|p| p.exists()));
        let raw = match &file_path {
            Some(path) => read_file(path)?,
            None => RawFile::default(),
        };
        Self::assemble(flags, env, home, raw).map_err(|e| match (e, &file_path) {
            // The value came from the file, not the environment: name the file and key.
            (ConfigError::Invalid { name, message }, Some(path)) if env(name).is_none_or(|v| v.is_empty()) => {
                match FILE_KEYS.iter().find(|(var, _)| *var == name) {
                    Some((_, key)) => ConfigError::InFile { path: path.clone(), key, message },
                    None => ConfigError::Invalid { name, message },
                }
            }
            (e, _) => e,
        })
    }

    /// Every setting from the file, the environment and the flags, validated once.
    fn assemble(
        flags: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        home: PathBuf,
        mut raw: RawFile,
    ) -> Result<Self, ConfigError> {
        let host = flags.host.clone().or(pick(env, "SWITCHYARD_HOST", raw.server.host)?);
        let port = flags.port.or(pick(env, "SWITCHYARD_PORT", raw.server.port)?);
        let body_limit = pick(env, "SWITCHYARD_BODY_LIMIT", raw.server.body_limit)?;
        let body_timeout = pick(env, "SWITCHYARD_BODY_TIMEOUT_SECS", raw.server.body_timeout_secs)?;
        let auth_failures = pick(env, "SWITCHYARD_AUTH_FAILURES_PER_MINUTE", raw.server.auth_failures_per_minute)?;
        let allow_unauth = pick(env, "SWITCHYARD_ALLOW_UNAUTHENTICATED", raw.server.allow_unauthenticated)?;
        let tls_cert = flags.tls_cert.clone().or(pick(env, "SWITCHYARD_TLS_CERT", raw.server.tls_cert)?);
        let tls_key = flags.tls_key.clone().or(pick(env, "SWITCHYARD_TLS_KEY", raw.server.tls_key)?);
        if tls_cert.is_some() != tls_key.is_some() {
            return Err(ConfigError::Invalid {
                name: "SWITCHYARD_TLS_CERT",
                message: "a TLS certificate and key go together: give both --tls-cert and --tls-key".into(),
            });
        }
        let max_connections = pick(env, "SWITCHYARD_MAX_CONNECTIONS", raw.server.max_connections)?;
        let per_ip = pick(env, "SWITCHYARD_MAX_CONNECTIONS_PER_IP", raw.server.max_connections_per_ip)?;
        let workers: Option<usize> = pick(env, "SWITCHYARD_WORKERS", raw.server.workers)?;
        let header_timeout = pick(env, "SWITCHYARD_HEADER_TIMEOUT_SECS", raw.server.header_timeout_secs)?;
        let max_age = pick(env, "SWITCHYARD_MAX_CONNECTION_AGE_SECS", raw.server.max_connection_age_secs)?;
        let allowed_ips: Option<String> = pick(env, "SWITCHYARD_ALLOWED_IPS", raw.server.allowed_ips)?;
        let allowed_ips = allowed_ips
            .filter(|s| !s.trim().is_empty())
            .map(|s| crate::server::parse_allowed_ips(&s))
            .transpose()
            .map_err(|message| ConfigError::Invalid { name: "SWITCHYARD_ALLOWED_IPS", message })?;
        let origins: Option<String> = pick(env, "SWITCHYARD_ALLOWED_ORIGINS", raw.server.allowed_origins)?;
        let allowed_origins: Vec<String> = origins
            .unwrap_or_default()
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        let hosts: Option<String> = pick(env, "SWITCHYARD_ALLOWED_HOSTS", raw.server.allowed_hosts)?;
        let allowed_hosts: Vec<String> = hosts
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let upstream = pick(env, "SWITCHYARD_UPSTREAM_URL", raw.upstream.url)?;
        let pins: Option<String> = pick(env, "SWITCHYARD_UPSTREAM_PINS", raw.upstream.pins)?;
        let upstream_pins = crate::forward::tls::parse_pins(pins.as_deref().unwrap_or(""))
            .map_err(|e| ConfigError::Invalid { name: "SWITCHYARD_UPSTREAM_PINS", message: e.to_string() })?;
        let oauth_pins: Option<String> = pick(env, "SWITCHYARD_OAUTH_PINS", raw.oauth.pins)?;
        let oauth_pins = crate::forward::tls::parse_pins(oauth_pins.as_deref().unwrap_or(""))
            .map_err(|e| ConfigError::Invalid { name: "SWITCHYARD_OAUTH_PINS", message: e.to_string() })?;
        let upstream_ca = pick(env, "SWITCHYARD_UPSTREAM_CA", raw.upstream.ca_file)?;
        let connect = pick(env, "SWITCHYARD_CONNECT_TIMEOUT_SECS", raw.upstream.connect_timeout_secs)?;
        let first_byte = pick(env, "SWITCHYARD_FIRST_BYTE_TIMEOUT_SECS", raw.upstream.first_byte_timeout_secs)?;
        let idle = pick(env, "SWITCHYARD_IDLE_TIMEOUT_SECS", raw.upstream.idle_timeout_secs)?;
        let identity: Option<String> = pick(env, "SWITCHYARD_IDENTITY", raw.upstream.identity)?;
        let identity_prompt = pick(env, "SWITCHYARD_IDENTITY_PROMPT", raw.upstream.identity_prompt)?;
        let oauth_beta = pick(env, "SWITCHYARD_OAUTH_BETA", raw.upstream.oauth_beta)?;
        let version = pick(env, "SWITCHYARD_ANTHROPIC_VERSION", raw.upstream.anthropic_version)?;
        let client_id = pick(env, "SWITCHYARD_CLIENT_ID", raw.oauth.client_id)?;
        let authorize = pick(env, "SWITCHYARD_OAUTH_AUTHORIZE_URL", raw.oauth.authorize_url)?;
        let console = pick(env, "SWITCHYARD_OAUTH_CONSOLE_AUTHORIZE_URL", raw.oauth.console_authorize_url)?;
        let token = pick(env, "SWITCHYARD_OAUTH_TOKEN_URL", raw.oauth.token_url)?;
        let redirect = pick(env, "SWITCHYARD_OAUTH_REDIRECT_URI", raw.oauth.redirect_uri)?;
        let scopes: Option<String> = pick(env, "SWITCHYARD_OAUTH_SCOPES", raw.oauth.scopes)?;
        let account_agent: Option<String> = pick(env, "SWITCHYARD_ACCOUNT_USER_AGENT", raw.oauth.account_user_agent)?
            .filter(|a| !a.trim().is_empty() && a.len() <= 200 && a.chars().all(|c| c.is_ascii_graphic() || c == ' '));
        let margin = pick(env, "SWITCHYARD_REFRESH_MARGIN_SECS", raw.oauth.refresh_margin_secs)?;
        let token_timeout = pick(env, "SWITCHYARD_TOKEN_TIMEOUT_SECS", raw.oauth.token_timeout_secs)?;
        let strategy: Option<String> = pick(env, "SWITCHYARD_LB_STRATEGY", raw.routing.strategy)?;
        let affinity: Option<String> = pick(env, "SWITCHYARD_AFFINITY", raw.routing.affinity)?;
        let count_cache = pick(env, "SWITCHYARD_COUNT_TOKENS_CACHE_SECS", raw.routing.count_tokens_cache_secs)?;
        let openai_max_tokens = pick(env, "SWITCHYARD_OPENAI_MAX_TOKENS", raw.routing.openai_max_tokens)?;
        let count_limits = pick(env, "SWITCHYARD_COUNT_TOKENS_IN_LIMITS", raw.routing.count_tokens_in_limits)?;
        let session_ms = pick(env, "SWITCHYARD_SESSION_DURATION_MS", raw.routing.session_duration_ms)?;
        let retry_attempts = pick(env, "SWITCHYARD_RETRY_ATTEMPTS", raw.routing.retry_attempts)?;
        let retry_delay_ms = pick(env, "SWITCHYARD_RETRY_DELAY_MS", raw.routing.retry_delay_ms)?;
        let retry_backoff = pick(env, "SWITCHYARD_RETRY_BACKOFF", raw.routing.retry_backoff)?;
        let usage_poll = pick(env, "SWITCHYARD_USAGE_POLL_SECS", raw.routing.usage_poll_secs)?;
        let secret_store: Option<String> = pick(env, "SWITCHYARD_SECRET_STORE", raw.secrets.store)?;
        let strict = pick(env, "SWITCHYARD_STRICT_PERMISSIONS", raw.secrets.strict_permissions)?;
        let database_url: Option<String> =
            flags.database_url.clone().or(pick(env, "SWITCHYARD_DATABASE_URL", raw.store.database_url)?);
        let db_connections = pick(env, "SWITCHYARD_DATABASE_MAX_CONNECTIONS", raw.store.max_connections)?;
        let sync_ms = pick(env, "SWITCHYARD_SYNC_INTERVAL_MS", raw.store.sync_interval_ms)?;
        let database = match database_url.filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(crate::store::PgSettings { url, max_connections: db_connections.unwrap_or(16).clamp(1, 1000) })
            }
            Some(url) => {
                return Err(ConfigError::Invalid {
                    name: "SWITCHYARD_DATABASE_URL",
                    message: format!(
                        "{}: expected postgres://USER:PASSWORD@HOST:PORT/DATABASE (without it, SQLite in the data \
                         directory)",
                        crate::store::redacted_url(&url)
                    ),
                });
            }
        };
        let request_log = pick(env, "SWITCHYARD_REQUEST_LOG", raw.requests.log)?;
        let log_queue = pick(env, "SWITCHYARD_LOG_QUEUE", raw.requests.queue)?;
        let retention_days = pick(env, "SWITCHYARD_RETENTION_DAYS", raw.requests.retention_days)?;
        let webhook: Option<String> = pick(env, "SWITCHYARD_ALERT_WEBHOOK_URL", raw.alerts.webhook_url)?;
        let alert_webhook =
            webhook.filter(|w| !w.is_empty()).map(|w| parse_url("SWITCHYARD_ALERT_WEBHOOK_URL", &w)).transpose()?;
        let alert_utilization = pick(env, "SWITCHYARD_ALERT_UTILIZATION", raw.alerts.utilization)?.unwrap_or(0.9);
        let payloads: Option<String> = pick(env, "SWITCHYARD_PAYLOADS", raw.requests.payloads)?;
        let payloads = match payloads {
            Some(p) => p.parse().map_err(|message| ConfigError::Invalid { name: "SWITCHYARD_PAYLOADS", message })?,
            None => crate::ledger::PayloadMode::Off,
        };
        let payload_max = pick(env, "SWITCHYARD_PAYLOAD_MAX_BYTES", raw.requests.payload_max_bytes)?;
        let payload_days = pick(env, "SWITCHYARD_PAYLOAD_RETENTION_DAYS", raw.requests.payload_retention_days)?;
        let mut redact = raw.requests.redact.unwrap_or_default();
        if let Some(extra) = env("SWITCHYARD_REDACT").filter(|v| !v.is_empty()) {
            redact.push(extra);
        }
        for pattern in &redact {
            regex::Regex::new(pattern).map_err(|e| ConfigError::Invalid {
                name: "SWITCHYARD_REDACT",
                message: format!("{pattern:?}: {e}"),
            })?;
        }
        let log_file_path = pick(env, "SWITCHYARD_LOG_FILE", raw.log.file)?;
        let log_max = pick(env, "SWITCHYARD_LOG_MAX_BYTES", raw.log.max_bytes)?;
        let log_keep = pick(env, "SWITCHYARD_LOG_KEEP", raw.log.keep)?;
        let log_file = log_file_path.map(|path| crate::telemetry::LogFile {
            path,
            max_bytes: log_max.unwrap_or(10 * 1024 * 1024).max(1024),
            keep: log_keep.unwrap_or(5),
        });
        let log_level = pick(env, "SWITCHYARD_LOG_LEVEL", raw.log.level)?;
        let log_format: Option<String> = pick(env, "SWITCHYARD_LOG_FORMAT", raw.log.format)?;

        let identity = match identity.as_deref().unwrap_or("inject") {
            "inject" => IdentityMode::Inject,
            "pass-through" | "passthrough" => IdentityMode::PassThrough,
            other => {
                return Err(ConfigError::Invalid {
                    name: "SWITCHYARD_IDENTITY",
                    message: format!("expected inject or pass-through, got {other}"),
                });
            }
        };
        let log_format = match log_format.as_deref().unwrap_or("pretty") {
            "pretty" | "text" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    name: "SWITCHYARD_LOG_FORMAT",
                    message: format!("expected json or pretty, got {other}"),
                });
            }
        };
        let upstream_url =
            parse_upstream("SWITCHYARD_UPSTREAM_URL", upstream.as_deref().unwrap_or(defaults::UPSTREAM_URL))?;
        let scopes = scopes.unwrap_or_else(|| defaults::SCOPES.to_owned());
        let oauth = OAuthConfig {
            client_id: client_id.unwrap_or_else(|| defaults::CLIENT_ID.to_owned()),
            authorize_url: parse_url(
                "SWITCHYARD_OAUTH_AUTHORIZE_URL",
                authorize.as_deref().unwrap_or(defaults::AUTHORIZE_URL),
            )?,
            console_authorize_url: parse_url(
                "SWITCHYARD_OAUTH_CONSOLE_AUTHORIZE_URL",
                console.as_deref().unwrap_or(defaults::CONSOLE_AUTHORIZE_URL),
            )?,
            token_url: parse_upstream("SWITCHYARD_OAUTH_TOKEN_URL", token.as_deref().unwrap_or(defaults::TOKEN_URL))?,
            redirect_uri: parse_url(
                "SWITCHYARD_OAUTH_REDIRECT_URI",
                redirect.as_deref().unwrap_or(defaults::REDIRECT_URI),
            )?,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            api_base: upstream_url.clone(),
            account_user_agent: account_agent.unwrap_or_else(|| defaults::ACCOUNT_USER_AGENT.to_owned()),
        };
        let mut pins = crate::forward::tls::HostPins::default();
        if let Some(host) = upstream_url.host_str() {
            pins.pin(host, &upstream_pins, "SWITCHYARD_UPSTREAM_PINS");
        }
        if let Some(host) = oauth.token_url.host_str() {
            pins.pin(host, &oauth_pins, "SWITCHYARD_OAUTH_PINS");
        }
        let body_limit = body_limit.unwrap_or(defaults::BODY_LIMIT);
        if body_limit == 0 {
            return Err(ConfigError::Invalid { name: "SWITCHYARD_BODY_LIMIT", message: "must be above 0".into() });
        }
        let model_aliases = std::mem::take(&mut raw.models.aliases);
        {
            use crate::forward::models::{MAX_ALIASES, MAX_NAME};
            let invalid = |message: String| ConfigError::Invalid { name: "models.aliases", message };
            if model_aliases.len() > MAX_ALIASES {
                return Err(invalid(format!("{} aliases; at most {MAX_ALIASES}", model_aliases.len())));
            }
            for (alias, model) in &model_aliases {
                for name in [alias, model] {
                    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
                        return Err(invalid(format!(
                            "{alias:?} = {model:?}: names must be 1 to {MAX_NAME} characters without control characters"
                        )));
                    }
                }
            }
        }
        let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
        let strategy = match strategy {
            Some(s) => s.parse().map_err(|message| ConfigError::Invalid { name: "SWITCHYARD_LB_STRATEGY", message })?,
            None => Strategy::Session,
        };
        let affinity = match affinity {
            Some(s) => s.parse().map_err(|message| ConfigError::Invalid { name: "SWITCHYARD_AFFINITY", message })?,
            None => crate::accounts::Affinity::default(),
        };
        let secret_store = match secret_store {
            Some(s) => {
                s.parse().map_err(|message| ConfigError::Invalid { name: "SWITCHYARD_SECRET_STORE", message })?
            }
            None => StoreChoice::Auto,
        };
        let retry_backoff = retry_backoff.unwrap_or(defaults::RETRY_BACKOFF);
        if !(1.0..=10.0).contains(&retry_backoff) {
            return Err(ConfigError::Invalid {
                name: "SWITCHYARD_RETRY_BACKOFF",
                message: "must be between 1 and 10".into(),
            });
        }
        Ok(Config {
            home,
            host: host.unwrap_or_else(|| defaults::HOST.to_owned()),
            port: port.unwrap_or(defaults::PORT),
            body_limit,
            body_timeout: Duration::from_secs(body_timeout.unwrap_or(120).max(1)),
            upstream_url,
            connect_timeout: secs(connect, defaults::CONNECT_TIMEOUT_SECS),
            first_byte_timeout: secs(first_byte, defaults::FIRST_BYTE_TIMEOUT_SECS),
            idle_timeout: secs(idle, defaults::IDLE_TIMEOUT_SECS),
            identity,
            identity_prompt: identity_prompt.unwrap_or_else(|| defaults::IDENTITY_PROMPT.to_owned()),
            oauth_beta: oauth_beta.unwrap_or_else(|| defaults::OAUTH_BETA.to_owned()),
            anthropic_version: version.unwrap_or_else(|| defaults::ANTHROPIC_VERSION.to_owned()),
            oauth,
            refresh_margin: secs(margin, defaults::REFRESH_MARGIN_SECS),
            token_timeout: secs(token_timeout, 30).max(Duration::from_secs(1)),
            log_level: log_level.unwrap_or_else(|| "info".to_owned()),
            log_format,
            log_file,
            strategy,
            affinity,
            count_tokens_cache: Duration::from_secs(count_cache.unwrap_or(5).min(3600)),
            count_tokens_in_limits: count_limits.unwrap_or(false),
            openai_max_tokens: openai_max_tokens.unwrap_or(4096).clamp(1, 1_000_000),
            session_duration: Duration::from_millis(session_ms.unwrap_or(defaults::SESSION_DURATION_MS)),
            retry_attempts: retry_attempts.unwrap_or(defaults::RETRY_ATTEMPTS),
            retry_delay: Duration::from_millis(retry_delay_ms.unwrap_or(defaults::RETRY_DELAY_MS)),
            retry_backoff,
            // The usage endpoint is rate-limited itself: never more often than every 180 s per account.
            usage_poll: match secs(usage_poll, defaults::USAGE_POLL_SECS) {
                off if off.is_zero() => off,
                every => every.max(Duration::from_secs(defaults::USAGE_POLL_MIN_SECS)),
            },
            sync_interval: Duration::from_millis(sync_ms.unwrap_or(1000).clamp(100, 600_000)),
            auth_failures_per_minute: auth_failures.unwrap_or(30).max(1),
            tls_cert,
            tls_key,
            max_connections: max_connections.unwrap_or(1024).max(1),
            max_connections_per_ip: per_ip.unwrap_or(max_connections.unwrap_or(1024).max(2) / 2).max(1),
            workers: workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
                .clamp(1, 256),
            header_timeout: secs(header_timeout, 30),
            max_connection_age: secs(max_age, 3600),
            allowed_ips,
            allowed_origins,
            allowed_hosts,
            pins,
            upstream_ca,
            request_log: request_log.unwrap_or(true),
            log_queue: log_queue.unwrap_or(10_000).max(1),
            retention: Duration::from_secs(retention_days.unwrap_or(30).saturating_mul(86_400)),
            prices: raw.prices.into_iter().collect(),
            model_aliases,
            alert_webhook,
            alert_utilization,
            payloads,
            payload_max_bytes: payload_max.unwrap_or(64 * 1024),
            redact,
            payload_retention: Duration::from_secs(payload_days.unwrap_or(7).saturating_mul(86_400)),
            allow_unauthenticated: flags.allow_unauthenticated || allow_unauth.unwrap_or(false),
            secret_store,
            passphrase: env("SWITCHYARD_PASSPHRASE").filter(|v| !v.is_empty()).map(SecretString::from),
            strict_permissions: flags.strict_permissions || strict.unwrap_or(false),
            database,
            encryption_key: env("SWITCHYARD_ENCRYPTION_KEY").filter(|v| !v.is_empty()).map(SecretString::from),
        })
    }

    /// The settings that decide where the encryption key lives.
    /// Whether the data key is kept in the shared database, wrapped under `SWITCHYARD_PASSPHRASE`: on
    /// PostgreSQL with a passphrase and without `SWITCHYARD_ENCRYPTION_KEY`.
    pub fn keys_in_database(&self) -> bool {
        self.database.is_some() && self.encryption_key.is_none() && self.passphrase.is_some()
    }

    pub fn secret_settings(&self) -> SecretSettings {
        SecretSettings {
            home: self.home.clone(),
            choice: self.secret_store,
            passphrase: self.passphrase.clone(),
            env_key: self.encryption_key.clone(),
        }
    }

    /// Path of the SQLite database.
    pub fn database_path(&self) -> PathBuf {
        self.home.join("switchyard.db")
    }

    /// The name this instance keeps its routing state under: `local` on SQLite (one machine); on a shared
    /// database the host name and a digest of the data directory, stable across restarts and distinct
    /// between machines.
    pub fn instance_name(&self) -> String {
        if self.database.is_none() {
            return "local".to_owned();
        }
        use sha2::Digest;
        let host = host_name();
        let digest = sha2::Sha256::digest(self.home.to_string_lossy().as_bytes());
        format!("{host}-{:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3])
    }

    /// Where the state lives, for messages: the SQLite file, or the PostgreSQL URL without its password.
    pub fn database_description(&self) -> String {
        match &self.database {
            Some(pg) => crate::store::redacted_url(&pg.url),
            None => self.database_path().display().to_string(),
        }
    }
}

fn read_file(path: &Path) -> Result<RawFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_owned(), cause })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<RawFile, ConfigError> {
    toml::from_str(text).map_err(|e| {
        // One line: where, then what (toml's own text draws the line with a caret over several lines).
        let at = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        ConfigError::Parse {
            path: path.to_owned(),
            message: format!("{}{}", at.unwrap_or_default(), e.message().trim()),
        }
    })
}

/// Environment variables whose value is validated after it is read, and the config-file key each stands
/// for, so an error names where the bad value really came from.
const FILE_KEYS: &[(&str, &str)] = &[
    ("SWITCHYARD_LB_STRATEGY", "routing.strategy"),
    ("SWITCHYARD_AFFINITY", "routing.affinity"),
    ("SWITCHYARD_RETRY_BACKOFF", "routing.retry_backoff"),
    ("SWITCHYARD_SECRET_STORE", "secrets.store"),
    ("SWITCHYARD_IDENTITY", "upstream.identity"),
    ("SWITCHYARD_UPSTREAM_URL", "upstream.url"),
    ("SWITCHYARD_UPSTREAM_PINS", "upstream.pins"),
    ("SWITCHYARD_DATABASE_URL", "store.database_url"),
    ("SWITCHYARD_OAUTH_PINS", "oauth.pins"),
    ("SWITCHYARD_LOG_FORMAT", "log.format"),
    ("SWITCHYARD_PAYLOADS", "requests.payloads"),
    ("SWITCHYARD_REDACT", "requests.redact"),
    ("SWITCHYARD_BODY_LIMIT", "server.body_limit"),
    ("SWITCHYARD_ALLOWED_IPS", "server.allowed_ips"),
    ("SWITCHYARD_ALLOWED_ORIGINS", "server.allowed_origins"),
    ("SWITCHYARD_TLS_CERT", "server.tls_cert"),
    ("SWITCHYARD_ALERT_WEBHOOK_URL", "alerts.webhook_url"),
    ("SWITCHYARD_OAUTH_AUTHORIZE_URL", "oauth.authorize_url"),
    ("SWITCHYARD_OAUTH_CONSOLE_AUTHORIZE_URL", "oauth.console_authorize_url"),
    ("SWITCHYARD_OAUTH_TOKEN_URL", "oauth.token_url"),
    ("SWITCHYARD_OAUTH_REDIRECT_URI", "oauth.redirect_uri"),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn load(flags: &Overrides, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load_with(flags, &move |k| map.get(k).cloned())
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nhost = \"0.0.0.0\"\nport = 1000\n[log]\nlevel = \"debug\"\n").unwrap();
        let path = file.to_str().unwrap();
        let home = dir.path().to_str().unwrap();
        let c = load(&Overrides::default(), &[("SWITCHYARD_CONFIG", path), ("SWITCHYARD_HOME", home)]).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.log_level.as_str()), ("0.0.0.0", 1000, "debug"));
        let vars = [("SWITCHYARD_CONFIG", path), ("SWITCHYARD_HOME", home), ("SWITCHYARD_PORT", "2000")];
        let c = load(&Overrides::default(), &vars).unwrap();
        assert_eq!(c.port, 2000);
        let flags = Overrides { port: Some(3000), ..Overrides::default() };
        assert_eq!(load(&flags, &vars).unwrap().port, 3000);
    }

    #[test]
    fn defaults_are_loopback_and_anthropic() {
        let c = load(&Overrides::default(), &[("SWITCHYARD_HOME", "/nonexistent-sy")]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8080));
        assert_eq!(c.upstream_url.as_str(), "https://api.anthropic.com/");
        assert_eq!(c.identity, IdentityMode::Inject);
        assert_eq!(c.refresh_margin, Duration::from_secs(300));
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nprot = 1\n").unwrap();
        let err = load(&Overrides::default(), &[("SWITCHYARD_CONFIG", file.to_str().unwrap())]).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let err = load(&Overrides::default(), &[("SWITCHYARD_HOME", "/x"), ("SWITCHYARD_PORT", "http")]).unwrap_err();
        assert!(err.to_string().contains("SWITCHYARD_PORT"), "{err}");
        let err = load(&Overrides::default(), &[("SWITCHYARD_HOME", "/x"), ("SWITCHYARD_IDENTITY", "x")]).unwrap_err();
        assert!(err.to_string().contains("SWITCHYARD_IDENTITY"), "{err}");
    }
}
