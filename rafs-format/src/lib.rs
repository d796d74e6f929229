//! The rafs bootstrap format.
//!
//! A bootstrap is the metadata of one image: the tree (inodes, directory
//! entries, xattrs, symlink targets) and, for every byte of every regular
//! file, where it is stored (chunks inside content-addressed blobs). It is
//! designed to be mmapped and used in place: fixed-size tables indexed by
//! number, directory entries sorted for binary search, no pointers.
//!
//! This crate knows bytes, not files: [`encode()`] turns an [`ImageSpec`] into
//! bytes; [`Bootstrap`] validates bytes and hands out zero-copy views. It has
//! no I/O dependencies and is the target of the fuzzers. `docs/FORMAT.md` is
//! the normative specification; [`layout`] transcribes it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
pub mod layout;
mod name;
mod validate;

pub use decode::{compute_checksum, seal, Bootstrap};
pub use encode::{encode, ChunkSpec, Chunking, ImageSpec, Meta, NodeKind, NodeSpec};
pub use error::{FormatError, NameError, Table};
pub use name::{check_name, Name};
