//! The mount daemon's HTTP API, on a Unix socket (`--api-socket`).
//!
//! Endpoints: `GET /status` (JSON: state, bootstrap, mountpoint, uptime,
//! inode and blob counts, and a `prefetch` object when the mount has a
//! [`Control`]), `GET /metrics` (Prometheus/OpenMetrics text from a
//! `prometheus-client` [`Registry`]), and `POST /record` (or `PUT`: write
//! the access record now; 409 when the mount is not recording). Anything
//! else is 404 (405 for a method the path does not take).
//!
//! HTTP here is deliberately minimal and bounded: one request per
//! connection (`Connection: close`), a request head of at most
//! [`MAX_HEAD`] bytes, a request body ignored. Garbage gets a 400, never a
//! panic. [`server`] serves it on a Unix socket: mode 0600, root and the
//! daemon's own user only (`SO_PEERCRED`), one deadline per request, a
//! thread per connection up to a small cap, and a shutdown that never
//! waits on a client.
//!
//! Metrics are collected at scrape time: [`FsCollector`] reads the core's
//! atomic counters, and later subsystems (cache, backend) register their
//! own [`Collector`]s into the same registry.

use crate::fs::{Metrics, Op};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

pub mod server;

pub use server::{ApiServer, Limits};

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD: usize = 8 << 10;

/// Errors setting up the API socket.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Another process is serving on the socket.
    #[error("API socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Something other than a socket is at the path; it is not removed.
    #[error("API socket {0}: exists and is not a socket (refusing to remove it)")]
    NotSocket(PathBuf),
    /// Binding or removing failed.
    #[error("API socket {path}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// What `/status` reports, fixed at mount time.
#[derive(Debug, Clone)]
pub struct StatusInfo {
    /// Bootstrap path.
    pub bootstrap: PathBuf,
    /// Mountpoint.
    pub mountpoint: PathBuf,
    /// When the mount became ready.
    pub started: Instant,
    /// Inodes in the image.
    pub inodes: u64,
    /// Blobs the image references.
    pub blobs: u64,
}

/// Why a [`Control`] action was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The mount is not set up for it (409).
    Unavailable(String),
    /// It was tried and failed (500).
    Failed(String),
}

/// What a running mount lets the API see and do beyond fixed status and
/// metrics.
pub trait Control: Send + Sync {
    /// The `prefetch` object of `/status` (`None`: left out).
    fn prefetch_status(&self) -> Option<serde_json::Value>;
    /// Writes the access record now; returns what to report (JSON).
    fn write_record(&self) -> Result<serde_json::Value, ControlError>;
}

/// Exposes the core's [`Metrics`] at scrape time.
#[derive(Debug)]
pub struct FsCollector(pub Arc<Metrics>);

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for FsCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &self.0;
        let ops = ConstCounter::new(0u64);
        let mut family = e.encode_descriptor(
            "rafs_operations",
            "Filesystem operations, by kind",
            None,
            ops.metric_type(),
        )?;
        for op in Op::ALL {
            let labels = [("op", op.name())];
            ConstCounter::new(m.ops(op)).encode(family.encode_family(&labels)?)?;
        }
        let g = Metrics::get;
        counter(
            &mut e,
            "rafs_read_bytes",
            "Bytes returned by reads",
            g(&m.bytes_read),
        )?;
        counter(
            &mut e,
            "rafs_chunk_decompressions",
            "Chunks or batch frames fetched and decompressed",
            g(&m.chunks.chunk_decompressions),
        )?;
        counter(
            &mut e,
            "rafs_backend_bytes",
            "Bytes fetched from the backend",
            g(&m.chunks.backend_bytes),
        )?;
        counter(
            &mut e,
            "rafs_chunk_cache_hits",
            "Chunk reads served by the decompressed-chunk LRU",
            g(&m.chunks.lru_hits),
        )?;
        counter(
            &mut e,
            "rafs_chunk_cache_misses",
            "Chunk reads that missed the LRU",
            g(&m.chunks.lru_misses),
        )?;
        counter(
            &mut e,
            "rafs_io_errors",
            "Operations failed with an I/O error",
            g(&m.io_errors),
        )
    }
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type of the body.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// Whether to send the body (false for HEAD).
    pub send_body: bool,
    /// The methods of the path, for a 405's `Allow` header.
    pub allow: &'static str,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n").into_bytes(),
            send_body: true,
            allow: GET,
        }
    }

    fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: format!("{body}\n").into_bytes(),
            send_body: true,
            allow: GET,
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        }
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str(&format!("Allow: {}\r\n", self.allow));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if self.send_body {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The methods of the read-only paths.
const GET: &str = "GET, HEAD";
/// The methods of the action paths.
const POST: &str = "POST, PUT";

/// Produces a daemon's `/status` JSON at request time (the blob manager's).
pub type StatusFn = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Where `/status` comes from.
enum Status {
    /// A mount's fixed facts.
    Mount(StatusInfo),
    /// Another daemon's producer.
    Custom(StatusFn),
}

/// The API: status, a metrics registry, and the mount's [`Control`].
pub struct Api {
    status: Status,
    registry: Registry,
    control: Option<Arc<dyn Control>>,
}

impl Api {
    /// An API reporting `status` and the metrics in `registry`.
    pub fn new(status: StatusInfo, registry: Registry) -> Api {
        Api {
            status: Status::Mount(status),
            registry,
            control: None,
        }
    }

    /// An API for another daemon (the blob manager): `/status` is what
    /// `status` returns at each request, `/metrics` the registry.
    pub fn with_status_fn(status: StatusFn, registry: Registry) -> Api {
        Api {
            status: Status::Custom(status),
            registry,
            control: None,
        }
    }

    /// Adds the mount's prefetch status and record action.
    pub fn with_control(mut self, control: Arc<dyn Control>) -> Api {
        self.control = Some(control);
        self
    }

    /// A registry with the core's counters registered.
    pub fn registry_for(metrics: Arc<Metrics>) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(FsCollector(metrics)));
        r
    }

    /// The response to a complete request head (`None` = the head was
    /// cut at [`MAX_HEAD`]).
    pub fn respond(&self, head: Option<&[u8]>) -> Response {
        let Some(head) = head else {
            return Response::text(431, "request head too large");
        };
        let Some((method, path)) = parse_request_line(head) else {
            return Response::text(400, "bad request");
        };
        let not_allowed = |allow| Response {
            allow,
            ..Response::text(405, "method not allowed")
        };
        match (path, method) {
            ("/record", "POST" | "PUT") => return self.record(),
            ("/record", _) => return not_allowed(POST),
            ("/status" | "/metrics", "GET" | "HEAD") => {}
            ("/status" | "/metrics", _) => return not_allowed(GET),
            _ => return Response::text(404, "not found"),
        }
        let mut resp = match path {
            "/status" => self.status(),
            _ => self.metrics(),
        };
        resp.send_body = method == "GET";
        resp
    }

    fn record(&self) -> Response {
        let r = match &self.control {
            Some(c) => c.write_record(),
            None => Err(ControlError::Unavailable("not recording".into())),
        };
        match r {
            Ok(v) => Response::json(200, &v),
            Err(ControlError::Unavailable(m)) => Response::text(409, &m),
            Err(ControlError::Failed(m)) => Response::text(500, &m),
        }
    }

    fn status(&self) -> Response {
        let s = match &self.status {
            Status::Mount(s) => s,
            Status::Custom(f) => return Response::json(200, &f()),
        };
        let mut body = serde_json::json!({
            "state": "mounted",
            "bootstrap": s.bootstrap.to_string_lossy(),
            "mountpoint": s.mountpoint.to_string_lossy(),
            "uptime_secs": s.started.elapsed().as_secs(),
            "inodes": s.inodes,
            "blobs": s.blobs,
        });
        if let Some(p) = self.control.as_ref().and_then(|c| c.prefetch_status()) {
            body["prefetch"] = p;
        }
        Response::json(200, &body)
    }

    fn metrics(&self) -> Response {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => Response {
                status: 200,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: text.into_bytes(),
                send_body: true,
                allow: GET,
            },
            Err(_) => Response::text(500, "metrics encoding failed"),
        }
    }
}

/// Reads up to the end of the request head. `Ok(None)`: more than
/// [`MAX_HEAD`] bytes without one. A connection closed early yields what
/// was read (the parser then refuses it if incomplete).
fn read_head(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        let want = chunk.len().min(MAX_HEAD - buf.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) => return Ok(Some(buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The length of the head including its blank line, if complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `METHOD SP TARGET SP HTTP/1.x` → (method, path without query).
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !version.starts_with("HTTP/1.")
    {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some((method, path))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An API over fresh metrics, for tests (here and in `server`).
    pub(crate) fn api() -> (Api, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let status = StatusInfo {
            bootstrap: "/img/boot".into(),
            mountpoint: "/mnt/x".into(),
            started: Instant::now(),
            inodes: 42,
            blobs: 2,
        };
        (
            Api::new(status, Api::registry_for(metrics.clone())),
            metrics,
        )
    }

    fn get(api: &Api, req: &[u8]) -> Response {
        api.respond(Some(req))
    }

    #[test]
    fn another_daemon_serves_its_own_status_per_request() {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let m = n.clone();
        let status: StatusFn = Box::new(move || {
            let i = m.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            serde_json::json!({ "state": "serving", "n": i })
        });
        let api = Api::with_status_fn(status, Registry::default());
        for i in 0..2 {
            let r = get(&api, b"GET /status HTTP/1.1\r\n\r\n");
            assert_eq!(r.status, 200);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                (v["state"].as_str(), v["n"].as_u64()),
                (Some("serving"), Some(i))
            );
        }
        assert_eq!(get(&api, b"POST /record HTTP/1.1\r\n\r\n").status, 409);
        assert_eq!(get(&api, b"GET /metrics HTTP/1.1\r\n\r\n").status, 200);
    }

    #[test]
    fn status_json() {
        let (api, _) = api();
        let r = get(&api, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["state"], "mounted");
        assert_eq!(v["bootstrap"], "/img/boot");
        assert_eq!(v["mountpoint"], "/mnt/x");
        assert_eq!(v["inodes"], 42);
        assert_eq!(v["blobs"], 2);
        assert!(v["uptime_secs"].is_u64());
    }

    #[test]
    fn metrics_text() {
        let (api, m) = api();
        m.op(Op::Lookup);
        m.op(Op::Lookup);
        Metrics::add(&m.bytes_read, 4096);
        Metrics::add(&m.chunks.lru_misses, 3);
        let r = get(&api, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body).unwrap();
        for line in [
            "rafs_operations_total{op=\"lookup\"} 2",
            "rafs_operations_total{op=\"read\"} 0",
            "rafs_read_bytes_total 4096",
            "rafs_chunk_cache_misses_total 3",
            "rafs_chunk_cache_hits_total 0",
            "rafs_chunk_decompressions_total 0",
            "rafs_backend_bytes_total 0",
            "rafs_io_errors_total 0",
            "# TYPE rafs_operations counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn errors() {
        let (api, _) = api();
        assert_eq!(get(&api, b"GET /nope HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(get(&api, b"GET / HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(get(&api, b"POST /status HTTP/1.1\r\n\r\n").status, 405);
        let head = get(&api, b"HEAD /status HTTP/1.1\r\n\r\n");
        assert_eq!(head.status, 200);
        assert!(!String::from_utf8(head.to_bytes())
            .unwrap()
            .contains("mounted"));
        for garbage in [
            &b""[..],
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /status\r\n\r\n",
            b"GET status HTTP/1.1\r\n\r\n",
            b"GET /status HTTP/2\r\n\r\n",
            b"GET /status HTTP/1.1 extra\r\n\r\n",
            b"get /status HTTP/1.1\r\n\r\n",
            b"\xff\xfe /status HTTP/1.1\r\n\r\n",
            b"GET /status HTTP/1.1",
        ] {
            assert_eq!(get(&api, garbage).status, 400, "{garbage:?}");
        }
        assert_eq!(api.respond(None).status, 431);
    }

    struct Fake(Option<usize>);

    impl Control for Fake {
        fn prefetch_status(&self) -> Option<serde_json::Value> {
            Some(serde_json::json!({"state": "running"}))
        }

        fn write_record(&self) -> Result<serde_json::Value, ControlError> {
            match self.0 {
                Some(n) => Ok(serde_json::json!({ "entries": n })),
                None => Err(ControlError::Failed("disk on fire".into())),
            }
        }
    }

    #[test]
    fn record_and_prefetch_status() {
        let (plain, _) = api();
        assert_eq!(get(&plain, b"POST /record HTTP/1.1\r\n\r\n").status, 409);
        let s: serde_json::Value =
            serde_json::from_slice(&get(&plain, b"GET /status HTTP/1.1\r\n\r\n").body).unwrap();
        assert!(s.get("prefetch").is_none());

        let (a, _) = api();
        let a = a.with_control(Arc::new(Fake(Some(3))));
        for m in ["POST", "PUT"] {
            let r = get(&a, format!("{m} /record HTTP/1.1\r\n\r\n").as_bytes());
            assert_eq!(r.status, 200);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["entries"], 3);
        }
        let r = get(&a, b"GET /record HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 405);
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .contains("Allow: POST, PUT\r\n"));
        let r = get(&a, b"PUT /metrics HTTP/1.1\r\n\r\n");
        assert!(String::from_utf8(r.to_bytes())
            .unwrap()
            .contains("Allow: GET, HEAD\r\n"));
        let s: serde_json::Value =
            serde_json::from_slice(&get(&a, b"GET /status HTTP/1.1\r\n\r\n").body).unwrap();
        assert_eq!(s["prefetch"]["state"], "running");
        assert_eq!(s["state"], "mounted");

        let (b, _) = api();
        let b = b.with_control(Arc::new(Fake(None)));
        assert_eq!(get(&b, b"POST /record HTTP/1.1\r\n\r\n").status, 500);
    }

    #[test]
    fn head_reading_is_bounded() {
        let mut r = &b"GET / HTTP/1.1\r\nA: b\r\n\r\nBODY"[..];
        assert_eq!(
            read_head(&mut r).unwrap().unwrap(),
            b"GET / HTTP/1.1\r\nA: b\r\n\r\n"
        );
        let big = vec![b'a'; MAX_HEAD * 3];
        assert_eq!(read_head(&mut &big[..]).unwrap(), None);
        let mut short = &b"GET / HT"[..];
        assert_eq!(read_head(&mut short).unwrap().unwrap(), b"GET / HT");
    }
}
