//! Crash tests: every durable operation of a commit, an eviction and an
//! invalidation goes through [`Crash`]; for every point a power loss could
//! hit (and a sample of what the disk could then hold: unsynced sectors
//! torn, unsynced bits either way), the cache is reopened and every ready
//! range must hold one of the versions of its bytes that were legitimately
//! committed, whole. The `checker_catches_*` tests run the same checker
//! against deliberately misordered operations and require it to fail, so
//! the checker is known to be able to fail.

use std::sync::Arc;

use super::io::testing::{Crash, CrashImage};
use super::*;
use crate::backend::BlobId;

const G: u64 = 4096;
const RANGES: u64 = 12;
const SAMPLES: usize = 48;

fn params() -> MapParams {
    MapParams::new(BlobId([3; 32]), RANGES * G, G as u32).unwrap()
}

/// Version `v` of range `r`'s bytes: distinct per (v, r), never zero.
fn bytes(v: u8, r: u64) -> Vec<u8> {
    (0..G)
        .map(|i| ((i * 31 + r * 7 + u64::from(v) * 101) % 251 + 1) as u8)
        .collect()
}

fn span(v: u8, ranges: std::ops::Range<u64>) -> Vec<u8> {
    ranges.flat_map(|r| bytes(v, r)).collect()
}

/// A cache over a crash double in a fresh directory, with the `ready`
/// ranges filled with version `v`, made durable, and checkpointed.
fn setup(v: u8, ready: std::ops::Range<u64>) -> (tempfile::TempDir, Arc<Crash>, BlobCache) {
    let dir = tempfile::tempdir().unwrap();
    let crash = Crash::new();
    let (c, opened) = BlobCache::open_with(dir.path(), params(), crash.clone()).unwrap();
    assert_eq!(opened, Opened::Created);
    c.commit(&[(ready.start * G, &span(v, ready))]).unwrap();
    c.bitmap().flush().unwrap();
    crash.checkpoint(dir.path()).unwrap();
    (dir, crash, c)
}

/// Reopens one crash image and checks that every ready range holds one of
/// `versions` of its bytes, whole.
fn check_image(img: &CrashImage, scratch: &std::path::Path, versions: &[u8]) -> Result<(), String> {
    img.restore(scratch).map_err(|e| e.to_string())?;
    let (c, opened) = BlobCache::open(scratch, params()).map_err(|e| e.to_string())?;
    if opened != Opened::Reused {
        return Err(format!("the map was not reused: {opened:?}"));
    }
    for r in 0..RANGES {
        if !c.bitmap().is_ready(r).unwrap() {
            continue;
        }
        let got = c.data().read_at(r * G, G as usize).unwrap();
        if !versions.iter().any(|&v| got == bytes(v, r)) {
            let what = match got.iter().all(|&b| b == 0) {
                true => "zeros",
                false => "torn or foreign bytes",
            };
            return Err(format!(
                "power lost after op {}: range {r} is ready but holds {what}",
                img.after_ops
            ));
        }
    }
    Ok(())
}

/// Runs the checker over every crash image the operations recorded since
/// the checkpoint allow. Returns the number of images checked.
fn check_all(crash: &Crash, versions: &[u8], seed: u64) -> Result<usize, String> {
    let scratch = tempfile::tempdir().unwrap();
    let mut n = 0;
    crash.for_each_crash(SAMPLES, seed, |img| {
        n += 1;
        check_image(img, scratch.path(), versions)
    })?;
    Ok(n)
}

#[test]
fn crash_during_commits_never_exposes_unsynced_bytes() {
    let (_dir, crash, c) = setup(0, 0..0);
    c.commit(&[(0, &span(1, 0..2))]).unwrap();
    c.commit(&[(3 * G, &bytes(1, 3)), (5 * G, &span(1, 5..7))])
        .unwrap();
    c.commit(&[(2 * G, &bytes(1, 2))]).unwrap();
    let tail = bytes(1, RANGES - 1);
    c.commit_covering(&[Fill {
        offset: (RANGES - 1) * G,
        bytes: &tail,
        cover_end: RANGES * G,
    }])
    .unwrap();
    assert_eq!(c.bitmap().ready_count(), 7);
    assert_eq!(crash.ops(), 9, "5 writes, 4 syncs");
    let n = check_all(&crash, &[1], 1).unwrap();
    assert!(n > 200, "{n} images");
}

#[test]
fn crash_during_eviction_never_exposes_a_hole() {
    let (_dir, crash, c) = setup(1, 0..RANGES);
    c.punch(2..4).unwrap();
    c.punch(7..8).unwrap();
    c.commit(&[(2 * G, &span(1, 2..4))]).unwrap();
    c.punch(0..RANGES).unwrap();
    assert_eq!(c.bitmap().ready_count(), 0);
    let n = check_all(&crash, &[1], 2).unwrap();
    assert!(n > 100, "{n} images");
}

#[test]
fn crash_during_invalidation_and_refill_never_exposes_a_mix() {
    // Version 0 is what another writer left (say, bytes that failed
    // verification); version 1 replaces it.
    let (_dir, crash, c) = setup(0, 0..5);
    c.invalidate(1..3).unwrap();
    c.commit(&[(G, &span(1, 1..3))]).unwrap();
    // Ranges 3 and 4 are ready with version 0, 5 is not: the commit must
    // invalidate 3..5 before writing over them.
    assert_eq!(c.commit(&[(3 * G, &span(1, 3..6))]).unwrap(), 3);
    for r in 1..6 {
        assert_eq!(
            c.read_if_ready(r * G, G as usize).unwrap(),
            Some(bytes(1, r))
        );
    }
    let n = check_all(&crash, &[0, 1], 3).unwrap();
    assert!(n > 100, "{n} images");
}

/// The checker must fail on a commit that sets the bits before the sync.
#[test]
fn checker_catches_bits_set_before_the_sync() {
    let (_dir, crash, c) = setup(0, 0..0);
    c.data().write_at(2 * G, &span(1, 2..4)).unwrap();
    c.bitmap().mark_ready(2).unwrap();
    c.bitmap().mark_ready(3).unwrap();
    c.data().sync().unwrap();
    let err = check_all(&crash, &[1], 4).unwrap_err();
    assert!(err.contains("holds zeros") || err.contains("torn"), "{err}");
}

/// The checker must fail on an eviction that punches before the cleared
/// bits are durable.
#[test]
fn checker_catches_a_punch_before_the_msync() {
    let (_dir, crash, c) = setup(1, 0..4);
    c.bitmap().clear_ranges(1..3).unwrap();
    c.data().punch_hole(G, 2 * G).unwrap();
    c.bitmap().flush_ranges(1..3).unwrap();
    let err = check_all(&crash, &[1], 5).unwrap_err();
    assert!(err.contains("holds zeros") || err.contains("torn"), "{err}");
}

/// The checker must fail on a commit that writes into a ready range
/// without invalidating it first.
#[test]
fn checker_catches_a_write_into_a_ready_range() {
    let (_dir, crash, c) = setup(0, 0..4);
    c.data().write_at(G, &bytes(1, 1)).unwrap();
    c.data().sync().unwrap();
    let err = check_all(&crash, &[0, 1], 6).unwrap_err();
    assert!(err.contains("torn"), "{err}");
}
