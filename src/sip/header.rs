//! Header names (with RFC 3261 §7.3.3 compact forms) and the typed values we interpret:
//! name-addr (From, To, Contact, Route, Record-Route, Path), Via, CSeq.
//!
//! Everything else stays a raw string in [`super::message::Headers`] and is forwarded untouched.

use super::text::{is_token, read_quoted, split_commas, Params};
use super::uri::{Host, Uri, UriError};
use std::fmt;

/// Headers we look up by name. `Other` covers every extension header; lookups on it compare
/// case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    ContentEncoding,
    MaxForwards,
    Expires,
    MinExpires,
    Route,
    RecordRoute,
    Path,
    Event,
    AllowEvents,
    Allow,
    Accept,
    Supported,
    Require,
    ProxyRequire,
    Unsupported,
    Subject,
    ReferTo,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    UserAgent,
    Server,
    Date,
    Timestamp,
    SubscriptionState,
    SipEtag,
    SipIfMatch,
    Other,
}

impl HeaderName {
    /// Classifies a header name as received; compact forms map to their long form.
    pub fn classify(name: &str) -> HeaderName {
        use HeaderName::*;
        if name.len() == 1 {
            return match name.as_bytes()[0].to_ascii_lowercase() {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'e' => ContentEncoding,
                b'o' => Event,
                b'u' => AllowEvents,
                b'k' => Supported,
                b's' => Subject,
                b'r' => ReferTo,
                _ => Other,
            };
        }
        // Names by first letter: every header of every message is classified, and a scan of
        // the whole table cost ~200 instructions per header.
        let first = name.as_bytes().first().map(u8::to_ascii_lowercase);
        let candidates: &[(&str, HeaderName)] = match first.unwrap_or(0) {
            b'a' => &[
                ("allow-events", AllowEvents),
                ("allow", Allow),
                ("accept", Accept),
                ("authorization", Authorization),
            ],
            b'c' => &[
                ("call-id", CallId),
                ("cseq", CSeq),
                ("contact", Contact),
                ("content-length", ContentLength),
                ("content-type", ContentType),
                ("content-encoding", ContentEncoding),
            ],
            b'd' => &[("date", Date)],
            b'e' => &[("expires", Expires), ("event", Event)],
            b'f' => &[("from", From)],
            b'm' => &[("max-forwards", MaxForwards), ("min-expires", MinExpires)],
            b'p' => &[
                ("path", Path),
                ("proxy-require", ProxyRequire),
                ("proxy-authorization", ProxyAuthorization),
                ("proxy-authenticate", ProxyAuthenticate),
            ],
            b'r' => &[
                ("route", Route),
                ("record-route", RecordRoute),
                ("require", Require),
                ("refer-to", ReferTo),
            ],
            b's' => &[
                ("supported", Supported),
                ("subject", Subject),
                ("server", Server),
                ("subscription-state", SubscriptionState),
                ("sip-etag", SipEtag),
                ("sip-if-match", SipIfMatch),
            ],
            b't' => &[("to", To), ("timestamp", Timestamp)],
            b'u' => &[("unsupported", Unsupported), ("user-agent", UserAgent)],
            b'v' => &[("via", Via)],
            b'w' => &[("www-authenticate", WwwAuthenticate)],
            _ => &[],
        };
        candidates
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, h)| *h)
            .unwrap_or(Other)
    }

    /// The name as spelled on the wire, borrowed from a static table when it is one of the
    /// usual spellings (canonical or compact), owned otherwise.
    /// `self` is `classify(name)`.
    pub fn spelled(self, name: &str) -> std::borrow::Cow<'static, str> {
        const COMPACT: &[&str] = &[
            "v", "f", "t", "i", "m", "l", "c", "e", "o", "u", "k", "s", "r",
        ];
        let kind = self;
        if kind != HeaderName::Other && kind.canonical() == name {
            return std::borrow::Cow::Borrowed(kind.canonical());
        }
        if let Some(c) = COMPACT.iter().find(|c| **c == name) {
            return std::borrow::Cow::Borrowed(c);
        }
        std::borrow::Cow::Owned(name.to_string())
    }

    /// The canonical spelling we print for headers we add ourselves.
    pub fn canonical(self) -> &'static str {
        use HeaderName::*;
        match self {
            Via => "Via",
            From => "From",
            To => "To",
            CallId => "Call-ID",
            CSeq => "CSeq",
            Contact => "Contact",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            ContentEncoding => "Content-Encoding",
            MaxForwards => "Max-Forwards",
            Expires => "Expires",
            MinExpires => "Min-Expires",
            Route => "Route",
            RecordRoute => "Record-Route",
            Path => "Path",
            Event => "Event",
            AllowEvents => "Allow-Events",
            Allow => "Allow",
            Accept => "Accept",
            Supported => "Supported",
            Require => "Require",
            ProxyRequire => "Proxy-Require",
            Unsupported => "Unsupported",
            Subject => "Subject",
            ReferTo => "Refer-To",
            Authorization => "Authorization",
            ProxyAuthorization => "Proxy-Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthenticate => "Proxy-Authenticate",
            UserAgent => "User-Agent",
            Server => "Server",
            Date => "Date",
            Timestamp => "Timestamp",
            SubscriptionState => "Subscription-State",
            SipEtag => "SIP-ETag",
            SipIfMatch => "SIP-If-Match",
            Other => "X-Unknown",
        }
    }

    /// Headers whose value is a comma-separated list (RFC 3261 §7.3.1) and may be split or
    /// combined. Authorization-type headers are not lists even though they contain commas.
    pub fn is_list(self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            Via | Contact
                | Route
                | RecordRoute
                | Path
                | AllowEvents
                | Allow
                | Accept
                | Supported
                | Require
                | ProxyRequire
                | Unsupported
                | ContentEncoding
        )
    }

    /// Headers that must appear at most once in a request.
    pub fn is_single(self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            From | To | CallId | CSeq | ContentLength | MaxForwards | ContentType | Expires
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("{0}")]
    Uri(#[from] UriError),
    #[error("unterminated quoted display name")]
    UnterminatedQuote,
    #[error("'<' without matching '>'")]
    UnclosedAngle,
    #[error("malformed parameters: {0}")]
    Params(&'static str),
    #[error("display name without <URI>")]
    DisplayWithoutAngle,
    #[error("unquoted display name contains characters that need quotes")]
    UnquotedDisplayName,
    #[error("URI with '?', ',' or ';' must be enclosed in <>")]
    AddrSpecNeedsAngle,
    #[error("junk after '>'")]
    JunkAfterAngle,
    #[error("malformed Via: {0}")]
    Via(&'static str),
    #[error("malformed CSeq: {0}")]
    CSeq(&'static str),
}

/// `[display-name] <uri> *(;param)` or `uri *(;param)` (addr-spec form, where params belong to
/// the header, RFC 3261 §20.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    pub fn parse(s: &str) -> Result<NameAddr, HeaderError> {
        let s = s.trim();
        let (display, rest) = if s.starts_with('"') {
            let (d, used) = read_quoted(s).ok_or(HeaderError::UnterminatedQuote)?;
            (Some(d), s[used..].trim_start())
        } else if let Some(lt) = s.find('<') {
            let d = s[..lt].trim();
            // display-name = *(token LWS) / quoted-string. No LWS before '<' is tolerated
            // (RFC 4475 §3.1.1.6 "lwsdisp"); unquoted non-token characters are not (§3.1.2.15
            // "baddn": a proxy must not forward them, and guessing the quotes is a gamble).
            if !d.split_ascii_whitespace().all(is_token) {
                return Err(HeaderError::UnquotedDisplayName);
            }
            (
                if d.is_empty() {
                    None
                } else {
                    Some(d.to_string())
                },
                &s[lt..],
            )
        } else {
            (None, s)
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let gt = inner.find('>').ok_or(HeaderError::UnclosedAngle)?;
            // No LWS inside the brackets (RFC 4475 §3.1.2.14 "badaspec"): Uri::parse refuses
            // the spaces, which the 400's reason phrase then names.
            let uri = Uri::parse(&inner[..gt])?;
            let after = inner[gt + 1..].trim_start();
            if !after.is_empty() && !after.starts_with(';') {
                return Err(HeaderError::JunkAfterAngle);
            }
            let params = Params::parse(after).map_err(HeaderError::Params)?;
            return Ok(NameAddr {
                display,
                uri,
                params,
            });
        }
        if display.is_some() {
            return Err(HeaderError::DisplayWithoutAngle);
        }
        // addr-spec: URI params cannot be told from header params, so by RFC 3261 §20.10 they
        // are header params; the URI ends at the first ';'.
        let (uri, params) = match rest.find(';') {
            Some(sc) => (&rest[..sc], &rest[sc..]),
            None => (rest, ""),
        };
        // RFC 3261 §20.10: a URI with a comma, question mark or semicolon must be in
        // name-addr form (RFC 4475 §3.1.2.13 "regbadct").
        if uri.contains('?') || uri.contains(',') {
            return Err(HeaderError::AddrSpecNeedsAngle);
        }
        Ok(NameAddr {
            display: None,
            uri: Uri::parse(uri.trim())?,
            params: Params::parse(params).map_err(HeaderError::Params)?,
        })
    }

    pub fn tag(&self) -> Option<String> {
        self.params.value("tag")
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            if is_token(d) {
                write!(f, "{d} ")?;
            } else {
                write!(f, "{} ", super::text::quote(d))?;
            }
        }
        write!(f, "<{}>", self.uri)?;
        let mut p = String::new();
        self.params.write(&mut p);
        f.write_str(&p)
    }
}

/// A Contact value: `*` or a name-addr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactValue {
    Star,
    Addr(NameAddr),
}

pub fn parse_contacts(values: &[&str]) -> Result<Vec<ContactValue>, HeaderError> {
    let mut out = Vec::new();
    for v in values {
        for part in split_commas(v) {
            if part == "*" {
                out.push(ContactValue::Star);
            } else {
                out.push(ContactValue::Addr(NameAddr::parse(part)?));
            }
        }
    }
    Ok(out)
}

/// One Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub protocol: String,
    /// Uppercased transport token (UDP, TCP, TLS, SCTP, WS, ...).
    pub transport: String,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

pub const BRANCH_MAGIC: &str = "z9hG4bK";

impl Via {
    pub fn parse(s: &str) -> Result<Via, HeaderError> {
        let s = s.trim();
        // sent-protocol = protocol-name SLASH protocol-version SLASH transport, LWS allowed
        // around the slashes (RFC 4475 §3.1.1.1 wsinv).
        let mut parts = s.splitn(3, '/');
        let name = parts.next().unwrap_or("").trim();
        let version = parts
            .next()
            .ok_or(HeaderError::Via("missing protocol version"))?
            .trim();
        let rest = parts
            .next()
            .ok_or(HeaderError::Via("missing transport"))?
            .trim_start();
        if !is_token(name) || !is_token(version) {
            return Err(HeaderError::Via("malformed sent-protocol"));
        }
        let t_end = rest
            .find(|c: char| c.is_whitespace())
            .ok_or(HeaderError::Via("missing sent-by"))?;
        let transport = &rest[..t_end];
        if !is_token(transport) {
            return Err(HeaderError::Via("malformed transport"));
        }
        let rest = rest[t_end..].trim_start();
        let (sent_by, params) = match rest.find(';') {
            Some(sc) => (rest[..sc].trim(), &rest[sc..]),
            None => (rest.trim(), ""),
        };
        let (host_s, port_s) = if sent_by.starts_with('[') {
            let end = sent_by
                .find(']')
                .ok_or(HeaderError::Via("unclosed IPv6 reference"))?;
            let after = sent_by[end + 1..].trim_start();
            match after.strip_prefix(':') {
                Some(p) => (&sent_by[..=end], Some(p.trim())),
                None if after.is_empty() => (&sent_by[..=end], None),
                None => return Err(HeaderError::Via("junk after host")),
            }
        } else {
            match sent_by.find(':') {
                Some(c) => (sent_by[..c].trim(), Some(sent_by[c + 1..].trim())),
                None => (sent_by, None),
            }
        };
        let host = Host::parse(host_s).map_err(|_| HeaderError::Via("malformed sent-by host"))?;
        let port = match port_s {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(HeaderError::Via(
                        "sent-by port is not a number from 0 to 65535",
                    ))?,
            ),
        };
        let params = Params::parse(params).map_err(|_| HeaderError::Via("malformed parameters"))?;
        Ok(Via {
            protocol: format!("{name}/{version}"),
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<String> {
        self.params.value("branch")
    }

    /// `rport` present: `Some(None)` when empty (client asks for it), `Some(Some(p))` filled.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.parse().ok()))
    }

    pub fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.to_string(),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.protocol, self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        let mut s = String::new();
        self.params.write(&mut s);
        f.write_str(&s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: String,
}

impl CSeq {
    pub fn parse(s: &str) -> Result<CSeq, HeaderError> {
        let mut it = s.split_ascii_whitespace();
        let num = it.next().ok_or(HeaderError::CSeq("empty"))?;
        let method = it.next().ok_or(HeaderError::CSeq("missing method"))?;
        if it.next().is_some() {
            return Err(HeaderError::CSeq("junk after method"));
        }
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeaderError::CSeq("sequence number is not a number"));
        }
        // 1*DIGIT: leading zeros are legal (RFC 4475 §3.1.1.1 "wsinv" sends 0009).
        let num = num.trim_start_matches('0');
        let num = if num.is_empty() { "0" } else { num };
        if num.len() > 10 {
            return Err(HeaderError::CSeq("sequence number is not below 2**31"));
        }
        // RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31.
        let seq: u64 = num
            .parse()
            .map_err(|_| HeaderError::CSeq("sequence number is not a number"))?;
        if seq >= 1 << 31 {
            return Err(HeaderError::CSeq("sequence number is not below 2**31"));
        }
        if !is_token(method) {
            return Err(HeaderError::CSeq("malformed method"));
        }
        Ok(CSeq {
            seq: seq as u32,
            method: method.to_string(),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3261_7_3_3_compact_forms_map_to_long_names() {
        for (c, h) in [
            ("v", HeaderName::Via),
            ("F", HeaderName::From),
            ("t", HeaderName::To),
            ("i", HeaderName::CallId),
            ("m", HeaderName::Contact),
            ("l", HeaderName::ContentLength),
            ("c", HeaderName::ContentType),
            ("o", HeaderName::Event),
            ("u", HeaderName::AllowEvents),
            ("k", HeaderName::Supported),
        ] {
            assert_eq!(HeaderName::classify(c), h);
        }
        assert_eq!(HeaderName::classify("CALL-id"), HeaderName::CallId);
        assert_eq!(HeaderName::classify("X-Foo"), HeaderName::Other);
    }

    #[test]
    fn every_canonical_name_classifies_to_itself_in_any_case() {
        use HeaderName::*;
        let all = [
            Via,
            From,
            To,
            CallId,
            CSeq,
            Contact,
            ContentLength,
            ContentType,
            ContentEncoding,
            MaxForwards,
            Expires,
            MinExpires,
            Route,
            RecordRoute,
            Path,
            Event,
            AllowEvents,
            Allow,
            Accept,
            Supported,
            Require,
            ProxyRequire,
            Unsupported,
            Subject,
            ReferTo,
            Authorization,
            ProxyAuthorization,
            WwwAuthenticate,
            ProxyAuthenticate,
            UserAgent,
            Server,
            Date,
            Timestamp,
            SubscriptionState,
            SipEtag,
            SipIfMatch,
        ];
        for h in all {
            let name = h.canonical();
            assert_eq!(HeaderName::classify(name), h, "{name}");
            assert_eq!(
                HeaderName::classify(&name.to_ascii_uppercase()),
                h,
                "{name}"
            );
            assert_eq!(
                HeaderName::classify(&name.to_ascii_lowercase()),
                h,
                "{name}"
            );
        }
        // Near misses and odd input are extension headers, never a panic.
        for other in ["", "-", "Vias", "Fro", "Contact-", "X-Unknown", "ü", "zz"] {
            assert_eq!(HeaderName::classify(other), Other, "{other:?}");
        }
    }

    #[test]
    fn rfc3261_20_10_name_addr_with_quoted_display_and_escapes() {
        let n = NameAddr::parse(
            r#""Pierre \"PT\" Test" <sip:1013@example.test;transport=udp>;tag=F87D"#,
        )
        .unwrap();
        assert_eq!(n.display.as_deref(), Some(r#"Pierre "PT" Test"#));
        assert_eq!(n.tag().as_deref(), Some("F87D"));
        assert_eq!(n.uri.as_sip().unwrap().transport().as_deref(), Some("udp"));
        let back = NameAddr::parse(&n.to_string()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn rfc3261_20_10_addr_spec_params_belong_to_the_header() {
        let n = NameAddr::parse("sip:bob@example.test;tag=abc").unwrap();
        assert_eq!(n.tag().as_deref(), Some("abc"));
        assert!(n.uri.as_sip().unwrap().params.0.is_empty());
        let n = NameAddr::parse("Bob Smith <sip:bob@x>").unwrap();
        assert_eq!(n.display.as_deref(), Some("Bob Smith"));
    }

    #[test]
    fn malformed_name_addrs_say_why() {
        assert_eq!(
            NameAddr::parse(r#""open <sip:a@b>"#),
            Err(HeaderError::UnterminatedQuote)
        );
        assert_eq!(NameAddr::parse("<sip:a@b"), Err(HeaderError::UnclosedAngle));
        assert!(NameAddr::parse("\"x\" sip:a@b").is_err());
    }

    #[test]
    fn contacts_star_and_lists() {
        let c = parse_contacts(&["*"]).unwrap();
        assert_eq!(c, vec![ContactValue::Star]);
        let c = parse_contacts(&[r#""A, B" <sip:a@x>;expires=60, <sip:b@y>"#, "sip:c@z"]).unwrap();
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn rfc3261_20_42_via_with_ipv6_rport_and_lws() {
        let v = Via::parse("SIP / 2.0 / UDP [2001:db8::9]:5070;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, Host::V6("2001:db8::9".parse().unwrap()));
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.branch().as_deref(), Some("z9hG4bK1"));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK1;rport"
        );
        let v = Via::parse("SIP/2.0/tcp host.example:5060 ;received=1.2.3.4;rport=9").unwrap();
        assert_eq!(v.transport, "TCP");
        assert_eq!(v.rport(), Some(Some(9)));
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:99999").is_err());
    }

    #[test]
    fn rfc3261_8_1_1_5_cseq_bounds() {
        assert_eq!(CSeq::parse("2 REGISTER").unwrap().seq, 2);
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("-1 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
        assert!(CSeq::parse("1 INVITE x").is_err());
        assert!(CSeq::parse("36893488147419103232 INVITE").is_err());
    }
}
