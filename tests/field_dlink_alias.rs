//! Issue 11 item 1, end to end: a phone that registers under an alias of ours, with the
//! default port, is the same user as `user@domain` for the registrar, the proxy, the dialog
//! tracker and BLF. The REGISTER is shaped like a real D-Link DPH-150S's: Request-URI
//! `sip:<alias IP>:5060`, To and From `sip:6333@<alias IP>:5060`, digest.

mod common;

use busylamp::sip::body::dialog_info::DialogState;
use busylamp::sip::{HasHeaders, HeaderName, Request};
use busylamp::storage::{durable, Binding, BindingStore, MemoryStore};
use common::phone::{contact_uri, Phone, SDP};
use common::ua::Ua;
use common::watcher::Watcher;
use common::*;
use std::sync::Arc;

const ALIAS: &str = "192.168.100.212";

/// Digest for REGISTER; calls and SUBSCRIBEs from loopback trusted (the caller and the BLF
/// key need no password); `192.168.100.212` and `pbx.local` are aliases of `example.test`.
const OFFICE: &str = r#"
[server]
domain = "example.test"
aliases = ["192.168.100.212", "pbx.local"]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "subscribe"]
[presence]
coalesce_ms = 0
[[users]]
name = "6333"
password = "dlink"
[[users]]
name = "1001"
password = "secret"
"#;

/// A REGISTER as the DPH-150S writes it: everything addressed to the alias at port 5060.
fn dlink_register(phone: &Phone, cseq: u32, contact: Option<&str>, extra: &str) -> Vec<u8> {
    let contact = contact
        .map(|c| format!("Contact: {c}\n"))
        .unwrap_or_default();
    wire(&format!(
        "REGISTER sip:{ALIAS}:5060 SIP/2.0
        Via: {via};rport
        From: <sip:6333@{ALIAS}:5060>;tag=dlink{cseq}
        To: <sip:6333@{ALIAS}:5060>
        Call-ID: dph150s-reg@127.0.0.1
        CSeq: {cseq} REGISTER
        {contact}Max-Forwards: 70
        User-Agent: DPH-150S
        Expires: 3600
        {extra}
        ",
        via = phone.via(),
    ))
}

/// 6333's Authorization answering the `401` `r` to a REGISTER sent to `request_uri`.
fn answer_6333(r: &busylamp::sip::Response, request_uri: &str) -> String {
    let challenge = r.headers.get(HeaderName::WwwAuthenticate).unwrap();
    authorization(challenge, "6333", "dlink", "REGISTER", request_uri, 1)
}

/// REGISTER, `401`, REGISTER with digest for the Request-URI `sip:<alias>:5060`: the `200`.
async fn dlink_registers(phone: &mut Phone, first_cseq: u32, contact: Option<&str>) -> Vec<String> {
    let r = phone
        .ua
        .request(&dlink_register(phone, first_cseq, contact, ""))
        .await;
    assert_eq!(r.status, 401, "{}", r.reason);
    let auth = answer_6333(&r, &format!("sip:{ALIAS}:5060"));
    let r = phone
        .ua
        .request(&dlink_register(
            phone,
            first_cseq + 1,
            contact,
            &format!("Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    r.headers
        .all(HeaderName::Contact)
        .map(contact_uri)
        .collect()
}

/// An INVITE from `caller` to the Request-URI `target` (To the same).
async fn call(caller: &mut Phone, target: &str, call_id: &str) {
    let text = format!(
        "INVITE {target} SIP/2.0
        Via: {via}
        Max-Forwards: 70
        From: <sip:{u}@example.test>;tag=from-{call_id}
        To: <{target}>
        Call-ID: {call_id}
        CSeq: 1 INVITE
        Contact: <{c}>
        Content-Type: application/sdp
        ",
        via = caller.via(),
        u = caller.user,
        c = caller.contact(),
    );
    let head = String::from_utf8(wire(&text)).unwrap().replace(
        "Content-Length: 0\r\n",
        &format!("Content-Length: {}\r\n", SDP.len()),
    );
    caller.ua.send(format!("{head}{SDP}").as_bytes()).await;
}

/// `callee` rings for `call_id`, then declines; the caller hears the 486.
async fn rings_then_busy(caller: &mut Phone, callee: &mut Phone, call_id: &str) -> Request {
    let invite = callee.next_of("INVITE").await;
    assert_eq!(invite.call_id().unwrap(), call_id);
    callee.reply(&invite, 180, "dlink-tag").await;
    callee.reply(&invite, 486, "dlink-tag").await;
    let r = caller.final_for(call_id).await;
    assert_eq!(r.status, 486, "{}", r.reason);
    invite
}

#[tokio::test]
async fn a_dlink_registered_under_an_alias_is_called_queried_and_lit_by_domain() {
    let s = server(OFFICE).await;
    let mut dlink = Phone::new(s.udp, "6333", "dph150s").await;
    let mut lamp = Watcher::new(s.udp, "6333").await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;

    let contact = format!("<{}>", dlink.contact());
    let bound = dlink_registers(&mut dlink, 1, Some(&contact)).await;
    assert_eq!(bound, [dlink.contact()]);
    let reg = &s.handle.core.registrar;
    assert_eq!(
        reg.lookup("sip:6333@example.test").len(),
        1,
        "canonical AOR"
    );
    assert_eq!(reg.aor_count(), 1, "no AOR under the alias");

    // A call to the domain rings the phone, and the BLF key of 6333@domain sees it; so does
    // a call to the alias with the port, as the phone itself names its AOR.
    for (target, call_id) in [
        ("sip:6333@example.test".to_string(), "to-domain"),
        (format!("sip:6333@{ALIAS}:5060"), "to-alias"),
    ] {
        call(&mut alice, &target, call_id).await;
        let invite = rings_then_busy(&mut alice, &mut dlink, call_id).await;
        assert_eq!(
            invite.uri.to_string(),
            dlink.contact(),
            "sent to the contact"
        );
        let ringing = lamp.until(Some(DialogState::Early)).await;
        assert!(
            ringing
                .dialogs
                .iter()
                .any(|d| d.state == DialogState::Early && d.call_id.as_deref() == Some(call_id)),
            "{target}: {ringing:?}"
        );
        lamp.dark().await;
    }

    // A REGISTER query (no Contact) under the domain lists the phone's contact.
    let mut query = Phone::new(s.udp, "6333", "query").await;
    let r = query
        .ua
        .request(&query.register_request("<sip:x@127.0.0.1>", 1, ""))
        .await;
    assert_eq!(r.status, 401, "{}", r.reason);
    let auth = answer_6333(&r, "sip:example.test");
    let text = String::from_utf8(query.register_request(
        "<sip:x@127.0.0.1>",
        2,
        &format!("Authorization: {auth}"),
    ))
    .unwrap()
    .replace("Contact: <sip:x@127.0.0.1>\r\n", "");
    let r = query.ua.request(text.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let listed: Vec<String> = r
        .headers
        .all(HeaderName::Contact)
        .map(contact_uri)
        .collect();
    assert_eq!(listed, [dlink.contact()]);

    // And the phone's own refresh under the alias finds the same binding.
    let again = dlink_registers(&mut dlink, 3, Some(&contact)).await;
    assert_eq!(again, [dlink.contact()]);
    assert_eq!(reg.lookup("sip:6333@example.test").len(), 1);
}

/// With REGISTER trusted, users registered at a listen address with the default port, at an
/// alias, and at the alias in upper case are all callable as `user@domain`.
#[tokio::test]
async fn users_registered_at_our_address_or_an_alias_in_any_case_are_callable() {
    let s = server(&OFFICE.replace(
        "trusted_for = [\"calls\", \"subscribe\"]",
        "trusted_for = [\"calls\", \"register\", \"subscribe\"]",
    ))
    .await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;
    for (user, host) in [
        ("2001", "127.0.0.1:5060"),
        ("2002", "pbx.local"),
        ("2003", "PBX.LOCAL"),
    ] {
        let mut phone = Phone::new(s.udp, user, "desk").await;
        let contact = format!("<{}>", phone.contact());
        let text = String::from_utf8(phone.register_request(&contact, 1, ""))
            .unwrap()
            .replace(
                &format!("To: <sip:{user}@example.test>"),
                &format!("To: <sip:{user}@{host}>"),
            );
        let r = phone.ua.request(text.as_bytes()).await;
        assert_eq!(r.status, 200, "{user}@{host}: {}", r.reason);

        let call_id = format!("call-{user}");
        call(&mut alice, &format!("sip:{user}@example.test"), &call_id).await;
        rings_then_busy(&mut alice, &mut phone, &call_id).await;
    }
    assert_eq!(s.handle.core.registrar.aor_count(), 3);
}

fn binding(contact: &str, expires_at: u64) -> Binding {
    Binding {
        contact: contact.into(),
        params: String::new(),
        q: 1000,
        expires_at,
        call_id: "c".into(),
        cseq: 1,
        path: vec![],
        instance: None,
        reg_id: None,
        user_agent: Some("DPH-150S".into()),
        source: "udp:127.0.0.1:5070".into(),
        registered_at: 0,
    }
}

/// Bindings stored before the AOR was canonical (under the alias and port, `sips:`, the
/// alias in another case) are merged into `sip:6333@example.test` at start and moved there on
/// disk; the per-user count holds each contact once.
#[tokio::test]
async fn bindings_stored_under_old_aor_spellings_are_merged_at_start() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let store = Arc::new(MemoryStore::new());
    for (aor, list) in [
        (
            format!("sip:6333@{ALIAS}:5060"),
            vec![
                binding("sip:6333@127.0.0.1:5070", now + 600),
                binding("sip:6333@127.0.0.1:5071", now + 100),
            ],
        ),
        (
            "sips:6333@pbx.local".to_string(),
            // The same contact as above, refreshed later: the longer one stays.
            vec![binding("sip:6333@127.0.0.1:5071", now + 900)],
        ),
        (
            "sip:6333@example.test".to_string(),
            vec![binding("sip:6333@127.0.0.1:5072", now + 300)],
        ),
        // Expired while we were down: dropped, not moved.
        (
            "sip:6333@PBX.LOCAL".to_string(),
            vec![binding("sip:6333@127.0.0.1:5073", 1)],
        ),
        // A foreign AOR and another port stay where they are.
        (
            "sip:6333@elsewhere.test".to_string(),
            vec![binding("sip:6333@127.0.0.1:5074", now + 300)],
        ),
        (
            "sip:6333@example.test:7001".to_string(),
            vec![binding("sip:6333@127.0.0.1:5075", now + 300)],
        ),
    ] {
        durable(store.save_bindings(&aor, &list)).await.unwrap();
    }
    let cfg = busylamp::config::Config::from_toml(OFFICE, "t.toml").unwrap();
    let s = server_with_store(cfg.clone(), store.clone()).await;
    let reg = &s.handle.core.registrar;
    let mut merged: Vec<(String, u64)> = reg
        .lookup("sip:6333@example.test")
        .into_iter()
        .map(|b| (b.contact, b.expires_at))
        .collect();
    merged.sort();
    assert_eq!(
        merged,
        [
            ("sip:6333@127.0.0.1:5070".to_string(), now + 600),
            ("sip:6333@127.0.0.1:5071".to_string(), now + 900),
            ("sip:6333@127.0.0.1:5072".to_string(), now + 300),
        ]
    );
    assert_eq!(
        reg.bindings_of_user("6333"),
        5,
        "3 merged, foreign, other port"
    );
    assert_eq!(reg.aor_count(), 3);
    let mut keys: Vec<String> = store
        .load_bindings()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "sip:6333@elsewhere.test",
            "sip:6333@example.test",
            "sip:6333@example.test:7001"
        ],
        "old keys moved on disk"
    );
    s.handle.shutdown().await;

    // A second start finds nothing left to move.
    let s = server_with_store(cfg, store.clone()).await;
    assert_eq!(
        s.handle
            .core
            .registrar
            .lookup("sip:6333@example.test")
            .len(),
        3
    );
    assert_eq!(s.handle.core.registrar.bindings_of_user("6333"), 5);
}

/// Presence records stored before the AOR was canonical (usrloc published for
/// `sip:6333@<alias>:5060`, a BLF key subscribed to `sips:6333@PBX.local` as
/// `sip:1001@<alias>:5060`) move to the canonical AORs at start: the publication's key
/// changes, the subscription (keyed by its dialog) is rewritten in place.
#[tokio::test]
async fn presence_records_stored_under_old_aor_spellings_move_at_start() {
    use busylamp::storage::presence::{
        FlowRecord, PresenceStore, PresenceWrite, PublicationRecord, SubState, SubscriptionRecord,
    };
    let expires_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let store = Arc::new(MemoryStore::new());
    let watcher = Ua::new("127.0.0.1:9".parse().unwrap()).await;
    let publication = PublicationRecord {
        presentity: format!("sip:6333@{ALIAS}:5060"),
        event: "presence".into(),
        etag: "e1".into(),
        source_id: "etag:e0".into(),
        content_type: "application/pidf+xml".into(),
        body: b"<presence/>".as_slice().into(),
        expires_at,
        seq: 1,
    };
    let subscription = SubscriptionRecord {
        presentity: "sips:6333@PBX.local".into(),
        event: "dialog".into(),
        event_id: None,
        watcher: format!("sip:1001@{ALIAS}:5060"),
        watcher_header: "<sip:1001@example.test>".into(),
        presentity_header: "<sip:6333@example.test>".into(),
        call_id: "old-blf".into(),
        local_tag: "bl1".into(),
        remote_tag: "w1".into(),
        remote_target: format!("sip:1001@127.0.0.1:{}", watcher.port()),
        route_set: vec![],
        local_cseq: 4,
        remote_cseq: 1,
        version: 3,
        cseq_reserved: 4,
        version_reserved: 3,
        expires_at,
        state: SubState::Active,
        accept: vec!["application/dialog-info+xml".into()],
        flow: FlowRecord {
            proto: "udp".into(),
            remote: format!("127.0.0.1:{}", watcher.port()),
            local: "127.0.0.1:5060".into(),
        },
        user_agent: None,
        contact: "sip:127.0.0.1:5060".into(),
        created_at: 1,
    };
    durable(store.write(vec![
        PresenceWrite::publication(&publication),
        PresenceWrite::subscription(&subscription),
    ]))
    .await
    .unwrap();
    let cfg = busylamp::config::Config::from_toml(OFFICE, "t.toml").unwrap();
    let s = server_with_store(cfg, store.clone()).await;
    let pubs = store.load_publications().unwrap();
    assert_eq!(pubs.len(), 1, "moved, not copied: {pubs:?}");
    assert_eq!(pubs[0].presentity, "sip:6333@example.test");
    assert_eq!(pubs[0].key(), {
        let mut moved = publication.clone();
        moved.presentity = "sip:6333@example.test".into();
        moved.key()
    });
    let subs = store.load_subscriptions().unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].presentity, "sip:6333@example.test");
    assert_eq!(subs[0].watcher, "sip:1001@example.test");
    s.handle.shutdown().await;
}
