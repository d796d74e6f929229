//! Seeded random reads: the same (file, offset, length) read from a
//! mounted image and from the source tree with `pread`, compared byte for
//! byte. Offsets and lengths are drawn so that reads start in holes, cross
//! chunk boundaries and run past the end of the file.

use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every regular file below `root` with its size (relative paths, sorted),
/// skipping directories the walk may not enter and files `skip` selects.
pub fn regular_files(root: &Path, skip: &dyn Fn(&Path) -> bool) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if skip(&rel) {
                continue;
            }
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.push((rel, m.len()));
            }
        }
    }
    out.sort();
    out
}

/// Reads up to `len` bytes at `off`, retrying short reads; shorter only at
/// the end of the file.
pub fn pread_full(f: &File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// A random (offset, length) for a file of `size` bytes: mostly inside,
/// sometimes at or past the end; lengths up to `max_len`, biased small.
pub fn random_span(rng: &mut Rng, size: u64, max_len: u64) -> (u64, usize) {
    let off = match rng.below(16) {
        0 => size,
        1 => size.saturating_sub(rng.below(4096).min(size)),
        _ => rng.below(size.max(1)),
    };
    let len = match rng.below(4) {
        0 => 1 + rng.below(64),
        1 => 1 + rng.below(8192),
        _ => 1 + rng.below(max_len),
    };
    (off, len as usize)
}

/// Does `n` random preads over `files`, each on both trees; returns a
/// description of every mismatch or error (empty: all equal).
pub fn compare_random_reads(
    src: &Path,
    mnt: &Path,
    files: &[(PathBuf, u64)],
    seed: u64,
    n: usize,
    max_len: u64,
) -> Vec<String> {
    assert!(!files.is_empty(), "no files to read");
    let mut rng = Rng::new(seed);
    let mut bad = Vec::new();
    for _ in 0..n {
        let (rel, size) = &files[rng.below(files.len() as u64) as usize];
        let (off, len) = random_span(&mut rng, *size, max_len);
        if let Err(e) = compare_one(&src.join(rel), &mnt.join(rel), off, len) {
            bad.push(format!(
                "{:?} @{off}+{len}: {e}",
                String::from_utf8_lossy(rel.as_os_str().as_bytes())
            ));
        }
    }
    bad
}

/// Opens both files, reads the same span, compares.
pub fn compare_one(src: &Path, mnt: &Path, off: u64, len: usize) -> Result<(), String> {
    let want = pread_full(
        &File::open(src).map_err(|e| format!("open source: {e}"))?,
        off,
        len,
    )
    .map_err(|e| format!("read source: {e}"))?;
    let f = File::open(mnt).map_err(|e| format!("open on mount: {e}"))?;
    let got = pread_full(&f, off, len).map_err(|e| format!("read on mount: {e}"))?;
    if got.len() != want.len() {
        return Err(format!("{} bytes, source gives {}", got.len(), want.len()));
    }
    match got.iter().zip(&want).position(|(a, b)| a != b) {
        Some(i) => Err(format!("first difference at byte {}", off + i as u64)),
        None => Ok(()),
    }
}
