//! `rafs cache gc|ls` and the kept images of `rafs mount docker://REF
//! --cache-dir DIR` (`DIR/images/<hex>/{config.json,bootstrap}`): a named
//! image stays with its blobs, an image in use (its directory locked
//! shared, as a mount holds it) stays with its blobs, any other goes with
//! its blobs; a dry run removes nothing; gc needs --bootstrap, --image or
//! --all; an unknown --image removes nothing. One test runs a real mount
//! from a `docker-registry` and checks that it holds its image.
//!
//! These tests FAIL (not skip) without docker-registry or FUSE: `.ci/run`
//! installs them.

#[macro_use]
mod common;

use common::mount::Mounted;
use common::registry::{Registry, RegistryAuth, REPO};
use common::tree::{random_bytes, write};
use nix::fcntl::{Flock, FlockArg};
use rafs::backend::BlobId;
use rafs::image::Image;
use std::path::{Path, PathBuf};

/// A small image built from seeded data: its bootstrap and blob dir.
fn build(work: &Path, name: &str, seed: u64) -> (PathBuf, PathBuf) {
    let src = work.join(format!("{name}-src"));
    write(&src.join("big"), &random_bytes(seed, 300_000));
    write(&src.join("small"), &random_bytes(seed + 1, 5_000));
    let out = work.join(format!("{name}-out"));
    let boot = common::create(&src, &out, &[]);
    (boot, out.join("blobs"))
}

fn blob_ids(bootstrap: &Path) -> Vec<BlobId> {
    let image = Image::open(bootstrap).unwrap();
    let boot = image.bootstrap().unwrap();
    boot.blobs().iter().map(|i| BlobId(i.id)).collect()
}

/// Whether both files of blob `id` are in `cache`.
fn cached(cache: &Path, id: &BlobId) -> bool {
    let hex = id.to_hex();
    cache.join(format!("{hex}.data")).exists() && cache.join(format!("{hex}.map")).exists()
}

/// Every path under `dir` (recursive, sorted), but the manager lock.
fn tree_of(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.retain(|n| n != ".blobmgr.lock");
    out.sort();
    out
}

/// A kept image `hex` of `bootstrap`, as a mount leaves it, with its
/// blobs prefetched into `cache`.
fn keep(cache: &Path, hex: &str, (boot, blobs): &(PathBuf, PathBuf)) -> PathBuf {
    let dir = cache.join("images").join(hex);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(boot, dir.join("bootstrap")).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    let url = format!("file://{}", blobs.display());
    common::rafs(args![
        "prefetch",
        boot,
        "--all",
        "--backend",
        url,
        "--cache-dir",
        cache,
        "--no-progress"
    ])
    .ok();
    dir
}

#[test]
fn gc_keeps_named_and_in_use_images_and_removes_the_rest() {
    let work = common::tempdir();
    let cache = work.path().join("cache");
    let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let imgs: Vec<_> = (0..3u64)
        .map(|i| build(work.path(), &format!("i{i}"), 10 * i + 1))
        .collect();
    let dirs: Vec<_> = [&a, &b, &c]
        .iter()
        .zip(&imgs)
        .map(|(hex, img)| keep(&cache, hex, img))
        .collect();
    let ids: Vec<_> = imgs.iter().map(|(boot, _)| blob_ids(boot)).collect();
    assert!(ids.iter().flatten().all(|id| cached(&cache, id)));
    let before = tree_of(&cache);

    // Nothing named: refused.
    let r = common::rafs(args!["cache", "gc", &cache]);
    assert_eq!(r.status.code(), Some(2), "{r}");
    assert!(r.stderr.contains("--image or --all"), "{r}");
    // An image that is not kept: refused, nothing removed.
    let r = common::rafs(args!["cache", "gc", &cache, "--image", "d".repeat(64)]);
    assert_eq!(r.status.code(), Some(2), "{r}");
    assert!(r.stderr.contains("no such kept image"), "{r}");
    assert_eq!(tree_of(&cache), before);

    // c is in use: its directory is locked shared, as a mount holds it.
    let hold = Flock::lock(
        std::fs::File::open(&dirs[2]).unwrap(),
        FlockArg::LockSharedNonblock,
    )
    .unwrap();
    let ls = common::rafs(args!["cache", "ls", &cache, "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    let in_use: Vec<_> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["digest"].as_str().unwrap().to_owned(),
                i["in_use"].as_bool().unwrap(),
            )
        })
        .collect();
    let sha = |h: &str| format!("sha256:{h}");
    assert_eq!(
        in_use,
        [(sha(&a), false), (sha(&b), false), (sha(&c), true)]
    );
    // The images directory is not an unknown file any more.
    let other = v["other_files"].as_array().unwrap();
    assert!(
        !other.iter().any(|o| o.as_str().unwrap().contains("images")),
        "{ls}"
    );

    let named = sha(&a);
    let r = common::rafs(args!["cache", "gc", &cache, "--image", &named, "--dry-run"]).ok();
    assert!(
        r.stdout
            .contains(&format!("would remove image {}", sha(&b))),
        "{r}"
    );
    assert_eq!(tree_of(&cache), before, "{r}");

    let r = common::rafs(args!["cache", "gc", &cache, "--image", &named]).ok();
    assert!(
        r.stdout
            .contains(&format!("in use, kept image {}", sha(&c))),
        "{r}"
    );
    assert!(dirs[0].join("bootstrap").exists() && dirs[2].join("bootstrap").exists());
    assert!(!dirs[1].exists(), "{r}");
    assert!(
        ids[0].iter().chain(&ids[2]).all(|id| cached(&cache, id)),
        "{r}"
    );
    assert!(ids[1].iter().all(|id| !cached(&cache, id)), "{r}");

    // Released, c goes with its blobs under --all; a plain hex names a.
    drop(hold);
    common::rafs(args!["cache", "gc", &cache, "--image", &a]).ok();
    assert!(!dirs[2].exists() && dirs[0].exists());
    assert!(ids[2].iter().all(|id| !cached(&cache, id)));
    common::rafs(args!["cache", "gc", &cache, "--all"]).ok();
    assert_eq!(tree_of(&cache), ["images"]);
}

#[test]
fn a_running_mount_holds_its_kept_image() {
    let work = common::tempdir();
    let (boot, _) = build(work.path(), "m", 99);
    let out = boot.parent().unwrap();
    let reg = Registry::start(RegistryAuth::Anonymous);
    let r = format!("docker://{}/{REPO}:v1", reg.host);
    let digest = common::rafs(args!["push", out, &r, "--plain-http"])
        .ok()
        .stdout;
    let digest = digest.trim();
    let cache = work.path().join("cache");
    let opts = args!["--plain-http", "--cache-dir", &cache];
    let mnt = Mounted::with_options(Path::new(&r), &work.path().join("mnt"), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    // Read everything: every blob is cached.
    assert_eq!(std::fs::read(mnt.path("big")).unwrap().len(), 300_000);
    std::fs::read(mnt.path("small")).unwrap();
    let hex = digest.trim_start_matches("sha256:");
    let kept = cache.join("images").join(hex);
    let ids = blob_ids(&kept.join("bootstrap"));
    assert!(ids.iter().all(|id| cached(&cache, id)));
    let ls = common::rafs(args!["cache", "ls", &cache]).ok();
    assert!(
        ls.stdout.contains(&format!("image {digest} (in use")),
        "{ls}"
    );

    let r = common::rafs(args!["cache", "gc", &cache, "--all"]).ok();
    assert!(
        r.stdout.contains(&format!("in use, kept image {digest}")),
        "{r}"
    );
    assert!(kept.join("bootstrap").exists() && ids.iter().all(|id| cached(&cache, id)));
    drop(mnt);
    let r = common::rafs(args!["cache", "gc", &cache, "--all"]).ok();
    assert!(r.stdout.contains(&format!("removed image {digest}")), "{r}");
    assert!(
        !kept.exists() && ids.iter().all(|id| !cached(&cache, id)),
        "{r}"
    );
}
