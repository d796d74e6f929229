//! Decompressed frames in memory: [`Frame`] (a plain chunk's data or a
//! whole batch frame, with the members verified so far) and [`ChunkCache`],
//! a byte-bounded LRU of them keyed by (blob index, stored offset).
//!
//! The LRU lets small sequential reads decompress each frame once and lets
//! the files of one batch frame share one fetch; it is also what serves
//! reads when there is no disk cache, or the disk is full.

use crate::chunk::{member, ChunkError};
use lru::LruCache;
use rafs_format::layout::ChunkInfo;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// A decompressed frame: a plain chunk's data, or a whole batch frame.
/// Members are verified against their own digest once, on first use; the
/// offsets of verified members are remembered so later reads of them are a
/// plain copy.
pub struct Frame {
    data: Vec<u8>,
    /// Chunks checked so far: (offset in the frame, length, digest). The
    /// whole identity, not just the offset: a hostile bootstrap may give
    /// two entries the same frame and offset with different lengths.
    verified: Mutex<HashSet<(u32, u32, [u8; 32])>>,
}

impl Frame {
    /// The decompressed bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// A frame of decompressed bytes, nothing verified yet.
    pub fn new(data: Vec<u8>) -> Frame {
        Frame {
            data,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Checks chunk `c` (this frame's data, or a member of it) against
    /// its digest, once.
    pub fn verify(&self, c: &ChunkInfo) -> Result<(), ChunkError> {
        let id = (c.batch_offset.get(), c.uncompressed_size.get(), c.digest);
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if !verified.contains(&id) {
            member(c, &self.data)?;
            verified.insert(id);
        }
        Ok(())
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        crate::util::pool::give(std::mem::take(&mut self.data));
    }
}

/// A verified chunk's data inside a cached frame.
pub struct FrameSlice {
    /// The frame.
    pub frame: Arc<Frame>,
    /// Offset of the chunk in it.
    pub start: usize,
    /// Length of the chunk.
    pub len: usize,
}

impl FrameSlice {
    /// Bytes `range` of the chunk.
    pub fn get(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        self.frame
            .data
            .get(self.start..self.start + self.len)?
            .get(range)
    }
}

/// Cache key: (blob index, offset of the stored frame in the blob).
pub type Key = (u32, u64);

struct Lru {
    map: LruCache<Key, Arc<Frame>>,
    bytes: usize,
}

/// A byte-bounded LRU of decompressed frames.
pub struct ChunkCache {
    inner: Mutex<Lru>,
    budget: usize,
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes (0 disables it).
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Frame>> {
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lru.map.get(key).cloned()
    }

    pub fn put(&self, key: Key, frame: Arc<Frame>) {
        if frame.data.len() > self.budget {
            return;
        }
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lru.bytes += frame.data.len();
        if let Some(old) = lru.map.put(key, frame) {
            lru.bytes -= old.data.len();
        }
        while lru.bytes > self.budget {
            match lru.map.pop_lru() {
                Some((_, old)) => lru.bytes -= old.data.len(),
                None => break,
            }
        }
    }

    /// Whether `key` is held, without touching its recency.
    pub fn contains(&self, key: &Key) -> bool {
        let lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lru.map.contains(key)
    }

    /// Drops `key`.
    pub fn remove(&self, key: &Key) {
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = lru.map.pop(key) {
            lru.bytes -= old.data.len();
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }
}

/// A frame of `len` bytes, for tests of the cache.
#[cfg(test)]
pub fn test_frame(len: usize) -> Arc<Frame> {
    Arc::new(Frame::new(vec![1; len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_cache_stays_within_budget() {
        let cache = ChunkCache::new(10_000);
        for k in 0..10u64 {
            cache.put((0, k), test_frame(4000));
            assert!(cache.bytes() <= 10_000);
        }
        assert_eq!(cache.bytes(), 8000);
        cache.put((0, 99), test_frame(20_000));
        assert_eq!(cache.bytes(), 8000, "entries over budget are not cached");
    }

    fn chunk(data: &[u8], digest_of: &[u8]) -> ChunkInfo {
        ChunkInfo {
            digest: *blake3::hash(digest_of).as_bytes(),
            uncompressed_size: (data.len() as u32).into(),
            compressed_size: (data.len() as u32).into(),
            ..Default::default()
        }
    }

    #[test]
    fn verified_chunk_does_not_vouch_for_a_longer_one_at_its_offset() {
        let frame = Frame::new(b"0123456789abcdefghij".to_vec());
        let short = chunk(&frame.data[..10], &frame.data[..10]);
        assert!(frame.verify(&short).is_ok());
        // Same frame, same offset, longer, with a digest the bytes do not
        // have: a hostile bootstrap. It must not pass on `short`'s check.
        let long = chunk(&frame.data[..20], b"something else entirely");
        assert!(frame.verify(&long).is_err());
        let honest = chunk(&frame.data[..20], &frame.data[..20]);
        assert!(frame.verify(&honest).is_ok());
    }
}
