//! Typed builder errors.
//!
//! Policy: every failure names what it is about, a source path, a tar entry,
//! or the option at fault, so `rafs create` can print one line a user can act
//! on. The CLI converts these into `anyhow` at its boundary only.

use std::path::PathBuf;
use thiserror::Error;

/// Why an image could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// Reading a source file or writing an output file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A tar entry (or hardlink target) leaves the root via `..`.
    #[error("tar entry '{path}' escapes the image root")]
    TarEscape {
        /// The entry's path as written in the archive.
        path: String,
    },
    /// The archive is not a valid tar stream (bad header, truncated data).
    #[error("corrupt archive at '{path}': {reason}")]
    CorruptArchive {
        /// The entry being read, or the archive itself.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A source entry cannot be represented in an image (bad name, symlink
    /// target or xattr).
    #[error("{path}: {reason}")]
    BadEntry {
        /// The entry at fault.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Invalid command-line options.
    #[error("bad options: {0}")]
    BadOptions(String),
    /// A prefetch list line names a path that is not in the image.
    #[error("prefetch list {}, line {line}: '{path}' is not in the image", list.display())]
    PrefetchMissing {
        /// The prefetch list file.
        list: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The path as written.
        path: String,
    },
    /// The prefetch list cannot be read.
    #[error("prefetch list: {0}")]
    PrefetchList(#[from] crate::image::list::ListError),
    /// The chunk dictionary cannot be used.
    #[error("chunk dictionary: {0}")]
    Dict(#[from] crate::image::ImageError),
    /// The encoder refused the tree.
    #[error("encoding the bootstrap: {0}")]
    Format(#[from] rafs_format::FormatError),
    /// A pipeline thread stopped unexpectedly (a bug, or a panic).
    #[error("internal error: {0}")]
    Internal(String),
}

impl BuildError {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`BuildError`].
pub type Result<T, E = BuildError> = std::result::Result<T, E>;
