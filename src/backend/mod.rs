//! Where blobs live. One trait, one file per backend, selected by URL.
//!
//! Blobs are immutable and named by the sha256 of their bytes ([`BlobId`]).
//! A backend only reads byte ranges; verification happens above it (see
//! [`crate::chunk`]), so a backend may be wrong or hostile without a wrong
//! byte reaching a reader.

pub mod file;
pub mod url;

use std::fmt;
use thiserror::Error;

/// A blob's id: the sha256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// Lower-case hex, as blobs are named on disk and in registries.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<BlobId> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(BlobId(id))
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

/// Backend failures.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The blob does not exist.
    #[error("blob {0} not found")]
    NotFound(BlobId),
    /// The range extends past the end of the blob.
    #[error("blob {blob}: range {offset}+{len} past its end ({size} bytes)")]
    OutOfRange {
        /// Blob.
        blob: BlobId,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Actual blob size.
        size: u64,
    },
    /// An I/O error reading the blob.
    #[error("blob {blob}: {source}")]
    Io {
        /// Blob.
        blob: BlobId,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Read access to blobs.
pub trait Backend: Send + Sync {
    /// Reads exactly `len` bytes at `offset` of blob `id`. A range that
    /// extends past the end is [`BackendError::OutOfRange`], never a short
    /// read; `len == 0` returns an empty vector if the blob exists.
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;

    /// The size of blob `id` in bytes.
    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError>;
}
