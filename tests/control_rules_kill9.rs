//! A standing approval made over the real control socket survives `kill -9` of the real
//! binary: after the restart the watcher's next SUBSCRIBE is active at once, and the rule is
//! still listed (and a block made after it refuses with 403).

mod common;

use busylamp::control::client::Client;
use busylamp::sip::HeaderName;
use common::binary::Busylamp;
use common::ua::Ua;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const EXTRA: &str = r#"
[presence]
other_domains = "confirm"
[[users]]
name = "1001"
password = "secret"
"#;

const EVE: &str = "sip:eve@other.test";

/// The control socket of `b` (in its data directory), once it exists: at most 2,000 polls
/// 10 ms apart.
async fn socket_of(b: &Busylamp) -> PathBuf {
    let path = b
        .config_path()
        .parent()
        .unwrap()
        .join("data")
        .join("control.sock");
    for _ in 0..2000 {
        if let Ok(c) = Client::connect(&path) {
            drop(c);
            return path;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no control socket at {}\n{}", path.display(), b.log_text());
}

/// Eve subscribes to 1001's presence: the answer's status and the first NOTIFY's
/// Subscription-State.
async fn eve_watches(b: &Busylamp, call_id: &str) -> (u16, String) {
    let mut ua = Ua::new(b.addr).await;
    let sub = wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={br}
        Max-Forwards: 70
        From: <{EVE}>;tag=e-{call_id}
        To: <sip:1001@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:eve@127.0.0.1:{p}>
        Event: presence
        Expires: 600
        ",
        p = ua.port(),
        br = branch()
    ));
    let r = ua.request(&sub).await;
    if r.status != 200 {
        return (r.status, String::new());
    }
    let n = ua.notify().await;
    let state = n
        .headers
        .get(HeaderName::SubscriptionState)
        .unwrap_or("")
        .to_string();
    (200, state)
}

#[tokio::test]
async fn a_standing_approval_over_the_socket_survives_kill_9() {
    let mut b = Busylamp::new("ctlapi-rules", EXTRA);
    b.wait_ready().await;
    let sock = socket_of(&b).await;
    let (_, state) = eve_watches(&b, "k9-eve-1").await;
    assert!(state.starts_with("pending"), "{state}");

    let mut client = Client::connect(&sock).unwrap();
    client.set_timeout(Some(Duration::from_secs(10)));
    let rule = client
        .call(
            "approve",
            json!({"presentity": "sip:1001@example.test", "watcher": EVE, "event": "presence"}),
        )
        .unwrap();
    assert_eq!(rule["changed"], 1, "{rule}");
    drop(client);

    // The answer came after the rule was on disk: kill -9 right away loses nothing.
    b.kill9();
    b.start();
    b.wait_ready().await;
    let sock = socket_of(&b).await;
    let (_, state) = eve_watches(&b, "k9-eve-2").await;
    assert!(
        state.starts_with("active"),
        "approved before the kill: {state}"
    );
    let mut client = Client::connect(&sock).unwrap();
    client.set_timeout(Some(Duration::from_secs(10)));
    let rules = client.call("rules", json!({})).unwrap();
    assert_eq!(rules["total"], 1, "{rules}");
    assert_eq!(rules["items"][0]["id"], rule["id"]);

    // A block for the same watcher and package replaces the approval.
    client
        .call(
            "block",
            json!({"presentity": "sip:1001@example.test", "watcher": EVE, "event": "presence"}),
        )
        .unwrap();
    assert_eq!(client.call("rules", json!({})).unwrap()["total"], 1);
    let (status, _) = eve_watches(&b, "k9-eve-3").await;
    assert_eq!(status, 403);
}
