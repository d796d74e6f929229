//! The read path's promises, each tested where it used to break (issue 9):
//! a disk cache byte is never served unverified (bit rot, or another image
//! claiming the same blob id), an on-demand read never waits on a throttled
//! prefetch, and a stopped peer holding claims on a shared cache does not
//! stall this process's cold reads. Through the filesystem core (no FUSE),
//! with real processes where another process is the point.

mod common;

use common::tree::random_bytes;
use rafs::backend::file::FileBackend;
use rafs::backend::{Backend, BackendError, BlobId};
use rafs::fetch::FetchConfig;
use rafs::fs::RafsFs;
use rafs::image::Image;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILES: u64 = 8;
const SIZE: usize = 256 << 10;

/// A file backend that sleeps before every answer and counts requests.
struct Slow {
    inner: FileBackend,
    delay: Duration,
    requests: AtomicU64,
}

impl Backend for Slow {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.inner.read_range(id, offset, len)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

/// `FILES` incompressible files (stored raw: the blob layout depends only
/// on the sizes), content from `seed`. Returns (source dir, bootstrap).
fn image(work: &Path, seed: u64, size: usize) -> (PathBuf, PathBuf) {
    let data = |i| random_bytes(seed * 1000 + i, size);
    image_of(work, &format!("{seed}"), "64K", data)
}

/// `FILES` files `f00`.., file `i` holding `data(i)`, in chunks of
/// `chunk`, under `work`/src`name` and `work`/image`name`. Returns (source
/// dir, bootstrap).
fn image_of(
    work: &Path,
    name: &str,
    chunk: &str,
    data: impl Fn(u64) -> Vec<u8>,
) -> (PathBuf, PathBuf) {
    let src = work.join(format!("src{name}"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:02}")), data(i)).unwrap();
    }
    let out = work.join(format!("image{name}"));
    let bootstrap = common::create(&src, &out, &["--chunk-size", chunk]);
    (src, bootstrap)
}

fn fs(bootstrap: &Path, blobs: &Path, delay: Duration, cfg: FetchConfig) -> (RafsFs, Arc<Slow>) {
    let backend = Arc::new(Slow {
        inner: FileBackend::new(blobs),
        delay,
        requests: AtomicU64::new(0),
    });
    let fs = RafsFs::new(Image::open(bootstrap).unwrap(), backend.clone(), cfg).unwrap();
    (fs, backend)
}

/// [`fs`] over a cache disk `storage` (a test double).
fn fs_on(
    bootstrap: &Path,
    blobs: &Path,
    cfg: FetchConfig,
    storage: Arc<dyn rafs::cache::io::Storage>,
) -> RafsFs {
    fs_counting_on(bootstrap, blobs, cfg, storage).0
}

/// [`fs_on`], with the backend (its request count).
fn fs_counting_on(
    bootstrap: &Path,
    blobs: &Path,
    cfg: FetchConfig,
    storage: Arc<dyn rafs::cache::io::Storage>,
) -> (RafsFs, Arc<Slow>) {
    let backend = Arc::new(Slow {
        inner: FileBackend::new(blobs),
        delay: Duration::ZERO,
        requests: AtomicU64::new(0),
    });
    let image = Image::open(bootstrap).unwrap();
    let fs = RafsFs::with_storage(image, backend.clone(), cfg, storage).unwrap();
    (fs, backend)
}

fn read_file(fs: &RafsFs, name: &str) -> Result<Vec<u8>, rafs::fs::FsError> {
    let attr = fs.lookup(0, name.as_bytes())?;
    let mut out = Vec::new();
    while (out.len() as u64) < attr.size {
        let part = fs.read(attr.ino, out.len() as u64, 128 << 10)?;
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    Ok(out)
}

fn assert_tree(fs: &RafsFs, src: &Path) {
    for i in 0..FILES {
        let name = format!("f{i:02}");
        let want = std::fs::read(src.join(&name)).unwrap();
        let got = read_file(fs, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(got == want, "{name}: wrong bytes");
    }
}

fn cached(dir: &Path) -> FetchConfig {
    FetchConfig {
        cache_dir: Some(dir.to_path_buf()),
        readahead: 0,
        ..FetchConfig::default()
    }
}

fn data_file(cache: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect();
    assert_eq!(files.len(), 1, "one blob, one data file: {files:?}");
    files.pop().unwrap()
}

/// Fills the disk cache with every file of the image and waits for the
/// committer.
fn fill(bootstrap: &Path, blobs: &Path, cache: &Path, src: &Path) {
    let (fs, _) = fs(bootstrap, blobs, Duration::ZERO, cached(cache));
    assert_tree(&fs, src);
    assert!(
        fs.fetcher().flush(Duration::from_secs(30)),
        "committer done"
    );
}

#[test]
fn a_flipped_byte_in_the_cache_data_file_is_never_served() {
    let work = common::tempdir();
    let (src, bootstrap) = image(work.path(), 1, SIZE);
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let cache = work.path().join("cache");
    fill(&bootstrap, &blobs, &cache, &src);

    // 16 bytes flipped inside file f03's data (map untouched).
    let data = data_file(&cache);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = 3 * SIZE + 1000;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bytes).unwrap();

    let (fs, backend) = fs(&bootstrap, &blobs, Duration::ZERO, cached(&cache));
    assert_tree(&fs, &src);
    let m = fs.fetcher().metrics();
    assert_eq!(m.cache_corrupt.get(), 1, "the damaged frame was detected");
    assert!(
        backend.requests.load(Ordering::SeqCst) >= 1,
        "and fetched again"
    );
    assert!(
        m.cache_hits.get() > 0,
        "the undamaged frames were served from the disk"
    );
}

/// Replaces blob id `from` by `to` in a bootstrap and re-seals it.
fn claim_blob_id(bootstrap: &Path, from: &[u8; 32], to: &[u8; 32]) {
    let mut b = std::fs::read(bootstrap).unwrap();
    let at = b
        .windows(32)
        .position(|w| w == from)
        .expect("blob id in the bootstrap");
    b[at..at + 32].copy_from_slice(to);
    rafs_format::seal(&mut b);
    std::fs::write(bootstrap, b).unwrap();
}

fn only_blob(bootstrap: &Path) -> [u8; 32] {
    let image = Image::open(bootstrap).unwrap();
    let b = image.bootstrap().unwrap();
    assert_eq!(b.blobs().len(), 1);
    b.blobs()[0].id
}

#[test]
fn an_image_claiming_another_images_blob_id_never_gets_its_bytes() {
    let work = common::tempdir();
    let (src_a, boot_a) = image(work.path(), 1, SIZE);
    let blobs_a = boot_a.parent().unwrap().join("blobs");
    // Image B claims A's blob id, with the same layout (same sizes, stored
    // raw), and its own backend serves B's bytes under that id.
    let (src_b, boot_b, blobs_b) = impostor(work.path(), &boot_a, SIZE);

    let cache = work.path().join("cache");
    let (fs_a, _) = fs(&boot_a, &blobs_a, Duration::ZERO, cached(&cache));
    assert_tree(&fs_a, &src_a);
    assert!(fs_a.fetcher().flush(Duration::from_secs(30)));

    // B on the same cache: A's bytes fail B's digests; B gets its own.
    let (fs_b, _) = fs(&boot_b, &blobs_b, Duration::ZERO, cached(&cache));
    assert_tree(&fs_b, &src_b);
    assert!(fs_b.fetcher().flush(Duration::from_secs(30)));
    assert!(fs_b.fetcher().metrics().cache_corrupt.get() > 0);

    // A, still mounted (it verified its frames before B rewrote them), and
    // a fresh A: right bytes again, never B's.
    assert_tree(&fs_a, &src_a);
    let (fresh_a, _) = fs(&boot_a, &blobs_a, Duration::ZERO, cached(&cache));
    assert_tree(&fresh_a, &src_a);
}

/// Image B (files of `size`) claiming the blob id of image `victim`: its
/// bootstrap names that id, and its own blob directory serves B's blob
/// under it. Returns (B's source, B's bootstrap, B's blob directory).
fn impostor(work: &Path, victim: &Path, size: usize) -> (PathBuf, PathBuf, PathBuf) {
    let (src, boot) = image(work, 2, size);
    let (id_a, id_b) = (only_blob(victim), only_blob(&boot));
    claim_blob_id(&boot, &id_b, &id_a);
    let blobs = work.join("blobs-b");
    std::fs::create_dir_all(&blobs).unwrap();
    let from = boot
        .parent()
        .unwrap()
        .join("blobs")
        .join(BlobId(id_b).to_hex());
    std::fs::copy(from, blobs.join(BlobId(id_a).to_hex())).unwrap();
    (src, boot, blobs)
}

/// Time to read file `name` in full.
fn timed_read(fs: &RafsFs, name: &str, want: &[u8]) -> Duration {
    let t0 = Instant::now();
    let got = read_file(fs, name).unwrap();
    let took = t0.elapsed();
    assert!(got == want, "{name}: wrong bytes");
    took
}

#[test]
fn a_read_during_a_throttled_prefetch_does_not_wait_for_it() {
    let work = common::tempdir();
    let (src, bootstrap) = image(work.path(), 3, 1 << 20);
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let want = std::fs::read(src.join("f02")).unwrap();
    let delay = Duration::from_millis(20);
    let memory = FetchConfig {
        memory_bytes: 64 << 20,
        ..FetchConfig::default()
    };

    let (plain, _) = fs(&bootstrap, &blobs, delay, memory.clone());
    let baseline = timed_read(&plain, "f02", &want);

    // 256 KiB/s with one worker: the prefetch reaches f02 (2 MiB into the
    // blob) after about 8 s.
    let throttled = FetchConfig {
        prefetch_bandwidth: Some(256 << 10),
        prefetch_threads: 1,
        ..memory
    };
    let (fs, backend) = fs(&bootstrap, &blobs, delay, throttled);
    let stop = AtomicBool::new(false);
    let took = std::thread::scope(|s| {
        let prefetch = s.spawn(|| {
            let plan = fs.fetcher().plan_all();
            fs.fetcher().prefetch(&plan, &stop, &mut |_| {})
        });
        common::wait_until("the prefetch to start", Duration::from_secs(10), || {
            backend.requests.load(Ordering::SeqCst) > 0
        });
        let took = timed_read(&fs, "f02", &want);
        stop.store(true, Ordering::SeqCst);
        let report = prefetch.join().unwrap();
        assert!(report.stopped.is_some(), "stopped early: {report:?}");
        took
    });
    let bound = baseline * 3 + Duration::from_millis(500);
    assert!(
        took < bound,
        "the read took {took:?} with a throttled prefetch, {baseline:?} without"
    );
    assert!(fs.fetcher().metrics().prefetch_promoted.get() > 0);
}

/// A TCP listener that accepts connections and never answers; counts them.
fn black_hole() -> (String, Arc<AtomicU64>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            n.fetch_add(1, Ordering::SeqCst);
            held.push(c);
        }
    });
    (format!("http://{addr}/{{blob}}"), accepted)
}

#[test]
fn a_stopped_peer_holding_claims_does_not_stall_cold_reads() {
    let work = common::tempdir();
    let (src, bootstrap) = image(work.path(), 4, SIZE);
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let cache = work.path().join("cache");
    // The peer: `rafs prefetch` on the same cache, stuck in a request to a
    // server that never answers, holding its claims; then SIGSTOPped.
    let (url, accepted) = black_hole();
    let mut peer = std::process::Command::new(common::rafs_bin())
        .arg("prefetch")
        .arg(&bootstrap)
        .args(["--all", "--no-progress", "--backend", &url])
        .args(["--request-timeout", "600s", "--read-timeout", "600s"])
        .arg("--cache-dir")
        .arg(&cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("the peer's request", Duration::from_secs(30), || {
        accepted.load(Ordering::SeqCst) > 0
    });
    let pid = nix::unistd::Pid::from_raw(peer.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();

    let cfg = FetchConfig {
        read_timeout: Duration::from_secs(8),
        ..cached(&cache)
    };
    let (fs, _) = fs(&bootstrap, &blobs, Duration::ZERO, cfg);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_tree(&fs, &src);
        assert!(fs.fetcher().metrics().lock_timeouts.get() > 0);
    }));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = peer.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_stopped_prefetch_reports_only_what_it_fetched() {
    let work = common::tempdir();
    // One 256 KiB frame per file (chunks of 1 MiB), 8 frames.
    let (_, bootstrap) = image_of(work.path(), "", "1M", |i| random_bytes(50 + i, SIZE));
    let blobs = work.path().join("image/blobs");
    // 256 KiB/s: one frame per request, about one per second.
    let cfg = FetchConfig {
        prefetch_bandwidth: Some(256 << 10),
        prefetch_threads: 1,
        memory_bytes: 64 << 20,
        ..FetchConfig::default()
    };
    let (fs, backend) = fs(&bootstrap, &blobs, Duration::ZERO, cfg);
    let stop = AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        let run = s.spawn(|| {
            let plan = fs.fetcher().plan_all();
            fs.fetcher().prefetch(&plan, &stop, &mut |_| {})
        });
        common::wait_until("a prefetched frame", Duration::from_secs(20), || {
            fs.fetcher().metrics().prefetch_chunks.get() > 0
        });
        stop.store(true, Ordering::SeqCst);
        run.join().unwrap()
    });
    assert_eq!(report.frames, FILES);
    assert!(report.stopped.is_some());
    let delivered = fs.fetcher().metrics().prefetch_chunks.get();
    assert!(
        report.fetched <= delivered && report.fetched >= 1,
        "report says {} fetched, the backend delivered {delivered} ({} requests)",
        report.fetched,
        backend.requests.load(Ordering::SeqCst)
    );
    assert!(report.fetched + report.cached < FILES, "{report:?}");
}

/// A backend whose every request fails for good.
struct Gone;

impl Backend for Gone {
    fn read_range(&self, id: &BlobId, _: u64, _: u64) -> Result<Vec<u8>, BackendError> {
        Err(BackendError::NotFound(*id))
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        Err(BackendError::NotFound(*id))
    }
}

#[test]
fn a_failed_prefetch_reports_every_frame_failed_and_none_fetched() {
    let work = common::tempdir();
    let (_, bootstrap) = image(work.path(), 6, SIZE);
    let fs = RafsFs::new(
        Image::open(&bootstrap).unwrap(),
        Arc::new(Gone),
        FetchConfig::default(),
    )
    .unwrap();
    let plan = fs.fetcher().plan_all();
    let report = fs
        .fetcher()
        .prefetch(&plan, &AtomicBool::new(false), &mut |_| {});
    assert_eq!(report.fetched, 0, "{report:?}");
    assert_eq!(report.failed.len() as u64, report.frames, "{report:?}");
}

#[test]
fn an_image_claiming_a_blob_id_with_another_layout_gets_no_share_of_its_cache() {
    let work = common::tempdir();
    let (src_a, boot_a) = image(work.path(), 1, SIZE);
    let blobs_a = boot_a.parent().unwrap().join("blobs");
    // Other sizes: another blob-table entry under the same id.
    let (src_b, boot_b, blobs_b) = impostor(work.path(), &boot_a, SIZE + 8192);
    let cache = work.path().join("cache");
    fill(&boot_a, &blobs_a, &cache, &src_a);

    let (fs_b, _) = fs(&boot_b, &blobs_b, Duration::ZERO, cached(&cache));
    assert_eq!(fs_b.fetcher().metrics().cache_conflicts.get(), 1);
    assert_tree(&fs_b, &src_b);
    assert!(fs_b.fetcher().flush(Duration::from_secs(30)));
    drop(fs_b);

    // A's cache is whole: served from the disk, nothing fetched.
    let (fs_a, backend) = fs(&boot_a, &blobs_a, Duration::ZERO, cached(&cache));
    assert_tree(&fs_a, &src_a);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    assert_eq!(fs_a.fetcher().metrics().cache_corrupt.get(), 0);
}

#[test]
fn reads_of_fetched_data_do_not_wait_for_a_stalled_cache_disk() {
    use rafs::cache::io::testing::Stall;
    let work = common::tempdir();
    // 8 files of 1 MiB in 64 KiB chunks: 8 MiB, more than the 1 MiB the
    // committer may fall behind by.
    let (src, bootstrap) = image(work.path(), 7, 1 << 20);
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let stall = Stall::new(rafs::cache::io::real());
    let cfg = FetchConfig {
        read_timeout: Duration::from_secs(5),
        memory_bytes: 64 << 20,
        commit_backlog: 1 << 20,
        ..cached(&work.path().join("cache"))
    };
    let fs = fs_on(&bootstrap, &blobs, cfg, stall.clone());
    stall.block();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for i in 0..FILES {
                    let name = format!("f{i:02}");
                    let want = std::fs::read(src.join(&name)).unwrap();
                    assert!(read_file(&fs, &name).unwrap() == want, "{name}");
                }
            }));
            tx.send(r.is_ok()).unwrap();
        });
        // The reads finish while the disk is stalled (or the test fails
        // here, and releases the disk so that nothing hangs).
        let done = rx.recv_timeout(Duration::from_secs(60));
        let stalled = stall.waiting();
        stall.release();
        assert_eq!(
            done,
            Ok(true),
            "reads finished while the cache disk stalled"
        );
        assert!(stalled >= 1, "the committer was stuck on the disk");
    });
    let m = fs.fetcher().metrics();
    assert!(
        m.commits_skipped.get() > 0,
        "frames the committer could not take"
    );
    assert!(fs.fetcher().flush(Duration::from_secs(30)));
}

#[test]
fn a_busy_cache_disk_paces_caching_but_loses_no_frame() {
    use rafs::cache::io::testing::Stall;
    let work = common::tempdir();
    // 8 MiB read in 64 KiB chunks through a 1 MiB backlog, each fdatasync
    // 100 ms late: the committer is behind all the time, yet never stuck.
    let (src, bootstrap) = image(work.path(), 8, 1 << 20);
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let cache = work.path().join("cache");
    let slow = Stall::new(rafs::cache::io::real());
    slow.slow_syncs(Duration::from_millis(100));
    let cfg = FetchConfig {
        commit_backlog: 1 << 20,
        ..cached(&cache)
    };
    let first = fs_on(&bootstrap, &blobs, cfg, slow);
    assert_tree(&first, &src);
    assert!(
        first.fetcher().flush(Duration::from_secs(60)),
        "committer done"
    );
    assert_eq!(first.fetcher().metrics().commits_skipped.get(), 0);
    drop(first);
    // Everything read went to the disk: a second run needs no backend.
    let (fs, backend) = fs(&bootstrap, &blobs, Duration::ZERO, cached(&cache));
    assert_tree(&fs, &src);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn reads_outpacing_a_busy_cache_disk_pin_a_bounded_backlog() {
    use rafs::cache::io::testing::Stall;
    let work = common::tempdir();
    // 8 readers each read a 1 MiB file (16 frames of 64 KiB) at once, in
    // one request each, through a 1 MiB backlog whose disk syncs 100 ms
    // late. Frames served past the full backlog wait in memory for it;
    // once they fill half of it, the next frames wait for room before
    // they are decoded (their readers with them) instead of piling up:
    // 8 MiB otherwise.
    let (src, bootstrap) = image(work.path(), 10, 1 << 20);
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let slow = Stall::new(rafs::cache::io::real());
    slow.slow_syncs(Duration::from_millis(100));
    let cfg = FetchConfig {
        commit_backlog: 1 << 20,
        concurrency: 8,
        readahead: 0,
        ..cached(&work.path().join("cache"))
    };
    let fs = fs_on(&bootstrap, &blobs, cfg, slow);
    let late = &fs.fetcher().metrics().commit_late_bytes;
    let done = AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(late.get());
                std::thread::park_timeout(Duration::from_millis(1));
            }
            peak
        });
        let readers: Vec<_> = (0..FILES)
            .map(|i| {
                let (fs, src) = (&fs, &src);
                s.spawn(move || {
                    let name = format!("f{i:02}");
                    let ino = fs.lookup(0, name.as_bytes()).unwrap().ino;
                    let got = fs.read(ino, 0, 1 << 20).unwrap();
                    assert!(got == std::fs::read(src.join(&name)).unwrap(), "{name}");
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap()
    });
    // Half the backlog, plus a frame per worker that checked before the
    // others' frames were counted.
    assert!(peak > 0, "some frames waited for the backlog");
    assert!(peak <= (512 << 10) + 8 * (64 << 10), "{peak} bytes waited");
    assert!(fs.fetcher().flush(Duration::from_secs(60)));
    assert_eq!(fs.fetcher().metrics().commits_skipped.get(), 0);
    assert_tree(&fs, &src);
}

/// An image of `FILES` files of `SIZE` (content from `seed`) in `work`,
/// the cache dir for it, and a cache disk whose `fdatasync`s can be hung.
struct SyncHangs {
    src: PathBuf,
    bootstrap: PathBuf,
    blobs: PathBuf,
    cache: PathBuf,
    stall: Arc<rafs::cache::io::testing::Stall>,
}

impl SyncHangs {
    fn new(work: &Path, seed: u64) -> SyncHangs {
        let (src, bootstrap) = image(work, seed, SIZE);
        let blobs = bootstrap.parent().unwrap().join("blobs");
        let stall = rafs::cache::io::testing::Stall::new(rafs::cache::io::real());
        let cache = work.join("cache");
        SyncHangs {
            src,
            bootstrap,
            blobs,
            cache,
            stall,
        }
    }

    /// Waits until the committer is stuck in an `fdatasync`.
    fn wait_for_the_hung_sync(&self) {
        let what = "the committer at the fdatasync";
        common::wait_until(what, Duration::from_secs(20), || self.stall.waiting() >= 1);
    }

    /// Asserts that a new process reads `names` from the disk cache alone.
    fn assert_cached(&self, names: &[&str]) {
        let cfg = cached(&self.cache);
        let (fs, backend) = crate::fs(&self.bootstrap, &self.blobs, Duration::ZERO, cfg);
        for name in names {
            let want = std::fs::read(self.src.join(name)).unwrap();
            assert!(read_file(&fs, name).unwrap() == want, "{name}");
        }
        assert_eq!(backend.requests.load(Ordering::SeqCst), 0, "all cached");
    }
}

#[test]
fn a_frame_written_but_not_yet_synced_is_read_back_from_the_file_not_fetched_again() {
    let work = common::tempdir();
    let h = SyncHangs::new(work.path(), 11);
    // No memory LRU: a frame is in `pending`, staged in the file, or on
    // the disk.
    let cfg = FetchConfig {
        memory_bytes: 0,
        ..cached(&h.cache)
    };
    let (fs, backend) = fs_counting_on(&h.bootstrap, &h.blobs, cfg, h.stall.clone());
    h.stall.block_syncs();
    let unstall = Unstall(&h.stall);
    let want = std::fs::read(h.src.join("f00")).unwrap();
    assert!(read_file(&fs, "f00").unwrap() == want);
    // The frames are written; the committer waits on the fdatasync, so
    // their bits are still clear.
    h.wait_for_the_hung_sync();
    let fetched = backend.requests.load(Ordering::SeqCst);
    assert!(fetched > 0);
    assert!(read_file(&fs, "f00").unwrap() == want);
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        fetched,
        "read back from the file, not fetched again"
    );
    let m = fs.fetcher().metrics();
    assert!(m.cache_staged_reads.get() > 0);
    assert_eq!(m.cache_hits.get(), 0, "no bit set before the fdatasync");
    drop(unstall);
    assert!(fs.fetcher().flush(Duration::from_secs(30)));
    drop(fs);
    h.assert_cached(&["f00"]);
}

#[test]
fn a_hung_fdatasync_does_not_cost_the_frames_fetched_meanwhile_their_caching() {
    let work = common::tempdir();
    // 8 files of 256 KiB through a 1 MiB backlog: twice the backlog, and
    // less than the 4 backlogs the writer may be ahead of the sealer.
    let h = SyncHangs::new(work.path(), 12);
    let cfg = FetchConfig {
        read_timeout: Duration::from_secs(2),
        commit_backlog: 1 << 20,
        ..cached(&h.cache)
    };
    let fs = fs_on(&h.bootstrap, &h.blobs, cfg, h.stall.clone());
    h.stall.block_syncs();
    let unstall = Unstall(&h.stall);
    assert_tree(&fs, &h.src);
    h.wait_for_the_hung_sync();
    // Every frame gets written while the fdatasync hangs (before, the
    // committer was stuck in it with a full backlog, and frames past the
    // backlog were given up after the stall bound).
    let staged = &fs.fetcher().metrics().cache_staged_bytes;
    let all = FILES * SIZE as u64;
    common::wait_until("every frame written", Duration::from_secs(20), || {
        staged.get() >= all
    });
    drop(unstall);
    assert!(fs.fetcher().flush(Duration::from_secs(30)));
    assert_eq!(staged.get(), 0, "all sealed");
    assert_eq!(fs.fetcher().metrics().commits_skipped.get(), 0);
    drop(fs);
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:02}")).collect();
    h.assert_cached(&names.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn a_failing_fdatasync_marks_nothing_ready_and_fails_no_read() {
    let work = common::tempdir();
    let h = SyncHangs::new(work.path(), 13);
    let fs = fs_on(&h.bootstrap, &h.blobs, cached(&h.cache), h.stall.clone());
    h.stall.fail_syncs();
    assert_tree(&fs, &h.src);
    assert!(
        fs.fetcher().flush(Duration::from_secs(30)),
        "nothing left staged"
    );
    let m = fs.fetcher().metrics();
    assert_eq!(m.cache_staged_bytes.get(), 0);
    let io = rafs::fetch::metrics::Kind { kind: "io".into() };
    assert!(m.write_errors.get_or_create(&io).get() > 0, "counted");
    assert_tree(&fs, &h.src);
    assert_eq!(m.cache_hits.get(), 0, "no bit set without a sync");
    drop(fs);
    // Nothing was made ready: another process fetches everything again.
    let (again, backend) = crate::fs(&h.bootstrap, &h.blobs, Duration::ZERO, cached(&h.cache));
    assert_tree(&again, &h.src);
    assert!(backend.requests.load(Ordering::SeqCst) > 0);
}

/// Releases a stalled disk when dropped: whatever a test asserts while the
/// disk is stuck, it comes back (nothing hangs).
struct Unstall<'a>(&'a rafs::cache::io::testing::Stall);

impl Drop for Unstall<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The image over a cache disk that can be stalled (in `work`/cache),
/// with a 1 MiB commit backlog and 2 prefetch workers.
fn on_a_stallable_disk(
    work: &Path,
    bootstrap: &Path,
) -> (RafsFs, Arc<rafs::cache::io::testing::Stall>) {
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let stall = rafs::cache::io::testing::Stall::new(rafs::cache::io::real());
    let cfg = FetchConfig {
        commit_backlog: 1 << 20,
        prefetch_threads: 2,
        ..cached(&work.join("cache"))
    };
    (fs_on(bootstrap, &blobs, cfg, stall.clone()), stall)
}

/// Prefetches the whole image with the cache disk stuck, runs `check` once
/// the committer is blocked on the disk, then lets the disk go; asserts
/// that the prefetch ran to its end, the committer caught up and the tree
/// reads as `src`; returns the prefetch's report.
fn prefetch_on_a_stuck_disk(
    fs: &RafsFs,
    stall: &rafs::cache::io::testing::Stall,
    src: &Path,
    check: impl FnOnce(),
) -> rafs::fetch::prefetch::Report {
    stall.block();
    let stop = AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        let run = s.spawn(|| {
            let plan = fs.fetcher().plan_all();
            fs.fetcher().prefetch(&plan, &stop, &mut |_| {})
        });
        // Whatever `check` does, the disk comes back (nothing hangs).
        let _unstall = Unstall(stall);
        common::wait_until("the committer on the disk", Duration::from_secs(20), || {
            stall.waiting() >= 1
        });
        check();
        stall.release();
        run.join().unwrap()
    });
    assert!(report.stopped.is_none(), "{report:?}");
    assert!(fs.fetcher().flush(Duration::from_secs(30)));
    assert_tree(fs, src);
    report
}

#[test]
fn a_prefetch_waits_for_a_stalled_cache_disk_before_fetching_more() {
    let work = common::tempdir();
    // 8 MiB in 64 KiB frames; the committer may be behind by 1 MiB, of
    // which the prefetch may use half.
    let (src, bootstrap) = image(work.path(), 9, 1 << 20);
    let (fs, stall) = on_a_stallable_disk(work.path(), &bootstrap);
    let report = prefetch_on_a_stuck_disk(&fs, &stall, &src, || {
        // The disk is stuck: the prefetch does not go on fetching into
        // memory. A job starts only while the prefetch's half of the 1 MiB
        // backlog has room for it, so once the two workers' first jobs
        // (512 KiB each: requests are capped at that share) fill it, both
        // wait before fetching, and that is all that was fetched.
        common::wait_until("both workers waiting", Duration::from_secs(20), || {
            fs.fetcher().metrics().prefetch_waiting.get() == 2
        });
        let fetched = fs.fetcher().counters().backend_bytes.load(Ordering::SeqCst);
        assert!(
            fetched <= 1 << 20,
            "fetched {fetched} bytes with the disk stuck"
        );
    });
    assert!(
        report.fetched + report.cached == report.frames,
        "{report:?}"
    );
}

#[test]
fn a_prefetch_decodes_no_frame_the_stuck_cache_disk_has_no_room_for() {
    let work = common::tempdir();
    // 8 files of 1 MiB of text in 64 KiB frames: the blob is stored in
    // far less than one 512 KiB request, which holds all 8 MiB decoded.
    let text = |i| {
        let lines = (0..).map(|n| format!("file {i} line {n}\n"));
        lines.take(60_000).collect::<String>().into_bytes()[..1 << 20].to_vec()
    };
    let (src, bootstrap) = image_of(work.path(), "text", "64K", text);
    let (fs, stall) = on_a_stallable_disk(work.path(), &bootstrap);
    prefetch_on_a_stuck_disk(&fs, &stall, &src, || {
        // The worker waits with its request's stored bytes, before
        // decoding: what it decoded is what the prefetch's half of the
        // backlog holds. (Unpaced, it decoded on, up to the whole backlog
        // and a frame more, and waited holding that.)
        let m = fs.fetcher().metrics();
        let decoded = || m.prefetch_chunks.get() * (64 << 10);
        common::wait_until("the prefetch waiting", Duration::from_secs(20), || {
            m.prefetch_waiting.get() >= 1 && decoded() == 512 << 10
        });
        let decoded = decoded();
        assert!(
            decoded <= 512 << 10,
            "decoded {decoded} bytes with the disk stuck"
        );
    });
}

#[test]
fn an_on_demand_read_joining_a_prefetch_stuck_on_the_disk_gets_its_frame() {
    // A prefetch worker whose request is in (its stored bytes in memory)
    // waits in `pace_decode` for room in a stuck disk's backlog, with the
    // rest of its job's frames marked BG_RUNNING. An on-demand read of one
    // of those frames joins that flight: it must not wait for the disk
    // (reads of fetched data never do), let alone fail at its deadline.
    let work = common::tempdir();
    let text = |i| {
        let lines = (0..).map(|n| format!("file {i} line {n}\n"));
        lines.take(60_000).collect::<String>().into_bytes()[..1 << 20].to_vec()
    };
    let (src, bootstrap) = image_of(work.path(), "text", "64K", text);
    let blobs = bootstrap.parent().unwrap().join("blobs");
    let stall = rafs::cache::io::testing::Stall::new(rafs::cache::io::real());
    let cfg = FetchConfig {
        commit_backlog: 1 << 20,
        prefetch_threads: 1,
        read_timeout: Duration::from_secs(10),
        ..cached(&work.path().join("cache"))
    };
    let fs = fs_on(&bootstrap, &blobs, cfg, stall.clone());
    stall.block();
    let stop = AtomicBool::new(false);
    let (took, got) = std::thread::scope(|s| {
        let _unstall = Unstall(&stall);
        let run = s.spawn(|| {
            let plan = fs.fetcher().plan_all();
            fs.fetcher().prefetch(&plan, &stop, &mut |_| {})
        });
        let m = fs.fetcher().metrics();
        common::wait_until(
            "the prefetch stuck decoding",
            Duration::from_secs(20),
            || m.prefetch_waiting.get() >= 1 && m.prefetch_chunks.get() * (64 << 10) == 512 << 10,
        );
        // f02's first frame lies in the stuck job (the first window holds
        // f00..f03, one request), past the 8 frames decoded so far.
        let t0 = Instant::now();
        let attr = fs.lookup(0, b"f02").unwrap();
        let got = fs.read(attr.ino, 0, 4096);
        let took = t0.elapsed();
        stop.store(true, Ordering::SeqCst);
        stall.release();
        run.join().unwrap();
        (took, got)
    });
    let want = std::fs::read(src.join("f02")).unwrap();
    let got = got.unwrap_or_else(|e| panic!("read failed after {took:?}: {e}"));
    assert!(got == want[..4096], "wrong bytes");
    assert!(
        took < Duration::from_secs(5),
        "waited {took:?} for the stuck disk"
    );
}
