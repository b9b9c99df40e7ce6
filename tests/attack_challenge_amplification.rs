//! The proxy's challenge is no amplifier (Kamailio answers it statelessly too): an INVITE
//! from a spoofed source gets one 407 and nothing more, however long nobody ACKs it. Before,
//! the 407 went through an INVITE server transaction and was retransmitted by Timer G until
//! Timer H (32 s): 20 INVITEs brought the claimed source 240 datagrams.

mod common;

use busylamp::sip::{HasHeaders, HeaderName};
use common::phone::{Phone, SDP};
use common::{parse_response, wire, TestServer, BASE_CONFIG};
use std::time::Duration;
use tokio::net::UdpSocket;

/// An INVITE from 1001 to 1002 as the attacker writes it: `branch` and Call-ID its own, the
/// source it claims in the Via is the socket it sends from (the victim, when spoofed).
fn invite(from: &UdpSocket, call_id: &str, branch: &str) -> Vec<u8> {
    let port = from.local_addr().unwrap().port();
    wire(&format!(
        "INVITE sip:1002@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}
        Max-Forwards: 70
        From: <sip:1001@example.test>;tag=t-{call_id}
        To: <sip:1002@example.test>
        Call-ID: {call_id}
        CSeq: 1 INVITE
        Contact: <sip:1001@127.0.0.1:{port}>
        "
    ))
}

/// Every datagram reaching `sock` until `quiet` passes without one (paused clock: the
/// server's timers run meanwhile).
async fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(r) = tokio::time::timeout(quiet, sock.recv_from(&mut buf)).await {
        let (n, _) = r.unwrap();
        got.push(buf[..n].to_vec());
    }
    got
}

async fn victim(s: &TestServer) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(s.udp).await.unwrap();
    sock
}

#[tokio::test(start_paused = true)]
async fn twenty_unacked_invites_bring_exactly_twenty_407s_in_32_seconds() {
    let s = common::server(BASE_CONFIG).await;
    let sock = victim(&s).await;
    let mark = s.mark();
    let t0 = tokio::time::Instant::now();
    for i in 0..20 {
        let bytes = invite(&sock, &format!("amp-{i}"), &format!("z9hG4bKamp{i}"));
        sock.send(&bytes).await.unwrap();
    }
    common::processed_since(&s.handle.core, mark, 20).await;
    let got = drain(&sock, Duration::from_secs(40)).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(40),
        "Timer H's 32 s have passed"
    );
    let statuses: Vec<u16> = got.iter().map(|d| parse_response(d).status).collect();
    assert_eq!(
        statuses,
        vec![407; 20],
        "one datagram per INVITE, a 407 ({} bytes in all)",
        got.iter().map(Vec::len).sum::<usize>()
    );
    // Each carries its own challenge, for its own request.
    let mut ids: Vec<String> = got
        .iter()
        .map(|d| parse_response(d).call_id().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert!(got
        .iter()
        .all(|d| parse_response(d).headers.has(HeaderName::ProxyAuthenticate)));
}

#[tokio::test(start_paused = true)]
async fn a_retransmitted_invite_gets_one_407_per_copy_and_the_ack_is_absorbed() {
    let s = common::server(BASE_CONFIG).await;
    let sock = victim(&s).await;
    let mark = s.mark();
    let bytes = invite(&sock, "retx-1", "z9hG4bKretx1");
    for _ in 0..3 {
        sock.send(&bytes).await.unwrap();
    }
    common::processed_since(&s.handle.core, mark, 3).await;
    let got = drain(&sock, Duration::from_secs(40)).await;
    let answers: Vec<_> = got.iter().map(|d| parse_response(d)).collect();
    assert_eq!(
        answers.iter().map(|r| r.status).collect::<Vec<_>>(),
        [407, 407, 407]
    );

    // The ACK to the 407 (RFC 3261 §17.1.1.3: the INVITE's branch, the 407's To tag).
    let to = answers[0].headers.get(HeaderName::To).unwrap();
    let port = sock.local_addr().unwrap().port();
    let ack = wire(&format!(
        "ACK sip:1002@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKretx1
        Max-Forwards: 70
        From: <sip:1001@example.test>;tag=t-retx-1
        To: {to}
        Call-ID: retx-1
        CSeq: 1 ACK
        "
    ));
    let dropped = s.handle.core.acks_dropped();
    let mark = s.mark();
    sock.send(&ack).await.unwrap();
    common::processed_since(&s.handle.core, mark, 1).await;
    assert_eq!(
        s.handle.core.acks_dropped(),
        dropped + 1,
        "the ACK was handled"
    );
    assert!(
        drain(&sock, Duration::from_secs(40)).await.is_empty(),
        "nothing answers an ACK"
    );
}

/// A real phone is not hurt: it answers the one 407, its call rings, is answered and hung
/// up.
#[tokio::test(start_paused = true)]
async fn a_phone_still_completes_the_challenge_and_the_call() {
    let s = common::server(BASE_CONFIG).await;
    let mut bob = Phone::new(s.udp, "1002", "desk").await;
    bob.register_with_password("other").await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;
    let invite = alice.invite("1002", "real-1").await;
    let sent = alice.authenticate(&invite, "secret").await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(at.body, SDP.as_bytes());
    bob.reply(&at, 180, "b").await;
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut leg = alice.ack(&mut bob, &sent, &ok).await;
    alice.hang_up(&mut bob, &mut leg, "b").await;
}
