//! Caller identity at the edge of the trust domain (RFC 3325): who a call is from, as the
//! proxy vouches for it to the PBX.
//!
//! The trust domain is this proxy, the sources in `[auth] trusted` that are trusted for
//! calls and the PBX of `[proxy] upstream`. Phones are outside it: whatever identity headers
//! they write (`P-Asserted-Identity`, `P-Preferred-Identity`, `Remote-Party-ID`,
//! `Diversion`) are removed, and the proxy asserts the identity it authenticated instead.
//! Those headers from a trusted source (the PBX) pass untouched.
//!
//! Pure functions: no sockets, no configuration; the server core decides who is trusted.

use super::ProxyError;
use crate::sip::{Headers, Host, NameAddr};

/// RFC 3325 §9.1.
pub const P_ASSERTED_IDENTITY: &str = "P-Asserted-Identity";

/// Headers that claim who a request is from and that only a trusted source may set: RFC 3325
/// (`P-Asserted-Identity`, `P-Preferred-Identity`), the older `Remote-Party-ID`
/// (draft-ietf-sip-privacy-04, `;screen=yes` means "checked") and `Diversion` (RFC 5806:
/// who forwarded the call, which PBXs bill and show). None of them has a compact form.
pub const IDENTITY_HEADERS: [&str; 4] = [
    P_ASSERTED_IDENTITY,
    "P-Preferred-Identity",
    "Remote-Party-ID",
    "Diversion",
];

/// RFC 3325 §5, §9.1: removes every identity header (any spelling of the name, every
/// occurrence, every comma-separated value) a request from outside the trust domain carries.
/// Returns how many header lines went.
pub fn strip_identity(headers: &mut Headers) -> usize {
    let before = headers.0.len();
    headers.0.retain(|h| !is_identity_header(&h.name));
    before - headers.0.len()
}

fn is_identity_header(name: &str) -> bool {
    IDENTITY_HEADERS
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// The `P-Asserted-Identity` value for an authenticated user (RFC 3325 §9.1:
/// `name-addr`): the display name the caller wrote in its From (not asserted, shown only),
/// quoted, and `sip:USER@DOMAIN` with the user escaped as RFC 3261 §25.1 `user` requires.
pub fn asserted_identity(display: Option<&str>, user: &str, domain: &str) -> String {
    let uri = format!("sip:{}@{domain}", escape_user(user));
    let shown: String = display
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let shown = shown.trim();
    if shown.is_empty() {
        format!("<{uri}>")
    } else {
        format!("{} <{uri}>", crate::sip::text::quote(shown))
    }
}

/// RFC 3325 §9.1 at the proxy that authenticated the caller: the caller's own identity
/// headers are gone and exactly one `P-Asserted-Identity` (`value`) goes on.
pub fn assert_identity(headers: &mut Headers, value: String) {
    strip_identity(headers);
    headers.push_raw(P_ASSERTED_IDENTITY, value);
}

/// RFC 3325 §7 / RFC 3323 §4.2: whether the request asks for its asserted identity to be
/// kept from anyone outside the trust domain (`Privacy: id`, values separated by `;`, in one
/// header or several).
pub fn wants_privacy_id(headers: &Headers) -> bool {
    headers
        .0
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Privacy"))
        .flat_map(|h| h.value.split([';', ',']))
        .any(|v| v.trim().eq_ignore_ascii_case("id"))
}

/// RFC 3325 §7 for a request leaving the trust domain (to a phone): with `Privacy: id` its
/// `P-Asserted-Identity` is removed; without, it stays (phones show it as the caller).
/// Returns whether anything was removed.
pub fn leave_trust_domain(headers: &mut Headers) -> bool {
    if !wants_privacy_id(headers) {
        return false;
    }
    let before = headers.0.len();
    headers
        .0
        .retain(|h| !h.name.eq_ignore_ascii_case(P_ASSERTED_IDENTITY));
    before != headers.0.len()
}

/// For a user's own calls (RFC 3325 §9.1: the proxy asserts only what it authenticated): the
/// From must name the authenticated `user` in one of our domains (`ours`, a §19.1.4 host
/// comparison: case-insensitive names, addresses by value). The user part is compared
/// unescaped.
pub fn check_caller(
    from: &NameAddr,
    user: &str,
    ours: impl Fn(&Host) -> bool,
) -> Result<(), ProxyError> {
    let Some(uri) = from.uri.as_sip() else {
        return Err(ProxyError::WrongIdentity);
    };
    let from_user = uri.user.as_deref().map(crate::sip::text::unescape);
    if from_user.as_deref() != Some(user) {
        return Err(ProxyError::WrongIdentity);
    }
    if !ours(&uri.host) {
        return Err(ProxyError::ForeignFromDomain);
    }
    Ok(())
}

/// RFC 3261 §25.1 `user`: unreserved, `user-unreserved` and escaped characters; anything
/// else is `%HH`-escaped.
fn escape_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{parse_message, Limits, Message, Request};

    fn req(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:5551234@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKid1\r\n\
             Max-Forwards: 70\r\n\
             From: \"Alice\" <sip:1001@example.com>;tag=f1\r\n\
             To: <sip:5551234@example.com>\r\nCall-ID: id1\r\nCSeq: 1 INVITE\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        );
        match parse_message(text.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn named<'a>(r: &'a Request, name: &str) -> Vec<&'a str> {
        r.headers
            .0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
            .collect()
    }

    const FORGED: &str = "P-Asserted-Identity: <sip:1002@example.com>, <tel:+15550001>\r\n\
         p-asserted-identity: \"Boss\" <sip:boss@example.com>\r\n\
         P-Preferred-Identity: <sip:1003@example.com>\r\n\
         Remote-Party-ID: \"CEO\" <sip:1000@example.com>;party=calling;screen=yes;privacy=off\r\n\
         REMOTE-PARTY-ID: <sip:1004@example.com>;screen=yes\r\n\
         Diversion: <sip:1005@example.com>;reason=unconditional\r\n";

    #[test]
    fn rfc3325_5_identity_headers_from_outside_the_trust_domain_all_go() {
        let mut r = req(FORGED);
        let kept = r.headers.0.len() - 6;
        assert_eq!(strip_identity(&mut r.headers), 6);
        assert_eq!(r.headers.0.len(), kept);
        for name in IDENTITY_HEADERS {
            assert!(named(&r, name).is_empty(), "{name} left");
        }
        // What is not an identity header stays, in order.
        assert_eq!(
            r.headers.0.iter().map(|h| &*h.name).collect::<Vec<_>>(),
            [
                "Via",
                "Max-Forwards",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Content-Length"
            ]
        );
        // Nothing to remove: nothing changes.
        assert_eq!(strip_identity(&mut r.headers), 0);
    }

    #[test]
    fn rfc3325_9_1_the_authenticated_identity_replaces_whatever_the_caller_claimed() {
        let mut r = req(FORGED);
        let alice = asserted_identity(Some("Alice"), "1001", "example.com");
        assert_eq!(alice, "\"Alice\" <sip:1001@example.com>");
        assert_identity(&mut r.headers, alice);
        assert_eq!(
            named(&r, P_ASSERTED_IDENTITY),
            ["\"Alice\" <sip:1001@example.com>"]
        );
        for name in &IDENTITY_HEADERS[1..] {
            assert!(named(&r, name).is_empty(), "{name} left");
        }
    }

    #[test]
    fn rfc3325_9_1_the_display_name_is_quoted_and_the_user_escaped() {
        // No display name: a bare name-addr.
        assert_eq!(
            asserted_identity(None, "1001", "example.com"),
            "<sip:1001@example.com>"
        );
        assert_eq!(
            asserted_identity(Some("  "), "1001", "example.com"),
            "<sip:1001@example.com>"
        );
        // Quotes and backslashes escaped, control characters dropped: the header cannot be
        // broken out of.
        assert_eq!(
            asserted_identity(Some("A \"B\" \\ C\r\nVia: x"), "1001", "example.com"),
            "\"A \\\"B\\\" \\\\ CVia: x\" <sip:1001@example.com>"
        );
        assert_eq!(
            asserted_identity(Some("Zoë"), "front desk@1", "example.com"),
            "\"Zoë\" <sip:front%20desk%401@example.com>"
        );
    }

    #[test]
    fn rfc3325_7_privacy_id_keeps_the_asserted_identity_inside_the_trust_domain() {
        for privacy in [
            "Privacy: id\r\n",
            "Privacy: header;ID\r\n",
            "Privacy: none\r\nprivacy: id; critical\r\n",
        ] {
            let mut r = req(&format!(
                "P-Asserted-Identity: \"Alice\" <sip:1001@example.com>\r\n{privacy}"
            ));
            assert!(wants_privacy_id(&r.headers), "{privacy}");
            assert!(leave_trust_domain(&mut r.headers), "{privacy}");
            assert!(named(&r, P_ASSERTED_IDENTITY).is_empty(), "{privacy}");
            // The Privacy header itself stays (RFC 3323 §5.2 is the privacy service's job).
            assert!(!named(&r, "Privacy").is_empty());
        }
        // No privacy asked (or another kind): a phone still sees who calls.
        for privacy in [
            "",
            "Privacy: none\r\n",
            "Privacy: user;header\r\n",
            "Privacy: identity\r\n",
        ] {
            let mut r = req(&format!(
                "P-Asserted-Identity: \"Alice\" <sip:1001@example.com>\r\n{privacy}"
            ));
            assert!(!leave_trust_domain(&mut r.headers), "{privacy}");
            assert_eq!(named(&r, P_ASSERTED_IDENTITY).len(), 1, "{privacy}");
        }
    }

    #[test]
    fn rfc3325_9_1_a_user_calls_only_as_itself_from_one_of_our_domains() {
        let ours = |h: &Host| {
            [
                Host::Name("example.com".into()),
                Host::parse("192.0.2.10").unwrap(),
            ]
            .iter()
            .any(|d| d.matches(h))
        };
        let from = |v: &str| NameAddr::parse(v).unwrap();
        for good in [
            "<sip:1001@example.com>;tag=a",
            "\"Alice\" <sip:1001@EXAMPLE.com:5060;transport=udp>;tag=a",
            "<sip:1001@192.0.2.10>;tag=a",
            "<sips:1001@example.com>;tag=a",
            "<sip:%31001@example.com>;tag=a",
        ] {
            assert_eq!(check_caller(&from(good), "1001", ours), Ok(()), "{good}");
        }
        for (bad, e) in [
            (
                "<sip:1001@evil.example>;tag=a",
                ProxyError::ForeignFromDomain,
            ),
            (
                "<sip:1001@example.com.evil.example>;tag=a",
                ProxyError::ForeignFromDomain,
            ),
            ("<sip:1001@192.0.2.11>;tag=a", ProxyError::ForeignFromDomain),
            ("<sip:1002@example.com>;tag=a", ProxyError::WrongIdentity),
            ("<sip:example.com>;tag=a", ProxyError::WrongIdentity),
            ("<tel:1001>;tag=a", ProxyError::WrongIdentity),
        ] {
            assert_eq!(
                check_caller(&from(bad), "1001", ours),
                Err(e.clone()),
                "{bad}"
            );
            assert_eq!(e.status(), 403);
        }
        assert_eq!(
            ProxyError::ForeignFromDomain.to_string(),
            "Forbidden: From domain is not ours"
        );
    }
}
