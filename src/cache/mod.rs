//! The local blob cache on disk: per blob, a sparse data file and a
//! persistent range bitmap in `--cache-dir`.
//!
//! - [`CacheFile`] (`<blob hex>.data`): the blob's uncompressed address space,
//!   chunk data at its `uncompressed_offset`, holes elsewhere;
//! - [`RangeBitmap`] (`<blob hex>.map`): a checksummed header and one bit per
//!   range (4 KiB: the frame alignment of `ALIGNED` blobs), mmapped shared so that several processes can
//!   test and set bits without talking to each other;
//! - [`BlobCache`]: the two together, and the only place that orders their
//!   writes.
//!
//! The crash rule (normative text in `docs/FORMAT.md`, "Cache files"): bytes
//! are written, then made durable with one `fdatasync` per batch, and only
//! then are the bits of the ranges they fully cover set. Eviction and
//! invalidation run the other way: bump the generation, clear the bits,
//! `msync` them, then (eviction) punch the hole. Bytes are never written into
//! a ready range: a fill over ready ranges invalidates them first. So after a
//! power loss every set bit still names durable, verified bytes; a bit that
//! was lost costs a re-fetch. Every durable operation goes through the
//! [`io::Storage`] seam, so tests can simulate a power loss after each one
//! ([`io::testing::Crash`], `tests.rs` / `crash_tests.rs`).
//!
//! A bitmap whose header is doubtful in any way is replaced by an all-clear
//! one ([`Opened::Reset`]); the one exception is a valid header for the same
//! blob with another `layout` (another image claims this blob id with a
//! different layout): that cache is not ours to destroy, and opening it
//! fails with [`CacheError::LayoutConflict`]. Otherwise opening a cache never
//! fails because of what is in the files, only on I/O errors.
//!
//! The generation counter in the map ([`BlobCache::generation`]) lets a
//! reader detect that a range it read may have been cleared (and rewritten)
//! meanwhile: it changes before any bit is cleared, by any process.
//!
//! Files are named from a [`BlobId`] (hex of 32 bytes), never from a string
//! taken from outside. The directory is created 0700 ([`create_dir`]), files
//! 0600 with `O_EXCL | O_NOFOLLOW`, and existing files are opened with
//! `O_NOFOLLOW`: a planted symlink is replaced (map) or refused (data file),
//! never written through.
//!
//! The read path, single flight, quota and eviction policy live in
//! `src/fetch/`; this module is the on-disk mechanism they drive.

pub mod bitmap;
pub mod blobfile;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod hardening_tests;
pub mod io;
#[cfg(test)]
mod readonly_tests;
#[cfg(test)]
mod tests;
pub mod tools;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use crate::backend::BlobId;

pub use bitmap::{MapParams, Opened, RangeBitmap, ResetReason, DEFAULT_GRANULARITY};
pub use blobfile::{CacheFile, DataState};

/// Cache failures. Content problems in the files are never errors (they
/// reset the cache); these are I/O failures and caller mistakes.
#[derive(Debug, Error)]
pub enum CacheError {
    /// An I/O error on a cache file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A byte span outside the blob's uncompressed size.
    #[error("span {offset}+{len} outside the blob ({size} bytes)")]
    OutOfBounds {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Blob size.
        size: u64,
    },
    /// A range index outside the bitmap.
    #[error("range {range} outside the bitmap ({count} ranges)")]
    RangeOutOfBounds {
        /// Requested range.
        range: u64,
        /// Number of ranges.
        count: u64,
    },
    /// Granularity not a power of two in 4 KiB ..= 16 MiB.
    #[error("granularity {0} is not a power of two in 4 KiB ..= 16 MiB")]
    Granularity(u32),
    /// The bitmap would not fit in this process's address space.
    #[error("blob of {blob_size} bytes too large to map its bitmap")]
    TooLarge {
        /// Blob size.
        blob_size: u64,
    },
    /// The blob's map is valid but was filled for another layout (another
    /// image claims the same blob id with a different layout). It is left
    /// alone; serve this blob without the disk cache.
    #[error(
        "cache of blob {blob} was filled for layout {}, not {}",
        hex::encode(found),
        hex::encode(expected)
    )]
    LayoutConflict {
        /// The blob.
        blob: BlobId,
        /// The layout in the map.
        found: [u8; 16],
        /// The layout asked for.
        expected: [u8; 16],
    },
    /// A mutator called on a read-only cache ([`BlobCache::from_fds`]):
    /// refused before anything is touched.
    #[error("the cache is read-only (opened from a blob manager's descriptors)")]
    ReadOnly,
    /// A map handed over as a descriptor is not one for the expected blob
    /// (it is never reset: it is not ours).
    #[error("map descriptor refused: {0}")]
    BadMap(ResetReason),
    /// A data file handed over as a descriptor is not a regular file of
    /// the blob's size.
    #[error("data descriptor refused: {found:?} bytes (regular file), expected {expected}")]
    BadData {
        /// Its length, `None` if it is not a regular file.
        found: Option<u64>,
        /// The blob's uncompressed size.
        expected: u64,
    },
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates a cache directory (and missing parents) with mode 0700. An
/// existing directory is left as it is.
pub fn create_dir(dir: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(io::DIR_MODE)
        .create(dir)
        .map_err(|e| io_err(dir, e))
}

/// One blob's cache: its data file and its range bitmap.
#[derive(Debug)]
pub struct BlobCache {
    map: RangeBitmap,
    data: CacheFile,
    /// The map file, held with a shared `flock` while this cache is open:
    /// `rafs cache gc` takes an exclusive one before removing a blob, so it
    /// never deletes the cache of a blob a daemon is using. `None` for a
    /// read-only cache (the blob manager that handed it over holds one).
    _lock: Option<Flock<std::fs::File>>,
}

/// What [`BlobCache::commit_reporting`] did.
#[derive(Debug)]
pub struct Committed {
    /// Ranges newly marked ready.
    pub marked: u64,
    /// Indices of the fills written (the others were ready already).
    pub written: Vec<usize>,
    /// The map generation the written fills are valid at.
    pub generation: u64,
}

/// Fills [`BlobCache::stage`] wrote but has not made ready yet: what
/// [`BlobCache::seal`] needs to finish the commit.
#[derive(Debug)]
pub struct Staged {
    /// Indices of the fills written (the others were ready already).
    pub written: Vec<usize>,
    /// The map generation the written fills are valid at.
    pub generation: u64,
    /// The written fills' cover spans, `offset..cover_end`.
    spans: Vec<(u64, u64)>,
}

/// A fill for [`BlobCache::commit_covering`]: `bytes` go at `offset`, and
/// the ranges lying inside `offset..cover_end` are marked ready. `cover_end`
/// may exceed the end of `bytes` only over padding no chunk references (an
/// `ALIGNED` blob's frame tail).
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    /// Where the bytes go.
    pub offset: u64,
    /// Verified bytes.
    pub bytes: &'a [u8],
    /// End of the span these bytes make ready (>= offset + bytes.len()).
    pub cover_end: u64,
}

/// Tries of [`BlobCache::open_with`] whose files were replaced before its
/// lock was held (each a reset by a concurrent opener or a `gc`).
const OPEN_TRIES: usize = 8;

impl BlobCache {
    /// Opens (or creates) the cache of `params.blob` in `dir`.
    ///
    /// If the data file is missing or has the wrong length, the bitmap is
    /// reset *before* the data file is created or resized: the other order
    /// could leave, after a crash, old set bits over a fresh file of holes.
    /// A map filled for another layout fails with
    /// [`CacheError::LayoutConflict`] and is left alone.
    pub fn open(dir: &Path, params: MapParams) -> Result<(BlobCache, Opened), CacheError> {
        Self::open_with(dir, params, io::real())
    }

    /// [`BlobCache::open`] with every durable operation going through
    /// `storage` (tests: [`io::testing`]).
    pub fn open_with(
        dir: &Path,
        params: MapParams,
        storage: Arc<dyn io::Storage>,
    ) -> Result<(BlobCache, Opened), CacheError> {
        // Between opening the files and taking the shared lock, another
        // opener may reset the map (a new file renamed over ours) and `gc`
        // may remove both: two processes would then keep separate bits and
        // generations over one data file, and serve each other's evicted
        // (punched) frames as zeros. Once the lock is held nobody resets or
        // removes them, so the files opened must be those under the names.
        for _ in 0..OPEN_TRIES {
            let (cache, opened) = Self::open_once(dir, params, storage.clone())?;
            if cache.is_current(dir) {
                return Ok((cache, opened));
            }
        }
        Err(io_err(dir, std::io::ErrorKind::WouldBlock.into()))
    }

    /// Whether the open map and data file are the files at their paths in
    /// `dir` (same device and inode).
    fn is_current(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let same =
            |f: &std::fs::File, p: PathBuf| match (f.metadata(), std::fs::symlink_metadata(p)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
        let blob = &self.map.params().blob;
        same(self.map.file(), bitmap::map_path(dir, blob))
            && same(self.data.file(), blobfile::data_path(dir, blob))
    }

    /// One try of [`BlobCache::open_with`].
    fn open_once(
        dir: &Path,
        params: MapParams,
        storage: Arc<dyn io::Storage>,
    ) -> Result<(BlobCache, Opened), CacheError> {
        let data_ok = std::fs::symlink_metadata(blobfile::data_path(dir, &params.blob))
            .is_ok_and(|m| m.is_file() && m.len() == params.blob_size);
        let (map, opened) = if data_ok {
            RangeBitmap::open_with(dir, params, storage.clone())?
        } else {
            let path = bitmap::map_path(dir, &params.blob);
            let existed = std::fs::symlink_metadata(&path).is_ok();
            if existed {
                // A conflicting layout is refused even with a bad data file.
                bitmap::check_layout(dir, &params)?;
            }
            let map = RangeBitmap::create_with(dir, params, storage.clone())?;
            let opened = match existed {
                true => Opened::Reset {
                    reason: ResetReason::DataFile,
                },
                false => Opened::Created,
            };
            (map, opened)
        };
        let (data, _) = CacheFile::open_with(dir, &params.blob, params.blob_size, storage)?;
        let path = bitmap::map_path(dir, &params.blob);
        let file = map.file().try_clone().map_err(|e| io_err(&path, e))?;
        let lock =
            Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| io_err(&path, e.into()))?;
        Ok((
            BlobCache {
                map,
                data,
                _lock: Some(lock),
            },
            opened,
        ))
    }

    /// A read-only cache over descriptors a blob manager handed over
    /// (`O_RDONLY`): `data` must be a regular file of `expect.blob_size`
    /// bytes ([`CacheError::BadData`]), `map` a map for `expect`
    /// ([`CacheError::LayoutConflict`] for another layout,
    /// [`CacheError::BadMap`] for anything else), mapped read-only and
    /// shared. Reads, bit checks and the generation work as for any cache
    /// and see the manager's changes; every mutator fails with
    /// [`CacheError::ReadOnly`].
    pub fn from_fds(
        data: std::os::fd::OwnedFd,
        map: std::os::fd::OwnedFd,
        expect: MapParams,
    ) -> Result<BlobCache, CacheError> {
        let hex = expect.blob.to_hex();
        let map_path = PathBuf::from(format!("<blob manager>/{hex}.map"));
        let map = RangeBitmap::from_fd(std::fs::File::from(map), expect, map_path)?;
        let data_path = PathBuf::from(format!("<blob manager>/{hex}.data"));
        let data = CacheFile::from_fd(std::fs::File::from(data), expect.blob_size, data_path)?;
        Ok(BlobCache {
            map,
            data,
            _lock: None,
        })
    }

    /// Whether this cache is read-only ([`BlobCache::from_fds`]).
    pub fn is_read_only(&self) -> bool {
        self.map.is_read_only()
    }

    fn writable(&self) -> Result<(), CacheError> {
        match self.is_read_only() {
            true => Err(CacheError::ReadOnly),
            false => Ok(()),
        }
    }

    /// The range bitmap.
    pub fn bitmap(&self) -> &RangeBitmap {
        &self.map
    }

    /// The data file.
    pub fn data(&self) -> &CacheFile {
        &self.data
    }

    /// The map's generation counter ([`RangeBitmap::generation`]): it
    /// changes before any range is cleared (evicted or invalidated), by any
    /// process. Load it before the bit check and again after the read; if
    /// it did not change, the bytes read are those the bits vouched for.
    pub fn generation(&self) -> u64 {
        self.map.generation()
    }

    /// The ranges touched by the byte span `offset..offset + len`.
    pub fn ranges_touching(&self, offset: u64, len: u64) -> Range<u64> {
        let g = u64::from(self.map.params().granularity);
        if len == 0 {
            return offset / g..offset / g;
        }
        offset / g..(offset + len - 1) / g + 1
    }

    /// The ranges lying entirely inside `start..end` (the last range of the
    /// blob may be shorter than the granularity; it counts as covered when
    /// `end` is the blob's end).
    fn ranges_covered(&self, start: u64, end: u64) -> Range<u64> {
        let g = u64::from(self.map.params().granularity);
        let first = start.div_ceil(g);
        let last = if end == self.data.size() {
            self.map.range_count()
        } else {
            end / g
        };
        first..last.max(first)
    }

    /// Stores verified bytes and marks them ready, in the order the crash
    /// rule requires: `pwrite` every span, one `fdatasync`, then set the bit
    /// of every range the spans (merged) cover entirely. Returns the number
    /// of ranges newly marked.
    ///
    /// A range only partly covered stays unset, even if an earlier commit
    /// wrote its other part: the fetcher writes whole ranges (the
    /// uncompressed layout puts a blob's chunks back to back, so a range is
    /// a contiguous run of chunk data).
    ///
    /// Bytes are never written into a ready range: see
    /// [`BlobCache::commit_covering`].
    pub fn commit(&self, writes: &[(u64, &[u8])]) -> Result<u64, CacheError> {
        let fills: Vec<Fill<'_>> = writes
            .iter()
            .map(|&(offset, bytes)| Fill {
                offset,
                bytes,
                cover_end: offset.saturating_add(bytes.len() as u64),
            })
            .collect();
        self.commit_covering(&fills)
    }

    /// [`BlobCache::commit`] with explicit cover spans (see [`Fill`]).
    ///
    /// A fill whose every range (of its cover) is already ready is skipped:
    /// another process or an earlier commit filled it. In a fill whose
    /// cover is partly ready, the ready ranges its bytes touch are
    /// invalidated ([`BlobCache::invalidate`]: generation bumped, bits
    /// cleared and flushed) before anything is written.
    pub fn commit_covering(&self, fills: &[Fill<'_>]) -> Result<u64, CacheError> {
        Ok(self.commit_reporting(fills)?.marked)
    }

    /// [`BlobCache::commit_covering`], saying which fills it wrote and the
    /// map generation they were written at: the bytes of those fills are
    /// what a reader finds there for as long as the generation has not
    /// moved (every later change to a ready range bumps it first).
    pub fn commit_reporting(&self, fills: &[Fill<'_>]) -> Result<Committed, CacheError> {
        let staged = self.stage(fills)?;
        let marked = self.seal(&[&staged])?;
        Ok(Committed {
            marked,
            written: staged.written,
            generation: staged.generation,
        })
    }

    /// The first half of [`BlobCache::commit_reporting`]: checks the
    /// fills, skips those whose cover is ready, invalidates the ready
    /// ranges the others touch and `pwrite`s them. Nothing is durable and
    /// no bit is set until [`BlobCache::seal`]; until then the bytes are
    /// readable (the writer's page cache) but not ready. The caller must
    /// keep anybody else from writing the spans in between (the fetcher
    /// holds their [`blobfile::SpanLock`]s).
    pub fn stage(&self, fills: &[Fill<'_>]) -> Result<Staged, CacheError> {
        self.writable()?;
        let size = self.data.size();
        for f in fills {
            let len = f.bytes.len() as u64;
            match f.offset.checked_add(len) {
                Some(end) if end <= f.cover_end && f.cover_end <= size => {}
                _ => {
                    return Err(CacheError::OutOfBounds {
                        offset: f.offset,
                        len: f.cover_end.saturating_sub(f.offset).max(len),
                        size,
                    })
                }
            }
        }
        let mut todo = Vec::with_capacity(fills.len());
        let mut written = Vec::with_capacity(fills.len());
        for (i, f) in fills.iter().enumerate() {
            let cover = self.ranges_touching(f.offset, f.cover_end - f.offset);
            if !cover.is_empty() && self.map.all_ready(cover)? {
                continue;
            }
            let touched = self.ranges_touching(f.offset, f.bytes.len() as u64);
            self.invalidate_ready(touched)?;
            todo.push(f);
            written.push(i);
        }
        // After the invalidations, before the writes: any later change to
        // these ranges bumps the generation past this.
        let generation = self.generation();
        for f in &todo {
            self.data.write_at(f.offset, f.bytes)?;
        }
        let spans = todo.iter().map(|f| (f.offset, f.cover_end)).collect();
        Ok(Staged {
            written,
            generation,
            spans,
        })
    }

    /// The second half of [`BlobCache::commit_reporting`], for any number
    /// of [`BlobCache::stage`]s of this cache: one `fdatasync`, then the
    /// bit of every range the staged spans (merged) cover entirely.
    /// Returns the number of ranges newly marked.
    pub fn seal(&self, staged: &[&Staged]) -> Result<u64, CacheError> {
        let mut spans: Vec<(u64, u64)> = staged
            .iter()
            .flat_map(|s| s.spans.iter().copied())
            .collect();
        if spans.is_empty() {
            return Ok(0);
        }
        spans.sort_unstable();
        self.data.sync()?;
        let mut marked = 0;
        let mut merged: Option<(u64, u64)> = None;
        let sentinel = (u64::MAX, u64::MAX);
        for (start, end) in spans.into_iter().chain(std::iter::once(sentinel)) {
            match merged {
                Some((s, e)) if start <= e => merged = Some((s, e.max(end))),
                Some((s, e)) => {
                    for r in self.ranges_covered(s, e) {
                        marked += u64::from(self.map.mark_ready(r)?);
                    }
                    merged = Some((start, end));
                }
                None => merged = Some((start, end)),
            }
        }
        Ok(marked)
    }

    /// Invalidates the ready ranges among `ranges` (each maximal run of
    /// them), if any.
    fn invalidate_ready(&self, ranges: Range<u64>) -> Result<(), CacheError> {
        let mut run: Option<u64> = None;
        for r in ranges.clone() {
            match (self.map.is_ready(r)?, run) {
                (true, None) => run = Some(r),
                (false, Some(s)) => {
                    self.invalidate(s..r)?;
                    run = None;
                }
                _ => {}
            }
        }
        match run {
            Some(s) => self.invalidate(s..ranges.end),
            None => Ok(()),
        }
    }

    /// Appends the bytes `offset..offset + len` to `out` if every range
    /// they touch is ready (one `pread`, straight into `out`), and returns
    /// whether it did. Like [`BlobCache::read_if_ready`], the bits are
    /// checked before and after; on a miss `out` is left as it was.
    pub fn read_ready_into(
        &self,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, CacheError> {
        let size = self.data.size();
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(CacheError::OutOfBounds {
                offset,
                len: len as u64,
                size,
            });
        }
        let ranges = self.ranges_touching(offset, len as u64);
        if !self.map.all_ready(ranges.clone())? {
            return Ok(false);
        }
        let at = out.len();
        out.resize(at + len, 0);
        let read = self.data.read_into(offset, &mut out[at..]);
        if read.is_err() || !self.map.all_ready(ranges)? {
            out.truncate(at);
            return read.map(|()| false);
        }
        Ok(true)
    }

    /// The bytes `offset..offset + len` if every range they touch is ready,
    /// `None` otherwise (a miss: fetch, verify, [`BlobCache::commit`]).
    ///
    /// The bits are checked again after the read, so a range evicted while
    /// it was being read is a miss, not zeros. That does not cover an
    /// eviction *and* re-fetch both inside the read; eviction must not touch
    /// ranges with reads in flight (the eviction policy's job).
    pub fn read_if_ready(&self, offset: u64, len: usize) -> Result<Option<Vec<u8>>, CacheError> {
        let mut out = Vec::with_capacity(len);
        Ok(self.read_ready_into(offset, len, &mut out)?.then_some(out))
    }

    /// Marks `ranges` not ready: bump the generation, clear their bits,
    /// `msync` them. Their bytes stay in the data file, meaningless; a
    /// later [`BlobCache::commit`] may rewrite them. A reader that loaded
    /// the generation before this started sees it changed.
    pub fn invalidate(&self, ranges: Range<u64>) -> Result<(), CacheError> {
        self.writable()?;
        if ranges.is_empty() {
            return Ok(());
        }
        self.map.clear_ranges(ranges.clone())?;
        self.map.flush_ranges(ranges)
    }

    /// Evicts `ranges`: bump the generation, clear their bits, `msync` the
    /// bitmap, then punch the hole. The other order could, after a crash,
    /// leave a set bit over a hole (the punch durable, the cleared bit
    /// not), which reads as zeros.
    pub fn punch(&self, ranges: Range<u64>) -> Result<(), CacheError> {
        self.writable()?;
        if ranges.is_empty() {
            return Ok(());
        }
        if ranges.end > self.map.range_count() {
            return Err(CacheError::RangeOutOfBounds {
                range: ranges.end - 1,
                count: self.map.range_count(),
            });
        }
        self.invalidate(ranges.clone())?;
        let g = u64::from(self.map.params().granularity);
        let start = ranges.start * g;
        let end = (ranges.end * g).min(self.data.size());
        self.data.punch_hole(start, end - start)
    }
}
