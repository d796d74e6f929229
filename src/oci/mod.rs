//! rafs images in OCI registries (`docs/IMAGE.md`): references, the
//! manifest model, `rafs push`, `rafs pull` and `rafs convert` (plain
//! images read by [`source`], converted by [`convert`]). Every request goes through
//! the registry backend's authenticated client
//! ([`crate::backend::registry::session::RegistryClient`]): one auth, one
//! set of credential sources.

pub mod blobs_from;
pub mod bundle;
pub mod convert;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod reference;
pub mod source;

use crate::backend::registry::session::RegistryClient;
use crate::backend::{BackendError, BackendOptions};
use std::path::PathBuf;
use thiserror::Error;

pub use reference::{Reference, ReferenceError};

/// Why a push or a pull failed.
#[derive(Debug, Error)]
pub enum OciError {
    /// A malformed reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A request failed (transport, status, auth).
    #[error("{what}: {source}")]
    Registry {
        /// What was being done.
        what: String,
        /// The transport's error.
        #[source]
        source: BackendError,
    },
    /// The registry does not let these credentials push.
    #[error("{repo}: the registry refused to let us push (the credentials or token lack push rights): {detail}")]
    PushDenied {
        /// The repository.
        repo: String,
        /// What the registry said.
        detail: String,
    },
    /// No manifest under that tag or digest.
    #[error("{0}: manifest unknown (no such tag or digest in the repository)")]
    ManifestUnknown(String),
    /// The manifest is not a rafs image.
    #[error("{reference}: not a rafs image: {why}")]
    NotRafs {
        /// The reference.
        reference: String,
        /// What gave it away.
        why: String,
    },
    /// Bytes that do not hash to their digest.
    #[error("{what}: digest mismatch: expected {expected}, got {got}")]
    Digest {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        got: String,
    },
    /// A document larger than its limit.
    #[error("{what}: larger than the {limit}-byte limit")]
    TooLarge {
        /// Which document.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// Something malformed (a manifest, a config, a bootstrap, the output
    /// directory of `rafs create`).
    #[error("{what}: {why}")]
    Invalid {
        /// What was being checked.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// An upload the registry accepted but does not serve in full.
    #[error("blob {digest}: the registry accepted the upload but serves {served} bytes of {size}")]
    NotServed {
        /// The blob's digest.
        digest: String,
        /// Its size.
        size: u64,
        /// What a HEAD reports (0: absent).
        served: u64,
    },
    /// A blob the bootstrap names that no source has.
    #[error("blob {digest} is named by the bootstrap but found nowhere (searched: {searched}); give its image or directory (--chunk-dict, --blobs-from)")]
    MissingBlob {
        /// The blob's digest.
        digest: String,
        /// Where it was looked for.
        searched: String,
    },
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    fn registry(what: impl Into<String>) -> impl FnOnce(BackendError) -> OciError {
        let what = what.into();
        move |source| OciError::Registry { what, source }
    }
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OciError {
        let path = path.into();
        move |source| OciError::Io { path, source }
    }
    fn invalid(what: impl Into<String>, why: impl Into<String>) -> OciError {
        OciError::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }
}

/// How to reach a registry: the backend's options plus plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Credentials, proxy, timeouts, trusted token realms.
    pub backend: BackendOptions,
    /// Talk plain HTTP instead of HTTPS.
    pub plain_http: bool,
}

/// A client of `reference`'s repository asking tokens for `scopes`
/// (empty: the registry's challenges decide).
pub(crate) fn client(
    reference: &Reference,
    opts: &RegistryOptions,
    scopes: Vec<String>,
) -> Result<RegistryClient, OciError> {
    RegistryClient::open(
        !opts.plain_http,
        &reference.host,
        &reference.repo,
        &opts.backend,
    )
    .map(|c| c.with_scopes(scopes))
    .map_err(OciError::registry(reference.to_string()))
}

/// A byte-count progress bar on stderr for a transfer of `total` bytes
/// (hidden unless `show`).
pub(crate) fn transfer_bar(show: bool, total: u64, what: &'static str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {bytes}/{total_bytes} ({bytes_per_sec}) {wide_bar}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}

/// A temporary directory removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    /// A fresh directory named after `what` under the system temp dir.
    pub(crate) fn new(what: &str) -> Result<TempDir, OciError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("rafs-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(OciError::io(&p))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
