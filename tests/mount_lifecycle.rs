//! The daemon's life: mount, read, SIGTERM/SIGINT, remount, ten times,
//! leaving no mount and no process behind; an unmount from outside
//! (`fusermount3 -u`) ends the daemon cleanly; a mountpoint left stale by a
//! killed daemon is refused with a hint to run `fusermount3 -u`; and the
//! other ways to configure a mount (`--backend file://`, `--config`); a
//! mount is `nosuid,nodev` and private to its user unless `--suid`,
//! `--dev` and `--allow-other` ask otherwise.

#[macro_use]
mod common;

use common::mount::{
    force_unmount, is_mounted, mount_command, mountinfo_entries, processes_mentioning,
    wait_timeout, Mounted, EXIT_TIMEOUT,
};
use common::tree::{random_bytes, write};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Image {
    src: PathBuf,
    bootstrap: PathBuf,
    blobs: PathBuf,
    work: tempfile::TempDir,
}

fn image() -> Image {
    let work = common::tempdir();
    let src = work.path().join("src");
    write(&src.join("data"), &random_bytes(21, 3 << 20));
    write(&src.join("dir/hello"), b"hello\n");
    let out = work.path().join("image");
    let bootstrap = common::create(&src, &out, &[]);
    Image {
        src,
        bootstrap,
        blobs: out.join("blobs"),
        work,
    }
}

impl Image {
    fn mnt(&self) -> PathBuf {
        self.work.path().join("mnt")
    }

    fn assert_reads(&self, m: &Mounted) {
        for rel in ["data", "dir/hello"] {
            let got =
                fs::read(m.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}\n{}", m.describe()));
            assert!(
                got == fs::read(self.src.join(rel)).unwrap(),
                "{rel} differs"
            );
        }
    }
}

/// After the daemon exited: no mount on `mnt`, no process mentioning it.
fn assert_gone(mnt: &Path, m: &Mounted) {
    assert!(
        !is_mounted(mnt),
        "still mounted: {:?}\n{}",
        mountinfo_entries(mnt),
        m.describe()
    );
    let left = processes_mentioning(mnt);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn mount_read_terminate_remount_ten_times() {
    let img = image();
    for round in 0..10 {
        let sig = if round % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        let mut m = Mounted::start(&img.bootstrap, &img.blobs, &img.mnt(), &[]);
        img.assert_reads(&m);
        m.signal(sig);
        let status = m.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "round {round}: no exit after signal {sig}\n{}",
                m.describe()
            )
        });
        assert!(
            status.success(),
            "round {round}: exit {status}\n{}",
            m.describe()
        );
        assert_gone(&img.mnt(), &m);
    }
}

#[test]
fn external_fusermount_unmount_ends_daemon_with_status_0() {
    let img = image();
    let mut m = Mounted::start(&img.bootstrap, &img.blobs, &img.mnt(), &[]);
    img.assert_reads(&m);
    common::cmd("fusermount3", args!["-u", &img.mnt()]).ok();
    let status = m.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "daemon still running after fusermount3 -u\n{}",
            m.describe()
        )
    });
    assert!(status.success(), "exit {status}\n{}", m.describe());
    assert_gone(&img.mnt(), &m);
}

#[test]
fn stale_mountpoint_is_refused_with_fusermount_hint() {
    let img = image();
    let mut m = Mounted::start(&img.bootstrap, &img.blobs, &img.mnt(), &[]);
    m.signal(libc::SIGKILL);
    m.wait_exit(EXIT_TIMEOUT).expect("SIGKILLed daemon exits");
    assert!(
        is_mounted(&img.mnt()),
        "a killed daemon leaves its mount (stale)"
    );
    let err = fs::metadata(img.mnt().join("data")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOTCONN),
        "stale mount: {err}"
    );
    let opts: Vec<OsString> = args!["--blobs", &img.blobs];
    let mut child = mount_command(&img.bootstrap, &img.mnt(), &opts)
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    force_unmount(&img.mnt());
    let status = status.expect("rafs mount on a stale mountpoint hangs instead of failing");
    assert!(!status.success(), "mount on a stale mountpoint succeeded");
    assert!(
        stderr.contains("fusermount3 -u"),
        "no 'fusermount3 -u' hint in:\n{stderr}"
    );
    assert!(!is_mounted(&img.mnt()), "cleanup: still mounted");
    drop(m);
    let again = Mounted::start(&img.bootstrap, &img.blobs, &img.mnt(), &[]);
    img.assert_reads(&again);
}

#[test]
fn backend_file_url_mounts() {
    let img = image();
    let url = format!("file://{}", img.blobs.display());
    let opts: Vec<OsString> = args!["--backend", url, "-v"];
    let m =
        Mounted::with_options(&img.bootstrap, &img.mnt(), &opts).unwrap_or_else(|e| panic!("{e}"));
    img.assert_reads(&m);
}

#[test]
fn config_file_supplies_options() {
    let img = image();
    let config = img.work.path().join("rafs.toml");
    let socket = img.work.path().join("api.sock");
    fs::write(
        &config,
        format!(
            "blobs = {:?}\nthreads = 2\nchunk-cache-size = \"4M\"\napi-socket = {:?}\n",
            img.blobs.to_str().unwrap(),
            socket.to_str().unwrap()
        ),
    )
    .unwrap();
    let opts: Vec<OsString> = args!["--config", &config];
    let m =
        Mounted::with_options(&img.bootstrap, &img.mnt(), &opts).unwrap_or_else(|e| panic!("{e}"));
    img.assert_reads(&m);
    assert!(
        socket.exists(),
        "api-socket from the config file was not created\n{}",
        m.describe()
    );
}

#[test]
fn missing_blobs_dir_or_bootstrap_fails_cleanly() {
    let img = image();
    for (bootstrap, blobs) in [
        (img.bootstrap.clone(), img.work.path().join("no-such-dir")),
        (img.work.path().join("no-such-bootstrap"), img.blobs.clone()),
    ] {
        let opts: Vec<OsString> = args!["--blobs", &blobs];
        match Mounted::with_options(&bootstrap, &img.mnt(), &opts) {
            Ok(m) => panic!("mounted with {bootstrap:?} {blobs:?}\n{}", m.describe()),
            Err(e) => {
                assert!(e.status.is_some_and(|s| !s.success()), "{e}");
                assert!(!e.stderr.trim().is_empty(), "no error message: {e}");
            }
        }
        assert!(!is_mounted(&img.mnt()), "failed mount left a mount");
    }
}

/// The per-mount options (`nosuid`, `nodev`, ...) and the superblock
/// options (`allow_other`, ...) of the one mount on `mnt`.
fn mount_options(mnt: &Path) -> (Vec<String>, Vec<String>) {
    let entries = mountinfo_entries(mnt);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let line = &entries[0];
    let (before, after) = line.split_once(" - ").expect("mountinfo separator");
    let split = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
    let per_mount = split(before.split(' ').nth(5).expect("mount options"));
    let super_opts = split(after.split(' ').nth(2).expect("super options"));
    (per_mount, super_opts)
}

/// `cat PATH` as uid/gid 65534 with no supplementary groups.
fn cat_as_nobody(path: &Path) -> common::Run {
    common::as_nobody(args!["cat", path])
}

#[test]
fn mount_is_nosuid_nodev_and_private_unless_asked() {
    let img = image();
    // Let uid 65534 reach the mountpoint, so only the mount decides.
    chmod_path(img.work.path(), 0o755);
    let hello = img.mnt().join("dir/hello");

    let m = Mounted::start(&img.bootstrap, &img.blobs, &img.mnt(), &[]);
    img.assert_reads(&m);
    let (per_mount, super_opts) = mount_options(&img.mnt());
    for want in ["ro", "nosuid", "nodev"] {
        assert!(
            per_mount.iter().any(|o| o == want),
            "default mount lacks {want}: {per_mount:?}\n{}",
            m.describe()
        );
    }
    assert!(
        !super_opts.iter().any(|o| o == "allow_other"),
        "default mount has allow_other: {super_opts:?}"
    );
    let r = cat_as_nobody(&hello);
    assert!(
        !r.status.success() && r.stderr.contains("Permission denied"),
        "another user read the default mount:\n{r}"
    );
    drop(m);

    let m = Mounted::start(
        &img.bootstrap,
        &img.blobs,
        &img.mnt(),
        &["--suid", "--dev", "--allow-other"],
    );
    let (per_mount, super_opts) = mount_options(&img.mnt());
    for unwanted in ["nosuid", "nodev"] {
        assert!(
            !per_mount.iter().any(|o| o == unwanted),
            "--suid --dev mount has {unwanted}: {per_mount:?}\n{}",
            m.describe()
        );
    }
    assert!(
        super_opts.iter().any(|o| o == "allow_other"),
        "--allow-other mount lacks allow_other: {super_opts:?}"
    );
    let r = cat_as_nobody(&hello);
    assert!(r.status.success(), "--allow-other: {r}\n{}", m.describe());
    assert_eq!(r.stdout, "hello\n");
}

fn chmod_path(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}
