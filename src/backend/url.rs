//! Backend selection by URL. One scheme, one variant, one file:
//!
//! | URL | backend |
//! |-----|---------|
//! | `file:///dir` | [`super::file`]: `dir/<hex>` |
//! | `http://host/path`, `https://…` | [`super::http`]: `GET <url>/<hex>` with `Range`; a `{blob}` in the URL is replaced by the hex id instead |
//! | `registry://host[:port]/repo` | [`super::registry`]: OCI distribution `/v2/<repo>/blobs/sha256:<hex>` over HTTPS |
//! | `registry+http://host[:port]/repo` | the same over plain HTTP |
//! | `s3://bucket[/prefix]` | [`super::s3`]: object `<prefix>/<hex>` |
//!
//! Parsing is strict and by hand: no percent-decoding, no userinfo
//! (credentials come from flags, the environment or a config file, never
//! from a URL that ends up in logs and `ps`).

use super::file::FileBackend;
use super::{Backend, BackendError, BackendOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why a backend URL was refused.
#[derive(Debug, Error)]
pub enum UrlError {
    /// No `scheme://` prefix.
    #[error("backend '{0}' is not a URL (expected e.g. file:///path/to/blobs)")]
    NotUrl(String),
    /// A scheme rafs has no backend for.
    #[error(
        "unsupported backend scheme '{0}' (supported: file, http, https, registry, registry+http, s3)"
    )]
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
    /// A network URL that does not have the expected shape.
    #[error("backend '{url}': {why}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The backend could not be set up (e.g. unreadable credentials).
    #[error("backend '{url}': {source}")]
    Open {
        /// The URL.
        url: String,
        /// Why.
        source: BackendError,
    },
}

impl PartialEq for UrlError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// A parsed backend location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUrl {
    /// Blobs as files in a local directory.
    File(PathBuf),
    /// Blobs over HTTP(S) range requests: `template` is the URL as given;
    /// see [`super::http::blob_url`].
    Http {
        /// The URL as given (`http://` or `https://`).
        template: String,
    },
    /// An OCI distribution registry.
    Registry {
        /// `https` unless `registry+http://`.
        tls: bool,
        /// `host` or `host:port`.
        host: String,
        /// Repository path, e.g. `library/debian`; no leading or trailing `/`.
        repo: String,
    },
    /// S3-compatible object storage.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/`; may be empty.
        prefix: String,
    },
}

fn invalid(url: &str, why: &'static str) -> UrlError {
    UrlError::Invalid {
        url: url.to_owned(),
        why,
    }
}

/// Checks a `host[:port]` authority: non-empty, no userinfo, sane characters.
fn check_authority(url: &str, authority: &str) -> Result<(), UrlError> {
    if authority.is_empty() {
        return Err(invalid(url, "missing host"));
    }
    if authority.contains('@') {
        return Err(invalid(
            url,
            "credentials in the URL are not accepted; use flags, the environment or a config file",
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
    if !authority.chars().all(ok) {
        return Err(invalid(url, "bad character in host"));
    }
    Ok(())
}

fn parse_file(url: &str, rest: &str) -> Result<BackendUrl, UrlError> {
    let path = match rest.find('/') {
        Some(0) => rest,
        Some(i) if &rest[..i] == "localhost" => &rest[i..],
        Some(_) => return Err(UrlError::RemoteFile(url.to_owned())),
        None if rest.is_empty() => return Err(UrlError::RelativePath(url.to_owned())),
        None => return Err(UrlError::RemoteFile(url.to_owned())),
    };
    Ok(BackendUrl::File(PathBuf::from(path)))
}

fn parse_registry(url: &str, rest: &str, tls: bool) -> Result<BackendUrl, UrlError> {
    let (host, repo) = rest
        .split_once('/')
        .ok_or_else(|| invalid(url, "expected registry://host[:port]/repository"))?;
    check_authority(url, host)?;
    let repo = repo.trim_end_matches('/');
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
    };
    if !repo.split('/').all(component_ok) {
        return Err(invalid(
            url,
            "repository must be lower-case path components of [a-z0-9._-]",
        ));
    }
    Ok(BackendUrl::Registry {
        tls,
        host: host.to_owned(),
        repo: repo.to_owned(),
    })
}

fn parse_s3(url: &str, rest: &str) -> Result<BackendUrl, UrlError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        return Err(invalid(url, "bucket must be 3-63 characters of [a-z0-9.-]"));
    }
    Ok(BackendUrl::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.trim_matches('/').to_owned(),
    })
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
            "file" => parse_file(url, rest),
            "http" | "https" => {
                let authority = rest.split('/').next().unwrap_or("");
                check_authority(url, authority)?;
                Ok(BackendUrl::Http {
                    template: url.to_owned(),
                })
            }
            "registry" => parse_registry(url, rest, true),
            "registry+http" => parse_registry(url, rest, false),
            "s3" => parse_s3(url, rest),
            other => Err(UrlError::UnsupportedScheme(other.to_owned())),
        }
    }

    /// The URL for a local blob directory (`--blobs DIR`).
    pub fn from_dir(dir: &Path) -> BackendUrl {
        BackendUrl::File(dir.to_owned())
    }

    /// Opens the backend. A file backend's directory must exist (a typo
    /// should fail the mount, not every read); network backends check only
    /// their configuration here, not the network.
    pub fn open(&self, opts: &BackendOptions) -> Result<Arc<dyn Backend>, UrlError> {
        let wrap = |source| UrlError::Open {
            url: self.to_string(),
            source,
        };
        match self {
            BackendUrl::File(dir) if dir.is_dir() => Ok(Arc::new(FileBackend::new(dir))),
            BackendUrl::File(dir) => Err(UrlError::NotDir(dir.clone())),
            BackendUrl::Http { template } => super::http::HttpBackend::open(template, opts)
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(wrap),
            BackendUrl::Registry { tls, host, repo } => {
                super::registry::RegistryBackend::open(*tls, host, repo, opts)
                    .map(|b| Arc::new(b) as Arc<dyn Backend>)
                    .map_err(wrap)
            }
            BackendUrl::S3 { bucket, prefix } => super::s3::S3Backend::open(bucket, prefix, opts)
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(wrap),
        }
    }
}

impl std::fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendUrl::File(dir) => write!(f, "file://{}", dir.display()),
            BackendUrl::Http { template } => f.write_str(template),
            BackendUrl::Registry { tls, host, repo } => {
                let scheme = if *tls { "registry" } else { "registry+http" };
                write!(f, "{scheme}://{host}/{repo}")
            }
            BackendUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            BackendUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
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
    fn network_urls() {
        assert_eq!(
            BackendUrl::parse("registry://localhost:5000/rafs/debian/").unwrap(),
            BackendUrl::Registry {
                tls: true,
                host: "localhost:5000".into(),
                repo: "rafs/debian".into()
            }
        );
        let plain = BackendUrl::parse("registry+http://127.0.0.1:5000/img").unwrap();
        assert_eq!(plain.to_string(), "registry+http://127.0.0.1:5000/img");
        assert_eq!(
            BackendUrl::parse("s3://my-bucket/a/b/").unwrap(),
            BackendUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            BackendUrl::parse("s3://my-bucket").unwrap().to_string(),
            "s3://my-bucket"
        );
        let http = BackendUrl::parse("https://cdn.example/blobs/").unwrap();
        assert_eq!(http.to_string(), "https://cdn.example/blobs/");
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
        let e = BackendUrl::parse("ftp://bucket").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported backend scheme 'ftp' (supported: file, http, https, registry, registry+http, s3)"
        );
        for bad in [
            "http://user:pw@host/x",
            "http:///x",
            "registry://host",
            "registry://host/Upper",
            "registry://host/a//b",
            "s3://ab",
            "s3://Bucket",
        ] {
            assert!(
                matches!(BackendUrl::parse(bad), Err(UrlError::Invalid { .. })),
                "{bad}"
            );
        }
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
        let opts = BackendOptions::default();
        assert!(matches!(missing.open(&opts), Err(UrlError::NotDir(_))));
        assert!(BackendUrl::parse("file:///").unwrap().open(&opts).is_ok());
    }
}
