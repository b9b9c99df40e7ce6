//! The presence server (RFC 6665 SUBSCRIBE/NOTIFY, RFC 3903 PUBLISH): presentities,
//! publications, subscriptions and NOTIFY generation.
//!
//! One writer per presentity: everything about one presentity (its publications, its
//! watchers' CSeqs and versions, the order of their NOTIFYs) changes under one shard lock,
//! held without `.await`. A subscription has at most one NOTIFY in flight; a change meanwhile
//! is sent, as the newest state, when that NOTIFY is answered. So NOTIFYs of one subscription
//! leave in CSeq order and a lamp can never end on an older state than the last one published.
//!
//! Every NOTIFY's CSeq and version are written (group commit) before the NOTIFY leaves, so
//! after a restart, even a `kill -9`, they continue from where they were.

pub mod event;
pub mod notify;
pub mod package;
pub mod packages;

use crate::clock::Clock;
use crate::config::{Config, Policy, PresenceConfig, VendorProfile};
use crate::deadline::Deadlines;
use crate::domain::Domains;
use crate::events::{Event, EventBus, SubscriptionChange};
use crate::ids::Ids;
use crate::sip::body::watcherinfo;
use crate::sip::message::Parsed;
use crate::sip::{ContactValue, HasHeaders, HeaderName, Host, Request, Response, Uri};
use crate::storage::presence::{publication_key, subscription_key};
use crate::storage::{
    Durable, FlowRecord, PresenceStore, PresenceWrite, PublicationBody, PublicationRecord,
    StorageError, SubState, SubscriptionRecord,
};
use crate::transport::{Peer, Proto};
use event::{parse_event, EventError, Pkg, ALLOW_EVENTS};
use notify::{NotifyParts, SubscriptionState};
use package::{EventPackage, PublishedBody, RenderOptions, Rendered, WatcherView};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const SHARDS: usize = 64;

type DialogIndex = HashMap<Arc<[u8]>, ResKey>;
/// Version substituted per watcher in a document rendered once for a whole fan-out.
const VERSION_SENTINEL: u32 = u32::MAX;
/// Watcher changes a winfo subscription queues for a partial document; beyond this it gets
/// the full list instead (bounds memory under a SUBSCRIBE flood).
const MAX_WINFO_CHANGES: usize = 256;
/// A dialog publication whose dialogs have all ended is kept this long (seconds), long
/// enough for every watcher to see the terminated state, then the lamp goes idle. Without
/// it, phones that publish each call anew would pile up ended calls until their expiry.
const TERMINATED_LINGER: u32 = 5;

/// Whether the body is dialog state whose dialogs have all ended.
fn all_dialogs_terminated(pkg: Pkg, body: &PublicationBody) -> bool {
    matches!(pkg, Pkg::Dialog | Pkg::Sla) && crate::storage::presence::all_dialogs_terminated(body)
}

/// Packages whose documents carry a per-watcher `version` (RFC 4235, RFC 3858).
fn versioned(pkg: Pkg) -> bool {
    matches!(pkg, Pkg::Dialog | Pkg::Sla | Pkg::Winfo)
}

/// One presentity's state for one package.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResKey {
    pub presentity: Arc<str>,
    pub pkg: Pkg,
}

/// Names one subscription for the NOTIFY outcome that comes back later.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubRef {
    pub res: ResKey,
    pub key: Arc<[u8]>,
}

/// A NOTIFY ready to go out as a client transaction.
#[derive(Debug)]
pub struct OutNotify {
    pub sub: SubRef,
    pub request: Request,
    pub to: Peer,
}

/// How a NOTIFY ended, as far as the subscription cares (RFC 6665 §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Timer F, a transport error, 408, 5xx or another answer about this request only:
    /// retried with backoff if the profile keeps subscriptions on timeout.
    Failed(u16),
    /// 481 and the answers that end the dialog or the subscription usage (RFC 5057 §5.1:
    /// 404, 405, 410, 416, 482-485, 489, 501, 502, 604): the subscription ends.
    Rejected(u16),
}

impl Outcome {
    pub fn from_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Delivered,
            // The watcher says the subscription (or its dialog, or the package) is gone.
            // RFC 5057 §5.1: these end the dialog (404, 410, 416, 482-485, 502, 604) or this
            // usage of it (405, 481, 489, 501).
            404 | 405 | 410 | 416 | 481..=485 | 489 | 501 | 502 | 604 => Outcome::Rejected(status),
            // Anything else concerns this one request (RFC 5057 §5: 401/407, 491, 403...):
            // the subscription stays, the state is sent again later.
            s => Outcome::Failed(s),
        }
    }
}

/// Where NOTIFYs leave: the server core, which owns the client transactions.
pub trait NotifySink: Send + Sync {
    /// Sends each NOTIFY once `after` (the write of its CSeq and version) is on disk, and
    /// reports each outcome to [`Presence::notify_outcome`].
    fn send_notifies(&self, notifies: Vec<OutNotify>, after: Option<Durable>);
}

/// What the presence server decided about a request.
pub enum Reply {
    Now(Response),
    /// Send `response` once `durable` resolves (acknowledged means durable), then the
    /// NOTIFYs.
    AfterWrite {
        response: Response,
        durable: Durable,
        notifies: Vec<OutNotify>,
    },
}

/// Who sent a SUBSCRIBE or PUBLISH, as digest auth established it.
pub enum Requester<'a> {
    /// Trusted source or open mode.
    Unchecked,
    User(&'a str),
}

/// An in-process publication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("package {0} cannot be published")]
    NotPublishable(&'static str),
    #[error("{0}")]
    Body(#[from] crate::sip::body::BodyError),
    #[error("too many publications")]
    Full,
}

/// A snapshot of one subscription for the dashboard and the control API.
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    pub presentity: String,
    pub event: &'static str,
    pub watcher: String,
    pub state: SubState,
    pub expires_at: u64,
    pub local_cseq: u32,
    pub version: u32,
    /// NOTIFYs that failed in a row (408, timeout, 5xx) and are being retried.
    pub failures: u32,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone)]
struct Publication {
    rec: PublicationRecord,
}

/// What a NOTIFY writes before it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persist {
    /// Nothing: a final NOTIFY of a subscription being deleted.
    No,
    /// Its CSeq and version only: the rest of the record is unchanged.
    Sequence,
    /// The whole record: it changed (new subscription, refresh, authorization).
    Record,
}

/// What a subscription owes its watcher once the NOTIFY in flight is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Nothing,
    /// The state changed: send the current document.
    Update,
}

#[derive(Debug)]
struct Sub {
    rec: SubscriptionRecord,
    key: Arc<[u8]>,
    /// Where its NOTIFYs go, worked out once (and again on a refresh), not per NOTIFY.
    route: NotifyRoute,
    profile: Arc<VendorProfile>,
    in_flight: bool,
    owed: Owed,
    failures: u32,
    /// winfo only: watchers changed since the last NOTIFY (sent as a partial document).
    winfo_changes: Vec<watcherinfo::Watcher>,
    /// winfo only: the next NOTIFY must be a full document.
    winfo_full: bool,
}

/// A subscription that has ended while a NOTIFY of it was unanswered: its final NOTIFY waits
/// for that answer (or timeout), so it leaves after it, with the next CSeq.
#[derive(Debug)]
struct Closing {
    sub: Sub,
    reason: &'static str,
}

#[derive(Debug, Default)]
struct Resource {
    pubs: Vec<Publication>,
    subs: HashMap<Arc<[u8]>, Sub>,
    /// Ended subscriptions whose final NOTIFY waits for the one in flight.
    closing: HashMap<Arc<[u8]>, Closing>,
    /// Hash of the document last fanned out (default view): an unchanged document is not
    /// re-sent.
    doc_hash: u64,
    last_fanout: Option<Instant>,
    flush_scheduled: bool,
    /// The only source whose changes wait in the coalescing window (`dialog;sla` echo
    /// suppression); `None` when several did or none.
    pending_source: Option<Option<String>>,
    /// Documents rendered from the current publications (see [`Presence::render_for`]).
    /// A `RefCell`: the resource is only reached under its shard's lock.
    rendered: std::cell::RefCell<RenderCache>,
}

/// Rendered documents per (Accept, render options), version left as the sentinel, valid while
/// the publications are those whose arrival numbers hash to `pubs_key`: every change of a
/// publication gives it a new number, so a changed set never matches an old key.
#[derive(Debug, Default)]
struct RenderCache {
    pubs_key: u64,
    docs: HashMap<(Vec<String>, RenderOptions), Option<Rendered>>,
}

/// Most distinct (Accept, options) views cached per resource (each is one document).
const MAX_CACHED_VIEWS: usize = 16;

fn pubs_key(pubs: &[Publication]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ pubs.len() as u64;
    for p in pubs {
        h ^= p.rec.seq;
        h = h.wrapping_mul(0x0100_0000_01b3).rotate_left(17);
    }
    h
}

impl Resource {
    fn is_empty(&self) -> bool {
        self.pubs.is_empty() && self.subs.is_empty() && self.closing.is_empty()
    }

    /// A watcher was just sent the current document outside a fan-out. While changes wait
    /// in the coalescing window that is not the document the last fan-out sent, so the
    /// fan-out closing the window must not be skipped as "unchanged" (the watcher would be
    /// left on the in-between state).
    fn sent_current(&mut self) {
        if self.flush_scheduled {
            self.doc_hash = 0;
        }
    }
}

#[derive(Default)]
struct Shard {
    resources: HashMap<ResKey, Resource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Timer {
    PublicationExpiry(ResKey, String),
    SubscriptionExpiry(ResKey, Arc<[u8]>),
    Flush(ResKey),
    Retry(ResKey, Arc<[u8]>),
}

pub struct Presence {
    cfg: PresenceConfig,
    domains: Domains,
    server_header: String,
    shards: Box<[Mutex<Shard>]>,
    /// Subscription dialog → its resource, for in-dialog SUBSCRIBEs (whose Request-URI is
    /// our Contact, not the presentity).
    dialogs: Box<[Mutex<DialogIndex>]>,
    store: Arc<dyn PresenceStore>,
    clock: Clock,
    ids: Ids,
    timers: Mutex<Deadlines<Timer>>,
    timers_changed: Notify,
    subscription_count: AtomicUsize,
    publication_count: AtomicUsize,
    seq: AtomicU64,
    sink: OnceLock<Weak<dyn NotifySink>>,
    events: EventBus,
    default_profile: Arc<VendorProfile>,
    profiles: Vec<Arc<VendorProfile>>,
    rules: Vec<Rule>,
}

/// Takes one of `cap` places in `count`, checked and taken in one atomic step (a check, then
/// a later increment, let racing requests on other shards all pass the check).
fn take_place(count: &AtomicUsize, cap: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fn package(pkg: Pkg) -> Option<&'static dyn EventPackage> {
    packages::lookup(pkg.key())
}

/// One side of an authorization rule, parsed once from the config.
#[derive(Debug, Clone)]
enum Pattern {
    Any,
    /// `*@domain`, lowercased.
    Domain(String),
    /// A canonical AOR.
    Aor(String),
}

impl Pattern {
    fn parse(pattern: &str, domains: &Domains) -> Pattern {
        if pattern == "*" {
            return Pattern::Any;
        }
        if let Some(d) = pattern.strip_prefix("*@") {
            return Pattern::Domain(d.to_ascii_lowercase());
        }
        match Uri::parse(pattern) {
            Ok(Uri::Sip(s)) => Pattern::Aor(domains.canonical_user(&s).unwrap_or_else(|| s.aor())),
            // Config validation refuses anything else; match nothing rather than everything.
            _ => Pattern::Aor(String::new()),
        }
    }

    fn matches(&self, aor: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Domain(d) => aor
                .rsplit('@')
                .next()
                .is_some_and(|h| h.eq_ignore_ascii_case(d)),
            Pattern::Aor(a) => a == aor,
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    presentity: Pattern,
    watcher: Pattern,
    action: Policy,
}

/// Media types of an Accept header, lowercased, without parameters.
fn accept_list(req: &Request) -> Vec<String> {
    req.headers
        .list(HeaderName::Accept)
        .into_iter()
        .filter_map(|v| {
            let t = v.split(';').next()?.trim().to_ascii_lowercase();
            (!t.is_empty()).then_some(t)
        })
        .collect()
}

fn accepts(accept: &[String], media: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    let major = media.split('/').next().unwrap_or("");
    accept
        .iter()
        .any(|a| a == media || a == "*/*" || a.strip_suffix("/*").is_some_and(|m| m == major))
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Udp => "udp",
        Proto::Tcp => "tcp",
    }
}

fn flow_of(peer: &Peer) -> FlowRecord {
    FlowRecord {
        proto: proto_name(peer.proto).into(),
        remote: peer.remote.to_string(),
        local: peer.local.to_string(),
    }
}

/// Where NOTIFYs of a subscription go: the first Route if the dialog has one, else the
/// watcher's Contact when it is the address the SUBSCRIBE came from, else (a phone behind
/// NAT, whose Contact is a private address) the address the SUBSCRIBE came from.
fn notify_target(rec: &SubscriptionRecord) -> Option<Peer> {
    let proto = if rec.flow.proto == "tcp" {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let remote: SocketAddr = rec.flow.remote.parse().ok()?;
    let local: SocketAddr = rec.flow.local.parse().ok()?;
    let hop = |uri: &str| -> Option<SocketAddr> {
        let u = Uri::parse(uri).ok()?;
        let s = u.as_sip()?;
        let ip = s.host.ip()?;
        Some(SocketAddr::new(ip, s.port.unwrap_or(5060)))
    };
    let first_route = rec.route_set.first().and_then(|r| {
        let r = r.trim();
        let inner = r
            .strip_prefix('<')
            .and_then(|x| x.split('>').next())
            .unwrap_or(r);
        hop(inner)
    });
    let to = match first_route {
        Some(a) => a,
        None => match hop(&rec.remote_target) {
            Some(a) if a.ip() == remote.ip() && proto == Proto::Udp => a,
            _ => remote,
        },
    };
    Some(Peer {
        proto,
        remote: to,
        local,
        conn: None,
    })
}

/// Where a subscription's NOTIFYs go: the next hop, the Request-URI (remote target) and our
/// Via `host:port` (from our Contact).
#[derive(Debug, Clone)]
struct NotifyRoute {
    to: Peer,
    request_uri: Uri,
    via_sent_by: String,
}

fn notify_route(rec: &SubscriptionRecord) -> Option<NotifyRoute> {
    Some(NotifyRoute {
        to: notify_target(rec)?,
        request_uri: Uri::parse(&rec.remote_target).ok()?,
        via_sent_by: sent_by(&rec.contact),
    })
}

/// `host:port` of a SIP URI (our Contact), for the Via of our NOTIFYs.
fn sent_by(contact: &str) -> String {
    match Uri::parse(contact) {
        Ok(Uri::Sip(s)) => match s.port {
            Some(p) => format!("{}:{p}", s.host),
            None => s.host.to_string(),
        },
        _ => contact.to_string(),
    }
}

/// Replaces the one sentinel version attribute value in a document rendered for a whole
/// fan-out with this watcher's version.
fn with_version(doc: &Rendered, version: u32) -> Rendered {
    let needle = format!("\"{VERSION_SENTINEL}\"");
    let body = match std::str::from_utf8(&doc.body) {
        Ok(s) => s
            .replacen(&needle, &format!("\"{version}\""), 1)
            .into_bytes(),
        Err(_) => doc.body.clone(),
    };
    Rendered {
        content_type: doc.content_type,
        body,
    }
}

impl Presence {
    /// `events`: where "what changed" notices go (the dashboard, the control API).
    pub fn new(
        cfg: &Config,
        store: Arc<dyn PresenceStore>,
        events: EventBus,
        clock: Clock,
    ) -> Arc<Presence> {
        let profiles: Vec<Arc<VendorProfile>> = cfg
            .presence
            .profiles
            .iter()
            .cloned()
            .map(Arc::new)
            .collect();
        let default_profile = profiles
            .iter()
            .find(|p| p.name == "default")
            .cloned()
            .unwrap_or_else(|| Arc::new(VendorProfile::default()));
        let domains = Domains::new(cfg);
        let rules = cfg
            .presence
            .rules
            .iter()
            .map(|r| Rule {
                presentity: Pattern::parse(&r.presentity, &domains),
                watcher: Pattern::parse(&r.watcher, &domains),
                action: r.action,
            })
            .collect();
        Arc::new(Presence {
            cfg: cfg.presence.clone(),
            domains,
            rules,
            server_header: cfg.server.server_header.clone(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            dialogs: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            store,
            clock,
            ids: Ids::new(),
            timers: Mutex::new(Deadlines::new()),
            timers_changed: Notify::new(),
            subscription_count: AtomicUsize::new(0),
            publication_count: AtomicUsize::new(0),
            seq: AtomicU64::new(1),
            sink: OnceLock::new(),
            events,
            default_profile,
            profiles,
        })
    }

    fn emit(&self, event: Event) {
        self.events.publish(event);
    }

    fn emit_subscription(&self, change: SubscriptionChange, pkg: Pkg, rec: &SubscriptionRecord) {
        self.emit(Event::Subscription {
            change,
            presentity: rec.presentity.clone(),
            event: pkg.key(),
            watcher: rec.watcher.clone(),
        });
    }

    /// Where NOTIFYs go; set once by the server core after it is built.
    pub fn set_sink(&self, sink: Weak<dyn NotifySink>) {
        let _ = self.sink.set(sink);
    }

    pub fn subscription_count(&self) -> usize {
        self.subscription_count.load(Ordering::Relaxed)
    }

    pub fn publication_count(&self) -> usize {
        self.publication_count.load(Ordering::Relaxed)
    }

    fn shard(&self, presentity: &str) -> MutexGuard<'_, Shard> {
        let i = (hash_of(presentity) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dialog_index(&self, key: &[u8]) -> MutexGuard<'_, DialogIndex> {
        let i = (hash_of(key) as usize) % SHARDS;
        self.dialogs[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn profile_for(&self, user_agent: Option<&str>) -> Arc<VendorProfile> {
        if let Some(ua) = user_agent {
            if let Some(p) = self
                .profiles
                .iter()
                .find(|p| !p.user_agent.is_empty() && ua.contains(p.user_agent.as_str()))
            {
                return p.clone();
            }
        }
        self.default_profile.clone()
    }

    fn schedule(&self, timer: Timer, at: Instant) {
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .schedule(timer, at);
        self.timers_changed.notify_one();
    }

    fn cancel(&self, timer: &Timer) {
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel(timer);
    }

    fn at_unix(&self, unix: u64) -> Instant {
        self.clock.instant_of(unix).into_std()
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn send(&self, notifies: Vec<OutNotify>, after: Option<Durable>) {
        if notifies.is_empty() {
            return;
        }
        match self.sink.get().and_then(Weak::upgrade) {
            Some(s) => s.send_notifies(notifies, after),
            None => tracing::debug!(count = notifies.len(), "no NOTIFY sink; dropping"),
        }
    }

    /// The authorization decision for a watcher (RFC 3856 §5.1.2): the first matching rule,
    /// else the domain policy. A mailbox's state (message-summary) and a presentity's
    /// watcher list (winfo) are only for the owner unless a rule says otherwise.
    fn policy(&self, pkg: Pkg, presentity: &str, watcher: &str, watcher_ours: bool) -> Policy {
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.presentity.matches(presentity) && r.watcher.matches(watcher))
        {
            return r.action;
        }
        if watcher == presentity {
            return Policy::Allow;
        }
        if matches!(pkg, Pkg::MessageSummary | Pkg::Winfo) {
            return Policy::Block;
        }
        if watcher_ours {
            self.cfg.same_domain
        } else {
            self.cfg.other_domains
        }
    }

    fn error_reply(req: &Request, status: u16, reason: &str, to_tag: &str) -> Response {
        let mut r = req.response(status, reason, Some(to_tag));
        r.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        r
    }

    /// The Expires a SUBSCRIBE or PUBLISH asked for, checked against min/max (RFC 6665
    /// §4.2.1.1, RFC 3903 §6 step 6): `Err` is the 423.
    fn granted_expires(&self, parsed: &Parsed) -> Result<u32, u32> {
        let asked = parsed.expires.unwrap_or(self.cfg.default_expires);
        if asked != 0 && asked < self.cfg.min_expires {
            return Err(self.cfg.min_expires);
        }
        Ok(asked.min(self.cfg.max_expires))
    }

    fn too_brief(req: &Request, min: u32, to_tag: &str) -> Response {
        let mut r = Self::error_reply(req, 423, "Interval Too Brief", to_tag);
        r.headers.push(HeaderName::MinExpires, min.to_string());
        r
    }

    // ---------------------------------------------------------------- rendering and NOTIFY

    /// The document for one view (Accept, options) at `version`. Rendered once per change of
    /// the publications and view, then reused: a fan-out, and each NOTIFY owed after a
    /// watcher's answer, substitute the version into the cached document instead of parsing
    /// every publication again.
    fn render_for(
        &self,
        res: &ResKey,
        resource: &Resource,
        accept: &[String],
        version: u32,
        options: RenderOptions,
    ) -> Option<Rendered> {
        let key = pubs_key(&resource.pubs);
        let view = (accept.to_vec(), options);
        let cached = {
            let mut cache = resource.rendered.borrow_mut();
            if cache.pubs_key != key {
                cache.pubs_key = key;
                cache.docs.clear();
            }
            cache.docs.get(&view).cloned()
        };
        let doc = match cached {
            Some(d) => d,
            None => {
                let d = self.render_uncached(res, resource, accept, VERSION_SENTINEL, options);
                let mut cache = resource.rendered.borrow_mut();
                if cache.docs.len() < MAX_CACHED_VIEWS {
                    cache.docs.insert(view, d.clone());
                }
                d
            }
        }?;
        Some(if versioned(res.pkg) {
            with_version(&doc, version)
        } else {
            doc
        })
    }

    fn render_uncached(
        &self,
        res: &ResKey,
        resource: &Resource,
        accept: &[String],
        version: u32,
        options: RenderOptions,
    ) -> Option<Rendered> {
        let pkg = package(res.pkg)?;
        let bodies: Vec<PublishedBody<'_>> = resource
            .pubs
            .iter()
            .map(|p| PublishedBody {
                source_id: &p.rec.source_id,
                content_type: &p.rec.content_type,
                body: match &p.rec.body {
                    PublicationBody::Document(b) => b,
                    PublicationBody::Dialogs(_) => &[],
                },
                dialogs: match &p.rec.body {
                    PublicationBody::Dialogs(d) => Some(d),
                    PublicationBody::Document(_) => None,
                },
                seq: p.rec.seq,
            })
            .collect();
        Some(pkg.render(
            &res.presentity,
            &bodies,
            &WatcherView {
                accept,
                version,
                options,
            },
        ))
    }

    fn doc_hash(&self, res: &ResKey, resource: &Resource) -> u64 {
        match self.render_for(res, resource, &[], 0, RenderOptions::default()) {
            Some(r) => hash_of(&r.body),
            None => 0,
        }
    }

    fn options_of(profile: &VendorProfile) -> RenderOptions {
        RenderOptions {
            dialog_idle: profile.dialog_idle,
            dialog_single: profile.dialog_single,
            caller_confirmed: profile.caller_confirmed,
        }
    }

    /// Builds the next NOTIFY of `sub`: counts its CSeq (and version, when it has a body),
    /// queues the record write into `writes`. `body` is the document, already rendered.
    fn next_notify(
        &self,
        res: &ResKey,
        sub: &mut Sub,
        state: SubscriptionState,
        body: Option<Rendered>,
        writes: &mut Vec<PresenceWrite>,
        persist: Persist,
    ) -> OutNotify {
        sub.rec.local_cseq = sub.rec.local_cseq.wrapping_add(1).max(1);
        if body.is_some() {
            sub.rec.version = sub.rec.version.wrapping_add(1);
        }
        match persist {
            Persist::No => {}
            Persist::Sequence => writes.push(PresenceWrite::notify_seq(&sub.rec)),
            Persist::Record => writes.push(PresenceWrite::subscription(&sub.rec)),
        }
        let branch = crate::transaction::branch_from(self.ids.next(), self.ids.next());
        let request = notify::build(
            &sub.rec,
            res.pkg,
            &NotifyParts {
                request_uri: &sub.route.request_uri,
                via_sent_by: &sub.route.via_sent_by,
                transport: sub.route.to.proto.via_name(),
                branch: &branch,
                state,
                body: body.as_ref(),
                server_header: &self.server_header,
            },
        );
        sub.in_flight = true;
        sub.owed = Owed::Nothing;
        OutNotify {
            sub: SubRef {
                res: res.clone(),
                key: sub.key.clone(),
            },
            request,
            to: sub.route.to,
        }
    }

    fn state_of(&self, sub: &Sub, now_unix: u64) -> SubscriptionState {
        let expires = sub.rec.expires_at.saturating_sub(now_unix);
        match sub.rec.state {
            SubState::Active => SubscriptionState::Active { expires },
            SubState::Pending => SubscriptionState::Pending { expires },
        }
    }

    /// The current document for one watcher (`None` while pending: RFC 3856 §6.6.2, a pending
    /// NOTIFY reveals nothing).
    fn body_for(
        &self,
        res: &ResKey,
        resource: &Resource,
        sub: &mut Sub,
        winfo: Option<&Resource>,
    ) -> Option<Rendered> {
        if sub.rec.state == SubState::Pending {
            return None;
        }
        // The version this NOTIFY carries is the one before next_notify counts it.
        let version = sub.rec.version;
        if res.pkg == Pkg::Winfo {
            let full = sub.winfo_full || sub.winfo_changes.is_empty();
            let watchers = if full {
                winfo.map(|r| self.winfo_watchers(r)).unwrap_or_default()
            } else {
                std::mem::take(&mut sub.winfo_changes)
            };
            sub.winfo_changes.clear();
            sub.winfo_full = false;
            return Some(Rendered {
                content_type: "application/watcherinfo+xml",
                body: watcherinfo::render(&watcherinfo::WatcherInfo {
                    version,
                    full,
                    resource: res.presentity.to_string(),
                    package: "presence".into(),
                    watchers,
                })
                .into_bytes(),
            });
        }
        self.render_for(
            res,
            resource,
            &sub.rec.accept,
            version,
            Self::options_of(&sub.profile),
        )
    }

    fn winfo_entry(
        &self,
        sub: &Sub,
        event: watcherinfo::WatcherEvent,
        terminated: bool,
    ) -> watcherinfo::Watcher {
        let now = self.clock.now_unix();
        watcherinfo::Watcher {
            id: sub.rec.local_tag.clone(),
            status: if terminated {
                watcherinfo::WatcherStatus::Terminated
            } else if sub.rec.state == SubState::Pending {
                watcherinfo::WatcherStatus::Pending
            } else {
                watcherinfo::WatcherStatus::Active
            },
            event,
            uri: sub.rec.watcher.clone(),
            display_name: None,
            duration_subscribed: Some(now.saturating_sub(sub.rec.created_at)),
            expiration: Some(sub.rec.expires_at.saturating_sub(now)),
        }
    }

    fn winfo_watchers(&self, presence: &Resource) -> Vec<watcherinfo::Watcher> {
        let mut v: Vec<_> = presence
            .subs
            .values()
            .map(|s| self.winfo_entry(s, watcherinfo::WatcherEvent::Subscribe, false))
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Tells the presentity's winfo watchers that one of its presence watchers came, went or
    /// changed status (RFC 3857 §3.2.4).
    fn winfo_changed(
        &self,
        shard: &mut Shard,
        presentity: &Arc<str>,
        entry: watcherinfo::Watcher,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<OutNotify>,
    ) {
        let wkey = ResKey {
            presentity: presentity.clone(),
            pkg: Pkg::Winfo,
        };
        let pkey = ResKey {
            presentity: presentity.clone(),
            pkg: Pkg::Presence,
        };
        let now = self.clock.now_unix();
        let Some(mut winfo) = shard.resources.remove(&wkey) else {
            return;
        };
        let presence = shard.resources.get(&pkey);
        for sub in winfo.subs.values_mut() {
            if sub.rec.state != SubState::Active {
                continue;
            }
            if sub.winfo_changes.len() >= MAX_WINFO_CHANGES {
                // Too many changes queued behind an unanswered NOTIFY: send the whole list.
                sub.winfo_changes.clear();
                sub.winfo_full = true;
            } else if !sub.winfo_full {
                sub.winfo_changes.push(entry.clone());
            }
            if sub.in_flight {
                sub.owed = Owed::Update;
                continue;
            }
            let empty = Resource::default();
            let body = self.body_for(&wkey, &empty, sub, presence);
            let state = self.state_of(sub, now);
            out.push(self.next_notify(&wkey, sub, state, body, writes, Persist::Sequence));
        }
        shard.resources.insert(wkey, winfo);
    }

    /// Sends the current state of `res` to its watchers after a change (`source`: who made
    /// it, for `dialog;sla` echo suppression). Honors the coalescing window: the first change
    /// goes out at once, later ones within `coalesce_ms` together at its end.
    fn changed(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        source: Option<&str>,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<OutNotify>,
    ) {
        self.emit(Event::Publication {
            presentity: res.presentity.to_string(),
            event: res.pkg.key(),
            source: source.map(str::to_string),
        });
        let now = self.now();
        let window = Duration::from_millis(self.cfg.coalesce_ms);
        let Some(resource) = shard.resources.get_mut(res) else {
            return;
        };
        let src = source.map(str::to_string);
        resource.pending_source = Some(match resource.pending_source.take() {
            None => src,
            Some(prev) if prev == src => prev,
            Some(_) => None,
        });
        if let Some(last) = resource.last_fanout {
            if now < last + window {
                if !resource.flush_scheduled {
                    resource.flush_scheduled = true;
                    self.schedule(Timer::Flush(res.clone()), last + window);
                }
                return;
            }
        }
        self.fanout(shard, res, writes, out);
    }

    fn fanout(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<OutNotify>,
    ) {
        let now_unix = self.clock.now_unix();
        let Some(mut resource) = shard.resources.remove(res) else {
            return;
        };
        resource.flush_scheduled = false;
        let source = resource.pending_source.take().flatten();
        let hash = self.doc_hash(res, &resource);
        if hash == resource.doc_hash {
            shard.resources.insert(res.clone(), resource);
            return;
        }
        resource.doc_hash = hash;
        resource.last_fanout = Some(self.now());
        // One rendering per (accept, options) with a sentinel version, the version put in
        // per watcher (render_for's cache): a fan-out to 1,000 watchers renders once.
        let keys: Vec<Arc<[u8]>> = resource.subs.keys().cloned().collect();
        for k in keys {
            let (accept, options, version) = {
                let sub = &resource.subs[&k];
                if sub.rec.state != SubState::Active {
                    continue;
                }
                // dialog;sla: the phone that made the change is not told of it.
                if res.pkg == Pkg::Sla && source.as_deref() == Some(sub.rec.watcher.as_str()) {
                    continue;
                }
                if sub.in_flight {
                    if let Some(s) = resource.subs.get_mut(&k) {
                        s.owed = Owed::Update;
                    }
                    continue;
                }
                (
                    sub.rec.accept.clone(),
                    Self::options_of(&sub.profile),
                    sub.rec.version,
                )
            };
            let doc = self.render_for(res, &resource, &accept, version, options);
            let Some(sub) = resource.subs.get_mut(&k) else {
                continue;
            };
            let state = self.state_of(sub, now_unix);
            out.push(self.next_notify(res, sub, state, doc, writes, Persist::Sequence));
        }
        shard.resources.insert(res.clone(), resource);
    }

    /// The NOTIFY a subscription is owed now (in flight answered, retry due, refresh).
    fn notify_one(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        key: &Arc<[u8]>,
        writes: &mut Vec<PresenceWrite>,
        persist: Persist,
    ) -> Option<OutNotify> {
        let now_unix = self.clock.now_unix();
        let presence_key = ResKey {
            presentity: res.presentity.clone(),
            pkg: Pkg::Presence,
        };
        let mut resource = shard.resources.remove(res)?;
        let winfo = if res.pkg == Pkg::Winfo {
            shard.resources.get(&presence_key)
        } else {
            None
        };
        let out = match resource.subs.remove(key) {
            Some(mut sub) => {
                let body = self.body_for(res, &resource, &mut sub, winfo);
                let state = self.state_of(&sub, now_unix);
                let n = Some(self.next_notify(res, &mut sub, state, body, writes, persist));
                resource.subs.insert(key.clone(), sub);
                resource.sent_current();
                n
            }
            None => None,
        };
        shard.resources.insert(res.clone(), resource);
        out
    }

    /// Removes a subscription; its final NOTIFY (with the current state when `with_state`)
    /// is pushed to `out`. Winfo watchers hear of it.
    #[allow(clippy::too_many_arguments)]
    fn terminate(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        key: &Arc<[u8]>,
        reason: &'static str,
        send_final: bool,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<OutNotify>,
    ) {
        let presence_key = ResKey {
            presentity: res.presentity.clone(),
            pkg: Pkg::Presence,
        };
        let Some(mut resource) = shard.resources.remove(res) else {
            return;
        };
        let Some(mut sub) = resource.subs.remove(key) else {
            shard.resources.insert(res.clone(), resource);
            return;
        };
        self.subscription_count.fetch_sub(1, Ordering::Relaxed);
        self.emit_subscription(SubscriptionChange::Terminated(reason), res.pkg, &sub.rec);
        self.dialog_index(key).remove(key);
        self.cancel(&Timer::SubscriptionExpiry(res.clone(), key.clone()));
        self.cancel(&Timer::Retry(res.clone(), key.clone()));
        writes.push(PresenceWrite::DeleteSubscription(key.to_vec()));
        let gone_entry = (res.pkg == Pkg::Presence).then(|| {
            let event = match reason {
                "rejected" => watcherinfo::WatcherEvent::Rejected,
                "timeout" => watcherinfo::WatcherEvent::Timeout,
                _ => watcherinfo::WatcherEvent::Deactivated,
            };
            self.winfo_entry(&sub, event, true)
        });
        if send_final && sub.in_flight {
            // One NOTIFY in flight, in CSeq order: the final one waits for the answer.
            resource
                .closing
                .insert(key.clone(), Closing { sub, reason });
        } else if send_final {
            let winfo = if res.pkg == Pkg::Winfo {
                shard.resources.get(&presence_key)
            } else {
                None
            };
            out.push(self.final_notify(res, &resource, &mut sub, reason, winfo));
        }
        if resource.is_empty() {
            drop(resource);
        } else {
            shard.resources.insert(res.clone(), resource);
        }
        if let Some(e) = gone_entry {
            self.winfo_changed(shard, &res.presentity, e, writes, out);
        }
    }

    /// The final NOTIFY of an ended subscription (nothing written: its record is deleted).
    fn final_notify(
        &self,
        res: &ResKey,
        resource: &Resource,
        sub: &mut Sub,
        reason: &'static str,
        winfo: Option<&Resource>,
    ) -> OutNotify {
        // RFC 6665 §4.2.2: the final NOTIFY carries the state when there is one to give;
        // not after a rejection.
        let body = if reason == "rejected" {
            None
        } else {
            sub.winfo_full = true;
            self.body_for(res, resource, sub, winfo)
        };
        self.next_notify(
            res,
            sub,
            SubscriptionState::Terminated { reason },
            body,
            &mut Vec::new(),
            Persist::No,
        )
    }

    /// The NOTIFY in flight of an ended subscription was answered (or timed out): its final
    /// NOTIFY leaves now, unless the watcher said the subscription is gone already.
    fn closing_answered(
        &self,
        shard: &mut Shard,
        sub: &SubRef,
        outcome: Outcome,
    ) -> Option<OutNotify> {
        let mut resource = shard.resources.remove(&sub.res)?;
        let out = resource.closing.remove(&sub.key).and_then(|mut c| {
            if matches!(outcome, Outcome::Rejected(_)) {
                return None;
            }
            let presence_key = ResKey {
                presentity: sub.res.presentity.clone(),
                pkg: Pkg::Presence,
            };
            let winfo = if sub.res.pkg == Pkg::Winfo {
                shard.resources.get(&presence_key)
            } else {
                None
            };
            Some(self.final_notify(&sub.res, &resource, &mut c.sub, c.reason, winfo))
        });
        if !resource.is_empty() {
            shard.resources.insert(sub.res.clone(), resource);
        }
        out
    }

    // ---------------------------------------------------------------------------- SUBSCRIBE

    /// A SUBSCRIBE that passed digest auth (RFC 6665 §4.2.1).
    pub fn subscribe(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: Peer,
        who: Requester<'_>,
        to_tag: &str,
    ) -> Reply {
        match self.subscribe_inner(req, parsed, peer, who, to_tag) {
            Ok(r) => r,
            Err(r) => Reply::Now(r),
        }
    }

    fn subscribe_inner(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: Peer,
        who: Requester<'_>,
        to_tag: &str,
    ) -> Result<Reply, Response> {
        let fail = |status: u16, reason: &str| Self::error_reply(req, status, reason, to_tag);
        let ev = parse_event(req.headers.get(HeaderName::Event))
            .map_err(|e: EventError| fail(e.status(), &e.to_string()))?;
        let expires = self
            .granted_expires(parsed)
            .map_err(|min| Self::too_brief(req, min, to_tag))?;
        let call_id = req.call_id().map_err(|e| fail(400, &e.to_string()))?;
        let remote_tag = parsed
            .from
            .tag()
            .ok_or_else(|| fail(400, "Bad Request: From has no tag"))?;
        let watcher_uri = parsed
            .from
            .uri
            .as_sip()
            .ok_or_else(|| fail(416, "Unsupported URI Scheme in From"))?;
        let watcher = self
            .domains
            .canonical_user(watcher_uri)
            .unwrap_or_else(|| watcher_uri.aor());
        if let Requester::User(name) = who {
            let user = watcher_uri.user.as_deref().map(crate::sip::text::unescape);
            if user.as_deref() != Some(name) || !self.domains.serves(&watcher_uri.host) {
                return Err(fail(
                    403,
                    &format!("Forbidden: user {name} may not subscribe as {watcher}"),
                ));
            }
        }
        let contact = match parsed.contacts.as_slice() {
            [ContactValue::Addr(a)] => Some(a.uri.to_string()),
            [] => None,
            _ => {
                return Err(fail(
                    400,
                    "Bad Request: SUBSCRIBE needs exactly one Contact URI",
                ))
            }
        };
        let now = self.clock.now_unix();
        if let Some(local_tag) = parsed.to.tag() {
            return self.resubscribe(
                req,
                parsed,
                peer,
                &watcher,
                ev,
                expires,
                call_id,
                &local_tag,
                &remote_tag,
                contact,
                now,
            );
        }
        let contact = contact.ok_or_else(|| fail(400, "Bad Request: SUBSCRIBE without Contact"))?;
        let (_, presentity) = self
            .presentity_of(req, parsed)
            .map_err(|(status, reason)| fail(status, &reason))?;
        let accept = accept_list(req);
        let notify_types: &[&str] = match ev.pkg {
            Pkg::Winfo => &["application/watcherinfo+xml"],
            p => package(p).map(|p| p.notify_types()).unwrap_or(&[]),
        };
        if !notify_types.iter().any(|t| accepts(&accept, t)) {
            let mut r = fail(
                406,
                "Not Acceptable: none of the Accept types can be sent for this package",
            );
            r.headers.push(HeaderName::Accept, notify_types.join(", "));
            return Err(r);
        }
        let state = match self.policy(
            ev.pkg,
            &presentity,
            &watcher,
            self.domains.serves(&watcher_uri.host),
        ) {
            Policy::Allow => SubState::Active,
            Policy::Confirm => SubState::Pending,
            Policy::Block => {
                return Err(fail(
                    403,
                    &format!("Forbidden: {watcher} may not watch {presentity}"),
                ))
            }
        };
        let our_contact = self.our_contact(req, &peer);
        let user_agent = req.headers.get(HeaderName::UserAgent).map(str::to_string);
        let profile = self.profile_for(user_agent.as_deref());
        let rec = SubscriptionRecord {
            presentity: presentity.to_string(),
            event: ev.pkg.key().into(),
            event_id: ev.id.clone(),
            watcher: watcher.clone(),
            watcher_header: notify::without_tag(&parsed.from),
            presentity_header: notify::without_tag(&parsed.to),
            call_id: call_id.to_string(),
            local_tag: to_tag.to_string(),
            remote_tag: remote_tag.clone(),
            remote_target: contact,
            route_set: req
                .headers
                .list(HeaderName::RecordRoute)
                .into_iter()
                .map(str::to_string)
                .collect(),
            local_cseq: 0,
            remote_cseq: parsed.cseq.seq,
            version: 0,
            expires_at: now + u64::from(expires),
            state,
            accept,
            flow: flow_of(&peer),
            user_agent,
            contact: our_contact.clone(),
            created_at: now,
        };
        let key: Arc<[u8]> = rec.key().into();
        let route = notify_route(&rec)
            .ok_or_else(|| fail(500, "Server Internal Error: no route to the watcher"))?;
        let res = ResKey {
            presentity: presentity.clone(),
            pkg: ev.pkg,
        };
        let mut sub = Sub {
            rec,
            key: key.clone(),
            route,
            profile,
            in_flight: false,
            owed: Owed::Nothing,
            failures: 0,
            winfo_changes: Vec::new(),
            winfo_full: true,
        };
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut shard = self.shard(&presentity);
        let fresh_resource = !shard.resources.contains_key(&res);
        let watchers = shard.resources.get(&res).map_or(0, |r| r.subs.len());
        if expires > 0 && watchers >= self.cfg.max_watchers_per_presentity {
            let mut r = fail(
                503,
                "Service Unavailable: too many watchers of this presentity",
            );
            r.headers.push_raw("Retry-After", "60");
            return Err(r);
        }
        // The place is taken here, under the shard lock, and the subscription inserted below
        // without another way out.
        if expires > 0 && !take_place(&self.subscription_count, self.cfg.max_subscriptions) {
            let mut r = fail(503, "Service Unavailable: subscription table is full");
            r.headers.push_raw("Retry-After", "60");
            return Err(r);
        }
        shard.resources.entry(res.clone()).or_default();
        let mut response = req.response(200, "OK", Some(to_tag));
        // RFC 3261 §12.1.1: the 2xx that creates the dialog copies Record-Route, in order;
        // the watcher takes its route set from it.
        for h in req
            .headers
            .0
            .iter()
            .filter(|h| h.kind == HeaderName::RecordRoute)
        {
            response
                .headers
                .push(HeaderName::RecordRoute, h.value.clone());
        }
        response
            .headers
            .push(HeaderName::Expires, expires.to_string());
        response
            .headers
            .push(HeaderName::Contact, format!("<{our_contact}>"));
        response.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        if expires == 0 {
            // A fetch (RFC 6665 §4.4.3): one NOTIFY with the state, terminated; nothing kept.
            let winfo = (ev.pkg == Pkg::Winfo).then(|| {
                shard.resources.get(&ResKey {
                    presentity: presentity.clone(),
                    pkg: Pkg::Presence,
                })
            });
            let resource = shard.resources.get(&res);
            let empty = Resource::default();
            let body = self.body_for(&res, resource.unwrap_or(&empty), &mut sub, winfo.flatten());
            out.push(self.next_notify(
                &res,
                &mut sub,
                SubscriptionState::Terminated { reason: "timeout" },
                body,
                &mut writes,
                Persist::No,
            ));
            if shard.resources.get(&res).is_some_and(Resource::is_empty) {
                shard.resources.remove(&res);
            }
            drop(shard);
            return Ok(Reply::AfterWrite {
                response,
                durable: self.store.write(writes),
                notifies: out,
            });
        }
        let expiry_at = self.at_unix(sub.rec.expires_at);
        let entry = (ev.pkg == Pkg::Presence)
            .then(|| self.winfo_entry(&sub, watcherinfo::WatcherEvent::Subscribe, false));
        {
            let presence = (ev.pkg == Pkg::Winfo)
                .then(|| {
                    shard.resources.get(&ResKey {
                        presentity: presentity.clone(),
                        pkg: Pkg::Presence,
                    })
                })
                .flatten();
            let empty = Resource::default();
            let resource = shard.resources.get(&res).unwrap_or(&empty);
            let body = self.body_for(&res, resource, &mut sub, presence);
            let st = self.state_of(&sub, now);
            // A new subscription: the whole record goes to disk before the 200.
            out.push(self.next_notify(&res, &mut sub, st, body, &mut writes, Persist::Record));
        }
        if fresh_resource {
            // A new resource: what the watcher just got is the idle document.
            let hash = self.doc_hash(&res, &Resource::default());
            if let Some(r) = shard.resources.get_mut(&res) {
                r.doc_hash = hash;
            }
        }
        self.emit_subscription(SubscriptionChange::Created, ev.pkg, &sub.rec);
        let resource = shard.resources.entry(res.clone()).or_default();
        resource.subs.insert(key.clone(), sub);
        resource.sent_current();
        self.dialog_index(&key).insert(key.clone(), res.clone());
        self.schedule(
            Timer::SubscriptionExpiry(res.clone(), key.clone()),
            expiry_at,
        );
        if let Some(e) = entry {
            self.winfo_changed(&mut shard, &presentity, e, &mut writes, &mut out);
        }
        let durable = self.store.write(writes);
        drop(shard);
        Ok(Reply::AfterWrite {
            response,
            durable,
            notifies: out,
        })
    }

    /// The resource a SUBSCRIBE or PUBLISH is about (RFC 6665 §4.1.2.1, RFC 3903 §6 step 2):
    /// the Request-URI, or To when phones put only our address there (Yealink), as our
    /// canonical AOR; 404 for a user of another domain.
    fn presentity_of<'a>(
        &self,
        req: &'a Request,
        parsed: &'a Parsed,
    ) -> Result<(&'a crate::sip::SipUri, Arc<str>), (u16, String)> {
        let uri = req
            .uri
            .as_sip()
            .filter(|u| u.user.is_some())
            .or_else(|| parsed.to.uri.as_sip())
            .ok_or((416, "Unsupported URI Scheme in To".to_string()))?;
        let presentity = self.domains.canonical_user(uri).ok_or_else(|| {
            (
                404,
                format!("Not Found: {} is not a user of this domain", uri.aor()),
            )
        })?;
        Ok((uri, presentity.into()))
    }

    /// Our Contact in a new subscription dialog.
    fn our_contact(&self, req: &Request, peer: &Peer) -> String {
        if !self.cfg.server_address.is_empty() {
            return self.cfg.server_address.clone();
        }
        let host = if peer.local.ip().is_unspecified() {
            match req.uri.as_sip() {
                Some(u) => u.host.to_string(),
                None => Host::from(peer.local.ip()).to_string(),
            }
        } else {
            Host::from(peer.local.ip()).to_string()
        };
        let mut c = format!("sip:{host}:{}", peer.local.port());
        if peer.proto == Proto::Tcp {
            c.push_str(";transport=tcp");
        }
        c
    }

    /// A SUBSCRIBE inside an existing subscription dialog: refresh or unsubscribe.
    #[allow(clippy::too_many_arguments)]
    fn resubscribe(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: Peer,
        watcher: &str,
        ev: event::EventHeader,
        expires: u32,
        call_id: &str,
        local_tag: &str,
        remote_tag: &str,
        contact: Option<String>,
        now: u64,
    ) -> Result<Reply, Response> {
        let fail = |status: u16, reason: &str| Self::error_reply(req, status, reason, local_tag);
        let key: Arc<[u8]> = subscription_key(call_id, local_tag, remote_tag).into();
        let gone = || fail(481, "Subscription Does Not Exist");
        let res = self
            .dialog_index(&key)
            .get(&key)
            .cloned()
            .ok_or_else(gone)?;
        let mut shard = self.shard(&res.presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        {
            let sub = shard
                .resources
                .get_mut(&res)
                .and_then(|r| r.subs.get_mut(&key))
                .ok_or_else(gone)?;
            // The dialog identifiers are not secret (a proxy sees them): only the watcher
            // that made the subscription may refresh or end it.
            if sub.rec.watcher != watcher {
                return Err(fail(
                    403,
                    &format!(
                        "Forbidden: this subscription belongs to {}",
                        sub.rec.watcher
                    ),
                ));
            }
            if res.pkg != ev.pkg || sub.rec.event_id != ev.id {
                return Err(fail(
                    489,
                    "Bad Event: this dialog's subscription is for another event package or id",
                ));
            }
            // RFC 3261 §12.2.2: a CSeq at or below the last one is out of order.
            if parsed.cseq.seq <= sub.rec.remote_cseq {
                return Err(fail(500, "Server Internal Error: CSeq out of order"));
            }
            sub.rec.remote_cseq = parsed.cseq.seq;
            if let Some(c) = contact {
                sub.rec.remote_target = c;
            }
            sub.rec.flow = flow_of(&peer);
            if let Some(r) = notify_route(&sub.rec) {
                sub.route = r;
            }
        }
        let mut response = req.response(200, "OK", Some(local_tag));
        response
            .headers
            .push(HeaderName::Expires, expires.to_string());
        let contact_of = shard.resources[&res].subs[&key].rec.contact.clone();
        response
            .headers
            .push(HeaderName::Contact, format!("<{contact_of}>"));
        response.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        if expires == 0 {
            // RFC 6665 §4.2.1.4: unsubscribing gets a final NOTIFY with the state.
            self.terminate(
                &mut shard,
                &res,
                &key,
                "timeout",
                true,
                &mut writes,
                &mut out,
            );
        } else {
            let expires_at = now + u64::from(expires);
            let in_flight = {
                let sub = shard
                    .resources
                    .get_mut(&res)
                    .and_then(|r| r.subs.get_mut(&key))
                    .ok_or_else(gone)?;
                sub.rec.expires_at = expires_at;
                sub.failures = 0;
                sub.winfo_full = true;
                self.emit_subscription(SubscriptionChange::Refreshed, res.pkg, &sub.rec);
                sub.in_flight
            };
            self.cancel(&Timer::Retry(res.clone(), key.clone()));
            self.schedule(
                Timer::SubscriptionExpiry(res.clone(), key.clone()),
                self.at_unix(expires_at),
            );
            // RFC 6665 §4.2.1.2: a refresh is answered with a NOTIFY of the current state.
            if in_flight {
                if let Some(sub) = shard
                    .resources
                    .get_mut(&res)
                    .and_then(|r| r.subs.get_mut(&key))
                {
                    sub.owed = Owed::Update;
                    writes.push(PresenceWrite::subscription(&sub.rec));
                }
            } else if let Some(n) =
                self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Record)
            {
                out.push(n);
            }
        }
        let durable = self.store.write(writes);
        drop(shard);
        Ok(Reply::AfterWrite {
            response,
            durable,
            notifies: out,
        })
    }

    // ------------------------------------------------------------------------------ PUBLISH

    /// A PUBLISH that passed digest auth (RFC 3903 §6).
    pub fn publish_sip(
        &self,
        req: &Request,
        parsed: &Parsed,
        who: Requester<'_>,
        to_tag: &str,
    ) -> Reply {
        match self.publish_sip_inner(req, parsed, who, to_tag) {
            Ok(r) => r,
            Err(r) => Reply::Now(r),
        }
    }

    fn publish_sip_inner(
        &self,
        req: &Request,
        parsed: &Parsed,
        who: Requester<'_>,
        to_tag: &str,
    ) -> Result<Reply, Response> {
        let fail = |status: u16, reason: &str| Self::error_reply(req, status, reason, to_tag);
        let ev = parse_event(req.headers.get(HeaderName::Event))
            .map_err(|e| fail(e.status(), &e.to_string()))?;
        if !ev.pkg.publishable() {
            return Err(fail(489, "Bad Event: presence.winfo cannot be published"));
        }
        let pkg = package(ev.pkg).ok_or_else(|| fail(489, "Bad Event: package not served"))?;
        let (target_uri, presentity) = self
            .presentity_of(req, parsed)
            .map_err(|(status, reason)| fail(status, &reason))?;
        if let Requester::User(name) = who {
            let user = target_uri.user.as_deref().map(crate::sip::text::unescape);
            if user.as_deref() != Some(name) {
                return Err(fail(
                    403,
                    &format!("Forbidden: user {name} may not publish for {presentity}"),
                ));
            }
        }
        let expires = self
            .granted_expires(parsed)
            .map_err(|min| Self::too_brief(req, min, to_tag))?;
        let if_match = req
            .headers
            .get(HeaderName::SipIfMatch)
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let has_body = !req.body.is_empty();
        let document = PublicationBody::from(&req.body);
        let content_type = if has_body {
            let ct = req
                .headers
                .get(HeaderName::ContentType)
                .ok_or_else(|| fail(400, "Bad Request: body without Content-Type"))?;
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let Some(t) = pkg.publish_types().iter().find(|t| **t == media) else {
                let mut r = fail(415, "Unsupported Media Type");
                r.headers
                    .push(HeaderName::Accept, pkg.publish_types().join(", "));
                return Err(r);
            };
            pkg.validate(t, &req.body)
                .map_err(|e| fail(400, &e.to_string()))?;
            Some(*t)
        } else {
            None
        };
        // An ended call lingers only briefly (see TERMINATED_LINGER).
        let expires = if expires > 0 && has_body && all_dialogs_terminated(ev.pkg, &document) {
            expires.min(TERMINATED_LINGER)
        } else {
            expires
        };
        if if_match.is_none() && !has_body {
            return Err(fail(400, "Bad Request: initial PUBLISH without a body"));
        }
        if if_match.is_none() && expires == 0 {
            return Err(fail(
                400,
                "Bad Request: PUBLISH with Expires 0 needs SIP-If-Match",
            ));
        }
        let res = ResKey {
            presentity: presentity.clone(),
            pkg: ev.pkg,
        };
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut shard = self.shard(&presentity);
        let new_etag = format!("{:016x}", self.ids.next());
        // A refresh without a body keeps an ended call's linger.
        let expires = match if_match {
            Some(tag) if expires > 0 && !has_body => {
                let ended = shard.resources.get(&res).is_some_and(|r| {
                    r.pubs
                        .iter()
                        .any(|p| p.rec.etag == tag && all_dialogs_terminated(ev.pkg, &p.rec.body))
                });
                if ended {
                    expires.min(TERMINATED_LINGER)
                } else {
                    expires
                }
            }
            _ => expires,
        };
        let granted = expires
            .saturating_sub(self.cfg.expires_offset)
            .max(if expires == 0 { 0 } else { 1 });
        let source = match if_match {
            Some(tag) => {
                // RFC 3903 §6 step 4: the ETag must name a live publication of this resource.
                let resource = shard.resources.get_mut(&res);
                let found = resource.and_then(|r| {
                    r.pubs
                        .iter()
                        .position(|p| p.rec.etag == tag && p.rec.expires_at > now)
                        .map(|i| (r, i))
                });
                let Some((resource, i)) = found else {
                    return Err(fail(
                        412,
                        "Conditional Request Failed: unknown or expired SIP-If-Match",
                    ));
                };
                let p = &mut resource.pubs[i];
                let source = p.rec.source_id.clone();
                if expires == 0 {
                    let key = p.rec.key();
                    resource.pubs.remove(i);
                    self.publication_count.fetch_sub(1, Ordering::Relaxed);
                    self.cancel(&Timer::PublicationExpiry(res.clone(), source.clone()));
                    writes.push(PresenceWrite::DeletePublication(key));
                } else {
                    p.rec.etag = new_etag.clone();
                    p.rec.expires_at = now + u64::from(expires);
                    if let (Some(ct), true) = (content_type, has_body) {
                        p.rec.content_type = ct.into();
                        p.rec.body = document.clone();
                        p.rec.seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    }
                    writes.push(PresenceWrite::publication(&p.rec));
                    let at = self.at_unix(p.rec.expires_at);
                    self.schedule(Timer::PublicationExpiry(res.clone(), source.clone()), at);
                }
                source
            }
            None => {
                let resource = shard.resources.entry(res.clone()).or_default();
                if resource.pubs.len() >= self.cfg.max_publications_per_presentity
                    || !take_place(&self.publication_count, self.cfg.max_publications)
                {
                    let mut r = fail(503, "Service Unavailable: too many publications");
                    r.headers.push_raw("Retry-After", "60");
                    if resource.is_empty() {
                        shard.resources.remove(&res);
                    }
                    return Err(r);
                }
                let source = format!("etag:{new_etag}");
                let rec = PublicationRecord {
                    presentity: presentity.to_string(),
                    event: ev.pkg.key().into(),
                    etag: new_etag.clone(),
                    source_id: source.clone(),
                    content_type: content_type.unwrap_or_default().into(),
                    body: document,
                    expires_at: now + u64::from(expires),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                };
                writes.push(PresenceWrite::publication(&rec));
                let at = self.at_unix(rec.expires_at);
                resource.pubs.push(Publication { rec });
                self.schedule(Timer::PublicationExpiry(res.clone(), source.clone()), at);
                source
            }
        };
        self.changed(&mut shard, &res, Some(&source), &mut writes, &mut out);
        if shard.resources.get(&res).is_some_and(Resource::is_empty) {
            shard.resources.remove(&res);
        }
        let durable = self.store.write(writes);
        drop(shard);
        let mut response = req.response(200, "OK", Some(to_tag));
        if expires > 0 {
            response.headers.push(HeaderName::SipEtag, new_etag);
        }
        response
            .headers
            .push(HeaderName::Expires, granted.to_string());
        response.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        Ok(Reply::AfterWrite {
            response,
            durable,
            notifies: out,
        })
    }

    /// The in-process publisher API (pua_usrloc, pua_dialoginfo, BLA): sets the state
    /// `source_id` publishes for `presentity` (a canonical AOR) in `pkg`, for `expires`
    /// seconds; 0 removes it. No ETag round trip: the source id names the publication.
    /// Resolves once the state is on disk; NOTIFYs go out on their own.
    pub fn publish(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
        body: impl Into<PublicationBody>,
        expires: u32,
    ) -> Result<Durable, PublishError> {
        if !pkg.publishable() {
            return Err(PublishError::NotPublishable(pkg.key()));
        }
        let package = package(pkg).ok_or(PublishError::NotPublishable(pkg.key()))?;
        let content_type = package.publish_types()[0];
        let body = body.into();
        if expires > 0 {
            match &body {
                PublicationBody::Document(b) => package.validate(content_type, b)?,
                // Typed dialog state is valid by construction, for the dialog packages only.
                PublicationBody::Dialogs(_) if matches!(pkg, Pkg::Dialog | Pkg::Sla) => {}
                PublicationBody::Dialogs(_) => return Err(PublishError::NotPublishable(pkg.key())),
            }
        }
        let expires = if expires > 0 && all_dialogs_terminated(pkg, &body) {
            expires.min(TERMINATED_LINGER)
        } else {
            expires
        };
        let presentity: Arc<str> = presentity.into();
        let res = ResKey {
            presentity: presentity.clone(),
            pkg,
        };
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut shard = self.shard(&presentity);
        let resource = shard.resources.entry(res.clone()).or_default();
        let existing = resource
            .pubs
            .iter()
            .position(|p| p.rec.source_id == source_id);
        match (existing, expires) {
            (Some(i), 0) => {
                let key = resource.pubs[i].rec.key();
                resource.pubs.remove(i);
                self.publication_count.fetch_sub(1, Ordering::Relaxed);
                self.cancel(&Timer::PublicationExpiry(res.clone(), source_id.into()));
                writes.push(PresenceWrite::DeletePublication(key));
            }
            (None, 0) => {
                if resource.is_empty() {
                    shard.resources.remove(&res);
                }
                drop(shard);
                return Ok(self.store.write(writes));
            }
            (found, _) => {
                if found.is_none()
                    && (resource.pubs.len() >= self.cfg.max_publications_per_presentity
                        || !take_place(&self.publication_count, self.cfg.max_publications))
                {
                    if resource.is_empty() {
                        shard.resources.remove(&res);
                    }
                    return Err(PublishError::Full);
                }
                let rec = PublicationRecord {
                    presentity: presentity.to_string(),
                    event: pkg.key().into(),
                    etag: format!("{:016x}", self.ids.next()),
                    source_id: source_id.into(),
                    content_type: content_type.into(),
                    body,
                    expires_at: now + u64::from(expires),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                };
                writes.push(PresenceWrite::publication(&rec));
                let at = self.at_unix(rec.expires_at);
                match found {
                    Some(i) => resource.pubs[i] = Publication { rec },
                    // Its place was taken with the check above.
                    None => resource.pubs.push(Publication { rec }),
                }
                self.schedule(Timer::PublicationExpiry(res.clone(), source_id.into()), at);
            }
        }
        self.changed(&mut shard, &res, Some(source_id), &mut writes, &mut out);
        let durable = self.store.write(writes);
        drop(shard);
        // NOTIFYs must not wait for the caller to await: they wait for their own write.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let after = {
            let (tx2, rx2) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let r = crate::storage::durable(durable).await;
                let _ = tx.send(r.clone());
                let _ = tx2.send(r);
            });
            rx2
        };
        self.send(out, Some(after));
        Ok(rx)
    }

    // ---------------------------------------------------------------- authorization decisions

    /// The presentity (or the admin) decided about a watcher (RFC 3857's pending watchers):
    /// `Allow` activates its pending subscriptions with a full NOTIFY, `Block` ends them with
    /// `terminated;reason=rejected`. Returns how many subscriptions changed.
    pub fn authorize(&self, presentity: &str, watcher: &str, decision: Policy) -> usize {
        let mut shard = self.shard(presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut changed = 0;
        let keys: Vec<(ResKey, Arc<[u8]>)> = shard
            .resources
            .iter()
            .filter(|(k, _)| &*k.presentity == presentity && k.pkg != Pkg::Winfo)
            .flat_map(|(k, r)| {
                r.subs
                    .iter()
                    .filter(|(_, s)| s.rec.watcher == watcher)
                    .map(move |(sk, _)| (k.clone(), sk.clone()))
            })
            .collect();
        for (res, key) in keys {
            match decision {
                Policy::Block => {
                    self.terminate(
                        &mut shard,
                        &res,
                        &key,
                        "rejected",
                        true,
                        &mut writes,
                        &mut out,
                    );
                    changed += 1;
                }
                Policy::Allow => {
                    let entry = {
                        let Some(sub) = shard
                            .resources
                            .get_mut(&res)
                            .and_then(|r| r.subs.get_mut(&key))
                        else {
                            continue;
                        };
                        if sub.rec.state != SubState::Pending {
                            continue;
                        }
                        sub.rec.state = SubState::Active;
                        self.emit_subscription(SubscriptionChange::Activated, res.pkg, &sub.rec);
                        let in_flight = sub.in_flight;
                        if in_flight {
                            sub.owed = Owed::Update;
                            // No NOTIFY (which would write the record) until the one in
                            // flight is answered: store the decision now.
                            writes.push(PresenceWrite::subscription(&sub.rec));
                        }
                        (res.pkg == Pkg::Presence)
                            .then(|| {
                                self.winfo_entry(sub, watcherinfo::WatcherEvent::Approved, false)
                            })
                            .map(|e| (e, in_flight))
                    };
                    let in_flight = entry.as_ref().map(|e| e.1).unwrap_or(false);
                    if !in_flight {
                        if let Some(n) =
                            self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Record)
                        {
                            out.push(n);
                        }
                    }
                    if let Some((e, _)) = entry {
                        self.winfo_changed(&mut shard, &res.presentity, e, &mut writes, &mut out);
                    }
                    changed += 1;
                }
                Policy::Confirm => {}
            }
        }
        let durable = self.store.write(writes);
        drop(shard);
        self.send(out, Some(durable));
        changed
    }

    // ----------------------------------------------------------------------- NOTIFY outcomes

    /// What became of a NOTIFY we sent.
    pub fn notify_outcome(&self, sub: &SubRef, outcome: Outcome) {
        let mut shard = self.shard(&sub.res.presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        if shard
            .resources
            .get(&sub.res)
            .is_some_and(|r| r.closing.contains_key(&sub.key))
        {
            let last = self.closing_answered(&mut shard, sub, outcome);
            drop(shard);
            self.send(last.into_iter().collect(), None);
            return;
        }
        let Some(s) = shard
            .resources
            .get_mut(&sub.res)
            .and_then(|r| r.subs.get_mut(&sub.key))
        else {
            return;
        };
        s.in_flight = false;
        match outcome {
            Outcome::Delivered => {
                s.failures = 0;
                if s.owed == Owed::Update {
                    if let Some(n) = self.notify_one(
                        &mut shard,
                        &sub.res,
                        &sub.key,
                        &mut writes,
                        Persist::Sequence,
                    ) {
                        out.push(n);
                    }
                }
            }
            Outcome::Failed(status) if s.profile.keep_on_timeout => {
                s.failures = s.failures.saturating_add(1);
                s.owed = Owed::Update;
                s.winfo_full = true;
                let shift = (s.failures - 1).min(10);
                let delay = Duration::from_millis(s.profile.retry_ms.saturating_mul(1 << shift))
                    .min(Duration::from_secs(60));
                tracing::info!(watcher = %s.rec.watcher, presentity = %sub.res.presentity, status, failures = s.failures, "NOTIFY failed; retrying");
                self.schedule(
                    Timer::Retry(sub.res.clone(), sub.key.clone()),
                    self.now() + delay,
                );
            }
            Outcome::Failed(status) | Outcome::Rejected(status) => {
                tracing::info!(watcher = %s.rec.watcher, presentity = %sub.res.presentity, status, "NOTIFY refused; ending the subscription");
                self.terminate(
                    &mut shard,
                    &sub.res,
                    &sub.key,
                    "deactivated",
                    false,
                    &mut writes,
                    &mut out,
                );
            }
        }
        let durable = (!writes.is_empty()).then(|| self.store.write(writes));
        drop(shard);
        self.send(out, durable);
    }

    // --------------------------------------------------------------------------------- timers

    /// Expiry, coalescing and retry timers; runs for the server's lifetime.
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            let next = self.timers.lock().map(|t| t.next()).unwrap_or(None);
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
            let due = self
                .timers
                .lock()
                .map(|mut t| t.pop_due(self.now()))
                .unwrap_or_default();
            for t in due {
                self.on_timer(t);
            }
        }
    }

    fn on_timer(&self, timer: Timer) {
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let presentity = match &timer {
            Timer::PublicationExpiry(r, _)
            | Timer::SubscriptionExpiry(r, _)
            | Timer::Flush(r)
            | Timer::Retry(r, _) => r.presentity.clone(),
        };
        let mut shard = self.shard(&presentity);
        match timer {
            Timer::PublicationExpiry(res, source) => {
                let Some(resource) = shard.resources.get_mut(&res) else {
                    return;
                };
                let Some(i) = resource.pubs.iter().position(|p| p.rec.source_id == source) else {
                    return;
                };
                if resource.pubs[i].rec.expires_at > now {
                    let at = self.at_unix(resource.pubs[i].rec.expires_at);
                    self.schedule(Timer::PublicationExpiry(res, source), at);
                    return;
                }
                writes.push(PresenceWrite::DeletePublication(publication_key(
                    &res.presentity,
                    res.pkg.key(),
                    &source,
                )));
                resource.pubs.remove(i);
                self.publication_count.fetch_sub(1, Ordering::Relaxed);
                self.changed(&mut shard, &res, None, &mut writes, &mut out);
                if shard.resources.get(&res).is_some_and(Resource::is_empty) {
                    shard.resources.remove(&res);
                }
            }
            Timer::SubscriptionExpiry(res, key) => {
                let expires_at = shard
                    .resources
                    .get(&res)
                    .and_then(|r| r.subs.get(&key))
                    .map(|s| s.rec.expires_at);
                match expires_at {
                    Some(at) if at > now => {
                        self.schedule(Timer::SubscriptionExpiry(res, key), self.at_unix(at));
                    }
                    Some(_) => self.terminate(
                        &mut shard,
                        &res,
                        &key,
                        "timeout",
                        true,
                        &mut writes,
                        &mut out,
                    ),
                    None => {}
                }
            }
            Timer::Flush(res) => self.fanout(&mut shard, &res, &mut writes, &mut out),
            Timer::Retry(res, key) => {
                let in_flight = shard
                    .resources
                    .get(&res)
                    .and_then(|r| r.subs.get(&key))
                    .map(|s| s.in_flight);
                let owed = shard
                    .resources
                    .get(&res)
                    .and_then(|r| r.subs.get(&key))
                    .map(|s| s.owed);
                // Only if no change has delivered the state meanwhile.
                if in_flight == Some(false) && owed == Some(Owed::Update) {
                    if let Some(n) =
                        self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Sequence)
                    {
                        out.push(n);
                    }
                }
            }
        }
        let durable = (!writes.is_empty()).then(|| self.store.write(writes));
        drop(shard);
        self.send(out, durable);
    }

    // ------------------------------------------------------------------------------- restart

    /// Reloads publications and subscriptions after a start (RFC 6665 §4.2.2 does not say
    /// what a restarted notifier owes; we owe every watcher the current state): what expired
    /// while we were down is removed (its watchers get `terminated;reason=timeout`), every
    /// other watcher a fresh full NOTIFY whose CSeq and version continue from before.
    pub fn load(&self) -> Result<(usize, usize), StorageError> {
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut pubs = 0;
        for rec in self.store.load_publications()? {
            let Some(pkg) = Pkg::from_key(&rec.event) else {
                writes.push(PresenceWrite::DeletePublication(rec.key()));
                continue;
            };
            if rec.expires_at <= now {
                writes.push(PresenceWrite::DeletePublication(rec.key()));
                continue;
            }
            let presentity: Arc<str> = rec.presentity.as_str().into();
            let res = ResKey {
                presentity: presentity.clone(),
                pkg,
            };
            self.seq.fetch_max(rec.seq + 1, Ordering::Relaxed);
            self.schedule(
                Timer::PublicationExpiry(res.clone(), rec.source_id.clone()),
                self.at_unix(rec.expires_at),
            );
            let mut shard = self.shard(&presentity);
            shard
                .resources
                .entry(res)
                .or_default()
                .pubs
                .push(Publication { rec });
            pubs += 1;
        }
        self.publication_count.store(pubs, Ordering::Relaxed);
        let mut subs = 0;
        let mut loaded: Vec<(ResKey, Arc<[u8]>)> = Vec::new();
        for rec in self.store.load_subscriptions()? {
            let Some(pkg) = Pkg::from_key(&rec.event) else {
                writes.push(PresenceWrite::DeleteSubscription(rec.key()));
                continue;
            };
            let Some(route) = notify_route(&rec) else {
                writes.push(PresenceWrite::DeleteSubscription(rec.key()));
                continue;
            };
            let presentity: Arc<str> = rec.presentity.as_str().into();
            let res = ResKey {
                presentity: presentity.clone(),
                pkg,
            };
            let key: Arc<[u8]> = rec.key().into();
            let profile = self.profile_for(rec.user_agent.as_deref());
            let expired = rec.expires_at <= now;
            let mut sub = Sub {
                rec,
                key: key.clone(),
                route,
                profile,
                in_flight: false,
                owed: Owed::Nothing,
                failures: 0,
                winfo_changes: Vec::new(),
                winfo_full: true,
            };
            if expired {
                writes.push(PresenceWrite::DeleteSubscription(key.to_vec()));
                out.push(self.next_notify(
                    &res,
                    &mut sub,
                    SubscriptionState::Terminated { reason: "timeout" },
                    None,
                    &mut writes,
                    Persist::No,
                ));
                continue;
            }
            self.schedule(
                Timer::SubscriptionExpiry(res.clone(), key.clone()),
                self.at_unix(sub.rec.expires_at),
            );
            self.dialog_index(&key).insert(key.clone(), res.clone());
            let mut shard = self.shard(&presentity);
            shard
                .resources
                .entry(res.clone())
                .or_default()
                .subs
                .insert(key.clone(), sub);
            loaded.push((res, key));
            subs += 1;
        }
        self.subscription_count.store(subs, Ordering::Relaxed);
        for (res, key) in loaded {
            let mut shard = self.shard(&res.presentity);
            if let Some(n) = self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Sequence)
            {
                out.push(n);
            }
        }
        // The documents as they are now are what every watcher just got.
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<ResKey> = shard.resources.keys().cloned().collect();
            for k in keys {
                let hash = shard.resources.get(&k).map(|r| self.doc_hash(&k, r));
                if let (Some(h), Some(r)) = (hash, shard.resources.get_mut(&k)) {
                    r.doc_hash = h;
                }
            }
        }
        let durable = self.store.write(writes);
        self.send(out, Some(durable));
        Ok((pubs, subs))
    }

    // ------------------------------------------------------------------------------ snapshots

    /// What `source_id` currently publishes for `presentity` in `pkg`: its body and expiry
    /// (unix seconds). The in-process publishers read it to publish only what changed,
    /// also across restarts.
    pub fn publication(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
    ) -> Option<(Vec<u8>, u64)> {
        // Rendered (if typed) after the lock is released.
        let (body, expires_at) = self.publication_body(presentity, pkg, source_id)?;
        Some((body.rendered().into_owned(), expires_at))
    }

    /// [`Presence::publication`] as it is held: typed dialog state stays typed.
    pub fn publication_body(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
    ) -> Option<(PublicationBody, u64)> {
        let shard = self.shard(presentity);
        let res = ResKey {
            presentity: presentity.into(),
            pkg,
        };
        shard
            .resources
            .get(&res)?
            .pubs
            .iter()
            .find(|p| p.rec.source_id == source_id)
            .map(|p| (p.rec.body.clone(), p.rec.expires_at))
    }

    /// The presentities `source_id` has a publication for in `pkg`.
    pub fn published_by(&self, pkg: Pkg, source_id: &str) -> Vec<String> {
        let mut v = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, r) in &shard.resources {
                if k.pkg == pkg && r.pubs.iter().any(|p| p.rec.source_id == source_id) {
                    v.push(k.presentity.to_string());
                }
            }
        }
        v
    }

    /// Every subscription, for the dashboard and the control API.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        let mut v = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, r) in &shard.resources {
                for s in r.subs.values() {
                    v.push(SubscriptionInfo {
                        presentity: k.presentity.to_string(),
                        event: k.pkg.key(),
                        watcher: s.rec.watcher.clone(),
                        state: s.rec.state,
                        expires_at: s.rec.expires_at,
                        local_cseq: s.rec.local_cseq,
                        version: s.rec.version,
                        failures: s.failures,
                        user_agent: s.rec.user_agent.clone(),
                    });
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5057_5_1_which_notify_answers_end_a_subscription() {
        for s in [
            404, 405, 410, 416, 481, 482, 483, 484, 485, 489, 501, 502, 604,
        ] {
            assert_eq!(Outcome::from_status(s), Outcome::Rejected(s), "{s}");
        }
        // About the one request only: the subscription stays and the state is sent again.
        for s in [400, 401, 403, 407, 408, 415, 491, 500, 503, 603] {
            assert_eq!(Outcome::from_status(s), Outcome::Failed(s), "{s}");
        }
        assert_eq!(Outcome::from_status(200), Outcome::Delivered);
        assert_eq!(Outcome::from_status(202), Outcome::Delivered);
    }
}
