//! `rafs convert --chunk-dict REF|BOOTSTRAP` against real docker-registry
//! instances: v2 of an image (one file changed) converted with v1 as its
//! dictionary uploads only the new data; v1's blob reaches v2's repository
//! by a cross-repository mount on the same registry, by a verified copy
//! from another registry, or from a local dictionary's directory (also into
//! an OCI layout). Each result pulls back verified and unpacks to v2's
//! tree. A dictionary that is not a rafs image fails before anything is
//! pushed; `rafs push` of an output missing a dictionary blob names it and
//! uploads nothing until `--blobs-from` says where it is.
//!
//! These tests FAIL (not skip) without docker-registry or skopeo.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::json;
use common::oci::{dir, file, noise, reference_tree, write_layout, E};
use common::registry::{Registry, RegistryAuth};
use common::umoci::skopeo_copy;
use serde_json::Value;
use std::path::Path;

/// The big file: 2 MiB that v1 and v2 share.
const BIG: usize = 2 << 20;

fn version(conf: &'static str) -> Vec<Vec<E>> {
    vec![vec![
        dir("etc", 0o755, 10),
        file("etc/conf", conf, 11),
        file("big", noise(BIG, 7), 12),
    ]]
}

fn convert(src: &str, dst: &str, dict: Option<&str>) -> common::Run {
    let mut a = args![
        "convert",
        src,
        dst,
        "--plain-http",
        "--json",
        "--no-progress",
        "--chunker",
        "fixed",
        "--chunk-size",
        "64K",
        "--threads",
        "2"
    ];
    if let Some(d) = dict {
        a.push("--chunk-dict".into());
        a.push(d.into());
    }
    common::rafs(a)
}

/// A registry with the plain images `src:v1` and `src:v2`.
fn sources(work: &Path) -> Registry {
    let reg = Registry::start(RegistryAuth::Anonymous);
    for (tag, conf) in [("v1", "one\n"), ("v2", "two\n")] {
        let layout = work.join(format!("layout-{tag}"));
        write_layout(&layout, tag, &version(conf));
        let to = format!("docker://{}/src:{tag}", reg.host);
        skopeo_copy(&format!("oci:{}:{tag}", layout.display()), &to);
    }
    reg
}

/// Pulls `r` with its blobs and asserts it unpacks to v2's tree.
fn pulls_as_v2(r: &str, work: &Path, name: &str) {
    let out = work.join(name);
    common::rafs(args!["pull", r, "-o", &out, "--plain-http", "--blobs"]).ok();
    let reference = work.join(format!("{name}-reference"));
    reference_tree(&reference, &version("two\n"));
    let unpacked = work.join(format!("{name}-unpacked"));
    common::unpack(&out.join("bootstrap"), &out.join("blobs"), &unpacked);
    assert_same_tree(&reference, &unpacked, &exclude_none);
}

fn u(v: &Value, k: &str) -> u64 {
    v["push"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("no push.{k}: {v}"))
}

#[test]
fn v2_with_a_registry_dictionary_uploads_only_new_data() {
    let work = common::tempdir();
    let reg = sources(work.path());
    let h = &reg.host;
    let v1 = json(
        &convert(
            &format!("docker://{h}/src:v1"),
            &format!("docker://{h}/a:v1"),
            None,
        )
        .ok(),
    );
    assert!(u(&v1, "bytes_uploaded") > BIG as u64 / 2, "{v1}");

    // Same registry, another repository: v1's blob is mounted.
    let dict = format!("docker://{h}/a:v1");
    let src2 = format!("docker://{h}/src:v2");
    let v2 = json(&convert(&src2, &format!("docker://{h}/b:v2"), Some(&dict)).ok());
    assert!(u(&v2, "mounted") >= 1, "{v2}");
    assert_eq!(u(&v2, "copied"), 0, "{v2}");
    assert!(
        u(&v2, "bytes_uploaded") < 64 << 10,
        "only the new data: {v2}"
    );
    assert_eq!(
        v2["blobs"], 1,
        "one new blob (the dictionary's is reused): {v2}"
    );
    pulls_as_v2(&format!("{h}/b:v2"), work.path(), "b");

    // Another registry: v1's blob is copied, verified, from the first.
    let other = Registry::start(RegistryAuth::Anonymous);
    let dst = format!("docker://{}/c:v2", other.host);
    let v2c = json(&convert(&src2, &dst, Some(&dict)).ok());
    assert!(u(&v2c, "copied") >= 1, "{v2c}");
    assert!(u(&v2c, "bytes_copied") > BIG as u64 / 2, "{v2c}");
    assert!(u(&v2c, "bytes_uploaded") < 64 << 10, "{v2c}");
    assert_eq!(v2c["digest"], v2["digest"], "the same image either way");
    pulls_as_v2(&format!("{}/c:v2", other.host), work.path(), "c");

    // Converting again moves nothing.
    let again = json(&convert(&src2, &dst, Some(&dict)).ok());
    assert_eq!(
        (u(&again, "uploaded"), u(&again, "copied")),
        (0, 0),
        "{again}"
    );
}

#[test]
fn a_local_dictionary_fills_a_layout_and_push_finds_its_blobs() {
    let work = common::tempdir();
    let reg = sources(work.path());
    let h = &reg.host;
    convert(
        &format!("docker://{h}/src:v1"),
        &format!("docker://{h}/a:v1"),
        None,
    )
    .ok();
    let dictdir = work.path().join("dict");
    common::rafs(args![
        "pull",
        format!("{h}/a:v1"),
        "-o",
        &dictdir,
        "--plain-http",
        "--blobs"
    ])
    .ok();
    let dict = dictdir.join("bootstrap").display().to_string();

    // Into an OCI layout: the dictionary's blob is copied in; skopeo can
    // take the layout to a registry and it pulls back as v2.
    let layout = work.path().join("out-layout");
    let dst = format!("oci:{}:v2", layout.display());
    convert(&format!("docker://{h}/src:v2"), &dst, Some(&dict)).ok();
    skopeo_copy(&dst, &format!("docker://{h}/d:v2"));
    pulls_as_v2(&format!("{h}/d:v2"), work.path(), "d");

    // `rafs create` with the dictionary, then `rafs push`: the blob is
    // named before anything is uploaded; --blobs-from supplies it.
    let tree = work.path().join("tree");
    reference_tree(&tree, &version("two\n"));
    let out = work.path().join("out");
    common::rafs(args![
        "create",
        &tree,
        "-o",
        &out,
        "--chunk-dict",
        &dict,
        "--no-progress",
        "--chunker",
        "fixed",
        "--chunk-size",
        "64K"
    ])
    .ok();
    let posts = || reg.upload_posts();
    let before = posts();
    let r = format!("{h}/e:v2");
    let missing = common::rafs(args!["push", &out, &r, "--plain-http"]);
    assert!(!missing.status.success(), "{missing}");
    assert!(missing.stderr.contains("found nowhere"), "{missing}");
    assert_eq!(posts(), before, "nothing uploaded: {}", reg.log());
    let ok = json(
        &common::rafs(args![
            "push",
            &out,
            &r,
            "--plain-http",
            "--json",
            "--blobs-from",
            &dictdir
        ])
        .ok(),
    );
    assert!(
        ok["bytes_uploaded"].as_u64().unwrap() > BIG as u64 / 2,
        "the dictionary's blob came from its directory: {ok}"
    );
    pulls_as_v2(&r, work.path(), "e");

    // A registry reference is for rafs convert.
    let refused = common::rafs(args![
        "create",
        &tree,
        "-o",
        work.path().join("x"),
        "--chunk-dict",
        format!("docker://{h}/a:v1")
    ]);
    assert!(
        !refused.status.success() && refused.stderr.contains("rafs convert"),
        "{refused}"
    );
}

#[test]
fn a_dictionary_that_is_not_a_rafs_image_fails_before_any_push() {
    let work = common::tempdir();
    let reg = sources(work.path());
    let h = &reg.host;
    let before = reg.upload_posts();
    let run = convert(
        &format!("docker://{h}/src:v2"),
        &format!("docker://{h}/f:v2"),
        Some(&format!("docker://{h}/src:v1")),
    );
    assert!(!run.status.success(), "{run}");
    assert!(run.stderr.contains("not a rafs image"), "{run}");
    assert_eq!(reg.upload_posts(), before, "{}", reg.log());
    let pull = common::rafs(args![
        "pull",
        format!("{h}/f:v2"),
        "-o",
        work.path().join("f"),
        "--plain-http"
    ]);
    assert!(
        !pull.status.success() && pull.stderr.contains("manifest unknown"),
        "{pull}"
    );
}
