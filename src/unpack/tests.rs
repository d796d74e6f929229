//! Tests of `rafs unpack`: directory restore and tar output, against the
//! [`testimage::sample`] image. They run as root (chown, mknod, trusted.*
//! xattrs) and need GNU tar for the tar round trip.

use super::{dir, tar, UnpackError};
use crate::backend::file::FileBackend;
use crate::image::Image;
use crate::testimage::{self, hello_data, noise, Builder, Part, TestImage};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn unpack_dir(img: &TestImage, dest: &Path) -> Result<super::Stats, UnpackError> {
    let image = Image::open(&img.bootstrap).unwrap();
    let b = image.bootstrap().unwrap();
    dir::unpack_dir(&b, &FileBackend::new(&img.blobs), dest)
}

fn unpack_tar(img: &TestImage, dest: &Path) -> Result<super::Stats, UnpackError> {
    let image = Image::open(&img.bootstrap).unwrap();
    let b = image.bootstrap().unwrap();
    tar::unpack_tar(&b, &FileBackend::new(&img.blobs), dest)
}

/// Everything we restore about one file, for comparisons.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    nlink: u64,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    content: Option<[u8; 32]>,
}

fn meta(path: &Path) -> Meta {
    let m = fs::symlink_metadata(path).unwrap();
    let mut xattrs = BTreeMap::new();
    for name in xattr::list(path).unwrap() {
        let value = xattr::get(path, &name).unwrap().unwrap();
        xattrs.insert(name.to_string_lossy().into_owned(), value);
    }
    let content = m
        .is_file()
        .then(|| *blake3::hash(&fs::read(path).unwrap()).as_bytes());
    Meta {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: if m.is_dir() { 0 } else { m.size() },
        mtime: (m.mtime(), m.mtime_nsec()),
        rdev: m.rdev(),
        nlink: m.nlink(),
        target: m.is_symlink().then(|| fs::read_link(path).unwrap()),
        xattrs,
        content,
    }
}

/// Metadata of every path under `root`, keyed by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let m = meta(&path);
        if m.mode & 0o170000 == 0o040000 {
            for e in fs::read_dir(&path).unwrap() {
                todo.push(rel.join(e.unwrap().file_name()));
            }
        }
        out.insert(rel, m);
    }
    out
}

#[test]
fn unpack_dir_restores_every_type_and_metadata() {
    let img = testimage::sample();
    let dest = img.dir.path().join("out");
    let stats = unpack_dir(&img, &dest).unwrap();
    assert_eq!(stats.entries, 13);

    let root = meta(&dest);
    assert_eq!(root.mode, 0o040755);
    assert_eq!(root.mtime, (1_700_000_000, 123_456_789));

    let etc = meta(&dest.join("etc"));
    assert_eq!((etc.mode, etc.uid, etc.gid), (0o040750, 1000, 100));
    assert_eq!(etc.xattrs["user.dir"], b"d");
    assert_eq!(etc.mtime, (1_700_000_000, 123_456_789));

    let hello = meta(&dest.join("etc/hello"));
    assert_eq!((hello.mode, hello.uid, hello.gid), (0o100644, 1, 2));
    assert_eq!(hello.mtime, (1_600_000_000, 5));
    assert_eq!(hello.nlink, 2);
    assert_eq!(hello.xattrs["user.comment"], b"greeting");
    assert_eq!(hello.xattrs["trusted.t"], [0, 1, 2, 0xff]);
    assert_eq!(fs::read(dest.join("etc/hello")).unwrap(), hello_data());
    assert_eq!(fs::read(dest.join("etc/passwd2")).unwrap(), hello_data());
    let ino = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("etc/hello"), ino("hello2"));
    assert_ne!(ino("etc/hello"), ino("etc/passwd2"));

    let suid = meta(&dest.join("suid"));
    assert_eq!(suid.mode, 0o104755);
    assert_eq!(suid.mtime.1, 999_999_999);
    assert_eq!(suid.size, 8192);
    let cap = &suid.xattrs["security.capability"];
    assert_eq!(cap.len(), 20);
    assert_eq!(cap[5], 0x20, "capability lost (chown after setxattr?)");

    let link = meta(&dest.join("link"));
    assert_eq!(link.target.as_deref(), Some(Path::new("etc/hello")));
    assert_eq!(link.uid, 7);
    assert_eq!(link.xattrs["trusted.l"], b"on a symlink");
    assert_eq!(link.mtime, (1_700_000_000, 123_456_789));

    let ft = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().file_type();
    assert!(ft("chr").is_char_device());
    assert!(ft("blk").is_block_device());
    assert!(ft("fifo").is_fifo());
    assert!(ft("sock").is_socket());
    assert_eq!(meta(&dest.join("chr")).rdev, 0x0103);
    assert_eq!(meta(&dest.join("blk")).rdev, 0x0801);
    assert_eq!(meta(&dest.join("blk")).mode, 0o060660);
    assert_eq!(meta(&dest.join("sock")).mode, 0o140755);
    assert_eq!(meta(&dest.join("empty")).mode, 0o100600);
    assert_eq!(meta(&dest.join("empty")).size, 0);
}

#[test]
fn unpack_dir_leaves_holes_sparse() {
    let img = testimage::sample();
    let dest = img.dir.path().join("out");
    unpack_dir(&img, &dest).unwrap();
    let sparse = dest.join("sparse");
    let data = fs::read(&sparse).unwrap();
    assert_eq!(data.len(), (4 << 20) + 4096);
    assert!(data[..1 << 20].iter().all(|&b| b == 0));
    assert_eq!(&data[1 << 20..(1 << 20) + 4096], noise(4096, 1));
    assert!(data[(1 << 20) + 4096..].iter().all(|&b| b == 0));
    let blocks = fs::metadata(&sparse).unwrap().blocks();
    assert!(blocks * 512 <= 64 << 10, "{blocks} blocks allocated");
}

#[test]
fn unpack_dir_huge_hole_is_not_allocated() {
    let mut b = Builder::new();
    let parts = vec![
        Part::Hole(u32::MAX),
        Part::Data(b"tail".to_vec()),
        Part::Hole(u32::MAX),
    ];
    b.file(0, "huge", 0o644, parts);
    let img = b.finish();
    let dest = img.dir.path().join("out");
    unpack_dir(&img, &dest).unwrap();
    let m = fs::metadata(dest.join("huge")).unwrap();
    assert_eq!(m.len(), 2 * u64::from(u32::MAX) + 4);
    assert!(m.blocks() * 512 <= 64 << 10);
}

#[test]
fn unpack_dir_refuses_non_empty_destination() {
    let img = testimage::sample();
    let dest = img.dir.path().join("out");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("x"), b"x").unwrap();
    let err = unpack_dir(&img, &dest).unwrap_err();
    assert!(matches!(err, UnpackError::NotEmpty(_)), "{err}");
    let err = unpack_dir(&img, &dest.join("x")).unwrap_err();
    assert!(matches!(err, UnpackError::NotADirectory(_)), "{err}");
}

#[test]
fn unpack_corrupt_chunk_names_file_and_chunk() {
    let img = testimage::sample();
    // The last stored chunk is the second chunk of /suid (raw noise).
    let blob = img.blobs.join(img.blob_id.as_ref().unwrap());
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&blob, bytes).unwrap();
    let err = unpack_dir(&img, &img.dir.path().join("out")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/suid: chunk 1 (file offset 4096)"), "{msg}");
    assert!(msg.contains("digest mismatch"), "{msg}");
    let err = unpack_tar(&img, &img.dir.path().join("out.tar")).unwrap_err();
    assert!(matches!(err, UnpackError::Chunk { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("/suid"), "{err}");
}

#[test]
fn unpack_missing_blob_names_file() {
    let img = testimage::sample();
    fs::remove_file(img.blobs.join(img.blob_id.as_ref().unwrap())).unwrap();
    let msg = unpack_dir(&img, &img.dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("/etc/hello: chunk 0"), "{msg}");
    assert!(msg.contains("not found"), "{msg}");
}

/// The tar output, extracted by GNU tar, equals the directory unpack
/// (minus the socket, which tar cannot hold).
#[test]
fn tar_round_trips_through_gnu_tar() {
    let img = testimage::sample();
    let reference = img.dir.path().join("ref");
    unpack_dir(&img, &reference).unwrap();
    let archive = img.dir.path().join("out.tar");
    let stats = unpack_tar(&img, &archive).unwrap();
    assert_eq!(stats.skipped, 1);
    let extracted = img.dir.path().join("extracted");
    fs::create_dir(&extracted).unwrap();
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap();
    assert!(status.success());
    let mut want = snapshot(&reference);
    want.remove(Path::new("sock"));
    let got = snapshot(&extracted);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (path, m) in &want {
        assert_eq!(m, &got[path], "{}", path.display());
    }
}

#[test]
fn tar_long_names_and_links_use_pax() {
    let mut b = Builder::new();
    let long = "d".repeat(200);
    let d = b.dir(0, &long, 0o755);
    let name = "f".repeat(150);
    let f = b.file(d, &name, 0o644, vec![Part::Data(b"x".to_vec())]);
    b.link(0, "h".repeat(120), f);
    let target = format!("{long}/{name}");
    b.symlink(0, "s", target.as_bytes());
    let img = b.finish();
    let archive = img.dir.path().join("out.tar");
    unpack_tar(&img, &archive).unwrap();
    let extracted = img.dir.path().join("x");
    fs::create_dir(&extracted).unwrap();
    let ok = Command::new("tar")
        .arg("-xpf")
        .arg(&archive)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let file = extracted.join(&long).join(&name);
    assert_eq!(fs::read(&file).unwrap(), b"x");
    let hard = extracted.join("h".repeat(120));
    assert_eq!(
        fs::metadata(&hard).unwrap().ino(),
        fs::metadata(&file).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(extracted.join("s")).unwrap(),
        Path::new(&target)
    );
}

/// Names are bytes: a non-UTF-8 name, a backslash and a newline survive
/// both outputs; so do a pre-epoch mtime and ids beyond ustar's range.
#[test]
fn odd_names_times_and_ids_survive_dir_and_tar() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let mut b = Builder::new();
    let odd: &[u8] = b"caf\xe9\\new\nline";
    let f = b.file(0, odd, 0o640, vec![Part::Data(b"bytes".to_vec())]);
    let n = b.node(f);
    (n.meta.uid, n.meta.gid) = (3_000_000, 4_000_000);
    (n.meta.mtime_sec, n.meta.mtime_nsec) = (-86_400, 250_000_000);
    b.symlink(0, "s", odd);
    let img = b.finish();
    let reference = img.dir.path().join("ref");
    unpack_dir(&img, &reference).unwrap();
    let m = meta(&reference.join(OsStr::from_bytes(odd)));
    assert_eq!(
        (m.uid, m.gid, m.mtime),
        (3_000_000, 4_000_000, (-86_400, 250_000_000))
    );
    let archive = img.dir.path().join("out.tar");
    unpack_tar(&img, &archive).unwrap();
    let extracted = img.dir.path().join("x");
    fs::create_dir(&extracted).unwrap();
    let ok = Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert_eq!(snapshot(&reference), snapshot(&extracted));
}

/// Every entry of the tar at `path` with its data, as the `tar` crate reads
/// them.
fn read_tar(path: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut reader = ::tar::Archive::new(fs::File::open(path)?);
    let mut out = Vec::new();
    for e in reader.entries()? {
        let mut e = e?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data)?;
        out.push((e.path()?.into_owned(), data));
    }
    Ok(out)
}

/// A chunk failing verification must leave a tar that readers reject, not
/// one that ends cleanly after a zero-filled file: `rafs unpack --tar - |
/// tar -x` must not extract zeros in place of the corrupt data.
#[test]
fn tar_of_corrupt_chunk_is_not_a_complete_archive() {
    let mut b = Builder::new();
    b.file(0, "f", 0o644, vec![Part::Data(noise(600, 9))]);
    let img = b.finish();
    let blob = img.blobs.join(img.blob_id.as_ref().unwrap());
    let mut bytes = fs::read(&blob).unwrap();
    bytes[0] ^= 1;
    fs::write(&blob, bytes).unwrap();
    let archive = img.dir.path().join("out.tar");
    let err = unpack_tar(&img, &archive).unwrap_err();
    assert!(matches!(err, UnpackError::Chunk { index: 0, .. }), "{err}");
    assert_incomplete(&archive, &img.dir.path().join("x"));
}

/// Fails if the `tar` crate reads `archive` without error or GNU tar
/// extracts it (into `extracted`, created here) with success: a cut-off
/// archive must not pass for a whole one.
fn assert_incomplete(archive: &Path, extracted: &Path) {
    let read = read_tar(archive).map(|entries| {
        let show = |(p, d): (PathBuf, Vec<u8>)| {
            let zeros = d.iter().all(|&b| b == 0);
            format!("{} ({} bytes, all zero: {zeros})", p.display(), d.len())
        };
        entries.into_iter().map(show).collect::<Vec<_>>()
    });
    assert!(
        read.is_err(),
        "the tar crate read a complete archive: {read:?}"
    );
    fs::create_dir(extracted).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(extracted)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "GNU tar extracted the partial archive");
}

/// A device number a ustar header cannot hold (major or minor over
/// 2097151, which needs `rdev` bits above 32) fails the tar instead of
/// being cut to its low octal digits: the `tar` crate's setters truncate
/// silently, and readers then create another device.
#[test]
fn tar_refuses_device_numbers_ustar_cannot_hold() {
    use rafs_format::layout::S_IFCHR;
    let mut b = Builder::new();
    // glibc makedev(1, 1 << 21): minor bits 8.. live in rdev bits 20.. .
    let rdev = (1u64 << 8) | ((1u64 << 21) << 12);
    b.special(0, "chr", S_IFCHR | 0o600, rdev);
    let img = b.finish();
    let archive = img.dir.path().join("out.tar");
    let r = unpack_tar(&img, &archive);
    let read_back = || {
        let mut a = ::tar::Archive::new(fs::File::open(&archive).unwrap());
        let mut entries = a.entries().unwrap();
        entries.next(); // ./
        let e = entries.next().unwrap().unwrap();
        let h = e.header();
        (h.device_major().unwrap(), h.device_minor().unwrap())
    };
    assert!(
        matches!(r, Err(UnpackError::Tar { .. })),
        "{r:?}: the archive holds device {:?}, the image 1:2097152",
        r.as_ref().ok().map(|_| read_back())
    );
}

/// A failure between two entries (here a device number no header can hold,
/// after a complete file) must not leave an archive that ends cleanly at an
/// entry boundary: readers would take it for the whole image.
#[test]
fn tar_failing_between_entries_is_not_a_complete_archive() {
    use rafs_format::layout::S_IFCHR;
    let mut b = Builder::new();
    b.file(0, "a", 0o644, vec![Part::Data(b"complete".to_vec())]);
    b.special(0, "b", S_IFCHR | 0o600, (1u64 << 8) | ((1u64 << 21) << 12));
    let img = b.finish();
    let archive = img.dir.path().join("out.tar");
    let err = unpack_tar(&img, &archive).unwrap_err();
    assert!(matches!(err, UnpackError::Tar { .. }), "{err}");
    assert_incomplete(&archive, &img.dir.path().join("x"));
}
