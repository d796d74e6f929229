//! The blob manager's client, used by `rafs mount --blob-manager` and
//! `rafs prefetch --blob-manager` (through the fetch engine).
//!
//! One connection at a time to the manager's socket, kept up by a
//! connection thread ([`conn`]): connect, Hello, then a reader that hands
//! each reply to the request with its id (a reply to no request, or of
//! the wrong kind, is a protocol error: the connection is dropped). When
//! the connection drops it reconnects with exponential back-off and jitter
//! (20 ms doubling to 1 s); the requests it carried are **re-sent** by
//! their callers on the next connection, after reopening the blobs they
//! name (a handle belongs to one connection), and no request waits past
//! its own deadline.
//!
//! Requests are synchronous for the caller ([`ManagerClient::open_blob`],
//! [`ManagerClient::fetch`]); any number of callers may wait at once, and
//! replies may come in any order. A [`ClientBlobId`] stays valid across
//! reconnects: the client maps it to the current connection's handle.
//!
//! While the manager is unreachable a request waits for it: with
//! [`Fallback::Fetch`] at most until `grace` has passed since it became
//! unreachable (then [`ClientError::Unavailable`]: the caller fetches for
//! itself), with [`Fallback::Wait`] until the request's deadline
//! ([`ClientError::Timeout`]). Cache hits need no message; they are
//! reported in batches ([`ManagerClient::used`], [`used`]).

mod conn;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod used;

use crate::backend::BlobId;
use crate::blobmgr::protocol::{
    ErrorCode, FetchFrame, FrameStatus, Kind, Lane, Message, Packet, UsedRange, MAX_BODY,
    MAX_DEADLINE_MS, MAX_FRAMES,
};
use crate::blobmgr::transport::Conn;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use thiserror::Error;

/// What a read does once the manager has been unreachable for `grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Fetch from the backend into memory.
    Fetch,
    /// Keep waiting for the manager; fail at the read's deadline.
    Wait,
}

/// How to reach the manager and what to do without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The manager's socket.
    pub socket: PathBuf,
    /// What to do when it stays unreachable.
    pub fallback: Fallback,
    /// How long it may be unreachable before [`Fallback`] applies.
    pub grace: Duration,
}

/// A blob opened through this client; valid across reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientBlobId(u32);

/// What [`ManagerClient::open_blob`] asks for (the OpenBlob body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRequest {
    /// The blob.
    pub blob: BlobId,
    /// Its uncompressed size.
    pub blob_size: u64,
    /// Its layout digest (`fetch::store::layout_of`).
    pub layout: [u8; 16],
    /// Bytes per range bit.
    pub granularity: u32,
}

/// A blob the manager opened: the client's id for it and the two
/// read-only descriptors (data file, range bitmap).
#[derive(Debug)]
pub struct OpenedBlob {
    /// Valid across reconnects.
    pub id: ClientBlobId,
    /// `<hex>.data`, `O_RDONLY`.
    pub data: OwnedFd,
    /// `<hex>.map`, `O_RDONLY`.
    pub map: OwnedFd,
    /// The map's generation when they were sent.
    pub generation: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// The manager answered Error.
    #[error("blob manager: {code:?}: {message}")]
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its detail.
        message: String,
    },
    /// The manager is unreachable past the grace ([`Fallback::Fetch`]),
    /// or speaks no version or capability set this client does.
    #[error("blob manager unreachable: {0}")]
    Unavailable(String),
    /// The request's deadline passed first.
    #[error("blob manager request timed out")]
    Timeout,
    /// The blob id was not opened through this client.
    #[error("unknown client blob id {0:?}")]
    UnknownBlob(ClientBlobId),
    /// The reply made no sense for the request (a bug on either side).
    #[error("unexpected reply {0:?}")]
    Unexpected(Kind),
    /// The client is shutting down.
    #[error("blob manager client stopped")]
    Stopped,
}

/// Counters of the client (relaxed atomics).
#[derive(Debug, Default)]
pub struct ClientMetrics {
    sent: [AtomicU64; 12],
    /// Connections established after the first.
    pub reconnects: AtomicU64,
    /// Connections dropped for a protocol error of the manager.
    pub protocol_errors: AtomicU64,
    /// Requests re-sent on a new connection.
    pub resent: AtomicU64,
    /// Used ranges reported.
    pub used_ranges: AtomicU64,
}

impl ClientMetrics {
    /// Messages of `kind` sent.
    pub fn sent(&self, kind: Kind) -> u64 {
        self.sent[kind as usize].load(Ordering::Relaxed)
    }

    /// Messages sent, every kind.
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn count(&self, kind: Kind) {
        self.sent[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// A blob this client opened: what to reopen it with, and its handle on
/// the current connection.
struct Blob {
    req: OpenRequest,
    /// (connection epoch, handle).
    handle: Option<(u64, u32)>,
}

/// A request waiting for its reply.
struct Slot {
    kind: Kind,
    reply: Option<(Message, Vec<OwnedFd>)>,
    /// The connection it was sent on.
    epoch: u64,
    /// Its caller stopped waiting (deadline): a late reply is dropped
    /// quietly, not taken for a reply to no request.
    abandoned: bool,
}

struct State {
    /// The live connection and its epoch (increments per connection).
    conn: Option<(u64, Arc<Conn>)>,
    epoch: u64,
    /// Since when no connection is up.
    down_since: Option<Instant>,
    /// The manager process of the last connection.
    instance: Option<[u8; 16]>,
    /// Set for good after Error Version or Capability.
    gave_up: Option<String>,
    next_id: u64,
    slots: HashMap<u64, Slot>,
    blobs: Vec<Blob>,
}

pub(crate) struct Inner {
    cfg: ClientConfig,
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
    metrics: ClientMetrics,
    used: used::Buffer,
}

/// The client: see the module docs. Dropping it stops its threads.
pub struct ManagerClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ManagerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerClient")
            .field("socket", &self.inner.cfg.socket)
            .finish()
    }
}

/// Frames-and-members bytes of one Fetch body at most.
fn frame_bytes(f: &FetchFrame) -> usize {
    32 + 40 * f.members.len()
}

impl ManagerClient {
    /// Starts the client: its connection thread connects (and keeps
    /// reconnecting) in the background, so this does not fail when the
    /// manager is down. Fails only if a thread cannot be started.
    pub fn start(cfg: ClientConfig) -> std::io::Result<Arc<ManagerClient>> {
        let inner = Arc::new(Inner {
            cfg,
            state: Mutex::new(State {
                conn: None,
                epoch: 0,
                down_since: Some(Instant::now()),
                instance: None,
                gave_up: None,
                next_id: 1,
                slots: HashMap::new(),
                blobs: Vec::new(),
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            metrics: ClientMetrics::default(),
            used: used::Buffer::default(),
        });
        let c = inner.clone();
        std::thread::Builder::new()
            .name("rafs-bm-conn".into())
            .spawn(move || c.run())?;
        let c = inner.clone();
        std::thread::Builder::new()
            .name("rafs-bm-used".into())
            .spawn(move || c.flusher())?;
        Ok(Arc::new(ManagerClient { inner }))
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The counters.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.inner.metrics
    }

    /// Whether a connection is up now.
    pub fn available(&self) -> bool {
        self.inner.lock().conn.is_some()
    }

    /// Waits until a connection is up or `deadline`; whether one is.
    pub fn wait_available(&self, deadline: Instant) -> bool {
        let mut st = self.inner.lock();
        while st.conn.is_none() && st.gave_up.is_none() && Instant::now() < deadline {
            st = self.inner.wait_until(st, deadline);
        }
        st.conn.is_some()
    }

    /// Since when no connection is up (`None`: one is).
    pub fn unreachable_since(&self) -> Option<Instant> {
        self.inner.lock().down_since
    }

    /// The `instance` of the manager last connected to.
    pub fn instance(&self) -> Option<[u8; 16]> {
        self.inner.lock().instance
    }

    /// Opens (or creates) the blob's cache in the manager, waiting for it
    /// until `deadline` (see the module docs for an unreachable manager).
    pub fn open_blob(
        &self,
        req: OpenRequest,
        deadline: Instant,
    ) -> Result<OpenedBlob, ClientError> {
        let (handle, generation, fds, epoch) = self.inner.open_on_current(&req, deadline)?;
        let [data, map]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| ClientError::Unexpected(Kind::BlobOpened))?;
        let mut st = self.inner.lock();
        let id = ClientBlobId(st.blobs.len() as u32);
        st.blobs.push(Blob {
            req,
            handle: Some((epoch, handle)),
        });
        Ok(OpenedBlob {
            id,
            data,
            map,
            generation,
        })
    }

    /// Asks the manager to fill `frames` of `blob` in `lane`, waiting up
    /// to `deadline`; one status per frame, in order. More frames than one
    /// Fetch holds are sent as several.
    pub fn fetch(
        &self,
        blob: ClientBlobId,
        lane: Lane,
        frames: &[FetchFrame],
        deadline: Instant,
    ) -> Result<Vec<FrameStatus>, ClientError> {
        let mut out = Vec::with_capacity(frames.len());
        let mut rest = frames;
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 16;
            while n < rest.len() && n < MAX_FRAMES && bytes + frame_bytes(&rest[n]) <= MAX_BODY {
                bytes += frame_bytes(&rest[n]);
                n += 1;
            }
            let part = &rest[..n.max(1)];
            rest = &rest[part.len()..];
            let status = self.fetch_one(blob, lane, part, deadline)?;
            if status.len() != part.len() {
                return Err(ClientError::Unexpected(Kind::FetchDone));
            }
            out.extend(status);
        }
        Ok(out)
    }

    fn fetch_one(
        &self,
        blob: ClientBlobId,
        lane: Lane,
        frames: &[FetchFrame],
        deadline: Instant,
    ) -> Result<Vec<FrameStatus>, ClientError> {
        let build = |handle: u32| {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().clamp(1, u128::from(MAX_DEADLINE_MS)) as u32;
            Message::Fetch {
                handle,
                lane,
                deadline_ms: ms,
                frames: frames.to_vec(),
            }
        };
        match self.inner.call_blob(blob, deadline, build)? {
            (Message::FetchDone { status }, _) => Ok(status),
            (m, _) => Err(ClientError::Unexpected(m.kind())),
        }
    }

    /// Records that `ranges` of `blob` were served from the cache; sent
    /// in batches (one Used per blob about every second, or sooner at
    /// 4000 ranges), adjacent ranges merged.
    pub fn used(&self, blob: ClientBlobId, ranges: &[UsedRange]) {
        if self.inner.used.add(blob, ranges) {
            self.inner.cv.notify_all();
        }
    }

    /// Sends every buffered Used now (tests, shutdown).
    pub fn flush_used(&self) {
        self.inner.flush_used();
    }
}

impl Drop for ManagerClient {
    fn drop(&mut self) {
        self.inner.flush_used();
        self.inner.stop.store(true, Ordering::SeqCst);
        let st = self.inner.lock();
        if let Some((_, c)) = &st.conn {
            c.shutdown();
        }
        drop(st);
        self.inner.cv.notify_all();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Waits on the condvar at most until `until`.
    fn wait_until<'a>(&self, st: MutexGuard<'a, State>, until: Instant) -> MutexGuard<'a, State> {
        let left = until.saturating_duration_since(Instant::now());
        self.cv
            .wait_timeout(st, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// The live connection, waiting for one until `deadline`, or until the
    /// grace has passed with [`Fallback::Fetch`].
    fn connection<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Result<(MutexGuard<'a, State>, u64, Arc<Conn>), ClientError> {
        loop {
            if self.stopped() {
                return Err(ClientError::Stopped);
            }
            if let Some(why) = &st.gave_up {
                return Err(ClientError::Unavailable(why.clone()));
            }
            if let Some((epoch, conn)) = st.conn.clone() {
                return Ok((st, epoch, conn));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            let mut until = deadline;
            if self.cfg.fallback == Fallback::Fetch {
                let since = st.down_since.unwrap_or(now);
                let end = since + self.cfg.grace;
                if now >= end {
                    return Err(ClientError::Unavailable("past the grace".into()));
                }
                until = until.min(end);
            }
            st = self.wait_until(st, until);
        }
    }

    /// Sends `msg` on connection `epoch` and waits for its reply; `None`
    /// if the connection dropped first (re-send on the next one).
    fn exchange(
        &self,
        mut st: MutexGuard<'_, State>,
        epoch: u64,
        conn: &Conn,
        msg: Message,
        deadline: Instant,
    ) -> Result<Option<(Message, Vec<OwnedFd>)>, ClientError> {
        let id = st.next_id;
        st.next_id += 1;
        let kind = msg.kind();
        let slot = Slot {
            kind,
            reply: None,
            epoch,
            abandoned: false,
        };
        st.slots.insert(id, slot);
        drop(st);
        self.metrics.count(kind);
        let sent = conn.send(
            &Packet {
                request_id: id,
                message: msg,
            },
            &[],
        );
        let mut st = self.lock();
        if let Err(e) = sent {
            tracing::debug!("blob manager send: {e}");
            st.slots.remove(&id);
            self.drop_conn(&mut st, epoch);
            return Ok(None);
        }
        loop {
            if let Some(reply) = st.slots.get_mut(&id).and_then(|s| s.reply.take()) {
                st.slots.remove(&id);
                return Ok(Some(reply));
            }
            if st.conn.as_ref().map(|c| c.0) != Some(epoch) || self.stopped() {
                st.slots.remove(&id);
                return Ok(None);
            }
            if Instant::now() >= deadline {
                if let Some(s) = st.slots.get_mut(&id) {
                    s.abandoned = true;
                }
                return Err(ClientError::Timeout);
            }
            st = self.wait_until(st, deadline);
        }
    }

    /// One request with a reply, re-sent on every new connection until
    /// answered or `deadline`. `build` makes the message for a connection
    /// epoch (it may fail, e.g. a blob refused on this connection).
    /// Error replies come back as `Err(Server)`, except Busy (retried
    /// after a pause), ShuttingDown (retried on the next connection) and
    /// Version/Capability (the manager is given up).
    fn call(
        &self,
        deadline: Instant,
        mut build: impl FnMut(&Inner, u64, &Arc<Conn>) -> Result<Message, ClientError>,
    ) -> Result<(Message, Vec<OwnedFd>, u64), ClientError> {
        let mut busy = Duration::from_millis(10);
        let mut first = true;
        loop {
            let (st, epoch, conn) = self.connection(self.lock(), deadline)?;
            drop(st);
            let msg = build(self, epoch, &conn)?;
            if !first {
                self.metrics.resent.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            let st = self.lock();
            let Some((reply, fds)) = self.exchange(st, epoch, &conn, msg, deadline)? else {
                continue;
            };
            let Message::Error { code, message } = reply else {
                return Ok((reply, fds, epoch));
            };
            match code {
                ErrorCode::Busy => {
                    let until = (Instant::now() + jitter(busy)).min(deadline);
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    busy = (busy * 2).min(Duration::from_secs(1));
                }
                ErrorCode::ShuttingDown | ErrorCode::UnknownHandle => {
                    // Reconnect (and reopen): drop this connection.
                    let mut st = self.lock();
                    self.drop_conn(&mut st, epoch);
                }
                ErrorCode::Version | ErrorCode::Capability => {
                    let why = format!("{code:?}: {message}");
                    self.lock().gave_up = Some(why.clone());
                    return Err(ClientError::Unavailable(why));
                }
                _ => return Err(ClientError::Server { code, message }),
            }
        }
    }

    /// Opens `req` on the current connection: (handle, generation, fds,
    /// epoch).
    fn open_on_current(
        &self,
        req: &OpenRequest,
        deadline: Instant,
    ) -> Result<(u32, u64, Vec<OwnedFd>, u64), ClientError> {
        let msg = Message::OpenBlob {
            blob_id: req.blob.0,
            blob_size: req.blob_size,
            layout: req.layout,
            granularity: req.granularity,
        };
        match self.call(deadline, |_, _, _| Ok(msg.clone()))? {
            (Message::BlobOpened { handle, generation }, fds, epoch) => {
                Ok((handle, generation, fds, epoch))
            }
            (m, _, _) => Err(ClientError::Unexpected(m.kind())),
        }
    }

    /// The handle of `blob` on connection `epoch`, reopening it there if
    /// it has none yet (the descriptors of a reopen are closed: the first
    /// ones stay in use).
    fn handle_on(
        &self,
        blob: ClientBlobId,
        epoch: u64,
        deadline: Instant,
    ) -> Result<u32, ClientError> {
        let req = {
            let st = self.lock();
            let b = st
                .blobs
                .get(blob.0 as usize)
                .ok_or(ClientError::UnknownBlob(blob))?;
            match b.handle {
                Some((e, h)) if e == epoch => return Ok(h),
                _ => b.req,
            }
        };
        let (h, _, _fds, e) = self.open_on_current(&req, deadline)?;
        let mut st = self.lock();
        if let Some(b) = st.blobs.get_mut(blob.0 as usize) {
            b.handle = Some((e, h));
        }
        Ok(h)
    }

    /// [`Inner::call`] for a message naming `blob` by its handle.
    fn call_blob(
        &self,
        blob: ClientBlobId,
        deadline: Instant,
        build: impl Fn(u32) -> Message,
    ) -> Result<(Message, Vec<OwnedFd>), ClientError> {
        let (m, fds, _) = self.call(deadline, |inner, epoch, _| {
            Ok(build(inner.handle_on(blob, epoch, deadline)?))
        })?;
        Ok((m, fds))
    }

    /// Marks connection `epoch` down (if it is the live one) and wakes
    /// everyone: waiters re-send on the next connection.
    fn drop_conn(&self, st: &mut State, epoch: u64) {
        st.slots.retain(|_, s| !(s.abandoned && s.epoch == epoch));
        if let Some((e, c)) = &st.conn {
            if *e == epoch {
                c.shutdown();
                st.conn = None;
                st.down_since = Some(Instant::now());
            }
        }
        self.cv.notify_all();
    }
}

/// A random duration in `d/2 ..= d` (back-off jitter).
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let extra = crate::cache::io::random_u64() % (half.as_nanos() as u64).max(1);
    half + Duration::from_nanos(extra)
}

/// Exposes a client's [`ClientMetrics`] at scrape time:
/// `rafs_manager_messages_total{kind}` (messages sent, by kind: a cache hit
/// sends none), reconnects, protocol errors and re-sent requests.
#[derive(Debug)]
pub struct ClientCollector(pub Arc<ManagerClient>);

impl prometheus_client::collector::Collector for ClientCollector {
    fn encode(
        &self,
        mut e: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let m = self.0.metrics();
        let proto = ConstCounter::new(0u64);
        let mut family = e.encode_descriptor(
            "rafs_manager_messages",
            "Messages sent to the blob manager, by kind",
            None,
            proto.metric_type(),
        )?;
        for k in 1..=11u16 {
            let Ok(kind) = Kind::try_from(k) else {
                continue;
            };
            if kind.sender() != crate::blobmgr::protocol::Side::Client {
                continue;
            }
            let name = format!("{kind:?}").to_ascii_lowercase();
            let labels = [("kind", name.as_str())];
            ConstCounter::new(m.sent(kind)).encode(family.encode_family(&labels)?)?;
        }
        let counters = [
            (
                "rafs_manager_reconnects",
                "Connections to the blob manager re-established",
                &m.reconnects,
            ),
            (
                "rafs_manager_protocol_errors",
                "Connections to the blob manager dropped for a protocol error",
                &m.protocol_errors,
            ),
            (
                "rafs_manager_resent",
                "Requests re-sent to the blob manager after a reconnect",
                &m.resent,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v.load(Ordering::Relaxed));
            c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}
