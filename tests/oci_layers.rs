//! Multi-layer OCI images: `rafs create L1 L2 ... -o OUT`.
//!
//! Layers are hand-built tars (the `tar` crate). The expected tree is made
//! by a small reference implementation of the OCI layer rules (image-spec
//! `layer.md`) that applies the layers to a real directory with plain
//! filesystem calls; `rafs unpack` of the built image must equal it in every
//! field the tree comparator checks (type, mode, owner, size, links, mtime,
//! content, xattrs). Also checked: one blob per layer with data, none for a
//! whiteout-only layer, identical output for identical input, shared blob
//! ids for a shared base layer, compressed layers, and errors.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::{blob_names, rafs, tempdir, unpack};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::oci::*;

/// Writes the layers as `dir/layer-N.tar`.
fn write_layers(dir: &Path, layers: &[Vec<E>]) -> Vec<PathBuf> {
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = dir.join(format!("layer-{i}.tar"));
            fs::write(&p, tar_of(l)).unwrap();
            p
        })
        .collect()
}

/// `rafs create LAYERS... -o OUT --json`, parsed.
fn create_json(layers: &[PathBuf], out: &Path) -> serde_json::Value {
    let mut a = args!["create"];
    a.extend(layers.iter().map(|p| p.into()));
    a.extend(args![
        "-o",
        out,
        "--no-progress",
        "--json",
        "--chunker",
        "fixed"
    ]);
    a.extend(args!["--chunk-size", "16K", "--threads", "2"]);
    let r = rafs(&a).ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{r}"))
}

fn layer_blobs(summary: &serde_json::Value) -> Vec<Vec<String>> {
    summary["layers"]
        .as_array()
        .expect("layers in the summary")
        .iter()
        .map(|l| {
            l["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

fn no_whiteouts(root: &Path) {
    for p in common::list_recursive(root) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with(".wh."), "{} survived", p.display());
    }
}

#[test]
fn merged_image_equals_the_reference() {
    let tmp = tempdir();
    let layers = layers();
    let paths = write_layers(tmp.path(), &layers);
    let out = tmp.path().join("out");
    let summary = create_json(&paths, &out);
    let per_layer = layer_blobs(&summary);
    assert_eq!(per_layer.len(), 4);
    for (i, blobs) in per_layer.iter().enumerate() {
        // The whiteout-only layer has no data and so no blob.
        assert_eq!(blobs.len(), usize::from(i != 2), "layer {i}: {blobs:?}");
    }
    let mut all: Vec<String> = per_layer.concat();
    all.sort();
    assert_eq!(blob_names(&out.join("blobs")), all);

    let reference = tmp.path().join("reference");
    let mut r = Reference::new(&reference);
    for l in &layers {
        r.apply(l);
    }
    r.finish();
    let unpacked = tmp.path().join("unpacked");
    unpack(&out.join("bootstrap"), &out.join("blobs"), &unpacked);
    assert_same_tree(&reference, &unpacked, &exclude_none);
    no_whiteouts(&unpacked);
    // The reference really exercised the rules.
    assert!(unpacked.join("same").is_file() && !unpacked.join("gone/x").exists());
    assert_eq!(fs::read(unpacked.join("opq/new")).unwrap(), b"new");
    assert!(!unpacked.join("opq/a").exists() && unpacked.join("opq/sub").is_dir());
    assert_eq!(fs::read(unpacked.join("hl")).unwrap(), noise(50_000, 3));
}

#[test]
fn same_layers_same_image_and_shared_base_blobs() {
    let tmp = tempdir();
    let layers = layers();
    let paths = write_layers(tmp.path(), &layers);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sa = create_json(&paths, &a);
    let sb = create_json(&paths, &b);
    assert_eq!(
        fs::read(a.join("bootstrap")).unwrap(),
        fs::read(b.join("bootstrap")).unwrap()
    );
    assert_eq!(layer_blobs(&sa), layer_blobs(&sb));
    assert_eq!(blob_names(&a.join("blobs")), blob_names(&b.join("blobs")));

    // Another image on the same base layer shares the base's blob only.
    let other = tmp.path().join("other.tar");
    fs::write(&other, tar_of(&[file("etc/change", noise(30_000, 9), 1)])).unwrap();
    let c = tmp.path().join("c");
    let sc = create_json(&[paths[0].clone(), other], &c);
    let (ab, cb) = (layer_blobs(&sa), layer_blobs(&sc));
    assert_eq!(ab[0], cb[0]);
    assert_ne!(ab[1], cb[1]);

    // Compressed layers give the same image as plain ones.
    let gz = tmp.path().join("layer-1.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&fs::read(&paths[1]).unwrap()).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    let zst = tmp.path().join("layer-3.tar.zst");
    fs::write(
        &zst,
        zstd::encode_all(&fs::read(&paths[3]).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    let d = tmp.path().join("d");
    let compressed = [paths[0].clone(), gz, paths[2].clone(), zst];
    let sd = create_json(&compressed, &d);
    assert_eq!(layer_blobs(&sd), layer_blobs(&sa));
    assert_eq!(
        fs::read(d.join("bootstrap")).unwrap(),
        fs::read(a.join("bootstrap")).unwrap()
    );
}

#[test]
fn one_source_keeps_whiteouts_and_bad_layers_fail_cleanly() {
    let tmp = tempdir();
    let paths = write_layers(tmp.path(), &layers());
    // One tar: today's behaviour, whiteouts kept verbatim, no layer list.
    let single = tmp.path().join("single");
    let s = create_json(&paths[2..3], &single);
    assert!(s.get("layers").is_none(), "{s:#}");
    let unpacked = tmp.path().join("unpacked");
    unpack(&single.join("bootstrap"), &single.join("blobs"), &unpacked);
    assert!(unpacked.join(".wh.lnk").is_file());

    // A hardlink to a file no layer has: an error, no output left.
    let bad = tmp.path().join("bad.tar");
    fs::write(&bad, tar_of(&[link("x", Kind::Hardlink("nowhere"))])).unwrap();
    let out = tmp.path().join("out");
    let r = rafs(args![
        "create",
        &paths[0],
        &bad,
        "-o",
        &out,
        "--no-progress"
    ])
    .failed();
    assert!(
        r.stderr.contains("nowhere") || r.stderr.contains("target"),
        "{r}"
    );
    assert!(!out.exists());
    // A missing layer is named.
    let missing = tmp.path().join("missing.tar");
    let r = rafs(args!["create", &paths[0], &missing, "-o", &out]).failed();
    assert!(r.stderr.contains("missing.tar"), "{r}");
    assert!(!out.exists());
    // A directory among several sources.
    let r = rafs(args!["create", &paths[0], tmp.path(), "-o", &out]).failed();
    assert!(r.stderr.contains("tar"), "{r}");
    assert!(!out.exists());
}
