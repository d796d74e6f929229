//! Unit tests of the metrics client, parser and rendering.

use super::*;

const SAMPLE: &str = "\
# HELP rafs_operations Filesystem operations.
# TYPE rafs_operations counter
rafs_operations_total{op=\"lookup\"} 2
rafs_operations_total{op=\"read\"} 10
rafs_read_bytes_total 1048576
rafs_chunk_cache_hits_total 3
rafs_chunk_cache_misses_total 1
# TYPE rafs_backend_request_seconds histogram
rafs_backend_request_seconds_bucket{le=\"0.01\"} 50
rafs_backend_request_seconds_bucket{le=\"0.1\"} 90
rafs_backend_request_seconds_bucket{le=\"1.0\"} 100
rafs_backend_request_seconds_bucket{le=\"+Inf\"} 100
rafs_backend_request_seconds_sum 5.0
rafs_backend_request_seconds_count 100
something_else{a=\"x\\\"y\"} 1.5 1700000000
# EOF
";

#[test]
fn parses_samples_types_and_labels() {
    let m = parse(SAMPLE.as_bytes()).unwrap();
    assert_eq!(m.types["rafs_operations"], "counter");
    assert_eq!(m.types["rafs_backend_request_seconds"], "histogram");
    assert_eq!(m.samples.len(), 12);
    assert_eq!(m.value("rafs_operations_total"), Some(12.0));
    assert_eq!(
        m.by_label("rafs_operations_total", "op"),
        vec![("lookup".into(), 2.0), ("read".into(), 10.0)]
    );
    let other = m.samples.last().unwrap();
    assert_eq!(other.label("a"), Some("x\"y"));
    assert_eq!(other.value, 1.5);
    assert_eq!(m.value("absent"), None);
}

#[test]
fn histogram_quantiles_interpolate_inside_buckets() {
    let m = parse(SAMPLE.as_bytes()).unwrap();
    let h = m.histogram("rafs_backend_request_seconds").unwrap();
    assert_eq!(h.count, 100.0);
    assert_eq!(h.mean(), Some(0.05));
    // p50: rank 50 is the top of the first bucket, 0..0.01.
    assert!((h.quantile(0.5).unwrap() - 0.01).abs() < 1e-12);
    // p90: rank 90, the top of 0.01..0.1.
    assert!((h.quantile(0.9).unwrap() - 0.1).abs() < 1e-12);
    // p99: rank 99, 9/10 of the way through 0.1..1.0.
    assert!((h.quantile(0.99).unwrap() - 0.91).abs() < 1e-12);
    // A quantile in the +Inf bucket is the highest finite bound.
    let tail = Histogram {
        count: 10.0,
        sum: 1.0,
        buckets: vec![(1.0, 5.0), (f64::INFINITY, 10.0)],
    };
    assert_eq!(tail.quantile(0.9), Some(1.0));
    let empty = Histogram {
        count: 0.0,
        sum: 0.0,
        buckets: vec![(1.0, 0.0)],
    };
    assert_eq!(empty.quantile(0.5), None);
    assert_eq!(empty.mean(), None);
}

#[test]
fn renders_curated_and_other() {
    let text = render(&parse(SAMPLE.as_bytes()).unwrap());
    assert!(
        text.contains("operations       12 (lookup 2, read 10)"),
        "{text}"
    );
    assert!(text.contains("read             1.0 MiB"), "{text}");
    assert!(text.contains("3 hits, 1 misses (75.0%)"), "{text}");
    assert!(
        text.contains("count 100, mean 50.0 ms, p50 10.0 ms, p90 100.0 ms, p99 910.0 ms"),
        "{text}"
    );
    assert!(
        text.contains("Other\n  something_else{a=\"x\\\"y\"} 1.5"),
        "{text}"
    );
    assert!(
        !text.contains("Cache\n"),
        "no cache metrics, no section:\n{text}"
    );
    assert_eq!(render(&MetricSet::default()), "no metrics\n");
}

#[test]
fn malformed_metrics_are_typed_errors() {
    let cases: &[(&[u8], usize, ParseErrorKind)] = &[
        (b"1abc 3", 1, ParseErrorKind::Name),
        (b"ok 1\n{x=\"1\"} 2", 2, ParseErrorKind::Name),
        (b"m{a=\"1\" 2", 1, ParseErrorKind::Labels),
        (b"m{a=1} 2", 1, ParseErrorKind::Labels),
        (b"m{a=\"\\q\"} 2", 1, ParseErrorKind::Labels),
        (b"m{a=\"unterminated", 1, ParseErrorKind::Labels),
        (b"m{=\"1\"} 2", 1, ParseErrorKind::Labels),
        (b"m{a=\"1\"b=\"2\"} 2", 1, ParseErrorKind::Labels),
        (b"m", 1, ParseErrorKind::Value),
        (b"m abc", 1, ParseErrorKind::Value),
        (b"m 0x10", 1, ParseErrorKind::Value),
        (b"m{a=\"1\"}2", 1, ParseErrorKind::Value),
        (b"# TYPE", 1, ParseErrorKind::Type),
        (b"# TYPE 9x counter", 1, ParseErrorKind::Type),
        (b"m 1\n\xff\xfe 2", 2, ParseErrorKind::Utf8),
        (b"m{a=\"\xc3\"} 1", 1, ParseErrorKind::Utf8),
    ];
    for (input, line, kind) in cases {
        let got = parse(input);
        assert_eq!(
            got,
            Err(ParseError {
                line: *line,
                kind: kind.clone()
            }),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Oddities that are fine: comments, exemplars, blank lines, CRLF,
    // special values, nothing after # EOF read.
    let ok = parse(b"# random comment\r\n\nm{a=\"1\",} +Inf # {t=\"x\"} 1\nn NaN\n# EOF\ngarbage{")
        .unwrap();
    assert_eq!(ok.samples.len(), 2);
    assert_eq!(ok.value("m"), Some(f64::INFINITY));
    assert!(ok.value("n").unwrap().is_nan());
}

#[test]
fn parser_survives_arbitrary_bytes() {
    // Cheap deterministic fuzzing: every prefix of a valid exposition, and
    // mutated copies, give Ok or a typed error, never a panic.
    let base = SAMPLE.as_bytes();
    for cut in 0..base.len() {
        let _ = parse(&base[..cut]);
        let _ = parse_response(&base[..cut]);
    }
    let noise = crate::util::noise(4096, 3);
    for (i, b) in noise.iter().enumerate() {
        let mut m = base.to_vec();
        let at = (i * 7919) % m.len();
        m[at] = *b;
        if let Ok(set) = parse(&m) {
            let _ = render(&set);
            let _ = to_json(&set);
        }
    }
    let _ = parse(&noise);
}

#[test]
fn http_responses() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert_eq!(
        parse_response(ok),
        Ok(Response {
            status: 200,
            body: b"hello".to_vec()
        })
    );
    // Without a length: to EOF.
    let eof = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
    assert_eq!((eof.status, eof.body.as_slice()), (404, &b"nope"[..]));
    let chunked =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    assert_eq!(parse_response(chunked).unwrap().body, b"abcde");
    let bad: &[(&[u8], HttpError)] = &[
        (b"HTTP/1.1 200 OK\r\n", HttpError::NoHead),
        (b"SSH-2.0\r\n\r\n", HttpError::StatusLine),
        (b"HTTP/1.1 20 OK\r\n\r\n", HttpError::StatusLine),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", HttpError::StatusLine),
        (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", HttpError::Header),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            HttpError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            HttpError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\nab",
            HttpError::Truncated {
                got: 2,
                expected: 99_999_999_999_999_999,
            },
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            HttpError::Chunked,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
            HttpError::Chunked,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc",
            HttpError::Chunked,
        ),
    ];
    for (input, want) in bad {
        assert_eq!(
            parse_response(input).as_ref(),
            Err(want),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn fetch_over_a_socket_and_timeout() {
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut b).unwrap() == 1 {
            head.push(b[0]);
        }
        let body = "m 1\n";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(resp.as_bytes()).unwrap();
        String::from_utf8(head).unwrap()
    });
    let resp = fetch(&path, "/metrics").unwrap();
    assert_eq!(resp.body, b"m 1\n");
    let head = server.join().unwrap();
    assert!(head.starts_with("GET /metrics HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    // Nobody listening: an I/O error, not a hang.
    drop(std::fs::remove_file(&path));
    assert!(matches!(
        fetch(&path, "/metrics"),
        Err(StatsError::Io { .. })
    ));
}

#[test]
fn parses_what_the_daemon_serves() {
    use crate::api::{Api, StatusInfo};
    use crate::fs::{Metrics, Op};
    use prometheus_client::metrics::histogram::Histogram as PromHistogram;
    use std::sync::Arc;
    let metrics = Arc::new(Metrics::default());
    metrics.op(Op::Lookup);
    Metrics::add(&metrics.bytes_read, 8192);
    let mut registry = Api::registry_for(metrics.clone());
    // A histogram as prometheus-client encodes it (main adds this one).
    let h = PromHistogram::new([0.001, 0.01, 0.1]);
    for v in [0.0005, 0.005, 0.005, 0.05] {
        h.observe(v);
    }
    registry.register("rafs_backend_request_seconds", "Backend request latency", h);
    let status = StatusInfo {
        bootstrap: "/b".into(),
        mountpoint: "/m".into(),
        started: std::time::Instant::now(),
        inodes: 1,
        blobs: 1,
    };
    let resp = Api::new(status, registry).respond(Some(b"GET /metrics HTTP/1.1\r\n\r\n"));
    let wire = parse_response(&resp.to_bytes()).unwrap();
    let m = parse(&wire.body).unwrap();
    assert_eq!(m.value("rafs_read_bytes_total"), Some(8192.0));
    assert_eq!(
        m.by_label("rafs_operations_total", "op")
            .iter()
            .find(|(op, _)| op == "lookup")
            .map(|x| x.1),
        Some(1.0)
    );
    let h = m.histogram("rafs_backend_request_seconds").unwrap();
    assert_eq!(h.count, 4.0);
    assert_eq!(h.buckets.last().map(|b| b.0), Some(f64::INFINITY));
    let text = render(&m);
    assert!(text.contains("read             8.0 KiB"), "{text}");
    assert!(text.contains("latency          count 4, mean"), "{text}");
    assert!(
        !text.contains("Other"),
        "known metrics listed as other:\n{text}"
    );
}

#[test]
fn renders_a_blob_managers_metrics() {
    let m = crate::manager::server::ServerMetrics::default();
    m.clients.set(3);
    m.connections.inc_by(5);
    m.request("fetch");
    m.request("fetch");
    m.request("hello");
    m.denied_peers.inc();
    let mut reg = prometheus_client::registry::Registry::default();
    m.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    let out = render(&parse(text.as_bytes()).unwrap());
    assert!(out.starts_with("Blob manager\n"), "{out}");
    assert!(out.contains("  clients          3\n"), "{out}");
    assert!(out.contains("  connections      5\n"), "{out}");
    assert!(
        out.contains("requests         3 (fetch 2, hello 1)"),
        "{out}"
    );
    assert!(out.contains("dropped          1 (denied peers 1)"), "{out}");
    assert!(
        !out.contains("Other"),
        "every blobmgr metric is curated:\n{out}"
    );
}
