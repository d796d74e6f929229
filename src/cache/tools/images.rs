//! The kept images of a cache directory, for `rafs cache ls|gc`:
//! `DIR/images/<64 hex of the manifest digest>/{config.json,bootstrap}`,
//! written by `rafs mount docker://REF --cache-dir DIR`
//! (`crate::mount::image_ref`).
//!
//! A running mount holds a shared `flock` on its image's directory. gc
//! takes it exclusively and non-blocking: a busy image is in use and kept
//! (its blobs count as used); a free one is removed while the exclusive
//! lock is held, so a mount starting meanwhile waits, sees the directory
//! gone and fetches the image again. Only directories named by 64
//! lower-case hex digits are images; every path is formatted back from
//! the parsed name.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{allocated, io_err, ToolError};

/// One kept image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptImage {
    /// The manifest digest's hex (64 lower-case digits).
    pub hex: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl KeptImage {
    /// `sha256:<hex>`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }
    /// The kept bootstrap (may be missing if its download never ended).
    pub fn bootstrap(&self) -> PathBuf {
        self.dir.join("bootstrap")
    }
    /// Bytes allocated by its files.
    pub fn allocated(&self) -> Result<u64, ToolError> {
        Ok(allocated(&self.bootstrap())? + allocated(&self.dir.join("config.json"))?)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hex of an image named on the command line: `sha256:<hex>` or
/// `<hex>`.
pub fn parse_digest(s: &str) -> Result<String, ToolError> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if is_hex64(hex) {
        Ok(hex.to_owned())
    } else {
        Err(ToolError::BadImage(s.to_owned()))
    }
}

/// The kept images of cache directory `dir`, sorted, and the names under
/// `dir/images` that are not images.
pub fn list(dir: &Path) -> Result<(Vec<KeptImage>, Vec<String>), ToolError> {
    let root = dir.join("images");
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(io_err(&root)(e)),
    };
    let (mut images, mut other) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(io_err(&root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map_err(io_err(&root))?.is_dir();
        if is_dir && is_hex64(&name) {
            images.push(KeptImage {
                dir: root.join(&name),
                hex: name,
            });
        } else {
            other.push(format!("images/{name}"));
        }
    }
    images.sort_by(|a, b| a.hex.cmp(&b.hex));
    other.sort();
    Ok((images, other))
}

/// An image's directory lock, as gc tried to take it.
#[derive(Debug)]
pub enum Hold {
    /// A mount holds it.
    Busy,
    /// Taken exclusively: nobody uses the image while this lives.
    Free(Flock<File>),
    /// Gone meanwhile.
    Gone,
}

/// Tries to take `img`'s directory lock exclusively, without waiting.
pub fn try_exclusive(img: &KeptImage) -> Result<Hold, ToolError> {
    let f = match File::open(&img.dir) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Hold::Gone),
        Err(e) => return Err(io_err(&img.dir)(e)),
    };
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Hold::Free(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(Hold::Busy),
        Err((_, e)) => Err(io_err(&img.dir)(e.into())),
    }
}

/// Whether a mount uses `img` now, for `ls`: a non-blocking exclusive
/// lock, released at once (a mount starting in that instant waits for
/// it, no longer).
pub fn in_use(img: &KeptImage) -> Result<bool, ToolError> {
    Ok(matches!(try_exclusive(img)?, Hold::Busy))
}

/// Removes `img`'s directory; `_lock` (its exclusive lock) is held until
/// it is gone.
pub fn remove(img: &KeptImage, _lock: &Flock<File>) -> Result<(), ToolError> {
    match std::fs::remove_dir_all(&img.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&img.dir)(e)),
    }
}
