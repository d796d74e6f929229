//! rafs: a lazy-loading image filesystem.
//!
//! The library behind the `rafs` binary, in two layers (checked by
//! `tests/layering.rs`). The engine imports nothing above it, nor clap or
//! fuser, so every command (and a blob manager) can use it:
//! - [`image`]: opening and validating a bootstrap file, its tree walk and
//!   the prefetch list format;
//! - [`backend`]: where blobs live (one trait, one file per backend);
//! - [`cache`]: the on-disk blob cache (sparse data file, range bitmap);
//! - [`chunk`]: stored bytes back to verified data;
//! - [`fetch`]: the read path over backend and cache (single flight,
//!   retries, deadlines, the background lane); [`util`]: small helpers;
//! - [`blobmgr`]: the blob manager's wire protocol (`docs/PROTOCOL.md`)
//!   and its client; [`manager`]: the blob manager daemon's engine and
//!   connection layer.
//!
//! The front ends sit on the engine, with no import cycle between modules;
//! the two cores, [`builder`] and [`fs`], use the engine only:
//! - [`builder`]: a directory or tar stream to a bootstrap plus blobs;
//! - [`fs`]: the filesystem core a mount serves (no FUSE in it);
//! - [`fuse`], [`mount`], [`api`]: `rafs mount`: the FUSE adapter over [`fs`],
//!   the daemon's lifecycle, and its HTTP API on a Unix socket;
//! - [`prefetch`], [`stats`]: `rafs prefetch` and `rafs stats`;
//! - [`inspect`], [`check`], [`unpack`]: the verification and restore tools;
//! - [`cli`]: argument parsing and dispatch.
//!
//! The on-disk format itself is the `rafs-format` crate.
//!
//! The module docs are the design notes of the internals, read with
//! `cargo doc --document-private-items` (which `.ci/run` builds with
//! warnings as errors): they link private items on purpose.

#![allow(rustdoc::private_intra_doc_links)]

pub mod api;
pub mod backend;
pub mod blobmgr;
pub mod builder;
pub mod cache;
pub mod check;
pub mod chunk;
pub mod cli;
pub mod fetch;
pub mod fs;
pub mod fuse;
pub mod image;
pub mod inspect;
pub mod manager;
pub mod mount;
pub mod oci;
pub mod prefetch;
pub mod stats;
#[cfg(test)]
pub(crate) mod testimage;
pub mod unpack;
pub mod util;
