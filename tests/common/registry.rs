//! A private `docker-registry` (distribution 2.x) for the registry
//! backend's tests, in one of three setups ([`RegistryAuth`]): anonymous,
//! htpasswd Basic auth, or token auth with a [`TokenServer`] running in the
//! test process.
//!
//! The registry stores blobs under a temp dir, listens on a free loopback
//! port, and is stopped when the [`Registry`] is dropped. Token auth uses
//! an RSA key and a self-signed certificate made with the `openssl` CLI;
//! tokens are JWTs (RS256, the certificate in the `x5c` header) signed by
//! `openssl dgst`, with the claims distribution checks: `iss`, `aud` (the
//! service), `exp`/`nbf` (with its 60 s leeway), and `access`.
//! Missing binaries fail the test: CI installs `docker-registry`,
//! `apache2-utils` and `openssl`.

use super::httpd::{Httpd, Request, Response};
use super::nginx::{free_port, stop, wait_listening};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rafs::backend::BlobId;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The registry binary (Debian `docker-registry`).
pub const REGISTRY: &str = "/usr/bin/docker-registry";
/// The repository the tests use.
pub const REPO: &str = "rafs/test";
/// The service name in token setups (the tokens' audience).
pub const SERVICE: &str = "rafs-test-registry";
/// The token issuer name.
pub const ISSUER: &str = "rafs-test-issuer";

/// How the registry authenticates.
pub enum RegistryAuth {
    /// Anyone may pull and push.
    Anonymous,
    /// htpasswd with one user.
    Htpasswd {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// Tokens from an in-process token server that knows one user.
    Token(TokenPolicy),
}

/// What the test token server hands out.
#[derive(Clone)]
pub struct TokenPolicy {
    /// The user it accepts.
    pub user: String,
    /// Its password.
    pub password: String,
    /// `expires_in` of its answers, seconds.
    pub expires_in: u64,
    /// How long the registry will accept a token after it is issued, in
    /// seconds (its `exp` is set 60 s earlier, to cancel the registry's
    /// leeway).
    pub accepted_for: i64,
}

/// Signs registry tokens.
pub struct Issuer {
    key: PathBuf,
    /// The certificate, base64 DER, for `x5c`.
    x5c: String,
    /// The certificate, PEM path (the registry's `rootcertbundle`).
    pub cert: PathBuf,
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Issuer {
    /// Makes a key and a self-signed certificate in `dir`.
    pub fn new(dir: &Path) -> Issuer {
        let (key, cert) = (dir.join("token.key"), dir.join("token.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=rafs-test-token-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let pem = std::fs::read_to_string(&cert).unwrap();
        let x5c: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        Issuer { key, x5c, cert }
    }

    /// A JWT granting `actions` on `repo` to `sub`, accepted by the
    /// registry for `accepted_for` seconds.
    pub fn sign(&self, sub: &str, repo: &str, actions: &[&str], accepted_for: i64) -> String {
        let t = now();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": sub, "aud": SERVICE,
            "exp": t + accepted_for - 60, "nbf": t - 1, "iat": t,
            "jti": format!("{t}-{}", JTI.fetch_add(1, Ordering::SeqCst)),
            "access": [{"type": "repository", "name": repo, "actions": actions}],
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signed.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst: {out:?}");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
    }
}

static JTI: AtomicUsize = AtomicUsize::new(0);

/// The test's token server.
pub struct TokenServer {
    /// The HTTP server (its requests are recorded).
    pub httpd: Httpd,
    /// Tokens handed out.
    pub issued: Arc<AtomicUsize>,
    /// The issuer, for tokens the test signs itself (pushes).
    pub issuer: Arc<Issuer>,
    /// The policy, changeable while running.
    pub policy: Arc<Mutex<TokenPolicy>>,
}

impl TokenServer {
    fn start(issuer: Issuer, policy: TokenPolicy) -> TokenServer {
        let issuer = Arc::new(issuer);
        let policy = Arc::new(Mutex::new(policy));
        let issued = Arc::new(AtomicUsize::new(0));
        let (iss, pol, count) = (issuer.clone(), policy.clone(), issued.clone());
        let httpd = Httpd::start(move |req: &Request| {
            let p = pol.lock().unwrap().clone();
            let want = format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", p.user, p.password))
            );
            if req.header("authorization") != Some(want.as_str()) {
                return Response::new(401, r#"{"details":"bad credentials"}"#);
            }
            count.fetch_add(1, Ordering::SeqCst);
            let token = iss.sign(&p.user, REPO, &["pull"], p.accepted_for);
            let body = serde_json::json!({"token": token, "expires_in": p.expires_in});
            Response::new(200, body.to_string()).with("Content-Type", "application/json")
        });
        TokenServer {
            httpd,
            issued,
            issuer,
            policy,
        }
    }
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:port`.
    pub host: String,
    /// The token server, in the token setup.
    pub tokens: Option<TokenServer>,
    push_auth: Option<String>,
    /// The self-signed certificate of an HTTPS registry ([`Registry::start_tls`]).
    pub cert: Option<PathBuf>,
    child: Child,
    dir: tempfile::TempDir,
}

fn auth_yaml(auth: &RegistryAuth, dir: &Path) -> (String, Option<TokenServer>, Option<String>) {
    match auth {
        RegistryAuth::Anonymous => (String::new(), None, None),
        RegistryAuth::Htpasswd { user, password } => {
            let line = run(Command::new("htpasswd").args(["-Bbn", user, password]));
            let path = dir.join("htpasswd");
            std::fs::write(&path, line).unwrap();
            let yaml = format!(
                "auth:\n  htpasswd:\n    realm: rafs-test\n    path: {}\n",
                path.display()
            );
            let basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
            (yaml, None, Some(basic))
        }
        RegistryAuth::Token(policy) => {
            let issuer = Issuer::new(dir);
            let push = format!(
                "Bearer {}",
                issuer.sign("pusher", REPO, &["pull", "push"], 600)
            );
            let cert = issuer.cert.clone();
            let server = TokenServer::start(issuer, policy.clone());
            let yaml = format!(
                "auth:\n  token:\n    realm: {}/token\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {}\n",
                server.httpd.url(),
                cert.display()
            );
            (yaml, Some(server), Some(push))
        }
    }
}

/// A key and a self-signed certificate for 127.0.0.1 in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        // An end-entity certificate (webpki refuses a CA one as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

impl Registry {
    /// Starts a registry with `auth`.
    pub fn start(auth: RegistryAuth) -> Registry {
        Registry::spawn(auth, false)
    }

    /// Starts a registry with `auth` serving HTTPS (and so HTTP/2) with a
    /// self-signed certificate for 127.0.0.1 ([`Registry::cert`], made by
    /// the `openssl` CLI).
    pub fn start_tls(auth: RegistryAuth) -> Registry {
        Registry::spawn(auth, true)
    }

    fn spawn(auth: RegistryAuth, tls: bool) -> Registry {
        assert!(
            Path::new(REGISTRY).exists(),
            "{REGISTRY} is missing: apt-get install docker-registry"
        );
        let dir = crate::common::tempdir();
        let port = free_port();
        let (auth_yaml, tokens, push_auth) = auth_yaml(&auth, dir.path());
        let cert = tls.then(|| self_signed(dir.path()));
        let tls_yaml = match &cert {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let conf = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}/data\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: rafs-test-secret\n{tls_yaml}{auth_yaml}",
            dir.path().display()
        );
        let conf_path = dir.path().join("config.yml");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("registry.log");
        let mut child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {REGISTRY}: {e}"));
        let host = format!("127.0.0.1:{port}");
        wait_listening(&host, &mut child, &log, Duration::from_secs(20));
        Registry {
            host,
            tokens,
            push_auth,
            cert: cert.map(|(c, _)| c),
            child,
            dir,
        }
    }

    /// The backend URL of [`REPO`].
    pub fn url(&self) -> String {
        match self.cert {
            Some(_) => format!("registry://{}/{REPO}", self.host),
            None => format!("registry+http://{}/{REPO}", self.host),
        }
    }

    /// Requests (log lines) whose line contains `what`, from log line
    /// `since` on, and the distinct client connections (remote address and
    /// port) they came over.
    pub fn connections(&self, what: &str, since: usize) -> (usize, usize) {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .skip(since)
            .filter(|l| l.contains(what))
            .collect();
        let mut peers: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split("http.request.remoteaddr=").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .collect();
        peers.sort_unstable();
        peers.dedup();
        (lines.len(), peers.len())
    }

    /// The registry's log so far.
    /// The file the registry stores blob `digest` (`sha256:<hex>`) in.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Blob upload sessions started so far (POSTs to `/blobs/uploads/`).
    pub fn upload_posts(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("http.request.method=POST") && l.contains("/blobs/uploads/"))
            .count()
    }

    /// Uploads `bytes` as blob `id` of [`REPO`] (monolithic upload: POST
    /// to start, PUT with the digest), with push credentials.
    pub fn push(&self, id: &BlobId, bytes: &[u8]) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let base = format!("http://{}", self.host);
        let mut post = agent.post(format!("{base}/v2/{REPO}/blobs/uploads/"));
        if let Some(h) = &self.push_auth {
            post = post.header("Authorization", h);
        }
        let resp = post.send_empty().unwrap();
        assert_eq!(resp.status(), 202, "start upload:\n{}", self.log());
        let loc = resp.headers()["location"].to_str().unwrap().to_owned();
        let loc = if loc.starts_with('/') {
            format!("{base}{loc}")
        } else {
            loc
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let mut put = agent
            .put(format!("{loc}{sep}digest=sha256:{}", id.to_hex()))
            .header("Content-Type", "application/octet-stream");
        if let Some(h) = &self.push_auth {
            put = put.header("Authorization", h);
        }
        let resp = put.send(bytes).unwrap();
        assert_eq!(resp.status(), 201, "finish upload:\n{}", self.log());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The token server's requests whose `scope` asked for `repository:<repo>:pull`.
pub fn pull_scope_requests(server: &TokenServer) -> usize {
    let want = format!("scope=repository%3A{}%3Apull", REPO.replace('/', "%2F"));
    server
        .httpd
        .seen()
        .iter()
        .filter(|r| r.target.contains(&want) && r.target.contains("service="))
        .count()
}
