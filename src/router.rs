//! Decides which service owns a new request, and the default answers (416, 420, 405, 501,
//! OPTIONS) that need no service. Holds no state.

use crate::sip::message::default_reason;
use crate::sip::{HeaderName, Request, Uri};

/// Methods this server answers itself; listed in Allow.
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, UPDATE, INFO, PRACK, MESSAGE, REFER";

/// Methods of RFC 3261 and its extensions that we know but do not serve (yet): 405, not 501.
const KNOWN: &[&str] = &[
    "INVITE", "BYE", "NOTIFY", "MESSAGE", "INFO", "REFER", "UPDATE", "PRACK",
];

/// Option tags we support (RFC 3261 §8.2.2.3, §19.2).
pub const SUPPORTED: &[&str] = &["path"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Register,
    Options,
    /// ACK that matched no transaction (an ACK for a 2xx we never sent): absorbed silently.
    Ack,
    Cancel,
    /// RFC 6665 SUBSCRIBE: the presence server.
    Subscribe,
    /// RFC 3903 PUBLISH: the presence server.
    Publish,
    /// RFC 6665 NOTIFY: the presence client's subscriptions (481 when not ours).
    Notify,
    /// Answer at once with this status, reason and extra headers.
    Reply(u16, String, Vec<(HeaderName, String)>),
}

pub fn route(req: &Request) -> Route {
    if !matches!(&req.uri, Uri::Sip(_)) {
        // RFC 3261 §8.2.2.1 / RFC 4475 §3.3.1 "unkscm".
        return Route::Reply(
            416,
            format!("Unsupported URI Scheme {}", req.uri.scheme()),
            vec![],
        );
    }
    match req.method.as_str() {
        "ACK" => return Route::Ack,
        "CANCEL" => return Route::Cancel,
        "REGISTER" => return Route::Register,
        _ => {}
    }
    // §8.2.2.3: a Require we do not understand gets 420 with Unsupported (not for ACK/CANCEL;
    // the registrar checks its own).
    let unsupported: Vec<&str> = req
        .headers
        .list(HeaderName::Require)
        .into_iter()
        .filter(|t| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    if !unsupported.is_empty() {
        return Route::Reply(
            420,
            default_reason(420).into(),
            vec![(HeaderName::Unsupported, unsupported.join(", "))],
        );
    }
    match req.method.as_str() {
        "OPTIONS" => Route::Options,
        "SUBSCRIBE" => Route::Subscribe,
        "PUBLISH" => Route::Publish,
        "NOTIFY" => Route::Notify,
        m if KNOWN.contains(&m) => Route::Reply(
            405,
            default_reason(405).into(),
            vec![(HeaderName::Allow, ALLOW.into())],
        ),
        m => Route::Reply(
            501,
            format!("Not Implemented: method {m}"),
            vec![(HeaderName::Allow, ALLOW.into())],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse::{parse_message, Limits};
    use crate::sip::Message;

    fn req(method: &str, uri: &str, extra: &str) -> Request {
        let m = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse_message(m.as_bytes(), &Limits::default()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rfc3261_8_2_2_default_answers() {
        assert_eq!(route(&req("REGISTER", "sip:x", "")), Route::Register);
        assert_eq!(route(&req("OPTIONS", "sip:x", "")), Route::Options);
        assert!(matches!(
            route(&req("OPTIONS", "nobarr.url:x", "")),
            Route::Reply(416, _, _)
        ));
        assert!(matches!(
            route(&req("INVITE", "sip:x", "")),
            Route::Reply(405, _, _)
        ));
        assert!(matches!(
            route(&req("NEWMETHOD", "sip:x", "")),
            Route::Reply(501, _, _)
        ));
        match route(&req(
            "OPTIONS",
            "sip:x",
            "Require: nothingSupported, path\r\n",
        )) {
            Route::Reply(420, _, h) => assert_eq!(h[0].1, "nothingSupported"),
            other => panic!("{other:?}"),
        }
    }
}
