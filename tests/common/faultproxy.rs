//! A fault-injecting HTTP/1.1 reverse proxy for backend tests.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every request
//! to one upstream `host:port`, relaying the response. Before each request a
//! seeded xorshift generator picks what happens to it, by the weights of a
//! [`FaultMix`]: pass it through, answer 500, answer 429 (`Retry-After: 0`),
//! reset the connection (SO_LINGER 0, no answer), truncate the body (true
//! `Content-Length`, part of the body, then close), flip one byte of the
//! body, or stall (send nothing until `stall_for` passes or the proxy is
//! dropped, then close). 500, 429, reset and stall never reach the upstream.
//!
//! Determinism: one generator per proxy, drawn once per request (the fault
//! kind, then a number that picks the truncation point or flipped byte), so
//! the n-th request seen gets the same decision for the same seed. Requests
//! on concurrent connections are numbered in arrival order, which only a
//! sequential client makes deterministic.
//!
//! Framing: requests may carry a `Content-Length` or chunked body (forwarded
//! de-chunked, with `Content-Length`); `Expect: 100-continue` is answered by
//! the proxy. Upstream responses with `Content-Length` are streamed; chunked
//! or close-delimited ones are read whole and sent with `Content-Length`,
//! so the client always gets a length-framed body and keep-alive works
//! (several requests per connection, one upstream connection per client
//! connection, reopened if the upstream closes it).
//!
//! Threads: one accept thread and one thread per client connection, no
//! async runtime. Every socket is registered so that `Drop` can shut it
//! down: blocked reads and writes return, stalls wake up on a condition
//! variable, and `Drop` waits (at most [`DROP_GRACE`]) for the threads.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `Drop` waits for connection threads after shutting their
/// sockets down (they normally exit within milliseconds).
pub const DROP_GRACE: Duration = Duration::from_secs(5);
/// Timeout of the upstream connect and of each upstream read or write.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request or response head accepted (bytes).
const MAX_HEAD: usize = 64 * 1024;

/// What the proxy does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward and relay unchanged.
    Pass,
    /// Answer `500 Internal Server Error` without asking the upstream.
    Error500,
    /// Answer `429 Too Many Requests` with `Retry-After: 0`.
    Error429,
    /// Close the connection with SO_LINGER 0 (a TCP RST), no answer.
    Reset,
    /// Relay the head with the true `Content-Length`, then a strict prefix
    /// of the body, then close. An empty body is left as it is.
    Truncate,
    /// Relay with one body byte inverted (same length). An empty body is
    /// left as it is.
    Flip,
    /// Send nothing for `FaultMix::stall_for` (or until drop), then close.
    Stall,
}

impl Fault {
    /// Every kind, in the order the weights are walked.
    pub const ALL: [Fault; 7] = [
        Fault::Pass,
        Fault::Error500,
        Fault::Error429,
        Fault::Reset,
        Fault::Truncate,
        Fault::Flip,
        Fault::Stall,
    ];
}

/// Relative weights of the faults (probability = weight / sum of weights),
/// plus their parameters. All-zero weights mean "pass everything".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMix {
    pub pass: u32,
    pub error500: u32,
    pub error429: u32,
    pub reset: u32,
    pub truncate: u32,
    pub flip: u32,
    pub stall: u32,
    /// How long a stalled connection stays silent (unless dropped first).
    pub stall_for: Duration,
    /// After this many faults, pass every request (`None`: no limit).
    /// Lets a test say "the first two requests fail, then it recovers".
    pub max_faults: Option<u64>,
}

impl Default for FaultMix {
    fn default() -> Self {
        FaultMix {
            pass: 1,
            error500: 0,
            error429: 0,
            reset: 0,
            truncate: 0,
            flip: 0,
            stall: 0,
            stall_for: Duration::from_secs(60),
            max_faults: None,
        }
    }
}

impl FaultMix {
    /// Every request passes.
    pub fn all_pass() -> Self {
        Self::default()
    }

    /// Every request gets `fault`.
    pub fn only(fault: Fault) -> Self {
        Self::default().weight(Fault::Pass, 0).weight(fault, 1)
    }

    /// Sets the weight of one kind.
    pub fn weight(mut self, fault: Fault, w: u32) -> Self {
        *self.slot(fault) = w;
        self
    }

    /// Sets `max_faults`.
    pub fn max_faults(mut self, n: u64) -> Self {
        self.max_faults = Some(n);
        self
    }

    /// Sets `stall_for`.
    pub fn stall_for(mut self, d: Duration) -> Self {
        self.stall_for = d;
        self
    }

    fn slot(&mut self, fault: Fault) -> &mut u32 {
        match fault {
            Fault::Pass => &mut self.pass,
            Fault::Error500 => &mut self.error500,
            Fault::Error429 => &mut self.error429,
            Fault::Reset => &mut self.reset,
            Fault::Truncate => &mut self.truncate,
            Fault::Flip => &mut self.flip,
            Fault::Stall => &mut self.stall,
        }
    }

    fn get(&self, fault: Fault) -> u32 {
        match fault {
            Fault::Pass => self.pass,
            Fault::Error500 => self.error500,
            Fault::Error429 => self.error429,
            Fault::Reset => self.reset,
            Fault::Truncate => self.truncate,
            Fault::Flip => self.flip,
            Fault::Stall => self.stall,
        }
    }
}

/// Counters since the proxy started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted.
    pub connections: u64,
    /// Requests read completely (each got exactly one decision).
    pub requests: u64,
    /// Decisions by kind, `Pass` included.
    pub by_kind: HashMap<Fault, u64>,
    /// Every decision in request order.
    pub decisions: Vec<Fault>,
}

impl Stats {
    /// How many requests got `fault`.
    pub fn count(&self, fault: Fault) -> u64 {
        self.by_kind.get(&fault).copied().unwrap_or(0)
    }

    /// How many requests got something other than `Pass`.
    pub fn faults(&self) -> u64 {
        self.requests - self.count(Fault::Pass)
    }
}

/// xorshift64*: small, fast, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed: never zero, and nearby seeds diverge.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One request's fate: the kind and a random number for its parameter.
#[derive(Clone, Copy)]
struct Decision {
    fault: Fault,
    r: u64,
    stall_for: Duration,
}

struct State {
    mix: FaultMix,
    rng: Rng,
    faults_since_mix: u64,
    stats: Stats,
    shutting_down: bool,
    /// Sockets to shut down on drop, by connection id.
    sockets: HashMap<u64, Vec<TcpStream>>,
    next_id: u64,
    live_threads: usize,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled on shutdown and whenever a connection thread exits.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not wedge the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decide(&self) -> Decision {
        let mut st = self.lock();
        let st = &mut *st;
        let total: u64 = Fault::ALL.iter().map(|&f| st.mix.get(f) as u64).sum();
        let pick = st.rng.next();
        let r = st.rng.next();
        let mut fault = Fault::Pass;
        if total > 0 {
            let mut x = pick % total;
            for f in Fault::ALL {
                let w = st.mix.get(f) as u64;
                if x < w {
                    fault = f;
                    break;
                }
                x -= w;
            }
        }
        if fault != Fault::Pass {
            if st.mix.max_faults.is_some_and(|m| st.faults_since_mix >= m) {
                fault = Fault::Pass;
            } else {
                st.faults_since_mix += 1;
            }
        }
        st.stats.requests += 1;
        *st.stats.by_kind.entry(fault).or_default() += 1;
        st.stats.decisions.push(fault);
        Decision {
            fault,
            r,
            stall_for: st.mix.stall_for,
        }
    }

    /// Registers a socket for shutdown on drop; false if already dropping.
    fn register(&self, id: u64, s: &TcpStream) -> bool {
        let mut st = self.lock();
        if st.shutting_down {
            return false;
        }
        if let Ok(c) = s.try_clone() {
            st.sockets.entry(id).or_default().push(c);
        }
        true
    }

    /// Waits until `d` passes or the proxy is dropped.
    fn stall(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut st = self.lock();
        while !st.shutting_down {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A running proxy; dropping it stops it and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (a loopback `host:port`).
    pub fn start(upstream: SocketAddr, seed: u64, mix: FaultMix) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("faultproxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("faultproxy: local_addr");
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                mix,
                rng: Rng::new(seed),
                faults_since_mix: 0,
                stats: Stats::default(),
                shutting_down: false,
                sockets: HashMap::new(),
                next_id: 0,
                live_threads: 0,
            }),
            changed: Condvar::new(),
        });
        let sh = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("faultproxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("faultproxy: spawn accept thread");
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for building URLs.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Replaces the fault mix for the following requests (the generator
    /// continues; the `max_faults` budget starts again).
    pub fn set_faults(&self, mix: FaultMix) {
        let mut st = self.shared.lock();
        st.mix = mix;
        st.faults_since_mix = 0;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let sockets = {
            let mut st = self.shared.lock();
            st.shutting_down = true;
            std::mem::take(&mut st.sockets)
        };
        self.shared.changed.notify_all();
        for s in sockets.values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept thread, which sees `shutting_down` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let deadline = Instant::now() + DROP_GRACE;
        let mut st = self.shared.lock();
        while st.live_threads > 0 && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let id = {
            let mut st = shared.lock();
            if st.shutting_down {
                return;
            }
            st.next_id += 1;
            st.stats.connections += 1;
            st.live_threads += 1;
            st.next_id
        };
        let sh = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("faultproxy-conn".into())
            .spawn(move || {
                if sh.register(id, &client) {
                    let _ = Conn::new(&sh, id, client).run();
                }
                let mut st = sh.lock();
                st.sockets.remove(&id);
                st.live_threads -= 1;
                drop(st);
                sh.changed.notify_all();
            });
        if spawned.is_err() {
            shared.lock().live_threads -= 1;
        }
    }
}

/// A parsed request or response head.
struct Head {
    /// Request line or status line, without CRLF.
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        self.get("content-length")
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(format!("bad Content-Length {v:?}")))
            })
            .transpose()
    }

    /// Serialises with the hop-by-hop and framing headers replaced.
    fn write_to(&self, w: &mut impl Write, len: Option<u64>, close: bool) -> io::Result<()> {
        const DROP: [&str; 6] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "content-length",
            "expect",
        ];
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            if !DROP.iter().any(|d| k.eq_ignore_ascii_case(d)) {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        if let Some(n) = len {
            out.push_str(&format!("Content-Length: {n}\r\n"));
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes())
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one head; `Ok(None)` on a clean EOF before its first byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = (&mut *r)
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err(bad("head too large".into()));
        }
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // tolerate a stray CRLF between messages
            }
            break;
        }
        lines.push(line);
    }
    let start = lines.remove(0);
    let headers = lines
        .into_iter()
        .map(|l| match l.split_once(':') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => Err(bad(format!("bad header line {l:?}"))),
        })
        .collect::<io::Result<_>>()?;
    Ok(Some(Head { start, headers }))
}

/// Reads a chunked body (trailers are read and dropped).
fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size.trim(), 16)
            .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            loop {
                let mut t = String::new();
                if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        (&mut *r).take(size).read_to_end(&mut body)?;
        if (body.len() - start) as u64 != size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut crlf = String::new();
        r.read_line(&mut crlf)?;
    }
}

/// Reads a request or response body framed by `head`; `None` for
/// `Content-Length` bodies, which the caller streams.
fn read_framed(r: &mut impl BufRead, head: &Head) -> io::Result<Option<Vec<u8>>> {
    if head.has_token("transfer-encoding", "chunked") {
        read_chunked(r).map(Some)
    } else {
        Ok(None)
    }
}

/// Sets SO_LINGER to {on, 0 s}, so that closing sends a RST.
fn set_linger_zero(s: &TcpStream) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is owned by `s` and open for the whole call; the option
    // value points to a live `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Copies `len` bytes from `r` to `w`, applying a truncate or flip fault
/// (`None`: unchanged). Returns an error if the source ends early.
fn relay_body(
    r: &mut impl Read,
    w: &mut impl Write,
    len: u64,
    fault: Option<(Fault, u64)>,
) -> io::Result<()> {
    let (stop, flip_at) = match fault {
        Some((Fault::Truncate, r)) if len > 0 => (r % len, None),
        Some((Fault::Flip, r)) if len > 0 => (len, Some(r % len)),
        _ => (len, None),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(at) = flip_at {
            if (done..done + n as u64).contains(&at) {
                buf[(at - done) as usize] ^= 0xff;
            }
        }
        if done < stop {
            let keep = n.min((stop - done) as usize);
            w.write_all(&buf[..keep])?;
        }
        done += n as u64;
    }
    w.flush()
}

/// One client connection and its upstream connection.
struct Conn<'a> {
    shared: &'a Shared,
    id: u64,
    client: TcpStream,
    reader: BufReader<TcpStream>,
    upstream: Option<(BufReader<TcpStream>, TcpStream)>,
}

impl<'a> Conn<'a> {
    fn new(shared: &'a Shared, id: u64, client: TcpStream) -> Self {
        let reader = BufReader::new(client.try_clone().expect("faultproxy: clone client socket"));
        Conn {
            shared,
            id,
            client,
            reader,
            upstream: None,
        }
    }

    /// Serves requests until the client closes, a fault closes, or drop.
    fn run(&mut self) -> io::Result<()> {
        while let Some(req) = read_head(&mut self.reader)? {
            if req.has_token("expect", "100-continue") {
                self.client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            let body = match read_framed(&mut self.reader, &req)? {
                Some(b) => b,
                None => {
                    let n = req.content_length()?.unwrap_or(0);
                    let mut b = Vec::new();
                    (&mut self.reader).take(n).read_to_end(&mut b)?;
                    if b.len() as u64 != n {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    b
                }
            };
            let client_close =
                req.has_token("connection", "close") || req.start.ends_with("HTTP/1.0");
            let d = self.shared.decide();
            let keep = match d.fault {
                Fault::Error500 => self.answer("500 Internal Server Error", "")?,
                Fault::Error429 => self.answer("429 Too Many Requests", "Retry-After: 0\r\n")?,
                Fault::Reset => {
                    set_linger_zero(&self.client);
                    false
                }
                Fault::Stall => {
                    self.shared.stall(d.stall_for);
                    false
                }
                Fault::Pass | Fault::Truncate | Fault::Flip => self.forward(&req, &body, d)?,
            };
            if !keep || client_close {
                break;
            }
        }
        Ok(())
    }

    /// Sends an injected error answer; the connection stays usable.
    fn answer(&mut self, status: &str, extra: &str) -> io::Result<bool> {
        let body = format!("faultproxy: injected {status}\n");
        let msg = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.client.write_all(msg.as_bytes())?;
        Ok(true)
    }

    fn connect_upstream(&mut self) -> io::Result<()> {
        let s = TcpStream::connect_timeout(&self.shared.upstream, UPSTREAM_TIMEOUT)?;
        s.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
        s.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
        if !self.shared.register(self.id, &s) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        self.upstream = Some((BufReader::new(s.try_clone()?), s));
        Ok(())
    }

    /// Sends the request upstream and reads the response head, retrying
    /// once on a fresh connection if a reused one turns out to be closed.
    fn exchange(&mut self, req: &Head, body: &[u8]) -> io::Result<Head> {
        for attempt in 0..2 {
            let reused = self.upstream.is_some();
            if !reused {
                self.connect_upstream()?;
            }
            let (ur, uw) = self.upstream.as_mut().expect("upstream connected");
            // GET and HEAD without a body stay without Content-Length.
            let framed = !body.is_empty() || req.get("content-length").is_some();
            let sent = req
                .write_to(uw, framed.then_some(body.len() as u64), false)
                .and_then(|()| uw.write_all(body))
                .and_then(|()| uw.flush());
            let head = sent.and_then(|()| read_head(ur));
            match head {
                Ok(Some(h)) => return Ok(h),
                Ok(None) | Err(_) if reused && attempt == 0 => self.upstream = None,
                Ok(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Err(e),
            }
        }
        Err(io::ErrorKind::UnexpectedEof.into())
    }

    /// Forwards one request and relays the answer, applying a truncate or
    /// flip fault. Returns whether the client connection stays open.
    fn forward(&mut self, req: &Head, body: &[u8], d: Decision) -> io::Result<bool> {
        let mut resp = self.exchange(req, body)?;
        // Interim 1xx answers (other than 101) are skipped.
        while resp
            .start
            .split(' ')
            .nth(1)
            .is_some_and(|c| c.starts_with('1') && c != "101")
        {
            let (ur, _) = self.upstream.as_mut().expect("upstream connected");
            resp = read_head(ur)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        }
        let status: u16 = resp
            .start
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {:?}", resp.start)))?;
        let no_body = req.start.starts_with("HEAD ") || status == 204 || status == 304;
        let upstream_close = resp.has_token("connection", "close");
        let fault = match d.fault {
            Fault::Truncate | Fault::Flip => Some((d.fault, d.r)),
            _ => None,
        };
        let truncating = d.fault == Fault::Truncate;
        let (ur, _) = self.upstream.as_mut().expect("upstream connected");
        if no_body {
            resp.write_to(&mut self.client, resp.content_length()?, truncating)?;
        } else if let Some(buf) = read_framed(ur, &resp)? {
            resp.write_to(&mut self.client, Some(buf.len() as u64), truncating)?;
            relay_body(&mut &buf[..], &mut self.client, buf.len() as u64, fault)?;
        } else if let Some(n) = resp.content_length()? {
            resp.write_to(&mut self.client, Some(n), truncating)?;
            relay_body(ur, &mut self.client, n, fault)?;
        } else {
            // Close-delimited: read it whole, then frame it.
            let mut buf = Vec::new();
            ur.read_to_end(&mut buf)?;
            self.upstream = None;
            resp.write_to(&mut self.client, Some(buf.len() as u64), truncating)?;
            relay_body(&mut &buf[..], &mut self.client, buf.len() as u64, fault)?;
        }
        if upstream_close {
            self.upstream = None;
        }
        if truncating {
            let _ = self.client.shutdown(Shutdown::Both);
            return Ok(false);
        }
        Ok(true)
    }
}
