//! The disk side of the fetcher: one [`BlobCache`] per cacheable blob, a
//! committer thread that writes fetched frames in batches (one `fdatasync`
//! per blob per batch, then the bits: the crash rule of `docs/FORMAT.md`),
//! and the `--cache-size` quota with LRU eviction at frame granularity.
//!
//! Frames waiting for the committer stay readable from memory (`pending`),
//! so a reader never waits on the disk. If a write fails (ENOSPC, EIO), the
//! frame is simply not cached: reads keep being served from memory and the
//! backend, the condition is logged once per kind and counted.
//!
//! Eviction clears bits before punching (see `BlobCache::punch`); a reader
//! in the middle of a `pread` re-checks the bits afterwards and refetches,
//! so an eviction never breaks a read in progress.

use super::index::FrameIndex;
use super::memory::{Frame, Key};
use super::metrics::FetchMetrics;
use crate::backend::BlobId;
use crate::cache::{BlobCache, CacheError, Fill, MapParams, Opened, DEFAULT_GRANULARITY};
use crossbeam_channel::{bounded, Receiver, Sender};
use lru::LruCache;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Frames a batch may hold before it is written.
const BATCH: usize = 32;
/// Frames queued for the committer at most (back-pressure on fetchers).
const QUEUE: usize = 16;

/// A fetched, fully verified frame to write.
pub struct Commit {
    /// Blob index.
    pub blob: u32,
    /// Frame index in the blob's [`super::index::BlobFrames`].
    pub frame: usize,
    /// Its bytes.
    pub data: Arc<Frame>,
    /// The cross-process claim on its span, released (dropped) after the
    /// bits are set.
    pub lock: Option<crate::cache::blobfile::SpanLock>,
}

/// LRU of frames on disk, with their cover sizes.
struct Quota {
    limit: Option<u64>,
    usage: u64,
    lru: LruCache<Key, (u32, usize, u64)>,
}

/// Disk cache state shared by readers, fetch workers and the committer.
pub struct Store {
    /// Per blob index; `None` for blobs without a disk cache.
    pub caches: Vec<Option<BlobCache>>,
    index: Arc<FrameIndex>,
    pending: Mutex<HashMap<Key, Arc<Frame>>>,
    quota: Mutex<Quota>,
    /// `--cache-size` (also in `quota`; here to skip its lock on hits).
    limit: Option<u64>,
    metrics: Arc<FetchMetrics>,
    logged: [AtomicBool; 2],
}

/// Opens the cache of every cacheable blob in `dir`. A blob whose cache
/// cannot be opened is served without one (logged); only a missing or
/// unusable directory is an error.
pub fn open_caches(
    dir: &Path,
    blobs: &[(BlobId, u64)],
    index: &FrameIndex,
) -> Result<Vec<Option<BlobCache>>, CacheError> {
    crate::cache::create_dir(dir)?;
    let mut out = Vec::with_capacity(blobs.len());
    for (i, (id, usize)) in blobs.iter().enumerate() {
        if !index.blobs.get(i).is_some_and(|b| b.cacheable) {
            tracing::info!(blob = %id, "blob not ALIGNED (or inconsistent): served without the disk cache");
            out.push(None);
            continue;
        }
        let params = MapParams::new(*id, *usize, DEFAULT_GRANULARITY)?;
        match BlobCache::open(dir, params) {
            Ok((c, Opened::Reset { reason })) => {
                tracing::warn!(blob = %id, ?reason, "cache bitmap reset");
                out.push(Some(c));
            }
            Ok((c, _)) => out.push(Some(c)),
            Err(e) => {
                tracing::warn!(blob = %id, "disk cache unavailable for this blob: {e}");
                out.push(None);
            }
        }
    }
    Ok(out)
}

impl Store {
    /// A store over opened caches; accounts the frames already ready (from
    /// an earlier run) in the quota, in index order.
    pub fn new(
        caches: Vec<Option<BlobCache>>,
        index: Arc<FrameIndex>,
        limit: Option<u64>,
        metrics: Arc<FetchMetrics>,
    ) -> Store {
        let mut quota = Quota {
            limit,
            usage: 0,
            lru: LruCache::unbounded(),
        };
        for (b, cache) in caches.iter().enumerate() {
            let Some(cache) = cache else { continue };
            for (i, f) in index.blobs[b].frames.iter().enumerate() {
                let cover = f.cover(cache.data().size());
                if ready(cache, &cover) {
                    let len = cover.end - cover.start;
                    quota.usage += len;
                    quota.lru.put((b as u32, f.coff), (b as u32, i, len));
                }
            }
        }
        metrics.cache_limit.set(limit.unwrap_or(0));
        metrics.cache_usage.set(quota.usage);
        Store {
            caches,
            index,
            pending: Mutex::default(),
            quota: Mutex::new(quota),
            limit,
            metrics,
            logged: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// Starts the committer thread; frames sent to the returned channel
    /// are written in batches. The thread ends when every sender is gone.
    pub fn start(self: &Arc<Store>) -> std::io::Result<Sender<Commit>> {
        let (tx, rx) = bounded(QUEUE);
        let store = self.clone();
        std::thread::Builder::new()
            .name("rafs-commit".into())
            .spawn(move || store.run(rx))?;
        Ok(tx)
    }

    /// A frame fetched but not yet on disk.
    pub fn pending(&self, key: &Key) -> Option<Arc<Frame>> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Holds `frame` in memory until the committer has written it.
    pub fn hold(&self, key: Key, frame: Arc<Frame>) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, frame);
    }

    /// Bytes the quota still allows (`None`: no limit).
    pub fn room(&self) -> Option<u64> {
        let q = self.quota.lock().unwrap_or_else(PoisonError::into_inner);
        q.limit.map(|l| l.saturating_sub(q.usage))
    }

    /// Whether frames are still waiting for the committer.
    pub fn busy(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Marks frame `key` as just used (quota LRU).
    pub fn touch(&self, key: &Key) {
        if self.limit.is_none() {
            return; // no quota, no eviction order to keep
        }
        let mut q = self.quota.lock().unwrap_or_else(PoisonError::into_inner);
        q.lru.get(key);
    }

    fn run(&self, rx: Receiver<Commit>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut by_blob: HashMap<u32, Vec<Commit>> = HashMap::new();
            for c in batch {
                by_blob.entry(c.blob).or_default().push(c);
            }
            for (blob, commits) in by_blob {
                self.write(blob, &commits);
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for c in &commits {
                    if let Some(f) = self.index.blobs[c.blob as usize].frames.get(c.frame) {
                        pending.remove(&(c.blob, f.coff));
                    }
                }
            }
        }
    }

    /// Writes one blob's frames: pwrite all, one fdatasync, set the bits.
    fn write(&self, blob: u32, commits: &[Commit]) {
        let Some(Some(cache)) = self.caches.get(blob as usize) else {
            return;
        };
        let frames = &self.index.blobs[blob as usize].frames;
        let size = cache.data().size();
        let mut fills = Vec::with_capacity(commits.len());
        let mut added = Vec::with_capacity(commits.len());
        for c in commits {
            let Some(f) = frames.get(c.frame) else {
                continue;
            };
            let cover = f.cover(size);
            fills.push(Fill {
                offset: f.ustart,
                bytes: c.data.data(),
                cover_end: cover.end,
            });
            added.push(((blob, f.coff), (blob, c.frame, cover.end - cover.start)));
        }
        match cache.commit_covering(&fills) {
            Ok(_) => self.account(added),
            Err(e) => self.write_failed(&e),
        }
    }

    fn write_failed(&self, e: &CacheError) {
        let enospc = matches!(e, CacheError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC));
        let kind = if enospc { "enospc" } else { "io" };
        self.metrics.write_error(kind);
        if !self.logged[usize::from(enospc)].swap(true, Ordering::Relaxed) {
            tracing::error!(
                "disk cache write failed ({e}); reads are served from memory and the backend \
                 (logged once; see rafs_cache_write_errors_total)"
            );
        }
    }

    /// Adds committed frames to the quota LRU and evicts down to the limit.
    fn account(&self, added: Vec<(Key, (u32, usize, u64))>) {
        let mut q = self.quota.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, v) in added {
            if q.lru.put(key, v).is_none() {
                q.usage += v.2;
            }
        }
        while q.limit.is_some_and(|l| q.usage > l) {
            let Some((_, (blob, frame, len))) = q.lru.pop_lru() else {
                break;
            };
            q.usage -= len;
            self.evict(blob, frame, len);
        }
        self.metrics.cache_usage.set(q.usage);
    }

    fn evict(&self, blob: u32, frame: usize, len: u64) {
        let Some(Some(cache)) = self.caches.get(blob as usize) else {
            return;
        };
        let Some(f) = self.index.blobs[blob as usize].frames.get(frame) else {
            return;
        };
        let cover = f.cover(cache.data().size());
        let ranges = cache.ranges_touching(cover.start, cover.end - cover.start);
        match cache.punch(ranges) {
            Ok(()) => {
                self.metrics.evictions.inc();
                self.metrics.evicted_bytes.inc_by(len);
            }
            Err(e) => tracing::warn!(blob, "eviction failed: {e}"),
        }
    }
}

/// Whether every range of `cover` is ready.
pub fn ready(cache: &BlobCache, cover: &std::ops::Range<u64>) -> bool {
    let ranges = cache.ranges_touching(cover.start, cover.end - cover.start);
    cache.bitmap().all_ready(ranges).unwrap_or(false)
}
