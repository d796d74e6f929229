//! The filesystem core against a reference model: the source directory
//! itself, read through `std::fs`.
//!
//! proptest generates random trees (nested directories, files of random
//! sizes and contents including holes and duplicates, symlinks, hardlinks,
//! xattrs), writes them to disk, builds an image with `rafs create` (small
//! chunks, so files span several chunks and batch frames), opens it with
//! `rafs::fs::RafsFs`, and runs random operations on both sides: path
//! lookup, getattr, readdir (from random offsets), reads at random offsets
//! and lengths, readlink, getxattr and listxattr. Every answer must equal
//! the source's. No FUSE involved: the real-mount suites are `tests/mount*`.

use proptest::prelude::*;
use rafs::backend::file::FileBackend;
use rafs::fetch::FetchConfig;
use rafs::fs::{Attr, FileKind, FsError, RafsFs};
use rafs::image::Image;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Item {
    Dir,
    /// Content: `len` bytes from `seed` (0 = zeros), written at `at` (the
    /// bytes before are a hole).
    File {
        at: u64,
        len: usize,
        seed: u8,
    },
    Symlink(String),
    /// A hardlink to the k-th file created so far.
    Link(usize),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        2 => Just(Item::Dir),
        5 => (prop_oneof![3 => Just(0u64), 1 => 1u64..200_000], 0usize..70_000, any::<u8>())
            .prop_map(|(at, len, seed)| Item::File { at, len, seed }),
        1 => "[a-z./]{1,30}".prop_map(Item::Symlink),
        1 => any::<usize>().prop_map(Item::Link),
    ]
}

/// One generated entry: where (index of an earlier directory), its name,
/// what, a user xattr value if any, and its mode bits (including setuid,
/// setgid, sticky) and owner.
type Spec = (usize, String, Item, Option<Vec<u8>>, (u32, u32, u32));

fn tree() -> impl Strategy<Value = Vec<Spec>> {
    let xattr = prop::option::of(prop::collection::vec(any::<u8>(), 0..40));
    let owner = (0u32..0o10000, 0u32..70000, 0u32..70000);
    prop::collection::vec(
        (any::<usize>(), "[a-zA-Z0-9_-]{1,12}", item(), xattr, owner),
        1..40,
    )
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    // Half compressible text, half noise, so chunks take every stored form.
    let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 4096) % 2 == 0 {
                b"rafs model "[i % 11]
            } else {
                x as u8
            }
        })
        .collect()
}

/// Writes the tree under `root`; returns every path created (relative).
fn materialise(root: &Path, specs: &[Spec]) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::new()];
    let mut files: Vec<PathBuf> = Vec::new();
    let mut all = Vec::new();
    for (i, (parent, name, item, xattr, _)) in specs.iter().enumerate() {
        let rel = dirs[parent % dirs.len()].join(format!("{name}{i}"));
        let path = root.join(&rel);
        match item {
            Item::Dir => {
                fs::create_dir(&path).unwrap();
                dirs.push(rel.clone());
            }
            Item::File { at, len, seed } => {
                let f = fs::File::create(&path).unwrap();
                f.write_all_at(&content(*len, *seed), *at).unwrap();
                f.set_len(at + *len as u64).unwrap();
                files.push(rel.clone());
            }
            Item::Symlink(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
            Item::Link(k) if !files.is_empty() => {
                fs::hard_link(root.join(&files[k % files.len()]), &path).unwrap()
            }
            Item::Link(_) => fs::write(&path, b"no file to link yet").unwrap(),
        }
        if let Some(v) = xattr {
            if !matches!(item, Item::Symlink(_)) {
                xattr::set(&path, "user.model", v).unwrap();
            }
        }
        all.push(rel);
    }
    // Modes and owners last (children first), so no directory mode gets in
    // the way of creating its entries; chown before chmod, which it would
    // clear setuid from.
    for (rel, (_, _, item, _, (mode, uid, gid))) in all.iter().zip(specs).rev() {
        let path = root.join(rel);
        std::os::unix::fs::lchown(&path, Some(*uid), Some(*gid)).unwrap();
        if !matches!(item, Item::Symlink(_)) {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
    all
}

fn build(src: &Path, out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_rafs"))
        .args([
            OsStr::new("create"),
            src.as_os_str(),
            OsStr::new("-o"),
            out.as_os_str(),
        ])
        .args([
            "--chunk-size",
            "16K",
            "--batch-size",
            "64K",
            "--batch-threshold",
            "8K",
            "--no-progress",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "rafs create failed");
}

/// Resolves `rel` component by component with `lookup`.
fn resolve(fs: &RafsFs, rel: &Path) -> Result<Attr, FsError> {
    let mut attr = fs.getattr(0)?;
    for comp in rel.components() {
        attr = fs.lookup(attr.ino, comp.as_os_str().as_bytes())?;
    }
    Ok(attr)
}

fn check_attr(attr: &Attr, md: &fs::Metadata, rel: &Path) {
    let kind = match md.mode() & 0o170000 {
        0o040000 => FileKind::Dir,
        0o120000 => FileKind::Symlink,
        _ => FileKind::File,
    };
    assert_eq!(attr.kind, kind, "{rel:?}");
    assert_eq!(u32::from(attr.perm), md.mode() & 0o7777, "{rel:?}");
    assert_eq!((attr.uid, attr.gid), (md.uid(), md.gid()), "{rel:?}");
    assert_eq!(
        (attr.mtime_sec, attr.mtime_nsec),
        (md.mtime(), md.mtime_nsec() as u32),
        "{rel:?}"
    );
    assert_eq!(u64::from(attr.nlink), md.nlink(), "{rel:?}");
    if kind != FileKind::Dir {
        assert_eq!(attr.size, md.size(), "{rel:?}");
    }
}

fn check_dir(fs: &RafsFs, ino: u32, src: &Path, start: u64) {
    let mut got = Vec::new();
    fs.readdir(ino, start, |e| {
        got.push(e.name.to_vec());
        true
    })
    .unwrap();
    let mut want: Vec<Vec<u8>> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    want.sort();
    let mut all = vec![b".".to_vec(), b"..".to_vec()];
    all.extend(want);
    assert_eq!(
        got,
        all.get(start as usize..).unwrap_or_default().to_vec(),
        "{src:?} from {start}"
    );
}

fn check_xattrs(fs: &RafsFs, ino: u32, src: &Path) {
    let want: BTreeSet<Vec<u8>> = xattr::list(src)
        .unwrap()
        .map(|n| n.as_bytes().to_vec())
        .collect();
    let list = fs.listxattr(ino).unwrap();
    let got: BTreeSet<Vec<u8>> = list
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(got, want, "{src:?}");
    for name in want {
        let v = xattr::get(src, OsStr::from_bytes(&name)).unwrap().unwrap();
        assert_eq!(fs.getxattr(ino, &name).unwrap(), v.as_slice());
    }
}

/// Runs `ops` (path index, offset seed, length) against both sides.
fn run_ops(fs: &RafsFs, root: &Path, paths: &[PathBuf], ops: &[(usize, u64, u32)]) {
    for &(p, off_seed, len) in ops {
        let rel = &paths[p % paths.len()];
        let src = root.join(rel);
        let md = fs::symlink_metadata(&src).unwrap();
        let attr = resolve(fs, rel).unwrap();
        check_attr(&attr, &md, rel);
        assert_eq!(fs.getattr(attr.ino).unwrap(), attr);
        match attr.kind {
            FileKind::Dir => check_dir(fs, attr.ino, &src, off_seed % 5),
            FileKind::Symlink => {
                assert_eq!(
                    fs.readlink(attr.ino).unwrap(),
                    fs::read_link(&src).unwrap().as_os_str().as_bytes()
                );
            }
            _ => {
                let off = if md.size() == 0 {
                    off_seed % 3
                } else {
                    off_seed % (md.size() + 10)
                };
                let mut want = vec![0u8; len as usize];
                let n = fs::File::open(&src)
                    .unwrap()
                    .read_at(&mut want, off)
                    .unwrap();
                want.truncate(n);
                assert_eq!(
                    fs.read(attr.ino, off, len).unwrap(),
                    want,
                    "{rel:?} at {off}+{len}"
                );
            }
        }
        if attr.kind != FileKind::Symlink {
            check_xattrs(fs, attr.ino, &src);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_the_source_tree(
        specs in tree(),
        ops in prop::collection::vec((any::<usize>(), any::<u64>(), 0u32..100_000), 1..60),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let paths = materialise(&src, &specs);
        build(&src, &tmp.path().join("out"));
        let image = Image::open(&tmp.path().join("out/bootstrap")).unwrap();
        let backend = Arc::new(FileBackend::new(tmp.path().join("out/blobs")));
        // A tiny LRU and a tiny disk cache, so reads go through the disk
        // cache, eviction and refetching too.
        let config = FetchConfig {
            memory_bytes: 64 << 10,
            cache_dir: Some(tmp.path().join("cache")),
            cache_limit: Some(256 << 10),
            ..FetchConfig::default()
        };
        let fs = RafsFs::new(image, backend, config).unwrap();
        check_dir(&fs, 0, &src, 0);
        run_ops(&fs, &src, &paths, &ops);
        // A missing name is NotFound at every directory level.
        prop_assert!(matches!(fs.lookup(0, b"no-such-entry"), Err(FsError::NotFound)));
    }
}
