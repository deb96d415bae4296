//! The data-encryption keys: a small set of versioned 256-bit keys (one current, older ones kept only while
//! a rotation is under way), serialized as JSON and optionally wrapped under a passphrase with Argon2id.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CryptoError;

/// Versioned data keys; `current` seals, every key opens what it sealed.
#[derive(Clone)]
pub struct KeySet {
    pub current: u32,
    keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("current", &self.current).field("versions", &self.versions()).finish()
    }
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(key.as_mut());
    key
}

fn decode_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
    if bytes.len() != 32 {
        return None;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Some(key)
}

/// On-disk / in-keychain form.
#[derive(Serialize, Deserialize)]
struct Plain {
    format: String,
    current: u32,
    keys: BTreeMap<u32, String>,
}

/// Passphrase-wrapped form: the `Plain` JSON sealed with a key derived by Argon2id.
#[derive(Serialize, Deserialize)]
struct Wrapped {
    format: String,
    kdf: Kdf,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    alg: String,
    salt: String,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
}

const PLAIN_FORMAT: &str = "switchyard-keys-v1";
const WRAPPED_FORMAT: &str = "switchyard-keys-wrapped-v1";

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("the key material is not a switchyard key set")]
    Malformed,
    #[error("the key file is protected by a passphrase: set SWITCHYARD_PASSPHRASE")]
    NeedsPassphrase,
    #[error("wrong passphrase for the key file (or the file was tampered with)")]
    WrongPassphrase,
    #[error("key derivation failed")]
    Kdf,
    #[error("the key derivation parameters are out of bounds (memory {m_cost} KiB, {t_cost} passes, {p_cost} lanes)")]
    KdfBounds { m_cost: u32, t_cost: u32, p_cost: u32 },
}

/// How hard a passphrase is stretched. The key file is opened at every start, so it costs the minimum
/// OWASP recommends; a backup is a file that travels and may be attacked offline, so it costs more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfCost {
    KeyFile,
    Backup,
}

impl KdfCost {
    /// (memory KiB, passes, lanes)
    fn params(self) -> (u32, u32, u32) {
        match self {
            Self::KeyFile => (19_456, 2, 1),
            Self::Backup => (65_536, 3, 1),
        }
    }
}

/// The most a stored file may ask of the KDF: a crafted file must not make opening it exhaust memory or
/// time (256 MiB, 10 passes, 4 lanes — well above what this program writes).
const MAX_M_COST: u32 = 262_144;
const MAX_T_COST: u32 = 10;
const MAX_P_COST: u32 = 4;

/// The format name inside a backup file (`storage backup` / `storage restore`).
pub const BACKUP_FORMAT: &str = "switchyard-backup-v1";

/// Seal `plaintext` under a passphrase: Argon2id at `cost` then AES-256-GCM. Used for wrapped key files
/// and for backups.
pub fn seal_with_passphrase(
    plaintext: &[u8],
    passphrase: &SecretString,
    format: &str,
    cost: KdfCost,
) -> Result<String, KeySetError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let (m_cost, t_cost, p_cost) = cost.params();
    let kdf = Kdf { alg: "argon2id".into(), salt: STANDARD.encode(salt), m_cost, t_cost, p_cost };
    let key = derive(passphrase, &kdf)?;
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = Aes256Gcm::new(key.as_ref().into())
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: format.as_bytes() })
        .map_err(|_| KeySetError::Kdf)?;
    let wrapped = Wrapped {
        format: format.to_owned(),
        kdf,
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ciphertext),
    };
    serde_json::to_string_pretty(&wrapped).map_err(|_| KeySetError::Malformed)
}

/// Open what [`seal_with_passphrase`] sealed with the same `format`.
pub fn open_with_passphrase(
    text: &str,
    passphrase: &SecretString,
    format: &str,
) -> Result<Zeroizing<Vec<u8>>, KeySetError> {
    let wrapped = read_wrapped(text, format)?;
    let key = derive(passphrase, &wrapped.kdf)?;
    let nonce = STANDARD.decode(&wrapped.nonce).map_err(|_| KeySetError::Malformed)?;
    let ciphertext = STANDARD.decode(&wrapped.ciphertext).map_err(|_| KeySetError::Malformed)?;
    if nonce.len() != 12 {
        return Err(KeySetError::Malformed);
    }
    Aes256Gcm::new(key.as_ref().into())
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: format.as_bytes() })
        .map(Zeroizing::new)
        .map_err(|_| KeySetError::WrongPassphrase)
}

/// Read a sealed file's envelope (everything before the passphrase is needed): its format, and KDF
/// parameters within the bounds, so a crafted file is refused before it costs memory or time.
fn read_wrapped(text: &str, format: &str) -> Result<Wrapped, KeySetError> {
    let wrapped: Wrapped = serde_json::from_str(text).map_err(|_| KeySetError::Malformed)?;
    if wrapped.format != format || wrapped.kdf.alg != "argon2id" {
        return Err(KeySetError::Malformed);
    }
    let kdf = &wrapped.kdf;
    if kdf.m_cost > MAX_M_COST || kdf.t_cost > MAX_T_COST || kdf.p_cost > MAX_P_COST {
        return Err(KeySetError::KdfBounds { m_cost: kdf.m_cost, t_cost: kdf.t_cost, p_cost: kdf.p_cost });
    }
    Ok(wrapped)
}

/// Whether `text` is a well-formed envelope of `format` whose KDF parameters are within bounds (the
/// fuzz target's view of the backup reader: the KDF itself is too slow to run per input).
pub fn envelope_ok(text: &str, format: &str) -> bool {
    read_wrapped(text, format).is_ok()
}

/// Argon2id under `kdf`. Parameters read from a file are bounded by [`read_wrapped`] before they get here;
/// the ones this program writes come from [`KdfCost`].
fn derive(passphrase: &SecretString, kdf: &Kdf) -> Result<Zeroizing<[u8; 32]>, KeySetError> {
    let salt = STANDARD.decode(&kdf.salt).map_err(|_| KeySetError::Malformed)?;
    let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32)).map_err(|_| KeySetError::Kdf)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.expose_secret().as_bytes(), &salt, key.as_mut())
        .map_err(|_| KeySetError::Kdf)?;
    Ok(key)
}

impl KeySet {
    /// A new set with one fresh random key, version 1.
    pub fn generate() -> Self {
        Self { current: 1, keys: BTreeMap::from([(1, random_key())]) }
    }

    /// A set holding just `key` as version 1 (`SWITCHYARD_ENCRYPTION_KEY`).
    pub fn single(key: Zeroizing<[u8; 32]>) -> Self {
        Self { current: 1, keys: BTreeMap::from([(1, key)]) }
    }

    /// Parse base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Self> {
        decode_key(text).map(Self::single)
    }

    pub fn key(&self, version: u32) -> Option<&Zeroizing<[u8; 32]>> {
        self.keys.get(&version)
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Add a fresh key and make it current; returns its version. Older keys stay until `retire_old`.
    pub fn rotate(&mut self) -> u32 {
        let next = self.keys.keys().max().copied().unwrap_or(0) + 1;
        self.keys.insert(next, random_key());
        self.current = next;
        next
    }

    /// Drop every key but the current one.
    pub fn retire_old(&mut self) {
        let current = self.current;
        self.keys.retain(|v, _| *v == current);
    }

    /// Serialize, wrapped under `passphrase` when one is given.
    pub fn to_text(&self, passphrase: Option<&SecretString>) -> Result<Zeroizing<String>, KeySetError> {
        let plain = Plain {
            format: PLAIN_FORMAT.into(),
            current: self.current,
            keys: self.keys.iter().map(|(v, k)| (*v, STANDARD.encode(k.as_ref()))).collect(),
        };
        let json = Zeroizing::new(serde_json::to_string(&plain).map_err(|_| KeySetError::Malformed)?);
        match passphrase {
            Some(p) => seal_with_passphrase(json.as_bytes(), p, WRAPPED_FORMAT, KdfCost::KeyFile).map(Zeroizing::new),
            None => Ok(json),
        }
    }

    /// Parse what `to_text` wrote; also a bare base64 key (the first releases' key file).
    pub fn from_text(text: &str, passphrase: Option<&SecretString>) -> Result<Self, KeySetError> {
        if let Some(set) = Self::from_base64(text) {
            return Ok(set);
        }
        let value: serde_json::Value = serde_json::from_str(text).map_err(|_| KeySetError::Malformed)?;
        let plain_json = match value.get("format").and_then(|f| f.as_str()) {
            Some(PLAIN_FORMAT) => Zeroizing::new(text.as_bytes().to_vec()),
            Some(WRAPPED_FORMAT) => {
                let passphrase = passphrase.ok_or(KeySetError::NeedsPassphrase)?;
                open_with_passphrase(text, passphrase, WRAPPED_FORMAT)?
            }
            _ => return Err(KeySetError::Malformed),
        };
        let plain: Plain = serde_json::from_slice(&plain_json).map_err(|_| KeySetError::Malformed)?;
        let mut keys = BTreeMap::new();
        for (version, encoded) in &plain.keys {
            keys.insert(*version, decode_key(encoded).ok_or(KeySetError::Malformed)?);
        }
        if !keys.contains_key(&plain.current) {
            return Err(KeySetError::Malformed);
        }
        Ok(Self { current: plain.current, keys })
    }

    /// Whether `text` is passphrase-wrapped.
    pub fn is_wrapped(text: &str) -> bool {
        text.contains(WRAPPED_FORMAT)
    }
}

impl From<KeySetError> for CryptoError {
    fn from(_: KeySetError) -> Self {
        CryptoError::Malformed("key set")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_plain_wrapped_and_legacy() {
        let mut set = KeySet::generate();
        set.rotate();
        let text = set.to_text(None).unwrap();
        let back = KeySet::from_text(&text, None).unwrap();
        assert_eq!((back.current, back.versions()), (2, vec![1, 2]));
        assert_eq!(**back.key(1).unwrap(), **set.key(1).unwrap());

        let pass = SecretString::from("correct horse".to_owned());
        let wrapped = set.to_text(Some(&pass)).unwrap();
        assert!(KeySet::is_wrapped(&wrapped));
        assert!(!wrapped.contains(&STANDARD.encode(set.key(1).unwrap().as_ref())));
        assert!(matches!(KeySet::from_text(&wrapped, None), Err(KeySetError::NeedsPassphrase)));
        let wrong = SecretString::from("wrong".to_owned());
        assert!(matches!(KeySet::from_text(&wrapped, Some(&wrong)), Err(KeySetError::WrongPassphrase)));
        assert_eq!(KeySet::from_text(&wrapped, Some(&pass)).unwrap().current, 2);

        let legacy = STANDARD.encode([9u8; 32]);
        assert_eq!(**KeySet::from_text(&legacy, None).unwrap().key(1).unwrap(), [9u8; 32]);
        assert!(KeySet::from_text("garbage", None).is_err());
    }

    #[test]
    fn debug_shows_versions_only() {
        let set = KeySet::generate();
        let shown = format!("{set:?}");
        assert!(shown.contains("versions") && !shown.contains(&STANDARD.encode(set.key(1).unwrap().as_ref())));
    }
}
