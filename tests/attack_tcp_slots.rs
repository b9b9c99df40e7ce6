//! Issue 10, finding 7: one host must not hold every TCP slot, neither with CRLF keep-alives
//! (`server.max_tcp_connections_per_source`) nor by trickling a message one byte at a time
//! (`server.tcp_message_timeout`). Another host still connects and registers.

mod common;
use busylamp::sip::HeaderName;
use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Digest users 1001/1002; four connections per source, ten seconds per message.
fn config() -> String {
    BASE_CONFIG.replace(
        "data_dir = ",
        "max_tcp_connections_per_source = 4\ntcp_message_timeout = 10\ndata_dir = ",
    )
}

/// REGISTERs `user` with digest over the connection `t` and returns the final answer.
async fn register_over(t: &mut Tcp, user: &str, password: &str) -> u16 {
    let contact = format!("Contact: <sip:{user}@127.0.0.2:5070;transport=tcp>");
    let r = t.request(&register(user, 5070, user, 1, &contact)).await;
    assert_eq!(r.status, 401, "{}", r.reason);
    let ch = r.headers.get(HeaderName::WwwAuthenticate).unwrap();
    let auth = authorization(ch, user, password, "REGISTER", "sip:example.test", 1);
    let extra = format!("{contact}\n        Authorization: {auth}");
    t.request(&register(user, 5070, user, 2, &extra))
        .await
        .status
}

#[tokio::test(start_paused = true)]
async fn one_host_holding_its_connections_leaves_room_for_another_host() {
    let s = server(&config()).await;
    let transport = s.handle.transport();

    // The attacker (127.0.0.1) holds its four connections with keep-alives.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut t = Tcp::connect_from("127.0.0.1", s.tcp).await;
        assert!(t.ping().await, "a connection within the limit is served");
        held.push(t);
    }
    // A fifth is closed at once, without a byte sent, and counted.
    let mut fifth = Tcp::connect_from("127.0.0.1", s.tcp).await;
    assert!(
        fifth.closed_within(1000).await,
        "the fifth connection stays open"
    );
    assert_eq!(transport.refused_per_source(), 1);

    // Another host still connects and registers, while the attacker's connections live.
    let mut phone = Tcp::connect_from("127.0.0.2", s.tcp).await;
    assert_eq!(register_over(&mut phone, "1002", "other").await, 200);
    for t in &mut held {
        assert!(t.ping().await);
    }
    assert_eq!(transport.open_connections(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_trickled_message_is_cut_off_at_its_deadline_and_keep_alives_are_not_message_bytes() {
    let s = server(&config()).await;
    let transport = s.handle.transport();
    let mut trickle = Tcp::connect_from("127.0.0.1", s.tcp).await;
    let mut keepalive = Tcp::connect_from("127.0.0.1", s.tcp).await;
    assert!(trickle.ping().await && keepalive.ping().await);

    // One header byte every 3 s; the keep-alive connection pings as often.
    let message = register("1001", 5070, "slow", 1, "");
    let started = tokio::time::Instant::now();
    for (i, byte) in message.iter().take(4).enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        trickle.stream.write_all(&[*byte]).await.unwrap();
        assert!(keepalive.ping().await);
    }
    // 9 s after the first byte: still open (the deadline is 10 s from the first byte, and
    // later bytes do not move it).
    assert_eq!(transport.message_timeouts(), 0);
    assert!(
        trickle.closed_within(2_000).await,
        "closed after the deadline"
    );
    assert_eq!(transport.message_timeouts(), 1);
    let at = started.elapsed();
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(11)).contains(&at),
        "closed {at:?} after the first byte"
    );

    // Keep-alives alone never start the deadline: a connection that only pings is open
    // 40 s on (the idle timeout is 600 s).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(keepalive.ping().await, "a keep-alive connection was closed");
    }
    // A message sent whole on that connection is still answered.
    let r = keepalive
        .request(&register("1001", 5070, "whole", 1, ""))
        .await;
    assert_eq!(r.status, 401, "{}", r.reason);
    assert_eq!(transport.message_timeouts(), 1);

    // The trickler's slot is free again.
    assert_eq!(transport.open_connections(), 1);
}
