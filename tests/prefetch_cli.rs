//! `rafs prefetch` end to end, over nginx (and the counting proxy):
//! - a prefetched directory is served by a mount whose server is gone,
//!   while a file outside it fails with EIO;
//! - a second run fetches nothing (no request reaches the server);
//! - `--prefetch-bandwidth` is honoured from above and not grossly undershot;
//! - a prefetch racing a mount on one cache dir fetches each frame once
//!   across both processes, and the cache verifies;
//! - usage: a missing path, no work, `--dry-run`.
//!
//! These tests FAIL (not skip) without FUSE or nginx: `.ci/run` installs
//! them.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_sockets};
use common::faultproxy::{FaultMix, FaultProxy};
use common::mount::Mounted;
use common::nginx::Nginx;
use common::tree::{make_tree, random_bytes, write};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An image of `make_tree` plus `/outside.bin` (random, its own chunks).
struct Img {
    src: PathBuf,
    bootstrap: PathBuf,
    blobs: PathBuf,
}

fn tree_image(work: &Path) -> Img {
    let src = work.join("src");
    make_tree(&src);
    write(
        &src.join("outside.bin"),
        &random_bytes(4242, (2 << 20) + 99),
    );
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, &[]);
    Img {
        src,
        bootstrap,
        blobs: out.join("blobs"),
    }
}

fn stored_bytes(blobs: &Path) -> u64 {
    common::blobs_in(blobs)
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum()
}

/// `rafs prefetch BOOTSTRAP --backend URL/ --cache-dir CACHE --no-progress extra...`.
fn prefetch(img: &Img, url: &str, cache: &Path, extra: &[&str]) -> common::Run {
    let mut a = args![
        "prefetch",
        &img.bootstrap,
        "--backend",
        format!("{url}/"),
        "--cache-dir",
        cache,
        "--no-progress"
    ];
    a.extend(extra.iter().map(OsString::from));
    common::rafs(&a)
}

fn json(r: &common::Run) -> serde_json::Value {
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("prefetch --json output is not JSON ({e}):\n{r}"))
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no numeric '{key}' in {v:#}"))
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

fn mount(bootstrap: &Path, mnt: &Path, opts: &[String]) -> Mounted {
    let opts: Vec<OsString> = opts.iter().map(OsString::from).collect();
    Mounted::with_options(bootstrap, mnt, &opts).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn prefetched_dir_is_served_after_the_server_is_gone() {
    let work = common::tempdir();
    let img = tree_image(work.path());
    let cache = work.path().join("cache");
    let nginx = Nginx::serve(&img.blobs);
    let url = nginx.url.clone();
    // Without a leading '/': the same as "/files".
    prefetch(&img, &url, &cache, &["files"]).ok();
    drop(nginx);
    let opts = vec![
        "--backend".to_string(),
        format!("{url}/"),
        "--cache-dir".into(),
        cache.display().to_string(),
        "--read-timeout".into(),
        "2s".into(),
    ];
    let mnt = mount(&img.bootstrap, &work.path().join("mnt"), &opts);
    assert_same_tree(&img.src.join("files"), &mnt.path("files"), &exclude_sockets);
    let t0 = Instant::now();
    let err = std::fs::read(mnt.path("outside.bin")).expect_err("read outside the prefetch");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "{err}\n{}",
        mnt.describe()
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[test]
fn second_prefetch_fetches_nothing() {
    let work = common::tempdir();
    let img = tree_image(work.path());
    let cache = work.path().join("cache");
    let nginx = Nginx::serve(&img.blobs);
    let proxy = FaultProxy::start(addr_of(&nginx.url), 1, FaultMix::all_pass());
    let first = json(&prefetch(&img, &proxy.url(), &cache, &["/files", "--json"]).ok());
    assert!(num(&first, "fetched_bytes") > 0.0, "{first:#}");
    assert_eq!(
        num(&first, "fetched_bytes"),
        num(&first, "bytes"),
        "{first:#}"
    );
    assert!(
        num(&first, "backend_bytes") >= num(&first, "bytes"),
        "{first:#}"
    );
    assert_eq!(first["complete"], true);
    let requests = proxy.stats().requests;
    assert!(requests > 0);

    let second = json(&prefetch(&img, &proxy.url(), &cache, &["/files", "--json"]).ok());
    assert_eq!(num(&second, "fetched_bytes"), 0.0, "{second:#}");
    assert_eq!(num(&second, "backend_bytes"), 0.0, "{second:#}");
    assert_eq!(num(&second, "fetched_frames"), 0.0, "{second:#}");
    assert_eq!(num(&second, "cached_frames"), num(&second, "frames"));
    assert_eq!(
        proxy.stats().requests,
        requests,
        "the second run sent requests"
    );

    // The dry run agrees: everything planned is cached.
    let dry = json(
        &prefetch(
            &img,
            &proxy.url(),
            &cache,
            &["/files", "--dry-run", "--json"],
        )
        .ok(),
    );
    assert_eq!(num(&dry, "cached_bytes"), num(&first, "bytes"), "{dry:#}");
    assert_eq!(num(&dry, "to_fetch_bytes"), 0.0);
    assert_eq!(proxy.stats().requests, requests);
}

#[test]
fn bandwidth_limit_is_honoured() {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("a.bin"), &random_bytes(7, 5 << 20));
    write(&src.join("b.bin"), &random_bytes(8, (2 << 20) + 12_345));
    let out = work.path().join("image");
    let img = Img {
        bootstrap: common::create(&src, &out, &[]),
        blobs: out.join("blobs"),
        src,
    };
    let stored = stored_bytes(&img.blobs) as f64;
    let nginx = Nginx::serve(&img.blobs);
    let cache = work.path().join("cache");
    let limit = (2u64 << 20) as f64;
    let t0 = Instant::now();
    let r = prefetch(
        &img,
        &nginx.url,
        &cache,
        &["--all", "--prefetch-bandwidth", "2MiB/s", "--json"],
    )
    .ok();
    let wall = t0.elapsed().as_secs_f64();
    let v = json(&r);
    let elapsed = num(&v, "elapsed_seconds");
    let rate = stored / elapsed;
    eprintln!(
        "stored {stored} B in {elapsed:.2} s (wall {wall:.2} s): {:.3} MiB/s for a 2 MiB/s limit",
        rate / limit * 2.0
    );
    assert_eq!(num(&v, "fetched_bytes"), stored, "{v:#}");
    assert!(rate <= 1.1 * limit, "{rate} B/s over the limit {limit}");
    assert!(
        stored / wall >= 0.5 * limit,
        "{} B/s: far below",
        stored / wall
    );
}

#[test]
fn prefetch_racing_a_mount_fetches_each_frame_once() {
    let work = common::tempdir();
    let img = tree_image(work.path());
    let stored = stored_bytes(&img.blobs) as f64;
    let nginx = Nginx::serve(&img.blobs);
    let proxy = FaultProxy::start(addr_of(&nginx.url), 2, FaultMix::all_pass());
    let cache = work.path().join("cache");
    let sock = work.path().join("api.sock");
    let opts = vec![
        "--backend".to_string(),
        format!("{}/", proxy.url()),
        "--cache-dir".into(),
        cache.display().to_string(),
        "--api-socket".into(),
        sock.display().to_string(),
    ];
    let mnt = mount(&img.bootstrap, &work.path().join("mnt"), &opts);
    // The prefetch is throttled to last about two seconds, so the reads
    // (in tree order; the prefetch goes in stored order) overlap it.
    let (url, cache2, boot) = (proxy.url(), cache.clone(), img.bootstrap.clone());
    let before = proxy.stats().requests;
    let bg = std::thread::spawn(move || {
        let a = args![
            "prefetch",
            &boot,
            "--backend",
            format!("{url}/"),
            "--cache-dir",
            &cache2,
            "--all",
            "--json",
            "--prefetch-bandwidth",
            "1MiB/s",
            "--prefetch-threads",
            "1"
        ];
        common::rafs(&a)
    });
    // The reads start once the prefetch is fetching (its first request
    // reached the proxy; the mount has read nothing yet), or has ended
    // (then its own output says why).
    common::wait_until(
        "the prefetch's first request",
        Duration::from_secs(30),
        || proxy.stats().requests > before || bg.is_finished(),
    );
    assert_same_tree(&img.src, &mnt.mountpoint, &exclude_sockets);
    let r = bg.join().expect("the prefetch thread").ok();
    let v = json(&r);
    assert_eq!(v["complete"], true, "{v:#}");
    let daemon = common::metric(&sock, "rafs_backend_bytes_total");
    let ours = num(&v, "backend_bytes");
    eprintln!("stored {stored}: daemon fetched {daemon}, prefetch {ours}");
    assert!(
        daemon + ours <= 1.05 * stored,
        "daemon {daemon} + prefetch {ours} bytes fetched for {stored} stored"
    );
    drop(mnt);
    common::rafs(args![
        "cache",
        "verify",
        &cache,
        "--bootstrap",
        &img.bootstrap
    ])
    .ok();
}

#[test]
fn usage_errors_and_dry_run() {
    let work = common::tempdir();
    let img = tree_image(work.path());
    let cache = work.path().join("cache");
    let blobs = |extra: &[&str]| {
        let mut a = args![
            "prefetch",
            &img.bootstrap,
            "--blobs",
            &img.blobs,
            "--cache-dir",
            &cache
        ];
        a.extend(extra.iter().map(OsString::from));
        common::rafs(&a)
    };
    let r = blobs(&["/files", "/no/such/thing"]).failed();
    assert!(r.stderr.contains("/no/such/thing"), "{r}");
    assert!(!r.stdout.contains("prefetched"), "{r}");
    let r = blobs(&[]).failed();
    assert_eq!(r.status.code(), Some(2), "{r}");
    assert!(r.stderr.contains("--all"), "{r}");
    let r = blobs(&["/files", "--all"]).failed();
    assert_eq!(r.status.code(), Some(2), "{r}");

    let r = blobs(&["/files", "--dry-run"]).ok();
    assert!(r.stdout.contains("would prefetch"), "{r}");
    let v = json(&blobs(&["--all", "--dry-run", "--json"]).ok());
    assert_eq!(num(&v, "bytes"), stored_bytes(&img.blobs) as f64, "{v:#}");
    assert_eq!(num(&v, "cached_bytes"), 0.0, "{v:#}");
    // Nothing was fetched: a real run still fetches everything.
    let v = json(&blobs(&["--all", "--json", "--no-progress"]).ok());
    assert_eq!(num(&v, "cached_frames"), 0.0, "{v:#}");
    assert_eq!(num(&v, "fetched_bytes"), num(&v, "bytes"), "{v:#}");
    // A list file works as paths do.
    let list = work.path().join("list");
    std::fs::write(&list, "# warm\n/outside.bin\n").unwrap();
    let v = json(&blobs(&["--list", list.to_str().unwrap(), "--json"]).ok());
    assert!(
        num(&v, "frames") > 0.0 && num(&v, "fetched_frames") == 0.0,
        "{v:#}"
    );
}
