//! Batched Used reports: cache hits feed the manager's node-wide LRU, but
//! never one message per read. Ranges are buffered per blob and sent by a
//! flusher thread at most about once a second per blob, or as soon as a
//! blob has [`MAX_USED_RANGES`] of them; adjacent and overlapping ranges
//! are merged first. Reports are hints: those that cannot be sent (no
//! connection, the blob not open on it) are dropped.

use super::{ClientBlobId, Inner};
use crate::blobmgr::protocol::{Kind, Message, Packet, UsedRange, MAX_USED_RANGES};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often buffered ranges are sent.
pub(super) const PERIOD: Duration = Duration::from_secs(1);

/// Buffered ranges per blob.
#[derive(Default)]
pub(super) struct Buffer {
    ranges: Mutex<HashMap<ClientBlobId, Vec<UsedRange>>>,
}

impl Buffer {
    /// Buffers `ranges` (empty ones are ignored); true if a blob's buffer
    /// is full and should be sent now.
    pub(super) fn add(&self, blob: ClientBlobId, ranges: &[UsedRange]) -> bool {
        let mut m = self.ranges.lock().unwrap_or_else(PoisonError::into_inner);
        let v = m.entry(blob).or_default();
        v.extend(ranges.iter().filter(|r| r.len > 0));
        if v.len() < MAX_USED_RANGES {
            return false;
        }
        UsedRange::merge(v);
        v.len() >= MAX_USED_RANGES
    }

    fn take(&self) -> HashMap<ClientBlobId, Vec<UsedRange>> {
        std::mem::take(&mut *self.ranges.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn full(&self) -> bool {
        let m = self.ranges.lock().unwrap_or_else(PoisonError::into_inner);
        m.values().any(|v| v.len() >= MAX_USED_RANGES)
    }
}

impl Inner {
    /// The flusher thread's body.
    pub(super) fn flusher(self: Arc<Inner>) {
        let mut last = Instant::now();
        loop {
            let st = self.lock();
            let st = self.wait_until(st, last + PERIOD);
            drop(st);
            if self.stopped() {
                return;
            }
            if last.elapsed() >= PERIOD || self.used.full() {
                self.flush_used();
                last = Instant::now();
            }
        }
    }

    /// Sends every buffered range now (one Used per blob, more if over
    /// the per-message limit).
    pub(super) fn flush_used(&self) {
        let all = self.used.take();
        if all.is_empty() {
            return;
        }
        let st = self.lock();
        let Some((epoch, conn)) = st.conn.clone() else {
            return;
        };
        let handles: Vec<(u32, Vec<UsedRange>)> = all
            .into_iter()
            .filter_map(|(blob, v)| match st.blobs.get(blob.0 as usize)?.handle {
                Some((e, h)) if e == epoch => Some((h, v)),
                _ => None,
            })
            .collect();
        drop(st);
        for (handle, mut v) in handles {
            UsedRange::merge(&mut v);
            for part in v.chunks(MAX_USED_RANGES) {
                let p = Packet {
                    request_id: 0,
                    message: Message::Used {
                        handle,
                        ranges: part.to_vec(),
                    },
                };
                self.metrics.count(Kind::Used);
                self.metrics
                    .used_ranges
                    .fetch_add(part.len() as u64, Ordering::Relaxed);
                if let Err(e) = conn.send(&p, &[]) {
                    tracing::debug!("blob manager: sending Used: {e}");
                    return;
                }
            }
        }
    }
}
