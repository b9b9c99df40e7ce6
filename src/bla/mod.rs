//! Shared lines: Bridged Line Appearance (draft-anil-sipping-bla-03) as Polycom phones do it,
//! the job of Kamailio/OpenSIPS `pua_bla` plus what they leave out: arbitration of the
//! appearances (`409` to a seize of a taken one, as sipXsaa did) and a table that survives a
//! restart.
//!
//! The data flow, for one line (`[[bla.lines]]`):
//! - the registrar tells us ([`BindingObserver`]) of every change of the line's bindings; each
//!   member phone (one registered contact) gets our `SUBSCRIBE Event: dialog;sla` through the
//!   presence client, To = From = the line, sent over the flow the phone registered from;
//! - the phone NOTIFYs its dialogs on the line; the NOTIFY is ours only inside that
//!   subscription dialog (the client answers `481` to anything else), so the phone that sent a
//!   change is known from our own subscription, never from a header;
//! - the [`appearances::Line`] table decides (`200`, or `409` with nothing changed), and what
//!   the other phones may see of this phone goes into the presence server as its publication
//!   (`dialog;sla` and `dialog`, source `bla:<phone>`, typed state); the `200` leaves once that
//!   is on disk, and the presence server NOTIFYs the watchers: each member phone's own
//!   `dialog;sla` subscription gets every appearance of the other phones
//!   ([`crate::presence::package::RenderOptions::own_phone`]), BLF keys watching the line see
//!   it busy.
//!
//! After a restart the publications are the table ([`Bla::start`]): restored unconfirmed, the
//! phones are subscribed again and answer with their full state; what no phone confirms within
//! `[bla] reconcile_timeout` is released.

pub mod appearances;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::Domains;
use crate::events::{Event, EventBus};
use crate::presence::event::Pkg;
use crate::pua::client::{
    NotifyAnswer, SubState, SubscribeOptions, Subscription, SubscriptionEvent,
};
use crate::pua::Pua;
use crate::registrar::{BindingObserver, Registrar};
use crate::sip::body::dialog_info::{self, DialogInfo, DocState};
use crate::sip::{SipUri, Uri};
use crate::storage::{Binding, Durable, PublicationBody};
use appearances::{Appearance, AppearanceState, Line};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// The event package of the shared-line subscriptions.
pub const EVENT: &str = "dialog;sla";

/// How long a phone's publication lives. The table is the truth while we run and every
/// change publishes again; after a restart the reconciliation decides. A week outlives any
/// call.
const PUBLICATION_EXPIRES: u32 = 7 * 86_400;

/// Seconds our SUBSCRIBE's Expires may differ from what it should be before it is refreshed
/// with the new value.
const ADJUST_SLACK: u32 = 30;

/// The key of a member phone: its contact's `host:port`, hashed. The same phone is found from
/// our subscription's target (the contact it registered) and from the Contact of its own
/// `dialog;sla` SUBSCRIBE, so each watcher can be spared its own dialogs.
pub fn phone_of_uri(uri: &SipUri) -> u64 {
    use md5::Digest;
    let port = uri.port.unwrap_or(if uri.secure { 5061 } else { 5060 });
    let mut h = md5::Md5::new();
    h.update(b"busylamp-bla\0");
    h.update(uri.host.to_string().to_ascii_lowercase().as_bytes());
    h.update(format!(":{port}").as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([0, 0, d[0], d[1], d[2], d[3], d[4], d[5]])
}

/// [`phone_of_uri`] of a URI in text; `None` for anything but a SIP URI.
pub fn phone_of(uri: &str) -> Option<u64> {
    match Uri::parse(uri.trim()) {
        Ok(Uri::Sip(u)) => Some(phone_of_uri(&u)),
        _ => None,
    }
}

/// The name of a phone in the table, the dialog ids others see and the dashboard.
pub fn phone_name(phone: u64) -> String {
    format!("p{phone:012x}")
}

/// The presence source id of a phone's publication.
pub fn source_id(phone: u64) -> String {
    format!("bla:{}", phone_name(phone))
}

/// One shared line as configured, with its canonical AOR.
#[derive(Debug, Clone)]
pub struct LineConfig {
    pub aor: String,
    pub label: Option<String>,
    pub appearances: u32,
    /// Users who may register, call from and watch the line: its own user and its members.
    pub users: Vec<String>,
}

/// `[bla]`, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lines: Vec<LineConfig>,
    pub seize_timeout: u64,
    pub subscribe_margin: u32,
    pub seized_expires: u32,
    pub resubscribe_wait: Duration,
    pub reconcile_timeout: u64,
    /// `[[presence.profiles]]`: (User-Agent substring, bla_subscribe), and the default.
    pub profiles: Vec<(String, bool)>,
    pub default_subscribe: bool,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let domains = Domains::new(cfg);
        let lines = cfg
            .bla
            .lines
            .iter()
            .map(|l| {
                let aor = l.canonical_aor(&domains);
                let own = crate::domain::user_of_aor(&aor).to_string();
                let mut users = vec![own];
                users.extend(l.members.iter().cloned());
                users.dedup();
                LineConfig {
                    aor,
                    label: l.label.clone(),
                    appearances: l.appearances,
                    users,
                }
            })
            .collect();
        let profiles = cfg
            .presence
            .profiles
            .iter()
            .filter(|p| !p.user_agent.is_empty())
            .map(|p| (p.user_agent.clone(), p.bla_subscribe))
            .collect();
        let default_subscribe = cfg
            .presence
            .profiles
            .iter()
            .find(|p| p.name == "default")
            .map(|p| p.bla_subscribe)
            .unwrap_or(true);
        Settings {
            lines,
            seize_timeout: cfg.bla.seize_timeout,
            subscribe_margin: cfg.bla.subscribe_margin,
            seized_expires: cfg.bla.seized_expires,
            resubscribe_wait: Duration::from_secs(cfg.bla.resubscribe_wait),
            reconcile_timeout: cfg.bla.reconcile_timeout,
            profiles,
            default_subscribe,
        }
    }

    /// Whether a contact registered by this User-Agent gets our `dialog;sla` SUBSCRIBE
    /// (`[[presence.profiles]] bla_subscribe`).
    fn subscribes(&self, user_agent: Option<&str>) -> bool {
        if let Some(ua) = user_agent {
            if let Some((_, yes)) = self.profiles.iter().find(|(s, _)| ua.contains(s.as_str())) {
                return *yes;
            }
        }
        self.default_subscribe
    }
}

/// The dashboard's and the control API's view of one line.
#[derive(Debug, Clone)]
pub struct LineInfo {
    pub aor: String,
    pub label: Option<String>,
    pub appearances: Vec<AppearanceInfo>,
    pub phones: Vec<PhoneInfo>,
}

#[derive(Debug, Clone)]
pub struct AppearanceInfo {
    pub index: u32,
    /// `free`, `seized`, `ringing`, `active`, `held`.
    pub state: &'static str,
    /// The phone's name and its contact.
    pub phone: Option<String>,
    pub contact: Option<String>,
    pub peer: Option<String>,
    /// Unix seconds since the appearance is in this state.
    pub since: u64,
}

#[derive(Debug, Clone)]
pub struct PhoneInfo {
    pub phone: String,
    pub contact: String,
    pub user_agent: Option<String>,
    /// Our `dialog;sla` subscription to it is established.
    pub subscribed: bool,
}

pub fn state_name(s: AppearanceState) -> &'static str {
    s.as_str()
}

/// One member phone of a line: where it registered from and our subscription to it.
struct Member {
    contact: String,
    /// The flow it registered from (`udp:192.0.2.7:5060`); our requests go there.
    flow: String,
    user_agent: Option<String>,
    expires_at: u64,
    sub: Option<Subscription>,
    /// Counts the subscriptions made to this phone; events of an older one are stale.
    generation: u64,
    /// The Expires our SUBSCRIBE asks for now.
    asked: u32,
}

#[derive(Default)]
struct State {
    tables: HashMap<String, Line>,
    /// Member phones per line.
    members: HashMap<String, BTreeMap<u64, Member>>,
    /// Until then, restored appearances wait for their phone's full NOTIFY.
    reconcile_at: Option<u64>,
    /// Nothing is subscribed before [`Bla::start`] (the presence state must be loaded).
    started: bool,
}

pub struct Bla {
    settings: Settings,
    pua: Arc<Pua>,
    clock: Clock,
    events: EventBus,
    state: Mutex<State>,
    wake: Notify,
    this: Weak<Bla>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A flow (`udp:192.0.2.7:5060`, `tcp:[2001:db8::1]:5060`) as a `sip:` URI to send to.
fn flow_uri(flow: &str) -> Option<String> {
    let (proto, addr) = flow.split_once(':')?;
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    Some(match proto {
        "tcp" => format!("sip:{addr};transport=tcp"),
        _ => format!("sip:{addr}"),
    })
}

/// One [`Durable`] for two writes.
fn both(a: Durable, b: Durable) -> Durable {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let ra = crate::storage::durable(a).await;
        let rb = crate::storage::durable(b).await;
        let _ = tx.send(ra.and(rb));
    });
    rx
}

impl Bla {
    pub fn new(cfg: &Config, pua: Arc<Pua>, clock: Clock, events: EventBus) -> Arc<Bla> {
        let settings = Settings::from_config(cfg);
        let mut state = State::default();
        for l in &settings.lines {
            state
                .tables
                .insert(l.aor.clone(), Line::new(&l.aor, l.appearances));
            state.members.insert(l.aor.clone(), BTreeMap::new());
        }
        Arc::new_cyclic(|this| Bla {
            settings,
            pua,
            clock,
            events,
            state: Mutex::new(state),
            wake: Notify::new(),
            this: this.clone(),
        })
    }

    fn line_config(&self, aor: &str) -> Option<&LineConfig> {
        self.settings.lines.iter().find(|l| l.aor == aor)
    }

    /// Whether `aor` (canonical) is a shared line.
    pub fn is_line(&self, aor: &str) -> bool {
        self.line_config(aor).is_some()
    }

    /// The users who may watch, register and call from line `aor`; `None`: not a line.
    pub fn line_users(&self, aor: &str) -> Option<Vec<String>> {
        self.line_config(aor).map(|l| l.users.clone())
    }

    /// Restores the table from the presence server's publications (loaded before) and
    /// subscribes to every registered member phone. Restored appearances stay until their
    /// phone answers with its full state, at most `[bla] reconcile_timeout`.
    pub fn start(&self, registrar: &Registrar) {
        let now = self.clock.now_unix();
        let presence = self.pua.presence().clone();
        {
            let mut st = lock(&self.state);
            for l in &self.settings.lines {
                let Some(table) = st.tables.get_mut(&l.aor) else {
                    continue;
                };
                for (source, body) in presence.publications_of(&l.aor, Pkg::Sla) {
                    let Some(phone) = source.strip_prefix("bla:") else {
                        continue;
                    };
                    if let PublicationBody::Dialogs(info) = body {
                        table.restore(phone, info.dialogs.clone(), now);
                    }
                }
            }
            st.reconcile_at = Some(now + self.settings.reconcile_timeout);
            st.started = true;
        }
        for l in &self.settings.lines {
            let bindings = registrar.lookup(&l.aor);
            self.bindings_changed(&l.aor, &bindings);
        }
        // Restored phones that are not registered any more will never confirm.
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        for (aor, table) in st.tables.iter_mut() {
            let members = st.members.get(aor);
            for phone in table.unconfirmed() {
                let registered = members.is_some_and(|m| m.keys().any(|k| phone_name(*k) == phone));
                if !registered {
                    self.release(aor, table, &phone, "not registered after restart");
                }
            }
        }
        self.wake.notify_one();
    }

    /// The seize timeouts and the end of the reconciliation; runs for the server's life.
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            let next = {
                let st = lock(&self.state);
                let seizes = st
                    .tables
                    .values()
                    .filter_map(|t| t.next_seize_expiry(self.settings.seize_timeout))
                    .min();
                [seizes, st.reconcile_at].into_iter().flatten().min()
            };
            match next {
                Some(at) => {
                    let at = self.clock.instant_of(at);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => continue,
                    }
                }
                None => {
                    self.wake.notified().await;
                    continue;
                }
            }
            self.on_timer(self.clock.now_unix());
        }
    }

    fn on_timer(&self, now: u64) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let reconcile_over = st.reconcile_at.is_some_and(|at| at <= now);
        if reconcile_over {
            st.reconcile_at = None;
        }
        for (aor, table) in st.tables.iter_mut() {
            let before = table.snapshot();
            let expired = table.expire_seizes(now, self.settings.seize_timeout);
            for phone in &expired {
                tracing::info!(line = %aor, %phone, "a seize that never became a call was released");
                self.publish_phone(aor, table, phone);
            }
            if reconcile_over {
                for phone in table.unconfirmed() {
                    self.release(aor, table, &phone, "no full state after restart");
                }
            }
            self.announce(aor, &before, &table.snapshot());
            self.adjust_expires(table, st.members.get_mut(aor));
        }
    }

    /// Releases every appearance `phone` holds on line `aor` and tells the others.
    fn release(&self, aor: &str, table: &mut Line, phone: &str, why: &str) {
        if table.release_phone(phone) {
            tracing::info!(line = %aor, %phone, reason = why, "appearances released");
            self.publish_phone(aor, table, phone);
        }
    }

    /// Publishes what the other phones may see of `phone` (or removes it): the returned
    /// write is what an answer must wait for.
    fn publish_phone(&self, aor: &str, table: &Line, phone: &str) -> Option<Durable> {
        let shown = table.shown(phone);
        let source = format!("bla:{phone}");
        let (body, expires) = if shown.is_empty() {
            (PublicationBody::Document(Arc::from(&[][..])), 0)
        } else {
            let info = DialogInfo {
                entity: aor.to_string(),
                version: 0,
                state: DocState::Full,
                dialogs: shown,
            };
            (
                PublicationBody::Dialogs(Arc::new(info)),
                PUBLICATION_EXPIRES,
            )
        };
        let mut writes = Vec::new();
        for pkg in [Pkg::Sla, Pkg::Dialog] {
            match self.pua.publish(aor, pkg, &source, body.clone(), expires) {
                Ok(d) => writes.push(d),
                Err(e) => {
                    tracing::warn!(line = %aor, %phone, error = %e, "shared line state not published")
                }
            }
        }
        let mut writes = writes.into_iter();
        let first = writes.next()?;
        Some(writes.fold(first, both))
    }

    /// Event-bus notices for the appearances that changed.
    fn announce(&self, aor: &str, before: &[Appearance], after: &[Appearance]) {
        for a in after {
            let was = before.iter().find(|b| b.index == a.index);
            if was.is_some_and(|b| b.state == a.state && b.phone == a.phone && b.peer == a.peer) {
                continue;
            }
            self.events.publish(Event::Appearance {
                line: aor.to_string(),
                appearance: a.index,
                state: state_name(a.state),
                phone: a.phone.clone(),
                peer: a.peer.clone(),
            });
        }
    }

    /// Our SUBSCRIBE's Expires for each phone of line `aor`: the binding's remaining time
    /// plus the margin, shorter while the phone holds a seize (a phone that dies with a
    /// seized appearance is noticed sooner).
    fn adjust_expires(&self, table: &Line, members: Option<&mut BTreeMap<u64, Member>>) {
        let Some(members) = members else { return };
        let now = self.clock.now_unix();
        for (key, m) in members.iter_mut() {
            let Some(sub) = &m.sub else { continue };
            let want = self.expires_for(m.expires_at, now, table.has_seize(&phone_name(*key)));
            // A REGISTER refresh moves the binding's expiry by a second or two: not worth a
            // SUBSCRIBE. A seize taken or given up, or a binding made much longer, is.
            if want.abs_diff(m.asked) > ADJUST_SLACK {
                sub.set_expires(want);
                m.asked = want;
            }
        }
    }

    fn expires_for(&self, binding_expires_at: u64, now: u64, seized: bool) -> u32 {
        let left = u32::try_from(binding_expires_at.saturating_sub(now)).unwrap_or(u32::MAX);
        let normal = left.saturating_add(self.settings.subscribe_margin).max(60);
        if seized {
            normal.min(self.settings.seized_expires)
        } else {
            normal
        }
    }

    /// A NOTIFY inside our subscription to `phone` of line `aor` (generation `generation`).
    fn on_phone_notify(
        &self,
        aor: &str,
        phone: u64,
        generation: u64,
        event: &SubscriptionEvent,
    ) -> NotifyAnswer {
        let SubscriptionEvent::Notify {
            state,
            content_type,
            body,
        } = event
        else {
            return NotifyAnswer::ok();
        };
        let name = phone_name(phone);
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let current = st
            .members
            .get(aor)
            .and_then(|m| m.get(&phone))
            .is_some_and(|m| m.generation == generation);
        if !current {
            // An older subscription to this phone, ending: the current one speaks for it.
            return NotifyAnswer::ok();
        }
        let Some(table) = st.tables.get_mut(aor) else {
            return NotifyAnswer::new(481, "Subscription Does Not Exist");
        };
        let before = table.snapshot();
        let mut durable = None;
        if let SubState::Terminated { reason, .. } = state {
            // The phone ended our subscription: what it held is unknown from now on.
            let why = format!(
                "the phone ended the subscription ({})",
                reason.as_deref().unwrap_or("no reason")
            );
            if table.release_phone(&name) {
                tracing::info!(line = %aor, phone = %name, reason = %why, "appearances released");
                durable = self.publish_phone(aor, table, &name);
            }
        } else if !body.is_empty() {
            let ct = content_type.as_deref().unwrap_or("");
            let ct_main = ct.split(';').next().unwrap_or("").trim();
            if !ct_main.eq_ignore_ascii_case(dialog_info::CONTENT_TYPE) {
                return NotifyAnswer::new(
                    415,
                    format!(
                        "Unsupported Media Type: dialog;sla needs {}",
                        dialog_info::CONTENT_TYPE
                    ),
                );
            }
            let doc = match dialog_info::parse(body) {
                Ok(d) => d,
                Err(e) => {
                    return NotifyAnswer::new(
                        400,
                        format!("Bad Request: {}", one_line(&e.to_string())),
                    )
                }
            };
            match table.apply(&name, &doc, self.clock.now_unix()) {
                Ok(applied) => {
                    if applied.changed {
                        durable = self.publish_phone(aor, table, &name);
                    }
                    // A held call picked up here, or a restored appearance taken over: the
                    // other phone's view changed too.
                    for other in &applied.others {
                        if let Some(d) = self.publish_phone(aor, table, other) {
                            durable = Some(match durable.take() {
                                Some(mine) => both(mine, d),
                                None => d,
                            });
                        }
                    }
                }
                Err(refusal) => {
                    let (status, reason) = refusal.status();
                    tracing::info!(line = %aor, phone = %name, %status, %reason, "shared line NOTIFY refused");
                    return NotifyAnswer::new(status, reason);
                }
            }
        }
        let after = table.snapshot();
        self.announce(aor, &before, &after);
        let durable = match durable {
            None => {
                self.adjust_expires(table, st.members.get_mut(aor));
                None
            }
            // A seize shortens our subscription (a refresh SUBSCRIBE): it follows the `200`
            // to the seize rather than crossing it (a phone reading both at once, as sipp
            // does, sees the SUBSCRIBE first otherwise).
            Some(written) => Some(self.then_adjust(aor, written)),
        };
        drop(guard);
        self.wake.notify_one();
        NotifyAnswer {
            durable,
            ..NotifyAnswer::ok()
        }
    }

    /// The write the answer waits for, passed on; our subscriptions' Expires on line `aor`
    /// adjusted once it is done and the answer on its way.
    fn then_adjust(&self, aor: &str, written: Durable) -> Durable {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let weak = self.this.clone();
        let aor = aor.to_string();
        tokio::spawn(async move {
            let _ = tx.send(crate::storage::durable(written).await);
            // The server's task sends the answer as soon as it hears of the write.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            let Some(bla) = weak.upgrade() else { return };
            let mut guard = lock(&bla.state);
            let st = &mut *guard;
            if let Some(table) = st.tables.get(&aor) {
                bla.adjust_expires(table, st.members.get_mut(&aor));
            }
        });
        rx
    }

    /// Our subscription to a phone ended (or could not be made): it releases what the phone
    /// held (a phone we cannot hear from must not keep a line's appearance: the "ghost" lamps
    /// of stale appearances).
    fn on_phone_ended(&self, aor: &str, phone: u64, generation: u64, reason: &str) {
        let name = phone_name(phone);
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        // The end of an older subscription to a phone that moved: the new one speaks for it.
        if st
            .members
            .get(aor)
            .and_then(|m| m.get(&phone))
            .is_some_and(|m| m.generation != generation)
        {
            return;
        }
        let Some(table) = st.tables.get_mut(aor) else {
            return;
        };
        let before = table.snapshot();
        self.release(aor, table, &name, reason);
        self.announce(aor, &before, &table.snapshot());
        drop(guard);
        self.wake.notify_one();
    }

    /// Subscribes to `phone` of line `aor`, after `wait` (an old subscription ending).
    fn subscribe_member(&self, aor: &str, phone: u64, generation: u64, wait: Option<Subscription>) {
        let Some(me) = self.this.upgrade() else {
            return;
        };
        let aor = aor.to_string();
        tokio::spawn(async move {
            if let Some(old) = wait {
                // Polycom keeps one dialog;sla subscription: the old one must be over
                // before the new one starts, or the new one is lost.
                old.unsubscribe();
                let deadline = tokio::time::Instant::now() + me.settings.resubscribe_wait;
                while old.is_established() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            me.start_subscription(&aor, phone, generation);
        });
    }

    fn start_subscription(&self, aor: &str, phone: u64, generation: u64) {
        let now = self.clock.now_unix();
        let mut st = lock(&self.state);
        let seized = st
            .tables
            .get(aor)
            .is_some_and(|t| t.has_seize(&phone_name(phone)));
        let Some(m) = st.members.get_mut(aor).and_then(|m| m.get_mut(&phone)) else {
            return;
        };
        if m.generation != generation || m.sub.is_some() {
            return;
        }
        let Some(outbound) = flow_uri(&m.flow) else {
            tracing::warn!(line = %aor, flow = %m.flow, "cannot reach a member phone's flow");
            return;
        };
        let expires = self.expires_for(m.expires_at, now, seized);
        let weak = self.this.clone();
        let judge_aor = aor.to_string();
        let judge: crate::pua::client::NotifyJudge = Arc::new(move |ev| match weak.upgrade() {
            Some(bla) => bla.on_phone_notify(&judge_aor, phone, generation, ev),
            None => NotifyAnswer::new(481, "Subscription Does Not Exist"),
        });
        let weak = self.this.clone();
        let ended_aor = aor.to_string();
        let on_event: crate::pua::client::NotifyCallback = Arc::new(move |ev| {
            if let SubscriptionEvent::Ended { reason, .. } = ev {
                if let Some(bla) = weak.upgrade() {
                    bla.on_phone_ended(&ended_aor, phone, generation, reason);
                }
            }
        });
        let options = SubscribeOptions {
            to: Some(aor.to_string()),
            outbound: Some(outbound),
            pinned: true,
            judge: Some(judge),
        };
        match self
            .pua
            .subscribe_with(&m.contact, EVENT, aor, expires, options, on_event)
        {
            Ok(sub) => {
                m.sub = Some(sub);
                m.asked = expires;
            }
            Err(e) => {
                tracing::warn!(line = %aor, contact = %m.contact, error = %e, "cannot subscribe to a member phone")
            }
        }
    }

    /// The lines, their appearances and phones, for the dashboard and the control API.
    pub fn lines(&self) -> Vec<LineInfo> {
        let st = lock(&self.state);
        self.settings
            .lines
            .iter()
            .map(|l| {
                let members = st.members.get(&l.aor);
                let contact_of = |phone: &str| {
                    members.and_then(|m| {
                        m.iter()
                            .find(|(k, _)| phone_name(**k) == phone)
                            .map(|(_, m)| m.contact.clone())
                    })
                };
                let appearances = st
                    .tables
                    .get(&l.aor)
                    .map(|t| t.snapshot())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| AppearanceInfo {
                        index: a.index,
                        state: state_name(a.state),
                        contact: a.phone.as_deref().and_then(contact_of),
                        phone: a.phone,
                        peer: a.peer,
                        since: a.since,
                    })
                    .collect();
                let phones = members
                    .map(|m| {
                        m.iter()
                            .map(|(k, m)| PhoneInfo {
                                phone: phone_name(*k),
                                contact: m.contact.clone(),
                                user_agent: m.user_agent.clone(),
                                subscribed: m.sub.as_ref().is_some_and(|s| s.is_established()),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                LineInfo {
                    aor: l.aor.clone(),
                    label: l.label.clone(),
                    appearances,
                    phones,
                }
            })
            .collect()
    }
}

/// A reason phrase is one line.
fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    s
}

impl BindingObserver for Bla {
    /// The pua_bla job: every member phone registered to a line gets our subscription; a
    /// phone that moved (another flow or contact) gets a new one after the old one ended; a
    /// phone whose bindings went loses its subscription and its appearances.
    fn bindings_changed(&self, aor: &str, bindings: &[Binding]) {
        if !self.is_line(aor) {
            return;
        }
        let now = self.clock.now_unix();
        let mut wanted: BTreeMap<u64, &Binding> = BTreeMap::new();
        for b in bindings {
            if b.expires_at <= now || !self.settings.subscribes(b.user_agent.as_deref()) {
                continue;
            }
            let Some(key) = phone_of(&b.contact) else {
                continue;
            };
            match wanted.get(&key) {
                Some(have) if have.registered_at >= b.registered_at => {}
                _ => {
                    wanted.insert(key, b);
                }
            }
        }
        let mut starts = Vec::new();
        let mut guard = lock(&self.state);
        if !guard.started {
            return;
        }
        let st = &mut *guard;
        let members = st.members.entry(aor.to_string()).or_default();
        // Phones that went.
        let gone: Vec<u64> = members
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in &gone {
            if let Some(m) = members.remove(key) {
                if let Some(sub) = m.sub {
                    sub.unsubscribe();
                }
            }
        }
        // Phones that came, moved or refreshed.
        for (key, b) in &wanted {
            match members.get_mut(key) {
                Some(m) if m.flow == b.source && m.contact == b.contact => {
                    m.expires_at = b.expires_at;
                    m.user_agent = b.user_agent.clone();
                }
                Some(m) => {
                    m.contact = b.contact.clone();
                    m.flow = b.source.clone();
                    m.expires_at = b.expires_at;
                    m.user_agent = b.user_agent.clone();
                    m.generation += 1;
                    starts.push((*key, m.generation, m.sub.take()));
                }
                None => {
                    members.insert(
                        *key,
                        Member {
                            contact: b.contact.clone(),
                            flow: b.source.clone(),
                            user_agent: b.user_agent.clone(),
                            expires_at: b.expires_at,
                            sub: None,
                            generation: 1,
                            asked: 0,
                        },
                    );
                    starts.push((*key, 1, None));
                }
            }
        }
        if let Some(table) = st.tables.get_mut(aor) {
            let before = table.snapshot();
            for key in &gone {
                self.release(aor, table, &phone_name(*key), "registration ended");
            }
            self.announce(aor, &before, &table.snapshot());
            self.adjust_expires(table, st.members.get_mut(aor));
        }
        drop(guard);
        for (key, generation, old) in starts {
            match old {
                None => self.start_subscription(aor, key, generation),
                Some(old) => self.subscribe_member(aor, key, generation, Some(old)),
            }
        }
        self.wake.notify_one();
    }
}

/// Chains binding observers: the registrar has one slot, usrloc and the shared lines both
/// listen.
pub struct Observers(pub Vec<Arc<dyn BindingObserver>>);

impl BindingObserver for Observers {
    fn bindings_changed(&self, aor: &str, bindings: &[Binding]) {
        for o in &self.0 {
            o.bindings_changed(aor, bindings);
        }
    }
}
