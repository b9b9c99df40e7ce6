//! A call's lamp leaves as soon as the message that changed it is handled, not after the rest
//! of a burst of datagrams waiting behind that message. The lamp's NOTIFYs are sent in the
//! receive path (the express lane), where before they waited in the outbox until the receive
//! loop yielded: after up to 128 datagrams, milliseconds on a busy server (README
//! "Performance", "Calls and lamps").

mod common;

use common::phone::{Phone, CALLS};
use common::watcher::Watcher;
use common::{branch, server, wire};
use std::time::Duration;

/// Datagrams queued behind the 180: each is answered in the receive path.
const BURST: usize = 40;

#[tokio::test]
async fn rfc4235_the_early_notify_leaves_before_the_datagrams_queued_after_the_180() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let lamp = Watcher::new(s.udp, "1002").await;
    let _invite = alice.invite("1002", "burst-1").await;
    let at = bob.ua.next_request().await;
    assert_eq!(at.method, "INVITE");

    // The 180 and then a burst from the watcher's own socket, all in the server's socket
    // before it runs (this runtime has one thread and the sends do not yield): what reaches
    // the watcher's socket shows the order the server sent in.
    let sock = lamp.ua.into_udp_socket();
    let port = sock.local_addr().unwrap().port();
    bob.reply(&at, 180, "b1").await;
    for i in 0..BURST {
        let options = wire(&format!(
            "OPTIONS sip:example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
            From: <sip:1003@example.test>;tag=o{i}
            To: <sip:example.test>
            Call-ID: burst-options-{i}
            CSeq: 1 OPTIONS
            ",
            b = branch()
        ));
        sock.send_to(&options, s.udp).await.unwrap();
    }

    let mut buf = vec![0u8; 65536];
    let mut seen = Vec::new();
    while seen.len() < BURST + 1 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("the NOTIFY and every OPTIONS answered within 5 s")
            .unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let first = &seen[0];
    assert!(
        first.starts_with("NOTIFY ") && first.contains("early"),
        "the ringing lamp is the first message after the 180, not behind {BURST} answers: {}",
        first.lines().next().unwrap_or("")
    );
    assert_eq!(
        seen[1..]
            .iter()
            .filter(|m| m.starts_with("SIP/2.0 200") && m.contains("OPTIONS"))
            .count(),
        BURST,
        "every datagram of the burst answered, after the lamp"
    );
}
