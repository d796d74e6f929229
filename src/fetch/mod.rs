//! The fetch layer between the filesystem core and a backend: it turns
//! "bytes `from..to` of chunk `c`" into data, from the cheapest place that
//! has it, never returning a byte that was not verified.
//!
//! Per chunk read, in order:
//! 1. **disk cache** (`--cache-dir`): if every 4 KiB range the bytes touch
//!    is ready in the blob's bitmap, one `pread` straight into the reply;
//! 2. **memory**: the frame LRU, or a frame fetched but not yet written
//!    (`pending` in [`store`]);
//! 3. **backend**: through a single-flight table, so concurrent readers of
//!    one missing frame cause one request. The first miss of a read
//!    launches every missing frame the read needs at once, coalescing
//!    frames adjacent in the blob into one range request of at most
//!    `max_request` bytes; a fixed pool of `concurrency` workers runs the
//!    requests ([`job`]: retries, backoff, verification, disk writes).
//!
//! With a blob manager (`FetchConfig::manager`, `--blob-manager`) the
//! disk cache is the manager's, read through read-only descriptors, and
//! misses are sent to it instead of the backend ([`remote`]).
//!
//! Every read has a deadline (`read_timeout`, default 30 s): a reader
//! waits for its frames at most until then and fails with
//! [`FetchError::Timeout`] (EIO), whatever the backend does. The request
//! timeout of the backend bounds each attempt, so workers are never stuck.

pub mod index;
mod job;
pub mod locality;
pub mod memory;
pub mod metrics;
pub(crate) mod pace;
pub mod prefetch;
mod remote;
#[cfg(test)]
mod remote_tests;
pub mod store;
#[cfg(test)]
mod tests;
mod verify;

use crate::backend::{Backend, BlobId};
use crate::cache::{BlobCache, CacheError};
use crate::chunk::{ChunkError, FetchError};
use crate::image::Image;
use crossbeam_channel::{unbounded, Receiver, Sender};
use index::FrameIndex;
use job::Job;
use memory::{ChunkCache, Frame, Key};
use metrics::{ChunkCounters, FetchMetrics};
use pace::Bucket;
use rafs_format::layout::ChunkInfo;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use store::{Commit, Store};

/// Tuning of the fetch layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// Disk cache directory; `None`: memory only (or the blob manager's).
    pub cache_dir: Option<PathBuf>,
    /// Use the node's blob manager for the disk cache (`--blob-manager`;
    /// then `cache_dir` is `None`): see [`remote`].
    pub manager: Option<crate::blobmgr::client::ClientConfig>,
    /// Disk cache limit in bytes (`--cache-size`); `None`: unlimited.
    pub cache_limit: Option<u64>,
    /// Budget of the decompressed-frame LRU in memory.
    pub memory_bytes: usize,
    /// Deadline of one read.
    pub read_timeout: Duration,
    /// Largest coalesced range request.
    pub max_request: u64,
    /// On a miss, also fetch the file's next chunks up to this many bytes
    /// (read-ahead; 0 disables it).
    pub readahead: u64,
    /// Fetch a file whole, in the background lane, once its reads miss at
    /// two places apart (an executable or library being mapped and faulted
    /// in out of order), if its frames hold at most this many stored bytes
    /// (`--widen`; 0 disables it). Only with a disk cache.
    pub widen: u64,
    /// On-demand backend requests in flight at most (worker threads).
    pub concurrency: usize,
    /// Prefetch (background lane) requests in flight at most.
    pub prefetch_threads: usize,
    /// Prefetch bandwidth limit, bytes per second (`None`: unlimited).
    pub prefetch_bandwidth: Option<u64>,
    /// Fetched bytes waiting to be written to the disk cache at most: past
    /// it, on-demand frames are served, then wait for room (a busy disk) or
    /// go uncached (a stalled one); the background lane uses half of it and
    /// waits before fetching.
    pub commit_backlog: u64,
    /// First retry delay (doubles per retry, full jitter).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            cache_dir: None,
            manager: None,
            cache_limit: None,
            memory_bytes: 16 << 20,
            read_timeout: Duration::from_secs(30),
            max_request: 4 << 20,
            readahead: 1 << 20,
            widen: 64 << 20,
            concurrency: 8,
            prefetch_threads: 4,
            prefetch_bandwidth: None,
            commit_backlog: 8 << 20,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// One chunk's part a read wants: bytes `from..to` of chunk `c`.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// The chunk (not a hole).
    pub c: &'a ChunkInfo,
    /// First byte wanted, relative to the chunk.
    pub from: usize,
    /// End of the bytes wanted, relative to the chunk.
    pub to: usize,
}

type FlightResult = Result<Arc<Frame>, Arc<FetchError>>;

/// How long the committer may show no progress before an on-demand frame
/// stops waiting for room in the backlog (see [`Fetcher::commit_late`]).
const COMMIT_STALL: Duration = Duration::from_secs(2);

/// An on-demand frame served to its readers but not yet handed to the
/// committer (the backlog was full).
pub(super) struct Late {
    fi: usize,
    frame: Arc<Frame>,
    lock: Option<crate::cache::blobfile::SpanLock>,
}

/// How a frame reached [`Fetcher::publish_ok`].
#[derive(Default)]
struct Via<'a> {
    /// Fetched by the background (prefetch) lane.
    background: bool,
    /// The cross-process claim on the frame's cache span, if held.
    lock: Option<crate::cache::blobfile::SpanLock>,
    /// The backlog room the frame was decoded in, if reserved.
    room: Option<store::Room<'a>>,
    /// For a background job: the lane states of this frame's flight and
    /// the job's later ones. Once an on-demand read joined one, no wait
    /// for the disk holds the job up.
    watch: &'a [Option<Lane>],
}

/// Which lane owns a flight. On-demand reads never wait on the
/// background lane's throttle or queue: a flight still queued in the
/// background lane is *promoted* by the first on-demand reader that needs
/// it (the background worker then drops it from its job), and a background
/// worker commits to a frame (`BG_RUNNING`) only after its bandwidth wait,
/// right before the range request.
const FG: u8 = 0;
/// Queued (or throttled) in the background lane: may be promoted.
const BG_QUEUED: u8 = 1;
/// Being fetched by a background worker (its request is under way).
const BG_RUNNING: u8 = 2;
/// [`BG_RUNNING`], and an on-demand read waits for it: from then on the
/// worker treats it as on-demand (it no longer waits for the disk before
/// its readers have it), and with a blob manager it is also asked for on
/// demand, as the manager's prefetch lane may queue or throttle it.
const BG_JOINED: u8 = 3;

/// What [`Fetcher::launch_flights`] did.
struct Launched {
    /// The flight of every frame that has one now (new, joined or
    /// promoted).
    flights: HashMap<(u32, usize), Arc<Flight>>,
    /// Stored bytes of the frames it started (or promoted) a fetch of.
    started: u64,
}

/// A flight's lane state ([`Flight::lane`]).
type Lane = Arc<std::sync::atomic::AtomicU8>;

/// One frame being fetched; readers wait on it.
#[derive(Default)]
struct Flight {
    done: Mutex<Option<FlightResult>>,
    cv: Condvar,
    /// [`FG`], [`BG_QUEUED`], [`BG_RUNNING`] or [`BG_JOINED`]; shared
    /// with the background job fetching it, which watches for a join
    /// without holding the flight (and so its result: a decoded frame).
    lane: Lane,
}

/// Whether a flight's `lane` says an on-demand read joined it while a
/// background worker fetched it ([`BG_JOINED`]).
fn joined(lane: &std::sync::atomic::AtomicU8) -> bool {
    lane.load(std::sync::atomic::Ordering::Acquire) == BG_JOINED
}

impl Flight {
    fn new(lane: u8) -> Flight {
        Flight {
            lane: Arc::new(lane.into()),
            ..Flight::default()
        }
    }

    /// Moves the flight from lane state `from` to `to`; false if it was
    /// not in `from` (promoted, or already running).
    fn take(&self, from: u8, to: u8) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        self.lane
            .compare_exchange(from, to, AcqRel, Acquire)
            .is_ok()
    }

    fn set(&self, r: FlightResult) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
        self.cv.notify_all();
    }

    /// The result, or `None` at the deadline.
    fn wait(&self, deadline: Instant) -> Option<FlightResult> {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = done.as_ref() {
                return Some(r.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            done = self
                .cv
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The fetcher of one mounted image.
pub struct Fetcher {
    image: Arc<Image>,
    backend: Arc<dyn Backend>,
    blob_ids: Vec<BlobId>,
    index: Arc<FrameIndex>,
    memory: Arc<ChunkCache>,
    store: Option<Arc<Store>>,
    commits: Option<Sender<Commit>>,
    /// The blob manager's side (`FetchConfig::manager`): read-only caches
    /// and misses sent to the manager; then `store` is `None`.
    remote: Option<remote::Remote>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    jobs: Sender<Job>,
    bg_jobs: Sender<Job>,
    /// The background lane's queue, to drop what is queued on a stop.
    bg_queue: Receiver<Job>,
    bucket: Option<Mutex<Bucket>>,
    /// Frames the background lane fetched that no read has used yet.
    prefetched: Mutex<HashSet<Key>>,
    /// Disk frames verified by this process, and at which map generation
    /// (see [`verify`]).
    verified: Arc<store::Verified>,
    /// When (`clock_ms`) a claim of another process last outlived its
    /// wait; 0: never, or it answered since.
    stuck_since: std::sync::atomic::AtomicU64,
    /// Start of the fetcher's clock.
    started: Instant,
    /// Whether `prefetched` ever held anything.
    any_prefetched: std::sync::atomic::AtomicBool,
    /// Cross-file read-ahead state (see [`locality`]).
    locality: locality::Locality,
    cfg: FetchConfig,
    metrics: Arc<FetchMetrics>,
    counters: Arc<ChunkCounters>,
}

impl Fetcher {
    /// A fetcher over a validated image; opens the disk caches and starts
    /// the worker and committer threads (they end when it is dropped). It
    /// counts its reads into `counters` (shared with the caller).
    pub fn new(
        image: Arc<Image>,
        backend: Arc<dyn Backend>,
        cfg: FetchConfig,
        counters: Arc<ChunkCounters>,
    ) -> Result<Arc<Fetcher>, CacheError> {
        Fetcher::with_storage(image, backend, cfg, counters, crate::cache::io::real())
    }

    /// [`Fetcher::new`] with the disk cache's durable operations going
    /// through `storage` (a test double, see `cache::io::testing`).
    pub fn with_storage(
        image: Arc<Image>,
        backend: Arc<dyn Backend>,
        cfg: FetchConfig,
        counters: Arc<ChunkCounters>,
        storage: Arc<dyn crate::cache::io::Storage>,
    ) -> Result<Arc<Fetcher>, CacheError> {
        let b = image.bootstrap().map_err(|e| CacheError::Io {
            path: PathBuf::from("bootstrap"),
            source: std::io::Error::other(e),
        })?;
        let index = Arc::new(FrameIndex::build(&b));
        let blobs: Vec<(BlobId, u64)> = b
            .blobs()
            .iter()
            .map(|x| (BlobId(x.id), x.uncompressed_size.get()))
            .collect();
        let metrics = Arc::new(FetchMetrics::default());
        let remote = match &cfg.manager {
            Some(m) => Some(
                remote::Remote::start(m.clone(), b.blobs(), &index, cfg.read_timeout, &metrics)
                    .map_err(|e| crate::cache::io_err(&m.socket, e))?,
            ),
            None => None,
        };
        let verified = Arc::new(store::memo(index.blobs.iter().map(|b| b.frames.len())));
        let memory = Arc::new(ChunkCache::new(cfg.memory_bytes));
        let (store, commits) = match &cfg.cache_dir {
            Some(_) if remote.is_some() => {
                tracing::warn!("--cache-dir ignored: the blob manager owns the cache");
                (None, None)
            }
            Some(dir) => {
                let caches = store::open_caches(dir, b.blobs(), &index, storage, &metrics)?;
                let store = Store::new(
                    caches,
                    index.clone(),
                    cfg.cache_limit,
                    cfg.commit_backlog,
                    metrics.clone(),
                );
                let store = store
                    .with_memo(verified.clone())
                    .with_memory(memory.clone());
                let store = Arc::new(store);
                let tx = store.start().map_err(|e| crate::cache::io_err(dir, e))?;
                (Some(store), Some(tx))
            }
            None => (None, None),
        };
        let (jobs, rx) = unbounded();
        let (bg_jobs, bg_rx) = unbounded();
        let bucket = cfg
            .prefetch_bandwidth
            .map(|rate| Mutex::new(Bucket::new(rate)));
        let fetcher = Arc::new(Fetcher {
            image,
            backend,
            blob_ids: blobs.iter().map(|b| b.0).collect(),
            index,
            memory,
            store,
            commits,
            remote,
            flights: Mutex::default(),
            jobs,
            bg_jobs,
            bg_queue: bg_rx.clone(),
            bucket,
            prefetched: Mutex::default(),
            verified,
            stuck_since: Default::default(),
            started: Instant::now(),
            any_prefetched: Default::default(),
            locality: locality::Locality::new(blobs.len()),
            cfg,
            metrics,
            counters,
        });
        spawn_workers(&fetcher, rx, bg_rx)?;
        Ok(fetcher)
    }

    /// The fetch and disk cache metrics.
    pub fn metrics(&self) -> &Arc<FetchMetrics> {
        &self.metrics
    }

    /// Registers the fetch and disk cache metrics and, with a blob
    /// manager, its client's (`rafs_manager_*`).
    pub fn register_metrics(&self, r: &mut prometheus_client::registry::Registry) {
        self.metrics.register(r);
        if let Some(remote) = &self.remote {
            let c = crate::blobmgr::client::ClientCollector(remote.client.clone());
            r.register_collector(Box::new(c));
        }
    }

    /// The read-path counters given to [`Fetcher::new`].
    pub fn counters(&self) -> &Arc<ChunkCounters> {
        &self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &FetchConfig {
        &self.cfg
    }

    /// Bytes held by the in-memory frame LRU.
    pub fn memory_bytes(&self) -> usize {
        self.memory.bytes()
    }

    fn disk(&self, blob: u32) -> Option<&BlobCache> {
        if let Some(r) = &self.remote {
            return r.cache(blob);
        }
        self.store.as_ref()?.caches.get(blob as usize)?.as_ref()
    }

    /// Appends the bytes of every want, in order, to `out`. `ahead` are
    /// chunks the caller expects to be read next (read-ahead): fetched in
    /// the background with the first miss, never waited for. `on_miss` is
    /// called once that first miss has launched its fetches, before any
    /// wait (the caller's chance to start more, see `--widen`). On failure,
    /// returns the index of the want that failed and why.
    pub fn read(
        &self,
        wants: &[Want<'_>],
        ahead: &[Want<'_>],
        out: &mut Vec<u8>,
        on_miss: &mut dyn FnMut(),
    ) -> Result<(), (usize, FetchError)> {
        let deadline = Instant::now() + self.cfg.read_timeout;
        let mut launched = false;
        // The flights this read launched or joined: their results, errors
        // included, are this read's (a flight that failed before the read
        // waited must not be launched again behind its back).
        let mut mine = HashMap::new();
        for (i, w) in wants.iter().enumerate() {
            let c = w.c;
            let key = (c.blob_index.get(), c.compressed_offset.get());
            if self.read_disk(w, out) {
                self.note_use(&key);
                continue;
            }
            let frame = match self.in_memory(&key) {
                Some(f) => {
                    self.note_use(&key);
                    f
                }
                None => {
                    if !launched {
                        launched = true;
                        let mut need = self.missing(&wants[i..]);
                        let missed = need.len();
                        need.extend(self.missing(ahead));
                        // A read in stored order has its window; the
                        // speculation around a miss is for the others.
                        let around = match self.stream_ahead(&mut need) {
                            true => None,
                            false => Some(self.plan_around(&self.not_in_flight(&need[..missed]))),
                        };
                        mine = self
                            .launch_flights(need, deadline, false, self.cfg.max_request)
                            .flights;
                        if let Some(around) = around {
                            self.speculate(&around);
                        }
                        on_miss();
                    }
                    let fi = self.index.blobs[key.0 as usize].find(key.1);
                    let flight = fi.and_then(|fi| mine.get(&(key.0, fi)));
                    match flight {
                        Some(f) => self.wait_flight(f, deadline),
                        None => self.wait(key, deadline),
                    }
                    .map_err(|e| (i, e))?
                }
            };
            if let Err(e) = frame.verify(c) {
                // Bad bytes must not stay cached: the next read refetches.
                self.memory.remove(&key);
                return Err((i, self.chunk_error(key, e)));
            }
            let start = c.batch_offset.get() as usize;
            let bytes = frame
                .data()
                .get(start + w.from..start + w.to)
                .ok_or_else(|| {
                    let source = ChunkError::Decompress("read outside the chunk".into());
                    (i, self.chunk_error(key, source))
                })?;
            out.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn chunk_error(&self, key: Key, source: ChunkError) -> FetchError {
        let blob = self.blob_ids.get(key.0 as usize).copied();
        FetchError::Chunk {
            blob: blob.unwrap_or(BlobId([0; 32])),
            offset: key.1,
            source,
        }
    }

    fn in_memory(&self, key: &Key) -> Option<Arc<Frame>> {
        if let Some(f) = self.memory.get(key) {
            ChunkCounters::add(&self.counters.lru_hits, 1);
            return Some(f);
        }
        let held = self
            .store
            .as_ref()
            .and_then(|s| s.pending(key).or_else(|| self.load_staged(key)));
        if held.is_none() {
            ChunkCounters::add(&self.counters.lru_misses, 1);
        }
        held
    }

    /// Frames of `wants` that are neither on disk nor in memory.
    fn missing(&self, wants: &[Want<'_>]) -> Vec<(u32, usize)> {
        let mut out: Vec<(u32, usize)> = Vec::new();
        for w in wants {
            let c = w.c;
            let blob = c.blob_index.get();
            let key = (blob, c.compressed_offset.get());
            let ready = self.disk(blob).is_some_and(|cache| {
                let at = c.uncompressed_offset.get() + w.from as u64;
                let r = cache.ranges_touching(at, (w.to - w.from) as u64);
                cache.bitmap().all_ready(r).unwrap_or(false)
            });
            let held = || self.store.as_ref().is_some_and(|s| s.holds(&key));
            if ready || self.memory.contains(&key) || held() {
                continue;
            }
            if let Some(fi) = self
                .index
                .blobs
                .get(blob as usize)
                .and_then(|b| b.find(key.1))
            {
                out.push((blob, fi));
            }
        }
        out
    }

    /// The lane state of the flight of each frame of `blob` stored at
    /// `coffs`, if it has one (see [`Flight::lane`]).
    fn lanes_of(&self, blob: u32, coffs: impl Iterator<Item = u64>) -> Vec<Option<Lane>> {
        let flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        coffs
            .map(|c| flights.get(&(blob, c)).map(|f| f.lane.clone()))
            .collect()
    }

    /// The flight of frame `key`, if it is being fetched.
    #[cfg(test)]
    fn flight(&self, key: &Key) -> Option<Arc<Flight>> {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// The frame `key`, waiting for its flight (launching one if nobody
    /// is fetching it, promoting it if the background lane only queued
    /// it) until `deadline`.
    fn wait(&self, key: Key, deadline: Instant) -> Result<Arc<Frame>, FetchError> {
        let Some(fi) = self
            .index
            .blobs
            .get(key.0 as usize)
            .and_then(|b| b.find(key.1))
        else {
            return Err(self.chunk_error(key, ChunkError::Decompress("no such frame".into())));
        };
        loop {
            // Starts a flight, or promotes a queued background one (or
            // joins a running one), unless the frame is in memory already.
            // The flight comes from the same look-up under the flights
            // lock: a background flight queued just after could otherwise
            // be waited on unpromoted, behind the prefetch lane.
            let mut launched =
                self.launch_flights(vec![(key.0, fi)], deadline, false, self.cfg.max_request);
            match launched.flights.remove(&(key.0, fi)) {
                Some(f) => return self.wait_flight(&f, deadline),
                None => {
                    if let Some(f) = self.in_memory(&key) {
                        return Ok(f);
                    }
                    if let Some(f) = self.load_verified(key.0, fi) {
                        return Ok(f);
                    }
                    // In memory or staged at the launch and gone since
                    // (evicted, or committed to the disk and not loadable):
                    // go round again, the next launch refetches.
                    if Instant::now() >= deadline {
                        self.metrics.read_timeouts.inc();
                        return Err(FetchError::Timeout(self.cfg.read_timeout));
                    }
                }
            }
        }
    }

    /// The result of flight `f`, or a timeout at `deadline`.
    fn wait_flight(&self, f: &Flight, deadline: Instant) -> Result<Arc<Frame>, FetchError> {
        match f.wait(deadline) {
            Some(Ok(frame)) => Ok(frame),
            Some(Err(e)) => Err(FetchError::Shared(e)),
            None => {
                self.metrics.read_timeouts.inc();
                Err(FetchError::Timeout(self.cfg.read_timeout))
            }
        }
    }

    /// Starts fetching `frames` that nobody fetches yet, coalesced into
    /// range requests of at most `max_request` stored bytes, in the
    /// on-demand or the background lane, returning the flight of every
    /// frame that has one now (new, joined or promoted); frames without one
    /// were in memory already.
    fn launch_flights(
        &self,
        mut frames: Vec<(u32, usize)>,
        deadline: Instant,
        background: bool,
        max_request: u64,
    ) -> Launched {
        frames.sort_unstable();
        frames.dedup();
        let mut new = Vec::with_capacity(frames.len());
        let mut out = HashMap::with_capacity(frames.len());
        let mut joined = false;
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            for (blob, fi) in frames {
                let Some(f) = self.index.blobs[blob as usize].frames.get(fi) else {
                    continue;
                };
                let key = (blob, f.coff);
                if let Some(flight) = flights.get(&key) {
                    // An on-demand read takes over a frame the background
                    // lane has only queued (or is throttling).
                    if !background && flight.take(BG_QUEUED, FG) {
                        self.metrics.prefetch_promoted.inc();
                        new.push((blob, fi));
                    } else if !background && flight.take(BG_RUNNING, BG_JOINED) {
                        joined = true;
                        if self.remote.is_some() {
                            // The manager fetches a frame once, whichever
                            // lane asks; the first answer settles it.
                            new.push((blob, fi));
                        }
                    }
                    out.insert((blob, fi), flight.clone());
                    continue;
                }
                // A staged frame needs no fetch, unless an on-demand read
                // could not load it (`Fetcher::wait`): then it is fetched.
                let held = || {
                    self.store.as_ref().is_some_and(|s| match background {
                        true => s.holds(&key),
                        false => s.pending(&key).is_some(),
                    })
                };
                if self.memory.contains(&key) || held() {
                    continue;
                }
                let lane = if background { BG_QUEUED } else { FG };
                let flight = Arc::new(Flight::new(lane));
                flights.insert(key, flight.clone());
                out.insert((blob, fi), flight);
                new.push((blob, fi));
            }
        }
        if let (true, Some(store)) = (joined, &self.store) {
            // A worker waiting for room for a joined frame stops waiting.
            store.wake();
        }
        let lane = if background {
            &self.bg_jobs
        } else {
            &self.jobs
        };
        let started = new.iter().map(|&(b, fi)| self.stored_len(b, fi)).sum();
        for job in self.coalesce(new, deadline, background, max_request) {
            // Workers live as long as the fetcher: the send cannot fail.
            let _ = lane.send(job);
        }
        Launched {
            flights: out,
            started,
        }
    }

    /// Groups sorted frames into jobs of adjacent frames of one blob, each
    /// at most `max` stored bytes (a larger frame is a job alone).
    fn coalesce(
        &self,
        frames: Vec<(u32, usize)>,
        deadline: Instant,
        background: bool,
        max: u64,
    ) -> Vec<Job> {
        // A slow bandwidth limit gets small requests, so it is honoured
        // smoothly rather than in bursts of max_request.
        let max = match self.cfg.prefetch_bandwidth {
            Some(rate) if background => max.min(rate.max(64 << 10)),
            _ => max,
        };
        let mut jobs: Vec<Job> = Vec::new();
        let mut bytes = 0u64;
        for (blob, fi) in frames {
            let bf = &self.index.blobs[blob as usize];
            let f = &bf.frames[fi];
            if let Some(j) = jobs.last_mut() {
                let prev = j.frames.last().map(|&p| &bf.frames[p]);
                let adjacent = j.blob == blob && prev.is_some_and(|p| p.cend() == f.coff);
                if adjacent && bytes + u64::from(f.clen) <= max {
                    j.frames.push(fi);
                    bytes += u64::from(f.clen);
                    continue;
                }
            }
            bytes = u64::from(f.clen);
            jobs.push(Job {
                blob,
                frames: vec![fi],
                deadline,
                background,
            });
        }
        jobs
    }

    /// Publishes a fetched frame: memory, then its waiters, then the disk
    /// (if `commit` and the blob has a cache; `lock`, the cross-process
    /// claim on the frame, is released once its bits are set). Prefetched
    /// frames bound for the disk skip the memory LRU, which belongs to
    /// on-demand reads.
    ///
    /// The committer may be behind by `commit_backlog` bytes. Past that,
    /// the background lane waits for room (up to a read timeout: prefetch
    /// is for the disk, and the disk's pace is its back-pressure), unless
    /// an on-demand read has joined the frame ([`BG_JOINED`]). An
    /// on-demand frame never makes its reader wait: its readers are woken
    /// and the frame comes back as [`Late`], for [`Fetcher::commit_late`]
    /// once the job's other frames are out.
    fn publish_ok(
        &self,
        blob: u32,
        fi: usize,
        frame: Arc<Frame>,
        commit: bool,
        how: Via<'_>,
    ) -> Option<Late> {
        let key = (blob, self.index.blobs[blob as usize].frames[fi].coff);
        // Only under its span lock may a frame be written: nobody else then
        // writes the same bytes, and the cache never writes over ready ones.
        let to_disk = commit && how.lock.is_some() && self.disk(blob).is_some();
        let joined = || how.watch.iter().flatten().any(|l| joined(l));
        if !(how.background && to_disk) || joined() {
            self.memory.put(key, frame.clone());
        }
        if how.background {
            self.any_prefetched
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.prefetched
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key);
        }
        let (true, Some(store)) = (to_disk, &self.store) else {
            self.finish(key, Ok(frame));
            return None;
        };
        // Readable from `pending` before the flight ends, so a reader that
        // finds no flight finds the frame.
        let wait = match how.background && !joined() {
            true => self.cfg.read_timeout,
            false => Duration::ZERO,
        };
        let held = store.hold_unless(key, frame.clone(), wait, how.room, &joined);
        if !held {
            let background = how.background && !joined();
            self.finish(key, Ok(frame.clone()));
            if background {
                self.metrics.commits_skipped.inc();
                return None; // the claim (`how.lock`) is dropped: nothing written
            }
            let lock = how.lock;
            let bytes = frame.data().len() as u64;
            self.metrics.commit_late_bytes.inc_by(bytes);
            return Some(Late { fi, frame, lock });
        }
        self.finish(key, Ok(frame.clone()));
        self.send_commit(blob, fi, frame, how.lock);
        None
    }

    /// How long a committer may show no progress before it counts as
    /// stalled: `COMMIT_STALL`, or a quarter of the read timeout if less.
    pub(super) fn commit_stall(&self) -> Duration {
        COMMIT_STALL.min(self.cfg.read_timeout / 4)
    }

    /// Holds on-demand frames that found the backlog full (their readers
    /// already have them) until the committer has room: a busy disk paces
    /// this worker, a disk that shows no progress for `COMMIT_STALL` (or a
    /// quarter of the read timeout) costs the frames their caching instead
    /// (`rafs_cache_commits_skipped_total`).
    pub(super) fn commit_late(&self, blob: u32, late: Vec<Late>) {
        let Some(store) = &self.store else { return };
        let stall = self.commit_stall();
        for l in late {
            let key = (blob, self.index.blobs[blob as usize].frames[l.fi].coff);
            let wait = self.cfg.read_timeout;
            let held = store.try_hold_unless_stalled(key, l.frame.clone(), wait, stall);
            self.metrics
                .commit_late_bytes
                .dec_by(l.frame.data().len() as u64);
            if held {
                self.send_commit(blob, l.fi, l.frame, l.lock);
            } else {
                self.metrics.commits_skipped.inc();
            }
        }
    }

    fn send_commit(
        &self,
        blob: u32,
        fi: usize,
        data: Arc<Frame>,
        lock: Option<crate::cache::blobfile::SpanLock>,
    ) {
        let (Some(store), Some(tx)) = (&self.store, &self.commits) else {
            return;
        };
        let key = (blob, self.index.blobs[blob as usize].frames[fi].coff);
        let c = Commit {
            blob,
            frame: fi,
            data,
            lock,
        };
        if let Err(e) = tx.send(c) {
            // The committer is gone (shutting down): not cached.
            store.release(&key);
            drop(e);
        }
    }

    /// Counts an on-demand read served by data the background lane fetched.
    fn note_use(&self, key: &Key) {
        // The common case (nothing prefetched) costs one atomic load.
        if !self
            .any_prefetched
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let mut p = self
            .prefetched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !p.is_empty() && p.remove(key) {
            self.metrics.prefetch_hits.inc();
        }
    }

    /// Drops the background jobs not started yet (a stopped prefetch);
    /// their frames' waiters get [`FetchError::Cancelled`], except frames
    /// an on-demand read has promoted meanwhile (fetched in its lane).
    pub fn cancel_prefetch(&self) {
        let err = Arc::new(FetchError::Cancelled);
        while let Ok(job) = self.bg_queue.try_recv() {
            for flight in self.drop_queued(job.blob, &job.frames) {
                flight.set(Err(err.clone()));
            }
        }
    }

    /// Removes the flights of a dropped background job's frames that are
    /// still queued (not promoted) from the flights map, in one hold of its
    /// lock: an on-demand read can then neither join one of them before
    /// its `Cancelled` result nor find it after (it starts its own).
    fn drop_queued(&self, blob: u32, frames: &[usize]) -> Vec<Arc<Flight>> {
        let bf = &self.index.blobs[blob as usize];
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        frames
            .iter()
            .filter_map(|&fi| {
                let key = (blob, bf.frames.get(fi)?.coff);
                let queued = flights
                    .get(&key)
                    .is_some_and(|f| f.take(BG_QUEUED, BG_RUNNING));
                queued.then(|| flights.remove(&key)).flatten()
            })
            .collect()
    }

    /// The frames of a background job this lane still owns, now marked
    /// running (promoted frames are left to the on-demand lane).
    fn take_background(&self, blob: u32, frames: &[usize]) -> Vec<usize> {
        let bf = &self.index.blobs[blob as usize];
        let flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        frames
            .iter()
            .copied()
            .filter(|&fi| {
                bf.frames
                    .get(fi)
                    .and_then(|f| flights.get(&(blob, f.coff)))
                    .is_some_and(|fl| fl.take(BG_QUEUED, BG_RUNNING))
            })
            .collect()
    }

    fn publish_err(&self, blob: u32, fi: usize, e: Arc<FetchError>) {
        let key = (blob, self.index.blobs[blob as usize].frames[fi].coff);
        self.finish(key, Err(e));
    }

    fn finish(&self, key: Key, r: FlightResult) {
        let flight = self
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        if let Some(f) = flight {
            f.set(r);
        }
    }
}

/// Starts the fetcher's workers: `--fetch-threads` on the on-demand queue
/// `rx`, `--prefetch-threads` on the background one. Each holds only a weak
/// reference, so they end when the fetcher is dropped.
fn spawn_workers(
    fetcher: &Arc<Fetcher>,
    rx: Receiver<Job>,
    bg_rx: Receiver<Job>,
) -> Result<(), CacheError> {
    let lanes = [
        ("fetch", fetcher.cfg.concurrency.max(1), rx),
        ("prefetch", fetcher.cfg.prefetch_threads.max(1), bg_rx),
    ];
    for (lane, n, rx) in lanes {
        for i in 0..n {
            let weak = Arc::downgrade(fetcher);
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rafs-{lane}-{i}"))
                .spawn(move || worker(weak, rx))
                .map_err(|e| CacheError::Io {
                    path: PathBuf::from("thread"),
                    source: e,
                })?;
        }
    }
    Ok(())
}

/// A fetch worker: runs jobs until the fetcher is gone.
fn worker(fetcher: Weak<Fetcher>, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        match fetcher.upgrade() {
            Some(f) => f.run_job(job),
            None => return,
        }
    }
}
