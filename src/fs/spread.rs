//! Which files are read scattered, to fetch them whole ([`FetchConfig::widen`]).
//!
//! The dynamic loader maps executables and libraries and the program then
//! faults their pages in out of order: each fault on a cold chunk is a round
//! trip to the backend, taken one after another. Once a file's reads miss at
//! two places apart (a read that continues the previous one does not count:
//! sequential reads have read-ahead), the rest of the file is fetched in the
//! background lane, so its later faults find it cached. A file whose first
//! read at offset 0 misses is fetched whole at once if it is no larger than
//! the read-ahead budget (a small library: header, then its segments), or
//! than four times that if it has an execute bit (an executable, or a
//! library such as libc that is one too: it is about to be mapped).
//!
//! The state is a bounded LRU of recently missed inodes: memory stays flat
//! in the number of files.
//!
//! [`FetchConfig::widen`]: crate::fetch::FetchConfig::widen

use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};

/// Inodes tracked at most.
const TRACKED: usize = 1024;

/// What a miss means for its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The file's first miss, at offset 0.
    First,
    /// The file has now missed at two places apart: fetch it whole.
    Scattered,
    /// Nothing to do (sequential, or decided before).
    Nothing,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// End of the last missed read.
    next: u64,
    /// Misses that did not continue the previous one.
    jumps: u32,
    /// Fetched whole already (or judged too large).
    done: bool,
}

/// The per-file miss pattern of recent files.
pub(super) struct Spread {
    seen: Mutex<LruCache<u32, State>>,
}

impl Default for Spread {
    fn default() -> Self {
        let cap = NonZeroUsize::new(TRACKED).unwrap_or(NonZeroUsize::MIN);
        Spread {
            seen: Mutex::new(LruCache::new(cap)),
        }
    }
}

impl Spread {
    /// Notes that a read of `ino`'s bytes `offset..end` missed the cache.
    pub(super) fn miss(&self, ino: u32, offset: u64, end: u64) -> Verdict {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let st = seen.get_or_insert_mut(ino, || State {
            next: u64::MAX,
            jumps: 0,
            done: false,
        });
        if st.done {
            return Verdict::Nothing;
        }
        if offset != st.next {
            st.jumps += 1;
        }
        st.next = end;
        match st.jumps {
            1 if offset == 0 => Verdict::First,
            n if n >= 2 => {
                st.done = true;
                Verdict::Scattered
            }
            _ => Verdict::Nothing,
        }
    }

    /// Marks `ino` as decided (fetched whole, or too large to be).
    pub(super) fn done(&self, ino: u32) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(st) = seen.get_mut(&ino) {
            st.done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_misses_apart_make_a_file_scattered_once() {
        let s = Spread::default();
        assert_eq!(s.miss(7, 0, 16384), Verdict::First);
        assert_eq!(s.miss(7, 32 << 20, (32 << 20) + 4096), Verdict::Scattered);
        assert_eq!(s.miss(7, 8 << 20, (8 << 20) + 4096), Verdict::Nothing);
    }

    #[test]
    fn sequential_misses_are_not_scattered() {
        let s = Spread::default();
        assert_eq!(s.miss(1, 0, 131072), Verdict::First);
        for i in 1..10u64 {
            assert_eq!(s.miss(1, i * 131072, (i + 1) * 131072), Verdict::Nothing);
        }
        // A first miss elsewhere than 0 is no verdict yet; a jump after it is.
        assert_eq!(s.miss(2, 4096, 8192), Verdict::Nothing);
        assert_eq!(s.miss(2, 1 << 20, (1 << 20) + 4096), Verdict::Scattered);
    }

    #[test]
    fn a_decided_file_stays_decided() {
        let s = Spread::default();
        assert_eq!(s.miss(3, 0, 10), Verdict::First);
        s.done(3);
        assert_eq!(s.miss(3, 1 << 30, (1 << 30) + 1), Verdict::Nothing);
    }

    #[test]
    fn state_is_bounded() {
        let s = Spread::default();
        for ino in 0..(TRACKED as u32 * 4) {
            s.miss(ino, 0, 1);
        }
        let n = s.seen.lock().unwrap().len();
        assert_eq!(n, TRACKED);
    }
}
