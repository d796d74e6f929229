//! Fuzzes the read path behind a mount, not only the decoder: a fuzzed
//! bootstrap that validates is opened as an image, its frame index built,
//! and the filesystem core (`rafs::fs::RafsFs` over `rafs::fetch::Fetcher`)
//! serves statfs, getattr, readdir(plus), lookups of every listed name,
//! readlink, xattrs, reads at fuzzed offsets and a prefetch of everything,
//! from an in-memory backend serving fuzzed blob bytes.
//!
//! Input: the bootstrap (as many bytes as its superblock's
//! `bootstrap_size` says, resealed so the checksum passes), then the bytes
//! every blob is served from; the input's last 8 bytes also choose the read
//! offsets. So a bootstrap from `rafs create` alone is an input (empty
//! blobs), and so is a bootstrap followed by its only blob (every chunk
//! verifies: the reads reach the decoder and the caches).
//!
//! Nothing may panic, and the core keeps its promises: a read is short only
//! at the end of the file, a listed name looks up to the listed inode, and
//! readdir offsets increase. Deadlines and retry delays are short, so a
//! stall shows as a libFuzzer timeout (`-timeout`), not a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rafs::backend::{Backend, BackendError, BlobId};
use rafs::fetch::FetchConfig;
use rafs::fs::{FileKind, RafsFs};
use rafs::image::Image;
use rafs_format::layout::SuperBlock;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Inodes visited per input at most (a fuzzed table may hold many).
const MAX_INODES: u32 = 64;
/// Directory entries listed per directory at most.
const MAX_ENTRIES: usize = 256;

/// Serves the same bytes for every blob id, never a short read.
struct MemBackend(Vec<u8>);

impl Backend for MemBackend {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let size = self.0.len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(self.0[offset as usize..end as usize].to_vec()),
            _ => Err(BackendError::OutOfRange {
                blob: *id,
                offset,
                len,
                size,
            }),
        }
    }

    fn blob_size(&self, _id: &BlobId) -> Result<u64, BackendError> {
        Ok(self.0.len() as u64)
    }
}

/// The bootstrap part of `data` (resealed) and the blob bytes after it.
fn split(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let at = std::mem::offset_of!(SuperBlock, bootstrap_size);
    let size = data
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(u64::MAX);
    let cut = size.min(data.len() as u64) as usize;
    let mut boot = data[..cut].to_vec();
    rafs_format::seal(&mut boot);
    (boot, data[cut..].to_vec())
}

/// Opens the bootstrap as an image through a file of its own (unlinked at
/// once: the mapping keeps it, and no later input rewrites it).
fn image_of(boot: &[u8]) -> Option<Image> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("rafs-fuzz-{}-{n}", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(boot));
    let image = written.ok().and_then(|_| Image::open(&path).ok());
    let _ = std::fs::remove_file(&path);
    image
}

fn config() -> FetchConfig {
    FetchConfig {
        read_timeout: Duration::from_secs(2),
        retry_base: Duration::from_micros(100),
        retry_max: Duration::from_millis(1),
        concurrency: 2,
        prefetch_threads: 1,
        memory_bytes: 1 << 20,
        ..FetchConfig::default()
    }
}

/// Reads `size` bytes at `offset` of regular file `ino`; a successful read
/// is short only at the end of the file.
fn read_checked(fs: &RafsFs, ino: u32, file_size: u64, offset: u64, size: u32) {
    if let Ok(got) = fs.read(ino, offset, size) {
        let want = file_size.min(offset.saturating_add(u64::from(size)));
        let want = want.saturating_sub(offset);
        assert_eq!(got.len() as u64, want, "read({ino}, {offset}, {size})");
    }
}

/// Lists directory `ino` and looks every listed name up.
fn list(fs: &RafsFs, ino: u32) {
    let mut entries = Vec::new();
    let _ = fs.readdir(ino, 0, |e| {
        entries.push((e.name.to_vec(), e.ino, e.next));
        entries.len() < MAX_ENTRIES
    });
    assert!(
        entries.windows(2).all(|w| w[0].2 < w[1].2),
        "readdir offsets"
    );
    for (name, child, _) in entries.iter().skip(2) {
        if let Ok(a) = fs.lookup(ino, name) {
            assert_eq!(a.ino, *child, "lookup of a listed name");
        }
    }
    if let Some((_, _, next)) = entries.get(entries.len() / 2) {
        let _ = fs.readdir(ino, *next, |_| true);
    }
    let mut n = 0;
    let _ = fs.readdirplus(ino, 0, |_, _| {
        n += 1;
        n < MAX_ENTRIES
    });
}

/// Every operation on inode `ino`; `k` chooses the read offsets.
fn visit(fs: &RafsFs, ino: u32, k: u64) {
    let Ok(attr) = fs.getattr(ino) else { return };
    assert_eq!(attr.ino, ino);
    let _ = fs.access(ino, 4);
    if let Ok(names) = fs.listxattr(ino) {
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()).take(4) {
            let _ = fs.getxattr(ino, name);
        }
    }
    match attr.kind {
        FileKind::Dir => list(fs, ino),
        FileKind::Symlink => {
            let _ = fs.readlink(ino);
        }
        FileKind::File => {
            let size = attr.size;
            // From the start (read-ahead), then on, then at fuzzed places.
            read_checked(fs, ino, size, 0, 4096);
            read_checked(fs, ino, size, 4096, 64 << 10);
            read_checked(
                fs,
                ino,
                size,
                k % size.saturating_add(1),
                (k >> 32) as u32 % (128 << 10),
            );
            read_checked(fs, ino, size, (k >> 16) % size.saturating_add(2), 128 << 10);
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let (boot, blob) = split(data);
    let k = data
        .len()
        .checked_sub(8)
        .and_then(|at| data[at..].try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let Some(image) = image_of(&boot) else { return };
    let count = image.bootstrap().map_or(0, |b| b.inode_count());
    let Ok(fs) = RafsFs::new(image, Arc::new(MemBackend(blob)), config()) else {
        return;
    };
    let _ = fs.statfs();
    for ino in 0..count.min(MAX_INODES) {
        visit(&fs, ino, k.rotate_left(ino));
    }
    let _ = fs.lookup(0, b"..");
    let _ = fs.getattr(count);
    let plan = fs.fetcher().plan_all();
    let stop = AtomicBool::new(false);
    let _ = fs.fetcher().prefetch(&plan, &stop, &mut |_| {});
});
