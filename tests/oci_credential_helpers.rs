//! Docker credential helpers (`credHelpers`, `credsStore`) against a real
//! `docker-registry` with htpasswd auth: only a fake
//! `docker-credential-NAME` script knows the password, and `rafs push`
//! and `rafs pull` work with it alone; a helper that has nothing means
//! anonymous access (refused here); a helper that hangs is killed and
//! named in the error.
//!
//! The helper directory is put first on the `PATH` of the `rafs` process
//! only (through `env`), never in this process' environment.
//!
//! These tests FAIL (not skip) without docker-registry: `.ci/run`
//! installs it.

#[macro_use]
mod common;

use common::registry::{Registry, RegistryAuth, REPO};
use common::tree::{mkdir, random_bytes, write};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes the executable `dir/docker-credential-NAME` running `body`.
fn helper(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `rafs ARGS...` with `bin` first on its PATH and `cfg` as its docker
/// config.
fn rafs_with(bin: &Path, cfg: &Path, args: Vec<OsString>) -> common::Run {
    let path = format!("PATH={}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let mut a = args![path, common::rafs_bin()];
    a.extend(args);
    a.extend(args!["--docker-config", cfg]);
    common::run_cmd("/usr/bin/env".as_ref(), a, common::Input::Null)
}

#[test]
fn only_the_credential_helper_knows_the_password() {
    let work = common::tempdir();
    let src = work.path().join("src");
    mkdir(&src);
    write(&src.join("data"), &random_bytes(3, 300_000));
    let out = work.path().join("out");
    common::create(&src, &out, &[]);
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "rafs".into(),
        password: "s3cret".into(),
    });
    let bin = work.path().join("bin");
    mkdir(&bin);
    // Answers for this registry only, and only to `get`.
    helper(
        &bin,
        "test",
        &format!(
            r#"[ "$1" = get ] || exit 2
read -r host
if [ "$host" = "{}" ]; then
  printf '{{"ServerURL":"%s","Username":"rafs","Secret":"s3cret"}}' "$host"
else
  echo "credentials not found in native keychain"; exit 1
fi"#,
            reg.host
        ),
    );
    helper(
        &bin,
        "none",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    helper(&bin, "hang", "exec sleep 600");
    let cfg = work.path().join("config.json");
    let r = format!("{}/{REPO}:v1", reg.host);
    let push = |cfg_json: &str| {
        std::fs::write(&cfg, cfg_json).unwrap();
        rafs_with(&bin, &cfg, args!["push", &out, &r, "--plain-http"])
    };
    // A store with nothing for the host: anonymous, refused by the registry.
    let run = push(r#"{"credsStore":"none","auths":{}}"#).failed();
    assert!(run.stderr.contains("user and password"), "{run}");
    // credHelpers for the host wins over the store.
    let helpers = format!(
        r#"{{"credsStore":"none","credHelpers":{{"{}":"test"}}}}"#,
        reg.host
    );
    let digest = push(&helpers).ok().stdout.trim().to_owned();
    let dir = work.path().join("pulled");
    let run = rafs_with(
        &bin,
        &cfg,
        args!["pull", &r, "-o", &dir, "--plain-http", "--blobs"],
    );
    assert_eq!(run.ok().stdout.trim(), digest);
    common::check_ok(&dir.join("bootstrap"), &dir.join("blobs"));
    // The store alone works too.
    push(r#"{"credsStore":"test"}"#).ok();
    // A hanging helper is killed after its time limit and named.
    let started = Instant::now();
    let run = push(r#"{"credsStore":"hang"}"#).failed();
    assert!(started.elapsed() < Duration::from_secs(25), "{run}");
    assert!(run.stderr.contains("docker-credential-hang"), "{run}");
    assert!(run.stderr.contains("killed"), "{run}");
}
