//! Bindings expire on time (RFC 3261 §10.2.1): driven by tokio's paused clock, no sleeping.

mod common;
use busylamp::clock::Clock;
use busylamp::config::Config;
use busylamp::events::{Event, EventBus, RegistrationChange};
use busylamp::registrar::{Identity, Registrar};
use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::Message;
use busylamp::storage::{BindingStore, MemoryStore};
use common::*;
use std::sync::Arc;
use std::time::Duration;

fn req(bytes: &[u8]) -> busylamp::sip::Request {
    match parse_message(bytes, &Limits::default()).unwrap() {
        Message::Request(r) => r,
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn bindings_expire_on_time_are_announced_and_removed_from_disk() {
    let cfg = Config::from_toml(BASE_CONFIG, "t").unwrap();
    let store = Arc::new(MemoryStore::new());
    let events = EventBus::default();
    let mut rx = events.subscribe();
    let reg = Registrar::new(&cfg, store.clone(), events, Clock::new());
    tokio::spawn(reg.clone().run_expiry());

    let r = reg
        .register(
            &req(&register(
                "1001",
                5060,
                "c",
                1,
                "Contact: <sip:short@127.0.0.1:1>;expires=60, <sip:long@127.0.0.1:2>;expires=600",
            )),
            &Identity::Unchecked,
            "udp:127.0.0.1:5060",
            "tag",
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::Registration {
            change: RegistrationChange::Registered,
            ..
        }
    ));
    assert!(matches!(
        rx.recv().await.unwrap(),
        Event::Registration {
            change: RegistrationChange::Registered,
            ..
        }
    ));

    tokio::time::advance(Duration::from_secs(59)).await;
    tokio::task::yield_now().await;
    assert_eq!(reg.lookup("sip:1001@example.test").len(), 2);
    assert!(rx.try_recv().is_err(), "nothing expires early");

    tokio::time::advance(Duration::from_secs(2)).await;
    match rx.recv().await.unwrap() {
        Event::Registration {
            change, contact, ..
        } => {
            assert_eq!(change, RegistrationChange::Expired);
            assert_eq!(contact, "sip:short@127.0.0.1:1");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(reg.lookup("sip:1001@example.test").len(), 1);
    let stored = store.load_bindings().unwrap();
    assert_eq!(
        stored[0].1.len(),
        1,
        "the expiry is written, not only forgotten in memory"
    );

    tokio::time::advance(Duration::from_secs(600)).await;
    match rx.recv().await.unwrap() {
        Event::Registration {
            change, contact, ..
        } => {
            assert_eq!(change, RegistrationChange::Expired);
            assert_eq!(contact, "sip:long@127.0.0.1:2");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(store.load_bindings().unwrap().is_empty());
    assert_eq!(reg.aor_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_moves_the_expiry_and_bindings_expired_while_down_are_dropped_on_load() {
    let cfg = Config::from_toml(BASE_CONFIG, "t").unwrap();
    let store = Arc::new(MemoryStore::new());
    let reg = Registrar::new(&cfg, store.clone(), EventBus::default(), Clock::new());
    tokio::spawn(reg.clone().run_expiry());
    let contact = "Contact: <sip:a@127.0.0.1:1>;expires=60";
    reg.register(
        &req(&register("1001", 5060, "c", 1, contact)),
        &Identity::Unchecked,
        "udp:x",
        "t",
    )
    .await;
    tokio::time::advance(Duration::from_secs(50)).await;
    reg.register(
        &req(&register("1001", 5060, "c", 2, contact)),
        &Identity::Unchecked,
        "udp:x",
        "t",
    )
    .await;
    tokio::time::advance(Duration::from_secs(50)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        reg.lookup("sip:1001@example.test").len(),
        1,
        "refreshed at 50 s, alive at 100 s"
    );

    // A new registrar on the same store 200 s later (as after a restart): the binding is gone.
    let events = EventBus::default();
    let mut rx = events.subscribe();
    let later = Clock::at(Clock::new().now_unix() + 200);
    let reg2 = Registrar::new(&cfg, store.clone(), events, later);
    assert_eq!(reg2.load().await.unwrap(), 0);
    assert!(matches!(
        rx.try_recv().unwrap(),
        Event::Registration {
            change: RegistrationChange::Expired,
            ..
        }
    ));
    assert!(store.load_bindings().unwrap().is_empty());
}
