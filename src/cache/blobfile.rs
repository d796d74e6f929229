//! The sparse data file: `DIR/<blob hex>.data`.
//!
//! Exactly as long as the blob's uncompressed address space; chunk data sits
//! uncompressed at the chunk's `uncompressed_offset`, so a hit is one `pread`
//! and no decompression. Unwritten and punched parts are holes and read as
//! zeros, which is why nothing here may be read without its range's bit set
//! (see [`super::BlobCache`]). The file holds no metadata of its own: whether
//! a byte is valid is the bitmap's business alone.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fallocate, fcntl, FallocateFlags, FcntlArg};
use std::sync::Arc;

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
        let path = data_path(dir, blob);
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        let (file, mut state) = match opts.open(&path) {
            Ok(f) => (f, DataState::Existing),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let f = opts
                    .create(true)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                (f, DataState::Created)
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        if len != size {
            file.set_len(size).map_err(|e| io_err(&path, e))?;
            if state == DataState::Existing {
                state = DataState::Resized;
            }
        }
        let file = Arc::new(file);
        Ok((CacheFile { file, size, path }, state))
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
        self.check(offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io_err(&self.path, e))
    }

    /// Reads `len` bytes at `offset`. Holes read as zeros: only call this for
    /// ranges whose bits are set.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, CacheError> {
        self.check(offset, len as u64)?;
        let mut buf = vec![0u8; len];
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
        self.file.sync_data().map_err(|e| io_err(&self.path, e))
    }

    /// Frees `len` bytes at `offset` (`FALLOC_FL_PUNCH_HOLE | KEEP_SIZE`);
    /// they read as zeros afterwards. The caller clears and flushes the bits
    /// first (see [`super::BlobCache::punch`]).
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), CacheError> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let too_large = |_| CacheError::OutOfBounds {
            offset,
            len,
            size: self.size,
        };
        let off = i64::try_from(offset).map_err(too_large)?;
        let n = i64::try_from(len).map_err(too_large)?;
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(&*self.file, mode, off, n).map_err(|e| io_err(&self.path, e.into()))
    }
}

/// An exclusive open-file-description lock on a span of a data file: the
/// cross-process half of single flight. A process fetching a frame for a
/// shared cache holds the lock on the frame's span until its bits are set
/// (or it gave up); another process that wants the same frame waits for
/// the lock, then finds the bits set. The kernel drops the lock if the
/// holder dies. Released on drop.
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

impl CacheFile {
    /// Locks `start..start + len` exclusively: `Some` once held, `None` if
    /// `wait` is false and another process holds part of it.
    pub fn lock_span(
        &self,
        start: u64,
        len: u64,
        wait: bool,
    ) -> Result<Option<SpanLock>, CacheError> {
        self.check(start, len)?;
        let fl = flock_of(libc::F_WRLCK, start, len);
        loop {
            let arg = if wait {
                FcntlArg::F_OFD_SETLKW(&fl)
            } else {
                FcntlArg::F_OFD_SETLK(&fl)
            };
            match fcntl(&*self.file, arg) {
                Ok(_) => {
                    return Ok(Some(SpanLock {
                        file: self.file.clone(),
                        start,
                        len,
                    }))
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) if !wait => {
                    return Ok(None)
                }
                Err(e) => return Err(io_err(&self.path, e.into())),
            }
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
