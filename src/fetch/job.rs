//! Fetch jobs: one range request for a run of adjacent frames of one blob,
//! with retries, backoff and a deadline, run by a fixed pool of workers
//! (the bound on concurrent backend requests).
//!
//! A job's result is published to the single-flight entry of each of its
//! frames. Transient failures (5xx, 429, transport, short body) are
//! retried with exponential backoff and full jitter until the attempt limit
//! or the deadline; frames that decode badly or whose members fail their
//! digest are retried the same way (a flipped byte on the wire), and after
//! the last attempt are published anyway so that only the reads of the bad
//! chunks fail (each read verifies its own chunk). Only frames whose every
//! member verified are written to the disk cache.
//!
//! An on-demand job's frames are decoded and published as the response
//! body arrives ([`Backend::read_range_to`](crate::backend::Backend::read_range_to)),
//! so a reader of its first frame does not wait for the frames behind it;
//! a failure part-way retries or fails only the frames not yet complete.

use super::index::FrameInfo;
use super::memory::Frame;
use super::metrics::ChunkCounters;
use super::pace::backoff;
use super::{joined, Fetcher, Via};
use crate::backend::{BackendError, BlobId};
use crate::cache::blobfile::SpanLock;
use crate::chunk::{decode_frame, FetchError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts per frame at most (first try included).
const MAX_ATTEMPTS: u32 = 6;

/// A run of frames of one blob, adjacent in the blob's stored bytes.
#[derive(Debug)]
pub struct Job {
    /// Blob index.
    pub blob: u32,
    /// Frame indices, ascending `coff`, adjacent.
    pub frames: Vec<usize>,
    /// Give up (publish errors) after this instant.
    pub deadline: Instant,
    /// Background (prefetch) lane: bandwidth-limited, not in memory LRU.
    pub background: bool,
}

/// A frame to retry, with its decoded bytes if it decoded (members failed
/// their digests).
type Left = (usize, Option<Arc<Frame>>);

/// What one attempt left to do.
enum Outcome {
    Done,
    Retry(Vec<Left>, String),
    /// Fail these frames (the others were published).
    Fail(FetchError, Vec<usize>),
}

/// A job's response as it comes in ([`Fetcher::receive`]).
struct Receiving<'f> {
    /// The job's frames, ascending (the response starts at the first).
    frames: &'f [(usize, &'f FrameInfo)],
    /// The first frame not yet complete.
    next: usize,
    /// Bytes of the response taken so far.
    pos: u64,
    /// The stored bytes of frame `next` so far, when they came in pieces.
    buf: Vec<u8>,
    /// For a background job, the lane state of each of its frames' flights
    /// (in the order of `frames`; not the flights, which would keep their
    /// decoded frames alive): an on-demand read that joins one of them
    /// ends the job's waits for the disk, so it reaches that frame at once.
    watch: Vec<Option<super::Lane>>,
    done: Received,
}

/// What the frames received so far came to.
#[derive(Default)]
struct Received {
    /// Frames to retry.
    bad: Vec<Left>,
    /// Frames served that still wait for the committer.
    late: Vec<super::Late>,
    /// Why the last bad frame was bad.
    why: String,
}

impl Fetcher {
    /// Runs `job` to completion: every frame's flight gets a result.
    ///
    /// In a shared disk cache, frames another process is fetching are
    /// handled last, by waiting for its span lock once this job holds no
    /// lock of its own (its locks are released by the committer, which
    /// waits for nothing): two processes can never wait for each other.
    pub(super) fn run_job(&self, job: Job) {
        let (blob, background, deadline) = (job.blob, job.background, job.deadline);
        let mut job = job;
        if background {
            // Throttle before claiming: a job waiting for bandwidth must not
            // hold span locks that on-demand reads (here or in another
            // process) would wait for. Its frames stay promotable until
            // then; those an on-demand read took over are dropped here.
            self.throttle(&job);
            self.await_commit_room(&job);
            job.frames = self.take_background(blob, &job.frames);
        }
        if self.remote.is_some() {
            return self.run_remote(job); // the blob manager fills the cache
        }
        let (job, busy, locks) = self.claim(job);
        self.fetch_run(job, locks);
        for fi in busy {
            if let Err(lock) = self.wait_claim(blob, fi, background, deadline) {
                let one = Job {
                    blob,
                    frames: vec![fi],
                    deadline,
                    background,
                };
                self.fetch_run(one, lock.map(|l| (fi, l)).into_iter().collect());
            }
        }
    }

    /// Fetches the job's frames, with retries.
    pub(super) fn fetch_run(&self, mut job: Job, mut locks: HashMap<usize, SpanLock>) {
        if job.frames.is_empty() {
            return;
        }
        let mut attempt = 1;
        loop {
            let outcome = self.attempt(&job, &mut locks);
            match outcome {
                Outcome::Done => return,
                Outcome::Fail(e, failed) => return self.fail(job.blob, &failed, e),
                Outcome::Retry(left, why) => {
                    let wait = backoff(self.cfg.retry_base, self.cfg.retry_max, attempt);
                    let late = Instant::now() + wait >= job.deadline;
                    if attempt >= MAX_ATTEMPTS || late {
                        return self.give_up(&job, left, why);
                    }
                    self.metrics.retries.inc();
                    tracing::debug!(blob = job.blob, attempt, "retrying: {why}");
                    std::thread::sleep(wait);
                    attempt += 1;
                    job.frames = left.into_iter().map(|(fi, _)| fi).collect();
                }
            }
        }
    }

    /// Waits until the committer can take the job's frames (half of the
    /// backlog at most, the other half being the on-demand reads'), up to
    /// a read timeout: the background lane fetches for the disk, so it
    /// goes at the disk's pace and holds no fetched frames while waiting.
    fn await_commit_room(&self, job: &Job) {
        let Some(store) = &self.store else { return };
        if self.disk(job.blob).is_none() {
            return;
        }
        let bytes = self.job_bytes(job, |f| f.ulen);
        let share = self.cfg.commit_backlog / 2;
        self.metrics.prefetch_waiting.inc();
        let room = store.wait_room(bytes.min(share), share, self.cfg.read_timeout);
        self.metrics.prefetch_waiting.dec();
        if !room {
            tracing::debug!(
                blob = job.blob,
                "prefetch: the cache disk is behind; fetching anyway"
            );
        }
    }

    /// The sum of `size` over the job's frames (stored or decompressed
    /// bytes).
    fn job_bytes(&self, job: &Job, size: fn(&FrameInfo) -> u32) -> u64 {
        let bf = &self.index.blobs[job.blob as usize];
        job.frames
            .iter()
            .filter_map(|&fi| bf.frames.get(fi))
            .map(|f| u64::from(size(f)))
            .sum()
    }

    /// Waits for the bandwidth the job's stored bytes need.
    fn throttle(&self, job: &Job) {
        let Some(bucket) = &self.bucket else { return };
        let len = self.job_bytes(job, |f| f.clen);
        let wait = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(len);
        std::thread::sleep(wait);
    }

    /// Claims the job's frames in a shared disk cache, without waiting: a
    /// span lock per frame (see `SpanLock`). Returns the job with the
    /// frames claimed (and their locks), and the frames another process
    /// is fetching right now.
    fn claim(&self, mut job: Job) -> (Job, Vec<usize>, HashMap<usize, SpanLock>) {
        let mut locks = HashMap::new();
        let mut busy = Vec::new();
        let Some(cache) = self.disk(job.blob) else {
            return (job, busy, locks);
        };
        let bf = &self.index.blobs[job.blob as usize];
        let size = cache.data().size();
        let mut mine = Vec::with_capacity(job.frames.len());
        for &fi in &job.frames {
            let cover = bf.frames[fi].cover(size);
            match cache
                .data()
                .try_lock_span(cover.start, cover.end - cover.start)
            {
                Ok(Some(l)) => {
                    // Another process may have cached it since the caller
                    // looked: then read it from the disk instead.
                    if self.publish_from_disk(job.blob, fi, job.background) {
                        continue;
                    }
                    locks.insert(fi, l);
                    mine.push(fi);
                }
                Ok(None) => busy.push(fi),
                Err(e) => {
                    tracing::debug!("cache span lock: {e}");
                    mine.push(fi);
                }
            }
        }
        job.frames = mine;
        (job, busy, locks)
    }

    /// Waits for the other process fetching frame `fi`; publishes the frame
    /// from the disk if that process cached it (`Ok`), else returns the
    /// lock, if it could be taken, for this process to fetch the frame.
    ///
    /// The wait is bounded (a quarter of the read timeout, and half of
    /// what is left before `deadline`): a stopped or frozen peer holding
    /// the claim must not pin this worker. Without the lock the frame is
    /// fetched all the same, but only for memory: every write to the cache
    /// happens under its span lock.
    fn wait_claim(
        &self,
        blob: u32,
        fi: usize,
        background: bool,
        deadline: Instant,
    ) -> Result<(), Option<SpanLock>> {
        let cache = self.disk(blob).ok_or(None)?;
        let cover = self.index.blobs[blob as usize].frames[fi].cover(cache.data().size());
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        // After one claim outlived its wait, the peer is presumed stuck:
        // claims are tried, not waited for, until it shows life again.
        let until = match self.peer_stuck() {
            true => now,
            false => now + (self.cfg.read_timeout / 4).min(left / 2),
        };
        let lock = match cache
            .data()
            .lock_span_until(cover.start, cover.end - cover.start, until)
        {
            Ok(Some(l)) => {
                self.stuck_since
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                Some(l)
            }
            Ok(None) => {
                self.metrics.lock_timeouts.inc();
                tracing::debug!(blob, fi, "another process holds the frame's claim too long");
                self.stuck_since
                    .store(self.clock_ms(), std::sync::atomic::Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::debug!("cache span lock: {e}");
                None
            }
        };
        if self.publish_from_disk(blob, fi, background) {
            return Ok(());
        }
        Err(lock)
    }

    /// Whether a claim held by another process outlived its wait less
    /// than a read timeout ago.
    fn peer_stuck(&self) -> bool {
        let since = self.stuck_since.load(std::sync::atomic::Ordering::Relaxed);
        since != 0
            && self.clock_ms().saturating_sub(since) < self.cfg.read_timeout.as_millis() as u64
    }

    /// Milliseconds since the fetcher started, at least 1.
    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Publishes frame `fi` from the disk cache (another process fetched
    /// it), verified; false if it is not there or does not verify.
    fn publish_from_disk(&self, blob: u32, fi: usize, background: bool) -> bool {
        let Some(frame) = self.load_verified(blob, fi) else {
            return false;
        };
        let via = Via {
            background,
            lock: None,
            room: None,
            watch: &[],
        };
        self.publish_ok(blob, fi, frame, false, via);
        true
    }

    /// One range request for the job's frames, each decoded, verified and
    /// published as soon as its bytes are in: a reader of the first frame
    /// of an on-demand request does not wait for the frames read ahead
    /// after it. A background job reads its range whole first (nobody
    /// waits for it, and its decoding may wait for room in the backlog,
    /// which must not hold a response half-read).
    fn attempt(&self, job: &Job, locks: &mut HashMap<usize, SpanLock>) -> Outcome {
        let bf = &self.index.blobs[job.blob as usize];
        let frames: Vec<(usize, &FrameInfo)> = job
            .frames
            .iter()
            .filter_map(|&i| bf.frames.get(i).map(|f| (i, f)))
            .collect();
        let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
            return Outcome::Done;
        };
        let start = first.1.coff;
        let len = last.1.cend() - start;
        let id = self.blob_ids[job.blob as usize];
        self.metrics.backend_requests.inc();
        self.metrics.inflight.inc();
        let t0 = Instant::now();
        let watch = match job.background {
            true => self.lanes_of(job.blob, frames.iter().map(|(_, f)| f.coff)),
            false => Vec::new(),
        };
        let mut rx = Receiving {
            frames: &frames,
            next: 0,
            pos: 0,
            buf: Vec::new(),
            watch,
            done: Received::default(),
        };
        let mut sink = |piece: &[u8]| self.receive(job, &mut rx, piece, locks);
        let got = match job.background {
            false => self.backend.read_range_to(&id, start, len, &mut sink),
            true => self.backend.read_range(&id, start, len).map(|bytes| {
                sink(&bytes);
                crate::util::pool::give(bytes);
            }),
        };
        self.metrics.inflight.dec();
        let took = t0.elapsed();
        self.metrics.backend_seconds.observe(took.as_secs_f64());
        tracing::trace!(
            blob = job.blob,
            start,
            len,
            frames = frames.len(),
            background = job.background,
            us = took.as_micros() as u64,
            "range request"
        );
        ChunkCounters::add(&self.counters.backend_bytes, rx.pos);
        crate::util::pool::give(std::mem::take(&mut rx.buf));
        let Received {
            mut bad,
            late,
            mut why,
        } = rx.done;
        self.commit_late(job.blob, late);
        let rest = frames[rx.next..].iter().map(|&(fi, _)| fi);
        // Frames the bytes did not complete (none from a backend that kept
        // its contract, unless it failed) are retried, never left pending.
        let ended_early = rx.next < frames.len();
        match got {
            Err(e) => {
                self.metrics.error(e.kind());
                if !e.is_transient() {
                    let failed = bad.into_iter().map(|(fi, _)| fi).chain(rest).collect();
                    return Outcome::Fail(FetchError::Backend(e), failed);
                }
                bad.extend(rest.map(|fi| (fi, None)));
                Outcome::Retry(bad, e.to_string())
            }
            Ok(()) if bad.is_empty() && !ended_early => Outcome::Done,
            Ok(()) => {
                if ended_early {
                    why = "the response ended early".into();
                }
                bad.extend(rest.map(|fi| (fi, None)));
                Outcome::Retry(bad, why)
            }
        }
    }

    /// Takes the next `piece` of a job's response: frames whose bytes are
    /// complete are decoded, verified and published in order.
    fn receive(
        &self,
        job: &Job,
        rx: &mut Receiving<'_>,
        mut piece: &[u8],
        locks: &mut HashMap<usize, SpanLock>,
    ) {
        while !piece.is_empty() && rx.next < rx.frames.len() {
            let (fi, f) = rx.frames[rx.next];
            // Bytes between the job's frames (a retry of some of them).
            let at = f.coff - rx.frames[0].1.coff;
            if rx.pos < at {
                let skip = (at - rx.pos).min(piece.len() as u64);
                piece = &piece[skip as usize..];
                rx.pos += skip;
                continue;
            }
            let clen = f.clen as usize;
            let take = (clen - rx.buf.len()).min(piece.len());
            let (bytes, rest) = piece.split_at(take);
            (piece, rx.pos) = (rest, rx.pos + take as u64);
            if rx.buf.is_empty() && take == clen {
                // The whole frame in this piece: decoded from it, no copy.
                let watch = rx.watch.get(rx.next..).unwrap_or_default();
                self.received(job, fi, bytes, locks, watch, &mut rx.done);
            } else {
                if rx.buf.capacity() == 0 {
                    rx.buf = crate::util::pool::take(clen);
                }
                rx.buf.extend_from_slice(bytes);
                if rx.buf.len() < clen {
                    continue;
                }
                let watch = rx.watch.get(rx.next..).unwrap_or_default();
                self.received(job, fi, &rx.buf, locks, watch, &mut rx.done);
                rx.buf.clear();
            }
            rx.next += 1;
        }
    }

    /// Decodes, verifies and publishes frame `fi` from its `stored` bytes;
    /// `watch`: the lane states of this frame's flight and the job's later
    /// ones, if it is a background job (see [`Receiving::watch`]).
    fn received(
        &self,
        job: &Job,
        fi: usize,
        stored: &[u8],
        locks: &mut HashMap<usize, SpanLock>,
        watch: &[Option<super::Lane>],
        done: &mut Received,
    ) {
        let room = self.pace_decode(job, fi, locks, watch);
        match self.check_frame(job.blob, fi, stored) {
            Ok((frame, None)) => {
                if job.background {
                    self.metrics.prefetch_bytes.inc_by(stored.len() as u64);
                    let members = self.index.blobs[job.blob as usize].members_of(fi);
                    self.metrics.prefetch_chunks.inc_by(members.len() as u64);
                }
                let via = Via {
                    background: job.background,
                    lock: locks.remove(&fi),
                    room,
                    watch,
                };
                done.late
                    .extend(self.publish_ok(job.blob, fi, frame, true, via));
            }
            Ok((frame, Some(e))) => {
                done.why = e;
                done.bad.push((fi, Some(frame)));
            }
            Err(e) => {
                done.why = e;
                done.bad.push((fi, None));
            }
        }
    }

    /// Room in the backlog for a frame bound for disk, reserved before it
    /// is decoded, so that the workers together decode no more than the
    /// backlog holds.
    ///
    /// A background frame waits for room in the background lane's share:
    /// until then its stored bytes wait, not its decompressed frame (up to
    /// a chunk's size, while the disk catches up). An on-demand frame takes
    /// room if there is some; it waits for it (its readers with it) only
    /// while frames served earlier still wait for the committer beyond
    /// half the backlog ([`Late`](super::Late)): reads then outpace the
    /// disk, and each further frame would pin its memory until the disk
    /// caught up. It never waits on a committer that shows no progress.
    /// Once an on-demand read has joined this frame or a later one of its
    /// job (`watch`), a background frame is paced as an on-demand one, so
    /// that the reader gets its frame without waiting for the disk (the
    /// join ends a wait already begun: `Store::wake`).
    fn pace_decode(
        &self,
        job: &Job,
        fi: usize,
        locks: &HashMap<usize, SpanLock>,
        watch: &[Option<super::Lane>],
    ) -> Option<super::store::Room<'_>> {
        let (true, Some(store), Some(f)) = (
            locks.contains_key(&fi),
            &self.store,
            self.index.blobs[job.blob as usize].frames.get(fi),
        ) else {
            return None;
        };
        let bytes = u64::from(f.ulen);
        if job.background {
            let joined = || watch.iter().flatten().any(|l| joined(l));
            if !joined() {
                let limit = self.cfg.commit_backlog / 2;
                self.metrics.prefetch_waiting.inc();
                // Out of time: decoded anyway; `publish_ok` then waits for
                // the whole backlog, and gives up the frame's caching after.
                let wait = self.cfg.read_timeout;
                let room = store.reserve_unless(bytes, limit, wait, None, &joined);
                self.metrics.prefetch_waiting.dec();
                if room.is_some() || !joined() {
                    return room;
                }
            }
            // An on-demand read waits for this frame: paced as its own.
        }
        let stall = self.commit_stall();
        let behind = self.metrics.commit_late_bytes.get() >= self.cfg.commit_backlog / 2;
        let wait = if behind { stall } else { Duration::ZERO };
        store.reserve(bytes, self.cfg.commit_backlog, wait, Some(stall))
    }

    /// Decodes a frame and verifies every member; the frame comes back with
    /// the first member failure, if any.
    fn check_frame(
        &self,
        blob: u32,
        fi: usize,
        stored: &[u8],
    ) -> Result<(Arc<Frame>, Option<String>), String> {
        let bf = &self.index.blobs[blob as usize];
        let b = self.image.bootstrap().map_err(|e| e.to_string())?;
        let chunks = b.chunks();
        let f = &bf.frames[fi];
        let rep = &chunks[f.rep as usize];
        ChunkCounters::add(&self.counters.chunk_decompressions, 1);
        let data = decode_frame(rep, stored).map_err(|e| {
            self.metrics.error("decode");
            format!("frame at {}: {e}", f.coff)
        })?;
        let frame = Arc::new(Frame::new(data));
        // Members whose spans overlap (only a hostile bootstrap has them)
        // could cost thousands of hashes of the whole frame per fetch: such
        // a frame is not verified here; its blob has no disk cache (see
        // `index`), and every read verifies its own chunk (`Frame::verify`)
        // before returning a byte. Anything bound for the disk is verified.
        if !f.disjoint && self.disk(blob).is_none() {
            return Ok((frame, None));
        }
        for &m in bf.members_of(fi) {
            if let Err(e) = frame.verify(&chunks[m as usize]) {
                self.metrics.error("digest");
                return Ok((frame, Some(format!("frame at {}: chunk {m}: {e}", f.coff))));
            }
        }
        Ok((frame, None))
    }

    /// After the last attempt: frames that decoded are published for
    /// memory use only (their good chunks stay readable; a bad chunk fails
    /// its own reads when verified; nothing goes to disk); the rest fail.
    fn give_up(&self, job: &Job, left: Vec<Left>, why: String) {
        let blob = job.blob;
        tracing::warn!(blob, frames = left.len(), "fetch failed: {why}");
        let id: BlobId = self.blob_ids[blob as usize];
        let err = Arc::new(FetchError::Backend(BackendError::Transport {
            blob: id,
            detail: format!("gave up after retries: {why}"),
            timeout: false,
        }));
        for (fi, frame) in left {
            match frame {
                Some(frame) => {
                    let via = Via {
                        background: job.background,
                        lock: None,
                        room: None,
                        watch: &[],
                    };
                    self.publish_ok(blob, fi, frame, false, via);
                }
                None => self.publish_err(blob, fi, err.clone()),
            }
        }
    }

    fn fail(&self, blob: u32, frames: &[usize], e: FetchError) {
        tracing::warn!(blob, frames = frames.len(), "fetch failed: {e}");
        let err = Arc::new(e);
        for &fi in frames {
            self.publish_err(blob, fi, err.clone());
        }
    }
}
