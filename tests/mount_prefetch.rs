//! Prefetch on mount and access recording, through real FUSE mounts over
//! nginx (behind the counting fault proxy where requests are counted):
//! - a workload recorded with `--record-access` gives a list with its files
//!   in first-access order and the ranges read; mounted again with a fresh
//!   cache and `--prefetch-list`, once the prefetch is done the same
//!   workload reads correct data with zero backend requests;
//! - `--prefetch-all` fills the disk cache: with nginx gone the whole tree
//!   still reads back equal to its source;
//! - the image's prefetch table (`rafs create --prefetch-list`) is
//!   prefetched by default, and not with `--no-prefetch`;
//! - SIGUSR1 (and `POST /record`) write the record while the mount keeps
//!   serving.
//!
//! These tests FAIL (not skip) without FUSE or nginx.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_sockets};
use common::faultproxy::{FaultMix, FaultProxy};
use common::mount::Mounted;
use common::nginx::Nginx;
use rafs::image::list;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a prefetch of the test images may take.
const PREFETCH_TIMEOUT: Duration = Duration::from_secs(120);

fn mount(bootstrap: &Path, mnt: &Path, opts: &[&OsStr]) -> Mounted {
    let opts: Vec<OsString> = opts.iter().map(OsString::from).collect();
    Mounted::with_options(bootstrap, mnt, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// nginx serving `blobs`, and a pass-through proxy in front that counts
/// requests.
fn counted_backend(blobs: &Path) -> (Nginx, FaultProxy) {
    let nginx = Nginx::serve(blobs);
    let addr: SocketAddr = nginx
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("nginx address");
    let proxy = FaultProxy::start(addr, 1, FaultMix::all_pass());
    (nginx, proxy)
}

/// `curl` on the API socket; the body (panics unless 2xx).
fn api(socket: &Path, method: &str, path: &str) -> String {
    let url = format!("http://rafs{path}");
    common::cmd(
        "curl",
        args!["-sf", "-X", method, "--unix-socket", socket, url],
    )
    .ok()
    .stdout
}

fn status(socket: &Path) -> serde_json::Value {
    let body = api(socket, "GET", "/status");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Polls `/status` until the prefetch is done; panics if it stops early
/// or takes longer than [`PREFETCH_TIMEOUT`].
fn wait_prefetch_done(socket: &Path, mnt: &Mounted) -> serde_json::Value {
    let deadline = Instant::now() + PREFETCH_TIMEOUT;
    loop {
        let s = status(socket);
        match s["prefetch"]["state"].as_str() {
            Some("done") => return s["prefetch"].clone(),
            Some("running") if Instant::now() < deadline => {}
            _ => panic!("prefetch not done: {s}\n{}", mnt.describe()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 20 ms for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tree of incompressible files of several sizes, in two directories,
/// with a hardlink whose second name sorts after its first.
fn workload_tree(root: &Path) {
    let files: [(&str, usize); 7] = [
        ("a/big", 12 << 20),
        ("a/medium", 3 << 20),
        ("a/small", 5000),
        ("a/unread", 4 << 20),
        ("b/other", 2 << 20),
        ("b/tiny", 100),
        ("b/unread2", 1 << 20),
    ];
    for (i, (rel, size)) in files.iter().enumerate() {
        common::tree::write(
            &root.join(rel),
            &common::tree::random_bytes(i as u64 + 7, *size),
        );
    }
    std::fs::create_dir_all(root.join("z")).unwrap();
    std::fs::hard_link(root.join("a/medium"), root.join("z/link")).unwrap();
}

/// One read of the workload: a file, and a part of it (`None`: all).
type Read = (&'static str, Option<(u64, usize)>);

/// The workload: some files whole, some partly, one through a hardlink.
const WORKLOAD: [Read; 5] = [
    ("b/tiny", None),
    ("a/big", Some((6 << 20, 64 << 10))),
    ("z/link", None),
    ("a/small", None),
    ("b/other", Some((0, 100_000))),
];

/// Runs the workload under `mnt`, checking every byte against `src`.
fn run_workload(src: &Path, mnt: &Mounted) {
    for (rel, part) in WORKLOAD {
        let want = std::fs::read(src.join(rel)).unwrap();
        let path = mnt.path(rel);
        match part {
            None => {
                let got = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("read {rel}: {e}\n{}", mnt.describe()));
                assert!(got == want, "{rel}: wrong data");
            }
            Some((off, len)) => {
                let mut buf = vec![0; len];
                let f = std::fs::File::open(&path).unwrap();
                f.read_exact_at(&mut buf, off)
                    .unwrap_or_else(|e| panic!("read {rel}@{off}: {e}\n{}", mnt.describe()));
                assert!(
                    buf[..] == want[off as usize..off as usize + len],
                    "{rel}@{off}"
                );
            }
        }
    }
}

fn image(work: &Path, tree: fn(&Path), extra: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let src = work.join("src");
    tree(&src);
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, extra);
    (src, bootstrap, out.join("blobs"))
}

/// The recorded list: the workload's files in first-access order (the
/// hardlink under its first name), whole reads as one full range, partial
/// reads covering what was read but not the whole file.
fn check_recorded_list(src: &Path, text: &[u8]) {
    let entries = list::parse(text, "record").unwrap();
    let paths: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    assert_eq!(
        paths,
        ["/b/tiny", "/a/big", "/a/medium", "/a/small", "/b/other"],
        "{}",
        String::from_utf8_lossy(text)
    );
    let reads = [
        WORKLOAD[0],
        WORKLOAD[1],
        WORKLOAD[2],
        WORKLOAD[3],
        WORKLOAD[4],
    ];
    for (e, (rel, part)) in entries.iter().zip(reads) {
        let size = std::fs::metadata(src.join(rel)).unwrap().len();
        let ranges = e.ranges.clone().expect("ranges recorded");
        assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0), "{ranges:?}");
        match part {
            None => assert_eq!(ranges, [(0, size)], "{rel}"),
            Some((off, len)) => {
                let end = off + len as u64;
                assert!(
                    ranges.iter().any(|&(a, b)| a <= off && end <= b),
                    "{rel}: {ranges:?} misses {off}..{end}"
                );
                let covered: u64 = ranges.iter().map(|(a, b)| b - a).sum();
                assert!(covered < size, "{rel}: {ranges:?} is the whole file");
                assert!(ranges.iter().all(|&(_, b)| b <= size), "{ranges:?}");
            }
        }
    }
}

#[test]
fn recorded_list_prefetched_on_mount_serves_the_workload_without_backend_requests() {
    let work = common::tempdir();
    let w = work.path();
    let (src, bootstrap, blobs) = image(w, workload_tree, &[]);
    let (_nginx, proxy) = counted_backend(&blobs);
    let backend = format!("{}/", proxy.url());
    let list_path = w.join("access.list");

    let mut mnt = mount(
        &bootstrap,
        &w.join("mnt1"),
        &[
            "--backend".as_ref(),
            backend.as_ref(),
            "--record-access".as_ref(),
            list_path.as_os_str(),
        ],
    );
    run_workload(&src, &mnt);
    assert!(proxy.stats().requests > 0, "the proxy is not in the path");
    assert!(mnt.terminate().success(), "{}", mnt.describe());
    let text = std::fs::read(&list_path).unwrap_or_else(|e| panic!("no record: {e}"));
    check_recorded_list(&src, &text);

    let sock = w.join("api.sock");
    let cache = w.join("cache");
    let with_cache = [OsStr::new("--cache-dir"), cache.as_os_str()];
    let (mnt, p) = mount_prefetching(
        &bootstrap,
        &w.join("mnt2"),
        &backend,
        &list_path,
        &sock,
        &with_cache,
    );
    assert!(p["planned_bytes"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["planned_bytes"], p["done_bytes"], "{p}");
    // Only what the list names: far less than the image.
    let stored: u64 = common::blobs_in(&blobs)
        .iter()
        .map(|b| b.1.len() as u64)
        .sum();
    let fetched = p["fetched_bytes"].as_u64().unwrap();
    assert!(fetched > 0 && fetched < stored / 2, "{p}");
    assert!(common::metric(&sock, "rafs_prefetch_seconds") > 0.0);
    assert!(common::metric(&sock, "rafs_prefetch_bytes_total") > 0.0);
    workload_without_requests(&src, &mnt, &proxy, &sock);
    drop(mnt);

    // Without a disk cache the prefetch warms the memory LRU instead.
    let memory = [OsStr::new("--chunk-cache-size"), OsStr::new("64M")];
    let (mut mnt, _) = mount_prefetching(
        &bootstrap,
        &w.join("mnt3"),
        &backend,
        &list_path,
        &sock,
        &memory,
    );
    // Not recording: SIGUSR1 is logged and ignored, not fatal.
    mnt.signal(libc::SIGUSR1);
    workload_without_requests(&src, &mnt, &proxy, &sock);
    assert!(
        mnt.wait_exit(Duration::ZERO).is_none(),
        "{}",
        mnt.describe()
    );
}

/// Mounts over `backend` with `--prefetch-list list`, the API on `sock`
/// and `extra`; returns once the prefetch is done, with its status.
fn mount_prefetching(
    bootstrap: &Path,
    mnt: &Path,
    backend: &str,
    list: &Path,
    sock: &Path,
    extra: &[&OsStr],
) -> (Mounted, serde_json::Value) {
    let mut opts = vec![
        OsStr::new("--backend"),
        OsStr::new(backend),
        OsStr::new("--prefetch-list"),
        list.as_os_str(),
        OsStr::new("--api-socket"),
        sock.as_os_str(),
    ];
    opts.extend_from_slice(extra);
    let m = mount(bootstrap, mnt, &opts);
    let p = wait_prefetch_done(sock, &m);
    (m, p)
}

/// Runs the workload (checking the data) and asserts that the proxy saw
/// no request and that prefetched data served reads.
fn workload_without_requests(src: &Path, mnt: &Mounted, proxy: &FaultProxy, sock: &Path) {
    let before = proxy.stats().requests;
    run_workload(src, mnt);
    assert_eq!(
        proxy.stats().requests,
        before,
        "the workload reached the backend after the prefetch\n{}",
        mnt.describe()
    );
    assert!(common::metric(sock, "rafs_prefetch_hits_total") > 0.0);
}

#[test]
fn prefetch_all_fills_the_cache_and_the_tree_reads_back_without_the_backend() {
    let work = common::tempdir();
    let w = work.path();
    let (src, bootstrap, blobs) = image(w, common::tree::make_tree, &[]);
    let nginx = Nginx::serve(&blobs);
    let backend = format!("{}/", nginx.url);
    let (sock, cache) = (w.join("api.sock"), w.join("cache"));
    let mnt = mount(
        &bootstrap,
        &w.join("mnt"),
        &[
            "--backend".as_ref(),
            backend.as_ref(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            "--prefetch-all".as_ref(),
            "--api-socket".as_ref(),
            sock.as_os_str(),
            "--read-timeout".as_ref(),
            "5s".as_ref(),
            "-v".as_ref(),
        ],
    );
    let p = wait_prefetch_done(&sock, &mnt);
    let stored: u64 = common::blobs_in(&blobs)
        .iter()
        .map(|b| b.1.len() as u64)
        .sum();
    assert!(p["planned_bytes"].as_u64().unwrap() > 0, "{p}");
    assert!(p["planned_bytes"].as_u64().unwrap() <= stored, "{p}");
    drop(nginx);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_sockets);
    assert_eq!(common::metric(&sock, "rafs_backend_errors_total"), 0.0);
    assert!(common::metric(&sock, "rafs_cache_hits_total") > 0.0);
    eventually("the prefetch's info line", || {
        mnt.stderr().contains("prefetch finished")
    });
}

#[test]
fn unmount_during_a_slow_prefetch_exits_promptly() {
    let work = common::tempdir();
    let w = work.path();
    let (_src, bootstrap, blobs) = image(w, workload_tree, &[]);
    let nginx = Nginx::serve(&blobs);
    let backend = format!("{}/", nginx.url);
    let (sock, cache) = (w.join("api.sock"), w.join("cache"));
    let mut mnt = mount(
        &bootstrap,
        &w.join("mnt"),
        &[
            "--backend".as_ref(),
            backend.as_ref(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            "--prefetch-all".as_ref(),
            "--prefetch-bandwidth".as_ref(),
            "1MiB/s".as_ref(),
            "--prefetch-threads".as_ref(),
            "1".as_ref(),
            "--api-socket".as_ref(),
            sock.as_os_str(),
        ],
    );
    // At 1 MiB/s the ~23 MiB image takes over 20 s.
    eventually("prefetch progress", || {
        common::metric(&sock, "rafs_prefetch_bytes_total") > 0.0
    });
    let p = status(&sock)["prefetch"].clone();
    assert_eq!(p["state"], "running", "{p}");
    assert!(p["fetched_bytes"].as_u64().unwrap() < p["planned_bytes"].as_u64().unwrap());
    let t0 = Instant::now();
    assert!(mnt.terminate().success(), "{}", mnt.describe());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "exit took {:?}\n{}",
        t0.elapsed(),
        mnt.describe()
    );
}

/// A workload tree plus the builder's prefetch list naming two of its
/// files.
fn table_image(w: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let table = w.join("table.list");
    std::fs::write(&table, "/a/medium\nb/other\n").unwrap();
    image(
        w,
        workload_tree,
        &["--prefetch-list", table.to_str().unwrap()],
    )
}

#[test]
fn image_prefetch_table_is_prefetched_by_default_and_not_with_no_prefetch() {
    let work = common::tempdir();
    let w = work.path();
    let (src, bootstrap, blobs) = table_image(w);
    let (_nginx, proxy) = counted_backend(&blobs);
    let backend = format!("{}/", proxy.url());
    let sock = w.join("api.sock");
    let opts = |cache: &Path, extra: &[&'static str]| -> Vec<OsString> {
        let mut v = args![
            "--backend",
            &backend,
            "--cache-dir",
            cache,
            "--api-socket",
            &sock
        ];
        v.extend(extra.iter().map(OsString::from));
        v
    };
    let read_table = |mnt: &Mounted| {
        for rel in ["a/medium", "b/other"] {
            let got = std::fs::read(mnt.path(rel)).unwrap();
            assert!(got == std::fs::read(src.join(rel)).unwrap(), "{rel}");
        }
    };

    let o = opts(&w.join("cache1"), &[]);
    let mnt =
        Mounted::with_options(&bootstrap, &w.join("mnt1"), &o).unwrap_or_else(|e| panic!("{e}"));
    let p = wait_prefetch_done(&sock, &mnt);
    let table_bytes = p["planned_bytes"].as_u64().unwrap();
    // Two files of 3 MiB and 2 MiB, incompressible.
    assert!((5 << 20..6 << 20).contains(&table_bytes), "{p}");
    let before = proxy.stats().requests;
    read_table(&mnt);
    assert_eq!(proxy.stats().requests, before, "{}", mnt.describe());
    drop(mnt);

    let o = opts(&w.join("cache2"), &["--no-prefetch"]);
    let mnt =
        Mounted::with_options(&bootstrap, &w.join("mnt2"), &o).unwrap_or_else(|e| panic!("{e}"));
    // No thread is ever started: the state is "none" from the start.
    assert_eq!(status(&sock)["prefetch"]["state"], "none");
    assert_eq!(common::metric(&sock, "rafs_prefetch_bytes_total"), 0.0);
    let before = proxy.stats().requests;
    read_table(&mnt);
    assert!(
        proxy.stats().requests > before,
        "nothing was fetched on demand"
    );
    assert_eq!(common::metric(&sock, "rafs_prefetch_bytes_total"), 0.0);
}

#[test]
fn sigusr1_and_post_record_write_the_record_while_the_mount_keeps_running() {
    let work = common::tempdir();
    let w = work.path();
    let (src, bootstrap, blobs) = image(w, workload_tree, &[]);
    let dir = w.join("records");
    std::fs::create_dir(&dir).unwrap();
    let (list_path, sock) = (dir.join("access.list"), w.join("api.sock"));
    let mut mnt = mount(
        &bootstrap,
        &w.join("mnt"),
        &[
            "--blobs".as_ref(),
            blobs.as_os_str(),
            "--record-access".as_ref(),
            list_path.as_os_str(),
            "--api-socket".as_ref(),
            sock.as_os_str(),
        ],
    );
    let paths = |text: &[u8]| -> Vec<Vec<u8>> {
        list::parse(text, "record")
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    assert_eq!(
        std::fs::read(mnt.path("a/small")).unwrap(),
        std::fs::read(src.join("a/small")).unwrap()
    );
    mnt.signal(libc::SIGUSR1);
    eventually("the record after SIGUSR1", || list_path.exists());
    assert_eq!(
        paths(&std::fs::read(&list_path).unwrap()),
        [b"/a/small".to_vec()]
    );

    // Still serving; the API writes the newer record.
    assert_eq!(
        std::fs::read(mnt.path("b/tiny")).unwrap(),
        std::fs::read(src.join("b/tiny")).unwrap()
    );
    assert!(
        mnt.wait_exit(Duration::ZERO).is_none(),
        "{}",
        mnt.describe()
    );
    let reply: serde_json::Value = serde_json::from_str(&api(&sock, "POST", "/record")).unwrap();
    assert_eq!(reply["entries"], 2, "{reply}");
    let want = [b"/a/small".to_vec(), b"/b/tiny".to_vec()];
    assert_eq!(paths(&std::fs::read(&list_path).unwrap()), want);
    // Atomic replacement leaves nothing else behind.
    assert_eq!(common::list_recursive(&dir), [PathBuf::from("access.list")]);

    assert!(mnt.terminate().success(), "{}", mnt.describe());
    assert_eq!(paths(&std::fs::read(&list_path).unwrap()), want);
}
