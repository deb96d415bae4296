//! Administrator credentials and sessions: the password (Argon2id, PHC string in the settings table), the
//! optional TOTP second factor (its secret sealed like tokens), server-side sessions with expiry and a
//! CSRF token each, and a per-IP brake on failed logins that backs off exponentially.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::Role;
use super::totp;
use crate::secrets::{Cipher, CryptoError};
use crate::store::{Store, StoreError};

const PASSWORD: &str = "admin.password";
const TOTP: &str = "admin.totp";
/// The last TOTP time step a login used (a code is accepted once).
const TOTP_LAST_STEP: &str = "admin.totp_last_step";
/// The shortest administrator password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("password hashing failed")]
    Hash,
    #[error("the password must have at least 12 characters")]
    Weak,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Set the administrator password; with `totp`, also a new TOTP secret, returned as an `otpauth://` URL.
pub async fn set_password(
    store: &dyn Store,
    cipher: &Cipher,
    password: &SecretString,
    totp: bool,
) -> Result<Option<String>, AdminError> {
    if password.expose_secret().chars().count() < MIN_PASSWORD_CHARS {
        return Err(AdminError::Weak);
    }
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|_| AdminError::Hash)?;
    let phc = argon2::Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map_err(|_| AdminError::Hash)?
        .to_string();
    let now = crate::now_ms();
    store.put_setting(PASSWORD, Some(&phc), now).await?;
    end_login_link(store).await?;
    // Sessions started with the old password (or TOTP secret) end.
    store.put_setting(PASSWORD_SESSIONS_NOT_BEFORE, Some(&now.to_string()), now).await?;
    if !totp {
        store.put_setting(TOTP, None, now).await?;
        return Ok(None);
    }
    let mut secret = [0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    let encoded = totp::base32_encode(&secret);
    store.put_setting(TOTP, Some(&cipher.seal(&encoded, "settings/admin.totp")?), now).await?;
    Ok(Some(format!("otpauth://totp/Switchyard:admin?secret={encoded}&issuer=Switchyard&digits=6&period=30")))
}

/// The TOTP secret re-sealed under `new`, if one is set: (setting key, new value).
pub async fn resealed_totp(
    store: &dyn Store,
    old: &Cipher,
    new: &Cipher,
) -> Result<Option<(String, String)>, AdminError> {
    let Some(sealed) = store.get_setting(TOTP).await? else { return Ok(None) };
    let plain = old.open(&sealed, "settings/admin.totp")?;
    Ok(Some((TOTP.to_owned(), new.seal(plain.expose_secret(), "settings/admin.totp")?)))
}

/// Whether the TOTP secret (if any) opens with `cipher`.
pub async fn totp_opens(store: &dyn Store, cipher: &Cipher) -> Result<bool, StoreError> {
    Ok(match store.get_setting(TOTP).await? {
        Some(sealed) => cipher.open(&sealed, "settings/admin.totp").is_ok(),
        None => true,
    })
}

pub async fn has_password(store: &dyn Store) -> Result<bool, StoreError> {
    Ok(store.get_setting(PASSWORD).await?.is_some())
}

/// Why a password login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    Ok,
    Wrong,
    /// Right password, second factor missing or wrong.
    NeedsTotp,
    NoPassword,
}

pub async fn check_password(
    store: &dyn Store,
    cipher: &Cipher,
    password: &str,
    code: Option<&str>,
) -> Result<PasswordCheck, AdminError> {
    let Some(phc) = store.get_setting(PASSWORD).await? else { return Ok(PasswordCheck::NoPassword) };
    // Argon2 takes tens of milliseconds of CPU: off the event loop, which serves other connections.
    let password = secrecy::SecretString::from(password.to_owned());
    let verified = tokio::task::spawn_blocking(move || {
        let hash = PasswordHash::new(&phc).map_err(|_| AdminError::Hash)?;
        Ok::<bool, AdminError>(
            argon2::Argon2::default().verify_password(password.expose_secret().as_bytes(), &hash).is_ok(),
        )
    })
    .await
    .map_err(|_| AdminError::Hash)??;
    if !verified {
        return Ok(PasswordCheck::Wrong);
    }
    let Some(sealed) = store.get_setting(TOTP).await? else { return Ok(PasswordCheck::Ok) };
    let secret = cipher.open(&sealed, "settings/admin.totp")?;
    let secret = totp::base32_decode(secret.expose_secret()).unwrap_or_default();
    let now = u64::try_from(crate::now_ms() / 1000).unwrap_or(0);
    let previous = store.get_setting(TOTP_LAST_STEP).await?;
    let last: u64 = previous.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    let Some(step) = code.and_then(|code| totp::verify_step(&secret, code, now, last)) else {
        return Ok(PasswordCheck::NeedsTotp);
    };
    // Taken only if no other login moved the step meanwhile: a code works once.
    let taken = match &previous {
        Some(previous) => store.take_setting(TOTP_LAST_STEP, previous).await?,
        None => true,
    };
    if !taken {
        return Ok(PasswordCheck::NeedsTotp);
    }
    store.put_setting(TOTP_LAST_STEP, Some(&step.to_string()), crate::now_ms()).await?;
    Ok(PasswordCheck::Ok)
}

/// What a session was started with; it lives only as long as that credential does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOrigin {
    /// A client key: ends when the key is revoked, expires or is rotated (its secret's hash changes).
    Key { id: String, hash: [u8; 32] },
    /// The administrator password: ends when the password or the TOTP secret changes.
    Password,
    /// A single-use login link.
    Link,
}

/// A logged-in administrator or viewer.
#[derive(Debug, Clone)]
pub struct Session {
    pub actor: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at_ms: i64,
    pub created_at_ms: i64,
    pub origin: SessionOrigin,
}

/// Settings holding "sessions started before this epoch ms are over": for every session (log out
/// everyone) and for password sessions (the password or TOTP changed). Kept in the store, so a change made
/// by the CLI or another instance reaches every server within its next second of upkeep.
const SESSIONS_NOT_BEFORE: &str = "admin.sessions_not_before_ms";
const PASSWORD_SESSIONS_NOT_BEFORE: &str = "admin.password_sessions_not_before_ms";

/// End every admin session, on every server using this store (within a second).
pub async fn end_all_sessions(store: &dyn Store) -> Result<(), StoreError> {
    let now = crate::now_ms();
    store.put_setting(SESSIONS_NOT_BEFORE, Some(&now.to_string()), now).await
}

/// Server-side sessions, keyed by the SHA-256 of the cookie value (the store of sessions never holds a
/// usable cookie).
#[derive(Debug)]
pub struct Sessions {
    ttl_ms: i64,
    map: Mutex<HashMap<String, Session>>,
    not_before_ms: std::sync::atomic::AtomicI64,
    password_not_before_ms: std::sync::atomic::AtomicI64,
}

fn digest(id: &str) -> String {
    Sha256::digest(id.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    pub fn new(ttl_ms: i64) -> Self {
        Self {
            ttl_ms,
            map: Mutex::new(HashMap::new()),
            not_before_ms: std::sync::atomic::AtomicI64::new(0),
            password_not_before_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Read the session epochs from the store (called every second by the server's upkeep, and at once
    /// after a change made here).
    pub async fn sync(&self, store: &dyn Store) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let read = async |key| -> Result<i64, StoreError> {
            Ok(store.get_setting(key).await?.and_then(|v| v.parse().ok()).unwrap_or(0))
        };
        self.not_before_ms.store(read(SESSIONS_NOT_BEFORE).await?, Relaxed);
        self.password_not_before_ms.store(read(PASSWORD_SESSIONS_NOT_BEFORE).await?, Relaxed);
        Ok(())
    }

    /// Whether what started `session` still stands.
    fn still_valid(&self, session: &Session, keys: &super::ClientKeys, now: i64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if session.expires_at_ms <= now || session.created_at_ms <= self.not_before_ms.load(Relaxed) {
            return false;
        }
        match &session.origin {
            SessionOrigin::Key { id, hash } => keys.is_current(id, hash, now),
            SessionOrigin::Password => session.created_at_ms > self.password_not_before_ms.load(Relaxed),
            SessionOrigin::Link => true,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session; returns the cookie value and the session.
    pub fn create(&self, actor: String, role: Role, origin: SessionOrigin) -> (String, Session) {
        let id = random_token();
        let now = crate::now_ms();
        let session =
            Session { actor, role, csrf: random_token(), expires_at_ms: now + self.ttl_ms, created_at_ms: now, origin };
        let mut map = self.lock();
        let now = crate::now_ms();
        map.retain(|_, s| s.expires_at_ms > now);
        map.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The session a cookie names, while it and what started it are valid (checked against `keys`, the
    /// live client keys).
    pub fn get(&self, id: &str, keys: &super::ClientKeys) -> Option<Session> {
        let mut map = self.lock();
        let key = digest(id);
        match map.get(&key) {
            Some(s) if self.still_valid(s, keys, crate::now_ms()) => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(&digest(id));
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_ms / 1000
    }
}

/// Failed logins per IP: after three, each further attempt waits 2^(n-3) seconds (at most 15 minutes).
#[derive(Debug, Default)]
pub struct LoginBrake {
    failures: Mutex<HashMap<IpAddr, (u32, i64)>>,
}

impl LoginBrake {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, i64)>> {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Seconds `ip` must still wait before trying again.
    pub fn wait(&self, ip: IpAddr) -> Option<u64> {
        let now = crate::now_ms();
        self.lock()
            .get(&ip)
            .and_then(|(_, until)| (*until > now).then(|| u64::try_from((until - now) / 1000 + 1).unwrap_or(1)))
    }

    pub fn failed(&self, ip: IpAddr) {
        let now = crate::now_ms();
        let mut map = self.lock();
        if map.len() > 10_000 {
            map.retain(|_, (_, until)| *until > now);
        }
        let entry = map.entry(ip).or_insert((0, 0));
        entry.0 += 1;
        if entry.0 >= 3 {
            let secs = 1i64 << (entry.0 - 3).min(10);
            entry.1 = now + secs.min(900) * 1000;
        }
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }
}

/// The single-use dashboard login link: only its digest and expiry are stored (in the settings table, so
/// `switchyard dashboard-link` can issue one for a running server, and any instance on the same data can
/// redeem it). A new link replaces the previous one.
const LOGIN_LINK: &str = "admin.login_link";

/// How long a dashboard login link stays valid.
pub const LOGIN_LINK_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// End the login link (once another way in exists, a link left lying around is only a risk).
pub async fn end_login_link(store: &dyn Store) -> Result<(), StoreError> {
    store.put_setting(LOGIN_LINK, None, crate::now_ms()).await
}

/// Issue a new single-use login token (the previous one stops working).
pub async fn issue_login_link(store: &dyn Store, ttl_ms: i64) -> Result<String, StoreError> {
    let token = random_token();
    let now = crate::now_ms();
    store.put_setting(LOGIN_LINK, Some(&format!("{}:{}", digest(&token), now + ttl_ms)), now).await?;
    Ok(token)
}

/// Consume the login token if `given` is the current, unexpired one.
pub async fn redeem_login_link(store: &dyn Store, given: &str) -> Result<bool, StoreError> {
    use subtle::ConstantTimeEq;
    let Some(stored) = store.get_setting(LOGIN_LINK).await? else { return Ok(false) };
    let Some((hash, expires)) = stored.split_once(':') else { return Ok(false) };
    let matches = bool::from(hash.as_bytes().ct_eq(digest(given).as_bytes()));
    let live = expires.parse::<i64>().is_ok_and(|e| e > crate::now_ms());
    // Taken only if still the same value: two redeemers racing, one wins.
    Ok(matches && live && store.take_setting(LOGIN_LINK, &stored).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_tokens_are_single_use() {
        let sessions = Sessions::new(50);
        let keys = crate::access::ClientKeys::default();
        let (id, s) = sessions.create("link".into(), Role::Admin, SessionOrigin::Link);
        assert_eq!(sessions.get(&id, &keys).map(|s| s.csrf), Some(s.csrf));
        assert!(sessions.get("nope", &keys).is_none());
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(sessions.get(&id, &keys).is_none());
        // A key session without its key is over.
        let (id, _) =
            sessions.create("key:a".into(), Role::Admin, SessionOrigin::Key { id: "k".into(), hash: [0; 32] });
        assert!(sessions.get(&id, &keys).is_none());
    }

    #[test]
    fn brake_backs_off_after_three_failures() {
        let brake = LoginBrake::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([10, 0, 0, 1]));
        brake.failed(ip);
        brake.failed(ip);
        assert!(brake.wait(ip).is_none());
        brake.failed(ip);
        assert!(brake.wait(ip).is_some());
        brake.succeeded(ip);
        assert!(brake.wait(ip).is_none());
    }
}
