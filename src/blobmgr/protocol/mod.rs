//! The blob-manager wire protocol: its constants, limits, error codes and
//! typed messages here, the codec (one packet to one typed [`Packet`] and
//! back) in [`codec`].
//!
//! `docs/PROTOCOL.md` ("Blob-manager protocol") is normative; this module
//! transcribes it, and `tests::header_offsets_match_protocol_doc` checks
//! the documented offsets against the constants here.
//!
//! A packet is a 24-byte little-endian header followed by a body whose
//! length the header states and which must equal the packet length minus
//! the header. [`decode`] treats every byte as untrusted: each length and
//! count is checked against what is left of the packet before it is used,
//! every enum goes through `TryFrom`, reserved fields must be zero, and the
//! whole body must be consumed. Decoding is linear in the packet length
//! and never panics. [`encode`] applies the same rules (it decodes what it
//! wrote), so a packet it returns is one every peer accepts.
//!
//! The codec knows nothing about sockets: the transport reads one
//! `SOCK_SEQPACKET` packet of at most [`MAX_PACKET`] bytes, decodes it, and
//! compares the file descriptors that came with it against
//! [`Message::fds_expected`].

mod codec;

pub use codec::{decode, encode};
use thiserror::Error;

/// Packet magic, at offset 0.
pub const MAGIC: [u8; 4] = *b"RFBM";
/// Lowest protocol version this code speaks.
pub const MIN_VERSION: u16 = 1;
/// Highest protocol version this code speaks.
pub const MAX_VERSION: u16 = 1;
/// Header length; the body starts here.
pub const HEADER_SIZE: usize = 24;
/// Largest packet (header plus body) either side sends or accepts.
pub const MAX_PACKET: usize = 64 << 10;
/// Largest body.
pub const MAX_BODY: usize = MAX_PACKET - HEADER_SIZE;

/// Header field offsets (see the header table in `docs/PROTOCOL.md`).
pub const OFF_MAGIC: usize = 0;
/// Offset of the `version` u16.
pub const OFF_VERSION: usize = 4;
/// Offset of the `kind` u16.
pub const OFF_KIND: usize = 6;
/// Offset of the `flags` u16.
pub const OFF_FLAGS: usize = 8;
/// Offset of the reserved u16.
pub const OFF_RESERVED: usize = 10;
/// Offset of the `body_len` u32.
pub const OFF_BODY_LEN: usize = 12;
/// Offset of the `request_id` u64.
pub const OFF_REQUEST_ID: usize = 16;

/// Frames in one Fetch (and statuses in one FetchDone).
pub const MAX_FRAMES: usize = 64;
/// Members of one frame.
pub const MAX_MEMBERS: usize = 1024;
/// Ranges in one Used.
pub const MAX_USED_RANGES: usize = 4000;
/// Bytes of an Error's message.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Largest stored or uncompressed frame length (as chunks in FORMAT.md).
pub const MAX_FRAME_LEN: u32 = 16 << 20;
/// Largest Fetch deadline, in milliseconds (10 minutes).
pub const MAX_DEADLINE_MS: u32 = 600_000;
/// Smallest and largest granularity (powers of two, as the cache map).
pub const MIN_GRANULARITY: u32 = 4 << 10;
/// See [`MIN_GRANULARITY`].
pub const MAX_GRANULARITY: u32 = 16 << 20;

/// Frame decode flag: the stored bytes are one zstd frame.
pub const FRAME_ZSTD: u16 = 1;
/// Frame decode flag: the frame holds several chunks (members).
pub const FRAME_BATCH: u16 = 4;
const FRAME_FLAGS: u16 = FRAME_ZSTD | FRAME_BATCH;

/// Fixed sizes of body parts.
const HELLO_SIZE: usize = 24;
const HELLO_OK_SIZE: usize = 40;
const ERROR_HEAD: usize = 8;
const OPEN_SIZE: usize = 64;
const OPENED_SIZE: usize = 16;
const FETCH_HEAD: usize = 16;
const FRAME_SIZE: usize = 32;
const MEMBER_SIZE: usize = 40;
const DONE_HEAD: usize = 8;
const USED_HEAD: usize = 8;
const USED_RANGE_SIZE: usize = 16;
const CLOSE_SIZE: usize = 8;

/// Why a packet was refused. Every one is a protocol error: the receiver
/// drops the connection (see "Errors and disconnects" in PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Shorter than the header.
    #[error("packet of {0} bytes is shorter than the {HEADER_SIZE}-byte header")]
    ShortHeader(usize),
    /// Longer than [`MAX_PACKET`].
    #[error("packet of {0} bytes is over the {MAX_PACKET}-byte limit")]
    Oversized(usize),
    /// Wrong magic.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// A version outside [`MIN_VERSION`]`..=`[`MAX_VERSION`].
    #[error("unsupported protocol version {0}")]
    Version(u16),
    /// A kind this version does not define.
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    /// Header flags set (none are defined).
    #[error("header flags {0:#x} set, none defined")]
    Flags(u16),
    /// A reserved field is not zero.
    #[error("{kind:?}: reserved field {field} is not zero")]
    Reserved {
        /// Message kind (or the header's kind).
        kind: Kind,
        /// Field name as in PROTOCOL.md.
        field: &'static str,
    },
    /// `body_len` disagrees with the packet.
    #[error("body_len {header} but the packet carries {actual} body bytes")]
    BodyLength {
        /// What the header says.
        header: u32,
        /// What came.
        actual: usize,
    },
    /// The body is shorter or longer than its counts imply.
    #[error("{kind:?}: body of {actual} bytes, its fields imply {expected}")]
    BodySize {
        /// Message kind.
        kind: Kind,
        /// Implied by the fixed part and the counts.
        expected: usize,
        /// Received.
        actual: usize,
    },
    /// A count over its limit (or zero where at least one is required).
    #[error("{kind:?}: {field} = {count}, allowed 1..={max}")]
    Count {
        /// Message kind.
        kind: Kind,
        /// Field name.
        field: &'static str,
        /// The count.
        count: usize,
        /// Its limit.
        max: usize,
    },
    /// A field outside its valid range.
    #[error("{kind:?}: {field} = {value} is out of range")]
    Value {
        /// Message kind.
        kind: Kind,
        /// Field name.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// An error code this version does not define.
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
    /// A frame status this version does not define.
    #[error("unknown frame status {0}")]
    UnknownStatus(u16),
    /// A lane this version does not define.
    #[error("unknown lane {0}")]
    UnknownLane(u8),
    /// An Error message that is not UTF-8.
    #[error("error message is not UTF-8")]
    Utf8,
}

/// Who sends a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The mount or `rafs prefetch`.
    Client,
    /// The blob manager.
    Server,
}

/// Message kinds (header offset 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// Client: versions and capabilities offered.
    Hello = 1,
    /// Server: version and capabilities chosen.
    HelloOk = 2,
    /// Server: a request failed.
    Error = 3,
    /// Client: open (or create) a blob's cache.
    OpenBlob = 4,
    /// Server: the blob's handle, with two fds.
    BlobOpened = 5,
    /// Client: fill frames into the cache.
    Fetch = 6,
    /// Server: per-frame outcome of a Fetch.
    FetchDone = 7,
    /// Client: ranges it read from the cache (no reply).
    Used = 8,
    /// Client: done with a handle (no reply).
    CloseBlob = 9,
    /// Client: liveness probe.
    Ping = 10,
    /// Server: answer to Ping.
    Pong = 11,
}

impl TryFrom<u16> for Kind {
    type Error = ProtocolError;
    fn try_from(v: u16) -> Result<Kind, ProtocolError> {
        Ok(match v {
            1 => Kind::Hello,
            2 => Kind::HelloOk,
            3 => Kind::Error,
            4 => Kind::OpenBlob,
            5 => Kind::BlobOpened,
            6 => Kind::Fetch,
            7 => Kind::FetchDone,
            8 => Kind::Used,
            9 => Kind::CloseBlob,
            10 => Kind::Ping,
            11 => Kind::Pong,
            _ => return Err(ProtocolError::UnknownKind(v)),
        })
    }
}

impl Kind {
    /// Which side sends this kind; a peer sending the other side's kinds
    /// commits a protocol error.
    pub fn sender(self) -> Side {
        match self {
            Kind::Hello
            | Kind::OpenBlob
            | Kind::Fetch
            | Kind::Used
            | Kind::CloseBlob
            | Kind::Ping => Side::Client,
            _ => Side::Server,
        }
    }

    /// Whether the server answers this kind (client kinds only).
    pub fn expects_reply(self) -> bool {
        matches!(
            self,
            Kind::Hello | Kind::OpenBlob | Kind::Fetch | Kind::Ping
        )
    }
}

/// Error codes of an Error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// No common version in Hello's range (the connection is then closed).
    Version = 1,
    /// Hello required incompat capabilities the server lacks (closed).
    Capability = 2,
    /// Valid packet, wrong in context (before Hello, a second Hello, ...).
    BadRequest = 3,
    /// The handle is not open on this connection.
    UnknownHandle = 4,
    /// The blob is cached with another layout digest.
    LayoutConflict = 5,
    /// The blob is larger than the cache may ever hold.
    TooLarge = 6,
    /// No room even after eviction.
    NoSpace = 7,
    /// Too many handles or requests in flight on this connection; retry.
    Busy = 8,
    /// The manager's cache I/O failed.
    Io = 9,
    /// The manager is stopping; reconnect.
    ShuttingDown = 10,
    /// Anything else on the manager's side.
    Internal = 11,
}

impl TryFrom<u16> for ErrorCode {
    type Error = ProtocolError;
    fn try_from(v: u16) -> Result<ErrorCode, ProtocolError> {
        use ErrorCode::*;
        let all = [
            Version,
            Capability,
            BadRequest,
            UnknownHandle,
            LayoutConflict,
            TooLarge,
            NoSpace,
            Busy,
            Io,
            ShuttingDown,
            Internal,
        ];
        all.into_iter()
            .find(|c| *c as u16 == v)
            .ok_or(ProtocolError::UnknownErrorCode(v))
    }
}

/// Which of the manager's lanes a Fetch runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Lane {
    /// A read is waiting: served first.
    OnDemand = 1,
    /// Background warming: never delays on-demand work.
    Prefetch = 2,
}

impl TryFrom<u8> for Lane {
    type Error = ProtocolError;
    fn try_from(v: u8) -> Result<Lane, ProtocolError> {
        match v {
            1 => Ok(Lane::OnDemand),
            2 => Ok(Lane::Prefetch),
            _ => Err(ProtocolError::UnknownLane(v)),
        }
    }
}

/// Outcome of one frame of a Fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameStatus {
    /// Verified, durable, and its ranges' bits set.
    Ready = 0,
    /// The backend failed (after the manager's retries).
    Backend = 1,
    /// Decoded bytes did not match a member digest: nothing was written.
    Corrupt = 2,
    /// The deadline passed first (the fill may still complete later).
    TimedOut = 3,
    /// No cache room: the client should fetch this frame itself.
    NoSpace = 4,
    /// The frame lies outside the blob or contradicts its layout.
    Invalid = 5,
}

impl TryFrom<u16> for FrameStatus {
    type Error = ProtocolError;
    fn try_from(v: u16) -> Result<FrameStatus, ProtocolError> {
        use FrameStatus::*;
        [Ready, Backend, Corrupt, TimedOut, NoSpace, Invalid]
            .into_iter()
            .find(|s| *s as u16 == v)
            .ok_or(ProtocolError::UnknownStatus(v))
    }
}

/// One chunk inside a frame's decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Offset of the chunk in the decoded frame.
    pub offset: u32,
    /// Its length, >= 1.
    pub size: u32,
    /// blake3 of its bytes.
    pub digest: [u8; 32],
}

/// One frame to fill: where its stored bytes are, where the decoded bytes
/// go, and what they must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFrame {
    /// Offset of the stored bytes in the blob.
    pub coff: u64,
    /// Stored length, 1..=16 MiB.
    pub clen: u32,
    /// Offset of the decoded bytes in the uncompressed address space.
    pub ustart: u64,
    /// Decoded length, 1..=16 MiB.
    pub ulen: u32,
    /// [`FRAME_ZSTD`] and/or [`FRAME_BATCH`].
    pub flags: u16,
    /// The chunks, each inside `0..ulen`; 1..=[`MAX_MEMBERS`].
    pub members: Vec<Member>,
}

/// A run of uncompressed bytes a client served from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedRange {
    /// Start in the uncompressed address space.
    pub start: u64,
    /// Length, >= 1.
    pub len: u64,
}

impl UsedRange {
    /// Sorts `v` and merges adjacent or overlapping ranges: the client
    /// before it sends a report, the manager before it walks one (a packet
    /// of overlapping ranges then costs one pass).
    pub fn merge(v: &mut Vec<UsedRange>) {
        v.sort_unstable_by_key(|r| r.start);
        let mut out: Vec<UsedRange> = Vec::with_capacity(v.len());
        for r in v.drain(..) {
            match out.last_mut() {
                Some(l) if r.start <= l.start.saturating_add(l.len) => {
                    let end = l
                        .start
                        .saturating_add(l.len)
                        .max(r.start.saturating_add(r.len));
                    l.len = end - l.start;
                }
                _ => out.push(r),
            }
        }
        *v = out;
    }
}

/// A decoded message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Kind::Hello`].
    Hello {
        /// Lowest version the client speaks (>= 1).
        min_version: u16,
        /// Highest (>= `min_version`).
        max_version: u16,
        /// Compat capabilities the client has.
        compat: u64,
        /// Incompat capabilities the client understands.
        incompat: u64,
    },
    /// See [`Kind::HelloOk`].
    HelloOk {
        /// The chosen version, inside the client's range.
        version: u16,
        /// Compat capabilities the server has.
        compat: u64,
        /// Incompat capabilities in use (a subset of the client's).
        incompat: u64,
        /// Random per server process; a change means "reopen everything".
        instance: [u8; 16],
    },
    /// See [`Kind::Error`].
    Error {
        /// What failed.
        code: ErrorCode,
        /// A short human-readable detail (<= 1024 bytes).
        message: String,
    },
    /// See [`Kind::OpenBlob`].
    OpenBlob {
        /// sha256 of the blob.
        blob_id: [u8; 32],
        /// Uncompressed size (length of the data file).
        blob_size: u64,
        /// Layout digest (`fetch::store::layout_of`).
        layout: [u8; 16],
        /// Bytes per range bit.
        granularity: u32,
    },
    /// See [`Kind::BlobOpened`]; carries 2 fds (data, map).
    BlobOpened {
        /// Names the blob in later requests on this connection.
        handle: u32,
        /// The map's generation when the fds were sent.
        generation: u64,
    },
    /// See [`Kind::Fetch`].
    Fetch {
        /// Handle from BlobOpened.
        handle: u32,
        /// Which lane.
        lane: Lane,
        /// Relative to receipt, 1..=[`MAX_DEADLINE_MS`].
        deadline_ms: u32,
        /// 1..=[`MAX_FRAMES`] frames.
        frames: Vec<FetchFrame>,
    },
    /// See [`Kind::FetchDone`]: one status per requested frame, in order.
    FetchDone {
        /// Per frame.
        status: Vec<FrameStatus>,
    },
    /// See [`Kind::Used`].
    Used {
        /// Handle from BlobOpened.
        handle: u32,
        /// 1..=[`MAX_USED_RANGES`] ranges.
        ranges: Vec<UsedRange>,
    },
    /// See [`Kind::CloseBlob`].
    CloseBlob {
        /// Handle from BlobOpened.
        handle: u32,
    },
    /// See [`Kind::Ping`].
    Ping,
    /// See [`Kind::Pong`].
    Pong,
}

impl Message {
    /// The kind this body is sent as.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello { .. } => Kind::Hello,
            Message::HelloOk { .. } => Kind::HelloOk,
            Message::Error { .. } => Kind::Error,
            Message::OpenBlob { .. } => Kind::OpenBlob,
            Message::BlobOpened { .. } => Kind::BlobOpened,
            Message::Fetch { .. } => Kind::Fetch,
            Message::FetchDone { .. } => Kind::FetchDone,
            Message::Used { .. } => Kind::Used,
            Message::CloseBlob { .. } => Kind::CloseBlob,
            Message::Ping => Kind::Ping,
            Message::Pong => Kind::Pong,
        }
    }

    /// File descriptors that must ride with this message (SCM_RIGHTS);
    /// any other number is a protocol error.
    pub fn fds_expected(&self) -> usize {
        self.kind().fds_expected()
    }
}

impl Kind {
    /// File descriptors that ride with this kind: 2 for BlobOpened (data
    /// file, then range bitmap), 0 for every other.
    pub fn fds_expected(self) -> usize {
        match self {
            Kind::BlobOpened => 2,
            _ => 0,
        }
    }
}

/// A message with its request id (echoed by the reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Chosen by the client, unique among its requests in flight.
    pub request_id: u64,
    /// The body.
    pub message: Message,
}

#[cfg(test)]
mod tests;
