//! Server transactions: RFC 3261 §17.2.
//!
//! INVITE (RFC 3261 Figure 7 as corrected by RFC 6026):
//!
//! ```text
//!  Proceeding --1xx from TU: send--> Proceeding      (INVITE retransmission: resend last 1xx)
//!  Proceeding --2xx from TU: send--> Accepted        (Timer L = 64*T1)
//!  Proceeding --300-699 from TU: send--> Completed   (Timer G = T1 if unreliable, H = 64*T1)
//!  Accepted   --2xx from TU: send; INVITE retransmission: absorbed; ACK: not ours (Stray)
//!  Accepted   --Timer L--> Terminated
//!  Completed  --Timer G: resend final, G = min(2G, T2); INVITE retransmission: resend final
//!  Completed  --ACK--> Confirmed                     (Timer I = T4, 0 if reliable)
//!  Completed  --Timer H: Timeout to TU--> Terminated
//!  Confirmed  --ACK, INVITE: absorbed; Timer I--> Terminated
//! ```
//!
//! No automatic 100 Trying: the TU (proxy core) decides when to send it (§17.2.1 lets the
//! transaction do it after 200 ms; we leave that policy to the core, which knows whether it
//! will answer at once).
//!
//! Non-INVITE (RFC 3261 Figure 8):
//!
//! ```text
//!  Trying     --request retransmission: absorbed
//!  Trying/Proceeding --1xx from TU: send--> Proceeding (retransmission: resend last 1xx)
//!  Trying/Proceeding --200-699 from TU: send--> Completed (Timer J = 64*T1, 0 if reliable)
//!  Completed  --request retransmission: resend final; Timer J--> Terminated
//! ```
//!
//! Neither machine has a timer before the TU's final response: the TU must answer every
//! transaction it is handed (or drop it with [`ServerTransactions::terminate`]).

use super::{after, Action, Timer, Timers, TxError, TxKey, DEFAULT_MAX_TRANSACTIONS};
use crate::deadline::Deadlines;
use crate::sip::{HasHeaders, MessageError, Request, Response};
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE only: no response sent yet.
    Trying,
    Proceeding,
    Completed,
    /// INVITE only: ACK received for a non-2xx final.
    Confirmed,
    /// INVITE only (RFC 6026): a 2xx was sent.
    Accepted,
}

impl ServerState {
    fn name(self) -> &'static str {
        match self {
            ServerState::Trying => "Trying",
            ServerState::Proceeding => "Proceeding",
            ServerState::Completed => "Completed",
            ServerState::Confirmed => "Confirmed",
            ServerState::Accepted => "Accepted",
        }
    }
}

/// What an incoming request means to the server transaction layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerInput<A> {
    /// A new transaction: hand the request to the TU with this key.
    New(TxKey),
    /// A retransmission of a request we already have: send the response if there is one (the
    /// reply address is the one the transaction was created with). `None` means absorbed.
    Retransmission(Option<(A, Arc<[u8]>)>),
    /// ACK for our non-2xx final response: the INVITE transaction is now Confirmed.
    AckAbsorbed,
    /// An ACK that belongs to no transaction of ours: an ACK for a 2xx (its own end-to-end
    /// transaction, RFC 3261 §17.1.1.3; also when its branch matches an INVITE transaction in
    /// Accepted, or one that has sent no final yet), or for a transaction already gone. The
    /// core forwards or drops it.
    Stray,
    /// The table is full ([`ServerTransactions::max_transactions`]): no transaction was
    /// created; the caller answers 503 statelessly (or drops, under attack).
    Overloaded,
    /// The request lacks what matching needs (Via, and for RFC 2543 requests From, To,
    /// Call-ID, CSeq). Callers normally reject these with 400 before they get here.
    Malformed(MessageError),
}

#[derive(Debug)]
struct ServerTx<A> {
    invite: bool,
    state: ServerState,
    reply_to: A,
    reliable: bool,
    /// The last response sent, serialised once.
    last: Option<Arc<[u8]>>,
    /// Next Timer G interval.
    g: Duration,
    /// To tag of the non-2xx final, for RFC 2543 ACK matching.
    final_to_tag: Option<String>,
    /// When the request arrived (for the time an answer took, in the log).
    received: Instant,
}

/// All server transactions of one element. `A` is the caller's opaque reply address (e.g. a
/// transport and peer, or a connection id).
#[derive(Debug)]
pub struct ServerTransactions<A: Clone> {
    txs: crate::hashing::FastMap<TxKey, ServerTx<A>>,
    timers: Deadlines<(TxKey, Timer)>,
    cfg: Timers,
    max: usize,
}

impl<A: Clone> Default for ServerTransactions<A> {
    fn default() -> Self {
        Self::new(Timers::default(), DEFAULT_MAX_TRANSACTIONS)
    }
}

impl<A: Clone> ServerTransactions<A> {
    pub fn new(timers: Timers, max_transactions: usize) -> Self {
        ServerTransactions {
            txs: crate::hashing::map(),
            timers: Deadlines::new(),
            cfg: timers,
            max: max_transactions,
        }
    }

    pub fn max_transactions(&self) -> usize {
        self.max
    }

    /// Makes room in a full table by ending the oldest completed non-INVITE transaction early.
    /// Such a transaction only waits out Timer J to absorb retransmissions; ending it sooner
    /// means a late retransmission is handled as a new request, which REGISTER (idempotent for
    /// the same Call-ID and CSeq) tolerates. Refusing new work with 503 because of old
    /// bookkeeping would be worse. Looks at the few earliest deadlines only, so a table full
    /// of live transactions still answers `Overloaded` quickly.
    fn shed_completed(&mut self) -> bool {
        let victim = self
            .timers
            .iter()
            .take(16)
            .find(|((_, timer), _)| *timer == Timer::J)
            .map(|((key, _), _)| key.clone());
        match victim {
            Some(key) => self.terminate(&key),
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Matches an incoming request (RFC 3261 §17.2.3) and runs its transaction. One hash lookup
    /// for RFC 3261 requests; an RFC 2543 ACK may take two.
    ///
    /// A request never seen before creates a transaction (`New`), except an ACK (`Stray`) and
    /// when the table is full (`Overloaded`). A CANCEL is a non-INVITE request with its own
    /// transaction like any other: it comes out as `New`, and the TU finds the INVITE it targets
    /// with [`find_invite_for_cancel`](Self::find_invite_for_cancel), answering 481 through the
    /// CANCEL's transaction when there is none.
    pub fn on_request(
        &mut self,
        req: &Request,
        reply_to: A,
        reliable: bool,
        now: Instant,
    ) -> ServerInput<A> {
        match req.top_via() {
            Ok(via) => self.on_request_via(req, &via, reply_to, reliable, now),
            Err(e) => ServerInput::Malformed(e),
        }
    }

    /// As [`on_request`](Self::on_request) for a request whose top Via the caller has already
    /// parsed (the server core has, while validating it).
    pub fn on_request_via(
        &mut self,
        req: &Request,
        top_via: &crate::sip::Via,
        reply_to: A,
        reliable: bool,
        now: Instant,
    ) -> ServerInput<A> {
        // Request arrival starts no timer in Figures 7 and 8; `now` is used by the ACK and
        // kept as the arrival time.
        let key = match TxKey::server_with_via(req, top_via, None) {
            Ok(k) => k,
            Err(e) => return ServerInput::Malformed(e),
        };
        if req.method == "ACK" {
            return self.on_ack(key, now);
        }
        let full =
            self.txs.len() >= self.max && !self.txs.contains_key(&key) && !self.shed_completed();
        match self.txs.entry(key) {
            Entry::Occupied(e) => {
                let tx = e.get();
                let resend = match tx.state {
                    // Figure 7: Accepted and Confirmed absorb; Figure 8: Trying absorbs.
                    ServerState::Trying | ServerState::Confirmed | ServerState::Accepted => None,
                    ServerState::Proceeding | ServerState::Completed => tx.last.clone(),
                };
                ServerInput::Retransmission(resend.map(|b| (tx.reply_to.clone(), b)))
            }
            Entry::Vacant(_) if full => ServerInput::Overloaded,
            Entry::Vacant(v) => {
                let invite = req.method == "INVITE";
                let key = v.key().clone();
                v.insert(ServerTx {
                    invite,
                    state: if invite {
                        ServerState::Proceeding
                    } else {
                        ServerState::Trying
                    },
                    reply_to,
                    reliable,
                    last: None,
                    g: self.cfg.g(),
                    final_to_tag: None,
                    received: now,
                });
                ServerInput::New(key)
            }
        }
    }

    fn on_ack(&mut self, key: TxKey, now: Instant) -> ServerInput<A> {
        if let Some(tx) = self.txs.get_mut(&key) {
            return ack_in(tx, key, &mut self.timers, &self.cfg, now);
        }
        // RFC 2543: the ACK's To tag is the tag of our response, which the INVITE (and so the
        // key) usually lacked; match without it, then compare with our final's tag.
        let Some(ack_tag) = key.legacy_to_tag().flatten() else {
            return ServerInput::Stray;
        };
        let Some(k) = key.with_to_tag(None) else {
            return ServerInput::Stray;
        };
        match self.txs.get_mut(&k) {
            Some(tx) if tx.final_to_tag.as_deref() == Some(ack_tag) => {
                ack_in(tx, k, &mut self.timers, &self.cfg, now)
            }
            _ => ServerInput::Stray,
        }
    }

    /// The INVITE server transaction a CANCEL targets (RFC 3261 §9.2: same matching as the
    /// INVITE, method aside).
    pub fn find_invite_for_cancel(&self, cancel: &Request) -> Option<TxKey> {
        if cancel.method != "CANCEL" {
            return None;
        }
        let key = TxKey::server(cancel, Some("INVITE")).ok()?;
        self.txs.get_key_value(&key).map(|(k, _)| k.clone())
    }

    /// The TU sends `resp` through transaction `key`: it is serialised once, cached for
    /// retransmissions and returned as a `Send` to the transaction's reply address; the state
    /// and timers change as Figures 7 and 8 say.
    ///
    /// Errors (nothing is sent, nothing changes): `Unknown` when the key never existed or the
    /// transaction terminated, `BadStatus` outside 100-699, `WrongState` when the transaction
    /// takes no such response any more (a final after a non-2xx final, anything after a
    /// non-INVITE final, a non-2xx after a 2xx).
    pub fn respond(
        &mut self,
        key: &TxKey,
        resp: &Response,
        now: Instant,
    ) -> Result<Vec<Action<A>>, TxError> {
        let tx = self.txs.get_mut(key).ok_or(TxError::Unknown)?;
        let status = resp.status;
        if !(100..=699).contains(&status) {
            return Err(TxError::BadStatus(status));
        }
        let wrong = || TxError::WrongState {
            state: tx.state.name(),
            status,
        };
        let next = match (tx.invite, tx.state, status) {
            (true, ServerState::Proceeding, 100..=199) => ServerState::Proceeding,
            (true, ServerState::Proceeding | ServerState::Accepted, 200..=299) => {
                ServerState::Accepted
            }
            (true, ServerState::Proceeding, _) => ServerState::Completed,
            (false, ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                ServerState::Proceeding
            }
            (false, ServerState::Trying | ServerState::Proceeding, _) => ServerState::Completed,
            _ => return Err(wrong()),
        };
        let bytes: Arc<[u8]> = resp.to_shared();
        let entering = tx.state != next;
        tx.state = next;
        tx.last = Some(bytes.clone());
        if entering {
            match (tx.invite, next) {
                (true, ServerState::Accepted) => {
                    self.timers
                        .schedule((key.clone(), Timer::L), after(now, self.cfg.l()));
                }
                (true, ServerState::Completed) => {
                    if key.is_legacy() {
                        tx.final_to_tag = resp.to_hdr().ok().and_then(|t| t.tag());
                    }
                    if !tx.reliable {
                        tx.g = self.cfg.g();
                        self.timers
                            .schedule((key.clone(), Timer::G), after(now, tx.g));
                    }
                    self.timers
                        .schedule((key.clone(), Timer::H), after(now, self.cfg.h()));
                }
                (false, ServerState::Completed) => {
                    let j = self.cfg.j(tx.reliable);
                    self.timers.schedule((key.clone(), Timer::J), after(now, j));
                }
                _ => {}
            }
        }
        Ok(vec![Action::Send {
            to: tx.reply_to.clone(),
            bytes,
        }])
    }

    /// Runs every timer due at `now`, in deadline order.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action<A>> {
        let mut out = Vec::new();
        for (key, timer) in self.timers.pop_due(now) {
            let Some(tx) = self.txs.get_mut(&key) else {
                continue;
            };
            match (timer, tx.state) {
                (Timer::G, ServerState::Completed) => {
                    if let Some(bytes) = &tx.last {
                        out.push(Action::Send {
                            to: tx.reply_to.clone(),
                            bytes: bytes.clone(),
                        });
                    }
                    tx.g = tx.g.saturating_mul(2).min(self.cfg.t2);
                    let at = after(now, tx.g);
                    self.timers.schedule((key, Timer::G), at);
                }
                (Timer::H, ServerState::Completed) => {
                    out.push(Action::Timeout { key: key.clone() });
                    self.remove(&key);
                    out.push(Action::Terminated { key });
                }
                (Timer::I, ServerState::Confirmed)
                | (Timer::J, ServerState::Completed)
                | (Timer::L, ServerState::Accepted) => {
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

    pub fn state(&self, key: &TxKey) -> Option<ServerState> {
        self.txs.get(key).map(|t| t.state)
    }

    /// Whether `key` is a live INVITE server transaction (the proxy core uses this to decide
    /// on sending 100 Trying itself).
    pub fn is_invite(&self, key: &TxKey) -> bool {
        self.txs.get(key).is_some_and(|t| t.invite)
    }

    /// The address responses of `key` go to.
    /// When the request of transaction `key` arrived.
    pub fn received_at(&self, key: &TxKey) -> Option<Instant> {
        self.txs.get(key).map(|t| t.received)
    }

    pub fn reply_to(&self, key: &TxKey) -> Option<&A> {
        self.txs.get(key).map(|t| &t.reply_to)
    }

    /// Drops a transaction at once (TU abandoning it, or a transport error, RFC 3261 §17.2.4).
    /// No `Terminated` action is produced for it. `true` when it existed.
    pub fn terminate(&mut self, key: &TxKey) -> bool {
        self.remove(key)
    }

    fn remove(&mut self, key: &TxKey) -> bool {
        let Some(tx) = self.txs.remove(key) else {
            return false;
        };
        crate::hashing::shrink_after_burst(&mut self.txs);
        let timers: &[Timer] = if tx.invite {
            &[Timer::G, Timer::H, Timer::I, Timer::L]
        } else {
            &[Timer::J]
        };
        let mut k = (key.clone(), Timer::G);
        for t in timers {
            k.1 = *t;
            self.timers.cancel(&k);
        }
        true
    }
}

/// An ACK matched INVITE server transaction `tx` (Figure 7).
fn ack_in<A>(
    tx: &mut ServerTx<A>,
    key: TxKey,
    timers: &mut Deadlines<(TxKey, Timer)>,
    cfg: &Timers,
    now: Instant,
) -> ServerInput<A> {
    match tx.state {
        ServerState::Completed => {
            tx.state = ServerState::Confirmed;
            timers.cancel(&(key.clone(), Timer::G));
            timers.cancel(&(key.clone(), Timer::H));
            timers.schedule((key, Timer::I), after(now, cfg.i(tx.reliable)));
            ServerInput::AckAbsorbed
        }
        ServerState::Confirmed => ServerInput::AckAbsorbed,
        // No final yet, or a 2xx (its ACK is end-to-end): not the transaction's.
        _ => ServerInput::Stray,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::testutil::{ms, req};

    type Tx = ServerTransactions<&'static str>;

    const INVITE: &str = "INVITE sip:bob@biloxi.example SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example;branch=z9hG4bK776asdhds
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example>
From: Alice <sip:alice@atlanta.example>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example
CSeq: 314159 INVITE
Content-Length: 0

";

    fn with(text: &str, from: &str, to: &str) -> Request {
        req(&text.replace(from, to))
    }

    fn invite() -> Request {
        req(INVITE)
    }

    /// ACK for a non-2xx: same branch, To with the tag of our response.
    fn ack_text() -> String {
        INVITE
            .replace("INVITE sip", "ACK sip")
            .replace("314159 INVITE", "314159 ACK")
            .replace(
                "<sip:bob@biloxi.example>\n",
                "<sip:bob@biloxi.example>;tag=srv1\n",
            )
    }

    fn ack() -> Request {
        req(&ack_text())
    }

    fn register() -> Request {
        req("REGISTER sip:registrar.biloxi.example SIP/2.0
Via: SIP/2.0/UDP bobspc.biloxi.example:5060;branch=z9hG4bKnashds7
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example>
From: Bob <sip:bob@biloxi.example>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1826 REGISTER
Contact: <sip:bob@192.0.2.4>
Expires: 7200
Content-Length: 0

")
    }

    fn sends(actions: &[Action<&'static str>]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .collect()
    }

    fn new_key(input: ServerInput<&'static str>) -> TxKey {
        match input {
            ServerInput::New(k) => k,
            other => panic!("expected New, got {other:?}"),
        }
    }

    fn resent(input: ServerInput<&'static str>) -> Option<String> {
        match input {
            ServerInput::Retransmission(r) => r.map(|(to, b)| {
                assert_eq!(to, "peer");
                String::from_utf8_lossy(&b).into_owned()
            }),
            other => panic!("expected Retransmission, got {other:?}"),
        }
    }

    /// Runs the timers at `t0 + offset` for each offset and records what happened when.
    fn run(tx: &mut Tx, t0: Instant, until: Duration) -> Vec<(Duration, Action<&'static str>)> {
        let mut out = Vec::new();
        while let Some(at) = tx.next_deadline() {
            if at > t0 + until {
                break;
            }
            for a in tx.on_timer(at) {
                out.push((at - t0, a));
            }
        }
        out
    }

    #[test]
    fn rfc3261_17_2_3_retransmission_matches_by_branch_sent_by_and_method() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = new_key(tx.on_request(&invite(), "peer", false, t0));
        assert!(k.is_invite() && !k.is_legacy());
        assert_eq!(k.branch(), Some("z9hG4bK776asdhds"));
        assert!(tx.is_invite(&k));
        assert_eq!(tx.state(&k), Some(ServerState::Proceeding));
        // Same request again: a retransmission, nothing sent yet.
        assert_eq!(resent(tx.on_request(&invite(), "other", false, t0)), None);
        // Same branch, other sent-by: another transaction (§17.2.3 rule 2).
        let other = with(INVITE, "pc33.atlanta.example;", "pc34.atlanta.example;");
        assert_ne!(new_key(tx.on_request(&other, "peer", false, t0)), k);
        // sent-by host compares case-insensitively.
        let upper = with(INVITE, "pc33.atlanta.example;", "PC33.Atlanta.Example;");
        assert_eq!(resent(tx.on_request(&upper, "peer", false, t0)), None);
        // Same branch, other method: another transaction.
        let opts = with(INVITE, "INVITE", "OPTIONS");
        assert!(!new_key(tx.on_request(&opts, "peer", false, t0)).is_invite());
        assert_eq!(tx.len(), 3);
    }

    #[test]
    fn rfc3261_9_2_cancel_has_its_own_transaction_and_finds_its_invite() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let inv = new_key(tx.on_request(&invite(), "peer", false, t0));
        let cancel = with(INVITE, "INVITE", "CANCEL");
        assert_eq!(tx.find_invite_for_cancel(&cancel), Some(inv.clone()));
        let ck = new_key(tx.on_request(&cancel, "peer", false, t0));
        assert_ne!(ck, inv);
        assert_eq!(ck.method(), "CANCEL");
        assert_eq!(tx.state(&ck), Some(ServerState::Trying));
        // A CANCEL for another branch targets nothing.
        let lost = with(&INVITE.replace("INVITE", "CANCEL"), "776asdhds", "000");
        assert_eq!(tx.find_invite_for_cancel(&lost), None);
        // Only CANCEL looks up INVITEs.
        assert_eq!(tx.find_invite_for_cancel(&invite()), None);
    }

    #[test]
    fn rfc3261_17_2_2_non_invite_server_trying_absorbs_retransmissions() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let k = new_key(tx.on_request(&register(), "peer", false, t0));
        assert!(!tx.is_invite(&k));
        assert_eq!(resent(tx.on_request(&register(), "peer", false, t0)), None);
        assert_eq!(tx.next_deadline(), None);
    }

    #[test]
    fn rfc3261_17_2_2_non_invite_server_proceeding_resends_last_provisional() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let r = register();
        let k = new_key(tx.on_request(&r, "peer", false, t0));
        let a = tx
            .respond(&k, &r.response(100, "Trying", None), t0)
            .unwrap();
        assert_eq!(a.len(), 1);
        assert!(sends(&a)[0].starts_with("SIP/2.0 100 Trying"));
        assert_eq!(tx.state(&k), Some(ServerState::Proceeding));
        let again = resent(tx.on_request(&r, "peer", false, t0)).unwrap();
        assert!(again.starts_with("SIP/2.0 100 Trying"));
    }

    #[test]
    fn rfc3261_17_2_2_non_invite_server_retransmits_final_in_completed() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let r = register();
        let k = new_key(tx.on_request(&r, "peer", false, t0));
        let a = tx
            .respond(&k, &r.response(200, "OK", Some("t")), t0)
            .unwrap();
        let sent = sends(&a).remove(0);
        assert_eq!(tx.state(&k), Some(ServerState::Completed));
        // The cached bytes, identical, for every retransmission.
        assert_eq!(
            resent(tx.on_request(&r, "peer", false, t0 + ms(10))).unwrap(),
            sent
        );
        // Sent to the address the transaction was created with, not the retransmission's.
        assert_eq!(
            resent(tx.on_request(&r, "elsewhere", false, t0 + ms(20))).unwrap(),
            sent
        );
        assert_eq!(tx.reply_to(&k), Some(&"peer"));
        // No more responses through a completed non-INVITE transaction.
        assert_eq!(
            tx.respond(&k, &r.response(500, "Oops", None), t0),
            Err(TxError::WrongState {
                state: "Completed",
                status: 500
            })
        );
    }

    #[test]
    fn rfc3261_17_2_2_timer_j_is_64_t1_on_udp_and_0_on_tcp() {
        for (reliable, j) in [(false, ms(32_000)), (true, ms(0))] {
            let mut tx = Tx::default();
            let t0 = Instant::now();
            let r = register();
            let k = new_key(tx.on_request(&r, "peer", reliable, t0));
            tx.respond(&k, &r.response(200, "OK", Some("t")), t0)
                .unwrap();
            assert_eq!(tx.next_deadline(), Some(t0 + j));
            if j > Duration::ZERO {
                assert!(tx.on_timer(t0 + j - ms(1)).is_empty());
            }
            assert_eq!(
                tx.on_timer(t0 + j),
                vec![Action::Terminated { key: k.clone() }]
            );
            assert_eq!(tx.state(&k), None);
            assert!(tx.is_empty());
            assert_eq!(tx.next_deadline(), None);
            // Once terminated, the same request is new again and responding to the old key
            // is an error.
            assert_eq!(
                tx.respond(&k, &r.response(200, "OK", None), t0),
                Err(TxError::Unknown)
            );
        }
    }

    #[test]
    fn rfc3261_17_2_1_invite_server_proceeding_resends_last_provisional() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let inv = invite();
        let k = new_key(tx.on_request(&inv, "peer", false, t0));
        // No automatic 100 Trying.
        assert_eq!(resent(tx.on_request(&inv, "peer", false, t0)), None);
        assert_eq!(tx.next_deadline(), None);
        tx.respond(&k, &inv.response(100, "Trying", None), t0)
            .unwrap();
        tx.respond(&k, &inv.response(180, "Ringing", Some("srv1")), t0)
            .unwrap();
        let again = resent(tx.on_request(&inv, "peer", false, t0)).unwrap();
        assert!(again.starts_with("SIP/2.0 180 Ringing"));
        assert_eq!(tx.state(&k), Some(ServerState::Proceeding));
        // An ACK before any final is not ours.
        assert_eq!(tx.on_request(&ack(), "peer", false, t0), ServerInput::Stray);
    }

    #[test]
    fn rfc3261_17_2_1_timer_g_doubles_capped_at_t2_then_timer_h_times_out() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let inv = invite();
        let k = new_key(tx.on_request(&inv, "peer", false, t0));
        let a = tx
            .respond(&k, &inv.response(486, "Busy Here", Some("srv1")), t0)
            .unwrap();
        let fin = sends(&a).remove(0);
        assert_eq!(tx.state(&k), Some(ServerState::Completed));
        // INVITE retransmission in Completed: the final again.
        assert_eq!(resent(tx.on_request(&inv, "peer", false, t0)).unwrap(), fin);
        let events = run(&mut tx, t0, Duration::from_secs(60));
        let resends: Vec<u64> = events
            .iter()
            .filter(|(_, a)| matches!(a, Action::Send { .. }))
            .map(|(t, _)| t.as_millis() as u64)
            .collect();
        // G: 0.5, 1, 2, 4, 4, 4 ... seconds apart (T1 doubling, capped at T2), until H at 32 s.
        assert_eq!(
            resends,
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert!(events.iter().all(|(_, a)| match a {
            Action::Send { bytes, to } => *to == "peer" && **bytes == *fin.as_bytes(),
            _ => true,
        }));
        let tail: Vec<_> = events
            .iter()
            .filter(|(_, a)| !matches!(a, Action::Send { .. }))
            .collect();
        assert_eq!(
            tail,
            vec![
                &(ms(32_000), Action::Timeout { key: k.clone() }),
                &(ms(32_000), Action::Terminated { key: k.clone() })
            ]
        );
        assert!(tx.is_empty());
        assert_eq!(tx.next_deadline(), None);
        // The ACK that comes too late is stray.
        assert_eq!(tx.on_request(&ack(), "peer", false, t0), ServerInput::Stray);
    }

    #[test]
    fn rfc3261_17_2_1_no_timer_g_on_reliable_transport() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let inv = invite();
        let k = new_key(tx.on_request(&inv, "peer", true, t0));
        tx.respond(&k, &inv.response(404, "Not Found", Some("srv1")), t0)
            .unwrap();
        let events = run(&mut tx, t0, Duration::from_secs(60));
        assert_eq!(
            events,
            vec![
                (ms(32_000), Action::Timeout { key: k.clone() }),
                (ms(32_000), Action::Terminated { key: k })
            ]
        );
    }

    #[test]
    fn rfc3261_17_2_1_ack_absorbed_confirmed_then_timer_i() {
        for (reliable, i) in [(false, ms(5_000)), (true, ms(0))] {
            let mut tx = Tx::default();
            let t0 = Instant::now();
            let inv = invite();
            let k = new_key(tx.on_request(&inv, "peer", reliable, t0));
            tx.respond(&k, &inv.response(603, "Decline", Some("srv1")), t0)
                .unwrap();
            let t1 = t0 + ms(700);
            assert_eq!(
                tx.on_request(&ack(), "peer", reliable, t1),
                ServerInput::AckAbsorbed
            );
            assert_eq!(tx.state(&k), Some(ServerState::Confirmed));
            // Confirmed absorbs ACK and INVITE retransmissions; G and H are gone.
            assert_eq!(
                tx.on_request(&ack(), "peer", reliable, t1),
                ServerInput::AckAbsorbed
            );
            assert_eq!(resent(tx.on_request(&inv, "peer", reliable, t1)), None);
            assert_eq!(tx.next_deadline(), Some(t1 + i));
            assert_eq!(
                tx.on_timer(t1 + i),
                vec![Action::Terminated { key: k.clone() }]
            );
            assert!(tx.is_empty());
            assert_eq!(tx.next_deadline(), None);
        }
    }

    #[test]
    fn rfc6026_invite_server_2xx_goes_to_accepted_until_timer_l() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let inv = invite();
        let k = new_key(tx.on_request(&inv, "peer", false, t0));
        let ok = inv.response(200, "OK", Some("srv1"));
        assert_eq!(sends(&tx.respond(&k, &ok, t0).unwrap()).len(), 1);
        assert_eq!(tx.state(&k), Some(ServerState::Accepted));
        // The INVITE retransmission is absorbed, not a new request and not answered here.
        assert_eq!(
            resent(tx.on_request(&inv, "peer", false, t0 + ms(100))),
            None
        );
        // The core retransmits the 2xx through the transaction.
        assert_eq!(sends(&tx.respond(&k, &ok, t0 + ms(500)).unwrap()).len(), 1);
        // ACK for the 2xx, even with the INVITE's branch, is the core's.
        assert_eq!(tx.on_request(&ack(), "peer", false, t0), ServerInput::Stray);
        // No non-2xx after a 2xx.
        assert!(matches!(
            tx.respond(&k, &inv.response(500, "No", None), t0),
            Err(TxError::WrongState {
                state: "Accepted",
                ..
            })
        ));
        // Timer L counts from entering Accepted, not from later 2xx retransmissions.
        assert_eq!(tx.next_deadline(), Some(t0 + ms(32_000)));
        assert_eq!(
            tx.on_timer(t0 + ms(32_000)),
            vec![Action::Terminated { key: k }]
        );
        assert!(tx.is_empty());
    }

    #[test]
    fn rfc3261_17_2_1_respond_errors() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let inv = invite();
        let k = new_key(tx.on_request(&inv, "peer", false, t0));
        let mut bad = inv.response(200, "OK", None);
        bad.status = 99;
        assert_eq!(tx.respond(&k, &bad, t0), Err(TxError::BadStatus(99)));
        bad.status = 700;
        assert_eq!(tx.respond(&k, &bad, t0), Err(TxError::BadStatus(700)));
        tx.respond(&k, &inv.response(480, "Later", Some("x")), t0)
            .unwrap();
        for s in [180, 200, 486] {
            assert!(matches!(
                tx.respond(&k, &inv.response(s, "x", None), t0),
                Err(TxError::WrongState {
                    state: "Completed",
                    ..
                })
            ));
        }
        assert!(tx.terminate(&k));
        assert!(!tx.terminate(&k));
        assert_eq!(tx.next_deadline(), None);
        assert_eq!(
            tx.respond(&k, &inv.response(180, "x", None), t0),
            Err(TxError::Unknown)
        );
    }

    #[test]
    fn rfc3261_17_2_3_stray_ack_and_malformed_requests() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        assert_eq!(tx.on_request(&ack(), "peer", false, t0), ServerInput::Stray);
        assert!(tx.is_empty());
        let mut no_via = invite();
        no_via.headers.remove(crate::sip::HeaderName::Via);
        assert_eq!(
            tx.on_request(&no_via, "peer", false, t0),
            ServerInput::Malformed(MessageError::Missing("Via"))
        );
        // RFC 2543 requests need the other identifiers too.
        let mut legacy = with(INVITE, "branch=z9hG4bK776asdhds", "branch=old");
        legacy.headers.remove(crate::sip::HeaderName::CallId);
        assert_eq!(
            tx.on_request(&legacy, "peer", false, t0),
            ServerInput::Malformed(MessageError::Missing("Call-ID"))
        );
    }

    #[test]
    fn rfc3261_17_2_3_rfc2543_fallback_matching() {
        let mut tx = Tx::default();
        let t0 = Instant::now();
        let strip = |s: &str| s.replace(";branch=z9hG4bK776asdhds", "");
        let inv = req(&strip(INVITE));
        let k = new_key(tx.on_request(&inv, "peer", false, t0));
        assert!(k.is_legacy());
        assert_eq!(k.branch(), None);
        // Retransmission: same Request-URI, tags, Call-ID, CSeq and top Via.
        assert_eq!(resent(tx.on_request(&inv, "peer", false, t0)), None);
        // A branch without the cookie is ignored for matching too.
        let odd = with(INVITE, "z9hG4bK776asdhds", "1234");
        assert!(new_key(tx.on_request(&odd, "peer", false, t0)).is_legacy());
        // Another CSeq is another transaction.
        let next = req(&strip(INVITE).replace("314159 INVITE", "314160 INVITE"));
        new_key(tx.on_request(&next, "peer", false, t0));
        let cancel = req(&strip(INVITE).replace("INVITE", "CANCEL"));
        assert_eq!(tx.find_invite_for_cancel(&cancel), Some(k.clone()));

        tx.respond(&k, &inv.response(486, "Busy", Some("srv1")), t0)
            .unwrap();
        // ACK with another To tag: not for this transaction.
        let wrong = req(&strip(&ack_text()).replace("tag=srv1", "tag=other"));
        assert_eq!(tx.on_request(&wrong, "peer", false, t0), ServerInput::Stray);
        // ACK with our tag: matches although the INVITE had no To tag.
        let good = req(&strip(&ack_text()));
        assert_eq!(
            tx.on_request(&good, "peer", false, t0),
            ServerInput::AckAbsorbed
        );
        assert_eq!(tx.state(&k), Some(ServerState::Confirmed));
        assert_eq!(
            tx.on_request(&good, "peer", false, t0),
            ServerInput::AckAbsorbed
        );
    }

    #[test]
    fn a_full_table_sheds_the_oldest_completed_non_invite_instead_of_refusing() {
        let mut tx = Tx::new(Timers::default(), 2);
        let t0 = Instant::now();
        let r = register();
        let kr = new_key(tx.on_request(&r, "peer", false, t0));
        tx.respond(&kr, &r.response(200, "OK", Some("t")), t0)
            .unwrap();
        let inv = invite();
        let _ki = new_key(tx.on_request(&inv, "peer", false, t0));
        // Full: the completed REGISTER (only waiting out Timer J) makes room.
        let opts = with(INVITE, "INVITE", "OPTIONS");
        assert!(matches!(
            tx.on_request(&opts, "peer", false, t0),
            ServerInput::New(_)
        ));
        assert_eq!(tx.len(), 2);
        assert_eq!(tx.state(&kr), None, "the completed REGISTER was shed");
        // Nothing completed is left: the next new request is refused.
        let other = with(INVITE, "INVITE", "MESSAGE");
        assert_eq!(
            tx.on_request(&other, "peer", false, t0),
            ServerInput::Overloaded
        );
    }

    #[test]
    fn overload_bound_refuses_new_transactions_but_still_matches_old_ones() {
        let mut tx = Tx::new(Timers::default(), 2);
        let t0 = Instant::now();
        let inv = invite();
        let r = register();
        let ki = new_key(tx.on_request(&inv, "peer", false, t0));
        let kr = new_key(tx.on_request(&r, "peer", false, t0));
        let opts = with(INVITE, "INVITE", "OPTIONS");
        assert_eq!(
            tx.on_request(&opts, "peer", false, t0),
            ServerInput::Overloaded
        );
        assert_eq!(tx.len(), 2);
        // Retransmissions and ACKs still work at the bound.
        assert_eq!(resent(tx.on_request(&r, "peer", false, t0)), None);
        tx.respond(&ki, &inv.response(486, "Busy", Some("srv1")), t0)
            .unwrap();
        assert_eq!(
            tx.on_request(&ack(), "peer", false, t0),
            ServerInput::AckAbsorbed
        );
        // Room again once a transaction ends.
        tx.respond(&kr, &r.response(200, "OK", None), t0).unwrap();
        tx.on_timer(t0 + ms(32_000));
        assert!(matches!(
            tx.on_request(&opts, "peer", false, t0),
            ServerInput::New(_)
        ));
    }
}
