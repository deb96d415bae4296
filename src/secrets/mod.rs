//! Secrets at rest: where the data-encryption keys live (`keystore`: environment, OS keychain or a 0600 key
//! file), the versioned keys themselves (`keyset`), the AES-256-GCM envelope every stored token goes
//! through (`envelope`), and private files (`fs`). In memory secrets are `SecretString`: redacted `Debug`,
//! zeroized on drop.

mod envelope;
mod fs;
mod keyset;
mod keystore;

pub use envelope::{Cipher, CryptoError};
pub use fs::{
    LoosePermission, fix_permissions, loose_permissions, private_dir, private_file, shred, write_private_atomic,
};
pub use keyset::{KeySet, KeySetError, open_with_passphrase, seal_with_passphrase};
pub use keystore::{Backend, KeyError, KeyStore, SecretSettings, StoreChoice};
pub use secrecy::{ExposeSecret, SecretString};

/// The last four characters of a secret, for `status` output: enough to tell two apart, useless to a thief.
pub fn masked(secret: &SecretString) -> String {
    let s = secret.expose_secret();
    let tail: String = s.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    if s.chars().count() <= 8 { "…".to_owned() } else { format!("…{tail}") }
}
