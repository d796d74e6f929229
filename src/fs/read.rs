//! The read path: (inode, offset, length) → the file's chunk run → stored
//! bytes from the backend → decompression → blake3 check → the slice asked
//! for.
//!
//! Holes are zeros and never touch a blob. Decompressed frames (a chunk's
//! data, or a whole batch frame) are kept once each in a byte-bounded LRU
//! ([`ChunkCache`]), so small sequential reads decompress each chunk once
//! and the files of one batch frame share one decompression. Each chunk is
//! verified against its own digest the first time it is read from a frame;
//! reads are then a copy of the slice asked for, nothing more.
//!
//! A chunk that cannot be fetched or fails verification fails only the
//! reads that touch it, with a log line naming blob, chunk and file.

use super::{FsError, Metrics, Op, RafsFs};
use crate::backend::BlobId;
use crate::chunk::{decode_frame, member, ChunkError, FetchError};
use lru::LruCache;
use rafs_format::layout::ChunkInfo;
use rafs_format::Bootstrap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

/// A decompressed frame: a plain chunk's data, or a whole batch frame.
/// Members are verified against their own digest once, on first use; the
/// offsets of verified members are remembered so later reads of them are a
/// plain copy.
pub(super) struct Frame {
    data: Vec<u8>,
    /// Chunks checked so far: (offset in the frame, length, digest). The
    /// whole identity, not just the offset: a hostile bootstrap may give
    /// two entries the same frame and offset with different lengths.
    verified: Mutex<HashSet<(u32, u32, [u8; 32])>>,
}

impl Frame {
    fn new(data: Vec<u8>) -> Frame {
        Frame {
            data,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Checks chunk `c` (this frame's data, or a member of it) against
    /// its digest, once.
    fn verify(&self, c: &ChunkInfo) -> Result<(), ChunkError> {
        let id = (c.batch_offset.get(), c.uncompressed_size.get(), c.digest);
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if !verified.contains(&id) {
            member(c, &self.data)?;
            verified.insert(id);
        }
        Ok(())
    }
}

/// A verified chunk's data inside a cached frame.
struct FrameSlice {
    frame: Arc<Frame>,
    start: usize,
    len: usize,
}

impl FrameSlice {
    /// Bytes `range` of the chunk.
    fn get(&self, range: std::ops::Range<usize>) -> Option<&[u8]> {
        self.frame
            .data
            .get(self.start..self.start + self.len)?
            .get(range)
    }
}

/// Cache key: (blob index, offset of the stored frame in the blob).
pub(super) type Key = (u32, u64);

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

    fn get(&self, key: &Key) -> Option<Arc<Frame>> {
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lru.map.get(key).cloned()
    }

    pub(super) fn put(&self, key: Key, frame: Arc<Frame>) {
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

    fn remove(&self, key: &Key) {
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

impl RafsFs {
    /// Reads up to `size` bytes of regular file `ino` at `offset`; short
    /// only at the end of the file.
    pub fn read(&self, ino: u32, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        self.metrics.op(Op::Read);
        let b = self.image.bootstrap()?;
        let inode = b.inode(ino).map_err(|_| FsError::NotFound)?;
        if inode.is_dir() {
            return Err(FsError::IsDir);
        }
        if !inode.is_reg() {
            return Err(FsError::Invalid);
        }
        let end = offset.saturating_add(u64::from(size)).min(inode.size.get());
        let run = b.file_chunks(ino)?;
        let run_start = u64::from(inode.payload_start.get());
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        let mut i = run.partition_point(|c| c.file_end() <= pos);
        while pos < end {
            let c = run.get(i).ok_or(FsError::Invalid)?;
            let from = (pos - c.file_offset.get()) as usize;
            let to = (end.min(c.file_end()) - c.file_offset.get()) as usize;
            if c.is_hole() {
                out.resize(out.len() + (to - from), 0);
            } else {
                let data = self
                    .chunk(&b, c)
                    .map_err(|source| self.data_error(&b, ino, run_start + i as u64, c, source))?;
                out.extend_from_slice(data.get(from..to).ok_or(FsError::Invalid)?);
            }
            pos = c.file_offset.get() + to as u64;
            i += 1;
        }
        Metrics::add(&self.metrics.bytes_read, out.len() as u64);
        Ok(out)
    }

    /// The verified data of (non-hole) chunk `c`, as a slice of its frame.
    fn chunk(&self, b: &Bootstrap<'_>, c: &ChunkInfo) -> Result<FrameSlice, FetchError> {
        let frame = self.frame(b, c)?;
        if let Err(e) = frame.verify(c) {
            // Bad bytes must not stay cached: the next read refetches.
            self.cache
                .remove(&(c.blob_index.get(), c.compressed_offset.get()));
            return Err(chunk_error(b, c, e));
        }
        // Plain chunks have batch_offset 0: their data is the whole frame.
        let start = c.batch_offset.get() as usize;
        Ok(FrameSlice {
            frame,
            start,
            len: c.uncompressed_size.get() as usize,
        })
    }

    /// The decompressed frame holding (non-hole) chunk `c`, from the LRU or
    /// the backend. Its members are verified by [`Frame::verify`].
    fn frame(&self, b: &Bootstrap<'_>, c: &ChunkInfo) -> Result<Arc<Frame>, FetchError> {
        let key = (c.blob_index.get(), c.compressed_offset.get());
        if let Some(frame) = self.cache.get(&key) {
            Metrics::add(&self.metrics.lru_hits, 1);
            return Ok(frame);
        }
        Metrics::add(&self.metrics.lru_misses, 1);
        let frame = Arc::new(Frame::new(self.fetch_frame(b, c)?));
        self.cache.put(key, frame.clone());
        Ok(frame)
    }

    /// Fetches and decompresses the frame holding `c` (its own bytes for a
    /// plain chunk).
    fn fetch_frame(&self, b: &Bootstrap<'_>, c: &ChunkInfo) -> Result<Vec<u8>, FetchError> {
        let blob = BlobId(b.chunk_blob(c)?.id);
        let len = u64::from(c.compressed_size.get());
        let stored = self
            .backend
            .read_range(&blob, c.compressed_offset.get(), len)?;
        Metrics::add(&self.metrics.backend_bytes, len);
        Metrics::add(&self.metrics.chunk_decompressions, 1);
        decode_frame(c, &stored).map_err(|e| chunk_error(b, c, e))
    }

    /// Logs and wraps a data failure, naming blob, chunk and file.
    fn data_error(
        &self,
        b: &Bootstrap<'_>,
        ino: u32,
        chunk: u64,
        c: &ChunkInfo,
        source: FetchError,
    ) -> FsError {
        Metrics::add(&self.metrics.io_errors, 1);
        let blob = b
            .chunk_blob(c)
            .map(|x| BlobId(x.id))
            .unwrap_or(BlobId([0; 32]));
        let path = path_of(b, ino).map(|p| String::from_utf8_lossy(&p).into_owned());
        tracing::error!(
            blob = %blob,
            chunk,
            file = path.as_deref().unwrap_or("?"),
            ino,
            "read failed: {source}"
        );
        FsError::Data {
            ino,
            chunk,
            blob,
            source,
        }
    }
}

fn chunk_error(b: &Bootstrap<'_>, c: &ChunkInfo, source: ChunkError) -> FetchError {
    let blob = b
        .chunk_blob(c)
        .map(|x| BlobId(x.id))
        .unwrap_or(BlobId([0; 32]));
    FetchError::Chunk {
        blob,
        offset: c.compressed_offset.get(),
        source,
    }
}

/// The first path of `ino` in name order (for error messages only: it walks
/// the tree).
pub(crate) fn path_of(b: &Bootstrap<'_>, ino: u32) -> Option<Vec<u8>> {
    struct Found(Vec<u8>);
    impl From<rafs_format::FormatError> for Found {
        fn from(_: rafs_format::FormatError) -> Self {
            Found(Vec::new())
        }
    }
    match crate::unpack::walk::walk(b, |v| {
        if v.ino == ino {
            Err(Found(v.path.to_vec()))
        } else {
            Ok(())
        }
    }) {
        Err(Found(p)) if !p.is_empty() => Some(p),
        _ => None,
    }
}

/// A frame of `len` bytes, for tests of the cache.
#[cfg(test)]
pub(super) fn test_frame(len: usize) -> Arc<Frame> {
    Arc::new(Frame::new(vec![1; len]))
}

#[cfg(test)]
mod tests {
    use super::*;

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
