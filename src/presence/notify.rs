//! Building NOTIFY requests (RFC 6665 §4.2.2, RFC 3261 §12.2.1.1): pure, from a
//! subscription record and a rendered body.

use super::event::{EventHeader, Pkg};
use super::package::Rendered;
use crate::sip::{HeaderName, Headers, NameAddr, Request, Uri};
use crate::storage::SubscriptionRecord;

/// The Subscription-State a NOTIFY carries (RFC 6665 §8.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionState {
    Active { expires: u64 },
    Pending { expires: u64 },
    Terminated { reason: &'static str },
}

impl SubscriptionState {
    pub fn header(&self) -> String {
        match self {
            SubscriptionState::Active { expires } => format!("active;expires={expires}"),
            SubscriptionState::Pending { expires } => format!("pending;expires={expires}"),
            SubscriptionState::Terminated { reason } => format!("terminated;reason={reason}"),
        }
    }
}

/// The parts of a NOTIFY that are ours rather than the subscription's.
pub struct NotifyParts<'a> {
    /// The dialog's remote target, parsed once per subscription (RFC 3261 §12.2.1.1; the
    /// route set goes in Route headers: loose routing).
    pub request_uri: &'a Uri,
    /// `host:port` of our Via.
    pub via_sent_by: &'a str,
    pub transport: &'static str,
    pub branch: &'a str,
    pub state: SubscriptionState,
    /// `None` for a pending subscription or a final NOTIFY without state.
    pub body: Option<&'a Rendered>,
    pub server_header: &'a str,
}

/// The subscription dialog's side of its NOTIFYs (RFC 3261 §12.2.1.1) that never changes
/// over its life: its header values and the Accept its bodies are rendered for, printed once
/// when the subscription is made (or restored) and shared (`Arc`) with each NOTIFY decided
/// under the shard lock. Deciding a fan-out's thousand NOTIFYs then counts a reference per
/// watcher instead of copying six strings, and the copies are made by whoever builds the
/// requests, with no lock held.
#[derive(Debug)]
pub struct DialogHead {
    route_set: Vec<String>,
    /// `From`: the SUBSCRIBE's To with our tag.
    from: String,
    /// `To`: the SUBSCRIBE's From with the watcher's tag.
    to: String,
    call_id: String,
    /// Our Contact, in angle brackets.
    contact: String,
    event_id: Option<String>,
    /// The SUBSCRIBE's Accept, the view its bodies are rendered for (also fixed).
    accept: Vec<String>,
}

impl DialogHead {
    /// The dialog of `sub` (its identifiers, route set and our Contact are fixed when it is
    /// made: a refresh changes only the remote target, which [`NotifyParts`] carries).
    pub fn of(sub: &SubscriptionRecord) -> DialogHead {
        DialogHead {
            route_set: sub.route_set.clone(),
            from: concat(&[&sub.presentity_header, ";tag=", &sub.local_tag]),
            to: concat(&[&sub.watcher_header, ";tag=", &sub.remote_tag]),
            call_id: sub.call_id.clone(),
            contact: concat(&["<", &sub.contact, ">"]),
            event_id: sub.event_id.clone(),
            accept: sub.accept.clone(),
        }
    }

    /// The media types the watcher accepts (empty: the package's default).
    pub fn accept(&self) -> &[String] {
        &self.accept
    }
}

/// `parts` joined in one allocation of the right size (`format!` grows its buffer as it goes).
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// A NOTIFY in the subscription's dialog with CSeq `sub.local_cseq` (the caller has already
/// counted it).
pub fn build(sub: &SubscriptionRecord, pkg: Pkg, parts: &NotifyParts<'_>) -> Request {
    build_from(&DialogHead::of(sub), sub.local_cseq, pkg, parts)
}

/// [`build`] from the dialog shared by the subscription, with CSeq `cseq`.
pub fn build_from(head: &DialogHead, cseq: u32, pkg: Pkg, parts: &NotifyParts<'_>) -> Request {
    let mut headers = Headers(Vec::with_capacity(12 + head.route_set.len()));
    headers.push(
        HeaderName::Via,
        format!(
            "SIP/2.0/{} {};branch={}",
            parts.transport, parts.via_sent_by, parts.branch
        ),
    );
    headers.push(HeaderName::MaxForwards, "70");
    for r in &head.route_set {
        headers.push(HeaderName::Route, r.as_str());
    }
    headers.push(HeaderName::From, head.from.as_str());
    headers.push(HeaderName::To, head.to.as_str());
    headers.push(HeaderName::CallId, head.call_id.as_str());
    headers.push(HeaderName::CSeq, format!("{cseq} NOTIFY"));
    headers.push(HeaderName::Contact, head.contact.as_str());
    headers.push(
        HeaderName::Event,
        EventHeader::value(pkg, head.event_id.as_deref()),
    );
    headers.push(HeaderName::SubscriptionState, parts.state.header());
    if !parts.server_header.is_empty() {
        headers.push(HeaderName::UserAgent, parts.server_header);
    }
    let mut request = Request {
        method: "NOTIFY".into(),
        uri: parts.request_uri.clone(),
        headers,
        body: Vec::new(),
    };
    if let Some(r) = parts.body {
        attach_body(&mut request, r.clone());
    }
    request
}

/// Puts the rendered document into a NOTIFY built without one (its Content-Type last, as
/// [`build`] places it).
pub fn attach_body(request: &mut Request, body: Rendered) {
    request
        .headers
        .push(HeaderName::ContentType, body.content_type);
    request.body = body.body;
}

/// The header value without its `tag` parameter (what we store of From and To).
pub fn without_tag(value: &NameAddr) -> String {
    let mut v = value.clone();
    v.params.remove("tag");
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse::{parse_message, Limits};
    use crate::sip::{HasHeaders, Message};
    use crate::storage::{FlowRecord, SubState};

    fn sub() -> SubscriptionRecord {
        SubscriptionRecord {
            presentity: "sip:1001@example.com".into(),
            event: "dialog".into(),
            event_id: Some("3".into()),
            watcher: "sip:1002@example.com".into(),
            watcher_header: "\"Bob\" <sip:1002@example.com>".into(),
            presentity_header: "<sip:1001@example.com>".into(),
            call_id: "cid@h".into(),
            local_tag: "ours".into(),
            remote_tag: "theirs".into(),
            remote_target: "sip:1002@192.0.2.7:5062".into(),
            route_set: vec!["<sip:192.0.2.99;lr>".into()],
            local_cseq: 5,
            remote_cseq: 1,
            version: 4,
            cseq_reserved: 0,
            version_reserved: 0,
            expires_at: 0,
            state: SubState::Active,
            accept: vec![],
            flow: FlowRecord {
                proto: "udp".into(),
                remote: "192.0.2.7:5062".into(),
                local: "192.0.2.1:5060".into(),
            },
            user_agent: None,
            contact: "sip:192.0.2.1:5060".into(),
            created_at: 0,
        }
    }

    #[test]
    fn rfc6665_4_2_2_notify_is_in_the_dialog() {
        let body = Rendered {
            content_type: "application/dialog-info+xml",
            body: b"<x/>".to_vec(),
        };
        let target = Uri::parse(&sub().remote_target).unwrap();
        let req = build(
            &sub(),
            Pkg::Dialog,
            &NotifyParts {
                request_uri: &target,
                via_sent_by: "192.0.2.1:5060",
                transport: "UDP",
                branch: "z9hG4bKabc",
                state: SubscriptionState::Active { expires: 599 },
                body: Some(&body),
                server_header: "busylamp",
            },
        );
        let bytes = req.to_bytes();
        let Message::Request(back) = parse_message(&bytes, &Limits::default()).unwrap() else {
            panic!()
        };
        let p = back.validate().unwrap();
        assert_eq!(back.uri.to_string(), "sip:1002@192.0.2.7:5062");
        assert_eq!(p.from.tag().as_deref(), Some("ours"));
        assert_eq!(p.to.tag().as_deref(), Some("theirs"));
        assert_eq!(p.to.display.as_deref(), Some("Bob"));
        assert_eq!(p.cseq.seq, 5);
        assert_eq!(p.cseq.method, "NOTIFY");
        assert_eq!(back.headers.get(HeaderName::Event), Some("dialog;id=3"));
        assert_eq!(
            back.headers.get(HeaderName::SubscriptionState),
            Some("active;expires=599")
        );
        assert_eq!(
            back.headers.get(HeaderName::Route),
            Some("<sip:192.0.2.99;lr>")
        );
        assert_eq!(back.body, b"<x/>");
        assert_eq!(back.call_id().unwrap(), "cid@h");
    }

    #[test]
    fn rfc6665_8_2_3_subscription_state_values() {
        assert_eq!(
            SubscriptionState::Pending { expires: 3 }.header(),
            "pending;expires=3"
        );
        assert_eq!(
            SubscriptionState::Terminated { reason: "timeout" }.header(),
            "terminated;reason=timeout"
        );
    }
}
