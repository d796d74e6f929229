//! Cross-file read-ahead, through the filesystem core with a counting
//! backend: reading files in build order opens a read-ahead window (fewer
//! requests than files); reading them in a scattered order fetches exactly
//! the files read, one request each, nothing more; and `--readahead 0`
//! turns the window off. With a disk cache, a miss on a batch frame also
//! fetches its neighbours, and two misses in one region of the blob fetch
//! the region's batch frames (see `fetch::locality`).

mod common;

use rafs::backend::file::FileBackend;
use rafs::backend::{Backend, BackendError, BlobId};
use rafs::fetch::index::FrameIndex;
use rafs::fetch::FetchConfig;
use rafs::fs::RafsFs;
use rafs::image::Image;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Counts requests and bytes; while `closed` is set, requests wait.
struct Counting {
    inner: FileBackend,
    requests: AtomicU64,
    bytes: AtomicU64,
    largest: AtomicU64,
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Counting {
    fn close(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
}

impl Backend for Counting {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        drop(
            self.opened
                .wait_while(self.closed.lock().unwrap(), |c| *c)
                .unwrap(),
        );
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(len, Ordering::SeqCst);
        self.largest.fetch_max(len, Ordering::SeqCst);
        self.inner.read_range(id, offset, len)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

const FILES: u64 = 12;
const SIZE: usize = 300 << 10;

/// 12 incompressible files of 300 KiB: one stored frame each, in name
/// order in the blob.
fn image(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..FILES {
        let data = common::tree::random_bytes(i + 100, SIZE);
        std::fs::write(src.join(format!("f{i:02}")), data).unwrap();
    }
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, &["--chunk-size", "512K"]);
    (src, bootstrap)
}

fn mounted(bootstrap: &Path, blobs: &Path) -> (RafsFs, Arc<Counting>) {
    mounted_with(bootstrap, blobs, FetchConfig::default())
}

fn mounted_with(bootstrap: &Path, blobs: &Path, cfg: FetchConfig) -> (RafsFs, Arc<Counting>) {
    let backend = Arc::new(Counting {
        inner: FileBackend::new(blobs),
        requests: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        largest: AtomicU64::new(0),
        closed: Mutex::new(false),
        opened: Condvar::new(),
    });
    let fs = RafsFs::new(Image::open(bootstrap).unwrap(), backend.clone(), cfg).unwrap();
    (fs, backend)
}

fn read_file(fs: &RafsFs, src: &Path, i: u64) {
    let name = format!("f{i:02}");
    let ino = fs.lookup(0, name.as_bytes()).unwrap().ino;
    let got = fs.read(ino, 0, SIZE as u32).unwrap();
    assert!(got == std::fs::read(src.join(&name)).unwrap(), "{name}");
}

#[test]
fn sequential_files_share_requests_scattered_files_fetch_only_themselves() {
    let work = common::tempdir();
    let (src, bootstrap) = image(work.path());
    let blobs = work.path().join("image/blobs");
    let stored: u64 = common::blobs_in(&blobs)
        .iter()
        .map(|b| b.1.len() as u64)
        .sum();

    let (fs, backend) = mounted(&bootstrap, &blobs);
    for i in 0..FILES {
        read_file(&fs, &src, i);
    }
    let sequential = backend.requests.load(Ordering::SeqCst);
    assert!(
        sequential < FILES - 2,
        "{sequential} requests for {FILES} files read in order"
    );
    assert_eq!(backend.bytes.load(Ordering::SeqCst), stored);

    let (fs, backend) = mounted(&bootstrap, &blobs);
    let scattered = [7, 2, 10, 4, 0, 9];
    for &i in &scattered {
        read_file(&fs, &src, i);
    }
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        scattered.len() as u64
    );
    let per_file = stored / FILES;
    let bytes = backend.bytes.load(Ordering::SeqCst);
    assert!(
        bytes <= per_file * scattered.len() as u64 + 4096,
        "{bytes} bytes fetched for {} files of ~{per_file}",
        scattered.len()
    );
}

#[test]
fn readahead_zero_turns_off_the_cross_file_window_too() {
    let work = common::tempdir();
    let (src, bootstrap) = image(work.path());
    let blobs = work.path().join("image/blobs");
    let off = FetchConfig {
        readahead: 0,
        ..FetchConfig::default()
    };
    let (fs, backend) = mounted_with(&bootstrap, &blobs, off);
    let read = FILES / 2;
    for i in 0..read {
        read_file(&fs, &src, i);
    }
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        read,
        "one request per file read, nothing ahead"
    );
    let stored: u64 = common::blobs_in(&blobs)
        .iter()
        .map(|b| b.1.len() as u64)
        .sum();
    let bytes = backend.bytes.load(Ordering::SeqCst);
    assert!(
        bytes <= stored / FILES * read + 4096,
        "{bytes} bytes for {read} files"
    );
}

/// Small files: 256 of 16 KiB with 4 bits of entropy per byte (they
/// compress to about half), so 256 KiB batch frames of ~128 KiB stored,
/// about 2 MiB stored in all: two 1 MiB regions. In its own directory.
struct Small {
    work: tempfile::TempDir,
    src: PathBuf,
    bootstrap: PathBuf,
}

impl Small {
    fn new() -> Small {
        let work = common::tempdir();
        let src = work.path().join("small");
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..256u64 {
            let data: Vec<u8> = common::tree::random_bytes(i + 7, 16 << 10)
                .iter()
                .map(|b| b"abcdefghijklmnop"[usize::from(b & 15)])
                .collect();
            std::fs::write(src.join(format!("s{i:03}")), data).unwrap();
        }
        let out = work.path().join("small-image");
        let opts = ["--batch-size", "256K", "--batch-threshold", "64K"];
        let bootstrap = common::create(&src, &out, &opts);
        Small {
            work,
            src,
            bootstrap,
        }
    }

    /// Mounted with a disk cache and `tune`d settings.
    fn mount(&self, tune: impl FnOnce(&mut FetchConfig)) -> (RafsFs, Arc<Counting>) {
        let mut cfg = FetchConfig {
            cache_dir: Some(self.work.path().join("cache")),
            ..FetchConfig::default()
        };
        tune(&mut cfg);
        let blobs = self.work.path().join("small-image/blobs");
        mounted_with(&self.bootstrap, &blobs, cfg)
    }

    fn read(&self, fs: &RafsFs, i: usize) {
        let name = format!("s{i:03}");
        let ino = fs.lookup(0, name.as_bytes()).unwrap().ino;
        let got = fs.read(ino, 0, 16 << 10).unwrap();
        assert!(
            got == std::fs::read(self.src.join(&name)).unwrap(),
            "{name}"
        );
    }
}

/// The batch frames of blob 0 and, per file name, the frame holding it.
fn frames_of(fs: &RafsFs, bootstrap: &Path) -> (Vec<(u64, u32)>, Vec<usize>) {
    let image = Image::open(bootstrap).unwrap();
    let b = image.bootstrap().unwrap();
    let index = FrameIndex::build(&b);
    let bf = &index.blobs[0];
    assert!(
        bf.frames.iter().all(|f| f.batch),
        "every frame is a batch frame"
    );
    let mut of_file = Vec::new();
    for i in 0..256 {
        let ino = fs.lookup(0, format!("s{i:03}").as_bytes()).unwrap().ino;
        let c = b.file_chunks(ino).unwrap()[0];
        of_file.push(bf.find(c.compressed_offset.get()).unwrap());
    }
    (
        bf.frames.iter().map(|f| (f.coff, f.clen)).collect(),
        of_file,
    )
}

/// Waits until exactly the frames `want` are cached (polling, 20 s), then
/// checks that the backend was asked for those frames' bytes and no more.
fn wait_cached(fs: &RafsFs, backend: &Counting, frames: &[(u64, u32)], want: &[usize]) {
    let f = fs.fetcher();
    common::wait_until(
        "the speculated frames on disk",
        std::time::Duration::from_secs(20),
        || want.iter().all(|&fi| f.frame_cached(0, fi)),
    );
    let cached: Vec<usize> = (0..frames.len())
        .filter(|&fi| f.frame_cached(0, fi))
        .collect();
    assert_eq!(cached, want, "cached frames");
    let bytes: u64 = want.iter().map(|&fi| u64::from(frames[fi].1)).sum();
    assert_eq!(backend.bytes.load(Ordering::SeqCst), bytes, "bytes fetched");
}

#[test]
fn a_batch_frame_miss_fetches_its_neighbours_and_two_misses_its_region() {
    let small = Small::new();
    // Neighbours: a budget of one frame (256 KiB decompressed).
    let (fs, backend) = small.mount(|c| c.readahead = 256 << 10);
    let (frames, of_file) = frames_of(&fs, &small.bootstrap);
    assert!(frames.len() >= 12, "{} frames", frames.len());
    let region = |fi: usize| frames[fi].0 / rafs::fetch::locality::REGION;
    assert!(region(frames.len() - 1) >= 1, "two regions");
    let first = of_file[40];
    small.read(&fs, 40);
    wait_cached(&fs, &backend, &frames, &[first, first + 1]);

    // A second miss in the region, not next to the first: the region's
    // frames, and this one's neighbour (maybe in the next region).
    let far = (0..256)
        .rev()
        .find(|&i| region(of_file[i]) == region(first) && of_file[i] > first + 2);
    let far = far.expect("a file three frames on in the same region");
    small.read(&fs, far);
    let mut want: Vec<usize> = (0..frames.len())
        .filter(|&fi| region(fi) == region(first))
        .collect();
    want.push(of_file[far] + 1);
    want.dedup();
    wait_cached(&fs, &backend, &frames, &want);
}

#[test]
fn reads_joining_speculated_frames_speculate_nothing_around_them() {
    let small = Small::new();
    // One prefetch worker, and a backend that holds every request: the
    // first speculated frame keeps the worker busy, the others stay queued.
    let (fs, backend) = small.mount(|c| {
        c.readahead = 256 << 10;
        c.prefetch_threads = 1;
    });
    let (frames, of_file) = frames_of(&fs, &small.bootstrap);
    let region = |fi: usize| frames[fi].0 / rafs::fetch::locality::REGION;
    let a = 40;
    let b = (0..256)
        .rev()
        .find(|&i| region(of_file[i]) == region(of_file[a]) && of_file[i] > of_file[a] + 2)
        .expect("a file three frames on in the same region");
    let blocker = (0..256)
        .find(|&i| region(of_file[i]) != region(of_file[a]))
        .expect("a file in another region");
    backend.close(true);
    let image = Image::open(&small.bootstrap).unwrap();
    let boot = image.bootstrap().unwrap();
    let mut speculated = 0;
    for i in [blocker, a, b] {
        let ino = fs.lookup(0, format!("s{i:03}").as_bytes()).unwrap().ino;
        let mut plan = rafs::fetch::prefetch::Plan::default();
        fs.fetcher()
            .plan_chunks(boot.file_chunks(ino).unwrap(), None, &mut plan);
        assert!(fs.fetcher().speculate(&plan) > 0);
        speculated += plan.bytes;
    }
    let metrics = fs.fetcher().metrics();
    assert_eq!(metrics.speculative_bytes.get(), speculated);
    // Two reads in one region, each taking over a queued speculated frame:
    // predictions, not new misses, so no neighbour and no hot region.
    std::thread::scope(|s| {
        s.spawn(|| small.read(&fs, a));
        s.spawn(|| small.read(&fs, b));
        common::wait_until(
            "both reads took over their frames",
            std::time::Duration::from_secs(20),
            || metrics.prefetch_promoted.get() == 2,
        );
        backend.close(false);
    });
    assert_eq!(
        metrics.speculative_bytes.get(),
        speculated,
        "nothing speculated around the reads"
    );
}

#[test]
fn readahead_zero_speculates_no_neighbour_and_no_region() {
    let small = Small::new();
    let (fs, backend) = small.mount(|c| c.readahead = 0);
    let (frames, of_file) = frames_of(&fs, &small.bootstrap);
    for i in [40, 44, 100, 30] {
        small.read(&fs, i);
    }
    let mut want: Vec<usize> = [40, 44, 100, 30].iter().map(|&i| of_file[i]).collect();
    want.sort_unstable();
    want.dedup();
    wait_cached(&fs, &backend, &frames, &want);
    assert_eq!(fs.fetcher().metrics().speculative_bytes.get(), 0);
}

#[test]
fn a_read_in_stored_order_streams_without_speculating_around_its_misses() {
    let small = Small::new();
    let (fs, backend) = small.mount(|c| c.readahead = 256 << 10);
    let (frames, _) = frames_of(&fs, &small.bootstrap);
    for i in 0..256 {
        small.read(&fs, i);
    }
    let stored: u64 = frames.iter().map(|f| u64::from(f.1)).sum();
    let speculated = fs.fetcher().metrics().speculative_bytes.get();
    // The first misses, before the stream is recognised, may speculate.
    assert!(
        speculated <= 3 * u64::from(frames[0].1.max(frames[1].1).max(frames[2].1)),
        "{speculated} of {stored} stored bytes speculated"
    );
    assert!(backend.requests.load(Ordering::SeqCst) < frames.len() as u64 / 2);
}

#[test]
fn a_stream_window_counts_decompressed_bytes_too() {
    let small = Small::new();
    let (fs, backend) = small.mount(|c| c.max_request = 1 << 20);
    let (frames, _) = frames_of(&fs, &small.bootstrap);
    for i in 0..256 {
        small.read(&fs, i);
    }
    // Frames decompress to twice their stored size: a window of at most
    // 1 MiB decompressed is about 512 KiB stored, plus the missed frame.
    // And requests were coalesced: some carried several frames. (How many
    // requests there were is not asserted: the first misses' speculation
    // goes to the background lane, and a read that overtakes it takes its
    // frames over one by one, as often as the machine's load decides.)
    let frame = frames.iter().map(|f| u64::from(f.1)).max().unwrap();
    let largest = backend.largest.load(Ordering::SeqCst);
    assert!(
        largest <= (1 << 20) / 2 + 2 * frame && largest > frame,
        "a request of {largest} stored bytes (frames of {frame})"
    );
}
