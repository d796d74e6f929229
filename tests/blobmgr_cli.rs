//! The blob manager's ownership of a cache directory, through the `rafs`
//! binary: while a manager holds `DIR/.blobmgr.lock` (taken here through
//! the library), `rafs mount --cache-dir DIR`, `rafs prefetch --cache-dir
//! DIR` and `rafs cache gc DIR` refuse, naming the manager's socket; once
//! it is gone they work again.

#[macro_use]
mod common;

use common::tree::write;
use rafs::manager::lockfile::ManagerLock;
use std::path::Path;

#[test]
fn standalone_users_refuse_a_managed_cache_dir() {
    let dir = common::tempdir();
    let src = dir.path().join("src");
    write(&src.join("a/file"), b"hello blob manager");
    let out = dir.path().join("img");
    let bootstrap = common::create(&src, &out, &[]);
    let blobs = out.join("blobs");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sock = Path::new("/run/rafs-test/blobmgr.sock");
    let lock = ManagerLock::acquire(&cache, sock).unwrap();
    let want = format!(
        "cache directory {} is managed by the blob manager at {s}; use --blob-manager {s}",
        cache.display(),
        s = sock.display()
    );
    let runs = [
        common::rafs(args![
            "prefetch",
            &bootstrap,
            "--blobs",
            &blobs,
            "--cache-dir",
            &cache,
            "--no-progress",
            "--all"
        ]),
        common::rafs(args!["cache", "gc", &cache, "--bootstrap", &bootstrap]),
        // Bounded: a mount that wrongly starts would serve forever.
        common::cmd(
            "timeout",
            args![
                "20",
                common::rafs_bin(),
                "mount",
                &bootstrap,
                &mnt,
                "--blobs",
                &blobs,
                "--cache-dir",
                &cache
            ],
        ),
    ];
    for r in runs {
        let r = r.failed();
        assert!(r.stderr.contains(&want), "{r}");
    }
    drop(lock);
    common::rafs(args!["cache", "gc", &cache, "--bootstrap", &bootstrap]).ok();
    common::rafs(args![
        "prefetch",
        &bootstrap,
        "--blobs",
        &blobs,
        "--cache-dir",
        &cache,
        "--no-progress",
        "--all"
    ])
    .ok();
}
