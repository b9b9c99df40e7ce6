//! A scripted Polycom-like shared-line (BLA) phone on raw SIP over UDP or TCP: it registers
//! the shared AOR with the line's or a member's credentials, is the notifier of the server's
//! `dialog;sla` subscription (answers its SUBSCRIBEs, NOTIFYs its own dialogs with the real
//! Polycom body shape: `version="0"`, `pval`, no local identity, `+sip.rendering=no` when
//! held), subscribes `dialog;sla` for the line itself and keeps the aggregated view the server
//! NOTIFYs it, and places, holds and hangs up calls through the proxy with
//! [`super::phone::Phone`].
//!
//! Everything the server sends is handled in one place ([`BlaPhone::pump_for`] and the
//! waits built on it): the server's SUBSCRIBEs and the NOTIFYs of our own subscription are
//! answered at once (a real phone does not let them wait, and an unanswered one would end
//! the subscription after Timer F); other requests (INVITE, ACK, BYE) wait in a queue for
//! the call helpers. Retransmissions (same Via branch) get the same answer again.

#![allow(dead_code)]

use super::authorization;
use super::phone::{Leg, Phone, SDP};
use super::ua::{cseq_of, tag_of};
use super::wire;
use busylamp::sip::body::dialog_info::{self, DialogInfo, DialogState, DocState, Rendering};
use busylamp::sip::{HasHeaders, HeaderName, Request, Response};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

/// What a Polycom VVX 350 on UC Software 5.9.5 calls itself.
pub const POLYCOM_UA: &str = "PolycomVVX-VVX_350-UA/5.9.5.0614";
pub const DOMAIN: &str = "example.test";

/// A server config with shared line 2000 (2 appearances), its own user `2000`/`line-pw` and
/// member `1001`/`pw1001`; calls trusted from loopback, NOTIFYs not coalesced.
pub const LINE_2000_TWO_USERS: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls"]
[presence]
coalesce_ms = 0
[[bla.lines]]
aor = "2000"
appearances = 2
members = ["1001"]
[[users]]
name = "2000"
password = "line-pw"
[[users]]
name = "1001"
password = "pw1001"
"#;

/// One of this phone's own dialogs on the line, as it reports it in its NOTIFYs.
#[derive(Debug, Clone)]
pub struct LineCall {
    pub id: String,
    /// The `x-line-id`; `None` = a private dialog (no appearance).
    pub appearance: Option<u32>,
    pub state: DialogState,
    pub held: bool,
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    pub initiator: bool,
    /// The far end's identity URI.
    pub remote: Option<String>,
    /// Where the far end's media and dialog live: Polycom writes its IP address here.
    pub remote_target: Option<String>,
}

/// One dialog of the document the server NOTIFYs a watcher of the line.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub id: String,
    pub appearance: Option<u32>,
    pub state: DialogState,
    pub held: bool,
    pub remote_identity: Option<String>,
    pub remote_target: Option<String>,
}

impl Shown {
    /// Whether this dialog is phone `name`'s (our ids are `"{name}-{n}"`, the server shows
    /// them as `"{phone key}-{name}-{n}"`).
    pub fn of(&self, name: &str) -> bool {
        self.id.contains(&format!("-{name}-"))
    }
}

/// The server's `dialog;sla` subscription to this phone (we are its notifier).
#[derive(Debug, Clone)]
pub struct SlaDialog {
    pub call_id: String,
    /// Our tag (the To tag of our 200).
    pub local_tag: String,
    /// The server's From tag.
    pub remote_tag: String,
    /// The To URI of the SUBSCRIBE (the line), our From in NOTIFYs.
    pub local_uri: String,
    /// The From URI of the SUBSCRIBE (the line), our To in NOTIFYs.
    pub remote_uri: String,
    /// The server's Contact: the Request-URI of our NOTIFYs.
    pub target: String,
    /// The SUBSCRIBE's Record-Route, in order (RFC 3261 §12.1.1, we are the UAS).
    pub route: Vec<String>,
    pub event: String,
    pub cseq: u32,
    pub expires: u32,
}

/// This phone's own `dialog;sla` subscription to the line.
#[derive(Debug, Clone)]
struct WatchDialog {
    call_id: String,
    from_tag: String,
    last_version: Option<u32>,
    last_cseq: Option<u32>,
}

pub struct BlaPhone {
    pub phone: Phone,
    /// The line's user part, `"2000"`.
    pub line: String,
    pub auth_user: String,
    password: String,
    pub user_agent: String,
    challenge: Option<String>,
    nc: u32,
    cseq: u32,
    next_id: u32,
    /// The server's subscription to us, once it SUBSCRIBEd.
    pub sla: Option<SlaDialog>,
    /// Every new (out-of-dialog) SUBSCRIBE the server sent us, in order.
    pub subscribes: Vec<Request>,
    /// Every in-dialog SUBSCRIBE (refresh or end) the server sent us, in order.
    pub refreshes: Vec<Request>,
    /// The status of each NOTIFY we sent by ourselves (after a SUBSCRIBE), in order.
    pub auto_notify_status: Vec<u16>,
    /// The status of the first NOTIFY of each subscription in `subscribes`.
    pub subscribe_answers: Vec<u16>,
    /// What happened in the server's subscription to us, one line each (SUBSCRIBEs
    /// received, NOTIFYs sent and their answers), for failure messages.
    pub log: Vec<String>,
    /// Our answer to each request the server sent, by (Via branch, method): a
    /// retransmission gets it again.
    answered: HashMap<(String, String), Vec<u8>>,
    seen: HashSet<(String, String)>,
    /// Requests for the call helpers (INVITE, ACK, BYE, ...).
    calls: VecDeque<Request>,
    /// Final responses read while waiting for another one.
    stray: VecDeque<Response>,
    watch: Option<WatchDialog>,
    /// The line as the server last told us (dialog id → dialog), merged from every NOTIFY.
    pub view: BTreeMap<String, Shown>,
    /// Every document of our subscription, in order.
    pub docs: Vec<DialogInfo>,
    /// The Subscription-State of the last NOTIFY of our subscription.
    pub watch_state: Option<String>,
    /// Our own dialogs on the line, by id: what our NOTIFYs report.
    pub mine: BTreeMap<String, LineCall>,
    /// Every dialog id we ever reported: none may come back to us (no echo).
    used_ids: HashSet<String>,
    /// How we answer the NOTIFYs of our subscription (200; a test may make us refuse).
    pub status_of_answers: u16,
    /// The reason phrase of the last answer to a NOTIFY of ours.
    pub last_reason: String,
}

/// Header lines, the empty ones left out (an empty line would end the header).
fn header_lines(lines: &[String]) -> String {
    lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

impl BlaPhone {
    /// A phone on 127.0.0.1 (UDP) for line `line` (its user part), authenticating as
    /// `auth_user`/`password` (the line's own user or a member). `name` tells phones apart
    /// (ids of its dialogs are `"{name}-{n}"`): use one capital letter.
    pub async fn new(
        server: SocketAddr,
        line: &str,
        name: &str,
        auth_user: &str,
        password: &str,
    ) -> BlaPhone {
        BlaPhone::with(Phone::new(server, line, name).await, auth_user, password)
    }

    /// The same over one TCP connection to the server's TCP socket `server`.
    pub async fn new_tcp(
        server: SocketAddr,
        line: &str,
        name: &str,
        auth_user: &str,
        password: &str,
    ) -> BlaPhone {
        BlaPhone::with(
            Phone::new_tcp(server, line, name).await,
            auth_user,
            password,
        )
    }

    pub fn with(phone: Phone, auth_user: &str, password: &str) -> BlaPhone {
        BlaPhone {
            line: phone.user.clone(),
            phone,
            auth_user: auth_user.into(),
            password: password.into(),
            user_agent: POLYCOM_UA.into(),
            challenge: None,
            nc: 0,
            cseq: 0,
            next_id: 0,
            sla: None,
            subscribes: Vec::new(),
            refreshes: Vec::new(),
            auto_notify_status: Vec::new(),
            subscribe_answers: Vec::new(),
            log: Vec::new(),
            answered: HashMap::new(),
            seen: HashSet::new(),
            calls: VecDeque::new(),
            stray: VecDeque::new(),
            watch: None,
            view: BTreeMap::new(),
            docs: Vec::new(),
            watch_state: None,
            mine: BTreeMap::new(),
            used_ids: HashSet::new(),
            status_of_answers: 200,
            last_reason: String::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.phone.name
    }

    /// `sip:2000@example.test`.
    pub fn line_aor(&self) -> String {
        format!("sip:{}@{DOMAIN}", self.line)
    }

    fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    // ----- requests of our own, with digest ------------------------------------------

    /// Sends the request `make(cseq, authorization line)` builds (Request-URI `uri`),
    /// answering one challenge (401 or 407) with our credentials; the final response.
    pub async fn authed_request(
        &mut self,
        method: &str,
        uri: &str,
        make: impl Fn(u32, &str) -> Vec<u8>,
    ) -> Response {
        for _ in 0..2 {
            let auth = match &self.challenge {
                Some(ch) => {
                    self.nc += 1;
                    format!(
                        "Authorization: {}",
                        authorization(ch, &self.auth_user, &self.password, method, uri, self.nc)
                    )
                }
                None => String::new(),
            };
            let cseq = self.next_cseq();
            let bytes = make(cseq, &auth);
            let call_id = call_id_of(&bytes);
            self.phone.ua.send(&bytes).await;
            let r = self.response_to(&call_id, cseq, 5000).await;
            if r.status != 401 {
                return r;
            }
            self.challenge = Some(
                r.headers
                    .get(HeaderName::WwwAuthenticate)
                    .expect("a challenge")
                    .to_string(),
            );
            self.nc = 0;
        }
        panic!("{method} {uri}: still challenged after answering");
    }

    /// The final response of the request `call_id`/`cseq` within `ms`; other final
    /// responses read meanwhile are kept, requests are queued for the pump.
    pub async fn response_to(&mut self, call_id: &str, cseq: u32, ms: u64) -> Response {
        let matches = |r: &Response| {
            r.call_id().is_ok_and(|c| c == call_id) && r.cseq().is_ok_and(|c| c.seq == cseq)
        };
        if let Some(i) = self.stray.iter().position(matches) {
            return self.stray.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = match self
                .phone
                .ua
                .any_response_within(left.as_millis() as u64)
                .await
            {
                Some(r) => r,
                None => panic!(
                    "phone {}: no final response to {call_id} CSeq {cseq} within {ms} ms",
                    self.name()
                ),
            };
            if r.status < 200 {
                continue;
            }
            if matches(&r) {
                return r;
            }
            self.stray.push_back(r);
        }
    }

    /// REGISTERs the line from this phone's contact for `expires` seconds (a Contact
    /// `expires` parameter), with the User-Agent of a Polycom; the final status.
    pub async fn register(&mut self, expires: u32) -> u16 {
        let contact = format!("<{}>;expires={expires}", self.phone.contact());
        let ua_line = format!("User-Agent: {}", self.user_agent);
        let via = via_base(&self.phone);
        let user = self.line.clone();
        let name = self.phone.name.clone();
        let r = self
            .authed_request("REGISTER", &format!("sip:{DOMAIN}"), move |cseq, auth| {
                wire(&format!(
                    "REGISTER sip:{DOMAIN} SIP/2.0
                    Via: {via};branch={b}
                    Max-Forwards: 70
                    From: <sip:{user}@{DOMAIN}>;tag=r{name}
                    To: <sip:{user}@{DOMAIN}>
                    Call-ID: reg-{user}-{name}
                    CSeq: {cseq} REGISTER
                    Contact: {contact}
                    Expires: {expires}
                    {lines}
                    ",
                    b = super::branch(),
                    lines = header_lines(&[ua_line.clone(), auth.to_string()]),
                ))
            })
            .await;
        r.status
    }

    /// Registers for an hour and asserts `200`.
    pub async fn registered(&mut self) {
        let status = self.register(3600).await;
        assert_eq!(status, 200, "REGISTER of phone {}", self.name());
    }

    // ----- our own dialog;sla subscription (we are the watcher) ----------------------

    /// SUBSCRIBEs `Event: dialog;sla` for the line (Request-URI and From the line AOR,
    /// Contact our registered contact); on 200 waits for the first NOTIFY. The final status.
    pub async fn watch_line(&mut self) -> u16 {
        let aor = self.line_aor();
        let line = self.line.clone();
        self.subscribe_sla(&aor, &line).await
    }

    /// SUBSCRIBEs `Event: dialog;sla` to `request_uri`, From `sip:{from_user}@example.test`,
    /// Contact our registered contact (its user is the line, as a Polycom's is): for the
    /// Contact-user-at-From-domain fallback, name the phone's own user in both.
    pub async fn subscribe_sla(&mut self, request_uri: &str, from_user: &str) -> u16 {
        let call_id = format!("sla-watch-{}-{}", self.phone.name, self.phone.ua.port());
        let from_tag = format!("w{}", self.phone.name);
        let via = via_base(&self.phone);
        let contact = self.phone.contact();
        let ua = self.user_agent.clone();
        let uri = request_uri.to_string();
        let (cid, tag) = (call_id.clone(), from_tag.clone());
        let r = self
            .authed_request("SUBSCRIBE", request_uri, move |cseq, auth| {
                wire(&format!(
                    "SUBSCRIBE {uri} SIP/2.0
                    Via: {via};branch={b}
                    Max-Forwards: 70
                    From: <sip:{from_user}@{DOMAIN}>;tag={tag}
                    To: <{uri}>
                    Call-ID: {cid}
                    CSeq: {cseq} SUBSCRIBE
                    Contact: <{contact}>
                    Event: dialog;sla
                    Accept: application/dialog-info+xml
                    Expires: 3600
                    User-Agent: {ua}
                    {auth}
                    ",
                    b = super::branch(),
                ))
            })
            .await;
        if r.status == 200 {
            self.watch = Some(WatchDialog {
                call_id,
                from_tag,
                last_version: None,
                last_cseq: None,
            });
            self.next_view(5000).await;
        }
        r.status
    }

    /// Whether our subscription to the line is up.
    pub fn watching(&self) -> bool {
        self.watch.is_some()
    }

    /// A NOTIFY of our own subscription: answered, its document checked (the first one
    /// full, versions one up each time while the server runs; after a restart, whose CSeq
    /// jumps ahead, a higher version with the full state; none of our own dialogs in it) and
    /// merged into [`BlaPhone::view`].
    async fn on_view(&mut self, n: Request) {
        let cseq = cseq_of(&n);
        let status = self.status_of_answers;
        self.answer(&n, status, None, &[]).await;
        let w = self.watch.as_mut().unwrap();
        if w.last_cseq == Some(cseq) {
            return; // a retransmission
        }
        if let Some(last) = w.last_cseq {
            assert!(
                cseq > last,
                "phone {}: NOTIFY CSeq {cseq} after {last}",
                self.phone.name
            );
        }
        let next_in_line = w.last_cseq.map(|c| c + 1) == Some(cseq);
        w.last_cseq = Some(cseq);
        let state = n
            .headers
            .get(HeaderName::SubscriptionState)
            .unwrap_or("")
            .to_string();
        self.watch_state = Some(state.clone());
        if !n.body.is_empty() {
            let doc = dialog_info::parse(&n.body).unwrap_or_else(|e| {
                panic!(
                    "phone {}: the line's NOTIFY body does not parse ({e:?}):\n{}",
                    self.phone.name,
                    String::from_utf8_lossy(&n.body)
                )
            });
            let w = self.watch.as_mut().unwrap();
            match w.last_version {
                None => assert_eq!(
                    doc.state,
                    DocState::Full,
                    "phone {}: the first NOTIFY of a subscription is full state",
                    self.phone.name
                ),
                Some(v) if next_in_line => assert_eq!(
                    doc.version,
                    v + 1,
                    "phone {}: versions go up by one per NOTIFY",
                    self.phone.name
                ),
                // The server restarted: it continues above what it reserved on disk.
                Some(v) => assert!(
                    doc.version > v && doc.state == DocState::Full,
                    "phone {}: after a jump of the CSeq, version {} ({:?}) after {v}",
                    self.phone.name,
                    doc.version,
                    doc.state
                ),
            }
            w.last_version = Some(doc.version);
            if doc.state == DocState::Full {
                self.view.clear();
            }
            for d in &doc.dialogs {
                if d.state == DialogState::Terminated {
                    self.view.remove(&d.id);
                } else {
                    self.view.insert(d.id.clone(), shown(d));
                }
            }
            for id in self.view.keys() {
                for own in &self.used_ids {
                    assert!(
                        !id.ends_with(&format!("-{own}")) && id != own,
                        "phone {} got its own dialog {own} back as {id}: echo\n{}",
                        self.phone.name,
                        String::from_utf8_lossy(&n.body)
                    );
                }
            }
            self.docs.push(doc);
        }
        if state.starts_with("terminated") {
            self.watch = None;
        }
    }

    /// The next NOTIFY of our subscription within `ms` (everything else handled meanwhile).
    pub async fn next_view(&mut self, ms: u64) -> &DialogInfo {
        let before = self.docs.len();
        let name = self.phone.name.clone();
        self.pump_until(ms, |p| p.docs.len() > before)
            .await
            .unwrap_or_else(|| panic!("phone {name}: no NOTIFY of the line within {ms} ms"));
        self.docs.last().unwrap()
    }

    /// Handles what arrives until the line's view satisfies `done` (checked first on the
    /// view as it is); panics after 5 s with the view.
    pub async fn sees(&mut self, what: &str, done: impl Fn(&BTreeMap<String, Shown>) -> bool) {
        self.sees_within(what, 5000, done).await
    }

    pub async fn sees_within(
        &mut self,
        what: &str,
        ms: u64,
        done: impl Fn(&BTreeMap<String, Shown>) -> bool,
    ) {
        if self.pump_until(ms, |p| done(&p.view)).await.is_none() {
            panic!(
                "phone {} never saw {what} within {ms} ms; it sees {:#?}",
                self.phone.name, self.view
            );
        }
    }

    /// The live dialogs shown on appearance `k`.
    pub fn on(&self, k: u32) -> Vec<&Shown> {
        on(&self.view, k)
    }

    // ----- the server's dialog;sla subscription (we are the notifier) ----------------

    /// Waits until the server has SUBSCRIBEd (a new subscription: `subscribes` grows past
    /// `count`) and we answered it with our full state; the SUBSCRIBE and the status of our
    /// first NOTIFY.
    pub async fn subscribed_after(&mut self, count: usize, ms: u64) -> (Request, u16) {
        let name = self.phone.name.clone();
        self.pump_until(ms, |p| p.subscribes.len() > count && p.sla.is_some())
            .await
            .unwrap_or_else(|| panic!("phone {name}: the server did not SUBSCRIBE within {ms} ms"));
        let r = self.subscribes[count].clone();
        (r, self.subscribe_answers[count])
    }

    /// Waits for the server's first `dialog;sla` SUBSCRIBE; asserts our first NOTIFY got
    /// `200`.
    pub async fn accept_sla_subscribe(&mut self) -> Request {
        let (r, status) = self.subscribed_after(0, 5000).await;
        assert_eq!(status, 200, "phone {}: our first NOTIFY", self.phone.name);
        r
    }

    /// A server SUBSCRIBE: a new subscription (no To tag: replaces ours), a refresh of ours,
    /// an end (Expires 0), or 481 for a dialog we do not know.
    async fn on_subscribe(&mut self, r: Request) {
        let event = r.headers.get(HeaderName::Event).unwrap_or("").to_string();
        let expires = r
            .headers
            .get(HeaderName::Expires)
            .and_then(|e| e.trim().parse().ok())
            .unwrap_or(3600u32);
        let to_tag = tag_of(r.headers.get(HeaderName::To).unwrap_or(""));
        let call_id = r.call_id().unwrap_or("").to_string();
        if !event.to_ascii_lowercase().starts_with("dialog") {
            self.answer(&r, 489, None, &[]).await;
            return;
        }
        self.log.push(format!(
            "SUBSCRIBE {} Call-ID {call_id} CSeq {} Expires {expires}",
            if to_tag.is_empty() {
                "new"
            } else {
                "in-dialog"
            },
            cseq_of(&r)
        ));
        if to_tag.is_empty() {
            let n = self.subscribes.len();
            let local_tag = format!("sla{}{n}", self.phone.name);
            let contact = format!("<{}>", self.phone.contact());
            self.answer(
                &r,
                200,
                Some(&local_tag),
                &[("Contact", contact), ("Expires", expires.to_string())],
            )
            .await;
            let uri = |h| {
                busylamp::sip::NameAddr::parse(r.headers.get(h).unwrap_or(""))
                    .map(|na| na.uri.to_string())
                    .unwrap_or_default()
            };
            self.sla = Some(SlaDialog {
                call_id,
                local_tag,
                remote_tag: tag_of(r.headers.get(HeaderName::From).unwrap_or("")),
                local_uri: uri(HeaderName::To),
                remote_uri: uri(HeaderName::From),
                target: super::phone::contact_uri(r.headers.get(HeaderName::Contact).unwrap_or("")),
                route: r
                    .headers
                    .list(HeaderName::RecordRoute)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                event,
                cseq: 0,
                expires,
            });
            self.subscribes.push(r);
            let status = self.notify_full().await;
            self.auto_notify_status.push(status);
            self.subscribe_answers.push(status);
            return;
        }
        let ours = self
            .sla
            .as_ref()
            .is_some_and(|s| s.call_id == call_id && s.local_tag == to_tag);
        if !ours {
            self.log.push("  a dialog we do not know: 481".into());
            self.answer(&r, 481, None, &[]).await;
            return;
        }
        self.answer(&r, 200, None, &[("Expires", expires.to_string())])
            .await;
        self.refreshes.push(r);
        if expires == 0 {
            let status = self
                .send_notify(DocState::Full, &[], "terminated;reason=timeout")
                .await;
            self.auto_notify_status.push(status);
            self.sla = None;
        } else {
            self.sla.as_mut().unwrap().expires = expires;
            let status = self.notify_full().await;
            self.auto_notify_status.push(status);
        }
    }

    /// Answers a request the server sent us (and remembers the answer for retransmissions).
    async fn answer(
        &mut self,
        req: &Request,
        status: u16,
        to_tag: Option<&str>,
        extra: &[(&str, String)],
    ) {
        let mut r = req.response(status, "Polycom", to_tag);
        r.headers.0.retain(|h| h.kind != HeaderName::ContentLength);
        for (name, value) in extra {
            r.headers.push_raw(name, value.clone());
        }
        r.headers.push_raw("User-Agent", self.user_agent.clone());
        let bytes = r.to_bytes();
        self.answered.insert(key_of(req), bytes.clone());
        self.phone.ua.send(&bytes).await;
    }

    /// One request the server sent: dispatched.
    async fn handle(&mut self, r: Request) {
        let key = key_of(&r);
        if let Some(bytes) = self.answered.get(&key).cloned() {
            self.phone.ua.send(&bytes).await;
            return;
        }
        let watch_call = self.watch.as_ref().map(|w| w.call_id.clone());
        match r.method.as_str() {
            "SUBSCRIBE" => self.on_subscribe(r).await,
            "NOTIFY" if r.call_id().ok() == watch_call.as_deref() => self.on_view(r).await,
            "NOTIFY" => self.answer(&r, 481, None, &[]).await,
            "OPTIONS" => self.answer(&r, 200, None, &[]).await,
            _ => {
                if self.seen.insert(key) {
                    self.calls.push_back(r);
                }
            }
        }
    }

    /// Handles everything that arrives for `ms`.
    pub async fn pump_for(&mut self, ms: u64) {
        let _ = self.pump_until(ms, |_| false).await;
    }

    /// Handles what arrives until `done` holds (checked first), within `ms`: `None` on
    /// timeout.
    pub async fn pump_until(&mut self, ms: u64, done: impl Fn(&BlaPhone) -> bool) -> Option<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            if done(self) {
                return Some(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let r = self
                .phone
                .ua
                .next_request_within(left.as_millis() as u64 + 1)
                .await?;
            self.handle(r).await;
        }
    }

    // ----- NOTIFYs of our dialogs ------------------------------------------------------

    /// The document our NOTIFYs carry, shaped as a Polycom writes it.
    pub fn body(&self, state: DocState, calls: &[LineCall]) -> String {
        let mut out = format!(
            "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"0\" state=\"{}\" entity=\"{}\">\n",
            state.as_str(),
            self.line_aor()
        );
        for c in calls {
            out.push_str(&polycom_dialog(&self.line_aor(), c));
        }
        out.push_str("</dialog-info>\n");
        out
    }

    /// A NOTIFY inside the server's subscription, with `body` (a dialog-info document, or
    /// anything) and the next CSeq; sent by [`BlaPhone::notify_raw`].
    pub fn notify_request(&mut self, body: &str, sub_state: &str) -> (Vec<u8>, u32) {
        let sla = self.sla.as_mut().expect("the server has not SUBSCRIBEd us");
        sla.cseq += 1;
        let sla = sla.clone();
        let expires = if sub_state.starts_with("active") && !sub_state.contains("expires") {
            format!("{sub_state};expires={}", sla.expires)
        } else {
            sub_state.to_string()
        };
        let routes: String = sla.route.iter().map(|r| format!("Route: {r}\n")).collect();
        let bytes = wire(&format!(
            "NOTIFY {target} SIP/2.0
            Via: {via};branch={b}
            Max-Forwards: 70
            {routes}From: <{local}>;tag={ltag}
            To: <{remote}>;tag={rtag}
            Call-ID: {cid}
            CSeq: {cseq} NOTIFY
            Contact: <{contact}>
            Event: {event}
            Subscription-State: {expires}
            User-Agent: {ua}
            Accept-Language: en
            Content-Type: application/dialog-info+xml

{body}",
            target = sla.target,
            via = via_base(&self.phone),
            b = super::branch(),
            local = sla.local_uri,
            ltag = sla.local_tag,
            remote = sla.remote_uri,
            rtag = sla.remote_tag,
            cid = sla.call_id,
            cseq = sla.cseq,
            contact = self.phone.contact(),
            event = sla.event,
            ua = self.user_agent,
        ));
        (bytes, sla.cseq)
    }

    /// Sends a NOTIFY of the server's subscription without waiting; its CSeq, for
    /// [`BlaPhone::notify_status`].
    pub async fn notify_raw(&mut self, bytes: &[u8]) {
        self.phone.ua.send(bytes).await;
    }

    /// The status the server answered our NOTIFY `cseq` with.
    pub async fn notify_status(&mut self, cseq: u32) -> Response {
        let call_id = self.sla.as_ref().unwrap().call_id.clone();
        self.response_to(&call_id, cseq, 5000).await
    }

    /// A NOTIFY of `calls` in the server's subscription, `state` full or partial; the
    /// final status.
    pub async fn send_notify(&mut self, state: DocState, calls: &[LineCall], sub: &str) -> u16 {
        let body = self.body(state, calls);
        for c in calls {
            self.used_ids.insert(c.id.clone());
        }
        let (bytes, cseq) = self.notify_request(&body, sub);
        self.notify_raw(&bytes).await;
        let r = self.notify_status(cseq).await;
        self.log.push(format!(
            "  NOTIFY {} ({} dialogs) CSeq {cseq} in {}: {} {}",
            state.as_str(),
            calls.len(),
            self.sla.as_ref().map(|s| s.call_id.as_str()).unwrap_or("?"),
            r.status,
            r.reason
        ));
        self.last_reason = r.reason.clone();
        r.status
    }

    /// A full NOTIFY of every dialog we have; the status.
    pub async fn notify_full(&mut self) -> u16 {
        let calls: Vec<LineCall> = self.mine.values().cloned().collect();
        self.send_notify(DocState::Full, &calls, "active").await
    }

    /// A partial NOTIFY of our dialog `id` as it is now; the status.
    pub async fn report(&mut self, id: &str) -> u16 {
        let c = self.mine[id].clone();
        self.send_notify(DocState::Partial, &[c], "active").await
    }

    /// A new dialog of ours on appearance `k` (not reported yet).
    pub fn new_call(&mut self, k: Option<u32>) -> LineCall {
        self.next_id += 1;
        let id = format!("{}-{}", self.phone.name, self.next_id);
        // No `@`: Phone::invite makes its From tag of the Call-ID, and a tag is a token.
        let call_id = format!("{id}-{}-call", self.phone.ua.port());
        LineCall {
            local_tag: format!("from-{call_id}"),
            id,
            appearance: k,
            state: DialogState::Trying,
            held: false,
            call_id,
            remote_tag: None,
            initiator: true,
            remote: None,
            remote_target: None,
        }
    }

    /// Going off-hook on appearance `k`: a partial NOTIFY with a `trying` dialog. On 200
    /// the dialog is ours; otherwise (409) the phone forgets it. The status and the id.
    pub async fn seize(&mut self, k: u32) -> (u16, String) {
        let c = self.new_call(Some(k));
        let id = c.id.clone();
        self.mine.insert(id.clone(), c);
        let status = self.report(&id).await;
        if status != 200 {
            self.mine.remove(&id);
        }
        (status, id)
    }

    /// Sends a seize of `k` and does not wait for the answer (the race): the id and the
    /// NOTIFY's CSeq. [`BlaPhone::seize_answered`] reads the answer.
    pub async fn seize_send(&mut self, k: u32) -> (String, u32) {
        let c = self.new_call(Some(k));
        let id = c.id.clone();
        self.used_ids.insert(id.clone());
        let body = self.body(DocState::Partial, std::slice::from_ref(&c));
        self.mine.insert(id.clone(), c);
        let (bytes, cseq) = self.notify_request(&body, "active");
        self.notify_raw(&bytes).await;
        (id, cseq)
    }

    /// The answer to a seize sent by [`BlaPhone::seize_send`]; a refused seize is forgotten.
    pub async fn seize_answered(&mut self, id: &str, cseq: u32) -> u16 {
        let status = self.notify_status(cseq).await.status;
        if status != 200 {
            self.mine.remove(id);
        }
        status
    }

    /// Changes our dialog `id` and reports it (partial); the status.
    pub async fn update(&mut self, id: &str, change: impl FnOnce(&mut LineCall)) -> u16 {
        change(self.mine.get_mut(id).expect("our dialog"));
        self.report(id).await
    }

    /// Our dialog `id` ended: reported `terminated` (partial) and forgotten; the status.
    pub async fn end(&mut self, id: &str) -> u16 {
        let status = self.update(id, |c| c.state = DialogState::Terminated).await;
        self.mine.remove(id);
        status
    }

    // ----- calls through the proxy ------------------------------------------------------

    /// The next request of `method` for the call helpers within `ms` (the line's traffic
    /// handled meanwhile).
    pub async fn next_call(&mut self, method: &str, ms: u64) -> Request {
        let m = method.to_string();
        let name = self.phone.name.clone();
        self.pump_until(ms, |p| p.calls.iter().any(|r| r.method == m))
            .await
            .unwrap_or_else(|| panic!("no {method} reached phone {name} within {ms} ms"));
        let i = self.calls.iter().position(|r| r.method == method).unwrap();
        self.calls.remove(i).unwrap()
    }

    /// Calls `callee` (a registered plain phone, which answers) on our seized dialog `id`,
    /// through the proxy: INVITE, 180, 200, ACK; then reports the dialog `confirmed` with the
    /// far end's identity and (as Polycom does) its address as remote target. The caller's
    /// leg, the callee's To tag and the status of our NOTIFY.
    pub async fn call(&mut self, id: &str, callee: &mut Phone) -> (Leg, String, u16) {
        let c = self.mine[id].clone();
        let invite = self.phone.invite(&callee.user, &c.call_id).await;
        let incoming = match callee.ua.next_request_within(5000).await {
            Some(r) if r.method == "INVITE" => r,
            other => {
                let r = self.response_to(&c.call_id, 1, 5000).await;
                panic!(
                    "phone {}'s INVITE to {} did not reach it ({:?} did): the proxy answered {} {}",
                    self.phone.name,
                    callee.user,
                    other.map(|r| r.method),
                    r.status,
                    r.reason
                );
            }
        };
        let tag = format!("callee-{}", c.id);
        callee.reply(&incoming, 180, &tag).await;
        self.update(id, |c| c.state = DialogState::Proceeding).await;
        callee.reply(&incoming, 200, &tag).await;
        let ok = self.response_to(&c.call_id, 1, 5000).await;
        assert_eq!(ok.status, 200, "the call was answered: {}", ok.reason);
        let leg = self.phone.ack(callee, &invite, &ok).await;
        let remote_target = leg.remote_target.clone();
        let status = self
            .update(id, |c| {
                c.state = DialogState::Confirmed;
                c.remote_tag = Some(tag.clone());
                c.remote = Some(format!("sip:{}@{DOMAIN}", callee.user));
                c.remote_target = Some(remote_target);
            })
            .await;
        (leg, tag, status)
    }

    /// Holds the call `id` on `leg`: a re-INVITE with `a=sendonly` through the proxy, `callee`
    /// answers; then the dialog reported with `+sip.rendering=no`. The NOTIFY's status.
    pub async fn hold(&mut self, id: &str, leg: &mut Leg, callee: &mut Phone, tag: &str) -> u16 {
        let sdp = SDP.replace("a=sendrecv", "a=sendonly");
        let bytes = self.phone.in_dialog(leg, "INVITE", Some(&sdp));
        self.phone.ua.send(&bytes).await;
        let reinvite = callee.next_of("INVITE").await;
        callee.reply(&reinvite, 200, tag).await;
        let ok = self.response_to(&leg.call_id, leg.cseq, 5000).await;
        assert_eq!(ok.status, 200, "re-INVITE (hold): {}", ok.reason);
        let ack = self.phone.in_dialog(leg, "ACK", None);
        self.phone.ua.send(&ack).await;
        callee.next_of("ACK").await;
        self.update(id, |c| c.held = true).await
    }

    /// Hangs up the call `id` on `leg` (BYE through the proxy, `callee` answers) and reports
    /// it terminated. The NOTIFY's status.
    pub async fn hang_up(&mut self, id: &str, leg: &mut Leg, callee: &mut Phone, tag: &str) -> u16 {
        let bye = self.phone.in_dialog(leg, "BYE", None);
        self.phone.ua.send(&bye).await;
        let incoming = callee.next_of("BYE").await;
        callee.reply(&incoming, 200, tag).await;
        let ok = self.response_to(&leg.call_id, leg.cseq, 5000).await;
        assert_eq!(ok.status, 200, "BYE: {}", ok.reason);
        self.end(id).await
    }
}

impl BlaPhone {
    /// Rings for the INVITE `invite` the proxy forked to us: `180` with our To tag, and an
    /// `early` dialog (direction recipient, as in the Polycom capture) on appearance `k`
    /// reported. The dialog id, our tag and the NOTIFY's status.
    pub async fn ring(&mut self, invite: &Request, k: u32) -> (String, String, u16) {
        let mut c = self.new_call(Some(k));
        let tag = format!("ring-{}", c.id);
        self.phone.reply(invite, 180, &tag).await;
        c.call_id = invite.call_id().unwrap().to_string();
        c.local_tag = tag.clone();
        c.remote_tag = Some(tag_of(invite.headers.get(HeaderName::From).unwrap()));
        c.initiator = false;
        c.state = DialogState::Early;
        c.remote = Some(
            busylamp::sip::NameAddr::parse(invite.headers.get(HeaderName::From).unwrap())
                .unwrap()
                .uri
                .to_string(),
        );
        let id = c.id.clone();
        self.mine.insert(id.clone(), c);
        let status = self.report(&id).await;
        (id, tag, status)
    }

    /// The INVITE we rang for (our `180` had To tag `tag`) was answered elsewhere: the
    /// proxy's CANCEL gets `200`, the INVITE `487`.
    pub async fn cancelled(&mut self, invite: &Request, tag: &str) {
        let cancel = self.next_call("CANCEL", 5000).await;
        self.phone.reply(&cancel, 200, tag).await;
        self.phone.reply(invite, 487, tag).await;
    }
}

/// One `<dialog>` as a Polycom writes it: `x-line-id` with `pval` in the local target, no
/// local identity, `+sip.rendering=no` when held.
pub fn polycom_dialog(line_aor: &str, c: &LineCall) -> String {
    let mut attrs = format!(
        "id=\"{}\" call-id=\"{}\" local-tag=\"{}\"",
        c.id, c.call_id, c.local_tag
    );
    if let Some(t) = &c.remote_tag {
        attrs.push_str(&format!(" remote-tag=\"{t}\""));
    }
    attrs.push_str(if c.initiator {
        " direction=\"initiator\""
    } else {
        " direction=\"recipient\""
    });
    let mut params = String::new();
    if let Some(k) = c.appearance {
        params.push_str(&format!("<param pname=\"x-line-id\" pval=\"{k}\" />\n"));
    }
    if c.held {
        params.push_str("<param pname=\"+sip.rendering\" pval=\"no\" />\n");
    }
    let mut remote = String::new();
    if c.remote.is_some() || c.remote_target.is_some() {
        remote.push_str("<remote>\n");
        if let Some(id) = &c.remote {
            remote.push_str(&format!("<identity>{id}</identity>\n"));
        }
        if let Some(t) = &c.remote_target {
            remote.push_str(&format!("<target uri=\"{t}\" />\n"));
        }
        remote.push_str("</remote>\n");
    }
    format!(
        "<dialog {attrs}>\n<state>{}</state>\n<local>\n<target uri=\"{line_aor}\">\n{params}</target>\n</local>\n{remote}</dialog>\n",
        c.state.as_str()
    )
}

/// A watcher's view of one dialog.
pub fn shown(d: &dialog_info::Dialog) -> Shown {
    Shown {
        id: d.id.clone(),
        appearance: d.line,
        state: d.state,
        held: d.rendering() == Some(Rendering::No),
        remote_identity: d.remote.identity.as_ref().map(|i| i.uri.clone()),
        remote_target: d.remote.target.as_ref().map(|t| t.uri.clone()),
    }
}

/// The live dialogs of `view` on appearance `k`.
pub fn on(view: &BTreeMap<String, Shown>, k: u32) -> Vec<&Shown> {
    view.values()
        .filter(|s| s.appearance == Some(k) && s.state != DialogState::Terminated)
        .collect()
}

/// Appearance `k` of `view` is held by phone `name` in `state` (and `held`), and by no one
/// else.
pub fn holds(
    view: &BTreeMap<String, Shown>,
    k: u32,
    name: &str,
    state: DialogState,
    held: bool,
) -> bool {
    let d = on(view, k);
    d.len() == 1 && d[0].of(name) && d[0].state == state && d[0].held == held
}

/// Nobody's dialog is on appearance `k`.
pub fn free(view: &BTreeMap<String, Shown>, k: u32) -> bool {
    on(view, k).is_empty()
}

fn key_of(r: &Request) -> (String, String) {
    let branch = r
        .top_via()
        .ok()
        .and_then(|v| v.branch())
        .unwrap_or_default();
    (branch, r.method.clone())
}

fn call_id_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Our Via without its branch: `SIP/2.0/UDP 127.0.0.1:PORT`.
pub fn via_base(p: &Phone) -> String {
    format!("SIP/2.0/{} {}:{}", p.ua.transport(), p.ip(), p.ua.port())
}

/// Handles everything that arrives at `phones` for `ms` (each in turn, 20 ms at a time):
/// the time a paused clock jumps, every phone answering as a real one would.
pub async fn pump_all(phones: &mut [&mut BlaPhone], ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while tokio::time::Instant::now() < deadline {
        for p in phones.iter_mut() {
            p.pump_for(20).await;
        }
    }
}

/// Handles what arrives at `phones` until every one's view satisfies `done`, within `ms`.
pub async fn all_see(
    phones: &mut [&mut BlaPhone],
    what: &str,
    ms: u64,
    done: impl Fn(&BTreeMap<String, Shown>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        if phones.iter().all(|p| done(&p.view)) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let views: Vec<(&str, &BTreeMap<String, Shown>)> =
                phones.iter().map(|p| (p.name(), &p.view)).collect();
            panic!("not every phone saw {what} within {ms} ms: {views:#?}");
        }
        for p in phones.iter_mut() {
            p.pump_for(20).await;
        }
    }
}
