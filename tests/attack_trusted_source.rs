//! Issue 10, finding 2, as an attacker: a source in `[auth] trusted` is trusted only for what
//! `[auth] trusted_for` names (default: calls).
//!
//! Up to issue 10 a trusted address (the PBX's, which anyone can put on a UDP datagram) skipped
//! the challenge for everything: a REGISTER for any user's AOR with a foreign contact got
//! `200`, `Contact: *` removed another user's bindings, and SUBSCRIBEs as any user to
//! message-summary, winfo and dialog came back active, their NOTIFYs sent wherever the
//! Record-Route said. Here the whole loopback network is trusted (so every socket of the
//! test is "the PBX") and each of those requests must get `401`, change nothing and make no
//! NOTIFY; the PBX's calls still pass without a challenge, and naming a purpose in
//! `trusted_for` brings its old behaviour back, for that purpose only.

mod common;

use busylamp::sip::HeaderName;
use common::phone::{Phone, CALLS};
use common::ua::Ua;
use common::{contacts, register, register_authed, server, wire, TestServer, Udp};

/// The office of the call tests ([`CALLS`]: users 1001/secret, 1002/other and 1003, all of
/// 127.0.0.0/8 in `[auth] trusted`) trusted only for what the `trusted_for` line says ("": the
/// default), and its PBX at 127.0.0.3:`pbx_port`.
fn config(pbx_port: u16, trusted_for: &str) -> String {
    const FOR_EVERYTHING: &str = r#"trusted_for = ["calls", "register", "subscribe", "publish"]"#;
    assert!(CALLS.contains(FOR_EVERYTHING), "CALLS changed: {CALLS}");
    format!(
        "{}\n[proxy]\nupstream = \"sip:127.0.0.3:{pbx_port}\"\n",
        CALLS.replace(FOR_EVERYTHING, trusted_for)
    )
}

/// The server with the default `trusted_for` (calls), 1002's desk phone registered with
/// digest, and the PBX's socket on 127.0.0.3.
async fn office() -> (TestServer, Phone, Ua) {
    let mut pbx = Ua::bind("127.0.0.3", "127.0.0.1:9".parse().unwrap()).await;
    let s = server(&config(pbx.port(), "")).await;
    pbx.server = s.udp;
    let mut victim = Phone::new(s.udp, "1002", "desk").await;
    victim.register_with_password("other").await;
    (s, victim, pbx)
}

/// The contacts bound to `user`'s AOR, as its owner sees them (a digest-authenticated query
/// REGISTER: no Contact).
async fn bindings_of(s: &TestServer, user: &str, password: &str) -> Vec<String> {
    let owner = Udp::new(s.udp).await;
    let r = register_authed(&owner, user, password, &format!("query-{user}"), 1, "").await;
    assert_eq!(r.status, 200, "query of {user}: {}", r.reason);
    contacts(&r).into_iter().map(|(uri, _)| uri).collect()
}

/// A SUBSCRIBE from the attacker's socket as `from_user` to `presentity`'s `event`, whose
/// Record-Route names `victim_port` (where the NOTIFYs would go).
fn subscribe_as(
    port: u16,
    from_user: &str,
    presentity: &str,
    event: &str,
    victim_port: u16,
) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:{from_user}@example.test>;tag=spoof-{event}
        To: <sip:{presentity}@example.test>
        Call-ID: spoof-{event}-{port}
        CSeq: 1 SUBSCRIBE
        Record-Route: <sip:127.0.0.1:{victim_port};lr>
        Contact: <sip:{from_user}@127.0.0.1:{port}>
        Event: {event}
        Expires: 600
        ",
        b = common::branch()
    ))
}

fn publish_as(port: u16, user: &str) -> Vec<u8> {
    let pidf = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{user}@example.test\">\
         <tuple id=\"t1\"><status><basic>closed</basic></status></tuple></presence>"
    );
    wire(&format!(
        "PUBLISH sip:{user}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:{user}@example.test>;tag=pub
        To: <sip:{user}@example.test>
        Call-ID: spoof-publish-{port}
        CSeq: 1 PUBLISH
        Event: presence
        Expires: 600
        Content-Type: application/pidf+xml

        {pidf}",
        b = common::branch()
    ))
}

fn assert_challenged(r: &busylamp::sip::Response, what: &str) {
    assert_eq!(r.status, 401, "{what}: {} {}", r.status, r.reason);
    assert!(
        r.headers.has(HeaderName::WwwAuthenticate),
        "{what}: a challenge"
    );
}

#[tokio::test(start_paused = true)]
async fn register_for_another_users_aor_from_a_trusted_address_is_challenged_and_binds_nothing() {
    let (s, victim, _pbx) = office().await;
    let attacker = Udp::new(s.udp).await;
    for (user, call_id) in [("1002", "hijack-1002"), ("1001", "hijack-1001")] {
        let r = attacker
            .request(&register(
                user,
                attacker.port(),
                call_id,
                1,
                "Contact: <sip:evil@192.0.2.66:5060>\n        Expires: 3600",
            ))
            .await;
        assert_challenged(&r, &format!("REGISTER for {user}"));
    }
    // The owners' answers: 1002 still has its desk phone only, 1001 nothing.
    assert_eq!(
        bindings_of(&s, "1002", "other").await,
        vec![victim.contact()]
    );
    assert!(bindings_of(&s, "1001", "secret").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn contact_star_from_a_trusted_address_is_challenged_and_the_victims_bindings_remain() {
    let (s, victim, _pbx) = office().await;
    let attacker = Udp::new(s.udp).await;
    let r = attacker
        .request(&register(
            "1002",
            attacker.port(),
            "wipe-1002",
            1,
            "Contact: *\n        Expires: 0",
        ))
        .await;
    assert_challenged(&r, "REGISTER Contact: *");
    assert_eq!(
        bindings_of(&s, "1002", "other").await,
        vec![victim.contact()]
    );
}

#[tokio::test(start_paused = true)]
async fn subscribe_as_another_user_from_a_trusted_address_is_challenged_for_every_package() {
    let (s, _victim, _pbx) = office().await;
    let mut attacker = Ua::new(s.udp).await;
    // Where the Record-Route would send the NOTIFYs.
    let mut target = Ua::new(s.udp).await;
    let tries = [
        // 1002's voicemail and watcher list, as 1002.
        ("1002", "1002", "message-summary"),
        ("1002", "1002", "presence.winfo"),
        // 1001's calls (call-id and tags for pickup) and presence, as 1002.
        ("1002", "1001", "dialog"),
        ("1002", "1001", "presence"),
    ];
    let mark = s.mark();
    for (from, presentity, event) in tries {
        let r = attacker
            .request(&subscribe_as(
                attacker.port(),
                from,
                presentity,
                event,
                target.port(),
            ))
            .await;
        assert_challenged(&r, &format!("SUBSCRIBE {event} to {presentity} as {from}"));
    }
    s.assert_processed_then_silent(
        mark,
        tries.len() as u64,
        async { attacker.no_notify(500).await && target.no_notify(500).await },
        "no NOTIFY for a challenged SUBSCRIBE, to the attacker or to its Record-Route",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn publish_from_a_trusted_address_is_challenged() {
    let (s, _victim, _pbx) = office().await;
    let mut attacker = Ua::new(s.udp).await;
    for user in ["1001", "1002"] {
        let r = attacker.request(&publish_as(attacker.port(), user)).await;
        assert_challenged(&r, &format!("PUBLISH for {user}"));
    }
}

/// The PBX keeps what it is trusted for: its INVITE reaches the phone without a challenge, and
/// the phone's answer reaches it. Its REGISTER for the same user is challenged.
#[tokio::test(start_paused = true)]
async fn the_trusted_pbx_calls_a_phone_without_a_challenge_but_cannot_register_it() {
    let (s, mut victim, pbx) = office().await;
    let mut pbx = Phone {
        ua: pbx,
        user: "pbx".into(),
        name: "pbx".into(),
    };
    pbx.invite("1002", "from-pbx-1").await;
    let at_phone = victim.next_of("INVITE").await;
    assert_eq!(at_phone.uri.to_string(), victim.contact());
    victim.reply(&at_phone, 200, "desk").await;
    let r = pbx.final_of("INVITE").await;
    assert_eq!(r.status, 200, "{}", r.reason);

    let mut spoof = Phone {
        ua: pbx.ua,
        user: "1002".into(),
        name: "pbx-spoof".into(),
    };
    let r = spoof
        .ua
        .request(&spoof.register_request("<sip:1002@192.0.2.66:5060>", 1, ""))
        .await;
    assert_challenged(&r, "the PBX's REGISTER for 1002");
    assert_eq!(
        bindings_of(&s, "1002", "other").await,
        vec![victim.contact()]
    );
}

/// `trusted_for` is what brings the old behaviour back, one purpose at a time: with
/// "register" named, the trusted address registers without credentials; SUBSCRIBE and
/// PUBLISH, not named, are still challenged.
#[tokio::test(start_paused = true)]
async fn trusted_for_register_lets_a_trusted_address_register_and_nothing_more() {
    let s = server(&config(9, r#"trusted_for = ["calls", "register"]"#)).await;
    let mut trusted = Ua::new(s.udp).await;
    let r = trusted
        .request(&register(
            "1002",
            trusted.port(),
            "allowed-1002",
            1,
            "Contact: <sip:1002@127.0.0.9:5060>",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // Bound: the query (a REGISTER too, so unchallenged here) lists it.
    let query = Udp::new(s.udp).await;
    let r = query
        .request(&register("1002", query.port(), "query-1002", 1, ""))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(contacts(&r)[0].0, "sip:1002@127.0.0.9:5060");
    let target = Ua::new(s.udp).await;
    let r = trusted
        .request(&subscribe_as(
            trusted.port(),
            "1002",
            "1001",
            "dialog",
            target.port(),
        ))
        .await;
    assert_challenged(&r, "SUBSCRIBE, not named in trusted_for");
    let r = trusted.request(&publish_as(trusted.port(), "1002")).await;
    assert_challenged(&r, "PUBLISH, not named in trusted_for");
}

/// `calls` is a purpose like the others: a trusted address whose `trusted_for` leaves it out
/// gets `407` for an INVITE, and nothing reaches the phone.
#[tokio::test(start_paused = true)]
async fn a_trusted_address_not_trusted_for_calls_is_challenged_for_its_invite() {
    let pbx = Ua::bind("127.0.0.3", "127.0.0.1:9".parse().unwrap()).await;
    let s = server(&config(pbx.port(), r#"trusted_for = ["register"]"#)).await;
    let mut phone = Phone::new(s.udp, "1002", "desk").await;
    phone.register().await;
    let mut pbx = Phone {
        ua: pbx,
        user: "pbx".into(),
        name: "pbx".into(),
    };
    pbx.ua.server = s.udp;
    let mark = s.mark();
    pbx.invite("1002", "not-for-calls-1").await;
    let r = pbx.final_of("INVITE").await;
    assert_eq!(r.status, 407, "{}", r.reason);
    s.assert_processed_then_silent(
        mark,
        1,
        async { phone.ua.next_request_within(300).await.is_none() },
        "nothing reaches the phone",
    )
    .await;
}
