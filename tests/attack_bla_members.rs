//! Issue 12, shared lines (`[[bla.lines]]`) as an attacker tries them: a member's phone
//! registers the line and calls from it with the member's own credentials, and the PBX sees
//! the line as the caller; a user who is not a member can neither register the line nor call
//! as it, and a member gains nothing beyond its lines (another user's AOR stays refused).
//!
//! The office: line 2000 ("Main line", its own user 2000 too) with members 1001 and 1002;
//! line 2001 with member 1002 only; user 1003 is nobody's member. Phones on 127.0.0.1
//! (digest), the PBX on 127.0.0.3 (trusted for calls, the upstream).

mod common;

use busylamp::sip::{HeaderName, Request, Response};
use common::phone::Phone;
use common::{authorization, register, TestServer, Udp};

const LINES: &str = r#"
[[users]]
name = "2000"
password = "line"
[[bla.lines]]
aor = "2000"
label = "Main line"
appearances = 2
members = ["1001", "1002"]
[[bla.lines]]
aor = "sip:2001@example.test"
members = ["1002"]
"#;

fn config(pbx_port: u16) -> String {
    format!("{}{LINES}", common::phone::office_config(pbx_port))
}

/// The server and the PBX (127.0.0.3, answering as a phone would).
async fn office() -> (TestServer, Phone) {
    let mut pbx = Phone::new_at("127.0.0.3", "127.0.0.1:9".parse().unwrap(), "pbx", "pbx").await;
    let s = common::server(&config(pbx.ua.port())).await;
    pbx.ua.server = s.udp;
    (s, pbx)
}

fn password(user: &str) -> &'static str {
    match user {
        "1001" => "secret",
        "1002" => "other",
        "1003" => "third",
        "2000" => "line",
        other => panic!("no password for {other}"),
    }
}

/// A REGISTER of the AOR `to` (`sip:2000@example.test`) from `c`, authenticated as `user`
/// with its own password (From names `user`, as a Polycom's shared registration with the
/// member's credentials does): the final response.
async fn register_as(c: &Udp, user: &str, to: &str, call_id: &str) -> Response {
    let build = |cseq: u32, auth: &str| {
        let text = String::from_utf8(register(
            user,
            c.port(),
            call_id,
            cseq,
            &format!(
                "Contact: <sip:{user}@127.0.0.1:{}>\n        {auth}",
                c.port()
            ),
        ))
        .unwrap();
        let own = format!("To: <sip:{user}@example.test>");
        assert!(text.contains(&own));
        text.replace(&own, &format!("To: <{to}>")).into_bytes()
    };
    let r = c.request(&build(1, "")).await;
    assert_eq!(
        r.status, 401,
        "challenge expected: {} {}",
        r.status, r.reason
    );
    let challenge = r.headers.get(HeaderName::WwwAuthenticate).unwrap();
    let auth = authorization(
        challenge,
        user,
        password(user),
        "REGISTER",
        "sip:example.test",
        1,
    );
    c.request(&build(2, &format!("Authorization: {auth}")))
        .await
}

#[tokio::test]
async fn members_and_the_line_user_register_the_line_and_nobody_else_does() {
    let (s, _pbx) = office().await;
    let line = "sip:2000@example.test";

    // Member 1001's phone, then member 1002's, then a phone with the line's own credentials:
    // each adds its binding to the line.
    for (n, user) in ["1001", "1002", "2000"].into_iter().enumerate() {
        let phone = Udp::new(s.udp).await;
        let r = register_as(&phone, user, line, &format!("reg-line-{user}")).await;
        assert_eq!(r.status, 200, "{user}: {}", r.reason);
        assert_eq!(common::contacts(&r).len(), n + 1, "{user}: {r:?}");
    }
    // Any spelling of the line's AOR is the line.
    let phone = Udp::new(s.udp).await;
    let r = register_as(&phone, "1001", "sip:2000@127.0.0.1;user=phone", "reg-alias").await;
    assert_eq!(r.status, 200, "{}", r.reason);

    // Not a member: refused, naming the user and the AOR; the line keeps its four bindings.
    let attacker = Udp::new(s.udp).await;
    let r = register_as(&attacker, "1003", line, "reg-attack-1").await;
    assert_eq!(r.status, 403, "{}", r.reason);
    assert_eq!(r.reason, format!("User 1003 may not register {line}"));
    // Member of one line only: not of the other.
    let r = register_as(&attacker, "1001", "sip:2001@example.test", "reg-attack-2").await;
    assert_eq!(r.status, 403, "{}", r.reason);
    // A member gains nothing on other users' AORs: not another member's, not the line's at
    // another port (another AOR, not the line).
    for to in [
        "sip:1002@example.test",
        "sip:2000@example.test:7001",
        "sip:1003@example.test",
    ] {
        let r = register_as(&attacker, "1001", to, &format!("reg-attack-{to}")).await;
        assert_eq!(r.status, 403, "{to}: {}", r.reason);
        assert!(r.reason.contains("may not register"), "{}", r.reason);
    }
    // The member's own AOR is still its own.
    let r = register_as(&attacker, "1001", "sip:1001@example.test", "reg-own").await;
    assert_eq!(r.status, 200, "{}", r.reason);

    let bindings = s.handle.core.registrar.lookup(line);
    assert_eq!(bindings.len(), 4, "{bindings:?}");
    assert!(
        bindings.iter().all(|b| !b.contact.contains("1003")),
        "{bindings:?}"
    );
}

/// Every value of a header, whatever the spelling of its name.
fn named<'a>(r: &'a Request, name: &str) -> Vec<&'a str> {
    r.headers
        .0
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
        .collect()
}

/// An INVITE from `phone` (whose `user` is the From user) to the PBX, answering the 407 with
/// the credentials of `auth_user`; returns the response or the INVITE the PBX got.
async fn call_as(phone: &mut Phone, auth_user: &str, call_id: &str, extra: &str) -> Request {
    let invite = phone.invite_with("5551234", call_id, extra).await;
    // The phone's From stays its line; the digest answer names the member (Phone::authenticate
    // answers as `phone.user`).
    let from_user = std::mem::replace(&mut phone.user, auth_user.to_string());
    let sent = phone.authenticate(&invite, password(auth_user)).await;
    phone.user = from_user;
    sent
}

#[tokio::test]
async fn a_member_calls_from_the_line_and_the_pbx_is_told_the_line() {
    let (_s, mut pbx) = office().await;
    let mut phone = Phone::new(pbx.ua.server, "2000", "desk-1001").await;

    // Member 1001's credentials, the line's From, forged identity headers: the PBX gets
    // exactly the line's identity.
    call_as(
        &mut phone,
        "1001",
        "bla-call-1",
        "P-Asserted-Identity: <sip:1003@example.test>\nRemote-Party-ID: <sip:1003@example.test>;screen=yes",
    )
    .await;
    let at_pbx = pbx.next_of("INVITE").await;
    assert_eq!(
        named(&at_pbx, "P-Asserted-Identity"),
        ["\"2000 desk-1001\" <sip:2000@example.test>"],
        "the line, as the member proved it may use it"
    );
    assert!(named(&at_pbx, "Remote-Party-ID").is_empty());
    assert!(
        named(&at_pbx, "From")[0].contains("<sip:2000@example.test>"),
        "{:?}",
        named(&at_pbx, "From")
    );
    assert!(
        named(&at_pbx, "Proxy-Authorization").is_empty(),
        "our credentials end here"
    );
    pbx.reply(&at_pbx, 486, "p1").await;
    assert_eq!(phone.final_of("INVITE").await.status, 486);

    // The line's own credentials: the same identity.
    call_as(&mut phone, "2000", "bla-call-2", "").await;
    let at_pbx = pbx.next_of("INVITE").await;
    assert_eq!(
        named(&at_pbx, "P-Asserted-Identity"),
        ["\"2000 desk-1001\" <sip:2000@example.test>"]
    );
    pbx.reply(&at_pbx, 486, "p2").await;
    assert_eq!(phone.final_of("INVITE").await.status, 486);

    // The member calling as itself is still itself.
    let mut own = Phone::new(pbx.ua.server, "1001", "desk-1001").await;
    call_as(&mut own, "1001", "bla-call-3", "").await;
    let at_pbx = pbx.next_of("INVITE").await;
    assert_eq!(
        named(&at_pbx, "P-Asserted-Identity"),
        ["\"1001 desk-1001\" <sip:1001@example.test>"]
    );
    pbx.reply(&at_pbx, 486, "p3").await;
    assert_eq!(own.final_of("INVITE").await.status, 486);
}

#[tokio::test]
async fn a_non_member_cannot_call_as_the_line_nor_a_member_as_another_user() {
    let (_s, mut pbx) = office().await;
    let server = pbx.ua.server;

    // 1003 is no member of line 2000; 1001 is no member of line 2001; a member of a line is
    // not another user (1002).
    for (from, auth_user, why) in [
        ("2000", "1003", "not a member"),
        ("2001", "1001", "member of another line only"),
        ("1002", "1001", "another user"),
    ] {
        let mut phone = Phone::new(server, from, "attacker").await;
        let call_id = format!("bla-attack-{from}-{auth_user}");
        let extra = format!("P-Asserted-Identity: <sip:{from}@example.test>");
        call_as(&mut phone, auth_user, &call_id, &extra).await;
        let r = phone.final_of("INVITE").await;
        assert_eq!(r.status, 403, "{why}: {}", r.reason);
        assert_eq!(
            r.reason, "Forbidden: calls may only be made as the authenticated user",
            "{why}"
        );
    }
    // The 403s above were answered after the server read each INVITE: the PBX got none.
    assert!(
        pbx.ua.next_request_within(200).await.is_none(),
        "an INVITE reached the PBX"
    );
}
