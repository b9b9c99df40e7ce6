//! Per-source rate limit for requests that create state (new SUBSCRIBEs, REGISTERs): one
//! token bucket per source ([`crate::transport::source_of`]: an IPv4 address, an IPv6 /64),
//! in a bounded table. Pure: the caller passes the time.
//!
//! A phone in a loop (baresip's mwi module sent 21,222 SUBSCRIBEs in 5 s) spends its burst,
//! then gets `503` with `Retry-After` while every other source is served as before.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources tracked at once. A full table first drops the sources whose bucket has refilled
/// (they are as good as new), else the one seen least recently.
pub const MAX_SOURCES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// `[server] rate_limit_per_source` and `rate_limit_burst`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens added per second; 0 turns the limit off.
    rate: f64,
    /// Bucket size: requests a source may send at once after a quiet time.
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

/// A request over the limit: when the source may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Whole seconds until a token is back (at least 1), for `Retry-After`.
    pub retry_after: u64,
}

impl RateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::with_capacity(rate_per_second, burst, MAX_SOURCES)
    }

    fn with_capacity(rate_per_second: f64, burst: u32, max_sources: usize) -> RateLimiter {
        RateLimiter {
            rate: rate_per_second.max(0.0),
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Sources in the table.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    /// Takes a token of `ip`'s source at `now`, or says when one is back.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        if !self.enabled() {
            return Ok(());
        }
        let source = crate::transport::source_of(ip);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            self.make_room(now);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = refilled(b, rate, burst, now);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
        Err(Refused {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        })
    }

    /// Drops every source whose bucket is full again; if none is, the least recently seen.
    fn make_room(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .retain(|_, b| refilled(b, rate, burst, now) < burst);
        if self.buckets.len() >= self.max_sources {
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| *k)
            {
                self.buckets.remove(&oldest);
            }
        }
    }
}

fn refilled(b: &Bucket, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_one_request_per_token_refilled() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2.0, 5);
        for _ in 0..5 {
            assert_eq!(l.check(ip("192.0.2.1"), t0), Ok(()));
        }
        assert_eq!(
            l.check(ip("192.0.2.1"), t0),
            Err(Refused { retry_after: 1 })
        );
        // Another source has its own bucket.
        assert_eq!(l.check(ip("192.0.2.2"), t0), Ok(()));
        // Half a second later one token is back (2/s), and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.check(ip("192.0.2.1"), t1), Ok(()));
        assert!(l.check(ip("192.0.2.1"), t1).is_err());
        // A quiet while refills the bucket to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert_eq!(l.check(ip("192.0.2.1"), t2), Ok(()));
        }
        assert!(l.check(ip("192.0.2.1"), t2).is_err());
    }

    #[test]
    fn retry_after_is_the_whole_seconds_until_a_token_is_back() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0.1, 1);
        assert_eq!(l.check(ip("192.0.2.1"), t0), Ok(()));
        assert_eq!(
            l.check(ip("192.0.2.1"), t0),
            Err(Refused { retry_after: 10 })
        );
    }

    #[test]
    fn one_ipv6_host_is_one_source_whatever_interface_id_it_sends_from() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1.0, 2);
        assert!(l.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(l.check(ip("2001:db8:1:2::2"), t0).is_ok());
        assert!(l.check(ip("2001:db8:1:2::3"), t0).is_err());
        assert!(l.check(ip("2001:db8:1:3::1"), t0).is_ok());
    }

    #[test]
    fn zero_rate_is_off() {
        let mut l = RateLimiter::new(0.0, 1);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(l.check(ip("192.0.2.1"), t0).is_ok());
        }
        assert_eq!(l.sources(), 0);
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let t0 = Instant::now();
        let mut l = RateLimiter::with_capacity(1.0, 3, 4);
        for i in 0..100 {
            assert!(l.check(ip(&format!("198.51.100.{i}")), t0).is_ok());
            assert!(l.sources() <= 4);
        }
    }

    #[test]
    fn refilled_sources_are_dropped_before_anyone_is_evicted() {
        let t0 = Instant::now();
        let mut l = RateLimiter::with_capacity(1.0, 2, 2);
        assert!(l.check(ip("192.0.2.1"), t0).is_ok());
        let t1 = t0 + Duration::from_millis(100);
        // The flooder, seen after 192.0.2.1, empties its bucket.
        for _ in 0..2 {
            assert!(l.check(ip("192.0.2.99"), t1).is_ok());
        }
        // Ten seconds on, 192.0.2.1 has refilled; the flooder has too, but a new source
        // arrives while the flooder keeps sending.
        let t2 = t1 + Duration::from_secs(10);
        for _ in 0..2 {
            assert!(l.check(ip("192.0.2.99"), t2).is_ok());
        }
        assert!(l.check(ip("192.0.2.99"), t2).is_err());
        assert!(l.check(ip("192.0.2.7"), t2).is_ok());
        // 192.0.2.1 made room; the flooder's empty bucket stayed.
        assert!(l.check(ip("192.0.2.99"), t2).is_err());
        assert_eq!(l.sources(), 2);
    }
}
