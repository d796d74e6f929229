//! `rafs unpack`: restores an image's tree, with all its metadata, into a
//! directory or a POSIX (PAX) tar stream.
//!
//! Both outputs walk the tree in name order (`crate::image::walk`) and read file data
//! through [`crate::chunk::fetch_chunk`], so every byte written was verified
//! against its chunk digest; a chunk that fails verification aborts the
//! unpack with an error naming the file and the chunk. Holes are never
//! materialised in memory: skipped (left sparse) in a directory, streamed as
//! zeros into a tar.
//!
//! [`dir`] restores into a directory, [`tar`] writes the archive. The tree
//! walk and path escaping are shared with `inspect`, `check` and the
//! filesystem core (`crate::image::walk`).

mod data;
mod dir;
mod tar;
#[cfg(test)]
mod tests;

use crate::backend::file::FileBackend;
use crate::chunk::FetchError;
use crate::image::{Image, ImageError};
use rafs_format::FormatError;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use thiserror::Error;

/// Arguments of `rafs unpack`.
#[derive(Debug)]
pub struct UnpackArgs {
    /// The bootstrap.
    pub bootstrap: PathBuf,
    /// Directory holding the blobs, named by their sha256 hex.
    pub blobs: PathBuf,
    /// Destination: a directory (created if missing, must be empty), or
    /// with --tar a file path or `-` for stdout.
    pub dest: PathBuf,
    /// Write a PAX tar archive instead of restoring into a directory.
    pub tar: bool,
}

/// Why an unpack failed.
#[derive(Debug, Error)]
pub enum UnpackError {
    /// The image could not be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The bootstrap is inconsistent (cannot happen after validation).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A filesystem operation on the destination failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// Path on disk.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The destination directory exists and is not empty.
    #[error("{}: destination exists and is not empty", .0.display())]
    NotEmpty(PathBuf),
    /// The destination exists and is not a directory.
    #[error("{}: destination is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A data chunk could not be read or failed verification.
    #[error("{path}: chunk {index} (file offset {offset}): {source}")]
    Chunk {
        /// Image path of the file (escaped, see `crate::image::walk::escape`).
        path: String,
        /// Index of the chunk within the file.
        index: usize,
        /// Offset of the chunk within the file.
        offset: u64,
        /// What went wrong.
        source: FetchError,
    },
    /// Writing the tar stream failed.
    #[error("writing tar entry {path}: {source}")]
    Tar {
        /// Image path of the entry being written (escaped).
        path: String,
        /// Underlying error.
        source: io::Error,
    },
}

impl UnpackError {
    /// Recovers an `UnpackError` smuggled through an `io::Error` (by
    /// [`data::FileReader`]), or wraps a genuine I/O error.
    fn from_io(e: io::Error, wrap: impl FnOnce(io::Error) -> UnpackError) -> UnpackError {
        match e.downcast::<UnpackError>() {
            Ok(inner) => inner,
            Err(e) => wrap(e),
        }
    }
}

/// What an unpack wrote, for the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Entries written (hardlinks count once per name).
    pub entries: u64,
    /// Data bytes written (holes excluded).
    pub data_bytes: u64,
    /// Entries that could not be represented and were skipped (sockets in
    /// tar).
    pub skipped: u64,
}

/// Runs `rafs unpack`.
pub fn run(args: &UnpackArgs) -> anyhow::Result<ExitCode> {
    let image = Image::open(&args.bootstrap).map_err(UnpackError::from)?;
    let b = image.bootstrap().map_err(UnpackError::from)?;
    let backend = FileBackend::new(&args.blobs);
    let stats = if args.tar {
        tar::unpack_tar(&b, &backend, &args.dest)?
    } else {
        dir::unpack_dir(&b, &backend, &args.dest)?
    };
    eprintln!(
        "unpacked {} entries, {} data bytes{}",
        stats.entries,
        stats.data_bytes,
        if stats.skipped > 0 {
            format!(", {} skipped", stats.skipped)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
