//! The simulator's clock: real time plus an offset that tests move forward, so a recording that
//! appears "two hours later" or a signed URL that expires can be reached without waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Real time, shifted by everything [`SimClock::advance`] added.
#[derive(Debug, Default)]
pub struct SimClock {
    offset_ms: AtomicI64,
}

impl SimClock {
    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64);
        real.unwrap_or(0) + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Unix time in seconds, as Aircall writes times.
    pub fn now_s(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}
