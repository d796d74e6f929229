//! Races between a cache's eviction, its writer and other openers, each
//! forced through the storage seam (no timing): an eviction must never
//! punch a frame that a fetch may be writing (set bits over a hole read as
//! zeros), two processes opening one cache at once must end up on one map,
//! a hostile generation counter in the map must not panic a hit, and a
//! frame an eviction leaves on the disk stays counted in the quota.

mod common;

use common::tree::random_bytes;
use rafs::backend::file::FileBackend;
use rafs::backend::BlobId;
use rafs::cache::io::Real;
use rafs::cache::io::Storage;
use rafs::cache::{BlobCache, MapParams, DEFAULT_GRANULARITY};
use rafs::fetch::FetchConfig;
use rafs::fs::RafsFs;
use rafs::image::Image;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const SIZE: usize = 64 << 10;

/// The longest a gate holds a storage call its test has not released.
const HOLD: Duration = Duration::from_secs(60);

/// Real storage, except that the `block_at`-th hole punch (1-based) blocks
/// until released; counts data writes.
#[derive(Debug, Default)]
struct PunchGate {
    punches: AtomicU64,
    block_at: AtomicU64,
    writes: AtomicU64,
    state: Mutex<(bool, bool)>, // (entered, released)
    cv: Condvar,
}

impl PunchGate {
    fn wait_entered(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        let mut s = self.state.lock().unwrap();
        while !s.0 {
            assert!(Instant::now() < until, "the eviction never punched");
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
    fn release(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }
}

impl Storage for PunchGate {
    fn write_at(&self, f: &File, p: &Path, o: u64, b: &[u8]) -> std::io::Result<()> {
        let r = rafs::cache::io::Real.write_at(f, p, o, b);
        self.writes.fetch_add(1, Ordering::SeqCst);
        r
    }
    fn sync_data(&self, f: &File, p: &Path) -> std::io::Result<()> {
        rafs::cache::io::Real.sync_data(f, p)
    }
    fn msync(&self, m: &memmap2::MmapMut, p: &Path, o: usize, l: usize) -> std::io::Result<()> {
        rafs::cache::io::Real.msync(m, p, o, l)
    }
    fn punch_hole(&self, f: &File, p: &Path, o: u64, l: u64) -> std::io::Result<()> {
        let n = self.punches.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.block_at.load(Ordering::SeqCst) {
            let mut s = self.state.lock().unwrap();
            s.0 = true;
            self.cv.notify_all();
            // Bounded: a test that fails before releasing must not leave
            // the sealer (or an opener) blocked for ever.
            let until = Instant::now() + HOLD;
            while !s.1 && Instant::now() < until {
                s = self.cv.wait_timeout(s, HOLD).unwrap().0;
            }
        }
        rafs::cache::io::Real.punch_hole(f, p, o, l)
    }
    fn create_new(&self, p: &Path) -> std::io::Result<File> {
        rafs::cache::io::Real.create_new(p)
    }
    fn sync_all(&self, f: &File, p: &Path) -> std::io::Result<()> {
        rafs::cache::io::Real.sync_all(f, p)
    }
    fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
        rafs::cache::io::Real.rename(a, b)
    }
    fn sync_dir(&self, d: &Path) -> std::io::Result<()> {
        rafs::cache::io::Real.sync_dir(d)
    }
}

fn read_file(fs: &RafsFs, name: &str) -> Vec<u8> {
    let attr = fs.lookup(0, name.as_bytes()).unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < attr.size {
        let part = fs.read(attr.ino, out.len() as u64, 128 << 10).unwrap();
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    out
}

#[test]
fn an_eviction_racing_a_refetch_never_leaves_ready_bits_over_a_hole() {
    let work = common::tempdir();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Three files of one 64 KiB frame each (no batching): A, C, B.
    for i in 0..3u64 {
        std::fs::write(src.join(format!("f{i:02}")), random_bytes(77 + i, SIZE)).unwrap();
    }
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &["--chunk-size", "64K", "--batch-size", "0"]);
    let blobs = out.join("blobs");
    let cache = work.path().join("cache");
    let gate = Arc::new(PunchGate::default());
    let cfg = FetchConfig {
        cache_dir: Some(cache.clone()),
        // 2 frames fit; a third evicts down to 15/16 of 130K: both older frames.
        cache_limit: Some(130 << 10),
        readahead: 0,
        widen: 0,
        // A claim another holder keeps is waited for a quarter of this.
        read_timeout: Duration::from_secs(4),
        ..FetchConfig::default()
    };
    let fs = RafsFs::with_storage(
        Image::open(&bootstrap).unwrap(),
        Arc::new(FileBackend::new(&blobs)),
        cfg,
        gate.clone(),
    )
    .unwrap();
    let want = |i: u64| std::fs::read(src.join(format!("f{i:02}"))).unwrap();
    let settle = || assert!(fs.fetcher().settle(Duration::from_secs(30)));

    assert_eq!(read_file(&fs, "f00"), want(0));
    settle();
    assert_eq!(read_file(&fs, "f01"), want(1));
    settle();
    // Reading f02 evicts f00 (punch 1), then f01 (punch 2, held).
    gate.block_at.store(2, Ordering::SeqCst);
    assert_eq!(read_file(&fs, "f02"), want(2));
    gate.wait_entered();
    // f01's bits are clear now, its hole not punched yet: a reader
    // refetches it. Its fetch must not be written before the punch (then
    // the punch would free the written bytes under the bits the seal sets):
    // it waits for the frame's claim, which the eviction holds, and past
    // that wait fetches for memory only. Before the fix it was written.
    let writes = gate.writes.load(Ordering::SeqCst);
    assert_eq!(read_file(&fs, "f01"), want(1));
    let m = fs.fetcher().metrics();
    common::wait_until(
        "the refetch written, or its claim refused",
        Duration::from_secs(20),
        || gate.writes.load(Ordering::SeqCst) != writes || m.lock_timeouts.get() >= 1,
    );
    gate.release();
    settle();
    let got = read_file(&fs, "f01");
    let zeros = got.iter().filter(|&&b| b == 0).count();
    assert!(
        got == want(1),
        "f01 served wrong bytes ({zeros} zero bytes)"
    );
}

/// Real storage whose first directory fsync (after the map's rename)
/// waits until released.
#[derive(Debug, Default)]
struct DirSyncGate {
    state: Mutex<(bool, bool)>, // (entered, released)
    cv: Condvar,
}

impl Storage for DirSyncGate {
    fn write_at(&self, f: &File, p: &Path, o: u64, b: &[u8]) -> std::io::Result<()> {
        Real.write_at(f, p, o, b)
    }
    fn sync_data(&self, f: &File, p: &Path) -> std::io::Result<()> {
        Real.sync_data(f, p)
    }
    fn msync(&self, m: &memmap2::MmapMut, p: &Path, o: usize, l: usize) -> std::io::Result<()> {
        Real.msync(m, p, o, l)
    }
    fn punch_hole(&self, f: &File, p: &Path, o: u64, l: u64) -> std::io::Result<()> {
        Real.punch_hole(f, p, o, l)
    }
    fn create_new(&self, p: &Path) -> std::io::Result<File> {
        Real.create_new(p)
    }
    fn sync_all(&self, f: &File, p: &Path) -> std::io::Result<()> {
        Real.sync_all(f, p)
    }
    fn rename(&self, a: &Path, b: &Path) -> std::io::Result<()> {
        Real.rename(a, b)
    }
    fn sync_dir(&self, d: &Path) -> std::io::Result<()> {
        let mut s = self.state.lock().unwrap();
        if !s.0 {
            s.0 = true;
            self.cv.notify_all();
            // Bounded: a test that fails before releasing must not leave
            // the sealer (or an opener) blocked for ever.
            let until = Instant::now() + HOLD;
            while !s.1 && Instant::now() < until {
                s = self.cv.wait_timeout(s, HOLD).unwrap().0;
            }
        }
        drop(s);
        Real.sync_dir(d)
    }
}

// Bug 2.
// Review: two processes opening one blob's cache at the same time, while
// its data file does not exist yet, both reset the map (create + rename).
// The first keeps mapping the file the second renamed over: from then on
// the two use different bitmaps and different generation counters over
// one data file. The second one's eviction punches a hole under a range
// the first one's map still says is ready, and the first one's generation
// does not move: its generation-checked hit returns zeros.
#[test]
fn two_caches_opened_at_once_share_one_map() {
    let work = common::tempdir();
    let dir = work.path().join("cache");
    rafs::cache::create_dir(&dir).unwrap();
    let params = MapParams::new(BlobId([7; 32]), 64 << 10, DEFAULT_GRANULARITY).unwrap();
    let gate = Arc::new(DirSyncGate::default());

    // "Process" A opens first: no data file, so it creates the map...
    let a = std::thread::spawn({
        let (dir, gate) = (dir.clone(), gate.clone());
        move || BlobCache::open_with(&dir, params, gate).unwrap().0
    });
    {
        let mut s = gate.state.lock().unwrap();
        while !s.0 {
            s = gate.cv.wait(s).unwrap();
        }
    }
    // ...and, before it has created the data file, B opens the same cache.
    let (b, _) = BlobCache::open(&dir, params).unwrap();
    gate.state.lock().unwrap().1 = true;
    gate.cv.notify_all();
    let a = a.join().unwrap();

    // A fills a frame (its bits set), and records the generation it
    // verified it at.
    let frame = vec![0xabu8; 8192];
    a.commit(&[(0, &frame)]).unwrap();
    let g0 = a.generation();
    assert_eq!(
        a.read_if_ready(0, 8192).unwrap().as_deref(),
        Some(&frame[..])
    );

    // B does not see A's bits: it fetches and writes the frame itself,
    // then evicts it (bump, clear, msync, punch).
    b.commit(&[(0, &frame)]).unwrap();
    b.punch(b.ranges_touching(0, 8192)).unwrap();

    // A: the generation it checks did not move, its bits are set, and
    // the bytes are zeros.
    let got = a.read_if_ready(0, 8192).unwrap();
    assert!(
        a.generation() != g0 || got.as_deref() == Some(&frame[..]) || got.is_none(),
        "A serves {} zero bytes at an unchanged generation",
        got.unwrap().iter().filter(|&&x| x == 0).count()
    );
}

// Bug 3: the generation (live block, not checksummed: untrusted) is
// encoded in the memo as `g + 1` with a plain add; a map whose generation
// reads u64::MAX panics the first verified hit (debug/overflow-checked
// builds; release wraps to "never verified").
#[test]
fn a_map_generation_of_u64_max_does_not_panic_a_hit() {
    let work = common::tempdir();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f00"), random_bytes(5, SIZE)).unwrap();
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &["--chunk-size", "64K"]);
    let blobs = out.join("blobs");
    let cache = work.path().join("cache");
    let cfg = FetchConfig {
        cache_dir: Some(cache.clone()),
        readahead: 0,
        widen: 0,
        ..FetchConfig::default()
    };
    let open = || {
        RafsFs::new(
            Image::open(&bootstrap).unwrap(),
            Arc::new(FileBackend::new(&blobs)),
            cfg.clone(),
        )
        .unwrap()
    };
    let want = std::fs::read(src.join("f00")).unwrap();
    {
        let fs = open();
        assert_eq!(read_file(&fs, "f00"), want);
        assert!(fs.fetcher().settle(Duration::from_secs(30)));
    }
    let map = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "map"))
        .unwrap();
    let mut bytes = std::fs::read(&map).unwrap();
    bytes[128..136].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&map, &bytes).unwrap();
    let fs = open();
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_file(&fs, "f00")));
    assert!(got.is_ok(), "a hostile generation value panicked the read");
    assert_eq!(got.unwrap(), want);
}

// An eviction leaves a frame some fetch has claimed on the disk; that
// frame must stay counted in the quota. Before, it left the count when
// picked, and only a commit of it counted it again: a claimer that finds
// the frame ready commits nothing, so the disk kept it uncounted (the
// quota could be exceeded by every such frame until the next mount).
#[test]
fn a_frame_an_eviction_leaves_on_the_disk_stays_counted_in_the_quota() {
    let work = common::tempdir();
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..3u64 {
        std::fs::write(src.join(format!("f{i:02}")), random_bytes(91 + i, SIZE)).unwrap();
    }
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &["--chunk-size", "64K", "--batch-size", "0"]);
    let cache = work.path().join("cache");
    let cfg = FetchConfig {
        cache_dir: Some(cache.clone()),
        // 2 frames fit; a third evicts down to 15/16 of 130K: both older frames.
        cache_limit: Some(130 << 10),
        readahead: 0,
        widen: 0,
        ..FetchConfig::default()
    };
    let fs = RafsFs::new(
        Image::open(&bootstrap).unwrap(),
        Arc::new(FileBackend::new(out.join("blobs"))),
        cfg,
    )
    .unwrap();
    let settle = || assert!(fs.fetcher().settle(Duration::from_secs(30)));
    for name in ["f00", "f01"] {
        read_file(&fs, name);
        settle();
    }
    // "Another process" holds the claim on f00, the oldest frame (stored
    // first: the data file's first 64 KiB).
    let data = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .unwrap();
    let blob = BlobId::from_hex(data.file_stem().unwrap().to_str().unwrap()).unwrap();
    let size = std::fs::metadata(&data).unwrap().len();
    let (other, _) = rafs::cache::CacheFile::open(&cache, &blob, size).unwrap();
    let claim = other
        .try_lock_span(0, SIZE as u64)
        .unwrap()
        .expect("f00 unclaimed");
    // Reading f02 evicts f01 and leaves f00, which is claimed. The
    // committer evicts after it has sealed f02 (after `settle` may
    // return): poll until the quota and the disk agree.
    read_file(&fs, "f02");
    settle();
    let m = fs.fetcher().metrics();
    common::wait_until(
        "the quota to count what the disk holds",
        Duration::from_secs(20),
        || m.evictions.get() >= 1 && m.cache_usage.get() == common::cache_allocated(&cache),
    );
    assert_eq!(m.evictions.get(), 1, "only f01 is evicted");
    assert_eq!(
        common::cache_allocated(&cache),
        2 * SIZE as u64,
        "f00 and f02 on the disk"
    );
    drop(claim);
}
