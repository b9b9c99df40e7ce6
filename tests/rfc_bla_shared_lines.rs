//! Shared lines (BLA, draft-anil-sipping-bla, issue 12): three scripted Polycom-like phones
//! on loopback carry line 2000 (two appearances). Each registers the line (A with the line's
//! own credentials, B and C with their members' 1001 and 1002), answers the server's
//! `dialog;sla` SUBSCRIBE and NOTIFYs its dialogs with the real Polycom body shape
//! (`fixtures/bodies/captures/polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip`:
//! `version="0"`, `pval`, no local identity), and subscribes `dialog;sla` for the line.
//! A seize of a free appearance is `200` and everyone else is told; a seize of a taken one
//! is `409` and nothing changes; a call through the proxy, hold, a pickup by another phone,
//! hang-up and a registration running out (paused clock) move the appearance as a shared
//! line must. Every watcher's versions go up by one per NOTIFY and no phone ever gets its own
//! dialog back (the harness checks both on every NOTIFY). Also: a late joiner's first NOTIFY
//! is the whole line; a NOTIFY outside our subscription is `481`; a non-member is refused;
//! the Contact-user-at-From-domain fallback; BLF watchers of the line see it busy.

mod common;
use busylamp::sip::body::dialog_info::{DialogState, DocState};
use busylamp::sip::HeaderName;
use common::authed::Authed;
use common::bla::*;
use common::phone::Phone;
use common::ua::body;
use common::*;

use DialogState::{Confirmed, Trying};

const CONFIG: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls"]
[registrar]
min_expires = 60
max_expires = 3600
default_expires = 3600
[presence]
coalesce_ms = 0
[bla]
seize_timeout = 30
[[bla.lines]]
aor = "2000"
label = "Main line"
appearances = 2
members = ["1001", "1002"]
[[users]]
name = "2000"
password = "line-pw"
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
name = "1005"
password = "pw1005"
"#;

const LINE: &str = "sip:2000@example.test";

/// A registered, subscribed-both-ways phone of line 2000 with the credentials given.
async fn member(s: &TestServer, name: &str, user: &str, password: &str) -> BlaPhone {
    let mut p = BlaPhone::new(s.udp, "2000", name, user, password).await;
    p.registered().await;
    let sub = p.accept_sla_subscribe().await;
    assert_eq!(
        sub.headers
            .get(HeaderName::Event)
            .map(str::to_ascii_lowercase),
        Some("dialog;sla".into())
    );
    assert_eq!(sub.uri.to_string(), p.phone.contact(), "to the contact");
    for h in [HeaderName::From, HeaderName::To] {
        let v = sub.headers.get(h).unwrap();
        assert!(v.contains(LINE), "{h:?} is the line: {v}");
    }
    assert!(sub
        .headers
        .get(HeaderName::Accept)
        .is_some_and(|a| a.contains("application/dialog-info+xml")));
    assert_eq!(p.watch_line().await, 200, "phone {name} watches the line");
    p
}

/// The far end: user 1005 on a plain phone, registered with its password.
async fn far_end(s: &TestServer) -> Phone {
    let mut p = Phone::new(s.udp, "1005", "far").await;
    p.register_with_password("pw1005").await;
    p
}

#[tokio::test(start_paused = true)]
async fn three_phones_seize_conflict_call_hold_pickup_hang_up_and_registration_expiry() {
    let s = server(CONFIG).await;
    let mut far = far_end(&s).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let mut b = member(&s, "B", "1001", "pw1001").await;
    let mut c = member(&s, "C", "1002", "pw1002").await;
    all_see(&mut [&mut a, &mut b, &mut c], "an idle line", 1000, |v| {
        v.is_empty()
    })
    .await;

    // A seizes appearance 0: B and C see it, A does not get it back.
    let a_docs = a.docs.len();
    let (status, a0) = a.seize(0).await;
    assert_eq!(status, 200, "seize of a free appearance: {}", a.last_reason);
    for p in [&mut b, &mut c] {
        p.sees("A seizing 0", |v| holds(v, 0, "A", Trying, false))
            .await;
    }

    // The change went out (B and C have it): A was not NOTIFYed of its own seize at all,
    // since its document leaves its own dialogs out and did not change.
    a.pump_for(1000).await;
    assert_eq!(a.docs.len(), a_docs, "A got a NOTIFY for its own seize");

    // B seizes 0 too: 409, nothing changes; B seizes 1: 200.
    let (status, _) = b.seize(0).await;
    assert_eq!(
        status, 409,
        "seize of a taken appearance: {}",
        b.last_reason
    );
    assert!(
        b.last_reason.to_ascii_lowercase().contains("appearance"),
        "the reason names the appearance: {}",
        b.last_reason
    );
    let (status, b1) = b.seize(1).await;
    assert_eq!(status, 200, "seize of the other one: {}", b.last_reason);
    a.sees("B on 1, and not its own 0", |v| {
        holds(v, 1, "B", Trying, false) && free(v, 0)
    })
    .await;
    c.sees("A on 0 and B on 1", |v| {
        holds(v, 0, "A", Trying, false) && holds(v, 1, "B", Trying, false)
    })
    .await;
    // B goes back on-hook: 1 is free again for everyone.
    assert_eq!(b.end(&b1).await, 200);
    for p in [&mut a, &mut c] {
        p.sees("1 free", |v| free(v, 1)).await;
    }

    // A's call through our proxy is answered: everyone sees 0 confirmed, and the far end's
    // identity as its target, never its address (a pickup must go through the proxy).
    let (mut leg, tag, status) = a.call(&a0, &mut far).await;
    assert_eq!(status, 200, "{}", a.last_reason);
    for p in [&mut b, &mut c] {
        p.sees("A's call confirmed on 0", |v| {
            holds(v, 0, "A", Confirmed, false)
        })
        .await;
        let d = p.on(0)[0].clone();
        assert_eq!(
            d.remote_identity.as_deref(),
            Some("sip:1005@example.test"),
            "{d:?}"
        );
        assert!(
            !d.remote_target.unwrap_or_default().contains("127.0.0.1"),
            "the far end's address is not shown: {:?}",
            p.on(0)
        );
    }

    // A holds: held for everyone.
    assert_eq!(a.hold(&a0, &mut leg, &mut far, &tag).await, 200);
    for p in [&mut b, &mut c] {
        p.sees("0 held by A", |v| holds(v, 0, "A", Confirmed, true))
            .await;
    }

    // C picks the held call up (its NOTIFY claims 0, confirmed): 0 moves to C.
    let mut pickup = c.new_call(Some(0));
    pickup.state = Confirmed;
    pickup.remote = Some("sip:1005@example.test".into());
    pickup.remote_tag = Some(tag.clone());
    let pick = pickup.id.clone();
    c.mine.insert(pick.clone(), pickup);
    assert_eq!(c.report(&pick).await, 200, "pickup: {}", c.last_reason);
    for p in [&mut a, &mut b] {
        p.sees("0 moved to C", |v| holds(v, 0, "C", Confirmed, false))
            .await;
    }
    // A's leg ends (the far end went over to C); then C hangs up: 0 is free.
    assert_eq!(a.hang_up(&a0, &mut leg, &mut far, &tag).await, 200);
    assert_eq!(c.end(&pick).await, 200);
    for p in [&mut a, &mut b] {
        p.sees("0 free after the hang-up", |v| free(v, 0) && free(v, 1))
            .await;
    }

    // A's registration runs out mid-call: its appearance is released and B and C are told.
    assert_eq!(a.register(60).await, 200, "A refreshes for 60 s only");
    // Whatever the refresh changes in the server's subscription to A (a refresh, or an end
    // and a new one after `resubscribe_wait`) is over before A goes off-hook.
    pump_all(&mut [&mut a, &mut b, &mut c], 3000).await;
    let (status, a2) = a.seize(0).await;
    assert_eq!(status, 200, "{}", a.last_reason);
    let (_leg2, _tag2, status) = a.call(&a2, &mut far).await;
    assert_eq!(status, 200);
    all_see(&mut [&mut b, &mut c], "A's second call", 5000, |v| {
        holds(v, 0, "A", Confirmed, false)
    })
    .await;
    // Up to just before the binding ends nothing changes (every phone answering all along,
    // so no subscription fails on its own)...
    pump_all(&mut [&mut a, &mut b, &mut c], 50_000).await;
    for p in [&b, &c] {
        assert!(
            holds(&p.view, 0, "A", Confirmed, false),
            "still A's before its binding ends: {:#?}",
            p.view
        );
    }
    // ...and past it, 0 is free for B and C.
    all_see(
        &mut [&mut a, &mut b, &mut c],
        "A's appearance released",
        30_000,
        |v| free(v, 0),
    )
    .await;
    assert!(
        s.handle
            .core
            .registrar
            .lookup(LINE)
            .iter()
            .all(|binding| !binding.contact.contains(&a.phone.ua.port().to_string())),
        "A's binding is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_gets_the_whole_line_in_its_first_notify() {
    let s = server(CONFIG).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let mut b = member(&s, "B", "1001", "pw1001").await;
    let (status, a0) = a.seize(0).await;
    assert_eq!(status, 200);
    assert_eq!(
        a.update(&a0, |c| {
            c.state = Confirmed;
            c.remote = Some("sip:1005@example.test".into());
            c.remote_tag = Some("far".into());
        })
        .await,
        200
    );
    let (status, _) = b.seize(1).await;
    assert_eq!(status, 200);
    b.sees("A on 0", |v| holds(v, 0, "A", Confirmed, false))
        .await;
    a.sees("B on 1", |v| holds(v, 1, "B", Trying, false)).await;

    // D registers (the line's own credentials) and subscribes only now.
    let mut d = member(&s, "D", "2000", "line-pw").await;
    let first = d.docs[0].clone();
    assert_eq!(first.state, DocState::Full, "{first:?}");
    assert_eq!(first.entity, LINE);
    let view = first
        .dialogs
        .iter()
        .map(|x| (x.id.clone(), shown(x)))
        .collect();
    assert!(
        holds(&view, 0, "A", Confirmed, false) && holds(&view, 1, "B", Trying, false),
        "every appearance in use is in the first NOTIFY: {view:#?}"
    );
    // And D is told of what follows, like everyone.
    assert_eq!(a.end(&a0).await, 200);
    d.sees("0 free", |v| free(v, 0) && holds(v, 1, "B", Trying, false))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_notify_outside_our_subscription_is_481_and_private_dialogs_are_never_shown() {
    let s = server(CONFIG).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let mut b = member(&s, "B", "1001", "pw1001").await;
    let sla = a.sla.clone().unwrap();
    let mut seize = a.new_call(Some(0));
    seize.id = "stranger-1".into();
    let body_text = a.body(DocState::Partial, &[seize]);
    let wrong: [(&str, String, String); 3] = [
        (
            "Call-ID",
            format!("Call-ID: {}", sla.call_id),
            "Call-ID: not-ours@127.0.0.1".into(),
        ),
        (
            "the server's tag",
            format!(";tag={}", sla.remote_tag),
            ";tag=forged".into(),
        ),
        (
            "our tag",
            format!(";tag={}", sla.local_tag),
            ";tag=forged".into(),
        ),
    ];
    for (what, from, to) in wrong {
        let (bytes, cseq) = a.notify_request(&body_text, "active");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(&from), "{what}: {from} in {text}");
        let forged = text.replacen(&from, &to, 1);
        a.notify_raw(forged.as_bytes()).await;
        // The answer carries the forged dialog's Call-ID.
        let call_id = if what == "Call-ID" {
            "not-ours@127.0.0.1".to_string()
        } else {
            sla.call_id.clone()
        };
        let r = a.response_to(&call_id, cseq, 5000).await;
        assert_eq!(r.status, 481, "wrong {what}: {} {}", r.status, r.reason);
    }

    // A private dialog (no appearance: intercom, music on hold) is accepted, never shown.
    let private = a.new_call(None);
    let pid = private.id.clone();
    a.mine.insert(pid.clone(), private);
    assert_eq!(a.report(&pid).await, 200, "{}", a.last_reason);
    // Then a visible change: B sees it, and neither the stranger's seize nor the private
    // dialog ever got in.
    let (status, _) = a.seize(1).await;
    assert_eq!(status, 200);
    b.sees("A on 1", |v| holds(v, 1, "A", Trying, false)).await;
    assert!(free(&b.view, 0), "the stranger's seize: {:#?}", b.view);
    assert_eq!(b.view.len(), 1, "only A's seize of 1: {:#?}", b.view);
    let (status, _) = b.seize(0).await;
    assert_eq!(status, 200, "0 was never taken: {}", b.last_reason);
}

#[tokio::test(start_paused = true)]
async fn a_user_who_is_not_a_member_may_neither_register_nor_watch_the_line() {
    let s = server(CONFIG).await;
    let mut e = BlaPhone::new(s.udp, "2000", "E", "1003", "pw1003").await;
    let status = e.register(3600).await;
    assert_eq!(status, 403, "1003 registering line 2000");
    assert_eq!(e.watch_line().await, 403, "1003 watching line 2000");
    assert!(!e.watching());
}

#[tokio::test(start_paused = true)]
async fn the_resource_falls_back_to_contact_user_at_from_domain() {
    let s = server(CONFIG).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let (status, _) = a.seize(0).await;
    assert_eq!(status, 200);
    // B's SUBSCRIBE names B's own user (1001) in the Request-URI and From; its Contact
    // user is the line (as a Polycom's shared registration is).
    let mut b = BlaPhone::new(s.udp, "2000", "B", "1001", "pw1001").await;
    b.registered().await;
    b.accept_sla_subscribe().await;
    assert!(b.phone.contact().starts_with("sip:2000@"));
    let status = b.subscribe_sla("sip:1001@example.test", "1001").await;
    assert_eq!(status, 200);
    assert_eq!(b.docs[0].entity, LINE, "the line's document");
    assert!(
        holds(&b.view, 0, "A", Trying, false),
        "the line's state: {:#?}",
        b.view
    );
}

#[tokio::test(start_paused = true)]
async fn blf_watchers_of_the_line_see_it_busy_while_an_appearance_is_in_use() {
    let s = server(CONFIG).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let mut blf = Authed::new(s.udp, "1003", "pw1003").await;
    let r = blf.subscribe("2000", "dialog", "blf-2000", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let first = body(&blf.ua.notify().await);
    assert!(!first.contains("confirmed"), "idle first: {first}");
    let (status, a0) = a.seize(0).await;
    assert_eq!(status, 200);
    assert_eq!(
        a.update(&a0, |c| {
            c.state = Confirmed;
            c.remote = Some("sip:1005@example.test".into());
            c.remote_tag = Some("far".into());
        })
        .await,
        200
    );
    blf.ua
        .notify_until(|b| b.contains("<state>confirmed</state>"))
        .await;
    assert_eq!(a.end(&a0).await, 200);
    blf.ua
        .notify_until(|b| !b.contains("<state>confirmed</state>"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_call_to_the_line_rings_every_phone_and_the_one_that_answers_takes_the_appearance() {
    let s = server(CONFIG).await;
    let mut far = far_end(&s).await;
    let mut a = member(&s, "A", "2000", "line-pw").await;
    let mut b = member(&s, "B", "1001", "pw1001").await;
    let mut c = member(&s, "C", "1002", "pw1002").await;

    // 1005 calls the line: the proxy forks to the three registered phones.
    let invite = far.invite("2000", "incoming-1").await;
    let ia = a.next_call("INVITE", 5000).await;
    let ib = b.next_call("INVITE", 5000).await;
    let ic = c.next_call("INVITE", 5000).await;
    // Every phone rings; B reports its early dialog on appearance 0 (as in the Polycom
    // capture: direction recipient): A and C see it.
    a.phone.reply(&ia, 180, "ring-A").await;
    c.phone.reply(&ic, 180, "ring-C").await;
    let (id, tag, status) = b.ring(&ib, 0).await;
    assert_eq!(status, 200, "{}", b.last_reason);
    for p in [&mut a, &mut c] {
        p.sees("0 ringing at B", |v| {
            holds(v, 0, "B", DialogState::Early, false)
        })
        .await;
        assert_eq!(
            p.on(0)[0].remote_identity.as_deref(),
            Some("sip:1005@example.test")
        );
    }
    // B answers: the caller gets the 200 and ACKs it; A and C are cancelled.
    b.phone.reply(&ib, 200, &tag).await;
    let ok = far.final_of("INVITE").await;
    assert_eq!(ok.status, 200, "{}", ok.reason);
    let mut far_leg = Phone::caller_leg(&invite, &ok);
    let ack = far.in_dialog(&mut far_leg, "ACK", None);
    far.ua.send(&ack).await;
    b.next_call("ACK", 5000).await;
    assert_eq!(b.update(&id, |d| d.state = Confirmed).await, 200);
    a.cancelled(&ia, "ring-A").await;
    c.cancelled(&ic, "ring-C").await;
    for p in [&mut a, &mut c] {
        p.sees("B's call confirmed on 0", |v| {
            holds(v, 0, "B", Confirmed, false)
        })
        .await;
    }
    // A cannot take 0 now; B hangs up (the caller answers the BYE): 0 is free for everyone.
    let (status, _) = a.seize(0).await;
    assert_eq!(status, 409, "{}", a.last_reason);
    let mut leg = Phone::callee_leg(&ib, &tag);
    let bye = b.phone.in_dialog(&mut leg, "BYE", None);
    b.phone.ua.send(&bye).await;
    let incoming = far.next_of("BYE").await;
    far.reply(&incoming, 200, "whatever").await;
    let r = b.response_to(&leg.call_id, leg.cseq, 5000).await;
    assert_eq!(r.status, 200, "BYE: {}", r.reason);
    assert_eq!(b.end(&id).await, 200);
    all_see(&mut [&mut a, &mut b, &mut c], "an idle line", 5000, |v| {
        v.is_empty()
    })
    .await;
}
