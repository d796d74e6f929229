//! `rafs convert SRC DST` against a real `docker-registry` and `skopeo`:
//! a multi-layer OCI image written by hand (gzip layer tars, a config
//! with entrypoint/env/user/workdir, manifest, `index.json`) is copied
//! into the registry with skopeo, converted registry to registry, pulled
//! back and unpacked: the tree equals the layers applied by the reference
//! implementation of the OCI layer rules, the config is carried over byte
//! for byte, and the source manifest digest is annotated. Converting again
//! uploads nothing and gives the same digest; two converts in parallel
//! agree; an OCI-layout destination copies back with skopeo and pulls; a
//! source layer whose bytes do not match its digest fails the convert and
//! tags nothing.
//!
//! These tests FAIL (not skip) without docker-registry or skopeo.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::json;
use common::oci::{layers, reference_tree, write_layout};
use common::registry::{Registry, RegistryAuth};
use common::umoci::skopeo_copy;
use serde_json::Value;
use std::path::Path;

fn convert(src: &str, dst: &str) -> common::Run {
    common::rafs(args![
        "convert",
        src,
        dst,
        "--plain-http",
        "--json",
        "--no-progress",
        "--chunker",
        "fixed",
        "--chunk-size",
        "16K",
        "--threads",
        "2"
    ])
}

/// A registry holding the hand-built image at `src:1`; returns it, the
/// source manifest digest and config bytes.
fn registry_with_source(work: &Path) -> (Registry, String, Vec<u8>) {
    let layout = work.join("layout");
    let (digest, config, _) = write_layout(&layout, "v1", &layers());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let src = format!("docker://{}/src:1", reg.host);
    skopeo_copy(&format!("oci:{}:v1", layout.display()), &src);
    (reg, digest, config)
}

/// Pulls `r` with its blobs, checks manifest and config, and asserts its
/// tree equals the reference; returns the manifest digest pulled.
fn pull_and_compare(r: &str, work: &Path, name: &str, source: &str, config: &[u8]) -> String {
    let dir = work.join(name);
    let run = common::rafs(args!["pull", r, "-o", &dir, "--plain-http", "--blobs"]).ok();
    let m: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["annotations"]["dev.rafs.source.manifest"], source, "{m}");
    assert_eq!(m["artifactType"], "application/vnd.rafs.image.v1");
    let got = std::fs::read(dir.join("config.json")).unwrap();
    assert_eq!(
        got, config,
        "the source config is carried over byte for byte"
    );
    let c: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(c["config"]["Entrypoint"][0], "/bin/tool");
    assert_eq!(c["config"]["User"], "1000:100");
    assert_eq!(c["config"]["WorkingDir"], "/etc");
    assert_eq!(c["config"]["Env"][1], "RAFS_TEST=yes");
    let reference = work.join(format!("{name}-reference"));
    reference_tree(&reference, &layers());
    let unpacked = work.join(format!("{name}-unpacked"));
    common::unpack(&dir.join("bootstrap"), &dir.join("blobs"), &unpacked);
    assert_same_tree(&reference, &unpacked, &exclude_none);
    for p in common::list_recursive(&unpacked) {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!n.starts_with(".wh."), "{} survived", p.display());
    }
    run.stdout.trim().to_owned()
}

#[test]
fn registry_to_registry_then_again_uploads_nothing() {
    let work = common::tempdir();
    let (reg, source, config) = registry_with_source(work.path());
    let src = format!("docker://{}/src:1", reg.host);
    let dst = format!("docker://{}/dst:1", reg.host);
    let first = json(&convert(&src, &dst).ok());
    assert_eq!(first["source_digest"], source.as_str());
    assert_eq!(first["layers"], 4);
    // One blob per layer with data; the whiteout-only layer has none.
    assert_eq!(first["blobs"], 3, "{first}");
    assert!(first["push"]["uploaded"].as_u64().unwrap() >= 3, "{first}");
    let digest = first["digest"].as_str().unwrap().to_owned();
    let pulled = pull_and_compare(
        &format!("{}/dst:1", reg.host),
        work.path(),
        "p1",
        &source,
        &config,
    );
    assert_eq!(pulled, digest);

    let again = json(&convert(&src, &dst).ok());
    assert_eq!(again["digest"], digest.as_str(), "deterministic");
    assert_eq!(again["push"]["uploaded"], 0, "{again}");
    assert_eq!(again["push"]["bytes_uploaded"], 0, "{again}");
}

#[test]
fn parallel_converts_agree() {
    let work = common::tempdir();
    let (reg, source, config) = registry_with_source(work.path());
    let src = format!("docker://{}/src:1", reg.host);
    let dst = format!("docker://{}/par:1", reg.host);
    let runs: Vec<common::Run> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| convert(&src, &dst))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let digests: Vec<Value> = runs
        .into_iter()
        .map(|r| json(&r.ok())["digest"].clone())
        .collect();
    assert_eq!(digests[0], digests[1]);
    let pulled = pull_and_compare(
        &format!("{}/par:1", reg.host),
        work.path(),
        "p",
        &source,
        &config,
    );
    assert_eq!(pulled, digests[0].as_str().unwrap());
}

#[test]
fn oci_layout_destination_copies_back_with_skopeo() {
    let work = common::tempdir();
    let (reg, source, config) = registry_with_source(work.path());
    let src = format!("docker://{}/src:1", reg.host);
    let out = work.path().join("rafs-layout");
    let to_layout = json(&convert(&src, &format!("oci:{}:rafs", out.display())).ok());
    let to_registry = json(&convert(&src, &format!("docker://{}/dst:1", reg.host)).ok());
    // The same image, whatever the destination.
    assert_eq!(to_layout["digest"], to_registry["digest"]);
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], to_layout["digest"]);
    let copied = format!("{}/copied:2", reg.host);
    skopeo_copy(
        &format!("oci:{}:rafs", out.display()),
        &format!("docker://{copied}"),
    );
    let pulled = pull_and_compare(&copied, work.path(), "c", &source, &config);
    assert_eq!(pulled, to_layout["digest"].as_str().unwrap());
}

#[test]
fn a_layer_that_does_not_match_its_digest_fails_and_tags_nothing() {
    let work = common::tempdir();
    let reg = Registry::start(RegistryAuth::Anonymous);
    let ls = layers();
    for (case, tamper) in ["flip", "swap"].into_iter().enumerate() {
        let layout = work.path().join(format!("layout-{tamper}"));
        let (_, _, descs) = write_layout(&layout, "v1", &ls);
        // The second layer's blob no longer matches its descriptor.
        let d = descs[1]["digest"].as_str().unwrap();
        let path = layout.join("blobs/sha256").join(&d[7..]);
        let mut bytes = std::fs::read(&path).unwrap();
        if tamper == "flip" {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x40;
        } else {
            // A valid layer, but another one.
            bytes = common::oci::gzip(&common::oci::tar_of(&ls[3]));
        }
        std::fs::write(&path, &bytes).unwrap();
        let dst = format!("docker://{}/bad:{case}", reg.host);
        let run = convert(&format!("oci:{}:v1", layout.display()), &dst);
        assert!(!run.status.success(), "{run}");
        assert!(run.stderr.contains("digest mismatch"), "{run}");
        assert!(run.stderr.contains(d), "{run}");
        let pulled = common::rafs(args![
            "pull",
            format!("{}/bad:{case}", reg.host),
            "-o",
            work.path().join(format!("pulled-{case}")),
            "--plain-http"
        ]);
        assert!(!pulled.status.success(), "{pulled}");
        assert!(pulled.stderr.contains("manifest unknown"), "{pulled}");
    }
}

#[test]
fn docker_v2s2_source_and_a_tampered_registry_layer() {
    let work = common::tempdir();
    let layout = work.path().join("layout");
    let (_, config, descs) = write_layout(&layout, "v1", &layers());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let v2 = format!("docker://{}/v2:1", reg.host);
    common::cmd(
        "skopeo",
        args![
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            format!("oci:{}:v1", layout.display()),
            &v2
        ],
    )
    .ok();
    let raw = common::cmd(
        "skopeo",
        args!["inspect", "--raw", "--tls-verify=false", &v2],
    )
    .ok();
    assert!(
        raw.stdout
            .contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    let done = json(&convert(&v2, &format!("docker://{}/from-v2:1", reg.host)).ok());
    let source = done["source_digest"].as_str().unwrap().to_owned();
    let dst = format!("{}/from-v2:1", reg.host);
    let pulled = pull_and_compare(&dst, work.path(), "v2", &source, &config);
    assert_eq!(pulled, done["digest"].as_str().unwrap());

    // The registry now serves other bytes (same size) for a layer.
    let d = descs[1]["digest"].as_str().unwrap();
    let data = reg.blob_data(d);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&data, &bytes).unwrap();
    let run = convert(&v2, &format!("docker://{}/bad:1", reg.host));
    assert!(!run.status.success(), "{run}");
    assert!(
        run.stderr.contains("digest mismatch") && run.stderr.contains(d),
        "{run}"
    );
    let pulled = common::rafs(args![
        "pull",
        format!("{}/bad:1", reg.host),
        "-o",
        work.path().join("bad"),
        "--plain-http"
    ]);
    assert!(pulled.stderr.contains("manifest unknown"), "{pulled}");
}

#[test]
fn a_multi_platform_layout_resolves_to_the_platform() {
    let work = common::tempdir();
    let ls = layers();
    let layout = work.path().join("layout");
    // Two images in one layout: the full one for this machine, the bottom
    // layer alone for another platform.
    let (host_digest, _, _) = write_layout(&layout, "x", &ls);
    let other = work.path().join("other");
    let (other_digest, _, _) = write_layout(&other, "x", &ls[..1]);
    for e in std::fs::read_dir(other.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), layout.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    let entry = |dir: &Path, arch: &str| {
        let i: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut e = i["manifests"][0].clone();
        e.as_object_mut().unwrap().remove("annotations");
        e["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        e
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&other, "s390x"), entry(&layout, common::oci::host_arch())],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let src = format!("oci:{}", layout.display());
    let mine = json(
        &convert(
            &src,
            &format!("oci:{}:a", work.path().join("out").display()),
        )
        .ok(),
    );
    assert_eq!(mine["source_digest"], host_digest.as_str());
    assert_eq!(mine["layers"], 4);
    let run = common::rafs(args![
        "convert",
        &src,
        format!("oci:{}:b", work.path().join("out").display()),
        "--platform",
        "linux/s390x",
        "--json",
        "--no-progress"
    ])
    .ok();
    let theirs = json(&run);
    assert_eq!(theirs["source_digest"], other_digest.as_str());
    assert_eq!(theirs["layers"], 1);
    let run = common::rafs(args![
        "convert",
        &src,
        format!("oci:{}", work.path().join("none").display()),
        "--platform",
        "linux/mips64"
    ]);
    assert!(!run.status.success(), "{run}");
    assert!(
        run.stderr.contains("no manifest for platform linux/mips64"),
        "{run}"
    );
    assert!(!work.path().join("none").exists(), "nothing written");

    // The index as a blob, tagged (as skopeo wants it), then in a registry.
    let ibytes = serde_json::to_vec(&index).unwrap();
    let mut idesc =
        common::oci::put_blob(&layout, "application/vnd.oci.image.index.v1+json", &ibytes);
    idesc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "multi"});
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [idesc]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let src = format!("oci:{}:multi", layout.display());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let multi = format!("docker://{}/multi:1", reg.host);
    common::cmd(
        "skopeo",
        args!["copy", "--all", "--dest-tls-verify=false", &src, &multi],
    )
    .ok();
    let dst = format!("docker://{}/multi-rafs:1", reg.host);
    let run = common::rafs(args![
        "convert",
        &multi,
        &dst,
        "--plain-http",
        "--platform",
        "linux/s390x",
        "--json",
        "--no-progress"
    ])
    .ok();
    let from_registry = json(&run);
    assert_eq!(from_registry["source_digest"], other_digest.as_str());
    assert_eq!(from_registry["digest"], theirs["digest"], "same image");
}

/// An index entry's platform variant is matched as docker and containerd
/// match it: `linux/amd64` is the baseline, not `amd64/v3` listed first;
/// `arm64/v8` is plain `arm64`; `linux/arm` is `arm/v7`, ahead of `v6`
/// listed first, with `v6` the fallback when there is no `v7`.
#[test]
fn index_platform_variants_are_matched_as_containerd_does() {
    let work = common::tempdir();
    let ls = layers();
    let layout = work.path().join("layout");
    let (full, _, _) = write_layout(&layout, "x", &ls);
    let other = work.path().join("other");
    let (bottom, _, _) = write_layout(&other, "x", &ls[..1]);
    for e in std::fs::read_dir(other.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), layout.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    // The two manifests' descriptors, before index.json is rewritten.
    let desc = |dir: &Path| {
        let i: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut e = i["manifests"][0].clone();
        e.as_object_mut().unwrap().remove("annotations");
        e
    };
    let (bottom_desc, full_desc) = (desc(&other), desc(&layout));
    let entry = |d: &Value, platform: Value| {
        let mut e = d.clone();
        e["platform"] = platform;
        e
    };
    let p = |arch: &str, variant: Option<&str>| {
        let mut v = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(variant) = variant {
            v["variant"] = variant.into();
        }
        v
    };
    let cases = [
        // (index entries: bottom-layer image, full image), --platform, expected
        (
            p("amd64", Some("v3")),
            p("amd64", None),
            "linux/amd64",
            &full,
        ),
        (
            p("amd64", Some("v3")),
            p("amd64", Some("v1")),
            "linux/amd64",
            &full,
        ),
        (
            p("arm", Some("v6")),
            p("arm", Some("v7")),
            "linux/arm",
            &full,
        ),
        (
            p("arm", Some("v6")),
            p("s390x", None),
            "linux/arm/v7",
            &bottom,
        ),
        (
            p("arm64", None),
            p("s390x", None),
            "linux/arm64/v8",
            &bottom,
        ),
        (
            p("s390x", None),
            p("arm64", Some("v8")),
            "linux/arm64",
            &full,
        ),
    ];
    for (i, (a, b, platform, want)) in cases.into_iter().enumerate() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry(&bottom_desc, a.clone()), entry(&full_desc, b.clone())],
        });
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        let run = common::rafs(args![
            "convert",
            format!("oci:{}", layout.display()),
            format!("oci:{}:c{i}", work.path().join("out").display()),
            "--platform",
            platform,
            "--json",
            "--no-progress"
        ]);
        assert!(run.status.success(), "{platform} of [{a}, {b}]: {run}");
        assert_eq!(
            json(&run)["source_digest"],
            want.as_str(),
            "{platform} of [{a}, {b}]"
        );
    }
}
