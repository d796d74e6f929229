//! Disk cache hits are verified: every byte a read returns from the disk
//! cache has been checked against the reader's own bootstrap digests.
//!
//! A cache is storage like any other (bit rot, a stray write, another tool,
//! another image that claims the same blob id with a different chunk
//! layout), so a set bit is not trusted by itself. The first time this
//! process serves a frame from the disk, it reads the whole frame, checks
//! every member chunk against its digest, and remembers that in the memo
//! (`store::Verified`) together with the map's *generation*. Frames this
//! process wrote itself were verified before the write: the committer
//! records them at the generation they were written at, so reading back
//! what a cold read just fetched is not checked twice. Later hits of the
//! frame are one `pread` as before, as long as the generation has not
//! moved.
//!
//! The generation (in the map's live block, shared by every process using
//! the cache) is bumped before any process clears a bit — eviction, or the
//! invalidation of a range that failed verification — and every write into
//! a range that is ready is preceded by such an invalidation (the cache
//! commits under the frame's span lock and never writes over ready bytes).
//! So "bits set and the generation unchanged since I verified" means "the
//! bytes I verified": a hit loads the generation before its bit check and
//! again after its `pread`, and falls back to verification if it moved.
//!
//! A frame that fails verification is invalidated (its bits cleared, the
//! generation bumped) and fetched again; the failure is counted
//! (`rafs_cache_corrupt_total`).

use super::memory::Frame;
use super::{Fetcher, Want};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Fetcher {
    /// A disk cache hit appended to `out`, if the bytes are ready and
    /// verified (now, or earlier at the current generation).
    pub(super) fn read_disk(&self, w: &Want<'_>, out: &mut Vec<u8>) -> bool {
        let c = w.c;
        let blob = c.blob_index.get();
        let Some(cache) = self.disk(blob) else {
            return false;
        };
        let Some(fi) = self.index.blobs[blob as usize].find(c.compressed_offset.get()) else {
            return false;
        };
        let g0 = cache.generation();
        if self.verified_at(blob, fi) == Some(g0) {
            let at = out.len();
            let offset = c.uncompressed_offset.get() + w.from as u64;
            match cache.read_ready_into(offset, w.to - w.from, out) {
                Ok(true) if cache.generation() == g0 => {
                    self.note_hit(blob, fi);
                    return true;
                }
                // Something was cleared meanwhile: verify again below.
                Ok(true) => out.truncate(at),
                Ok(false) => {
                    self.metrics.cache_misses.inc();
                    return false;
                }
                Err(e) => {
                    tracing::debug!("cache read failed, fetching instead: {e}");
                    self.metrics.cache_misses.inc();
                    return false;
                }
            }
        }
        let Some(frame) = self.load_verified(blob, fi) else {
            self.metrics.cache_misses.inc();
            return false;
        };
        let start = c.batch_offset.get() as usize;
        match frame.data().get(start + w.from..start + w.to) {
            Some(bytes) if frame.verify(c).is_ok() => {
                out.extend_from_slice(bytes);
                self.note_hit(blob, fi);
                true
            }
            _ => false,
        }
    }

    /// Counts a disk hit of frame `fi` and records it for eviction: the local quota's LRU, or the blob manager's (batched).
    fn note_hit(&self, blob: u32, fi: usize) {
        self.metrics.cache_hits.inc();
        if let Some(store) = &self.store {
            store.touch(blob, fi);
        }
        if let Some(r) = &self.remote {
            let f = &self.index.blobs[blob as usize].frames[fi];
            r.used(blob, fi, f.ustart, u64::from(f.ulen));
        }
    }

    /// The generation at which frame `fi` was last verified, if ever.
    fn verified_at(&self, blob: u32, fi: usize) -> Option<u64> {
        let v = self.verified.get(blob as usize)?.get(fi)?;
        v.load(Ordering::Acquire).checked_sub(1)
    }

    /// Frame `key` loaded from the cache file where the committer has
    /// written it but not yet set its bits (see `store::seal`), or `None`
    /// if it is not staged (any more), or something was cleared while it
    /// was read (the generation moved: a staged frame is never evicted,
    /// but it may be sealed and evicted meanwhile), or a member fails its
    /// digest. Then the read fetches it instead.
    pub(super) fn load_staged(&self, key: &super::memory::Key) -> Option<Arc<Frame>> {
        let (store, cache) = (self.store.as_ref()?, self.disk(key.0)?);
        let bf = self.index.blobs.get(key.0 as usize)?;
        let fi = bf.find(key.1)?;
        let f = bf.frames.get(fi)?;
        let g0 = cache.generation();
        if !store.is_staged(key) {
            return None;
        }
        let data = cache.data().read_at(f.ustart, f.ulen as usize).ok()?;
        if cache.generation() != g0 {
            return None;
        }
        let frame = Arc::new(Frame::new(data));
        if !self.members_verify(key.0, fi, &frame)? {
            return None; // torn by an eviction after all: fetched instead
        }
        self.metrics.cache_staged_reads.inc();
        Some(frame)
    }

    /// Whether every member chunk of frame `fi` of `blob` in `frame`
    /// matches its digest; `None` if the bootstrap cannot be read.
    fn members_verify(&self, blob: u32, fi: usize, frame: &Frame) -> Option<bool> {
        let b = self.image.bootstrap().ok()?;
        let chunks = b.chunks();
        let members = self.index.blobs.get(blob as usize)?.members_of(fi);
        Some(members.iter().all(|&m| {
            chunks
                .get(m as usize)
                .is_some_and(|c| frame.verify(c).is_ok())
        }))
    }

    /// Frame `fi` read whole from the disk cache and verified (every
    /// member chunk against its digest), or `None` if it is not ready, was
    /// changed while being read, or failed (then it is invalidated, to be
    /// fetched again).
    pub(super) fn load_verified(&self, blob: u32, fi: usize) -> Option<Arc<Frame>> {
        let cache = self.disk(blob)?;
        let bf = &self.index.blobs[blob as usize];
        let f = bf.frames.get(fi)?;
        let g0 = cache.generation();
        let cover = f.cover(cache.data().size());
        if !super::store::ready(cache, &cover) {
            return None;
        }
        let data = cache.data().read_at(f.ustart, f.ulen as usize).ok()?;
        if !super::store::ready(cache, &cover) || cache.generation() != g0 {
            return None; // evicted or rewritten while read: a miss
        }
        let frame = Arc::new(Frame::new(data));
        if !self.members_verify(blob, fi, &frame)? {
            self.metrics.cache_corrupt.inc();
            tracing::warn!(
                blob = %self.blob_ids[blob as usize],
                offset = f.ustart,
                "disk cache frame failed verification: invalidated, fetching it again"
            );
            // A read-only cache (the blob manager's) is not ours to
            // invalidate: the caller asks the manager again instead.
            let ranges = cache.ranges_touching(cover.start, cover.end - cover.start);
            if cache.is_read_only() {
                return None;
            }
            if let Err(e) = cache.invalidate(ranges) {
                tracing::warn!("invalidating a bad cache frame: {e}");
            }
            return None;
        }
        self.metrics.cache_verified.inc();
        if let Some(v) = self.verified.get(blob as usize).and_then(|v| v.get(fi)) {
            v.store(g0.wrapping_add(1), Ordering::Release);
        }
        Some(frame)
    }
}
