//! Cache file tests: reuse, every reset reason, sharing between maps, the
//! commit/read/punch ordering and bounds.

use std::fs::OpenOptions;
use std::mem::offset_of;
use std::os::unix::fs::FileExt;
use std::path::Path;

use zerocopy::IntoBytes;

use super::bitmap::{map_path, MapHeader, MAP_CHECKSUM_OFFSET, MAP_HEADER_SIZE};
use super::blobfile::data_path;
use super::*;

const G: u32 = 4096;

fn blob(n: u8) -> BlobId {
    BlobId([n; 32])
}

use crate::backend::BlobId;

fn params(size: u64) -> MapParams {
    MapParams::new(blob(7), size, G).unwrap()
}

#[test]
fn header_offsets_match_format_doc() {
    assert_eq!(offset_of!(MapHeader, magic), 0);
    assert_eq!(offset_of!(MapHeader, version), 8);
    assert_eq!(offset_of!(MapHeader, header_size), 12);
    assert_eq!(offset_of!(MapHeader, blob_id), 16);
    assert_eq!(offset_of!(MapHeader, blob_size), 48);
    assert_eq!(offset_of!(MapHeader, granularity), 56);
    assert_eq!(offset_of!(MapHeader, reserved0), 60);
    assert_eq!(offset_of!(MapHeader, range_count), 64);
    assert_eq!(offset_of!(MapHeader, layout), 72);
    assert_eq!(offset_of!(MapHeader, reserved1), 88);
    assert_eq!(offset_of!(MapHeader, checksum), MAP_CHECKSUM_OFFSET);
    assert_eq!(MAP_CHECKSUM_OFFSET, 96);
    assert_eq!(size_of::<MapHeader>(), MAP_HEADER_SIZE);
    assert_eq!(MAP_HEADER_SIZE, 128);
    assert_eq!(bitmap::MAP_LIVE_OFFSET, 128);
    assert_eq!(bitmap::MAP_BITS_OFFSET, 192);
    assert_eq!(bitmap::MAP_VERSION, 2);
}

#[test]
fn granularity_is_validated() {
    for g in [0, 1000, 2048, 4097, 32 << 20] {
        assert!(matches!(
            MapParams::new(blob(1), 1, g),
            Err(CacheError::Granularity(_))
        ));
    }
    assert!(MapParams::new(blob(1), 1, DEFAULT_GRANULARITY).is_ok());
}

#[test]
fn create_then_reopen_keeps_bits() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(100 * u64::from(G) + 1); // 101 ranges, 2 words
    let (m, opened) = RangeBitmap::open(dir.path(), p).unwrap();
    assert_eq!(opened, Opened::Created);
    assert_eq!(m.range_count(), 101);
    assert_eq!(m.ready_count(), 0);
    for r in [0, 63, 64, 100] {
        m.mark_ready(r).unwrap();
    }
    m.flush().unwrap();
    drop(m);
    let (m, opened) = RangeBitmap::open(dir.path(), p).unwrap();
    assert_eq!(opened, Opened::Reused);
    assert_eq!(m.ready_count(), 4);
    assert!(m.is_ready(63).unwrap() && m.is_ready(64).unwrap() && m.is_ready(100).unwrap());
    assert!(!m.is_ready(1).unwrap());
    assert!(m.all_ready(63..65).unwrap());
    assert!(!m.all_ready(62..65).unwrap());
    assert!(m.all_ready(5..5).unwrap());
    m.clear(64).unwrap();
    assert!(!m.is_ready(64).unwrap());
    assert_eq!(m.ready_count(), 3);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

/// Creates a map with bits set, damages it with `damage`, reopens with
/// `reopen` and returns the outcome, checking that every bit is clear.
fn reset_after(damage: impl FnOnce(&Path), reopen: MapParams) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let p = params(10 * u64::from(G));
    let (m, _) = RangeBitmap::open(dir.path(), p).unwrap();
    for r in 0..10 {
        m.mark_ready(r).unwrap();
    }
    m.flush().unwrap();
    drop(m);
    damage(&map_path(dir.path(), &p.blob));
    let (m, opened) = RangeBitmap::open(dir.path(), reopen).unwrap();
    assert_eq!(m.ready_count(), 0, "{opened:?}");
    // The replacement is itself valid.
    drop(m);
    let (_, again) = RangeBitmap::open(dir.path(), reopen).unwrap();
    assert_eq!(again, Opened::Reused);
    opened
}

fn write_bytes(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn reason(o: Opened) -> ResetReason {
    match o {
        Opened::Reset { reason } => reason,
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[test]
fn torn_or_mismatched_header_resets() {
    let p = params(10 * u64::from(G));
    let truncate = |len: u64| {
        move |path: &Path| {
            let f = OpenOptions::new().write(true).open(path).unwrap();
            f.set_len(len).unwrap();
        }
    };
    assert_eq!(reason(reset_after(truncate(0), p)), ResetReason::Short(0));
    assert_eq!(reason(reset_after(truncate(77), p)), ResetReason::Short(77));
    assert!(matches!(
        reason(reset_after(truncate(128), p)),
        ResetReason::FileLength { found: 128, .. }
    ));
    let flip = |at: u64| move |path: &Path| write_bytes(path, at, &[0xff]);
    assert_eq!(reason(reset_after(flip(0), p)), ResetReason::Magic);
    assert_eq!(reason(reset_after(flip(50), p)), ResetReason::Checksum);
    assert_eq!(reason(reset_after(flip(100), p)), ResetReason::Checksum);
    // A well-formed header of another version (checksum resealed).
    let version = |path: &Path| {
        let mut h = p.header();
        h.version = 1.into();
        h.checksum = *blake3::hash(&h.as_bytes()[..MAP_CHECKSUM_OFFSET]).as_bytes();
        write_bytes(path, 0, h.as_bytes());
    };
    assert_eq!(reason(reset_after(version, p)), ResetReason::Version(1));
    let reserved = |path: &Path| {
        let mut h = p.header();
        h.reserved1[3] = 1;
        h.checksum = *blake3::hash(&h.as_bytes()[..MAP_CHECKSUM_OFFSET]).as_bytes();
        write_bytes(path, 0, h.as_bytes());
    };
    assert_eq!(reason(reset_after(reserved, p)), ResetReason::Reserved);
    // The caller expects something else.
    let noop = |_: &Path| {};
    let bigger = MapParams::new(p.blob, p.blob_size + 1, G).unwrap();
    assert_eq!(
        reason(reset_after(noop, bigger)),
        ResetReason::BlobSize {
            found: p.blob_size,
            expected: p.blob_size + 1
        }
    );
    let coarser = MapParams::new(p.blob, p.blob_size, 2 * G).unwrap();
    assert_eq!(
        reason(reset_after(noop, coarser)),
        ResetReason::Granularity {
            found: G,
            expected: 2 * G
        }
    );
    // A trailing byte.
    let longer = |path: &Path| write_bytes(path, p.file_len(), &[0]);
    assert!(matches!(
        reason(reset_after(longer, p)),
        ResetReason::FileLength { .. }
    ));
}

#[test]
fn another_blobs_header_resets() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(8192);
    let other = MapParams::new(blob(9), 8192, G).unwrap();
    RangeBitmap::open(dir.path(), p).unwrap();
    // Someone copied blob 9's map under blob 7's name.
    std::fs::write(map_path(dir.path(), &p.blob), {
        let mut b = other.header().as_bytes().to_vec();
        b.resize(other.file_len() as usize, 0);
        b
    })
    .unwrap();
    let (_, opened) = RangeBitmap::open(dir.path(), p).unwrap();
    assert_eq!(reason(opened), ResetReason::BlobId(blob(9)));
}

#[test]
fn two_maps_of_one_file_share_bits() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(200 * u64::from(G));
    let (a, _) = RangeBitmap::open(dir.path(), p).unwrap();
    let (b, opened) = RangeBitmap::open(dir.path(), p).unwrap();
    assert_eq!(opened, Opened::Reused);
    a.mark_ready(5).unwrap();
    b.mark_ready(130).unwrap();
    assert!(b.is_ready(5).unwrap());
    assert!(a.is_ready(130).unwrap());
    b.clear(5).unwrap();
    assert!(!a.is_ready(5).unwrap());
    assert_eq!(a.ready_count(), 1);
}

#[test]
fn concurrent_marks_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(1024 * u64::from(G));
    let (m, _) = RangeBitmap::open(dir.path(), p).unwrap();
    // Thread t sets every range r with r % 8 == t: all eight threads hammer
    // the same words, so a non-atomic update would lose bits.
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let m = &m;
            s.spawn(move || {
                for r in (t..1024).step_by(8) {
                    m.mark_ready(r).unwrap();
                }
            });
        }
    });
    assert_eq!(m.ready_count(), 1024);
}

#[test]
fn out_of_range_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(3 * u64::from(G));
    let (c, _) = BlobCache::open(dir.path(), p).unwrap();
    let m = c.bitmap();
    let oob = |r: Result<_, CacheError>| matches!(r, Err(CacheError::RangeOutOfBounds { .. }));
    assert!(oob(m.is_ready(3).map(drop)));
    assert!(oob(m.mark_ready(3).map(drop)));
    assert!(oob(m.clear(u64::MAX)));
    assert!(oob(m.all_ready(0..4).map(drop)));
    assert!(oob(c.punch(2..4)));
    let span = |r: Result<_, CacheError>| matches!(r, Err(CacheError::OutOfBounds { .. }));
    assert!(span(c.read_if_ready(3 * u64::from(G), 1).map(drop)));
    assert!(span(c.read_if_ready(u64::MAX, 2).map(drop)));
    assert!(span(c.commit(&[(3 * u64::from(G) - 1, &[1, 2])]).map(drop)));
    assert!(span(c.data().write_at(u64::MAX, &[1]).map(drop)));
    assert_eq!(m.ready_count(), 0);
}

#[test]
fn commit_marks_only_fully_covered_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let g = u64::from(G);
    let p = params(10 * g + 100); // last range (10) is 100 bytes
    let (c, opened) = BlobCache::open(dir.path(), p).unwrap();
    assert_eq!(opened, Opened::Created);
    let a = vec![1u8; 1500];
    let b = vec![2u8; G as usize * 2 - 1500];
    // Two chunks that together cover ranges 1 and 2 exactly.
    assert_eq!(c.commit(&[(g + 1500, &b), (g, &a)]).unwrap(), 2);
    // Half of range 4 and the first byte of range 6.
    let half = vec![3u8; G as usize / 2];
    assert_eq!(c.commit(&[(4 * g, &half), (6 * g, &[4])]).unwrap(), 0);
    // The short last range, written to the end of the blob.
    assert_eq!(c.commit(&[(10 * g, &[5u8; 100])]).unwrap(), 1);
    let m = c.bitmap();
    let ready: Vec<u64> = (0..m.range_count())
        .filter(|&r| m.is_ready(r).unwrap())
        .collect();
    assert_eq!(ready, vec![1, 2, 10]);
}

#[test]
fn read_if_ready_only_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let g = u64::from(G);
    let p = params(4 * g);
    let (c, _) = BlobCache::open(dir.path(), p).unwrap();
    let data: Vec<u8> = (0..2 * g).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.read_if_ready(g, 10).unwrap(), None);
    c.commit(&[(g, &data)]).unwrap();
    assert_eq!(
        c.read_if_ready(g + 7, 5000).unwrap().unwrap(),
        &data[7..5007]
    );
    // Touches range 3, which is not ready.
    assert_eq!(c.read_if_ready(3 * g - 1, 2).unwrap(), None);
    assert_eq!(c.read_if_ready(0, 0).unwrap(), Some(vec![]));
    // Survives a reopen.
    drop(c);
    let (c, opened) = BlobCache::open(dir.path(), p).unwrap();
    assert_eq!(opened, Opened::Reused);
    assert_eq!(c.read_if_ready(g, 2 * g as usize).unwrap().unwrap(), data);
}

#[test]
fn punch_clears_the_bit_and_frees_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let g = u64::from(G);
    let p = params(4 * g);
    let (c, _) = BlobCache::open(dir.path(), p).unwrap();
    c.commit(&[(0, &vec![9u8; 4 * g as usize])]).unwrap();
    c.punch(1..3).unwrap();
    let m = c.bitmap();
    assert!(m.is_ready(0).unwrap() && m.is_ready(3).unwrap());
    assert!(!m.is_ready(1).unwrap() && !m.is_ready(2).unwrap());
    assert_eq!(c.read_if_ready(g, 1).unwrap(), None);
    // The hole reads as zeros underneath (tmpfs and ext4 both punch).
    assert_eq!(
        c.data().read_at(g, 2 * g as usize).unwrap(),
        vec![0; 2 * g as usize]
    );
    assert_eq!(c.read_if_ready(0, 1).unwrap(), Some(vec![9]));
    // The cleared bits were flushed: a fresh map sees them clear.
    let (m2, _) = RangeBitmap::open(dir.path(), p).unwrap();
    assert_eq!(m2.ready_count(), 2);
}

#[test]
fn missing_or_resized_data_file_resets_the_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let g = u64::from(G);
    let p = params(2 * g);
    let (c, _) = BlobCache::open(dir.path(), p).unwrap();
    c.commit(&[(0, &vec![1u8; 2 * g as usize])]).unwrap();
    drop(c);
    std::fs::remove_file(data_path(dir.path(), &p.blob)).unwrap();
    let (c, opened) = BlobCache::open(dir.path(), p).unwrap();
    assert_eq!(reason(opened), ResetReason::DataFile);
    assert_eq!(c.bitmap().ready_count(), 0);
    assert_eq!(c.data().size(), 2 * g);
    c.commit(&[(0, &vec![1u8; 2 * g as usize])]).unwrap();
    drop(c);
    let f = OpenOptions::new()
        .write(true)
        .open(data_path(dir.path(), &p.blob))
        .unwrap();
    f.set_len(g).unwrap();
    let (c, opened) = BlobCache::open(dir.path(), p).unwrap();
    assert_eq!(reason(opened), ResetReason::DataFile);
    assert_eq!(c.bitmap().ready_count(), 0);
}

#[test]
fn empty_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = BlobCache::open(dir.path(), params(0)).unwrap();
    assert_eq!(c.bitmap().range_count(), 0);
    assert_eq!(c.commit(&[(0, &[])]).unwrap(), 0);
    assert_eq!(c.read_if_ready(0, 0).unwrap(), Some(vec![]));
    let (_, opened) = BlobCache::open(dir.path(), params(0)).unwrap();
    assert_eq!(opened, Opened::Reused);
}

#[test]
fn check_header_never_panics_on_garbage() {
    let p = params(12345);
    let good = {
        let mut b = p.header().as_bytes().to_vec();
        b.resize(p.file_len() as usize, 0);
        b
    };
    assert_eq!(bitmap::check_header(&good, good.len() as u64, &p), Ok(()));
    for len in 0..good.len() {
        assert!(bitmap::check_header(&good[..len], len as u64, &p).is_err());
    }
}

#[test]
fn span_locks_exclude_other_openers_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // Two opens: two open file descriptions, as in two processes.
    let (a, _) = CacheFile::open(dir.path(), &blob(7), 1 << 20).unwrap();
    let (b, _) = CacheFile::open(dir.path(), &blob(7), 1 << 20).unwrap();
    let held = a.try_lock_span(4096, 8192).unwrap().expect("free span");
    assert!(b.try_lock_span(8192, 4096).unwrap().is_none(), "overlap");
    assert!(b.try_lock_span(0, 4096).unwrap().is_some(), "disjoint");
    drop(held);
    assert!(b.try_lock_span(8192, 4096).unwrap().is_some());
    assert!(matches!(
        a.try_lock_span(1 << 20, 1),
        Err(CacheError::OutOfBounds { .. })
    ));
}

#[test]
fn ready_runs_are_the_maximal_runs_across_words() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(200 * u64::from(G));
    let (m, _) = RangeBitmap::open(dir.path(), p).unwrap();
    assert!(m.ready_runs().is_empty());
    let set = [0..1, 3..5, 60..70, 127..128, 128..192, 199..200];
    for r in set.iter().cloned().flatten() {
        m.mark_ready(r).unwrap();
    }
    assert_eq!(m.ready_runs(), vec![0..1, 3..5, 60..70, 127..192, 199..200]);
    // Every bit of the map: one run, the last word's tail excluded.
    for r in 0..200 {
        m.mark_ready(r).unwrap();
    }
    assert_eq!(m.ready_runs(), vec![0..200]);
}
