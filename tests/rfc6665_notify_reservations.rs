//! NOTIFYs do not wait for the disk (RFC 6665 §4.2.2, RFC 4235 §4.1): each subscription
//! reserves a range of CSeqs and versions on disk (`presence.notify_reserve`), NOTIFYs within
//! it write nothing, the one that would pass it waits for the next reservation, and after a
//! restart NOTIFYs continue above the range with the full state. The in-memory store's
//! stalled disk stands in for a slow flush: a write waits in its queue until the test
//! flushes it, so whatever arrives meanwhile did not wait for it.

mod common;

use busylamp::config::Config;
use busylamp::presence::event::Pkg;
use busylamp::sip::body::dialog_info::DialogState;
use busylamp::storage::MemoryStore;
use common::phone::{Phone, CALLS};
use common::ua::{body, cseq_of, Ua};
use common::watcher::Watcher;
use common::*;
use std::sync::Arc;

fn config(extra_presence: &str) -> Config {
    let toml = CALLS.replace(
        "coalesce_ms = 0",
        &format!("coalesce_ms = 0\n{extra_presence}"),
    );
    Config::from_toml(&toml, "test.toml").expect("test config")
}

/// Dialog state of 1002 with one confirmed call `d{n}` (each `n` a different document).
fn call_state(n: u32) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\"?><dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" \
         version=\"0\" state=\"full\" entity=\"sip:1002@example.test\"><dialog id=\"d{n}\">\
         <state>confirmed</state></dialog></dialog-info>"
    )
    .into_bytes()
}

fn publish_call(s: &TestServer, n: u32) {
    // Not awaited: the publication's own write may wait for the (stalled) disk.
    drop(
        s.handle
            .core
            .presence
            .publish(
                "sip:1002@example.test",
                Pkg::Dialog,
                "call",
                call_state(n),
                600,
            )
            .expect("publish"),
    );
}

/// The lamp's next document, once the server has handled the lamp's 200 to it (the next
/// change then finds no NOTIFY in flight and is decided at once, not owed).
async fn next_answered(
    s: &TestServer,
    lamp: &mut Watcher,
) -> busylamp::sip::body::dialog_info::DialogInfo {
    let mark = s.mark();
    let doc = lamp.next().await;
    processed_since(&s.handle.core, mark, 1).await;
    doc
}

#[tokio::test]
async fn rfc4235_a_calls_state_reaches_the_blf_watcher_while_the_disk_is_stalled() {
    let s = server_with_store(config(""), Arc::new(MemoryStore::new())).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let mut lamp = Watcher::new(s.udp, "1002").await;
    let reservations = s.store.presence_writes().reservations;

    // The disk stops: the call's writes (its record, its publication) wait in the queue.
    s.store.stall_disk();
    alice.invite("1002", "stalled-disk-call").await;
    let at = bob.ua.next_request().await;
    assert_eq!(at.method, "INVITE");
    bob.reply(&at, 180, "b1").await;
    lamp.until_states("early while the disk is stalled", |st| {
        st.contains(&DialogState::Early)
    })
    .await;
    assert!(
        s.store.write_queue().waiting > 0,
        "the call's state is not on disk yet: the NOTIFY did not wait for it"
    );
    assert_eq!(
        s.store.presence_writes().reservations,
        reservations,
        "within the reserved range: nothing written for the NOTIFY"
    );
    s.store.resume_disk();
}

#[tokio::test]
async fn rfc3903_a_publish_to_100_watchers_writes_its_publication_only_and_they_hear_before_its_200(
) {
    const WATCHERS: usize = 100;
    let s = server_with_store(config(""), Arc::new(MemoryStore::new())).await;
    let mut w = Ua::new(s.udp).await;
    for i in 0..WATCHERS {
        let r = w
            .request(&wire(&format!(
                "SUBSCRIBE sip:1002@example.test SIP/2.0
                Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
                Max-Forwards: 70
                From: <sip:1003@example.test>;tag=w{i}
                To: <sip:1002@example.test>
                Call-ID: fan-{i}
                CSeq: 1 SUBSCRIBE
                Contact: <sip:1003@127.0.0.1:{p}>
                Event: presence
                Expires: 3600
                ",
                p = w.port(),
                b = branch()
            )))
            .await;
        assert_eq!(r.status, 200, "{}", r.reason);
        w.notify().await;
    }
    let mut publisher = Ua::new(s.udp).await;
    let before = s.store.presence_writes();
    s.store.stall_disk();
    publisher
        .send(&wire(&format!(
            "PUBLISH sip:1002@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
            Max-Forwards: 70
            From: <sip:1002@example.test>;tag=pub
            To: <sip:1002@example.test>
            Call-ID: fan-publish
            CSeq: 1 PUBLISH
            Event: presence
            Expires: 600
            Content-Type: application/pidf+xml

<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1002@example.test\"><tuple id=\"t\"><status><basic>closed</basic></status></tuple></presence>",
            p = publisher.port(),
            b = branch()
        )))
        .await;
    // Every watcher hears of it while the publication waits for the disk.
    for _ in 0..WATCHERS {
        let n = w.notify().await;
        assert!(body(&n).contains("closed"), "{}", body(&n));
        assert_eq!(cseq_of(&n), 2);
    }
    let after = s.store.presence_writes();
    assert_eq!(
        (
            after.publications - before.publications,
            after.subscriptions - before.subscriptions,
            after.reservations - before.reservations,
        ),
        (1, 0, 0),
        "the publication is written, nothing per watcher"
    );
    // The 200 waits for its publication only: one write.
    assert!(
        publisher.any_response_within(100).await.is_none(),
        "200 before the publication is on disk"
    );
    assert_eq!(s.store.write_queue().waiting, 1);
    assert_eq!(s.store.flush_disk(), 1);
    assert_eq!(publisher.response().await.status, 200);
    s.store.resume_disk();
}

#[tokio::test]
async fn rfc6665_4_2_2_crossing_the_reserved_range_writes_one_reservation_and_cseqs_stay_strictly_increasing_across_a_restart(
) {
    // Ranges of 3: the SUBSCRIBE's record reserves up to CSeq 4 (its NOTIFY is CSeq 1).
    let cfg = config("notify_reserve = 3");
    let store = Arc::new(MemoryStore::new());
    let s = server_with_store(cfg.clone(), store.clone()).await;
    let mark = s.mark();
    let mut lamp = Watcher::new(s.udp, "1002").await;
    processed_since(&s.handle.core, mark, 2).await;
    let start = store.presence_writes();
    for n in 2..=4 {
        publish_call(&s, n);
        let doc = next_answered(&s, &mut lamp).await;
        assert_eq!(doc.dialogs[0].id, format!("d{n}"));
    }
    assert_eq!(
        store.presence_writes().reservations,
        start.reservations,
        "CSeqs 2..=4 are within the range"
    );
    // CSeq 5 would pass it: it waits for one reservation (the disk is stalled now).
    store.stall_disk();
    publish_call(&s, 5);
    assert_eq!(store.presence_writes().reservations, start.reservations + 1);
    assert!(
        lamp.ua.no_notify(300).await,
        "CSeq 5 must not leave before its reservation is on disk"
    );
    assert_eq!(store.flush_disk(), 2, "the publication and the reservation");
    let doc = next_answered(&s, &mut lamp).await;
    assert_eq!(doc.dialogs[0].id, "d5");
    // Within the new range (up to 8): CSeq 6 leaves with the disk still stalled.
    publish_call(&s, 6);
    let doc = next_answered(&s, &mut lamp).await;
    assert_eq!(doc.dialogs[0].id, "d6");
    let (cseq_before, version_before) = (6, doc.version);
    assert_eq!(store.presence_writes().reservations, start.reservations + 1);

    // A crash right after the boundary: what waits for the disk is lost.
    s.handle.shutdown().await;
    store.lose_queued();
    let reservations = store.presence_writes().reservations;
    let s = server_with_store(cfg, store.clone()).await;
    lamp.ua.server = s.udp;
    // The first NOTIFY is above the range on disk (8): it waits for a new reservation.
    assert_eq!(
        store.presence_writes().reservations,
        reservations + 1,
        "the restored subscription's first NOTIFY was decided with a new reservation"
    );
    assert!(
        lamp.ua.no_notify(300).await,
        "the first NOTIFY after the restart must wait for its reservation"
    );
    assert!(store.flush_disk() >= 1);
    // The watcher checks a higher version with the full state, then +1 each.
    let doc = next_answered(&s, &mut lamp).await;
    let cseq = lamp.last_cseq().unwrap();
    assert!(cseq > cseq_before, "CSeq {cseq} after {cseq_before}");
    assert_eq!(cseq, 9, "the first above the reserved 8");
    assert!(doc.version > version_before);
    assert_eq!(doc.dialogs[0].id, "d5", "the state on disk at the crash");
    publish_call(&s, 7);
    let doc = lamp.next().await;
    assert_eq!(doc.dialogs[0].id, "d7");
    store.resume_disk();
}
