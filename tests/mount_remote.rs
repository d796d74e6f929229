//! `rafs mount` over real network servers, with the disk cache: a Debian
//! rootfs image pushed to a `docker-registry` (htpasswd auth), put in
//! `s3s-fs` (SigV4) and served by `nginx`. Each mount, read through, equals
//! the rootfs; the cache then verifies clean, and (registry) serves a
//! second mount on its own after the server is gone.
//!
//! These tests FAIL (not skip) without FUSE, docker-registry, s3s-fs or
//! nginx: `.ci/run` installs them.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::mount::Mounted;
use common::nginx::Nginx;
use common::registry::{Registry, RegistryAuth};
use common::s3::{S3Server, ACCESS_KEY, REGION, SECRET_KEY};
use std::ffi::OsString;
use std::path::Path;

fn mount(bootstrap: &Path, mnt: &Path, opts: &[String]) -> Mounted {
    let opts: Vec<OsString> = opts.iter().map(OsString::from).collect();
    Mounted::with_options(bootstrap, mnt, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn stored_bytes(blobs: &Path) -> u64 {
    common::blobs_in(blobs)
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum()
}

#[test]
fn rootfs_from_registry_with_cache_equals_source_and_survives_the_registry() {
    let work = common::tempdir();
    let src = common::rootfs();
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &[]);
    let registry = Registry::start(RegistryAuth::Htpasswd {
        user: "rafs".into(),
        password: "s3cret".into(),
    });
    for (id, bytes) in common::blobs_in(&out.join("blobs")) {
        registry.push(&id, &bytes);
    }
    let cache = work.path().join("cache");
    let sock = work.path().join("api.sock");
    let mut opts: Vec<String> = vec![
        "--backend".into(),
        registry.url(),
        "--cache-dir".into(),
        cache.display().to_string(),
        "--api-socket".into(),
        sock.display().to_string(),
    ];
    let creds = ["--registry-user", "rafs", "--registry-password", "s3cret"];
    opts.extend(creds.iter().map(|s| s.to_string()));
    let mnt = mount(&bootstrap, &work.path().join("mnt"), &opts);
    // Before any read, the mount warms the backend up (a one-byte GET of a
    // blob), so the first read finds a connection and a token ready.
    let blob_gets = || {
        let log = registry.log();
        log.lines()
            .filter(|l| l.contains("method=GET") && l.contains("/blobs/sha256:"))
            .count()
    };
    let long = std::time::Duration::from_secs(20);
    common::wait_until("the warm-up request", long, || blob_gets() >= 1);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    // Single flight and the caches: reading everything fetches each stored
    // byte about once.
    let fetched = common::metric(&sock, "rafs_backend_bytes_total");
    let stored = stored_bytes(&out.join("blobs"));
    assert!(
        fetched >= 0.5 * stored as f64 && fetched <= 1.1 * stored as f64,
        "fetched {fetched} bytes for {stored} stored"
    );
    drop(mnt);
    common::rafs(args!["cache", "verify", &cache, "--bootstrap", &bootstrap]).ok();
    // The registry is gone: a second mount reads everything from the cache.
    drop(registry);
    let mnt = mount(&bootstrap, &work.path().join("mnt2"), &opts);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    assert_eq!(common::metric(&sock, "rafs_backend_bytes_total"), 0.0);
}

/// The test rootfs as an image: (source, bootstrap, blobs dir).
fn rootfs_image(work: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let src = common::rootfs();
    let out = work.join("image");
    let bootstrap = common::create(&src, &out, &[]);
    (src, bootstrap, out.join("blobs"))
}

#[test]
fn rootfs_from_s3_with_cache_equals_source() {
    let work = common::tempdir();
    let (src, bootstrap, blobs) = rootfs_image(work.path());
    let s3 = S3Server::start();
    s3.create_bucket("rafs-images");
    for (id, bytes) in common::blobs_in(&blobs) {
        s3.put("rafs-images", &format!("v1/{}", id.to_hex()), &bytes);
    }
    let endpoint = s3.endpoint.clone();
    let cache = work.path().join("cache");
    let opts: Vec<String> = [
        "--backend",
        "s3://rafs-images/v1",
        "--s3-endpoint",
        &endpoint,
        "--s3-region",
        REGION,
        "--s3-path-style",
        "--s3-access-key",
        ACCESS_KEY,
        "--s3-secret-key",
        SECRET_KEY,
        "--cache-dir",
        &cache.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mnt = mount(&bootstrap, &work.path().join("mnt"), &opts);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    drop(mnt);
    common::rafs(args!["cache", "verify", &cache, "--bootstrap", &bootstrap]).ok();
}

#[test]
fn rootfs_from_nginx_with_cache_equals_source() {
    let work = common::tempdir();
    let (src, bootstrap, blobs) = rootfs_image(work.path());
    let nginx = Nginx::serve(&blobs);
    let cache = work.path().join("cache");
    let opts: Vec<String> = vec![
        "--backend".into(),
        format!("{}/", nginx.url),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    let mnt = mount(&bootstrap, &work.path().join("mnt"), &opts);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    drop(mnt);
    common::rafs(args!["cache", "verify", &cache, "--bootstrap", &bootstrap]).ok();
}
