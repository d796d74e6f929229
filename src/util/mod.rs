//! Small shared helpers: human sizes and durations, the private bind of a
//! daemon's Unix socket ([`bind_private`], [`replace_stale_socket`]), and
//! the accept loops' wait ([`poll_readable`]).
//! [`pool`] keeps large buffers for reuse.

pub mod pool;

/// Parses a size like `4096`, `64K`, `4KiB`, `1M`, `1MiB`, `2G` (binary
/// multiples; `B` suffix optional).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("invalid size unit in '{s}'")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{s}' too large"))
}

/// Parses a duration like `30s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration '{s}'"))?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" | "min" => n.checked_mul(60_000),
        _ => return Err(format!("invalid duration unit in '{s}' (ms, s, m)")),
    };
    ms.map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("duration '{s}' too large"))
}

/// Formats a byte count with a binary unit, e.g. `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
#[test]
fn durations() {
    use std::time::Duration;
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("x").is_err());
    assert!(parse_duration("5h").is_err());
}

/// Why a daemon's socket path cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    /// Another process is serving on the socket.
    #[error("socket {0} is in use by another process")]
    InUse(std::path::PathBuf),
    /// Something other than a socket is at the path; it is not removed.
    #[error("{0}: exists and is not a socket (refusing to remove it)")]
    NotSocket(std::path::PathBuf),
    /// Looking at or removing the path failed.
    #[error("socket {path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Makes `path` free for a new socket: nothing there, or a stale socket
/// (one `live` says nobody answers on) that is removed. A live socket or
/// anything that is not a socket is an error and left alone.
pub fn replace_stale_socket(
    path: &std::path::Path,
    live: impl FnOnce(&std::path::Path) -> bool,
) -> Result<(), SocketPathError> {
    use std::os::unix::fs::FileTypeExt;
    let io = |source| SocketPathError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(SocketPathError::NotSocket(path.into())),
        Ok(_) if live(path) => Err(SocketPathError::InUse(path.into())),
        Ok(_) => std::fs::remove_file(path).map_err(io),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// Binds a socket at `path` that never exists with a wider mode than
/// `mode`: `bind` creates it inside a fresh 0700 directory next to `path`,
/// where it gets `mode` (and group `gid`, if given), and it is then renamed
/// to `path`, refusing to replace anything that appeared meanwhile.
pub fn bind_private<T>(
    path: &std::path::Path,
    mode: u32,
    gid: Option<u32>,
    bind: impl FnOnce(&std::path::Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let dir = parent.join(format!(".rafs-{}-{nanos:x}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let tmp = dir.join("s");
    let result = (|| {
        let bound = bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AT_FDCWD,
            path,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(std::io::Error::from)?;
        Ok(bound)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let Err(e) = std::fs::remove_dir(&dir) {
        tracing::warn!("removing {}: {e}", dir.display());
    }
    result
}

/// Deterministic, incompressible test data (xorshift), for unit tests.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Waits until one of `fds` is readable, at most `timeout` (`None`: no
/// bound). A signal (`EINTR`) returns early, as `Ok`; the caller looks
/// again.
pub fn poll_readable(
    fds: &[std::os::fd::BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(60_000) as libc::c_int);
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd for the
    // call's duration, and every fd stays open while `fds` is borrowed.
    let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999T").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
