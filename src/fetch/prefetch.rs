//! The prefetch engine: fetch a planned list of frames ahead of the reads
//! that will need them, in the background lane of the [`Fetcher`].
//!
//! It shares everything with on-demand reads — single flight (in process,
//! and across processes through the cache's span locks), coalescing into
//! range requests, retries, verification, the disk cache and its quota —
//! but runs on its own few workers with an optional bandwidth limit, so an
//! on-demand read never queues behind it. It does not care who owns the
//! cache: `rafs prefetch`, a mount's background thread, or later a blob
//! manager all drive the same [`Fetcher::prefetch`].

use super::memory::Key;
use super::{Fetcher, Flight};
use crate::chunk::FetchError;
use rafs_format::layout::ChunkInfo;
use rafs_format::Bootstrap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

/// Frames at most per window: launched together, then waited for.
const WINDOW: usize = 64;

/// Largest range request of the background lane (prefetch, speculation):
/// an on-demand read that joins one waits for little more than its frame,
/// and a worker waiting for the committer holds little. Measured on the
/// issue-12 image over 10 ms / 200 Mbit/s, 4 workers with 1 MiB requests
/// against 2 with 4 MiB: a recorded list prefetched on mount 8% sooner,
/// `--prefetch-all` peak RSS 42-48 -> 31-34 MiB, `rafs prefetch --all` as
/// fast.
const BACKGROUND_REQUEST: u64 = 1 << 20;

/// How waiting for one prefetched frame ended.
enum Waited {
    /// This run's flight (or one it joined) delivered it.
    Fetched,
    /// It was cached before anything was fetched for it.
    Cached,
    /// The run was stopped first (counted neither way).
    Stopped,
    /// The fetch failed.
    Failed(FetchError),
}

/// Frames to fetch, in order, without duplicates.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    /// (blob index, frame index) pairs.
    pub frames: Vec<(u32, usize)>,
    /// Stored (compressed) bytes of all frames.
    pub bytes: u64,
    /// Chunks (frame members) in all frames.
    pub chunks: u64,
    pub(super) seen: HashSet<(u32, usize)>,
}

/// Where a prefetch run is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Frames handled (cached before, fetched, or failed).
    pub done_frames: u64,
    /// Frames planned.
    pub total_frames: u64,
    /// Stored bytes handled.
    pub done_bytes: u64,
    /// Stored bytes planned.
    pub total_bytes: u64,
}

/// The outcome of a prefetch run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Frames planned.
    pub frames: u64,
    /// Frames already cached (disk or memory): nothing fetched.
    pub cached: u64,
    /// Frames fetched by this run.
    pub fetched: u64,
    /// Stored bytes this process received from the backend for the run.
    pub fetched_bytes: u64,
    /// Frames that could not be fetched, with why.
    pub failed: Vec<String>,
    /// Why the run ended early, if it did (stop request, cache quota).
    pub stopped: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Fetcher {
    /// Adds the frames holding bytes of chunks `run` (a file's chunk run)
    /// to `plan`; with `ranges` (file byte ranges, end exclusive) only the
    /// chunks overlapping one of them.
    pub fn plan_chunks(&self, run: &[ChunkInfo], ranges: Option<&[(u64, u64)]>, plan: &mut Plan) {
        for c in run.iter().filter(|c| !c.is_hole()) {
            let (start, end) = (c.file_offset.get(), c.file_end());
            if let Some(r) = ranges {
                if !r.iter().any(|&(a, b)| a < end && start < b) {
                    continue;
                }
            }
            let blob = c.blob_index.get();
            let fi = self
                .index
                .blobs
                .get(blob as usize)
                .and_then(|bf| bf.find(c.compressed_offset.get()));
            if let Some(fi) = fi {
                self.plan_frame(blob, fi, plan);
            }
        }
    }

    pub(super) fn plan_frame(&self, blob: u32, fi: usize, plan: &mut Plan) {
        if !plan.seen.insert((blob, fi)) {
            return;
        }
        let bf = &self.index.blobs[blob as usize];
        plan.bytes += u64::from(bf.frames[fi].clen);
        plan.chunks += bf.members_of(fi).len() as u64;
        plan.frames.push((blob, fi));
    }

    /// Adds the frames of regular file `ino`'s chunks (all, or those
    /// overlapping `ranges`) to `plan`. Other inode types add nothing.
    pub fn plan_file(
        &self,
        b: &Bootstrap<'_>,
        ino: u32,
        ranges: Option<&[(u64, u64)]>,
        plan: &mut Plan,
    ) {
        if let Ok(run) = b.file_chunks(ino) {
            self.plan_chunks(run, ranges, plan);
        }
    }

    /// Every frame of every blob, in stored order (the most coalescable
    /// order: `--all`).
    pub fn plan_all(&self) -> Plan {
        let mut plan = Plan::default();
        for (blob, bf) in self.index.blobs.iter().enumerate() {
            for fi in 0..bf.frames.len() {
                self.plan_frame(blob as u32, fi, &mut plan);
            }
        }
        plan
    }

    /// Starts fetching the frames of `plan` that are not cached, in the
    /// background lane (an on-demand read that needs one joins or promotes
    /// it), in requests of at most 1 MiB, without waiting. Only with a disk
    /// cache: without one the frames would only churn the memory LRU.
    /// Returns the stored bytes launched.
    pub fn speculate(&self, plan: &Plan) -> u64 {
        if !self.disk_backed() {
            return 0;
        }
        let frames: Vec<(u32, usize)> = plan
            .frames
            .iter()
            .copied()
            .filter(|&(blob, fi)| !self.frame_cached(blob, fi))
            .collect();
        if frames.is_empty() {
            return 0;
        }
        let deadline = Instant::now() + self.cfg.read_timeout;
        let max = self.background_request();
        // Frames already in flight are not launched again, nor counted.
        let bytes = self.launch_flights(frames, deadline, true, max).started;
        self.metrics.speculative_bytes.inc_by(bytes);
        bytes
    }

    /// The largest background request: [`BACKGROUND_REQUEST`] or
    /// `max_request` if smaller, and with a disk cache at most the
    /// background lane's share of the commit backlog (half), so that a job
    /// waiting for the committer holds no more than that (see
    /// `Fetcher::await_commit_room`).
    fn background_request(&self) -> u64 {
        let max = BACKGROUND_REQUEST.min(self.cfg.max_request);
        match self.store.is_some() {
            true => max.min(self.cfg.commit_backlog / 2),
            false => max,
        }
    }

    /// Whether speculative fetches ([`Fetcher::speculate`]) can happen.
    pub fn speculates(&self) -> bool {
        self.cfg.widen > 0 && self.disk_backed()
    }

    /// Whether fetched frames go to a disk cache (ours or the manager's).
    pub(super) fn disk_backed(&self) -> bool {
        self.store.is_some() || self.remote.is_some()
    }

    /// Whether the frame holding (non-hole) chunk `c` is cached.
    pub fn chunk_cached(&self, c: &ChunkInfo) -> bool {
        let blob = c.blob_index.get();
        self.index
            .blobs
            .get(blob as usize)
            .and_then(|bf| bf.find(c.compressed_offset.get()))
            .is_some_and(|fi| self.frame_cached(blob, fi))
    }

    /// Whether frame `fi` of `blob` is cached: ready on disk, in memory or
    /// waiting for the committer.
    pub fn frame_cached(&self, blob: u32, fi: usize) -> bool {
        let Some(f) = self
            .index
            .blobs
            .get(blob as usize)
            .and_then(|b| b.frames.get(fi))
        else {
            return false;
        };
        let key: Key = (blob, f.coff);
        if let Some(cache) = self.disk(blob) {
            if super::store::ready(cache, &f.cover(cache.data().size())) {
                return true;
            }
        }
        self.memory.contains(&key) || self.store.as_ref().is_some_and(|s| s.holds(&key))
    }

    /// Fetches `plan` in the background lane, window by window, until done,
    /// `stop` is set, or the cache quota would be exceeded. `progress` is
    /// called after each window.
    pub fn prefetch(
        &self,
        plan: &Plan,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(Progress),
    ) -> Report {
        let t0 = Instant::now();
        let received = self.metrics.prefetch_bytes.get();
        let mut report = Report {
            frames: plan.frames.len() as u64,
            ..Report::default()
        };
        let mut p = Progress {
            total_frames: report.frames,
            total_bytes: plan.bytes,
            ..Progress::default()
        };
        for window in plan.frames.chunks(WINDOW) {
            if stop.load(Ordering::Relaxed) {
                report.stopped = Some("stopped".into());
                break;
            }
            let need: Vec<(u32, usize)> = window
                .iter()
                .copied()
                .filter(|&(b, fi)| !self.frame_cached(b, fi))
                .collect();
            report.cached += (window.len() - need.len()) as u64;
            let need_bytes: u64 = need.iter().map(|&(b, fi)| self.stored_len(b, fi)).sum();
            if let Some(room) = self.store.as_ref().and_then(|s| s.room()) {
                if need_bytes > room {
                    report.stopped = Some("the cache quota (--cache-size) is reached".into());
                    break;
                }
            }
            if !self.disk_backed() {
                // Memory only: past the LRU's budget, prefetch would evict
                // its own data. (A blob manager's cache is the target.)
                let planned: u64 = report.fetched_bytes + need_bytes;
                if planned > self.cfg.memory_bytes as u64 {
                    report.stopped = Some("the memory cache (--chunk-cache-size) is full".into());
                    break;
                }
            }
            self.fetch_window(&need, stop, &mut report);
            p.done_frames += window.len() as u64;
            p.done_bytes += window
                .iter()
                .map(|&(b, fi)| self.stored_len(b, fi))
                .sum::<u64>();
            progress(p);
        }
        if report.stopped.is_some() || stop.load(Ordering::Relaxed) {
            self.cancel_prefetch();
            report.stopped.get_or_insert_with(|| "stopped".into());
        }
        report.elapsed = t0.elapsed();
        // What this process received (frames another process fetched and
        // this one read from the shared cache are not counted).
        report.fetched_bytes = self.metrics.prefetch_bytes.get() - received;
        self.metrics
            .prefetch_seconds
            .set(report.elapsed.as_secs_f64());
        report
    }

    pub(super) fn stored_len(&self, blob: u32, fi: usize) -> u64 {
        self.index.blobs[blob as usize]
            .frames
            .get(fi)
            .map_or(0, |f| u64::from(f.clen))
    }

    /// Launches `need` in the background lane and waits for each frame
    /// (checking `stop` at least every 100 ms).
    fn fetch_window(&self, need: &[(u32, usize)], stop: &AtomicBool, report: &mut Report) {
        // Patient: a prefetch may wait behind on-demand reads, and for its
        // bandwidth limit.
        let bytes: u64 = need.iter().map(|&(b, fi)| self.stored_len(b, fi)).sum();
        let throttle = self.cfg.prefetch_bandwidth.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64)
        });
        let deadline = Instant::now() + self.cfg.read_timeout * 4 + throttle;
        let mut flights = self
            .launch_flights(need.to_vec(), deadline, true, self.background_request())
            .flights;
        for &(blob, fi) in need {
            // Each flight (and the frame its result holds) is let go once
            // waited for, not at the window's end: a window of large frames
            // would otherwise stay in memory whole.
            let waited = match flights.remove(&(blob, fi)) {
                Some(f) => self.wait_prefetched(&f, deadline, stop),
                None => Waited::Cached, // in memory by the time it launched
            };
            match waited {
                Waited::Fetched => report.fetched += 1,
                Waited::Cached => report.cached += 1,
                Waited::Stopped => return,
                Waited::Failed(e) => report.failed.push(format!(
                    "blob {}, stored offset {}: {e}",
                    self.blob_ids[blob as usize], self.index.blobs[blob as usize].frames[fi].coff
                )),
            }
        }
    }

    /// Waits for a frame's flight: fetched (even if evicted since, as a
    /// memory-only prefetch of more than fits may be), failed, or `stop`.
    fn wait_prefetched(&self, f: &Flight, deadline: Instant, stop: &AtomicBool) -> Waited {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Waited::Stopped;
            }
            let slice = (Instant::now() + Duration::from_millis(100)).min(deadline);
            match f.wait(slice) {
                Some(Ok(_)) => return Waited::Fetched,
                Some(Err(e)) if matches!(*e, FetchError::Cancelled) => return Waited::Stopped,
                Some(Err(e)) => return Waited::Failed(FetchError::Shared(e)),
                None if Instant::now() >= deadline => {
                    return Waited::Failed(FetchError::Timeout(self.cfg.read_timeout * 4))
                }
                None => continue,
            }
        }
    }

    /// Waits (up to `timeout`) until no frame is being fetched or queued
    /// (speculation included) and every fetched frame is written to the
    /// disk cache ([`Fetcher::flush`]); false on timeout. A frame is held
    /// for the committer before its flight ends, so none slips between the
    /// two checks, but for an on-demand frame a full backlog turned away
    /// (written later by its worker, see `Late`).
    pub fn settle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let flying = !self
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty();
            if !flying {
                return self.flush(end.saturating_duration_since(Instant::now()));
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (up to `timeout`) until every fetched frame is written to the
    /// disk cache; false on timeout. Frames still being fetched are not
    /// waited for ([`Fetcher::settle`] does).
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        let end = Instant::now() + timeout;
        while store.busy() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}
