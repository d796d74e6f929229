//! `rafs prefetch` flags, turned into a [`PrefetchJob`]. The engine
//! settings are the shared [`FetchArgs`] (the same flag names as `rafs
//! mount`); `--prefetch-threads` and `--prefetch-bandwidth` drive the run,
//! which is all background-lane work.

use super::backend_args::BackendArgs;
use super::fetch_args::{FetchArgs, ManagerArgs};
use crate::backend::url::BackendUrl;
use crate::prefetch::cli::{default_config, PrefetchError, PrefetchJob};
use std::path::PathBuf;

/// Arguments of `rafs prefetch`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("work").required(true).multiple(true).args(["paths", "list", "all"])
))]
#[command(group(
    clap::ArgGroup::new("source").required(true).args(["blobs", "backend"])
))]
#[command(group(
    clap::ArgGroup::new("cache").required(true).args(["cache_dir", "blob_manager"])
))]
pub struct PrefetchArgs {
    /// The image's bootstrap.
    pub bootstrap: PathBuf,
    /// Paths inside the image (leading `/` optional); directories are
    /// prefetched recursively.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also prefetch the paths of a list file (one path per line, optional
    /// tab and byte ranges, as `rafs mount --record-access` writes).
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
    /// Prefetch every chunk of the image.
    #[arg(long, conflicts_with_all = ["paths", "list"])]
    pub all: bool,
    /// Blobs are files named by their sha256 hex in DIR.
    #[arg(long, value_name = "DIR")]
    pub blobs: Option<PathBuf>,
    /// Where blobs live, as a URL (as for `rafs mount`).
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,
    /// Print what would be fetched and what is already cached; fetch
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as a JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Never show a progress bar (it is shown only when stderr is a
    /// terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Fetch and cache engine settings (`--cache-dir` is required: the
    /// directory to fill, the `--cache-dir` of the mounts).
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Or fill the node's blob manager's cache (`--blob-manager`): the
    /// frames go to it in its prefetch lane.
    #[command(flatten)]
    pub manager: ManagerArgs,
    /// Network backend settings.
    #[command(flatten)]
    pub net: BackendArgs,
}

impl PrefetchArgs {
    /// The run these flags describe.
    pub fn to_job(&self) -> Result<PrefetchJob, PrefetchError> {
        let flag = |e: super::fetch_args::SettingError| PrefetchError::Flag(e.0);
        let backend = match (&self.blobs, &self.backend) {
            (Some(dir), _) => BackendUrl::from_dir(dir),
            (None, Some(u)) => BackendUrl::parse(u)?,
            (None, None) => {
                return Err(PrefetchError::Flag("no --blobs or --backend given".into()))
            }
        };
        let fetch = self.fetch.to_config(default_config()).map_err(flag)?;
        let fetch = self.manager.to_config(fetch).map_err(flag)?;
        if fetch.cache_dir.is_none() && fetch.manager.is_none() {
            return Err(PrefetchError::Flag(
                "--cache-dir or --blob-manager is required".into(),
            ));
        }
        Ok(PrefetchJob {
            bootstrap: self.bootstrap.clone(),
            paths: self.paths.clone(),
            list: self.list.clone(),
            all: self.all,
            backend,
            backend_options: self.net.options().map_err(flag)?,
            fetch,
            dry_run: self.dry_run,
            json: self.json,
            no_progress: self.no_progress,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefetch::cli::DEFAULT_PREFETCH_THREADS;
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: PrefetchArgs,
    }

    fn parse(argv: &[&str]) -> Result<PrefetchArgs, clap::Error> {
        let mut v = vec!["prefetch"];
        v.extend_from_slice(argv);
        Cmd::try_parse_from(v).map(|c| c.args)
    }

    #[test]
    fn prefetch_work_and_source_are_required() {
        let base = ["/b", "--cache-dir", "/c"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(with(&["--blobs", "/d"]).is_err(), "no work");
        assert!(with(&["--all"]).is_err(), "no source");
        assert!(with(&["--all", "--blobs", "/d", "--backend", "file:///d"]).is_err());
        assert!(
            with(&["/x", "--all", "--blobs", "/d"]).is_err(),
            "paths and --all"
        );
        assert!(with(&["--list", "/l", "--all", "--blobs", "/d"]).is_err());
        assert!(
            parse(&["/b", "/x", "--blobs", "/d"]).is_err(),
            "no --cache-dir"
        );
        let a = with(&["/x", "y", "--list", "/l", "--blobs", "/d"]).unwrap();
        assert_eq!(a.paths, [PathBuf::from("/x"), PathBuf::from("y")]);
        let j = a.to_job().unwrap();
        assert_eq!(j.fetch.prefetch_threads, DEFAULT_PREFETCH_THREADS);
        assert_eq!(j.fetch.prefetch_bandwidth, None);
        assert_eq!(j.fetch.memory_bytes, 0);
        assert_eq!(j.backend, BackendUrl::File("/d".into()));
        assert!(with(&["--all", "--blobs", "/d"]).is_ok());
    }

    #[test]
    fn prefetch_settings() {
        let a = parse(&[
            "/b",
            "--all",
            "--blobs",
            "/d",
            "--cache-dir",
            "/c",
            "--prefetch-threads",
            "2",
            "--prefetch-bandwidth",
            "1MiB/s",
            "--cache-size",
            "64M",
            "--read-timeout",
            "2s",
        ])
        .unwrap();
        let f = a.to_job().unwrap().fetch;
        assert_eq!(f.cache_dir, Some(PathBuf::from("/c")));
        assert_eq!(f.prefetch_threads, 2);
        assert_eq!(f.prefetch_bandwidth, Some(1 << 20));
        assert_eq!(f.cache_limit, Some(64 << 20));
        assert_eq!(f.read_timeout, Duration::from_secs(2));
        assert_eq!(f.memory_bytes, 0);
        let bad = |flag: &str, v: &str| {
            let a = parse(&["/b", "--all", "--blobs", "/d", "--cache-dir", "/c", flag, v]).unwrap();
            a.to_job().unwrap_err().to_string()
        };
        assert!(bad("--prefetch-threads", "0").contains("--prefetch-threads"));
        assert!(bad("--prefetch-bandwidth", "0").contains("--prefetch-bandwidth"));
        assert!(bad("--cache-size", "lots").contains("--cache-size"));
        assert!(bad("--read-timeout", "0s").contains("--read-timeout"));
        assert!(bad("--request-timeout", "soon").contains("--request-timeout"));
    }
}
