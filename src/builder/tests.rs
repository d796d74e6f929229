//! Builder tests: whole builds read back through `rafs_format::Bootstrap`
//! and `crate::chunk::decode_chunk`. Tar-specific cases are in
//! `source_tar_tests.rs` and share the helpers here.

use super::*;
use crate::chunk::decode_chunk;
use rafs_format::layout::*;
use rafs_format::Bootstrap;
use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};

/// Options for a test build: fixed 4 KiB chunks, level 3, 2 threads.
pub(crate) fn opts(source: &Path, output: &Path) -> Options {
    Options {
        source: source.to_owned(),
        upper_layers: Vec::new(),
        output: output.to_owned(),
        chunker: ChunkerConfig::Fixed { size: 4096 },
        level: 3,
        batch: BatchConfig::OFF,
        threads: 2,
        blob_size_limit: None,
        chunk_dict: None,
        prefetch_list: None,
        progress: false,
    }
}

/// A finished build, read back.
pub(crate) struct Built {
    pub out: PathBuf,
    pub summary: Summary,
    pub boot: Vec<u8>,
}

impl Built {
    pub fn new(o: &Options) -> Built {
        let summary = build(o).expect("build");
        let boot = fs::read(o.output.join("bootstrap")).unwrap();
        Bootstrap::open(&boot).expect("valid bootstrap");
        Built {
            out: o.output.clone(),
            summary,
            boot,
        }
    }

    pub fn b(&self) -> Bootstrap<'_> {
        Bootstrap::open(&self.boot).unwrap()
    }

    pub fn ino(&self, path: &str) -> u32 {
        self.b()
            .resolve(path.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{path} missing"))
    }

    pub fn inode(&self, path: &str) -> Inode {
        *self.b().inode(self.ino(path)).unwrap()
    }

    /// A file's contents, every chunk decoded and verified.
    pub fn read(&self, path: &str) -> Vec<u8> {
        let b = self.b();
        let mut data = Vec::new();
        for c in b.file_chunks(self.ino(path)).unwrap() {
            if c.is_hole() {
                data.resize(data.len() + c.uncompressed_size.get() as usize, 0);
                continue;
            }
            let blob = b.chunk_blob(c).unwrap();
            let f = fs::File::open(self.out.join("blobs").join(hex::encode(blob.id))).unwrap();
            let mut stored = vec![0; c.compressed_size.get() as usize];
            f.read_exact_at(&mut stored, c.compressed_offset.get())
                .unwrap();
            data.extend(decode_chunk(c, &stored).unwrap());
        }
        data
    }

    pub fn chunks(&self, path: &str) -> Vec<ChunkInfo> {
        self.b().file_chunks(self.ino(path)).unwrap().to_vec()
    }

    pub fn xattr(&self, path: &str, name: &str) -> Option<Vec<u8>> {
        let b = self.b();
        b.get_xattr(self.ino(path), name.as_bytes())
            .unwrap()
            .map(<[u8]>::to_vec)
    }
}

pub(crate) use crate::util::noise;

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("text"), b"hello world\n".repeat(1000)).unwrap();
    fs::write(root.join("dir/noise"), noise(10_000, 1)).unwrap();
    fs::hard_link(root.join("dir/noise"), root.join("dir/sub/link")).unwrap();
    symlink("nowhere/at/all", root.join("dangling")).unwrap();
    symlink("x".repeat(4095), root.join("longlink")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    fs::set_permissions(root.join("text"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o1777)).unwrap();
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_symlink_file_times(root.join("text"), t, t).unwrap();
}

#[test]
fn directory_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let has_xattr = xattr::set(src.join("empty"), "user.test", b"v1").is_ok();
    let built = Built::new(&opts(&src, &tmp.path().join("out")));
    assert_eq!(built.read("text"), b"hello world\n".repeat(1000));
    assert_eq!(built.read("dir/noise"), noise(10_000, 1));
    assert_eq!(built.ino("dir/noise"), built.ino("dir/sub/link"));
    assert_eq!(built.inode("dir/noise").nlink.get(), 2);
    assert_eq!(built.inode("empty").size.get(), 0);
    let text = built.inode("text");
    assert_eq!(text.mode.get(), S_IFREG | 0o4755);
    assert_eq!(
        (text.mtime_sec.get(), text.mtime_nsec.get()),
        (1_600_000_000, 123_456_789)
    );
    assert_eq!(built.inode("dir/sub").mode.get(), S_IFDIR | 0o1777);
    assert_eq!(built.inode("fifo").mode.get(), S_IFIFO | 0o640);
    let b = built.b();
    assert_eq!(
        b.symlink_target(built.ino("dangling")).unwrap(),
        b"nowhere/at/all"
    );
    assert_eq!(b.symlink_target(built.ino("longlink")).unwrap().len(), 4095);
    if has_xattr {
        assert_eq!(
            built.xattr("empty", "user.test").as_deref(),
            Some(&b"v1"[..])
        );
    }
    // Root 0, then breadth-first in name order.
    let names: Vec<u32> = ["dangling", "dir", "empty", "fifo", "longlink", "text"]
        .iter()
        .map(|p| built.ino(p))
        .collect();
    assert_eq!(names, [1, 2, 3, 4, 5, 6]);
    assert_eq!(built.ino("dir/noise"), 7);
    assert_eq!(built.summary.files, 3);
    // Nothing but the image is left in OUTDIR.
    let mut left: Vec<_> = fs::read_dir(&built.out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["blobs", "bootstrap"]);
}

#[test]
fn device_nodes_keep_rdev() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let dev = nix::sys::stat::makedev(1, 3);
    let made = nix::sys::stat::mknod(
        &src.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        dev,
    );
    // CI runs as root with CAP_MKNOD: without it this test fails rather
    // than passing without checking anything.
    if let Err(e) = made {
        panic!(
            "mknod of a character device failed ({e}): this test needs CAP_MKNOD \
             (run the tests as root, outside a user namespace); refusing to skip silently"
        );
    }
    let built = Built::new(&opts(&src, &tmp.path().join("out")));
    let ino = built.inode("null");
    let mode = fs::symlink_metadata(src.join("null")).unwrap().mode();
    assert_eq!(ino.mode.get(), mode);
    assert_eq!(ino.rdev.get(), dev);
}

#[test]
fn dedup_within_build() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let data = noise(5 * 4096, 9);
    fs::write(src.join("a"), &data).unwrap();
    fs::write(src.join("b"), &data).unwrap();
    // Same chunks in a different file shape: 2 shared chunks + 1 new.
    fs::write(src.join("c"), [&data[..8192], &noise(100, 10)[..]].concat()).unwrap();
    let built = Built::new(&opts(&src, &tmp.path().join("out")));
    assert_eq!(built.read("b"), data);
    assert_eq!(built.chunks("a"), built.chunks("b"));
    let blob = built.b().blobs()[0];
    assert_eq!(blob.chunk_count.get(), 6);
    // 5 chunks of 4 KiB, then 100 bytes padded to the 4 KiB frame alignment.
    assert_eq!(blob.uncompressed_size.get(), 6 * 4096);
    assert_eq!(blob.flags.get(), rafs_format::layout::BLOB_ALIGNED);
    assert!(built.summary.dedup_ratio > 2.0);
    // The first occurrence (inode order: "a") owns the stored chunks.
    assert_eq!(built.chunks("a")[0].compressed_offset.get(), 0);
}

#[test]
fn zstd_only_when_smaller() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("text"), b"abcdefgh".repeat(512)).unwrap();
    fs::write(src.join("noise"), noise(4096, 2)).unwrap();
    let built = Built::new(&opts(&src, &tmp.path().join("out")));
    let text = built.chunks("text")[0];
    assert!(text.is_zstd());
    assert!(text.compressed_size.get() < 4096);
    let raw = built.chunks("noise")[0];
    assert_eq!(raw.flags.get(), 0);
    assert_eq!(raw.compressed_size.get(), raw.uncompressed_size.get());
    assert_eq!(built.read("noise"), noise(4096, 2));
}

#[test]
fn zero_chunks_and_sparse_extents_become_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let mut dense = noise(4096, 3);
    dense.extend(vec![0u8; 3 * 4096]);
    dense.extend(noise(4096, 4));
    fs::write(src.join("dense"), &dense).unwrap();
    // 5 GiB, two 8 KiB data extents: must not be read in full.
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(5 << 30).unwrap();
    f.write_all_at(&noise(8192, 5), 1 << 30).unwrap();
    f.write_all_at(&noise(8192, 6), (5 << 30) - 8192).unwrap();
    drop(f);
    let start = std::time::Instant::now();
    let built = Built::new(&opts(&src, &tmp.path().join("out")));
    assert!(start.elapsed().as_secs() < 20, "sparse file read in full?");
    let flags: Vec<bool> = built
        .chunks("dense")
        .iter()
        .map(ChunkInfo::is_hole)
        .collect();
    assert_eq!(flags, [false, true, false]);
    assert_eq!(built.read("dense"), dense);
    let chunks = built.chunks("sparse");
    assert_eq!(built.inode("sparse").size.get(), 5 << 30);
    assert!(chunks
        .iter()
        .all(|c| c.is_hole() || c.uncompressed_size.get() == 4096));
    let data: u64 = chunks
        .iter()
        .filter(|c| !c.is_hole())
        .map(|c| u64::from(c.uncompressed_size.get()))
        .sum();
    assert_eq!(data, 16384);
    let at = built
        .b()
        .chunk_index_at(built.ino("sparse"), 1 << 30)
        .unwrap()
        .unwrap();
    assert!(!chunks[at].is_hole());
    assert_eq!(built.summary.bytes_in, 16384 + 8192);
}

#[test]
fn reproducible_across_runs_and_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    for i in 0..20 {
        fs::write(
            src.join(format!("f{i}")),
            noise(20_000 + i * 777, i as u64 % 5),
        )
        .unwrap();
    }
    let mut images = Vec::new();
    for (i, threads) in [1usize, 2, 2, 4].into_iter().enumerate() {
        let mut o = opts(&src, &tmp.path().join(format!("out{i}")));
        o.threads = threads;
        o.chunker = ChunkerConfig::Cdc {
            min: 1024,
            avg: 4096,
            max: 16384,
        };
        let built = Built::new(&o);
        let blob = built.b().blobs()[0].id;
        images.push((built.boot.clone(), blob));
    }
    assert!(images.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn blob_size_limit_splits_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), noise(10 * 4096, 11)).unwrap();
    let mut o = opts(&src, &tmp.path().join("out"));
    o.blob_size_limit = Some(3 * 4096 + 100);
    let built = Built::new(&o);
    let blobs = built.b().blobs().to_vec();
    let sizes: Vec<u64> = blobs.iter().map(|b| b.compressed_size.get()).collect();
    assert_eq!(sizes, [3 * 4096, 3 * 4096, 3 * 4096, 4096]);
    assert_eq!(built.read("a"), noise(10 * 4096, 11));
    assert_eq!(fs::read_dir(built.out.join("blobs")).unwrap().count(), 4);
    // A chunk larger than the limit gets a blob of its own.
    o.output = tmp.path().join("out2");
    o.blob_size_limit = Some(1000);
    let built = Built::new(&o);
    assert_eq!(built.b().blobs().len(), 10);
}

#[test]
fn chunk_dict_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(a.join("x"), noise(8 * 4096, 21)).unwrap();
    fs::write(a.join("unused"), noise(4096, 22)).unwrap();
    fs::write(b.join("y"), [noise(8 * 4096, 21), noise(4096, 23)].concat()).unwrap();
    let out = tmp.path().join("out");
    let dict = Built::new(&opts(&a, &out.join("dict")));
    let mut o = opts(&b, &out.join("b"));
    o.chunk_dict = Some(out.join("dict/bootstrap"));
    let built = Built::new(&o);
    let blobs = built.b().blobs().to_vec();
    assert_eq!(blobs.len(), 2);
    assert_eq!(blobs[0], dict.b().blobs()[0]);
    assert_eq!(built.summary.stored_bytes, 4096);
    // Serve the dictionary's blob from the same blob directory.
    let dict_blob = hex::encode(blobs[0].id);
    fs::copy(
        out.join("dict/blobs").join(&dict_blob),
        out.join("b/blobs").join(&dict_blob),
    )
    .unwrap();
    assert_eq!(
        built.read("y"),
        [noise(8 * 4096, 21), noise(4096, 23)].concat()
    );
    // An unreferenced dictionary adds no blob.
    let mut o = opts(&a, &out.join("c"));
    fs::remove_file(a.join("x")).unwrap();
    fs::write(a.join("unused"), noise(4096, 99)).unwrap();
    o.chunk_dict = Some(out.join("dict/bootstrap"));
    assert_eq!(Built::new(&o).b().blobs().len(), 1);
}

#[test]
fn prefetch_list_fills_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let list = tmp.path().join("list");
    fs::write(&list, "# comment\n\n/text\ndir/noise\t0-4096\n  \ndir\n").unwrap();
    let mut o = opts(&src, &tmp.path().join("out"));
    o.prefetch_list = Some(list.clone());
    let built = Built::new(&o);
    let got: Vec<u32> = built.b().prefetch().iter().map(|p| p.ino.get()).collect();
    assert_eq!(
        got,
        [built.ino("text"), built.ino("dir/noise"), built.ino("dir")]
    );
    assert_ne!(
        built.b().superblock().compat_features.get() & COMPAT_PREFETCH_LIST,
        0
    );

    fs::write(&list, "text\n/not/there\n").unwrap();
    o.output = tmp.path().join("out2");
    let err = build(&o).unwrap_err();
    assert!(err.to_string().contains("/not/there"), "{err}");
    assert!(
        !o.output.exists(),
        "failed build left {}",
        o.output.display()
    );
    // The list format is shared with --record-access: bad ranges are errors.
    fs::write(
        &list,
        "text	9-3
",
    )
    .unwrap();
    let err = build(&o).unwrap_err();
    assert!(matches!(err, BuildError::PrefetchList(_)), "{err}");
}

#[test]
fn failure_leaves_existing_outdir_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    sample_tree(&src);
    let out = tmp.path().join("out");
    fs::create_dir_all(out.join("blobs")).unwrap();
    fs::write(out.join("blobs/keep"), b"shared").unwrap();
    let mut o = opts(&src, &out);
    o.prefetch_list = Some(tmp.path().join("no-such-list"));
    let err = build(&o).unwrap_err();
    assert!(err.to_string().contains("no-such-list"), "{err}");
    let list = tmp.path().join("list");
    fs::write(&list, "missing\n").unwrap();
    o.prefetch_list = Some(list);
    assert!(matches!(build(&o), Err(BuildError::PrefetchMissing { .. })));
    let left: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["blobs"]);
    let blobs: Vec<_> = fs::read_dir(out.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(blobs, ["keep"]);
}

#[test]
fn missing_source_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(&tmp.path().join("nope"), &tmp.path().join("out"));
    let err = build(&o).unwrap_err();
    assert!(matches!(err, BuildError::Io { .. }));
    assert!(err.to_string().contains("nope"));
    assert!(!tmp.path().join("out").exists());
}

fn args(extra: &[&str]) -> Result<Options> {
    let argv: Vec<&str> = ["src", "-o", "out"].iter().chain(extra).copied().collect();
    Options::from_args(&crate::cli::tool_args::parse_create(&argv).expect("parse"))
}

#[test]
fn option_parsing_and_validation() {
    let o = args(&[]).unwrap();
    let cdc_default = ChunkerConfig::Cdc {
        min: 256 << 10,
        avg: 1 << 20,
        max: 4 << 20,
    };
    assert_eq!(o.chunker, cdc_default);
    let o = args(&["--chunker", "fixed"]).unwrap();
    assert_eq!(o.chunker, ChunkerConfig::Fixed { size: 1 << 20 });
    assert_eq!(args(&["--cdc-avg", "1M"]).unwrap().chunker, cdc_default);
    assert_eq!(o.level, DEFAULT_LEVEL);
    assert_eq!(
        o.batch,
        BatchConfig {
            frame_size: 256 << 10,
            threshold: 128 << 10,
            level: DEFAULT_LEVEL
        }
    );
    assert_eq!(
        args(&["--batch-size", "0"]).unwrap().batch,
        BatchConfig::OFF
    );
    let o = args(&["--batch-size", "64K", "--batch-level", "15"]).unwrap();
    assert_eq!((o.batch.threshold, o.batch.level), (64 << 10, 15));
    let o = args(&["--chunker", "cdc", "--cdc-avg", "64K"]).unwrap();
    assert_eq!(
        o.chunker,
        ChunkerConfig::Cdc {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10
        }
    );
    let o = args(&["--chunk-size", "64K", "--blob-size-limit", "1MiB"]).unwrap();
    assert_eq!(o.chunker, ChunkerConfig::Fixed { size: 65536 });
    assert_eq!(o.blob_size_limit, Some(1 << 20));
    for bad in [
        &["--chunk-size", "3000"][..],
        &["--chunk-size", "32M"],
        &["--chunker", "cdc", "--cdc-min", "1M", "--cdc-avg", "64K"],
        &["--chunker", "cdc", "--cdc-max", "32M"],
        &["--chunker", "fixed", "--cdc-avg", "64K"],
        &["--chunk-size", "64K", "--cdc-avg", "64K"],
        &["--chunker", "cdc", "--chunk-size", "64K"],
        &["--compression-level", "99"],
        &["--threads", "0"],
        &["--batch-size", "32M"],
        &["--batch-threshold", "2M"],
        &["--batch-threshold", "0"],
        &["--batch-level", "99"],
    ] {
        assert!(
            matches!(args(bad), Err(BuildError::BadOptions(_))),
            "{bad:?}"
        );
    }
}
