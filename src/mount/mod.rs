//! `rafs mount`: serve an image read-only over FUSE, in the foreground.
//!
//! Lifecycle: given the resolved settings ([`config`]), open the image and the
//! backend, check the mountpoint (a stale FUSE mount left by a dead daemon
//! gets its own error and the command that clears it), bind the API socket,
//! mount (fuser's handshake completes before we go on), then print exactly
//! one line to stdout, `rafs: mounted BOOTSTRAP at MOUNTPOINT`, and wait.
//!
//! Two things end the wait, both reported on one channel: a signal
//! (SIGINT, SIGTERM, SIGHUP; a signal-hook self-pipe, so the handler does
//! no work), on which we unmount and wait for the session to drain; or the
//! session ending by itself because the mount was removed from outside
//! (`fusermount3 -u`, `umount`). Both exit 0. A mount still busy at a
//! signal is detached lazily (`MNT_DETACH`): it disappears from the
//! namespace at once, and open files see ENOTCONN when we exit.
//!
//! After the ready line a background thread prefetches ([`prefetch`]);
//! it is told to stop when the wait ends. With `--record-access FILE`
//! the core records reads ([`crate::fs::record`]) and FILE is written on
//! SIGUSR1 (which does not end the wait), on `POST /record`, and once more
//! after the session has ended.

pub mod config;
pub mod image_ref;
pub mod prefetch;

pub use config::{default_threads, MountConfig, PrefetchSource};

use crate::api::{Api, ApiError, ApiServer, Control, ControlError, StatusInfo};
use crate::backend::url::{BackendUrl, UrlError};
use crate::backend::{Backend, BlobId};
use crate::fs::record::{RecordError, Recorder};
use crate::fs::RafsFs;
use crate::fuse::FuseFs;
use crate::image::{Image, ImageError};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fuser::{MountOption, Session, SessionACL, SessionUnmounter};
use prefetch::{Prefetch, PrefetchStatus, Source};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Readahead set on the mount's device after mounting, in KiB: one default
/// chunk, so a sequential reader asks for a whole chunk per request (the
/// kernel's FUSE default is 128 KiB, and the INIT reply can only lower it).
const READAHEAD_KB: u32 = 1024;

/// How long to wait for the session to drain after a signal-driven
/// unmount before exiting anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an exiting mount waits for the committer to write the frames
/// it still holds (fetched data the next mount would otherwise fetch
/// again); a stalled cache disk must not keep the process forever.
const EXIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why `rafs mount` failed.
#[derive(Debug, Error)]
pub enum MountError {
    /// The config file could not be read.
    #[error("config {path}")]
    Config {
        /// Config path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("config {path}: {message}")]
    ConfigSyntax {
        /// Config path.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A required setting is missing.
    #[error("no {0} given")]
    Missing(&'static str),
    /// Both blobs and backend set in the same place.
    #[error("set either blobs (a directory) or backend (a URL), not both")]
    BlobsAndBackend,
    /// Bad backend URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// Bad size.
    #[error("chunk cache size: {0}")]
    Size(String),
    /// The disk cache directory cannot be used.
    #[error("cache: {0}")]
    Cache(#[from] crate::cache::CacheError),
    /// Bad flag value (the message names the flag).
    #[error("{0}")]
    Flag(String),
    /// Zero threads.
    #[error("threads must be at least 1")]
    Threads,
    /// The bootstrap could not be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The mountpoint does not exist.
    #[error("mountpoint {0} does not exist")]
    NoMountpoint(PathBuf),
    /// The mountpoint is not a directory.
    #[error("mountpoint {0} is not a directory")]
    NotDir(PathBuf),
    /// A FUSE daemon died with the mount in place.
    #[error(
        "{0} is a stale FUSE mount (a previous daemon died); clear it with: fusermount3 -u {0}"
    )]
    Stale(PathBuf),
    /// The mountpoint cannot be examined.
    #[error("mountpoint {path}")]
    Mountpoint {
        /// Mountpoint.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The API socket could not be set up.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Mounting failed.
    #[error("mounting at {path}")]
    Mount {
        /// Mountpoint.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Threads or signal handlers could not be set up.
    #[error("setup: {0}")]
    Setup(std::io::Error),
    /// The `--prefetch-list` file cannot be used.
    #[error("prefetch list: {0}")]
    PrefetchList(#[from] crate::prefetch::list::ListError),
    /// The FUSE session failed.
    #[error("FUSE session at {path}")]
    Session {
        /// Mountpoint.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Examines the mountpoint: `stat`, then `statfs`. A dead daemon's mount
/// can still answer `stat` from the kernel's attribute cache (rafs asks for
/// long TTLs), but `statfs` always reaches the daemon and fails with
/// ENOTCONN.
pub fn probe_mountpoint(path: &Path) -> std::io::Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path)?;
    nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(meta)
}

/// Classifies the result of [`probe_mountpoint`].
pub fn check_mountpoint(
    path: &Path,
    meta: std::io::Result<std::fs::Metadata>,
) -> Result<(), MountError> {
    match meta {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(MountError::NotDir(path.to_owned())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            Err(MountError::Stale(path.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(MountError::NoMountpoint(path.to_owned()))
        }
        Err(source) => Err(MountError::Mountpoint {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The fuser session settings for `cfg`. The mount is `nosuid,nodev` and
/// only the mounting user may enter it unless `cfg` opts in (`--suid`,
/// `--dev`, `--allow-other`): an image is untrusted input, and its setuid
/// binaries and device nodes must not be live for every local user.
pub fn session_config(cfg: &MountConfig) -> fuser::Config {
    let mut options = vec![
        MountOption::RO,
        MountOption::FSName("rafs".into()),
        // Type `fuse.rafs` in /proc/mounts. fuser's own `Subtype` only
        // reaches fusermount, not a direct mount(2) by root; the kernel and
        // fusermount3 both accept `subtype=`.
        MountOption::CUSTOM("subtype=rafs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Exec,
    ];
    options.push(if cfg.suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    options.push(if cfg.dev {
        MountOption::Dev
    } else {
        MountOption::NoDev
    });
    let mut c = fuser::Config::default();
    c.mount_options = options;
    c.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(cfg.threads);
    c.clone_fd = true;
    c
}

/// Keeps the daemon's memory flat. Every FUSE worker thread allocates
/// and frees chunk-sized buffers (stored bytes, decompressed frames, up to
/// 4 MiB); with glibc's defaults each thread gets its own arena and the
/// dynamic mmap threshold soon serves such buffers from arenas that keep
/// them after free: peak RSS measured 126 MB on the rootfs benchmark, 45 MB
/// with two arenas and a fixed 256 KiB threshold (large buffers are then
/// mmapped and returned to the kernel on free).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // any FUSE worker thread exists, and both values are valid for glibc.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Whether this process may ask for `suid` and `dev` (is root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Entry point of `rafs mount`, with its resolved settings. A reference
/// is resolved first ([`image_ref`]); its verified bootstrap is served and
/// the ready line names the reference with the digest mounted.
pub fn run(cfg: &MountConfig) -> anyhow::Result<ExitCode> {
    tune_malloc();
    let Some(src) = &cfg.image else {
        serve(cfg, is_root())?;
        return Ok(ExitCode::SUCCESS);
    };
    let resolved = image_ref::resolve(src, &cfg.backend_options, cfg.fetch.cache_dir.as_deref())
        .map_err(|e| anyhow::anyhow!(e))
        .map_err(|e| e.context(format!("resolving {}", src.reference)))?;
    tracing::info!(
        digest = %resolved.digest,
        reused = resolved.reused_bootstrap,
        bootstrap = %resolved.bootstrap.display(),
        "image resolved"
    );
    let mut cfg = cfg.clone();
    cfg.bootstrap = resolved.bootstrap.clone();
    let mut shown = src.reference.clone();
    shown.digest = Some(resolved.digest.clone());
    let result = serve_as(&cfg, is_root(), &format!("docker://{shown}"));
    drop(resolved);
    result?;
    Ok(ExitCode::SUCCESS)
}

enum Event {
    Signal(i32),
    Ended(std::io::Result<()>),
}

/// The filesystem over `cfg`'s image and backend, with the image's inode
/// and blob counts (for `/status`).
fn open_fs(cfg: &MountConfig) -> Result<(Arc<RafsFs>, u64, u64), MountError> {
    let image = Image::open(&cfg.bootstrap)?;
    let (inodes, blobs) = {
        let b = image.bootstrap().map_err(|source| ImageError::Format {
            path: cfg.bootstrap.clone(),
            source,
        })?;
        (u64::from(b.inode_count()), b.blobs().len() as u64)
    };
    let backend = cfg.backend.open(&cfg.backend_options)?;
    let first_blob = image
        .bootstrap()
        .ok()
        .and_then(|b| b.blobs().first().map(|x| BlobId(x.id)));
    let remote = !matches!(cfg.backend, BackendUrl::File(_)) && cfg.fetch.manager.is_none();
    if let (true, Some(id)) = (remote, first_blob) {
        warm_up(backend.clone(), id);
    }
    let mut fs = RafsFs::new(image, backend, cfg.fetch.clone())?;
    if let Some(path) = &cfg.record_access {
        fs = fs.with_recorder(Arc::new(Recorder::new(path.clone())));
    }
    let fs = Arc::new(fs);
    fs.start_elf_deps().map_err(MountError::Setup)?;
    fs.speculate_startup();
    Ok((fs, inodes, blobs))
}

/// Asks a remote backend for the size of blob `id` from a thread, so that
/// the first read finds a connection (TCP, TLS) and a registry token
/// ready instead of paying their round trips. Failures only log: the read
/// that needs the backend reports its own.
fn warm_up(backend: Arc<dyn Backend>, id: BlobId) {
    let spawned = std::thread::Builder::new()
        .name("rafs-warm-up".into())
        .spawn(move || {
            if let Err(e) = backend.blob_size(&id) {
                tracing::debug!(blob = %id, "warming the backend up: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("warm-up thread: {e}");
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP and SIGUSR1 to `tx` from a thread
/// (signal-hook's self-pipe: the handler itself only writes a byte).
fn forward_signals(tx: Sender<Event>) -> Result<signal_hook::iterator::Handle, MountError> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1]).map_err(MountError::Setup)?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("rafs-signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let _ = tx.send(Event::Signal(s));
            }
        })
        .map_err(MountError::Setup)?;
    Ok(handle)
}

/// Prints the one line on stdout that says the mount is ready:
/// `rafs: mounted NAME at MOUNTPOINT`.
fn print_ready(cfg: &MountConfig, name: &str) {
    let mut out = std::io::stdout().lock();
    let ready = writeln!(out, "rafs: mounted {name} at {}", cfg.mountpoint.display())
        .and_then(|()| out.flush());
    if let Err(e) = ready {
        // Nobody reads stdout any more (a closed pipe): keep serving.
        tracing::debug!("writing the ready line: {e}");
    }
    tracing::info!(mountpoint = %cfg.mountpoint.display(), "mounted");
}

/// Mounts, prints the ready line, starts the prefetch, and serves until
/// a signal or an external unmount; then stops the prefetch, writes the
/// access record and lets the committer finish writing to the cache.
pub fn serve(cfg: &MountConfig, is_root: bool) -> Result<(), MountError> {
    serve_as(cfg, is_root, &cfg.bootstrap.display().to_string())
}

/// [`serve`], naming the image `name` on the ready line.
fn serve_as(cfg: &MountConfig, is_root: bool, name: &str) -> Result<(), MountError> {
    let (fs, inodes, blobs) = open_fs(cfg)?;
    let source = Source::load(&cfg.prefetch)?;
    check_mountpoint(&cfg.mountpoint, probe_mountpoint(&cfg.mountpoint))?;
    let listener = cfg.api_socket.as_deref().map(ApiServer::bind).transpose()?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let signals = forward_signals(tx.clone())?;
    let mut unmounter = start_session(cfg, &fs, tx)?;
    if is_root {
        raise_readahead(&cfg.mountpoint);
    }
    let mut prefetch = Prefetch::new(&fs);
    let api = match (listener, &cfg.api_socket) {
        (Some(l), Some(path)) => {
            let status = StatusInfo {
                bootstrap: cfg.bootstrap.clone(),
                mountpoint: cfg.mountpoint.clone(),
                started: Instant::now(),
                inodes,
                blobs,
            };
            let api = api_for(status, &fs, prefetch.status().clone());
            Some(ApiServer::start(l, path, api).map_err(MountError::Setup)?)
        }
        _ => None,
    };
    print_ready(cfg, name);
    if let Err(e) = prefetch.start(&fs, source) {
        tracing::warn!("prefetch not started: {e}");
    }

    let result = wait(&rx, &mut unmounter, &cfg.mountpoint, &|| {
        log_record(&fs, "SIGUSR1")
    });
    signals.close();
    prefetch.stop();
    log_record(&fs, "unmount");
    if !fs.fetcher().flush(EXIT_FLUSH_TIMEOUT) {
        tracing::warn!(
            "exiting with frames still not written to the cache after {EXIT_FLUSH_TIMEOUT:?}"
        );
    }
    if let Some(api) = api {
        api.shutdown();
    }
    result
}

/// Mounts `fs` and runs its session on a thread that reports the end on
/// `tx`; returns what unmounts it.
fn start_session(
    cfg: &MountConfig,
    fs: &Arc<RafsFs>,
    tx: Sender<Event>,
) -> Result<SessionUnmounter, MountError> {
    let mount_err = |source: std::io::Error| match source.raw_os_error() {
        // The mountpoint went stale between the check and the mount.
        Some(libc::ENOTCONN) => MountError::Stale(cfg.mountpoint.clone()),
        _ => MountError::Mount {
            path: cfg.mountpoint.clone(),
            source,
        },
    };
    let adapter = FuseFs::new(fs.clone());
    let mut session =
        Session::new(adapter, &cfg.mountpoint, &session_config(cfg)).map_err(mount_err)?;
    let unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("rafs-fuse".into())
        .spawn(move || {
            let _ = tx.send(Event::Ended(session.run()));
        })
        .map_err(MountError::Setup)?;
    Ok(unmounter)
}

/// The API over `fs`: core, fetch and prefetch metrics, the prefetch
/// status and the record action.
fn api_for(status: StatusInfo, fs: &Arc<RafsFs>, prefetch: Arc<PrefetchStatus>) -> Api {
    let mut registry = Api::registry_for(fs.metrics().clone());
    fs.fetcher().register_metrics(&mut registry);
    let control = MountControl {
        fs: fs.clone(),
        prefetch,
    };
    Api::new(status, registry).with_control(Arc::new(control))
}

/// What the API may see and do on a mount.
struct MountControl {
    fs: Arc<RafsFs>,
    prefetch: Arc<PrefetchStatus>,
}

impl Control for MountControl {
    fn prefetch_status(&self) -> Option<serde_json::Value> {
        Some(self.prefetch.json())
    }

    fn write_record(&self) -> Result<serde_json::Value, ControlError> {
        match save_record(&self.fs) {
            Ok(Some((n, path))) => Ok(serde_json::json!({
                "entries": n,
                "path": path.to_string_lossy(),
            })),
            Ok(None) => Err(ControlError::Unavailable(
                "not recording (mount with --record-access FILE)".into(),
            )),
            Err(e) => Err(ControlError::Failed(e.to_string())),
        }
    }
}

/// Writes the access record if recording: entries written and where.
fn save_record(fs: &RafsFs) -> Result<Option<(usize, PathBuf)>, RecordError> {
    let Some(r) = fs.recorder() else {
        return Ok(None);
    };
    let n = r.write(&fs.image().bootstrap()?)?;
    Ok(Some((n, r.path().to_owned())))
}

/// [`save_record`], logged (`why`: what asked for it).
fn log_record(fs: &RafsFs, why: &str) {
    match save_record(fs) {
        Ok(Some((n, path))) => {
            tracing::info!(
                entries = n,
                "{why}: access record written to {}",
                path.display()
            )
        }
        Ok(None) if why == "SIGUSR1" => {
            tracing::info!("SIGUSR1: not recording (mount with --record-access FILE)")
        }
        Ok(None) => {}
        Err(e) => tracing::error!("{why}: {e}"),
    }
}

/// Waits for a terminating signal or the end of the session; see the
/// module doc. SIGUSR1 calls `on_usr1` and goes on waiting.
fn wait(
    rx: &Receiver<Event>,
    unmounter: &mut SessionUnmounter,
    mountpoint: &Path,
    on_usr1: &dyn Fn(),
) -> Result<(), MountError> {
    let ended = |r: std::io::Result<()>| {
        r.map_err(|source| MountError::Session {
            path: mountpoint.to_owned(),
            source,
        })
    };
    loop {
        match rx.recv() {
            Ok(Event::Signal(SIGUSR1)) => on_usr1(),
            Ok(Event::Signal(sig)) => {
                tracing::info!(signal = sig, "unmounting {}", mountpoint.display());
                unmount(unmounter, mountpoint);
                return drain(rx).map_or(Ok(()), ended);
            }
            Ok(Event::Ended(r)) => {
                tracing::info!("{} was unmounted", mountpoint.display());
                return ended(r);
            }
            // Both senders gone: nothing can end the wait.
            Err(_) => return Ok(()),
        }
    }
}

/// Waits up to [`DRAIN_TIMEOUT`] for the session to end after an unmount
/// (SIGUSR1 is ignored meanwhile, another terminating signal ends the
/// wait); `None` if it did not.
fn drain(rx: &Receiver<Event>) -> Option<std::io::Result<()>> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Event::Ended(r)) => return Some(r),
            Ok(Event::Signal(SIGUSR1)) => {}
            Ok(Event::Signal(_)) | Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("session still busy; exiting");
                return None;
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Unmounts; a busy mount is detached lazily instead.
fn unmount(unmounter: &mut SessionUnmounter, mountpoint: &Path) {
    if let Err(e) = unmounter.unmount() {
        tracing::warn!("unmount {}: {e}; detaching lazily", mountpoint.display());
        if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::error!("lazy unmount {}: {e}", mountpoint.display());
        }
    }
}

/// Raises the readahead of the mount's backing device (best effort: needs
/// root and sysfs).
fn raise_readahead(mountpoint: &Path) {
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => return tracing::debug!("readahead: {e}"),
    };
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&path, format!("{READAHEAD_KB}\n")) {
        Ok(()) => tracing::debug!("{path} = {READAHEAD_KB}"),
        Err(e) => tracing::debug!("readahead {path}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn mountpoint_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        assert!(check_mountpoint(p, probe_mountpoint(p)).is_ok());
        let file = p.join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_mountpoint(&file, std::fs::metadata(&file)),
            Err(MountError::NotDir(_))
        ));
        let missing = p.join("missing");
        assert!(matches!(
            check_mountpoint(&missing, std::fs::metadata(&missing)),
            Err(MountError::NoMountpoint(_))
        ));
        let stale = Path::new("/mnt/x");
        let e = check_mountpoint(stale, Err(Error::from_raw_os_error(libc::ENOTCONN))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/mnt/x is a stale FUSE mount (a previous daemon died); clear it with: fusermount3 -u /mnt/x"
        );
        assert!(matches!(
            check_mountpoint(stale, Err(Error::new(ErrorKind::PermissionDenied, "no"))),
            Err(MountError::Mountpoint { .. })
        ));
    }

    #[test]
    fn session_options() {
        let cfg = MountConfig {
            bootstrap: "/b".into(),
            mountpoint: "/m".into(),
            backend: crate::backend::url::BackendUrl::File("/d".into()),
            backend_options: Default::default(),
            threads: 6,
            api_socket: None,
            chunk_cache_bytes: 1,
            fetch: Default::default(),
            allow_other: false,
            suid: false,
            dev: false,
            prefetch: PrefetchSource::Table,
            record_access: None,
            image: None,
        };
        let c = session_config(&cfg);
        assert_eq!(c.n_threads, Some(6));
        assert!(c.clone_fd);
        assert_eq!(c.acl, SessionACL::Owner);
        for o in [
            MountOption::RO,
            MountOption::DefaultPermissions,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoAtime,
        ] {
            assert!(c.mount_options.contains(&o), "{o:?}");
        }
        for o in [MountOption::Dev, MountOption::Suid] {
            assert!(!c.mount_options.contains(&o), "{o:?}");
        }
        let open = session_config(&MountConfig {
            allow_other: true,
            suid: true,
            dev: true,
            ..cfg
        });
        assert_eq!(open.acl, SessionACL::All);
        for (on, off) in [
            (MountOption::Suid, MountOption::NoSuid),
            (MountOption::Dev, MountOption::NoDev),
        ] {
            assert!(open.mount_options.contains(&on), "{on:?}");
            assert!(!open.mount_options.contains(&off), "{off:?}");
        }
    }
}
