//! rafs: a lazy-loading image filesystem.
//!
//! The library behind the `rafs` binary, split by concern:
//! - [`builder`]: a directory or tar stream to a bootstrap plus blobs;
//! - [`image`]: opening and validating a bootstrap file;
//! - [`backend`]: where blobs live (one trait, one file per backend);
//! - [`chunk`]: stored bytes back to verified data;
//! - [`fs`]: the filesystem core a mount serves (no FUSE in it);
//! - [`inspect`], [`check`], [`unpack`]: the verification and restore tools;
//! - [`cli`]: argument parsing and dispatch.
//!
//! The on-disk format itself is the `rafs-format` crate.

pub mod backend;
pub mod builder;
pub mod check;
pub mod chunk;
pub mod cli;
pub mod fs;
pub mod image;
pub mod inspect;
pub mod unpack;
pub mod util;
