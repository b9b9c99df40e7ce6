//! The SIP transaction layer (RFC 3261 §17, with the RFC 6026 corrections for 2xx responses to
//! INVITE).
//!
//! Pure code: no sockets, no tasks, no clock reads. Every entry point takes the current time as
//! `now: Instant` and returns what to do as [`Action`]s; the async shell sends the bytes, hands
//! timeouts to the transaction user (TU) and sleeps until `next_deadline()`, then calls
//! `on_timer(now)`. All timers of a table live in one [`Deadlines`](crate::deadline::Deadlines).
//!
//! * [`ServerTransactions`]: RFC 3261 Figure 7 (INVITE, with the RFC 6026 "Accepted" state and
//!   Timer L) and Figure 8 (non-INVITE); matching per §17.2.3 including the RFC 2543 fallback.
//! * [`ClientTransactions`]: RFC 3261 Figure 5 (INVITE, with the RFC 6026 "Accepted" state and
//!   Timer M) and Figure 6 (non-INVITE); matching per §17.1.3.
//!
//! "Terminated" is not a stored state: a terminated transaction is removed from its table and
//! reported once as [`Action::Terminated`]. Timers whose value is zero on reliable transports
//! (D, I, J, K) are scheduled at `now`, so termination is always reported by `on_timer`, never
//! inline; the shell's next wake-up is immediate.

pub mod branch;
pub mod client;
pub mod server;

pub use branch::BranchKey;

pub use client::{ClientInput, ClientState, ClientTransactions};
pub use server::{ServerInput, ServerState, ServerTransactions};

use crate::sip::header::BRANCH_MAGIC;
use crate::sip::{HasHeaders, HeaderName, MessageError, Request};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default bound on the number of live transactions in one table.
pub const DEFAULT_MAX_TRANSACTIONS: usize = 100_000;

/// The base timer values of RFC 3261 §17.1.1.1 / Table 4 and the timers derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip time estimate (default 500 ms).
    pub t1: Duration,
    /// Longest retransmission interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer A: initial INVITE request retransmission interval (unreliable only), T1.
    pub fn a(&self) -> Duration {
        self.t1
    }
    /// Timer B: INVITE transaction timeout, 64*T1.
    pub fn b(&self) -> Duration {
        self.t1x64()
    }
    /// Timer D: wait for response retransmissions, at least 32 s on unreliable, 0 on reliable.
    pub fn d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1x64().max(Duration::from_secs(32))
        }
    }
    /// Timer E: initial non-INVITE request retransmission interval (unreliable only), T1.
    pub fn e(&self) -> Duration {
        self.t1
    }
    /// Timer F: non-INVITE transaction timeout, 64*T1.
    pub fn f(&self) -> Duration {
        self.t1x64()
    }
    /// Timer G: initial INVITE final response retransmission interval (unreliable only), T1.
    pub fn g(&self) -> Duration {
        self.t1
    }
    /// Timer H: wait for the ACK, 64*T1.
    pub fn h(&self) -> Duration {
        self.t1x64()
    }
    /// Timer I: wait for ACK retransmissions, T4 on unreliable, 0 on reliable.
    pub fn i(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }
    /// Timer J: wait for non-INVITE request retransmissions, 64*T1 on unreliable, 0 on reliable.
    pub fn j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1x64()
        }
    }
    /// Timer K: wait for non-INVITE response retransmissions, T4 on unreliable, 0 on reliable.
    pub fn k(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }
    /// Timer L (RFC 6026): wait for retransmissions of an accepted INVITE, 64*T1.
    pub fn l(&self) -> Duration {
        self.t1x64()
    }
    /// Timer M (RFC 6026): wait for 2xx retransmissions and forked 2xx, 64*T1.
    pub fn m(&self) -> Duration {
        self.t1x64()
    }
}

/// The timers of RFC 3261 Table 4 and RFC 6026, as deadline keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
}

/// `now + d`, saturating instead of panicking when a configured duration is absurd.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// What the transaction layer asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<A> {
    /// Hand these bytes to the transport for `to`.
    Send { to: A, bytes: Arc<[u8]> },
    /// Server: Timer H fired, the ACK never came. Client: Timer B or F fired, no final
    /// response came (the TU synthesises a 408). Always followed by `Terminated` for the key.
    Timeout { key: TxKey },
    /// The transaction ended and was removed; the key will not be reported again.
    Terminated { key: TxKey },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("no such transaction (never existed or already terminated)")]
    Unknown,
    #[error("status {0} is not a response status (100-699)")]
    BadStatus(u16),
    #[error("transaction in state {state} does not take a {status} response")]
    WrongState { state: &'static str, status: u16 },
    #[error("{0}")]
    Message(#[from] MessageError),
    #[error("request's top Via has no RFC 3261 branch (z9hG4bK...)")]
    NoBranch,
    #[error("ACK is not sent through a client transaction")]
    Ack,
    #[error("a transaction with this branch and method already exists")]
    Duplicate,
    #[error("transaction table full")]
    Overloaded,
}

/// Identifies one transaction. Cheap to clone (one reference count) and to hash: the keyed
/// hash of its strings is computed once, when the key is made, and every table lookup hashes
/// only that number. The hash key is random per process, so crafted branches cannot collide
/// on purpose (HashDoS).
#[derive(Debug, Clone)]
pub struct TxKey(Arc<KeyInner>);

#[derive(Debug)]
struct KeyInner {
    hash: u64,
    kind: KeyKind,
}

impl PartialEq for TxKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.kind == other.0.kind)
    }
}

impl Eq for TxKey {}

impl std::hash::Hash for TxKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl TxKey {
    fn new(kind: KeyKind) -> TxKey {
        let hash = crate::hashing::hash_one(&kind);
        TxKey(Arc::new(KeyInner { hash, kind }))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum KeyKind {
    /// RFC 3261 §17.2.3: branch (with the magic cookie), sent-by, method (ACK counted as
    /// INVITE).
    Server {
        branch: Box<str>,
        sent_by: Box<str>,
        method: Box<str>,
    },
    /// RFC 3261 §17.2.3 fallback for RFC 2543 requests (no magic cookie).
    Legacy(LegacyKey),
    /// RFC 3261 §17.1.3: branch of our top Via and CSeq method.
    Client { branch: Box<str>, method: Box<str> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LegacyKey {
    request_uri: Box<str>,
    to_tag: Option<Box<str>>,
    from_tag: Option<Box<str>>,
    call_id: Box<str>,
    cseq: u32,
    method: Box<str>,
    top_via: Box<str>,
}

impl TxKey {
    /// The transaction's method (INVITE for the ACK of an INVITE transaction).
    pub fn method(&self) -> &str {
        match &self.0.kind {
            KeyKind::Server { method, .. } | KeyKind::Client { method, .. } => method,
            KeyKind::Legacy(l) => &l.method,
        }
    }

    pub fn is_invite(&self) -> bool {
        self.method() == "INVITE"
    }

    /// The Via branch, for RFC 3261 keys.
    pub fn branch(&self) -> Option<&str> {
        match &self.0.kind {
            KeyKind::Server { branch, .. } | KeyKind::Client { branch, .. } => Some(branch),
            KeyKind::Legacy(_) => None,
        }
    }

    /// Matched by the RFC 2543 fallback rules (the request's branch had no magic cookie).
    pub fn is_legacy(&self) -> bool {
        matches!(&self.0.kind, KeyKind::Legacy(_))
    }

    /// Server key of a request per RFC 3261 §17.2.3. `method` overrides the key's method (used to
    /// find the INVITE a CANCEL targets); otherwise ACK keys as INVITE.
    pub(crate) fn server(req: &Request, method: Option<&str>) -> Result<TxKey, MessageError> {
        Self::server_with_via(req, &req.top_via()?, method)
    }

    /// As [`TxKey::server`], with the request's top Via already parsed by the caller.
    pub(crate) fn server_with_via(
        req: &Request,
        via: &crate::sip::Via,
        method: Option<&str>,
    ) -> Result<TxKey, MessageError> {
        let method = method.unwrap_or(match req.method.as_str() {
            "ACK" => "INVITE",
            m => m,
        });
        if let Some(branch) = via.branch().filter(|b| b.starts_with(BRANCH_MAGIC)) {
            let mut sent_by = via.sent_by();
            sent_by.make_ascii_lowercase();
            return Ok(TxKey::new(KeyKind::Server {
                branch: branch.into(),
                sent_by: sent_by.into(),
                method: method.into(),
            }));
        }
        let to_tag = req.to_hdr()?.tag().map(Into::into);
        Ok(TxKey::new(KeyKind::Legacy(LegacyKey {
            request_uri: req.uri.to_string().into(),
            to_tag,
            from_tag: req.from_hdr()?.tag().map(Into::into),
            call_id: req.call_id()?.into(),
            cseq: req.cseq()?.seq,
            method: method.into(),
            top_via: via.to_string().into(),
        })))
    }

    /// The same legacy key with another To tag (RFC 2543 ACK matching: the ACK carries the tag
    /// of our response, the INVITE usually had none).
    pub(crate) fn with_to_tag(&self, tag: Option<&str>) -> Option<TxKey> {
        match &self.0.kind {
            KeyKind::Legacy(l) => Some(TxKey::new(KeyKind::Legacy(LegacyKey {
                to_tag: tag.map(Into::into),
                ..l.clone()
            }))),
            _ => None,
        }
    }

    /// The To tag a legacy key was built with.
    pub(crate) fn legacy_to_tag(&self) -> Option<Option<&str>> {
        match &self.0.kind {
            KeyKind::Legacy(l) => Some(l.to_tag.as_deref()),
            _ => None,
        }
    }

    pub(crate) fn client(branch: &str, method: &str) -> TxKey {
        TxKey::new(KeyKind::Client {
            branch: branch.into(),
            method: method.into(),
        })
    }
}

/// A request derived from `req` for the same transaction: the CANCEL of RFC 3261 §9.1 or the
/// ACK of §17.1.1.3. Request-URI, Call-ID, From and the CSeq number are those of `req` (CSeq
/// method replaced), the only Via is `req`'s top Via, Route headers are copied, To is `to` when
/// given (the response's To, for ACK) or `req`'s, Max-Forwards is 70. `None` when `req` lacks
/// what it needs (never for requests accepted by `ClientTransactions::send`).
pub(crate) fn derived_request(req: &Request, method: &str, to: Option<&str>) -> Option<Request> {
    let seq = req.cseq().ok()?.seq;
    let top_via = req.headers.list(HeaderName::Via).first()?.to_string();
    let mut out = Request {
        method: method.to_string(),
        uri: req.uri.clone(),
        headers: crate::sip::Headers::new(),
        body: Vec::new(),
    };
    out.headers.push(HeaderName::Via, top_via);
    for h in &req.headers.0 {
        match h.kind {
            HeaderName::Route | HeaderName::From | HeaderName::CallId => {
                out.headers.0.push(h.clone())
            }
            HeaderName::To => match to {
                Some(v) => out.headers.push(HeaderName::To, v),
                None => out.headers.0.push(h.clone()),
            },
            _ => {}
        }
    }
    out.headers
        .push(HeaderName::CSeq, format!("{seq} {method}"));
    out.headers.push(HeaderName::MaxForwards, "70");
    Some(out)
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::sip::{parse_message, Limits, Message, Request};
    use std::time::Duration;

    pub fn req(text: &str) -> Request {
        let raw = text.replace('\n', "\r\n");
        match parse_message(raw.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3261_17_1_1_1_default_timer_values() {
        let t = Timers::default();
        assert_eq!(t.a(), Duration::from_millis(500));
        assert_eq!(t.b(), Duration::from_secs(32));
        assert_eq!(t.d(false), Duration::from_secs(32));
        assert_eq!(t.d(true), Duration::ZERO);
        assert_eq!(t.e(), Duration::from_millis(500));
        assert_eq!(t.f(), Duration::from_secs(32));
        assert_eq!(t.g(), Duration::from_millis(500));
        assert_eq!(t.h(), Duration::from_secs(32));
        assert_eq!(t.i(false), Duration::from_secs(5));
        assert_eq!(t.i(true), Duration::ZERO);
        assert_eq!(t.j(false), Duration::from_secs(32));
        assert_eq!(t.j(true), Duration::ZERO);
        assert_eq!(t.k(false), Duration::from_secs(5));
        assert_eq!(t.k(true), Duration::ZERO);
        assert_eq!(t.l(), Duration::from_secs(32));
        assert_eq!(t.m(), Duration::from_secs(32));
        // Absurd configuration saturates instead of panicking.
        let huge = Timers {
            t1: Duration::MAX,
            ..Timers::default()
        };
        assert_eq!(huge.b(), Duration::MAX);
        let now = Instant::now();
        assert!(after(now, huge.b()) >= now);
    }
}
