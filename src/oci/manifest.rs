//! The manifest of a rafs image in a registry (normative text:
//! `docs/IMAGE.md`): building it deterministically for a push, and
//! checking one read from a registry for a pull.
//!
//! Serialisation is fixed: the document is built with `oci-spec`'s types,
//! then written as canonical JSON (object keys sorted, no whitespace), so
//! the same inputs always give the same bytes and the same digest.

use super::OciError;
use crate::backend::BlobId;
use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::str::FromStr;

/// The manifest's own media type.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `artifactType`: this manifest is a rafs image.
pub const ARTIFACT_TYPE: &str = "application/vnd.rafs.image.v1";
/// A data blob layer.
pub const MEDIA_BLOB: &str = "application/vnd.rafs.blob.v1";
/// The bootstrap layer (always the last).
pub const MEDIA_BOOTSTRAP: &str = "application/vnd.rafs.bootstrap.v1";
/// The image config.
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Annotation: the digest of the source image's manifest.
pub const ANNOTATION_SOURCE: &str = "dev.rafs.source.manifest";

/// The largest manifest read or pushed.
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest image config read or pushed.
pub const CONFIG_LIMIT: u64 = 4 << 20;
/// The largest bootstrap read.
pub const BOOTSTRAP_LIMIT: u64 = 1 << 30;

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The blob id a `sha256:<hex>` digest names.
pub fn blob_id(digest: &str) -> Option<BlobId> {
    BlobId::from_hex(digest.strip_prefix("sha256:")?).filter(|id| digest.ends_with(&id.to_hex()))
}

/// Content named by digest, with its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    /// sha256 of the bytes.
    pub id: BlobId,
    /// Length in bytes.
    pub size: u64,
}

impl Content {
    /// The content of `bytes`.
    pub fn of(bytes: &[u8]) -> Content {
        Content {
            id: BlobId(Sha256::digest(bytes).into()),
            size: bytes.len() as u64,
        }
    }
    /// The data blobs a bootstrap's blob table names, in its order.
    pub fn blob_table(b: &rafs_format::Bootstrap<'_>) -> Vec<Content> {
        b.blobs()
            .iter()
            .map(|i| Content {
                id: BlobId(i.id),
                size: i.compressed_size.get(),
            })
            .collect()
    }
    /// `sha256:<hex>`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.id.to_hex())
    }
    fn descriptor(&self, media: &str) -> Result<Descriptor, OciError> {
        let d = Digest::from_str(&self.digest())
            .map_err(|e| OciError::invalid("digest", e.to_string()))?;
        Ok(Descriptor::new(media_type(media), self.size, d))
    }
}

fn media_type(s: &str) -> MediaType {
    MediaType::from(s)
}

/// What a rafs manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RafsManifest {
    /// The data blobs, in blob-table order.
    pub blobs: Vec<Content>,
    /// The bootstrap.
    pub bootstrap: Content,
    /// The image config.
    pub config: Content,
    /// The source manifest's digest, if converted.
    pub source: Option<String>,
}

impl RafsManifest {
    /// The manifest document, canonical JSON (see the module docs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, OciError> {
        let mut layers = Vec::with_capacity(self.blobs.len() + 1);
        for b in &self.blobs {
            layers.push(b.descriptor(MEDIA_BLOB)?);
        }
        layers.push(self.bootstrap.descriptor(MEDIA_BOOTSTRAP)?);
        let mut builder = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .artifact_type(media_type(ARTIFACT_TYPE))
            .config(self.config.descriptor(MEDIA_CONFIG)?)
            .layers(layers);
        if let Some(src) = &self.source {
            let a = HashMap::from([(ANNOTATION_SOURCE.to_owned(), src.clone())]);
            builder = builder.annotations(a);
        }
        let m = builder
            .build()
            .map_err(|e| OciError::invalid("manifest", e.to_string()))?;
        let v =
            serde_json::to_value(&m).map_err(|e| OciError::invalid("manifest", e.to_string()))?;
        Ok(canonical_json(&v).into_bytes())
    }

    /// Checks that `bytes` is a rafs manifest and returns what it names;
    /// `reference` names it in errors.
    pub fn parse(bytes: &[u8], reference: &str) -> Result<RafsManifest, OciError> {
        let not_rafs = |why: String| OciError::NotRafs {
            reference: reference.to_owned(),
            why,
        };
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| not_rafs(format!("the manifest is not JSON: {e}")))?;
        match v.get("mediaType").and_then(Value::as_str) {
            None | Some(MEDIA_MANIFEST) => {}
            Some(other) => return Err(not_rafs(format!("its media type is {other}"))),
        }
        let artifact = v.get("artifactType").and_then(Value::as_str);
        if artifact != Some(ARTIFACT_TYPE) {
            let what = artifact.unwrap_or("none");
            return Err(not_rafs(format!(
                "artifactType is {what}, not {ARTIFACT_TYPE}"
            )));
        }
        let m: ImageManifest = serde_json::from_value(v)
            .map_err(|e| not_rafs(format!("not an OCI image manifest: {e}")))?;
        if m.schema_version() != 2 {
            return Err(not_rafs("schemaVersion is not 2".into()));
        }
        let content = |d: &Descriptor, want: &str, what: &str| {
            if d.media_type().to_string() != want {
                return Err(not_rafs(format!(
                    "{what} has media type {}, not {want}",
                    d.media_type()
                )));
            }
            let id = blob_id(d.digest().as_ref())
                .ok_or_else(|| not_rafs(format!("{what} digest {} is not sha256", d.digest())))?;
            Ok(Content { id, size: d.size() })
        };
        let config = content(m.config(), MEDIA_CONFIG, "the config")?;
        let (last, blobs) = m
            .layers()
            .split_last()
            .ok_or_else(|| not_rafs("no layers".into()))?;
        let bootstrap = content(last, MEDIA_BOOTSTRAP, "the last layer")?;
        let blobs = blobs
            .iter()
            .enumerate()
            .map(|(i, d)| content(d, MEDIA_BLOB, &format!("layer {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let source = m
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_SOURCE).cloned());
        Ok(RafsManifest {
            blobs,
            bootstrap,
            config,
            source,
        })
    }
}

/// Checks that `bytes` is an OCI image config.
pub fn check_config(bytes: &[u8], what: &str) -> Result<(), OciError> {
    serde_json::from_slice::<ImageConfiguration>(bytes)
        .map(|_| ())
        .map_err(|e| OciError::invalid(what, format!("not an OCI image config: {e}")))
}

/// The config of an image without a source: this machine's platform, no
/// runtime settings, no timestamps.
pub fn minimal_config() -> Vec<u8> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let v = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    canonical_json(&v).into_bytes()
}

/// `v` as JSON with object keys sorted and no whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RafsManifest {
        RafsManifest {
            blobs: vec![Content::of(b"one"), Content::of(b"two")],
            bootstrap: Content::of(b"boot"),
            config: Content::of(&minimal_config()),
            source: Some(format!("sha256:{}", "0".repeat(64))),
        }
    }

    #[test]
    fn manifest_round_trips_and_is_deterministic() {
        let m = sample();
        let a = m.to_bytes().unwrap();
        for _ in 0..5 {
            assert_eq!(m.clone().to_bytes().unwrap(), a);
        }
        assert_eq!(RafsManifest::parse(&a, "r").unwrap(), m);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["mediaType"], MEDIA_MANIFEST);
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["layers"][2]["mediaType"], MEDIA_BOOTSTRAP);
        assert_eq!(v["layers"][0]["size"], 3);
        assert!(!String::from_utf8_lossy(&a).contains("nydus"));
        check_config(&minimal_config(), "c").unwrap();
    }

    #[test]
    fn non_rafs_manifests_are_refused() {
        let a = String::from_utf8(sample().to_bytes().unwrap()).unwrap();
        let cases = [
            a.replace(ARTIFACT_TYPE, "application/vnd.other"),
            a.replace(MEDIA_MANIFEST, "application/vnd.oci.image.index.v1+json"),
            a.replace(MEDIA_BOOTSTRAP, MEDIA_BLOB),
            a.replace("\"schemaVersion\":2", "\"schemaVersion\":1"),
            "[]".into(),
            "not json".into(),
        ];
        for c in cases {
            let e = RafsManifest::parse(c.as_bytes(), "r").unwrap_err();
            assert!(matches!(e, OciError::NotRafs { .. }), "{e}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v = serde_json::json!({"b": [1, {"d": "x", "c": null}], "a": "\"q\""});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"\"q\"","b":[1,{"c":null,"d":"x"}]}"#
        );
    }
}
