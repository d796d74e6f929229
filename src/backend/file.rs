//! `file:///dir`: blobs as files named by their hex id in a local directory.
//!
//! Blobs are immutable, so each is opened once and kept open with its size:
//! a chunk read is one `pread`, not open + fstat + pread + close. An image
//! references a handful of blobs, so the table of open files stays small.

use super::{Backend, BackendError, BlobId};
use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Blobs in a local directory, `DIR/<sha256 hex>`.
#[derive(Debug)]
pub struct FileBackend {
    dir: PathBuf,
    /// Blobs opened so far, with their sizes.
    open: Mutex<HashMap<BlobId, (Arc<File>, u64)>>,
}

impl FileBackend {
    /// A backend over `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileBackend {
            dir: dir.into(),
            open: Mutex::default(),
        }
    }

    /// Path of blob `id`.
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The open blob and its size. A missing blob is not remembered: it may
    /// appear later.
    fn open(&self, id: &BlobId) -> Result<(Arc<File>, u64), BackendError> {
        let io = |source| BackendError::Io { blob: *id, source };
        if let Some(hit) = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(hit.clone());
        }
        let file = File::open(self.blob_path(id)).map_err(|e| match e.kind() {
            ErrorKind::NotFound => BackendError::NotFound(*id),
            _ => io(e),
        })?;
        let size = file.metadata().map_err(io)?.len();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(open.entry(*id).or_insert((Arc::new(file), size)).clone())
    }
}

/// Bytes [`FileBackend::read_range_to`] reads at once at most.
const PIECE: u64 = 1 << 20;

impl FileBackend {
    /// The open blob, if `len` bytes at `offset` lie inside it.
    fn checked(&self, id: &BlobId, offset: u64, len: u64) -> Result<Arc<File>, BackendError> {
        let (file, size) = self.open(id)?;
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > size) {
            return Err(BackendError::OutOfRange {
                blob: *id,
                offset,
                len,
                size,
            });
        }
        Ok(file)
    }
}

impl Backend for FileBackend {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let file = self.checked(id, offset, len)?;
        let mut buf = crate::util::pool::zeroed(len as usize);
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| BackendError::Io {
                blob: *id,
                source: e,
            })?;
        Ok(buf)
    }

    /// Reads the range in pieces of at most `PIECE` (1 MiB), so that a
    /// caller decoding frames as they come holds one piece at a time.
    fn read_range_to(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let file = self.checked(id, offset, len)?;
        let mut buf = crate::util::pool::zeroed(len.min(PIECE) as usize);
        let mut done = 0u64;
        let result = loop {
            if done == len {
                break Ok(());
            }
            let n = (len - done).min(PIECE) as usize;
            if let Err(e) = file.read_exact_at(&mut buf[..n], offset + done) {
                break Err(BackendError::Io {
                    blob: *id,
                    source: e,
                });
            }
            sink(&buf[..n]);
            done += n as u64;
        };
        crate::util::pool::give(buf);
        result
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        Ok(self.open(id)?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let dir = tempfile::tempdir().unwrap();
        let id = BlobId([0xab; 32]);
        std::fs::write(dir.path().join(id.to_hex()), b"0123456789").unwrap();
        let b = FileBackend::new(dir.path());
        assert_eq!(b.blob_size(&id).unwrap(), 10);
        assert_eq!(b.read_range(&id, 0, 3).unwrap(), b"012");
        assert_eq!(b.read_range(&id, 7, 3).unwrap(), b"789");
        assert_eq!(b.read_range(&id, 10, 0).unwrap(), b"");
        assert!(matches!(
            b.read_range(&id, 8, 3),
            Err(BackendError::OutOfRange { .. })
        ));
        assert!(matches!(
            b.read_range(&id, u64::MAX, 2),
            Err(BackendError::OutOfRange { .. })
        ));
        assert!(matches!(
            b.read_range(&BlobId([1; 32]), 0, 1),
            Err(BackendError::NotFound(_))
        ));
    }

    #[test]
    fn a_blob_missing_at_first_is_found_once_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let id = BlobId([0xcd; 32]);
        let b = FileBackend::new(dir.path());
        assert!(matches!(b.blob_size(&id), Err(BackendError::NotFound(_))));
        std::fs::write(dir.path().join(id.to_hex()), b"abc").unwrap();
        assert_eq!(b.read_range(&id, 1, 2).unwrap(), b"bc");
    }
}
