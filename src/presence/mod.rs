//! The presence server (RFC 6665 SUBSCRIBE/NOTIFY, RFC 3903 PUBLISH): presentities,
//! publications, subscriptions and NOTIFY generation.
//!
//! One writer per presentity: everything about one presentity (its publications, its
//! watchers' CSeqs and versions, the order of their NOTIFYs) changes under one shard lock,
//! held without `.await`. A subscription has at most one NOTIFY in flight; a change meanwhile
//! is sent, as the newest state, when that NOTIFY is answered. So NOTIFYs of one subscription
//! leave in CSeq order and a lamp can never end on an older state than the last one published.
//! No XML is rendered under the lock: a NOTIFY is decided there (CSeq, version, its place in
//! the subscription's order, a snapshot of the publications) and its body rendered after the
//! lock is released (`render`).
//!
//! A NOTIFY waits for no disk write. What is answered 2xx (SUBSCRIBE, an outside PUBLISH) is
//! on disk before the answer, but a NOTIFY's CSeq and version are not written one by one:
//! each subscription reserves a range of them on disk (`presence.notify_reserve`, 1,000 by
//! default) and NOTIFYs within it write nothing; the one NOTIFY that would pass the range
//! waits for the next reservation (a dozen bytes). After a restart, even a `kill -9`, every
//! watcher gets the full state with a CSeq and version above its reserved range, so above any
//! it got: never backwards, never a repeat (RFC 6665 §4.2.2; RFC 4235 §4.1 lets a watcher take
//! a version jump with a full document).
//!
//! Here: the shared state (shards of resources, each with its publications and
//! subscriptions) and the snapshots. Around it: `decide` (the SUBSCRIBE, PUBLISH and NOTIFY
//! answer decisions as pure functions over plain values), `delivery` (one NOTIFY in flight,
//! pure), `policy` (authorization, Accept),
//! `subscriptions` (SUBSCRIBE, authorization decisions, NOTIFY outcomes, termination),
//! `publications` (PUBLISH and the in-process API), `fanout` (changes to watchers, NOTIFY
//! building, winfo), `routing` (where NOTIFYs go), `render` (the render cache), `timers`
//! and `restore` (reload after a start); [`package`] and [`packages`] render documents.

mod admin;
mod decide;
mod delivery;
pub mod event;
mod fanout;
pub mod notify;
pub mod package;
pub mod packages;
mod policy;
mod publications;
mod quota;
mod render;
mod restore;
mod routing;
mod subscriptions;
mod timers;

pub use admin::{PresenceCounts, PresentityInfo, PublicationInfo, RuleError, MAX_RULES};

use crate::clock::Clock;
use crate::config::{AuthMode, Config, DialogIdsTo, Policy, PresenceConfig, VendorProfile};
use crate::deadline::Deadlines;
use crate::domain::Domains;
use crate::events::{Event, EventBus, SubscriptionChange};
use crate::ids::Ids;
use crate::sip::body::watcherinfo;
use crate::sip::message::Parsed;
use crate::sip::{ContactValue, HasHeaders, HeaderName, Host, Request, Response};
use crate::storage::presence::{publication_key, subscription_key};
use crate::storage::{
    Durable, PresenceStore, PresenceWrite, PublicationBody, PublicationRecord, StorageError,
    SubState, SubscriptionRecord,
};
use crate::transport::{Peer, Proto};
use delivery::Delivery;
use event::{parse_event, EventError, Pkg, ALLOW_EVENTS};
use notify::{NotifyParts, SubscriptionState};
use package::{EventPackage, PublishedBody, RenderOptions, Rendered, WatcherView};
use policy::{accept_list, accepts, Policies};
use quota::{Quota, Quotas};
use render::{Body, RenderCache};
use routing::{flow_of, notify_route, notify_route_of, NotifyRoute};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use timers::Timer;
use tokio::sync::Notify;

const SHARDS: usize = 64;

type DialogIndex = HashMap<Arc<[u8]>, ResKey>;

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
    /// The branch of the request's top Via (its client transaction's key, without parsing
    /// the Via back).
    pub branch: String,
}

/// A NOTIFY decided under the shard lock: its CSeq and version counted, its place in the
/// subscription's order taken (one in flight), its dialog headers shared (not copied) and
/// its body a snapshot of the publications. Nothing is built or rendered yet: whoever sends it does that with no
/// lock held ([`Presence::build_notifies`]), for a fan-out chunk by chunk in the server's
/// outbox, so that neither the request that caused it nor the presentity's next change waits
/// for a thousand requests to be built.
#[derive(Debug)]
pub struct PendingNotify {
    sub: SubRef,
    to: Peer,
    request_uri: Arc<crate::sip::Uri>,
    via_sent_by: Arc<str>,
    head: Arc<notify::DialogHead>,
    cseq: u32,
    state: SubscriptionState,
    body: render::Body,
}

impl PendingNotify {
    /// The subscription it belongs to (its outcome is reported for it).
    pub fn sub(&self) -> &SubRef {
        &self.sub
    }
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

/// NOTIFYs the presence server decided, in order: the server core (built later, it owns the
/// client transactions) builds them ([`Presence::build_notifies`]) and sends each once `after`
/// is on disk (`None`, the usual case: at once) and reports each outcome to
/// [`Presence::notify_outcome`]. `after` is a new reservation of CSeqs and versions, or a
/// subscription's record, that one of the NOTIFYs needs.
pub struct NotifyBatch {
    pub notifies: Vec<PendingNotify>,
    pub after: Option<Durable>,
}

/// Where NOTIFYs leave: one message per decided batch, received by one task of the core, so
/// batches leave in the order they were decided.
pub type NotifyOutbox = tokio::sync::mpsc::UnboundedSender<NotifyBatch>;

/// What the presence server decided about a request.
pub enum Reply {
    Now(Response),
    /// Send `response` once `durable` resolves (acknowledged means durable), then the
    /// NOTIFYs; `fanout` goes out as its doc says.
    AfterWrite {
        response: Response,
        durable: Durable,
        notifies: Vec<OutNotify>,
        /// A PUBLISH's fan-out, decided (its CSeqs counted, its order taken) and handed
        /// over with the answer instead of queued in the outbox: when the write is already
        /// done the `200` leaves first and then the batch goes to the outbox
        /// ([`Presence::release`]); otherwise the server core sends the fan-out while the
        /// write is committed and slips the `200` in between two of its steps as soon as it
        /// is. Either way the answer does not wait behind a thousand NOTIFYs. This reorders
        /// nothing a watcher sees: a subscription has one NOTIFY in flight at a time, so its
        /// next one is decided only after this one is answered.
        fanout: Option<NotifyBatch>,
    },
}

/// Who sent a SUBSCRIBE or PUBLISH, as digest auth established it.
#[derive(Debug, Clone, Copy)]
pub enum Requester<'a> {
    /// Trusted source or open mode.
    Unchecked,
    User(&'a str),
}

/// Who exists besides what the presence server holds itself (publications): the server core
/// knows the users with credentials and the AORs with bindings. A SUBSCRIBE for a presentity
/// that exists nowhere gets `404` (RFC 3261 §21.4.5: the user does not exist at the domain).
pub trait Directory {
    /// Whether `presentity` (a canonical AOR, `sip:1001@example.com`) is a user or has
    /// bindings.
    fn exists(&self, presentity: &str) -> bool;

    /// `dialog;sla`: when `aor` is a configured shared line, the users who may watch it
    /// (its own user and its members); `None` for anything else.
    fn shared_line_users(&self, _aor: &str) -> Option<Vec<String>> {
        None
    }
}

/// A directory that holds everyone: for callers that decided existence themselves.
pub struct Everyone;

impl Directory for Everyone {
    fn exists(&self, _: &str) -> bool {
        true
    }
}

/// What one user holds against its quotas (`presence.max_*_per_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserUsage {
    pub subscriptions: usize,
    /// SIP publications.
    pub publications: usize,
    /// Subscriptions whose last NOTIFY failed.
    pub failing: usize,
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
    /// The status of the last NOTIFY's answer (408 for no answer), `None` before any.
    pub last_answer: Option<u16>,
}

/// NOTIFYs sent and how the failed ones ended, since start (the metrics endpoint's
/// `busylamp_notifies_total`). Bumped on the SIP path: atomics, no lock.
#[derive(Debug, Default)]
pub struct NotifyCounts {
    sent: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
}

/// A reading of [`NotifyCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotifyTotals {
    /// NOTIFY requests sent (each a new client transaction; retransmissions not counted).
    pub sent: u64,
    /// NOTIFYs that got no 2xx (timeout, transport error, 408, 5xx, 401...) whose
    /// subscription stays: the state is sent again later.
    pub retried: u64,
    /// NOTIFYs refused for good (481 and kin, RFC 5057): their subscription ended.
    pub failed: u64,
}

impl NotifyCounts {
    /// A NOTIFY left (the server core started its client transaction).
    pub fn count_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> NotifyTotals {
        NotifyTotals {
            sent: self.sent.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone)]
struct Publication {
    rec: PublicationRecord,
}

/// What a NOTIFY writes before it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persist {
    /// Nothing: a final NOTIFY of a subscription being deleted, a fetch.
    No,
    /// Nothing while its CSeq and version are within the subscription's reserved range; a
    /// new reservation (the ceilings only) when it would pass it.
    Reservation,
    /// The whole record, with its ceilings raised: it changed (new subscription, refresh,
    /// authorization).
    Record,
}

#[derive(Debug)]
struct Sub {
    rec: SubscriptionRecord,
    key: Arc<[u8]>,
    /// Where its NOTIFYs go, worked out once (and again on a refresh), not per NOTIFY.
    route: NotifyRoute,
    /// Its NOTIFYs' dialog headers, printed once (they never change), shared with each
    /// NOTIFY decided.
    head: Arc<notify::DialogHead>,
    profile: Arc<VendorProfile>,
    delivery: Delivery,
    failures: u32,
    /// The status of the last NOTIFY's answer, for the control API.
    last_answer: Option<u16>,
    /// Whether its dialog-info NOTIFYs carry the dialogs' `call-id` and tags
    /// (`presence.dialog_ids_to`).
    dialog_ids: bool,
    /// winfo only: watchers changed since the last NOTIFY (sent as a partial document).
    winfo_changes: Vec<watcherinfo::Watcher>,
    /// winfo only: the next NOTIFY must be a full document.
    winfo_full: bool,
}

/// A subscription that has ended while a NOTIFY of it was unanswered: its final NOTIFY waits
/// for that answer (or timeout), so it leaves after it, with the next CSeq.
#[derive(Debug)]
struct Closing {
    sub: Box<Sub>,
    reason: &'static str,
}

#[derive(Debug, Default)]
struct Resource {
    pubs: Vec<Publication>,
    /// Boxed: a map's buckets are its capacity, not its length (up to twice as many), and a
    /// pointer per spare bucket costs far less than a whole subscription.
    subs: HashMap<Arc<[u8]>, Box<Sub>>,
    /// Ended subscriptions whose final NOTIFY waits for the one in flight.
    closing: HashMap<Arc<[u8]>, Closing>,
    /// The publications last fanned out: an unchanged document is not re-sent. `None` when
    /// unknown (always send).
    fanned_out: Option<Arc<render::Snapshot>>,
    last_fanout: Option<Instant>,
    flush_scheduled: bool,
    /// The only source whose changes wait in the coalescing window (`dialog;sla` echo
    /// suppression); `None` when several did or none.
    pending_source: Option<Option<String>>,
    /// The current publications as last handed out for rendering (see
    /// [`Presence::snapshot`]). A `RefCell`: the resource is only reached under its shard's
    /// lock.
    snapshot: std::cell::RefCell<Option<Arc<render::Snapshot>>>,
    /// Documents rendered from its snapshots, shared with the renderers (which run with no
    /// shard lock held).
    rendered: Arc<Mutex<RenderCache>>,
}

impl Sub {
    /// A subscription with nothing in flight or owed; its first NOTIFY is a full document.
    fn new(
        mut rec: SubscriptionRecord,
        key: Arc<[u8]>,
        route: NotifyRoute,
        profile: Arc<VendorProfile>,
        dialog_ids: bool,
    ) -> Box<Sub> {
        rec.shrink_to_fit();
        Box::new(Sub {
            head: Arc::new(notify::DialogHead::of(&rec)),
            rec,
            key,
            route,
            profile,
            delivery: Delivery::default(),
            failures: 0,
            last_answer: None,
            dialog_ids,
            winfo_changes: Vec::new(),
            winfo_full: true,
        })
    }
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
            self.fanned_out = None;
        }
    }
}

#[derive(Default)]
struct Shard {
    /// Boxed, as a presentity's subscriptions are: with one watcher per presentity (a
    /// presence buddy list) the spare buckets of a map of whole resources cost more than the
    /// resources.
    resources: HashMap<ResKey, Box<Resource>>,
}

impl Shard {
    fn resource(&self, key: &ResKey) -> Option<&Resource> {
        self.resources.get(key).map(|r| &**r)
    }
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
    branches: crate::transaction::BranchKey,
    timers: Mutex<Deadlines<Timer>>,
    timers_changed: Notify,
    subscription_count: AtomicUsize,
    publication_count: AtomicUsize,
    seq: AtomicU64,
    /// `None`: NOTIFYs are dropped (tests of the presence state alone).
    outbox: Option<NotifyOutbox>,
    events: EventBus,
    default_profile: Arc<VendorProfile>,
    profiles: Vec<Arc<VendorProfile>>,
    policies: Policies,
    quotas: Quotas,
    /// `[auth] mode = "open"`: nobody is identified, every user of our domain exists.
    open_mode: bool,
    /// `[auth] trusted`: proxies a NOTIFY may be routed through (the first hop of a route set
    /// the watcher chose is followed only to these).
    trusted: Vec<ipnet::IpNet>,
    /// Failing NOTIFYs, summed up at `info` once per interval ([`Presence::run_log_summary`]).
    notify_failures: crate::logs::NotifyFailures,
    /// NOTIFYs sent, retried and failed since start, for the metrics endpoint.
    notify_counts: NotifyCounts,
    /// The admin's standing authorization rules (see [`admin`]), loaded with the state.
    standing: Mutex<Vec<crate::storage::RuleRecord>>,
    /// Small fan-outs of in-process publishers (a call's lamps) that wait for no write: the
    /// core sends them right after the message that caused them ([`Presence::take_express`]),
    /// instead of when its receive loop next yields to the outbox task (after a burst of
    /// datagrams that is milliseconds later). A wake-up in the outbox sends them otherwise.
    express: Mutex<Vec<PendingNotify>>,
}

/// Most NOTIFYs one express fan-out carries ([`Presence::take_express`]); a larger one goes
/// through the outbox, which paces it (a lamp with 10 watchers is well within).
pub const EXPRESS_MAX: usize = 64;

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
    crate::hashing::fixed_hash(v)
}

fn package(pkg: Pkg) -> Option<&'static dyn EventPackage> {
    packages::lookup(pkg.key())
}

impl Presence {
    /// `events`: where "what changed" notices go (the dashboard, the control API); `ids`
    /// makes ETags, `branches` mints the branches of our NOTIFYs.
    pub fn new(
        cfg: &Config,
        store: Arc<dyn PresenceStore>,
        events: EventBus,
        clock: Clock,
        ids: Ids,
        branches: crate::transaction::BranchKey,
    ) -> Arc<Presence> {
        Presence::with_outbox(cfg, store, events, clock, ids, branches, None)
    }

    /// A presence server whose NOTIFYs go into `outbox`.
    pub fn with_outbox(
        cfg: &Config,
        store: Arc<dyn PresenceStore>,
        events: EventBus,
        clock: Clock,
        ids: Ids,
        branches: crate::transaction::BranchKey,
        outbox: Option<NotifyOutbox>,
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
        let policies = Policies::new(&cfg.presence, &domains);
        Arc::new(Presence {
            cfg: cfg.presence.clone(),
            domains,
            policies,
            server_header: cfg.server.server_header.clone(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            dialogs: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            store,
            clock,
            ids,
            branches,
            timers: Mutex::new(Deadlines::new()),
            timers_changed: Notify::new(),
            subscription_count: AtomicUsize::new(0),
            publication_count: AtomicUsize::new(0),
            seq: AtomicU64::new(1),
            outbox,
            events,
            default_profile,
            profiles,
            quotas: Quotas::new(&cfg.presence),
            open_mode: cfg.auth.mode == AuthMode::Open,
            trusted: cfg.auth.trusted.clone(),
            notify_failures: Default::default(),
            notify_counts: Default::default(),
            standing: Mutex::new(Vec::new()),
            express: Mutex::new(Vec::new()),
        })
    }

    /// Writes the summary of failing NOTIFYs once per
    /// [`crate::logs::NOTIFY_SUMMARY_INTERVAL`]; runs for the server's lifetime.
    pub async fn run_log_summary(self: Arc<Self>) {
        let mut every = tokio::time::interval(crate::logs::NOTIFY_SUMMARY_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.notify_failures.summarise();
        }
    }

    /// Whether a watcher (its canonical AOR when it is one of our users) gets the dialog
    /// identifiers in dialog-info NOTIFYs. "same_domain": a user of our domain; an
    /// authenticated watcher is always its own AOR (checked at SUBSCRIBE), so this holds for
    /// the subscription's life and after a restart.
    fn dialog_ids_for(&self, watcher: &str) -> bool {
        match self.cfg.dialog_ids_to {
            DialogIdsTo::Everyone => true,
            DialogIdsTo::Nobody => false,
            DialogIdsTo::SameDomain => match crate::sip::Uri::parse(watcher) {
                Ok(crate::sip::Uri::Sip(u)) => u.user.is_some() && self.domains.serves(&u.host),
                _ => false,
            },
        }
    }

    /// What `user` (a watcher's or publisher's AOR, see [`quota`]) holds against its quotas.
    pub fn user_usage(&self, user: &str) -> UserUsage {
        UserUsage {
            subscriptions: self.quotas.used(user, Quota::Subscriptions),
            publications: self.quotas.used(user, Quota::Publications),
            failing: self.quotas.failing(user),
        }
    }

    /// Whose publication quota a publication counts in: a SIP publication's presentity
    /// (see [`quota`]); in-process publications count for nobody.
    fn publisher_of(rec: &PublicationRecord) -> Option<&str> {
        rec.source_id
            .starts_with("etag:")
            .then_some(rec.presentity.as_str())
    }

    /// A publication is gone: its publisher's place is free again.
    fn publication_gone(&self, rec: &PublicationRecord) {
        self.publication_count.fetch_sub(1, Ordering::Relaxed);
        if let Some(user) = Self::publisher_of(rec) {
            self.quotas.release(user, Quota::Publications);
        }
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
            state: match rec.state {
                SubState::Active => "active",
                SubState::Pending => "pending",
            },
        });
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

    pub fn profile_for(&self, user_agent: Option<&str>) -> Arc<VendorProfile> {
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

    /// Builds NOTIFYs decided under a shard lock: their requests, with a fresh branch each,
    /// and their bodies rendered (once per snapshot and view, see `render`). Called with no
    /// shard lock held: building never holds up the presentity's other changes, and the
    /// NOTIFYs' order was fixed when they were decided (one in flight per subscription).
    pub fn build_notifies(
        &self,
        pending: impl IntoIterator<Item = PendingNotify>,
    ) -> Vec<OutNotify> {
        pending.into_iter().map(|p| self.build_notify(p)).collect()
    }

    fn build_notify(&self, p: PendingNotify) -> OutNotify {
        let pkg = p.sub.res.pkg;
        let branch = self.branches.mint(self.ids.next());
        let body = self.render_body(p.body, p.head.accept());
        let request = notify::build_from(
            &p.head,
            p.cseq,
            pkg,
            &NotifyParts {
                request_uri: &p.request_uri,
                via_sent_by: &p.via_sent_by,
                transport: p.to.proto.via_name(),
                branch: &branch,
                state: p.state,
                body: body.as_ref(),
                server_header: &self.server_header,
            },
        );
        OutNotify {
            sub: p.sub,
            request,
            to: p.to,
            branch,
        }
    }

    /// Queues `writes`; what the NOTIFYs decided with them wait for: the writes when they
    /// hold a reservation, a subscription's record or its deletion
    /// ([`PresenceWrite::gates_notifies`]), else nothing (publications, or no write at all:
    /// a NOTIFY within its reserved range).
    fn write_gating(&self, writes: Vec<PresenceWrite>) -> Option<Durable> {
        if writes.is_empty() {
            return None;
        }
        let gates = writes.iter().any(PresenceWrite::gates_notifies);
        let durable = self.store.write(writes);
        gates.then_some(durable)
    }

    /// Hands decided NOTIFYs to the outbox, unbuilt: the request path that decided them
    /// (a PUBLISH's, a call's lamp) goes on at once.
    fn send(&self, notifies: Vec<PendingNotify>, after: Option<Durable>) {
        self.release(NotifyBatch { notifies, after });
    }

    /// Hands a batch to the outbox (a PUBLISH's fan-out after its `200`:
    /// [`Reply::AfterWrite`]'s `fanout`).
    pub fn release(&self, batch: NotifyBatch) {
        if batch.notifies.is_empty() {
            return;
        }
        let count = batch.notifies.len();
        let sent = match &self.outbox {
            Some(outbox) => outbox.send(batch).is_ok(),
            None => false,
        };
        if !sent {
            tracing::debug!(count, "no NOTIFY outbox (server stopped); dropping");
        }
    }

    /// As [`Presence::send`], for an in-process publisher's change: a small batch that waits
    /// for no write takes the express lane. It may leave before batches queued earlier in the
    /// outbox: each subscription has at most one NOTIFY decided and unanswered (its place in
    /// the order is taken when it is decided), so no subscription's order changes.
    fn send_express(&self, notifies: Vec<PendingNotify>, after: Option<Durable>) {
        if notifies.is_empty() || after.is_some() || notifies.len() > EXPRESS_MAX {
            return self.send(notifies, after);
        }
        let Some(outbox) = &self.outbox else {
            return self.send(notifies, after);
        };
        self.express
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(notifies);
        // Whoever comes first sends them: the core after the message being handled, or the
        // outbox on this wake-up (a change made outside a message: a timer, the control API).
        let _ = outbox.send(NotifyBatch {
            notifies: Vec::new(),
            after: None,
        });
    }

    /// The express lane's NOTIFYs not sent yet, in the order they were decided
    /// ([`Presence::send_express`]).
    pub fn take_express(&self) -> Vec<PendingNotify> {
        let mut q = self.express.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut *q)
    }

    fn error_reply(req: &Request, status: u16, reason: &str, to_tag: &str) -> Response {
        let mut r = req.response(status, reason, Some(to_tag));
        r.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        r
    }

    /// The Expires a SUBSCRIBE or PUBLISH asked for, checked against min/max (RFC 6665
    /// §4.2.1.1, RFC 3903 §6 step 6): `Err` is the 423.
    fn granted_expires(&self, parsed: &Parsed) -> Result<u32, u32> {
        decide::granted_expires(
            parsed.expires,
            self.cfg.default_expires,
            self.cfg.min_expires,
            self.cfg.max_expires,
        )
    }

    fn too_brief(req: &Request, min: u32, to_tag: &str) -> Response {
        let mut r = Self::error_reply(req, 423, "Interval Too Brief", to_tag);
        r.headers.push(HeaderName::MinExpires, min.to_string());
        r
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

    /// Every live publication of `presentity` in `pkg`: (source id, body).
    pub fn publications_of(&self, presentity: &str, pkg: Pkg) -> Vec<(String, PublicationBody)> {
        let shard = self.shard(presentity);
        let res = ResKey {
            presentity: presentity.into(),
            pkg,
        };
        shard
            .resources
            .get(&res)
            .map(|r| {
                r.pubs
                    .iter()
                    .map(|p| (p.rec.source_id.clone(), p.rec.body.clone()))
                    .collect()
            })
            .unwrap_or_default()
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

    /// NOTIFYs sent, retried and failed since start (the server core counts the sent ones).
    pub fn notify_counts(&self) -> &NotifyCounts {
        &self.notify_counts
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
                        last_answer: s.last_answer,
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
