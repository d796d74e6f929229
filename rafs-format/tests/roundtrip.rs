//! Property tests: random trees encode, validate and decode back to the same
//! tree; random corruption of an encoded image is always a typed error (or a
//! still-valid image), never a panic.

use proptest::prelude::*;
use rafs_format::layout::*;
use rafs_format::*;

/// A generated tree plus the digests it used.
#[derive(Debug, Clone)]
struct Generated {
    spec: ImageSpec,
}

#[derive(Debug, Clone)]
enum Pick {
    Dir,
    File(Vec<(bool, u32, u8)>),
    Symlink(Vec<u8>),
    Special(u32, u64),
    HardLink(usize),
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        2 => Just(Pick::Dir),
        4 => prop::collection::vec((any::<bool>(), 1u32..5000, 0u8..3), 0..5).prop_map(Pick::File),
        1 => prop::collection::vec(1u8..=255, 1..300).prop_map(Pick::Symlink),
        1 => (prop_oneof![Just(S_IFCHR), Just(S_IFBLK), Just(S_IFIFO), Just(S_IFSOCK)], any::<u64>())
            .prop_map(|(t, r)| Pick::Special(t, r)),
        1 => any::<usize>().prop_map(Pick::HardLink),
    ]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![1u8..=46, 48u8..=255], 1..20)
        .prop_filter("dot names", |n| n != b"." && n != b"..")
}

fn xattrs() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    let ns = prop_oneof![Just("user."), Just("trusted."), Just("security.")];
    prop::collection::btree_map(
        (ns, "[a-z]{1,8}").prop_map(|(n, s)| format!("{n}{s}").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40),
        0..3,
    )
    .prop_map(|m| m.into_iter().collect())
}

type Attrs = (u32, u32, u32, i64, u32, Vec<(Vec<u8>, Vec<u8>)>);

fn attrs() -> impl Strategy<Value = Attrs> {
    (
        0u32..0o7777,
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        0u32..1_000_000_000,
        xattrs(),
    )
}

fn node(mode: u32, a: &Attrs, kind: NodeKind, rdev: u64) -> NodeSpec {
    let meta = Meta {
        mode: mode | a.0,
        uid: a.1,
        gid: a.2,
        mtime_sec: a.3,
        mtime_nsec: a.4,
        rdev,
        xattrs: a.5.clone(),
    };
    NodeSpec { meta, kind }
}

/// Builds a valid `ImageSpec` from random picks: each node is attached to a
/// random earlier directory.
fn build(picks: Vec<(Pick, usize, Vec<u8>, Attrs)>, root: Attrs) -> Generated {
    let mut nodes = vec![node(
        S_IFDIR,
        &root,
        NodeKind::Dir {
            entries: vec![],
            size: 4096,
        },
        0,
    )];
    let mut dirs = vec![0usize];
    let mut files = vec![];
    let mut blob_used = 0u64;
    for (i, (p, parent, nm, a)) in picks.into_iter().enumerate() {
        let parent = dirs[parent % dirs.len()];
        let mut nm = nm;
        nm.extend_from_slice(format!("-{i}").as_bytes());
        let name = Name::new(nm).expect("generated names are valid");
        let target = match p {
            Pick::HardLink(k) if !files.is_empty() => files[k % files.len()],
            Pick::HardLink(_) | Pick::Dir => {
                nodes.push(node(
                    S_IFDIR,
                    &a,
                    NodeKind::Dir {
                        entries: vec![],
                        size: 0,
                    },
                    0,
                ));
                dirs.push(nodes.len() - 1);
                nodes.len() - 1
            }
            Pick::File(parts) => {
                let chunks = parts
                    .iter()
                    .map(|&(hole, len, form)| {
                        if hole {
                            return ChunkSpec::hole(len);
                        }
                        let c = stored_chunk(blob_used, len, form);
                        blob_used += u64::from(c.frame_size());
                        c
                    })
                    .collect();
                nodes.push(node(S_IFREG, &a, NodeKind::File { chunks }, 0));
                files.push(nodes.len() - 1);
                nodes.len() - 1
            }
            Pick::Symlink(t) => {
                nodes.push(node(S_IFLNK, &a, NodeKind::Symlink { target: t }, 0));
                nodes.len() - 1
            }
            Pick::Special(t, r) => {
                let rdev = if t == S_IFCHR || t == S_IFBLK { r } else { 0 };
                nodes.push(node(t, &a, NodeKind::Special, rdev));
                nodes.len() - 1
            }
        };
        if let NodeKind::Dir { entries, .. } = &mut nodes[parent].kind {
            entries.push((name, target as u32));
        }
    }
    let blob = |b: u8| BlobInfo {
        id: [b; 32],
        compressed_size: blob_used.into(),
        uncompressed_size: blob_used.into(),
        chunk_count: 1.into(),
        compressor: COMPRESSOR_ZSTD.into(),
        flags: 0.into(),
        reserved: [0; 4],
    };
    let prefetch = files.iter().rev().map(|&f| f as u32).collect();
    let chunking = Chunking {
        mode: CHUNKING_FASTCDC,
        min: 1024,
        avg: 4096,
        max: 16384,
    };
    Generated {
        spec: ImageSpec {
            nodes,
            blobs: vec![blob(1), blob(2)],
            prefetch,
            chunking,
            compat_features: 0,
        },
    }
}

/// A data chunk at `at` in both blob address spaces: raw (form 0), zstd
/// (1) or a member of a batch frame (2) that starts at `at`.
fn stored_chunk(at: u64, len: u32, form: u8) -> ChunkSpec {
    let base = ChunkSpec {
        digest: *blake3::hash(&at.to_le_bytes()).as_bytes(),
        blob_index: (at % 2) as u32,
        compressed_offset: at,
        uncompressed_offset: at,
        compressed_size: len,
        uncompressed_size: len,
        ..Default::default()
    };
    match form {
        1 if len > 1 => ChunkSpec {
            compressed_size: len / 2,
            flags: CHUNK_ZSTD,
            ..base
        },
        2 => ChunkSpec {
            uncompressed_offset: at + u64::from(len / 2),
            compressed_size: 1,
            flags: CHUNK_ZSTD | CHUNK_BATCH,
            batch_offset: len / 2,
            batch_size: len + len / 2 + 1,
            ..base
        },
        _ => base,
    }
}

trait FrameSize {
    fn frame_size(&self) -> u32;
}

impl FrameSize for ChunkSpec {
    fn frame_size(&self) -> u32 {
        if self.batch_size > 0 {
            self.batch_size
        } else {
            self.uncompressed_size
        }
    }
}

fn tree() -> impl Strategy<Value = Generated> {
    (
        prop::collection::vec((pick(), any::<usize>(), name(), attrs()), 0..40),
        attrs(),
    )
        .prop_map(|(picks, root)| build(picks, root))
}

/// Reads a bootstrap back into the encoder's input form.
fn decode(b: &Bootstrap<'_>) -> Vec<NodeSpec> {
    (0..b.inode_count())
        .map(|ino| {
            let i = b.inode(ino).unwrap();
            let kind = match i.file_type() {
                S_IFDIR => NodeKind::Dir {
                    entries: b
                        .dir_entries(ino)
                        .unwrap()
                        .iter()
                        .map(|e| (Name::new(b.entry_name(e).unwrap()).unwrap(), e.ino.get()))
                        .collect(),
                    size: i.size.get(),
                },
                S_IFREG => NodeKind::File {
                    chunks: b
                        .file_chunks(ino)
                        .unwrap()
                        .iter()
                        .map(|c| ChunkSpec {
                            digest: c.digest,
                            blob_index: c.blob_index.get(),
                            compressed_offset: c.compressed_offset.get(),
                            uncompressed_offset: c.uncompressed_offset.get(),
                            compressed_size: c.compressed_size.get(),
                            uncompressed_size: c.uncompressed_size.get(),
                            flags: c.flags.get(),
                            batch_offset: c.batch_offset.get(),
                            batch_size: c.batch_size.get(),
                        })
                        .collect(),
                },
                S_IFLNK => NodeKind::Symlink {
                    target: b.symlink_target(ino).unwrap().to_vec(),
                },
                _ => NodeKind::Special,
            };
            let xattrs = b
                .xattrs(ino)
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        b.xattr_name(x).unwrap().to_vec(),
                        b.xattr_value(x).unwrap().to_vec(),
                    )
                })
                .collect();
            let meta = Meta {
                mode: i.mode.get(),
                uid: i.uid.get(),
                gid: i.gid.get(),
                mtime_sec: i.mtime_sec.get(),
                mtime_nsec: i.mtime_nsec.get(),
                rdev: i.rdev.get(),
                xattrs,
            };
            NodeSpec { meta, kind }
        })
        .collect()
}

/// The spec with directory entries and xattrs sorted, as they are stored.
fn canonical(spec: &ImageSpec) -> Vec<NodeSpec> {
    let mut nodes = spec.nodes.clone();
    for n in &mut nodes {
        n.meta.xattrs.sort();
        if let NodeKind::Dir { entries, .. } = &mut n.kind {
            entries.sort();
        }
    }
    nodes
}

/// Touches every accessor over the whole tree; must not panic whatever the
/// bytes were.
fn walk_all(b: &Bootstrap<'_>) {
    for ino in 0..b.inode_count() {
        for e in b.dir_entries(ino).unwrap_or_default() {
            let _ = b.entry_name(e);
        }
        for c in b.file_chunks(ino).unwrap_or_default() {
            let _ = b.chunk_blob(c);
        }
        for x in b.xattrs(ino).unwrap_or_default() {
            let _ = (b.xattr_name(x), b.xattr_value(x));
        }
        let _ = b.chunk_index_at(ino, 4097);
        let _ = b.symlink_target(ino);
        let _ = b.lookup(ino, b"a-1");
    }
    let _ = b.resolve(b"/a/b/../c");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_round_trip(g in tree()) {
        let bytes = encode(&g.spec).expect("generated trees encode");
        let again = encode(&g.spec).unwrap();
        let b = Bootstrap::open(&bytes).expect("encoder output validates");
        prop_assert_eq!(decode(&b), canonical(&g.spec));
        let prefetch: Vec<u32> = b.prefetch().iter().map(|p| p.ino.get()).collect();
        prop_assert_eq!(prefetch, g.spec.prefetch.clone());
        // Reproducible: the same input gives the same bytes.
        prop_assert!(again == bytes);
        // Every file offset maps to the chunk that holds it.
        for ino in 0..b.inode_count() {
            if let Ok(run) = b.file_chunks(ino) {
                for (k, c) in run.iter().enumerate() {
                    prop_assert_eq!(b.chunk_index_at(ino, c.file_offset.get()).unwrap(), Some(k));
                    prop_assert_eq!(b.chunk_index_at(ino, c.file_end() - 1).unwrap(), Some(k));
                }
                prop_assert_eq!(b.chunk_index_at(ino, b.inode(ino).unwrap().size.get()).unwrap(), None);
            }
        }
    }

    #[test]
    fn corruption_never_panics(g in tree(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), reseal: bool, cut in any::<Option<usize>>()) {
        let mut bytes = encode(&g.spec).unwrap();
        for (pos, val) in flips {
            let n = bytes.len();
            bytes[pos % n] ^= val | 1;
        }
        if let Some(c) = cut {
            let n = bytes.len();
            bytes.truncate(c % (n + 1));
        }
        if reseal {
            seal(&mut bytes);
        }
        let _ = Bootstrap::open(&bytes);
        if let Ok(b) = Bootstrap::parse(&bytes) {
            let _ = b.validate();
            walk_all(&b);
        }
    }
}

#[test]
fn resolve_paths() {
    let a = (0o755, 0, 0, 0, 0, vec![]);
    let g = build(
        vec![
            (Pick::Dir, 0, b"d".to_vec(), a.clone()),
            (Pick::File(vec![]), 1, b"f".to_vec(), a.clone()),
        ],
        a,
    );
    let bytes = encode(&g.spec).unwrap();
    let b = Bootstrap::open(&bytes).unwrap();
    assert_eq!(b.resolve(b"/").unwrap(), Some(0));
    assert_eq!(b.resolve(b"d-0").unwrap(), Some(1));
    assert_eq!(b.resolve(b"/d-0/f-1").unwrap(), Some(2));
    assert_eq!(b.resolve(b"/d-0/./f-1").unwrap(), Some(2));
    assert_eq!(b.resolve(b"/d-0/../d-0/f-1").unwrap(), Some(2));
    assert_eq!(b.resolve(b"/d-0/f-1/x").unwrap(), None);
    assert_eq!(b.resolve(b"/nope").unwrap(), None);
}

#[test]
fn resolve_following_symlinks() {
    let a = (0o755, 0, 0, 0, 0, vec![]);
    let g = build(
        vec![
            (Pick::Dir, 0, b"d".to_vec(), a.clone()),
            (Pick::File(vec![]), 1, b"f".to_vec(), a.clone()),
            (
                Pick::Symlink(b"d-0".to_vec()),
                0,
                b"rel".to_vec(),
                a.clone(),
            ),
            (
                Pick::Symlink(b"/d-0/f-1".to_vec()),
                1,
                b"abs".to_vec(),
                a.clone(),
            ),
            (
                Pick::Symlink(b"/loop-4".to_vec()),
                0,
                b"loop".to_vec(),
                a.clone(),
            ),
        ],
        a,
    );
    let bytes = encode(&g.spec).unwrap();
    let b = Bootstrap::open(&bytes).unwrap();
    let f = b.resolve(b"/d-0/f-1").unwrap();
    let follow = |p: &[u8]| b.resolve_following(p, 8).unwrap();
    // A relative target from the link's directory, in a middle component;
    // an absolute one from the root, as the last; `..` after a link.
    assert_eq!(follow(b"/rel-2/f-1"), f);
    assert_eq!(follow(b"/rel-2/abs-3"), f);
    assert_eq!(follow(b"/d-0/abs-3/../f-1"), None, "a file has no entries");
    assert_eq!(follow(b"/rel-2/../d-0/f-1"), f);
    // Not following: a link as the last component is the answer, in the
    // middle it names no directory.
    let rel = b.resolve(b"/rel-2").unwrap();
    assert!(rel.is_some() && rel != b.resolve(b"/d-0").unwrap());
    assert_eq!(b.resolve(b"/rel-2/f-1").unwrap(), None);
    // A loop ends after the hops allowed.
    assert_eq!(follow(b"/loop-4"), None);
    assert_eq!(b.resolve_following(b"/rel-2/f-1", 0).unwrap(), None);
}
