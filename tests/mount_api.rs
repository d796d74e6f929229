//! The daemon's API socket, queried with `curl --unix-socket` like an
//! operator would: `/status` is JSON saying the image is mounted, and
//! `/metrics` is Prometheus text whose read counters move when files are
//! read through the mount. The socket is the daemon's user's alone (mode
//! 0600, and `SO_PEERCRED` refuses other users even on a socket opened up
//! later), and a client that trickles its request holds up neither other
//! clients nor the daemon's exit.

#[macro_use]
mod common;

use common::mount::{Mounted, EXIT_TIMEOUT};
use common::tree::{random_bytes, write};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `curl --unix-socket SOCKET http://localhost/PATH`, asserting success.
fn get(socket: &Path, path: &str, mnt: &Mounted) -> String {
    let url = format!("http://localhost{path}");
    let r = common::cmd(
        "curl",
        args![
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "--unix-socket",
            socket,
            url
        ],
    );
    assert!(r.status.success(), "{r}\n{}", mnt.describe());
    r.stdout
}

/// Sum of the samples of every metric whose name or labels mention `what`.
fn metric_sum(text: &str, what: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| name.contains(what))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

fn mounted(work: &Path) -> (Mounted, std::path::PathBuf) {
    let src = work.join("src");
    write(&src.join("data"), &random_bytes(31, 4 << 20));
    write(&src.join("small"), b"small\n");
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, &[]);
    let socket = work.join("api.sock");
    let s = socket.to_str().unwrap();
    let m = Mounted::start(
        &bootstrap,
        &out.join("blobs"),
        &work.join("mnt"),
        &["--api-socket", s],
    );
    (m, socket)
}

#[test]
fn status_is_json_and_mounted() {
    let work = common::tempdir();
    let (m, socket) = mounted(work.path());
    let body = get(&socket, "/status", &m);
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
    assert_eq!(v["state"], "mounted", "/status: {v:#}");
    let text = v.to_string();
    assert!(
        text.contains(m.mountpoint.to_str().unwrap()),
        "/status does not name the mountpoint: {v:#}"
    );
}

#[test]
fn metrics_count_reads() {
    let work = common::tempdir();
    let (m, socket) = mounted(work.path());
    let before = get(&socket, "/metrics", &m);
    assert!(
        before.lines().any(|l| l.starts_with("# TYPE")),
        "/metrics is not Prometheus text:\n{before}"
    );
    let data = fs::read(m.path("data")).unwrap();
    assert_eq!(data.len(), 4 << 20);
    let after = get(&socket, "/metrics", &m);
    let (b, a) = (metric_sum(&before, "read"), metric_sum(&after, "read"));
    assert!(
        a > 0.0,
        "no non-zero read counter after reading 4 MiB:\n{after}"
    );
    assert!(a > b, "read counters did not move ({b} → {a}):\n{after}");
    assert!(
        metric_sum(&after, "bytes") >= (4 << 20) as f64,
        "no byte counter reaches the 4 MiB read:\n{after}"
    );
}

#[test]
fn unknown_api_path_is_a_client_error() {
    let work = common::tempdir();
    let (m, socket) = mounted(work.path());
    let r = common::cmd(
        "curl",
        args![
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
            &socket,
            "http://localhost/no-such-endpoint"
        ],
    );
    assert!(
        r.stdout.starts_with('4'),
        "HTTP {}: {r}\n{}",
        r.stdout,
        m.describe()
    );
}

/// `curl` of `/status` on `socket` as uid/gid 65534.
fn curl_as_nobody(socket: &Path) -> common::Run {
    common::as_nobody(args![
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--unix-socket",
        socket,
        "http://localhost/status"
    ])
}

#[test]
fn other_users_cannot_use_the_api_socket() {
    let work = common::tempdir();
    let (m, socket) = mounted(work.path());
    let mode = fs::symlink_metadata(&socket).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o600, "socket mode {mode:o}");
    // Let uid 65534 reach the socket: only the socket decides.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let r = curl_as_nobody(&socket);
    assert!(!r.status.success(), "another user was served:\n{r}");
    // A socket opened up by mistake: the peer check still refuses.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let r = curl_as_nobody(&socket);
    assert!(
        !r.status.success() && !r.stdout.contains("mounted"),
        "another user was served:\n{r}\n{}",
        m.describe()
    );
    let metrics = get(&socket, "/metrics", &m);
    assert_eq!(
        metric_sum(&metrics, "rafs_api_refused_connections"),
        1.0,
        "{metrics}"
    );
}

#[test]
fn a_trickling_client_holds_up_neither_others_nor_the_exit() {
    let work = common::tempdir();
    let (mut m, socket) = mounted(work.path());
    let mut slow = UnixStream::connect(&socket).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    let trickler = std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
            if slow.write_all(b"X").is_err() {
                flag.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    // Served at once, while the trickler is connected.
    let body = get(&socket, "/status", &m);
    assert!(body.contains("mounted"), "{body}");
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon did not exit with a client trickling: {status:?}\n{}",
        m.describe()
    );
    trickler.join().unwrap();
    assert!(cut.load(Ordering::SeqCst), "the trickler was never cut off");
}
