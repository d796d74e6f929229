//! `rafs stats SOCKET`: a mount daemon's (or a blob manager's) metrics,
//! for people.
//!
//! Three parts, each usable on its own:
//! - a minimal HTTP/1.1 client over a Unix socket ([`fetch`]): one
//!   `GET` with `Connection: close`, the response read to EOF under an
//!   overall deadline ([`TIMEOUT`]) and a size cap ([`MAX_RESPONSE`]), then
//!   split into status and body (`Content-Length` or chunked);
//! - a parser of OpenMetrics / Prometheus text ([`parse`]): `# TYPE` lines
//!   and samples `name{labels} value [timestamp]`; `# HELP`, `# UNIT`,
//!   other comments and exemplars are skipped, `# EOF` ends the input;
//! - rendering ([`render`]): a curated summary of the metrics rafs is known
//!   to export (every one optional: a daemon that lacks one just skips its
//!   line), then every other sample as it came.
//!
//! The response comes from another process and is decoded as untrusted
//! input: every failure is a typed error, nothing panics or allocates
//! without bound.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::util::human_bytes;

/// Overall deadline for one request (connect, write, read).
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted, head and body.
pub const MAX_RESPONSE: usize = 16 << 20;
/// Most samples accepted from one response.
pub const MAX_SAMPLES: usize = 1 << 20;

/// Arguments of `rafs stats`.
#[derive(Debug)]
pub struct StatsArgs {
    /// The mount daemon's API socket (`rafs mount --api-socket`).
    pub socket: PathBuf,
    /// Print the parsed samples and histogram summaries as JSON.
    pub json: bool,
}

/// Why `rafs stats` failed.
#[derive(Debug, Error)]
pub enum StatsError {
    /// Connecting, writing or reading failed.
    #[error("{path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No complete response within [`TIMEOUT`].
    #[error("{0}: no response within {TIMEOUT:?}")]
    Timeout(PathBuf),
    /// The response is not valid HTTP.
    #[error("{path}: bad HTTP response: {source}")]
    Http {
        /// Socket path.
        path: PathBuf,
        /// What is wrong.
        source: HttpError,
    },
    /// The daemon answered with an error status.
    #[error("{path}: HTTP status {status}: {body}")]
    Status {
        /// Socket path.
        path: PathBuf,
        /// Status code.
        status: u16,
        /// Start of the body (lossy, bounded).
        body: String,
    },
    /// The metrics text is malformed.
    #[error("{path}: bad metrics text: {source}")]
    Parse {
        /// Socket path.
        path: PathBuf,
        /// What is wrong.
        source: ParseError,
    },
}

/// Why a response is not valid HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    /// Larger than [`MAX_RESPONSE`].
    #[error("larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    /// The head does not end (no empty line).
    #[error("incomplete response head")]
    NoHead,
    /// The head is not UTF-8 or has no status line.
    #[error("bad status line")]
    StatusLine,
    /// A header line without a colon.
    #[error("bad header line")]
    Header,
    /// An unparsable or conflicting Content-Length.
    #[error("bad Content-Length")]
    ContentLength,
    /// Fewer body bytes than announced.
    #[error("body truncated: {got} of {expected} bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        expected: u64,
    },
    /// Malformed chunked encoding.
    #[error("bad chunked encoding")]
    Chunked,
}

/// A response: status and (decoded) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// `GET path` on the HTTP server at Unix socket `socket`; returns the
/// response whatever its status.
pub fn fetch(socket: &Path, path: &str) -> Result<Response, StatsError> {
    let io = |source: std::io::Error| match source.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => StatsError::Timeout(socket.to_path_buf()),
        _ => StatsError::Io {
            path: socket.to_path_buf(),
            source,
        },
    };
    let deadline = Instant::now() + TIMEOUT;
    let mut conn = UnixStream::connect(socket).map_err(io)?;
    conn.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StatsError::Timeout(socket.to_path_buf()));
        }
        conn.set_read_timeout(Some(left)).map_err(io)?;
        let n = match conn.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            break;
        }
        if buf.len() + n > MAX_RESPONSE {
            return Err(http_err(socket, HttpError::TooLarge));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_response(&buf).map_err(|e| http_err(socket, e))
}

fn http_err(path: &Path, source: HttpError) -> StatsError {
    StatsError::Http {
        path: path.to_path_buf(),
        source,
    }
}

/// Splits a complete response (read to EOF) into status and body.
pub fn parse_response(bytes: &[u8]) -> Result<Response, HttpError> {
    if bytes.len() > MAX_RESPONSE {
        return Err(HttpError::TooLarge);
    }
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::NoHead)?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| HttpError::StatusLine)?;
    let rest = &bytes[end + 4..];
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or(""))?;
    let (mut length, mut chunked) = (None::<u64>, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::Header)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse().map_err(|_| HttpError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::ContentLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(n) = length {
        match usize::try_from(n).ok().and_then(|n| rest.get(..n)) {
            Some(b) => b.to_vec(),
            None => {
                return Err(HttpError::Truncated {
                    got: rest.len(),
                    expected: n,
                })
            }
        }
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn parse_status_line(line: &str) -> Result<u16, HttpError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(HttpError::StatusLine);
    }
    code.parse().map_err(|_| HttpError::StatusLine)
}

/// Decodes a chunked body (extensions and trailers ignored).
fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(HttpError::Chunked)?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| HttpError::Chunked)?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| HttpError::Chunked)?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let data = rest.get(..size).ok_or(HttpError::Chunked)?;
        out.extend_from_slice(data);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or(HttpError::Chunked)?;
    }
}

// ---------------------------------------------------------------- parser

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name (for a histogram, with its `_bucket`/`_sum`/`_count`).
    pub name: String,
    /// Labels, in the order given.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricSet {
    /// Family name → type, from `# TYPE`.
    pub types: BTreeMap<String, String>,
    /// Samples in input order.
    pub samples: Vec<Sample>,
}

/// A malformed line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    /// Not UTF-8.
    #[error("not UTF-8")]
    Utf8,
    /// No valid metric name.
    #[error("bad metric name")]
    Name,
    /// A malformed label set.
    #[error("bad label set")]
    Labels,
    /// A missing or unparsable value.
    #[error("bad value")]
    Value,
    /// A malformed `# TYPE` line.
    #[error("bad # TYPE line")]
    Type,
    /// More than [`MAX_SAMPLES`] samples.
    #[error("more than {MAX_SAMPLES} samples")]
    TooMany,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c.is_ascii_digit()
}

/// Splits a leading metric (or label) name off `s`.
fn take_name(s: &str, colon: bool) -> Option<(&str, &str)> {
    let ok = |c: char| is_name_char(c) && (colon || c != ':');
    let first = s.chars().next()?;
    if !is_name_start(first) || (!colon && first == ':') {
        return None;
    }
    let end = s.find(|c: char| !ok(c)).unwrap_or(s.len());
    Some(s.split_at(end))
}

/// Parses OpenMetrics / Prometheus text. Stops at `# EOF`.
pub fn parse(text: &[u8]) -> Result<MetricSet, ParseError> {
    let mut set = MetricSet::default();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let err = |kind| ParseError { line: i + 1, kind };
        let line = std::str::from_utf8(raw.strip_suffix(b"\r").unwrap_or(raw))
            .map_err(|_| err(ParseErrorKind::Utf8))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            match words.next() {
                Some("EOF") => break,
                Some("TYPE") => {
                    let (name, typ) = (words.next(), words.next());
                    let (Some(name), Some(typ)) = (name, typ) else {
                        return Err(err(ParseErrorKind::Type));
                    };
                    if take_name(name, true).is_none_or(|(_, rest)| !rest.is_empty()) {
                        return Err(err(ParseErrorKind::Type));
                    }
                    set.types.insert(name.to_string(), typ.to_string());
                }
                _ => {}
            }
            continue;
        }
        if set.samples.len() >= MAX_SAMPLES {
            return Err(err(ParseErrorKind::TooMany));
        }
        set.samples.push(parse_sample(line).map_err(err)?);
    }
    Ok(set)
}

fn parse_sample(line: &str) -> Result<Sample, ParseErrorKind> {
    let (name, mut rest) = take_name(line, true).ok_or(ParseErrorKind::Name)?;
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (l, after) = parse_labels(inner)?;
        labels = l;
        rest = after;
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(ParseErrorKind::Value);
    }
    // Value, then an optional timestamp and an optional exemplar (`# ...`).
    let value = rest
        .split_whitespace()
        .next()
        .ok_or(ParseErrorKind::Value)?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

fn parse_value(s: &str) -> Result<f64, ParseErrorKind> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().map_err(|_| ParseErrorKind::Value)
        }
        _ => Err(ParseErrorKind::Value),
    }
}

type Labels = Vec<(String, String)>;

/// Parses `name="value",...}` (after the `{`); returns the labels and what
/// follows the `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), ParseErrorKind> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (name, rest) = take_name(s, false).ok_or(ParseErrorKind::Labels)?;
        let rest = rest
            .trim_start()
            .strip_prefix('=')
            .ok_or(ParseErrorKind::Labels)?;
        let rest = rest
            .trim_start()
            .strip_prefix('"')
            .ok_or(ParseErrorKind::Labels)?;
        let (value, rest) = take_quoted(rest)?;
        labels.push((name.to_string(), value));
        let rest = rest.trim_start();
        s = match rest.strip_prefix(',') {
            Some(r) => r,
            None if rest.starts_with('}') => rest,
            None => return Err(ParseErrorKind::Labels),
        };
    }
}

/// A label value after its opening quote: unescaped value and the rest
/// after the closing quote.
fn take_quoted(s: &str) -> Result<(String, &str), ParseErrorKind> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                _ => return Err(ParseErrorKind::Labels),
            },
            c => out.push(c),
        }
    }
    Err(ParseErrorKind::Labels)
}

// ---------------------------------------------------------------- queries

/// A histogram's samples, merged over every label set but `le`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Observations.
    pub count: f64,
    /// Sum of observations.
    pub sum: f64,
    /// (upper bound, cumulative count), by bound.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// Mean observation, if any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile estimated from the buckets by linear interpolation
    /// inside the bucket that holds it (as Prometheus' `histogram_quantile`:
    /// the lowest bucket starts at 0, and a quantile in the `+Inf` bucket is
    /// the highest finite bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total.is_nan() || total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total;
        let (mut lo, mut below) = (0.0, 0.0);
        for &(le, cum) in &self.buckets {
            if cum >= rank {
                if le.is_infinite() {
                    return Some(lo);
                }
                let inside = cum - below;
                let frac = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lo + (le - lo) * frac);
            }
            (lo, below) = (le, cum);
        }
        Some(lo)
    }
}

impl MetricSet {
    /// Sum of every sample named `name`; `None` if there is none.
    pub fn value(&self, name: &str) -> Option<f64> {
        let mut it = self.samples.iter().filter(|s| s.name == name).peekable();
        it.peek()?;
        Some(it.map(|s| s.value).sum())
    }

    /// The samples named `name`, summed by the value of label `label`.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            *out.entry(s.label(label).unwrap_or("").to_string())
                .or_default() += s.value;
        }
        out.into_iter().collect()
    }

    /// Histogram `name` (`name_bucket`, `name_sum`, `name_count`), if it
    /// has buckets with parsable `le` labels.
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket");
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for s in self.samples.iter().filter(|s| s.name == bucket) {
            let Some(le) = s.label("le").and_then(|v| parse_value(v).ok()) else {
                continue;
            };
            match by_le.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += s.value,
                None => by_le.push((le, s.value)),
            }
        }
        by_le.retain(|(le, c)| !le.is_nan() && !c.is_nan());
        if by_le.is_empty() {
            return None;
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = self
            .value(&format!("{name}_count"))
            .unwrap_or_else(|| by_le.last().map_or(0.0, |b| b.1));
        let sum = self.value(&format!("{name}_sum")).unwrap_or(f64::NAN);
        Some(Histogram {
            count,
            sum,
            buckets: by_le,
        })
    }

    /// Families declared histograms by `# TYPE`.
    fn histograms(&self) -> impl Iterator<Item = &str> {
        self.types
            .iter()
            .filter(|(_, t)| t.as_str() == "histogram")
            .map(|(n, _)| n.as_str())
    }
}

// ---------------------------------------------------------------- rendering

/// The sample names the curated summary shows; everything else is listed
/// as it came.
const KNOWN: &[&str] = &[
    "rafs_operations_total",
    "rafs_read_bytes_total",
    "rafs_chunk_cache_hits_total",
    "rafs_chunk_cache_misses_total",
    "rafs_chunk_decompressions_total",
    "rafs_backend_bytes_total",
    "rafs_io_errors_total",
    "rafs_cache_hits_total",
    "rafs_cache_misses_total",
    "rafs_cache_usage_bytes",
    "rafs_cache_limit_bytes",
    "rafs_cache_evictions_total",
    "rafs_cache_evicted_bytes_total",
    "rafs_cache_write_errors_total",
    "rafs_backend_requests_total",
    "rafs_backend_retries_total",
    "rafs_backend_errors_total",
    "rafs_backend_inflight",
    "rafs_backend_request_seconds_bucket",
    "rafs_backend_request_seconds_sum",
    "rafs_backend_request_seconds_count",
    "rafs_read_timeouts_total",
    "rafs_blobmgr_clients",
    "rafs_blobmgr_connections_total",
    "rafs_blobmgr_requests_total",
    "rafs_blobmgr_protocol_errors_total",
    "rafs_blobmgr_denied_peers_total",
    "rafs_blobmgr_refused_connections_total",
    "rafs_blobmgr_slow_clients_total",
    "rafs_blobmgr_accept_errors_total",
    "rafs_blobmgr_unknown_handles_total",
];

/// A number as an integer when it is one.
pub fn fmt_num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A byte count with a binary unit (non-integral or negative values as
/// plain numbers).
pub fn fmt_bytes(v: f64) -> String {
    if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
        human_bytes(v as u64)
    } else {
        fmt_num(v)
    }
}

/// Seconds with a unit from ns to s.
pub fn fmt_seconds(v: f64) -> String {
    match v.abs() {
        x if !x.is_finite() => fmt_num(v),
        x if x < 1e-6 => format!("{:.0} ns", v * 1e9),
        x if x < 1e-3 => format!("{:.1} µs", v * 1e6),
        x if x < 1.0 => format!("{:.1} ms", v * 1e3),
        _ => format!("{v:.2} s"),
    }
}

fn ratio(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!(" ({:.1}%)", 100.0 * part / whole)
    } else {
        String::new()
    }
}

/// `total (a 1, b 2)` from a per-label breakdown.
fn breakdown(parts: &[(String, f64)]) -> String {
    let total: f64 = parts.iter().map(|p| p.1).sum();
    let items: Vec<String> = parts
        .iter()
        .filter(|p| p.1 != 0.0)
        .map(|(k, v)| format!("{k} {}", fmt_num(*v)))
        .collect();
    match items.is_empty() {
        true => fmt_num(total),
        false => format!("{} ({})", fmt_num(total), items.join(", ")),
    }
}

/// `count N, mean M, p50 .., p90 .., p99 ..` of a histogram of seconds.
pub fn histogram_line(h: &Histogram, unit: fn(f64) -> String) -> String {
    let mut out = format!("count {}", fmt_num(h.count));
    if let Some(m) = h.mean() {
        out.push_str(&format!(", mean {}", unit(m)));
    }
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        if let Some(v) = h.quantile(q) {
            out.push_str(&format!(", {label} {}", unit(v)));
        }
    }
    out
}

struct Section {
    title: &'static str,
    lines: Vec<(&'static str, String)>,
}

impl Section {
    fn new(title: &'static str) -> Section {
        Section {
            title,
            lines: Vec::new(),
        }
    }
    fn add(&mut self, label: &'static str, value: Option<String>) {
        if let Some(v) = value {
            self.lines.push((label, v));
        }
    }
}

fn fs_section(m: &MetricSet) -> Section {
    let mut s = Section::new("Filesystem");
    let ops = m.by_label("rafs_operations_total", "op");
    s.add("operations", (!ops.is_empty()).then(|| breakdown(&ops)));
    s.add("read", m.value("rafs_read_bytes_total").map(fmt_bytes));
    s.add(
        "chunk cache",
        hit_line(
            m,
            "rafs_chunk_cache_hits_total",
            "rafs_chunk_cache_misses_total",
        ),
    );
    let dec = m.value("rafs_chunk_decompressions_total");
    s.add("decompressions", dec.map(fmt_num));
    s.add("I/O errors", m.value("rafs_io_errors_total").map(fmt_num));
    s.add(
        "read timeouts",
        m.value("rafs_read_timeouts_total").map(fmt_num),
    );
    s
}

/// "N hits, M misses (R%)" if either counter exists.
fn hit_line(m: &MetricSet, hits: &str, misses: &str) -> Option<String> {
    let (hits, misses) = (m.value(hits), m.value(misses));
    if hits.is_none() && misses.is_none() {
        return None;
    }
    let (h, x) = (hits.unwrap_or(0.0), misses.unwrap_or(0.0));
    Some(format!(
        "{} hits, {} misses{}",
        fmt_num(h),
        fmt_num(x),
        ratio(h, h + x)
    ))
}

fn cache_section(m: &MetricSet) -> Section {
    let mut s = Section::new("Cache");
    s.add(
        "lookups",
        hit_line(m, "rafs_cache_hits_total", "rafs_cache_misses_total"),
    );
    let usage = m.value("rafs_cache_usage_bytes");
    let limit = m.value("rafs_cache_limit_bytes");
    let usage_line = match (usage, limit) {
        (Some(u), Some(l)) if l > 0.0 => Some(format!(
            "{} of {}{}",
            fmt_bytes(u),
            fmt_bytes(l),
            ratio(u, l)
        )),
        (Some(u), Some(_)) => Some(format!("{} (no limit)", fmt_bytes(u))),
        (Some(u), None) => Some(fmt_bytes(u)),
        (None, Some(l)) => Some(format!("limit {}", fmt_bytes(l))),
        (None, None) => None,
    };
    s.add("usage", usage_line);
    let ev = m.value("rafs_cache_evictions_total");
    let ev_bytes = m.value("rafs_cache_evicted_bytes_total");
    let ev_line = match (ev, ev_bytes) {
        (None, None) => None,
        (n, b) => Some(format!(
            "{} ({})",
            fmt_num(n.unwrap_or(0.0)),
            fmt_bytes(b.unwrap_or(0.0))
        )),
    };
    s.add("evictions", ev_line);
    let werr = m.by_label("rafs_cache_write_errors_total", "kind");
    s.add("write errors", (!werr.is_empty()).then(|| breakdown(&werr)));
    s
}

fn backend_section(m: &MetricSet) -> Section {
    let mut s = Section::new("Backend");
    s.add(
        "fetched",
        m.value("rafs_backend_bytes_total").map(fmt_bytes),
    );
    let req = m.value("rafs_backend_requests_total");
    let retries = m.value("rafs_backend_retries_total");
    let req_line = match (req, retries) {
        (None, None) => None,
        (r, t) => Some(format!(
            "{}, {} retries",
            fmt_num(r.unwrap_or(0.0)),
            fmt_num(t.unwrap_or(0.0))
        )),
    };
    s.add("requests", req_line);
    s.add("in flight", m.value("rafs_backend_inflight").map(fmt_num));
    let errs = m.by_label("rafs_backend_errors_total", "kind");
    s.add("errors", (!errs.is_empty()).then(|| breakdown(&errs)));
    let lat = m.histogram("rafs_backend_request_seconds");
    s.add("latency", lat.map(|h| histogram_line(&h, fmt_seconds)));
    s
}

/// A blob manager's connection layer (`rafs blobmgr --api-socket`).
fn blobmgr_section(m: &MetricSet) -> Section {
    let mut s = Section::new("Blob manager");
    s.add("clients", m.value("rafs_blobmgr_clients").map(fmt_num));
    let conns = m.value("rafs_blobmgr_connections_total");
    s.add("connections", conns.map(fmt_num));
    let ops = m.by_label("rafs_blobmgr_requests_total", "op");
    s.add("requests", (!ops.is_empty()).then(|| breakdown(&ops)));
    let turned_away: Vec<(String, f64)> = [
        ("protocol errors", "rafs_blobmgr_protocol_errors_total"),
        ("denied peers", "rafs_blobmgr_denied_peers_total"),
        ("over the cap", "rafs_blobmgr_refused_connections_total"),
        ("slow clients", "rafs_blobmgr_slow_clients_total"),
        ("accept errors", "rafs_blobmgr_accept_errors_total"),
    ]
    .into_iter()
    .filter_map(|(label, name)| Some((label.to_owned(), m.value(name)?)))
    .collect();
    s.add(
        "dropped",
        (!turned_away.is_empty()).then(|| breakdown(&turned_away)),
    );
    let unknown = m.value("rafs_blobmgr_unknown_handles_total");
    s.add("unknown handles", unknown.map(fmt_num));
    s
}

fn fmt_labels(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", parts.join(","))
}

/// Samples not in the curated summary; other histograms as one line each.
fn other_section(m: &MetricSet) -> Vec<String> {
    let hists: Vec<&str> = m
        .histograms()
        .filter(|h| *h != "rafs_backend_request_seconds")
        .collect();
    let is_hist_part = |name: &str| {
        hists.iter().any(|h| {
            name.strip_prefix(h)
                .is_some_and(|t| ["_bucket", "_sum", "_count", "_created"].contains(&t))
        })
    };
    let mut out = Vec::new();
    for h in &hists {
        if let Some(hist) = m.histogram(h) {
            out.push(format!("{h}: {}", histogram_line(&hist, fmt_num)));
        }
    }
    for s in &m.samples {
        if !KNOWN.contains(&s.name.as_str()) && !is_hist_part(&s.name) {
            out.push(format!(
                "{}{} {}",
                s.name,
                fmt_labels(&s.labels),
                fmt_num(s.value)
            ));
        }
    }
    out
}

/// The human summary of a metric set.
pub fn render(m: &MetricSet) -> String {
    let mut out = String::new();
    let sections = [
        blobmgr_section(m),
        fs_section(m),
        cache_section(m),
        backend_section(m),
    ];
    for sec in sections {
        if sec.lines.is_empty() {
            continue;
        }
        out.push_str(sec.title);
        out.push('\n');
        for (label, value) in sec.lines {
            out.push_str(&format!("  {label:<16} {value}\n"));
        }
    }
    let other = other_section(m);
    if !other.is_empty() {
        out.push_str("Other\n");
        for line in other {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("no metrics\n");
    }
    out
}

/// The metric set as JSON: samples, types, and histogram summaries.
pub fn to_json(m: &MetricSet) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = m
        .samples
        .iter()
        .map(|s| {
            let labels: serde_json::Map<String, serde_json::Value> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            serde_json::json!({"name": s.name, "labels": labels, "value": s.value})
        })
        .collect();
    let mut hists = serde_json::Map::new();
    for name in m.histograms() {
        if let Some(h) = m.histogram(name) {
            hists.insert(
                name.to_string(),
                serde_json::json!({
                    "count": h.count, "sum": h.sum, "mean": h.mean(),
                    "p50": h.quantile(0.5), "p90": h.quantile(0.9), "p99": h.quantile(0.99),
                }),
            );
        }
    }
    serde_json::json!({"types": m.types, "samples": samples, "histograms": hists})
}

/// Runs `rafs stats`.
pub fn run(args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let resp = fetch(&args.socket, "/metrics")?;
    if resp.status != 200 {
        let body: String = String::from_utf8_lossy(&resp.body)
            .chars()
            .take(200)
            .collect();
        return Err(StatsError::Status {
            path: args.socket.clone(),
            status: resp.status,
            body: body.trim().to_string(),
        }
        .into());
    }
    let set = parse(&resp.body).map_err(|source| StatsError::Parse {
        path: args.socket.clone(),
        source,
    })?;
    if args.json {
        println!("{:#}", to_json(&set));
    } else {
        print!("{}", render(&set));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
