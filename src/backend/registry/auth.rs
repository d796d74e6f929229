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
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod credential_helper;
pub use credential_helper::{
    docker_config_helper, parse_helper_reply, run_helper, HelperError, HELPER_OUTPUT_LIMIT,
    HELPER_TIMEOUT,
};

/// The largest docker `config.json` read (they are a few KiB).
const CONFIG_LIMIT: u64 = 1 << 20;

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
pub(crate) fn auths_key_matches(key: &str, host: &str) -> bool {
    let bare = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let bare = bare.split('/').next().unwrap_or(bare);
    if bare.eq_ignore_ascii_case(host) {
        return true;
    }
    let exact = bare == super::DOCKER_HUB_API || super::DOCKER_HUB_NAMES.contains(&bare);
    exact && super::is_docker_hub(host)
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
