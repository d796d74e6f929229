//! The manager's connection layer: everything between the listening
//! socket and the [`BlobService`] (`docs/PROTOCOL.md`, "Blob-manager
//! protocol").
//!
//! - **Accept.** One thread accepts and never blocks on a client: it checks
//!   the peer's `SO_PEERCRED` uid (root, the daemon's own, or one of
//!   [`ServerConfig::allow_uids`]; others are closed unanswered and
//!   counted) and the connection cap (over it: closed and counted), then
//!   hands the connection to a thread of its own (small stack). An
//!   `accept` failure (out of descriptors) is counted and backed off with a
//!   short `poll` on the wake-up socket, never a spin.
//! - **Connections** ([`conn`]): Hello first, within
//!   [`ServerConfig::hello_timeout`]; then requests until the peer closes
//!   or breaks the protocol. Each connection has its own handle table and
//!   a cap on handles and on Fetches in flight. Replies are sent with
//!   [`ServerConfig::send_timeout`]: a client that does not read them is
//!   shut down and counted. On disconnect every handle is closed in the
//!   service.
//! - **Shutdown** ([`Server::shutdown`]): stop accepting, join the accept
//!   thread, shut every connection down and wait (bounded) for their
//!   threads to release their handles.

mod conn;
mod metrics;
#[cfg(test)]
mod tests;

pub use metrics::{Op, ServerMetrics};

use super::service::BlobService;
use crate::blobmgr::transport::{self, Conn, TransportError};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Stack of a connection thread: it decodes into heap buffers and calls
/// the service, nothing deep.
const CONN_STACK: usize = 128 << 10;
/// How long the accept thread backs off after an `accept` failure.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long [`Server::shutdown`] waits for connection threads to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Limits and peers of the connection layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Uids allowed besides root and the daemon's own.
    pub allow_uids: Vec<u32>,
    /// Connections served at once; more are closed and counted.
    pub max_connections: usize,
    /// Blobs open at once on one connection (more: Error Busy).
    pub max_handles_per_conn: usize,
    /// Fetches in flight on one connection (more: Error Busy).
    pub max_outstanding_per_conn: usize,
    /// How long one reply may wait for room in the client's queue.
    pub send_timeout: Duration,
    /// How long a new connection may take to send Hello.
    pub hello_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            allow_uids: Vec::new(),
            max_connections: 1024,
            max_handles_per_conn: 1024,
            max_outstanding_per_conn: 256,
            send_timeout: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(5),
        }
    }
}

/// 16 random bytes drawn once per process: HelloOk's `instance`.
pub fn instance() -> [u8; 16] {
    static INSTANCE: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(|| {
        let mut b = [0u8; 16];
        // SAFETY: `b` is valid for writes of its length for the call.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No getrandom: the per-process hash keys and the time are
            // unpredictable enough to tell two server starts apart.
            let (x, y) = (
                crate::cache::io::random_u64(),
                crate::cache::io::random_u64(),
            );
            b[..8].copy_from_slice(&x.to_le_bytes());
            b[8..].copy_from_slice(&y.to_le_bytes());
        }
        b
    })
}

/// What the accept thread, the connection threads and [`Server`] share.
struct Shared {
    cfg: ServerConfig,
    metrics: Arc<ServerMetrics>,
    own_uid: u32,
    stop: AtomicBool,
    /// Open connections by id (to shut them down).
    live: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Signalled when a connection ends.
    ended: Condvar,
    next_id: AtomicU64,
    /// Replies an engine thread could not send at once (see
    /// [`conn::spill_loop`]).
    spill: crossbeam_channel::Sender<conn::Spilled>,
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // Entries are inserted and removed whole: a poisoned map is fine.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn peer_allowed(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own_uid || self.cfg.allow_uids.contains(&uid)
    }

    /// Checks the peer and the cap; registers the connection.
    fn admit(&self, conn: Conn) -> Option<(u64, Arc<Conn>)> {
        match conn.peer_uid() {
            Ok(uid) if self.peer_allowed(uid) => {}
            Ok(uid) => {
                self.metrics.denied_peers.inc();
                tracing::warn!(uid, "blob manager: peer refused (uid not allowed)");
                return None;
            }
            Err(e) => {
                self.metrics.denied_peers.inc();
                tracing::warn!("blob manager: peer refused (no credentials): {e}");
                return None;
            }
        }
        let mut live = self.live();
        if live.len() >= self.cfg.max_connections || self.stop.load(Ordering::Acquire) {
            self.metrics.refused_connections.inc();
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(conn);
        live.insert(id, conn.clone());
        self.metrics.clients.inc();
        self.metrics.connections.inc();
        Some((id, conn))
    }

    fn forget(&self, id: u64) {
        let mut live = self.live();
        if live.remove(&id).is_some() {
            self.metrics.clients.dec();
        }
        drop(live);
        self.ended.notify_all();
    }
}

/// The connection layer serving one listening socket (see the module
/// docs).
pub struct Server {
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `service` on `listener` (a listening `SOCK_SEQPACKET`
    /// socket) until [`Server::shutdown`].
    pub fn start<S: BlobService>(
        listener: OwnedFd,
        service: Arc<S>,
        cfg: ServerConfig,
    ) -> std::io::Result<Server> {
        Server::start_with_metrics(listener, service, cfg, Arc::default())
    }

    /// [`Server::start`] counting into `metrics` (registered by the
    /// caller).
    pub fn start_with_metrics<S: BlobService>(
        listener: OwnedFd,
        service: Arc<S>,
        cfg: ServerConfig,
        metrics: Arc<ServerMetrics>,
    ) -> std::io::Result<Server> {
        set_nonblocking(listener.as_fd())?;
        let (wake, wake_rx) = UnixStream::pair()?;
        let (spill, spilled) = crossbeam_channel::unbounded();
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("rafs-blobmgr-spill".into())
            .stack_size(CONN_STACK)
            .spawn(move || conn::spill_loop(spilled, &m))?;
        let shared = Arc::new(Shared {
            cfg,
            metrics,
            own_uid: nix::unistd::geteuid().as_raw(),
            stop: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            ended: Condvar::new(),
            next_id: AtomicU64::new(0),
            spill,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rafs-blobmgr-accept".into())
            .spawn(move || accept_loop(listener, wake_rx, s, service))?;
        Ok(Server {
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// The connection layer's metrics.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.shared.metrics
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.shared.live().len()
    }

    /// Stops accepting, shuts every connection down, and waits (at most a
    /// few seconds) for their threads to release their handles.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        // Wakes the poll; a failure means the thread is already gone.
        let _ = std::io::Write::write(&mut &self.wake, &[1]);
        let _ = thread.join();
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let mut live = self.shared.live();
        for c in live.values() {
            c.shutdown();
        }
        while !live.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("blob manager: {} connections still ending", live.len());
                break;
            }
            live = match self.shared.ended.wait_timeout(live, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// Waits until `listener` or `wake` is readable, at most `timeout`
/// (`None`: no bound); while backing off (`timeout` set) only the wake-up
/// socket is watched.
fn wait_readable(listener: BorrowedFd<'_>, wake: &UnixStream, timeout: Option<Duration>) {
    let fds = [listener, wake.as_fd()];
    let watched = if timeout.is_some() {
        &fds[1..]
    } else {
        &fds[..]
    };
    if let Err(e) = crate::util::poll_readable(watched, timeout) {
        tracing::debug!("blob manager accept: poll: {e}");
    }
}

fn accept_loop<S: BlobService>(
    listener: OwnedFd,
    wake: UnixStream,
    shared: Arc<Shared>,
    service: Arc<S>,
) {
    let mut backoff = None;
    while !shared.stop.load(Ordering::Acquire) {
        wait_readable(listener.as_fd(), &wake, backoff.take());
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match transport::accept(listener.as_fd()) {
            Ok(c) => {
                if let Some((id, conn)) = shared.admit(c) {
                    spawn_conn(&shared, &service, id, conn);
                }
            }
            Err(TransportError::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                shared.metrics.accept_errors.inc();
                tracing::warn!("blob manager: accept: {e}");
                backoff = Some(ACCEPT_BACKOFF);
            }
        }
    }
}

fn spawn_conn<S: BlobService>(shared: &Arc<Shared>, service: &Arc<S>, id: u64, conn: Arc<Conn>) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let s = shared.clone();
    let service = service.clone();
    let c = conn.clone();
    let spawned = std::thread::Builder::new()
        .name("rafs-blobmgr-conn".into())
        .stack_size(CONN_STACK)
        .spawn(move || {
            conn::serve(&s, &*service, c);
            s.forget(id);
        });
    if let Err(e) = spawned {
        tracing::warn!("blob manager: no thread for a connection: {e}");
        if let Some(s) = weak.upgrade() {
            s.metrics.accept_errors.inc();
            s.forget(id);
        }
        conn.shutdown();
    }
}
