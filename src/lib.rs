//! rafs: a lazy-loading image filesystem.
//!
//! The library behind the `rafs` binary, split by concern:
//! - [`builder`]: a directory or tar stream to a bootstrap plus blobs;
//! - [`image`]: opening and validating a bootstrap file;
//! - [`backend`]: where blobs live (one trait, one file per backend);
//! - [`cache`]: the on-disk blob cache (sparse data file, range bitmap);
//! - [`chunk`]: stored bytes back to verified data;
//! - [`fs`]: the filesystem core a mount serves (no FUSE in it);
//! - [`fuse`], [`mount`], [`api`]: `rafs mount`: the FUSE adapter over [`fs`],
//!   the daemon's lifecycle, and its HTTP API on a Unix socket;
//! - [`inspect`], [`check`], [`unpack`]: the verification and restore tools;
//! - [`cli`]: argument parsing and dispatch.
//!
//! The on-disk format itself is the `rafs-format` crate.

pub mod api;
pub mod backend;
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
pub mod mount;
pub mod prefetch;
pub mod stats;
#[cfg(test)]
pub(crate) mod testimage;
pub mod unpack;
pub mod util;
