//! Shared helpers of the integration tests: the tree generator
//! ([`tree`]), the tree comparator ([`compare`]), real FUSE mounts
//! ([`mount`]), seeded random reads ([`reads`]), and running the `rafs`
//! binary and GNU tar with their output captured.
//!
//! Every helper that expects success panics with the full command line,
//! exit status, stdout and stderr, so a failing test says what the tool said.

#![allow(dead_code, unused_macros)]

pub mod compare;
pub mod conformance;
pub mod faultproxy;
pub mod httpd;
pub mod mount;
pub mod nginx;
pub mod oci;
pub mod reads;
pub mod registry;
pub mod s3;
pub mod tree;

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// `run`'s stdout parsed as JSON (panics with the run on failure).
pub fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"))
}

/// Output of one command.
#[derive(Debug)]
pub struct Run {
    /// Command line, for messages.
    pub cmdline: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
    /// Raw stdout bytes.
    pub stdout_bytes: Vec<u8>,
}

impl Run {
    /// stdout and stderr together, for searching messages.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert!(self.status.success(), "command failed:\n{self}");
        self
    }

    /// Panics with the whole output unless the command failed.
    pub fn failed(self) -> Self {
        assert!(
            !self.status.success(),
            "command unexpectedly succeeded:\n{self}"
        );
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out: String = self.stdout.chars().take(20_000).collect();
        write!(
            f,
            "$ {}\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, out, self.stderr
        )
    }
}

/// The `rafs` binary under test.
pub fn rafs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rafs"))
}

/// Runs `program args...` with `stdin` fed from the given bytes or file.
pub fn run_cmd<I, S>(program: &OsStr, args: I, stdin: Input<'_>) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cmdline = std::iter::once(program.to_owned())
        .chain(args.iter().cloned())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Input::Null => cmd.stdin(Stdio::null()),
        Input::Bytes(_) => cmd.stdin(Stdio::piped()),
        Input::File(p) => cmd.stdin(std::fs::File::open(p).expect("stdin file")),
    };
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmdline}: {e}"));
    let feeder = match stdin {
        Input::Bytes(b) => {
            let mut pipe = child.stdin.take().unwrap();
            let b = b.to_vec();
            // A failing writer (the reader exited early) is fine: the
            // command's own status tells what happened.
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&b);
            }))
        }
        _ => None,
    };
    let out = child.wait_with_output().expect("wait");
    if let Some(t) = feeder {
        t.join().unwrap();
    }
    Run {
        cmdline,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_bytes: out.stdout,
    }
}

/// What a command reads on stdin.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// /dev/null.
    Null,
    /// These bytes.
    Bytes(&'a [u8]),
    /// This file.
    File(&'a Path),
}

/// Runs `rafs args...`.
pub fn rafs<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_cmd(rafs_bin().as_os_str(), args, Input::Null)
}

/// Runs `rafs args...` with stdin from `input`.
pub fn rafs_with_stdin<I, S>(args: I, input: Input<'_>) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_cmd(rafs_bin().as_os_str(), args, input)
}

/// Runs any program.
pub fn cmd<I, S>(program: &str, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_cmd(OsStr::new(program), args, Input::Null)
}

/// `[a, b, ...]` of mixed `&str`/`&Path` as `OsString`s.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(::std::ffi::OsString::from($a)),*]
    };
}

/// `argv` run as uid/gid 65534 with no supplementary groups (`setpriv`),
/// output captured: what another local user may do.
pub fn as_nobody(argv: Vec<std::ffi::OsString>) -> Run {
    let mut a = args!["--reuid=65534", "--regid=65534", "--clear-groups"];
    a.extend(argv);
    run_cmd(OsStr::new("setpriv"), a, Input::Null)
}

/// `rafs create SOURCE -o OUT extra...`, asserting success; returns the
/// bootstrap path.
pub fn create(source: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let mut a = args!["create", source, "-o", out, "--no-progress"];
    a.extend(extra.iter().map(OsString::from));
    rafs(&a).ok();
    let b = out.join("bootstrap");
    assert!(b.is_file(), "rafs create left no {}", b.display());
    b
}

/// `rafs check BOOTSTRAP --blobs DIR`, asserting success.
pub fn check_ok(bootstrap: &Path, blobs: &Path) {
    rafs(args!["check", bootstrap, "--blobs", blobs]).ok();
}

/// `rafs unpack BOOTSTRAP --blobs DIR DEST`, asserting success.
pub fn unpack(bootstrap: &Path, blobs: &Path, dest: &Path) {
    rafs(args!["unpack", bootstrap, "--blobs", blobs, dest]).ok();
}

/// `rafs inspect --json BOOTSTRAP`, parsed.
pub fn inspect_json(bootstrap: &Path) -> serde_json::Value {
    let r = rafs(args!["inspect", bootstrap, "--json"]).ok();
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("inspect --json output is not JSON ({e}):\n{r}"))
}

/// A numeric field of the inspect summary.
pub fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("inspect --json: no numeric '{key}' in {v:#}"))
}

/// GNU tar of `src` (`--format=posix`, all xattrs, numeric owners) into
/// `out`.
pub fn gnu_tar_create(src: &Path, out: &Path) {
    cmd(
        "tar",
        args![
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            src,
            "-cf",
            out,
            "."
        ],
    )
    .ok();
}

/// GNU tar extraction of `tarball` into `dest` (created), all metadata.
pub fn gnu_tar_extract(tarball: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    cmd(
        "tar",
        args![
            "-xpf",
            tarball,
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-C",
            dest
        ],
    )
    .ok();
}

/// Names of the files in a blob directory, sorted.
pub fn blob_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every path below `dir` (recursive, relative), sorted; for "nothing new
/// was left behind" checks.
pub fn list_recursive(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A fresh temporary directory (under the system temp dir).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rafs-test-")
        .tempdir()
        .unwrap()
}

/// The Debian rootfs of the tests, `target/test-rootfs`: built once (under
/// a lock shared by parallel tests) by `scripts/debootstrap-rootfs.sh`.
pub fn rootfs() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dest = root.join("target/test-rootfs");
    let script = root.join("scripts/debootstrap-rootfs.sh");
    cmd("bash", [script.as_os_str(), dest.as_os_str()]).ok();
    assert!(
        dest.join("usr/bin").is_dir(),
        "no usr/bin in {}",
        dest.display()
    );
    dest
}

/// Every blob in `dir` (files named by their sha256 hex), with its bytes.
pub fn blobs_in(dir: &Path) -> Vec<(rafs::backend::BlobId, Vec<u8>)> {
    blob_names(dir)
        .into_iter()
        .map(|n| {
            let id = rafs::backend::BlobId::from_hex(&n).expect("blob file named by hex id");
            (id, std::fs::read(dir.join(&n)).unwrap())
        })
        .collect()
}

/// A metric's value from a daemon's API socket (sum over label sets).
pub fn metric(socket: &Path, name: &str) -> f64 {
    let r = cmd(
        "curl",
        [
            OsStr::new("-sf"),
            OsStr::new("--unix-socket"),
            socket.as_os_str(),
            OsStr::new("http://rafs/metrics"),
        ],
    )
    .ok();
    r.stdout
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` (every 20 ms, and at once) until it holds; panics naming
/// `what` if it still does not after `timeout`. For waiting on a condition
/// instead of sleeping a fixed time.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

// After `args!`, which it uses.
pub mod umoci;

/// Bytes the disk cache under `dir` holds: the blocks allocated to its
/// data files (sparse: a hole takes none).
pub fn cache_allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .map(|p| std::fs::metadata(p).unwrap().blocks() * 512)
        .sum()
}
