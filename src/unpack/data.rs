//! File contents out of an image: every data chunk fetched through
//! [`fetch_chunk`] (so decompressed and verified against its digest), holes
//! produced without allocating them.
//!
//! Two consumers: [`write_sparse`] writes a file's data chunks at their
//! offsets and leaves holes unallocated, and [`FileReader`] streams the
//! contents, holes as zeros, for a tar entry. Neither holds more than one
//! chunk in memory.

use super::UnpackError;
use crate::backend::Backend;
use crate::chunk::fetch_chunk;
use crate::image::walk::escape;
use rafs_format::layout::ChunkInfo;
use rafs_format::Bootstrap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Fetches data chunk `index` of the file at image path `path`.
fn fetch(
    backend: &dyn Backend,
    b: &Bootstrap<'_>,
    path: &[u8],
    index: usize,
    c: &ChunkInfo,
) -> Result<Vec<u8>, UnpackError> {
    fetch_chunk(backend, b, c).map_err(|source| UnpackError::Chunk {
        path: escape(path),
        index,
        offset: c.file_offset.get(),
        source,
    })
}

/// Writes the contents of regular file `ino` into `file` (freshly created,
/// empty), at `dest` on disk: data chunks at their offsets, holes skipped,
/// then the length set so trailing holes exist too. Returns the number of
/// data bytes written.
pub(super) fn write_sparse(
    backend: &dyn Backend,
    b: &Bootstrap<'_>,
    ino: u32,
    path: &[u8],
    file: &File,
    dest: &Path,
) -> Result<u64, UnpackError> {
    let io = |source| UnpackError::Io {
        path: dest.to_owned(),
        source,
    };
    let mut written = 0u64;
    for (i, c) in b.file_chunks(ino)?.iter().enumerate() {
        if c.is_hole() {
            continue;
        }
        let data = fetch(backend, b, path, i, c)?;
        file.write_all_at(&data, c.file_offset.get()).map_err(io)?;
        written += data.len() as u64;
    }
    file.set_len(b.inode(ino)?.size.get()).map_err(io)?;
    Ok(written)
}

/// The contents of a regular file as a byte stream, one chunk at a time.
///
/// Errors are `io::Error`s wrapping an [`UnpackError`] (tar's API wants a
/// `Read`); [`UnpackError::from_io`] unwraps them again.
pub(super) struct FileReader<'a, 'b> {
    backend: &'a dyn Backend,
    b: &'a Bootstrap<'b>,
    path: &'a [u8],
    chunks: &'b [ChunkInfo],
    next: usize,
    data: Vec<u8>,
    pos: usize,
    zeros: u64,
}

impl<'a, 'b> FileReader<'a, 'b> {
    /// A reader over regular file `ino`, which is at image path `path`.
    pub fn new(
        backend: &'a dyn Backend,
        b: &'a Bootstrap<'b>,
        ino: u32,
        path: &'a [u8],
    ) -> Result<Self, UnpackError> {
        Ok(FileReader {
            backend,
            b,
            path,
            chunks: b.file_chunks(ino)?,
            next: 0,
            data: Vec::new(),
            pos: 0,
            zeros: 0,
        })
    }
}

impl Read for FileReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.data.len() {
                let n = buf.len().min(self.data.len() - self.pos);
                buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.zeros > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            let Some(c) = self.chunks.get(self.next) else {
                return Ok(0);
            };
            let index = self.next;
            self.next += 1;
            self.pos = 0;
            if c.is_hole() {
                self.data.clear();
                self.zeros = u64::from(c.uncompressed_size.get());
            } else {
                self.data =
                    fetch(self.backend, self.b, self.path, index, c).map_err(io::Error::other)?;
            }
        }
    }
}
