//! A raw-bytes desk phone for call tests: registers, calls, rings, answers, holds and hangs
//! up through the proxy, keeping the dialog's route set the way RFC 3261 §12 says.

#![allow(dead_code)]

use super::ua::Ua;
use super::{branch, wire};
use busylamp::sip::{HasHeaders, HeaderName, Request, Response};
use std::net::SocketAddr;

pub struct Phone {
    pub ua: Ua,
    pub user: String,
    /// Distinguishes two phones of one user.
    pub name: String,
}

/// One side's view of a dialog, enough to send in-dialog requests.
#[derive(Debug, Clone)]
pub struct Leg {
    pub call_id: String,
    /// Our From (as UAC) or To (as UAS) value, with our tag.
    pub local: String,
    pub remote: String,
    pub remote_target: String,
    /// Route headers for our in-dialog requests (RFC 3261 §12.1).
    pub route: Vec<String>,
    pub cseq: u32,
}

/// An office whose phones (on 127.0.0.0/8, trusted for calls, REGISTER, SUBSCRIBE and
/// PUBLISH) call each other without digest: users 1001, 1002 and 1003; presence changes are
/// notified at once.
pub const CALLS: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
coalesce_ms = 0
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
[[users]]
name = "1003"
password = "third"
"#;

pub const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n";

impl Phone {
    pub async fn new(server: SocketAddr, user: &str, name: &str) -> Phone {
        Phone {
            ua: Ua::new(server).await,
            user: user.into(),
            name: name.into(),
        }
    }

    /// A phone on another loopback address.
    pub async fn new_at(ip: &str, server: SocketAddr, user: &str, name: &str) -> Phone {
        Phone {
            ua: Ua::bind(ip, server).await,
            user: user.into(),
            name: name.into(),
        }
    }

    /// A phone that talks to the server's TCP socket `server` over one connection.
    pub async fn new_tcp(server: SocketAddr, user: &str, name: &str) -> Phone {
        Phone {
            ua: Ua::tcp(server).await,
            user: user.into(),
            name: name.into(),
        }
    }

    /// A phone on 127.0.0.1, registered.
    pub async fn registered(server: SocketAddr, user: &str, name: &str) -> Phone {
        let mut p = Phone::new(server, user, name).await;
        p.register().await;
        p
    }

    pub fn ip(&self) -> String {
        self.ua.local_addr().ip().to_string()
    }

    pub fn contact(&self) -> String {
        let transport = match self.ua.transport() {
            "TCP" => ";transport=tcp",
            _ => "",
        };
        format!(
            "sip:{}@{}:{}{transport}",
            self.user,
            self.ip(),
            self.ua.port()
        )
    }

    /// Our top Via with a fresh branch.
    pub fn via(&self) -> String {
        format!(
            "SIP/2.0/{} {}:{};branch={}",
            self.ua.transport(),
            self.ip(),
            self.ua.port(),
            branch()
        )
    }

    /// Registers this phone's contact (the server must trust 127.0.0.1 for `register`).
    pub async fn register(&mut self) {
        let contact = format!("<{}>", self.contact());
        self.register_contact(&contact).await;
    }

    /// Registers the Contact value `contact` (any URI, not necessarily ours, with
    /// parameters such as `q`) from this phone's address.
    pub async fn register_contact(&mut self, contact: &str) {
        let r = self
            .ua
            .request(&self.register_request(contact, 1, ""))
            .await;
        assert_eq!(r.status, 200, "REGISTER of {}: {}", self.user, r.reason);
    }

    /// Registers this phone's contact the way a phone does where the server challenges:
    /// REGISTER, `401`, the same REGISTER with digest credentials for `password`.
    pub async fn register_with_password(&mut self, password: &str) {
        let contact = format!("<{}>", self.contact());
        let r = self
            .ua
            .request(&self.register_request(&contact, 1, ""))
            .await;
        assert_eq!(r.status, 401, "REGISTER of {}: {}", self.user, r.reason);
        let challenge = r
            .headers
            .get(HeaderName::WwwAuthenticate)
            .expect("WWW-Authenticate");
        let auth = super::authorization(
            challenge,
            &self.user,
            password,
            "REGISTER",
            "sip:example.test",
            1,
        );
        let r = self
            .ua
            .request(&self.register_request(&contact, 2, &format!("Authorization: {auth}")))
            .await;
        assert_eq!(r.status, 200, "REGISTER of {}: {}", self.user, r.reason);
    }

    /// A REGISTER of `contact` for this phone's user from its address (`extra`: more header
    /// lines).
    pub fn register_request(&self, contact: &str, cseq: u32, extra: &str) -> Vec<u8> {
        wire(&format!(
            "REGISTER sip:example.test SIP/2.0
            Via: {via}
            Max-Forwards: 70
            From: <sip:{u}@example.test>;tag=r{n}
            To: <sip:{u}@example.test>
            Call-ID: reg-{u}-{n}
            CSeq: {cseq} REGISTER
            Contact: {c}
            Expires: 3600
            {extra}
            ",
            via = self.via(),
            u = self.user,
            n = self.name,
            c = contact
        ))
    }

    /// Sends an INVITE to `to_user` and returns the caller's leg (without the remote tag
    /// and target yet: see [`Phone::established`]).
    pub async fn invite(&mut self, to_user: &str, call_id: &str) -> Request {
        self.invite_with(to_user, call_id, "").await
    }

    /// [`Phone::invite`] with extra header lines (`"Name: value\n"` each).
    pub async fn invite_with(&mut self, to_user: &str, call_id: &str, extra: &str) -> Request {
        let extra = extra.trim_end();
        let text = format!(
            "INVITE sip:{to}@example.test SIP/2.0
            Via: {via}
            Max-Forwards: 70
            From: \"{u} {n}\" <sip:{u}@example.test>;tag=from-{call_id}
            To: \"Ext {to}\" <sip:{to}@example.test>
            Call-ID: {call_id}
            CSeq: 1 INVITE
            Contact: <{c}>
            {extra}
            Content-Type: application/sdp
            ",
            to = to_user,
            via = self.via(),
            u = self.user,
            n = self.name,
            c = self.contact(),
        );
        let mut bytes = wire(&text);
        // wire() ends the headers; append the SDP with the right Content-Length.
        let head = String::from_utf8(bytes.clone()).unwrap();
        let head = head.replace(
            "Content-Length: 0\r\n",
            &format!("Content-Length: {}\r\n", SDP.len()),
        );
        bytes = format!("{head}{SDP}").into_bytes();
        self.ua.send(&bytes).await;
        match busylamp::sip::parse::parse_message(&bytes, &Default::default()) {
            Ok(busylamp::sip::Message::Request(r)) => r,
            other => panic!("bad INVITE built: {other:?}"),
        }
    }

    /// Answers the proxy's 407 to `invite` (RFC 3261 §22.3): the same INVITE again with a
    /// new branch, the next CSeq and `Proxy-Authorization` for this phone's user. Returns
    /// the INVITE sent (the one a dialog is built from).
    pub async fn authenticate(&mut self, invite: &Request, password: &str) -> Request {
        let r = self.final_of("INVITE").await;
        assert_eq!(
            r.status, 407,
            "challenge expected: {} {}",
            r.status, r.reason
        );
        let auth = super::authorization(
            r.headers.get(HeaderName::ProxyAuthenticate).unwrap(),
            &self.user,
            password,
            "INVITE",
            &invite.uri.to_string(),
            1,
        );
        let mut again = invite.clone();
        let cseq = invite.cseq().unwrap().seq + 1;
        again
            .headers
            .set(HeaderName::CSeq, format!("{cseq} INVITE"));
        again.headers.set(HeaderName::Via, self.via());
        again.headers.push(HeaderName::ProxyAuthorization, auth);
        self.ua.send(&again.to_bytes()).await;
        again
    }

    /// The caller's ACK for the 2xx `ok` to `invite` (the INVITE as sent, its CSeq too),
    /// seen reaching `callee`; returns the caller's leg for what follows.
    pub async fn ack(&mut self, callee: &mut Phone, invite: &Request, ok: &Response) -> Leg {
        let mut leg = Phone::caller_leg(invite, ok);
        leg.cseq = invite.cseq().unwrap().seq;
        self.ua.send(&self.in_dialog(&mut leg, "ACK", None)).await;
        callee.next_of("ACK").await;
        leg
    }

    /// A BYE from this phone on `leg`, answered `200` by `callee` (its To tag `tag`).
    pub async fn hang_up(&mut self, callee: &mut Phone, leg: &mut Leg, tag: &str) {
        self.ua.send(&self.in_dialog(leg, "BYE", None)).await;
        let bye = callee.next_of("BYE").await;
        callee.reply(&bye, 200, tag).await;
        assert_eq!(self.final_of("BYE").await.status, 200);
    }

    /// The next request of `method` that reaches this phone (others skipped).
    pub async fn next_of(&mut self, method: &str) -> Request {
        self.next_of_within(method, 5000).await
    }

    /// The next request of `method` within `ms` of (paused) time, others skipped.
    pub async fn next_of_within(&mut self, method: &str, ms: u64) -> Request {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self
                .ua
                .next_request_within(left.as_millis() as u64)
                .await
                .unwrap_or_else(|| panic!("no {method} reached {} within {ms} ms", self.name));
            if r.method == method {
                return r;
            }
        }
    }

    /// The next final response to a `method` request (others skipped).
    pub async fn final_of(&mut self, method: &str) -> Response {
        for _ in 0..50 {
            let r = self.ua.response().await;
            if r.cseq().is_ok_and(|c| c.method == method) {
                return r;
            }
        }
        panic!("no final response to {method} reached {}", self.name);
    }

    /// The next final response of call `call_id` (others skipped).
    pub async fn final_for(&mut self, call_id: &str) -> Response {
        for _ in 0..50 {
            let r = self.ua.response().await;
            if r.call_id().is_ok_and(|c| c == call_id) {
                return r;
            }
        }
        panic!("no final response for {call_id} reached {}", self.name);
    }

    /// Answers a request the proxy delivered, as a UAS: `tag` for the To tag, our Contact
    /// and the Record-Route copied (RFC 3261 §12.1.1), an SDP answer on 2xx to INVITE.
    pub async fn reply(&mut self, req: &Request, status: u16, tag: &str) {
        let mut r = req.response(status, "Whatever", Some(tag));
        if status > 100 {
            for rr in req.headers.all(HeaderName::RecordRoute) {
                r.headers.push(HeaderName::RecordRoute, rr.to_string());
            }
            if status < 300 || (101..200).contains(&status) {
                r.headers
                    .push(HeaderName::Contact, format!("<{}>", self.contact()));
            }
        }
        if (200..300).contains(&status) && req.method == "INVITE" {
            r.headers.push(HeaderName::ContentType, "application/sdp");
            r.body = SDP.as_bytes().to_vec();
        }
        self.ua.send(&r.to_bytes()).await;
    }

    /// A CANCEL for `invite` (RFC 3261 §9.1: its Via, Request-URI, Call-ID, From, To and
    /// CSeq number).
    pub fn cancel(invite: &Request) -> Vec<u8> {
        let h = |n| invite.headers.get(n).unwrap();
        format!(
            "CANCEL {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {f}\r\nTo: {t}\r\nCall-ID: {c}\r\nCSeq: {seq} CANCEL\r\nContent-Length: 0\r\n\r\n",
            uri = invite.uri,
            via = h(HeaderName::Via),
            f = h(HeaderName::From),
            t = h(HeaderName::To),
            c = h(HeaderName::CallId),
            seq = invite.cseq().unwrap().seq,
        )
        .into_bytes()
    }

    /// The caller's leg once the 2xx arrived.
    pub fn caller_leg(invite: &Request, ok: &Response) -> Leg {
        let mut route: Vec<String> = ok
            .headers
            .list(HeaderName::RecordRoute)
            .into_iter()
            .map(str::to_string)
            .collect();
        route.reverse();
        Leg {
            call_id: invite.call_id().unwrap().to_string(),
            local: invite.headers.get(HeaderName::From).unwrap().to_string(),
            remote: ok.headers.get(HeaderName::To).unwrap().to_string(),
            remote_target: contact_uri(ok.headers.get(HeaderName::Contact).unwrap()),
            route,
            cseq: 1,
        }
    }

    /// The callee's leg for an INVITE it answered with `tag`.
    pub fn callee_leg(invite: &Request, tag: &str) -> Leg {
        Leg {
            call_id: invite.call_id().unwrap().to_string(),
            local: format!("{};tag={tag}", invite.headers.get(HeaderName::To).unwrap()),
            remote: invite.headers.get(HeaderName::From).unwrap().to_string(),
            remote_target: contact_uri(invite.headers.get(HeaderName::Contact).unwrap()),
            route: invite
                .headers
                .list(HeaderName::RecordRoute)
                .into_iter()
                .map(str::to_string)
                .collect(),
            cseq: 100,
        }
    }

    /// An in-dialog request (ACK shares the INVITE's CSeq number).
    pub fn in_dialog(&self, leg: &mut Leg, method: &str, body: Option<&str>) -> Vec<u8> {
        if method != "ACK" {
            leg.cseq += 1;
        }
        let routes: String = leg
            .route
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        let (ct, body) = match body {
            Some(b) => (
                "Content-Type: application/sdp\r\n".to_string(),
                b.to_string(),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "{method} {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n{routes}From: {local}\r\nTo: {remote}\r\nCall-ID: {cid}\r\nCSeq: {seq} {method}\r\nContact: <{c}>\r\n{ct}Content-Length: {len}\r\n\r\n{body}",
            target = leg.remote_target,
            via = self.via(),
            local = leg.local,
            remote = leg.remote,
            cid = leg.call_id,
            seq = leg.cseq,
            c = self.contact(),
            len = body.len(),
        )
        .into_bytes()
    }
}

/// The URI inside a Contact value.
/// An office: phones 1001, 1002, 1003 (passwords secret, other, third) on 127.0.0.1 are
/// challenged; the PBX on 127.0.0.3 at `pbx_port` is the upstream, trusted for calls only.
pub fn office_config(pbx_port: u16) -> String {
    format!(
        r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.3"]
trusted_for = ["calls"]
[proxy]
upstream = "sip:127.0.0.3:{pbx_port}"
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
[[users]]
name = "1003"
password = "third"
"#
    )
}

pub fn contact_uri(v: &str) -> String {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) => v[a + 1..b].to_string(),
        _ => v.split(';').next().unwrap_or(v).trim().to_string(),
    }
}
