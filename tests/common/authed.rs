//! A user agent that authenticates its SUBSCRIBEs and PUBLISHes with digest, as a phone does:
//! one challenge, then every request answers it with the next nonce count.

#![allow(dead_code)]

use super::ua::Ua;
use super::{authorization, branch, wire};
use busylamp::sip::{HeaderName, Response};
use std::net::SocketAddr;

pub struct Authed {
    pub ua: Ua,
    pub user: String,
    password: String,
    challenge: Option<String>,
    nc: u32,
}

impl Authed {
    pub async fn new(server: SocketAddr, user: &str, password: &str) -> Authed {
        Authed::with(Ua::new(server).await, user, password)
    }

    pub fn with(ua: Ua, user: &str, password: &str) -> Authed {
        Authed {
            ua,
            user: user.into(),
            password: password.into(),
            challenge: None,
            nc: 0,
        }
    }

    /// Sends the request `make(auth_header_line)` builds (its Request-URI `uri`), answering
    /// the server's challenge; returns the final response.
    pub async fn request(
        &mut self,
        method: &str,
        uri: &str,
        make: impl Fn(&str) -> Vec<u8>,
    ) -> Response {
        for _ in 0..2 {
            let auth = match &self.challenge {
                Some(ch) => {
                    self.nc += 1;
                    format!(
                        "Authorization: {}",
                        authorization(ch, &self.user, &self.password, method, uri, self.nc)
                    )
                }
                None => String::new(),
            };
            let r = self.ua.request(&make(&auth)).await;
            if r.status != 401 {
                return r;
            }
            self.challenge = Some(
                r.headers
                    .get(HeaderName::WwwAuthenticate)
                    .expect("a challenge")
                    .to_string(),
            );
            self.nc = 0;
        }
        panic!("{} {uri}: still challenged after answering", method);
    }

    /// A new subscription of this user to `presentity`'s `event` (Call-ID `call_id`), with
    /// `extra` header lines (e.g. a Record-Route); the final response.
    pub async fn subscribe(
        &mut self,
        presentity: &str,
        event: &str,
        call_id: &str,
        extra: &str,
    ) -> Response {
        let uri = format!("sip:{presentity}@example.test");
        let port = self.ua.port();
        let user = self.user.clone();
        let via = self.ua.transport();
        let param = if via == "TCP" { ";transport=tcp" } else { "" };
        self.request("SUBSCRIBE", &uri.clone(), |auth| {
            wire(&format!(
                "SUBSCRIBE {uri} SIP/2.0
                Via: SIP/2.0/{via} 127.0.0.1:{port};branch={b}
                Max-Forwards: 70
                From: <sip:{user}@example.test>;tag=t-{call_id}
                To: <{uri}>
                Call-ID: {call_id}
                CSeq: 1 SUBSCRIBE
                Contact: <sip:{user}@127.0.0.1:{port}{param}>
                Event: {event}
                Expires: 3600
                {extra}
                {auth}
                ",
                b = branch()
            ))
        })
        .await
    }

    /// An initial PUBLISH of this user's presence (a new publication each time).
    pub async fn publish(&mut self, call_id: &str) -> Response {
        let uri = format!("sip:{}@example.test", self.user);
        let port = self.ua.port();
        let body = format!(
            "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{uri}\"><tuple id=\"t\"><status><basic>open</basic></status></tuple></presence>"
        );
        self.request("PUBLISH", &uri.clone(), |auth| {
            wire(&format!(
                "PUBLISH {uri} SIP/2.0
                Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
                Max-Forwards: 70
                From: <{uri}>;tag=p-{call_id}
                To: <{uri}>
                Call-ID: {call_id}
                CSeq: 1 PUBLISH
                Event: presence
                Expires: 3600
                Content-Type: application/pidf+xml
                {auth}

{body}",
                b = branch()
            ))
        })
        .await
    }

    /// Removes the publication whose entity-tag is `etag`.
    pub async fn unpublish(&mut self, call_id: &str, etag: &str) -> Response {
        let uri = format!("sip:{}@example.test", self.user);
        let port = self.ua.port();
        self.request("PUBLISH", &uri.clone(), |auth| {
            wire(&format!(
                "PUBLISH {uri} SIP/2.0
                Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
                Max-Forwards: 70
                From: <{uri}>;tag=p-{call_id}
                To: <{uri}>
                Call-ID: {call_id}
                CSeq: 2 PUBLISH
                Event: presence
                Expires: 0
                SIP-If-Match: {etag}
                {auth}
                ",
                b = branch()
            ))
        })
        .await
    }
}
