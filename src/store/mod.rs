//! Durable state behind the [`Store`] traits, one per concern: SQLite in the data directory (one machine),
//! or PostgreSQL shared by several instances. Tokens arrive here already sealed by `secrets`.

mod postgres;
mod rows;
mod sqlite;

use async_trait::async_trait;

pub use postgres::{PgSettings, PgStore, redacted_url};
pub use sqlite::SqliteStore;

/// What kind of credential an account holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// Claude Pro/Max subscription: OAuth access + refresh token.
    OAuth,
    /// Anthropic API key (`x-api-key`).
    ApiKey,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OAuth => "oauth",
            Self::ApiKey => "api_key",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "oauth" => Ok(Self::OAuth),
            "api_key" => Ok(Self::ApiKey),
            _ => Err(StoreError::Corrupt(format!("unknown account kind {s:?}"))),
        }
    }
}

/// Whether the router may use an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    /// The refresh token was refused (`invalid_grant`): only a new login helps.
    NeedsLogin,
    /// Taken out of rotation by the operator.
    Paused,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsLogin => "needs-login",
            Self::Paused => "paused",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(Self::Active),
            "needs-login" => Ok(Self::NeedsLogin),
            "paused" => Ok(Self::Paused),
            _ => Err(StoreError::Corrupt(format!("unknown account status {s:?}"))),
        }
    }
}

/// An account row. Token fields hold `secrets::Cipher` envelopes, never plaintext.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    pub id: String,
    pub name: String,
    pub kind: AccountKind,
    pub status: AccountStatus,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub api_key: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub email: Option<String>,
    pub account_uuid: Option<String>,
    pub org_uuid: Option<String>,
    pub org_name: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Lower is preferred; set by the operator, not written by `save_account`.
    pub priority: i64,
    /// Share under the weighted strategy; set by the operator, not written by `save_account`.
    pub weight: i64,
    /// Subscription plan (`max`, `pro`, …) learned from the profile endpoint.
    pub plan: Option<String>,
    /// Bumped by every token write; a write naming an older version is refused.
    pub token_version: i64,
}

/// A serving instance, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceRecord {
    /// The name it keeps its routing state under (host and data directory).
    pub id: String,
    pub host: String,
    pub version: String,
    /// Where it listens.
    pub address: String,
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
    /// The data-key version it seals with.
    pub key_version: u32,
}

/// One instance's routing state of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub account_id: String,
    pub instance: String,
    /// The pool's JSON (rate-limit windows, usage, counters).
    pub state: String,
    pub updated_at_ms: i64,
}

/// A rotated OAuth pair, sealed.
#[derive(Debug, Clone)]
pub struct SealedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at_ms: i64,
}

/// The sealed token columns of one account, for re-encryption and backups.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub id: String,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub api_key: Option<String>,
    /// The `token_version` the values were read at: the row is replaced only if it still is that (a pair
    /// a running instance wrote meanwhile is newer, and already sealed with the new key).
    pub token_version: i64,
}

/// A kept payload's sealed bodies, for re-encryption.
#[derive(Debug, Clone)]
pub struct SealedPayload {
    pub request_id: String,
    pub request: Option<String>,
    pub response: Option<String>,
}

/// Every sealed value of the store, re-sealed under a new key, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Resealed {
    pub accounts: Vec<SealedRow>,
    /// Sealed settings (the TOTP secret): key and new value.
    pub settings: Vec<(String, String)>,
    pub payloads: Vec<SealedPayload>,
}

/// A client API key: only the SHA-256 of the key is stored.
#[derive(Debug, Clone, Default)]
pub struct ClientKeyRecord {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    pub role: String,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    /// Comma-separated account names the key may route to; `None`: all.
    pub accounts: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub updated_at_ms: i64,
    pub budget_usd_day: Option<f64>,
    pub budget_usd_month: Option<f64>,
    pub budget_tokens_day: Option<i64>,
}

/// Spend limits of a client key; `None` leaves a limit as it is (or unset).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budgets {
    pub usd_day: Option<f64>,
    pub usd_month: Option<f64>,
    pub tokens_day: Option<i64>,
}

/// One proxied request, as the request log keeps it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RequestRow {
    pub id: String,
    pub at_ms: i64,
    pub client_key: Option<String>,
    pub account: Option<String>,
    /// Accounts tried before the answer, comma-separated, in order.
    pub accounts_tried: String,
    pub attempts: i64,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
    pub status: i64,
    pub error_type: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub ttfb_ms: Option<i64>,
    pub duration_ms: i64,
    pub ratelimit_status: Option<String>,
    pub cost_usd: f64,
    /// The client's dialect (`anthropic`, `openai`); `None` in rows older than dialects.
    pub dialect: Option<String>,
    /// Sealed, redacted request body, when payloads are kept.
    #[serde(skip)]
    pub payload_request: Option<String>,
    /// Sealed, redacted response body, when payloads are kept.
    #[serde(skip)]
    pub payload_response: Option<String>,
}

/// Which requests to list: all given conditions hold.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub since_ms: i64,
    /// Only requests that started before this time (epoch ms).
    pub until_ms: Option<i64>,
    /// Only requests strictly older than this one (`at_ms`, `id`): the cursor of the next page.
    pub before: Option<(i64, String)>,
    pub account: Option<String>,
    pub model: Option<String>,
    pub status: Option<i64>,
    pub client_key: Option<String>,
    pub limit: i64,
}

/// What requests are grouped by in `request_stats`; a request without one falls in group `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsBy {
    Account,
    Model,
    Key,
    /// The client's dialect (`anthropic`, `openai`).
    Dialect,
    /// One group, `all`.
    All,
}

impl StatsBy {
    /// `account`, `model`, `key`; anything else is `All`.
    pub fn parse(text: &str) -> Self {
        match text {
            "account" => Self::Account,
            "model" => Self::Model,
            "key" => Self::Key,
            "dialect" => Self::Dialect,
            _ => Self::All,
        }
    }
}

/// Requests of one group, summed.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    pub group: String,
    pub requests: i64,
    /// Answered with a status of 400 or more, or broken off (`error_type` set).
    pub errors: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cost_usd: f64,
    pub p50_ms: i64,
    pub p95_ms: i64,
}

/// Requests in one bucket of time.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesPoint {
    /// Start of the bucket (epoch ms).
    pub at_ms: i64,
    pub requests: i64,
    /// Answered with a status of 400 or more, or broken off (`error_type` set).
    pub errors: i64,
    /// Input tokens, cache reads and cache writes included.
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

/// One line of the audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// Who: `cli:<user>`, `key:<name>`, `session:<id prefix>`.
    pub actor: String,
    /// From where: `cli`, or the client's IP address.
    pub source: String,
    pub action: String,
    pub target: String,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    pub detail: String,
}

/// A login waiting for its `CODE#STATE`, keyed by state. The verifier is sealed.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    pub state: String,
    pub verifier: String,
    pub redirect_uri: String,
    pub console: bool,
    pub account: Option<String>,
    pub expires_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row of that name exists: `what` is "an account" or "a client key".
    #[error("{what} named {name:?} already exists")]
    Duplicate { what: &'static str, name: String },
    /// The database refused or failed; `retryable` says whether trying again may help (busy, locked, a
    /// serialization failure, a lost connection) or not (a constraint, bad SQL, a full disk).
    #[error("database error: {source}")]
    Database {
        #[source]
        source: sqlx::Error,
        retryable: bool,
    },
    /// The schema in the database is newer than this binary knows: another instance was upgraded.
    #[error(
        "the database schema is version {found}, newer than this switchyard understands (it knows up to {known}); \
         upgrade this instance"
    )]
    TooNew { found: i64, known: i64 },
    #[error("database content is invalid: {0}")]
    Corrupt(String),
    #[error("cannot prepare the database file: {0}")]
    Io(#[from] std::io::Error),
    /// The database named in the configuration cannot be reached: where (never the password) and why.
    #[error("cannot reach the database at {place}: {cause}")]
    Unreachable { place: String, cause: String },
    /// The database settings are unusable.
    #[error("{0}")]
    Config(String),
}

impl StoreError {
    /// Whether trying the same operation again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Database { retryable: true, .. } | Self::Unreachable { .. })
    }

    /// A database error, classified: connection trouble and the codes that mean "busy" or "try again"
    /// (SQLite `SQLITE_BUSY`/`SQLITE_LOCKED`, PostgreSQL class 40 and 08, `55P03`, `57P01`) may pass.
    pub fn from_sqlx(e: sqlx::Error) -> Self {
        let retryable = match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                return Self::Duplicate { what: "a row", name: String::new() };
            }
            sqlx::Error::Database(d) => d.code().is_some_and(|code| {
                let code = code.as_ref();
                // SQLite: 5 busy, 6 locked, and their extended codes (5 + 256·n, 6 + 256·n).
                let sqlite = code.parse::<i64>().is_ok_and(|n| matches!(n & 0xff, 5 | 6));
                let postgres = code.starts_with("40") || code.starts_with("08") || matches!(code, "55P03" | "57P01");
                sqlite || postgres
            }),
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => true,
            _ => false,
        };
        Self::Database { source: e, retryable }
    }
}

/// Durable storage, split by concern; every backend implements every part, checked by one contract suite
/// (`tests/store_contract.rs`). Every write returns only once it is committed: a crash after `Ok` loses
/// nothing. Errors say whether a retry may help ([`StoreError::retryable`]).
pub trait Store:
    AccountStore
    + RoutingStore
    + ClientKeyStore
    + SettingStore
    + AuditStore
    + RequestStore
    + LoginStore
    + SealedStore
    + InstanceStore
    + Send
    + Sync
    + std::fmt::Debug
{
}

impl<T> Store for T where
    T: AccountStore
        + RoutingStore
        + ClientKeyStore
        + SettingStore
        + AuditStore
        + RequestStore
        + LoginStore
        + SealedStore
        + InstanceStore
        + Send
        + Sync
        + std::fmt::Debug
{
}

/// Accounts and their sealed tokens.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Every account, oldest first (then by name).
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>, StoreError>;
    /// The account named `name`, if any.
    async fn find_account(&self, name: &str) -> Result<Option<AccountRecord>, StoreError>;
    /// Insert, or replace the row with the same id (its tokens too: the token version moves on, and any
    /// refresh lease ends). A different account with the same name is `Duplicate`.
    async fn save_account(&self, record: &AccountRecord) -> Result<(), StoreError>;
    /// Replace an account's OAuth pair, mark it active and end any refresh lease. With `expected`, only if
    /// the stored `token_version` still is that (compare-and-swap: a writer holding an older pair never
    /// overwrites a newer one); `None` writes unconditionally (a new login). Returns the new version, or
    /// `None` when the account is gone or its version moved on.
    async fn update_tokens(
        &self,
        id: &str,
        tokens: &SealedTokens,
        expected: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// Take the refresh lease of account `id` for `holder` until `until_ms`, if no other holder has an
    /// unexpired one; on success the account as stored now (read inside the lease: another instance may
    /// have refreshed it already). `None`: someone else holds it, or the account is gone.
    async fn take_refresh_lease(
        &self,
        id: &str,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<AccountRecord>, StoreError>;
    /// Give the lease back (the refresh failed); a lease held by another holder is left alone.
    async fn release_refresh_lease(&self, id: &str, holder: &str) -> Result<(), StoreError>;
    /// End every lease whose holder starts with `prefix` but is not `current`: those of an earlier run of
    /// this instance, which died holding them (one process per data directory makes that certain).
    async fn release_stale_leases(&self, prefix: &str, current: &str) -> Result<u64, StoreError>;
    /// Set an account's status. Returns false when the account is gone.
    async fn set_status(&self, id: &str, status: AccountStatus, now_ms: i64) -> Result<bool, StoreError>;
    /// Returns false when no account had that name.
    async fn remove_account(&self, name: &str) -> Result<bool, StoreError>;
    /// Change an account's priority and/or weight. Returns false when the account is gone.
    async fn set_routing(
        &self,
        id: &str,
        priority: Option<i64>,
        weight: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Record the plan learned from the profile endpoint (not a change the reload must act on).
    async fn set_plan(&self, id: &str, plan: &str) -> Result<(), StoreError>;
}

/// Routing state per account (rate limits, usage, counters), written by the pool off the hot path.
#[async_trait]
pub trait RoutingStore: Send + Sync {
    /// Every routing state row: one per account and instance, as the JSON each instance's pool wrote.
    async fn load_states(&self) -> Result<Vec<StateRow>, StoreError>;
    /// Write this `instance`'s routing states in one transaction; states of accounts removed meanwhile are
    /// dropped. Other instances' rows are never touched.
    async fn save_states(&self, instance: &str, states: &[(String, String)], now_ms: i64) -> Result<(), StoreError>;
}

/// Client API keys (hashes only), their budgets and what they spent.
#[async_trait]
pub trait ClientKeyStore: Send + Sync {
    /// The key whose SHA-256 (hex) is `hash`, if any: a key created through another instance, looked up
    /// before it is refused.
    async fn find_client_key_by_hash(&self, hash: &str) -> Result<Option<ClientKeyRecord>, StoreError>;
    /// Every client key, revoked and expired ones included.
    async fn list_client_keys(&self) -> Result<Vec<ClientKeyRecord>, StoreError>;
    /// A key of the same name is `Duplicate`.
    async fn insert_client_key(&self, key: &ClientKeyRecord) -> Result<(), StoreError>;
    /// Returns false when no active key had that name.
    async fn revoke_client_key(&self, name: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Give a key a new secret (and un-revoke it). Returns false when no key had that name.
    async fn rehash_client_key(&self, name: &str, hash: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Set a key's budgets (given values only). Returns false when no key had that name.
    async fn set_client_key_budgets(&self, name: &str, budgets: &Budgets, now_ms: i64) -> Result<bool, StoreError>;
    /// Spend per client key since `since_ms`: (key name, USD, tokens).
    async fn spend_since(&self, since_ms: i64) -> Result<Vec<(String, f64, i64)>, StoreError>;
}

/// Small named values: the admin password and TOTP secret, session epochs, the one-time login link.
#[async_trait]
pub trait SettingStore: Send + Sync {
    /// Every setting, by name (for `store copy`).
    async fn list_settings(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Set a setting to `new` only if it still holds `expected` (`None`: only if it is not set),
    /// atomically; true when this call set it (of several instances claiming one value, one wins).
    async fn claim_setting(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// A setting's value, if set.
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Set (or with `None` delete) a setting.
    async fn put_setting(&self, key: &str, value: Option<&str>, now_ms: i64) -> Result<(), StoreError>;
    /// Delete a setting only if it still holds `value`, atomically; true when this call deleted it (so of
    /// two callers racing for a single-use value, exactly one wins).
    async fn take_setting(&self, key: &str, value: &str) -> Result<bool, StoreError>;
}

/// The audit log of administrative actions.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Append one audit entry; committed before it returns.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Audit entries since `since_ms`, newest first (like every other listing).
    async fn list_audit(&self, since_ms: i64) -> Result<Vec<AuditEntry>, StoreError>;
}

/// The request log and the payloads kept with it.
#[async_trait]
pub trait RequestStore: Send + Sync {
    /// Append request-log rows in one transaction.
    async fn insert_requests(&self, rows: &[RequestRow]) -> Result<(), StoreError>;
    /// The newest requests matching `filter`, newest first (ties broken by id, so pages never overlap).
    async fn find_requests(&self, filter: &RequestFilter) -> Result<Vec<RequestRow>, StoreError>;
    /// Requests since `since_ms` summed per group (`by`: account, model, client key, or all in one), with
    /// the 50th and 95th percentile of their durations (nearest rank); groups in name order.
    async fn request_stats(&self, since_ms: i64, by: StatsBy) -> Result<Vec<GroupStats>, StoreError>;
    /// Requests since `since_ms` summed per `bucket_ms` of time, oldest bucket first (empty buckets left out).
    async fn request_series(&self, since_ms: i64, bucket_ms: i64) -> Result<Vec<SeriesPoint>, StoreError>;
    /// Delete (or with `dry_run` count) requests older than `before_ms`.
    async fn delete_requests_before(&self, before_ms: i64, dry_run: bool) -> Result<u64, StoreError>;
    /// One request by id.
    async fn get_request(&self, id: &str) -> Result<Option<RequestRow>, StoreError>;
    /// The sealed (request, response) bodies kept for request `id`.
    async fn get_payload(&self, id: &str) -> Result<Option<(Option<String>, Option<String>)>, StoreError>;
    /// Delete (or with `dry_run` count) payloads older than `before_ms`.
    async fn delete_payloads_before(&self, before_ms: i64, dry_run: bool) -> Result<u64, StoreError>;
    /// Every kept payload's sealed bodies (for re-encryption; an offline command, not the hot path).
    async fn list_payloads(&self) -> Result<Vec<SealedPayload>, StoreError>;
}

/// OAuth logins waiting for their code.
#[async_trait]
pub trait LoginStore: Send + Sync {
    /// Keep a pending login (its verifier sealed) until it is taken or expires; a second one with the
    /// same state replaces the first.
    async fn put_pending_login(&self, pending: &PendingLogin) -> Result<(), StoreError>;
    /// Remove and return the pending login for `state` if it has not expired; expired ones are purged.
    async fn take_pending_login(&self, state: &str, now_ms: i64) -> Result<Option<PendingLogin>, StoreError>;
    /// Drop every pending login (their verifiers cannot outlive a key rotation).
    async fn clear_pending_logins(&self) -> Result<u64, StoreError>;
}

/// Every sealed value at once, for key rotation and status; and upkeep of the storage itself.
#[async_trait]
pub trait SealedStore: Send + Sync {
    /// Replace the sealed token columns of many accounts in one transaction (key rotation): all or none.
    /// Write every re-sealed value (accounts, sealed settings, payloads) in one transaction: all or none.
    async fn replace_sealed(&self, sealed: &Resealed) -> Result<(), StoreError>;
    /// Sealed values held: tokens and keys of accounts, plus pending login verifiers.
    async fn count_secrets(&self) -> Result<u64, StoreError>;
    /// Give freed pages back to the file system.
    async fn vacuum(&self) -> Result<(), StoreError>;
}

/// Heartbeats of the instances serving from this store.
#[async_trait]
pub trait InstanceStore: Send + Sync {
    /// Write (insert or refresh) this instance's heartbeat.
    async fn heartbeat(&self, instance: &InstanceRecord) -> Result<(), StoreError>;
    /// Every instance that ever beat, most recently seen first.
    async fn list_instances(&self) -> Result<Vec<InstanceRecord>, StoreError>;
    /// Forget instances not seen since `before_ms`.
    async fn forget_instances(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// A signal raised soon after another process commits a change to accounts, client keys, settings
    /// (sessions among them) or routing state, or `None` when this backend has no push (then the periodic
    /// check is all there is). Raised also after the feed reconnects, since announcements made while it was
    /// away are lost. Signals coalesce: one wake may stand for many changes. Holds one connection.
    async fn change_feed(&self) -> Result<Option<std::sync::Arc<tokio::sync::Notify>>, StoreError>;
}
