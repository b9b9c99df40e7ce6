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

    /// The tokio instant for an expiry stored as whole unix seconds: as many whole seconds
    /// from now as `unix_secs` is after the current second (now, if it is not later).
    ///
    /// Expiries are stored as `now_unix() + expires`, so the instant is `now + expires`
    /// when the record is made: never before the stored second (the expiry check that runs
    /// then agrees), and at the fraction of a second the record was made at. Firing at the
    /// whole second instead would gather every expiry made during one second into one
    /// instant: at 20 calls/s, twenty ended calls' lingering dialog states expired together
    /// and their fan-outs held a call's lamp NOTIFY back by milliseconds, once a second.
    pub fn instant_of(&self, unix_secs: u64) -> Instant {
        let now_secs = self.now_unix();
        Instant::now() + Duration::from_secs(unix_secs.saturating_sub(now_secs))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
