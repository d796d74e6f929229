//! A real S3 server for the S3 backend tests: `s3s-fs` (an S3 API over a
//! local directory, with SigV4 checked) on a free loopback port, killed on
//! drop, plus bucket creation and uploads through presigned `rusty-s3`
//! URLs, so the fixture goes in through the same API a real bucket would
//! be filled with.
//!
//! `s3s-fs` is required: a missing binary fails the test with a message
//! saying how to install it (CI installs it), it never skips.

use rusty_s3::actions::{CreateBucket, PutObject, S3Action};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "rafs-test-key";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "rafs-test-secret-0123456789";
/// Region used for signing (s3s-fs accepts any).
pub const REGION: &str = "us-east-1";

/// A running `s3s-fs`, stopped (and its root removed) on drop.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Holds the buckets as directories; removed after the server.
    root: tempfile::TempDir,
}

/// The `s3s-fs` binary: on `PATH`, else in `~/.cargo/bin`, else in
/// `/usr/local/bin`. Panics (fails the test) when there is none.
pub fn s3s_fs_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.push(PathBuf::from("/usr/local/bin"));
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs not found on PATH, in ~/.cargo/bin or /usr/local/bin; install it with \
                 `cargo install s3s-fs@0.14.1 --features binary --locked`"
            )
        })
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    /// Starts `s3s-fs` with SigV4 authentication ([`ACCESS_KEY`],
    /// [`SECRET_KEY`]) and waits (up to 20 s) until it accepts connections.
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let root = super::tempdir();
        let port = free_port();
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("s3s-fs exited before accepting connections: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3s-fs did not accept connections on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            child,
            endpoint: format!("http://{addr}"),
            root,
        }
    }

    /// The server's root directory (one sub-directory per bucket).
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    fn bucket(&self, name: &str) -> Bucket {
        let url = self.endpoint.parse().unwrap();
        Bucket::new(url, UrlStyle::Path, name.to_owned(), REGION).unwrap()
    }

    /// Creates bucket `name` with a signed `CreateBucket`.
    pub fn create_bucket(&self, name: &str) {
        let bucket = self.bucket(name);
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let url = CreateBucket::new(&bucket, &creds).sign(Duration::from_secs(300));
        let resp = ureq::put(url.as_str())
            .config()
            .http_status_as_error(false)
            .build()
            .send_empty()
            .unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
        assert!(
            resp.status().is_success(),
            "create bucket {name}: HTTP {}",
            resp.status()
        );
    }

    /// Uploads `bytes` as `bucket/key` with a signed `PutObject`.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let b = self.bucket(bucket);
        let creds = Credentials::new(ACCESS_KEY, SECRET_KEY);
        let url = PutObject::new(&b, Some(&creds), key).sign(Duration::from_secs(300));
        let resp = ureq::put(url.as_str())
            .config()
            .http_status_as_error(false)
            .build()
            .send(bytes)
            .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e}"));
        assert!(
            resp.status().is_success(),
            "put {bucket}/{key}: HTTP {}",
            resp.status()
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
