//! Wall-clock time derived from tokio's clock, so that tests with a paused clock move
//! expiry times (stored as unix seconds to survive restarts) as well as timers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_unix: Duration,
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            base_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            base: Instant::now(),
        }
    }

    /// A clock whose "now" is a given unix time (tests).
    pub fn at(unix_secs: u64) -> Clock {
        Clock {
            base_unix: Duration::from_secs(unix_secs),
            base: Instant::now(),
        }
    }

    pub fn now_unix(&self) -> u64 {
        (self.base_unix + self.base.elapsed()).as_secs()
    }

    pub fn now_unix_ms(&self) -> u64 {
        (self.base_unix + self.base.elapsed()).as_millis() as u64
    }

    /// The tokio instant at which a unix time is reached (now, if it is past).
    pub fn instant_of(&self, unix_secs: u64) -> Instant {
        let target = Duration::from_secs(unix_secs);
        let now_unix = self.base_unix + self.base.elapsed();
        Instant::now() + target.saturating_sub(now_unix)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
