//! Image references: `host[:port]/repo[:tag][@sha256:<hex>]`, with or
//! without a `docker://` prefix. The host is always explicit (no Docker Hub
//! default); a reference with neither tag nor digest means `:latest`. On
//! Docker Hub (`docker.io`, `index.docker.io`) a one-component repository
//! is an official image, `library/<name>`, as docker and containerd read
//! it.

use crate::backend::registry::is_docker_hub_name;
use std::fmt;
use thiserror::Error;

/// A reference that is not `host[:port]/repo[:tag][@sha256:<hex>]`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("'{input}' is not an image reference ({why}); expected host[:port]/repo[:tag][@sha256:<64 hex>]")]
pub struct ReferenceError {
    /// What was given.
    pub input: String,
    /// What is wrong.
    pub why: &'static str,
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub host: String,
    /// The repository path, e.g. `library/debian`.
    pub repo: String,
    /// The tag, if given.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:<hex>`), if given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `s` (see the module docs).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let err = |why| ReferenceError {
            input: s.to_owned(),
            why,
        };
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        let (host, path) = rest.split_once('/').ok_or(err("no repository"))?;
        check_host(host).map_err(err)?;
        let (name, digest) = match path.split_once('@') {
            Some((n, d)) => (n, Some(check_digest(d).map_err(err)?)),
            None => (path, None),
        };
        let (repo, tag) = match name.rsplit_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (name, None),
        };
        check_repo(repo).map_err(err)?;
        if let Some(t) = tag {
            check_tag(t).map_err(err)?;
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t.map(str::to_owned),
        };
        let repo = if is_docker_hub_name(host) && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_owned()
        };
        Ok(Reference {
            host: host.to_owned(),
            repo,
            tag,
            digest,
        })
    }

    /// What to ask `/v2/<repo>/manifests/` for: the digest if given, else
    /// the tag.
    pub fn manifest_key(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_host(host: &str) -> Result<(), &'static str> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !name_ok {
        return Err("bad registry host");
    }
    // docker reads a first component that has no `.`, no port, no upper
    // case and is not `localhost` as a Docker Hub namespace
    // (`library/alpine` is `docker.io/library/alpine`): taking it for a
    // host would send the request, and any credentials given by flag, to
    // whatever that name resolves to.
    let domain = port.is_some()
        || name.contains('.')
        || name == "localhost"
        || name.bytes().any(|b| b.is_ascii_uppercase());
    if !domain {
        return Err(
            "the first component is not a registry host; docker would read it as a \
             Docker Hub repository: write docker.io/... for Docker Hub",
        );
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err("bad registry port");
        }
    }
    Ok(())
}

/// OCI distribution repository names: `/`-separated components of lower
/// case letters and digits, joined by `.`, `_`, `__` or `-` runs.
fn check_repo(repo: &str) -> Result<(), &'static str> {
    if repo.is_empty() || repo.len() > 255 {
        return Err("bad repository name");
    }
    for comp in repo.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok = !b.is_empty()
            && b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || b"._-".contains(c));
        if !ok {
            return Err("bad repository name");
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), &'static str> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    ok.then_some(()).ok_or("bad tag")
}

/// `sha256:` and 64 lower-case hex digits.
pub(crate) fn check_digest(d: &str) -> Result<String, &'static str> {
    let hex = d.strip_prefix("sha256:").ok_or("digest is not sha256:")?;
    let ok = hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| d.to_owned()).ok_or("bad sha256 digest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_references() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse("docker://127.0.0.1:5000/rafs/test:v1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref(), r.digest),
            ("127.0.0.1:5000", "rafs/test", Some("v1"), None)
        );
        let r = Reference::parse("reg.example/a").unwrap();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "reg.example/a:latest");
        let r = Reference::parse(&format!("localhost:5000/a/b-c@{d}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        assert_eq!(r.manifest_key(), d);
        for (hub, repo) in [
            ("docker.io/alpine:3", "library/alpine"),
            ("docker://INDEX.docker.io/alpine", "library/alpine"),
            ("docker.io/bitnami/redis", "bitnami/redis"),
            ("registry-1.docker.io/alpine", "alpine"),
            ("reg.example/alpine", "alpine"),
        ] {
            assert_eq!(Reference::parse(hub).unwrap().repo, repo, "{hub}");
        }
        let r = Reference::parse(&format!("h.example/a:t@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.manifest_key(), d);
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "repo",
            "docker://",
            "/repo",
            "host.example/",
            "host.example//repo",
            "host.example/Repo",
            "host.example/repo:",
            "host.example/repo:bad/tag",
            "host.example/repo@sha256:abc",
            "host.example/repo@md5:00",
            &format!("host.example/repo@sha256:{}", "AB".repeat(32)),
            "host:0/repo",
            "host:x/repo",
            "ho st/repo",
            "host.example/-repo",
            "oci:dir",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
        // What docker reads as Docker Hub repositories names no host.
        for hub in ["library/alpine", "docker://myorg/app:1", "registry/app"] {
            let e = Reference::parse(hub).unwrap_err();
            assert!(e.why.contains("not a registry host"), "{hub}: {e}");
        }
        for host in ["localhost/app", "reg:5000/app", "reg.lan/app"] {
            Reference::parse(host).unwrap();
        }
    }
}
