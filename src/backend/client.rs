//! The HTTP plumbing shared by the `http`, `registry` and `s3` backends: one
//! pooled [`reqwest`] client per backend, configured from [`BackendOptions`],
//! and a range GET that turns every way a server can answer wrongly into a
//! typed [`BackendError`].
//!
//! The client speaks HTTP/2 to servers that offer it over TLS (ALPN), so the
//! fetch workers' concurrent range requests share one connection, and
//! HTTP/1.1 with keep-alive otherwise (plain `http://` stays HTTP/1.1). TLS
//! is rustls with the *ring* provider; certificates are checked against the
//! system's trust store plus the PEM files of `--ca-cert`. Loading that
//! store reads every file of `/etc/ssl/certs` (tens of ms from a cold page
//! cache), so it is built on a thread of its own, and plain `http://`
//! requests (every hop is dispatched by its own scheme) go through a second
//! client that has no roots and needs none: a mount's first read from an
//! HTTP registry does not wait for the store. That client is not made when
//! a configured or environment proxy is `https://`. Measured on the issue-12
//! image over 10 ms / 200 Mbit/s, 5 alternating runs: python's cold start
//! 1016 ms against 1062 ms (medians), gcc's 961-972 against 1009-1062 ms.
//!
//! What a range GET checks:
//! - `206 Partial Content` with a `Content-Range: bytes a-b/size` that
//!   matches the request exactly, and a body of exactly `len` bytes (read
//!   one byte past `len` at most, so a lying server cannot make us take
//!   more);
//! - `200 OK` is accepted only when the server sent the whole blob and it is
//!   exactly the range asked for (offset 0, `len` = size); any other 200 is
//!   a server that ignored `Range` — a `ShortBody` error, never a silent
//!   misread;
//! - a `206` clamped by the server to the blob's end (its `Content-Range`
//!   size is smaller than `offset + len`) is `OutOfRange`, as is a `200`
//!   whose complete body is shorter than `offset + len`;
//! - `416` is `OutOfRange` with the size from `Content-Range: bytes */size`;
//!   `404` is `NotFound`; `401`/`403` are `Auth`; everything else is
//!   `Status` (transient if 5xx or 429).
//!
//! [`HttpClient::get_range_to`] makes these checks and hands a `206` body
//! over in pieces as it arrives, once the status and `Content-Range` have
//! passed: a body that ends early or runs past `len` is an error after the
//! bytes before it went out (each a byte of the range asked).
//! [`HttpClient::get_range`] collects those pieces.
//!
//! Redirects (301, 302, 303, 307, 308) are followed here, not by reqwest, so
//! each hop passes [`redirect_target`]: at most 5 of them, never from HTTPS
//! to plain HTTP nor to another scheme (a final
//! [`BackendError::RefusedRedirect`]), and the `Authorization` header is
//! never sent to a redirect target: a registry's token must not leak to the
//! storage it redirects to. One deadline (`--request-timeout`) covers all
//! the hops of a request.

use super::{BackendError, BackendOptions, BlobId};
use http::{HeaderMap, StatusCode, Uri};
use reqwest::blocking::{Client, Response};
use reqwest::{Method, Proxy};
use std::io::Read;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The most bytes of an error body kept for messages.
const ERROR_BODY_LIMIT: u64 = 4096;

/// Redirects followed at most per request.
const MAX_REDIRECTS: usize = 5;

/// A pooled HTTP client with the backend's timeouts, proxy and trusted
/// certificates.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Arc<LazyLock<Result<Client, String>, Build>>,
    /// For `http://` URLs: the same client without the system's trust
    /// store, which plain HTTP does not need and which takes tens of ms to
    /// load from a cold page cache (on a mount, the first read would wait
    /// for it). `None` when a proxy may need TLS: then `client` serves
    /// every URL.
    plain: Option<Arc<LazyLock<Result<Client, String>, Build>>>,
    /// The deadline of one request, all its redirects included.
    timeout: Duration,
}

/// Waits for the client being built on its own thread.
type Build = Box<dyn FnOnce() -> Result<Client, String> + Send>;

/// A response whose status the caller interprets (auth flows).
pub struct Raw {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body (for error responses: at most 4 KiB, lossy UTF-8).
    pub body: Vec<u8>,
}

/// The body of a [`HttpClient::request`].
pub enum SendData {
    /// No body.
    Empty,
    /// These bytes.
    Bytes(Vec<u8>),
    /// This many bytes from a reader (sent with their `Content-Length`).
    Reader(Box<dyn std::io::Read + Send>, u64),
}

impl HttpClient {
    /// A client with `opts`' timeouts, proxy (`opts.proxy`, else the
    /// environment's `HTTPS_PROXY` & co., honouring `NO_PROXY`) and extra
    /// trusted certificates (`opts.ca_certs`).
    pub fn new(opts: &BackendOptions) -> Result<HttpClient, BackendError> {
        // The process-wide rustls provider; already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = builder(opts)?;
        let mut extra = Vec::new();
        for path in &opts.ca_certs {
            extra.extend(ca_certs(path)?);
        }
        if !extra.is_empty() {
            b = b.tls_certs_merge(extra);
        }
        // Building loads the system's trust store (tens of ms from a cold
        // page cache): off the caller's path, so a mount is up meanwhile.
        let handle = std::thread::Builder::new()
            .name("http-client".into())
            .spawn(move || build(b))
            .map_err(|e| BackendError::Config(format!("HTTP client: {e}")))?;
        let join: Build = Box::new(move || {
            handle
                .join()
                .unwrap_or_else(|_| Err("HTTP client: its builder panicked".into()))
        });
        let plain = match plain_proxies(opts) {
            true => {
                // No roots at all: this client never verifies a server.
                let b = builder(opts)?.tls_certs_only(Vec::new());
                let lazy: Build = Box::new(move || build(b));
                Some(Arc::new(LazyLock::new(lazy)))
            }
            false => None,
        };
        Ok(HttpClient {
            client: Arc::new(LazyLock::new(join)),
            plain,
            timeout: opts.request_timeout,
        })
    }

    /// The client for `url` (`plain` for an `http://` URL if there is
    /// one), once built (the first request waits for it).
    fn client_for(&self, url: &str) -> Result<&Client, BackendError> {
        let lazy = match &self.plain {
            Some(plain) if is_plain_http(url) => plain,
            _ => &self.client,
        };
        LazyLock::force(lazy)
            .as_ref()
            .map_err(|e| BackendError::Config(e.clone()))
    }

    /// GET `url` with `headers`, without interpreting the status. Bodies
    /// of non-2xx answers are cut at 4 KiB; a 2xx body at `limit` bytes.
    pub fn get(
        &self,
        blob: &BlobId,
        url: &str,
        headers: &[(&str, &str)],
        limit: u64,
    ) -> Result<Raw, BackendError> {
        let resp = self.send(blob, url, headers)?;
        read_answer(blob, url, resp, limit)
    }

    /// One `method` request (HEAD, POST, PUT, ...) of `url` with `body`,
    /// its status not interpreted and no redirect followed (the registry
    /// push protocol's writes). A 2xx body is read up to `limit` bytes, an
    /// error body up to 4 KiB.
    pub fn request(
        &self,
        blob: &BlobId,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: SendData,
        limit: u64,
    ) -> Result<Raw, BackendError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| BackendError::Config(format!("{url}: {e}")))?;
        // A deadline on the request as a whole, its answer's body
        // included: the client's own timeout bounds each read of the body
        // alone, so a registry dripping its answer could hold us for
        // hours.
        let mut req = self
            .client_for(url)?
            .request(method, url)
            .timeout(self.timeout);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = match body {
            SendData::Empty => req,
            SendData::Bytes(b) => req.body(b),
            SendData::Reader(r, len) => req.body(reqwest::blocking::Body::sized(r, len)),
        };
        let resp = req.send().map_err(|e| transport(blob, url, &e))?;
        let cap = if resp.status().is_success() {
            limit
        } else {
            ERROR_BODY_LIMIT
        };
        read_raw(blob, url, resp, cap)
    }

    /// GETs `url`, following redirects as the module docs say.
    fn send(
        &self,
        blob: &BlobId,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, BackendError> {
        let deadline = Instant::now() + self.timeout;
        let mut current = url.to_owned();
        let mut hop_headers: Vec<(&str, &str)> = headers.to_vec();
        for _ in 0..=MAX_REDIRECTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(blob, &current));
            }
            let mut req = self.client_for(&current)?.get(&current).timeout(left);
            for (k, v) in &hop_headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().map_err(|e| transport(blob, &current, &e))?;
            let follow = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = resp.headers().get("location").and_then(|v| v.to_str().ok());
            let (true, Some(location)) = (follow, location) else {
                return Ok(resp);
            };
            let next = redirect_target(&current, location).map_err(|why| {
                BackendError::RefusedRedirect {
                    blob: *blob,
                    detail: format!(
                        "from {} to {}: {why}",
                        without_query(&current),
                        without_query(location)
                    )
                    .into(),
                }
            })?;
            hop_headers.retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
            current = next;
        }
        Err(BackendError::Transport {
            blob: *blob,
            detail: format!(
                "{}: more than {MAX_REDIRECTS} redirects",
                without_query(url)
            ),
            timeout: false,
        })
    }

    /// Range GET of `len` bytes at `offset` (see the module docs for every
    /// check): [`HttpClient::get_range_to`]'s pieces, collected.
    pub fn get_range(
        &self,
        blob: &BlobId,
        url: &str,
        headers: &[(&str, &str)],
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        super::collect_range(len, |sink| {
            self.get_range_to(blob, url, headers, offset, len, sink)
        })
    }

    /// Range GET of `len` bytes at `offset`, handing the body of a `206`
    /// answer to `sink` as it arrives, after the status and `Content-Range`
    /// have passed; every other answer is read and checked whole first (see
    /// [`Backend::read_range_to`](super::Backend::read_range_to)). A body
    /// that ends early is `ShortBody` after its bytes went to `sink`; one
    /// longer than `len` is `ShortBody` once `len` bytes went. `len == 0`
    /// is answered by a size query through `size_of`, since HTTP has no
    /// empty range.
    pub fn get_range_to(
        &self,
        blob: &BlobId,
        url: &str,
        headers: &[(&str, &str)],
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let out_of_range = |size| BackendError::OutOfRange {
            blob: *blob,
            offset,
            len,
            size,
        };
        let end = offset.checked_add(len).ok_or(out_of_range(0))?;
        if len == 0 {
            let size = self.size_of(blob, url, headers)?;
            return if offset > size {
                Err(out_of_range(size))
            } else {
                Ok(())
            };
        }
        let range = format!("bytes={offset}-{}", end - 1);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Range", &range));
        let resp = self.send(blob, url, &all)?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            let raw = read_answer(blob, url, resp, len + 1)?;
            let bytes = unranged_answer(blob, url, raw, offset, len)?;
            sink(&bytes);
            return Ok(());
        }
        check_content_range(blob, resp.headers(), offset, len)?;
        stream_body(blob, url, resp, offset, len, sink)
    }

    /// The size of the resource at `url`, from a one-byte range GET's
    /// `Content-Range` (works where HEAD is not allowed, e.g. presigned S3
    /// GET URLs). An empty resource answers 416 with `bytes */0`.
    pub fn size_of(
        &self,
        blob: &BlobId,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<u64, BackendError> {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Range", "bytes=0-0"));
        let resp = self.send(blob, url, &all)?;
        if resp.status() == StatusCode::OK {
            // A server that ignores Range sends the whole blob: its length
            // is the answer, and the body is not read (the connection is
            // dropped instead of buffering a blob).
            let len = resp.headers().get("content-length");
            if let Some(size) = len.and_then(|v| v.to_str().ok()?.trim().parse().ok()) {
                return Ok(size);
            }
        }
        let cap = if resp.status().is_success() {
            2
        } else {
            ERROR_BODY_LIMIT
        };
        let raw = read_raw(blob, url, resp, cap)?;
        let from_range = content_range(&raw.headers).and_then(|c| c.2);
        match raw.status.as_u16() {
            206 | 416 => from_range.ok_or(BackendError::ShortBody {
                blob: *blob,
                offset: 0,
                expected: 1,
                got: raw.body.len() as u64,
            }),
            200 => raw
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .ok_or_else(|| status_error(blob, url, &raw)),
            _ => Err(status_error(blob, url, &raw)),
        }
    }
}

/// What every network backend checks before a range request: a range past
/// a known size is `OutOfRange` without asking the server, and a
/// zero-length read is answered by the size alone (HTTP has no empty
/// range). `Some` is the answer (no bytes, or the error); `None` means
/// "send the request".
pub fn answer_locally(
    id: &BlobId,
    offset: u64,
    len: u64,
    known: Option<u64>,
    size: impl FnOnce() -> Result<u64, BackendError>,
) -> Option<Result<(), BackendError>> {
    let bounds = |size: u64| match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::OutOfRange {
            blob: *id,
            offset,
            len,
            size,
        }),
    };
    if let Some(Err(e)) = known.map(bounds) {
        return Some(Err(e));
    }
    if len == 0 {
        return Some(size().and_then(bounds));
    }
    None
}

/// An answer read whole: a 2xx body up to `limit` bytes, an error body up
/// to [`ERROR_BODY_LIMIT`] (enough for its message).
fn read_answer(blob: &BlobId, url: &str, resp: Response, limit: u64) -> Result<Raw, BackendError> {
    let cap = match resp.status().is_success() {
        true => limit,
        false => ERROR_BODY_LIMIT,
    };
    read_raw(blob, url, resp, cap)
}

fn read_raw(blob: &BlobId, url: &str, resp: Response, cap: u64) -> Result<Raw, BackendError> {
    let status = resp.status();
    let headers = resp.headers().clone();
    // One byte past the cap tells a body over it from one exactly at it.
    let mut body = Vec::new();
    let got = resp.take(cap.saturating_add(1)).read_to_end(&mut body);
    if let Err(e) = got {
        return Err(BackendError::Transport {
            blob: *blob,
            detail: format!("{}: reading the body: {}", without_query(url), chain(&e)),
            timeout: body_timed_out(&e),
        });
    }
    if body.len() as u64 > cap {
        if status.is_success() {
            // More than asked for: a success body is a protocol violation
            // (reported as ShortBody by the caller's length check, so keep
            // a marker of the right length class); an error body is cut.
            return Err(BackendError::ShortBody {
                blob: *blob,
                offset: 0,
                expected: cap.saturating_sub(1),
                got: cap,
            });
        }
        body.clear();
    }
    Ok(Raw {
        status,
        headers,
        body,
    })
}

/// A range GET's answer other than `206`, read whole: its bytes (a `200`
/// that is exactly the range), or what is wrong with it (see the module
/// docs).
fn unranged_answer(
    blob: &BlobId,
    url: &str,
    raw: Raw,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, BackendError> {
    let end = offset + len;
    match raw.status.as_u16() {
        200 => {
            // A server that ignores Range: acceptable only if the whole
            // body is exactly what was asked. A complete body (at most
            // `len` bytes, else the read limit tripped) is the whole
            // blob, so a range past its end is out of range.
            let size = raw.body.len() as u64;
            if offset == 0 && size == len {
                Ok(raw.body)
            } else if size <= len && end > size {
                Err(BackendError::OutOfRange {
                    blob: *blob,
                    offset,
                    len,
                    size,
                })
            } else {
                Err(BackendError::ShortBody {
                    blob: *blob,
                    offset,
                    expected: len,
                    got: raw.body.len() as u64,
                })
            }
        }
        416 => Err(BackendError::OutOfRange {
            blob: *blob,
            offset,
            len,
            size: content_range(&raw.headers).and_then(|c| c.2).unwrap_or(0),
        }),
        _ => Err(status_error(blob, url, &raw)),
    }
}

/// Bytes of a streamed body read at once at most.
const STREAM_PIECE: usize = 64 << 10;

/// Hands the `len`-byte body of a checked `206` answer to `sink` as it
/// arrives.
fn stream_body(
    blob: &BlobId,
    url: &str,
    resp: Response,
    offset: u64,
    len: u64,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(), BackendError> {
    let short = |got| BackendError::ShortBody {
        blob: *blob,
        offset,
        expected: len,
        got,
    };
    // One byte past `len` tells a body over it from one exactly at it.
    let mut body = resp.take(len + 1);
    let mut piece = crate::util::pool::zeroed(STREAM_PIECE);
    let mut got = 0u64;
    let result = loop {
        let room = (len + 1 - got).min(STREAM_PIECE as u64) as usize;
        match body.read(&mut piece[..room]) {
            Ok(0) if got == len => break Ok(()),
            Ok(0) => break Err(short(got)),
            Ok(n) if got + n as u64 > len => {
                sink(&piece[..(len - got) as usize]);
                break Err(short(got + n as u64));
            }
            Ok(n) => {
                sink(&piece[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                break Err(BackendError::Transport {
                    blob: *blob,
                    detail: format!("{}: reading the body: {}", without_query(url), chain(&e)),
                    timeout: body_timed_out(&e),
                })
            }
        }
    };
    crate::util::pool::give(piece);
    result
}

/// Checks a `206` answer's `Content-Range` against the range asked for.
fn check_content_range(
    blob: &BlobId,
    headers: &HeaderMap,
    offset: u64,
    len: u64,
) -> Result<(), BackendError> {
    let want_last = offset + len - 1;
    match content_range(headers) {
        Some((Some(first), Some(last), _)) if first == offset && last == want_last => Ok(()),
        // Servers clamp a range that runs past the end (RFC 9110 14.1.2):
        // the size they report makes it an out-of-range request.
        Some((_, _, Some(size))) if offset + len > size => Err(BackendError::OutOfRange {
            blob: *blob,
            offset,
            len,
            size,
        }),
        _ => Err(BackendError::ShortBody {
            blob: *blob,
            offset,
            expected: len,
            got: 0,
        }),
    }
}

/// Parses `Content-Range: bytes first-last/size` or `bytes */size`;
/// `size` is `None` when it is `*`.
pub fn content_range(headers: &HeaderMap) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
    let v = headers.get("content-range")?.to_str().ok()?.trim();
    let rest = v.strip_prefix("bytes ")?.trim();
    let (span, size) = rest.split_once('/')?;
    let size = match size.trim() {
        "*" => None,
        s => Some(s.parse().ok()?),
    };
    if span.trim() == "*" {
        return Some((None, None, size));
    }
    let (a, b) = span.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((Some(a), Some(b), size))
}

/// The error for a status the caller did not expect: 404 `NotFound`,
/// 401/403 `Auth`, else `Status`.
pub fn status_error(blob: &BlobId, url: &str, raw: &Raw) -> BackendError {
    match raw.status.as_u16() {
        404 => BackendError::NotFound(*blob),
        401 | 403 => BackendError::Auth {
            blob: *blob,
            detail: format!(
                "{url}: HTTP {}: {}",
                raw.status.as_u16(),
                String::from_utf8_lossy(&raw.body[..raw.body.len().min(200)]).trim()
            ),
        },
        status => BackendError::Status {
            blob: *blob,
            url: url.into(),
            status,
        },
    }
}

/// Where a redirect from `from` to `location` leads, as an absolute URL, or
/// why it is not followed: only http(s) targets, and never from HTTPS to
/// plain HTTP. `location` may be absolute, scheme-relative (`//host/p`),
/// absolute-path (`/p`) or relative (`p`, resolved against `from`'s
/// directory).
pub fn redirect_target(from: &str, location: &str) -> Result<String, &'static str> {
    let base: Uri = from
        .parse()
        .map_err(|_| "the redirecting URL is not valid")?;
    let scheme = base
        .scheme_str()
        .ok_or("the redirecting URL has no scheme")?;
    let authority = base.authority().ok_or("the redirecting URL has no host")?;
    let location = location.trim();
    let target = if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if has_scheme(location) {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    let parsed: Uri = target
        .parse()
        .map_err(|_| "the target is not a valid URL")?;
    let to = parsed.scheme_str().unwrap_or("").to_ascii_lowercase();
    if parsed.host().is_none_or(str::is_empty) {
        return Err("the target has no host");
    }
    match (scheme.to_ascii_lowercase().as_str(), to.as_str()) {
        ("https", "http") => Err("it leaves HTTPS for plain HTTP"),
        (_, "http" | "https") => Ok(target),
        _ => Err("only http(s) redirects are followed"),
    }
}

/// A client builder with `opts`' timeouts and proxy (`opts.proxy`, else
/// the environment's `HTTPS_PROXY` & co., honouring `NO_PROXY`), following
/// no redirect by itself (`HttpClient::send` does, hop by hop).
fn builder(opts: &BackendOptions) -> Result<reqwest::blocking::ClientBuilder, BackendError> {
    let mut b = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.request_timeout)
        .pool_max_idle_per_host(16)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("rafs/", env!("CARGO_PKG_VERSION")));
    if let Some(p) = &opts.proxy {
        let proxy =
            Proxy::all(p).map_err(|e| BackendError::Config(format!("--proxy '{p}': {e}")))?;
        b = b.proxy(proxy);
    }
    Ok(b)
}

/// Builds `b`, the error as its message.
fn build(b: reqwest::blocking::ClientBuilder) -> Result<Client, String> {
    b.build().map_err(|e| format!("HTTP client: {}", chain(&e)))
}

/// Whether plain-HTTP requests can go without TLS: no proxy that plain
/// requests would reach over TLS (an `https://` one in `opts.proxy`, or
/// in the environment's `HTTP_PROXY` or `ALL_PROXY`, either case).
fn plain_proxies(opts: &BackendOptions) -> bool {
    let env = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .filter_map(|k| std::env::var(k).ok());
    let tls = |p: &String| {
        p.trim()
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    };
    !opts.proxy.iter().cloned().chain(env).any(|p| tls(&p))
}

/// Whether `url` is an `http://` URL (scheme in either case).
fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

/// Whether `s` starts with `scheme:` (RFC 3986: a letter, then letters,
/// digits, `+`, `-`, `.`).
fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// `url` without its query and fragment (they may hold signatures).
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Whether a body read failed on the request's deadline. reqwest reports
/// it as an `io::Error` of kind `Other` around a timed-out
/// `reqwest::Error`, so the kind alone does not tell (and the error would
/// be counted as a plain transport failure, not a timeout).
fn body_timed_out(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

fn timed_out(blob: &BlobId, url: &str) -> BackendError {
    BackendError::Transport {
        blob: *blob,
        detail: format!("{}: request deadline passed", without_query(url)),
        timeout: true,
    }
}

fn transport(blob: &BlobId, url: &str, e: &reqwest::Error) -> BackendError {
    BackendError::Transport {
        blob: *blob,
        detail: format!("{}: {}", without_query(url), chain(e)),
        timeout: e.is_timeout(),
    }
}

/// An error and its sources, `: `-joined (reqwest's own message is only
/// "error sending request"; the cause, e.g. a certificate check, is below).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut at = e.source();
    while let Some(s) = at {
        let next = s.to_string();
        if !out.contains(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        at = s.source();
    }
    out
}

/// The certificates of PEM file `path` (`--ca-cert`).
fn ca_certs(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, BackendError> {
    let bad = |why: String| BackendError::Config(format!("--ca-cert {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(chain(&e)))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The origin of an http(s) URL, `scheme://host:port` in lower case with
/// the default port filled in: what decides whether two URLs are the same
/// server (for credentials and redirects). `None` for anything else.
pub fn origin(url: &str) -> Option<String> {
    let uri: Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let host = uri.host().filter(|h| !h.is_empty())?.to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(default);
    Some(format!("{scheme}://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-range", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn answered_locally() {
        let id = BlobId([1; 32]);
        let never = || -> Result<u64, BackendError> { panic!("size asked") };
        assert!(answer_locally(&id, 0, 10, Some(10), never).is_none());
        assert!(answer_locally(&id, 3, 4, None, never).is_none());
        for (o, l) in [(0, 11), (10, 1), (u64::MAX, 2)] {
            assert!(matches!(
                answer_locally(&id, o, l, Some(10), never),
                Some(Err(BackendError::OutOfRange { size: 10, .. }))
            ));
        }
        let ten = || Ok(10);
        assert!(matches!(
            answer_locally(&id, 10, 0, None, ten),
            Some(Ok(()))
        ));
        assert!(matches!(
            answer_locally(&id, 11, 0, None, ten),
            Some(Err(BackendError::OutOfRange { .. }))
        ));
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            content_range(&headers("bytes 0-9/100")),
            Some((Some(0), Some(9), Some(100)))
        );
        assert_eq!(
            content_range(&headers("bytes 5-5/*")),
            Some((Some(5), Some(5), None))
        );
        assert_eq!(
            content_range(&headers("bytes */42")),
            Some((None, None, Some(42)))
        );
        for bad in ["bytes 9-0/100", "items 0-1/2", "bytes 0-x/1", "bytes 0-1"] {
            assert_eq!(content_range(&headers(bad)), None, "{bad}");
        }
        assert_eq!(content_range(&HeaderMap::new()), None);
    }

    #[test]
    fn redirect_policy() {
        let ok = |from: &str, loc: &str| redirect_target(from, loc).unwrap();
        assert_eq!(
            ok("https://a/x/y", "https://b/z?sig=1"),
            "https://b/z?sig=1"
        );
        assert_eq!(ok("http://a/x/y", "https://b/z"), "https://b/z");
        assert_eq!(ok("http://a/x/y", "http://b:81/z"), "http://b:81/z");
        assert_eq!(ok("https://a:8443/x/y", "/z"), "https://a:8443/z");
        assert_eq!(ok("https://a/x/y", "//c/z"), "https://c/z");
        assert_eq!(ok("https://a/x/y?q", "z"), "https://a/x/z");
        assert_eq!(ok("http://a/x/y", "HTTPS://b/z"), "HTTPS://b/z");
        for (from, loc) in [
            ("https://a/x", "http://b/z"),
            ("https://a/x", "HTTP://a/x"),
            ("HTTPS://a/x", "http://a/x"),
            ("https://a/x", "ftp://b/z"),
            ("http://a/x", "file:///etc/passwd"),
            ("https://a/x", "http:/z"),
        ] {
            assert!(redirect_target(from, loc).is_err(), "{from} -> {loc}");
        }
        assert_eq!(
            redirect_target("https://a/x", "http://b/z"),
            Err("it leaves HTTPS for plain HTTP")
        );
        assert_eq!(
            without_query("https://b/z?X-Amz-Signature=s"),
            "https://b/z"
        );
    }

    #[test]
    fn plain_http_urls_go_without_tls_unless_a_proxy_needs_it() {
        assert!(is_plain_http("http://h/x") && is_plain_http("HTTP://h/x"));
        assert!(!is_plain_http("https://h/x") && !is_plain_http("http:/h"));
        let opts = |proxy: Option<&str>| BackendOptions {
            proxy: proxy.map(str::to_owned),
            ..BackendOptions::default()
        };
        let c = HttpClient::new(&opts(None)).unwrap();
        let (plain, tls) = (
            c.client_for("http://h/").unwrap(),
            c.client_for("https://h/").unwrap(),
        );
        assert!(!std::ptr::eq(plain, tls), "http:// has its own client");
        assert!(std::ptr::eq(plain, c.client_for("HTTP://h/b").unwrap()));
        assert!(plain_proxies(&opts(Some("http://p:3128"))));
        assert!(plain_proxies(&opts(Some("p:3128"))));
        let c = HttpClient::new(&opts(Some("HTTPS://p:3128"))).unwrap();
        assert!(c.plain.is_none(), "a TLS proxy: one client for all");
        assert!(std::ptr::eq(
            c.client_for("http://h/").unwrap(),
            c.client_for("https://h/").unwrap()
        ));
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://Auth.Example/token?x=1").as_deref(),
            Some("https://auth.example:443")
        );
        assert_eq!(
            origin("http://127.0.0.1:5000/t").as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(origin("HTTP://h").as_deref(), Some("http://h:80"));
        assert_eq!(
            origin("https://h:443/a"),
            origin("https://h/b"),
            "default port"
        );
        assert_ne!(origin("http://h/"), origin("https://h/"), "scheme");
        assert_ne!(origin("http://h:1/"), origin("http://h:2/"), "port");
        for bad in ["ftp://h/", "h/token", "", "file:///x", "https://"] {
            assert_eq!(origin(bad), None, "{bad}");
        }
    }
}
