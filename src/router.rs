//! Decides which service owns a new request (the proxy, the registrar, the presence server
//! or client), and the default answers (416, 420, 501, OPTIONS) that need no service. Decided
//! here once, for every request the transaction layer lets through. Holds no state.

use crate::sip::message::default_reason;
use crate::sip::{HeaderName, Request, SipUri, Uri};

/// Methods this server answers itself; listed in Allow.
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, UPDATE, INFO, PRACK, MESSAGE, REFER";

/// Methods the proxy forwards whatever they name: calls and what happens in them. (ACK never
/// opens a transaction: one no transaction absorbed is the proxy's too, §16.11.)
const PROXIED: &[&str] = &[
    "INVITE", "ACK", "BYE", "UPDATE", "INFO", "PRACK", "MESSAGE", "REFER",
];

/// Option tags we support (RFC 3261 §8.2.2.3, §19.2).
pub const SUPPORTED: &[&str] = &["path"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The proxy forwards it (RFC 3261 §16).
    Proxy,
    /// CANCEL (RFC 3261 §9.2, §16.10): the proxy cancels the INVITE it matches, 481 if none.
    Cancel,
    /// One of our own services, or a default answer.
    Local(Local),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Register,
    Options,
    /// RFC 6665 SUBSCRIBE: the presence server.
    Subscribe,
    /// RFC 3903 PUBLISH: the presence server.
    Publish,
    /// RFC 6665 NOTIFY: the presence client's subscriptions (481 when not ours).
    Notify,
    /// Answer at once with this status, reason and extra headers.
    Reply(u16, String, Vec<(HeaderName, String)>),
}

/// Who owns `req`: `in_dialog` whether it carries a To tag, `names_us` whether a URI (without
/// its user part) is one of ours.
pub fn route(req: &Request, in_dialog: bool, names_us: impl Fn(&SipUri) -> bool) -> Route {
    let method = req.method.as_str();
    if method == "CANCEL" {
        return Route::Cancel;
    }
    if PROXIED.contains(&method) || is_relayed_between_phones(req, in_dialog, names_us) {
        return Route::Proxy;
    }
    Route::Local(local(req))
}

/// In-dialog OPTIONS/NOTIFY between phones, record-routed through us: addressed to a phone's
/// contact. The NOTIFYs of our own subscriptions (the presence client) are addressed to our
/// Contact, whatever Route they carry.
fn is_relayed_between_phones(
    req: &Request,
    in_dialog: bool,
    names_us: impl Fn(&SipUri) -> bool,
) -> bool {
    matches!(req.method.as_str(), "OPTIONS" | "NOTIFY")
        && in_dialog
        && req.headers.has(HeaderName::Route)
        && !req.uri.as_sip().is_some_and(|u| {
            let mut host_only = u.clone();
            host_only.user = None;
            names_us(&host_only)
        })
}

fn local(req: &Request) -> Local {
    if !matches!(&req.uri, Uri::Sip(_)) {
        // RFC 3261 §8.2.2.1 / RFC 4475 §3.3.1 "unkscm".
        return Local::Reply(
            416,
            format!("Unsupported URI Scheme {}", req.uri.scheme()),
            vec![],
        );
    }
    if req.method == "REGISTER" {
        return Local::Register;
    }
    // §8.2.2.3: a Require we do not understand gets 420 with Unsupported (the registrar
    // checks its own).
    let unsupported: Vec<&str> = req
        .headers
        .list(HeaderName::Require)
        .into_iter()
        .filter(|t| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    if !unsupported.is_empty() {
        return Local::Reply(
            420,
            default_reason(420).into(),
            vec![(HeaderName::Unsupported, unsupported.join(", "))],
        );
    }
    match req.method.as_str() {
        "OPTIONS" => Local::Options,
        "SUBSCRIBE" => Local::Subscribe,
        "PUBLISH" => Local::Publish,
        "NOTIFY" => Local::Notify,
        m => Local::Reply(
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

    fn ours(u: &SipUri) -> bool {
        u.host.to_string() == "proxy.test"
    }

    fn local_route(r: &Request) -> Local {
        match route(r, false, ours) {
            Route::Local(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc3261_8_2_2_default_answers() {
        assert_eq!(local_route(&req("REGISTER", "sip:x", "")), Local::Register);
        assert_eq!(local_route(&req("OPTIONS", "sip:x", "")), Local::Options);
        assert!(matches!(
            local_route(&req("OPTIONS", "nobarr.url:x", "")),
            Local::Reply(416, _, _)
        ));
        assert!(matches!(
            local_route(&req("NEWMETHOD", "sip:x", "")),
            Local::Reply(501, _, _)
        ));
        match local_route(&req(
            "OPTIONS",
            "sip:x",
            "Require: nothingSupported, path\r\n",
        )) {
            Local::Reply(420, _, h) => assert_eq!(h[0].1, "nothingSupported"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc3261_16_calls_and_what_happens_in_them_belong_to_the_proxy() {
        for m in [
            "INVITE", "ACK", "BYE", "UPDATE", "INFO", "PRACK", "MESSAGE", "REFER",
        ] {
            assert_eq!(
                route(&req(m, "sip:1002@x", ""), false, ours),
                Route::Proxy,
                "{m}"
            );
        }
        // Whatever they name: a tel: INVITE is the PBX's business, the proxy decides.
        assert_eq!(
            route(&req("INVITE", "tel:+1555", ""), false, ours),
            Route::Proxy
        );
        assert_eq!(
            route(&req("CANCEL", "sip:1002@x", ""), false, ours),
            Route::Cancel
        );
    }

    #[test]
    fn rfc3261_16_in_dialog_options_and_notify_between_phones_are_relayed() {
        let route_hdr = "Route: <sip:proxy.test;lr>\r\n";
        let to_phone = req("NOTIFY", "sip:1002@192.0.2.9", route_hdr);
        assert_eq!(route(&to_phone, true, ours), Route::Proxy);
        let to_phone = req("OPTIONS", "sip:1002@192.0.2.9", route_hdr);
        assert_eq!(route(&to_phone, true, ours), Route::Proxy);
        // To our own Contact (the presence client's subscription): ours, whatever the Route.
        let to_us = req("NOTIFY", "sip:pua@proxy.test", route_hdr);
        assert_eq!(route(&to_us, true, ours), Route::Local(Local::Notify));
        // Outside a dialog, or without a Route: ours.
        assert_eq!(route(&to_phone, false, ours), Route::Local(Local::Options));
        let no_route = req("NOTIFY", "sip:1002@192.0.2.9", "");
        assert_eq!(route(&no_route, true, ours), Route::Local(Local::Notify));
    }
}
