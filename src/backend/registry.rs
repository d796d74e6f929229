//! `registry://`: blobs in an OCI distribution registry.
//! (Skeleton: being implemented.)

use super::{Backend, BackendError, BackendOptions, BlobId};

/// Blobs behind a URL template.
#[derive(Debug)]
pub struct RegistryBackend {}

impl RegistryBackend {
    /// Sets up the backend for the repository.
    pub fn open(
        _tls: bool,
        _host: &str,
        _repo: &str,
        _opts: &BackendOptions,
    ) -> Result<RegistryBackend, BackendError> {
        Err(BackendError::Config(
            "registry backend not built yet".into(),
        ))
    }
}

impl Backend for RegistryBackend {
    fn read_range(&self, _: &BlobId, _: u64, _: u64) -> Result<Vec<u8>, BackendError> {
        Err(BackendError::Config(
            "registry backend not built yet".into(),
        ))
    }
    fn blob_size(&self, _: &BlobId) -> Result<u64, BackendError> {
        Err(BackendError::Config(
            "registry backend not built yet".into(),
        ))
    }
}
