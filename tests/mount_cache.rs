//! The disk cache and the fetch path under stress, through real FUSE
//! mounts:
//! - crash: `kill -9` of the daemon during cold reads, 20 times over one
//!   cache dir; after each, `rafs cache verify` finds no ready range with
//!   bad data, and at the end a remount serves the whole tree correctly;
//! - quota: reading four times the `--cache-size` keeps the cache under it
//!   while every read stays correct;
//! - faults: a seeded fault-injecting proxy (500, 429, resets, truncated
//!   and bit-flipped bodies) between the daemon and nginx: every read
//!   returns the right bytes or EIO, never a wrong byte; with the faults
//!   off everything reads back and the cache verifies clean;
//! - stalls: a backend that never answers fails the read with EIO at the
//!   `--read-timeout`, not later, and the mount recovers when it answers.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none, exclude_sockets};
use common::faultproxy::{Fault, FaultMix, FaultProxy};
use common::mount::{force_unmount, signal, Mounted};
use common::nginx::Nginx;
use common::reads::{regular_files, Rng};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn mount(bootstrap: &Path, mnt: &Path, opts: &[String]) -> Mounted {
    let opts: Vec<OsString> = opts.iter().map(OsString::from).collect();
    Mounted::with_options(bootstrap, mnt, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `rafs cache verify` passes; returns the number of chunks it checked.
fn verify_cache(cache: &Path, bootstrap: &Path) -> u64 {
    let r = common::rafs(args!["cache", "verify", cache, "--bootstrap", bootstrap]).ok();
    let summary = r.stdout.lines().last().unwrap_or_default().to_owned();
    let checked = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" chunks checked"))
        .and_then(|n| n.parse().ok());
    checked.unwrap_or_else(|| panic!("no chunk count in {summary:?}"))
}

/// Reads every file of `files` under `mnt`, ignoring errors (the daemon
/// may die at any moment), counting the files read in `done`.
fn read_all_ignoring_errors(mnt: &Path, files: &[(PathBuf, u64)], done: &AtomicUsize) {
    for (rel, _) in files {
        let _ = std::fs::read(mnt.join(rel));
        done.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn kill_9_during_cold_reads_never_leaves_bad_ready_ranges() {
    let work = common::tempdir();
    let src = common::rootfs();
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &[]);
    let cache = work.path().join("cache");
    let files = regular_files(&src, &|_| false);
    let opts = strings(&[
        "--blobs",
        out.join("blobs").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let mut rng = Rng::new(0x5eed_c0de);
    let mut checked_before_kills = 0;
    for round in 0..20 {
        let mnt_path = work.path().join(format!("mnt{round}"));
        let mut mnt = mount(&bootstrap, &mnt_path, &opts);
        // Readers start at different places so each round fetches new data.
        let start = (rng.below(files.len() as u64)) as usize;
        let order: Vec<(PathBuf, u64)> = files[start..]
            .iter()
            .chain(&files[..start])
            .cloned()
            .collect();
        let done = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (m, done) = (mnt_path.clone(), done.clone());
            std::thread::spawn(move || read_all_ignoring_errors(&m, &order, &done))
        };
        // Kill during the reads: once they are under way (the first file
        // was read), after a random pause that paces the kill point (not a
        // wait for anything).
        common::wait_until("the first read", Duration::from_secs(30), || {
            done.load(Ordering::SeqCst) > 0
        });
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        signal(mnt.pid(), libc::SIGKILL);
        assert!(
            mnt.wait_exit(Duration::from_secs(10)).is_some(),
            "daemon survived SIGKILL"
        );
        force_unmount(&mnt_path);
        reader.join().unwrap();
        checked_before_kills = verify_cache(&cache, &bootstrap);
    }
    assert!(
        checked_before_kills > 100,
        "the kills left only {checked_before_kills} chunks ready"
    );
    let mnt = mount(&bootstrap, &work.path().join("final"), &opts);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    drop(mnt);
    verify_cache(&cache, &bootstrap);
}

/// A tree of `n` incompressible files of `size` bytes.
fn random_tree(root: &Path, n: u64, size: usize) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..n {
        let data = common::tree::random_bytes(i + 1, size);
        std::fs::write(root.join(format!("f{i:03}")), data).unwrap();
    }
}

#[test]
fn cache_size_limit_holds_while_reads_stay_correct() {
    const LIMIT: u64 = 4 << 20;
    let work = common::tempdir();
    let src = work.path().join("src");
    random_tree(&src, 32, 512 << 10); // 16 MiB, 4x the limit
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &[]);
    let cache = work.path().join("cache");
    let sock = work.path().join("api.sock");
    let opts = strings(&[
        "--blobs",
        out.join("blobs").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--cache-size",
        "4M",
        "--chunk-cache-size",
        "1M",
        "--api-socket",
        sock.to_str().unwrap(),
    ]);
    let mnt = mount(&bootstrap, &work.path().join("mnt"), &opts);
    for _ in 0..2 {
        assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
        drop_page_cache();
    }
    // Writes are asynchronous: wait for the committer to evict.
    common::wait_until(
        &format!("the cache to shrink to {LIMIT} bytes"),
        Duration::from_secs(10),
        || common::cache_allocated(&cache) <= LIMIT,
    );
    assert!(common::metric(&sock, "rafs_cache_usage_bytes") <= LIMIT as f64);
    assert!(common::metric(&sock, "rafs_cache_evictions_total") > 0.0);
    // A scan larger than an LRU misses every time; a file read twice in a
    // row is served from the disk the second time, once the committer has
    // written it (until then, re-reads come from memory).
    let want = std::fs::read(src.join("f005")).unwrap();
    let file = mnt.mountpoint.join("f005");
    assert!(std::fs::read(&file).unwrap() == want);
    common::wait_until(
        "a re-read served from the disk",
        Duration::from_secs(10),
        || reread_from_disk(&sock, &file, &want),
    );
    drop(mnt);
    assert!(verify_cache(&cache, &bootstrap) > 0);
}

/// Drops the page cache and reads `file` again (checking its bytes):
/// whether the disk cache served the whole read (hits, no new misses).
fn reread_from_disk(sock: &Path, file: &Path, want: &[u8]) -> bool {
    drop_page_cache();
    let hits = common::metric(sock, "rafs_cache_hits_total");
    let misses = common::metric(sock, "rafs_cache_misses_total");
    assert!(
        std::fs::read(file).unwrap() == want,
        "wrong bytes in {file:?}"
    );
    common::metric(sock, "rafs_cache_hits_total") > hits
        && common::metric(sock, "rafs_cache_misses_total") == misses
}

fn drop_page_cache() {
    std::process::Command::new("sh")
        .args(["-c", "echo 3 > /proc/sys/vm/drop_caches"])
        .status()
        .unwrap();
}

/// A generated tree plus a few multi-chunk files, as an image served by
/// nginx; returns (source, bootstrap, nginx).
fn served_image(work: &Path) -> (PathBuf, PathBuf, Nginx) {
    let src = work.join("src");
    common::tree::make_tree(&src);
    random_tree(&src.join("big"), 4, 3 << 20);
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, &[]);
    let nginx = Nginx::serve(&out.join("blobs"));
    (src, bootstrap, nginx)
}

fn upstream_of(nginx: &Nginx) -> std::net::SocketAddr {
    nginx.url.trim_start_matches("http://").parse().unwrap()
}

#[test]
fn injected_faults_give_right_bytes_or_eio_never_wrong_bytes() {
    let work = common::tempdir();
    let (src, bootstrap, nginx) = served_image(work.path());
    let mix = FaultMix::all_pass()
        .weight(Fault::Pass, 12)
        .weight(Fault::Error500, 1)
        .weight(Fault::Error429, 1)
        .weight(Fault::Reset, 1)
        .weight(Fault::Truncate, 1)
        .weight(Fault::Flip, 1);
    let proxy = FaultProxy::start(upstream_of(&nginx), 0xfa17, mix);
    let cache = work.path().join("cache");
    let opts = strings(&[
        "--backend",
        &format!("{}/", proxy.url()),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--read-timeout",
        "20s",
        "--request-timeout",
        "2s",
        "--max-request-size",
        "128K",
    ]);
    let mnt = mount(&bootstrap, &work.path().join("mnt"), &opts);
    let files = regular_files(&src, &|_| false);
    let (mut ok, mut eio) = (0, 0);
    for (rel, _) in &files {
        match std::fs::read(mnt.mountpoint.join(rel)) {
            Ok(got) => {
                let want = std::fs::read(src.join(rel)).unwrap();
                assert!(got == want, "wrong bytes in {rel:?}");
                ok += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => eio += 1,
            Err(e) => panic!("{rel:?}: {e}\n{}", mnt.describe()),
        }
    }
    let stats = proxy.stats();
    for kind in [
        Fault::Error500,
        Fault::Error429,
        Fault::Reset,
        Fault::Truncate,
        Fault::Flip,
    ] {
        assert!(stats.count(kind) > 0, "no {kind:?} injected: {stats:?}");
    }
    assert!(ok > eio * 9, "{ok} reads ok, {eio} EIO");
    proxy.set_faults(FaultMix::all_pass());
    assert_same_tree(&src, &mnt.mountpoint, &exclude_sockets);
    drop(mnt);
    verify_cache(&cache, &bootstrap);
}

#[test]
fn a_stalled_backend_fails_reads_at_the_deadline_then_recovers() {
    let work = common::tempdir();
    let (src, bootstrap, nginx) = served_image(work.path());
    let proxy = FaultProxy::start(
        upstream_of(&nginx),
        7,
        FaultMix::only(Fault::Stall).stall_for(Duration::from_secs(120)),
    );
    let opts = strings(&[
        "--backend",
        &format!("{}/", proxy.url()),
        "--read-timeout",
        "3s",
        "--request-timeout",
        "1s",
    ]);
    let mnt = mount(&bootstrap, &work.path().join("mnt"), &opts);
    let file = mnt.mountpoint.join("big/f000");
    let t0 = Instant::now();
    let err = std::fs::read(&file).expect_err("read through a stalled backend succeeded");
    let took = t0.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "EIO after {took:?} (deadline 3s)"
    );
    proxy.set_faults(FaultMix::all_pass());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(src.join("big/f000")).unwrap()
    );
}

/// Unmounts the tmpfs at the path when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_cache_disk_degrades_to_memory_and_never_fails_reads() {
    let work = common::tempdir();
    let src = work.path().join("src");
    random_tree(&src, 16, 512 << 10); // 8 MiB of data, 1 MiB of disk
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &[]);
    let cache = work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    common::cmd(
        "mount",
        args!["-t", "tmpfs", "-o", "size=1m", "tmpfs", &cache],
    )
    .ok();
    let _tmpfs = Tmpfs(cache.clone());
    let sock = work.path().join("api.sock");
    let opts = strings(&[
        "--blobs",
        out.join("blobs").to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--api-socket",
        sock.to_str().unwrap(),
    ]);
    let mnt = mount(&bootstrap, &work.path().join("mnt"), &opts);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    assert!(common::metric(&sock, "rafs_cache_write_errors_total") > 0.0);
    let stderr = mnt.stderr();
    assert_eq!(
        stderr.matches("disk cache write failed").count(),
        1,
        "logged once:\n{stderr}"
    );
    drop(mnt);
    verify_cache(&cache, &bootstrap);
}
