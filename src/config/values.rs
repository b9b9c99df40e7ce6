//! Parsers of the config values that are not plain numbers, booleans or enums.

use super::*;

/// A string value through `parse`.
pub(super) fn parsed<'de, D, T>(d: D, parse: fn(&str) -> Result<T, BadValue>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_str(Parsed(parse, PhantomData))
}

/// A list of strings, each through `parse`.
fn list<'de, D, T>(d: D, parse: fn(&str) -> Result<T, BadValue>) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    struct List<T>(fn(&str) -> Result<T, BadValue>);
    impl<'de, T> Visitor<'de> for List<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(Parsed(self.0, PhantomData))? {
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(List(parse))
}

struct Parsed<T>(fn(&str) -> Result<T, BadValue>, PhantomData<T>);

impl<'de, T> Visitor<'de> for Parsed<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

impl<'de, T> DeserializeSeed<'de> for Parsed<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

pub(super) fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<Host, D::Error> {
    parsed(d, |s| {
        Host::parse(s).map_err(|_| {
            BadValue::new(
                format!("{s:?} is not a host name or address"),
                "set it to the SIP domain the phones register to, e.g. \"pbx.example.com\"",
            )
        })
    })
}

pub(super) fn aliases<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Host>, D::Error> {
    list(d, |s| {
        Host::parse(s).map_err(|_| {
            BadValue::new(
                format!("{s:?} is not a host name or address"),
                "list host names or IP addresses, e.g. [\"192.0.2.10\"]",
            )
        })
    })
}

pub(super) fn algorithms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Algorithm>, D::Error> {
    list(d, |s| {
        if s.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(BadValue::new(
                format!("{s:?} is not supported"),
                "use \"SHA-256\" and/or \"MD5\"",
            ))
        }
    })
}

pub(super) fn trusted<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    list(d, |s| {
        // Spaces around the address and the prefix have always been accepted.
        let t = match s.split_once('/') {
            Some((addr, prefix)) => format!("{}/{}", addr.trim(), prefix.trim()),
            None => s.trim().to_string(),
        };
        t.parse::<IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                BadValue::new(
                    format!("{s:?} is not an address or CIDR network"),
                    "write \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\"",
                )
            })
    })
}

/// A `sip:`/`sips:` URI that `ok` accepts, or `None` for "".
fn optional_uri(
    s: &str,
    ok: fn(&SipUri) -> bool,
    problem: &str,
    fix: &str,
) -> Result<Option<SipUri>, BadValue> {
    if s.is_empty() {
        return Ok(None);
    }
    match Uri::parse(s) {
        Ok(Uri::Sip(u)) if ok(&u) => Ok(Some(u)),
        _ => Err(BadValue::new(format!("{s:?} is not {problem}"), fix)),
    }
}

pub(super) fn upstream<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SipUri>, D::Error> {
    parsed(d, |s| {
        optional_uri(
            s,
            |u| u.user.is_none(),
            "a SIP URI of a host",
            "write the PBX address, e.g. \"sip:192.0.2.5:5060\" or \"sip:pbx.example.com;transport=udp\", or leave it empty",
        )
    })
}

pub(super) fn presence_server<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SipUri>, D::Error> {
    parsed(d, |s| {
        optional_uri(
            s,
            |u| u.user.is_none() && !u.secure,
            "a sip: URI of a host",
            "write the server's address, e.g. \"sip:presence.example.com:5060\" or \"sip:192.0.2.20;transport=tcp\", or leave it empty",
        )
    })
}

pub(super) fn server_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SipUri>, D::Error> {
    parsed(d, |s| {
        optional_uri(
            s,
            |_| true,
            "a SIP URI",
            "write the address phones reach us at, e.g. \"sip:192.0.2.10:5060\", or leave it empty",
        )
    })
}

pub(super) fn rule_presentity<'de, D: Deserializer<'de>>(d: D) -> Result<RulePattern, D::Error> {
    parsed(d, |s| {
        RulePattern::parse(s).ok_or_else(|| {
            BadValue::new(
                format!("{s:?} is not a SIP URI or \"*\""),
                "write \"sip:1001@example.com\" or \"*\"",
            )
        })
    })
}

pub(super) fn rule_watcher<'de, D: Deserializer<'de>>(d: D) -> Result<RulePattern, D::Error> {
    parsed(d, |s| {
        RulePattern::parse(s).ok_or_else(|| {
            BadValue::new(
                format!("{s:?} is not a SIP URI, \"*@domain\" or \"*\""),
                "write \"sip:1002@example.com\", \"*@example.com\" or \"*\"",
            )
        })
    })
}
