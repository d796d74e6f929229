//! The storage seam under the cache: every operation whose *durability* the
//! crash rule depends on goes through a [`Storage`], and nothing else does.
//!
//! - `pwrite` to a data file and its `fdatasync`;
//! - `msync` of bitmap words (bits themselves are changed in the shared
//!   mapping, outside the seam: the kernel may write a dirty page back at
//!   any time, which the crash double models);
//! - hole punching (eviction);
//! - file creation (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600), `fsync`,
//!   rename and directory `fsync` (map creation and reset, data file
//!   creation).
//!
//! Reads (`pread`, bit loads) don't go through the seam, so the hit path
//! costs nothing extra. [`Real`] is the production implementation (plain
//! syscalls); [`testing`] holds the doubles: [`testing::Crash`], which forgets
//! whatever was not made durable when "power is lost", and
//! [`testing::Stall`], whose writes block until the test releases them.

pub mod testing;

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use memmap2::MmapMut;
use nix::fcntl::{fallocate, FallocateFlags};

/// Mode of every file the cache creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a cache directory the cache creates.
pub const DIR_MODE: u32 = 0o700;

/// The durable operations of the cache. `path` arguments name the file the
/// descriptor was opened from (for errors and for the doubles); the
/// operation itself always uses the descriptor.
pub trait Storage: Send + Sync + Debug {
    /// `pwrite` all of `bytes` at `offset` (not durable until
    /// [`Storage::sync_data`]).
    fn write_at(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// `fdatasync`: every write before it is durable when it returns.
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;
    /// `msync(MS_SYNC)` of `len` bytes at `offset` of a shared mapping of
    /// the map file `path`.
    fn msync(&self, map: &MmapMut, path: &Path, offset: usize, len: usize) -> io::Result<()>;
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    fn punch_hole(&self, file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()>;
    /// Creates a new file, read-write: `O_CREAT | O_EXCL | O_NOFOLLOW |
    /// O_CLOEXEC`, mode [`FILE_MODE`]. Fails if anything (a symlink
    /// included) is already at `path`.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// `fsync` (data and metadata, e.g. the length set by `ftruncate`).
    fn sync_all(&self, file: &File, path: &Path) -> io::Result<()>;
    /// `rename(from, to)`, replacing whatever is at `to` (a symlink at `to`
    /// is replaced, never followed).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `fsync` of a directory: a creation or rename in it is durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real thing: each method is the syscall it names.
#[derive(Debug, Default, Clone, Copy)]
pub struct Real;

/// A shared [`Real`], the storage of [`super::BlobCache::open`].
pub fn real() -> Arc<dyn Storage> {
    static REAL: OnceLock<Arc<dyn Storage>> = OnceLock::new();
    REAL.get_or_init(|| Arc::new(Real)).clone()
}

impl Storage for Real {
    fn write_at(&self, file: &File, _: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    fn sync_data(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_data()
    }

    fn msync(&self, map: &MmapMut, _: &Path, offset: usize, len: usize) -> io::Result<()> {
        map.flush_range(offset, len)
    }

    fn punch_hole(&self, file: &File, _: &Path, offset: u64, len: u64) -> io::Result<()> {
        let too_large = |_| io::Error::from(io::ErrorKind::InvalidInput);
        let off = i64::try_from(offset).map_err(too_large)?;
        let n = i64::try_from(len).map_err(too_large)?;
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(file, mode, off, n).map_err(io::Error::from)
    }

    fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }

    fn sync_all(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Opens an existing cache file read-write without following a symlink at
/// its last component (`ELOOP` then).
pub fn open_existing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// An unpredictable 64-bit value for temporary file names (std's
/// per-process random hash keys, mixed with the time).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.finish()
}
