//! PAX extended headers, parsed by their length prefixes.
//!
//! A PAX record is `LEN KEY=VALUE\n` where LEN counts the whole record, so a
//! value may contain newlines and NULs (GNU tar stores binary xattr values
//! this way). The `tar` crate splits records on newlines and rejects such
//! values, and exposes no raw bytes, so [`Recorder`] keeps the bytes of the
//! stream between two entries' data (the headers only: it is paused while
//! the builder reads file data, and the data of an entry the builder does
//! not read, which the `tar` crate skips through it, passes unrecorded) and
//! [`RecorderHandle::pax_before`] finds the `x` header preceding an entry in them.
//!
//! The recorder also bounds those headers: the `tar` crate reads a PAX `x`
//! header or a GNU long name (`L`, `K`) whole, whatever size it claims, and
//! an entry may carry any number of GNU sparse map blocks. Past
//! [`MAX_HEADER_BYTES`] between two entries' data, reads fail with
//! `InvalidData`, which the builder reports as a corrupt archive.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

/// Parses PAX records; `None` if the framing is broken.
pub fn parse_records(mut data: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break; // padding
        }
        let space = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let kv = &data[space + 1..len - 1];
        let eq = kv.iter().position(|&b| b == b'=')?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Some(out)
}

/// The most bytes of headers kept between two entries' data: an entry's
/// header with its extension headers (PAX `x`, GNU long names, GNU sparse
/// maps). Real ones take a few KiB; xattr values, the largest PAX records,
/// are at most 64 KiB each.
pub const MAX_HEADER_BYTES: usize = 16 << 20;

fn too_many_header_bytes() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the headers of one entry (with its PAX, GNU long name or sparse map \
             extensions) exceed {} MiB",
            MAX_HEADER_BYTES >> 20
        ),
    )
}

#[derive(Debug, Default)]
struct State {
    recording: bool,
    /// Recording went past [`MAX_HEADER_BYTES`]: every read fails, so no
    /// reader can go on with a header cut short.
    over: bool,
    /// Stream offset of `buf[0]`: bytes before it pass unrecorded.
    start: u64,
    /// Stream offset of the next byte read.
    pos: u64,
    buf: Vec<u8>,
}

/// A reader that records what it passes through while recording is on, at
/// most [`MAX_HEADER_BYTES`] at a time.
pub struct Recorder<R> {
    inner: R,
    state: Rc<RefCell<State>>,
}

/// The control side of a [`Recorder`].
#[derive(Clone, Debug)]
pub struct RecorderHandle(Rc<RefCell<State>>);

impl<R: Read> Recorder<R> {
    /// Wraps `inner`, recording from offset 0.
    pub fn new(inner: R) -> (Recorder<R>, RecorderHandle) {
        let state = Rc::new(RefCell::new(State {
            recording: true,
            ..State::default()
        }));
        let handle = RecorderHandle(state.clone());
        (Recorder { inner, state }, handle)
    }
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.state.borrow().over {
            return Err(too_many_header_bytes());
        }
        let n = self.inner.read(out)?;
        let mut s = self.state.borrow_mut();
        let at = s.pos;
        s.pos += n as u64;
        if s.recording {
            let skip = usize::try_from(s.start.saturating_sub(at)).map_or(n, |k| k.min(n));
            let kept = &out[skip..n];
            if s.buf.len() + kept.len() > MAX_HEADER_BYTES {
                s.over = true;
                return Err(too_many_header_bytes());
            }
            s.buf.extend_from_slice(kept);
        }
        Ok(n)
    }
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

impl RecorderHandle {
    /// Stops recording (file data follows).
    pub fn pause(&self) {
        self.0.borrow_mut().recording = false;
    }

    /// Drops what was recorded and records again from stream offset
    /// `next_header`, the first header after the entry just read (or from
    /// the current offset, if that is further). The bytes before it are the
    /// rest of the entry's data, which the builder did not read (a
    /// directory's, say: a header may claim any size); the `tar` crate
    /// skips them through this recorder, and they are not kept.
    pub fn restart_at(&self, next_header: u64) {
        let mut s = self.0.borrow_mut();
        s.buf.clear();
        s.start = next_header.max(s.pos);
        s.recording = true;
    }

    /// The data of the last PAX `x` header among the headers from offset
    /// `from` (the first header after the previous entry) up to the entry
    /// header at `header_pos`. `None` if there is none or it was not
    /// recorded.
    pub fn pax_before(&self, from: u64, header_pos: u64) -> Option<Vec<u8>> {
        let s = self.0.borrow();
        let at = |off: u64, len: u64| -> Option<&[u8]> {
            let i = usize::try_from(off.checked_sub(s.start)?).ok()?;
            s.buf.get(i..i.checked_add(usize::try_from(len).ok()?)?)
        };
        let mut found = None;
        let mut h = from;
        while h < header_pos {
            let header = tar::Header::from_byte_slice(at(h, 512)?);
            let size = header.entry_size().ok()?;
            if header.entry_type().is_pax_local_extensions() {
                found = Some(at(h + 512, size)?.to_vec());
            }
            h = h.checked_add(512 + round_up(size))?;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_newlines_and_nuls() {
        let rec = |k: &str, v: &[u8]| {
            let body = [k.as_bytes(), b"=", v, b"\n"].concat();
            let mut len = body.len() + 3;
            if (len.to_string().len() + 1 + body.len()) != len {
                len = len.to_string().len() + 1 + body.len();
            }
            [len.to_string().as_bytes(), b" ", &body].concat()
        };
        let data = [
            rec("SCHILY.xattr.user.m", b"a\nb\n\0c"),
            rec("mtime", b"1.5"),
        ]
        .concat();
        let got = parse_records(&data).unwrap();
        assert_eq!(
            got[0],
            (b"SCHILY.xattr.user.m".to_vec(), b"a\nb\n\0c".to_vec())
        );
        assert_eq!(got[1], (b"mtime".to_vec(), b"1.5".to_vec()));
        assert!(parse_records(b"99 x=y\n").is_none());
        assert!(parse_records(b"6 x=y\n").is_some());
    }
}
