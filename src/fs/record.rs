//! Access recording (`rafs mount --record-access FILE`): which regular
//! files were read, in first-access order, and which byte ranges of each.
//!
//! The read path calls [`Recorder::note`] once per read when recording is
//! on (nothing is allocated or locked when it is off): one mutex, a map
//! from inode to its ranges, kept sorted, disjoint and merged (touching
//! ranges become one), and a vector of inodes in first-access order. A
//! sequential reader therefore costs one short critical section per read
//! and one range per file.
//!
//! [`Recorder::write`] turns the record into a prefetch list
//! ([`crate::image::list`]): each inode under its first path in name
//! order (a hardlinked file appears once), found by one walk of the tree
//! that stops as soon as every recorded inode has a path; paths are kept,
//! so later writes walk only for inodes they have not seen. The file is
//! replaced atomically (a temporary file in the same directory, fsync,
//! rename), so a reader never sees half a list.

use crate::image::list::{self, Entry};
use rafs_format::{Bootstrap, FormatError};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use thiserror::Error;

/// Why the record could not be written.
#[derive(Debug, Error)]
pub enum RecordError {
    /// Writing or renaming the file failed.
    #[error("writing the access record {path}: {source}")]
    Io {
        /// The record file (or its temporary file).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The tree could not be walked to find paths.
    #[error("access record: bootstrap: {0}")]
    Format(#[from] FormatError),
}

#[derive(Default)]
struct State {
    /// Inodes in first-access order.
    order: Vec<u32>,
    /// Sorted, disjoint, non-touching ranges (end exclusive) per inode.
    ranges: HashMap<u32, Vec<(u64, u64)>>,
}

/// The access record of one mount.
pub struct Recorder {
    path: PathBuf,
    state: Mutex<State>,
    /// Paths found so far, by inode.
    paths: Mutex<HashMap<u32, Vec<u8>>>,
    /// Held by a writer from snapshot to rename: writers (signal, API,
    /// unmount) share the temporary file, and the last rename must carry
    /// the newest snapshot.
    writer: Mutex<()>,
}

/// Adds `[start, end)` to sorted, disjoint, non-touching `v`, merging
/// every range it overlaps or touches.
pub(crate) fn merge_range(v: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    // First range that ends at or after `start` (could touch or overlap).
    let first = v.partition_point(|&(_, e)| e < start);
    // One past the last range that starts at or before `end`.
    let last = v.partition_point(|&(s, _)| s <= end);
    if first >= last {
        v.insert(first, (start, end));
        return;
    }
    let merged = (start.min(v[first].0), end.max(v[last - 1].1));
    v.splice(first..last, std::iter::once(merged));
}

impl Recorder {
    /// A recorder that writes to `path`.
    pub fn new(path: PathBuf) -> Recorder {
        Recorder {
            path,
            state: Mutex::default(),
            paths: Mutex::default(),
            writer: Mutex::default(),
        }
    }

    /// Where the record is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes a read of bytes `[start, end)` of regular file `ino`.
    pub fn note(&self, ino: u32, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { order, ranges } = &mut *s;
        let v = ranges.entry(ino).or_insert_with(|| {
            order.push(ino);
            Vec::new()
        });
        merge_range(v, start, end);
    }

    /// The record so far: inodes in first-access order with their ranges.
    pub fn snapshot(&self) -> Vec<(u32, Vec<(u64, u64)>)> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.order
            .iter()
            .map(|ino| (*ino, s.ranges.get(ino).cloned().unwrap_or_default()))
            .collect()
    }

    /// The record as list entries (each inode under its first path; an
    /// inode no path leads to is left out).
    pub fn entries(&self, b: &Bootstrap<'_>) -> Result<Vec<Entry>, FormatError> {
        let snap = self.snapshot();
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        find_paths(b, snap.iter().map(|(ino, _)| *ino), &mut paths)?;
        Ok(snap
            .into_iter()
            .filter_map(|(ino, ranges)| {
                Some(Entry {
                    line: 0,
                    path: paths.get(&ino)?.clone(),
                    ranges: Some(ranges),
                })
            })
            .collect())
    }

    /// Writes the record to its file atomically; returns the number of
    /// entries written.
    pub fn write(&self, b: &Bootstrap<'_>) -> Result<usize, RecordError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = self.entries(b)?;
        let (text, n) = list::format(&entries);
        write_atomic(&self.path, &text)?;
        tracing::debug!(
            entries = n,
            "access record written to {}",
            self.path.display()
        );
        Ok(n)
    }
}

/// Adds to `paths` the first path of each of `want` not already there,
/// walking the tree once (and not at all if nothing is missing).
fn find_paths(
    b: &Bootstrap<'_>,
    want: impl Iterator<Item = u32>,
    paths: &mut HashMap<u32, Vec<u8>>,
) -> Result<(), FormatError> {
    let mut missing: std::collections::HashSet<u32> =
        want.filter(|ino| !paths.contains_key(ino)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    /// Ends the walk early; not an error.
    enum Stop {
        Done,
        Format(FormatError),
    }
    impl From<FormatError> for Stop {
        fn from(e: FormatError) -> Self {
            Stop::Format(e)
        }
    }
    let r = crate::image::walk::walk(b, |v| {
        if missing.remove(&v.ino) {
            paths.insert(v.ino, v.path.to_vec());
            if missing.is_empty() {
                return Err(Stop::Done);
            }
        }
        Ok(())
    });
    match r {
        Ok(()) | Err(Stop::Done) => Ok(()),
        Err(Stop::Format(e)) => Err(e),
    }
}

/// Replaces `path` with `data`: a temporary file next to it, fsync, rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), RecordError> {
    let name = path
        .file_name()
        .map_or_else(|| "record".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| RecordError::Io { path: p, source }
    };
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let mut v = Vec::new();
        merge_range(&mut v, 100, 200);
        merge_range(&mut v, 300, 400);
        merge_range(&mut v, 0, 50);
        assert_eq!(v, [(0, 50), (100, 200), (300, 400)]);
        merge_range(&mut v, 200, 250);
        assert_eq!(v, [(0, 50), (100, 250), (300, 400)]);
        merge_range(&mut v, 40, 320);
        assert_eq!(v, [(0, 400)]);
        merge_range(&mut v, 10, 20);
        assert_eq!(v, [(0, 400)]);
        merge_range(&mut v, 500, 600);
        merge_range(&mut v, 400, 500);
        assert_eq!(v, [(0, 600)]);
    }

    #[test]
    fn first_access_order_and_ranges() {
        let r = Recorder::new("/nonexistent".into());
        r.note(7, 0, 4096);
        r.note(3, 8192, 9000);
        r.note(7, 4096, 8192);
        r.note(3, 0, 10);
        r.note(9, 5, 5);
        assert_eq!(
            r.snapshot(),
            [(7, vec![(0, 8192)]), (3, vec![(0, 10), (8192, 9000)])]
        );
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("list");
        write_atomic(&p, b"one\n").unwrap();
        write_atomic(&p, b"two\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let bad = dir.path().join("missing/list");
        assert!(matches!(
            write_atomic(&bad, b"x"),
            Err(RecordError::Io { .. })
        ));
    }
}
