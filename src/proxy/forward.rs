//! The proxy inside the server core: a request the proxy owns gets a response context, one
//! client transaction per branch, Timer C per INVITE branch; responses come back through the
//! request's server transaction; CANCEL cancels the pending branches; an ACK for a 2xx and
//! stray 2xx retransmissions are forwarded statelessly (RFC 3261 §16.7, §16.10, §16.11).

use super::forwarding::{CallChange, Forwarded, ProxyAction};
use super::lock;
use super::service::{AckStep, NextHop};
use super::{branch_request, identity, response_addr, strip_top_via, uri_addr, Hop, Targets};
use crate::auth::AuthResult;
use crate::config::TrustedFor;
use crate::dialog::{CallKey, DialogSender, Flow, InviteInfo, Party, Update};
use crate::server::{Core, Owner};
use crate::sip::message::Parsed;
use crate::sip::{HasHeaders, HeaderName, Request, Response};
use crate::transaction::TxKey;
use crate::transport::Peer;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Core {
    /// Answers a request the proxy refuses: the error's status and reason, and for 420 the
    /// Unsupported header naming what it does not support.
    fn proxy_reject(self: &Arc<Self>, key: &TxKey, req: &Request, e: &super::ProxyError) {
        let mut r = req.response(e.status(), &e.to_string(), Some(&self.ids.tag()));
        if let super::ProxyError::BadExtension(tags) = e {
            r.headers.push(HeaderName::Unsupported, tags.join(", "));
        }
        self.refuse(key, req, r);
    }

    /// A final answer to a request the proxy does not forward. Out of a dialog it leaves
    /// statelessly, as Kamailio's `sl_send_reply`: the server transaction is dropped, so
    /// nothing is retransmitted to a source that may be spoofed (a 407 to an INVITE would
    /// otherwise go out 11 times), and a retransmitted request is answered again, once per
    /// copy. Its ACK names our fresh To tag, a dialog nobody has: `on_stray_ack` drops it. In
    /// a dialog the transaction answers and absorbs the ACK, which would otherwise match the
    /// dialog and be relayed.
    fn refuse(self: &Arc<Self>, key: &TxKey, req: &Request, resp: Response) {
        let in_dialog = req
            .headers
            .get(HeaderName::To)
            .is_some_and(crate::sip::message::has_tag_param);
        if in_dialog {
            return self.respond(key, resp);
        }
        let reply_to = {
            let mut tx = lock(&self.transactions);
            let to = tx.reply_to(key).copied();
            let received = tx.received_at(key);
            tx.terminate(key);
            to.map(|to| (to, received))
        };
        if let Some((to, received)) = reply_to {
            crate::logs::answer_sent(&resp, &to, received, self.now());
            self.requests.answered(&req.method, resp.status);
            self.send_now(&to, self.finish(resp).to_shared());
        }
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
        let loop_hash = match self.proxy.validate(&req) {
            Ok(h) => h,
            Err(e) => return self.proxy_reject(&key, &req, &e),
        };
        let in_dialog = parsed.to.tag().is_some();
        // In a dialog we know, its parties need no credentials; anyone else proves by digest
        // to be the party it claims to be (the ids of a call are no secret: BLF shows them).
        // `caller`: the user the credentials proved (none from a trusted source, in open
        // mode, or from a party of a dialog we set up).
        let sender = in_dialog.then(|| self.proxy.dialog_sender(&req)).flatten();
        let mut caller = None;
        match &sender {
            Some(s) if self.sent_by_dialog_party(s, &peer) => {}
            Some(s) => match self.proxy_authenticate(&mut req, parsed, peer) {
                Err(resp) => return self.refuse(&key, &req, resp),
                Ok(Some(user))
                    if s.is_user(&user)
                        || s.aor
                            .as_deref()
                            .is_some_and(|aor| self.proxy.rules.shared_line_member(aor, &user)) =>
                {
                    caller = Some(user)
                }
                Ok(_) => return self.proxy_reject(&key, &req, &super::ProxyError::NotDialogParty),
            },
            None => match self.proxy_authenticate(&mut req, parsed, peer) {
                Ok(user) => caller = user,
                Err(resp) => return self.refuse(&key, &req, resp),
            },
        }
        self.rewrite_identity(&mut req, parsed, &peer, caller.as_deref());
        if let Err(e) = self.proxy.preprocess(&mut req, in_dialog) {
            return self.proxy_reject(&key, &req, &e);
        }
        let trusted = self.trusted_for_calls(peer.remote.ip());
        if let Err(e) = self
            .proxy
            .check_routes(&req, sender.as_ref(), in_dialog, trusted)
        {
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
            match self.track_invite(&req, parsed, &peer, caller.as_deref()) {
                Ok(call) => call,
                Err(e) => return self.proxy_reject(&key, &req, &e),
            }
        } else {
            self.track_in_dialog(&req, parsed);
            None
        };
        if invite {
            // §16.2 / §16.7: a stateful proxy answers 100 at once so the caller stops
            // retransmitting; only once the request is going on: a refusal is the only
            // answer (one datagram per request received, see `refuse`).
            self.respond(&key, req.response(100, "Trying", None));
        }
        let fwd = Forwarded::new(req, peer, groups, record_route, loop_hash, call);
        let actions = self.proxy.forward(&key, fwd);
        self.run_proxy_actions(actions);
    }

    /// Whether `ip` is a source trusted for calls (`[auth] trusted`, `trusted_for` with
    /// `calls`): the PBX. The one place the in-dialog and Route checks ask.
    fn trusted_for_calls(&self, ip: std::net::IpAddr) -> bool {
        self.auth.is_trusted(ip, TrustedFor::Calls)
    }

    /// Whether a request of a dialog we know, arriving from `peer`, comes from the party
    /// `sender` it claims to be (see [`DialogSender::sent_from`]): the flow the dialog was
    /// set up over, a flow that party's phones are registered from, or for the PBX's side a
    /// source trusted for calls.
    fn sent_by_dialog_party(&self, sender: &DialogSender, peer: &Peer) -> bool {
        let source = Flow::of(peer);
        let trusted = |ip| self.trusted_for_calls(ip);
        if sender.sent_from(source, &[], trusted) {
            return true;
        }
        let registered: Vec<Flow> = sender
            .aor
            .as_deref()
            .map(|aor| self.registrar.lookup(aor))
            .unwrap_or_default()
            .iter()
            .filter_map(|b| b.source.parse().ok())
            .collect();
        sender.sent_from(source, &registered, trusted)
    }

    /// Digest for calls from phones (RFC 3261 §22.3: 407 with Proxy-Authenticate); sources
    /// trusted for calls (the PBX) and open mode pass (`Ok(None)`). The caller must call as
    /// itself, from one of our domains: `Ok(Some(user))`.
    fn proxy_authenticate(
        &self,
        req: &mut Request,
        parsed: &Parsed,
        peer: Peer,
    ) -> Result<Option<String>, Response> {
        let tag = self.ids.tag();
        let now = self.clock.now_unix();
        let challenged = parsed.from.uri.as_sip().and_then(|u| u.user.as_deref());
        match self.auth.check(
            req,
            HeaderName::ProxyAuthorization,
            peer.remote.ip(),
            TrustedFor::Calls,
            now,
        ) {
            AuthResult::Skipped => Ok(None),
            AuthResult::Authenticated { username } => {
                let rules = &self.proxy.rules;
                // A member of a shared line may call as the line (its phone registered it).
                if let Err(e) = identity::check_caller(&parsed.from, &username, |h| rules.serves(h))
                {
                    if rules
                        .shared_line_user(&parsed.from.uri, &username)
                        .is_none()
                    {
                        return Err(req.response(e.status(), &e.to_string(), Some(&tag)));
                    }
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
                Ok(Some(username))
            }
            AuthResult::Challenge { stale } => {
                let mut r = req.response(407, "Proxy Authentication Required", Some(&tag));
                for c in self.auth.challenges(req, stale, now, challenged) {
                    r.headers.push(HeaderName::ProxyAuthenticate, c);
                }
                Err(r)
            }
            AuthResult::Forbidden(reason) => Err(req.response(403, reason, Some(&tag))),
            AuthResult::BadRequest(reason) => Err(req.response(400, &reason, Some(&tag))),
        }
    }

    /// RFC 3325 at the edge of the trust domain: a request from a source trusted for calls
    /// (the PBX) keeps its identity headers; from anyone else they go, and a request of an
    /// authenticated `caller` carries the one identity it proved, its From's display name
    /// shown with it.
    fn rewrite_identity(
        &self,
        req: &mut Request,
        parsed: &Parsed,
        peer: &Peer,
        caller: Option<&str>,
    ) {
        let rules = &self.proxy.rules;
        if rules.trusted_for_calls(peer.remote.ip()) {
            return;
        }
        match caller {
            Some(user) => {
                // A member calling from a shared line is asserted as the line: the PBX bills
                // and shows the line, as when the line's own credentials were used.
                let line = rules.shared_line_user(&parsed.from.uri, user);
                let asserted = line.as_deref().unwrap_or(user);
                identity::assert_identity(
                    &mut req.headers,
                    identity::asserted_identity(
                        parsed.from.display.as_deref(),
                        asserted,
                        rules.domain(),
                    ),
                )
            }
            None => {
                identity::strip_identity(&mut req.headers);
            }
        }
    }

    /// Whether `peer` is inside the trust domain for calls: the upstream PBX, or an address
    /// trusted for calls. A request to anyone else leaves it (RFC 3325 §7: `Privacy: id`
    /// hides the asserted identity).
    fn in_trust_domain(&self, peer: &Peer) -> bool {
        self.proxy.rules.trusted_for_calls(peer.remote.ip())
            || self
                .upstream_peer()
                .is_some_and(|u| u.remote == peer.remote)
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

    /// Carries out what the proxy service decided, in order (the one place the proxy's
    /// decisions touch transactions, sockets and the resolver).
    pub(crate) fn run_proxy_actions(self: &Arc<Self>, actions: Vec<ProxyAction>) {
        for action in actions {
            match action {
                ProxyAction::Route {
                    server,
                    branch,
                    hop,
                    to,
                } => self.route_branch(server, branch, hop, to),
                ProxyAction::SendBranch {
                    server,
                    branch,
                    request,
                    peer,
                    loop_hash,
                } => self.send_branch(&server, branch, *request, peer, &loop_hash),
                ProxyAction::FailBranch {
                    server,
                    branch,
                    status,
                    reason,
                } => self.fail_branch(&server, branch, status, reason),
                ProxyAction::Cancel { client, peer } => self.send_cancel(&client, peer),
                ProxyAction::TerminateClient(k) => {
                    lock(&self.clients).terminate(&k);
                    lock(&self.owners).remove(&k);
                }
                ProxyAction::Respond { server, response } => {
                    self.forward_response(&server, response)
                }
                ProxyAction::ForwardStateless(resp) => self.forward_stateless(resp),
                ProxyAction::TimerSet { .. } => self.timers_changed.notify_one(),
            }
        }
    }

    /// Our socket towards a branch's next hop (a host name resolved first), then the branch
    /// request.
    fn route_branch(self: &Arc<Self>, server: TxKey, branch: usize, hop: Hop, to: NextHop) {
        let peer = match to {
            NextHop::Flow(f) => self.peer_to(f.proto, f.remote),
            NextHop::Addr(proto, addr) => self.peer_to(proto, addr),
            NextHop::Resolve(uri) => {
                let me = self.clone();
                tokio::spawn(async move {
                    match me.resolve(&uri).await {
                        Some(peer) => {
                            let actions = me.proxy.send_branch(&server, branch, &hop, peer);
                            me.run_proxy_actions(actions);
                        }
                        None => me.fail_branch(
                            &server,
                            branch,
                            503,
                            "Service Unavailable: cannot resolve the next hop",
                        ),
                    }
                });
                return;
            }
        };
        let actions = self.proxy.send_branch(&server, branch, &hop, peer);
        self.run_proxy_actions(actions);
    }

    /// Sends branch `i` of `key` to `peer` through a new client transaction.
    fn send_branch(
        self: &Arc<Self>,
        key: &TxKey,
        i: usize,
        mut out: Request,
        peer: Peer,
        loop_hash: &str,
    ) {
        if !self.transport.reaches(&peer) {
            // RFC 3261 §16.9 counts a transport error as a 503 from that branch; we answer it
            // as 480 instead: the phone is not reachable now (its TCP connection closed and no
            // new one may be opened: server.max_tcp_connections or the per-source limit), and
            // a 503 would reach the caller as 500. A closed connection alone is no reason:
            // the transport opens a new one to the flow's address (RFC 3261 §18.1.1).
            return self.fail_branch(
                key,
                i,
                480,
                "Temporarily Unavailable: the phone's connection is closed and the connection limit is reached",
            );
        }
        if !self.in_trust_domain(&peer) {
            identity::leave_trust_domain(&mut out.headers);
        }
        let now = self.now();
        let via = super::branch::via(
            peer.proto,
            &self.advertised(peer.local),
            &super::branch::forwarded(
                &self.branch_key,
                loop_hash,
                self.ids.next(),
                &super::branch::back_hop(out.top_via().ok().as_ref()),
            ),
        );
        out.headers.prepend(HeaderName::Via, via);
        let result = lock(&self.clients).send(out, peer, peer.proto.reliable(), now);
        match result {
            Ok((ckey, actions)) => {
                // Recorded before anything leaves, so the first response finds its branch.
                let more = self.proxy.branch_sent(key, i, ckey.clone(), peer, now);
                lock(&self.owners).insert(
                    ckey,
                    Owner::Branch {
                        server: key.clone(),
                        branch: i,
                    },
                );
                self.run_actions(actions);
                self.run_proxy_actions(more);
            }
            Err(e) => {
                tracing::warn!(error = %e, "branch not sent");
                self.fail_branch(key, i, 503, "Service Unavailable: too many transactions");
            }
        }
    }

    /// Branch `i` ended without a response from the next hop: it counts as this status.
    fn fail_branch(self: &Arc<Self>, key: &TxKey, i: usize, status: u16, reason: &str) {
        let actions = self.proxy.fail_branch(
            key,
            i,
            status,
            reason,
            &self.ids.tag(),
            self.now(),
            self.clock.now_unix_ms(),
            &mut |u| self.publish_calls_locked(u),
        );
        self.run_proxy_actions(actions);
    }

    /// A response on a branch (RFC 3261 §16.7).
    pub(crate) fn proxy_response(self: &Arc<Self>, server: TxKey, i: usize, mut resp: Response) {
        strip_top_via(&mut resp);
        self.proxy.note_answered(&resp, self.clock.now_unix_ms());
        let actions = self.proxy.on_response(
            &server,
            i,
            resp,
            self.now(),
            self.clock.now_unix_ms(),
            &mut |u| self.publish_calls_locked(u),
        );
        self.run_proxy_actions(actions);
    }

    /// A response goes upstream through the request's server transaction, untouched (no
    /// Server header of ours); a 2xx whose transaction is gone goes statelessly.
    fn forward_response(self: &Arc<Self>, key: &TxKey, resp: Response) {
        match self.answer_through(key, &resp) {
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

    /// Sends a CANCEL for a branch's client transaction (§16.10) as its own client
    /// transaction.
    fn send_cancel(self: &Arc<Self>, client: &TxKey, peer: Peer) {
        let Some(cancel) = lock(&self.clients).cancel_request(client) else {
            return;
        };
        let sent = lock(&self.clients).send(cancel, peer, peer.proto.reliable(), self.now());
        match sent {
            Ok((k, actions)) => {
                lock(&self.owners).insert(k, Owner::Cancel);
                self.run_actions(actions);
            }
            Err(e) => tracing::debug!(error = %e, "CANCEL not sent"),
        }
    }

    /// CANCEL from upstream (RFC 3261 §16.10): 200 for the CANCEL, then every pending branch of
    /// the INVITE it matches is cancelled; their 487 goes upstream as the INVITE's answer.
    /// A CANCEL from another flow than its INVITE's cancels nothing: 481 (see
    /// `ProxyService::on_cancel`).
    pub(crate) fn proxy_cancel(self: &Arc<Self>, key: TxKey, req: &Request, peer: Peer) {
        let invite = lock(&self.transactions).find_invite_for_cancel(req);
        let now_ms = self.clock.now_unix_ms();
        let mut publish = |u| self.publish_calls_locked(u);
        let from = Flow::of(&peer);
        match invite.and_then(|k| {
            self.proxy
                .on_cancel(&k, from, self.now(), now_ms, &mut publish)
        }) {
            Some(actions) => {
                self.respond(&key, req.response(200, "OK", Some(&self.ids.tag())));
                self.run_proxy_actions(actions);
            }
            None => self.proxy_reject(&key, req, &super::ProxyError::NoSuchDialog),
        }
    }

    /// An ACK that no transaction of ours absorbed: the end-to-end ACK for a 2xx (§16.11),
    /// forwarded statelessly by its Route or Request-URI. Retransmissions get the same branch.
    pub(crate) fn proxy_ack(self: &Arc<Self>, req: Request, peer: Peer) {
        let now_ms = self.clock.now_unix_ms();
        let from_party = |s: &DialogSender| self.sent_by_dialog_party(s, &peer);
        let (ack, next) = match self.proxy.on_stray_ack(req, now_ms, from_party) {
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

    /// A new call: the dialog tracker follows it and its lamps light (`trying`). A call of
    /// an authenticated `caller` counts against its `[proxy] max_calls_per_user` (refused
    /// beyond it) until the tracker ends it; such a call must have a From tag to be tracked.
    fn track_invite(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: &Peer,
        caller: Option<&str>,
    ) -> Result<Option<CallKey>, super::ProxyError> {
        let (Some(from_tag), Ok(call_id)) = (parsed.from.tag(), req.call_id()) else {
            return match caller {
                Some(_) => Err(super::ProxyError::NoFromTag),
                None => Ok(None),
            };
        };
        let key = CallKey {
            call_id: call_id.to_string(),
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
        let mut dialogs = self.proxy.dialogs();
        if let Some(user) = caller {
            self.proxy.admit_call(&dialogs, user)?;
        }
        let u = dialogs.invite(key.clone(), info, now);
        if let (Some(user), Some(_)) = (caller, &u) {
            self.proxy.count_call(&dialogs, user, key.clone());
        }
        self.publish_calls_locked(u);
        Ok(Some(key))
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
        let mut dialogs = self.proxy.dialogs();
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

    /// Ends calls past their lifetime (no BYE within `dialog.max_lifetime`, or ringing past
    /// `dialog.early_timeout`): their lamps go dark.
    pub(crate) async fn run_dialog_timers(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.clock.now_unix_ms();
            let mut dialogs = self.proxy.dialogs();
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
        let mut dialogs = self.proxy.dialogs();
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
        let calls = self.proxy.dialogs().confirmed();
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
                        let mut dialogs = me.proxy.dialogs();
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

    /// Calls the authenticated `user` originates now (`[proxy] max_calls_per_user`).
    pub fn calls_originated_by(&self, user: &str) -> usize {
        self.proxy.calls_of(user)
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
        let now = self.clock.now_unix_ms();
        let mut dialogs = self.proxy.dialogs();
        if dialogs.get(&key).is_none() {
            return;
        }
        let u = CallChange::response(&key, resp, None).apply(&mut dialogs, now);
        self.publish_calls_locked(u);
        if resp.status >= 300 {
            let u = dialogs.failed(&key, resp.status, now);
            self.publish_calls_locked(u);
        }
    }

    /// Stores a call change and publishes its dialog-info for the caller's and callee's
    /// lamps (pua_dialoginfo). Called with the proxy's lock held (see
    /// `ProxyService::dialogs`), so the changes of one call reach the presence server in the
    /// order they happened.
    pub(crate) fn publish_calls_locked(&self, updates: impl IntoIterator<Item = Update>) {
        for u in updates {
            self.proxy.call_changed(&u.call);
            // Not awaited: a call in progress does not wait for the disk; the record only
            // serves a restart.
            drop(self.proxy.dialog_store.apply_call(u.write));
            self.events.publish(crate::events::Event::Call {
                call_id: u.call.key.call_id.clone(),
                caller: u.call.caller.uri.clone(),
                callee: u.call.callee.uri.clone(),
                state: u.call.state.as_str(),
                held: u.call.is_held(),
                since: u.call.created_ms / 1000,
            });
            for p in
                crate::pua::dialoginfo::publications(&u.call, &self.dialoginfo, self.max_lifetime)
            {
                if let Err(e) = self.pua.publish_unawaited(
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
        if let Some(peer) = self.proxy.branch_peer(server, i) {
            self.upstream_failed(&peer);
        }
        self.fail_branch(server, i, 408, "Request Timeout");
    }

    /// No connection to the branch's phone could be opened: 480, as when none may be opened
    /// (see `send_branch`), at once rather than after Timer B.
    pub(crate) fn proxy_branch_unreachable(self: &Arc<Self>, server: &TxKey, i: usize) {
        self.fail_branch(
            server,
            i,
            480,
            "Temporarily Unavailable: cannot open a connection to the phone",
        );
    }

    /// Timer C and the wait after a CANCEL.
    pub(crate) fn proxy_timers(self: &Arc<Self>, now: Instant) {
        let actions = self.proxy.on_timers(now);
        self.run_proxy_actions(actions);
    }

    /// A server transaction ended: its response context goes with it.
    pub(crate) fn proxy_forget(&self, key: &TxKey) {
        self.proxy.forget(key);
    }
}
