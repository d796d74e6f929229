//! `rafs prefetch`: fills a cache directory ahead of a mount (or beside a
//! running one) with the frames of named paths, a list file, or the whole
//! image, then checks that every one of them is on disk.
//!
//! It drives the same engine as a mount's background prefetch
//! ([`Fetcher::prefetch`]): single flight across processes through the
//! cache's span locks (a mount reading the same cache never fetches a frame
//! twice with it), coalesced range requests, `--prefetch-threads`
//! background workers and an optional `--prefetch-bandwidth` token bucket. The work is planned first
//! (a missing path fails before a byte is fetched); after the run the
//! committer is flushed and each planned frame is looked up in the cache
//! bitmaps. The flags are parsed in `crate::cli::prefetch_args`, into a
//! [`PrefetchJob`]. The fetcher keeps no frame in memory here (`memory_bytes` 0),
//! so "cached" can only mean "on disk". The command succeeds only if every
//! planned frame is there.

use super::{list, plan_entries, PlanError};
use crate::backend::url::{BackendUrl, UrlError};
use crate::backend::BackendOptions;
use crate::cache::CacheError;
use crate::fetch::index::FrameIndex;
use crate::fetch::prefetch::{Plan, Progress, Report};
use crate::fetch::{FetchConfig, Fetcher};
use crate::image::{Image, ImageError};
use crate::util::human_bytes;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Background workers when `--prefetch-threads` is not given.
pub const DEFAULT_PREFETCH_THREADS: usize = 4;

/// How long to wait for the committer to write the last frames.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Failures listed at most in the text summary (all are in `--json`).
const SHOW_FAILURES: usize = 10;

/// A `rafs prefetch` run, resolved (the CLI layer builds it from flags).
#[derive(Debug, Clone)]
pub struct PrefetchJob {
    /// The image's bootstrap.
    pub bootstrap: PathBuf,
    /// Paths inside the image (leading `/` optional); directories are
    /// prefetched recursively.
    pub paths: Vec<PathBuf>,
    /// Also prefetch the paths of this list file.
    pub list: Option<PathBuf>,
    /// Prefetch every chunk of the image.
    pub all: bool,
    /// Where blobs live.
    pub backend: BackendUrl,
    /// Network backend settings.
    pub backend_options: BackendOptions,
    /// Engine settings; `cache_dir` is the directory to fill (required),
    /// `prefetch_threads` and `prefetch_bandwidth` drive the run, and
    /// `read_timeout` is stretched by the time the bandwidth limit needs.
    pub fetch: FetchConfig,
    /// Print the plan and what is cached; fetch nothing.
    pub dry_run: bool,
    /// Print the summary as JSON on stdout.
    pub json: bool,
    /// Never show a progress bar.
    pub no_progress: bool,
}

/// The engine defaults of `rafs prefetch`: no frame kept in memory (so
/// "cached" means on disk), [`DEFAULT_PREFETCH_THREADS`] workers.
pub fn default_config() -> FetchConfig {
    FetchConfig {
        memory_bytes: 0,
        prefetch_threads: DEFAULT_PREFETCH_THREADS,
        ..FetchConfig::default()
    }
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

impl PrefetchJob {
    /// The fetch configuration for a plan of `bytes` stored bytes: the
    /// engine gives each window of frames 4 x `read_timeout`, which a slow
    /// bandwidth limit alone could exceed, so the time the limit needs for
    /// the whole plan is added (a limit is honoured, not a failure).
    fn fetch_config(&self, bytes: u64) -> FetchConfig {
        let throttle = self.fetch.prefetch_bandwidth.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(bytes as f64 / r as f64)
        });
        FetchConfig {
            read_timeout: self.fetch.read_timeout.saturating_add(throttle),
            ..self.fetch.clone()
        }
    }
}

/// The frames of the work named by the flags. `f` only plans: any fetcher
/// over the same image gives the same frame numbers.
fn plan(a: &PrefetchJob, f: &Fetcher, image: &Image) -> Result<Plan, PrefetchError> {
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
pub fn run(a: &PrefetchJob) -> anyhow::Result<ExitCode> {
    run_checked(a)?;
    Ok(ExitCode::SUCCESS)
}

fn run_checked(a: &PrefetchJob) -> Result<(), PrefetchError> {
    if a.fetch.cache_dir.is_none() && a.fetch.manager.is_none() {
        return Err(PrefetchError::Flag(
            "--cache-dir or --blob-manager is required".into(),
        ));
    }
    let image = Arc::new(Image::open(&a.bootstrap)?);
    let backend = a.backend.open(&a.backend_options)?;
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
    let cfg = a.fetch_config(plan.bytes);
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
fn progress_bar(a: &PrefetchJob, plan: &Plan) -> ProgressBar {
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
fn dry_run(a: &PrefetchJob, f: &Fetcher, plan: &Plan, sizes: &FrameSizes) {
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

    #[test]
    fn read_timeout_stretches_with_the_bandwidth_limit() {
        let job = PrefetchJob {
            bootstrap: "/b".into(),
            paths: Vec::new(),
            list: None,
            all: true,
            backend: BackendUrl::File("/d".into()),
            backend_options: BackendOptions::default(),
            fetch: FetchConfig {
                cache_dir: Some("/c".into()),
                read_timeout: Duration::from_secs(2),
                prefetch_bandwidth: Some(1 << 20),
                ..default_config()
            },
            dry_run: false,
            json: false,
            no_progress: false,
        };
        // 10 MiB at 1 MiB/s: ten more seconds of patience.
        let cfg = job.fetch_config(10 << 20);
        assert_eq!(cfg.read_timeout, Duration::from_secs(12));
        assert_eq!(cfg.prefetch_threads, DEFAULT_PREFETCH_THREADS);
        assert_eq!(cfg.memory_bytes, 0);
        let unlimited = PrefetchJob {
            fetch: FetchConfig {
                prefetch_bandwidth: None,
                ..job.fetch.clone()
            },
            ..job
        };
        assert_eq!(
            unlimited.fetch_config(10 << 20).read_timeout,
            Duration::from_secs(2)
        );
    }
}
