//! Pacing shared by the fetch layer and the blob manager's engine: the
//! token bucket of the prefetch bandwidth limit and the retry backoff
//! (exponential, full jitter).

use std::time::{Duration, Instant};

/// A token bucket: the prefetch bandwidth limit.
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket refilled at `rate` bytes per second, empty at first.
    pub(crate) fn new(rate: u64) -> Bucket {
        Bucket {
            rate: rate.max(1) as f64,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes' worth of tokens; returns how long to wait first.
    /// Debt is allowed (a request larger than a second's budget waits in
    /// proportion), the burst is capped at a tenth of a second.
    pub(crate) fn take(&mut self, n: u64) -> Duration {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate / 10.0);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Sleep before attempt `n` (1-based retry count): base * 2^(n-1), capped,
/// with full jitter.
pub(crate) fn backoff(base: Duration, cap: Duration, n: u32) -> Duration {
    let exp = base
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(cap);
    let jitter = u128::from(rand_u64()) % exp.as_nanos().max(1);
    Duration::from_nanos(jitter as u64)
}

/// A cheap random number (jitter only; not for anything secret).
pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}
