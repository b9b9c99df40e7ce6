//! SIP and SIPS URIs (RFC 3261 §19.1), with IPv6 references and comparison per §19.1.4.
//!
//! Other schemes (`tel:`, `urn:`, `http:`) are kept verbatim as [`Uri::Other`]: a proxy forwards
//! them untouched and the registrar rejects them with 416.

use super::text::{is_token_char, unescape, Params};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("URI is empty")]
    Empty,
    #[error("URI has no scheme")]
    NoScheme,
    #[error("URI scheme {0:?} is malformed")]
    BadScheme(String),
    #[error("SIP URI has no host")]
    NoHost,
    #[error("SIP URI host {0:?} is malformed")]
    BadHost(String),
    #[error("SIP URI port {0:?} is not a number from 0 to 65535")]
    BadPort(String),
    #[error("SIP URI user part contains forbidden characters")]
    BadUser,
    #[error("SIP URI parameters are malformed: {0}")]
    BadParams(&'static str),
    #[error("URI contains whitespace or control characters")]
    Whitespace,
    #[error("SIP Request-URI must not contain headers ('?')")]
    HeadersInRequestUri,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    pub fn parse(s: &str) -> Result<Host, UriError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| UriError::BadHost(s.to_string()))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(Host::V6)
                .map_err(|_| UriError::BadHost(s.to_string()));
        }
        if s.is_empty() {
            return Err(UriError::NoHost);
        }
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            if let Ok(v4) = s.parse::<Ipv4Addr>() {
                return Ok(Host::V4(v4));
            }
        }
        // hostname = *( domainlabel "." ) toplabel [ "." ]; be liberal in labels (underscores
        // appear in real deployments) but refuse anything that could break a header.
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(UriError::BadHost(s.to_string()));
        }
        Ok(Host::Name(s.to_string()))
    }

    /// Case-insensitive comparison for names, numeric for addresses (§19.1.4).
    pub fn matches(&self, other: &Host) -> bool {
        match (self, other) {
            (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    }

    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Host::V4(a) => Some((*a).into()),
            Host::V6(a) => Some((*a).into()),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

impl From<std::net::IpAddr> for Host {
    fn from(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(a) => Host::V4(a),
            std::net::IpAddr::V6(a) => Host::V6(a),
        }
    }
}

/// A `sip:` or `sips:` URI. User and password are stored as received (escaped); comparisons
/// unescape them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub secure: bool,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
    /// `?name=value&...` headers, raw.
    pub headers: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    Sip(SipUri),
    /// Any other absolute URI, verbatim.
    Other {
        scheme: String,
        rest: String,
    },
}

impl Uri {
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        if s.is_empty() {
            return Err(UriError::Empty);
        }
        if s.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UriError::Whitespace);
        }
        let colon = s.find(':').ok_or(UriError::NoScheme)?;
        let scheme = &s[..colon];
        let rest = &s[colon + 1..];
        let mut chars = scheme.bytes();
        let first_ok = chars.next().is_some_and(|b| b.is_ascii_alphabetic());
        if !first_ok
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(UriError::BadScheme(scheme.to_string()));
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            Ok(Uri::Sip(SipUri::parse_rest(
                scheme.eq_ignore_ascii_case("sips"),
                rest,
            )?))
        } else {
            Ok(Uri::Other {
                scheme: scheme.to_string(),
                rest: rest.to_string(),
            })
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other { .. } => None,
        }
    }

    pub fn scheme(&self) -> &str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    /// RFC 3261 §19.1.4 equivalence; non-SIP URIs compare case-insensitively as strings
    /// (good enough for `tel:`, which is the only other scheme phones send us).
    pub fn equivalent(&self, other: &Uri) -> bool {
        match (self, other) {
            (Uri::Sip(a), Uri::Sip(b)) => a.equivalent(b),
            (
                Uri::Other {
                    scheme: s1,
                    rest: r1,
                },
                Uri::Other {
                    scheme: s2,
                    rest: r2,
                },
            ) => s1.eq_ignore_ascii_case(s2) && r1.eq_ignore_ascii_case(r2),
            _ => false,
        }
    }
}

impl SipUri {
    fn parse_rest(secure: bool, rest: &str) -> Result<SipUri, UriError> {
        // userinfo may itself contain '?', ';', '/' and ',' (RFC 3261 user-unreserved; RFC 4475
        // §3.1.1.2 "intmeth", §3.1.1.9 "semiuri"), while parameters and headers may not contain
        // an unescaped '@'. So the userinfo ends at the last '@'. Liberal exception: when an
        // '@' appears before the first '?', a later '@' is taken to be an unescaped one inside
        // the headers (`sip:bob@x?to=sip:carol@y`) rather than part of the userinfo.
        let at = match rest.find('?') {
            Some(q) if rest[..q].contains('@') => rest[..q].rfind('@'),
            _ => rest.rfind('@'),
        };
        let (userinfo, after_user) = match at {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        // Headers come after '?', parameters after the first ';' that follows the host.
        let (hostport_params, headers) = match after_user.find('?') {
            Some(q) => (&after_user[..q], Some(after_user[q + 1..].to_string())),
            None => (after_user, None),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.find(':') {
                    Some(c) => (&ui[..c], Some(ui[c + 1..].to_string())),
                    None => (ui, None),
                };
                // RFC 3261 user = 1*( unreserved / escaped / user-unreserved ); be liberal but
                // forbid what would break the URI's structure.
                if u.is_empty() || u.bytes().any(|b| matches!(b, b'<' | b'>' | b'"' | b'@')) {
                    return Err(UriError::BadUser);
                }
                (Some(u.to_string()), p)
            }
        };
        let (hostport, params) = match hostport_params.find(';') {
            Some(sc) => (&hostport_params[..sc], &hostport_params[sc..]),
            None => (hostport_params, ""),
        };
        let (host_str, port_str) = if hostport.starts_with('[') {
            match hostport.find(']') {
                Some(end) => {
                    let after = &hostport[end + 1..];
                    match after.strip_prefix(':') {
                        Some(p) => (&hostport[..=end], Some(p)),
                        None if after.is_empty() => (&hostport[..=end], None),
                        None => return Err(UriError::BadHost(hostport.to_string())),
                    }
                }
                None => return Err(UriError::BadHost(hostport.to_string())),
            }
        } else {
            match hostport.rfind(':') {
                Some(c) => (&hostport[..c], Some(&hostport[c + 1..])),
                None => (hostport, None),
            }
        };
        let host = Host::parse(host_str)?;
        let port = match port_str {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|_| {
                        !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
                    })
                    .ok_or_else(|| UriError::BadPort(p.to_string()))?,
            ),
        };
        let params = Params::parse(params).map_err(UriError::BadParams)?;
        for (n, _) in &params.0 {
            if !n
                .bytes()
                .all(|b| is_token_char(b) || b == b'[' || b == b']')
            {
                return Err(UriError::BadParams("malformed parameter name"));
            }
        }
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.params.value(name)
    }

    pub fn transport(&self) -> Option<String> {
        self.param("transport").map(|t| t.to_ascii_lowercase())
    }

    /// §19.1.4 comparison.
    pub fn equivalent(&self, other: &SipUri) -> bool {
        if self.secure != other.secure {
            return false;
        }
        let user_eq = match (&self.user, &other.user) {
            (None, None) => true,
            (Some(a), Some(b)) => unescape(a) == unescape(b),
            _ => false,
        };
        if !user_eq
            || self.password.as_deref().map(unescape) != other.password.as_deref().map(unescape)
            || !self.host.matches(&other.host)
            || self.port != other.port
        {
            return false;
        }
        // user, ttl, method, maddr and transport must match when either side has them; any
        // other parameter only when both have it. Names and values compare unescaped.
        for special in ["user", "ttl", "method", "maddr", "transport"] {
            let a = param_unescaped(&self.params, special);
            let b = param_unescaped(&other.params, special);
            match (a, b) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    if !unescape(a).eq_ignore_ascii_case(&unescape(b)) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        for (name, value) in &self.params.0 {
            if let Some(theirs) = param_unescaped(&other.params, &unescape(name)) {
                let ours = value.as_deref().unwrap_or("");
                if !unescape(ours).eq_ignore_ascii_case(&unescape(theirs)) {
                    return false;
                }
            }
        }
        // Headers: all must match, in any order.
        let hdrs = |h: &Option<String>| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = h
                .as_deref()
                .unwrap_or("")
                .split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (unescape(k).to_ascii_lowercase(), unescape(v).into_owned())
                })
                .collect();
            v.sort();
            v
        };
        hdrs(&self.headers) == hdrs(&other.headers)
    }

    /// Address-of-record form (RFC 3261 §10.3 step 5) of a URI outside our domains: `sip:`
    /// for `sips:` too, unescaped user, lowercased host, the port unless it is the scheme's
    /// default (5060, 5061 for `sips:`); parameters and headers dropped. The AOR of any URI,
    /// ours included, is [`crate::domain::Domains::aor`], which builds on this.
    pub fn aor(&self) -> String {
        let mut s = String::from("sip:");
        if let Some(u) = &self.user {
            s.push_str(&unescape(u));
            s.push('@');
        }
        match &self.host {
            Host::Name(n) => s.push_str(&n.to_ascii_lowercase()),
            h => s.push_str(&h.to_string()),
        }
        let default_port = if self.secure { 5061 } else { 5060 };
        if let Some(p) = self.port.filter(|&p| p != default_port) {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s
    }
}

/// The raw value of the parameter whose unescaped name is `name` (case-insensitive); `""` for
/// a flag.
fn param_unescaped<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .0
        .iter()
        .find(|(n, _)| unescape(n).eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref().unwrap_or(""))
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        let mut params = String::new();
        self.params.write(&mut params);
        f.write_str(&params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Other { scheme, rest } => write!(f, "{scheme}:{rest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri {
        match Uri::parse(s).unwrap() {
            Uri::Sip(u) => u,
            other => panic!("not sip: {other:?}"),
        }
    }

    #[test]
    fn rfc3261_19_1_parses_user_password_host_port_params_headers() {
        let u = sip("sips:alice:pw@Example.COM:5061;transport=tcp;lr?subject=hi&priority=urgent");
        assert!(u.secure);
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("pw"));
        assert_eq!(u.host, Host::Name("Example.COM".into()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.transport().as_deref(), Some("tcp"));
        assert!(u.params.has("lr"));
        assert_eq!(u.headers.as_deref(), Some("subject=hi&priority=urgent"));
        assert_eq!(
            u.to_string(),
            "sips:alice:pw@Example.COM:5061;transport=tcp;lr?subject=hi&priority=urgent"
        );
    }

    #[test]
    fn rfc5118_ipv6_references_parse_and_print() {
        let u = sip("sip:[2001:db8::10]:5070;transport=udp");
        assert_eq!(u.host, Host::V6("2001:db8::10".parse().unwrap()));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.to_string(), "sip:[2001:db8::10]:5070;transport=udp");
        let u = sip("sip:user@[::1]");
        assert_eq!(u.host, Host::V6(Ipv6Addr::LOCALHOST));
        assert!(Uri::parse("sip:[2001:db8::10").is_err());
        assert!(Uri::parse("sip:[zz::1]").is_err());
        assert!(Uri::parse("sip:[::1]x").is_err());
    }

    #[test]
    fn malformed_uris_are_refused_with_a_reason() {
        assert_eq!(Uri::parse(""), Err(UriError::Empty));
        assert_eq!(Uri::parse("alice"), Err(UriError::NoScheme));
        assert!(matches!(
            Uri::parse("sip:a@b:99999"),
            Err(UriError::BadPort(_))
        ));
        assert!(matches!(Uri::parse("sip:a@b:"), Err(UriError::BadPort(_))));
        assert!(matches!(Uri::parse("sip:a b@c"), Err(UriError::Whitespace)));
        assert!(matches!(Uri::parse("sip:"), Err(UriError::NoHost)));
        assert!(matches!(Uri::parse("1sip:x"), Err(UriError::BadScheme(_))));
    }

    #[test]
    fn other_schemes_are_kept_verbatim() {
        let u = Uri::parse("tel:+1-212-555-1212;phone-context=x").unwrap();
        assert_eq!(u.scheme(), "tel");
        assert_eq!(u.to_string(), "tel:+1-212-555-1212;phone-context=x");
    }

    // RFC 3261 §19.1.4: the equivalent pairs listed there.
    #[test]
    fn rfc3261_19_1_4_equivalent_uris() {
        let pairs = [
            (
                "sip:%61lice@atlanta.com;transport=TCP",
                "sip:alice@AtLanTa.CoM;Transport=tcp",
            ),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
            (
                "sip:carol@chicago.com;newparam=5",
                "sip:carol@chicago.com;security=on",
            ),
            (
                "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
                "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            ),
            (
                "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
                "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            ),
        ];
        for (a, b) in pairs {
            assert!(
                Uri::parse(a).unwrap().equivalent(&Uri::parse(b).unwrap()),
                "{a} == {b}"
            );
            assert!(
                Uri::parse(b).unwrap().equivalent(&Uri::parse(a).unwrap()),
                "{b} == {a}"
            );
        }
    }

    #[test]
    fn rfc3261_19_1_4_non_equivalent_uris() {
        let pairs = [
            (
                "SIP:ALICE@AtLanTa.CoM;Transport=udp",
                "sip:alice@AtLanTa.CoM;Transport=UDP",
            ),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
            (
                "sip:bob@biloxi.com",
                "sip:bob@biloxi.com:6000;transport=tcp",
            ),
            (
                "sip:carol@chicago.com",
                "sip:carol@chicago.com?Subject=next%20meeting",
            ),
            ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
            (
                "sip:carol@chicago.com;security=on",
                "sip:carol@chicago.com;security=off",
            ),
            ("sip:alice@x", "sips:alice@x"),
        ];
        for (a, b) in pairs {
            assert!(
                !Uri::parse(a).unwrap().equivalent(&Uri::parse(b).unwrap()),
                "{a} != {b}"
            );
        }
    }

    #[test]
    fn rfc3261_10_3_aor_is_canonical() {
        assert_eq!(
            sip("sip:%31001@Example.TEST;transport=udp?x=y").aor(),
            "sip:1001@example.test"
        );
        assert_eq!(sip("sip:1001@[::1]:5070").aor(), "sip:1001@[::1]:5070");
        assert_eq!(
            sip("sips:1001@Example.TEST:5061").aor(),
            "sip:1001@example.test"
        );
        assert_eq!(
            sip("sip:1001@example.test:5061").aor(),
            "sip:1001@example.test:5061"
        );
    }
}
