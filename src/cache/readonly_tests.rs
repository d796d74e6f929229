//! Read-only caches over a blob manager's descriptors
//! ([`BlobCache::from_fds`]): they see the writer's bits and generation,
//! refuse every mutator, and refuse descriptors that are not the expected
//! blob's.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::bitmap::map_path;
use super::blobfile::data_path;
use super::*;
use crate::backend::BlobId;

const G: u32 = 4096;

fn params(size: u64) -> MapParams {
    MapParams::new(BlobId([9; 32]), size, G)
        .unwrap()
        .with_layout([3; 16])
}

fn fds(dir: &Path, p: &MapParams) -> (OwnedFd, OwnedFd) {
    let data = File::open(data_path(dir, &p.blob)).unwrap();
    let map = File::open(map_path(dir, &p.blob)).unwrap();
    (data.into(), map.into())
}

#[test]
fn reader_sees_the_writers_bits_and_generation() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(4 * G as u64);
    let (w, _) = BlobCache::open(dir.path(), p).unwrap();
    let (d, m) = fds(dir.path(), &p);
    let r = BlobCache::from_fds(d, m, p).unwrap();
    assert!(r.is_read_only() && !w.is_read_only());
    assert_eq!(r.read_if_ready(0, 10).unwrap(), None);
    let bytes = vec![0x5a; G as usize];
    w.commit(&[(G as u64, &bytes)]).unwrap();
    assert!(r.bitmap().is_ready(1).unwrap());
    assert_eq!(r.read_if_ready(G as u64, G as usize).unwrap(), Some(bytes));
    let g0 = r.generation();
    w.invalidate(1..2).unwrap();
    assert_ne!(r.generation(), g0, "the reader sees the writer's bump");
    assert!(!r.bitmap().is_ready(1).unwrap());
    assert_eq!(r.read_if_ready(G as u64, 1).unwrap(), None);
}

#[test]
fn mutators_of_a_read_only_cache_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(4 * G as u64);
    let (w, _) = BlobCache::open(dir.path(), p).unwrap();
    w.commit(&[(0, &vec![1u8; G as usize])]).unwrap();
    let (d, m) = fds(dir.path(), &p);
    let r = BlobCache::from_fds(d, m, p).unwrap();
    let g = r.generation();
    let ro = |res: Result<(), CacheError>| matches!(res, Err(CacheError::ReadOnly));
    assert!(ro(r.commit(&[(G as u64, &[2u8; 4096][..])]).map(|_| ())));
    assert!(ro(r.invalidate(0..1)));
    assert!(ro(r.punch(0..1)));
    assert!(ro(r.bitmap().mark_ready(2).map(|_| ())));
    assert!(ro(r.bitmap().clear(0)));
    assert!(ro(r.bitmap().clear_ranges(0..1)));
    assert!(ro(r.bitmap().bump_generation().map(|_| ())));
    assert!(ro(r.bitmap().flush()));
    assert!(ro(r.bitmap().flush_ranges(0..1)));
    assert!(ro(r.data().write_at(0, b"x")));
    assert!(ro(r.data().sync()));
    assert!(ro(r.data().punch_hole(0, 1)));
    assert!(ro(r.data().try_lock_span(0, 1).map(|_| ())));
    let far = std::time::Instant::now();
    assert!(ro(r.data().lock_span_until(0, 1, far).map(|_| ())));
    // Nothing changed.
    assert_eq!(r.generation(), g);
    assert!(r.bitmap().is_ready(0).unwrap() && !r.bitmap().is_ready(2).unwrap());
    assert_eq!(r.read_if_ready(0, 4).unwrap(), Some(vec![1; 4]));
}

#[test]
fn wrong_descriptors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(4 * G as u64);
    BlobCache::open(dir.path(), p).unwrap();
    // Another layout: a conflict.
    let (d, m) = fds(dir.path(), &p);
    let other = p.with_layout([4; 16]);
    assert!(matches!(
        BlobCache::from_fds(d, m, other),
        Err(CacheError::LayoutConflict { .. })
    ));
    // Another size: the data file is refused.
    let (d, m) = fds(dir.path(), &p);
    let bigger = MapParams {
        blob_size: 5 * G as u64,
        ..p
    };
    assert!(matches!(
        BlobCache::from_fds(d, m, bigger),
        Err(CacheError::BadMap(_) | CacheError::BadData { .. })
    ));
    // Data and map swapped: the map header is garbage.
    let (d, m) = fds(dir.path(), &p);
    let map_len = std::fs::metadata(map_path(dir.path(), &p.blob))
        .unwrap()
        .len();
    let p2 = MapParams {
        blob_size: map_len,
        ..p
    };
    assert!(matches!(
        BlobCache::from_fds(m, d, p2),
        Err(CacheError::BadMap(_) | CacheError::BadData { .. })
    ));
    // A directory is not a data file.
    let (_, m) = fds(dir.path(), &p);
    let d: OwnedFd = File::open(dir.path()).unwrap().into();
    assert!(matches!(
        BlobCache::from_fds(d, m, p),
        Err(CacheError::BadData { found: None, .. })
    ));
    // A corrupted header: refused, and the file is left as it was.
    let map = std::fs::OpenOptions::new()
        .write(true)
        .open(map_path(dir.path(), &p.blob))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&map, b"XXXX", 0).unwrap();
    let (d, m) = fds(dir.path(), &p);
    assert!(matches!(
        BlobCache::from_fds(d, m, p),
        Err(CacheError::BadMap(ResetReason::Magic))
    ));
    let head = std::fs::read(map_path(dir.path(), &p.blob)).unwrap();
    assert_eq!(&head[..4], b"XXXX", "never reset");
}
