//! Secrets at rest: where the data-encryption keys live (`keystore`: environment, OS keychain or a 0600 key
//! file), the versioned keys themselves (`keyset`), the AES-256-GCM envelope every stored token goes
//! through (`envelope`), and private files (`fs`). In memory secrets are `SecretString`: redacted `Debug`,
//! zeroized on drop.

mod envelope;
mod fs;
mod keyset;
mod keystore;
pub mod redact;

pub use envelope::{Cipher, CryptoError};
pub use fs::{
    LoosePermission, fix_permissions, loose_permissions, private_dir, private_file, shred, write_private_atomic,
};
pub use keyset::{
    BACKUP_FORMAT, KdfCost, KeySet, KeySetError, envelope_ok, open_with_passphrase, seal_with_passphrase,
};
pub use keystore::{Backend, KeyError, KeyStore, SecretSettings, StoreChoice};
pub use secrecy::{ExposeSecret, SecretString};

/// A command for a child process (a browser opener, say) that inherits none of Switchyard's settings:
/// every `SWITCHYARD_*` variable, the data key, passphrase and admin password among them, is left out of
/// its environment. Every child this program starts goes through here.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SWITCHYARD_") {
            command.env_remove(name);
        }
    }
    command
}

/// The last four characters of a secret, for `status` output: enough to tell two apart, useless to a thief.
/// A short secret would give away half of itself that way: it shows a fingerprint instead
/// (`sha256:1a2b`, the first four hex digits of its SHA-256), which still tells two apart.
pub fn masked(secret: &SecretString) -> String {
    use sha2::Digest;
    let s = secret.expose_secret();
    if s.chars().count() <= 8 {
        let digest = sha2::Sha256::digest(s.as_bytes());
        return format!("sha256:{:02x}{:02x}", digest[0], digest[1]);
    }
    let tail: String = s.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_show_a_tail_or_a_fingerprint_never_a_short_secret() {
        assert_eq!(masked(&SecretString::from("sk-ant-api03-abcdefgh1234")), "…1234");
        let short = masked(&SecretString::from("k1"));
        assert!(short.starts_with("sha256:") && short.len() == 11 && !short.contains("k1"), "{short}");
        assert_ne!(short, masked(&SecretString::from("k2")));
    }
}
