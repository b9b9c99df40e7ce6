//! RFC 3261 §16 (proxy behaviour) end to end over UDP loopback: a caller, a callee with two
//! registered phones, forking, CANCEL, busy, in-dialog routing through our Record-Route.

mod common;

use busylamp::sip::{HasHeaders, HeaderName};
use common::phone::{Phone, CALLS, SDP};
use common::{server, TestServer};

async fn office() -> (TestServer, Phone, Phone, Phone) {
    let s = server(CALLS).await;
    let alice = Phone::registered(s.udp, "1001", "a").await;
    let bob1 = Phone::registered(s.udp, "1002", "desk").await;
    let bob2 = Phone::registered(s.udp, "1002", "soft").await;
    (s, alice, bob1, bob2)
}

#[tokio::test]
async fn rfc3261_16_6_invite_forks_to_both_contacts_first_2xx_wins_loser_cancelled() {
    let (_s, mut alice, mut bob1, mut bob2) = office().await;
    let invite = alice.invite("1002", "fork-1").await;
    let trying = alice.ua.any_response().await;
    assert_eq!(trying.status, 100);

    let at1 = bob1.ua.next_request().await;
    let at2 = bob2.ua.next_request().await;
    assert_eq!(at1.method, "INVITE");
    assert_eq!(at1.uri.to_string(), bob1.contact());
    assert_eq!(at2.uri.to_string(), bob2.contact());
    // Our Via on top, Max-Forwards decremented, our Record-Route.
    assert_eq!(at1.headers.list(HeaderName::Via).len(), 2);
    assert_eq!(at1.headers.get(HeaderName::MaxForwards), Some("69"));
    assert!(at1
        .headers
        .get(HeaderName::RecordRoute)
        .unwrap()
        .contains(";lr"));
    assert_eq!(at1.body, SDP.as_bytes());

    bob1.reply(&at1, 180, "b1").await;
    bob2.reply(&at2, 180, "b2").await;
    let r1 = alice.ua.any_response().await;
    let r2 = alice.ua.any_response().await;
    assert_eq!((r1.status, r2.status), (180, 180));
    // Upstream sees only its own Via.
    assert_eq!(r1.headers.list(HeaderName::Via).len(), 1);

    bob2.reply(&at2, 200, "b2").await;
    let ok = alice.ua.any_response().await;
    assert_eq!(ok.status, 200);
    assert!(ok.headers.get(HeaderName::To).unwrap().contains("tag=b2"));
    // The loser gets CANCEL, answers 200 to it and 487 to the INVITE.
    let cancel = bob1.ua.next_request().await;
    assert_eq!(cancel.method, "CANCEL");
    bob1.reply(&cancel, 200, "b1").await;
    bob1.reply(&at1, 487, "b1").await;
    // The proxy ACKs the 487 itself (hop by hop).
    let ack = bob1.ua.next_request().await;
    assert_eq!(ack.method, "ACK");
    assert!(
        alice.ua.no_notify(300).await,
        "no more requests reach the caller"
    );

    // End-to-end ACK and BYE go through our Record-Route to the winner.
    let mut leg = Phone::caller_leg(&invite, &ok);
    assert_eq!(leg.route.len(), 1);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    let ack = bob2.ua.next_request().await;
    assert_eq!(ack.method, "ACK");
    assert_eq!(ack.uri.to_string(), bob2.contact());
    assert!(
        !ack.headers.has(HeaderName::Route),
        "our Route entry is removed"
    );
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let bye = bob2.ua.next_request().await;
    assert_eq!(bye.method, "BYE");
    bob2.reply(&bye, 200, "b2").await;
    let done = alice.ua.any_response().await;
    assert_eq!(
        (done.status, done.cseq().unwrap().method.as_str()),
        (200, "BYE")
    );
}

#[tokio::test]
async fn rfc3261_16_10_cancel_ends_every_branch_and_caller_gets_487() {
    let (_s, mut alice, mut bob1, mut bob2) = office().await;
    let invite = alice.invite("1002", "cancel-1").await;
    let at1 = bob1.ua.next_request().await;
    let at2 = bob2.ua.next_request().await;
    bob1.reply(&at1, 180, "b1").await;
    bob2.reply(&at2, 180, "b2").await;
    // CANCEL: same branch, Request-URI, Call-ID, From, To and CSeq number as the INVITE.
    alice.ua.send(&Phone::cancel(&invite)).await;
    for (phone, inv, tag) in [(&mut bob1, &at1, "b1"), (&mut bob2, &at2, "b2")] {
        let c = phone.ua.next_request().await;
        assert_eq!(c.method, "CANCEL");
        phone.reply(&c, 200, tag).await;
        phone.reply(inv, 487, tag).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = alice.ua.any_response().await;
        statuses.push((r.status, r.cseq().unwrap().method));
        if r.status == 487 {
            break;
        }
    }
    assert!(statuses.contains(&(200, "CANCEL".into())), "{statuses:?}");
    assert!(statuses.contains(&(487, "INVITE".into())), "{statuses:?}");
}

#[tokio::test]
async fn rfc3261_16_7_busy_everywhere_gives_486_and_unknown_user_404() {
    let (_s, mut alice, mut bob1, mut bob2) = office().await;
    alice.invite("1002", "busy-1").await;
    let at1 = bob1.ua.next_request().await;
    let at2 = bob2.ua.next_request().await;
    bob1.reply(&at1, 486, "b1").await;
    bob2.reply(&at2, 486, "b2").await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 486);

    alice.invite("7777", "nobody-1").await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 404);
    // A local user with no phone registered: 480.
    alice.invite("1003", "away-1").await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 480);
}

#[tokio::test]
async fn rfc3261_16_3_max_forwards_zero_gets_483() {
    let (_s, mut alice, _b1, _b2) = office().await;
    let inv = alice.invite("1002", "mf-1").await;
    let mut bytes = inv.to_bytes();
    let text = String::from_utf8(bytes.clone())
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("branch=", "branch=z9hG4bKmf0");
    bytes = text.into_bytes();
    alice.ua.send(&bytes).await;
    loop {
        let r = alice.ua.any_response().await;
        if r.cseq().unwrap().seq == 2 && r.status >= 200 {
            assert_eq!(r.status, 483);
            break;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_8_nobody_answers_caller_gets_408() {
    let (_s, mut alice, mut bob1, mut bob2) = office().await;
    alice.invite("1002", "noanswer-1").await;
    let _ = bob1.ua.next_request().await;
    let _ = bob2.ua.next_request().await;
    // Never a provisional: Timer B (32 s) ends both branches.
    let r = alice.ua.response_within(40_000).await;
    assert_eq!(r.status, 408);
}

/// Phones on 127.0.0.1 are challenged; 127.0.0.2 (a trusted desk phone network) and the PBX
/// on 127.0.0.3 are not.
fn pbx_config(pbx_port: u16) -> String {
    format!(
        r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.2", "127.0.0.3"]
[proxy]
upstream = "sip:127.0.0.3:{pbx_port}"
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
"#
    )
}

#[tokio::test]
async fn rfc3261_22_3_calls_from_phones_are_challenged_407_and_must_be_their_own() {
    let mut pbx = common::ua::Ua::bind("127.0.0.3", "127.0.0.1:9".parse().unwrap()).await;
    let s = common::server(&pbx_config(pbx.port())).await;
    pbx.server = s.udp;
    let mut bob = Phone::new_at("127.0.0.2", s.udp, "1002", "desk").await;
    bob.register().await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;

    let invite = alice.invite("1002", "auth-1").await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 407);
    let challenge = r
        .headers
        .get(HeaderName::ProxyAuthenticate)
        .expect("Proxy-Authenticate")
        .to_string();
    assert!(
        bob.ua.next_request_within(200).await.is_none(),
        "nothing forwarded unauthenticated"
    );

    // The retry with credentials (new CSeq and branch) goes through, without them.
    let port = alice.ua.port();
    let retry = |user: &str, password: &str, cseq: u32| {
        let auth = common::authorization(
            &challenge,
            user,
            password,
            "INVITE",
            "sip:1002@example.test",
            cseq,
        );
        let mut again = invite.clone();
        again
            .headers
            .set(HeaderName::CSeq, format!("{cseq} INVITE"));
        again.headers.set(
            HeaderName::Via,
            format!("SIP/2.0/UDP 127.0.0.1:{port};branch={}", common::branch()),
        );
        again.headers.push(HeaderName::ProxyAuthorization, auth);
        again.to_bytes()
    };
    alice.ua.send(&retry("1002", "other", 2)).await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 403, "1001 cannot call as 1002: {}", r.reason);

    alice.ua.send(&retry("1001", "secret", 3)).await;
    let at = bob.ua.next_request().await;
    assert_eq!(at.method, "INVITE");
    assert!(
        !at.headers.has(HeaderName::ProxyAuthorization),
        "our credentials end at us"
    );
    bob.reply(&at, 486, "b").await;
    loop {
        let r = alice.ua.response().await;
        if r.cseq().unwrap().seq == 3 {
            assert_eq!(r.status, 486);
            break;
        }
    }
}

#[tokio::test]
async fn rfc3261_16_5_unknown_numbers_go_to_the_pbx_and_pbx_calls_reach_phones() {
    let mut pbx = Phone::new_at("127.0.0.3", "127.0.0.1:9".parse().unwrap(), "pbx", "pbx").await;
    let s = common::server(&pbx_config(pbx.ua.port())).await;
    pbx.ua.server = s.udp;
    let mut bob = Phone::new_at("127.0.0.2", s.udp, "1002", "desk").await;
    bob.register().await;

    // A number nobody registered: to the PBX, Request-URI unchanged, our Record-Route.
    bob.invite("5551234", "out-1").await;
    let at_pbx = pbx.ua.next_request().await;
    assert_eq!(at_pbx.method, "INVITE");
    assert_eq!(at_pbx.uri.to_string(), "sip:5551234@example.test");
    assert!(at_pbx.headers.has(HeaderName::RecordRoute));
    pbx.reply(&at_pbx, 404, "p").await;
    assert_eq!(bob.ua.response().await.status, 404);

    // The PBX (trusted) calls 1002: the phone rings.
    pbx.invite("1002", "in-1").await;
    let at_bob = bob.ua.next_request().await;
    assert_eq!(at_bob.method, "INVITE");
    assert_eq!(at_bob.uri.to_string(), bob.contact());
    bob.reply(&at_bob, 180, "b").await;
    let ringing = pbx.ua.any_response().await;
    assert!(ringing.status == 100 || ringing.status == 180);
    // A number the PBX sends us that nobody here has: 404, never back to the PBX.
    pbx.invite("7777", "in-2").await;
    loop {
        let r = pbx.ua.any_response().await;
        if r.call_id().unwrap() == "in-2" && r.status >= 200 {
            assert_eq!(r.status, 404);
            break;
        }
    }
}

#[tokio::test]
async fn rfc3261_16_4_in_dialog_requests_not_routed_through_us_are_not_relayed() {
    let (_s, mut alice, mut bob1, _bob2) = office().await;
    // A BYE "in a dialog" (To tag) aimed at Bob's phone, without our Route: an open-relay
    // attempt. 404, and nothing reaches Bob.
    let mut leg = common::phone::Leg {
        call_id: "relay-1".into(),
        local: "<sip:1001@example.test>;tag=x".into(),
        remote: "<sip:1002@example.test>;tag=y".into(),
        remote_target: bob1.contact(),
        route: vec![],
        cseq: 1,
    };
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 404, "{}", r.reason);
    assert!(bob1.ua.next_request_within(300).await.is_none());
    // Addressed to us without Route: no such dialog here.
    leg.remote_target = format!("sip:{}", _s.udp);
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    assert_eq!(alice.ua.response().await.status, 481);
}
