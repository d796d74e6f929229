//! One open blob of the engine: its cache, the frames clients asked for
//! (checked against each other), and the LRU state of its ready bytes.

use crate::backend::BlobId;
use crate::blobmgr::protocol::{FetchFrame, Member};
use crate::cache::{BlobCache, CacheError};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, PoisonError, RwLock};

/// Uncompressed bytes are cached in 4 KiB-aligned frame covers.
const FRAME_ALIGN: u64 = rafs_format::layout::BLOB_FRAME_ALIGN;

/// A frame some request described, as first described.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    pub(crate) coff: u64,
    pub(crate) clen: u32,
    pub(crate) ulen: u32,
    pub(crate) cover_end: u64,
    /// Its bytes verified once (a fill or a re-check): the description
    /// is then kept for good.
    pub(crate) confirmed: bool,
    /// LRU stamp; 0: not accounted in the quota.
    pub(crate) stamp: u64,
}

/// The frames and old runs of one blob.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Known frames by `ustart`; their covers never overlap.
    pub(crate) frames: BTreeMap<u64, Known>,
    /// `coff` -> `ustart` of the known frames.
    pub(crate) by_coff: HashMap<u64, u64>,
    /// Ready ranges found at open (earlier runs): start range -> (end
    /// range, stamp). Evicted as a whole.
    pub(crate) runs: BTreeMap<u64, (u64, u64)>,
}

/// One blob the engine has open.
pub struct Blob {
    pub(crate) id: BlobId,
    pub(crate) size: u64,
    pub(crate) layout: [u8; 16],
    pub(crate) granularity: u32,
    pub(crate) cache: BlobCache,
    pub(crate) table: Mutex<Table>,
    /// Commits take it shared, eviction exclusive: a hole is never punched
    /// under bits a commit just set.
    pub(crate) io: RwLock<()>,
    /// Client references.
    pub(crate) clients: AtomicUsize,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("id", &self.id.to_hex())
            .field("size", &self.size)
            .finish()
    }
}

/// Why a frame is `Invalid`.
pub(crate) type Invalid = &'static str;

impl Blob {
    pub(crate) fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cache span frame `f` owns.
    pub(crate) fn cover(&self, f: &FetchFrame) -> Range<u64> {
        let end = f.ustart + u64::from(f.ulen);
        f.ustart..end.next_multiple_of(FRAME_ALIGN).min(self.size)
    }

    /// The bitmap ranges of a cover.
    pub(crate) fn ranges(&self, cover: &Range<u64>) -> Range<u64> {
        let g = u64::from(self.granularity);
        cover.start / g..cover.end.div_ceil(g)
    }

    /// Bytes of ranges `r` (the last range may be short).
    pub(crate) fn range_bytes(&self, r: &Range<u64>) -> u64 {
        let g = u64::from(self.granularity);
        (r.end * g).min(self.size).saturating_sub(r.start * g)
    }

    /// Whether every range of `cover` is ready.
    pub(crate) fn ready(&self, cover: &Range<u64>) -> bool {
        self.cache
            .bitmap()
            .all_ready(self.ranges(cover))
            .unwrap_or(false)
    }

    /// Checks `f` alone against the blob (bounds, alignment, members).
    pub(crate) fn check_frame(&self, f: &FetchFrame) -> Result<(), Invalid> {
        if f.ustart % u64::from(self.granularity) != 0 {
            return Err("ustart not aligned to the granularity");
        }
        match f.ustart.checked_add(u64::from(f.ulen)) {
            Some(end) if end <= self.size && f.ulen > 0 => {}
            _ => return Err("frame outside the blob"),
        }
        // A cover ending inside a range could never make it ready.
        let end = self.cover(f).end;
        if end % u64::from(self.granularity) != 0 && end != self.size {
            return Err("cover does not end on a range boundary");
        }
        if f.clen == 0 || f.coff.checked_add(u64::from(f.clen)).is_none() {
            return Err("bad stored span");
        }
        if f.members.is_empty() {
            return Err("no members");
        }
        let mut spans: Vec<(u32, u32)> = Vec::with_capacity(f.members.len());
        for m in &f.members {
            match m.offset.checked_add(m.size) {
                Some(end) if end <= f.ulen && m.size > 0 => spans.push((m.offset, end)),
                _ => return Err("member outside the frame"),
            }
        }
        // Overlapping members could cost a hash of the whole frame each.
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err("overlapping members");
        }
        Ok(())
    }

    /// Records `f` in the known-frames table, or says how it contradicts a
    /// known frame.
    pub(crate) fn note_frame(&self, f: &FetchFrame) -> Result<(), Invalid> {
        let cover = self.cover(f);
        let mut t = self.table();
        if let Some(k) = t.frames.get(&f.ustart) {
            return match (k.coff, k.clen, k.ulen) == (f.coff, f.clen, f.ulen) {
                true => Ok(()),
                false => Err("contradicts a known frame"),
            };
        }
        if t.by_coff.contains_key(&f.coff) {
            return Err("contradicts a known frame");
        }
        let before = t.frames.range(..f.ustart).next_back();
        if before.is_some_and(|(_, k)| k.cover_end > cover.start) {
            return Err("overlaps a known frame");
        }
        if t.frames.range(f.ustart..cover.end).next().is_some() {
            return Err("overlaps a known frame");
        }
        t.frames.insert(
            f.ustart,
            Known {
                coff: f.coff,
                clen: f.clen,
                ulen: f.ulen,
                cover_end: cover.end,
                confirmed: false,
                stamp: 0,
            },
        );
        t.by_coff.insert(f.coff, f.ustart);
        Ok(())
    }

    /// Forgets an unconfirmed frame description (its fetch failed: it may
    /// have been a lie, and must not make honest frames `Invalid`).
    pub(crate) fn forget_unconfirmed(&self, ustart: u64) {
        let mut t = self.table();
        if t.frames.get(&ustart).is_some_and(|k| !k.confirmed) {
            if let Some(k) = t.frames.remove(&ustart) {
                t.by_coff.remove(&k.coff);
            }
        }
    }

    /// Reads frame `f`'s decoded bytes from the data file and checks them
    /// against `members`: `Ok(true)` if they all match.
    pub(crate) fn verify_cached(&self, f: &FetchFrame) -> Result<bool, CacheError> {
        let bytes = self.cache.data().read_at(f.ustart, f.ulen as usize)?;
        Ok(members_match(&bytes, &f.members))
    }
}

/// Whether every member's bytes in `frame` hash to its digest.
pub(crate) fn members_match(frame: &[u8], members: &[Member]) -> bool {
    members.iter().all(|m| {
        let start = m.offset as usize;
        let end = start.saturating_add(m.size as usize);
        frame
            .get(start..end)
            .is_some_and(|b| blake3::hash(b).as_bytes() == &m.digest)
    })
}
