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
    let (s, mut alice, mut bob1, mut bob2) = office().await;
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
    let mark = s.mark();
    bob1.reply(&cancel, 200, "b1").await;
    bob1.reply(&at1, 487, "b1").await;
    // The proxy ACKs the 487 itself (hop by hop).
    let ack = bob1.ua.next_request().await;
    assert_eq!(ack.method, "ACK");
    s.assert_processed_then_silent(
        mark,
        2,
        alice.ua.no_notify(300),
        "no more requests reach the caller",
    )
    .await;

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

/// `invite` sent again from 127.0.0.1:`port` with `Proxy-Authorization: auth`, CSeq `cseq`
/// and a new branch.
fn with_credentials(
    invite: &busylamp::sip::Request,
    port: u16,
    cseq: u32,
    auth: String,
) -> Vec<u8> {
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
# The desk phones on 127.0.0.2 register without digest (trust is per purpose, for both).
trusted_for = ["calls", "register"]
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

    let mark = s.mark();
    let invite = alice.invite("1002", "auth-1").await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 407);
    let challenge = r
        .headers
        .get(HeaderName::ProxyAuthenticate)
        .expect("Proxy-Authenticate")
        .to_string();
    s.assert_processed_then_silent(
        mark,
        1,
        async { bob.ua.next_request_within(200).await.is_none() },
        "nothing forwarded unauthenticated",
    )
    .await;

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
        with_credentials(&invite, port, cseq, auth)
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
    let (s, mut alice, mut bob1, _bob2) = office().await;
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
    let mark = s.mark();
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 404, "{}", r.reason);
    s.assert_processed_then_silent(
        mark,
        1,
        async { bob1.ua.next_request_within(300).await.is_none() },
        "the BYE was relayed to the phone",
    )
    .await;
    // Addressed to us without Route: no such dialog here.
    leg.remote_target = format!("sip:{}", s.udp);
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    assert_eq!(alice.ua.response().await.status, 481);
}

/// Record-Route values of a message, top first.
fn record_routes(m: &impl HasHeaders) -> Vec<String> {
    m.headers()
        .list(HeaderName::RecordRoute)
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn rfc3261_16_6_callee_on_tcp_caller_on_udp_double_record_route_and_both_directions() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::new_tcp(s.tcp, "1002", "tcp").await;
    bob.register().await;
    let udp_rr = format!("sip:{};lr;r2=on", s.udp);
    let tcp_rr = format!("sip:{};lr;transport=tcp;r2=on", s.tcp);

    for (n, callee_hangs_up) in [(1, false), (2, true)] {
        let invite = alice.invite("1002", &format!("tcp-{n}")).await;
        // Over Bob's own connection, with our TCP Via and both Record-Route entries: the one
        // facing Bob (TCP) on top.
        let at = bob.next_of("INVITE").await;
        let vias = at.headers.list(HeaderName::Via);
        assert!(vias[0].starts_with("SIP/2.0/TCP"), "{vias:?}");
        let rr = record_routes(&at);
        assert_eq!(rr.len(), 2, "{rr:?}");
        assert!(rr[0].starts_with(&format!("<{tcp_rr}")), "{rr:?} {tcp_rr}");
        assert!(rr[1].starts_with(&format!("<{udp_rr}")), "{rr:?}");
        assert!(rr.iter().all(|r| r.contains("ftag=from-tcp-")), "{rr:?}");

        bob.reply(&at, 180, "bt").await;
        bob.reply(&at, 200, "bt").await;
        let ok = alice.final_of("INVITE").await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            record_routes(&ok),
            rr,
            "the 2xx carries both entries to the caller"
        );

        let mut leg = Phone::caller_leg(&invite, &ok);
        assert_eq!(leg.route.len(), 2);
        alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
        let ack = bob.next_of("ACK").await;
        assert_eq!(ack.uri.to_string(), bob.contact());
        assert!(
            !ack.headers.has(HeaderName::Route),
            "both of our entries are consumed"
        );
        assert!(ack.headers.list(HeaderName::Via)[0].starts_with("SIP/2.0/TCP"));

        if callee_hangs_up {
            // Bob's BYE over TCP, Route set = the Record-Route as received, reaches Alice
            // over UDP.
            let mut bleg = Phone::callee_leg(&at, "bt");
            bob.ua.send(&bob.in_dialog(&mut bleg, "BYE", None)).await;
            let bye = alice.next_of("BYE").await;
            assert_eq!(bye.uri.to_string(), alice.contact());
            assert!(!bye.headers.has(HeaderName::Route));
            assert!(bye.headers.list(HeaderName::Via)[0].starts_with("SIP/2.0/UDP"));
            alice.reply(&bye, 200, "x").await;
            let done = bob.final_of("BYE").await;
            assert_eq!(done.status, 200);
        } else {
            alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
            let bye = bob.next_of("BYE").await;
            assert!(!bye.headers.has(HeaderName::Route));
            bob.reply(&bye, 200, "bt").await;
            let done = alice.final_of("BYE").await;
            assert_eq!(done.status, 200);
        }
    }
}

/// Bob's desk phone (q=1.0) rings first; his softphone (q=0.5) only when the desk phone
/// failed.
async fn serial_office() -> (TestServer, Phone, Phone, Phone) {
    let s = server(CALLS).await;
    let alice = Phone::registered(s.udp, "1001", "a").await;
    let mut desk = Phone::new(s.udp, "1002", "desk").await;
    let c = format!("<{}>;q=1.0", desk.contact());
    desk.register_contact(&c).await;
    let mut soft = Phone::new(s.udp, "1002", "soft").await;
    let c = format!("<{}>;q=0.5", soft.contact());
    soft.register_contact(&c).await;
    (s, alice, desk, soft)
}

#[tokio::test]
async fn rfc3261_16_6_serial_forking_the_lower_q_rings_only_after_the_higher_failed() {
    let (s, mut alice, mut desk, mut soft) = serial_office().await;
    let mark = s.mark();
    let invite = alice.invite("1002", "serial-1").await;
    let at_desk = desk.next_of("INVITE").await;
    s.assert_processed_then_silent(
        mark,
        1,
        async { soft.ua.next_request_within(300).await.is_none() },
        "the q=0.5 phone waits while the q=1.0 phone rings",
    )
    .await;
    let mark = s.mark();
    desk.reply(&at_desk, 180, "d").await;
    assert_eq!(alice.ua.any_response().await.status, 100);
    assert_eq!(alice.ua.any_response().await.status, 180);
    s.assert_processed_then_silent(
        mark,
        1,
        async { soft.ua.next_request_within(300).await.is_none() },
        "the q=0.5 phone rang after a 180 of the q=1.0 phone",
    )
    .await;
    desk.reply(&at_desk, 486, "d").await;
    // Hop-by-hop ACK for the desk phone's 486, then the softphone rings.
    assert_eq!(desk.next_of("ACK").await.method, "ACK");
    let at_soft = soft.next_of("INVITE").await;
    assert_eq!(at_soft.uri.to_string(), soft.contact());
    assert_eq!(at_soft.call_id().unwrap(), "serial-1");
    soft.reply(&at_soft, 180, "s").await;
    assert_eq!(alice.ua.any_response().await.status, 180);
    soft.reply(&at_soft, 200, "s").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    assert!(ok.headers.get(HeaderName::To).unwrap().contains("tag=s"));
    let mut leg = Phone::caller_leg(&invite, &ok);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    assert_eq!(soft.next_of("ACK").await.method, "ACK");

    // 480 from the first group: the second rings too, and when it also fails the caller
    // gets the best answer of both (same class: the first to arrive).
    alice.invite("1002", "serial-2").await;
    let at_desk = desk.next_of("INVITE").await;
    desk.reply(&at_desk, 480, "d").await;
    let at_soft = soft.next_of("INVITE").await;
    soft.reply(&at_soft, 486, "s").await;
    let r = alice.final_of("INVITE").await;
    assert_eq!((r.status, r.call_id().unwrap()), (480, "serial-2"));
}

#[tokio::test]
async fn rfc3261_16_7_a_6xx_from_the_first_group_ends_the_search() {
    let (s, mut alice, mut desk, mut soft) = serial_office().await;
    alice.invite("1002", "serial-603").await;
    let at_desk = desk.next_of("INVITE").await;
    let mark = s.mark();
    desk.reply(&at_desk, 603, "d").await;
    let r = alice.final_of("INVITE").await;
    assert_eq!(r.status, 603);
    s.assert_processed_then_silent(
        mark,
        1,
        async { soft.ua.next_request_within(500).await.is_none() },
        "after a 6xx the next group never rings",
    )
    .await;
}

/// Seconds of (paused) time since `t0`.
fn secs_since(t0: tokio::time::Instant) -> u64 {
    t0.elapsed().as_secs()
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_8_timer_c_cancels_a_branch_that_rings_too_long_caller_gets_487() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    alice.invite("1002", "timer-c-487").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 180, "b").await;
    let t0 = tokio::time::Instant::now();
    // 180 and then nothing: Timer C (180 s) fires and the proxy sends CANCEL.
    let cancel = bob.next_of_within("CANCEL", 200_000).await;
    let waited = secs_since(t0);
    assert!((180..=181).contains(&waited), "CANCEL after {waited} s");
    assert!(alice.ua.no_notify(10).await);
    bob.reply(&cancel, 200, "b").await;
    bob.reply(&at, 487, "b").await;
    let r = alice.ua.response_within(5_000).await;
    assert_eq!(r.status, 487);
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_8_timer_c_then_no_answer_to_the_cancel_caller_gets_408() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    alice.invite("1002", "timer-c-408").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 180, "b").await;
    assert_eq!(alice.ua.any_response().await.status, 100);
    assert_eq!(alice.ua.any_response().await.status, 180);
    let t0 = tokio::time::Instant::now();
    let cancel = bob.next_of_within("CANCEL", 200_000).await;
    assert!((180..=181).contains(&secs_since(t0)));
    assert_eq!(cancel.call_id().unwrap(), "timer-c-408");
    // The phone is gone: neither the CANCEL nor the INVITE is ever answered. 32 s later
    // (64*T1) the branch counts as 408.
    let r = alice.ua.response_within(60_000).await;
    assert_eq!(r.status, 408, "{}", r.reason);
    let waited = secs_since(t0);
    assert!((211..=214).contains(&waited), "408 after {waited} s");
    // The abandoned branch, its CANCEL and the caller's transaction are all gone once their
    // timers ran (Alice never ACKs the 408: Timer H).
    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
    assert_eq!(
        s.handle.core.in_flight(),
        busylamp::server::InFlight::default()
    );
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_8_timer_c_is_reset_by_each_provisional() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    alice.invite("1002", "timer-c-reset").await;
    let at = bob.next_of("INVITE").await;
    let mut mark = s.mark();
    bob.reply(&at, 180, "b").await;
    // A PBX queue announcing progress every 100 s keeps the branch alive.
    for _ in 0..3 {
        s.assert_processed_then_silent(
            mark,
            1,
            async { bob.ua.next_request_within(100_000).await.is_none() },
            "Timer C fired although a provisional reset it",
        )
        .await;
        mark = s.mark();
        bob.reply(&at, 183, "b").await;
    }
    let t0 = tokio::time::Instant::now();
    let cancel = bob.ua.next_request_within(200_000).await.expect("CANCEL");
    assert_eq!(cancel.method, "CANCEL");
    assert!((180..=181).contains(&secs_since(t0)));
}

#[tokio::test]
async fn rfc3261_16_7_responses_reordered_across_branches_one_answer_no_late_provisionals() {
    let (_s, mut alice, mut bob1, mut bob2) = office().await;
    alice.invite("1002", "reorder-1").await;
    let at1 = bob1.next_of("INVITE").await;
    let at2 = bob2.next_of("INVITE").await;
    // bob2 fails first, bob1 answers before any provisional of its own; the 180s of both
    // arrive late, after their finals.
    bob2.reply(&at2, 486, "b2").await;
    assert_eq!(bob2.next_of("ACK").await.method, "ACK");
    bob1.reply(&at1, 200, "b1").await;
    bob2.reply(&at2, 180, "b2").await;
    bob1.reply(&at1, 180, "b1").await;
    bob1.reply(&at1, 183, "b1").await;
    let mut seen = Vec::new();
    loop {
        let r = alice.ua.any_response().await;
        seen.push(r.status);
        if r.status >= 200 {
            break;
        }
    }
    // Whatever was still on its way.
    while let Some(r) = alice.ua.any_response_within(300).await {
        seen.push(r.status);
    }
    let finals: Vec<u16> = seen.iter().copied().filter(|s| *s >= 200).collect();
    assert_eq!(finals, vec![200], "{seen:?}");
    let after: Vec<u16> = seen
        .iter()
        .skip_while(|s| **s < 200)
        .skip(1)
        .copied()
        .collect();
    assert!(after.is_empty(), "nothing after the 2xx: {seen:?}");
}

#[tokio::test]
async fn rfc6026_every_2xx_retransmission_reaches_the_caller_until_it_acks() {
    let (_s, mut alice, mut bob1, mut bob2) = office().await;
    let invite = alice.invite("1002", "retrans-1").await;
    let at1 = bob1.next_of("INVITE").await;
    let at2 = bob2.next_of("INVITE").await;
    bob1.reply(&at1, 180, "b1").await;
    // bob2 answers and, not hearing an ACK, retransmits its 2xx (Timer G of its UAS core).
    for _ in 0..3 {
        bob2.reply(&at2, 200, "b2").await;
    }
    let mut oks = Vec::new();
    while oks.len() < 3 {
        let r = alice.ua.any_response().await;
        if r.status == 200 {
            oks.push(r);
        }
    }
    // Each 2xx retransmission is forwarded, and nothing more.
    while let Some(r) = alice.ua.any_response_within(300).await {
        assert_ne!(r.status, 200, "a fourth 2xx");
    }
    assert!(oks.iter().all(|r| r.to_bytes() == oks[0].to_bytes()));
    // The caller's ACK reaches the winner and stops it.
    let mut leg = Phone::caller_leg(&invite, &oks[0]);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    let ack = bob2.next_of("ACK").await;
    assert_eq!(ack.uri.to_string(), bob2.contact());
    // The loser is cancelled, but it had answered already (the 2xx crossed the CANCEL):
    // that 2xx also reaches the caller (RFC 6026 §4.2), so it can ACK and BYE it.
    let c = bob1.next_of("CANCEL").await;
    bob1.reply(&c, 200, "b1").await;
    bob1.reply(&at1, 200, "b1").await;
    let late = alice.final_of("INVITE").await;
    assert_eq!(late.status, 200);
    assert!(late.headers.get(HeaderName::To).unwrap().contains("tag=b1"));
    let mut late_leg = Phone::caller_leg(&invite, &late);
    alice
        .ua
        .send(&alice.in_dialog(&mut late_leg, "ACK", None))
        .await;
    assert_eq!(bob1.next_of("ACK").await.method, "ACK");
    alice
        .ua
        .send(&alice.in_dialog(&mut late_leg, "BYE", None))
        .await;
    let bye = bob1.next_of("BYE").await;
    bob1.reply(&bye, 200, "b1").await;
    assert_eq!(alice.final_of("BYE").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn rfc6026_a_2xx_after_the_transactions_ended_is_forwarded_statelessly() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let invite = alice.invite("1002", "late-2xx").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    // Timer L (server) and Timer M (client), 64*T1 = 32 s, end both transactions.
    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
    // The ACK was lost; the phone still retransmits its 2xx: no transaction matches, but it
    // carries our Via and goes on to the Via below it.
    bob.reply(&at, 200, "b").await;
    let again = alice
        .ua
        .any_response_within(5_000)
        .await
        .expect("the late 2xx is forwarded");
    assert_eq!(again.status, 200);
    assert_eq!(
        again.headers.list(HeaderName::Via).len(),
        1,
        "our Via is removed"
    );
    assert_eq!(
        again.headers.get(HeaderName::Via),
        invite.headers.get(HeaderName::Via)
    );
    // And the end-to-end ACK still goes through by Route.
    let mut leg = Phone::caller_leg(&invite, &again);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    assert_eq!(bob.next_of("ACK").await.method, "ACK");
    // A non-2xx without a transaction is dropped (RFC 3261 §16.7 item 3... §18.1.2).
    let mark = s.mark();
    bob.reply(&at, 486, "b").await;
    s.assert_processed_then_silent(
        mark,
        1,
        async { alice.ua.any_response_within(1_000).await.is_none() },
        "a non-2xx without a transaction was forwarded",
    )
    .await;
}

#[tokio::test]
async fn rfc3261_16_12_in_dialog_request_of_a_call_we_never_saw_is_forwarded_by_request_uri() {
    let (s, mut alice, mut bob1, mut bob2) = office().await;
    // A call set up before a restart that lost it (or through another instance): the BYE
    // carries our Route and a To tag; the tracker knows nothing of it.
    let mut leg = common::phone::Leg {
        call_id: "unknown-1".into(),
        local: "<sip:1001@example.test>;tag=x".into(),
        remote: "<sip:1002@example.test>;tag=y".into(),
        remote_target: bob1.contact(),
        route: vec![format!("<sip:{};lr>", s.udp)],
        cseq: 1,
    };
    let mark = s.mark();
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let bye = bob1.next_of("BYE").await;
    assert_eq!(bye.uri.to_string(), bob1.contact());
    assert!(!bye.headers.has(HeaderName::Route));
    assert!(!bye.headers.has(HeaderName::RecordRoute));
    bob1.reply(&bye, 200, "y").await;
    assert_eq!(alice.final_of("BYE").await.status, 200);
    s.assert_processed_then_silent(
        mark,
        2,
        async { bob2.ua.next_request_within(200).await.is_none() },
        "the BYE also reached the other phone",
    )
    .await;
    // Addressed to us, without our Route: no dialog of ours, 481.
    leg.route.clear();
    leg.remote_target = format!("sip:{}", s.udp);
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let r = alice.final_of("BYE").await;
    assert_eq!(r.status, 481, "{}", r.reason);
}

#[tokio::test(start_paused = true)]
async fn rfc3261_16_9_a_phone_whose_tcp_connection_closed_fails_its_branch_at_once() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut gone = Phone::new_tcp(s.tcp, "1002", "tcp").await;
    gone.register().await;
    drop(gone);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Its binding outlives the connection; the connection we open to its address is refused
    // (nothing listens there), so the branch fails at once (§16.9 would say 503; we answer 480: the phone is not reachable now),
    // not after Timer B.
    let t0 = tokio::time::Instant::now();
    alice.invite("1002", "tcp-gone").await;
    let r = alice.final_for("tcp-gone").await;
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.status, 480, "{}", r.reason);
    // With a second phone, the call simply rings that one.
    let mut desk = Phone::registered(s.udp, "1002", "desk").await;
    alice.invite("1002", "tcp-gone-2").await;
    let at = desk.next_of("INVITE").await;
    desk.reply(&at, 200, "d").await;
    assert_eq!(alice.final_for("tcp-gone-2").await.status, 200);
}

#[tokio::test]
async fn rfc3262_reliable_provisional_and_prack_pass_through_the_early_dialog() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let invite = alice.invite("1002", "prack-1").await;
    let at = bob.next_of("INVITE").await;
    // A 183 sent reliably (RFC 3262): Require: 100rel, RSeq.
    let mut p = at.response(183, "Session Progress", Some("b"));
    for rr in at.headers.all(HeaderName::RecordRoute) {
        p.headers.push(HeaderName::RecordRoute, rr.to_string());
    }
    p.headers
        .push(HeaderName::Contact, format!("<{}>", bob.contact()));
    p.headers.push_raw("Require", "100rel");
    p.headers.push_raw("RSeq", "1");
    bob.ua.send(&p.to_bytes()).await;
    let early = loop {
        let r = alice.ua.any_response().await;
        if r.status == 183 {
            break r;
        }
    };
    assert_eq!(early.headers.get_named("rseq"), Some("1"));
    // The PRACK follows the early dialog's route set to Bob, and its 200 comes back.
    let mut leg = Phone::caller_leg(&invite, &early);
    let prack = alice.in_dialog(&mut leg, "PRACK", None);
    let prack = String::from_utf8(prack)
        .unwrap()
        .replace("Content-Length: 0", "RAck: 1 1 INVITE\r\nContent-Length: 0");
    alice.ua.send(prack.as_bytes()).await;
    let at_prack = bob.next_of("PRACK").await;
    assert_eq!(at_prack.headers.get_named("rack"), Some("1 1 INVITE"));
    assert!(!at_prack.headers.has(HeaderName::Route));
    bob.reply(&at_prack, 200, "b").await;
    assert_eq!(alice.final_of("PRACK").await.status, 200);
    bob.reply(&at, 200, "b").await;
    assert_eq!(alice.final_of("INVITE").await.status, 200);
}

#[tokio::test]
async fn rfc3261_9_1_a_2xx_crossing_the_callers_cancel_still_reaches_it_and_the_call_can_be_ended()
{
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let mut lamp = common::watcher::Watcher::new(s.udp, "1002").await;
    let invite = alice.invite("1002", "crossing-1").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 180, "b").await;
    lamp.until(Some(busylamp::sip::body::dialog_info::DialogState::Early))
        .await;
    alice.ua.send(&Phone::cancel(&invite)).await;
    // Bob had answered before the CANCEL reached him.
    let c = bob.next_of("CANCEL").await;
    bob.reply(&at, 200, "b").await;
    bob.reply(&c, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200, "the 2xx wins over the CANCEL");
    // Alice ACKs and, having cancelled, hangs up (RFC 3261 §9.1, §15).
    let mut leg = Phone::caller_leg(&invite, &ok);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    assert_eq!(bob.next_of("ACK").await.method, "ACK");
    let mark = s.mark();
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let bye = bob.next_of("BYE").await;
    bob.reply(&bye, 200, "b").await;
    assert_eq!(alice.final_of("BYE").await.status, 200);
    lamp.dark().await;
    s.assert_processed_then_silent(mark, 2, lamp.stays_dark(500), "the lamp lit again")
        .await;
}

#[tokio::test]
async fn rfc3261_9_1_a_cancel_waits_for_the_branchs_first_provisional() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let invite = alice.invite("1002", "early-cancel").await;
    let at = bob.next_of("INVITE").await;
    // The caller gives up before the phone said anything: the CANCEL is answered at once,
    // but held back from the phone until it sends a provisional (§9.1).
    let mark = s.mark();
    alice.ua.send(&Phone::cancel(&invite)).await;
    assert_eq!(alice.final_of("CANCEL").await.status, 200);
    s.assert_processed_then_silent(
        mark,
        1,
        async { bob.ua.next_request_within(300).await.is_none() },
        "the CANCEL reached the phone before its first provisional",
    )
    .await;
    bob.reply(&at, 180, "b").await;
    let c = bob.next_of("CANCEL").await;
    bob.reply(&c, 200, "b").await;
    bob.reply(&at, 487, "b").await;
    assert_eq!(alice.final_of("INVITE").await.status, 487);
}

#[tokio::test]
async fn rfc3261_22_3_in_dialog_requests_of_unknown_dialogs_are_challenged_no_relay_to_the_pbx() {
    let mut pbx = Phone::new_at("127.0.0.3", "127.0.0.1:9".parse().unwrap(), "pbx", "pbx").await;
    let s = common::server(&pbx_config(pbx.ua.port())).await;
    pbx.ua.server = s.udp;
    // An untrusted host makes up a dialog: a To tag, our Route, and the PBX (which trusts
    // us) in the Request-URI. Without a challenge it would place a call through the PBX in
    // our name.
    let mut mallory = Phone::new(s.udp, "1001", "mallory").await;
    let mut leg = common::phone::Leg {
        call_id: "made-up".into(),
        local: "<sip:1001@example.test>;tag=m".into(),
        remote: "<sip:900555@example.test>;tag=fake".into(),
        remote_target: format!("sip:900555@127.0.0.3:{}", pbx.ua.port()),
        route: vec![format!("<sip:{};lr>", s.udp)],
        cseq: 1,
    };
    let mark = s.mark();
    for method in ["INVITE", "BYE", "MESSAGE"] {
        mallory
            .ua
            .send(&mallory.in_dialog(&mut leg, method, None))
            .await;
        let r = mallory.final_of(method).await;
        assert_eq!(r.status, 407, "{method}: {} {}", r.status, r.reason);
    }
    s.assert_processed_then_silent(
        mark,
        3,
        async { pbx.ua.next_request_within(300).await.is_none() },
        "nothing reaches the PBX",
    )
    .await;

    // A dialog we set up needs no further credentials: Alice (challenged) calls Bob, then
    // hangs up without Proxy-Authorization.
    let mut bob = Phone::new_at("127.0.0.2", s.udp, "1002", "desk").await;
    bob.register().await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;
    let invite = alice.invite("1002", "known-1").await;
    let r = alice.final_of("INVITE").await;
    assert_eq!(r.status, 407);
    let challenge = r.headers.get(HeaderName::ProxyAuthenticate).unwrap();
    let mut again = invite.clone();
    again.headers.set(HeaderName::CSeq, "2 INVITE");
    again.headers.set(HeaderName::Via, alice.via());
    again.headers.push(
        HeaderName::ProxyAuthorization,
        common::authorization(
            challenge,
            "1001",
            "secret",
            "INVITE",
            "sip:1002@example.test",
            1,
        ),
    );
    alice.ua.send(&again.to_bytes()).await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut leg = Phone::caller_leg(&again, &ok);
    leg.cseq = 2;
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    bob.next_of("ACK").await;
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let bye = bob.next_of("BYE").await;
    bob.reply(&bye, 200, "b").await;
    assert_eq!(alice.final_of("BYE").await.status, 200);
}

/// RFC 7616 §3.4.6 on the proxy's 407 path: Proxy-Authorization valid for another
/// Request-URI (a captured INVITE's credentials replayed towards another number) is a 400
/// naming the mismatch and nothing is forwarded; the same nonce answered for this
/// Request-URI goes through, so the refusal was the uri's.
#[tokio::test]
async fn rfc7616_3_4_6_proxy_credentials_for_another_uri_are_refused() {
    let mut pbx = common::ua::Ua::bind("127.0.0.3", "127.0.0.1:9".parse().unwrap()).await;
    let s = common::server(&pbx_config(pbx.port())).await;
    pbx.server = s.udp;
    let mut bob = Phone::new_at("127.0.0.2", s.udp, "1002", "desk").await;
    bob.register().await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;

    let invite = alice.invite("1002", "auth-uri-1").await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 407);
    let challenge = r
        .headers
        .get(HeaderName::ProxyAuthenticate)
        .expect("Proxy-Authenticate")
        .to_string();
    let port = alice.ua.port();
    let retry = |uri: &str, cseq: u32| {
        let auth = common::authorization(&challenge, "1001", "secret", "INVITE", uri, cseq);
        with_credentials(&invite, port, cseq, auth)
    };
    alice.ua.send(&retry("sip:1003@example.test", 2)).await;
    // The final answer to this retry (the 407 to the first INVITE may be retransmitted).
    let r = loop {
        let r = alice.ua.response().await;
        if r.cseq().unwrap().seq == 2 && r.status >= 200 {
            break r;
        }
    };
    assert_eq!(r.status, 400, "{}", r.reason);
    assert!(
        r.reason.contains("Digest uri does not match Request-URI"),
        "{}",
        r.reason
    );

    alice.ua.send(&retry("sip:1002@example.test", 3)).await;
    // The first request bob sees is the good one: the refused INVITE was never forwarded.
    let at = bob.ua.next_request().await;
    assert_eq!(at.method, "INVITE");
    assert_eq!(at.cseq().unwrap().seq, 3);
    bob.reply(&at, 486, "b").await;
    loop {
        let r = alice.ua.response().await;
        if r.cseq().unwrap().seq == 3 {
            assert_eq!(r.status, 486);
            break;
        }
    }
}

/// An ACK as an attacker writes it: our Route on top, a To tag, and a Request-URI naming the
/// socket it wants us to send to.
fn forged_ack(
    server: std::net::SocketAddr,
    from: u16,
    target: &str,
    call_id: &str,
    tags: (&str, &str),
) -> Vec<u8> {
    common::wire(&format!(
        "ACK {target} SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{from};branch={b};rport
        Max-Forwards: 70
        Route: <sip:{server};lr>
        From: <sip:1001@example.test>;tag={f}
        To: <sip:1002@example.test>;tag={t}
        Call-ID: {call_id}
        CSeq: 1 ACK
        ",
        b = common::branch(),
        f = tags.0,
        t = tags.1,
    ))
}

#[tokio::test]
async fn rfc3261_16_11_an_ack_of_no_dialog_we_know_is_dropped_never_relayed() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    // A call in progress, ringing: an early dialog, no 2xx yet.
    let invite = alice.invite("1002", "ack-known").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 180, "b").await;
    while alice.ua.any_response().await.status != 180 {}

    // The attacker never registered; the victim is any socket of its choosing.
    let attacker = common::Udp::new(s.udp).await;
    let victim = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = format!("sip:victim@{}", victim.local_addr().unwrap());
    let core = &s.handle.core;
    let (received, dropped) = (core.messages_received(), core.acks_dropped());
    let forged = [
        // No dialog at all behind it.
        forged_ack(s.udp, attacker.port(), &target, "made-up", ("x", "y")),
        // The Call-ID and From tag of the real call, a made-up To tag.
        forged_ack(
            s.udp,
            attacker.port(),
            &target,
            "ack-known",
            ("from-ack-known", "forged"),
        ),
        // The real call's early dialog, exactly: nothing was answered, no ACK is due.
        forged_ack(
            s.udp,
            attacker.port(),
            &target,
            "ack-known",
            ("from-ack-known", "b"),
        ),
    ];
    for ack in &forged {
        attacker.send(ack).await;
    }
    // A later answer on the same socket: the ACKs before it were read and handled.
    let options = common::wire(&format!(
        "OPTIONS sip:{} SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{};branch={}
        Max-Forwards: 70
        From: <sip:probe@example.test>;tag=p
        To: <sip:{}>
        Call-ID: after-acks
        CSeq: 1 OPTIONS
        ",
        s.udp,
        attacker.port(),
        common::branch(),
        s.udp
    ));
    assert_eq!(attacker.request(&options).await.status, 200);
    assert_eq!(
        core.messages_received() - received,
        forged.len() as u64 + 1,
        "every forged ACK reached the server"
    );
    let mut buf = [0u8; 4096];
    let got = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        victim.recv_from(&mut buf),
    )
    .await;
    assert!(
        got.is_err(),
        "relayed to the victim: {}",
        String::from_utf8_lossy(&buf[..got.map(|r| r.unwrap().0).unwrap_or(0)])
    );
    assert_eq!(
        core.acks_dropped() - dropped,
        forged.len() as u64,
        "every forged ACK was dropped and counted"
    );
    assert!(attacker.recv_nothing(100).await, "an ACK is never answered");

    // Once answered, the real caller's ACK for the 2xx still reaches the callee (by the
    // dialog's flow), and is not counted.
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut leg = Phone::caller_leg(&invite, &ok);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    let ack = bob.next_of("ACK").await;
    assert_eq!(ack.uri.to_string(), bob.contact());
    assert_eq!(core.acks_dropped() - dropped, forged.len() as u64);
}
