//! Issue 9, as an attacker: the branch key must not be recoverable from what the proxy sends.
//!
//! Up to issue 9 the proxy branched a relayed ACK with a keyed FNV of the sender's branch and
//! minted its own branches with a keyed splitmix mix of a u64 secret; every step of both is
//! invertible, so one relayed ACK gave the secret and, with it, branches that pass the
//! stray-2xx check: a forged 2xx then went to any address named in the Via below ours (a
//! reflector). The attacker here is a phone in a real call: it relays its own ACK through us,
//! runs the old recovery on the branch it sees, mints a branch under the candidate secret
//! with the old algorithm and sends a stray 2xx aimed at a victim socket. Against the old code
//! the victim receives the 2xx; against HMAC branches it receives nothing.

mod common;

use busylamp::sip::HasHeaders;
use common::phone::{Leg, Phone, CALLS};
use common::{server, wire, TestServer};
use std::time::Duration;
use tokio::net::UdpSocket;

/// The old ACK branch: FNV-1a 64 over the sender's branch, its offset basis xored with the
/// secret.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// Inverse of `FNV_PRIME` modulo 2^64 (Newton's iteration; the prime is odd).
fn fnv_prime_inverse() -> u64 {
    let mut inv: u64 = 1;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(FNV_PRIME.wrapping_mul(inv)));
    }
    assert_eq!(inv.wrapping_mul(FNV_PRIME), 1);
    inv
}

/// The old recovery: run the keyed FNV backwards from its output over the known input.
fn recover_secret(output: u64, input: &[u8]) -> u64 {
    let inv = fnv_prime_inverse();
    let mut h = output;
    for b in input.iter().rev() {
        h = h.wrapping_mul(inv) ^ u64::from(*b);
    }
    h ^ FNV_OFFSET
}

/// The old keyed FNV (to check the recovery is self-consistent).
fn old_keyed_hash(key: u64, bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET ^ key;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64's finaliser, as the old `branch_from` used it.
fn old_mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The old `transaction::branch_from` (without the magic cookie).
fn old_branch_tail(counter: u64, secret: u64) -> String {
    format!(
        "{:016x}{counter:x}",
        old_mix(secret ^ old_mix(counter.wrapping_add(secret.rotate_left(17))))
    )
}

fn top_branch(m: &impl HasHeaders) -> (String, String) {
    let via = m.top_via().expect("Via");
    (via.branch().expect("branch").to_string(), via.sent_by())
}

/// Waits (bounded) until the server has read more than `before` messages.
async fn processed_beyond(s: &TestServer, before: u64) {
    for _ in 0..200 {
        if s.handle.core.messages_received() > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never read the forged response");
}

/// A call from alice (1001) to bob (1002) through the proxy, answered: alice's leg to send
/// the ACK on.
async fn answered_call(s: &TestServer, call_id: &str) -> (Phone, Phone, Leg) {
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let invite = alice.invite("1002", call_id).await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let leg = Phone::caller_leg(&invite, &ok);
    (alice, bob, leg)
}

#[tokio::test]
async fn a_relayed_ack_does_not_give_away_the_branch_key() {
    let s = server(CALLS).await;
    // A real call through the proxy; alice is the attacker.
    let (mut alice, mut bob, mut leg) = answered_call(&s, "attack-1").await;
    let ack = alice.in_dialog(&mut leg, "ACK", None);
    let sent = match busylamp::sip::parse_message(&ack, &busylamp::sip::Limits::default()) {
        Ok(busylamp::sip::Message::Request(r)) => r,
        other => panic!("our ACK: {other:?}"),
    };
    let (sent_branch, _) = top_branch(&sent);
    alice.ua.send(&ack).await;
    // Relayed statelessly with our branch on top.
    let relayed = bob.next_of("ACK").await;
    let (relayed_branch, our_sent_by) = top_branch(&relayed);
    assert!(
        relayed_branch.starts_with("z9hG4bKL"),
        "our ACK branch: {relayed_branch}"
    );
    // `z9hG4bK`, `L`, 8 digits of loop hash, then the value derived from the sender's branch.
    let loop_hash = &relayed_branch[8..16];
    let derived = &relayed_branch[16..];

    // The old recovery. Against the old code `derived` is 16 hex digits and the candidate
    // is the secret itself.
    let candidate = u64::from_str_radix(&derived[..derived.len().min(16)], 16).unwrap_or(0);
    let secret = recover_secret(candidate, sent_branch.as_bytes());
    assert_eq!(old_keyed_hash(secret, sent_branch.as_bytes()), candidate);

    // A stray 2xx under a branch minted with the candidate secret, aimed at a victim.
    let victim = UdpSocket::bind("127.0.0.1:0").await.expect("victim socket");
    let victim_port = victim.local_addr().expect("addr").port();
    let attacker = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("attacker socket");
    let forged_branch = format!(
        "z9hG4bKL{loop_hash}{}",
        old_branch_tail(0x1234_5678, secret)
    );
    let forged = wire(&format!(
        "SIP/2.0 200 OK
        Via: SIP/2.0/UDP {our_sent_by};branch={forged_branch}
        Via: SIP/2.0/UDP 127.0.0.1:{victim_port};branch=z9hG4bKvictim
        From: <sip:1001@example.test>;tag=forged-a
        To: <sip:1002@example.test>;tag=forged-b
        Call-ID: forged-2xx@attacker
        CSeq: 1 INVITE
        Contact: <sip:1002@127.0.0.1:{victim_port}>
        "
    ));
    let before = s.handle.core.messages_received();
    attacker
        .send_to(&forged, s.udp)
        .await
        .expect("send forged 2xx");
    processed_beyond(&s, before).await;
    // And the server is still answering after handling it.
    let options = wire(&format!(
        "OPTIONS sip:example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        From: <sip:probe@example.test>;tag=o
        To: <sip:example.test>
        Call-ID: after-forgery
        CSeq: 1 OPTIONS
        ",
        port = attacker.local_addr().expect("addr").port(),
        b = common::branch()
    ));
    attacker
        .send_to(&options, s.udp)
        .await
        .expect("send OPTIONS");
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), attacker.recv_from(&mut buf))
        .await
        .expect("OPTIONS answered")
        .expect("recv");
    assert!(buf[..n].starts_with(b"SIP/2.0 200"), "OPTIONS answered 200");

    let got = tokio::time::timeout(Duration::from_millis(300), victim.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "the forged 2xx was relayed to the victim: {}",
        String::from_utf8_lossy(&buf[..got.map(|r| r.map(|(n, _)| n).unwrap_or(0)).unwrap_or(0)])
    );
}

/// What an attacker sees of the ACK branch is stable (RFC 3261 §16.11: retransmissions of one
/// ACK carry one branch) and unrelated between two ACKs: the derived value is 128 bits of a
/// MAC, not a reversible mix of the sender's input.
#[tokio::test]
async fn relayed_ack_branches_are_stable_per_ack_and_unrelated_between_acks() {
    let s = server(CALLS).await;
    let (mut alice, mut bob, leg) = answered_call(&s, "attack-2").await;
    let ack = alice.in_dialog(&mut leg.clone(), "ACK", None);
    alice.ua.send(&ack).await;
    let first = top_branch(&bob.next_of("ACK").await).0;
    alice.ua.send(&ack).await;
    let again = top_branch(&bob.next_of("ACK").await).0;
    assert_eq!(first, again, "a retransmitted ACK keeps its branch");
    let other = alice.in_dialog(&mut leg.clone(), "ACK", None);
    alice.ua.send(&other).await;
    let second = top_branch(&bob.next_of("ACK").await).0;
    assert_ne!(first, second);
    assert_eq!(first.len(), "z9hG4bKL".len() + 8 + 32, "{first}");
    // Not a counter or xor step apart: the tails differ in about half of their bits.
    let a = u128::from_str_radix(&first[16..], 16).expect("hex");
    let b = u128::from_str_radix(&second[16..], 16).expect("hex");
    let differing = (a ^ b).count_ones();
    assert!(
        (24..=104).contains(&differing),
        "{differing} of 128 bits differ"
    );
}

/// A real branch of ours is no ticket either: the callee saw our Via on the INVITE it got; once
/// the transaction is over (Timer M, paused clock) it sends a stray 2xx with that Via on top
/// and a victim's Via below. The branch was minted for the caller's hop, so the 2xx is not
/// ours and goes nowhere.
#[tokio::test(start_paused = true)]
async fn a_real_branch_seen_by_the_callee_cannot_aim_a_2xx_elsewhere() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let invite = alice.invite("1002", "attack-3").await;
    let at = bob.next_of("INVITE").await;
    let our_via = at.headers.list(busylamp::sip::HeaderName::Via)[0].to_string();
    assert!(our_via.contains("branch=z9hG4bKL"), "{our_via}");
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    let mut leg = Phone::caller_leg(&invite, &ok);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    bob.next_of("ACK").await;
    // Past Timer M (64*T1): the client transaction is gone, a 2xx now takes the stray path.
    tokio::time::sleep(Duration::from_secs(40)).await;

    let victim = UdpSocket::bind("127.0.0.1:0").await.expect("victim socket");
    let victim_port = victim.local_addr().expect("addr").port();
    let forged = wire(&format!(
        "SIP/2.0 200 OK
        Via: {our_via}
        Via: SIP/2.0/UDP 127.0.0.1:{victim_port};branch=z9hG4bKvictim
        From: <sip:1001@example.test>;tag=forged-a
        To: <sip:1002@example.test>;tag=forged-b
        Call-ID: forged-3@attacker
        CSeq: 1 INVITE
        Contact: <sip:1002@127.0.0.1:{victim_port}>
        "
    ));
    let before = s.handle.core.messages_received();
    bob.ua.send(&forged).await;
    processed_beyond(&s, before).await;
    let r = alice
        .ua
        .request(&wire(&format!(
            "OPTIONS sip:example.test SIP/2.0
            Via: {}
            From: <sip:1001@example.test>;tag=o
            To: <sip:example.test>
            Call-ID: after-forgery-3
            CSeq: 1 OPTIONS
            ",
            alice.via()
        )))
        .await;
    assert_eq!(r.status, 200, "still answering after the forged 2xx");
    let mut buf = vec![0u8; 65536];
    let got = tokio::time::timeout(Duration::from_millis(300), victim.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "the forged 2xx was relayed to the victim: {}",
        String::from_utf8_lossy(&buf[..got.map(|r| r.map(|(n, _)| n).unwrap_or(0)).unwrap_or(0)])
    );
}
