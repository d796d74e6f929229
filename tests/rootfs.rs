//! A real Debian rootfs round trip: the tree a container image actually
//! holds (thousands of files, hardlinks, setuid binaries, device-free /dev,
//! symlink farms), built by `scripts/debootstrap-rootfs.sh` once per CI run
//! into `target/test-rootfs` from the Debian mirror.
//!
//! If the rootfs cannot be built these tests FAIL: a silent skip would let
//! the most realistic test stop running unnoticed.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none, exclude_sockets};
use common::{check_ok, cmd, create, unpack, Input};
use std::path::PathBuf;

/// Builds (once, under a lock shared by parallel tests) and returns the
/// rootfs.
fn rootfs() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dest = root.join("target/test-rootfs");
    let script = root.join("scripts/debootstrap-rootfs.sh");
    cmd("bash", args![&script, &dest]).ok();
    assert!(
        dest.join("usr/bin").is_dir(),
        "no usr/bin in {}",
        dest.display()
    );
    dest
}

#[test]
fn debian_rootfs_round_trip() {
    let src = rootfs();
    let work = common::tempdir();
    let out = work.path().join("out");
    let bootstrap = create(&src, &out, &[]);
    check_ok(&bootstrap, &out.join("blobs"));
    let dest = work.path().join("dest");
    unpack(&bootstrap, &out.join("blobs"), &dest);
    assert_same_tree(&src, &dest, &exclude_none);
    let s = common::inspect_json(&bootstrap);
    assert!(
        common::num(&s, "files") > 5000.0,
        "a Debian rootfs has thousands of files: {s:#}"
    );
}

#[test]
fn debian_rootfs_tar_round_trip() {
    let src = rootfs();
    let work = common::tempdir();
    let tarball = work.path().join("rootfs.tar");
    common::gnu_tar_create(&src, &tarball);
    let out = work.path().join("out");
    let args = args![
        "create",
        "-",
        "-o",
        &out,
        "--no-progress",
        "--chunker",
        "cdc"
    ];
    common::rafs_with_stdin(args, Input::File(&tarball)).ok();
    let bootstrap = out.join("bootstrap");
    check_ok(&bootstrap, &out.join("blobs"));
    let dest = work.path().join("dest");
    unpack(&bootstrap, &out.join("blobs"), &dest);
    assert_same_tree(&src, &dest, &exclude_sockets);
}
