//! The dashboard's state: a plain model built from a `follow` stream's `snapshot` and updated
//! by each `change` notice. Pure: every function takes the time it is given (unix
//! milliseconds), so a test replays a stream message by message.
//!
//! Change notices are thin (what changed, not the whole record): what a notice does not carry
//! is derived here (a call's start is when its first notice came) and the next snapshot (after
//! a reconnect or a resync) corrects it.

use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// The lamp words. Scripts read them off the screen: keep them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lamp {
    Offline,
    Idle,
    Held,
    Talking,
    Ringing,
}

impl Lamp {
    pub fn word(self) -> &'static str {
        match self {
            Lamp::Offline => "offline",
            Lamp::Idle => "idle",
            Lamp::Held => "held",
            Lamp::Talking => "talking",
            Lamp::Ringing => "ringing",
        }
    }

    /// An appearance's state (`free`, `seized`, `ringing`, `active`, `held`) as its lamp:
    /// a seized appearance is busy as a talking one is.
    pub fn of_appearance(state: &str) -> Lamp {
        match state {
            "ringing" => Lamp::Ringing,
            "active" | "seized" => Lamp::Talking,
            "held" => Lamp::Held,
            _ => Lamp::Idle,
        }
    }
}

/// How many log entries are kept (the oldest go first).
pub const MAX_EVENTS: usize = 2000;
/// The window rates are counted over, milliseconds.
pub const RATE_WINDOW_MS: u64 = 10_000;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub version: String,
    /// Uptime the snapshot reported, and when (unix ms) we got it: the header ticks on.
    pub uptime: u64,
    pub uptime_at_ms: u64,
    pub listen: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contact {
    pub contact: String,
    pub user_agent: Option<String>,
    /// `udp`, `tcp`, ...: the flow's, or (a server that sends no flow) the contact's
    /// `transport` parameter.
    pub transport: String,
    /// The flow the binding came over: `udp:192.0.2.1:5060`.
    pub flow: Option<String>,
    /// Unix seconds; `None` when the server did not say.
    pub expires: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registration {
    pub aor: String,
    pub contacts: Vec<Contact>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallBranch {
    pub target: String,
    pub state: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Call {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    /// RFC 4235: trying, proceeding, early, confirmed (terminated calls are removed).
    pub state: String,
    /// Unix seconds the call started, and when it was answered.
    pub since: u64,
    pub confirmed: Option<u64>,
    /// On hold (a `held` member of the call, when the server sends one).
    pub held: bool,
    pub branches: Vec<CallBranch>,
}

impl Call {
    pub fn ringing(&self) -> bool {
        matches!(self.state.as_str(), "trying" | "proceeding" | "early")
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subscription {
    pub presentity: String,
    pub package: String,
    pub watcher: String,
    /// active, pending, terminated (kept until the next snapshot, with its reason).
    pub state: String,
    pub reason: Option<String>,
    pub expires: Option<u64>,
    pub cseq: Option<u64>,
    pub version: Option<u64>,
    pub failures: u64,
    pub last_answer: Option<u64>,
    pub user_agent: Option<String>,
    /// The presence client's own subscription (made by `subscribe`), not a watcher we serve.
    pub api: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Appearance {
    pub index: u32,
    pub state: String,
    pub phone: Option<String>,
    pub peer: Option<String>,
    pub since: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinePhone {
    pub phone: String,
    pub contact: String,
    pub user_agent: Option<String>,
    pub subscribed: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedLine {
    pub aor: String,
    pub label: Option<String>,
    pub appearances: Vec<Appearance>,
    pub phones: Vec<LinePhone>,
}

impl SharedLine {
    /// The line's lamp: its busiest appearance.
    pub fn lamp(&self) -> Lamp {
        self.appearances
            .iter()
            .map(|a| Lamp::of_appearance(&a.state))
            .max()
            .unwrap_or(Lamp::Idle)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Unix milliseconds it arrived.
    pub at_ms: u64,
    pub kind: &'static str,
    pub text: String,
}

/// Which key a subscription is kept under: presentity, package, watcher.
pub type SubKey = (String, String, String);

#[derive(Clone, Debug, Default)]
pub struct Model {
    /// A snapshot arrived and the stream is up; `false` while reconnecting.
    pub connected: bool,
    /// Why the stream is down (shown beside "reconnecting...").
    pub problem: Option<String>,
    pub seq: u64,
    pub status: Status,
    pub registrations: BTreeMap<String, Registration>,
    /// AORs seen once (registered, called, watched): they stay listed as `offline`.
    pub known: BTreeMap<String, ()>,
    pub calls: BTreeMap<String, Call>,
    pub subscriptions: BTreeMap<SubKey, Subscription>,
    pub lines: BTreeMap<String, SharedLine>,
    pub events: VecDeque<LogEntry>,
    /// Arrival times (unix ms) of REGISTERs, new calls and changes, for the header's rates.
    pub register_times: VecDeque<u64>,
    pub call_times: VecDeque<u64>,
    pub change_times: VecDeque<u64>,
    /// Snapshots taken (the first, then one per reconnect or resync).
    pub snapshots: u64,
    /// The domain most registered AORs are in: the views show its users by user part only.
    pub domain: String,
    /// Mailboxes with a message-summary publication, by AOR.
    pub mwi: BTreeMap<String, Mwi>,
    /// (unix ms, NOTIFYs sent so far) from `status` answers, oldest first, for NOTIFY/s.
    pub notify_samples: VecDeque<(u64, u64)>,
}

/// A mailbox's message-waiting state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mwi {
    pub waiting: bool,
    /// New messages, when the last snapshot said; `None` after a notice changed `waiting`
    /// (notices carry no counts).
    pub new: Option<u64>,
}

/// A URI as the server keys an AOR: no display name, brackets or parameters; scheme and
/// host lower case.
pub fn aor_key(uri: &str) -> String {
    let s = uri.trim();
    let s = match (s.find('<'), s.find('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s,
    };
    let s = s.split([';', '?']).next().unwrap_or(s);
    match s.split_once('@') {
        Some((user, host)) => {
            let (scheme, user) = user.split_once(':').unwrap_or(("sip", user));
            format!(
                "{}:{user}@{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase()
            )
        }
        None => s.to_ascii_lowercase(),
    }
}

/// The user part of a URI (`1001` of `sip:1001@example.com`), else the URI.
pub fn user_part(uri: &str) -> &str {
    let s = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"));
    match s.and_then(|s| s.split_once('@')) {
        Some((user, _)) => user,
        None => uri,
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn num(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// `udp`/`tcp` of a flow (`tcp:127.0.0.1:5060`, `udp 127.0.0.1:5060`...) or, failing that, of
/// the contact's `transport` parameter (UDP when none).
fn transport(flow: Option<&str>, contact: &str) -> String {
    if let Some(f) = flow {
        let lower = f.to_ascii_lowercase();
        for t in ["tls", "tcp", "udp", "ws"] {
            if lower.starts_with(t) {
                return t.to_string();
            }
        }
    }
    let lower = contact.to_ascii_lowercase();
    match lower.split_once(";transport=") {
        Some((_, rest)) => rest
            .split([';', '>', '?'])
            .next()
            .unwrap_or("udp")
            .to_string(),
        None => "udp".into(),
    }
}

fn contact_of(c: &Value) -> Contact {
    let contact = text(&c["contact"]).unwrap_or_default();
    Contact {
        transport: transport(c["flow"].as_str(), &contact),
        flow: text(&c["flow"]),
        user_agent: text(&c["user_agent"]),
        expires: num(&c["expires"]),
        contact,
    }
}

fn call_of(c: &Value, now_s: u64) -> Option<Call> {
    let branches = c["branches"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| CallBranch {
                    target: text(&b["target"]).unwrap_or_default(),
                    state: text(&b["state"]).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Call {
        call_id: text(&c["call_id"])?,
        caller: aor_key(&text(&c["caller"]).unwrap_or_default()),
        callee: aor_key(&text(&c["callee"]).unwrap_or_default()),
        state: text(&c["state"]).unwrap_or_default(),
        since: num(&c["since"]).unwrap_or(now_s),
        confirmed: num(&c["confirmed"]),
        held: c["held"].as_bool().unwrap_or(false),
        branches,
    })
}

fn subscription_of(s: &Value) -> Option<Subscription> {
    Some(Subscription {
        presentity: aor_key(&text(&s["presentity"])?),
        package: text(&s["package"]).unwrap_or_default(),
        watcher: aor_key(&text(&s["watcher"])?),
        state: text(&s["state"]).unwrap_or_default(),
        reason: text(&s["reason"]),
        expires: num(&s["expires"]),
        cseq: num(&s["cseq"]),
        version: num(&s["version"]),
        failures: num(&s["failures"]).unwrap_or(0),
        last_answer: num(&s["last_answer"]),
        user_agent: text(&s["user_agent"]),
        api: s["kind"] == "api",
    })
}

fn line_of(l: &Value) -> Option<SharedLine> {
    let appearances = l["appearances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| Appearance {
                    index: num(&x["index"]).unwrap_or(0) as u32,
                    state: text(&x["state"]).unwrap_or_default(),
                    phone: text(&x["phone"]),
                    peer: text(&x["peer"]),
                    since: num(&x["since"]).unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let phones = l["phones"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| LinePhone {
                    phone: text(&p["phone"]).unwrap_or_default(),
                    contact: text(&p["contact"]).unwrap_or_default(),
                    user_agent: text(&p["user_agent"]),
                    subscribed: p["subscribed"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(SharedLine {
        aor: aor_key(&text(&l["aor"])?),
        label: text(&l["label"]),
        appearances,
        phones,
    })
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn push_time(q: &mut VecDeque<u64>, now_ms: u64) {
    q.push_back(now_ms);
    while q
        .front()
        .is_some_and(|t| now_ms.saturating_sub(*t) > RATE_WINDOW_MS)
    {
        q.pop_front();
    }
    // Bounded whatever the rate: the window's rate is read from the count.
    while q.len() > 100_000 {
        q.pop_front();
    }
}

/// Per second over the window ending at `now_ms`.
pub fn rate(q: &VecDeque<u64>, now_ms: u64) -> f64 {
    let n = q
        .iter()
        .filter(|t| now_ms.saturating_sub(**t) <= RATE_WINDOW_MS)
        .count();
    n as f64 * 1000.0 / RATE_WINDOW_MS as f64
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// One notification of the stream: `snapshot`, `change` or `resync`.
    pub fn apply(&mut self, method: &str, params: &Value, now_ms: u64) {
        match method {
            "snapshot" => self.snapshot(params, now_ms),
            "change" => self.change(params, now_ms),
            "resync" => self.log(
                now_ms,
                "resync",
                "fell behind: a fresh snapshot follows".into(),
            ),
            _ => {}
        }
    }

    /// The connection to the server is lost: the rows stay as they were, marked stale, until
    /// the next snapshot.
    pub fn disconnected(&mut self, problem: String, now_ms: u64) {
        if self.connected {
            self.log(now_ms, "server", format!("connection lost: {problem}"));
        }
        self.connected = false;
        self.problem = Some(problem);
    }

    /// A full snapshot replaces everything (the log and the rates stay).
    pub fn snapshot(&mut self, p: &Value, now_ms: u64) {
        let now_s = now_ms / 1000;
        let st = &p["status"];
        self.notify_sample(st, now_ms);
        self.status = Status {
            version: text(&st["version"]).unwrap_or_default(),
            uptime: num(&st["uptime"]).unwrap_or(0),
            uptime_at_ms: now_ms,
            listen: items(&st["listen"]).iter().filter_map(text).collect(),
        };
        self.seq = num(&p["seq"]).unwrap_or(0);
        self.registrations = items(&p["registrations"])
            .iter()
            .filter_map(|r| {
                let aor = aor_key(r["aor"].as_str()?);
                let contacts = items(&r["contacts"]).iter().map(contact_of).collect();
                Some((aor.clone(), Registration { aor, contacts }))
            })
            .collect();
        self.calls = items(&p["calls"])
            .iter()
            .filter_map(|c| call_of(c, now_s))
            .map(|c| (c.call_id.clone(), c))
            .collect();
        self.subscriptions = items(&p["subscriptions"])
            .iter()
            .filter_map(subscription_of)
            .map(|s| {
                (
                    (s.presentity.clone(), s.package.clone(), s.watcher.clone()),
                    s,
                )
            })
            .collect();
        self.mwi = items(&p["mwi"])
            .iter()
            .filter_map(|v| {
                let mailbox = aor_key(v["mailbox"].as_str()?);
                let waiting = v["waiting"].as_bool()?;
                Some((
                    mailbox,
                    Mwi {
                        waiting,
                        new: num(&v["new"]),
                    },
                ))
            })
            .collect();
        self.lines = items(&p["lines"])
            .iter()
            .filter_map(line_of)
            .map(|l| (l.aor.clone(), l))
            .collect();
        let mut domains: BTreeMap<&str, usize> = BTreeMap::new();
        for aor in self.registrations.keys() {
            if let Some((_, host)) = aor.split_once('@') {
                *domains.entry(host).or_default() += 1;
            }
        }
        // The server's home domain when it says (`status.domain`); else the one most
        // registered AORs are in.
        if let Some(d) = text(&st["domain"]).filter(|d| !d.is_empty()) {
            self.domain = d;
        } else if let Some((d, _)) = domains.into_iter().max_by_key(|(_, n)| *n) {
            self.domain = d.to_string();
        }
        let mut known: Vec<String> = self.registrations.keys().cloned().collect();
        for c in self.calls.values() {
            known.push(c.caller.clone());
            known.push(c.callee.clone());
        }
        for s in self.subscriptions.values().filter(|s| !s.api) {
            known.push(s.presentity.clone());
        }
        for k in known {
            self.know(k);
        }
        let was = self.connected;
        self.connected = true;
        self.problem = None;
        self.snapshots += 1;
        let what = format!(
            "{} registered AORs, {} calls, {} subscriptions, {} shared lines",
            self.registrations.len(),
            self.calls.len(),
            self.subscriptions.len(),
            self.lines.len()
        );
        let kind = if was || self.snapshots == 1 {
            "snapshot"
        } else {
            "server"
        };
        self.log(now_ms, kind, what);
    }

    fn know(&mut self, aor: String) {
        // Shared lines have rows of their own; a party of another domain (a trunk's caller)
        // gets none unless it registered here.
        let foreign = !self.domain.is_empty()
            && aor
                .split_once('@')
                .is_some_and(|(_, host)| host != self.domain)
            && !self.registrations.contains_key(&aor);
        if !aor.is_empty() && !foreign && !self.lines.contains_key(&aor) {
            self.known.insert(aor, ());
        }
    }

    fn log(&mut self, now_ms: u64, kind: &'static str, text: String) {
        self.events.push_back(LogEntry {
            at_ms: now_ms,
            kind,
            text,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// One `change` notice.
    pub fn change(&mut self, p: &Value, now_ms: u64) {
        let now_s = now_ms / 1000;
        if let Some(seq) = num(&p["seq"]) {
            self.seq = seq;
        }
        push_time(&mut self.change_times, now_ms);
        let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
        match p["kind"].as_str().unwrap_or("") {
            "registration" => {
                let aor = aor_key(&s("aor"));
                let contact = s("contact");
                let change = s("change");
                let reg = self
                    .registrations
                    .entry(aor.clone())
                    .or_insert_with(|| Registration {
                        aor: aor.clone(),
                        contacts: Vec::new(),
                    });
                match change.as_str() {
                    "registered" | "refreshed" => {
                        push_time(&mut self.register_times, now_ms);
                        // The notice carries the binding's user agent, expiry and flow (a
                        // refresh may come over another flow, after a NAT rebinding).
                        let fresh = contact_of(p);
                        match reg.contacts.iter_mut().find(|c| c.contact == contact) {
                            Some(c) => {
                                if fresh.user_agent.is_some() {
                                    c.user_agent = fresh.user_agent;
                                }
                                if fresh.expires.is_some() {
                                    c.expires = fresh.expires;
                                }
                                if fresh.flow.is_some() {
                                    c.flow = fresh.flow;
                                    c.transport = fresh.transport;
                                }
                            }
                            None => reg.contacts.push(fresh),
                        }
                    }
                    _ => reg.contacts.retain(|c| c.contact != contact),
                }
                if reg.contacts.is_empty() {
                    self.registrations.remove(&aor);
                }
                if change != "refreshed" {
                    self.log(now_ms, "registration", format!("{aor} {change} {contact}"));
                }
                self.know(aor);
            }
            "call" => {
                let call_id = s("call_id");
                let state = s("state");
                let caller = aor_key(&s("caller"));
                let callee = aor_key(&s("callee"));
                let what = match state.as_str() {
                    "trying" | "proceeding" | "early" => "ringing",
                    "confirmed" => "answered",
                    "terminated" => "ended",
                    other => other,
                };
                if state == "terminated" {
                    self.calls.remove(&call_id);
                } else {
                    let call = self.calls.entry(call_id.clone()).or_insert_with(|| {
                        push_time(&mut self.call_times, now_ms);
                        Call {
                            call_id: call_id.clone(),
                            caller: caller.clone(),
                            callee: callee.clone(),
                            // The server's start time when it sends one (a follow that began
                            // mid-call); the notice's arrival otherwise.
                            since: p["since"].as_u64().unwrap_or(now_s),
                            ..Call::default()
                        }
                    });
                    if state == "confirmed" && call.confirmed.is_none() {
                        call.confirmed = Some(now_s);
                    }
                    if let Some(h) = p["held"].as_bool() {
                        call.held = h;
                    }
                    let changed = call.state != state;
                    call.state = state.clone();
                    if !changed {
                        // The same state again (a re-INVITE, a second ringing branch).
                        self.know(caller);
                        self.know(callee);
                        return;
                    }
                }
                let prev_logged =
                    self.events.iter().rev().take(8).any(|e| {
                        e.kind == "call" && e.text.ends_with(&format!("{what} ({call_id})"))
                    });
                if !prev_logged {
                    self.log(
                        now_ms,
                        "call",
                        format!("{caller} → {callee} {what} ({call_id})"),
                    );
                }
                self.know(caller);
                self.know(callee);
            }
            "subscription" => {
                let presentity = aor_key(&s("presentity"));
                let package = s("event");
                let watcher = aor_key(&s("watcher"));
                let change = s("change");
                let reason = text(&p["reason"]);
                let key = (presentity.clone(), package.clone(), watcher.clone());
                let sub = self
                    .subscriptions
                    .entry(key.clone())
                    .or_insert_with(|| Subscription {
                        presentity: presentity.clone(),
                        package: package.clone(),
                        watcher: watcher.clone(),
                        // Created without a state: active unless an approval is awaited,
                        // which the next snapshot tells.
                        state: "active".into(),
                        ..Subscription::default()
                    });
                match change.as_str() {
                    "created" => {
                        if let Some(state) = text(&p["state"]) {
                            sub.state = state;
                        }
                        sub.reason = None;
                    }
                    "activated" => sub.state = "active".into(),
                    "terminated" => {
                        sub.state = "terminated".into();
                        sub.reason = reason.clone();
                    }
                    _ => {}
                }
                if change == "terminated" {
                    // Gone from the list (the server forgets it too); the log keeps why.
                    self.subscriptions.remove(&key);
                }
                if change != "refreshed" {
                    let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                    self.log(
                        now_ms,
                        "subscription",
                        format!("{watcher} → {presentity} {package} {change}{why}"),
                    );
                }
                self.know(presentity);
            }
            "appearance" => {
                let line = aor_key(&s("line"));
                let index = num(&p["appearance"]).unwrap_or(0) as u32;
                let state = s("state");
                let phone = text(&p["phone"]);
                let l = self
                    .lines
                    .entry(line.clone())
                    .or_insert_with(|| SharedLine {
                        aor: line.clone(),
                        ..SharedLine::default()
                    });
                match l.appearances.iter_mut().find(|a| a.index == index) {
                    Some(a) => {
                        if a.state != state {
                            a.since = now_s;
                        }
                        // The peer of a call that goes on (held, resumed) stays.
                        if state == "free" || a.phone != phone {
                            a.peer = None;
                        }
                        a.state = state.clone();
                        a.phone = phone.clone();
                    }
                    None => {
                        l.appearances.push(Appearance {
                            index,
                            state: state.clone(),
                            phone: phone.clone(),
                            peer: None,
                            since: now_s,
                        });
                        l.appearances.sort_by_key(|a| a.index);
                    }
                }
                self.known.remove(&line);
                let who = phone.map(|p| format!(" by {p}")).unwrap_or_default();
                self.log(
                    now_ms,
                    "appearance",
                    format!("{line} #{index} {state}{who}"),
                );
            }
            "notify_failed" => {
                let end = if p["gave_up"].as_bool() == Some(true) {
                    "subscription ended"
                } else {
                    "retrying"
                };
                let text = format!(
                    "NOTIFY {} to {} failed ({}), {end}",
                    s("event"),
                    self.name(&aor_key(&s("watcher"))),
                    num(&p["status"]).map_or("?".into(), |n| n.to_string()),
                );
                self.log(now_ms, "notify", text);
            }
            "publication" => {
                let presentity = aor_key(&s("presentity"));
                let event = s("event");
                if let (true, Some(waiting)) = (event == "message-summary", p["waiting"].as_bool())
                {
                    let mwi = self.mwi.entry(presentity.clone()).or_default();
                    if mwi.waiting != waiting || !waiting {
                        mwi.new = (!waiting).then_some(0);
                    }
                    mwi.waiting = waiting;
                }
                // A phone's own dialog state follows its calls, logged already.
                if event != "dialog" {
                    let by = match text(&p["source"]) {
                        Some(src) => format!("by {src}"),
                        None => "expired".into(),
                    };
                    self.log(now_ms, "publication", format!("{presentity} {event} {by}"));
                }
            }
            _ => {}
        }
    }

    /// Items of a `subscriptions` answer pulled after a thin notice: each replaces the row
    /// of the same key it finds (a new watcher's state, expiry, CSeq), none is added (a
    /// row the stream ended meanwhile stays ended).
    pub fn merge_subscriptions(&mut self, items_: &Value) {
        for s in items(items_).iter().filter_map(subscription_of) {
            let key = (s.presentity.clone(), s.package.clone(), s.watcher.clone());
            if let Some(row) = self.subscriptions.get_mut(&key) {
                *row = s;
            }
        }
    }

    /// Items of a `users_list` answer: every user gets a row (`offline` until it
    /// registers), as `sip:NAME@DOMAIN` with the home domain (else the user's realm).
    pub fn add_users(&mut self, items_: &Value) {
        for u in items(items_) {
            let Some(name) = u["name"].as_str() else {
                continue;
            };
            let domain = if self.domain.is_empty() {
                u["realm"].as_str().unwrap_or("").to_ascii_lowercase()
            } else {
                self.domain.clone()
            };
            if !domain.is_empty() {
                self.know(format!("sip:{name}@{domain}"));
            }
        }
    }

    /// The MWI column's word for `aor`: `mwi 3` (3 new), `mwi` (waiting, count unknown), or
    /// empty (no mailbox, or nothing waits). A word, not a colour, so it reads in monochrome.
    pub fn mwi_word(&self, aor: &str) -> String {
        match self.mwi.get(aor) {
            Some(Mwi {
                waiting: true,
                new: Some(n),
            }) if *n > 0 => format!("mwi {n}"),
            Some(Mwi { waiting: true, .. }) => "mwi".into(),
            _ => String::new(),
        }
    }

    /// A `status` (a snapshot's, or a polled answer): its NOTIFY counter, for NOTIFY/s.
    pub fn notify_sample(&mut self, status: &Value, now_ms: u64) {
        let Some(sent) = num(&status["notifies"]["sent"]) else {
            return;
        };
        // A restarted server counts from zero again: start over.
        if self.notify_samples.back().is_some_and(|(_, n)| *n > sent) {
            self.notify_samples.clear();
        }
        self.notify_samples.push_back((now_ms, sent));
        while self
            .notify_samples
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > RATE_WINDOW_MS)
        {
            self.notify_samples.pop_front();
        }
    }

    /// NOTIFYs per second over the samples kept (0 until there are two).
    pub fn notify_rate(&self) -> f64 {
        match (self.notify_samples.front(), self.notify_samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 * 1000.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }

    /// The lamp of an AOR as its watchers' phones show it.
    pub fn lamp(&self, aor: &str) -> Lamp {
        if let Some(l) = self.lines.get(aor) {
            return l.lamp();
        }
        let mut lamp = if self.registrations.contains_key(aor) {
            Lamp::Idle
        } else {
            Lamp::Offline
        };
        for c in self.calls_of(aor) {
            let l = if c.held {
                Lamp::Held
            } else if c.ringing() && c.callee == aor {
                Lamp::Ringing
            } else {
                Lamp::Talking
            };
            lamp = lamp.max(l);
        }
        lamp
    }

    /// The live calls `aor` is a party of.
    pub fn calls_of<'a>(&'a self, aor: &'a str) -> impl Iterator<Item = &'a Call> + 'a {
        self.calls
            .values()
            .filter(move |c| c.caller == aor || c.callee == aor)
    }

    /// The watchers of `aor` (subscriptions we serve, any package).
    pub fn watcher_count(&self, aor: &str) -> usize {
        self.subscriptions
            .range((aor.to_string(), String::new(), String::new())..)
            .take_while(|(k, _)| k.0 == aor)
            .filter(|(_, s)| !s.api)
            .count()
    }

    /// Every AOR row of the Lines view, in order: users (registered or seen once), then the
    /// shared lines are interleaved by their AOR too.
    pub fn line_rows(&self) -> Vec<LineRow<'_>> {
        let mut rows: Vec<LineRow<'_>> = Vec::with_capacity(self.known.len() + self.lines.len());
        let mut users = self.known.keys().peekable();
        let mut lines = self.lines.values().peekable();
        loop {
            let take_user = match (users.peek(), lines.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(u), Some(l)) => u.as_str() <= l.aor.as_str(),
            };
            if take_user {
                rows.push(LineRow::User(users.next().expect("peeked")));
            } else {
                let l = lines.next().expect("peeked");
                rows.push(LineRow::Line(l));
                for a in &l.appearances {
                    rows.push(LineRow::Appearance(l, a));
                }
            }
        }
        rows
    }

    /// How the views name a URI: the user part alone in the home domain, else without the
    /// scheme.
    pub fn name<'a>(&self, uri: &'a str) -> &'a str {
        let bare = uri
            .strip_prefix("sip:")
            .or_else(|| uri.strip_prefix("sips:"))
            .unwrap_or(uri);
        match bare.split_once('@') {
            Some((user, host)) if !self.domain.is_empty() && host == self.domain => user,
            _ => bare,
        }
    }

    pub fn uptime(&self, now_ms: u64) -> u64 {
        self.status.uptime + now_ms.saturating_sub(self.status.uptime_at_ms) / 1000
    }

    pub fn pending_count(&self) -> usize {
        self.subscriptions
            .values()
            .filter(|s| s.state == "pending")
            .count()
    }

    pub fn binding_count(&self) -> usize {
        self.registrations.values().map(|r| r.contacts.len()).sum()
    }
}

/// One row of the Lines view.
#[derive(Clone, Copy, Debug)]
pub enum LineRow<'a> {
    User(&'a str),
    Line(&'a SharedLine),
    Appearance(&'a SharedLine, &'a Appearance),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: u64 = 1_800_000_000_000;

    fn snap() -> Value {
        json!({
            "seq": 0,
            "status": {"api": 1, "version": "0.1.0", "uptime": 100, "listen": ["udp:127.0.0.1:5060"]},
            "registrations": [
                {"aor": "sip:1001@example.test", "contacts": [
                    {"contact": "sip:1001@192.0.2.1:5060", "expires": 1_800_003_600u64,
                     "user_agent": "Yealink T46U", "flow": "udp:192.0.2.1:5060", "q": 1.0}]},
                {"aor": "sip:1002@example.test", "contacts": [
                    {"contact": "sip:1002@192.0.2.2:5060;transport=tcp", "expires": 1_800_003_600u64,
                     "user_agent": "Polycom VVX 450", "flow": null, "q": 1.0}]}
            ],
            "calls": [],
            "subscriptions": [
                {"kind": "watcher", "watcher": "sip:1001@example.test", "presentity": "sip:1002@example.test",
                 "package": "dialog", "state": "active", "expires": 1_800_000_600u64, "cseq": 3, "version": 2,
                 "failures": 0, "user_agent": "Yealink", "last_answer": 200}
            ],
            "lines": [
                {"aor": "sip:2000@example.test", "label": "Reception", "appearances": [
                    {"index": 1, "state": "free", "phone": null, "contact": null, "peer": null, "since": 1_799_999_000u64},
                    {"index": 2, "state": "free", "phone": null, "contact": null, "peer": null, "since": 1_799_999_000u64}],
                 "phones": [{"phone": "sip:1001@example.test", "contact": "sip:1001@192.0.2.1:5060", "user_agent": null, "subscribed": true}]}
            ]
        })
    }

    fn call(state: &str, seq: u64) -> Value {
        json!({"seq": seq, "kind": "call", "call_id": "c1", "caller": "sip:1001@example.test",
               "callee": "sip:1002@example.test", "state": state})
    }

    fn loaded() -> Model {
        let mut m = Model::new();
        m.apply("snapshot", &snap(), T);
        m
    }

    #[test]
    fn a_snapshot_fills_the_model() {
        let m = loaded();
        assert!(m.connected);
        assert_eq!(m.status.version, "0.1.0");
        assert_eq!(m.uptime(T + 5_000), 105);
        assert_eq!(m.registrations.len(), 2);
        assert_eq!(
            m.registrations["sip:1002@example.test"].contacts[0].transport,
            "tcp"
        );
        assert_eq!(
            m.registrations["sip:1001@example.test"].contacts[0].transport,
            "udp"
        );
        assert_eq!(m.lamp("sip:1001@example.test"), Lamp::Idle);
        assert_eq!(m.lamp("sip:2000@example.test"), Lamp::Idle);
        assert_eq!(m.watcher_count("sip:1002@example.test"), 1);
        assert_eq!(m.watcher_count("sip:1001@example.test"), 0);
        assert_eq!(m.domain, "example.test");
        assert_eq!(m.name("sip:1001@example.test"), "1001");
        // The status's domain wins over the guess from the registrations.
        let mut other = snap();
        other["status"]["domain"] = json!("other.test");
        let mut m2 = Model::new();
        m2.apply("snapshot", &other, T);
        assert_eq!(m2.domain, "other.test");
        assert_eq!(m.name("sip:9@other.test"), "9@other.test");
        // Users first by AOR, the shared line with its two appearances after them.
        let rows = m.line_rows();
        assert_eq!(rows.len(), 5);
        assert!(matches!(rows[2], LineRow::Line(_)));
        assert!(matches!(rows[4], LineRow::Appearance(_, a) if a.index == 2));
    }

    #[test]
    fn mwi_comes_from_the_snapshot_and_follows_publication_notices() {
        let mut sn = snap();
        sn["mwi"] =
            json!([{"mailbox": "sip:1001@example.test", "waiting": true, "new": 3, "old": 1}]);
        let mut m = Model::new();
        m.apply("snapshot", &sn, T);
        assert_eq!(m.mwi_word("sip:1001@example.test"), "mwi 3");
        assert_eq!(m.mwi_word("sip:1002@example.test"), "");
        let notice = |seq: u64, aor: &str, waiting: bool| {
            json!({"seq": seq, "kind": "publication", "presentity": aor,
                "event": "message-summary", "source": "api:1", "waiting": waiting})
        };
        m.apply("change", &notice(1, "sip:1001@example.test", false), T + 1);
        assert_eq!(m.mwi_word("sip:1001@example.test"), "");
        m.apply("change", &notice(2, "sip:1002@example.test", true), T + 2);
        assert_eq!(
            m.mwi_word("sip:1002@example.test"),
            "mwi",
            "no count in a notice"
        );
    }

    #[test]
    fn notify_rate_comes_from_status_samples() {
        let mut m = Model::new();
        assert_eq!(m.notify_rate(), 0.0);
        m.notify_sample(&json!({"notifies": {"sent": 10}}), T);
        m.notify_sample(&json!({"notifies": {"sent": 30}}), T + 2_000);
        assert_eq!(m.notify_rate(), 10.0);
        // A restart (the counter went back): start over.
        m.notify_sample(&json!({"notifies": {"sent": 1}}), T + 4_000);
        assert_eq!(m.notify_rate(), 0.0);
    }

    #[test]
    fn a_notify_failure_is_logged() {
        let mut m = loaded();
        m.apply(
            "change",
            &json!({"seq": 1, "kind": "notify_failed", "presentity": "sip:1002@example.test",
                "event": "dialog", "watcher": "sip:1001@example.test", "status": 408,
                "gave_up": false}),
            T,
        );
        let e = m.events.back().unwrap();
        assert_eq!(e.kind, "notify");
        assert_eq!(e.text, "NOTIFY dialog to 1001 failed (408), retrying");
    }

    #[test]
    fn a_call_rings_is_answered_held_and_ends() {
        let mut m = loaded();
        let (caller, callee) = ("sip:1001@example.test", "sip:1002@example.test");
        m.apply("change", &call("early", 1), T + 1000);
        assert_eq!(m.lamp(callee), Lamp::Ringing);
        assert_eq!(m.lamp(caller), Lamp::Talking, "the caller's lamp is busy");
        assert_eq!(m.calls["c1"].since, T / 1000 + 1);
        assert_eq!(m.seq, 1);

        m.apply("change", &call("confirmed", 2), T + 3000);
        assert_eq!(m.lamp(callee), Lamp::Talking);
        assert_eq!(m.calls["c1"].confirmed, Some(T / 1000 + 3));

        let mut held = call("confirmed", 3);
        held["held"] = json!(true);
        m.apply("change", &held, T + 4000);
        assert_eq!(m.lamp(callee), Lamp::Held);
        assert_eq!(m.lamp(caller), Lamp::Held);
        let mut resumed = call("confirmed", 4);
        resumed["held"] = json!(false);
        m.apply("change", &resumed, T + 5000);
        assert_eq!(m.lamp(callee), Lamp::Talking);

        m.apply("change", &call("terminated", 5), T + 9000);
        assert_eq!(m.lamp(callee), Lamp::Idle);
        assert_eq!(m.lamp(caller), Lamp::Idle);
        assert!(m.calls.is_empty());

        // A notice with the server's start time keeps it.
        let mut with_since = call("confirmed", 6);
        with_since["since"] = json!(T / 1000 - 30);
        m.apply("change", &with_since, T + 10_000);
        assert_eq!(m.calls["c1"].since, T / 1000 - 30);
        let log: Vec<&str> = m.events.iter().map(|e| e.text.as_str()).collect();
        assert!(log.iter().any(|t| t.ends_with("ringing (c1)")), "{log:?}");
        assert!(log.iter().any(|t| t.ends_with("answered (c1)")), "{log:?}");
        assert!(log.iter().any(|t| t.ends_with("ended (c1)")), "{log:?}");
        assert!(rate(&m.call_times, T + 9000) > 0.0);
    }

    #[test]
    fn a_call_to_an_unknown_party_lists_it_offline_then_ringing() {
        let mut m = loaded();
        let mut c = call("proceeding", 1);
        c["callee"] = json!("<sip:1003@Example.TEST;user=phone>");
        m.apply("change", &c, T);
        assert_eq!(m.lamp("sip:1003@example.test"), Lamp::Ringing);
        c["state"] = json!("terminated");
        m.apply("change", &c, T + 1);
        assert_eq!(m.lamp("sip:1003@example.test"), Lamp::Offline);
        assert!(m.known.contains_key("sip:1003@example.test"));
        // A caller of another domain gets no row of its own.
        let mut c = call("early", 3);
        c["call_id"] = json!("c2");
        c["caller"] = json!("sip:+15551234567@trunk.example.net");
        m.apply("change", &c, T + 2);
        assert!(!m.known.contains_key("sip:+15551234567@trunk.example.net"));
    }

    #[test]
    fn a_registration_and_its_expiry() {
        let mut m = loaded();
        let aor = "sip:1003@example.test";
        let reg = |change: &str| {
            json!({"seq": 1, "kind": "registration", "change": change, "aor": aor,
                   "contact": "sip:1003@192.0.2.3:5062;transport=tcp", "user_agent": "Snom D785"})
        };
        m.apply("change", &reg("registered"), T);
        assert_eq!(m.lamp(aor), Lamp::Idle);
        assert_eq!(m.registrations[aor].contacts[0].transport, "tcp");
        assert_eq!(
            m.registrations[aor].contacts[0].user_agent.as_deref(),
            Some("Snom D785")
        );
        m.apply("change", &reg("refreshed"), T + 10);
        assert_eq!(m.registrations[aor].contacts.len(), 1);
        m.apply("change", &reg("expired"), T + 20);
        assert_eq!(m.lamp(aor), Lamp::Offline);
        assert!(!m.registrations.contains_key(aor));
        assert!(m.events.iter().any(|e| e.text.contains("expired")));
        assert!(rate(&m.register_times, T + 20) > 0.0);
    }

    #[test]
    fn a_registration_notice_gives_the_flows_transport_and_the_expiry() {
        let mut m = loaded();
        let aor = "sip:1004@example.test";
        // The contact says nothing of its transport; the flow it came over does.
        let reg = |change: &str, flow: &str, expires: u64| {
            json!({"seq": 1, "kind": "registration", "change": change, "aor": aor,
                   "contact": "sip:1004@192.0.2.4:5060", "user_agent": "Yealink T54W",
                   "expires": expires, "flow": flow})
        };
        m.apply(
            "change",
            &reg("registered", "tcp:192.0.2.4:40001", 1_800_003_600),
            T,
        );
        let c = &m.registrations[aor].contacts[0];
        assert_eq!(c.transport, "tcp");
        assert_eq!(c.flow.as_deref(), Some("tcp:192.0.2.4:40001"));
        assert_eq!(c.expires, Some(1_800_003_600));
        // A refresh over another flow (the phone came back on UDP): both follow it.
        m.apply(
            "change",
            &reg("refreshed", "udp:192.0.2.4:5060", 1_800_007_200),
            T + 1000,
        );
        let c = &m.registrations[aor].contacts[0];
        assert_eq!(m.registrations[aor].contacts.len(), 1);
        assert_eq!(c.transport, "udp");
        assert_eq!(c.flow.as_deref(), Some("udp:192.0.2.4:5060"));
        assert_eq!(c.expires, Some(1_800_007_200));
        // A contact in the snapshot is refreshed too.
        let mut r = reg("refreshed", "tls:192.0.2.1:5061", 1_800_009_000);
        r["aor"] = json!("sip:1001@example.test");
        r["contact"] = json!("sip:1001@192.0.2.1:5060");
        m.apply("change", &r, T + 2000);
        let c = &m.registrations["sip:1001@example.test"].contacts[0];
        assert_eq!(
            (c.transport.as_str(), c.expires),
            ("tls", Some(1_800_009_000))
        );
        assert_eq!(c.user_agent.as_deref(), Some("Yealink T54W"));
    }

    #[test]
    fn a_subscription_is_created_activated_and_ended_with_its_reason() {
        let mut m = loaded();
        let sub = |change: &str, reason: Value| {
            json!({"seq": 1, "kind": "subscription", "change": change, "reason": reason,
                   "presentity": "sip:1001@example.test", "event": "presence",
                   "watcher": "sip:1003@example.test"})
        };
        let key = (
            "sip:1001@example.test".to_string(),
            "presence".to_string(),
            "sip:1003@example.test".to_string(),
        );
        m.apply("change", &sub("created", Value::Null), T);
        assert_eq!(m.subscriptions[&key].state, "active");
        assert_eq!(m.watcher_count("sip:1001@example.test"), 1);
        m.apply("change", &sub("activated", Value::Null), T + 1);
        assert_eq!(m.subscriptions[&key].state, "active");
        m.apply("change", &sub("terminated", json!("timeout")), T + 2);
        assert!(!m.subscriptions.contains_key(&key));
        assert_eq!(m.watcher_count("sip:1001@example.test"), 0);
        let last = m.events.back().unwrap();
        assert_eq!(last.kind, "subscription");
        assert!(last.text.ends_with("terminated (timeout)"), "{}", last.text);
    }

    #[test]
    fn an_appearance_changes_and_the_line_lamp_follows() {
        let mut m = loaded();
        let line = "sip:2000@example.test";
        let app = |state: &str, phone: Value| {
            json!({"seq": 1, "kind": "appearance", "line": line, "appearance": 1,
                   "state": state, "phone": phone})
        };
        m.apply("change", &app("seized", json!("sip:1001@example.test")), T);
        assert_eq!(m.lamp(line), Lamp::Talking);
        m.apply(
            "change",
            &app("held", json!("sip:1001@example.test")),
            T + 1000,
        );
        assert_eq!(m.lamp(line), Lamp::Held);
        assert_eq!(m.lines[line].appearances[0].since, T / 1000 + 1);
        let mut ring = app("ringing", Value::Null);
        ring["appearance"] = json!(2);
        m.apply("change", &ring, T + 2000);
        assert_eq!(m.lamp(line), Lamp::Ringing, "ringing beats held");
        m.apply("change", &app("free", Value::Null), T + 3000);
        ring["state"] = json!("free");
        m.apply("change", &ring, T + 3000);
        assert_eq!(m.lamp(line), Lamp::Idle);
        // The line is not listed as a user too.
        assert!(!m.known.contains_key(line));
    }

    #[test]
    fn a_resync_snapshot_replaces_the_model() {
        let mut m = loaded();
        m.apply("change", &call("confirmed", 1), T);
        m.disconnected("the server closed the connection".into(), T + 1);
        assert!(!m.connected);
        assert_eq!(
            m.lamp("sip:1002@example.test"),
            Lamp::Talking,
            "kept, stale"
        );
        m.apply("resync", &Value::Null, T + 2);
        let mut fresh = snap();
        fresh["seq"] = json!(7);
        fresh["registrations"] = json!([]);
        fresh["subscriptions"] = json!([]);
        m.apply("snapshot", &fresh, T + 3);
        assert!(m.connected);
        assert_eq!(m.seq, 7);
        assert!(m.calls.is_empty());
        assert!(m.subscriptions.is_empty());
        assert_eq!(m.lamp("sip:1002@example.test"), Lamp::Offline);
        assert_eq!(m.snapshots, 2);
        assert!(m.events.iter().any(|e| e.kind == "resync"));
    }

    #[test]
    fn every_user_gets_a_row_offline_until_it_registers() {
        let mut m = loaded();
        m.add_users(&json!([{"name": "1001", "realm": "example.test"},
                            {"name": "1009", "realm": "example.test", "source": "file"}]));
        assert!(m.known.contains_key("sip:1009@example.test"));
        assert_eq!(m.lamp("sip:1009@example.test"), Lamp::Offline);
        assert_eq!(m.lamp("sip:1001@example.test"), Lamp::Idle);
        let mut empty = Model::new();
        empty.add_users(&json!([{"name": "7", "realm": "Office.Example"}]));
        assert!(empty.known.contains_key("sip:7@office.example"));
    }

    #[test]
    fn aor_keys_drop_display_names_and_parameters() {
        assert_eq!(
            aor_key("\"Bob\" <sip:Bob@EXAMPLE.test;user=phone>"),
            "sip:Bob@example.test"
        );
        assert_eq!(aor_key("sip:1001@example.test"), "sip:1001@example.test");
        assert_eq!(user_part("sip:1001@example.test"), "1001");
    }

    #[test]
    fn the_log_is_bounded() {
        let mut m = loaded();
        for i in 0..(MAX_EVENTS as u64 + 50) {
            m.apply(
                "change",
                &json!({"seq": i, "kind": "publication", "presentity": "sip:1@x",
                    "event": "presence", "source": "api:1"}),
                T + i,
            );
        }
        assert_eq!(m.events.len(), MAX_EVENTS);
    }
}
