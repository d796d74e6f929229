//! The client's connection thread: connect, Hello, then read replies
//! until the connection drops; then back off (20 ms doubling to 1 s, with
//! jitter) and reconnect, until the client is dropped.
//!
//! Replies go to the [`super::Slot`] of their request id; a reply to no
//! request, of a kind that does not answer the request, or of a kind the
//! server never sends is a protocol error: the connection is dropped (its
//! waiters re-send on the next one).

use super::{jitter, Inner};
use crate::blobmgr::protocol::{Kind, Message, Packet, Side, MAX_VERSION, MIN_VERSION};
use crate::blobmgr::transport::{Conn, TransportError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First and longest pause between two connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));
/// Bound on the handshake's send and receive, and on every later send.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection attempt failed.
enum Refused {
    /// Try again after a pause.
    Retry(String),
    /// Never again (no common version or capabilities).
    GiveUp(String),
}

impl From<TransportError> for Refused {
    fn from(e: TransportError) -> Refused {
        Refused::Retry(e.to_string())
    }
}

/// Whether `reply` answers a request of kind `req`.
fn answers(req: Kind, reply: Kind) -> bool {
    reply == Kind::Error
        || matches!(
            (req, reply),
            (Kind::OpenBlob, Kind::BlobOpened)
                | (Kind::Fetch, Kind::FetchDone)
                | (Kind::Ping, Kind::Pong)
        )
}

impl Inner {
    /// The connection thread's body.
    pub(super) fn run(self: Arc<Inner>) {
        let mut pause = BACKOFF.0;
        while !self.stopped() {
            match self.establish() {
                Ok((conn, epoch)) => {
                    pause = BACKOFF.0;
                    self.read_loop(&conn, epoch);
                }
                Err(Refused::GiveUp(why)) => {
                    tracing::warn!("blob manager refused this client for good: {why}");
                    self.lock().gave_up = Some(why);
                    self.cv.notify_all();
                    return;
                }
                Err(Refused::Retry(why)) => {
                    tracing::debug!("blob manager unreachable: {why}");
                }
            }
            let st = self.lock();
            if self.stopped() {
                return;
            }
            drop(self.wait_until(st, Instant::now() + jitter(pause)));
            pause = (pause * 2).min(BACKOFF.1);
        }
    }

    /// Connects and says Hello; on HelloOk, publishes the connection.
    fn establish(&self) -> Result<(Arc<Conn>, u64), Refused> {
        let conn = Conn::connect(&self.cfg.socket)?;
        conn.set_send_timeout(Some(IO_TIMEOUT))?;
        conn.set_recv_timeout(Some(IO_TIMEOUT))?;
        let hello = Message::Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            compat: 0,
            incompat: 0,
        };
        self.metrics.count(Kind::Hello);
        conn.send(
            &Packet {
                request_id: 0,
                message: hello,
            },
            &[],
        )?;
        let (reply, _) = conn.recv()?;
        let instance = match reply.message {
            Message::HelloOk {
                version,
                incompat,
                instance,
                ..
            } if (MIN_VERSION..=MAX_VERSION).contains(&version) && incompat == 0 => instance,
            Message::HelloOk { .. } => {
                return Err(Refused::GiveUp("HelloOk outside what was offered".into()))
            }
            Message::Error { code, message } => {
                use crate::blobmgr::protocol::ErrorCode::{Capability, Version};
                let why = format!("{code:?}: {message}");
                return Err(match code {
                    Version | Capability => Refused::GiveUp(why),
                    _ => Refused::Retry(why),
                });
            }
            m => return Err(Refused::Retry(format!("{:?} answered Hello", m.kind()))),
        };
        conn.set_recv_timeout(None)?;
        let conn = Arc::new(conn);
        let mut st = self.lock();
        if self.stopped() {
            return Err(Refused::Retry("stopped".into()));
        }
        st.epoch += 1;
        let epoch = st.epoch;
        if epoch > 1 {
            self.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if st.instance.is_some_and(|i| i != instance) {
            tracing::info!("blob manager restarted: reopening blobs");
        }
        st.instance = Some(instance);
        st.conn = Some((epoch, conn.clone()));
        st.down_since = None;
        drop(st);
        self.cv.notify_all();
        Ok((conn, epoch))
    }

    /// Hands replies to their requests until the connection drops.
    fn read_loop(&self, conn: &Conn, epoch: u64) {
        loop {
            let (p, fds) = match conn.recv() {
                Ok(x) => x,
                Err(e) => {
                    if matches!(e, TransportError::Protocol(_) | TransportError::Fds { .. }) {
                        self.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!("blob manager connection: {e}");
                    break;
                }
            };
            let kind = p.message.kind();
            let mut st = self.lock();
            let ok = match st.slots.get_mut(&p.request_id) {
                Some(s)
                    if s.reply.is_none()
                        && kind.sender() == Side::Server
                        && answers(s.kind, kind) =>
                {
                    match s.abandoned {
                        true => drop(st.slots.remove(&p.request_id)),
                        false => s.reply = Some((p.message, fds)),
                    }
                    true
                }
                _ => false,
            };
            if !ok {
                self.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    id = p.request_id,
                    ?kind,
                    "blob manager: reply to no request"
                );
                self.drop_conn(&mut st, epoch);
                return;
            }
            drop(st);
            self.cv.notify_all();
        }
        let mut st = self.lock();
        self.drop_conn(&mut st, epoch);
    }
}
