//! The server transaction layer seen from the wire (RFC 3261 §17.2): a retransmitted request
//! gets the cached response and is processed once.

mod common;
use busylamp::events::Event;
use busylamp::sip::HeaderName;
use common::*;

const TRUSTED: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
"#;

#[tokio::test]
async fn s17_2_2_retransmitted_register_gets_the_cached_200_and_is_applied_once() {
    let s = server(TRUSTED).await;
    let mut events = s.handle.events.subscribe();
    let c = Udp::new(s.udp).await;
    let m = register("1001", c.port(), "retx", 1, "Contact: <sip:a@127.0.0.1:1>");
    let first = c.request(&m).await;
    let again = c.request(&m).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers.get(HeaderName::To),
        again.headers.get(HeaderName::To),
        "same To tag: the cached response"
    );
    assert_eq!(first.to_bytes(), again.to_bytes());
    // Registration notices only (presence from the registration is announced too).
    let mut registrations = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, Event::Registration { .. }) {
            registrations += 1;
        }
    }
    assert_eq!(registrations, 1, "applied once");
}

#[tokio::test]
async fn s17_2_2_retransmitted_challenge_is_the_same_challenge() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    let m = register("1001", c.port(), "retx", 1, "Contact: <sip:a@127.0.0.1:1>");
    let a = c.request(&m).await;
    let b = c.request(&m).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.headers.get(HeaderName::WwwAuthenticate),
        b.headers.get(HeaderName::WwwAuthenticate)
    );
}

#[tokio::test]
async fn s9_2_cancel_matching_nothing_is_481_and_a_stray_ack_is_absorbed() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let cancel = wire(&format!(
        "CANCEL sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        From: <sip:1002@example.test>;tag=1
        To: <sip:1001@example.test>
        Call-ID: nothing
        CSeq: 1 CANCEL
        ",
        p = c.port(),
        b = branch()
    ));
    assert_eq!(c.request(&cancel).await.status, 481);
    let ack = wire(&format!(
        "ACK sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        From: <sip:1002@example.test>;tag=1
        To: <sip:1001@example.test>;tag=2
        Call-ID: nothing
        CSeq: 1 ACK
        ",
        p = c.port(),
        b = branch()
    ));
    let mark = s.mark();
    c.send(&ack).await;
    s.assert_processed_then_silent(mark, 1, c.recv_nothing(200), "ACK is never answered")
        .await;
}

#[tokio::test]
async fn methods_we_do_not_know_get_501_with_allow() {
    // INVITE, MESSAGE and the other RFC 3261 methods go to the proxy (tests/proxy_*.rs).
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    for (method, status) in [("FOOBAR", 501)] {
        let m = wire(&format!(
            "{method} sip:1001@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
            From: <sip:1002@example.test>;tag=1
            To: <sip:1001@example.test>
            Call-ID: m-{method}
            CSeq: 1 {method}
            ",
            p = c.port(),
            b = branch()
        ));
        let r = c.request(&m).await;
        assert_eq!(r.status, status, "{method}");
        assert!(r
            .headers
            .get(HeaderName::Allow)
            .unwrap()
            .contains("REGISTER"));
    }
}
