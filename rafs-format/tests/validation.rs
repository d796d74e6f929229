//! Each invariant of docs/FORMAT.md, violated on purpose in a valid image
//! (then resealed so the checksum passes), yields its own typed error.

use rafs_format::layout::*;
use rafs_format::*;
use zerocopy::{FromBytes, IntoBytes};

fn attrs(mode: u32, kind: NodeKind) -> NodeSpec {
    NodeSpec {
        meta: Meta {
            mode,
            mtime_sec: 1,
            mtime_nsec: 2,
            ..Meta::default()
        },
        kind,
    }
}

fn data_chunk(off: u64, len: u32) -> ChunkSpec {
    ChunkSpec {
        digest: [off as u8 + 1; 32],
        blob_index: 0,
        compressed_offset: off,
        uncompressed_offset: off,
        compressed_size: len,
        uncompressed_size: len,
        flags: 0,
        batch_offset: 0,
        batch_size: 0,
    }
}

/// Two members of one batch frame of 30 bytes stored in 20, at blob offset
/// 110 (uncompressed space 110..140).
fn batch_member(inner: u32, len: u32) -> ChunkSpec {
    ChunkSpec {
        digest: [inner as u8 + 50; 32],
        blob_index: 0,
        compressed_offset: 110,
        uncompressed_offset: 110 + u64::from(inner),
        compressed_size: 20,
        uncompressed_size: len,
        flags: CHUNK_ZSTD | CHUNK_BATCH,
        batch_offset: inner,
        batch_size: 30,
    }
}

/// root/{a/, a/f, g (hardlink of a/f), l -> f, z (fifo), s1, s2 (small
/// files sharing a batch frame)}; inode numbers: 0 root, 1 a, 2 f, 3 l, 4 z,
/// 5 s1, 6 s2. Chunk table: f's run 0..3, s1's 3, s2's 4.
fn sample() -> Vec<u8> {
    let n = |s: &str| Name::new(s).unwrap();
    let mut f = attrs(
        S_IFREG | 0o644,
        NodeKind::File {
            chunks: vec![data_chunk(0, 100), ChunkSpec::hole(50), data_chunk(100, 10)],
        },
    );
    f.meta.xattrs = vec![
        (b"user.b".to_vec(), b"2".to_vec()),
        (b"user.a".to_vec(), b"1".to_vec()),
    ];
    let spec = ImageSpec {
        nodes: vec![
            attrs(
                S_IFDIR | 0o755,
                NodeKind::Dir {
                    entries: vec![
                        (n("a"), 1),
                        (n("g"), 2),
                        (n("l"), 3),
                        (n("z"), 4),
                        (n("s1"), 5),
                        (n("s2"), 6),
                    ],
                    size: 0,
                },
            ),
            attrs(
                S_IFDIR | 0o755,
                NodeKind::Dir {
                    entries: vec![(n("f"), 2)],
                    size: 0,
                },
            ),
            f,
            attrs(
                S_IFLNK | 0o777,
                NodeKind::Symlink {
                    target: b"a/f".to_vec(),
                },
            ),
            attrs(S_IFIFO | 0o600, NodeKind::Special),
            attrs(
                S_IFREG | 0o644,
                NodeKind::File {
                    chunks: vec![batch_member(0, 10)],
                },
            ),
            attrs(
                S_IFREG | 0o644,
                NodeKind::File {
                    chunks: vec![batch_member(10, 20)],
                },
            ),
        ],
        blobs: vec![BlobInfo {
            id: [9; 32],
            compressed_size: 130.into(),
            uncompressed_size: 140.into(),
            chunk_count: 4.into(),
            compressor: COMPRESSOR_ZSTD.into(),
            flags: 0.into(),
            reserved: [0; 4],
        }],
        prefetch: vec![2],
        chunking: Chunking {
            mode: CHUNKING_FIXED,
            min: 4096,
            avg: 4096,
            max: 4096,
        },
        compat_features: 0,
    };
    encode(&spec).unwrap()
}

fn sb(bytes: &mut [u8]) -> &mut SuperBlock {
    SuperBlock::mut_from_prefix(bytes).unwrap().0
}

fn entry<T: FromBytes + IntoBytes + zerocopy::KnownLayout>(
    bytes: &mut [u8],
    t: TableRef,
    i: usize,
) -> &mut T {
    let off = t.offset.get() as usize + i * size_of::<T>();
    T::mut_from_prefix(&mut bytes[off..]).unwrap().0
}

/// Applies `f` to a fresh sample, reseals, and returns the open() result.
fn corrupt(f: impl FnOnce(&mut Vec<u8>, SuperBlock)) -> Result<(), FormatError> {
    let mut bytes = sample();
    let s = *sb(&mut bytes);
    f(&mut bytes, s);
    seal(&mut bytes);
    Bootstrap::open(&bytes).map(|_| ())
}

fn inode(b: &mut [u8], s: SuperBlock, ino: usize) -> &mut Inode {
    entry(b, s.inodes, ino)
}

#[test]
fn sample_is_valid() {
    let bytes = sample();
    let b = Bootstrap::open(&bytes).unwrap();
    assert_eq!(b.inode(2).unwrap().nlink.get(), 2);
    assert_eq!(b.inode(0).unwrap().nlink.get(), 3);
    assert_eq!(b.resolve(b"/g").unwrap(), Some(2));
    assert_eq!(b.get_xattr(2, b"user.a").unwrap(), Some(&b"1"[..]));
    assert_eq!(b.inode(2).unwrap().size.get(), 160);
    assert_eq!(b.chunk_index_at(2, 120).unwrap(), Some(1));
    assert_eq!(
        b.superblock().incompat_features.get(),
        INCOMPAT_ZSTD | INCOMPAT_BATCH
    );
    let s2 = b.file_chunks(6).unwrap()[0];
    assert!(s2.is_batch() && s2.frame_size() == 30 && s2.batch_offset.get() == 10);
}

#[test]
fn header_errors() {
    let mut bytes = sample();
    bytes[0] = b'X';
    assert_eq!(Bootstrap::open(&bytes).unwrap_err(), FormatError::BadMagic);
    assert!(matches!(
        Bootstrap::open(&sample()[..100]),
        Err(FormatError::TooShort { len: 100 })
    ));
    assert!(matches!(
        Bootstrap::open(&sample()[..300]),
        Err(FormatError::SizeMismatch { .. })
    ));
    let mut bytes = sample();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(
        Bootstrap::open(&bytes).unwrap_err(),
        FormatError::ChecksumMismatch
    );
    assert!(matches!(
        corrupt(|b, _| sb(b).major_version = 2.into()),
        Err(FormatError::UnsupportedVersion { major: 2, .. })
    ));
    assert_eq!(
        corrupt(|b, _| sb(b).incompat_features = (1u64 << 40).into()),
        Err(FormatError::UnknownIncompatFeatures(1 << 40))
    );
    // Unknown compat features are ignored.
    assert_eq!(
        corrupt(|b, _| sb(b).compat_features = (1u64 << 40).into()),
        Ok(())
    );
    assert_eq!(
        corrupt(|b, _| sb(b).reserved2[5] = 1),
        Err(FormatError::ReservedNotZero("superblock.reserved2"))
    );
}

#[test]
fn table_layout_errors() {
    assert_eq!(
        corrupt(|b, _| sb(b).chunks.offset = (1u64 << 40).into()),
        Err(FormatError::TableOutOfBounds(Table::Chunks))
    );
    assert_eq!(
        corrupt(|b, _| sb(b).inodes.offset = 8.into()),
        Err(FormatError::TableOutOfBounds(Table::Inodes))
    );
    assert_eq!(
        corrupt(|b, _| sb(b).blobs.count = u64::MAX.into()),
        Err(FormatError::TableTooLarge(Table::Blobs))
    );
    assert_eq!(
        corrupt(|b, s| sb(b).dirents.offset = s.inodes.offset),
        Err(FormatError::TablesOverlap(Table::Inodes, Table::Dirents))
    );
}

#[test]
fn tree_errors() {
    // A directory entry naming the root.
    assert!(matches!(
        corrupt(|b, s| entry::<DirEntry>(b, s.dirents, 0).ino = 0.into()),
        Err(FormatError::NotATree { .. })
    ));
    // An entry naming a missing inode.
    assert!(matches!(
        corrupt(|b, s| entry::<DirEntry>(b, s.dirents, 0).ino = 99.into()),
        Err(FormatError::IndexOutOfRange {
            table: Table::Inodes,
            index: 99
        })
    ));
    // Directory "a" claims another parent.
    assert_eq!(
        corrupt(|b, s| inode(b, s, 1).parent = 4.into()),
        Err(FormatError::NotATree { ino: 1 })
    );
    // A parent set on a file.
    assert_eq!(
        corrupt(|b, s| inode(b, s, 2).parent = 1.into()),
        Err(FormatError::BadInode {
            ino: 2,
            reason: "parent set on a non-directory"
        })
    );
    // Root entries out of order: swap "a" and "g".
    let r = corrupt(|b, s| {
        let e0 = *entry::<DirEntry>(b, s.dirents, 0);
        let e1 = *entry::<DirEntry>(b, s.dirents, 1);
        *entry::<DirEntry>(b, s.dirents, 0) = e1;
        *entry::<DirEntry>(b, s.dirents, 1) = e0;
    });
    assert_eq!(r, Err(FormatError::UnsortedEntries { dir: 0, index: 1 }));
    // Wrong link count on the hardlinked file.
    assert_eq!(
        corrupt(|b, s| inode(b, s, 2).nlink = 1.into()),
        Err(FormatError::NlinkMismatch {
            ino: 2,
            nlink: 1,
            expected: 2
        })
    );
    // Drop the fifo's entry: it becomes an orphan.
    assert_eq!(
        corrupt(|b, s| inode(b, s, 0).payload_count = 3.into()),
        Err(FormatError::Orphan { ino: 4 })
    );
    // Root not a directory.
    assert_eq!(
        corrupt(|b, s| inode(b, s, 0).mode = (S_IFREG | 0o644).into()),
        Err(FormatError::BadRoot)
    );
}

#[test]
fn name_errors() {
    // Entry "a" (string pool offset of its name) rewritten to "/".
    let r = corrupt(|b, s| {
        let off = entry::<DirEntry>(b, s.dirents, 0).name_offset.get() as usize;
        b[s.strings.offset.get() as usize + off] = b'/';
    });
    assert!(
        matches!(
            r,
            Err(FormatError::BadName {
                dir: 0,
                error: NameError::Slash,
                ..
            })
        ),
        "{r:?}"
    );
    let r = corrupt(|b, s| entry::<DirEntry>(b, s.dirents, 0).name_len = 0.into());
    assert!(
        matches!(
            r,
            Err(FormatError::BadName {
                error: NameError::Empty,
                ..
            })
        ),
        "{r:?}"
    );
    let r = corrupt(|b, s| entry::<DirEntry>(b, s.dirents, 0).name_offset = u32::MAX.into());
    assert!(
        matches!(
            r,
            Err(FormatError::IndexOutOfRange {
                table: Table::Strings,
                ..
            })
        ),
        "{r:?}"
    );
}

fn member(b: &mut [u8], s: SuperBlock) -> &mut ChunkInfo {
    entry::<ChunkInfo>(b, s.chunks, 4)
}

#[test]
fn chunk_errors() {
    let bad = |index, reason| Err(FormatError::BadChunk { index, reason });
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 0).blob_index = 5.into()),
        bad(0, "blob index out of range")
    );
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 2).compressed_offset = 125.into()),
        bad(2, "stored bytes outside the blob")
    );
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 1).digest[0] = 1),
        bad(1, "hole with data fields set")
    );
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 0).flags = 0x80.into()),
        bad(0, "unknown flags")
    );
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 0).flags = CHUNK_ZSTD.into()),
        bad(
            0,
            "zstd chunk not smaller than its data, or batch fields set"
        )
    );
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 0).compressed_size = 99.into()),
        bad(0, "raw chunk with differing sizes or batch fields")
    );
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 0).batch_size = 5.into()),
        bad(0, "raw chunk with differing sizes or batch fields")
    );
    // Batch members (chunk 4 is s2: bytes 10..30 of a 30-byte frame).
    let r = corrupt(|b, s| member(b, s).batch_offset = 11.into());
    assert_eq!(r, bad(4, "batch member outside its frame"));
    let r = corrupt(|b, s| member(b, s).compressed_size = 30.into());
    assert_eq!(r, bad(4, "batch frame not smaller than its data"));
    let r = corrupt(|b, s| member(b, s).flags = CHUNK_BATCH.into());
    assert_eq!(r, bad(4, "batch flag without zstd"));
    let r = corrupt(|b, s| member(b, s).batch_size = 31.into());
    assert_eq!(r, bad(4, "data outside the blob's uncompressed space"));
    let r = corrupt(|b, s| member(b, s).uncompressed_offset = 5.into());
    assert_eq!(r, bad(4, "data outside the blob's uncompressed space"));
    // Unknown incompat bit for batches is refused by a reader that predates it.
    let r = corrupt(|b, _| sb(b).incompat_features = (INCOMPAT_ZSTD | 1 << 7).into());
    assert_eq!(r, Err(FormatError::UnknownIncompatFeatures(1 << 7)));
    // A gap between chunks.
    assert_eq!(
        corrupt(|b, s| entry::<ChunkInfo>(b, s.chunks, 2).file_offset = 151.into()),
        Err(FormatError::ChunkRunMismatch { ino: 2 })
    );
    // File size disagrees with its chunks.
    assert_eq!(
        corrupt(|b, s| inode(b, s, 2).size = 161.into()),
        Err(FormatError::ChunkRunMismatch { ino: 2 })
    );
    // Chunk run past the table.
    assert!(matches!(
        corrupt(|b, s| inode(b, s, 2).payload_count = 9.into()),
        Err(FormatError::RangeOutOfBounds {
            ino: 2,
            table: Table::Chunks,
            ..
        })
    ));
}

#[test]
fn other_inode_errors() {
    assert_eq!(
        corrupt(|b, s| inode(b, s, 3).size = 4.into()),
        Err(FormatError::BadInode {
            ino: 3,
            reason: "symlink size differs from its target length"
        })
    );
    assert_eq!(
        corrupt(|b, s| inode(b, s, 4).rdev = 7.into()),
        Err(FormatError::BadInode {
            ino: 4,
            reason: "rdev set on a non-device"
        })
    );
    assert_eq!(
        corrupt(|b, s| inode(b, s, 4).mtime_nsec = 1_000_000_000.into()),
        Err(FormatError::BadInode {
            ino: 4,
            reason: "mtime nanoseconds out of range"
        })
    );
    assert_eq!(
        corrupt(|b, s| inode(b, s, 4).mode = 0o644.into()),
        Err(FormatError::BadInode {
            ino: 4,
            reason: "unknown file type"
        })
    );
    // Xattrs out of order: swap user.a and user.b.
    let r = corrupt(|b, s| {
        let x0 = *entry::<XattrEntry>(b, s.xattrs, 0);
        let x1 = *entry::<XattrEntry>(b, s.xattrs, 1);
        *entry::<XattrEntry>(b, s.xattrs, 0) = x1;
        *entry::<XattrEntry>(b, s.xattrs, 1) = x0;
    });
    assert!(
        matches!(r, Err(FormatError::BadXattr { ino: 2, .. })),
        "{r:?}"
    );
    assert!(matches!(
        corrupt(|b, s| entry::<PrefetchEntry>(b, s.prefetch, 0).ino = 77.into()),
        Err(FormatError::IndexOutOfRange {
            table: Table::Prefetch,
            index: 77
        })
    ));
    let r = corrupt(|b, s| entry::<BlobInfo>(b, s.blobs, 0).compressor = 9.into());
    assert_eq!(
        r,
        Err(FormatError::BadBlob {
            index: 0,
            reason: "unknown compressor"
        })
    );
    let r = corrupt(|b, s| entry::<BlobInfo>(b, s.blobs, 0).flags = 2.into());
    assert_eq!(
        r,
        Err(FormatError::BadBlob {
            index: 0,
            reason: "unknown flags"
        })
    );
    // The sample's frames start at 0, 10, ... 110: not 4 KiB aligned, so the
    // ALIGNED flag is a lie a reader must catch.
    let r = corrupt(|b, s| entry::<BlobInfo>(b, s.blobs, 0).flags = BLOB_ALIGNED.into());
    assert!(
        matches!(
            r,
            Err(FormatError::BadChunk {
                reason: "frame not aligned in an aligned blob",
                ..
            })
        ),
        "{r:?}"
    );
}
