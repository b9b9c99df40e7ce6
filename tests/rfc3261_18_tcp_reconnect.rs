//! RFC 3261 §18.1.1 / §18.2.2: when the connection of a TCP phone is gone (it closed it, or
//! we restarted), a request for it opens a new connection to its flow's address instead of
//! failing until the phone registers again: calls (the proxy's branch) and NOTIFYs alike.

mod common;
use common::authed::Authed;
use common::phone::Phone;
use common::ua::Ua;
use common::*;

#[tokio::test]
async fn rfc3261_18_1_1_a_call_and_a_notify_open_a_new_connection_to_a_tcp_phone() {
    let s = server(TRUSTED).await;
    // Bob's desk phone on TCP, listening where it connects from; and a BLF lamp watching
    // him, also on TCP.
    let (ua, bob_listens) = Ua::tcp_listening(s.tcp).await;
    let mut bob = Phone {
        ua,
        user: "1002".into(),
        name: "desk".into(),
    };
    bob.register().await;
    let (ua, lamp_listens) = Ua::tcp_listening(s.tcp).await;
    let mut lamp = Authed::with(ua, "1003", "unused-trusted");
    let r = lamp.subscribe("1002", "dialog", "blf-tcp", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    lamp.ua.notify().await;
    // Both connections close (the server saw each end: it closed its side).
    bob.ua.close_tcp().await;
    lamp.ua.close_tcp().await;
    assert_eq!(s.handle.transport().open_connections(), 0);

    // A call to Bob: the server connects to his phone, which has not registered again.
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    alice.invite("1002", "tcp-reconnect").await;
    bob.ua.accept_tcp(&bob_listens).await;
    let invite = bob.next_of("INVITE").await;
    bob.reply(&invite, 200, "desk").await;
    assert_eq!(alice.final_for("tcp-reconnect").await.status, 200);
    // The lamp hears of the call over a connection the server opened too.
    lamp.ua.accept_tcp(&lamp_listens).await;
    let n = lamp.ua.notify_until(|b| b.contains("confirmed")).await;
    assert_eq!(n.method, "NOTIFY");
    assert_eq!(s.handle.transport().connects(), 2);
    assert_eq!(s.handle.transport().connect_failures(), 0);
}

#[tokio::test]
async fn rfc3261_18_1_1_no_connection_is_opened_beyond_max_tcp_connections() {
    // One connection at most: the caller's own holds it, so the branch to Bob fails at once.
    let s = server(&TRUSTED.replace("data_dir = ", "max_tcp_connections = 1\ndata_dir = ")).await;
    let (ua, _bob_listens) = Ua::tcp_listening(s.tcp).await;
    let mut bob = Phone {
        ua,
        user: "1002".into(),
        name: "desk".into(),
    };
    bob.register().await;
    bob.ua.close_tcp().await;
    let mut alice = Phone::new_tcp(s.tcp, "1001", "a").await;
    alice.register().await;
    alice.invite("1002", "over-the-limit").await;
    let r = alice.final_for("over-the-limit").await;
    assert_eq!(r.status, 480, "{}", r.reason);
    assert_eq!(s.handle.transport().connects(), 0);
}
