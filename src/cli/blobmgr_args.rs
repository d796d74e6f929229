//! `rafs blobmgr`: its flags ([`BlobmgrArgs`]), turned into the daemon's
//! options, the engine's [`FetchConfig`] and the backend
//! ([`BlobmgrConfig`]); and [`serve`], which runs a blob manager over any
//! [`BlobService`] with its API socket until SIGTERM/SIGINT.

use super::backend_args::BackendArgs;
use super::fetch_args::{FetchArgs, ReadArgs, SettingError};
use crate::api::{Api, ApiServer};
use crate::backend::url::{BackendUrl, UrlError};
use crate::backend::BackendOptions;
use crate::fetch::FetchConfig;
use crate::manager::daemon::{Daemon, DaemonOptions, Prepared, StopSignals};
use crate::manager::engine::Engine;
use crate::manager::server::ServerConfig;
use crate::manager::service::BlobService;
use prometheus_client::registry::Registry;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use thiserror::Error;

/// Arguments of `rafs blobmgr`.
#[derive(Debug, Default, clap::Args)]
pub struct BlobmgrArgs {
    /// Serve clients on this Unix socket (SOCK_SEQPACKET) [optional under
    /// systemd socket activation, which passes the socket].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Group of the socket when --allow-uid is given (it is then mode
    /// 0660; otherwise 0600).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Also serve clients running as UID (repeatable) [default: root and
    /// the manager's own user only].
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,
    /// Serve GET /status and /metrics over HTTP on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Clients served at once; more are refused [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// Blobs are files named by their sha256 hex in DIR (same as
    /// --backend file:///DIR).
    #[arg(long, value_name = "DIR", conflicts_with = "backend")]
    pub blobs: Option<PathBuf>,
    /// Where blobs live, as a URL. file:///DIR, http(s)://HOST/PATH,
    /// registry://HOST/REPO, registry+http://HOST/REPO, s3://BUCKET/PREFIX.
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,
    /// Backend requests of on-demand fetches in flight at most [default: 8].
    #[arg(long, value_name = "N")]
    pub fetch_threads: Option<usize>,
    /// Fetch and cache engine settings (--cache-dir is required).
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Network backend settings.
    #[command(flatten)]
    pub net: BackendArgs,
}

/// Why the flags do not make a blob manager.
#[derive(Debug, Error)]
pub enum BlobmgrArgsError {
    /// A setting's value is invalid.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// The backend URL is invalid.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A required setting is missing.
    #[error("rafs blobmgr needs {0}")]
    Missing(&'static str),
}

/// Everything `rafs blobmgr` runs with.
#[derive(Debug, Clone)]
pub struct BlobmgrConfig {
    /// The daemon's socket, peers, limits and cache directory.
    pub daemon: DaemonOptions,
    /// The HTTP API socket.
    pub api_socket: Option<PathBuf>,
    /// The engine's settings (`cache_dir` is `daemon.cache_dir`).
    pub fetch: FetchConfig,
    /// Where blobs live.
    pub backend: BackendUrl,
    /// How to reach it.
    pub backend_options: BackendOptions,
}

impl BlobmgrArgs {
    /// The configuration these flags give.
    pub fn resolve(&self) -> Result<BlobmgrConfig, BlobmgrArgsError> {
        let read = ReadArgs {
            fetch_threads: self.fetch_threads,
            ..ReadArgs::default()
        };
        let fetch = read.to_config(self.fetch.to_config(FetchConfig::default())?)?;
        let cache_dir = fetch
            .cache_dir
            .clone()
            .ok_or(BlobmgrArgsError::Missing("--cache-dir DIR"))?;
        let backend = match (&self.blobs, &self.backend) {
            (Some(dir), None) => BackendUrl::from_dir(dir),
            (None, Some(url)) => BackendUrl::parse(url)?,
            _ => return Err(BlobmgrArgsError::Missing("--blobs DIR or --backend URL")),
        };
        let mut server = ServerConfig {
            allow_uids: self.allow_uid.clone(),
            ..ServerConfig::default()
        };
        if let Some(n) = self.max_clients {
            if n == 0 {
                return Err(SettingError("--max-clients must be at least 1".into()).into());
            }
            server.max_connections = n;
        }
        if self.socket_group.is_some() && self.allow_uid.is_empty() {
            return Err(SettingError(
                "--socket-group needs --allow-uid (the socket is 0600 otherwise)".into(),
            )
            .into());
        }
        Ok(BlobmgrConfig {
            daemon: DaemonOptions {
                socket: self.socket.clone(),
                socket_group: self.socket_group.clone(),
                cache_dir,
                server,
            },
            api_socket: self.api_socket.clone(),
            fetch,
            backend,
            backend_options: self.net.options()?,
        })
    }
}

/// Entry point of `rafs blobmgr`.
pub fn run(a: &BlobmgrArgs) -> anyhow::Result<ExitCode> {
    let cfg = a.resolve()?;
    // Socket and lock first: before any thread (the activation variables
    // are unset) and before the engine touches the directory.
    let prepared = Daemon::prepare(&cfg.daemon)?;
    let stop = StopSignals::install()?;
    let backend = cfg.backend.open(&cfg.backend_options)?;
    let engine = Engine::new(cfg.fetch.clone(), backend)?;
    let mut reg = Registry::default();
    engine.metrics().register(&mut reg);
    let e = engine.clone();
    let status = move || serde_json::to_value(e.status()).unwrap_or_default();
    serve(
        engine,
        prepared,
        cfg.api_socket.as_deref(),
        reg,
        status,
        stop,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Something to wait on before shutting down.
pub trait Stop {
    /// Blocks until it is time to stop.
    fn wait(self);
}

impl Stop for StopSignals {
    fn wait(self) {
        let sig = StopSignals::wait(self);
        tracing::info!(signal = sig, "blob manager stopping");
    }
}

impl Stop for std::sync::mpsc::Receiver<()> {
    fn wait(self) {
        let _ = self.recv();
    }
}

/// Runs a blob manager over `service` until `stop`: the daemon
/// (`prepared`: its socket and lock; the connection layer), and the API on
/// `api_socket` with `/status` (the daemon's, `service_status` under
/// `service`) and `/metrics` (`registry` plus the connection layer's).
/// Prints one line on stdout when it serves.
pub fn serve<S: BlobService, F>(
    service: Arc<S>,
    prepared: Prepared,
    api_socket: Option<&Path>,
    mut registry: Registry,
    service_status: F,
    stop: impl Stop,
) -> anyhow::Result<()>
where
    F: Fn() -> serde_json::Value + Send + Sync + 'static,
{
    let cache_dir = prepared.cache_dir().to_path_buf();
    let daemon = prepared.serve(service, &mut registry)?;
    let api = match api_socket {
        Some(path) => {
            let listener = ApiServer::bind(path)?;
            let status = Box::new(daemon.status_fn(service_status));
            let api = Api::with_status_fn(status, registry);
            Some(ApiServer::start(listener, path, api)?)
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "rafs: blob manager serving {}", cache_dir.display())
        .and_then(|()| out.flush());
    drop(out);
    stop.wait();
    if let Some(api) = api {
        api.shutdown();
    }
    daemon.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobmgr::protocol::{ErrorCode, FetchFrame, Lane, UsedRange};
    use crate::cli::{Cli, Command};
    use crate::manager::service::{FetchDone, OpenRequest, Opened, Refused};
    use clap::Parser;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    fn args(extra: &[&str]) -> BlobmgrArgs {
        let mut argv = vec!["rafs", "blobmgr"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Blobmgr(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_resolve_into_daemon_engine_and_backend() {
        let c = args(&[
            "--socket",
            "/run/m.sock",
            "--cache-dir",
            "/c",
            "--cache-size",
            "1G",
            "--blobs",
            "/b",
            "--allow-uid",
            "1000",
            "--allow-uid",
            "1001",
            "--socket-group",
            "rafs",
            "--fetch-threads",
            "3",
            "--api-socket",
            "/run/m.api",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.daemon.socket.as_deref(), Some(Path::new("/run/m.sock")));
        assert_eq!(c.daemon.cache_dir, Path::new("/c"));
        assert_eq!(c.daemon.server.allow_uids, [1000, 1001]);
        assert_eq!(c.daemon.socket_group.as_deref(), Some("rafs"));
        assert_eq!(c.api_socket.as_deref(), Some(Path::new("/run/m.api")));
        assert_eq!(c.fetch.concurrency, 3);
        assert_eq!(c.fetch.cache_limit, Some(1 << 30));
        assert_eq!(c.backend, BackendUrl::File("/b".into()));
        for (bad, why) in [
            (vec!["--blobs", "/b"], "--cache-dir"),
            (vec!["--cache-dir", "/c"], "--backend"),
            (
                vec!["--cache-dir", "/c", "--blobs", "/b", "--socket-group", "g"],
                "--allow-uid",
            ),
            (
                vec!["--cache-dir", "/c", "--blobs", "/b", "--max-clients", "0"],
                "--max-clients",
            ),
        ] {
            let e = args(&bad).resolve().unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    struct Nothing;

    impl BlobService for Nothing {
        type Blob = ();
        fn open(&self, _: &OpenRequest) -> Result<Opened<()>, Refused> {
            Err(Refused::new(ErrorCode::Internal, "test"))
        }
        fn fetch(&self, _: &Arc<()>, _: Lane, _: Vec<FetchFrame>, _: Instant, done: FetchDone) {
            done(Vec::new());
        }
        fn used(&self, _: &(), _: &[UsedRange]) {}
        fn close(&self, _: Arc<()>) {}
    }

    fn get(path: &Path, what: &str) -> String {
        let mut c = UnixStream::connect(path).unwrap();
        write!(c, "GET {what} HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serve_runs_the_daemon_and_its_api_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let (sock, api) = (dir.path().join("m.sock"), dir.path().join("api.sock"));
        let opts = DaemonOptions {
            socket: Some(sock.clone()),
            cache_dir: cache,
            ..DaemonOptions::default()
        };
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let a = api.clone();
        let t = std::thread::spawn(move || {
            let status = || serde_json::json!({"engine": "fake"});
            serve(
                Arc::new(Nothing),
                Daemon::prepare(&opts)?,
                Some(&a),
                Registry::default(),
                status,
                rx,
            )
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(api.exists() && sock.exists()) {
            assert!(Instant::now() < deadline, "never served");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _client = crate::blobmgr::transport::Conn::connect(&sock).unwrap();
        let out = get(&api, "/status");
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["state"], "serving");
        assert_eq!(v["socket"], sock.display().to_string());
        assert_eq!(v["service"]["engine"], "fake");
        assert!(v["uptime_secs"].is_u64(), "{v}");
        let out = get(&api, "/metrics");
        for m in [
            "rafs_blobmgr_clients",
            "rafs_blobmgr_protocol_errors",
            "rafs_api_refused_connections",
        ] {
            assert!(out.contains(m), "{m}: {out}");
        }
        tx.send(()).unwrap();
        t.join().unwrap().unwrap();
        assert!(!sock.exists() && !api.exists());
    }

    /// Every file of `dir` with its bytes (the map's bits and generation
    /// included).
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_second_manager_on_a_locked_dir_fails_before_touching_it() {
        use crate::cache::{BlobCache, MapParams};
        let dir = tempfile::tempdir().unwrap();
        let (cache, blobs) = (dir.path().join("cache"), dir.path().join("blobs"));
        std::fs::create_dir(&blobs).unwrap();
        crate::cache::create_dir(&cache).unwrap();
        let _first =
            crate::manager::lockfile::ManagerLock::acquire(&cache, Path::new("/run/first.sock"))
                .unwrap();
        // A cache filled by the first manager: 16 KiB ready.
        let params = MapParams::new(crate::backend::BlobId([0xab; 32]), 16384, 4096)
            .unwrap()
            .with_layout([7; 16]);
        let (c, _) = BlobCache::open(&cache, params).unwrap();
        c.commit(&[(0, &[5u8; 16384][..])]).unwrap();
        drop(c);
        let before = snapshot(&cache);
        let sock = dir.path().join("second.sock");
        let (c, b, s) = (
            cache.to_str().unwrap(),
            blobs.to_str().unwrap(),
            sock.to_str().unwrap(),
        );
        // A limit that building an engine over the directory would evict to.
        let a = args(&[
            "--socket",
            s,
            "--cache-dir",
            c,
            "--blobs",
            b,
            "--cache-size",
            "4K",
        ]);
        let e = run(&a).unwrap_err().to_string();
        assert!(
            e.contains("is already managed by the blob manager at /run/first.sock"),
            "{e}"
        );
        assert!(snapshot(&cache) == before, "the directory was touched");
        assert!(!sock.exists());
    }
}
