//! The fault-injecting proxy (`tests/common/faultproxy.rs`) against a tiny
//! in-test upstream: one seeded 1 MiB body at every path, `Range` support
//! (206 with `Content-Range`), keep-alive, `/chunked` answered with chunked
//! transfer encoding. Clients are `ureq` agents (HTTP/1.1, like the backends'
//! reqwest client over plain HTTP) and,
//! where the exact bytes on the wire matter, raw sockets.

mod common;

use common::faultproxy::{Fault, FaultMix, FaultProxy};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BODY_LEN: usize = 1 << 20;

/// The upstream's body: seeded pseudo-random bytes.
fn body() -> &'static [u8] {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let mut x: u32 = 0x1234_5678;
        (0..BODY_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    })
}

/// Starts the upstream (threads live as long as the test process).
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || serve(c));
        }
    });
    addr
}

/// Parses `bytes=A-B` or `bytes=A-` against the body length.
fn parse_range(v: &str) -> Option<(usize, usize)> {
    let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        BODY_LEN - 1
    } else {
        b.parse::<usize>().ok()?.min(BODY_LEN - 1)
    };
    (a <= b).then_some((a, b))
}

fn serve(c: TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let mut start = String::new();
        if r.read_line(&mut start).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        let mut req_len = 0;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.trim().is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "range" => range = Some(v.to_string()),
                "content-length" => req_len = v.trim().parse().unwrap(),
                _ => {}
            }
        }
        let mut sink = vec![0; req_len];
        r.read_exact(&mut sink).unwrap();
        let path = start.split(' ').nth(1).unwrap_or("/");
        let head = start.starts_with("HEAD ");
        let res = if path == "/chunked" {
            let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in body().chunks(100_000) {
                out.extend_from_slice(format!("{:x};ext=1\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
            w.write_all(&out)
        } else {
            let (status, extra, part) = match range.as_deref().map(parse_range) {
                None => ("200 OK", String::new(), body()),
                Some(Some((a, b))) => (
                    "206 Partial Content",
                    format!("Content-Range: bytes {a}-{b}/{BODY_LEN}\r\n"),
                    &body()[a..=b],
                ),
                Some(None) => ("416 Range Not Satisfiable", String::new(), &[][..]),
            };
            let h = format!(
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n",
                part.len()
            );
            w.write_all(h.as_bytes())
                .and_then(|()| if head { Ok(()) } else { w.write_all(part) })
        };
        if res.is_err() {
            return;
        }
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

/// GET through `agent`: status and body, or the transport error.
fn get(agent: &ureq::Agent, url: &str, range: Option<&str>) -> Result<(u16, Vec<u8>), ureq::Error> {
    let mut req = agent.get(url);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    let mut resp = req.call()?;
    let status = resp.status().as_u16();
    let bytes = resp.body_mut().with_config().limit(4 << 20).read_to_vec()?;
    Ok((status, bytes))
}

/// Number of byte positions where `a` and `b` differ (same length).
fn diff_count(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// Reads one response (head and `Content-Length` body) from a raw socket.
fn raw_response(r: &mut BufReader<TcpStream>) -> (String, Vec<String>, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut headers = Vec::new();
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        headers.push(line);
    }
    let mut b = vec![0; len];
    r.read_exact(&mut b).unwrap();
    (status.trim_end().to_string(), headers, b)
}

#[test]
fn all_pass_relays_full_and_range_bodies_unchanged() {
    let p = FaultProxy::start(upstream(), 1, FaultMix::all_pass());
    let a = agent(Duration::from_secs(20));
    let url = format!("{}/blob", p.url());
    let (st, b) = get(&a, &url, None).unwrap();
    assert_eq!((st, b.len()), (200, BODY_LEN));
    assert!(b == body(), "full body differs");
    for (range, lo, hi) in [
        ("bytes=0-0", 0, 0),
        ("bytes=1000-70000", 1000, 70000),
        ("bytes=1048000-", 1048000, BODY_LEN - 1),
    ] {
        let (st, b) = get(&a, &url, Some(range)).unwrap();
        assert_eq!(st, 206, "{range}");
        assert!(b == body()[lo..=hi], "{range}: body differs");
    }
    let (st, b) = get(&a, &format!("{}/chunked", p.url()), None).unwrap();
    assert_eq!(st, 200);
    assert!(b == body(), "de-chunked body differs");
    let s = p.stats();
    assert_eq!((s.requests, s.count(Fault::Pass), s.faults()), (5, 5, 0));
    assert_eq!(
        s.connections, 1,
        "ureq's pooled connection was not kept alive"
    );
}

#[test]
fn keep_alive_and_dechunking_on_one_raw_connection() {
    let p = FaultProxy::start(upstream(), 2, FaultMix::all_pass());
    let c = TcpStream::connect(p.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    let host = p.addr();
    w.write_all(format!("GET /chunked HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let (st, headers, b) = raw_response(&mut r);
    assert_eq!(st, "HTTP/1.1 200 OK");
    assert!(
        !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("transfer-encoding")),
        "{headers:?}"
    );
    assert!(b == body());
    // A request with a body, then a HEAD, then a range, same connection.
    w.write_all(
        format!("PUT /x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabcHEAD /x HTTP/1.1\r\nHost: {host}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (st, _, b) = raw_response(&mut r);
    assert_eq!((st.as_str(), b.len()), ("HTTP/1.1 200 OK", BODY_LEN));
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert_eq!(status.trim_end(), "HTTP/1.1 200 OK");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    w.write_all(format!("GET /x HTTP/1.1\r\nHost: {host}\r\nRange: bytes=5-9\r\n\r\n").as_bytes())
        .unwrap();
    let (st, headers, b) = raw_response(&mut r);
    assert_eq!(st, "HTTP/1.1 206 Partial Content");
    assert!(headers
        .iter()
        .any(|h| h == &format!("Content-Range: bytes 5-9/{BODY_LEN}")));
    assert_eq!(b, &body()[5..10]);
    let s = p.stats();
    assert_eq!((s.connections, s.requests), (1, 4));
}

#[test]
fn flip_changes_exactly_one_byte_of_every_body() {
    let p = FaultProxy::start(upstream(), 3, FaultMix::only(Fault::Flip));
    let a = agent(Duration::from_secs(20));
    let url = format!("{}/blob", p.url());
    let mut positions = Vec::new();
    for i in 0..6 {
        let (range, want) = if i % 2 == 0 {
            (None, body())
        } else {
            (Some("bytes=4096-8191"), &body()[4096..8192])
        };
        let (st, b) = get(&a, &url, range).unwrap();
        assert!(st == 200 || st == 206);
        assert_eq!(diff_count(&b, want), 1, "request {i}");
        positions.push(b.iter().zip(want).position(|(x, y)| x != y).unwrap());
    }
    positions.dedup();
    assert!(
        positions.len() > 1,
        "the flipped byte never moves: {positions:?}"
    );
    assert_eq!(p.stats().count(Fault::Flip), 6);
}

#[test]
fn truncate_gives_the_client_an_error_or_a_short_body() {
    let p = FaultProxy::start(upstream(), 4, FaultMix::only(Fault::Truncate));
    let a = agent(Duration::from_secs(20));
    for i in 0..4 {
        match get(&a, &format!("{}/blob", p.url()), None) {
            Err(_) => {}
            Ok((_, b)) => assert!(b.len() < BODY_LEN, "request {i}: full body"),
        }
    }
    // On the wire: the true Content-Length, fewer bytes, then EOF.
    let mut c = TcpStream::connect(p.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all[..all.len().min(200)]).to_string();
    assert!(
        text.contains(&format!("Content-Length: {BODY_LEN}\r\n")),
        "{text}"
    );
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let got = &all[head_end..];
    assert!(got.len() < BODY_LEN);
    assert!(got == &body()[..got.len()], "the prefix itself was altered");
    assert_eq!(p.stats().count(Fault::Truncate), 5);
}

#[test]
fn stall_makes_the_client_time_out() {
    let p = FaultProxy::start(upstream(), 5, FaultMix::only(Fault::Stall));
    let a = agent(Duration::from_secs(1));
    let t = Instant::now();
    let r = get(&a, &format!("{}/blob", p.url()), None);
    let took = t.elapsed();
    assert!(matches!(r, Err(ureq::Error::Timeout(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(p.stats().count(Fault::Stall), 1);
}

#[test]
fn error_answers_and_reset() {
    let up = upstream();
    let a = agent(Duration::from_secs(10));
    let p = FaultProxy::start(up, 6, FaultMix::only(Fault::Error500));
    let (st, _) = get(&a, &format!("{}/b", p.url()), None).unwrap();
    assert_eq!(st, 500);
    p.set_faults(FaultMix::only(Fault::Error429));
    let mut resp = a.get(format!("{}/b", p.url())).call().unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "0");
    resp.body_mut().read_to_vec().unwrap();
    p.set_faults(FaultMix::only(Fault::Reset));
    let mut c = TcpStream::connect(p.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    let e = c.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    assert!(get(&a, &format!("{}/b", p.url()), None).is_err());
    // Faults off at run time: everything passes again.
    p.set_faults(FaultMix::all_pass());
    let (st, b) = get(&a, &format!("{}/b", p.url()), None).unwrap();
    assert!(st == 200 && b == body());
    let s = p.stats();
    let kinds = [Fault::Error500, Fault::Error429, Fault::Reset, Fault::Pass];
    assert_eq!(kinds.map(|k| s.count(k)), [1, 1, 2, 1], "{s:?}");
}

#[test]
fn max_faults_fails_the_first_requests_then_passes() {
    let p = FaultProxy::start(upstream(), 7, FaultMix::only(Fault::Error500).max_faults(2));
    let a = agent(Duration::from_secs(10));
    let statuses: Vec<u16> = (0..4)
        .map(|_| {
            get(&a, &format!("{}/b", p.url()), Some("bytes=0-9"))
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(statuses, [500, 500, 206, 206]);
}

/// Sequential requests through a proxy with a mixed fault mix: what the
/// client saw for each, and the proxy's decision log.
fn run_sequence(seed: u64) -> (Vec<String>, Vec<Fault>) {
    let mix = FaultMix::all_pass()
        .weight(Fault::Pass, 3)
        .weight(Fault::Error500, 1)
        .weight(Fault::Error429, 1)
        .weight(Fault::Reset, 1)
        .weight(Fault::Truncate, 1)
        .weight(Fault::Flip, 1);
    let p = FaultProxy::start(upstream(), seed, mix);
    let a = agent(Duration::from_secs(10));
    let seen = (0..40)
        .map(
            |_| match get(&a, &format!("{}/b", p.url()), Some("bytes=0-65535")) {
                Err(_) => "error".to_string(),
                Ok((st, b)) if b.len() < 65536 => format!("{st} short"),
                Ok((st, b)) => format!("{st} diff={}", diff_count(&b, &body()[..65536])),
            },
        )
        .collect();
    (seen, p.stats().decisions)
}

#[test]
fn same_seed_same_fault_sequence() {
    let (seen1, log1) = run_sequence(42);
    let (seen2, log2) = run_sequence(42);
    assert_eq!(log1.len(), 40);
    assert_eq!(log1, log2);
    assert_eq!(seen1, seen2);
    for kind in [Fault::Pass, Fault::Error500, Fault::Error429, Fault::Flip] {
        assert!(log1.contains(&kind), "{kind:?} never drawn in {log1:?}");
    }
    let (_, log3) = run_sequence(43);
    assert_ne!(log1, log3, "another seed gave the same sequence");
}

#[test]
fn drop_with_stalled_connections_returns_quickly() {
    let p = FaultProxy::start(upstream(), 8, FaultMix::only(Fault::Stall));
    let addr = p.addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                c.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut buf = Vec::new();
                let t = Instant::now();
                let r = c.read_to_end(&mut buf);
                (r.map(|_| buf.len()), t.elapsed())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.stats().count(Fault::Stall) < 4 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the proxy"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    drop(p);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "drop took {took:?}");
    for c in clients {
        let (r, waited) = c.join().unwrap();
        // Released by the drop (EOF or reset), not by the 30 s timeout.
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        if let Ok(n) = r {
            assert_eq!(n, 0, "a stalled request got an answer");
        }
    }
}

#[test]
fn concurrent_clients_with_mixed_faults_get_answers_or_errors_never_hang() {
    let mix = FaultMix::all_pass()
        .weight(Fault::Pass, 2)
        .weight(Fault::Error500, 1)
        .weight(Fault::Error429, 1)
        .weight(Fault::Reset, 1)
        .weight(Fault::Truncate, 1)
        .weight(Fault::Flip, 1);
    let p = FaultProxy::start(upstream(), 9, mix);
    let url = format!("{}/b", p.url());
    let t = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let a = agent(Duration::from_secs(10));
                let mut intact = 0;
                for i in 0..10 {
                    let lo = (w * 10 + i) * 10_000;
                    let range = format!("bytes={lo}-{}", lo + 9_999);
                    let want = &body()[lo..lo + 10_000];
                    match get(&a, &url, Some(&range)) {
                        Ok((206, b)) if b == want => intact += 1,
                        Ok((206, b)) if b.len() == want.len() => {
                            assert_eq!(diff_count(&b, want), 1)
                        }
                        Ok((206, b)) => assert!(b.len() < want.len()),
                        Ok((st, _)) => assert!(st == 500 || st == 429, "status {st}"),
                        Err(_) => {}
                    }
                }
                intact
            })
        })
        .collect();
    let intact: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    let s = p.stats();
    assert!(s.requests >= 80, "{s:?}");
    assert_eq!(intact as u64, s.count(Fault::Pass), "{s:?}");
    assert!(s.connections > 1, "{s:?}");
}
