//! Where blobs live. One trait, one file per backend, selected by URL.
//!
//! Blobs are immutable and named by the sha256 of their bytes ([`BlobId`]).
//! A backend only reads byte ranges; verification happens above it (see
//! [`crate::chunk`]), so a backend may be wrong or hostile without a wrong
//! byte reaching a reader.
//!
//! Inside, [`url`] alone knows every backend (it selects one by scheme);
//! the network backends share [`client`] (HTTP transport, strict answers,
//! origins) and import neither [`url`] nor one another.

pub mod client;
pub mod file;
pub mod http;
pub mod registry;
pub mod s3;
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
///
/// [`BackendError::is_transient`] splits them into the kind a retry may
/// cure (server overload, network trouble, a short body) and the kind it
/// cannot (missing blob, refused credentials, a bad range).
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
    /// The server refused the credentials (or there were none and it wants
    /// some): 401 after the auth flow, or 403.
    #[error("blob {blob}: access denied: {detail}")]
    Auth {
        /// Blob.
        blob: BlobId,
        /// The URL (never with credentials) and what the server said,
        /// shortened.
        detail: String,
    },
    /// An HTTP status the backend has no better variant for.
    #[error("blob {blob}: HTTP {status} from {url}")]
    Status {
        /// Blob.
        blob: BlobId,
        /// The URL (never with credentials).
        url: Box<str>,
        /// The status code.
        status: u16,
    },
    /// Connecting, sending or receiving failed (DNS, refused, reset, TLS,
    /// timeout).
    #[error("blob {blob}: {detail}")]
    Transport {
        /// Blob.
        blob: BlobId,
        /// The URL (never with credentials) and the transport's error, as
        /// text.
        detail: String,
        /// Whether the request timed out.
        timeout: bool,
    },
    /// The server answered with fewer (or more) bytes than asked, or
    /// ignored the Range header.
    #[error("blob {blob}: asked for {expected} bytes at {offset}, got {got}")]
    ShortBody {
        /// Blob.
        blob: BlobId,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The backend is misconfigured (bad URL, unreadable credentials file,
    /// ...): no request can succeed.
    #[error("{0}")]
    Config(String),
    /// A redirect that is not followed: from HTTPS to plain HTTP (the data
    /// would cross the network in clear text) or to a scheme other than
    /// http(s).
    #[error("blob {blob}: refused redirect {detail}")]
    RefusedRedirect {
        /// Blob.
        blob: BlobId,
        /// From where to where (URLs without their query, which may hold
        /// a signature) and why.
        detail: Box<str>,
    },
}

impl BackendError {
    /// Whether retrying the same request may succeed: 5xx, 429, transport
    /// errors and short bodies. `NotFound`, `Auth`, `OutOfRange`, other 4xx
    /// and configuration errors are final.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Status { status, .. } => *status == 429 || *status >= 500,
            BackendError::Transport { .. } | BackendError::ShortBody { .. } => true,
            BackendError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::Interrupted
                    || source.kind() == std::io::ErrorKind::TimedOut
            }
            BackendError::NotFound(_)
            | BackendError::OutOfRange { .. }
            | BackendError::Auth { .. }
            | BackendError::Config(_)
            | BackendError::RefusedRedirect { .. } => false,
        }
    }

    /// A short, stable label for metrics (`rafs_backend_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::NotFound(_) => "not_found",
            BackendError::OutOfRange { .. } => "out_of_range",
            BackendError::Io { .. } => "io",
            BackendError::Auth { .. } => "auth",
            BackendError::Status { status, .. } if *status == 429 => "throttled",
            BackendError::Status { status, .. } if *status >= 500 => "server",
            BackendError::Status { .. } => "status",
            BackendError::Transport { timeout: true, .. } => "timeout",
            BackendError::Transport { .. } => "transport",
            BackendError::ShortBody { .. } => "short_body",
            BackendError::Config(_) => "config",
            BackendError::RefusedRedirect { .. } => "refused_redirect",
        }
    }
}

/// Read access to blobs.
///
/// Implementations must be safe to call from many threads at once; the
/// fetcher above bounds how many calls run concurrently, retries transient
/// errors and verifies every byte, so a backend makes exactly one attempt
/// per call and never retries on its own (except for protocol steps such as
/// fetching a bearer token after a 401, or following a redirect).
pub trait Backend: Send + Sync {
    /// Reads exactly `len` bytes at `offset` of blob `id`. A range that
    /// extends past the end is [`BackendError::OutOfRange`], never a short
    /// read; `len == 0` returns an empty vector if the blob exists.
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;

    /// [`Backend::read_range`], handing the bytes to `sink` in order as
    /// they arrive (pieces of any size), so that a caller can use the
    /// first bytes of a long range before the last have come. On success
    /// the pieces add up to exactly `len` bytes; on an error they are a
    /// prefix of the range (possibly empty), every byte of which is as
    /// trustworthy as a whole answer's. The default reads the whole range,
    /// then hands it over at once.
    fn read_range_to(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let bytes = self.read_range(id, offset, len)?;
        sink(&bytes);
        crate::util::pool::give(bytes);
        Ok(())
    }

    /// The size of blob `id` in bytes.
    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError>;
}

/// [`Backend::read_range`] of a backend that streams: the pieces `read`
/// hands its sink, collected.
pub fn collect_range(
    len: u64,
    read: impl FnOnce(&mut dyn FnMut(&[u8])) -> Result<(), BackendError>,
) -> Result<Vec<u8>, BackendError> {
    // Room for a fetcher's request up front; a longer range (a whole blob
    // named by an untrusted manifest) grows as its bytes come.
    let room = len.min(crate::util::pool::MAX as u64) as usize;
    let mut bytes = crate::util::pool::take(room);
    read(&mut |piece| bytes.extend_from_slice(piece))?;
    Ok(bytes)
}

/// Settings shared by the network backends. Every field has a default
/// ([`BackendOptions::default`]); flags and the mount's TOML config fill
/// them, and the environment fills what neither gives (see each field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    /// HTTP(S) proxy URL (`--proxy`). `None`: taken from `HTTPS_PROXY` /
    /// `HTTP_PROXY` / `ALL_PROXY` (and lower-case forms), honouring
    /// `NO_PROXY`.
    pub proxy: Option<String>,
    /// PEM files of extra certificates trusted for HTTPS (`--ca-cert`),
    /// beside the system's trust store.
    pub ca_certs: Vec<std::path::PathBuf>,
    /// Timeout of one request, connect to last body byte.
    pub request_timeout: std::time::Duration,
    /// Timeout of the TCP/TLS connect alone.
    pub connect_timeout: std::time::Duration,
    /// Registry user (`--registry-user`, else `RAFS_REGISTRY_USER`, else
    /// the docker `config.json` entry for the host).
    pub registry_user: Option<String>,
    /// Registry password (`--registry-password`, else
    /// `RAFS_REGISTRY_PASSWORD`).
    pub registry_password: Option<String>,
    /// Docker config file (`--docker-config`, else `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`).
    pub docker_config: Option<std::path::PathBuf>,
    /// Token servers on other hosts that may receive the registry
    /// credentials (`--registry-token-realm`), as URLs; only their scheme,
    /// host and port count. The registry's own host always may.
    pub registry_token_realms: Vec<String>,
    /// S3 endpoint URL (`--s3-endpoint`, else `AWS_ENDPOINT_URL`, else
    /// `https://s3.<region>.amazonaws.com`).
    pub s3_endpoint: Option<String>,
    /// S3 region (`--s3-region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`,
    /// else `us-east-1`).
    pub s3_region: Option<String>,
    /// Path-style S3 URLs (`--s3-path-style`; needed by most self-hosted
    /// servers). Default: virtual-host style.
    pub s3_path_style: bool,
    /// S3 access key (`--s3-access-key`, else `AWS_ACCESS_KEY_ID`).
    pub s3_access_key: Option<String>,
    /// S3 secret key (`--s3-secret-key`, else `AWS_SECRET_ACCESS_KEY`).
    pub s3_secret_key: Option<String>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            proxy: None,
            ca_certs: Vec::new(),
            request_timeout: std::time::Duration::from_secs(10),
            connect_timeout: std::time::Duration::from_secs(5),
            registry_user: None,
            registry_password: None,
            docker_config: None,
            registry_token_realms: Vec::new(),
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: false,
            s3_access_key: None,
            s3_secret_key: None,
        }
    }
}
