//! The control API's methods against the in-process server (`Api::call` directly; the socket
//! has its own tests): every list agrees with what the SIP side did, the pua_mi methods reach
//! SIP watchers, standing rules decide later SUBSCRIBEs and survive a restart, users added
//! through the API register at once, and bad params name the field.

mod common;

use busylamp::config::Config;
use busylamp::control::api::Api;
use busylamp::control::rpc::{INVALID_PARAMS, NOT_FOUND, REFUSED};
use busylamp::sip::body::dialog_info::DialogState;
use busylamp::sip::{HeaderName, Request, Response};
use busylamp::storage::{MemoryStore, UserFile};
use common::phone::{Phone, CALLS, SDP};
use common::ua::Ua;
use common::watcher::Watcher;
use common::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

async fn call(s: &TestServer, method: &str, params: Value) -> Value {
    Api::new(s.handle.core.clone())
        .call(method, params)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

async fn call_err(s: &TestServer, method: &str, params: Value) -> (i64, String) {
    match Api::new(s.handle.core.clone()).call(method, params).await {
        Ok(v) => panic!("{method} should fail, answered {v}"),
        Err(e) => (e.code, e.message),
    }
}

/// Calls `method` until `done` holds for its answer (the server handles what a test sent on
/// its own task): at most 500 tries, 5 ms apart.
async fn until(
    s: &TestServer,
    method: &str,
    params: Value,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..500 {
        last = call(s, method, params.clone()).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{method} never became what the test waits for: {last}");
}

fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().expect("items")
}

/// A SUBSCRIBE of `from` (a full URI) to user `to`'s `event`, outside any dialog.
fn subscribe_bytes(
    ua: &Ua,
    from: &str,
    to: &str,
    event: &str,
    call_id: &str,
    expires: u32,
) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:{to}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <{from}>;tag=w-{call_id}
        To: <sip:{to}@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:w@127.0.0.1:{p}>
        Event: {event}
        Expires: {expires}
        ",
        p = ua.port(),
        b = branch()
    ))
}

fn sub_state(n: &Request) -> String {
    n.headers
        .get(HeaderName::SubscriptionState)
        .unwrap_or("")
        .to_string()
}

/// CALLS (everyone on loopback trusted) where watchers of other domains wait for approval.
fn confirm_config() -> String {
    CALLS.replace(
        "[presence]\ncoalesce_ms = 0\n",
        "[presence]\ncoalesce_ms = 0\nother_domains = \"confirm\"\n",
    )
}

#[tokio::test]
async fn status_and_registrations_show_a_register_with_its_contact() {
    let s = server(CALLS).await;
    let phone = Phone::registered(s.udp, "1001", "desk").await;
    let regs = call(&s, "registrations", json!({})).await;
    assert_eq!(regs["total"], 1, "{regs}");
    let r = &items(&regs)[0];
    assert_eq!(r["aor"], "sip:1001@example.test");
    let c = &r["contacts"][0];
    assert_eq!(c["contact"], phone.contact());
    assert!(
        c["flow"].as_str().unwrap().starts_with("udp:127.0.0.1:"),
        "{c}"
    );
    assert!(
        c["expires"].as_u64().unwrap() > 1_000_000_000,
        "unix seconds: {c}"
    );
    assert_eq!(c["q"], 1.0);

    // Filter and paging.
    assert_eq!(
        call(&s, "registrations", json!({"filter": "1002"})).await["total"],
        0
    );
    let page = call(&s, "registrations", json!({"filter": "1001", "offset": 1})).await;
    assert_eq!((page["total"].as_u64(), items(&page).len()), (Some(1), 0));

    let st = call(&s, "status", Value::Null).await;
    assert_eq!(st["api"], 1);
    assert_eq!(st["counts"]["aors"], 1);
    assert_eq!(st["counts"]["bindings"], 1);
    assert_eq!(st["listen"].as_array().unwrap().len(), 2, "{st}");
    assert!(st["storage"]["queued"].is_u64(), "{st}");
    // What the store holds: the one binding record, its key and value bytes counted.
    let storage = &st["storage"];
    assert_eq!(storage["backend"], "memory", "{st}");
    assert_eq!(storage["trees"]["bindings"]["records"], 1, "{st}");
    let binding_bytes = storage["trees"]["bindings"]["bytes"].as_u64().unwrap();
    assert!(binding_bytes > "sip:1001@example.test".len() as u64, "{st}");
    assert!(
        storage["live_bytes"].as_u64().unwrap() >= binding_bytes,
        "{st}"
    );
    assert!(storage["records"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(storage["on_disk"], 0, "a memory store has no disk: {st}");
    assert_eq!(st["domain"], "example.test", "{st}");
    assert!(st["notifies"]["sent"].is_u64(), "{st}");

    // What a `follow` stream starts with: the same lists, whole.
    let api = Api::new(s.handle.core.clone());
    let snap = busylamp::control::Methods::snapshot(&*api);
    assert_eq!(snap["status"]["counts"]["aors"], 1);
    assert_eq!(snap["registrations"][0]["aor"], "sip:1001@example.test");
    for list in ["calls", "subscriptions", "lines"] {
        assert!(snap[list].is_array(), "{list}: {snap}");
    }
    // And through the trait (as the socket calls it).
    let st = busylamp::control::Methods::call(&*api, "status", Value::Null)
        .await
        .unwrap();
    assert_eq!(st["api"], 1);
}

#[tokio::test]
async fn a_call_shows_both_parties_and_its_branch_and_goes_away_after_bye() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "b").await;
    let invite = alice.invite("1002", "api-call-1").await;
    let at_bob = bob.next_of("INVITE").await;
    bob.reply(&at_bob, 180, "bt").await;
    let calls = until(&s, "calls", json!({}), |v| {
        v["items"][0]["state"] == "early"
    })
    .await;
    assert_eq!(calls["total"], 1);
    let c = &items(&calls)[0];
    assert_eq!(c["call_id"], "api-call-1");
    assert_eq!(c["caller"], "sip:1001@example.test");
    assert_eq!(c["callee"], "sip:1002@example.test");
    assert!(c["since"].as_u64().unwrap() > 1_000_000_000);
    assert_eq!(c["branches"][0]["state"], "early");
    assert_eq!(c["branches"][0]["target"], bob.contact());

    bob.reply(&at_bob, 200, "bt").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut leg = alice.ack(&mut bob, &invite, &ok).await;
    let calls = call(&s, "calls", json!({"filter": "api-call-1"})).await;
    assert_eq!(items(&calls)[0]["state"], "confirmed", "{calls}");
    assert_eq!(call(&s, "status", json!({})).await["counts"]["calls"], 1);

    alice.hang_up(&mut bob, &mut leg, "bt").await;
    until(&s, "calls", json!({}), |v| v["total"] == 0).await;
}

#[tokio::test]
async fn a_held_call_shows_held_in_calls_and_in_its_change_notice() {
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "b").await;
    let invite = alice.invite("1002", "api-hold-1").await;
    let at_bob = bob.next_of("INVITE").await;
    bob.reply(&at_bob, 200, "bt").await;
    let ok = alice.final_of("INVITE").await;
    let mut leg = alice.ack(&mut bob, &invite, &ok).await;
    let calls = until(&s, "calls", json!({}), |v| {
        v["items"][0]["state"] == "confirmed"
    })
    .await;
    assert_eq!(items(&calls)[0]["held"], false, "{calls}");

    let mut bus = s.handle.events.subscribe();
    let hold = SDP.replace("a=sendrecv", "a=sendonly");
    alice
        .ua
        .send(&alice.in_dialog(&mut leg, "INVITE", Some(&hold)))
        .await;
    let reinvite = bob.next_of("INVITE").await;
    bob.reply(&reinvite, 200, "bt").await;
    assert_eq!(alice.final_of("INVITE").await.status, 200);
    let calls = until(&s, "calls", json!({}), |v| v["items"][0]["held"] == true).await;
    assert_eq!(items(&calls)[0]["state"], "confirmed");
    // The hold is a change of its own on the bus, and its notice says so.
    let notice = loop {
        let e = tokio::time::timeout(Duration::from_secs(5), bus.recv())
            .await
            .expect("a call event for the hold")
            .expect("bus");
        let n = busylamp::control::follow::change(&e);
        if n["kind"] == "call" {
            break n;
        }
    };
    assert_eq!(notice["held"], true, "{notice}");
    assert_eq!(notice["call_id"], "api-hold-1");
    assert!(notice["since"].as_u64().unwrap() > 1_000_000_000);

    // Resume: held goes back to false.
    alice
        .ua
        .send(&alice.in_dialog(&mut leg, "INVITE", Some(SDP)))
        .await;
    let reinvite = bob.next_of("INVITE").await;
    bob.reply(&reinvite, 200, "bt").await;
    assert_eq!(alice.final_of("INVITE").await.status, 200);
    until(&s, "calls", json!({}), |v| v["items"][0]["held"] == false).await;
    alice.hang_up(&mut bob, &mut leg, "bt").await;
}

#[tokio::test]
async fn a_subscription_shows_cseq_version_and_last_answer_after_each_notify() {
    let s = server(CALLS).await;
    let mut lamp = Watcher::new(s.udp, "1002").await;
    let subs = until(&s, "subscriptions", json!({"filter": "1003"}), |v| {
        v["items"][0]["last_answer"] == 200
    })
    .await;
    let w = &items(&subs)[0];
    assert_eq!(w["kind"], "watcher");
    assert_eq!(w["watcher"], "sip:1003@example.test");
    assert_eq!(w["presentity"], "sip:1002@example.test");
    assert_eq!(w["package"], "dialog");
    assert_eq!(w["state"], "active");
    assert_eq!(w["cseq"], 1);
    assert_eq!(w["version"], 0, "the idle document was version 0");
    assert_eq!(w["failures"], 0);

    // refresh_watchers: the watcher gets the state again, one version up.
    let r = call(
        &s,
        "refresh_watchers",
        json!({"presentity": "sip:1002@example.test", "event": "dialog"}),
    )
    .await;
    assert_eq!(r["notified"], 1);
    let doc = lamp.next().await;
    assert_eq!(doc.version, 1);
    let subs = until(&s, "subscriptions", json!({"filter": "1003"}), |v| {
        v["items"][0]["cseq"] == 2
    })
    .await;
    assert_eq!(items(&subs)[0]["version"], 1);
    // Another package of the presentity has no watchers.
    let r = call(
        &s,
        "refresh_watchers",
        json!({"presentity": "sip:1002@example.test", "event": "presence"}),
    )
    .await;
    assert_eq!(r["notified"], 0);
    let st = call(&s, "status", json!({})).await;
    assert_eq!(
        st["counts"]["subscriptions"]["by_package"]["dialog"], 1,
        "{st}"
    );
    assert_eq!(st["counts"]["subscriptions"]["by_state"]["active"], 1);
    // The two NOTIFYs (the first and the refresh) are counted.
    assert!(st["notifies"]["sent"].as_u64().unwrap() >= 2, "{st}");
}

const DIALOG_DOC: &str = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:1002@example.test">
<dialog id="api1" direction="recipient"><state>confirmed</state></dialog>
</dialog-info>"#;

#[tokio::test]
async fn publish_reaches_a_sip_watcher_and_is_listed_refreshed_and_removed() {
    let s = server(CALLS).await;
    let mut lamp = Watcher::new(s.udp, "1002").await;
    let r = call(
        &s,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "dialog",
               "content_type": "application/dialog-info+xml", "body": DIALOG_DOC, "expires": 600}),
    )
    .await;
    let id = r["id"].as_str().unwrap().to_string();
    lamp.until(Some(DialogState::Confirmed)).await;
    let p = call(&s, "presentities", json!({"filter": "1002"})).await;
    let item = items(&p)
        .iter()
        .find(|i| i["package"] == "dialog")
        .expect("the presentity is listed");
    let publication = &item["publications"][0];
    assert_eq!(publication["source"], format!("api:{id}"));
    assert_eq!(publication["content_type"], "application/dialog-info+xml");
    assert_eq!(item["watchers"], 1);

    // A refresh (no body) keeps the state: the watcher hears nothing new worth a lamp change.
    call(
        &s,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "dialog", "id": id, "expires": 900}),
    )
    .await;
    // Removal: the lamp goes dark.
    call(
        &s,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "dialog", "id": id, "expires": 0}),
    )
    .await;
    lamp.dark().await;

    // Errors name the field.
    let (code, msg) = call_err(
        &s,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "dialog", "body": "<nonsense"}),
    )
    .await;
    assert_eq!(code, INVALID_PARAMS);
    assert!(msg.starts_with("params.body:"), "{msg}");
    let (code, msg) = call_err(
        &s,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "dialog", "id": "nope"}),
    )
    .await;
    assert_eq!(code, NOT_FOUND, "{msg}");
    let (code, msg) = call_err(
        &s,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "presence.winfo", "body": "x"}),
    )
    .await;
    assert_eq!(code, INVALID_PARAMS);
    assert!(msg.starts_with("params.event:"), "{msg}");
}

#[tokio::test]
async fn subscribe_shows_in_the_list_with_its_notifies_and_unsubscribe_ends_it() {
    let s = server(CALLS).await;
    let r = call(
        &s,
        "subscribe",
        json!({"watcher": "sip:1003@example.test", "presentity": "sip:1002@example.test",
               "event": "dialog", "expires": 600}),
    )
    .await;
    let id = r["id"].as_str().unwrap().to_string();
    let subs = until(&s, "subscriptions", json!({}), |v| {
        v["items"].as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["kind"] == "api" && i["state"] == "active" && i["notifies"] == 1)
        })
    })
    .await;
    let mine = items(&subs).iter().find(|i| i["kind"] == "api").unwrap();
    assert_eq!(mine["id"], id.as_str());
    assert_eq!(mine["presentity"], "sip:1002@example.test");
    assert_eq!(mine["package"], "dialog");
    assert!(mine["last_body_len"].as_u64().unwrap() > 0, "{mine}");
    // The presence server sees the same subscription as one of its watchers.
    let theirs = items(&subs)
        .iter()
        .find(|i| i["kind"] == "watcher")
        .unwrap();
    assert_eq!(theirs["watcher"], "sip:1003@example.test");

    // A change reaches it: a second NOTIFY.
    call(
        &s,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "dialog", "body": DIALOG_DOC}),
    )
    .await;
    until(&s, "subscriptions", json!({}), |v| {
        v["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["kind"] == "api" && i["notifies"] == 2))
    })
    .await;

    call(&s, "unsubscribe", json!({"id": id})).await;
    until(&s, "subscriptions", json!({}), |v| v["total"] == 0).await;
    let (code, _) = call_err(&s, "unsubscribe", json!({"id": id})).await;
    assert_eq!(code, NOT_FOUND);
}

/// A watcher whose NOTIFYs fail twice in a row (500, then the retry 500 again) makes one
/// `notify_failed` notice for the streak, not one per NOTIFY; `status` counts the retries.
#[tokio::test]
async fn a_failing_watcher_makes_one_notify_failed_notice_per_streak() {
    let s = server(CALLS).await;
    let mut ua = Ua::new(s.udp).await;
    let r = ua
        .request(&subscribe_bytes(
            &ua,
            "sip:1001@example.test",
            "1001",
            "message-summary",
            "mwi-fail-1",
            600,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    ua.notify().await;
    let mut bus = s.handle.events.subscribe();
    call(
        &s,
        "message_summary",
        json!({"mailbox": "sip:1001@example.test", "waiting": true, "new": 1}),
    )
    .await;
    let n = ua.notify_unanswered().await;
    ua.answer(&n, 500).await;
    // The retry (after `retry_ms`, 2 s by default) fails too.
    let n = ua.notify_unanswered_within(10_000).await;
    ua.answer(&n, 500).await;
    until(&s, "subscriptions", json!({"filter": "1001"}), |v| {
        v["items"][0]["failures"] == 2
    })
    .await;
    let mut failed = Vec::new();
    while let Ok(e) = bus.try_recv() {
        let n = busylamp::control::follow::change(&e);
        if n["kind"] == "notify_failed" {
            failed.push(n);
        }
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["watcher"], "sip:1001@example.test");
    assert_eq!(failed[0]["event"], "message-summary");
    assert_eq!(failed[0]["status"], 500);
    assert_eq!(failed[0]["gave_up"], false);
    let st = call(&s, "status", json!({})).await;
    assert_eq!(st["notifies"]["retried"], 2, "{st}");
}

#[tokio::test]
async fn message_summary_reaches_a_message_summary_watcher() {
    let s = server(CALLS).await;
    let mut ua = Ua::new(s.udp).await;
    let r = ua
        .request(&subscribe_bytes(
            &ua,
            "sip:1001@example.test",
            "1001",
            "message-summary",
            "mwi-1",
            600,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let first = ua.notify().await;
    assert!(String::from_utf8_lossy(&first.body).contains("Messages-Waiting: no"));
    call(
        &s,
        "message_summary",
        json!({"mailbox": "sip:1001@example.test", "waiting": true, "new": 2, "old": 1}),
    )
    .await;
    let n = ua
        .notify_until(|b| b.contains("Messages-Waiting: yes"))
        .await;
    let body = String::from_utf8_lossy(&n.body).to_string();
    assert!(body.contains("Voice-Message: 2/1"), "{body}");
    // The follow snapshot has the mailbox, for the dashboard's MWI column.
    let api = Api::new(s.handle.core.clone());
    let snap = busylamp::control::Methods::snapshot(&*api);
    assert_eq!(
        snap["mwi"],
        json!([{"mailbox": "sip:1001@example.test", "waiting": true, "new": 2, "old": 1}]),
        "{snap}"
    );
    assert_eq!(
        n.headers.get(HeaderName::ContentType),
        Some("application/simple-message-summary")
    );
    call(
        &s,
        "message_summary",
        json!({"mailbox": "sip:1001@example.test", "waiting": false}),
    )
    .await;
    ua.notify_until(|b| b.contains("Messages-Waiting: no"))
        .await;
    let (code, msg) = call_err(
        &s,
        "message_summary",
        json!({"mailbox": "sip:1001@example.test"}),
    )
    .await;
    assert_eq!(
        (code, msg.as_str()),
        (INVALID_PARAMS, "params.waiting: required (true or false)")
    );
}

/// Subscribes `from` to 1001's presence; returns the answer and the first NOTIFY's
/// Subscription-State (answered 200).
async fn watch_1001(s: &TestServer, from: &str, call_id: &str) -> (Response, Option<String>) {
    let mut ua = Ua::new(s.udp).await;
    let r = ua
        .request(&subscribe_bytes(
            &ua, from, "1001", "presence", call_id, 600,
        ))
        .await;
    if r.status != 200 {
        return (r, None);
    }
    let n = ua.notify().await;
    (r, Some(sub_state(&n)))
}

#[tokio::test]
async fn a_standing_approval_makes_the_next_subscribe_active_and_survives_a_restart() {
    let cfg = Config::from_toml(&confirm_config(), "t.toml").unwrap();
    let store = Arc::new(MemoryStore::new());
    let s = server_with_store(cfg.clone(), store.clone()).await;
    const EVE: &str = "sip:eve@other.test";

    // Without a rule, a watcher of another domain waits for approval.
    let (_, state) = watch_1001(&s, EVE, "eve-1").await;
    assert!(state.unwrap().starts_with("pending"));
    let st = call(&s, "status", json!({})).await;
    assert_eq!(st["counts"]["subscriptions"]["by_state"]["pending"], 1);

    // The approval is applied to the pending subscription at once...
    let rule = call(
        &s,
        "approve",
        json!({"presentity": "sip:1001@example.test", "watcher": EVE}),
    )
    .await;
    assert_eq!(rule["changed"], 1, "{rule}");
    assert_eq!(rule["action"], "allow");
    let id = rule["id"].as_str().unwrap().to_string();
    // ...and decides the next SUBSCRIBE.
    let (_, state) = watch_1001(&s, EVE, "eve-2").await;
    assert!(state.unwrap().starts_with("active"));

    // A restart from the same store: the rule is still there and still decides.
    s.handle.shutdown().await;
    let s = server_with_store(cfg.clone(), store.clone()).await;
    let rules = call(&s, "rules", json!({})).await;
    assert_eq!(rules["total"], 1, "{rules}");
    assert_eq!(items(&rules)[0]["id"], id.as_str());
    assert_eq!(items(&rules)[0]["watcher"], EVE);
    let (_, state) = watch_1001(&s, EVE, "eve-3").await;
    assert!(state.unwrap().starts_with("active"), "after the restart");

    // Removed: the domain policy decides again.
    call(&s, "rule_remove", json!({"id": id})).await;
    assert_eq!(call(&s, "rules", json!({})).await["total"], 0);
    let (_, state) = watch_1001(&s, EVE, "eve-4").await;
    assert!(state.unwrap().starts_with("pending"));
    let (code, _) = call_err(&s, "rule_remove", json!({"id": id})).await;
    assert_eq!(code, NOT_FOUND);
}

#[tokio::test]
async fn a_block_ends_the_watchers_subscriptions_and_refuses_the_next_with_403() {
    let s = server(&confirm_config()).await;
    const EVE: &str = "sip:eve@other.test";
    let mut ua = Ua::new(s.udp).await;
    let r = ua
        .request(&subscribe_bytes(
            &ua, EVE, "1001", "presence", "eve-b1", 600,
        ))
        .await;
    assert_eq!(r.status, 200);
    ua.notify().await;
    let rule = call(
        &s,
        "block",
        json!({"presentity": "sip:1001@example.test", "watcher": EVE, "event": "presence"}),
    )
    .await;
    assert_eq!(rule["changed"], 1);
    let n = ua.notify().await;
    assert!(
        sub_state(&n).starts_with("terminated;reason=rejected"),
        "{}",
        sub_state(&n)
    );
    let (r, _) = watch_1001(&s, EVE, "eve-b2").await;
    assert_eq!(r.status, 403, "{}", r.reason);
    // Another package is not covered by a rule for presence.
    let rules = call(&s, "rules", json!({"filter": "eve"})).await;
    assert_eq!(items(&rules)[0]["event"], "presence");
}

#[tokio::test]
async fn users_added_through_the_api_register_at_once_and_removed_ones_are_refused() {
    let dir = std::env::temp_dir().join(format!("busylamp-ctlapi-users-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = Config::from_toml(BASE_CONFIG, "t.toml").unwrap();
    let s = server_with_users(cfg, Arc::new(MemoryStore::new()), Some(UserFile::new(&dir))).await;
    let phone = Udp::new(s.udp).await;

    let r = register_authed(&phone, "2001", "pw2001", "api-users-1", 1, "").await;
    assert_eq!(r.status, 403, "nobody yet: {}", r.reason);
    let added = call(
        &s,
        "users_add",
        json!({"name": "2001", "password": "pw2001"}),
    )
    .await;
    assert_eq!(added["realm"], "example.test");
    // At once: no wait for the file watcher.
    let r = register_authed(&phone, "2001", "pw2001", "api-users-2", 1, "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let stored = std::fs::read_to_string(dir.join("users")).unwrap();
    assert!(stored.contains("2001:example.test:"), "{stored}");
    assert!(!stored.contains("pw2001"), "only hashes are stored");

    let list = call(&s, "users_list", json!({})).await;
    let names: Vec<(&str, &str)> = items(&list)
        .iter()
        .map(|u| (u["name"].as_str().unwrap(), u["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("2001", "file"), ("1001", "config"), ("1002", "config")]
    );

    call(&s, "users_remove", json!({"name": "2001"})).await;
    let r = register_authed(&phone, "2001", "pw2001", "api-users-3", 1, "").await;
    assert!(
        matches!(r.status, 401 | 403),
        "removed: {} {}",
        r.status,
        r.reason
    );
    let (code, _) = call_err(&s, "users_remove", json!({"name": "2001"})).await;
    assert_eq!(code, NOT_FOUND);
    let (code, msg) = call_err(&s, "users_remove", json!({"name": "1001"})).await;
    assert_eq!(code, REFUSED, "a config user: {msg}");
    let (code, msg) = call_err(&s, "users_add", json!({"name": "a b", "password": "x"})).await;
    assert_eq!(code, INVALID_PARAMS);
    assert!(msg.starts_with("params.name:"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_params_are_refused_naming_the_field() {
    let s = server(CALLS).await;
    let cases = [
        ("status", json!([1]), "params:"),
        ("status", json!({"x": 1}), "params.x:"),
        ("registrations", json!({"limit": 0}), "params.limit:"),
        ("registrations", json!({"limit": 1001}), "params.limit:"),
        ("registrations", json!({"offset": -1}), "params.offset:"),
        ("calls", json!({"filter": 7}), "params.filter:"),
        (
            "publish",
            json!({"event": "dialog", "body": "x"}),
            "params.presentity:",
        ),
        (
            "publish",
            json!({"presentity": "tel:+1", "event": "dialog", "body": "x"}),
            "params.presentity:",
        ),
        (
            "publish",
            json!({"presentity": "sip:1001@example.test", "event": "nope", "body": "x"}),
            "params.event:",
        ),
        (
            "publish",
            json!({"presentity": "sip:1001@example.test", "event": "presence", "body": "x", "expires": 86401}),
            "params.expires:",
        ),
        (
            "publish",
            json!({"presentity": "sip:1001@example.test", "event": "presence", "body": "x", "content_type": "text/plain"}),
            "params.content_type:",
        ),
        (
            "publish",
            json!({"presentity": "sip:1001@example.test", "event": "presence", "id": "a b", "body": "x"}),
            "params.id:",
        ),
        (
            "subscribe",
            json!({"watcher": "nobody", "presentity": "sip:1001@example.test", "event": "dialog"}),
            "params.watcher:",
        ),
        (
            "subscribe",
            json!({"watcher": "sip:1003@example.test", "presentity": "sip:1001@example.test", "event": "dialog", "expires": 5}),
            "params.expires:",
        ),
        (
            "subscribe",
            json!({"watcher": "sip:1003@example.test", "presentity": "sip:1001@example.test", "event": "a b"}),
            "params.event:",
        ),
        ("unsubscribe", json!({}), "params.id:"),
        (
            "refresh_watchers",
            json!({"presentity": 5}),
            "params.presentity:",
        ),
        (
            "approve",
            json!({"presentity": "sip:1001@example.test"}),
            "params.watcher:",
        ),
        (
            "block",
            json!({"presentity": "sip:1001@example.test", "watcher": "sip:x@y", "event": "presence.winfo"}),
            "params.event:",
        ),
        (
            "message_summary",
            json!({"mailbox": "sip:1001@example.test", "waiting": "yes"}),
            "params.waiting:",
        ),
        (
            "message_summary",
            json!({"mailbox": "sip:1001@example.test", "waiting": true, "new": -1}),
            "params.new:",
        ),
        ("users_add", json!({"name": "2002"}), "params.password:"),
    ];
    for (method, params, field) in cases {
        let (code, msg) = call_err(&s, method, params.clone()).await;
        assert_eq!(code, INVALID_PARAMS, "{method} {params}: {msg}");
        assert!(
            msg.starts_with(field),
            "{method} {params}: {msg:?} should name {field}"
        );
    }
    // Users need a users file; this server has none.
    let (code, msg) = call_err(&s, "users_add", json!({"name": "2002", "password": "x"})).await;
    assert_eq!(code, REFUSED, "{msg}");
    let (code, _) = call_err(&s, "frobnicate", json!({})).await;
    assert_eq!(code, busylamp::control::rpc::METHOD_NOT_FOUND);
}

#[tokio::test]
async fn a_rule_for_every_package_leaves_the_mailbox_closed_unless_it_names_it() {
    let s = server(&confirm_config()).await;
    const EVE: &str = "sip:eve@other.test";
    call(
        &s,
        "approve",
        json!({"presentity": "sip:1001@example.test", "watcher": EVE}),
    )
    .await;
    let mut ua = Ua::new(s.udp).await;
    let r = ua
        .request(&subscribe_bytes(
            &ua,
            EVE,
            "1001",
            "dialog",
            "eve-all-1",
            600,
        ))
        .await;
    assert_eq!(r.status, 200, "a rule for every package covers dialog");
    assert!(sub_state(&ua.notify().await).starts_with("active"));
    let r = ua
        .request(&subscribe_bytes(
            &ua,
            EVE,
            "1001",
            "message-summary",
            "eve-all-2",
            600,
        ))
        .await;
    assert_eq!(r.status, 403, "the mailbox stays the owner's: {}", r.reason);
    call(
        &s,
        "approve",
        json!({"presentity": "sip:1001@example.test", "watcher": EVE, "event": "message-summary"}),
    )
    .await;
    let r = ua
        .request(&subscribe_bytes(
            &ua,
            EVE,
            "1001",
            "message-summary",
            "eve-all-3",
            600,
        ))
        .await;
    assert_eq!(r.status, 200, "named: {}", r.reason);
    assert_eq!(call(&s, "rules", json!({})).await["total"], 2);
}

#[tokio::test]
async fn a_rule_the_disk_refuses_is_refused_and_not_kept() {
    let cfg = Config::from_toml(&confirm_config(), "t.toml").unwrap();
    let store = Arc::new(MemoryStore::with_max_queued_writes(1));
    let s = server_with_store(cfg, store.clone()).await;
    store.stall_disk();
    // The one place in the queue is taken: the rule's write is refused at once.
    let _queued = busylamp::storage::PresenceStore::write(&*store, Vec::new());
    let (code, msg) = call_err(
        &s,
        "approve",
        json!({"presentity": "sip:1001@example.test", "watcher": "sip:eve@other.test"}),
    )
    .await;
    assert_eq!(code, REFUSED, "{msg}");
    assert!(msg.contains("storage busy"), "{msg}");
    store.resume_disk();
    assert_eq!(call(&s, "rules", json!({})).await["total"], 0);
}

/// One call over the control socket at `path`, on a blocking thread (the client blocks; the
/// server runs on this test's runtime).
async fn over_socket(
    path: &std::path::Path,
    method: &'static str,
    params: Value,
) -> Result<Value, busylamp::control::client::CallError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut c = busylamp::control::client::Client::connect(&path).expect("connect");
        c.set_timeout(Some(Duration::from_secs(10)));
        c.call(method, params)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn over_the_real_socket_lists_agree_publish_reaches_a_watcher_and_errors_name_the_field() {
    let dir = std::env::temp_dir().join(format!("busylamp-ctlapi-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.sock");
    let config = format!("{CALLS}\n[control]\nsocket = \"{}\"\n", path.display());
    let s = server(&config).await;
    assert_eq!(s.handle.control_socket(), Some(path.as_path()));
    let _phone = Phone::registered(s.udp, "1001", "desk").await;
    let regs = over_socket(&path, "registrations", json!({"filter": "1001"}))
        .await
        .unwrap();
    assert_eq!(regs["items"][0]["aor"], "sip:1001@example.test", "{regs}");

    let mut lamp = Watcher::new(s.udp, "1002").await;
    over_socket(
        &path,
        "publish",
        json!({"presentity": "sip:1002@example.test", "event": "dialog", "body": DIALOG_DOC}),
    )
    .await
    .unwrap();
    lamp.until(Some(DialogState::Confirmed)).await;

    match over_socket(&path, "registrations", json!({"limit": "ten"})).await {
        Err(busylamp::control::client::CallError::Rpc(e)) => {
            assert_eq!(e.code, INVALID_PARAMS);
            assert!(e.message.starts_with("params.limit:"), "{}", e.message);
        }
        other => panic!("a bad limit answered {other:?}"),
    }
    s.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
