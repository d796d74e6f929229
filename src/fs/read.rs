//! The read path: (inode, offset, length) → the file's chunk run → holes
//! as zeros, data chunks from the fetcher ([`crate::fetch`]: disk cache,
//! memory, or the backend, always verified) → the bytes asked for.
//!
//! A chunk that cannot be fetched or fails verification fails only the
//! reads that touch it, with a log line naming blob, chunk and file.

use super::{FsError, Metrics, Op, RafsFs};
use crate::backend::BlobId;
use crate::chunk::FetchError;
use crate::fetch::prefetch::Plan;
use crate::fetch::Want;
use rafs_format::layout::ChunkInfo;
use rafs_format::Bootstrap;

/// Chunks of read-ahead per read at most (honest chunks are KiBs or MiBs,
/// so the byte budget ends read-ahead long before).
const MAX_AHEAD_CHUNKS: usize = 1024;

/// Chunks a file may have at most to be fetched whole on its first miss
/// (small files) and once read scattered (`--widen`): bounds the planning
/// cost of a hostile or huge chunk run.
const MAX_WIDEN_CHUNKS: [usize; 2] = [64, 1 << 16];
/// A file with an execute bit whose first miss is at offset 0 is fetched
/// whole at once if it is stored in at most this many `--readahead`s (and
/// `--widen`): exec and the loader map it and fault its pages in out of
/// order, so its second miss, one round trip later, would fetch it whole
/// anyway (see [`super::spread`]).
const EXEC_WHOLE: u64 = 4;

/// One read as the read path sees it: for error messages and for noting
/// its first miss (see [`super::spread`]).
struct Reading<'r, 'b> {
    b: &'r Bootstrap<'b>,
    ino: u32,
    /// The file's chunk run.
    run: &'r [ChunkInfo],
    /// Chunk-table index of the run's first chunk.
    run_start: u64,
    /// The bytes asked for, `offset..end`.
    span: (u64, u64),
    /// Whether the read has missed the caches yet.
    missed: bool,
    /// Whether the file has an execute bit (see [`EXEC_WHOLE`]).
    exec: bool,
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
        if let Some(r) = &self.recorder {
            r.note(ino, offset, end);
        }
        let run = b.file_chunks(ino)?;
        let run_start = u64::from(inode.payload_start.get());
        let mut out = crate::util::pool::take(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        let first = run.partition_point(|c| c.file_end() <= pos);
        let mut r = Reading {
            b: &b,
            ino,
            run,
            run_start,
            span: (offset, end),
            missed: false,
            exec: inode.mode.get() & 0o111 != 0,
        };
        let mut i = first;
        // Holes are zeros, written in place; data chunks go to the fetcher
        // in one batch per run of them, so its first miss can launch every
        // frame the read needs at once.
        let mut wants: Vec<(usize, Want<'_>)> = Vec::new();
        while pos < end {
            let c = run.get(i).ok_or(FsError::Invalid)?;
            let from = (pos - c.file_offset.get()) as usize;
            let to = (end.min(c.file_end()) - c.file_offset.get()) as usize;
            if c.is_hole() {
                self.fetch_wants(&mut r, &mut wants, &[], &mut out)?;
                out.resize(out.len() + (to - from), 0);
            } else {
                wants.push((i, Want { c, from, to }));
            }
            pos = c.file_offset.get() + to as u64;
            i += 1;
        }
        let ahead = self.readahead(run, first, i);
        let t0 = std::time::Instant::now();
        self.fetch_wants(&mut r, &mut wants, &ahead, &mut out)?;
        if r.missed && offset == 0 {
            self.note_read_head(ino, &out);
        }
        tracing::trace!(
            ino,
            offset,
            size,
            us = t0.elapsed().as_micros() as u64,
            "read"
        );
        Metrics::add(&self.metrics.bytes_read, out.len() as u64);
        Ok(out)
    }

    /// The data chunks of `run` from index `next` on, up to the read-ahead
    /// budget.
    ///
    /// Only for a read that looks sequential: it starts in the file's
    /// first chunk, or the chunk before it is cached (just read). Random
    /// reads inside a large file get none: each miss would otherwise
    /// fetch and decompress a chunk nobody asked for.
    fn readahead<'b>(&self, run: &'b [ChunkInfo], first: usize, next: usize) -> Vec<Want<'b>> {
        let sequential = match first.checked_sub(1).and_then(|p| run.get(p)) {
            None => true,
            Some(prev) => prev.is_hole() || self.fetcher.chunk_cached(prev),
        };
        let budget = if sequential {
            self.fetcher.config().readahead
        } else {
            0
        };
        let mut bytes = 0u64;
        let mut out = Vec::new();
        // Also capped in chunks: a hostile run of 1-byte chunks must not
        // turn each read into a million chunk look-ups.
        for c in run.iter().skip(next).take(MAX_AHEAD_CHUNKS) {
            if bytes >= budget {
                break;
            }
            bytes += u64::from(c.uncompressed_size.get());
            if !c.is_hole() {
                let to = c.uncompressed_size.get() as usize;
                out.push(Want { c, from: 0, to });
            }
        }
        out
    }

    /// Notes a read of `ino` that missed the cache and, if the file is now
    /// known to be read scattered (or is small, or executable, and read
    /// from its start), fetches the rest of it in the background: see
    /// [`super::spread`].
    fn widen(&self, r: &Reading<'_, '_>) {
        use super::spread::Verdict;
        let cfg = self.fetcher.config();
        let (ino, run) = (r.ino, r.run);
        let (budget, max_chunks) = match self.spread.miss(ino, r.span.0, r.span.1) {
            Verdict::First if r.exec => {
                let budget = cfg.readahead.saturating_mul(EXEC_WHOLE).min(cfg.widen);
                (budget, MAX_WIDEN_CHUNKS[1])
            }
            Verdict::First => (cfg.readahead, MAX_WIDEN_CHUNKS[0]),
            Verdict::Scattered => (cfg.widen, MAX_WIDEN_CHUNKS[1]),
            Verdict::Nothing => return,
        };
        if let Some(plan) = self.plan_whole(run, budget, max_chunks) {
            let n = self.fetcher.speculate(&plan);
            tracing::trace!(ino, planned = plan.bytes, launched = n, "widen file");
            self.spread.done(ino);
        }
    }

    /// The frames of every chunk of `run`, if it has at most `max_chunks`
    /// chunks and they are stored in at most `budget` bytes.
    fn plan_whole(&self, run: &[ChunkInfo], budget: u64, max_chunks: usize) -> Option<Plan> {
        if run.len() > max_chunks {
            return None;
        }
        let mut plan = Plan::default();
        self.fetcher.plan_chunks(run, None, &mut plan);
        (plan.bytes <= budget).then_some(plan)
    }

    /// [`RafsFs::plan_whole`] for a small file: one fetched whole on its
    /// first miss at offset 0 (at most `--readahead` stored bytes).
    pub(super) fn plan_small_file(&self, run: &[ChunkInfo]) -> Option<Plan> {
        let budget = self.fetcher.config().readahead;
        self.plan_whole(run, budget, MAX_WIDEN_CHUNKS[0])
    }

    /// Appends the data of `wants` (chunk indices in the file's run and
    /// the part of each wanted) to `out`, and empties `wants`. The read's
    /// first miss goes to [`RafsFs::widen`].
    fn fetch_wants(
        &self,
        r: &mut Reading<'_, '_>,
        wants: &mut Vec<(usize, Want<'_>)>,
        ahead: &[Want<'_>],
        out: &mut Vec<u8>,
    ) -> Result<(), FsError> {
        if wants.is_empty() && ahead.is_empty() {
            return Ok(());
        }
        let only: Vec<Want<'_>> = wants.iter().map(|w| w.1).collect();
        let mut on_miss = || {
            if !r.missed && self.fetcher.speculates() {
                self.widen(r);
            }
            r.missed = true;
        };
        let got = self.fetcher.read(&only, ahead, out, &mut on_miss);
        let got = got.map_err(|(k, source)| {
            let (i, w) = wants[k];
            self.data_error(r.b, r.ino, r.run_start + i as u64, w.c, source)
        });
        wants.clear();
        got
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
        let path = self
            .path_of(b, ino)
            .map(|p| String::from_utf8_lossy(&p).into_owned());
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

/// Where each inode is first named, in the depth-first name order of
/// [`crate::image::walk`]: (directory, index of the entry in the dirent
/// table). Built by one walk, on the first data error, so that naming the
/// file of each later error costs O(depth), not a walk of the tree.
pub(crate) struct Names(Vec<Option<(u32, usize)>>);

impl Names {
    fn build(b: &Bootstrap<'_>) -> Names {
        let mut first = vec![None; b.inode_count() as usize];
        // (directory, its first entry's dirent index, next entry).
        let mut stack: Vec<(u32, usize, usize)> = Vec::new();
        let enter = |dir: u32, stack: &mut Vec<_>| {
            if let Ok(i) = b.inode(dir) {
                stack.push((dir, i.payload_start.get() as usize, 0));
            }
        };
        enter(0, &mut stack);
        while let Some(top) = stack.last_mut() {
            let (dir, start, k) = *top;
            let Some(e) = b.dir_entries(dir).ok().and_then(|es| es.get(k)) else {
                stack.pop();
                continue;
            };
            top.2 += 1;
            let child = e.ino.get();
            let Some(slot) = first.get_mut(child as usize) else {
                continue;
            };
            if slot.is_none() {
                *slot = Some((dir, start + k));
                if b.inode(child).is_ok_and(|i| i.is_dir()) {
                    enter(child, &mut stack);
                }
            }
        }
        Names(first)
    }

    /// The first path of `ino`.
    fn path(&self, b: &Bootstrap<'_>, ino: u32) -> Option<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut at = ino;
        // A validated tree has no cycles; the bound is for safety only.
        for _ in 0..=self.0.len() {
            if at == 0 {
                let mut path = Vec::new();
                for name in parts.iter().rev() {
                    path.push(b'/');
                    path.extend_from_slice(name);
                }
                if path.is_empty() {
                    path.push(b'/');
                }
                return Some(path);
            }
            let (dir, entry) = (*self.0.get(at as usize)?)?;
            parts.push(b.entry_name(b.dirents().get(entry)?).ok()?);
            at = dir;
        }
        None
    }
}

impl RafsFs {
    /// The first path of `ino` in name order (for error messages).
    pub(crate) fn path_of(&self, b: &Bootstrap<'_>, ino: u32) -> Option<Vec<u8>> {
        self.names.get_or_init(|| Names::build(b)).path(b, ino)
    }
}
