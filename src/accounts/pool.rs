//! The in-memory account pool the proxy picks from. Reading a credential takes a short, never-awaited
//! lock; only a token refresh waits, and only for its own account (single flight: one refresh per
//! account at a time, the rotated pair committed to the store before the new access token is used).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::limits::Limits;
use super::router::{Router, Unavailable, Unusable, Want};
use super::{AccountError, Registry};
use crate::anthropic::{RateLimitInfo, Verdict};
use crate::oauth::{OAuthClient, OAuthError};
use crate::store::{AccountKind, AccountRecord, AccountStatus};

/// What to put on an upstream request.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `x-api-key`
    ApiKey(Arc<SecretString>),
    /// `Authorization: Bearer` plus the OAuth beta and identity.
    Bearer(Arc<SecretString>),
}

#[derive(Debug, Clone)]
enum Creds {
    ApiKey(Arc<SecretString>),
    OAuth { access: Arc<SecretString>, refresh: Arc<SecretString>, expires_at_ms: i64 },
}

#[derive(Debug, Clone)]
struct State {
    status: AccountStatus,
    priority: i64,
    weight: i64,
    plan: Option<String>,
    creds: Creds,
    /// Store's `updated_at_ms` of what we hold; a newer row replaces it on reload.
    updated_at_ms: i64,
    /// A rotated pair we hold but could not commit: commit it before anything else.
    unsaved: bool,
    /// The token endpoint asked us to wait (429) until then.
    refresh_blocked_until_ms: i64,
    /// The store's `token_version` of the pair we hold: a token write must name it.
    token_version: i64,
}

/// One account of the pool.
#[derive(Debug)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub kind: AccountKind,
    state: RwLock<State>,
    refresh_lock: tokio::sync::Mutex<()>,
    limits: Mutex<Limits>,
    /// Limits changed since the last flush to the store.
    dirty: AtomicBool,
    /// When the usage endpoint may be polled next, and the current poll interval (backs off on 429).
    usage_poll: Mutex<(i64, Duration)>,
    /// The pool's [`Pool::benched`]: raised when this account leaves rotation on a rate limit.
    benched: Arc<tokio::sync::Notify>,
}

impl Account {
    /// An active API-key account outside any pool, for routing tests.
    #[cfg(test)]
    pub(crate) fn for_tests(id: &str, priority: i64) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            name: id.to_owned(),
            kind: AccountKind::ApiKey,
            state: RwLock::new(State {
                status: AccountStatus::Active,
                priority,
                weight: 1,
                plan: None,
                creds: Creds::ApiKey(Arc::new(SecretString::from("sk-ant-test"))),
                updated_at_ms: 0,
                unsaved: false,
                refresh_blocked_until_ms: 0,
                token_version: 0,
            }),
            refresh_lock: tokio::sync::Mutex::new(()),
            limits: Mutex::new(Limits::default()),
            dirty: AtomicBool::new(false),
            usage_poll: Mutex::new((0, Duration::ZERO)),
            benched: Arc::new(tokio::sync::Notify::new()),
        })
    }

    fn state(&self) -> State {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        match self.state.write() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Read one field without copying the whole state (the router calls these per request).
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    pub fn status(&self) -> AccountStatus {
        self.read(|s| s.status)
    }

    pub fn priority(&self) -> i64 {
        self.read(|s| s.priority)
    }

    pub fn weight(&self) -> u64 {
        u64::try_from(self.read(|s| s.weight)).unwrap_or(1)
    }

    /// Preference key: lower priority value first, then accounts without a rate-limit warning.
    pub fn preference(&self) -> (i64, bool) {
        (self.priority(), self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).warning)
    }

    pub fn plan(&self) -> Option<String> {
        self.state().plan
    }

    /// Least-used key: 5-hour utilization, then requests in the last five minutes.
    pub fn load(&self, now_ms: i64) -> (f64, u64) {
        let limits = self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (limits.five_hour_utilization(), limits.recent(now_ms))
    }

    /// A copy of the routing state.
    pub fn limits(&self) -> Limits {
        self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn change_limits<T>(&self, f: impl FnOnce(&mut Limits) -> T) -> T {
        let out = f(&mut self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        self.dirty.store(true, Ordering::Release);
        out
    }

    /// Why the account cannot take a request for `family` now, or `None` when it can.
    pub fn unusable(&self, family: Option<&str>, now_ms: i64) -> Option<Unusable> {
        let (status, refresh_blocked_until) = self.read(|s| {
            // An expired token that may not be refreshed yet is as good as limited.
            let blocked = match s.creds {
                Creds::OAuth { expires_at_ms, .. } if expires_at_ms <= now_ms => s.refresh_blocked_until_ms,
                _ => 0,
            };
            (s.status, blocked)
        });
        if status != AccountStatus::Active {
            return Some(Unusable::Status(status));
        }
        let limits = self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut until = limits.blocked_until(family, now_ms);
        if refresh_blocked_until > now_ms {
            until = Some(until.unwrap_or(0).max(refresh_blocked_until));
        }
        until.map(Unusable::LimitedUntil)
    }

    /// Take in an upstream answer's status and rate-limit headers.
    pub fn observe(&self, status: u16, info: &RateLimitInfo, family: Option<&str>) -> Verdict {
        self.observe_at(status, info, family, crate::now_ms())
    }

    /// [`Account::observe`] at a given time (the clock is injected so routing can be tested without waiting).
    pub fn observe_at(&self, status: u16, info: &RateLimitInfo, family: Option<&str>, now: i64) -> Verdict {
        let verdict = self.change_limits(|l| l.observe(status, info, family, now));
        for window in ["5h", "7d"] {
            if let Some(value) = info.utilization(window) {
                crate::alerts::utilization(&self.name, window, value);
            }
        }
        match &verdict {
            Verdict::AccountLimited { .. } | Verdict::ModelLimited { .. } => {
                self.benched.notify_one();
                let limits = self.limits();
                tracing::warn!(
                    account = %self.name,
                    until = %super::router::format_ms(limits.blocked_until(family, now).unwrap_or(now)),
                    scope = if matches!(verdict, Verdict::ModelLimited { .. }) { "model" } else { "account" },
                    "rate limited; out of rotation"
                );
            }
            Verdict::RequestScoped => tracing::info!(account = %self.name, "429 without rate-limit headers"),
            Verdict::Allowed { .. } => {}
        }
        verdict
    }

    /// Count a request this account answered, and its attempt (`failed`: it did not end well).
    pub fn record(&self, failed: bool) {
        let now = crate::now_ms();
        self.change_limits(|l| {
            l.record_attempt(now, failed);
            l.requests += 1;
            if failed {
                l.failures += 1;
            }
        });
    }

    /// Count an attempt that failed over to another try.
    pub fn attempt_failed(&self) {
        let now = crate::now_ms();
        self.change_limits(|l| l.record_attempt(now, true));
    }

    /// Count a failed request whose last attempt (already counted) was on this account.
    pub fn request_failed(&self) {
        self.change_limits(|l| {
            l.requests += 1;
            l.failures += 1;
        });
    }

    /// A stream this account answered failed after its first byte.
    pub fn stream_failed(&self) {
        self.change_limits(|l| l.failures += 1);
    }

    /// Take in a usage poll's answer: every window and the spend.
    pub fn take_usage(&self, report: &crate::oauth::UsageReport) {
        self.change_limits(|l| {
            l.take_usage(report);
            l.usage_off = None;
        });
    }

    /// Stop polling the usage endpoint for this account, saying why (shown with the account).
    pub fn usage_off(&self, why: String) {
        self.change_limits(|l| l.usage_off = Some(why));
    }

    /// Whether the usage endpoint was turned off for this account.
    pub fn usage_is_off(&self) -> bool {
        self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).usage_off.is_some()
    }

    pub fn set_plan(&self, plan: &str) {
        self.update(|s| s.plan = Some(plan.to_owned()));
    }

    /// Whether the usage endpoint is due for this account; `next` pushes the next poll out.
    pub fn usage_due(&self, now_ms: i64) -> bool {
        self.usage_poll.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 <= now_ms
    }

    /// Schedule the next usage poll `interval` (plus jitter) from now; `backoff` doubles the interval.
    pub fn schedule_usage(&self, base: Duration, backoff: bool) {
        let mut poll = self.usage_poll.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let interval = if backoff { (poll.1 * 2).clamp(base, Duration::from_secs(3600)) } else { base };
        let jitter = rand::Rng::random_range(&mut rand::rng(), 0..=interval.as_millis() as u64 / 10);
        poll.1 = interval;
        poll.0 = crate::now_ms() + i64::try_from(interval.as_millis() as u64 + jitter).unwrap_or(i64::MAX);
    }

    /// The OAuth access token, if the account is OAuth (for the usage and profile endpoints).
    pub fn access_token(&self) -> Option<Arc<SecretString>> {
        match self.state().creds {
            Creds::OAuth { access, expires_at_ms, .. } if expires_at_ms > crate::now_ms() => Some(access),
            _ => None,
        }
    }
}

/// All accounts the proxy may use, in preference order.
#[derive(Debug)]
pub struct Pool {
    registry: Registry,
    oauth: OAuthClient,
    margin_ms: i64,
    accounts: RwLock<Vec<Arc<Account>>>,
    router: Router,
    /// This process's name as a refresh lease holder (random, per start).
    instance: String,
    /// The name its routing state is kept under: stable across restarts of this instance (`local` for
    /// one machine), so counters continue where they stopped instead of starting a new row each time.
    state_instance: String,
    /// Other instances' state rows already taken in: (account, instance) → their `updated_at_ms`.
    seen_states: Mutex<HashMap<(String, String), i64>>,
    /// How long a refresh lease lasts: the token call's timeout plus a margin.
    lease_ms: i64,
    /// Rows that did not open, by id, with the version that failed: each is logged once per version.
    unreadable: Mutex<HashMap<String, i64>>,
    /// Raised when an account is benched, so that the routing state reaches other instances at once.
    benched: Arc<tokio::sync::Notify>,
}

fn open_record(registry: &Registry, r: &AccountRecord) -> Result<State, AccountError> {
    let creds = match r.kind {
        AccountKind::ApiKey => {
            let sealed = r.api_key.as_deref().ok_or_else(|| AccountError::NeedsLogin(r.name.clone()))?;
            Creds::ApiKey(Arc::new(registry.open_field(r, "api_key", sealed)?))
        }
        AccountKind::OAuth => {
            let sealed = r.refresh_token.as_deref().ok_or_else(|| AccountError::NeedsLogin(r.name.clone()))?;
            let refresh = Arc::new(registry.open_field(r, "refresh_token", sealed)?);
            let (access, expires_at_ms) = match r.access_token.as_deref() {
                Some(at) => (registry.open_field(r, "access_token", at)?, r.expires_at_ms.unwrap_or(0)),
                None => (SecretString::from(String::new()), 0),
            };
            Creds::OAuth { access: Arc::new(access), refresh, expires_at_ms }
        }
    };
    Ok(State {
        status: r.status,
        priority: r.priority,
        weight: r.weight,
        plan: r.plan.clone(),
        creds,
        updated_at_ms: r.updated_at_ms,
        unsaved: false,
        refresh_blocked_until_ms: 0,
        token_version: r.token_version,
    })
}

/// Take a stored account's credentials and operator settings into the held state, keeping what only this
/// process knows (a token-endpoint cooldown).
fn adopt(held: &mut State, fresh: State) {
    let blocked = held.refresh_blocked_until_ms;
    *held = fresh;
    held.refresh_blocked_until_ms = blocked;
}

/// How long a refresh lease outlives the token call's own timeout: a holder that died frees it then.
const LEASE_MARGIN_MS: i64 = 5_000;

/// How often an instance waiting for another's refresh looks at the store.
const LEASE_POLL: Duration = Duration::from_millis(100);

impl Pool {
    /// Load every account from the store. A wrong encryption key fails here, at start, not per request.
    pub async fn load(
        registry: Registry,
        oauth: OAuthClient,
        margin: Duration,
        router: Router,
        state_instance: String,
    ) -> Result<Self, AccountError> {
        let pool = Self {
            registry,
            oauth,
            margin_ms: i64::try_from(margin.as_millis()).unwrap_or(i64::MAX),
            accounts: RwLock::new(Vec::new()),
            router,
            instance: format!("{state_instance}:{}", crate::ledger::request_id().trim_start_matches("sy_")),
            lease_ms: LEASE_MARGIN_MS,
            state_instance,
            seen_states: Mutex::new(HashMap::new()),
            unreadable: Mutex::new(HashMap::new()),
            benched: Arc::new(tokio::sync::Notify::new()),
        };
        // Leases an earlier run of this instance held when it died are over: it will not finish them.
        let stale =
            pool.registry.store().release_stale_leases(&format!("{}:", pool.state_instance), &pool.instance).await?;
        if stale > 0 {
            tracing::info!(leases = stale, "ended refresh leases left by an earlier run");
        }
        let failed = pool.load_records().await?;
        // Not one account opens: the key is wrong, which must stop the server rather than serve nothing.
        if let Some(first) = failed.into_iter().next()
            && pool.snapshot().is_empty()
        {
            return Err(first);
        }
        Ok(pool)
    }

    /// Refresh leases last as long as the token call may (`timeout`) plus a margin.
    pub fn with_token_timeout(mut self, timeout: Duration) -> Self {
        self.lease_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2).saturating_add(LEASE_MARGIN_MS);
        self
    }

    /// Take in the limits other instances saw since the last call (a 429 that benched an account there
    /// benches it here too). Called by the upkeep each second; reads only, marks nothing to write.
    pub async fn share_states(&self) -> Result<(), AccountError> {
        let rows = self.registry.store().load_states().await?;
        let accounts = self.snapshot();
        let mut seen = self.seen_states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for row in rows {
            if row.instance == self.state_instance {
                continue;
            }
            let key = (row.account_id.clone(), row.instance.clone());
            if seen.get(&key).is_some_and(|at| *at >= row.updated_at_ms) {
                continue;
            }
            seen.insert(key, row.updated_at_ms);
            let (Some(account), Ok(theirs)) =
                (accounts.iter().find(|a| a.id == row.account_id), serde_json::from_str::<Limits>(&row.state))
            else {
                continue;
            };
            account.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).share(&theirs);
        }
        Ok(())
    }

    /// Raised when an account leaves rotation on a rate limit (wait on it to share the news).
    pub fn benched(&self) -> &tokio::sync::Notify {
        &self.benched
    }

    /// This instance's name: its heartbeat's and its routing state's (stable across restarts).
    pub fn instance_name(&self) -> &str {
        &self.state_instance
    }

    /// This process's name as a lease holder.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Pick up accounts added, replaced or removed by the CLI since the last load. What this process holds
    /// wins over an older row, so a refresh in flight is never undone.
    pub async fn reload(&self) -> Result<(), AccountError> {
        self.load_records().await.map(drop)
    }

    /// One round of [`Pool::reload`]; returns the records that did not open. Such a record is left out
    /// (or, if this process already holds the account, its held state is kept) and logged with its name,
    /// so one corrupted row stops neither the start nor the reload of the others.
    async fn load_records(&self) -> Result<Vec<AccountError>, AccountError> {
        let records = self.registry.list().await?;
        let mut failed = Vec::new();
        let mut saved_limits: Option<Vec<crate::store::StateRow>> = None;
        let current: HashMap<String, Arc<Account>> = self.snapshot().into_iter().map(|a| (a.id.clone(), a)).collect();
        let mut next = Vec::with_capacity(records.len());
        for r in &records {
            match current.get(&r.id) {
                Some(existing) => {
                    let held = existing.state();
                    if r.updated_at_ms > held.updated_at_ms && !held.unsaved {
                        match open_record(&self.registry, r) {
                            Ok(fresh) => existing.update(|s| *s = fresh),
                            Err(e) => failed.push(self.unusable(r, e)),
                        }
                    }
                    next.push(existing.clone());
                }
                None => {
                    let state = match open_record(&self.registry, r) {
                        Ok(state) => state,
                        Err(e) => {
                            failed.push(self.unusable(r, e));
                            continue;
                        }
                    };
                    if saved_limits.is_none() {
                        saved_limits = Some(self.registry.store().load_states().await?);
                    }
                    // This instance's own row (its counters), with what the others saw of the limits.
                    let mut limits = Limits::default();
                    for row in saved_limits.iter().flatten().filter(|row| row.account_id == r.id) {
                        let Ok(theirs) = serde_json::from_str::<Limits>(&row.state) else { continue };
                        if row.instance == self.state_instance {
                            let shared = std::mem::take(&mut limits);
                            limits = theirs;
                            limits.share(&shared);
                        } else {
                            limits.share(&theirs);
                        }
                    }
                    next.push(Arc::new(Account {
                        id: r.id.clone(),
                        name: r.name.clone(),
                        kind: r.kind,
                        state: RwLock::new(state),
                        refresh_lock: tokio::sync::Mutex::new(()),
                        limits: Mutex::new(limits),
                        dirty: AtomicBool::new(false),
                        usage_poll: Mutex::new((0, Duration::ZERO)),
                        benched: self.benched.clone(),
                    }))
                }
            }
        }
        match self.accounts.write() {
            Ok(mut a) => *a = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        let mut unreadable = self.unreadable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        unreadable.retain(|id, _| records.iter().any(|r| &r.id == id));
        Ok(failed)
    }

    /// Log a record that did not open, once per version of its row.
    fn unusable(&self, r: &AccountRecord, error: AccountError) -> AccountError {
        let mut unreadable = self.unreadable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if unreadable.insert(r.id.clone(), r.updated_at_ms) != Some(r.updated_at_ms) {
            tracing::error!(account = %r.name, error = %error, "account left out: its stored credentials do not open");
        }
        error
    }

    pub fn snapshot(&self) -> Vec<Arc<Account>> {
        match self.accounts.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Accounts that may serve a request, first choice first, skipping ids in `exclude`; or why there are none.
    pub fn candidates(&self, want: &Want, exclude: &[String]) -> Result<Vec<Arc<Account>>, Unavailable> {
        self.router.order(&self.snapshot(), want, exclude, crate::now_ms())
    }

    /// Tell the router which account served, for affinity and sessions.
    pub fn served(&self, account: &Account, want: &Want) {
        self.router.served(account, want, crate::now_ms());
    }

    /// Write changed routing states to the store (off the hot path; called by the upkeep task).
    pub async fn flush_states(&self) -> Result<(), AccountError> {
        let mut batch = Vec::new();
        for account in self.snapshot() {
            if account.dirty.swap(false, Ordering::AcqRel) {
                match serde_json::to_string(&account.limits()) {
                    Ok(json) => batch.push((account.id.clone(), json)),
                    Err(e) => tracing::error!(account = %account.name, error = %e, "cannot encode routing state"),
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.registry.store().save_states(&self.state_instance, &batch, crate::now_ms()).await {
            // Try again next round.
            for account in self.snapshot() {
                if batch.iter().any(|(id, _)| id == &account.id) {
                    account.dirty.store(true, Ordering::Release);
                }
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Record a plan learned from the profile endpoint, in memory and in the store.
    pub async fn save_plan(&self, account: &Account, plan: &str) -> Result<(), AccountError> {
        account.set_plan(plan);
        self.registry.store().set_plan(&account.id, plan).await?;
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn crate::store::Store> {
        self.registry.store()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn oauth(&self) -> &OAuthClient {
        &self.oauth
    }

    /// The credential to use now, refreshing an OAuth token that is about to expire.
    pub async fn credential(&self, account: &Account) -> Result<Credential, AccountError> {
        let state = account.state();
        match state.status {
            AccountStatus::Active => {}
            AccountStatus::NeedsLogin => {
                return Err(AccountError::NeedsLogin(account.name.clone()));
            }
            AccountStatus::Paused => return Err(AccountError::Paused(account.name.clone())),
        }
        match state.creds {
            Creds::ApiKey(key) => Ok(Credential::ApiKey(key)),
            Creds::OAuth { access, expires_at_ms, .. } => {
                if !state.unsaved && expires_at_ms.saturating_sub(crate::now_ms()) > self.margin_ms {
                    Ok(Credential::Bearer(access))
                } else {
                    // Boxed: the refresh (a token call) is kilobytes of state that every request's future
                    // would otherwise carry, though nearly all of them never refresh.
                    Box::pin(self.refresh(account, &access)).await
                }
            }
        }
    }

    /// The upstream refused `rejected` (401): refresh once, unless another request already did.
    pub async fn refresh_rejected(
        &self,
        account: &Account,
        rejected: &Arc<SecretString>,
    ) -> Result<Credential, AccountError> {
        Box::pin(self.refresh(account, rejected)).await
    }

    /// Refresh the account's token if it is still `seen`; callers that queued behind a refresh get its
    /// result. Across instances one refresh per account: the store's lease is taken around the token call,
    /// the account is re-read inside it (another instance may have refreshed already), and the new pair is
    /// written over the version it came from. Without the store there is no refresh: a rotated pair that
    /// could not be committed would be a lost account.
    async fn refresh(&self, account: &Account, seen: &Arc<SecretString>) -> Result<Credential, AccountError> {
        let _single_flight = account.refresh_lock.lock().await;
        let deadline = crate::now_ms().saturating_add(self.lease_ms);
        loop {
            let state = account.state();
            if state.status == AccountStatus::NeedsLogin {
                return Err(AccountError::NeedsLogin(account.name.clone()));
            }
            let Creds::OAuth { access, refresh, expires_at_ms } = state.creds.clone() else {
                return self.credential_now(account);
            };
            let now = crate::now_ms();
            if state.unsaved {
                self.commit_unsaved(account, &state, &access, &refresh, expires_at_ms).await?;
                continue;
            }
            // Compared by value: a reload may have swapped in an equal token under a new allocation.
            if access.expose_secret() != seen.expose_secret() && expires_at_ms.saturating_sub(now) > self.margin_ms {
                return Ok(Credential::Bearer(access));
            }
            if now < state.refresh_blocked_until_ms {
                let until = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(state.refresh_blocked_until_ms).unwrap_or(0)),
                );
                return Err(AccountError::RefreshCoolingDown { name: account.name.clone(), until: until.to_string() });
            }
            let store = self.registry.store();
            let leased = store.take_refresh_lease(&account.id, &self.instance, now + self.lease_ms, now).await?;
            let Some(record) = leased else {
                // Another instance is refreshing: its pair arrives through the store.
                if crate::now_ms() >= deadline {
                    return Err(AccountError::RefreshFailed {
                        name: account.name.clone(),
                        source: OAuthError::Transport("another instance's refresh did not finish in time".into()),
                    });
                }
                tokio::time::sleep(LEASE_POLL).await;
                self.adopt_newer(account).await?;
                continue;
            };
            if record.token_version != state.token_version {
                // Refreshed elsewhere since we loaded it: take that pair, and use it if it is fresh.
                let fresh = open_record(&self.registry, &record)?;
                account.update(|s| adopt(s, fresh));
                let _ = store.release_refresh_lease(&account.id, &self.instance).await;
                continue;
            }
            return self.refresh_leased(account, refresh, record.token_version).await;
        }
    }

    /// Call the token endpoint while holding the lease, and commit the new pair over `version`.
    async fn refresh_leased(
        &self,
        account: &Account,
        refresh: Arc<SecretString>,
        version: i64,
    ) -> Result<Credential, AccountError> {
        let store = self.registry.store();
        match self.oauth.refresh(&refresh).await {
            Ok(answer) => {
                let now = crate::now_ms();
                let expires_at_ms = answer.expires_at_ms(now);
                let access = Arc::new(answer.access_token);
                // No refresh_token in the answer: the old one stays valid.
                let refresh = answer.refresh_token.map(Arc::new).unwrap_or(refresh);
                let saved =
                    self.registry.save_tokens(&account.id, &access, &refresh, expires_at_ms, Some(version), now).await;
                // Held in memory even if the commit failed: the old refresh token is spent, so this pair is
                // the only copy; it is committed before use on the next call (the lease, still ours, keeps
                // other instances from refreshing with the spent token meanwhile).
                account.update(|s| {
                    s.creds = Creds::OAuth { access: access.clone(), refresh, expires_at_ms };
                    s.updated_at_ms = now;
                    s.unsaved = !matches!(saved, Ok(Some(_)));
                    if let Ok(Some(v)) = saved {
                        s.token_version = v;
                    }
                });
                crate::metrics::refresh(&account.name, matches!(saved, Ok(Some(_))));
                match saved {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        // Only if our lease ran out mid-call and another instance refreshed too: the
                        // store's pair wins, since every other instance already uses it.
                        tracing::error!(account = %account.name, "a newer token pair was written while refreshing; using it");
                        account.update(|s| s.unsaved = false);
                        self.adopt_newer(account).await?;
                        return self.credential_now(account);
                    }
                    Err(e) => return Err(e),
                }
                tracing::info!(account = %account.name, "refreshed OAuth token");
                Ok(Credential::Bearer(access))
            }
            Err(OAuthError::InvalidGrant(reason)) => {
                let _ = store.release_refresh_lease(&account.id, &self.instance).await;
                crate::metrics::refresh(&account.name, false);
                crate::alerts::raise(
                    "account_needs_login",
                    &account.name,
                    &format!("account {} needs a new login: its refresh token was refused", account.name),
                );
                tracing::warn!(account = %account.name, %reason, "refresh token refused; account needs a new login");
                account.update(|s| s.status = AccountStatus::NeedsLogin);
                if let Err(e) = self.registry.set_status(&account.id, AccountStatus::NeedsLogin).await {
                    tracing::error!(account = %account.name, error = %e, "could not record needs-login");
                }
                Err(AccountError::NeedsLogin(account.name.clone()))
            }
            Err(OAuthError::RateLimited { retry_after }) => {
                let _ = store.release_refresh_lease(&account.id, &self.instance).await;
                let wait = retry_after.unwrap_or(Duration::from_secs(60));
                let until = crate::now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                account.update(|s| s.refresh_blocked_until_ms = until);
                tracing::warn!(account = %account.name, wait_secs = wait.as_secs(), "token endpoint rate limited refresh");
                Err(AccountError::RefreshFailed {
                    name: account.name.clone(),
                    source: OAuthError::RateLimited { retry_after },
                })
            }
            Err(source) => {
                let _ = store.release_refresh_lease(&account.id, &self.instance).await;
                crate::metrics::refresh(&account.name, false);
                tracing::warn!(account = %account.name, error = %source, "token refresh failed");
                Err(AccountError::RefreshFailed { name: account.name.clone(), source })
            }
        }
    }

    /// Commit a pair refreshed earlier whose write failed, over the version it came from.
    async fn commit_unsaved(
        &self,
        account: &Account,
        state: &State,
        access: &Arc<SecretString>,
        refresh: &Arc<SecretString>,
        expires_at_ms: i64,
    ) -> Result<(), AccountError> {
        let now = crate::now_ms();
        let saved = self
            .registry
            .save_tokens(&account.id, access, refresh, expires_at_ms, Some(state.token_version), now)
            .await?;
        match saved {
            Some(version) => account.update(|s| {
                s.unsaved = false;
                s.updated_at_ms = now;
                s.token_version = version;
            }),
            None => {
                tracing::error!(account = %account.name, "a newer token pair was written meanwhile; using it");
                account.update(|s| s.unsaved = false);
                self.adopt_newer(account).await?;
            }
        }
        Ok(())
    }

    /// Take the stored pair if it is newer than the one held (another instance refreshed).
    async fn adopt_newer(&self, account: &Account) -> Result<(), AccountError> {
        let Some(record) = self.registry.store().find_account(&account.name).await? else { return Ok(()) };
        if record.id == account.id && record.token_version > account.state().token_version {
            let fresh = open_record(&self.registry, &record)?;
            account.update(|s| adopt(s, fresh));
        }
        Ok(())
    }

    fn credential_now(&self, account: &Account) -> Result<Credential, AccountError> {
        match account.state().creds {
            Creds::ApiKey(key) => Ok(Credential::ApiKey(key)),
            Creds::OAuth { access, .. } => Ok(Credential::Bearer(access)),
        }
    }

    /// Refresh every active OAuth account whose token expires within the margin, so an idle account is
    /// ready when a request comes. Failures are logged; the next request or round tries again.
    pub async fn refresh_due(&self) {
        for account in self.snapshot() {
            let state = account.state();
            let due = match state.creds {
                Creds::OAuth { expires_at_ms, .. } => expires_at_ms.saturating_sub(crate::now_ms()) <= self.margin_ms,
                Creds::ApiKey(_) => false,
            };
            if due
                && state.status == AccountStatus::Active
                && crate::now_ms() >= state.refresh_blocked_until_ms
                && let Err(e) = self.credential(&account).await
            {
                tracing::warn!(account = %account.name, error = %e, "background refresh failed");
            }
        }
    }
}
