//! Errors of the filesystem core. The FUSE adapter maps each variant to an
//! errno in exactly one place (`crate::fuse`); nothing else produces errnos.

use crate::backend::BlobId;
use crate::chunk::FetchError;
use rafs_format::FormatError;
use thiserror::Error;

/// A failed filesystem operation.
#[derive(Debug, Error)]
pub enum FsError {
    /// No such inode or directory entry (ENOENT).
    #[error("no such file or directory")]
    NotFound,
    /// The operation needs a directory (ENOTDIR).
    #[error("not a directory")]
    NotDir,
    /// The operation does not apply to a directory (EISDIR).
    #[error("is a directory")]
    IsDir,
    /// The operation needs a symlink or regular file (EINVAL).
    #[error("invalid argument")]
    Invalid,
    /// No such extended attribute (ENODATA).
    #[error("no such attribute")]
    NoAttr,
    /// Writes are refused: the image is read-only (EROFS).
    #[error("read-only filesystem")]
    ReadOnly,
    /// Data could not be fetched or failed verification (EIO).
    #[error("inode {ino}, chunk {chunk} (blob {blob}): {source}")]
    Data {
        /// File being read.
        ino: u32,
        /// Index of the chunk in the chunk table.
        chunk: u64,
        /// Blob holding it.
        blob: BlobId,
        /// What went wrong.
        source: FetchError,
    },
    /// The bootstrap is inconsistent (EIO); cannot happen after validation
    /// unless the mapped file changed underneath.
    #[error("bootstrap: {0}")]
    Format(#[from] FormatError),
}
