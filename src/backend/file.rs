//! `file:///dir`: blobs as files named by their hex id in a local directory.

use super::{Backend, BackendError, BlobId};
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Blobs in a local directory, `DIR/<sha256 hex>`.
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    /// A backend over `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileBackend { dir: dir.into() }
    }

    /// Path of blob `id`.
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open(&self, id: &BlobId) -> Result<File, BackendError> {
        File::open(self.blob_path(id)).map_err(|e| match e.kind() {
            ErrorKind::NotFound => BackendError::NotFound(*id),
            _ => BackendError::Io {
                blob: *id,
                source: e,
            },
        })
    }
}

impl Backend for FileBackend {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let file = self.open(id)?;
        let size = file
            .metadata()
            .map_err(|e| BackendError::Io {
                blob: *id,
                source: e,
            })?
            .len();
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > size) {
            return Err(BackendError::OutOfRange {
                blob: *id,
                offset,
                len,
                size,
            });
        }
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| BackendError::Io {
                blob: *id,
                source: e,
            })?;
        Ok(buf)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        let file = self.open(id)?;
        Ok(file
            .metadata()
            .map_err(|e| BackendError::Io {
                blob: *id,
                source: e,
            })?
            .len())
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
}
