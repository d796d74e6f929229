//! A real Debian rootfs served by `rafs mount`: the whole tree compared
//! with the source, real programs run from the mount (`chroot` into it:
//! the dynamic loader, libc, perl and dpkg all read through FUSE), and 8
//! threads of seeded random `pread`s checked against the source while the
//! daemon runs with a small chunk cache, so eviction happens under load.
//!
//! The rootfs is `target/test-rootfs`, built once by
//! `scripts/debootstrap-rootfs.sh` (shared with tests/rootfs.rs). If it
//! cannot be built, or FUSE is missing, these tests FAIL.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::mount::{within, Mounted};
use common::reads::{compare_random_reads, regular_files};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Builds (once, under a lock shared by parallel tests) and returns the
/// rootfs.
fn rootfs() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dest = root.join("target/test-rootfs");
    let script = root.join("scripts/debootstrap-rootfs.sh");
    common::cmd("bash", args![&script, &dest]).ok();
    assert!(
        dest.join("usr/bin").is_dir(),
        "no usr/bin in {}",
        dest.display()
    );
    dest
}

/// The rootfs built with `create_opts`, mounted with `mount_opts`.
fn mounted_rootfs(work: &Path, create_opts: &[&str], mount_opts: &[&str]) -> (PathBuf, Mounted) {
    let src = rootfs();
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, create_opts);
    let mnt = Mounted::start(
        &bootstrap,
        &out.join("blobs"),
        &work.join("mnt"),
        mount_opts,
    );
    (src, mnt)
}

#[test]
fn debian_rootfs_matches_source_through_mount() {
    let work = common::tempdir();
    let (src, mnt) = mounted_rootfs(work.path(), &[], &[]);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
}

/// Runs `chroot MNT argv...` and returns its stdout; panics with the
/// output of the program and of the daemon on failure.
fn in_chroot(mnt: &Mounted, argv: &[&str]) -> String {
    let mut a = args![&mnt.mountpoint];
    a.extend(argv.iter().map(std::ffi::OsString::from));
    let r = common::cmd("chroot", a);
    assert!(r.status.success(), "{r}\n{}", mnt.describe());
    r.stdout
}

#[test]
fn programs_run_from_the_mounted_rootfs() {
    let work = common::tempdir();
    // A bare chroot uses the image's own /dev (a container runtime would
    // mount its own): device nodes must be opted in.
    let (_src, mnt) = mounted_rootfs(work.path(), &[], &["--dev"]);
    let shout = in_chroot(
        &mnt,
        &["/bin/sh", "-c", "echo hello | tr a-z A-Z | grep HELLO"],
    );
    assert_eq!(shout.trim(), "HELLO");
    assert_eq!(in_chroot(&mnt, &["perl", "-e", "print 6*7"]), "42");
    let installed = in_chroot(&mnt, &["/bin/sh", "-c", "dpkg -l | grep -c '^ii'"]);
    let n: u32 = installed
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("dpkg -l | grep -c printed {installed:?}: {e}"));
    assert!(n > 50, "dpkg lists only {n} installed packages");
    let sum = in_chroot(
        &mnt,
        &["/bin/sh", "-c", "sha256sum /usr/bin/perl | cut -c1-64"],
    );
    let want = common::cmd("sha256sum", args![rootfs().join("usr/bin/perl")]).ok();
    assert_eq!(
        sum.trim(),
        &want.stdout[..64],
        "perl digest through the mount"
    );
}

#[test]
fn eight_threads_of_random_preads_match_source() {
    const THREADS: u64 = 8;
    const READS: usize = 2000;
    let work = common::tempdir();
    let (src, mnt) = mounted_rootfs(
        work.path(),
        &[],
        &["--threads", "4", "--chunk-cache-size", "8M"],
    );
    let files = Arc::new(regular_files(&src, &|_| false));
    assert!(
        files.len() > 3000,
        "only {} files in the rootfs",
        files.len()
    );
    let (src, root) = (Arc::new(src), Arc::new(mnt.mountpoint.clone()));
    let bad = within("8 reader threads", Duration::from_secs(600), move || {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (src, root, files) = (src.clone(), root.clone(), files.clone());
                std::thread::spawn(move || {
                    compare_random_reads(&src, &root, &files, 1000 + t, READS, 2 << 20)
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("reader thread panicked"))
            .collect::<Vec<_>>()
    });
    assert!(
        bad.is_empty(),
        "{} of {} reads wrong:\n{}\n{}",
        bad.len(),
        THREADS as usize * READS,
        bad.iter().take(50).cloned().collect::<Vec<_>>().join("\n"),
        mnt.describe()
    );
}
