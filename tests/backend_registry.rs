//! The registry backend against a real `docker-registry`: anonymous,
//! htpasswd Basic auth and token auth (the conformance suite with the
//! right credentials, `Auth` errors with wrong ones), token caching and
//! refresh (on a manual clock), credentials from a docker `config.json`,
//! redirects that must not carry the registry's `Authorization` to the
//! storage, and token realms on other hosts that must not get the
//! credentials unless allowed.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::conformance::{check_backend, check_denied, fixture, Fixture};
use common::httpd::{range_response, Httpd, Response};
use common::registry::{pull_scope_requests, Registry, RegistryAuth, TokenPolicy, REPO};
use rafs::backend::registry::auth::ManualClock;
use rafs::backend::registry::RegistryBackend;
use rafs::backend::url::BackendUrl;
use rafs::backend::{Backend, BackendError, BackendOptions, BlobId};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Options with the given credentials and an empty docker config (so the
/// machine's own `~/.docker/config.json` cannot interfere).
fn opts(dir: &tempfile::TempDir, creds: Option<(&str, &str)>) -> BackendOptions {
    let cfg: PathBuf = dir.path().join("empty-config.json");
    std::fs::write(&cfg, "{}").unwrap();
    BackendOptions {
        registry_user: creds.map(|c| c.0.to_owned()),
        registry_password: creds.map(|c| c.1.to_owned()),
        docker_config: Some(cfg),
        ..BackendOptions::default()
    }
}

/// [`opts`] that also let the token server of `reg` (on another loopback
/// port) receive the credentials.
fn token_opts(
    dir: &tempfile::TempDir,
    creds: Option<(&str, &str)>,
    reg: &Registry,
) -> BackendOptions {
    BackendOptions {
        registry_token_realms: vec![reg.tokens.as_ref().unwrap().httpd.url()],
        ..opts(dir, creds)
    }
}

fn open(url: &str, opts: &BackendOptions) -> Arc<dyn Backend> {
    BackendUrl::parse(url).unwrap().open(opts).unwrap()
}

fn start_with_blobs(auth: RegistryAuth, fx: &Fixture) -> Registry {
    let reg = Registry::start(auth);
    for (id, bytes) in &fx.blobs {
        reg.push(id, bytes);
    }
    reg
}

fn token_policy(expires_in: u64, accepted_for: i64) -> TokenPolicy {
    TokenPolicy {
        user: "tok".into(),
        password: "tok-pass".into(),
        expires_in,
        accepted_for,
    }
}

#[test]
fn anonymous_registry_conforms() {
    let fx = fixture();
    let reg = start_with_blobs(RegistryAuth::Anonymous, &fx);
    let dir = common::tempdir();
    check_backend(open(&reg.url(), &opts(&dir, None)).as_ref(), &fx);
}

#[test]
fn htpasswd_registry_conforms_and_refuses_wrong_or_no_credentials() {
    let fx = fixture();
    let auth = RegistryAuth::Htpasswd {
        user: "alice".into(),
        password: "wonderland".into(),
    };
    let reg = start_with_blobs(auth, &fx);
    let dir = common::tempdir();
    let good = open(&reg.url(), &opts(&dir, Some(("alice", "wonderland"))));
    check_backend(good.as_ref(), &fx);
    check_denied(
        open(&reg.url(), &opts(&dir, Some(("alice", "nope")))).as_ref(),
        &fx,
    );
    check_denied(open(&reg.url(), &opts(&dir, None)).as_ref(), &fx);
}

#[test]
fn credentials_come_from_docker_config() {
    let fx = fixture();
    let auth = RegistryAuth::Htpasswd {
        user: "carol".into(),
        password: "from-config".into(),
    };
    let reg = start_with_blobs(auth, &fx);
    let dir = common::tempdir();
    let cfg = dir.path().join("config.json");
    let entry = STANDARD.encode("carol:from-config");
    let json = format!(r#"{{"auths":{{"{}":{{"auth":"{entry}"}}}}}}"#, reg.host);
    std::fs::write(&cfg, json).unwrap();
    let o = BackendOptions {
        docker_config: Some(cfg),
        ..BackendOptions::default()
    };
    let (id, bytes) = &fx.blobs[1];
    assert_eq!(
        open(&reg.url(), &o).read_range(id, 3, 5).unwrap(),
        &bytes[3..8]
    );
}

#[test]
fn token_registry_conforms_caches_the_token_and_refuses_wrong_credentials() {
    let fx = fixture();
    let reg = start_with_blobs(RegistryAuth::Token(token_policy(300, 600)), &fx);
    let tokens = reg.tokens.as_ref().unwrap();
    let dir = common::tempdir();
    let good = open(
        &reg.url(),
        &token_opts(&dir, Some(("tok", "tok-pass")), &reg),
    );
    check_backend(good.as_ref(), &fx);
    // One token for the whole suite (eight concurrent readers included),
    // asked for with the registry's service and the pull scope.
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1, "{}", reg.log());
    assert_eq!(pull_scope_requests(tokens), 1);

    check_denied(
        open(&reg.url(), &token_opts(&dir, Some(("tok", "bad")), &reg)).as_ref(),
        &fx,
    );
    check_denied(
        open(&reg.url(), &token_opts(&dir, None, &reg)).as_ref(),
        &fx,
    );
    // Right credentials, but the token server is on another port and not
    // allowed: it is asked anonymously, and refuses.
    check_denied(
        open(&reg.url(), &opts(&dir, Some(("tok", "tok-pass")))).as_ref(),
        &fx,
    );
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1);
}

#[test]
fn token_is_refreshed_before_it_expires() {
    let fx = fixture();
    let reg = start_with_blobs(RegistryAuth::Token(token_policy(300, 600)), &fx);
    let tokens = reg.tokens.as_ref().unwrap();
    let dir = common::tempdir();
    let clock = Arc::new(ManualClock::default());
    let o = token_opts(&dir, Some(("tok", "tok-pass")), &reg);
    let b = RegistryBackend::open(false, &reg.host, REPO, &o)
        .unwrap()
        .with_clock(clock.clone());
    let (id, bytes) = &fx.blobs[1];
    assert_eq!(b.read_range(id, 0, 10).unwrap(), &bytes[..10]);
    assert_eq!(b.read_range(id, 10, 10).unwrap(), &bytes[10..20]);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1);
    // expires_in 300 s: used until 270 s (90%), refreshed after, before
    // the registry would see it expire.
    clock.advance(Duration::from_secs(269));
    assert_eq!(b.read_range(id, 20, 10).unwrap(), &bytes[20..30]);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(2));
    assert_eq!(b.read_range(id, 30, 10).unwrap(), &bytes[30..40]);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 2, "{}", reg.log());
    assert_eq!(b.read_range(id, 40, 10).unwrap(), &bytes[40..50]);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 2);
}

/// A registry (blob `id` = `bytes`) whose token server is the same
/// server's `/token` (`same_host`) or `realm`, and that accepts only the
/// newest token issued, `tok-<n>` (so the test can revoke one by having
/// another issued). Returns the server and the count of tokens issued.
fn fake_token_registry(
    id: BlobId,
    bytes: Vec<u8>,
    realm: Option<String>,
) -> (Httpd, Arc<AtomicUsize>) {
    let issued = Arc::new(AtomicUsize::new(0));
    let n = issued.clone();
    let realm_url = Arc::new(std::sync::Mutex::new(realm));
    let blob_path = format!("/v2/{REPO}/blobs/sha256:{}", id.to_hex());
    let server = Httpd::start(move |req| {
        if req.target.starts_with("/token") {
            let t = n.fetch_add(1, Ordering::SeqCst) + 1;
            return Response::new(200, format!(r#"{{"token":"tok-{t}","expires_in":300}}"#));
        }
        let want = format!("Bearer tok-{}", n.load(Ordering::SeqCst));
        if req.header("authorization") == Some(want.as_str()) && req.target == blob_path {
            return range_response(req, &bytes);
        }
        let realm = realm_url.lock().unwrap().clone();
        let realm =
            realm.unwrap_or_else(|| format!("http://{}/token", req.header("host").unwrap()));
        let challenge = format!(
            r#"Bearer realm="{realm}",service="fake",scope="repository:{REPO}:pull",error="invalid_token""#
        );
        Response::new(401, "").with("WWW-Authenticate", &challenge)
    });
    (server, issued)
}

#[test]
fn token_refused_by_the_registry_is_fetched_again() {
    let fx = fixture();
    let (id, bytes) = fx.blobs[2].clone();
    let (server, issued) = fake_token_registry(id, bytes.clone(), None);
    let dir = common::tempdir();
    let url = format!("registry+http://{}/{REPO}", server.addr);
    let b = open(&url, &opts(&dir, Some(("tok", "tok-pass"))));
    assert_eq!(b.read_range(&id, 0, 10).unwrap(), &bytes[..10]);
    assert_eq!(issued.load(Ordering::SeqCst), 1);
    // The registry stops accepting tok-1 (another token is issued behind
    // the backend's back): still valid by its expiry, the backend's token
    // gets a 401 and must be fetched again.
    issued.fetch_add(1, Ordering::SeqCst);
    assert_eq!(b.read_range(&id, 100, 10).unwrap(), &bytes[100..110]);
    assert_eq!(issued.load(Ordering::SeqCst), 3);
}

#[test]
fn token_realm_on_another_host_gets_credentials_only_if_allowed() {
    let fx = fixture();
    let (id, bytes) = fx.blobs[1].clone();
    let basic = format!("Basic {}", STANDARD.encode("tok:tok-pass"));
    // Same host: the realm is the registry's own /token.
    let (same, _) = fake_token_registry(id, bytes.clone(), None);
    let dir = common::tempdir();
    let creds = Some(("tok", "tok-pass"));
    let b = open(
        &format!("registry+http://{}/{REPO}", same.addr),
        &opts(&dir, creds),
    );
    assert_eq!(b.read_range(&id, 0, 10).unwrap(), &bytes[..10]);
    let token_reqs: Vec<_> = same
        .seen()
        .into_iter()
        .filter(|r| r.target.starts_with("/token"))
        .collect();
    assert_eq!(token_reqs.len(), 1);
    assert_eq!(token_reqs[0].header("authorization"), Some(basic.as_str()));

    // Another loopback port: a token server that records what it gets.
    let token_server = Httpd::start(|_| Response::new(200, r#"{"token":"anon"}"#));
    let realm = format!("{}/token", token_server.url());
    let (other, _) = fake_token_registry(id, bytes.clone(), Some(realm.clone()));
    let url = format!("registry+http://{}/{REPO}", other.addr);
    // The token is refused by the registry, so the read fails: what
    // matters is what the token server was sent.
    let e = open(&url, &opts(&dir, creds))
        .read_range(&id, 0, 10)
        .unwrap_err();
    assert!(matches!(e, BackendError::Auth { .. }), "{e}");
    let seen = token_server.seen();
    assert!(!seen.is_empty(), "no token request");
    for r in &seen {
        assert_eq!(r.header("authorization"), None, "credentials leaked: {r:?}");
    }
    // Allowed with --registry-token-realm: the credentials go along.
    let allowed = BackendOptions {
        registry_token_realms: vec![token_server.url()],
        ..opts(&dir, creds)
    };
    let _ = open(&url, &allowed).read_range(&id, 0, 10);
    let seen = token_server.seen();
    assert_eq!(
        seen.last().and_then(|r| r.header("authorization")),
        Some(basic.as_str())
    );
}

#[test]
fn redirect_to_storage_does_not_forward_authorization() {
    let fx = fixture();
    let (id, bytes) = fx.blobs[2].clone();
    let data = bytes.clone();
    let storage = Httpd::start(move |req| range_response(req, &data));
    let target = format!("{}/storage/{}", storage.url(), id.to_hex());
    let want = format!("Basic {}", STANDARD.encode("dave:secret"));
    let registry = Httpd::start(move |req| match req.header("authorization") {
        Some(h) if h == want => Response::new(307, "").with("Location", &target),
        Some(_) => Response::new(401, "").with("WWW-Authenticate", r#"Basic realm="r""#),
        None => Response::new(401, "").with("WWW-Authenticate", r#"Basic realm="r""#),
    });
    let dir = common::tempdir();
    let url = format!("registry+http://{}/{REPO}", registry.addr);
    let b = open(&url, &opts(&dir, Some(("dave", "secret"))));
    assert_eq!(b.read_range(&id, 1000, 5000).unwrap(), &bytes[1000..6000]);
    assert_eq!(b.blob_size(&id).unwrap(), bytes.len() as u64);

    let reg_seen = registry.seen();
    let path = format!("/v2/{REPO}/blobs/sha256:{}", id.to_hex());
    assert!(reg_seen.iter().all(|r| r.target == path));
    assert!(reg_seen.iter().any(|r| r.header("authorization").is_some()));
    let st_seen = storage.seen();
    assert!(st_seen.len() >= 2, "{st_seen:?}");
    for r in &st_seen {
        assert_eq!(r.header("authorization"), None, "leaked to storage: {r:?}");
    }
}

#[test]
fn registry_errors_are_typed() {
    // A 401 with no challenge rafs understands stays Auth; a 5xx is a
    // transient Status.
    let server = Httpd::start(|req| {
        if req.target.contains(&"11".repeat(32)) {
            Response::new(401, "").with("WWW-Authenticate", "Negotiate")
        } else {
            Response::new(502, "bad gateway")
        }
    });
    let dir = common::tempdir();
    let url = format!("registry+http://{}/{REPO}", server.addr);
    let b = open(&url, &opts(&dir, Some(("u", "p"))));
    let e = b
        .read_range(&rafs::backend::BlobId([0x11; 32]), 0, 1)
        .unwrap_err();
    assert!(
        matches!(e, BackendError::Auth { .. }) && !e.is_transient(),
        "{e}"
    );
    let e = b
        .read_range(&rafs::backend::BlobId([0x22; 32]), 0, 1)
        .unwrap_err();
    assert!(matches!(e, BackendError::Status { status: 502, .. }) && e.is_transient());
}
