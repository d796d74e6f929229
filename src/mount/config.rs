//! `rafs mount` settings, resolved: [`MountConfig`]. The flags and the
//! `--config` file that give them are the CLI layer's business
//! (`crate::cli::mount_args`).

use crate::backend::url::BackendUrl;
use crate::backend::BackendOptions;
use crate::fetch::FetchConfig;
use std::path::PathBuf;

/// Everything `rafs mount` needs, merged and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// Bootstrap path.
    pub bootstrap: PathBuf,
    /// Mountpoint.
    pub mountpoint: PathBuf,
    /// Where blobs live.
    pub backend: BackendUrl,
    /// Network backend settings.
    pub backend_options: BackendOptions,
    /// FUSE worker threads (at least 1).
    pub threads: usize,
    /// API socket, if any.
    pub api_socket: Option<PathBuf>,
    /// Chunk LRU budget in bytes.
    pub chunk_cache_bytes: u64,
    /// Disk cache, deadlines and fetch tuning (its `memory_bytes` is
    /// `chunk_cache_bytes`).
    pub fetch: FetchConfig,
    /// Whether other users may access the mount (`allow_other`).
    pub allow_other: bool,
    /// Whether setuid/setgid bits are honoured (else `nosuid`).
    pub suid: bool,
    /// Whether device nodes work (else `nodev`).
    pub dev: bool,
    /// What to prefetch after mounting.
    pub prefetch: PrefetchSource,
    /// Where to write the access record, if recording.
    pub record_access: Option<PathBuf>,
    /// The image reference the bootstrap argument named, if it was one
    /// (`docker://...`): [`run`](super::run) resolves it to `bootstrap`.
    pub image: Option<super::image_ref::ImageSource>,
}

/// What a mount prefetches in the background once it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchSource {
    /// The image's prefetch table, if it has one (the default).
    Table,
    /// The entries of a list file.
    List(PathBuf),
    /// Every blob.
    All,
    /// Nothing (`--no-prefetch`).
    Off,
}

/// The default worker count: max(4, cores).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}
