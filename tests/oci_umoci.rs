//! Images built by `umoci`, end to end against a real `docker-registry`:
//! built layer by layer with `umoci repack` (plus one hand-written layer
//! appended with `umoci raw add-layer`), copied into the registry with
//! `skopeo`, `rafs convert`ed registry to registry and `rafs mount`ed by
//! reference; the mounted tree must equal `umoci unpack` of the source
//! exactly. The Debian rootfs of the tests, as a two-layer umoci image
//! with its own entrypoint, runs in runc on the mount (through `rafs
//! bundle` and an overlay) and prints what the command computes, having
//! fetched less than the image's blobs hold.
//!
//! These tests FAIL (not skip) without umoci, skopeo, docker-registry,
//! runc or FUSE: `.ci/run` installs them.

#[macro_use]
mod common;

use common::compare::{assert_same_tree, exclude_none};
use common::mount::Mounted;
use common::oci::{noise, tar_of, Kind, E};
use common::registry::{Registry, RegistryAuth};
use common::umoci::{base_name, fix_new_mtimes, skopeo_copy, Image, Overlay};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Fixed mtimes are below this; anything at or above was just written.
const NOW_ISH: i64 = 1_500_000_000;

fn mkdir(p: &Path, mode: u32) {
    fs::create_dir(p).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn write(p: &Path, data: impl AsRef<[u8]>, mode: u32) {
    fs::write(p, data).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn own(p: &Path, uid: u32, gid: u32) {
    chown(p, Some(uid), Some(gid)).unwrap();
}

/// Layer 1: every kind of entry, odd modes, owners and xattrs.
fn layer1(r: &Path) {
    mkdir(&r.join("etc"), 0o750);
    xattr::set(r.join("etc"), "user.dir", b"etc").unwrap();
    for (name, data) in [("keep", "keep"), ("change", "old"), ("remove", "remove me")] {
        write(&r.join("etc").join(name), data, 0o644);
    }
    write(&r.join("etc/attr"), "x", 0o644);
    xattr::set(r.join("etc/attr"), "user.foo", b"bar\0baz").unwrap();
    xattr::set(r.join("etc/attr"), "user.empty", b"").unwrap();
    mkdir(&r.join("bin"), 0o755);
    write(&r.join("bin/tool"), noise(300_000, 1), 0o755);
    write(&r.join("bin/su"), noise(20_000, 2), 0o4755);
    write(&r.join("bin/sg"), "sg", 0o2711);
    mkdir(&r.join("tmp"), 0o1777);
    mkdir(&r.join("srv"), 0o750);
    own(&r.join("srv"), 1000, 100);
    write(&r.join("srv/data"), noise(70_000, 3), 0o640);
    own(&r.join("srv/data"), 1000, 100);
    for d in ["opq", "opq/sub", "gone", "gone/deep", "d2f", "lower"] {
        mkdir(&r.join(d), 0o755);
    }
    for (f, data) in [("opq/a", "a"), ("opq/sub/b", "b"), ("gone/x", "x")] {
        write(&r.join(f), data, 0o644);
    }
    write(&r.join("gone/deep/y"), noise(10_000, 4), 0o600);
    write(&r.join("f2d"), "a file, later a directory", 0o644);
    write(&r.join("f2s"), "a file, later a symlink", 0o644);
    write(&r.join("d2f/z"), "z", 0o644);
    // a/b/c: later a layer holds a/b/c/file and no entry for a, a/b, a/b/c.
    mkdir(&r.join("a"), 0o755);
    mkdir(&r.join("a/b"), 0o700);
    own(&r.join("a/b"), 1000, 100);
    mkdir(&r.join("a/b/c"), 0o711);
    own(&r.join("a/b/c"), 2000, 2000);
    xattr::set(r.join("a/b/c"), "user.c", b"1").unwrap();
    write(&r.join("a/b/c/old"), "old", 0o644);
    // lower/target: a later layer adds a hardlink to it.
    write(&r.join("lower/target"), noise(50_000, 5), 0o644);
    own(&r.join("lower/target"), 1234, 5678);
    // A hardlink pair within one layer, a fifo.
    write(&r.join("pair1"), "pair", 0o644);
    fs::hard_link(r.join("pair1"), r.join("pair2")).unwrap();
    common::cmd("mkfifo", args![r.join("fifo")]).ok();
    common::cmd("mknod", args![r.join("null"), "c", "1", "3"]).ok();
    // A name and a symlink target too long for a ustar header (PAX), a
    // name that is not UTF-8.
    let long = "n".repeat(150);
    mkdir(&r.join(&long), 0o755);
    write(&r.join(&long).join(&long), "long", 0o644);
    symlink(format!("{long}/{long}"), r.join("long-link")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"odd-\xff-name");
    write(&r.join(odd), "odd", 0o644);
}

/// Layer 2: changed, removed, replaced (file→dir, dir→file, file→symlink),
/// a directory deleted and recreated, metadata-only changes.
fn layer2(r: &Path) {
    write(&r.join("etc/change"), noise(20_000, 6), 0o644);
    xattr::set(r.join("etc/change"), "user.v", b"2").unwrap();
    fs::remove_file(r.join("etc/remove")).unwrap();
    fs::remove_dir_all(r.join("gone")).unwrap();
    fs::remove_file(r.join("f2d")).unwrap();
    mkdir(&r.join("f2d"), 0o755);
    write(&r.join("f2d/inner"), "inner", 0o644);
    fs::remove_dir_all(r.join("d2f")).unwrap();
    write(&r.join("d2f"), "now a file", 0o644);
    fs::remove_file(r.join("f2s")).unwrap();
    symlink("etc/keep", r.join("f2s")).unwrap();
    fs::remove_dir_all(r.join("opq")).unwrap();
    mkdir(&r.join("opq"), 0o755);
    write(&r.join("opq/new"), "new", 0o644);
    fs::set_permissions(r.join("etc/keep"), fs::Permissions::from_mode(0o600)).unwrap();
    own(&r.join("srv/data"), 0, 0);
}

/// Layer 3, whiteouts only: files with one link removed, their
/// directories' mtimes put back so umoci writes no directory entry.
fn layer3(r: &Path) {
    let times: Vec<(PathBuf, filetime::FileTime)> = ["etc", "bin"]
        .iter()
        .map(|d| {
            let m = fs::metadata(r.join(d)).unwrap();
            (
                r.join(d),
                filetime::FileTime::from_last_modification_time(&m),
            )
        })
        .collect();
    fs::remove_file(r.join("etc/keep")).unwrap();
    fs::remove_file(r.join("bin/su")).unwrap();
    for (p, t) in times {
        filetime::set_file_times(&p, t, t).unwrap();
    }
}

/// Layer 4, hand-written (umoci always writes parent directories and
/// never an opaque whiteout or a hardlink into a lower layer):
/// `a/b/c/file` with no entry for its parents, an opaque `opq/`, and
/// `hl` linking to `lower/target` of layer 1.
fn layer4() -> Vec<u8> {
    let file = |path, data: &str, mtime| E {
        path,
        kind: Kind::File(data.as_bytes().to_vec()),
        mode: 0o644,
        uid: 1000,
        gid: 100,
        mtime,
        xattrs: Vec::new(),
    };
    tar_of(&[
        file("a/b/c/file", "deep", 4_000_001),
        E {
            path: "opq/",
            kind: Kind::Dir,
            mode: 0o700,
            uid: 0,
            gid: 0,
            mtime: 4_000_002,
            xattrs: vec![("user.opq", b"yes")],
        },
        file("opq/.wh..wh..opq", "", 0),
        file("opq/newer", "newer", 4_000_003),
        E {
            path: "hl",
            kind: Kind::Hardlink("lower/target"),
            mode: 0o644,
            uid: 1234,
            gid: 5678,
            mtime: 1_000_000,
            xattrs: Vec::new(),
        },
    ])
}

/// Builds the four-layer image at `work/layout:v1`, checking that umoci
/// wrote the layers the test is about.
fn build_image(work: &Path) -> Image {
    let img = Image::new(&work.join("layout"), "v1");
    let bundle = work.join("bundle");
    let r = img.unpack(&bundle);
    layer1(&r);
    fix_new_mtimes(&r, NOW_ISH, 1_000_000);
    let t = filetime::FileTime::from_unix_time(1_000_000, 123_456_789);
    filetime::set_file_times(r.join("etc/attr"), t, t).unwrap();
    img.repack(&bundle);
    layer2(&r);
    fix_new_mtimes(&r, NOW_ISH, 2_000_000);
    img.repack(&bundle);
    layer3(&r);
    img.repack(&bundle);
    img.add_raw_layer(&layer4(), work);

    let layers = img.layer_entries();
    assert_eq!(layers.len(), 4, "{layers:?}");
    let has = |l: usize, e: &str| layers[l].iter().any(|x| x == e);
    // umoci recreated a directory as per-entry whiteouts, not opaque.
    assert!(
        has(1, "opq/.wh.a") && has(1, "opq/.wh.sub"),
        "{:?}",
        layers[1]
    );
    assert!(
        layers[2].iter().all(|e| base_name(e).starts_with(".wh.")),
        "layer 3 is not whiteout-only: {:?}",
        layers[2]
    );
    for implied in ["a/", "a/b/", "a/b/c/", "a", "a/b", "a/b/c"] {
        assert!(!has(3, implied), "{:?}", layers[3]);
    }
    img
}

/// Mounted tree: no `.wh.` name anywhere.
fn assert_no_whiteouts(root: &Path) {
    for p in common::list_recursive(root) {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!n.starts_with(".wh."), "{} survived", p.display());
    }
}

fn convert(src: &str, dst: &str) {
    common::rafs(args!["convert", src, dst, "--plain-http", "--no-progress"]).ok();
}

fn mount_ref(r: &str, mnt: &Path, extra: &[OsString]) -> Mounted {
    let mut opts: Vec<OsString> = args!["--plain-http"];
    opts.extend(extra.iter().cloned());
    Mounted::with_options(Path::new(r), mnt, &opts).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn multi_layer_umoci_image_mounts_as_umoci_unpacks_it() {
    let work = common::tempdir();
    let img = build_image(work.path());
    let reference = img.unpack(&work.path().join("reference"));
    let reg = Registry::start(RegistryAuth::Anonymous);
    let src = format!("docker://{}/src:v1", reg.host);
    let dst = format!("docker://{}/rafs:v1", reg.host);
    skopeo_copy(&img.skopeo_name(), &src);
    convert(&src, &dst);
    let mnt = mount_ref(&dst, &work.path().join("mnt"), &[]);

    // The reference has what the layers say (so the comparison means
    // something): opaque, implied dirs, the hardlink into layer 1.
    assert!(!reference.join("opq/new").exists());
    assert!(reference.join("opq/newer").is_file());
    assert_eq!(fs::read(reference.join("a/b/c/old")).unwrap(), b"old");
    assert_eq!(
        fs::read(reference.join("hl")).unwrap(),
        fs::read(reference.join("lower/target")).unwrap()
    );
    assert_same_tree(&reference, &mnt.mountpoint, &exclude_none);
    assert_no_whiteouts(&mnt.mountpoint);
}

/// What the Debian image's command prints, computed from the source: the
/// environment variable, the working directory (in layer 2), the user
/// name of uid 65534, coreutils' version, a perl sum, the changed file,
/// and that the removed file is gone.
fn debian_expected(src: &Path) -> String {
    let admin = src.join("var/lib/dpkg");
    let version = common::cmd(
        "dpkg-query",
        args![
            format!("--admindir={}", admin.display()),
            "-W",
            "-f=${Version}",
            "coreutils"
        ],
    )
    .ok()
    .stdout;
    assert!(!version.is_empty());
    format!("umoci-env\n/usr/share/doc\nnobody\ncoreutils\t{version}\n42\nchanged by layer 2\nmotd gone\n")
}

const DEBIAN_CMD: &str = "echo $GREETING; pwd; id -un; dpkg-query -W coreutils; \
    perl -e 'print 6*7, qq(\\n)'; cat /etc/issue; test -e /etc/motd || echo motd gone";

/// The Debian rootfs as a two-layer umoci image at `work/layout:debian`:
/// layer 1 without /usr/share/{doc,man,locale}, layer 2 with them, a
/// changed /etc/issue and no /etc/motd; the config runs [`DEBIAN_CMD`].
fn debian_image(work: &Path, src: &Path) -> Image {
    let img = Image::new(&work.join("layout"), "debian");
    let bundle = work.join("bundle");
    let r = img.unpack(&bundle);
    common::cmd("cp", args!["-a", format!("{}/.", src.display()), &r]).ok();
    let stash = work.join("stash");
    fs::create_dir(&stash).unwrap();
    let later = ["doc", "man", "locale"];
    for d in later {
        fs::rename(r.join("usr/share").join(d), stash.join(d)).unwrap();
    }
    img.repack(&bundle);
    for d in later {
        fs::rename(stash.join(d), r.join("usr/share").join(d)).unwrap();
    }
    fs::write(r.join("etc/issue"), "changed by layer 2\n").unwrap();
    fs::remove_file(r.join("etc/motd")).unwrap();
    img.repack(&bundle);
    img.config(&[
        "--config.entrypoint=/bin/sh",
        "--config.entrypoint=-c",
        &format!("--config.cmd={DEBIAN_CMD}"),
        "--config.env=GREETING=umoci-env",
        "--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.workingdir=/usr/share/doc",
        "--config.user=65534:65534",
    ]);
    fs::remove_dir_all(&bundle).unwrap();
    img
}

/// The rafs image's data blob bytes, from its manifest.
fn rafs_blob_bytes(r: &str, work: &Path) -> u64 {
    let dir = work.join("pulled");
    common::rafs(args!["pull", r, "-o", &dir, "--plain-http"]).ok();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.rafs.blob.v1")
        .map(|l| l["size"].as_u64().unwrap())
        .sum()
}

#[test]
fn debian_two_layer_umoci_image_runs_its_command_in_runc_lazily() {
    let started = std::time::Instant::now();
    let work = common::tempdir();
    let src = common::rootfs();
    let img = debian_image(work.path(), &src);
    assert_eq!(img.layer_entries().len(), 2);
    let reg = Registry::start(RegistryAuth::Anonymous);
    let source = format!("docker://{}/debian-src:v1", reg.host);
    let dst = format!("docker://{}/debian:v1", reg.host);
    skopeo_copy(&img.skopeo_name(), &source);
    convert(&source, &dst);
    let built = started.elapsed();
    let blob_bytes = rafs_blob_bytes(&dst, work.path());

    let sock = work.path().join("api.sock");
    let opts: Vec<OsString> = args![
        "--api-socket",
        &sock,
        "--cache-dir",
        work.path().join("cache"),
        "--no-prefetch"
    ];
    let mnt = mount_ref(&dst, &work.path().join("mnt"), &opts);
    let bundle = work.path().join("runc-bundle");
    common::rafs(args!["bundle", &dst, &bundle, "--plain-http"]).ok();
    let overlay = Overlay::mount(&mnt.mountpoint, work.path(), &bundle.join("rootfs"));
    let id = format!("rafs-umoci-{}", std::process::id());
    let run = common::cmd("runc", args!["run", "--bundle", &bundle, &id]);
    let _ = common::cmd("runc", args!["delete", "--force", &id]);
    assert!(run.status.success(), "{run}\n{}", mnt.describe());
    assert_eq!(run.stdout, debian_expected(&src), "{run}");
    drop(overlay);

    // Lazy: the command ran on a fraction of the image's data.
    let fetched = common::metric(&sock, "rafs_backend_bytes_total");
    assert!(fetched > 0.0, "nothing fetched?");
    assert!(
        fetched < blob_bytes as f64 / 2.0,
        "{fetched} of {blob_bytes} blob bytes fetched"
    );
    let ran = started.elapsed();

    let reference = img.unpack(&work.path().join("reference"));
    assert!(!reference.join("etc/motd").exists());
    assert!(reference.join("usr/share/doc/coreutils").is_dir());
    assert_same_tree(&reference, &mnt.mountpoint, &exclude_none);
    assert_no_whiteouts(&mnt.mountpoint);
    eprintln!(
        "timing: image built, pushed and converted {built:?}, container done {ran:?}, \
         compared {:?}; {fetched} of {blob_bytes} blob bytes fetched by the container",
        started.elapsed()
    );
}
