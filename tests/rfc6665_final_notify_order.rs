//! RFC 6665 §4.2.2 and the README's promise of one NOTIFY in flight per subscription, in CSeq
//! order, for the final NOTIFY too: when a subscription ends (unsubscribe, expiry, rejection)
//! while its watcher has not answered the previous NOTIFY, the terminated NOTIFY waits for that
//! answer (or for the NOTIFY's timeout) and leaves with the next CSeq. A soak saw the
//! terminated NOTIFY leave while the active one was unanswered, sometimes with its higher CSeq
//! first. Paused clock; the watcher holds its answer.

mod common;
use busylamp::config::Policy;
use busylamp::presence::event::Pkg;
use busylamp::sip::{HeaderName, Request};
use common::ua::*;
use common::*;
use std::time::Duration;

const OPEN: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
min_expires = 60
max_expires = 3600
coalesce_ms = 0
other_domains = "confirm"
# The presentities watched: a SUBSCRIBE for a user nobody knows is 404.
[[users]]
name = "1001"
password = "pw1001"
[[users]]
name = "1002"
password = "pw1002"
[[users]]
name = "1003"
password = "pw1003"
"#;

fn subscribe(
    port: u16,
    watcher: &str,
    call_id: &str,
    cseq: u32,
    expires: u32,
    to_tag: Option<&str>,
) -> Vec<u8> {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
            Max-Forwards: 70
            From: <sip:{watcher}>;tag=w{call_id}
            To: <sip:1001@example.test>{to_tag}
            Call-ID: {call_id}
            CSeq: {cseq} SUBSCRIBE
            Contact: <sip:w@127.0.0.1:{port}>
            Event: presence
            Expires: {expires}
            ",
        b = branch()
    ))
}

fn pidf(basic: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\"><tuple id=\"t\"><status><basic>{basic}</basic></status></tuple></presence>"
    )
    .into_bytes()
}

async fn publish(s: &TestServer, basic: &str) {
    let d = s
        .handle
        .core
        .presence
        .publish(
            "sip:1001@example.test",
            Pkg::Presence,
            "test",
            pidf(basic),
            600,
        )
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
}

fn via_branch(r: &Request) -> String {
    header(r, HeaderName::Via)
        .split(";branch=")
        .nth(1)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string()
}

/// For `ms` of (paused) time, every request that arrives must be a retransmission of `held`:
/// no second NOTIFY of the subscription leaves while `held` is unanswered. Returns how many
/// retransmissions came (proof that the watcher is still being reached).
async fn only_retransmissions_of(w: &mut Ua, held: &Request, ms: u64) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    let mut seen = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return seen;
        }
        let Some(r) = w.next_request_within(left.as_millis() as u64 + 1).await else {
            return seen;
        };
        assert_eq!(
            (cseq_of(&r), via_branch(&r)),
            (cseq_of(held), via_branch(held)),
            "a second NOTIFY ({}) left while CSeq {} was unanswered",
            header(&r, HeaderName::SubscriptionState),
            cseq_of(held)
        );
        seen += 1;
    }
}

/// 1002 ends its subscription (Expires 0 in the dialog).
async fn unsubscribe(w: &mut Ua, to_tag: &str) -> busylamp::sip::Response {
    let port = w.port();
    w.request(&subscribe(
        port,
        "1002@example.test",
        "race",
        2,
        0,
        Some(to_tag),
    ))
    .await
}

/// Subscribes `watcher` to 1001's presence; returns the dialog's To tag and the first NOTIFY,
/// unanswered.
async fn subscribed(s: &TestServer, w: &mut Ua, watcher: &str, expires: u32) -> (String, Request) {
    let r = w
        .request(&subscribe(w.port(), watcher, "race", 1, expires, None))
        .await;
    assert_eq!(r.status, 200);
    let to_tag = tag_of(header(&r, HeaderName::To));
    assert_eq!(s.handle.core.presence.subscription_count(), 1);
    let first = w.notify_unanswered().await;
    (to_tag, first)
}

#[tokio::test(start_paused = true)]
async fn rfc6665_4_2_1_4_unsubscribe_while_a_notify_is_unanswered_waits_for_its_answer() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let (to_tag, first) = subscribed(&s, &mut w, "1002@example.test", 600).await;
    w.answer(&first, 200).await;
    // A change: its NOTIFY is held unanswered while the watcher unsubscribes.
    publish(&s, "open").await;
    let held = w.notify_unanswered().await;
    assert_eq!(cseq_of(&held), cseq_of(&first) + 1);
    assert!(header(&held, HeaderName::SubscriptionState).starts_with("active"));
    let r = unsubscribe(&mut w, &to_tag).await;
    assert_eq!(r.status, 200, "the unsubscribe was processed");
    assert_eq!(s.handle.core.presence.subscription_count(), 0);
    let retransmissions = only_retransmissions_of(&mut w, &held, 3_000).await;
    assert!(retransmissions >= 2, "{retransmissions}");
    // Answered: now the final NOTIFY, with the next CSeq and the state.
    w.answer(&held, 200).await;
    let last = w.notify().await;
    assert_eq!(cseq_of(&last), cseq_of(&held) + 1);
    assert_eq!(
        header(&last, HeaderName::SubscriptionState),
        "terminated;reason=timeout"
    );
    assert!(
        body(&last).contains("<basic>open</basic>"),
        "{}",
        body(&last)
    );
    assert!(w.no_notify(10_000).await, "only one final NOTIFY");
}

#[tokio::test(start_paused = true)]
async fn rfc6665_4_2_2_expiry_while_a_notify_is_unanswered_waits_for_its_timeout() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let (_, first) = subscribed(&s, &mut w, "1002@example.test", 60).await;
    w.answer(&first, 200).await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    publish(&s, "open").await;
    let held = w.notify_unanswered().await;
    assert_eq!(cseq_of(&held), cseq_of(&first) + 1);
    // The subscription expires at 60 s; the held NOTIFY's Timer F fires at about 82 s.
    let retransmissions = only_retransmissions_of(&mut w, &held, 15_000).await;
    assert!(retransmissions >= 3, "{retransmissions}");
    assert_eq!(
        s.handle.core.presence.subscription_count(),
        0,
        "the expiry was processed"
    );
    // Never answered: after its timeout the final NOTIFY leaves, with the next CSeq.
    let last = loop {
        let n = w.notify_unanswered_within(40_000).await;
        if cseq_of(&n) != cseq_of(&held) {
            break n;
        }
    };
    assert_eq!(cseq_of(&last), cseq_of(&held) + 1);
    assert_eq!(
        header(&last, HeaderName::SubscriptionState),
        "terminated;reason=timeout"
    );
    w.answer(&last, 200).await;
}

#[tokio::test(start_paused = true)]
async fn rfc3857_rejection_while_the_pending_notify_is_unanswered_waits_for_its_answer() {
    let s = server(OPEN).await;
    let mut eve = Ua::new(s.udp).await;
    let (_, held) = subscribed(&s, &mut eve, "eve@other.test", 600).await;
    assert!(header(&held, HeaderName::SubscriptionState).starts_with("pending"));
    assert_eq!(
        s.handle.core.presence.authorize(
            "sip:1001@example.test",
            "sip:eve@other.test",
            Policy::Block
        ),
        1,
        "the rejection was processed"
    );
    let retransmissions = only_retransmissions_of(&mut eve, &held, 3_000).await;
    assert!(retransmissions >= 2, "{retransmissions}");
    eve.answer(&held, 200).await;
    let last = eve.notify().await;
    assert_eq!(cseq_of(&last), cseq_of(&held) + 1);
    assert_eq!(
        header(&last, HeaderName::SubscriptionState),
        "terminated;reason=rejected"
    );
    assert!(last.body.is_empty(), "a rejection reveals nothing");
}

#[tokio::test(start_paused = true)]
async fn rfc3857_approval_then_rejection_while_a_notify_is_unanswered_sends_one_final_notify() {
    let s = server(OPEN).await;
    let mut eve = Ua::new(s.udp).await;
    let (_, held) = subscribed(&s, &mut eve, "eve@other.test", 600).await;
    let presence = &s.handle.core.presence;
    assert_eq!(
        presence.authorize("sip:1001@example.test", "sip:eve@other.test", Policy::Allow),
        1
    );
    assert_eq!(
        presence.authorize("sip:1001@example.test", "sip:eve@other.test", Policy::Block),
        1
    );
    only_retransmissions_of(&mut eve, &held, 3_000).await;
    eve.answer(&held, 200).await;
    let last = eve.notify().await;
    assert_eq!(cseq_of(&last), cseq_of(&held) + 1);
    assert_eq!(
        header(&last, HeaderName::SubscriptionState),
        "terminated;reason=rejected"
    );
    assert!(
        eve.no_notify(10_000).await,
        "nothing after the final NOTIFY"
    );
}

#[tokio::test(start_paused = true)]
async fn rfc6665_4_2_2_a_481_to_the_notify_in_flight_drops_the_waiting_final_notify() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let (to_tag, held) = subscribed(&s, &mut w, "1002@example.test", 600).await;
    let r = unsubscribe(&mut w, &to_tag).await;
    assert_eq!(r.status, 200);
    only_retransmissions_of(&mut w, &held, 1_000).await;
    // The watcher says the subscription is gone: no final NOTIFY is owed any more.
    w.answer(&held, 481).await;
    // No retransmission either: the 481 reached the transaction.
    assert_eq!(only_retransmissions_of(&mut w, &held, 10_000).await, 0);
}
