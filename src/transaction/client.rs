//! Client transactions: RFC 3261 §17.1.
//!
//! INVITE (RFC 3261 Figure 5 as corrected by RFC 6026):
//!
//! ```text
//!  Calling    --Timer A: resend, A = 2A (unreliable only)
//!  Calling    --Timer B: Timeout to TU--> Terminated
//!  Calling/Proceeding --1xx: to TU--> Proceeding       (A and B stop)
//!  Calling/Proceeding --2xx: to TU--> Accepted         (Timer M = 64*T1)
//!  Calling/Proceeding --300-699: send ACK, to TU--> Completed (Timer D = 32 s, 0 if reliable)
//!  Accepted   --2xx: to TU (retransmissions and other forks); Timer M--> Terminated
//!  Completed  --300-699: resend ACK; Timer D--> Terminated
//! ```
//!
//! Non-INVITE (RFC 3261 Figure 6):
//!
//! ```text
//!  Trying     --Timer E: resend, E = min(2E, T2) (unreliable only)
//!  Trying     --1xx: to TU--> Proceeding
//!  Proceeding --Timer E: resend, E = T2; 1xx: to TU
//!  Trying/Proceeding --200-699: to TU--> Completed     (Timer K = T4, 0 if reliable)
//!  Trying/Proceeding --Timer F: Timeout to TU--> Terminated
//!  Completed  --responses absorbed; Timer K--> Terminated
//! ```

use super::{
    after, derived_request, Action, Timer, Timers, TxError, TxKey, DEFAULT_MAX_TRANSACTIONS,
};
use crate::deadline::Deadlines;
use crate::sip::header::BRANCH_MAGIC;
use crate::sip::{HasHeaders, HeaderName, Request, Response};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE: sent, nothing heard yet.
    Calling,
    /// Non-INVITE: sent, nothing heard yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE only (RFC 6026): a 2xx arrived.
    Accepted,
}

/// What an incoming response means to the client transaction layer. The response itself is
/// the one the caller passed in; it is not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput<A> {
    /// Pass the response to the TU of `key`. `actions` holds the ACK the transaction sends
    /// for a non-2xx final to INVITE (RFC 3261 §17.1.1.3), otherwise nothing.
    Deliver { key: TxKey, actions: Vec<Action<A>> },
    /// A retransmission the transaction handles itself: a non-2xx final to INVITE is answered
    /// by resending the ACK (in `actions`), anything else is dropped.
    Absorbed { actions: Vec<Action<A>> },
    /// Matches no transaction (RFC 6026 §7.3 / RFC 3261 §18.1.2): for example a 2xx
    /// retransmission to an INVITE after Timer M, or a response with no usable Via or CSeq.
    /// A proxy core forwards 2xx to INVITE statelessly and drops the rest.
    Stray,
}

#[derive(Debug)]
struct ClientTx<A> {
    invite: bool,
    state: ClientState,
    to: A,
    reliable: bool,
    /// The request, serialised once.
    bytes: Arc<[u8]>,
    /// INVITE only: the request, to build the ACK and the CANCEL from.
    request: Option<Request>,
    /// INVITE only: the ACK of the non-2xx final, serialised once.
    ack: Option<Arc<[u8]>>,
    /// Next Timer A or E interval.
    interval: Duration,
}

/// A client transaction as its table holds it (see [`ClientTransactions`]'s `txs`).
type Slot<A> = Box<ClientTx<A>>;

/// All client transactions of one element. `A` is the caller's opaque destination address.
#[derive(Debug)]
pub struct ClientTransactions<A: Clone> {
    /// Boxed: a fan-out starts a transaction per watcher and they all linger for Timer K,
    /// so the table doubles in the middle of a fan-out (25,000 transactions for 5,000
    /// NOTIFY/s). Growing a table of whole transactions (~400 bytes a bucket) moved and
    /// page-faulted megabytes at once: 20-30 ms during which that fan-out's last NOTIFYs
    /// waited. A bucket of two pointers regrows in well under a millisecond.
    txs: crate::hashing::FastMap<TxKey, Slot<A>>,
    timers: Deadlines<(TxKey, Timer)>,
    cfg: Timers,
    max: usize,
}

impl<A: Clone> Default for ClientTransactions<A> {
    fn default() -> Self {
        Self::new(Timers::default(), DEFAULT_MAX_TRANSACTIONS)
    }
}

impl<A: Clone> ClientTransactions<A> {
    pub fn new(timers: Timers, max_transactions: usize) -> Self {
        ClientTransactions {
            txs: crate::hashing::map(),
            timers: Deadlines::new(),
            cfg: timers,
            max: max_transactions,
        }
    }

    pub fn max_transactions(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Starts a client transaction for `req` towards `to` and returns its key with the first
    /// `Send`. The request must already carry its top Via with an RFC 3261 branch (see
    /// [`BranchKey::mint`](super::BranchKey::mint)) and a CSeq.
    ///
    /// Errors: `Ack` (an ACK is never a client transaction: the ACK for a 2xx is sent by the
    /// core directly, the ACK for a non-2xx by the INVITE transaction), `NoBranch`, `Message`
    /// (no Via or CSeq), `Duplicate` (a live transaction has this branch and method),
    /// `Overloaded` (table full).
    pub fn send(
        &mut self,
        req: Request,
        to: A,
        reliable: bool,
        now: Instant,
    ) -> Result<(TxKey, Vec<Action<A>>), TxError> {
        not_ack(&req)?;
        let branch = req.top_via()?.branch().ok_or(TxError::NoBranch)?;
        let cseq = req.cseq()?;
        let key = client_key(&branch, &cseq.method)?;
        self.start(req, key, to, reliable, now)
    }

    /// [`ClientTransactions::send`] for a request we built ourselves with a branch we just
    /// minted ([`BranchKey::mint`](super::BranchKey::mint)) in its top Via, and a CSeq naming
    /// its method: the key is made from those parts instead of parsing them back out of the
    /// headers (a fan-out starts a thousand of these).
    pub fn send_minted(
        &mut self,
        req: Request,
        branch: &str,
        to: A,
        reliable: bool,
        now: Instant,
    ) -> Result<(TxKey, Vec<Action<A>>), TxError> {
        not_ack(&req)?;
        debug_assert_eq!(
            req.top_via().ok().and_then(|v| v.branch()).as_deref(),
            Some(branch)
        );
        debug_assert_eq!(req.cseq().ok().map(|c| c.method), Some(req.method.clone()));
        let key = client_key(branch, &req.method)?;
        self.start(req, key, to, reliable, now)
    }

    fn start(
        &mut self,
        req: Request,
        key: TxKey,
        to: A,
        reliable: bool,
        now: Instant,
    ) -> Result<(TxKey, Vec<Action<A>>), TxError> {
        if self.txs.contains_key(&key) {
            return Err(TxError::Duplicate);
        }
        if self.txs.len() >= self.max {
            return Err(TxError::Overloaded);
        }
        let invite = req.method == "INVITE";
        let bytes: Arc<[u8]> = req.to_shared();
        let (retransmit, timeout) = if invite {
            (Timer::A, Timer::B)
        } else {
            (Timer::E, Timer::F)
        };
        let interval = self.cfg.t1;
        if !reliable {
            self.timers
                .schedule((key.clone(), retransmit), after(now, interval));
        }
        let timeout_after = if invite { self.cfg.b() } else { self.cfg.f() };
        self.timers
            .schedule((key.clone(), timeout), after(now, timeout_after));
        self.txs.insert(
            key.clone(),
            Box::new(ClientTx {
                invite,
                state: if invite {
                    ClientState::Calling
                } else {
                    ClientState::Trying
                },
                to: to.clone(),
                reliable,
                bytes: bytes.clone(),
                request: if invite { Some(req) } else { None },
                ack: None,
                interval,
            }),
        );
        Ok((key, vec![Action::Send { to, bytes }]))
    }

    /// Matches a response to its client transaction (RFC 3261 §17.1.3: top Via branch and CSeq
    /// method) and runs it. One hash lookup.
    pub fn on_response(&mut self, resp: &Response, now: Instant) -> ClientInput<A> {
        let Some(key) = response_key(resp) else {
            return ClientInput::Stray;
        };
        let Some(tx) = self.txs.get_mut(&key) else {
            return ClientInput::Stray;
        };
        let status = resp.status;
        if !(100..=699).contains(&status) {
            return ClientInput::Stray;
        }
        let deliver = |key: TxKey| ClientInput::Deliver {
            key,
            actions: Vec::new(),
        };
        let absorbed = || ClientInput::Absorbed {
            actions: Vec::new(),
        };
        if tx.invite {
            match (tx.state, status) {
                (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                    if tx.state == ClientState::Calling {
                        tx.state = ClientState::Proceeding;
                        self.cancel_timers(&key, &[Timer::A, Timer::B]);
                    }
                    deliver(key)
                }
                (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                    tx.state = ClientState::Accepted;
                    self.cancel_timers(&key, &[Timer::A, Timer::B]);
                    self.timers
                        .schedule((key.clone(), Timer::M), after(now, self.cfg.m()));
                    deliver(key)
                }
                (ClientState::Calling | ClientState::Proceeding, _) => {
                    tx.state = ClientState::Completed;
                    let to_value = resp.headers.get(HeaderName::To);
                    tx.ack = tx
                        .request
                        .as_ref()
                        .and_then(|r| derived_request(r, "ACK", to_value))
                        .map(|ack| ack.to_shared());
                    let actions = tx
                        .ack
                        .iter()
                        .map(|bytes| Action::Send {
                            to: tx.to.clone(),
                            bytes: bytes.clone(),
                        })
                        .collect();
                    let d = self.cfg.d(tx.reliable);
                    self.cancel_timers(&key, &[Timer::A, Timer::B]);
                    self.timers.schedule((key.clone(), Timer::D), after(now, d));
                    ClientInput::Deliver { key, actions }
                }
                // RFC 6026: every 2xx in Accepted goes up (retransmissions, other forks).
                (ClientState::Accepted, 200..=299) => deliver(key),
                (ClientState::Completed, 300..=699) => ClientInput::Absorbed {
                    actions: tx
                        .ack
                        .iter()
                        .map(|bytes| Action::Send {
                            to: tx.to.clone(),
                            bytes: bytes.clone(),
                        })
                        .collect(),
                },
                _ => absorbed(),
            }
        } else {
            match (tx.state, status) {
                (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                    tx.state = ClientState::Proceeding;
                    deliver(key)
                }
                (ClientState::Trying | ClientState::Proceeding, _) => {
                    tx.state = ClientState::Completed;
                    let k = self.cfg.k(tx.reliable);
                    self.cancel_timers(&key, &[Timer::E, Timer::F]);
                    self.timers.schedule((key.clone(), Timer::K), after(now, k));
                    deliver(key)
                }
                _ => absorbed(),
            }
        }
    }

    /// Runs every timer due at `now`, in deadline order.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action<A>> {
        let mut out = Vec::new();
        for (key, timer) in self.timers.pop_due(now) {
            let Some(tx) = self.txs.get_mut(&key) else {
                continue;
            };
            match (timer, tx.state) {
                (Timer::A, ClientState::Calling) => {
                    out.push(Action::Send {
                        to: tx.to.clone(),
                        bytes: tx.bytes.clone(),
                    });
                    // §17.1.1.2: Timer A doubles without a cap; Timer B ends it.
                    tx.interval = tx.interval.saturating_mul(2);
                    let at = after(now, tx.interval);
                    self.timers.schedule((key, Timer::A), at);
                }
                (Timer::E, ClientState::Trying | ClientState::Proceeding) => {
                    out.push(Action::Send {
                        to: tx.to.clone(),
                        bytes: tx.bytes.clone(),
                    });
                    // §17.1.2.2: doubling capped at T2 in Trying, T2 in Proceeding.
                    tx.interval = if tx.state == ClientState::Trying {
                        tx.interval.saturating_mul(2).min(self.cfg.t2)
                    } else {
                        self.cfg.t2
                    };
                    let at = after(now, tx.interval);
                    self.timers.schedule((key, Timer::E), at);
                }
                (Timer::B, ClientState::Calling)
                | (Timer::F, ClientState::Trying | ClientState::Proceeding) => {
                    out.push(Action::Timeout { key: key.clone() });
                    self.remove(&key);
                    out.push(Action::Terminated { key });
                }
                (Timer::D, ClientState::Completed)
                | (Timer::K, ClientState::Completed)
                | (Timer::M, ClientState::Accepted) => {
                    self.remove(&key);
                    out.push(Action::Terminated { key });
                }
                _ => {}
            }
        }
        out
    }

    /// When `on_timer` next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn state(&self, key: &TxKey) -> Option<ClientState> {
        self.txs.get(key).map(|t| t.state)
    }

    /// The CANCEL for INVITE client transaction `key` (RFC 3261 §9.1): same Request-URI,
    /// Call-ID, From, To and CSeq number as the INVITE, CSeq method CANCEL, the INVITE's top
    /// Via (so its branch) as the only Via, its Route headers, Max-Forwards 70. It is sent
    /// through its own client transaction ([`send`](Self::send)).
    ///
    /// `None` unless `key` is an INVITE still waiting for a final response (Calling or
    /// Proceeding). §9.1: the CANCEL must not be sent before a provisional response arrived:
    /// when [`state`](Self::state) is still `Calling`, hold it until it is `Proceeding`.
    pub fn cancel_request(&self, key: &TxKey) -> Option<Request> {
        let tx = self.txs.get(key)?;
        if !matches!(tx.state, ClientState::Calling | ClientState::Proceeding) {
            return None;
        }
        derived_request(tx.request.as_ref()?, "CANCEL", None)
    }

    /// RFC 3261 §17.1.4: the transport could not reach a destination (a connection to it
    /// could not be opened). Every transaction towards a destination `unreachable` holds
    /// that still waits for a final response ends at once, without Timer B/F; their keys
    /// are returned so the TU hears of it (as a 503, §8.1.3.1).
    pub fn fail_unreachable(&mut self, unreachable: impl Fn(&A) -> bool) -> Vec<TxKey> {
        let failed: Vec<TxKey> = self
            .txs
            .iter()
            .filter(|(_, tx)| {
                matches!(
                    tx.state,
                    ClientState::Calling | ClientState::Trying | ClientState::Proceeding
                ) && unreachable(&tx.to)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &failed {
            self.remove(k);
        }
        failed
    }

    /// Drops a transaction at once (TU abandoning it, or a transport error, RFC 3261 §17.1.4).
    /// No action is produced for it. `true` when it existed.
    pub fn terminate(&mut self, key: &TxKey) -> bool {
        self.remove(key)
    }

    fn cancel_timers(&mut self, key: &TxKey, timers: &[Timer]) {
        let mut k = (key.clone(), Timer::A);
        for t in timers {
            k.1 = *t;
            self.timers.cancel(&k);
        }
    }

    fn remove(&mut self, key: &TxKey) -> bool {
        let Some(tx) = self.txs.remove(key) else {
            return false;
        };
        crate::hashing::shrink_after_burst(&mut self.txs);
        if tx.invite {
            self.cancel_timers(key, &[Timer::A, Timer::B, Timer::D, Timer::M]);
        } else {
            self.cancel_timers(key, &[Timer::E, Timer::F, Timer::K]);
        }
        true
    }
}

/// RFC 3261 §17.1.3: the top Via branch and the CSeq method.
/// An ACK is no transaction of its own (RFC 3261 §17.1.1.3): it is sent on its own.
fn not_ack(req: &Request) -> Result<(), TxError> {
    if req.method == "ACK" {
        Err(TxError::Ack)
    } else {
        Ok(())
    }
}

/// The key of a client transaction: only an RFC 3261 branch (magic cookie) can match its
/// responses (§17.1.3).
fn client_key(branch: &str, method: &str) -> Result<TxKey, TxError> {
    if branch.starts_with(BRANCH_MAGIC) {
        Ok(TxKey::client(branch, method))
    } else {
        Err(TxError::NoBranch)
    }
}

fn response_key(resp: &Response) -> Option<TxKey> {
    let branch = resp.top_via().ok()?.branch()?;
    let cseq = resp.cseq().ok()?;
    Some(TxKey::client(&branch, &cseq.method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::testutil::{ms, req};
    use crate::transaction::{BranchKey, ServerInput, ServerTransactions};

    type Tx = ClientTransactions<&'static str>;

    #[test]
    fn a_table_bucket_is_two_pointers_whatever_the_transaction_holds() {
        // What a fan-out's growing table moves and faults in per transaction (see `txs`).
        let bucket = std::mem::size_of::<(TxKey, Slot<crate::transport::Peer>)>();
        assert_eq!(bucket, 2 * std::mem::size_of::<usize>());
        assert!(std::mem::size_of::<ClientTx<crate::transport::Peer>>() > 4 * bucket);
    }

    const INVITE: &str = "INVITE sip:bob@biloxi.example SIP/2.0
Via: SIP/2.0/UDP proxy.example:5060;branch=z9hG4bKproxy1
Via: SIP/2.0/UDP pc33.atlanta.example;branch=z9hG4bK776asdhds;received=192.0.2.1
Max-Forwards: 69
Route: <sip:edge.biloxi.example;lr>
Route: <sip:core.biloxi.example;lr>
Record-Route: <sip:proxy.example;lr>
To: Bob <sip:bob@biloxi.example>
From: Alice <sip:alice@atlanta.example>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example>
Content-Type: application/sdp
Content-Length: 4

v=0
";

    const OPTIONS: &str = "OPTIONS sip:bob@biloxi.example SIP/2.0
Via: SIP/2.0/UDP proxy.example:5060;branch=z9hG4bKopt1
Max-Forwards: 70
To: <sip:bob@biloxi.example>
From: <sip:proxy@proxy.example>;tag=p1
Call-ID: opt-1@proxy.example
CSeq: 7 OPTIONS
Content-Length: 0

";

    /// A response to `request_text` as the next hop would send it.
    fn answer(request_text: &str, status: u16, reason: &str, tag: Option<&str>) -> Response {
        req(request_text).response(status, reason, tag)
    }

    fn start(tx: &mut Tx, text: &str, reliable: bool, t0: Instant) -> TxKey {
        let (key, actions) = tx.send(req(text), "next-hop", reliable, t0).unwrap();
        assert_eq!(actions.len(), 1);
        assert!(matches!(actions[0], Action::Send { to: "next-hop", .. }));
        key
    }

    fn run(tx: &mut Tx, t0: Instant, until: Duration) -> Vec<(u64, Action<&'static str>)> {
        let mut out = Vec::new();
        while let Some(at) = tx.next_deadline() {
            if at > t0 + until {
                break;
            }
            for a in tx.on_timer(at) {
                out.push(((at - t0).as_millis() as u64, a));
            }
        }
        out
    }

    fn send_times(events: &[(u64, Action<&'static str>)]) -> Vec<u64> {
        events
            .iter()
            .filter(|(_, a)| matches!(a, Action::Send { .. }))
            .map(|(t, _)| *t)
            .collect()
    }

    fn others(events: &[(u64, Action<&'static str>)]) -> Vec<(u64, Action<&'static str>)> {
        events
            .iter()
            .filter(|(_, a)| !matches!(a, Action::Send { .. }))
            .cloned()
            .collect()
    }

    fn delivered(input: ClientInput<&'static str>) -> (TxKey, Vec<Action<&'static str>>) {
        match input {
            ClientInput::Deliver { key, actions } => (key, actions),
            other => panic!("expected Deliver, got {other:?}"),
        }
    }

    #[test]
    fn rfc3261_17_1_1_2_timer_a_doubles_and_timer_b_times_out() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, false, t0);
        assert_eq!(tx.state(&k), Some(ClientState::Calling));
        let events = run(&mut tx, t0, Duration::from_secs(60));
        // A: 0.5, 1, 2, 4, 8, 16 s apart (no cap at T2), until B at 64*T1.
        assert_eq!(
            send_times(&events),
            vec![500, 1500, 3500, 7500, 15500, 31500]
        );
        assert!(events.iter().all(|(_, a)| match a {
            Action::Send { bytes, .. } => bytes.starts_with(b"INVITE sip:bob@biloxi.example"),
            _ => true,
        }));
        assert_eq!(
            others(&events),
            vec![
                (32_000, Action::Timeout { key: k.clone() }),
                (32_000, Action::Terminated { key: k.clone() })
            ]
        );
        assert!(tx.is_empty());
        assert_eq!(tx.next_deadline(), None);
        // A final after the timeout is stray.
        assert_eq!(
            tx.on_response(&answer(INVITE, 486, "Busy", Some("b")), t0),
            ClientInput::Stray
        );
    }

    #[test]
    fn rfc3261_17_1_1_2_no_timer_a_on_reliable_transport() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, true, t0);
        let events = run(&mut tx, t0, Duration::from_secs(60));
        assert_eq!(
            events,
            vec![
                (32_000, Action::Timeout { key: k.clone() }),
                (32_000, Action::Terminated { key: k })
            ]
        );
    }

    #[test]
    fn rfc3261_17_1_1_2_provisional_stops_timers_a_and_b() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, false, t0);
        assert_eq!(tx.on_timer(t0 + ms(500)).len(), 1);
        let (dk, acts) =
            delivered(tx.on_response(&answer(INVITE, 100, "Trying", None), t0 + ms(600)));
        assert_eq!(dk, k);
        assert!(acts.is_empty());
        assert_eq!(tx.state(&k), Some(ClientState::Proceeding));
        assert_eq!(tx.next_deadline(), None);
        // Every provisional goes to the TU in Proceeding.
        let ringing = answer(INVITE, 180, "Ringing", Some("b"));
        assert_eq!(delivered(tx.on_response(&ringing, t0 + ms(700))).0, k);
        assert_eq!(delivered(tx.on_response(&ringing, t0 + ms(800))).0, k);
        assert!(run(&mut tx, t0, Duration::from_secs(300)).is_empty());
        assert_eq!(tx.len(), 1);
    }

    #[test]
    fn rfc3261_17_1_1_3_ack_built_for_4xx_and_resent_for_retransmissions() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, false, t0);
        let busy = answer(INVITE, 486, "Busy Here", Some("bob-tag"));
        let (dk, acts) = delivered(tx.on_response(&busy, t0 + ms(100)));
        assert_eq!(dk, k);
        assert_eq!(tx.state(&k), Some(ClientState::Completed));
        let [Action::Send { to, bytes }] = acts.as_slice() else {
            panic!("expected one ACK, got {acts:?}");
        };
        assert_eq!(*to, "next-hop");
        let ack = req(&String::from_utf8_lossy(bytes).replace("\r\n", "\n"));
        assert_eq!(ack.method, "ACK");
        assert_eq!(ack.uri.to_string(), "sip:bob@biloxi.example");
        assert_eq!(
            ack.call_id().unwrap(),
            "a84b4c76e66710@pc33.atlanta.example"
        );
        assert_eq!(ack.cseq().unwrap().to_string(), "314159 ACK");
        assert_eq!(ack.from_hdr().unwrap().tag().as_deref(), Some("1928301774"));
        // To from the response, with its tag.
        assert_eq!(ack.to_hdr().unwrap().tag().as_deref(), Some("bob-tag"));
        // Only the top Via of the request.
        let vias = ack.vias().unwrap();
        assert_eq!(vias.len(), 1);
        assert_eq!(vias[0].branch().as_deref(), Some("z9hG4bKproxy1"));
        // The request's Route set, in order; nothing else copied.
        let routes: Vec<&str> = ack.headers.all(HeaderName::Route).collect();
        assert_eq!(
            routes,
            vec![
                "<sip:edge.biloxi.example;lr>",
                "<sip:core.biloxi.example;lr>"
            ]
        );
        assert!(!ack.headers.has(HeaderName::RecordRoute));
        assert!(!ack.headers.has(HeaderName::Contact));
        assert!(ack.body.is_empty());
        assert!(ack.validate().is_ok());

        // A retransmitted 486 is absorbed and answered with the same ACK.
        let again = tx.on_response(&busy, t0 + ms(200));
        assert_eq!(
            again,
            ClientInput::Absorbed {
                actions: vec![Action::Send {
                    to: "next-hop",
                    bytes: bytes.clone()
                }]
            }
        );
        // Timer A and B are gone; Timer D is 32 s on UDP.
        assert_eq!(tx.next_deadline(), Some(t0 + ms(100) + ms(32_000)));
        let events = run(&mut tx, t0, Duration::from_secs(60));
        assert_eq!(events, vec![(32_100, Action::Terminated { key: k })]);
    }

    #[test]
    fn rfc3261_17_1_1_2_timer_d_is_0_on_reliable_transport() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, true, t0);
        tx.on_response(&answer(INVITE, 180, "Ringing", Some("b")), t0);
        let (_, acts) = delivered(tx.on_response(&answer(INVITE, 603, "Decline", Some("b")), t0));
        assert_eq!(acts.len(), 1);
        assert_eq!(tx.next_deadline(), Some(t0));
        assert_eq!(tx.on_timer(t0), vec![Action::Terminated { key: k }]);
    }

    #[test]
    fn rfc6026_client_2xx_goes_to_accepted_until_timer_m() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, false, t0);
        let ok = answer(INVITE, 200, "OK", Some("fork-1"));
        let (dk, acts) = delivered(tx.on_response(&ok, t0 + ms(100)));
        assert_eq!(dk, k);
        assert!(
            acts.is_empty(),
            "the ACK for a 2xx is the core's, not the transaction's"
        );
        assert_eq!(tx.state(&k), Some(ClientState::Accepted));
        // Retransmissions and 2xx from other forks go up too.
        assert_eq!(delivered(tx.on_response(&ok, t0 + ms(600))).0, k);
        let other = answer(INVITE, 200, "OK", Some("fork-2"));
        assert_eq!(delivered(tx.on_response(&other, t0 + ms(700))).0, k);
        // Late provisionals and non-2xx finals are absorbed.
        assert_eq!(
            tx.on_response(&answer(INVITE, 180, "Ringing", Some("x")), t0),
            ClientInput::Absorbed { actions: vec![] }
        );
        assert_eq!(
            tx.on_response(&answer(INVITE, 487, "Terminated", Some("x")), t0),
            ClientInput::Absorbed { actions: vec![] }
        );
        assert_eq!(tx.cancel_request(&k), None);
        let events = run(&mut tx, t0, Duration::from_secs(60));
        assert_eq!(events, vec![(32_100, Action::Terminated { key: k })]);
        // A 2xx retransmission after Timer M is stray: the core forwards it.
        assert_eq!(tx.on_response(&ok, t0 + ms(40_000)), ClientInput::Stray);
    }

    #[test]
    fn rfc3261_17_1_2_2_timer_e_capped_at_t2_then_timer_f_times_out() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, OPTIONS, false, t0);
        assert_eq!(tx.state(&k), Some(ClientState::Trying));
        let events = run(&mut tx, t0, Duration::from_secs(60));
        // E: 0.5, 1, 2, 4, 4, 4 ... s apart.
        assert_eq!(
            send_times(&events),
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(
            others(&events),
            vec![
                (32_000, Action::Timeout { key: k.clone() }),
                (32_000, Action::Terminated { key: k })
            ]
        );
        assert!(tx.is_empty());
    }

    #[test]
    fn rfc3261_17_1_2_2_timer_e_resets_to_t2_in_proceeding() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, OPTIONS, false, t0);
        assert_eq!(tx.on_timer(t0 + ms(500)).len(), 1); // next E at 1500
        let (dk, _) =
            delivered(tx.on_response(&answer(OPTIONS, 100, "Trying", None), t0 + ms(600)));
        assert_eq!(dk, k);
        assert_eq!(tx.state(&k), Some(ClientState::Proceeding));
        let events = run(&mut tx, t0, Duration::from_secs(60));
        // The running E fires at 1.5 s, then every T2; F still ends it at 32 s.
        assert_eq!(
            send_times(&events),
            vec![1500, 5500, 9500, 13500, 17500, 21500, 25500, 29500]
        );
        assert_eq!(
            others(&events),
            vec![
                (32_000, Action::Timeout { key: k.clone() }),
                (32_000, Action::Terminated { key: k })
            ]
        );
    }

    #[test]
    fn rfc3261_17_1_2_2_timer_e_not_used_on_reliable_transport() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, OPTIONS, true, t0);
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)));
        assert_eq!(
            tx.on_timer(t0 + ms(32_000)),
            vec![
                Action::Timeout { key: k.clone() },
                Action::Terminated { key: k }
            ]
        );
    }

    #[test]
    fn rfc3261_17_1_2_2_final_goes_to_completed_and_timer_k() {
        for (reliable, k_after) in [(false, 5_000u64), (true, 0)] {
            let mut tx = Tx::default();
            let t0 = Instant::now();
            let k = start(&mut tx, OPTIONS, reliable, t0);
            let ok = answer(OPTIONS, 200, "OK", Some("b"));
            let (dk, acts) = delivered(tx.on_response(&ok, t0 + ms(100)));
            assert_eq!(dk, k);
            assert!(acts.is_empty());
            assert_eq!(tx.state(&k), Some(ClientState::Completed));
            // Retransmitted finals are absorbed, nothing sent.
            assert_eq!(
                tx.on_response(&ok, t0 + ms(200)),
                ClientInput::Absorbed { actions: vec![] }
            );
            // E and F are gone; only K remains.
            assert_eq!(tx.next_deadline(), Some(t0 + ms(100 + k_after)));
            let events = run(&mut tx, t0, Duration::from_secs(60));
            assert_eq!(events, vec![(100 + k_after, Action::Terminated { key: k })]);
            assert!(tx.is_empty());
        }
    }

    #[test]
    fn rfc3261_17_1_3_matching_uses_branch_and_cseq_method() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, false, t0);
        // A response to the CANCEL has the same branch but CSeq method CANCEL.
        let cancel_text = INVITE.replace("314159 INVITE", "314159 CANCEL");
        assert_eq!(
            tx.on_response(&answer(&cancel_text, 200, "OK", None), t0),
            ClientInput::Stray
        );
        // Another branch: stray.
        let other = INVITE.replace("z9hG4bKproxy1", "z9hG4bKproxy2");
        assert_eq!(
            tx.on_response(&answer(&other, 180, "R", None), t0),
            ClientInput::Stray
        );
        // No Via, no CSeq: stray, no panic.
        let mut bare = answer(INVITE, 180, "R", None);
        bare.headers.remove(HeaderName::Via);
        assert_eq!(tx.on_response(&bare, t0), ClientInput::Stray);
        let mut bare = answer(INVITE, 180, "R", None);
        bare.headers.set(HeaderName::CSeq, "garbage");
        assert_eq!(tx.on_response(&bare, t0), ClientInput::Stray);
        let mut odd = answer(INVITE, 180, "R", None);
        odd.status = 42;
        assert_eq!(tx.on_response(&odd, t0), ClientInput::Stray);
        assert_eq!(tx.state(&k), Some(ClientState::Calling));
    }

    #[test]
    fn rfc3261_9_1_cancel_request_for_a_pending_invite() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, false, t0);
        tx.on_response(&answer(INVITE, 180, "Ringing", Some("b")), t0);
        let cancel = tx.cancel_request(&k).unwrap();
        assert_eq!(cancel.method, "CANCEL");
        assert_eq!(cancel.uri.to_string(), "sip:bob@biloxi.example");
        assert_eq!(cancel.cseq().unwrap().to_string(), "314159 CANCEL");
        // To as in the request: no tag from the provisional.
        assert_eq!(cancel.to_hdr().unwrap().tag(), None);
        assert_eq!(
            cancel.from_hdr().unwrap().tag().as_deref(),
            Some("1928301774")
        );
        let vias = cancel.vias().unwrap();
        assert_eq!(vias.len(), 1);
        assert_eq!(vias[0].branch().as_deref(), Some("z9hG4bKproxy1"));
        assert_eq!(cancel.headers.count(HeaderName::Route), 2);
        assert!(cancel.validate().is_ok());
        // The CANCEL is its own client transaction, separate from the INVITE's.
        let (ck, _) = tx.send(cancel, "next-hop", false, t0).unwrap();
        assert_ne!(ck, k);
        assert_eq!(ck.method(), "CANCEL");
        // The next hop's server side finds the INVITE from this CANCEL.
        let mut server: ServerTransactions<()> = ServerTransactions::default();
        let ServerInput::New(sk) = server.on_request(&req(INVITE), (), false, t0) else {
            panic!("new INVITE");
        };
        assert_eq!(
            server.find_invite_for_cancel(&tx.cancel_request(&k).unwrap()),
            Some(sk)
        );
        // A non-INVITE or finished INVITE has no CANCEL.
        let ok = start(&mut tx, OPTIONS, false, t0);
        assert_eq!(tx.cancel_request(&ok), None);
        tx.on_response(&answer(INVITE, 487, "Request Terminated", Some("b")), t0);
        assert_eq!(tx.cancel_request(&k), None);
    }

    #[test]
    fn send_rejects_ack_missing_branch_duplicates_and_overload() {
        let mut tx = Tx::new(Timers::default(), 2);
        let t0 = Instant::now();
        let ack = req(&INVITE
            .replace("314159 INVITE", "314159 ACK")
            .replace("INVITE sip", "ACK sip"));
        assert_eq!(tx.send(ack, "n", false, t0).unwrap_err(), TxError::Ack);
        let legacy = req(&INVITE.replace("branch=z9hG4bKproxy1", "branch=1"));
        assert_eq!(
            tx.send(legacy, "n", false, t0).unwrap_err(),
            TxError::NoBranch
        );
        let mut no_via = req(INVITE);
        no_via.headers.remove(HeaderName::Via);
        assert!(matches!(
            tx.send(no_via, "n", false, t0),
            Err(TxError::Message(_))
        ));
        start(&mut tx, INVITE, false, t0);
        assert_eq!(
            tx.send(req(INVITE), "n", false, t0).unwrap_err(),
            TxError::Duplicate
        );
        start(&mut tx, OPTIONS, false, t0);
        let third = OPTIONS.replace("z9hG4bKopt1", &BranchKey::new([99; 32]).mint(3));
        assert_eq!(
            tx.send(req(&third), "n", false, t0).unwrap_err(),
            TxError::Overloaded
        );
        assert_eq!(tx.len(), 2);
        assert_eq!(tx.max_transactions(), 2);
    }

    #[test]
    fn terminate_drops_a_transaction_and_its_timers() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = start(&mut tx, INVITE, false, t0);
        assert!(tx.terminate(&k));
        assert!(!tx.terminate(&k));
        assert_eq!(tx.next_deadline(), None);
        assert!(tx.on_timer(t0 + ms(100_000)).is_empty());
    }

    /// The async shell pattern: sleep until `next_deadline`, then `on_timer` with tokio's
    /// clock, here paused and advanced by hand.
    #[tokio::test(start_paused = true)]
    async fn paused_tokio_clock_drives_timer_e_and_f() {
        use tokio::time::{advance, Instant as TokioInstant};
        let mut tx = Tx::default();
        let t0 = TokioInstant::now();
        let k = start(&mut tx, OPTIONS, false, t0.into_std());
        let mut log = Vec::new();
        while let Some(next) = tx.next_deadline() {
            let now = TokioInstant::now().into_std();
            advance(next.saturating_duration_since(now)).await;
            let now = TokioInstant::now();
            for a in tx.on_timer(now.into_std()) {
                log.push(((now - t0).as_millis() as u64, a));
            }
        }
        assert_eq!(send_times(&log).len(), 10);
        assert_eq!(
            others(&log),
            vec![
                (32_000, Action::Timeout { key: k.clone() }),
                (32_000, Action::Terminated { key: k })
            ]
        );
        assert_eq!(TokioInstant::now() - t0, Duration::from_secs(32));
    }
}
