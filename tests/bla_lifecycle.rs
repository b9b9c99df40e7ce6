//! Shared lines over time (the pua_bla job, issue 12 §2, §3, §5, §7): a seize that never
//! becomes a call is released after `bla.seize_timeout`; while a phone holds a seize our
//! subscription to it is refreshed with the shorter `bla.seized_expires`; a phone that
//! re-registers from another flow gets its old subscription ended (and its final NOTIFY
//! awaited) before the new one starts (Polycom holds one `dialog;sla` subscription); after
//! a restart, an appearance no phone confirms within `bla.reconcile_timeout` is released;
//! `Bla::lines()` and the event bus tell the dashboard what happened.

mod common;
use busylamp::events::Event;
use busylamp::sip::body::dialog_info::DialogState;
use busylamp::sip::{HasHeaders, HeaderName};
use common::bla::*;
use common::*;

const CONFIG: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls"]
[presence]
coalesce_ms = 0
[bla]
seize_timeout = 30
seized_expires = 120
reconcile_timeout = 20
[[bla.lines]]
aor = "2000"
label = "Main line"
appearances = 2
members = ["1001"]
[[users]]
name = "2000"
password = "line-pw"
[[users]]
name = "1001"
password = "pw1001"
"#;

async fn member(s: &TestServer, name: &str, user: &str, password: &str) -> BlaPhone {
    let mut p = BlaPhone::new(s.udp, "2000", name, user, password).await;
    p.registered().await;
    p.accept_sla_subscribe().await;
    assert_eq!(p.watch_line().await, 200, "phone {name} watches the line");
    p
}

fn expires_of(r: &busylamp::sip::Request) -> u32 {
    r.headers
        .get(HeaderName::Expires)
        .and_then(|e| e.trim().parse().ok())
        .expect("Expires")
}

#[tokio::test(start_paused = true)]
async fn a_seize_that_never_becomes_a_call_is_released_and_refreshes_are_shorter_meanwhile() {
    let s = server(CONFIG).await;
    let mut bus = s.handle.events.subscribe();
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let mut b = member(&s, "B", "1001", "pw1001").await;
    let first = a.subscribes[0].clone();
    assert!(
        expires_of(&first) > 3600,
        "a bit longer than the binding: {}",
        expires_of(&first)
    );

    let (status, _) = a.seize(0).await;
    assert_eq!(status, 200);
    b.sees("A seizing 0", |v| {
        holds(v, 0, "A", DialogState::Trying, false)
    })
    .await;
    // The dashboard's view and the bus.
    let lines = s.handle.core.bla.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].aor, "sip:2000@example.test");
    assert_eq!(lines[0].label.as_deref(), Some("Main line"));
    assert_eq!(lines[0].appearances[0].state, "seized");
    assert_eq!(lines[0].appearances[1].state, "free");
    assert_eq!(
        lines[0].appearances[0].contact.as_deref(),
        Some(a.phone.contact().as_str())
    );
    assert_eq!(lines[0].phones.len(), 2);
    assert!(lines[0].phones.iter().all(|p| p.subscribed));
    let seized = loop {
        match bus.try_recv() {
            Ok(Event::Appearance {
                line,
                appearance,
                state,
                ..
            }) => break (line, appearance, state),
            Ok(_) => continue,
            Err(e) => panic!("an Appearance event: {e:?}"),
        }
    };
    assert_eq!(seized, ("sip:2000@example.test".into(), 0, "seized"));

    // While A holds the seize, our subscription to A is refreshed with Expires 120.
    a.pump_until(2000, |p| !p.refreshes.is_empty())
        .await
        .expect("a refresh of our subscription to A");
    assert_eq!(expires_of(&a.refreshes[0]), 120);
    assert_eq!(
        a.refreshes[0].call_id().unwrap(),
        first.call_id().unwrap(),
        "in the same dialog"
    );

    // Nobody dials: 30 s later the appearance is free again for everyone.
    let mut phones = [&mut a, &mut b];
    pump_all(&mut phones, 29_000).await;
    assert!(
        !free(&b.view, 0),
        "still seized before the timeout: {:?}",
        b.view
    );
    b.sees_within("the seize released", 3000, |v| free(v, 0))
        .await;
    assert_eq!(s.handle.core.bla.lines()[0].appearances[0].state, "free");
    // And the refresh goes back to the binding's length.
    a.pump_until(3000, |p| p.refreshes.len() >= 2)
        .await
        .expect("a second refresh");
    assert!(
        expires_of(&a.refreshes[1]) > 120,
        "{}",
        expires_of(&a.refreshes[1])
    );
}

/// Polycom keeps one `dialog;sla` subscription: when it re-registers from another flow
/// (a NAT rebinding: the same Contact from another source port), the old subscription is
/// ended and its final NOTIFY awaited before the new SUBSCRIBE leaves, over the new flow.
#[tokio::test(start_paused = true)]
async fn a_phone_on_a_new_flow_gets_its_old_subscription_ended_first() {
    let s = server(CONFIG).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let old_call_id = a.subscribes[0].call_id().unwrap().to_string();
    let contact = a.phone.contact();
    // The same Contact, registered from another socket.
    let mut moved = common::ua::Ua::new(s.udp).await;
    let extra = format!("Contact: <{contact}>");
    let r = moved
        .request(&register("2000", moved.port(), "rebind-1", 1, &extra))
        .await;
    assert_eq!(r.status, 401);
    let ch = r
        .headers
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_string();
    let auth = authorization(&ch, "2000", "line-pw", "REGISTER", "sip:example.test", 1);
    let r = moved
        .request(&register(
            "2000",
            moved.port(),
            "rebind-1",
            2,
            &format!("{extra}\n        Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 200, "re-registered from the new flow");
    // The old flow gets the unsubscribe; the phone answers it with its final NOTIFY.
    a.pump_until(5000, |p| p.refreshes.iter().any(|r| expires_of(r) == 0))
        .await
        .expect("the old subscription ended over the old flow");
    let ended = a.refreshes.iter().find(|r| expires_of(r) == 0).unwrap();
    assert_eq!(ended.call_id().unwrap(), old_call_id);
    // Only then the new SUBSCRIBE, over the new flow, in a new dialog.
    let req = moved
        .next_request_within(5000)
        .await
        .expect("a new SUBSCRIBE over the new flow");
    assert_eq!(req.method, "SUBSCRIBE");
    assert_ne!(req.call_id().unwrap(), old_call_id);
    assert_eq!(req.uri.to_string(), contact);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_an_appearance_nobody_confirms_is_released() {
    let cfg = busylamp::config::Config::from_toml(CONFIG, "test.toml").unwrap();
    let store = std::sync::Arc::new(busylamp::storage::MemoryStore::new());
    let s = server_with_store(cfg.clone(), store.clone()).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let mut b = member(&s, "B", "1001", "pw1001").await;
    let (status, id) = a.seize(0).await;
    assert_eq!(status, 200);
    assert_eq!(
        a.update(&id, |c| c.state = DialogState::Confirmed).await,
        200
    );
    b.sees("A talking on 0", |v| {
        holds(v, 0, "A", DialogState::Confirmed, false)
    })
    .await;
    let (udp, tcp) = (s.udp, s.tcp);
    s.handle.shutdown().await;

    // A restart on the same addresses: the table comes back from disk; A never answers again
    // (it is gone but its binding is not yet expired), B answers with its (empty) full state.
    let again = CONFIG.replace(
        r#"listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]"#,
        &format!(r#"listen = ["udp:{udp}", "tcp:{tcp}"]"#),
    );
    let cfg = busylamp::config::Config::from_toml(&again, "test.toml").unwrap();
    let s = server_with_store(cfg, store).await;
    assert_eq!(s.handle.core.bla.lines()[0].appearances[0].state, "active");
    b.pump_until(5000, |p| p.subscribes.len() >= 2)
        .await
        .expect("B subscribed again after the restart");
    assert_eq!(s.handle.core.bla.lines()[0].appearances[0].state, "active");
    // B's own dialog;sla subscription survived the restart; it sees A's appearance go
    // once the reconciliation gives up on A.
    b.sees_within("A's unconfirmed appearance released", 25_000, |v| {
        free(v, 0)
    })
    .await;
    assert_eq!(s.handle.core.bla.lines()[0].appearances[0].state, "free");
    drop(a);
}
