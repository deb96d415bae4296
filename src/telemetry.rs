//! Logging setup: level and format from the configuration, to stderr and optionally to a file rotated by
//! size (`SWITCHYARD_LOG_FILE`, 0600, `SWITCHYARD_LOG_MAX_BYTES`, `SWITCHYARD_LOG_KEEP` old files).
//! Secrets never reach a log line because they only exist as `SecretString`, whose `Debug` and `Display`
//! are redacted, and client credential headers are marked sensitive on arrival.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::LogFormat;

/// Where a rotating log file lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct LogFile {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: usize,
}

#[derive(Debug)]
struct Rotating {
    spec: LogFile,
    file: Option<std::fs::File>,
    size: u64,
}

impl Rotating {
    fn open(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            let mut options = std::fs::OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            // A symlink planted where the log goes would send our lines (request ids, account names) to
            // a file of someone else's choosing: refused.
            if std::fs::symlink_metadata(&self.spec.path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(std::io::Error::other("the log file is a symlink; refusing to follow it"));
            }
            let file = options.open(&self.spec.path)?;
            // An existing file keeps its old mode on open: tighten it (through the open handle).
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(file);
        }
        self.file.as_mut().ok_or_else(|| std::io::Error::other("log file unavailable"))
    }

    /// `log` → `log.1` → … → `log.<keep>`; the oldest is deleted.
    fn rotate(&mut self) {
        self.file = None;
        let numbered = |n: usize| -> PathBuf {
            let mut name = self.spec.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(numbered(self.spec.keep.max(1)));
        for n in (1..self.spec.keep.max(1)).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if self.spec.keep == 0 {
            let _ = std::fs::remove_file(&self.spec.path);
        } else {
            let _ = std::fs::rename(&self.spec.path, numbered(1));
        }
        self.size = 0;
    }
}

/// A clonable handle the subscriber writes through.
#[derive(Debug, Clone)]
struct RotatingWriter(Arc<Mutex<Rotating>>);

impl Write for RotatingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.size > 0 && inner.size + buf.len() as u64 > inner.spec.max_bytes {
            inner.rotate();
        }
        let n = inner.open()?.write(buf)?;
        inner.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match inner.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// Install the global subscriber. `level` is an `EnvFilter` directive such as `info` or `switchyard=debug`.
pub fn init(level: &str, format: LogFormat, file: Option<LogFile>) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let file_writer = file.map(|spec| RotatingWriter(Arc::new(Mutex::new(Rotating { spec, file: None, size: 0 }))));
    let writer = std::io::stderr.and(move || -> Box<dyn Write> {
        match &file_writer {
            Some(w) => Box::new(w.clone()),
            None => Box::new(std::io::sink()),
        }
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_rotate_by_size_and_keep_a_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sy.log");
        let spec = LogFile { path: path.clone(), max_bytes: 100, keep: 2 };
        let mut w = RotatingWriter(Arc::new(Mutex::new(Rotating { spec, file: None, size: 0 })));
        for _ in 0..10 {
            w.write_all(&[b'x'; 40]).unwrap();
        }
        assert!(path.exists() && dir.path().join("sy.log.1").exists() && dir.path().join("sy.log.2").exists());
        assert!(!dir.path().join("sy.log.3").exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
