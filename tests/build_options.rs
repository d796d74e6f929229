//! What the builder's options and content addressing promise, checked
//! through the CLI: reproducible output, deduplication, `--chunk-dict`,
//! `--blob-size-limit`, `--prefetch-list`, and the `inspect --json` summary.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::tree::{make_tree, random_bytes, write};
use common::{blob_names, check_ok, create, inspect_json, num, rafs, unpack};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

fn blob_ids(summary: &serde_json::Value) -> Vec<String> {
    summary["blobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no blobs array in {summary:#}"))
        .iter()
        .map(|b| b["id"].as_str().expect("blob id string").to_owned())
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    blob_names(dir)
        .iter()
        .map(|b| fs::metadata(dir.join(b)).unwrap().len())
        .sum()
}

#[test]
fn two_builds_are_byte_identical() {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    for opts in [&["--chunker", "fixed"][..], &["--chunker", "cdc"][..]] {
        let a = work.path().join(format!("a{}", opts[1]));
        let b = work.path().join(format!("b{}", opts[1]));
        let ba = create(&src, &a, opts);
        let bb = create(&src, &b, opts);
        assert!(
            fs::read(&ba).unwrap() == fs::read(&bb).unwrap(),
            "{opts:?}: bootstraps differ"
        );
        let (na, nb) = (blob_names(&a.join("blobs")), blob_names(&b.join("blobs")));
        assert_eq!(na, nb, "{opts:?}: blob sets differ");
        assert!(!na.is_empty());
        for n in &na {
            let (x, y) = (
                fs::read(a.join("blobs").join(n)),
                fs::read(b.join("blobs").join(n)),
            );
            assert!(x.unwrap() == y.unwrap(), "{opts:?}: blob {n} differs");
        }
    }
}

#[test]
fn blobs_are_named_by_their_sha256() {
    use sha2::Digest;
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    let out = work.path().join("out");
    let bootstrap = create(&src, &out, &[]);
    let names = blob_names(&out.join("blobs"));
    for n in &names {
        let digest = sha2::Sha256::digest(fs::read(out.join("blobs").join(n)).unwrap());
        assert_eq!(hex::encode(digest), *n, "blob file name is not its sha256");
    }
    let listed: BTreeSet<String> = blob_ids(&inspect_json(&bootstrap)).into_iter().collect();
    assert_eq!(listed, names.into_iter().collect());
}

#[test]
fn identical_files_are_stored_once() {
    let work = common::tempdir();
    let src = work.path().join("src");
    let data = random_bytes(42, 8 << 20);
    write(&src.join("one"), &data);
    write(&src.join("dir/two"), &data);
    for opts in [&["--chunker", "fixed"][..], &["--chunker", "cdc"][..]] {
        let out = work.path().join(format!("out{}", opts[1]));
        let s = inspect_json(&create(&src, &out, opts));
        let (unique, entries) = (num(&s, "unique_chunks"), num(&s, "chunk_entries"));
        assert!(
            unique < entries,
            "{opts:?}: unique {unique} !< entries {entries}"
        );
        let stored = num(&s, "stored_bytes");
        assert!(
            stored < 0.55 * (16 << 20) as f64 && stored >= (8 << 20) as f64,
            "{opts:?}: stored_bytes {stored} for two copies of 8 MiB random data"
        );
        assert!(dir_bytes(&out.join("blobs")) < 9 << 20);
        assert_eq!(num(&s, "file_bytes"), (16 << 20) as f64);
        let ratio = num(&s, "dedup_ratio");
        assert!((1.8..=2.2).contains(&ratio), "dedup_ratio {ratio}");
    }
}

#[test]
fn generated_tree_summary() {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    let s = inspect_json(&create(&src, &work.path().join("out"), &[]));
    assert_eq!(num(&s, "symlinks"), 6.0, "{s:#}");
    // null, tty-big-minor, loop0, nvme, fifo, socket.
    assert_eq!(num(&s, "special_files"), 6.0, "{s:#}");
    assert!(num(&s, "hardlinked_files") >= 1.0, "{s:#}");
    assert!(num(&s, "holes") >= 2.0, "sparse and all-hole files: {s:#}");
    assert!(
        num(&s, "unique_chunks") < num(&s, "chunk_entries"),
        "dup-a/dup-b: {s:#}"
    );
    assert!(
        num(&s, "compression_ratio") > 1.0,
        "text-2m compresses: {s:#}"
    );
    let bootstrap_len = fs::metadata(work.path().join("out/bootstrap"))
        .unwrap()
        .len();
    assert_eq!(num(&s, "bootstrap_size"), bootstrap_len as f64);
    for key in [
        "version",
        "chunking",
        "read_amplification_4k",
        "data_bytes",
        "inodes",
    ] {
        assert!(!s[key].is_null(), "missing {key}: {s:#}");
    }
}

/// Tree 1: `shared` and `only1`; tree 2: `shared` (same bytes) and `only2`.
fn dict_trees(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let shared = random_bytes(100, 6 << 20);
    let (t1, t2) = (root.join("t1"), root.join("t2"));
    write(&t1.join("shared"), &shared);
    write(&t1.join("only1"), &random_bytes(101, 3 << 20));
    write(&t2.join("sub/shared-copy"), &shared);
    write(&t2.join("only2"), &random_bytes(102, 2 << 20));
    (t1, t2)
}

#[test]
fn chunk_dict_stores_only_new_data() {
    let work = common::tempdir();
    let (t1, t2) = dict_trees(work.path());
    let (o1, o2) = (work.path().join("o1"), work.path().join("o2"));
    let b1 = create(&t1, &o1, &[]);
    let dict = b1.to_str().unwrap().to_owned();
    let b2 = create(&t2, &o2, &["--chunk-dict", &dict]);
    let new_bytes = dir_bytes(&o2.join("blobs"));
    assert!(
        new_bytes < (2 << 20) + (256 << 10),
        "second build wrote {new_bytes} bytes of blobs for 2 MiB of new data"
    );
    let ids1 = blob_ids(&inspect_json(&b1));
    let ids2 = blob_ids(&inspect_json(&b2));
    assert!(
        ids1.iter().any(|id| ids2.contains(id)),
        "second image references none of the dictionary's blobs: {ids1:?} vs {ids2:?}"
    );
    let all = work.path().join("all-blobs");
    fs::create_dir(&all).unwrap();
    for o in [&o1, &o2] {
        for n in blob_names(&o.join("blobs")) {
            fs::copy(o.join("blobs").join(&n), all.join(&n)).unwrap();
        }
    }
    check_ok(&b2, &all);
    let dest = work.path().join("dest");
    unpack(&b2, &all, &dest);
    assert_same_tree(&t2, &dest, &exclude_none);
    // Without the dictionary's blobs the image cannot be read.
    let r = rafs(args!["check", &b2, "--blobs", o2.join("blobs")]).failed();
    let missing: Vec<_> = ids1.iter().filter(|id| ids2.contains(id)).collect();
    assert!(r.all_output().contains(missing[0].as_str()), "{r}");
}

#[test]
fn blob_size_limit_splits_blobs() {
    let work = common::tempdir();
    let src = work.path().join("src");
    for i in 0..6 {
        write(
            &src.join(format!("f{i}")),
            &random_bytes(200 + i, 700 << 10),
        );
    }
    write(&src.join("big-chunk"), &random_bytes(300, 2 << 20));
    let out = work.path().join("out");
    let opts = ["--chunk-size", "256K", "--blob-size-limit", "1M"];
    let bootstrap = create(&src, &out, &opts);
    let names = blob_names(&out.join("blobs"));
    assert!(
        names.len() >= 4,
        "only {} blobs for 6.1 MiB with a 1 MiB limit",
        names.len()
    );
    for n in &names {
        let len = fs::metadata(out.join("blobs").join(n)).unwrap().len();
        assert!(
            len <= 1 << 20,
            "blob {n} is {len} bytes, over the 1 MiB limit"
        );
    }
    check_ok(&bootstrap, &out.join("blobs"));
    let dest = work.path().join("dest");
    unpack(&bootstrap, &out.join("blobs"), &dest);
    assert_same_tree(&src, &dest, &exclude_none);
}

#[test]
fn blob_size_limit_below_one_chunk_gives_one_chunk_blobs() {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("f"), &random_bytes(400, 3 << 20));
    let out = work.path().join("out");
    let opts = ["--chunk-size", "1M", "--blob-size-limit", "64K"];
    let bootstrap = create(&src, &out, &opts);
    let names = blob_names(&out.join("blobs"));
    assert_eq!(names.len(), 3, "one blob per (oversized) chunk");
    let dest = work.path().join("dest");
    unpack(&bootstrap, &out.join("blobs"), &dest);
    assert_same_tree(&src, &dest, &exclude_none);
}

#[test]
fn prefetch_list_is_recorded_in_order() {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    let list = work.path().join("prefetch.txt");
    let paths = [
        "/files/text-2m",
        "/xattrs/file",
        "/names/with space",
        "/files/small",
    ];
    fs::write(&list, paths.join("\n") + "\n").unwrap();
    let lp = list.to_str().unwrap().to_owned();
    let s = inspect_json(&create(
        &src,
        &work.path().join("out"),
        &["--prefetch-list", &lp],
    ));
    let got: Vec<String> = s["prefetch"]
        .as_array()
        .unwrap_or_else(|| panic!("no prefetch array: {s:#}"))
        .iter()
        .map(|p| format!("/{}", p.as_str().unwrap().trim_start_matches('/')))
        .collect();
    assert_eq!(got, paths);
}

#[test]
fn prefetch_of_a_hardlink_name_records_its_inode() {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    let list = work.path().join("prefetch.txt");
    fs::write(&list, "/hl/b/c/two\n").unwrap();
    let lp = list.to_str().unwrap().to_owned();
    let s = inspect_json(&create(
        &src,
        &work.path().join("out"),
        &["--prefetch-list", &lp],
    ));
    let got = s["prefetch"].as_array().expect("prefetch array");
    assert_eq!(got.len(), 1, "{s:#}");
    let name = format!("/{}", got[0].as_str().unwrap().trim_start_matches('/'));
    // The table holds inodes: any of the inode's names identifies it.
    assert!(
        ["/hl/a/one", "/hl/b/c/two", "/hl/three"].contains(&name.as_str()),
        "{name}"
    );
}

#[test]
fn prefetch_list_with_unknown_path_fails_naming_it() {
    let work = common::tempdir();
    let src = work.path().join("src");
    make_tree(&src);
    let list = work.path().join("prefetch.txt");
    fs::write(&list, "/files/small\n/no/such/file-xyz\n").unwrap();
    let out = work.path().join("out");
    let r = rafs(args![
        "create",
        &src,
        "-o",
        &out,
        "--no-progress",
        "--prefetch-list",
        &list
    ])
    .failed();
    assert!(r.stderr.contains("no/such/file-xyz"), "{r}");
    assert!(
        !out.join("bootstrap").exists(),
        "bootstrap written despite the error"
    );
}
