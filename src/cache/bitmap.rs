//! The persistent range bitmap: `DIR/<blob hex>.map`.
//!
//! A 128-byte checksummed header (`docs/FORMAT.md`, "Cache files"), a 64-byte
//! live block holding the generation counter, then one bit per range of the
//! blob's uncompressed address space, in little-endian `u64` words. The file is mmapped shared, so every process
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
//! A header that is valid for this blob but records another `layout` is
//! another image's cache: it is not reset but refused
//! ([`CacheError::LayoutConflict`]), so the caller serves that blob without
//! the disk cache instead of destroying the other image's.
//!
//! The generation counter (offset 128) is bumped before any bit is cleared
//! ([`RangeBitmap::clear`], [`RangeBitmap::clear_ranges`]): a reader that
//! loads it before its bit check and again after its `pread` and sees it
//! unchanged knows that no range was cleared, hence nothing rewritten, in
//! between. It is not checksummed; a garbage value only forces
//! re-verification.
//!
//! Nobody truncates or rewrites a map in place: a reset replaces it by
//! rename, so a process still holding the old mapping keeps a valid (orphaned)
//! map and never takes a SIGBUS. Maps are opened with `O_NOFOLLOW` (a symlink
//! there is reset, i.e. replaced by rename, never written through) and
//! created under an unpredictable temporary name with `O_EXCL`, mode 0600.

use std::fs::File;
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::io::{self, Storage};
use super::{io_err, CacheError};
use crate::backend::BlobId;

/// First eight bytes of every range bitmap file.
pub const MAP_MAGIC: [u8; 8] = *b"RAFSCMAP";
/// The only version this code reads or writes; any other resets the cache.
pub const MAP_VERSION: u32 = 2;
/// Size of [`MapHeader`].
pub const MAP_HEADER_SIZE: usize = 128;
/// Offset of the live block (not checksummed, updated atomically in place):
/// the generation counter (`u64`), then zeros.
pub const MAP_LIVE_OFFSET: usize = 128;
/// Size of the live block.
pub const MAP_LIVE_SIZE: usize = 64;
/// Offset of the first word of bits (a multiple of 8).
pub const MAP_BITS_OFFSET: usize = MAP_LIVE_OFFSET + MAP_LIVE_SIZE;
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
    /// The blob layout this cache is filled for: an opaque digest chosen by
    /// the caller ([`MapParams::layout`]).
    pub layout: [u8; 16],
    /// Reserved, zero.
    pub reserved1: [u8; 8],
    /// blake3 of bytes `0..96` of the header.
    pub checksum: [u8; 32],
}

const _: () = assert!(size_of::<MapHeader>() == MAP_HEADER_SIZE);
const _: () = assert!(MAP_BITS_OFFSET % 8 == 0 && MAP_LIVE_OFFSET % 8 == 0);

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
    /// The layout digest recorded in the header (zero unless set with
    /// [`MapParams::with_layout`]). An existing map with another layout is
    /// refused, not reset.
    pub layout: [u8; 16],
}

impl MapParams {
    /// Checks the granularity (a power of two in range); layout zero.
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
            layout: [0; 16],
        })
    }
    /// The same parameters for the blob layout `layout` (an opaque digest
    /// of how the caller's bootstrap lays the blob out).
    pub fn with_layout(self, layout: [u8; 16]) -> MapParams {
        MapParams { layout, ..self }
    }
    /// Number of ranges: `ceil(blob_size / granularity)`.
    pub fn range_count(&self) -> u64 {
        self.blob_size.div_ceil(u64::from(self.granularity))
    }
    /// Length of a valid map file: header, live block and
    /// `ceil(ranges / 64)` words.
    pub fn file_len(&self) -> u64 {
        MAP_BITS_OFFSET as u64 + self.range_count().div_ceil(64) * 8
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
            layout: self.layout,
            reserved1: [0; 8],
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
    /// The map path is a symlink (or another non-regular file): replaced,
    /// never followed.
    #[error("not a regular file")]
    NotRegular,
    /// The header is valid for this blob but records another layout: never
    /// a reset, [`RangeBitmap::open`] refuses the map instead
    /// ([`CacheError::LayoutConflict`]).
    #[error("layout {}, expected {}", hex::encode(found), hex::encode(expected))]
    Layout {
        /// In the header.
        found: [u8; 16],
        /// Expected by the caller.
        expected: [u8; 16],
    },
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
/// (length, magic, version, size, checksum, reserved, internal consistency
/// and the file length it implies), then against what the caller expects:
/// blob id, layout ([`ResetReason::Layout`]: a conflict, not a reset), blob
/// size, granularity. `file_len` is the whole file's length; `bytes` needs
/// only hold its first [`MAP_HEADER_SIZE`] bytes. Never panics, whatever
/// the bytes.
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
    if h.reserved0.get() != 0 || h.reserved1 != [0; 8] {
        return Err(ResetReason::Reserved);
    }
    // The header's own parameters, consistent with themselves and the file.
    let own = MapParams::new(BlobId(h.blob_id), h.blob_size.get(), h.granularity.get()).map_err(
        |_| ResetReason::Granularity {
            found: h.granularity.get(),
            expected: expect.granularity,
        },
    )?;
    if h.range_count.get() != own.range_count() {
        return Err(ResetReason::RangeCount(h.range_count.get()));
    }
    if file_len != own.file_len() {
        return Err(ResetReason::FileLength {
            found: file_len,
            expected: own.file_len(),
        });
    }
    check_expected(&h, expect)
}

/// The second half of [`check_header`]: a self-consistent header against
/// the caller's parameters.
fn check_expected(h: &MapHeader, expect: &MapParams) -> Result<(), ResetReason> {
    if h.blob_id != expect.blob.0 {
        return Err(ResetReason::BlobId(BlobId(h.blob_id)));
    }
    if h.layout != expect.layout {
        return Err(ResetReason::Layout {
            found: h.layout,
            expected: expect.layout,
        });
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
    Ok(())
}

/// An open, mmapped range bitmap.
///
/// The mmap contract, stated once: the map is `MAP_SHARED` over a file whose
/// length was checked to be exactly header + live block + words, and no
/// process truncates or rewrites a map file in place (resets go through
/// rename), so every byte of the mapping stays valid for its lifetime. The
/// header bytes are never written after creation; the generation and the
/// words are only accessed as `AtomicU64`, by this process and any other, so
/// there is no non-atomic access to race with. The mapping is never
/// borrowed mutably (no `DerefMut` on `map`).
pub struct RangeBitmap {
    map: Mapping,
    /// The descriptor the map was opened or created through (the shared
    /// `flock` of [`super::BlobCache`] is taken on it, not on the path).
    file: File,
    params: MapParams,
    words: usize,
    path: PathBuf,
    storage: Arc<dyn Storage>,
}

/// The mapping of a map file: writable (the owner of the cache) or
/// read-only (descriptors handed over by a blob manager, opened
/// `O_RDONLY`: a store into such a mapping would fault, so every mutator
/// refuses with [`CacheError::ReadOnly`] before touching it).
enum Mapping {
    /// `PROT_READ | PROT_WRITE`, shared.
    Rw(MmapMut),
    /// `PROT_READ`, shared.
    Ro(Mmap),
}

impl Mapping {
    fn as_ptr(&self) -> *const u8 {
        match self {
            Mapping::Rw(m) => m.as_ptr(),
            Mapping::Ro(m) => m.as_ptr(),
        }
    }
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

/// `DIR/.<blob hex>.map.tmp.<pid>.<random hex>`: where a map is created
/// before it is renamed into place.
pub fn temp_map_path(dir: &Path, blob: &BlobId) -> PathBuf {
    dir.join(format!(
        ".{}.map.tmp.{}.{:016x}",
        blob.to_hex(),
        std::process::id(),
        io::random_u64()
    ))
}

/// Fails with [`CacheError::LayoutConflict`] if the map of `params.blob` in
/// `dir` is one [`RangeBitmap::open`] would refuse; anything else (missing,
/// unreadable, invalid, valid) is `Ok`.
pub fn check_layout(dir: &Path, params: &MapParams) -> Result<(), CacheError> {
    let Ok(file) = io::open_existing(&map_path(dir, &params.blob)) else {
        return Ok(());
    };
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return Ok(());
    };
    let mut head = [0u8; MAP_HEADER_SIZE];
    let n = (len as usize).min(MAP_HEADER_SIZE);
    if file.read_exact_at(&mut head[..n], 0).is_err() {
        return Ok(());
    }
    match check_header(&head[..n], len, params) {
        Err(ResetReason::Layout { found, expected }) => Err(CacheError::LayoutConflict {
            blob: params.blob,
            found,
            expected,
        }),
        _ => Ok(()),
    }
}

impl RangeBitmap {
    /// Opens the map for `params` in `dir`, reusing it if its header checks
    /// out, refusing it if it records another layout
    /// ([`CacheError::LayoutConflict`]), otherwise replacing it by an
    /// all-clear one. Other errors are I/O failures only.
    pub fn open(dir: &Path, params: MapParams) -> Result<(RangeBitmap, Opened), CacheError> {
        Self::open_with(dir, params, io::real())
    }

    /// [`RangeBitmap::open`] over `storage`.
    pub fn open_with(
        dir: &Path,
        params: MapParams,
        storage: Arc<dyn Storage>,
    ) -> Result<(RangeBitmap, Opened), CacheError> {
        let path = map_path(dir, &params.blob);
        let file = match io::open_existing(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok((Self::create_with(dir, params, storage)?, Opened::Created));
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                let map = Self::create_with(dir, params, storage)?;
                let reason = ResetReason::NotRegular;
                return Ok((map, Opened::Reset { reason }));
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let meta = file.metadata().map_err(|e| io_err(&path, e))?;
        let len = meta.len();
        let mut head = [0u8; MAP_HEADER_SIZE];
        let n = (len as usize).min(MAP_HEADER_SIZE);
        file.read_exact_at(&mut head[..n], 0)
            .map_err(|e| io_err(&path, e))?;
        let checked = match meta.is_file() {
            true => check_header(&head[..n], len, &params),
            false => Err(ResetReason::NotRegular),
        };
        match checked {
            Ok(()) => Ok((Self::map(file, params, path, storage)?, Opened::Reused)),
            Err(ResetReason::Layout { found, expected }) => Err(CacheError::LayoutConflict {
                blob: params.blob,
                found,
                expected,
            }),
            Err(reason) => {
                drop(file);
                let map = Self::create_with(dir, params, storage)?;
                Ok((map, Opened::Reset { reason }))
            }
        }
    }

    /// Replaces any map for `params` in `dir` by an all-clear one: header and
    /// zeroed words to a new temporary file (`O_EXCL | O_NOFOLLOW`, 0600,
    /// unpredictable name), fsync, rename, fsync the directory.
    pub fn create(dir: &Path, params: MapParams) -> Result<RangeBitmap, CacheError> {
        Self::create_with(dir, params, io::real())
    }

    /// [`RangeBitmap::create`] over `storage`.
    pub fn create_with(
        dir: &Path,
        params: MapParams,
        storage: Arc<dyn Storage>,
    ) -> Result<RangeBitmap, CacheError> {
        let path = map_path(dir, &params.blob);
        let tmp = temp_map_path(dir, &params.blob);
        let file = storage.create_new(&tmp).map_err(|e| io_err(&tmp, e))?;
        let written = storage
            .write_at(&file, &tmp, 0, params.header().as_bytes())
            .and_then(|()| file.set_len(params.file_len()))
            .and_then(|()| storage.sync_all(&file, &tmp))
            .and_then(|()| storage.rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&tmp, e));
        }
        storage.sync_dir(dir).map_err(|e| io_err(dir, e))?;
        // Map the file we wrote (now under its final name) rather than
        // reopening the path, which a concurrent creator may have replaced.
        Self::map(file, params, path, storage)
    }

    fn map(
        file: File,
        params: MapParams,
        path: PathBuf,
        storage: Arc<dyn Storage>,
    ) -> Result<RangeBitmap, CacheError> {
        let len = usize::try_from(params.file_len()).map_err(|_| CacheError::TooLarge {
            blob_size: params.blob_size,
        })?;
        // SAFETY: see the mmap contract on `RangeBitmap`: the file's length
        // was checked (or just written) to be `len`, and map files are never
        // truncated or rewritten in place.
        let map =
            unsafe { MmapOptions::new().len(len).map_mut(&file) }.map_err(|e| io_err(&path, e))?;
        let words = (len - MAP_BITS_OFFSET) / 8;
        Ok(RangeBitmap {
            map: Mapping::Rw(map),
            file,
            params,
            words,
            path,
            storage,
        })
    }

    /// A read-only map over `file` (a descriptor opened `O_RDONLY`, as a
    /// blob manager hands out), checked against `expect` with
    /// [`check_header`]: a valid map for another layout is
    /// [`CacheError::LayoutConflict`], any other doubt
    /// [`CacheError::BadMap`]. Nothing is ever reset or written: every
    /// mutator of the result fails with [`CacheError::ReadOnly`].
    pub fn from_fd(
        file: File,
        expect: MapParams,
        path: PathBuf,
    ) -> Result<RangeBitmap, CacheError> {
        let meta = file.metadata().map_err(|e| io_err(&path, e))?;
        if !meta.is_file() {
            return Err(CacheError::BadMap(ResetReason::NotRegular));
        }
        let len = meta.len();
        let mut head = [0u8; MAP_HEADER_SIZE];
        let n = usize::try_from(len)
            .unwrap_or(MAP_HEADER_SIZE)
            .min(MAP_HEADER_SIZE);
        file.read_exact_at(&mut head[..n], 0)
            .map_err(|e| io_err(&path, e))?;
        match check_header(&head[..n], len, &expect) {
            Ok(()) => {}
            Err(ResetReason::Layout { found, expected }) => {
                return Err(CacheError::LayoutConflict {
                    blob: expect.blob,
                    found,
                    expected,
                })
            }
            Err(reason) => return Err(CacheError::BadMap(reason)),
        }
        let len = usize::try_from(expect.file_len()).map_err(|_| CacheError::TooLarge {
            blob_size: expect.blob_size,
        })?;
        // SAFETY: see the mmap contract on `RangeBitmap`: the file's length
        // was just checked to be `len` (header + live block + words), and
        // map files are never truncated or rewritten in place. The mapping
        // is read-only; nothing here ever stores into it.
        let map =
            unsafe { MmapOptions::new().len(len).map(&file) }.map_err(|e| io_err(&path, e))?;
        Ok(RangeBitmap {
            map: Mapping::Ro(map),
            file,
            params: expect,
            words: (len - MAP_BITS_OFFSET) / 8,
            path,
            storage: io::real(),
        })
    }

    /// Whether this map is read-only ([`RangeBitmap::from_fd`]).
    pub fn is_read_only(&self) -> bool {
        matches!(self.map, Mapping::Ro(_))
    }

    /// The writable mapping, or [`CacheError::ReadOnly`].
    fn writable(&self) -> Result<&MmapMut, CacheError> {
        match &self.map {
            Mapping::Rw(m) => Ok(m),
            Mapping::Ro(_) => Err(CacheError::ReadOnly),
        }
    }

    /// The descriptor of the map file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn generation_word(&self) -> &AtomicU64 {
        // SAFETY: (mmap contract on `RangeBitmap`.) The mapping is at least
        // `MAP_BITS_OFFSET` bytes long, page-aligned, and `MAP_LIVE_OFFSET`
        // is a multiple of 8, so the pointer is in bounds and 8-aligned. The
        // live block is only ever accessed through this atomic (no `&mut`
        // to the map exists); the reference borrows `self`.
        unsafe { &*self.map.as_ptr().add(MAP_LIVE_OFFSET).cast::<AtomicU64>() }
    }

    fn words(&self) -> &[AtomicU64] {
        let base = self.map.as_ptr();
        // SAFETY: (mmap contract on `RangeBitmap`.) Alignment: mmap returns a
        // page-aligned address and `MAP_BITS_OFFSET` is a multiple of 8, so
        // `base + MAP_BITS_OFFSET` is 8-aligned as `AtomicU64` requires.
        // Bounds: `map` is exactly `MAP_BITS_OFFSET + 8 * words` bytes long.
        // Aliasing: the word bytes are never accessed other than through
        // these atomics (no `&mut` to the map exists, and other processes
        // only use atomic RMW on them), and `AtomicU64` permits shared
        // mutation through `&`. The slice borrows `self`, so it cannot
        // outlive the mapping.
        unsafe {
            std::slice::from_raw_parts(base.add(MAP_BITS_OFFSET).cast::<AtomicU64>(), self.words)
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

    /// The generation counter (`SeqCst`): bumped, by any process, before
    /// any bit is cleared. Equal values loaded before a bit check and after
    /// the `pread` that followed it mean no range was cleared in between.
    pub fn generation(&self) -> u64 {
        self.generation_word().load(Ordering::SeqCst)
    }

    /// Bumps the generation (`SeqCst`) and returns the new value. Done by
    /// [`RangeBitmap::clear`] and [`RangeBitmap::clear_ranges`] before they
    /// clear anything.
    /// Fails with [`CacheError::ReadOnly`] on a read-only map.
    pub fn bump_generation(&self) -> Result<u64, CacheError> {
        self.writable()?;
        Ok(self
            .generation_word()
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_add(1))
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
    /// (see [`super::BlobCache::commit`]). Returns whether it was clear.
    pub fn mark_ready(&self, range: u64) -> Result<bool, CacheError> {
        self.writable()?;
        let (w, bit) = self.locate(range)?;
        Ok(self.words()[w].fetch_or(bit, Ordering::Release) & bit == 0)
    }

    /// Clears range `range`'s bit, bumping the generation first. Not
    /// durable until flushed.
    pub fn clear(&self, range: u64) -> Result<(), CacheError> {
        self.writable()?;
        self.locate(range)?;
        self.clear_ranges(range..range + 1)
    }

    /// Clears the bits of `ranges` (bounds checked first), bumping the
    /// generation once before the first. Not durable until flushed.
    pub fn clear_ranges(&self, ranges: Range<u64>) -> Result<(), CacheError> {
        self.writable()?;
        if ranges.is_empty() {
            return Ok(());
        }
        self.locate(ranges.end - 1)?;
        self.bump_generation()?;
        for r in ranges {
            let (w, bit) = self.locate(r)?;
            self.words()[w].fetch_and(!bit, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Number of ready ranges.
    pub fn ready_count(&self) -> u64 {
        self.words()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// The maximal runs of ready ranges, in order. A word at a time: an
    /// all-clear or all-set word of 64 ranges costs one load.
    pub fn ready_runs(&self) -> Vec<Range<u64>> {
        let n = self.params.range_count();
        let mut runs: Vec<Range<u64>> = Vec::new();
        let mut push = |r: Range<u64>| match runs.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => runs.push(r),
        };
        for (i, w) in self.words().iter().enumerate() {
            let (mut bits, base) = (w.load(Ordering::Relaxed), i as u64 * 64);
            while bits != 0 {
                let start = u64::from(bits.trailing_zeros());
                let len = u64::from((bits >> start).trailing_ones());
                let end = (base + start + len).min(n);
                if base + start < end {
                    push(base + start..end);
                }
                // The bits below `start` are clear: clear the run too.
                bits &= u64::MAX.checked_shl((start + len) as u32).unwrap_or(0);
            }
        }
        runs
    }

    /// Writes the bits back to the file (`msync(MS_SYNC)`) and waits.
    pub fn flush(&self) -> Result<(), CacheError> {
        let map = self.writable()?;
        self.storage
            .msync(map, &self.path, 0, map.len())
            .map_err(|e| io_err(&self.path, e))
    }

    /// Like [`RangeBitmap::flush`], for the words holding `ranges` only.
    pub fn flush_ranges(&self, ranges: Range<u64>) -> Result<(), CacheError> {
        let map = self.writable()?;
        if ranges.is_empty() {
            return Ok(());
        }
        let (first, _) = self.locate(ranges.start)?;
        let (last, _) = self.locate(ranges.end - 1)?;
        let start = MAP_BITS_OFFSET + first * 8;
        let len = (last - first + 1) * 8;
        self.storage
            .msync(map, &self.path, start, len)
            .map_err(|e| io_err(&self.path, e))
    }
}
