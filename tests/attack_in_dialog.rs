//! Issue 10, finding 1, as an attacker: requests inside a live call.
//!
//! Any user may watch a colleague's BLF, and the dialog package carries the call's Call-ID and
//! both tags (for pickup). Up to issue 10 the proxy relayed every request of a dialog its
//! tracker knew, from anyone, and followed any Route entry after ours: an outsider with the
//! ids re-INVITEd a phone's media away, REFERred it to a premium number, hung calls up, sent
//! MESSAGEs, and reached the PBX with our Via through an extra Route. Here the phones
//! register and call with digest (only the PBX on 127.0.0.3 is trusted, for calls), an
//! outsider socket that never authenticated knows every id, and each of its requests is
//! challenged while the phones and the PBX hear nothing; the parties themselves (their flows,
//! a phone re-registered from a new port, the PBX) still get through.

mod common;

use busylamp::sip::{HasHeaders, HeaderName, Request, Response};
use common::phone::{Leg, Phone};
use common::{server, TestServer};

fn password(user: &str) -> &'static str {
    match user {
        "1001" => "secret",
        "1002" => "other",
        "1003" => "third",
        _ => panic!("no such user {user}"),
    }
}

/// The media address an attacker would move a call to.
const ATTACK_SDP: &str = "v=0\r\no=- 9 9 IN IP4 127.0.0.66\r\ns=-\r\nc=IN IP4 127.0.0.66\r\nt=0 0\r\nm=audio 6666 RTP/AVP 0\r\na=sendrecv\r\n";

struct Office {
    s: TestServer,
    pbx: Phone,
    alice: Phone,
    bob: Phone,
    /// Never registered, never authenticated: only knows the ids BLF shows.
    mallory: Phone,
}

/// A server, the PBX, and alice (1001) and bob (1002) registered with digest.
async fn office() -> Office {
    let mut pbx = Phone::new_at("127.0.0.3", "127.0.0.1:9".parse().unwrap(), "pbx", "pbx").await;
    let s = server(&common::phone::office_config(pbx.ua.port())).await;
    pbx.ua.server = s.udp;
    let mut alice = Phone::new(s.udp, "1001", "a").await;
    register_with_digest(&mut alice).await;
    let mut bob = Phone::new(s.udp, "1002", "desk").await;
    register_with_digest(&mut bob).await;
    let mallory = Phone::new(s.udp, "1003", "mallory").await;
    Office {
        s,
        pbx,
        alice,
        bob,
        mallory,
    }
}

/// REGISTER, 401, REGISTER with digest: a phone where the server does not trust its address.
async fn register_with_digest(p: &mut Phone) {
    let port = p.ua.port();
    let call_id = format!("reg-{}-{port}", p.user);
    let contact = format!("Contact: <{}>", p.contact());
    let r =
        p.ua.request(&common::register(&p.user, port, &call_id, 1, &contact))
            .await;
    assert_eq!(r.status, 401, "{} {}", r.status, r.reason);
    let auth = common::authorization(
        r.headers.get(HeaderName::WwwAuthenticate).unwrap(),
        &p.user,
        password(&p.user),
        "REGISTER",
        "sip:example.test",
        1,
    );
    let extra = format!("{contact}\n        Authorization: {auth}");
    let r =
        p.ua.request(&common::register(&p.user, port, &call_id, 2, &extra))
            .await;
    assert_eq!(r.status, 200, "REGISTER of {}: {}", p.user, r.reason);
}

fn parse_request(bytes: &[u8]) -> Request {
    match busylamp::sip::parse_message(bytes, &busylamp::sip::Limits::default()) {
        Ok(busylamp::sip::Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

/// Sends `bytes` (a request) from `p` and returns its final response (matched by CSeq, so a
/// retransmitted answer to an earlier request is skipped).
async fn send_for_final(p: &mut Phone, bytes: &[u8]) -> Response {
    let req = parse_request(bytes);
    p.ua.send(bytes).await;
    final_to(p, &req).await
}

/// The final response to `req`, which `p` sent (matched by CSeq number and method).
async fn final_to(p: &mut Phone, req: &Request) -> Response {
    let want = req.cseq().unwrap();
    for _ in 0..50 {
        let r = p.ua.response().await;
        let c = r.cseq().unwrap();
        if c.seq == want.seq && c.method == want.method {
            return r;
        }
    }
    panic!("no final response to {} reached {}", req.method, p.name);
}

/// The ACK for a non-2xx final answer to `invite` (RFC 3261 §17.1.1.3: hop-by-hop, the
/// INVITE's branch), so the 407 stops being retransmitted.
fn ack_for(invite: &Request, resp: &Response) -> Vec<u8> {
    let h = |n| invite.headers.get(n).unwrap();
    format!(
        "ACK {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {f}\r\nTo: {t}\r\nCall-ID: {c}\r\nCSeq: {seq} ACK\r\nContent-Length: 0\r\n\r\n",
        uri = invite.uri,
        via = h(HeaderName::Via),
        f = h(HeaderName::From),
        t = resp.headers.get(HeaderName::To).unwrap(),
        c = h(HeaderName::CallId),
        seq = invite.cseq().unwrap().seq,
    )
    .into_bytes()
}

/// `first` (a request `p` sent) again after its `407` answer `r`: the `407` ACKed when
/// `first` is an INVITE, then a new branch, the next CSeq and digest credentials of `user`.
async fn retried_with_digest(p: &mut Phone, first: &Request, r: &Response, user: &str) -> Request {
    assert_eq!(
        r.status, 407,
        "challenge expected: {} {}",
        r.status, r.reason
    );
    if first.method == "INVITE" {
        p.ua.send(&ack_for(first, r)).await;
    }
    let auth = common::authorization(
        r.headers.get(HeaderName::ProxyAuthenticate).unwrap(),
        user,
        password(user),
        &first.method,
        &first.uri.to_string(),
        1,
    );
    let mut again = first.clone();
    let seq = first.cseq().unwrap().seq + 1;
    again
        .headers
        .set(HeaderName::CSeq, format!("{seq} {}", first.method));
    again.headers.set(HeaderName::Via, p.via());
    again.headers.push(HeaderName::ProxyAuthorization, auth);
    again
}

/// `bytes` (a request `p` sends) answered 407, then sent again with digest credentials of
/// `user`: the final response to the retry, and the retry.
async fn with_digest_as(p: &mut Phone, bytes: &[u8], user: &str) -> (Response, Request) {
    let first = parse_request(bytes);
    let r = send_for_final(p, bytes).await;
    let again = retried_with_digest(p, &first, &r, user).await;
    (send_for_final(p, &again.to_bytes()).await, again)
}

/// `p`'s INVITE to `to`, challenged and sent again with its digest (and header lines
/// `extra` after Max-Forwards): the INVITE it sent last, which the call is built from.
async fn invite_with_digest(p: &mut Phone, to: &str, call_id: &str, extra: &str) -> Request {
    let first = p.invite(to, call_id).await;
    let r = p.final_of("INVITE").await;
    let user = p.user.clone();
    let again = retried_with_digest(p, &first, &r, &user).await;
    let bytes = with_header(&again.to_bytes(), extra);
    p.ua.send(&bytes).await;
    parse_request(&bytes)
}

/// `bytes` with header lines `extra` ("Name: value\r\n" each) after Max-Forwards.
fn with_header(bytes: &[u8], extra: &str) -> Vec<u8> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .replacen(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\n{extra}"),
            1,
        )
        .into_bytes()
}

/// The final response to the authenticated INVITE of call `call_id` (CSeq 2).
async fn final_of_call(p: &mut Phone, call_id: &str) -> Response {
    loop {
        let r = p.final_for(call_id).await;
        let c = r.cseq().unwrap();
        if c.seq == 2 && c.method == "INVITE" {
            return r;
        }
    }
}

/// `caller` calls `to` with digest and `callee` answers with To tag `tag`: (the caller's
/// leg, the callee's leg), the ACK delivered.
async fn answered_by(
    caller: &mut Phone,
    callee: &mut Phone,
    to: &str,
    call_id: &str,
    tag: &str,
) -> (Leg, Leg) {
    let invite = invite_with_digest(caller, to, call_id, "").await;
    let at = callee.next_of("INVITE").await;
    callee.reply(&at, 200, tag).await;
    let ok = final_of_call(caller, call_id).await;
    assert_eq!(ok.status, 200);
    let mut caller_leg = Phone::caller_leg(&invite, &ok);
    caller_leg.cseq = 2;
    let ack = caller.in_dialog(&mut caller_leg, "ACK", None);
    caller.ua.send(&ack).await;
    callee.next_of("ACK").await;
    (caller_leg, Phone::callee_leg(&at, tag))
}

/// Alice calls bob with digest and bob answers: (alice's leg, bob's leg), ACK delivered.
async fn answered(o: &mut Office, call_id: &str) -> (Leg, Leg) {
    answered_by(&mut o.alice, &mut o.bob, "1002", call_id, "b").await
}

/// Alice calls bob with digest and bob rings with a to-tag: the INVITE alice sent, the one
/// bob got, and the early dialog's legs.
async fn ringing(o: &mut Office, call_id: &str) -> (Request, Request, Leg, Leg) {
    let invite = invite_with_digest(&mut o.alice, "1002", call_id, "").await;
    let at = o.bob.next_of("INVITE").await;
    o.bob.reply(&at, 180, "b").await;
    let ringing = loop {
        let r = o.alice.ua.any_response().await;
        if r.status == 180 {
            break r;
        }
    };
    let mut caller = Phone::caller_leg(&invite, &ringing);
    caller.cseq = 2;
    let callee = Phone::callee_leg(&at, "b");
    (invite, at, caller, callee)
}

/// What an outsider sends with the ids of one side of a dialog: a re-INVITE moving the media
/// to it, a REFER to a premium number, a MESSAGE, an INVITE with an extra Route naming the
/// PBX, a BYE. Each request from `from`'s socket, as the party `leg` belongs to.
fn outsider_requests(from: &Phone, leg: &Leg, pbx: &Phone) -> Vec<Vec<u8>> {
    let mut leg = leg.clone();
    let mut out = vec![from.in_dialog(&mut leg, "INVITE", Some(ATTACK_SDP))];
    out.push(with_header(
        &from.in_dialog(&mut leg, "REFER", None),
        "Refer-To: <sip:900555@example.test>\r\n",
    ));
    out.push(from.in_dialog(&mut leg, "MESSAGE", None));
    let mut via_pbx = leg.clone();
    via_pbx
        .route
        .push(format!("<sip:127.0.0.3:{};lr>", pbx.ua.port()));
    out.push(from.in_dialog(&mut via_pbx, "INVITE", Some(ATTACK_SDP)));
    leg.cseq = via_pbx.cseq;
    out.push(from.in_dialog(&mut leg, "BYE", None));
    out
}

/// Sends each request from the outsider; each is refused with a challenge (407) or 403,
/// and once the server has processed them neither phone nor the PBX has received anything.
async fn refused_and_unheard(o: &mut Office, requests: &[Vec<u8>]) {
    let mark = o.s.mark();
    for bytes in requests {
        let req = parse_request(bytes);
        let r = send_for_final(&mut o.mallory, bytes).await;
        assert!(
            r.status == 407 || r.status == 403,
            "{} from an outsider: {} {}",
            req.method,
            r.status,
            r.reason
        );
        if req.method == "INVITE" {
            o.mallory.ua.send(&ack_for(&req, &r)).await;
        }
    }
    o.s.assert_processed_then_silent(
        mark,
        requests.len() as u64,
        silent(&mut [&mut o.alice, &mut o.bob, &mut o.pbx]),
        "a request of the outsider reached a phone or the PBX",
    )
    .await;
}

/// Nobody in `phones` receives a request within 300 ms.
async fn silent(phones: &mut [&mut Phone]) -> bool {
    for p in phones.iter_mut() {
        if let Some(r) = p.ua.next_request_within(300).await {
            eprintln!("{} received {}", p.name, r.method);
            return false;
        }
    }
    true
}

#[tokio::test]
async fn an_outsider_with_a_calls_ids_cannot_reinvite_refer_message_route_or_bye() {
    let mut o = office().await;
    let (caller, callee) = answered(&mut o, "hijack-1").await;
    // As either party: the caller's side, then the callee's.
    for leg in [&caller, &callee] {
        let requests = outsider_requests(&o.mallory, leg, &o.pbx);
        refused_and_unheard(&mut o, &requests).await;
    }
    // The call is intact: its parties still talk.
    let mut leg = caller.clone();
    let bye = o.alice.in_dialog(&mut leg, "BYE", None);
    o.alice.ua.send(&bye).await;
    let at = o.bob.next_of("BYE").await;
    assert_eq!(at.call_id().unwrap(), "hijack-1");
}

#[tokio::test]
async fn an_outsider_with_the_ids_of_a_call_with_the_pbx_is_challenged_and_nobody_hears_it() {
    let mut o = office().await;
    // Alice calls out: the PBX answers.
    let (caller, callee) =
        answered_by(&mut o.alice, &mut o.pbx, "5551234", "pbx-hijack-1", "p").await;
    for leg in [&caller, &callee] {
        let requests = outsider_requests(&o.mallory, leg, &o.pbx);
        refused_and_unheard(&mut o, &requests).await;
    }
    // The end-to-end ACK of the confirmed dialog from the outsider: dropped and counted.
    let core = &o.s.handle.core;
    let dropped = core.acks_dropped();
    let mark = o.s.mark();
    let mut leg = callee.clone();
    leg.cseq = 2;
    let ack = o.mallory.in_dialog(&mut leg, "ACK", None);
    o.mallory.ua.send(&ack).await;
    o.s.assert_processed_then_silent(
        mark,
        1,
        silent(&mut [&mut o.alice, &mut o.pbx]),
        "the outsider's ACK was relayed",
    )
    .await;
    assert_eq!(o.s.handle.core.acks_dropped(), dropped + 1);
}

#[tokio::test]
async fn an_outsider_cannot_act_in_the_early_dialog_nor_cancel_the_call() {
    let mut o = office().await;
    let (invite, at, caller, callee) = ringing(&mut o, "early-1").await;
    for leg in [&caller, &callee] {
        let mut leg = leg.clone();
        let m = &o.mallory;
        let requests = vec![
            m.in_dialog(&mut leg, "UPDATE", Some(ATTACK_SDP)),
            m.in_dialog(&mut leg, "INVITE", Some(ATTACK_SDP)),
            m.in_dialog(&mut leg, "PRACK", None),
            m.in_dialog(&mut leg, "INFO", None),
            m.in_dialog(&mut leg, "BYE", None),
        ];
        refused_and_unheard(&mut o, &requests).await;
    }
    // The caller's CANCEL, sent by the outsider (RFC 3261 §9.1: it copies the INVITE's Via,
    // as someone who saw the INVITE would): it cancels nothing. Its 481 goes where the Via
    // says (alice's address).
    let mark = o.s.mark();
    o.mallory.ua.send(&Phone::cancel(&invite)).await;
    let r = o.alice.final_of("CANCEL").await;
    assert_eq!(r.status, 481, "{}", r.reason);
    o.s.assert_processed_then_silent(
        mark,
        1,
        silent(&mut [&mut o.bob, &mut o.pbx]),
        "the outsider's CANCEL reached the phone",
    )
    .await;
    // Still ringing: bob answers and alice gets the call.
    o.bob.reply(&at, 200, "b").await;
    assert_eq!(final_of_call(&mut o.alice, "early-1").await.status, 200);
}

#[tokio::test]
async fn a_colleague_who_authenticates_is_not_a_party_of_the_call() {
    let mut o = office().await;
    let (caller, _callee) = answered(&mut o, "colleague-1").await;
    let mut carol = Phone::new(o.s.udp, "1003", "carol").await;
    register_with_digest(&mut carol).await;
    let mark = o.s.mark();
    // As alice, in alice's name: refused (calls only as the authenticated user)...
    let mut leg = caller.clone();
    let reinvite = carol.in_dialog(&mut leg, "INVITE", Some(ATTACK_SDP));
    let (r, sent) = with_digest_as(&mut carol, &reinvite, "1003").await;
    assert_eq!(r.status, 403, "{}", r.reason);
    carol.ua.send(&ack_for(&sent, &r)).await;
    // ...and in carol's own name with alice's tag: not a party of this dialog.
    leg.local = leg.local.replace("1001", "1003");
    leg.cseq += 1;
    for method in ["INVITE", "REFER", "BYE"] {
        let body = (method == "INVITE").then_some(ATTACK_SDP);
        let req = carol.in_dialog(&mut leg, method, body);
        let (r, sent) = with_digest_as(&mut carol, &req, "1003").await;
        assert_eq!(r.status, 403, "{method}: {}", r.reason);
        assert!(
            r.reason.contains("Not a party of this dialog"),
            "{method}: {}",
            r.reason
        );
        if method == "INVITE" {
            carol.ua.send(&ack_for(&sent, &r)).await;
        }
        leg.cseq += 1;
    }
    o.s.assert_processed_then_silent(
        mark,
        8,
        silent(&mut [&mut o.alice, &mut o.bob, &mut o.pbx]),
        "a request of the colleague reached a phone or the PBX",
    )
    .await;
}

#[tokio::test]
async fn a_party_cannot_add_a_route_and_a_phone_cannot_preload_one() {
    let mut o = office().await;
    let (caller, _callee) = answered(&mut o, "route-1").await;
    let pbx_route = format!("<sip:127.0.0.3:{};lr>", o.pbx.ua.port());
    // Alice herself, from her own flow: the dialog's route set is ours alone.
    let mut leg = caller.clone();
    leg.route.push(pbx_route.clone());
    let mark = o.s.mark();
    let reinvite = o
        .alice
        .in_dialog(&mut leg, "INVITE", Some(common::phone::SDP));
    let r = send_for_final(&mut o.alice, &reinvite).await;
    assert_eq!(r.status, 403, "{}", r.reason);
    assert!(
        r.reason.contains("not in this dialog's route set"),
        "{}",
        r.reason
    );
    o.alice
        .ua
        .send(&ack_for(&parse_request(&reinvite), &r))
        .await;
    let message = o.alice.in_dialog(&mut leg, "MESSAGE", None);
    assert_eq!(send_for_final(&mut o.alice, &message).await.status, 403);
    // Nor does its ACK go there (an ACK cannot be refused: dropped and counted).
    let dropped = o.s.handle.core.acks_dropped();
    let ack = o.alice.in_dialog(&mut leg, "ACK", None);
    o.alice.ua.send(&ack).await;
    o.s.assert_processed_then_silent(
        mark,
        4,
        silent(&mut [&mut o.bob, &mut o.pbx]),
        "a request with an extra Route was relayed",
    )
    .await;
    assert_eq!(o.s.handle.core.acks_dropped(), dropped + 1);

    // A new call from a phone naming the PBX after us: the proxy decides where calls go.
    let ours = format!("<sip:{};lr>", o.s.udp);
    let mark = o.s.mark();
    let invite = invite_with_digest(
        &mut o.alice,
        "1002",
        "route-2",
        &format!("Route: {ours}, {pbx_route}\r\n"),
    )
    .await;
    let r = final_of_call(&mut o.alice, "route-2").await;
    assert_eq!(r.status, 403, "{}", r.reason);
    assert!(
        r.reason.contains("Route entries other than ours"),
        "{}",
        r.reason
    );
    o.alice.ua.send(&ack_for(&invite, &r)).await;
    o.s.assert_processed_then_silent(
        mark,
        3,
        silent(&mut [&mut o.bob, &mut o.pbx]),
        "a preloaded Route was followed",
    )
    .await;
}

#[tokio::test]
async fn the_parties_still_reinvite_refer_and_bye_from_their_flows_and_a_new_registration() {
    let mut o = office().await;
    let (mut caller, mut callee) = answered(&mut o, "party-1").await;
    // The caller's re-INVITE, from its flow.
    let reinvite = o
        .alice
        .in_dialog(&mut caller, "INVITE", Some(common::phone::SDP));
    o.alice.ua.send(&reinvite).await;
    let at = o.bob.next_of("INVITE").await;
    o.bob.reply(&at, 200, "b").await;
    let ok = final_to(&mut o.alice, &parse_request(&reinvite)).await;
    assert_eq!(ok.status, 200);
    let ack = o.alice.in_dialog(&mut caller, "ACK", None);
    o.alice.ua.send(&ack).await;
    o.bob.next_of("ACK").await;
    // The callee's REFER, from its flow.
    let refer = with_header(
        &o.bob.in_dialog(&mut callee, "REFER", None),
        "Refer-To: <sip:1003@example.test>\r\n",
    );
    o.bob.ua.send(&refer).await;
    let at = o.alice.next_of("REFER").await;
    o.alice.reply(&at, 202, "x").await;
    assert_eq!(o.bob.final_of("REFER").await.status, 202);
    // Bob's phone restarts on a new port and registers again: it can still hang up.
    let mut rebooted = Phone::new(o.s.udp, "1002", "desk-rebooted").await;
    register_with_digest(&mut rebooted).await;
    let bye = rebooted.in_dialog(&mut callee, "BYE", None);
    rebooted.ua.send(&bye).await;
    let at = o.alice.next_of("BYE").await;
    o.alice.reply(&at, 200, "x").await;
    assert_eq!(rebooted.final_of("BYE").await.status, 200);
}

#[tokio::test]
async fn the_pbx_still_reinvites_and_byes_in_its_calls_from_any_trusted_socket() {
    let mut o = office().await;
    // The PBX calls bob; bob answers.
    let invite = o.pbx.invite("1002", "from-pbx-1").await;
    let at = o.bob.next_of("INVITE").await;
    o.bob.reply(&at, 200, "b").await;
    let ok = o.pbx.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut pbx_leg = Phone::caller_leg(&invite, &ok);
    let ack = o.pbx.in_dialog(&mut pbx_leg, "ACK", None);
    o.pbx.ua.send(&ack).await;
    o.bob.next_of("ACK").await;
    // A re-INVITE from the PBX's own socket.
    let reinvite = o
        .pbx
        .in_dialog(&mut pbx_leg, "INVITE", Some(common::phone::SDP));
    o.pbx.ua.send(&reinvite).await;
    let at = o.bob.next_of("INVITE").await;
    o.bob.reply(&at, 200, "b").await;
    assert_eq!(o.pbx.final_of("INVITE").await.status, 200);
    // The PBX hangs up from another of its sockets (trusted for calls, as its side is).
    let mut pbx2 = Phone::new_at("127.0.0.3", o.s.udp, "pbx", "pbx2").await;
    let bye = pbx2.in_dialog(&mut pbx_leg, "BYE", None);
    pbx2.ua.send(&bye).await;
    let at = o.bob.next_of("BYE").await;
    o.bob.reply(&at, 200, "b").await;
    assert_eq!(pbx2.final_of("BYE").await.status, 200);
}
