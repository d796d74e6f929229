//! Unit tests of the engine, over a fake backend (no sockets).

use super::*;
use crate::backend::BackendError;
use crate::blobmgr::protocol::{Member, FRAME_ZSTD};
use crate::testimage::wait_until;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU32;
use std::sync::Condvar;
use std::time::Duration;

const ULEN: u32 = 4096;
const LONG: Duration = Duration::from_secs(20);

/// A backend over one blob's stored bytes: counts requests per offset, and
/// can be held at a gate, or made to fail.
#[derive(Default)]
struct Fake {
    stored: Vec<u8>,
    requests: Mutex<Vec<(u64, u64)>>,
    closed: Mutex<bool>,
    cv: Condvar,
    fail: AtomicU32,
}

impl Fake {
    fn close_gate(&self) {
        *self.closed.lock().unwrap() = true;
    }
    fn open_gate(&self) {
        *self.closed.lock().unwrap() = false;
        self.cv.notify_all();
    }
    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
    /// Requests whose span holds stored offset `coff`.
    fn covering(&self, coff: u64) -> usize {
        let r = self.requests.lock().unwrap();
        r.iter().filter(|(o, l)| *o <= coff && coff < o + l).count()
    }
}

impl Backend for Fake {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.requests.lock().unwrap().push((offset, len));
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.cv.wait(closed).unwrap();
        }
        drop(closed);
        let fail = self.fail.load(Ordering::Relaxed);
        if fail > 0 {
            self.fail.store(fail - 1, Ordering::Relaxed);
            return Err(BackendError::Transport {
                blob: *id,
                detail: "injected".into(),
                timeout: false,
            });
        }
        let end = offset as usize + len as usize;
        Ok(self.stored[offset as usize..end].to_vec())
    }
    fn blob_size(&self, _: &BlobId) -> Result<u64, BackendError> {
        Ok(self.stored.len() as u64)
    }
}

/// A blob of `n` frames of 4 KiB, each with two members; odd frames zstd.
struct TestBlob {
    data: Vec<u8>,
    frames: Vec<FetchFrame>,
}

fn test_blob(n: usize) -> (TestBlob, Vec<u8>) {
    let mut data = Vec::new();
    let mut stored = Vec::new();
    let mut frames = Vec::new();
    for i in 0..n {
        let frame: Vec<u8> = (0..ULEN as usize)
            .map(|j| ((i * 31 + j / 7) % 251) as u8)
            .collect();
        let (bytes, flags) = match i % 2 {
            1 => (zstd::bulk::compress(&frame, 3).unwrap(), FRAME_ZSTD),
            _ => (frame.clone(), 0),
        };
        let half = ULEN / 2;
        let members = [(0, half), (half, half)]
            .iter()
            .map(|&(offset, size)| Member {
                offset,
                size,
                digest: *blake3::hash(&frame[offset as usize..(offset + size) as usize]).as_bytes(),
            })
            .collect();
        frames.push(FetchFrame {
            coff: stored.len() as u64,
            clen: bytes.len() as u32,
            ustart: data.len() as u64,
            ulen: ULEN,
            flags,
            members,
        });
        stored.extend_from_slice(&bytes);
        data.extend_from_slice(&frame);
    }
    (TestBlob { data, frames }, stored)
}

struct Setup {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    fake: Arc<Fake>,
    blob: Arc<Blob>,
    tb: TestBlob,
    data_fd: OwnedFd,
}

fn setup(n: usize, tune: impl FnOnce(&mut FetchConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (tb, stored) = test_blob(n);
    let fake = Arc::new(Fake {
        stored,
        ..Fake::default()
    });
    let mut cfg = FetchConfig {
        cache_dir: Some(dir.path().join("cache")),
        concurrency: 4,
        prefetch_threads: 1,
        retry_base: Duration::from_millis(1),
        retry_max: Duration::from_millis(4),
        ..FetchConfig::default()
    };
    tune(&mut cfg);
    let engine = Engine::new(cfg, fake.clone()).unwrap();
    let opened = engine
        .open(&open_req(tb.data.len() as u64, [7; 16]))
        .unwrap();
    Setup {
        _dir: dir,
        engine,
        fake,
        blob: opened.blob,
        tb,
        data_fd: opened.data,
    }
}

fn open_req(size: u64, layout: [u8; 16]) -> OpenRequest {
    OpenRequest {
        blob_id: [0xab; 32],
        blob_size: size,
        layout,
        granularity: 4096,
    }
}

/// Fetches and waits for the answer.
fn fetch(s: &Setup, lane: Lane, frames: Vec<FetchFrame>, deadline: Duration) -> Vec<FrameStatus> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let done: FetchDone = Box::new(move |st| {
        let _ = tx.send(st);
    });
    s.engine
        .fetch(&s.blob, lane, frames, Instant::now() + deadline, done);
    rx.recv_timeout(LONG).expect("no FetchDone")
}

fn ready(s: &Setup, f: &FetchFrame) -> bool {
    s.blob.ready(&s.blob.cover(f))
}

fn on_disk(s: &Setup, f: &FetchFrame) -> Vec<u8> {
    let mut buf = vec![0; f.ulen as usize];
    let file = std::fs::File::from(s.data_fd.try_clone().unwrap());
    file.read_exact_at(&mut buf, f.ustart).unwrap();
    buf
}

#[test]
fn concurrent_fetches_share_one_flight_per_frame() {
    let s = Arc::new(setup(8, |_| {}));
    // Held at the gate until all 8 requests are in: 8 flights started,
    // the other 7 x 8 frames joined them.
    s.fake.close_gate();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || fetch(&s, Lane::OnDemand, s.tb.frames.clone(), LONG))
        })
        .collect();
    wait_until("every request in", LONG, || {
        s.engine.metrics().joined.get() == 7 * 8
    });
    s.fake.open_gate();
    for t in threads {
        assert_eq!(t.join().unwrap(), vec![FrameStatus::Ready; 8]);
    }
    for f in &s.tb.frames {
        assert_eq!(
            s.fake.covering(f.coff),
            1,
            "frame at {} fetched once",
            f.coff
        );
        assert!(ready(&s, f));
        let at = f.ustart as usize;
        assert_eq!(on_disk(&s, f), s.tb.data[at..at + ULEN as usize]);
    }
    assert!(s.engine.metrics().joined.get() > 0);
}

#[test]
fn adjacent_frames_of_one_fetch_are_one_range_request() {
    let s = setup(6, |_| {});
    let st = fetch(&s, Lane::OnDemand, s.tb.frames.clone(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready; 6]);
    assert_eq!(s.fake.count(), 1);
}

#[test]
fn lying_digests_are_corrupt_and_nothing_is_ready() {
    let s = setup(2, |_| {});
    let mut f = s.tb.frames[1].clone();
    f.members[1].digest[0] ^= 1;
    let st = fetch(&s, Lane::OnDemand, vec![f.clone()], LONG);
    assert_eq!(st, vec![FrameStatus::Corrupt]);
    assert!(!ready(&s, &f));
    assert_eq!(s.fake.count(), 6, "retried up to the attempt limit");
    assert_eq!(s.engine.status().usage, 0);
    // The liar's description is forgotten; the honest frame is fetched.
    let st = fetch(&s, Lane::OnDemand, vec![s.tb.frames[1].clone()], LONG);
    assert_eq!(st, vec![FrameStatus::Ready]);
}

#[test]
fn transient_errors_are_retried() {
    let s = setup(1, |_| {});
    s.fake.fail.store(2, Ordering::Relaxed);
    let st = fetch(&s, Lane::OnDemand, s.tb.frames.clone(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready]);
    assert_eq!(s.fake.count(), 3);
}

#[test]
fn ready_frame_failing_the_askers_digests_is_invalidated_and_refetched() {
    let s = setup(2, |_| {});
    let f = s.tb.frames[0].clone();
    assert_eq!(
        fetch(&s, Lane::OnDemand, vec![f.clone()], LONG),
        vec![FrameStatus::Ready]
    );
    // Bytes rotted on disk under set bits.
    let path = crate::cache::blobfile::data_path(&s.engine.dir, &s.blob.id);
    let rw = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    rw.write_all_at(&[0xee; 16], f.ustart + 10).unwrap();
    let gen = s.blob.cache.generation();
    assert_eq!(
        fetch(&s, Lane::OnDemand, vec![f.clone()], LONG),
        vec![FrameStatus::Ready]
    );
    assert!(s.blob.cache.generation() > gen, "generation bumped");
    assert_eq!(s.fake.count(), 2, "refetched");
    assert_eq!(s.engine.metrics().reverify_mismatches.get(), 1);
    assert_eq!(on_disk(&s, &f), s.tb.data[..ULEN as usize]);
    // Another client's (lying) digests invalidate, refetch, and fail.
    let mut other = f.clone();
    other.members[0].digest = [1; 32];
    let gen = s.blob.cache.generation();
    assert_eq!(
        fetch(&s, Lane::OnDemand, vec![other], LONG),
        vec![FrameStatus::Corrupt]
    );
    assert!(s.blob.cache.generation() > gen);
    assert_eq!(s.fake.count(), 2 + 6);
}

#[test]
fn slow_backend_times_out_at_the_deadline_then_fills() {
    let s = setup(2, |_| {});
    s.fake.close_gate();
    let t0 = Instant::now();
    let st = fetch(
        &s,
        Lane::OnDemand,
        s.tb.frames.clone(),
        Duration::from_millis(200),
    );
    assert_eq!(st, vec![FrameStatus::TimedOut; 2]);
    assert!(t0.elapsed() < Duration::from_secs(10));
    s.fake.open_gate();
    wait_until("the fill", LONG, || {
        s.tb.frames.iter().all(|f| ready(&s, f))
    });
    let st = fetch(&s, Lane::OnDemand, s.tb.frames.clone(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready; 2]);
    assert_eq!(s.fake.count(), 1);
}

#[test]
fn prefetch_throttle_never_delays_on_demand_and_is_promoted() {
    let s = setup(8, |c| c.prefetch_bandwidth = Some(1));
    let (tx, _rx) = crossbeam_channel::unbounded();
    let done: FetchDone = Box::new(move |st| {
        let _ = tx.send(st);
    });
    let deadline = Instant::now() + LONG;
    s.engine.fetch(
        &s.blob,
        Lane::Prefetch,
        s.tb.frames[..4].to_vec(),
        deadline,
        done,
    );
    // Other frames: served at once although the prefetch lane is stuck.
    let t0 = Instant::now();
    let st = fetch(&s, Lane::OnDemand, s.tb.frames[6..].to_vec(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready; 2]);
    // A frame the prefetch lane only queued: promoted, served at once.
    let st = fetch(&s, Lane::OnDemand, vec![s.tb.frames[1].clone()], LONG);
    assert_eq!(st, vec![FrameStatus::Ready]);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(s.engine.metrics().promoted.get(), 1);
    assert_eq!(
        s.fake.covering(s.tb.frames[0].coff),
        0,
        "prefetch still throttled"
    );
}

#[test]
fn quota_evicts_lru_and_used_keeps_hot_frames() {
    let limit = 8 * u64::from(ULEN);
    let s = setup(32, |c| c.cache_limit = Some(limit));
    let hot = s.tb.frames[0].clone();
    for f in &s.tb.frames {
        assert_eq!(
            fetch(&s, Lane::OnDemand, vec![f.clone()], LONG),
            vec![FrameStatus::Ready]
        );
        s.engine.used(
            &s.blob,
            &[
                UsedRange {
                    start: hot.ustart + 5,
                    len: 10,
                },
                UsedRange {
                    start: u64::MAX - 10,
                    len: 5,
                },
            ],
        );
        wait_until("usage under the limit", LONG, || {
            s.engine.status().usage <= limit
        });
    }
    assert!(s.engine.metrics().evictions.get() > 0);
    assert!(ready(&s, &hot), "the hot frame stays");
    assert!(!ready(&s, &s.tb.frames[1]), "a cold one went");
    let st = s.engine.status();
    assert_eq!(st.limit, Some(limit));
    assert!(st.usage <= limit && st.usage > 0);
}

#[test]
fn invalid_frames_are_refused() {
    let s = setup(4, |_| {});
    let good = s.tb.frames[1].clone();
    let mut misaligned = good.clone();
    misaligned.ustart += 512;
    let mut outside = s.tb.frames[3].clone();
    outside.ustart = 4 * u64::from(ULEN);
    let mut member = good.clone();
    member.members[1].size = ULEN;
    let mut overflow = good.clone();
    overflow.ustart = !4095;
    let st = fetch(
        &s,
        Lane::OnDemand,
        vec![misaligned, outside, member, overflow],
        LONG,
    );
    assert_eq!(st, vec![FrameStatus::Invalid; 4]);
    // Contradicting a known frame: same ustart, same coff, or overlapping.
    assert_eq!(
        fetch(&s, Lane::OnDemand, vec![good.clone()], LONG),
        vec![FrameStatus::Ready]
    );
    let mut same_ustart = good.clone();
    same_ustart.coff += 1;
    let mut same_coff = good.clone();
    same_coff.ustart = 2 * u64::from(ULEN);
    let mut overlap = s.tb.frames[0].clone();
    overlap.ulen = ULEN + 1;
    let st = fetch(
        &s,
        Lane::OnDemand,
        vec![same_ustart, same_coff, overlap],
        LONG,
    );
    assert_eq!(st, vec![FrameStatus::Invalid; 3]);
    assert_eq!(s.fake.count(), 1);
}

#[test]
fn open_with_another_layout_is_a_conflict() {
    let s = setup(2, |_| {});
    let size = s.tb.data.len() as u64;
    let code = |r: Result<Opened<Blob>, Refused>| r.err().map(|e| e.code);
    assert_eq!(
        code(s.engine.open(&open_req(size, [8; 16]))),
        Some(ErrorCode::LayoutConflict)
    );
    assert_eq!(
        code(s.engine.open(&open_req(size + 4096, [7; 16]))),
        Some(ErrorCode::LayoutConflict)
    );
    let mut bad = open_req(size, [7; 16]);
    bad.granularity = 1000;
    assert_eq!(code(s.engine.open(&bad)), Some(ErrorCode::BadRequest));
    assert!(s.engine.open(&open_req(size, [7; 16])).is_ok());
    assert_eq!(s.engine.status().blobs, 1);
}

#[test]
fn descriptors_are_read_only_and_the_held_files() {
    let s = setup(2, |_| {});
    let opened = s
        .engine
        .open(&open_req(s.tb.data.len() as u64, [7; 16]))
        .unwrap();
    for fd in [opened.data, opened.map] {
        let f = std::fs::File::from(fd);
        let err = f.write_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
    let a = std::fs::File::from(s.data_fd.try_clone().unwrap())
        .metadata()
        .unwrap();
    let b = s.blob.cache.data().file().metadata().unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
}

#[test]
fn a_frame_larger_than_the_quota_is_no_space() {
    let s = setup(1, |c| c.cache_limit = Some(1000));
    let st = fetch(&s, Lane::OnDemand, s.tb.frames.clone(), LONG);
    assert_eq!(st, vec![FrameStatus::NoSpace]);
    assert!(!ready(&s, &s.tb.frames[0]));
    assert_eq!(s.engine.status().usage, 0);
}

#[test]
fn a_joiner_with_other_digests_is_checked_against_the_cache() {
    let s = Arc::new(setup(1, |_| {}));
    s.fake.close_gate();
    let f = s.tb.frames[0].clone();
    let mut liar = f.clone();
    liar.members[0].digest = [3; 32];
    let honest = {
        let (s, f) = (s.clone(), f.clone());
        std::thread::spawn(move || fetch(&s, Lane::OnDemand, vec![f], LONG))
    };
    wait_until("the first request", LONG, || s.fake.count() == 1);
    let lying = {
        let s = s.clone();
        std::thread::spawn(move || fetch(&s, Lane::OnDemand, vec![liar], LONG))
    };
    wait_until("the join", LONG, || s.engine.metrics().joined.get() == 1);
    s.fake.open_gate();
    assert_eq!(honest.join().unwrap(), vec![FrameStatus::Ready]);
    assert_eq!(lying.join().unwrap(), vec![FrameStatus::Corrupt]);
    assert_eq!(s.fake.count(), 1, "one flight for both");
    assert_eq!(s.engine.metrics().reverify_mismatches.get(), 1);
}

#[test]
fn ready_ranges_of_earlier_runs_count_and_go_first() {
    let s = setup(8, |_| {});
    let st = fetch(&s, Lane::OnDemand, s.tb.frames[..4].to_vec(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready; 4]);
    let dir = s.engine.dir.clone();
    let (tb, fake) = (s.tb, s.fake.clone());
    drop((s.engine, s.blob, s.data_fd));
    let limit = 5 * u64::from(ULEN);
    let cfg = FetchConfig {
        cache_dir: Some(dir),
        cache_limit: Some(limit),
        retry_base: Duration::from_millis(1),
        ..FetchConfig::default()
    };
    let engine = Engine::new(cfg, fake).unwrap();
    let opened = engine
        .open(&open_req(tb.data.len() as u64, [7; 16]))
        .unwrap();
    assert_eq!(engine.status().usage, 4 * u64::from(ULEN));
    let s = Setup {
        _dir: s._dir,
        engine,
        fake: s.fake,
        blob: opened.blob,
        tb,
        data_fd: opened.data,
    };
    // A frame of the old run, re-checked: now a frame of its own.
    let st = fetch(&s, Lane::OnDemand, vec![s.tb.frames[3].clone()], LONG);
    assert_eq!(st, vec![FrameStatus::Ready]);
    assert_eq!(s.engine.status().usage, 4 * u64::from(ULEN));
    let st = fetch(&s, Lane::OnDemand, s.tb.frames[4..6].to_vec(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready; 2]);
    wait_until("eviction", LONG, || s.engine.status().usage <= limit);
    assert!(!ready(&s, &s.tb.frames[0]), "the old run went first");
    assert!(ready(&s, &s.tb.frames[3]) && ready(&s, &s.tb.frames[5]));
    assert_eq!(s.engine.status().usage, 3 * u64::from(ULEN));
}

/// An engine over `dir` (no worker tuning), as after a manager restart.
fn restart(dir: &Path, fake: &Arc<Fake>, limit: Option<u64>) -> Arc<Engine> {
    let cfg = FetchConfig {
        cache_dir: Some(dir.to_path_buf()),
        cache_limit: limit,
        retry_base: Duration::from_millis(1),
        ..FetchConfig::default()
    };
    Engine::new(cfg, fake.clone()).unwrap()
}

/// Ready bytes the map on disk records for the test blob.
fn ready_on_disk(dir: &Path) -> u64 {
    match crate::cache::tools::read_map(dir, &BlobId([0xab; 32])).unwrap() {
        crate::cache::tools::MapInfo::Valid { ready_bytes, .. } => ready_bytes,
        other => panic!("{other:?}"),
    }
}

#[test]
fn caches_on_disk_count_at_start_and_are_evicted_to_the_limit() {
    let s = setup(12, |_| {});
    // Every other frame: six runs of one frame each.
    let filled: Vec<FetchFrame> = s.tb.frames.iter().step_by(2).cloned().collect();
    let st = fetch(&s, Lane::OnDemand, filled.clone(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready; 6]);
    let dir = s.engine.dir.clone();
    let (tb, fake) = (s.tb, s.fake.clone());
    drop((s.engine, s.blob, s.data_fd));
    // Foreign and bad files are skipped and left as they are.
    let bad_map = crate::cache::bitmap::map_path(&dir, &BlobId([0xcd; 32]));
    let foreign = dir.join("notes.txt");
    std::fs::write(&bad_map, b"not a map").unwrap();
    std::fs::write(&foreign, b"keep me").unwrap();
    let ulen = u64::from(ULEN);

    // No limit: everything on disk is accounted before any open.
    let engine = restart(&dir, &fake, None);
    assert_eq!(
        engine.status(),
        EngineStatus {
            blobs: 1,
            usage: 6 * ulen,
            limit: None
        }
    );
    assert_eq!(ready_on_disk(&dir), 6 * ulen);
    drop(engine);

    // A smaller limit: evicted under it at start, before any open.
    let limit = 4 * ulen;
    let engine = restart(&dir, &fake, Some(limit));
    let usage = engine.status().usage;
    assert!(usage <= limit && usage > 0, "{usage}");
    assert_eq!(usage, ready_on_disk(&dir), "usage is what is on disk");
    assert!(engine.metrics().evictions.get() > 0);
    assert_eq!(std::fs::read(&bad_map).unwrap(), b"not a map");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"keep me");

    // Other parameters: refused; the same: the same entry, not counted twice.
    let size = tb.data.len() as u64;
    let e = engine.open(&open_req(size, [8; 16])).err().unwrap();
    assert_eq!(e.code, ErrorCode::LayoutConflict);
    let opened = engine.open(&open_req(size, [7; 16])).unwrap();
    assert_eq!(engine.status().usage, usage);
    assert_eq!(engine.status().blobs, 1);
    let s = Setup {
        _dir: s._dir,
        engine,
        fake: fake.clone(),
        blob: opened.blob,
        tb,
        data_fd: opened.data,
    };
    let kept: Vec<FetchFrame> = filled.into_iter().filter(|f| ready(&s, f)).collect();
    assert_eq!(kept.len() as u64 * ulen, usage);
    let before = fake.count();
    let st = fetch(&s, Lane::OnDemand, kept.clone(), LONG);
    assert_eq!(st, vec![FrameStatus::Ready; kept.len()]);
    assert_eq!(fake.count(), before, "served from the cache");
    for f in &kept {
        let at = f.ustart as usize;
        assert_eq!(on_disk(&s, f), s.tb.data[at..at + ULEN as usize]);
    }
    assert_eq!(s.engine.status().usage, usage);
}

#[test]
fn opening_a_huge_new_blob_scans_none_of_its_ranges() {
    // Just under 16 TiB (ext4's file size limit) at 4 KiB a range: 2^32
    // ranges, a sparse 512 MiB map. A client chooses blob_size, and the
    // open holds the engine's blob table: a scan of the new (all clear)
    // map, one step per range, took tens of seconds here (and hours for
    // the sizes a filesystem without that limit allows), during which no
    // other client could open anything. Without the scan it is a few file
    // operations.
    let s = setup(1, |_| {});
    let size = (1 << 44) - (16 << 20);
    let req = OpenRequest {
        blob_id: [0xcd; 32],
        ..open_req(size, [9; 16])
    };
    let c0 = crate::testimage::thread_cpu();
    let opened = s.engine.open(&req).unwrap();
    let took = crate::testimage::thread_cpu() - c0;
    assert!(
        took < Duration::from_secs(3),
        "opening an empty 16 TiB blob took {took:?} of CPU"
    );
    assert_eq!(s.engine.status().usage, 0);
    assert_eq!(opened.blob.size, size);
}

#[test]
fn answered_requests_leave_the_deadline_timer() {
    let timer = Timer::start().unwrap();
    let metrics = Arc::new(EngineMetrics::default());
    // A client may send Fetches with the longest deadline, answered at
    // once (Invalid frames), as fast as it likes.
    let deadline = Instant::now() + Duration::from_secs(600);
    for _ in 0..100_000 {
        let req = Request::new(1, deadline, Box::new(|_| {}), metrics.clone());
        timer.add(&req);
        req.settle(0, FrameStatus::Invalid);
    }
    let pending = timer.pending();
    timer.stop();
    assert!(pending < 10_000, "{pending} answered requests still held");
}

#[test]
fn a_used_report_costs_at_most_one_pass_over_the_blobs_frames() {
    // A blob of 100 000 known frames and a Used of 4000 ranges each
    // covering all of it (the most one packet holds): each range walked
    // every frame under the blob's table lock, 4 x 10^8 steps a packet
    // (seconds here); merged first, the ranges cost one pass.
    let n = 100_000u64;
    let s = setup(1, |_| {});
    let size = n * u64::from(ULEN);
    let req = OpenRequest {
        blob_id: [0xcd; 32],
        ..open_req(size, [9; 16])
    };
    let blob = s.engine.open(&req).unwrap().blob;
    for i in 0..n {
        let f = FetchFrame {
            coff: i * u64::from(ULEN),
            clen: ULEN,
            ustart: i * u64::from(ULEN),
            ulen: ULEN,
            flags: 0,
            members: vec![Member {
                offset: 0,
                size: ULEN,
                digest: [0; 32],
            }],
        };
        blob.note_frame(&f).unwrap();
    }
    let all = UsedRange {
        start: 0,
        len: size,
    };
    let c0 = crate::testimage::thread_cpu();
    for _ in 0..4 {
        s.engine.used(&blob, &vec![all; 4000]);
    }
    let took = crate::testimage::thread_cpu() - c0;
    assert!(took < Duration::from_secs(3), "4 Used took {took:?} of CPU");
}
