//! The tracker by RFC section: RFC 4235 §3.7.1 (the dialog state machine), RFC 3261 §9
//! (CANCEL), §12/§13 (dialogs, early dialogs per to-tag), §15 (BYE), §16.7 (forking: the
//! first 2xx wins, the others vanish), §16.6 step 11 (Timer C).

use super::*;

use super::fixtures::{cfg, info, key, T0};

/// A tracker with one call just invited at T0.
fn started() -> DialogTracker {
    let mut t = DialogTracker::new(&cfg());
    let u = t.invite(key(), info(), T0).expect("new call");
    assert_eq!(u.call.state, DialogState::Trying);
    assert!(matches!(u.write, DialogWrite::Put { .. }));
    t
}

fn ring(t: &mut DialogTracker, tag: &str, at: u64) -> Option<Update> {
    t.response(
        &key(),
        Some(tag),
        180,
        Some(&format!("sip:1002@192.0.2.{}:5060", tag.len())),
        "udp:192.0.2.9:5060".parse().ok(),
        at,
    )
}

fn answer(t: &mut DialogTracker, tag: &str, at: u64) -> Option<Update> {
    t.response(
        &key(),
        Some(tag),
        200,
        Some("sip:1002@192.0.2.9:5060"),
        "udp:192.0.2.9:5060".parse().ok(),
        at,
    )
}

fn states(c: &Call) -> Vec<(&str, DialogState)> {
    c.branches
        .iter()
        .map(|b| (b.to_tag.as_str(), b.state))
        .collect()
}

const HOLD: &str = "v=0\r\no=- 3724394400 3724394401 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\n";
const RESUME: &str = "v=0\r\no=- 3724394400 3724394402 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";

#[test]
fn rfc4235_3_7_1_ring_answer_hold_unhold_bye() {
    let mut t = started();
    // 100 Trying is hop-by-hop: nothing.
    assert!(t.response(&key(), None, 100, None, None, T0 + 1).is_none());
    // A provisional answer without a to-tag: proceeding.
    let u = t.response(&key(), None, 183, None, None, T0 + 2).unwrap();
    assert_eq!(u.call.state, DialogState::Proceeding);
    assert!(u.call.branches.is_empty());
    // 180 with a tag: an early dialog.
    let u = ring(&mut t, "b1", T0 + 10).unwrap();
    assert_eq!(u.call.state, DialogState::Early);
    assert_eq!(states(&u.call), [("b1", DialogState::Early)]);
    assert_eq!(
        u.call.branches[0].target.as_deref(),
        Some("sip:1002@192.0.2.2:5060")
    );
    // 200: confirmed.
    let u = answer(&mut t, "b1", T0 + 5000).unwrap();
    assert_eq!(u.call.state, DialogState::Confirmed);
    assert_eq!(states(&u.call), [("b1", DialogState::Confirmed)]);
    assert_eq!(u.call.confirmed_ms, Some(T0 + 5000));
    assert_eq!(
        u.call.callee.target.as_deref(),
        Some("sip:1002@192.0.2.9:5060")
    );
    assert_eq!(
        u.call.callee_flow().map(|f| f.to_string()).as_deref(),
        Some("udp:192.0.2.9:5060")
    );
    assert_eq!(t.confirmed().len(), 1);
    // The caller holds (re-INVITE sendonly), then resumes.
    let u = t
        .reinvite(
            &key().call_id,
            &key().from_tag,
            "b1",
            HOLD.as_bytes(),
            T0 + 9000,
        )
        .unwrap();
    assert!(u.call.branches[0].caller_held && !u.call.branches[0].callee_held);
    assert_eq!(u.call.state, DialogState::Confirmed);
    // The same offer again (a retransmission or a session refresh): no change.
    assert!(t
        .reinvite(
            &key().call_id,
            &key().from_tag,
            "b1",
            HOLD.as_bytes(),
            T0 + 9001
        )
        .is_none());
    let u = t
        .reinvite(
            &key().call_id,
            &key().from_tag,
            "b1",
            RESUME.as_bytes(),
            T0 + 12_000,
        )
        .unwrap();
    assert!(!u.call.branches[0].caller_held);
    // The callee holds: its tag is the sender's (tags in the other order).
    let u = t
        .reinvite(
            &key().call_id,
            "b1",
            &key().from_tag,
            HOLD.as_bytes(),
            T0 + 13_000,
        )
        .unwrap();
    assert!(u.call.branches[0].callee_held && !u.call.branches[0].caller_held);
    // BYE from the callee: everything ends.
    let seq = u.call.seq;
    let u = t
        .bye(&key().call_id, "b1", &key().from_tag, T0 + 20_000)
        .unwrap();
    assert_eq!(u.call.state, DialogState::Terminated);
    assert_eq!(u.call.end, Some(EndReason::CalleeBye));
    assert_eq!(states(&u.call), [("b1", DialogState::Terminated)]);
    assert!(u.call.seq > seq);
    assert_eq!(u.write, DialogWrite::Delete(call_key(&key())));
    assert_eq!(t.len(), 0);
    assert!(t.next_deadline().is_none());
    // The BYE retransmitted: nothing.
    assert!(t
        .bye(&key().call_id, "b1", &key().from_tag, T0 + 20_500)
        .is_none());
}

#[test]
fn rfc3261_15_bye_from_the_caller_is_told_apart() {
    let mut t = started();
    answer(&mut t, "b1", T0 + 1).unwrap();
    let u = t
        .bye(&key().call_id, &key().from_tag, "b1", T0 + 2)
        .unwrap();
    assert_eq!(u.call.end, Some(EndReason::CallerBye));
    // An unknown dialog of a known Call-ID: nothing.
    let mut t = started();
    answer(&mut t, "b1", T0 + 1).unwrap();
    assert!(t
        .bye(&key().call_id, &key().from_tag, "zz", T0 + 2)
        .is_none());
    assert!(t.bye("other-call", &key().from_tag, "b1", T0 + 2).is_none());
    assert_eq!(t.len(), 1);
}

#[test]
fn every_update_counts_up_and_changes_write_the_record() {
    let mut t = started();
    let a = ring(&mut t, "b1", T0 + 1).unwrap();
    let b = answer(&mut t, "b1", T0 + 2).unwrap();
    assert!(b.call.seq > a.call.seq);
    match &b.write {
        DialogWrite::Put { key: k, value } => {
            assert_eq!(*k, call_key(&key()));
            assert_eq!(crate::storage::dialogs::decode_call(value).unwrap(), b.call);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.get(&key()), Some(&b.call));
}

#[test]
fn rfc3261_16_7_forked_branches_are_early_dialogs_and_losers_vanish() {
    let mut t = started();
    let u = ring(&mut t, "deskphone", T0 + 10).unwrap();
    assert_eq!(states(&u.call), [("deskphone", DialogState::Early)]);
    let u = ring(&mut t, "softphone", T0 + 20).unwrap();
    assert_eq!(
        states(&u.call),
        [
            ("deskphone", DialogState::Early),
            ("softphone", DialogState::Early)
        ]
    );
    // The same branch again (183 after 180, same contact): no change.
    assert!(t
        .response(
            &key(),
            Some("softphone"),
            183,
            Some("sip:1002@192.0.2.9:5060"),
            None,
            T0 + 25
        )
        .is_none());
    // The softphone answers: the desk phone's early dialog vanishes (not terminated).
    let u = answer(&mut t, "softphone", T0 + 30).unwrap();
    assert_eq!(states(&u.call), [("softphone", DialogState::Confirmed)]);
    assert_eq!(u.call.state, DialogState::Confirmed);
    // The loser's 180 racing the proxy's CANCEL, then its 487: no change.
    assert!(ring(&mut t, "deskphone", T0 + 31).is_none());
    assert!(t
        .response(&key(), Some("deskphone"), 487, None, None, T0 + 32)
        .is_none());
    // A third branch ringing after the answer: no new early dialog.
    assert!(ring(&mut t, "third", T0 + 33).is_none());
    // The proxy's best-response bookkeeping: the call is confirmed, failed changes nothing.
    assert!(t.failed(&key(), 487, T0 + 34).is_none());
    assert_eq!(t.get(&key()).unwrap().branches.len(), 1);
}

#[test]
fn rfc3261_13_2_2_4_a_late_2xx_from_another_branch_is_a_second_dialog() {
    let mut t = started();
    ring(&mut t, "a", T0 + 1).unwrap();
    ring(&mut t, "b", T0 + 2).unwrap();
    answer(&mut t, "a", T0 + 3).unwrap();
    // b answered before the CANCEL reached it.
    let u = answer(&mut t, "b", T0 + 4).unwrap();
    assert_eq!(
        states(&u.call),
        [("a", DialogState::Confirmed), ("b", DialogState::Confirmed)]
    );
    assert_eq!(u.call.winner().unwrap().to_tag, "a");
    // The caller BYEs b: a goes on.
    let u = t.bye(&key().call_id, &key().from_tag, "b", T0 + 5).unwrap();
    assert_eq!(u.call.state, DialogState::Confirmed);
    assert_eq!(states(&u.call), [("a", DialogState::Confirmed)]);
    assert!(matches!(u.write, DialogWrite::Put { .. }));
    // b's 200 retransmitted after its BYE: it stays gone.
    assert!(answer(&mut t, "b", T0 + 6).is_none());
    let u = t.bye(&key().call_id, "a", &key().from_tag, T0 + 7).unwrap();
    assert_eq!(u.call.state, DialogState::Terminated);
}

#[test]
fn rfc3261_16_7_a_branch_rejecting_ends_only_that_branch() {
    let mut t = started();
    ring(&mut t, "a", T0 + 1).unwrap();
    ring(&mut t, "b", T0 + 2).unwrap();
    let u = t
        .response(&key(), Some("a"), 486, None, None, T0 + 3)
        .unwrap();
    assert_eq!(states(&u.call), [("b", DialogState::Early)]);
    assert_eq!(u.call.state, DialogState::Early);
    // Its late 180: it does not come back.
    assert!(ring(&mut t, "a", T0 + 4).is_none());
    let u = t
        .response(&key(), Some("b"), 480, None, None, T0 + 5)
        .unwrap();
    // No branch rings any more, but the call is not over until the proxy says so.
    assert!(u.call.branches.is_empty());
    assert_eq!(u.call.state, DialogState::Proceeding);
    // A final answer of a branch that never rang: nothing to show.
    assert!(t
        .response(&key(), Some("c"), 404, None, None, T0 + 6)
        .is_none());
    let u = t.failed(&key(), 486, T0 + 7).unwrap();
    assert_eq!(u.call.state, DialogState::Terminated);
    assert_eq!(u.call.end, Some(EndReason::Rejected));
    assert_eq!(u.call.code, Some(486));
}

#[test]
fn rfc3261_9_cancel_ends_ringing_at_once() {
    let mut t = started();
    ring(&mut t, "a", T0 + 1).unwrap();
    ring(&mut t, "b", T0 + 2).unwrap();
    let u = t.cancel(&key(), T0 + 3).unwrap();
    assert_eq!(u.call.state, DialogState::Terminated);
    assert_eq!(u.call.end, Some(EndReason::Cancelled));
    assert_eq!(u.call.code, Some(487));
    // The early dialogs are shown terminated, so the watcher sees the lamp stop.
    assert_eq!(
        states(&u.call),
        [
            ("a", DialogState::Terminated),
            ("b", DialogState::Terminated)
        ]
    );
    assert_eq!(u.write, DialogWrite::Delete(call_key(&key())));
    // The 487s and the proxy's final 487 upstream: nothing more.
    assert!(t
        .response(&key(), Some("a"), 487, None, None, T0 + 4)
        .is_none());
    assert!(t.failed(&key(), 487, T0 + 5).is_none());
    assert!(t.cancel(&key(), T0 + 6).is_none());
}

#[test]
fn rfc3261_9_cancel_before_any_answer_and_after_the_answer() {
    let mut t = started();
    let u = t.cancel(&key(), T0 + 1).unwrap();
    assert_eq!(u.call.state, DialogState::Terminated);
    assert!(u.call.branches.is_empty());
    // After the answer, CANCEL has no effect on the confirmed dialog (§9.2) but the
    // unanswered branches go.
    let mut t = started();
    ring(&mut t, "a", T0 + 1).unwrap();
    ring(&mut t, "b", T0 + 2).unwrap();
    answer(&mut t, "a", T0 + 3).unwrap();
    assert!(t.cancel(&key(), T0 + 4).is_none());
    assert_eq!(t.get(&key()).unwrap().state, DialogState::Confirmed);
}

#[test]
fn rfc3261_21_6_2_busy() {
    let mut t = started();
    ring(&mut t, "b1", T0 + 1).unwrap();
    // The busy branch's early dialog ends with its 486...
    let u = t
        .response(
            &key(),
            Some("b1"),
            486,
            None,
            "udp:192.0.2.9:5060".parse().ok(),
            T0 + 2,
        )
        .unwrap();
    assert!(u.call.branches.is_empty());
    // ... and the call when the proxy forwards the 486 upstream.
    let u = t.failed(&key(), 486, T0 + 3).unwrap();
    assert_eq!(u.call.state, DialogState::Terminated);
    assert_eq!(u.call.end, Some(EndReason::Rejected));
    assert_eq!(u.call.code, Some(486));
}

#[test]
fn rfc3261_16_6_timer_c_408() {
    let mut t = started();
    ring(&mut t, "a", T0 + 1).unwrap();
    let u = t.failed(&key(), 408, T0 + 180_000).unwrap();
    assert_eq!(u.call.end, Some(EndReason::Timeout));
    assert_eq!(u.call.code, Some(408));
    assert_eq!(states(&u.call), [("a", DialogState::Terminated)]);
}

#[test]
fn monotonic_reordered_and_duplicated_responses() {
    // 180 after 200: no change.
    let mut t = started();
    answer(&mut t, "a", T0 + 1).unwrap();
    assert!(ring(&mut t, "a", T0 + 2).is_none());
    // 200 retransmitted: no change.
    assert!(answer(&mut t, "a", T0 + 3).is_none());
    assert_eq!(t.get(&key()).unwrap().state, DialogState::Confirmed);

    // 200 after 487 (CANCEL race): the call stays ended.
    let mut t = started();
    ring(&mut t, "a", T0 + 1).unwrap();
    t.cancel(&key(), T0 + 2).unwrap();
    assert!(answer(&mut t, "a", T0 + 3).is_none());
    assert!(t.get(&key()).is_none());
    // ... and a retransmitted INVITE cannot bring it back.
    assert!(t.invite(key(), info(), T0 + 4).is_none());

    // 180 after BYE.
    let mut t = started();
    answer(&mut t, "a", T0 + 1).unwrap();
    t.bye(&key().call_id, &key().from_tag, "a", T0 + 2).unwrap();
    assert!(ring(&mut t, "a", T0 + 3).is_none());
    assert!(answer(&mut t, "a", T0 + 4).is_none());
    assert!(t.failed(&key(), 500, T0 + 5).is_none());
    assert!(t.end(&key(), EndReason::Error, T0 + 6).is_none());

    // Duplicates before the answer.
    let mut t = started();
    assert!(
        t.invite(key(), info(), T0 + 1).is_none(),
        "retransmitted INVITE"
    );
    ring(&mut t, "a", T0 + 2).unwrap();
    assert!(ring(&mut t, "a", T0 + 3).is_none());
    t.response(&key(), None, 180, None, None, T0 + 4);
    assert!(t.response(&key(), None, 180, None, None, T0 + 5).is_none());
    // Out-of-range statuses and unknown calls.
    assert!(t.response(&key(), Some("a"), 700, None, None, T0).is_none());
    assert!(t.response(&key(), Some("a"), 99, None, None, T0).is_none());
    let other = CallKey {
        call_id: "x".into(),
        from_tag: "y".into(),
    };
    assert!(answer(&mut t, "a", T0).is_some());
    assert!(t.response(&other, Some("a"), 200, None, None, T0).is_none());
    assert!(t.cancel(&other, T0).is_none());
}

#[test]
fn monotonic_no_permutation_of_events_un_terminates_a_call() {
    // Every order of these events: once a call has ended, no later event gives an update.
    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Ring(&'static str),
        Answer(&'static str),
        Reject(&'static str),
        Cancel,
        Fail,
        Bye(&'static str),
    }
    let events = [
        Ev::Ring("a"),
        Ev::Ring("b"),
        Ev::Answer("a"),
        Ev::Reject("b"),
        Ev::Cancel,
        Ev::Fail,
        Ev::Bye("a"),
    ];
    let n = events.len();
    let mut perm: Vec<usize> = (0..n).collect();
    // Heap's algorithm over 7! = 5040 orders.
    let mut c = vec![0usize; n];
    let run = |order: &[usize]| {
        let mut t = started();
        let mut ended = false;
        for (i, &e) in order.iter().enumerate() {
            let now = T0 + 1 + i as u64;
            let u = match events[e] {
                Ev::Ring(tag) => ring(&mut t, tag, now),
                Ev::Answer(tag) => answer(&mut t, tag, now),
                Ev::Reject(tag) => t.response(&key(), Some(tag), 486, None, None, now),
                Ev::Cancel => t.cancel(&key(), now),
                Ev::Fail => t.failed(&key(), 486, now),
                Ev::Bye(tag) => t.bye(&key().call_id, &key().from_tag, tag, now),
            };
            if let Some(u) = u {
                assert!(!ended, "update after the end: {order:?} at {i}: {u:?}");
                // Confirmed only from a 2xx.
                if u.call
                    .branches
                    .iter()
                    .any(|b| b.state == DialogState::Confirmed)
                {
                    assert!(
                        order[..=i]
                            .iter()
                            .any(|&x| matches!(events[x], Ev::Answer(_))),
                        "{order:?}"
                    );
                }
                if u.call.state == DialogState::Terminated {
                    ended = true;
                    assert!(matches!(u.write, DialogWrite::Delete(_)));
                }
            }
        }
    };
    run(&perm);
    let mut i = 0;
    while i < n {
        if c[i] < i {
            if i % 2 == 0 {
                perm.swap(0, i);
            } else {
                perm.swap(c[i], i);
            }
            run(&perm);
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
}

#[test]
fn reinvite_needs_a_confirmed_dialog_and_sdp() {
    let mut t = started();
    ring(&mut t, "a", T0 + 1).unwrap();
    // UPDATE with hold SDP in an early dialog: not tracked.
    assert!(t
        .reinvite(
            &key().call_id,
            &key().from_tag,
            "a",
            HOLD.as_bytes(),
            T0 + 2
        )
        .is_none());
    answer(&mut t, "a", T0 + 3).unwrap();
    // Not SDP (or no body: delayed offer): nothing.
    assert!(t
        .reinvite(&key().call_id, &key().from_tag, "a", b"", T0 + 4)
        .is_none());
    // RFC 2543 hold.
    let old = RESUME.replace("c=IN IP4 192.0.2.7", "c=IN IP4 0.0.0.0");
    let u = t
        .reinvite(&key().call_id, &key().from_tag, "a", old.as_bytes(), T0 + 5)
        .unwrap();
    assert!(u.call.branches[0].caller_held);
    // inactive
    let inactive = RESUME.replace("a=sendrecv", "a=inactive");
    let u = t
        .reinvite(
            &key().call_id,
            "a",
            &key().from_tag,
            inactive.as_bytes(),
            T0 + 6,
        )
        .unwrap();
    assert!(u.call.branches[0].callee_held);
}

#[test]
fn end_and_end_dialog() {
    let mut t = started();
    answer(&mut t, "a", T0 + 1).unwrap();
    answer(&mut t, "b", T0 + 2).unwrap();
    let u = t
        .end_dialog(
            &key().call_id,
            "b",
            &key().from_tag,
            EndReason::Error,
            T0 + 3,
        )
        .unwrap();
    assert_eq!(states(&u.call), [("a", DialogState::Confirmed)]);
    let u = t.end(&key(), EndReason::Error, T0 + 4).unwrap();
    assert_eq!(u.call.end, Some(EndReason::Error));
    assert_eq!(u.call.state, DialogState::Terminated);
}

#[test]
fn note_cseq_rises_only() {
    let mut t = started();
    answer(&mut t, "a", T0 + 1).unwrap();
    assert!(t
        .note_cseq(&key().call_id, &key().from_tag, "a", 100)
        .is_none());
    assert!(t
        .note_cseq(&key().call_id, &key().from_tag, "a", 102)
        .is_some());
    assert_eq!(t.get(&key()).unwrap().caller_cseq, 102);
    assert!(t
        .note_cseq(&key().call_id, "a", &key().from_tag, 5)
        .is_some());
    assert!(t
        .note_cseq(&key().call_id, "a", &key().from_tag, 5)
        .is_none());
    assert_eq!(t.get(&key()).unwrap().branches[0].callee_cseq, Some(5));
}

#[test]
fn expire_unanswered_after_early_timeout_and_answered_after_max_lifetime() {
    let cfg = cfg();
    let mut t = started();
    assert_eq!(t.next_deadline(), Some(T0 + cfg.early_timeout * 1000));
    ring(&mut t, "a", T0 + 1).unwrap();
    let early_deadline = T0 + 1 + cfg.early_timeout * 1000;
    assert_eq!(t.next_deadline(), Some(early_deadline));
    assert!(t.expire(early_deadline - 1).is_empty());
    let u = t.expire(early_deadline);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].call.end, Some(EndReason::Timeout));
    assert_eq!(u[0].call.state, DialogState::Terminated);
    assert_eq!(t.next_deadline(), None);

    let mut t = started();
    answer(&mut t, "a", T0 + 4000).unwrap();
    let life = T0 + 4000 + cfg.max_lifetime * 1000;
    assert_eq!(t.next_deadline(), Some(life));
    assert!(t.expire(life - 1).is_empty());
    let u = t.expire(life);
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].write, DialogWrite::Delete(call_key(&key())));
    assert!(t.is_empty());
}

#[test]
fn rfc3261_16_7_every_provisional_restarts_the_unanswered_deadline() {
    // A PBX queue keeps the caller waiting with a 183 every minute: Timer C restarts each
    // time, so must our deadline, though nothing visible changes.
    let cfg = cfg();
    let mut t = started();
    t.response(&key(), None, 183, None, None, T0 + 1).unwrap();
    for minute in 1..=10u64 {
        let at = T0 + minute * 60_000;
        assert!(t.expire(at).is_empty(), "minute {minute}");
        assert!(t.response(&key(), None, 183, None, None, at).is_none());
        assert_eq!(t.next_deadline(), Some(at + cfg.early_timeout * 1000));
    }
    let u = answer(&mut t, "q", T0 + 11 * 60_000).unwrap();
    assert_eq!(u.call.state, DialogState::Confirmed);
    assert_eq!(u.call.progress_ms, T0 + 10 * 60_000);
}

#[test]
fn bounded_by_max_calls() {
    let mut t = DialogTracker::new(&DialogConfig {
        max_calls: 2,
        ..cfg()
    });
    let k = |i: u32| CallKey {
        call_id: format!("c{i}"),
        from_tag: "f".into(),
    };
    assert!(t.invite(k(1), info(), T0).is_some());
    assert!(t.invite(k(2), info(), T0).is_some());
    assert!(t.invite(k(3), info(), T0).is_none());
    assert_eq!(t.len(), 2);
    t.cancel(&k(1), T0 + 1).unwrap();
    assert!(t.invite(k(3), info(), T0 + 2).is_some());
}

#[test]
fn ended_calls_are_remembered_for_a_while_only() {
    let mut t = started();
    t.cancel(&key(), T0 + 1).unwrap();
    assert!(t.invite(key(), info(), T0 + ENDED_KEEP_MS).is_none());
    // Long after: the same key is a new call (Call-IDs are unique; this only bounds memory).
    assert!(t.invite(key(), info(), T0 + 1 + ENDED_KEEP_MS).is_some());
    // And the set is bounded.
    let mut t = DialogTracker::new(&cfg());
    for i in 0..(ENDED_KEEP + 10) {
        let k = CallKey {
            call_id: format!("c{i}"),
            from_tag: "f".into(),
        };
        t.invite(k.clone(), info(), T0).unwrap();
        t.cancel(&k, T0).unwrap();
    }
    assert!(t.ended.len() <= ENDED_KEEP);
    assert!(t.ended.order.len() <= ENDED_KEEP);
}

#[test]
fn restore_after_restart_ends_what_cannot_be_alive_and_keeps_the_rest() {
    let cfg = cfg();
    let mut before = DialogTracker::new(&cfg);
    let k = |name: &str| CallKey {
        call_id: name.into(),
        from_tag: "f".into(),
    };
    let mut stored = Vec::new();
    // Ringing for longer than early_timeout (Timer C lost with the restart).
    before.invite(k("stale-early"), info(), T0).unwrap();
    stored.push(ring_k(&mut before, &k("stale-early"), T0 + 1).call);
    // Ringing, started later, but also long before the restart.
    before
        .invite(k("early-later"), info(), T0 + 200_000)
        .unwrap();
    stored.push(ring_k(&mut before, &k("early-later"), T0 + 200_001).call);
    // Answered longer ago than max_lifetime.
    before.invite(k("stale-confirmed"), info(), T0).unwrap();
    stored.push(
        before
            .response(&k("stale-confirmed"), Some("t"), 200, None, None, T0 + 1)
            .unwrap()
            .call,
    );
    // Answered, recent.
    let now = T0 + cfg.max_lifetime * 1000 + 10;
    before.invite(k("live"), info(), now - 60_000).unwrap();
    stored.push(
        before
            .response(&k("live"), Some("t"), 200, None, None, now - 50_000)
            .unwrap()
            .call,
    );
    // Through the record encoding, as after a restart.
    let stored: Vec<Call> = stored
        .iter()
        .map(|c| {
            crate::storage::dialogs::decode_call(&crate::storage::dialogs::encode_call(c)).unwrap()
        })
        .collect();
    let mut after = DialogTracker::new(&cfg);
    let ended = after.restore(stored, now);
    let mut names: Vec<&str> = ended.iter().map(|u| u.call.key.call_id.as_str()).collect();
    names.sort();
    assert_eq!(names, ["early-later", "stale-confirmed", "stale-early"]);
    for u in &ended {
        assert_eq!(u.call.state, DialogState::Terminated);
        assert_eq!(u.call.end, Some(EndReason::Timeout));
        assert!(u
            .call
            .branches
            .iter()
            .all(|b| b.state == DialogState::Terminated));
        assert_eq!(u.write, DialogWrite::Delete(call_key(&u.call.key)));
    }
    assert_eq!(after.len(), 1);
    let live = after.get(&k("live")).unwrap();
    assert_eq!(live.state, DialogState::Confirmed);
    assert_eq!(after.confirmed().len(), 1);
    assert_eq!(
        after.next_deadline(),
        Some(now - 50_000 + cfg.max_lifetime * 1000)
    );
    // A restored call is tracked as before: BYE ends it.
    assert!(after.bye("live", "t", "f", now + 1).is_some());
    // The ended ones are remembered: a late INVITE retransmission cannot revive them.
    assert!(after.invite(k("stale-early"), info(), now + 2).is_none());
}

#[test]
fn restore_keeps_a_recent_ringing_call_until_early_timeout() {
    let cfg = cfg();
    let mut before = DialogTracker::new(&cfg);
    before.invite(key(), info(), T0).unwrap();
    let call = ring(&mut before, "a", T0 + 1).unwrap().call;
    let mut after = DialogTracker::new(&cfg);
    assert!(after.restore(vec![call], T0 + 30_000).is_empty());
    assert_eq!(after.get(&key()).unwrap().state, DialogState::Early);
    // It can still be answered, or it times out early_timeout after its last 180.
    assert_eq!(
        after.next_deadline(),
        Some(T0 + 1 + cfg.early_timeout * 1000)
    );
    let u = answer(&mut after, "a", T0 + 40_000).unwrap();
    assert_eq!(u.call.state, DialogState::Confirmed);
}

fn ring_k(t: &mut DialogTracker, k: &CallKey, at: u64) -> Update {
    t.response(k, Some("t"), 180, None, None, at).unwrap()
}

fn dialog(from_tag: &str, to_tag: &str) -> DialogId {
    DialogId {
        call_id: key().call_id,
        from_tag: from_tag.into(),
        to_tag: to_tag.into(),
    }
}

#[test]
fn rfc3261_16_11_an_ack_is_expected_only_for_a_confirmed_or_just_answered_dialog() {
    let mut t = started();
    let caller = key().from_tag;
    // Ringing: an early dialog has no ACK of its own (the ACK of a non-2xx is hop by hop).
    ring(&mut t, "b1", T0 + 10).unwrap();
    assert!(!t.expects_ack(&dialog(&caller, "b1"), T0 + 11));
    // Answered: the caller's ACK, and the callee's for its own re-INVITE (tags swapped).
    answer(&mut t, "b1", T0 + 20).unwrap();
    assert!(t.expects_ack(&dialog(&caller, "b1"), T0 + 21));
    assert!(t.expects_ack(&dialog("b1", &caller), T0 + 21));
    // Another to-tag, another Call-ID: no dialog of ours.
    assert!(!t.expects_ack(&dialog(&caller, "forged"), T0 + 21));
    let mut other = dialog(&caller, "b1");
    other.call_id = "made-up".into();
    assert!(!t.expects_ack(&other, T0 + 21));
}

#[test]
fn rfc3261_9_1_a_2xx_that_crossed_the_cancel_still_gets_its_ack_for_a_while() {
    let mut t = started();
    let caller = key().from_tag;
    ring(&mut t, "b1", T0 + 10).unwrap();
    // The caller cancels: the call ends in the tracker; then the callee's 2xx passes.
    t.cancel(&key(), T0 + 20).unwrap();
    assert!(answer(&mut t, "b1", T0 + 30).is_none());
    assert!(!t.expects_ack(&dialog(&caller, "b1"), T0 + 31));
    t.answered(dialog(&caller, "b1"), T0 + 30);
    assert!(t.expects_ack(&dialog(&caller, "b1"), T0 + 31));
    // Exactly as the 2xx named it: not with the tags swapped, and not for ever.
    assert!(!t.expects_ack(&dialog("b1", &caller), T0 + 31));
    assert!(!t.expects_ack(&dialog(&caller, "b1"), T0 + 30 + ENDED_KEEP_MS));
    // Forgotten once old, whoever asks next.
    t.answered(dialog("x", "y"), T0 + 30 + ENDED_KEEP_MS);
    assert_eq!(t.answered.len(), 1);
}

#[test]
fn flows_read_back_as_written() {
    for text in ["udp:192.0.2.7:5060", "tcp:[2001:db8::1]:5061"] {
        let f: Flow = text.parse().unwrap();
        assert_eq!(f.to_string(), text);
    }
    assert_eq!(
        "tcp:[::1]:5061".parse::<Flow>().unwrap().remote,
        "[::1]:5061".parse().unwrap()
    );
    for bad in ["sctp:1.2.3.4:5", "udp:host.example:5060", "udp", ""] {
        assert!(bad.parse::<Flow>().is_err(), "{bad}");
    }
}

fn id(from_tag: &str, to_tag: &str) -> DialogId {
    DialogId {
        call_id: key().call_id,
        from_tag: from_tag.into(),
        to_tag: to_tag.into(),
    }
}

#[test]
fn rfc3261_12_2_the_sender_of_an_in_dialog_request_is_the_side_its_from_tag_names() {
    let mut t = started();
    let caller = key().from_tag;
    // Before any answer with a to-tag there is no dialog to send in.
    assert_eq!(t.sender(&id(&caller, "b1")), None);
    // The early dialog (RFC 3261 §12.1: a 1xx with a to-tag) already has its parties.
    t.response_routed(
        &key(),
        Some("b1"),
        180,
        None,
        "udp:192.0.2.9:5060".parse().ok(),
        &["<sip:192.0.2.10;lr>".into()],
        T0 + 1,
    )
    .unwrap();
    let s = t.sender(&id(&caller, "b1")).expect("the caller");
    assert_eq!(s.side, Side::Caller);
    assert_eq!(s.flow, Some(info().caller_flow));
    assert_eq!(s.aor.as_deref(), Some("sip:1001@example.com"));
    assert_eq!(s.route_set, vec!["<sip:192.0.2.10;lr>".to_string()]);
    let s = t.sender(&id("b1", &caller)).expect("the callee");
    assert_eq!(s.side, Side::Callee);
    assert_eq!(s.flow, "udp:192.0.2.9:5060".parse().ok());
    assert_eq!(s.aor.as_deref(), Some("sip:1002@example.com"));
    // A made-up to-tag names no dialog.
    assert_eq!(t.sender(&id(&caller, "forged")), None);
    // The 2xx's route set replaces the early one's (§12.1.2), at most MAX_ROUTE_SET kept.
    let long: Vec<String> = (0..40).map(|i| format!("<sip:p{i}.test;lr>")).collect();
    t.response_routed(&key(), Some("b1"), 200, None, None, &long, T0 + 2)
        .unwrap();
    let s = t.sender(&id(&caller, "b1")).unwrap();
    assert_eq!(s.route_set, long[..MAX_ROUTE_SET].to_vec());
    // Once the dialog ends, nobody sends in it.
    t.bye(&key().call_id, &caller, "b1", T0 + 3).unwrap();
    assert_eq!(t.sender(&id(&caller, "b1")), None);
}

#[test]
fn rfc3261_12_2_a_party_sends_from_its_flow_a_registered_flow_or_as_the_trusted_pbx() {
    let flow = |s: &str| s.parse::<Flow>().unwrap();
    let phone = DialogSender {
        side: Side::Caller,
        flow: Some(flow("udp:192.0.2.7:5060")),
        aor: Some("sip:1001@example.com".into()),
        route_set: vec![],
    };
    let pbx_ip = |ip: IpAddr| ip == "192.0.2.5".parse::<IpAddr>().unwrap();
    let none = |_: IpAddr| false;
    // The flow the dialog was set up over.
    assert!(phone.sent_from(flow("udp:192.0.2.7:5060"), &[], none));
    // Another port, host or transport is someone else...
    for other in [
        "udp:192.0.2.7:5062",
        "udp:192.0.2.66:5060",
        "tcp:192.0.2.7:5060",
    ] {
        assert!(!phone.sent_from(flow(other), &[], none), "{other}");
    }
    // ...unless this party's phone registered from there since (a new port after a reboot).
    assert!(phone.sent_from(
        flow("udp:192.0.2.7:5062"),
        &[flow("udp:192.0.2.7:5062")],
        none
    ));
    // The trusted PBX speaks for a side only when that side is the PBX.
    assert!(!phone.sent_from(flow("udp:192.0.2.5:5060"), &[], pbx_ip));
    let pbx = DialogSender {
        side: Side::Callee,
        flow: Some(flow("udp:192.0.2.5:5060")),
        aor: None,
        route_set: vec![],
    };
    assert!(pbx.sent_from(flow("tcp:192.0.2.5:41000"), &[], pbx_ip));
    assert!(!pbx.sent_from(flow("udp:192.0.2.66:5060"), &[], pbx_ip));
    // After a digest, the user must be the party's: its AOR's user; the PBX has none.
    assert!(phone.is_user("1001"));
    assert!(!phone.is_user("1003"));
    assert!(!phone.is_user("1001@example.com"));
    assert!(!pbx.is_user("1001"));
}
