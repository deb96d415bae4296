//! Administrator credentials and sessions: the password (Argon2id, PHC string in the settings table), the
//! optional TOTP second factor (its secret sealed like tokens), server-side sessions with expiry and a
//! CSRF token each, and a login brake per source and method that counts attempts before checking them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

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

/// Settings keys of stored sessions begin with this, then the digest of the session id.
const SESSION_PREFIX: &str = "session/";

fn session_key(id_digest: &str) -> String {
    format!("{SESSION_PREFIX}{id_digest}")
}

impl Session {
    fn to_json(&self) -> String {
        let origin = match &self.origin {
            SessionOrigin::Key { id, hash } => {
                serde_json::json!({"key": id, "hash": hash.iter().map(|b| format!("{b:02x}")).collect::<String>()})
            }
            SessionOrigin::Password => serde_json::json!("password"),
            SessionOrigin::Link => serde_json::json!("link"),
        };
        serde_json::json!({
            "actor": self.actor, "role": self.role.as_str(), "csrf_digest": self.csrf_digest,
            "expires_at_ms": self.expires_at_ms, "created_at_ms": self.created_at_ms, "origin": origin,
        })
        .to_string()
    }

    /// A stored session; `None` for anything malformed (it is then simply not a session).
    fn from_json(text: &str) -> Option<Session> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let origin = match &v["origin"] {
            serde_json::Value::String(s) if s == "password" => SessionOrigin::Password,
            serde_json::Value::String(s) if s == "link" => SessionOrigin::Link,
            serde_json::Value::Object(o) => {
                let hex = o.get("hash")?.as_str()?;
                let mut hash = [0u8; 32];
                for (i, byte) in hash.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
                }
                SessionOrigin::Key { id: o.get("key")?.as_str()?.to_owned(), hash }
            }
            _ => return None,
        };
        Some(Session {
            actor: v["actor"].as_str()?.to_owned(),
            role: v["role"].as_str()?.parse().ok()?,
            csrf_digest: v["csrf_digest"].as_str()?.to_owned(),
            expires_at_ms: v["expires_at_ms"].as_i64()?,
            created_at_ms: v["created_at_ms"].as_i64()?,
            origin,
        })
    }

    /// Whether `given` is this session's secret (compared in constant time, by digest).
    pub fn secret_matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(digest(given).as_bytes().ct_eq(self.csrf_digest.as_bytes()))
    }
}

/// A logged-in administrator or viewer.
#[derive(Debug, Clone)]
pub struct Session {
    pub actor: String,
    pub role: Role,
    /// SHA-256 (hex) of the session secret: the secret itself is handed out once, at login.
    pub csrf_digest: String,
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
    super::hash_key(id)
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
        // A session logged out on another instance is gone from the store: end it here too. One just
        // created may not be written yet, so the newest few seconds are left alone.
        let stored: std::collections::HashSet<String> = store
            .list_settings()
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix(SESSION_PREFIX).map(str::to_owned))
            .collect();
        let now = crate::now_ms();
        self.lock().retain(|key, s| stored.contains(key) || now - s.created_at_ms < 5_000);
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

    /// A new session; returns the cookie value, the session secret and the session. Kept in memory and
    /// (by [`Sessions::persist`]) in the store, so any instance on the same store accepts it.
    pub fn create(&self, actor: String, role: Role, origin: SessionOrigin) -> (String, String, Session) {
        let id = random_token();
        let secret = random_token();
        let now = crate::now_ms();
        let session = Session {
            actor,
            role,
            csrf_digest: digest(&secret),
            expires_at_ms: now + self.ttl_ms,
            created_at_ms: now,
            origin,
        };
        let mut map = self.lock();
        map.retain(|_, s| s.expires_at_ms > now);
        map.insert(digest(&id), session.clone());
        (id, secret, session)
    }

    /// Write a session to the store under its id's digest (neither the id, which is the cookie, nor the
    /// secret is stored).
    pub async fn persist(&self, store: &dyn Store, id: &str, session: &Session) -> Result<(), StoreError> {
        store.put_setting(&session_key(&digest(id)), Some(&session.to_json()), crate::now_ms()).await
    }

    /// Take a session started on another instance into memory, if the store has it and this one does not.
    pub async fn load(&self, store: &dyn Store, id: &str) -> Result<(), StoreError> {
        let key = digest(id);
        if self.lock().contains_key(&key) {
            return Ok(());
        }
        if let Some(session) = store.get_setting(&session_key(&key)).await?.as_deref().and_then(Session::from_json) {
            self.lock().insert(key, session);
        }
        Ok(())
    }

    /// End a session here and in the store.
    pub async fn forget(&self, store: &dyn Store, id: &str) -> Result<(), StoreError> {
        let key = digest(id);
        self.lock().remove(&key);
        store.put_setting(&session_key(&key), None, crate::now_ms()).await
    }

    /// Delete expired sessions from the store (the upkeep's hourly round).
    pub async fn purge_expired(store: &dyn Store) -> Result<u64, StoreError> {
        let now = crate::now_ms();
        let mut purged = 0;
        for (key, value) in store.list_settings().await? {
            if key.starts_with(SESSION_PREFIX) && Session::from_json(&value).is_none_or(|s| s.expires_at_ms <= now) {
                store.put_setting(&key, None, now).await?;
                purged += 1;
            }
        }
        Ok(purged)
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

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_ms / 1000
    }
}

/// Which way in a login tried. Each has its own brake, so guessing passwords cannot lock anyone out of a
/// key or login-link login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginMethod {
    Key,
    Password,
    Link,
}

/// Failed logins per source (loopback as one, IPv6 by its /64) and method, as a leaky bucket: up to
/// `LOGIN_BURST` attempts at once, then one more per `LOGIN_DRAIN_MS`. An attempt is counted before it is
/// checked ([`LoginBrake::take`]), so a concurrent burst is evaluated no more often than the bucket allows;
/// a success gives its unit back.
#[derive(Debug, Default)]
pub struct LoginBrake {
    buckets: Mutex<HashMap<(IpAddr, LoginMethod), Bucket>>,
}

/// Attempts a source may make at once before it has to wait.
pub const LOGIN_BURST: i64 = 5;
/// How fast a counted attempt drains away.
pub const LOGIN_DRAIN_MS: i64 = 30_000;
/// Buckets kept at most; beyond this, empty ones are dropped first and then the request is refused.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Counted attempts in thousandths, as of `at_ms`.
    level: i64,
    at_ms: i64,
}

impl Bucket {
    fn level_at(self, now: i64) -> i64 {
        let drained = (now - self.at_ms).max(0).saturating_mul(1000) / LOGIN_DRAIN_MS;
        (self.level - drained).max(0)
    }
}

impl LoginBrake {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, LoginMethod), Bucket>> {
        self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count one attempt from `ip` by `method`, or say how many seconds it must wait.
    pub fn take(&self, ip: IpAddr, method: LoginMethod) -> Result<(), u64> {
        self.take_at(ip, method, crate::now_ms())
    }

    fn take_at(&self, ip: IpAddr, method: LoginMethod, now: i64) -> Result<(), u64> {
        let key = (super::source(ip), method);
        let mut map = self.lock();
        if map.len() >= MAX_BUCKETS && !map.contains_key(&key) {
            map.retain(|_, b| b.level_at(now) > 0);
            if map.len() >= MAX_BUCKETS {
                return Err(u64::try_from(LOGIN_DRAIN_MS / 1000).unwrap_or(30));
            }
        }
        let bucket = map.entry(key).or_insert(Bucket { level: 0, at_ms: now });
        let level = bucket.level_at(now);
        if level + 1000 > LOGIN_BURST * 1000 {
            let over = level + 1000 - LOGIN_BURST * 1000;
            return Err(u64::try_from(over * LOGIN_DRAIN_MS / 1000 / 1000 + 1).unwrap_or(1));
        }
        *bucket = Bucket { level: level + 1000, at_ms: now };
        Ok(())
    }

    /// A counted attempt succeeded: it gives its unit back.
    pub fn give_back(&self, ip: IpAddr, method: LoginMethod) {
        let now = crate::now_ms();
        if let Some(bucket) = self.lock().get_mut(&(super::source(ip), method)) {
            *bucket = Bucket { level: (bucket.level_at(now) - 1000).max(0), at_ms: now };
        }
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
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sessions_expire_and_tokens_are_single_use() {
        let sessions = Sessions::new(50);
        let keys = crate::access::ClientKeys::default();
        let (id, secret, s) = sessions.create("link".into(), Role::Admin, SessionOrigin::Link);
        assert_eq!(sessions.get(&id, &keys).map(|s| s.csrf_digest), Some(s.csrf_digest.clone()));
        assert!(s.secret_matches(&secret) && !s.secret_matches("guess"));
        let key_session = Session { origin: SessionOrigin::Key { id: "k".into(), hash: [7; 32] }, ..s.clone() };
        for session in [&s, &key_session] {
            let back = Session::from_json(&session.to_json()).unwrap();
            assert_eq!(
                (back.origin, back.csrf_digest.as_str()),
                (session.origin.clone(), session.csrf_digest.as_str())
            );
        }
        assert!(Session::from_json("{}").is_none());
        assert!(sessions.get("nope", &keys).is_none());
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(sessions.get(&id, &keys).is_none());
        // A key session without its key is over.
        let (id, _, _) =
            sessions.create("key:a".into(), Role::Admin, SessionOrigin::Key { id: "k".into(), hash: [0; 32] });
        assert!(sessions.get(&id, &keys).is_none());
    }

    #[test]
    fn the_brake_counts_before_checking_drains_and_keeps_methods_apart() {
        let brake = LoginBrake::default();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let t = 1_000_000;
        for _ in 0..LOGIN_BURST {
            assert!(brake.take_at(ip, LoginMethod::Password, t).is_ok());
        }
        let wait = brake.take_at(ip, LoginMethod::Password, t).expect_err("full");
        assert_eq!(wait, u64::try_from(LOGIN_DRAIN_MS / 1000).unwrap() + 1);
        assert!(brake.take_at(ip, LoginMethod::Key, t).is_ok(), "a key login has its own bucket");
        // The whole of loopback is one source, and so is an IPv6 /64.
        for n in 1..=LOGIN_BURST {
            let other = IpAddr::from([127, 0, 0, u8::try_from(n).unwrap()]);
            assert!(brake.take_at(other, LoginMethod::Link, t).is_ok());
        }
        assert!(brake.take_at(IpAddr::from([127, 9, 9, 9]), LoginMethod::Link, t).is_err());
        assert!(brake.take_at("::1".parse().unwrap(), LoginMethod::Link, t).is_err());
        assert!(brake.take_at("::ffff:127.0.0.7".parse().unwrap(), LoginMethod::Link, t).is_err());
        // One attempt drains away per LOGIN_DRAIN_MS.
        assert!(brake.take_at(ip, LoginMethod::Password, t + LOGIN_DRAIN_MS - 1).is_err());
        assert!(brake.take_at(ip, LoginMethod::Password, t + LOGIN_DRAIN_MS).is_ok());
        assert!(brake.take_at(ip, LoginMethod::Password, t + LOGIN_DRAIN_MS).is_err());
        assert!(brake.take_at(ip, LoginMethod::Password, t + 10 * LOGIN_DRAIN_MS).is_ok());
    }
}
