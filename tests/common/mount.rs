//! Real FUSE mounts for the tests: [`Mounted`] runs `rafs mount` as a
//! child process and guarantees that no test leaves a mount or a daemon
//! behind, whatever happens.
//!
//! [`Mounted::start`] checks that FUSE is usable (`/dev/fuse` and
//! `fusermount3`; a test that needs FUSE fails loudly rather than skipping),
//! spawns the daemon, and waits (with a timeout) for its one ready line on
//! stdout. Its stderr is collected on a thread so a failing test can show
//! what the daemon logged. On drop the guard sends SIGTERM, waits for the
//! exit, SIGKILLs after a grace period, and if the mountpoint is still in
//! `/proc/self/mountinfo` runs `fusermount3 -u` (then `-uz`) as a fallback.
//!
//! A watchdog thread per mount turns a hang (a FUSE request that never
//! answers blocks the test thread in the kernel) into a failure: past its
//! deadline it kills the daemon, which aborts the FUSE connection so the
//! blocked calls return, lazily unmounts, and aborts the test process.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the daemon may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM or an unmount.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default lifetime of one mount before the watchdog declares a hang.
pub const WATCHDOG: Duration = Duration::from_secs(900);

/// Panics with a clear message unless this machine can run FUSE tests.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE tests need /dev/fuse (load the fuse module / run the container with \
         --device /dev/fuse); refusing to skip silently"
    );
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "FUSE tests need fusermount3 in PATH (apt-get install fuse3); refusing to skip silently"
    );
}

/// Decodes the octal escapes (`\040` …) of a mountinfo path field.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(u8::is_ascii_digit));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |a, x| a.wrapping_mul(8) + (x - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The `/proc/self/mountinfo` lines whose mount point is `path`.
pub fn mountinfo_entries(path: &Path) -> Vec<String> {
    let want = path.as_os_str().as_bytes();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read /proc/self/mountinfo")
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| unescape(m) == want))
        .map(str::to_owned)
        .collect()
}

/// Whether anything is mounted on `path`.
pub fn is_mounted(path: &Path) -> bool {
    !mountinfo_entries(path).is_empty()
}

/// `fusermount3 -u PATH`, then `-uz` if that failed; never panics.
pub fn force_unmount(path: &Path) {
    for flags in ["-u", "-uz"] {
        if !is_mounted(path) {
            return;
        }
        let _ = Command::new("fusermount3")
            .arg(flags)
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Pids of live processes whose command line mentions `needle` (for "no
/// daemon left behind" checks; zombies count as gone).
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if !zombie && cmdline.windows(needle.len()).any(|w| w == needle) {
            out.push(pid);
        }
    }
    out
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) takes plain integers; no memory is shared.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Collects everything a pipe yields on a thread (joined once the
/// process has exited, so its output is complete).
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

/// Sends the first stdout line on `tx`, then drains the rest.
fn watch_stdout(pipe: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = tx.send(line);
        }
        drop(tx);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
}

/// The `rafs mount` command line: bootstrap, mountpoint, options.
pub fn mount_command(bootstrap: &Path, mountpoint: &Path, opts: &[OsString]) -> Command {
    let mut cmd = Command::new(super::rafs_bin());
    cmd.arg("mount").arg(bootstrap).arg(mountpoint).args(opts);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A running `rafs mount`; unmounts and reaps the daemon on drop.
pub struct Mounted {
    /// Where the image is mounted.
    pub mountpoint: PathBuf,
    /// The daemon's ready line.
    pub ready_line: String,
    cmdline: String,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
    _watchdog: mpsc::Sender<()>,
}

/// Why a mount did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    /// Command line.
    pub cmdline: String,
    /// Exit status, if the daemon exited (None: timed out, then killed).
    pub status: Option<ExitStatus>,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.status {
            Some(s) => format!("exited before it was ready: {s}"),
            None => format!("printed no ready line within {READY_TIMEOUT:?}"),
        };
        write!(
            f,
            "$ {}\n{how}\n--- stderr ---\n{}",
            self.cmdline, self.stderr
        )
    }
}

impl Mounted {
    /// Mounts `bootstrap` with `--blobs blobs` and `extra` options on
    /// `mountpoint` (created); panics with the daemon's output on failure.
    pub fn start(bootstrap: &Path, blobs: &Path, mountpoint: &Path, extra: &[&str]) -> Mounted {
        let mut opts: Vec<OsString> = vec!["--blobs".into(), blobs.into()];
        opts.extend(extra.iter().map(OsString::from));
        Mounted::with_options(bootstrap, mountpoint, &opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Mounts with exactly `opts`; an error if the daemon exits or stays
    /// silent instead of printing its ready line.
    pub fn with_options(
        bootstrap: &Path,
        mountpoint: &Path,
        opts: &[OsString],
    ) -> Result<Mounted, StartFailure> {
        require_fuse();
        std::fs::create_dir_all(mountpoint).unwrap();
        let mut cmd = mount_command(bootstrap, mountpoint, opts);
        let cmdline = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmdline}: {e}"));
        let (stderr, stderr_reader) = collect(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        watch_stdout(child.stdout.take().unwrap(), tx);
        let ready = rx.recv_timeout(READY_TIMEOUT);
        let mut m = Mounted {
            mountpoint: mountpoint.to_path_buf(),
            ready_line: ready.clone().unwrap_or_default(),
            cmdline,
            _watchdog: watchdog(child.id(), mountpoint, WATCHDOG),
            child,
            stderr,
            stderr_reader: Some(stderr_reader),
            status: None,
        };
        if ready.is_err() {
            let status = m.wait_exit(Duration::from_millis(500));
            return Err(StartFailure {
                cmdline: m.cmdline.clone(),
                status,
                stderr: m.stderr(),
            });
        }
        Ok(m)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Command line and stderr, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "$ {}\n--- daemon stderr ---\n{}",
            self.cmdline,
            self.stderr()
        )
    }

    /// A path inside the mount.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_timeout(&mut self.child, timeout);
        }
        if self.status.is_some() {
            if let Some(h) = self.stderr_reader.take() {
                let _ = h.join();
            }
        }
        self.status
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            signal(self.pid(), sig);
        }
    }

    /// SIGTERM, then the exit status; panics if the daemon does not exit
    /// in time. The mount must be gone afterwards (checked by callers).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "daemon did not exit within {EXIT_TIMEOUT:?} of SIGTERM\n{}",
                self.describe()
            )
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.status.is_none() {
            signal(self.child.id(), libc::SIGTERM);
            if wait_timeout(&mut self.child, EXIT_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        force_unmount(&self.mountpoint);
    }
}

/// A thread that, unless the returned sender is dropped first, kills
/// daemon `pid`, lazily unmounts `mountpoint` and aborts the process after
/// `limit`.
fn watchdog(pid: u32, mountpoint: &Path, limit: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let mnt = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!(
                "watchdog: mount {} still up after {limit:?}: the test hung; killing daemon \
                 {pid} and aborting",
                mnt.display()
            );
            signal(pid, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
            force_unmount(&mnt);
            std::process::abort();
        }
    });
    tx
}

/// Runs `f` on a thread and panics if it takes longer than `limit` (the
/// thread is left behind; the mount guard's drop then kills the daemon,
/// which unblocks it).
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what} did not finish within {limit:?} (hung FUSE request?)"),
    }
}
