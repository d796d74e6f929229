//! `rafs check`: validates an image, and with `--blobs` every byte of data.
//!
//! Without `--blobs` this is [`Image::open`]: the checksum and every
//! structural invariant of the bootstrap, reported as the typed
//! `FormatError`. With `--blobs DIR`:
//! - every blob of the blob table is streamed once through sha256: its size
//!   and hash must match the table (a missing blob is reported with a few of
//!   the files that need it);
//! - every distinct stored chunk (same blob, offset, sizes, flags and digest:
//!   identical files and hardlinks share chunks) is read, decompressed with
//!   the bounded decoder of [`crate::chunk`] and hashed against its digest.
//!
//! Both passes are CPU-bound (sha256, zstd, blake3) and run on a pool of
//! scoped threads pulling batches from a shared counter. Chunks are sorted
//! by blob and offset first, so reads are sequential per thread.
//!
//! Problems are collected, not fatal: each is printed on one line on stderr,
//! a chunk problem naming the chunk's table index, blob, offset and every
//! path that uses the chunk; then the command fails. Success prints one line
//! on stdout: `ok: N inodes, M chunks verified, X bytes`.

use crate::backend::file::FileBackend;
use crate::backend::BackendError;
use crate::chunk::{fetch_chunk, FetchError};
use crate::image::walk::{escape, paths_of, Paths};
use crate::image::{Image, ImageError};
use rafs_format::layout::ChunkInfo;
use rafs_format::{Bootstrap, FormatError};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use thiserror::Error;

/// Arguments of `rafs check`.
#[derive(Debug)]
pub struct CheckArgs {
    /// The bootstrap.
    pub bootstrap: PathBuf,
    /// Also verify every blob and chunk, reading blobs from this directory
    /// (files named by their sha256 hex).
    pub blobs: Option<PathBuf>,
}

/// Why `rafs check` failed.
#[derive(Debug, Error)]
pub enum CheckError {
    /// The bootstrap could not be opened or is invalid.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The bootstrap is inconsistent (cannot happen after validation).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Data problems were found (and printed).
    #[error("check failed: {0} problem(s) found")]
    Failed(usize),
}

/// Files that need a chunk or blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    /// Paths (escaped), every path of hardlinked files.
    pub paths: Vec<String>,
    /// Further paths not listed.
    pub more: usize,
}

impl fmt::Display for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.paths.is_empty() {
            return f.write_str("used by no file");
        }
        write!(f, "used by {}", self.paths.join(", "))?;
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// One problem found by the data check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The blob file does not exist.
    BlobMissing {
        /// Blob id, hex.
        blob: String,
        /// Some of the files that need it.
        users: Users,
    },
    /// The blob file could not be read.
    BlobUnreadable {
        /// Blob id, hex.
        blob: String,
        /// The I/O error.
        error: String,
        /// Some of the files that need it.
        users: Users,
    },
    /// The blob's size differs from the blob table.
    BlobSize {
        /// Blob id, hex.
        blob: String,
        /// Size in the blob table.
        expected: u64,
        /// Size of the file.
        actual: u64,
    },
    /// The blob's sha256 is not its id.
    BlobDigest {
        /// Blob id, hex.
        blob: String,
        /// The sha256 of the file, hex.
        actual: String,
    },
    /// A chunk does not decode to its digest.
    Chunk {
        /// Index in the chunk table.
        index: usize,
        /// Blob id, hex.
        blob: String,
        /// Offset of the stored bytes in the blob.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// Every path using the chunk.
        users: Users,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::BlobMissing { blob, users } => write!(f, "blob {blob}: missing; {users}"),
            Problem::BlobUnreadable { blob, error, users } => {
                write!(f, "blob {blob}: unreadable: {error}; {users}")
            }
            Problem::BlobSize {
                blob,
                expected,
                actual,
            } => write!(f, "blob {blob}: size {actual}, expected {expected}"),
            Problem::BlobDigest { blob, actual } => {
                write!(
                    f,
                    "blob {blob}: sha256 mismatch (content hashes to {actual})"
                )
            }
            Problem::Chunk {
                index,
                blob,
                offset,
                reason,
                users,
            } => write!(
                f,
                "chunk {index} (blob {blob}, offset {offset}): {reason}; {users}"
            ),
        }
    }
}

/// Outcome of the data check.
#[derive(Debug, Default)]
pub struct Report {
    /// Distinct chunks read and verified successfully.
    pub chunks_verified: u64,
    /// Uncompressed bytes of those chunks.
    pub bytes_verified: u64,
    /// Everything that is wrong.
    pub problems: Vec<Problem>,
}

/// How many paths a missing blob's message lists.
const MAX_BLOB_USERS: usize = 5;
/// Items a worker takes from the shared counter at a time.
const BATCH: usize = 16;

/// Maps `f` over `items` on `threads` scoped threads, each with its own
/// state from `init`; results in item order.
fn par_map<T: Sync, S, R: Send>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    let mut indexed: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(BATCH, Ordering::Relaxed);
                        if start >= items.len() {
                            return out;
                        }
                        for (i, item) in items.iter().enumerate().skip(start).take(BATCH) {
                            out.push((i, f(&mut state, item)));
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    indexed.sort_unstable_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}

/// Worker threads: the machine's parallelism, at least 2, at most 16.
fn thread_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}

/// What the blob pass found about one blob.
#[derive(Debug)]
enum BlobState {
    /// Readable (maybe with a size or digest problem: chunks still checked).
    Readable(Option<Problem>),
    /// Missing or unreadable: its chunks cannot be checked.
    Unusable(io::Error),
}

/// Streams blob `id` through sha256, checking its size and hash.
fn hash_blob(dir: &Path, id: &[u8; 32], size: u64) -> BlobState {
    let blob = hex::encode(id);
    let mut file = match File::open(dir.join(&blob)) {
        Ok(f) => f,
        Err(e) => return BlobState::Unusable(e),
    };
    let actual = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return BlobState::Unusable(e),
    };
    if actual != size {
        let expected = size;
        return BlobState::Readable(Some(Problem::BlobSize {
            blob,
            expected,
            actual,
        }));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return BlobState::Unusable(e),
        }
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if &digest != id {
        let actual = hex::encode(digest);
        return BlobState::Readable(Some(Problem::BlobDigest { blob, actual }));
    }
    BlobState::Readable(None)
}

/// Identity of a stored chunk: entries with equal keys are read once.
type ChunkKey = (u32, u64, u32, u32, u32, [u8; 32]);

fn key(c: &ChunkInfo) -> ChunkKey {
    (
        c.blob_index.get(),
        c.compressed_offset.get(),
        c.compressed_size.get(),
        c.uncompressed_size.get(),
        c.flags.get(),
        c.digest,
    )
}

/// Reads and verifies one chunk through `backend`; returns its length.
fn verify_chunk(backend: &FileBackend, b: &Bootstrap<'_>, c: &ChunkInfo) -> Result<u64, String> {
    match fetch_chunk(backend, b, c) {
        Ok(data) => Ok(data.len() as u64),
        Err(FetchError::Backend(BackendError::OutOfRange { .. })) => {
            Err("stored bytes extend past the end of the blob".into())
        }
        Err(FetchError::Chunk { source, .. }) => Err(source.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// For every inode whose chunk run contains a chunk `select` maps to
/// `Some(k)`: `k -> inodes`.
fn users_by<K: Ord + Copy>(
    b: &Bootstrap<'_>,
    select: impl Fn(usize, &ChunkInfo) -> Option<K>,
) -> Result<BTreeMap<K, BTreeSet<u32>>, FormatError> {
    let mut users = BTreeMap::<K, BTreeSet<u32>>::new();
    for ino in 0..b.inode_count() {
        let inode = b.inode(ino)?;
        if !inode.is_reg() {
            continue;
        }
        let start = inode.payload_start.get() as usize;
        for (i, c) in b.file_chunks(ino)?.iter().enumerate() {
            if let Some(k) = select(start + i, c) {
                users.entry(k).or_default().insert(ino);
            }
        }
    }
    Ok(users)
}

/// How many paths of each user inode [`users`] may list: every path of a
/// failed chunk's users; of an unusable blob's, the first [`MAX_BLOB_USERS`]
/// in inode order, the others only counted. Every inode has a path (the
/// bootstrap is validated), so a blob's `i`-th user lists at most
/// `MAX_BLOB_USERS - i`.
fn paths_wanted(
    blob_users: &BTreeMap<u32, BTreeSet<u32>>,
    chunk_users: &BTreeMap<usize, BTreeSet<u32>>,
) -> HashMap<u32, usize> {
    let mut keep = HashMap::new();
    for inodes in blob_users.values() {
        for (i, &ino) in inodes.iter().enumerate() {
            let k = keep.entry(ino).or_insert(0);
            *k = MAX_BLOB_USERS.saturating_sub(i).max(*k);
        }
    }
    for &ino in chunk_users.values().flatten() {
        keep.insert(ino, usize::MAX);
    }
    keep
}

/// The paths of `inodes` in inode order (each inode's in walk order), the
/// first `max` listed and the rest counted.
fn users(paths: &HashMap<u32, Paths>, inodes: Option<&BTreeSet<u32>>, max: usize) -> Users {
    let mut out = Users {
        paths: Vec::new(),
        more: 0,
    };
    for p in inodes
        .into_iter()
        .flatten()
        .filter_map(|ino| paths.get(ino))
    {
        let listed = p.kept.len().min(max - out.paths.len());
        out.paths.extend(p.kept[..listed].iter().map(|p| escape(p)));
        out.more += p.count - listed;
    }
    out
}

/// Verifies every blob and distinct chunk of `b` against the blobs in `dir`.
pub fn check_data(b: &Bootstrap<'_>, dir: &Path) -> Result<Report, FormatError> {
    let threads = thread_count();
    let states = par_map(
        b.blobs(),
        threads,
        || (),
        |_, x| hash_blob(dir, &x.id, x.compressed_size.get()),
    );
    let mut report = Report::default();
    let usable = |i: u32| matches!(states.get(i as usize), Some(BlobState::Readable(_)));

    // One representative table index per distinct stored chunk.
    let mut seen: HashMap<ChunkKey, usize> = HashMap::new();
    let mut reps: Vec<usize> = Vec::new();
    for (i, c) in b.chunks().iter().enumerate() {
        if !c.is_hole() && usable(c.blob_index.get()) {
            seen.entry(key(c)).or_insert_with(|| {
                reps.push(i);
                i
            });
        }
    }
    let chunks = b.chunks();
    reps.sort_unstable_by_key(|&i| {
        (
            chunks[i].blob_index.get(),
            chunks[i].compressed_offset.get(),
        )
    });
    let backend = FileBackend::new(dir);
    let results = par_map(
        &reps,
        threads,
        || (),
        |(), &i| verify_chunk(&backend, b, &chunks[i]),
    );
    let mut failed: HashMap<ChunkKey, (usize, String)> = HashMap::new();
    for (&i, r) in reps.iter().zip(results) {
        match r {
            Ok(n) => {
                report.chunks_verified += 1;
                report.bytes_verified += n;
            }
            Err(reason) => {
                failed.insert(key(&chunks[i]), (i, reason));
            }
        }
    }
    let bad_blobs = states
        .iter()
        .any(|s| !matches!(s, BlobState::Readable(None)));
    if failed.is_empty() && !bad_blobs {
        return Ok(report);
    }
    report.problems = problems(b, &states, &failed)?;
    Ok(report)
}

/// Turns blob states and failed chunks into problems naming their files.
fn problems(
    b: &Bootstrap<'_>,
    states: &[BlobState],
    failed: &HashMap<ChunkKey, (usize, String)>,
) -> Result<Vec<Problem>, FormatError> {
    let blob_users = users_by(b, |_, c| {
        let unusable = matches!(
            states.get(c.blob_index.get() as usize),
            Some(BlobState::Unusable(_))
        );
        (!c.is_hole() && unusable).then_some(c.blob_index.get())
    })?;
    let chunk_users = users_by(b, |_, c| {
        (!c.is_hole()).then(|| failed.get(&key(c)).map(|(rep, _)| *rep))?
    })?;
    let paths = paths_of(b, &paths_wanted(&blob_users, &chunk_users))?;
    let mut out = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let blob = b
            .blobs()
            .get(i)
            .map(|x| hex::encode(x.id))
            .unwrap_or_default();
        let users = users(&paths, blob_users.get(&(i as u32)), MAX_BLOB_USERS);
        match state {
            BlobState::Readable(None) => {}
            BlobState::Readable(Some(p)) => out.push(p.clone()),
            BlobState::Unusable(e) if e.kind() == io::ErrorKind::NotFound => {
                out.push(Problem::BlobMissing { blob, users });
            }
            BlobState::Unusable(e) => out.push(Problem::BlobUnreadable {
                blob,
                error: e.to_string(),
                users,
            }),
        }
    }
    let mut chunk_problems: Vec<&(usize, String)> = failed.values().collect();
    chunk_problems.sort();
    for (index, reason) in chunk_problems {
        let c = &b.chunks()[*index];
        out.push(Problem::Chunk {
            index: *index,
            blob: hex::encode(b.chunk_blob(c)?.id),
            offset: c.compressed_offset.get(),
            reason: reason.clone(),
            users: users(&paths, chunk_users.get(index), usize::MAX),
        });
    }
    Ok(out)
}

fn check(args: &CheckArgs) -> Result<String, CheckError> {
    let image = Image::open(&args.bootstrap)?;
    let b = image.bootstrap()?;
    let inodes = b.inode_count();
    let Some(dir) = &args.blobs else {
        return Ok(format!(
            "ok: {inodes} inodes, {} chunk entries, bootstrap valid (data not checked: pass --blobs)",
            b.chunks().len()
        ));
    };
    let report = check_data(&b, dir)?;
    if !report.problems.is_empty() {
        for p in &report.problems {
            eprintln!("{p}");
        }
        return Err(CheckError::Failed(report.problems.len()));
    }
    Ok(format!(
        "ok: {inodes} inodes, {} chunks verified, {} bytes",
        report.chunks_verified, report.bytes_verified
    ))
}

/// Runs `rafs check`.
pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let summary = check(args)?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testimage::{self, hello_data, peak_rss_growth, Part, TestImage, RSS_BOUND};

    fn run_check(img: &TestImage) -> Report {
        let image = Image::open(&img.bootstrap).unwrap();
        check_data(&image.bootstrap().unwrap(), &img.blobs).unwrap()
    }

    fn blob_path(img: &TestImage) -> PathBuf {
        img.blobs.join(img.blob_id.as_ref().unwrap())
    }

    #[test]
    fn intact_image_verifies_every_distinct_chunk() {
        let img = testimage::sample();
        let r = run_check(&img);
        assert_eq!(r.problems, []);
        assert_eq!(r.chunks_verified, 4);
        assert_eq!(r.bytes_verified, hello_data().len() as u64 + 3 * 4096);
        let args = CheckArgs {
            bootstrap: img.bootstrap.clone(),
            blobs: Some(img.blobs.clone()),
        };
        let line = check(&args).unwrap();
        assert!(
            line.starts_with("ok: 12 inodes, 4 chunks verified, "),
            "{line}"
        );
    }

    #[test]
    fn flipped_byte_names_chunk_blob_and_every_path() {
        let img = testimage::sample();
        // /etc/hello's chunk (table index 0) is stored first in the blob.
        let p = blob_path(&img);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[10] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
        let r = run_check(&img);
        assert_eq!(r.chunks_verified, 3);
        let id = img.blob_id.clone().unwrap();
        assert!(r.problems.contains(&Problem::BlobDigest {
            blob: id.clone(),
            actual: hex::encode(Sha256::digest(std::fs::read(&p).unwrap())),
        }));
        let chunk = r
            .problems
            .iter()
            .find(|p| matches!(p, Problem::Chunk { .. }))
            .unwrap();
        let line = chunk.to_string();
        let want = format!("chunk 0 (blob {id}, offset 0): ");
        assert!(line.starts_with(&want), "{line}");
        assert!(
            line.ends_with("used by /etc/hello, /hello2, /etc/passwd2"),
            "{line}"
        );
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
    }

    #[test]
    fn missing_blob_is_reported_with_some_files() {
        let img = testimage::sample();
        std::fs::remove_file(blob_path(&img)).unwrap();
        let r = run_check(&img);
        assert_eq!(r.chunks_verified, 0);
        let id = img.blob_id.clone().unwrap();
        assert_eq!(r.problems.len(), 1);
        let line = r.problems[0].to_string();
        assert!(
            line.starts_with(&format!("blob {id}: missing; used by /etc/hello, /hello2")),
            "{line}"
        );
        let args = CheckArgs {
            bootstrap: img.bootstrap.clone(),
            blobs: Some(img.blobs.clone()),
        };
        assert!(matches!(check(&args), Err(CheckError::Failed(1))));
    }

    #[test]
    fn missing_blob_lists_five_paths_in_inode_order_and_counts_the_rest() {
        let mut bl = testimage::Builder::new();
        let file = |bl: &mut testimage::Builder, name: &str, seed| {
            bl.file(
                0,
                name,
                0o644,
                vec![Part::Data(testimage::noise(100, seed))],
            )
        };
        let x = file(&mut bl, "x", 1);
        file(&mut bl, "y", 2);
        let z = file(&mut bl, "z1", 3);
        file(&mut bl, "w", 4);
        bl.link(0, "x2", x);
        bl.link(0, "x3", x);
        bl.link(0, "z2", z);
        let img = bl.finish();
        std::fs::remove_file(blob_path(&img)).unwrap();
        let r = run_check(&img);
        let want = Users {
            paths: ["/x", "/x2", "/x3", "/y", "/z1"].map(String::from).to_vec(),
            more: 2,
        };
        assert!(
            matches!(&r.problems[..], [Problem::BlobMissing { users, .. }] if *users == want),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn missing_blob_in_a_deep_image_keeps_memory_linear() {
        // Every path of every inode would be 400 MB of a 1.5 MiB bootstrap.
        let (img, path) = testimage::deep(20_000);
        std::fs::remove_file(blob_path(&img)).unwrap();
        let image = Image::open(&img.bootstrap).unwrap();
        let b = image.bootstrap().unwrap();
        let (r, grew) = peak_rss_growth(|| check_data(&b, &img.blobs).unwrap());
        assert!(
            grew < RSS_BOUND,
            "checking a {} KiB bootstrap grew the peak RSS by {} MiB",
            b.bytes().len() >> 10,
            grew >> 20
        );
        let want = Users {
            paths: vec![escape(&path), "/g".to_owned()],
            more: 0,
        };
        assert!(
            matches!(&r.problems[..], [Problem::BlobMissing { users, .. }] if *users == want),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn truncated_blob_reports_size_and_chunk() {
        let img = testimage::sample();
        let p = blob_path(&img);
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 1).unwrap();
        let r = run_check(&img);
        let text: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text[0].contains(&format!("size {}, expected {len}", len - 1)),
            "{text:?}"
        );
        assert!(
            text[1].contains("past the end of the blob; used by /suid"),
            "{text:?}"
        );
    }

    #[test]
    fn structure_only_check() {
        let img = testimage::sample();
        let args = CheckArgs {
            bootstrap: img.bootstrap.clone(),
            blobs: None,
        };
        assert!(check(&args).unwrap().starts_with("ok: 12 inodes"));
        let mut bytes = std::fs::read(&img.bootstrap).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&img.bootstrap, bytes).unwrap();
        let err = check(&args).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn par_map_keeps_order() {
        let items: Vec<u32> = (0..1000).collect();
        let out = par_map(
            &items,
            4,
            || 0u32,
            |n, &x| {
                *n += 1;
                x * 2
            },
        );
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(
            par_map(&[] as &[u32], 4, || (), |_, &x| x),
            Vec::<u32>::new()
        );
    }
}
