//! Tar source tests: archives built in memory with the `tar` crate (and by
//! hand where the crate refuses, e.g. `..` paths), then whole builds.

use super::*;
use crate::builder::build;
use crate::builder::tests::{noise, opts, Built};
use crate::testimage::{peak_rss_growth, RSS_BOUND};
use std::fs;
use std::io::Write;

fn header(path: &str, etype: EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(etype);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_000);
    h.set_uid(0);
    h.set_gid(0);
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
    h
}

/// A tar archive under construction.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let h = header(path, EntryType::Regular, data.len() as u64, 0o644);
        self.0.append(&h, data).unwrap();
        self
    }
    fn entry(&mut self, path: &str, etype: EntryType, mode: u32) -> &mut Self {
        self.0
            .append(&header(path, etype, 0, mode), &[][..])
            .unwrap();
        self
    }
    fn link(&mut self, path: &str, etype: EntryType, target: &str) -> &mut Self {
        let mut h = header(path, etype, 0, 0o777);
        h.set_link_name(target).unwrap();
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }
    fn pax(&mut self, exts: &[(&str, &[u8])]) -> &mut Self {
        self.0.append_pax_extensions(exts.iter().copied()).unwrap();
        self
    }
    fn bytes(&mut self) -> Vec<u8> {
        self.0
            .get_ref()
            .clone()
            .into_iter()
            .chain([0u8; 1024])
            .collect()
    }
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, bytes).unwrap();
        p
    }
    fn build(&self, bytes: &[u8]) -> Built {
        Built::new(&opts(&self.write("layer", bytes), &self.out()))
    }
    fn fail(&self, bytes: &[u8]) -> BuildError {
        let err = build(&opts(&self.write("layer", bytes), &self.out())).unwrap_err();
        assert!(!self.out().exists(), "failed build left OUTDIR behind");
        err
    }
}

use std::path::PathBuf;

#[test]
fn implicit_parents_replacement_and_root_entry() {
    let mut t = Tar::new();
    t.file("./a/b/c", b"first")
        .entry("./", EntryType::Directory, 0o700)
        .file("a/b/c", b"second")
        .entry("x/", EntryType::Directory, 0o750)
        .file("x/y", b"y")
        .entry("x", EntryType::Directory, 0o711)
        .file(".wh.gone", b"")
        .entry("dir/../fifo", EntryType::Fifo, 0o600);
    let c = Case::new();
    let built = c.build(&t.bytes());
    assert_eq!(built.read("a/b/c"), b"second");
    let a = built.inode("a");
    assert_eq!(
        (a.mode.get(), a.uid.get(), a.mtime_sec.get()),
        (S_IFDIR | 0o755, 0, 0)
    );
    assert_eq!(built.inode("").mode.get(), S_IFDIR | 0o700);
    // A directory entry for an existing directory keeps its entries.
    assert_eq!(built.inode("x").mode.get(), S_IFDIR | 0o711);
    assert_eq!(built.read("x/y"), b"y");
    assert_eq!(built.inode(".wh.gone").mode.get(), S_IFREG | 0o644);
    assert_eq!(built.inode("fifo").mode.get(), S_IFIFO | 0o600);
    // `..` is resolved lexically: "dir" was never created.
    assert!(built.b().resolve(b"dir").unwrap().is_none());
    assert_eq!(built.summary.files, 3);
}

#[test]
fn dotdot_escape_is_an_error() {
    for path in ["../evil", "a/../../evil", "/../evil", "./a/./../.."] {
        let mut t = Tar::new();
        t.file("ok", b"fine").file(path, b"evil");
        let err = Case::new().fail(&t.bytes());
        assert!(
            matches!(&err, BuildError::TarEscape { path: p } if p == path),
            "{err}"
        );
        assert!(err.to_string().contains(path));
    }
    let mut t = Tar::new();
    t.file("a", b"x").link("b", EntryType::Link, "../a");
    assert!(matches!(
        Case::new().fail(&t.bytes()),
        BuildError::TarEscape { .. }
    ));
    // Absolute paths without `..` are taken relative to the root.
    let mut t = Tar::new();
    t.file("/abs/file", b"z");
    assert_eq!(Case::new().build(&t.bytes()).read("abs/file"), b"z");
}

#[test]
fn pax_mtime_ids_and_xattrs() {
    let mut t = Tar::new();
    t.pax(&[
        ("mtime", b"1700000000.123456789"),
        ("uid", b"4000000000"),
        ("gid", b"70000"),
        ("SCHILY.xattr.user.plain", b"raw\0value"),
        ("SCHILY.xattr.security.capability", b"\x01\x02"),
        ("LIBARCHIVE.xattr.trusted.a%3Db", b"aGVsbG8="),
    ])
    .file("f", b"data")
    .pax(&[("mtime", b"-1.25")])
    .entry("old", EntryType::Directory, 0o755);
    let built = Case::new().build(&t.bytes());
    let f = built.inode("f");
    assert_eq!(
        (f.mtime_sec.get(), f.mtime_nsec.get()),
        (1_700_000_000, 123_456_789)
    );
    assert_eq!((f.uid.get(), f.gid.get()), (4_000_000_000, 70000));
    assert_eq!(
        built.xattr("f", "user.plain").as_deref(),
        Some(&b"raw\0value"[..])
    );
    assert_eq!(
        built.xattr("f", "security.capability").as_deref(),
        Some(&b"\x01\x02"[..])
    );
    assert_eq!(
        built.xattr("f", "trusted.a=b").as_deref(),
        Some(&b"hello"[..])
    );
    let old = built.inode("old");
    assert_eq!(
        (old.mtime_sec.get(), old.mtime_nsec.get()),
        (-2, 750_000_000)
    );
}

#[test]
fn pax_time_and_base64_parsing() {
    assert_eq!(parse_pax_time("12"), Some((12, 0)));
    assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
    assert_eq!(parse_pax_time("12.0000000019"), Some((12, 1)));
    assert_eq!(parse_pax_time("-3"), Some((-3, 0)));
    assert_eq!(parse_pax_time("-0.5"), Some((-1, 500_000_000)));
    assert_eq!(parse_pax_time("x"), None);
    assert_eq!(parse_pax_time("1.2.3"), None);
    assert_eq!(base64_decode(b"aGVsbG8="), Some(b"hello".to_vec()));
    assert_eq!(base64_decode(b"aGVsbG8"), Some(b"hello".to_vec()));
    assert_eq!(base64_decode(b""), Some(vec![]));
    assert_eq!(base64_decode(b"a"), None);
    assert_eq!(base64_decode(b"a!bc"), None);
}

#[test]
fn hardlinks_symlinks_and_devices() {
    let mut t = Tar::new();
    t.file("dir/a", &noise(9000, 1))
        .link("b", EntryType::Link, "./dir/a")
        .link("sym", EntryType::Symlink, "/no/such/target")
        .entry("dir/a2", EntryType::Fifo, 0o644);
    let mut h = header("dev", EntryType::Char, 0, 0o620);
    h.set_device_major(4).unwrap();
    h.set_device_minor(65).unwrap();
    h.set_cksum();
    t.0.append(&h, &[][..]).unwrap();
    let c = Case::new();
    let built = c.build(&t.bytes());
    assert_eq!(built.ino("b"), built.ino("dir/a"));
    assert_eq!(built.inode("b").nlink.get(), 2);
    assert_eq!(built.read("b"), noise(9000, 1));
    assert_eq!(
        built.b().symlink_target(built.ino("sym")).unwrap(),
        b"/no/such/target"
    );
    assert_eq!(
        built.inode("dev").rdev.get(),
        nix::sys::stat::makedev(4, 65)
    );
    assert_eq!(built.inode("dev").mode.get(), S_IFCHR | 0o620);

    let mut t = Tar::new();
    t.link("b", EntryType::Link, "missing");
    assert!(matches!(
        Case::new().fail(&t.bytes()),
        BuildError::CorruptArchive { .. }
    ));
}

#[test]
fn long_names_via_gnu_and_pax() {
    let long = format!("{}/{}", "d".repeat(200), "f".repeat(200));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, &long, &b"gnu"[..]).unwrap();
    let c = Case::new();
    let built = c.build(&b.into_inner().unwrap());
    assert_eq!(built.read(&long), b"gnu");

    let mut t = Tar::new();
    t.pax(&[("path", long.as_bytes())]).file("short", b"pax");
    assert_eq!(Case::new().build(&t.bytes()).read(&long), b"pax");
}

#[test]
fn gzip_and_zstd_detected_by_magic() {
    let mut t = Tar::new();
    t.file("f", &noise(50_000, 2));
    let plain = t.bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let mut images = Vec::new();
    for bytes in [&plain, &gz, &zst] {
        let c = Case::new();
        let built = c.build(bytes);
        assert_eq!(built.read("f"), noise(50_000, 2));
        images.push(built.boot.clone());
    }
    assert!(images.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn truncated_and_garbage_archives_fail_cleanly() {
    let mut t = Tar::new();
    t.file("first", b"ok").file("big", &noise(100_000, 3));
    let bytes = t.bytes();
    let err = Case::new().fail(&bytes[..3000]);
    assert!(
        matches!(&err, BuildError::CorruptArchive { path, .. } if path == "big"),
        "{err}"
    );
    let err = Case::new().fail(&bytes[..700]);
    assert!(matches!(err, BuildError::CorruptArchive { .. }), "{err}");
    let err = Case::new().fail(&noise(5000, 4));
    assert!(matches!(err, BuildError::CorruptArchive { .. }), "{err}");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    let gz = gz.finish().unwrap();
    let err = Case::new().fail(&gz[..gz.len() / 2]);
    assert!(matches!(err, BuildError::CorruptArchive { .. }), "{err}");
}

#[test]
fn empty_and_zero_data_files() {
    let mut t = Tar::new();
    t.file("empty", b"").file("zeros", &vec![0u8; 20_000]);
    let built = Case::new().build(&t.bytes());
    assert_eq!(built.inode("empty").size.get(), 0);
    assert!(built.chunks("zeros").iter().all(|c| c.is_hole()));
    assert_eq!(built.read("zeros"), vec![0u8; 20_000]);
    assert_eq!(built.b().blobs().len(), 0);
}

#[test]
fn pax_xattr_value_with_newlines_and_nul() {
    // Records are framed by length; the tar crate's newline split cannot
    // parse this, the recorded raw header can.
    let value = b"line one\nline two\n\0end";
    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.user.multi", value), ("mtime", b"5.5")])
        .file("f", b"data")
        .file("g", b"more");
    let c = Case::new();
    let built = c.build(&t.bytes());
    assert_eq!(built.xattr("f", "user.multi").as_deref(), Some(&value[..]));
    assert_eq!(built.inode("f").mtime_nsec.get(), 500_000_000);
    assert_eq!(built.read("g"), b"more");
    assert_eq!(built.inode("g").xattr_count.get(), 0);
}

/// A zstd layer: `head`, `n` bytes `fill`, then `tail`. Such a run
/// compresses so well that 512 MiB of it take 16 KiB.
fn zstd_layer(head: &[u8], fill: u8, n: u64, tail: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.write_all(head).unwrap();
    let run = vec![fill; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(run.len() as u64);
        enc.write_all(&run[..k as usize]).unwrap();
        left -= k;
    }
    enc.write_all(tail).unwrap();
    enc.finish().unwrap()
}

/// A zstd layer: an extension header of type `etype` whose data is one
/// valid PAX record (`comment`) of 512 MiB, then a file `f`.
fn huge_pax_layer(etype: EntryType) -> Vec<u8> {
    huge_pax_layer_after(&[], etype)
}

/// [`huge_pax_layer`] after the archive bytes `before`.
fn huge_pax_layer_after(before: &[u8], etype: EntryType) -> Vec<u8> {
    const CLAIMED: u64 = 512 << 20;
    let head = [
        before,
        header("pax", etype, CLAIMED, 0o644).as_bytes(),
        &b"536870912 comment="[..],
    ]
    .concat();
    let tail = [&b"\n"[..], &Tar::new().file("f", b"after").bytes()].concat();
    zstd_layer(&head, b'x', CLAIMED - 19, &tail)
}

/// Fails unless building a layer of `layer_len` bytes grew the peak RSS
/// by less than [`RSS_BOUND`].
fn assert_bounded(grew: u64, layer_len: u64) {
    assert!(
        grew < RSS_BOUND,
        "building a {} KiB layer grew the peak RSS by {} MiB",
        layer_len >> 10,
        grew >> 20
    );
}

#[test]
fn skipped_entry_data_is_not_buffered() {
    // A directory claiming 512 MiB of data, which the tar crate skips (the
    // builder reads no directory data), then a file.
    const CLAIMED: u64 = 512 << 20;
    let dir = header("d/", EntryType::Directory, CLAIMED, 0o755);
    let tail = Tar::new().file("f", b"after").bytes();
    let layer = zstd_layer(dir.as_bytes(), 0, CLAIMED, &tail);
    let c = Case::new();
    let (built, grew) = peak_rss_growth(|| c.build(&layer));
    assert_bounded(grew, layer.len() as u64);
    assert_eq!(built.inode("d").mode.get(), S_IFDIR | 0o755);
    assert_eq!(built.read("f"), b"after");
}

#[test]
fn oversized_extension_headers_are_a_corrupt_archive() {
    // A PAX `x` header of 512 MiB (the tar crate reads it whole): refused
    // past the cap, having buffered about the cap at most.
    let c = Case::new();
    let layer = c.write("layer", &huge_pax_layer(EntryType::XHeader));
    let (built, grew) = peak_rss_growth(|| build(&opts(&layer, &c.out())));
    assert_bounded(grew, fs::metadata(&layer).unwrap().len());
    let err = built.unwrap_err();
    assert!(!c.out().exists(), "failed build left OUTDIR behind");
    let capped = |err: &BuildError| {
        matches!(err, BuildError::CorruptArchive { .. }) && err.to_string().contains("16 MiB")
    };
    assert!(capped(&err), "{err}");
    // A GNU long name (`L`) over the cap, likewise.
    let mut long = tar::Header::new_gnu();
    long.set_entry_type(EntryType::GNULongName);
    long.set_size(32 << 20);
    long.set_cksum();
    let tail = Tar::new().file("f", b"after").bytes();
    let layer = zstd_layer(long.as_bytes(), b'a', 32 << 20, &tail);
    let err = Case::new().fail(&layer);
    assert!(capped(&err), "{err}");
}

#[test]
fn global_pax_header_data_is_skipped_not_buffered() {
    // A global PAX header (`g`, whose records the builder ignores) of
    // 512 MiB, then a file.
    let layer = huge_pax_layer(EntryType::XGlobalHeader);
    let c = Case::new();
    let (built, grew) = peak_rss_growth(|| c.build(&layer));
    assert_bounded(grew, layer.len() as u64);
    assert_eq!(built.read("f"), b"after");
}

/// A GNU sparse entry `s` whose header claims `claimed` bytes of data,
/// with four 512-byte segments stored (2 KiB of 'a'), after a PAX header
/// whose `size` record says 2048 (the stored bytes, which the `tar` crate
/// goes by).
fn gnu_sparse_with_pax_size(claimed: u64) -> Vec<u8> {
    let mut pax = Tar::new();
    pax.pax(&[("size", b"2048")]);
    let h = gnu_sparse_header(claimed, 3 * 1024 + 512, false);
    [pax.0.get_ref().as_slice(), h.as_bytes(), &[b'a'; 2048]].concat()
}

/// The header of a GNU sparse entry `s` claiming `size` bytes of data, a
/// file of `real_size` bytes whose first four segments are 512 bytes at
/// each KiB; its sparse map goes on in an extension header if `extended`.
fn gnu_sparse_header(size: u64, real_size: u64, extended: bool) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_path("s").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_000);
    h.set_uid(0);
    h.set_gid(0);
    let gnu = h.as_gnu_mut().unwrap();
    for (i, seg) in gnu.sparse.iter_mut().enumerate() {
        seg.set_offset(i as u64 * 1024);
        seg.set_length(512);
    }
    gnu.set_real_size(real_size);
    gnu.set_is_extended(extended);
    h.set_cksum();
    h
}

// A GNU sparse entry's data is as long as its PAX `size` record says when
// it has one (the `tar` crate steps over that much); the builder went by
// the header's size field, so a header claiming 1 GiB moved the recording
// of the next headers 1 GiB on, past a 512 MiB PAX header that the `tar`
// crate then read whole, outside the 16 MiB cap (+1286 MiB, and the build
// succeeded).
#[test]
fn a_sparse_entry_cannot_move_the_next_headers_out_of_the_cap() {
    let layer = huge_pax_layer_after(&gnu_sparse_with_pax_size(1 << 30), EntryType::XHeader);
    let c = Case::new();
    let path = c.write("layer", &layer);
    let (built, grew) = peak_rss_growth(|| build(&opts(&path, &c.out())));
    assert_bounded(grew, fs::metadata(&path).unwrap().len());
    let err = built.unwrap_err();
    assert!(
        matches!(err, BuildError::CorruptArchive { .. }) && err.to_string().contains("16 MiB"),
        "{err}"
    );
    // The same entry without the huge header after it builds: its size is
    // its segments' extent, its data the stored 2 KiB.
    let ok = [
        gnu_sparse_with_pax_size(1 << 30),
        Tar::new().file("f", b"after").bytes(),
    ]
    .concat();
    let c = Case::new();
    let built = c.build(&ok);
    let s = built.read("s");
    assert_eq!(s.len(), 3 * 1024 + 512);
    assert!(s.chunks(1024).all(|k| k[..512] == [b'a'; 512]));
    assert_eq!(built.read("f"), b"after");
}

// A sparse map going on in an extension header: the data starts after it,
// so the next header's offset is not known from the entry; the next
// entry's PAX records then come from the `tar` crate's parser.
#[test]
fn a_sparse_map_in_extension_headers_and_the_next_pax_path() {
    let h = gnu_sparse_header(5 * 512, 4 * 1024 + 512, true);
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.sparse[0].set_offset(4 * 1024);
    ext.sparse[0].set_length(512);
    let mut next = Tar::new();
    next.pax(&[("path", b"long/name")]).file("short", b"after");
    let layer = [
        &h.as_bytes()[..],
        ext.as_bytes(),
        &[b'a'; 4 * 512],
        &[b'b'; 512],
        &next.bytes(),
    ]
    .concat();
    let c = Case::new();
    let built = c.build(&layer);
    let s = built.read("s");
    assert_eq!(s.len(), 4 * 1024 + 512);
    assert_eq!(
        &s[4096..],
        &[b'b'; 512][..],
        "the segment of the extension header"
    );
    assert_eq!(built.read("long/name"), b"after");
}
