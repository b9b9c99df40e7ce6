//! Busy lamps from real calls through the proxy (RFC 4235 + pua_dialoginfo), end to end over
//! UDP loopback with three parties: a caller, a callee with two registered phones, and a BLF
//! watcher of the callee. Every scenario must end with the lamp dark, versions strictly
//! increasing, whatever order the phones answer in.

mod common;

use busylamp::sip::body::dialog_info::{DialogState, Direction};
use common::phone::{Phone, CALLS, SDP};
use common::watcher::Watcher;
use common::{server, TestServer};

struct Office {
    s: TestServer,
    alice: Phone,
    bob1: Phone,
    bob2: Phone,
    lamp: Watcher,
}

async fn office() -> Office {
    let s = server(CALLS).await;
    let alice = Phone::registered(s.udp, "1001", "a").await;
    let bob1 = Phone::registered(s.udp, "1002", "desk").await;
    let bob2 = Phone::registered(s.udp, "1002", "soft").await;
    let lamp = Watcher::new(s.udp, "1002").await;
    Office {
        s,
        alice,
        bob1,
        bob2,
        lamp,
    }
}

#[tokio::test]
async fn rfc4235_ringing_answered_held_hung_up_lamp_follows_and_ends_dark() {
    let mut o = office().await;
    let mark = o.s.mark();
    let invite = o.alice.invite("1002", "blf-1").await;
    let at1 = o.bob1.ua.next_request().await;
    let at2 = o.bob2.ua.next_request().await;
    // Nothing rings yet: the callee's lamp stays dark (pua.dialoginfo.callee_trying = false).
    o.s.assert_processed_then_silent(
        mark,
        1,
        o.lamp.ua.no_notify(200),
        "no lamp change before a phone rings",
    )
    .await;

    o.bob1.reply(&at1, 180, "b1").await;
    o.bob2.reply(&at2, 180, "b2").await;
    // Both phones ring: each branch its own early dialog.
    let doc = loop {
        let d = o.lamp.until(Some(DialogState::Early)).await;
        if d.dialogs
            .iter()
            .filter(|x| x.state == DialogState::Early)
            .count()
            == 2
        {
            break d;
        }
    };
    let d = &doc.dialogs[0];
    assert_eq!(d.direction, Some(Direction::Recipient));
    assert_eq!(d.call_id.as_deref(), Some("blf-1"));
    assert_eq!(
        d.remote_tag.as_deref(),
        Some("from-blf-1"),
        "directed pickup needs the caller's tag"
    );
    assert!(d
        .local_tag
        .as_deref()
        .is_some_and(|t| t == "b1" || t == "b2"));
    let remote = d.remote.identity.as_ref().expect("caller identity");
    assert_eq!(remote.uri, "sip:1001@example.test");
    assert_eq!(remote.display.as_deref(), Some("1001 a"));
    let local = d.local.identity.as_ref().expect("callee identity");
    assert_eq!(local.uri, "sip:1002@example.test");

    o.bob2.reply(&at2, 200, "b2").await;
    let ok = o.alice.ua.response().await;
    assert_eq!(ok.status, 200);
    let doc = o.lamp.until(Some(DialogState::Confirmed)).await;
    // The loser vanished: only the answered dialog is shown.
    assert_eq!(doc.dialogs.len(), 1, "{doc:?}");
    assert_eq!(doc.dialogs[0].local_tag.as_deref(), Some("b2"));
    // The losing phone is cancelled.
    let c = o.bob1.ua.next_request().await;
    assert_eq!(c.method, "CANCEL");
    o.bob1.reply(&c, 200, "b1").await;
    o.bob1.reply(&at1, 487, "b1").await;

    let mut leg = Phone::caller_leg(&invite, &ok);
    o.alice
        .ua
        .send(&o.alice.in_dialog(&mut leg, "ACK", None))
        .await;
    assert_eq!(o.bob2.ua.next_request().await.method, "ACK");

    // Alice holds: the lamp shows the call held (+sip.rendering=no on her side).
    let hold = SDP.replace("a=sendrecv", "a=sendonly");
    o.alice
        .ua
        .send(&o.alice.in_dialog(&mut leg, "INVITE", Some(&hold)))
        .await;
    let reinvite = o.bob2.ua.next_request().await;
    assert_eq!(reinvite.method, "INVITE");
    o.bob2.reply(&reinvite, 200, "b2").await;
    assert_eq!(o.alice.ua.response().await.status, 200);
    let doc = o.lamp.next().await;
    let held = &doc.dialogs[0];
    assert_eq!(held.state, DialogState::Confirmed);
    assert_eq!(
        held.remote.param("+sip.rendering"),
        Some("no"),
        "the holding party (remote, for 1002) does not render: {doc:?}"
    );

    // Alice hangs up: dark.
    o.alice
        .ua
        .send(&o.alice.in_dialog(&mut leg, "BYE", None))
        .await;
    let bye = o.bob2.ua.next_request().await;
    assert_eq!(bye.method, "BYE");
    o.bob2.reply(&bye, 200, "b2").await;
    o.lamp.dark().await;
}

#[tokio::test]
async fn rfc4235_cancelled_call_lamp_dark() {
    let mut o = office().await;
    let invite = o.alice.invite("1002", "blf-cancel").await;
    let at1 = o.bob1.ua.next_request().await;
    let at2 = o.bob2.ua.next_request().await;
    o.bob1.reply(&at1, 180, "b1").await;
    o.lamp.until(Some(DialogState::Early)).await;
    o.alice.ua.send(&Phone::cancel(&invite)).await;
    o.lamp.dark().await;
    // The phones' 487s change nothing more for the lamp.
    let c = o.bob1.ua.next_request().await;
    let mark = o.s.mark();
    o.bob1.reply(&c, 200, "b1").await;
    o.bob1.reply(&at1, 487, "b1").await;
    o.bob2.reply(&at2, 487, "b2").await;
    // Only the terminated → idle step may follow (the linger ends).
    o.s.assert_processed_then_silent(mark, 3, o.lamp.stays_dark(300), "the lamp lit again")
        .await;
}

#[tokio::test]
async fn rfc4235_busy_everywhere_lamp_dark() {
    let mut o = office().await;
    // Refused at once by both phones: the callee's lamp never shows the call.
    o.alice.invite("1002", "blf-busy").await;
    let at1 = o.bob1.ua.next_request().await;
    let at2 = o.bob2.ua.next_request().await;
    let mark = o.s.mark();
    o.bob1.reply(&at1, 486, "b1").await;
    o.bob2.reply(&at2, 486, "b2").await;
    assert_eq!(o.alice.ua.response().await.status, 486);
    o.s.assert_processed_then_silent(
        mark,
        2,
        o.lamp.ua.no_notify(300),
        "a call refused before ringing lights nothing",
    )
    .await;
    // One phone rings, then both refuse: early, then dark.
    o.alice.invite("1002", "blf-busy-2").await;
    let mut invites = Vec::new();
    for phone in [&mut o.bob1, &mut o.bob2] {
        // (the proxy's ACKs of the 486s come first)
        let r = loop {
            let r = phone.ua.next_request().await;
            if r.method == "INVITE" {
                break r;
            }
        };
        invites.push(r);
    }
    let (at1, at2) = (invites.remove(0), invites.remove(0));
    o.bob1.reply(&at1, 180, "b1").await;
    o.lamp.until(Some(DialogState::Early)).await;
    o.bob1.reply(&at1, 486, "b1").await;
    o.bob2.reply(&at2, 486, "b2").await;
    assert_eq!(o.alice.ua.response().await.status, 486);
    o.lamp.dark().await;
}

#[tokio::test]
async fn rfc4235_reordered_and_duplicated_responses_never_relight_the_lamp() {
    let mut o = office().await;
    let invite = o.alice.invite("1002", "blf-reorder").await;
    let at1 = o.bob1.ua.next_request().await;
    let at2 = o.bob2.ua.next_request().await;
    // bob2 answers at once, its 180 arrives after the 200 and twice.
    o.bob2.reply(&at2, 200, "b2").await;
    o.bob2.reply(&at2, 180, "b2").await;
    o.bob2.reply(&at2, 200, "b2").await;
    let ok = o.alice.ua.response().await;
    o.lamp.until(Some(DialogState::Confirmed)).await;
    o.bob1.reply(&at1, 180, "b1").await;
    let c = o.bob1.ua.next_request().await;
    assert_eq!(c.method, "CANCEL");
    o.bob1.reply(&c, 200, "b1").await;
    o.bob1.reply(&at1, 487, "b1").await;
    let mut leg = Phone::caller_leg(&invite, &ok);
    o.alice
        .ua
        .send(&o.alice.in_dialog(&mut leg, "ACK", None))
        .await;
    // bob2 hangs up; then stale responses arrive again.
    let mut bleg = Phone::callee_leg(&at2, "b2");
    o.bob2
        .ua
        .send(&o.bob2.in_dialog(&mut bleg, "BYE", None))
        .await;
    loop {
        let r = o.alice.ua.next_request().await;
        if r.method == "BYE" {
            o.alice.reply(&r, 200, "x").await;
            break;
        }
    }
    o.lamp.dark().await;
    let mark = o.s.mark();
    o.bob2.reply(&at2, 180, "b2").await;
    o.bob2.reply(&at2, 200, "b2").await;
    o.bob1.reply(&at1, 180, "b1").await;
    // Nothing may light the lamp again.
    o.s.assert_processed_then_silent(mark, 3, o.lamp.stays_dark(300), "lamp relit")
        .await;
}

#[tokio::test(start_paused = true)]
async fn rfc4235_no_answer_timer_c_lamp_dark() {
    let mut o = office().await;
    o.alice.invite("1002", "blf-noanswer").await;
    let at1 = o.bob1.ua.next_request().await;
    let at2 = o.bob2.ua.next_request().await;
    o.bob1.reply(&at1, 180, "b1").await;
    o.bob2.reply(&at2, 180, "b2").await;
    o.lamp.until(Some(DialogState::Early)).await;
    // Nobody picks up: Timer C (180 s) cancels both branches.
    for (phone, inv, tag) in [(&mut o.bob1, &at1, "b1"), (&mut o.bob2, &at2, "b2")] {
        let c = phone.next_of_within("CANCEL", 200_000).await;
        phone.reply(&c, 200, tag).await;
        phone.reply(inv, 487, tag).await;
    }
    let r = o.alice.ua.response_within(10_000).await;
    assert_eq!(r.status, 487);
    o.lamp.dark().await;
}

#[tokio::test]
async fn rfc4235_identities_and_ids_with_xml_characters_reach_the_lamp_intact() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let mut lamp = Watcher::new(s.udp, "1002").await;
    // A Call-ID may hold < > ' " and & (RFC 3261 §25.1 word), a display name too.
    let call_id = "a\"<b>&'c@x";
    let invite = format!(
        "INVITE sip:1002@example.test SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: \"Eve <&> \\\"Q\\\"\" <sip:1001@example.test>;tag=ft\r\nTo: <sip:1002@example.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <{c}>\r\nContent-Length: 0\r\n\r\n",
        via = alice.via(),
        c = alice.contact(),
    );
    alice.ua.send(invite.as_bytes()).await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 180, "b").await;
    let doc = lamp.until(Some(DialogState::Early)).await;
    let d = &doc.dialogs[0];
    assert_eq!(d.call_id.as_deref(), Some(call_id));
    let remote = d.remote.identity.as_ref().expect("caller identity");
    assert_eq!(remote.display.as_deref(), Some("Eve <&> \"Q\""));
    bob.reply(&at, 486, "b").await;
    lamp.dark().await;
}
