//! `rafs convert SRC DST`: a plain container image (registry or OCI
//! layout, [`super::source`]) to a rafs image (`docs/IMAGE.md`).
//!
//! 1. The source manifest (an index is resolved to `--platform`) and its
//!    config are read with size limits and digest checks.
//! 2. Each layer blob streams, bottom first, into
//!    [`crate::builder::build_layers`] (one blob per layer) through a
//!    [`Verified`] reader: its sha256 is computed as it streams and
//!    checked at its end; any mismatch fails the convert before anything
//!    is written to the destination.
//! 3. The build output (a temporary directory) is published: to a
//!    registry with [`super::push::push`] (the source config carried over
//!    byte for byte, the source manifest digest as annotation), or into an
//!    OCI layout (blobs, manifest, `index.json`, `oci-layout`).
//!
//! The build is a pure function of the layers and options, so the same
//! source gives the same manifest digest.

use super::blobs_from::{BlobsFrom, Origin, Sources};
use super::manifest::{self, Content, RafsManifest, MEDIA_MANIFEST};
use super::pull::write_atomic;
use super::push::{self, PushOptions, PushReport};
use super::source::{Location, Source, SourceImage, Verdict, Verified, REF_NAME};
use super::{OciError, RegistryOptions};
use crate::builder::{self, error::BuildError, layers::LayerInput};
use rafs_format::Bootstrap;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What to convert where.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The plain image.
    pub source: Location,
    /// Where the rafs image goes.
    pub dest: Location,
    /// `os/arch[/variant]` to pick from an index [default: this machine's].
    pub platform: Option<String>,
    /// Build options (`output` is replaced by a temporary directory).
    pub build: builder::Options,
    /// A chunk dictionary: chunks it has are not stored again, and its
    /// blobs the new image uses are put in the destination too.
    pub chunk_dict: Option<ChunkDict>,
    /// Blob uploads at once.
    pub jobs: usize,
    /// How to reach the registries.
    pub registry: RegistryOptions,
}

/// A chunk dictionary for `rafs convert --chunk-dict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkDict {
    /// A local bootstrap; its blobs are looked for beside it
    /// (`DIR/blobs/<hex>`, the `rafs create` layout).
    Bootstrap(PathBuf),
    /// A rafs image in a registry (e.g. the previous version).
    Image(super::Reference),
}

impl ChunkDict {
    /// `docker://REF` is an image, anything else a bootstrap path (kept
    /// as given: a path need not be UTF-8).
    pub fn from_arg(arg: PathBuf) -> Result<ChunkDict, OciError> {
        match arg.to_str().map(BlobsFrom::parse).transpose()? {
            Some(BlobsFrom::Image(r)) => Ok(ChunkDict::Image(r)),
            _ => Ok(ChunkDict::Bootstrap(arg)),
        }
    }
}

/// What a convert did.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// The source.
    pub source: String,
    /// The source image manifest's digest.
    pub source_digest: String,
    /// The destination.
    pub destination: String,
    /// The rafs manifest's digest.
    pub digest: String,
    /// Source layers read.
    pub layers: usize,
    /// Data blobs of the rafs image.
    pub blobs: usize,
    /// The push, for a registry destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<PushReport>,
}

/// Why a convert failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the source or writing the destination.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// Building the rafs image.
    #[error("building the rafs image: {0}")]
    Build(#[from] BuildError),
}

/// Converts `opts.source` to a rafs image at `opts.dest`.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertReport, ConvertError> {
    let src = Source::open(&opts.source, &opts.registry)?;
    let platform = opts
        .platform
        .clone()
        .unwrap_or_else(super::source::host_platform);
    let img = src.resolve(&platform)?;
    let config = src.config(&img)?;
    let tmp = super::TempDir::new("convert")?;
    let out = tmp.0.join("out");
    let mut bopts = opts.build.clone();
    bopts.output = out.clone();
    let blobs_from = use_dict(opts, &tmp.0, &mut bopts)?;
    build_checked(&src, &img, &bopts)?;
    let cfg_path = tmp.0.join("config.json");
    std::fs::write(&cfg_path, &config).map_err(OciError::io(&cfg_path))?;
    let mut report = ConvertReport {
        source: opts.source.to_string(),
        source_digest: img.digest.clone(),
        destination: opts.dest.to_string(),
        digest: String::new(),
        layers: img.layers.len(),
        blobs: 0,
        push: None,
    };
    match &opts.dest {
        Location::Registry(r) => {
            let p = push::push(&PushOptions {
                outdir: out.clone(),
                reference: r.clone(),
                config: Some(cfg_path),
                source_digest: Some(img.digest.clone()),
                mount_from: None,
                blobs_from,
                jobs: opts.jobs,
                progress: opts.build.progress,
                registry: opts.registry.clone(),
            })?;
            report.digest = p.digest.clone();
            report.push = Some(p);
        }
        Location::Layout { dir, tag } => {
            let sources = Sources::open(&blobs_from, &opts.registry)?;
            let layout = Layout {
                dir,
                tag: tag.as_deref(),
            };
            report.digest = write_layout(&out, &sources, &config, &img.digest, &layout)?;
        }
    }
    report.blobs = std::fs::read_dir(out.join("blobs")).map_or(0, |d| d.count());
    Ok(report)
}

/// Builds `img`'s layers with `bopts`, each layer's digest checked as it is
/// read: a bad layer fails the build as such, and so does a layer the build
/// did not read to its end (its digest then was never checked).
fn build_checked(
    src: &Source,
    img: &SourceImage,
    bopts: &builder::Options,
) -> Result<(), ConvertError> {
    let mut verdicts: Vec<Verdict> = Vec::new();
    let built = {
        let inputs = img.layers.iter().map(|c| {
            // Stop at the first layer found bad (its verdict is reported).
            if let Some(last) = verdicts.last() {
                if let Some(Err(e)) = &*last.lock().unwrap_or_else(|e| e.into_inner()) {
                    return Err(BuildError::BadOptions(e.to_string()));
                }
            }
            let name = format!("layer {}", c.digest());
            let raw = src
                .layer(c)
                .map_err(|e| BuildError::BadOptions(e.to_string()))?;
            let (stream, verdict) = Verified::new(raw, *c, name.clone());
            verdicts.push(verdict);
            Ok(LayerInput {
                name,
                stream: Box::new(stream),
            })
        });
        builder::build_layers(bopts, inputs)
    };
    // A bad layer is reported as such, whatever the build made of it.
    for v in &verdicts {
        let mut slot = v.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*slot, Some(Err(_))) {
            if let Some(Err(e)) = slot.take() {
                return Err(e.into());
            }
        }
    }
    built?;
    let checked = verdicts
        .iter()
        .filter(|v| matches!(*v.lock().unwrap_or_else(|e| e.into_inner()), Some(Ok(()))))
        .count();
    if verdicts.len() != img.layers.len() || checked != verdicts.len() {
        let why = "a layer was not read to its end, so its digest was not checked";
        return Err(OciError::invalid("convert", why).into());
    }
    Ok(())
}

/// Points the build at `opts.chunk_dict` (a registry image's bootstrap is
/// fetched, verified, into `tmp`) and returns where its blobs are.
fn use_dict(
    opts: &ConvertOptions,
    tmp: &Path,
    bopts: &mut builder::Options,
) -> Result<Vec<BlobsFrom>, OciError> {
    match &opts.chunk_dict {
        None => Ok(Vec::new()),
        Some(ChunkDict::Bootstrap(p)) => {
            bopts.chunk_dict = Some(p.clone());
            let dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
            Ok(vec![BlobsFrom::Dir(dir)])
        }
        Some(ChunkDict::Image(r)) => {
            let c = super::client(
                r,
                &opts.registry,
                vec![format!("repository:{}:pull", r.repo)],
            )?;
            let f = super::pull::fetch(&c, r)?;
            let path = tmp.join("dict.bootstrap");
            std::fs::write(&path, &f.bootstrap).map_err(OciError::io(&path))?;
            bopts.chunk_dict = Some(path);
            // Its blobs come from the very manifest whose bootstrap this is.
            let mut pinned = r.clone();
            pinned.digest = Some(f.digest);
            Ok(vec![BlobsFrom::Image(pinned)])
        }
    }
}

/// An OCI layout destination.
struct Layout<'a> {
    dir: &'a Path,
    tag: Option<&'a str>,
}

/// Writes the build output `out` as a rafs image into the layout (blobs
/// not in `out` come from `sources`); returns the manifest digest.
fn write_layout(
    out: &Path,
    sources: &Sources,
    config: &[u8],
    source: &str,
    layout: &Layout<'_>,
) -> Result<String, OciError> {
    let (dir, tag) = (layout.dir, layout.tag);
    let bpath = out.join("bootstrap");
    let bootstrap = push::read_limited(&bpath, manifest::BOOTSTRAP_LIMIT)?;
    let boot = Bootstrap::open(&bootstrap)
        .map_err(|e| OciError::invalid(bpath.display().to_string(), e.to_string()))?;
    let blobs = Content::blob_table(&boot);
    let m = RafsManifest {
        blobs: blobs.clone(),
        bootstrap: Content::of(&bootstrap),
        config: Content::of(config),
        source: Some(source.to_owned()),
    };
    let mbytes = m.to_bytes()?;
    let digest = manifest::digest_of(&mbytes);
    let origins = blobs
        .iter()
        .map(|c| sources.locate(out, c))
        .collect::<Result<Vec<Origin>, OciError>>()?;
    let bdir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&bdir).map_err(OciError::io(&bdir))?;
    for (c, origin) in blobs.iter().zip(&origins) {
        let dest = bdir.join(c.id.to_hex());
        if dest.exists() {
            continue;
        }
        match origin {
            Origin::File(from) => {
                let tmp = bdir.join(format!(".{}.part", c.id.to_hex()));
                std::fs::copy(from, &tmp).map_err(OciError::io(from))?;
                std::fs::rename(&tmp, &dest).map_err(OciError::io(&dest))?;
            }
            Origin::Image(i) => {
                sources.download(*i, c, &bdir)?;
            }
        }
    }
    for bytes in [&bootstrap[..], config, &mbytes] {
        let c = Content::of(bytes);
        write_atomic(&bdir, &c.id.to_hex(), bytes)?;
    }
    write_atomic(dir, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = index_with(dir, &digest, mbytes.len() as u64, tag)?;
    write_atomic(dir, "index.json", index.as_bytes())?;
    Ok(digest)
}

/// `dir/index.json` (or a new index) with the manifest added; an entry
/// with the same tag (or, untagged, the same digest) is replaced.
fn index_with(dir: &Path, digest: &str, size: u64, tag: Option<&str>) -> Result<String, OciError> {
    let path = dir.join("index.json");
    let mut index: Value = match push::read_limited(&path, manifest::MANIFEST_LIMIT) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| OciError::invalid(path.display().to_string(), e.to_string()))?,
        Err(OciError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            serde_json::json!({"schemaVersion": 2, "mediaType": super::source::MEDIA_INDEX, "manifests": []})
        }
        Err(e) => return Err(e),
    };
    let mut entry = serde_json::json!({
        "mediaType": MEDIA_MANIFEST,
        "artifactType": manifest::ARTIFACT_TYPE,
        "digest": digest,
        "size": size,
    });
    if let Some(t) = tag {
        entry["annotations"] = serde_json::json!({ REF_NAME: t });
    }
    let list = index
        .get_mut("manifests")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| OciError::invalid(path.display().to_string(), "no manifests array"))?;
    list.retain(|e| {
        let name = e
            .get("annotations")
            .and_then(|a| a.get(REF_NAME))
            .and_then(Value::as_str);
        match tag {
            Some(t) => name != Some(t),
            None => !(name.is_none() && e.get("digest").and_then(Value::as_str) == Some(digest)),
        }
    });
    list.push(entry);
    Ok(manifest::canonical_json(&index))
}
