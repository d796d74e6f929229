//! The fetch engine over a blob manager (`--blob-manager`): the manager
//! owns the cache directory, this process only reads it.
//!
//! Each cacheable blob is opened through the manager ([`ManagerClient`]),
//! which hands over read-only descriptors of its data file and map; they
//! become a read-only [`BlobCache`], so a hit is exactly the local cache's
//! hit (bits, generation, `pread`, verification of the frame against this
//! image's digests on first use: `verify.rs`) and sends no message; hits
//! are reported to the manager in batches (`Used`).
//!
//! A miss sends the job's frames to the manager (`Fetch`, on-demand or
//! prefetch lane) and waits up to the job's deadline. `Ready` frames are
//! read back from the shared data file and verified with our digests; a
//! frame that is gone or fails is asked for once more, then fetched from
//! the backend into memory. `NoSpace`, `Invalid` and `Corrupt` frames are
//! fetched from the backend into memory; `Backend` fails the frame (EIO),
//! `TimedOut` times it out. A manager unreachable past the grace
//! ([`crate::blobmgr::client::Fallback::Fetch`]) or refusing the blob is
//! replaced by the backend, into memory; this process never writes the
//! cache (no span locks, no committer).
//!
//! A blob that cannot be opened at start (manager down) is opened by the
//! first miss that finds the manager up. The first descriptors of a blob
//! are kept for the fetcher's life, also across manager restarts (the
//! manager keeps its files; a replaced file only costs fallbacks).

use super::index::FrameIndex;
use super::job::Job;
use super::Fetcher;
use crate::backend::{BackendError, BlobId};
use crate::blobmgr::client::{ClientBlobId, ClientConfig, ClientError, ManagerClient, OpenRequest};
use crate::blobmgr::protocol::{
    ErrorCode, FetchFrame, FrameStatus, Lane, Member, UsedRange, FRAME_BATCH, FRAME_ZSTD,
};
use crate::cache::{BlobCache, MapParams, DEFAULT_GRANULARITY};
use crate::chunk::FetchError;
use rafs_format::layout::BlobInfo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long the fetcher waits at start for the manager before it starts
/// without (blobs are then opened by the first misses).
const START_WAIT: Duration = Duration::from_secs(2);

/// One blob as seen through the manager.
struct RemoteBlob {
    /// What to open; `None` for a blob the cache may not hold.
    req: Option<OpenRequest>,
    /// Set once: `Some` opened, `None` refused for good.
    opened: OnceLock<Option<(ClientBlobId, BlobCache)>>,
    /// Per frame: the second (since `Remote::t0`, plus one) of its last
    /// Used report; a hit reports its frame at most once a second.
    reported: Vec<AtomicU32>,
    /// Held while opening (one opener at a time).
    opening: Mutex<()>,
}

/// The fetcher's manager side.
pub(super) struct Remote {
    pub(super) client: Arc<ManagerClient>,
    blobs: Vec<RemoteBlob>,
    /// The clock of `RemoteBlob::reported`.
    t0: Instant,
}

/// What a miss does when the manager cannot fill its frames.
enum Route {
    /// Fetch from the backend into memory (a fallback: counted).
    Direct,
    /// The blob has no cache (not cacheable, or refused by the manager):
    /// from the backend into memory, as without a manager.
    Uncached,
    /// Fail the frames.
    Fail(FetchError),
}

impl Remote {
    /// Starts the client and opens every cacheable blob if the manager
    /// answers within [`START_WAIT`] (otherwise later).
    pub(super) fn start(
        cfg: ClientConfig,
        blobs: &[BlobInfo],
        index: &FrameIndex,
        read_timeout: Duration,
        metrics: &super::metrics::FetchMetrics,
    ) -> std::io::Result<Remote> {
        let client = ManagerClient::start(cfg)?;
        let blobs = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| RemoteBlob {
                req: index
                    .blobs
                    .get(i)
                    .filter(|f| f.cacheable)
                    .map(|_| OpenRequest {
                        blob: BlobId(b.id),
                        blob_size: b.uncompressed_size.get(),
                        layout: super::store::layout_of(b),
                        granularity: DEFAULT_GRANULARITY,
                    }),
                opened: OnceLock::new(),
                reported: (0..index.blobs.get(i).map_or(0, |f| f.frames.len()))
                    .map(|_| AtomicU32::new(0))
                    .collect(),
                opening: Mutex::new(()),
            })
            .collect();
        let remote = Remote {
            client,
            blobs,
            t0: Instant::now(),
        };
        if remote.client.wait_available(Instant::now() + START_WAIT) {
            let deadline = Instant::now() + read_timeout.min(START_WAIT * 5);
            for i in 0..remote.blobs.len() {
                let _ = remote.open(i as u32, deadline, metrics);
            }
        } else {
            tracing::warn!(
                "blob manager unreachable at start: reads use the fallback until it is up"
            );
        }
        Ok(remote)
    }

    /// The read-only cache of `blob`, if opened.
    pub(super) fn cache(&self, blob: u32) -> Option<&BlobCache> {
        Some(&self.blobs.get(blob as usize)?.opened.get()?.as_ref()?.1)
    }

    /// Records a hit of frame `fi` (`start..start + len` in the blob) for
    /// the manager's LRU: at most once a second per frame (one atomic load
    /// otherwise), batched by the client.
    pub(super) fn used(&self, blob: u32, fi: usize, start: u64, len: u64) {
        let Some(b) = self.blobs.get(blob as usize) else {
            return;
        };
        let Some(Some((id, _))) = b.opened.get() else {
            return;
        };
        let now = self.t0.elapsed().as_secs() as u32 + 1;
        if let Some(r) = b.reported.get(fi) {
            if r.load(Ordering::Relaxed) == now || r.swap(now, Ordering::Relaxed) == now {
                return;
            }
        }
        self.client.used(*id, &[UsedRange { start, len }]);
    }

    /// The blob's client id, opening it now if needed (waiting for the
    /// manager as the client's fallback rules say, up to `deadline`).
    fn open(
        &self,
        blob: u32,
        deadline: Instant,
        metrics: &super::metrics::FetchMetrics,
    ) -> Result<ClientBlobId, Route> {
        let b = self.blobs.get(blob as usize).ok_or(Route::Uncached)?;
        let req = b.req.ok_or(Route::Uncached)?;
        if let Some(o) = b.opened.get() {
            return o.as_ref().map(|o| o.0).ok_or(Route::Uncached);
        }
        let _g = b.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(o) = b.opened.get() {
            return o.as_ref().map(|o| o.0).ok_or(Route::Uncached);
        }
        let refuse = |why: String| {
            metrics.manager_refused_blobs.inc();
            tracing::warn!(blob = %req.blob, "served without the cache: {why}");
            let _ = b.opened.set(None);
            Route::Uncached
        };
        let opened = match self.client.open_blob(req, deadline) {
            Ok(o) => o,
            Err(ClientError::Server { code, message }) => {
                return Err(match code {
                    ErrorCode::LayoutConflict | ErrorCode::TooLarge | ErrorCode::BadRequest => {
                        refuse(format!("{code:?}: {message}"))
                    }
                    _ => Route::Direct,
                })
            }
            Err(ClientError::Timeout) => {
                return Err(Route::Fail(FetchError::Timeout(Duration::ZERO)))
            }
            Err(_) => return Err(Route::Direct),
        };
        let params = MapParams::new(req.blob, req.blob_size, req.granularity)
            .map(|p| p.with_layout(req.layout));
        match params.and_then(|p| BlobCache::from_fds(opened.data, opened.map, p)) {
            Ok(cache) => {
                let _ = b.opened.set(Some((opened.id, cache)));
                Ok(opened.id)
            }
            Err(e) => Err(refuse(e.to_string())),
        }
    }
}

impl Fetcher {
    fn remote(&self) -> &Remote {
        // Only called in manager mode.
        self.remote.as_ref().expect("manager mode")
    }

    /// The Fetch description of frame `fi` of `blob`, from the index and
    /// the bootstrap's chunk entries.
    fn fetch_frame(&self, blob: u32, fi: usize) -> Option<FetchFrame> {
        let bf = self.index.blobs.get(blob as usize)?;
        let f = bf.frames.get(fi)?;
        let b = self.image.bootstrap().ok()?;
        let chunks = b.chunks();
        let rep = chunks.get(f.rep as usize)?;
        let mut flags = 0;
        if rep.is_zstd() {
            flags |= FRAME_ZSTD;
        }
        if rep.is_batch() {
            flags |= FRAME_BATCH;
        }
        let members = bf
            .members_of(fi)
            .iter()
            .map(|&m| {
                let c = chunks.get(m as usize)?;
                Some(Member {
                    offset: c.batch_offset.get(),
                    size: c.uncompressed_size.get(),
                    digest: c.digest,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FetchFrame {
            coff: f.coff,
            clen: f.clen,
            ustart: f.ustart,
            ulen: f.ulen,
            flags,
            members,
        })
    }

    /// Runs a job through the manager (see the module docs).
    pub(super) fn run_remote(&self, job: Job) {
        if job.frames.is_empty() {
            return;
        }
        let id = match self.remote().open(job.blob, job.deadline, &self.metrics) {
            Ok(id) => id,
            Err(route) => return self.reroute(job, route),
        };
        let lane = match job.background {
            true => Lane::Prefetch,
            false => Lane::OnDemand,
        };
        let status = match self.ask(id, lane, &job) {
            Ok(s) => s,
            Err(route) => return self.reroute(job, route),
        };
        let (mut again, mut direct) = (Vec::new(), Vec::new());
        for (&fi, st) in job.frames.iter().zip(status) {
            match st {
                FrameStatus::Ready if self.publish_ready(job.blob, fi, job.background) => {}
                FrameStatus::Ready => again.push(fi),
                FrameStatus::NoSpace | FrameStatus::Invalid | FrameStatus::Corrupt => {
                    direct.push(fi)
                }
                FrameStatus::Backend => self.publish_err(job.blob, fi, self.backend_err(job.blob)),
                FrameStatus::TimedOut => {
                    let e = Arc::new(FetchError::Timeout(self.cfg.read_timeout));
                    self.publish_err(job.blob, fi, e)
                }
            }
        }
        if !again.is_empty() {
            // Gone since, or bad for our digests: the manager re-verifies
            // and refetches once; then the backend.
            let retry = with_frames(&job, again);
            match self.ask(id, lane, &retry) {
                Ok(status) => {
                    for (&fi, st) in retry.frames.iter().zip(status) {
                        let ok = st == FrameStatus::Ready
                            && self.publish_ready(job.blob, fi, job.background);
                        if !ok {
                            direct.push(fi);
                        }
                    }
                }
                Err(_) => direct.extend(retry.frames),
            }
        }
        if !direct.is_empty() {
            self.reroute(with_frames(&job, direct), Route::Direct);
        }
    }

    /// One Fetch of the job's frames: the statuses, or where to go.
    fn ask(&self, id: ClientBlobId, lane: Lane, job: &Job) -> Result<Vec<FrameStatus>, Route> {
        let frames = job
            .frames
            .iter()
            .map(|&fi| self.fetch_frame(job.blob, fi))
            .collect::<Option<Vec<_>>>()
            .ok_or(Route::Direct)?;
        self.metrics.manager_requests.inc();
        match self.remote().client.fetch(id, lane, &frames, job.deadline) {
            Ok(s) if s.len() == frames.len() => Ok(s),
            Ok(_) => Err(Route::Direct),
            Err(ClientError::Timeout) => {
                Err(Route::Fail(FetchError::Timeout(self.cfg.read_timeout)))
            }
            Err(e) => {
                tracing::debug!(blob = job.blob, "blob manager fetch: {e}");
                Err(Route::Direct)
            }
        }
    }

    /// Frame `fi` read back from the shared cache and verified, then
    /// published; false if it is not there or does not verify.
    fn publish_ready(&self, blob: u32, fi: usize, background: bool) -> bool {
        let Some(frame) = self.load_verified(blob, fi) else {
            return false;
        };
        let key = (blob, self.index.blobs[blob as usize].frames[fi].coff);
        match background {
            // Prefetched into the shared cache: not into the memory LRU.
            true => self.finish(key, Ok(frame)),
            false => {
                self.publish_ok(blob, fi, frame, false, super::Via::default());
            }
        }
        true
    }

    /// Sends the job's frames where `route` says.
    fn reroute(&self, job: Job, route: Route) {
        match route {
            Route::Direct => {
                self.metrics
                    .manager_fallbacks
                    .inc_by(job.frames.len() as u64);
                self.fetch_run(job, HashMap::new());
            }
            Route::Uncached => self.fetch_run(job, HashMap::new()),
            Route::Fail(e) => {
                if matches!(e, FetchError::Timeout(_)) {
                    self.metrics.read_timeouts.inc();
                }
                let e = match e {
                    FetchError::Timeout(_) => FetchError::Timeout(self.cfg.read_timeout),
                    e => e,
                };
                let e = Arc::new(e);
                for &fi in &job.frames {
                    self.publish_err(job.blob, fi, e.clone());
                }
            }
        }
    }

    fn backend_err(&self, blob: u32) -> Arc<FetchError> {
        Arc::new(FetchError::Backend(BackendError::Transport {
            blob: self.blob_ids[blob as usize],
            detail: "the blob manager's backend fetch failed".into(),
            timeout: false,
        }))
    }
}

/// `job` with other frames.
fn with_frames(job: &Job, frames: Vec<usize>) -> Job {
    Job {
        blob: job.blob,
        frames,
        deadline: job.deadline,
        background: job.background,
    }
}
