//! TEMPORARY stand-ins for the cache API of the hardening branch
//! (generation counter, invalidate, bounded span locks); removed at merge.

use super::blobfile::SpanLock;
use super::{BlobCache, CacheError, CacheFile};
use std::ops::Range;
use std::time::Instant;

impl BlobCache {
    /// The map's generation (stand-in: always 0).
    pub fn generation(&self) -> u64 {
        0
    }

    /// Clears `ranges` (stand-in).
    pub fn invalidate(&self, ranges: Range<u64>) -> Result<(), CacheError> {
        for r in ranges.clone() {
            self.bitmap().clear(r)?;
        }
        self.bitmap().flush_ranges(ranges)
    }
}

impl CacheFile {
    /// Non-blocking span lock (stand-in).
    pub fn try_lock_span(&self, start: u64, len: u64) -> Result<Option<SpanLock>, CacheError> {
        self.lock_span(start, len, false)
    }

    /// Span lock with a deadline (stand-in: polls).
    pub fn lock_span_until(
        &self,
        start: u64,
        len: u64,
        deadline: Instant,
    ) -> Result<Option<SpanLock>, CacheError> {
        loop {
            if let Some(l) = self.lock_span(start, len, false)? {
                return Ok(Some(l));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
