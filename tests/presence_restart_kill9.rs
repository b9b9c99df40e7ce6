//! Per-watcher CSeq and version survive a `kill -9` (DESIGN: "Per-watcher versions and CSeq
//! survive restarts"; RFC 6665 §4.2.2, RFC 4235 §4.1). The real binary holds 1,000
//! subscriptions (BLF `dialog` and `presence`), some presentities change state, then it is
//! killed with SIGKILL and started again on the same data directory. NOTIFYs do not wait for
//! the disk (each subscription reserves CSeqs and versions on disk ahead), so after the
//! restart every watcher's first NOTIFY carries a CSeq above every CSeq it got before and,
//! for `dialog`, a version above every version before, with the full state
//! (`state="full"`); no later NOTIFY goes backwards or repeats one. A subscription whose
//! Expires ran out while the server was down ends with `terminated;reason=timeout` instead.
//! Loopback only, every wait bounded.

mod common;
use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::{HasHeaders, HeaderName, Message};
use common::binary::Busylamp;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

const SUBSCRIPTIONS: usize = 1_000;
const PHONES: usize = 10;
const PRESENTITIES: usize = 50;

/// One NOTIFY as the watcher saw it.
#[derive(Debug, Clone)]
struct Seen {
    cseq: u32,
    /// The `version` of a dialog-info body.
    version: Option<u32>,
    /// Whether a dialog-info body says `state="full"`.
    full: Option<bool>,
    state: String,
}

/// Everything the phones received, keyed by Call-ID.
#[derive(Default)]
struct Inbox {
    /// Final responses: (CSeq number, status, To tag).
    responses: HashMap<String, (u32, u16, Option<String>)>,
    /// NOTIFYs in arrival order (retransmissions included).
    notifies: HashMap<String, Vec<Seen>>,
    last_arrival: Option<Instant>,
}

type Shared = Arc<Mutex<Inbox>>;

/// `version="N"` of the `<dialog-info>` root (not the XML declaration's).
fn dialog_info_version(body: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(body).ok()?;
    let root = &text[text.find("<dialog-info")?..];
    let tag = &root[..root.find('>')?];
    let v = &tag[tag.find(" version=\"")? + 10..];
    v[..v.find('"')?].parse().ok()
}

/// Whether the `<dialog-info>` root says `state="full"` (`None`: no dialog-info body).
fn dialog_info_full(body: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(body).ok()?;
    let root = &text[text.find("<dialog-info")?..];
    let tag = &root[..root.find('>')?];
    Some(tag.contains(" state=\"full\""))
}

/// The NOTIFYs a watcher got in order, retransmissions (same CSeq, one after the other)
/// counted once; `None` when one went backwards or repeated an earlier CSeq or version.
fn strictly_increasing(seen: &[Seen]) -> Option<Vec<&Seen>> {
    let mut out: Vec<&Seen> = Vec::new();
    for n in seen {
        match out.last() {
            Some(last) if last.cseq == n.cseq => continue,
            Some(last) if n.cseq < last.cseq => return None,
            Some(last) if matches!((last.version, n.version), (Some(a), Some(b)) if b <= a) => {
                return None
            }
            _ => out.push(n),
        }
    }
    Some(out)
}

fn to_tag(value: &str) -> Option<String> {
    let i = value.find(";tag=")? + 5;
    Some(
        value[i..]
            .split([';', ' ', '>'])
            .next()
            .unwrap_or("")
            .to_string(),
    )
}

fn cseq_number(value: Option<&str>) -> u32 {
    value
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A watcher's UDP socket, holding many subscriptions; answers every NOTIFY with 200.
struct Phone {
    sock: Arc<UdpSocket>,
    port: u16,
    task: JoinHandle<()>,
}

impl Phone {
    async fn new(inbox: Shared) -> Phone {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let port = sock.local_addr().unwrap().port();
        let s = sock.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else {
                    continue;
                };
                match parse_message(&buf[..n], &Limits::default()) {
                    Ok(Message::Request(req)) if req.method == "NOTIFY" => {
                        let call_id = req.call_id().unwrap_or_default().to_string();
                        let seen = Seen {
                            cseq: cseq_number(req.headers.get(HeaderName::CSeq)),
                            version: dialog_info_version(&req.body),
                            full: dialog_info_full(&req.body),
                            state: req
                                .headers
                                .get(HeaderName::SubscriptionState)
                                .unwrap_or("")
                                .to_string(),
                        };
                        {
                            let mut inbox = inbox.lock().unwrap();
                            inbox.notifies.entry(call_id).or_default().push(seen);
                            inbox.last_arrival = Some(Instant::now());
                        }
                        let ok = req.response(200, "OK", None).to_bytes();
                        let _ = s.send_to(&ok, from).await;
                    }
                    Ok(Message::Response(r)) if r.status >= 200 => {
                        let call_id = r
                            .headers
                            .get(HeaderName::CallId)
                            .unwrap_or_default()
                            .to_string();
                        let tag = r.headers.get(HeaderName::To).and_then(to_tag);
                        let cseq = cseq_number(r.headers.get(HeaderName::CSeq));
                        inbox
                            .lock()
                            .unwrap()
                            .responses
                            .insert(call_id, (cseq, r.status, tag));
                    }
                    _ => {}
                }
            }
        });
        Phone { sock, port, task }
    }

    async fn send(&self, bytes: &[u8], server: SocketAddr) {
        self.sock.send_to(bytes, server).await.unwrap();
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dialog,
    Presence,
}

#[derive(Debug, Clone)]
struct Sub {
    call_id: String,
    from_tag: String,
    watcher: String,
    presentity: String,
    kind: Kind,
    phone: usize,
    expires: u32,
}

impl Sub {
    fn subscribe(&self, port: u16, cseq: u32, to_tag: Option<&str>, expires: u32) -> Vec<u8> {
        let (event, accept) = match self.kind {
            Kind::Dialog => ("dialog", "application/dialog-info+xml"),
            Kind::Presence => ("presence", "application/pidf+xml"),
        };
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        wire(&format!(
            "SUBSCRIBE sip:{p}@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
            Max-Forwards: 70
            From: <sip:{w}@example.test>;tag={ft}
            To: <sip:{p}@example.test>{to_tag}
            Call-ID: {c}
            CSeq: {cseq} SUBSCRIBE
            Contact: <sip:{w}@127.0.0.1:{port}>
            Event: {event}
            Accept: {accept}
            Expires: {expires}
            User-Agent: busylamp-test
            ",
            p = self.presentity,
            w = self.watcher,
            ft = self.from_tag,
            c = self.call_id,
            b = branch(),
        ))
    }
}

fn publish(call_id: &str, presentity: &str, kind: Kind, body: &str, port: u16) -> Vec<u8> {
    let (event, ctype) = match kind {
        Kind::Dialog => ("dialog", "application/dialog-info+xml"),
        Kind::Presence => ("presence", "application/pidf+xml"),
    };
    wire(&format!(
        "PUBLISH sip:{presentity}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:{presentity}@example.test>;tag=pub
        To: <sip:{presentity}@example.test>
        Call-ID: {call_id}
        CSeq: 1 PUBLISH
        Event: {event}
        Expires: 3600
        Content-Type: {ctype}

{body}",
        b = branch(),
    ))
}

fn dialog_body(presentity: &str, n: usize, state: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{n}" state="full" entity="sip:{presentity}@example.test">
<dialog id="d{n}" call-id="call-{presentity}-{n}" local-tag="lt{n}" remote-tag="rt{n}" direction="recipient">
<state>{state}</state>
<local><identity>sip:{presentity}@example.test</identity></local>
<remote><identity>sip:9999@example.test</identity></remote>
</dialog>
</dialog-info>
"#
    )
}

fn pidf_body(presentity: &str, basic: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{presentity}@example.test">
<tuple id="t1"><status><basic>{basic}</basic></status></tuple>
</presence>
"#
    )
}

/// Polls `done` every 10 ms until it holds or `limit` passes; says whether it held.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends requests (Call-ID, bytes, phone) in windows of `window`, retransmitting any without a
/// final response every second (same branch: the server transaction answers again), until
/// every one has one or `limit` passes. Returns the Call-IDs still unanswered.
async fn send_all(
    phones: &[Phone],
    server: SocketAddr,
    inbox: &Shared,
    requests: &[(String, Vec<u8>, usize)],
    window: usize,
    limit: Duration,
) -> Vec<String> {
    let until = Instant::now() + limit;
    for chunk in requests.chunks(window) {
        let answered = |inbox: &Shared, c: &str| inbox.lock().unwrap().responses.contains_key(c);
        loop {
            for (call_id, bytes, phone) in chunk {
                if !answered(inbox, call_id) {
                    phones[*phone].send(bytes, server).await;
                }
            }
            let chunk_done = || chunk.iter().all(|(c, _, _)| answered(inbox, c));
            let remaining = until.saturating_duration_since(Instant::now());
            if wait_until(remaining.min(Duration::from_secs(1)), chunk_done).await {
                break;
            }
            if Instant::now() >= until {
                return requests
                    .iter()
                    .filter(|(c, _, _)| !answered(inbox, c))
                    .map(|(c, _, _)| c.clone())
                    .collect();
            }
        }
    }
    Vec::new()
}

/// Waits until no NOTIFY arrived for `quiet` (longer than one NOTIFY retransmission
/// interval, so a NOTIFY lost on loopback has been re-sent and answered).
async fn settle(inbox: &Shared, quiet: Duration, limit: Duration) -> bool {
    wait_until(limit, || {
        inbox
            .lock()
            .unwrap()
            .last_arrival
            .is_some_and(|t| t.elapsed() >= quiet)
    })
    .await
}

fn last_of(inbox: &Shared, call_id: &str) -> Option<Seen> {
    inbox
        .lock()
        .unwrap()
        .notifies
        .get(call_id)
        .and_then(|v| v.iter().max_by_key(|s| s.cseq).cloned())
}

/// The presentities watched are users of the server (a SUBSCRIBE for anyone else is `404`).
fn presentity_users() -> String {
    (0..PRESENTITIES)
        .map(|i| format!("[[users]]\nname = \"{}\"\npassword = \"pw\"\n", 2000 + i))
        .collect()
}

fn make_subs(n: usize, expires: u32) -> Vec<Sub> {
    (0..n)
        .map(|i| Sub {
            call_id: format!("sub-{i}@kill9.test"),
            from_tag: format!("wt{i}"),
            watcher: format!("w{i}"),
            presentity: format!("{}", 2000 + i % PRESENTITIES),
            // Three BLF watchers for every presence watcher, as on a desk-phone system.
            kind: if i % 4 == 3 {
                Kind::Presence
            } else {
                Kind::Dialog
            },
            phone: i % PHONES,
            expires,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_watcher_continues_cseq_and_version_after_kill_9() {
    let started = Instant::now();
    let mut server = Busylamp::new("thousand", &format!("[presence]\n{}", presentity_users()));
    server.wait_ready().await;
    let addr = server.addr;
    let inbox: Shared = Arc::default();
    let mut phones = Vec::new();
    for _ in 0..PHONES {
        phones.push(Phone::new(inbox.clone()).await);
    }

    // 1,000 subscriptions, 20 per presentity.
    let subs = make_subs(SUBSCRIPTIONS, 3600);
    let requests: Vec<(String, Vec<u8>, usize)> = subs
        .iter()
        .map(|s| {
            (
                s.call_id.clone(),
                s.subscribe(phones[s.phone].port, 1, None, s.expires),
                s.phone,
            )
        })
        .collect();
    let unanswered = send_all(
        &phones,
        addr,
        &inbox,
        &requests,
        100,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        unanswered.is_empty(),
        "{} SUBSCRIBEs unanswered, e.g. {:?}\n{}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(5)],
        server.log_text()
    );
    let refused: Vec<String> = {
        let inbox = inbox.lock().unwrap();
        subs.iter()
            .filter_map(|s| {
                let (_, status, _) = inbox.responses[&s.call_id];
                (status != 200).then(|| format!("{} {:?}: {status}", s.call_id, s.kind))
            })
            .collect()
    };
    assert!(
        refused.is_empty(),
        "{} SUBSCRIBEs refused, e.g. {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    let all_notified = wait_until(Duration::from_secs(15), || {
        let inbox = inbox.lock().unwrap();
        subs.iter().all(|s| inbox.notifies.contains_key(&s.call_id))
    })
    .await;
    assert!(all_notified, "not every subscription got its first NOTIFY");

    // State changes, so CSeqs and versions differ between watchers: a dialog for the first
    // ten presentities, then a second for the first five; presence for ten others.
    let publisher = Phone::new(inbox.clone()).await;
    let mut publishes = Vec::new();
    for p in 0..10 {
        let pres = format!("{}", 2000 + p);
        publishes.push((
            format!("pub-d1-{pres}"),
            publish(
                &format!("pub-d1-{pres}"),
                &pres,
                Kind::Dialog,
                &dialog_body(&pres, 1, "confirmed"),
                publisher.port,
            ),
            0,
        ));
        let pres = format!("{}", 2020 + p);
        publishes.push((
            format!("pub-p1-{pres}"),
            publish(
                &format!("pub-p1-{pres}"),
                &pres,
                Kind::Presence,
                &pidf_body(&pres, "open"),
                publisher.port,
            ),
            0,
        ));
    }
    let publisher_slice = std::slice::from_ref(&publisher);
    let unanswered = send_all(
        publisher_slice,
        addr,
        &inbox,
        &publishes,
        20,
        Duration::from_secs(10),
    )
    .await;
    assert!(unanswered.is_empty(), "PUBLISH unanswered: {unanswered:?}");
    settle(&inbox, Duration::from_millis(1500), Duration::from_secs(10)).await;
    let mut second = Vec::new();
    for p in 0..5 {
        let pres = format!("{}", 2000 + p);
        second.push((
            format!("pub-d2-{pres}"),
            publish(
                &format!("pub-d2-{pres}"),
                &pres,
                Kind::Dialog,
                &dialog_body(&pres, 2, "early"),
                publisher.port,
            ),
            0,
        ));
    }
    let unanswered = send_all(
        publisher_slice,
        addr,
        &inbox,
        &second,
        20,
        Duration::from_secs(10),
    )
    .await;
    assert!(unanswered.is_empty(), "PUBLISH unanswered: {unanswered:?}");
    {
        let inbox = inbox.lock().unwrap();
        let bad: Vec<_> = publishes
            .iter()
            .chain(&second)
            .filter(|(c, _, _)| inbox.responses[c].1 != 200)
            .map(|(c, _, _)| (c.clone(), inbox.responses[c].1))
            .collect();
        assert!(bad.is_empty(), "PUBLISH refused: {bad:?}");
    }
    // Every watcher of a changed presentity has had the change; then nothing is in flight.
    let changed = |s: &Sub| {
        let p: usize = s.presentity.parse().unwrap();
        match s.kind {
            Kind::Dialog if p < 2005 => 3,
            Kind::Dialog if p < 2010 => 2,
            Kind::Presence if (2020..2030).contains(&p) => 2,
            _ => 1,
        }
    };
    let caught_up = wait_until(Duration::from_secs(15), || {
        let inbox = inbox.lock().unwrap();
        subs.iter().all(|s| {
            inbox.notifies[&s.call_id]
                .iter()
                .map(|n| n.cseq)
                .max()
                .unwrap_or(0)
                >= changed(s)
        })
    })
    .await;
    assert!(caught_up, "watchers did not all get the published changes");
    assert!(
        settle(&inbox, Duration::from_millis(1500), Duration::from_secs(10)).await,
        "NOTIFYs kept coming"
    );

    // What every watcher got last, then kill -9.
    let before: HashMap<String, Seen> = subs
        .iter()
        .map(|s| (s.call_id.clone(), last_of(&inbox, &s.call_id).unwrap()))
        .collect();
    for s in &subs {
        let b = &before[&s.call_id];
        assert!(
            b.state.starts_with("active"),
            "{} before the kill: {b:?}",
            s.call_id
        );
        if s.kind == Kind::Dialog {
            assert_eq!(
                b.version,
                Some(b.cseq - 1),
                "{}: every NOTIFY of an active dialog subscription has a body",
                s.call_id
            );
        }
    }
    let above_one = before.values().filter(|b| b.cseq > 1).count();
    assert_eq!(
        above_one,
        subs.iter().filter(|s| changed(s) > 1).count(),
        "watchers past CSeq 1"
    );
    server.kill9();
    {
        let mut inbox = inbox.lock().unwrap();
        inbox.notifies.clear();
        inbox.last_arrival = None;
    }

    server.start();
    let restarted = Instant::now();
    let all_renotified = wait_until(Duration::from_secs(30), || {
        let inbox = inbox.lock().unwrap();
        subs.iter().all(|s| inbox.notifies.contains_key(&s.call_id))
    })
    .await;
    let log = server.log_text();
    let inbox_now = inbox.lock().unwrap();
    let missing: Vec<&str> = subs
        .iter()
        .filter(|s| !inbox_now.notifies.contains_key(&s.call_id))
        .map(|s| s.call_id.as_str())
        .collect();
    assert!(
        all_renotified,
        "{} of {SUBSCRIPTIONS} watchers got no NOTIFY within 30 s of the restart, e.g. {:?}\n{log}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let mut wrong = Vec::new();
    for s in &subs {
        let b = &before[&s.call_id];
        let after = &inbox_now.notifies[&s.call_id];
        let first = &after[0];
        // Above everything before (`before` is the last of a strictly increasing series),
        // then never backwards nor a repeat.
        let ok_cseq = first.cseq > b.cseq && strictly_increasing(after).is_some();
        let ok_version = match s.kind {
            Kind::Dialog => {
                first.version > b.version && first.version.is_some() && first.full == Some(true)
            }
            Kind::Presence => true,
        };
        let ok_state = first.state.starts_with("active");
        if !(ok_cseq && ok_version && ok_state) {
            wrong.push(format!(
                "{} {:?}: before {b:?}, after {after:?}",
                s.call_id, s.kind
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {SUBSCRIPTIONS} watchers did not continue above where they were:\n{}\n{log}",
        wrong.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    let jumps: Vec<u32> = subs
        .iter()
        .map(|s| inbox_now.notifies[&s.call_id][0].cseq - before[&s.call_id].cseq)
        .collect();
    eprintln!(
        "kill -9 with {SUBSCRIPTIONS} subscriptions ({above_one} past CSeq 1): all re-notified \
         with the full state, CSeq {}..={} above the last before, {:.1} s after the restart; \
         test took {:.1} s",
        jumps.iter().min().unwrap(),
        jumps.iter().max().unwrap(),
        restarted.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_expired_while_down_ends_with_timeout() {
    const SHORT: u32 = 3;
    let mut server = Busylamp::new(
        "expiry",
        &format!("[presence]\nmin_expires = {SHORT}\n{}", presentity_users()),
    );
    server.wait_ready().await;
    let addr = server.addr;
    let inbox: Shared = Arc::default();
    let phones = vec![Phone::new(inbox.clone()).await];
    let mut subs = make_subs(4, 3600);
    subs[0].expires = SHORT;
    subs[3].expires = SHORT; // presence
    let t0 = Instant::now();
    let requests: Vec<(String, Vec<u8>, usize)> = subs
        .iter()
        .map(|s| {
            (
                s.call_id.clone(),
                s.subscribe(phones[0].port, 1, None, s.expires),
                0,
            )
        })
        .collect();
    let unanswered = send_all(&phones, addr, &inbox, &requests, 10, Duration::from_secs(5)).await;
    assert!(
        unanswered.is_empty(),
        "{unanswered:?}\n{}",
        server.log_text()
    );
    let got_all = wait_until(Duration::from_secs(5), || {
        let inbox = inbox.lock().unwrap();
        subs.iter().all(|s| inbox.notifies.contains_key(&s.call_id))
    })
    .await;
    assert!(got_all, "initial NOTIFYs\n{}", server.log_text());
    server.kill9();
    assert!(
        t0.elapsed() < Duration::from_secs(u64::from(SHORT) - 1),
        "too slow to kill before the short subscriptions expired ({:?}); the test proves nothing",
        t0.elapsed()
    );
    let (before, tags): (HashMap<String, Seen>, HashMap<String, String>) = {
        let mut inbox = inbox.lock().unwrap();
        let before = subs
            .iter()
            .map(|s| {
                let v = &inbox.notifies[&s.call_id];
                (s.call_id.clone(), v[v.len() - 1].clone())
            })
            .collect();
        let tags = subs
            .iter()
            .map(|s| {
                let (_, status, tag) = &inbox.responses[&s.call_id];
                assert_eq!(*status, 200, "{}", s.call_id);
                (s.call_id.clone(), tag.clone().expect("To tag"))
            })
            .collect();
        inbox.notifies.clear();
        inbox.responses.clear();
        (before, tags)
    };
    // Down until the short subscriptions are over (Expires is counted in whole seconds).
    tokio::time::sleep(
        Duration::from_millis(u64::from(SHORT) * 1000 + 1500).saturating_sub(t0.elapsed()),
    )
    .await;

    server.start();
    let renotified = wait_until(Duration::from_secs(20), || {
        let inbox = inbox.lock().unwrap();
        subs.iter().all(|s| inbox.notifies.contains_key(&s.call_id))
    })
    .await;
    assert!(
        renotified,
        "NOTIFYs after the restart\n{}",
        server.log_text()
    );
    for s in &subs {
        let b = &before[&s.call_id];
        let first = inbox.lock().unwrap().notifies[&s.call_id][0].clone();
        assert!(first.cseq > b.cseq, "{}: {first:?} after {b:?}", s.call_id);
        if s.expires == SHORT {
            assert_eq!(
                first.state, "terminated;reason=timeout",
                "{} expired while the server was down",
                s.call_id
            );
        } else {
            assert!(
                first.state.starts_with("active"),
                "{}: {first:?}",
                s.call_id
            );
            if s.kind == Kind::Dialog {
                assert!(first.version > b.version, "{}: {first:?}", s.call_id);
                assert_eq!(first.full, Some(true), "{}: {first:?}", s.call_id);
            }
        }
    }
    // The ended subscription is gone; a live one still refreshes.
    let refresh: Vec<(String, Vec<u8>, usize)> = [&subs[0], &subs[1]]
        .into_iter()
        .map(|s| {
            (
                s.call_id.clone(),
                s.subscribe(phones[0].port, 2, Some(&tags[&s.call_id]), 3600),
                0,
            )
        })
        .collect();
    let unanswered = send_all(&phones, addr, &inbox, &refresh, 10, Duration::from_secs(5)).await;
    assert!(unanswered.is_empty(), "{unanswered:?}");
    let inbox = inbox.lock().unwrap();
    assert_eq!(
        inbox.responses[&subs[0].call_id].1, 481,
        "a refresh of the expired subscription"
    );
    assert_eq!(
        inbox.responses[&subs[1].call_id].1, 200,
        "a refresh of the live subscription"
    );
}
