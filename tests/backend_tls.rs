//! The network backends over TLS: a `docker-registry` serving HTTPS with a
//! self-signed certificate made at test time. With `--ca-cert` push,
//! prefetch and pull work and every byte verifies; without it they fail
//! with a certificate error, promptly. Over TLS the client speaks HTTP/2:
//! many concurrent range requests share one connection.
//!
//! Fails (not skips) without `docker-registry` or `openssl`: `.ci/run`
//! installs them.

#[macro_use]
mod common;

use common::registry::{Registry, RegistryAuth, REPO};
use std::path::Path;
use std::time::{Duration, Instant};

/// A tree of 4 MiB of incompressible data in 64 KiB chunks, unbatched:
/// 64 frames, so a prefetch makes many range requests.
fn image(work: &Path) -> std::path::PathBuf {
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        std::fs::write(src.join(format!("f{i}")), common::oci::noise(1 << 20, i)).unwrap();
    }
    let out = work.join("out");
    let extra = ["--chunk-size", "64K", "--batch-size", "0"];
    common::create(&src, &out, &extra);
    out
}

#[test]
fn tls_registry_needs_the_ca_and_speaks_http2() {
    let work = common::tempdir();
    let out = image(work.path());
    let registry = Registry::start_tls(RegistryAuth::Anonymous);
    let cert = registry
        .cert
        .clone()
        .expect("a TLS registry has a certificate");
    let host = registry.url();
    let host = host
        .trim_start_matches("registry://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let reference = format!("docker://{host}/{REPO}:v1");

    // Not trusted: a certificate error, and no hang.
    let t0 = Instant::now();
    let refused = common::rafs(args!["push", &out, &reference, "--no-progress"]);
    assert!(!refused.status.success(), "{}", refused.all_output());
    let msg = refused.all_output().to_lowercase();
    assert!(msg.contains("certificate"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(30));

    // Trusted: push, then prefetch everything through the backend.
    common::rafs(args![
        "push",
        &out,
        &reference,
        "--no-progress",
        "--ca-cert",
        &cert
    ])
    .ok();
    let bootstrap = out.join("bootstrap");
    // `rafs prefetch --all` of the image into `cache`, with `extra` flags.
    let prefetch = |cache: &str, extra: &[&str]| {
        let mut a = args![
            "prefetch",
            &bootstrap,
            "--all",
            "--no-progress",
            "--backend",
            registry.url(),
            "--cache-dir",
            work.path().join(cache)
        ];
        a.extend(extra.iter().map(std::ffi::OsString::from));
        common::rafs(a)
    };
    let since = registry.log().lines().count();
    let cert_arg = cert.to_str().unwrap();
    let many = ["--prefetch-threads", "4", "--max-request-size", "64K"];
    prefetch("cache", &[&["--ca-cert", cert_arg][..], &many[..]].concat()).ok();
    let cache = work.path().join("cache");
    common::rafs(args!["cache", "verify", &cache, "--bootstrap", &bootstrap]).ok();

    // HTTP/2: the prefetch's concurrent range requests used one connection
    // (HTTP/1.1 would have opened one per request in flight).
    let (gets, peers) = registry.connections("/blobs/sha256:", since);
    assert!(gets >= 32, "{gets} blob requests");
    assert_eq!(peers, 1, "{gets} blob requests over {peers} connections");

    // The same without the certificate: refused by the client.
    let r = prefetch("cache2", &["--request-timeout", "5s"]);
    assert!(!r.status.success(), "{}", r.all_output());
    assert!(r.all_output().to_lowercase().contains("certificate"));
}
