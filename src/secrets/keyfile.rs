//! Where the data-encryption key comes from: `SWITCHYARD_ENCRYPTION_KEY`, else `<home>/secret.key`
//! (created on first run, mode 0600, written atomically so a crash never leaves half a key).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Where the active key came from, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File { path: PathBuf, created: bool },
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment => f.write_str("SWITCHYARD_ENCRYPTION_KEY"),
            Self::File { path, .. } => write!(f, "key file {}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("SWITCHYARD_ENCRYPTION_KEY must be 32 bytes in base64")]
    BadEnvKey,
    #[error("key file {0} is not 32 bytes in base64; restore it from a backup or remove the database too")]
    BadFile(PathBuf),
    #[error("cannot use key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn decode(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

/// Load the key, creating the key file on first run.
pub fn load_or_create_key(
    home: &Path,
    env_key: Option<&SecretString>,
) -> Result<(Zeroizing<[u8; 32]>, KeySource), KeyError> {
    if let Some(env_key) = env_key {
        return decode(env_key.expose_secret()).map(|k| (k, KeySource::Environment)).ok_or(KeyError::BadEnvKey);
    }
    let path = home.join("secret.key");
    let io = |source| KeyError::Io { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = decode(&text).ok_or_else(|| KeyError::BadFile(path.clone()))?;
            return Ok((key, KeySource::File { path, created: false }));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    private_dir(home).map_err(io)?;
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(key.as_mut());
    let encoded = Zeroizing::new(STANDARD.encode(key.as_ref()));
    // Write a temporary file, then hard-link it into place: the key appears whole or not at all, and a
    // second process racing us loses cleanly and reads the winner's key.
    let tmp = home.join(format!(".secret.key.{}.tmp", std::process::id()));
    {
        let mut file = private_file(&tmp).map_err(io)?;
        file.write_all(encoded.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(home);
            Ok((key, KeySource::File { path, created: true }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let key = decode(&text).ok_or_else(|| KeyError::BadFile(path.clone()))?;
            Ok((key, KeySource::File { path, created: false }))
        }
        Err(e) => Err(io(e)),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Create `dir` (and parents) readable by the owner only.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Create (or truncate) a file readable by the owner only.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let (k1, s1) = load_or_create_key(&home, None).unwrap();
        assert!(matches!(s1, KeySource::File { created: true, .. }));
        let (k2, s2) = load_or_create_key(&home, None).unwrap();
        assert!(matches!(s2, KeySource::File { created: false, .. }));
        assert_eq!(*k1, *k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(home.join("secret.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&home).unwrap().permissions().mode() & 0o777, 0o700);
        }
    }

    #[test]
    fn env_key_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let good = SecretString::from(STANDARD.encode([7u8; 32]));
        let (k, s) = load_or_create_key(dir.path(), Some(&good)).unwrap();
        assert_eq!((*k, s), ([7u8; 32], KeySource::Environment));
        assert!(load_or_create_key(dir.path(), Some(&SecretString::from("short".to_owned()))).is_err());
        assert!(!dir.path().join("secret.key").exists());
    }
}
