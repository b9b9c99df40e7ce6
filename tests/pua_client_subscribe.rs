//! The presence client's SUBSCRIBE (RFC 6665) against a scripted fake notifier on a raw
//! UDP socket: the subscription dialog, NOTIFYs answered 200 and handed to the callback,
//! the refresh in the dialog (paused clock) with the route set, a NOTIFY's Contact moving
//! the next refresh, `terminated;reason=deactivated` and a 481 on refresh → a new
//! subscription, a timeout → a new one after backoff, `rejected` → given up, 401 → the
//! same SUBSCRIBE with credentials, unsubscribe, and a NOTIFY that is not ours → 481.

mod common;
use busylamp::pua::client::{SubState, Subscription, SubscriptionEvent};
use busylamp::sip::{HasHeaders, HeaderName, Request};
use common::peer::*;
use common::ua::tag_of;
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const CONFIG: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[pua]
username = "bl"
password = "pw"
[pua.usrloc]
enabled = false
"#;

const WATCHER: &str = "sip:bl@example.test";

struct Setup {
    s: TestServer,
    f: FakePeer,
    sub: Subscription,
    events: mpsc::UnboundedReceiver<SubscriptionEvent>,
}

async fn setup(expires: u32) -> Setup {
    let f = FakePeer::new().await;
    let s = server(CONFIG).await;
    let (tx, events) = mpsc::unbounded_channel();
    let sub = s
        .handle
        .core
        .pua
        .subscribe(
            &format!("sip:1001@127.0.0.1:{}", f.port()),
            "presence",
            WATCHER,
            expires,
            Arc::new(move |e: &SubscriptionEvent| {
                let _ = tx.send(e.clone());
            }),
        )
        .expect("subscribed");
    Setup { s, f, sub, events }
}

async fn next_subscribe(f: &mut FakePeer, within_ms: u64) -> (Request, SocketAddr) {
    let (r, from) = f
        .request_within(within_ms)
        .await
        .unwrap_or_else(|| panic!("a SUBSCRIBE within {within_ms} ms"));
    assert_eq!(r.method, "SUBSCRIBE");
    (r, from)
}

/// 200 with our To tag `n1`, a Contact and a Record-Route.
async fn accept(f: &FakePeer, r: &Request, from: SocketAddr, expires: u32) {
    f.answer(
        r,
        from,
        200,
        Some("n1"),
        &[
            ("Expires", expires.to_string()),
            ("Contact", format!("<sip:notifier@127.0.0.1:{}>", f.port())),
            (
                "Record-Route",
                format!("<sip:rr@127.0.0.1:{};lr>", f.port()),
            ),
        ],
    )
    .await;
}

/// A NOTIFY in the dialog the SUBSCRIBE `sub` made.
fn notify(port: u16, sub: &Request, cseq: u32, state: &str, contact: &str, body: &str) -> Vec<u8> {
    let our_tag = tag_of(&hdr(sub, HeaderName::From));
    let target = busylamp::sip::NameAddr::parse(&hdr(sub, HeaderName::Contact))
        .unwrap()
        .uri;
    let ct = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/pidf+xml\n".into()
    };
    wire(&format!(
        "NOTIFY {target} SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <{to}>;tag=n1
        To: <{WATCHER}>;tag={our_tag}
        Call-ID: {cid}
        CSeq: {cseq} NOTIFY
        Contact: <{contact}>
        Event: presence
        Subscription-State: {state}
        {ct}
        {body}",
        p = port,
        b = branch(),
        to = busylamp::sip::NameAddr::parse(&hdr(sub, HeaderName::To))
            .unwrap()
            .uri,
        cid = hdr(sub, HeaderName::CallId),
    ))
}

async fn send_notify(f: &mut FakePeer, server: SocketAddr, bytes: &[u8]) -> u16 {
    f.send(bytes, server).await;
    f.response().await.status
}

async fn event(events: &mut mpsc::UnboundedReceiver<SubscriptionEvent>) -> SubscriptionEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event within 5 s")
        .expect("channel open")
}

#[tokio::test(start_paused = true)]
async fn rfc6665_subscribe_notify_refresh_contact_change_and_unsubscribe() {
    let Setup {
        s,
        mut f,
        sub,
        mut events,
    } = setup(600).await;
    let fport = f.port();
    let (r, from) = next_subscribe(&mut f, 5000).await;
    assert_eq!(r.uri.to_string(), format!("sip:1001@127.0.0.1:{fport}"));
    assert!(hdr(&r, HeaderName::From).starts_with(&format!("<{WATCHER}>;tag=")));
    assert_eq!(tag_of(&hdr(&r, HeaderName::To)), "", "no To tag yet");
    assert_eq!(hdr(&r, HeaderName::Event), "presence");
    assert_eq!(hdr(&r, HeaderName::Expires), "600");
    assert_eq!(hdr(&r, HeaderName::Accept), "application/pidf+xml");
    assert_eq!(
        hdr(&r, HeaderName::Contact),
        format!("<sip:bl@{}>", s.udp),
        "our Contact"
    );
    assert_eq!(r.cseq().unwrap().seq, 1);
    accept(&f, &r, from, 600).await;

    let pidf = "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@x\"/>";
    let n = notify(
        f.port(),
        &r,
        1,
        "active;expires=600",
        &format!("sip:notifier@127.0.0.1:{fport}"),
        pidf,
    );
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 200);
    match event(&mut events).await {
        SubscriptionEvent::Notify {
            state,
            content_type,
            body,
        } => {
            assert_eq!(state, SubState::Active { expires: Some(600) });
            assert_eq!(content_type.as_deref(), Some("application/pidf+xml"));
            assert_eq!(String::from_utf8_lossy(&body).trim(), pidf);
        }
        other => panic!("{other:?}"),
    }
    assert!(sub.is_established());

    // The refresh: in the dialog, before expiry, through the route set.
    let t0 = tokio::time::Instant::now();
    let (r2, from) = next_subscribe(&mut f, 700_000).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(565) && waited <= Duration::from_secs(571),
        "{waited:?}"
    );
    assert_eq!(
        r2.uri.to_string(),
        format!("sip:notifier@127.0.0.1:{fport}"),
        "the remote target"
    );
    assert_eq!(
        hdr(&r2, HeaderName::Route),
        format!("<sip:rr@127.0.0.1:{fport};lr>")
    );
    assert_eq!(hdr(&r2, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    assert_eq!(
        tag_of(&hdr(&r2, HeaderName::From)),
        tag_of(&hdr(&r, HeaderName::From))
    );
    assert_eq!(tag_of(&hdr(&r2, HeaderName::To)), "n1");
    assert_eq!(r2.cseq().unwrap().seq, 2);
    accept(&f, &r2, from, 600).await;

    // A NOTIFY with a new Contact moves the next refresh (pua_update_contact).
    let n = notify(
        f.port(),
        &r,
        2,
        "active;expires=590",
        &format!("sip:moved@127.0.0.1:{fport}"),
        pidf,
    );
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 200);
    let (r3, from) = next_subscribe(&mut f, 700_000).await;
    assert_eq!(r3.uri.to_string(), format!("sip:moved@127.0.0.1:{fport}"));
    assert_eq!(r3.cseq().unwrap().seq, 3);
    accept(&f, &r3, from, 600).await;
    assert!(matches!(
        event(&mut events).await,
        SubscriptionEvent::Notify { .. }
    ));

    // An older NOTIFY (CSeq below the last) is refused.
    let n = notify(
        f.port(),
        &r,
        1,
        "active;expires=500",
        "sip:x@127.0.0.1:9",
        pidf,
    );
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 500);

    // Unsubscribe: Expires 0 in the dialog; the final NOTIFY is still answered 200.
    sub.unsubscribe();
    let (r4, from) = next_subscribe(&mut f, 5000).await;
    assert_eq!(hdr(&r4, HeaderName::Expires), "0");
    assert_eq!(hdr(&r4, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    assert_eq!(r4.cseq().unwrap().seq, 4);
    accept(&f, &r4, from, 0).await;
    let n = notify(
        f.port(),
        &r,
        3,
        "terminated;reason=timeout",
        &format!("sip:moved@127.0.0.1:{fport}"),
        "",
    );
    let mark = s.mark();
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 200);
    loop {
        match event(&mut events).await {
            SubscriptionEvent::Ended { reason, retry_in } => {
                assert_eq!(reason, "unsubscribed");
                assert_eq!(retry_in, None);
                break;
            }
            SubscriptionEvent::Notify { .. } => {}
        }
    }
    s.assert_processed_then_silent(
        mark,
        1,
        async { f.request_within(4_000_000).await.is_none() },
        "nothing after unsubscribing",
    )
    .await;
    assert_eq!(s.handle.core.pua.client().subscription_dialogs(), 0);
    // The dialog is gone: its NOTIFYs now get 481.
    let n = notify(f.port(), &r, 4, "active", "sip:x@127.0.0.1:9", "");
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 481);
}

#[tokio::test(start_paused = true)]
async fn rfc6665_4_1_3_deactivated_makes_a_new_subscription_at_once() {
    let Setup {
        s,
        mut f,
        sub: _sub,
        mut events,
    } = setup(600).await;
    let (r, from) = next_subscribe(&mut f, 5000).await;
    accept(&f, &r, from, 600).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let n = notify(
        f.port(),
        &r,
        1,
        "terminated;reason=deactivated",
        "sip:notifier@127.0.0.1:9",
        "",
    );
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 200);
    let t = tokio::time::Instant::now();
    let (r2, _) = next_subscribe(&mut f, 5000).await;
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_ne!(hdr(&r2, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    assert_eq!(tag_of(&hdr(&r2, HeaderName::To)), "", "a new dialog");
    assert_eq!(r2.cseq().unwrap().seq, 1);
    assert_eq!(r2.uri, r.uri, "to the original target");
    // The subscriber heard the NOTIFY and the end, with the retry.
    assert!(matches!(
        event(&mut events).await,
        SubscriptionEvent::Notify {
            state: SubState::Terminated { .. },
            ..
        }
    ));
    match event(&mut events).await {
        SubscriptionEvent::Ended { reason, retry_in } => {
            assert!(reason.contains("deactivated"), "{reason}");
            assert_eq!(retry_in, Some(Duration::ZERO));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rfc6665_a_481_on_refresh_makes_a_new_subscription() {
    let Setup { s: _s, mut f, .. } = setup(120).await;
    let (r, from) = next_subscribe(&mut f, 5000).await;
    accept(&f, &r, from, 120).await;
    let (r2, from) = next_subscribe(&mut f, 200_000).await;
    assert_eq!(tag_of(&hdr(&r2, HeaderName::To)), "n1", "a refresh");
    f.answer(&r2, from, 481, Some("n1"), &[]).await;
    let t = tokio::time::Instant::now();
    let (r3, from) = next_subscribe(&mut f, 5000).await;
    assert!(t.elapsed() < Duration::from_millis(100));
    assert_ne!(hdr(&r3, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    assert_eq!(tag_of(&hdr(&r3, HeaderName::To)), "");
    accept(&f, &r3, from, 120).await;
    // And that one is refreshed in its own dialog.
    let (r4, _) = next_subscribe(&mut f, 200_000).await;
    assert_eq!(hdr(&r4, HeaderName::CallId), hdr(&r3, HeaderName::CallId));
    assert_eq!(r4.cseq().unwrap().seq, 2);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_makes_a_new_subscription_after_backoff_and_rejected_gives_up() {
    let Setup {
        s,
        mut f,
        sub: _sub,
        mut events,
    } = setup(600).await;
    let (r, _) = next_subscribe(&mut f, 5000).await;
    // Never answered: Timer F (32 s), then 2 s.
    let (r2, from) = next_subscribe(&mut f, 60_000).await;
    assert_ne!(hdr(&r2, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    match event(&mut events).await {
        SubscriptionEvent::Ended { reason, retry_in } => {
            assert_eq!(reason, "timeout");
            assert_eq!(retry_in, Some(Duration::from_secs(2)));
        }
        other => panic!("{other:?}"),
    }
    accept(&f, &r2, from, 600).await;
    let n = notify(
        f.port(),
        &r2,
        1,
        "terminated;reason=rejected",
        "sip:notifier@127.0.0.1:9",
        "",
    );
    let mark = s.mark();
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 200);
    let _notify = event(&mut events).await;
    match event(&mut events).await {
        SubscriptionEvent::Ended { retry_in, .. } => assert_eq!(retry_in, None),
        other => panic!("{other:?}"),
    }
    s.assert_processed_then_silent(
        mark,
        1,
        async { f.request_within(4_000_000).await.is_none() },
        "rejected: no new subscription",
    )
    .await;
}

#[tokio::test]
async fn a_401_is_answered_with_credentials() {
    let Setup { s: _s, mut f, .. } = setup(600).await;
    let (r, from) = next_subscribe(&mut f, 5000).await;
    f.answer(
        &r,
        from,
        407,
        Some("x"),
        &[(
            "Proxy-Authenticate",
            "Digest realm=\"p\", nonce=\"abc\", algorithm=MD5, qop=\"auth\"".into(),
        )],
    )
    .await;
    let (r2, _) = next_subscribe(&mut f, 5000).await;
    let creds = busylamp::sip::digest::parse_credentials(&hdr(&r2, HeaderName::ProxyAuthorization))
        .unwrap();
    assert_eq!(creds.username, "bl");
    let ha1 = busylamp::sip::digest::ha1(busylamp::sip::digest::Algorithm::Md5, "bl", "p", "pw");
    assert!(busylamp::sip::digest::verify(
        busylamp::sip::digest::Algorithm::Md5,
        &ha1,
        "SUBSCRIBE",
        &creds
    ));
    assert_eq!(hdr(&r2, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    assert_eq!(r2.cseq().unwrap().seq, 2);
}

#[tokio::test]
async fn a_notify_that_is_not_ours_gets_481() {
    let Setup { s, mut f, .. } = setup(600).await;
    let (r, from) = next_subscribe(&mut f, 5000).await;
    accept(&f, &r, from, 600).await;
    // Each NOTIFY is built anew: a fresh Via branch, or it would be a retransmission.
    let port = f.port();
    let n = || notify(port, &r, 1, "active", "sip:n@127.0.0.1:9", "");
    // Another Call-ID.
    let stranger = String::from_utf8(n())
        .unwrap()
        .replace(&hdr(&r, HeaderName::CallId), "someone-else");
    assert_eq!(send_notify(&mut f, s.udp, stranger.as_bytes()).await, 481);
    // Our Call-ID but another tag of ours.
    let our_tag = tag_of(&hdr(&r, HeaderName::From));
    let wrong_tag = String::from_utf8(n())
        .unwrap()
        .replace(&format!("tag={our_tag}"), "tag=nottag");
    assert_eq!(send_notify(&mut f, s.udp, wrong_tag.as_bytes()).await, 481);
    let n = n();
    // Ours.
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 200);
    // A NOTIFY from a second (forked) dialog of our SUBSCRIBE: we keep one dialog.
    let n2 = notify(f.port(), &r, 2, "active", "sip:n@127.0.0.1:9", "");
    let forked = String::from_utf8(n2).unwrap().replace("tag=n1", "tag=n2");
    assert_eq!(send_notify(&mut f, s.udp, forked.as_bytes()).await, 481);
}

#[tokio::test]
async fn a_notify_before_the_200_establishes_the_dialog() {
    let Setup { s, mut f, sub, .. } = setup(600).await;
    let (r, from) = next_subscribe(&mut f, 5000).await;
    let n = notify(
        f.port(),
        &r,
        1,
        "pending;expires=600",
        "sip:early@127.0.0.1:9",
        "",
    );
    assert_eq!(send_notify(&mut f, s.udp, &n).await, 200);
    assert!(sub.is_established());
    accept(&f, &r, from, 600).await;
    sub.unsubscribe();
    let (r2, _) = next_subscribe(&mut f, 5000).await;
    assert_eq!(hdr(&r2, HeaderName::Expires), "0");
    assert_eq!(
        r2.uri.to_string(),
        "sip:early@127.0.0.1:9",
        "the NOTIFY's Contact is the remote target"
    );
}

/// The options a shared line's subscription to a member phone needs (pua_bla): the
/// Request-URI is the phone's contact, To the line; every request, the refresh too, goes to
/// the flow the phone registered from, whatever its Contact says (a private address behind
/// NAT); a judge answers each NOTIFY (409 for a taken appearance); `set_expires` refreshes at
/// once with the new Expires.
#[tokio::test(start_paused = true)]
async fn pinned_flow_other_to_judge_and_set_expires() {
    use busylamp::pua::client::{NotifyAnswer, SubscribeOptions};
    let mut f = FakePeer::new().await;
    let s = server(CONFIG).await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let judged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = judged.clone();
    let options = SubscribeOptions {
        to: Some("sip:2000@example.test".into()),
        outbound: Some(format!("sip:127.0.0.1:{}", f.port())),
        pinned: true,
        judge: Some(Arc::new(move |e: &SubscriptionEvent| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match e {
                SubscriptionEvent::Notify { body, .. } if body.trim_ascii() == b"taken" => {
                    NotifyAnswer::new(409, "Conflict: appearance 0 is in use")
                }
                _ => NotifyAnswer::ok(),
            }
        })),
    };
    // The contact is a TEST-NET address nobody answers at: only the pinned flow works.
    let sub = s
        .handle
        .core
        .pua
        .subscribe_with(
            "sip:2000@192.0.2.99:5060",
            "dialog;sla",
            "sip:2000@example.test",
            600,
            options,
            Arc::new(move |e: &SubscriptionEvent| {
                let _ = tx.send(e.clone());
            }),
        )
        .expect("subscribed");
    let (r, from) = next_subscribe(&mut f, 5000).await;
    assert_eq!(r.uri.to_string(), "sip:2000@192.0.2.99:5060");
    assert!(hdr(&r, HeaderName::To).contains("<sip:2000@example.test>"));
    assert!(hdr(&r, HeaderName::From).contains("<sip:2000@example.test>"));
    assert_eq!(hdr(&r, HeaderName::Event), "dialog;sla");
    assert_eq!(hdr(&r, HeaderName::Expires), "600");
    f.answer(&r, from, 200, Some("n1"), &[("Expires", "600".into())])
        .await;
    let server_addr = from;
    let bytes = |cseq: u32, body: &str| {
        String::from_utf8(notify(
            f.port(),
            &r,
            cseq,
            "active;expires=600",
            "sip:2000@192.0.2.99:5060",
            body,
        ))
        .unwrap()
        .replace("Event: presence", "Event: dialog;sla")
        .into_bytes()
    };
    let (ok, taken) = (bytes(1, "free"), bytes(2, "taken"));
    assert_eq!(send_notify(&mut f, server_addr, &ok).await, 200);
    assert_eq!(send_notify(&mut f, server_addr, &taken).await, 409);
    assert_eq!(judged.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The judge replaces the callback for NOTIFYs: the callback heard none.
    assert!(events.try_recv().is_err());
    // A shorter Expires: the refresh leaves at once, still over the pinned flow.
    sub.set_expires(120);
    let (r2, _) = next_subscribe(&mut f, 1000).await;
    assert_eq!(hdr(&r2, HeaderName::Expires), "120");
    assert_eq!(hdr(&r2, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    assert_eq!(r2.uri.to_string(), "sip:2000@192.0.2.99:5060");
    f.answer(&r2, from, 200, Some("n1"), &[("Expires", "120".into())])
        .await;
    sub.unsubscribe();
    let (r3, _) = next_subscribe(&mut f, 5000).await;
    assert_eq!(hdr(&r3, HeaderName::Expires), "0");
}
