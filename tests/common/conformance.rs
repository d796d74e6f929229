//! The backend conformance suite: one set of checks that every backend
//! (file, HTTP, registry, S3) must pass over the same blobs.
//!
//! A test for backend X builds the [`Fixture`], publishes its blobs in X's
//! own way (a directory, an nginx root, `PUT`s to a registry or a bucket),
//! opens the backend through its URL and calls [`check_backend`]; for a
//! backend with authentication it also opens one with wrong credentials
//! and calls [`check_denied`].

use rafs::backend::{Backend, BackendError, BlobId};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Blobs with known bytes, and an id that names no blob.
pub struct Fixture {
    /// `(id, bytes)`; ids are the sha256 of the bytes, as in an image.
    pub blobs: Vec<(BlobId, Vec<u8>)>,
    /// A well-formed id no backend holds.
    pub missing: BlobId,
}

/// Deterministic incompressible bytes (xorshift64*).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// The id of `bytes`.
pub fn blob_id(bytes: &[u8]) -> BlobId {
    BlobId(Sha256::digest(bytes).into())
}

/// Three blobs: 1 byte, 100 KiB, and 3 MiB + 17 (larger than one typical
/// HTTP buffer and not a multiple of anything).
pub fn fixture() -> Fixture {
    let blobs = [noise(1, 1), noise(2, 100 << 10), noise(3, (3 << 20) + 17)]
        .into_iter()
        .map(|b| (blob_id(&b), b))
        .collect();
    Fixture {
        blobs,
        missing: BlobId([0x5a; 32]),
    }
}

impl Fixture {
    /// Writes every blob to `dir/<hex>` (the file backend's layout, and an
    /// nginx document root's).
    pub fn write_dir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for (id, bytes) in &self.blobs {
            std::fs::write(dir.join(id.to_hex()), bytes).unwrap();
        }
    }
}

fn expect_range(b: &dyn Backend, id: &BlobId, bytes: &[u8], offset: u64, len: u64) {
    let got = b
        .read_range(id, offset, len)
        .unwrap_or_else(|e| panic!("blob {id}: range {offset}+{len}: {e}"));
    let want = &bytes[offset as usize..(offset + len) as usize];
    assert_eq!(
        got.len(),
        want.len(),
        "blob {id}: range {offset}+{len}: length"
    );
    assert!(got == want, "blob {id}: range {offset}+{len}: wrong bytes");
}

/// [`expect_range`] through `read_range_to`: the pieces, in order, are
/// the range.
fn expect_streamed(b: &dyn Backend, id: &BlobId, bytes: &[u8], offset: u64, len: u64) {
    let mut got = Vec::new();
    b.read_range_to(id, offset, len, &mut |piece| got.extend_from_slice(piece))
        .unwrap_or_else(|e| panic!("blob {id}: streamed range {offset}+{len}: {e}"));
    let want = &bytes[offset as usize..(offset + len) as usize];
    assert!(
        got == want,
        "blob {id}: streamed range {offset}+{len}: wrong bytes"
    );
}

/// Every behaviour the fetcher relies on: sizes; ranges at the start,
/// middle and end; one byte; the whole blob; zero-length reads; ranges past
/// the end (refused as `OutOfRange`, never short); a missing blob
/// (`NotFound`, not transient); and concurrent readers.
pub fn check_backend(b: &dyn Backend, fx: &Fixture) {
    for (id, bytes) in &fx.blobs {
        let size = bytes.len() as u64;
        assert_eq!(b.blob_size(id).unwrap(), size, "blob {id}: size");
        expect_range(b, id, bytes, 0, size);
        expect_range(b, id, bytes, 0, 1);
        expect_range(b, id, bytes, size - 1, 1);
        expect_range(b, id, bytes, size / 3, size / 3);
        expect_range(b, id, bytes, size / 2, size - size / 2);
        expect_streamed(b, id, bytes, 0, size);
        expect_streamed(b, id, bytes, size / 3, size / 3);
        expect_streamed(b, id, bytes, size - 1, 1);
        expect_streamed(b, id, bytes, 0, 0);
        assert_eq!(b.read_range(id, 0, 0).unwrap(), b"", "zero-length read");
        assert_eq!(
            b.read_range(id, size, 0).unwrap(),
            b"",
            "zero-length at end"
        );
        for (offset, len) in [(0, size + 1), (size, 1), (size - 1, 2), (u64::MAX - 1, 2)] {
            match b.read_range(id, offset, len) {
                Err(BackendError::OutOfRange { .. }) => {}
                other => panic!(
                    "blob {id}: range {offset}+{len} past the end: want OutOfRange, got {:?}",
                    other.map(|v| v.len())
                ),
            }
            let mut pieces = 0;
            match b.read_range_to(id, offset, len, &mut |_| pieces += 1) {
                Err(BackendError::OutOfRange { .. }) => assert_eq!(pieces, 0),
                other => panic!("blob {id}: streamed {offset}+{len} past the end: {other:?}"),
            }
        }
    }
    match b.read_range(&fx.missing, 0, 1) {
        Err(e @ BackendError::NotFound(_)) => assert!(!e.is_transient()),
        other => panic!(
            "missing blob: want NotFound, got {:?}",
            other.map(|v| v.len())
        ),
    }
    let mut pieces = 0;
    match b.read_range_to(&fx.missing, 0, 1, &mut |_| pieces += 1) {
        Err(BackendError::NotFound(_)) => assert_eq!(pieces, 0, "nothing streamed"),
        other => panic!("missing blob streamed: want NotFound, got {other:?}"),
    }
    assert!(matches!(
        b.blob_size(&fx.missing),
        Err(BackendError::NotFound(_))
    ));
    check_concurrent(b, fx);
}

/// Eight threads reading different ranges of the largest blob at once.
fn check_concurrent(b: &dyn Backend, fx: &Fixture) {
    let (id, bytes) = fx.blobs.iter().max_by_key(|(_, v)| v.len()).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            s.spawn(move || {
                let len = 64 << 10;
                let offset = t * 300_000;
                expect_range(b, id, bytes, offset, len);
            });
        }
    });
}

/// A backend with wrong (or no) credentials: every read and size query is
/// `Auth`, which is not transient (a retry cannot fix a password).
pub fn check_denied(b: &dyn Backend, fx: &Fixture) {
    let (id, _) = &fx.blobs[1];
    match b.read_range(id, 0, 10) {
        Err(e @ BackendError::Auth { .. }) => assert!(!e.is_transient()),
        other => panic!(
            "wrong credentials: want Auth, got {:?}",
            other.map(|v| v.len())
        ),
    }
    assert!(matches!(b.blob_size(id), Err(BackendError::Auth { .. })));
}
