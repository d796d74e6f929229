//! The registry backend against a real `docker-registry`: anonymous,
//! htpasswd Basic auth and token auth (the conformance suite with the
//! right credentials, `Auth` errors with wrong ones), token caching and
//! refresh, credentials from a docker `config.json`, and redirects that
//! must not carry the registry's `Authorization` to the storage.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::conformance::{check_backend, check_denied, fixture, Fixture};
use common::httpd::{range_response, Httpd, Response};
use common::registry::{pull_scope_requests, Registry, RegistryAuth, TokenPolicy, REPO};
use rafs::backend::url::BackendUrl;
use rafs::backend::{Backend, BackendError, BackendOptions};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
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
    let good = open(&reg.url(), &opts(&dir, Some(("tok", "tok-pass"))));
    check_backend(good.as_ref(), &fx);
    // One token for the whole suite (eight concurrent readers included),
    // asked for with the registry's service and the pull scope.
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1, "{}", reg.log());
    assert_eq!(pull_scope_requests(tokens), 1);

    check_denied(
        open(&reg.url(), &opts(&dir, Some(("tok", "bad")))).as_ref(),
        &fx,
    );
    check_denied(open(&reg.url(), &opts(&dir, None)).as_ref(), &fx);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1);
}

#[test]
fn token_is_refreshed_before_it_expires() {
    let fx = fixture();
    let reg = start_with_blobs(RegistryAuth::Token(token_policy(4, 600)), &fx);
    let tokens = reg.tokens.as_ref().unwrap();
    let dir = common::tempdir();
    let b = open(&reg.url(), &opts(&dir, Some(("tok", "tok-pass"))));
    let (id, bytes) = &fx.blobs[1];
    assert_eq!(b.read_range(id, 0, 10).unwrap(), &bytes[..10]);
    assert_eq!(b.read_range(id, 10, 10).unwrap(), &bytes[10..20]);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 1);
    // expires_in 4 s: refreshed from 2 s on, before the registry sees it
    // expire.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(b.read_range(id, 20, 10).unwrap(), &bytes[20..30]);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 2);
}

#[test]
fn token_refused_by_the_registry_is_fetched_again() {
    let fx = fixture();
    // The token server promises 300 s but the registry stops accepting its
    // tokens after 4: the next read gets a 401 and must fetch a new one.
    let reg = start_with_blobs(RegistryAuth::Token(token_policy(300, 4)), &fx);
    let tokens = reg.tokens.as_ref().unwrap();
    let dir = common::tempdir();
    let b = open(&reg.url(), &opts(&dir, Some(("tok", "tok-pass"))));
    let (id, bytes) = &fx.blobs[2];
    assert_eq!(b.read_range(id, 0, 10).unwrap(), &bytes[..10]);
    std::thread::sleep(Duration::from_millis(5200));
    assert_eq!(b.read_range(id, 100, 10).unwrap(), &bytes[100..110]);
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 2, "{}", reg.log());
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
