//! `rafs prefetch`: fills a cache directory ahead of a mount (or beside a
//! running one) with the frames of named paths, a list file, or the whole
//! image, then checks that every one of them is on disk.
//!
//! It drives the same engine as a mount's background prefetch
//! ([`Fetcher::prefetch`]): single flight across processes through the
//! cache's span locks (a mount reading the same cache never fetches a frame
//! twice with it), coalesced range requests, `--jobs` background workers
//! and an optional `--bandwidth` token bucket. The work is planned first
//! (a missing path fails before a byte is fetched); after the run the
//! committer is flushed and each planned frame is looked up in the cache
//! bitmaps. The fetcher keeps no frame in memory here (`memory_bytes` 0),
//! so "cached" can only mean "on disk". The command succeeds only if every
//! planned frame is there.

use super::{list, plan_entries, PlanError};
use crate::backend::args::BackendArgs;
use crate::backend::url::{BackendUrl, UrlError};
use crate::cache::CacheError;
use crate::fetch::index::FrameIndex;
use crate::fetch::prefetch::{Plan, Progress, Report};
use crate::fetch::{FetchConfig, Fetcher};
use crate::image::{Image, ImageError};
use crate::util::{human_bytes, parse_duration, parse_size};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Background workers when `--jobs` is not given.
const DEFAULT_JOBS: usize = 4;

/// How long to wait for the committer to write the last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Failures listed at most in the text summary (all are in `--json`).
const SHOW_FAILURES: usize = 10;

/// Arguments of `rafs prefetch`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("work").required(true).multiple(true).args(["paths", "list", "all"])
))]
#[command(group(
    clap::ArgGroup::new("source").required(true).args(["blobs", "backend"])
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
    /// The cache directory to fill (the `--cache-dir` of the mounts).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// Keep the disk cache under SIZE; the run stops when it is reached.
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Backend requests in flight at most [default: 4].
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Bandwidth limit, e.g. 50MiB/s, 10M or 500K/s (binary units).
    #[arg(long, value_name = "RATE")]
    pub bandwidth: Option<String>,
    /// Give up on a frame that has not arrived after 4 x DURATION (plus
    /// the time the bandwidth limit needs) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub read_timeout: Option<String>,
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
    /// Network backend settings.
    #[command(flatten)]
    pub net: BackendArgs,
}

/// Why `rafs prefetch` failed.
#[derive(Debug, Error)]
pub enum PrefetchError {
    /// A flag's value is invalid (the message names the flag).
    #[error("{0}")]
    Flag(String),
    /// The bootstrap could not be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Bad backend URL, or the backend cannot be opened.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The cache directory cannot be used.
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    /// The list file could not be read.
    #[error("list: {0}")]
    List(#[from] list::ListError),
    /// A path is not in the image, or the bootstrap is inconsistent.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Not everything asked for is cached (the summary says why).
    #[error("prefetch incomplete: {0}")]
    Incomplete(String),
}

/// The settings of the flags, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    jobs: usize,
    bandwidth: Option<u64>,
    cache_limit: Option<u64>,
    read_timeout: Duration,
}

/// Parses a bandwidth like `50MiB/s`, `10M` or `500K/s` into bytes per
/// second (binary units; the `/s` is optional; zero is refused).
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let t = match lower.strip_suffix("/s") {
        Some(_) => &t[..t.len() - 2],
        None => t,
    };
    let n = parse_size(t).map_err(|e| format!("--bandwidth: {e}"))?;
    if n == 0 {
        return Err("--bandwidth must be positive".into());
    }
    Ok(n)
}

impl Settings {
    fn of(a: &PrefetchArgs) -> Result<Settings, PrefetchError> {
        let jobs = a.jobs.unwrap_or(DEFAULT_JOBS);
        if jobs == 0 {
            return Err(PrefetchError::Flag("--jobs must be at least 1".into()));
        }
        let bandwidth = a
            .bandwidth
            .as_deref()
            .map(parse_bandwidth)
            .transpose()
            .map_err(PrefetchError::Flag)?;
        let cache_limit = a
            .cache_size
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| PrefetchError::Flag(format!("--cache-size: {e}")))?;
        let read_timeout = match &a.read_timeout {
            Some(t) => parse_duration(t)
                .map_err(|e| PrefetchError::Flag(format!("--read-timeout: {e}")))?,
            None => FetchConfig::default().read_timeout,
        };
        if read_timeout.is_zero() {
            return Err(PrefetchError::Flag(
                "--read-timeout must be positive".into(),
            ));
        }
        Ok(Settings {
            jobs,
            bandwidth,
            cache_limit,
            read_timeout,
        })
    }

    /// The fetch configuration for a plan of `bytes` stored bytes: the
    /// engine gives each window of frames 4 x `read_timeout`, which a slow
    /// bandwidth limit alone could exceed, so the time the limit needs for
    /// the whole plan is added (a limit is honoured, not a failure).
    fn fetch_config(&self, cache_dir: PathBuf, bytes: u64) -> FetchConfig {
        let throttle = self.bandwidth.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(bytes as f64 / r as f64)
        });
        FetchConfig {
            cache_dir: Some(cache_dir),
            cache_limit: self.cache_limit,
            memory_bytes: 0,
            read_timeout: self.read_timeout.saturating_add(throttle),
            prefetch_threads: self.jobs,
            prefetch_bandwidth: self.bandwidth,
            ..FetchConfig::default()
        }
    }
}

/// The frames of the work named by the flags. `f` only plans: any fetcher
/// over the same image gives the same frame numbers.
fn plan(a: &PrefetchArgs, f: &Fetcher, image: &Image) -> Result<Plan, PrefetchError> {
    let b = image.bootstrap().map_err(|source| ImageError::Format {
        path: a.bootstrap.clone(),
        source,
    })?;
    if a.all {
        return Ok(f.plan_all());
    }
    let mut entries: Vec<list::Entry> = a
        .paths
        .iter()
        .map(|p| list::Entry {
            line: 0,
            path: p.as_os_str().as_bytes().to_vec(),
            ranges: None,
        })
        .collect();
    if let Some(file) = &a.list {
        entries.extend(list::read(file)?);
    }
    let mut plan = Plan::default();
    plan_entries(f, &b, &entries, false, &mut plan)?;
    Ok(plan)
}

/// Entry point of `rafs prefetch`.
pub fn run(a: &PrefetchArgs) -> anyhow::Result<ExitCode> {
    run_checked(a)?;
    Ok(ExitCode::SUCCESS)
}

fn run_checked(a: &PrefetchArgs) -> Result<(), PrefetchError> {
    let settings = Settings::of(a)?;
    let url = match (&a.blobs, &a.backend) {
        (Some(dir), _) => BackendUrl::from_dir(dir),
        (None, Some(u)) => BackendUrl::parse(u)?,
        (None, None) => return Err(PrefetchError::Flag("no --blobs or --backend given".into())),
    };
    let opts = a
        .net
        .options()
        .map_err(|e| PrefetchError::Flag(format!("--request-timeout: {e}")))?;
    let image = Arc::new(Image::open(&a.bootstrap)?);
    let backend = url.open(&opts)?;
    let metrics = Arc::new(crate::fetch::metrics::ChunkCounters::default());
    // A planner without cache or workers to speak of: the real fetcher's
    // deadlines depend on the plan's size.
    let planner_cfg = FetchConfig {
        memory_bytes: 0,
        concurrency: 1,
        prefetch_threads: 1,
        ..FetchConfig::default()
    };
    let planner = Fetcher::new(image.clone(), backend.clone(), planner_cfg, metrics.clone())?;
    let plan = plan(a, &planner, &image)?;
    drop(planner);
    let cfg = settings.fetch_config(a.cache_dir.clone(), plan.bytes);
    let fetcher = Fetcher::new(image.clone(), backend, cfg, metrics.clone())?;
    let sizes = FrameSizes::of(&image, &a.bootstrap)?;
    if a.dry_run {
        dry_run(a, &fetcher, &plan, &sizes);
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler ^C just kills the run: nothing is lost.
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let bar = progress_bar(a, &plan);
    let mut chunks_done = ChunkCounter::new(&plan, &sizes);
    let report = fetcher.prefetch(&plan, &stop, &mut |p: Progress| {
        bar.set_position(p.done_bytes);
        bar.set_message(format!(
            "{}/{} chunks",
            chunks_done.upto(p.done_frames),
            plan.chunks
        ));
    });
    bar.finish_and_clear();
    let flushed = fetcher.flush(FLUSH_TIMEOUT);
    let outcome = Outcome::check(&fetcher, &plan, &sizes, report, flushed, &metrics);
    outcome.print(a.json, &plan);
    match outcome.problem() {
        None => Ok(()),
        Some(why) => Err(PrefetchError::Incomplete(why)),
    }
}

/// Stored size and chunk count of every frame, and the blob ids, for
/// summaries (the fetcher's own frame index is private to it; this one is
/// built the same way from the same bootstrap).
struct FrameSizes {
    index: FrameIndex,
    blob_ids: Vec<String>,
}

impl FrameSizes {
    fn of(image: &Image, path: &std::path::Path) -> Result<FrameSizes, PrefetchError> {
        let b = image.bootstrap().map_err(|source| ImageError::Format {
            path: path.to_owned(),
            source,
        })?;
        Ok(FrameSizes {
            index: FrameIndex::build(&b),
            blob_ids: b.blobs().iter().map(|x| hex::encode(x.id)).collect(),
        })
    }

    fn stored(&self, blob: u32, fi: usize) -> u64 {
        self.frame(blob, fi).map_or(0, |f| u64::from(f.clen))
    }

    fn chunks(&self, blob: u32, fi: usize) -> u64 {
        self.index
            .blobs
            .get(blob as usize)
            .map_or(0, |b| b.members_of(fi).len() as u64)
    }

    fn frame(&self, blob: u32, fi: usize) -> Option<&crate::fetch::index::FrameInfo> {
        self.index.blobs.get(blob as usize)?.frames.get(fi)
    }

    /// `blob ID, stored offset N`, for messages.
    fn describe(&self, blob: u32, fi: usize) -> String {
        let id = self.blob_ids.get(blob as usize).map_or("?", String::as_str);
        let off = self.frame(blob, fi).map_or(0, |f| f.coff);
        format!("blob {id}, stored offset {off}")
    }
}

/// Chunks of the first N planned frames (the engine handles frames in plan
/// order), for the progress bar.
struct ChunkCounter {
    prefix: Vec<u64>,
}

impl ChunkCounter {
    fn new(plan: &Plan, sizes: &FrameSizes) -> ChunkCounter {
        let mut prefix = Vec::with_capacity(plan.frames.len() + 1);
        let mut total = 0;
        prefix.push(0);
        for &(b, fi) in &plan.frames {
            total += sizes.chunks(b, fi);
            prefix.push(total);
        }
        ChunkCounter { prefix }
    }

    fn upto(&mut self, frames: u64) -> u64 {
        let i = usize::try_from(frames).unwrap_or(usize::MAX);
        self.prefix
            .get(i)
            .or(self.prefix.last())
            .copied()
            .unwrap_or(0)
    }
}

/// A bar of stored bytes with the chunk count as its message; hidden with
/// `--no-progress`, `--json`, or when stderr is not a terminal.
fn progress_bar(a: &PrefetchArgs, plan: &Plan) -> ProgressBar {
    if a.no_progress || a.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(plan.bytes);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bytes}/{total_bytes} {msg} ({bytes_per_sec}, ETA {eta}) \
         {wide_bar}",
    )
    .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

/// `--dry-run`: the plan and how much of it is cached already.
fn dry_run(a: &PrefetchArgs, f: &Fetcher, plan: &Plan, sizes: &FrameSizes) {
    let (mut frames, mut chunks, mut bytes) = (0u64, 0u64, 0u64);
    for &(b, fi) in &plan.frames {
        if f.frame_cached(b, fi) {
            frames += 1;
            chunks += sizes.chunks(b, fi);
            bytes += sizes.stored(b, fi);
        }
    }
    if a.json {
        let v = serde_json::json!({
            "dry_run": true,
            "frames": plan.frames.len(),
            "chunks": plan.chunks,
            "bytes": plan.bytes,
            "cached_frames": frames,
            "cached_chunks": chunks,
            "cached_bytes": bytes,
            "to_fetch_bytes": plan.bytes - bytes,
        });
        println!("{v}");
    } else {
        println!(
            "would prefetch {} frames ({} chunks, {} stored); {} frames ({} chunks, {}) already \
             cached; {} to fetch",
            plan.frames.len(),
            plan.chunks,
            human_bytes(plan.bytes),
            frames,
            chunks,
            human_bytes(bytes),
            human_bytes(plan.bytes - bytes),
        );
    }
}

/// A finished run, checked against the cache.
struct Outcome {
    report: Report,
    /// Planned frames not on disk after the run, described.
    missing: Vec<String>,
    /// Whether the committer finished writing.
    flushed: bool,
    /// Bytes this process received from the backend.
    backend_bytes: u64,
}

impl Outcome {
    fn check(
        f: &Fetcher,
        plan: &Plan,
        sizes: &FrameSizes,
        report: Report,
        flushed: bool,
        metrics: &crate::fetch::metrics::ChunkCounters,
    ) -> Outcome {
        let missing = plan
            .frames
            .iter()
            .filter(|&&(b, fi)| !f.frame_cached(b, fi))
            .map(|&(b, fi)| sizes.describe(b, fi))
            .collect();
        Outcome {
            report,
            missing,
            flushed,
            backend_bytes: crate::fetch::metrics::ChunkCounters::get(&metrics.backend_bytes),
        }
    }

    /// Why the run does not count as complete, if it does not.
    fn problem(&self) -> Option<String> {
        let r = &self.report;
        let mut why = Vec::new();
        if let Some(s) = &r.stopped {
            why.push(s.clone());
        }
        if !r.failed.is_empty() {
            why.push(format!("{} frame(s) failed", r.failed.len()));
        }
        if !self.flushed {
            why.push(format!("cache writes not finished after {FLUSH_TIMEOUT:?}"));
        }
        if !self.missing.is_empty() {
            let first = self.missing.iter().take(3).cloned().collect::<Vec<_>>();
            why.push(format!(
                "{} planned frame(s) not in the cache ({}{})",
                self.missing.len(),
                first.join("; "),
                if self.missing.len() > 3 { "; ..." } else { "" }
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn print(&self, json: bool, plan: &Plan) {
        let r = &self.report;
        if json {
            let v = serde_json::json!({
                "frames": plan.frames.len(),
                "chunks": plan.chunks,
                "bytes": plan.bytes,
                "cached_frames": r.cached,
                "fetched_frames": r.fetched,
                "fetched_bytes": r.fetched_bytes,
                "backend_bytes": self.backend_bytes,
                "failed": r.failed.len(),
                "failures": r.failed,
                "not_cached": self.missing,
                "stopped": r.stopped,
                "elapsed_seconds": r.elapsed.as_secs_f64(),
                "complete": self.problem().is_none(),
            });
            println!("{v}");
            return;
        }
        println!(
            "prefetched {} in {} frames ({:.1} s); {} frames already cached; {} failed",
            human_bytes(r.fetched_bytes),
            r.fetched,
            r.elapsed.as_secs_f64(),
            r.cached,
            r.failed.len()
        );
        for f in r.failed.iter().take(SHOW_FAILURES) {
            eprintln!("rafs: failed: {f}");
        }
        if r.failed.len() > SHOW_FAILURES {
            eprintln!(
                "rafs: ... and {} more failures",
                r.failed.len() - SHOW_FAILURES
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
    fn prefetch_bandwidth_units() {
        assert_eq!(parse_bandwidth("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_bandwidth("10M"), Ok(10 << 20));
        assert_eq!(parse_bandwidth("500K/s"), Ok(500 << 10));
        assert_eq!(parse_bandwidth("2mib/S"), Ok(2 << 20));
        assert_eq!(parse_bandwidth("1"), Ok(1));
        assert_eq!(parse_bandwidth(" 64KiB/s "), Ok(64 << 10));
        for bad in ["0", "0K/s", "fast", "/s", "", "10X/s", "-1M"] {
            assert!(parse_bandwidth(bad).is_err(), "{bad}");
        }
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
        let s = Settings::of(&a).unwrap();
        assert_eq!(s.jobs, DEFAULT_JOBS);
        assert_eq!(s.bandwidth, None);
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
            "--jobs",
            "2",
            "--bandwidth",
            "1MiB/s",
            "--cache-size",
            "64M",
            "--read-timeout",
            "2s",
        ])
        .unwrap();
        let s = Settings::of(&a).unwrap();
        assert_eq!(
            s,
            Settings {
                jobs: 2,
                bandwidth: Some(1 << 20),
                cache_limit: Some(64 << 20),
                read_timeout: Duration::from_secs(2),
            }
        );
        // 10 MiB at 1 MiB/s: ten more seconds of patience.
        let cfg = s.fetch_config(PathBuf::from("/c"), 10 << 20);
        assert_eq!(cfg.read_timeout, Duration::from_secs(12));
        assert_eq!(cfg.prefetch_threads, 2);
        assert_eq!(cfg.memory_bytes, 0);
        assert_eq!(cfg.cache_limit, Some(64 << 20));
        let bad = |flag: &str, v: &str| {
            let a = parse(&["/b", "--all", "--blobs", "/d", "--cache-dir", "/c", flag, v]).unwrap();
            Settings::of(&a).unwrap_err().to_string()
        };
        assert!(bad("--jobs", "0").contains("--jobs"));
        assert!(bad("--bandwidth", "0").contains("--bandwidth"));
        assert!(bad("--cache-size", "lots").contains("--cache-size"));
        assert!(bad("--read-timeout", "0s").contains("--read-timeout"));
    }
}
