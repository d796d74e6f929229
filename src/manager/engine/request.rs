//! One Fetch request's shared state, and the timer that answers requests
//! at their deadline: one thread with a deadline heap and a condvar for
//! all requests (no thread is parked per request).

use super::metrics::EngineMetrics;
use crate::blobmgr::protocol::FrameStatus;
use crate::manager::service::FetchDone;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Instant;

struct State {
    statuses: Vec<Option<FrameStatus>>,
    left: usize,
    done: Option<FetchDone>,
}

/// A Fetch being answered: `done` is called once, with every status, when
/// the last frame settles or at the deadline (whichever is first).
pub(crate) struct Request {
    state: Mutex<State>,
    /// Its deadline.
    pub(crate) deadline: Instant,
    metrics: Arc<EngineMetrics>,
}

impl Request {
    pub(crate) fn new(
        frames: usize,
        deadline: Instant,
        done: FetchDone,
        metrics: Arc<EngineMetrics>,
    ) -> Arc<Request> {
        Arc::new(Request {
            state: Mutex::new(State {
                statuses: vec![None; frames],
                left: frames,
                done: Some(done),
            }),
            deadline,
            metrics,
        })
    }

    /// Settles frame `i` (once; later calls are ignored).
    pub(crate) fn settle(&self, i: usize, s: FrameStatus) {
        let answer = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match st.statuses.get_mut(i) {
                Some(slot @ None) => {
                    *slot = Some(s);
                    st.left -= 1;
                }
                _ => return,
            }
            if st.left > 0 {
                return;
            }
            st.done.take().map(|d| (d, take(&mut st.statuses)))
        };
        self.answer(answer);
    }

    /// Whether the request was answered already.
    pub(crate) fn answered(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .done
            .is_none()
    }

    /// The deadline passed: the unsettled frames are `TimedOut`.
    fn expire(&self) {
        let answer = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.done.take().map(|d| (d, take(&mut st.statuses)))
        };
        self.answer(answer);
    }

    fn answer(&self, answer: Option<(FetchDone, Vec<FrameStatus>)>) {
        if let Some((done, statuses)) = answer {
            for &s in &statuses {
                self.metrics.frame(s);
            }
            done(statuses);
        }
    }
}

fn take(statuses: &mut [Option<FrameStatus>]) -> Vec<FrameStatus> {
    statuses
        .iter()
        .map(|s| s.unwrap_or(FrameStatus::TimedOut))
        .collect()
}

struct Entry(Instant, u64, Weak<Request>);

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Entry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Entry) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

/// Entries the heap may hold before its first compaction.
const COMPACT_MIN: usize = 1024;

#[derive(Default)]
struct Heap {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    stop: bool,
    /// Compact when the heap grows past this (twice the entries left by
    /// the last compaction, at least [`COMPACT_MIN`]).
    compact_at: usize,
}

impl Heap {
    /// Drops the entries of requests answered already (most are: a Fetch
    /// is usually answered long before its deadline, which a client may
    /// set to 10 minutes). Without this every Fetch would keep an entry,
    /// and its request's allocation, until its deadline: a client sending
    /// Fetches as fast as it can would grow the heap without bound.
    /// Amortized O(1) per [`Timer::add`].
    fn compact(&mut self) {
        if self.heap.len() < self.compact_at.max(COMPACT_MIN) {
            return;
        }
        self.heap
            .retain(|Reverse(Entry(_, _, req))| req.upgrade().is_some_and(|r| !r.answered()));
        self.compact_at = 2 * self.heap.len();
    }
}

/// The deadline timer.
#[derive(Default)]
pub(crate) struct Timer {
    heap: Mutex<Heap>,
    cv: Condvar,
}

impl Timer {
    /// Starts the timer thread; it ends after [`Timer::stop`].
    pub(crate) fn start() -> std::io::Result<Arc<Timer>> {
        let t = Arc::new(Timer::default());
        let t2 = t.clone();
        std::thread::Builder::new()
            .name("rafs-blobmgr-timer".into())
            .spawn(move || t2.run())?;
        Ok(t)
    }

    /// Answers `req` at its deadline if nothing did before.
    pub(crate) fn add(&self, req: &Arc<Request>) {
        let mut h = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
        h.seq += 1;
        let seq = h.seq;
        h.compact();
        h.heap
            .push(Reverse(Entry(req.deadline, seq, Arc::downgrade(req))));
        self.cv.notify_one();
    }

    /// Entries waiting for their deadline (tests).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.heap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .heap
            .len()
    }

    pub(crate) fn stop(&self) {
        self.heap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.cv.notify_one();
    }

    fn run(&self) {
        let mut h = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
        while !h.stop {
            let now = Instant::now();
            let next = h.heap.peek().map(|Reverse(e)| e.0);
            match next {
                Some(at) if at <= now => {
                    let Some(Reverse(Entry(_, _, req))) = h.heap.pop() else {
                        continue;
                    };
                    drop(h);
                    if let Some(r) = req.upgrade() {
                        r.expire();
                    }
                    h = self.heap.lock().unwrap_or_else(PoisonError::into_inner);
                }
                Some(at) => {
                    h = self
                        .cv
                        .wait_timeout(h, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => h = self.cv.wait(h).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }
}
