//! The running server: binds the transport, loads state, and drives each message through
//! parse → transaction layer → router → service → transaction layer → transport.

use crate::auth::nonce::NonceKey;
use crate::auth::{AuthResult, Authenticator};
use crate::clock::Clock;
use crate::config::{AuthMode, Config, TrustedFor};
use crate::events::EventBus;
use crate::ids::Ids;
use crate::presence::{
    NotifyBatch, OutNotify, Outcome, PendingNotify, Presence, Reply, Requester, SubRef,
};
use crate::pua::client::SipSender;
use crate::pua::usrloc::Usrloc;
use crate::pua::Pua;
use crate::registrar::{Identity, Pending, Registrar, Step};
use crate::router::{self, Local, Route};
use crate::sip::message::{has_tag_param, Parsed};
use crate::sip::parse::{parse_message, Limits, ParseError, ParseFailure};
use crate::sip::{HasHeaders, HeaderName, Headers, Message, Request, Response, Via};
use crate::storage::{durable, BindingStore, Durable, PresenceStore, StorageError, UserFile};
use crate::transaction::{
    Action, ClientInput, ClientTransactions, ServerInput, ServerTransactions, Timers, TxKey,
};
use crate::transport::{Inbound, Peer, Proto, Transport, TransportError};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

mod start;
pub use start::{start, Stores};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("cannot read random bytes from the operating system (for keys, tags and ids): {0}")]
    Random(getrandom::Error),
    #[error("cannot listen for metrics on {addr} ([control] metrics): {reason}")]
    Metrics { addr: SocketAddr, reason: String },
    #[error(transparent)]
    Control(#[from] crate::control::server::ControlError),
}

/// How a request is answered.
enum Answer {
    Now(Response),
    /// A REGISTER whose change must be on disk first.
    AfterWrite(Pending),
    /// A SUBSCRIBE or PUBLISH: answer once `durable` resolves, then send the NOTIFYs and
    /// release the fan-out.
    Presence {
        response: Response,
        durable: Durable,
        notifies: Vec<OutNotify>,
        fanout: Option<NotifyBatch>,
    },
}

pub struct Core {
    pub(crate) limits: Limits,
    pub(crate) transport: Arc<Transport>,
    pub(crate) auth: Authenticator,
    pub registrar: Arc<Registrar>,
    pub presence: Arc<Presence>,
    /// The presence user agent: in-process publishers go through `pua.publish(...)`; its
    /// SIP client PUBLISHes to a remote presence server and SUBSCRIBEs at notifiers.
    pub pua: Arc<Pua>,
    /// Shared lines: member phones' subscriptions and the appearance tables.
    pub bla: Arc<crate::bla::Bla>,
    pub(crate) clock: Clock,
    pub(crate) ids: Ids,
    pub(crate) server_header: String,
    pub(crate) transactions: Mutex<ServerTransactions<Peer>>,
    /// Our requests (NOTIFYs, the proxy's branches, the presence client's requests) and who
    /// hears their answers.
    pub(crate) clients: Mutex<ClientTransactions<Peer>>,
    pub(crate) owners: Mutex<crate::hashing::FastMap<TxKey, Owner>>,
    pub(crate) timers_changed: Notify,
    /// Host for our Via/Record-Route/Contact when a socket is bound to a wildcard address.
    pub(crate) advertised_host: String,
    /// The proxy and what it owns: forwarding contexts, the dialog tracker and its store.
    pub(crate) proxy: crate::proxy::ProxyService,
    pub(crate) dialoginfo: crate::config::DialogInfoConfig,
    pub(crate) max_lifetime: u64,
    pub(crate) events: EventBus,
    /// Mints and checks our Via branches (kept in `data_dir/branch.key`).
    pub(crate) branch_key: crate::transaction::BranchKey,
    /// NOTIFYs whose state is on disk go out through the task started with the core (see
    /// [`Core::send_notifies`]).
    stored_notifies: tokio::sync::mpsc::UnboundedSender<StoredNotifies>,
    /// Messages read from the network (requests and responses, parseable or not).
    received: std::sync::atomic::AtomicU64,
    /// `[server] rate_limit_per_source`: tokens of new SUBSCRIBEs and REGISTERs per source.
    rate_limit: Mutex<crate::ratelimit::RateLimiter>,
    /// Requests answered 503 by that limit.
    rate_limited: std::sync::atomic::AtomicU64,
    /// `[proxy] upstream` when it is a host name: looked up again by TTL and on failure.
    pub(crate) upstream_dns: Option<Arc<crate::proxy::upstream::UpstreamDns>>,
    /// Requests whose answer waits for their disk write: shutdown lets them finish.
    answering: crate::drain::Drain,
    /// Requests read and answered, by method and status (the metrics endpoint's counters).
    pub(crate) requests: crate::control::metrics::RequestCounters,
    /// How long the store's flushes take, when it measures them.
    pub(crate) flush_times: Option<Arc<crate::storage::flush_times::FlushTimes>>,
}

/// Who hears the answers to one of our client transactions.
pub(crate) enum Owner {
    /// A NOTIFY of the presence server.
    Notify(SubRef),
    /// A branch of a proxied request: the server transaction it answers and the branch
    /// number in its response context.
    Branch { server: TxKey, branch: usize },
    /// A CANCEL the proxy sent: its answer changes nothing (the INVITE's answer does).
    Cancel,
    /// A request of an in-process user agent (the presence client): its final answer, or
    /// [`ClientOutcome::Timeout`].
    Waiter(tokio::sync::oneshot::Sender<ClientOutcome>),
}

/// A snapshot of [`Core::in_flight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InFlight {
    pub server_transactions: usize,
    pub client_transactions: usize,
    /// Who hears the answers of our client transactions.
    pub client_owners: usize,
    /// Requests the proxy is forwarding statefully (response contexts).
    pub forwarded: usize,
}

/// How a request sent with [`Core::send_request`] ended.
#[derive(Debug)]
pub enum ClientOutcome {
    /// The final response (200-699).
    Final(Response),
    /// Timer B or F fired: no final response (RFC 3261 §8.1.3.1: treat as 408).
    Timeout,
    /// The request could not be sent (no socket or connection for the destination, table
    /// full, malformed request); the reason says which.
    NotSent(String),
}

/// A started server. Dropping it does not stop the tasks; call [`ServerHandle::shutdown`] or
/// end the runtime.
pub struct ServerHandle {
    pub core: Arc<Core>,
    pub events: EventBus,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the metrics endpoint listens (`[control] metrics`), when it does.
    metrics: Option<SocketAddr>,
    /// The control socket; `None` when it was not started (see [`start_control`]).
    control: Option<crate::control::server::ControlServer>,
}

impl ServerHandle {
    /// The sockets and their counters (connections open, refused, timed out).
    pub fn transport(&self) -> &Transport {
        &self.core.transport
    }

    pub fn local_addr(&self, proto: Proto) -> Option<SocketAddr> {
        self.core
            .transport
            .local_addrs()
            .into_iter()
            .find(|(p, _)| *p == proto)
            .map(|(_, a)| a)
    }

    pub fn local_addrs(&self) -> Vec<(Proto, SocketAddr)> {
        self.core.transport.local_addrs()
    }

    /// The metrics endpoint's address (its port when `[control] metrics` asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The control socket's path, when it runs.
    pub fn control_socket(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(|c| c.path())
    }

    /// Stops in order: nothing more is read (UDP receive loops, TCP accept and connection
    /// readers end), the requests already read and waiting for their disk write are answered,
    /// queued sends are written, then every socket is closed and the background tasks end.
    /// The store itself is the caller's to close (it may outlive the server). Bound it with a
    /// timeout: a stuck disk would hold the answers.
    pub async fn shutdown(self) {
        // The admin side first: nothing more is asked of a server that is stopping.
        if let Some(control) = self.control {
            control.stop();
        }
        let transport = &self.core.transport;
        transport.stop_reading().await;
        self.core.answering.close().await;
        transport.close().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

impl Inbound for Core {
    fn on_unreachable(self: Arc<Self>, peer: Peer) {
        self.upstream_failed(&peer);
        let failed = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_unreachable(|to| to.proto == peer.proto && to.remote == peer.remote);
        for key in failed {
            let owner = self
                .owners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            // RFC 3261 §8.1.3.1: a transport error counts as a 503 from the next hop.
            match owner {
                Some(Owner::Notify(sub)) => {
                    self.presence.notify_outcome(&sub, Outcome::Failed(503))
                }
                Some(Owner::Waiter(w)) => {
                    let _ = w.send(ClientOutcome::NotSent(format!(
                        "cannot open a connection to {peer}"
                    )));
                }
                Some(Owner::Branch { server, branch }) => {
                    self.proxy_branch_unreachable(&server, branch)
                }
                Some(Owner::Cancel) | None => {}
            }
            self.proxy_forget(&key);
        }
    }

    fn on_message(self: Arc<Self>, bytes: Vec<u8>, peer: Peer) {
        self.received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match parse_message(&bytes, &self.limits) {
            Ok(Message::Request(req)) => self.on_request(req, peer),
            Ok(Message::Response(resp)) => self.on_response(resp, peer),
            Err(failure) => self.answer_unparseable(failure, peer),
        }
        // A call's lamps leave now, not after the rest of a burst of datagrams.
        self.send_express();
    }

    fn on_unframeable(
        self: Arc<Self>,
        bytes: Vec<u8>,
        peer: Peer,
        error: ParseError,
    ) -> Option<Vec<u8>> {
        let salvage = match parse_message(&bytes, &self.limits) {
            Err(f) => f.salvage,
            Ok(Message::Request(r)) => Some(r.headers),
            Ok(_) => None,
        };
        self.unparseable_answer(ParseFailure { error, salvage }, peer)
            .map(|(_, bytes)| bytes)
    }
}

impl Core {
    /// How many messages the server has read from the network (a loop shows as a count
    /// that keeps growing).
    pub fn messages_received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Looks `[proxy] upstream` up again whenever its answer expires or its address in use
    /// stopped answering ([`Core::upstream_failed`]).
    async fn run_upstream_refresh(self: Arc<Self>, dns: Arc<crate::proxy::upstream::UpstreamDns>) {
        loop {
            dns.due(|| self.now()).await;
            let found = dns
                .lookup(|| self.now(), |p, a| can_send(&self.transport, p, a))
                .await;
            self.proxy
                .set_upstream_resolved(found.map(|(proto, addr)| self.peer_to(proto, addr)));
        }
    }

    /// `peer` stopped answering (a transaction to it timed out, or no connection to it could
    /// be opened): when it is the upstream's address in use, the next address is used and
    /// the name is looked up again.
    pub(crate) fn upstream_failed(&self, peer: &Peer) {
        let Some(dns) = &self.upstream_dns else {
            return;
        };
        if let Some((proto, addr)) = dns.failed(peer.remote, self.now()) {
            self.proxy
                .set_upstream_resolved(Some(self.peer_to(proto, addr)));
        }
    }

    /// New SUBSCRIBEs and REGISTERs answered 503 so far by `[server] rate_limit_per_source`.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `[server] rate_limit_per_source`: a REGISTER or a SUBSCRIBE outside a dialog (a new
    /// subscription) from a source that spent its tokens gets `503` with `Retry-After`.
    /// Refreshes inside a subscription dialog are not counted: the per-user quota bounds
    /// the subscriptions, and refusing a refresh would darken a working lamp. Sources
    /// trusted for that request's purpose (`[auth] trusted_for`) are not limited.
    fn over_rate_limit(&self, req: &Request, in_dialog: bool, peer: &Peer) -> Option<Response> {
        let purpose = match req.method.as_str() {
            "REGISTER" => crate::config::TrustedFor::Register,
            "SUBSCRIBE" if !in_dialog => crate::config::TrustedFor::Subscribe,
            _ => return None,
        };
        if self.auth.is_trusted(peer.remote.ip(), purpose) {
            return None;
        }
        let checked = self
            .rate_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(peer.remote.ip(), self.now());
        let refused = checked.err()?;
        self.rate_limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%peer, method = %req.method, "rate limited (server.rate_limit_per_source)");
        let mut resp = req.response(
            503,
            "Service Unavailable: too many new SUBSCRIBE and REGISTER requests from this address (server.rate_limit_per_source)",
            Some(&self.ids.tag()),
        );
        resp.headers
            .push_raw("Retry-After", refused.retry_after.to_string());
        Some(resp)
    }

    /// ACKs that matched no transaction and were dropped instead of relayed (no Route of
    /// ours, or no confirmed dialog the tracker knows).
    pub fn acks_dropped(&self) -> u64 {
        self.proxy.acks_dropped()
    }

    /// What the server holds for messages in flight: once every call has ended and the
    /// transaction timers have run, all of it is zero (nothing leaks).
    pub fn in_flight(&self) -> InFlight {
        InFlight {
            server_transactions: self
                .transactions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
            client_transactions: self.clients.lock().unwrap_or_else(|p| p.into_inner()).len(),
            client_owners: self.owners.lock().unwrap_or_else(|p| p.into_inner()).len(),
            forwarded: self.proxy.forwarded(),
        }
    }

    /// Answers a request we could not parse, when enough of it was read to address an answer
    /// (RFC 3261 §8.2 says 400; RFC 4475 expects it). Otherwise the bytes are dropped.
    fn answer_unparseable(self: &Arc<Self>, failure: ParseFailure, peer: Peer) {
        if let Some((target, bytes)) = self.unparseable_answer(failure, peer) {
            self.send_now(&target, Arc::from(bytes));
        }
    }

    /// The answer to an unparseable request and where it goes, when one can be addressed.
    fn unparseable_answer(&self, failure: ParseFailure, peer: Peer) -> Option<(Peer, Vec<u8>)> {
        let Some(headers) = failure.salvage else {
            if self
                .transport
                .log_allowed("unparseable message", peer.remote.ip())
            {
                tracing::debug!(%peer, error = %failure.error, "dropping unparseable message");
            }
            return None;
        };
        let needed = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ];
        if needed.iter().any(|h| !headers.has(*h)) {
            if self
                .transport
                .log_allowed("unparseable message", peer.remote.ip())
            {
                tracing::debug!(%peer, error = %failure.error, "dropping unparseable request without the headers to answer it");
            }
            return None;
        }
        // RFC 3261 §17: an ACK is never answered, however broken.
        let cseq_method = headers
            .get(HeaderName::CSeq)
            .and_then(|v| v.split_ascii_whitespace().nth(1));
        if cseq_method == Some("ACK") {
            tracing::debug!(%peer, error = %failure.error, "dropping unparseable ACK");
            return None;
        }
        let mut out = Headers::new();
        for h in &headers.0 {
            if needed.contains(&h.kind) {
                let mut h = h.clone();
                // §8.2.6.2: every final response carries a To tag.
                if h.kind == HeaderName::To && !has_tag_param(&h.value) {
                    h.value.push_str(";tag=");
                    h.value.push_str(&self.ids.tag());
                }
                out.0.push(h);
            }
        }
        let mut resp = Response {
            status: failure.error.status(),
            reason: crate::sip::message::sanitize_reason(&failure.error.to_string()),
            headers: out,
            body: Vec::new(),
        };
        stamp_answer_via(&mut resp, &peer);
        let target = reply_target(&resp, peer);
        self.requests
            .answered(cseq_method.unwrap_or(""), resp.status);
        Some((target, self.finish(resp).to_bytes()))
    }

    /// Sends an answer that no transaction holds (errors found before or instead of one).
    /// RFC 3261 §17: an ACK is never answered, so an ACK's answer is dropped here, once for all
    /// error paths.
    fn answer_outside_transaction(self: &Arc<Self>, method: &str, target: &Peer, resp: Response) {
        if method == "ACK" {
            tracing::debug!(peer = %target, status = resp.status, reason = %resp.reason, "not answering an ACK");
            return;
        }
        crate::logs::answer_sent(&resp, target, None, self.now());
        self.requests.answered(method, resp.status);
        self.send_now(target, self.finish(resp).to_shared());
    }

    pub(crate) fn finish(&self, mut resp: Response) -> Response {
        // `server.server_header = ""`: no Server header at all.
        if !self.server_header.is_empty() {
            resp.headers
                .push(HeaderName::Server, self.server_header.clone());
        }
        resp
    }

    /// Sends without waiting (a datagram that finds its socket's buffer full waits in a
    /// bounded queue; see [`Transport::send`]).
    pub(crate) fn send_now(&self, peer: &Peer, bytes: Arc<[u8]>) {
        if let Err(e) = self.transport.send(peer, bytes) {
            tracing::debug!(%peer, error = %e, "send failed");
        }
    }

    pub(crate) fn run_actions(&self, actions: Vec<Action<Peer>>) {
        for a in actions {
            match a {
                Action::Send { to, bytes } => self.send_now(&to, bytes),
                Action::Timeout { .. } | Action::Terminated { .. } => {}
            }
        }
        self.timers_changed.notify_one();
    }

    pub(crate) fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    /// One request, handled in the receive path: everything up to the answer is synchronous
    /// CPU work; only a REGISTER waiting for its disk write continues in a task of its own.
    fn on_request(self: &Arc<Self>, mut req: Request, peer: Peer) {
        crate::logs::request_received(&req, &peer);
        self.requests.received(&req.method);
        let parsed = match req.validate() {
            Ok(p) => p,
            Err(e) => {
                let mut resp = req.response(400, &e.to_string(), Some(&self.ids.tag()));
                stamp_answer_via(&mut resp, &peer);
                let target = reply_target(&resp, peer);
                self.answer_outside_transaction(&req.method, &target, resp);
                return;
            }
        };
        stamp_via(&mut req.headers, &parsed.top_via, &peer);
        let reply_to = reply_target_for_request(&parsed.top_via, peer);
        let input = {
            let mut tx = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
            tx.on_request_via(
                &req,
                &parsed.top_via,
                reply_to,
                peer.proto.reliable(),
                self.now(),
            )
        };
        let key = match input {
            ServerInput::New(key) => key,
            ServerInput::Retransmission(Some((to, bytes))) => {
                self.send_now(&to, bytes);
                return;
            }
            ServerInput::Stray if req.method == "ACK" => {
                self.proxy_ack(req, peer);
                return;
            }
            ServerInput::Retransmission(None) | ServerInput::AckAbsorbed | ServerInput::Stray => {
                return
            }
            ServerInput::Malformed(e) => {
                let resp = req.response(400, &e.to_string(), Some(&self.ids.tag()));
                self.answer_outside_transaction(&req.method, &reply_to, resp);
                return;
            }
            ServerInput::Overloaded => {
                let mut resp = req.response(
                    503,
                    "Service Unavailable: too many transactions",
                    Some(&self.ids.tag()),
                );
                resp.headers.push_raw("Retry-After", "5");
                self.answer_outside_transaction(&req.method, &reply_to, resp);
                return;
            }
        };
        let in_dialog = parsed.to.tag().is_some();
        let local = match router::route(&req, in_dialog, |u| self.proxy.rules.is_us(u)) {
            Route::Cancel => return self.proxy_cancel(key, &req, peer),
            Route::Proxy => return self.proxy_request(key, req, &parsed, peer),
            Route::Local(local) => local,
        };
        if let Some(resp) = self.over_rate_limit(&req, in_dialog, &peer) {
            return self.respond(&key, resp);
        }
        match self.dispatch(local, &req, &parsed, peer) {
            Answer::Now(resp) => self.respond(&key, resp),
            Answer::AfterWrite(pending) => {
                let me = self.clone();
                let answering = self.answering.token();
                tokio::spawn(async move {
                    let _answering = answering;
                    let written = durable(pending.durable).await;
                    let resp = me.registrar.complete(pending.rest, written);
                    me.respond(&key, resp);
                });
            }
            Answer::Presence {
                response,
                durable: mut written,
                notifies,
                fanout,
            } => {
                // The write was queued before the fan-out was decided and is often on disk
                // by now: then the answer leaves from here, before any of the NOTIFYs.
                use tokio::sync::oneshot::error::TryRecvError;
                let done = match written.try_recv() {
                    Ok(result) => Some(result),
                    Err(TryRecvError::Closed) => Some(Err(StorageError::WriterGone)),
                    Err(TryRecvError::Empty) => None,
                };
                if let Some(result) = done {
                    self.answer_presence(&key, response, result, notifies);
                    if let Some(batch) = fanout {
                        self.presence.release(batch);
                    }
                    return;
                }
                let answer = PendingAnswer {
                    key,
                    response,
                    written,
                    notifies,
                    _answering: self.answering.token(),
                };
                let me = self.clone();
                match fanout {
                    // A PUBLISH's fan-out that waits for nothing on disk: it goes out while
                    // the publication is committed, and the answer leaves between two of
                    // its steps as soon as the commit is done (not after the fan-out, and
                    // not after a turn through the scheduler behind it).
                    Some(batch) if batch.after.is_none() && !batch.notifies.is_empty() => {
                        tokio::spawn(async move {
                            me.send_notifies_paced(batch.notifies, Some(answer)).await;
                        });
                    }
                    fanout => {
                        tokio::spawn(async move {
                            let result = durable(answer.written).await;
                            me.answer_presence(
                                &answer.key,
                                answer.response,
                                result,
                                answer.notifies,
                            );
                            if let Some(batch) = fanout {
                                me.presence.release(batch);
                            }
                        });
                    }
                }
            }
        }
    }

    /// Answers a SUBSCRIBE or PUBLISH whose write ended (`written`), then lets the NOTIFYs
    /// built with it go.
    fn answer_presence(
        self: &Arc<Self>,
        key: &TxKey,
        response: Response,
        written: Result<(), StorageError>,
        notifies: Vec<OutNotify>,
    ) {
        match written {
            Ok(()) => {
                self.respond(key, response);
                self.send_notifies_now(notifies);
            }
            Err(e) => {
                // Not on disk: not acknowledged. The in-memory change stands;
                // the client retries and the next write carries it.
                let answer = e.answer();
                if answer.retry_after.is_some() {
                    // Busy: the store warns about those itself, once a second.
                    tracing::debug!(error = %e, "presence state not queued for disk");
                } else {
                    tracing::error!(error = %e, "presence state not stored");
                }
                let mut r = response;
                r.status = answer.status;
                r.reason = answer.reason.into();
                r.headers
                    .0
                    .retain(|h| !matches!(h.kind, HeaderName::SipEtag | HeaderName::Contact));
                if let Some(secs) = answer.retry_after {
                    r.headers.push_raw("Retry-After", secs.to_string());
                }
                self.respond(key, r);
                // Their NOTIFYs were counted (in flight) but cannot leave: each
                // subscription retries as after a lost NOTIFY, rather than
                // waiting forever for an answer.
                for n in notifies {
                    self.presence.not_stored(&n.sub);
                }
            }
        }
    }

    /// `answer` when its write has ended (sent, `None`), else `answer` back.
    fn answer_if_written(self: &Arc<Self>, mut answer: PendingAnswer) -> Option<PendingAnswer> {
        use tokio::sync::oneshot::error::TryRecvError;
        let result = match answer.written.try_recv() {
            Ok(result) => result,
            Err(TryRecvError::Closed) => Err(StorageError::WriterGone),
            Err(TryRecvError::Empty) => return Some(answer),
        };
        self.answer_presence(&answer.key, answer.response, result, answer.notifies);
        None
    }

    /// A response to one of our requests (a NOTIFY): RFC 3261 §17.1.3 matching, then the
    /// subscription hears how its NOTIFY ended. Anything else is stray (§18.1.2: dropped).
    fn on_response(self: &Arc<Self>, resp: Response, peer: Peer) {
        // Who waits for the answer is looked up (and, for a final answer, taken) while the
        // transaction table is still locked: over TCP a final answer ends the transaction at
        // once (Timers K and D are zero), and the timer task's `Terminated`, which forgets
        // the owner, must not slip in between and lose the answer.
        let (input, branch, owner) = {
            let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            let input = c.on_response(&resp, self.now());
            let (mut branch, mut owner) = (None, None);
            if let ClientInput::Deliver { key, .. } = &input {
                let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
                match owners.get(key) {
                    Some(Owner::Branch { server, branch: b }) => {
                        branch = Some((server.clone(), *b))
                    }
                    Some(_) if resp.status >= 200 => owner = owners.remove(key),
                    _ => {}
                }
            }
            (input, branch, owner)
        };
        match input {
            ClientInput::Deliver { actions, .. } => {
                self.run_actions(actions);
                if let Some((server, branch)) = branch {
                    return self.proxy_response(server, branch, resp);
                }
                match owner {
                    Some(Owner::Notify(sub)) => self
                        .presence
                        .notify_outcome(&sub, Outcome::from_status(resp.status)),
                    Some(Owner::Waiter(w)) => {
                        let _ = w.send(ClientOutcome::Final(resp));
                    }
                    Some(Owner::Branch { .. } | Owner::Cancel) | None => {}
                }
            }
            ClientInput::Absorbed { actions } => self.run_actions(actions),
            ClientInput::Stray if self.proxy_stray_response(resp.clone()) => {}
            ClientInput::Stray => {
                tracing::debug!(status = resp.status, %peer, "dropping stray response");
            }
        }
    }

    /// Starts a client transaction per NOTIFY.
    fn send_notifies_now(&self, notifies: Vec<OutNotify>) {
        if notifies.is_empty() {
            return;
        }
        let now = self.now();
        let mut failed = Vec::new();
        let mut sends = Vec::with_capacity(notifies.len());
        {
            let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
            for n in notifies {
                match c.send_minted(n.request, &n.branch, n.to, n.to.proto.reliable(), now) {
                    Ok((key, actions)) => {
                        owners.insert(key, Owner::Notify(n.sub));
                        sends.extend(actions);
                        self.presence.notify_counts().count_sent();
                    }
                    Err(e) => {
                        // Per watcher at debug (a restart with thousands of gone TCP
                        // watchers): the failure is counted in the summary at info.
                        tracing::debug!(error = %e, "NOTIFY not sent");
                        failed.push(n.sub);
                    }
                }
            }
        }
        for a in sends {
            if let Action::Send { to, bytes } = a {
                self.send_now(&to, bytes);
            }
        }
        self.timers_changed.notify_one();
        for sub in failed {
            self.presence.notify_outcome(&sub, Outcome::Failed(503));
        }
    }

    /// Sends a request of an in-process user agent through a client transaction and returns
    /// where its outcome arrives. The request must carry a top Via with a fresh branch
    /// ([`Core::via_for`]), CSeq, Call-ID, From, To and Max-Forwards.
    pub fn send_request(
        &self,
        req: Request,
        to: Peer,
    ) -> tokio::sync::oneshot::Receiver<ClientOutcome> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_request_answering(req, to, tx);
        rx
    }

    /// [`Core::send_request`], the outcome going to `answer`.
    fn send_request_answering(
        &self,
        req: Request,
        to: Peer,
        answer: tokio::sync::oneshot::Sender<ClientOutcome>,
    ) {
        let sent = {
            let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            match c.send(req, to, to.proto.reliable(), self.now()) {
                Ok((key, actions)) => {
                    self.owners
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, Owner::Waiter(answer));
                    Ok(actions)
                }
                Err(e) => Err((e, answer)),
            }
        };
        match sent {
            Ok(actions) => self.run_actions(actions),
            Err((e, answer)) => {
                let _ = answer.send(ClientOutcome::NotSent(e.to_string()));
            }
        }
    }

    /// Where to send a request for `uri` when no connection is known: its `maddr`/host and
    /// port (5060), UDP unless `transport=tcp` (then only over an open connection from that
    /// address). Host names are looked up (the system resolver: /etc/hosts, DNS A/AAAA; no
    /// SRV/NAPTR). `None` when nothing usable is found.
    pub async fn resolve(&self, uri: &crate::sip::SipUri) -> Option<Peer> {
        resolve(&self.transport, uri).await
    }

    /// A destination over our socket of `proto` that suits `remote` (same address family).
    pub fn peer_to(&self, proto: Proto, remote: SocketAddr) -> Peer {
        peer_to(&self.transport, proto, remote)
    }

    /// `host:port` others reach us at through our socket `local`: the socket address, or,
    /// for a wildcard socket, the host of `[presence] server_address` / the domain.
    pub fn advertised(&self, local: SocketAddr) -> String {
        advertised_at(&self.advertised_host, local)
    }

    /// A top Via for a new request of ours towards `to`, with a fresh branch.
    pub fn via_for(&self, to: &Peer) -> String {
        via_for(&self.branch_key, &self.ids, &self.advertised_host, to)
    }

    pub(crate) fn respond(self: &Arc<Self>, key: &TxKey, resp: Response) {
        let resp = self.finish(resp);
        match self.answer_through(key, &resp) {
            Ok(a) => self.run_actions(a),
            Err(e) => tracing::debug!(error = %e, "response not sent"),
        }
    }

    /// Every answer to a request of ours leaves through here or
    /// [`Core::answer_outside_transaction`] (or, refused statelessly by the proxy, through
    /// `refuse`): the place where final answers are logged, with the time they took.
    pub(crate) fn answer_through(
        &self,
        key: &TxKey,
        resp: &Response,
    ) -> Result<Vec<Action<Peer>>, crate::transaction::TxError> {
        let now = self.now();
        let mut tx = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
        let received = tx.received_at(key);
        let actions = tx.respond(key, resp, now)?;
        if let Some(Action::Send { to, .. }) = actions.first() {
            crate::logs::answer_sent(resp, to, received, now);
            self.requests.answered(cseq_method(resp), resp.status);
        }
        Ok(actions)
    }

    fn dispatch(&self, local: Local, req: &Request, parsed: &Parsed, peer: Peer) -> Answer {
        let tag = self.ids.tag();
        match local {
            Local::Reply(status, reason, extra) => {
                let mut r = req.response(status, &reason, Some(&tag));
                for (h, v) in extra {
                    r.headers.push(h, v);
                }
                Answer::Now(r)
            }
            Local::Options => {
                let mut r = req.response(200, "OK", Some(&tag));
                r.headers.push(HeaderName::Allow, router::ALLOW);
                r.headers.push(
                    HeaderName::AllowEvents,
                    crate::presence::event::ALLOW_EVENTS,
                );
                r.headers.push(HeaderName::Accept, "application/sdp");
                r.headers
                    .push(HeaderName::Supported, router::SUPPORTED.join(", "));
                Answer::Now(r)
            }
            Local::Register => self.register(req, parsed, peer, &tag),
            Local::Subscribe | Local::Publish => self.presence_request(req, parsed, peer, &tag),
            // A NOTIFY for one of the presence client's subscriptions (481 otherwise).
            Local::Notify => {
                let answer = self.pua.on_notify(req, parsed);
                let response = req.response(answer.status, &answer.reason, Some(&tag));
                match answer.durable {
                    // A shared line's appearance table changed: on disk before the 200.
                    Some(durable) => Answer::Presence {
                        response,
                        durable,
                        notifies: Vec::new(),
                        fanout: None,
                    },
                    None => Answer::Now(response),
                }
            }
        }
    }

    /// Digest auth (RFC 3261 §22, RFC 7616) for REGISTER, SUBSCRIBE and PUBLISH: `Ok(None)`
    /// for a source trusted for `purpose` or open mode, `Ok(Some(user))` when the credentials
    /// check out, else the 401 (challenges offered for `challenged_user`), 403 or 400 to send.
    fn authenticate(
        &self,
        req: &Request,
        challenged_user: Option<&str>,
        peer: Peer,
        purpose: TrustedFor,
        tag: &str,
    ) -> Result<Option<String>, Response> {
        let now = self.clock.now_unix();
        match self.auth.check(
            req,
            HeaderName::Authorization,
            peer.remote.ip(),
            purpose,
            now,
        ) {
            AuthResult::Skipped => Ok(None),
            AuthResult::Authenticated { username } => Ok(Some(username)),
            AuthResult::Challenge { stale } => {
                let mut r = req.response(401, "Unauthorized", Some(tag));
                for c in self.auth.challenges(req, stale, now, challenged_user) {
                    r.headers.push(HeaderName::WwwAuthenticate, c);
                }
                Err(r)
            }
            AuthResult::Forbidden(reason) => Err(req.response(403, reason, Some(tag))),
            AuthResult::BadRequest(reason) => Err(req.response(400, &reason, Some(tag))),
        }
    }

    /// SUBSCRIBE and PUBLISH: digest auth as for REGISTER (the watcher or publisher is the
    /// From user), then the presence server.
    fn presence_request(&self, req: &Request, parsed: &Parsed, peer: Peer, tag: &str) -> Answer {
        // The watcher or publisher is the From user.
        let challenged = parsed.from.uri.as_sip().and_then(|u| u.user.as_deref());
        // SUBSCRIBE of every package (presence, dialog, message-summary, winfo) alike.
        let purpose = if req.method == "SUBSCRIBE" {
            TrustedFor::Subscribe
        } else {
            TrustedFor::Publish
        };
        let user = match self.authenticate(req, challenged, peer, purpose, tag) {
            Ok(user) => user,
            Err(r) => return Answer::Now(r),
        };
        let who = match &user {
            Some(u) => Requester::User(u),
            None => Requester::Unchecked,
        };
        let reply = if req.method == "SUBSCRIBE" {
            let known = Known {
                auth: &self.auth,
                registrar: &self.registrar,
                bla: &self.bla,
            };
            self.presence
                .subscribe_in(req, parsed, peer, who, tag, &known)
        } else {
            self.presence.publish_sip(req, parsed, who, tag)
        };
        match reply {
            Reply::Now(r) => Answer::Now(r),
            Reply::AfterWrite {
                response,
                durable,
                notifies,
                fanout,
            } => Answer::Presence {
                response,
                durable,
                notifies,
                fanout,
            },
        }
    }

    fn register(&self, req: &Request, parsed: &Parsed, peer: Peer, tag: &str) -> Answer {
        // The AOR being registered is the To user.
        let challenged = parsed.to.uri.as_sip().and_then(|u| u.user.as_deref());
        // `Contact: *` as well: removing bindings is registering.
        let who = match self.authenticate(req, challenged, peer, TrustedFor::Register, tag) {
            Ok(Some(user)) => Identity::User(user),
            Ok(None) => Identity::Unchecked,
            Err(r) => return Answer::Now(r),
        };
        match self
            .registrar
            .begin(req, parsed, &who, &peer.to_string(), tag)
        {
            Step::Done(r) => Answer::Now(r),
            Step::Pending(p) => Answer::AfterWrite(p),
        }
    }

    /// Writes the summaries of throttled log lines whose window ended
    /// ([`crate::logs::Throttle::flush`]); runs for the server's lifetime.
    async fn run_log_throttle(self: Arc<Self>) {
        let mut every = tokio::time::interval(crate::logs::Throttle::WINDOW);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.transport.log_throttle.flush(self.now());
        }
    }

    async fn run_timers(self: Arc<Self>) {
        loop {
            let server_next = self
                .transactions
                .lock()
                .map(|t| t.next_deadline())
                .unwrap_or(None);
            let client_next = self
                .clients
                .lock()
                .map(|c| c.next_deadline())
                .unwrap_or(None);
            let proxy_next = self.proxy.next_timer();
            let next = [server_next, client_next, proxy_next]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                        _ = self.timers_changed.notified() => continue,
                    }
                }
                None => {
                    self.timers_changed.notified().await;
                    continue;
                }
            }
            let actions = {
                let mut tx = self.transactions.lock().unwrap_or_else(|p| p.into_inner());
                tx.on_timer(self.now())
            };
            let client_actions = {
                let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
                c.on_timer(self.now())
            };
            self.proxy_timers(self.now());
            for a in actions.into_iter().chain(client_actions) {
                match a {
                    Action::Send { to, bytes } => self.send_now(&to, bytes),
                    // Timer F: the NOTIFY got no answer (RFC 3261 §17.1.2.2).
                    Action::Timeout { key } => {
                        let owner = self
                            .owners
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                        match owner {
                            Some(Owner::Notify(sub)) => {
                                self.presence.notify_outcome(&sub, Outcome::Failed(408))
                            }
                            Some(Owner::Waiter(w)) => {
                                let _ = w.send(ClientOutcome::Timeout);
                            }
                            Some(Owner::Branch { server, branch }) => {
                                self.proxy_branch_timeout(&server, branch)
                            }
                            Some(Owner::Cancel) | None => {}
                        }
                    }
                    Action::Terminated { key } => {
                        self.owners
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&key);
                        self.proxy_forget(&key);
                    }
                }
            }
        }
    }
}

/// Who exists for the presence server: a user with credentials, or an AOR with bindings
/// (a SUBSCRIBE for anyone else gets `404`).
struct Known<'a> {
    auth: &'a Authenticator,
    registrar: &'a Registrar,
    bla: &'a crate::bla::Bla,
}

impl crate::presence::Directory for Known<'_> {
    fn exists(&self, presentity: &str) -> bool {
        let user = crate::domain::user_of_aor(presentity);
        (!user.is_empty() && self.auth.knows(user))
            || !self.registrar.lookup(presentity).is_empty()
            || self.bla.is_line(presentity)
    }

    fn shared_line_users(&self, aor: &str) -> Option<Vec<String>> {
        self.bla.line_users(aor)
    }
}

/// What the presence client asks of the server core, which is built after it.
enum SipCall {
    Send {
        req: Request,
        to: Peer,
        answer: tokio::sync::oneshot::Sender<ClientOutcome>,
    },
    Resolve {
        uri: crate::sip::SipUri,
        answer: tokio::sync::oneshot::Sender<Option<Peer>>,
    },
}

/// The presence client's way to the network. Vias and our address are made here (they need
/// only the branch key and the advertised host); requests and look-ups go over a channel to
/// one task of the core, in the order they were made.
struct CoreLink {
    calls: tokio::sync::mpsc::UnboundedSender<SipCall>,
    branch_key: crate::transaction::BranchKey,
    ids: Ids,
    advertised_host: String,
}

impl SipSender for CoreLink {
    fn send(&self, req: Request, to: Peer) -> tokio::sync::oneshot::Receiver<ClientOutcome> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        // Closed only when the server stops: `answer` is dropped, the client sees it stopped.
        let _ = self.calls.send(SipCall::Send { req, to, answer });
        rx
    }

    fn resolve(
        &self,
        uri: crate::sip::SipUri,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Peer>> + Send + '_>> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let _ = self.calls.send(SipCall::Resolve { uri, answer });
        Box::pin(async move { rx.await.ok().flatten() })
    }

    fn via_for(&self, to: &Peer) -> String {
        via_for(&self.branch_key, &self.ids, &self.advertised_host, to)
    }

    fn advertised(&self, to: &Peer) -> String {
        advertised_at(&self.advertised_host, to.local)
    }
}

impl Core {
    /// Carries out the presence client's requests in the order it made them.
    async fn run_sip_calls(
        self: Arc<Self>,
        mut calls: tokio::sync::mpsc::UnboundedReceiver<SipCall>,
    ) {
        while let Some(call) = calls.recv().await {
            match call {
                SipCall::Send { req, to, answer } => self.send_request_answering(req, to, answer),
                SipCall::Resolve { uri, answer } => {
                    // A name lookup may take a while: the requests behind it do not wait.
                    let transport = self.transport.clone();
                    tokio::spawn(async move {
                        let _ = answer.send(resolve(&transport, &uri).await);
                    });
                }
            }
        }
    }
}

impl Core {
    /// Sends the presence server's NOTIFYs in the order it decided them.
    async fn run_outbox(
        self: Arc<Self>,
        mut outbox: tokio::sync::mpsc::UnboundedReceiver<NotifyBatch>,
    ) {
        while let Some(NotifyBatch { notifies, after }) = outbox.recv().await {
            // An express fan-out's wake-up (empty), or one not sent after its message yet.
            self.send_express();
            if notifies.is_empty() {
                continue;
            }
            match after {
                None => self.send_notifies_paced(notifies, None).await,
                after => self.send_notifies(notifies, after),
            }
        }
    }

    /// Builds and sends a batch [`BUILD_STEP`] NOTIFYs at a time (each step built just
    /// before it leaves, so the first NOTIFYs are on the wire while the rest are still
    /// undecided bytes), yielding to the runtime every [`NOTIFY_CHUNK`]: a fan-out to 10,000
    /// watchers does not hold the worker for its whole length. Between two yields the
    /// watchers' answers wait in the socket buffer: processing them in between (as every 64
    /// NOTIFYs did before) put the last NOTIFY of 1,000 behind 900 answers. The batch's order
    /// is kept (one task builds and sends all).
    ///
    /// `answer`: the request that caused the fan-out, whose write is still being committed.
    /// It is checked every [`ANSWER_STEP`] NOTIFYs and answered as soon as the write is done.
    async fn send_notifies_paced(
        self: &Arc<Self>,
        notifies: Vec<PendingNotify>,
        mut answer: Option<PendingAnswer>,
    ) {
        if answer.is_none() && notifies.len() > BUILD_STEP {
            // A fan-out lets what is ready go first: an answer whose write is done leaves
            // before its NOTIFYs, not after a step.
            tokio::task::yield_now().await;
        }
        let mut rest = notifies.into_iter();
        let mut since_yield = 0;
        loop {
            answer = answer.and_then(|a| self.answer_if_written(a));
            let step = if answer.is_some() {
                ANSWER_STEP
            } else {
                BUILD_STEP
            };
            let built = self.presence.build_notifies(rest.by_ref().take(step));
            if built.is_empty() {
                break;
            }
            since_yield += built.len();
            self.send_notifies_now(built);
            if since_yield >= NOTIFY_CHUNK && rest.len() > 0 {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
        if let Some(a) = answer {
            let result = durable(a.written).await;
            self.answer_presence(&a.key, a.response, result, a.notifies);
        }
    }

    /// Sends the express lane's NOTIFYs ([`Presence::take_express`]): a call's lamps, small
    /// and waiting for no write.
    fn send_express(&self) {
        let express = self.presence.take_express();
        if !express.is_empty() {
            self.send_notifies_now(self.presence.build_notifies(express));
        }
    }

    /// Sends the NOTIFYs at once, or once `after` (a reservation of CSeqs and versions, or a
    /// subscription's record, one of them needs) is on disk.
    fn send_notifies(&self, notifies: Vec<PendingNotify>, after: Option<Durable>) {
        match after {
            None => self.send_notifies_now(self.presence.build_notifies(notifies)),
            Some(d) => {
                let stored = self.stored_notifies.clone();
                tokio::spawn(async move {
                    let written = durable(d).await;
                    // Closed only when the server stops: nothing is sent then.
                    let _ = stored.send(StoredNotifies { notifies, written });
                });
            }
        }
    }
}

/// NOTIFYs sent in one go before the outbox yields to other work (see
/// [`Core::send_notifies_paced`]): a fan-out to 1,000 watchers goes out whole, about 10 ms of
/// sends on this box, before the runtime reads anything else (the watchers' answers wait in
/// the socket's 4 MiB buffer). Yielding every 64, as before, let the receive loop process
/// the answers to each step in between, and the last NOTIFY of 1,000 left behind 900 of
/// them: PUBLISH to last NOTIFY p50 20–26 ms, against 10–11 ms this way (pinned A/B runs).
/// What it costs: a request arriving during such a fan-out waits for it, up to these many
/// sends.
const NOTIFY_CHUNK: usize = 1024;

/// NOTIFYs built (and their client transactions started) at a time, then sent.
const BUILD_STEP: usize = 64;

/// NOTIFYs sent between two checks of whether the write of the request that caused them is
/// done: its answer waits for at most this many sends.
const ANSWER_STEP: usize = 16;

/// A SUBSCRIBE or PUBLISH answered once its write is on disk.
struct PendingAnswer {
    key: TxKey,
    response: Response,
    written: Durable,
    /// Built with it, sent after it.
    notifies: Vec<OutNotify>,
    /// Shutdown lets it finish.
    _answering: Option<crate::drain::Token>,
}

/// NOTIFYs that waited for their state to reach the disk, and how the write ended.
struct StoredNotifies {
    notifies: Vec<PendingNotify>,
    written: Result<(), StorageError>,
}

impl Core {
    /// Sends the NOTIFYs whose state was written (one message per finished write, so the
    /// queue holds no more than the writes in flight).
    async fn run_stored_notifies(
        self: Arc<Self>,
        mut stored: tokio::sync::mpsc::UnboundedReceiver<StoredNotifies>,
    ) {
        while let Some(StoredNotifies { notifies, written }) = stored.recv().await {
            match written {
                Ok(()) => self.send_notifies_paced(notifies, None).await,
                Err(e) => {
                    // The reservation (or record) not on disk: sending could repeat a CSeq
                    // after a restart. Retry later instead, reserving again.
                    tracing::error!(error = %e, "NOTIFY reservation not stored; retrying");
                    for n in notifies {
                        self.presence.not_stored(n.sub());
                    }
                }
            }
        }
    }
}

/// The method an answer's CSeq names (what the metrics count it under); "" when it has none.
pub(crate) fn cseq_method(resp: &Response) -> &str {
    resp.headers
        .get(HeaderName::CSeq)
        .and_then(|c| c.split_ascii_whitespace().nth(1))
        .unwrap_or("")
}

/// [`Core::advertised`]: `local`, or `host` and its port when `local` is a wildcard.
fn advertised_at(host: &str, local: SocketAddr) -> String {
    if !local.ip().is_unspecified() {
        return local.to_string();
    }
    format!("{}:{}", host, local.port())
}

/// [`Core::via_for`]: a top Via towards `to` with a branch minted from `ids`.
fn via_for(key: &crate::transaction::BranchKey, ids: &Ids, host: &str, to: &Peer) -> String {
    crate::proxy::branch::via(
        to.proto,
        &advertised_at(host, to.local),
        &crate::proxy::branch::mint(key, ids.next()),
    )
}

/// The host of `[presence] server_address` when set, else the domain.
fn advertised_host(cfg: &Config) -> String {
    match &cfg.presence.server_address {
        Some(u) => u.host.to_string(),
        None => cfg.server.domain.to_string(),
    }
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: record where the request really came from in its top Via
/// (in a request's `headers`, or in an answer made from them), so responses find their way back
/// through NAT. `top` is the parsed top Via.
fn stamp_via(headers: &mut Headers, top: &Via, peer: &Peer) {
    let ip = peer.remote.ip();
    let wants_rport = top.params.has("rport");
    if top.host.ip() == Some(ip) && !wants_rport {
        return;
    }
    let Some(i) = headers.0.iter().position(|h| h.kind == HeaderName::Via) else {
        return;
    };
    let mut via = top.clone();
    via.params.set("received", Some(ip.to_string()));
    if wants_rport {
        via.params
            .set("rport", Some(peer.remote.port().to_string()));
    }
    let parts = crate::sip::text::split_commas(&headers.0[i].value);
    let mut value = via.to_string();
    for rest in parts.iter().skip(1) {
        value.push_str(", ");
        value.push_str(rest);
    }
    headers.0[i].value = value;
}

/// RFC 3581 §4 for an answer made without a valid request (unparseable or invalid): every
/// response carries `received`/`rport` when the request asked, the 400s too, as long as the
/// top Via itself can be read.
fn stamp_answer_via(resp: &mut Response, peer: &Peer) {
    if let Ok(top) = resp.top_via() {
        stamp_via(&mut resp.headers, &top, peer);
    }
}

/// Where responses to this request go (RFC 3261 §18.2.2, RFC 3581 §4): over the same TCP
/// connection; for UDP to the source address, at the rport if the client asked for it, else at
/// the port in its Via.
fn reply_target_for_request(top: &Via, peer: Peer) -> Peer {
    if peer.proto == Proto::Tcp || top.rport().is_some() {
        return peer;
    }
    Peer {
        remote: SocketAddr::new(peer.remote.ip(), top.port.unwrap_or(5060)),
        ..peer
    }
}

fn reply_target(resp: &Response, peer: Peer) -> Peer {
    if peer.proto == Proto::Tcp {
        return peer;
    }
    match resp.top_via() {
        Ok(via) if via.rport().is_none() => Peer {
            remote: SocketAddr::new(peer.remote.ip(), via.port.unwrap_or(5060)),
            ..peer
        },
        _ => peer,
    }
}

/// See [`Core::resolve`].
async fn resolve(transport: &Transport, uri: &crate::sip::SipUri) -> Option<Peer> {
    let proto = match uri.params.get("transport") {
        Some(Some(t)) if t.eq_ignore_ascii_case("tcp") => Proto::Tcp,
        _ => Proto::Udp,
    };
    let port = uri.port.unwrap_or(5060);
    let host = uri.host.to_string();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let remote = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()?
            .next()?,
    };
    Some(peer_to(transport, proto, remote))
}

/// Whether we have a socket of `proto` in `remote`'s address family.
fn can_send(transport: &Transport, proto: Proto, remote: &SocketAddr) -> bool {
    transport
        .local_addrs()
        .iter()
        .any(|(p, a)| *p == proto && a.is_ipv4() == remote.is_ipv4())
}

/// A destination over our socket of `proto` that suits `remote` (same address family).
fn peer_to(transport: &Transport, proto: Proto, remote: SocketAddr) -> Peer {
    let local = transport
        .local_addrs()
        .into_iter()
        .filter(|(p, _)| *p == proto)
        .map(|(_, a)| a)
        .find(|a| a.is_ipv4() == remote.is_ipv4())
        .unwrap_or_else(|| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0));
    Peer {
        proto,
        remote,
        local,
        conn: None,
    }
}
