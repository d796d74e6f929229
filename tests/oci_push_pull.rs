//! `rafs push` and `rafs pull` against a real `docker-registry`
//! (`docs/IMAGE.md`): a `rafs create` output pushed, pulled back (bytes
//! equal, bootstrap valid, blobs verified) and mounted from the registry;
//! pushes that are idempotent (no blob uploaded twice, same digest) and
//! safe in parallel; a registry that refuses the push scope; unknown tags,
//! non-rafs manifests and tampered bootstraps refused with nothing
//! written; an image copied by `skopeo copy` still pulls.
//!
//! These tests FAIL (not skip) without docker-registry, skopeo or FUSE:
//! `.ci/run` installs them.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::httpd::Response;
use common::mount::Mounted;
use common::registry::{Registry, RegistryAuth, TokenPolicy, REPO};
use common::tree::{mkdir, random_bytes, text_bytes, write};
use rafs::backend::BlobId;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A small tree and its `rafs create` output: (source, outdir).
fn image(work: &Path) -> (PathBuf, PathBuf) {
    let src = work.join("src");
    mkdir(&src);
    mkdir(&src.join("etc/deep/er"));
    write(&src.join("etc/hostname"), b"rafs\n");
    write(&src.join("etc/deep/er/text"), &text_bytes(200_000));
    write(&src.join("big.bin"), &random_bytes(7, 3 << 20));
    write(&src.join("empty"), b"");
    std::os::unix::fs::symlink("etc/hostname", src.join("link")).unwrap();
    std::fs::hard_link(src.join("etc/hostname"), src.join("hard")).unwrap();
    let out = work.join("out");
    common::create(&src, &out, &[]);
    (src, out)
}

fn reference(reg: &Registry, repo: &str, tag: &str) -> String {
    format!("{}/{repo}:{tag}", reg.host)
}

fn push(out: &Path, r: &str, extra: &[&str]) -> common::Run {
    let mut a = args!["push", out, r, "--plain-http", "--json"];
    a.extend(extra.iter().map(OsString::from));
    common::rafs(a)
}

fn pull(r: &str, dir: &Path, extra: &[&str]) -> common::Run {
    let mut a = args!["pull", r, "-o", dir, "--plain-http"];
    a.extend(extra.iter().map(OsString::from));
    common::rafs(a)
}

fn report(run: &common::Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"))
}

/// Upload sessions the registry has started (its log of POSTs to
/// `/blobs/uploads/`).
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// PUTs `manifest` as `repo:tag` (anonymous registry).
fn put_manifest(reg: &Registry, repo: &str, tag: &str, media: &str, manifest: &[u8]) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let url = format!("http://{}/v2/{repo}/manifests/{tag}", reg.host);
    let resp = agent
        .put(&url)
        .header("Content-Type", media)
        .send(manifest)
        .unwrap();
    assert_eq!(resp.status(), 201, "PUT {url}:\n{}", reg.log());
}

/// The names under `dir` with their contents.
fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = common::list_recursive(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(dir.join(&p)).unwrap_or_default();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn pushed_image_pulls_back_verified_and_mounts_from_the_registry() {
    let work = common::tempdir();
    let (src, out) = image(work.path());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let r = reference(&reg, REPO, "v1");
    let first = report(&push(&out, &r, &[]).ok());
    let digest = first["digest"].as_str().unwrap().to_owned();
    let blobs = common::blob_names(&out.join("blobs")).len();
    // The data blobs, the bootstrap and the config.
    assert_eq!(first["uploaded"], blobs + 2, "{first}");
    let dir = work.path().join("pulled");
    let run = pull(&r, &dir, &["--blobs"]).ok();
    assert_eq!(run.stdout.trim(), digest);
    assert_eq!(
        std::fs::read(dir.join("bootstrap")).unwrap(),
        std::fs::read(out.join("bootstrap")).unwrap()
    );
    assert_eq!(
        common::blobs_in(&dir.join("blobs")),
        common::blobs_in(&out.join("blobs"))
    );
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(sha256(&manifest), digest);
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["artifactType"], "application/vnd.rafs.image.v1");
    let config = std::fs::read(dir.join("config.json")).unwrap();
    assert_eq!(m["config"]["digest"], sha256(&config).as_str());
    common::check_ok(&dir.join("bootstrap"), &dir.join("blobs"));
    // No temporary file is left behind.
    assert!(
        common::list_recursive(&dir)
            .iter()
            .all(|p| !p.to_string_lossy().contains(".part")),
        "{:?}",
        common::list_recursive(&dir)
    );
    // By digest: the same bytes.
    let by_digest = work.path().join("by-digest");
    pull(&format!("{}/{REPO}@{digest}", reg.host), &by_digest, &[]).ok();
    assert_eq!(
        std::fs::read(by_digest.join("manifest.json")).unwrap(),
        manifest
    );
    // The pulled bootstrap mounts with the registry as its backend.
    let opts: Vec<OsString> = args!["--backend", reg.url()];
    let mnt = Mounted::with_options(&dir.join("bootstrap"), &work.path().join("mnt"), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
}

#[test]
fn second_push_uploads_nothing_and_gives_the_same_digest() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let r = reference(&reg, REPO, "v1");
    let first = report(&push(&out, &r, &[]).ok());
    let posts = reg.upload_posts();
    assert!(
        posts >= 3,
        "no upload seen in the registry log:\n{}",
        reg.log()
    );
    let second = report(&push(&out, &r, &[]).ok());
    assert_eq!(second["digest"], first["digest"]);
    assert_eq!(second["uploaded"], 0, "{second}");
    assert_eq!(reg.upload_posts(), posts, "the second push started uploads");
    // Plain output: the digest alone; another tag, same digest.
    let run = common::rafs(args![
        "push",
        &out,
        reference(&reg, REPO, "v2"),
        "--plain-http"
    ])
    .ok();
    assert_eq!(run.stdout.trim(), first["digest"].as_str().unwrap());
}

#[test]
fn parallel_pushes_both_succeed_with_the_same_digest() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let r = reference(&reg, REPO, "v1");
    let runs: Vec<common::Run> = std::thread::scope(|s| {
        let a = s.spawn(|| push(&out, &r, &["--jobs", "1"]));
        let b = s.spawn(|| push(&out, &r, &["--jobs", "1"]));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let digests: Vec<serde_json::Value> = runs
        .into_iter()
        .map(|run| report(&run.ok())["digest"].clone())
        .collect();
    assert_eq!(digests[0], digests[1]);
    let dir = work.path().join("pulled");
    let run = pull(&r, &dir, &["--blobs"]).ok();
    assert_eq!(run.stdout.trim(), digests[0].as_str().unwrap());
}

#[test]
fn registry_refusing_the_push_scope_is_a_clear_error_and_nothing_is_tagged() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    // The test token server grants `pull` whatever scope is asked for.
    let reg = Registry::start(RegistryAuth::Token(TokenPolicy {
        user: "alice".into(),
        password: "pw".into(),
        expires_in: 300,
        accepted_for: 600,
    }));
    let realm = reg.tokens.as_ref().unwrap().httpd.url();
    let cfg = work.path().join("docker-config.json");
    std::fs::write(&cfg, "{}").unwrap();
    let creds: Vec<String> = [
        "--registry-user",
        "alice",
        "--registry-password",
        "pw",
        "--registry-token-realm",
        &realm,
        "--docker-config",
        &cfg.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let creds: Vec<&str> = creds.iter().map(String::as_str).collect();
    let r = reference(&reg, REPO, "v1");
    let run = push(&out, &r, &creds).failed();
    assert!(
        run.stderr.contains("refused to let us push") && run.stderr.contains(REPO),
        "{run}"
    );
    let seen = reg.tokens.as_ref().unwrap().httpd.seen();
    let push_scope = format!(
        "scope=repository%3A{}%3Apull%2Cpush",
        REPO.replace('/', "%2F")
    );
    assert!(
        seen.iter().any(|q| q.target.contains(&push_scope)),
        "no token asked for the push scope: {:?}",
        seen.iter().map(|q| &q.target).collect::<Vec<_>>()
    );
    let dir = work.path().join("pulled");
    let run = pull(&r, &dir, &creds).failed();
    assert!(run.stderr.contains("manifest unknown"), "{run}");
    assert!(!dir.exists());
}

#[test]
fn unknown_tags_non_rafs_manifests_and_bad_references_are_clear_errors() {
    let work = common::tempdir();
    let reg = Registry::start(RegistryAuth::Anonymous);
    let dir = work.path().join("pulled");
    let run = pull(&reference(&reg, REPO, "nope"), &dir, &[]).failed();
    assert!(run.stderr.contains("manifest unknown"), "{run}");
    // A plain OCI image: a tar layer and an image config.
    let layer = b"not really a tar, the registry does not care".to_vec();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    for bytes in [&layer[..], &config[..]] {
        reg.push(&BlobId(Sha256::digest(bytes).into()), bytes);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(&layer), "size": layer.len()}],
    });
    let media = "application/vnd.oci.image.manifest.v1+json";
    put_manifest(&reg, REPO, "plain", media, manifest.to_string().as_bytes());
    let run = pull(&reference(&reg, REPO, "plain"), &dir, &[]).failed();
    assert!(run.stderr.contains("not a rafs image"), "{run}");
    assert!(run.stderr.contains("artifactType"), "{run}");
    assert!(!dir.exists());
    for bad in ["no-host", "host/Repo:x", "h/r@sha256:12"] {
        let run = pull(bad, &dir, &[]).failed();
        assert!(run.stderr.contains("is not an image reference"), "{run}");
    }
}

#[test]
fn tampered_bootstrap_is_refused_and_the_directory_untouched() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    let reg = Registry::start(RegistryAuth::Anonymous);
    push(&out, &reference(&reg, REPO, "v1"), &[]).ok();
    let good = work.path().join("good");
    pull(&reference(&reg, REPO, "v1"), &good, &[]).ok();
    let manifest = std::fs::read_to_string(good.join("manifest.json")).unwrap();
    let bootstrap = std::fs::read(good.join("bootstrap")).unwrap();
    // Another image's (valid) bootstrap, and a corrupted copy of this one.
    let other_src = work.path().join("other");
    mkdir(&other_src);
    write(&other_src.join("f"), &random_bytes(9, 100_000));
    let other = std::fs::read(common::create(&other_src, &work.path().join("o"), &[])).unwrap();
    let mut corrupt = bootstrap.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    let media = "application/vnd.oci.image.manifest.v1+json";
    let dir = work.path().join("dest");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep"), b"mine").unwrap();
    let before = listing(&dir);
    for (tag, bytes) in [("corrupt", &corrupt), ("other", &other)] {
        reg.push(&BlobId(Sha256::digest(bytes).into()), bytes);
        let tampered = manifest
            .replace(&sha256(&bootstrap), &sha256(bytes))
            .replace(
                &format!("\"size\":{}}}]", bootstrap.len()),
                &format!("\"size\":{}}}]", bytes.len()),
            );
        assert_ne!(tampered, manifest);
        put_manifest(&reg, REPO, tag, media, tampered.as_bytes());
        let run = pull(&reference(&reg, REPO, tag), &dir, &["--blobs"]).failed();
        assert!(run.stderr.contains("bootstrap"), "{run}");
        assert_eq!(listing(&dir), before, "{tag}: the directory changed");
    }
    // A manifest that lies about the bootstrap's size.
    let lying = manifest.replace(
        &format!("\"size\":{}}}]", bootstrap.len()),
        &format!("\"size\":{}}}]", bootstrap.len() - 1),
    );
    put_manifest(&reg, REPO, "short", media, lying.as_bytes());
    pull(&reference(&reg, REPO, "short"), &dir, &[]).failed();
    assert_eq!(listing(&dir), before);
    // A digest the repository does not have.
    let wrong = format!("{}/{REPO}@{}", reg.host, sha256(b"x"));
    let run = pull(&wrong, &dir, &[]).failed();
    assert!(run.stderr.contains("manifest unknown"), "{run}");
    assert_eq!(listing(&dir), before);
}

#[test]
fn image_copied_by_skopeo_still_pulls() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let a = reference(&reg, REPO, "v1");
    let digest = report(&push(&out, &a, &[]).ok())["digest"].clone();
    let b = reference(&reg, "copies/rafs", "copied");
    common::cmd(
        "skopeo",
        args![
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            format!("docker://{a}"),
            format!("docker://{b}"),
        ],
    )
    .ok();
    let dir = work.path().join("pulled");
    let run = pull(&b, &dir, &["--blobs"]).ok();
    assert_eq!(run.stdout.trim(), digest.as_str().unwrap());
    common::check_ok(&dir.join("bootstrap"), &dir.join("blobs"));
}

#[test]
fn source_config_and_digest_are_carried_over_and_blobs_mount_across_repos() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    let reg = Registry::start(RegistryAuth::Anonymous);
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Env":["A=1"],"User":"1000:1000","WorkingDir":"/etc"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cfg = work.path().join("config.json");
    std::fs::write(&cfg, config).unwrap();
    let source = sha256(b"the source manifest");
    let cfg_s = cfg.display().to_string();
    let extra = ["--config", &cfg_s, "--source-digest", &source];
    let a = report(&push(&out, &reference(&reg, REPO, "v1"), &extra).ok());
    let posts = reg.upload_posts();
    // Another repository of the same registry: every blob is mounted, none
    // uploaded, and the manifest is byte for byte the same.
    let mut mount = extra.to_vec();
    mount.extend(["--mount-from", REPO]);
    let b = report(&push(&out, &reference(&reg, "other/repo", "v1"), &mount).ok());
    assert_eq!(b["digest"], a["digest"]);
    assert_eq!(b["uploaded"], 0, "{b}");
    assert_eq!(b["mounted"], a["uploaded"], "{b}");
    let mount_posts = reg
        .log()
        .lines()
        .filter(|l| l.contains("http.request.method=POST") && l.contains("mount="))
        .count();
    assert_eq!(
        reg.upload_posts() - posts,
        mount_posts,
        "plain uploads started"
    );
    let dir = work.path().join("pulled");
    pull(&reference(&reg, "other/repo", "v1"), &dir, &[]).ok();
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), config);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m["annotations"]["dev.rafs.source.manifest"],
        source.as_str()
    );
    // A config that is not an image config is refused before any request.
    std::fs::write(&cfg, b"[1,2]").unwrap();
    let run = push(&out, &reference(&reg, REPO, "bad"), &["--config", &cfg_s]).failed();
    assert!(run.stderr.contains("not an OCI image config"), "{run}");
}

#[test]
fn htpasswd_registry_takes_pushes_and_pulls_with_credentials_only() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "rafs".into(),
        password: "s3cret".into(),
    });
    let cfg = work.path().join("docker-config.json");
    std::fs::write(&cfg, "{}").unwrap();
    let cfg_s = cfg.display().to_string();
    let r = reference(&reg, REPO, "v1");
    let run = push(&out, &r, &["--docker-config", &cfg_s]).failed();
    assert!(run.stderr.contains("user and password"), "{run}");
    let creds = [
        "--registry-user",
        "rafs",
        "--registry-password",
        "s3cret",
        "--docker-config",
        &cfg_s,
    ];
    let pushed = report(&push(&out, &r, &creds).ok());
    let dir = work.path().join("pulled");
    pull(&r, &dir, &["--docker-config", &cfg_s]).failed();
    assert!(!dir.exists());
    let run = pull(&r, &dir, &[&creds[..], &["--blobs"]].concat()).ok();
    assert_eq!(run.stdout.trim(), pushed["digest"].as_str().unwrap());
    common::check_ok(&dir.join("bootstrap"), &dir.join("blobs"));
}

/// A fake registry that accepts every upload but never serves a blob, and
/// answers manifest GETs with `{}` (any digest) or 5 MiB (`big`).
fn lying_registry() -> common::httpd::Httpd {
    common::httpd::Httpd::start(|req| {
        let t = req.target.as_str();
        match req.method.as_str() {
            "HEAD" => Response::new(404, ""),
            "POST" if t.contains("/blobs/uploads/") => {
                Response::new(202, "").with("Location", "/v2/rafs/test/blobs/uploads/u1?s=1")
            }
            "PUT" if t.contains("/blobs/uploads/") => Response::new(201, ""),
            "PUT" => Response::new(201, ""),
            "GET" if t.ends_with("/manifests/big") => Response::new(200, vec![b' '; 5 << 20]),
            "GET" if t.contains("/manifests/") => Response::new(200, "{}"),
            _ => Response::new(404, ""),
        }
    })
}

#[test]
fn registries_that_lie_are_caught() {
    let work = common::tempdir();
    let (_, out) = image(work.path());
    let fake = lying_registry();
    let host = fake.url().trim_start_matches("http://").to_owned();
    let run = push(&out, &format!("{host}/{REPO}:v1"), &[]).failed();
    assert!(
        run.stderr
            .contains("accepted the upload but serves 0 bytes"),
        "{run}"
    );
    let seen = fake.seen();
    assert!(
        seen.iter().any(|r| r.method == "PUT"),
        "no upload: {seen:?}"
    );
    assert!(
        !seen.iter().any(|r| r.target.contains("/manifests/")),
        "a manifest was pushed after a failed upload"
    );
    let dir = work.path().join("pulled");
    let wrong = format!("{host}/{REPO}@{}", sha256(b"not {}"));
    let run = pull(&wrong, &dir, &[]).failed();
    assert!(run.stderr.contains("digest mismatch"), "{run}");
    let run = pull(&format!("{host}/{REPO}:big"), &dir, &[]).failed();
    assert!(run.stderr.contains("limit"), "{run}");
    assert!(!dir.exists());
}
