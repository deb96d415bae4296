//! Where the data-encryption keys live: `SWITCHYARD_ENCRYPTION_KEY`, the OS keychain (Secret Service,
//! Keychain, Credential Manager) or a 0600 key file, wrapped under `SWITCHYARD_PASSPHRASE` when one is set.
//! Keychain calls block; call this module from a blocking context.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::fs::{shred, write_private_atomic};
use super::keyset::{KeySet, KeySetError};

/// `SWITCHYARD_SECRET_STORE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// The keychain when one answers, else the key file.
    Auto,
    Keyring,
    File,
}

impl std::str::FromStr for StoreChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "keyring" | "keychain" => Ok(Self::Keyring),
            "file" => Ok(Self::File),
            other => Err(format!("expected auto, keyring or file, got {other:?}")),
        }
    }
}

/// Everything that decides where keys are.
#[derive(Debug, Clone)]
pub struct SecretSettings {
    pub home: PathBuf,
    pub choice: StoreChoice,
    pub passphrase: Option<SecretString>,
    pub env_key: Option<SecretString>,
}

/// The backend the keys were found in (or created in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Environment,
    /// The shared database, wrapped under `SWITCHYARD_PASSPHRASE` (read and written by the caller, which
    /// holds the database; see `accounts::shared_keys`).
    Database,
    File(PathBuf),
    Keyring {
        service: String,
        user: String,
    },
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Environment => "environment",
            Self::Database => "database",
            Self::File(_) => "file",
            Self::Keyring { .. } => "keyring",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment => f.write_str("SWITCHYARD_ENCRYPTION_KEY"),
            Self::Database => f.write_str("database (wrapped under SWITCHYARD_PASSPHRASE)"),
            Self::File(path) => write!(f, "key file {}", path.display()),
            Self::Keyring { service, user } => write!(f, "OS keychain (service {service}, entry {user})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("SWITCHYARD_ENCRYPTION_KEY must be 32 bytes in base64")]
    BadEnvKey,
    #[error(
        "the encryption key comes from SWITCHYARD_ENCRYPTION_KEY; change it there (this command manages stored keys)"
    )]
    EnvKeyInUse,
    #[error(
        "the encryption key is kept in the database, wrapped under SWITCHYARD_PASSPHRASE; `auth storage \
         rotate-key` changes it there"
    )]
    InDatabase,
    #[error("{path}: {source}")]
    KeySet { path: String, source: KeySetError },
    #[error("cannot use key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the OS keychain does not answer ({0}); use SWITCHYARD_SECRET_STORE=file, or start a keyring daemon")]
    KeyringUnavailable(String),
    #[error(
        "the encryption key is kept in the OS keychain, which does not answer ({0}); start the keyring \
         daemon (or log in to a desktop session) and try again"
    )]
    KeyringLost(String),
    #[error("OS keychain error: {0}")]
    Keyring(String),
    #[error("migration check failed: the key read back from {0} differs from the one written")]
    Verify(String),
    #[error(
        "no encryption key in the {0}, though the database exists; restore the key, or set SWITCHYARD_ENCRYPTION_KEY"
    )]
    Missing(String),
}

const SERVICE: &str = "switchyard";
const MARKER: &str = "secret.location";

/// Opened key store: where the keys are, and the keys.
#[derive(Debug)]
pub struct KeyStore {
    settings: SecretSettings,
    backend: Backend,
}

fn keyring_user(home: &Path) -> String {
    let canonical = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_owned());
    let digest = Sha256::digest(canonical.to_string_lossy().as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("data-key-{hex}")
}

fn keyring_entry(user: &str) -> Result<keyring::Entry, KeyError> {
    if let Err(e) = keyring::Entry::store_status() {
        return Err(KeyError::KeyringUnavailable(e.to_string()));
    }
    keyring::Entry::new(SERVICE, user).map_err(|e| KeyError::KeyringUnavailable(e.to_string()))
}

/// Read the keychain entry: `Ok(None)` when it answers but holds nothing.
fn keyring_read(user: &str) -> Result<Option<SecretString>, KeyError> {
    match keyring_entry(user)?.get_password() {
        Ok(text) => Ok(Some(SecretString::from(text))),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(KeyError::KeyringUnavailable(e.to_string())),
    }
}

impl KeyStore {
    /// Find the keys (creating them on first run unless `create` is false); `true` when they were created now.
    pub fn open(settings: SecretSettings, create: bool) -> Result<(Self, KeySet, bool), KeyError> {
        if let Some(env_key) = &settings.env_key {
            let keys = KeySet::from_base64(env_key.expose_secret()).ok_or(KeyError::BadEnvKey)?;
            return Ok((Self { settings, backend: Backend::Environment }, keys, false));
        }
        let file = settings.home.join("secret.key");
        let user = keyring_user(&settings.home);
        let keyring = Backend::Keyring { service: SERVICE.into(), user: user.clone() };
        let marker_says_keyring =
            std::fs::read_to_string(settings.home.join(MARKER)).map(|m| m.trim() == "keyring").unwrap_or(false);
        let backend = if marker_says_keyring {
            match keyring_read(&user) {
                Ok(_) => keyring,
                Err(KeyError::KeyringUnavailable(why)) => return Err(KeyError::KeyringLost(why)),
                Err(e) => return Err(e),
            }
        } else if file.exists() {
            Backend::File(file)
        } else {
            match settings.choice {
                StoreChoice::File => Backend::File(file),
                StoreChoice::Keyring => {
                    keyring_read(&user)?;
                    keyring
                }
                StoreChoice::Auto => match keyring_read(&user) {
                    Ok(_) => keyring,
                    Err(_) => Backend::File(file),
                },
            }
        };
        let store = Self { settings, backend };
        match store.load()? {
            Some(keys) => {
                // A passphrase given after the key file was written: wrap the file now (atomically), so
                // what is on disk is what the passphrase promises. A read-only command leaves it.
                if create && store.settings.passphrase.is_some() && store.file_wrapped() == Some(false) {
                    store.save(&keys)?;
                    tracing::info!("wrapped the key file under SWITCHYARD_PASSPHRASE");
                }
                Ok((store, keys, false))
            }
            None if !create => Err(KeyError::Missing(store.backend.to_string())),
            None => {
                let keys = KeySet::generate();
                store.save(&keys)?;
                Ok((store, keys, true))
            }
        }
    }

    /// The key set lives in the shared database; the caller reads and writes it there.
    pub fn in_database(settings: SecretSettings) -> Self {
        Self { settings, backend: Backend::Database }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Whether a key file is stored without a passphrase (worth a warning), as it is on disk.
    pub fn unprotected_file(&self) -> bool {
        self.file_wrapped() == Some(false)
    }

    /// For the key file backend, whether the file on disk is wrapped under a passphrase.
    pub fn file_wrapped(&self) -> Option<bool> {
        match &self.backend {
            Backend::File(path) => std::fs::read_to_string(path).ok().map(|text| KeySet::is_wrapped(&text)),
            _ => None,
        }
    }

    fn load(&self) -> Result<Option<KeySet>, KeyError> {
        load_from(&self.backend, self.settings.passphrase.as_ref())
    }

    /// Write the keys to the current backend, durably.
    pub fn save(&self, keys: &KeySet) -> Result<(), KeyError> {
        save_to(&self.backend, &self.settings.home, keys, self.settings.passphrase.as_ref())
    }

    /// Move the keys to `to`: write, read back and compare, switch, then delete the old copy. Interrupted
    /// at any point, one complete copy stays where the next start looks.
    pub fn migrate(&mut self, keys: &KeySet, to: StoreChoice) -> Result<(), KeyError> {
        match self.backend {
            Backend::Environment => return Err(KeyError::EnvKeyInUse),
            Backend::Database => return Err(KeyError::InDatabase),
            _ => {}
        }
        let target = match to {
            StoreChoice::File | StoreChoice::Auto => Backend::File(self.settings.home.join("secret.key")),
            StoreChoice::Keyring => {
                let user = keyring_user(&self.settings.home);
                keyring_read(&user)?;
                Backend::Keyring { service: SERVICE.into(), user }
            }
        };
        if target == self.backend {
            return Ok(());
        }
        let passphrase = self.settings.passphrase.as_ref();
        save_to(&target, &self.settings.home, keys, passphrase)?;
        let back = load_from(&target, passphrase)?.ok_or_else(|| KeyError::Verify(target.to_string()))?;
        let same = back.current == keys.current
            && back.versions() == keys.versions()
            && keys.versions().iter().all(|v| back.key(*v).map(|k| **k) == keys.key(*v).map(|k| **k));
        if !same {
            return Err(KeyError::Verify(target.to_string()));
        }
        // The switch: the marker decides where the next start looks.
        let marker = self.settings.home.join(MARKER);
        match &target {
            Backend::Keyring { .. } => write_private_atomic(&marker, b"keyring\n")
                .map_err(|source| KeyError::Io { path: marker.clone(), source })?,
            _ => match std::fs::remove_file(&marker) {
                Ok(()) => super::fs::sync_dir(&self.settings.home),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(KeyError::Io { path: marker, source }),
            },
        }
        let old = std::mem::replace(&mut self.backend, target);
        delete_from(&old)?;
        Ok(())
    }

    /// Write, read and delete a throwaway entry on the active backend.
    pub fn round_trip(&self) -> Result<String, KeyError> {
        let probe = KeySet::generate();
        let (backend, what) = match &self.backend {
            Backend::Environment => {
                return Ok("the key comes from SWITCHYARD_ENCRYPTION_KEY; nothing is stored to test".into());
            }
            Backend::Database => {
                return Ok("the key set is kept in the database, wrapped; it opened at start".into());
            }
            Backend::File(_) => (Backend::File(self.settings.home.join(".storage-test.key")), "key file"),
            Backend::Keyring { service, user } => {
                (Backend::Keyring { service: service.clone(), user: format!("{user}-test") }, "OS keychain")
            }
        };
        save_to(&backend, &self.settings.home, &probe, self.settings.passphrase.as_ref())?;
        let back = load_from(&backend, self.settings.passphrase.as_ref())?;
        delete_from(&backend)?;
        let ok = back.is_some_and(|b| b.key(1).map(|k| **k) == probe.key(1).map(|k| **k));
        let gone = load_from(&backend, self.settings.passphrase.as_ref())?.is_none();
        if ok && gone {
            Ok(format!("{what}: write, read back and delete all succeeded"))
        } else {
            Err(KeyError::Verify(backend.to_string()))
        }
    }
}

fn load_from(backend: &Backend, passphrase: Option<&SecretString>) -> Result<Option<KeySet>, KeyError> {
    let text = match backend {
        Backend::Environment | Backend::Database => return Ok(None),
        Backend::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => SecretString::from(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeyError::Io { path: path.clone(), source }),
        },
        Backend::Keyring { user, .. } => match keyring_read(user)? {
            Some(text) => text,
            None => return Ok(None),
        },
    };
    KeySet::from_text(text.expose_secret(), passphrase)
        .map(Some)
        .map_err(|source| KeyError::KeySet { path: backend.to_string(), source })
}

fn save_to(backend: &Backend, home: &Path, keys: &KeySet, passphrase: Option<&SecretString>) -> Result<(), KeyError> {
    let text = keys.to_text(passphrase).map_err(|source| KeyError::KeySet { path: backend.to_string(), source })?;
    match backend {
        Backend::Environment => Err(KeyError::EnvKeyInUse),
        Backend::Database => Err(KeyError::InDatabase),
        Backend::File(path) => {
            super::fs::private_dir(home).map_err(|source| KeyError::Io { path: home.to_owned(), source })?;
            write_private_atomic(path, text.as_bytes()).map_err(|source| KeyError::Io { path: path.clone(), source })
        }
        Backend::Keyring { user, .. } => {
            keyring_entry(user)?.set_password(&text).map_err(|e| KeyError::Keyring(e.to_string()))
        }
    }
}

fn delete_from(backend: &Backend) -> Result<(), KeyError> {
    match backend {
        Backend::Environment | Backend::Database => Ok(()),
        Backend::File(path) => match shred(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KeyError::Io { path: path.clone(), source }),
        },
        Backend::Keyring { user, .. } => match keyring_entry(user)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(KeyError::Keyring(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(home: &Path, passphrase: Option<&str>) -> SecretSettings {
        SecretSettings {
            home: home.to_owned(),
            choice: StoreChoice::File,
            passphrase: passphrase.map(|p| SecretString::from(p.to_owned())),
            env_key: None,
        }
    }

    #[test]
    fn key_file_is_created_once_private_and_optionally_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let (store, k1, created) = KeyStore::open(settings(&home, None), true).unwrap();
        assert!(created && store.unprotected_file());
        let (_, k2, created) = KeyStore::open(settings(&home, None), true).unwrap();
        assert!(!created);
        assert_eq!(**k1.key(1).unwrap(), **k2.key(1).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(home.join("secret.key")).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&home).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let wrapped_home = dir.path().join("wrapped");
        let (_, k3, _) = KeyStore::open(settings(&wrapped_home, Some("pass")), true).unwrap();
        assert!(KeySet::is_wrapped(&std::fs::read_to_string(wrapped_home.join("secret.key")).unwrap()));
        assert!(matches!(
            KeyStore::open(settings(&wrapped_home, None), true),
            Err(KeyError::KeySet { source: KeySetError::NeedsPassphrase, .. })
        ));
        let (_, k4, _) = KeyStore::open(settings(&wrapped_home, Some("pass")), true).unwrap();
        assert_eq!(**k3.key(1).unwrap(), **k4.key(1).unwrap());
    }

    #[test]
    fn env_key_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), None);
        s.env_key =
            Some(SecretString::from(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])));
        let (store, keys, _) = KeyStore::open(s.clone(), true).unwrap();
        assert_eq!((**keys.key(1).unwrap(), store.backend()), ([7u8; 32], &Backend::Environment));
        s.env_key = Some(SecretString::from("short".to_owned()));
        assert!(matches!(KeyStore::open(s, true), Err(KeyError::BadEnvKey)));
        assert!(!dir.path().join("secret.key").exists());
    }
}
