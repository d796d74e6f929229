//! Opening a bootstrap file: mmap it and validate it once.
//!
//! mmap contract: the bootstrap file must not be truncated or modified while
//! it is mapped (images are immutable; rafs writes bootstraps by rename, never
//! in place). Modified contents are still decoded with bounds checks, so the
//! worst a violation can cause is a wrong answer or an error, except that
//! truncation can raise SIGBUS, as with any mmap.
//!
//! Also here, for every command that sees an image's tree: `walk` (the
//! tree in name order, paths rebuilt) and [`list`] (the prefetch list
//! format).

pub mod list;
pub(crate) mod walk;

use memmap2::Mmap;
use rafs_format::{Bootstrap, FormatError};
use std::fs::File;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors opening an image.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// Bootstrap path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The bootstrap is malformed.
    #[error("{path}: invalid bootstrap: {source}")]
    Format {
        /// Bootstrap path.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
}

enum Bytes {
    Map(Mmap),
    /// Empty files cannot be mapped; they are invalid anyway but must give a
    /// typed error, not an mmap failure.
    Empty,
}

/// A validated bootstrap, mapped from a file.
pub struct Image {
    path: PathBuf,
    bytes: Bytes,
}

impl Image {
    /// Maps and fully validates the bootstrap at `path`.
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = if len == 0 {
            Bytes::Empty
        } else {
            // SAFETY: see the module's mmap contract: the file is not
            // modified while mapped, and every access is bounds-checked.
            Bytes::Map(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        let image = Image {
            path: path.to_owned(),
            bytes,
        };
        Bootstrap::open(image.data()).map_err(|source| ImageError::Format {
            path: path.to_owned(),
            source,
        })?;
        Ok(image)
    }

    /// Unmaps the pages read so far (validation, set-up scans) from this
    /// process; they stay in the page cache. A daemon serving a few files
    /// of a large image then holds only the pages of the metadata it uses,
    /// not the whole bootstrap. Best effort: an error only leaves the pages
    /// resident.
    pub fn release_pages(&self) {
        if let Bytes::Map(m) = &self.bytes {
            // SAFETY: `Mmap::map` maps the file shared and read-only, so
            // MADV_DONTNEED discards no data: the next access faults the
            // same file bytes back in. No reference into the mapping is
            // alive across the call that could observe anything else.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// The raw bootstrap bytes.
    pub fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Map(m) => m,
            Bytes::Empty => &[],
        }
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Views of the (already validated) bootstrap. O(1).
    pub fn bootstrap(&self) -> Result<Bootstrap<'_>, FormatError> {
        Bootstrap::parse(self.data())
    }
}
