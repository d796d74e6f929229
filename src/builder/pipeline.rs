//! The data pipeline: chunks in, blobs and chunk table entries out.
//!
//! ```text
//! producer ──jobs──▶ N workers ──results──▶ writer ──▶ blob files
//!    ▲                (blake3, zero check,     (reorder by seq, dedup,
//!    └──────credits────  zstd)                  append, sha256)
//! ```
//!
//! The producer (the source reader, on the caller's thread) numbers each
//! chunk with a sequence number and sends it to a bounded channel. Workers
//! hash it, turn all-zero chunks into holes, and compress it with a
//! per-worker zstd context (single-threaded zstd is deterministic). The
//! writer puts results back into sequence order, deduplicates by digest
//! (first occurrence in sequence order wins, so the output does not depend
//! on the number of threads or on scheduling), and appends new chunks to
//! the current blob. The producer must take a credit before each chunk and
//! the writer returns one per chunk it has written, so at most `window`
//! chunks are in flight anywhere, including the writer's reorder buffer:
//! memory is bounded by `window * max_chunk * 2`, not by the tree.
//!
//! Workers skip compressing a chunk whose digest the writer has already
//! stored (a shared set), as an optimisation only: the writer decides.

use super::dict::Dict;
use super::error::{BuildError, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use indicatif::ProgressBar;
use rafs_format::layout::{BlobInfo, CHUNK_ZSTD, COMPRESSOR_ZSTD};
use rafs_format::ChunkSpec;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Pipeline parameters.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    /// zstd level.
    pub level: i32,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Start a new blob before one would grow past this many bytes.
    pub blob_size_limit: Option<u64>,
    /// Largest chunk the chunker produces (sizes the in-flight window).
    pub max_chunk: u32,
}

impl PipelineConfig {
    /// Chunks allowed in flight: about 32 MiB of chunk data, at least
    /// enough to keep every worker busy, at most 256.
    fn window(&self) -> usize {
        let by_bytes = (32usize << 20) / self.max_chunk.max(1) as usize;
        by_bytes.clamp(1, 256).max(2 * self.threads + 2)
    }
}

/// What the pipeline produced.
#[derive(Debug, Default)]
pub struct PipelineOutput {
    /// The chunk of each sequence number (holes for all-zero chunks).
    pub specs: Vec<ChunkSpec>,
    /// The blob table: new blobs and referenced dictionary blobs.
    pub blobs: Vec<BlobInfo>,
    /// New blobs: temporary file and sha256.
    pub blob_files: Vec<(PathBuf, [u8; 32])>,
    /// Counters.
    pub stats: Stats,
}

/// Pipeline counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Bytes of data chunks (all-zero chunks excluded).
    pub data_bytes: u64,
    /// Uncompressed bytes of distinct chunks referenced (new or dictionary).
    pub distinct_bytes: u64,
    /// Bytes written to new blobs.
    pub stored_bytes: u64,
    /// Chunks written to new blobs.
    pub stored_chunks: u64,
    /// Chunks found in the dictionary.
    pub dict_chunks: u64,
}

struct Job {
    seq: u64,
    data: Vec<u8>,
}

enum Outcome {
    Zero(u32),
    Known {
        digest: [u8; 32],
    },
    Data {
        digest: [u8; 32],
        len: u32,
        stored: Vec<u8>,
        zstd: bool,
    },
}

/// The producer's handle: numbers chunks and feeds them to the workers.
pub struct Emitter<'a> {
    jobs: Sender<Job>,
    credits: &'a Receiver<()>,
    next_seq: u64,
    progress: &'a ProgressBar,
}

impl Emitter<'_> {
    /// Queues one chunk (non-empty, at most `max_chunk` bytes); returns its
    /// sequence number. Blocks while the window is full.
    pub fn emit(&mut self, data: Vec<u8>) -> Result<u64> {
        let stopped = || BuildError::Internal("pipeline stopped".into());
        self.credits.recv().map_err(|_| stopped())?;
        let seq = self.next_seq;
        self.progress.inc(data.len() as u64);
        self.jobs.send(Job { seq, data }).map_err(|_| stopped())?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Advances the progress bar over `n` bytes that need no chunk (holes).
    pub fn skip(&self, n: u64) {
        self.progress.inc(n);
    }
}

fn is_zero(data: &[u8]) -> bool {
    let (head, body, tail) = {
        // SAFETY: every bit pattern is a valid u64; align_to only
        // reinterprets the aligned middle part of the slice.
        unsafe { data.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn work(
    level: i32,
    jobs: Receiver<Job>,
    results: Sender<(u64, Outcome)>,
    stored: &Mutex<HashSet<[u8; 32]>>,
) -> Result<()> {
    let mut zstd = zstd::bulk::Compressor::new(level)
        .map_err(|e| BuildError::BadOptions(format!("zstd level {level}: {e}")))?;
    for Job { seq, data } in jobs {
        let len = data.len() as u32;
        let outcome = if is_zero(&data) {
            Outcome::Zero(len)
        } else {
            let digest = *blake3::hash(&data).as_bytes();
            let known = stored.lock().map(|s| s.contains(&digest)).unwrap_or(false);
            if known {
                Outcome::Known { digest }
            } else {
                // A compression failure (never seen in practice) stores the
                // chunk raw rather than stalling the ordered writer.
                let packed = zstd.compress(&data).unwrap_or_default();
                if !packed.is_empty() && packed.len() < data.len() {
                    Outcome::Data {
                        digest,
                        len,
                        stored: packed,
                        zstd: true,
                    }
                } else {
                    Outcome::Data {
                        digest,
                        len,
                        stored: data,
                        zstd: false,
                    }
                }
            }
        };
        if results.send((seq, outcome)).is_err() {
            break;
        }
    }
    Ok(())
}

/// A blob being written.
struct OpenBlob {
    index: u32,
    path: PathBuf,
    file: BufWriter<File>,
    sha: Sha256,
    compressed: u64,
    uncompressed: u64,
    chunks: u32,
}

struct Writer<'a> {
    tmp_dir: &'a Path,
    limit: Option<u64>,
    cur: Option<OpenBlob>,
    known: HashMap<[u8; 32], ChunkSpec>,
    dict: Option<&'a Dict>,
    dict_blob_map: HashMap<u32, u32>,
    stored: &'a Mutex<HashSet<[u8; 32]>>,
    out: PipelineOutput,
}

impl Writer<'_> {
    fn accept(&mut self, outcome: Outcome) -> Result<()> {
        let spec = match outcome {
            Outcome::Zero(len) => ChunkSpec::hole(len),
            Outcome::Known { digest } => self
                .lookup(&digest)
                .ok_or_else(|| BuildError::Internal("chunk marked stored but unknown".into()))?,
            Outcome::Data {
                digest,
                len,
                stored,
                zstd,
            } => match self.lookup(&digest) {
                Some(spec) => spec,
                None => self.store(digest, len, &stored, zstd)?,
            },
        };
        if spec.flags & rafs_format::layout::CHUNK_HOLE == 0 {
            self.out.stats.data_bytes += u64::from(spec.uncompressed_size);
        }
        self.out.specs.push(spec);
        Ok(())
    }

    /// A chunk already stored in this build, or in the dictionary (whose
    /// blob joins the table on first use).
    fn lookup(&mut self, digest: &[u8; 32]) -> Option<ChunkSpec> {
        if let Some(spec) = self.known.get(digest) {
            return Some(*spec);
        }
        let dict = self.dict?;
        let mut spec = *dict.chunks.get(digest)?;
        let blobs = &mut self.out.blobs;
        let index = *self
            .dict_blob_map
            .entry(spec.blob_index)
            .or_insert_with(|| {
                blobs.push(dict.blobs[spec.blob_index as usize]);
                (blobs.len() - 1) as u32
            });
        spec.blob_index = index;
        self.known.insert(*digest, spec);
        self.out.stats.dict_chunks += 1;
        self.out.stats.distinct_bytes += u64::from(spec.uncompressed_size);
        Some(spec)
    }

    fn open_blob(&mut self) -> Result<OpenBlob> {
        let index = self.out.blobs.len() as u32;
        self.out.blobs.push(BlobInfo::default());
        let path = self.tmp_dir.join(format!("blob-{index}"));
        let file = File::create(&path).map_err(|e| BuildError::io(&path, e))?;
        Ok(OpenBlob {
            index,
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            sha: Sha256::new(),
            compressed: 0,
            uncompressed: 0,
            chunks: 0,
        })
    }

    fn store(&mut self, digest: [u8; 32], len: u32, bytes: &[u8], zstd: bool) -> Result<ChunkSpec> {
        let n = bytes.len() as u64;
        let full = |b: &OpenBlob| {
            self.limit
                .is_some_and(|l| b.compressed > 0 && b.compressed + n > l)
        };
        if self.cur.as_ref().is_some_and(full) {
            self.finish_blob()?;
        }
        let mut blob = match self.cur.take() {
            Some(b) => b,
            None => self.open_blob()?,
        };
        blob.file
            .write_all(bytes)
            .map_err(|e| BuildError::io(&blob.path, e))?;
        blob.sha.update(bytes);
        let spec = ChunkSpec {
            digest,
            blob_index: blob.index,
            compressed_offset: blob.compressed,
            uncompressed_offset: blob.uncompressed,
            compressed_size: bytes.len() as u32,
            uncompressed_size: len,
            flags: if zstd { CHUNK_ZSTD } else { 0 },
            ..Default::default()
        };
        blob.compressed += n;
        blob.uncompressed += u64::from(len);
        blob.chunks += 1;
        self.cur = Some(blob);
        self.known.insert(digest, spec);
        if let Ok(mut s) = self.stored.lock() {
            s.insert(digest);
        }
        let st = &mut self.out.stats;
        st.stored_bytes += n;
        st.stored_chunks += 1;
        st.distinct_bytes += u64::from(len);
        Ok(spec)
    }

    /// Flushes and syncs the current blob and records its table entry.
    fn finish_blob(&mut self) -> Result<()> {
        let Some(blob) = self.cur.take() else {
            return Ok(());
        };
        let path = blob.path;
        let file = blob
            .file
            .into_inner()
            .map_err(|e| BuildError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| BuildError::io(&path, e))?;
        let id: [u8; 32] = blob.sha.finalize().into();
        self.out.blobs[blob.index as usize] = BlobInfo {
            id,
            compressed_size: blob.compressed.into(),
            uncompressed_size: blob.uncompressed.into(),
            chunk_count: blob.chunks.into(),
            compressor: COMPRESSOR_ZSTD.into(),
            reserved: [0; 8],
        };
        self.out.blob_files.push((path, id));
        Ok(())
    }

    /// Consumes results, in sequence order, until the workers are done.
    fn run(
        mut self,
        results: Receiver<(u64, Outcome)>,
        credits: Sender<()>,
    ) -> Result<PipelineOutput> {
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        for (seq, outcome) in results {
            pending.insert(seq, outcome);
            while let Some(outcome) = pending.remove(&next) {
                self.accept(outcome)?;
                next += 1;
                // The producer may already be gone; that is fine.
                let _ = credits.send(());
            }
        }
        if !pending.is_empty() {
            return Err(BuildError::Internal(format!("chunk {next} never arrived")));
        }
        self.finish_blob()?;
        Ok(self.out)
    }
}

fn joined<T>(r: std::thread::Result<Result<T>>, who: &str) -> Result<T> {
    r.unwrap_or_else(|_| Err(BuildError::Internal(format!("{who} thread panicked"))))
}

/// Runs `produce` on this thread, feeding chunks through the workers and
/// the writer; blobs are written as `tmp_dir/blob-N`. Returns the
/// producer's result and the pipeline's output. On failure, the first
/// real error wins over the "pipeline stopped" it causes elsewhere.
pub fn run<T, F>(
    cfg: &PipelineConfig,
    dict: Option<&Dict>,
    tmp_dir: &Path,
    progress: &ProgressBar,
    produce: F,
) -> Result<(T, PipelineOutput)>
where
    F: FnOnce(&mut Emitter<'_>) -> Result<T>,
{
    let window = cfg.window();
    let (job_tx, job_rx) = bounded::<Job>(2 * cfg.threads.max(1));
    let (res_tx, res_rx) = bounded(window);
    let (credit_tx, credit_rx) = bounded(window);
    for _ in 0..window {
        let _ = credit_tx.send(());
    }
    let stored = Mutex::new(
        dict.map(|d| d.chunks.keys().copied().collect())
            .unwrap_or_default(),
    );
    let writer = Writer {
        tmp_dir,
        limit: cfg.blob_size_limit,
        cur: None,
        known: HashMap::new(),
        dict,
        dict_blob_map: HashMap::new(),
        stored: &stored,
        out: PipelineOutput::default(),
    };
    std::thread::scope(|s| {
        let writer = s.spawn(move || writer.run(res_rx, credit_tx));
        let workers: Vec<_> = (0..cfg.threads.max(1))
            .map(|_| {
                let (jobs, results, stored) = (job_rx.clone(), res_tx.clone(), &stored);
                s.spawn(move || work(cfg.level, jobs, results, stored))
            })
            .collect();
        drop((job_rx, res_tx));
        let mut emitter = Emitter {
            jobs: job_tx,
            credits: &credit_rx,
            next_seq: 0,
            progress,
        };
        let produced = produce(&mut emitter);
        drop(emitter);
        let mut worker_err = Ok(());
        for w in workers {
            if let Err(e) = joined(w.join(), "worker") {
                worker_err = worker_err.and(Err(e));
            }
        }
        let written = joined(writer.join(), "writer");
        match (produced, worker_err, written) {
            (Ok(t), Ok(()), Ok(out)) => Ok((t, out)),
            (_, Err(e), _) => Err(e),
            (_, _, Err(e)) if !matches!(e, BuildError::Internal(_)) => Err(e),
            (Err(e), _, _) => Err(e),
            (_, _, Err(e)) => Err(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&vec![0u8; 10_001]));
        for i in [0, 7, 8, 5000, 10_000] {
            let mut v = vec![0u8; 10_001];
            v[i] = 1;
            assert!(!is_zero(&v), "{i}");
            assert!(!is_zero(&v[i..]));
        }
    }
}
