//! Hostile bootstraps that validate in linear time must also be cheap to
//! use. Each case crafts a valid bootstrap that made an operation quadratic
//! (or worse) and times the operation against the same operation on a
//! normal image of about the same bootstrap size, in the same run: the
//! hostile time must stay within a generous ratio of the normal one.
//!
//! - the frame index of a blob whose one batch frame has tens of thousands
//!   of distinct, overlapping members;
//! - `getattr` of thousands of files whose chunk runs are prefixes of one
//!   long run (a valid bootstrap may share runs, so the sum of run lengths
//!   is quadratic in the table size);
//! - planning a prefetch table naming the root thousands of times, and
//!   planning those prefix runs;
//! - reads of a batch frame whose members overlap (each member almost the
//!   whole frame): a fetch must not hash every member.

use rafs::backend::file::FileBackend;
use rafs::fetch::index::FrameIndex;
use rafs::fetch::prefetch::Plan;
use rafs::fetch::FetchConfig;
use rafs::fs::RafsFs;
use rafs::image::Image;
use rafs_format::layout::*;
use rafs_format::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::FromBytes;

/// Allowed ratio of hostile to normal time.
const K: u32 = 10;
/// Allowed absolute slack (scheduling noise on a loaded machine).
const SLACK: Duration = Duration::from_millis(150);
/// Chunk (and file) size of the crafted images.
const CHUNK: u32 = 4096;
/// The blob every image references.
const BLOB_ID: [u8; 32] = [0xb1; 32];

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed())
}

fn assert_ratio(what: &str, normal: Duration, hostile: Duration) {
    eprintln!("{what}: normal {normal:?}, hostile {hostile:?}");
    assert!(
        hostile < normal * K + SLACK,
        "{what}: hostile image took {hostile:?}, normal image {normal:?} (bound {K}x + {SLACK:?})"
    );
}

fn node(mode: u32, kind: NodeKind) -> NodeSpec {
    NodeSpec {
        meta: Meta {
            mode,
            ..Meta::default()
        },
        kind,
    }
}

fn blob(compressed: u64, uncompressed: u64, compressor: u32) -> BlobInfo {
    BlobInfo {
        id: BLOB_ID,
        compressed_size: compressed.into(),
        uncompressed_size: uncompressed.into(),
        chunk_count: 1.into(),
        compressor: compressor.into(),
        flags: BLOB_ALIGNED.into(),
        reserved: [0; 4],
    }
}

/// Chunk `i` of a raw blob of `CHUNK`-byte chunks; every third one a hole.
fn raw_chunk(i: u32) -> ChunkSpec {
    if i % 3 == 2 {
        return ChunkSpec::hole(CHUNK);
    }
    let off = u64::from(i) * u64::from(CHUNK);
    ChunkSpec {
        digest: *blake3::hash(&i.to_le_bytes()).as_bytes(),
        compressed_offset: off,
        uncompressed_offset: off,
        compressed_size: CHUNK,
        uncompressed_size: CHUNK,
        ..ChunkSpec::default()
    }
}

/// Root with files `f0..` (inodes 1..), one per run, and a prefetch table.
fn image(runs: Vec<Vec<ChunkSpec>>, blob: BlobInfo, prefetch: Vec<u32>) -> Vec<u8> {
    let mut nodes = vec![node(
        S_IFDIR | 0o755,
        NodeKind::Dir {
            entries: (0..runs.len() as u32)
                .map(|i| (Name::new(format!("f{i}")).unwrap(), i + 1))
                .collect(),
            size: 0,
        },
    )];
    nodes.extend(
        runs.into_iter()
            .map(|chunks| node(S_IFREG | 0o644, NodeKind::File { chunks })),
    );
    encode(&ImageSpec {
        nodes,
        blobs: vec![blob],
        prefetch,
        chunking: Chunking {
            mode: CHUNKING_FIXED,
            min: CHUNK,
            avg: CHUNK,
            max: CHUNK,
        },
        compat_features: COMPAT_PREFETCH_LIST,
    })
    .unwrap()
}

/// `n` files of one chunk each.
fn normal(n: u32, prefetch: Vec<u32>) -> Vec<u8> {
    let size = u64::from(n) * u64::from(CHUNK);
    let runs = (0..n).map(|i| vec![raw_chunk(i)]).collect();
    image(runs, blob(size, size, COMPRESSOR_NONE), prefetch)
}

/// `n` files whose runs are the prefixes of one `n`-chunk run (file 0 has
/// them all, file `k > 0` the first `k + 1`): the same table sizes as
/// [`normal`], but the runs add up to `n * n / 2` chunks.
fn prefixes(n: u32, prefetch: Vec<u32>) -> Vec<u8> {
    let size = u64::from(n) * u64::from(CHUNK);
    let mut runs = vec![(0..n).map(raw_chunk).collect::<Vec<_>>()];
    runs.extend((1..n).map(|_| Vec::new()));
    let mut bytes = image(runs, blob(size, size, COMPRESSOR_NONE), prefetch);
    let (sb, _) = SuperBlock::ref_from_prefix(&bytes).unwrap();
    let table = sb.inodes.offset.get() as usize;
    let inode = |ino: usize| table + ino * size_of::<Inode>();
    let full = *Inode::ref_from_bytes(&bytes[inode(1)..inode(2)]).unwrap();
    for k in 1..n as usize {
        let at = inode(k + 1);
        let i = Inode::mut_from_bytes(&mut bytes[at..at + size_of::<Inode>()]).unwrap();
        i.payload_start = full.payload_start;
        i.payload_count = (k as u32 + 1).into();
        i.size = ((k as u64 + 1) * u64::from(CHUNK)).into();
    }
    seal(&mut bytes);
    Bootstrap::open(&bytes).expect("prefix runs validate");
    bytes
}

/// One file of `n` chunks, all members of one batch frame: with
/// `overlap`, member `i` starts at byte `i` and is almost the whole frame,
/// else the members tile the frame.
struct Batch {
    bootstrap: Vec<u8>,
    /// The stored frame (the whole blob).
    stored: Vec<u8>,
    /// Length of each member.
    member: u32,
}

/// A batch frame of `frame` bytes; with `real`, the frame is compressed
/// and the digests are those of its bytes (the blob is readable), else
/// digests are made up and the frame is never read.
fn batch(n: u32, frame: u32, overlap: bool, real: bool) -> Batch {
    let data: Vec<u8> = match real {
        true => (0..frame)
            .map(|i| (i.wrapping_mul(31) >> 9) as u8)
            .collect(),
        false => Vec::new(),
    };
    let stored = match real {
        true => zstd::bulk::compress(&data, 1).unwrap(),
        false => vec![0; 4096],
    };
    let member = if overlap { frame - n } else { frame / n };
    let chunks = (0..n)
        .map(|i| {
            let boff = if overlap { i } else { i * member };
            let digest = match real {
                true => blake3::hash(&data[boff as usize..(boff + member) as usize]),
                false => blake3::hash(&i.to_le_bytes()),
            };
            ChunkSpec {
                digest: *digest.as_bytes(),
                compressed_offset: 0,
                uncompressed_offset: u64::from(boff),
                compressed_size: stored.len() as u32,
                uncompressed_size: member,
                flags: CHUNK_ZSTD | CHUNK_BATCH,
                batch_offset: boff,
                batch_size: frame,
                blob_index: 0,
            }
        })
        .collect();
    let b = blob(stored.len() as u64, u64::from(frame), COMPRESSOR_ZSTD);
    Batch {
        bootstrap: image(vec![chunks], b, Vec::new()),
        stored,
        member,
    }
}

/// Writes the bootstrap and (if any) the blob; opens a memory-only
/// filesystem without read-ahead or frame LRU (every read fetches).
fn mount(dir: &Path, bootstrap: &[u8], blob_bytes: &[u8]) -> RafsFs {
    let cfg = FetchConfig {
        readahead: 0,
        memory_bytes: 0,
        ..FetchConfig::default()
    };
    mount_with(dir, bootstrap, blob_bytes, cfg)
}

fn mount_with(dir: &Path, bootstrap: &[u8], blob_bytes: &[u8], cfg: FetchConfig) -> RafsFs {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("bootstrap");
    std::fs::write(&path, bootstrap).unwrap();
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(hex::encode(BLOB_ID)), blob_bytes).unwrap();
    let image = Image::open(&path).unwrap();
    RafsFs::new(image, Arc::new(FileBackend::new(blobs)), cfg).unwrap()
}

#[test]
fn frame_index_of_overlapping_batch_members() {
    let n = 60_000;
    let normal = normal(n, vec![]);
    let tiled = batch(n, 1 << 20, false, false);
    let hostile = batch(n, 1 << 20, true, false);
    let normal_b = Bootstrap::open(&normal).unwrap();
    let tiled_b = Bootstrap::open(&tiled.bootstrap).unwrap();
    let hostile_b = Bootstrap::open(&hostile.bootstrap).unwrap();
    let (_, tn) = time(|| FrameIndex::build(&normal_b));
    let (hi, th) = time(|| FrameIndex::build(&hostile_b));
    assert_ratio("frame index", tn, th);
    assert_eq!(hi.blobs[0].members.len(), n as usize);
    assert!(!hi.blobs[0].cacheable, "overlapping members: no disk cache");
    assert!(!hi.blobs[0].frames[0].disjoint);
    let ti = FrameIndex::build(&tiled_b);
    assert_eq!(ti.blobs[0].members.len(), n as usize);
    assert!(ti.blobs[0].cacheable, "tiling members are honest");
    assert!(ti.blobs[0].frames[0].disjoint);
}

#[test]
fn getattr_of_files_sharing_prefix_runs() {
    let n = 30_000;
    let work = tempfile::tempdir().unwrap();
    let fs_n = mount(&work.path().join("n"), &normal(n, vec![]), &[]);
    let fs_h = mount(&work.path().join("h"), &prefixes(n, vec![]), &[]);
    let all = |fs: &RafsFs| -> u64 { (1..=n).map(|i| fs.getattr(i).unwrap().blocks).sum() };
    let (_, tn) = time(|| all(&fs_n));
    let (blocks, th) = time(|| all(&fs_h));
    // File k > 0 holds chunks 0..=k, file 0 all; two of three stored.
    let stored = |chunks: u64| (chunks - chunks / 3) * u64::from(CHUNK) / 512;
    let want: u64 = stored(n.into()) + (2..=u64::from(n)).map(stored).sum::<u64>();
    assert_eq!(blocks, want);
    assert_ratio("getattr", tn, th);
}

/// Both plans hold the same `count` frames, each once.
fn same_frames(a: Plan, b: Plan, count: usize) {
    let (mut a, mut b) = (a.frames, b.frames);
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a.len(), count);
    assert!(a == b, "the plans differ");
}

/// Plans the image's prefetch table.
fn plan_table(fs: &RafsFs) -> Plan {
    let b = fs.image().bootstrap().unwrap();
    let mut plan = Plan::default();
    rafs::prefetch::plan_table(fs.fetcher(), &b, &mut plan).unwrap();
    plan
}

#[test]
fn prefetch_table_naming_the_root_many_times() {
    let n = 5_000;
    let work = tempfile::tempdir().unwrap();
    let fs_n = mount(&work.path().join("n"), &normal(n, (1..=n).collect()), &[]);
    let fs_h = mount(&work.path().join("h"), &normal(n, vec![0; n as usize]), &[]);
    let (pn, tn) = time(|| plan_table(&fs_n));
    let (ph, th) = time(|| plan_table(&fs_h));
    assert_ratio("prefetch table of roots", tn, th);
    same_frames(pn, ph, (n - n / 3) as usize);
}

#[test]
fn prefetch_of_files_sharing_prefix_runs() {
    let n = 5_000;
    let work = tempfile::tempdir().unwrap();
    let fs_n = mount(&work.path().join("n"), &normal(n, vec![0]), &[]);
    let fs_h = mount(&work.path().join("h"), &prefixes(n, vec![0]), &[]);
    let (pn, tn) = time(|| plan_table(&fs_n));
    let (ph, th) = time(|| plan_table(&fs_h));
    assert_ratio("prefetch of prefix runs", tn, th);
    same_frames(pn, ph, (n - n / 3) as usize);
}

#[test]
fn reads_of_overlapping_batch_members() {
    let (n, reads) = (1024, 8);
    let work = tempfile::tempdir().unwrap();
    let normal = batch(n, 1 << 20, false, true);
    let hostile = batch(n, 1 << 20, true, true);
    let fs_n = mount(&work.path().join("n"), &normal.bootstrap, &normal.stored);
    let fs_h = mount(&work.path().join("h"), &hostile.bootstrap, &hostile.stored);
    let read = |fs: &RafsFs, member: u32| {
        for k in 0..reads {
            let at = u64::from(k * 7 % n) * u64::from(member);
            assert_eq!(fs.read(1, at, 100).unwrap().len(), 100);
        }
        fs.metrics().clone()
    };
    let (mn, tn) = time(|| read(&fs_n, normal.member));
    let (mh, th) = time(|| read(&fs_h, hostile.member));
    assert_ratio("batch reads", tn, th);
    // Nothing is kept in memory: every read fetched (and decoded) the frame.
    use rafs::fs::Metrics;
    assert!(Metrics::get(&mn.chunks.chunk_decompressions) >= u64::from(reads));
    assert!(Metrics::get(&mh.chunks.chunk_decompressions) >= u64::from(reads));
}

/// One file of `n` raw chunks of `len` bytes; with `shared`, every chunk
/// is the same `len` bytes at blob offset 0 (deduplicated data), else
/// chunk `i` is stored at `i * len`.
fn raw_file(n: u32, len: u32, shared: bool) -> (Vec<u8>, Vec<u8>) {
    let count = if shared { 1 } else { n };
    let data: Vec<u8> = (0..count * len).map(|i| (i % 251) as u8).collect();
    let chunks = (0..n)
        .map(|i| {
            let at = if shared { 0 } else { i * len };
            let bytes = &data[at as usize..(at + len) as usize];
            ChunkSpec {
                digest: *blake3::hash(bytes).as_bytes(),
                compressed_offset: at.into(),
                uncompressed_offset: at.into(),
                compressed_size: len,
                uncompressed_size: len,
                ..ChunkSpec::default()
            }
        })
        .collect();
    let mut b = blob(data.len() as u64, data.len() as u64, COMPRESSOR_NONE);
    b.flags = 0.into();
    (image(vec![chunks], b, Vec::new()), data)
}

#[test]
fn sequential_reads_of_one_byte_chunks() {
    let (n, reads): (u32, u32) = (150_000, 1500);
    let work = tempfile::tempdir().unwrap();
    let (normal, normal_blob) = raw_file(n, CHUNK, true);
    let (hostile, hostile_blob) = raw_file(n, 1, false);
    let cfg = FetchConfig::default();
    let fs_n = mount_with(&work.path().join("n"), &normal, &normal_blob, cfg.clone());
    let fs_h = mount_with(&work.path().join("h"), &hostile, &hostile_blob, cfg);
    // One chunk per read, sequential: each read may look ahead.
    let (_, tn) = time(|| {
        for k in 0..reads {
            let at = u64::from(k) * u64::from(CHUNK);
            assert_eq!(fs_n.read(1, at, CHUNK).unwrap().len(), CHUNK as usize);
        }
    });
    let (_, th) = time(|| {
        for k in 0..reads {
            assert_eq!(fs_h.read(1, u64::from(k), 1).unwrap(), [(k % 251) as u8]);
        }
    });
    assert_ratio("one-byte chunk reads", tn, th);
}

#[test]
fn batch_frames_stored_at_the_end_of_the_offset_space() {
    // A blob that claims 2^64 - 1 stored bytes, its two batch frames (of
    // two members each) in the last 8 KiB: the read-around of misses
    // (neighbours, regions of the stored space) must not overflow; each
    // read fails cleanly (the blob is not there).
    let member = |i: u32| ChunkSpec {
        digest: *blake3::hash(&i.to_le_bytes()).as_bytes(),
        compressed_offset: u64::MAX - 8192 + u64::from(i / 2) * 4096,
        uncompressed_offset: u64::from(i) * 4096,
        compressed_size: 4096,
        uncompressed_size: 4096,
        flags: CHUNK_ZSTD | CHUNK_BATCH,
        batch_offset: i % 2 * 4096,
        batch_size: 8192,
        blob_index: 0,
    };
    let b = blob(u64::MAX, 16384, COMPRESSOR_ZSTD);
    let bootstrap = image((0..4).map(|i| vec![member(i)]).collect(), b, Vec::new());
    let work = tempfile::tempdir().unwrap();
    let cfg = FetchConfig {
        cache_dir: Some(work.path().join("cache")),
        read_timeout: std::time::Duration::from_secs(5),
        retry_base: std::time::Duration::from_millis(1),
        ..FetchConfig::default()
    };
    let fs = mount_with(&work.path().join("img"), &bootstrap, &[0; 16], cfg);
    // One file of each frame: the second miss makes the region hot.
    for ino in [1, 3, 2, 4] {
        assert!(fs.read(ino, 0, 100).is_err(), "file {ino}");
    }
}
