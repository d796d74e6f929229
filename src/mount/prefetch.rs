//! Prefetch on mount: once the mount is ready, one background thread
//! plans what to fetch (the `--prefetch-list` file, else `--prefetch-all`,
//! else the image's prefetch table unless `--no-prefetch`) and runs the
//! fetcher's prefetch engine ([`crate::fetch::prefetch`]) on it.
//!
//! The engine runs in the fetcher's background lane, so on-demand reads
//! never queue behind it; with `--cache-dir` it fills the disk cache (and
//! stops at its quota), without one it warms the memory LRU, bounded by its
//! size. At the end the thread waits (briefly) for fetched frames to reach
//! the disk, so "done" means "cached", and logs one info line.
//!
//! The list file is read before mounting (a missing or malformed list is a
//! mount error); paths the image lacks are skipped with a warning. On
//! unmount, [`Prefetch::stop`] sets the engine's stop flag and waits a
//! short while for the thread; one still waiting on the backend is left
//! behind (it holds only shared handles and dies with the process).
//!
//! [`PrefetchStatus`] is the thread's progress, for `/status`.

use crate::fetch::metrics::FetchMetrics;
use crate::fetch::prefetch::{Plan, Progress, Report};
use crate::fetch::Fetcher;
use crate::fs::RafsFs;
use crate::mount::PrefetchSource;
use crate::prefetch::list::{self, Entry, ListError};
use crate::prefetch::{plan_entries, plan_table, PlanError};
use crossbeam_channel::{bounded, Receiver};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long unmount waits for the prefetch thread to notice its stop flag
/// (the engine checks it between windows of frames, so a thread waiting on
/// a slow or rate-limited window is left behind).
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a finished prefetch waits for its frames to reach the disk.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a mount will prefetch, ready to plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The image's prefetch table.
    Table,
    /// The entries of a list file.
    List(Vec<Entry>),
    /// Every blob.
    All,
}

impl Source {
    /// Reads the list file if there is one; `None` for `--no-prefetch`.
    pub fn load(s: &PrefetchSource) -> Result<Option<Source>, ListError> {
        Ok(match s {
            PrefetchSource::Table => Some(Source::Table),
            PrefetchSource::List(path) => Some(Source::List(list::read(path)?)),
            PrefetchSource::All => Some(Source::All),
            PrefetchSource::Off => None,
        })
    }

    /// The frames to fetch, in order.
    fn plan(&self, fs: &RafsFs) -> Result<Plan, PlanError> {
        let fetcher = fs.fetcher();
        let b = fs.image().bootstrap()?;
        let mut plan = Plan::default();
        match self {
            Source::Table => plan_table(fetcher, &b, &mut plan)?,
            Source::List(entries) => plan_entries(fetcher, &b, entries, true, &mut plan)?,
            Source::All => plan = fetcher.plan_all(),
        }
        Ok(plan)
    }
}

/// Where the mount's prefetch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing to prefetch: off, or an empty plan (no prefetch table).
    None,
    /// Planning or fetching.
    Running,
    /// Every planned frame was handled.
    Done,
    /// Ended early: unmount, the cache quota, or a planning error.
    Stopped,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::None => "none",
            State::Running => "running",
            State::Done => "done",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    state: State,
    planned_bytes: u64,
    done_bytes: u64,
    started: Option<Instant>,
    elapsed: Duration,
}

/// The prefetch thread's progress, shared with the API.
#[derive(Debug)]
pub struct PrefetchStatus {
    inner: Mutex<Snapshot>,
    metrics: Arc<FetchMetrics>,
    /// `rafs_prefetch_bytes_total` when this mount's prefetch started.
    base_bytes: u64,
}

impl PrefetchStatus {
    fn new(metrics: Arc<FetchMetrics>) -> PrefetchStatus {
        PrefetchStatus {
            inner: Mutex::new(Snapshot {
                state: State::None,
                planned_bytes: 0,
                done_bytes: 0,
                started: None,
                elapsed: Duration::ZERO,
            }),
            base_bytes: metrics.prefetch_bytes.get(),
            metrics,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state
    }

    /// The `prefetch` object of `/status`: state, planned bytes, bytes
    /// handled (cached before or fetched), bytes fetched, seconds.
    pub fn json(&self) -> serde_json::Value {
        let s = *self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = match (s.state, s.started) {
            (State::Running, Some(t)) => t.elapsed(),
            _ => s.elapsed,
        };
        serde_json::json!({
            "state": s.state.name(),
            "planned_bytes": s.planned_bytes,
            "done_bytes": s.done_bytes,
            "fetched_bytes": self.metrics.prefetch_bytes.get().saturating_sub(self.base_bytes),
            "elapsed_secs": elapsed.as_secs_f64(),
        })
    }
}

/// The mount's prefetch: its status, and the thread if one runs.
pub struct Prefetch {
    status: Arc<PrefetchStatus>,
    stop: Arc<AtomicBool>,
    done: Option<Receiver<()>>,
}

impl Prefetch {
    /// A prefetch that has not started (status "none").
    pub fn new(fs: &RafsFs) -> Prefetch {
        Prefetch {
            status: Arc::new(PrefetchStatus::new(fs.fetcher().metrics().clone())),
            stop: Arc::new(AtomicBool::new(false)),
            done: None,
        }
    }

    /// Starts prefetching `source` on `fs` in a background thread (none
    /// for `None`: the status stays "none").
    pub fn start(&mut self, fs: &Arc<RafsFs>, source: Option<Source>) -> std::io::Result<()> {
        let Some(source) = source else {
            return Ok(());
        };
        self.status.update(|s| {
            s.state = State::Running;
            s.started = Some(Instant::now());
        });
        let (tx, rx) = bounded(1);
        let (fs, st, flag) = (fs.clone(), self.status.clone(), self.stop.clone());
        std::thread::Builder::new()
            .name("rafs-prefetch".into())
            .spawn(move || {
                run(&fs, &source, &st, &flag);
                let _ = tx.send(());
            })?;
        self.done = Some(rx);
        Ok(())
    }

    /// The status, for the API.
    pub fn status(&self) -> &Arc<PrefetchStatus> {
        &self.status
    }

    /// Asks the thread to stop and waits for it briefly.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(done) = self.done {
            if done.recv_timeout(STOP_TIMEOUT).is_err() {
                tracing::debug!("prefetch still waiting on the backend; not waiting for it");
            }
        }
    }
}

/// The thread: plan, prefetch, flush, log.
fn run(fs: &RafsFs, source: &Source, status: &PrefetchStatus, stop: &AtomicBool) {
    let t0 = Instant::now();
    let plan = match source.plan(fs) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("prefetch not started: {e}");
            status.update(|s| {
                s.state = State::Stopped;
                s.elapsed = t0.elapsed();
            });
            return;
        }
    };
    if plan.frames.is_empty() {
        tracing::debug!("prefetch: nothing to fetch");
        status.update(|s| s.state = State::None);
        return;
    }
    status.update(|s| s.planned_bytes = plan.bytes);
    let fetcher: &Fetcher = fs.fetcher();
    let chunks0 = fetcher.metrics().prefetch_chunks.get();
    let report = fetcher.prefetch(&plan, stop, &mut |p: Progress| {
        status.update(|s| s.done_bytes = p.done_bytes);
    });
    if report.stopped.is_none() && !fetcher.flush(FLUSH_TIMEOUT) {
        tracing::warn!("prefetch: frames still not written to the cache after {FLUSH_TIMEOUT:?}");
    }
    let chunks = fetcher.metrics().prefetch_chunks.get() - chunks0;
    log_report(&plan, &report, chunks);
    status.update(|s| {
        s.state = match report.stopped {
            None => State::Done,
            Some(_) => State::Stopped,
        };
        s.elapsed = t0.elapsed();
    });
}

/// The one info line at the end (and a warning per kind of trouble).
fn log_report(plan: &Plan, report: &Report, chunks: u64) {
    if let Some(why) = &report.stopped {
        tracing::info!("prefetch stopped early: {why}");
    }
    if let Some(first) = report.failed.first() {
        tracing::warn!(
            failed = report.failed.len(),
            "prefetch: frames not fetched, first: {first}"
        );
    }
    tracing::info!(
        planned_bytes = plan.bytes,
        fetched_bytes = report.fetched_bytes,
        fetched_chunks = chunks,
        cached_frames = report.cached,
        seconds = report.elapsed.as_secs_f64(),
        "prefetch finished: {} bytes, {chunks} chunks fetched in {:.2?}",
        report.fetched_bytes,
        report.elapsed
    );
}
