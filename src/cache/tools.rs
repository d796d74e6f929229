//! `rafs cache verify|ls|gc`: operator tools over a cache directory.
//!
//! - `verify` re-reads every chunk whose ranges are all ready, hashes it
//!   with blake3 and compares it with the chunk table of the given
//!   bootstraps. A bad chunk has every range it touches invalidated
//!   (generation bumped, bits cleared and flushed), so the next read
//!   refetches it and a reader that raced the check re-verifies; the data
//!   file is left as it is (a clear bit makes its bytes meaningless). The
//!   map is opened with the layout its own header records: the bytes are
//!   checked against the given bootstraps' digests whatever it is.
//! - `ls` describes every blob in the directory from the file names and the
//!   map headers, read-only: it never opens a cache through [`BlobCache`],
//!   which could reset a map.
//! - `gc` removes the kept images (`images/<hex>/`, see [`images`]) that
//!   are neither named (`--image`) nor in use by a running mount, then the
//!   files of every blob that no given bootstrap and no remaining kept
//!   image references, unless a process holds a lock on its map (a mount
//!   daemon holds `LOCK_SH` on the map of every blob it uses), and stray
//!   temporary map files whose creating process is gone. It needs
//!   `--bootstrap`, `--image` or `--all` (keep only what is in use), so
//!   that a bare `rafs cache gc DIR` never empties a cache; an `--image`
//!   that is not kept is an error before anything is removed.
//!
//! Only names of the form `<64 lower-case hex>.data|.map` are blob files;
//! the blob id is parsed from the name and every path is formatted back from
//! the parsed id, never taken from the directory listing. Anything else is
//! reported and left alone.
//!
//! Exit codes: 0 = fine, 1 = `verify` found (and cleared) bad data, 2 =
//! usage or I/O error (mapped in `cli.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rafs_format::FormatError;
use thiserror::Error;
use zerocopy::FromBytes;

use super::bitmap::{check_header, map_path, MapHeader, MAP_HEADER_SIZE, MAP_LIVE_SIZE};
use super::blobfile::data_path;
use super::{BlobCache, CacheError, MapParams, Opened, ResetReason, DEFAULT_GRANULARITY};
use crate::backend::BlobId;
use crate::image::{Image, ImageError};
use crate::util::human_bytes;

pub mod images;

/// Arguments of `rafs cache`.
#[derive(Debug)]
pub struct CacheArgs {
    /// The cache subcommand.
    pub command: CacheCommand,
}

/// `rafs cache` subcommands.
#[derive(Debug)]
pub enum CacheCommand {
    /// Re-hash every ready chunk against the bootstraps; clear bad ones.
    Verify(VerifyArgs),
    /// List the blobs in a cache directory.
    Ls(LsArgs),
    /// Remove the blobs no given bootstrap uses.
    Gc(GcArgs),
}

/// Arguments of `rafs cache verify`.
#[derive(Debug)]
pub struct VerifyArgs {
    /// The cache directory.
    pub dir: PathBuf,
    /// A bootstrap whose blobs to verify (repeatable).
    pub bootstraps: Vec<PathBuf>,
}

/// Arguments of `rafs cache ls`.
#[derive(Debug)]
pub struct LsArgs {
    /// The cache directory.
    pub dir: PathBuf,
    /// Mark which blobs these bootstraps use (repeatable).
    pub bootstraps: Vec<PathBuf>,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// Arguments of `rafs cache gc`.
#[derive(Debug)]
pub struct GcArgs {
    /// The cache directory.
    pub dir: PathBuf,
    /// A bootstrap whose blobs to keep (repeatable).
    pub bootstraps: Vec<PathBuf>,
    /// A kept image to keep, with its blobs (`sha256:<hex>` or `<hex>`,
    /// repeatable).
    pub images: Vec<String>,
    /// Keep only what is in use (needed when no bootstrap or image is
    /// given).
    pub all: bool,
    /// Print what would be removed, remove nothing.
    pub dry_run: bool,
}

/// Why a cache tool failed (exit code 2).
#[derive(Debug, Error)]
pub enum ToolError {
    /// A bootstrap could not be opened or is invalid.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A bootstrap is inconsistent (cannot happen after validation).
    #[error("{path}: invalid bootstrap: {source}")]
    Format {
        /// Bootstrap path.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
    /// A cache operation failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// An I/O error on the cache directory or one of its files.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `gc` without a bootstrap or image would remove every blob.
    #[error(
        "cache gc needs --bootstrap, --image or --all (refusing to remove every blob \
         and image not in use without being told so)"
    )]
    NoBootstrap,
    /// An `--image` that is not a digest.
    #[error("--image {0:?}: not a sha256 digest (sha256:<64 hex> or <64 hex>)")]
    BadImage(String),
    /// An `--image` that is not kept in the cache directory.
    #[error("--image {0}: no such kept image in the cache directory (nothing removed)")]
    NoSuchImage(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `rafs cache ...`.
pub fn run(args: &CacheArgs) -> anyhow::Result<ExitCode> {
    let code = match &args.command {
        CacheCommand::Verify(a) => verify(a)?,
        CacheCommand::Ls(a) => ls(a)?,
        CacheCommand::Gc(a) => gc(a)?,
    };
    Ok(code)
}

/// One distinct non-hole chunk of a blob, keyed by `uncompressed_offset`.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    offset: u64,
    size: u32,
    digest: [u8; 32],
}

/// What the bootstraps say about one blob.
#[derive(Debug, Default)]
struct BlobRef {
    /// Uncompressed size (the data file's length).
    size: u64,
    /// Distinct chunks by uncompressed offset (empty unless asked for).
    chunks: BTreeMap<u64, Chunk>,
}

/// The blobs of `paths`, merged by id; with their chunks if `with_chunks`.
fn load_blobs(
    paths: &[PathBuf],
    with_chunks: bool,
) -> Result<BTreeMap<BlobId, BlobRef>, ToolError> {
    let mut out: BTreeMap<BlobId, BlobRef> = BTreeMap::new();
    for path in paths {
        let image = Image::open(path)?;
        let b = image.bootstrap().map_err(|source| ToolError::Format {
            path: path.clone(),
            source,
        })?;
        let mut ids = Vec::with_capacity(b.blobs().len());
        for info in b.blobs() {
            let id = BlobId(info.id);
            out.entry(id).or_insert_with(|| BlobRef {
                size: info.uncompressed_size.get(),
                chunks: BTreeMap::new(),
            });
            ids.push(id);
        }
        if !with_chunks {
            continue;
        }
        for c in b.chunks() {
            let size = c.uncompressed_size.get();
            if c.is_hole() || size == 0 {
                continue;
            }
            let Some(blob) = ids
                .get(c.blob_index.get() as usize)
                .and_then(|id| out.get_mut(id))
            else {
                continue;
            };
            let offset = c.uncompressed_offset.get();
            if offset
                .checked_add(u64::from(size))
                .is_none_or(|end| end > blob.size)
            {
                continue;
            }
            blob.chunks.entry(offset).or_insert(Chunk {
                offset,
                size,
                digest: c.digest,
            });
        }
    }
    Ok(out)
}

/// The first 12 hex digits of a blob id, for tables.
fn short(id: &BlobId) -> String {
    id.to_hex()[..12].to_string()
}

// ---------------------------------------------------------------- verify

/// A chunk whose cached bytes do not hash to its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadChunk {
    /// Offset in the blob's uncompressed address space.
    pub offset: u64,
    /// Length.
    pub size: u32,
    /// What is wrong.
    pub reason: &'static str,
}

/// The outcome of verifying one blob's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobVerify {
    /// No map in the directory: nothing cached, nothing to check.
    NotCached,
    /// The map was not trusted and was reset (all bits clear).
    Reset(ResetReason),
    /// Checked.
    Checked {
        /// Ready ranges before the check.
        ready: u64,
        /// Total ranges.
        ranges: u64,
        /// Chunks whose ranges were all ready, hence checked.
        checked: u64,
        /// Bad chunks (their ranges are now clear).
        bad: Vec<BadChunk>,
    },
}

/// The granularity and layout recorded in an existing map's header, if the
/// granularity is a valid one: a cache filled with another granularity than
/// today's default, or for any layout, is verified as it is rather than
/// reset or refused.
fn header_params(path: &Path) -> Result<Option<(u32, [u8; 16])>, ToolError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut head = [0u8; MAP_HEADER_SIZE];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    let Ok((h, _)) = MapHeader::read_from_prefix(&head[..n]) else {
        return Ok(None);
    };
    let g = h.granularity.get();
    Ok(MapParams::new(BlobId([0; 32]), 0, g)
        .is_ok()
        .then_some((g, h.layout)))
}

/// Verifies the cache of blob `id` in `dir` against `chunks`; clears the
/// ranges of bad ones.
fn verify_chunks(
    dir: &Path,
    id: &BlobId,
    blob_size: u64,
    chunks: &[Chunk],
) -> Result<BlobVerify, ToolError> {
    let map = map_path(dir, id);
    if !map.try_exists().map_err(io_err(&map))? {
        return Ok(BlobVerify::NotCached);
    }
    let (granularity, layout) = header_params(&map)?.unwrap_or((DEFAULT_GRANULARITY, [0; 16]));
    let params = MapParams::new(*id, blob_size, granularity)?.with_layout(layout);
    let (cache, opened) = BlobCache::open(dir, params)?;
    match opened {
        Opened::Reused => {}
        Opened::Reset { reason } => return Ok(BlobVerify::Reset(reason)),
        // The map vanished after the check above; a fresh one has no bits.
        Opened::Created => return Ok(BlobVerify::NotCached),
    }
    let ready = cache.bitmap().ready_count();
    let (checked, bad) = check_chunks(&cache, chunks)?;
    for b in &bad {
        cache.invalidate(cache.ranges_touching(b.offset, u64::from(b.size)))?;
    }
    Ok(BlobVerify::Checked {
        ready,
        ranges: cache.bitmap().range_count(),
        checked,
        bad,
    })
}

/// Hashes every chunk whose ranges are all ready, on a few scoped threads
/// pulling batches from a shared counter. Returns (checked, bad), bad
/// sorted by offset.
fn check_chunks(cache: &BlobCache, chunks: &[Chunk]) -> Result<(u64, Vec<BadChunk>), ToolError> {
    const BATCH: usize = 64;
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(chunks.len().div_ceil(BATCH).max(1));
    let worker = || -> Result<(u64, Vec<BadChunk>), CacheError> {
        let (mut checked, mut bad) = (0, Vec::new());
        loop {
            let start = next.fetch_add(BATCH, Ordering::Relaxed);
            let Some(batch) = chunks.get(start..(start + BATCH).min(chunks.len())) else {
                return Ok((checked, bad));
            };
            if batch.is_empty() {
                return Ok((checked, bad));
            }
            for c in batch {
                let Some(bytes) = cache.read_if_ready(c.offset, c.size as usize)? else {
                    continue;
                };
                checked += 1;
                if blake3::hash(&bytes).as_bytes() != &c.digest {
                    bad.push(BadChunk {
                        offset: c.offset,
                        size: c.size,
                        reason: mismatch_reason(&bytes),
                    });
                }
            }
        }
    };
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let (mut checked, mut bad) = (0, Vec::new());
    for r in results {
        let (c, b) = r?;
        checked += c;
        bad.extend(b);
    }
    bad.sort_by_key(|b| b.offset);
    Ok((checked, bad))
}

fn mismatch_reason(bytes: &[u8]) -> &'static str {
    if bytes.iter().all(|&b| b == 0) {
        "digest mismatch (reads as zeros: a hole under a set bit?)"
    } else {
        "digest mismatch"
    }
}

fn verify(args: &VerifyArgs) -> Result<ExitCode, ToolError> {
    let blobs = load_blobs(&args.bootstraps, true)?;
    let (mut cached, mut not_cached, mut resets) = (0u64, 0u64, 0u64);
    let (mut ready, mut checked, mut bad) = (0u64, 0u64, 0u64);
    for (id, blob) in &blobs {
        let chunks: Vec<Chunk> = blob.chunks.values().copied().collect();
        match verify_chunks(&args.dir, id, blob.size, &chunks)? {
            BlobVerify::NotCached => not_cached += 1,
            BlobVerify::Reset(reason) => {
                resets += 1;
                println!("{}: map not trusted, reset ({reason})", short(id));
            }
            BlobVerify::Checked {
                ready: r,
                ranges,
                checked: c,
                bad: b,
            } => {
                cached += 1;
                ready += r;
                checked += c;
                bad += b.len() as u64;
                println!(
                    "{}: {r}/{ranges} ranges ready, {c} chunks checked, {} bad",
                    short(id),
                    b.len()
                );
                for x in &b {
                    eprintln!(
                        "bad chunk: blob {id} offset {} ({} bytes): {}; ranges cleared",
                        x.offset, x.size, x.reason
                    );
                }
            }
        }
    }
    println!(
        "verify: {cached} blobs cached ({not_cached} not cached, {resets} reset), \
         {ready} ranges ready, {checked} chunks checked, {bad} bad"
    );
    Ok(if bad > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

// ---------------------------------------------------------------- scanning

/// What a directory entry's name says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// `<hex>.data`.
    Data(BlobId),
    /// `<hex>.map`.
    Map(BlobId),
    /// `.<hex>.map.tmp.<pid>[.<16 hex>]`: a map being created (by
    /// `RangeBitmap::create`).
    Temp(u32),
    /// Not ours.
    Other,
}

fn parse_hex_id(s: &str) -> Option<BlobId> {
    let lower = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    lower.then(|| BlobId::from_hex(s)).flatten()
}

fn classify(name: &str) -> Name {
    if let Some(hex) = name.strip_suffix(".data") {
        return parse_hex_id(hex).map_or(Name::Other, Name::Data);
    }
    if let Some(hex) = name.strip_suffix(".map") {
        return parse_hex_id(hex).map_or(Name::Other, Name::Map);
    }
    let temp = name.strip_prefix('.').and_then(|rest| {
        let (hex, tail) = rest.split_once(".map.tmp.")?;
        parse_hex_id(hex)?;
        let pid = match tail.split_once('.') {
            Some((pid, salt)) => {
                let ok = salt.len() == 16 && salt.bytes().all(|b| b.is_ascii_hexdigit());
                ok.then_some(pid)?
            }
            None => tail,
        };
        let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| pid.parse().ok()).flatten()
    });
    temp.map_or(Name::Other, Name::Temp)
}

/// A cache directory's entries, sorted by kind.
#[derive(Debug, Default)]
pub struct Scan {
    /// Blob id → (has a data file, has a map file); regular files only.
    pub blobs: BTreeMap<BlobId, (bool, bool)>,
    /// Temporary map files and the pid that created them.
    pub temps: Vec<(String, u32)>,
    /// Everything else, by name (lossy).
    pub other: Vec<String>,
}

/// Lists `dir` by kind, from the names and the entries' file types:
/// nothing is opened.
pub fn scan(dir: &Path) -> Result<Scan, ToolError> {
    let mut out = Scan::default();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(io_err(dir))?;
        if kind.is_dir() && name == "images" {
            // Kept images: listed by [`images::list`].
            continue;
        }
        let is_file = kind.is_file();
        match (is_file, classify(&name)) {
            (true, Name::Data(id)) => out.blobs.entry(id).or_default().0 = true,
            (true, Name::Map(id)) => out.blobs.entry(id).or_default().1 = true,
            (true, Name::Temp(pid)) => out.temps.push((name, pid)),
            _ => out.other.push(name),
        }
    }
    out.temps.sort();
    out.other.sort();
    Ok(out)
}

/// Bytes allocated on disk (`st_blocks * 512`); 0 for a missing file.
pub(crate) fn allocated(path: &Path) -> Result<u64, ToolError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.blocks().saturating_mul(512)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

// ---------------------------------------------------------------- ls

/// What a map file says, read without modifying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapInfo {
    /// No map file.
    Missing,
    /// A map a mount would reset.
    Invalid(String),
    /// A valid map.
    Valid {
        /// The blob's uncompressed size.
        blob_size: u64,
        /// Bytes per range.
        granularity: u32,
        /// Total ranges.
        ranges: u64,
        /// Ready ranges.
        ready: u64,
        /// Bytes of the ready ranges.
        ready_bytes: u64,
        /// The layout digest recorded in the header.
        layout: [u8; 16],
        /// The generation counter (bumped whenever ranges are cleared).
        generation: u64,
    },
}

/// Reads the map of `id` in `dir`: header checked against itself and the
/// file name, bits counted from a snapshot read (no mmap, no writes). The
/// map's own layout is accepted, whatever it is.
pub fn read_map(dir: &Path, id: &BlobId) -> Result<MapInfo, ToolError> {
    let path = map_path(dir, id);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(MapInfo::Missing),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let len = file.metadata().map_err(io_err(&path))?.len();
    let mut head = Vec::with_capacity(MAP_HEADER_SIZE);
    (&mut file)
        .take(MAP_HEADER_SIZE as u64)
        .read_to_end(&mut head)
        .map_err(io_err(&path))?;
    let Ok((h, _)) = MapHeader::read_from_prefix(&head) else {
        return Ok(MapInfo::Invalid(ResetReason::Short(len).to_string()));
    };
    let params = match MapParams::new(*id, h.blob_size.get(), h.granularity.get()) {
        Ok(p) => p.with_layout(h.layout),
        Err(e) => return Ok(MapInfo::Invalid(e.to_string())),
    };
    if let Err(reason) = check_header(&head, len, &params) {
        return Ok(MapInfo::Invalid(reason.to_string()));
    }
    let mut live = [0u8; MAP_LIVE_SIZE];
    file.read_exact(&mut live).map_err(io_err(&path))?;
    let generation = u64::from_le_bytes(live[..8].try_into().unwrap_or([0; 8]));
    let (ready, ready_bytes) = count_bits(&mut file, &params).map_err(io_err(&path))?;
    Ok(MapInfo::Valid {
        blob_size: params.blob_size,
        granularity: params.granularity,
        ranges: params.range_count(),
        ready,
        ready_bytes,
        layout: h.layout,
        generation,
    })
}

/// Reads the words following the live block (the reader is positioned there)
/// and returns the number of set bits below the range count and the bytes
/// of those ranges (the last range may be short).
fn count_bits(r: &mut impl Read, params: &MapParams) -> std::io::Result<(u64, u64)> {
    let (ranges, g) = (params.range_count(), u64::from(params.granularity));
    let (mut count, mut bytes, mut base) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((count, bytes));
        }
        pending.extend_from_slice(&buf[..n]);
        let whole = pending.len() / 8 * 8;
        for w in pending[..whole].chunks_exact(8) {
            let mut word = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            while word != 0 {
                let range = base + u64::from(word.trailing_zeros());
                if range < ranges {
                    count += 1;
                    bytes += g.min(params.blob_size.saturating_sub(range * g));
                }
                word &= word - 1;
            }
            base += 64;
        }
        pending.drain(..whole);
    }
}

/// One row of `rafs cache ls`.
#[derive(Debug, Clone, serde::Serialize)]
struct LsRow {
    id: String,
    blob_size: Option<u64>,
    granularity: Option<u32>,
    ranges: Option<u64>,
    ready_ranges: u64,
    ready_bytes: u64,
    allocated_bytes: u64,
    has_data: bool,
    map: String,
    used: Option<bool>,
    layout: Option<String>,
    generation: Option<u64>,
}

fn ls_row(
    dir: &Path,
    id: &BlobId,
    has_data: bool,
    refs: Option<&BTreeMap<BlobId, BlobRef>>,
) -> Result<LsRow, ToolError> {
    let info = read_map(dir, id)?;
    let data = data_path(dir, id);
    let data_len = match std::fs::metadata(&data) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&data)(e)),
    };
    let mut row = LsRow {
        id: id.to_hex(),
        blob_size: data_len,
        granularity: None,
        ranges: None,
        ready_ranges: 0,
        ready_bytes: 0,
        allocated_bytes: allocated(&data)?,
        has_data,
        map: "ok".into(),
        used: refs.map(|r| r.contains_key(id)),
        layout: None,
        generation: None,
    };
    match info {
        MapInfo::Missing => row.map = "missing".into(),
        MapInfo::Invalid(why) => row.map = format!("invalid: {why}"),
        MapInfo::Valid {
            blob_size,
            granularity,
            ranges,
            ready,
            ready_bytes,
            layout,
            generation,
        } => {
            row.layout = Some(hex::encode(layout));
            row.generation = Some(generation);
            row.blob_size = Some(blob_size);
            row.granularity = Some(granularity);
            row.ranges = Some(ranges);
            row.ready_ranges = ready;
            row.ready_bytes = ready_bytes;
            if data_len != Some(blob_size) {
                row.map = "data file missing or of the wrong length".into();
            }
            if let Some(b) = refs.and_then(|r| r.get(id)).filter(|b| b.size != blob_size) {
                row.map = format!("blob size {blob_size}, bootstraps say {}", b.size);
            }
        }
    }
    Ok(row)
}

fn ls(args: &LsArgs) -> Result<ExitCode, ToolError> {
    let refs = match args.bootstraps.is_empty() {
        true => None,
        false => Some(load_blobs(&args.bootstraps, false)?),
    };
    let mut found = scan(&args.dir)?;
    let kept = ls_images(&args.dir, &mut found)?;
    let mut rows = Vec::with_capacity(found.blobs.len());
    for (id, &(has_data, _)) in &found.blobs {
        rows.push(ls_row(&args.dir, id, has_data, refs.as_ref())?);
    }
    let ready: u64 = rows.iter().map(|r| r.ready_bytes).sum();
    let disk: u64 = rows.iter().map(|r| r.allocated_bytes).sum();
    let unused = rows.iter().filter(|r| r.used == Some(false)).count();
    if args.json {
        let temps: Vec<&str> = found.temps.iter().map(|(n, _)| n.as_str()).collect();
        let v = serde_json::json!({
            "blobs": rows,
            "images": kept,
            "temp_files": temps,
            "other_files": found.other,
            "total": {"blobs": rows.len(), "ready_bytes": ready, "allocated_bytes": disk,
                      "unused": refs.as_ref().map(|_| unused)},
        });
        println!("{v:#}");
        return Ok(ExitCode::SUCCESS);
    }
    print_ls_table(&rows, refs.is_some());
    for k in &kept {
        let state = if k.in_use { "in use" } else { "not in use" };
        let boot = if k.bootstrap { "" } else { ", no bootstrap" };
        let size = human_bytes(k.allocated_bytes);
        println!("image {} ({state}, {size} on disk{boot})", k.digest);
    }
    for (name, pid) in &found.temps {
        println!("temp file: {name} (pid {pid})");
    }
    for name in &found.other {
        println!("ignored: {name} (not a cache file)");
    }
    let unused = match refs {
        Some(_) => format!(", {unused} unused"),
        None => String::new(),
    };
    println!(
        "total: {} blobs, {} ready, {} on disk{unused}",
        rows.len(),
        human_bytes(ready),
        human_bytes(disk)
    );
    Ok(ExitCode::SUCCESS)
}

/// One kept image in `rafs cache ls`.
#[derive(Debug, Clone, serde::Serialize)]
struct LsImage {
    digest: String,
    in_use: bool,
    bootstrap: bool,
    allocated_bytes: u64,
}

/// The kept images of `dir`; names under `images/` that are not images go
/// to `found.other`.
fn ls_images(dir: &Path, found: &mut Scan) -> Result<Vec<LsImage>, ToolError> {
    let (kept, other) = images::list(dir)?;
    found.other.extend(other);
    kept.iter()
        .map(|k| {
            Ok(LsImage {
                digest: k.digest(),
                in_use: images::in_use(k)?,
                bootstrap: k.bootstrap().is_file(),
                allocated_bytes: k.allocated()?,
            })
        })
        .collect()
}

fn print_ls_table(rows: &[LsRow], with_used: bool) {
    let used_col = if with_used { "  USED" } else { "" };
    println!(
        "{:<12}  {:>10}  {:>15}  {:>10}  {:>10}{used_col}  NOTE",
        "BLOB", "SIZE", "READY RANGES", "READY", "ON DISK"
    );
    for r in rows {
        let size = r.blob_size.map_or("-".into(), human_bytes);
        let ranges = format!(
            "{}/{}",
            r.ready_ranges,
            r.ranges.map_or("-".into(), |n| n.to_string())
        );
        let used = match r.used {
            Some(true) => "   yes",
            Some(false) => "    no",
            None => "",
        };
        let note = if r.map == "ok" { "" } else { &r.map };
        println!(
            "{:<12}  {size:>10}  {ranges:>15}  {:>10}  {:>10}{used}  {note}",
            &r.id[..12],
            human_bytes(r.ready_bytes),
            human_bytes(r.allocated_bytes)
        );
    }
}

// ---------------------------------------------------------------- gc

/// What `gc` did with one unreferenced blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcOutcome {
    /// Removed (or would be, in a dry run); bytes freed.
    Removed(u64),
    /// Another process holds a lock on its map.
    InUse,
}

/// Removes the files of blob `id` unless its map is locked. The exclusive
/// lock is held while the data file and then the map are unlinked, so a
/// daemon cannot take its shared lock in between.
pub fn remove_blob(dir: &Path, id: &BlobId, dry_run: bool) -> Result<GcOutcome, ToolError> {
    let map = map_path(dir, id);
    let data = data_path(dir, id);
    let lock = match File::open(&map) {
        Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Some(l),
            Err((_, Errno::EWOULDBLOCK)) => return Ok(GcOutcome::InUse),
            Err((_, e)) => return Err(io_err(&map)(e.into())),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&map)(e)),
    };
    let freed = allocated(&data)? + allocated(&map)?;
    if !dry_run {
        for path in [&data, &map] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path)(e)),
            }
        }
    }
    drop(lock);
    Ok(GcOutcome::Removed(freed))
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The kept images gc keeps (named or in use: their bootstraps) and the
/// ones it removes (with their exclusive locks, held until removed).
type ImagePlan = (Vec<PathBuf>, Vec<(images::KeptImage, Flock<File>)>);

fn plan_images(args: &GcArgs) -> Result<ImagePlan, ToolError> {
    let named = args
        .images
        .iter()
        .map(|s| images::parse_digest(s))
        .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    let (kept, _) = images::list(&args.dir)?;
    if let Some(missing) = named.iter().find(|h| !kept.iter().any(|k| &&k.hex == h)) {
        return Err(ToolError::NoSuchImage(format!("sha256:{missing}")));
    }
    let (mut keep, mut remove) = (Vec::new(), Vec::new());
    for img in kept {
        let used = if named.contains(&img.hex) {
            println!("kept image {} (named)", img.digest());
            true
        } else {
            match images::try_exclusive(&img)? {
                images::Hold::Busy => {
                    println!("in use, kept image {}", img.digest());
                    true
                }
                images::Hold::Free(lock) => {
                    remove.push((img, lock));
                    continue;
                }
                images::Hold::Gone => continue,
            }
        };
        if used && img.bootstrap().exists() {
            keep.push(img.bootstrap());
        }
    }
    Ok((keep, remove))
}

fn gc(args: &GcArgs) -> Result<ExitCode, ToolError> {
    if args.bootstraps.is_empty() && args.images.is_empty() && !args.all {
        return Err(ToolError::NoBootstrap);
    }
    let (kept_boots, doomed) = plan_images(args)?;
    let mut boots = args.bootstraps.clone();
    boots.extend(kept_boots);
    // Every bootstrap is read before anything is removed.
    let refs = load_blobs(&boots, false)?;
    let found = scan(&args.dir)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let (mut removed, mut in_use, mut kept, mut freed) = (0u64, 0u64, 0u64, 0u64);
    let removed_images = doomed.len();
    for (img, lock) in &doomed {
        let bytes = img.allocated()?;
        if !args.dry_run {
            images::remove(img, lock)?;
        }
        freed += bytes;
        println!("{verb} image {} ({})", img.digest(), human_bytes(bytes));
    }
    drop(doomed);
    for id in found.blobs.keys() {
        if refs.contains_key(id) {
            kept += 1;
            continue;
        }
        match remove_blob(&args.dir, id, args.dry_run)? {
            GcOutcome::Removed(bytes) => {
                removed += 1;
                freed += bytes;
                println!("{verb} {id} ({})", human_bytes(bytes));
            }
            GcOutcome::InUse => {
                in_use += 1;
                println!("in use, kept {id}");
            }
        }
    }
    let mut temps = 0u64;
    for (name, pid) in &found.temps {
        if pid_alive(*pid) {
            println!("kept temp file {name} (pid {pid} is running)");
            continue;
        }
        let path = args.dir.join(name);
        freed += allocated(&path)?;
        if !args.dry_run {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        temps += 1;
        println!("{verb} temp file {name}");
    }
    for name in &found.other {
        println!("ignored: {name} (not a cache file)");
    }
    println!(
        "gc: {verb} {removed_images} images, {removed} blobs and {temps} temp files, {} freed; \
         kept {kept} used, {in_use} in use",
        human_bytes(freed)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
