//! Issue 9 §3, "no lock is held while rendering": NOTIFY bodies are rendered after the shard
//! lock is released, from a snapshot of the publications taken under it. The order guarantees
//! of "one writer per presentity" must survive that: with changes to one presentity racing on
//! several threads and many watchers answering, every watcher ends on the last state, each of
//! its NOTIFYs carries the version after the one before (RFC 4235 §4.1) and a higher CSeq
//! (RFC 6665 §4.2.2, RFC 3261 §12.2.1.1), and none repeats an older state after a newer one.

mod common;
use busylamp::presence::event::Pkg;
use busylamp::sip::body::dialog_info::{Dialog, DialogInfo, DialogState, Direction, DocState};
use busylamp::storage::PublicationBody;
use common::ua::*;
use common::*;
use std::time::Duration;

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

const WATCHERS: usize = 24;
const THREADS: usize = 4;
const CHANGES: usize = 250;

fn subscribe(port: u16, call_id: &str) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:1009@example.test>;tag=t{call_id}
        To: <sip:1001@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1009@127.0.0.1:{port}>
        Event: dialog
        Expires: 600
        ",
        b = branch()
    ))
}

/// One call of thread `t`, its `n`th change: the dialog id names the state.
fn state(t: usize, n: usize) -> DialogInfo {
    let id = format!("t{t}n{n}");
    let mut d = Dialog::new(
        &id,
        if n.is_multiple_of(2) {
            DialogState::Early
        } else {
            DialogState::Confirmed
        },
    );
    d.call_id = Some(format!("{id}@h"));
    d.local_tag = Some("lt".into());
    d.remote_tag = Some("rt".into());
    d.direction = Some(Direction::Recipient);
    DialogInfo {
        entity: "sip:1001@example.test".into(),
        version: 0,
        state: DocState::Full,
        dialogs: vec![d],
    }
}

/// The dialog ids a dialog-info body names.
fn dialog_ids(body: &str) -> Vec<String> {
    body.split("<dialog id=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_changes_end_every_watcher_on_the_last_state_in_order() {
    let s = server(OPEN).await;
    let presence = s.handle.core.presence.clone();
    // Every watcher subscribed, its first (idle) NOTIFY answered.
    let mut uas = Vec::new();
    for i in 0..WATCHERS {
        let mut w = Ua::new(s.udp).await;
        let r = w.request(&subscribe(w.port(), &format!("race-{i}"))).await;
        assert_eq!(r.status, 200);
        let first = w.notify().await;
        uas.push((w, vec![(cseq_of(&first), version_of(&body(&first)))]));
    }
    // The last state, once every change is made.
    let (last_tx, last_rx) = tokio::sync::watch::channel(None::<String>);
    let watchers: Vec<_> = uas
        .into_iter()
        .map(|(mut w, mut seen)| {
            let mut last_rx = last_rx.clone();
            tokio::spawn(async move {
                let mut ids: Vec<String> = Vec::new();
                let mut newest = [None::<usize>; THREADS];
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let done = last_rx
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|last| ids == [last.clone()]);
                    if done {
                        return seen;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the last state never came: the lamp shows {ids:?}, the last state is {:?}",
                        last_rx.borrow()
                    );
                    tokio::select! {
                        n = w.next_request_within(100) => {
                            let Some(n) = n else { continue };
                            assert_eq!(n.method, "NOTIFY");
                            w.answer(&n, 200).await;
                            let b = body(&n);
                            seen.push((cseq_of(&n), version_of(&b)));
                            ids = dialog_ids(&b);
                            for id in &ids {
                                let (t, n) = id[1..].split_once('n').unwrap();
                                let (t, n): (usize, usize) = (t.parse().unwrap(), n.parse().unwrap());
                                assert!(
                                    newest[t].is_none_or(|m| n >= m),
                                    "an older state of thread {t} after a newer one: {n} after {:?}",
                                    newest[t]
                                );
                                newest[t] = Some(n);
                            }
                        }
                        _ = last_rx.changed() => {}
                    }
                }
            })
        })
        .collect();
    // Changes to the one presentity racing on several threads (one publication, replaced).
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let presence = presence.clone();
            tokio::task::spawn_blocking(move || {
                for n in 0..CHANGES {
                    presence
                        .publish(
                            "sip:1001@example.test",
                            Pkg::Dialog,
                            "dlg:1",
                            state(t, n),
                            600,
                        )
                        .expect("published");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (held, _) = presence
        .publication_body("sip:1001@example.test", Pkg::Dialog, "dlg:1")
        .expect("the last change is held");
    let PublicationBody::Dialogs(last) = held else {
        panic!("typed state kept typed: {held:?}")
    };
    last_tx.send(Some(last.dialogs[0].id.clone())).unwrap();
    let mut most = 0;
    for w in watchers {
        let seen = w.await.unwrap();
        most = most.max(seen.len());
        // At least the first NOTIFY and the last state.
        assert!(seen.len() >= 2, "{seen:?}");
        for pair in seen.windows(2) {
            assert!(pair[1].0 > pair[0].0, "CSeq went backwards: {seen:?}");
            assert_eq!(pair[1].1, pair[0].1 + 1, "version not +1: {seen:?}");
        }
    }
    // Changes went out while others were being made (not only the first and the last).
    assert!(most > 2, "at most {most} NOTIFYs per watcher");
}
