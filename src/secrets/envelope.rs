//! AES-256-GCM envelope: `v3.<key version>.<base64url(salt ‖ nonce ‖ ciphertext)>`. Each value is sealed
//! under its own key, derived from the data key with HKDF-SHA256 and a random 128-bit salt, so no key ever
//! approaches AES-GCM's budget of about 2^32 random nonces however many payloads are kept; the owner's id
//! is the associated data, so a value copied to another row or column fails to open. `v2` values (one
//! key, random nonce) still open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::KeySet;

const NONCE_LEN: usize = 12;
const SALT_LEN: usize = 16;

/// The key one value is sealed under: HKDF-SHA256 of the data key with the value's salt.
fn value_key(data_key: &Zeroizing<[u8; 32]>, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), data_key.as_ref())
        .expand(b"switchyard value key v3", key.as_mut())
        .map_err(|_| CryptoError::Seal)?;
    Ok(key)
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "cannot decrypt a stored secret: the encryption key differs from the one it was written with \
         (check SWITCHYARD_ENCRYPTION_KEY, SWITCHYARD_SECRET_STORE and the key file), or the value was tampered with"
    )]
    WrongKey,
    #[error("a stored secret needs key version {0}, which the key store no longer holds")]
    MissingKeyVersion(u32),
    #[error("stored secret is malformed ({0})")]
    Malformed(&'static str),
    #[error("encryption failed")]
    Seal,
}

/// Seals and opens secrets with the data-encryption keys.
pub struct Cipher {
    /// Replaced whole when another process rotates the keys (a key set kept in a shared database).
    keys: std::sync::RwLock<std::sync::Arc<KeySet>>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher([REDACTED])")
    }
}

fn aead(key: &Zeroizing<[u8; 32]>) -> Aes256Gcm {
    Aes256Gcm::new(key.as_ref().into())
}

impl Cipher {
    /// A cipher with a single key (version 1).
    pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        Self::with_keys(KeySet::single(key.clone()))
    }

    pub fn with_keys(keys: KeySet) -> Self {
        Self { keys: std::sync::RwLock::new(std::sync::Arc::new(keys)) }
    }

    pub fn keys(&self) -> std::sync::Arc<KeySet> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Seal and open with `keys` from now on.
    pub fn replace(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(keys);
    }

    /// Encrypt `plaintext` under the current key, bound to `aad` (e.g. `account/<id>/refresh_token`).
    pub fn seal(&self, plaintext: &str, aad: &str) -> Result<String, CryptoError> {
        let keys = self.keys();
        let version = keys.current;
        let key = keys.key(version).ok_or(CryptoError::MissingKeyVersion(version))?;
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = aead(&value_key(key, &salt)?)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(SALT_LEN + NONCE_LEN + ct.len());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("v3.{version}.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypt a value sealed with one of our keys and the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, CryptoError> {
        let (format, version, body) = match sealed.split_once('.') {
            Some(("v1", body)) => (2, 1, body),
            Some((format @ ("v2" | "v3"), rest)) => {
                let (version, body) = rest.split_once('.').ok_or(CryptoError::Malformed("no key version"))?;
                let version = version.parse().map_err(|_| CryptoError::Malformed("bad key version"))?;
                (if format == "v3" { 3 } else { 2 }, version, body)
            }
            Some(_) => return Err(CryptoError::Malformed("unknown version")),
            None => return Err(CryptoError::Malformed("no version")),
        };
        let keys = self.keys();
        let key = keys.key(version).ok_or(CryptoError::MissingKeyVersion(version))?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Malformed("not base64"))?;
        let (key, raw) = if format == 3 {
            if raw.len() < SALT_LEN {
                return Err(CryptoError::Malformed("too short"));
            }
            let (salt, rest) = raw.split_at(SALT_LEN);
            (value_key(key, salt)?, rest)
        } else {
            (key.clone(), raw.as_slice())
        };
        if raw.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            aead(&key)
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
                .map_err(|_| CryptoError::WrongKey)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Malformed("not UTF-8"))?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// The key version a sealed value was written with.
    pub fn version_of(sealed: &str) -> Option<u32> {
        match sealed.split('.').collect::<Vec<_>>().as_slice() {
            ["v1", _] => Some(1),
            ["v2" | "v3", version, _] => version.parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    fn cipher(byte: u8) -> Cipher {
        Cipher::new(&Zeroizing::new([byte; 32]))
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let c = cipher(1);
        let a = c.seal("sk-ant-ort01-secret", "account/1/refresh").unwrap();
        let b = c.seal("sk-ant-ort01-secret", "account/1/refresh").unwrap();
        assert_ne!(a, b);
        assert!(!a.contains("secret"));
        assert_eq!(c.open(&a, "account/1/refresh").unwrap().expose_secret(), "sk-ant-ort01-secret");
        assert_eq!(Cipher::version_of(&a), Some(1));
        assert!(a.starts_with("v3.1."), "{a}");
    }

    #[test]
    fn values_sealed_under_the_shared_key_still_open() {
        // Written by the v2 envelope (one key for every value, random nonce) with key [1; 32].
        let v2 = "v2.1.yag9qdbbhn2DBxkd_-rjXMGU9M_2taK0d9XFLHA2qjeqO10508zWmg";
        assert_eq!(cipher(1).open(v2, "account/1/refresh_token").unwrap().expose_secret(), "legacy token");
        assert!(matches!(cipher(1).open(v2, "account/2/refresh_token"), Err(CryptoError::WrongKey)));
        assert_eq!(Cipher::version_of(v2), Some(1));
        // A v3 value cut short, or with its salt changed, does not open.
        let v3 = cipher(1).seal("x", "a").unwrap();
        assert!(matches!(cipher(1).open(&v3[..10], "a"), Err(CryptoError::Malformed(_))));
        let mut raw = URL_SAFE_NO_PAD.decode(v3.rsplit('.').next().unwrap()).unwrap();
        raw[0] ^= 1;
        let tampered = format!("v3.1.{}", URL_SAFE_NO_PAD.encode(raw));
        assert!(matches!(cipher(1).open(&tampered, "a"), Err(CryptoError::WrongKey)));
    }

    #[test]
    fn wrong_key_or_moved_value_is_a_clear_error() {
        let sealed = cipher(1).seal("x", "account/1/refresh").unwrap();
        assert!(matches!(cipher(2).open(&sealed, "account/1/refresh"), Err(CryptoError::WrongKey)));
        assert!(matches!(cipher(1).open(&sealed, "account/2/refresh"), Err(CryptoError::WrongKey)));
        assert!(matches!(cipher(1).open("garbage", "a"), Err(CryptoError::Malformed(_))));
        assert!(matches!(cipher(1).open("v1.AAAA", "a"), Err(CryptoError::Malformed(_))));
    }

    #[test]
    fn rotated_keys_open_old_values_and_seal_with_the_new() {
        let mut keys = KeySet::generate();
        let old = Cipher::with_keys(keys.clone()).seal("t", "a").unwrap();
        keys.rotate();
        let both = Cipher::with_keys(keys.clone());
        assert_eq!(both.open(&old, "a").unwrap().expose_secret(), "t");
        let new = both.seal("t", "a").unwrap();
        assert_eq!(Cipher::version_of(&new), Some(2));
        keys.retire_old();
        let only_new = Cipher::with_keys(keys);
        assert!(matches!(only_new.open(&old, "a"), Err(CryptoError::MissingKeyVersion(1))));
        assert_eq!(only_new.open(&new, "a").unwrap().expose_secret(), "t");
    }
}
