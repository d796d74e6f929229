//! A process-wide pool of large byte buffers: decompressed frames, stored
//! ranges read from a backend, read replies.
//!
//! A cold read allocates and frees about a megabyte per frame several times
//! over; from the allocator that memory comes fresh (a new mapping, each
//! page faulted in and zeroed by the kernel, then unmapped again), which
//! cost about a quarter of the daemon's CPU on a cold full read. Buffers
//! given back here keep their pages for the next taker instead. The pool
//! is bounded ([`LIMIT`] bytes of free buffers), so it adds at most that
//! much to the resident set; small buffers bypass it.

use std::sync::{Mutex, PoisonError};

/// Free bytes the pool keeps at most.
pub const LIMIT: usize = 4 << 20;
/// Buffers smaller than this are left to the allocator.
pub const MIN: usize = 64 << 10;
/// Buffers larger than this are left to the allocator (a rare coalesced
/// range should not pin its size).
pub const MAX: usize = 4 << 20;
/// Capacities are rounded up to this, so that frames of slightly different
/// sizes share buffers.
const GRAIN: usize = 128 << 10;

struct Free {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

static FREE: Mutex<Free> = Mutex::new(Free {
    bufs: Vec::new(),
    bytes: 0,
});

fn free() -> std::sync::MutexGuard<'static, Free> {
    FREE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An empty buffer with room for at least `len` bytes: a pooled one that
/// fits (at most twice the size needed), else a new one.
pub fn take(len: usize) -> Vec<u8> {
    if !(MIN..=MAX).contains(&len) {
        return Vec::with_capacity(len);
    }
    {
        let mut f = free();
        let fit = f
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() <= 2 * len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = fit {
            let b = f.bufs.swap_remove(i);
            f.bytes -= b.capacity();
            return b;
        }
    }
    Vec::with_capacity(len.div_ceil(GRAIN) * GRAIN)
}

/// A buffer of `len` zero bytes (see [`take`]).
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut b = take(len);
    b.resize(len, 0);
    b
}

/// Gives `buf` back for reuse (freeing the oldest pooled buffers if the
/// pool is then over its limit), or frees it if it is outside the pooled
/// sizes.
pub fn give(mut buf: Vec<u8>) {
    let cap = buf.capacity();
    if !(MIN..=MAX).contains(&cap) {
        return;
    }
    buf.clear();
    let mut f = free();
    f.bytes += cap;
    f.bufs.push(buf);
    // Full: the oldest buffers go, so the pool follows the sizes in use.
    let mut drop_n = 0;
    while f.bytes > LIMIT {
        f.bytes -= f.bufs[drop_n].capacity();
        drop_n += 1;
    }
    let gone: Vec<Vec<u8>> = f.bufs.drain(..drop_n).collect();
    drop(f);
    drop(gone); // freed outside the lock
}

/// Free bytes pooled right now.
pub fn pooled() -> usize {
    free().bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_within_bounds() {
        // One test touches the global pool: others in this process use it
        // too, so only what this test's own buffers show is asserted.
        let a = take(1 << 20);
        assert!(a.capacity() >= 1 << 20 && a.is_empty());
        let ptr = a.as_ptr();
        let mut a = a;
        a.extend_from_slice(&[1; 1000]);
        give(a);
        // A taker of a similar size gets the same memory back, emptied.
        let b = take((1 << 20) - 4096);
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.is_empty());
        // ...zeroed on request.
        give(b);
        let z = zeroed(1 << 20);
        assert!(z.len() == 1 << 20 && z.iter().all(|&x| x == 0));
        // Too small a need for a pooled megabyte: not handed out.
        give(z);
        let small = take(200 << 10);
        assert_ne!(small.as_ptr(), ptr);
        // Outside the pooled sizes: never kept.
        give(Vec::with_capacity(MAX + 1));
        give(Vec::with_capacity(1024));
        assert!(pooled() <= LIMIT);
        // The pool never holds more than its limit.
        for _ in 0..2 * LIMIT / MAX {
            give(Vec::with_capacity(MAX));
        }
        assert!(pooled() <= LIMIT);
    }
}
