//! Issue 11, item 6: after a `kill -9` and a restart, TCP phones are reached again without
//! registering anew (RFC 3261 §18.1.1 / §18.2.2): the real binary opens a new connection to
//! the address of each stored TCP flow, for the restart NOTIFY of a BLF lamp, for the NOTIFY
//! of a later change and for an INVITE to a phone. The phones listen where they connected
//! from, as many desk phones do. Loopback only, every wait bounded.

mod common;
use common::authed::Authed;
use common::binary::Busylamp;
use common::phone::Phone;
use common::ua::Ua;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill9_a_tcp_lamp_and_a_tcp_phone_are_reached_over_new_connections() {
    let mut b = Busylamp::with_tcp("tcp-reconnect", "");
    b.wait_ready().await;
    // TCP listens at the same address as UDP.
    let tcp = b.addr;
    // Bob's desk phone and a BLF lamp watching him, both on TCP.
    let (ua, bob_listens) = Ua::tcp_listening(tcp).await;
    let mut bob = Phone {
        ua,
        user: "1002".into(),
        name: "desk".into(),
    };
    bob.register().await;
    let (ua, lamp_listens) = Ua::tcp_listening(tcp).await;
    let mut lamp = Authed::with(ua, "1003", "unused-trusted");
    let r = lamp.subscribe("1002", "dialog", "blf-kill9", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    lamp.ua.notify().await;

    b.kill9();
    b.start();
    b.wait_ready().await;

    // The restart's full-state NOTIFY finds the lamp over a connection the server opened.
    lamp.ua.accept_tcp(&lamp_listens).await;
    let n = lamp.ua.notify().await;
    assert_eq!(n.method, "NOTIFY");
    // A call to Bob, who has not registered again: the INVITE comes over a new connection.
    let mut alice = Phone::registered(b.addr, "1001", "a").await;
    alice.invite("1002", "after-kill9").await;
    bob.ua.accept_tcp(&bob_listens).await;
    let invite = bob.next_of("INVITE").await;
    bob.reply(&invite, 200, "desk").await;
    assert_eq!(
        alice.final_for("after-kill9").await.status,
        200,
        "{}",
        b.log_text()
    );
    // And the lamp sees the call.
    let n = lamp
        .ua
        .notify_until(|body| body.contains("confirmed"))
        .await;
    assert_eq!(n.method, "NOTIFY");
}
