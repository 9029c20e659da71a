//! `MAX_TRANSFER_RATE`: one token bucket (the `governor` crate's GCRA limiter) shared by
//! every transfer of the process, charged before each chunk is written.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A shared limit in bytes per second, or none.
#[derive(Clone)]
pub struct Throttle {
    limiter: Option<Arc<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>>,
    /// Bytes per cell: 1, or 1 KiB for rates beyond what a `u32` of bytes holds.
    unit: u64,
    /// Most cells one wait asks for: 1/20 s worth, a fifth of the bucket.
    piece: u32,
}

impl Throttle {
    /// A limit of `bytes_per_sec` (0: unlimited).
    ///
    /// The bucket holds 1/4 s worth of bytes and starts empty; one wait asks for at most
    /// 1/20 s worth. A waiter that wakes up late (a busy machine) finds the bytes that
    /// accumulated meanwhile still in the bucket, as long as it is less than 200 ms late:
    /// asking for a whole bucket at once would lose every millisecond of lateness (a
    /// measured 7-10% under the limit on a loaded machine). A bucket left full by an idle
    /// spell lets 1/4 s worth through at once: at most 2.5% over any 10 s.
    pub fn new(bytes_per_sec: u64) -> Self {
        if bytes_per_sec == 0 {
            return Throttle {
                limiter: None,
                unit: 1,
                piece: 1,
            };
        }
        let unit = if bytes_per_sec > u64::from(u32::MAX) {
            1024
        } else {
            1
        };
        let cells = (bytes_per_sec / unit).clamp(1, u64::from(u32::MAX)) as u32;
        let burst = (cells / 4).max(1);
        let piece = (cells / 20).max(1);
        let (Some(rate), Some(b)) = (NonZeroU32::new(cells), NonZeroU32::new(burst)) else {
            return Throttle::new(0);
        };
        let limiter = RateLimiter::direct(Quota::per_second(rate).allow_burst(b));
        // Start empty: no burst at the start of a run.
        let _ = limiter.check_n(b);
        Throttle {
            limiter: Some(Arc::new(limiter)),
            unit,
            piece,
        }
    }

    /// Wait until `bytes` may pass.
    pub async fn take(&self, bytes: usize) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let mut cells = (bytes as u64).div_ceil(self.unit);
        while cells > 0 {
            let n = cells.min(u64::from(self.piece)) as u32;
            if let Some(n) = NonZeroU32::new(n) {
                // The wait is tokio's timer (governor's own `until_n_ready` sleeps on the
                // futures-timer thread: one more wake-up to be late on a busy machine).
                // `Err` cannot happen: n never exceeds the bucket.
                while let Ok(Err(not_until)) = limiter.check_n(n) {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    tokio::time::sleep(wait).await;
                }
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
        // 4 MB in uneven chunks, some larger than the bucket: at 2 MB/s from an empty
        // bucket, 2 s.
        let mut sent = 0usize;
        while sent < 4_000_000 {
            let n = [70_000, 900_000, 13_000][sent % 3].min(4_000_000 - sent);
            t.take(n).await;
            sent += n;
        }
        let secs = start.elapsed().as_secs_f64();
        assert!((1.98..2.1).contains(&secs), "took {secs} s");
    }

    #[tokio::test]
    async fn zero_is_unlimited() {
        let t = Throttle::new(0);
        let start = std::time::Instant::now();
        t.take(usize::MAX / 2).await;
        assert!(start.elapsed().as_millis() < 50);
    }
}
