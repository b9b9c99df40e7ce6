//! The proxy service's stateful forwarding (RFC 3261 §16.6–§16.10), pure: every input (a
//! request to forward, a branch sent, a response on a branch, a branch that failed, a CANCEL,
//! the clock) changes the response contexts and their timers and returns the
//! [`ProxyAction`]s the server core carries out in order (see `Core::run_proxy_actions`).
//! Nothing here touches a socket, a client transaction or the clock.
//!
//! A response or CANCEL of a call the dialog tracker follows changes the call in the same
//! critical section as its response context; the call's [`Update`] goes to the caller's
//! `publish` before the lock is released, so a call's lamps change in the order its messages
//! were handled.

use super::context::{BranchState, Context, Step};
use super::service::{NextHop, ProxyService, ProxyState};
use super::{forwarded_request, next_hop_uri, uri_addr, Hop};
use crate::deadline::Deadlines;
use crate::dialog::{CallKey, DialogTracker, Flow, Update};
use crate::sip::{HasHeaders, HeaderName, Request, Response};
use crate::transaction::TxKey;
use crate::transport::Peer;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a cancelled branch may take to send its final response before the proxy treats
/// it as finished (RFC 3261 §16.10: 64*T1).
pub const AFTER_CANCEL: Duration = Duration::from_secs(32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BranchTimer {
    /// RFC 3261 §16.6 item 11.
    C,
    /// No final response after our CANCEL.
    AfterCancel,
}

/// What the server core does for the proxy, in the order given.
#[derive(Debug)]
pub enum ProxyAction {
    /// Branch `branch` of `server` goes to `to`: choose our socket for it (resolving a host
    /// name first, [`NextHop::Resolve`]), then hand it to [`ProxyService::send_branch`].
    Route {
        server: TxKey,
        branch: usize,
        hop: Hop,
        to: NextHop,
    },
    /// Send this branch request (our Via still to put on top, its branch minted from
    /// `loop_hash`) to `peer` through a new client transaction owned by the branch, then tell
    /// [`ProxyService::branch_sent`]. Unreachable peer or no transaction: the branch fails.
    SendBranch {
        server: TxKey,
        branch: usize,
        request: Box<Request>,
        peer: Peer,
        loop_hash: String,
    },
    /// The branch ended without a response from the next hop: feed
    /// [`ProxyService::fail_branch`] with this status (a synthetic response needs a fresh
    /// To tag, which the core mints).
    FailBranch {
        server: TxKey,
        branch: usize,
        status: u16,
        reason: &'static str,
    },
    /// Send a CANCEL for this branch's client transaction (§9.1, §16.10).
    Cancel { client: TxKey, peer: Peer },
    /// Stop this branch's client transaction: no final answer came after our CANCEL.
    TerminateClient(TxKey),
    /// Answer through the request's server transaction (statelessly for a 2xx whose
    /// transaction is gone).
    Respond { server: TxKey, response: Response },
    /// A 2xx whose response context is gone: statelessly to the Via now on top.
    ForwardStateless(Response),
    /// A proxy timer was set: the core's timer loop reads [`ProxyService::next_timer`] again.
    TimerSet {
        server: TxKey,
        branch: usize,
        timer: BranchTimer,
        at: Instant,
    },
}

/// Receives the changes of tracked calls, under the proxy's lock, in the order they happen.
pub type Publish<'a> = &'a mut dyn FnMut(Option<Update>);

/// A change of a tracked call seen by the forwarding logic.
#[derive(Debug, Clone, PartialEq)]
pub enum CallChange {
    /// A response to its INVITE passed (our Via removed).
    Response {
        call: CallKey,
        status: u16,
        to_tag: Option<String>,
        contact: Option<String>,
        flow: Option<Flow>,
        /// Its Record-Route values: the route set of the dialog it sets up.
        route_set: Vec<String>,
    },
    /// Its INVITE got this final non-2xx answer upstream.
    Failed { call: CallKey, status: u16 },
    /// The caller cancelled.
    Cancelled { call: CallKey },
}

impl CallChange {
    /// The tracker hears the change (at `now_ms`, unix milliseconds).
    pub fn apply(self, dialogs: &mut DialogTracker, now_ms: u64) -> Option<Update> {
        match self {
            CallChange::Response {
                call,
                status,
                to_tag,
                contact,
                flow,
                route_set,
            } => dialogs.response_routed(
                &call,
                to_tag.as_deref(),
                status,
                contact.as_deref(),
                flow,
                &route_set,
                now_ms,
            ),
            CallChange::Failed { call, status } => dialogs.failed(&call, status, now_ms),
            CallChange::Cancelled { call } => dialogs.cancel(&call, now_ms),
        }
    }

    /// A response to the INVITE of `call`, with what the tracker reads from it.
    pub fn response(call: &CallKey, resp: &Response, flow: Option<Flow>) -> CallChange {
        CallChange::Response {
            call: call.clone(),
            status: resp.status,
            to_tag: resp.to_hdr().ok().and_then(|t| t.tag()),
            contact: resp
                .contacts()
                .ok()
                .and_then(|c| c.into_iter().next())
                .and_then(|c| match c {
                    crate::sip::header::ContactValue::Addr(a) => Some(a.uri.to_string()),
                    _ => None,
                }),
            flow,
            route_set: resp
                .headers
                .list(HeaderName::RecordRoute)
                .into_iter()
                .take(crate::dialog::MAX_ROUTE_SET)
                .map(str::to_string)
                .collect(),
        }
    }
}

/// Every request the proxy is forwarding statefully.
#[derive(Default)]
pub struct Forwarding {
    contexts: HashMap<TxKey, Forwarded>,
    timers: Deadlines<(TxKey, usize, BranchTimer)>,
}

impl Forwarding {
    /// Response contexts held.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// When the next timer is due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.next()
    }
}

/// One request being forwarded statefully.
pub struct Forwarded {
    ctx: Context,
    /// The request as it arrived (our stamps on its Via) after route preprocessing.
    request: Request,
    inbound: Peer,
    groups: VecDeque<Vec<Hop>>,
    /// Client transaction and destination per branch (`None` until it is sent).
    branches: Vec<Option<(TxKey, Peer)>>,
    record_route: bool,
    loop_hash: String,
    /// The call this INVITE started, when the dialog tracker follows it.
    call: Option<CallKey>,
}

impl Forwarded {
    /// A request that came from `inbound`, to be forwarded to `groups` (q groups, tried one
    /// after the other).
    pub fn new(
        request: Request,
        inbound: Peer,
        groups: Vec<Vec<Hop>>,
        record_route: bool,
        loop_hash: String,
        call: Option<CallKey>,
    ) -> Forwarded {
        Forwarded {
            ctx: Context::new(request.method == "INVITE", groups.len().saturating_sub(1)),
            request,
            inbound,
            groups: groups.into(),
            branches: Vec::new(),
            record_route,
            loop_hash,
            call,
        }
    }
}

/// Where a hop goes: its flow, else its first Route, else the request's Route or
/// Request-URI. `None` when that names nothing we can send to.
fn next_hop(request: &Request, hop: &Hop) -> Option<NextHop> {
    if let Some(f) = hop.flow {
        return Some(NextHop::Flow(f));
    }
    let uri = match hop.route.first() {
        Some(r) => match crate::sip::NameAddr::parse(r).ok()?.uri {
            crate::sip::Uri::Sip(u) => u,
            _ => return None,
        },
        // The request's own Route (another proxy after us), else the hop's Request-URI.
        None => match request.headers.list(HeaderName::Route).first() {
            Some(_) => next_hop_uri(request).ok()?,
            None => match &hop.uri {
                crate::sip::Uri::Sip(u) => u.clone(),
                _ => return None,
            },
        },
    };
    Some(match uri_addr(&uri) {
        Some((proto, addr)) => NextHop::Addr(proto, addr),
        None => NextHop::Resolve(uri),
    })
}

impl ProxyService {
    /// RFC 3261 §16.6: a request to forward statefully under server transaction `server`;
    /// its first q group starts.
    pub fn forward(&self, server: &TxKey, fwd: Forwarded) -> Vec<ProxyAction> {
        let fw = &mut self.state().forwarding;
        fw.contexts.insert(server.clone(), fwd);
        start_group(fw, server)
    }

    /// Branch `branch` of `server` leaves through our socket `peer`: the request to send
    /// (§16.6 items 1–5: Request-URI, Route, Max-Forwards, Record-Route).
    pub fn send_branch(
        &self,
        server: &TxKey,
        branch: usize,
        hop: &Hop,
        peer: Peer,
    ) -> Vec<ProxyAction> {
        let st = self.state();
        let Some(f) = st.forwarding.contexts.get(server) else {
            return Vec::new();
        };
        let rr = if f.record_route {
            let ftag = f.request.from_hdr().ok().and_then(|h| h.tag());
            self.rules.record_route(&f.inbound, &peer, ftag.as_deref())
        } else {
            Vec::new()
        };
        vec![ProxyAction::SendBranch {
            server: server.clone(),
            branch,
            request: Box::new(forwarded_request(&f.request, Some(hop), &rr)),
            peer,
            loop_hash: f.loop_hash.clone(),
        }]
    }

    /// Where branch `branch` of `server` went, once sent.
    pub fn branch_peer(&self, server: &TxKey, branch: usize) -> Option<Peer> {
        let st = self.state();
        let f = st.forwarding.contexts.get(server)?;
        f.branches.get(branch)?.as_ref().map(|(_, p)| *p)
    }

    /// The branch went out as client transaction `client`: Timer C starts for an INVITE
    /// (§16.6 item 11).
    pub fn branch_sent(
        &self,
        server: &TxKey,
        branch: usize,
        client: TxKey,
        peer: Peer,
        now: Instant,
    ) -> Vec<ProxyAction> {
        let mut st = self.state();
        let Forwarding { contexts, timers } = &mut st.forwarding;
        let Some(f) = contexts.get_mut(server) else {
            return Vec::new();
        };
        if let Some(b) = f.branches.get_mut(branch) {
            *b = Some((client, peer));
        }
        let pending = f
            .ctx
            .branches
            .get(branch)
            .is_some_and(|b| b.state != BranchState::Done);
        if !(f.ctx.invite && pending) {
            return Vec::new();
        }
        let at = now + Duration::from_secs(self.rules.cfg.timer_c);
        timers.schedule((server.clone(), branch, BranchTimer::C), at);
        vec![ProxyAction::TimerSet {
            server: server.clone(),
            branch,
            timer: BranchTimer::C,
            at,
        }]
    }

    /// Branch `branch` ended without a response from the next hop: it counts as a response
    /// with this status (`tag` its To tag).
    #[allow(clippy::too_many_arguments)]
    pub fn fail_branch(
        &self,
        server: &TxKey,
        branch: usize,
        status: u16,
        reason: &str,
        tag: &str,
        now: Instant,
        now_ms: u64,
        publish: Publish<'_>,
    ) -> Vec<ProxyAction> {
        let mut st = self.state();
        let Some(f) = st.forwarding.contexts.get_mut(server) else {
            return Vec::new();
        };
        let synthetic = f.request.response(status, reason, Some(tag));
        let steps = f.ctx.on_timeout(branch, synthetic);
        apply_steps(&mut st, server, steps, now, now_ms, publish)
    }

    /// A response on branch `branch` of `server`, our Via removed (§16.7).
    pub fn on_response(
        &self,
        server: &TxKey,
        branch: usize,
        resp: Response,
        now: Instant,
        now_ms: u64,
        publish: Publish<'_>,
    ) -> Vec<ProxyAction> {
        let mut guard = self.state();
        let st = &mut *guard;
        let Forwarding { contexts, timers } = &mut st.forwarding;
        let Some(f) = contexts.get_mut(server) else {
            // The context is gone (after Timer L): a 2xx still goes upstream.
            return if (200..300).contains(&resp.status) {
                vec![ProxyAction::ForwardStateless(resp)]
            } else {
                Vec::new()
            };
        };
        let mut actions = Vec::new();
        if let Some(call) = &f.call {
            let flow = f
                .branches
                .get(branch)
                .cloned()
                .flatten()
                .map(|(_, p)| Flow::of(&p));
            publish(CallChange::response(call, &resp, flow).apply(&mut st.dialogs, now_ms));
        }
        if f.ctx.invite {
            if (101..200).contains(&resp.status) {
                // §16.7 item 2: a provisional restarts Timer C.
                let at = now + Duration::from_secs(self.rules.cfg.timer_c);
                timers.schedule((server.clone(), branch, BranchTimer::C), at);
                actions.push(ProxyAction::TimerSet {
                    server: server.clone(),
                    branch,
                    timer: BranchTimer::C,
                    at,
                });
            } else if resp.status >= 200 {
                timers.cancel(&(server.clone(), branch, BranchTimer::C));
                timers.cancel(&(server.clone(), branch, BranchTimer::AfterCancel));
            }
        }
        let steps = f.ctx.on_response(branch, resp);
        actions.extend(apply_steps(st, server, steps, now, now_ms, publish));
        actions
    }

    /// CANCEL from upstream for the INVITE of server transaction `invite` (§16.10): every
    /// pending branch is cancelled, no new ones start. `None` when we forward no such INVITE,
    /// or when the CANCEL did not come over the flow the INVITE came from: a CANCEL is the
    /// caller's alone (§9.1: it is built from the INVITE, and only the INVITE's sender has
    /// it), and anyone who knows a call's ids could otherwise stop it ringing. Such a
    /// CANCEL matches nothing of ours and is answered 481 (§9.2).
    pub fn on_cancel(
        &self,
        invite: &TxKey,
        from: Flow,
        now: Instant,
        now_ms: u64,
        publish: Publish<'_>,
    ) -> Option<Vec<ProxyAction>> {
        let mut guard = self.state();
        let st = &mut *guard;
        let f = st
            .forwarding
            .contexts
            .get_mut(invite)
            .filter(|f| Flow::of(&f.inbound) == from)?;
        let steps = f.ctx.cancel();
        if let Some(call) = f.call.clone() {
            publish(CallChange::Cancelled { call }.apply(&mut st.dialogs, now_ms));
        }
        Some(apply_steps(st, invite, steps, now, now_ms, publish))
    }

    /// Timer C (a branch that rings too long is cancelled) and the wait after a CANCEL (the
    /// branch counts as 408).
    pub fn on_timers(&self, now: Instant) -> Vec<ProxyAction> {
        let fw = &mut self.state().forwarding;
        let due = fw.timers.pop_due(now);
        let mut actions = Vec::new();
        for (key, i, kind) in due {
            match kind {
                BranchTimer::C => {
                    let proceeding = fw.contexts.get_mut(&key).is_some_and(|f| {
                        f.ctx.branches.get_mut(i).is_some_and(|b| {
                            let ringing = b.state == BranchState::Proceeding && !b.cancel_sent;
                            b.cancel_sent |= ringing;
                            ringing
                        })
                    });
                    if proceeding {
                        tracing::debug!("Timer C fired: cancelling a branch that rings too long");
                        actions.extend(cancel_branch(fw, &key, i, now));
                    }
                }
                BranchTimer::AfterCancel => {
                    let client = fw
                        .contexts
                        .get(&key)
                        .and_then(|f| f.branches.get(i).cloned().flatten())
                        .map(|(k, _)| k);
                    if let Some(k) = client {
                        actions.push(ProxyAction::TerminateClient(k));
                    }
                    actions.push(ProxyAction::FailBranch {
                        server: key,
                        branch: i,
                        status: 408,
                        reason: "Request Timeout",
                    });
                }
            }
        }
        actions
    }

    /// A server transaction ended: its response context and timers go with it.
    pub fn forget(&self, server: &TxKey) {
        let fw = &mut self.state().forwarding;
        if let Some(f) = fw.contexts.remove(server) {
            for i in 0..f.branches.len() {
                fw.timers.cancel(&(server.clone(), i, BranchTimer::C));
                fw.timers
                    .cancel(&(server.clone(), i, BranchTimer::AfterCancel));
            }
        }
    }
}

/// Starts the branches of the next q group.
fn start_group(fw: &mut Forwarding, server: &TxKey) -> Vec<ProxyAction> {
    let Some(f) = fw.contexts.get_mut(server) else {
        return Vec::new();
    };
    let Some(group) = f.groups.pop_front() else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    let mut failed = Vec::new();
    for hop in group {
        let branch = f.ctx.add_branch();
        f.branches.push(None);
        match next_hop(&f.request, &hop) {
            Some(to) => actions.push(ProxyAction::Route {
                server: server.clone(),
                branch,
                hop,
                to,
            }),
            None => failed.push(ProxyAction::FailBranch {
                server: server.clone(),
                branch,
                status: 404,
                reason: "Not Found: no route for this request",
            }),
        }
    }
    actions.extend(failed);
    actions
}

/// What the response context decided, as actions; a failed call's change is published.
fn apply_steps(
    st: &mut ProxyState,
    server: &TxKey,
    steps: Vec<Step>,
    now: Instant,
    now_ms: u64,
    publish: Publish<'_>,
) -> Vec<ProxyAction> {
    let ProxyState {
        forwarding: fw,
        dialogs,
    } = st;
    let mut actions = Vec::new();
    for step in steps {
        match step {
            Step::Forward(response) => {
                if response.status >= 300 {
                    let call = fw.contexts.get(server).and_then(|f| f.call.clone());
                    if let Some(call) = call {
                        let failed = CallChange::Failed {
                            call,
                            status: response.status,
                        };
                        publish(failed.apply(dialogs, now_ms));
                    }
                }
                actions.push(ProxyAction::Respond {
                    server: server.clone(),
                    response,
                });
            }
            Step::Cancel(i) => actions.extend(cancel_branch(fw, server, i, now)),
            Step::NextGroup => actions.extend(start_group(fw, server)),
        }
    }
    actions
}

/// A CANCEL for branch `i` (§16.10), and the wait for its final response.
fn cancel_branch(fw: &mut Forwarding, server: &TxKey, i: usize, now: Instant) -> Vec<ProxyAction> {
    let target = fw
        .contexts
        .get(server)
        .and_then(|f| f.branches.get(i).cloned().flatten());
    let Some((client, peer)) = target else {
        return Vec::new();
    };
    let at = now + AFTER_CANCEL;
    fw.timers
        .schedule((server.clone(), i, BranchTimer::AfterCancel), at);
    vec![
        ProxyAction::Cancel { client, peer },
        ProxyAction::TimerSet {
            server: server.clone(),
            branch: i,
            timer: BranchTimer::AfterCancel,
            at,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialog::fixtures::{info, key, T0};
    use crate::dialog::DialogState;
    use crate::proxy::service::tests::service;
    use crate::sip::{parse_message, Limits, Message, Uri};
    use crate::transport::Proto;

    const TIMER_C: Duration = Duration::from_secs(180);

    fn peer(remote: &str) -> Peer {
        Peer {
            proto: Proto::Udp,
            remote: remote.parse().unwrap(),
            local: "192.0.2.10:5060".parse().unwrap(),
            conn: None,
        }
    }

    fn invite() -> Request {
        let text = "INVITE sip:1002@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKcaller1\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:1001@example.com>;tag=ft1\r\n\
             To: <sip:1002@example.com>\r\n\
             Call-ID: fwd-test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        match parse_message(text.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn hop(addr: &str) -> Hop {
        Hop {
            uri: Uri::parse(&format!("sip:1002@{addr}")).unwrap(),
            route: vec![],
            flow: None,
        }
    }

    fn client_key(branch: usize) -> TxKey {
        let mut req = invite();
        req.headers.set(
            HeaderName::Via,
            format!("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbranch{branch}"),
        );
        TxKey::server(&req, None).unwrap()
    }

    /// An INVITE forked to `hops` (one q group), every branch sent; returns the server key.
    fn forked(svc: &ProxyService, hops: &[&str], now: Instant) -> TxKey {
        let server = TxKey::server(&invite(), None).unwrap();
        svc.dialogs().invite(key(), info(), T0).unwrap();
        let group = hops.iter().map(|a| hop(a)).collect();
        let fwd = Forwarded::new(
            invite(),
            peer("192.0.2.7:5060"),
            vec![group],
            true,
            "lh".into(),
            Some(key()),
        );
        for a in svc.forward(&server, fwd) {
            let ProxyAction::Route {
                branch, hop, to, ..
            } = a
            else {
                panic!("{a:?}");
            };
            let NextHop::Addr(_, addr) = to else {
                panic!("{to:?}");
            };
            let p = peer(&addr.to_string());
            assert_eq!(svc.send_branch(&server, branch, &hop, p).len(), 1);
            svc.branch_sent(&server, branch, client_key(branch), p, now);
        }
        server
    }

    /// The call states the service published, in order.
    type Published = Vec<DialogState>;

    fn on_response(
        svc: &ProxyService,
        server: &TxKey,
        branch: usize,
        resp: Response,
        now: Instant,
    ) -> Vec<ProxyAction> {
        on_response_published(svc, server, branch, resp, now).0
    }

    fn on_response_published(
        svc: &ProxyService,
        server: &TxKey,
        branch: usize,
        resp: Response,
        now: Instant,
    ) -> (Vec<ProxyAction>, Published) {
        let mut published = Vec::new();
        let actions = svc.on_response(server, branch, resp, now, T0 + 1, &mut |u| {
            published.extend(u.map(|u| u.call.state))
        });
        (actions, published)
    }

    fn on_cancel(
        svc: &ProxyService,
        server: &TxKey,
        now: Instant,
    ) -> Option<(Vec<ProxyAction>, Published)> {
        let mut published = Vec::new();
        let caller = Flow::of(&peer("192.0.2.7:5060"));
        let actions = svc.on_cancel(server, caller, now, T0 + 1, &mut |u| {
            published.extend(u.map(|u| u.call.state))
        })?;
        Some((actions, published))
    }

    /// An INVITE forked to two phones, both branches sent at `now`.
    fn forked_to_two() -> (ProxyService, Instant, TxKey) {
        let svc = service();
        let now = Instant::now();
        let server = forked(&svc, &["192.0.2.21:5060", "192.0.2.22:5060"], now);
        (svc, now, server)
    }

    fn response(status: u16, to_tag: &str) -> Response {
        invite().response(status, "Reason", Some(to_tag))
    }

    fn responded(actions: &[ProxyAction]) -> Vec<u16> {
        actions
            .iter()
            .filter_map(|a| match a {
                ProxyAction::Respond { response, .. } => Some(response.status),
                _ => None,
            })
            .collect()
    }

    fn cancelled(actions: &[ProxyAction]) -> Vec<TxKey> {
        actions
            .iter()
            .filter_map(|a| match a {
                ProxyAction::Cancel { client, .. } => Some(client.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rfc3261_16_6_each_target_gets_a_branch_with_max_forwards_less_one_record_route_and_timer_c()
    {
        let svc = service();
        let now = Instant::now();
        let server = TxKey::server(&invite(), None).unwrap();
        let fwd = Forwarded::new(
            invite(),
            peer("192.0.2.7:5060"),
            vec![vec![hop("192.0.2.21:5060"), hop("192.0.2.22:5060")]],
            true,
            "lh".into(),
            None,
        );
        let actions = svc.forward(&server, fwd);
        assert_eq!(actions.len(), 2, "{actions:?}");
        let ProxyAction::Route {
            branch, ref hop, ..
        } = actions[1]
        else {
            panic!("{actions:?}");
        };
        assert_eq!(branch, 1);
        let p = peer("192.0.2.22:5060");
        let sent = svc.send_branch(&server, branch, hop, p);
        let [ProxyAction::SendBranch {
            request,
            peer: to,
            loop_hash,
            ..
        }] = &sent[..]
        else {
            panic!("{sent:?}");
        };
        assert_eq!(*to, p);
        assert_eq!(loop_hash, "lh");
        assert_eq!(request.uri.to_string(), "sip:1002@192.0.2.22:5060");
        assert_eq!(request.max_forwards().unwrap(), Some(69));
        assert!(request.headers.has(HeaderName::RecordRoute));
        assert_eq!(
            request.headers.list(HeaderName::Via).len(),
            1,
            "our Via goes on when the socket is known"
        );
        let timers = svc.branch_sent(&server, branch, client_key(1), p, now);
        assert!(matches!(
            timers[..],
            [ProxyAction::TimerSet { timer: BranchTimer::C, at, .. }] if at == now + TIMER_C
        ));
        assert_eq!(svc.next_timer(), Some(now + TIMER_C));
    }

    #[test]
    fn rfc3261_16_6_a_target_we_cannot_send_to_fails_its_branch_with_404() {
        let svc = service();
        let server = TxKey::server(&invite(), None).unwrap();
        let tel = Hop {
            uri: Uri::parse("tel:+15551234").unwrap(),
            route: vec![],
            flow: None,
        };
        let fwd = Forwarded::new(
            invite(),
            peer("192.0.2.7:5060"),
            vec![vec![tel]],
            true,
            "lh".into(),
            None,
        );
        let actions = svc.forward(&server, fwd);
        assert!(
            matches!(
                actions[..],
                [ProxyAction::FailBranch {
                    branch: 0,
                    status: 404,
                    ..
                }]
            ),
            "{actions:?}"
        );
        let answer = svc.fail_branch(
            &server,
            0,
            404,
            "Not Found",
            "t",
            Instant::now(),
            T0,
            &mut |_| {},
        );
        assert_eq!(responded(&answer), vec![404]);
    }

    #[test]
    fn rfc3261_16_7_a_2xx_goes_upstream_at_once_and_the_other_branches_are_cancelled() {
        let (svc, now, server) = forked_to_two();
        let (ringing, published) = on_response_published(&svc, &server, 1, response(180, "b"), now);
        assert_eq!(responded(&ringing), vec![180]);
        assert_eq!(published, vec![DialogState::Early], "the lamps ring");
        let answered = on_response(&svc, &server, 0, response(200, "a"), now);
        assert_eq!(responded(&answered), vec![200], "{answered:?}");
        let c = cancelled(&answered);
        assert!(c == [client_key(1)], "{answered:?}");
        // Another fork's 2xx still goes on (RFC 6026); a late 487 does not.
        assert_eq!(
            responded(&on_response(&svc, &server, 1, response(487, "b"), now)),
            Vec::<u16>::new()
        );
        assert_eq!(
            responded(&on_response(&svc, &server, 0, response(200, "a"), now)),
            vec![200]
        );
    }

    #[test]
    fn rfc3261_16_7_a_6xx_cancels_the_others_and_is_the_answer() {
        let (svc, now, server) = forked_to_two();
        on_response(&svc, &server, 0, response(180, "a"), now);
        let declined = on_response(&svc, &server, 1, response(603, "b"), now);
        assert_eq!(responded(&declined), Vec::<u16>::new(), "{declined:?}");
        let c = cancelled(&declined);
        assert!(c == [client_key(0)], "{declined:?}");
        let (done, published) = on_response_published(&svc, &server, 0, response(487, "a"), now);
        assert_eq!(responded(&done), vec![603]);
        assert_eq!(
            published.last(),
            Some(&DialogState::Terminated),
            "the call failed, after the 487 was heard: {published:?}"
        );
    }

    #[test]
    fn rfc3261_16_7_the_best_response_waits_for_every_branch_and_503_goes_as_500() {
        let (svc, now, server) = forked_to_two();
        assert!(responded(&on_response(&svc, &server, 0, response(503, "a"), now)).is_empty());
        let done = on_response(&svc, &server, 1, response(486, "b"), now);
        assert_eq!(responded(&done), vec![486]);

        let svc = service();
        let server = forked(&svc, &["192.0.2.21:5060"], now);
        let done = on_response(&svc, &server, 0, response(503, "a"), now);
        assert_eq!(responded(&done), vec![500]);
        assert_eq!(svc.next_timer(), None, "a final response stops Timer C");
    }

    #[test]
    fn rfc3261_16_8_timer_c_cancels_a_ringing_branch_then_it_counts_as_408() {
        let svc = service();
        let t0 = Instant::now();
        let server = forked(&svc, &["192.0.2.21:5060"], t0);
        let t1 = t0 + Duration::from_secs(10);
        on_response(&svc, &server, 0, response(180, "a"), t1);
        assert_eq!(
            svc.next_timer(),
            Some(t1 + TIMER_C),
            "a provisional restarts Timer C"
        );
        assert!(svc.on_timers(t0 + TIMER_C).is_empty());
        let fired = svc.on_timers(t1 + TIMER_C);
        let c = cancelled(&fired);
        assert!(c == [client_key(0)], "{fired:?}");
        let after = t1 + TIMER_C + AFTER_CANCEL;
        assert_eq!(svc.next_timer(), Some(after));
        let gave_up = svc.on_timers(after);
        assert!(
            matches!(
                gave_up[..],
                [
                    ProxyAction::TerminateClient(_),
                    ProxyAction::FailBranch { status: 408, .. }
                ]
            ),
            "{gave_up:?}"
        );
        let answer = svc.fail_branch(
            &server,
            0,
            408,
            "Request Timeout",
            "t",
            after,
            T0,
            &mut |_| {},
        );
        assert_eq!(responded(&answer), vec![408]);
    }

    #[test]
    fn rfc3261_9_2_16_10_a_cancel_from_another_flow_than_the_invites_matches_nothing() {
        let (svc, now, server) = forked_to_two();
        on_response(&svc, &server, 0, response(180, "a"), now);
        for other in ["192.0.2.66:5060", "192.0.2.7:5062"] {
            let from = Flow::of(&peer(other));
            assert!(
                svc.on_cancel(&server, from, now, T0 + 1, &mut |_| {})
                    .is_none(),
                "a CANCEL from {other} is answered 481"
            );
        }
        let tcp = Flow {
            proto: Proto::Tcp,
            ..Flow::of(&peer("192.0.2.7:5060"))
        };
        assert!(svc
            .on_cancel(&server, tcp, now, T0 + 1, &mut |_| {})
            .is_none());
        let (actions, _) = on_cancel(&svc, &server, now).expect("the caller's CANCEL");
        assert_eq!(cancelled(&actions), [client_key(0)]);
    }

    #[test]
    fn rfc3261_9_1_16_10_cancel_waits_for_a_provisional_before_cancelling_a_branch() {
        let (svc, now, server) = forked_to_two();
        on_response(&svc, &server, 0, response(180, "a"), now);
        let (actions, published) = on_cancel(&svc, &server, now).expect("an INVITE we forward");
        assert_eq!(
            published,
            vec![DialogState::Terminated],
            "the lamps go dark"
        );
        let c = cancelled(&actions);
        assert!(c == [client_key(0)], "only the ringing branch: {actions:?}");
        // The silent branch is cancelled on its first provisional (§9.1).
        let ringing = on_response(&svc, &server, 1, response(180, "b"), now);
        let c = cancelled(&ringing);
        assert!(c == [client_key(1)], "{ringing:?}");
        on_response(&svc, &server, 0, response(487, "a"), now);
        let done = on_response(&svc, &server, 1, response(487, "b"), now);
        assert_eq!(responded(&done), vec![487]);
        let other = TxKey::server(&response_request(), None).unwrap();
        assert!(on_cancel(&svc, &other, now).is_none(), "no such INVITE");
    }

    fn response_request() -> Request {
        let mut r = invite();
        r.headers.set(
            HeaderName::Via,
            "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKother",
        );
        r
    }

    #[test]
    fn rfc3261_16_7_a_2xx_after_the_context_is_gone_goes_statelessly() {
        let svc = service();
        let now = Instant::now();
        let server = forked(&svc, &["192.0.2.21:5060"], now);
        svc.forget(&server);
        assert_eq!(svc.next_timer(), None);
        assert!(matches!(
            on_response(&svc, &server, 0, response(200, "a"), now)[..],
            [ProxyAction::ForwardStateless(_)]
        ));
        assert!(on_response(&svc, &server, 0, response(486, "a"), now).is_empty());
    }
}
