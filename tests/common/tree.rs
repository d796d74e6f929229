//! Test tree generator: every kind of entry a container rootfs holds.
//!
//! [`make_tree`] fills a directory with regular files (empty, small,
//! multi-chunk random, compressible, duplicated, sparse), symlinks
//! (relative, absolute, dangling, 4095-byte target), a hardlink group with
//! three names in different directories, devices, a fifo, a unix socket,
//! odd modes (0000, 0777, setuid, setgid, sticky), large uids/gids, xattrs in
//! the user, trusted and security namespaces, awkward names (spaces,
//! newline, non-UTF-8 bytes, 255 bytes), deep nesting, and nanosecond mtimes
//! set last, in post-order, so creating children does not disturb them.
//! Large cases have their own helpers ([`make_big_sparse`], [`make_wide_dir`])
//! so only the tests dedicated to them pay for them.
//!
//! Everything is deterministic (a seeded PRNG, fixed times), and needs root
//! (mknod, chown, trusted.* xattrs): failures panic with the path at fault.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};
use std::path::Path;

/// Deterministic pseudo-random bytes (xorshift64*), so builds are comparable
/// run to run and duplicated content is exactly duplicated.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible text: numbered lines of a fixed sentence.
pub fn text_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        let line = format!("{i:08} the quick brown fox jumps over the lazy dog\n");
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Writes a file, creating parent directories.
pub fn write(p: &Path, data: &[u8]) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {parent:?}: {e}"));
    }
    fs::write(p, data).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
}

/// `mkdir -p`.
pub fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
}

/// `chmod` (after chown: chown clears setuid/setgid).
pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {p:?}: {e}"));
}

/// `lchown` (does not follow symlinks).
pub fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {p:?}: {e}"));
}

/// Sets an xattr without following symlinks.
pub fn setxattr(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value).unwrap_or_else(|e| panic!("setxattr {name} on {p:?}: {e}"));
}

/// `mknod` a character device, block device or fifo (`kind` = `S_IF*`).
pub fn mknod(p: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let dev = libc::makedev(major, minor);
    // SAFETY: `cpath` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mknod(cpath(p).as_ptr(), kind | 0o644, dev) };
    if rc != 0 {
        panic!("mknod {p:?}: {}", std::io::Error::last_os_error());
    }
}

/// Creates a unix socket file: bind a listener and drop it; the file stays.
pub fn make_socket(p: &Path) {
    let l = std::os::unix::net::UnixListener::bind(p)
        .unwrap_or_else(|e| panic!("bind socket {p:?}: {e}"));
    drop(l);
    assert!(p.symlink_metadata().is_ok(), "socket file {p:?} vanished");
}

/// A sparse file: `size` bytes long with `data` written at each offset.
pub fn make_sparse(p: &Path, size: u64, data: &[(u64, &[u8])]) {
    let f = fs::File::create(p).unwrap_or_else(|e| panic!("create {p:?}: {e}"));
    f.set_len(size).unwrap();
    for (off, bytes) in data {
        f.write_all_at(bytes, *off)
            .unwrap_or_else(|e| panic!("write {p:?}: {e}"));
    }
}

/// The full generated tree (everything but the large cases).
pub fn make_tree(root: &Path) {
    mkdir(root);
    regular_files(&root.join("files"));
    symlinks(&root.join("links"));
    hardlinks(&root.join("hl"));
    specials(&root.join("special"));
    modes_and_owners(&root.join("modes"));
    xattrs(&root.join("xattrs"));
    names(&root.join("names"));
    deep(&root.join("deep"), 60);
    set_times(root);
}

fn regular_files(d: &Path) {
    mkdir(d);
    write(&d.join("empty"), b"");
    write(&d.join("small"), b"hello, rafs\n");
    write(&d.join("one-byte"), b"x");
    write(&d.join("random-3m"), &random_bytes(1, (3 << 20) + 12_345));
    write(&d.join("exactly-1m"), &random_bytes(2, 1 << 20));
    write(&d.join("text-2m"), &text_bytes(2 << 20));
    let dup = random_bytes(3, (1 << 20) + 777);
    write(&d.join("dup-a"), &dup);
    write(&d.join("sub/dup-b"), &dup);
    write(&d.join("zeros-256k"), &vec![0u8; 256 << 10]);
    let head = random_bytes(4, 4096);
    let mid = random_bytes(5, 65_536);
    make_sparse(
        &d.join("sparse"),
        12 << 20,
        &[(0, &head[..]), (9 << 20, &mid[..])],
    );
    make_sparse(&d.join("all-hole"), 3 << 20, &[]);
}

fn symlinks(d: &Path) {
    mkdir(d);
    symlink("../files/small", d.join("relative")).unwrap();
    symlink("/etc/passwd", d.join("absolute")).unwrap();
    symlink("does/not/exist", d.join("dangling")).unwrap();
    symlink("../files", d.join("to-dir")).unwrap();
    let mut long = String::new();
    while long.len() < 4095 {
        let part = "component-of-a-very-long-target/";
        long.push_str(&part[..part.len().min(4095 - long.len())]);
    }
    assert_eq!(long.len(), 4095);
    symlink(&long, d.join("long-4095")).unwrap();
    let owned = d.join("owned");
    symlink("files", &owned).unwrap();
    lchown(&owned, 4242, 4343);
}

fn hardlinks(d: &Path) {
    let first = d.join("a/one");
    write(&first, &random_bytes(6, 100_000));
    mkdir(&d.join("b/c"));
    fs::hard_link(&first, d.join("b/c/two")).unwrap();
    fs::hard_link(&first, d.join("three")).unwrap();
    lchown(&first, 1000, 1000);
    chmod(&first, 0o640);
    setxattr(&first, "user.linked", b"shared by three names");
}

fn specials(d: &Path) {
    mkdir(d);
    mknod(&d.join("null"), libc::S_IFCHR, 1, 3);
    mknod(&d.join("tty-big-minor"), libc::S_IFCHR, 136, 300);
    mknod(&d.join("loop0"), libc::S_IFBLK, 7, 0);
    mknod(&d.join("nvme"), libc::S_IFBLK, 259, 65_537);
    mknod(&d.join("fifo"), libc::S_IFIFO, 0, 0);
    make_socket(&d.join("socket"));
    lchown(&d.join("fifo"), 1234, 5678);
    chmod(&d.join("fifo"), 0o600);
    setxattr(&d.join("null"), "trusted.devnote", b"on a device");
}

fn modes_and_owners(d: &Path) {
    let files: [(&str, u32, u32, u32); 8] = [
        ("m0000", 0o0000, 0, 0),
        ("m0777", 0o0777, 0, 0),
        ("setuid", 0o4755, 0, 0),
        ("setgid", 0o2755, 0, 50),
        ("all-bits", 0o7777, 0, 0),
        ("uid1234", 0o644, 1234, 5678),
        ("nobody", 0o644, 65_534, 65_534),
        ("uid4e9", 0o600, 4_000_000_000, 4_000_000_000),
    ];
    for (name, mode, uid, gid) in files {
        let p = d.join(name);
        write(&p, name.as_bytes());
        lchown(&p, uid, gid);
        chmod(&p, mode);
    }
    let sticky = d.join("sticky");
    mkdir(&sticky);
    write(&sticky.join("inside"), b"in a sticky dir");
    chmod(&sticky, 0o1777);
    let setgid_dir = d.join("setgid-dir");
    mkdir(&setgid_dir);
    lchown(&setgid_dir, 1234, 5678);
    chmod(&setgid_dir, 0o2775);
    // A directory nobody may enter: unpackers must fill it before chmod.
    let locked = d.join("locked");
    write(&locked.join("secret"), b"behind mode 0000");
    chmod(&locked, 0o000);
}

fn xattrs(d: &Path) {
    let f = d.join("file");
    write(&f, b"file with xattrs");
    setxattr(&f, "user.plain", b"value");
    setxattr(&f, "user.binary", &[0, 1, 2, 0xfe, 0xff, 0, b'\n']);
    setxattr(&f, "user.empty", b"");
    setxattr(&f, "trusted.t", &[0xde, 0xad, 0xbe, 0xef]);
    setxattr(&f, "security.rafs-test", b"sec");
    setxattr(&f, "user.big", &random_bytes(7, 1500));
    setxattr(d, "user.on-dir", b"directory xattr");
    setxattr(d, "trusted.on-dir", b"");
    let same = d.join("same-set");
    write(&same, b"another file, same xattrs");
    setxattr(&same, "user.plain", b"value");
}

fn names(d: &Path) {
    mkdir(d);
    let names: [&[u8]; 9] = [
        b"with space",
        b"new\nline",
        b"tab\there",
        b"\xff\xfe-not-utf8",
        "ünïcødé-名前".as_bytes(),
        b"-starts-with-dash",
        b".hidden",
        b"...",
        b"back\\slash*?[]",
    ];
    for n in names {
        write(&d.join(OsStr::from_bytes(n)), n);
    }
    let long = "n".repeat(255);
    write(&d.join(&long), b"255-byte name");
    mkdir(&d.join(OsStr::from_bytes(b"dir \xc0 odd")).join(&long));
}

fn deep(d: &Path, levels: usize) {
    let mut p = d.to_path_buf();
    for i in 0..levels {
        p.push(format!("level{i:02}"));
    }
    write(&p.join("leaf"), b"deep down");
}

/// Every path under `root` (root included), children before their
/// directory, siblings sorted: the order to set times in.
pub fn post_order(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let meta = fs::symlink_metadata(root).unwrap();
    if meta.is_dir() {
        let mut children: Vec<_> = fs::read_dir(root)
            .unwrap_or_else(|e| panic!("readdir {root:?}: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for c in children {
            out.extend(post_order(&c));
        }
    }
    out.push(root.to_path_buf());
    out
}

/// Sets a distinct mtime (and atime) with nanoseconds on every entry, in
/// post-order. A few entries get times before 1970 and after 2038.
pub fn set_times(root: &Path) {
    for (i, p) in post_order(root).iter().enumerate() {
        let i = i as i64;
        let sec = match i % 17 {
            3 => -1_234_567_890 + i,
            5 => 4_102_444_800 + i, // 2100-01-01
            _ => 1_600_000_000 + i * 3_601,
        };
        let nsec = ((i * 7_919 + 1) % 1_000_000_000) as u32;
        let t = filetime::FileTime::from_unix_time(sec, nsec);
        filetime::set_symlink_file_times(p, t, t).unwrap_or_else(|e| panic!("utimes {p:?}: {e}"));
    }
}

/// A file larger than 4 GiB, mostly holes, with data straddling and past
/// the 4 GiB boundary. Returns its path.
pub fn make_big_sparse(root: &Path) -> std::path::PathBuf {
    let p = root.join("big-sparse");
    let a = random_bytes(8, 10_000);
    let b = random_bytes(9, 200_000);
    let c = random_bytes(10, 4096);
    let four_g = 4u64 << 30;
    make_sparse(
        &p,
        (5 << 30) + 12_345,
        &[
            (0, &a[..]),
            (four_g - 100_000, &b[..]),
            ((4 << 30) + (700 << 20), &c[..]),
        ],
    );
    p
}

/// A directory holding `n` small files (names of varying length, some
/// sharing content).
pub fn make_wide_dir(dir: &Path, n: usize) {
    mkdir(dir);
    for i in 0..n {
        let name = format!("entry-{i:06}{}", "x".repeat(i % 13));
        let body = format!("{}\n", i % 1000);
        fs::write(dir.join(name), body).unwrap_or_else(|e| panic!("write in {dir:?}: {e}"));
    }
}
