//! The proxy inside the server core: a request the proxy owns gets a response context, one
//! client transaction per branch, Timer C per INVITE branch; responses come back through the
//! request's server transaction; CANCEL cancels the pending branches; an ACK for a 2xx and
//! stray 2xx retransmissions are forwarded statelessly (RFC 3261 §16.7, §16.10, §16.11).

use super::context::{BranchState, Context, Step};
use super::lock;
use super::service::{AckStep, NextHop};
use super::{branch_request, next_hop_uri, response_addr, strip_top_via, uri_addr, Hop, Targets};
use crate::auth::AuthResult;
use crate::deadline::Deadlines;
use crate::dialog::{CallKey, Flow, InviteInfo, Party, Update};
use crate::server::{Core, Owner};
use crate::sip::message::Parsed;
use crate::sip::{HasHeaders, HeaderName, Request, Response, SipUri};
use crate::transaction::TxKey;
use crate::transport::Peer;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cancelled branch may take to send its final response before the proxy treats
/// it as finished (RFC 3261 §16.10: 64*T1).
const AFTER_CANCEL: Duration = Duration::from_secs(32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BranchTimer {
    /// RFC 3261 §16.6 item 11.
    C,
    /// No final response after our CANCEL.
    AfterCancel,
}

/// Every request the proxy is forwarding statefully.
#[derive(Default)]
pub(crate) struct Forwarding {
    contexts: HashMap<TxKey, Forwarded>,
    pub(crate) timers: Deadlines<(TxKey, usize, BranchTimer)>,
}

impl Forwarding {
    /// Response contexts held.
    pub(crate) fn len(&self) -> usize {
        self.contexts.len()
    }
}

struct Forwarded {
    ctx: Context,
    /// The request as it arrived (our stamps on its Via) after route preprocessing.
    request: Request,
    inbound: Peer,
    groups: VecDeque<Vec<Hop>>,
    /// Client transaction and destination per branch (`None` while a host name resolves).
    branches: Vec<Option<(TxKey, Peer)>>,
    record_route: bool,
    loop_hash: String,
    /// The call this INVITE started, when the dialog tracker follows it.
    call: Option<CallKey>,
}

impl Core {
    /// Answers a request the proxy refuses: the error's status and reason, and for 420 the
    /// Unsupported header naming what it does not support.
    fn proxy_reject(self: &Arc<Self>, key: &TxKey, req: &Request, e: &super::ProxyError) {
        let mut r = req.response(e.status(), &e.to_string(), Some(&self.ids.tag()));
        if let super::ProxyError::BadExtension(tags) = e {
            r.headers.push(HeaderName::Unsupported, tags.join(", "));
        }
        self.respond(key, r);
    }

    /// RFC 3261 §16.3–§16.6 for a new request the proxy owns.
    pub(crate) fn proxy_request(
        self: &Arc<Self>,
        key: TxKey,
        mut req: Request,
        parsed: &Parsed,
        peer: Peer,
    ) {
        let invite = req.method == "INVITE";
        if invite {
            // §16.2 / §16.7: a stateful proxy answers 100 at once so the caller stops
            // retransmitting.
            self.respond(&key, req.response(100, "Trying", None));
        }
        let loop_hash = match self.proxy.validate(&req) {
            Ok(h) => h,
            Err(e) => return self.proxy_reject(&key, &req, &e),
        };
        let in_dialog = parsed.to.tag().is_some();
        if self.proxy.needs_credentials(&req, in_dialog) {
            if let Err(resp) = self.proxy_authenticate(&mut req, parsed, peer) {
                return self.respond(&key, resp);
            }
        }
        if let Err(e) = self.proxy.preprocess(&mut req, in_dialog) {
            return self.proxy_reject(&key, &req, &e);
        }
        let upstream = self.upstream_peer();
        let from_upstream = upstream.is_some_and(|u| u.remote.ip() == peer.remote.ip());
        // Who the Request-URI names matters only for a request routed by it (not in a
        // dialog, no Route left): BYEs and re-INVITEs skip the binding and user lookups.
        let by_request_uri = !in_dialog && !req.headers.has(HeaderName::Route);
        let bindings = match self.proxy.rules.local_aor(&req.uri) {
            Some(aor) if by_request_uri => self.registrar.lookup(&aor),
            _ => Vec::new(),
        };
        let known = by_request_uri
            && bindings.is_empty()
            && req
                .uri
                .as_sip()
                .and_then(|u| u.user.as_deref())
                .is_some_and(|u| self.auth.knows(&crate::sip::text::unescape(u)));
        let targets =
            match self
                .proxy
                .rules
                .targets(&req, in_dialog, &bindings, known, from_upstream)
            {
                Ok(t) => t,
                Err(e) => return self.proxy_reject(&key, &req, &e),
            };
        let groups: Vec<Vec<Hop>> = match targets {
            Targets::Groups(g) => g,
            Targets::Upstream => vec![vec![Hop {
                uri: req.uri.clone(),
                route: vec![],
                flow: upstream.as_ref().map(Flow::of),
            }]],
            // In-dialog without another proxy's Route: the other party's flow, as the call
            // came in (NAT, TCP); else by Route or Request-URI.
            Targets::Onward => vec![vec![Hop {
                uri: req.uri.clone(),
                route: vec![],
                flow: if in_dialog && !req.headers.has(HeaderName::Route) {
                    self.flow_for(&req).as_ref().map(Flow::of)
                } else {
                    None
                },
            }]],
        };
        let record_route = !in_dialog
            && matches!(
                req.method.as_str(),
                "INVITE" | "SUBSCRIBE" | "REFER" | "NOTIFY"
            );
        let call = if invite && !in_dialog {
            self.track_invite(&req, parsed, &peer)
        } else {
            self.track_in_dialog(&req, parsed);
            None
        };
        let fwd = Forwarded {
            ctx: Context::new(invite, groups.len().saturating_sub(1)),
            request: req,
            inbound: peer,
            groups: groups.into(),
            branches: Vec::new(),
            record_route,
            loop_hash,
            call,
        };
        lock(&self.proxy.forwarding)
            .contexts
            .insert(key.clone(), fwd);
        self.start_group(&key);
    }

    /// Digest for calls from phones (RFC 3261 §22.3: 407 with Proxy-Authenticate); trusted
    /// sources (the PBX) and open mode pass. The caller must call as itself.
    fn proxy_authenticate(
        &self,
        req: &mut Request,
        parsed: &Parsed,
        peer: Peer,
    ) -> Result<(), Response> {
        let tag = self.ids.tag();
        let now = self.clock.now_unix();
        let challenged = parsed.from.uri.as_sip().and_then(|u| u.user.as_deref());
        match self
            .auth
            .check(req, HeaderName::ProxyAuthorization, peer.remote.ip(), now)
        {
            AuthResult::Skipped => Ok(()),
            AuthResult::Authenticated { username } => {
                let from_user = challenged.map(|u| crate::sip::text::unescape(u).into_owned());
                if from_user.as_deref() != Some(username.as_str()) {
                    let e = super::ProxyError::WrongIdentity;
                    return Err(req.response(e.status(), &e.to_string(), Some(&tag)));
                }
                // Our credentials end here (RFC 3261 §22.3: the proxy that consumes them
                // removes them); others' go on.
                let realm = self.auth.realm().to_string();
                req.headers.0.retain(|h| {
                    h.kind != HeaderName::ProxyAuthorization
                        || crate::sip::digest::parse_credentials(&h.value)
                            .map(|c| c.realm != realm)
                            .unwrap_or(true)
                });
                Ok(())
            }
            AuthResult::Challenge { stale } => {
                let mut r = req.response(407, "Proxy Authentication Required", Some(&tag));
                for c in self.auth.challenges(stale, now, challenged) {
                    r.headers.push(HeaderName::ProxyAuthenticate, c);
                }
                Err(r)
            }
            AuthResult::Forbidden(reason) => Err(req.response(403, reason, Some(&tag))),
            AuthResult::BadRequest(reason) => Err(req.response(400, &reason, Some(&tag))),
        }
    }

    /// The PBX's address, when `[proxy] upstream` names an IP address or a name resolved at
    /// start.
    pub(crate) fn upstream_peer(&self) -> Option<Peer> {
        let u = self.proxy.rules.upstream.as_ref()?;
        if let Some((proto, addr)) = uri_addr(u) {
            return Some(self.peer_to(proto, addr));
        }
        self.proxy.upstream_resolved()
    }

    /// Where a hop goes: its flow, else its first Route, else the request's Route or
    /// Request-URI. `Err(uri)` when that names a host that must be resolved first.
    fn hop_peer(&self, request: &Request, hop: &Hop) -> Result<Peer, Option<Box<SipUri>>> {
        if let Some(f) = hop.flow {
            return Ok(self.peer_to(f.proto, f.remote));
        }
        let uri = match hop.route.first() {
            Some(r) => match crate::sip::NameAddr::parse(r).ok().map(|n| n.uri) {
                Some(crate::sip::Uri::Sip(u)) => u,
                _ => return Err(None),
            },
            // The request's own Route (another proxy after us), else the hop's Request-URI.
            None => match request.headers.list(HeaderName::Route).first() {
                Some(_) => next_hop_uri(request).map_err(|_| None)?,
                None => match &hop.uri {
                    crate::sip::Uri::Sip(u) => u.clone(),
                    _ => return Err(None),
                },
            },
        };
        match uri_addr(&uri) {
            Some((proto, addr)) => Ok(self.peer_to(proto, addr)),
            None => Err(Some(Box::new(uri))),
        }
    }

    /// Starts the branches of the next q group.
    fn start_group(self: &Arc<Self>, key: &TxKey) {
        let mut pending = Vec::new();
        let mut failed = Vec::new();
        {
            let mut fw = lock(&self.proxy.forwarding);
            let Some(f) = fw.contexts.get_mut(key) else {
                return;
            };
            let Some(group) = f.groups.pop_front() else {
                return;
            };
            for hop in group {
                let i = f.ctx.add_branch();
                f.branches.push(None);
                match self.hop_peer(&f.request, &hop) {
                    Ok(peer) => pending.push((i, hop, peer)),
                    Err(Some(uri)) => {
                        let me = self.clone();
                        let key = key.clone();
                        tokio::spawn(async move {
                            match me.resolve(&uri).await {
                                Some(peer) => me.send_branch(&key, i, hop, peer),
                                None => me.fail_branch(
                                    &key,
                                    i,
                                    503,
                                    "Service Unavailable: cannot resolve the next hop",
                                ),
                            }
                        });
                    }
                    Err(None) => failed.push(i),
                }
            }
        }
        for (i, hop, peer) in pending {
            self.send_branch(key, i, hop, peer);
        }
        for i in failed {
            self.fail_branch(key, i, 404, "Not Found: no route for this request");
        }
    }

    /// Sends branch `i` of `key` to `peer` through a new client transaction.
    fn send_branch(self: &Arc<Self>, key: &TxKey, i: usize, hop: Hop, peer: Peer) {
        if !self.transport.reaches(&peer) {
            // RFC 3261 §16.9 counts a transport error as a 503 from that branch; we answer it
            // as 480 instead: the phone is not reachable now (its TCP connection closed and we
            // cannot open one to it), and a 503 would reach the caller as 500.
            return self.fail_branch(
                key,
                i,
                480,
                "Temporarily Unavailable: the phone's connection is closed",
            );
        }
        let now = tokio::time::Instant::now().into_std();
        let sent = {
            let mut fw = lock(&self.proxy.forwarding);
            let Some(f) = fw.contexts.get_mut(key) else {
                return;
            };
            let via = super::branch::via(
                peer.proto,
                &self.advertised(peer.local),
                &super::branch::forwarded(
                    &self.branch_key,
                    &f.loop_hash,
                    self.ids.next(),
                    &super::branch::back_hop(f.request.top_via().ok().as_ref()),
                ),
            );
            let rr = if f.record_route {
                let ftag = f.request.from_hdr().ok().and_then(|h| h.tag());
                self.proxy
                    .rules
                    .record_route(&f.inbound, &peer, ftag.as_deref())
            } else {
                Vec::new()
            };
            let out = branch_request(&f.request, Some(&hop), via, &rr);
            let invite = f.ctx.invite;
            let result = {
                let mut c = lock(&self.clients);
                c.send(out, peer, peer.proto.reliable(), now)
            };
            match result {
                Ok((ckey, actions)) => {
                    lock(&self.owners).insert(
                        ckey.clone(),
                        Owner::Branch {
                            server: key.clone(),
                            branch: i,
                        },
                    );
                    f.branches[i] = Some((ckey, peer));
                    if invite {
                        let c = Duration::from_secs(self.proxy.rules.cfg.timer_c);
                        fw.timers
                            .schedule((key.clone(), i, BranchTimer::C), now + c);
                    }
                    Ok(actions)
                }
                Err(e) => Err(e),
            }
        };
        match sent {
            Ok(actions) => self.run_actions(actions),
            Err(e) => {
                tracing::warn!(error = %e, "branch not sent");
                self.fail_branch(key, i, 503, "Service Unavailable: too many transactions");
            }
        }
    }

    /// Branch `i` ended without a response from the next hop: it counts as this status.
    fn fail_branch(self: &Arc<Self>, key: &TxKey, i: usize, status: u16, reason: &str) {
        let steps = {
            let mut fw = lock(&self.proxy.forwarding);
            let Some(f) = fw.contexts.get_mut(key) else {
                return;
            };
            let synthetic = f.request.response(status, reason, Some(&self.ids.tag()));
            f.ctx.on_timeout(i, synthetic)
        };
        self.apply_steps(key, steps);
    }

    /// A response on a branch (RFC 3261 §16.7).
    pub(crate) fn proxy_response(self: &Arc<Self>, server: TxKey, i: usize, mut resp: Response) {
        strip_top_via(&mut resp);
        self.proxy.note_answered(&resp, self.clock.now_unix_ms());
        let now = tokio::time::Instant::now().into_std();
        let steps = {
            let mut fw = lock(&self.proxy.forwarding);
            let Forwarding { contexts, timers } = &mut *fw;
            let Some(f) = contexts.get_mut(&server) else {
                drop(fw);
                // The context is gone (after Timer L): a 2xx still goes upstream.
                if (200..300).contains(&resp.status) {
                    self.forward_stateless(resp);
                }
                return;
            };
            if let Some(call) = &f.call {
                let flow = f
                    .branches
                    .get(i)
                    .cloned()
                    .flatten()
                    .map(|(_, p)| Flow::of(&p));
                self.track_response(call, &resp, flow);
            }
            if f.ctx.invite {
                if (101..200).contains(&resp.status) {
                    let c = Duration::from_secs(self.proxy.rules.cfg.timer_c);
                    timers.schedule((server.clone(), i, BranchTimer::C), now + c);
                } else if resp.status >= 200 {
                    timers.cancel(&(server.clone(), i, BranchTimer::C));
                    timers.cancel(&(server.clone(), i, BranchTimer::AfterCancel));
                }
            }
            f.ctx.on_response(i, resp)
        };
        self.apply_steps(&server, steps);
    }

    fn apply_steps(self: &Arc<Self>, key: &TxKey, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Forward(resp) => {
                    if resp.status >= 300 {
                        let call = lock(&self.proxy.forwarding)
                            .contexts
                            .get(key)
                            .and_then(|f| f.call.clone());
                        if let Some(call) = call {
                            let now = self.clock.now_unix_ms();
                            let u = lock(&self.proxy.dialogs).failed(&call, resp.status, now);
                            self.publish_calls(u);
                        }
                    }
                    self.forward_response(key, resp)
                }
                Step::Cancel(i) => self.cancel_branch(key, i),
                Step::NextGroup => self.start_group(key),
            }
        }
    }

    /// A response goes upstream through the request's server transaction, untouched (no
    /// Server header of ours); a 2xx whose transaction is gone goes statelessly.
    fn forward_response(self: &Arc<Self>, key: &TxKey, resp: Response) {
        let actions = {
            let mut tx = lock(&self.transactions);
            tx.respond(key, &resp, tokio::time::Instant::now().into_std())
        };
        match actions {
            Ok(a) => self.run_actions(a),
            Err(e) => {
                if (200..300).contains(&resp.status) {
                    self.forward_stateless(resp);
                } else {
                    tracing::debug!(error = %e, status = resp.status, "response not forwarded");
                }
            }
        }
    }

    /// Sends a CANCEL for branch `i` (§16.10) as its own client transaction.
    fn cancel_branch(self: &Arc<Self>, key: &TxKey, i: usize) {
        let now = tokio::time::Instant::now().into_std();
        let target = {
            let fw = lock(&self.proxy.forwarding);
            fw.contexts
                .get(key)
                .and_then(|f| f.branches.get(i).cloned().flatten())
        };
        let Some((ckey, peer)) = target else {
            return;
        };
        let cancel = lock(&self.clients).cancel_request(&ckey);
        let Some(cancel) = cancel else {
            return;
        };
        let sent = {
            let mut c = lock(&self.clients);
            c.send(cancel, peer, peer.proto.reliable(), now)
        };
        match sent {
            Ok((k, actions)) => {
                lock(&self.owners).insert(k, Owner::Cancel);
                self.run_actions(actions);
            }
            Err(e) => tracing::debug!(error = %e, "CANCEL not sent"),
        }
        lock(&self.proxy.forwarding).timers.schedule(
            (key.clone(), i, BranchTimer::AfterCancel),
            now + AFTER_CANCEL,
        );
        self.timers_changed.notify_one();
    }

    /// CANCEL from upstream (RFC 3261 §16.10): 200 for the CANCEL, then every pending branch of
    /// the INVITE it matches is cancelled; their 487 goes upstream as the INVITE's answer.
    pub(crate) fn proxy_cancel(self: &Arc<Self>, key: TxKey, req: &Request) {
        let invite = lock(&self.transactions).find_invite_for_cancel(req);
        let steps = invite.as_ref().and_then(|k| {
            let mut fw = lock(&self.proxy.forwarding);
            fw.contexts.get_mut(k).map(|f| f.ctx.cancel())
        });
        match (invite, steps) {
            (Some(k), Some(steps)) => {
                self.respond(&key, req.response(200, "OK", Some(&self.ids.tag())));
                let call = lock(&self.proxy.forwarding)
                    .contexts
                    .get(&k)
                    .and_then(|f| f.call.clone());
                if let Some(call) = call {
                    let now = self.clock.now_unix_ms();
                    let mut dialogs = lock(&self.proxy.dialogs);
                    let u = dialogs.cancel(&call, now);
                    self.publish_calls_locked(u);
                }
                self.apply_steps(&k, steps);
            }
            _ => self.proxy_reject(&key, req, &super::ProxyError::NoSuchDialog),
        }
    }

    /// An ACK that no transaction of ours absorbed: the end-to-end ACK for a 2xx (§16.11),
    /// forwarded statelessly by its Route or Request-URI. Retransmissions get the same branch.
    pub(crate) fn proxy_ack(self: &Arc<Self>, req: Request, peer: Peer) {
        let (ack, next) = match self.proxy.on_stray_ack(req, self.clock.now_unix_ms()) {
            AckStep::Drop(why) => {
                tracing::debug!(%peer, why, "stray ACK dropped");
                return;
            }
            AckStep::Relay { ack, to } => (*ack, to),
        };
        let send = move |me: &Arc<Core>, to: Peer, req: Request| {
            let top = req
                .top_via()
                .ok()
                .and_then(|v| v.branch())
                .unwrap_or_default();
            let via = super::branch::via(
                to.proto,
                &me.advertised(to.local),
                &super::branch::relayed_ack(&me.branch_key, &me.proxy.rules.loop_hash(&req), &top),
            );
            let out = branch_request(&req, None, via, &[]);
            me.send_now(&to, out.to_shared());
        };
        match next {
            NextHop::Flow(f) => send(self, self.peer_to(f.proto, f.remote), ack),
            NextHop::Addr(proto, addr) => send(self, self.peer_to(proto, addr), ack),
            NextHop::Resolve(uri) => {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Some(to) = me.resolve(&uri).await {
                        send(&me, to, ack);
                    }
                });
            }
        }
    }

    /// For an in-dialog request of a tracked call: where the party it goes to is reached.
    fn flow_for(&self, req: &Request) -> Option<Peer> {
        let flow = self.proxy.flow_towards(req)?;
        Some(self.peer_to(flow.proto, flow.remote))
    }

    /// A new call: the dialog tracker follows it and its lamps light (`trying`).
    fn track_invite(&self, req: &Request, parsed: &Parsed, peer: &Peer) -> Option<CallKey> {
        let from_tag = parsed.from.tag()?;
        let key = CallKey {
            call_id: req.call_id().ok()?.to_string(),
            from_tag,
        };
        let callee_aor = self
            .proxy
            .rules
            .local_aor(&req.uri)
            .or_else(|| self.proxy.rules.local_aor(&parsed.to.uri));
        let info = InviteInfo {
            caller: Party {
                uri: parsed.from.uri.to_string(),
                display: parsed.from.display.clone().filter(|d| !d.is_empty()),
                aor: self.proxy.rules.local_aor(&parsed.from.uri),
                target: parsed.contacts.first().and_then(|c| match c {
                    crate::sip::header::ContactValue::Addr(a) => Some(a.uri.to_string()),
                    _ => None,
                }),
            },
            callee: Party {
                uri: parsed.to.uri.to_string(),
                display: parsed.to.display.clone().filter(|d| !d.is_empty()),
                aor: callee_aor,
                target: None,
            },
            request_uri: req.uri.to_string(),
            caller_flow: Flow::of(peer),
            cseq: parsed.cseq.seq,
        };
        let now = self.clock.now_unix_ms();
        let mut dialogs = lock(&self.proxy.dialogs);
        let u = dialogs.invite(key.clone(), info, now);
        self.publish_calls_locked(u);
        Some(key)
    }

    /// In-dialog requests the tracker cares about: BYE ends the dialog at once (the lamp goes
    /// dark on the BYE, not on its answer), a re-INVITE or UPDATE with SDP may hold or resume.
    fn track_in_dialog(&self, req: &Request, parsed: &Parsed) {
        let (Some(from), Some(to), Ok(call_id)) =
            (parsed.from.tag(), parsed.to.tag(), req.call_id())
        else {
            return;
        };
        let now = self.clock.now_unix_ms();
        let mut dialogs = lock(&self.proxy.dialogs);
        let u = match req.method.as_str() {
            "BYE" => dialogs.bye(call_id, &from, &to, now),
            "INVITE" | "UPDATE" if !req.body.is_empty() => {
                dialogs.reinvite(call_id, &from, &to, &req.body, now)
            }
            _ => None,
        };
        if let Some(w) = dialogs.note_cseq(call_id, &from, &to, parsed.cseq.seq) {
            drop(self.proxy.dialog_store.apply_call(w));
        }
        self.publish_calls_locked(u);
    }

    /// A response to a tracked INVITE as it passes (our Via already removed).
    fn track_response(&self, call: &CallKey, resp: &Response, flow: Option<Flow>) {
        let to_tag = resp.to_hdr().ok().and_then(|t| t.tag());
        let contact = resp
            .contacts()
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|c| match c {
                crate::sip::header::ContactValue::Addr(a) => Some(a.uri.to_string()),
                _ => None,
            });
        let now = self.clock.now_unix_ms();
        let mut dialogs = lock(&self.proxy.dialogs);
        let u = dialogs.response(
            call,
            to_tag.as_deref(),
            resp.status,
            contact.as_deref(),
            flow,
            now,
        );
        self.publish_calls_locked(u);
    }

    /// Ends calls past their lifetime (no BYE within `dialog.max_lifetime`, or ringing past
    /// `dialog.early_timeout`): their lamps go dark.
    pub(crate) async fn run_dialog_timers(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.clock.now_unix_ms();
            let mut dialogs = lock(&self.proxy.dialogs);
            if dialogs.next_deadline().is_some_and(|d| d <= now) {
                let ups = dialogs.expire(now);
                self.publish_calls_locked(ups);
            }
        }
    }

    /// After a restart: stored calls come back; those that cannot still be alive are
    /// published terminated (lamps dark). Returns the calls to probe.
    pub(crate) fn restore_calls(&self) -> Result<usize, crate::storage::StorageError> {
        let calls = self.proxy.dialog_store.load_calls()?;
        let n = calls.len();
        let now = self.clock.now_unix_ms();
        let mut dialogs = lock(&self.proxy.dialogs);
        let ups = dialogs.restore(calls, now);
        let ended = ups.len();
        self.publish_calls_locked(ups);
        tracing::info!(calls = n, ended, "calls restored");
        Ok(n - ended)
    }

    /// Asks both parties of every answered call whether it still exists (an in-dialog OPTIONS,
    /// as Kamailio's dialog keepalive does): a call hung up while we were down (its BYE could
    /// not pass) gets 481 or no answer, and its lamps go dark. Any other answer (200, 500 for
    /// an old CSeq, 405...) means the dialog is alive.
    pub(crate) fn probe_calls(self: &Arc<Self>) {
        let calls = lock(&self.proxy.dialogs).confirmed();
        for call in calls {
            let Some(winner) = call.winner().cloned() else {
                continue;
            };
            let key = call.key.clone();
            let caller_id = match &call.caller.display {
                Some(d) => format!("\"{d}\" <{}>", call.caller.uri),
                None => format!("<{}>", call.caller.uri),
            };
            let callee_id = format!("<{}>", call.callee.uri);
            // (target, flow, From (the other side, with its tag), To (this side, its tag), CSeq)
            let legs = [
                (
                    call.caller.target.clone(),
                    Some(call.caller_flow),
                    format!("{callee_id};tag={}", winner.to_tag),
                    format!("{caller_id};tag={}", key.from_tag),
                    winner.callee_cseq.unwrap_or(1),
                ),
                (
                    winner.target.clone(),
                    winner.flow,
                    format!("{caller_id};tag={}", key.from_tag),
                    format!("{callee_id};tag={}", winner.to_tag),
                    call.caller_cseq,
                ),
            ];
            for (target, flow, from, to, cseq) in legs {
                let (Some(target), Some(flow)) = (target, flow) else {
                    continue;
                };
                let Ok(uri) = crate::sip::Uri::parse(&target) else {
                    continue;
                };
                let peer = self.peer_to(flow.proto, flow.remote);
                let mut req = Request {
                    method: "OPTIONS".into(),
                    uri,
                    headers: crate::sip::Headers::new(),
                    body: Vec::new(),
                };
                req.headers.push(HeaderName::Via, self.via_for(&peer));
                req.headers.push(HeaderName::MaxForwards, "70");
                req.headers.push(HeaderName::From, from);
                req.headers.push(HeaderName::To, to);
                req.headers.push(HeaderName::CallId, key.call_id.clone());
                req.headers
                    .push(HeaderName::CSeq, format!("{cseq} OPTIONS"));
                let rx = self.send_request(req, peer);
                let me = self.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let gone = match rx.await {
                        Ok(crate::server::ClientOutcome::Final(r)) => matches!(r.status, 408 | 481),
                        Ok(crate::server::ClientOutcome::Timeout) => true,
                        _ => false,
                    };
                    if gone {
                        tracing::info!(call_id = %key.call_id, "call ended while we were down: its lamps go dark");
                        let now = me.clock.now_unix_ms();
                        let mut dialogs = lock(&me.proxy.dialogs);
                        let u = dialogs.end(&key, crate::dialog::EndReason::Error, now);
                        me.publish_calls_locked(u);
                    }
                });
            }
        }
    }

    /// The calls in progress (a snapshot for the dashboard and the control API).
    pub fn calls(&self) -> Vec<crate::dialog::Call> {
        self.proxy.calls()
    }

    /// A response to an INVITE whose transaction we no longer hold (we restarted while it
    /// rang): the tracker still hears it, so a call answered or refused after a restart
    /// shows as such instead of ringing until `early_timeout`.
    fn track_stray(&self, resp: &Response) {
        if !resp.cseq().is_ok_and(|c| c.method == "INVITE") || resp.status < 101 {
            return;
        }
        let (Ok(call_id), Some(from_tag)) =
            (resp.call_id(), resp.from_hdr().ok().and_then(|f| f.tag()))
        else {
            return;
        };
        let key = CallKey {
            call_id: call_id.to_string(),
            from_tag,
        };
        if lock(&self.proxy.dialogs).get(&key).is_none() {
            return;
        }
        self.track_response(&key, resp, None);
        if resp.status >= 300 {
            let now = self.clock.now_unix_ms();
            let mut dialogs = lock(&self.proxy.dialogs);
            let u = dialogs.failed(&key, resp.status, now);
            self.publish_calls_locked(u);
        }
    }

    /// Takes the tracker lock and publishes.
    fn publish_calls(&self, u: Option<Update>) {
        let _dialogs = lock(&self.proxy.dialogs);
        self.publish_calls_locked(u);
    }

    /// Stores a call change and publishes its dialog-info for the caller's and callee's
    /// lamps (pua_dialoginfo). Called with the tracker lock held, so the changes of one call
    /// reach the presence server in the order they happened.
    pub(crate) fn publish_calls_locked(&self, updates: impl IntoIterator<Item = Update>) {
        for u in updates {
            // Not awaited: a call in progress does not wait for the disk; the record only
            // serves a restart.
            drop(self.proxy.dialog_store.apply_call(u.write));
            self.events.publish(crate::events::Event::Call {
                call_id: u.call.key.call_id.clone(),
                caller: u.call.caller.uri.clone(),
                callee: u.call.callee.uri.clone(),
                state: u.call.state.as_str(),
            });
            for p in
                crate::pua::dialoginfo::publications(&u.call, &self.dialoginfo, self.max_lifetime)
            {
                if let Err(e) = self.pua.publish(
                    &p.presentity,
                    crate::presence::event::Pkg::Dialog,
                    &p.source_id,
                    &p.body,
                    p.expires,
                ) {
                    tracing::warn!(presentity = %p.presentity, error = %e, "dialog state not published");
                }
            }
        }
    }

    /// A 2xx to INVITE that matched no client transaction (RFC 6026 §8.4: a retransmission
    /// after Timer M, or a fork after the transaction ended), or whose server transaction is
    /// gone: statelessly to the address in the Via now on top.
    pub(crate) fn forward_stateless(self: &Arc<Self>, resp: Response) {
        let Ok(via) = resp.top_via() else {
            return;
        };
        let Some((proto, addr)) = response_addr(&via) else {
            return;
        };
        let to = self.peer_to(proto, addr);
        self.send_now(&to, resp.to_shared());
    }

    /// A response that matched no client transaction: a 2xx to an INVITE we forwarded goes on
    /// (our Via removed); anything else is dropped (§16.7 item 3... §18.1.2), and so is a
    /// 2xx whose top Via is not one we made (another sent-by, or a branch not minted under
    /// our secret): forwarding it would let anyone bounce a response off us to the address
    /// in the Via below.
    pub(crate) fn proxy_stray_response(self: &Arc<Self>, mut resp: Response) -> bool {
        let Ok(via) = resp.top_via() else {
            return false;
        };
        // Minted for the hop below our Via: a real branch with another Via below is not ours.
        let below = resp
            .headers
            .list(HeaderName::Via)
            .get(1)
            .and_then(|v| crate::sip::Via::parse(v).ok());
        let back = super::branch::back_hop(below.as_ref());
        let minted = via
            .branch()
            .is_some_and(|b| super::branch::is_forwarded(&self.branch_key, &b, &back));
        let ours = self.proxy.rules.is_our_via(&via) && minted;
        if ours {
            // Only responses to our own branches may move a call's lamp.
            self.track_stray(&resp);
        }
        let invite_2xx =
            (200..300).contains(&resp.status) && resp.cseq().is_ok_and(|c| c.method == "INVITE");
        if !ours || !invite_2xx {
            return false;
        }
        strip_top_via(&mut resp);
        self.proxy.note_answered(&resp, self.clock.now_unix_ms());
        self.forward_stateless(resp);
        true
    }

    /// A branch's client transaction timed out (Timer B or F): 408 for it.
    pub(crate) fn proxy_branch_timeout(self: &Arc<Self>, server: &TxKey, i: usize) {
        self.fail_branch(server, i, 408, "Request Timeout");
    }

    /// Timer C and the wait after a CANCEL.
    pub(crate) fn proxy_timers(self: &Arc<Self>, now: Instant) {
        let due = lock(&self.proxy.forwarding).timers.pop_due(now);
        for (key, i, kind) in due {
            match kind {
                BranchTimer::C => {
                    let proceeding = lock(&self.proxy.forwarding)
                        .contexts
                        .get_mut(&key)
                        .is_some_and(|f| {
                            let b = &mut f.ctx.branches[i];
                            if b.state == BranchState::Proceeding && !b.cancel_sent {
                                b.cancel_sent = true;
                                true
                            } else {
                                false
                            }
                        });
                    if proceeding {
                        tracing::debug!("Timer C fired: cancelling a branch that rings too long");
                        self.cancel_branch(&key, i);
                    }
                }
                BranchTimer::AfterCancel => {
                    let ckey = lock(&self.proxy.forwarding)
                        .contexts
                        .get(&key)
                        .and_then(|f| f.branches.get(i).cloned().flatten())
                        .map(|(k, _)| k);
                    if let Some(k) = ckey {
                        lock(&self.clients).terminate(&k);
                        lock(&self.owners).remove(&k);
                    }
                    self.fail_branch(&key, i, 408, "Request Timeout");
                }
            }
        }
    }

    /// A server transaction ended: its response context goes with it.
    pub(crate) fn proxy_forget(&self, key: &TxKey) {
        let mut fw = lock(&self.proxy.forwarding);
        if let Some(f) = fw.contexts.remove(key) {
            for (i, _) in f.branches.iter().enumerate() {
                fw.timers.cancel(&(key.clone(), i, BranchTimer::C));
                fw.timers
                    .cancel(&(key.clone(), i, BranchTimer::AfterCancel));
            }
        }
    }
}
