//! Reading a plain container image for `rafs convert`: from a registry
//! (`docker://host/repo:tag`, `@sha256:`) or an OCI image layout
//! (`oci:DIR[:tag]`). Manifests, indexes and configs are read with size
//! limits and digest checks; layer blobs are streamed, hashed while they
//! stream and checked at their end ([`Verified`]).

use super::manifest::{self, Content, CONFIG_LIMIT, MANIFEST_LIMIT};
use super::pull::{get_document, get_manifest, PIECE};
use super::{client, OciError, Reference, RegistryOptions};
use crate::backend::registry::session::RegistryClient;
use crate::backend::BlobId;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// OCI image index media type.
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 manifest list media type.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest media type.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The layout annotation naming a tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Layer media types a convert reads (compression is detected).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Where an image is: a registry or an OCI image layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A registry reference.
    Registry(Reference),
    /// `oci:DIR[:tag]`.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to use.
        tag: Option<String>,
    },
}

impl Location {
    /// Parses `oci:DIR[:tag]` or a registry reference.
    pub fn parse(s: &str) -> Result<Location, OciError> {
        let Some(rest) = s.strip_prefix("oci:") else {
            return Ok(Location::Registry(Reference::parse(s)?));
        };
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t.to_owned())),
            _ => (rest, None),
        };
        if dir.is_empty() || tag.as_deref() == Some("") {
            return Err(OciError::invalid(s, "expected oci:DIR[:tag]"));
        }
        Ok(Location::Layout {
            dir: PathBuf::from(dir),
            tag,
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "docker://{r}"),
            Location::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            Location::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
        }
    }
}

/// A source image being read.
pub enum Source {
    /// From a registry.
    Registry(Arc<RegistryClient>, Reference),
    /// From an OCI layout directory.
    Layout(PathBuf, Option<String>),
}

/// A source image's manifest, resolved to one platform.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// The image manifest's digest (the annotation's value).
    pub digest: String,
    /// The config descriptor.
    pub config: Content,
    /// The layers, bottom first.
    pub layers: Vec<Content>,
}

fn descriptor(v: &Value, what: &str) -> Result<Content, OciError> {
    let d = v.get("digest").and_then(Value::as_str).unwrap_or("");
    let id = super::reference::check_digest(d)
        .ok()
        .and_then(|d| hex::decode(&d[7..]).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| OciError::invalid(what, format!("digest '{d}' is not sha256")))?;
    let size = v
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| OciError::invalid(what, "no size"))?;
    Ok(Content {
        id: BlobId(id),
        size,
    })
}

/// This machine's platform, `os/arch`, in GOARCH names.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// How well index entry platform `p` fits `want` (`os/arch[/variant]`):
/// `Some(0)` for the very platform, `Some(n)` for the n-th older variant
/// a CPU of `want` also runs, `None` if it cannot run there. Variants are
/// compared as containerd normalizes and orders them (`platforms.Only`),
/// so that an index listing `amd64/v3` before plain `amd64` does not give
/// a baseline `linux/amd64` the v3 image, and `arm64/v8` is `arm64`.
fn platform_rank(p: &Value, want: &str) -> Option<usize> {
    let mut w = want.split('/');
    let get = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
    let (os, arch, variant) = (w.next()?, w.next()?, w.next().unwrap_or(""));
    if os != get("os") || arch != get("architecture") {
        return None;
    }
    let have = normal_variant(arch, get("variant"));
    runnable_variants(arch, normal_variant(arch, variant))
        .iter()
        .position(|v| *v == have)
}

/// `variant` of `arch` as containerd normalizes it: amd64's `v1` and
/// arm64's `v8` are the plain architecture, a plain `arm` is `arm/v7`.
fn normal_variant<'a>(arch: &str, variant: &'a str) -> &'a str {
    match (arch, variant) {
        ("amd64", "v1") | ("arm64", "v8") => "",
        ("arm", "") => "v7",
        (_, v) => v,
    }
}

/// The (normalized) variants of `arch` a CPU of `variant` runs, best
/// first: itself, then the older amd64 levels down to the baseline, or
/// the older arm versions down to `v5`.
fn runnable_variants(arch: &str, variant: &str) -> Vec<String> {
    let mut out = vec![variant.to_owned()];
    let level = variant
        .strip_prefix('v')
        .and_then(|n| n.parse::<u32>().ok());
    match (arch, level) {
        ("amd64", Some(n)) => {
            out.extend((2..n.min(5)).rev().map(|k| format!("v{k}")));
            out.push(String::new());
        }
        ("arm", Some(n)) => out.extend((5..n.min(8)).rev().map(|k| format!("v{k}"))),
        _ => {}
    }
    out
}

impl Source {
    /// Opens `loc` for reading.
    pub fn open(loc: &Location, opts: &RegistryOptions) -> Result<Source, OciError> {
        Ok(match loc {
            Location::Registry(r) => {
                let scopes = vec![format!("repository:{}:pull", r.repo)];
                Source::Registry(Arc::new(client(r, opts, scopes)?), r.clone())
            }
            Location::Layout { dir, tag } => Source::Layout(dir.clone(), tag.clone()),
        })
    }

    fn layout_blob(dir: &Path, c: &Content) -> PathBuf {
        dir.join("blobs/sha256").join(c.id.to_hex())
    }

    /// A document (manifest, index, config) by descriptor, verified.
    fn document(&self, c: &Content, limit: u64, what: &str) -> Result<Vec<u8>, OciError> {
        match self {
            Source::Registry(client, _) => get_document(client, c, limit, what),
            Source::Layout(dir, _) => {
                let what = format!("{what} {}", c.digest());
                if c.size > limit {
                    return Err(OciError::TooLarge { what, limit });
                }
                let path = Self::layout_blob(dir, c);
                let bytes = super::push::read_limited(&path, limit)?;
                check(&bytes, c, &what)?;
                Ok(bytes)
            }
        }
    }

    /// The top manifest (or index) and its digest.
    fn top(&self) -> Result<(Vec<u8>, String), OciError> {
        match self {
            Source::Registry(client, r) => {
                let bytes = get_manifest(client, r)?;
                let digest = manifest::digest_of(&bytes);
                if let Some(want) = r.digest.as_ref().filter(|w| **w != digest) {
                    return Err(OciError::Digest {
                        what: format!("{r}: manifest"),
                        expected: want.clone(),
                        got: digest,
                    });
                }
                Ok((bytes, digest))
            }
            Source::Layout(dir, tag) => {
                let path = dir.join("index.json");
                let bytes = super::push::read_limited(&path, MANIFEST_LIMIT)?;
                let what = path.display().to_string();
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| OciError::invalid(&what, e.to_string()))?;
                let entries = v
                    .get("manifests")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let named = |e: &&Value| match tag {
                    None => true,
                    Some(t) => {
                        e.pointer(&format!("/annotations/{}", REF_NAME.replace('/', "~1")))
                            .and_then(Value::as_str)
                            == Some(t)
                    }
                };
                let found: Vec<&Value> = entries.iter().filter(named).collect();
                let one = match found.as_slice() {
                    [one] => *one,
                    [] => {
                        let why = match tag {
                            Some(t) => format!("no manifest tagged '{t}'"),
                            None => "no manifests".to_owned(),
                        };
                        return Err(OciError::invalid(what, why));
                    }
                    // Several: one per platform, an index to resolve.
                    many => {
                        let index = serde_json::json!({
                            "schemaVersion": 2,
                            "mediaType": MEDIA_INDEX,
                            "manifests": many,
                        });
                        let bytes = manifest::canonical_json(&index).into_bytes();
                        let digest = manifest::digest_of(&bytes);
                        return Ok((bytes, digest));
                    }
                };
                let c = descriptor(one, &what)?;
                let bytes = self.document(&c, MANIFEST_LIMIT, "manifest")?;
                Ok((bytes, c.digest()))
            }
        }
    }

    /// A manifest by digest, for an index entry.
    fn child(&self, c: &Content) -> Result<Vec<u8>, OciError> {
        match self {
            Source::Registry(client, r) => {
                let child = Reference {
                    digest: Some(c.digest()),
                    tag: None,
                    ..r.clone()
                };
                let bytes = get_manifest(client, &child)?;
                check(&bytes, c, &format!("manifest {}", c.digest()))?;
                Ok(bytes)
            }
            Source::Layout(..) => self.document(c, MANIFEST_LIMIT, "manifest"),
        }
    }

    /// Resolves the image for `platform` (`os/arch[/variant]`).
    pub fn resolve(&self, platform: &str) -> Result<SourceImage, OciError> {
        let (mut bytes, mut digest) = self.top()?;
        for _ in 0..2 {
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| OciError::invalid("source manifest", e.to_string()))?;
            let media = v.get("mediaType").and_then(Value::as_str).unwrap_or("");
            let is_index = media == MEDIA_INDEX
                || media == MEDIA_DOCKER_LIST
                || (media.is_empty() && v.get("manifests").is_some());
            if !is_index {
                return image(&v, media, digest);
            }
            let entries = v
                .get("manifests")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // The best fit; the first listed among equals.
            let hit = entries
                .iter()
                .filter_map(|e| Some((platform_rank(e.get("platform")?, platform)?, e)))
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, e)| e)
                .ok_or_else(|| {
                    OciError::invalid(
                        format!("index {digest}"),
                        format!("no manifest for platform {platform}"),
                    )
                })?;
            let c = descriptor(hit, "index entry")?;
            bytes = self.child(&c)?;
            digest = c.digest();
        }
        Err(OciError::invalid(
            format!("index {digest}"),
            "nested indexes",
        ))
    }

    /// The config's bytes, verified.
    pub fn config(&self, img: &SourceImage) -> Result<Vec<u8>, OciError> {
        let bytes = self.document(&img.config, CONFIG_LIMIT, "config")?;
        manifest::check_config(&bytes, &format!("config {}", img.config.digest()))?;
        Ok(bytes)
    }

    /// A layer's byte stream, unverified (wrap it in [`Verified`]).
    pub fn layer(&self, c: &Content) -> Result<Box<dyn Read + Send>, OciError> {
        match self {
            Source::Registry(client, _) => Ok(Box::new(RangeReader {
                client: client.clone(),
                c: *c,
                offset: 0,
                piece: Vec::new(),
                pos: 0,
            })),
            Source::Layout(dir, _) => {
                let p = Self::layout_blob(dir, c);
                let f = std::fs::File::open(&p).map_err(OciError::io(&p))?;
                Ok(Box::new(f))
            }
        }
    }
}

/// The image manifest `v` (of media type `media`) as a [`SourceImage`].
fn image(v: &Value, media: &str, digest: String) -> Result<SourceImage, OciError> {
    let what = format!("source manifest {digest}");
    let known = ["", super::manifest::MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST];
    if !known.contains(&media) {
        return Err(OciError::invalid(
            what,
            format!("unsupported media type {media}"),
        ));
    }
    if v.get("artifactType").and_then(Value::as_str) == Some(manifest::ARTIFACT_TYPE) {
        return Err(OciError::invalid(what, "already a rafs image"));
    }
    let config = descriptor(
        v.get("config").unwrap_or(&Value::Null),
        &format!("{what}: config"),
    )?;
    let mut layers = Vec::new();
    for (i, l) in v
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let lw = format!("{what}: layer {i}");
        let m = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
        if !LAYER_TYPES.contains(&m) {
            return Err(OciError::invalid(
                lw,
                format!("unsupported layer media type '{m}'"),
            ));
        }
        layers.push(descriptor(l, &lw)?);
    }
    if layers.is_empty() {
        return Err(OciError::invalid(what, "no layers"));
    }
    Ok(SourceImage {
        digest,
        config,
        layers,
    })
}

fn check(bytes: &[u8], c: &Content, what: &str) -> Result<(), OciError> {
    let got = Content::of(bytes);
    if got != *c {
        return Err(OciError::Digest {
            what: format!("{what} ({} bytes, expected {})", got.size, c.size),
            expected: c.digest(),
            got: got.digest(),
        });
    }
    Ok(())
}

/// A registry blob read by range requests, [`PIECE`] bytes at a time.
struct RangeReader {
    client: Arc<RegistryClient>,
    c: Content,
    offset: u64,
    piece: Vec<u8>,
    pos: usize,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.piece.len() {
            if self.offset >= self.c.size {
                return Ok(0);
            }
            let len = PIECE.min(self.c.size - self.offset);
            let url = self.client.blob_url(&self.c.id);
            let (id, off, http) = (self.c.id, self.offset, self.client.http());
            self.piece = self
                .client
                .with_auth(&id, &url, |h| http.get_range(&id, &url, h, off, len))
                .map_err(std::io::Error::other)?;
            self.pos = 0;
            self.offset += len;
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// At most this many unread bytes of a dropped layer stream are read to
/// complete its check.
const DRAIN_LIMIT: u64 = 4 << 20;

/// The verdict on one layer's bytes, filled when its stream ends or is
/// dropped: `None` until then.
pub type Verdict = Arc<Mutex<Option<Result<(), OciError>>>>;

/// A layer stream hashed as it is read. At its end (or when dropped
/// early: the rest is read and hashed) the size and sha256 are compared
/// with the descriptor and the result stored in the [`Verdict`]; a
/// mismatch seen at the end is also a read error.
pub struct Verified {
    inner: Box<dyn Read + Send>,
    want: Content,
    hasher: Sha256,
    read: u64,
    verdict: Verdict,
    name: String,
}

impl Verified {
    /// Wraps `inner`, the bytes of `want`.
    pub fn new(inner: Box<dyn Read + Send>, want: Content, name: String) -> (Verified, Verdict) {
        let verdict = Verdict::default();
        let v = Verified {
            inner,
            want,
            hasher: Sha256::new(),
            read: 0,
            verdict: verdict.clone(),
            name,
        };
        (v, verdict)
    }

    fn finish(&mut self) -> Result<(), OciError> {
        let got = BlobId(std::mem::take(&mut self.hasher).finalize().into());
        let ok = got == self.want.id && self.read == self.want.size;
        let res = if ok {
            Ok(())
        } else {
            Err(OciError::Digest {
                what: format!(
                    "{} ({} bytes, expected {})",
                    self.name, self.read, self.want.size
                ),
                expected: self.want.digest(),
                got: format!("sha256:{}", got.to_hex()),
            })
        };
        let mut slot = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        let mismatch = res.as_ref().err().map(|e| e.to_string());
        *slot = Some(res);
        match mismatch {
            Some(m) => Err(OciError::invalid(&self.name, m)),
            None => Ok(()),
        }
    }

    fn done(&self) -> bool {
        self.verdict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.want.size {
            let _ = self.finish();
            return Err(std::io::Error::other(format!(
                "{}: longer than its descriptor",
                self.name
            )));
        }
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            self.finish().map_err(std::io::Error::other)?;
        }
        Ok(n)
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        if self.done() {
            return;
        }
        // The tar reader may stop before the end (trailing padding, the
        // compressor's trailer): hash the rest so the check is complete.
        // A stream abandoned far from its end (the build failed) is left
        // unjudged rather than downloaded: the build's error stands.
        if self.want.size.saturating_sub(self.read) > DRAIN_LIMIT {
            return;
        }
        let mut buf = vec![0; 64 << 10];
        loop {
            match self.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if !self.done() {
            let _ = self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l = Location::parse("oci:/a/b:v1").unwrap();
        assert_eq!(
            l,
            Location::Layout {
                dir: "/a/b".into(),
                tag: Some("v1".into())
            }
        );
        let l = Location::parse("oci:rel/dir").unwrap();
        assert_eq!(
            l,
            Location::Layout {
                dir: "rel/dir".into(),
                tag: None
            }
        );
        assert!(matches!(
            Location::parse("docker://h:5000/r:t").unwrap(),
            Location::Registry(_)
        ));
        assert!(Location::parse("oci:").is_err());
        assert!(Location::parse("oci:/d:").is_err());
    }

    #[test]
    fn platforms() {
        let p = serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"});
        assert_eq!(platform_rank(&p, "linux/arm"), Some(0));
        assert_eq!(platform_rank(&p, "linux/arm/v7"), Some(0));
        assert_eq!(platform_rank(&p, "linux/arm/v8"), Some(1));
        assert_eq!(platform_rank(&p, "linux/arm/v6"), None);
        assert_eq!(platform_rank(&p, "linux/amd64"), None);
        let v3 = serde_json::json!({"os": "linux", "architecture": "amd64", "variant": "v3"});
        assert_eq!(platform_rank(&v3, "linux/amd64"), None);
        assert_eq!(platform_rank(&v3, "linux/amd64/v4"), Some(1));
        let plain = serde_json::json!({"os": "linux", "architecture": "amd64"});
        assert_eq!(platform_rank(&plain, "linux/amd64/v3"), Some(2));
        assert_eq!(platform_rank(&plain, "linux"), None);
    }

    fn verdict_of(data: &[u8], want: Content, read_all: bool) -> Result<(), OciError> {
        let (mut v, verdict) = Verified::new(
            Box::new(std::io::Cursor::new(data.to_vec())),
            want,
            "l".into(),
        );
        let mut out = Vec::new();
        if read_all {
            let _ = v.read_to_end(&mut out);
        } else {
            let _ = (&mut v).take(3).read_to_end(&mut out);
        }
        drop(v);
        let r = verdict.lock().unwrap().take().unwrap();
        r
    }

    #[test]
    fn verified_streams() {
        let good = Content::of(b"layer bytes");
        verdict_of(b"layer bytes", good, true).unwrap();
        verdict_of(b"layer bytes", good, false).unwrap();
        for bad in [&b"layer bytez"[..], b"layer", b"layer bytes and more"] {
            let e = verdict_of(bad, good, true).unwrap_err();
            assert!(matches!(e, OciError::Digest { .. }), "{e}");
            let e = verdict_of(bad, good, false).unwrap_err();
            assert!(matches!(e, OciError::Digest { .. }), "{e}");
        }
    }
}
