//! The blob manager end to end: a real `rafs blobmgr` daemon, real FUSE
//! mounts and `rafs prefetch` as its clients, a recording HTTP server as
//! the backend.
//! - sharing: 4 mounts of two images that share a blob, 3 readers each,
//!   all cold: every byte right, every stored byte fetched once in total;
//! - crashes: `kill -9` of the manager during cold reads, 20 rounds: no
//!   wrong byte, no failed read, `rafs cache verify` clean;
//! - manager gone for good: `fallback fetch` reads succeed from the
//!   backend, `wait` reads fail with EIO at the read deadline;
//! - eviction under load: a tiny `--cache-size`, many evictions, no
//!   mismatch;
//! - prefetch through the manager, then a mount with 0 backend requests;
//! - the managed directory is refused to standalone users; peers outside
//!   the allow list are refused; a flood of connections leaves the
//!   manager's descriptors at baseline.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::httpd::{range_response, Httpd, Response};
use common::mount::{signal, Mounted};
use common::reads::{regular_files, Rng};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running `rafs blobmgr`; killed on drop.
struct Manager {
    socket: PathBuf,
    api: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    log: PathBuf,
}

impl Manager {
    /// Starts a manager on `work/bm.sock` over `cache` with `extra` flags.
    fn start(work: &Path, cache: &Path, extra: Vec<OsString>) -> Manager {
        let socket = work.join("bm.sock");
        let api = work.join("bm-api.sock");
        let mut args = args![
            "blobmgr",
            "--socket",
            &socket,
            "--cache-dir",
            cache,
            "--api-socket",
            &api
        ];
        args.extend(extra);
        let mut m = Manager {
            socket,
            api,
            args,
            child: None,
            log: work.join("bm.log"),
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(common::rafs_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let api = self.api.clone();
        let log = self.log.clone();
        let pid = self.pid();
        common::wait_until(
            &format!("the manager to serve (log {})", log.display()),
            Duration::from_secs(30),
            || {
                assert!(
                    Path::new(&format!("/proc/{pid}")).exists(),
                    "the manager exited: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                api_up(&api)
            },
        );
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }

    fn metric(&self, name: &str) -> f64 {
        common::metric(&self.api, name)
    }

    /// Descriptors the manager holds now.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn api_up(api: &Path) -> bool {
    Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(api)
        .arg("http://rafs/status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An HTTP server with every blob of `dirs`, answering range requests.
fn blob_server(dirs: &[&Path]) -> Httpd {
    blob_server_slowed(dirs, Duration::ZERO)
}

/// [`blob_server`] taking `delay` more per request (a remote backend's
/// latency: cold reads then last long enough to be interrupted).
fn blob_server_slowed(dirs: &[&Path], delay: Duration) -> Httpd {
    let mut blobs = std::collections::HashMap::new();
    for d in dirs {
        for (id, bytes) in common::blobs_in(d) {
            blobs.insert(format!("/{}", id.to_hex()), bytes);
        }
    }
    Httpd::start(move |req| {
        std::thread::sleep(delay); // latency injection, not a wait
        match blobs.get(&req.target) {
            Some(b) => range_response(req, b),
            None => Response::new(404, ""),
        }
    })
}

/// The byte ranges of GET requests per blob path.
fn fetched_ranges(h: &Httpd) -> Vec<(String, u64, u64)> {
    h.seen()
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| {
            let spec = r.header("range")?.strip_prefix("bytes=")?;
            let (a, b) = spec.split_once('-')?;
            Some((r.target.clone(), a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Asserts no stored byte was requested twice (each frame fetched once in
/// total, across every client).
fn assert_fetched_once(h: &Httpd) {
    let mut r = fetched_ranges(h);
    assert!(!r.is_empty(), "nothing was fetched");
    r.sort();
    for w in r.windows(2) {
        if w[0].0 == w[1].0 {
            assert!(
                w[1].1 > w[0].2,
                "bytes {}..={} of {} fetched twice ({:?} and {:?})",
                w[1].1,
                w[0].2.min(w[1].2),
                w[0].0,
                w[0],
                w[1]
            );
        }
    }
}

fn client_opts(url: &str, m: &Manager, api: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut o = args![
        "--backend",
        url,
        "--blob-manager",
        &m.socket,
        "--api-socket",
        api
    ];
    o.extend(extra.iter().map(OsString::from));
    o
}

fn mount(bootstrap: &Path, mnt: &Path, opts: &[OsString]) -> Mounted {
    Mounted::with_options(bootstrap, mnt, opts).unwrap_or_else(|e| panic!("{e}"))
}

/// A tree of `n` files of `size` bytes each, half random (incompressible),
/// half text.
fn tree(root: &Path, n: u64, size: usize, seed: u64) {
    std::fs::create_dir_all(root).unwrap();
    for i in 0..n {
        let data = match i % 2 {
            0 => common::tree::random_bytes(seed + i, size),
            _ => common::tree::text_bytes(size + i as usize),
        };
        std::fs::write(root.join(format!("f{i:03}")), data).unwrap();
    }
}

/// Two images sharing a blob: A from `a/`, B from a copy of `a/` plus more
/// files, built with `--chunk-dict A` (A's chunks come from A's blob).
struct Pair {
    src_a: PathBuf,
    src_b: PathBuf,
    boot_a: PathBuf,
    boot_b: PathBuf,
    blobs: Vec<PathBuf>,
}

fn image_pair(work: &Path) -> Pair {
    let src_a = work.join("src-a");
    tree(&src_a, 24, 700 << 10, 1);
    let src_b = work.join("src-b");
    common::cmd("cp", args!["-a", &src_a, &src_b]).ok();
    tree(&src_b.join("more"), 8, 500 << 10, 100);
    let out_a = work.join("img-a");
    let boot_a = common::create(&src_a, &out_a, &[]);
    let out_b = work.join("img-b");
    let dict = boot_a.to_str().unwrap().to_owned();
    let boot_b = common::create(&src_b, &out_b, &["--chunk-dict", &dict]);
    Pair {
        src_a,
        src_b,
        boot_a,
        boot_b,
        blobs: vec![out_a.join("blobs"), out_b.join("blobs")],
    }
}

/// Reads every regular file of `src` through `mnt` and compares; returns
/// the failures (errors and mismatches), reading from `start`.
fn read_compare(src: &Path, mnt: &Path, start: usize) -> Vec<String> {
    read_compare_counted(src, mnt, start, &AtomicUsize::new(0))
}

/// [`read_compare`], counting the files read in `done`.
fn read_compare_counted(src: &Path, mnt: &Path, start: usize, done: &AtomicUsize) -> Vec<String> {
    let files = regular_files(src, &|_| false);
    let n = files.len().max(1);
    let mut bad = Vec::new();
    for i in 0..files.len() {
        let (rel, _) = &files[(start + i) % n];
        let want = std::fs::read(src.join(rel)).unwrap();
        match std::fs::read(mnt.join(rel)) {
            Ok(got) if got == want => {}
            Ok(_) => bad.push(format!("{}: wrong bytes", rel.display())),
            Err(e) => bad.push(format!("{}: {e}", rel.display())),
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
    bad
}

#[test]
fn four_mounts_of_two_images_share_one_manager_and_fetch_each_frame_once() {
    let work = common::tempdir();
    let p = image_pair(work.path());
    let dirs: Vec<&Path> = p.blobs.iter().map(PathBuf::as_path).collect();
    let http = blob_server(&dirs);
    let m = Manager::start(
        work.path(),
        &work.path().join("cache"),
        args!["--backend", http.url() + "/"],
    );
    let url = http.url() + "/";
    let mounts: Vec<(Mounted, PathBuf, PathBuf)> = (0..4)
        .map(|i| {
            let (boot, src) = match i % 2 {
                0 => (&p.boot_a, &p.src_a),
                _ => (&p.boot_b, &p.src_b),
            };
            let api = work.path().join(format!("api{i}.sock"));
            let opts = client_opts(&url, &m, &api, &[]);
            let mnt = mount(boot, &work.path().join(format!("mnt{i}")), &opts);
            (mnt, src.clone(), api)
        })
        .collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let mut readers = Vec::new();
        for (mnt, src, _) in &mounts {
            for r in 0..3 {
                let (src, mnt) = (src.clone(), mnt.mountpoint.clone());
                readers.push(s.spawn(move || read_compare(&src, &mnt, r * 7)));
            }
        }
        readers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
    assert_fetched_once(&http);
    for (mnt, _, api) in &mounts {
        assert_eq!(
            common::metric(api, "rafs_backend_requests_total"),
            0.0,
            "a client fetched by itself: {}",
            mnt.describe()
        );
    }
    assert!(m.metric("rafs_blobmgr_clients") >= 4.0);
    drop(mounts);
    drop(m);
    for boot in [&p.boot_a, &p.boot_b] {
        common::rafs(args![
            "cache",
            "verify",
            work.path().join("cache"),
            "--bootstrap",
            boot
        ])
        .ok();
    }
}

#[test]
fn kill_9_of_the_manager_during_cold_reads_costs_no_read_20_rounds() {
    let work = common::tempdir();
    let src = work.path().join("src");
    tree(&src, 40, 400 << 10, 7);
    let out = work.path().join("img");
    let boot = common::create(&src, &out, &[]);
    let blobs = out.join("blobs");
    // 50 ms per request: the cold reads take long enough to be cut.
    let http = blob_server_slowed(&[&blobs], Duration::from_millis(50));
    let url = http.url() + "/";
    let cache = work.path().join("cache");
    let mut m = Manager::start(work.path(), &cache, args!["--backend", &url]);
    let mut rng = Rng::new(0xb10b);
    let files = regular_files(&src, &|_| false).len();
    let (mut mid_read, mut reconnects) = (0, 0.0);
    for round in 0..20 {
        let mounts: Vec<Mounted> = (0..3)
            .map(|i| {
                let api = work.path().join(format!("api-{round}-{i}.sock"));
                let extra = ["--blob-manager-fallback", "wait", "--read-timeout", "30s"];
                let opts = client_opts(&url, &m, &api, &extra);
                mount(&boot, &work.path().join(format!("mnt-{round}-{i}")), &opts)
            })
            .collect();
        let (started, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let failures: Vec<String> = std::thread::scope(|s| {
            let readers: Vec<_> = mounts
                .iter()
                .enumerate()
                .map(|(i, mnt)| {
                    let (src, mnt, started, done) = (&src, &mnt.mountpoint, &started, &done);
                    let start = (rng.below(files as u64) as usize) + i;
                    s.spawn(move || {
                        started.fetch_add(1, Ordering::SeqCst);
                        read_compare_counted(src, mnt, start, done)
                    })
                })
                .collect();
            common::wait_until("the readers to start", Duration::from_secs(30), || {
                started.load(Ordering::SeqCst) == 3
            });
            // The kill point is paced by a random pause (not a wait for
            // anything): somewhere during the cold reads.
            std::thread::sleep(Duration::from_millis(rng.below(250)));
            m.kill9();
            if done.load(Ordering::SeqCst) < 3 * files {
                mid_read += 1;
            }
            m.spawn();
            readers
                .into_iter()
                .flat_map(|r| r.join().unwrap())
                .collect()
        });
        assert!(
            failures.is_empty(),
            "round {round}: {failures:#?}\nmanager log:\n{}",
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
        for i in 0..3 {
            let api = work.path().join(format!("api-{round}-{i}.sock"));
            reconnects += common::metric(&api, "rafs_manager_reconnects_total");
        }
        drop(mounts);
        // Every round starts cold: the manager stops, the cache is checked
        // and emptied, the manager starts again.
        m.kill9();
        common::rafs(args!["cache", "verify", &cache, "--bootstrap", &boot]).ok();
        std::fs::remove_dir_all(&cache).unwrap();
        m.spawn();
    }
    assert!(
        mid_read >= 15,
        "only {mid_read} of 20 kills came during the reads"
    );
    assert!(
        reconnects >= 15.0,
        "the clients reconnected {reconnects} times"
    );
}

#[test]
fn manager_gone_for_good_fallback_fetch_reads_and_wait_fails_at_the_deadline() {
    let work = common::tempdir();
    let src = work.path().join("src");
    tree(&src, 6, 300 << 10, 3);
    let out = work.path().join("img");
    let boot = common::create(&src, &out, &[]);
    let http = blob_server(&[&out.join("blobs")]);
    let url = http.url() + "/";
    let mut m = Manager::start(
        work.path(),
        &work.path().join("cache"),
        args!["--backend", &url],
    );
    let fetch_api = work.path().join("fetch.sock");
    let fetch_opts = client_opts(&url, &m, &fetch_api, &["--blob-manager-grace", "1s"]);
    let fetch = mount(&boot, &work.path().join("fetch"), &fetch_opts);
    let wait_api = work.path().join("wait.sock");
    let wait_extra = ["--blob-manager-fallback", "wait", "--read-timeout", "3s"];
    let wait_opts = client_opts(&url, &m, &wait_api, &wait_extra);
    let wait = mount(&boot, &work.path().join("wait"), &wait_opts);
    m.kill9();
    let bad = read_compare(&src, &fetch.mountpoint, 0);
    assert!(
        bad.is_empty(),
        "fallback fetch: {bad:#?}\n{}",
        fetch.describe()
    );
    assert!(common::metric(&fetch_api, "rafs_backend_requests_total") > 0.0);
    let t0 = Instant::now();
    let e = std::fs::read(wait.path("f000")).unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(20),
        "the wait read failed after {took:?}, not at its 3 s deadline"
    );
    assert_eq!(
        common::metric(&wait_api, "rafs_backend_requests_total"),
        0.0
    );
}

#[test]
fn tiny_quota_under_concurrent_readers_evicts_a_lot_and_never_misreads() {
    let work = common::tempdir();
    let src = work.path().join("src");
    tree(&src, 32, 512 << 10, 11); // 16 MiB, 4x the quota
    let out = work.path().join("img");
    let boot = common::create(&src, &out, &[]);
    let http = blob_server(&[&out.join("blobs")]);
    let url = http.url() + "/";
    let extra = args!["--backend", &url, "--cache-size", "4M"];
    let m = Manager::start(work.path(), &work.path().join("cache"), extra);
    let mounts: Vec<Mounted> = (0..2)
        .map(|i| {
            let api = work.path().join(format!("api{i}.sock"));
            let opts = client_opts(&url, &m, &api, &["--chunk-cache-size", "1M"]);
            mount(&boot, &work.path().join(format!("mnt{i}")), &opts)
        })
        .collect();
    let stop = AtomicBool::new(false);
    let failures: Vec<String> = std::thread::scope(|s| {
        let mut readers = Vec::new();
        for (i, mnt) in mounts.iter().enumerate() {
            for r in 0..2 {
                let (src, mnt, stop) = (&src, &mnt.mountpoint, &stop);
                readers.push(s.spawn(move || {
                    let mut bad = Vec::new();
                    let mut pass = 0;
                    while !stop.load(Ordering::SeqCst) && bad.is_empty() && pass < 6 {
                        bad.extend(read_compare(src, mnt, i * 5 + r * 11 + pass));
                        pass += 1;
                    }
                    bad
                }));
            }
        }
        common::wait_until("many evictions", Duration::from_secs(60), || {
            m.metric("rafs_blobmgr_evictions_total") >= 20.0
        });
        stop.store(true, Ordering::SeqCst);
        readers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
    // Fills still under way when the readers stopped commit, then evict.
    common::wait_until(
        "usage back under the quota",
        Duration::from_secs(20),
        || m.metric("rafs_blobmgr_cache_usage_bytes") <= (4 << 20) as f64,
    );
    drop(mounts);
    drop(m);
    common::rafs(args![
        "cache",
        "verify",
        work.path().join("cache"),
        "--bootstrap",
        &boot
    ])
    .ok();
}

#[test]
fn prefetch_through_the_manager_then_a_mount_needs_no_backend_request() {
    let work = common::tempdir();
    let src = work.path().join("src");
    tree(&src, 10, 300 << 10, 5);
    let out = work.path().join("img");
    let boot = common::create(&src, &out, &[]);
    let http = blob_server(&[&out.join("blobs")]);
    let url = http.url() + "/";
    let m = Manager::start(
        work.path(),
        &work.path().join("cache"),
        args!["--backend", &url],
    );
    common::rafs(args![
        "prefetch",
        &boot,
        "--all",
        "--backend",
        &url,
        "--blob-manager",
        &m.socket,
        "--no-progress"
    ])
    .ok();
    let before = http.seen().len();
    assert!(before > 0, "the prefetch fetched nothing");
    let api = work.path().join("api.sock");
    let mnt = mount(
        &boot,
        &work.path().join("mnt"),
        &client_opts(&url, &m, &api, &[]),
    );
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    assert_eq!(common::metric(&api, "rafs_backend_requests_total"), 0.0);
    assert_eq!(
        http.seen().len(),
        before,
        "the mount made the manager fetch"
    );
    assert!(common::metric(&api, "rafs_cache_hits_total") > 0.0);
}

#[test]
fn a_managed_cache_dir_is_refused_to_standalone_users_naming_the_manager() {
    let work = common::tempdir();
    let src = work.path().join("src");
    tree(&src, 2, 10 << 10, 9);
    let out = work.path().join("img");
    let boot = common::create(&src, &out, &[]);
    let cache = work.path().join("cache");
    let blobs = out.join("blobs");
    let m = Manager::start(work.path(), &cache, args!["--blobs", &blobs]);
    let sock = m.socket.display().to_string();
    let opts = args!["--blobs", &blobs, "--cache-dir", &cache];
    let Err(e) = Mounted::with_options(&boot, &work.path().join("mnt"), &opts) else {
        panic!("a standalone mount of a managed cache dir started");
    };
    assert!(e.stderr.contains(&sock), "mount: {e}");
    let r = common::rafs(args!["cache", "gc", &cache, "--bootstrap", &boot]).failed();
    assert!(r.all_output().contains(&sock), "{}", r.all_output());
    let r = common::rafs(args![
        "prefetch",
        &boot,
        "--all",
        "--blobs",
        &blobs,
        "--cache-dir",
        &cache
    ])
    .failed();
    assert!(r.all_output().contains(&sock), "{}", r.all_output());
    // A second manager on the same directory is refused too.
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let r = common::rafs(args![
        "blobmgr",
        "--socket",
        other.join("bm.sock"),
        "--cache-dir",
        &cache,
        "--blobs",
        &blobs
    ])
    .failed();
    assert!(r.all_output().contains(&sock), "{}", r.all_output());
}

#[test]
fn peers_outside_the_allow_list_and_connection_floods_are_refused_and_leave_no_fd() {
    use rafs::blobmgr::protocol::{Message, Packet};
    use rafs::blobmgr::transport::Conn;
    let work = common::tempdir();
    let cache = work.path().join("cache");
    let blobs = work.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let m = Manager::start(work.path(), &cache, args!["--blobs", &blobs]);
    let hello = Packet {
        request_id: 1,
        message: Message::Hello {
            min_version: 1,
            max_version: 1,
            compat: 0,
            incompat: 0,
        },
    };
    let ping = |c: &Conn| {
        c.send(&hello, &[]).unwrap();
        matches!(c.recv(), Ok((p, _)) if matches!(p.message, Message::HelloOk { .. }))
    };
    assert!(ping(&Conn::connect(&m.socket).unwrap()));
    let baseline = m.fds();
    // Other users cannot reach the socket (mode 0600 in a 0700 dir) ...
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\ns.connect({:?})\n",
        m.socket.display().to_string()
    );
    let r = common::as_nobody(args!["/usr/bin/python3", "-c", &py]).failed();
    assert!(
        r.all_output().contains("Permission denied"),
        "{}",
        r.all_output()
    );
    // ... and one that can (the mode widened by hand) is refused by its
    // credentials, unanswered, and counted.
    common::cmd("chmod", args!["0777", m.socket.parent().unwrap()]).ok();
    common::cmd("chmod", args!["0666", &m.socket]).ok();
    let py = format!(
        "{py}import struct\ns.send(b'RFBM'+struct.pack('<HHHHIQ',1,1,0,0,24,1)+struct.pack('<HH4sQQ',1,1,bytes(4),0,0))\n\
         print('reply', len(s.recv(65536)))\n"
    );
    let r = common::as_nobody(args!["/usr/bin/python3", "-c", &py]);
    assert!(
        !r.all_output().contains("reply 64"),
        "a denied peer got HelloOk: {}",
        r.all_output()
    );
    common::wait_until("the denied peer counted", Duration::from_secs(10), || {
        m.metric("rafs_blobmgr_denied_peers_total") >= 1.0
    });
    // A flood of connections: held open, then dropped; the manager keeps
    // serving and its descriptors return to the baseline.
    let flood: Vec<Conn> = (0..2000)
        .filter_map(|_| Conn::connect(&m.socket).ok())
        .collect();
    assert!(flood.len() > 100, "only {} connections", flood.len());
    drop(flood);
    common::wait_until(
        "the manager's fds back to baseline",
        Duration::from_secs(30),
        || m.fds() <= baseline,
    );
    assert!(
        ping(&Conn::connect(&m.socket).unwrap()),
        "the manager stopped serving"
    );
}

/// Starts `rafs blobmgr ARGS` the way systemd's socket activation does:
/// `listener` as fd 3, `LISTEN_PID` its own pid, `LISTEN_FDS=1`.
fn spawn_activated(listener: &std::os::fd::OwnedFd, args: &[OsString], log: &Path) -> Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@""#)
        .arg(common::rafs_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: between fork and exec only dup2 runs (async-signal-safe);
    // `fd` stays open in the parent for the child's whole start.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn under_socket_activation_manager_restarts_refuse_no_connect_and_fail_no_read() {
    use rafs::blobmgr::transport::{listen_at, Conn};
    let work = common::tempdir();
    let src = work.path().join("src");
    tree(&src, 24, 300 << 10, 21);
    let out = work.path().join("img");
    let boot = common::create(&src, &out, &[]);
    let http = blob_server_slowed(&[&out.join("blobs")], Duration::from_millis(20));
    let url = http.url() + "/";
    // The test plays systemd: it holds the listening socket across every
    // manager it starts.
    let sock = work.path().join("bm.sock");
    let listener = listen_at(&sock, 1024).unwrap();
    let api = work.path().join("bm-api.sock");
    let log = work.path().join("bm.log");
    let cache = work.path().join("cache");
    let args = args![
        "blobmgr",
        "--cache-dir",
        &cache,
        "--api-socket",
        &api,
        "--backend",
        &url
    ];
    let start = || {
        let c = spawn_activated(&listener, &args, &log);
        common::wait_until("the activated manager", Duration::from_secs(30), || {
            api_up(&api)
        });
        c
    };
    let mut child = start();
    let mapi = work.path().join("api.sock");
    let extra = ["--blob-manager-fallback", "wait"];
    let mut opts = args![
        "--backend",
        &url,
        "--blob-manager",
        &sock,
        "--api-socket",
        &mapi
    ];
    opts.extend(extra.iter().map(OsString::from));
    let mnt = mount(&boot, &work.path().join("mnt"), &opts);
    let stop = AtomicBool::new(false);
    let (refused, connects) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failures: Vec<String> = std::thread::scope(|s| {
        let reader = s.spawn(|| read_compare(&src, &mnt.mountpoint, 0));
        let prober = s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                match Conn::connect(&sock) {
                    Ok(_) => connects.fetch_add(1, Ordering::SeqCst),
                    Err(_) => refused.fetch_add(1, Ordering::SeqCst),
                };
            }
        });
        for _ in 0..5 {
            signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            child = start();
        }
        let bad = reader.join().unwrap();
        stop.store(true, Ordering::SeqCst);
        prober.join().unwrap();
        bad
    });
    signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
    assert!(failures.is_empty(), "{failures:#?}\n{}", mnt.describe());
    assert!(connects.load(Ordering::SeqCst) > 0);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "connects refused across restarts"
    );
    assert!(sock.exists(), "a manager removed the socket systemd owns");
}
