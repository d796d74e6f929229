//! The blob manager daemon's plumbing, without clap or the HTTP API: where
//! its socket comes from, the lock on its cache directory, the connection
//! layer's start and stop, and its `/status` value.
//!
//! - **Socket.** Under systemd socket activation (`LISTEN_PID` is this
//!   process and `LISTEN_FDS` is 1) fd 3 is used, after checking it is a
//!   listening `SOCK_SEQPACKET` socket, and the variables are unset so no
//!   child inherits them. Otherwise `--socket PATH` is bound like the API
//!   socket ([`crate::util::bind_private`]): in a fresh 0700 directory,
//!   mode 0600 (0660 with the `--socket-group` group when other uids are
//!   allowed), renamed into place; a stale socket is replaced, a live one
//!   or a non-socket refused.
//! - **Lock.** The cache directory is taken with
//!   [`super::lockfile::ManagerLock`] before anything is
//!   served, and held until the daemon is dropped.
//! - **Run.** The front end (`rafs blobmgr`) first calls
//!   [`Daemon::prepare`] (activation socket, lock, bind), before any other
//!   thread exists (unsetting the activation variables is only sound then)
//!   and before its engine touches the directory; it then builds the
//!   engine, [`Prepared::serve`]s it, serves [`Daemon::status_fn`] and the
//!   metrics registry on its API socket, waits with [`StopSignals`], then
//!   calls [`Daemon::shutdown`]. [`Daemon::start`] does both steps.

use super::lockfile::{LockError, ManagerLock};
use super::server::{Server, ServerConfig, ServerMetrics};
use super::service::BlobService;
use crate::blobmgr::transport::{self, Conn};
use crate::util::SocketPathError;
use prometheus_client::registry::Registry;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// The descriptor systemd passes the first socket on.
const SD_LISTEN_FDS_START: i32 = 3;
/// Pending connections the kernel keeps for the accept thread.
const BACKLOG: i32 = 1024;

/// What the daemon needs besides its service.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Where to bind (optional under socket activation).
    pub socket: Option<PathBuf>,
    /// Group of the socket when other uids are allowed (name or gid).
    pub socket_group: Option<String>,
    /// The cache directory the daemon owns.
    pub cache_dir: PathBuf,
    /// The connection layer's peers and limits.
    pub server: ServerConfig,
}

/// Why the daemon could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The cache directory is held by someone else.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The socket path is taken.
    #[error(transparent)]
    SocketPath(#[from] SocketPathError),
    /// Binding or listening failed.
    #[error("blob manager socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Neither `--socket` nor socket activation.
    #[error("no socket: give --socket PATH or start under systemd socket activation")]
    NoSocket,
    /// The activation environment or descriptor is not usable.
    #[error("systemd socket activation: {0}")]
    Activation(String),
    /// `--socket-group` names no group.
    #[error("--socket-group {0}: no such group")]
    Group(String),
    /// The cache directory could not be created.
    #[error("cache directory: {0}")]
    CacheDir(#[source] crate::cache::CacheError),
    /// The connection layer did not start.
    #[error("starting the blob manager: {0}")]
    Start(std::io::Error),
}

/// Whether systemd passed this process (`pid`) one socket, from the
/// values of `LISTEN_PID` and `LISTEN_FDS`. Variables meant for another
/// process (another pid) or absent are `Ok(false)`; anything but exactly
/// one socket for this process is an error.
pub fn activation_for(
    pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
) -> Result<bool, DaemonError> {
    let Some(lp) = listen_pid else {
        return Ok(false);
    };
    match lp.trim().parse::<u32>() {
        Ok(p) if p == pid => {}
        Ok(_) => return Ok(false),
        Err(_) => return Err(DaemonError::Activation(format!("LISTEN_PID={lp:?}"))),
    }
    match listen_fds.map(|s| s.trim().parse::<u32>()) {
        Some(Ok(1)) => Ok(true),
        Some(Ok(n)) => Err(DaemonError::Activation(format!(
            "LISTEN_FDS={n}: expected exactly one socket"
        ))),
        _ => Err(DaemonError::Activation(format!(
            "LISTEN_FDS={listen_fds:?}"
        ))),
    }
}

/// The socket systemd passed, if it passed one to this process; the
/// activation variables are unset either way.
pub fn take_activation_socket() -> Result<Option<OwnedFd>, DaemonError> {
    let var = |k| std::env::var(k).ok();
    let (lp, lf) = (var("LISTEN_PID"), var("LISTEN_FDS"));
    let ours = activation_for(std::process::id(), lp.as_deref(), lf.as_deref());
    if lp.is_some() {
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
    }
    if !ours? {
        return Ok(None);
    }
    // SAFETY: systemd passed fd 3 to this process for it to own (checked:
    // LISTEN_PID is our pid); nothing else in the process claims it.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    if !transport::is_seqpacket_listener(fd.as_fd()) {
        // Not ours to close: it may not even be a socket.
        std::mem::forget(fd);
        return Err(DaemonError::Activation(
            "fd 3 is not a listening SOCK_SEQPACKET socket (ListenSequentialPacket=)".into(),
        ));
    }
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD)
        .map(nix::fcntl::FdFlag::from_bits_retain)
        .unwrap_or(nix::fcntl::FdFlag::empty());
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(flags | nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Ok(Some(fd))
}

/// A group name or numeric gid.
fn group_id(g: &str) -> Result<u32, DaemonError> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(grp)) => Ok(grp.gid.as_raw()),
        _ => Err(DaemonError::Group(g.to_owned())),
    }
}

/// Binds the manager's socket at `path` (see the module docs): 0600, or
/// 0660 with group `gid` when `shared` (other uids allowed).
pub fn bind_socket(path: &Path, shared: bool, gid: Option<u32>) -> Result<OwnedFd, DaemonError> {
    crate::util::replace_stale_socket(path, |p| Conn::connect(p).is_ok())?;
    let (mode, gid) = if shared { (0o660, gid) } else { (0o600, None) };
    crate::util::bind_private(path, mode, gid, |p| {
        transport::listen_at(p, BACKLOG).map_err(|e| match e {
            transport::TransportError::Io(e) => e,
            e => std::io::Error::other(e.to_string()),
        })
    })
    .map_err(|source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// The path a listening Unix socket is bound at, for messages.
fn bound_path(fd: &OwnedFd) -> String {
    match nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(
        std::os::fd::AsRawFd::as_raw_fd(fd),
    ) {
        Ok(a) => a.path().map_or_else(
            || "(systemd socket)".to_owned(),
            |p| p.display().to_string(),
        ),
        Err(_) => "(systemd socket)".to_owned(),
    }
}

/// A blob manager before it serves: its socket taken (activation or
/// bound) and its cache directory locked, so that whatever it serves can
/// be built over a directory it owns. Dropped unserved, it removes the
/// socket file it bound and releases the directory.
pub struct Prepared {
    /// `Some` until served.
    listener: Option<OwnedFd>,
    /// `Some` until served.
    lock: Option<ManagerLock>,
    /// The socket file this process bound (removed if never served).
    bound: Option<PathBuf>,
    socket: String,
    cache_dir: PathBuf,
    server: ServerConfig,
}

impl Prepared {
    /// The cache directory it owns.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Registers the connection layer's metrics in `registry` and serves
    /// `service` on the socket taken.
    pub fn serve<S: BlobService>(
        mut self,
        service: Arc<S>,
        registry: &mut Registry,
    ) -> Result<Daemon, DaemonError> {
        let (Some(listener), Some(lock)) = (self.listener.take(), self.lock.take()) else {
            return Err(DaemonError::NoSocket); // unreachable: taken only here
        };
        let metrics = Arc::new(ServerMetrics::default());
        metrics.register(registry);
        let server =
            Server::start_with_metrics(listener, service, self.server.clone(), metrics.clone())
                .map_err(DaemonError::Start)?;
        let socket = std::mem::take(&mut self.socket);
        tracing::info!(socket, cache_dir = %self.cache_dir.display(), "blob manager serving");
        Ok(Daemon {
            server: Some(server),
            _lock: lock,
            bound: self.bound.take(),
            socket,
            cache_dir: std::mem::take(&mut self.cache_dir),
            started: Instant::now(),
            metrics,
        })
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(p) = self.bound.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!("removing {}: {e}", p.display());
            }
        }
    }
}

/// A running blob manager: its lock, its socket and its connection layer.
pub struct Daemon {
    server: Option<Server>,
    _lock: ManagerLock,
    /// The socket file this process bound (removed at shutdown).
    bound: Option<PathBuf>,
    socket: String,
    cache_dir: PathBuf,
    started: Instant,
    metrics: Arc<ServerMetrics>,
}

impl Daemon {
    /// Takes the socket (activation or `opts.socket`), creates the cache
    /// directory if missing and locks it. Call it before starting any
    /// thread (it unsets the activation variables) and before building the
    /// service over the directory.
    pub fn prepare(opts: &DaemonOptions) -> Result<Prepared, DaemonError> {
        let activated = take_activation_socket()?;
        let gid = opts.socket_group.as_deref().map(group_id).transpose()?;
        let socket = match (&activated, &opts.socket) {
            (Some(fd), _) => bound_path(fd),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => return Err(DaemonError::NoSocket),
        };
        crate::cache::create_dir(&opts.cache_dir).map_err(DaemonError::CacheDir)?;
        // Locked before the socket is touched: a second manager on the
        // same directory must not replace the first one's socket.
        let lock = ManagerLock::acquire(&opts.cache_dir, Path::new(&socket))?;
        let (listener, bound) = match activated {
            Some(fd) => (fd, None),
            None => {
                let path = opts.socket.clone().ok_or(DaemonError::NoSocket)?;
                let shared = !opts.server.allow_uids.is_empty();
                (bind_socket(&path, shared, gid)?, Some(path))
            }
        };
        Ok(Prepared {
            listener: Some(listener),
            lock: Some(lock),
            bound,
            socket,
            cache_dir: opts.cache_dir.clone(),
            server: opts.server.clone(),
        })
    }

    /// [`Daemon::prepare`], then [`Prepared::serve`].
    pub fn start<S: BlobService>(
        service: Arc<S>,
        opts: &DaemonOptions,
        registry: &mut Registry,
    ) -> Result<Daemon, DaemonError> {
        Self::prepare(opts)?.serve(service, registry)
    }

    /// The connection layer's metrics.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// A producer of the `/status` JSON: `state`, `socket`, `cache_dir`,
    /// `clients`, `uptime_secs`, and `service` (what `service_status`
    /// returns at each call).
    pub fn status_fn(
        &self,
        service_status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
        let (metrics, started) = (self.metrics.clone(), self.started);
        let socket = self.socket.clone();
        let cache_dir = self.cache_dir.display().to_string();
        move || {
            serde_json::json!({
                "state": "serving",
                "socket": socket,
                "cache_dir": cache_dir,
                "clients": metrics.clients.get(),
                "uptime_secs": started.elapsed().as_secs(),
                "service": service_status(),
            })
        }
    }

    /// Stops serving (see [`Server::shutdown`]), removes the socket file
    /// it bound, and releases the cache directory.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        if let Some(p) = self.bound.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!("removing {}: {e}", p.display());
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM and SIGINT, caught from [`StopSignals::install`] on (so one
/// that comes while the daemon starts is not lost, nor fatal).
pub struct StopSignals(signal_hook::iterator::Signals);

impl StopSignals {
    /// Catches SIGTERM and SIGINT from now on.
    pub fn install() -> std::io::Result<StopSignals> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map(StopSignals)
    }

    /// Blocks until one of them came; returns it.
    pub fn wait(mut self) -> i32 {
        self.0
            .forever()
            .next()
            .unwrap_or(signal_hook::consts::SIGTERM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobmgr::protocol::{ErrorCode, FetchFrame, Lane, Message, Packet, UsedRange};
    use crate::manager::lockfile::SharedLock;
    use crate::manager::service::{FetchDone, OpenRequest, Opened, Refused};
    use std::os::unix::fs::MetadataExt;

    /// Opens nothing: the daemon's plumbing is what is tested here.
    struct Nothing;

    impl BlobService for Nothing {
        type Blob = ();
        fn open(&self, _req: &OpenRequest) -> Result<Opened<()>, Refused> {
            Err(Refused::new(ErrorCode::Internal, "test"))
        }
        fn fetch(&self, _: &Arc<()>, _: Lane, _: Vec<FetchFrame>, _: Instant, done: FetchDone) {
            done(Vec::new());
        }
        fn used(&self, _: &(), _: &[UsedRange]) {}
        fn close(&self, _: Arc<()>) {}
    }

    #[test]
    fn activation_env_is_for_this_pid_and_one_socket_only() {
        assert!(activation_for(42, Some("42"), Some("1")).unwrap());
        assert!(!activation_for(42, Some("43"), Some("1")).unwrap());
        assert!(!activation_for(42, None, Some("1")).unwrap());
        assert!(!activation_for(42, None, None).unwrap());
        for (p, f) in [
            (Some("42"), Some("2")),
            (Some("42"), Some("0")),
            (Some("42"), None),
            (Some("42"), Some("x")),
            (Some("pid"), Some("1")),
        ] {
            assert!(
                matches!(activation_for(42, p, f), Err(DaemonError::Activation(_))),
                "{p:?} {f:?}"
            );
        }
    }

    #[test]
    fn the_socket_is_private_or_group_shared_and_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        // A stale socket is replaced.
        drop(transport::listen_at(&path, 1).unwrap());
        let l = bind_socket(&path, false, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        // A live one is not.
        assert!(matches!(
            bind_socket(&path, false, None),
            Err(DaemonError::SocketPath(SocketPathError::InUse(_)))
        ));
        drop(l);
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            bind_socket(&file, false, None),
            Err(DaemonError::SocketPath(SocketPathError::NotSocket(_)))
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        let shared = dir.path().join("g.sock");
        let _g = bind_socket(&shared, true, Some(12345)).unwrap();
        let m = std::fs::metadata(&shared).unwrap();
        assert_eq!((m.mode() & 0o7777, m.gid()), (0o660, 12345));
        assert_eq!(group_id("0").unwrap(), 0);
        assert!(matches!(
            group_id("no-such-group-rafs"),
            Err(DaemonError::Group(_))
        ));
        // Only the sockets are left: no private bind directory.
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["file", "g.sock", "m.sock"]);
    }

    #[test]
    fn a_daemon_serves_owns_its_dir_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let sock = dir.path().join("m.sock");
        let opts = DaemonOptions {
            socket: Some(sock.clone()),
            cache_dir: cache.clone(),
            ..DaemonOptions::default()
        };
        let mut reg = Registry::default();
        let d = Daemon::start(Arc::new(Nothing), &opts, &mut reg).unwrap();
        let c = Conn::connect(&sock).unwrap();
        let hello = Message::Hello {
            min_version: 1,
            max_version: 1,
            compat: 0,
            incompat: 0,
        };
        c.send(
            &Packet {
                request_id: 1,
                message: hello,
            },
            &[],
        )
        .unwrap();
        assert!(matches!(
            c.recv().unwrap().0.message,
            Message::HelloOk { .. }
        ));
        let status = d.status_fn(|| serde_json::json!({"fake": true}));
        let v = status();
        assert_eq!(v["clients"], 1, "{v}");
        assert_eq!(v["socket"], sock.display().to_string());
        assert_eq!(v["service"]["fake"], true);
        // The directory is the manager's: standalone users and a second
        // manager are refused, naming the socket.
        let e = SharedLock::acquire(&cache).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("--blob-manager {}", sock.display())),
            "{e}"
        );
        let other = DaemonOptions {
            socket: Some(dir.path().join("other.sock")),
            ..opts.clone()
        };
        let e = Daemon::start(Arc::new(Nothing), &other, &mut Registry::default()).err();
        assert!(
            matches!(e, Some(DaemonError::Lock(LockError::OtherManager { .. }))),
            "{e:?}"
        );
        assert!(!dir.path().join("other.sock").exists());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(text.contains("rafs_blobmgr_clients 1"), "{text}");
        d.shutdown();
        assert!(!sock.exists());
        SharedLock::acquire(&cache).unwrap();
        // A manager does not start where standalone users are.
        let _standalone = SharedLock::acquire(&cache).unwrap();
        let e = Daemon::start(Arc::new(Nothing), &opts, &mut Registry::default()).err();
        assert!(
            matches!(e, Some(DaemonError::Lock(LockError::InUse { .. }))),
            "{e:?}"
        );
        assert!(!sock.exists());
        let e = Daemon::start(
            Arc::new(Nothing),
            &DaemonOptions {
                socket: None,
                ..opts
            },
            &mut Registry::default(),
        )
        .err();
        assert!(matches!(e, Some(DaemonError::NoSocket)), "{e:?}");
    }

    #[test]
    fn prepare_creates_and_locks_the_dir_and_cleans_up_unserved() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("new").join("cache");
        let sock = dir.path().join("m.sock");
        let opts = DaemonOptions {
            socket: Some(sock.clone()),
            cache_dir: cache.clone(),
            ..DaemonOptions::default()
        };
        let p = Daemon::prepare(&opts).unwrap();
        assert_eq!(p.cache_dir(), cache);
        assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
        assert!(sock.exists());
        assert!(matches!(
            SharedLock::acquire(&cache),
            Err(LockError::Managed { .. })
        ));
        drop(p);
        assert!(!sock.exists());
        SharedLock::acquire(&cache).unwrap();
    }
}
