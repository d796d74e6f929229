//! The network backends over TLS: a `docker-registry` serving HTTPS with a
//! self-signed certificate made at test time. With `--ca-cert` push,
//! prefetch and pull work and every byte verifies; without it they fail
//! with a certificate error, promptly; a mount over HTTPS reads the tree
//! back; a bad `--ca-cert` file is a configuration error. Over TLS the
//! client speaks HTTP/2: many concurrent range requests share one
//! connection.
//!
//! Fails (not skips) without `docker-registry`, `openssl` or FUSE:
//! `.ci/run` installs them.

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

/// `docker://HOST:PORT/REPO:v1` on `registry`.
fn docker_reference(registry: &Registry) -> String {
    let url = registry.url();
    let host = url.trim_start_matches("registry://").split('/').next();
    format!("docker://{}/{REPO}:v1", host.unwrap())
}

/// `rafs push` of `out` to `registry` with its certificate trusted;
/// returns the certificate's path.
fn push_trusted(registry: &Registry, out: &Path) -> std::path::PathBuf {
    let cert = registry
        .cert
        .clone()
        .expect("a TLS registry has a certificate");
    let reference = docker_reference(registry);
    common::rafs(args![
        "push",
        out,
        &reference,
        "--no-progress",
        "--ca-cert",
        &cert
    ])
    .ok();
    cert
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
    let reference = docker_reference(&registry);

    // Not trusted: a certificate error, and no hang.
    let t0 = Instant::now();
    let refused = common::rafs(args!["push", &out, &reference, "--no-progress"]);
    assert!(!refused.status.success(), "{}", refused.all_output());
    let msg = refused.all_output().to_lowercase();
    assert!(msg.contains("certificate"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(30));

    // Trusted: push, then prefetch everything through the backend.
    push_trusted(&registry, &out);
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

#[test]
fn a_mount_over_https_with_the_ca_cert_reads_the_tree_back() {
    use common::compare::{assert_same_tree, exclude_none};
    let work = common::tempdir();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"rafs\n").unwrap();
    std::fs::write(src.join("big.bin"), common::oci::noise(3 << 20, 7)).unwrap();
    let out = work.path().join("out");
    common::create(&src, &out, &[]);
    let registry = Registry::start_tls(RegistryAuth::Anonymous);
    let cert = push_trusted(&registry, &out);
    let opts: Vec<std::ffi::OsString> = args!["--backend", registry.url(), "--ca-cert", &cert];
    let mnt = common::mount::Mounted::with_options(
        &out.join("bootstrap"),
        &work.path().join("mnt"),
        &opts,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Every byte came over TLS and verified.
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
}

#[test]
fn a_bad_ca_cert_file_is_a_configuration_error() {
    let work = common::tempdir();
    let out = image(work.path());
    let registry = Registry::start_tls(RegistryAuth::Anonymous);
    let prefetch = |ca: &Path| {
        let r = common::rafs(args![
            "prefetch",
            out.join("bootstrap"),
            "--all",
            "--no-progress",
            "--backend",
            registry.url(),
            "--cache-dir",
            work.path().join("cache"),
            "--ca-cert",
            ca
        ]);
        assert!(!r.status.success(), "{}", r.all_output());
        r.all_output()
    };
    let missing = work.path().join("missing.pem");
    let msg = prefetch(&missing);
    assert!(
        msg.contains("--ca-cert") && msg.contains("missing.pem"),
        "{msg}"
    );
    let junk = work.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let msg = prefetch(&junk);
    assert!(
        msg.contains("--ca-cert") && msg.contains("no PEM certificate"),
        "{msg}"
    );
}

#[test]
fn a_plain_http_front_redirecting_to_https_is_verified_on_the_https_hop() {
    use common::httpd::{Httpd, Response};
    use rafs::backend::url::BackendUrl;
    use rafs::backend::{BackendOptions, BlobId};
    let work = common::tempdir();
    let out = image(work.path());
    let registry = Registry::start_tls(RegistryAuth::Anonymous);
    let cert = push_trusted(&registry, &out);
    let blob = std::fs::read_dir(out.join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&blob).unwrap();
    let hex = blob.file_name().unwrap().to_str().unwrap().to_owned();
    let id = BlobId::from_hex(&hex).unwrap();
    let url = registry.url();
    let host = url
        .trim_start_matches("registry://")
        .split('/')
        .next()
        .unwrap();
    let storage = format!("https://{host}/v2/{REPO}/blobs/sha256:");
    // Plain HTTP in front (its own client, no trust store), HTTPS behind.
    let front = Httpd::start(move |req| match req.target.strip_prefix("/b/") {
        Some(h) => Response::new(307, "").with("Location", &format!("{storage}{h}")),
        None => Response::new(404, ""),
    });
    let open = |opts: &BackendOptions| {
        let url = format!("{}/b/{{blob}}", front.url());
        BackendUrl::parse(&url).unwrap().open(opts).unwrap()
    };
    let trusted = BackendOptions {
        ca_certs: vec![cert],
        ..BackendOptions::default()
    };
    assert_eq!(
        open(&trusted).read_range(&id, 7, 1000).unwrap(),
        &bytes[7..1007]
    );
    let untrusted = BackendOptions {
        request_timeout: Duration::from_secs(5),
        ..BackendOptions::default()
    };
    let e = open(&untrusted).read_range(&id, 7, 1000).unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}
