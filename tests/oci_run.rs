//! Containers on a rafs mount by reference, against a real
//! `docker-registry`: the Debian rootfs of the tests is `rafs create`d and
//! `rafs push`ed with an image config whose entrypoint prints something
//! known; `rafs mount docker://REF` serves it (the digest on the ready
//! line is push's, the tree equals the source, fewer bytes are fetched than
//! the blobs hold while a container runs), `rafs bundle` + an overlay make
//! a runc bundle whose `runc run` prints the expected output, `podman run
//! $(rafs bundle REF --podman MNT)` (the image's own command, env, user
//! and workdir on `--rootfs MNT:O`) does too; a second mount of the same digest reuses the
//! kept bootstrap; a non-rafs image is refused.
//!
//! These tests FAIL (not skip) without docker-registry, runc, podman or
//! FUSE: `.ci/run` installs them.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::mount::Mounted;
use common::registry::{Registry, RegistryAuth, REPO};
use common::umoci::Overlay;
use rafs::backend::BlobId;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the image's entrypoint prints first.
const HELLO: &str = "hello-from-rafs";

/// An image config whose entrypoint prints [`HELLO`] and the Debian
/// version, as uid 0 in `/etc`, with one environment variable.
fn image_config(work: &Path) -> PathBuf {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo $GREETING; cat /etc/debian_version; id -u; pwd"],
            "Env": ["GREETING=hello-from-rafs",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "User": "0:0",
            "WorkingDir": "/etc"
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    let path = work.join("image-config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// The Debian rootfs created and pushed as `REPO:tag`: (source, blob
/// bytes, reference, digest).
fn publish(work: &Path, reg: &Registry, tag: &str) -> (PathBuf, u64, String, String) {
    let src = common::rootfs();
    let out = work.join("out");
    common::create(&src, &out, &[]);
    let blob_bytes: u64 = common::blobs_in(&out.join("blobs"))
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum();
    let r = format!("docker://{}/{REPO}:{tag}", reg.host);
    let config = image_config(work);
    let run = common::rafs(args!["push", &out, &r, "--plain-http", "--config", &config]).ok();
    let digest = run.stdout.trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{run}");
    (src, blob_bytes, r, digest)
}

/// `rafs mount REF MNT --plain-http extra...`.
fn mount_ref(r: &str, mnt: &Path, extra: &[OsString]) -> Mounted {
    let mut opts: Vec<OsString> = args!["--plain-http"];
    opts.extend(extra.iter().cloned());
    Mounted::with_options(Path::new(r), mnt, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// What the image's command must print.
fn expected_output(src: &Path) -> String {
    let version = std::fs::read_to_string(src.join("etc/debian_version")).unwrap();
    format!("{HELLO}\n{}\n0\n/etc\n", version.trim())
}

#[test]
fn runc_runs_the_image_command_on_a_mount_by_reference_lazily() {
    let work = common::tempdir();
    let reg = Registry::start(RegistryAuth::Anonymous);
    let (src, blob_bytes, r, digest) = publish(work.path(), &reg, "v1");
    let sock = work.path().join("api.sock");
    let cache = work.path().join("cache");
    let opts: Vec<OsString> = args![
        "--api-socket",
        &sock,
        "--cache-dir",
        &cache,
        "--no-prefetch"
    ];
    let mnt = mount_ref(&r, &work.path().join("mnt"), &opts);

    assert!(
        mnt.ready_line.contains(&digest),
        "{} lacks {digest}",
        mnt.ready_line
    );
    let hex = digest.trim_start_matches("sha256:");
    assert!(cache.join("images").join(hex).join("bootstrap").is_file());
    assert!(cache.join("images").join(hex).join("config.json").is_file());

    let bundle = work.path().join("bundle");
    let run = common::rafs(args!["bundle", &r, &bundle, "--plain-http"]).ok();
    assert!(run.stdout.contains("config.json"), "{run}");
    let _overlay = Overlay::mount(&mnt.mountpoint, work.path(), &bundle.join("rootfs"));
    let id = format!("rafs-test-{}", std::process::id());
    let run = common::cmd("runc", args!["run", "--bundle", &bundle, &id]);
    let _ = common::cmd("runc", args!["delete", "--force", &id]);
    assert!(run.status.success(), "{run}\n{}", mnt.describe());
    assert_eq!(run.stdout, expected_output(&src), "{run}");

    // Lazy: the container ran on a fraction of the image's data.
    let fetched = common::metric(&sock, "rafs_backend_bytes_total");
    assert!(fetched > 0.0, "nothing fetched?");
    assert!(
        fetched < blob_bytes as f64 / 2.0,
        "{fetched} of {blob_bytes} blob bytes fetched"
    );
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
}

#[test]
fn podman_runs_the_image_command_on_the_mount() {
    let work = common::tempdir();
    let reg = Registry::start(RegistryAuth::Anonymous);
    let (src, _, _, digest) = publish(work.path(), &reg, "v1");
    let at_digest = format!("docker://{}/{REPO}@{digest}", reg.host);
    let mnt = mount_ref(&at_digest, &work.path().join("mnt"), &[]);
    assert!(mnt.ready_line.contains(&digest), "{}", mnt.ready_line);
    // The image's own command, env, user and workdir, from its config.
    let podman_args = common::rafs(args![
        "bundle",
        &at_digest,
        "--podman",
        &mnt.mountpoint,
        "--plain-http"
    ])
    .ok();
    let podman_args = podman_args.stdout.trim();
    assert!(podman_args.contains("--workdir /etc"), "{podman_args}");
    let script = format!(
        "eval \"podman --root {} --runroot {} run --rm --network=none \
         --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 $RAFS_ARGS\"",
        work.path().join("podman-root").display(),
        work.path().join("podman-run").display(),
    );
    let run = common::cmd(
        "env",
        args![format!("RAFS_ARGS={podman_args}"), "sh", "-c", script],
    );
    assert!(run.status.success(), "{run}\n{}", mnt.describe());
    assert_eq!(run.stdout, expected_output(&src), "{run}");
}

/// A small image, for the tests that do not run a container.
fn small_image(work: &Path, reg: &Registry, tag: &str) -> (PathBuf, String, String) {
    let src = work.join("src");
    common::tree::mkdir(&src.join("etc"));
    common::tree::write(&src.join("etc/hostname"), b"rafs\n");
    common::tree::write(&src.join("data"), &common::tree::random_bytes(3, 1 << 20));
    let out = work.join("out");
    common::create(&src, &out, &[]);
    let r = format!("docker://{}/{REPO}:{tag}", reg.host);
    let run = common::rafs(args!["push", &out, &r, "--plain-http"]).ok();
    (src, r, run.stdout.trim().to_owned())
}

#[test]
fn second_mount_reuses_the_kept_bootstrap_and_replaces_a_bad_one() {
    let work = common::tempdir();
    let reg = Registry::start(RegistryAuth::Anonymous);
    let (src, r, digest) = small_image(work.path(), &reg, "v1");
    let cache = work.path().join("cache");
    let kept = cache
        .join("images")
        .join(digest.trim_start_matches("sha256:"))
        .join("bootstrap");
    let opts: Vec<OsString> = args!["--cache-dir", &cache];
    let mnt_dir = work.path().join("mnt");
    let mut mnt = mount_ref(&r, &mnt_dir, &opts);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    mnt.terminate();
    let first = std::fs::metadata(&kept).unwrap().ino();
    // Again: the kept bootstrap is verified and served, not downloaded.
    let mut mnt = mount_ref(&r, &mnt_dir, &opts);
    assert!(mnt.ready_line.contains(&digest), "{}", mnt.ready_line);
    assert_eq!(std::fs::metadata(&kept).unwrap().ino(), first);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    mnt.terminate();
    // A kept bootstrap that no longer matches its digest is fetched again.
    let mut bytes = std::fs::read(&kept).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&kept, &bytes).unwrap();
    let mnt = mount_ref(&r, &mnt_dir, &opts);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    let now = std::fs::read(&kept).unwrap();
    assert_ne!(now, bytes);
}

#[test]
fn mount_without_cache_dir_removes_its_private_copy_and_refuses_non_rafs() {
    let work = common::tempdir();
    let reg = Registry::start(RegistryAuth::Anonymous);
    let (src, r, _) = small_image(work.path(), &reg, "v1");
    let mut mnt = mount_ref(&r, &work.path().join("mnt"), &[]);
    assert_same_tree(&src, &mnt.mountpoint, &exclude_none);
    let pid = mnt.pid();
    let private: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("rafs-image-{pid}-"))
        })
        .collect();
    assert_eq!(private.len(), 1, "{private:?}");
    assert!(private[0].join("bootstrap").is_file());
    assert!(mnt.terminate().success());
    assert!(!private[0].exists(), "{} left behind", private[0].display());

    // A plain OCI image is refused before anything is mounted.
    let layer = b"not a tar".to_vec();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    for bytes in [&layer[..], &config[..]] {
        reg.push(&BlobId(Sha256::digest(bytes).into()), bytes);
    }
    let sha = |b: &[u8]| format!("sha256:{:x}", Sha256::digest(b));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(&layer), "size": layer.len()}],
    });
    put_manifest(&reg, "plain", manifest.to_string().as_bytes());
    let plain = format!("docker://{}/{REPO}:plain", reg.host);
    let mnt_dir = work.path().join("mnt2");
    std::fs::create_dir_all(&mnt_dir).unwrap();
    let run = common::rafs(args!["mount", &plain, &mnt_dir, "--plain-http"]).failed();
    assert!(run.stderr.contains("not a rafs image"), "{run}");
    assert!(!common::mount::is_mounted(&mnt_dir));
    let run = common::rafs(args![
        "mount",
        format!("docker://{}/{REPO}:nope", reg.host),
        &mnt_dir,
        "--plain-http"
    ])
    .failed();
    assert!(run.stderr.contains("manifest unknown"), "{run}");
}

fn put_manifest(reg: &Registry, tag: &str, manifest: &[u8]) {
    let url = format!("http://{}/v2/{REPO}/manifests/{tag}", reg.host);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let resp = agent
        .put(&url)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send(manifest)
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", reg.log());
}
