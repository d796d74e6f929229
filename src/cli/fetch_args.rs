//! The fetch and cache engine's flags, one name per setting, shared by
//! every command that runs a [`Fetcher`](crate::fetch::Fetcher) (`mount`,
//! `prefetch`, and the blob manager): [`FetchArgs`] for the settings every
//! fetcher has, [`ReadArgs`] for those of on-demand reads (a mount; not
//! `prefetch`, which reads nothing). Both turn into a [`FetchConfig`] over
//! the command's own defaults; the mount's `--config` file has a key per
//! flag, with the same name.
//!
//! One parser per unit: sizes ([`parse_size`]), durations
//! ([`parse_duration`]) and bandwidths ([`parse_rate`]).

use crate::fetch::FetchConfig;
use crate::util::{parse_duration, parse_size};
use std::path::PathBuf;
use thiserror::Error;

/// A setting's value is invalid; the message names the flag.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct SettingError(pub String);

/// Engine settings every fetcher has.
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args)]
pub struct FetchArgs {
    /// Keep fetched data in DIR (sparse files + range bitmaps, reused
    /// across mounts and processes, crash-safe) [mount default: memory
    /// only].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Keep the disk cache under SIZE, evicting least recently used data
    /// (a prefetch stops when it is reached) [default: no limit].
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Fail a read with EIO if its data has not arrived after DURATION (a
    /// prefetch gives each frame 4 x DURATION plus the time the bandwidth
    /// limit needs) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub read_timeout: Option<String>,
    /// Largest range request when adjacent missing chunks are fetched
    /// together [default: 4M].
    #[arg(long, value_name = "SIZE")]
    pub max_request_size: Option<String>,
    /// Prefetch (background) requests in flight at most, each of at most
    /// 1 MiB [default: 4].
    #[arg(long, value_name = "N")]
    pub prefetch_threads: Option<usize>,
    /// Limit prefetch to RATE bytes per second, e.g. 50MiB/s, 10M or
    /// 500K/s (binary units) [default: no limit].
    #[arg(long, value_name = "RATE")]
    pub prefetch_bandwidth: Option<String>,
}

/// Settings of on-demand reads (a mount's, not `rafs prefetch`'s).
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args)]
pub struct ReadArgs {
    /// Backend requests of reads in flight at most [default: 8].
    #[arg(long, value_name = "N")]
    pub fetch_threads: Option<usize>,
    /// On a miss, also fetch the file's next SIZE bytes in the background,
    /// and after a small file's miss the small files stored after it; the
    /// start of the window of a read in stored order; the head of each
    /// library a program or library read cold needs, and at mount of the
    /// dynamic loader, C library, C.UTF-8 locale and time zone (0: all
    /// read-ahead off) [default: 1M].
    #[arg(long, value_name = "SIZE")]
    pub readahead: Option<String>,
    /// Once a file's reads miss at two places apart (a mapped executable
    /// or library), fetch the rest of it in the background if it is stored
    /// in at most SIZE bytes; an executable file read cold from its start,
    /// at once if stored in at most 4 x --readahead (0: off; only with a
    /// disk cache) [default: 64M].
    #[arg(long, value_name = "SIZE")]
    pub widen: Option<String>,
    /// Memory budget of the decompressed-chunk cache [default: 16M, 4M
    /// with a disk cache].
    #[arg(long, value_name = "SIZE")]
    pub chunk_cache_size: Option<String>,
}

/// Using the node's blob manager instead of a cache directory of one's
/// own (`rafs mount` and `rafs prefetch`; not the manager itself, so not
/// part of [`FetchArgs`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args)]
pub struct ManagerArgs {
    /// Use the node's blob manager listening at PATH for the disk cache
    /// (`rafs blobmgr`; instead of --cache-dir).
    #[arg(long, value_name = "PATH", conflicts_with = "cache_dir")]
    pub blob_manager: Option<PathBuf>,
    /// When the blob manager stays unreachable past the grace: fetch from
    /// the backend into memory (`fetch`), or keep waiting and fail reads
    /// at their deadline (`wait`) [default: fetch].
    #[arg(long, value_name = "fetch|wait")]
    pub blob_manager_fallback: Option<String>,
    /// How long the blob manager may be unreachable before the fallback
    /// applies [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub blob_manager_grace: Option<String>,
}

/// Default of `--blob-manager-grace`.
pub const DEFAULT_MANAGER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl ManagerArgs {
    /// Each setting of `self`, else of `other` (flags over a file).
    pub fn or(&self, other: ManagerArgs) -> ManagerArgs {
        ManagerArgs {
            blob_manager: self.blob_manager.clone().or(other.blob_manager),
            blob_manager_fallback: self
                .blob_manager_fallback
                .clone()
                .or(other.blob_manager_fallback),
            blob_manager_grace: self.blob_manager_grace.clone().or(other.blob_manager_grace),
        }
    }

    /// `f` using the blob manager if one is given (then no `--cache-dir`
    /// nor `--cache-size`: the manager owns the cache).
    pub fn to_config(&self, f: FetchConfig) -> Result<FetchConfig, SettingError> {
        use crate::blobmgr::client::{ClientConfig, Fallback};
        let Some(socket) = &self.blob_manager else {
            if self.blob_manager_fallback.is_some() || self.blob_manager_grace.is_some() {
                return Err(SettingError(
                    "--blob-manager-fallback and --blob-manager-grace need --blob-manager".into(),
                ));
            }
            return Ok(f);
        };
        if f.cache_dir.is_some() || f.cache_limit.is_some() {
            return Err(SettingError(
                "--blob-manager conflicts with --cache-dir and --cache-size (the manager owns the cache)"
                    .into(),
            ));
        }
        let fallback = match self.blob_manager_fallback.as_deref() {
            None | Some("fetch") => Fallback::Fetch,
            Some("wait") => Fallback::Wait,
            Some(o) => {
                return Err(SettingError(format!(
                    "--blob-manager-fallback: '{o}' is not 'fetch' or 'wait'"
                )))
            }
        };
        let grace = match &self.blob_manager_grace {
            Some(t) => {
                parse_duration(t).map_err(|e| SettingError(format!("--blob-manager-grace: {e}")))?
            }
            None => DEFAULT_MANAGER_GRACE,
        };
        Ok(FetchConfig {
            manager: Some(ClientConfig {
                socket: socket.clone(),
                fallback,
                grace,
            }),
            ..f
        })
    }
}

/// Parses a bandwidth like `50MiB/s`, `10M` or `500K/s` into bytes per
/// second (binary units as [`parse_size`]; the `/s` is optional; zero is
/// refused).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = match t.len().checked_sub(2).and_then(|i| t.get(i..)) {
        Some(tail) if tail.eq_ignore_ascii_case("/s") => &t[..t.len() - 2],
        _ => t,
    };
    match parse_size(t) {
        Ok(0) => Err(format!("rate '{s}' must be positive")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("invalid rate '{s}'")),
    }
}

fn size(flag: &str, v: Option<&String>) -> Result<Option<u64>, SettingError> {
    v.map(|t| parse_size(t).map_err(|e| SettingError(format!("--{flag}: {e}"))))
        .transpose()
}

fn count(flag: &str, v: Option<usize>) -> Result<Option<usize>, SettingError> {
    match v {
        Some(0) => Err(SettingError(format!("--{flag} must be at least 1"))),
        v => Ok(v),
    }
}

impl FetchArgs {
    /// Each setting of `self`, else of `other` (flags over a file).
    pub fn or(&self, other: FetchArgs) -> FetchArgs {
        FetchArgs {
            cache_dir: self.cache_dir.clone().or(other.cache_dir),
            cache_size: self.cache_size.clone().or(other.cache_size),
            read_timeout: self.read_timeout.clone().or(other.read_timeout),
            max_request_size: self.max_request_size.clone().or(other.max_request_size),
            prefetch_threads: self.prefetch_threads.or(other.prefetch_threads),
            prefetch_bandwidth: self.prefetch_bandwidth.clone().or(other.prefetch_bandwidth),
        }
    }

    /// `base` (the command's defaults) with the settings given here.
    pub fn to_config(&self, base: FetchConfig) -> Result<FetchConfig, SettingError> {
        let mut f = base;
        if let Some(d) = &self.cache_dir {
            f.cache_dir = Some(d.clone());
        }
        if let Some(n) = size("cache-size", self.cache_size.as_ref())? {
            f.cache_limit = Some(n);
        }
        if f.cache_limit.is_some() && f.cache_dir.is_none() {
            return Err(SettingError("--cache-size needs --cache-dir".into()));
        }
        if let Some(t) = &self.read_timeout {
            f.read_timeout =
                parse_duration(t).map_err(|e| SettingError(format!("--read-timeout: {e}")))?;
            if f.read_timeout.is_zero() {
                return Err(SettingError("--read-timeout must be positive".into()));
            }
        }
        if let Some(m) = size("max-request-size", self.max_request_size.as_ref())? {
            f.max_request = m.max(1);
        }
        if let Some(n) = count("prefetch-threads", self.prefetch_threads)? {
            f.prefetch_threads = n;
        }
        if let Some(r) = &self.prefetch_bandwidth {
            let rate =
                parse_rate(r).map_err(|e| SettingError(format!("--prefetch-bandwidth: {e}")))?;
            f.prefetch_bandwidth = Some(rate);
        }
        Ok(f)
    }
}

/// The decompressed-chunk cache's default budget when a disk cache (a
/// directory or the blob manager's) holds every fetched frame: just-read
/// frames are then found in the disk cache's pages or in the committer's
/// backlog, and the memory LRU only saves a `pread`.
pub const DISK_BACKED_CHUNK_CACHE: usize = 4 << 20;

impl ReadArgs {
    /// `f` with the smaller chunk-cache default when it has a disk cache
    /// and `--chunk-cache-size` was not given.
    pub fn disk_backed(&self, mut f: FetchConfig) -> FetchConfig {
        let disk = f.cache_dir.is_some() || f.manager.is_some();
        if disk && self.chunk_cache_size.is_none() {
            f.memory_bytes = f.memory_bytes.min(DISK_BACKED_CHUNK_CACHE);
        }
        f
    }

    /// Each setting of `self`, else of `other` (flags over a file).
    pub fn or(&self, other: ReadArgs) -> ReadArgs {
        ReadArgs {
            fetch_threads: self.fetch_threads.or(other.fetch_threads),
            readahead: self.readahead.clone().or(other.readahead),
            widen: self.widen.clone().or(other.widen),
            chunk_cache_size: self.chunk_cache_size.clone().or(other.chunk_cache_size),
        }
    }

    /// `base` with the settings given here.
    pub fn to_config(&self, base: FetchConfig) -> Result<FetchConfig, SettingError> {
        let mut f = base;
        if let Some(n) = count("fetch-threads", self.fetch_threads)? {
            f.concurrency = n;
        }
        if let Some(r) = size("readahead", self.readahead.as_ref())? {
            f.readahead = r;
        }
        if let Some(w) = size("widen", self.widen.as_ref())? {
            f.widen = w;
        }
        if let Some(n) = size("chunk-cache-size", self.chunk_cache_size.as_ref())? {
            f.memory_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;
    use std::time::Duration;

    /// Every shared flag with a value, as `rafs mount` and `rafs prefetch`
    /// both take them.
    const SHARED: &[&str] = &[
        "--cache-dir",
        "/c",
        "--cache-size",
        "64M",
        "--read-timeout",
        "2s",
        "--max-request-size",
        "1M",
        "--prefetch-threads",
        "3",
        "--prefetch-bandwidth",
        "1MiB/s",
    ];

    fn parse(cmd: &[&str], extra: &[&str]) -> Result<Cli, clap::Error> {
        let argv = ["rafs"].iter().chain(cmd).chain(extra);
        Cli::try_parse_from(argv)
    }

    fn shared(cli: &Cli) -> FetchArgs {
        match &cli.command {
            crate::cli::Command::Mount(m) => m.fetch.clone(),
            crate::cli::Command::Prefetch(p) => p.fetch.clone(),
            _ => unreachable!(),
        }
    }

    const MOUNT: &[&str] = &["mount", "/b", "/m", "--blobs", "/d"];
    const PREFETCH: &[&str] = &["prefetch", "/b", "--all", "--blobs", "/d"];

    #[test]
    fn same_flags_parse_the_same_in_mount_and_prefetch() {
        let m = shared(&parse(MOUNT, SHARED).unwrap());
        let p = shared(&parse(PREFETCH, SHARED).unwrap());
        assert_eq!(m, p);
        let cfg = m.to_config(FetchConfig::default()).unwrap();
        assert_eq!(cfg.cache_dir, Some(PathBuf::from("/c")));
        assert_eq!(cfg.cache_limit, Some(64 << 20));
        assert_eq!(cfg.read_timeout, Duration::from_secs(2));
        assert_eq!(cfg.max_request, 1 << 20);
        assert_eq!(cfg.prefetch_threads, 3);
        assert_eq!(cfg.prefetch_bandwidth, Some(1 << 20));
    }

    #[test]
    fn old_and_foreign_names_are_rejected() {
        for (cmd, flag) in [
            (PREFETCH, "--jobs"),
            (PREFETCH, "--bandwidth"),
            // On-demand read settings mean nothing to `rafs prefetch`.
            (PREFETCH, "--fetch-threads"),
            (PREFETCH, "--readahead"),
            (PREFETCH, "--widen"),
            (PREFETCH, "--chunk-cache-size"),
            (MOUNT, "--jobs"),
            (MOUNT, "--bandwidth"),
        ] {
            let mut extra = vec![flag, "2"];
            if cmd == PREFETCH {
                extra.extend(["--cache-dir", "/c"]);
            }
            assert!(parse(cmd, &extra).is_err(), "{} {flag}", cmd[0]);
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        let bad = |extra: &[&str]| {
            let a = shared(&parse(PREFETCH, extra).unwrap());
            a.to_config(FetchConfig::default()).unwrap_err().0
        };
        let c = ["--cache-dir", "/c"];
        for (flag, v) in [
            ("--prefetch-threads", "0"),
            ("--prefetch-bandwidth", "0"),
            ("--prefetch-bandwidth", "fast"),
            ("--cache-size", "lots"),
            ("--read-timeout", "0s"),
            ("--max-request-size", "1Q"),
        ] {
            let e = bad(&[&c[..], &[flag, v]].concat());
            assert!(e.contains(flag), "{flag} {v}: {e}");
        }
        let a = FetchArgs {
            cache_size: Some("1M".into()),
            ..FetchArgs::default()
        };
        assert!(a.to_config(FetchConfig::default()).is_err(), "no cache dir");
        let r = ReadArgs {
            fetch_threads: Some(0),
            ..ReadArgs::default()
        };
        assert!(r
            .to_config(FetchConfig::default())
            .unwrap_err()
            .0
            .contains("--fetch-threads"));
    }

    #[test]
    fn flags_override_the_other_source() {
        let flags = FetchArgs {
            prefetch_threads: Some(3),
            ..FetchArgs::default()
        };
        let file = FetchArgs {
            prefetch_threads: Some(9),
            read_timeout: Some("5s".into()),
            ..FetchArgs::default()
        };
        let m = flags.or(file);
        assert_eq!(m.prefetch_threads, Some(3));
        assert_eq!(m.read_timeout.as_deref(), Some("5s"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("500K/s"), Ok(500 << 10));
        assert_eq!(parse_rate("2mib/S"), Ok(2 << 20));
        assert_eq!(parse_rate(" 4096 "), Ok(4096));
        assert_eq!(parse_rate("1KB/s"), Ok(1024));
        assert_eq!(parse_rate(" 64KiB/s "), Ok(64 << 10));
        for bad in [
            "0",
            "0/s",
            "0K/s",
            "fast",
            "/s",
            "",
            "10X/s",
            "-1M",
            "5 parsecs",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    fn manager(cli: &Cli) -> ManagerArgs {
        match &cli.command {
            crate::cli::Command::Mount(m) => m.manager.clone(),
            crate::cli::Command::Prefetch(p) => p.manager.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn blob_manager_flags() {
        use crate::blobmgr::client::Fallback;
        let flags = [
            "--blob-manager",
            "/run/bm.sock",
            "--blob-manager-fallback",
            "wait",
            "--blob-manager-grace",
            "750ms",
        ];
        for cmd in [MOUNT, PREFETCH] {
            let m = manager(&parse(cmd, &flags).unwrap());
            let cfg = m.to_config(FetchConfig::default()).unwrap();
            let c = cfg.manager.unwrap();
            assert_eq!(c.socket, PathBuf::from("/run/bm.sock"));
            assert_eq!(c.fallback, Fallback::Wait);
            assert_eq!(c.grace, Duration::from_millis(750));
            assert_eq!(cfg.cache_dir, None);
            // Defaults.
            let m = manager(&parse(cmd, &flags[..2]).unwrap());
            let c = m
                .to_config(FetchConfig::default())
                .unwrap()
                .manager
                .unwrap();
            assert_eq!(
                (c.fallback, c.grace),
                (Fallback::Fetch, DEFAULT_MANAGER_GRACE)
            );
            // Not with a cache dir of one's own.
            assert!(parse(cmd, &["--blob-manager", "/s", "--cache-dir", "/c"]).is_err());
            let bad = manager(
                &parse(
                    cmd,
                    &["--blob-manager", "/s", "--blob-manager-fallback", "x"],
                )
                .unwrap(),
            );
            let e = bad.to_config(FetchConfig::default()).unwrap_err().0;
            assert!(e.contains("--blob-manager-fallback"), "{e}");
            let bad = manager(
                &parse(
                    cmd,
                    &["--blob-manager", "/s", "--blob-manager-grace", "soon"],
                )
                .unwrap(),
            );
            let e = bad.to_config(FetchConfig::default()).unwrap_err().0;
            assert!(e.contains("--blob-manager-grace"), "{e}");
            let alone =
                manager(&parse(cmd, &["--blob-manager-grace", "1s", "--cache-dir", "/c"]).unwrap());
            assert!(
                alone.to_config(FetchConfig::default()).is_err(),
                "grace without a manager"
            );
        }
        // `rafs prefetch` needs one of the two.
        assert!(parse(PREFETCH, &[]).is_err());
        assert!(parse(PREFETCH, &["--blob-manager", "/s"]).is_ok());
    }
}
