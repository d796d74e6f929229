//! The seam between the manager's connection layer and its engine.
//!
//! The connection layer (`super::server`) speaks the protocol: it
//! authenticates peers, decodes packets, keeps each connection's handle
//! table and sends replies. Everything it does with a blob goes through a
//! [`BlobService`]: the node's engine (`super::engine`) in the daemon, a
//! fake in the connection layer's tests.

use crate::blobmgr::protocol::{ErrorCode, FetchFrame, FrameStatus, Lane, UsedRange};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

/// What a client asked to open (an OpenBlob message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRequest {
    /// sha256 of the blob.
    pub blob_id: [u8; 32],
    /// Its uncompressed size.
    pub blob_size: u64,
    /// Its layout digest.
    pub layout: [u8; 16],
    /// Bytes per range bit.
    pub granularity: u32,
}

/// A blob opened for one client: the reference the service keeps, and
/// the two read-only descriptors to send (BlobOpened).
pub struct Opened<B> {
    /// The service's reference; given back on every later call and to
    /// [`BlobService::close`].
    pub blob: Arc<B>,
    /// The data file, `O_RDONLY`.
    pub data: OwnedFd,
    /// The range bitmap, `O_RDONLY`.
    pub map: OwnedFd,
    /// The map's generation now.
    pub generation: u64,
}

/// A request the service refused: the Error reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The protocol's error code.
    pub code: ErrorCode,
    /// Human-readable detail (at most 1024 bytes are sent).
    pub message: String,
}

impl Refused {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refused {
        Refused {
            code,
            message: message.into(),
        }
    }
}

/// Called once with one status per requested frame, in the request's
/// order, when every frame is settled or the deadline has passed. It may
/// run on any thread and must not block for long (it sends one packet
/// with a send timeout).
pub type FetchDone = Box<dyn FnOnce(Vec<FrameStatus>) + Send>;

/// What the connection layer needs from the engine.
pub trait BlobService: Send + Sync + 'static {
    /// The service's per-blob state.
    type Blob: Send + Sync + 'static;

    /// Opens (or creates) the cache of a blob for a client.
    fn open(&self, req: &OpenRequest) -> Result<Opened<Self::Blob>, Refused>;

    /// Fills `frames` of `blob` in `lane`; `done` gets their statuses by
    /// `deadline` at the latest (`TimedOut` for frames not settled then;
    /// their fills go on).
    fn fetch(
        &self,
        blob: &Arc<Self::Blob>,
        lane: Lane,
        frames: Vec<FetchFrame>,
        deadline: Instant,
        done: FetchDone,
    );

    /// A client served `ranges` of `blob` from the cache (LRU feed).
    fn used(&self, blob: &Self::Blob, ranges: &[UsedRange]);

    /// A client's reference is gone (CloseBlob, or its connection ended).
    fn close(&self, blob: Arc<Self::Blob>);
}
