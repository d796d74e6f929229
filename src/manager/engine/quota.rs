//! The node-wide cache quota: an LRU over every open blob's ready frames
//! (and the runs of ready ranges found at open, older than any frame).
//! After a commit puts usage over the limit, the least recently used are
//! evicted down to 15/16 of it, each with [`crate::cache::BlobCache::punch`]
//! (generation bumped and bits cleared before the hole is punched).

use super::blob::{Blob, Table};
use super::metrics::EngineMetrics;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Stamp of the runs found at open: older than every frame.
const OLD: u64 = 1;

/// The quota's counters.
pub(crate) struct Quota {
    limit: Option<u64>,
    usage: AtomicU64,
    clock: AtomicU64,
    evicting: Mutex<()>,
    metrics: Arc<EngineMetrics>,
}

/// Something evictable.
enum What {
    Frame(u64),
    Run(u64),
}

impl Quota {
    pub(crate) fn new(limit: Option<u64>, metrics: Arc<EngineMetrics>) -> Quota {
        metrics.cache_limit.set(limit.unwrap_or(0));
        Quota {
            limit,
            usage: AtomicU64::new(0),
            clock: AtomicU64::new(OLD + 1),
            evicting: Mutex::new(()),
            metrics,
        }
    }

    pub(crate) fn usage(&self) -> u64 {
        self.usage.load(Ordering::Relaxed)
    }

    pub(crate) fn limit(&self) -> Option<u64> {
        self.limit
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.usage.fetch_add(n, Ordering::Relaxed);
        self.publish();
    }

    /// The usage gauge follows the counter. Writers race, so each sets
    /// the value it loads *after* its own change, then checks that the
    /// counter did not move meanwhile (the last writer always publishes
    /// the final value).
    fn publish(&self) {
        loop {
            let v = self.usage.load(Ordering::Acquire);
            self.metrics.cache_usage.set(v);
            if self.usage.load(Ordering::Acquire) == v {
                return;
            }
        }
    }

    fn sub(&self, n: u64) {
        let mut cur = self.usage.load(Ordering::Relaxed);
        loop {
            let new = cur.saturating_sub(n);
            match self
                .usage
                .compare_exchange(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.publish();
                    return;
                }
                Err(v) => cur = v,
            }
        }
    }

    /// Accounts the ready runs of a blob just opened (oldest first).
    pub(crate) fn add_runs(&self, blob: &Blob) {
        let runs = blob.cache.bitmap().ready_runs();
        let mut t = blob.table();
        for r in runs {
            self.add(blob.range_bytes(&r));
            t.runs.insert(r.start, (r.end, OLD));
        }
    }

    /// Frame `ustart` of `blob` is ready now: account it (moving its bytes
    /// out of any old run) or touch it.
    pub(crate) fn ready(&self, blob: &Blob, ustart: u64) {
        let now = self.tick();
        let mut t = blob.table();
        let Some(k) = t.frames.get_mut(&ustart) else {
            return;
        };
        k.confirmed = true;
        let fresh = k.stamp == 0;
        k.stamp = now;
        if !fresh {
            return;
        }
        let cover = ustart..k.cover_end;
        let ranges = blob.ranges(&cover);
        let moved = self.claim_runs(blob, &mut t, &ranges);
        self.add(blob.range_bytes(&ranges));
        self.sub(moved);
    }

    /// Removes `ranges` from the old runs; returns the bytes removed.
    fn claim_runs(&self, blob: &Blob, t: &mut Table, ranges: &Range<u64>) -> u64 {
        let hit: Vec<(u64, u64, u64)> = t
            .runs
            .range(..ranges.end)
            .rev()
            .take_while(|(_, (e, _))| *e > ranges.start)
            .map(|(&s, &(e, st))| (s, e, st))
            .collect();
        let mut moved = 0;
        for (s, e, st) in hit {
            t.runs.remove(&s);
            let (a, b) = (s.max(ranges.start), e.min(ranges.end));
            moved += blob.range_bytes(&(a..b));
            if s < a {
                t.runs.insert(s, (a, st));
            }
            if b < e {
                t.runs.insert(b, (e, st));
            }
        }
        moved
    }

    /// Touches the accounted frames overlapping `start..end`.
    pub(crate) fn touch(&self, blob: &Blob, start: u64, end: u64) {
        let now = self.tick();
        let mut t = blob.table();
        let first = t
            .frames
            .range(..start)
            .next_back()
            .filter(|(_, k)| k.cover_end > start)
            .map(|(&u, _)| u)
            .unwrap_or(start);
        for (_, k) in t.frames.range_mut(first..end) {
            if k.stamp != 0 {
                k.stamp = now;
            }
        }
    }

    /// Evicts least recently used frames and runs, over all `blobs`, while
    /// usage is over the limit, down to 15/16 of it. One thread evicts at
    /// a time; the others return at once, and the evicting thread looks
    /// again after each pass (and after letting go of the lock), so usage
    /// another thread added meanwhile is never left over the limit. It
    /// stops when a pass evicts nothing: usage that others added during a
    /// pass can outgrow what the pass evicted, which is no sign that
    /// nothing is left (taken for one, it left usage over the limit with
    /// nobody to look again once the fills stopped).
    pub(crate) fn evict(&self, blobs: &[Arc<Blob>]) {
        let Some(limit) = self.limit else { return };
        loop {
            if self.usage() <= limit {
                return;
            }
            let Ok(one) = self.evicting.try_lock() else {
                return; // the evicting thread looks again when done
            };
            let evicted = self.evict_pass(blobs, limit - limit / 16);
            drop(one);
            if evicted == 0 {
                return; // nothing left to evict
            }
        }
    }

    /// One pass: the least recently used first, down to `target`; the
    /// bytes it evicted.
    fn evict_pass(&self, blobs: &[Arc<Blob>], target: u64) -> u64 {
        let mut cands: Vec<(u64, usize, What)> = Vec::new();
        for (i, b) in blobs.iter().enumerate() {
            let t = b.table();
            for (&u, k) in &t.frames {
                if k.stamp != 0 {
                    cands.push((k.stamp, i, What::Frame(u)));
                }
            }
            for (&s, &(_, st)) in &t.runs {
                cands.push((st, i, What::Run(s)));
            }
        }
        cands.sort_unstable_by_key(|c| c.0);
        let mut evicted = 0;
        for (stamp, i, what) in cands {
            if self.usage() <= target {
                break;
            }
            evicted += self.evict_one(&blobs[i], stamp, what);
        }
        evicted
    }

    /// Evicts one frame or run, unless used since it was picked; the bytes
    /// it took out of the usage.
    fn evict_one(&self, blob: &Blob, stamp: u64, what: What) -> u64 {
        let _io = blob.io.write().unwrap_or_else(PoisonError::into_inner);
        let ranges = {
            let mut t = blob.table();
            match what {
                What::Frame(u) => match t.frames.get_mut(&u) {
                    Some(k) if k.stamp == stamp => {
                        k.stamp = 0;
                        blob.ranges(&(u..k.cover_end))
                    }
                    _ => return 0, // used since
                },
                What::Run(s) => match t.runs.remove(&s) {
                    Some((e, _)) => s..e,
                    None => return 0,
                },
            }
        };
        let bytes = blob.range_bytes(&ranges);
        if let Err(e) = blob.cache.punch(ranges) {
            tracing::warn!(blob = %blob.id.to_hex(), "evicting: {e}");
        }
        self.sub(bytes);
        self.metrics.evictions.inc();
        self.metrics.evicted_bytes.inc_by(bytes);
        bytes
    }
}
