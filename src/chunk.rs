//! Turning a chunk's stored bytes back into verified data.
//!
//! Stored bytes come from a blob, which is untrusted: the length must match
//! the chunk table, a zstd frame must decompress to exactly the recorded
//! length (never more: the output buffer is bounded), and the result must
//! hash to the recorded blake3 digest. Only then are the bytes returned.

use crate::backend::{Backend, BackendError, BlobId};
use rafs_format::layout::ChunkInfo;
use rafs_format::{Bootstrap, FormatError};
use thiserror::Error;

/// Why stored bytes do not yield the chunk's data.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChunkError {
    /// The stored byte count differs from the chunk table.
    #[error("stored length {got}, expected {expected}")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: u32,
    },
    /// The zstd frame is corrupt or decompresses to the wrong length.
    #[error("zstd decompression failed: {0}")]
    Decompress(String),
    /// The data does not hash to the recorded digest.
    #[error("digest mismatch")]
    Digest,
    /// Holes have no stored bytes.
    #[error("chunk is a hole")]
    Hole,
}

/// Decodes and verifies `stored` (the chunk's bytes from its blob; for a
/// batch member, the whole frame's bytes).
pub fn decode_chunk(c: &ChunkInfo, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let frame = decode_frame(c, stored)?;
    if !c.is_batch() {
        verify(c, &frame)?;
        return Ok(frame);
    }
    member(c, &frame).map(<[u8]>::to_vec)
}

/// Turns stored bytes into the frame's data, without verifying digests:
/// for a plain chunk its data, for a batch member the data of every member
/// of its frame. Callers verify with [`member`] (or [`decode_chunk`]).
pub fn decode_frame(c: &ChunkInfo, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
    if c.is_hole() {
        return Err(ChunkError::Hole);
    }
    if stored.len() != c.compressed_size.get() as usize {
        return Err(ChunkError::Length {
            got: stored.len(),
            expected: c.compressed_size.get(),
        });
    }
    if !c.is_zstd() {
        let mut out = crate::util::pool::take(stored.len());
        out.extend_from_slice(stored);
        return Ok(out);
    }
    let want = c.frame_size() as usize;
    let mut out = crate::util::pool::take(want);
    zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(stored, &mut out))
        .map_err(|e| ChunkError::Decompress(e.to_string()))?;
    if out.len() != want {
        return Err(ChunkError::Decompress(format!(
            "{} bytes, expected {want}",
            out.len()
        )));
    }
    Ok(out)
}

/// The verified data of chunk `c` within `frame` (from [`decode_frame`]).
pub fn member<'f>(c: &ChunkInfo, frame: &'f [u8]) -> Result<&'f [u8], ChunkError> {
    let start = if c.is_batch() {
        c.batch_offset.get() as usize
    } else {
        0
    };
    let data = start
        .checked_add(c.uncompressed_size.get() as usize)
        .and_then(|end| frame.get(start..end))
        .ok_or(ChunkError::Decompress("member outside its frame".into()))?;
    verify(c, data)?;
    Ok(data)
}

fn verify(c: &ChunkInfo, data: &[u8]) -> Result<(), ChunkError> {
    if data.len() != c.uncompressed_size.get() as usize
        || blake3::hash(data).as_bytes() != &c.digest
    {
        return Err(ChunkError::Digest);
    }
    Ok(())
}

/// Why a chunk could not be read from its blob.
#[derive(Debug, Error)]
pub enum FetchError {
    /// The chunk's blob reference is invalid.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// No data before the read's deadline (the backend is slow, stalled
    /// or failing transiently).
    #[error("no data within the read deadline of {0:?} (backend slow or failing)")]
    Timeout(std::time::Duration),
    /// The fetch was cancelled before it ran (a stopped prefetch).
    #[error("fetch cancelled (prefetch stopped)")]
    Cancelled,
    /// A failure shared by every reader of one fetch (single flight).
    #[error(transparent)]
    Shared(std::sync::Arc<FetchError>),
    /// The stored bytes are bad.
    #[error("blob {blob}, offset {offset}: {source}")]
    Chunk {
        /// Blob holding the chunk.
        blob: BlobId,
        /// Offset of the stored bytes in the blob.
        offset: u64,
        /// What is wrong.
        source: ChunkError,
    },
}

/// Reads chunk `c` of `bootstrap` from `backend`, decoded and verified.
/// Holes are [`ChunkError::Hole`]: callers produce their zeros themselves.
pub fn fetch_chunk(
    backend: &dyn Backend,
    bootstrap: &Bootstrap<'_>,
    c: &ChunkInfo,
) -> Result<Vec<u8>, FetchError> {
    if c.is_hole() {
        return Err(FetchError::Chunk {
            blob: BlobId([0; 32]),
            offset: 0,
            source: ChunkError::Hole,
        });
    }
    let blob = BlobId(bootstrap.chunk_blob(c)?.id);
    let offset = c.compressed_offset.get();
    let stored = backend.read_range(&blob, offset, u64::from(c.compressed_size.get()))?;
    decode_chunk(c, &stored).map_err(|source| FetchError::Chunk {
        blob,
        offset,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafs_format::layout::{CHUNK_BATCH, CHUNK_HOLE, CHUNK_ZSTD};

    fn chunk(data: &[u8], stored: &[u8], flags: u32) -> ChunkInfo {
        ChunkInfo {
            digest: *blake3::hash(data).as_bytes(),
            compressed_size: (stored.len() as u32).into(),
            uncompressed_size: (data.len() as u32).into(),
            flags: flags.into(),
            ..Default::default()
        }
    }

    #[test]
    fn zstd_round_trip_and_corruption() {
        let data = vec![7u8; 10_000];
        let stored = zstd::bulk::compress(&data, 3).unwrap();
        let c = chunk(&data, &stored, CHUNK_ZSTD);
        assert_eq!(decode_chunk(&c, &stored).unwrap(), data);
        let mut bad = stored.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(decode_chunk(&c, &bad).is_err());
        assert!(matches!(
            decode_chunk(&c, &stored[1..]),
            Err(ChunkError::Length { .. })
        ));
    }

    #[test]
    fn raw_digest_mismatch() {
        let data = b"hello world".to_vec();
        let c = chunk(&data, &data, 0);
        assert_eq!(decode_chunk(&c, &data).unwrap(), data);
        assert_eq!(decode_chunk(&c, b"hello worlD"), Err(ChunkError::Digest));
        let hole = ChunkInfo {
            flags: CHUNK_HOLE.into(),
            ..c
        };
        assert_eq!(decode_chunk(&hole, &data), Err(ChunkError::Hole));
    }

    #[test]
    fn batch_members() {
        let a = b"first member ".repeat(20);
        let b = b"second member".repeat(30);
        let frame = [a.clone(), b.clone()].concat();
        let stored = zstd::bulk::compress(&frame, 3).unwrap();
        let member = |data: &[u8], off: usize| ChunkInfo {
            flags: (CHUNK_ZSTD | CHUNK_BATCH).into(),
            batch_offset: (off as u32).into(),
            batch_size: (frame.len() as u32).into(),
            ..chunk(data, &stored, 0)
        };
        let (ca, cb) = (member(&a, 0), member(&b, a.len()));
        assert_eq!(decode_chunk(&ca, &stored).unwrap(), a);
        assert_eq!(decode_chunk(&cb, &stored).unwrap(), b);
        // The wrong member offset fails its digest.
        let shifted = ChunkInfo {
            batch_offset: 1.into(),
            ..cb
        };
        assert_eq!(decode_chunk(&shifted, &stored), Err(ChunkError::Digest));
        // A member past the frame is an error, not a panic.
        let past = ChunkInfo {
            batch_offset: (frame.len() as u32).into(),
            ..cb
        };
        assert!(decode_chunk(&past, &stored).is_err());
        // A frame size that disagrees with the stored frame.
        let short = ChunkInfo {
            batch_size: 10.into(),
            ..ca
        };
        assert!(matches!(
            decode_chunk(&short, &stored),
            Err(ChunkError::Decompress(_))
        ));
    }

    #[test]
    fn zstd_bomb_is_bounded() {
        // A frame that decompresses to more than the recorded size fails
        // without allocating the full output.
        let big = vec![0u8; 1 << 20];
        let stored = zstd::bulk::compress(&big, 3).unwrap();
        let c = chunk(&big[..4096], &stored, CHUNK_ZSTD);
        let c = ChunkInfo {
            compressed_size: (stored.len() as u32).into(),
            ..c
        };
        assert!(matches!(
            decode_chunk(&c, &stored),
            Err(ChunkError::Decompress(_))
        ));
    }
}
