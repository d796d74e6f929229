//! Tree comparator: lists every difference between two trees, entry by
//! entry, independently of rafs.
//!
//! Each tree is walked with `lstat` (symlinks are never followed) into a map
//! from relative path to [`Entry`]; the maps are then compared field by
//! field: type, permission bits, owner, size (not for directories, whose size
//! is a filesystem detail), link count, device number, mtime to the
//! nanosecond, symlink target, every xattr, hardlink grouping (the set of
//! paths sharing an inode) and the content digest.
//!
//! Content is hashed in 1 MiB blocks; blocks lying in a hole (found with
//! `SEEK_DATA`) or reading as all zeros hash as one marker, so a 5 GiB sparse
//! file hashes in well under a second and a sparse and a dense copy of the
//! same bytes compare equal (sparseness is checked separately where it
//! matters).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;

const BLOCK: u64 = 1 << 20;

/// What is compared of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `d`, `f`, `l`, `c`, `b`, `p`, `s`.
    pub kind: char,
    /// Permission bits incl. setuid/setgid/sticky.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (zero for directories).
    pub size: u64,
    /// Link count.
    pub nlink: u64,
    /// Device number.
    pub rdev: u64,
    /// mtime seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// All xattrs.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Content digest (regular files).
    pub digest: Option<[u8; 32]>,
    /// Other paths naming the same inode (non-directories with nlink > 1).
    pub links: BTreeSet<Vec<u8>>,
}

/// An exclusion predicate: relative path and metadata; true = skip.
pub type Exclude<'a> = &'a dyn Fn(&[u8], &Metadata) -> bool;

/// Excludes nothing.
pub fn exclude_none(_: &[u8], _: &Metadata) -> bool {
    false
}

/// Excludes unix sockets (tar cannot carry them).
pub fn exclude_sockets(_: &[u8], m: &Metadata) -> bool {
    m.file_type().is_socket()
}

fn kind(m: &Metadata) -> char {
    let t = m.file_type();
    match () {
        _ if t.is_dir() => 'd',
        _ if t.is_file() => 'f',
        _ if t.is_symlink() => 'l',
        _ if t.is_char_device() => 'c',
        _ if t.is_block_device() => 'b',
        _ if t.is_fifo() => 'p',
        _ if t.is_socket() => 's',
        _ => '?',
    }
}

/// `lseek(SEEK_DATA)`: the next data offset at or after `off`, `None` if
/// only a hole remains.
fn next_data(f: &File, off: u64) -> Option<u64> {
    // SAFETY: lseek on an fd we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    (r >= 0).then_some(r as u64)
}

/// blake3 of a file's logical content, streaming, skipping holes.
pub fn hash_file(p: &Path) -> [u8; 32] {
    let f = File::open(p).unwrap_or_else(|e| panic!("open {p:?}: {e}"));
    let len = f.metadata().unwrap().len();
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; BLOCK as usize];
    let mut off = 0;
    while off < len {
        let n = BLOCK.min(len - off);
        if next_data(&f, off).is_none_or(|d| d >= off + n) {
            h.update(b"Z");
            off += n;
            continue;
        }
        let b = &mut buf[..n as usize];
        f.read_exact_at(b, off)
            .unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        if b.iter().all(|&x| x == 0) {
            h.update(b"Z");
        } else {
            h.update(b"D");
            h.update(b);
        }
        off += n;
    }
    *h.finalize().as_bytes()
}

fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let names = xattr::list(p).unwrap_or_else(|e| panic!("listxattr {p:?}: {e}"));
    for n in names {
        let v = xattr::get(p, &n)
            .unwrap_or_else(|e| panic!("getxattr {p:?}: {e}"))
            .unwrap_or_default();
        out.insert(n.as_bytes().to_vec(), v);
    }
    out
}

fn entry(p: &Path, m: &Metadata) -> Entry {
    let k = kind(m);
    Entry {
        kind: k,
        perm: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        size: if k == 'd' { 0 } else { m.size() },
        nlink: m.nlink(),
        rdev: m.rdev(),
        mtime: (m.mtime(), m.mtime_nsec()),
        target: (k == 'l').then(|| fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec()),
        xattrs: xattrs_of(p),
        digest: (k == 'f').then(|| hash_file(p)),
        links: BTreeSet::new(),
    }
}

/// Snapshot of a tree: relative path (root = empty) to entry.
pub fn snapshot(root: &Path, exclude: Exclude<'_>) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(&rel))
        };
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {p:?}: {e}"));
        if exclude(&rel, &m) {
            continue;
        }
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {p:?}: {e}")) {
                let name = e.unwrap().file_name();
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                stack.push(child);
            }
        } else if m.nlink() > 1 {
            inodes
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(rel, entry(&p, &m));
    }
    for group in inodes.values() {
        for path in group {
            let links = group.iter().filter(|g| *g != path).cloned().collect();
            out.get_mut(path).unwrap().links = links;
        }
    }
    out
}

/// Printable form of a relative path.
pub fn show(rel: &[u8]) -> String {
    if rel.is_empty() {
        ".".into()
    } else {
        format!("{:?}", String::from_utf8_lossy(rel))
    }
}

fn diff_entry(rel: &[u8], a: &Entry, b: &Entry, out: &mut Vec<String>) {
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{}: {name} differs: {x} vs {y}", show(rel)));
        }
    };
    field("type", a.kind.to_string(), b.kind.to_string());
    field("mode", format!("{:04o}", a.perm), format!("{:04o}", b.perm));
    field("uid", a.uid.to_string(), b.uid.to_string());
    field("gid", a.gid.to_string(), b.gid.to_string());
    field("size", a.size.to_string(), b.size.to_string());
    field("nlink", a.nlink.to_string(), b.nlink.to_string());
    field("rdev", format!("{:#x}", a.rdev), format!("{:#x}", b.rdev));
    field("mtime", format!("{:?}", a.mtime), format!("{:?}", b.mtime));
    field("symlink target", lossy(&a.target), lossy(&b.target));
    field("xattrs", show_xattrs(&a.xattrs), show_xattrs(&b.xattrs));
    field("content", hex(&a.digest), hex(&b.digest));
    let links = |s: &BTreeSet<Vec<u8>>| s.iter().map(|p| show(p)).collect::<Vec<_>>().join(", ");
    field("hardlinks", links(&a.links), links(&b.links));
}

fn lossy(t: &Option<Vec<u8>>) -> String {
    t.as_ref()
        .map(|t| format!("{:?}", String::from_utf8_lossy(t)))
        .unwrap_or_default()
}

fn hex(d: &Option<[u8; 32]>) -> String {
    d.map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={:02x?}", String::from_utf8_lossy(k), v))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Every difference between the trees at `a` and `b`, skipping entries
/// (and whole subtrees) `exclude` selects in either.
pub fn compare_trees(a: &Path, b: &Path, exclude: Exclude<'_>) -> Vec<String> {
    let sa = snapshot(a, exclude);
    let sb = snapshot(b, exclude);
    let mut out = Vec::new();
    for (rel, ea) in &sa {
        match sb.get(rel) {
            None => out.push(format!("{}: only in {}", show(rel), a.display())),
            Some(eb) => diff_entry(rel, ea, eb, &mut out),
        }
    }
    for rel in sb.keys().filter(|r| !sa.contains_key(*r)) {
        out.push(format!("{}: only in {}", show(rel), b.display()));
    }
    out
}

/// Panics listing every difference if the trees differ.
pub fn assert_same_tree(a: &Path, b: &Path, exclude: Exclude<'_>) {
    let diffs = compare_trees(a, b, exclude);
    assert!(
        diffs.is_empty(),
        "{} differences between {} and {}:\n{}",
        diffs.len(),
        a.display(),
        b.display(),
        diffs.join("\n")
    );
}
