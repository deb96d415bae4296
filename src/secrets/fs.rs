//! Private files: the data directory is 0700 and everything in it 0600; files that hold keys are written
//! whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};

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

/// A path whose mode lets others in, and the mode it should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoosePermission {
    pub path: PathBuf,
    pub mode: u32,
    pub wanted: u32,
}

impl std::fmt::Display for LoosePermission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {:o}, should be {:o}", self.path.display(), self.mode, self.wanted)
    }
}

/// Every path in the data directory (and its `backups/`) that others could read or write.
pub fn loose_permissions(home: &Path) -> std::io::Result<Vec<LoosePermission>> {
    let mut loose = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut check = |path: &Path, wanted: u32| -> std::io::Result<()> {
            let mode = std::fs::symlink_metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                loose.push(LoosePermission { path: path.to_owned(), mode, wanted });
            }
            Ok(())
        };
        if !home.exists() {
            return Ok(loose);
        }
        check(home, 0o700)?;
        let mut dirs = vec![home.to_owned()];
        let backups = home.join("backups");
        if backups.is_dir() {
            check(&backups, 0o700)?;
            dirs.push(backups);
        }
        for dir in dirs {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    check(&entry.path(), 0o600)?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = home;
    Ok(loose)
}

/// Tighten what `loose_permissions` found.
pub fn fix_permissions(loose: &[LoosePermission]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for l in loose {
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
        private_dir(&home).unwrap();
        write_private_atomic(&home.join("a"), b"x").unwrap();
        assert!(loose_permissions(&home).unwrap().is_empty());
        std::fs::set_permissions(home.join("a"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        let loose = loose_permissions(&home).unwrap();
        assert_eq!(loose.len(), 2, "{loose:?}");
        fix_permissions(&loose).unwrap();
        assert!(loose_permissions(&home).unwrap().is_empty());
        shred(&home.join("a")).unwrap();
        assert!(!home.join("a").exists());
    }
}
