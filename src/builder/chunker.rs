//! Splitting file data into chunks: fixed-size or FastCDC (v2020).
//!
//! The chunker reads one data segment of a file (a whole file, or one data
//! extent of a sparse file) from a reader and hands each chunk, as an owned
//! buffer, to a sink; it never holds more than one chunk (fixed) or one
//! `max`-sized window (FastCDC) of the segment.
//!
//! Fixed chunks are aligned to absolute file offsets (multiples of the chunk
//! size), so a data extent that starts mid-chunk after a hole still produces
//! the same chunks as a dense copy of the file would from the next boundary
//! on. FastCDC segments up to `max` bytes are read whole and cut with the
//! in-memory `FastCDC` iterator; longer ones stream through `StreamCDC`.
//! Both run the same v2020 cut function with the same gear table, so the
//! boundaries are identical (tested below); the split only avoids
//! `StreamCDC`'s `max`-sized buffer shuffle for the many small files of a
//! typical image.

use super::error::{BuildError, Result};
use fastcdc::v2020 as cdc;
use rafs_format::layout::{CHUNKING_FASTCDC, CHUNKING_FIXED, MAX_CHUNK_SIZE};
use rafs_format::Chunking;
use std::io::{self, Read};

/// How files are split into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkerConfig {
    /// Fixed-size chunks (the last chunk of a segment may be shorter).
    Fixed {
        /// Chunk size: a power of two, 4 KiB..=16 MiB.
        size: u32,
    },
    /// FastCDC content-defined chunks.
    Cdc {
        /// Minimum chunk size.
        min: u32,
        /// Target average chunk size.
        avg: u32,
        /// Maximum chunk size.
        max: u32,
    },
}

fn check_range(what: &str, v: u32, lo: u32, hi: u32) -> Result<()> {
    if v < lo || v > hi {
        return Err(BuildError::BadOptions(format!(
            "{what} {v} outside {lo}..={hi}"
        )));
    }
    Ok(())
}

impl ChunkerConfig {
    /// Checks the parameters against the format's and FastCDC's limits.
    pub fn validate(&self) -> Result<()> {
        match *self {
            ChunkerConfig::Fixed { size } => {
                if !size.is_power_of_two() || !(4096..=MAX_CHUNK_SIZE).contains(&size) {
                    return Err(BuildError::BadOptions(format!(
                        "--chunk-size {size}: must be a power of two between 4K and 16M"
                    )));
                }
            }
            ChunkerConfig::Cdc { min, avg, max } => {
                check_range("--cdc-min", min, cdc::MINIMUM_MIN, cdc::MINIMUM_MAX)?;
                check_range("--cdc-avg", avg, cdc::AVERAGE_MIN, cdc::AVERAGE_MAX)?;
                let hi = cdc::MAXIMUM_MAX.min(MAX_CHUNK_SIZE);
                check_range("--cdc-max", max, cdc::MAXIMUM_MIN, hi)?;
                if !(min < avg && avg < max) {
                    return Err(BuildError::BadOptions(format!(
                        "FastCDC sizes must satisfy min < avg < max (got {min}, {avg}, {max})"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The largest chunk this configuration produces.
    pub fn max_chunk(&self) -> u32 {
        match *self {
            ChunkerConfig::Fixed { size } => size,
            ChunkerConfig::Cdc { max, .. } => max,
        }
    }

    /// The superblock's record of the parameters.
    pub fn chunking(&self) -> Chunking {
        match *self {
            ChunkerConfig::Fixed { size } => Chunking {
                mode: CHUNKING_FIXED,
                min: size,
                avg: size,
                max: size,
            },
            ChunkerConfig::Cdc { min, avg, max } => Chunking {
                mode: CHUNKING_FASTCDC,
                min,
                avg,
                max,
            },
        }
    }

    /// Reads exactly `len` bytes of `reader` (file bytes `start..start+len`)
    /// and passes each chunk to `sink`, in order. A reader that ends early
    /// is an `UnexpectedEof` read error; `read_err` turns read errors into
    /// build errors (the caller knows the path), sink errors pass through.
    pub fn split<R: Read>(
        &self,
        reader: R,
        start: u64,
        len: u64,
        read_err: &dyn Fn(io::Error) -> BuildError,
        sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        match *self {
            ChunkerConfig::Fixed { size } => split_fixed(reader, size, start, len, read_err, sink),
            ChunkerConfig::Cdc { min, avg, max } => {
                split_cdc(reader, [min, avg, max], len, read_err, sink)
            }
        }
    }
}

fn short_read() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "data ended early")
}

/// Reads exactly `n` bytes into a fresh buffer (no zero-fill first).
fn read_exact_vec<R: Read>(reader: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    reader.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(short_read());
    }
    Ok(buf)
}

fn split_fixed<R: Read>(
    mut reader: R,
    size: u32,
    start: u64,
    len: u64,
    read_err: &dyn Fn(io::Error) -> BuildError,
    sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let size = u64::from(size);
    let end = start + len;
    let mut pos = start;
    while pos < end {
        let boundary = (pos / size + 1) * size;
        let n = (boundary.min(end) - pos) as usize;
        let buf = read_exact_vec(&mut reader, n).map_err(read_err)?;
        sink(buf)?;
        pos += n as u64;
    }
    Ok(())
}

fn split_cdc<R: Read>(
    mut reader: R,
    [min, avg, max]: [u32; 3],
    len: u64,
    read_err: &dyn Fn(io::Error) -> BuildError,
    sink: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    if len <= u64::from(max) {
        let buf = read_exact_vec(&mut reader, len as usize).map_err(read_err)?;
        if buf.len() <= min as usize {
            // FastCDC would return the whole buffer as one chunk.
            return if buf.is_empty() { Ok(()) } else { sink(buf) };
        }
        for c in cdc::FastCDC::new(&buf, min, avg, max) {
            sink(buf[c.offset..c.offset + c.length].to_vec())?;
        }
        return Ok(());
    }
    let mut total = 0u64;
    for c in cdc::StreamCDC::new(reader.take(len), min, avg, max) {
        let c = c.map_err(|e| read_err(e.into()))?;
        total += c.data.len() as u64;
        sink(c.data)?;
    }
    if total != len {
        return Err(read_err(short_read()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::util::noise as pseudo_random;

    fn chunks(cfg: ChunkerConfig, data: &[u8], start: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        cfg.split(
            data,
            start,
            data.len() as u64,
            &|e| BuildError::io("test", e),
            &mut |c| {
                out.push(c);
                Ok(())
            },
        )?;
        Ok(out)
    }

    #[test]
    fn fixed_exact_sizes_and_alignment() {
        let cfg = ChunkerConfig::Fixed { size: 4096 };
        let data = pseudo_random(10_000, 1);
        let sizes: Vec<usize> = chunks(cfg, &data, 0)
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [4096, 4096, 1808]);
        // A segment starting mid-chunk is cut at the next absolute boundary.
        let sizes: Vec<usize> = chunks(cfg, &data, 1000)
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [3096, 4096, 2808]);
        assert!(chunks(cfg, &[], 0).unwrap().is_empty());
        assert_eq!(chunks(cfg, &data, 0).unwrap().concat(), data);
    }

    #[test]
    fn cdc_respects_bounds_and_is_deterministic() {
        let cfg = ChunkerConfig::Cdc {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let data = pseudo_random(1 << 20, 7);
        let a = chunks(cfg, &data, 0).unwrap();
        let b = chunks(cfg, &data, 0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.concat(), data);
        let (last, body) = a.split_last().unwrap();
        assert!(body.iter().all(|c| (4096..=65536).contains(&c.len())));
        assert!(!last.is_empty() && last.len() <= 65536);
        assert!(
            a.len() > 20,
            "expected content-defined cuts, got {}",
            a.len()
        );
    }

    #[test]
    fn cdc_whole_buffer_and_stream_paths_agree() {
        // Segments up to `max` use FastCDC on a buffer, longer ones
        // StreamCDC; both must cut the same prefix at the same places.
        let (min, avg, max) = (1024, 4096, 16384);
        let cfg = ChunkerConfig::Cdc { min, avg, max };
        let data = pseudo_random(200_000, 3);
        let streamed = chunks(cfg, &data, 0).unwrap();
        let whole: Vec<Vec<u8>> = cdc::FastCDC::new(&data, min, avg, max)
            .map(|c| data[c.offset..c.offset + c.length].to_vec())
            .collect();
        assert_eq!(streamed, whole);
        let small = &data[..max as usize];
        let via_buffer = chunks(cfg, small, 0).unwrap();
        let via_stream: Vec<Vec<u8>> = cdc::StreamCDC::new(small, min, avg, max)
            .map(|c| c.unwrap().data)
            .collect();
        assert_eq!(via_buffer, via_stream);
    }

    #[test]
    fn short_reader_is_an_error() {
        for cfg in [
            ChunkerConfig::Fixed { size: 4096 },
            ChunkerConfig::Cdc {
                min: 1024,
                avg: 4096,
                max: 16384,
            },
        ] {
            for n in [100usize, 50_000] {
                let data = pseudo_random(n, 5);
                let r = cfg.split(
                    &data[..],
                    0,
                    n as u64 + 1,
                    &|e| BuildError::io("short", e),
                    &mut |_| Ok(()),
                );
                assert!(matches!(r, Err(BuildError::Io { .. })), "{cfg:?} {n}");
            }
        }
    }

    #[test]
    fn validation() {
        let bad = [
            ChunkerConfig::Fixed { size: 3000 },
            ChunkerConfig::Fixed { size: 2048 },
            ChunkerConfig::Fixed { size: 32 << 20 },
            ChunkerConfig::Cdc {
                min: 8192,
                avg: 4096,
                max: 65536,
            },
            ChunkerConfig::Cdc {
                min: 4096,
                avg: 16384,
                max: 32 << 20,
            },
            ChunkerConfig::Cdc {
                min: 16,
                avg: 4096,
                max: 65536,
            },
        ];
        for cfg in bad {
            assert!(
                matches!(cfg.validate(), Err(BuildError::BadOptions(_))),
                "{cfg:?}"
            );
        }
        assert!(ChunkerConfig::Fixed { size: 16 << 20 }.validate().is_ok());
        let ok = ChunkerConfig::Cdc {
            min: 256 << 10,
            avg: 1 << 20,
            max: 4 << 20,
        };
        assert!(ok.validate().is_ok());
    }
}
