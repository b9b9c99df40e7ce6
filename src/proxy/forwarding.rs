//! The proxy service's stateful forwarding (RFC 3261 §16.6–§16.10), pure: every input (a
//! request to forward, a branch sent, a response on a branch, a branch that failed, a CANCEL,
//! the clock) changes the response contexts and their timers and returns the
//! [`ProxyAction`]s the server core carries out in order (see `Core::run_proxy_actions`).
//! Nothing here touches a socket, a client transaction or the clock.

use super::context::{BranchState, Context, Step};
use super::service::{NextHop, ProxyService};
use super::{forwarded_request, lock, next_hop_uri, uri_addr, Hop};
use crate::deadline::Deadlines;
use crate::dialog::{CallKey, Flow};
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
    /// A call the dialog tracker follows changed: apply it and publish the call's lamps.
    Track(CallChange),
}

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
    },
    /// Its INVITE got this final non-2xx answer upstream.
    Failed { call: CallKey, status: u16 },
    /// The caller cancelled.
    Cancelled { call: CallKey },
}

impl CallChange {
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
        let mut fw = lock(&self.forwarding);
        fw.contexts.insert(server.clone(), fwd);
        start_group(&mut fw, server)
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
        let fw = lock(&self.forwarding);
        let Some(f) = fw.contexts.get(server) else {
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
        let mut fw = lock(&self.forwarding);
        let Forwarding { contexts, timers } = &mut *fw;
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
    pub fn fail_branch(
        &self,
        server: &TxKey,
        branch: usize,
        status: u16,
        reason: &str,
        tag: &str,
        now: Instant,
    ) -> Vec<ProxyAction> {
        let mut fw = lock(&self.forwarding);
        let Some(f) = fw.contexts.get_mut(server) else {
            return Vec::new();
        };
        let synthetic = f.request.response(status, reason, Some(tag));
        let steps = f.ctx.on_timeout(branch, synthetic);
        apply_steps(&mut fw, server, steps, now)
    }

    /// A response on branch `branch` of `server`, our Via removed (§16.7).
    pub fn on_response(
        &self,
        server: &TxKey,
        branch: usize,
        resp: Response,
        now: Instant,
    ) -> Vec<ProxyAction> {
        let mut fw = lock(&self.forwarding);
        let Forwarding { contexts, timers } = &mut *fw;
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
            actions.push(ProxyAction::Track(CallChange::response(call, &resp, flow)));
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
        actions.extend(apply_steps(&mut fw, server, steps, now));
        actions
    }

    /// CANCEL from upstream for the INVITE of server transaction `invite` (§16.10): every
    /// pending branch is cancelled, no new ones start. `None` when we forward no such INVITE.
    pub fn on_cancel(&self, invite: &TxKey, now: Instant) -> Option<Vec<ProxyAction>> {
        let mut fw = lock(&self.forwarding);
        let f = fw.contexts.get_mut(invite)?;
        let steps = f.ctx.cancel();
        let mut actions = Vec::new();
        if let Some(call) = f.call.clone() {
            actions.push(ProxyAction::Track(CallChange::Cancelled { call }));
        }
        actions.extend(apply_steps(&mut fw, invite, steps, now));
        Some(actions)
    }

    /// Timer C (a branch that rings too long is cancelled) and the wait after a CANCEL (the
    /// branch counts as 408).
    pub fn on_timers(&self, now: Instant) -> Vec<ProxyAction> {
        let mut fw = lock(&self.forwarding);
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
                        actions.extend(cancel_branch(&mut fw, &key, i, now));
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
        let mut fw = lock(&self.forwarding);
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

/// What the response context decided, as actions.
fn apply_steps(
    fw: &mut Forwarding,
    server: &TxKey,
    steps: Vec<Step>,
    now: Instant,
) -> Vec<ProxyAction> {
    let mut actions = Vec::new();
    for step in steps {
        match step {
            Step::Forward(response) => {
                if response.status >= 300 {
                    let call = fw.contexts.get(server).and_then(|f| f.call.clone());
                    if let Some(call) = call {
                        actions.push(ProxyAction::Track(CallChange::Failed {
                            call,
                            status: response.status,
                        }));
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
