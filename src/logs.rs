//! What an admin reads in the log, defined in one place: the access lines (one per request
//! received and per final answer sent, at `debug`), the authentication-failure line that
//! fail2ban acts on (`packaging/fail2ban/`), a throttle for lines an attacker or a broken
//! peer can repeat at will, and the per-interval summary of failing NOTIFYs.

use crate::sip::{HeaderName, Request, Response};
use crate::transport::Peer;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tracing target of the authentication-failure line (`RUST_LOG=busylamp::auth_failed=warn`
/// keeps it whatever else is filtered).
pub const AUTH_FAILED_TARGET: &str = "busylamp::auth_failed";

/// The fixed start of the authentication-failure line; the filter in
/// `packaging/fail2ban/filter.d/busylamp.conf` matches on it.
pub const AUTH_FAILED: &str = "auth failed:";

/// Why credentials were refused. Only failures a client with the right password never
/// produces are logged as such: a stale, replayed or unknown nonce (every phone presents one
/// after our restart, a whole office behind one NAT at once) is challenged again at `debug`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    WrongPassword,
    UnknownUser,
    /// An Authorization / Proxy-Authorization header that does not parse.
    BadCredentials,
    /// Credentials computed for another Request-URI (RFC 7616 §3.4.6).
    DigestUriMismatch,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::WrongPassword => "wrong password",
            AuthFailure::UnknownUser => "unknown user",
            AuthFailure::BadCredentials => "bad credentials",
            AuthFailure::DigestUriMismatch => "digest uri mismatch",
        }
    }
}

/// The authentication-failure line, without the subscriber's timestamp/level/target prefix:
///
/// `auth failed: source=192.0.2.7 user="1001" method=REGISTER reason="wrong password"`
///
/// `source` is the packet's source address (never a header), first, so nothing a client sends
/// can come before it. `user` is the digest username as sent, quoted with `"` and `\` escaped
/// (and control characters as `\n`, `\u{..}`), cut at 64 characters: it cannot end the quoted
/// field or start another line. `method` keeps only SIP token characters.
pub fn auth_failed_line(source: IpAddr, user: &str, method: &str, reason: AuthFailure) -> String {
    let user: String = user.chars().take(64).collect();
    let method: String = method
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(*c))
        .take(32)
        .collect();
    let source = match source {
        // An IPv4 client on a dual-stack socket: the address fail2ban can ban.
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    format!(
        "{AUTH_FAILED} source={source} user={user:?} method={method} reason=\"{}\"",
        reason.as_str()
    )
}

/// Logs one authentication failure at `warn` (see [`auth_failed_line`]).
pub fn auth_failed(source: IpAddr, user: &str, method: &str, reason: AuthFailure) {
    tracing::warn!(target: AUTH_FAILED_TARGET, "{}", auth_failed_line(source, user, method, reason));
}

/// `debug`: a request as it arrives (retransmissions too), before anything is decided.
pub fn request_received(req: &Request, source: &Peer) {
    tracing::debug!(
        method = %req.method,
        call_id = req.headers.get(HeaderName::CallId).unwrap_or(""),
        from = req.headers.get(HeaderName::From).unwrap_or(""),
        to = req.headers.get(HeaderName::To).unwrap_or(""),
        %source,
        "request received"
    );
}

/// `debug`: a final answer to a request leaves towards `to` (who sent the request),
/// `received` being when the request arrived (`None`: answered on arrival).
pub fn answer_sent(resp: &Response, to: &Peer, received: Option<Instant>, now: Instant) {
    if resp.status < 200 {
        return;
    }
    tracing::debug!(
        method = %resp
            .headers
            .get(HeaderName::CSeq)
            .and_then(|c| c.split_ascii_whitespace().nth(1))
            .unwrap_or(""),
        call_id = resp.headers.get(HeaderName::CallId).unwrap_or(""),
        from = resp.headers.get(HeaderName::From).unwrap_or(""),
        to = resp.headers.get(HeaderName::To).unwrap_or(""),
        source = %to,
        status = resp.status,
        reason = %resp.reason,
        took_ms = received.map_or(0, |r| now.saturating_duration_since(r).as_millis() as u64),
        "answer sent"
    );
}

/// Lines a peer can make us repeat at will (garbage on a TCP connection, unparseable
/// datagrams, refused connections) are written at most [`Throttle::PER_WINDOW`] times per
/// kind and source per [`Throttle::WINDOW`]; then one line says how many were left out.
pub struct Throttle {
    windows: Mutex<HashMap<(&'static str, IpAddr), Window>>,
}

struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            windows: Mutex::new(HashMap::new()),
        }
    }
}

impl Throttle {
    pub const PER_WINDOW: u32 = 5;
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// Sources tracked one by one; beyond, new sources share one entry per kind (so a flood
    /// from many addresses costs bounded memory and still logs bounded lines).
    pub const MAX_SOURCES: usize = 1024;

    /// Whether a line of `kind` about `source` may be written now. When a window ends with
    /// lines left out, the summary is written first.
    pub fn allow(&self, kind: &'static str, source: IpAddr, now: Instant) -> bool {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let key = if w.len() >= Self::MAX_SOURCES && !w.contains_key(&(kind, source)) {
            (kind, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        } else {
            (kind, source)
        };
        let e = w.entry(key).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(e.started) >= Self::WINDOW {
            summary(key, e.suppressed);
            *e = Window {
                started: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if e.logged < Self::PER_WINDOW {
            e.logged += 1;
            true
        } else {
            e.suppressed += 1;
            false
        }
    }

    /// Writes the summaries of windows that have ended and forgets them (called
    /// periodically, so the count of a flood that stopped is not lost).
    pub fn flush(&self, now: Instant) {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|key, e| {
            if now.saturating_duration_since(e.started) < Self::WINDOW {
                return true;
            }
            summary(*key, e.suppressed);
            false
        });
    }
}

fn summary((kind, source): (&'static str, IpAddr), suppressed: u64) {
    if suppressed > 0 {
        let source = if source.is_unspecified() {
            "many sources".to_string()
        } else {
            source.to_string()
        };
        tracing::info!(
            kind,
            %source,
            suppressed,
            "repeated log lines left out (at most {} per {} s per kind and source)",
            Throttle::PER_WINDOW,
            Throttle::WINDOW.as_secs()
        );
    }
}

/// How often failing NOTIFYs are summed up at `info` (the per-watcher lines are at `debug`).
pub const NOTIFY_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Counts of failing NOTIFYs since the last summary: after a restart with thousands of
/// subscriptions whose watchers are gone, one `info` line per interval instead of one per
/// watcher.
#[derive(Default)]
pub struct NotifyFailures {
    /// NOTIFYs that got no 2xx (timeout, transport error, error answer).
    failed: AtomicU64,
    /// Of those, the ones whose subscription retries later.
    retried: AtomicU64,
    /// Subscriptions ended because their NOTIFYs failed or were refused.
    given_up: AtomicU64,
}

impl NotifyFailures {
    pub fn retried(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// A NOTIFY refused for good (481 and kin): its subscription ends.
    pub fn refused(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.given_up.fetch_add(1, Ordering::Relaxed);
    }

    /// A subscription ended because its watcher has too many failing.
    pub fn given_up(&self) {
        self.given_up.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes one `info` line with the counts since the last call, if any.
    pub fn summarise(&self) {
        let failed = self.failed.swap(0, Ordering::Relaxed);
        let retried = self.retried.swap(0, Ordering::Relaxed);
        let given_up = self.given_up.swap(0, Ordering::Relaxed);
        if failed + retried + given_up > 0 {
            tracing::info!(
                failed,
                retried,
                given_up,
                interval_s = NOTIFY_SUMMARY_INTERVAL.as_secs(),
                "NOTIFYs failing (per-watcher detail at debug)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failed_line_is_stable_and_a_username_cannot_break_out() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            auth_failed_line(ip, "1001", "REGISTER", AuthFailure::WrongPassword),
            r#"auth failed: source=192.0.2.7 user="1001" method=REGISTER reason="wrong password""#
        );
        let evil = "x\" source=10.9.9.9\nauth failed: source=10.9.9.9 user=\"y";
        let line = auth_failed_line(ip, evil, "REG ISTER\n", AuthFailure::UnknownUser);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("auth failed: source=192.0.2.7 user=\"x\\\" source="));
        assert!(
            line.ends_with(" method=REGISTER reason=\"unknown user\""),
            "{line}"
        );
        // An IPv4 client seen through a dual-stack socket is logged as IPv4.
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert!(
            auth_failed_line(mapped, "a", "INVITE", AuthFailure::BadCredentials)
                .starts_with("auth failed: source=192.0.2.9 ")
        );
    }

    #[test]
    fn throttle_lets_a_few_through_per_window_and_source() {
        let t = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| t.allow("garbage", a, t0)).count();
        assert_eq!(allowed, Throttle::PER_WINDOW as usize);
        // Another source and another kind have their own budget.
        assert!(t.allow("garbage", b, t0));
        assert!(t.allow("refused", a, t0));
        // A new window: lines again.
        assert!(t.allow("garbage", a, t0 + Throttle::WINDOW));
        t.flush(t0 + Throttle::WINDOW * 3);
        assert!(t.windows.lock().unwrap().is_empty());
    }

    #[test]
    fn throttle_memory_is_bounded_under_a_flood_from_many_sources() {
        let t = Throttle::default();
        let t0 = Instant::now();
        let mut allowed = 0;
        for i in 0..20_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            allowed += t.allow("garbage", ip, t0) as usize;
        }
        assert!(t.windows.lock().unwrap().len() <= Throttle::MAX_SOURCES + 1);
        assert!(allowed <= Throttle::MAX_SOURCES + Throttle::PER_WINDOW as usize);
    }
}
