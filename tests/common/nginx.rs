//! A private `nginx` serving a directory on a free loopback port, for the
//! HTTP backend's tests. Its config, pid, logs and temp files live in a
//! temp dir; it runs in the foreground (`daemon off;`) as our child and is
//! killed when the [`Nginx`] is dropped. A missing nginx fails the test:
//! CI installs it (`nginx-light`).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian nginx binary.
pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx.
pub struct Nginx {
    /// `http://127.0.0.1:port`.
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addr` accepts connections, panicking (with `log`'s
/// contents) if `child` exits or `timeout` passes.
pub fn wait_listening(addr: &str, child: &mut Child, log: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server for {addr} exited ({status}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "server for {addr} not listening after {timeout:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes `dir` and everything in it readable by nginx's unprivileged
/// workers (temp dirs are created 0700).
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(dir, 0o755).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            open_up(&p);
        } else {
            mode(&p, 0o644).unwrap();
        }
    }
}

impl Nginx {
    /// Starts nginx serving `root` (made world-readable) at `/`.
    pub fn serve(root: &Path) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: apt-get install nginx-light"
        );
        open_up(root);
        let dir = crate::common::tempdir();
        let d = dir.path().display();
        let port = free_port();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 128; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             default_type application/octet-stream;\n  \
             server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
            root = root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {NGINX}: {e}"));
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, &mut child, &log, Duration::from_secs(10));
        Nginx {
            url: format!("http://{addr}"),
            child,
            dir,
        }
    }

    /// nginx's error log so far (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Stops a server child: SIGTERM (nginx's master then stops its
/// workers, which a SIGKILL would orphan), SIGKILL after 5 s.
pub fn stop(child: &mut Child) {
    crate::common::mount::signal(child.id(), libc::SIGTERM);
    if crate::common::mount::wait_timeout(child, Duration::from_secs(5)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
