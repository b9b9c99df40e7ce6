//! The proxy service: everything the proxy owns, in one place. Its routing rules and identity
//! ([`Proxy`]), the response context of every request it forwards with their timers, the
//! dialog tracker and the tracker's store, and the PBX's address resolved at start.
//!
//! The server core reaches the proxy's state only through this value; it sends what the
//! proxy decides, runs its client transactions and hands the tracker's updates to the
//! publishers.

use super::calls_per_user::CallsPerUser;
use super::forwarding::Forwarding;
use super::{lock, next_hop_uri, uri_addr, Proxy, ProxyError};
use crate::config::DialogConfig;
use crate::dialog::{Call, CallKey, DialogId, DialogSender, DialogTracker, Flow};
use crate::sip::{HasHeaders, HeaderName, Request, Response, SipUri};
use crate::storage::DialogStore;
use crate::transport::{Peer, Proto};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Where a relayed request goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// The flow of the dialog's other party (phones behind NAT, on TCP).
    Flow(Flow),
    /// The address the top Route or the Request-URI names.
    Addr(Proto, SocketAddr),
    /// A host name: resolve it first.
    Resolve(SipUri),
}

/// What becomes of an ACK that no transaction absorbed (RFC 3261 §16.11).
#[derive(Debug, Clone, PartialEq)]
pub enum AckStep {
    /// Relay it statelessly (our Route entries removed; our Via goes on top once the socket
    /// it leaves from is chosen).
    Relay { ack: Box<Request>, to: NextHop },
    /// Dropped and counted (see [`ProxyService::acks_dropped`]); why, for the log.
    Drop(&'static str),
}

/// What the proxy keeps behind its one lock.
pub(crate) struct ProxyState {
    /// Requests being forwarded statefully: response contexts and their timers.
    pub(crate) forwarding: Forwarding,
    /// Calls through the proxy.
    pub(crate) dialogs: DialogTracker,
}

/// The dialog tracker, its lock held (every change of a call is published while it is).
pub(crate) struct Dialogs<'a>(MutexGuard<'a, ProxyState>);

impl std::ops::Deref for Dialogs<'_> {
    type Target = DialogTracker;
    fn deref(&self) -> &DialogTracker {
        &self.0.dialogs
    }
}

impl std::ops::DerefMut for Dialogs<'_> {
    fn deref_mut(&mut self) -> &mut DialogTracker {
        &mut self.0.dialogs
    }
}

pub struct ProxyService {
    /// Routing rules and our identity (domains, sockets, upstream).
    pub rules: Proxy,
    /// The response contexts with their timers and the dialog tracker, behind one lock: a
    /// response changes its context and its call together, and every change of a call is
    /// published under it, so a call's lamps change in the order its messages were handled.
    state: Mutex<ProxyState>,
    pub(crate) dialog_store: Arc<dyn DialogStore>,
    /// `[proxy] upstream` found for a host name (at start, then refreshed: see
    /// [`super::upstream`]).
    upstream_resolved: Mutex<Option<Peer>>,
    /// ACKs that matched no transaction and were not relayed.
    acks_dropped: AtomicU64,
    /// Calls each authenticated user originates (`[proxy] max_calls_per_user`). Locked only
    /// while the proxy's lock is held, or alone: never the other way round.
    calls_per_user: Mutex<CallsPerUser>,
}

impl ProxyService {
    pub fn new(
        rules: Proxy,
        dialog: &DialogConfig,
        dialog_store: Arc<dyn DialogStore>,
        upstream_resolved: Option<Peer>,
    ) -> ProxyService {
        ProxyService {
            rules,
            state: Mutex::new(ProxyState {
                forwarding: Forwarding::default(),
                dialogs: DialogTracker::new(dialog),
            }),
            dialog_store,
            upstream_resolved: Mutex::new(upstream_resolved),
            acks_dropped: AtomicU64::new(0),
            calls_per_user: Mutex::new(CallsPerUser::default()),
        }
    }

    /// `[proxy] max_calls_per_user` for a new call of the authenticated `user`, with the
    /// tracker's lock held (`_dialogs`), so that checking and counting are one step:
    /// [`TooManyCalls`](ProxyError::TooManyCalls) when the user already originates that many.
    pub(crate) fn admit_call(&self, _dialogs: &Dialogs<'_>, user: &str) -> Result<(), ProxyError> {
        if lock(&self.calls_per_user).admits(user, self.rules.cfg.max_calls_per_user) {
            Ok(())
        } else {
            Err(ProxyError::TooManyCalls)
        }
    }

    /// Call `key`, just tracked (with the tracker's lock still held), is `user`'s.
    pub(crate) fn count_call(&self, _dialogs: &Dialogs<'_>, user: &str, key: CallKey) {
        lock(&self.calls_per_user).add(user, key);
    }

    /// Every change of a call passes here (with the tracker's lock held): an ended call no
    /// longer counts against its caller.
    pub(crate) fn call_changed(&self, call: &Call) {
        if call.is_terminated() {
            lock(&self.calls_per_user).release(&call.key);
        }
    }

    /// Calls the authenticated `user` originates now (ringing or answered).
    pub fn calls_of(&self, user: &str) -> usize {
        lock(&self.calls_per_user).count(user)
    }

    /// Everything behind the proxy's lock.
    pub(crate) fn state(&self) -> MutexGuard<'_, ProxyState> {
        lock(&self.state)
    }

    /// The dialog tracker, under the proxy's lock.
    pub(crate) fn dialogs(&self) -> Dialogs<'_> {
        Dialogs(lock(&self.state))
    }

    /// The PBX's address found for a host name in `[proxy] upstream`.
    pub fn upstream_resolved(&self) -> Option<Peer> {
        *lock(&self.upstream_resolved)
    }

    /// The upstream host name was looked up again (or its address in use stopped answering).
    pub fn set_upstream_resolved(&self, peer: Option<Peer>) {
        *lock(&self.upstream_resolved) = peer;
    }

    /// Requests being forwarded statefully (response contexts held).
    pub fn forwarded(&self) -> usize {
        lock(&self.state).forwarding.len()
    }

    /// When the next proxy timer (Timer C, the wait after a CANCEL) is due.
    pub fn next_timer(&self) -> Option<Instant> {
        lock(&self.state).forwarding.next_timer()
    }

    /// RFC 3261 §16.3 items 3-5 for a new request the proxy owns: Max-Forwards, loops,
    /// Proxy-Require. Returns the loop hash of the request as received (§16.6 item 8: before
    /// route preprocessing and credential removal change it, so a request that comes back
    /// with what we sent it out with, e.g. a shorter Route, is a spiral, not a loop).
    pub fn validate(&self, req: &Request) -> Result<String, ProxyError> {
        Proxy::check_max_forwards(req)?;
        let loop_hash = self.rules.loop_hash(req);
        if self
            .rules
            .is_loop(&loop_hash, &req.vias().unwrap_or_default())
        {
            return Err(ProxyError::Loop);
        }
        Proxy::check_proxy_require(req)?;
        Ok(loop_hash)
    }

    /// The party an in-dialog request claims to come from, when it names a live dialog (early
    /// or confirmed) of a call the tracker follows. Only that party may send in the dialog
    /// without credentials (see [`DialogSender::sent_from`]); a request of a dialog we do
    /// not know must come from a trusted source or authenticate like a new one: a made-up
    /// dialog (any To tag and our Route) would otherwise have us relay any request anywhere
    /// in our name, e.g. an INVITE to the PBX that trusts us.
    pub fn dialog_sender(&self, req: &Request) -> Option<DialogSender> {
        self.dialogs().sender(&dialog_id(req)?)
    }

    /// The Route entries left on a request after [`preprocess`](Self::preprocess) (ours
    /// removed): in a dialog we know only entries of its route set (RFC 3261 §12.2.1.1: the
    /// route set is fixed when the dialog is set up; an entry a sender adds would have us
    /// carry its request, with our Via, wherever it names), for an initial request none
    /// unless it came from a source trusted for calls (`trusted`): the proxy decides where a
    /// phone's calls go; the PBX may preload a route (RFC 3261 §8.1.2). In-dialog requests of
    /// dialogs we do not know keep their Route (they authenticated, and go where they say).
    pub fn check_routes(
        &self,
        req: &Request,
        sender: Option<&DialogSender>,
        in_dialog: bool,
        trusted: bool,
    ) -> Result<(), ProxyError> {
        let routes = req.headers.list(HeaderName::Route);
        match sender {
            Some(s) => match super::route_outside(&routes, &s.route_set) {
                // Named in the reason phrase: printable characters only, and not all of them.
                Some(r) => Err(ProxyError::RouteNotInDialog(
                    r.chars().filter(|c| !c.is_control()).take(100).collect(),
                )),
                None => Ok(()),
            },
            None if !in_dialog && !trusted && !routes.is_empty() => Err(ProxyError::PreloadedRoute),
            None => Ok(()),
        }
    }

    /// RFC 3261 §16.4 for a request that passed [`validate`](Self::validate) and
    /// authentication: our Route entries go. We Record-Route every dialog we set up, so its
    /// requests carry our Route; an in-dialog one without it is for a dialog we are not in,
    /// and relaying it would make us an open relay for anyone's BYEs (Kamailio's default
    /// config answers 404 too). A Route we would send the request on by must name a SIP URI.
    pub fn preprocess(&self, req: &mut Request, in_dialog: bool) -> Result<(), ProxyError> {
        let routed = self.rules.preprocess_routes(req);
        if in_dialog && !routed {
            return Err(if req.uri.as_sip().is_some_and(|u| self.rules.is_us(u)) {
                ProxyError::NoSuchDialog
            } else {
                ProxyError::NotRoutedThroughUs
            });
        }
        if req.headers.has(HeaderName::Route) {
            next_hop_uri(req)?;
        }
        Ok(())
    }

    /// An ACK that no transaction of ours absorbed: the end-to-end ACK for a 2xx goes on
    /// statelessly by its Route or Request-URI (§16.11), and only when the dialog tracker
    /// expects it. Anyone can put our Route on an ACK: relaying it unauthenticated to
    /// whatever its Request-URI names would make us a reflector. The ACK of a dialog the
    /// tracker follows must come from its party (`from_party`, see
    /// [`dialog_sender`](Self::dialog_sender)) and name no Route outside its route set (an
    /// ACK cannot be challenged). Everything else is dropped and counted.
    pub fn on_stray_ack(
        &self,
        mut ack: Request,
        now_ms: u64,
        from_party: impl FnOnce(&DialogSender) -> bool,
    ) -> AckStep {
        let sender = self.dialog_sender(&ack);
        let step = if Proxy::check_max_forwards(&ack).is_err() {
            AckStep::Drop("Max-Forwards exhausted")
        } else if !self.rules.preprocess_routes(&mut ack) {
            // Not routed through us (see proxy_request): absorbed, never relayed.
            AckStep::Drop("no Route of ours")
        } else if !self.expects_ack(&ack, now_ms) {
            AckStep::Drop("no confirmed dialog of ours")
        } else if sender.as_ref().is_some_and(|s| !from_party(s)) {
            AckStep::Drop("not from a party of its dialog")
        } else if self
            .check_routes(&ack, sender.as_ref(), true, false)
            .is_err()
        {
            AckStep::Drop("a Route outside its dialog's route set")
        } else {
            match next_hop_uri(&ack) {
                Err(_) => AckStep::Drop("no next hop"),
                Ok(uri) => {
                    let to = match uri_addr(&uri) {
                        Some((proto, addr)) => match self.flow_towards(&ack) {
                            Some(flow) => NextHop::Flow(flow),
                            None => NextHop::Addr(proto, addr),
                        },
                        None => NextHop::Resolve(uri),
                    };
                    AckStep::Relay {
                        ack: Box::new(ack),
                        to,
                    }
                }
            }
        };
        if matches!(step, AckStep::Drop(_)) {
            self.acks_dropped.fetch_add(1, Ordering::Relaxed);
        }
        step
    }

    /// How many ACKs [`on_stray_ack`](Self::on_stray_ack) dropped.
    pub fn acks_dropped(&self) -> u64 {
        self.acks_dropped.load(Ordering::Relaxed)
    }

    /// Whether the tracker expects this end-to-end ACK (see
    /// [`DialogTracker::expects_ack`]) at `now_ms` (unix milliseconds).
    pub fn expects_ack(&self, ack: &Request, now_ms: u64) -> bool {
        let Some(id) = dialog_id(ack) else {
            return false;
        };
        self.dialogs().expects_ack(&id, now_ms)
    }

    /// A response goes upstream: when it is a 2xx to an INVITE, its ACK will follow (see
    /// [`DialogTracker::answered`]).
    pub fn note_answered(&self, resp: &Response, now_ms: u64) {
        if !(200..300).contains(&resp.status) || !resp.cseq().is_ok_and(|c| c.method == "INVITE") {
            return;
        }
        if let Some(id) = dialog_id(resp) {
            self.dialogs().answered(id, now_ms);
        }
    }

    /// For an in-dialog request of a tracked call: the flow of the party it goes to (where
    /// its INVITE or answer came from), so phones behind NAT and on TCP are reached.
    pub fn flow_towards(&self, req: &Request) -> Option<Flow> {
        let id = dialog_id(req)?;
        self.dialogs()
            .flow_towards(&id.call_id, &id.from_tag, &id.to_tag)
    }

    /// The calls in progress (a snapshot).
    pub fn calls(&self) -> Vec<Call> {
        self.dialogs().calls().cloned().collect()
    }
}

/// The dialog a message names by its Call-ID, From tag and To tag, when it has all three.
fn dialog_id(m: &impl HasHeaders) -> Option<DialogId> {
    Some(DialogId {
        call_id: m.call_id().ok()?.to_string(),
        from_tag: m.from_hdr().ok()?.tag()?,
        to_tag: m.to_hdr().ok()?.tag()?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::dialog::fixtures::{info, key, T0};
    use crate::sip::{parse_message, Limits, Message};

    /// A service for example.com on 192.0.2.10:5060, its store in memory.
    pub(crate) fn service() -> ProxyService {
        let mut cfg = Config::default();
        cfg.server.domain = crate::sip::uri::Host::Name("example.com".into());
        let rules = Proxy::new(
            &cfg,
            vec![(Proto::Udp, "192.0.2.10:5060".parse().unwrap())],
            "example.com".into(),
        );
        let store = Arc::new(crate::storage::MemoryStore::new());
        ProxyService::new(rules, &cfg.dialog, store, None)
    }

    /// The fixture call (Alice calls Bob), answered by branch `b1` from 192.0.2.9.
    fn answered(svc: &ProxyService) {
        let mut t = svc.dialogs();
        t.invite(key(), info(), T0).unwrap();
        t.response(
            &key(),
            Some("b1"),
            200,
            Some("sip:1002@192.0.2.9:5060"),
            "udp:192.0.2.9:5060".parse().ok(),
            T0 + 1,
        )
        .unwrap();
    }

    fn ack(extra: &str, to_tag: &str) -> Request {
        let text = format!(
            "ACK sip:1002@198.51.100.66:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKack1\r\n\
             {extra}From: <sip:1001@example.com>;tag={}\r\n\
             To: <sip:1002@example.com>;tag={to_tag}\r\n\
             Call-ID: {}\r\nCSeq: 101 ACK\r\nContent-Length: 0\r\n\r\n",
            key().from_tag,
            key().call_id
        );
        match parse_message(text.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    const OUR_ROUTE: &str = "Max-Forwards: 70\r\nRoute: <sip:192.0.2.10:5060;lr>\r\n";

    #[test]
    fn rfc3261_16_11_the_ack_of_a_confirmed_dialog_goes_to_the_answering_flow() {
        let svc = service();
        answered(&svc);
        match svc.on_stray_ack(ack(OUR_ROUTE, "b1"), T0 + 2, |_| true) {
            AckStep::Relay { ack, to } => {
                assert_eq!(to, NextHop::Flow("udp:192.0.2.9:5060".parse().unwrap()));
                assert!(!ack.headers.has(HeaderName::Route), "our Route is removed");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(svc.acks_dropped(), 0);
    }

    #[test]
    fn rfc3261_16_11_an_ack_of_no_dialog_of_ours_is_dropped_and_counted() {
        let svc = service();
        answered(&svc);
        let cases = [
            (ack(OUR_ROUTE, "forged"), "no confirmed dialog of ours"),
            (ack("Max-Forwards: 70\r\n", "b1"), "no Route of ours"),
            (
                ack(
                    "Max-Forwards: 0\r\nRoute: <sip:192.0.2.10:5060;lr>\r\n",
                    "b1",
                ),
                "Max-Forwards exhausted",
            ),
        ];
        let n = cases.len() as u64;
        for (a, why) in cases {
            assert_eq!(svc.on_stray_ack(a, T0 + 2, |_| true), AckStep::Drop(why));
        }
        assert_eq!(svc.acks_dropped(), n);
    }

    #[test]
    fn rfc3261_16_11_a_2xx_that_went_through_lets_its_ack_follow_by_request_uri() {
        let svc = service();
        // No call tracked (e.g. cancelled as the 2xx crossed): the 2xx is what we know.
        assert!(matches!(
            svc.on_stray_ack(ack(OUR_ROUTE, "b9"), T0, |_| true),
            AckStep::Drop(_)
        ));
        let ok = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKinv1\r\n\
             From: <sip:1001@example.com>;tag={}\r\nTo: <sip:1002@example.com>;tag=b9\r\n\
             Call-ID: {}\r\nCSeq: 101 INVITE\r\nContent-Length: 0\r\n\r\n",
            key().from_tag,
            key().call_id
        );
        let Ok(Message::Response(ok)) = parse_message(ok.as_bytes(), &Limits::default()) else {
            panic!("bad 200");
        };
        svc.note_answered(&ok, T0 + 1);
        assert_eq!(
            svc.on_stray_ack(ack(OUR_ROUTE, "b9"), T0 + 2, |_| true),
            AckStep::Relay {
                ack: Box::new({
                    let mut a = ack(OUR_ROUTE, "b9");
                    svc.rules.preprocess_routes(&mut a);
                    a
                }),
                to: NextHop::Addr(Proto::Udp, "198.51.100.66:5060".parse().unwrap()),
            }
        );
    }

    fn invite(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:1002@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKinv1\r\n\
             {extra}From: <sip:1001@example.com>;tag=f1\r\n\
             To: <sip:1002@example.com>\r\nCall-ID: v1\r\nCSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        match parse_message(text.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc3261_16_3_hops_loops_and_proxy_require_are_refused_with_their_status() {
        let svc = service();
        let hash = svc.validate(&invite("Max-Forwards: 70\r\n")).unwrap();
        assert_eq!(hash.len(), 8);
        let e = svc.validate(&invite("Max-Forwards: 0\r\n")).unwrap_err();
        assert_eq!((e.status(), e), (483, ProxyError::TooManyHops));
        let e = svc
            .validate(&invite("Max-Forwards: 70\r\nProxy-Require: foo\r\n"))
            .unwrap_err();
        assert_eq!(e.status(), 420);
        // The same request back through a Via of ours carrying its hash: a loop.
        let looped = invite(&format!(
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch={};rport\r\nMax-Forwards: 69\r\n",
            super::super::branch::forwarded(
                &crate::transaction::BranchKey::new([1; 32]),
                &hash,
                1,
                ""
            )
        ));
        // (Our Via is below the sender's here; the hash covers neither.)
        assert_eq!(svc.validate(&looped), Err(ProxyError::Loop));
        assert_eq!(ProxyError::Loop.status(), 482);
    }

    #[test]
    fn rfc3261_16_4_in_dialog_requests_must_come_through_our_route() {
        let svc = service();
        let bye = |extra: &str, uri: &str| {
            let text = format!(
                "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKbye1\r\n\
                 Max-Forwards: 70\r\n{extra}From: <sip:1001@example.com>;tag=f1\r\n\
                 To: <sip:1002@example.com>;tag=t1\r\nCall-ID: d1\r\nCSeq: 2 BYE\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            match parse_message(text.as_bytes(), &Limits::default()) {
                Ok(Message::Request(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        // Our Route: preprocessed away, the request goes on.
        let mut r = bye(OUR_ROUTE, "sip:1002@192.0.2.9");
        assert_eq!(svc.preprocess(&mut r, true), Ok(()));
        assert!(!r.headers.has(HeaderName::Route));
        // Without it: a dialog we are not in (404), or one addressed to us we do not have (481).
        let e = svc
            .preprocess(&mut bye("", "sip:1002@192.0.2.9"), true)
            .unwrap_err();
        assert_eq!((e.status(), e), (404, ProxyError::NotRoutedThroughUs));
        let e = svc
            .preprocess(&mut bye("", "sip:192.0.2.10:5060"), true)
            .unwrap_err();
        assert_eq!((e.status(), e), (481, ProxyError::NoSuchDialog));
        // A Route after ours must be a SIP URI.
        let mut r = bye(
            "Route: <sip:192.0.2.10:5060;lr>, <http://x.test/>\r\n",
            "sip:1002@192.0.2.9",
        );
        assert_eq!(svc.preprocess(&mut r, true).unwrap_err().status(), 400);
        // Credentials: needed unless the tracker knows the dialog, and then only its party
        // goes without (the sender the From tag names).
        assert_eq!(
            svc.dialog_sender(&bye(OUR_ROUTE, "sip:1002@192.0.2.9")),
            None
        );
        answered(&svc);
        let sender = svc.dialog_sender(&ack(OUR_ROUTE, "b1")).expect("known");
        assert_eq!(sender.side, crate::dialog::Side::Caller);
        assert_eq!(sender.flow, "udp:192.0.2.7:5060".parse().ok());
    }

    /// The fixture call answered with a Record-Route naming us and a proxy beyond us.
    fn answered_through_pbx(svc: &ProxyService) {
        let mut t = svc.dialogs();
        t.invite(key(), info(), T0).unwrap();
        t.response_routed(
            &key(),
            Some("b1"),
            200,
            Some("sip:1002@192.0.2.9:5060"),
            "udp:192.0.2.9:5060".parse().ok(),
            &[
                "<sip:pbx.example.net;lr>".into(),
                "<sip:192.0.2.10:5060;lr>".into(),
            ],
            T0 + 1,
        )
        .unwrap();
    }

    #[test]
    fn rfc3261_12_2_1_1_only_the_dialogs_route_set_is_followed() {
        let svc = service();
        answered_through_pbx(&svc);
        let sender = svc.dialog_sender(&ack(OUR_ROUTE, "b1")).expect("known");
        let routed = |route: &str| {
            let mut r = ack(&format!("Max-Forwards: 70\r\n{route}"), "b1");
            svc.rules.preprocess_routes(&mut r);
            r
        };
        // Its own route set, in whatever spelling of the same URI: followed.
        let ok = routed("Route: <sip:192.0.2.10:5060;lr>, <sip:PBX.example.net;lr>\r\n");
        assert_eq!(svc.check_routes(&ok, Some(&sender), true, false), Ok(()));
        assert_eq!(
            svc.check_routes(&routed(OUR_ROUTE), Some(&sender), true, false),
            Ok(())
        );
        // An entry the dialog does not have: refused, whoever sends it (the PBX too).
        let evil = routed("Route: <sip:192.0.2.10:5060;lr>, <sip:192.0.2.66;lr>\r\n");
        let e = svc
            .check_routes(&evil, Some(&sender), true, true)
            .unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(
            e.to_string().contains("not in this dialog's route set"),
            "{e}"
        );
        assert!(e.to_string().contains("192.0.2.66"), "{e}");
        // A dialog we do not know: today's rules (authenticated, routed as it says).
        assert_eq!(svc.check_routes(&evil, None, true, false), Ok(()));
    }

    #[test]
    fn rfc3261_16_4_phones_may_not_preload_a_route_the_trusted_pbx_may() {
        let svc = service();
        let mut preloaded =
            invite("Max-Forwards: 70\r\nRoute: <sip:192.0.2.10:5060;lr>, <sip:192.0.2.5;lr>\r\n");
        svc.rules.preprocess_routes(&mut preloaded);
        let e = svc
            .check_routes(&preloaded, None, false, false)
            .unwrap_err();
        assert_eq!((e.status(), &e), (403, &ProxyError::PreloadedRoute));
        assert!(
            e.to_string().contains("Route entries other than ours"),
            "{e}"
        );
        assert_eq!(svc.check_routes(&preloaded, None, false, true), Ok(()));
        // Only our own Route: nothing left, nothing to refuse.
        let mut ours = invite(OUR_ROUTE);
        svc.rules.preprocess_routes(&mut ours);
        assert_eq!(svc.check_routes(&ours, None, false, false), Ok(()));
    }

    #[test]
    fn rfc3261_16_11_an_ack_from_no_party_or_off_the_route_set_is_dropped_and_counted() {
        let svc = service();
        answered_through_pbx(&svc);
        assert_eq!(
            svc.on_stray_ack(ack(OUR_ROUTE, "b1"), T0 + 2, |_| false),
            AckStep::Drop("not from a party of its dialog")
        );
        let off_route = ack(
            "Max-Forwards: 70\r\nRoute: <sip:192.0.2.10:5060;lr>, <sip:192.0.2.66;lr>\r\n",
            "b1",
        );
        assert_eq!(
            svc.on_stray_ack(off_route, T0 + 2, |_| true),
            AckStep::Drop("a Route outside its dialog's route set")
        );
        assert_eq!(svc.acks_dropped(), 2);
        // The party's, by the route set: relayed.
        let mut seen = None;
        let step = svc.on_stray_ack(ack(OUR_ROUTE, "b1"), T0 + 2, |s| {
            seen = Some(s.side);
            true
        });
        assert!(matches!(step, AckStep::Relay { .. }), "{step:?}");
        assert_eq!(seen, Some(crate::dialog::Side::Caller));
    }
}
