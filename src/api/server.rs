//! The API's Unix socket server: who may connect, how long a request may
//! take, and how the server stops.
//!
//! - **Socket mode.** The socket is bound inside a fresh 0700 directory
//!   next to its path, set to 0600 there, and renamed into place, so its
//!   path never exists with a wider mode, whatever the umask.
//! - **Peers.** Each connection's `SO_PEERCRED` uid must be root or the
//!   daemon's own; any other is closed unanswered and counted
//!   (`rafs_api_refused_connections_total`). The mode already keeps other
//!   users out; the check also covers a socket made accessible later.
//! - **Deadlines.** One deadline ([`Limits::deadline`]) covers reading the
//!   request head and writing the response: each read or write waits at
//!   most what is left of it, so a client trickling a byte at a time is cut
//!   off at the deadline, not at a per-read timeout it can renew forever.
//! - **Concurrency.** The accept thread never reads from a client: each
//!   connection gets its own thread, at most [`Limits::max_clients`] at a
//!   time (more are answered 503 and counted), so one slow client never
//!   delays another.
//! - **Shutdown.** The accept thread waits in `poll` on the listener and a
//!   wake-up socket; [`ApiServer::shutdown`] wakes it, joins it (it never
//!   blocks on a client), and shuts down every open connection so their
//!   threads end at once. It never waits for a client.

use super::{Api, Response, MAX_HEAD};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ApiError;

/// How long one request may take and how many are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From accepting a connection to the last byte of its response.
    pub deadline: Duration,
    /// Connections served at once; more are answered 503.
    pub max_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(5),
            max_clients: 8,
        }
    }
}

/// What the server counts, exposed as metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections closed because the peer's uid is not allowed.
    pub refused: AtomicU64,
    /// Connections answered 503 because [`Limits::max_clients`] were busy.
    pub busy: AtomicU64,
    /// Requests cut off at the deadline.
    pub timed_out: AtomicU64,
}

impl Collector for ServerStatsCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.0;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::counter(
            &mut e,
            "rafs_api_refused_connections",
            "API connections closed because the peer's uid is not root or the daemon's",
            get(&s.refused),
        )?;
        super::counter(
            &mut e,
            "rafs_api_busy_connections",
            "API connections answered 503 because too many were being served",
            get(&s.busy),
        )?;
        super::counter(
            &mut e,
            "rafs_api_timed_out_requests",
            "API requests cut off at their deadline",
            get(&s.timed_out),
        )
    }
}

/// Exposes [`ServerStats`] at scrape time.
#[derive(Debug)]
struct ServerStatsCollector(Arc<ServerStats>);

/// Whether a peer running as `uid` may use the API of a daemon running as
/// `own`: root and the daemon's own user.
pub fn peer_allowed(uid: u32, own: u32) -> bool {
    uid == 0 || uid == own
}

/// The uid of the process that connected `conn` (`SO_PEERCRED`: fixed
/// when it called `connect`, not anything it says).
pub fn peer_uid(conn: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes, `len` holds the size
    // of `cred`, and the fd is open for as long as `conn` is borrowed.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// A connection with one deadline for all its reads and writes.
struct Deadlined<'a> {
    conn: &'a UnixStream,
    deadline: Instant,
}

impl Deadlined<'_> {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.conn.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.conn).read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.conn.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.conn).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serves one request on `conn` within `deadline`; errors (the deadline,
/// resets) only end the connection.
fn serve_one(api: &Api, conn: &UnixStream, deadline: Instant, stats: &ServerStats) {
    let mut io = Deadlined { conn, deadline };
    let result = super::read_head(&mut io)
        .map(|head| api.respond(head.as_deref()))
        .and_then(|resp| io.write_all(&resp.to_bytes()));
    if let Err(e) = result {
        if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!("API connection: {e}");
    }
}

/// What the accept thread and the connection threads share.
struct Shared {
    api: Api,
    limits: Limits,
    stats: Arc<ServerStats>,
    own_uid: u32,
    active: AtomicUsize,
    /// Open connections by id, for shutdown.
    live: Mutex<HashMap<u64, UnixStream>>,
    next_id: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, UnixStream>> {
        // Entries are inserted and removed whole: a poisoned map is fine.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the peer and the client cap, then serves `conn` on its own
    /// thread.
    fn admit(self: &Arc<Self>, conn: UnixStream) {
        match peer_uid(&conn) {
            Ok(uid) if peer_allowed(uid, self.own_uid) => {}
            Ok(uid) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    uid,
                    "API connection refused: peer is not root or the daemon's user"
                );
                return;
            }
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("API connection refused: no peer credentials: {e}");
                return;
            }
        }
        let deadline = Instant::now() + self.limits.deadline;
        if self.active.fetch_add(1, Ordering::AcqRel) >= self.limits.max_clients {
            self.active.fetch_sub(1, Ordering::AcqRel);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            // Best effort and never blocking: the accept thread does not
            // wait on clients.
            let busy = Response::text(503, "too many API clients");
            if conn.set_nonblocking(true).is_ok() {
                let _ = (&conn).write(&busy.to_bytes());
                // Read what already came, so the close is not a reset
                // that could discard the 503 before the client reads it.
                let mut sink = [0u8; 1024];
                for _ in 0..MAX_HEAD / sink.len() {
                    if !matches!((&conn).read(&mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
            }
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = conn.try_clone() {
            self.live().insert(id, clone);
        }
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rafs-api-conn".into())
            .spawn(move || {
                if !shared.stop.load(Ordering::Acquire) {
                    serve_one(&shared.api, &conn, deadline, &shared.stats);
                }
                shared.live().remove(&id);
                shared.active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            tracing::warn!("API connection: no thread: {e}");
            self.live().remove(&id);
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Waits until `listener` or `wake` is readable (or a signal interrupts).
fn wait_readable(listener: &UnixListener, wake: &UnixStream) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    crate::util::poll_readable(&[listener.as_fd(), wake.as_fd()], None)
}

fn accept_loop(listener: UnixListener, wake: UnixStream, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        if let Err(e) = wait_readable(&listener, &wake) {
            tracing::error!("API socket: poll: {e}; the API stops");
            return;
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match listener.accept() {
            Ok((conn, _)) => {
                // Accepted sockets do not inherit the listener's
                // O_NONBLOCK on Linux; be explicit anyway.
                if conn.set_nonblocking(false).is_ok() {
                    shared.admit(conn);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                // Out of fds or memory: back off briefly instead of
                // spinning on a listener that stays readable.
                tracing::debug!("API accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The API served on a Unix socket (see the module docs).
pub struct ApiServer {
    path: PathBuf,
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` (mode 0600, see the module docs), replacing a stale
    /// socket file (one nobody accepts on). A live socket or a non-socket
    /// file is an error.
    pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
        use crate::util::SocketPathError as E;
        crate::util::replace_stale_socket(path, |p| UnixStream::connect(p).is_ok()).map_err(
            |e| match e {
                E::InUse(p) => ApiError::InUse(p),
                E::NotSocket(p) => ApiError::NotSocket(p),
                E::Io { path, source } => ApiError::Io { path, source },
            },
        )?;
        crate::util::bind_private(path, 0o600, None, |p| UnixListener::bind(p)).map_err(|source| {
            ApiError::Io {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Serves `api` on `listener` (bound at `path`) with the default
    /// [`Limits`] until [`shutdown`].
    ///
    /// [`shutdown`]: ApiServer::shutdown
    pub fn start(listener: UnixListener, path: &Path, api: Api) -> std::io::Result<ApiServer> {
        ApiServer::start_with(listener, path, api, Limits::default())
    }

    /// [`ApiServer::start`] with explicit limits.
    pub fn start_with(
        listener: UnixListener,
        path: &Path,
        mut api: Api,
        limits: Limits,
    ) -> std::io::Result<ApiServer> {
        let stats = Arc::new(ServerStats::default());
        api.registry
            .register_collector(Box::new(ServerStatsCollector(stats.clone())));
        listener.set_nonblocking(true)?;
        let (wake, wake_rx) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            api,
            limits: Limits {
                max_clients: limits.max_clients.max(1),
                ..limits
            },
            stats,
            own_uid: nix::unistd::geteuid().as_raw(),
            active: AtomicUsize::new(0),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rafs-api".into())
            .spawn(move || accept_loop(listener, wake_rx, s))?;
        Ok(ApiServer {
            path: path.to_owned(),
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// Stops serving, cuts off open connections, and removes the socket
    /// file; never waits for a client.
    pub fn shutdown(mut self) {
        self.stop_and_remove();
    }

    fn stop_and_remove(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        // Wakes the poll; a failure means the thread is already gone.
        let _ = (&self.wake).write(&[1]);
        let _ = thread.join();
        for conn in self.shared.live().values() {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("removing API socket {}: {e}", self.path.display());
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_and_remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Api {
        crate::api::tests::api().0
    }

    fn request(path: &Path, req: &[u8]) -> String {
        let mut c = UnixStream::connect(path).unwrap();
        c.write_all(req).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    fn serve(dir: &Path, limits: Limits) -> (ApiServer, PathBuf) {
        let path = dir.join("api.sock");
        let l = ApiServer::bind(&path).unwrap();
        (
            ApiServer::start_with(l, &path, api(), limits).unwrap(),
            path,
        )
    }

    #[test]
    fn over_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A stale socket file (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        let server = ApiServer::start(ApiServer::bind(&path).unwrap(), &path, api()).unwrap();
        // A live one is not.
        assert!(matches!(ApiServer::bind(&path), Err(ApiError::InUse(_))));
        let out = request(&path, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\"state\":\"mounted\""), "{out}");
        let out = request(&path, b"GET /other HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
        let out = request(&path, b"\x00\x01garbage\n\n");
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        // A client that sends nothing and hangs up does not stop the server.
        drop(UnixStream::connect(&path).unwrap());
        let out = request(&path, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(out.contains("rafs_operations_total"), "{out}");
        assert!(
            out.contains("rafs_api_refused_connections_total 0"),
            "{out}"
        );
        server.shutdown();
        assert!(!path.exists());
        // Nothing left of the private bind directory.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn refuses_to_remove_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"keep").unwrap();
        assert!(matches!(
            ApiServer::bind(&path),
            Err(ApiError::NotSocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }

    #[test]
    fn socket_is_0600_whatever_the_umask() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask only swaps the process's file mode mask; nextest
        // runs each test in its own process.
        let old = unsafe { libc::umask(0) };
        let bound = ApiServer::bind(&dir.path().join("api.sock"));
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let _l = bound.unwrap();
        let mode = std::fs::symlink_metadata(dir.path().join("api.sock"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o7777, 0o600, "{mode:o}");
    }

    #[test]
    fn peers_other_than_root_and_self_are_refused() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(65534, 1000));
        assert!(!peer_allowed(65534, 0));
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(
            peer_uid(&a).unwrap(),
            nix::unistd::geteuid().as_raw(),
            "a socket pair's peer is this process"
        );
    }

    /// Sends one byte every 50 ms until the server closes the connection;
    /// returns how long that took.
    fn trickle(path: &Path) -> Duration {
        let mut c = UnixStream::connect(path).unwrap();
        let started = Instant::now();
        // The server may count the client as active, and a shutdown may
        // cut it off, before this first line is written: a failed write
        // here is the cut too.
        if c.write_all(b"GET /status HTTP/1.1\r\n").is_err() {
            return started.elapsed();
        }
        loop {
            std::thread::sleep(Duration::from_millis(50));
            if c.write_all(b"X").is_err() || started.elapsed() > Duration::from_secs(30) {
                return started.elapsed();
            }
        }
    }

    /// Polls until the server counts a client as active.
    fn wait_accepted(server: &ApiServer) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.shared.active.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "trickler never accepted");
            std::thread::yield_now();
        }
    }

    #[test]
    fn trickling_client_is_cut_off_and_does_not_block_others() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            deadline: Duration::from_millis(600),
            max_clients: 4,
        };
        let (server, path) = serve(dir.path(), limits);
        let p = path.clone();
        let trickler = std::thread::spawn(move || trickle(&p));
        // Served while the trickler is connected (it is accepted first:
        // wait until the server counts it as active).
        wait_accepted(&server);
        let t = Instant::now();
        let out = request(&path, b"GET /status HTTP/1.1\r\n\r\n");
        let other = t.elapsed();
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        let cut = trickler.join().unwrap();
        // A per-read timeout would never cut it off (each byte renews it).
        assert!(cut < Duration::from_secs(10), "trickler held on {cut:?}");
        assert!(cut >= limits.deadline, "cut off early: {cut:?}");
        assert!(other < cut, "the other client waited for the trickler");
        assert_eq!(server.stats().timed_out.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn shutdown_does_not_wait_for_a_trickling_client() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            deadline: Duration::from_secs(60),
            max_clients: 2,
        };
        let (server, path) = serve(dir.path(), limits);
        let p = path.clone();
        let trickler = std::thread::spawn(move || trickle(&p));
        wait_accepted(&server);
        let t = Instant::now();
        server.shutdown();
        let took = t.elapsed();
        // The trickler is cut off by the shutdown, long before its
        // 60 s deadline.
        let cut = trickler.join().unwrap();
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        assert!(cut < Duration::from_secs(10), "trickler held on {cut:?}");
        assert!(!path.exists());
    }

    #[test]
    fn clients_over_the_cap_get_503() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            deadline: Duration::from_secs(60),
            max_clients: 1,
        };
        let (server, path) = serve(dir.path(), limits);
        let _hold = UnixStream::connect(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.shared.active.load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "first client never accepted");
            std::thread::yield_now();
        }
        // Asks nothing: the 503 comes without a request.
        let mut out = String::new();
        UnixStream::connect(&path)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
        assert_eq!(server.stats().busy.load(Ordering::Relaxed), 1);
        server.shutdown();
    }
}
