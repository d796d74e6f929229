//! Batch frames: small chunks packed into shared zstd frames.
//!
//! A chunk shorter than [`BatchConfig::threshold`] (a small file, or the
//! tail of a larger one) is not compressed alone: the producer appends it
//! to the frame being filled, and sends the frame to a worker once the next
//! chunk would not fit in [`BatchConfig::frame_size`] bytes (or the source
//! ends). Frames are therefore formed on the producer's thread in sequence
//! order, from the data alone, so their contents do not depend on threads
//! or scheduling; their compression runs on the workers like any chunk.
//!
//! Dedup of small chunks is decided here, before a frame is formed: the
//! producer hashes each small chunk, and one whose digest is in the
//! dictionary or already in a frame (this one or an earlier one) becomes an
//! *alias*, resolved by the writer to the earlier location once that frame
//! is stored. Small chunks never equal the large chunks sent alone (their
//! lengths differ), so no frame holds a chunk stored elsewhere in the build.
//! The writer still checks every member (defensively): a member already
//! known is referenced at its earlier location and left as a redundant
//! copy in its frame.
//!
//! Small chunks are sorted into a few content [`Class`]es by their leading
//! bytes, each filling its own frame (ELF objects apart from text, say);
//! chunks that start like a compressed format (gzip, xz, PNG, ...) are not
//! batched at all: they would only dilute a frame, and stored alone they
//! cost a reader no amplification.
//!
//! A worker compresses a frame of two or more members as one zstd frame; a
//! frame with one member, or whose compressed form is not smaller than its
//! data, is stored as individual chunks (zstd, or raw when zstd does not
//! help), as the format requires.

use super::dict::Dict;
use super::error::{BuildError, Result};
use rafs_format::layout::MAX_CHUNK_SIZE;
use std::collections::HashSet;

/// Default decompressed frame size (see docs/chunking.md).
pub const DEFAULT_BATCH_SIZE: &str = "256K";
/// Default threshold: chunks shorter than this are batched.
pub const DEFAULT_BATCH_THRESHOLD: &str = "128K";

/// Batching parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Largest decompressed frame; 0 disables batching.
    pub frame_size: u32,
    /// Chunks shorter than this are batched (at most `frame_size`).
    pub threshold: u32,
    /// zstd level for frames (and members stored alone).
    pub level: i32,
}

impl BatchConfig {
    /// No batching: every chunk is stored alone.
    pub const OFF: BatchConfig = BatchConfig {
        frame_size: 0,
        threshold: 0,
        level: 0,
    };

    /// Checks the sizes against the format's limits.
    pub fn validate(&self) -> Result<()> {
        if self.frame_size > MAX_CHUNK_SIZE {
            return Err(BuildError::BadOptions(format!(
                "--batch-size {} above 16M",
                self.frame_size
            )));
        }
        if self.frame_size > 0 && !(1..=self.frame_size).contains(&self.threshold) {
            return Err(BuildError::BadOptions(format!(
                "--batch-threshold {} outside 1..=--batch-size ({})",
                self.threshold, self.frame_size
            )));
        }
        Ok(())
    }

    /// True if a non-zero chunk of `len` bytes goes into a frame.
    pub fn takes(&self, len: usize) -> bool {
        self.frame_size > 0 && len < self.threshold as usize
    }
}

/// One chunk packed in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The chunk's sequence number.
    pub seq: u64,
    /// blake3 of its data.
    pub digest: [u8; 32],
    /// Offset of its data in the frame.
    pub offset: u32,
    /// Its length.
    pub len: u32,
}

/// A frame as the producer formed it: members' data back to back, plus
/// the aliases (duplicates of earlier chunks) queued behind it.
#[derive(Debug, Default)]
pub struct FrameJob {
    /// Concatenated member data.
    pub data: Vec<u8>,
    /// Members in order.
    pub members: Vec<Member>,
    /// `(seq, digest)` of chunks to resolve to an earlier location.
    pub aliases: Vec<(u64, [u8; 32])>,
}

impl FrameJob {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.aliases.is_empty()
    }
}

/// Content classes with a frame of their own: similar data compresses
/// better together, and already-compressed data only dilutes a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// ELF objects (executables, shared libraries).
    Elf,
    /// Everything else (text, scripts, data).
    Other,
}

/// Leading bytes of common compressed formats: gzip, xz, zstd, bzip2, zip,
/// PNG, JPEG.
const COMPRESSED_MAGIC: [&[u8]; 7] = [
    b"\x1f\x8b",
    b"\xfd7zXZ\0",
    b"\x28\xb5\x2f\xfd",
    b"BZh",
    b"PK\x03\x04",
    b"\x89PNG",
    b"\xff\xd8\xff",
];

/// The frame class of a chunk, from its leading bytes only (a pure
/// function of the data, so frames stay reproducible); `None` for data
/// that looks compressed already, which is stored alone.
pub fn classify(data: &[u8]) -> Option<Class> {
    if COMPRESSED_MAGIC.iter().any(|m| data.starts_with(m)) {
        None
    } else if data.starts_with(b"\x7fELF") {
        Some(Class::Elf)
    } else {
        Some(Class::Other)
    }
}

/// The producer's frame assembler: one frame being filled per [`Class`].
pub struct Batcher<'a> {
    cfg: BatchConfig,
    dict: Option<&'a Dict>,
    /// Digests of every member placed in a frame so far.
    seen: HashSet<[u8; 32]>,
    pending: [FrameJob; 2],
}

impl<'a> Batcher<'a> {
    /// An empty assembler.
    pub fn new(cfg: BatchConfig, dict: Option<&'a Dict>) -> Self {
        Batcher {
            cfg,
            dict,
            seen: HashSet::new(),
            pending: Default::default(),
        }
    }

    /// Configuration.
    pub fn config(&self) -> BatchConfig {
        self.cfg
    }

    /// Adds chunk `seq` (non-zero, `cfg.takes(data.len())`) to the frame
    /// of `class`. Returns that frame to send first if `data` does not fit.
    /// A duplicate queues behind the frame of its class, which is where
    /// its original is unless that was sent already.
    pub fn add(&mut self, seq: u64, data: &[u8], class: Class) -> Option<FrameJob> {
        let digest = *blake3::hash(data).as_bytes();
        let slot = class as usize;
        let in_dict = self.dict.is_some_and(|d| d.chunks.contains_key(&digest));
        if in_dict || self.seen.contains(&digest) {
            self.pending[slot].aliases.push((seq, digest));
            return None;
        }
        self.seen.insert(digest);
        let full = self.pending[slot].data.len() + data.len() > self.cfg.frame_size as usize;
        let ready = if full { self.take_slot(slot) } else { None };
        let p = &mut self.pending[slot];
        if p.data.capacity() == 0 {
            p.data.reserve_exact(self.cfg.frame_size as usize);
        }
        p.members.push(Member {
            seq,
            digest,
            offset: p.data.len() as u32,
            len: data.len() as u32,
        });
        p.data.extend_from_slice(data);
        ready
    }

    fn take_slot(&mut self, slot: usize) -> Option<FrameJob> {
        let p = &mut self.pending[slot];
        (!p.is_empty()).then(|| std::mem::take(p))
    }

    /// A pending frame that holds anything (call until `None` at the end).
    pub fn take(&mut self) -> Option<FrameJob> {
        (0..self.pending.len()).find_map(|slot| self.take_slot(slot))
    }
}

/// How a chunk is stored on its own.
#[derive(Debug)]
pub struct Single {
    /// blake3 of the data.
    pub digest: [u8; 32],
    /// Data length.
    pub len: u32,
    /// Stored bytes.
    pub stored: Vec<u8>,
    /// True if `stored` is a zstd frame, false if it is the data.
    pub zstd: bool,
}

/// Compresses `data` alone: zstd if that makes it smaller, else raw.
/// A compression failure (never seen in practice) stores the chunk raw
/// rather than stalling the ordered writer.
pub fn compress_single(
    z: &mut zstd::bulk::Compressor<'_>,
    digest: [u8; 32],
    data: Vec<u8>,
) -> Single {
    let len = data.len() as u32;
    let packed = z.compress(&data).unwrap_or_default();
    if !packed.is_empty() && packed.len() < data.len() {
        Single {
            digest,
            len,
            stored: packed,
            zstd: true,
        }
    } else {
        Single {
            digest,
            len,
            stored: data,
            zstd: false,
        }
    }
}

/// A compressed frame job, ready for the writer.
#[derive(Debug)]
pub struct FrameDone {
    /// The frame's stored bytes, decompressed size and members; `None` if
    /// the members are stored individually instead.
    pub frame: Option<(Vec<u8>, u32, Vec<Member>)>,
    /// Members stored individually: `(seq, how)`.
    pub singles: Vec<(u64, Single)>,
    /// Aliases, resolved after the members are stored.
    pub aliases: Vec<(u64, [u8; 32])>,
}

/// Compresses a frame job (on a worker).
pub fn compress_frame(z: &mut zstd::bulk::Compressor<'_>, job: FrameJob) -> FrameDone {
    let FrameJob {
        data,
        members,
        aliases,
    } = job;
    if members.len() >= 2 {
        let packed = z.compress(&data).unwrap_or_default();
        if !packed.is_empty() && packed.len() < data.len() {
            return FrameDone {
                frame: Some((packed, data.len() as u32, members)),
                singles: Vec::new(),
                aliases,
            };
        }
    }
    let singles = members
        .iter()
        .map(|m| {
            let at = m.offset as usize..(m.offset + m.len) as usize;
            let one = data.get(at).unwrap_or_default().to_vec();
            (m.seq, compress_single(z, m.digest, one))
        })
        .collect();
    FrameDone {
        frame: None,
        singles,
        aliases,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(frame_size: u32, threshold: u32) -> BatchConfig {
        BatchConfig {
            frame_size,
            threshold,
            level: 3,
        }
    }

    #[test]
    fn validation() {
        assert!(BatchConfig::OFF.validate().is_ok());
        assert!(cfg(1 << 20, 1 << 20).validate().is_ok());
        assert!(cfg(1 << 20, (1 << 20) + 1).validate().is_err());
        assert!(cfg(1 << 20, 0).validate().is_err());
        assert!(cfg(32 << 20, 1024).validate().is_err());
        assert!(!BatchConfig::OFF.takes(1));
        assert!(cfg(100, 10).takes(9));
        assert!(!cfg(100, 10).takes(10));
    }

    #[test]
    fn frames_fill_in_order_and_duplicates_alias() {
        let mut b = Batcher::new(cfg(10, 10), None);
        assert!(b.add(0, b"abcd", Class::Other).is_none());
        assert!(b.add(1, b"efgh", Class::Other).is_none());
        assert!(b.add(2, b"abcd", Class::Other).is_none()); // duplicate in this frame
        let first = b.add(3, b"ijkl", Class::Other).expect("frame full");
        assert_eq!(first.data, b"abcdefgh");
        assert_eq!(
            first
                .members
                .iter()
                .map(|m| (m.seq, m.offset))
                .collect::<Vec<_>>(),
            [(0, 0), (1, 4)]
        );
        assert_eq!(first.aliases.len(), 1);
        assert!(b.add(4, b"efgh", Class::Other).is_none()); // duplicate of an earlier frame
        let last = b.take().unwrap();
        assert_eq!(last.data, b"ijkl");
        assert_eq!(last.aliases[0].0, 4);
        assert!(b.take().is_none());
    }

    #[test]
    fn classes_fill_separate_frames() {
        assert_eq!(classify(b"\x1f\x8b\x08rest"), None);
        assert_eq!(classify(b"\x7fELF\x02"), Some(Class::Elf));
        assert_eq!(classify(b"#!/bin/sh"), Some(Class::Other));
        let mut b = Batcher::new(cfg(100, 100), None);
        b.add(0, b"text one", Class::Other);
        b.add(1, b"\x7fELF one", Class::Elf);
        b.add(2, b"text two", Class::Other);
        let elf = b.take().unwrap();
        let other = b.take().unwrap();
        assert!(b.take().is_none());
        let seqs = |f: &FrameJob| f.members.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!((seqs(&elf), seqs(&other)), (vec![1], vec![0, 2]));
    }

    #[test]
    fn dictionary_chunks_alias() {
        let mut dict = Dict::default();
        let d = *blake3::hash(b"known").as_bytes();
        dict.chunks.insert(d, rafs_format::ChunkSpec::default());
        let mut b = Batcher::new(cfg(100, 100), Some(&dict));
        assert!(b.add(0, b"known", Class::Other).is_none());
        let job = b.take().unwrap();
        assert!(job.members.is_empty());
        assert_eq!(job.aliases, [(0, d)]);
    }

    #[test]
    fn incompressible_frames_and_single_members_stand_alone() {
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        let noise = super::super::tests::noise(3000, 1);
        let mut b = Batcher::new(cfg(4096, 4096), None);
        b.add(0, &noise[..1500], Class::Other);
        b.add(1, &noise[1500..], Class::Other);
        let done = compress_frame(&mut z, b.take().unwrap());
        assert!(done.frame.is_none());
        assert_eq!(done.singles.len(), 2);
        assert!(done.singles.iter().all(|(_, s)| !s.zstd));
        let mut b = Batcher::new(cfg(4096, 4096), None);
        b.add(7, &[b'a'; 1000], Class::Other);
        let done = compress_frame(&mut z, b.take().unwrap());
        assert!(done.frame.is_none());
        assert_eq!(done.singles[0].0, 7);
        assert!(done.singles[0].1.zstd);
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod build_tests;
