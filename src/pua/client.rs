//! The presence user agent's SIP client: our publications PUBLISHed to a remote presence
//! server (RFC 3903) and our SUBSCRIBEs to remote notifiers (RFC 6665), with their
//! NOTIFYs. It builds requests with the sip codec and sends them through the server core's
//! client transactions ([`SipSender`]); it never touches a socket.
//!
//! **Publications.** One task per (presentity, event, source id), started by the first
//! publication and ended once the state is removed. It has at most one PUBLISH in flight;
//! what is published meanwhile waits, and only the newest state is sent when the answer
//! arrives (never a duplicate, never an older state after a newer one). The ETag of the
//! last 2xx is kept: a changed body goes out with `SIP-If-Match`, the refresh before
//! expiry as a body-less PUBLISH with `SIP-If-Match`, a removal as `Expires: 0` with
//! `SIP-If-Match`. A `412` is answered by a fresh publication (full body, no ETag); a
//! `401`/`407` once with credentials; a `423` with the server's `Min-Expires`; a timeout,
//! `5xx` or any other failure is retried (with the newest state) after a backoff that
//! doubles from `retry_min` to `retry_max`.
//!
//! **Subscriptions.** One task per [`Subscription`]: the initial SUBSCRIBE, refreshes in
//! the dialog (same Call-ID and tags, CSeq + 1, the route set from Record-Route), and a new
//! subscription (a new dialog) when the old one fails: a refresh answered `481`, a timeout
//! or another error, or a NOTIFY with `Subscription-State: terminated` and a reason that
//! allows it (`deactivated`, `timeout` at once; `probation`, `giveup` after `retry-after`;
//! never after `rejected`, `noresource`, `invariant`). NOTIFYs of our subscriptions are
//! answered `200` and handed to the subscriber's callback; their Contact becomes the
//! dialog's remote target (as Kamailio's `pua_update_contact` does). A NOTIFY that is not
//! ours gets `481`.

use crate::config::Config;
use crate::ids::Ids;
use crate::presence::event::{EventHeader, Pkg};
use crate::server::ClientOutcome;
use crate::sip::message::{parse_delta_seconds, Parsed};
use crate::sip::text::Params;
use crate::sip::{ContactValue, HasHeaders, HeaderName, Headers, Request, Response, SipUri, Uri};
use crate::storage::PublicationBody;
use crate::transport::{Peer, Proto};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// How the client reaches the network: the server core in production, a fake in tests.
pub trait SipSender: Send + Sync {
    /// Sends `req` (with its top Via from [`SipSender::via_for`]) as a client transaction
    /// to `to`; the receiver gets its final answer or timeout.
    fn send(&self, req: Request, to: Peer) -> oneshot::Receiver<ClientOutcome>;
    /// Where to send a request for `uri` (no SRV/NAPTR).
    fn resolve(&self, uri: SipUri) -> Pin<Box<dyn Future<Output = Option<Peer>> + Send + '_>>;
    /// A top Via with a fresh branch for a request to `to`.
    fn via_for(&self, to: &Peer) -> String;
    /// `host:port` the other side reaches us at through the socket `to` uses (our Contact).
    fn advertised(&self, to: &Peer) -> String;
}

/// The client's settings (from `[pua]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where our publications are also PUBLISHed; `None`: nowhere.
    pub presence_server: Option<SipUri>,
    /// Digest user and password for 401/407 challenges.
    pub credentials: Option<(String, String)>,
    pub publish_expires: u32,
    pub refresh_margin: u32,
    pub min_refresh: u32,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Our User-Agent header.
    pub user_agent: String,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let p = &cfg.pua;
        Settings {
            presence_server: p.presence_server.clone(),
            credentials: (!p.username.is_empty()).then(|| (p.username.clone(), p.password.clone())),
            publish_expires: p.publish_expires,
            refresh_margin: p.refresh_margin,
            min_refresh: p.min_refresh,
            retry_min: Duration::from_secs(p.retry_min.into()),
            retry_max: Duration::from_secs(p.retry_max.into()),
            user_agent: cfg.server.server_header.clone(),
        }
    }

    /// Our User-Agent header, unless `server.server_header` is empty.
    fn add_user_agent(&self, h: &mut Headers) {
        if !self.user_agent.is_empty() {
            h.push(HeaderName::UserAgent, self.user_agent.clone());
        }
    }

    /// When to refresh something the server granted for `granted` seconds: `refresh_margin`
    /// before it ends, at most half of it early, never sooner than `min_refresh`.
    fn refresh_after(&self, granted: u32) -> Duration {
        let margin = self.refresh_margin.min(granted / 2);
        Duration::from_secs(u64::from(
            granted.saturating_sub(margin).max(self.min_refresh),
        ))
    }

    /// The delay after the `failures`-th failure in a row (1-based).
    fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.retry_min
            .saturating_mul(1u32 << shift)
            .min(self.retry_max)
    }
}

/// What a NOTIFY's Subscription-State said (RFC 6665 §8.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubState {
    Active {
        expires: Option<u32>,
    },
    Pending {
        expires: Option<u32>,
    },
    Terminated {
        reason: Option<String>,
        retry_after: Option<u32>,
    },
}

impl SubState {
    /// Parses a Subscription-State value; an unknown state counts as pending (RFC 6665
    /// §8.2.3: "extension" states are treated as pending).
    pub fn parse(value: &str) -> Option<SubState> {
        let value = value.trim();
        let (token, rest) = match value.find(';') {
            Some(i) => (value[..i].trim(), &value[i..]),
            None => (value, ""),
        };
        if token.is_empty() {
            return None;
        }
        let params = Params::parse(rest).ok()?;
        let num = |n: &str| params.value(n).and_then(|v| parse_delta_seconds(&v));
        Some(match token.to_ascii_lowercase().as_str() {
            "active" => SubState::Active {
                expires: num("expires"),
            },
            "terminated" => SubState::Terminated {
                reason: params.value("reason").map(|r| r.to_ascii_lowercase()),
                retry_after: num("retry-after"),
            },
            _ => SubState::Pending {
                expires: num("expires"),
            },
        })
    }
}

/// What a subscriber hears about its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionEvent {
    /// A NOTIFY arrived (and was answered 200).
    Notify {
        state: SubState,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// The subscription (dialog) ended or could not be made; `retry_in`: when a new one
    /// is tried, `None` when the client has given up (or was told to unsubscribe).
    Ended {
        reason: String,
        retry_in: Option<Duration>,
    },
}

/// Called for every [`SubscriptionEvent`], from the receive path (NOTIFYs) or the
/// subscription's task: it must not block.
pub type NotifyCallback = Arc<dyn Fn(&SubscriptionEvent) + Send + Sync>;

/// Decides the answer to a NOTIFY of the subscription (a shared line answers `409` to a
/// seize of a taken appearance). Called instead of the [`NotifyCallback`] for NOTIFYs, from
/// the receive path: it must not block.
pub type NotifyJudge = Arc<dyn Fn(&SubscriptionEvent) -> NotifyAnswer + Send + Sync>;

/// The answer to a NOTIFY: its status and reason phrase, and, when the NOTIFY changed
/// state that must be on disk before the answer leaves, the write to wait for.
pub struct NotifyAnswer {
    pub status: u16,
    pub reason: std::borrow::Cow<'static, str>,
    pub durable: Option<crate::storage::Durable>,
}

impl NotifyAnswer {
    pub fn new(status: u16, reason: impl Into<std::borrow::Cow<'static, str>>) -> NotifyAnswer {
        NotifyAnswer {
            status,
            reason: reason.into(),
            durable: None,
        }
    }

    pub fn ok() -> NotifyAnswer {
        NotifyAnswer::new(200, "OK")
    }
}

/// What a subscription needs beyond target, event, watcher and expires.
#[derive(Clone, Default)]
pub struct SubscribeOptions {
    /// The To URI when it is not the target (BLA: To = From = the shared line, the
    /// Request-URI the member phone's contact).
    pub to: Option<String>,
    /// A `sip:` URI to send the requests outside the dialog to (a proxy, or a phone's
    /// flow), instead of the target.
    pub outbound: Option<String>,
    /// Every request, in the dialog too, goes to `outbound`: a phone's registered flow (its
    /// Contact may be a private address behind NAT, reachable only over that flow).
    pub pinned: bool,
    /// Decides each NOTIFY's answer; without it, every NOTIFY of ours gets `200`.
    pub judge: Option<NotifyJudge>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("target {0:?} is not a sip: URI")]
    BadTarget(String),
    #[error("watcher {0:?} is not a sip: URI")]
    BadWatcher(String),
    #[error("outbound proxy {0:?} is not a sip: URI")]
    BadOutbound(String),
    #[error("To {0:?} is not a sip: URI")]
    BadTo(String),
    #[error("event {0:?} is not an event package token")]
    BadEvent(String),
}

// ------------------------------------------------------------------------------- the client

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PubKey {
    presentity: String,
    pkg: Pkg,
    source: String,
}

/// The newest state a publisher asked for.
struct Want {
    /// `None`: remove the publication.
    body: Option<PublicationBody>,
    /// The state is valid until then (the publisher's expires).
    until: Instant,
    generation: u64,
}

struct PubSlot {
    want: Mutex<Want>,
    wake: Notify,
}

pub struct Client {
    settings: Settings,
    sender: Arc<dyn SipSender>,
    ids: Ids,
    publications: Mutex<HashMap<PubKey, Arc<PubSlot>>>,
    /// Our subscription dialogs by (Call-ID, our tag).
    dialogs: Mutex<HashMap<(String, String), Arc<SubShared>>>,
    this: Weak<Client>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until `at` (if any) or until `wake` is notified.
async fn wait(wake: &Notify, at: Option<Instant>) {
    match at {
        Some(at) => {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = wake.notified() => {}
            }
        }
        None => wake.notified().await,
    }
}

fn content_type_of(pkg: Pkg) -> &'static str {
    crate::presence::packages::lookup(pkg.key())
        .map(|p| p.publish_types()[0])
        .unwrap_or("application/octet-stream")
}

/// `Accept` for the packages we know the bodies of.
fn accept_for(event: &str) -> Option<&'static str> {
    let token = event.split(';').next().unwrap_or("").trim();
    match token.to_ascii_lowercase().as_str() {
        "presence" => Some("application/pidf+xml"),
        "dialog" => Some("application/dialog-info+xml"),
        "message-summary" => Some("application/simple-message-summary"),
        "presence.winfo" => Some("application/watcherinfo+xml"),
        _ => None,
    }
}

impl Client {
    /// `sender` reaches the network (the server core, built later, through a channel).
    pub fn new(settings: Settings, ids: Ids, sender: Arc<dyn SipSender>) -> Arc<Client> {
        Arc::new_cyclic(|this| Client {
            settings,
            sender,
            ids,
            publications: Mutex::new(HashMap::new()),
            dialogs: Mutex::new(HashMap::new()),
            this: this.clone(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Publications with a task running (PUBLISH in flight, waiting to refresh or retry).
    pub fn remote_publications(&self) -> usize {
        lock(&self.publications).len()
    }

    /// Subscription dialogs we currently answer NOTIFYs for.
    pub fn subscription_dialogs(&self) -> usize {
        lock(&self.dialogs).len()
    }

    /// Sends `req` to `peer` with a fresh Via; a 401/407 is answered once with credentials
    /// (CSeq + 1 through `cseq`). Returns the final outcome.
    async fn exchange(
        &self,
        sender: &Arc<dyn SipSender>,
        mut req: Request,
        peer: Peer,
        cseq: &mut u32,
    ) -> ClientOutcome {
        req.headers.prepend(HeaderName::Via, sender.via_for(&peer));
        let first = sender
            .send(req.clone(), peer)
            .await
            .unwrap_or_else(|_| ClientOutcome::NotSent("the server core stopped".into()));
        let ClientOutcome::Final(resp) = &first else {
            return first;
        };
        let Some(authorization) = self.answer_challenge(resp, &req) else {
            return first;
        };
        *cseq += 1;
        req.headers
            .set(HeaderName::CSeq, format!("{} {}", *cseq, req.method));
        req.headers.remove(HeaderName::Via);
        req.headers.prepend(HeaderName::Via, sender.via_for(&peer));
        req.headers.push(authorization.0, authorization.1);
        sender
            .send(req, peer)
            .await
            .unwrap_or_else(|_| ClientOutcome::NotSent("the server core stopped".into()))
    }

    /// The Authorization (401) or Proxy-Authorization (407) answering `resp`, when we have
    /// credentials and a challenge we can answer (SHA-256 preferred over MD5).
    fn answer_challenge(&self, resp: &Response, req: &Request) -> Option<(HeaderName, String)> {
        use crate::sip::digest::{self, Algorithm};
        let (challenge_header, answer_header) = match resp.status {
            401 => (HeaderName::WwwAuthenticate, HeaderName::Authorization),
            407 => (
                HeaderName::ProxyAuthenticate,
                HeaderName::ProxyAuthorization,
            ),
            _ => return None,
        };
        let Some((user, password)) = &self.settings.credentials else {
            tracing::warn!(method = %req.method, uri = %req.uri, "challenged, but [pua] username is not set");
            return None;
        };
        let challenges: Vec<digest::Challenge> = resp
            .headers
            .all(challenge_header)
            .filter_map(digest::parse_challenge)
            .collect();
        let chosen = challenges
            .iter()
            .find(|c| c.algorithm == Algorithm::Sha256)
            .or_else(|| challenges.first())?;
        let cnonce = format!("{:016x}", self.ids.next());
        Some((
            answer_header,
            digest::authorization(
                chosen,
                user,
                password,
                &req.method,
                &req.uri.to_string(),
                &cnonce,
                1,
            ),
        ))
    }

    // ------------------------------------------------------------------------ publications

    /// Sets the state `source` publishes for `presentity` in `pkg` at the remote presence
    /// server, valid for `expires` seconds (0: remove it). Returns at once; the PUBLISH
    /// leaves from the publication's task. Without `presence_server` it does nothing.
    pub fn publish(
        &self,
        presentity: &str,
        pkg: Pkg,
        source: &str,
        body: impl Into<PublicationBody>,
        expires: u32,
    ) {
        if self.settings.presence_server.is_none() {
            return;
        }
        let key = PubKey {
            presentity: presentity.to_string(),
            pkg,
            source: source.to_string(),
        };
        let until = Instant::now() + Duration::from_secs(expires.into());
        // Typed state stays typed until its PUBLISH leaves (rendered in the task).
        let body: Option<PublicationBody> = (expires > 0).then(|| body.into());
        let mut map = lock(&self.publications);
        if let Some(slot) = map.get(&key) {
            let mut w = lock(&slot.want);
            w.body = body;
            w.until = until;
            w.generation += 1;
            drop(w);
            slot.wake.notify_one();
            return;
        }
        if body.is_none() {
            // Nothing published there: nothing to remove.
            return;
        }
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let slot = Arc::new(PubSlot {
            want: Mutex::new(Want {
                body,
                until,
                generation: 0,
            }),
            wake: Notify::new(),
        });
        map.insert(key.clone(), slot.clone());
        drop(map);
        tokio::spawn(me.run_publication(key, slot));
    }

    /// Ends a publication's task unless a newer state arrived since `generation`.
    fn retire(&self, key: &PubKey, slot: &Arc<PubSlot>, generation: u64) -> bool {
        let mut map = lock(&self.publications);
        if lock(&slot.want).generation != generation {
            return false;
        }
        if map.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(key);
        }
        true
    }

    async fn run_publication(self: Arc<Self>, key: PubKey, slot: Arc<PubSlot>) {
        let mut p = RemotePub {
            etag: None,
            remote_body: None,
            remote_until: Instant::now(),
            refresh_at: None,
            call_id: format!("{}@busylamp", self.ids.unique()),
            from_tag: self.ids.tag(),
            cseq: 0,
            failures: 0,
            retry_at: None,
            min_expires: 0,
            peer: None,
        };
        loop {
            let (body, until, generation) = {
                let w = lock(&slot.want);
                (w.body.clone(), w.until, w.generation)
            };
            let now = Instant::now();
            if let Some(at) = p.retry_at.filter(|at| *at > now) {
                wait(&slot.wake, Some(at)).await;
                continue;
            }
            let live = body.as_ref().filter(|_| until > now);
            let Some(body) = live else {
                if body.is_none() && p.etag.is_some() {
                    // Removed while the server has it: Expires 0 with the ETag. Whatever
                    // the answer, the ETag is spent; a failure is retried a few times.
                    match self.send_publish(&key, &mut p, None, 0).await {
                        Sent::Done | Sent::Gone => p.etag = None,
                        Sent::Retry => {
                            if p.failures >= 3 {
                                p.etag = None;
                            }
                        }
                    }
                    continue;
                }
                // Nothing (more) to say: the remote state ends with its own expiry.
                if self.retire(&key, &slot, generation) {
                    return;
                }
                continue;
            };
            let expires = self.remote_expires(&p, until, now);
            if p.remote_body.as_ref() != Some(body) {
                // New or changed state (also after a 412): the full body.
                let body = body.clone();
                self.send_publish(&key, &mut p, Some(body), expires).await;
                continue;
            }
            let refresh_at = p.refresh_at.unwrap_or(now);
            if now >= refresh_at {
                if p.remote_until >= until {
                    // The server keeps it as long as the publisher wants it: refresh only
                    // if the publisher extends it meanwhile.
                    wait(&slot.wake, Some(until)).await;
                    continue;
                }
                if p.etag.is_some() {
                    self.send_publish(&key, &mut p, None, expires).await;
                } else {
                    // A server that gave no ETag gets the full state again.
                    p.remote_body = None;
                }
                continue;
            }
            wait(&slot.wake, Some(refresh_at.min(until))).await;
        }
    }

    /// Expires for a PUBLISH now: what the publisher still wants, at most
    /// `publish_expires`, at least the server's `Min-Expires`.
    fn remote_expires(&self, p: &RemotePub, until: Instant, now: Instant) -> u32 {
        let left = until.saturating_duration_since(now).as_secs().max(1);
        let e = left.min(u64::from(self.settings.publish_expires)) as u32;
        e.max(p.min_expires)
    }

    /// One PUBLISH (with its 401/407 round) and what its answer does to the publication.
    /// `body`: the state to send (`None`: a refresh, or a removal when `expires` is 0).
    async fn send_publish(
        &self,
        key: &PubKey,
        p: &mut RemotePub,
        body: Option<PublicationBody>,
        expires: u32,
    ) -> Sent {
        let sender = &self.sender;
        let Some(server) = self.settings.presence_server.clone() else {
            return Sent::Gone;
        };
        if p.peer.is_none() {
            p.peer = sender.resolve(server.clone()).await;
        }
        let Some(peer) = p.peer else {
            return self.publish_failed(p, format!("cannot resolve {server}"));
        };
        let uri = match Uri::parse(&key.presentity) {
            Ok(u @ Uri::Sip(_)) => u,
            _ => {
                tracing::warn!(presentity = %key.presentity, "not a SIP URI; not published remotely");
                return Sent::Gone;
            }
        };
        p.cseq += 1;
        let if_match = p.etag.clone();
        let mut h = Headers(Vec::with_capacity(12));
        h.push(HeaderName::MaxForwards, "70");
        h.push(
            HeaderName::From,
            format!("<{}>;tag={}", key.presentity, p.from_tag),
        );
        h.push(HeaderName::To, format!("<{}>", key.presentity));
        h.push(HeaderName::CallId, p.call_id.clone());
        h.push(HeaderName::CSeq, format!("{} PUBLISH", p.cseq));
        h.push(HeaderName::Event, EventHeader::value(key.pkg, None));
        h.push(HeaderName::Expires, expires.to_string());
        if let Some(etag) = &if_match {
            h.push(HeaderName::SipIfMatch, etag.clone());
        }
        self.settings.add_user_agent(&mut h);
        let sent_body = body.clone();
        if body.is_some() {
            h.push(HeaderName::ContentType, content_type_of(key.pkg));
        }
        let req = Request {
            method: "PUBLISH".into(),
            uri,
            headers: h,
            body: body.map(|b| b.rendered().into_owned()).unwrap_or_default(),
        };
        let sent_at = Instant::now();
        let outcome = self.exchange(sender, req, peer, &mut p.cseq).await;
        let resp = match outcome {
            ClientOutcome::Final(r) => r,
            ClientOutcome::Timeout => {
                // Perhaps the server moved: look it up again next time.
                p.peer = None;
                return self.publish_failed(p, "timeout".into());
            }
            ClientOutcome::NotSent(why) => {
                p.peer = None;
                return self.publish_failed(p, why);
            }
        };
        match resp.status {
            200..=299 => {
                p.failures = 0;
                p.retry_at = None;
                if expires == 0 {
                    p.remote_body = None;
                    p.etag = None;
                    return Sent::Done;
                }
                let granted = resp
                    .expires()
                    .ok()
                    .flatten()
                    .filter(|g| *g > 0)
                    .unwrap_or(expires);
                p.etag = resp.headers.get(HeaderName::SipEtag).map(str::to_string);
                if let Some(b) = sent_body {
                    p.remote_body = Some(b);
                }
                p.remote_until = sent_at + Duration::from_secs(granted.into());
                p.refresh_at = Some(sent_at + self.settings.refresh_after(granted));
                Sent::Done
            }
            412 if if_match.is_some() => {
                // RFC 3903 §4.4: the server lost our ETag: publish afresh (full body).
                tracing::debug!(presentity = %key.presentity, "412: publishing afresh");
                p.etag = None;
                p.remote_body = None;
                if expires == 0 {
                    return Sent::Gone;
                }
                Sent::Done
            }
            423 => {
                let min = resp
                    .headers
                    .get(HeaderName::MinExpires)
                    .and_then(parse_delta_seconds)
                    .unwrap_or(0);
                if min > expires && min <= 86_400 {
                    p.min_expires = min;
                    Sent::Done
                } else {
                    self.publish_failed(p, format!("423 without a usable Min-Expires ({min})"))
                }
            }
            status => self.publish_failed(p, format!("{status} {}", resp.reason)),
        }
    }

    fn publish_failed(&self, p: &mut RemotePub, why: String) -> Sent {
        p.failures += 1;
        let delay = self.settings.backoff(p.failures);
        tracing::warn!(
            failures = p.failures,
            retry_in = ?delay,
            "PUBLISH to the presence server failed: {why}"
        );
        p.retry_at = Some(Instant::now() + delay);
        Sent::Retry
    }

    // ----------------------------------------------------------------------- subscriptions

    /// Subscribes `watcher` (our From, a sip: URI) to `event` at `target` (the
    /// Request-URI and To), asking for `expires` seconds; `outbound`: a proxy to send the
    /// requests outside the dialog to (else the target itself). Every NOTIFY and the end of
    /// every dialog reach `on_event`. Refreshed and re-established until
    /// [`Subscription::unsubscribe`].
    pub fn subscribe(
        &self,
        target: &str,
        event: &str,
        watcher: &str,
        expires: u32,
        outbound: Option<&str>,
        on_event: NotifyCallback,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(
            target,
            event,
            watcher,
            expires,
            SubscribeOptions {
                outbound: outbound.map(str::to_string),
                ..Default::default()
            },
            on_event,
        )
    }

    /// [`Client::subscribe`] with [`SubscribeOptions`].
    pub fn subscribe_with(
        &self,
        target: &str,
        event: &str,
        watcher: &str,
        expires: u32,
        options: SubscribeOptions,
        on_event: NotifyCallback,
    ) -> Result<Subscription, SubscribeError> {
        let outbound = options.outbound.as_deref();
        let target_uri = match Uri::parse(target) {
            Ok(u @ Uri::Sip(_)) => u,
            _ => return Err(SubscribeError::BadTarget(target.into())),
        };
        let watcher_uri = match Uri::parse(watcher) {
            Ok(Uri::Sip(u)) => u,
            _ => return Err(SubscribeError::BadWatcher(watcher.into())),
        };
        let outbound = match outbound {
            None => None,
            Some(o) => match Uri::parse(o) {
                Ok(Uri::Sip(u)) => Some(u),
                _ => return Err(SubscribeError::BadOutbound(o.into())),
            },
        };
        let to = match options.to.as_deref() {
            None => target_uri.clone(),
            Some(t) => match Uri::parse(t) {
                Ok(u @ Uri::Sip(_)) => u,
                _ => return Err(SubscribeError::BadTo(t.into())),
            },
        };
        let token = event.split(';').next().unwrap_or("").trim();
        if !crate::sip::text::is_token(token) || event.bytes().any(|b| b < b' ') {
            return Err(SubscribeError::BadEvent(event.into()));
        }
        let shared = Arc::new(SubShared {
            target: target_uri,
            to,
            event: event.trim().to_string(),
            watcher: watcher_uri,
            expires: AtomicU32::new(expires),
            pinned: options.pinned && outbound.is_some(),
            outbound,
            judge: options.judge,
            on_event,
            inner: Mutex::new(SubInner::default()),
            wake: Notify::new(),
        });
        if let Some(me) = self.this.upgrade() {
            tokio::spawn(me.run_subscription(shared.clone()));
        }
        Ok(Subscription { shared })
    }

    /// A NOTIFY that reached us: `200` for one of our subscriptions (its body goes to the
    /// subscriber), `481` otherwise. Returns the status and reason to answer with.
    pub fn on_notify(&self, req: &Request, parsed: &Parsed) -> NotifyAnswer {
        match self.notify_dialog(req, parsed) {
            Err((status, reason)) => NotifyAnswer::new(status, reason),
            Ok((sub, state)) => {
                let event = SubscriptionEvent::Notify {
                    state,
                    content_type: req.headers.get(HeaderName::ContentType).map(str::to_string),
                    body: req.body.clone(),
                };
                let answer = match &sub.judge {
                    Some(judge) => judge(&event),
                    None => {
                        (sub.on_event)(&event);
                        NotifyAnswer::ok()
                    }
                };
                sub.wake.notify_one();
                answer
            }
        }
    }

    /// The subscription a NOTIFY belongs to (its dialog state updated) and what its
    /// Subscription-State says, or the error answer.
    fn notify_dialog(
        &self,
        req: &Request,
        parsed: &Parsed,
    ) -> Result<(Arc<SubShared>, SubState), (u16, &'static str)> {
        let Ok(call_id) = req.call_id() else {
            return Err((400, "Bad Request: no Call-ID"));
        };
        let Some(our_tag) = parsed.to.tag() else {
            return Err((481, "Subscription Does Not Exist"));
        };
        let sub = lock(&self.dialogs)
            .get(&(call_id.to_string(), our_tag))
            .cloned();
        let Some(sub) = sub else {
            return Err((481, "Subscription Does Not Exist"));
        };
        // RFC 6665 §4.1.3 / §8.2.1: the NOTIFY must be for the package we subscribed to.
        let token = |v: &str| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        };
        let event = req.headers.get(HeaderName::Event).map(token);
        if event.as_deref() != Some(token(&sub.event).as_str()) {
            return Err((481, "Subscription Does Not Exist"));
        }
        let state = req
            .headers
            .get(HeaderName::SubscriptionState)
            .and_then(SubState::parse);
        let Some(state) = state else {
            return Err((400, "Bad Request: missing or malformed Subscription-State"));
        };
        {
            let mut inner = lock(&sub.inner);
            let Some(d) = inner.dialog.as_mut().filter(|d| d.call_id == call_id) else {
                return Err((481, "Subscription Does Not Exist"));
            };
            let their_tag = parsed.from.tag();
            match (&d.remote_tag, &their_tag) {
                (Some(a), Some(b)) if a != b => {
                    // A second dialog forked from our SUBSCRIBE: we keep one.
                    return Err((481, "Subscription Does Not Exist"));
                }
                (None, Some(_)) => {
                    // The NOTIFY came before the 200 (RFC 6665 §4.1.2.4): it makes the
                    // dialog; its Record-Route is the route set, in order (§12.1.1).
                    d.remote_tag = their_tag.clone();
                    d.route_set = req
                        .headers
                        .list(HeaderName::RecordRoute)
                        .into_iter()
                        .map(str::to_string)
                        .collect();
                }
                _ => {}
            }
            if d.remote_cseq.is_some_and(|c| parsed.cseq.seq < c) {
                return Err((500, "Server Internal Error: CSeq out of order"));
            }
            d.remote_cseq = Some(parsed.cseq.seq);
            // The notifier's Contact is the remote target from now on (pua_update_contact).
            if let Some(ContactValue::Addr(na)) = parsed.contacts.first() {
                if matches!(na.uri, Uri::Sip(_)) {
                    d.remote_target = na.uri.clone();
                }
            }
            match &state {
                SubState::Terminated {
                    reason,
                    retry_after,
                } => {
                    inner.terminated = Some((reason.clone(), *retry_after));
                }
                SubState::Active { expires: Some(e) } | SubState::Pending { expires: Some(e) } => {
                    inner.notified_expiry = Some(Instant::now() + Duration::from_secs((*e).into()));
                }
                _ => {}
            }
        }
        Ok((sub, state))
    }

    fn register_dialog(&self, sub: &Arc<SubShared>, call_id: &str, tag: &str) {
        lock(&self.dialogs).insert((call_id.to_string(), tag.to_string()), sub.clone());
    }

    fn forget_dialog(&self, call_id: &str, tag: &str) {
        lock(&self.dialogs).remove(&(call_id.to_string(), tag.to_string()));
    }

    async fn run_subscription(self: Arc<Self>, sub: Arc<SubShared>) {
        let mut failures: u32 = 0;
        let mut delay: Option<Duration> = None;
        let mut min_expires: u32 = 0;
        loop {
            if let Some(d) = delay.take() {
                let at = Instant::now() + d;
                while Instant::now() < at && !lock(&sub.inner).stop {
                    wait(&sub.wake, Some(at)).await;
                }
            }
            if lock(&sub.inner).stop {
                (sub.on_event)(&SubscriptionEvent::Ended {
                    reason: "unsubscribed".into(),
                    retry_in: None,
                });
                return;
            }
            // A new dialog.
            let call_id = format!("{}@busylamp", self.ids.unique());
            let tag = self.ids.tag();
            {
                let mut inner = lock(&sub.inner);
                inner.dialog = Some(Dialog {
                    call_id: call_id.clone(),
                    local_tag: tag.clone(),
                    remote_tag: None,
                    local_cseq: 0,
                    remote_cseq: None,
                    remote_target: sub.target.clone(),
                    route_set: Vec::new(),
                    confirmed: false,
                });
                inner.terminated = None;
                inner.notified_expiry = None;
            }
            self.register_dialog(&sub, &call_id, &tag);
            let expires = sub.expires.load(Ordering::Relaxed).max(min_expires);
            let mut lasted = false;
            let ended = match self.send_subscribe(&sub, expires, true).await {
                Answer::Ok(granted) => {
                    let since = Instant::now();
                    let end = self
                        .subscribed(&sub, granted, &mut min_expires, &mut failures)
                        .await;
                    lasted =
                        since.elapsed() >= Duration::from_secs(self.settings.min_refresh.into());
                    end
                }
                Answer::TooBrief(min) if min > min_expires && min <= 86_400 => {
                    min_expires = min;
                    End::Retry {
                        reason: format!("423: Min-Expires {min}"),
                        immediately: true,
                    }
                }
                Answer::TooBrief(_) => End::Retry {
                    reason: "423 without a usable Min-Expires".into(),
                    immediately: false,
                },
                Answer::Failed(why) => End::Retry {
                    reason: why,
                    immediately: false,
                },
            };
            match ended {
                End::Stop => {
                    // Linger so that the final NOTIFY still finds its dialog (Timer F).
                    let linger = Instant::now() + Duration::from_secs(32);
                    loop {
                        let done = lock(&sub.inner).terminated.is_some();
                        if done || Instant::now() >= linger {
                            break;
                        }
                        wait(&sub.wake, Some(linger)).await;
                    }
                    self.forget_dialog(&call_id, &tag);
                    lock(&sub.inner).dialog = None;
                    (sub.on_event)(&SubscriptionEvent::Ended {
                        reason: "unsubscribed".into(),
                        retry_in: None,
                    });
                    return;
                }
                End::GiveUp(reason) => {
                    self.forget_dialog(&call_id, &tag);
                    lock(&sub.inner).dialog = None;
                    tracing::info!(target = %sub.target, event = %sub.event, %reason, "subscription ended for good");
                    (sub.on_event)(&SubscriptionEvent::Ended {
                        reason,
                        retry_in: None,
                    });
                    return;
                }
                End::Retry {
                    reason,
                    immediately,
                } => {
                    self.forget_dialog(&call_id, &tag);
                    lock(&sub.inner).dialog = None;
                    // A subscription that lasted a while was a success: its end is not
                    // a failure in a row. Quick ends back off, so that a notifier that
                    // ends every subscription at once is not hammered.
                    if lasted {
                        failures = 0;
                    }
                    let wait_for = if immediately && failures == 0 {
                        Duration::ZERO
                    } else {
                        self.settings.backoff(failures + 1)
                    };
                    failures += 1;
                    tracing::info!(target = %sub.target, event = %sub.event, %reason, retry_in = ?wait_for, "subscription ended; subscribing again");
                    (sub.on_event)(&SubscriptionEvent::Ended {
                        reason,
                        retry_in: Some(wait_for),
                    });
                    delay = Some(wait_for);
                }
                End::RetryAfter { reason, after } => {
                    self.forget_dialog(&call_id, &tag);
                    lock(&sub.inner).dialog = None;
                    failures += 1;
                    (sub.on_event)(&SubscriptionEvent::Ended {
                        reason,
                        retry_in: Some(after),
                    });
                    delay = Some(after);
                }
            }
        }
    }

    /// An established subscription: refreshes it until it ends; says how it ended.
    async fn subscribed(
        &self,
        sub: &Arc<SubShared>,
        granted: u32,
        min_expires: &mut u32,
        failures: &mut u32,
    ) -> End {
        let mut refresh_at = Instant::now() + self.settings.refresh_after(granted);
        // What the last SUBSCRIBE asked for: a change (`set_expires`) refreshes at once.
        let mut asked = sub.expires.load(Ordering::Relaxed);
        loop {
            let want = sub.expires.load(Ordering::Relaxed);
            if want != asked {
                asked = want;
                refresh_at = Instant::now();
            }
            // What the NOTIFYs said meanwhile.
            let (stop, terminated, notified) = {
                let mut inner = lock(&sub.inner);
                (
                    inner.stop,
                    inner.terminated.clone(),
                    inner.notified_expiry.take(),
                )
            };
            if stop {
                let confirmed = lock(&sub.inner)
                    .dialog
                    .as_ref()
                    .is_some_and(|d| d.confirmed || d.remote_tag.is_some());
                if confirmed && terminated.is_none() {
                    let _ = self.send_subscribe(sub, 0, false).await;
                }
                return End::Stop;
            }
            if let Some((reason, retry_after)) = terminated {
                return ended_by_notifier(reason, retry_after, &self.settings);
            }
            if let Some(exp) = notified {
                // The notifier's idea of the expiry, if sooner (RFC 6665 §4.1.2.3).
                let left = exp.saturating_duration_since(Instant::now()).as_secs() as u32;
                let at = Instant::now() + self.settings.refresh_after(left.max(1));
                if at < refresh_at {
                    refresh_at = at;
                }
            }
            if Instant::now() < refresh_at {
                wait(&sub.wake, Some(refresh_at)).await;
                continue;
            }
            let expires = sub.expires.load(Ordering::Relaxed).max(*min_expires);
            match self.send_subscribe(sub, expires, false).await {
                Answer::Ok(granted) => {
                    *failures = 0;
                    refresh_at = Instant::now() + self.settings.refresh_after(granted);
                }
                Answer::TooBrief(min) if min > *min_expires && min <= 86_400 => {
                    *min_expires = min;
                }
                Answer::TooBrief(_) => {
                    return End::Retry {
                        reason: "refresh: 423 without a usable Min-Expires".into(),
                        immediately: false,
                    }
                }
                Answer::Failed(why) => {
                    // RFC 6665 §4.1.2.2 / RFC 5057: the dialog is gone (481) or unusable;
                    // a new subscription replaces it.
                    let immediately = why.starts_with("481");
                    return End::Retry {
                        reason: format!("refresh failed: {why}"),
                        immediately,
                    };
                }
            }
        }
    }

    /// Sends a SUBSCRIBE: the initial one (`initial`) or one in the dialog (a refresh, or
    /// an unsubscribe with `expires` 0).
    async fn send_subscribe(&self, sub: &Arc<SubShared>, expires: u32, initial: bool) -> Answer {
        let sender = &self.sender;
        // The request from the dialog state as it is now.
        let (mut req, next_hop, mut cseq) = {
            let mut inner = lock(&sub.inner);
            let Some(d) = inner.dialog.as_mut() else {
                return Answer::Failed("no dialog".into());
            };
            d.local_cseq += 1;
            let next_hop = match d.route_set.first() {
                _ if sub.pinned => sub.outbound.clone(),
                Some(r) => crate::sip::NameAddr::parse(r)
                    .ok()
                    .and_then(|na| na.uri.as_sip().cloned()),
                None if initial => sub
                    .outbound
                    .clone()
                    .or_else(|| sub.target.as_sip().cloned()),
                None => d.remote_target.as_sip().cloned(),
            };
            let mut h = Headers(Vec::with_capacity(14));
            h.push(HeaderName::MaxForwards, "70");
            for r in &d.route_set {
                h.push(HeaderName::Route, r.clone());
            }
            h.push(
                HeaderName::From,
                format!("<{}>;tag={}", Uri::Sip(sub.watcher.clone()), d.local_tag),
            );
            let to = match &d.remote_tag {
                Some(t) => format!("<{}>;tag={t}", sub.to),
                None => format!("<{}>", sub.to),
            };
            h.push(HeaderName::To, to);
            h.push(HeaderName::CallId, d.call_id.clone());
            h.push(HeaderName::CSeq, format!("{} SUBSCRIBE", d.local_cseq));
            h.push(HeaderName::Event, sub.event.clone());
            h.push(HeaderName::Expires, expires.to_string());
            if let Some(a) = accept_for(&sub.event) {
                h.push(HeaderName::Accept, a);
            }
            self.settings.add_user_agent(&mut h);
            let req = Request {
                method: "SUBSCRIBE".into(),
                uri: if initial {
                    sub.target.clone()
                } else {
                    d.remote_target.clone()
                },
                headers: h,
                body: Vec::new(),
            };
            (req, next_hop, d.local_cseq)
        };
        let Some(next_hop) = next_hop else {
            return Answer::Failed("no SIP URI to send to".into());
        };
        let Some(peer) = sender.resolve(next_hop.clone()).await else {
            return Answer::Failed(format!("cannot resolve {next_hop}"));
        };
        let user = sub.watcher.user.clone().unwrap_or_default();
        let transport = if peer.proto == Proto::Tcp {
            ";transport=tcp"
        } else {
            ""
        };
        let at = if user.is_empty() { "" } else { "@" };
        req.headers.push(
            HeaderName::Contact,
            format!("<sip:{user}{at}{}{transport}>", sender.advertised(&peer)),
        );
        let outcome = self.exchange(sender, req, peer, &mut cseq).await;
        if let Some(d) = lock(&sub.inner).dialog.as_mut() {
            d.local_cseq = d.local_cseq.max(cseq);
        }
        let resp = match outcome {
            ClientOutcome::Final(r) => r,
            ClientOutcome::Timeout => return Answer::Failed("timeout".into()),
            ClientOutcome::NotSent(why) => return Answer::Failed(why),
        };
        match resp.status {
            200..=299 => {
                let granted = resp.expires().ok().flatten().unwrap_or(expires);
                if initial {
                    let mut inner = lock(&sub.inner);
                    if let Some(d) = inner.dialog.as_mut() {
                        let their_tag = resp.to_hdr().ok().and_then(|t| t.tag());
                        if d.remote_tag.is_none() {
                            d.remote_tag = their_tag;
                        }
                        if !d.confirmed {
                            // RFC 3261 §12.1.2: the route set is the Record-Route reversed.
                            let mut rr: Vec<String> = resp
                                .headers
                                .list(HeaderName::RecordRoute)
                                .into_iter()
                                .map(str::to_string)
                                .collect();
                            if !rr.is_empty() {
                                rr.reverse();
                                d.route_set = rr;
                            }
                            d.confirmed = true;
                        }
                        if let Ok(contacts) = resp.contacts() {
                            if let Some(ContactValue::Addr(na)) = contacts.first() {
                                // A NOTIFY's Contact, when one came first, is newer.
                                if d.remote_cseq.is_none() && matches!(na.uri, Uri::Sip(_)) {
                                    d.remote_target = na.uri.clone();
                                }
                            }
                        }
                    }
                }
                if granted == 0 && expires > 0 {
                    return Answer::Failed("200 with Expires: 0".into());
                }
                Answer::Ok(granted.max(1))
            }
            423 => Answer::TooBrief(
                resp.headers
                    .get(HeaderName::MinExpires)
                    .and_then(parse_delta_seconds)
                    .unwrap_or(0),
            ),
            s => Answer::Failed(format!("{s} {}", resp.reason)),
        }
    }
}

/// How the notifier's `terminated` NOTIFY ends a subscription (RFC 6665 §4.1.3).
fn ended_by_notifier(reason: Option<String>, retry_after: Option<u32>, s: &Settings) -> End {
    let text = format!(
        "terminated by the notifier (reason {})",
        reason.as_deref().unwrap_or("none")
    );
    match reason.as_deref() {
        Some("deactivated") | Some("timeout") => End::Retry {
            reason: text,
            immediately: true,
        },
        Some("probation") | Some("giveup") => End::RetryAfter {
            reason: text,
            after: retry_after
                .map(|r| Duration::from_secs(r.into()))
                .unwrap_or(s.retry_min),
        },
        Some("rejected") | Some("noresource") | Some("invariant") => End::GiveUp(text),
        _ => match retry_after {
            Some(r) => End::RetryAfter {
                reason: text,
                after: Duration::from_secs(r.into()),
            },
            None => End::Retry {
                reason: text,
                immediately: false,
            },
        },
    }
}

/// The remote side of one publication, as its task sees it.
struct RemotePub {
    etag: Option<String>,
    /// The body the server has (`None`: nothing, or unknown after a 412).
    remote_body: Option<PublicationBody>,
    remote_until: Instant,
    refresh_at: Option<Instant>,
    call_id: String,
    from_tag: String,
    cseq: u32,
    failures: u32,
    retry_at: Option<Instant>,
    min_expires: u32,
    peer: Option<Peer>,
}

enum Sent {
    Done,
    /// Failed; `retry_at` is set.
    Retry,
    /// Nothing more to do for this state.
    Gone,
}

enum Answer {
    Ok(u32),
    TooBrief(u32),
    Failed(String),
}

enum End {
    /// Unsubscribed.
    Stop,
    GiveUp(String),
    Retry {
        reason: String,
        immediately: bool,
    },
    RetryAfter {
        reason: String,
        after: Duration,
    },
}

/// One subscription dialog (RFC 3261 §12 as the subscriber keeps it).
#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    remote_target: Uri,
    route_set: Vec<String>,
    /// A 2xx to the initial SUBSCRIBE arrived.
    confirmed: bool,
}

#[derive(Default)]
struct SubInner {
    dialog: Option<Dialog>,
    stop: bool,
    /// A NOTIFY said terminated: (reason, retry-after).
    terminated: Option<(Option<String>, Option<u32>)>,
    /// A NOTIFY's `expires`, as an instant.
    notified_expiry: Option<Instant>,
}

struct SubShared {
    target: Uri,
    /// The To URI (the target unless the subscriber said otherwise).
    to: Uri,
    event: String,
    watcher: SipUri,
    /// Asked for in every SUBSCRIBE; [`Subscription::set_expires`] changes it.
    expires: AtomicU32,
    outbound: Option<SipUri>,
    /// Every request goes to `outbound`.
    pinned: bool,
    judge: Option<NotifyJudge>,
    on_event: NotifyCallback,
    inner: Mutex<SubInner>,
    wake: Notify,
}

/// A subscription the client keeps up. Dropping the handle does not end it: call
/// [`Subscription::unsubscribe`].
#[derive(Clone)]
pub struct Subscription {
    shared: Arc<SubShared>,
}

impl Subscription {
    /// Ends the subscription (SUBSCRIBE with `Expires: 0` in its dialog); the callback
    /// hears [`SubscriptionEvent::Ended`] with `retry_in: None` once it is over.
    pub fn unsubscribe(&self) {
        lock(&self.shared.inner).stop = true;
        self.shared.wake.notify_one();
    }

    /// Asks for `expires` seconds from now on: the subscription is refreshed at once with
    /// it when it differs from what the last SUBSCRIBE asked (a shared line refreshes more
    /// often while a phone holds a seized appearance).
    pub fn set_expires(&self, expires: u32) {
        let before = self.shared.expires.swap(expires, Ordering::Relaxed);
        if before != expires {
            self.shared.wake.notify_one();
        }
    }

    /// The current dialog's Call-ID, when one exists.
    pub fn call_id(&self) -> Option<String> {
        lock(&self.shared.inner)
            .dialog
            .as_ref()
            .map(|d| d.call_id.clone())
    }

    /// Whether the current dialog is established (2xx or NOTIFY seen).
    pub fn is_established(&self) -> bool {
        lock(&self.shared.inner)
            .dialog
            .as_ref()
            .is_some_and(|d| d.confirmed || d.remote_tag.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            presence_server: None,
            credentials: None,
            publish_expires: 3600,
            refresh_margin: 30,
            min_refresh: 10,
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            user_agent: "t".into(),
        }
    }

    /// A sender that keeps each request with the channel its answer goes into.
    #[derive(Default)]
    struct Mock {
        sent: Mutex<Vec<(Request, oneshot::Sender<ClientOutcome>)>>,
        n: std::sync::atomic::AtomicU64,
    }

    impl SipSender for Mock {
        fn send(&self, req: Request, _to: Peer) -> oneshot::Receiver<ClientOutcome> {
            let (tx, rx) = oneshot::channel();
            lock(&self.sent).push((req, tx));
            rx
        }
        fn resolve(&self, _uri: SipUri) -> Pin<Box<dyn Future<Output = Option<Peer>> + Send + '_>> {
            Box::pin(async {
                Some(Peer {
                    proto: Proto::Udp,
                    remote: "192.0.2.1:5060".parse().unwrap(),
                    local: "192.0.2.2:5060".parse().unwrap(),
                    conn: None,
                })
            })
        }
        fn via_for(&self, _to: &Peer) -> String {
            let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKm{n}")
        }
        fn advertised(&self, _to: &Peer) -> String {
            "192.0.2.2:5060".into()
        }
    }

    impl Mock {
        async fn wait_for(&self, n: usize) {
            for _ in 0..1000 {
                if lock(&self.sent).len() >= n {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("{n} requests expected, {} sent", lock(&self.sent).len());
        }
        /// Answers (and forgets) the `i`-th unanswered request.
        fn answer(&self, i: usize, status: u16, etag: &str) {
            let (req, tx) = lock(&self.sent).remove(i);
            let mut r = req.response(status, "Scripted", Some("x"));
            r.headers.push(HeaderName::SipEtag, etag);
            r.headers.push(HeaderName::Expires, "300");
            let _ = tx.send(ClientOutcome::Final(r));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rfc3903_publications_through_the_sender_trait_one_in_flight_newest_wins() {
        let mock = Arc::new(Mock::default());
        let client = Client::new(
            Settings {
                presence_server: Some(match Uri::parse("sip:192.0.2.1").unwrap() {
                    Uri::Sip(u) => u,
                    _ => unreachable!(),
                }),
                ..settings()
            },
            Ids::new().expect("OS RNG"),
            mock.clone(),
        );
        let aor = "sip:1001@example.test";
        client.publish(aor, Pkg::Presence, "s", b"<a/>", 600);
        mock.wait_for(1).await;
        client.publish(aor, Pkg::Presence, "s", b"<b/>", 600);
        client.publish(aor, Pkg::Presence, "s", b"<c/>", 600);
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(lock(&mock.sent).len(), 1, "one PUBLISH in flight");
        assert_eq!(lock(&mock.sent)[0].0.body, b"<a/>");
        mock.answer(0, 200, "e1");
        mock.wait_for(1).await;
        {
            let sent = lock(&mock.sent);
            let r = &sent[0].0;
            assert_eq!(r.body, b"<c/>", "the newest state only");
            assert_eq!(r.headers.get(HeaderName::SipIfMatch), Some("e1"));
            assert_eq!(r.cseq().unwrap().seq, 2);
        }
        mock.answer(0, 200, "e2");
        client.publish(aor, Pkg::Presence, "s", b"", 0);
        mock.wait_for(1).await;
        {
            let sent = lock(&mock.sent);
            let r = &sent[0].0;
            assert_eq!(r.headers.get(HeaderName::Expires), Some("0"));
            assert_eq!(r.headers.get(HeaderName::SipIfMatch), Some("e2"));
            assert!(r.body.is_empty());
        }
        mock.answer(0, 200, "");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(client.remote_publications(), 0, "the task ended");
    }

    #[test]
    fn refresh_timing_and_backoff() {
        let s = settings();
        assert_eq!(s.refresh_after(3600), Duration::from_secs(3570));
        assert_eq!(s.refresh_after(60), Duration::from_secs(30));
        assert_eq!(s.refresh_after(4), Duration::from_secs(10), "min_refresh");
        assert_eq!(s.backoff(1), Duration::from_secs(2));
        assert_eq!(s.backoff(2), Duration::from_secs(4));
        assert_eq!(s.backoff(9), Duration::from_secs(300));
        assert_eq!(s.backoff(100), Duration::from_secs(300));
    }

    #[test]
    fn rfc6665_8_2_3_subscription_state() {
        assert_eq!(
            SubState::parse("active;expires=600"),
            Some(SubState::Active { expires: Some(600) })
        );
        assert_eq!(
            SubState::parse("terminated; reason=Deactivated ;retry-after=5"),
            Some(SubState::Terminated {
                reason: Some("deactivated".into()),
                retry_after: Some(5)
            })
        );
        assert_eq!(
            SubState::parse("waiting"),
            Some(SubState::Pending { expires: None })
        );
        assert_eq!(SubState::parse(""), None);
        assert_eq!(SubState::parse("active;=x"), None);
    }

    #[test]
    fn rfc6665_4_1_3_what_a_termination_reason_allows() {
        let s = settings();
        let end = |r: &str, ra: Option<u32>| ended_by_notifier(Some(r.into()), ra, &s);
        assert!(matches!(
            end("deactivated", None),
            End::Retry {
                immediately: true,
                ..
            }
        ));
        assert!(matches!(
            end("timeout", None),
            End::Retry {
                immediately: true,
                ..
            }
        ));
        assert!(
            matches!(end("probation", Some(7)), End::RetryAfter { after, .. } if after == Duration::from_secs(7))
        );
        assert!(
            matches!(end("giveup", None), End::RetryAfter { after, .. } if after == Duration::from_secs(2))
        );
        assert!(matches!(end("rejected", None), End::GiveUp(_)));
        assert!(matches!(end("noresource", None), End::GiveUp(_)));
        assert!(matches!(
            ended_by_notifier(None, None, &s),
            End::Retry {
                immediately: false,
                ..
            }
        ));
    }
}
