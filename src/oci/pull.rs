//! `rafs pull REF -o DIR [--blobs]`: fetches a rafs image's manifest,
//! config and bootstrap (and with `--blobs` its data blobs) for offline use,
//! verifying everything (`docs/IMAGE.md`, "Pulling").
//!
//! Nothing is written before the manifest, config and bootstrap have all
//! been checked; each file is written under a temporary name in `DIR`,
//! synced and renamed into place, so an error leaves no half-written
//! file. Blobs come first and the bootstrap last: a `DIR/bootstrap` means
//! the pull completed.

use super::manifest::{self, Content, RafsManifest, BOOTSTRAP_LIMIT, CONFIG_LIMIT, MANIFEST_LIMIT};
use super::{client, OciError, Reference, RegistryOptions};
use crate::backend::client::status_error;
use crate::backend::registry::session::RegistryClient;
use crate::backend::{BackendError, BlobId};
use indicatif::ProgressBar;
use rafs_format::Bootstrap;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The media types a manifest GET accepts (the others are fetched too, to
/// refuse them with a clear error).
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Blob bytes fetched per range request.
pub(crate) const PIECE: u64 = 8 << 20;

/// What to pull where.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The image.
    pub reference: Reference,
    /// The output directory (created if missing).
    pub out: PathBuf,
    /// Also fetch and verify the data blobs.
    pub blobs: bool,
    /// Show a progress bar of the blob downloads on stderr.
    pub progress: bool,
    /// How to reach the registry.
    pub registry: RegistryOptions,
}

/// What a pull fetched.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PullReport {
    /// The reference pulled.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// Data blobs the image has.
    pub blobs: usize,
    /// Data blobs written to `DIR/blobs`.
    pub blobs_fetched: usize,
}

/// A verified image, in memory.
pub struct Fetched {
    /// The manifest's bytes.
    pub manifest_bytes: Vec<u8>,
    /// Its digest.
    pub digest: String,
    /// What it names.
    pub manifest: RafsManifest,
    /// The config's bytes.
    pub config: Vec<u8>,
    /// The bootstrap's bytes, validated.
    pub bootstrap: Vec<u8>,
}

/// Pulls `opts.reference` into `opts.out`.
pub fn pull(opts: &PullOptions) -> Result<PullReport, OciError> {
    let client = client(&opts.reference, &opts.registry, Vec::new())?;
    let f = fetch(&client, &opts.reference)?;
    let out = &opts.out;
    let made_out = !out.exists();
    std::fs::create_dir_all(out).map_err(OciError::io(out))?;
    let mut fetched = 0;
    let res = if opts.blobs {
        let total = f.manifest.blobs.iter().map(|b| b.size).sum();
        let bar = super::transfer_bar(opts.progress, total, "pulling");
        let r = download_all(
            &client,
            &f.manifest.blobs,
            &out.join("blobs"),
            &bar,
            &mut fetched,
        );
        bar.finish_and_clear();
        r
    } else {
        Ok(())
    };
    if let Err(e) = res {
        // Leave no directory this pull made and filled with nothing.
        let _ = std::fs::remove_dir(out.join("blobs"));
        if made_out {
            let _ = std::fs::remove_dir(out);
        }
        return Err(e);
    }
    write_atomic(out, "manifest.json", &f.manifest_bytes)?;
    write_atomic(out, "config.json", &f.config)?;
    write_atomic(out, "bootstrap", &f.bootstrap)?;
    Ok(PullReport {
        reference: opts.reference.to_string(),
        digest: f.digest,
        blobs: f.manifest.blobs.len(),
        blobs_fetched: fetched,
    })
}

/// The rafs manifest of `r`: its bytes, its digest (checked against the
/// reference's, if it names one) and its parsed form.
pub(crate) fn rafs_manifest(
    client: &RegistryClient,
    r: &Reference,
) -> Result<(Vec<u8>, String, RafsManifest), OciError> {
    let name = r.to_string();
    let manifest_bytes = get_manifest(client, r)?;
    let digest = manifest::digest_of(&manifest_bytes);
    if let Some(want) = &r.digest {
        if *want != digest {
            return Err(OciError::Digest {
                what: format!("{name}: manifest"),
                expected: want.clone(),
                got: digest,
            });
        }
    }
    let m = RafsManifest::parse(&manifest_bytes, &name)?;
    Ok((manifest_bytes, digest, m))
}

/// Fetches and verifies the manifest, config and bootstrap of `r`.
pub fn fetch(client: &RegistryClient, r: &Reference) -> Result<Fetched, OciError> {
    let name = r.to_string();
    let (manifest_bytes, digest, m) = rafs_manifest(client, r)?;
    let config = get_document(client, &m.config, CONFIG_LIMIT, "config")?;
    manifest::check_config(&config, &format!("{name}: config"))?;
    let bootstrap = get_document(client, &m.bootstrap, BOOTSTRAP_LIMIT, "bootstrap")?;
    check_bootstrap(&bootstrap, &m, &name)?;
    Ok(Fetched {
        manifest_bytes,
        digest,
        manifest: m,
        config,
        bootstrap,
    })
}

/// The bootstrap is valid and its blob table is the manifest's blob
/// layers: same ids, same sizes, same order.
pub(crate) fn check_bootstrap(bytes: &[u8], m: &RafsManifest, name: &str) -> Result<(), OciError> {
    let what = || format!("{name}: bootstrap {}", m.bootstrap.digest());
    let b = Bootstrap::open(bytes).map_err(|e| OciError::invalid(what(), e.to_string()))?;
    let table = Content::blob_table(&b);
    if table != m.blobs {
        let why = format!(
            "its blob table ({} blobs) differs from the manifest's {} blob layers",
            table.len(),
            m.blobs.len()
        );
        return Err(OciError::invalid(what(), why));
    }
    Ok(())
}

/// GETs `r`'s manifest (at most [`MANIFEST_LIMIT`] bytes).
pub(crate) fn get_manifest(client: &RegistryClient, r: &Reference) -> Result<Vec<u8>, OciError> {
    let url = client.url(&format!("manifests/{}", r.manifest_key()));
    // Errors name the manifest; there is no blob id yet.
    let id = BlobId([0; 32]);
    let http = client.http();
    let headers = [("Accept", ACCEPT)];
    let res = client.with_auth(&id, &url, |auth| {
        let mut all = auth.to_vec();
        all.extend_from_slice(&headers);
        let raw = http.get(&id, &url, &all, MANIFEST_LIMIT)?;
        match raw.status.as_u16() {
            200 => Ok(raw.body),
            _ => Err(status_error(&id, &url, &raw)),
        }
    });
    match res {
        Ok(b) => Ok(b),
        Err(BackendError::NotFound(_)) => Err(OciError::ManifestUnknown(r.to_string())),
        Err(BackendError::ShortBody { .. }) => Err(OciError::TooLarge {
            what: format!("{r}: manifest"),
            limit: MANIFEST_LIMIT,
        }),
        Err(e) => Err(OciError::registry(format!("{r}: manifest"))(e)),
    }
}

/// GETs blob `c` whole (a config or a bootstrap) and checks its size and
/// digest.
pub(crate) fn get_document(
    client: &RegistryClient,
    c: &Content,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let what = format!("{what} {}", c.digest());
    if c.size > limit {
        return Err(OciError::TooLarge { what, limit });
    }
    let url = client.blob_url(&c.id);
    let http = client.http();
    let body = client
        .with_auth(&c.id, &url, |auth| {
            let raw = http.get(&c.id, &url, auth, c.size + 1)?;
            match raw.status.as_u16() {
                200 => Ok(raw.body),
                _ => Err(status_error(&c.id, &url, &raw)),
            }
        })
        .map_err(|e| match e {
            BackendError::ShortBody { .. } => OciError::invalid(
                what.clone(),
                format!(
                    "the registry serves more than the manifest's {} bytes",
                    c.size
                ),
            ),
            e => OciError::registry(what.clone())(e),
        })?;
    verify(&body, c, &what)?;
    Ok(body)
}

pub(crate) fn verify(bytes: &[u8], c: &Content, what: &str) -> Result<(), OciError> {
    let got = Content::of(bytes);
    if got.size != c.size {
        let why = format!("{} bytes, the manifest says {}", got.size, c.size);
        return Err(OciError::invalid(what, why));
    }
    if got.id != c.id {
        return Err(OciError::Digest {
            what: what.to_owned(),
            expected: c.digest(),
            got: got.digest(),
        });
    }
    Ok(())
}

/// Downloads `blobs` into `dir` (created), counting them in `fetched`.
fn download_all(
    client: &RegistryClient,
    blobs: &[Content],
    dir: &Path,
    bar: &ProgressBar,
    fetched: &mut usize,
) -> Result<(), OciError> {
    std::fs::create_dir_all(dir).map_err(OciError::io(dir))?;
    for c in blobs {
        download(client, c, dir, bar)?;
        *fetched += 1;
    }
    Ok(())
}

/// Downloads data blob `c` into `dir/<hex>`, verified, by range requests.
pub(crate) fn download(
    client: &RegistryClient,
    c: &Content,
    dir: &Path,
    bar: &ProgressBar,
) -> Result<(), OciError> {
    let hex = c.id.to_hex();
    let tmp = dir.join(format!(".{hex}.part"));
    let res = download_to(client, c, &tmp, bar);
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return res;
    }
    let dest = dir.join(&hex);
    std::fs::rename(&tmp, &dest).map_err(OciError::io(&dest))
}

fn download_to(
    client: &RegistryClient,
    c: &Content,
    tmp: &Path,
    bar: &ProgressBar,
) -> Result<(), OciError> {
    let what = format!("blob {}", c.digest());
    let mut f = std::fs::File::create(tmp).map_err(OciError::io(tmp))?;
    let url = client.blob_url(&c.id);
    let http = client.http();
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < c.size {
        let len = PIECE.min(c.size - offset);
        let piece = client
            .with_auth(&c.id, &url, |h| http.get_range(&c.id, &url, h, offset, len))
            .map_err(OciError::registry(what.clone()))?;
        hasher.update(&piece);
        f.write_all(&piece).map_err(OciError::io(tmp))?;
        offset += len;
        bar.inc(len);
    }
    let got = BlobId(hasher.finalize().into());
    if got != c.id {
        return Err(OciError::Digest {
            what,
            expected: c.digest(),
            got: format!("sha256:{}", got.to_hex()),
        });
    }
    f.sync_all().map_err(OciError::io(tmp))
}

/// Writes `dir/name` through a synced temporary file and a rename.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), OciError> {
    let tmp = dir.join(format!(".{name}.part"));
    let dest = dir.join(name);
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &dest));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(OciError::io(dest)(e));
    }
    Ok(())
}
