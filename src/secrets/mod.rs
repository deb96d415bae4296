//! Secrets at rest: the data-encryption key (from `SWITCHYARD_ENCRYPTION_KEY` or a 0600 key file) and the
//! AES-256-GCM envelope every stored token goes through. In memory secrets are `SecretString`: redacted
//! `Debug`, zeroized on drop.

mod envelope;
mod keyfile;

pub use envelope::{Cipher, CryptoError};
pub use keyfile::{KeySource, load_or_create_key, private_dir, private_file};
pub use secrecy::{ExposeSecret, SecretString};

/// The last four characters of a secret, for `status` output: enough to tell two apart, useless to a thief.
pub fn masked(secret: &SecretString) -> String {
    let s = secret.expose_secret();
    let tail: String = s.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    if s.chars().count() <= 8 { "…".to_owned() } else { format!("…{tail}") }
}
