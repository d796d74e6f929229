//! `rafs push OUTDIR REF`: publishes a `rafs create` output as a rafs image
//! (`docs/IMAGE.md`).
//!
//! Order, so that nothing a reader can reach is ever incomplete:
//! 1. everything is read and checked locally, and the manifest built,
//!    before any request;
//! 2. the data blobs, in parallel: HEAD (present at its full size: skip),
//!    else a cross-repository mount (`--mount-from`), else an upload (POST,
//!    then one PUT `?digest=`); after an upload or mount a HEAD must report
//!    the full size (registries have answered 201 while a concurrent upload
//!    of the same digest left the blob missing or short);
//! 3. the bootstrap and the config, the same way;
//! 4. the manifest by digest, and only then the tag.
//!
//! An interrupted push leaves at most unreferenced blobs and abandoned
//! upload sessions, which a later push skips or ignores; two pushes of
//! the same image write the same bytes under the same names.

use super::blobs_from::{BlobsFrom, Origin, Sources};
use super::manifest::{self, Content, RafsManifest, CONFIG_LIMIT, MEDIA_MANIFEST};
use super::{client, OciError, Reference, RegistryOptions};
use crate::backend::client::{origin, status_error, Raw, SendData};
use crate::backend::registry::auth::query_escape;
use crate::backend::registry::session::RegistryClient;
use crate::backend::{BackendError, BlobId};
use rafs_format::Bootstrap;
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What to push where.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// A `rafs create` output directory (`bootstrap`, `blobs/<hex>`).
    pub outdir: PathBuf,
    /// Where to.
    pub reference: Reference,
    /// The source image's config to carry over (else a minimal one).
    pub config: Option<PathBuf>,
    /// The source image's manifest digest, for the annotation.
    pub source_digest: Option<String>,
    /// A repository of the same registry to mount missing blobs from.
    pub mount_from: Option<String>,
    /// Where to find blobs the bootstrap names that are not in `outdir`
    /// (a chunk dictionary's): see [`super::blobs_from`].
    pub blobs_from: Vec<BlobsFrom>,
    /// Blob uploads at once.
    pub jobs: usize,
    /// Show a progress bar (bytes of blobs made present) on stderr.
    pub progress: bool,
    /// How to reach the registry.
    pub registry: RegistryOptions,
}

/// What a push did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PushReport {
    /// The reference pushed to.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// Blobs (data, bootstrap, config) uploaded.
    pub uploaded: usize,
    /// Blobs mounted from `--mount-from`.
    pub mounted: usize,
    /// Blobs already present.
    pub skipped: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Blobs copied from a registry source of `blobs_from` (another
    /// registry, or one that would not mount them).
    pub copied: usize,
    /// Bytes copied.
    pub bytes_copied: u64,
}

/// How a blob got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Skipped,
    Mounted,
    Uploaded,
    Copied,
}

/// What a cross-repository mount request did.
enum Mount {
    /// The blob is mounted.
    Done,
    /// The registry opened an upload session at this URL instead.
    Upload(String),
}

/// Where a blob's bytes come from.
enum Source<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

/// The checked local image.
struct Local {
    bootstrap: Vec<u8>,
    blobs: Vec<(Content, Origin)>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, OciError> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut buf))
        .map_err(OciError::io(path))?;
    if buf.len() as u64 > limit {
        return Err(OciError::TooLarge {
            what: path.display().to_string(),
            limit,
        });
    }
    Ok(buf)
}

/// Reads and checks `opts.outdir`, locates every blob (in `outdir` or in
/// `sources`) and builds the manifest.
fn read_local(opts: &PushOptions, sources: &Sources) -> Result<Local, OciError> {
    let bpath = opts.outdir.join("bootstrap");
    let bootstrap = read_limited(&bpath, manifest::BOOTSTRAP_LIMIT)?;
    let boot = Bootstrap::open(&bootstrap)
        .map_err(|e| OciError::invalid(bpath.display().to_string(), e.to_string()))?;
    let mut blobs = Vec::new();
    for c in Content::blob_table(&boot) {
        blobs.push((c, sources.locate(&opts.outdir, &c)?));
    }
    let config = match &opts.config {
        Some(p) => {
            let bytes = read_limited(p, CONFIG_LIMIT)?;
            manifest::check_config(&bytes, &p.display().to_string())?;
            bytes
        }
        None => manifest::minimal_config(),
    };
    if let Some(d) = &opts.source_digest {
        super::reference::check_digest(d)
            .map_err(|why| OciError::invalid(format!("--source-digest {d}"), why))?;
    }
    let m = RafsManifest {
        blobs: blobs.iter().map(|(c, _)| *c).collect(),
        bootstrap: Content::of(&bootstrap),
        config: Content::of(&config),
        source: opts.source_digest.clone(),
    };
    let manifest = m.to_bytes()?;
    Ok(Local {
        bootstrap,
        blobs,
        config,
        manifest,
    })
}

/// Publishes `opts.outdir` at `opts.reference`.
pub fn push(opts: &PushOptions) -> Result<PushReport, OciError> {
    let sources = Sources::open(&opts.blobs_from, &opts.registry)?;
    let local = read_local(opts, &sources)?;
    let digest = manifest::digest_of(&local.manifest);
    let r = &opts.reference;
    if let Some(want) = &r.digest {
        if *want != digest {
            return Err(OciError::Digest {
                what: format!("{r}: the image's manifest"),
                expected: want.clone(),
                got: digest,
            });
        }
    }
    let mut mount_repos = sources.same_registry_repos(r);
    mount_repos.extend(opts.mount_from.iter().cloned());
    let mut scopes = vec![format!("repository:{}:pull,push", r.repo)];
    scopes.extend(mount_repos.iter().map(|m| format!("repository:{m}:pull")));
    let client = client(r, &opts.registry, scopes)?;
    let copies = super::TempDir::new("push")?;
    let pusher = Pusher {
        client: &client,
        mount_from: opts.mount_from.as_deref(),
        sources: &sources,
        copies: &copies.0,
        dest: r,
        bar: super::transfer_bar(opts.progress, 0, "pushing"),
    };
    let mut report = PushReport {
        reference: r.to_string(),
        digest: digest.clone(),
        ..PushReport::default()
    };
    let total = local.blobs.iter().map(|(c, _)| c.size).sum();
    pusher.bar.set_length(total);
    let outcomes = pusher.blobs_in_parallel(&local.blobs, opts.jobs.max(1));
    pusher.bar.finish_and_clear();
    let outcomes = outcomes?;
    let extra = [
        (
            Content::of(&local.bootstrap),
            Source::Bytes(&local.bootstrap),
        ),
        (Content::of(&local.config), Source::Bytes(&local.config)),
    ];
    let mut all: Vec<(Content, Outcome)> = outcomes;
    for (c, src) in &extra {
        all.push((*c, pusher.ensure(c, src)?));
    }
    for (c, o) in all {
        match o {
            Outcome::Skipped => report.skipped += 1,
            Outcome::Mounted => report.mounted += 1,
            Outcome::Uploaded => {
                report.uploaded += 1;
                report.bytes_uploaded += c.size;
            }
            Outcome::Copied => {
                report.copied += 1;
                report.bytes_copied += c.size;
            }
        }
    }
    // A concurrent push of the same blobs can leave one missing after our
    // check said it was there (distribution 2.x replaces a blob's link when
    // a second upload of it commits): the registry then refuses the
    // manifest with MANIFEST_BLOB_UNKNOWN. Make sure of every blob again and
    // retry, a few times.
    let mut tries = 0;
    while !pusher.put_manifest(&digest, &local.manifest, tries < 3)? {
        tries += 1;
        tracing::info!("{r}: the registry lost a blob; checking them again");
        pusher.blobs_in_parallel(&local.blobs, opts.jobs.max(1))?;
        for (c, src) in &extra {
            pusher.ensure(c, src)?;
        }
    }
    if let Some(tag) = &r.tag {
        pusher.put_manifest(tag, &local.manifest, false)?;
    }
    Ok(report)
}

/// Check-and-upload attempts per blob at most.
const ENSURE_ATTEMPTS: u32 = 5;

/// Whether a failed check-and-upload is worth starting over.
fn retryable(e: &OciError) -> bool {
    match e {
        OciError::Registry { source, .. } => source.is_transient(),
        OciError::NotServed { .. } => true,
        _ => false,
    }
}

/// The push's requests.
struct Pusher<'a> {
    client: &'a RegistryClient,
    mount_from: Option<&'a str>,
    /// Where blobs not in the build output are.
    sources: &'a Sources,
    /// Where blobs copied from another registry are staged.
    copies: &'a Path,
    /// The destination.
    dest: &'a Reference,
    /// Bytes of data blobs made present so far.
    bar: indicatif::ProgressBar,
}

impl Pusher<'_> {
    /// Write errors: a refusal is [`OciError::PushDenied`].
    fn denied(&self, what: String) -> impl FnOnce(BackendError) -> OciError + '_ {
        move |e| match e {
            BackendError::Auth { detail, .. } => OciError::PushDenied {
                repo: self.client.repo().to_owned(),
                detail,
            },
            source => OciError::Registry { what, source },
        }
    }

    /// One request with the session's auth; 401/403 come back as
    /// [`BackendError::Auth`] (so the session can renew and retry), any
    /// other status as is.
    fn send(
        &self,
        id: &BlobId,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &dyn Fn() -> Result<SendData, BackendError>,
    ) -> Result<Raw, BackendError> {
        let probe = self.client.blob_url(id);
        let http = self.client.http();
        // An upload Location on another server does not get the registry's
        // credentials.
        let own = origin(url) == origin(self.client.origin_url());
        self.client.with_auth(id, &probe, |auth| {
            let mut all = if own { auth.to_vec() } else { Vec::new() };
            all.extend_from_slice(headers);
            let raw = http.request(id, method, url, &all, body()?, 64 << 10)?;
            match raw.status.as_u16() {
                401 | 403 => Err(status_error(id, url, &raw)),
                _ => Ok(raw),
            }
        })
    }

    /// The size the registry serves blob `c` at, `None` if absent.
    fn served(&self, c: &Content) -> Result<Option<u64>, OciError> {
        let url = self.client.blob_url(&c.id);
        let what = || format!("HEAD blob {}", c.digest());
        let raw = self
            .send(&c.id, "HEAD", &url, &[], &|| Ok(SendData::Empty))
            .map_err(OciError::registry(what()))?;
        let len = raw
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        match raw.status.as_u16() {
            200 => Ok(len),
            404 => Ok(None),
            307 | 302 | 303 | 301 | 308 => {
                let http = self.client.http();
                let size = self
                    .client
                    .with_auth(&c.id, &url, |h| http.size_of(&c.id, &url, h));
                match size {
                    Ok(s) => Ok(Some(s)),
                    Err(BackendError::NotFound(_)) => Ok(None),
                    Err(e) => Err(OciError::registry(what())(e)),
                }
            }
            _ => Err(OciError::registry(what())(status_error(&c.id, &url, &raw))),
        }
    }

    /// Pushes the data blobs, `jobs` at a time.
    fn blobs_in_parallel(
        &self,
        blobs: &[(Content, Origin)],
        jobs: usize,
    ) -> Result<Vec<(Content, Outcome)>, OciError> {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Outcome, OciError>>>> =
            Mutex::new((0..blobs.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..jobs.min(blobs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((c, origin)) = blobs.get(i) else {
                        break;
                    };
                    let r = match origin {
                        Origin::File(path) => self.ensure(c, &Source::File(path)),
                        Origin::Image(src) => self.ensure_from(c, *src),
                    };
                    let failed = r.is_err();
                    self.bar.inc(c.size);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    if failed {
                        // The others stop at their next blob.
                        next.store(blobs.len(), Ordering::Relaxed);
                        break;
                    }
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(blobs.len());
        for ((c, _), r) in blobs.iter().zip(results) {
            if let Some(r) = r {
                out.push((*c, r?));
            }
        }
        if out.len() != blobs.len() {
            // Only a failure stops the workers early, and it returned above.
            return Err(OciError::invalid("push", "a blob upload did not run"));
        }
        Ok(out)
    }

    /// Makes the registry serve `c` at its full size. A transient failure
    /// (a 5xx or 429, a reset, or a blob the registry accepted but does not
    /// serve in full: concurrent uploads of one digest can do that) starts
    /// the whole check-and-upload over, a few times, with back-off.
    fn ensure(&self, c: &Content, src: &Source<'_>) -> Result<Outcome, OciError> {
        let mut attempt = 1;
        loop {
            match self.ensure_once(c, src) {
                Err(e) if attempt < ENSURE_ATTEMPTS && retryable(&e) => {
                    tracing::debug!(digest = %c.digest(), attempt, "retrying: {e}");
                    let wait = crate::fetch::pace::backoff(
                        std::time::Duration::from_millis(50),
                        std::time::Duration::from_secs(1),
                        attempt,
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One check-and-upload of `c` (see [`Pusher::ensure`]).
    fn ensure_once(&self, c: &Content, src: &Source<'_>) -> Result<Outcome, OciError> {
        if self.served(c)? == Some(c.size) {
            return Ok(Outcome::Skipped);
        }
        let digest = c.digest();
        let uploads = self.client.url("blobs/uploads/");
        let mut location = None;
        if let Some(from) = self.mount_from {
            match self.try_mount(c, from)? {
                Mount::Done => return self.verify(c, Outcome::Mounted),
                Mount::Upload(l) => location = Some(l),
            }
        }
        let location = match location {
            Some(l) => l,
            None => self.start_upload(c, &uploads)?,
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", query_escape(&digest));
        let body = || -> Result<SendData, BackendError> {
            Ok(match src {
                Source::Bytes(b) => SendData::Bytes(b.to_vec()),
                Source::File(p) => {
                    let f = std::fs::File::open(p)
                        .map_err(|source| BackendError::Io { blob: c.id, source })?;
                    SendData::Reader(Box::new(f), c.size)
                }
            })
        };
        let headers = [("Content-Type", "application/octet-stream")];
        let raw = self
            .send(&c.id, "PUT", &url, &headers, &body)
            .map_err(self.denied(format!("uploading blob {digest}")))?;
        if raw.status.as_u16() != 201 {
            let e = status_error(&c.id, &url, &raw);
            return Err(OciError::registry(format!("uploading blob {digest}"))(e));
        }
        self.verify(c, Outcome::Uploaded)
    }

    /// A cross-repository mount of `c` from repository `from`: done, or
    /// the upload session the registry opened instead.
    fn try_mount(&self, c: &Content, from: &str) -> Result<Mount, OciError> {
        let digest = c.digest();
        let uploads = self.client.url("blobs/uploads/");
        let url = format!(
            "{uploads}?mount={}&from={}",
            query_escape(&digest),
            query_escape(from)
        );
        let raw = self
            .send(&c.id, "POST", &url, &[], &|| Ok(SendData::Empty))
            .map_err(self.denied(format!("mounting blob {digest} from {from}")))?;
        match raw.status.as_u16() {
            201 => Ok(Mount::Done),
            202 => Ok(Mount::Upload(self.location(&raw, &url)?)),
            _ => {
                let e = status_error(&c.id, &url, &raw);
                Err(OciError::registry(format!("mounting blob {digest}"))(e))
            }
        }
    }

    /// Makes the registry serve `c`, a blob of registry source `src`:
    /// present: skip; on the same registry: a cross-repository mount;
    /// else (or if the registry would not mount it) a copy, downloaded and
    /// verified into a staging file, then uploaded.
    fn ensure_from(&self, c: &Content, src: usize) -> Result<Outcome, OciError> {
        if self.served(c)? == Some(c.size) {
            return Ok(Outcome::Skipped);
        }
        let source = self
            .sources
            .images
            .get(src)
            .ok_or_else(|| OciError::invalid("push", "no such blob source"))?;
        if let Some(from) = source.mount_repo_for(self.dest) {
            if let Mount::Done = self.try_mount(c, from)? {
                return self.verify(c, Outcome::Mounted);
            }
        }
        let path = self.sources.download(src, c, self.copies)?;
        let res = self.ensure(c, &Source::File(&path));
        let _ = std::fs::remove_file(&path);
        match res? {
            Outcome::Uploaded => Ok(Outcome::Copied),
            other => Ok(other),
        }
    }

    /// POSTs a new upload session and returns its URL.
    fn start_upload(&self, c: &Content, uploads: &str) -> Result<String, OciError> {
        let what = || format!("starting the upload of blob {}", c.digest());
        let raw = self
            .send(&c.id, "POST", uploads, &[], &|| Ok(SendData::Empty))
            .map_err(self.denied(what()))?;
        if raw.status.as_u16() != 202 {
            let e = status_error(&c.id, uploads, &raw);
            return Err(OciError::registry(what())(e));
        }
        self.location(&raw, uploads)
    }

    /// The absolute URL of `raw`'s `Location`.
    fn location(&self, raw: &Raw, url: &str) -> Result<String, OciError> {
        let loc = raw
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::invalid(url, "the registry gave no upload Location"))?;
        if loc.starts_with('/') {
            return Ok(format!("{}{loc}", self.client.origin_url()));
        }
        let lower = loc.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(loc.to_owned());
        }
        Err(OciError::invalid(url, format!("upload Location '{loc}'")))
    }

    /// Requires the registry to serve `c` in full after an upload/mount.
    fn verify(&self, c: &Content, done: Outcome) -> Result<Outcome, OciError> {
        match self.served(c)? {
            Some(s) if s == c.size => Ok(done),
            other => Err(OciError::NotServed {
                digest: c.digest(),
                size: c.size,
                served: other.unwrap_or(0),
            }),
        }
    }

    /// PUTs the manifest under `key` (its digest, or a tag). With
    /// `retry_unknown`, a refusal because a blob is unknown returns
    /// `Ok(false)` (check the blobs and try again) instead of an error.
    fn put_manifest(&self, key: &str, bytes: &[u8], retry_unknown: bool) -> Result<bool, OciError> {
        let id = Content::of(bytes).id;
        let url = self.client.url(&format!("manifests/{key}"));
        let owned = bytes.to_vec();
        let body = || Ok(SendData::Bytes(owned.clone()));
        let what = format!("putting the manifest as {key}");
        let raw = self
            .send(&id, "PUT", &url, &[("Content-Type", MEDIA_MANIFEST)], &body)
            .map_err(self.denied(what.clone()))?;
        if raw.status.as_u16() != 201 {
            let detail = String::from_utf8_lossy(&raw.body[..raw.body.len().min(300)]);
            if retry_unknown && detail.contains("MANIFEST_BLOB_UNKNOWN") {
                return Ok(false);
            }
            let why = format!("HTTP {}: {}", raw.status.as_u16(), detail.trim());
            return Err(OciError::invalid(what, why));
        }
        Ok(true)
    }
}
