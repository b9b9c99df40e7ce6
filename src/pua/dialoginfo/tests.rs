//! pua_dialoginfo bodies by RFC 4235 section, with golden documents.

use super::*;
use crate::config::DialogConfig;
use crate::dialog::fixtures::{info, key, T0};
use crate::dialog::DialogTracker;
use crate::sip::body::dialog_info::parse;

const LIFE: u64 = 14_400;

/// A publication's state as the presence server (or a remote PUBLISH) renders it.
fn xml(p: &Publication) -> Vec<u8> {
    p.body.render(false).into_bytes()
}

fn tracker() -> DialogTracker {
    let mut t = DialogTracker::new(&DialogConfig::default());
    t.invite(key(), info(), T0).unwrap();
    t
}

fn ringing() -> Call {
    let mut t = tracker();
    t.response(
        &key(),
        Some("a6c85cf"),
        180,
        Some("sip:1002@192.0.2.9:5060"),
        "udp:192.0.2.9:5060".parse().ok(),
        T0 + 100,
    )
    .unwrap()
    .call
}

fn confirmed_held() -> Call {
    let mut t = tracker();
    t.response(&key(), Some("a6c85cf"), 180, None, None, T0 + 100);
    t.response(
        &key(),
        Some("a6c85cf"),
        200,
        Some("sip:1002@192.0.2.9:5060"),
        "udp:192.0.2.9:5060".parse().ok(),
        T0 + 4000,
    )
    .unwrap();
    let hold = "v=0\r\no=- 1 2 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n";
    t.reinvite(
        &key().call_id,
        "a6c85cf",
        &key().from_tag,
        hold.as_bytes(),
        T0 + 9000,
    )
    .unwrap()
    .call
}

fn side(pubs: &[Publication], presentity: &str) -> String {
    let p = pubs
        .iter()
        .find(|p| p.presentity == presentity)
        .unwrap_or_else(|| panic!("no publication for {presentity}: {pubs:?}"));
    String::from_utf8(xml(p)).unwrap()
}

fn golden(name: &str) -> String {
    let path = format!(
        "{}/fixtures/bodies/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Compares with the golden file; `BUSYLAMP_BLESS=1` rewrites it instead (review the diff).
fn check_golden(name: &str, body: &str) {
    if std::env::var_os("BUSYLAMP_BLESS").is_some() {
        let path = format!(
            "{}/fixtures/bodies/golden/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(path, body).unwrap();
        return;
    }
    assert_eq!(body, golden(name), "{name}");
}

#[test]
fn rfc4235_golden_caller_side_ringing() {
    let pubs = publications(&ringing(), &DialogInfoConfig::default(), LIFE);
    assert_eq!(pubs.len(), 2);
    let body = side(&pubs, "sip:1001@example.com");
    check_golden("pua-dialoginfo-caller-early.xml", &body);
    let doc = parse(body.as_bytes()).unwrap();
    assert_eq!(doc.entity, "sip:1001@example.com");
    assert_eq!(doc.state, DocState::Full);
    let d = &doc.dialogs[0];
    assert_eq!(d.state, DialogState::Early);
    assert_eq!(d.direction, Some(Direction::Initiator));
    assert_eq!(d.call_id.as_deref(), Some("a84b4c76e66710@192.0.2.7"));
    // RFC 4235 §4.1.1: tags from this side's perspective.
    assert_eq!(d.local_tag.as_deref(), Some("1928301774"));
    assert_eq!(d.remote_tag.as_deref(), Some("a6c85cf"));
    assert_eq!(
        d.local.identity.as_ref().unwrap().display.as_deref(),
        Some("Alice")
    );
    assert_eq!(
        d.local.target.as_ref().unwrap().uri,
        "sip:1001@192.0.2.7:5060"
    );
    assert_eq!(
        d.remote.identity.as_ref().unwrap().uri,
        "sip:1002@example.com"
    );
    assert_eq!(
        d.remote.target.as_ref().unwrap().uri,
        "sip:1002@192.0.2.9:5060"
    );
}

#[test]
fn rfc4235_golden_callee_side_confirmed_held() {
    let pubs = publications(&confirmed_held(), &DialogInfoConfig::default(), LIFE);
    let body = side(&pubs, "sip:1002@example.com");
    check_golden("pua-dialoginfo-callee-confirmed-held.xml", &body);
    let doc = parse(body.as_bytes()).unwrap();
    let d = &doc.dialogs[0];
    assert_eq!(d.state, DialogState::Confirmed);
    assert_eq!(d.direction, Some(Direction::Recipient));
    assert_eq!(d.local_tag.as_deref(), Some("a6c85cf"));
    assert_eq!(d.remote_tag.as_deref(), Some("1928301774"));
    // The callee holds: its own target says it renders no media (§4.1.6.2).
    assert_eq!(
        d.rendering(),
        Some(crate::sip::body::dialog_info::Rendering::No)
    );
    assert_eq!(d.remote.param("+sip.rendering"), None);
    // The caller's side shows the hold on its remote participant.
    let caller = parse(side(&pubs, "sip:1001@example.com").as_bytes()).unwrap();
    assert_eq!(caller.dialogs[0].remote.param("+sip.rendering"), Some("no"));
    assert_eq!(caller.dialogs[0].rendering(), None);
}

#[test]
fn bodies_pass_the_dialog_package_validation() {
    use crate::presence::package::EventPackage;
    for call in [ringing(), confirmed_held()] {
        for p in publications(&call, &DialogInfoConfig::default(), LIFE) {
            crate::presence::packages::dialog::Dialog
                .validate(CONTENT_TYPE, &xml(&p))
                .unwrap();
        }
    }
}

#[test]
fn rfc4235_3_7_1_before_any_to_tag_one_dialog_for_the_call() {
    let mut t = tracker();
    let call = t.get(&key()).unwrap().clone();
    let pubs = publications(&call, &DialogInfoConfig::default(), LIFE);
    let doc = parse(&xml(&pubs[0])).unwrap();
    assert_eq!(doc.dialogs.len(), 1);
    assert_eq!(doc.dialogs[0].state, DialogState::Trying);
    assert_eq!(doc.dialogs[0].remote_tag, None);
    let call = t
        .response(&key(), None, 183, None, None, T0 + 1)
        .unwrap()
        .call;
    // By default the callee's lamp waits for a ringing phone.
    let pubs = publications(&call, &DialogInfoConfig::default(), LIFE);
    assert_eq!(pubs.len(), 1, "caller side only: {pubs:?}");
    assert_eq!(pubs[0].presentity, "sip:1001@example.com");
    let cfg = DialogInfoConfig {
        callee_trying: true,
        ..DialogInfoConfig::default()
    };
    let callee = parse(&xml(&publications(&call, &cfg, LIFE)[1])).unwrap();
    assert_eq!(callee.dialogs[0].state, DialogState::Proceeding);
    assert_eq!(callee.dialogs[0].local_tag, None);
    assert_eq!(callee.dialogs[0].remote_tag.as_deref(), Some("1928301774"));
}

#[test]
fn rfc3261_16_7_forked_early_dialogs_each_their_own_then_the_loser_vanishes() {
    let mut t = tracker();
    t.response(
        &key(),
        Some("desk"),
        180,
        Some("sip:1002@192.0.2.9"),
        None,
        T0 + 1,
    );
    let call = t
        .response(
            &key(),
            Some("soft"),
            180,
            Some("sip:1002@192.0.2.10"),
            None,
            T0 + 2,
        )
        .unwrap()
        .call;
    let cfg = DialogInfoConfig::default();
    let callee =
        parse(side(&publications(&call, &cfg, LIFE), "sip:1002@example.com").as_bytes()).unwrap();
    assert_eq!(callee.dialogs.len(), 2);
    assert_ne!(callee.dialogs[0].id, callee.dialogs[1].id);
    assert!(callee.dialogs.iter().all(|d| d.state == DialogState::Early));
    let soft_id = callee.dialogs[1].id.clone();
    let call = t
        .response(&key(), Some("soft"), 200, None, None, T0 + 3)
        .unwrap()
        .call;
    let callee =
        parse(side(&publications(&call, &cfg, LIFE), "sip:1002@example.com").as_bytes()).unwrap();
    assert_eq!(callee.dialogs.len(), 1);
    // The same dialog id from early to confirmed.
    assert_eq!(callee.dialogs[0].id, soft_id);
    assert_eq!(callee.dialogs[0].state, DialogState::Confirmed);
    assert_eq!(
        callee.dialogs[0].local.target.as_ref().unwrap().uri,
        "sip:1002@192.0.2.10"
    );
}

#[test]
fn rfc4235_4_1_2_terminated_with_event_and_code() {
    let cfg = DialogInfoConfig::default();
    let ended = |call: &Call, aor: &str| {
        let doc = parse(side(&publications(call, &cfg, LIFE), aor).as_bytes()).unwrap();
        assert!(doc
            .dialogs
            .iter()
            .all(|d| d.state == DialogState::Terminated));
        (doc.dialogs[0].event, doc.dialogs[0].code)
    };
    // CANCEL.
    let mut t = tracker();
    t.response(&key(), Some("x"), 180, None, None, T0 + 1);
    let call = t.cancel(&key(), T0 + 2).unwrap().call;
    assert_eq!(
        ended(&call, "sip:1002@example.com"),
        (Some(StateEvent::Cancelled), Some(487))
    );
    // Busy.
    let mut t = tracker();
    let call = t.failed(&key(), 486, T0 + 2).unwrap().call;
    assert_eq!(
        ended(&call, "sip:1001@example.com"),
        (Some(StateEvent::Rejected), Some(486))
    );
    // BYE from the caller: local-bye for the caller, remote-bye for the callee.
    let mut t = tracker();
    t.response(&key(), Some("x"), 200, None, None, T0 + 1);
    let call = t
        .bye(&key().call_id, &key().from_tag, "x", T0 + 2)
        .unwrap()
        .call;
    assert_eq!(
        ended(&call, "sip:1001@example.com"),
        (Some(StateEvent::LocalBye), None)
    );
    assert_eq!(
        ended(&call, "sip:1002@example.com"),
        (Some(StateEvent::RemoteBye), None)
    );
    // Timer C while the phone rang.
    let mut t = tracker();
    t.response(&key(), Some("x"), 180, None, None, T0 + 1);
    let call = t.failed(&key(), 408, T0 + 180_000).unwrap().call;
    assert_eq!(
        ended(&call, "sip:1002@example.com"),
        (Some(StateEvent::Timeout), Some(408))
    );
}

#[test]
fn source_ids_and_dialog_ids_are_stable_per_call_and_side() {
    let cfg = DialogInfoConfig::default();
    let a = publications(&ringing(), &cfg, LIFE);
    let b = publications(&confirmed_held(), &cfg, LIFE);
    assert_eq!(a[0].source_id, b[0].source_id);
    assert_eq!(a[1].source_id, b[1].source_id);
    assert_ne!(a[0].source_id, a[1].source_id);
    assert!(a[0].source_id.starts_with("dlg:") && a[0].source_id.ends_with(":caller"));
    assert!(a[1].source_id.ends_with(":callee"));
    let id = |p: &Publication| parse(&xml(p)).unwrap().dialogs[0].id.clone();
    assert_eq!(id(&a[0]), id(&b[0]));
    // A call to oneself: the two sides' dialogs do not share an id.
    assert_ne!(id(&a[0]), id(&a[1]));
    assert!(a.iter().all(|p| p.expires == 14_700));
}

#[test]
fn only_local_enabled_allowed_users_publish() {
    let call = ringing();
    let mut cfg = DialogInfoConfig::default();
    let who = |cfg: &DialogInfoConfig, call: &Call| {
        publications(call, cfg, LIFE)
            .into_iter()
            .map(|p| p.presentity)
            .collect::<Vec<_>>()
    };
    assert_eq!(who(&cfg, &call).len(), 2);
    cfg.users = vec!["1001".parse().unwrap()];
    assert_eq!(who(&cfg, &call), ["sip:1001@example.com"]);
    cfg.users = vec!["100*".parse().unwrap()];
    assert_eq!(who(&cfg, &call).len(), 2);
    cfg.users = vec!["sip:1002@EXAMPLE.com".parse().unwrap()];
    assert_eq!(who(&cfg, &call), ["sip:1002@example.com"]);
    cfg.users = vec!["20*".parse().unwrap(), "1003".parse().unwrap()];
    assert!(who(&cfg, &call).is_empty());
    cfg.users = vec!["*".parse().unwrap()];
    cfg.caller = false;
    assert_eq!(who(&cfg, &call), ["sip:1002@example.com"]);
    cfg.caller = true;
    cfg.callee = false;
    assert_eq!(who(&cfg, &call), ["sip:1001@example.com"]);
    cfg.callee = true;
    cfg.enabled = false;
    assert!(who(&cfg, &call).is_empty());
    // A party from the PBX (no local AOR) gets nothing.
    let mut remote = call.clone();
    remote.caller.aor = None;
    assert_eq!(
        who(&DialogInfoConfig::default(), &remote),
        ["sip:1002@example.com"]
    );
}

#[test]
fn pua_dialoginfo_caller_confirmed() {
    let cfg = DialogInfoConfig {
        caller_confirmed: true,
        ..Default::default()
    };
    let pubs = publications(&ringing(), &cfg, LIFE);
    let caller = parse(side(&pubs, "sip:1001@example.com").as_bytes()).unwrap();
    assert_eq!(caller.dialogs[0].state, DialogState::Confirmed);
    // The callee still rings.
    let callee = parse(side(&pubs, "sip:1002@example.com").as_bytes()).unwrap();
    assert_eq!(callee.dialogs[0].state, DialogState::Early);
    // Ended is ended.
    let mut t = tracker();
    let call = t.cancel(&key(), T0 + 1).unwrap().call;
    let caller = parse(&xml(&publications(&call, &cfg, LIFE)[0])).unwrap();
    assert_eq!(caller.dialogs[0].state, DialogState::Terminated);
}

#[test]
fn include_options_leave_out_call_id_tags_and_participants() {
    let cfg = DialogInfoConfig {
        include_callid: false,
        include_tags: false,
        include_localremote: false,
        ..Default::default()
    };
    let body = String::from_utf8(xml(&publications(&confirmed_held(), &cfg, LIFE)[0])).unwrap();
    assert!(!body.contains("call-id="), "{body}");
    assert!(
        !body.contains("local-tag=") && !body.contains("remote-tag="),
        "{body}"
    );
    assert!(
        !body.contains("<local>") && !body.contains("<remote>"),
        "{body}"
    );
    let d = &parse(body.as_bytes()).unwrap().dialogs[0];
    assert_eq!(d.state, DialogState::Confirmed);
    assert_eq!(d.direction, Some(Direction::Initiator));
}

#[test]
fn hostile_party_strings_are_escaped() {
    let mut call = ringing();
    call.caller.display = Some("A <\"&'> B".into());
    call.key.call_id = "x\"<y>&".into();
    let pubs = publications(&call, &DialogInfoConfig::default(), LIFE);
    let doc = parse(&xml(&pubs[0])).unwrap();
    assert_eq!(
        doc.dialogs[0]
            .local
            .identity
            .as_ref()
            .unwrap()
            .display
            .as_deref(),
        Some("A <\"&'> B")
    );
    assert_eq!(doc.dialogs[0].call_id.as_deref(), Some("x\"<y>&"));
}

#[test]
fn rfc4235_a_call_refused_before_ringing_publishes_nothing_for_the_callee() {
    let mut t = tracker();
    // 486 at once, with the phone's To-tag: the callee's lamp never showed the call.
    t.response(&key(), Some("busy1"), 486, None, None, T0 + 1);
    let call = t.failed(&key(), 486, T0 + 2).unwrap().call;
    let pubs = publications(&call, &DialogInfoConfig::default(), LIFE);
    assert!(
        pubs.iter().all(|p| p.presentity != "sip:1002@example.com"),
        "{pubs:?}"
    );
    // After ringing, the end is published.
    let mut t = tracker();
    t.response(&key(), Some("r1"), 180, None, None, T0 + 1);
    t.response(&key(), Some("r1"), 486, None, None, T0 + 2);
    let call = t.failed(&key(), 486, T0 + 3).unwrap().call;
    let doc = parse(
        side(
            &publications(&call, &DialogInfoConfig::default(), LIFE),
            "sip:1002@example.com",
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(doc
        .dialogs
        .iter()
        .all(|d| d.state == DialogState::Terminated));
}
