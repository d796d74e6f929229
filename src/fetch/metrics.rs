//! Metrics of the fetch layer and the disk cache. [`FetchMetrics`] are
//! Prometheus metrics the fetcher owns, registered on the mount's API
//! socket next to the filesystem counters; [`ChunkCounters`] are plain
//! counters the fetcher updates for its owner (the filesystem core renders
//! them, `rafs prefetch` reports them). Names are part of the operator
//! interface (`rafs stats`, dashboards): keep them stable.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the read path (relaxed atomics: each is an independent
/// statistic). The fetcher's owner hands them in and may share them: the
/// filesystem core renders them as `rafs_chunk_decompressions_total`,
/// `rafs_backend_bytes_total`, `rafs_chunk_cache_hits_total` and
/// `rafs_chunk_cache_misses_total`.
#[derive(Debug, Default)]
pub struct ChunkCounters {
    /// Chunks (or batch frames) fetched from the backend and decompressed.
    pub chunk_decompressions: AtomicU64,
    /// Bytes fetched from the backend.
    pub backend_bytes: AtomicU64,
    /// Chunk reads served by the decompressed-chunk LRU.
    pub lru_hits: AtomicU64,
    /// Chunk reads that missed the LRU.
    pub lru_misses: AtomicU64,
}

impl ChunkCounters {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// Error kind, e.g. `server`, `timeout`, `digest`, `enospc`.
    pub kind: String,
}

/// Counters and gauges of the fetcher and the disk cache.
#[derive(Debug)]
pub struct FetchMetrics {
    /// Chunk reads served from the disk cache.
    pub cache_hits: Counter,
    /// Chunk reads the disk cache could not serve.
    pub cache_misses: Counter,
    /// Range requests sent to the backend (retries included).
    pub backend_requests: Counter,
    /// Latency of backend requests, seconds.
    pub backend_seconds: Histogram,
    /// Requests retried.
    pub retries: Counter,
    /// Failed attempts by kind (backend error kinds, `digest`, `decode`).
    pub errors: Family<Kind, Counter>,
    /// Backend requests in flight.
    pub inflight: Gauge,
    /// Background jobs waiting for room in the commit backlog before they
    /// fetch (a cache disk that is behind).
    pub prefetch_waiting: Gauge,
    /// Bytes of on-demand frames already served and waiting for room in
    /// the commit backlog (reads outpacing the cache disk).
    pub commit_late_bytes: Gauge<u64, AtomicU64>,
    /// Bytes written to the disk cache and not yet synced and made ready
    /// (the sealer's backlog: page cache, not the daemon's memory).
    pub cache_staged_bytes: Gauge<u64, AtomicU64>,
    /// Bytes of ready ranges this daemon accounts in the disk cache.
    pub cache_usage: Gauge<u64, AtomicU64>,
    /// `--cache-size` (0: no limit).
    pub cache_limit: Gauge<u64, AtomicU64>,
    /// Frames evicted from the disk cache.
    pub evictions: Counter,
    /// Bytes evicted from the disk cache.
    pub evicted_bytes: Counter,
    /// Failed cache writes by kind (`enospc`, `io`).
    pub write_errors: Family<Kind, Counter>,
    /// Reads failed because their deadline passed.
    pub read_timeouts: Counter,
    /// Stored bytes fetched by the background (prefetch) lane.
    pub prefetch_bytes: Counter,
    /// Chunks fetched by the background lane.
    pub prefetch_chunks: Counter,
    /// Stored bytes launched by speculative whole-file fetches (`--widen`),
    /// a part of `prefetch_bytes` once fetched.
    pub speculative_bytes: Counter,
    /// On-demand reads served by data the background lane fetched.
    pub prefetch_hits: Counter,
    /// Seconds the last prefetch run took, start to end.
    pub prefetch_seconds: Gauge<f64, AtomicU64>,
    /// Frames queued in the background lane that an on-demand read took
    /// over (fetched in the on-demand lane instead).
    pub prefetch_promoted: Counter,
    /// Fetched frames not written to the disk cache because the committer
    /// was behind (a slow cache disk): reads are never held up by it.
    pub commits_skipped: Counter,
    /// Frames read from the disk cache and verified against the image's
    /// digests (first use in this process, or after a change in the cache).
    pub cache_verified: Counter,
    /// Frames read back from the cache file between the committer's write
    /// and its `fdatasync` (written, bits not yet set), instead of fetched
    /// again.
    pub cache_staged_reads: Counter,
    /// Frames in the disk cache that failed verification (invalidated and
    /// fetched again).
    pub cache_corrupt: Counter,
    /// Blobs served without the disk cache because the cache holds the
    /// blob with another layout (another image claims the same blob id).
    pub cache_conflicts: Counter,
    /// Waits for another process's claim on a frame that hit the deadline
    /// (the frame was then fetched without the claim).
    pub lock_timeouts: Counter,
    /// Fetch requests sent to the blob manager (`--blob-manager`).
    pub manager_requests: Counter,
    /// Frames fetched from the backend into memory instead of through the
    /// blob manager (unreachable past the grace, no room, refused, or its
    /// bytes failed this image's digests).
    pub manager_fallbacks: Counter,
    /// Blobs the blob manager refused to cache (served without the cache).
    pub manager_refused_blobs: Counter,
}

impl Default for FetchMetrics {
    fn default() -> Self {
        FetchMetrics {
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            backend_requests: Counter::default(),
            backend_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            retries: Counter::default(),
            errors: Family::default(),
            inflight: Gauge::default(),
            prefetch_waiting: Gauge::default(),
            commit_late_bytes: Gauge::default(),
            cache_staged_bytes: Gauge::default(),
            cache_usage: Gauge::default(),
            cache_limit: Gauge::default(),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
            write_errors: Family::default(),
            read_timeouts: Counter::default(),
            prefetch_bytes: Counter::default(),
            prefetch_chunks: Counter::default(),
            speculative_bytes: Counter::default(),
            prefetch_hits: Counter::default(),
            prefetch_seconds: Gauge::default(),
            prefetch_promoted: Counter::default(),
            commits_skipped: Counter::default(),
            cache_verified: Counter::default(),
            cache_staged_reads: Counter::default(),
            cache_corrupt: Counter::default(),
            cache_conflicts: Counter::default(),
            lock_timeouts: Counter::default(),
            manager_requests: Counter::default(),
            manager_fallbacks: Counter::default(),
            manager_refused_blobs: Counter::default(),
        }
    }
}

impl FetchMetrics {
    /// Counts one failed attempt of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&Kind {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts one failed cache write of `kind`.
    pub fn write_error(&self, kind: &str) {
        self.write_errors
            .get_or_create(&Kind {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Registers every metric (names get `_total` on counters).
    pub fn register(&self, r: &mut Registry) {
        let c = |r: &mut Registry, name: &str, help: &str, m: &Counter| {
            r.register(name, help, m.clone())
        };
        c(
            r,
            "rafs_cache_hits",
            "Chunk reads served from the disk cache",
            &self.cache_hits,
        );
        c(
            r,
            "rafs_cache_misses",
            "Chunk reads not in the disk cache",
            &self.cache_misses,
        );
        c(
            r,
            "rafs_backend_requests",
            "Range requests sent to the backend",
            &self.backend_requests,
        );
        c(
            r,
            "rafs_backend_retries",
            "Backend requests retried",
            &self.retries,
        );
        c(
            r,
            "rafs_manager_requests",
            "Fetch requests sent to the blob manager",
            &self.manager_requests,
        );
        c(
            r,
            "rafs_manager_fallbacks",
            "Frames fetched from the backend instead of through the blob manager",
            &self.manager_fallbacks,
        );
        c(
            r,
            "rafs_manager_refused_blobs",
            "Blobs the blob manager refused to cache",
            &self.manager_refused_blobs,
        );
        c(
            r,
            "rafs_cache_evictions",
            "Frames evicted from the disk cache",
            &self.evictions,
        );
        c(
            r,
            "rafs_cache_evicted_bytes",
            "Bytes evicted from the disk cache",
            &self.evicted_bytes,
        );
        c(
            r,
            "rafs_read_timeouts",
            "Reads failed at their deadline",
            &self.read_timeouts,
        );
        c(
            r,
            "rafs_prefetch_bytes",
            "Stored bytes fetched by the prefetch lane",
            &self.prefetch_bytes,
        );
        c(
            r,
            "rafs_speculative_bytes",
            "Stored bytes launched by speculative whole-file fetches (--widen)",
            &self.speculative_bytes,
        );
        c(
            r,
            "rafs_prefetch_chunks",
            "Chunks fetched by the prefetch lane",
            &self.prefetch_chunks,
        );
        c(
            r,
            "rafs_prefetch_hits",
            "On-demand reads served by prefetched data",
            &self.prefetch_hits,
        );
        let more: [(&str, &str, &Counter); 7] = [
            (
                "rafs_prefetch_promoted",
                "Queued prefetch frames taken over by on-demand reads",
                &self.prefetch_promoted,
            ),
            (
                "rafs_cache_commits_skipped",
                "Fetched frames not cached because the cache writer was behind",
                &self.commits_skipped,
            ),
            (
                "rafs_cache_verified",
                "Frames read from the disk cache and verified",
                &self.cache_verified,
            ),
            (
                "rafs_cache_staged_reads",
                "Frames read back from the cache file while written but not yet synced",
                &self.cache_staged_reads,
            ),
            (
                "rafs_cache_corrupt",
                "Disk cache frames that failed verification",
                &self.cache_corrupt,
            ),
            (
                "rafs_cache_layout_conflicts",
                "Blobs served without the disk cache: held there with another layout",
                &self.cache_conflicts,
            ),
            (
                "rafs_cache_lock_timeouts",
                "Waits for another process's claim on a frame that timed out",
                &self.lock_timeouts,
            ),
        ];
        for (name, help, m) in more {
            c(r, name, help, m);
        }
        r.register(
            "rafs_prefetch_seconds",
            "Duration of the last prefetch run",
            self.prefetch_seconds.clone(),
        );
        r.register(
            "rafs_backend_request_seconds",
            "Latency of backend range requests",
            self.backend_seconds.clone(),
        );
        r.register(
            "rafs_backend_errors",
            "Failed fetch attempts by kind",
            self.errors.clone(),
        );
        r.register(
            "rafs_backend_inflight",
            "Backend requests in flight",
            self.inflight.clone(),
        );
        r.register(
            "rafs_prefetch_waiting_for_cache",
            "Background jobs waiting for the disk cache's committer before fetching",
            self.prefetch_waiting.clone(),
        );
        r.register(
            "rafs_cache_late_bytes",
            "Bytes of served on-demand frames waiting for room in the commit backlog",
            self.commit_late_bytes.clone(),
        );
        r.register(
            "rafs_cache_staged_bytes",
            "Bytes written to the disk cache and not yet synced and marked ready",
            self.cache_staged_bytes.clone(),
        );
        r.register(
            "rafs_cache_usage_bytes",
            "Bytes of ready ranges in the disk cache",
            self.cache_usage.clone(),
        );
        r.register(
            "rafs_cache_limit_bytes",
            "Disk cache limit (0: none)",
            self.cache_limit.clone(),
        );
        r.register(
            "rafs_cache_write_errors",
            "Failed disk cache writes by kind",
            self.write_errors.clone(),
        );
    }
}
