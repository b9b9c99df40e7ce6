//! Shared-line NOTIFYs from a hostile or broken phone (issue 12, "Robustness"): a
//! `dialog;sla` NOTIFY whose Contact user is 300 characters (the shape that overflowed
//! Kamailio's `pua_bla` 255-byte buffer until commit 7f4c4c5a66), fields over the limits, and
//! 2,000 mutated `dialog;sla` NOTIFYs inside a live subscription: no panic, every one
//! answered, and afterwards the appearance table is intact (a seize works, a conflicting
//! one is refused, the watcher sees the right state). Then 1,000 mutants of the whole
//! message from another socket, paced by the server's count of messages read.

mod common;
use busylamp::sip::body::dialog_info::{DialogState, DocState};
use common::bla::*;
use common::mutate::{self, fixed_runner};
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;

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
[[bla.lines]]
aor = "2000"
appearances = 2
members = ["1001"]
[[users]]
name = "2000"
password = "line-pw"
[[users]]
name = "1001"
password = "pw1001"
"#;

/// A counter of panics in any thread from now on (a panic in a receive task would not fail
/// a test by itself: the other receivers keep answering).
fn count_panics() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default_hook(info);
        }));
    });
    &PANICS
}

/// A (notifier of the server's subscription) and B (watching the line), both registered.
async fn two_phones(s: &TestServer) -> (BlaPhone, BlaPhone) {
    let mut a = BlaPhone::new(s.udp, "2000", "A", "2000", "line-pw").await;
    let mut b = BlaPhone::new(s.udp, "2000", "B", "1001", "pw1001").await;
    for p in [&mut a, &mut b] {
        p.registered().await;
        p.accept_sla_subscribe().await;
        assert_eq!(p.watch_line().await, 200);
    }
    (a, b)
}

/// After whatever came before: A resets its state with an empty full NOTIFY, then the table
/// still arbitrates and B sees the right state.
async fn table_intact(a: &mut BlaPhone, b: &mut BlaPhone) {
    a.mine.clear();
    assert_eq!(a.notify_full().await, 200, "{}", a.last_reason);
    b.sees("an idle line", |v| v.is_empty()).await;
    let (status, a0) = a.seize(0).await;
    assert_eq!(status, 200, "{}", a.last_reason);
    b.sees("A on 0", |v| holds(v, 0, "A", DialogState::Trying, false))
        .await;
    let (status, _) = b.seize(0).await;
    assert_eq!(status, 409, "{}", b.last_reason);
    let (status, _) = b.seize(1).await;
    assert_eq!(status, 200, "{}", b.last_reason);
    a.sees("B on 1", |v| holds(v, 1, "B", DialogState::Trying, false))
        .await;
    assert_eq!(a.end(&a0).await, 200);
    b.sees("0 free", |v| free(v, 0)).await;
}

#[tokio::test]
async fn a_300_character_contact_user_and_fields_over_the_limits() {
    let panics = count_panics();
    let s = server(CONFIG).await;
    let (mut a, mut b) = two_phones(&s).await;

    // The Kamailio pua_bla overflow: Contact user of 300 characters, a valid seize in it.
    let seize = a.new_call(Some(0));
    let id = seize.id.clone();
    let body = a.body(DocState::Partial, std::slice::from_ref(&seize));
    let (bytes, cseq) = a.notify_request(&body, "active");
    let long_user = "u".repeat(300);
    let text = String::from_utf8(bytes).unwrap().replacen(
        "Contact: <sip:2000@",
        &format!("Contact: <sip:{long_user}@"),
        1,
    );
    assert!(text.contains(&long_user));
    a.notify_raw(text.as_bytes()).await;
    let r = a.notify_status(cseq).await;
    eprintln!("300-character Contact user: {} {}", r.status, r.reason);
    assert!(
        r.status == 200 || (400..500).contains(&r.status),
        "{} {}",
        r.status,
        r.reason
    );
    if r.status == 200 {
        a.mine.insert(id.clone(), seize);
        b.sees("A on 0", |v| holds(v, 0, "A", DialogState::Trying, false))
            .await;
        assert_eq!(a.end(&id).await, 200);
        b.sees("0 free", |v| free(v, 0)).await;
    }

    // Fields over 256 bytes in the body: 400 naming the field, nothing applied.
    let mut long_id = a.new_call(Some(0));
    long_id.id = format!("A-{}", "i".repeat(300));
    let mut long_remote = a.new_call(Some(1));
    long_remote.remote = Some(format!("sip:{}@example.test", "r".repeat(300)));
    let mut long_call_id = a.new_call(Some(1));
    long_call_id.call_id = "c".repeat(300);
    for (what, c) in [
        ("dialog id", long_id),
        ("remote identity", long_remote),
        ("call-id", long_call_id),
    ] {
        let body = a.body(DocState::Partial, &[c]);
        let (bytes, cseq) = a.notify_request(&body, "active");
        a.notify_raw(&bytes).await;
        let r = a.notify_status(cseq).await;
        assert_eq!(r.status, 400, "{what} of 300 bytes: {}", r.reason);
    }
    // More than 16 dialogs of one phone on the line.
    let many: Vec<LineCall> = (0..17).map(|_| a.new_call(None)).collect();
    let body = a.body(DocState::Full, &many);
    let (bytes, cseq) = a.notify_request(&body, "active");
    a.notify_raw(&bytes).await;
    let r = a.notify_status(cseq).await;
    assert_eq!(r.status, 400, "17 dialogs: {}", r.reason);

    table_intact(&mut a, &mut b).await;
    assert_eq!(panics.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn two_thousand_mutated_notifies_in_a_live_subscription_are_each_answered() {
    let panics = count_panics();
    let s = server(CONFIG).await;
    let (mut a, mut b) = two_phones(&s).await;

    // Seeds: a seize, a held call, the real Polycom capture's body (appearance 0, early).
    let mut seize = a.new_call(Some(0));
    seize.id = "A-seed-1".into();
    let mut held = a.new_call(Some(1));
    held.id = "A-seed-2".into();
    held.state = DialogState::Confirmed;
    held.held = true;
    held.remote = Some("sip:1005@example.test".into());
    held.remote_target = Some("sip:1005@192.0.2.7:5062".into());
    held.remote_tag = Some("far".into());
    let capture = std::fs::read_to_string(
        "fixtures/bodies/captures/polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip",
    )
    .unwrap();
    let capture_body = capture[capture.find("<?xml").unwrap()..].to_string();
    let seeds: Vec<Vec<u8>> = vec![
        a.body(DocState::Partial, &[seize]).into_bytes(),
        a.body(DocState::Full, &[held]).into_bytes(),
        capture_body.into_bytes(),
    ];
    let mutant = (any::<Index>(), mutate::edits(8));
    let mut runner = fixed_runner(0xb1a_5eed_0000_0012);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    // Bounded: 2,000 NOTIFYs, each answered before the next one leaves.
    for i in 0..2000 {
        let (seed, edits) = mutate::draw(&mut runner, &mutant);
        let body = mutate::apply(&seeds[seed.index(seeds.len())], &edits);
        let body = String::from_utf8_lossy(&body).into_owned();
        let (bytes, cseq) = a.notify_request(&body, "active");
        a.notify_raw(&bytes).await;
        let r = a.notify_status(cseq).await;
        assert!(
            r.status >= 200 && r.status < 600,
            "mutant {i}: {} {}",
            r.status,
            r.reason
        );
        if r.status >= 400 {
            assert!(!r.reason.is_empty(), "mutant {i}: a reason phrase");
        }
        *statuses.entry(r.status).or_default() += 1;
        if i % 100 == 0 {
            // The watcher's NOTIFYs and the server's refreshes are answered as they come.
            b.pump_for(1).await;
            a.pump_for(1).await;
        }
    }
    eprintln!("answers to 2,000 mutated dialog;sla NOTIFYs: {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), 2000);

    // Whole-message mutants from another socket (a dialog nobody has: the parser and the
    // 481 path), paced by the server's count of messages read.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (seed_msg, _) = a.notify_request(&String::from_utf8_lossy(&seeds[0]), "active");
    let seed_msg = String::from_utf8(seed_msg)
        .unwrap()
        .replace(&a.sla.as_ref().unwrap().call_id, "junk-dialog@127.0.0.1")
        .into_bytes();
    let mark = s.mark();
    let mut counted = 0;
    for i in 0..1000 {
        let edits = mutate::draw(&mut runner, &mutate::edits(8));
        let m = mutate::apply(&seed_msg, &edits);
        let _ = junk.send_to(&m, s.udp).await;
        counted += u64::from(counts_as_message(&m));
        if i % 50 == 0 {
            processed_since(&s.handle.core, mark, counted).await;
        }
    }
    processed_since(&s.handle.core, mark, counted).await;

    table_intact(&mut a, &mut b).await;
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a task panicked"
    );
}
