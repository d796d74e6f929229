//! Whole builds with batch frames, read back through
//! `crate::chunk::decode_chunk` (helpers from `super::super::tests`).

use super::super::tests::{noise, opts, Built};
use super::super::*;
use rafs_format::layout::*;
use std::fs;

/// 16 KiB frames; chunks under 4 KiB (small files, tails of the fixed
/// 4 KiB chunking) are batched.
fn batched(src: &Path, out: &Path) -> Options {
    let mut o = opts(src, out);
    o.batch = BatchConfig {
        frame_size: 16384,
        threshold: 4096,
        level: 3,
    };
    o
}

fn text(i: usize, len: usize) -> Vec<u8> {
    format!("file {i}: the quick brown fox jumps over the lazy dog\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// 40 small text files, two larger files with tails, an ELF-looking file.
fn small_tree(src: &Path) -> Vec<(String, Vec<u8>)> {
    fs::create_dir_all(src.join("d")).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("d/s{i:02}"), text(i, 300 + i * 97)))
        .collect();
    files.push(("big1".into(), text(100, 3 * 4096 + 1000)));
    files.push(("big2".into(), text(101, 4096 + 17)));
    files.push(("elf".into(), [&b"\x7fELF"[..], &text(102, 900)].concat()));
    for (p, data) in &files {
        fs::write(src.join(p), data).unwrap();
    }
    files
}

fn batch_members(b: &Built) -> usize {
    b.b().chunks().iter().filter(|c| c.is_batch()).count()
}

#[test]
fn members_decode_to_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = small_tree(&src);
    let built = Built::new(&batched(&src, &tmp.path().join("out")));
    for (p, data) in &files {
        assert_eq!(&built.read(p), data, "{p}");
    }
    let sb = built.b().superblock().incompat_features.get();
    assert_ne!(sb & INCOMPAT_BATCH, 0);
    assert!(built.summary.frames >= 2, "{:?}", built.summary);
    // Small files are single batch members; a tail is one too.
    assert!(built.chunks("d/s00")[0].is_batch());
    let big1 = built.chunks("big1");
    assert!(!big1[0].is_batch() && big1[3].is_batch());
    // `rafs inspect --file --json` gives a member's frame (batch_size).
    let d = crate::inspect::file_detail(&built.b(), b"big1").unwrap();
    let (whole, tail) = (&d.chunks[0], &d.chunks[3]);
    assert_eq!((whole.batch_offset, whole.batch_size), (0, 0));
    assert_eq!(tail.batch_size, big1[3].batch_size.get());
    assert_eq!(tail.batch_offset, big1[3].batch_offset.get());
    assert!(tail.batch_size > tail.length);
    // Frames hold at most 16 KiB; members lie inside them.
    for c in built.b().chunks().iter().filter(|c| c.is_batch()) {
        assert!(c.batch_size.get() <= 16384);
        assert!(c.batch_offset.get() + c.uncompressed_size.get() <= c.batch_size.get());
        assert!(c.compressed_size.get() < c.batch_size.get());
    }
    // The ELF file has a frame of its own class.
    let elf = built.chunks("elf")[0];
    let s00 = built.chunks("d/s00")[0];
    assert_ne!(elf.compressed_offset.get(), s00.compressed_offset.get());
}

#[test]
fn reproducible_with_batching_across_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    fs::write(src.join("noise"), noise(50_000, 3)).unwrap();
    fs::write(src.join("zeros"), vec![0u8; 3000]).unwrap();
    let mut images = Vec::new();
    for (i, threads) in [1usize, 2, 3, 4, 2].into_iter().enumerate() {
        let mut o = batched(&src, &tmp.path().join(format!("out{i}")));
        o.threads = threads;
        let built = Built::new(&o);
        assert!(batch_members(&built) > 10);
        let blob = fs::read(
            built
                .out
                .join("blobs")
                .join(hex::encode(built.b().blobs()[0].id)),
        );
        images.push((built.boot.clone(), blob.unwrap()));
    }
    assert!(images.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn duplicates_within_and_across_frames_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let dup = text(7, 1500);
    // a0 and a1 share a frame; z9 comes after several frames of fillers.
    fs::write(src.join("a0"), &dup).unwrap();
    fs::write(src.join("a1"), &dup).unwrap();
    for i in 0..30 {
        fs::write(src.join(format!("m{i:02}")), text(i + 10, 2000)).unwrap();
    }
    fs::write(src.join("z9"), &dup).unwrap();
    let built = Built::new(&batched(&src, &tmp.path().join("out")));
    let a0 = built.chunks("a0")[0];
    assert!(a0.is_batch());
    assert_eq!(built.chunks("a1")[0], a0);
    assert_eq!(built.chunks("z9")[0], a0);
    assert_eq!(built.read("z9"), dup);
    // 31 distinct small chunks stored, each once.
    assert_eq!(built.b().blobs()[0].chunk_count.get(), 31);
    assert_eq!(built.summary.batched_chunks, 31);
}

#[test]
fn incompressible_small_files_are_stored_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("n{i}")), noise(1000 + i, 40 + i as u64)).unwrap();
    }
    // Looks gzip-compressed: never batched, whatever follows the magic.
    fs::write(src.join("gz"), [&b"\x1f\x8b"[..], &text(1, 1000)].concat()).unwrap();
    // One compressible file alone in its frame: a plain chunk.
    fs::write(src.join("t"), [&b"\x7fELF"[..], &text(2, 1000)].concat()).unwrap();
    let built = Built::new(&batched(&src, &tmp.path().join("out")));
    assert_eq!(batch_members(&built), 0);
    assert_eq!(built.summary.frames, 0);
    for i in 0..6 {
        let c = built.chunks(&format!("n{i}"))[0];
        assert_eq!(c.flags.get(), 0);
        assert_eq!(built.read(&format!("n{i}")), noise(1000 + i, 40 + i as u64));
    }
    assert!(built.chunks("gz")[0].is_zstd());
    assert!(built.chunks("t")[0].is_zstd());
    let sb = built.b().superblock().incompat_features.get();
    assert_eq!(sb & INCOMPAT_BATCH, 0);
}

#[test]
fn batch_size_zero_sets_no_batch_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = small_tree(&src);
    let mut o = batched(&src, &tmp.path().join("out"));
    o.batch = BatchConfig::OFF;
    let built = Built::new(&o);
    assert_eq!(batch_members(&built), 0);
    assert!(built
        .b()
        .chunks()
        .iter()
        .all(|c| c.batch_offset.get() == 0 && c.batch_size.get() == 0));
    assert_eq!(
        built.b().superblock().incompat_features.get() & INCOMPAT_BATCH,
        0
    );
    assert_eq!(built.read("d/s05"), files[5].1);
}

#[test]
fn dictionary_batch_members_are_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let files = small_tree(&a);
    fs::create_dir(&b).unwrap();
    for (p, data) in files.iter().take(5) {
        fs::write(b.join(p.replace("d/", "")), data).unwrap();
    }
    fs::write(b.join("new"), text(999, 700)).unwrap();
    let out = tmp.path().join("out");
    let dict = Built::new(&batched(&a, &out.join("dict")));
    let mut o = batched(&b, &out.join("b"));
    o.chunk_dict = Some(out.join("dict/bootstrap"));
    let built = Built::new(&o);
    // "new" (stored alone: one member) opens blob 0; the dictionary's
    // blob joins the table at its first use.
    assert_eq!(built.b().blobs()[1], dict.b().blobs()[0]);
    assert_eq!(built.summary.batched_chunks, 0);
    let reused = built.chunks("s00")[0];
    let want = dict.chunks("d/s00")[0];
    assert_eq!((reused.blob_index.get(), reused.digest), (1, want.digest));
    assert_eq!(
        (
            reused.compressed_offset,
            reused.batch_offset,
            reused.batch_size
        ),
        (want.compressed_offset, want.batch_offset, want.batch_size)
    );
    assert!(built.chunks("s00")[0].is_batch());
    let dict_blob = hex::encode(dict.b().blobs()[0].id);
    fs::copy(
        out.join("dict/blobs").join(&dict_blob),
        out.join("b/blobs").join(&dict_blob),
    )
    .unwrap();
    for (p, data) in files.iter().take(5) {
        assert_eq!(&built.read(&p.replace("d/", "")), data);
    }
    assert_eq!(built.read("new"), text(999, 700));
}

#[test]
fn frames_never_straddle_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = small_tree(&src);
    let mut o = batched(&src, &tmp.path().join("out"));
    o.blob_size_limit = Some(600);
    let built = Built::new(&o);
    assert!(built.b().blobs().len() > 2);
    for (p, data) in &files {
        assert_eq!(&built.read(p), data, "{p}");
    }
}
