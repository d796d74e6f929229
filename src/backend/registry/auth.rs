//! Registry credentials and the pieces of the OCI distribution auth
//! protocol that are pure parsing: `WWW-Authenticate` challenges, docker
//! `config.json` entries, token responses.
//!
//! Credentials are looked up once, when the backend is opened, in this
//! order: the flags (`--registry-user`/`--registry-password`), the
//! environment (`RAFS_REGISTRY_USER`/`RAFS_REGISTRY_PASSWORD`), then the
//! docker `config.json`, the way the docker CLI reads it:
//!
//! 1. `credHelpers.<host>`: the helper `docker-credential-<name>` is run;
//! 2. else `credsStore`: that helper is run for every registry;
//! 3. else `auths.<host>` (`auth`, base64 `user:pass`, or its
//!    `username`/`password` fields).
//!
//! As in docker, a configured helper hides `auths`: when the helper has no
//! credentials for the host, access is anonymous, even if `auths` has an
//! entry (docker keeps only the e-mail there when a store is set).
//!
//! A helper is untrusted: it is found on `PATH`, gets the host on stdin,
//! must answer `{"ServerURL","Username","Secret"}` within
//! [`HELPER_TIMEOUT`] (then it and its process group are killed) in at
//! most [`HELPER_OUTPUT_LIMIT`] bytes. A non-zero exit whose output says
//! `credentials not found` means anonymous access; any other failure is a
//! [`HelperError`] naming the helper. A `Username` of `<token>` means
//! `Secret` is an identity (OAuth2 refresh) token, which docker trades
//! for an access token at the token server; rafs does not implement that
//! exchange and reports [`HelperError::IdentityToken`] instead of sending
//! the token as a password.
//!
//! Secrets never reach a log: [`Credentials`] and [`Token`] print as
//! `<redacted>` in their `Debug` output.
//!
//! Token lifetimes are measured with a [`Clock`], so tests can move time
//! instead of sleeping ([`ManualClock`]).

use crate::backend::{BackendError, BackendOptions};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// The largest docker `config.json` read (they are a few KiB).
const CONFIG_LIMIT: u64 = 1 << 20;

/// How long a credential helper may run before it is killed.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a credential helper may write on stdout (or stderr).
pub const HELPER_OUTPUT_LIMIT: u64 = 64 << 10;

/// What a credential helper's stdout says when it has nothing for the host
/// (docker-credential-helpers' `ErrCredentialsNotFound`).
const NOT_FOUND: &str = "credentials not found";

/// A registry user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or personal access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The `Authorization` header value for HTTP Basic auth.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.user, self.password);
        format!("Basic {}", STANDARD.encode(raw))
    }
}

/// The time source of token lifetimes.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (for tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token, as sent after `Bearer `.
    pub value: String,
    /// After this instant the token is refreshed before use.
    pub refresh_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`: send the user and password.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`: fetch a token from
    /// `realm`.
    Bearer {
        /// Token server URL.
        realm: String,
        /// The registry's service name, passed back to the token server.
        service: Option<String>,
        /// The scope the registry asked for, if it said.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value into the challenges rafs
/// understands (`Basic`, and `Bearer` with a realm), in order. Parameter
/// values may be tokens or quoted strings (with `\` escapes and commas
/// inside); unknown schemes and parameters are skipped.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    for (scheme, params) in split_challenges(header) {
        let get = |k: &str| {
            params
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic);
        } else if scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = get("realm") {
                out.push(Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scope: get("scope"),
                });
            }
        }
    }
    out
}

/// A tiny cursor over a header value.
struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] == b' ' || self.s[self.i] == b'\t') {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    /// An RFC 7230 token (also accepts the `=`-free base64 token68 chars).
    fn token(&mut self) -> String {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    /// A quoted string, the cursor on the opening quote.
    fn quoted(&mut self) -> String {
        let mut v = Vec::new();
        self.i += 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        v.push(n);
                        self.i += 1;
                    }
                }
                c => v.push(c),
            }
        }
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Splits a header into `(scheme, [(name, value)])`.
fn split_challenges(header: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut lx = Lexer {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    loop {
        lx.skip_ws();
        let Some(c) = lx.peek() else { break };
        if c == b',' {
            lx.i += 1;
            continue;
        }
        let before = lx.i;
        let word = lx.token();
        if word.is_empty() {
            // A character no grammar allows here: skip it.
            lx.i = before + 1;
            continue;
        }
        lx.skip_ws();
        if lx.peek() == Some(b'=') {
            // `name=value`: a parameter of the current challenge.
            lx.i += 1;
            lx.skip_ws();
            let value = if lx.peek() == Some(b'"') {
                lx.quoted()
            } else {
                lx.token()
            };
            if let Some(last) = out.last_mut() {
                last.1.push((word, value));
            }
        } else {
            out.push((word, Vec::new()));
        }
    }
    out
}

/// Where credentials come from, for tests: the environment lookup.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The credentials for `host` (see the module docs for the order), or
/// `None` for anonymous access.
pub fn resolve_credentials(
    host: &str,
    opts: &BackendOptions,
) -> Result<Option<Credentials>, BackendError> {
    resolve_with(host, opts, &|k| std::env::var(k).ok())
}

/// [`resolve_credentials`] with an explicit environment.
pub fn resolve_with(
    host: &str,
    opts: &BackendOptions,
    env: EnvLookup<'_>,
) -> Result<Option<Credentials>, BackendError> {
    let user = opts
        .registry_user
        .clone()
        .or_else(|| env("RAFS_REGISTRY_USER"));
    let password = opts
        .registry_password
        .clone()
        .or_else(|| env("RAFS_REGISTRY_PASSWORD"));
    match (user, password) {
        (Some(user), Some(password)) => return Ok(Some(Credentials { user, password })),
        (Some(_), None) => {
            return Err(BackendError::Config(
                "registry user given without a password (--registry-password or \
                 RAFS_REGISTRY_PASSWORD)"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(BackendError::Config(
                "registry password given without a user (--registry-user or \
                 RAFS_REGISTRY_USER)"
                    .into(),
            ))
        }
        (None, None) => {}
    }
    let (path, explicit) = match &opts.docker_config {
        Some(p) => (p.clone(), true),
        None => match default_docker_config(env) {
            Some(p) => (p, false),
            None => return Ok(None),
        },
    };
    let bytes = match read_bounded(&path) {
        Ok(b) => b,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(BackendError::Config(format!(
                "docker config {}: {e}",
                path.display()
            )))
        }
    };
    let in_config =
        |why: String| BackendError::Config(format!("docker config {}: {why}", path.display()));
    match docker_config_helper(&bytes, host).map_err(in_config)? {
        Some((helper, server)) => run_helper(&helper, &server, env, HELPER_TIMEOUT)
            .map_err(|e| BackendError::Config(e.to_string())),
        None => docker_config_credentials(&bytes, host).map_err(in_config),
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn default_docker_config(env: EnvLookup<'_>) -> Option<PathBuf> {
    if let Some(dir) = env("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("config.json"));
    }
    let home = env("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".docker").join("config.json"))
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(CONFIG_LIMIT + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > CONFIG_LIMIT {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB",
        ));
    }
    Ok(buf)
}

/// The host an `auths` key names: `host`, `https://host/...` or
/// `http://host`; Docker Hub's `https://index.docker.io/v1/` also names
/// `registry-1.docker.io` and `docker.io`.
fn auths_key_matches(key: &str, host: &str) -> bool {
    let bare = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let bare = bare.split('/').next().unwrap_or(bare);
    if bare.eq_ignore_ascii_case(host) {
        return true;
    }
    let hub = ["index.docker.io", "registry-1.docker.io", "docker.io"];
    hub.contains(&bare) && hub.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// The credentials for `host` in a docker `config.json`, or `None` if it
/// has no usable entry. The error (a malformed file or entry) never
/// contains the secret.
pub fn docker_config_credentials(json: &[u8], host: &str) -> Result<Option<Credentials>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    // An exact key wins over an alias (e.g. a URL form of the host).
    let mut entries: Vec<_> = auths
        .iter()
        .filter(|(k, _)| auths_key_matches(k, host))
        .collect();
    entries.sort_by_key(|(k, _)| k.as_str() != host);
    for (key, entry) in entries {
        let field = |name: &str| entry.get(name).and_then(|v| v.as_str());
        if let Some(auth) = field("auth").filter(|a| !a.is_empty()) {
            let raw = STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("auths.{key}.auth is not base64"))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| format!("auths.{key}.auth is not UTF-8 user:password"))?;
            let (user, password) = raw
                .split_once(':')
                .ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
            return Ok(Some(Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
            }));
        }
        if let (Some(user), Some(password)) = (field("username"), field("password")) {
            return Ok(Some(Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
            }));
        }
    }
    Ok(None)
}

/// A credential helper that failed. None of these carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The name in `config.json` cannot name a program.
    #[error("credential helper {helper:?}: not a valid helper name")]
    BadName {
        /// The helper name.
        helper: String,
    },
    /// No `docker-credential-<name>` on `PATH`.
    #[error("credential helper docker-credential-{helper}: not found on PATH")]
    NotFound {
        /// The helper name.
        helper: String,
    },
    /// It could not be started or talked to.
    #[error("credential helper docker-credential-{helper}: {source}")]
    Io {
        /// The helper name.
        helper: String,
        /// What failed.
        source: std::io::Error,
    },
    /// It ran too long and was killed.
    #[error("credential helper docker-credential-{helper}: no answer within {secs} s, killed")]
    Timeout {
        /// The helper name.
        helper: String,
        /// The time limit.
        secs: u64,
    },
    /// It wrote more than [`HELPER_OUTPUT_LIMIT`] bytes.
    #[error("credential helper docker-credential-{helper}: more than {limit} bytes of output")]
    TooMuchOutput {
        /// The helper name.
        helper: String,
        /// The limit.
        limit: u64,
    },
    /// It exited with an error other than "credentials not found".
    #[error("credential helper docker-credential-{helper} failed ({status}): {message}")]
    Failed {
        /// The helper name.
        helper: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of what it said (stderr, else stdout).
        message: String,
    },
    /// Its answer is not the JSON of the helper protocol.
    #[error("credential helper docker-credential-{helper}: bad answer: {why}")]
    BadReply {
        /// The helper name.
        helper: String,
        /// What is wrong (never the answer itself).
        why: String,
    },
    /// It answered with an identity token, which rafs cannot use.
    #[error(
        "credential helper docker-credential-{helper} gave an identity token (user <token>): \
         rafs does not trade identity tokens for access tokens; log in with a user and \
         password or pass --registry-user/--registry-password"
    )]
    IdentityToken {
        /// The helper name.
        helper: String,
    },
}

/// The credential helper a docker `config.json` names for `host`, and the
/// server address to ask it for: `credHelpers.<host>` (an exact key first,
/// then URL forms and Docker Hub aliases), else `credsStore`. `None`: no
/// helper, use `auths`.
pub fn docker_config_helper(json: &[u8], host: &str) -> Result<Option<(String, String)>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let hub = ["index.docker.io", "registry-1.docker.io", "docker.io"];
    let server = if hub.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        "https://index.docker.io/v1/".to_owned()
    } else {
        host.to_owned()
    };
    if let Some(helpers) = doc.get("credHelpers").and_then(|h| h.as_object()) {
        let mut entries: Vec<_> = helpers
            .iter()
            .filter(|(k, _)| auths_key_matches(k, host))
            .collect();
        entries.sort_by_key(|(k, _)| k.as_str() != host);
        for (key, v) in entries {
            let name = v
                .as_str()
                .ok_or_else(|| format!("credHelpers.{key} is not a string"))?;
            if !name.is_empty() {
                return Ok(Some((name.to_owned(), server)));
            }
        }
    }
    match doc.get("credsStore") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some((s.clone(), server))),
        Some(_) => Err("credsStore is not a string".into()),
    }
}

/// Parses a credential helper's answer to `get`.
pub fn parse_helper_reply(helper: &str, out: &[u8]) -> Result<Credentials, HelperError> {
    let bad = |why: &str| HelperError::BadReply {
        helper: helper.to_owned(),
        why: why.to_owned(),
    };
    let doc: serde_json::Value = serde_json::from_slice(out).map_err(|_| bad("not JSON"))?;
    let field = |k: &str| doc.get(k).and_then(|v| v.as_str());
    let user = field("Username").ok_or_else(|| bad("no Username string"))?;
    let secret = field("Secret").ok_or_else(|| bad("no Secret string"))?;
    if user == "<token>" {
        return Err(HelperError::IdentityToken {
            helper: helper.to_owned(),
        });
    }
    if user.is_empty() && secret.is_empty() {
        return Err(bad("empty Username and Secret"));
    }
    Ok(Credentials {
        user: user.to_owned(),
        password: secret.to_owned(),
    })
}

/// `docker-credential-<helper>` in `PATH` (of `env`).
fn find_helper(helper: &str, env: EnvLookup<'_>) -> Result<PathBuf, HelperError> {
    use std::os::unix::fs::PermissionsExt;
    let valid = !helper.is_empty()
        && helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if !valid {
        return Err(HelperError::BadName {
            helper: helper.to_owned(),
        });
    }
    let path = env("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let file = format!("docker-credential-{helper}");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(&file))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| HelperError::NotFound {
            helper: helper.to_owned(),
        })
}

/// Reads at most `HELPER_OUTPUT_LIMIT + 1` bytes of `r` on a thread and
/// sends them (tagged) on `tx`.
fn spawn_reader(mut r: impl Read + Send + 'static, tag: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut r).take(HELPER_OUTPUT_LIMIT + 1).read_to_end(&mut buf);
        let _ = tx.send((tag, buf));
    });
}

/// Kills the helper's whole process group and reaps it.
fn kill_helper(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `docker-credential-<helper> get` with `server` on stdin: the
/// credentials, or `None` if it has none for `server`.
pub fn run_helper(
    helper: &str,
    server: &str,
    env: EnvLookup<'_>,
    timeout: Duration,
) -> Result<Option<Credentials>, HelperError> {
    use std::os::unix::process::CommandExt;
    let prog = find_helper(helper, env)?;
    let io = |source| HelperError::Io {
        helper: helper.to_owned(),
        source,
    };
    let mut cmd = Command::new(&prog);
    cmd.arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(path) = env("PATH") {
        cmd.env("PATH", path);
    }
    let mut child = cmd.spawn().map_err(io)?;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
        spawn_reader(out, 1, tx.clone());
        spawn_reader(err, 2, tx);
    }
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input is not an error here.
        let _ = stdin.write_all(server.as_bytes());
    }
    let outcome = collect_helper(&mut child, &rx, deadline);
    let (status, out, err) = match outcome {
        Ok(v) => v,
        Err(too_much) => {
            kill_helper(&mut child);
            return Err(if too_much {
                HelperError::TooMuchOutput {
                    helper: helper.to_owned(),
                    limit: HELPER_OUTPUT_LIMIT,
                }
            } else {
                HelperError::Timeout {
                    helper: helper.to_owned(),
                    secs: timeout.as_secs(),
                }
            });
        }
    };
    if status.success() {
        return parse_helper_reply(helper, &out).map(Some);
    }
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    let (out, err) = (said(&out), said(&err));
    if out.contains(NOT_FOUND) || err.contains(NOT_FOUND) {
        return Ok(None);
    }
    let message = if err.is_empty() { out } else { err };
    Err(HelperError::Failed {
        helper: helper.to_owned(),
        status,
        message: message.chars().take(200).collect(),
    })
}

/// Waits until the helper exited and both its outputs are read, polling
/// until `deadline`: `(status, stdout, stderr)`, or `Err(true)` when an
/// output is over the limit, `Err(false)` at the deadline.
type HelperOutput = (std::process::ExitStatus, Vec<u8>, Vec<u8>);
fn collect_helper(
    child: &mut std::process::Child,
    rx: &mpsc::Receiver<(u8, Vec<u8>)>,
    deadline: Instant,
) -> Result<HelperOutput, bool> {
    let (mut out, mut err, mut status) = (None, None, None);
    loop {
        if status.is_none() {
            status = child.try_wait().map_err(|_| false)?;
        }
        if let (Some(s), Some(o), Some(e)) = (status, &mut out, &mut err) {
            return Ok((s, std::mem::take(o), std::mem::take(e)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(false);
        }
        // Wake on an output arriving, or every 10 ms to look at the child.
        if let Ok((tag, buf)) = rx.recv_timeout((deadline - now).min(Duration::from_millis(10))) {
            if buf.len() as u64 > HELPER_OUTPUT_LIMIT {
                return Err(true);
            }
            *(if tag == 1 { &mut out } else { &mut err }) = Some(buf);
        }
    }
}

/// Parses a token server's JSON answer (`token` or `access_token`,
/// optional `expires_in` seconds, default 60). The token is refreshed a
/// little before it expires: at 90% of its lifetime, and at least 5 s
/// early for long-lived ones.
pub fn parse_token_response(body: &[u8], fetched_at: Instant) -> Result<Token, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("token response is not JSON: {e}"))?;
    let value = ["token", "access_token"]
        .iter()
        .filter_map(|k| doc.get(*k).and_then(|v| v.as_str()))
        .find(|v| !v.is_empty())
        .ok_or("token response has no token")?;
    let header_safe = value
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b',' && b != b'"');
    if !header_safe {
        return Err("token contains characters not allowed in a header".into());
    }
    let lifetime = match doc.get("expires_in").and_then(|v| v.as_u64()) {
        Some(s) if s > 0 => s,
        _ => 60,
    };
    let lifetime = Duration::from_secs(lifetime.min(24 * 3600));
    let early = (lifetime / 10)
        .max(Duration::from_secs(5))
        .min(lifetime / 2);
    Ok(Token {
        value: value.to_owned(),
        refresh_at: fetched_at + lifetime - early,
    })
}

/// Percent-encodes a query component (everything but RFC 3986
/// unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        }
    }

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let h = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenges(h),
            vec![bearer(
                "https://auth.example.com/token",
                Some("registry.example.com"),
                Some("repository:a/b:pull,push")
            )]
        );
    }

    #[test]
    fn challenge_spacing_case_escapes_and_tokens() {
        let h = r#"bearer  Realm = "https://a/t?x=\"1\"" , service=reg ,error="invalid_token""#;
        assert_eq!(
            parse_challenges(h),
            vec![bearer("https://a/t?x=\"1\"", Some("reg"), None)]
        );
    }

    #[test]
    fn several_challenges_and_unknown_schemes() {
        let h = r#"Negotiate, Basic realm="Registry Realm", Bearer realm="https://t/x",scope="s""#;
        assert_eq!(
            parse_challenges(h),
            vec![Challenge::Basic, bearer("https://t/x", None, Some("s"))]
        );
    }

    #[test]
    fn bad_challenges_yield_nothing() {
        for h in [
            "",
            "Bearer",
            "Bearer service=\"x\"",
            "====",
            "\"unterminated",
        ] {
            assert_eq!(parse_challenges(h), vec![], "{h:?}");
        }
        // An unterminated quoted value still parses what it can.
        assert_eq!(
            parse_challenges("Bearer realm=\"https://t"),
            vec![bearer("https://t", None, None)]
        );
    }

    #[test]
    fn docker_config_auth_field() {
        let auth = STANDARD.encode("alice:s3:cret");
        let json = format!(r#"{{"auths":{{"reg.example:5000":{{"auth":"{auth}"}}}}}}"#);
        let c = docker_config_credentials(json.as_bytes(), "reg.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("alice", "s3:cret"));
        assert_eq!(
            docker_config_credentials(json.as_bytes(), "other.example").unwrap(),
            None
        );
    }

    #[test]
    fn docker_config_url_keys_fields_and_hub_alias() {
        let json = br#"{"auths":{
            "https://reg.example/v1/":{"username":"bob","password":"pw"},
            "https://index.docker.io/v1/":{"auth":"aHViOmh1YnB3"}}}"#;
        let c = docker_config_credentials(json, "reg.example")
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "pw"));
        let c = docker_config_credentials(json, "registry-1.docker.io")
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("hub", "hubpw"));
    }

    #[test]
    fn docker_config_errors_do_not_leak() {
        assert_eq!(docker_config_credentials(b"{}", "h").unwrap(), None);
        assert_eq!(
            docker_config_credentials(br#"{"auths":{"h":{}}}"#, "h").unwrap(),
            None
        );
        assert!(docker_config_credentials(b"not json", "h").is_err());
        let no_colon = STANDARD.encode("secretpassword");
        let json = format!(r#"{{"auths":{{"h":{{"auth":"{no_colon}"}}}}}}"#);
        let e = docker_config_credentials(json.as_bytes(), "h").unwrap_err();
        assert!(
            !e.contains("secretpassword") && !e.contains(&no_colon),
            "{e}"
        );
        let e = docker_config_credentials(br#"{"auths":{"h":{"auth":"!!"}}}"#, "h").unwrap_err();
        assert!(e.contains("base64"), "{e}");
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn credential_priority_flags_env_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            br#"{"auths":{"h":{"username":"file","password":"f"}}}"#,
        )
        .unwrap();
        let mut opts = BackendOptions {
            docker_config: Some(cfg.clone()),
            ..BackendOptions::default()
        };
        let env = env_of(&[
            ("RAFS_REGISTRY_USER", "env"),
            ("RAFS_REGISTRY_PASSWORD", "e"),
        ]);
        let no_env = env_of(&[]);
        let user = |c: Option<Credentials>| c.map(|c| c.user);
        assert_eq!(
            user(resolve_with("h", &opts, &no_env).unwrap()),
            Some("file".into())
        );
        assert_eq!(
            user(resolve_with("h", &opts, &env).unwrap()),
            Some("env".into())
        );
        opts.registry_user = Some("flag".into());
        opts.registry_password = Some("p".into());
        assert_eq!(
            user(resolve_with("h", &opts, &env).unwrap()),
            Some("flag".into())
        );
        // A user without a password is a configuration error.
        opts.registry_password = None;
        assert!(matches!(
            resolve_with("h", &opts, &no_env),
            Err(BackendError::Config(_))
        ));
        // A missing explicit config is an error, a missing default one is not.
        let opts = BackendOptions {
            docker_config: Some(dir.path().join("nope.json")),
            ..BackendOptions::default()
        };
        assert!(resolve_with("h", &opts, &no_env).is_err());
        let home = env_of(&[("HOME", "/nonexistent-rafs-home")]);
        assert_eq!(
            resolve_with("h", &BackendOptions::default(), &home).unwrap(),
            None
        );
    }

    /// A temp dir holding `docker-credential-<name>` scripts, and an env
    /// whose PATH is that dir then the system's.
    struct Helpers(tempfile::TempDir);

    impl Helpers {
        fn new() -> Helpers {
            Helpers(tempfile::tempdir().unwrap())
        }
        fn add(&self, name: &str, body: &str) {
            use std::os::unix::fs::PermissionsExt;
            let p = self.0.path().join(format!("docker-credential-{name}"));
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        fn env(&self) -> impl Fn(&str) -> Option<String> {
            let path = format!("{}:/usr/bin:/bin", self.0.path().display());
            move |k| (k == "PATH").then(|| path.clone())
        }
        /// A helper answering `user` and the host it was asked for.
        fn answering(&self, name: &str, user: &str) {
            self.add(
                name,
                &format!(r#"read -r host; printf '{{"ServerURL":"%s","Username":"{user}","Secret":"%s"}}' "$host" "$host""#),
            );
        }
    }

    #[test]
    fn helper_replies() {
        let c =
            parse_helper_reply("x", br#"{"ServerURL":"h","Username":"u","Secret":"s"}"#).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "s"));
        let e =
            parse_helper_reply("x", br#"{"Username":"<token>","Secret":"rt-secret"}"#).unwrap_err();
        assert!(matches!(e, HelperError::IdentityToken { .. }));
        assert!(!e.to_string().contains("rt-secret"));
        for bad in [
            &b"nope"[..],
            b"{}",
            br#"{"Username":"u"}"#,
            br#"{"Username":"","Secret":""}"#,
        ] {
            let e = parse_helper_reply("x", bad).unwrap_err();
            assert!(matches!(e, HelperError::BadReply { .. }), "{e}");
            assert!(e.to_string().contains("docker-credential-x"), "{e}");
        }
    }

    #[test]
    fn which_helper_a_config_names() {
        let json = br#"{"credHelpers":{"reg.a":"ecr-login","https://reg.b/v1/":"b"},
            "credsStore":"desktop","auths":{"reg.a":{"auth":"dTpw"}}}"#;
        let h = |host: &str| docker_config_helper(json, host).unwrap();
        assert_eq!(h("reg.a"), Some(("ecr-login".into(), "reg.a".into())));
        assert_eq!(h("reg.b"), Some(("b".into(), "reg.b".into())));
        assert_eq!(h("reg.c"), Some(("desktop".into(), "reg.c".into())));
        assert_eq!(
            h("docker.io"),
            Some(("desktop".into(), "https://index.docker.io/v1/".into()))
        );
        let auths_only = br#"{"credsStore":"","auths":{}}"#;
        assert_eq!(docker_config_helper(auths_only, "reg.a").unwrap(), None);
        assert!(docker_config_helper(br#"{"credsStore":3}"#, "h").is_err());
        assert!(docker_config_helper(br#"{"credHelpers":{"h":1}}"#, "h").is_err());
    }

    #[test]
    fn helper_precedence_over_auths_and_under_flags() {
        let helpers = Helpers::new();
        helpers.answering("one", "from-one");
        helpers.answering("store", "from-store");
        helpers.add(
            "empty",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        let opts = BackendOptions {
            docker_config: Some(cfg.clone()),
            ..BackendOptions::default()
        };
        let env = helpers.env();
        let get = |host: &str| {
            resolve_with(host, &opts, &env)
                .unwrap()
                .map(|c| (c.user, c.password))
        };
        let auths = r#""auths":{"h1":{"username":"file","password":"f"},"h2":{"username":"file","password":"f"}}"#;
        std::fs::write(
            &cfg,
            format!(r#"{{"credHelpers":{{"h1":"one"}},"credsStore":"store",{auths}}}"#),
        )
        .unwrap();
        assert_eq!(get("h1"), Some(("from-one".into(), "h1".into())));
        assert_eq!(get("h2"), Some(("from-store".into(), "h2".into())));
        // A store that has nothing hides `auths` (as docker does).
        std::fs::write(&cfg, format!(r#"{{"credsStore":"empty",{auths}}}"#)).unwrap();
        assert_eq!(get("h1"), None);
        std::fs::write(&cfg, format!(r#"{{{auths}}}"#)).unwrap();
        assert_eq!(get("h1"), Some(("file".into(), "f".into())));
        // Flags win over every helper, which is then not run.
        std::fs::write(&cfg, r#"{"credsStore":"missing"}"#).unwrap();
        assert!(
            matches!(resolve_with("h1", &opts, &env), Err(BackendError::Config(m)) if m.contains("docker-credential-missing"))
        );
        let flags = BackendOptions {
            registry_user: Some("flag".into()),
            registry_password: Some("p".into()),
            ..opts.clone()
        };
        assert_eq!(
            resolve_with("h1", &flags, &env).unwrap().unwrap().user,
            "flag"
        );
    }

    #[test]
    fn failing_helpers_are_typed_errors() {
        let helpers = Helpers::new();
        let env = helpers.env();
        let run = |name: &str, t: u64| run_helper(name, "h", &env, Duration::from_millis(t));
        helpers.add("broken", "echo 'keychain locked' >&2; exit 3");
        let e = run("broken", 10_000).unwrap_err();
        assert!(
            matches!(&e, HelperError::Failed { message, .. } if message == "keychain locked"),
            "{e}"
        );
        assert!(e.to_string().contains("docker-credential-broken"), "{e}");
        helpers.add("hang", "exec sleep 600");
        let started = Instant::now();
        let e = run("hang", 300).unwrap_err();
        assert!(matches!(e, HelperError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
        // A child that keeps stdout open after the helper exited.
        helpers.add("orphan", "sleep 600 &\necho '{}'");
        assert!(matches!(
            run("orphan", 300),
            Err(HelperError::Timeout { .. })
        ));
        helpers.add("chatty", "head -c 200000 /dev/zero");
        assert!(matches!(
            run("chatty", 10_000),
            Err(HelperError::TooMuchOutput { .. })
        ));
        assert!(matches!(
            run("absent", 10_000),
            Err(HelperError::NotFound { .. })
        ));
        assert!(matches!(
            run("../x", 10_000),
            Err(HelperError::BadName { .. })
        ));
        helpers.add(
            "quiet",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(run("quiet", 10_000).unwrap(), None);
        helpers.add("tok", r#"echo '{"Username":"<token>","Secret":"x"}'"#);
        assert!(matches!(
            run("tok", 10_000),
            Err(HelperError::IdentityToken { .. })
        ));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let t = parse_token_response(br#"{"token":"tok-secret"}"#, Instant::now()).unwrap();
        assert!(!format!("{t:?}").contains("tok-secret"));
    }

    #[test]
    fn token_responses() {
        let now = Instant::now();
        let t = parse_token_response(br#"{"access_token":"a","expires_in":300}"#, now).unwrap();
        assert_eq!(t.value, "a");
        assert_eq!(t.refresh_at, now + Duration::from_secs(270));
        let t = parse_token_response(br#"{"token":"t","access_token":"a"}"#, now).unwrap();
        assert_eq!(t.value, "t");
        assert_eq!(t.refresh_at, now + Duration::from_secs(54));
        let t = parse_token_response(br#"{"token":"t","expires_in":2}"#, now).unwrap();
        assert_eq!(t.refresh_at, now + Duration::from_secs(1));
        for bad in [
            &b"{}"[..],
            b"[]",
            b"{\"token\":\"\"}",
            b"{\"token\":\"a b\"}",
            b"x",
        ] {
            assert!(parse_token_response(bad, now).is_err());
        }
    }

    #[test]
    fn query_escaping() {
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(query_escape("a-b_c.d~"), "a-b_c.d~");
    }
}
