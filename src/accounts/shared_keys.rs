//! The data-key set kept in a shared database (the setting `store.keyset`), wrapped under a key derived
//! from `SWITCHYARD_PASSPHRASE` with Argon2id and never stored unwrapped: every instance on the database
//! opens the same tokens without copying a key file around, and a key rotation reaches all of them
//! without a restart.

use secrecy::SecretString;

use crate::secrets::{KeySet, KeySetError};
use crate::store::{Store, StoreError};

/// The setting that holds the wrapped key set.
pub const SETTING: &str = "store.keyset";

#[derive(Debug, thiserror::Error)]
pub enum SharedKeyError {
    /// The operator's passphrase is not the one the key set was wrapped with (or the value was altered).
    #[error("the data key kept in the database does not open with SWITCHYARD_PASSPHRASE: {0}")]
    Unwrap(KeySetError),
    #[error("cannot wrap the data key: {0}")]
    Wrap(KeySetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the key derivation was interrupted")]
    Interrupted,
}

impl SharedKeyError {
    /// Whether trying again may help (the database was away); a wrong passphrase stays wrong.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.retryable())
    }
}

/// The wrapped key set as stored, if one is.
pub async fn read(store: &dyn Store) -> Result<Option<String>, StoreError> {
    store.get_setting(SETTING).await
}

/// Open a stored key set (Argon2id runs on a blocking thread: it takes a moment of CPU by design).
pub async fn unwrap(text: String, passphrase: &SecretString) -> Result<KeySet, SharedKeyError> {
    let passphrase = passphrase.clone();
    tokio::task::spawn_blocking(move || KeySet::from_text(&text, Some(&passphrase)))
        .await
        .map_err(|_| SharedKeyError::Interrupted)?
        .map_err(SharedKeyError::Unwrap)
}

/// Store `keys`, wrapped, in place of `expected` (`None`: only if no key set is stored yet), atomically.
/// The stored text when this call wrote it; `None` when another process changed it first.
pub async fn publish(
    store: &dyn Store,
    keys: &KeySet,
    passphrase: &SecretString,
    expected: Option<&str>,
) -> Result<Option<String>, SharedKeyError> {
    let (keys, passphrase) = (keys.clone(), passphrase.clone());
    let text = tokio::task::spawn_blocking(move || keys.to_text(Some(&passphrase)))
        .await
        .map_err(|_| SharedKeyError::Interrupted)?
        .map_err(SharedKeyError::Wrap)?;
    let won = store.claim_setting(SETTING, expected, &text, crate::now_ms()).await?;
    Ok(won.then(|| text.to_string()))
}
