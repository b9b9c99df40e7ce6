//! The SIP message model: requests and responses with their headers kept as received (name
//! spelling, order, raw value) so that what we do not interpret is forwarded untouched.

use super::header::{parse_contacts, CSeq, ContactValue, HeaderError, HeaderName, NameAddr, Via};
use super::text::split_commas;
use super::uri::Uri;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name as received (compact forms kept). Borrowed from a static table when it is
    /// spelled the usual way, so most headers cost one allocation (the value), not two.
    pub name: Cow<'static, str>,
    pub kind: HeaderName,
    /// The unfolded value, leading and trailing whitespace removed.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn push(&mut self, kind: HeaderName, value: impl Into<String>) {
        self.0.push(Header {
            name: Cow::Borrowed(kind.canonical()),
            kind,
            value: value.into(),
        });
    }

    pub fn push_raw(&mut self, name: &str, value: impl Into<String>) {
        self.0.push(Header {
            name: HeaderName::classify(name).spelled(name),
            kind: HeaderName::classify(name),
            value: value.into(),
        });
    }

    /// First value of a known header.
    pub fn get(&self, kind: HeaderName) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.kind == kind)
            .map(|h| h.value.as_str())
    }

    /// First value of an extension header by name (case-insensitive).
    pub fn get_named(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn all(&self, kind: HeaderName) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |h| h.kind == kind)
            .map(|h| h.value.as_str())
    }

    pub fn count(&self, kind: HeaderName) -> usize {
        self.0.iter().filter(|h| h.kind == kind).count()
    }

    /// All list elements across every occurrence of a list header (RFC 3261 §7.3.1).
    pub fn list(&self, kind: HeaderName) -> Vec<&str> {
        self.all(kind).flat_map(split_commas).collect()
    }

    pub fn has(&self, kind: HeaderName) -> bool {
        self.0.iter().any(|h| h.kind == kind)
    }

    pub fn remove(&mut self, kind: HeaderName) {
        self.0.retain(|h| h.kind != kind);
    }

    /// Replaces every occurrence of `kind` with one header at the first one's place (or at the
    /// end when absent).
    pub fn set(&mut self, kind: HeaderName, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter().position(|h| h.kind == kind) {
            Some(i) => {
                self.0[i].value = value;
                let mut seen = false;
                self.0.retain(|h| {
                    if h.kind != kind {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.push(kind, value),
        }
    }

    /// Inserts a header before every other (used for Via and Record-Route).
    pub fn prepend(&mut self, kind: HeaderName, value: impl Into<String>) {
        self.0.insert(
            0,
            Header {
                name: Cow::Borrowed(kind.canonical()),
                kind,
                value: value.into(),
            },
        );
    }

    /// Removes the first element of the first occurrence of a list header (the top Via).
    pub fn pop_first_element(&mut self, kind: HeaderName) -> Option<String> {
        let i = self.0.iter().position(|h| h.kind == kind)?;
        let parts = split_commas(&self.0[i].value);
        let first = parts.first()?.to_string();
        let rest: Vec<&str> = parts[1..].to_vec();
        if rest.is_empty() {
            self.0.remove(i);
        } else {
            self.0[i].value = rest.join(", ");
        }
        Some(first)
    }

    /// Bytes the header block takes when printed (plus room for a Content-Length we add), so
    /// the output buffer is allocated once at its final size.
    fn printed_len(&self) -> usize {
        self.0
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum::<usize>()
            + 32
    }

    fn write_to(&self, out: &mut Vec<u8>, body_len: usize) {
        let mut wrote_cl = false;
        for h in &self.0 {
            if h.kind == HeaderName::ContentLength {
                // The length we print is always the body we send, never stale. A value that
                // already says so is kept as received (`0150`), so that printing a parsed message
                // reproduces it; every occurrence is kept for the same reason (they all agree, or
                // the message would not have parsed).
                wrote_cl = true;
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                let v = h.value.trim();
                let current = !v.is_empty()
                    && v.len() <= 9
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && v.parse::<usize>().ok() == Some(body_len);
                if current {
                    out.extend_from_slice(h.value.as_bytes());
                } else {
                    out.extend_from_slice(body_len.to_string().as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !wrote_cl {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(body_len.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Errors reading the headers every request and response must carry (RFC 3261 §8.1.1).
/// Each maps to a 400 whose reason phrase is the Display text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("Missing {0} header")]
    Missing(&'static str),
    #[error("Duplicate {0} header")]
    Duplicate(&'static str),
    #[error("Bad {0} header: {1}")]
    Bad(&'static str, HeaderError),
    #[error("Bad {0} header: {1}")]
    BadValue(&'static str, &'static str),
    #[error("CSeq method {cseq} does not match request method {method}")]
    CSeqMethodMismatch { cseq: String, method: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub uri: Uri,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Message {
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

/// Typed access to the headers both requests and responses carry.
pub trait HasHeaders {
    fn headers(&self) -> &Headers;

    fn call_id(&self) -> Result<&str, MessageError> {
        self.headers()
            .get(HeaderName::CallId)
            .ok_or(MessageError::Missing("Call-ID"))
    }

    fn cseq(&self) -> Result<CSeq, MessageError> {
        let v = self
            .headers()
            .get(HeaderName::CSeq)
            .ok_or(MessageError::Missing("CSeq"))?;
        CSeq::parse(v).map_err(|e| MessageError::Bad("CSeq", e))
    }

    // The From header, not a conversion: the name is public API.
    #[allow(clippy::wrong_self_convention)]
    fn from_hdr(&self) -> Result<NameAddr, MessageError> {
        let v = self
            .headers()
            .get(HeaderName::From)
            .ok_or(MessageError::Missing("From"))?;
        NameAddr::parse(v).map_err(|e| MessageError::Bad("From", e))
    }

    fn to_hdr(&self) -> Result<NameAddr, MessageError> {
        let v = self
            .headers()
            .get(HeaderName::To)
            .ok_or(MessageError::Missing("To"))?;
        NameAddr::parse(v).map_err(|e| MessageError::Bad("To", e))
    }

    fn top_via(&self) -> Result<Via, MessageError> {
        let v = self
            .headers()
            .list(HeaderName::Via)
            .into_iter()
            .next()
            .ok_or(MessageError::Missing("Via"))?;
        Via::parse(v).map_err(|e| MessageError::Bad("Via", e))
    }

    fn vias(&self) -> Result<Vec<Via>, MessageError> {
        self.headers()
            .list(HeaderName::Via)
            .into_iter()
            .map(|v| Via::parse(v).map_err(|e| MessageError::Bad("Via", e)))
            .collect()
    }

    fn contacts(&self) -> Result<Vec<ContactValue>, MessageError> {
        let vals: Vec<&str> = self.headers().all(HeaderName::Contact).collect();
        parse_contacts(&vals).map_err(|e| MessageError::Bad("Contact", e))
    }

    /// Expires header as a number of seconds (RFC 3261 §20.19: delta-seconds; values above
    /// 2**32-1 are taken as 2**32-1).
    fn expires(&self) -> Result<Option<u32>, MessageError> {
        match self.headers().get(HeaderName::Expires) {
            None => Ok(None),
            Some(v) => parse_delta_seconds(v)
                .map(Some)
                .ok_or(MessageError::BadValue("Expires", "not a number of seconds")),
        }
    }
}

/// delta-seconds = 1*DIGIT, saturating at 2**32-1 (RFC 3261 §20.19).
pub fn parse_delta_seconds(v: &str) -> Option<u32> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = v.trim_start_matches('0');
    if trimmed.len() > 10 {
        return Some(u32::MAX);
    }
    Some(trimmed.parse::<u64>().unwrap_or(0).min(u32::MAX as u64) as u32)
}

impl HasHeaders for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl HasHeaders for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl Request {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.method.len() + 160 + self.headers.printed_len() + self.body.len(),
        );
        self.write_into(&mut out);
        out
    }

    fn write_into(&self, out: &mut Vec<u8>) {
        let _ = write!(StrBuf(out), "{} {} SIP/2.0\r\n", self.method, self.uri);
        self.headers.write_to(out, self.body.len());
        out.extend_from_slice(&self.body);
    }

    /// The printed message as shared bytes (for caching and sending from several places),
    /// printed through a reused per-thread buffer: one allocation, not two.
    pub fn to_shared(&self) -> Arc<[u8]> {
        with_scratch(|buf| self.write_into(buf))
    }

    pub fn max_forwards(&self) -> Result<Option<u8>, MessageError> {
        match self.headers.get(HeaderName::MaxForwards) {
            None => Ok(None),
            Some(v) => {
                let v = v.trim();
                // 1*DIGIT: leading zeros are legal (RFC 4475 §3.1.1.1 "wsinv" sends 0068).
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(MessageError::BadValue(
                        "Max-Forwards",
                        "not a number from 0 to 255",
                    ));
                }
                let v = v.trim_start_matches('0');
                let v = if v.is_empty() { "0" } else { v };
                if v.len() > 3 {
                    return Err(MessageError::BadValue(
                        "Max-Forwards",
                        "not a number from 0 to 255",
                    ));
                }
                v.parse::<u8>().map(Some).map_err(|_| {
                    MessageError::BadValue("Max-Forwards", "not a number from 0 to 255")
                })
            }
        }
    }

    /// RFC 3261 §8.2 / §16.3 checks every request must pass before any service sees it.
    /// Checks the request and returns the headers it had to parse for that, so later stages
    /// use them instead of parsing again.
    pub fn validate(&self) -> Result<Parsed, MessageError> {
        for (kind, name) in [
            (HeaderName::From, "From"),
            (HeaderName::To, "To"),
            (HeaderName::CallId, "Call-ID"),
            (HeaderName::CSeq, "CSeq"),
            (HeaderName::MaxForwards, "Max-Forwards"),
            (HeaderName::ContentLength, "Content-Length"),
            (HeaderName::ContentType, "Content-Type"),
            (HeaderName::Expires, "Expires"),
        ] {
            if self.headers.count(kind) > 1 {
                return Err(MessageError::Duplicate(name));
            }
        }
        let mut vias = self.vias()?;
        if vias.is_empty() {
            return Err(MessageError::Missing("Via"));
        }
        let top_via = vias.swap_remove(0);
        let from = self.from_hdr()?;
        let to = self.to_hdr()?;
        // RFC 3261 §25.1: tag-param = "tag" EQUAL token. A tag is copied into other headers
        // (the proxy's Record-Route ftag) and documents; a quoted one with commas or angle
        // brackets would inject into them.
        for (name, h) in [("From", &from), ("To", &to)] {
            if h.tag().is_some_and(|t| !crate::sip::text::is_token(&t)) {
                return Err(MessageError::BadValue(name, "tag is not a token"));
            }
        }
        let call_id = self.call_id()?;
        if call_id.is_empty() || call_id.bytes().any(|b| b <= b' ') {
            return Err(MessageError::BadValue(
                "Call-ID",
                "empty or contains whitespace",
            ));
        }
        let cseq = self.cseq()?;
        if cseq.method != self.method {
            return Err(MessageError::CSeqMethodMismatch {
                cseq: cseq.method,
                method: self.method.clone(),
            });
        }
        let max_forwards = self.max_forwards()?;
        let expires = self.expires()?;
        // Contact drives registration and dialog routing; a malformed one is refused here with
        // a reason rather than misread later (RFC 4475 §3.1.2.1 "badinv01", §3.1.2.13).
        let contacts = self.contacts()?;
        Ok(Parsed {
            top_via,
            from,
            to,
            cseq,
            max_forwards,
            expires,
            contacts,
        })
    }

    /// A response to this request per RFC 3261 §8.2.6.2: Via, From, To, Call-ID and CSeq copied;
    /// a To tag added when the request had none and the status is above 100.
    pub fn response(&self, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
        // Room for the copied headers and the few a service adds (Contact, Date, Server...).
        let mut headers = Headers(Vec::with_capacity(16));
        for h in &self.headers.0 {
            match h.kind {
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    headers.0.push(h.clone())
                }
                HeaderName::To => {
                    let mut h = h.clone();
                    if status > 100 {
                        if let Some(tag) = to_tag {
                            if !has_tag_param(&h.value) {
                                h.value.push_str(";tag=");
                                h.value.push_str(tag);
                            }
                        }
                    }
                    headers.0.push(h);
                }
                // RFC 3261 §8.2.6.1: Timestamp is echoed in 100 Trying.
                HeaderName::Timestamp if status == 100 => headers.0.push(h.clone()),
                _ => {}
            }
        }
        Response {
            status,
            reason: sanitize_reason(reason),
            headers,
            body: Vec::new(),
        }
    }
}

/// The headers [`Request::validate`] parsed, for the stages after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub top_via: Via,
    pub from: NameAddr,
    pub to: NameAddr,
    pub cseq: CSeq,
    pub max_forwards: Option<u8>,
    pub expires: Option<u32>,
    pub contacts: Vec<ContactValue>,
}

/// Whether a From/To value carries a `tag` header parameter, without parsing it: the
/// parameters are those after the `>` of a name-addr, or after the first `;` of an addr-spec.
/// Quoted display names are skipped.
pub fn has_tag_param(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    let mut in_quote = false;
    let mut params_from = None;
    let mut saw_angle = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => saw_angle = true,
            b'>' if !in_quote => {
                params_from = Some(i + 1);
                break;
            }
            b';' if !in_quote && !saw_angle => {
                params_from = Some(i);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    let Some(start) = params_from else {
        return false;
    };
    value[start.min(value.len())..].split(';').any(|p| {
        let name = p.split('=').next().unwrap_or("").trim();
        name.eq_ignore_ascii_case("tag")
    })
}

/// Reason phrases carry text from errors that may quote input: keep them on one printable line.
pub fn sanitize_reason(reason: &str) -> String {
    let mut s: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl Response {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self.reason.len() + self.headers.printed_len() + self.body.len(),
        );
        self.write_into(&mut out);
        out
    }

    fn write_into(&self, out: &mut Vec<u8>) {
        let _ = write!(StrBuf(out), "SIP/2.0 {} {}\r\n", self.status, self.reason);
        self.headers.write_to(out, self.body.len());
        out.extend_from_slice(&self.body);
    }

    /// See [`Request::to_shared`].
    pub fn to_shared(&self) -> Arc<[u8]> {
        with_scratch(|buf| self.write_into(buf))
    }

    pub fn is_provisional(&self) -> bool {
        self.status < 200
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(8192));
}

/// Prints through the thread's scratch buffer into one shared allocation.
fn with_scratch(print: impl FnOnce(&mut Vec<u8>)) -> Arc<[u8]> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            print(&mut buf);
            let shared = Arc::from(&buf[..]);
            // Do not keep a huge buffer around after one large message.
            if buf.capacity() > 256 * 1024 {
                *buf = Vec::with_capacity(8192);
            }
            shared
        }
        // Re-entered (cannot happen today): fall back to a fresh buffer.
        Err(_) => {
            let mut buf = Vec::new();
            print(&mut buf);
            Arc::from(buf)
        }
    })
}

/// `fmt::Write` over a byte buffer, so start lines can use `write!`.
struct StrBuf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Default reason phrases (RFC 3261 §21 and the event-related RFCs).
pub fn default_reason(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => match status / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

#[cfg(test)]
mod tag_tests {
    use super::has_tag_param;

    #[test]
    fn to_tag_detection_without_parsing() {
        assert!(has_tag_param("<sip:a@b>;tag=1"));
        assert!(has_tag_param("\"x;tag=no\" <sip:a@b>;Tag=2"));
        assert!(has_tag_param("sip:a@b;tag=3"));
        assert!(!has_tag_param("<sip:a@b;tag=uri-param>"));
        assert!(!has_tag_param("\"a;tag=b\" <sip:a@b>"));
        assert!(!has_tag_param("<sip:a@b>;tagx=1"));
        assert!(!has_tag_param("sip:a@b"));
    }
}

#[cfg(test)]
mod validate_tests {
    use crate::sip::parse::{parse_message, Limits};
    use crate::sip::Message;

    fn invite(from_tag: &str, to: &str) -> crate::sip::Request {
        let m = format!("INVITE sip:1002@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx\r\nFrom: <sip:1001@example.test>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
        match parse_message(m.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc3261_25_1_tags_are_tokens() {
        assert!(invite("a1.b-c!%*_+`'~", "<sip:1002@example.test>")
            .validate()
            .is_ok());
        for bad in ["\"a, <sip:evil.test;lr>\"", "a>b", "a,<sip:evil>"] {
            let e = invite(bad, "<sip:1002@example.test>")
                .validate()
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "Bad From header: tag is not a token",
                "{bad}"
            );
        }
        let e = invite("a", "<sip:1002@example.test>;tag=\"x y\"")
            .validate()
            .unwrap_err();
        assert_eq!(e.to_string(), "Bad To header: tag is not a token");
    }
}
