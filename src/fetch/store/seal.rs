//! The sealer: the second half of the committer. The writer (`Store::run`)
//! `pwrite`s fetched frames and frees their memory at once; this thread
//! makes them durable and ready afterwards, all that is staged at a time:
//! one `fdatasync` per blob, then the bits (the crash rule of
//! `docs/FORMAT.md`), then the verified-frames memo, the quota and the
//! frames' span locks.
//!
//! Between the two a frame is *staged*: its bytes are in the cache file
//! (this process's page cache) but its bits are clear. Readers load it
//! from the file (`Fetcher::load_staged`, verified like any frame) instead
//! of fetching it again; nobody else may write its span meanwhile (the
//! span lock is held until the bits are set), and eviction only touches
//! frames in the quota, which a frame enters when sealed.

use super::{Key, Store};
use crate::cache::blobfile::SpanLock;
use crate::cache::Staged;
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

/// Frames written and not yet sealed.
#[derive(Default)]
pub(super) struct Staging {
    /// How many times each frame is staged (a frame fetched twice may be
    /// written twice before either write is sealed).
    frames: HashMap<Key, u32>,
    /// Their decompressed bytes (dirty page cache, not memory of ours).
    bytes: u64,
}

/// One staged batch of a blob, for the sealer.
pub(super) struct Seal {
    pub blob: u32,
    pub staged: Staged,
    /// The frames written: key, frame index, cover length, data length.
    pub frames: Vec<StagedFrame>,
    /// The frames' cross-process claims: held until the bits are set, and
    /// released when the seal is dropped.
    pub _locks: Vec<SpanLock>,
}

/// A staged frame: key, frame index, cover length, data length.
pub(super) type StagedFrame = (Key, usize, u64, u64);

impl Store {
    fn lock_staging(&self) -> std::sync::MutexGuard<'_, Staging> {
        self.staging.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `frames` as staged, once the sealer is less than
    /// `staged_limit` bytes behind (or has nothing): a slow `fdatasync`
    /// paces the writer, so `pending` fills and the backlog's rules apply.
    pub(super) fn note_staged(&self, frames: &[StagedFrame]) {
        let mut s = self.lock_staging();
        while s.bytes > self.staged_limit && !s.frames.is_empty() {
            s = self.sealed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        for &(key, _, _, len) in frames {
            *s.frames.entry(key).or_default() += 1;
            s.bytes += len;
        }
        self.metrics.cache_staged_bytes.set(s.bytes);
    }

    /// Forgets the frames of `seal` (sealed, or failed).
    pub(super) fn unstage(&self, seal: &Seal) {
        let mut s = self.lock_staging();
        for &(key, _, _, len) in &seal.frames {
            if let Some(n) = s.frames.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    s.frames.remove(&key);
                }
            }
            s.bytes = s.bytes.saturating_sub(len);
        }
        self.metrics.cache_staged_bytes.set(s.bytes);
        self.sealed.notify_all();
    }

    /// Whether frame `key` is written and not yet sealed.
    pub fn is_staged(&self, key: &Key) -> bool {
        self.lock_staging().frames.contains_key(key)
    }

    pub(super) fn staged_count(&self) -> usize {
        self.lock_staging().frames.len()
    }

    /// The sealer thread: seals whatever the writer has staged, until the
    /// writer is gone and everything is sealed.
    pub(super) fn seal_run(&self, rx: Receiver<Seal>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let mut by_blob: HashMap<u32, Vec<Seal>> = HashMap::new();
            for s in batch {
                by_blob.entry(s.blob).or_default().push(s);
            }
            for (blob, seals) in by_blob {
                self.seal_blob(blob, seals);
            }
        }
    }

    /// One `fdatasync` for `seals` (all of `blob`), the bits and the memo;
    /// then the frames leave `staged` and their locks go; then the quota
    /// (which may evict): a frame is never evicted while staged.
    fn seal_blob(&self, blob: u32, seals: Vec<Seal>) {
        let added = match self.caches.get(blob as usize) {
            Some(Some(cache)) => self.seal_in(cache, blob, &seals),
            _ => Vec::new(),
        };
        for s in &seals {
            self.unstage(s);
        }
        drop(seals);
        self.account(added);
    }

    /// Seals `seals` in `cache`: the frames made ready, for the quota.
    fn seal_in(
        &self,
        cache: &crate::cache::BlobCache,
        blob: u32,
        seals: &[Seal],
    ) -> Vec<(Key, (u32, usize, u64))> {
        let staged: Vec<&Staged> = seals.iter().map(|s| &s.staged).collect();
        if let Err(e) = cache.seal(&staged) {
            self.write_failed(&e);
            return Vec::new();
        }
        // What this process wrote it had verified (a commit carries a
        // fully verified frame): its disk hits need no second check while
        // the generation holds (see `super::verify`).
        let memo = self.memo.get(blob as usize);
        let mut added = Vec::new();
        for s in seals {
            for &(key, fi, cover, _) in &s.frames {
                if let Some(v) = memo.and_then(|m| m.get(fi)) {
                    v.store(s.staged.generation.wrapping_add(1), Ordering::Release);
                }
                if let Some(memory) = &self.memory {
                    memory.remove(&key);
                }
                added.push((key, (blob, fi, cover)));
            }
        }
        added
    }
}
