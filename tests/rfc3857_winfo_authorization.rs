//! Watcher authorization (RFC 3856 §5.1.2, config rules, pending/confirm) and watcherinfo
//! (RFC 3857/3858), plus digest auth for SUBSCRIBE and PUBLISH.

mod common;
use busylamp::config::Policy;
use busylamp::sip::HeaderName;
use common::ua::*;
use common::*;

const CONFIRM: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
coalesce_ms = 0
other_domains = "confirm"
[[presence.rules]]
presentity = "sip:1001@example.test"
watcher = "sip:mallory@evil.test"
action = "block"
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

fn subscribe(port: u16, watcher: &str, presentity: &str, event: &str, call_id: &str) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:{presentity} SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
            Max-Forwards: 70
            From: <sip:{watcher}>;tag=t{call_id}
            To: <sip:{presentity}>
            Call-ID: {call_id}
            CSeq: 1 SUBSCRIBE
            Contact: <sip:w@127.0.0.1:{port}>
            Event: {event}
            Expires: 600
            ",
        b = branch()
    ))
}

#[tokio::test]
async fn rfc3857_confirm_makes_pending_tells_winfo_and_a_decision_follows() {
    let s = server(CONFIRM).await;
    // The presentity watches its own watchers.
    let mut owner = Ua::new(s.udp).await;
    let r = owner
        .request(&subscribe(
            owner.port(),
            "1001@example.test",
            "1001@example.test",
            "presence.winfo",
            "wi1",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = owner.notify().await;
    assert_eq!(
        header(&n, HeaderName::ContentType),
        "application/watcherinfo+xml"
    );
    let b = body(&n);
    assert!(b.contains("state=\"full\""), "{b}");
    assert_eq!(version_of(&b), 0);

    // A watcher from another domain: accepted as pending, told nothing about the state.
    let mut eve = Ua::new(s.udp).await;
    let r = eve
        .request(&subscribe(
            eve.port(),
            "eve@other.test",
            "1001@example.test",
            "presence",
            "ev1",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = eve.notify().await;
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("pending;expires="));
    assert!(n.body.is_empty(), "a pending NOTIFY reveals nothing");

    // The owner hears of the pending watcher (partial winfo, next version).
    let n = owner.notify().await;
    let b = body(&n);
    assert!(b.contains("state=\"partial\""), "{b}");
    assert!(
        b.contains("sip:eve@other.test") && b.contains("pending"),
        "{b}"
    );
    assert_eq!(version_of(&b), 1);

    // Approved: the watcher gets the state, the owner the new status.
    assert_eq!(
        s.handle.core.presence.authorize(
            "sip:1001@example.test",
            "sip:eve@other.test",
            Policy::Allow
        ),
        1
    );
    let n = eve.notify().await;
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("active"));
    assert!(body(&n).contains("closed"));
    let b = body(&owner.notify().await);
    assert!(b.contains("active"), "{b}");

    // Another pending watcher is rejected.
    let mut trent = Ua::new(s.udp).await;
    let r = trent
        .request(&subscribe(
            trent.port(),
            "trent@other.test",
            "1001@example.test",
            "presence",
            "tr1",
        ))
        .await;
    assert_eq!(r.status, 200);
    trent.notify().await;
    owner.notify().await;
    s.handle.core.presence.authorize(
        "sip:1001@example.test",
        "sip:trent@other.test",
        Policy::Block,
    );
    let n = trent.notify().await;
    assert_eq!(
        header(&n, HeaderName::SubscriptionState),
        "terminated;reason=rejected"
    );
    let b = body(&owner.notify().await);
    assert!(b.contains("rejected") && b.contains("terminated"), "{b}");
}

#[tokio::test]
async fn rfc3856_5_1_2_rules_block_and_same_domain_is_active() {
    let s = server(CONFIRM).await;
    let mut m = Ua::new(s.udp).await;
    let r = m
        .request(&subscribe(
            m.port(),
            "mallory@evil.test",
            "1001@example.test",
            "presence",
            "m1",
        ))
        .await;
    assert_eq!(r.status, 403);
    assert!(r.reason.contains("mallory"), "{}", r.reason);
    let mut b = Ua::new(s.udp).await;
    let r = b
        .request(&subscribe(
            b.port(),
            "1002@example.test",
            "1001@example.test",
            "presence",
            "b1",
        ))
        .await;
    assert_eq!(r.status, 200);
    let n = b.notify().await;
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("active"));
    // Somebody else's watcher list and mailbox are private.
    let r = b
        .request(&subscribe(
            b.port(),
            "1002@example.test",
            "1001@example.test",
            "presence.winfo",
            "b2",
        ))
        .await;
    assert_eq!(r.status, 403);
    let r = b
        .request(&subscribe(
            b.port(),
            "1002@example.test",
            "1001@example.test",
            "message-summary",
            "b3",
        ))
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn rfc3261_22_digest_for_subscribe_and_publish() {
    let s = server(BASE_CONFIG).await;
    let mut w = Ua::new(s.udp).await;
    let first = subscribe(
        w.port(),
        "1002@example.test",
        "1001@example.test",
        "presence",
        "d1",
    );
    let r = w.request(&first).await;
    assert_eq!(r.status, 401);
    let challenge = header(&r, HeaderName::WwwAuthenticate).to_string();
    let auth = authorization(
        &challenge,
        "1002",
        "other",
        "SUBSCRIBE",
        "sip:1001@example.test",
        1,
    );
    let again = String::from_utf8(first.clone())
        .unwrap()
        .replace(
            "CSeq: 1 SUBSCRIBE",
            &format!("CSeq: 2 SUBSCRIBE\r\nAuthorization: {auth}"),
        )
        .replace("z9hG4bK", "z9hG4bKx");
    let r = w.request(again.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    w.notify().await;

    // 1002's credentials with 1001 in From: someone else's identity.
    let mut x = Ua::new(s.udp).await;
    let m = subscribe(
        x.port(),
        "1001@example.test",
        "1003@example.test",
        "presence",
        "d2",
    );
    let r = x.request(&m).await;
    let challenge = header(&r, HeaderName::WwwAuthenticate).to_string();
    let auth = authorization(
        &challenge,
        "1002",
        "other",
        "SUBSCRIBE",
        "sip:1003@example.test",
        1,
    );
    let again = String::from_utf8(m)
        .unwrap()
        .replace(
            "CSeq: 1 SUBSCRIBE",
            &format!("CSeq: 2 SUBSCRIBE\r\nAuthorization: {auth}"),
        )
        .replace("z9hG4bK", "z9hG4bKy");
    let r = x.request(again.as_bytes()).await;
    assert_eq!(r.status, 403, "{}", r.reason);

    // PUBLISH is challenged too.
    let p = wire(&format!(
        "PUBLISH sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{};branch={}
        From: <sip:1001@example.test>;tag=p
        To: <sip:1001@example.test>
        Call-ID: pub-d
        CSeq: 1 PUBLISH
        Max-Forwards: 70
        Event: presence
        Content-Type: application/pidf+xml

        <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\"><tuple id=\"a\"><status><basic>open</basic></status></tuple></presence>",
        x.port(),
        branch()
    ));
    let r = x.request(&p).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn rfc6665_4_2_1_2_only_the_watcher_may_refresh_its_subscription() {
    let s = server(CONFIRM).await;
    let mut b = Ua::new(s.udp).await;
    let r = b
        .request(&subscribe(
            b.port(),
            "1002@example.test",
            "1001@example.test",
            "presence",
            "own1",
        ))
        .await;
    assert_eq!(r.status, 200);
    let tag = tag_of(header(&r, HeaderName::To));
    b.notify().await;
    // Someone else reuses the dialog identifiers to end it.
    let m = String::from_utf8(subscribe(
        b.port(),
        "1003@example.test",
        "1001@example.test",
        "presence",
        "own1",
    ))
    .unwrap()
    .replace(
        "To: <sip:1001@example.test>",
        &format!("To: <sip:1001@example.test>;tag={tag}"),
    )
    .replace("CSeq: 1 SUBSCRIBE", "CSeq: 9 SUBSCRIBE")
    .replace("Expires: 600", "Expires: 0");
    let r = b.request(m.as_bytes()).await;
    assert_eq!(r.status, 403, "{}", r.reason);
    assert_eq!(s.handle.core.presence.subscription_count(), 1);
}

#[tokio::test]
async fn an_approval_is_on_disk_even_while_the_pending_notify_is_unanswered() {
    use busylamp::storage::{PresenceStore, SubState};
    let s = server(CONFIRM).await;
    let mut eve = Ua::new(s.udp).await;
    let r = eve
        .request(&subscribe(
            eve.port(),
            "eve@other.test",
            "1001@example.test",
            "presence",
            "ev-disk",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // The pending NOTIFY is left unanswered: it is still in flight at the approval.
    let n = eve.notify_unanswered().await;
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("pending"));
    assert_eq!(
        s.handle.core.presence.authorize(
            "sip:1001@example.test",
            "sip:eve@other.test",
            Policy::Allow
        ),
        1
    );
    // A restart now must not bring the watcher back as pending.
    let stored = s.store.load_subscriptions().unwrap();
    let rec = stored
        .iter()
        .find(|r| r.call_id == "ev-disk")
        .expect("the subscription is stored");
    assert_eq!(rec.state, SubState::Active);
}
