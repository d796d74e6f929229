//! Tests of the hardening: file modes and symlinks, the layout identity,
//! the generation counter, commits over ready ranges, span locks with a
//! deadline, and the stalling storage double.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::bitmap::{map_path, temp_map_path};
use super::blobfile::data_path;
use super::io::testing::Stall;
use super::io::Storage;
use super::*;
use crate::backend::BlobId;

const G: u64 = 4096;

fn params(size: u64) -> MapParams {
    MapParams::new(BlobId([5; 32]), size, G as u32).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn cache_dir_and_files_are_private() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/cache");
    create_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&root.path().join("a")), 0o700);
    let p = params(4 * G);
    let (c, _) = BlobCache::open(&dir, p).unwrap();
    c.commit(&[(0, &[7u8; 4096])]).unwrap();
    assert_eq!(mode(&data_path(&dir, &p.blob)), 0o600);
    assert_eq!(mode(&map_path(&dir, &p.blob)), 0o600);
    // A reset creates the map anew, 0600 again, and leaves no temp file.
    drop(c);
    let (_c, opened) = BlobCache::open(&dir, p.with_layout([0; 16])).unwrap();
    assert_eq!(opened, Opened::Reused);
    RangeBitmap::create(&dir, p).unwrap();
    assert_eq!(mode(&map_path(&dir, &p.blob)), 0o600);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

#[test]
fn temp_map_names_are_unpredictable_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let blob = BlobId([5; 32]);
    let (a, b) = (
        temp_map_path(dir.path(), &blob),
        temp_map_path(dir.path(), &blob),
    );
    assert_ne!(a, b);
    // Something planted at a temp name (here a symlink to a victim) makes
    // the creation fail; the victim is neither truncated nor written.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, &a).unwrap();
    let err = io::Real.create_new(&a).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_symlink_planted_at_the_map_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(4 * G);
    let victim = dir.path().join("victim");
    std::fs::write(&victim, vec![0x55; 4096]).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, map_path(dir.path(), &p.blob)).unwrap();
    let (c, opened) = BlobCache::open(dir.path(), p).unwrap();
    assert!(matches!(opened, Opened::Created | Opened::Reset { .. }));
    c.commit(&[(0, &[1u8; 4096])]).unwrap();
    c.bitmap().flush().unwrap();
    let meta = std::fs::symlink_metadata(map_path(dir.path(), &p.blob)).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(std::fs::read(&victim).unwrap(), vec![0x55; 4096]);
    assert_eq!(mode(&victim), 0o644);
    // Planted over an existing valid map: reset with its reason.
    drop(c);
    let (_, _) = BlobCache::open(dir.path(), p).unwrap();
    std::fs::remove_file(map_path(dir.path(), &p.blob)).unwrap();
    std::os::unix::fs::symlink(&victim, map_path(dir.path(), &p.blob)).unwrap();
    let (_, opened) = RangeBitmap::open(dir.path(), p).unwrap();
    assert_eq!(
        opened,
        Opened::Reset {
            reason: ResetReason::NotRegular
        }
    );
    assert_eq!(std::fs::read(&victim).unwrap(), vec![0x55; 4096]);
}

#[test]
fn a_symlink_planted_at_the_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(4 * G);
    let victim = dir.path().join("victim");
    // Same length as the blob, so a `metadata` that followed it would take
    // it for a valid data file.
    std::fs::write(&victim, vec![0x55; 4 * G as usize]).unwrap();
    std::os::unix::fs::symlink(&victim, data_path(dir.path(), &p.blob)).unwrap();
    let err = BlobCache::open(dir.path(), p).unwrap_err();
    assert!(
        matches!(&err, CacheError::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
        "{err}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), vec![0x55; 4 * G as usize]);
    // And it is still a symlink (nothing written through or over it).
    let meta = std::fs::symlink_metadata(data_path(dir.path(), &p.blob)).unwrap();
    assert!(meta.file_type().is_symlink());
}

#[test]
fn another_layout_is_refused_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let a = params(4 * G).with_layout([0xaa; 16]);
    let b = params(4 * G).with_layout([0xbb; 16]);
    let (c, opened) = BlobCache::open(dir.path(), a).unwrap();
    assert_eq!(opened, Opened::Created);
    c.commit(&[(0, &vec![1u8; 2 * G as usize])]).unwrap();
    c.bitmap().flush().unwrap();
    drop(c);
    let map = map_path(dir.path(), &a.blob);
    let before = std::fs::read(&map).unwrap();
    let err = BlobCache::open(dir.path(), b).unwrap_err();
    assert!(
        matches!(err, CacheError::LayoutConflict { blob, found, expected }
            if blob == a.blob && found == [0xaa; 16] && expected == [0xbb; 16]),
        "{err}"
    );
    // Even with another blob size (the other image's data file then has
    // the wrong length for us): refused, and nothing resized.
    let bigger = MapParams::new(a.blob, 8 * G, G as u32)
        .unwrap()
        .with_layout([0xbb; 16]);
    assert!(matches!(
        BlobCache::open(dir.path(), bigger),
        Err(CacheError::LayoutConflict { .. })
    ));
    let data = data_path(dir.path(), &a.blob);
    assert_eq!(std::fs::metadata(&data).unwrap().len(), 4 * G);
    assert_eq!(std::fs::read(&map).unwrap(), before);
    // The owner still finds its cache intact.
    let (c, opened) = BlobCache::open(dir.path(), a).unwrap();
    assert_eq!(opened, Opened::Reused);
    assert_eq!(c.read_if_ready(0, 2).unwrap(), Some(vec![1, 1]));
}

#[test]
fn clearing_bumps_the_generation_first() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = BlobCache::open(dir.path(), params(8 * G)).unwrap();
    assert_eq!(c.generation(), 0);
    c.commit(&[(0, &vec![1u8; 8 * G as usize])]).unwrap();
    assert_eq!(c.generation(), 0, "filling clears nothing");
    c.invalidate(2..4).unwrap();
    assert_eq!(c.generation(), 1);
    assert_eq!(c.read_if_ready(2 * G, 1).unwrap(), None);
    assert_eq!(c.read_if_ready(G, 1).unwrap(), Some(vec![1]));
    c.punch(5..6).unwrap();
    assert_eq!(c.generation(), 2);
    c.bitmap().clear(0).unwrap();
    assert_eq!(c.generation(), 3);
    assert!(matches!(
        c.invalidate(7..9),
        Err(CacheError::RangeOutOfBounds { .. })
    ));
    assert_eq!(c.generation(), 3, "nothing cleared, nothing bumped");
    // Invalidation is flushed: a fresh map of the file sees it, and the
    // generation lives in the shared file too.
    let (m, _) = RangeBitmap::open(dir.path(), params(8 * G)).unwrap();
    assert_eq!(m.ready_count(), 4);
    assert_eq!(m.generation(), 3);
    m.clear_ranges(1..2).unwrap();
    assert_eq!(c.generation(), 4);
}

#[test]
fn a_fill_over_ready_ranges_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = BlobCache::open(dir.path(), params(4 * G)).unwrap();
    assert_eq!(c.commit(&[(G, &vec![1u8; 2 * G as usize])]).unwrap(), 2);
    // Another process filled it meanwhile: nothing written, nothing marked,
    // no generation bump.
    assert_eq!(c.commit(&[(G, &vec![2u8; 2 * G as usize])]).unwrap(), 0);
    assert_eq!(c.generation(), 0);
    assert_eq!(c.data().read_at(G, 2).unwrap(), vec![1, 1]);
    // One fill skipped, the other one done.
    let fresh = vec![3u8; G as usize];
    let again = vec![4u8; G as usize];
    assert_eq!(c.commit(&[(0, &fresh), (G, &again)]).unwrap(), 1);
    assert_eq!(c.data().read_at(0, G as usize + 1).unwrap()[G as usize], 1);
    assert_eq!(c.generation(), 0);
}

#[test]
fn a_fill_over_partly_ready_ranges_invalidates_them_first() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = BlobCache::open(dir.path(), params(4 * G)).unwrap();
    c.commit(&[(G, &vec![1u8; G as usize])]).unwrap();
    let g0 = c.generation();
    assert_eq!(c.commit(&[(0, &vec![2u8; 3 * G as usize])]).unwrap(), 3);
    assert!(
        c.generation() > g0,
        "range 1 was rewritten: readers must see it"
    );
    assert_eq!(
        c.read_if_ready(0, 3 * G as usize).unwrap(),
        Some(vec![2u8; 3 * G as usize])
    );
}

#[test]
fn lock_span_until_gives_up_at_the_deadline_and_takes_a_released_lock() {
    let dir = tempfile::tempdir().unwrap();
    // Two opens: two open file descriptions, as in two processes.
    let (a, _) = CacheFile::open(dir.path(), &BlobId([5; 32]), 1 << 20).unwrap();
    let (b, _) = CacheFile::open(dir.path(), &BlobId([5; 32]), 1 << 20).unwrap();
    let held = a.try_lock_span(0, 8192).unwrap().expect("free span");
    let wait = Duration::from_millis(150);
    let t0 = Instant::now();
    assert!(b.lock_span_until(4096, 4096, t0 + wait).unwrap().is_none());
    let took = t0.elapsed();
    assert!(took >= wait, "{took:?}");
    assert!(took < wait * 20, "gave up late: {took:?}");
    // Released while the other waits: acquired well before the deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let started = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            started.wait();
            b.lock_span_until(4096, 4096, deadline).unwrap()
        });
        // Released once the waiter is about to ask (it takes the lock
        // whenever it is free, so the exact moment does not matter).
        started.wait();
        drop(held);
        assert!(waiter.join().unwrap().is_some());
    });
    assert!(Instant::now() < deadline);
}

#[test]
fn a_stalled_disk_blocks_commits_but_not_hits() {
    let dir = tempfile::tempdir().unwrap();
    let stall = Stall::new(io::real());
    let (c, _) = BlobCache::open_with(dir.path(), params(4 * G), stall.clone()).unwrap();
    c.commit(&[(0, &vec![1u8; G as usize])]).unwrap();
    stall.block();
    std::thread::scope(|s| {
        let writer = s.spawn(|| c.commit(&[(G, &vec![2u8; G as usize])]).unwrap());
        crate::testimage::wait_until(
            "the commit to reach the disk",
            Duration::from_secs(10),
            || stall.waiting() > 0,
        );
        // The commit is stuck in its write; hits are still served.
        assert_eq!(c.read_if_ready(0, 2).unwrap(), Some(vec![1, 1]));
        assert_eq!(c.read_if_ready(G, 2).unwrap(), None);
        assert!(!writer.is_finished());
        stall.release();
        assert_eq!(writer.join().unwrap(), 1);
    });
    assert_eq!(c.read_if_ready(G, 2).unwrap(), Some(vec![2, 2]));
}
