//! `http://` / `https://`: blobs over HTTP range requests.
//! (Skeleton: being implemented.)

use super::{Backend, BackendError, BackendOptions, BlobId};

/// Blobs behind a URL template.
#[derive(Debug)]
pub struct HttpBackend {}

impl HttpBackend {
    /// Sets up the backend for `template`.
    pub fn open(_template: &str, _opts: &BackendOptions) -> Result<HttpBackend, BackendError> {
        Err(BackendError::Config("http backend not built yet".into()))
    }
}

impl Backend for HttpBackend {
    fn read_range(&self, _: &BlobId, _: u64, _: u64) -> Result<Vec<u8>, BackendError> {
        Err(BackendError::Config("http backend not built yet".into()))
    }
    fn blob_size(&self, _: &BlobId) -> Result<u64, BackendError> {
        Err(BackendError::Config("http backend not built yet".into()))
    }
}
