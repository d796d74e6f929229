//! Prefetch: what to fetch ahead of reads, and the `rafs prefetch` command.
//!
//! The fetching itself is the fetcher's background lane
//! ([`crate::fetch::prefetch`]); this module turns what a user names —
//! paths (directories recursively), a list file ([`list`]), the image's
//! prefetch table, or everything — into a [`Plan`] of frames in order.
//!
//! Planning costs O(bootstrap + entries named) however a hostile
//! bootstrap or list repeats itself: see `Planner`.

pub mod cli;

/// The list format, at home in [`crate::image::list`].
pub use crate::image::list;

use crate::fetch::prefetch::Plan;
use crate::fetch::Fetcher;
use rafs_format::Bootstrap;
use thiserror::Error;

/// Why a prefetch could not be planned.
#[derive(Debug, Error)]
pub enum PlanError {
    /// A named path is not in the image.
    #[error("'{0}' is not in the image")]
    Missing(String),
    /// The bootstrap is inconsistent.
    #[error("bootstrap: {0}")]
    Format(#[from] rafs_format::FormatError),
}

/// Plans a prefetch in time linear in the bootstrap plus the entries
/// named, however they repeat: each directory is walked once, each chunk
/// of the chunk table planned once (a valid bootstrap may share chunk runs
/// between files, even as prefixes of one another, and name a directory in
/// the prefetch table thousands of times).
struct Planner<'p, 'b> {
    f: &'p Fetcher,
    b: &'p Bootstrap<'b>,
    plan: &'p mut Plan,
    /// Directories already walked, by inode.
    walked: Vec<bool>,
    /// Skip pointers over the chunk table: `next[i]` leads (by
    /// [`Planner::unplanned`]) to the first chunk at or after `i` not yet
    /// planned; `next[i] == i` if `i` is unplanned.
    next: Vec<usize>,
}

impl<'p, 'b> Planner<'p, 'b> {
    fn new(f: &'p Fetcher, b: &'p Bootstrap<'b>, plan: &'p mut Plan) -> Self {
        let chunks = b.chunks().len();
        Planner {
            f,
            b,
            plan,
            walked: vec![false; b.inode_count() as usize],
            next: (0..=chunks).collect(),
        }
    }

    /// The first unplanned chunk index at or after `i` (the table length
    /// if none), compressing the path: amortised near O(1).
    fn unplanned(&mut self, i: usize) -> usize {
        let mut root = i.min(self.next.len() - 1);
        while self.next[root] != root {
            root = self.next[root];
        }
        let mut at = i.min(root);
        while self.next[at] != root {
            at = std::mem::replace(&mut self.next[at], root);
        }
        root
    }

    /// Plans the chunk-table entries `range` (one file's, in file order)
    /// not planned yet.
    fn chunks(&mut self, range: std::ops::Range<usize>) {
        let all = self.b.chunks();
        let mut i = self.unplanned(range.start);
        while i < range.end {
            if let Some(c) = all.get(i..i + 1) {
                self.f.plan_chunks(c, None, self.plan);
            }
            self.next[i] = i + 1;
            i = self.unplanned(i + 1);
        }
    }

    /// Regular file `ino`: all its chunks, or those overlapping `ranges`.
    fn file(&mut self, ino: u32, ranges: Option<&[(u64, u64)]>) -> Result<(), PlanError> {
        let run = self.b.file_chunks(ino)?;
        let start = self.b.inode(ino)?.payload_start.get() as usize;
        let Some(ranges) = ranges else {
            self.chunks(start..start + run.len());
            return Ok(());
        };
        // By start: the chunks come in file order, as a file's are read.
        let mut ranges = ranges.to_vec();
        ranges.sort_unstable();
        for (a, z) in ranges {
            let first = run.partition_point(|c| c.file_end() <= a);
            let end = run.partition_point(|c| c.file_offset.get() < z);
            if first < end {
                self.chunks(start + first..start + end);
            }
        }
        Ok(())
    }

    /// `ino`: a regular file's chunks (only those overlapping `ranges` if
    /// given), a directory's files (whole) recursively in name order.
    /// Symlinks are not followed.
    fn inode(&mut self, ino: u32, ranges: Option<&[(u64, u64)]>) -> Result<(), PlanError> {
        if self.b.inode(ino)?.is_reg() {
            return self.file(ino, ranges);
        }
        let mut stack = vec![ino];
        while let Some(ino) = stack.pop() {
            let inode = self.b.inode(ino)?;
            if inode.is_reg() {
                self.file(ino, None)?;
            } else if inode.is_dir() {
                let seen = self.walked.get_mut(ino as usize).ok_or(PlanError::Format(
                    rafs_format::FormatError::NoSuchInode(u64::from(ino)),
                ))?;
                if std::mem::replace(seen, true) {
                    continue;
                }
                let entries = self.b.dir_entries(ino)?;
                // Reversed onto the stack: visited in name order.
                stack.extend(entries.iter().rev().map(|e| e.ino.get()));
            }
        }
        Ok(())
    }
}

/// Adds `ino` to `plan`: a regular file's frames (only those overlapping
/// `ranges` if given), a directory's files (whole) recursively in name
/// order. Symlinks are not followed.
pub fn plan_inode(
    f: &Fetcher,
    b: &Bootstrap<'_>,
    ino: u32,
    ranges: Option<&[(u64, u64)]>,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    Planner::new(f, b, plan).inode(ino, ranges)
}

/// Adds each path (with or without a leading `/`) to `plan`, in order.
/// With `skip_missing`, a path not in the image is logged and skipped
/// (a mount's prefetch list may be stale); otherwise it is an error.
pub fn plan_entries(
    f: &Fetcher,
    b: &Bootstrap<'_>,
    entries: &[list::Entry],
    skip_missing: bool,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let mut p = Planner::new(f, b, plan);
    for e in entries {
        match b.resolve(&e.path)? {
            Some(ino) => p.inode(ino, e.ranges.as_deref())?,
            None if skip_missing => {
                tracing::warn!(path = %String::from_utf8_lossy(&e.path), "prefetch: not in the image")
            }
            None => {
                return Err(PlanError::Missing(
                    String::from_utf8_lossy(&e.path).into_owned(),
                ))
            }
        }
    }
    Ok(())
}

/// The image's own prefetch table (`rafs create --prefetch-list`).
pub fn plan_table(f: &Fetcher, b: &Bootstrap<'_>, plan: &mut Plan) -> Result<(), PlanError> {
    let mut p = Planner::new(f, b, plan);
    for e in b.prefetch() {
        p.inode(e.ino.get(), None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::file::FileBackend;
    use crate::fetch::FetchConfig;
    use crate::fs::RafsFs;
    use crate::image::Image;
    use crate::testimage::{noise, Builder, Part};
    use std::sync::Arc;

    /// The plan without any sharing: each entry planned on its own
    /// (directories walked every time, every chunk of every file).
    fn naive(f: &Fetcher, b: &Bootstrap<'_>, entries: &[list::Entry]) -> Plan {
        let mut plan = Plan::default();
        for e in entries {
            let Some(ino) = b.resolve(&e.path).unwrap() else {
                continue;
            };
            if b.inode(ino).unwrap().is_reg() {
                f.plan_file(b, ino, e.ranges.as_deref(), &mut plan);
                continue;
            }
            let mut stack = vec![ino];
            while let Some(ino) = stack.pop() {
                if b.inode(ino).unwrap().is_dir() {
                    let entries = b.dir_entries(ino).unwrap();
                    stack.extend(entries.iter().rev().map(|e| e.ino.get()));
                } else {
                    f.plan_file(b, ino, None, &mut plan);
                }
            }
        }
        plan
    }

    #[test]
    fn shared_walks_and_chunks_plan_what_separate_ones_do() {
        let mut bl = Builder::new();
        let d = bl.dir(0, "d", 0o755);
        let parts = |seed: u64| -> Vec<Part> {
            (0..6)
                .map(|k| match k % 3 {
                    2 => Part::Hole(1000),
                    _ => Part::Data(noise(1000 + k as usize, seed * 10 + k)),
                })
                .collect()
        };
        let a = bl.file(d, "a", 0o644, parts(1));
        bl.file(d, "b", 0o644, parts(2));
        bl.file(0, "c", 0o644, parts(1)); // the same chunks as d/a
        bl.link(0, "a2", a);
        let t = bl.finish();
        let image = Image::open(&t.bootstrap).unwrap();
        let backend = Arc::new(FileBackend::new(&t.blobs));
        let fs = RafsFs::new(image, backend, FetchConfig::default()).unwrap();
        let b = fs.image().bootstrap().unwrap();
        let entry = |path: &str, ranges: Option<Vec<(u64, u64)>>| list::Entry {
            line: 0,
            path: path.as_bytes().to_vec(),
            ranges,
        };
        let lists = [
            vec![entry("/d/a", Some(vec![(1500, 1600)])), entry("/", None)],
            vec![
                entry("c", Some(vec![(4000, 4001), (0, 1)])),
                entry("d/b", Some(vec![(2500, 5200)])),
                entry("a2", Some(vec![(0, 1 << 20)])),
                entry("d", None),
                entry("d", None),
                entry("/", None),
                entry("/nope", None),
            ],
            vec![entry("/a2", Some(vec![(2999, 3001), (5000, 5001)]))],
        ];
        for entries in lists {
            let mut plan = Plan::default();
            plan_entries(fs.fetcher(), &b, &entries, true, &mut plan).unwrap();
            let want = naive(fs.fetcher(), &b, &entries);
            assert!(!plan.frames.is_empty());
            assert_eq!(plan.frames, want.frames, "{entries:?}");
            assert_eq!((plan.bytes, plan.chunks), (want.bytes, want.chunks));
        }
    }
}
