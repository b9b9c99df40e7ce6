//! Issue 10 finding 1 (presence side): the `call-id`, `local-tag` and `remote-tag` of a
//! watched call (what directed pickup needs, and what let an outsider act inside the call)
//! go only to watchers allowed to pick up: `presence.dialog_ids_to` = "same_domain" (the
//! default: users of our domain), "everyone" or "nobody". The others get the same lamp
//! without them.

mod common;
use busylamp::config::Config;
use busylamp::storage::MemoryStore;
use common::authed::Authed;
use common::ua::{body, Ua};
use common::*;
use std::sync::Arc;

const CALL_ID: &str = "a84b4c76e66710@192.0.2.5";

fn config(auth: &str, dialog_ids_to: Option<&str>) -> Config {
    let ids = dialog_ids_to
        .map(|v| format!("dialog_ids_to = \"{v}\"\n"))
        .unwrap_or_default();
    Config::from_toml(
        &format!(
            r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
{auth}
[presence]
coalesce_ms = 0
other_domains = "allow"
{ids}
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
"#
        ),
        "ids.toml",
    )
    .unwrap()
}

/// 1002's call, as its phone (or the dialog publisher) publishes it.
fn ringing() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:1002@example.test">
  <dialog id="call-1" call-id="{CALL_ID}" local-tag="1928301774" remote-tag="a6c85cf" direction="recipient">
    <state>early</state>
    <remote><identity>sip:1001@example.test</identity><target uri="sip:1001@192.0.2.20:5062"/></remote>
  </dialog>
</dialog-info>
"#
    )
}

fn publish(s: &TestServer) {
    s.handle
        .core
        .presence
        .publish(
            "sip:1002@example.test",
            busylamp::presence::event::Pkg::Dialog,
            "test-call",
            ringing().into_bytes(),
            600,
        )
        .unwrap();
}

/// An unauthenticated (open mode) BLF subscription from `watcher` (an AOR) to 1002.
async fn blf(s: &TestServer, watcher: &str, call_id: &str) -> Ua {
    let mut ua = Ua::new(s.udp).await;
    let r = ua
        .request(&wire(&format!(
            "SUBSCRIBE sip:1002@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
            Max-Forwards: 70
            From: <{watcher}>;tag=w-{call_id}
            To: <sip:1002@example.test>
            Call-ID: {call_id}
            CSeq: 1 SUBSCRIBE
            Contact: <sip:w@127.0.0.1:{p}>
            Event: dialog
            Expires: 600
            ",
            p = ua.port(),
            b = branch()
        )))
        .await;
    assert_eq!(r.status, 200, "{watcher}: {}", r.reason);
    ua
}

/// The document of the next NOTIFY that shows the call.
async fn call_document(ua: &mut Ua) -> String {
    body(&ua.notify_until(|b| b.contains("id=\"call-1\"")).await)
}

fn has_ids(doc: &str) -> bool {
    let ids = [
        doc.contains(&format!("call-id=\"{CALL_ID}\"")),
        doc.contains("local-tag=\"1928301774\""),
        doc.contains("remote-tag=\"a6c85cf\""),
    ];
    assert!(
        ids.iter().all(|x| *x) || ids.iter().all(|x| !*x),
        "all or none: {doc}"
    );
    ids[0]
}

#[tokio::test]
async fn by_default_only_watchers_of_our_domain_get_the_dialog_ids() {
    let s = server_with_store(
        config("mode = \"open\"", None),
        Arc::new(MemoryStore::new()),
    )
    .await;
    let mut colleague = blf(&s, "sip:1001@example.test", "ids-colleague").await;
    let mut outsider = blf(&s, "sip:eve@evil.test", "ids-outsider").await;
    publish(&s);
    let doc = call_document(&mut colleague).await;
    assert!(has_ids(&doc), "a user of our domain may pick up: {doc}");
    assert!(
        doc.contains("192.0.2.20:5062"),
        "with the caller's target: {doc}"
    );
    let doc = call_document(&mut outsider).await;
    assert!(!has_ids(&doc), "an outsider sees the lamp only: {doc}");
    assert!(!doc.contains("192.0.2.20"), "nor a phone's address: {doc}");
    assert!(doc.contains("<state>early</state>"), "{doc}");
}

#[tokio::test]
async fn everyone_and_nobody() {
    for (setting, colleague_ids, outsider_ids) in
        [("everyone", true, true), ("nobody", false, false)]
    {
        let s = server_with_store(
            config("mode = \"open\"", Some(setting)),
            Arc::new(MemoryStore::new()),
        )
        .await;
        let mut colleague = blf(&s, "sip:1001@example.test", "c").await;
        let mut outsider = blf(&s, "sip:eve@evil.test", "o").await;
        publish(&s);
        assert_eq!(
            has_ids(&call_document(&mut colleague).await),
            colleague_ids,
            "{setting}"
        );
        assert_eq!(
            has_ids(&call_document(&mut outsider).await),
            outsider_ids,
            "{setting}"
        );
    }
}

#[tokio::test]
async fn an_authenticated_user_of_our_domain_gets_them_after_a_restart_too() {
    let store = Arc::new(MemoryStore::new());
    let s = server_with_store(config("", None), store.clone()).await;
    let mut w = Authed::new(s.udp, "1001", "secret").await;
    let r = w.subscribe("1002", "dialog", "authed-ids", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    publish(&s);
    assert!(has_ids(&call_document(&mut w.ua).await));
    s.handle.shutdown().await;
    let s = server_with_store(config("", None), store).await;
    let mut ua = w.ua;
    // The restart NOTIFY carries the stored call.
    let doc = call_document(&mut ua).await;
    assert!(has_ids(&doc), "{doc}");
    drop(s);
}
