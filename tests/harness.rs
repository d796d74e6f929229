//! Checks of the test harness itself, without rafs: the generated tree
//! survives a GNU tar round trip exactly (so the generator, the comparator
//! and GNU tar agree on what "exact" means, and the tar-based rafs tests
//! compare like with like), and the comparator reports each kind of
//! difference it claims to detect.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, compare_trees, exclude_none, exclude_sockets, hash_file};
use common::tree::{self, make_sparse, make_tree, random_bytes};
use std::fs;
use std::path::Path;

#[test]
fn gnu_tar_round_trip_of_generated_tree_is_exact() {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    let tarball = work.path().join("src.tar");
    common::gnu_tar_create(&src, &tarball);
    let dest = work.path().join("dest");
    common::gnu_tar_extract(&tarball, &dest);
    assert_same_tree(&src, &dest, &exclude_sockets);
}

/// Copies `src` to `dest` with GNU tar (exact, as the test above shows).
fn copy_tree(src: &Path, dest: &Path, work: &Path) {
    let tarball = work.join("copy.tar");
    common::gnu_tar_create(src, &tarball);
    common::gnu_tar_extract(&tarball, dest);
}

#[test]
fn comparator_reports_each_kind_of_difference() {
    let work = common::tempdir();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    make_tree(&a);
    copy_tree(&a, &b, work.path());
    assert!(compare_trees(&a, &b, &exclude_sockets).is_empty());
    // Without the exclusion, the socket tar dropped is reported.
    let d = compare_trees(&a, &b, &exclude_none);
    assert!(
        d.iter()
            .any(|l| l.contains("socket") && l.contains("only in")),
        "{d:?}"
    );

    tree::chmod(&b.join("modes/m0777"), 0o775);
    tree::lchown(&b.join("modes/uid1234"), 1235, 5678);
    tree::setxattr(&b.join("xattrs/file"), "user.binary", &[0, 1, 2]);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(b.join("files/sparse"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"!", 10 << 20).unwrap();
    drop(f);
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 1);
    filetime::set_symlink_file_times(b.join("files/small"), t, t).unwrap();
    // Break the hardlink group: one name becomes an independent copy.
    let three = b.join("hl/three");
    let data = fs::read(&three).unwrap();
    fs::remove_file(&three).unwrap();
    fs::write(&three, data).unwrap();
    fs::remove_file(b.join("links/dangling")).unwrap();
    std::os::unix::fs::symlink("elsewhere", b.join("links/dangling")).unwrap();

    let d = compare_trees(&a, &b, &exclude_sockets).join("\n");
    for want in [
        "\"modes/m0777\": mode differs: 0777 vs 0775",
        "\"modes/uid1234\": uid differs",
        "\"xattrs/file\": xattrs differs",
        "\"files/sparse\": content differs",
        "\"files/small\": mtime differs",
        "\"hl/three\": nlink differs",
        "\"hl/a/one\": hardlinks differs",
        "\"links/dangling\": symlink target differs",
    ] {
        assert!(d.contains(want), "missing {want:?} in:\n{d}");
    }
}

#[test]
fn sparse_hash_sees_logical_content_only() {
    let work = common::tempdir();
    let data = random_bytes(1, 5000);
    let sparse = work.path().join("sparse");
    make_sparse(&sparse, 8 << 20, &[(3 << 20, &data[..])]);
    let mut dense_bytes = vec![0u8; 8 << 20];
    dense_bytes[3 << 20..(3 << 20) + 5000].copy_from_slice(&data);
    let dense = work.path().join("dense");
    fs::write(&dense, &dense_bytes).unwrap();
    assert_eq!(hash_file(&sparse), hash_file(&dense));
    dense_bytes[(3 << 20) + 4999] ^= 1;
    fs::write(&dense, &dense_bytes).unwrap();
    assert_ne!(hash_file(&sparse), hash_file(&dense));
    // A trailing zero byte changes the length, hence the digest.
    dense_bytes[(3 << 20) + 4999] ^= 1;
    dense_bytes.push(0);
    fs::write(&dense, &dense_bytes).unwrap();
    assert_ne!(hash_file(&sparse), hash_file(&dense));
}

#[test]
fn big_sparse_file_hashes_quickly() {
    let work = common::tempdir();
    let p = tree::make_big_sparse(work.path());
    let start = std::time::Instant::now();
    hash_file(&p);
    assert!(
        start.elapsed().as_secs() < 20,
        "hashing a 5 GiB sparse file took {:?}",
        start.elapsed()
    );
}
