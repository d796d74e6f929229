//! The read path: (inode, offset, length) → the file's chunk run → stored
//! bytes from the backend → decompression → blake3 check → the slice asked
//! for.
//!
//! Holes are zeros and never touch a blob. Decompressed, verified chunks
//! are kept in a byte-bounded LRU ([`ChunkCache`]) so that small sequential
//! reads (the kernel reads 128 KiB at a time) decompress each chunk once.
//! A batch frame is fetched and decompressed once too: the whole frame is
//! cached (unverified) next to the members read from it, and each member is
//! verified against its own digest before it is returned or cached.
//!
//! A chunk that cannot be fetched or fails verification fails only the
//! reads that touch it, with a log line naming blob, chunk and file.

use super::{FsError, Metrics, Op, RafsFs};
use crate::backend::BlobId;
use crate::chunk::{decode_frame, member, ChunkError, FetchError};
use lru::LruCache;
use rafs_format::layout::ChunkInfo;
use rafs_format::Bootstrap;
use std::sync::{Arc, Mutex, PoisonError};

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Key {
    /// A verified chunk: (blob index, frame offset in the blob, offset in
    /// the frame).
    Chunk(u32, u64, u32),
    /// A decompressed batch frame, not yet verified member by member.
    Frame(u32, u64),
}

struct Lru {
    map: LruCache<Key, Arc<[u8]>>,
    bytes: usize,
}

/// A byte-bounded LRU of decompressed data.
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

    fn get(&self, key: &Key) -> Option<Arc<[u8]>> {
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lru.map.get(key).cloned()
    }

    pub(super) fn put(&self, key: Key, data: Arc<[u8]>) {
        if data.len() > self.budget {
            return;
        }
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        lru.bytes += data.len();
        if let Some(old) = lru.map.put(key, data) {
            lru.bytes -= old.len();
        }
        while lru.bytes > self.budget {
            match lru.map.pop_lru() {
                Some((_, old)) => lru.bytes -= old.len(),
                None => break,
            }
        }
    }

    fn remove(&self, key: &Key) {
        let mut lru = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = lru.map.pop(key) {
            lru.bytes -= old.len();
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
                    .chunk_data(&b, c)
                    .map_err(|source| self.data_error(&b, ino, run_start + i as u64, c, source))?;
                out.extend_from_slice(data.get(from..to).ok_or(FsError::Invalid)?);
            }
            pos = c.file_offset.get() + to as u64;
            i += 1;
        }
        Metrics::add(&self.metrics.bytes_read, out.len() as u64);
        Ok(out)
    }

    /// The verified data of (non-hole) chunk `c`.
    fn chunk_data(&self, b: &Bootstrap<'_>, c: &ChunkInfo) -> Result<Arc<[u8]>, FetchError> {
        let (blob, off) = (c.blob_index.get(), c.compressed_offset.get());
        let key = Key::Chunk(blob, off, c.batch_offset.get());
        if let Some(data) = self.cache.get(&key) {
            Metrics::add(&self.metrics.lru_hits, 1);
            return Ok(data);
        }
        Metrics::add(&self.metrics.lru_misses, 1);
        let frame_key = Key::Frame(blob, off);
        let cached = c.is_batch().then(|| self.cache.get(&frame_key)).flatten();
        let frame = match cached {
            Some(frame) => frame,
            None => {
                let frame: Arc<[u8]> = self.fetch_frame(b, c)?.into();
                if c.is_batch() {
                    self.cache.put(frame_key, frame.clone());
                }
                frame
            }
        };
        let data: Arc<[u8]> = match member(c, &frame) {
            Ok(d) if c.is_batch() => d.into(),
            Ok(_) => frame,
            Err(e) => {
                // A bad frame must not keep failing members it did not
                // fail for a good reason: drop it, the next read refetches.
                self.cache.remove(&frame_key);
                return Err(chunk_error(b, c, e));
            }
        };
        self.cache.put(key, data.clone());
        Ok(data)
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

/// A chunk key for tests of the cache.
#[cfg(test)]
pub(super) fn read_key(k: u32) -> Key {
    Key::Chunk(0, u64::from(k), 0)
}
