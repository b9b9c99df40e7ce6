//! An ended call's dialog state lingers `TERMINATED_LINGER` (5 s) and then goes, with a
//! NOTIFY to the watchers. Each one goes 5 s after *its* call ended, not at the whole
//! second its expiry is stored as: timers at whole seconds gathered every call that ended
//! during one second into one instant, and that fan-out (20 calls × their watchers at
//! 20 calls/s) held a ringing lamp's NOTIFY back by milliseconds once a second.

use busylamp::clock::Clock;
use busylamp::config::Config;
use busylamp::presence::event::Pkg;
use busylamp::presence::Presence;
use busylamp::storage::memory::MemoryStore;
use std::sync::Arc;
use std::time::Duration;

fn config() -> Config {
    Config::from_toml(
        r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[presence]
coalesce_ms = 0
"#,
        "linger.toml",
    )
    .expect("config")
}

fn ended_call(user: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" \
         version=\"1\" state=\"full\" entity=\"sip:{user}@example.test\">\n \
         <dialog id=\"d-{user}\" direction=\"recipient\"><state>terminated</state></dialog>\n\
         </dialog-info>\n"
    )
    .into_bytes()
}

/// Lets the timer task run whatever is due by now.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_calls_ended_in_one_second_stop_lingering_each_five_seconds_after_it_ended() {
    // The clock starts on a whole second, so both calls end within the same second.
    let presence = Presence::new(
        &config(),
        Arc::new(MemoryStore::new()),
        Default::default(),
        Clock::at(1_000_000),
        busylamp::ids::Ids::new().expect("OS RNG"),
        busylamp::transaction::BranchKey::random().expect("OS RNG"),
    );
    tokio::spawn(presence.clone().run_timers());
    let start = tokio::time::Instant::now();
    let until = |ms: u64| tokio::time::sleep_until(start + Duration::from_millis(ms));

    until(300).await;
    presence
        .publish(
            "sip:1001@example.test",
            Pkg::Dialog,
            "call-a",
            ended_call("1001"),
            3600,
        )
        .expect("published");
    until(700).await;
    presence
        .publish(
            "sip:1002@example.test",
            Pkg::Dialog,
            "call-b",
            ended_call("1002"),
            3600,
        )
        .expect("published");
    settle().await;
    assert_eq!(presence.publication_count(), 2, "both ended calls linger");

    // At the whole second after the stored expiry's second began, neither has lingered its 5 s.
    until(5_000).await;
    settle().await;
    assert_eq!(
        presence.publication_count(),
        2,
        "a call that ended at 0.3 s still lingers at 5.0 s (and one that ended at 0.7 s)"
    );
    until(5_299).await;
    settle().await;
    assert_eq!(presence.publication_count(), 2, "still both at 5.299 s");
    until(5_302).await;
    settle().await;
    assert_eq!(
        presence.publication_count(),
        1,
        "the first one went 5 s after it ended"
    );
    until(5_699).await;
    settle().await;
    assert_eq!(presence.publication_count(), 1, "the second one lingers on");
    until(5_702).await;
    settle().await;
    assert_eq!(
        presence.publication_count(),
        0,
        "and goes 5 s after its call ended"
    );
}
