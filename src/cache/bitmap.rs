//! The persistent range bitmap: `DIR/<blob hex>.map`.
//!
//! A 128-byte checksummed header (`docs/FORMAT.md`, "Cache files") followed by
//! one bit per range of the blob's uncompressed address space, in
//! little-endian `u64` words. The file is mmapped shared, so every process
//! that maps it (a blob manager and the mount daemons it hands the fd to) sees
//! the same bits; bits are only ever changed with atomic read-modify-write
//! operations (`fetch_or` to set, `fetch_and` to clear).
//!
//! Crash story: a set bit means "the bytes of this range were made durable in
//! the data file before this bit was set" (the ordering lives in
//! [`super::BlobCache::commit`]). A bit may reach disk late or not at all; a
//! lost bit costs a re-fetch, never a wrong byte. The header is written once,
//! to a temporary file that is fsynced and renamed into place, so a reader
//! sees either no file, an old complete file, or the new complete file.
//! Anything doubtful about the header (short, magic, version, checksum,
//! reserved bytes, a blob id, size or granularity other than expected, a file
//! length other than header + words) replaces the file by an all-clear one
//! and reports why ([`Opened::Reset`]); it never fails the open.
//!
//! Nobody truncates or rewrites a map in place: a reset replaces it by
//! rename, so a process still holding the old mapping keeps a valid (orphaned)
//! map and never takes a SIGBUS.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{io_err, sync_dir, CacheError};
use crate::backend::BlobId;

/// First eight bytes of every range bitmap file.
pub const MAP_MAGIC: [u8; 8] = *b"RAFSCMAP";
/// The only version this code reads or writes; any other resets the cache.
pub const MAP_VERSION: u32 = 1;
/// Size of [`MapHeader`]; the words start here (a multiple of 8).
pub const MAP_HEADER_SIZE: usize = 128;
/// Bytes of the header covered by its checksum (everything before it).
pub const MAP_CHECKSUM_OFFSET: usize = 96;
/// Smallest range granularity (one page).
pub const MIN_GRANULARITY: u32 = 4 << 10;
/// Largest range granularity (the largest chunk).
pub const MAX_GRANULARITY: u32 = 16 << 20;
/// Default range granularity.
pub const DEFAULT_GRANULARITY: u32 = rafs_format::layout::BLOB_FRAME_ALIGN as u32;

/// The bitmap file's header. Layout in `docs/FORMAT.md`, "Cache files".
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MapHeader {
    /// [`MAP_MAGIC`].
    pub magic: [u8; 8],
    /// [`MAP_VERSION`].
    pub version: U32,
    /// [`MAP_HEADER_SIZE`].
    pub header_size: U32,
    /// The blob's id (sha256).
    pub blob_id: [u8; 32],
    /// The blob's uncompressed size: the data file's length.
    pub blob_size: U64,
    /// Bytes per range: a power of two in 4 KiB ..= 16 MiB.
    pub granularity: U32,
    /// Reserved, zero.
    pub reserved0: U32,
    /// `ceil(blob_size / granularity)`.
    pub range_count: U64,
    /// Reserved, zero.
    pub reserved1: [u8; 24],
    /// blake3 of bytes `0..96` of the header.
    pub checksum: [u8; 32],
}

const _: () = assert!(size_of::<MapHeader>() == MAP_HEADER_SIZE);
const _: () = assert!(MAP_HEADER_SIZE % 8 == 0);

/// What a bitmap is expected to describe; a header that says otherwise is
/// reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapParams {
    /// The blob.
    pub blob: BlobId,
    /// Its uncompressed size.
    pub blob_size: u64,
    /// Bytes per range.
    pub granularity: u32,
}

impl MapParams {
    /// Checks the granularity (a power of two in range).
    pub fn new(blob: BlobId, blob_size: u64, granularity: u32) -> Result<MapParams, CacheError> {
        if !granularity.is_power_of_two()
            || !(MIN_GRANULARITY..=MAX_GRANULARITY).contains(&granularity)
        {
            return Err(CacheError::Granularity(granularity));
        }
        Ok(MapParams {
            blob,
            blob_size,
            granularity,
        })
    }
    /// Number of ranges: `ceil(blob_size / granularity)`.
    pub fn range_count(&self) -> u64 {
        self.blob_size.div_ceil(u64::from(self.granularity))
    }
    /// Length of a valid map file: header plus `ceil(ranges / 64)` words.
    pub fn file_len(&self) -> u64 {
        MAP_HEADER_SIZE as u64 + self.range_count().div_ceil(64) * 8
    }
    /// The sealed header for these parameters.
    pub fn header(&self) -> MapHeader {
        let mut h = MapHeader {
            magic: MAP_MAGIC,
            version: MAP_VERSION.into(),
            header_size: (MAP_HEADER_SIZE as u32).into(),
            blob_id: self.blob.0,
            blob_size: self.blob_size.into(),
            granularity: self.granularity.into(),
            reserved0: 0.into(),
            range_count: self.range_count().into(),
            reserved1: [0; 24],
            checksum: [0; 32],
        };
        h.checksum = *blake3::hash(&h.as_bytes()[..MAP_CHECKSUM_OFFSET]).as_bytes();
        h
    }
}

/// Why an existing bitmap was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetReason {
    /// Shorter than the header.
    #[error("file is {0} bytes, shorter than the header")]
    Short(u64),
    /// Wrong magic.
    #[error("bad magic")]
    Magic,
    /// Another version (older, newer or garbage).
    #[error("version {0}, expected {MAP_VERSION}")]
    Version(u32),
    /// Wrong header size field.
    #[error("header size {0}, expected {MAP_HEADER_SIZE}")]
    HeaderSize(u32),
    /// The header checksum does not match.
    #[error("header checksum mismatch")]
    Checksum,
    /// A reserved byte is not zero.
    #[error("reserved bytes not zero")]
    Reserved,
    /// The header names another blob.
    #[error("header names blob {0}")]
    BlobId(BlobId),
    /// The header's blob size differs from the expected one.
    #[error("blob size {found}, expected {expected}")]
    BlobSize {
        /// In the header.
        found: u64,
        /// Expected by the caller.
        expected: u64,
    },
    /// The header's granularity differs from the expected one.
    #[error("granularity {found}, expected {expected}")]
    Granularity {
        /// In the header.
        found: u32,
        /// Expected by the caller.
        expected: u32,
    },
    /// The range count is not `ceil(blob_size / granularity)`.
    #[error("range count {0} inconsistent with blob size and granularity")]
    RangeCount(u64),
    /// The file is not exactly header + words long.
    #[error("file is {found} bytes, expected {expected}")]
    FileLength {
        /// Actual length.
        found: u64,
        /// Header + words.
        expected: u64,
    },
    /// The data file was missing or had the wrong length, so no bit of the
    /// old map can be trusted.
    #[error("data file missing or of the wrong length")]
    DataFile,
}

/// How [`RangeBitmap::open`] found the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A valid map for this blob: its bits are kept.
    Reused,
    /// No map existed; a fresh all-clear one was created.
    Created,
    /// A map existed but was not trusted; it was replaced by an all-clear one.
    Reset {
        /// Why.
        reason: ResetReason,
    },
}

/// Checks a map file's bytes against `expect`: first the header on its own
/// (length, magic, version, size, checksum, reserved, internal consistency),
/// then against what the caller expects, then the file length. `file_len` is
/// the whole file's length; `bytes` needs only hold its first
/// [`MAP_HEADER_SIZE`] bytes. Never panics, whatever the bytes.
pub fn check_header(bytes: &[u8], file_len: u64, expect: &MapParams) -> Result<(), ResetReason> {
    let Ok((h, _)) = MapHeader::read_from_prefix(bytes) else {
        return Err(ResetReason::Short(file_len.min(bytes.len() as u64)));
    };
    if h.magic != MAP_MAGIC {
        return Err(ResetReason::Magic);
    }
    if h.version.get() != MAP_VERSION {
        return Err(ResetReason::Version(h.version.get()));
    }
    if h.header_size.get() as usize != MAP_HEADER_SIZE {
        return Err(ResetReason::HeaderSize(h.header_size.get()));
    }
    let sum = blake3::hash(&h.as_bytes()[..MAP_CHECKSUM_OFFSET]);
    if sum.as_bytes() != &h.checksum {
        return Err(ResetReason::Checksum);
    }
    if h.reserved0.get() != 0 || h.reserved1 != [0; 24] {
        return Err(ResetReason::Reserved);
    }
    if h.blob_id != expect.blob.0 {
        return Err(ResetReason::BlobId(BlobId(h.blob_id)));
    }
    if h.blob_size.get() != expect.blob_size {
        return Err(ResetReason::BlobSize {
            found: h.blob_size.get(),
            expected: expect.blob_size,
        });
    }
    if h.granularity.get() != expect.granularity {
        return Err(ResetReason::Granularity {
            found: h.granularity.get(),
            expected: expect.granularity,
        });
    }
    if h.range_count.get() != expect.range_count() {
        return Err(ResetReason::RangeCount(h.range_count.get()));
    }
    if file_len != expect.file_len() {
        return Err(ResetReason::FileLength {
            found: file_len,
            expected: expect.file_len(),
        });
    }
    Ok(())
}

/// An open, mmapped range bitmap.
///
/// The mmap contract, stated once: the map is `MAP_SHARED` over a file whose
/// length was checked to be exactly header + words, and no process truncates
/// or rewrites a map file in place (resets go through rename), so every byte
/// of the mapping stays valid for its lifetime. The header bytes are never
/// written after creation; the words are only accessed as `AtomicU64`, by
/// this process and any other, so there is no non-atomic access to race with.
/// The mapping is never borrowed mutably (no `DerefMut` on `map`).
pub struct RangeBitmap {
    map: MmapMut,
    params: MapParams,
    words: usize,
    path: PathBuf,
}

impl std::fmt::Debug for RangeBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeBitmap")
            .field("path", &self.path)
            .field("params", &self.params)
            .finish()
    }
}

/// `DIR/<blob hex>.map`. The hex comes from a [`BlobId`], never from a string.
pub fn map_path(dir: &Path, blob: &BlobId) -> PathBuf {
    dir.join(format!("{}.map", blob.to_hex()))
}

impl RangeBitmap {
    /// Opens the map for `params` in `dir`, reusing it if its header checks
    /// out, otherwise replacing it by an all-clear one. Errors only on I/O
    /// failures of the directory (the cache can't be used at all).
    pub fn open(dir: &Path, params: MapParams) -> Result<(RangeBitmap, Opened), CacheError> {
        let path = map_path(dir, &params.blob);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok((Self::create(dir, params)?, Opened::Created));
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        let mut head = [0u8; MAP_HEADER_SIZE];
        let n = (len as usize).min(MAP_HEADER_SIZE);
        file.read_exact_at(&mut head[..n], 0)
            .map_err(|e| io_err(&path, e))?;
        if let Err(reason) = check_header(&head[..n], len, &params) {
            drop(file);
            let map = Self::create(dir, params)?;
            return Ok((map, Opened::Reset { reason }));
        }
        Ok((Self::map(file, params, path)?, Opened::Reused))
    }

    /// Replaces any map for `params` in `dir` by an all-clear one: header and
    /// zeroed words to a temporary file, fsync, rename, fsync the directory.
    pub fn create(dir: &Path, params: MapParams) -> Result<RangeBitmap, CacheError> {
        let path = map_path(dir, &params.blob);
        let tmp = dir.join(format!(
            ".{}.map.tmp.{}",
            params.blob.to_hex(),
            std::process::id()
        ));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, e))?;
        let written = file
            .write_all(params.header().as_bytes())
            .and_then(|()| file.set_len(params.file_len()))
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&tmp, e));
        }
        sync_dir(dir)?;
        // Map the file we wrote (now under its final name) rather than
        // reopening the path, which a concurrent creator may have replaced.
        Self::map(file, params, path)
    }

    fn map(file: File, params: MapParams, path: PathBuf) -> Result<RangeBitmap, CacheError> {
        let len = usize::try_from(params.file_len()).map_err(|_| CacheError::TooLarge {
            blob_size: params.blob_size,
        })?;
        // SAFETY: see the mmap contract on `RangeBitmap`: the file's length
        // was checked (or just written) to be `len`, and map files are never
        // truncated or rewritten in place.
        let map =
            unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(|e| io_err(&path, e))?;
        let words = (len - MAP_HEADER_SIZE) / 8;
        Ok(RangeBitmap {
            map,
            params,
            words,
            path,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        let base = self.map.as_ptr();
        // SAFETY: (mmap contract on `RangeBitmap`.) Alignment: mmap returns a
        // page-aligned address and `MAP_HEADER_SIZE` is a multiple of 8, so
        // `base + MAP_HEADER_SIZE` is 8-aligned as `AtomicU64` requires.
        // Bounds: `map` is exactly `MAP_HEADER_SIZE + 8 * words` bytes long.
        // Aliasing: the word bytes are never accessed other than through
        // these atomics (no `&mut` to the map exists, and other processes
        // only use atomic RMW on them), and `AtomicU64` permits shared
        // mutation through `&`. The slice borrows `self`, so it cannot
        // outlive the mapping.
        unsafe {
            std::slice::from_raw_parts(base.add(MAP_HEADER_SIZE).cast::<AtomicU64>(), self.words)
        }
    }

    fn locate(&self, range: u64) -> Result<(usize, u64), CacheError> {
        if range >= self.params.range_count() {
            return Err(CacheError::RangeOutOfBounds {
                range,
                count: self.params.range_count(),
            });
        }
        Ok(((range / 64) as usize, 1u64 << (range % 64)))
    }

    /// The parameters this map was opened with.
    pub fn params(&self) -> &MapParams {
        &self.params
    }

    /// Number of ranges.
    pub fn range_count(&self) -> u64 {
        self.params.range_count()
    }

    /// Whether range `range`'s bytes are in the data file. `Acquire` pairs
    /// with the `Release` of [`RangeBitmap::mark_ready`].
    pub fn is_ready(&self, range: u64) -> Result<bool, CacheError> {
        let (w, bit) = self.locate(range)?;
        Ok(self.words()[w].load(Ordering::Acquire) & bit != 0)
    }

    /// Whether every range in `ranges` is ready (true for an empty span).
    pub fn all_ready(&self, ranges: Range<u64>) -> Result<bool, CacheError> {
        if ranges.is_empty() {
            return Ok(true);
        }
        self.locate(ranges.end - 1)?;
        for r in ranges {
            if !self.is_ready(r)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sets range `range`'s bit. Only after its bytes were made durable
    /// (see [`super::BlobCache::commit`]).
    pub fn mark_ready(&self, range: u64) -> Result<(), CacheError> {
        let (w, bit) = self.locate(range)?;
        self.words()[w].fetch_or(bit, Ordering::Release);
        Ok(())
    }

    /// Clears range `range`'s bit.
    pub fn clear(&self, range: u64) -> Result<(), CacheError> {
        let (w, bit) = self.locate(range)?;
        self.words()[w].fetch_and(!bit, Ordering::AcqRel);
        Ok(())
    }

    /// Number of ready ranges.
    pub fn ready_count(&self) -> u64 {
        self.words()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Writes the bits back to the file (`msync(MS_SYNC)`) and waits.
    pub fn flush(&self) -> Result<(), CacheError> {
        self.map.flush().map_err(|e| io_err(&self.path, e))
    }

    /// Like [`RangeBitmap::flush`], for the words holding `ranges` only.
    pub fn flush_ranges(&self, ranges: Range<u64>) -> Result<(), CacheError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let (first, _) = self.locate(ranges.start)?;
        let (last, _) = self.locate(ranges.end - 1)?;
        let start = MAP_HEADER_SIZE + first * 8;
        let len = (last - first + 1) * 8;
        self.map
            .flush_range(start, len)
            .map_err(|e| io_err(&self.path, e))
    }
}
