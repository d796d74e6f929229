//! `s3://`: blobs in S3-compatible object storage (SigV4).
//! (Skeleton: being implemented.)

use super::{Backend, BackendError, BackendOptions, BlobId};

/// Blobs behind a URL template.
#[derive(Debug)]
pub struct S3Backend {}

impl S3Backend {
    /// Sets up the backend for the bucket.
    pub fn open(
        _bucket: &str,
        _prefix: &str,
        _opts: &BackendOptions,
    ) -> Result<S3Backend, BackendError> {
        Err(BackendError::Config("s3 backend not built yet".into()))
    }
}

impl Backend for S3Backend {
    fn read_range(&self, _: &BlobId, _: u64, _: u64) -> Result<Vec<u8>, BackendError> {
        Err(BackendError::Config("s3 backend not built yet".into()))
    }
    fn blob_size(&self, _: &BlobId) -> Result<u64, BackendError> {
        Err(BackendError::Config("s3 backend not built yet".into()))
    }
}
