//! In-process HTTP/1.1 test servers: [`Httpd`], a one-request-per-
//! connection server whose answers come from a closure (for misbehaving
//! servers, redirects, token servers), and [`ConnectProxy`], a CONNECT
//! proxy that counts the tunnels it opens.
//!
//! Both listen on a free loopback port, run on background threads, and
//! stop when dropped. Requests are parsed just enough for tests: request
//! line and headers (at most 64 KiB), bodies of `Content-Length` bytes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body, if `Content-Length` announced one.
    pub body: Vec<u8>,
}

impl Request {
    /// A header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (`Content-Length` and `Connection: close` are added).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// `status` with `body` and no extra headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A test HTTP server; every request is recorded in [`Httpd::requests`].
pub struct Httpd {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// Every request received, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Httpd {
    /// Starts a server answering with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Httpd {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stopping) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (handler, reqs) = (handler.clone(), reqs.clone());
                std::thread::spawn(move || serve(conn, &*handler, &reqs));
            }
        });
        Httpd {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A copy of the requests so far.
    pub fn seen(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request head and body from `r`; `None` on EOF or garbage.
pub fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).ok()? == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.extend_from_slice(&line);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn serve(conn: TcpStream, handler: &Handler, reqs: &Mutex<Vec<Request>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    reqs.lock().unwrap().push(req.clone());
    let resp = handler(&req);
    let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    ));
    let mut conn = conn;
    let _ = conn.write_all(out.as_bytes());
    if req.method != "HEAD" {
        let _ = conn.write_all(&resp.body);
    }
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
}

/// An HTTP proxy (CONNECT tunnels, and absolute-form requests for plain
/// HTTP) that counts connections and records their targets.
pub struct ConnectProxy {
    /// `http://127.0.0.1:port`, for `--proxy`.
    pub url: String,
    /// Tunnels opened.
    pub tunnels: Arc<AtomicUsize>,
    /// `host:port` of each tunnel.
    pub targets: Arc<Mutex<Vec<String>>>,
    _server: Httpd,
}

impl ConnectProxy {
    /// Starts the proxy. It is built on a raw listener, not [`Httpd`]'s
    /// handler (a tunnel outlives the request); the `Httpd` field only
    /// keeps the stop logic in one place.
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let targets = Arc::new(Mutex::new(Vec::new()));
        let (count, tgts) = (tunnels.clone(), targets.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (count, tgts) = (count.clone(), tgts.clone());
                std::thread::spawn(move || tunnel(conn, &count, &tgts));
            }
        });
        let addr = url.trim_start_matches("http://").to_owned();
        ConnectProxy {
            url,
            tunnels,
            targets,
            _server: Httpd {
                addr,
                requests: Arc::new(Mutex::new(Vec::new())),
                stop,
                thread: Some(thread),
            },
        }
    }
}

fn tunnel(client: TcpStream, count: &AtomicUsize, targets: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    let mut client = client;
    // CONNECT host:port (a tunnel), or an absolute-form request for plain
    // HTTP (`GET http://host:port/path`), forwarded as is.
    let host = match req.target.strip_prefix("http://") {
        _ if req.method == "CONNECT" => req.target.clone(),
        Some(rest) => rest.split('/').next().unwrap_or("").to_owned(),
        None => {
            let _ = client.write_all(b"HTTP/1.1 405 X\r\nContent-Length: 0\r\n\r\n");
            return;
        }
    };
    let Ok(mut upstream) = TcpStream::connect(&host) else {
        let _ = client.write_all(b"HTTP/1.1 502 X\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    count.fetch_add(1, Ordering::SeqCst);
    targets.lock().unwrap().push(host);
    if req.method == "CONNECT" {
        let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    } else {
        let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
        for (k, v) in &req.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = upstream.write_all(head.as_bytes());
        let _ = upstream.write_all(&req.body);
    }
    // Copying from `reader` first forwards what the client sent after the
    // CONNECT head and is still in its buffer.
    let mut up_w = upstream.try_clone().unwrap();
    let mut down_w = client.try_clone().unwrap();
    let mut up_r = upstream;
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut reader, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut up_r, &mut down_w);
    let _ = down_w.shutdown(Shutdown::Both);
    let _ = up.join();
}

/// Answers `req` from `bytes` as a conforming server would: `206` with
/// `Content-Range` for a `Range: bytes=a-b`, `416` past the end, `200`
/// with everything otherwise.
pub fn range_response(req: &Request, bytes: &[u8]) -> Response {
    let size = bytes.len() as u64;
    let Some(spec) = req.header("range").and_then(|r| r.strip_prefix("bytes=")) else {
        return Response::new(200, bytes.to_vec());
    };
    let (a, b) = spec.split_once('-').unwrap();
    let a: u64 = a.parse().unwrap();
    let b: u64 = b.parse::<u64>().unwrap().min(size.saturating_sub(1));
    if a >= size {
        return Response::new(416, "").with("Content-Range", &format!("bytes */{size}"));
    }
    Response::new(206, bytes[a as usize..=b as usize].to_vec())
        .with("Content-Range", &format!("bytes {a}-{b}/{size}"))
}
