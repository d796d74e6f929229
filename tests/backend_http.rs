//! The HTTP backend: the conformance suite against a real nginx, plus the
//! ways a server or the network can misbehave (a server that ignores
//! `Range`, error statuses, nothing listening, redirect chains, loops and
//! schemes rafs does not follow) and `--proxy`. (An HTTPS to HTTP redirect
//! needs a TLS server the client trusts, which these tests do not have:
//! `client::redirect_target`'s unit test covers that refusal.)

mod common;

use common::conformance::{check_backend, fixture};
use common::httpd::{range_response, ConnectProxy, Httpd, Response};
use common::nginx::{free_port, Nginx};
use rafs::backend::url::BackendUrl;
use rafs::backend::{Backend, BackendError, BackendOptions, BlobId};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn open(url: &str, opts: &BackendOptions) -> Arc<dyn Backend> {
    BackendUrl::parse(url).unwrap().open(opts).unwrap()
}

#[test]
fn http_backend_conforms_against_nginx() {
    let fx = fixture();
    let root = common::tempdir();
    fx.write_dir(root.path());
    let nginx = Nginx::serve(root.path());
    let b = open(&format!("{}/", nginx.url), &BackendOptions::default());
    check_backend(b.as_ref(), &fx);

    // A `{blob}` template names the same files.
    let (id, bytes) = &fx.blobs[1];
    let b = open(
        &format!("{}/{{blob}}", nginx.url),
        &BackendOptions::default(),
    );
    assert_eq!(b.read_range(id, 7, 1000).unwrap(), &bytes[7..1007]);
}

#[test]
fn range_clamped_by_server_is_out_of_range_not_short() {
    // nginx answers `bytes=size-1-size` with the one byte it has (206,
    // Content-Range ../size); without a cached size the backend must still
    // call that OutOfRange (final), not ShortBody (retried forever).
    let fx = fixture();
    let root = common::tempdir();
    fx.write_dir(root.path());
    let nginx = Nginx::serve(root.path());
    let (id, bytes) = &fx.blobs[2];
    let size = bytes.len() as u64;
    for (offset, len) in [(size - 1, 2), (0, size + 1), (size, 1)] {
        let b = open(&nginx.url, &BackendOptions::default());
        match b.read_range(id, offset, len) {
            Err(BackendError::OutOfRange { size: s, .. }) => assert_eq!(s, size),
            other => panic!(
                "{offset}+{len}: want OutOfRange, got {:?}\nnginx: {}",
                other.map(|v| v.len()),
                nginx.error_log()
            ),
        }
        let b = open(&nginx.url, &BackendOptions::default());
        match b.read_range_to(id, offset, len, &mut |_| panic!("clamped bytes streamed")) {
            Err(BackendError::OutOfRange { size: s, .. }) => assert_eq!(s, size),
            other => panic!("{offset}+{len} streamed: want OutOfRange, got {other:?}"),
        }
    }
}

#[test]
fn server_ignoring_range_is_short_body_unless_whole_blob() {
    let fx = fixture();
    let (id, bytes) = fx.blobs[1].clone();
    let body = bytes.clone();
    let server = Httpd::start(move |_| Response::new(200, body.clone()));
    let b = open(&server.url(), &BackendOptions::default());
    let size = bytes.len() as u64;
    for (offset, len) in [(10, 100), (0, 100), (1, size - 1)] {
        match b.read_range(&id, offset, len) {
            Err(e @ BackendError::ShortBody { .. }) => assert!(e.is_transient()),
            other => panic!(
                "{offset}+{len}: want ShortBody, got {:?}",
                other.map(|v| v.len())
            ),
        }
    }
    assert_eq!(b.read_range(&id, 0, size).unwrap(), bytes);
    // The whole body is the whole blob: a longer range is out of range.
    let fresh = open(&server.url(), &BackendOptions::default());
    assert!(matches!(
        fresh.read_range(&id, 0, size + 1),
        Err(BackendError::OutOfRange { .. })
    ));
    assert_eq!(b.blob_size(&id).unwrap(), size);
    let seen = server.seen();
    assert!(seen.iter().all(|r| r.target == format!("/{}", id.to_hex())));
    assert!(seen
        .iter()
        .any(|r| r.header("range") == Some("bytes=10-109")));
}

#[test]
fn error_statuses_become_typed_errors() {
    let server = Httpd::start(|req| match req.target.as_str() {
        t if t.ends_with(&"11".repeat(32)) => Response::new(503, "busy"),
        t if t.ends_with(&"22".repeat(32)) => Response::new(403, "go away"),
        t if t.ends_with(&"33".repeat(32)) => Response::new(429, "slow down"),
        _ => Response::new(404, "no"),
    });
    let b = open(&server.url(), &BackendOptions::default());
    let read = |byte| b.read_range(&BlobId([byte; 32]), 0, 10).unwrap_err();
    let e = read(0x11);
    assert!(matches!(e, BackendError::Status { status: 503, .. }) && e.is_transient());
    let e = read(0x22);
    assert!(
        matches!(e, BackendError::Auth { .. }) && !e.is_transient(),
        "{e}"
    );
    let e = read(0x33);
    assert_eq!((e.kind(), e.is_transient()), ("throttled", true));
    let e = read(0x44);
    assert!(matches!(e, BackendError::NotFound(_)) && !e.is_transient());
}

#[test]
fn nothing_listening_is_a_transient_transport_error() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let b = open(&url, &BackendOptions::default());
    match b.read_range(&BlobId([1; 32]), 0, 1) {
        Err(e @ BackendError::Transport { .. }) => assert!(e.is_transient()),
        other => panic!("want Transport, got {:?}", other.map(|v| v.len())),
    }
}

#[test]
fn proxy_option_routes_requests_through_the_proxy() {
    let fx = fixture();
    let root = common::tempdir();
    fx.write_dir(root.path());
    let nginx = Nginx::serve(root.path());
    let proxy = ConnectProxy::start();
    let opts = BackendOptions {
        proxy: Some(proxy.url.clone()),
        ..BackendOptions::default()
    };
    let b = open(&nginx.url, &opts);
    for (id, bytes) in &fx.blobs {
        assert_eq!(b.blob_size(id).unwrap(), bytes.len() as u64);
        assert_eq!(b.read_range(id, 0, 1).unwrap(), &bytes[..1]);
    }
    assert!(proxy.tunnels.load(Ordering::SeqCst) >= 1);
    let nginx_addr = nginx.url.trim_start_matches("http://");
    let targets = proxy.targets.lock().unwrap().clone();
    assert!(targets.iter().all(|t| t == nginx_addr), "{targets:?}");

    // A proxy that is not there fails the reads: nothing bypasses it.
    let opts = BackendOptions {
        proxy: Some(format!("http://127.0.0.1:{}", free_port())),
        ..BackendOptions::default()
    };
    let b = open(&nginx.url, &opts);
    let (id, _) = &fx.blobs[0];
    assert!(matches!(
        b.read_range(id, 0, 1),
        Err(BackendError::Transport { .. })
    ));
}

#[test]
fn redirects_are_followed_hop_by_hop_within_limits() {
    let fx = fixture();
    let (id, bytes) = fx.blobs[1].clone();
    let data = bytes.clone();
    let storage = Httpd::start(move |req| range_response(req, &data));
    let storage_url = storage.url();
    let (good, looping, ftp) = (id.to_hex(), "22".repeat(32), "33".repeat(32));
    let front = Httpd::start(move |req| {
        let to = |status, loc: String| Response::new(status, "").with("Location", &loc);
        match req.target.as_str() {
            // Relative, then absolute-path, then absolute.
            t if t == format!("/a/{good}") => to(302, format!("b/{good}")),
            t if t == format!("/a/b/{good}") => to(307, format!("/c/{good}")),
            t if t == format!("/c/{good}") => to(308, format!("{storage_url}/s/{good}")),
            t if t == format!("/a/{looping}") => to(301, format!("/a/{looping}")),
            t if t == format!("/a/{ftp}") => to(302, "ftp://127.0.0.1/x".into()),
            _ => Response::new(404, ""),
        }
    });
    let b = open(
        &format!("{}/a/{{blob}}", front.url()),
        &BackendOptions::default(),
    );
    assert_eq!(b.read_range(&id, 5, 100).unwrap(), &bytes[5..105]);
    assert_eq!(
        storage.seen().last().map(|r| r.target.clone()),
        Some(format!("/s/{}", id.to_hex()))
    );
    match b.read_range(&BlobId([0x22; 32]), 0, 1) {
        Err(e @ BackendError::Transport { timeout: false, .. }) => {
            assert!(e.to_string().contains("redirects"), "{e}")
        }
        other => panic!("want Transport, got {:?}", other.map(|v| v.len())),
    }
    let hops = front
        .seen()
        .iter()
        .filter(|r| r.target.contains(&"22".repeat(32)))
        .count();
    assert_eq!(hops, 6, "one request and five redirects");
    match b.read_range(&BlobId([0x33; 32]), 0, 1) {
        Err(e @ BackendError::RefusedRedirect { .. }) => {
            assert_eq!((e.kind(), e.is_transient()), ("refused_redirect", false))
        }
        other => panic!("want RefusedRedirect, got {:?}", other.map(|v| v.len())),
    }
}

/// A one-connection server that answers a range request for `len` bytes
/// with a `206` declaring them, sends `first` body bytes, then, once the
/// test opens the gate, `then` more (fewer than the rest: a body cut
/// short; more: a body over its length) and closes.
fn held_back_server(
    len: u64,
    first: usize,
    then: usize,
) -> (
    String,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let body = common::conformance::noise(7, first + then);
        let mut conn = conn;
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-{}/{len}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            len - 1,
            (first + then).max(len as usize)
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body[..first]).unwrap();
        conn.flush().unwrap();
        let _ = gate.recv_timeout(std::time::Duration::from_secs(60));
        let _ = conn.write_all(&body[first..]);
    });
    (url, open, server)
}

#[test]
fn a_range_body_is_handed_over_as_it_arrives_and_checked_to_its_end() {
    use std::sync::mpsc;
    use std::time::Duration;
    let id = BlobId([7; 32]);
    let len = 300_000u64;
    let want = common::conformance::noise(7, len as usize + 10);
    type Expect = fn(&Result<(), BackendError>) -> bool;
    // (bytes sent after the gate, the outcome, the bytes streamed)
    let cases: [(usize, Expect, u64); 3] = [
        (200_000, |r| r.is_ok(), len),
        (
            50_000,
            |r| r.as_ref().is_err_and(|e| e.is_transient()),
            150_000,
        ),
        (
            200_010,
            |r| matches!(r, Err(BackendError::ShortBody { .. })),
            len,
        ),
    ];
    for (then, outcome, streamed) in cases {
        let (url, open_gate, server) = held_back_server(len, 100_000, then);
        let b = open(&format!("{url}{{blob}}"), &BackendOptions::default());
        let (tx, rx) = mpsc::channel();
        let result = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut got = Vec::new();
                let r = b.read_range_to(&id, 0, len, &mut |piece| {
                    got.extend_from_slice(piece);
                    let _ = tx.send(got.len());
                });
                (r, got)
            });
            // The first 100,000 bytes arrive while the rest is held back.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut seen = 0;
            while seen < 100_000 && std::time::Instant::now() < deadline {
                seen = rx.recv_timeout(Duration::from_secs(20)).unwrap_or(seen);
            }
            open_gate.send(()).unwrap();
            assert_eq!(seen, 100_000, "the body's start waited for its end");
            reader.join().unwrap()
        });
        server.join().unwrap();
        let (r, got) = result;
        assert!(outcome(&r), "{then} after the gate: {r:?}");
        assert_eq!(got.len() as u64, streamed, "{then} after the gate");
        assert!(got == want[..got.len()], "wrong bytes streamed");
    }
}

/// A server that answers one request with a `202` declaring `len` body
/// bytes and then drips them, one every `every`, each well within the
/// client's timeout, so only a deadline on the whole answer stops it. It
/// stops dripping once the test drops (or sends on) the returned sender.
fn dripping_server(
    len: usize,
    every: std::time::Duration,
) -> (
    String,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/v2/r/blobs/uploads/",
        listener.local_addr().unwrap()
    );
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 2 {
            line.clear();
        }
        let head = format!("HTTP/1.1 202 Accepted\r\nContent-Length: {len}\r\n\r\n");
        conn.write_all(head.as_bytes()).unwrap();
        for _ in 0..len {
            // The pace of the drip; the test is done with the answer: stop.
            let told = stopped.recv_timeout(every);
            if !matches!(told, Err(std::sync::mpsc::RecvTimeoutError::Timeout)) {
                break;
            }
            // The client gave up: stop.
            if conn.write_all(b"x").and_then(|()| conn.flush()).is_err() {
                break;
            }
        }
    });
    (url, stop, server)
}

/// The push protocol's requests (`HttpClient::request`: HEAD, POST, PUT)
/// end within `--request-timeout` even when the registry drips its answer's
/// body a byte at a time, each byte well within the timeout.
#[test]
fn a_dripping_answer_to_a_push_request_ends_within_the_request_timeout() {
    use rafs::backend::client::{HttpClient, SendData};
    use std::time::{Duration, Instant};
    let timeout = Duration::from_secs(1);
    // 60 bytes, one per 100 ms: 6 s in all.
    let (url, stop, server) = dripping_server(60, Duration::from_millis(100));
    let client = HttpClient::new(&BackendOptions {
        request_timeout: timeout,
        ..BackendOptions::default()
    })
    .unwrap();
    let started = Instant::now();
    let r = client.request(
        &BlobId([3; 32]),
        "POST",
        &url,
        &[],
        SendData::Empty,
        64 << 10,
    );
    let took = started.elapsed();
    drop(stop);
    server.join().unwrap();
    match r {
        Err(e @ BackendError::Transport { .. }) => {
            assert!(took < timeout * 3, "{e} after {took:?}")
        }
        Err(e) => panic!("not a transport error: {e} after {took:?}"),
        Ok(raw) => panic!(
            "HTTP {} after {took:?}: no deadline on the body",
            raw.status
        ),
    }
}

/// A body that stalls past `--request-timeout` is a timeout (the
/// `rafs_backend_errors_total{kind="timeout"}` label), not a plain
/// transport error: for a range read streamed to its sink and for an
/// answer read whole.
#[test]
fn a_body_stalled_past_the_request_timeout_is_a_timeout() {
    use rafs::backend::client::HttpClient;
    use std::time::Duration;
    let id = BlobId([9; 32]);
    let opts = BackendOptions {
        request_timeout: Duration::from_secs(1),
        ..BackendOptions::default()
    };
    let (url, open_gate, server) = held_back_server(1000, 100, 900);
    let b = open(&format!("{url}{{blob}}"), &opts);
    let streamed = b.read_range_to(&id, 0, 1000, &mut |_| {});
    open_gate.send(()).unwrap();
    server.join().unwrap();
    let (url, open_gate, server) = held_back_server(1000, 100, 900);
    let whole = HttpClient::new(&opts).unwrap().get(&id, &url, &[], 1 << 20);
    open_gate.send(()).unwrap();
    server.join().unwrap();
    for (what, e) in [("streamed", streamed.err()), ("whole", whole.err())] {
        let e = e.unwrap_or_else(|| panic!("{what}: no error"));
        assert!(
            matches!(e, BackendError::Transport { timeout: true, .. }),
            "{what}: {e:?}"
        );
        assert_eq!(e.kind(), "timeout", "{what}");
    }
}
