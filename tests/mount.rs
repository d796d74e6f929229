//! `rafs mount` of the generated tree, through the kernel's FUSE: every
//! file type, mode, owner, xattr namespace, hardlink group, hole and name
//! must look through the mount exactly as in the source.
//!
//! The comparator walks the mount with `lstat`/`readlink`/`llistxattr`/
//! `read` like any program would; hardlinks are compared by grouping (which
//! paths share an `st_ino`), not by number, since FUSE inode numbers are the
//! daemon's own. Then: seeded random `pread`s against the source, `statfs`,
//! `st_blocks`, every kind of write refused with EROFS, and a sparse file
//! larger than 4 GiB in a test of its own.
//!
//! These tests need root and FUSE and fail (never skip) without them.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::mount::Mounted;
use common::reads::{compare_one, compare_random_reads, regular_files};
use common::tree::{make_big_sparse, make_tree, set_times};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A source tree, its image, and the image mounted.
struct Fixture {
    src: PathBuf,
    mnt: Mounted,
    _work: tempfile::TempDir,
}

/// Builds `src` (filled by `fill`) with `create_opts` and mounts it.
fn mounted(fill: impl FnOnce(&Path), create_opts: &[&str], mount_opts: &[&str]) -> Fixture {
    let work = common::tempdir();
    let src = work.path().join("src");
    fill(&src);
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, create_opts);
    let mnt = Mounted::start(
        &bootstrap,
        &out.join("blobs"),
        &work.path().join("mnt"),
        mount_opts,
    );
    Fixture {
        src,
        mnt,
        _work: work,
    }
}

fn generated(create_opts: &[&str]) -> Fixture {
    mounted(make_tree, create_opts, &[])
}

#[test]
fn mount_prints_one_ready_line_and_is_in_mountinfo() {
    let f = generated(&[]);
    assert!(
        f.mnt.ready_line.starts_with("rafs: mounted"),
        "ready line {:?}\n{}",
        f.mnt.ready_line,
        f.mnt.describe()
    );
    let entries = common::mount::mountinfo_entries(&f.mnt.mountpoint);
    assert_eq!(entries.len(), 1, "mountinfo: {entries:?}");
    assert!(
        entries[0].contains("fuse"),
        "not a FUSE mount: {}",
        entries[0]
    );
}

#[test]
fn generated_tree_matches_source_through_mount() {
    let f = generated(&[]);
    assert_same_tree(&f.src, &f.mnt.mountpoint, &exclude_none);
}

#[test]
fn generated_tree_cdc_64k_batched_matches_source() {
    let f = generated(&["--chunker", "cdc", "--cdc-avg", "64K"]);
    assert_same_tree(&f.src, &f.mnt.mountpoint, &exclude_none);
}

#[test]
fn generated_tree_small_chunks_tiny_cache_matches_source() {
    let f = mounted(
        make_tree,
        &["--chunk-size", "64K"],
        &["--chunk-cache-size", "256K", "--threads", "2"],
    );
    assert_same_tree(&f.src, &f.mnt.mountpoint, &exclude_none);
}

#[test]
fn random_preads_match_source() {
    let f = generated(&["--chunk-size", "64K"]);
    let files = regular_files(&f.src, &|_| false);
    let bad = compare_random_reads(&f.src, &f.mnt.mountpoint, &files, 42, 3000, 3 << 20);
    assert!(
        bad.is_empty(),
        "{} of 3000 reads differ:\n{}\n{}",
        bad.len(),
        bad.join("\n"),
        f.mnt.describe()
    );
}

#[test]
fn hardlinks_share_inode_and_nlink() {
    let f = generated(&[]);
    let names = ["hl/a/one", "hl/b/c/two", "hl/three"];
    let metas: Vec<_> = names
        .iter()
        .map(|n| fs::symlink_metadata(f.mnt.path(n)).unwrap())
        .collect();
    for (n, m) in names.iter().zip(&metas) {
        assert_eq!(m.ino(), metas[0].ino(), "{n}: st_ino differs from hl/a/one");
        assert_eq!(m.nlink(), 3, "{n}: nlink");
    }
    let other = fs::symlink_metadata(f.mnt.path("files/small")).unwrap();
    assert_ne!(other.ino(), metas[0].ino(), "unrelated file shares st_ino");
}

#[test]
fn st_blocks_reflect_stored_data() {
    let f = generated(&[]);
    let blocks = |rel: &str| fs::symlink_metadata(f.mnt.path(rel)).unwrap().blocks() * 512;
    let dense = fs::metadata(f.src.join("files/random-3m")).unwrap().len();
    assert!(
        blocks("files/random-3m") >= dense,
        "random-3m: st_blocks too small"
    );
    assert!(
        blocks("files/random-3m") < dense + (2 << 20),
        "random-3m: st_blocks too big"
    );
    assert_eq!(
        blocks("files/all-hole"),
        0,
        "all-hole file has stored blocks"
    );
    assert!(
        blocks("files/sparse") <= 4 << 20,
        "12 MiB file with 68 KiB of data reports {} bytes of blocks",
        blocks("files/sparse")
    );
    assert!(blocks("files/small") > 0, "small file reports no blocks");
}

#[test]
fn holes_read_as_zeros() {
    let f = generated(&[]);
    let file = File::open(f.mnt.path("files/sparse")).unwrap();
    let mid = common::reads::pread_full(&file, 4 << 20, 1 << 20).unwrap();
    assert_eq!(mid.len(), 1 << 20);
    assert!(
        mid.iter().all(|&b| b == 0),
        "hole in files/sparse reads non-zero"
    );
    let all = fs::read(f.mnt.path("files/all-hole")).unwrap();
    assert_eq!(all.len(), 3 << 20);
    assert!(all.iter().all(|&b| b == 0), "all-hole reads non-zero");
}

#[test]
fn statfs_is_sane_and_read_only() {
    let f = generated(&[]);
    let inodes: std::collections::BTreeSet<u64> = std::iter::once(PathBuf::new())
        .chain(common::list_recursive(&f.src))
        .map(|p| fs::symlink_metadata(f.src.join(p)).unwrap().ino())
        .collect();
    let s = nix::sys::statvfs::statvfs(&f.mnt.mountpoint).expect("statvfs on the mount");
    assert!(
        s.files() >= inodes.len() as u64,
        "f_files {} < {} inodes in the source",
        s.files(),
        inodes.len()
    );
    assert!(s.block_size() > 0, "f_bsize is 0");
    assert!(s.blocks() > 0, "f_blocks is 0 for a tree with data");
    assert!(
        s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        "mount is not flagged ST_RDONLY: {:?}",
        s.flags()
    );
}

/// The result of one write attempt, as "op: outcome" when it is not EROFS.
fn expect_erofs(op: &str, r: std::io::Result<()>, out: &mut Vec<String>) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        Err(e) => out.push(format!("{op}: {e} (want EROFS)")),
        Ok(()) => out.push(format!("{op}: succeeded (want EROFS)")),
    }
}

#[test]
fn writes_fail_with_erofs() {
    let f = generated(&[]);
    let m = |rel: &str| f.mnt.path(rel);
    let mut bad = Vec::new();
    let open = |p: PathBuf, o: &mut OpenOptions| o.open(p).map(drop);
    expect_erofs(
        "create",
        open(m("new"), OpenOptions::new().write(true).create_new(true)),
        &mut bad,
    );
    expect_erofs(
        "open O_WRONLY",
        open(m("files/small"), OpenOptions::new().write(true)),
        &mut bad,
    );
    expect_erofs(
        "open O_RDWR",
        open(m("files/small"), OpenOptions::new().read(true).write(true)),
        &mut bad,
    );
    expect_erofs(
        "open O_APPEND",
        open(m("files/small"), OpenOptions::new().append(true)),
        &mut bad,
    );
    expect_erofs(
        "open O_TRUNC",
        open(
            m("files/small"),
            OpenOptions::new().write(true).truncate(true),
        ),
        &mut bad,
    );
    expect_erofs(
        "open O_CREAT existing",
        open(
            m("files/small"),
            OpenOptions::new().write(true).create(true),
        ),
        &mut bad,
    );
    expect_erofs("mkdir", fs::create_dir(m("newdir")), &mut bad);
    expect_erofs(
        "setxattr",
        xattr::set(m("files/small"), "user.new", b"v"),
        &mut bad,
    );
    expect_erofs(
        "removexattr",
        xattr::remove(m("xattrs/file"), "user.plain"),
        &mut bad,
    );
    expect_erofs("unlink", fs::remove_file(m("files/small")), &mut bad);
    expect_erofs("rmdir", fs::remove_dir(m("links")), &mut bad);
    expect_erofs(
        "rename",
        fs::rename(m("files/small"), m("files/renamed")),
        &mut bad,
    );
    expect_erofs(
        "symlink",
        std::os::unix::fs::symlink("x", m("newlink")),
        &mut bad,
    );
    expect_erofs(
        "link",
        fs::hard_link(m("files/small"), m("newhard")),
        &mut bad,
    );
    expect_erofs(
        "chmod",
        fs::set_permissions(
            m("files/small"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
        &mut bad,
    );
    expect_erofs(
        "chown",
        std::os::unix::fs::lchown(m("files/small"), Some(1), Some(1)),
        &mut bad,
    );
    expect_erofs(
        "truncate",
        nix::unistd::truncate(&m("files/small"), 0).map_err(Into::into),
        &mut bad,
    );
    let t = filetime::FileTime::from_unix_time(1, 0);
    expect_erofs(
        "utimes",
        filetime::set_file_times(m("files/small"), t, t),
        &mut bad,
    );
    assert!(
        bad.is_empty(),
        "writes not refused with EROFS:\n{}",
        bad.join("\n")
    );
    assert_same_tree(&f.src, &f.mnt.mountpoint, &exclude_none);
}

#[test]
fn readdir_lists_dot_entries_and_sees_names_exactly() {
    let f = generated(&[]);
    let mut names: Vec<_> = fs::read_dir(f.mnt.path("names"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut want: Vec<_> = fs::read_dir(f.src.join("names"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    let ls = common::cmd("ls", args!["-a", f.mnt.path("files")]).ok();
    assert!(ls.stdout.lines().any(|l| l == "."), "no '.' entry:\n{ls}");
    assert!(ls.stdout.lines().any(|l| l == ".."), "no '..' entry:\n{ls}");
    let missing = fs::symlink_metadata(f.mnt.path("files/no-such-file")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
}

#[test]
fn sparse_file_over_4gib_reads_through_mount() {
    let work = common::tempdir();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let big = make_big_sparse(&src);
    set_times(&src);
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &[]);
    let mnt = Mounted::start(
        &bootstrap,
        &out.join("blobs"),
        &work.path().join("mnt"),
        &[],
    );
    let on_mnt = mnt.path("big-sparse");
    let m = fs::metadata(&on_mnt).unwrap();
    assert_eq!(m.len(), fs::metadata(&big).unwrap().len(), "size");
    assert!(
        m.blocks() * 512 < 64 << 20,
        "st_blocks {} for ~214 KiB of data",
        m.blocks()
    );
    let four_g = 4u64 << 30;
    for (off, len) in [
        (0, 20_000),
        (2 << 30, 1 << 20),
        (four_g - 100_500, 300_000),
        (four_g + (700 << 20) - 10, 5000),
        (m.len() - 100, 1000),
    ] {
        compare_one(&big, &on_mnt, off, len)
            .unwrap_or_else(|e| panic!("@{off}+{len}: {e}\n{}", mnt.describe()));
    }
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
}
