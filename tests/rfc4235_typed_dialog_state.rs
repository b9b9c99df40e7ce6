//! Typed in-process dialog state (issue 9 §3): the dialog tracker's publisher hands the
//! presence server a `DialogInfo` value, which is kept typed (also on disk, and across a
//! restart) and rendered only when a NOTIFY leaves. A watcher gets the same bytes as from the
//! same state published as a document.

mod common;
use busylamp::presence::event::Pkg;
use busylamp::sip::body::dialog_info::{Dialog, DialogInfo, DialogState, Direction, DocState};
use busylamp::storage::PublicationBody;
use common::ua::*;
use common::*;

const OPEN: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
coalesce_ms = 0
# The presentities watched: a SUBSCRIBE for a user nobody knows is 404.
[[users]]
name = "1001"
password = "pw1001"
[[users]]
name = "1002"
password = "pw1002"
[[users]]
name = "1003"
password = "pw1003"
"#;

fn subscribe(port: u16, presentity: &str, call_id: &str) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:1009@example.test>;tag=t{call_id}
        To: <sip:{presentity}@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1009@127.0.0.1:{port}>
        Event: dialog
        Expires: 600
        ",
        b = branch()
    ))
}

fn ringing(entity: &str) -> DialogInfo {
    let mut d = Dialog::new("call-1", DialogState::Early);
    d.call_id = Some("c1@h".into());
    d.local_tag = Some("lt".into());
    d.remote_tag = Some("rt".into());
    d.direction = Some(Direction::Recipient);
    DialogInfo {
        entity: entity.into(),
        version: 3,
        state: DocState::Full,
        dialogs: vec![d],
    }
}

/// The first NOTIFY (idle), then the one after `publish`.
async fn lamp_after(s: &TestServer, presentity: &str, publish: impl FnOnce()) -> String {
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            presentity,
            &format!("typed-{presentity}"),
        ))
        .await;
    assert_eq!(r.status, 200);
    w.notify().await;
    publish();
    body(&w.notify().await)
}

#[tokio::test]
async fn typed_dialog_state_is_kept_typed_and_notified_as_the_same_document() {
    let s = server(OPEN).await;
    let pua = s.handle.core.pua.clone();
    let typed = lamp_after(&s, "1001", || {
        drop(pua.publish(
            "sip:1001@example.test",
            Pkg::Dialog,
            "dlg:1",
            ringing("sip:1001@example.test"),
            600,
        ));
    })
    .await;
    let bytes = lamp_after(&s, "1002", || {
        let xml = ringing("sip:1002@example.test").render(false);
        drop(pua.publish(
            "sip:1002@example.test",
            Pkg::Dialog,
            "dlg:2",
            xml.as_bytes(),
            600,
        ));
    })
    .await;
    assert!(typed.contains("<state>early</state>"), "{typed}");
    assert_eq!(typed.replace("1001@", "1002@"), bytes);
    let presence = &s.handle.core.presence;
    let (held, _) = presence
        .publication_body("sip:1001@example.test", Pkg::Dialog, "dlg:1")
        .unwrap();
    assert!(matches!(held, PublicationBody::Dialogs(_)), "{held:?}");
    // The snapshot API still gives the document.
    let (doc, _) = presence
        .publication("sip:1001@example.test", Pkg::Dialog, "dlg:1")
        .unwrap();
    assert_eq!(
        doc,
        ringing("sip:1001@example.test").render(false).into_bytes()
    );
}

#[tokio::test]
async fn typed_dialog_state_survives_a_restart_typed() {
    let cfg = busylamp::config::Config::from_toml(OPEN, "test.toml").unwrap();
    let store = std::sync::Arc::new(busylamp::storage::MemoryStore::new());
    let s = server_with_store(cfg.clone(), store.clone()).await;
    let d = s
        .handle
        .core
        .pua
        .publish(
            "sip:1001@example.test",
            Pkg::Dialog,
            "dlg:1",
            ringing("sip:1001@example.test"),
            600,
        )
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
    s.handle.shutdown().await;
    let s = server_with_store(cfg, store).await;
    let (held, _) = s
        .handle
        .core
        .presence
        .publication_body("sip:1001@example.test", Pkg::Dialog, "dlg:1")
        .expect("reloaded");
    assert_eq!(
        held,
        PublicationBody::from(ringing("sip:1001@example.test"))
    );
    let mut w = Ua::new(s.udp).await;
    let r = w.request(&subscribe(w.port(), "1001", "after")).await;
    assert_eq!(r.status, 200);
    assert!(body(&w.notify().await).contains("<state>early</state>"));
}

#[test]
fn typed_state_is_refused_for_packages_that_are_not_dialog_state() {
    let cfg = busylamp::config::Config::from_toml(OPEN, "test.toml").unwrap();
    let presence = busylamp::presence::Presence::new(
        &cfg,
        std::sync::Arc::new(busylamp::storage::MemoryStore::new()),
        Default::default(),
        busylamp::clock::Clock::new(),
        busylamp::ids::Ids::new().expect("OS RNG"),
        busylamp::transaction::BranchKey::random().expect("OS RNG"),
    );
    let e = presence
        .publish(
            "sip:1001@example.test",
            Pkg::Presence,
            "x",
            ringing("sip:1001@example.test"),
            600,
        )
        .unwrap_err();
    assert_eq!(
        e,
        busylamp::presence::PublishError::NotPublishable("presence")
    );
}
