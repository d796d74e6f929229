//! Unit tests of the fetch path on the hand-built sample image, with
//! instrumented backends: single flight, coalescing, retries, deadlines.

use super::FetchConfig;
use crate::backend::file::FileBackend;
use crate::backend::{Backend, BackendError, BlobId};
use crate::fs::{FsError, RafsFs};
use crate::image::Image;
use crate::testimage::{ino, noise, sample, TestImage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A file backend that counts calls and bytes, sleeps before answering,
/// and fails the first calls with the queued errors.
struct Instrumented {
    inner: FileBackend,
    calls: AtomicU64,
    bytes: AtomicU64,
    delay: Duration,
    fail: Mutex<Vec<BackendError>>,
}

impl Instrumented {
    fn new(t: &TestImage, delay: Duration, fail: Vec<BackendError>) -> Arc<Instrumented> {
        Arc::new(Instrumented {
            inner: FileBackend::new(&t.blobs),
            calls: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            delay,
            fail: Mutex::new(fail),
        })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Backend for Instrumented {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if let Some(e) = self.fail.lock().unwrap().pop() {
            return Err(e);
        }
        self.bytes.fetch_add(len, Ordering::SeqCst);
        self.inner.read_range(id, offset, len)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

fn fs_with(t: &TestImage, backend: Arc<Instrumented>, cfg: FetchConfig) -> RafsFs {
    RafsFs::new(Image::open(&t.bootstrap).unwrap(), backend, cfg).unwrap()
}

fn no_readahead() -> FetchConfig {
    FetchConfig {
        readahead: 0,
        ..FetchConfig::default()
    }
}

fn suid_data() -> Vec<u8> {
    [noise(4096, 2), noise(4096, 3)].concat()
}

#[test]
fn concurrent_readers_of_a_missing_chunk_share_one_request() {
    let t = sample();
    let backend = Instrumented::new(&t, Duration::from_millis(200), Vec::new());
    let fs = fs_with(&t, backend.clone(), no_readahead());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert_eq!(fs.read(ino::SUID, 0, 4096).unwrap(), noise(4096, 2)));
        }
    });
    assert_eq!(backend.calls(), 1);
}

#[test]
fn adjacent_missing_chunks_are_fetched_in_one_request_up_to_the_limit() {
    let t = sample();
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    let fs = fs_with(&t, backend.clone(), no_readahead());
    assert_eq!(fs.read(ino::SUID, 0, 8192).unwrap(), suid_data());
    assert_eq!(backend.calls(), 1, "two adjacent chunks, one request");
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    let small = FetchConfig {
        max_request: 4097,
        ..no_readahead()
    };
    let fs = fs_with(&t, backend.clone(), small);
    assert_eq!(fs.read(ino::SUID, 0, 8192).unwrap(), suid_data());
    assert_eq!(backend.calls(), 2, "over max_request: one request each");
}

#[test]
fn readahead_fetches_the_next_chunks_with_the_first_miss() {
    let t = sample();
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    let fs = fs_with(&t, backend.clone(), FetchConfig::default());
    assert_eq!(fs.read(ino::SUID, 0, 100).unwrap(), noise(4096, 2)[..100]);
    // The second chunk came with the first (read-ahead): no new request.
    assert_eq!(fs.read(ino::SUID, 4096, 4096).unwrap(), noise(4096, 3));
    assert_eq!(backend.calls(), 1);
}

fn status(code: u16) -> BackendError {
    BackendError::Status {
        blob: BlobId([0; 32]),
        url: "http://x/".into(),
        status: code,
    }
}

/// A backend whose first call waits, after saying it arrived, until the
/// test opens the gate.
struct Gated {
    inner: Arc<Instrumented>,
    arrived: Mutex<Option<mpsc::Sender<()>>>,
    gate: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Backend for Gated {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let arrived = self.arrived.lock().unwrap().take();
        let gate = self.gate.lock().unwrap().take();
        if let (Some(arrived), Some(gate)) = (arrived, gate) {
            let _ = arrived.send(());
            let _ = gate.recv_timeout(Duration::from_secs(20));
        }
        self.inner.read_range(id, offset, len)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

/// Whether thread `tid` of this process is asleep (blocked in a wait).
fn asleep(tid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('S')))
        .unwrap_or(false)
}

/// Runs `fs.read(ino, 0, size)` on a thread with the backend's first call
/// held until the reader waits for it: the reader that launched a fetch is
/// then always the one that gets its result. (Unheld, a fetch that fails
/// before its reader starts waiting leaves no flight behind, and the
/// reader launches the frame again: a second backend call.)
fn read_with_reader_waiting(
    t: &TestImage,
    backend: Arc<Instrumented>,
    size: u32,
) -> (RafsFs, Result<Vec<u8>, FsError>) {
    let (arrived_tx, arrived) = mpsc::channel();
    let (open, gate) = mpsc::channel();
    let gated = Arc::new(Gated {
        inner: backend,
        arrived: Mutex::new(Some(arrived_tx)),
        gate: Mutex::new(Some(gate)),
    });
    let fs = RafsFs::new(Image::open(&t.bootstrap).unwrap(), gated, no_readahead()).unwrap();
    let r = std::thread::scope(|s| {
        let (tid_tx, tid) = mpsc::channel();
        let fs = &fs;
        let reader = s.spawn(move || {
            // SAFETY: gettid(2) has no arguments and cannot fail.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            fs.read(ino::SUID, 0, size)
        });
        let tid = tid.recv().unwrap();
        arrived
            .recv_timeout(Duration::from_secs(20))
            .expect("the read sent no backend request");
        crate::testimage::wait_until("the reader to wait", Duration::from_secs(20), || {
            asleep(tid)
        });
        open.send(()).unwrap();
        reader.join().unwrap()
    });
    (fs, r)
}

#[test]
fn transient_errors_are_retried_and_final_ones_are_not() {
    let t = sample();
    let backend = Instrumented::new(&t, Duration::ZERO, vec![status(429), status(503)]);
    let (fs, r) = read_with_reader_waiting(&t, backend.clone(), 8192);
    assert_eq!(r.unwrap(), suid_data());
    assert_eq!(backend.calls(), 3);
    assert_eq!(fs.fetcher().metrics().retries.get(), 2);
    let backend = Instrumented::new(&t, Duration::ZERO, vec![status(404), status(403)]);
    let (fs, r) = read_with_reader_waiting(&t, backend.clone(), 8192);
    assert!(matches!(r, Err(FsError::Data { .. })), "{r:?}");
    assert_eq!(backend.calls(), 1, "403 is final");
    assert_eq!(fs.fetcher().metrics().retries.get(), 0);
}

#[test]
fn a_read_fails_at_its_deadline_even_if_the_backend_hangs() {
    let t = sample();
    let backend = Instrumented::new(&t, Duration::from_secs(3), Vec::new());
    let cfg = FetchConfig {
        read_timeout: Duration::from_millis(300),
        ..no_readahead()
    };
    let fs = fs_with(&t, backend, cfg);
    let t0 = Instant::now();
    let r = fs.read(ino::SUID, 0, 10);
    assert!(matches!(r, Err(FsError::Data { .. })), "{r:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(fs.fetcher().metrics().read_timeouts.get(), 1);
}

#[test]
fn prefetch_fetches_a_plan_once_in_the_background_lane() {
    let t = sample();
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    let fs = fs_with(&t, backend.clone(), no_readahead());
    let f = fs.fetcher();
    let plan = f.plan_all();
    assert!(plan.frames.len() >= 3, "{plan:?}");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut calls = 0;
    let report = f.prefetch(&plan, &stop, &mut |_| calls += 1);
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.fetched, plan.frames.len() as u64);
    assert_eq!(report.fetched_bytes, plan.bytes);
    assert!(calls >= 1);
    assert_eq!(f.metrics().prefetch_bytes.get(), plan.bytes);
    // Everything is cached now: a second run and the reads fetch nothing.
    let before = backend.calls();
    let again = f.prefetch(&plan, &stop, &mut |_| {});
    assert_eq!((again.cached, again.fetched), (plan.frames.len() as u64, 0));
    assert_eq!(fs.read(ino::SUID, 0, 8192).unwrap(), suid_data());
    assert_eq!(backend.calls(), before);
    assert!(f.metrics().prefetch_hits.get() >= 1);
}

/// An image of one file, `/f`, of `n` 4 KiB chunks of noise, made by the
/// builder (fixed 4 KiB chunks, no batching: one frame per chunk).
fn one_file_image(n: usize) -> TestImage {
    file_image(&noise_chunks(n))
}

/// `n` chunks of 4 KiB of noise, the `i`th `noise(4096, 100 + i)`.
fn noise_chunks(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| noise(4096, 100 + i as u64)).collect()
}

/// `n` chunks of 4 KiB that compress about 4× (2 bits of noise a byte).
fn compressible(n: usize) -> Vec<u8> {
    let bytes = noise_chunks(n).into_iter();
    bytes.map(|b| b"abcd"[usize::from(b & 3)]).collect()
}

fn file_image(data: &[u8]) -> TestImage {
    file_image_mode(data, 0o644)
}

/// An image of one file `f` holding `data`, with permission bits `mode`.
fn file_image_mode(data: &[u8], mode: u32) -> TestImage {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), data).unwrap();
    std::fs::set_permissions(src.join("f"), std::fs::Permissions::from_mode(mode)).unwrap();
    let out = dir.path().join("out");
    crate::builder::build(&crate::builder::tests::opts(&src, &out)).unwrap();
    TestImage {
        bootstrap: out.join("bootstrap"),
        blobs: out.join("blobs"),
        blob_id: None,
        dir,
    }
}

/// Waits (polling, at most 20 s) until every chunk of file `ino` is cached.
fn wait_all_cached(fs: &RafsFs, ino: u32) {
    let b = fs.image().bootstrap().unwrap();
    let run = b.file_chunks(ino).unwrap();
    crate::testimage::wait_until("the whole file cached", Duration::from_secs(20), || {
        run.iter().all(|c| fs.fetcher().chunk_cached(c))
    });
}

fn cached(t: &TestImage, tune: impl FnOnce(&mut FetchConfig)) -> FetchConfig {
    let mut cfg = FetchConfig {
        cache_dir: Some(t.dir.path().join("cache")),
        readahead: 0,
        ..FetchConfig::default()
    };
    tune(&mut cfg);
    cfg
}

#[test]
fn a_file_read_at_two_places_apart_is_fetched_whole_in_the_background() {
    let t = one_file_image(64);
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    let fs = fs_with(&t, backend.clone(), cached(&t, |_| {}));
    let f = fs.lookup(0, b"f").unwrap().ino;
    assert_eq!(fs.read(f, 0, 4096).unwrap(), noise(4096, 100));
    assert_eq!(fs.fetcher().metrics().speculative_bytes.get(), 0);
    assert_eq!(fs.read(f, 40 * 4096, 4096).unwrap(), noise(4096, 140));
    assert!(fs.fetcher().metrics().speculative_bytes.get() > 0);
    wait_all_cached(&fs, f); // the rest of the file was fetched
    let calls = backend.calls();
    assert_eq!(fs.read(f, 20 * 4096, 4096).unwrap(), noise(4096, 120));
    assert_eq!(backend.calls(), calls, "a third place is a hit");
    // Each frame came once (a frame the read promoted out of the
    // background job may also lie inside that job's range: 4 KiB more).
    let blob_size: u64 = std::fs::read_dir(&t.blobs)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let fetched = backend.bytes.load(Ordering::SeqCst);
    assert!(
        (blob_size..=blob_size + 4096).contains(&fetched),
        "{fetched}"
    );
}

#[test]
fn no_speculation_without_a_disk_cache_when_off_or_sequential_or_too_large() {
    let t = one_file_image(32);
    let cases: [(&str, FetchConfig, &[u64]); 4] = [
        ("memory only", no_readahead(), &[0, 20]),
        ("--widen 0", cached(&t, |c| c.widen = 0), &[0, 20]),
        ("sequential", cached(&t, |_| {}), &[0, 1, 2, 3]),
        ("too large", cached(&t, |c| c.widen = 4096), &[0, 20]),
    ];
    for (what, cfg, at) in cases {
        let _ = std::fs::remove_dir_all(t.dir.path().join("cache"));
        let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
        let fs = fs_with(&t, backend.clone(), cfg);
        let f = fs.lookup(0, b"f").unwrap().ino;
        for &k in at {
            let got = fs.read(f, k * 4096, 4096).unwrap();
            assert_eq!(got, noise(4096, 100 + k), "{what}");
        }
        let m = fs.fetcher().metrics();
        assert_eq!(m.speculative_bytes.get(), 0, "{what}");
        assert_eq!(backend.calls(), at.len() as u64, "{what}");
    }
}

#[test]
fn a_small_file_read_from_its_start_is_fetched_whole_at_once() {
    let data = compressible(8);
    let t = file_image(&data);
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    // In-file read-ahead covers 16 KiB of the 32 KiB file; the whole file
    // fits the budget of a small file (the read-ahead, in stored bytes).
    let cfg = cached(&t, |c| c.readahead = 16 << 10);
    let fs = fs_with(&t, backend.clone(), cfg);
    let f = fs.lookup(0, b"f").unwrap().ino;
    assert_eq!(fs.read(f, 0, 4096).unwrap(), data[..4096]);
    assert!(fs.fetcher().metrics().speculative_bytes.get() > 0);
    wait_all_cached(&fs, f);
    let calls = backend.calls();
    assert_eq!(fs.read(f, 7 * 4096, 4096).unwrap(), data[7 * 4096..]);
    assert_eq!(backend.calls(), calls);
}

#[test]
fn an_executable_read_from_its_start_is_fetched_whole_at_once() {
    // 128 KiB stored in about 32 KiB: more than the read-ahead (16 KiB
    // stored), within four times it. An executable is fetched whole on
    // its first miss; the same file without an execute bit is not (until
    // a second miss apart).
    let data = compressible(32);
    for (mode, whole) in [(0o755, true), (0o644, false)] {
        let t = file_image_mode(&data, mode);
        let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
        let fs = fs_with(&t, backend.clone(), cached(&t, |c| c.readahead = 16 << 10));
        let f = fs.lookup(0, b"f").unwrap().ino;
        assert_eq!(fs.read(f, 0, 4096).unwrap(), data[..4096]);
        let speculated = fs.fetcher().metrics().speculative_bytes.get();
        assert_eq!(speculated > 0, whole, "mode {mode:o}: {speculated}");
        if whole {
            wait_all_cached(&fs, f);
            let calls = backend.calls();
            assert_eq!(fs.read(f, 31 * 4096, 4096).unwrap(), data[31 * 4096..]);
            assert_eq!(backend.calls(), calls, "the end of the file is a hit");
        }
    }
}

#[test]
fn a_miss_on_a_frame_in_flight_is_no_evidence_of_locality() {
    let t = one_file_image(8);
    // Every request takes a minute: a speculated frame stays in flight
    // for the whole test.
    let backend = Instrumented::new(&t, Duration::from_secs(60), Vec::new());
    let fs = fs_with(&t, backend, cached(&t, |_| {}));
    let f = fs.lookup(0, b"f").unwrap().ino;
    let b = fs.image().bootstrap().unwrap();
    let run = b.file_chunks(f).unwrap();
    let fetcher = fs.fetcher();
    let plan_of = |i: usize| {
        let mut plan = super::prefetch::Plan::default();
        fetcher.plan_chunks(&run[i..=i], None, &mut plan);
        plan
    };
    let need: Vec<(u32, usize)> = (1..4).map(|i| plan_of(i).frames[0]).collect();
    assert_eq!(fetcher.not_in_flight(&need), need, "nothing in flight yet");
    // Chunk 2's frame speculated (a neighbour, say): a read that finds it
    // joins that flight, and only its other frames count as misses.
    assert!(fetcher.speculate(&plan_of(2)) > 0);
    assert_eq!(fetcher.not_in_flight(&need), vec![need[0], need[2]]);
}

#[test]
fn frames_this_process_wrote_are_read_back_without_a_second_check() {
    let t = one_file_image(16);
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    // No memory LRU: every read after the commit is a disk hit.
    let fs = fs_with(&t, backend.clone(), cached(&t, |c| c.memory_bytes = 0));
    let f = fs.lookup(0, b"f").unwrap().ino;
    for k in 0..16 {
        assert_eq!(fs.read(f, k * 4096, 4096).unwrap(), noise(4096, 100 + k));
    }
    assert!(fs.fetcher().flush(Duration::from_secs(20)), "committed");
    let calls = backend.calls();
    for k in 0..16 {
        assert_eq!(fs.read(f, k * 4096, 4096).unwrap(), noise(4096, 100 + k));
    }
    let m = fs.fetcher().metrics();
    assert_eq!(backend.calls(), calls, "served by the disk");
    assert!(m.cache_hits.get() >= 16);
    assert_eq!(
        m.cache_verified.get(),
        0,
        "written verified: not read back to check"
    );
    drop(fs);
    // Another process (a new fetcher) checks each frame once.
    let fs = fs_with(&t, backend.clone(), cached(&t, |c| c.memory_bytes = 0));
    for k in 0..16 {
        assert_eq!(fs.read(f, k * 4096, 4096).unwrap(), noise(4096, 100 + k));
    }
    assert_eq!(backend.calls(), calls);
    assert_eq!(fs.fetcher().metrics().cache_verified.get(), 16);
}

#[test]
fn memory_keeps_the_frames_the_disk_does_not_hold() {
    let t = one_file_image(16);
    let backend = Instrumented::new(&t, Duration::ZERO, Vec::new());
    let read_all = |fs: &RafsFs, f| {
        for k in 0..16 {
            assert_eq!(fs.read(f, k * 4096, 4096).unwrap(), noise(4096, 100 + k));
        }
    };
    // With a disk cache: once written, a frame leaves the LRU (the disk
    // serves it), and the reads that follow are disk hits.
    let fs = fs_with(&t, backend.clone(), cached(&t, |_| {}));
    let f = fs.lookup(0, b"f").unwrap().ino;
    read_all(&fs, f);
    assert!(fs.fetcher().flush(Duration::from_secs(20)), "committed");
    assert_eq!(fs.fetcher().memory_bytes(), 0, "written frames left memory");
    let calls = backend.calls();
    read_all(&fs, f);
    assert_eq!(backend.calls(), calls, "served by the disk");
    assert!(fs.fetcher().metrics().cache_hits.get() >= 16);
    // Without one, memory is all there is: the frames stay.
    let fs = fs_with(&t, backend.clone(), no_readahead());
    read_all(&fs, f);
    assert_eq!(fs.fetcher().memory_bytes(), 16 * 4096);
    let calls = backend.calls();
    read_all(&fs, f);
    assert_eq!(backend.calls(), calls, "served from memory");
}

/// A file backend whose first answer holds back all but its first
/// `first` bytes until the test opens the gate: streamed, those bytes
/// come at once and the rest after; read whole, nothing comes before.
struct Halting {
    inner: FileBackend,
    first: u64,
    calls: AtomicU64,
    gate: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Halting {
    fn hold(&self) {
        if let Some(gate) = self.gate.lock().unwrap().take() {
            let _ = gate.recv_timeout(Duration::from_secs(60));
        }
    }
}

impl Backend for Halting {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.hold();
        self.inner.read_range(id, offset, len)
    }

    fn read_range_to(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let bytes = self.inner.read_range(id, offset, len)?;
        let cut = (self.first as usize).min(bytes.len());
        sink(&bytes[..cut]);
        self.hold();
        sink(&bytes[cut..]);
        Ok(())
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

#[test]
fn a_frame_is_served_when_its_bytes_arrive_not_with_the_rest_of_its_request() {
    let t = one_file_image(8);
    let image = Image::open(&t.bootstrap).unwrap();
    let first = {
        let b = image.bootstrap().unwrap();
        let f = b.lookup(0, b"f").unwrap().unwrap();
        u64::from(b.file_chunks(f).unwrap()[0].compressed_size.get())
    };
    let (open, gate) = mpsc::channel();
    let backend = Arc::new(Halting {
        inner: FileBackend::new(&t.blobs),
        first,
        calls: AtomicU64::new(0),
        gate: Mutex::new(Some(gate)),
    });
    // Read-ahead joins the next 7 frames to the first one's request.
    let fs = RafsFs::new(image, backend.clone(), FetchConfig::default()).unwrap();
    let f = fs.lookup(0, b"f").unwrap().ino;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(fs.read(f, 0, 100)).unwrap());
        // Served while the rest of the response is held back.
        let got = rx.recv_timeout(Duration::from_secs(20));
        open.send(()).unwrap();
        let got = got.expect("the first frame waited for the whole response");
        assert_eq!(got.unwrap(), noise(4096, 100)[..100]);
    });
    // The frames behind it came with the same request.
    assert_eq!(fs.read(f, 7 * 4096, 4096).unwrap(), noise(4096, 107));
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}

/// A file backend whose first answer stops after its first `first` bytes
/// with `end` (an error, or `Ok` as if that were all); later answers are
/// whole, or `NotFound` if `vanish`. Records each request's range.
struct Cut {
    inner: FileBackend,
    first: u64,
    end: Mutex<Option<Result<(), BackendError>>>,
    vanish: bool,
    ranges: Mutex<Vec<(u64, u64)>>,
}

impl Backend for Cut {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        crate::backend::collect_range(len, |sink| self.read_range_to(id, offset, len, sink))
    }

    fn read_range_to(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        self.ranges.lock().unwrap().push((offset, len));
        let bytes = self.inner.read_range(id, offset, len)?;
        if let Some(end) = self.end.lock().unwrap().take() {
            sink(&bytes[..(self.first as usize).min(bytes.len())]);
            return end;
        }
        if self.vanish {
            return Err(BackendError::NotFound(*id));
        }
        sink(&bytes);
        Ok(())
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

#[test]
fn a_response_failing_part_way_keeps_the_frames_it_completed() {
    let t = one_file_image(8);
    let (frame0, frame1) = {
        let image = Image::open(&t.bootstrap).unwrap();
        let b = image.bootstrap().unwrap();
        let f = b.lookup(0, b"f").unwrap().unwrap();
        let run = b.file_chunks(f).unwrap();
        (run[0].compressed_size.get(), run[1].compressed_offset.get())
    };
    // (how the first answer ends, whether the blob then vanishes)
    let cases = [
        (Err(status(503)), false),
        (Ok(()), false),
        (Err(BackendError::NotFound(BlobId([0; 32]))), true),
    ];
    for (end, vanish) in cases {
        let what = format!("{end:?}");
        let backend = Arc::new(Cut {
            inner: FileBackend::new(&t.blobs),
            first: u64::from(frame0),
            end: Mutex::new(Some(end)),
            vanish,
            ranges: Mutex::new(Vec::new()),
        });
        let cfg = FetchConfig {
            retry_base: Duration::from_millis(1),
            read_timeout: Duration::from_secs(20),
            ..FetchConfig::default()
        };
        let fs = RafsFs::new(Image::open(&t.bootstrap).unwrap(), backend.clone(), cfg).unwrap();
        let f = fs.lookup(0, b"f").unwrap().ino;
        // The frame the response completed is served either way.
        assert_eq!(
            fs.read(f, 0, 100).unwrap(),
            noise(4096, 100)[..100],
            "{what}"
        );
        // That read returns with frame 0, while the job may still be
        // failing or retrying the rest: let it end (a frame left pending
        // would hold this until its deadline), so the next read finds the
        // outcome instead of joining the flight.
        assert!(fs.fetcher().settle(Duration::from_secs(20)), "{what}");
        let last = fs.read(f, 7 * 4096, 4096);
        let ranges = backend.ranges.lock().unwrap().clone();
        if vanish {
            // The rest failed (not left pending): a later read asks again.
            assert!(last.is_err(), "{what}");
            assert_eq!(ranges.len(), 2, "{what}: {ranges:?}");
        } else {
            // The rest, and only the rest, was asked for again.
            assert_eq!(last.unwrap(), noise(4096, 107), "{what}");
            assert_eq!(ranges.len(), 2, "{what}: {ranges:?}");
            assert_eq!(ranges[1].0, frame1, "{what}: {ranges:?}");
            assert_eq!(
                ranges[1].0 + ranges[1].1,
                ranges[0].0 + ranges[0].1,
                "{what}"
            );
        }
    }
}
