//! Presence from registrations (pua_usrloc): raw REGISTERs to the in-process server, and a
//! `presence` watcher that sees `open` with one tuple per contact (never the contact's
//! address), fewer tuples as contacts go, `closed` when the last one is removed or expires (paused clock), the users filter,
//! and the published state brought in line with the bindings at start-up.

mod common;
use busylamp::config::Config;
use busylamp::presence::event::Pkg;
use busylamp::pua::usrloc::SOURCE_ID;
use busylamp::sip::body::pidf;
use busylamp::storage::{BindingStore, MemoryStore, PresenceStore, PresenceWrite};
use common::ua::*;
use common::*;
use std::sync::Arc;
use std::time::Duration;

const CONFIG: &str = r#"
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
[[users]]
name = "2001"
password = "pw2001"
[[users]]
name = "2002"
password = "pw2002"
"#;

const AOR: &str = "sip:1001@example.test";

fn subscribe(port: u16, presentity: &str, call_id: &str) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:1002@example.test>;tag=w{call_id}
        To: <sip:{presentity}@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1002@127.0.0.1:{port}>
        Event: presence
        Expires: 3600
        ",
        b = branch()
    ))
}

/// A watcher of `presentity` that has had its first (closed) NOTIFY.
async fn watcher(s: &TestServer, presentity: &str) -> Ua {
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(w.port(), presentity, &format!("w-{presentity}")))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = w.notify().await;
    assert!(body(&n).contains("<basic>closed</basic>"), "{}", body(&n));
    w
}

/// (tuple id, basic, contact, priority attribute) of each tuple of a PIDF body.
fn tuples(body: &str) -> Vec<(String, String, String)> {
    let doc = pidf::parse(body.as_bytes()).expect("valid PIDF");
    doc.tuples()
        .map(|t| {
            (
                t.id().to_string(),
                t.basic()
                    .map(|b| b.as_str().to_string())
                    .unwrap_or_default(),
                t.contact().unwrap_or_default(),
            )
        })
        .collect()
}

async fn reg(c: &Udp, user: &str, cseq: u32, contacts: &str) -> u16 {
    let r = c
        .request(&register(
            user,
            c.port(),
            &format!("reg-{user}"),
            cseq,
            &format!("Contact: {contacts}"),
        ))
        .await;
    r.status
}

#[tokio::test]
async fn register_two_contacts_open_two_tuples_then_one_then_closed() {
    let s = server(CONFIG).await;
    let mut w = watcher(&s, "1001").await;
    let c = Udp::new(s.udp).await;
    assert_eq!(
        reg(
            &c,
            "1001",
            1,
            "<sip:1001@127.0.0.1:5071>;q=0.5;expires=600, <sip:1001@127.0.0.1:5072>;expires=600"
        )
        .await,
        200
    );
    let n = w
        .notify_until(|b| b.contains("<basic>open</basic>") && tuples(b).len() == 2)
        .await;
    let b = body(&n);
    let t = tuples(&b);
    // Watchers never see a phone's address (issue 10 finding 8). Highest q first: the
    // tuple left when the q=0.5 contact goes (below) is the first one here.
    assert!(t.iter().all(|x| x.2.is_empty()), "no <contact>: {b}");
    assert!(!b.contains("127.0.0.1"), "no address: {b}");
    assert!(t.iter().all(|x| x.1 == "open"));
    assert!(b.contains("entity=\"sip:1001@example.test\""), "{b}");
    let kept_id = t[0].0.clone();

    // A refresh that changes nothing in the document sends no NOTIFY.
    let mark = s.mark();
    assert_eq!(
        reg(
            &c,
            "1001",
            2,
            "<sip:1001@127.0.0.1:5071>;q=0.5;expires=600, <sip:1001@127.0.0.1:5072>;expires=600"
        )
        .await,
        200
    );
    s.assert_processed_then_silent(mark, 1, w.no_notify(300), "unchanged document: no NOTIFY")
        .await;

    // One contact removed: one tuple, the same id as before.
    assert_eq!(
        reg(&c, "1001", 3, "<sip:1001@127.0.0.1:5071>;expires=0").await,
        200
    );
    let n = w.notify_until(|b| tuples(b).len() == 1).await;
    let t = tuples(&body(&n));
    assert_eq!(t[0].0, kept_id, "stable tuple id");
    assert_eq!(t[0].1, "open");
    assert_eq!(t[0].2, "", "no <contact>");

    // The last one removed: closed.
    assert_eq!(
        reg(&c, "1001", 4, "<sip:1001@127.0.0.1:5072>;expires=0").await,
        200
    );
    let n = w
        .notify_until(|b| b.contains("<basic>closed</basic>"))
        .await;
    assert!(!body(&n).contains("<basic>open</basic>"), "{}", body(&n));
    let (published, _) = s
        .handle
        .core
        .presence
        .publication(AOR, Pkg::Presence, SOURCE_ID)
        .expect("closed is published");
    let t = tuples(&String::from_utf8(published).unwrap());
    assert_eq!(
        t,
        vec![(kept_id, "closed".into(), String::new())],
        "closed keeps the last tuple id, so no stale open tuple survives a merge by id"
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_binding_expiring_publishes_closed_and_the_publication_outlives_it_briefly() {
    let s = server(CONFIG).await;
    let mut w = watcher(&s, "1001").await;
    let c = Udp::new(s.udp).await;
    assert_eq!(
        reg(&c, "1001", 1, "<sip:1001@127.0.0.1:5071>;expires=60").await,
        200
    );
    w.notify_until(|b| b.contains("<basic>open</basic>")).await;
    let (_, expires_at) = s
        .handle
        .core
        .presence
        .publication(AOR, Pkg::Presence, SOURCE_ID)
        .unwrap();
    let binding = s.handle.core.registrar.lookup(AOR)[0].expires_at;
    assert_eq!(expires_at, binding + busylamp::pua::usrloc::MARGIN);

    tokio::time::sleep(Duration::from_secs(55)).await;
    assert!(w.no_notify(100).await, "still open before the expiry");
    let n = w.notify_unanswered_within(10_000).await;
    w.answer(&n, 200).await;
    assert!(body(&n).contains("<basic>closed</basic>"), "{}", body(&n));
    assert!(s.handle.core.registrar.lookup(AOR).is_empty());
}

#[tokio::test]
async fn only_the_configured_users_publish() {
    let cfg = format!("{CONFIG}[pua.usrloc]\nusers = [\"10*\", \"sip:2001@example.test\"]\n");
    let s = server(&cfg).await;
    let mut w10 = watcher(&s, "1001").await;
    let mut w20 = watcher(&s, "2002").await;
    let mut w21 = watcher(&s, "2001").await;
    let c = Udp::new(s.udp).await;
    let mark = s.mark();
    assert_eq!(reg(&c, "2002", 1, "<sip:2002@127.0.0.1:5073>").await, 200);
    assert_eq!(reg(&c, "1001", 1, "<sip:1001@127.0.0.1:5071>").await, 200);
    assert_eq!(reg(&c, "2001", 1, "<sip:2001@127.0.0.1:5074>").await, 200);
    w10.notify_until(|b| b.contains("<basic>open</basic>"))
        .await;
    w21.notify_until(|b| b.contains("<basic>open</basic>"))
        .await;
    s.assert_processed_then_silent(
        mark,
        3,
        w20.no_notify(300),
        "2002 is not in pua.usrloc.users",
    )
    .await;
    assert!(s
        .handle
        .core
        .presence
        .publication("sip:2002@example.test", Pkg::Presence, SOURCE_ID)
        .is_none());
}

#[tokio::test]
async fn disabled_publishes_nothing() {
    let cfg = format!("{CONFIG}[pua.usrloc]\nenabled = false\n");
    let s = server(&cfg).await;
    let mut w = watcher(&s, "1001").await;
    let c = Udp::new(s.udp).await;
    let mark = s.mark();
    assert_eq!(reg(&c, "1001", 1, "<sip:1001@127.0.0.1:5071>").await, 200);
    s.assert_processed_then_silent(mark, 1, w.no_notify(300), "disabled, yet published")
        .await;
}

// On the paused clock: the waits below pass only once the server has nothing left to do.
#[tokio::test(start_paused = true)]
async fn at_start_the_published_state_matches_the_stored_bindings() {
    let cfg = Config::from_toml(CONFIG, "t").unwrap();
    let store = Arc::new(MemoryStore::new());
    {
        let s = server_with_store(cfg.clone(), store.clone()).await;
        let c = Udp::new(s.udp).await;
        for user in ["1001", "1002", "1003"] {
            assert_eq!(
                reg(
                    &c,
                    user,
                    1,
                    &format!("<sip:{user}@127.0.0.1:5071>;expires=600")
                )
                .await,
                200
            );
        }
        // Wait until all three are published (and stored).
        for _ in 0..100 {
            let n = store
                .load_publications()
                .unwrap()
                .iter()
                .filter(|p| p.source_id == SOURCE_ID)
                .count();
            if n == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.handle.shutdown().await;
    }
    // While we were down: 1002's binding expired; 1003's publication was lost (say, it
    // was never written); 1001 is as it was.
    let now = busylamp::clock::Clock::new().now_unix();
    let mut bindings = store.load_bindings().unwrap();
    for (aor, list) in &mut bindings {
        if aor == "sip:1002@example.test" {
            list[0].expires_at = now - 1;
            let _ = busylamp::storage::durable(store.save_bindings(aor, list)).await;
        }
    }
    let lost = store
        .load_publications()
        .unwrap()
        .into_iter()
        .find(|p| p.presentity == "sip:1003@example.test")
        .unwrap();
    let _ =
        busylamp::storage::durable(store.write(vec![PresenceWrite::DeletePublication(lost.key())]))
            .await;
    let before_1001 = store
        .load_publications()
        .unwrap()
        .into_iter()
        .find(|p| p.presentity == AOR)
        .unwrap();

    let s = server_with_store(cfg, store.clone()).await;
    let p = &s.handle.core.presence;
    let (b1, _) = p.publication(AOR, Pkg::Presence, SOURCE_ID).unwrap();
    assert!(String::from_utf8_lossy(&b1).contains("<basic>open</basic>"));
    let (b2, _) = p
        .publication("sip:1002@example.test", Pkg::Presence, SOURCE_ID)
        .unwrap();
    let t = tuples(&String::from_utf8(b2).unwrap());
    assert!(
        t.len() == 1 && t[0].1 == "closed" && t[0].2.is_empty(),
        "expired while down: closed {t:?}"
    );
    let (b3, _) = p
        .publication("sip:1003@example.test", Pkg::Presence, SOURCE_ID)
        .expect("republished from its bindings");
    let b3 = String::from_utf8_lossy(&b3);
    assert!(
        b3.contains("<basic>open</basic>") && !b3.contains("127.0.0.1"),
        "open, without the phone's address: {b3}"
    );
    // An unchanged document is not published again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_1001 = store
        .load_publications()
        .unwrap()
        .into_iter()
        .find(|p| p.presentity == AOR)
        .unwrap();
    assert_eq!(after_1001.etag, before_1001.etag, "1001 not republished");
    // A watcher of 1002 sees closed, of 1003 open.
    let mut w = Ua::new(s.udp).await;
    assert_eq!(
        w.request(&subscribe(w.port(), "1003", "w3")).await.status,
        200
    );
    assert!(body(&w.notify().await).contains("<basic>open</basic>"));
}

#[tokio::test(start_paused = true)]
async fn a_register_refresh_publishes_nothing_and_the_publication_is_extended_before_it_ends() {
    let s = server(CONFIG).await;
    let mut w = watcher(&s, "1001").await;
    let c = Udp::new(s.udp).await;
    let contact = "<sip:1001@127.0.0.1:5071>;expires=120";
    assert_eq!(reg(&c, "1001", 1, contact).await, 200);
    w.notify_until(|b| b.contains("<basic>open</basic>")).await;
    let presence = s.handle.core.presence.clone();
    let first = presence
        .publication(AOR, Pkg::Presence, SOURCE_ID)
        .unwrap()
        .1;

    // The phone refreshes at half time: the same document, nothing published.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(reg(&c, "1001", 2, contact).await, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        presence
            .publication(AOR, Pkg::Presence, SOURCE_ID)
            .unwrap()
            .1,
        first,
        "a refresh does not republish"
    );
    // Shortly before the publication would end, it is extended to the new binding expiry.
    let binding = s.handle.core.registrar.lookup(AOR)[0].expires_at;
    tokio::time::sleep(Duration::from_secs(67)).await;
    let (_, extended) = presence.publication(AOR, Pkg::Presence, SOURCE_ID).unwrap();
    assert_eq!(extended, binding + busylamp::pua::usrloc::MARGIN);
    assert!(
        w.no_notify(100).await,
        "the watcher saw no change all along"
    );
    // Without another refresh the binding expires: closed.
    let n = w.notify_unanswered_within(120_000).await;
    w.answer(&n, 200).await;
    assert!(body(&n).contains("<basic>closed</basic>"), "{}", body(&n));
}
