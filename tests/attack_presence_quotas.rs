//! Issue 10 finding 3, presence side: one authenticated user cannot deny presence service to
//! the others. A user's subscriptions and publications are capped
//! (`presence.max_subscriptions_per_user`, `presence.max_publications_per_user`), each refusal
//! a `403` naming the limit, its key and the user; a colleague still subscribes to the same
//! presentity and publishes; a place comes back when a subscription ends, and the count
//! survives a restart. A SUBSCRIBE for a user nobody knows is `404` and holds nothing.

mod common;
use busylamp::config::Config;
use busylamp::storage::MemoryStore;
use common::authed::Authed;
use common::*;
use std::sync::Arc;

const QUOTA: usize = 10;

fn config() -> Config {
    Config::from_toml(
        &format!(
            r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[presence]
coalesce_ms = 0
max_subscriptions_per_user = {QUOTA}
max_publications_per_user = 3
# Room for one user's quota and a little more: without the quota one user fills it.
max_watchers_per_presentity = {watchers}
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
[[users]]
name = "1003"
password = "third"
"#,
            watchers = QUOTA + 2
        ),
        "quotas.toml",
    )
    .unwrap()
}

#[tokio::test]
async fn one_user_at_its_subscription_quota_is_refused_403_while_a_colleague_still_subscribes() {
    let store = Arc::new(MemoryStore::new());
    let s = server_with_store(config(), store.clone()).await;
    let mut mallory = Authed::new(s.udp, "1001", "secret").await;
    for i in 0..QUOTA {
        let r = mallory
            .subscribe("1002", "dialog", &format!("q-{i}"), "")
            .await;
        assert_eq!(r.status, 200, "{i}: {}", r.reason);
    }
    // Beyond the quota, whatever the presentity or package: 403 naming the limit.
    for (i, (presentity, event)) in [("1002", "dialog"), ("1003", "presence"), ("1002", "dialog")]
        .into_iter()
        .enumerate()
    {
        let r = mallory
            .subscribe(presentity, event, &format!("over-{i}"), "")
            .await;
        assert_eq!(r.status, 403, "{}", r.reason);
        assert!(
            r.reason.contains("presence.max_subscriptions_per_user")
                && r.reason.contains("sip:1001@example.test"),
            "the refusal names the limit, its key and the user: {}",
            r.reason
        );
    }
    let presence = &s.handle.core.presence;
    assert_eq!(
        presence.subscription_count(),
        QUOTA,
        "the refused hold nothing"
    );
    // Another user still gets the same presentity's watcher slots.
    let mut colleague = Authed::new(s.udp, "1003", "third").await;
    let r = colleague.subscribe("1002", "dialog", "colleague", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);

    // A subscription that ends gives its place back.
    let first_notify = mallory.ua.notify_unanswered().await;
    let to_tag = busylamp::sip::HasHeaders::headers(&first_notify)
        .get(busylamp::sip::HeaderName::From)
        .map(common::ua::tag_of)
        .unwrap();
    let call_id = busylamp::sip::HasHeaders::call_id(&first_notify)
        .unwrap()
        .to_string();
    let port = mallory.ua.port();
    let r = mallory
        .request("SUBSCRIBE", "sip:1002@example.test", |auth| {
            wire(&format!(
                "SUBSCRIBE sip:1002@example.test SIP/2.0
                Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
                Max-Forwards: 70
                From: <sip:1001@example.test>;tag=t-{call_id}
                To: <sip:1002@example.test>;tag={to_tag}
                Call-ID: {call_id}
                CSeq: 2 SUBSCRIBE
                Contact: <sip:1001@127.0.0.1:{port}>
                Event: dialog
                Expires: 0
                {auth}
                ",
                b = branch()
            ))
        })
        .await;
    assert_eq!(r.status, 200, "unsubscribe: {}", r.reason);
    let r = mallory.subscribe("1002", "dialog", "again", "").await;
    assert_eq!(r.status, 200, "a place came back: {}", r.reason);
    let r = mallory.subscribe("1002", "dialog", "again-over", "").await;
    assert_eq!(r.status, 403, "{}", r.reason);

    // After a restart the count is rebuilt from the stored subscriptions.
    s.handle.shutdown().await;
    let s = server_with_store(config(), store).await;
    assert_eq!(
        s.handle
            .core
            .presence
            .user_usage("sip:1001@example.test")
            .subscriptions,
        QUOTA
    );
    let mut mallory = Authed::new(s.udp, "1001", "secret").await;
    let r = mallory
        .subscribe("1002", "dialog", "after-restart", "")
        .await;
    assert_eq!(r.status, 403, "still at its quota: {}", r.reason);
    let mut other = Authed::new(s.udp, "1002", "other").await;
    let r = other.subscribe("1001", "dialog", "other-after", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
}

#[tokio::test]
async fn a_subscribe_for_a_user_nobody_knows_is_404_and_holds_nothing() {
    let s = server_with_store(config(), Arc::new(MemoryStore::new())).await;
    let mut mallory = Authed::new(s.udp, "1001", "secret").await;
    for (i, ghost) in ["ghost123", "9999", "1001x"].into_iter().enumerate() {
        let r = mallory
            .subscribe(ghost, "dialog", &format!("ghost-{i}"), "")
            .await;
        assert_eq!(r.status, 404, "{ghost}: {}", r.reason);
        assert!(r.reason.contains("No such user") || r.reason.contains("no such user"));
    }
    assert_eq!(s.handle.core.presence.subscription_count(), 0);
    assert_eq!(
        s.handle.core.presence.user_usage("sip:1001@example.test"),
        Default::default()
    );
    // A user of the server, registered or not, exists.
    let r = mallory.subscribe("1003", "presence", "real", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
}

#[tokio::test]
async fn one_user_at_its_publication_quota_is_refused_403_while_a_colleague_still_publishes() {
    let s = server_with_store(config(), Arc::new(MemoryStore::new())).await;
    let mut mallory = Authed::new(s.udp, "1001", "secret").await;
    let mut etags = Vec::new();
    for i in 0..3 {
        let r = mallory.publish(&format!("pub-{i}")).await;
        assert_eq!(r.status, 200, "{i}: {}", r.reason);
        etags.push(
            r.headers
                .get(busylamp::sip::HeaderName::SipEtag)
                .unwrap()
                .to_string(),
        );
    }
    let r = mallory.publish("pub-over").await;
    assert_eq!(r.status, 403, "{}", r.reason);
    assert!(
        r.reason.contains("presence.max_publications_per_user")
            && r.reason.contains("sip:1001@example.test"),
        "{}",
        r.reason
    );
    assert_eq!(s.handle.core.presence.publication_count(), 3);
    let mut colleague = Authed::new(s.udp, "1002", "other").await;
    let r = colleague.publish("colleague").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // A removed publication gives its place back.
    let r = mallory.unpublish("pub-0", &etags[0]).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let r = mallory.publish("pub-again").await;
    assert_eq!(r.status, 200, "{}", r.reason);
}
