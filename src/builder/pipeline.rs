//! The data pipeline: chunks in, blobs and chunk table entries out.
//!
//! ```text
//! producer ──jobs──▶ N workers ──results──▶ writer ──▶ blob files
//!  (batch    ▲        (blake3, zero check,     (reorder by job, dedup,
//!   frames)  └─credits─ zstd)                   append, sha256)
//! ```
//!
//! The producer (the source reader, on the caller's thread) numbers each
//! chunk with a sequence number. A chunk of at least the batch threshold
//! (or any chunk, with batching off) is one job; smaller ones are packed
//! into batch frames by the [`Batcher`], and a full frame is one job (see
//! [`super::batch`]). Jobs are numbered too and go to a bounded channel.
//! Workers hash chunks, turn all-zero chunks into holes, and compress
//! chunks and frames with a per-worker zstd context (single-threaded zstd
//! is deterministic). The writer puts results back into job order,
//! deduplicates by digest (first occurrence in job order wins, so the
//! output does not depend on the number of threads or on scheduling),
//! appends new chunks and frames to the current blob, and records the
//! chunk of every sequence number. The producer must take a credit before
//! each job and the writer returns one per job it has written, so at most
//! `window` jobs are in flight anywhere, including the writer's reorder
//! buffer: memory is bounded by `window * max(max_chunk, frame) * 2` plus
//! the frame being filled, not by the tree.
//!
//! Workers skip compressing a chunk whose digest the writer has already
//! stored (a shared set), as an optimisation only: the writer decides.

use super::batch::{
    classify, compress_frame, compress_single, BatchConfig, Batcher, FrameDone, FrameJob, Single,
};
use super::dict::Dict;
use super::error::{BuildError, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use indicatif::ProgressBar;
use rafs_format::layout::{
    BlobInfo, BLOB_ALIGNED, BLOB_FRAME_ALIGN, CHUNK_BATCH, CHUNK_ZSTD, COMPRESSOR_ZSTD,
};
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
    /// Batch frames.
    pub batch: BatchConfig,
}

impl PipelineConfig {
    /// Jobs allowed in flight: about 32 MiB of chunk data, at least
    /// enough to keep every worker busy, at most 256.
    fn window(&self) -> usize {
        let job = self.max_chunk.max(self.batch.frame_size).max(1);
        let by_bytes = (32usize << 20) / job as usize;
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
    /// Batch frames written.
    pub frames: u64,
    /// Chunks stored as members of batch frames.
    pub batched_chunks: u64,
}

/// A unit of work, numbered in the order the producer sent it.
enum Job {
    /// One chunk, stored alone.
    Chunk { job: u64, seq: u64, data: Vec<u8> },
    /// A batch frame and the aliases queued behind it.
    Frame { job: u64, frame: FrameJob },
}

enum Outcome {
    Zero(u32),
    Known { digest: [u8; 32] },
    Data(Single),
}

/// A worker's result for one job.
enum Done {
    Chunk(u64, Outcome),
    Frame(FrameDone),
}

/// The producer's handle: numbers chunks, forms batch frames, and feeds
/// jobs to the workers.
pub struct Emitter<'a> {
    jobs: Sender<Job>,
    credits: &'a Receiver<()>,
    next_seq: u64,
    next_job: u64,
    batcher: Batcher<'a>,
    progress: &'a ProgressBar,
}

impl Emitter<'_> {
    /// Queues one chunk (non-empty, at most `max_chunk` bytes); returns its
    /// sequence number. Blocks while the window is full.
    pub fn emit(&mut self, data: Vec<u8>) -> Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.progress.inc(data.len() as u64);
        let class = if self.batcher.config().takes(data.len()) && !is_zero(&data) {
            classify(&data)
        } else {
            None
        };
        if let Some(class) = class {
            if let Some(frame) = self.batcher.add(seq, &data, class) {
                self.send(|job| Job::Frame { job, frame })?;
            }
        } else {
            self.send(|job| Job::Chunk { job, seq, data })?;
        }
        Ok(seq)
    }

    /// Advances the progress bar over `n` bytes that need no chunk (holes).
    pub fn skip(&self, n: u64) {
        self.progress.inc(n);
    }

    /// Takes a credit and sends the next job.
    fn send(&mut self, make: impl FnOnce(u64) -> Job) -> Result<()> {
        let stopped = || BuildError::Internal("pipeline stopped".into());
        self.credits.recv().map_err(|_| stopped())?;
        self.jobs.send(make(self.next_job)).map_err(|_| stopped())?;
        self.next_job += 1;
        Ok(())
    }

    /// Sends the last, partly filled frames.
    fn finish(&mut self) -> Result<()> {
        while let Some(frame) = self.batcher.take() {
            self.send(|job| Job::Frame { job, frame })?;
        }
        Ok(())
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

fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(level)
        .map_err(|e| BuildError::BadOptions(format!("zstd level {level}: {e}")))
}

fn work(
    cfg: &PipelineConfig,
    jobs: Receiver<Job>,
    results: Sender<(u64, Done)>,
    stored: &Mutex<HashSet<[u8; 32]>>,
) -> Result<()> {
    let mut zstd = compressor(cfg.level)?;
    // Frames get their own context (and level) only when batching is on.
    let mut frame_zstd = None;
    for job in jobs {
        let (job, done) = match job {
            Job::Chunk { job, seq, data } => (
                job,
                Done::Chunk(seq, chunk_outcome(&mut zstd, data, stored)),
            ),
            Job::Frame { job, frame } => {
                let z = match &mut frame_zstd {
                    Some(z) => z,
                    None => frame_zstd.insert(compressor(cfg.batch.level)?),
                };
                (job, Done::Frame(compress_frame(z, frame)))
            }
        };
        if results.send((job, done)).is_err() {
            break;
        }
    }
    Ok(())
}

fn chunk_outcome(
    zstd: &mut zstd::bulk::Compressor<'_>,
    data: Vec<u8>,
    stored: &Mutex<HashSet<[u8; 32]>>,
) -> Outcome {
    if is_zero(&data) {
        return Outcome::Zero(data.len() as u32);
    }
    let digest = *blake3::hash(&data).as_bytes();
    let known = stored.lock().map(|s| s.contains(&digest)).unwrap_or(false);
    if known {
        Outcome::Known { digest }
    } else {
        Outcome::Data(compress_single(zstd, digest, data))
    }
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
    /// The chunk of each sequence number, once known.
    specs: Vec<Option<ChunkSpec>>,
    out: PipelineOutput,
}

/// Where [`Writer::append`] put a stored frame or chunk.
struct Placed {
    blob_index: u32,
    compressed_offset: u64,
    uncompressed_offset: u64,
}

impl Writer<'_> {
    fn accept(&mut self, seq: u64, outcome: Outcome) -> Result<()> {
        let spec = match outcome {
            Outcome::Zero(len) => ChunkSpec::hole(len),
            Outcome::Known { digest } => self
                .lookup(&digest)
                .ok_or_else(|| BuildError::Internal("chunk marked stored but unknown".into()))?,
            Outcome::Data(single) => match self.lookup(&single.digest) {
                Some(spec) => spec,
                None => self.store(&single)?,
            },
        };
        self.place(seq, spec)
    }

    /// Records the chunk of sequence number `seq`.
    fn place(&mut self, seq: u64, spec: ChunkSpec) -> Result<()> {
        if spec.flags & rafs_format::layout::CHUNK_HOLE == 0 {
            self.out.stats.data_bytes += u64::from(spec.uncompressed_size);
        }
        let i = usize::try_from(seq)
            .map_err(|_| BuildError::Internal(format!("sequence {seq} out of range")))?;
        if i >= self.specs.len() {
            self.specs.resize(i + 1, None);
        }
        if self.specs[i].replace(spec).is_some() {
            return Err(BuildError::Internal(format!("chunk {seq} placed twice")));
        }
        Ok(())
    }

    /// Stores a frame's new members (members already known keep their
    /// earlier location; the frame is not written if all are), then its
    /// individually stored members, then its aliases.
    fn accept_frame(&mut self, done: FrameDone) -> Result<()> {
        if let Some((stored, size, members)) = done.frame {
            let known: Vec<Option<ChunkSpec>> =
                members.iter().map(|m| self.lookup(&m.digest)).collect();
            let fresh = known.iter().filter(|k| k.is_none()).count() as u32;
            let at = if fresh > 0 {
                Some(self.append(&stored, u64::from(size), fresh)?)
            } else {
                None
            };
            for (m, k) in members.iter().zip(known) {
                let spec = match (k, &at) {
                    (Some(spec), _) => spec,
                    (None, Some(at)) => self.register(ChunkSpec {
                        digest: m.digest,
                        blob_index: at.blob_index,
                        compressed_offset: at.compressed_offset,
                        uncompressed_offset: at.uncompressed_offset + u64::from(m.offset),
                        compressed_size: stored.len() as u32,
                        uncompressed_size: m.len,
                        flags: CHUNK_ZSTD | CHUNK_BATCH,
                        batch_offset: m.offset,
                        batch_size: size,
                    }),
                    (None, None) => return Err(BuildError::Internal("frame not stored".into())),
                };
                self.place(m.seq, spec)?;
            }
            if fresh > 0 {
                self.out.stats.frames += 1;
                self.out.stats.batched_chunks += u64::from(fresh);
            }
        }
        for (seq, single) in done.singles {
            self.accept(seq, Outcome::Data(single))?;
        }
        for (seq, digest) in done.aliases {
            self.accept(seq, Outcome::Known { digest })?;
        }
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

    /// Appends stored bytes that occupy `ulen` bytes of uncompressed space
    /// and hold `chunks` distinct chunks, starting a new blob first if the
    /// limit says so (a frame or chunk is never split across blobs).
    fn append(&mut self, bytes: &[u8], ulen: u64, chunks: u32) -> Result<Placed> {
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
        let placed = Placed {
            blob_index: blob.index,
            compressed_offset: blob.compressed,
            uncompressed_offset: blob.uncompressed,
        };
        blob.compressed += n;
        // Frames start on BLOB_FRAME_ALIGN boundaries of the uncompressed
        // space (BLOB_ALIGNED), so a cache range never holds two frames.
        blob.uncompressed = (blob.uncompressed + ulen).next_multiple_of(BLOB_FRAME_ALIGN);
        blob.chunks += chunks;
        self.cur = Some(blob);
        self.out.stats.stored_bytes += n;
        Ok(placed)
    }

    /// Records a newly stored chunk as the location of its digest (the
    /// first stored copy wins).
    fn register(&mut self, spec: ChunkSpec) -> ChunkSpec {
        let spec = *self.known.entry(spec.digest).or_insert(spec);
        if let Ok(mut s) = self.stored.lock() {
            s.insert(spec.digest);
        }
        let st = &mut self.out.stats;
        st.stored_chunks += 1;
        st.distinct_bytes += u64::from(spec.uncompressed_size);
        spec
    }

    fn store(&mut self, s: &Single) -> Result<ChunkSpec> {
        let at = self.append(&s.stored, u64::from(s.len), 1)?;
        Ok(self.register(ChunkSpec {
            digest: s.digest,
            blob_index: at.blob_index,
            compressed_offset: at.compressed_offset,
            uncompressed_offset: at.uncompressed_offset,
            compressed_size: s.stored.len() as u32,
            uncompressed_size: s.len,
            flags: if s.zstd { CHUNK_ZSTD } else { 0 },
            ..Default::default()
        }))
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
            flags: BLOB_ALIGNED.into(),
            reserved: [0; 4],
        };
        self.out.blob_files.push((path, id));
        Ok(())
    }

    /// Consumes results, in job order, until the workers are done.
    fn run(
        mut self,
        results: Receiver<(u64, Done)>,
        credits: Sender<()>,
    ) -> Result<PipelineOutput> {
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        for (job, done) in results {
            pending.insert(job, done);
            while let Some(done) = pending.remove(&next) {
                match done {
                    Done::Chunk(seq, outcome) => self.accept(seq, outcome)?,
                    Done::Frame(frame) => self.accept_frame(frame)?,
                }
                next += 1;
                // The producer may already be gone; that is fine.
                let _ = credits.send(());
            }
        }
        if !pending.is_empty() {
            return Err(BuildError::Internal(format!("job {next} never arrived")));
        }
        self.finish_blob()?;
        let specs = std::mem::take(&mut self.specs);
        self.out.specs = specs
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.ok_or_else(|| BuildError::Internal(format!("no chunk {i}"))))
            .collect::<Result<_>>()?;
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
        specs: Vec::new(),
        out: PipelineOutput::default(),
    };
    std::thread::scope(|s| {
        let writer = s.spawn(move || writer.run(res_rx, credit_tx));
        let workers: Vec<_> = (0..cfg.threads.max(1))
            .map(|_| {
                let (jobs, results, stored) = (job_rx.clone(), res_tx.clone(), &stored);
                s.spawn(move || work(cfg, jobs, results, stored))
            })
            .collect();
        drop((job_rx, res_tx));
        let mut emitter = Emitter {
            jobs: job_tx,
            credits: &credit_rx,
            next_seq: 0,
            next_job: 0,
            batcher: Batcher::new(cfg.batch, dict),
            progress,
        };
        let produced = produce(&mut emitter).and_then(|t| emitter.finish().map(|()| t));
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
