//! Per-blob frame index: which stored frames (plain chunks and batch frames)
//! the image references, where each lies in the blob's compressed and
//! uncompressed spaces, and which chunk entries are its members.
//!
//! Built once per mount from the chunk table (O(n log n)); the fetcher uses
//! it to coalesce adjacent frames into one range request, to verify every
//! member of a frame before the frame is cached on disk, and to know the
//! cache ranges a frame owns. A blob whose frames are not `ALIGNED`, or
//! whose frames overlap in the uncompressed space (only a hostile bootstrap
//! does that), gets no disk cache: a cached range must belong to exactly
//! one frame.

use rafs_format::layout::{ChunkInfo, BLOB_ALIGNED, BLOB_FRAME_ALIGN};
use rafs_format::Bootstrap;
use std::ops::Range;

/// One stored frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameInfo {
    /// Offset of the stored bytes in the blob.
    pub coff: u64,
    /// Length of the stored bytes.
    pub clen: u32,
    /// Start in the blob's uncompressed space.
    pub ustart: u64,
    /// Decompressed length.
    pub ulen: u32,
    /// A chunk-table index of one member (for decoding: flags and sizes).
    pub rep: u64,
    /// This frame's members in [`BlobFrames::members`].
    pub members: Range<usize>,
}

impl FrameInfo {
    /// End of the stored bytes.
    pub fn cend(&self) -> u64 {
        self.coff + u64::from(self.clen)
    }

    /// The uncompressed span this frame owns in the cache: its data and,
    /// in an `ALIGNED` blob, the padding up to the next 4 KiB boundary
    /// (capped at the blob's end).
    pub fn cover(&self, blob_usize: u64) -> Range<u64> {
        let end = self.ustart + u64::from(self.ulen);
        self.ustart..end.next_multiple_of(BLOB_FRAME_ALIGN).min(blob_usize)
    }
}

/// The frames of one blob, sorted by compressed offset.
#[derive(Debug, Default)]
pub struct BlobFrames {
    /// Frames by `coff`.
    pub frames: Vec<FrameInfo>,
    /// Chunk-table indices of members, distinct by (batch offset, size,
    /// digest) within each frame.
    pub members: Vec<u64>,
    /// Whether the disk cache may hold this blob (ALIGNED, no overlaps).
    pub cacheable: bool,
}

impl BlobFrames {
    /// The frame whose stored bytes start at `coff`.
    pub fn find(&self, coff: u64) -> Option<usize> {
        self.frames.binary_search_by_key(&coff, |f| f.coff).ok()
    }

    /// Members of frame `i`.
    pub fn members_of(&self, i: usize) -> &[u64] {
        self.frames
            .get(i)
            .and_then(|f| self.members.get(f.members.clone()))
            .unwrap_or(&[])
    }
}

/// Frames of every blob of an image, by blob index.
#[derive(Debug, Default)]
pub struct FrameIndex {
    /// One entry per blob-table entry.
    pub blobs: Vec<BlobFrames>,
}

fn frame_start(c: &ChunkInfo) -> u64 {
    c.uncompressed_offset
        .get()
        .saturating_sub(u64::from(c.batch_offset.get()))
}

impl FrameIndex {
    /// Indexes every non-hole chunk of a validated bootstrap.
    pub fn build(b: &Bootstrap<'_>) -> FrameIndex {
        let chunks = b.chunks();
        let nblobs = b.blobs().len();
        let mut keyed: Vec<(u32, u64, u64)> = chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_hole() && (c.blob_index.get() as usize) < nblobs)
            .map(|(i, c)| (c.blob_index.get(), c.compressed_offset.get(), i as u64))
            .collect();
        keyed.sort_unstable();
        let mut blobs: Vec<BlobFrames> = (0..nblobs).map(|_| BlobFrames::default()).collect();
        let mut seen: Vec<(u32, u32, [u8; 32])> = Vec::new();
        let mut odd = vec![false; nblobs];
        for (blob, coff, idx) in keyed {
            let c = &chunks[idx as usize];
            let bf = &mut blobs[blob as usize];
            let new_frame = bf.frames.last().is_none_or(|f| f.coff != coff);
            if new_frame {
                let at = bf.members.len();
                bf.frames.push(FrameInfo {
                    coff,
                    clen: c.compressed_size.get(),
                    ustart: frame_start(c),
                    ulen: c.frame_size(),
                    rep: idx,
                    members: at..at,
                });
                seen.clear();
            } else if let Some(f) = bf.frames.last() {
                let r = &chunks[f.rep as usize];
                odd[blob as usize] |= frame_start(c) != f.ustart
                    || c.frame_size() != f.ulen
                    || c.compressed_size.get() != f.clen
                    || c.flags.get() != r.flags.get();
            }
            let key = (c.batch_offset.get(), c.uncompressed_size.get(), c.digest);
            if !seen.contains(&key) {
                seen.push(key);
                bf.members.push(idx);
                if let Some(f) = bf.frames.last_mut() {
                    f.members.end = bf.members.len();
                }
            }
        }
        for (i, bf) in blobs.iter_mut().enumerate() {
            bf.cacheable = b.blobs()[i].flags.get() & BLOB_ALIGNED != 0 && !odd[i] && disjoint(bf);
        }
        FrameIndex { blobs }
    }
}

/// No two frames overlap in the uncompressed space.
fn disjoint(bf: &BlobFrames) -> bool {
    let mut spans: Vec<(u64, u64)> = bf
        .frames
        .iter()
        .map(|f| (f.ustart, f.ustart + u64::from(f.ulen)))
        .collect();
    spans.sort_unstable();
    spans.windows(2).all(|w| w[0].1 <= w[1].0)
}
