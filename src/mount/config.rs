//! `rafs mount` settings: command-line flags, an optional TOML file
//! (`--config`), and their merge into one [`MountConfig`].
//!
//! The file's keys mirror the long flags (`api_socket` or `api-socket`);
//! an unknown key is an error, so a typo never silently falls back to a
//! default. A flag overrides the file's value; `--blobs` and `--backend`
//! are one setting (where blobs live), so either flag overrides either key.
//! Relative paths in the file are relative to the file's directory.
//! Of the network backend flags only `registry-token-realm` has a key (a
//! string or a list); `allow-other`, `suid` and `dev` can only turn on
//! what is off by default.

use super::MountError;
use crate::backend::args::BackendArgs;
use crate::backend::url::BackendUrl;
use crate::backend::BackendOptions;
use crate::fetch::FetchConfig;
use crate::util::{parse_duration, parse_size};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default budget of the decompressed-chunk LRU.
pub const DEFAULT_CHUNK_CACHE: &str = "16M";

/// Arguments of `rafs mount`.
#[derive(Debug, Default, clap::Args)]
pub struct MountArgs {
    /// The bootstrap to serve (or `bootstrap` in --config).
    pub bootstrap: Option<PathBuf>,
    /// An existing, empty directory to mount on (or `mountpoint` in
    /// --config).
    pub mountpoint: Option<PathBuf>,
    /// Blobs are files named by their sha256 hex in DIR (same as
    /// --backend file:///DIR).
    #[arg(long, value_name = "DIR", conflicts_with = "backend")]
    pub blobs: Option<PathBuf>,
    /// Where blobs live, as a URL. file:///DIR, http(s)://HOST/PATH,
    /// registry://HOST/REPO, registry+http://HOST/REPO, s3://BUCKET/PREFIX.
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,
    /// TOML file with any of the settings below (keys as the long flags,
    /// `_` or `-`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// FUSE worker threads [default: max(4, cores)].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Serve GET /status and /metrics over HTTP on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Memory budget of the decompressed-chunk cache [default: 16M].
    #[arg(long, value_name = "SIZE")]
    pub chunk_cache_size: Option<String>,
    /// Let users other than the mounting one access the mount (FUSE
    /// `allow_other`) [default: off, only the mounting user may].
    #[arg(long)]
    pub allow_other: bool,
    /// Honour the image's setuid and setgid bits (root only) [default:
    /// off, the mount is `nosuid`].
    #[arg(long)]
    pub suid: bool,
    /// Make the image's device nodes usable (root only) [default: off, the
    /// mount is `nodev`].
    #[arg(long)]
    pub dev: bool,
    /// Keep fetched data in DIR (sparse files + range bitmaps, reused
    /// across mounts and crash-safe) [default: memory only].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Keep the disk cache under SIZE, evicting least recently used data
    /// [default: no limit].
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Fail a read with EIO if its data has not arrived after DURATION
    /// [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub read_timeout: Option<String>,
    /// Largest range request when adjacent missing chunks are fetched
    /// together [default: 4M].
    #[arg(long, value_name = "SIZE")]
    pub max_request_size: Option<String>,
    /// On a miss, also fetch the file's next SIZE bytes in the background
    /// (0: off) [default: 1M].
    #[arg(long, value_name = "SIZE")]
    pub readahead: Option<String>,
    /// Backend requests in flight at most [default: 8].
    #[arg(long, value_name = "N")]
    pub fetch_threads: Option<usize>,
    /// After mounting, prefetch the paths of this list (the format
    /// --record-access writes) in the background instead of the image's
    /// prefetch table; paths not in the image are skipped.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prefetch_all", "no_prefetch"])]
    pub prefetch_list: Option<PathBuf>,
    /// After mounting, prefetch every blob in the background.
    #[arg(long, conflicts_with = "no_prefetch")]
    pub prefetch_all: bool,
    /// Do not prefetch the image's prefetch table after mounting [default:
    /// it is prefetched].
    #[arg(long)]
    pub no_prefetch: bool,
    /// Prefetch requests in flight at most [default: 2].
    #[arg(long, value_name = "N")]
    pub prefetch_threads: Option<usize>,
    /// Limit prefetch to RATE bytes per second, e.g. 50MiB/s [default: no
    /// limit].
    #[arg(long, value_name = "RATE")]
    pub prefetch_bandwidth: Option<String>,
    /// Record which files are read, in first-access order, with the byte
    /// ranges read, and write them to FILE (a prefetch list) on unmount,
    /// on SIGUSR1 and on POST /record.
    #[arg(long, value_name = "FILE")]
    pub record_access: Option<PathBuf>,
    /// Network backend settings.
    #[command(flatten)]
    pub net: BackendArgs,
}

/// A size given in the file as a number of bytes or a string like "64M".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// A key that takes one string or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bootstrap: Option<PathBuf>,
    mountpoint: Option<PathBuf>,
    blobs: Option<PathBuf>,
    backend: Option<String>,
    threads: Option<usize>,
    #[serde(alias = "api-socket")]
    api_socket: Option<PathBuf>,
    #[serde(alias = "chunk-cache-size")]
    chunk_cache_size: Option<Size>,
    #[serde(alias = "allow-other")]
    allow_other: Option<bool>,
    suid: Option<bool>,
    dev: Option<bool>,
    #[serde(alias = "cache-dir")]
    cache_dir: Option<PathBuf>,
    #[serde(alias = "cache-size")]
    cache_size: Option<Size>,
    #[serde(alias = "read-timeout")]
    read_timeout: Option<String>,
    #[serde(alias = "max-request-size")]
    max_request_size: Option<Size>,
    #[serde(alias = "fetch-threads")]
    fetch_threads: Option<usize>,
    readahead: Option<Size>,
    #[serde(alias = "prefetch-list")]
    prefetch_list: Option<PathBuf>,
    #[serde(alias = "prefetch-all")]
    prefetch_all: Option<bool>,
    #[serde(alias = "no-prefetch")]
    no_prefetch: Option<bool>,
    #[serde(alias = "prefetch-threads")]
    prefetch_threads: Option<usize>,
    #[serde(alias = "prefetch-bandwidth")]
    prefetch_bandwidth: Option<Size>,
    #[serde(alias = "record-access")]
    record_access: Option<PathBuf>,
    #[serde(alias = "registry-token-realm")]
    registry_token_realm: Option<OneOrMany>,
}

impl FileConfig {
    fn parse(text: &str, path: &Path) -> Result<FileConfig, MountError> {
        let mut f: FileConfig = toml::from_str(text).map_err(|e| MountError::ConfigSyntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut f.bootstrap,
            &mut f.mountpoint,
            &mut f.blobs,
            &mut f.api_socket,
            &mut f.cache_dir,
            &mut f.prefetch_list,
            &mut f.record_access,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(f)
    }
}

/// Everything `rafs mount` needs, merged and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountConfig {
    /// Bootstrap path.
    pub bootstrap: PathBuf,
    /// Mountpoint.
    pub mountpoint: PathBuf,
    /// Where blobs live.
    pub backend: BackendUrl,
    /// Network backend settings.
    pub backend_options: BackendOptions,
    /// FUSE worker threads (at least 1).
    pub threads: usize,
    /// API socket, if any.
    pub api_socket: Option<PathBuf>,
    /// Chunk LRU budget in bytes.
    pub chunk_cache_bytes: u64,
    /// Disk cache, deadlines and fetch tuning (its `memory_bytes` is
    /// `chunk_cache_bytes`).
    pub fetch: FetchConfig,
    /// Whether other users may access the mount (`allow_other`).
    pub allow_other: bool,
    /// Whether setuid/setgid bits are honoured (else `nosuid`).
    pub suid: bool,
    /// Whether device nodes work (else `nodev`).
    pub dev: bool,
    /// What to prefetch after mounting.
    pub prefetch: PrefetchSource,
    /// Where to write the access record, if recording.
    pub record_access: Option<PathBuf>,
}

/// What a mount prefetches in the background once it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchSource {
    /// The image's prefetch table, if it has one (the default).
    Table,
    /// The entries of a list file.
    List(PathBuf),
    /// Every blob.
    All,
    /// Nothing (`--no-prefetch`).
    Off,
}

/// The default worker count: max(4, cores).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}

fn backend_of(
    blobs: Option<&PathBuf>,
    backend: Option<&String>,
) -> Result<Option<BackendUrl>, MountError> {
    match (blobs, backend) {
        (Some(_), Some(_)) => Err(MountError::BlobsAndBackend),
        (Some(dir), None) => Ok(Some(BackendUrl::from_dir(dir))),
        (None, Some(url)) => Ok(Some(BackendUrl::parse(url)?)),
        (None, None) => Ok(None),
    }
}

fn size_of(s: &Size) -> Result<u64, MountError> {
    match s {
        Size::Bytes(n) => Ok(*n),
        Size::Text(t) => parse_size(t).map_err(MountError::Size),
    }
}

impl MountConfig {
    /// Reads `--config` if given and merges it under the flags.
    /// `is_root`: whether `suid` and `dev` may be asked for.
    pub fn resolve(args: &MountArgs, is_root: bool) -> Result<MountConfig, MountError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| MountError::Config {
                    path: path.clone(),
                    source,
                })?;
                FileConfig::parse(&text, path)?
            }
            None => FileConfig::default(),
        };
        Self::merge(args, file, is_root)
    }

    fn merge(args: &MountArgs, file: FileConfig, is_root: bool) -> Result<MountConfig, MountError> {
        let fetch = fetch_config(args, &file)?;
        let prefetch = prefetch_source(args, &file)?;
        let access = access_policy(args, &file, is_root)?;
        let mut backend_options = args
            .net
            .options()
            .map_err(|e| MountError::Flag(format!("--request-timeout: {e}")))?;
        if backend_options.registry_token_realms.is_empty() {
            if let Some(realms) = file.registry_token_realm.clone() {
                backend_options.registry_token_realms = realms.into_vec();
            }
        }
        let bootstrap = args
            .bootstrap
            .clone()
            .or(file.bootstrap)
            .ok_or(MountError::Missing("bootstrap"))?;
        let mountpoint = args
            .mountpoint
            .clone()
            .or(file.mountpoint)
            .ok_or(MountError::Missing("mountpoint"))?;
        let backend = match backend_of(args.blobs.as_ref(), args.backend.as_ref())? {
            Some(b) => b,
            None => backend_of(file.blobs.as_ref(), file.backend.as_ref())?
                .ok_or(MountError::Missing("blobs (--blobs DIR or --backend URL)"))?,
        };
        let threads = args
            .threads
            .or(file.threads)
            .unwrap_or_else(default_threads);
        if threads == 0 {
            return Err(MountError::Threads);
        }
        let chunk_cache_bytes = match (&args.chunk_cache_size, &file.chunk_cache_size) {
            (Some(t), _) => parse_size(t).map_err(MountError::Size)?,
            (None, Some(s)) => size_of(s)?,
            (None, None) => parse_size(DEFAULT_CHUNK_CACHE).map_err(MountError::Size)?,
        };
        Ok(MountConfig {
            bootstrap,
            mountpoint,
            backend,
            backend_options,
            threads,
            api_socket: args.api_socket.clone().or(file.api_socket),
            chunk_cache_bytes,
            fetch: FetchConfig {
                memory_bytes: usize::try_from(chunk_cache_bytes).unwrap_or(usize::MAX),
                ..fetch
            },
            allow_other: access.allow_other,
            suid: access.suid,
            dev: access.dev,
            prefetch,
            record_access: args.record_access.clone().or(file.record_access),
        })
    }
}

/// Who may use the mount and what of the image is honoured; each is off
/// unless its flag or key turns it on.
struct Access {
    allow_other: bool,
    suid: bool,
    dev: bool,
}

/// The opt-in access settings. An untrusted image's setuid binaries and
/// device nodes must not be live by default, and only root can make them
/// live at all (fusermount3 forces `nosuid,nodev`), so asking for them
/// without root is an error rather than a silent no-op.
fn access_policy(args: &MountArgs, file: &FileConfig, is_root: bool) -> Result<Access, MountError> {
    let on = |flag: bool, key: Option<bool>| flag || key.unwrap_or(false);
    let a = Access {
        allow_other: on(args.allow_other, file.allow_other),
        suid: on(args.suid, file.suid),
        dev: on(args.dev, file.dev),
    };
    for (set, name) in [(a.suid, "suid"), (a.dev, "dev")] {
        if set && !is_root {
            return Err(MountError::Flag(format!("{name} needs root")));
        }
    }
    Ok(a)
}

/// The prefetch choice: any of the three flags, else the file's keys.
fn prefetch_source(args: &MountArgs, file: &FileConfig) -> Result<PrefetchSource, MountError> {
    let pick = |list: Option<&PathBuf>, all: bool, off: bool| match (list, all, off) {
        (None, false, false) => Ok(None),
        (Some(l), false, false) => Ok(Some(PrefetchSource::List(l.clone()))),
        (None, true, false) => Ok(Some(PrefetchSource::All)),
        (None, false, true) => Ok(Some(PrefetchSource::Off)),
        _ => Err(MountError::Flag(
            "set only one of prefetch-list, prefetch-all and no-prefetch".into(),
        )),
    };
    let flags = pick(
        args.prefetch_list.as_ref(),
        args.prefetch_all,
        args.no_prefetch,
    )?;
    let keys = pick(
        file.prefetch_list.as_ref(),
        file.prefetch_all.unwrap_or(false),
        file.no_prefetch.unwrap_or(false),
    )?;
    Ok(flags.or(keys).unwrap_or(PrefetchSource::Table))
}

/// Parses a bandwidth like `50MiB/s`, `10M` or `1048576` (binary units,
/// `/s` optional) into bytes per second; zero is refused.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    match parse_size(t) {
        Ok(0) => Err(format!("rate '{s}' must be positive")),
        Ok(n) => Ok(n),
        Err(e) => Err(e.replace("size", "rate")),
    }
}

/// The prefetch lane's settings of flags and file.
fn prefetch_tuning(
    args: &MountArgs,
    file: &FileConfig,
    f: &mut FetchConfig,
) -> Result<(), MountError> {
    match args.prefetch_threads.or(file.prefetch_threads) {
        Some(0) => {
            return Err(MountError::Flag(
                "prefetch threads must be at least 1".into(),
            ))
        }
        Some(n) => f.prefetch_threads = n,
        None => {}
    }
    let bad = |e: String| MountError::Flag(format!("prefetch bandwidth: {e}"));
    f.prefetch_bandwidth = match (&args.prefetch_bandwidth, &file.prefetch_bandwidth) {
        (Some(t), _) | (None, Some(Size::Text(t))) => Some(parse_rate(t).map_err(bad)?),
        (None, Some(Size::Bytes(0))) => return Err(bad("rate must be positive".into())),
        (None, Some(Size::Bytes(n))) => Some(*n),
        (None, None) => None,
    };
    Ok(())
}

/// A size flag, else the file's key, else `None`.
fn size_setting(
    flag: Option<&String>,
    key: Option<&Size>,
    name: &str,
) -> Result<Option<u64>, MountError> {
    let bad = |e: String| MountError::Flag(format!("{name}: {e}"));
    match (flag, key) {
        (Some(t), _) => parse_size(t).map(Some).map_err(bad),
        (None, Some(Size::Bytes(n))) => Ok(Some(*n)),
        (None, Some(Size::Text(t))) => parse_size(t).map(Some).map_err(bad),
        (None, None) => Ok(None),
    }
}

/// The fetch settings of flags and file (all but the memory budget).
fn fetch_config(args: &MountArgs, file: &FileConfig) -> Result<FetchConfig, MountError> {
    let mut f = FetchConfig {
        cache_dir: args.cache_dir.clone().or(file.cache_dir.clone()),
        ..FetchConfig::default()
    };
    f.cache_limit = size_setting(
        args.cache_size.as_ref(),
        file.cache_size.as_ref(),
        "cache size",
    )?;
    if f.cache_limit.is_some() && f.cache_dir.is_none() {
        return Err(MountError::Flag("--cache-size needs --cache-dir".into()));
    }
    let max = size_setting(
        args.max_request_size.as_ref(),
        file.max_request_size.as_ref(),
        "max request size",
    )?;
    if let Some(m) = max {
        f.max_request = m.max(1);
    }
    if let Some(r) = size_setting(
        args.readahead.as_ref(),
        file.readahead.as_ref(),
        "readahead",
    )? {
        f.readahead = r;
    }
    if let Some(t) = args.read_timeout.as_ref().or(file.read_timeout.as_ref()) {
        f.read_timeout =
            parse_duration(t).map_err(|e| MountError::Flag(format!("read timeout: {e}")))?;
        if f.read_timeout.is_zero() {
            return Err(MountError::Flag("read timeout must be positive".into()));
        }
    }
    match args.fetch_threads.or(file.fetch_threads) {
        Some(0) => return Err(MountError::Flag("fetch threads must be at least 1".into())),
        Some(n) => f.concurrency = n,
        None => {}
    }
    prefetch_tuning(args, file, &mut f)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: MountArgs,
    }

    fn args(argv: &[&str]) -> MountArgs {
        let mut v = vec!["mount"];
        v.extend_from_slice(argv);
        Cmd::try_parse_from(v).unwrap().args
    }

    fn file(text: &str) -> Result<FileConfig, MountError> {
        FileConfig::parse(text, Path::new("/etc/rafs/m.toml"))
    }

    #[test]
    fn flags_only() {
        let c = MountConfig::merge(
            &args(&["/b", "/m", "--blobs", "/blobs", "--threads", "3"]),
            FileConfig::default(),
            false,
        )
        .unwrap();
        assert_eq!(c.bootstrap, Path::new("/b"));
        assert_eq!(c.mountpoint, Path::new("/m"));
        assert_eq!(c.backend, BackendUrl::File("/blobs".into()));
        assert_eq!(c.threads, 3);
        assert_eq!(c.chunk_cache_bytes, 16 << 20);
        assert_eq!(c.api_socket, None);
        assert!(!c.allow_other);
        let root = MountConfig::merge(
            &args(&["/b", "/m", "--backend", "file:///x"]),
            FileConfig::default(),
            true,
        )
        .unwrap();
        // Root too: other users, setuid bits and devices are opt-in.
        assert!(!root.allow_other && !root.suid && !root.dev);
        assert_eq!(root.backend, BackendUrl::File("/x".into()));
        assert_eq!(root.threads, default_threads());
        assert!(root.threads >= 4);
    }

    #[test]
    fn file_then_flags() {
        let f = file(
            "bootstrap = 'img/boot'\nmountpoint = '/mnt'\nbackend = 'file:///blobs'\n\
             threads = 8\napi-socket = '/run/rafs.sock'\nchunk_cache_size = '16M'\n\
             allow-other = false\n",
        )
        .unwrap();
        assert_eq!(
            f.bootstrap.as_deref(),
            Some(Path::new("/etc/rafs/img/boot"))
        );
        let c = MountConfig::merge(&args(&[]), f, true).unwrap();
        assert_eq!(c.bootstrap, Path::new("/etc/rafs/img/boot"));
        assert_eq!(c.threads, 8);
        assert_eq!(c.chunk_cache_bytes, 16 << 20);
        assert_eq!(c.api_socket.as_deref(), Some(Path::new("/run/rafs.sock")));
        assert!(!c.allow_other);

        let f = file("blobs = '/fileblobs'\nthreads = 8\nchunk-cache-size = 1024\n").unwrap();
        let c = MountConfig::merge(
            &args(&[
                "/b",
                "/m",
                "--backend",
                "file:///flagblobs",
                "--threads",
                "2",
                "--allow-other",
            ]),
            f,
            false,
        )
        .unwrap();
        assert_eq!(c.backend, BackendUrl::File("/flagblobs".into()));
        assert_eq!(c.threads, 2);
        assert_eq!(c.chunk_cache_bytes, 1024);
        assert!(c.allow_other);
    }

    #[test]
    fn access_is_opt_in() {
        let merge = |a: &[&str], f: &str, root: bool| {
            let mut v = vec!["/b", "/m", "--blobs", "/d"];
            v.extend_from_slice(a);
            MountConfig::merge(&args(&v), file(f).unwrap(), root)
        };
        let access = |c: MountConfig| (c.allow_other, c.suid, c.dev);
        assert_eq!(access(merge(&[], "", true).unwrap()), (false, false, false));
        assert_eq!(
            access(merge(&["--allow-other", "--suid", "--dev"], "", true).unwrap()),
            (true, true, true)
        );
        assert_eq!(
            access(merge(&["--suid"], "", true).unwrap()),
            (false, true, false)
        );
        assert_eq!(
            access(merge(&[], "allow-other = true\nsuid = true\ndev = true", true).unwrap()),
            (true, true, true)
        );
        assert_eq!(
            access(merge(&[], "suid = false\ndev = false\nallow_other = false", true).unwrap()),
            (false, false, false)
        );
        // A flag turns on what the file leaves off.
        assert_eq!(
            access(merge(&["--dev"], "dev = false", true).unwrap()),
            (false, false, true)
        );
        // allow_other is the FUSE configuration's business for a user;
        // setuid bits and devices can only ever be live for root.
        assert!(merge(&["--allow-other"], "", false).unwrap().allow_other);
        for (a, f) in [
            (&["--suid"][..], ""),
            (&["--dev"][..], ""),
            (&[][..], "dev = true"),
        ] {
            assert!(
                matches!(merge(a, f, false), Err(MountError::Flag(_))),
                "{a:?} {f}"
            );
        }
        // The old opt-out flag is gone: allow_other is never on by default.
        let v = ["m", "/b", "/m", "--blobs", "/d", "--no-allow-other"];
        assert!(Cmd::try_parse_from(v).is_err());
    }

    #[test]
    fn prefetch_settings() {
        let merge = |a: &[&str], f: &str| {
            let mut v = vec!["/b", "/m", "--blobs", "/d"];
            v.extend_from_slice(a);
            MountConfig::merge(&args(&v), file(f).unwrap(), false)
        };
        let c = merge(&[], "").unwrap();
        assert_eq!(c.prefetch, PrefetchSource::Table);
        assert_eq!(c.record_access, None);
        assert_eq!(
            c.fetch.prefetch_threads,
            FetchConfig::default().prefetch_threads
        );
        assert_eq!(c.fetch.prefetch_bandwidth, None);
        let c = merge(
            &[
                "--prefetch-list",
                "/l",
                "--prefetch-threads",
                "3",
                "--prefetch-bandwidth",
                "50MiB/s",
                "--record-access",
                "/r",
            ],
            "prefetch-all = true\nprefetch-bandwidth = '1K'\n",
        )
        .unwrap();
        assert_eq!(c.prefetch, PrefetchSource::List("/l".into()));
        assert_eq!(c.fetch.prefetch_threads, 3);
        assert_eq!(c.fetch.prefetch_bandwidth, Some(50 << 20));
        assert_eq!(c.record_access.as_deref(), Some(Path::new("/r")));
        let c = merge(
            &[],
            "prefetch_list = 'hot.list'\nrecord-access = 'rec'\nprefetch-threads = 4\n\
             prefetch-bandwidth = 1000\n",
        )
        .unwrap();
        assert_eq!(
            c.prefetch,
            PrefetchSource::List("/etc/rafs/hot.list".into())
        );
        assert_eq!(c.record_access.as_deref(), Some(Path::new("/etc/rafs/rec")));
        assert_eq!(c.fetch.prefetch_threads, 4);
        assert_eq!(c.fetch.prefetch_bandwidth, Some(1000));
        let c = merge(&["--no-prefetch"], "prefetch-all = true").unwrap();
        assert_eq!(c.prefetch, PrefetchSource::Off);
        let c = merge(&[], "no-prefetch = true").unwrap();
        assert_eq!(c.prefetch, PrefetchSource::Off);
        assert_eq!(
            merge(&["--prefetch-all"], "").unwrap().prefetch,
            PrefetchSource::All
        );
        for (a, f) in [
            (&["--prefetch-threads", "0"][..], ""),
            (&["--prefetch-bandwidth", "0"][..], ""),
            (&["--prefetch-bandwidth", "fast"][..], ""),
            (&[][..], "prefetch-all = true\nno-prefetch = true"),
            (&[][..], "prefetch-bandwidth = 0"),
        ] {
            assert!(matches!(merge(a, f), Err(MountError::Flag(_))), "{a:?} {f}");
        }
        for bad in [
            &["--prefetch-all", "--no-prefetch"][..],
            &["--prefetch-list", "/l", "--prefetch-all"][..],
        ] {
            let mut v = vec!["m", "/b", "/m", "--blobs", "/d"];
            v.extend_from_slice(bad);
            assert!(Cmd::try_parse_from(v).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_realms_from_flags_or_file() {
        let merge = |a: &[&str], f: &str| {
            let mut v = vec!["/b", "/m", "--backend", "registry://r/x"];
            v.extend_from_slice(a);
            MountConfig::merge(&args(&v), file(f).unwrap(), false).unwrap()
        };
        let realms = |c: MountConfig| c.backend_options.registry_token_realms;
        assert!(realms(merge(&[], "")).is_empty());
        assert_eq!(
            realms(merge(&[], "registry-token-realm = 'https://a/t'")),
            ["https://a/t"]
        );
        assert_eq!(
            realms(merge(
                &[],
                "registry_token_realm = ['https://a/t', 'https://b/t']"
            )),
            ["https://a/t", "https://b/t"]
        );
        assert_eq!(
            realms(merge(
                &[
                    "--registry-token-realm",
                    "https://c/t",
                    "--registry-token-realm",
                    "https://d/t"
                ],
                "registry-token-realm = 'https://a/t'"
            )),
            ["https://c/t", "https://d/t"]
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate(" 4096 "), Ok(4096));
        assert_eq!(parse_rate("1KB/s"), Ok(1024));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5 parsecs").is_err());
    }

    #[test]
    fn rejected() {
        let e = file("bootstrap = '/b'\nthread = 4\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `thread`"), "{e}");
        assert!(file("threads = 'many'").is_err());
        assert!(file("not toml at all [").is_err());
        let merge = |a: &[&str], f: &str| MountConfig::merge(&args(a), file(f).unwrap(), false);
        assert!(matches!(
            merge(&["/m"], "blobs = '/d'"),
            Err(MountError::Missing("mountpoint"))
        ));
        assert!(matches!(
            merge(&[], "mountpoint = '/m'\nblobs = '/d'"),
            Err(MountError::Missing("bootstrap"))
        ));
        assert!(matches!(
            merge(&["/b", "/m"], ""),
            Err(MountError::Missing(_))
        ));
        assert!(matches!(
            merge(&["/b", "/m"], "blobs = '/d'\nbackend = 'file:///d'"),
            Err(MountError::BlobsAndBackend)
        ));
        assert!(matches!(
            merge(&["/b", "/m", "--backend", "s3://x"], ""),
            Err(MountError::Url(_))
        ));
        assert!(matches!(
            merge(&["/b", "/m", "--blobs", "/d", "--threads", "0"], ""),
            Err(MountError::Threads)
        ));
        assert!(matches!(
            merge(
                &["/b", "/m", "--blobs", "/d", "--chunk-cache-size", "1Q"],
                ""
            ),
            Err(MountError::Size(_))
        ));
        // --blobs and --backend together are refused by clap.
        assert!(
            Cmd::try_parse_from(["m", "/b", "/m", "--blobs", "/d", "--backend", "file:///d"])
                .is_err()
        );
    }
}
