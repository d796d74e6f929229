//! Counters of the filesystem core, lock-free (relaxed atomics: each is an
//! independent statistic). The API socket renders them as Prometheus text.
//! The counters of the read path below the core (chunk LRU, backend bytes,
//! decompressions) are the fetcher's [`ChunkCounters`], shared here.

use crate::fetch::metrics::ChunkCounters;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Operations counted by [`Metrics::op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// lookup
    Lookup,
    /// getattr
    Getattr,
    /// readdir / readdirplus
    Readdir,
    /// read
    Read,
    /// readlink
    Readlink,
    /// getxattr / listxattr
    Xattr,
    /// access / statfs and the rest
    Other,
}

impl Op {
    /// All operations, in rendering order.
    pub const ALL: [Op; 7] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readdir,
        Op::Read,
        Op::Readlink,
        Op::Xattr,
        Op::Other,
    ];

    /// Label for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Readdir => "readdir",
            Op::Read => "read",
            Op::Readlink => "readlink",
            Op::Xattr => "xattr",
            Op::Other => "other",
        }
    }
}

/// Filesystem counters.
#[derive(Debug, Default)]
pub struct Metrics {
    ops: [AtomicU64; 7],
    /// Bytes returned by reads.
    pub bytes_read: AtomicU64,
    /// The fetcher's counters (the core hands them to its fetcher).
    pub chunks: Arc<ChunkCounters>,
    /// Operations that failed with an I/O error (bad or missing data).
    pub io_errors: AtomicU64,
}

impl Metrics {
    /// Counts one operation.
    pub fn op(&self, op: Op) {
        self.ops[op as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// Operations of kind `op` so far.
    pub fn ops(&self, op: Op) -> u64 {
        self.ops[op as usize].load(Ordering::Relaxed)
    }
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
