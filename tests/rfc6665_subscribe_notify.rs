//! RFC 6665 SUBSCRIBE/NOTIFY over raw SIP bytes against the in-process server: subscription
//! dialogs, Subscription-State, refresh, unsubscribe, expiry, 481/489/423/406, NOTIFY as a
//! client transaction with retry, and the real BLF SUBSCRIBE captures.

mod common;
use busylamp::sip::HeaderName;
use common::ua::*;
use common::*;

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

#[allow(clippy::too_many_arguments)]
fn subscribe(
    port: u16,
    presentity: &str,
    event: &str,
    call_id: &str,
    cseq: u32,
    expires: u32,
    to_tag: Option<&str>,
    extra: &str,
) -> Vec<u8> {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    wire(
        &format!(
            "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
            Max-Forwards: 70
            From: \"Bob\" <sip:1002@example.test>;tag=w{call_id}
            To: <sip:{presentity}@example.test>{to_tag}
            Call-ID: {call_id}
            CSeq: {cseq} SUBSCRIBE
            Contact: <sip:1002@127.0.0.1:{port}>
            Event: {event}
            Expires: {expires}
            {extra}
            ",
            b = branch()
        )
        .replace("\n            \n", "\n"),
    )
}

#[tokio::test]
async fn rfc6665_4_2_1_subscribe_creates_a_dialog_and_gets_an_immediate_full_notify() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "s1",
            1,
            600,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(header(&r, HeaderName::Expires), "600");
    assert!(header(&r, HeaderName::Contact).starts_with("<sip:127.0.0.1:"));
    assert!(header(&r, HeaderName::AllowEvents).contains("presence"));
    let our_tag = tag_of(header(&r, HeaderName::To));
    assert!(!our_tag.is_empty());

    let n = w.notify().await;
    assert_eq!(
        n.uri.to_string(),
        format!("sip:1002@127.0.0.1:{}", w.port())
    );
    assert_eq!(tag_of(header(&n, HeaderName::From)), our_tag);
    assert_eq!(tag_of(header(&n, HeaderName::To)), "ws1");
    assert_eq!(header(&n, HeaderName::CallId), "s1");
    assert_eq!(cseq_of(&n), 1);
    assert_eq!(header(&n, HeaderName::Event), "presence");
    let state = header(&n, HeaderName::SubscriptionState);
    assert!(state.starts_with("active;expires="), "{state}");
    let left: u32 = state.rsplit('=').next().unwrap().parse().unwrap();
    assert!((598..=600).contains(&left), "{state}");
    assert_eq!(header(&n, HeaderName::ContentType), "application/pidf+xml");
    // No publication: the presentity is offline.
    assert!(body(&n).contains("<basic>closed</basic>"), "{}", body(&n));
}

/// A subscription's NOTIFY dialog headers are printed once and shared by its NOTIFYs; a
/// refresh that moves the watcher (a target refresh, RFC 3261 §12.2.1.1: new Contact, new
/// flow) must move the NOTIFYs' Request-URI and destination and keep every dialog header.
#[tokio::test]
async fn rfc3261_12_2_1_1_a_refresh_moves_the_notifies_and_keeps_the_dialog() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "moves",
            1,
            600,
            None,
            "Accept: application/xpidf+xml",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let tag = tag_of(header(&r, HeaderName::To));
    let n1 = w.notify().await;
    assert_eq!(
        n1.uri.to_string(),
        format!("sip:1002@127.0.0.1:{}", w.port())
    );

    // The phone comes back from another port with a new Contact.
    let mut moved = Ua::new(s.udp).await;
    let r = moved
        .request(&subscribe(
            moved.port(),
            "1001",
            "presence",
            "moves",
            2,
            600,
            Some(&tag),
            "Accept: application/xpidf+xml",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n2 = moved.notify().await;
    assert_eq!(
        n2.uri.to_string(),
        format!("sip:1002@127.0.0.1:{}", moved.port())
    );
    assert_eq!(cseq_of(&n2), 2);
    for h in [
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::Contact,
        HeaderName::Event,
        HeaderName::ContentType,
    ] {
        assert_eq!(header(&n2, h), header(&n1, h), "{h:?}");
    }
    assert_eq!(
        header(&n2, HeaderName::ContentType),
        "application/xpidf+xml"
    );
}

#[tokio::test]
async fn rfc6665_4_2_1_2_refresh_in_dialog_and_4_2_1_4_unsubscribe() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "s2",
            1,
            600,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    let tag = tag_of(header(&r, HeaderName::To));
    let n1 = w.notify().await;
    assert_eq!(version_of(&body(&n1)), 0);

    // Refresh: 200 with the new Expires, and a NOTIFY with the current state.
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "s2",
            2,
            1200,
            Some(&tag),
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(header(&r, HeaderName::Expires), "1200");
    let n2 = w.notify().await;
    assert_eq!(cseq_of(&n2), 2);
    assert_eq!(version_of(&body(&n2)), 1);
    assert!(header(&n2, HeaderName::SubscriptionState).starts_with("active;expires=1"));

    // A replayed (old) CSeq is out of order.
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "s2",
            2,
            1200,
            Some(&tag),
            "",
        ))
        .await;
    assert_eq!(r.status, 500);

    // Unsubscribe: 200, then a final NOTIFY.
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "s2",
            3,
            0,
            Some(&tag),
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, HeaderName::Expires), "0");
    let n3 = w.notify().await;
    assert_eq!(cseq_of(&n3), 3);
    assert!(header(&n3, HeaderName::SubscriptionState).starts_with("terminated"));

    // The dialog is gone.
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "s2",
            4,
            600,
            Some(&tag),
            "",
        ))
        .await;
    assert_eq!(r.status, 481);
}

#[tokio::test]
async fn rfc6665_4_2_1_unknown_dialog_is_481() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "nope",
            5,
            600,
            Some("madeup"),
            "",
        ))
        .await;
    assert_eq!(r.status, 481);
}

#[tokio::test]
async fn rfc6665_8_2_2_bad_event_is_489_with_allow_events() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "conference",
            "e1",
            1,
            600,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 489);
    assert!(r.reason.contains("conference"), "{}", r.reason);
    let allow = header(&r, HeaderName::AllowEvents);
    for p in ["presence", "presence.winfo", "dialog", "message-summary"] {
        assert!(allow.contains(p), "{allow}");
    }
    // No Event header at all.
    let m = String::from_utf8(subscribe(w.port(), "1001", "x", "e2", 1, 600, None, ""))
        .unwrap()
        .replace("Event: x\r\n", "");
    let r = w.request(m.as_bytes()).await;
    assert_eq!(r.status, 489);
    assert!(r.reason.contains("no Event"), "{}", r.reason);
}

#[tokio::test]
async fn rfc6665_4_2_1_1_too_brief_is_423_and_long_is_clamped() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "x1",
            1,
            10,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 423);
    assert_eq!(header(&r, HeaderName::MinExpires), "60");
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "x2",
            1,
            999_999,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, HeaderName::Expires), "3600");
    let n = w.notify().await;
    assert!(
        header(&n, HeaderName::SubscriptionState).contains("expires=3600")
            || header(&n, HeaderName::SubscriptionState).contains("expires=3599")
    );
}

#[tokio::test]
async fn rfc6665_4_4_3_fetch_with_expires_zero_gets_state_and_terminated() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "f1",
            1,
            0,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    let n = w.notify().await;
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("terminated"));
    assert!(body(&n).contains("closed"));
    assert_eq!(s.handle.core.presence.subscription_count(), 0);
}

#[tokio::test]
async fn rfc6665_8_2_1_event_id_is_echoed() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog;id=42",
            "id1",
            1,
            600,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    let n = w.notify().await;
    assert_eq!(header(&n, HeaderName::Event), "dialog;id=42");
}

#[tokio::test]
async fn rfc6665_4_2_1_accept_that_cannot_be_served_is_406() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "a1",
            1,
            600,
            None,
            "Accept: text/plain",
        ))
        .await;
    assert_eq!(r.status, 406);
    assert!(header(&r, HeaderName::Accept).contains("application/pidf+xml"));
}

#[tokio::test]
async fn rfc6665_4_1_2_1_subscribe_without_contact_is_400() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let m = String::from_utf8(subscribe(
        w.port(),
        "1001",
        "presence",
        "c1",
        1,
        600,
        None,
        "",
    ))
    .unwrap();
    let m: String = m
        .split("\r\n")
        .filter(|l| !l.starts_with("Contact:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let r = w.request(m.as_bytes()).await;
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("Contact"), "{}", r.reason);
}

#[tokio::test]
async fn rfc6665_4_2_2_a_481_to_notify_ends_the_subscription() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "g1",
            1,
            600,
            None,
            "",
        ))
        .await;
    let tag = tag_of(header(&r, HeaderName::To));
    let n = w.notify_unanswered().await;
    let mark = s.mark();
    w.answer(&n, 481).await;
    // Once the server handled the 481, a refresh finds nothing.
    processed_since(&s.handle.core, mark, 1).await;
    assert_eq!(s.handle.core.presence.subscription_count(), 0);
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "g1",
            2,
            600,
            Some(&tag),
            "",
        ))
        .await;
    assert_eq!(r.status, 481);
}

#[tokio::test(start_paused = true)]
async fn rfc6665_4_2_2_notify_timeout_is_retried_and_keeps_the_subscription() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "t1",
            1,
            3600,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    // Never answer the first NOTIFY: UDP retransmits it (same CSeq), then Timer F fires.
    let first = w.notify_unanswered().await;
    let mut retransmissions = 0;
    let retry = loop {
        let n = w.notify_unanswered().await;
        if cseq_of(&n) == cseq_of(&first) {
            retransmissions += 1;
            continue;
        }
        break n;
    };
    assert!(retransmissions >= 5, "{retransmissions}");
    // The retry is a new NOTIFY with the next CSeq and version: the subscription lives on.
    assert_eq!(cseq_of(&retry), cseq_of(&first) + 1);
    assert_eq!(version_of(&body(&retry)), version_of(&body(&first)) + 1);
    let subs = s.handle.core.presence.subscriptions();
    assert_eq!(subs[0].failures, 1, "the failure is visible in the state");
    let mark = s.mark();
    w.answer(&retry, 200).await;
    processed_since(&s.handle.core, mark, 1).await;
    assert_eq!(s.handle.core.presence.subscription_count(), 1);
    assert_eq!(s.handle.core.presence.subscriptions()[0].failures, 0);
}

#[tokio::test(start_paused = true)]
async fn rfc6665_4_2_2_expiry_sends_terminated_timeout() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "x9",
            1,
            60,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    w.notify().await;
    // Paused clock: the receive timeout lets time run to the expiry.
    let n = w.notify_unanswered_within(120_000).await;
    assert_eq!(
        header(&n, HeaderName::SubscriptionState),
        "terminated;reason=timeout"
    );
    assert_eq!(s.handle.core.presence.subscription_count(), 0);
}

#[tokio::test]
async fn rfc6665_4_2_2_one_notify_in_flight_and_the_newest_state_follows() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "o1",
            1,
            600,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    let first = w.notify_unanswered().await;
    // Two changes while the first NOTIFY is unanswered.
    let presence = s.handle.core.presence.clone();
    let pidf = |basic: &str| {
        format!(
            "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\"><tuple id=\"t\"><status><basic>{basic}</basic></status></tuple></presence>"
        )
    };
    let d = presence
        .publish(
            "sip:1001@example.test",
            busylamp::presence::event::Pkg::Presence,
            "test",
            pidf("open").as_bytes(),
            600,
        )
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
    assert!(
        w.no_notify(100).await,
        "a second NOTIFY while one is in flight"
    );
    w.answer(&first, 200).await;
    let next = w.notify().await;
    assert_eq!(cseq_of(&next), cseq_of(&first) + 1);
    assert!(
        body(&next).contains("<basic>open</basic>"),
        "{}",
        body(&next)
    );
}

#[tokio::test]
async fn rfc3261_18_notify_over_the_subscribers_tcp_connection() {
    use busylamp::sip::Message;
    let s = server(OPEN).await;
    let mut t = Tcp::connect(s.tcp).await;
    let port = t.stream.local_addr().unwrap().port();
    let m = String::from_utf8(subscribe(
        port, "1001", "presence", "tcp1", 1, 600, None, "",
    ))
    .unwrap()
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
    .replace(
        &format!("<sip:1002@127.0.0.1:{port}>"),
        &format!("<sip:1002@127.0.0.1:{port};transport=tcp>"),
    );
    t.send(m.as_bytes()).await;
    let mut got_ok = false;
    let mut notify = None;
    while !(got_ok && notify.is_some()) {
        match t.recv_message().await {
            Message::Response(r) => {
                assert_eq!(r.status, 200, "{}", r.reason);
                assert!(header(&r, HeaderName::Contact).contains("transport=tcp"));
                got_ok = true;
            }
            Message::Request(n) => notify = Some(n),
        }
    }
    let n = notify.unwrap();
    assert_eq!(n.method, "NOTIFY");
    assert!(header(&n, HeaderName::Via).starts_with("SIP/2.0/TCP"));
    let mut ok = n.response(200, "OK", None);
    ok.headers.0.retain(|h| h.kind != HeaderName::ContentLength);
    t.send(&ok.to_bytes()).await;
}

#[tokio::test]
async fn rfc3261_12_1_1_the_200_to_subscribe_copies_record_route() {
    // A SUBSCRIBE that came through a record-routing proxy: the subscriber builds its route
    // set from our 200, so the 200 must carry the Record-Route values, in order.
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let p = w.port();
    let r = w
        .request(&subscribe(
            p,
            "1001",
            "presence",
            "rr1",
            1,
            600,
            None,
            &format!(
                "Record-Route: <sip:127.0.0.1:{p};lr;ftag=a>\nRecord-Route: <sip:192.0.2.1;lr>"
            ),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let rr = r.headers.list(HeaderName::RecordRoute);
    assert_eq!(
        rr,
        vec![
            format!("<sip:127.0.0.1:{p};lr;ftag=a>").as_str(),
            "<sip:192.0.2.1;lr>"
        ]
    );
    // And our NOTIFY takes that route.
    let n = w.notify().await;
    assert_eq!(
        n.headers.list(HeaderName::Route),
        vec![
            format!("<sip:127.0.0.1:{p};lr;ftag=a>").as_str(),
            "<sip:192.0.2.1;lr>"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn rfc5057_an_answer_about_one_notify_keeps_the_subscription_but_489_ends_it() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "presence",
            "k1",
            1,
            3600,
            None,
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    // A phone that challenges our NOTIFY (407) or is busy (491): not a reason to drop it.
    let n = w.notify_unanswered().await;
    w.answer(&n, 407).await;
    let retry = w.notify_unanswered_within(120_000).await;
    assert_eq!(cseq_of(&retry), cseq_of(&n) + 1);
    // 489: the watcher does not know the package after all. The subscription ends.
    let mark = s.mark();
    w.answer(&retry, 489).await;
    processed_since(&s.handle.core, mark, 1).await;
    assert_eq!(s.handle.core.presence.subscription_count(), 0);
}

#[tokio::test]
async fn subscriptions_and_publications_are_announced_on_the_event_bus() {
    use busylamp::events::{Event, SubscriptionChange};
    let s = server(OPEN).await;
    let mut bus = s.handle.events.subscribe();
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "ev1",
            1,
            600,
            None,
            "",
        ))
        .await;
    let tag = tag_of(header(&r, HeaderName::To));
    w.notify().await;
    let created = Event::Subscription {
        change: SubscriptionChange::Created,
        presentity: "sip:1001@example.test".into(),
        event: "dialog",
        watcher: "sip:1002@example.test".into(),
        state: "active",
    };
    assert_eq!(bus.recv().await.unwrap(), created);
    let d = s
        .handle
        .core
        .presence
        .publish(
            "sip:1001@example.test",
            busylamp::presence::event::Pkg::Dialog,
            "call-1",
            b"<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"0\" state=\"full\" entity=\"sip:1001@example.test\"><dialog id=\"a\"><state>early</state></dialog></dialog-info>",
            60,
        )
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
    assert_eq!(
        bus.recv().await.unwrap(),
        Event::Publication {
            presentity: "sip:1001@example.test".into(),
            event: "dialog",
            source: Some("call-1".into()),
            waiting: None,
        }
    );
    w.notify().await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1001",
            "dialog",
            "ev1",
            2,
            0,
            Some(&tag),
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        bus.recv().await.unwrap(),
        Event::Subscription {
            change: SubscriptionChange::Terminated("timeout"),
            presentity: "sip:1001@example.test".into(),
            event: "dialog",
            watcher: "sip:1002@example.test".into(),
            state: "active",
        }
    );
}
