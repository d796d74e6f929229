//! Unit tests of the core on the hand-built sample image (every file type,
//! holes, hardlinks, xattrs) and on corrupted blobs.

use super::*;
use crate::backend::file::FileBackend;
use crate::testimage::{hello_data, ino, noise, sample, Builder, Part};

fn open(t: &crate::testimage::TestImage) -> RafsFs {
    let image = Image::open(&t.bootstrap).unwrap();
    RafsFs::new(
        image,
        Arc::new(FileBackend::new(&t.blobs)),
        FetchConfig::default(),
    )
    .unwrap()
}

#[test]
fn lookup_and_getattr() {
    let t = sample();
    let fs = open(&t);
    let etc = fs.lookup(0, b"etc").unwrap();
    assert_eq!(
        (etc.ino, etc.kind, etc.perm, etc.uid, etc.gid),
        (ino::ETC, FileKind::Dir, 0o750, 1000, 100)
    );
    let hello = fs.lookup(ino::ETC, b"hello").unwrap();
    assert_eq!(
        (hello.kind, hello.size, hello.nlink),
        (FileKind::File, hello_data().len() as u64, 2)
    );
    assert_eq!((hello.mtime_sec, hello.mtime_nsec), (1_600_000_000, 5));
    // The hardlink is the same inode.
    assert_eq!(fs.lookup(0, b"hello2").unwrap().ino, ino::HELLO);
    assert_eq!(fs.lookup(ino::ETC, b"..").unwrap().ino, 0);
    assert_eq!(fs.lookup(0, b".").unwrap().ino, 0);
    assert!(matches!(fs.lookup(0, b"nope"), Err(FsError::NotFound)));
    assert!(matches!(fs.lookup(ino::HELLO, b"x"), Err(FsError::NotDir)));
    assert!(matches!(fs.getattr(9999), Err(FsError::NotFound)));
    let chr = fs.getattr(ino::CHR).unwrap();
    assert_eq!((chr.kind, chr.rdev), (FileKind::CharDevice, 0x0103));
    assert_eq!(fs.getattr(ino::SOCK).unwrap().kind, FileKind::Socket);
    assert_eq!(fs.getattr(ino::SUID).unwrap().perm, 0o4755);
    // st_blocks counts stored data only: the sparse file has 4 KiB of it.
    let sparse = fs.getattr(ino::SPARSE).unwrap();
    assert_eq!((sparse.size, sparse.blocks), ((4 << 20) + 4096, 8));
}

#[test]
fn readdir_offsets_resume() {
    let t = sample();
    let fs = open(&t);
    let mut all = Vec::new();
    fs.readdir(0, 0, |e| {
        all.push((e.name.to_vec(), e.ino, e.next));
        true
    })
    .unwrap();
    let names: Vec<&[u8]> = all.iter().map(|(n, _, _)| n.as_slice()).collect();
    assert_eq!(&names[..3], [&b"."[..], b"..", b"blk"]);
    assert!(names.windows(2).skip(2).all(|w| w[0] < w[1]), "sorted");
    // Resume from every offset: the rest is the same suffix.
    for (k, (_, _, next)) in all.iter().enumerate() {
        let mut rest = Vec::new();
        fs.readdir(0, *next, |e| {
            rest.push(e.name.to_vec());
            rest.len() < 3
        })
        .unwrap();
        let want: Vec<Vec<u8>> = all[k + 1..]
            .iter()
            .take(3)
            .map(|(n, _, _)| n.clone())
            .collect();
        assert_eq!(rest, want);
    }
    let mut plus = 0;
    fs.readdirplus(ino::ETC, 0, |e, a| {
        assert_eq!(e.ino, a.ino);
        plus += 1;
        true
    })
    .unwrap();
    assert_eq!(plus, 4); // . .. hello passwd2
    assert!(matches!(
        fs.readdir(ino::HELLO, 0, |_| true),
        Err(FsError::NotDir)
    ));
}

#[test]
fn reads_match_the_data() {
    let t = sample();
    let fs = open(&t);
    let hello = hello_data();
    assert_eq!(fs.read(ino::HELLO, 0, 1 << 20).unwrap(), hello);
    assert_eq!(fs.read(ino::HELLO, 5, 10).unwrap(), &hello[5..15]);
    assert!(fs
        .read(ino::HELLO, hello.len() as u64, 10)
        .unwrap()
        .is_empty());
    assert!(fs.read(ino::HELLO, u64::MAX, 10).unwrap().is_empty());
    // Sparse: 1 MiB hole, 4 KiB data, 3 MiB hole.
    let all = fs.read(ino::SPARSE, 0, 8 << 20).unwrap();
    assert_eq!(all.len(), (4 << 20) + 4096);
    assert!(all[..1 << 20].iter().all(|&x| x == 0));
    assert_eq!(&all[1 << 20..(1 << 20) + 4096], noise(4096, 1));
    assert!(all[(1 << 20) + 4096..].iter().all(|&x| x == 0));
    // A read spanning the two chunks of /suid.
    let want = [noise(4096, 2), noise(4096, 3)].concat();
    assert_eq!(fs.read(ino::SUID, 4000, 200).unwrap(), &want[4000..4200]);
    assert!(fs.read(ino::EMPTY, 0, 10).unwrap().is_empty());
    assert!(matches!(fs.read(ino::ETC, 0, 1), Err(FsError::IsDir)));
    assert!(matches!(fs.read(ino::LINK, 0, 1), Err(FsError::Invalid)));
    // The second read of a chunk is an LRU hit, not a decompression.
    let m = fs.metrics();
    let before = Metrics::get(&m.chunks.chunk_decompressions);
    fs.read(ino::HELLO, 0, 100).unwrap();
    assert_eq!(Metrics::get(&m.chunks.chunk_decompressions), before);
    assert!(Metrics::get(&m.chunks.lru_hits) > 0);
}

#[test]
fn holes_never_touch_a_blob() {
    let mut b = Builder::new();
    let f = b.file(0, "holes", 0o644, vec![Part::Hole(1 << 30)]);
    let t = b.finish();
    let fs = open(&t);
    assert_eq!(fs.read(f, 12345, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(Metrics::get(&fs.metrics().chunks.backend_bytes), 0);
}

#[test]
fn corrupt_chunk_fails_only_its_file() {
    let t = sample();
    let blob = t.blobs.join(t.blob_id.as_ref().unwrap());
    let fs = open(&t);
    // Flip a byte inside /suid's first chunk (raw noise).
    let b = fs.image().bootstrap().unwrap();
    let c = b.file_chunks(ino::SUID).unwrap()[0];
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[c.compressed_offset.get() as usize + 10] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();
    let err = fs.read(ino::SUID, 0, 100).unwrap_err();
    assert!(
        matches!(err, FsError::Data { ino: ino::SUID, .. }),
        "{err:?}"
    );
    // The other chunk of the same file, and other files, still read.
    assert_eq!(fs.read(ino::SUID, 4096, 4096).unwrap(), noise(4096, 3));
    assert_eq!(fs.read(ino::HELLO, 0, 1 << 20).unwrap(), hello_data());
    assert_eq!(Metrics::get(&fs.metrics().io_errors), 1);
}

#[test]
fn missing_blob_is_a_data_error() {
    let t = sample();
    std::fs::remove_file(t.blobs.join(t.blob_id.as_ref().unwrap())).unwrap();
    let fs = open(&t);
    assert!(matches!(
        fs.read(ino::HELLO, 0, 10),
        Err(FsError::Data { .. })
    ));
    assert_eq!(fs.read(ino::SPARSE, 0, 10).unwrap(), vec![0; 10]);
}

#[test]
fn symlinks_xattrs_statfs_and_writes() {
    let t = sample();
    let fs = open(&t);
    assert_eq!(fs.readlink(ino::LINK).unwrap(), b"etc/hello");
    assert!(matches!(fs.readlink(ino::HELLO), Err(FsError::Invalid)));
    assert_eq!(
        fs.getxattr(ino::HELLO, b"user.comment").unwrap(),
        b"greeting"
    );
    assert_eq!(
        fs.getxattr(ino::HELLO, b"trusted.t").unwrap(),
        [0, 1, 2, 0xff]
    );
    assert!(matches!(
        fs.getxattr(ino::HELLO, b"user.nope"),
        Err(FsError::NoAttr)
    ));
    assert_eq!(
        fs.listxattr(ino::HELLO).unwrap(),
        b"trusted.t\0user.comment\0"
    );
    assert_eq!(fs.listxattr(ino::EMPTY).unwrap(), b"");
    let st = fs.statfs().unwrap();
    assert_eq!((st.files, st.bsize, st.namelen), (12, 4096, 255));
    assert!(st.blocks > 0);
    assert!(matches!(
        fs.access(ino::HELLO, W_OK),
        Err(FsError::ReadOnly)
    ));
    assert!(fs.access(ino::HELLO, 4).is_ok());
}

#[test]
fn error_paths_are_first_paths_in_name_order() {
    let mut b = Builder::new();
    let d = b.dir(0, "d", 0o755);
    let e = b.dir(d, "e", 0o755);
    let f = b.file(e, "f", 0o644, vec![Part::Hole(10)]);
    b.link(0, "z", f);
    b.link(0, "a", f);
    let t = b.finish();
    let fs = open(&t);
    let boot = fs.image().bootstrap().unwrap();
    // The reference: the first visit of each inode in the tree walk.
    let mut want: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    crate::image::walk::walk(&boot, |v| {
        want.entry(v.ino).or_insert_with(|| v.path.to_vec());
        Ok::<(), rafs_format::FormatError>(())
    })
    .unwrap();
    assert_eq!(want[&f], b"/a");
    for ino in 0..boot.inode_count() {
        assert_eq!(fs.path_of(&boot, ino).as_ref(), want.get(&ino), "{ino}");
    }
    assert_eq!(fs.path_of(&boot, e).unwrap(), b"/d/e");
    assert_eq!(fs.path_of(&boot, 9999), None);
}

#[test]
fn getxattr_finds_every_name_of_a_large_set() {
    let mut b = Builder::new();
    let f = b.file(0, "f", 0o644, vec![Part::Hole(10)]);
    b.node(f).meta.xattrs = (0..300u32)
        .map(|i| (format!("user.{i}").into_bytes(), i.to_le_bytes().to_vec()))
        .collect();
    let t = b.finish();
    let fs = open(&t);
    for i in 0..300u32 {
        let name = format!("user.{i}");
        assert_eq!(fs.getxattr(f, name.as_bytes()).unwrap(), i.to_le_bytes());
    }
    for missing in [&b"user."[..], b"user.3000", b"a", b"zzz", b""] {
        assert!(matches!(fs.getxattr(f, missing), Err(FsError::NoAttr)));
    }
}
