//! The blob manager daemon's library: the node-wide engine that owns a
//! cache directory and fetches for every client, and the connection layer
//! that serves it over the protocol of `docs/PROTOCOL.md`.
//!
//! - [`service`]: the seam between the connection layer and the engine;
//! - [`engine`]: the node-wide engine (fetch, cache, quota) behind it;
//! - [`daemon`]: the daemon's socket (bound or systemd's), lock, start and
//!   stop, and `/status`, for the `rafs blobmgr` front end;
//! - [`lockfile`]: who owns a cache directory (the manager, or standalone
//!   users), by `flock` on `DIR/.blobmgr.lock`;
//! - [`server`]: the connection layer (accept, peers, handshake, handle
//!   tables, replies) over a [`service::BlobService`].
//!
//! It builds on the engine modules (`blobmgr` for the wire, `fetch`,
//! `cache`, `backend`) and, like them, imports no front end, clap or fuser
//! (`tests/layering.rs`). The client side of the protocol lives in
//! [`crate::blobmgr`], below `fetch`, which uses it.

pub mod daemon;
pub mod engine;
pub mod lockfile;
pub mod server;
pub mod service;
