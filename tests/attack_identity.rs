//! RFC 3325 at the edge of the trust domain, as an attacker tries it: an authenticated user
//! claims someone else's identity in the headers a PBX believes (P-Asserted-Identity,
//! Remote-Party-ID `;screen=yes`, P-Preferred-Identity, Diversion) or writes a foreign
//! domain in its From.
//!
//! The office: phones on 127.0.0.1 and 127.0.0.4 (not trusted: digest), the PBX on 127.0.0.3
//! (trusted for calls only, and the upstream).

mod common;

use busylamp::sip::{HasHeaders, Request};
use common::phone::Phone;
use common::TestServer;

/// The server, the PBX (on 127.0.0.3) and 1001's phone (127.0.0.1, challenged).
async fn office() -> (TestServer, Phone, Phone) {
    let mut pbx = Phone::new_at("127.0.0.3", "127.0.0.1:9".parse().unwrap(), "pbx", "pbx").await;
    let s = common::server(&common::phone::office_config(pbx.ua.port())).await;
    pbx.ua.server = s.udp;
    let alice = Phone::new(s.udp, "1001", "a").await;
    (s, pbx, alice)
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

const FORGED: &str = "P-Asserted-Identity: <sip:1002@example.test>
p-asserted-identity: \"CEO\" <sip:1000@example.test>, <tel:+15550001>
Remote-Party-ID: \"Boss\" <sip:1000@example.test>;party=calling;screen=yes;privacy=off
REMOTE-PARTY-ID: <sip:1002@example.test>;screen=yes
P-Preferred-Identity: <sip:1002@example.test>
Diversion: <sip:1002@example.test>;reason=unconditional;counter=1
diversion: <sip:911@example.test>";

#[tokio::test]
async fn rfc3325_forged_identity_headers_are_replaced_by_the_authenticated_users_toward_the_pbx() {
    let (_s, mut pbx, mut alice) = office().await;
    let invite = alice.invite_with("5551234", "forged-1", FORGED).await;
    let sent = alice.authenticate(&invite, "secret").await;
    assert_eq!(
        named(&sent, "P-Asserted-Identity").len(),
        2,
        "the forgery was sent"
    );

    let at_pbx = pbx.next_of("INVITE").await;
    assert_eq!(at_pbx.uri.to_string(), "sip:5551234@example.test");
    assert_eq!(
        named(&at_pbx, "P-Asserted-Identity"),
        ["\"1001 a\" <sip:1001@example.test>"],
        "exactly the identity 1001 proved"
    );
    for h in ["Remote-Party-ID", "P-Preferred-Identity", "Diversion"] {
        assert_eq!(named(&at_pbx, h), Vec::<&str>::new(), "{h} reached the PBX");
    }
    pbx.reply(&at_pbx, 486, "p").await;
    assert_eq!(alice.final_of("INVITE").await.status, 486);

    // RFC 3325 §7: `Privacy: id` keeps the identity from untrusted hops only; the PBX is
    // inside the trust domain and still learns who calls (it applies the privacy outside).
    let invite = alice
        .invite_with("5551234", "forged-2", &format!("Privacy: id\n{FORGED}"))
        .await;
    alice.authenticate(&invite, "secret").await;
    let at_pbx = pbx.next_of("INVITE").await;
    assert_eq!(
        named(&at_pbx, "P-Asserted-Identity"),
        ["\"1001 a\" <sip:1001@example.test>"]
    );
    assert_eq!(named(&at_pbx, "Privacy"), ["id"]);
    pbx.reply(&at_pbx, 486, "p").await;
    assert_eq!(alice.final_of("INVITE").await.status, 486);
}

#[tokio::test]
async fn rfc3325_a_users_call_from_a_foreign_domain_is_refused_and_reaches_nobody() {
    let (s, mut pbx, mut alice) = office().await;
    let mark = s.mark();
    for (call_id, from, reason) in [
        (
            "evil-1",
            "\"1001\" <sip:1001@evil.example>;tag=e1",
            "From domain is not ours",
        ),
        (
            "evil-2",
            "<sip:1001@example.test.evil.example>;tag=e2",
            "From domain is not ours",
        ),
        (
            "evil-3",
            "<sip:1002@example.test>;tag=e3",
            "calls may only be made as the authenticated user",
        ),
    ] {
        let invite = unsent_invite(&alice, call_id, from);
        alice.ua.send(&invite.to_bytes()).await;
        alice.authenticate(&invite, "secret").await;
        let r = alice.final_of("INVITE").await;
        assert_eq!(r.status, 403, "{from}: {}", r.reason);
        assert!(r.reason.contains(reason), "{from}: {}", r.reason);
    }
    s.assert_processed_then_silent(
        mark,
        6,
        async { pbx.ua.next_request_within(300).await.is_none() },
        "a refused call reached the PBX",
    )
    .await;
    // The same phone calling as itself (our domain in another case, RFC 3261 §19.1.4) goes
    // through: the refusals were the From's.
    let invite = unsent_invite(&alice, "good-1", "<sip:1001@EXAMPLE.test>;tag=g1");
    alice.ua.send(&invite.to_bytes()).await;
    alice.authenticate(&invite, "secret").await;
    let at_pbx = pbx.next_of("INVITE").await;
    assert_eq!(at_pbx.call_id().unwrap(), "good-1");
}

/// An INVITE from `phone` to 5551234 with this From, not sent.
fn unsent_invite(phone: &Phone, call_id: &str, from: &str) -> Request {
    let text = format!(
        "INVITE sip:5551234@example.test SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: <sip:5551234@example.test>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <{c}>\r\nContent-Length: 0\r\n\r\n",
        via = phone.via(),
        c = phone.contact(),
    );
    match busylamp::sip::parse::parse_message(text.as_bytes(), &Default::default()) {
        Ok(busylamp::sip::Message::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

/// Phone to phone: the callee (not trusted) sees who calls in P-Asserted-Identity, unless
/// the caller asked for `Privacy: id` (RFC 3325 §7): then it sees no asserted identity, and
/// nothing the caller forged either.
#[tokio::test]
async fn rfc3325_7_a_phone_sees_the_asserted_caller_unless_privacy_id_and_never_a_forgery() {
    let (_s, _pbx, mut alice) = office().await;
    let mut bob = Phone::new_at("127.0.0.4", alice.ua.server, "1002", "desk").await;
    bob.register_with_password("other").await;

    for (call_id, privacy, shown) in [
        ("p2p-1", "", vec!["\"1001 a\" <sip:1001@example.test>"]),
        ("p2p-2", "Privacy: id\n", vec![]),
    ] {
        let invite = alice
            .invite_with("1002", call_id, &format!("{privacy}{FORGED}"))
            .await;
        alice.authenticate(&invite, "secret").await;
        let at = bob.next_of("INVITE").await;
        assert_eq!(at.call_id().unwrap(), call_id);
        assert_eq!(named(&at, "P-Asserted-Identity"), shown, "{call_id}");
        for h in ["Remote-Party-ID", "P-Preferred-Identity", "Diversion"] {
            assert_eq!(named(&at, h), Vec::<&str>::new(), "{call_id}: {h}");
        }
        bob.reply(&at, 486, "b").await;
        assert_eq!(alice.final_of("INVITE").await.status, 486);
    }
}

/// What the trusted PBX says about a call stays: its identity headers reach the phone
/// (RFC 3325 §5: they come from inside the trust domain), except the asserted identity it
/// marked `Privacy: id`.
#[tokio::test]
async fn rfc3325_identity_headers_from_the_trusted_pbx_stay() {
    let (s, mut pbx, _alice) = office().await;
    let mut bob = Phone::new_at("127.0.0.4", s.udp, "1002", "desk").await;
    bob.register_with_password("other").await;
    let pbx_says = "P-Asserted-Identity: \"Carrier\" <sip:+15550100@example.test>
Remote-Party-ID: <sip:+15550100@example.test>;party=calling;screen=yes
Diversion: <sip:1003@example.test>;reason=no-answer";
    pbx.invite_with("1002", "from-pbx-1", pbx_says).await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(
        named(&at, "P-Asserted-Identity"),
        ["\"Carrier\" <sip:+15550100@example.test>"]
    );
    assert_eq!(named(&at, "Remote-Party-ID").len(), 1);
    assert_eq!(named(&at, "Diversion").len(), 1);
    bob.reply(&at, 486, "b").await;
    assert_eq!(pbx.final_of("INVITE").await.status, 486);

    pbx.invite_with("1002", "from-pbx-2", &format!("Privacy: id\n{pbx_says}"))
        .await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(named(&at, "P-Asserted-Identity"), Vec::<&str>::new());
    assert_eq!(named(&at, "Diversion").len(), 1);
    bob.reply(&at, 486, "b").await;
    assert_eq!(pbx.final_of("INVITE").await.status, 486);
}
