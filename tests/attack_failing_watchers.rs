//! Issue 10 finding 3 (failing watchers): subscriptions whose NOTIFYs are never answered
//! must not pin the client transaction table. Each holds at most one NOTIFY in flight (a
//! change meanwhile waits for its answer or timeout), one user holds at most its quota of
//! subscriptions (`presence.max_subscriptions_per_user`), and of those at most
//! `presence.max_failing_watchers_per_user` failing at once (beyond it the one failing
//! longest is ended). So a later call and a new BLF subscription still work, also after a
//! restart, where every stored subscription is sent its state again.

mod common;
use busylamp::config::Config;
use busylamp::presence::event::Pkg;
use busylamp::sip::HasHeaders;
use busylamp::storage::MemoryStore;
use common::authed::Authed;
use common::phone::Phone;
use common::ua::Ua;
use common::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn config(extra_presence: &str) -> Config {
    Config::from_toml(
        &format!(
            r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
# The smallest table allowed: what one user could fill before.
max_transactions = 1000
# Off: these tests prove the quotas and the transaction table hold on their own, with the
# attacker and the honest lamp on one address (the rate limit has attack_subscribe_flood.rs).
rate_limit_per_source = 0
[auth]
# The phones that call are on 127.0.0.2; the attacker on 127.0.0.1 authenticates.
trusted = ["127.0.0.2/32"]
trusted_for = ["calls", "register"]
[presence]
coalesce_ms = 0
{extra_presence}
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
[[users]]
name = "1003"
password = "third"
"#
        ),
        "failing.toml",
    )
    .unwrap()
}

/// A call from `from` to `to` (phones on 127.0.0.2; `to` registers first) reaches the
/// callee, whose answer reaches the caller.
async fn a_call_gets_through(s: &TestServer, from: &str, to: &str, call_id: &str) {
    let mut callee = Phone::new_at("127.0.0.2", s.udp, to, &format!("callee-{call_id}")).await;
    callee.register().await;
    let mut caller = Phone::new_at("127.0.0.2", s.udp, from, &format!("caller-{call_id}")).await;
    caller.invite(to, call_id).await;
    let inv = callee.next_of("INVITE").await;
    callee.reply(&inv, 486, "busy").await;
    assert_eq!(caller.final_of("INVITE").await.status, 486);
}

/// A new BLF subscription of 1003 to `presentity` gets its first NOTIFY.
async fn a_new_blf_subscription_is_notified(s: &TestServer, presentity: &str, call_id: &str) {
    let mut w = Authed::new(s.udp, "1003", "third").await;
    let r = w.subscribe(presentity, "dialog", call_id, "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = w.ua.notify_unanswered_within(5000).await;
    assert_eq!(n.method, "NOTIFY");
}

#[tokio::test]
async fn watchers_that_answer_nothing_cannot_pin_the_transaction_table_nor_after_a_restart() {
    let store = Arc::new(MemoryStore::new());
    let s = server_with_store(config(""), store.clone()).await;
    // Over TCP its SUBSCRIBEs' server transactions end at once (RFC 3261 §17.2.2, Timer J
    // is 0): only our NOTIFYs, which it never answers, stay in the tables for Timer F.
    let mut mallory = Authed::with(Ua::tcp(s.tcp).await, "1001", "secret");
    let mut statuses = Vec::new();
    for i in 0..1_100 {
        let r = mallory
            .subscribe("1002", "dialog", &format!("pin-{i}"), "")
            .await;
        statuses.push(r.status);
    }
    // Everyone else is still served: a call, and a new lamp.
    a_call_gets_through(&s, "1003", "1002", "call-after-attack").await;
    a_new_blf_subscription_is_notified(&s, "1001", "blf-after-attack").await;
    let held = statuses.iter().filter(|&&st| st == 200).count();
    assert_eq!(held, 200, "one user holds its quota of subscriptions");
    assert!(statuses[200..].iter().all(|&st| st == 403));
    let in_flight = s.handle.core.in_flight();
    assert!(
        in_flight.client_transactions <= held + 4,
        "at most one NOTIFY in flight per subscription: {in_flight:?}"
    );

    // After a restart every stored subscription is sent its state again (the attacker's
    // connection is gone): the table still has room.
    s.handle.shutdown().await;
    drop(mallory);
    let s = server_with_store(config(""), store).await;
    a_new_blf_subscription_is_notified(&s, "1002", "blf-after-restart").await;
    // (1002's phone of the first call is still registered, and silent: call 1003 now)
    a_call_gets_through(&s, "1002", "1003", "call-after-restart").await;
    let in_flight = s.handle.core.in_flight();
    assert!(in_flight.client_transactions <= held + 4, "{in_flight:?}");
}

#[tokio::test(start_paused = true)]
async fn one_notify_in_flight_per_subscription_and_failing_watchers_are_bounded_per_user() {
    const SUBS: usize = 40;
    const MAX_FAILING: usize = 4;
    let s = server_with_store(
        config(&format!("max_failing_watchers_per_user = {MAX_FAILING}")),
        Arc::new(MemoryStore::new()),
    )
    .await;
    let presence = s.handle.core.presence.clone();
    // A colleague's lamp that answers its NOTIFYs.
    let mut colleague = Authed::new(s.udp, "1003", "third").await;
    let r = colleague.subscribe("1002", "dialog", "healthy", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    colleague.ua.notify().await;
    // The attacker's subscriptions, whose NOTIFYs it never answers.
    let mut mallory = Authed::new(s.udp, "1001", "secret").await;
    for i in 0..SUBS {
        let r = mallory
            .subscribe("1002", "dialog", &format!("fail-{i}"), "")
            .await;
        assert_eq!(r.status, 200, "{}", r.reason);
    }
    let mut seen: HashSet<(String, u32)> = HashSet::new();
    while seen.len() < SUBS {
        let n = mallory.ua.notify_unanswered().await;
        seen.insert((n.call_id().unwrap().to_string(), n.cseq().unwrap().seq));
    }
    // A change while they are all unanswered: the colleague hears of it, the attacker's
    // subscriptions owe it (no second NOTIFY in flight), only retransmissions arrive.
    presence
        .publish(
            "sip:1002@example.test",
            Pkg::Dialog,
            "call",
            b"<?xml version=\"1.0\"?><dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"0\" state=\"full\" entity=\"sip:1002@example.test\"><dialog id=\"d1\"><state>early</state></dialog></dialog-info>".to_vec(),
            600,
        )
        .unwrap();
    colleague
        .ua
        .notify_until(|b| b.contains("<state>early</state>"))
        .await;
    while let Some(n) = mallory.ua.next_request_within(200).await {
        let key = (n.call_id().unwrap().to_string(), n.cseq().unwrap().seq);
        assert!(
            seen.contains(&key),
            "a second NOTIFY while the first is unanswered: {key:?}"
        );
    }
    let in_flight = s.handle.core.in_flight();
    assert!(in_flight.client_transactions <= SUBS + 4, "{in_flight:?}");

    // Timer F: every one of them failed. Beyond the bound, the ones failing longest end.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let usage = presence.user_usage("sip:1001@example.test");
    assert_eq!(
        (usage.subscriptions, usage.failing),
        (MAX_FAILING, MAX_FAILING),
        "presence.max_failing_watchers_per_user bounds what a user's failing watchers hold"
    );
    assert_eq!(presence.subscription_count(), MAX_FAILING + 1);
    assert!(s.handle.core.in_flight().client_transactions <= MAX_FAILING + 1);
    // The colleague's lamp still follows.
    presence
        .publish(
            "sip:1002@example.test",
            Pkg::Dialog,
            "call",
            b"".to_vec(),
            0,
        )
        .unwrap();
    colleague
        .ua
        .notify_until(|b| !b.contains("id=\"d1\""))
        .await;
}
