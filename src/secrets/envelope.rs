//! AES-256-GCM envelope: `v1.<base64url(nonce ‖ ciphertext)>`, a random 96-bit nonce per value and the
//! owner's id as associated data, so a value copied to another row or column fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::SecretString;
use zeroize::Zeroizing;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "cannot decrypt a stored secret: the encryption key differs from the one it was written with \
         (check SWITCHYARD_ENCRYPTION_KEY or the key file), or the value was tampered with"
    )]
    WrongKey,
    #[error("stored secret is malformed ({0})")]
    Malformed(&'static str),
    #[error("encryption failed")]
    Seal,
}

/// Seals and opens secrets with the data-encryption key.
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher([REDACTED])")
    }
}

impl Cipher {
    pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        Self { aead: Aes256Gcm::new(key.as_ref().into()) }
    }

    /// Encrypt `plaintext` bound to `aad` (e.g. `account/<id>/refresh_token`).
    pub fn seal(&self, plaintext: &str, aad: &str) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Decrypt a value sealed with the same key and `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, CryptoError> {
        let (version, body) = sealed.split_once('.').ok_or(CryptoError::Malformed("no version"))?;
        if version != VERSION {
            return Err(CryptoError::Malformed("unknown version"));
        }
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| CryptoError::Malformed("not base64"))?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed("too short"));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.aead
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
                .map_err(|_| CryptoError::WrongKey)?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Malformed("not UTF-8"))?;
        Ok(SecretString::from(text.to_owned()))
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
    }

    #[test]
    fn wrong_key_or_moved_value_is_a_clear_error() {
        let sealed = cipher(1).seal("x", "account/1/refresh").unwrap();
        assert!(matches!(cipher(2).open(&sealed, "account/1/refresh"), Err(CryptoError::WrongKey)));
        assert!(matches!(cipher(1).open(&sealed, "account/2/refresh"), Err(CryptoError::WrongKey)));
        assert!(matches!(cipher(1).open("garbage", "a"), Err(CryptoError::Malformed(_))));
        assert!(matches!(cipher(1).open("v1.AAAA", "a"), Err(CryptoError::Malformed(_))));
    }
}
