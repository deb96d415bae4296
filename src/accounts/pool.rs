//! The in-memory account pool the proxy picks from. Reading a credential takes a short, never-awaited
//! lock; only a token refresh waits, and only for its own account (single flight: one refresh per
//! account at a time, the rotated pair committed to the store before the new access token is used).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::SecretString;

use super::{AccountError, Registry};
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
    OAuth {
        access: Arc<SecretString>,
        refresh: Arc<SecretString>,
        expires_at_ms: i64,
    },
}

#[derive(Debug, Clone)]
struct State {
    status: AccountStatus,
    creds: Creds,
    /// Store's `updated_at_ms` of what we hold; a newer row replaces it on reload.
    updated_at_ms: i64,
    /// A rotated pair we hold but could not commit: commit it before anything else.
    unsaved: bool,
    /// The token endpoint asked us to wait (429) until then.
    refresh_blocked_until_ms: i64,
}

/// One account of the pool.
#[derive(Debug)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub kind: AccountKind,
    state: RwLock<State>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl Account {
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

    pub fn status(&self) -> AccountStatus {
        self.state().status
    }
}

/// All accounts the proxy may use, in preference order.
#[derive(Debug)]
pub struct Pool {
    registry: Registry,
    oauth: OAuthClient,
    margin_ms: i64,
    accounts: RwLock<Vec<Arc<Account>>>,
}

fn open_record(registry: &Registry, r: &AccountRecord) -> Result<State, AccountError> {
    let creds = match r.kind {
        AccountKind::ApiKey => {
            let sealed = r
                .api_key
                .as_deref()
                .ok_or_else(|| AccountError::NeedsLogin(r.name.clone()))?;
            Creds::ApiKey(Arc::new(registry.open(&r.id, "api_key", sealed)?))
        }
        AccountKind::OAuth => {
            let sealed = r
                .refresh_token
                .as_deref()
                .ok_or_else(|| AccountError::NeedsLogin(r.name.clone()))?;
            let refresh = Arc::new(registry.open(&r.id, "refresh_token", sealed)?);
            let (access, expires_at_ms) = match r.access_token.as_deref() {
                Some(at) => (
                    registry.open(&r.id, "access_token", at)?,
                    r.expires_at_ms.unwrap_or(0),
                ),
                None => (SecretString::from(String::new()), 0),
            };
            Creds::OAuth {
                access: Arc::new(access),
                refresh,
                expires_at_ms,
            }
        }
    };
    Ok(State {
        status: r.status,
        creds,
        updated_at_ms: r.updated_at_ms,
        unsaved: false,
        refresh_blocked_until_ms: 0,
    })
}

impl Pool {
    /// Load every account from the store. A wrong encryption key fails here, at start, not per request.
    pub async fn load(
        registry: Registry,
        oauth: OAuthClient,
        margin: Duration,
    ) -> Result<Self, AccountError> {
        let pool = Self {
            registry,
            oauth,
            margin_ms: i64::try_from(margin.as_millis()).unwrap_or(i64::MAX),
            accounts: RwLock::new(Vec::new()),
        };
        pool.reload().await?;
        Ok(pool)
    }

    /// Pick up accounts added, replaced or removed by the CLI since the last load. What this process holds
    /// wins over an older row, so a refresh in flight is never undone.
    pub async fn reload(&self) -> Result<(), AccountError> {
        let records = self.registry.list().await?;
        let current: HashMap<String, Arc<Account>> = self
            .snapshot()
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        let mut next = Vec::with_capacity(records.len());
        for r in &records {
            match current.get(&r.id) {
                Some(existing) => {
                    let held = existing.state();
                    if r.updated_at_ms > held.updated_at_ms && !held.unsaved {
                        let fresh = open_record(&self.registry, r)?;
                        existing.update(|s| *s = fresh);
                    }
                    next.push(existing.clone());
                }
                None => next.push(Arc::new(Account {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    kind: r.kind,
                    state: RwLock::new(open_record(&self.registry, r)?),
                    refresh_lock: tokio::sync::Mutex::new(()),
                })),
            }
        }
        match self.accounts.write() {
            Ok(mut a) => *a = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    pub fn snapshot(&self) -> Vec<Arc<Account>> {
        match self.accounts.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Accounts that may serve a request, first choice first; or why there are none.
    pub fn candidates(&self) -> Result<Vec<Arc<Account>>, String> {
        let all = self.snapshot();
        if all.is_empty() {
            return Err("no accounts configured: add one with `switchyard auth login` or `switchyard accounts add`".into());
        }
        let usable: Vec<_> = all
            .iter()
            .filter(|a| a.status() == AccountStatus::Active)
            .cloned()
            .collect();
        if !usable.is_empty() {
            return Ok(usable);
        }
        let reasons: Vec<String> = all
            .iter()
            .map(|a| match a.status() {
                AccountStatus::NeedsLogin => format!("{} needs a new login", a.name),
                AccountStatus::Paused => format!("{} is paused", a.name),
                AccountStatus::Active => format!("{} is unavailable", a.name),
            })
            .collect();
        Err(format!("no usable account: {}", reasons.join(", ")))
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
            Creds::OAuth {
                access,
                expires_at_ms,
                ..
            } => {
                if !state.unsaved && expires_at_ms.saturating_sub(crate::now_ms()) > self.margin_ms
                {
                    Ok(Credential::Bearer(access))
                } else {
                    self.refresh(account, &access).await
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
        self.refresh(account, rejected).await
    }

    /// Refresh the account's token if it is still `seen`; callers that queued behind a refresh get its result.
    async fn refresh(
        &self,
        account: &Account,
        seen: &Arc<SecretString>,
    ) -> Result<Credential, AccountError> {
        let _single_flight = account.refresh_lock.lock().await;
        let state = account.state();
        if state.status == AccountStatus::NeedsLogin {
            return Err(AccountError::NeedsLogin(account.name.clone()));
        }
        let Creds::OAuth {
            access,
            refresh,
            expires_at_ms,
        } = state.creds
        else {
            return self.credential_now(account);
        };
        let now = crate::now_ms();
        if state.unsaved {
            self.registry
                .save_tokens(&account.id, &access, &refresh, expires_at_ms, now)
                .await?;
            account.update(|s| {
                s.unsaved = false;
                s.updated_at_ms = now;
            });
        }
        if !Arc::ptr_eq(&access, seen) && expires_at_ms.saturating_sub(now) > self.margin_ms {
            return Ok(Credential::Bearer(access));
        }
        if now < state.refresh_blocked_until_ms {
            let until = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH
                    + Duration::from_millis(
                        u64::try_from(state.refresh_blocked_until_ms).unwrap_or(0),
                    ),
            );
            return Err(AccountError::RefreshCoolingDown {
                name: account.name.clone(),
                until: until.to_string(),
            });
        }
        match self.oauth.refresh(&refresh).await {
            Ok(answer) => {
                let now = crate::now_ms();
                let expires_at_ms = answer.expires_at_ms(now);
                let access = Arc::new(answer.access_token);
                // No refresh_token in the answer: the old one stays valid.
                let refresh = answer.refresh_token.map(Arc::new).unwrap_or(refresh);
                let saved = self
                    .registry
                    .save_tokens(&account.id, &access, &refresh, expires_at_ms, now)
                    .await;
                // Held in memory even if the commit failed: the old refresh token is spent, so this pair is
                // the only copy; it is committed before use on the next call.
                account.update(|s| {
                    s.creds = Creds::OAuth {
                        access: access.clone(),
                        refresh,
                        expires_at_ms,
                    };
                    s.updated_at_ms = now;
                    s.unsaved = saved.is_err();
                });
                saved?;
                tracing::info!(account = %account.name, "refreshed OAuth token");
                Ok(Credential::Bearer(access))
            }
            Err(OAuthError::InvalidGrant(reason)) => {
                tracing::warn!(account = %account.name, %reason, "refresh token refused; account needs a new login");
                account.update(|s| s.status = AccountStatus::NeedsLogin);
                if let Err(e) = self
                    .registry
                    .set_status(&account.id, AccountStatus::NeedsLogin)
                    .await
                {
                    tracing::error!(account = %account.name, error = %e, "could not record needs-login");
                }
                Err(AccountError::NeedsLogin(account.name.clone()))
            }
            Err(OAuthError::RateLimited { retry_after }) => {
                let wait = retry_after.unwrap_or(Duration::from_secs(60));
                let until = crate::now_ms()
                    .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
                account.update(|s| s.refresh_blocked_until_ms = until);
                tracing::warn!(account = %account.name, wait_secs = wait.as_secs(), "token endpoint rate limited refresh");
                Err(AccountError::RefreshFailed {
                    name: account.name.clone(),
                    source: OAuthError::RateLimited { retry_after },
                })
            }
            Err(source) => {
                tracing::warn!(account = %account.name, error = %source, "token refresh failed");
                Err(AccountError::RefreshFailed {
                    name: account.name.clone(),
                    source,
                })
            }
        }
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
                Creds::OAuth { expires_at_ms, .. } => {
                    expires_at_ms.saturating_sub(crate::now_ms()) <= self.margin_ms
                }
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
