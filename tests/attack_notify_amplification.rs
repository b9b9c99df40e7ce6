//! Issue 10 finding 4: NOTIFY amplification. A subscriber names a victim in Record-Route
//! (or Contact); our NOTIFYs must still go back over the flow the SUBSCRIBE came from, never
//! to an address the subscriber chose, unless that first hop is a proxy in `[auth] trusted`.

mod common;
use busylamp::config::Config;
use busylamp::storage::MemoryStore;
use common::authed::Authed;
use common::ua::Ua;
use common::*;
use std::sync::Arc;
use tokio::net::UdpSocket;

const SUBSCRIPTIONS: usize = 200;

fn config(trusted: &str) -> Config {
    Config::from_toml(
        &format!(
            r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = [{trusted}]
trusted_for = ["calls"]
[presence]
coalesce_ms = 0
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
"#
        ),
        "amplification.toml",
    )
    .unwrap()
}

/// Datagrams that reach `sock` within `ms`.
async fn datagrams_within(sock: &UdpSocket, ms: u64) -> usize {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while tokio::time::timeout(
        std::time::Duration::from_millis(ms),
        sock.recv_from(&mut buf),
    )
    .await
    .is_ok()
    {
        n += 1;
    }
    n
}

#[tokio::test]
async fn subscribes_with_a_record_route_naming_a_victim_send_the_victim_nothing() {
    let s = server_with_store(config(""), Arc::new(MemoryStore::new())).await;
    let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let victim_port = victim.local_addr().unwrap().port();
    let mut mallory = Authed::new(s.udp, "1001", "secret").await;
    let mut notifies = 0;
    for i in 0..SUBSCRIPTIONS {
        // The victim in Record-Route and in Contact.
        let r = mallory
            .subscribe(
                "1002",
                if i % 2 == 0 { "dialog" } else { "presence" },
                &format!("amp-{i}"),
                &format!("Record-Route: <sip:127.0.0.1:{victim_port};lr>"),
            )
            .await;
        assert_eq!(r.status, 200, "{i}: {}", r.reason);
    }
    // Every subscription's NOTIFY came back to the subscriber's own socket: the server has
    // processed them all and sent what it was going to send.
    while notifies < SUBSCRIPTIONS {
        let n = mallory.ua.notify_unanswered().await;
        assert_eq!(
            busylamp::sip::HasHeaders::headers(&n)
                .get(busylamp::sip::HeaderName::Route)
                .map(|r| r.contains(&victim_port.to_string())),
            Some(true),
            "the NOTIFY carries the route set; it only does not follow it"
        );
        mallory.ua.answer(&n, 200).await;
        notifies += 1;
    }
    assert_eq!(s.handle.core.presence.subscription_count(), SUBSCRIPTIONS);
    assert_eq!(
        datagrams_within(&victim, 300).await,
        0,
        "the victim got our NOTIFYs"
    );
}

#[tokio::test]
async fn a_contact_on_another_host_is_not_followed_either() {
    let s = server_with_store(config(""), Arc::new(MemoryStore::new())).await;
    let victim = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let victim_addr = victim.local_addr().unwrap();
    let mut mallory = Authed::new(s.udp, "1001", "secret").await;
    let port = mallory.ua.port();
    let r = mallory
        .request("SUBSCRIBE", "sip:1002@example.test", |auth| {
            wire(&format!(
                "SUBSCRIBE sip:1002@example.test SIP/2.0
                Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
                Max-Forwards: 70
                From: <sip:1001@example.test>;tag=c1
                To: <sip:1002@example.test>
                Call-ID: amp-contact
                CSeq: 1 SUBSCRIBE
                Contact: <sip:1001@{victim_addr}>
                Event: dialog
                Expires: 3600
                {auth}
                ",
                b = branch()
            ))
        })
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = mallory.ua.notify().await;
    assert_eq!(n.method, "NOTIFY");
    assert_eq!(datagrams_within(&victim, 300).await, 0);
}

#[tokio::test]
async fn a_trusted_proxy_as_first_hop_is_followed() {
    // The proxy on 127.0.0.3 is trusted; the subscriber on 127.0.0.1 is not.
    let s = server_with_store(config("\"127.0.0.3/32\""), Arc::new(MemoryStore::new())).await;
    let mut proxy = Ua::bind("127.0.0.3", s.udp).await;
    let proxy_port = proxy.port();
    let mut watcher = Authed::new(s.udp, "1001", "secret").await;
    let r = watcher
        .subscribe(
            "1002",
            "dialog",
            "via-proxy",
            &format!("Record-Route: <sip:127.0.0.3:{proxy_port};lr>"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = proxy.notify().await;
    assert_eq!(n.method, "NOTIFY");
}
