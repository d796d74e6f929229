//! The blob-manager transport: one `SOCK_SEQPACKET` Unix socket per
//! connection, one protocol packet per socket packet, file descriptors
//! riding along with `SCM_RIGHTS` (`docs/PROTOCOL.md`, "Transport").
//!
//! [`Conn::recv`] applies every transport rule of the protocol before a
//! caller sees a packet: a packet over [`MAX_PACKET`] bytes, a truncated
//! packet or control message, a packet that does not decode, or one that
//! came with another number of descriptors than its kind carries, is a
//! [`TransportError`] (a protocol error: drop the connection). Descriptors
//! that came with a refused packet are closed (they are [`OwnedFd`]s, and
//! are received `MSG_CMSG_CLOEXEC`).
//!
//! Both directions are safe to use from several threads at once: the
//! kernel keeps each packet whole, so one thread may block in `recv` while
//! others `send`.

use super::protocol::{self, Packet, ProtocolError, MAX_PACKET};
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Descriptors a packet may carry at most (BlobOpened carries 2); room
/// for one more is received so that an extra one is seen and refused.
const MAX_FDS: usize = 2;

/// Why a packet could not be sent or received.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The peer closed the connection (a zero-length read).
    #[error("connection closed by the peer")]
    Closed,
    /// A socket call failed (including a send or receive timeout:
    /// `EAGAIN`/`EWOULDBLOCK`).
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The packet broke the protocol (see [`ProtocolError`]).
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The packet, or its control message, did not fit the buffers.
    #[error("packet or its descriptors truncated (over {MAX_PACKET} bytes or {MAX_FDS} fds)")]
    Truncated,
    /// The packet came with the wrong number of descriptors for its kind.
    #[error("{kind:?} came with {got} descriptors, expected {expected}")]
    Fds {
        /// The packet's kind.
        kind: protocol::Kind,
        /// How many came.
        got: usize,
        /// How many the kind carries.
        expected: usize,
    },
}

impl TransportError {
    /// Whether this is a timeout of a send or receive (`SO_SNDTIMEO`,
    /// `SO_RCVTIMEO`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, TransportError::Io(e)
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// One connected `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    /// Connects to the manager's socket at `path`.
    pub fn connect(path: &Path) -> Result<Conn, TransportError> {
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(errno)?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(errno)?;
        Ok(Conn { fd })
    }

    /// A connection over an accepted (or otherwise connected) socket.
    pub fn from_fd(fd: OwnedFd) -> Conn {
        Conn { fd }
    }

    /// A connected pair (tests).
    pub fn pair() -> Result<(Conn, Conn), TransportError> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(errno)?;
        Ok((Conn { fd: a }, Conn { fd: b }))
    }

    /// Bounds every blocking `send` (`SO_SNDTIMEO`); `None`: no bound.
    pub fn set_send_timeout(&self, t: Option<Duration>) -> Result<(), TransportError> {
        self.set_timeout(libc::SO_SNDTIMEO, t)
    }

    /// Bounds every blocking `recv` (`SO_RCVTIMEO`); `None`: no bound.
    pub fn set_recv_timeout(&self, t: Option<Duration>) -> Result<(), TransportError> {
        self.set_timeout(libc::SO_RCVTIMEO, t)
    }

    fn set_timeout(&self, opt: libc::c_int, t: Option<Duration>) -> Result<(), TransportError> {
        let t = t.unwrap_or(Duration::ZERO);
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            // A zero timeval means "no timeout": keep a tiny bound tiny.
            tv_usec: match t.subsec_micros() {
                0 if t.as_secs() == 0 && t > Duration::ZERO => 1,
                us => us as libc::suseconds_t,
            },
        };
        // SAFETY: `tv` is a valid timeval for the call's duration and its
        // size is passed; the fd is open while `self` is borrowed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// The uid of the peer process (`SO_PEERCRED`: fixed when it
    /// connected, not anything it says).
    pub fn peer_uid(&self) -> Result<u32, TransportError> {
        let cred = socket::getsockopt(&self.fd, socket::sockopt::PeerCredentials).map_err(errno)?;
        Ok(cred.uid())
    }

    /// Encodes and sends `p` with `fds` attached. The number of `fds` must
    /// be what `p`'s kind carries.
    pub fn send(&self, p: &Packet, fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        self.send_flags(p, fds, MsgFlags::MSG_NOSIGNAL)
    }

    /// [`Conn::send`] that never blocks: a full send queue is an error at
    /// once ([`TransportError::is_timeout`] holds for it).
    pub fn try_send(&self, p: &Packet, fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        self.send_flags(p, fds, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT)
    }

    fn send_flags(
        &self,
        p: &Packet,
        fds: &[BorrowedFd<'_>],
        flags: MsgFlags,
    ) -> Result<(), TransportError> {
        let expected = p.message.fds_expected();
        if fds.len() != expected {
            return Err(TransportError::Fds {
                kind: p.message.kind(),
                got: fds.len(),
                expected,
            });
        }
        let bytes = protocol::encode(p)?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(&bytes)];
        loop {
            match socket::sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => return Err(TransportError::Truncated),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                    return Err(TransportError::Closed)
                }
                Err(e) => return Err(errno(e).into()),
            }
        }
    }

    /// Receives one packet and its descriptors, checked against every
    /// transport rule (see the module docs).
    pub fn recv(&self) -> Result<(Packet, Vec<OwnedFd>), TransportError> {
        let mut buf = vec![0u8; MAX_PACKET + 1];
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS + 1]);
        let (len, flags, fds) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for c in msg.cmsgs().map_err(errno)? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            for fd in raw {
                                // SAFETY: the kernel just installed `fd` in
                                // this process for us; nothing else owns it.
                                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                    break (msg.bytes, msg.flags, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECONNRESET) => return Err(TransportError::Closed),
                Err(e) => return Err(errno(e).into()),
            }
        };
        if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || len > MAX_PACKET {
            return Err(TransportError::Truncated);
        }
        if len == 0 {
            return Err(TransportError::Closed);
        }
        let packet = protocol::decode(&buf[..len])?;
        let expected = packet.message.fds_expected();
        if fds.len() != expected {
            return Err(TransportError::Fds {
                kind: packet.message.kind(),
                got: fds.len(),
                expected,
            });
        }
        Ok((packet, fds))
    }

    /// Shuts both directions down: a thread blocked in `recv` on this
    /// connection returns [`TransportError::Closed`].
    pub fn shutdown(&self) {
        let _ = socket::shutdown(self.fd.as_raw_fd(), socket::Shutdown::Both);
    }

    /// The raw socket (to `poll` it).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A new `SOCK_SEQPACKET` Unix socket, close-on-exec.
pub fn seqpacket() -> Result<OwnedFd, TransportError> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| errno(e).into())
}

/// A listening `SOCK_SEQPACKET` socket bound at `path` (which must not
/// exist), with the given backlog. The caller chooses where and with which
/// mode it appears (the manager binds it in a private directory and renames
/// it into place).
pub fn listen_at(path: &Path, backlog: i32) -> Result<OwnedFd, TransportError> {
    let fd = seqpacket()?;
    let addr = UnixAddr::new(path).map_err(errno)?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(errno)?;
    let backlog = socket::Backlog::new(backlog).unwrap_or(socket::Backlog::MAXCONN);
    socket::listen(&fd, backlog).map_err(errno)?;
    Ok(fd)
}

/// Whether `fd` is a listening `SOCK_SEQPACKET` Unix socket (what a
/// systemd `.socket` unit with `ListenSequentialPacket=` passes).
pub fn is_seqpacket_listener(fd: BorrowedFd<'_>) -> bool {
    let ty = socket::getsockopt(&fd, socket::sockopt::SockType);
    let listening = socket::getsockopt(&fd, socket::sockopt::AcceptConn);
    matches!(ty, Ok(SockType::SeqPacket)) && matches!(listening, Ok(true))
}

/// Accepts one connection on `listener` (close-on-exec, blocking).
pub fn accept(listener: BorrowedFd<'_>) -> Result<Conn, TransportError> {
    loop {
        match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: `accept4` returned a new descriptor nothing else owns.
            Ok(fd) => return Ok(Conn::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(errno(e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobmgr::protocol::{Kind, Message};
    use std::io::{Seek, Write};

    fn ping(id: u64) -> Packet {
        Packet {
            request_id: id,
            message: Message::Ping,
        }
    }

    #[test]
    fn packets_and_descriptors_cross_whole() {
        let (a, b) = Conn::pair().unwrap();
        a.send(&ping(7), &[]).unwrap();
        let (p, fds) = b.recv().unwrap();
        assert_eq!(p, ping(7));
        assert!(fds.is_empty());

        let mut f1 = tempfile_with(b"data");
        let f2 = tempfile_with(b"map");
        let opened = Packet {
            request_id: 9,
            message: Message::BlobOpened {
                handle: 3,
                generation: 5,
            },
        };
        b.send(&opened, &[f1.as_fd(), f2.as_fd()]).unwrap();
        let (p, fds) = a.recv().unwrap();
        assert_eq!(p, opened);
        assert_eq!(fds.len(), 2);
        let mut got = String::new();
        let mut r = std::fs::File::from(fds.into_iter().next().unwrap());
        r.rewind().unwrap();
        std::io::Read::read_to_string(&mut r, &mut got).unwrap();
        assert_eq!(got, "data");
        f1.flush().unwrap();
    }

    #[test]
    fn a_wrong_descriptor_count_is_refused_both_ways() {
        let (a, b) = Conn::pair().unwrap();
        let f = tempfile_with(b"x");
        // The sender refuses to attach fds to a kind that carries none.
        let e = a.send(&ping(1), &[f.as_fd()]).unwrap_err();
        assert!(matches!(
            e,
            TransportError::Fds {
                kind: Kind::Ping,
                got: 1,
                expected: 0
            }
        ));
        // A raw sender that does it anyway is refused by the receiver, and
        // the descriptor it sent is closed, not leaked.
        let bytes = protocol::encode(&ping(2)).unwrap();
        let raw = [f.as_raw_fd()];
        socket::sendmsg::<()>(
            a.fd.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let before = open_fds();
        let e = b.recv().unwrap_err();
        assert!(matches!(e, TransportError::Fds { got: 1, .. }), "{e}");
        assert_eq!(open_fds(), before, "the received descriptor was closed");
    }

    #[test]
    fn oversized_garbage_and_close_are_errors_not_panics() {
        let (a, b) = Conn::pair().unwrap();
        let big = vec![0u8; MAX_PACKET + 100];
        socket::send(a.fd.as_raw_fd(), &big, MsgFlags::empty()).unwrap();
        assert!(matches!(b.recv(), Err(TransportError::Truncated)));
        socket::send(a.fd.as_raw_fd(), b"RFBM garbage", MsgFlags::empty()).unwrap();
        assert!(matches!(b.recv(), Err(TransportError::Protocol(_))));
        drop(a);
        assert!(matches!(b.recv(), Err(TransportError::Closed)));
    }

    #[test]
    fn a_receive_timeout_is_reported_as_one() {
        let (_a, b) = Conn::pair().unwrap();
        b.set_recv_timeout(Some(Duration::from_millis(20))).unwrap();
        let e = b.recv().unwrap_err();
        assert!(e.is_timeout(), "{e}");
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("rafs-transport-{}", crate::cache::io::random_u64()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }
}
