//! `registry://host[:port]/repo` (HTTPS) and `registry+http://…` (plain
//! HTTP): blobs in an OCI distribution registry, read with range GETs of
//! `/v2/<repo>/blobs/sha256:<hex>`.
//!
//! Authentication (registry challenges, Basic, bearer tokens and their
//! refresh) is [`session::RegistryClient`]'s, shared with `rafs push` and
//! `rafs pull` ([`crate::oci`]); a refused read is retried once after the
//! challenge of the blob's own URL has been followed.
//!
//! Registries often redirect blob GETs to object storage; the shared
//! [`HttpClient`](super::client::HttpClient) follows redirects without
//! forwarding `Authorization`. Credentials are looked up once, at open
//! (see [`auth`]), and are never logged: the `Debug` output of the backend
//! redacts them.

pub mod auth;
pub mod session;

/// Docker Hub's registry API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The names references and docker configs give Docker Hub, which serve no
/// registry API themselves.
pub const DOCKER_HUB_NAMES: [&str; 2] = ["docker.io", "index.docker.io"];

/// Whether `host` is one of [`DOCKER_HUB_NAMES`] (in any case).
pub fn is_docker_hub_name(host: &str) -> bool {
    DOCKER_HUB_NAMES
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
}

/// Whether `host` is Docker Hub: its API host or one of its names.
pub fn is_docker_hub(host: &str) -> bool {
    is_docker_hub_name(host) || DOCKER_HUB_API.eq_ignore_ascii_case(host)
}

use self::auth::Clock;
use self::session::RegistryClient;
use super::client::answer_locally;
use super::{Backend, BackendError, BackendOptions, BlobId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Blobs in one repository of a registry.
#[derive(Debug)]
pub struct RegistryBackend {
    session: RegistryClient,
    sizes: Mutex<HashMap<BlobId, u64>>,
}

impl RegistryBackend {
    /// Sets up the backend for `repo` on `host` (`host[:port]`) and looks
    /// up its credentials; no request is made here.
    pub fn open(
        tls: bool,
        host: &str,
        repo: &str,
        opts: &BackendOptions,
    ) -> Result<RegistryBackend, BackendError> {
        Ok(RegistryBackend::from_client(RegistryClient::open(
            tls, host, repo, opts,
        )?))
    }

    /// The backend reading blobs through `session`.
    pub fn from_client(session: RegistryClient) -> RegistryBackend {
        RegistryBackend {
            session,
            sizes: Mutex::new(HashMap::new()),
        }
    }

    /// The same backend measuring token lifetimes with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> RegistryBackend {
        self.session = self.session.with_clock(clock);
        self
    }

    fn url(&self, id: &BlobId) -> String {
        self.session.blob_url(id)
    }

    fn cached_size(&self, id: &BlobId) -> Option<u64> {
        let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.get(id).copied()
    }
}

impl Backend for RegistryBackend {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        super::collect_range(len, |sink| self.read_range_to(id, offset, len, sink))
    }

    fn read_range_to(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let known = self.cached_size(id);
        if let Some(answer) = answer_locally(id, offset, len, known, || self.blob_size(id)) {
            return answer;
        }
        let url = self.url(id);
        let http = self.session.http();
        // `with_auth` may call twice (after a 401); the body, and so the
        // sink, comes only with a success status.
        self.session.with_auth(id, &url, |h| {
            http.get_range_to(id, &url, h, offset, len, sink)
        })
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        if let Some(size) = self.cached_size(id) {
            return Ok(size);
        }
        let url = self.url(id);
        let http = self.session.http();
        let size = self
            .session
            .with_auth(id, &url, |h| http.size_of(id, &url, h))?;
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.insert(*id, size);
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BackendOptions {
        BackendOptions {
            registry_user: Some("alice".into()),
            registry_password: Some("hunter2".into()),
            ..BackendOptions::default()
        }
    }

    #[test]
    fn blob_urls() {
        let b = RegistryBackend::open(true, "reg.example:5000", "a/b", &opts()).unwrap();
        let id = BlobId([0xcd; 32]);
        assert_eq!(
            b.url(&id),
            format!(
                "https://reg.example:5000/v2/a/b/blobs/sha256:{}",
                id.to_hex()
            )
        );
        let b = RegistryBackend::open(false, "h", "r", &opts()).unwrap();
        assert!(b.url(&id).starts_with("http://h/v2/r/blobs/sha256:"));
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let b = RegistryBackend::open(true, "h", "r", &opts()).unwrap();
        let dbg = format!("{b:?}");
        assert!(dbg.contains("alice") && !dbg.contains("hunter2"), "{dbg}");
    }
}
