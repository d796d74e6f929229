//! The blob manager's engine: one per node, it owns the cache directory
//! and implements [`BlobService`] for the connection layer.
//!
//! - **open**: one [`BlobCache`] per blob for every client (a second open
//!   with another size, layout or granularity is `LayoutConflict`); each
//!   client gets fresh read-only descriptors of the data file and bitmap,
//!   checked (`fstat`) to be the very files the engine holds.
//! - **fetch**: each frame is checked against the blob and the frames known
//!   for it (`blob`), served from the cache if its cover is ready and its
//!   bytes match the requester's digests (else invalidated and fetched), or
//!   fetched through one node-wide single-flight table (`flights`) by the
//!   on-demand or the throttled prefetch lane. Answers come from whoever
//!   settles the last frame, or from the deadline timer (`request`).
//! - **quota**: a node-wide LRU over every blob's frames (`quota`).
//! - **start**: the caches already in the directory are held and their
//!   ready ranges accounted before anything is served, then evicted down to
//!   the limit if over (`adopt`). A client opening one of them with the
//!   parameters its map records gets that entry; with others,
//!   `LayoutConflict`.

mod adopt;
mod blob;
mod flights;
pub mod metrics;
mod quota;
mod request;
#[cfg(test)]
mod tests;

pub use blob::Blob;
pub use metrics::EngineMetrics;

use crate::backend::{Backend, BlobId};
use crate::blobmgr::protocol::{ErrorCode, FetchFrame, FrameStatus, Lane, UsedRange};
use crate::cache::{BlobCache, CacheError, MapParams};
use crate::fetch::pace::Bucket;
use crate::fetch::FetchConfig;
use crate::manager::service::{BlobService, FetchDone, OpenRequest, Opened, Refused};
use crossbeam_channel::{unbounded, Sender};
use flights::{Flight, Job, Key};
use quota::Quota;
use request::{Request, Timer};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use thiserror::Error;

/// Why the engine could not start.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The manager needs a cache directory.
    #[error("the blob manager needs a cache directory")]
    NoCacheDir,
    /// The cache directory could not be created.
    #[error("cache directory: {0}")]
    Cache(#[from] CacheError),
    /// A worker thread could not be started.
    #[error("starting a thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The engine's state for the status JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineStatus {
    /// Blobs open.
    pub blobs: usize,
    /// Bytes of ready ranges accounted.
    pub usage: u64,
    /// The cache limit, if any.
    pub limit: Option<u64>,
}

/// The node's engine.
pub struct Engine {
    cfg: FetchConfig,
    dir: PathBuf,
    backend: Arc<dyn Backend>,
    blobs: Mutex<HashMap<BlobId, Arc<Blob>>>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    fg_jobs: Sender<Job>,
    bg_jobs: Sender<Job>,
    bucket: Option<Mutex<Bucket>>,
    quota: Quota,
    timer: Arc<Timer>,
    metrics: Arc<EngineMetrics>,
}

impl Engine {
    /// An engine over `cfg.cache_dir` (created if missing) and `backend`;
    /// starts its worker and timer threads (they end when it is dropped),
    /// then accounts the caches already in the directory, evicting down to
    /// the limit if over (the caller must own the directory: see
    /// [`crate::manager::lockfile`]).
    pub fn new(cfg: FetchConfig, backend: Arc<dyn Backend>) -> Result<Arc<Engine>, EngineError> {
        let dir = cfg.cache_dir.clone().ok_or(EngineError::NoCacheDir)?;
        crate::cache::create_dir(&dir)?;
        let metrics = Arc::new(EngineMetrics::default());
        let (fg_jobs, fg_rx) = unbounded();
        let (bg_jobs, bg_rx) = unbounded();
        let engine = Arc::new(Engine {
            bucket: cfg.prefetch_bandwidth.map(|r| Mutex::new(Bucket::new(r))),
            quota: Quota::new(cfg.cache_limit, metrics.clone()),
            timer: Timer::start().map_err(EngineError::Thread)?,
            cfg,
            dir,
            backend,
            blobs: Mutex::default(),
            flights: Mutex::default(),
            fg_jobs,
            bg_jobs,
            metrics,
        });
        let lanes = [
            ("fetch", engine.cfg.concurrency.max(1), fg_rx),
            ("prefetch", engine.cfg.prefetch_threads.max(1), bg_rx),
        ];
        for (lane, n, rx) in lanes {
            for i in 0..n {
                let weak = Arc::downgrade(&engine);
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("rafs-bm-{lane}-{i}"))
                    .spawn(move || flights::worker(weak, rx))
                    .map_err(EngineError::Thread)?;
            }
        }
        engine.adopt_existing();
        Ok(engine)
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Blobs open, cache usage and limit.
    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            blobs: self.lock_blobs().len(),
            usage: self.quota.usage(),
            limit: self.quota.limit(),
        }
    }

    fn lock_blobs(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, Arc<Blob>>> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_blobs(&self) -> Vec<Arc<Blob>> {
        self.lock_blobs().values().cloned().collect()
    }

    /// The blob of `req`, opened (and its old ready runs accounted) if
    /// nobody has it open.
    fn blob(&self, req: &OpenRequest) -> Result<Arc<Blob>, Refused> {
        let id = BlobId(req.blob_id);
        let params = MapParams::new(id, req.blob_size, req.granularity)
            .map_err(|e| Refused::new(ErrorCode::BadRequest, e.to_string()))?
            .with_layout(req.layout);
        let mut blobs = self.lock_blobs();
        if let Some(b) = blobs.get(&id) {
            let same =
                (b.size, b.layout, b.granularity) == (req.blob_size, req.layout, req.granularity);
            return match same {
                true => Ok(b.clone()),
                false => Err(Refused::new(
                    ErrorCode::LayoutConflict,
                    "the blob is open with another size, layout or granularity",
                )),
            };
        }
        let (cache, how) = BlobCache::open(&self.dir, params).map_err(|e| match e {
            CacheError::LayoutConflict { .. } => {
                Refused::new(ErrorCode::LayoutConflict, e.to_string())
            }
            CacheError::TooLarge { .. } => Refused::new(ErrorCode::TooLarge, e.to_string()),
            e => Refused::new(ErrorCode::Io, e.to_string()),
        })?;
        // A map just created (or reset) has no ready range to account:
        // do not scan it (a client chooses blob_size, and the scan would
        // hold the blob table for one step per range).
        let fresh = !matches!(how, crate::cache::Opened::Reused);
        let blob = self.insert(&mut blobs, params, cache, fresh);
        drop(blobs);
        self.quota.evict(&self.open_blobs());
        Ok(blob)
    }

    /// Holds `cache` (opened with `params`) as an open blob, its ready
    /// runs accounted as the oldest entries of the LRU (unless `fresh`:
    /// its map is all clear).
    fn insert(
        &self,
        blobs: &mut HashMap<BlobId, Arc<Blob>>,
        params: MapParams,
        cache: BlobCache,
        fresh: bool,
    ) -> Arc<Blob> {
        let blob = Arc::new(Blob {
            id: params.blob,
            size: params.blob_size,
            layout: params.layout,
            granularity: params.granularity,
            cache,
            table: Mutex::default(),
            io: Default::default(),
            clients: Default::default(),
        });
        if !fresh {
            self.quota.add_runs(&blob);
        }
        blobs.insert(params.blob, blob.clone());
        self.metrics.blobs_open.set(blobs.len() as i64);
        blob
    }
}

/// Opens `path` read-only (no symlink) and checks it is `held`.
fn open_ro(path: &Path, held: &std::fs::File) -> Result<OwnedFd, Refused> {
    let io = |e: std::io::Error| Refused::new(ErrorCode::Io, format!("{}: {e}", path.display()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let (a, b) = (f.metadata().map_err(io)?, held.metadata().map_err(io)?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(Refused::new(
            ErrorCode::Io,
            format!("{}: not the file the manager holds", path.display()),
        ));
    }
    Ok(f.into())
}

impl BlobService for Engine {
    type Blob = Blob;

    fn open(&self, req: &OpenRequest) -> Result<Opened<Blob>, Refused> {
        let blob = self.blob(req)?;
        let data = open_ro(
            &crate::cache::blobfile::data_path(&self.dir, &blob.id),
            blob.cache.data().file(),
        )?;
        let map = open_ro(
            &crate::cache::bitmap::map_path(&self.dir, &blob.id),
            blob.cache.bitmap().file(),
        )?;
        blob.clients.fetch_add(1, Ordering::Relaxed);
        Ok(Opened {
            generation: blob.cache.generation(),
            blob,
            data,
            map,
        })
    }

    fn fetch(
        &self,
        blob: &Arc<Blob>,
        lane: Lane,
        frames: Vec<FetchFrame>,
        deadline: Instant,
        done: FetchDone,
    ) {
        if frames.is_empty() {
            return done(Vec::new());
        }
        let req = Request::new(frames.len(), deadline, done, self.metrics.clone());
        self.timer.add(&req);
        let mut wants = Vec::with_capacity(frames.len());
        for (i, f) in frames.into_iter().enumerate() {
            match blob.check_frame(&f).and_then(|()| blob.note_frame(&f)) {
                Ok(()) => wants.push((i, f)),
                Err(why) => {
                    tracing::debug!(blob = %blob.id.to_hex(), ustart = f.ustart, "invalid frame: {why}");
                    req.settle(i, FrameStatus::Invalid);
                }
            }
        }
        self.launch(blob, lane, wants, &req, true);
    }

    /// The ranges are clipped to the blob, sorted and merged first: each
    /// touch walks the frames its range overlaps under the blob's table
    /// lock, so 4000 overlapping ranges (one packet) must not cost 4000
    /// passes over the blob's frames.
    fn used(&self, blob: &Blob, ranges: &[UsedRange]) {
        let mut clipped: Vec<UsedRange> = ranges
            .iter()
            .filter_map(|r| {
                let end = r.start.saturating_add(r.len).min(blob.size);
                (r.start < end).then(|| UsedRange {
                    start: r.start,
                    len: end - r.start,
                })
            })
            .collect();
        UsedRange::merge(&mut clipped);
        for r in clipped {
            self.quota.touch(blob, r.start, r.start + r.len);
        }
    }

    fn close(&self, blob: Arc<Blob>) {
        let _ = blob
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.timer.stop();
    }
}
