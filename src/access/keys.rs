//! Client API keys and what they may do.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::MinuteWindow;
use crate::store::{AuditEntry, Budgets, ClientKeyRecord, Store, StoreError};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ApiRequest,
    DashboardView,
    LogsView,
    AccountsManage,
    KeysManage,
}

/// Bundles of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// `api.request`.
    User,
    /// `dashboard.view`.
    Viewer,
}

impl Role {
    pub fn allows(self, permission: Permission) -> bool {
        match self {
            Self::Admin => true,
            Self::User => permission == Permission::ApiRequest,
            Self::Viewer => permission == Permission::DashboardView,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            "viewer" => Ok(Self::Viewer),
            other => Err(format!("unknown role {other:?}: expected admin, user or viewer")),
        }
    }
}

/// A new key: `sy-` and 256 bits of OS randomness, base64url.
pub fn generate_key() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(format!("sy-{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Hex SHA-256 of a key: what the store keeps. The key has 256 bits of entropy, so a fast hash suffices.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()).into())
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `30d`, `12h`, `90m` → epoch ms from now.
pub fn parse_expiry(text: &str, now_ms: i64) -> Result<i64, String> {
    let d = humantime::parse_duration(text)
        .map_err(|_| format!("expiry {text:?} is not a duration; use a number and a unit, like 12h or 30d"))?;
    if d.is_zero() {
        return Err(format!("expiry {text:?} would end the key before it is used; give a lifetime like 12h or 30d"));
    }
    Ok(now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NewKeyError {
    /// The caller asked for something impossible (empty name, unknown account): fix and resend.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key as the hot path sees it, with its live limiters.
pub struct ClientKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the key's secret.
    pub(crate) hash: [u8; 32],
    pub accounts: Option<Vec<String>>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    updated_at_ms: i64,
    /// This instance's part of the limits below when they were built.
    share: Share,
    rpm: Option<MinuteWindow>,
    tpm: Option<MinuteWindow>,
    pub concurrency: Option<Arc<Semaphore>>,
    pub budgets: Budgets,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

fn per_minute(n: Option<i64>) -> Option<MinuteWindow> {
    MinuteWindow::new(n?)
}

/// A per-minute `limit` divided among the live instances, rounded up (a share is never zero): together
/// they admit the limit plus at most one per instance, within 10 % once the limit is ten per instance.
fn split_rate(limit: Option<i64>, share: Share) -> Option<i64> {
    let of = i64::try_from(share.of.max(1)).unwrap_or(1);
    limit.map(|l| (l + of - 1) / of).map(|l| l.max(1))
}

/// A concurrency `limit` divided exactly: the first `limit % of` instances take one more than the rest,
/// so the parts add up to the limit. A part may be zero (a limit of 2 over three instances): that
/// instance refuses the key's requests as over the limit, since no slot is left for it.
fn split_slots(limit: Option<i64>, share: Share) -> Option<usize> {
    let limit = u64::try_from(limit?).ok()?;
    let of = share.of.max(1);
    let part = limit / of + u64::from(share.rank < limit % of);
    usize::try_from(part).ok()
}

impl ClientKey {
    /// The key a record describes, its per-minute and concurrency limits divided among the live
    /// instances by `share` (each enforces its part, so together they hold the limit).
    fn from_record(r: &ClientKeyRecord, share: Share) -> Option<Self> {
        let mut hash = [0u8; 32];
        for (i, chunk) in r.hash.as_bytes().chunks(2).enumerate().take(32) {
            hash[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        }
        Some(Self {
            id: r.id.clone(),
            name: r.name.clone(),
            role: r.role.parse().ok()?,
            hash,
            accounts: r
                .accounts
                .as_ref()
                .map(|a| a.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()),
            expires_at_ms: r.expires_at_ms,
            revoked: r.revoked_at_ms.is_some(),
            updated_at_ms: r.updated_at_ms,
            share,
            rpm: per_minute(split_rate(r.rpm, share)),
            tpm: per_minute(split_rate(r.tpm, share)),
            concurrency: split_slots(r.concurrency.filter(|c| *c > 0), share).map(|c| Arc::new(Semaphore::new(c))),
            budgets: Budgets {
                usd_day: r.budget_usd_day,
                usd_month: r.budget_usd_month,
                tokens_day: r.budget_tokens_day,
            },
        })
    }

    /// Seconds to wait when one more request at `now_ms` is over the key's per-minute limit.
    pub fn check_rpm(&self, now_ms: i64) -> Result<(), u64> {
        self.rpm.as_ref().map_or(Ok(()), |w| w.take(1, now_ms))
    }

    /// Seconds to wait when `tokens` more input tokens this minute are over the key's limit.
    pub fn check_tpm(&self, tokens: u32, now_ms: i64) -> Result<(), u64> {
        self.tpm.as_ref().map_or(Ok(()), |w| w.take(u64::from(tokens.max(1)), now_ms))
    }
}

/// The result of checking a presented key.
#[derive(Debug)]
pub enum KeyCheck {
    Valid(Arc<ClientKey>),
    Missing,
    Unknown,
    Revoked(String),
    Expired(String),
}

/// All client keys, for the hot path, and what they have spent.
#[derive(Debug, Default)]
pub struct ClientKeys {
    keys: RwLock<Vec<Arc<ClientKey>>>,
    pub spend: SpendBook,
    /// Hashes looked up in the store and not found, with when: one query per distinct key per second.
    misses: std::sync::Mutex<std::collections::HashMap<[u8; 32], i64>>,
    /// This instance's part of per-key limits among the live instances sharing the store.
    share: std::sync::Mutex<Share>,
}

/// Where this instance stands among the live instances sharing a store: per-key limits are split by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This instance's place, from 0, in an order every instance agrees on (their ids sorted).
    pub rank: u64,
    /// How many live instances there are (at least one).
    pub of: u64,
}

impl Default for Share {
    fn default() -> Self {
        Share { rank: 0, of: 1 }
    }
}

/// Distinct unknown keys remembered; past this the oldest half is forgotten.
const MAX_MISSES: usize = 10_000;
/// How long a key the store did not know stays refused without asking again.
const MISS_TTL_MS: i64 = 1_000;

impl ClientKeys {
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let keys = Self::default();
        keys.reload(store).await?;
        keys.spend.load(store, crate::now_ms()).await?;
        Ok(keys)
    }

    /// Pick up keys created, revoked or rotated by the CLI; unchanged keys keep their limiter state.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let records = store.list_client_keys().await?;
        let share = self.share();
        let current = self.snapshot();
        let next: Vec<Arc<ClientKey>> = records
            .iter()
            .filter_map(|r| {
                let same =
                    current.iter().find(|k| k.id == r.id && k.updated_at_ms == r.updated_at_ms && k.share == share);
                match same {
                    Some(same) => Some(same.clone()),
                    None => ClientKey::from_record(r, share).map(Arc::new),
                }
            })
            .collect();
        match self.keys.write() {
            Ok(mut k) => *k = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<Arc<ClientKey>> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// [`ClientKeys::check`], and for a key not in memory one look in the store before it is refused: a key
    /// created a moment ago (through another instance, or the CLI before the next reload) works at once.
    /// A key the store does not know is remembered for a second, so a flood of wrong keys costs at most
    /// one query per distinct key per second. Valid keys in memory never wait on the store.
    pub async fn check_or_lookup(&self, store: &dyn Store, presented: Option<&str>, now_ms: i64) -> KeyCheck {
        let checked = self.check(presented, now_ms);
        let (KeyCheck::Unknown, Some(presented)) = (&checked, presented) else { return checked };
        // `check` just hashed it: this thread remembers the digest.
        let digest = digest_of(presented);
        {
            let mut misses = self.misses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if misses.get(&digest).is_some_and(|at| now_ms - at < MISS_TTL_MS) {
                return KeyCheck::Unknown;
            }
            if misses.len() >= MAX_MISSES {
                misses.retain(|_, at| now_ms - *at < MISS_TTL_MS);
                if misses.len() >= MAX_MISSES {
                    // A flood of distinct keys: refuse without asking until it thins out.
                    return KeyCheck::Unknown;
                }
            }
            misses.insert(digest, now_ms);
        }
        let Ok(Some(record)) = store.find_client_key_by_hash(&hex(&digest)).await else {
            return KeyCheck::Unknown;
        };
        let Some(key) = ClientKey::from_record(&record, self.share()).map(Arc::new) else {
            return KeyCheck::Unknown;
        };
        self.misses.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&digest);
        match self.keys.write() {
            Ok(mut keys) => {
                keys.retain(|k| k.id != key.id);
                keys.push(key);
            }
            Err(poisoned) => poisoned.into_inner().push(key),
        }
        self.check(Some(presented), now_ms)
    }

    /// Whether the key `id` is still active with the secret whose hash is `hash` (not revoked, expired or
    /// rotated since): what a session started with that key lives on.
    pub fn is_current(&self, id: &str, hash: &[u8; 32], now: i64) -> bool {
        use subtle::ConstantTimeEq;
        self.snapshot().iter().any(|k| {
            k.id == id && !k.revoked && k.expires_at_ms.is_none_or(|e| e > now) && bool::from(k.hash.ct_eq(hash))
        })
    }

    /// Whether an active key with `role` exists.
    pub fn has_role(&self, role: Role) -> bool {
        let now = crate::now_ms();
        self.snapshot().iter().any(|k| k.role == role && !k.revoked && k.expires_at_ms.is_none_or(|e| e > now))
    }

    /// How many live instances share the limits (at least one).
    pub fn instances(&self) -> u64 {
        self.share().of
    }

    /// This instance's part of the per-key limits.
    fn share(&self) -> Share {
        *self.share.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Set this instance's place among the live ones (`rank` of `live`, counted from 0 in a order all
    /// instances agree on); true when it changed (the caller reloads the keys, which rebuilds their
    /// limiters with the new share: counts so far start over).
    pub fn set_share(&self, rank: u64, live: u64) -> bool {
        let live = live.max(1);
        let next = Share { rank: rank.min(live - 1), of: live };
        let mut share = self.share.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *share, next) != next
    }

    /// Whether any key has a budget (only then is spend worth sharing between instances).
    pub fn any_budget(&self) -> bool {
        self.snapshot().iter().any(|k| {
            let b = k.budgets;
            b.usd_day.is_some() || b.usd_month.is_some() || b.tokens_day.is_some()
        })
    }

    pub fn any(&self) -> bool {
        !self.snapshot().is_empty()
    }

    /// Check a presented key against every stored hash in constant time.
    pub fn check(&self, presented: Option<&str>, now_ms: i64) -> KeyCheck {
        let Some(presented) = presented.filter(|p| !p.is_empty()) else { return KeyCheck::Missing };
        let digest = digest_of(presented);
        let mut found: Option<&Arc<ClientKey>> = None;
        // Under the read lock, without copying the list: no reference count of every key touched from
        // both cores on every request.
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in keys.iter() {
            if bool::from(key.hash.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let found = found.cloned();
        drop(keys);
        match found {
            None => KeyCheck::Unknown,
            Some(k) if k.revoked => KeyCheck::Revoked(k.name.clone()),
            Some(k) if k.expires_at_ms.is_some_and(|e| e <= now_ms) => KeyCheck::Expired(k.name.clone()),
            Some(k) => KeyCheck::Valid(k),
        }
    }
}

/// Keys whose digest each connection thread remembers: a client sends the same key on every request, and
/// hashing it (SHA-256) was a twentieth of a proxied request's instructions.
const DIGEST_CACHE: usize = 8;

/// The SHA-256 of a presented key, from this thread's few most recent keys when it is one of them. The
/// keys are compared in constant time and wiped when they leave the cache.
fn digest_of(presented: &str) -> [u8; 32] {
    type Cache = std::cell::RefCell<Vec<(zeroize::Zeroizing<Vec<u8>>, [u8; 32])>>;
    thread_local! {
        static RECENT: Cache = const { std::cell::RefCell::new(Vec::new()) };
    }
    let bytes = presented.as_bytes();
    RECENT.with_borrow_mut(|recent| {
        let mut hit = None;
        for (i, (key, _)) in recent.iter().enumerate() {
            if key.len() == bytes.len() && bool::from(key.as_slice().ct_eq(bytes)) {
                hit = Some(i);
            }
        }
        if let Some(i) = hit {
            return recent[i].1;
        }
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if recent.len() >= DIGEST_CACHE {
            recent.remove(0);
        }
        recent.push((zeroize::Zeroizing::new(bytes.to_vec()), digest));
        digest
    })
}

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 → (year, month) in UTC (Howard Hinnant's civil-from-days).
fn year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// (year, month) → days since 1970-01-01 of its first day.
fn first_day(year: i64, month: i64) -> i64 {
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * m + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Every client key as `keys list --json` and the admin API show it: limits, budgets and spend today and
/// this month, a short fingerprint of the hash to tell keys apart, never the key.
pub async fn key_listing(store: &dyn Store, now: i64) -> Result<Vec<serde_json::Value>, StoreError> {
    let keys = store.list_client_keys().await?;
    let (day, _, month, _) = periods(now);
    let today: std::collections::HashMap<String, (f64, i64)> =
        store.spend_since(day).await?.into_iter().map(|(k, usd, tokens)| (k, (usd, tokens))).collect();
    let this_month: std::collections::HashMap<String, f64> =
        store.spend_since(month).await?.into_iter().map(|(k, usd, _)| (k, usd)).collect();
    Ok(keys
        .iter()
        .map(|k| {
            let status = if k.revoked_at_ms.is_some() {
                "revoked"
            } else if k.expires_at_ms.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            };
            serde_json::json!({
                "name": k.name,
                "role": k.role,
                "status": status,
                "revoked": k.revoked_at_ms.is_some(),
                "rpm": k.rpm,
                "tpm": k.tpm,
                "concurrency": k.concurrency,
                "accounts": k.accounts.as_ref().map(|a| a.split(',').collect::<Vec<_>>()),
                "created_at_ms": k.created_at_ms,
                "expires_at_ms": k.expires_at_ms,
                "fingerprint": k.hash.get(..8).unwrap_or_default(),
                "budget_usd_day": k.budget_usd_day,
                "budget_usd_month": k.budget_usd_month,
                "budget_tokens_day": k.budget_tokens_day,
                "spend_usd_today": today.get(&k.name).map_or(0.0, |s| s.0),
                "tokens_today": today.get(&k.name).map_or(0, |s| s.1),
                "spend_usd_month": this_month.get(&k.name).copied().unwrap_or(0.0),
            })
        })
        .collect())
}

/// Start of the UTC day and month containing `ms`, and the start of the next ones.
pub fn periods(ms: i64) -> (i64, i64, i64, i64) {
    let day = ms.div_euclid(DAY_MS);
    let (y, m) = year_month(day);
    let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (day * DAY_MS, (day + 1) * DAY_MS, first_day(y, m) * DAY_MS, first_day(next.0, next.1) * DAY_MS)
}

#[derive(Debug, Default, Clone, Copy)]
struct KeySpend {
    day_start: i64,
    usd_day: f64,
    tokens_day: i64,
    month_start: i64,
    usd_month: f64,
}

/// Spend per client key for the current UTC day and month, kept in memory (loaded from the request log at
/// start, added to as requests finish) so budget checks never touch the database.
#[derive(Debug, Default)]
pub struct SpendBook {
    map: std::sync::Mutex<std::collections::HashMap<String, KeySpend>>,
}

impl SpendBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, KeySpend>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn load(&self, store: &dyn Store, now_ms: i64) -> Result<(), StoreError> {
        let (day, _, month, _) = periods(now_ms);
        let by_month = store.spend_since(month).await?;
        let by_day = store.spend_since(day).await?;
        let mut map = self.lock();
        for (key, usd, _) in by_month {
            map.entry(key).or_default().usd_month = usd;
        }
        for (key, usd, tokens) in by_day {
            let e = map.entry(key).or_default();
            e.usd_day = usd;
            e.tokens_day = tokens;
        }
        for e in map.values_mut() {
            e.day_start = day;
            e.month_start = month;
        }
        Ok(())
    }

    fn current(e: &mut KeySpend, now_ms: i64) {
        let (day, _, month, _) = periods(now_ms);
        if e.day_start != day {
            *e = KeySpend { day_start: day, month_start: e.month_start, usd_month: e.usd_month, ..KeySpend::default() };
        }
        if e.month_start != month {
            e.month_start = month;
            e.usd_month = 0.0;
        }
    }

    /// Take in what every instance on the store has logged today and this month: each figure becomes the
    /// larger of this instance's own count and the store's sum. The store lags by the request log's
    /// write delay (about a second), so instances sharing a budget overspend it by at most what they
    /// spend in that time plus the requests already running.
    pub async fn share(&self, store: &dyn Store, now_ms: i64) -> Result<(), StoreError> {
        let (day, _, month, _) = periods(now_ms);
        let by_month = store.spend_since(month).await?;
        let by_day = store.spend_since(day).await?;
        let mut map = self.lock();
        for (key, usd, _) in by_month {
            let e = map.entry(key).or_default();
            Self::current(e, now_ms);
            e.usd_month = e.usd_month.max(usd);
        }
        for (key, usd, tokens) in by_day {
            let e = map.entry(key).or_default();
            Self::current(e, now_ms);
            e.usd_day = e.usd_day.max(usd);
            e.tokens_day = e.tokens_day.max(tokens);
        }
        Ok(())
    }

    pub fn add(&self, key: &str, usd: f64, tokens: i64, at_ms: i64) {
        let mut map = self.lock();
        let e = map.entry(key.to_owned()).or_default();
        Self::current(e, at_ms);
        e.usd_day += usd;
        e.usd_month += usd;
        e.tokens_day += tokens;
    }

    /// The budget `key` is over, as a message, and seconds until it resets.
    pub fn over_budget(&self, key: &ClientKey, now_ms: i64) -> Option<(String, u64)> {
        let b = key.budgets;
        if b.usd_day.is_none() && b.usd_month.is_none() && b.tokens_day.is_none() {
            return None;
        }
        let mut map = self.lock();
        let e = map.entry(key.name.clone()).or_default();
        Self::current(e, now_ms);
        let (_, next_day, _, next_month) = periods(now_ms);
        let wait = |until: i64| u64::try_from((until - now_ms) / 1000 + 1).unwrap_or(1);
        if let Some(limit) = b.usd_day.filter(|l| e.usd_day >= *l) {
            return Some((format!("daily spend budget of ${limit:.2} (resets at 00:00 UTC)"), wait(next_day)));
        }
        if let Some(limit) = b.tokens_day.filter(|l| e.tokens_day >= *l) {
            return Some((format!("daily token budget of {limit} (resets at 00:00 UTC)"), wait(next_day)));
        }
        if let Some(limit) = b.usd_month.filter(|l| e.usd_month >= *l) {
            return Some((
                format!("monthly spend budget of ${limit:.2} (resets on the 1st, 00:00 UTC)"),
                wait(next_month),
            ));
        }
        None
    }
}

/// What `keys create` stores.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub role: Option<Role>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    pub accounts: Option<Vec<String>>,
    pub expires_at_ms: Option<i64>,
    pub budgets: Budgets,
}

impl NewKey {
    /// Check the name and the accounts it is restricted to, then store the key's hash; returns the key
    /// itself, to be shown once.
    pub async fn create(&self, store: &dyn Store) -> Result<SecretString, NewKeyError> {
        crate::check_name("key", &self.name).map_err(NewKeyError::Invalid)?;
        if let Some(wanted) = &self.accounts {
            if wanted.is_empty() {
                return Err(NewKeyError::Invalid("the account restriction names no account".into()));
            }
            let known: Vec<String> = store.list_accounts().await?.into_iter().map(|a| a.name).collect();
            let unknown: Vec<&str> = wanted.iter().filter(|w| !known.contains(w)).map(String::as_str).collect();
            if !unknown.is_empty() {
                return Err(NewKeyError::Invalid(format!(
                    "no account named {} (accounts: {})",
                    unknown.join(", "),
                    if known.is_empty() { "none yet".to_owned() } else { known.join(", ") }
                )));
            }
        }
        let key = generate_key();
        let now = crate::now_ms();
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let record = ClientKeyRecord {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            name: self.name.clone(),
            hash: hash_key(key.expose_secret()),
            role: self.role.unwrap_or(Role::User).as_str().to_owned(),
            rpm: self.rpm,
            tpm: self.tpm,
            concurrency: self.concurrency,
            accounts: self.accounts.as_ref().map(|a| a.join(",")),
            created_at_ms: now,
            expires_at_ms: self.expires_at_ms,
            revoked_at_ms: None,
            updated_at_ms: now,
            budget_usd_day: self.budgets.usd_day,
            budget_usd_month: self.budgets.usd_month,
            budget_tokens_day: self.budgets.tokens_day,
        };
        store.insert_client_key(&record).await?;
        if self.role == Some(Role::Admin) {
            // A way in exists now: a login link printed earlier stops working.
            super::admin::end_login_link(store).await?;
        }
        Ok(key)
    }
}

/// Append an audit entry; a failure is logged, never fatal to the action it describes.
pub async fn audit(
    store: &dyn Store,
    actor: &str,
    source: Option<IpAddr>,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) {
    let entry = AuditEntry {
        at_ms: crate::now_ms(),
        actor: actor.to_owned(),
        source: source.map_or_else(|| "cli".to_owned(), |ip| ip.to_string()),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_owned(),
    };
    if let Err(e) = store.append_audit(&entry).await {
        tracing::error!(error = %e, action, "could not write the audit log");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    #[test]
    fn limits_split_over_instances_add_up() {
        let share = |rank, of| Share { rank, of };
        // Concurrency is split exactly: the parts add up to the limit, a part may be zero.
        for (limit, of) in [(2, 3), (7, 3), (1, 1), (10, 4), (3, 5)] {
            let parts: Vec<usize> = (0..of).map(|r| split_slots(Some(limit), share(r, of)).unwrap()).collect();
            assert_eq!(parts.iter().sum::<usize>(), usize::try_from(limit).unwrap(), "{limit} over {of}: {parts:?}");
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1, "{parts:?}");
        }
        assert_eq!(split_slots(None, share(0, 3)), None);
        // Rates round up: never zero, over by at most one per instance.
        assert_eq!(split_rate(Some(30), share(2, 3)), Some(10));
        assert_eq!(split_rate(Some(31), share(0, 3)), Some(11));
        assert_eq!(split_rate(Some(1), share(1, 3)), Some(1));
    }

    #[test]
    fn keys_are_long_random_and_hashed() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.expose_secret().starts_with("sy-") && a.expose_secret().len() == 46);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(hash_key("x").len(), 64);
        assert!(!hash_key(a.expose_secret()).contains(&a.expose_secret()[3..]));
    }

    #[test]
    fn roles_bundle_permissions() {
        assert!(Role::Admin.allows(Permission::KeysManage));
        assert!(Role::User.allows(Permission::ApiRequest) && !Role::User.allows(Permission::DashboardView));
        assert!(Role::Viewer.allows(Permission::DashboardView) && !Role::Viewer.allows(Permission::ApiRequest));
    }

    #[test]
    fn limits_refuse_then_name_a_wait() {
        let rpm = per_minute(Some(2)).unwrap();
        let t0 = 1_700_000_000_500;
        assert!(rpm.take(1, t0).is_ok());
        assert!(rpm.take(1, t0 + 10_000).is_ok());
        assert_eq!(rpm.take(1, t0 + 20_000), Err(41), "the first request leaves the window 41 s later");
        assert!(per_minute(Some(10)).unwrap().take(11, t0).is_err());
        assert!(per_minute(None).is_none() && per_minute(Some(0)).is_none());
    }

    proptest::proptest! {
        /// Budgets are checked when a request starts and charged when it ends: the spend never passes the
        /// budget by more than what the requests already running (at most the key's concurrency) cost.
        #[test]
        fn a_budget_is_passed_by_at_most_the_requests_in_flight(
            budget in 0.01f64..5.0,
            concurrency in 1usize..8,
            costs in proptest::collection::vec(0.0f64..0.5, 1..300),
            finish_first in proptest::collection::vec(proptest::bool::ANY, 300),
        ) {
            let record = crate::store::ClientKeyRecord {
                id: "k".into(),
                name: "k".into(),
                hash: hash_key("sy-test"),
                role: "user".into(),
                budget_usd_day: Some(budget),
                ..crate::store::ClientKeyRecord::default()
            };
            let key = ClientKey::from_record(&record, Share { rank: 0, of: 1 }).unwrap();
            let book = SpendBook::default();
            let now = 1_800_000_000_000i64;
            let mut running: Vec<f64> = Vec::new();
            let mut spent = 0.0;
            for (cost, finish) in costs.iter().zip(&finish_first) {
                if (*finish || running.len() == concurrency) && !running.is_empty() {
                    let done = running.remove(0);
                    book.add("k", done, 1, now);
                    spent += done;
                }
                if running.len() < concurrency && book.over_budget(&key, now).is_none() {
                    running.push(*cost);
                }
                let worst = spent + running.iter().sum::<f64>();
                proptest::prop_assert!(worst < budget + concurrency as f64 * 0.5 + 1e-9, "{worst} against {budget}");
            }
            for done in running.drain(..) {
                book.add("k", done, 1, now);
                spent += done;
            }
            proptest::prop_assert!(spent < budget + concurrency as f64 * 0.5 + 1e-9);
            if spent >= budget {
                proptest::prop_assert!(book.over_budget(&key, now).is_some(), "over its budget but still admitted");
            }
        }
    }
}
