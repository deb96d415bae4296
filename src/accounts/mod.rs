//! Accounts: the durable registry (sealing tokens on the way to the store) and the in-memory pool the
//! proxy picks from, with single-flight token refresh.

mod limits;
pub mod login;
mod pool;
#[cfg(test)]
mod properties;
mod registry;
mod router;
pub mod shared_keys;

pub use limits::{Limits, UsageWindow};
pub use pool::{Account, Credential, Pool};
pub use registry::{AccountView, NewOAuth, PlainAccount, Registry};
pub use router::{Affinity, Router, Strategy, Unavailable, Want};

use crate::oauth::OAuthError;
use crate::secrets::CryptoError;
use crate::store::StoreError;

/// Whether `key` has the shape of an Anthropic API key (`sk-ant-…`, no spaces): catches a pasted
/// password, a client key of Switchyard's or half a line before it is stored.
pub fn looks_like_api_key(key: &crate::secrets::SecretString) -> bool {
    use secrecy::ExposeSecret;
    let key = key.expose_secret();
    key.len() > "sk-ant-".len() && key.starts_with("sk-ant-") && !key.chars().any(char::is_whitespace)
}

/// Why an account could not give a credential, or an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account {0:?} needs a new login (switchyard auth login --account {0})")]
    NeedsLogin(String),
    #[error("account {0:?} is paused")]
    Paused(String),
    #[error("refreshing account {name:?} failed: {source}")]
    RefreshFailed { name: String, source: OAuthError },
    #[error("account {name:?} may not refresh before {until}")]
    RefreshCoolingDown { name: String, until: String },
    #[error("no account named {0:?}")]
    NotFound(String),
    #[error("invalid account data: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// One record's sealed value does not open (corrupted, or written under another key): that account
    /// is unusable, the others are not.
    #[error("account {name:?}: its {field} cannot be opened: {source}")]
    Unreadable { name: String, field: &'static str, source: CryptoError },
    /// The data key does not open the store's check value: this instance holds another key than the one the
    /// database was written with.
    #[error(
        "this data key is not the one the database was written with ({0}); every instance on one database \
         needs the same key: the same SWITCHYARD_ENCRYPTION_KEY, or a copy of the same key file"
    )]
    KeyMismatch(CryptoError),
}

impl AccountError {
    /// Whether trying the same account again later may help.
    pub fn retryable(&self) -> bool {
        match self {
            Self::RefreshFailed { source, .. } => source.retryable(),
            Self::RefreshCoolingDown { .. } => true,
            _ => false,
        }
    }
}
