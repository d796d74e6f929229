//! Round trips: `rafs create` → `rafs check --blobs` → `rafs unpack` →
//! compare with the source, expecting zero differences.
//!
//! Sources: the generated tree (directory input, fixed and CDC chunking),
//! GNU tar archives of it (plain, gzip, zstd, and on stdin), the tree back
//! out through `unpack --tar` and GNU tar, a 100k-entry directory, and a
//! sparse file larger than 4 GiB. Sockets are excluded wherever a tar is
//! involved: tar cannot carry them.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none, exclude_sockets, Exclude};
use common::tree::{make_big_sparse, make_tree, make_wide_dir};
use common::{check_ok, cmd, create, gnu_tar_create, gnu_tar_extract, rafs, unpack, Input};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Builds `source`, checks every chunk, unpacks and compares with `reference`.
fn round_trip(source: &Path, reference: &Path, extra: &[&str], exclude: Exclude<'_>) {
    let work = common::tempdir();
    let out = work.path().join("out");
    let bootstrap = create(source, &out, extra);
    let blobs = out.join("blobs");
    check_ok(&bootstrap, &blobs);
    let dest = work.path().join("dest");
    unpack(&bootstrap, &blobs, &dest);
    assert_same_tree(reference, &dest, exclude);
}

fn generated() -> (tempfile::TempDir, std::path::PathBuf) {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    (work, src)
}

#[test]
fn directory_default_options() {
    let (_w, src) = generated();
    round_trip(&src, &src, &[], &exclude_none);
}

#[test]
fn directory_fixed_chunking_64k() {
    let (_w, src) = generated();
    round_trip(
        &src,
        &src,
        &["--chunker", "fixed", "--chunk-size", "64K"],
        &exclude_none,
    );
}

#[test]
fn directory_cdc_chunking() {
    let (_w, src) = generated();
    let cdc = [
        "--chunker",
        "cdc",
        "--cdc-min",
        "16K",
        "--cdc-avg",
        "64K",
        "--cdc-max",
        "256K",
    ];
    round_trip(&src, &src, &cdc, &exclude_none);
}

#[test]
fn directory_16m_chunks_max_compression() {
    let (_w, src) = generated();
    let opts = ["--chunk-size", "16M", "--compression-level", "19"];
    round_trip(&src, &src, &opts, &exclude_none);
}

/// The generated tree as a GNU tar archive, compressed with `compressor`
/// (`None`, `gzip` or `zstd`); returns the archive path.
fn tarball(work: &Path, src: &Path, compressor: Option<&str>) -> std::path::PathBuf {
    let tar = work.join("src.tar");
    gnu_tar_create(src, &tar);
    match compressor {
        None => tar,
        Some(c) => {
            cmd(c, args!["-q", "-k", &tar]).ok();
            let ext = if c == "gzip" { "gz" } else { "zst" };
            let out = work.join(format!("src.tar.{ext}"));
            assert!(out.is_file(), "{c} made no {}", out.display());
            out
        }
    }
}

#[test]
fn tar_plain() {
    let (w, src) = generated();
    let tar = tarball(w.path(), &src, None);
    round_trip(&tar, &src, &[], &exclude_sockets);
}

#[test]
fn tar_gzip() {
    let (w, src) = generated();
    let tar = tarball(w.path(), &src, Some("gzip"));
    round_trip(&tar, &src, &["--chunker", "cdc"], &exclude_sockets);
}

#[test]
fn tar_zstd() {
    let (w, src) = generated();
    let tar = tarball(w.path(), &src, Some("zstd"));
    round_trip(&tar, &src, &["--chunk-size", "128K"], &exclude_sockets);
}

#[test]
fn tar_on_stdin() {
    let (w, src) = generated();
    let tar = tarball(w.path(), &src, Some("zstd"));
    let out = w.path().join("out");
    common::rafs_with_stdin(
        args!["create", "-", "-o", &out, "--no-progress"],
        Input::File(&tar),
    )
    .ok();
    let bootstrap = out.join("bootstrap");
    check_ok(&bootstrap, &out.join("blobs"));
    let dest = w.path().join("dest");
    unpack(&bootstrap, &out.join("blobs"), &dest);
    assert_same_tree(&src, &dest, &exclude_sockets);
}

#[test]
fn unpack_tar_file_extracts_exactly_with_gnu_tar() {
    let (w, src) = generated();
    let out = w.path().join("out");
    let bootstrap = create(&src, &out, &[]);
    let tar = w.path().join("unpacked.tar");
    unpack_to_tar(&bootstrap, &out, &tar);
    let dest = w.path().join("dest");
    gnu_tar_extract(&tar, &dest);
    assert_same_tree(&src, &dest, &exclude_sockets);
}

#[test]
fn unpack_tar_to_stdout_extracts_exactly_with_gnu_tar() {
    let (w, src) = generated();
    let out = w.path().join("out");
    let bootstrap = create(&src, &out, &["--chunker", "cdc"]);
    let r = rafs(args![
        "unpack",
        &bootstrap,
        "--blobs",
        out.join("blobs"),
        "-",
        "--tar"
    ])
    .ok();
    let tar = w.path().join("stdout.tar");
    std::fs::write(&tar, &r.stdout_bytes).unwrap();
    let dest = w.path().join("dest");
    gnu_tar_extract(&tar, &dest);
    assert_same_tree(&src, &dest, &exclude_sockets);
}

#[test]
fn directory_with_100k_entries() {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_wide_dir(&src.join("wide"), 100_000);
    common::tree::set_times(&src);
    round_trip(&src, &src, &[], &exclude_none);
}

#[test]
fn sparse_file_over_4gib_stays_sparse() {
    let work = common::tempdir();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    make_big_sparse(&src);
    common::tree::set_times(&src);
    let out = work.path().join("out");
    let bootstrap = create(&src, &out, &[]);
    let blobs = out.join("blobs");
    check_ok(&bootstrap, &blobs);
    let dest = work.path().join("dest");
    unpack(&bootstrap, &blobs, &dest);
    assert_same_tree(&src, &dest, &exclude_none);
    let m = std::fs::metadata(dest.join("big-sparse")).unwrap();
    assert!(m.len() > 5 << 30);
    assert!(
        m.blocks() * 512 < 64 << 20,
        "unpacked big-sparse uses {} bytes on disk: holes were written as data",
        m.blocks() * 512
    );
    let stored: u64 = common::blob_names(&blobs)
        .iter()
        .map(|b| std::fs::metadata(blobs.join(b)).unwrap().len())
        .sum();
    assert!(
        stored < 16 << 20,
        "{stored} bytes of blobs for ~214 KiB of data"
    );
}

/// GNU tar stores xattrs as pax records `LEN SCHILY.xattr.NAME=VALUE\n`;
/// a value may itself contain newlines and NULs (records are delimited by
/// their length, not by newlines).
#[test]
fn tar_xattr_value_with_newline() {
    let work = common::tempdir();
    let src = work.path().join("src");
    let f = src.join("f");
    common::tree::write(&f, b"data");
    common::tree::setxattr(&f, "user.multiline", b"line one\nline two\n\0end");
    common::tree::set_times(&src);
    let tar = tarball(work.path(), &src, None);
    round_trip(&tar, &src, &[], &exclude_sockets);
}

/// An xattr name may hold `=`, which ends a pax key: `rafs unpack --tar`
/// must write it so that `rafs create` reads the same name and value back
/// (it wrote `SCHILY.xattr.user.a=b=c`, read back as `user.a` = `b=c`).
#[test]
fn unpack_tar_xattr_name_with_equals_round_trips() {
    let work = common::tempdir();
    let src = work.path().join("src");
    let f = src.join("f");
    common::tree::write(&f, b"data");
    common::tree::setxattr(&f, "user.a=b", b"c=d");
    common::tree::setxattr(&f, "user.100%3D", b"pct");
    common::tree::set_times(&src);
    let out = work.path().join("out");
    let bootstrap = create(&src, &out, &[]);
    let tar = work.path().join("unpacked.tar");
    unpack_to_tar(&bootstrap, &out, &tar);
    round_trip(&tar, &src, &[], &exclude_sockets);
}

/// `rafs unpack BOOTSTRAP --blobs OUT/blobs TAR --tar`.
fn unpack_to_tar(bootstrap: &Path, out: &Path, tar: &Path) {
    rafs(args![
        "unpack",
        bootstrap,
        "--blobs",
        out.join("blobs"),
        tar,
        "--tar"
    ])
    .ok();
}
