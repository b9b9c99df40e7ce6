//! Calls across a `kill -9` of the real binary (DESIGN: "dialogs that cannot still be alive
//! are published terminated"): a call in progress is neither forgotten (the lamp stays lit,
//! the BYE still routes, then the lamp goes dark) nor left lit when it ended while the server
//! was down (the in-dialog OPTIONS probe after the restart gets 481 and the lamp goes dark).
//! Loopback only; each wait is bounded.

mod common;

use busylamp::sip::body::dialog_info::DialogState;
use busylamp::sip::Request;
use common::binary::Busylamp;
use common::phone::{Leg, Phone};
use common::watcher::{dark, lit, Watcher};
use std::time::Duration;

const CONFIG: &str = r#"
[presence]
coalesce_ms = 0
[[users]]
name = "1001"
password = "a"
[[users]]
name = "1002"
password = "b"
"#;

/// Alice calls Bob, Bob answers, Alice ACKs; the watcher sees the call confirmed.
async fn answered_call(alice: &mut Phone, bob: &mut Phone, lamp: &mut Watcher) -> (Leg, Leg) {
    let invite = alice.invite("1002", "restart-call").await;
    let at = bob.ua.next_request().await;
    assert_eq!(at.method, "INVITE");
    bob.reply(&at, 180, "b1").await;
    bob.reply(&at, 200, "b1").await;
    let ok = alice.ua.response().await;
    assert_eq!(ok.status, 200);
    let mut leg = Phone::caller_leg(&invite, &ok);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    assert_eq!(bob.ua.next_request().await.method, "ACK");
    lamp.until_states("confirmed", lit).await;
    (leg, Phone::callee_leg(&at, "b1"))
}

/// Answers the restarted server's in-dialog OPTIONS probe with `status`; returns the next
/// request that is not a probe, if one comes within `ms`.
async fn answer_probes(phone: &mut Phone, status: u16, ms: u64) -> Option<Request> {
    loop {
        let r = phone.ua.next_request_within(ms).await?;
        if r.method == "OPTIONS" {
            phone.reply(&r, status, "probe").await;
            continue;
        }
        return Some(r);
    }
}

async fn office(server: &Busylamp) -> (Phone, Phone, Watcher) {
    let alice = Phone::registered(server.addr, "1001", "a").await;
    let bob = Phone::registered(server.addr, "1002", "desk").await;
    let lamp = Watcher::new(server.addr, "1002").await;
    (alice, bob, lamp)
}

/// The call record is written without holding up the call (group commit, 10 ms): give it
/// a moment before the kill.
async fn let_it_flush() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn restart_in_the_middle_of_a_call_keeps_it_and_the_bye_still_ends_it() {
    let mut server = Busylamp::new("call-mid", CONFIG);
    server.wait_ready().await;
    let (mut alice, mut bob, mut lamp) = office(&server).await;
    let (mut leg, _) = answered_call(&mut alice, &mut bob, &mut lamp).await;
    let_it_flush().await;

    server.kill9();
    server.start();
    server.wait_ready().await;
    // The watcher gets the restart's full state: still lit.
    lamp.until_states("confirmed after restart", lit).await;
    // Both phones say the call is alive.
    assert!(answer_probes(&mut alice, 200, 1500).await.is_none());
    assert!(answer_probes(&mut bob, 200, 500).await.is_none());
    assert!(
        lamp.ua.no_notify(500).await,
        "a live call must not change the lamp"
    );

    // The BYE routes through the restarted proxy and the lamp goes dark.
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let bye = answer_probes(&mut bob, 200, 5000)
        .await
        .expect("BYE reaches Bob");
    assert_eq!(bye.method, "BYE");
    bob.reply(&bye, 200, "b1").await;
    lamp.until_states("dark", dark).await;
}

#[tokio::test]
async fn call_ended_while_the_server_was_down_is_found_and_the_lamp_goes_dark() {
    let mut server = Busylamp::new("call-down", CONFIG);
    server.wait_ready().await;
    let (mut alice, mut bob, mut lamp) = office(&server).await;
    let (mut leg, _) = answered_call(&mut alice, &mut bob, &mut lamp).await;
    let_it_flush().await;

    server.kill9();
    // Alice hangs up while the proxy is down: her BYE goes nowhere, both phones forget it.
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    server.start();
    server.wait_ready().await;
    // The probes find the dialog gone (481 from both phones): the lamp goes dark.
    assert!(answer_probes(&mut alice, 481, 1500).await.is_none());
    assert!(answer_probes(&mut bob, 481, 500).await.is_none());
    lamp.until_states("dark", dark).await;
}

#[tokio::test]
async fn restart_while_ringing_then_answered_the_lamp_follows_the_answer() {
    let mut server = Busylamp::new("call-ringing", CONFIG);
    server.wait_ready().await;
    let (mut alice, mut bob, mut lamp) = office(&server).await;
    let invite = alice.invite("1002", "restart-ring").await;
    let at = bob.ua.next_request().await;
    bob.reply(&at, 180, "b1").await;
    lamp.until_states("early", |s| s.contains(&DialogState::Early))
        .await;
    let_it_flush().await;

    server.kill9();
    server.start();
    server.wait_ready().await;
    lamp.until_states("early after restart", |s| s.contains(&DialogState::Early))
        .await;
    // Bob answers now: the INVITE transaction is gone, the 2xx goes on statelessly and the
    // tracker still sees it.
    bob.reply(&at, 200, "b1").await;
    let ok = alice.ua.response().await;
    assert_eq!(ok.status, 200);
    lamp.until_states("confirmed", lit).await;
    let mut leg = Phone::caller_leg(&invite, &ok);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let bye = loop {
        let r = answer_probes(&mut bob, 200, 5000)
            .await
            .expect("BYE reaches Bob");
        if r.method == "BYE" {
            break r;
        }
    };
    bob.reply(&bye, 200, "b1").await;
    lamp.until_states("dark", dark).await;
}
