//! One client connection: the handshake, the request loop, the handle
//! table, and the release of every handle when the connection ends.
//!
//! Replies go out on the connection thread, except FetchDone, which the
//! service's `done` callback sends from whatever thread settles the
//! Fetch (the socket is safe to share; it holds only a weak reference, so
//! a late callback on a dropped connection sends nothing). That thread is
//! the engine's: the callback never blocks, and a reply that finds the
//! client's queue full is sent by the spill thread instead. Every send is
//! bounded by the send timeout: a client that does not read its replies
//! is shut down and counted.

use super::{ServerMetrics, Shared};
use crate::blobmgr::protocol::{ErrorCode, Kind, Message, Packet, MAX_VERSION, MIN_VERSION};
use crate::blobmgr::transport::{Conn, TransportError};
use crate::manager::service::{BlobService, FetchDone, OpenRequest};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Compat capabilities this server has (none defined in version 1).
const SERVER_COMPAT: u64 = 0;
/// Incompat capabilities this server needs (none defined in version 1).
const SERVER_INCOMPAT: u64 = 0;

/// Why the request loop ends.
enum End {
    /// The peer closed, or the connection was shut down.
    Closed,
    /// The peer broke the protocol (counted).
    Protocol(String),
    /// A reply could not be sent in time (counted where it happened).
    Dropped,
}

/// Sends `p` on `conn`; a timeout (the client does not read) shuts the
/// connection down and is counted.
fn send_on(
    conn: &Conn,
    metrics: &ServerMetrics,
    p: &Packet,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), End> {
    match conn.send(p, fds) {
        Ok(()) => Ok(()),
        Err(e) if e.is_timeout() => {
            metrics.slow_clients.inc();
            tracing::warn!("blob manager: client does not read its replies; dropped");
            conn.shutdown();
            Err(End::Dropped)
        }
        Err(TransportError::Closed) => Err(End::Closed),
        Err(e) => {
            tracing::debug!("blob manager: send: {e}");
            conn.shutdown();
            Err(End::Closed)
        }
    }
}

fn error(request_id: u64, code: ErrorCode, message: impl Into<String>) -> Packet {
    let mut message: String = message.into();
    if message.len() > crate::blobmgr::protocol::MAX_ERROR_MESSAGE {
        let mut cut = crate::blobmgr::protocol::MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Packet {
        request_id,
        message: Message::Error { code, message },
    }
}

/// One open blob on a connection.
struct Entry<B> {
    blob: Arc<B>,
    req: OpenRequest,
    data: OwnedFd,
    map: OwnedFd,
    generation: u64,
}

/// A connection's state on its thread.
struct Session<'a, S: BlobService> {
    shared: &'a Shared,
    service: &'a S,
    conn: Arc<Conn>,
    handles: HashMap<u32, Entry<S::Blob>>,
    by_id: HashMap<[u8; 32], u32>,
    next_handle: u32,
    outstanding: Arc<AtomicUsize>,
}

/// Serves `conn` until it ends; then releases every handle.
pub(super) fn serve<S: BlobService>(shared: &Shared, service: &S, conn: Arc<Conn>) {
    let mut s = Session {
        shared,
        service,
        conn,
        handles: HashMap::new(),
        by_id: HashMap::new(),
        next_handle: 1,
        outstanding: Arc::new(AtomicUsize::new(0)),
    };
    let end = match s.handshake() {
        Ok(()) => s.requests(),
        Err(e) => e,
    };
    if let End::Protocol(why) = end {
        shared.metrics.protocol_errors.inc();
        tracing::warn!("blob manager: protocol error, connection dropped: {why}");
    }
    s.conn.shutdown();
    for (_, e) in s.handles.drain() {
        service.close(e.blob);
    }
}

impl<S: BlobService> Session<'_, S> {
    fn send(&self, p: &Packet) -> Result<(), End> {
        send_on(&self.conn, &self.shared.metrics, p, &[])
    }

    fn recv(&self) -> Result<Packet, End> {
        match self.conn.recv() {
            // Descriptors are refused by the transport for every client
            // kind (none carries any).
            Ok((p, _fds)) => {
                if p.message.kind().sender() != crate::blobmgr::protocol::Side::Client {
                    return Err(End::Protocol(format!(
                        "{:?} sent by a client",
                        p.message.kind()
                    )));
                }
                Ok(p)
            }
            Err(TransportError::Closed) => Err(End::Closed),
            Err(e) if e.is_timeout() => Err(End::Protocol("no Hello in time".into())),
            Err(e) => Err(End::Protocol(e.to_string())),
        }
    }

    fn set_timeouts(&self, recv: Option<Duration>) -> Result<(), End> {
        let cfg = &self.shared.cfg;
        self.conn
            .set_send_timeout(Some(cfg.send_timeout))
            .and_then(|()| self.conn.set_recv_timeout(recv))
            .map_err(|e| {
                tracing::debug!("blob manager: socket options: {e}");
                End::Closed
            })
    }

    /// Hello within the hello timeout, then HelloOk (or an Error and the
    /// end of the connection).
    fn handshake(&mut self) -> Result<(), End> {
        self.set_timeouts(Some(self.shared.cfg.hello_timeout))?;
        let p = self.recv()?;
        self.shared.metrics.request(op_name(p.message.kind()));
        let Message::Hello {
            min_version,
            max_version,
            incompat,
            ..
        } = p.message
        else {
            self.send(&error(p.request_id, ErrorCode::BadRequest, "Hello first"))?;
            return Err(End::Closed);
        };
        let (lo, hi) = (min_version.max(MIN_VERSION), max_version.min(MAX_VERSION));
        if lo > hi {
            let msg = format!(
                "no common version: client {min_version}..={max_version}, server {MIN_VERSION}..={MAX_VERSION}"
            );
            self.send(&error(p.request_id, ErrorCode::Version, msg))?;
            return Err(End::Closed);
        }
        let missing = needs_incompat(incompat);
        if missing != 0 {
            let msg = format!("incompat capabilities {missing:#x} needed");
            self.send(&error(p.request_id, ErrorCode::Capability, msg))?;
            return Err(End::Closed);
        }
        self.send(&Packet {
            request_id: p.request_id,
            message: Message::HelloOk {
                version: hi,
                compat: SERVER_COMPAT,
                incompat: SERVER_INCOMPAT & incompat,
                instance: super::instance(),
            },
        })?;
        self.set_timeouts(None)
    }

    /// Requests until the connection ends.
    fn requests(&mut self) -> End {
        loop {
            let p = match self.recv() {
                Ok(p) => p,
                Err(e) => return e,
            };
            self.shared.metrics.request(op_name(p.message.kind()));
            if let Err(e) = self.request(p) {
                return e;
            }
        }
    }

    fn request(&mut self, p: Packet) -> Result<(), End> {
        let id = p.request_id;
        match p.message {
            Message::Hello { .. } => {
                self.send(&error(id, ErrorCode::BadRequest, "second Hello"))?;
                Err(End::Closed)
            }
            Message::OpenBlob {
                blob_id,
                blob_size,
                layout,
                granularity,
            } => self.open(
                id,
                OpenRequest {
                    blob_id,
                    blob_size,
                    layout,
                    granularity,
                },
            ),
            Message::Fetch {
                handle,
                lane,
                deadline_ms,
                frames,
            } => {
                let deadline = Instant::now() + Duration::from_millis(deadline_ms.into());
                self.fetch(id, handle, lane, frames, deadline)
            }
            Message::Used { handle, ranges } => {
                match self.handles.get(&handle) {
                    Some(e) => self.service.used(&e.blob, &ranges),
                    None => {
                        self.shared.metrics.unknown_handles.inc();
                    }
                }
                Ok(())
            }
            Message::CloseBlob { handle } => {
                match self.handles.remove(&handle) {
                    Some(e) => {
                        self.by_id.remove(&e.req.blob_id);
                        self.service.close(e.blob);
                    }
                    None => {
                        self.shared.metrics.unknown_handles.inc();
                    }
                }
                Ok(())
            }
            Message::Ping => self.send(&Packet {
                request_id: id,
                message: Message::Pong,
            }),
            // Server kinds were refused in `recv`.
            other => Err(End::Protocol(format!(
                "{:?} sent by a client",
                other.kind()
            ))),
        }
    }

    fn open(&mut self, id: u64, req: OpenRequest) -> Result<(), End> {
        if let Some(&h) = self.by_id.get(&req.blob_id) {
            let e = &self.handles[&h];
            if e.req == req {
                return self.send_opened(id, h);
            }
            // Another layout, size or granularity on the same connection:
            // the service decides (it refuses a conflict).
        }
        if self.handles.len() >= self.shared.cfg.max_handles_per_conn {
            let msg = "too many blobs open on this connection";
            return self.send(&error(id, ErrorCode::Busy, msg));
        }
        let opened = match self.service.open(&req) {
            Ok(o) => o,
            Err(r) => return self.send(&error(id, r.code, r.message)),
        };
        if self.by_id.contains_key(&req.blob_id) {
            // The service accepted a second shape of the same blob: serve
            // it, but do not hold two references under one id.
            let r = self.send_fds(id, 0, opened.generation, &opened.data, &opened.map);
            self.service.close(opened.blob);
            return r;
        }
        let h = self.next_free_handle();
        self.by_id.insert(req.blob_id, h);
        self.handles.insert(
            h,
            Entry {
                blob: opened.blob,
                req,
                data: opened.data,
                map: opened.map,
                generation: opened.generation,
            },
        );
        self.send_opened(id, h)
    }

    fn next_free_handle(&mut self) -> u32 {
        while self.next_handle == 0 || self.handles.contains_key(&self.next_handle) {
            self.next_handle = self.next_handle.wrapping_add(1);
        }
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        h
    }

    fn send_opened(&self, id: u64, h: u32) -> Result<(), End> {
        let e = &self.handles[&h];
        self.send_fds(id, h, e.generation, &e.data, &e.map)
    }

    fn send_fds(
        &self,
        id: u64,
        handle: u32,
        generation: u64,
        data: &OwnedFd,
        map: &OwnedFd,
    ) -> Result<(), End> {
        let p = Packet {
            request_id: id,
            message: Message::BlobOpened { handle, generation },
        };
        send_on(
            &self.conn,
            &self.shared.metrics,
            &p,
            &[data.as_fd(), map.as_fd()],
        )
    }

    fn fetch(
        &mut self,
        id: u64,
        handle: u32,
        lane: crate::blobmgr::protocol::Lane,
        frames: Vec<crate::blobmgr::protocol::FetchFrame>,
        deadline: Instant,
    ) -> Result<(), End> {
        let Some(e) = self.handles.get(&handle) else {
            let msg = format!("handle {handle} is not open on this connection");
            return self.send(&error(id, ErrorCode::UnknownHandle, msg));
        };
        let max = self.shared.cfg.max_outstanding_per_conn;
        if self.outstanding.fetch_add(1, Ordering::AcqRel) >= max {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            return self.send(&error(id, ErrorCode::Busy, "too many Fetches in flight"));
        }
        let done = fetch_done(
            Arc::downgrade(&self.conn),
            self.shared.spill.clone(),
            self.outstanding.clone(),
            id,
            frames.len(),
        );
        self.service.fetch(&e.blob, lane, frames, deadline, done);
        Ok(())
    }
}

/// A reply an engine thread could not send at once: the connection it is
/// for (weak: a closed connection is not kept open for it) and the packet.
pub(super) type Spilled = (Weak<Conn>, Packet);

/// The callback that answers one Fetch, from any thread.
///
/// It runs on an engine thread (a fetch worker finishing a flight that
/// other clients wait on too, or the deadline timer), so it never blocks:
/// the reply is sent without waiting, and if the client's queue is full it
/// goes to the spill thread, which waits for room up to the send timeout
/// (then drops the client). A client that does not read its replies thus
/// delays no other client's answer.
fn fetch_done(
    conn: Weak<Conn>,
    spill: crossbeam_channel::Sender<Spilled>,
    outstanding: Arc<AtomicUsize>,
    request_id: u64,
    frames: usize,
) -> FetchDone {
    Box::new(move |status| {
        outstanding.fetch_sub(1, Ordering::AcqRel);
        // The connection is gone: its in-flight Fetches are not answered.
        let Some(c) = conn.upgrade() else { return };
        let p = if status.len() == frames {
            Packet {
                request_id,
                message: Message::FetchDone { status },
            }
        } else {
            tracing::error!(
                "blob manager: service answered {} statuses for {frames} frames",
                status.len()
            );
            error(request_id, ErrorCode::Internal, "wrong number of statuses")
        };
        match c.try_send(&p, &[]) {
            Ok(()) | Err(TransportError::Closed) => {}
            Err(e) if e.is_timeout() => {
                // The spill thread lives as long as a sender does.
                let _ = spill.send((conn, p));
            }
            Err(e) => {
                tracing::debug!("blob manager: send: {e}");
                c.shutdown();
            }
        }
    })
}

/// The spill thread's body: sends each spilled reply with the send
/// timeout (a client still not reading is dropped and counted); ends when
/// the server and every pending callback are gone.
pub(super) fn spill_loop(rx: crossbeam_channel::Receiver<Spilled>, metrics: &ServerMetrics) {
    for (conn, p) in rx {
        if let Some(c) = conn.upgrade() {
            let _ = send_on(&c, metrics, &p, &[]);
        }
    }
}

/// Incompat bits this server needs that the client did not offer.
fn needs_incompat(offered: u64) -> u64 {
    let needed = SERVER_INCOMPAT;
    needed & !offered
}

fn op_name(k: Kind) -> &'static str {
    match k {
        Kind::Hello => "hello",
        Kind::OpenBlob => "open",
        Kind::Fetch => "fetch",
        Kind::Used => "used",
        Kind::CloseBlob => "close",
        Kind::Ping => "ping",
        _ => "other",
    }
}
