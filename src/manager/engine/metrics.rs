//! Metrics of the manager's engine (`rafs_blobmgr_*`), registered on the
//! manager's API socket. Names are part of the operator interface: keep
//! them stable.

use crate::blobmgr::protocol::FrameStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// An `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ready`, `backend`, `corrupt`, `timed_out`, `no_space`, `invalid`.
    pub outcome: &'static str,
}

/// Counters and gauges of the engine.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Flights started (frames the engine fetched for somebody).
    pub flights: Counter,
    /// Requested frames that joined a flight already under way.
    pub joined: Counter,
    /// Prefetch flights taken over by an on-demand request.
    pub promoted: Counter,
    /// Range requests sent to the backend (retries included).
    pub backend_requests: Counter,
    /// Stored bytes received from the backend.
    pub backend_bytes: Counter,
    /// Failed backend attempts (errors, and frames that did not verify).
    pub backend_errors: Counter,
    /// Requested frames by the status answered.
    pub frames: Family<Outcome, Counter>,
    /// Ready frames whose bytes did not match a requester's digests.
    pub reverify_mismatches: Counter,
    /// Bytes of ready ranges accounted in the cache.
    pub cache_usage: Gauge<u64, AtomicU64>,
    /// The cache limit (0: none).
    pub cache_limit: Gauge<u64, AtomicU64>,
    /// Frames (or runs of old ready ranges) evicted.
    pub evictions: Counter,
    /// Bytes evicted.
    pub evicted_bytes: Counter,
    /// Blobs open.
    pub blobs_open: Gauge,
}

/// The label of a status.
pub(crate) fn outcome(s: FrameStatus) -> &'static str {
    match s {
        FrameStatus::Ready => "ready",
        FrameStatus::Backend => "backend",
        FrameStatus::Corrupt => "corrupt",
        FrameStatus::TimedOut => "timed_out",
        FrameStatus::NoSpace => "no_space",
        FrameStatus::Invalid => "invalid",
    }
}

impl EngineMetrics {
    /// Counts one answered frame.
    pub(crate) fn frame(&self, s: FrameStatus) {
        self.frames
            .get_or_create(&Outcome {
                outcome: outcome(s),
            })
            .inc();
    }

    /// Registers every metric in `reg`.
    pub fn register(&self, reg: &mut Registry) {
        let counters: [(&str, &str, &Counter); 9] = [
            ("rafs_blobmgr_flights", "Flights started", &self.flights),
            (
                "rafs_blobmgr_frames_joined",
                "Requested frames that joined a flight under way",
                &self.joined,
            ),
            (
                "rafs_blobmgr_promoted",
                "Prefetch flights promoted by an on-demand request",
                &self.promoted,
            ),
            (
                "rafs_blobmgr_backend_requests",
                "Range requests sent to the backend",
                &self.backend_requests,
            ),
            (
                "rafs_blobmgr_backend_bytes",
                "Stored bytes received from the backend",
                &self.backend_bytes,
            ),
            (
                "rafs_blobmgr_backend_errors",
                "Failed backend attempts",
                &self.backend_errors,
            ),
            (
                "rafs_blobmgr_reverify_mismatches",
                "Ready frames that did not match a requester's digests",
                &self.reverify_mismatches,
            ),
            (
                "rafs_blobmgr_evictions",
                "Frames or old runs evicted",
                &self.evictions,
            ),
            (
                "rafs_blobmgr_evicted_bytes",
                "Bytes evicted",
                &self.evicted_bytes,
            ),
        ];
        for (name, help, m) in counters {
            reg.register(name, help, m.clone());
        }
        reg.register(
            "rafs_blobmgr_frames",
            "Requested frames by outcome",
            self.frames.clone(),
        );
        reg.register(
            "rafs_blobmgr_cache_usage_bytes",
            "Bytes of ready ranges in the cache",
            self.cache_usage.clone(),
        );
        reg.register(
            "rafs_blobmgr_cache_limit_bytes",
            "Cache limit (0: none)",
            self.cache_limit.clone(),
        );
        reg.register(
            "rafs_blobmgr_blobs_open",
            "Blobs open",
            self.blobs_open.clone(),
        );
    }
}
