//! BLF from calls, end to end inside the process: the dialog tracker's updates, rendered by
//! pua_dialoginfo and published into the presence server, reach a `dialog` watcher as
//! RFC 4235 documents — ringing, answered, held, hung up, then idle — and a watcher whose
//! vendor profile has `caller_confirmed` sees the caller's ringing call as confirmed.

mod common;
use busylamp::config::{DialogConfig, DialogInfoConfig};
use busylamp::dialog::{CallKey, DialogTracker, InviteInfo, Party, Update};
use busylamp::presence::event::Pkg;
use busylamp::pua::dialoginfo::publications;
use busylamp::sip::body::dialog_info::{parse, DialogState, Direction, StateEvent};
use common::ua::*;
use common::*;

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
[[presence.profiles]]
name = "blink-free"
user_agent = "BlinkFree"
caller_confirmed = true
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

fn subscribe(port: u16, presentity: &str, call_id: &str, ua: &str) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:2000@example.test>;tag=t{call_id}
        To: <sip:{presentity}@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:2000@127.0.0.1:{port}>
        Event: dialog
        User-Agent: {ua}
        Expires: 600
        ",
        b = branch()
    ))
}

fn party(user: &str, name: &str, target: Option<&str>) -> Party {
    Party {
        uri: format!("sip:{user}@example.test"),
        display: Some(name.into()),
        aor: Some(format!("sip:{user}@example.test")),
        target: target.map(str::to_string),
    }
}

async fn publish(p: &busylamp::presence::Presence, u: &Update) {
    for publication in publications(&u.call, &DialogInfoConfig::default(), 14_400) {
        let d = p
            .publish(
                &publication.presentity,
                Pkg::Dialog,
                &publication.source_id,
                &publication.body,
                publication.expires,
            )
            .unwrap();
        busylamp::storage::durable(d).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn rfc4235_lamps_follow_a_tracked_call_ring_answer_hold_bye_idle() {
    let s = server(OPEN).await;
    let p = s.handle.core.presence.clone();
    // Watchers of the callee (1002) and of the caller (1001, a phone that wants
    // caller_confirmed).
    let mut callee_w = Ua::new(s.udp).await;
    let r = callee_w
        .request(&subscribe(callee_w.port(), "1002", "w1", "Test"))
        .await;
    assert_eq!(r.status, 200);
    callee_w.notify().await;
    let mut caller_w = Ua::new(s.udp).await;
    let r = caller_w
        .request(&subscribe(caller_w.port(), "1001", "w2", "BlinkFree 1.0"))
        .await;
    assert_eq!(r.status, 200);
    caller_w.notify().await;

    let mut t = DialogTracker::new(&DialogConfig::default());
    let key = CallKey {
        call_id: "blf-1@127.0.0.1".into(),
        from_tag: "ft".into(),
    };
    let now = 1_700_000_000_000;
    let u = t
        .invite(
            key.clone(),
            InviteInfo {
                caller: party("1001", "Alice", Some("sip:1001@127.0.0.1:5061")),
                callee: party("1002", "Bob", None),
                request_uri: "sip:1002@example.test".into(),
                caller_flow: "udp:127.0.0.1:5061".parse().unwrap(),
                cseq: 1,
            },
            now,
        )
        .unwrap();
    publish(&p, &u).await;
    let doc = |w: String| parse(w.as_bytes()).unwrap();
    // The caller's side shows the call at once (so the publication was handled); the
    // callee's lamp waits for a ringing phone.
    caller_w.notify().await;
    assert!(callee_w.no_notify(100).await);

    // Ringing: the callee's lamp is early (recipient); the caller's watcher, by its
    // profile, sees confirmed.
    let u = t
        .response(
            &key,
            Some("tt"),
            180,
            Some("sip:1002@127.0.0.1:5062"),
            "udp:127.0.0.1:5062".parse().ok(),
            now + 100,
        )
        .unwrap();
    publish(&p, &u).await;
    let callee = doc(body(&callee_w.notify().await));
    let d = &callee.dialogs[0];
    assert_eq!(d.state, DialogState::Early);
    assert_eq!(d.direction, Some(Direction::Recipient));
    assert_eq!(d.call_id.as_deref(), Some("blf-1@127.0.0.1"));
    assert_eq!(d.local_tag.as_deref(), Some("tt"));
    assert_eq!(d.remote_tag.as_deref(), Some("ft"));
    assert_eq!(
        d.remote.identity.as_ref().unwrap().display.as_deref(),
        Some("Alice")
    );
    let caller = doc(body(&caller_w.notify().await));
    assert_eq!(caller.dialogs[0].direction, Some(Direction::Initiator));
    assert_eq!(caller.dialogs[0].state, DialogState::Confirmed);

    // Answered, then the callee holds.
    let u = t
        .response(&key, Some("tt"), 200, None, None, now + 5_000)
        .unwrap();
    publish(&p, &u).await;
    let callee = doc(body(&callee_w.notify().await));
    assert_eq!(callee.dialogs[0].state, DialogState::Confirmed);
    caller_w.notify().await;
    let hold = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=inactive\r\n";
    let u = t
        .reinvite(&key.call_id, "tt", "ft", hold.as_bytes(), now + 9_000)
        .unwrap();
    publish(&p, &u).await;
    let callee = doc(body(&callee_w.notify().await));
    assert_eq!(
        callee.dialogs[0].local.param("+sip.rendering"),
        Some("no"),
        "held"
    );
    caller_w.notify().await;

    // The caller hangs up: terminated with local-bye / remote-bye, then idle.
    let u = t.bye(&key.call_id, "ft", "tt", now + 60_000).unwrap();
    publish(&p, &u).await;
    let callee = doc(body(&callee_w.notify().await));
    assert_eq!(callee.dialogs[0].state, DialogState::Terminated);
    assert_eq!(callee.dialogs[0].event, Some(StateEvent::RemoteBye));
    let caller = doc(body(&caller_w.notify().await));
    assert_eq!(caller.dialogs[0].event, Some(StateEvent::LocalBye));
    let n = callee_w.notify_unanswered_within(30_000).await;
    callee_w.answer(&n, 200).await;
    assert!(!body(&n).contains("<dialog "), "{}", body(&n));
    assert_eq!(t.len(), 0);
}
