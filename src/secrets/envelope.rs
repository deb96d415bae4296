//! AES-256-GCM envelope: `v2.<key version>.<base64url(nonce ‖ ciphertext)>`, a random 96-bit nonce per value
//! and the owner's id as associated data, so a value copied to another row or column fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::KeySet;

const NONCE_LEN: usize = 12;

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
    keys: KeySet,
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
        Self { keys: KeySet::single(key.clone()) }
    }

    pub fn with_keys(keys: KeySet) -> Self {
        Self { keys }
    }

    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Encrypt `plaintext` under the current key, bound to `aad` (e.g. `account/<id>/refresh_token`).
    pub fn seal(&self, plaintext: &str, aad: &str) -> Result<String, CryptoError> {
        let version = self.keys.current;
        let key = self.keys.key(version).ok_or(CryptoError::MissingKeyVersion(version))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = aead(key)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("v2.{version}.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypt a value sealed with one of our keys and the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, CryptoError> {
        let (version, body) = match sealed.split_once('.') {
            Some(("v1", body)) => (1, body),
            Some(("v2", rest)) => {
                let (version, body) = rest.split_once('.').ok_or(CryptoError::Malformed("no key version"))?;
                (version.parse().map_err(|_| CryptoError::Malformed("bad key version"))?, body)
            }
            Some(_) => return Err(CryptoError::Malformed("unknown version")),
            None => return Err(CryptoError::Malformed("no version")),
        };
        let key = self.keys.key(version).ok_or(CryptoError::MissingKeyVersion(version))?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Malformed("not base64"))?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            aead(key)
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
            ["v2", version, _] => version.parse().ok(),
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
