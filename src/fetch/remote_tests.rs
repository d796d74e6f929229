//! The fetch engine in manager mode against the fake manager of
//! `blobmgr::client::testing`, on a real ALIGNED image built in-process:
//! misses through the manager, hits without a message, a dropped
//! connection, an unreachable manager (both fallbacks), garbage in the
//! shared cache, NoSpace.

use super::FetchConfig;
use crate::backend::file::FileBackend;
use crate::backend::{Backend, BackendError, BlobId};
use crate::blobmgr::client::testing::{fill, Answer, Fake, OnFetch};
use crate::blobmgr::client::{ClientConfig, Fallback};
use crate::blobmgr::protocol::{FetchFrame, FrameStatus};
use crate::cache::Fill;
use crate::fs::RafsFs;
use crate::image::Image;
use crate::testimage::wait_until;
use crate::util::noise;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILES: u64 = 3;
const SIZE: usize = 192 << 10;

/// A file backend counting requests.
struct Counting {
    inner: FileBackend,
    requests: AtomicU64,
}

impl Backend for Counting {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.read_range(id, offset, len)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

struct World {
    tmp: tempfile::TempDir,
    src: PathBuf,
    bootstrap: PathBuf,
    blobs: PathBuf,
    /// The blob's stored bytes (what the fake "fetches").
    stored: Arc<Vec<u8>>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        for i in 0..FILES {
            std::fs::write(src.join(format!("f{i}")), noise(SIZE, 100 + i)).unwrap();
        }
        let out = tmp.path().join("image");
        let args = crate::builder::CreateArgs {
            source: src.clone(),
            upper_layers: Vec::new(),
            json: false,
            output: out.clone(),
            chunker: Some(crate::builder::ChunkerKind::Fixed),
            chunk_size: Some(64 << 10),
            cdc_min: None,
            cdc_avg: None,
            cdc_max: None,
            compression_level: 1,
            batch_size: None,
            batch_threshold: None,
            batch_level: None,
            chunk_dict: None,
            blob_size_limit: None,
            prefetch_list: None,
            progress: false,
            no_progress: true,
            threads: Some(1),
        };
        crate::builder::run(&args).unwrap();
        let blobs = out.join("blobs");
        let blob = std::fs::read_dir(&blobs)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let stored = Arc::new(std::fs::read(blob).unwrap());
        let cache = tmp.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        World {
            bootstrap: out.join("bootstrap"),
            tmp,
            src,
            blobs,
            stored,
        }
    }

    fn socket(&self) -> PathBuf {
        self.tmp.path().join("bm.sock")
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn fake(&self, on: Arc<OnFetch>) -> Fake {
        Fake::start(&self.socket(), &self.cache(), on)
    }

    fn fs(
        &self,
        fallback: Fallback,
        grace: Duration,
        timeout: Duration,
    ) -> (RafsFs, Arc<Counting>) {
        self.fs_with(
            fallback,
            grace,
            timeout,
            FetchConfig::default().memory_bytes,
        )
    }

    fn fs_with(
        &self,
        fallback: Fallback,
        grace: Duration,
        timeout: Duration,
        memory_bytes: usize,
    ) -> (RafsFs, Arc<Counting>) {
        let backend = Arc::new(Counting {
            inner: FileBackend::new(&self.blobs),
            requests: AtomicU64::new(0),
        });
        let cfg = FetchConfig {
            manager: Some(ClientConfig {
                socket: self.socket(),
                fallback,
                grace,
            }),
            readahead: 0,
            read_timeout: timeout,
            memory_bytes,
            ..FetchConfig::default()
        };
        let image = Image::open(&self.bootstrap).unwrap();
        (RafsFs::new(image, backend.clone(), cfg).unwrap(), backend)
    }

    /// Fills what it is asked and answers Ready: a working manager.
    fn filling(&self) -> Arc<OnFetch> {
        let stored = self.stored.clone();
        Arc::new(move |cache, frames: &[FetchFrame], _| {
            frames.iter().for_each(|f| fill(cache, &stored, f));
            Answer::Done(vec![FrameStatus::Ready; frames.len()])
        })
    }

    fn assert_tree(&self, fs: &RafsFs) {
        for i in 0..FILES {
            let name = format!("f{i}");
            let want = std::fs::read(self.src.join(&name)).unwrap();
            assert!(read_file(fs, &name).unwrap() == want, "{name}: wrong bytes");
        }
    }
}

fn read_file(fs: &RafsFs, name: &str) -> Result<Vec<u8>, crate::fs::FsError> {
    let attr = fs.lookup(0, name.as_bytes())?;
    let mut out = Vec::new();
    while (out.len() as u64) < attr.size {
        let part = fs.read(attr.ino, out.len() as u64, 64 << 10)?;
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    Ok(out)
}

fn long() -> Duration {
    Duration::from_secs(20)
}

#[test]
fn misses_go_to_the_manager_and_hits_send_nothing() {
    let w = World::new();
    let fake = w.fake(w.filling());
    let (fs, backend) = w.fs(Fallback::Fetch, long(), long());
    w.assert_tree(&fs);
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        0,
        "the manager fetched"
    );
    let m = fs.fetcher().metrics();
    assert!(m.manager_requests.get() > 0);
    assert_eq!(m.manager_fallbacks.get(), 0);
    let fetches = fake.fetches.load(Ordering::SeqCst);
    // A second process: every read is a hit, no Fetch, no backend.
    drop(fs);
    let (fs, backend) = w.fs(Fallback::Fetch, long(), long());
    w.assert_tree(&fs);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        fake.fetches.load(Ordering::SeqCst),
        fetches,
        "hits send no Fetch"
    );
    let m = fs.fetcher().metrics();
    assert!(m.cache_hits.get() > 0);
    assert_eq!(m.manager_requests.get(), 0);
    // The hits are reported, batched: a few Used, not one per read.
    let used = || fake.count(|m| matches!(m, crate::blobmgr::protocol::Message::Used { .. }));
    wait_until("a Used", Duration::from_secs(5), || used() >= 1);
    assert!(used() <= 2, "{} Used messages", used());
}

#[test]
fn a_dropped_connection_costs_no_read() {
    let w = World::new();
    let inner = w.filling();
    let _fake = w.fake(Arc::new(move |cache, frames: &[FetchFrame], n| match n {
        0 => Answer::Drop,
        _ => inner(cache, frames, n),
    }));
    let (fs, backend) = w.fs(Fallback::Wait, long(), long());
    let t0 = Instant::now();
    w.assert_tree(&fs);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        0,
        "re-sent, not fallen back"
    );
}

#[test]
fn an_unreachable_manager_falls_back_after_the_grace() {
    let w = World::new();
    let grace = Duration::from_millis(300);
    let t0 = Instant::now();
    let (fs, backend) = w.fs(Fallback::Fetch, grace, long());
    w.assert_tree(&fs);
    assert!(t0.elapsed() >= grace);
    assert!(backend.requests.load(Ordering::SeqCst) > 0);
    assert!(fs.fetcher().metrics().manager_fallbacks.get() > 0);
}

#[test]
fn an_unreachable_manager_with_wait_fails_at_the_deadline() {
    let w = World::new();
    let timeout = Duration::from_millis(800);
    let (fs, backend) = w.fs(Fallback::Wait, Duration::from_millis(10), timeout);
    let t0 = Instant::now();
    let r = read_file(&fs, "f0");
    assert!(r.is_err(), "no bytes without the manager");
    assert!(t0.elapsed() >= timeout);
    assert!(t0.elapsed() < timeout * 10);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn garbage_in_the_shared_cache_is_never_returned() {
    let w = World::new();
    // A lying manager: writes garbage and says Ready.
    let _fake = w.fake(Arc::new(|cache, frames: &[FetchFrame], _| {
        for f in frames {
            let junk = vec![0xa5; f.ulen as usize];
            let end = (f.ustart + u64::from(f.ulen)).next_multiple_of(4096);
            let fill = Fill {
                offset: f.ustart,
                bytes: &junk,
                cover_end: end.min(cache.data().size()),
            };
            cache.commit_covering(&[fill]).unwrap();
        }
        Answer::Done(vec![FrameStatus::Ready; frames.len()])
    }));
    let (fs, backend) = w.fs(Fallback::Fetch, long(), long());
    w.assert_tree(&fs);
    assert!(backend.requests.load(Ordering::SeqCst) > 0);
    let m = fs.fetcher().metrics();
    assert!(m.cache_corrupt.get() > 0);
    assert!(m.manager_fallbacks.get() > 0);
}

#[test]
fn no_space_in_the_manager_fetches_into_memory() {
    let w = World::new();
    let _fake = w.fake(Arc::new(|_, frames: &[FetchFrame], _| {
        Answer::Done(vec![FrameStatus::NoSpace; frames.len()])
    }));
    let (fs, backend) = w.fs(Fallback::Fetch, long(), long());
    w.assert_tree(&fs);
    assert!(backend.requests.load(Ordering::SeqCst) > 0);
    assert!(fs.fetcher().metrics().manager_fallbacks.get() > 0);
}

#[test]
fn a_manager_restarting_within_the_deadline_costs_no_read() {
    let w = World::new();
    let fake = w.fake(w.filling());
    let (fs, backend) = w.fs(Fallback::Wait, long(), long());
    assert!(read_file(&fs, "f0").is_ok());
    fake.stop();
    let (sock, cache, on) = (w.socket(), w.cache(), w.filling());
    let client = fs.fetcher().remote.as_ref().unwrap().client.clone();
    let asked = fs.fetcher().metrics().manager_requests.clone();
    let before = asked.get();
    let restart = std::thread::spawn(move || {
        // Back once the client found it gone and a read is asking it.
        wait_until("a read waiting", Duration::from_secs(10), || {
            client.unreachable_since().is_some() && asked.get() > before
        });
        Fake::start(&sock, &cache, on)
    });
    w.assert_tree(&fs);
    let _fake = restart.join().unwrap();
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn prefetch_through_the_manager_fills_its_cache_in_the_prefetch_lane() {
    use crate::blobmgr::protocol::{Lane, Message};
    let w = World::new();
    let fake = w.fake(w.filling());
    // As `rafs prefetch`: no memory cache, the manager's disk is the target.
    let (fs, backend) = w.fs_with(Fallback::Fetch, long(), long(), 0);
    let f = fs.fetcher();
    let plan = f.plan_all();
    assert!(!plan.frames.is_empty());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let report = f.prefetch(&plan, &stop, &mut |_| {});
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(report.stopped.is_none(), "{report:?}");
    assert!(plan.frames.iter().all(|&(b, fi)| f.frame_cached(b, fi)));
    let lanes =
        |lane: Lane| fake.count(|m| matches!(m, Message::Fetch { lane: l, .. } if *l == lane));
    assert!(lanes(Lane::Prefetch) > 0);
    assert_eq!(lanes(Lane::OnDemand), 0);
    drop(fs);
    // A later mount reads it all with no backend request and no Fetch.
    let before = fake.fetches.load(Ordering::SeqCst);
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        0,
        "the manager fetched"
    );
    let (fs, backend) = w.fs(Fallback::Fetch, long(), long());
    w.assert_tree(&fs);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    assert_eq!(fake.fetches.load(Ordering::SeqCst), before);
}

#[test]
fn a_blob_the_manager_refuses_is_served_without_the_cache() {
    let w = World::new();
    // Another image holds the blob's cache with another layout.
    let image = Image::open(&w.bootstrap).unwrap();
    let b = image.bootstrap().unwrap();
    let blob = &b.blobs()[0];
    let p = crate::cache::MapParams::new(BlobId(blob.id), blob.uncompressed_size.get(), 4096)
        .unwrap()
        .with_layout([0xee; 16]);
    crate::cache::BlobCache::open(&w.cache(), p).unwrap();
    let fake = w.fake(w.filling());
    let (fs, backend) = w.fs(Fallback::Fetch, long(), long());
    w.assert_tree(&fs);
    let m = fs.fetcher().metrics();
    assert_eq!(m.manager_refused_blobs.get(), 1);
    assert_eq!(m.manager_requests.get(), 0);
    assert_eq!(
        m.manager_fallbacks.get(),
        0,
        "not a fallback: no cache for it"
    );
    assert!(backend.requests.load(Ordering::SeqCst) > 0);
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 0);
}

#[test]
fn an_on_demand_read_of_a_speculated_frame_is_not_held_by_the_managers_prefetch_lane() {
    use crate::manager::daemon::{Daemon, DaemonOptions};
    use crate::manager::engine::Engine;
    let w = World::new();
    // A real manager whose prefetch lane is throttled to 1 byte/s: what it
    // queues there waits for ever, unless an on-demand request promotes it.
    let mcache = w.tmp.path().join("mcache");
    std::fs::create_dir(&mcache).unwrap();
    let mcfg = FetchConfig {
        cache_dir: Some(mcache.clone()),
        prefetch_bandwidth: Some(1),
        ..FetchConfig::default()
    };
    let engine = Engine::new(mcfg, Arc::new(FileBackend::new(&w.blobs))).unwrap();
    let opts = DaemonOptions {
        socket: Some(w.socket()),
        cache_dir: mcache,
        ..DaemonOptions::default()
    };
    let mut reg = prometheus_client::registry::Registry::default();
    let daemon = Daemon::start(engine, &opts, &mut reg).unwrap();
    let (fs, _backend) = w.fs(Fallback::Fetch, long(), Duration::from_secs(10));
    let ino = fs.lookup(0, b"f1").unwrap().ino;
    // f1 speculated (as --widen or the ELF rule would): a background job,
    // sent to the manager's prefetch lane.
    let mut plan = super::prefetch::Plan::default();
    {
        let b = fs.image().bootstrap().unwrap();
        fs.fetcher().plan_file(&b, ino, None, &mut plan);
    }
    assert!(fs.fetcher().speculate(&plan) > 0);
    let (blob, fi) = plan.frames[0];
    let f = fs.fetcher();
    let key = (blob, f.index.blobs[blob as usize].frames[fi].coff);
    let running = || {
        f.flight(&key)
            .is_some_and(|fl| fl.lane.load(Ordering::Acquire) == super::BG_RUNNING)
    };
    crate::testimage::wait_until(
        "the job sent to the prefetch lane",
        Duration::from_secs(20),
        running,
    );
    let t0 = Instant::now();
    let got = fs.read(ino, 0, 4096);
    let took = t0.elapsed();
    drop(fs);
    daemon.shutdown();
    let got = got.unwrap_or_else(|e| panic!("read failed after {took:?}: {e}"));
    assert_eq!(got, noise(SIZE, 101)[..4096]);
    assert!(
        took < Duration::from_secs(5),
        "waited {took:?} behind the prefetch lane"
    );
}
