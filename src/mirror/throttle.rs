//! `MAX_TRANSFER_RATE`: one token bucket (the `governor` crate's GCRA limiter) shared by
//! every transfer of the process, charged before each chunk is written.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A shared limit in bytes per second, or none.
#[derive(Clone)]
pub struct Throttle {
    limiter: Option<Arc<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>>,
    /// Bytes per cell: 1, or 1 KiB for rates beyond what a `u32` of bytes holds.
    unit: u64,
    /// Most cells one wait may ask for (the bucket's burst).
    burst: u32,
}

impl Throttle {
    /// A limit of `bytes_per_sec` (0: unlimited). The burst is 1/10 s worth of bytes: an
    /// idle bucket lets that much through at once (1% over 10 s), and a waiter that wakes
    /// up late (a busy machine) loses nothing as long as it is less than 100 ms late.
    pub fn new(bytes_per_sec: u64) -> Self {
        if bytes_per_sec == 0 {
            return Throttle {
                limiter: None,
                unit: 1,
                burst: 1,
            };
        }
        let unit = if bytes_per_sec > u64::from(u32::MAX) {
            1024
        } else {
            1
        };
        let cells = (bytes_per_sec / unit).clamp(1, u64::from(u32::MAX)) as u32;
        let burst = (cells / 10).max(1);
        let (Some(rate), Some(b)) = (NonZeroU32::new(cells), NonZeroU32::new(burst)) else {
            return Throttle::new(0);
        };
        let quota = Quota::per_second(rate).allow_burst(b);
        Throttle {
            limiter: Some(Arc::new(RateLimiter::direct(quota))),
            unit,
            burst,
        }
    }

    /// Wait until `bytes` may pass.
    pub async fn take(&self, bytes: usize) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let mut cells = (bytes as u64).div_ceil(self.unit);
        while cells > 0 {
            let n = cells.min(u64::from(self.burst)) as u32;
            if let Some(n) = NonZeroU32::new(n) {
                // Cannot fail: n never exceeds the burst.
                let _ = limiter.until_n_ready(n).await;
            }
            cells -= u64::from(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_holds_within_five_percent() {
        let t = Throttle::new(2_000_000);
        let start = std::time::Instant::now();
        // 4 MB in uneven chunks: the first 200 kB (the burst) pass at once, the rest at
        // 2 MB/s, so 1.9 s.
        let mut sent = 0usize;
        while sent < 4_000_000 {
            let n = 70_000.min(4_000_000 - sent);
            t.take(n).await;
            sent += n;
        }
        let secs = start.elapsed().as_secs_f64();
        assert!((1.85..1.995).contains(&secs), "took {secs} s");
    }

    #[tokio::test]
    async fn zero_is_unlimited() {
        let t = Throttle::new(0);
        let start = std::time::Instant::now();
        t.take(usize::MAX / 2).await;
        assert!(start.elapsed().as_millis() < 50);
    }
}
