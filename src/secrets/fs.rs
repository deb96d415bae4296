//! Private files: the data directory is 0700 and the files Switchyard writes in it 0600; files that hold
//! keys are written whole or not at all. Only Switchyard's own files (and a directory that holds nothing
//! else) are ever tightened: a user's file or a shared directory is reported, never changed.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Create `dir` (and parents) readable by the owner only; `true` when it was created now. An existing
/// directory is left as it is (`loose_permissions` reports it).
pub fn private_dir(dir: &Path) -> std::io::Result<bool> {
    if dir.exists() {
        return Ok(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)?;
    Ok(true)
}

/// Files Switchyard writes in its data directory. Nothing else there is ever changed.
const OWNED_FILES: &[&str] = &[
    "switchyard.db",
    "switchyard.db-wal",
    "switchyard.db-shm",
    "switchyard.db-journal",
    "secret.key",
    "secret.location",
    "serve.lock",
    "accounts.json",
    ".storage-test.key",
];

/// Whether `name` in the data directory is one of Switchyard's files (or the temporary file of an atomic
/// write of one).
fn owned_file(name: &str) -> bool {
    OWNED_FILES.contains(&name)
        || name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(|n| OWNED_FILES.iter().any(|owned| n.starts_with(&format!("{owned}."))))
}

/// Whether `name` in the data directory belongs to a Switchyard home: its files, its backups folder, and
/// the configuration file the user keeps there.
fn part_of_home(name: &str) -> bool {
    owned_file(name) || name == "backups" || name == "config.toml"
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

/// Replace `path` with `contents` atomically (temporary file, fsync, rename, fsync the directory).
pub fn write_private_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut file = private_file(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// Overwrite a file's bytes before removing it, so a plaintext copy does not linger in free blocks of a
/// simple file system (best effort: journaling and SSDs may still keep copies).
pub fn shred(path: &Path) -> std::io::Result<()> {
    let len = std::fs::metadata(path)?.len();
    {
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])?;
        file.sync_all()?;
    }
    std::fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A path whose mode lets others in, the mode it should have, and whether Switchyard may change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoosePermission {
    pub path: PathBuf,
    pub mode: u32,
    pub wanted: u32,
    /// False for a directory that holds files that are not Switchyard's: it is reported, never changed.
    pub ours: bool,
}

impl std::fmt::Display for LoosePermission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {:o}, should be {:o}", self.path.display(), self.mode, self.wanted)?;
        if !self.ours {
            f.write_str(" (it holds files that are not Switchyard's, so it is left as it is)")?;
        }
        Ok(())
    }
}

/// Switchyard's paths in the data directory (and its `backups/`) that others could read or write. Files
/// that are not Switchyard's are not looked at.
pub fn loose_permissions(home: &Path) -> std::io::Result<Vec<LoosePermission>> {
    let mut loose = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut check = |path: &Path, wanted: u32, ours: bool| -> std::io::Result<()> {
            let mode = std::fs::symlink_metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                loose.push(LoosePermission { path: path.to_owned(), mode, wanted, ours });
            }
            Ok(())
        };
        if !home.is_dir() {
            return Ok(loose);
        }
        let mut home_is_ours = true;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(home)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            home_is_ours &= part_of_home(&name);
            if owned_file(&name) && entry.file_type()?.is_file() {
                files.push(entry.path());
            }
        }
        check(home, 0o700, home_is_ours)?;
        let backups = home.join("backups");
        if backups.is_dir() {
            let mut backups_are_ours = true;
            for entry in std::fs::read_dir(&backups)? {
                let entry = entry?;
                let ours = entry.file_name().to_string_lossy().ends_with(".backup") && entry.file_type()?.is_file();
                backups_are_ours &= ours;
                if ours {
                    files.push(entry.path());
                }
            }
            check(&backups, 0o700, backups_are_ours)?;
        }
        for file in files {
            check(&file, 0o600, true)?;
        }
    }
    #[cfg(not(unix))]
    let _ = home;
    Ok(loose)
}

/// Tighten what `loose_permissions` found that is Switchyard's own.
pub fn fix_permissions(loose: &[LoosePermission]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for l in loose.iter().filter(|l| l.ours) {
            std::fs::set_permissions(&l.path, std::fs::Permissions::from_mode(l.wanted))?;
        }
    }
    #[cfg(not(unix))]
    let _ = loose;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[cfg(unix)]
    #[test]
    fn loose_modes_are_found_and_fixed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("h");
        assert!(private_dir(&home).unwrap());
        assert!(!private_dir(&home).unwrap());
        write_private_atomic(&home.join("secret.key"), b"x").unwrap();
        assert!(loose_permissions(&home).unwrap().is_empty());
        std::fs::set_permissions(home.join("secret.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let loose = loose_permissions(&home).unwrap();
        assert_eq!(loose.len(), 2, "{loose:?}");
        assert!(loose.iter().all(|l| l.ours));
        fix_permissions(&loose).unwrap();
        assert!(loose_permissions(&home).unwrap().is_empty());
        shred(&home.join("secret.key")).unwrap();
        assert!(!home.join("secret.key").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_users_files_and_a_shared_directory_are_never_changed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(home.join("notes.txt"), b"mine").unwrap();
        std::fs::set_permissions(home.join("notes.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(home.join("switchyard.db"), b"").unwrap();
        std::fs::set_permissions(home.join("switchyard.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = loose_permissions(home).unwrap();
        assert_eq!(loose.len(), 2, "{loose:?}");
        assert!(loose.iter().all(|l| l.path != home.join("notes.txt")));
        fix_permissions(&loose).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(home), 0o755);
        assert_eq!(mode(&home.join("notes.txt")), 0o644);
        assert_eq!(mode(&home.join("switchyard.db")), 0o600);
        assert!(owned_file(".secret.key.1234.tmp") && !owned_file(".notes.tmp"));
    }
}
