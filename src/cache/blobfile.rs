//! The sparse data file: `DIR/<blob hex>.data`.
//!
//! Exactly as long as the blob's uncompressed address space; chunk data sits
//! uncompressed at the chunk's `uncompressed_offset`, so a hit is one `pread`
//! and no decompression. Unwritten and punched parts are holes and read as
//! zeros, which is why nothing here may be read without its range's bit set
//! (see [`super::BlobCache`]). The file holds no metadata of its own: whether
//! a byte is valid is the bitmap's business alone.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg};

use super::io::{self, Storage};
use super::{io_err, CacheError};
use crate::backend::BlobId;

/// How [`CacheFile::open`] found the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// Existed with the expected length.
    Existing,
    /// Did not exist; created sparse.
    Created,
    /// Existed with another length; resized.
    Resized,
}

/// One blob's data file.
#[derive(Debug)]
pub struct CacheFile {
    file: Arc<File>,
    size: u64,
    path: PathBuf,
    storage: Arc<dyn Storage>,
    /// Opened from a descriptor a blob manager handed over
    /// ([`CacheFile::from_fd`]): writes, syncs, punches and span locks are
    /// refused with [`CacheError::ReadOnly`].
    read_only: bool,
    /// A second open file description of the same file, for
    /// [`CacheFile::try_lock_span_apart`] (opened on first use).
    apart: OnceLock<Arc<File>>,
}

/// `DIR/<blob hex>.data`. The hex comes from a [`BlobId`], never from a string.
pub fn data_path(dir: &Path, blob: &BlobId) -> PathBuf {
    dir.join(format!("{}.data", blob.to_hex()))
}

impl CacheFile {
    /// Opens or creates the data file of `blob`, `size` bytes long (sparse).
    pub fn open(
        dir: &Path,
        blob: &BlobId,
        size: u64,
    ) -> Result<(CacheFile, DataState), CacheError> {
        Self::open_with(dir, blob, size, io::real())
    }

    /// [`CacheFile::open`] over `storage`. The file is opened with
    /// `O_NOFOLLOW` (a symlink there is an error, `ELOOP`, and is left
    /// alone) and, if missing, created with `O_EXCL`, mode 0600.
    pub fn open_with(
        dir: &Path,
        blob: &BlobId,
        size: u64,
        storage: Arc<dyn Storage>,
    ) -> Result<(CacheFile, DataState), CacheError> {
        let path = data_path(dir, blob);
        let mut created = None;
        // Two tries: a concurrent creator may win the race for `O_EXCL`.
        for _ in 0..2 {
            match io::open_existing(&path) {
                Ok(f) => {
                    created = Some((f, DataState::Existing));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, e)),
            }
            match storage.create_new(&path) {
                Ok(f) => {
                    created = Some((f, DataState::Created));
                    break;
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        let Some((file, mut state)) = created else {
            return Err(io_err(&path, ErrorKind::AlreadyExists.into()));
        };
        let meta = file.metadata().map_err(|e| io_err(&path, e))?;
        if !meta.is_file() {
            return Err(io_err(&path, ErrorKind::InvalidInput.into()));
        }
        if meta.len() != size {
            file.set_len(size).map_err(|e| io_err(&path, e))?;
            if state == DataState::Existing {
                state = DataState::Resized;
            }
        }
        let file = Arc::new(file);
        let cache = CacheFile {
            file,
            size,
            path,
            storage,
            read_only: false,
            apart: OnceLock::new(),
        };
        Ok((cache, state))
    }

    /// A read-only data file over `file` (an `O_RDONLY` descriptor from a
    /// blob manager): it must be a regular file `size` bytes long
    /// ([`CacheError::BadData`]). Every mutator fails with
    /// [`CacheError::ReadOnly`].
    pub fn from_fd(file: File, size: u64, path: PathBuf) -> Result<CacheFile, CacheError> {
        let meta = file.metadata().map_err(|e| io_err(&path, e))?;
        if !meta.is_file() || meta.len() != size {
            return Err(CacheError::BadData {
                found: meta.is_file().then_some(meta.len()),
                expected: size,
            });
        }
        Ok(CacheFile {
            file: Arc::new(file),
            size,
            path,
            storage: io::real(),
            read_only: true,
            apart: OnceLock::new(),
        })
    }

    fn writable(&self) -> Result<(), CacheError> {
        match self.read_only {
            true => Err(CacheError::ReadOnly),
            false => Ok(()),
        }
    }

    /// The blob's uncompressed size (the file's length).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), CacheError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(CacheError::OutOfBounds {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Writes `data` at `offset`. Not durable until [`CacheFile::sync`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), CacheError> {
        self.writable()?;
        self.check(offset, data.len() as u64)?;
        self.storage
            .write_at(&self.file, &self.path, offset, data)
            .map_err(|e| io_err(&self.path, e))
    }

    /// Reads `len` bytes at `offset`. Holes read as zeros: only call this for
    /// ranges whose bits are set.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, CacheError> {
        self.check(offset, len as u64)?;
        let mut buf = crate::util::pool::zeroed(len);
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| io_err(&self.path, e))?;
        Ok(buf)
    }

    /// Fills `buf` from `offset`. Holes read as zeros: only call this for
    /// ranges whose bits are set.
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), CacheError> {
        self.check(offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_err(&self.path, e))
    }

    /// `fdatasync`: everything written so far (and the block allocation
    /// needed to read it back) is on stable storage when this returns.
    pub fn sync(&self) -> Result<(), CacheError> {
        self.writable()?;
        self.storage
            .sync_data(&self.file, &self.path)
            .map_err(|e| io_err(&self.path, e))
    }

    /// Frees `len` bytes at `offset` (`FALLOC_FL_PUNCH_HOLE | KEEP_SIZE`);
    /// they read as zeros afterwards. The caller clears and flushes the bits
    /// first (see [`super::BlobCache::punch`]).
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), CacheError> {
        self.writable()?;
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.storage
            .punch_hole(&self.file, &self.path, offset, len)
            .map_err(|e| io_err(&self.path, e))
    }

    /// The open data file (read-write; for `fstat` and the like).
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }
}

/// An exclusive open-file-description lock on a span of a data file: the
/// cross-process half of single flight. A process fetching a frame for a
/// shared cache holds the lock on the frame's span until its bits are set
/// (or it gave up); another process that wants the same frame waits for
/// the lock *with a deadline* ([`CacheFile::lock_span_until`]: a stopped
/// or frozen holder must not pin it), then finds the bits set or fetches
/// the frame itself. The kernel drops the lock if the holder dies.
/// Released on drop.
#[derive(Debug)]
pub struct SpanLock {
    file: Arc<File>,
    start: u64,
    len: u64,
}

fn flock_of(kind: libc::c_int, start: u64, len: u64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a
    // valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl
}

/// First and last pause between two attempts of
/// [`CacheFile::lock_span_until`].
const LOCK_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(20));

impl CacheFile {
    /// Locks `start..start + len` exclusively without waiting: `Some` once
    /// held, `None` if another open file description (another process)
    /// holds part of it.
    pub fn try_lock_span(&self, start: u64, len: u64) -> Result<Option<SpanLock>, CacheError> {
        self.writable()?;
        self.check(start, len)?;
        self.lock_through(&self.file, start, len)
    }

    /// [`CacheFile::try_lock_span`] through a second open file description
    /// of the file: `None` also while a thread of this process holds part
    /// of the span (locks through one description never conflict with each
    /// other, and releasing one releases the span for all its holders). An
    /// eviction takes it, so it never punches a frame that some fetch of
    /// this or another process has claimed and may be writing.
    pub fn try_lock_span_apart(
        &self,
        start: u64,
        len: u64,
    ) -> Result<Option<SpanLock>, CacheError> {
        self.writable()?;
        self.check(start, len)?;
        let apart = match self.apart.get() {
            Some(f) => f,
            None => {
                // The open file itself (its path may name another by now).
                let fd = std::os::fd::AsRawFd::as_raw_fd(&*self.file);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("/proc/self/fd/{fd}"))
                    .map_err(|e| io_err(&self.path, e))?;
                self.apart.get_or_init(|| Arc::new(f))
            }
        };
        self.lock_through(apart, start, len)
    }

    fn lock_through(
        &self,
        file: &Arc<File>,
        start: u64,
        len: u64,
    ) -> Result<Option<SpanLock>, CacheError> {
        let fl = flock_of(libc::F_WRLCK, start, len);
        loop {
            match fcntl(&**file, FcntlArg::F_OFD_SETLK(&fl)) {
                Ok(_) => {
                    return Ok(Some(SpanLock {
                        file: file.clone(),
                        start,
                        len,
                    }))
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Ok(None),
                Err(e) => return Err(io_err(&self.path, e.into())),
            }
        }
    }

    /// Like [`CacheFile::try_lock_span`], retrying (pauses of 1 ms doubling
    /// to 20 ms) until the lock is held (`Some`) or `deadline` passes
    /// (`None`). Never blocks in the kernel, so a stopped holder costs at
    /// most the time to the deadline.
    pub fn lock_span_until(
        &self,
        start: u64,
        len: u64,
        deadline: Instant,
    ) -> Result<Option<SpanLock>, CacheError> {
        self.writable()?;
        let mut pause = LOCK_POLL.0;
        loop {
            if let Some(l) = self.try_lock_span(start, len)? {
                return Ok(Some(l));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(LOCK_POLL.1);
        }
    }
}

impl Drop for SpanLock {
    fn drop(&mut self) {
        let fl = flock_of(libc::F_UNLCK, self.start, self.len);
        if let Err(e) = fcntl(&*self.file, FcntlArg::F_OFD_SETLK(&fl)) {
            tracing::warn!("releasing a cache span lock: {e}");
        }
    }
}
