//! Durable account operations: seals tokens with the data key before they reach the store and opens them
//! on the way back. Used by the CLI and by the pool.

use std::sync::Arc;

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use std::collections::{BTreeMap, HashMap};

use zeroize::Zeroizing;

use super::AccountError;
use super::limits::{Limits, UsageWindow};
use crate::secrets::Cipher;
use crate::store::{
    AccountKind, AccountRecord, AccountStatus, PendingLogin, SealedRow, SealedTokens, Store, StoreError,
};

/// A fresh OAuth login or import.
#[derive(Debug)]
pub struct NewOAuth {
    pub access_token: Option<SecretString>,
    pub refresh_token: SecretString,
    /// Epoch ms; 0 when unknown, which makes the first use refresh.
    pub expires_at_ms: i64,
    pub email: Option<String>,
    pub account_uuid: Option<String>,
    pub org_uuid: Option<String>,
    pub org_name: Option<String>,
}

/// One account in a backup, an old plaintext store, or an imported JSON file: tokens in the clear, so this
/// only ever exists in memory or inside passphrase encryption.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PlainAccount {
    pub name: String,
    /// `oauth` or `api_key`.
    pub kind: String,
    pub status: Option<String>,
    pub priority: Option<i64>,
    pub weight: Option<i64>,
    pub plan: Option<String>,
    pub email: Option<String>,
    pub account_uuid: Option<String>,
    pub org_uuid: Option<String>,
    pub org_name: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub access_token: Option<Zeroizing<String>>,
    pub refresh_token: Option<Zeroizing<String>>,
    pub api_key: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for PlainAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainAccount").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// An account as shown by `accounts list` and `auth status`: no secret, a masked suffix at most.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountView {
    pub name: String,
    pub kind: &'static str,
    /// `max`, `pro`, … once the profile endpoint has answered.
    pub plan: Option<String>,
    /// `active`, `paused`, `needs-login` or `rate-limited` (see `limited_until_ms`).
    pub status: &'static str,
    /// When a rate-limited account returns (epoch ms).
    pub limited_until_ms: Option<i64>,
    /// Model families limited on their own (epoch ms of return).
    pub model_limits: BTreeMap<String, i64>,
    pub priority: i64,
    pub weight: i64,
    pub five_hour: Option<UsageWindow>,
    pub seven_day: Option<UsageWindow>,
    /// Every usage window by name (`5h`, `7d`, `7d:opus`, `7d_oi`, …).
    pub windows: BTreeMap<String, UsageWindow>,
    /// Extra usage spent (from the usage endpoint).
    pub spend: Option<super::limits::Spend>,
    /// Unified rate-limit headers beyond the windows (`fallback-percentage`, `overage-*`, …).
    pub unified: BTreeMap<String, String>,
    /// Why the usage endpoint is not polled for this account.
    pub usage_off: Option<String>,
    /// Requests answered from this account; a failed request counts at the last account it tried.
    pub requests: u64,
    pub failures: u64,
    /// Upstream attempts, including those that failed over to another account.
    pub attempts: u64,
    pub failed_attempts: u64,
    pub last_used_ms: Option<i64>,
    pub email: Option<String>,
    pub organization: Option<String>,
    pub expires_at_ms: Option<i64>,
    /// Last characters of the credential the account uses, e.g. `…x9Qa`; `unreadable` when it does not
    /// open.
    pub credential: String,
    /// Why the account cannot be used, when its stored credential does not open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    cipher: Arc<Cipher>,
}

/// The setting that proves which data key the database was written with.
const KEY_CHECK: &str = "store.key_check";
const KEY_CHECK_AAD: &str = "settings/store.key_check";
const KEY_CHECK_VALUE: &str = "switchyard data key";

fn aad(id: &str, field: &str) -> String {
    format!("account/{id}/{field}")
}

fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, cipher: Arc<Cipher>) -> Self {
        Self { store, cipher }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn cipher(&self) -> &Arc<Cipher> {
        &self.cipher
    }

    pub fn seal(&self, id: &str, field: &str, secret: &SecretString) -> Result<String, AccountError> {
        Ok(self.cipher.seal(secret.expose_secret(), &aad(id, field))?)
    }

    pub fn open(&self, id: &str, field: &str, sealed: &str) -> Result<SecretString, AccountError> {
        Ok(self.cipher.open(sealed, &aad(id, field))?)
    }

    /// Prove that this data key is the database's: a check value sealed with it is kept in the settings
    /// (written by the first command that writes). Several instances on one database must share one key;
    /// one with another key refuses to start here, before it serves or writes anything.
    pub async fn verify_data_key(&self, write: bool) -> Result<(), AccountError> {
        match self.store.get_setting(KEY_CHECK).await? {
            Some(sealed) => self.cipher.open(&sealed, KEY_CHECK_AAD).map(drop).map_err(AccountError::KeyMismatch),
            None if write => {
                let sealed = self.cipher.seal(KEY_CHECK_VALUE, KEY_CHECK_AAD)?;
                self.store.put_setting(KEY_CHECK, Some(&sealed), crate::now_ms()).await?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The key check re-sealed from `old` to `new` (key rotation), if there is one.
    /// Whether data was ever written with a data key here (the sealed check value exists).
    pub async fn has_key_check(store: &dyn Store) -> Result<bool, StoreError> {
        Ok(store.get_setting(KEY_CHECK).await?.is_some())
    }

    pub async fn resealed_key_check(
        &self,
        old: &Cipher,
        new: &Cipher,
    ) -> Result<Option<(String, String)>, AccountError> {
        let Some(sealed) = self.store.get_setting(KEY_CHECK).await? else { return Ok(None) };
        old.open(&sealed, KEY_CHECK_AAD)?;
        Ok(Some((KEY_CHECK.to_owned(), new.seal(KEY_CHECK_VALUE, KEY_CHECK_AAD)?)))
    }

    /// Open one sealed field of `record`; a failure names the account.
    pub fn open_field(
        &self,
        record: &AccountRecord,
        field: &'static str,
        sealed: &str,
    ) -> Result<SecretString, AccountError> {
        self.cipher.open(sealed, &aad(&record.id, field)).map_err(|source| AccountError::Unreadable {
            name: record.name.clone(),
            field,
            source,
        })
    }

    pub async fn list(&self) -> Result<Vec<AccountRecord>, AccountError> {
        Ok(self.store.list_accounts().await?)
    }

    /// Store an API-key account. With `replace`, an existing account of that name is overwritten.
    pub async fn add_api_key(&self, name: &str, key: &SecretString, replace: bool) -> Result<(), AccountError> {
        let now = crate::now_ms();
        let (id, created) = self.slot(name, replace).await?;
        let record = AccountRecord {
            api_key: Some(self.seal(&id, "api_key", key)?),
            ..blank(id, name, AccountKind::ApiKey, created, now)
        };
        Ok(self.store.save_account(&record).await?)
    }

    /// Store an OAuth account. With `replace`, an existing account of that name gets the new tokens (a
    /// re-login); otherwise a name clash is an error.
    pub async fn save_oauth(&self, name: &str, login: NewOAuth, replace: bool) -> Result<(), AccountError> {
        let now = crate::now_ms();
        let (id, created) = self.slot(name, replace).await?;
        let access_token = match &login.access_token {
            Some(at) => Some(self.seal(&id, "access_token", at)?),
            None => None,
        };
        let record = AccountRecord {
            access_token,
            refresh_token: Some(self.seal(&id, "refresh_token", &login.refresh_token)?),
            expires_at_ms: Some(if login.access_token.is_some() { login.expires_at_ms } else { 0 }),
            email: login.email,
            account_uuid: login.account_uuid,
            org_uuid: login.org_uuid,
            org_name: login.org_name,
            ..blank(id, name, AccountKind::OAuth, created, now)
        };
        Ok(self.store.save_account(&record).await?)
    }

    /// The id and creation time to write `name` under: the existing row's when replacing.
    async fn slot(&self, name: &str, replace: bool) -> Result<(String, i64), AccountError> {
        crate::check_name("account", name).map_err(AccountError::Invalid)?;
        match self.store.find_account(name).await? {
            Some(existing) if replace => Ok((existing.id, existing.created_at_ms)),
            Some(_) => Err(StoreError::Duplicate { what: "an account", name: name.to_owned() }.into()),
            None => Ok((new_id(), crate::now_ms())),
        }
    }

    /// Commit a rotated pair; returns only once it is durable.
    /// Seal and write a new OAuth pair; with `expected`, only over that token version (see
    /// [`crate::store::AccountStore::update_tokens`]). The new version, or `None` when it moved on.
    pub async fn save_tokens(
        &self,
        id: &str,
        access: &SecretString,
        refresh: &SecretString,
        expires_at_ms: i64,
        expected: Option<i64>,
        now_ms: i64,
    ) -> Result<Option<i64>, AccountError> {
        let tokens = SealedTokens {
            access_token: self.seal(id, "access_token", access)?,
            refresh_token: self.seal(id, "refresh_token", refresh)?,
            expires_at_ms,
        };
        Ok(self.store.update_tokens(id, &tokens, expected, now_ms).await?)
    }

    pub async fn set_status(&self, id: &str, status: AccountStatus) -> Result<(), AccountError> {
        self.store.set_status(id, status, crate::now_ms()).await?;
        Ok(())
    }

    /// Pause or resume an account by name (a running server follows within a second).
    pub async fn set_status_of(&self, name: &str, status: AccountStatus) -> Result<(), AccountError> {
        let record = self.store.find_account(name).await?.ok_or_else(|| AccountError::NotFound(name.to_owned()))?;
        self.set_status(&record.id, status).await
    }

    /// Change an account's priority and/or weight by name.
    pub async fn set_routing(
        &self,
        name: &str,
        priority: Option<i64>,
        weight: Option<i64>,
    ) -> Result<(), AccountError> {
        let record = self.store.find_account(name).await?.ok_or_else(|| AccountError::NotFound(name.to_owned()))?;
        self.store.set_routing(&record.id, priority, weight, crate::now_ms()).await?;
        Ok(())
    }

    pub async fn remove(&self, name: &str) -> Result<(), AccountError> {
        if self.store.remove_account(name).await? { Ok(()) } else { Err(AccountError::NotFound(name.to_owned())) }
    }

    /// Every account as listed to users. An account whose credential does not open is listed as
    /// `unreadable`, with the reason; only when none opens at all (a wrong key) is that an error.
    pub async fn views(&self) -> Result<Vec<AccountView>, AccountError> {
        // Every instance's row of an account, combined: counters summed, benches shared.
        let mut per_account: HashMap<String, Vec<Limits>> = HashMap::new();
        for row in self.store.load_states().await? {
            if let Ok(limits) = serde_json::from_str::<Limits>(&row.state) {
                per_account.entry(row.account_id).or_default().push(limits);
            }
        }
        let states: HashMap<String, Limits> =
            per_account.into_iter().map(|(id, rows)| (id, Limits::combined(&rows))).collect();
        let now = crate::now_ms();
        let mut views = Vec::new();
        let (mut opened, mut first_error) = (0, None);
        for r in self.list().await? {
            let limits: Limits = states.get(&r.id).cloned().unwrap_or_default();
            let (view, error) = self.view(&r, &limits, now);
            match error {
                Some(e) => {
                    first_error.get_or_insert(e);
                }
                None if view.credential != "none" => opened += 1,
                None => {}
            }
            views.push(view);
        }
        match first_error {
            Some(e) if opened == 0 => Err(e),
            _ => Ok(views),
        }
    }

    /// The listing view of a record; opening its credential also proves the key is right (the error, if
    /// it does not open, comes back beside the view).
    pub fn view(&self, r: &AccountRecord, limits: &Limits, now_ms: i64) -> (AccountView, Option<AccountError>) {
        let (field, sealed) = match r.kind {
            AccountKind::ApiKey => ("api_key", r.api_key.as_deref()),
            AccountKind::OAuth => match r.access_token.as_deref() {
                Some(at) => ("access_token", Some(at)),
                None => ("refresh_token", r.refresh_token.as_deref()),
            },
        };
        let (credential, error) = match sealed.map(|s| self.open_field(r, field, s)) {
            Some(Ok(secret)) => (crate::secrets::masked(&secret), None),
            Some(Err(e)) => ("unreadable".to_owned(), Some(e)),
            None => ("none".to_owned(), None),
        };
        let limited_until_ms = limits.blocked_until(None, now_ms);
        let status = match (r.status, limited_until_ms) {
            _ if error.is_some() => "unreadable",
            (AccountStatus::Active, Some(_)) => "rate-limited",
            (status, _) => status.as_str(),
        };
        let problem = error.as_ref().map(ToString::to_string);
        let view = AccountView {
            name: r.name.clone(),
            kind: r.kind.as_str(),
            plan: r.plan.clone(),
            status,
            limited_until_ms,
            model_limits: limits
                .model_limited_until_ms
                .iter()
                .filter(|(_, t)| **t > now_ms)
                .map(|(f, t)| (f.clone(), *t))
                .collect(),
            priority: r.priority,
            weight: r.weight,
            five_hour: limits.five_hour,
            seven_day: limits.seven_day,
            windows: limits.windows.clone(),
            spend: limits.spend.clone(),
            unified: limits.unified.clone(),
            usage_off: limits.usage_off.clone(),
            requests: limits.requests,
            failures: limits.failures,
            attempts: limits.attempts,
            failed_attempts: limits.failed_attempts,
            last_used_ms: (limits.last_used_ms > 0).then_some(limits.last_used_ms),
            email: r.email.clone(),
            organization: r.org_name.clone(),
            expires_at_ms: if r.kind == AccountKind::OAuth { r.expires_at_ms } else { None },
            credential,
            problem,
        };
        (view, error)
    }

    /// Every account with its secrets opened, for a backup.
    pub async fn export(&self) -> Result<Vec<PlainAccount>, AccountError> {
        let mut out = Vec::new();
        for r in self.list().await? {
            let open =
                |field: &'static str, sealed: &Option<String>| -> Result<Option<Zeroizing<String>>, AccountError> {
                    sealed
                        .as_deref()
                        .map(|s| self.open_field(&r, field, s).map(|v| Zeroizing::new(v.expose_secret().to_owned())))
                        .transpose()
                };
            out.push(PlainAccount {
                name: r.name.clone(),
                kind: r.kind.as_str().to_owned(),
                status: Some(r.status.as_str().to_owned()),
                priority: Some(r.priority),
                weight: Some(r.weight),
                plan: r.plan.clone(),
                email: r.email.clone(),
                account_uuid: r.account_uuid.clone(),
                org_uuid: r.org_uuid.clone(),
                org_name: r.org_name.clone(),
                expires_at_ms: r.expires_at_ms,
                access_token: open("access_token", &r.access_token)?,
                refresh_token: open("refresh_token", &r.refresh_token)?,
                api_key: open("api_key", &r.api_key)?,
            });
        }
        Ok(out)
    }

    /// Store accounts from a backup or a plaintext file, replacing accounts of the same name.
    pub async fn import(&self, accounts: &[PlainAccount]) -> Result<usize, AccountError> {
        for a in accounts {
            let secret = |v: &Option<Zeroizing<String>>| {
                v.as_ref().filter(|s| !s.is_empty()).map(|s| SecretString::from(s.as_str().to_owned()))
            };
            match a.kind.as_str() {
                "api_key" => {
                    let key =
                        secret(&a.api_key).ok_or_else(|| AccountError::Invalid(format!("{}: no api_key", a.name)))?;
                    self.add_api_key(&a.name, &key, true).await?;
                }
                "oauth" => {
                    let refresh_token = secret(&a.refresh_token)
                        .ok_or_else(|| AccountError::Invalid(format!("{}: no refresh_token", a.name)))?;
                    let login = NewOAuth {
                        access_token: secret(&a.access_token),
                        refresh_token,
                        expires_at_ms: a.expires_at_ms.unwrap_or(0),
                        email: a.email.clone(),
                        account_uuid: a.account_uuid.clone(),
                        org_uuid: a.org_uuid.clone(),
                        org_name: a.org_name.clone(),
                    };
                    self.save_oauth(&a.name, login, true).await?;
                }
                other => return Err(AccountError::Invalid(format!("{}: unknown kind {other:?}", a.name))),
            }
            let record =
                self.store.find_account(&a.name).await?.ok_or_else(|| AccountError::NotFound(a.name.clone()))?;
            if a.priority.is_some() || a.weight.is_some() {
                self.store.set_routing(&record.id, a.priority, a.weight, crate::now_ms()).await?;
            }
            if let Some(plan) = &a.plan {
                self.store.set_plan(&record.id, plan).await?;
            }
            match a.status.as_deref() {
                Some("paused") => self.set_status(&record.id, AccountStatus::Paused).await?,
                Some("needs-login") => self.set_status(&record.id, AccountStatus::NeedsLogin).await?,
                _ => {}
            }
        }
        Ok(accounts.len())
    }

    /// Re-seal every stored secret under `new` in one transaction; pending logins are dropped.
    /// Every account's sealed tokens opened with `old` and re-sealed under `new` (not written: the caller
    /// writes everything in one transaction), with how many values that is.
    pub async fn resealed_accounts(&self, old: &Cipher, new: &Cipher) -> Result<(Vec<SealedRow>, usize), AccountError> {
        let mut rows = Vec::new();
        let mut count = 0;
        for r in self.list().await? {
            let mut reseal = |field: &'static str, sealed: &Option<String>| -> Result<Option<String>, AccountError> {
                match sealed {
                    Some(s) => {
                        count += 1;
                        let plain = old.open(s, &aad(&r.id, field)).map_err(|source| AccountError::Unreadable {
                            name: r.name.clone(),
                            field,
                            source,
                        })?;
                        Ok(Some(new.seal(plain.expose_secret(), &aad(&r.id, field))?))
                    }
                    None => Ok(None),
                }
            };
            rows.push(SealedRow {
                id: r.id.clone(),
                access_token: reseal("access_token", &r.access_token)?,
                refresh_token: reseal("refresh_token", &r.refresh_token)?,
                api_key: reseal("api_key", &r.api_key)?,
                token_version: r.token_version,
            });
        }
        Ok((rows, count))
    }

    /// Keep a login's PKCE verifier (sealed, bound to its state) until `expires_at_ms`.
    pub async fn put_pending(
        &self,
        state: &str,
        verifier: &SecretString,
        redirect_uri: &str,
        console: bool,
        account: Option<&str>,
        expires_at_ms: i64,
    ) -> Result<(), AccountError> {
        let pending = PendingLogin {
            state: state.to_owned(),
            verifier: self.cipher.seal(verifier.expose_secret(), &format!("pending/{state}"))?,
            redirect_uri: redirect_uri.to_owned(),
            console,
            account: account.map(str::to_owned),
            expires_at_ms,
        };
        Ok(self.store.put_pending_login(&pending).await?)
    }

    /// Take the pending login for `state` (once); returns the verifier and the stored login details.
    pub async fn take_pending(&self, state: &str) -> Result<Option<(SecretString, PendingLogin)>, AccountError> {
        match self.store.take_pending_login(state, crate::now_ms()).await? {
            Some(p) => {
                let verifier = self.cipher.open(&p.verifier, &format!("pending/{state}"))?;
                Ok(Some((verifier, p)))
            }
            None => Ok(None),
        }
    }
}

fn blank(id: String, name: &str, kind: AccountKind, created_at_ms: i64, now: i64) -> AccountRecord {
    AccountRecord {
        id,
        name: name.to_owned(),
        kind,
        status: AccountStatus::Active,
        access_token: None,
        refresh_token: None,
        api_key: None,
        expires_at_ms: None,
        email: None,
        account_uuid: None,
        org_uuid: None,
        org_name: None,
        created_at_ms,
        updated_at_ms: now,
        priority: 0,
        weight: 1,
        plan: None,
        token_version: 0,
    }
}
