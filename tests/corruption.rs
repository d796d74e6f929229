//! Corrupted images: every kind of damage must be refused with a typed
//! decoder error, and `rafs check` / `rafs unpack` must fail naming it.
//!
//! Bootstrap damage is located through the superblock's table references
//! (offsets from docs/FORMAT.md); `rafs_format::seal` recomputes the
//! checksum after a flip so the structural checks behind it are reached.
//! Blob damage is located through the chunk table, so the test knows which
//! chunk, blob and file paths the error must name.

#[macro_use]
mod common;

use common::tree::{random_bytes, write};
use common::{create, rafs};
use rafs_format::layout::{
    BlobInfo, ChunkInfo, DirEntry, Inode, PrefetchEntry, SuperBlock, XattrEntry,
};
use rafs_format::{seal, Bootstrap, FormatError, NameError, Table};
use std::fs;
use std::mem::offset_of;
use std::path::{Path, PathBuf};

/// Superblock offset of each table reference, its table and entry size.
const TABLES: [(usize, Table, u64); 7] = [
    (
        offset_of!(SuperBlock, inodes),
        Table::Inodes,
        size_of::<Inode>() as u64,
    ),
    (
        offset_of!(SuperBlock, dirents),
        Table::Dirents,
        DIRENT as u64,
    ),
    (
        offset_of!(SuperBlock, chunks),
        Table::Chunks,
        size_of::<ChunkInfo>() as u64,
    ),
    (
        offset_of!(SuperBlock, blobs),
        Table::Blobs,
        size_of::<BlobInfo>() as u64,
    ),
    (
        offset_of!(SuperBlock, xattrs),
        Table::Xattrs,
        size_of::<XattrEntry>() as u64,
    ),
    (
        offset_of!(SuperBlock, prefetch),
        Table::Prefetch,
        size_of::<PrefetchEntry>() as u64,
    ),
    (offset_of!(SuperBlock, strings), Table::Strings, 1),
];
const DIRENT: usize = size_of::<DirEntry>();

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// (byte offset, byte length) of a table.
fn table_span(b: &[u8], sb_offset: usize, entry: u64) -> (usize, usize) {
    (
        le64(b, sb_offset) as usize,
        (le64(b, sb_offset + 8) * entry) as usize,
    )
}

struct Fixture {
    _work: tempfile::TempDir,
    dir: PathBuf,
    bootstrap: PathBuf,
    blobs: PathBuf,
    bytes: Vec<u8>,
}

/// A small image: a unique file, two names for the same content, a
/// symlink, xattrs, and a prefetch list so every table is non-empty.
fn fixture() -> Fixture {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("a.txt"), &random_bytes(1, 200_000));
    let dup = random_bytes(2, 100_000);
    write(&src.join("dup1"), &dup);
    write(&src.join("d/dup2"), &dup);
    write(&src.join("small"), b"small\n");
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    common::tree::setxattr(&src.join("small"), "user.k", b"v");
    let list = work.path().join("prefetch");
    fs::write(&list, "/a.txt\n").unwrap();
    let out = work.path().join("out");
    let lp = list.to_str().unwrap().to_owned();
    let bootstrap = create(&src, &out, &["--prefetch-list", &lp]);
    let bytes = fs::read(&bootstrap).unwrap();
    Bootstrap::open(&bytes).expect("fresh image decodes");
    Fixture {
        dir: work.path().to_path_buf(),
        blobs: out.join("blobs"),
        bootstrap,
        bytes,
        _work: work,
    }
}

impl Fixture {
    /// Writes `bytes` as a new bootstrap; returns its path.
    fn write_variant(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    /// Asserts `rafs check` fails on `bytes` and names `err`.
    fn check_fails_naming(&self, name: &str, bytes: &[u8], err: &FormatError) {
        let p = self.write_variant(name, bytes);
        let r = rafs(args!["check", &p]).failed();
        let msg = err.to_string();
        assert!(
            r.all_output().contains(&msg),
            "check does not say {msg:?}:\n{r}"
        );
        rafs(args!["inspect", &p]).failed();
    }
}

#[test]
fn truncated_bootstrap_is_refused() {
    let f = fixture();
    let full = f.bytes.len();
    assert!(full > 512);
    for len in [0, 1, 100, 255, 256, 300, full / 2, full - 1] {
        let cut = &f.bytes[..len];
        let err = Bootstrap::open(cut).unwrap_err();
        if len < 256 {
            assert_eq!(err, FormatError::TooShort { len }, "length {len}");
        } else {
            let want = FormatError::SizeMismatch {
                header: full as u64,
                actual: len as u64,
            };
            assert_eq!(err, want, "length {len}");
        }
        f.check_fails_naming(&format!("cut-{len}"), cut, &err);
    }
}

#[test]
fn flipped_byte_in_each_table_fails_the_checksum() {
    let f = fixture();
    for (sb_off, table, entry) in TABLES {
        let (off, len) = table_span(&f.bytes, sb_off, entry);
        assert!(len > 0, "fixture has an empty {table}");
        for at in [off, off + len / 2, off + len - 1] {
            let mut b = f.bytes.clone();
            b[at] ^= 0x55;
            let err = Bootstrap::open(&b).unwrap_err();
            assert_eq!(err, FormatError::ChecksumMismatch, "{table} byte {at}");
            f.check_fails_naming(&format!("flip-{at}"), &b, &err);
            // Behind the checksum: either still a valid image (a flipped
            // mtime is legal) or a structural error, which check must name.
            seal(&mut b);
            match Bootstrap::open(&b) {
                Err(FormatError::ChecksumMismatch) => panic!("seal did not reseal"),
                Err(e) => f.check_fails_naming(&format!("sealed-{at}"), &b, &e),
                Ok(_) => {
                    let p = f.write_variant(&format!("sealed-ok-{at}"), &b);
                    rafs(args!["check", &p]).ok();
                }
            }
        }
    }
}

#[test]
fn flipped_superblock_byte_fails_the_checksum() {
    let f = fixture();
    let mut b = f.bytes.clone();
    b[offset_of!(SuperBlock, chunk_avg)] ^= 1; // informative: only the checksum covers it
    assert_eq!(
        Bootstrap::open(&b).unwrap_err(),
        FormatError::ChecksumMismatch
    );
    f.check_fails_naming("flip-sb", &b, &FormatError::ChecksumMismatch);
}

/// Applies `damage`, seals, and expects exactly `want` from the decoder and
/// a failing `check` naming it.
fn expect_structural(f: &Fixture, name: &str, damage: impl Fn(&mut Vec<u8>), want: FormatError) {
    let mut b = f.bytes.clone();
    damage(&mut b);
    seal(&mut b);
    let err = Bootstrap::open(&b).unwrap_err();
    assert_eq!(err, want, "{name}");
    f.check_fails_naming(name, &b, &err);
}

/// (dirent table offset, root's first entry index, root's entry count).
fn root_entries(b: &[u8]) -> (usize, usize, usize) {
    let inodes = le64(b, offset_of!(SuperBlock, inodes)) as usize;
    let dirents = le64(b, offset_of!(SuperBlock, dirents)) as usize;
    (
        dirents,
        le32(b, inodes + offset_of!(Inode, payload_start)) as usize,
        le32(b, inodes + offset_of!(Inode, payload_count)) as usize,
    )
}

#[test]
fn header_damage_gives_typed_errors() {
    let f = fixture();
    expect_structural(&f, "magic", |b| b[0] ^= 0xff, FormatError::BadMagic);
    expect_structural(
        &f,
        "incompat",
        |b| b[offset_of!(SuperBlock, incompat_features) + 5] |= 0x01, // bit 40
        FormatError::UnknownIncompatFeatures(1 << 40),
    );
    let len = f.bytes.len() as u64;
    expect_structural(
        &f,
        "strings-offset",
        |b| {
            let at = offset_of!(SuperBlock, strings);
            b[at..at + 8].copy_from_slice(&(len + 4096).to_le_bytes())
        },
        FormatError::TableOutOfBounds(Table::Strings),
    );
}

#[test]
fn dirent_damage_gives_typed_errors() {
    let f = fixture();
    let (dirents, start, count) = root_entries(&f.bytes);
    assert!(count >= 2, "root has {count} entries");
    let ninodes = le64(&f.bytes, offset_of!(SuperBlock, inodes) + 8) as u32;
    let first = dirents + start * DIRENT;
    expect_structural(
        &f,
        "dirent-ino",
        |b| put32(b, first, ninodes + 5),
        FormatError::IndexOutOfRange {
            table: Table::Inodes,
            index: u64::from(ninodes + 5),
        },
    );
    expect_structural(
        &f,
        "unsorted",
        |b| {
            let (x, y) = (first, first + DIRENT);
            let tmp: Vec<u8> = b[x..x + DIRENT].to_vec();
            b.copy_within(y..y + DIRENT, x);
            b[y..y + DIRENT].copy_from_slice(&tmp);
        },
        FormatError::UnsortedEntries {
            dir: 0,
            index: start as u64 + 1,
        },
    );
    let name_at = le64(&f.bytes, offset_of!(SuperBlock, strings)) as usize
        + le32(&f.bytes, first + offset_of!(DirEntry, name_offset)) as usize;
    expect_structural(
        &f,
        "slash-name",
        |b| b[name_at] = b'/',
        FormatError::BadName {
            dir: 0,
            index: start as u64,
            error: NameError::Slash,
        },
    );
}

#[test]
fn dirent_naming_the_root_is_not_a_tree() {
    let f = fixture();
    let (dirents, start, _) = root_entries(&f.bytes);
    let at = dirents + start * DIRENT;
    expect_structural(
        &f,
        "root-link",
        |b| put32(b, at, 0),
        FormatError::NotATree { ino: 0 },
    );
}

#[test]
fn chunk_with_blob_index_out_of_range_is_bad() {
    let f = fixture();
    let b = Bootstrap::open(&f.bytes).unwrap();
    let index = b
        .chunks()
        .iter()
        .position(|c| !c.is_hole())
        .expect("a data chunk");
    let chunks = le64(&f.bytes, offset_of!(SuperBlock, chunks));
    let at = chunks as usize + index * size_of::<ChunkInfo>() + offset_of!(ChunkInfo, blob_index);
    expect_structural(
        &f,
        "blob-index",
        |b| put32(b, at, 99),
        FormatError::BadChunk {
            index: index as u64,
            reason: "blob index out of range",
        },
    );
}

/// (chunk index, blob id hex, offset of the middle of its stored bytes) of
/// the first chunk of `path` in the image.
fn locate_chunk(bytes: &[u8], path: &str) -> (usize, String, u64) {
    let b = Bootstrap::open(bytes).unwrap();
    let ino = b.resolve(path.as_bytes()).unwrap().expect("path in image");
    let index = b.inode(ino).unwrap().payload_start.get() as usize;
    let c = &b.chunks()[index];
    assert!(!c.is_hole());
    let blob = hex::encode(b.chunk_blob(c).unwrap().id);
    (
        index,
        blob,
        c.compressed_offset.get() + u64::from(c.compressed_size.get()) / 2,
    )
}

fn flip_blob_byte(blobs: &Path, blob: &str, at: u64) {
    let p = blobs.join(blob);
    let mut data = fs::read(&p).unwrap();
    data[at as usize] ^= 0x01;
    fs::write(&p, data).unwrap();
}

#[test]
fn corrupted_blob_chunk_is_named_with_its_file() {
    let f = fixture();
    let (index, blob, at) = locate_chunk(&f.bytes, "a.txt");
    flip_blob_byte(&f.blobs, &blob, at);
    rafs(args!["check", &f.bootstrap]).ok(); // metadata alone is intact
    let r = rafs(args!["check", &f.bootstrap, "--blobs", &f.blobs]).failed();
    let out = r.all_output();
    let named = out
        .lines()
        .any(|l| l.contains(&blob) && l.contains("a.txt") && l.contains(&index.to_string()));
    assert!(
        named,
        "no line names chunk {index}, blob {blob} and a.txt:\n{r}"
    );
    assert!(
        !out.contains("dup1"),
        "intact files reported as corrupt:\n{r}"
    );
    let dest = f.dir.join("dest");
    let r = rafs(args!["unpack", &f.bootstrap, "--blobs", &f.blobs, &dest]).failed();
    assert!(
        r.stderr.contains("a.txt"),
        "unpack error does not name the file:\n{r}"
    );
}

#[test]
fn corrupted_shared_chunk_names_every_path_using_it() {
    let f = fixture();
    let (index, blob, at) = locate_chunk(&f.bytes, "dup1");
    assert_eq!(
        locate_chunk(&f.bytes, "d/dup2").0,
        index,
        "duplicates share chunks"
    );
    flip_blob_byte(&f.blobs, &blob, at);
    let r = rafs(args!["check", &f.bootstrap, "--blobs", &f.blobs]).failed();
    let out = r.all_output();
    assert!(
        out.contains(&blob) && out.contains(&index.to_string()),
        "{r}"
    );
    assert!(
        out.contains("dup1") && out.contains("d/dup2"),
        "both users not named:\n{r}"
    );
}

#[test]
fn missing_blob_is_named() {
    let f = fixture();
    let (_, blob, _) = locate_chunk(&f.bytes, "a.txt");
    fs::remove_file(f.blobs.join(&blob)).unwrap();
    let r = rafs(args!["check", &f.bootstrap, "--blobs", &f.blobs]).failed();
    assert!(
        r.all_output().contains(&blob),
        "check does not name the missing blob:\n{r}"
    );
    let dest = f.dir.join("dest");
    let r = rafs(args!["unpack", &f.bootstrap, "--blobs", &f.blobs, &dest]).failed();
    assert!(
        r.stderr.contains(&blob),
        "unpack does not name the missing blob:\n{r}"
    );
}

#[test]
fn truncated_blob_fails_check() {
    let f = fixture();
    let (_, blob, _) = locate_chunk(&f.bytes, "a.txt");
    let p = f.blobs.join(&blob);
    let len = fs::metadata(&p).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let r = rafs(args!["check", &f.bootstrap, "--blobs", &f.blobs]).failed();
    assert!(r.all_output().contains(&blob), "{r}");
}
