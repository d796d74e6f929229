//! Cross-file sequential read-ahead, through the filesystem core with a
//! counting backend: reading files in build order opens a read-ahead
//! window (fewer requests than files); reading them in a scattered order
//! fetches exactly the files read, one request each, nothing more; and
//! `--readahead 0` turns the window off.

mod common;

use rafs::backend::file::FileBackend;
use rafs::backend::{Backend, BackendError, BlobId};
use rafs::fetch::FetchConfig;
use rafs::fs::RafsFs;
use rafs::image::Image;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts requests and bytes.
struct Counting {
    inner: FileBackend,
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Backend for Counting {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(len, Ordering::SeqCst);
        self.inner.read_range(id, offset, len)
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        self.inner.blob_size(id)
    }
}

const FILES: u64 = 12;
const SIZE: usize = 300 << 10;

/// 12 incompressible files of 300 KiB: one stored frame each, in name
/// order in the blob.
fn image(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..FILES {
        let data = common::tree::random_bytes(i + 100, SIZE);
        std::fs::write(src.join(format!("f{i:02}")), data).unwrap();
    }
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, &["--chunk-size", "512K"]);
    (src, bootstrap)
}

fn mounted(bootstrap: &Path, blobs: &Path) -> (RafsFs, Arc<Counting>) {
    mounted_with(bootstrap, blobs, FetchConfig::default())
}

fn mounted_with(bootstrap: &Path, blobs: &Path, cfg: FetchConfig) -> (RafsFs, Arc<Counting>) {
    let backend = Arc::new(Counting {
        inner: FileBackend::new(blobs),
        requests: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let fs = RafsFs::new(Image::open(bootstrap).unwrap(), backend.clone(), cfg).unwrap();
    (fs, backend)
}

fn read_file(fs: &RafsFs, src: &Path, i: u64) {
    let name = format!("f{i:02}");
    let ino = fs.lookup(0, name.as_bytes()).unwrap().ino;
    let got = fs.read(ino, 0, SIZE as u32).unwrap();
    assert!(got == std::fs::read(src.join(&name)).unwrap(), "{name}");
}

#[test]
fn sequential_files_share_requests_scattered_files_fetch_only_themselves() {
    let work = common::tempdir();
    let (src, bootstrap) = image(work.path());
    let blobs = work.path().join("image/blobs");
    let stored: u64 = common::blobs_in(&blobs)
        .iter()
        .map(|b| b.1.len() as u64)
        .sum();

    let (fs, backend) = mounted(&bootstrap, &blobs);
    for i in 0..FILES {
        read_file(&fs, &src, i);
    }
    let sequential = backend.requests.load(Ordering::SeqCst);
    assert!(
        sequential < FILES - 2,
        "{sequential} requests for {FILES} files read in order"
    );
    assert_eq!(backend.bytes.load(Ordering::SeqCst), stored);

    let (fs, backend) = mounted(&bootstrap, &blobs);
    let scattered = [7, 2, 10, 4, 0, 9];
    for &i in &scattered {
        read_file(&fs, &src, i);
    }
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        scattered.len() as u64
    );
    let per_file = stored / FILES;
    let bytes = backend.bytes.load(Ordering::SeqCst);
    assert!(
        bytes <= per_file * scattered.len() as u64 + 4096,
        "{bytes} bytes fetched for {} files of ~{per_file}",
        scattered.len()
    );
}

#[test]
fn readahead_zero_turns_off_the_cross_file_window_too() {
    let work = common::tempdir();
    let (src, bootstrap) = image(work.path());
    let blobs = work.path().join("image/blobs");
    let off = FetchConfig {
        readahead: 0,
        ..FetchConfig::default()
    };
    let (fs, backend) = mounted_with(&bootstrap, &blobs, off);
    let read = FILES / 2;
    for i in 0..read {
        read_file(&fs, &src, i);
    }
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        read,
        "one request per file read, nothing ahead"
    );
    let stored: u64 = common::blobs_in(&blobs)
        .iter()
        .map(|b| b.1.len() as u64)
        .sum();
    let bytes = backend.bytes.load(Ordering::SeqCst);
    assert!(
        bytes <= stored / FILES * read + 4096,
        "{bytes} bytes for {read} files"
    );
}
