//! Backend selection by URL: `file:///dir` today; other schemes are refused
//! with a typed error naming the scheme, so adding one is a new match arm
//! and a new file next to this one.
//!
//! The URL is parsed strictly and by hand (no percent-decoding: the path is
//! taken literally), because the only scheme is local and a general URL
//! parser would accept forms (`file://host/dir`) rafs cannot serve.

use super::file::FileBackend;
use super::Backend;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why a backend URL was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UrlError {
    /// No `scheme://` prefix.
    #[error("backend '{0}' is not a URL (expected e.g. file:///path/to/blobs)")]
    NotUrl(String),
    /// A scheme rafs has no backend for.
    #[error("unsupported backend scheme '{0}' (supported: file)")]
    UnsupportedScheme(String),
    /// `file://` with a host other than empty or `localhost`.
    #[error("file backend '{0}': only local paths are supported (file:///dir)")]
    RemoteFile(String),
    /// `file://` with a relative or empty path.
    #[error("file backend '{0}': the path must be absolute (file:///dir)")]
    RelativePath(String),
    /// A file backend's directory is missing or not a directory.
    #[error("blobs directory {0}: not a directory")]
    NotDir(PathBuf),
}

/// A parsed backend location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUrl {
    /// Blobs as files in a local directory.
    File(PathBuf),
}

impl BackendUrl {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<BackendUrl, UrlError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| UrlError::NotUrl(url.to_owned()))?;
        if scheme.is_empty() {
            return Err(UrlError::NotUrl(url.to_owned()));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = match rest.find('/') {
                    Some(0) => rest,
                    Some(i) if &rest[..i] == "localhost" => &rest[i..],
                    Some(_) => return Err(UrlError::RemoteFile(url.to_owned())),
                    None if rest.is_empty() => return Err(UrlError::RelativePath(url.to_owned())),
                    None => return Err(UrlError::RemoteFile(url.to_owned())),
                };
                Ok(BackendUrl::File(PathBuf::from(path)))
            }
            other => Err(UrlError::UnsupportedScheme(other.to_owned())),
        }
    }

    /// The URL for a local blob directory (`--blobs DIR`).
    pub fn from_dir(dir: &Path) -> BackendUrl {
        BackendUrl::File(dir.to_owned())
    }

    /// Opens the backend. A file backend's directory must exist (a typo
    /// should fail the mount, not every read).
    pub fn open(&self) -> Result<Arc<dyn Backend>, UrlError> {
        match self {
            BackendUrl::File(dir) if dir.is_dir() => Ok(Arc::new(FileBackend::new(dir))),
            BackendUrl::File(dir) => Err(UrlError::NotDir(dir.clone())),
        }
    }
}

impl std::fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendUrl::File(dir) => write!(f, "file://{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls() {
        assert_eq!(
            BackendUrl::parse("file:///var/blobs"),
            Ok(BackendUrl::File("/var/blobs".into()))
        );
        assert_eq!(
            BackendUrl::parse("FILE://localhost/b"),
            Ok(BackendUrl::File("/b".into()))
        );
        assert_eq!(
            BackendUrl::parse("file:///"),
            Ok(BackendUrl::File("/".into()))
        );
        assert_eq!(
            BackendUrl::from_dir(Path::new("/x")).to_string(),
            "file:///x"
        );
    }

    #[test]
    fn refused_urls() {
        assert!(matches!(
            BackendUrl::parse("/var/blobs"),
            Err(UrlError::NotUrl(_))
        ));
        assert!(matches!(
            BackendUrl::parse("://x"),
            Err(UrlError::NotUrl(_))
        ));
        assert_eq!(
            BackendUrl::parse("http://example/blobs"),
            Err(UrlError::UnsupportedScheme("http".into()))
        );
        let e = BackendUrl::parse("s3://bucket").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported backend scheme 's3' (supported: file)"
        );
        assert!(matches!(
            BackendUrl::parse("file://host/dir"),
            Err(UrlError::RemoteFile(_))
        ));
        assert!(matches!(
            BackendUrl::parse("file://relative"),
            Err(UrlError::RemoteFile(_))
        ));
        assert!(matches!(
            BackendUrl::parse("file://"),
            Err(UrlError::RelativePath(_))
        ));
        let missing = BackendUrl::parse("file:///nonexistent/rafs/blobs").unwrap();
        assert!(matches!(missing.open(), Err(UrlError::NotDir(_))));
        assert!(BackendUrl::parse("file:///").unwrap().open().is_ok());
    }
}
