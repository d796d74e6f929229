//! The disk side of the fetcher: one [`BlobCache`] per cacheable blob, a
//! committer that writes fetched frames in batches (a writer thread that
//! `pwrite`s them, and the sealer of [`seal`]: one `fdatasync` per blob,
//! then the bits, the crash rule of `docs/FORMAT.md`), and the
//! `--cache-size` quota with LRU eviction at frame granularity.
//!
//! Frames waiting for the writer stay readable from memory (`pending`),
//! written ones waiting for the sealer from the file, so a reader never
//! waits on the disk. If a write fails (ENOSPC, EIO), the
//! frame is simply not cached: reads keep being served from memory and the
//! backend, the condition is logged once per kind and counted.
//!
//! Eviction clears bits before punching (see `BlobCache::punch`); a reader
//! in the middle of a `pread` re-checks the bits afterwards and refetches,
//! so an eviction never breaks a read in progress.

use super::index::FrameIndex;
use super::memory::{ChunkCache, Frame, Key};
use super::metrics::FetchMetrics;
use crate::backend::BlobId;
use crate::cache::io::Storage;
use crate::cache::{BlobCache, CacheError, Fill, MapParams, Opened, DEFAULT_GRANULARITY};
use crossbeam_channel::{unbounded, Receiver, Sender};
use rafs_format::layout::BlobInfo;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

mod seal;

/// Per blob, per frame: 0 if never verified in this process, else the
/// map generation at which it was, plus one.
pub type Verified = Vec<Vec<AtomicU64>>;

/// The memo table for `frames[b]` frames per blob.
pub fn memo(frames: impl Iterator<Item = usize>) -> Verified {
    frames
        .map(|n| (0..n).map(|_| AtomicU64::new(0)).collect())
        .collect()
}

/// Frames a batch may hold before it is written.
const BATCH: usize = 32;
/// Frames fetched and waiting for the committer, with their bytes.
#[derive(Default)]
struct Pending {
    frames: HashMap<Key, Arc<Frame>>,
    bytes: u64,
    /// Bytes promised to frames being decoded ([`Room`]): counted against
    /// the backlog's limits as if already held.
    reserved: u64,
}

/// Room in the backlog reserved for a frame about to be decoded
/// ([`Store::reserve`]): workers that decode at once cannot all see the
/// same room free. Released when dropped, or taken over by
/// [`Store::hold_reserved`].
pub struct Room<'a> {
    store: &'a Store,
    bytes: u64,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut p = self.store.lock_pending();
            p.reserved -= self.bytes;
            self.store.room.notify_all();
        }
    }
}

/// A fetched, fully verified frame to write.
pub struct Commit {
    /// Blob index.
    pub blob: u32,
    /// Frame index in the blob's [`super::index::BlobFrames`].
    pub frame: usize,
    /// Its bytes.
    pub data: Arc<Frame>,
    /// The cross-process claim on its span, released (dropped) after the
    /// bits are set.
    pub lock: Option<crate::cache::blobfile::SpanLock>,
}

/// The `--cache-size` quota: bytes of frames on disk. Which frames those
/// are, and when each was last used, lives in `Store::stamps` (no lock).
struct Quota {
    limit: Option<u64>,
    usage: u64,
}

/// Disk cache state shared by readers, fetch workers and the committer.
pub struct Store {
    /// Per blob index; `None` for blobs without a disk cache.
    pub caches: Vec<Option<BlobCache>>,
    index: Arc<FrameIndex>,
    pending: Mutex<Pending>,
    /// Bytes `pending` may hold at most (`FetchConfig::commit_backlog`).
    backlog: u64,
    /// Signalled when `pending` shrinks (room in the backlog).
    room: std::sync::Condvar,
    /// When the committer last showed progress (a frame written, or the
    /// backlog starting from empty), in ms since `epoch`: tells a busy
    /// disk, worth waiting for, from a stalled one.
    progress: AtomicU64,
    epoch: std::time::Instant,
    quota: Mutex<Quota>,
    /// `--cache-size` (also in `quota`; here to skip the stamps on hits).
    limit: Option<u64>,
    /// Per blob, per frame: 0 if the frame is not counted in the quota,
    /// else the tick of its last use (an LRU clock a hit updates with one
    /// atomic store, no lock). Only the committer adds or removes frames.
    stamps: Vec<Vec<AtomicU64>>,
    /// The LRU clock.
    clock: AtomicU64,
    metrics: Arc<FetchMetrics>,
    logged: [AtomicBool; 2],
    /// The fetcher's memo of verified disk frames (`super::verify`),
    /// filled in for the frames the committer writes.
    memo: Arc<Verified>,
    /// The fetcher's frame LRU: a frame the committer wrote leaves it (the
    /// disk serves it from then on; memory keeps what the disk lacks).
    memory: Option<Arc<ChunkCache>>,
    /// Frames written and not yet sealed (`seal`).
    staging: Mutex<seal::Staging>,
    /// Signalled when frames leave `staging`.
    sealed: std::sync::Condvar,
    /// Staged bytes past which the writer waits for the sealer.
    staged_limit: u64,
}

/// The sealer may fall behind the writer by this many backlogs: written
/// bytes cost page cache, not memory, so it is larger than the backlog,
/// yet a stuck `fdatasync` still stops the writer, and with it the
/// backlog (the committer's stall rules).
const STAGED_BACKLOGS: u64 = 4;

/// The layout identity of a blob's cache: a digest of what the blob-table
/// entry says about the blob's two address spaces (sizes, flags,
/// compressor). Every image that references the blob honestly has the same
/// entry; an image that claims the same id with another entry gets
/// [`CacheError::LayoutConflict`] and no disk cache for it.
pub fn layout_of(b: &BlobInfo) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"rafs cache layout v1");
    h.update(&b.id);
    h.update(&b.compressed_size.get().to_le_bytes());
    h.update(&b.uncompressed_size.get().to_le_bytes());
    h.update(&b.flags.get().to_le_bytes());
    h.update(&b.compressor.get().to_le_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// Opens the cache of every cacheable blob in `dir`, durable operations
/// going through `storage`. A blob whose cache cannot be opened, or is held
/// there with another layout, is served without one (logged and counted);
/// only a missing or unusable directory is an error.
pub fn open_caches(
    dir: &Path,
    blobs: &[BlobInfo],
    index: &FrameIndex,
    storage: Arc<dyn Storage>,
    metrics: &FetchMetrics,
) -> Result<Vec<Option<BlobCache>>, CacheError> {
    crate::cache::create_dir(dir)?;
    let mut out = Vec::with_capacity(blobs.len());
    for (i, blob) in blobs.iter().enumerate() {
        let id = BlobId(blob.id);
        if !index.blobs.get(i).is_some_and(|b| b.cacheable) {
            tracing::info!(blob = %id, "blob not ALIGNED (or inconsistent): served without the disk cache");
            out.push(None);
            continue;
        }
        let params = MapParams::new(id, blob.uncompressed_size.get(), DEFAULT_GRANULARITY)?
            .with_layout(layout_of(blob));
        match BlobCache::open_with(dir, params, storage.clone()) {
            Ok((c, Opened::Reset { reason })) => {
                tracing::warn!(blob = %id, ?reason, "cache bitmap reset");
                out.push(Some(c));
            }
            Ok((c, _)) => out.push(Some(c)),
            Err(e @ CacheError::LayoutConflict { .. }) => {
                metrics.cache_conflicts.inc();
                tracing::warn!(blob = %id, "served without the disk cache: {e}");
                out.push(None);
            }
            Err(e) => {
                tracing::warn!(blob = %id, "disk cache unavailable for this blob: {e}");
                out.push(None);
            }
        }
    }
    Ok(out)
}

impl Store {
    /// A store over opened caches; accounts the frames already ready (from
    /// an earlier run) in the quota, in index order.
    pub fn new(
        caches: Vec<Option<BlobCache>>,
        index: Arc<FrameIndex>,
        limit: Option<u64>,
        backlog: u64,
        metrics: Arc<FetchMetrics>,
    ) -> Store {
        let mut quota = Quota { limit, usage: 0 };
        let mut tick = 0;
        let mut stamps = Vec::with_capacity(index.blobs.len());
        for (b, bf) in index.blobs.iter().enumerate() {
            let cache = caches.get(b).and_then(Option::as_ref);
            let mut v = Vec::with_capacity(if cache.is_some() { bf.frames.len() } else { 0 });
            for f in bf.frames.iter().take(v.capacity()) {
                let Some(cache) = cache else { break };
                let cover = f.cover(cache.data().size());
                let mut stamp = 0;
                if ready(cache, &cover) {
                    quota.usage += cover.end - cover.start;
                    tick += 1;
                    stamp = tick;
                }
                v.push(AtomicU64::new(stamp));
            }
            stamps.push(v);
        }
        metrics.cache_limit.set(limit.unwrap_or(0));
        metrics.cache_usage.set(quota.usage);
        Store {
            caches,
            index,
            pending: Mutex::default(),
            backlog,
            room: std::sync::Condvar::new(),
            progress: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            quota: Mutex::new(quota),
            limit,
            stamps,
            clock: AtomicU64::new(tick),
            metrics,
            logged: [AtomicBool::new(false), AtomicBool::new(false)],
            memo: Arc::default(),
            memory: None,
            staging: Mutex::default(),
            sealed: std::sync::Condvar::new(),
            staged_limit: backlog.saturating_mul(STAGED_BACKLOGS),
        }
    }

    /// Shares the fetcher's frame LRU with the committer.
    pub fn with_memory(mut self, memory: Arc<ChunkCache>) -> Store {
        self.memory = Some(memory);
        self
    }

    /// Shares the fetcher's verified-frames memo with the committer.
    pub fn with_memo(mut self, memo: Arc<Verified>) -> Store {
        self.memo = memo;
        self
    }

    /// Starts the committer thread; frames sent to the returned channel
    /// are written in batches. The thread ends when every sender is gone.
    pub fn start(self: &Arc<Store>) -> std::io::Result<Sender<Commit>> {
        let (tx, rx) = unbounded();
        let (seal_tx, seal_rx) = unbounded();
        let store = self.clone();
        std::thread::Builder::new()
            .name("rafs-seal".into())
            .spawn(move || store.seal_run(seal_rx))?;
        let store = self.clone();
        std::thread::Builder::new()
            .name("rafs-commit".into())
            .spawn(move || store.run(rx, seal_tx))?;
        Ok(tx)
    }

    /// A frame fetched but not yet on disk.
    pub fn pending(&self, key: &Key) -> Option<Arc<Frame>> {
        self.lock_pending().frames.get(key).cloned()
    }

    /// Whether frame `key` is with the committer: in memory waiting to be
    /// written, or written and waiting to be sealed. Either way it needs
    /// no fetch.
    pub fn holds(&self, key: &Key) -> bool {
        self.lock_pending().frames.contains_key(key) || self.is_staged(key)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `frame` in memory until the committer has written it, if the
    /// backlog has room for it (or is empty), waiting up to `wait` for
    /// room. The backlog bounds the memory a slow disk can pin.
    pub fn try_hold(&self, key: Key, frame: Arc<Frame>, wait: std::time::Duration) -> bool {
        self.hold_while(key, frame, wait, None, 0, &|| false)
    }

    /// [`Store::try_hold`] (or [`Store::hold_reserved`] with `room`) that
    /// stops waiting as soon as `give_up()` is true: it is checked
    /// whenever the backlog changes and on [`Store::wake`].
    pub fn hold_unless(
        &self,
        key: Key,
        frame: Arc<Frame>,
        wait: std::time::Duration,
        room: Option<Room<'_>>,
        give_up: &dyn Fn() -> bool,
    ) -> bool {
        let credit = room.map_or(0, |mut r| std::mem::take(&mut r.bytes));
        self.hold_while(key, frame, wait, None, credit, give_up)
    }

    /// Wakes every wait for room, to check its `give_up` again.
    pub fn wake(&self) {
        let _pending = self.lock_pending();
        self.room.notify_all();
    }

    /// [`Store::try_hold`] for a frame decoded in `room`: its reservation
    /// becomes the held frame's bytes in one step.
    pub fn hold_reserved(
        &self,
        key: Key,
        frame: Arc<Frame>,
        wait: std::time::Duration,
        mut room: Room<'_>,
    ) -> bool {
        let credit = std::mem::take(&mut room.bytes);
        self.hold_while(key, frame, wait, None, credit, &|| false)
    }

    /// [`Store::try_hold`] that also gives up once the committer has shown
    /// no progress for `stall`: a busy disk is waited for, a stalled one
    /// is not (a reader never depends on it; this only paces the worker).
    pub fn try_hold_unless_stalled(
        &self,
        key: Key,
        frame: Arc<Frame>,
        wait: std::time::Duration,
        stall: std::time::Duration,
    ) -> bool {
        self.hold_while(key, frame, wait, Some(stall), 0, &|| false)
    }

    fn hold_while(
        &self,
        key: Key,
        frame: Arc<Frame>,
        wait: std::time::Duration,
        stall: Option<std::time::Duration>,
        credit: u64,
        give_up: &dyn Fn() -> bool,
    ) -> bool {
        let len = frame.data().len() as u64;
        let room = self.wait_for_room(len, self.backlog, wait, stall, credit, give_up);
        let Some(mut p) = room else {
            return false;
        };
        if p.frames.is_empty() {
            self.progress.store(self.now_ms(), Ordering::Relaxed);
        }
        if let Some(old) = p.frames.insert(key, frame) {
            p.bytes -= old.data().len() as u64;
        }
        p.bytes += len;
        true
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Waits (up to `wait`) until the backlog holds at most `limit - bytes`
    /// bytes, or nothing: a background job asks before it fetches, so that
    /// a disk that is behind slows the prefetch instead of piling fetched
    /// frames up in memory. False if the wait ran out.
    pub fn wait_room(&self, bytes: u64, limit: u64, wait: std::time::Duration) -> bool {
        self.wait_for_room(bytes, limit, wait, None, 0, &|| false)
            .is_some()
    }

    /// [`Store::wait_room`] that also reserves the room it found: `None`
    /// if the wait ran out, or (with `stall`) once the committer has shown
    /// no progress for `stall`.
    pub fn reserve(
        &self,
        bytes: u64,
        limit: u64,
        wait: std::time::Duration,
        stall: Option<std::time::Duration>,
    ) -> Option<Room<'_>> {
        self.reserve_unless(bytes, limit, wait, stall, &|| false)
    }

    /// [`Store::reserve`] that stops waiting (`None`) as soon as
    /// `give_up()` is true: it is checked whenever the backlog changes and
    /// on [`Store::wake`].
    pub fn reserve_unless(
        &self,
        bytes: u64,
        limit: u64,
        wait: std::time::Duration,
        stall: Option<std::time::Duration>,
        give_up: &dyn Fn() -> bool,
    ) -> Option<Room<'_>> {
        let mut p = self.wait_for_room(bytes, limit, wait, stall, 0, give_up)?;
        p.reserved += bytes;
        Some(Room { store: self, bytes })
    }

    /// The backlog, locked, once `bytes` more fit under `limit` (or it is
    /// empty), after giving back `credit` reserved bytes; `None` after
    /// `wait`, once the committer has shown no progress for `stall`, or
    /// once `give_up()` is true (checked under the lock, so a
    /// [`Store::wake`] after its condition changed is never missed).
    fn wait_for_room(
        &self,
        bytes: u64,
        limit: u64,
        wait: std::time::Duration,
        stall: Option<std::time::Duration>,
        credit: u64,
        give_up: &dyn Fn() -> bool,
    ) -> Option<std::sync::MutexGuard<'_, Pending>> {
        let until = std::time::Instant::now() + wait;
        let mut p = self.lock_pending();
        if credit > 0 {
            p.reserved -= credit;
            self.room.notify_all();
        }
        let fits = |p: &Pending| {
            (p.frames.is_empty() && p.reserved == 0) || p.bytes + p.reserved + bytes <= limit
        };
        while !fits(&p) {
            if give_up() {
                return None;
            }
            let mut left = until.checked_duration_since(std::time::Instant::now())?;
            if let Some(stall) = stall {
                let idle = self
                    .now_ms()
                    .saturating_sub(self.progress.load(Ordering::Relaxed));
                // No progress for `stall`: the disk is stuck.
                let grace = stall.checked_sub(std::time::Duration::from_millis(idle))?;
                left = left.min(grace.max(std::time::Duration::from_millis(1)));
            }
            p = self
                .room
                .wait_timeout(p, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Some(p)
    }

    /// Forgets a held frame (written, or not to be written after all).
    pub fn release(&self, key: &Key) {
        let mut p = self.lock_pending();
        if let Some(old) = p.frames.remove(key) {
            p.bytes -= old.data().len() as u64;
            self.progress.store(self.now_ms(), Ordering::Relaxed);
            self.room.notify_all();
        }
    }

    /// Bytes the quota still allows (`None`: no limit).
    pub fn room(&self) -> Option<u64> {
        let q = self.quota.lock().unwrap_or_else(PoisonError::into_inner);
        q.limit.map(|l| l.saturating_sub(q.usage))
    }

    /// Whether frames are still waiting for the committer: to be written,
    /// or written and not yet made ready.
    pub fn busy(&self) -> bool {
        !self.lock_pending().frames.is_empty() || self.staged_count() > 0
    }

    /// Marks frame `fi` of `blob` as just used (quota LRU): one atomic
    /// store, no lock; nothing without a quota.
    pub fn touch(&self, blob: u32, fi: usize) {
        if self.limit.is_none() {
            return; // no quota, no eviction order to keep
        }
        let Some(stamp) = self.stamps.get(blob as usize).and_then(|v| v.get(fi)) else {
            return;
        };
        let old = stamp.load(Ordering::Relaxed);
        if old != 0 {
            let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
            // Lost to an eviction (0) or a newer touch: either is fine.
            let _ = stamp.compare_exchange(old, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The writer: takes frames in batches, `pwrite`s each blob's
    /// ([`BlobCache::stage`]), moves them from `pending` to `staged`
    /// (memory freed: readers find them in the file from then on) and
    /// hands them to the sealer. It never waits for an `fdatasync`, only
    /// for the sealer to fall less than `staged_limit` bytes behind.
    fn run(&self, rx: Receiver<Commit>, seals: Sender<seal::Seal>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut by_blob: HashMap<u32, Vec<Commit>> = HashMap::new();
            for c in batch {
                by_blob.entry(c.blob).or_default().push(c);
            }
            for (blob, commits) in by_blob {
                let keys: Vec<Key> = commits.iter().filter_map(|c| self.key_of(c)).collect();
                let staged = self.stage(blob, commits);
                for key in &keys {
                    self.release(key);
                }
                if let Some(s) = staged {
                    if let Err(e) = seals.send(s) {
                        // The sealer is gone (it panicked): not cached.
                        self.unstage(&e.0);
                    }
                }
            }
        }
    }

    fn key_of(&self, c: &Commit) -> Option<Key> {
        let f = self.index.blobs.get(c.blob as usize)?.frames.get(c.frame)?;
        Some((c.blob, f.coff))
    }

    /// Writes one blob's frames ([`BlobCache::stage`]) and records the
    /// ones written as staged, before the caller releases them from
    /// `pending`: a reader finds every frame in one or the other.
    fn stage(&self, blob: u32, commits: Vec<Commit>) -> Option<seal::Seal> {
        let Some(Some(cache)) = self.caches.get(blob as usize) else {
            return None;
        };
        let frames = &self.index.blobs[blob as usize].frames;
        let size = cache.data().size();
        let mut fills = Vec::with_capacity(commits.len());
        let mut added = Vec::with_capacity(commits.len());
        for c in &commits {
            let Some(f) = frames.get(c.frame) else {
                continue;
            };
            let cover = f.cover(size);
            fills.push(Fill {
                offset: f.ustart,
                bytes: c.data.data(),
                cover_end: cover.end,
            });
            let len = c.data.data().len() as u64;
            added.push(((blob, f.coff), c.frame, cover.end - cover.start, len));
        }
        let staged = match cache.stage(&fills) {
            Ok(staged) => staged,
            Err(e) => {
                self.write_failed(&e);
                return None;
            }
        };
        let frames: Vec<_> = staged
            .written
            .iter()
            .filter_map(|&i| added.get(i).copied())
            .collect();
        self.note_staged(&frames);
        let locks = commits.into_iter().filter_map(|c| c.lock).collect();
        Some(seal::Seal {
            blob,
            staged,
            frames,
            _locks: locks,
        })
    }

    fn write_failed(&self, e: &CacheError) {
        let enospc = matches!(e, CacheError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC));
        let kind = if enospc { "enospc" } else { "io" };
        self.metrics.write_error(kind);
        if !self.logged[usize::from(enospc)].swap(true, Ordering::Relaxed) {
            tracing::error!(
                "disk cache write failed ({e}); reads are served from memory and the backend \
                 (logged once; see rafs_cache_write_errors_total)"
            );
        }
    }

    /// Counts committed frames in the quota and, past the limit, evicts
    /// the least recently used frames down to 15/16 of it (so the scan
    /// that picks them is paid once per sixteenth of the quota written).
    /// The quota lock covers only the bookkeeping: the evictions (`msync`,
    /// hole punching) run after it is released.
    fn account(&self, added: Vec<(Key, (u32, usize, u64))>) {
        let victims = {
            let mut q = self.quota.lock().unwrap_or_else(PoisonError::into_inner);
            for (_, (blob, fi, len)) in added {
                let Some(stamp) = self.stamps.get(blob as usize).and_then(|v| v.get(fi)) else {
                    continue;
                };
                let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
                if stamp.swap(now, Ordering::Relaxed) == 0 {
                    q.usage += len;
                }
            }
            let victims = match q.limit {
                Some(limit) if q.usage > limit => self.pick_victims(&mut q, limit - limit / 16),
                _ => Vec::new(),
            };
            self.metrics.cache_usage.set(q.usage);
            victims
        };
        let kept: Vec<_> = victims
            .into_iter()
            .filter(|&(blob, fi, len)| !self.evict(blob, fi, len))
            .collect();
        if !kept.is_empty() {
            self.recount(kept);
        }
    }

    /// Counts again in the quota the victims an eviction left on the disk
    /// (claimed by a fetch, or the punch failed), as just used: otherwise
    /// a frame its claimer finds ready (and so never commits) would stay
    /// on the disk uncounted until the next mount.
    fn recount(&self, kept: Vec<(u32, usize, u64)>) {
        let mut q = self.quota.lock().unwrap_or_else(PoisonError::into_inner);
        for (blob, fi, len) in kept {
            let Some(stamp) = self.stamps.get(blob as usize).and_then(|v| v.get(fi)) else {
                continue;
            };
            let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
            // Committed again meanwhile: already counted (the stamp is set).
            if stamp.swap(now, Ordering::Relaxed) == 0 {
                q.usage += len;
            }
        }
        self.metrics.cache_usage.set(q.usage);
    }

    /// The least recently used frames to evict for usage to drop to
    /// `target`; they leave the quota (stamp 0) here.
    fn pick_victims(&self, q: &mut Quota, target: u64) -> Vec<(u32, usize, u64)> {
        let mut all: Vec<(u64, u32, usize)> = Vec::new();
        for (b, v) in self.stamps.iter().enumerate() {
            for (fi, s) in v.iter().enumerate() {
                let t = s.load(Ordering::Relaxed);
                if t != 0 {
                    all.push((t, b as u32, fi));
                }
            }
        }
        all.sort_unstable();
        let mut out = Vec::new();
        for (_, blob, fi) in all {
            if q.usage <= target {
                break;
            }
            let Some(len) = self.cover_len(blob, fi) else {
                continue;
            };
            self.stamps[blob as usize][fi].store(0, Ordering::Relaxed);
            q.usage = q.usage.saturating_sub(len);
            out.push((blob, fi, len));
        }
        out
    }

    fn cover_len(&self, blob: u32, fi: usize) -> Option<u64> {
        let cache = self.caches.get(blob as usize)?.as_ref()?;
        let f = self.index.blobs.get(blob as usize)?.frames.get(fi)?;
        let cover = f.cover(cache.data().size());
        Some(cover.end - cover.start)
    }

    /// Punches frame `frame` of `blob` out of the disk cache; false if it
    /// is left there (claimed, or the punch failed).
    fn evict(&self, blob: u32, frame: usize, len: u64) -> bool {
        let Some(Some(cache)) = self.caches.get(blob as usize) else {
            return true;
        };
        let Some(f) = self.index.blobs[blob as usize].frames.get(frame) else {
            return true;
        };
        let cover = f.cover(cache.data().size());
        let len_cover = cover.end - cover.start;
        // A frame some fetch (here or in another process) has claimed may
        // be written at any moment until its bits are set: punched after
        // that write, it would leave set bits over a hole, read as zeros.
        // So only a frame nobody claims is evicted, and its span is held
        // through the punch (a fetch claiming it then waits, and finds it
        // gone). A claimed one stays, counted again ([`Store::recount`]).
        let span = cache.data().try_lock_span_apart(cover.start, len_cover);
        let Ok(Some(_span)) = span else {
            return false;
        };
        let ranges = cache.ranges_touching(cover.start, len_cover);
        match cache.punch(ranges) {
            Ok(()) => {
                self.metrics.evictions.inc();
                self.metrics.evicted_bytes.inc_by(len);
                true
            }
            Err(e) => {
                tracing::warn!(blob, "eviction failed: {e}");
                false
            }
        }
    }
}

/// Whether every range of `cover` is ready.
pub fn ready(cache: &BlobCache, cover: &std::ops::Range<u64>) -> bool {
    let ranges = cache.ranges_touching(cover.start, cover.end - cover.start);
    cache.bitmap().all_ready(ranges).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn frame(n: usize) -> Arc<Frame> {
        Arc::new(Frame::new(vec![7; n]))
    }

    #[test]
    fn the_backlog_refuses_past_its_bytes_and_waits_for_room_when_asked() {
        let store = Store::new(Vec::new(), Arc::default(), None, 1000, Arc::default());
        assert!(store.try_hold((0, 0), frame(600), Duration::ZERO));
        // Past the budget: refused at once, or after the wait.
        assert!(!store.try_hold((0, 1), frame(600), Duration::ZERO));
        let t0 = Instant::now();
        assert!(!store.try_hold((0, 1), frame(600), Duration::from_millis(50)));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // A frame written (released) makes room for a waiter (whether it
        // is already waiting or comes after).
        std::thread::scope(|s| {
            let waiter = s.spawn(|| store.try_hold((0, 1), frame(600), Duration::from_secs(20)));
            store.release(&(0, 0));
            assert!(waiter.join().unwrap(), "the waiter got the room");
        });
        assert!(store.pending(&(0, 1)).is_some());
        assert!(store.pending(&(0, 0)).is_none());
        // One frame larger than the whole budget still goes when alone.
        store.release(&(0, 1));
        assert!(store.try_hold((0, 2), frame(5000), Duration::ZERO));
    }

    #[test]
    fn reserved_room_counts_as_held_until_its_frame_is_held_or_it_is_dropped() {
        let store = Store::new(Vec::new(), Arc::default(), None, 1000, Arc::default());
        let a = store
            .reserve(400, 500, Duration::ZERO, None)
            .expect("empty backlog");
        // Two decoders cannot both see the same room free.
        assert!(store.reserve(400, 500, Duration::ZERO, None).is_none());
        assert!(!store.try_hold((0, 9), frame(700), Duration::ZERO));
        // Holding the frame turns the reservation into its bytes, once.
        assert!(store.hold_reserved((0, 0), frame(400), Duration::ZERO, a));
        assert!(store.pending(&(0, 0)).is_some());
        assert!(store.reserve(400, 500, Duration::ZERO, None).is_none());
        assert!(store.try_hold((0, 1), frame(600), Duration::ZERO));
        store.release(&(0, 0));
        store.release(&(0, 1));
        // A reservation dropped (its frame failed to decode) frees its room
        // for a waiter.
        let b = store
            .reserve(400, 500, Duration::ZERO, None)
            .expect("empty again");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                store
                    .reserve(400, 500, Duration::from_secs(20), None)
                    .is_some()
            });
            drop(b);
            assert!(waiter.join().unwrap(), "the waiter got the room");
        });
        // Nothing held or reserved: one frame larger than the limit goes.
        assert!(store.reserve(5000, 500, Duration::ZERO, None).is_some());
    }

    #[test]
    fn a_waiter_gives_up_on_a_committer_without_progress_but_not_on_a_busy_one() {
        let store = Store::new(Vec::new(), Arc::default(), None, 1000, Arc::default());
        let (stall, long) = (Duration::from_secs(1), Duration::from_secs(30));
        assert!(store.try_hold((0, 0), frame(600), Duration::ZERO));
        // Nothing written since the backlog started: given up after about
        // `stall`, long before the wait.
        let t0 = Instant::now();
        assert!(!store.try_hold_unless_stalled((0, 1), frame(600), long, stall));
        assert!(t0.elapsed() < Duration::from_secs(10));
        // A committer that keeps writing: waited for, past `stall`.
        store.try_hold((0, 9), frame(1), Duration::ZERO);
        store.release(&(0, 9));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| store.try_hold_unless_stalled((0, 1), frame(600), long, stall));
            // Progress many times a `stall` (other frames come and go)...
            let until = Instant::now() + stall * 3 / 2;
            while Instant::now() < until {
                store.try_hold((0, 2), frame(1), Duration::ZERO);
                std::thread::park_timeout(Duration::from_millis(10));
                store.release(&(0, 2));
            }
            // ...and the room comes after 1.5 `stall`s.
            store.release(&(0, 0));
            assert!(waiter.join().unwrap(), "the waiter got the room");
        });
    }
}
