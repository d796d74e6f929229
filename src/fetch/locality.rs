//! Read-ahead across files: what a miss fetches besides the frames its
//! read needs, from where those frames lie in the blob.
//!
//! The builder stores files in tree order and packs small files (and the
//! tails of larger ones) into batch frames, so files read together — a
//! package's modules, a program's data files, one directory — lie close
//! together in the blob. Three rules use that; all are off with
//! `--readahead 0`:
//!
//! - **Streams** ([`Fetcher::stream_ahead`]): a miss that starts where the
//!   previous miss of the blob ended, or inside what was fetched or
//!   speculated after it (a tree read in build order, a `tar` of the
//!   mount), fetches the frames that follow too, in a window that doubles
//!   per sequential miss. The frames join the miss's on-demand requests.
//! - **Neighbours**: a miss on a batch frame also fetches the batch frames
//!   stored right after it, up to `readahead` decompressed bytes.
//! - **Hot regions**: once misses have hit [`HOT_MISSES`] distinct batch
//!   frames of one [`REGION`] of a blob's stored bytes, every batch frame
//!   of that region is fetched (once per fetcher).
//!
//! Neighbours and hot regions are for misses that do not continue a
//! stream, on frames nobody is fetching yet (a read that joins a frame
//! already in flight joins a prediction, which is no new evidence), and
//! are speculation ([`Fetcher::speculate`]):
//! background requests issued right after the miss's own, so the reader
//! waits for no extra byte, only with a disk cache, and a later read that
//! needs one of those frames joins or promotes its flight. A program
//! starting reads its small files one after another, each read a round
//! trip when it misses; these rules turn many of those round trips into
//! frames already fetched. Plain chunks (large files) are left to in-file
//! read-ahead and `--widen`.
//!
//! Costs: a miss looks at the frames after it (at most `readahead` bytes'
//! worth) and, on a region's [`HOT_MISSES`]th miss, at the region's
//! frames, found by binary search; the region counters hold one entry per
//! region a miss touched.

use super::prefetch::Plan;
use super::Fetcher;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Size of a hot region, in stored bytes, aligned in the blob.
pub const REGION: u64 = 1 << 20;

/// Distinct batch frames missed in a region that make it hot.
pub const HOT_MISSES: u8 = 2;

/// Per-fetcher state of the rules.
pub(crate) struct Locality {
    /// Per blob: the stream of on-demand misses.
    streams: Vec<Mutex<Stream>>,
    /// Per (blob, region index): batch frames missed there so far,
    /// saturating at [`HOT_MISSES`] (then the region has been fetched).
    regions: Mutex<HashMap<(u32, u64), u8>>,
}

/// Where a blob's last on-demand miss left off.
#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Start of the last miss (stored bytes; `u64::MAX`: none yet, so
    /// nothing continues it).
    start: u64,
    /// End of the frames fetched for the stream so far (window included).
    end: u64,
    /// End of the neighbours speculated after it (at least `end`): a miss
    /// starting after the last one's start, up to here, continues the
    /// stream (a reader in stored order, reaching frames still in flight).
    ahead: u64,
    /// Misses in a row that continued the stream.
    run: u64,
}

impl Locality {
    pub(super) fn new(blobs: usize) -> Locality {
        let none = Stream {
            start: u64::MAX,
            end: u64::MAX,
            ahead: u64::MAX,
            run: 0,
        };
        Locality {
            streams: (0..blobs).map(|_| Mutex::new(none)).collect(),
            regions: Mutex::default(),
        }
    }

    /// Moves the end of `blob`'s stream from `from` to `to` (speculated
    /// neighbours), if it ends at `from`.
    fn stream_past(&self, blob: u32, from: u64, to: u64) {
        if let Some(s) = self.streams.get(blob as usize) {
            let mut stream = s.lock().unwrap_or_else(PoisonError::into_inner);
            if stream.end == from {
                stream.ahead = stream.ahead.max(to);
            }
        }
    }

    /// Counts a miss on a batch frame of `region`; true when this miss
    /// makes the region hot.
    fn miss(&self, blob: u32, region: u64) -> bool {
        let mut regions = self.regions.lock().unwrap_or_else(PoisonError::into_inner);
        let n = regions.entry((blob, region)).or_insert(0);
        if *n >= HOT_MISSES {
            return false;
        }
        *n += 1;
        *n == HOT_MISSES
    }
}

impl Fetcher {
    /// Streams: when a miss starts where the previous miss of the same
    /// blob ended (or inside the neighbours speculated after it), the
    /// frames that follow in the blob are added to `need`,
    /// in a window that doubles per sequential miss up to `max_request`,
    /// from the third sequential miss in a row on. A miss elsewhere resets
    /// it, so random access fetches only what it reads (and what the other
    /// rules speculate). True if this miss continued the previous one (a
    /// read in stored order: the other rules stay out of its way).
    pub(super) fn stream_ahead(&self, need: &mut Vec<(u32, usize)>) -> bool {
        if self.cfg.readahead == 0 {
            return false;
        }
        let Some(&(blob, first)) = need.iter().min() else {
            return false;
        };
        let bf = &self.index.blobs[blob as usize];
        let Some(last) = need.iter().filter(|f| f.0 == blob).map(|f| f.1).max() else {
            return false;
        };
        let mut stream = self.locality.streams[blob as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let start = bf.frames[first].coff;
        let continues = stream.start < start && start <= stream.ahead;
        stream.run = if continues { stream.run + 1 } else { 0 };
        let mut budget = match stream.run {
            0 | 1 => 0,
            n => (self.cfg.readahead << (n - 2).min(16)).min(self.cfg.max_request),
        };
        // The window goes on from the stream's end (frames before it are
        // fetched or in flight already).
        let mut end = bf.frames[last].cend();
        let mut next = last + 1;
        if continues && stream.end > end {
            if let Some(fi) = bf.find(stream.end) {
                (end, next) = (stream.end, fi);
            }
        }
        for fi in next..bf.frames.len() {
            let f = &bf.frames[fi];
            // Counted decompressed too: the window's frames are held in
            // memory, decompressed, until written.
            let cost = u64::from(f.clen.max(f.ulen));
            if budget < cost || f.coff != end {
                break;
            }
            budget -= cost;
            end = f.cend();
            if !self.frame_cached(blob, fi) {
                need.push((blob, fi));
            }
        }
        stream.start = start;
        stream.end = if continues { end.max(stream.end) } else { end };
        stream.ahead = stream.end;
        continues
    }

    /// The frames of `need` that nobody is fetching yet. A read that finds
    /// a frame already in flight joins a prediction (a speculated
    /// neighbour or region, a file fetched whole): that is no new evidence
    /// of locality, so only the others go to [`Fetcher::plan_around`].
    pub(super) fn not_in_flight(&self, need: &[(u32, usize)]) -> Vec<(u32, usize)> {
        let flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        let flying = |&(blob, fi): &(u32, usize)| {
            let f = self
                .index
                .blobs
                .get(blob as usize)
                .and_then(|b| b.frames.get(fi));
            f.is_some_and(|f| flights.contains_key(&(blob, f.coff)))
        };
        need.iter().copied().filter(|k| !flying(k)).collect()
    }

    /// Neighbours and hot regions of the batch frames in `missed` (the
    /// frames a read found missing and nobody was fetching): the frames to
    /// speculate, not including `missed` itself.
    pub(super) fn plan_around(&self, missed: &[(u32, usize)]) -> Plan {
        let mut plan = Plan::default();
        if self.cfg.readahead == 0 || !self.disk_backed() {
            return plan;
        }
        for &(blob, fi) in missed {
            plan.seen.insert((blob, fi));
        }
        for &(blob, fi) in missed {
            let Some(bf) = self.index.blobs.get(blob as usize) else {
                continue;
            };
            let Some(f) = bf.frames.get(fi).filter(|f| f.batch) else {
                continue;
            };
            // Neighbours: the batch frames stored right after this one.
            let mut budget = self.cfg.readahead;
            let mut end = f.cend();
            for (n, next) in bf.frames.iter().enumerate().skip(fi + 1) {
                if !next.batch || next.coff != end || budget < u64::from(next.ulen) {
                    break;
                }
                budget -= u64::from(next.ulen);
                end = next.cend();
                self.plan_frame(blob, n, &mut plan);
            }
            // A reader in stored order misses next where the neighbours end:
            // that continues its stream.
            self.locality.stream_past(blob, f.cend(), end);
            // Hot region: every batch frame of it.
            let region = f.coff / REGION;
            if self.locality.miss(blob, region) {
                // The last region of a (claimed) 2^64-byte blob ends at
                // 2^64: saturate rather than wrap.
                let (start, end) = (region * REGION, (region + 1).saturating_mul(REGION));
                let from = bf.frames.partition_point(|f| f.coff < start);
                let to = bf.frames.partition_point(|f| f.coff < end);
                for n in from..to {
                    if bf.frames[n].batch {
                        self.plan_frame(blob, n, &mut plan);
                    }
                }
                tracing::trace!(blob, region, "hot region");
            }
        }
        plan
    }
}
