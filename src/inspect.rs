//! `rafs inspect`: describes an image from its bootstrap alone (no blobs).
//!
//! Three views, each as text or, with `--json`, one JSON document:
//! - the summary (default): format, inode counts, chunking, dedup and
//!   compression figures, blobs, prefetch table;
//! - `--tree`: every entry, depth-first in name order, hardlinks once per
//!   path;
//! - `--file PATH`: one inode's metadata and chunk list.
//!
//! The format stores no paths; they are rebuilt by walking the tree
//! ([`crate::image::walk`]). Paths, symlink targets and xattr names are
//! printed with [`escape`]: UTF-8 unchanged, `\` doubled, control characters
//! and invalid bytes as `\xNN`; the same strings appear in JSON. Xattr
//! values are printed as text when they are printable UTF-8 not starting
//! with `0x`, otherwise as `0x` followed by lower-case hex.
//!
//! Figures are computed per inode, so a hardlinked file counts once while
//! two identical files (sharing one chunk run in the table) count twice:
//! that is what makes `dedup_ratio` meaningful. See [`Summary`].

use crate::image::walk::{dev_split, escape, paths_of, walk};
use crate::image::{Image, ImageError};
use crate::util::human_bytes;
use rafs_format::layout::*;
use rafs_format::{Bootstrap, FormatError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use thiserror::Error;

/// Arguments of `rafs inspect`.
#[derive(Debug)]
pub struct InspectArgs {
    /// The bootstrap.
    pub bootstrap: PathBuf,
    /// Print JSON instead of text.
    pub json: bool,
    /// List every entry of the tree, depth-first in name order.
    pub tree: bool,
    /// Show one file's metadata and chunks (image path, leading `/`
    /// optional).
    pub file: Option<PathBuf>,
}

/// Why `rafs inspect` failed.
#[derive(Debug, Error)]
pub enum InspectError {
    /// The image could not be opened or is invalid.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The bootstrap is inconsistent (cannot happen after validation).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// `--file` names no entry of the image.
    #[error("{0}: no such file in the image")]
    NoSuchPath(String),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
    /// JSON serialisation failed.
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Chunking parameters from the superblock.
#[derive(Debug, Serialize, PartialEq)]
pub struct ChunkingSummary {
    /// `fixed`, `fastcdc`, or `unknown(N)`.
    pub mode: String,
    /// Minimum chunk size (fixed: the chunk size).
    pub min: u32,
    /// Average chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

/// One blob of the blob table.
#[derive(Debug, Serialize, PartialEq)]
pub struct BlobSummary {
    /// sha256 of the blob, hex.
    pub id: String,
    /// Blob length in bytes.
    pub compressed_size: u64,
    /// Length of its uncompressed address space.
    pub uncompressed_size: u64,
    /// Distinct chunks stored in it.
    pub chunk_count: u32,
}

/// The `rafs inspect` summary. Per-inode figures count a hardlinked inode
/// once.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Format version, `major.minor`.
    pub version: String,
    /// Bootstrap length in bytes.
    pub bootstrap_size: u64,
    /// Inodes of all types.
    pub inodes: u64,
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Non-directory inodes with more than one name.
    pub hardlinked_files: u64,
    /// Character and block devices, FIFOs and sockets.
    pub special_files: u64,
    /// Chunking parameters.
    pub chunking: ChunkingSummary,
    /// Chunks of all regular files (holes included).
    pub chunk_entries: u64,
    /// Distinct stored chunks (distinct blob and offset).
    pub unique_chunks: u64,
    /// Hole chunks.
    pub holes: u64,
    /// Sum of regular file sizes.
    pub file_bytes: u64,
    /// Sum of regular file sizes outside holes.
    pub data_bytes: u64,
    /// Sum of blob sizes.
    pub stored_bytes: u64,
    /// `data_bytes` / uncompressed bytes of the unique chunks (1 if none).
    pub dedup_ratio: f64,
    /// Uncompressed / stored bytes of the unique chunks (1 if none).
    pub compression_ratio: f64,
    /// Mean bytes fetched per byte of a random 4 KiB read: Σ(u·c) / Σu /
    /// 4096 over data chunks of files, `u`, `c` their uncompressed and
    /// stored sizes (0 if no data).
    pub read_amplification_4k: f64,
    /// The blob table.
    pub blobs: Vec<BlobSummary>,
    /// Paths of the prefetch table, in order.
    pub prefetch: Vec<String>,
}

fn ratio(num: f64, den: f64, empty: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        empty
    }
}

/// Per-inode chunk statistics.
#[derive(Default)]
struct ChunkStats {
    entries: u64,
    holes: u64,
    data_bytes: u64,
    /// Distinct chunks: (blob, frame offset, offset in a batch frame).
    unique: HashSet<(u32, u64, u32)>,
    /// Distinct stored frames: (blob, frame offset).
    frames: HashSet<(u32, u64)>,
    unique_uncompressed: u64,
    unique_stored: u64,
    amp_num: f64,
    amp_den: f64,
}

impl ChunkStats {
    fn add(&mut self, run: &[ChunkInfo]) {
        self.entries += run.len() as u64;
        for c in run {
            if c.is_hole() {
                self.holes += 1;
                continue;
            }
            let (u, s) = (c.uncompressed_size.get(), c.compressed_size.get());
            self.data_bytes += u64::from(u);
            let frame = (c.blob_index.get(), c.compressed_offset.get());
            if self.unique.insert((frame.0, frame.1, c.batch_offset.get())) {
                self.unique_uncompressed += u64::from(u);
            }
            if self.frames.insert(frame) {
                self.unique_stored += u64::from(s);
            }
            self.amp_num += f64::from(u) * f64::from(s);
            self.amp_den += f64::from(u);
        }
    }
}

fn chunking(sb: &SuperBlock) -> ChunkingSummary {
    let mode = match sb.chunking {
        CHUNKING_FIXED => "fixed".to_string(),
        CHUNKING_FASTCDC => "fastcdc".to_string(),
        n => format!("unknown({n})"),
    };
    ChunkingSummary {
        mode,
        min: sb.chunk_min.get(),
        avg: sb.chunk_avg.get(),
        max: sb.chunk_max.get(),
    }
}

/// Computes the summary of a validated bootstrap.
pub fn summarize(b: &Bootstrap<'_>) -> Result<Summary, FormatError> {
    let (mut files, mut dirs, mut symlinks, mut hardlinked, mut special) = (0, 0, 0, 0, 0);
    let mut file_bytes = 0u64;
    let mut cs = ChunkStats::default();
    for ino in 0..b.inode_count() {
        let inode = b.inode(ino)?;
        match inode.file_type() {
            S_IFDIR => dirs += 1,
            S_IFREG => {
                files += 1;
                file_bytes += inode.size.get();
                cs.add(b.file_chunks(ino)?);
            }
            S_IFLNK => symlinks += 1,
            _ => special += 1,
        }
        if !inode.is_dir() && inode.nlink.get() > 1 {
            hardlinked += 1;
        }
    }
    let sb = b.superblock();
    Ok(Summary {
        version: format!("{}.{}", sb.major_version.get(), sb.minor_version.get()),
        bootstrap_size: b.bytes().len() as u64,
        inodes: u64::from(b.inode_count()),
        files,
        directories: dirs,
        symlinks,
        hardlinked_files: hardlinked,
        special_files: special,
        chunking: chunking(sb),
        chunk_entries: cs.entries,
        unique_chunks: cs.unique.len() as u64,
        holes: cs.holes,
        file_bytes,
        data_bytes: cs.data_bytes,
        stored_bytes: b.blobs().iter().map(|x| x.compressed_size.get()).sum(),
        dedup_ratio: ratio(cs.data_bytes as f64, cs.unique_uncompressed as f64, 1.0),
        compression_ratio: ratio(cs.unique_uncompressed as f64, cs.unique_stored as f64, 1.0),
        read_amplification_4k: ratio(cs.amp_num, cs.amp_den, 0.0) / 4096.0,
        blobs: b.blobs().iter().map(blob_summary).collect(),
        prefetch: prefetch_paths(b)?,
    })
}

fn blob_summary(x: &BlobInfo) -> BlobSummary {
    BlobSummary {
        id: hex::encode(x.id),
        compressed_size: x.compressed_size.get(),
        uncompressed_size: x.uncompressed_size.get(),
        chunk_count: x.chunk_count.get(),
    }
}

fn prefetch_paths(b: &Bootstrap<'_>) -> Result<Vec<String>, FormatError> {
    if b.prefetch().is_empty() {
        return Ok(Vec::new());
    }
    let first = b.prefetch().iter().map(|p| (p.ino.get(), 1)).collect();
    let paths = paths_of(b, &first)?;
    Ok(b.prefetch()
        .iter()
        .map(
            |p| match paths.get(&p.ino.get()).and_then(|v| v.kept.first()) {
                Some(path) => escape(path),
                None => format!("(inode {})", p.ino.get()),
            },
        )
        .collect())
}

fn print_summary(out: &mut impl Write, path: &str, s: &Summary) -> io::Result<()> {
    let c = &s.chunking;
    let hb = |n: u64| format!("{n} ({})", human_bytes(n));
    writeln!(out, "bootstrap:          {path}")?;
    writeln!(out, "format version:     {}", s.version)?;
    writeln!(out, "bootstrap size:     {}", hb(s.bootstrap_size))?;
    writeln!(
        out,
        "inodes:             {} ({} files, {} directories, {} symlinks, {} hardlinked files, {} devices/fifos/sockets)",
        s.inodes, s.files, s.directories, s.symlinks, s.hardlinked_files, s.special_files
    )?;
    writeln!(
        out,
        "chunking:           {} (min {}, avg {}, max {})",
        c.mode, c.min, c.avg, c.max
    )?;
    writeln!(
        out,
        "chunks:             {} entries, {} unique stored, {} holes",
        s.chunk_entries, s.unique_chunks, s.holes
    )?;
    writeln!(out, "file bytes:         {}", hb(s.file_bytes))?;
    writeln!(out, "data bytes:         {}", hb(s.data_bytes))?;
    writeln!(out, "stored bytes:       {}", hb(s.stored_bytes))?;
    writeln!(out, "dedup ratio:        {:.3}", s.dedup_ratio)?;
    writeln!(out, "compression ratio:  {:.3}", s.compression_ratio)?;
    writeln!(
        out,
        "read amplification: {:.3} (random 4 KiB reads)",
        s.read_amplification_4k
    )?;
    writeln!(out, "blobs:              {}", s.blobs.len())?;
    for x in &s.blobs {
        writeln!(
            out,
            "  {}  {} stored, {} uncompressed, {} chunks",
            x.id, x.compressed_size, x.uncompressed_size, x.chunk_count
        )?;
    }
    writeln!(out, "prefetch:           {}", s.prefetch.len())?;
    for p in &s.prefetch {
        writeln!(out, "  {p}")?;
    }
    Ok(())
}

/// One entry of `--tree --json` (and the metadata of `--file --json`).
#[derive(Debug, Serialize, PartialEq)]
pub struct EntryInfo {
    /// Image path (escaped).
    pub path: String,
    /// Inode number.
    pub ino: u32,
    /// `dir`, `file`, `symlink`, `chr`, `blk`, `fifo` or `sock`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Full `st_mode`: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number (devices; 0 otherwise).
    pub rdev: u64,
    /// Symlink target (escaped), or null.
    pub target: Option<String>,
    /// Xattrs, name (escaped) to value (see the module doc).
    pub xattrs: BTreeMap<String, String>,
}

fn kind_name(mode: u32) -> &'static str {
    match mode & S_IFMT {
        S_IFDIR => "dir",
        S_IFREG => "file",
        S_IFLNK => "symlink",
        S_IFCHR => "chr",
        S_IFBLK => "blk",
        S_IFIFO => "fifo",
        S_IFSOCK => "sock",
        _ => "unknown",
    }
}

/// An xattr value for display: text if printable UTF-8 not starting with
/// `0x`, else `0x` + hex.
pub(crate) fn xattr_repr(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if !s.starts_with("0x") && !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("0x{}", hex::encode(v)),
    }
}

fn entry_info(b: &Bootstrap<'_>, path: &[u8], ino: u32) -> Result<EntryInfo, FormatError> {
    let inode = b.inode(ino)?;
    let mut xattrs = BTreeMap::new();
    for x in b.xattrs(ino)? {
        xattrs.insert(escape(b.xattr_name(x)?), xattr_repr(b.xattr_value(x)?));
    }
    let target = if inode.is_symlink() {
        Some(escape(b.symlink_target(ino)?))
    } else {
        None
    };
    Ok(EntryInfo {
        path: escape(path),
        ino,
        kind: kind_name(inode.mode.get()),
        mode: inode.mode.get(),
        uid: inode.uid.get(),
        gid: inode.gid.get(),
        size: inode.size.get(),
        nlink: inode.nlink.get(),
        mtime_sec: inode.mtime_sec.get(),
        mtime_nsec: inode.mtime_nsec.get(),
        rdev: inode.rdev.get(),
        target,
        xattrs,
    })
}

/// `ls -l` style mode string, e.g. `-rwsr-xr-x`.
pub(crate) fn mode_string(mode: u32) -> String {
    let t = match mode & S_IFMT {
        S_IFDIR => 'd',
        S_IFLNK => 'l',
        S_IFCHR => 'c',
        S_IFBLK => 'b',
        S_IFIFO => 'p',
        S_IFSOCK => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, (bit, set, unset)) in special.into_iter().enumerate() {
        let shift = 6 - 3 * i;
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & bit != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS.NNNNNNNNN` (UTC) for a Unix time.
pub(crate) fn format_time(sec: i64, nsec: u32) -> String {
    let days = sec.div_euclid(86_400);
    let secs = sec.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{nsec:09}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Linux `dev_t` as `major,minor`.
fn dev_string(rdev: u64) -> String {
    let (major, minor) = dev_split(rdev);
    format!("{major},{minor}")
}

/// One `--tree` line: mode, uid/gid, size (or `major,minor` for devices),
/// nlink, mtime, path, and ` -> target` for symlinks.
fn tree_line(e: &EntryInfo) -> String {
    let size = if matches!(e.kind, "chr" | "blk") {
        dev_string(e.rdev)
    } else {
        e.size.to_string()
    };
    let mut line = format!(
        "{} {}/{} {} {} {} {}",
        mode_string(e.mode),
        e.uid,
        e.gid,
        size,
        e.nlink,
        format_time(e.mtime_sec, e.mtime_nsec),
        e.path
    );
    if let Some(t) = &e.target {
        line.push_str(" -> ");
        line.push_str(t);
    }
    line
}

fn print_tree(out: &mut impl Write, b: &Bootstrap<'_>, json: bool) -> Result<(), InspectError> {
    if json {
        let mut entries = Vec::new();
        walk(b, |v| {
            entries.push(entry_info(b, v.path, v.ino)?);
            Ok::<_, FormatError>(())
        })?;
        serde_json::to_writer_pretty(&mut *out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    walk(b, |v| {
        writeln!(out, "{}", tree_line(&entry_info(b, v.path, v.ino)?))?;
        Ok::<_, InspectError>(())
    })
}

/// One chunk of `--file`.
#[derive(Debug, Serialize, PartialEq)]
pub struct ChunkDetail {
    /// Index within the file.
    pub index: usize,
    /// Index in the bootstrap's chunk table.
    pub table_index: u64,
    /// Offset in the file.
    pub file_offset: u64,
    /// Length in the file.
    pub length: u32,
    /// `zstd`, `raw` or `hole`.
    pub flags: &'static str,
    /// Blob id (hex), null for holes.
    pub blob: Option<String>,
    /// Offset of the stored bytes in the blob.
    pub compressed_offset: u64,
    /// Stored length (of the whole frame for a batch member).
    pub compressed_size: u32,
    /// Offset in the frame's uncompressed bytes (batch members; else 0).
    pub batch_offset: u32,
    /// Uncompressed size of the frame (batch members; else 0): a member's
    /// share of the stored bytes is `compressed_size * length / batch_size`.
    pub batch_size: u32,
    /// Offset in the blob's uncompressed space.
    pub uncompressed_offset: u64,
    /// blake3 of the data, hex (zeros for holes).
    pub digest: String,
}

/// `--file` output: the entry's metadata, all its paths, its chunks.
#[derive(Debug, Serialize, PartialEq)]
pub struct FileDetail {
    /// Metadata.
    #[serde(flatten)]
    pub entry: EntryInfo,
    /// Every path of the inode (several for hardlinks).
    pub paths: Vec<String>,
    /// The chunks (empty unless a regular file).
    pub chunks: Vec<ChunkDetail>,
}

fn chunk_detail(b: &Bootstrap<'_>, ino: u32) -> Result<Vec<ChunkDetail>, FormatError> {
    let inode = b.inode(ino)?;
    if !inode.is_reg() {
        return Ok(Vec::new());
    }
    let start = u64::from(inode.payload_start.get());
    let mut out = Vec::new();
    for (i, c) in b.file_chunks(ino)?.iter().enumerate() {
        let blob = if c.is_hole() {
            None
        } else {
            Some(hex::encode(b.chunk_blob(c)?.id))
        };
        out.push(ChunkDetail {
            index: i,
            table_index: start + i as u64,
            file_offset: c.file_offset.get(),
            length: c.uncompressed_size.get(),
            flags: match (c.is_hole(), c.is_zstd()) {
                (true, _) => "hole",
                (false, true) => "zstd",
                (false, false) => "raw",
            },
            blob,
            compressed_offset: c.compressed_offset.get(),
            compressed_size: c.compressed_size.get(),
            batch_offset: if c.is_batch() {
                c.batch_offset.get()
            } else {
                0
            },
            batch_size: if c.is_batch() { c.batch_size.get() } else { 0 },
            uncompressed_offset: c.uncompressed_offset.get(),
            digest: hex::encode(c.digest),
        });
    }
    Ok(out)
}

/// The `--file` view of image path `query`.
pub fn file_detail(b: &Bootstrap<'_>, query: &[u8]) -> Result<FileDetail, InspectError> {
    let mut path = b"/".to_vec();
    path.extend_from_slice(query.strip_prefix(b"/").unwrap_or(query));
    let ino = b
        .resolve(&path)?
        .ok_or_else(|| InspectError::NoSuchPath(escape(&path)))?;
    let paths = paths_of(b, &HashMap::from([(ino, usize::MAX)]))?
        .remove(&ino)
        .map(|p| p.kept.iter().map(|p| escape(p)).collect())
        .unwrap_or_default();
    Ok(FileDetail {
        entry: entry_info(b, &path, ino)?,
        paths,
        chunks: chunk_detail(b, ino)?,
    })
}

fn print_file(out: &mut impl Write, d: &FileDetail) -> io::Result<()> {
    let e = &d.entry;
    writeln!(out, "path:    {}", e.path)?;
    writeln!(out, "paths:   {}", d.paths.join(" "))?;
    writeln!(out, "inode:   {} ({})", e.ino, e.kind)?;
    writeln!(out, "mode:    {} ({:o})", mode_string(e.mode), e.mode)?;
    writeln!(out, "owner:   {}/{}", e.uid, e.gid)?;
    writeln!(out, "size:    {}", e.size)?;
    writeln!(out, "nlink:   {}", e.nlink)?;
    writeln!(
        out,
        "mtime:   {} UTC",
        format_time(e.mtime_sec, e.mtime_nsec)
    )?;
    if matches!(e.kind, "chr" | "blk") {
        writeln!(out, "rdev:    {}", dev_string(e.rdev))?;
    }
    if let Some(t) = &e.target {
        writeln!(out, "target:  {t}")?;
    }
    for (name, value) in &e.xattrs {
        writeln!(out, "xattr:   {name}={value}")?;
    }
    writeln!(out, "chunks:  {}", d.chunks.len())?;
    if !d.chunks.is_empty() {
        writeln!(
            out,
            "  index  file_offset  length  flags  blob  compressed_offset  compressed_size  uncompressed_offset  digest"
        )?;
    }
    for c in &d.chunks {
        writeln!(
            out,
            "  {}  {}  {}  {}  {}  {}  {}  {}  {}",
            c.index,
            c.file_offset,
            c.length,
            c.flags,
            c.blob.as_deref().unwrap_or("-"),
            c.compressed_offset,
            c.compressed_size,
            c.uncompressed_offset,
            c.digest
        )?;
    }
    Ok(())
}

fn inspect(args: &InspectArgs, out: &mut impl Write) -> Result<(), InspectError> {
    let image = Image::open(&args.bootstrap)?;
    let b = image.bootstrap()?;
    if args.tree {
        return print_tree(out, &b, args.json);
    }
    if let Some(query) = &args.file {
        let d = file_detail(&b, query.as_os_str().as_bytes())?;
        if args.json {
            serde_json::to_writer_pretty(&mut *out, &d)?;
            writeln!(out)?;
        } else {
            print_file(out, &d)?;
        }
        return Ok(());
    }
    let s = summarize(&b)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &s)?;
        writeln!(out)?;
    } else {
        print_summary(out, &args.bootstrap.display().to_string(), &s)?;
    }
    Ok(())
}

/// Runs `rafs inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let mut out = BufWriter::new(io::stdout().lock());
    let result = inspect(args, &mut out).and_then(|()| Ok(out.flush()?));
    match result {
        // `rafs inspect --tree | head` is not an error.
        Err(InspectError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(InspectError::Json(e)) if e.io_error_kind() == Some(io::ErrorKind::BrokenPipe) => {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testimage::{self, ino, peak_rss_growth, RSS_BOUND};

    fn open(img: &testimage::TestImage) -> Image {
        Image::open(&img.bootstrap).unwrap()
    }

    #[test]
    fn summary_of_the_sample_image() {
        let img = testimage::sample();
        let image = open(&img);
        let b = image.bootstrap().unwrap();
        let s = summarize(&b).unwrap();
        assert_eq!(s.version, "1.0");
        assert_eq!(
            s.bootstrap_size,
            std::fs::metadata(&img.bootstrap).unwrap().len()
        );
        assert_eq!(
            (s.inodes, s.files, s.directories, s.symlinks),
            (12, 5, 2, 1)
        );
        assert_eq!((s.hardlinked_files, s.special_files), (1, 4));
        assert_eq!(s.chunking.mode, "fixed");
        assert_eq!(
            (s.chunking.min, s.chunking.avg, s.chunking.max),
            (65536, 65536, 65536)
        );
        // hello 1 + sparse 3 + suid 2 + passwd2 1 (shares hello's run).
        assert_eq!((s.chunk_entries, s.unique_chunks, s.holes), (7, 4, 2));
        let hello = testimage::hello_data().len() as u64;
        assert_eq!(s.file_bytes, 2 * hello + (4 << 20) + 4096 + 8192);
        assert_eq!(s.data_bytes, 2 * hello + 3 * 4096);
        let blob_len = std::fs::metadata(img.blobs.join(img.blob_id.as_ref().unwrap()))
            .unwrap()
            .len();
        assert_eq!(s.stored_bytes, blob_len);
        let unique = hello + 3 * 4096;
        assert!((s.dedup_ratio - s.data_bytes as f64 / unique as f64).abs() < 1e-9);
        assert!((s.compression_ratio - unique as f64 / blob_len as f64).abs() < 1e-9);
        let hello_stored = blob_len - 3 * 4096;
        let num = 2.0 * hello as f64 * hello_stored as f64 + 3.0 * 4096.0 * 4096.0;
        let want = num / s.data_bytes as f64 / 4096.0;
        assert!((s.read_amplification_4k - want).abs() < 1e-9);
        assert_eq!(s.blobs.len(), 1);
        assert_eq!(&s.blobs[0].id, img.blob_id.as_ref().unwrap());
        assert_eq!(s.blobs[0].chunk_count, 4);
        assert_eq!(s.prefetch, ["/etc/hello", "/suid"]);
        let json = serde_json::to_value(&s).unwrap();
        for key in [
            "read_amplification_4k",
            "chunking",
            "blobs",
            "prefetch",
            "unique_chunks",
        ] {
            assert!(!json[key].is_null(), "{key}");
        }
        assert_eq!(json["chunking"]["mode"], "fixed");
    }

    #[test]
    fn tree_lists_every_path_in_name_order() {
        let img = testimage::sample();
        let image = open(&img);
        let b = image.bootstrap().unwrap();
        let mut out = Vec::new();
        print_tree(&mut out, &b, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        let paths: Vec<&str> = text.lines().map(|l| l.split(' ').nth(6).unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/blk",
                "/chr",
                "/empty",
                "/etc",
                "/etc/hello",
                "/etc/passwd2",
                "/fifo",
                "/hello2",
                "/link",
                "/sock",
                "/sparse",
                "/suid"
            ]
        );
        let line = |p: &str| {
            text.lines()
                .find(|l| l.split(' ').nth(6) == Some(p))
                .unwrap()
        };
        assert_eq!(
            line("/etc/hello"),
            "-rw-r--r-- 1/2 13000 2 2020-09-13 12:26:40.000000005 /etc/hello"
        );
        assert!(line("/hello2").starts_with("-rw-r--r-- 1/2 13000 2 "));
        assert!(line("/chr").starts_with("crw-rw-rw- 0/0 1,3 1 "));
        assert!(line("/suid").starts_with("-rwsr-xr-x "));
        assert!(line("/link").ends_with("/link -> etc/hello"));
        assert!(line("/sock").starts_with("srwxr-xr-x "));

        let mut out = Vec::new();
        print_tree(&mut out, &b, true).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let entries = json.as_array().unwrap();
        assert_eq!(entries.len(), 13);
        let hello = entries.iter().find(|e| e["path"] == "/etc/hello").unwrap();
        assert_eq!(hello["ino"], ino::HELLO);
        assert_eq!(hello["type"], "file");
        assert_eq!(hello["mode"], 0o100644);
        assert_eq!(hello["mtime_nsec"], 5);
        assert_eq!(hello["xattrs"]["user.comment"], "greeting");
        assert_eq!(hello["xattrs"]["trusted.t"], "0x000102ff");
        let blk = entries.iter().find(|e| e["path"] == "/blk").unwrap();
        assert_eq!(blk["rdev"], 0x0801);
        assert_eq!(blk["type"], "blk");
    }

    #[test]
    fn file_detail_lists_chunks_and_paths() {
        let img = testimage::sample();
        let image = open(&img);
        let b = image.bootstrap().unwrap();
        let d = file_detail(&b, b"sparse").unwrap();
        assert_eq!(d.entry.path, "/sparse");
        let flags: Vec<_> = d.chunks.iter().map(|c| c.flags).collect();
        assert_eq!(flags, ["hole", "raw", "hole"]);
        assert_eq!(d.chunks[1].file_offset, 1 << 20);
        assert_eq!(d.chunks[1].length, 4096);
        assert_eq!(d.chunks[1].blob, img.blob_id);
        assert_eq!(d.chunks[0].blob, None);
        assert_eq!((d.chunks[1].batch_offset, d.chunks[1].batch_size), (0, 0));
        let d = file_detail(&b, b"/hello2").unwrap();
        assert_eq!(d.paths, ["/etc/hello", "/hello2"]);
        assert_eq!(d.chunks[0].flags, "zstd");
        let mut out = Vec::new();
        print_file(&mut out, &d).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("paths:   /etc/hello /hello2"));
        let err = file_detail(&b, b"/etc/nope").unwrap_err();
        assert!(matches!(err, InspectError::NoSuchPath(_)));
        assert!(err.to_string().contains("/etc/nope"), "{err}");
    }

    #[test]
    fn file_detail_shows_batch_frames() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a"), b"first small file ".repeat(50)).unwrap();
        std::fs::write(src.join("b"), b"second small file ".repeat(70)).unwrap();
        let out = dir.path().join("out");
        let mut o = crate::builder::tests::opts(&src, &out);
        o.batch = crate::builder::batch::BatchConfig {
            frame_size: 64 << 10,
            threshold: 16 << 10,
            level: 3,
        };
        crate::builder::build(&o).unwrap();
        let image = crate::image::Image::open(&out.join("bootstrap")).unwrap();
        let b = image.bootstrap().unwrap();
        let (a, bb) = (
            file_detail(&b, b"a").unwrap(),
            file_detail(&b, b"b").unwrap(),
        );
        let (a, bb) = (&a.chunks[0], &bb.chunks[0]);
        // One frame holds both: same stored bytes, the frame's full size,
        // each member at its own offset in it.
        assert_eq!(a.compressed_offset, bb.compressed_offset);
        assert_eq!(a.batch_size, 50 * 17 + 70 * 18);
        assert_eq!(bb.batch_size, a.batch_size);
        assert_eq!((a.batch_offset, bb.batch_offset), (0, 50 * 17));
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["batch_size"], a.batch_size);
    }

    #[test]
    fn display_helpers() {
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr--");
        assert_eq!(format_time(0, 0), "1970-01-01 00:00:00.000000000");
        assert_eq!(
            format_time(1_600_000_000, 5),
            "2020-09-13 12:26:40.000000005"
        );
        assert_eq!(format_time(-1, 0), "1969-12-31 23:59:59.000000000");
        assert_eq!(format_time(951_782_400, 0), "2000-02-29 00:00:00.000000000");
        assert_eq!(xattr_repr(b"text"), "text");
        assert_eq!(xattr_repr(b"0x12"), "0x30783132");
        assert_eq!(xattr_repr(b"a\0"), "0x6100");
    }

    /// Nesting of [`testimage::deep`] for the memory tests: its bootstrap
    /// is about 1.5 MiB, every path of every inode 400 MB.
    const DEEP: usize = 20_000;

    #[test]
    fn summary_of_a_deep_image_keeps_memory_linear() {
        let (img, path) = testimage::deep(DEEP);
        let image = open(&img);
        let b = image.bootstrap().unwrap();
        let (s, grew) = peak_rss_growth(|| summarize(&b).unwrap());
        assert!(
            grew < RSS_BOUND,
            "summarising a {} KiB bootstrap grew the peak RSS by {} MiB",
            s.bootstrap_size >> 10,
            grew >> 20
        );
        assert_eq!(s.prefetch, [escape(&path)]);
    }

    #[test]
    fn file_detail_in_a_deep_image_keeps_memory_linear() {
        let (img, path) = testimage::deep(DEEP);
        let image = open(&img);
        let b = image.bootstrap().unwrap();
        let (d, grew) = peak_rss_growth(|| file_detail(&b, b"/g").unwrap());
        assert!(
            grew < RSS_BOUND,
            "--file in a {} KiB bootstrap grew the peak RSS by {} MiB",
            b.bytes().len() >> 10,
            grew >> 20
        );
        assert_eq!(d.paths, [escape(&path), "/g".to_owned()]);
    }
}
