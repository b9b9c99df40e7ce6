//! RFC 3261 §16.3 (Max-Forwards, loop detection), §16.4 (our own Route entries) and §16.6
//! item 3 (Max-Forwards on the forwarded copy): a request that comes back to the proxy, by a
//! misconfigured binding, a reflecting device, Route entries naming us, or a Request-URI
//! that resolves to us, ends in 482 or 483 after a bounded number of passes, never a storm.
//! The server's count of messages read shows how many passes there were.

mod common;

use busylamp::sip::{HasHeaders, HeaderName, Request};
use common::phone::{Phone, CALLS};
use common::{server, TestServer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Our Via entries on a request the proxy forwarded (one per pass through us).
fn our_vias(req: &Request, s: &TestServer) -> usize {
    let ours = [s.udp.to_string(), s.tcp.to_string()];
    req.headers
        .list(HeaderName::Via)
        .iter()
        .filter(|v| ours.iter().any(|a| v.contains(a.as_str())))
        .count()
}

/// Sends a raw INVITE from `phone` to `uri` with the header lines `extra` (Max-Forwards,
/// Route), none of them by default.
async fn send_invite(phone: &mut Phone, uri: &str, call_id: &str, extra: &str) {
    let msg = format!(
        "INVITE {uri} SIP/2.0\r\nVia: {via}\r\n{extra}From: <sip:{u}@example.test>;tag=f-{call_id}\r\nTo: <sip:1002@example.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <{c}>\r\nContent-Length: 0\r\n\r\n",
        via = phone.via(),
        u = phone.user,
        c = phone.contact(),
    );
    phone.ua.send(msg.as_bytes()).await;
}

/// Waits until the server's message count stops growing (within 5 s) and returns it. On the
/// paused clock (the tests that call it) a 100 ms step passes only once the server and the
/// peers have nothing left to do, so "unchanged over a step" means quiet, without sleeping.
async fn settled(s: &TestServer) -> u64 {
    let mut last = s.handle.core.messages_received();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = s.handle.core.messages_received();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the server keeps receiving messages: a storm ({last} so far)");
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_3_a_binding_to_our_own_address_behind_a_reflector_ends_in_482_or_483() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    // A hostile or misconfigured REGISTER: 1002's contact is the proxy itself, from a device
    // that sends everything it gets straight back to the proxy.
    let mut evil = Phone::new(s.udp, "1002", "evil").await;
    evil.register_contact(&format!("<sip:1002@{}>", s.udp))
        .await;
    let reflector = evil.ua.into_udp_socket();
    let invites = Arc::new(AtomicUsize::new(0));
    let seen = invites.clone();
    let server_addr = s.udp;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        // Bounded: at most 500 reflections, 5 s.
        for _ in 0..500 {
            let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(5), reflector.recv_from(&mut buf)).await
            else {
                break;
            };
            if buf.starts_with(b"INVITE ") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let _ = reflector.send_to(&buf[..n], server_addr).await;
        }
    });
    let before = s.handle.core.messages_received();
    alice.invite("1002", "reflect-1").await;
    let r = alice.final_for("reflect-1").await;
    assert!(matches!(r.status, 482 | 483), "{} {}", r.status, r.reason);
    let handled = settled(&s).await - before;
    let passes = invites.load(Ordering::SeqCst);
    assert!(passes <= 3, "{passes} INVITEs reflected");
    assert!(handled < 40, "{handled} messages for one call");
    task.abort();
    // Still answering.
    let r = alice
        .ua
        .request(&common::wire(&format!(
            "OPTIONS sip:example.test SIP/2.0
            Via: {}
            From: <sip:1001@example.test>;tag=o
            To: <sip:example.test>
            Call-ID: after-reflect
            CSeq: 1 OPTIONS
            ",
            alice.via()
        )))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn rfc3261_16_3_a_request_routed_back_to_us_by_its_own_route_is_a_spiral_not_a_loop() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    // The route set names us three times: the request comes back to us (or is handled in
    // one go), each time with a shorter Route: it changed, so it is a spiral (RFC 3261
    // §16.3 item 4: the hash covers the request as received).
    let ours = format!("<sip:{};lr>", s.udp);
    let routes = [ours.as_str(); 3].join(", ");
    send_invite(
        &mut alice,
        &bob.contact(),
        "spiral-1",
        &format!("Max-Forwards: 70\r\nRoute: {routes}\r\n"),
    )
    .await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(at.call_id().unwrap(), "spiral-1");
    bob.reply(&at, 486, "b").await;
    assert_eq!(alice.final_for("spiral-1").await.status, 486);
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_4_route_entries_naming_us_again_and_again_are_all_consumed_in_one_pass() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let ours = format!("<sip:{};lr>", s.udp);
    let routes = [ours.as_str(); 12].join(", ");
    let before = s.handle.core.messages_received();
    send_invite(
        &mut alice,
        &bob.contact(),
        "routes-1",
        &format!("Max-Forwards: 70\r\nRoute: {routes}\r\n"),
    )
    .await;
    let at = bob.next_of("INVITE").await;
    assert!(!at.headers.has(HeaderName::Route), "every entry was ours");
    assert_eq!(our_vias(&at, &s), 1, "one pass through us, not six");
    assert_eq!(at.headers.get(HeaderName::MaxForwards), Some("69"));
    assert_eq!(
        at.headers.list(HeaderName::RecordRoute).len(),
        1,
        "one Record-Route entry of ours"
    );
    bob.reply(&at, 486, "b").await;
    assert_eq!(alice.final_for("routes-1").await.status, 486);
    assert!(settled(&s).await - before < 10);
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_3_a_request_uri_that_resolves_to_us_is_a_loop_482() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    // "localhost" is not one of our names, but it is our address: the request comes back
    // unchanged (same Request-URI and Route), which is a loop, not a spiral.
    let before = s.handle.core.messages_received();
    let uri = format!("sip:5555@localhost:{}", s.udp.port());
    send_invite(&mut alice, &uri, "loop-1", "Max-Forwards: 70\r\n").await;
    let r = alice.final_for("loop-1").await;
    assert_eq!(r.status, 482, "{}", r.reason);
    assert!(settled(&s).await - before < 10);
    // The same by a Route entry naming us by that name.
    let route = format!("Route: <sip:localhost:{};lr>\r\n", s.udp.port());
    send_invite(
        &mut alice,
        "sip:1002@example.test",
        "loop-2",
        &format!("Max-Forwards: 70\r\n{route}"),
    )
    .await;
    let r = alice.final_for("loop-2").await;
    assert_eq!(r.status, 482, "{}", r.reason);
}

#[tokio::test]
async fn rfc3261_16_6_max_forwards_is_decremented_70_when_absent_and_0_stops_at_the_next_hop() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    // 1 goes out as 0: the phone is the last hop.
    send_invite(
        &mut alice,
        "sip:1002@example.test",
        "mf-1",
        "Max-Forwards: 1\r\n",
    )
    .await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(at.headers.get(HeaderName::MaxForwards), Some("0"));
    bob.reply(&at, 486, "b").await;
    assert_eq!(alice.final_for("mf-1").await.status, 486);
    // Absent: the copy gets 70 (RFC 3261 §16.6 item 3), not 69 and not absent.
    send_invite(&mut alice, "sip:1002@example.test", "mf-none", "").await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(at.headers.get(HeaderName::MaxForwards), Some("70"));
    bob.reply(&at, 486, "b").await;
    assert_eq!(alice.final_for("mf-none").await.status, 486);
    // 1 towards a next hop that is us again: that pass sees 0 and answers 483, which comes
    // back to the caller through the first pass.
    let uri = format!("sip:5555@localhost:{}", s.udp.port());
    send_invite(&mut alice, &uri, "mf-loop", "Max-Forwards: 1\r\n").await;
    let r = alice.final_for("mf-loop").await;
    assert_eq!(r.status, 483, "{}", r.reason);
}

#[tokio::test]
async fn rfc3261_18_1_2_a_2xx_whose_top_via_is_not_ours_is_dropped_never_reflected() {
    let s = server(CALLS).await;
    let victim = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Looks like one of our branches (the `z9hG4bKL` prefix) but the sent-by is not us:
    // forwarding it would let anyone bounce responses off the proxy to any address.
    // And with our sent-by but a branch we never minted (a well-formed guess).
    let mark = s.mark();
    for (sent_by, branch) in [
        ("192.0.2.99:5060".to_string(), "z9hG4bKL0123abcd"),
        (
            format!("127.0.0.1:{}", s.udp.port() + 1),
            "z9hG4bKL0123abcd",
        ),
        (s.udp.to_string(), "z9hG4bKL0123abcd0123456789abcdef1"),
    ] {
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {sent_by};branch={branch}\r\nVia: SIP/2.0/UDP {v};branch=z9hG4bKvictim\r\nFrom: <sip:1001@example.test>;tag=a\r\nTo: <sip:1002@example.test>;tag=b\r\nCall-ID: reflect-2xx\r\nCSeq: 1 INVITE\r\nContact: <sip:1002@192.0.2.1>\r\nContent-Length: 0\r\n\r\n",
            v = victim.local_addr().unwrap(),
        );
        attacker.send_to(resp.as_bytes(), s.udp).await.unwrap();
    }
    // The server read and handled all three before the victim's socket is checked.
    common::processed_since(&s.handle.core, mark, 3).await;
    let mut buf = [0u8; 4096];
    let got = tokio::time::timeout(Duration::from_millis(500), victim.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "the proxy relayed a forged 2xx: {}",
        got.map(|r| String::from_utf8_lossy(&buf[..r.unwrap().0]).into_owned())
            .unwrap_or_default()
    );
}
