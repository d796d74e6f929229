//! Per-blob frame index: which stored frames (plain chunks and batch frames)
//! the image references, where each lies in the blob's compressed and
//! uncompressed spaces, and which chunk entries are its members.
//!
//! Built once per mount from the chunk table (O(n log n), whatever the
//! bootstrap: no per-frame scans); the fetcher uses it to coalesce adjacent
//! frames into one range request, to verify every member of a frame before
//! the frame is cached on disk, and to know the cache ranges a frame owns.
//! A blob whose frames are not `ALIGNED`, whose frames overlap in the
//! uncompressed space, or whose batch frames have overlapping members
//! (only a hostile bootstrap does either) gets no disk cache: a cached
//! range must belong to exactly one frame, and verifying a frame's members
//! must cost no more than one pass over it.

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
    /// Its distinct members do not overlap in the frame (as in every
    /// honest image), so verifying them all hashes each byte of the frame
    /// at most once. A hostile bootstrap can make thousands of distinct
    /// members each span almost the whole frame.
    pub disjoint: bool,
    /// A batch frame (small files and tails packed together), not one
    /// plain chunk.
    pub batch: bool,
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
    /// digest) within each frame, in batch-offset order.
    pub members: Vec<u64>,
    /// Whether the disk cache may hold this blob (ALIGNED, no frames
    /// overlapping, every frame [`FrameInfo::disjoint`], its entries
    /// agreeing on it).
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

/// What makes two member entries the same member: (batch offset, size,
/// digest).
fn member_key(c: &ChunkInfo) -> (u32, u32, [u8; 32]) {
    (c.batch_offset.get(), c.uncompressed_size.get(), c.digest)
}

impl FrameIndex {
    /// Indexes every non-hole chunk of a validated bootstrap, in
    /// O(n log n): one sort of the chunk table by (blob, stored offset,
    /// member identity), then one pass.
    pub fn build(b: &Bootstrap<'_>) -> FrameIndex {
        let chunks = b.chunks();
        let nblobs = b.blobs().len();
        let mut order: Vec<usize> = (0..chunks.len())
            .filter(|&i| !chunks[i].is_hole() && (chunks[i].blob_index.get() as usize) < nblobs)
            .collect();
        // Within a frame, equal members are adjacent (lowest index first)
        // and distinct ones ascend by batch offset.
        order.sort_unstable_by_key(|&i| {
            let c = &chunks[i];
            let (boff, size, digest) = member_key(c);
            (
                c.blob_index.get(),
                c.compressed_offset.get(),
                boff,
                size,
                digest,
                i,
            )
        });
        let mut blobs: Vec<BlobFrames> = (0..nblobs).map(|_| BlobFrames::default()).collect();
        let mut odd = vec![false; nblobs];
        for group in order.chunk_by(|&x, &y| {
            let (a, c) = (&chunks[x], &chunks[y]);
            (a.blob_index.get(), a.compressed_offset.get())
                == (c.blob_index.get(), c.compressed_offset.get())
        }) {
            let blob = chunks[group[0]].blob_index.get() as usize;
            odd[blob] |= !add_frame(&mut blobs[blob], chunks, group);
        }
        for (i, bf) in blobs.iter_mut().enumerate() {
            bf.cacheable = b.blobs()[i].flags.get() & BLOB_ALIGNED != 0 && !odd[i] && disjoint(bf);
        }
        FrameIndex { blobs }
    }
}

/// Adds the frame whose entries are `group` (chunk-table indices sorted
/// by member identity) to `bf`. False if the frame is inconsistent: its
/// entries disagree on the frame, or its distinct members overlap (an
/// honest batch frame is its members side by side).
fn add_frame(bf: &mut BlobFrames, chunks: &[ChunkInfo], group: &[usize]) -> bool {
    // The representative is the lowest chunk-table index.
    let rep = group.iter().copied().min().unwrap_or(0);
    let r = &chunks[rep];
    let (mut agree, mut disjoint) = (true, true);
    let at = bf.members.len();
    let mut end = 0u64;
    let mut prev: Option<(u32, u32, [u8; 32])> = None;
    for &i in group {
        let c = &chunks[i];
        agree &= frame_start(c) == frame_start(r)
            && c.frame_size() == r.frame_size()
            && c.compressed_size.get() == r.compressed_size.get()
            && c.flags.get() == r.flags.get();
        let key = member_key(c);
        if prev == Some(key) {
            continue;
        }
        prev = Some(key);
        // Sorted by start: disjoint iff each starts after the previous.
        let start = u64::from(key.0);
        disjoint &= start >= end;
        end = start + u64::from(key.1);
        bf.members.push(i as u64);
    }
    bf.frames.push(FrameInfo {
        coff: r.compressed_offset.get(),
        clen: r.compressed_size.get(),
        ustart: frame_start(r),
        ulen: r.frame_size(),
        rep: rep as u64,
        members: at..bf.members.len(),
        disjoint,
        batch: r.is_batch(),
    });
    agree && disjoint
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
