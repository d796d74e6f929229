//! The single-flight table and the two worker lanes.
//!
//! A frame missing from the cache is fetched by one flight, keyed by (blob,
//! `coff`), whatever the number of requests (and clients) that want it.
//! Flights are run by jobs (adjacent frames of one blob, one range request
//! of at most `max_request` bytes) on one of two fixed pools: on-demand
//! (`concurrency` threads) and prefetch (`prefetch_threads`, throttled by
//! the bandwidth bucket). As in `crate::fetch`, a prefetch flight still
//! queued or throttled (`BG_QUEUED`) is promoted (`FG`) by the first
//! on-demand request that joins it, and run in the on-demand lane; the
//! prefetch worker commits to a flight (`BG_RUNNING`) only after its
//! bandwidth wait.

use super::blob::{members_match, Blob};
use super::request::Request;
use super::Engine;
use crate::backend::BlobId;
use crate::blobmgr::protocol::{FetchFrame, FrameStatus, Lane, FRAME_ZSTD};
use crate::cache::Fill;
use crate::fetch::pace::backoff;
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Attempts per frame at most (first try included).
const MAX_ATTEMPTS: u32 = 6;

/// Run by the on-demand lane.
const FG: u8 = 0;
/// Queued (or throttled) in the prefetch lane: may be promoted.
const BG_QUEUED: u8 = 1;
/// Being fetched by a prefetch worker.
const BG_RUNNING: u8 = 2;

/// The single-flight key: (blob, `coff`).
pub(crate) type Key = (BlobId, u64);

/// A request's frame waiting for a flight.
struct Waiter {
    req: Arc<Request>,
    idx: usize,
    lane: Lane,
    /// The requester's frame if its members differ from the flight's: it
    /// is checked against the cache after the flight.
    own: Option<FetchFrame>,
}

struct FlightState {
    waiters: Vec<Waiter>,
    /// The latest deadline among the waiters.
    deadline: Instant,
}

/// One frame being fetched.
pub(crate) struct Flight {
    blob: Arc<Blob>,
    frame: FetchFrame,
    lane: AtomicU8,
    state: Mutex<FlightState>,
}

impl Flight {
    fn take(&self, from: u8, to: u8) -> bool {
        self.lane
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bytes(&self) -> u64 {
        let cover = self.blob.cover(&self.frame);
        self.blob.range_bytes(&self.blob.ranges(&cover))
    }
}

/// Adjacent flights of one blob: one range request.
pub(crate) struct Job {
    flights: Vec<Arc<Flight>>,
    background: bool,
}

/// A frame of a request to serve: (index in the request, frame, lane).
pub(crate) type Want = (usize, FetchFrame);

impl Engine {
    /// Serves `wants` of `req`: joins their flights (promoting queued
    /// prefetch ones for on-demand), serves the ready ones from the cache,
    /// and starts flights for the rest. `again`: a ready frame that fails
    /// the requester's digests is invalidated and fetched (else Corrupt).
    pub(crate) fn launch(
        &self,
        blob: &Arc<Blob>,
        lane: Lane,
        wants: Vec<Want>,
        req: &Arc<Request>,
        again: bool,
    ) {
        let mut ready = Vec::new();
        let mut new: Vec<Arc<Flight>> = Vec::new();
        let mut promoted: Vec<Arc<Flight>> = Vec::new();
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            for (idx, f) in wants {
                let key = (blob.id, f.coff);
                if let Some(fl) = flights.get(&key) {
                    self.metrics.joined.inc();
                    if lane == Lane::OnDemand && fl.take(BG_QUEUED, FG) {
                        self.metrics.promoted.inc();
                        promoted.push(fl.clone());
                    }
                    let same = fl.frame.members == f.members && fl.frame.flags == f.flags;
                    let mut st = fl.state();
                    st.deadline = st.deadline.max(req.deadline);
                    st.waiters.push(Waiter {
                        req: req.clone(),
                        idx,
                        lane,
                        own: (!same).then_some(f),
                    });
                    continue;
                }
                if blob.ready(&blob.cover(&f)) {
                    ready.push((idx, f));
                    continue;
                }
                self.metrics.flights.inc();
                let fl = Arc::new(Flight {
                    blob: blob.clone(),
                    frame: f,
                    lane: AtomicU8::new(match lane {
                        Lane::OnDemand => FG,
                        Lane::Prefetch => BG_QUEUED,
                    }),
                    state: Mutex::new(FlightState {
                        waiters: vec![Waiter {
                            req: req.clone(),
                            idx,
                            lane,
                            own: None,
                        }],
                        deadline: req.deadline,
                    }),
                });
                flights.insert(key, fl.clone());
                new.push(fl);
            }
        }
        let background = lane == Lane::Prefetch;
        for job in self.coalesce(new, background) {
            self.send(job);
        }
        for job in self.coalesce(promoted, false) {
            self.send(job);
        }
        for (idx, f) in ready {
            self.serve_ready(blob, lane, idx, f, req, again);
        }
    }

    fn send(&self, job: Job) {
        let lane = match job.background {
            true => &self.bg_jobs,
            false => &self.fg_jobs,
        };
        // Workers live as long as the engine: the send cannot fail.
        let _ = lane.send(job);
    }

    /// A frame whose cover is ready: check the requester's digests against
    /// the cached bytes. A mismatch invalidates the cover (generation
    /// bumped) and, if `again`, fetches it.
    fn serve_ready(
        &self,
        blob: &Arc<Blob>,
        lane: Lane,
        idx: usize,
        f: FetchFrame,
        req: &Arc<Request>,
        again: bool,
    ) {
        match blob.verify_cached(&f) {
            Ok(true) => {
                self.quota.ready(blob, f.ustart);
                return req.settle(idx, FrameStatus::Ready);
            }
            Ok(false) => {
                self.metrics.reverify_mismatches.inc();
                let ranges = blob.ranges(&blob.cover(&f));
                if let Err(e) = blob.cache.invalidate(ranges) {
                    tracing::warn!(blob = %blob.id.to_hex(), "invalidating: {e}");
                }
            }
            Err(e) => tracing::warn!(blob = %blob.id.to_hex(), "reading the cache: {e}"),
        }
        match again && !req.answered() {
            true => self.launch(blob, lane, vec![(idx, f)], req, false),
            false => req.settle(idx, FrameStatus::Corrupt),
        }
    }

    /// Groups flights (one blob) into jobs of frames adjacent in stored
    /// bytes, each at most `max_request` bytes (less for a slow prefetch
    /// bandwidth, so it is honoured smoothly).
    fn coalesce(&self, mut flights: Vec<Arc<Flight>>, background: bool) -> Vec<Job> {
        let max = match self.cfg.prefetch_bandwidth {
            Some(rate) if background => self.cfg.max_request.min(rate.max(64 << 10)),
            _ => self.cfg.max_request,
        };
        flights.sort_by_key(|f| f.frame.coff);
        let mut jobs: Vec<Job> = Vec::new();
        let mut bytes = 0u64;
        for fl in flights {
            let clen = u64::from(fl.frame.clen);
            if let Some(j) = jobs.last_mut() {
                let prev = j
                    .flights
                    .last()
                    .map(|p| p.frame.coff + u64::from(p.frame.clen));
                if prev == Some(fl.frame.coff) && bytes + clen <= max {
                    bytes += clen;
                    j.flights.push(fl);
                    continue;
                }
            }
            bytes = clen;
            jobs.push(Job {
                flights: vec![fl],
                background,
            });
        }
        jobs
    }

    /// How long a prefetch job waits for its bandwidth.
    fn throttle(&self, job: &Job) -> Duration {
        let Some(bucket) = &self.bucket else {
            return Duration::ZERO;
        };
        let len = job.flights.iter().map(|f| u64::from(f.frame.clen)).sum();
        bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(len)
    }

    /// Runs a job: every flight of it gets finished.
    fn run_job(&self, job: Job) {
        let mut left: Vec<Arc<Flight>> = match job.background {
            true => job
                .flights
                .into_iter()
                .filter(|f| f.take(BG_QUEUED, BG_RUNNING))
                .collect(),
            false => job.flights,
        };
        let mut attempt = 1;
        while !left.is_empty() {
            let mut retry: Vec<(Arc<Flight>, FrameStatus)> = Vec::new();
            let mut good: Vec<(Arc<Flight>, Vec<u8>)> = Vec::new();
            for group in adjacent(left) {
                self.attempt(group, &mut good, &mut retry);
            }
            self.commit(good);
            if retry.is_empty() {
                return;
            }
            let wait = backoff(self.cfg.retry_base, self.cfg.retry_max, attempt);
            let deadline = retry.iter().map(|(f, _)| f.state().deadline).max();
            let late = deadline.is_none_or(|d| Instant::now() + wait >= d);
            if attempt >= MAX_ATTEMPTS || late {
                for (f, s) in retry {
                    self.finish(&f, s);
                }
                return;
            }
            std::thread::sleep(wait);
            attempt += 1;
            left = retry.into_iter().map(|(f, _)| f).collect();
        }
    }

    /// One range request for adjacent flights; decodes and verifies each.
    fn attempt(
        &self,
        group: Vec<Arc<Flight>>,
        good: &mut Vec<(Arc<Flight>, Vec<u8>)>,
        retry: &mut Vec<(Arc<Flight>, FrameStatus)>,
    ) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            return;
        };
        let start = first.frame.coff;
        let len = last.frame.coff + u64::from(last.frame.clen) - start;
        self.metrics.backend_requests.inc();
        let bytes = match self.backend.read_range(&first.blob.id, start, len) {
            Ok(b) if b.len() as u64 == len => b,
            Ok(_) => {
                self.metrics.backend_errors.inc();
                retry.extend(group.into_iter().map(|f| (f, FrameStatus::Backend)));
                return;
            }
            Err(e) => {
                self.metrics.backend_errors.inc();
                tracing::debug!(blob = %first.blob.id.to_hex(), "backend: {e}");
                if e.is_transient() {
                    retry.extend(group.into_iter().map(|f| (f, FrameStatus::Backend)));
                } else {
                    for f in group {
                        self.finish(&f, FrameStatus::Backend);
                    }
                }
                return;
            }
        };
        self.metrics.backend_bytes.inc_by(len);
        for f in group {
            let from = (f.frame.coff - start) as usize;
            let stored = bytes.get(from..from + f.frame.clen as usize).unwrap_or(&[]);
            match decode(&f.frame, stored) {
                Some(data) if members_match(&data, &f.frame.members) => good.push((f, data)),
                _ => {
                    self.metrics.backend_errors.inc();
                    retry.push((f, FrameStatus::Corrupt));
                }
            }
        }
    }

    /// Writes verified frames (one blob per group) durably, sets their
    /// bits, finishes their flights, then enforces the quota.
    fn commit(&self, good: Vec<(Arc<Flight>, Vec<u8>)>) {
        let Some(blob) = good.first().map(|(f, _)| f.blob.clone()) else {
            return;
        };
        let (fit, big): (Vec<_>, Vec<_>) = good
            .into_iter()
            .partition(|(f, _)| self.quota.limit().is_none_or(|l| f.bytes() <= l));
        for (f, _) in big {
            self.finish(&f, FrameStatus::NoSpace);
        }
        let fills: Vec<Fill<'_>> = fit
            .iter()
            .map(|(f, data)| Fill {
                offset: f.frame.ustart,
                bytes: data,
                cover_end: blob.cover(&f.frame).end,
            })
            .collect();
        let res = {
            let _io = blob.io.read().unwrap_or_else(PoisonError::into_inner);
            blob.cache.commit_covering(&fills)
        };
        let status = match res {
            Ok(_) => FrameStatus::Ready,
            Err(e) => {
                tracing::warn!(blob = %blob.id.to_hex(), "cache write: {e}");
                FrameStatus::NoSpace
            }
        };
        for (f, _) in &fit {
            if status == FrameStatus::Ready {
                self.quota.ready(&blob, f.frame.ustart);
            }
            self.finish(f, status);
        }
        self.quota.evict(&self.open_blobs());
    }

    /// Ends a flight: its waiters get `status`; waiters with other members
    /// go through the cache check (or a new flight if this one failed).
    fn finish(&self, f: &Arc<Flight>, status: FrameStatus) {
        let waiters = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (f.blob.id, f.frame.coff);
            if flights.get(&key).is_some_and(|x| Arc::ptr_eq(x, f)) {
                flights.remove(&key);
            }
            std::mem::take(&mut f.state().waiters)
        };
        if matches!(status, FrameStatus::Corrupt | FrameStatus::Backend) {
            f.blob.forget_unconfirmed(f.frame.ustart);
        }
        for w in waiters {
            match w.own {
                None => w.req.settle(w.idx, status),
                Some(own) if status == FrameStatus::Ready => {
                    self.serve_ready(&f.blob, w.lane, w.idx, own, &w.req, false)
                }
                Some(own) if status == FrameStatus::Corrupt && !w.req.answered() => {
                    let note = f.blob.note_frame(&own);
                    match note {
                        Ok(()) => self.launch(&f.blob, w.lane, vec![(w.idx, own)], &w.req, false),
                        Err(_) => w.req.settle(w.idx, FrameStatus::Invalid),
                    }
                }
                Some(_) => w.req.settle(w.idx, status),
            }
        }
    }
}

/// Splits flights (ascending `coff`) into runs adjacent in stored bytes.
fn adjacent(flights: Vec<Arc<Flight>>) -> Vec<Vec<Arc<Flight>>> {
    let mut out: Vec<Vec<Arc<Flight>>> = Vec::new();
    for f in flights {
        if let Some(g) = out.last_mut() {
            let end = g.last().map(|p| p.frame.coff + u64::from(p.frame.clen));
            if end == Some(f.frame.coff) {
                g.push(f);
                continue;
            }
        }
        out.push(vec![f]);
    }
    out
}

/// A frame's decoded bytes: zstd to exactly `ulen` bytes, or the stored
/// bytes themselves (which must be `ulen` long).
fn decode(f: &FetchFrame, stored: &[u8]) -> Option<Vec<u8>> {
    if stored.len() != f.clen as usize {
        return None;
    }
    let want = f.ulen as usize;
    if f.flags & FRAME_ZSTD == 0 {
        return (stored.len() == want).then(|| stored.to_vec());
    }
    let mut out = Vec::with_capacity(want);
    zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(stored, &mut out))
        .ok()?;
    (out.len() == want).then_some(out)
}

/// A worker of one lane: runs jobs until the engine is gone. A prefetch
/// job's bandwidth wait holds no reference to the engine and ends early
/// once every flight of the job was promoted.
pub(crate) fn worker(engine: Weak<Engine>, rx: Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        if job.background {
            let Some(wait) = engine.upgrade().map(|e| e.throttle(&job)) else {
                return;
            };
            let until = Instant::now() + wait;
            loop {
                let now = Instant::now();
                let queued = job
                    .flights
                    .iter()
                    .any(|f| f.lane.load(Ordering::Acquire) == BG_QUEUED);
                if now >= until || !queued || engine.strong_count() == 0 {
                    break;
                }
                std::thread::sleep((until - now).min(Duration::from_millis(20)));
            }
        }
        match engine.upgrade() {
            Some(e) => e.run_job(job),
            None => return,
        }
    }
}
