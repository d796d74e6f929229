//! Unit tests of the cache tools, on caches built by hand with the
//! [`BlobCache`] API.

use super::*;
use crate::util::noise;
use std::os::unix::fs::FileExt;

const G: u32 = 4096;

/// A blob of `n` chunks of `size` bytes back to back, cached in `dir` with
/// granularity [`G`], every chunk committed. Returns its chunks.
fn filled(dir: &Path, id: BlobId, n: u64, size: u32) -> Vec<Chunk> {
    let blob_size = n * u64::from(size);
    let params = MapParams::new(id, blob_size, G).unwrap();
    let (cache, _) = BlobCache::open(dir, params).unwrap();
    // One commit: a range is marked only if a single commit covers it.
    let datas: Vec<Vec<u8>> = (0..n).map(|i| noise(size as usize, i + 1)).collect();
    let writes: Vec<(u64, &[u8])> = (0..n)
        .map(|i| (i * u64::from(size), datas[i as usize].as_slice()))
        .collect();
    cache.commit(&writes).unwrap();
    let chunks = writes
        .iter()
        .map(|&(offset, data)| Chunk {
            offset,
            size,
            digest: *blake3::hash(data).as_bytes(),
        })
        .collect();
    cache.bitmap().flush().unwrap();
    chunks
}

fn id(b: u8) -> BlobId {
    BlobId([b; 32])
}

#[test]
fn names_are_classified_strictly() {
    let hex = "ab".repeat(32);
    assert_eq!(
        classify(&format!("{hex}.data")),
        Name::Data(BlobId([0xab; 32]))
    );
    assert_eq!(
        classify(&format!("{hex}.map")),
        Name::Map(BlobId([0xab; 32]))
    );
    assert_eq!(classify(&format!(".{hex}.map.tmp.42")), Name::Temp(42));
    assert_eq!(
        classify(&format!(".{hex}.map.tmp.42.0123456789abcdef")),
        Name::Temp(42)
    );
    for other in [
        format!("{}.data", "AB".repeat(32)),
        format!("{}.data", &hex[1..]),
        format!("{hex}0.map"),
        format!("{hex}.map.bak"),
        format!(".{hex}.map.tmp."),
        format!(".{hex}.map.tmp.-1"),
        format!(".{hex}.map.tmp.42.xyz"),
        format!(".{hex}.map.tmp.42."),
        format!(".{hex}.map.tmp.99999999999"),
        "lost+found".to_string(),
        ".data".to_string(),
        "é.map".to_string(),
    ] {
        assert_eq!(classify(&other), Name::Other, "{other}");
    }
}

#[test]
fn bits_past_the_range_count_are_ignored() {
    let params = MapParams::new(id(1), 3 * u64::from(G) + 100, G).unwrap();
    // Ranges 0, 3 (short: 100 bytes) and garbage bits 4.. and a second word.
    let mut words = (0b1001u64 | (0xff << 4)).to_le_bytes().to_vec();
    words.extend_from_slice(&u64::MAX.to_le_bytes());
    let (count, bytes) = count_bits(&mut words.as_slice(), &params).unwrap();
    assert_eq!(count, 2);
    assert_eq!(bytes, u64::from(G) + 100);
    // A trailing partial word is not counted.
    let (count, _) = count_bits(&mut [0xffu8; 3].as_slice(), &params).unwrap();
    assert_eq!(count, 0);
}

#[test]
fn verify_clears_a_corrupted_chunk_and_then_passes() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = filled(dir.path(), id(7), 6, 6000);
    let size = 6 * 6000;
    let good = verify_chunks(dir.path(), &id(7), size, &chunks).unwrap();
    let ranges = size.div_ceil(u64::from(G));
    assert_eq!(
        good,
        BlobVerify::Checked {
            ready: ranges,
            ranges,
            checked: 6,
            bad: vec![]
        }
    );
    // One flipped byte inside chunk 2 (bytes 12000..18000).
    let data = File::options()
        .read(true)
        .write(true)
        .open(data_path(dir.path(), &id(7)))
        .unwrap();
    let mut b = [0u8; 1];
    data.read_exact_at(&mut b, 13_000).unwrap();
    data.write_all_at(&[b[0] ^ 0xff], 13_000).unwrap();
    let BlobVerify::Checked { bad, checked, .. } =
        verify_chunks(dir.path(), &id(7), size, &chunks).unwrap()
    else {
        panic!("not checked");
    };
    assert_eq!(checked, 6);
    assert_eq!(
        bad,
        vec![BadChunk {
            offset: 12_000,
            size: 6000,
            reason: "digest mismatch"
        }]
    );
    // Ranges 2..=4 touch bytes 12000..18000: cleared; the others kept.
    let MapInfo::Valid { ready, .. } = read_map(dir.path(), &id(7)).unwrap() else {
        panic!("map invalid");
    };
    assert_eq!(ready, ranges - 3);
    // Chunks 1 and 3 share a range with chunk 2, so they are no longer
    // checked; the rest pass.
    let again = verify_chunks(dir.path(), &id(7), size, &chunks).unwrap();
    assert!(
        matches!(again, BlobVerify::Checked { checked: 3, ref bad, .. } if bad.is_empty()),
        "{again:?}"
    );
}

#[test]
fn verify_skips_uncached_and_reports_resets() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        verify_chunks(dir.path(), &id(1), 4096, &[]).unwrap(),
        BlobVerify::NotCached
    );
    // Nothing was created for an uncached blob.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let chunks = filled(dir.path(), id(2), 2, 4096);
    // A different size than the map says: reset.
    let out = verify_chunks(dir.path(), &id(2), 3 * 4096, &chunks).unwrap();
    assert!(matches!(out, BlobVerify::Reset(_)), "{out:?}");
}

#[test]
fn verify_keeps_the_granularity_of_an_existing_map() {
    let dir = tempfile::tempdir().unwrap();
    let g = 2 * G;
    assert_ne!(g, DEFAULT_GRANULARITY);
    let params = MapParams::new(id(3), 4 * u64::from(g), g).unwrap();
    let (cache, _) = BlobCache::open(dir.path(), params).unwrap();
    let data = noise(4 * g as usize, 9);
    cache.commit(&[(0, &data)]).unwrap();
    drop(cache);
    let chunk = Chunk {
        offset: 0,
        size: data.len() as u32,
        digest: *blake3::hash(&data).as_bytes(),
    };
    let out = verify_chunks(dir.path(), &id(3), params.blob_size, &[chunk]).unwrap();
    assert!(
        matches!(
            out,
            BlobVerify::Checked {
                ready: 4,
                ranges: 4,
                checked: 1,
                ..
            }
        ),
        "{out:?}"
    );
}

#[test]
fn read_map_reports_without_modifying() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_map(dir.path(), &id(4)).unwrap(), MapInfo::Missing);
    filled(dir.path(), id(4), 3, 5000);
    let info = read_map(dir.path(), &id(4)).unwrap();
    assert_eq!(
        info,
        MapInfo::Valid {
            blob_size: 15_000,
            granularity: G,
            ranges: 4,
            ready: 4,
            ready_bytes: 15_000,
            layout: [0; 16],
            generation: 0,
        }
    );
    // A flipped header byte: invalid, and the file is left as it was.
    let path = map_path(dir.path(), &id(4));
    let f = File::options().write(true).open(&path).unwrap();
    f.write_all_at(&[0xff], 50).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        read_map(dir.path(), &id(4)).unwrap(),
        MapInfo::Invalid(_)
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A map renamed to another blob's name does not pass either.
    std::fs::write(map_path(dir.path(), &id(5)), &before).unwrap();
    assert!(matches!(
        read_map(dir.path(), &id(5)).unwrap(),
        MapInfo::Invalid(_)
    ));
    // Garbage of any length never panics.
    for len in [0, 1, 127, 128, 129, 200] {
        std::fs::write(&path, vec![0x42; len]).unwrap();
        assert!(matches!(
            read_map(dir.path(), &id(4)).unwrap(),
            MapInfo::Invalid(_)
        ));
    }
}

#[test]
fn remove_blob_respects_locks_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), id(6), 2, 4096);
    let map = map_path(dir.path(), &id(6));
    let data = data_path(dir.path(), &id(6));
    let held = Flock::lock(File::open(&map).unwrap(), FlockArg::LockSharedNonblock).unwrap();
    assert_eq!(
        remove_blob(dir.path(), &id(6), false).unwrap(),
        GcOutcome::InUse
    );
    assert!(map.exists() && data.exists());
    drop(held);
    let GcOutcome::Removed(freed) = remove_blob(dir.path(), &id(6), true).unwrap() else {
        panic!("dry run refused");
    };
    assert!(freed >= 8192, "{freed}");
    assert!(map.exists() && data.exists());
    assert!(matches!(
        remove_blob(dir.path(), &id(6), false).unwrap(),
        GcOutcome::Removed(_)
    ));
    assert!(!map.exists() && !data.exists());
}

#[test]
fn scan_sorts_entries() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), id(8), 1, 4096);
    std::fs::write(dir.path().join("README"), b"x").unwrap();
    std::fs::create_dir(dir.path().join(format!("{}.data", id(9).to_hex()))).unwrap();
    std::fs::write(
        dir.path().join(format!(".{}.map.tmp.1", id(8).to_hex())),
        b"",
    )
    .unwrap();
    let s = scan(dir.path()).unwrap();
    assert_eq!(
        s.blobs.into_iter().collect::<Vec<_>>(),
        vec![(id(8), (true, true))]
    );
    assert_eq!(s.temps.len(), 1);
    assert_eq!(s.other.len(), 2, "{:?}", s.other);
}
