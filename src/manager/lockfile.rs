//! Who owns a cache directory: the lock file `DIR/.blobmgr.lock`.
//!
//! The blob manager holds `flock(LOCK_EX | LOCK_NB)` on it for its whole
//! life and writes its socket path into it ([`ManagerLock`]). Every
//! standalone user of the directory (`rafs mount --cache-dir`, `rafs
//! prefetch --cache-dir`, `rafs cache gc`) holds `LOCK_SH | LOCK_NB` while
//! it uses the directory ([`SharedLock`]). So each refuses the other:
//! a standalone user of a managed directory is told the manager's socket
//! ([`LockError::Managed`]), and a manager does not start on a directory
//! standalone users hold ([`LockError::InUse`]).
//!
//! Which side holds the lock is decided by the lock itself, never by the
//! file's contents (a crashed manager leaves its socket path behind, but
//! not its lock): a refused shared lock means a manager holds it; a
//! refused exclusive lock for which a shared one is still granted means
//! standalone users hold it.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The lock file's name inside the cache directory.
pub const LOCK_FILE: &str = ".blobmgr.lock";

/// Why a cache directory cannot be used as asked.
#[derive(Debug, Error)]
pub enum LockError {
    /// A blob manager owns the directory.
    #[error(
        "cache directory {} is managed by the blob manager at {socket}; use --blob-manager {socket}",
        dir.display()
    )]
    Managed {
        /// The cache directory.
        dir: PathBuf,
        /// The manager's socket, as it wrote it (or a placeholder when it
        /// had not written it yet).
        socket: String,
    },
    /// Standalone users hold the directory: a manager may not take it.
    #[error(
        "cache directory {} is in use by standalone users (rafs mount/prefetch --cache-dir, rafs cache gc); stop them before starting the blob manager on it",
        dir.display()
    )]
    InUse {
        /// The cache directory.
        dir: PathBuf,
    },
    /// Another blob manager holds the directory.
    #[error("cache directory {} is already managed by the blob manager at {socket}", dir.display())]
    OtherManager {
        /// The cache directory.
        dir: PathBuf,
        /// Its socket.
        socket: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("lock file {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Tries `flock(op | LOCK_NB)`: `Ok(false)` when someone else's lock is in
/// the way.
fn try_flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on an fd this `File` keeps open; no memory passed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

fn open(path: &Path, write: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The socket path a manager wrote into the lock file.
fn socket_in(f: &mut File) -> String {
    let mut s = String::new();
    let ok = f.rewind().and_then(|()| f.read_to_string(&mut s));
    match ok.map(|_| s.trim().to_owned()) {
        Ok(s) if !s.is_empty() => s,
        _ => "(its socket is not written yet)".to_owned(),
    }
}

/// The manager's exclusive hold on a cache directory, for its lifetime.
#[derive(Debug)]
pub struct ManagerLock {
    file: File,
    path: PathBuf,
}

impl ManagerLock {
    /// Takes `DIR/.blobmgr.lock` exclusively and writes `socket` into it.
    pub fn acquire(dir: &Path, socket: &Path) -> Result<ManagerLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = open(&path, true).map_err(io)?;
        if !try_flock(&file, libc::LOCK_EX).map_err(io)? {
            // A shared lock granted: only standalone users hold it.
            let probe = open(&path, false).map_err(io)?;
            if try_flock(&probe, libc::LOCK_SH).map_err(io)? {
                return Err(LockError::InUse { dir: dir.into() });
            }
            return Err(LockError::OtherManager {
                dir: dir.into(),
                socket: socket_in(&mut file),
            });
        }
        let text = format!("{}\n", socket.display());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()))
            .map_err(io)?;
        Ok(ManagerLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ManagerLock {
    fn drop(&mut self) {
        // Leaves no stale socket path behind (the lock goes with the fd).
        let _ = self.file.set_len(0);
    }
}

/// A standalone user's shared hold on a cache directory.
#[derive(Debug)]
pub struct SharedLock {
    _file: Option<File>,
}

impl SharedLock {
    /// Takes `DIR/.blobmgr.lock` shared, or refuses with
    /// [`LockError::Managed`] when a blob manager owns `dir`. A directory
    /// where the lock file cannot be created (read-only) is used unlocked:
    /// no manager can own it either.
    pub fn acquire(dir: &Path) -> Result<SharedLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = match open(&path, true).or_else(|_| open(&path, false)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
                tracing::debug!("{}: {e}; not locked", path.display());
                return Ok(SharedLock { _file: None });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The directory itself is missing: its user reports that.
                return Ok(SharedLock { _file: None });
            }
            Err(e) => return Err(io(e)),
        };
        if try_flock(&file, libc::LOCK_SH).map_err(io)? {
            return Ok(SharedLock { _file: Some(file) });
        }
        let mut file = file;
        Err(LockError::Managed {
            dir: dir.into(),
            socket: socket_in(&mut file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_managed_dir_refuses_standalone_users_with_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = Path::new("/run/rafs/blobmgr.sock");
        let m = ManagerLock::acquire(dir.path(), sock).unwrap();
        let e = SharedLock::acquire(dir.path()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, LockError::Managed { .. }), "{e:?}");
        assert_eq!(
            text,
            format!(
                "cache directory {} is managed by the blob manager at /run/rafs/blobmgr.sock; \
                 use --blob-manager /run/rafs/blobmgr.sock",
                dir.path().display()
            )
        );
        // A second manager is refused too.
        let e = ManagerLock::acquire(dir.path(), Path::new("/other")).unwrap_err();
        assert!(
            matches!(&e, LockError::OtherManager { socket, .. } if socket == "/run/rafs/blobmgr.sock"),
            "{e:?}"
        );
        drop(m);
        // Gone with the manager (even though a crash would leave the text).
        let _a = SharedLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_manager_refuses_a_dir_standalone_users_hold() {
        let dir = tempfile::tempdir().unwrap();
        let a = SharedLock::acquire(dir.path()).unwrap();
        let b = SharedLock::acquire(dir.path()).unwrap();
        // Stale text from a crashed manager does not confuse the check.
        std::fs::write(dir.path().join(LOCK_FILE), "/dead.sock\n").unwrap();
        let e = ManagerLock::acquire(dir.path(), Path::new("/s")).unwrap_err();
        assert!(matches!(e, LockError::InUse { .. }), "{e:?}");
        drop((a, b));
        let m = ManagerLock::acquire(dir.path(), Path::new("/s")).unwrap();
        assert_eq!(
            std::fs::read_to_string(m.path()).unwrap(),
            "/s\n",
            "the socket is written"
        );
    }

    #[test]
    fn a_missing_dir_is_left_to_its_user() {
        let dir = tempfile::tempdir().unwrap();
        SharedLock::acquire(&dir.path().join("nope")).unwrap();
    }
}
