//! The blob manager: one process per node that owns the cache directory,
//! fetches misses for every mount and `rafs prefetch`, and hands each
//! client read-only file descriptors of a blob's data file and range
//! bitmap so that cache hits need no message at all.
//!
//! - [`protocol`]: the codec of `docs/PROTOCOL.md` (framing, handshake,
//!   messages, error codes, which message carries file descriptors);
//! - [`transport`]: `SOCK_SEQPACKET` sockets carrying one packet each,
//!   with their descriptors, checked against the transport rules.
//!
//! This is the wire and the client side; the daemon (its engine and
//! connection layer) is [`crate::manager`], which builds on `fetch`, while
//! `fetch` uses the client here. It is part of the engine: it imports no
//! front end, clap or fuser (`tests/layering.rs`).

pub mod client;
pub mod protocol;
pub mod transport;
