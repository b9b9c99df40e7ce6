//! Lexical helpers shared by the header and URI parsers (RFC 3261 §25.1).
//!
//! They work on `&str` slices of an already-unfolded header value; none allocates unless it has
//! to unescape.

/// Splits a header value at top-level commas: commas inside quoted strings or `<...>` do not
/// split (RFC 3261 §7.3.1: `Contact: "Doe, John" <sip:j@x>, <sip:k@y>` is two values).
/// Empty elements (`a,,b`) are skipped, as RFC 7230-style lists allow.
pub fn split_commas(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut start = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => in_angle = true,
            b'>' if !in_quote => in_angle = false,
            b',' if !in_quote && !in_angle => {
                let part = value[start..i].trim();
                if !part.is_empty() {
                    out.push(part);
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let part = value[start.min(value.len())..].trim();
    if !part.is_empty() {
        out.push(part);
    }
    out
}

/// True when the quotes in `value` balance (escapes honoured) — an unterminated quoted string
/// makes a header unparseable (RFC 4475 §3.1.2.7 "quotbal").
pub fn quotes_balanced(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut in_quote = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quote => i += 1,
            b'"' => in_quote = !in_quote,
            _ => {}
        }
        i += 1;
    }
    !in_quote
}

/// RFC 3261 `token` characters.
pub fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Reads a quoted-string starting at `s[0] == '"'`; returns the unescaped content and the
/// number of bytes consumed (including both quotes).
pub fn read_quoted(s: &str) -> Option<(String, usize)> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut out = String::new();
    let mut i = 1;
    let mut run_start = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                out.push_str(&s[run_start..i]);
                // quoted-pair: any char except CR/LF may be escaped; take the whole UTF-8 char.
                let rest = &s[i + 1..];
                let c = rest.chars().next()?;
                if c == '\r' || c == '\n' {
                    return None;
                }
                out.push(c);
                i += 1 + c.len_utf8();
                run_start = i;
            }
            b'"' => {
                out.push_str(&s[run_start..i]);
                return Some((out, i + 1));
            }
            _ => i += 1,
        }
    }
    None
}

/// Quotes `s` for use as a quoted-string, escaping `"` and `\`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Decodes `%HH` escapes (RFC 3261 §19.1.4 compares URIs unescaped) with `percent-encoding`.
/// Invalid escapes are kept literally: the caller compares, it does not validate. Bytes that
/// decode to invalid UTF-8 become U+FFFD.
pub fn unescape(s: &str) -> std::borrow::Cow<'_, str> {
    // Nearly every URI part has no escape: then it is its own decoding, and the decoder's
    // UTF-8 check of text that is already a `str` (20 per registration) is skipped.
    if !s.as_bytes().contains(&b'%') {
        return std::borrow::Cow::Borrowed(s);
    }
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

/// Generic `;name=value` parameter list, order and case preserved as received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// Parses `;a=b;c;d="q"` (the leading `;` optional). Values may be quoted strings (kept
    /// with their quotes so printing is exact) or tokens/hosts.
    pub fn parse(s: &str) -> Result<Params, &'static str> {
        let mut out = Vec::new();
        let mut rest = s.trim();
        while !rest.is_empty() {
            rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
            if rest.is_empty() {
                break;
            }
            let name_end = rest
                .find(|c: char| c == '=' || c == ';' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = &rest[..name_end];
            if name.is_empty() || !name.bytes().all(|b| is_token_char(b) || b == b'[') {
                return Err("malformed parameter name");
            }
            rest = rest[name_end..].trim_start();
            let mut value = None;
            if let Some(after_eq) = rest.strip_prefix('=') {
                let after_eq = after_eq.trim_start();
                if after_eq.starts_with('"') {
                    let (_, used) = read_quoted(after_eq).ok_or("unterminated quoted parameter")?;
                    value = Some(after_eq[..used].to_string());
                    rest = after_eq[used..].trim_start();
                } else {
                    let end = after_eq
                        .find(|c: char| c == ';' || c.is_whitespace())
                        .unwrap_or(after_eq.len());
                    if end == 0 {
                        return Err("parameter has an empty value");
                    }
                    value = Some(after_eq[..end].to_string());
                    rest = after_eq[end..].trim_start();
                }
            }
            if !rest.is_empty() && !rest.starts_with(';') {
                return Err("junk between parameters");
            }
            out.push((name.to_string(), value));
        }
        Ok(Params(out))
    }

    /// Case-insensitive lookup; `Some(None)` for a flag parameter, quotes stripped from values.
    pub fn get(&self, name: &str) -> Option<Option<String>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref().map(unquote_value))
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The value of a parameter, quotes stripped (`None` when absent or a flag).
    pub fn value(&self, name: &str) -> Option<String> {
        self.get(name).flatten()
    }

    pub fn set(&mut self, name: &str, value: Option<String>) {
        if let Some(slot) = self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            slot.1 = value;
        } else {
            self.0.push((name.to_string(), value));
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn write(&self, out: &mut String) {
        for (n, v) in &self.0 {
            out.push(';');
            out.push_str(n);
            if let Some(v) = v {
                out.push('=');
                out.push_str(v);
            }
        }
    }
}

fn unquote_value(v: &str) -> String {
    if v.starts_with('"') {
        if let Some((s, _)) = read_quoted(v) {
            return s;
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3261_7_3_1_commas_inside_quotes_and_angles_do_not_split() {
        let v = r#""Doe, John" <sip:j@x;a=1,2>;q=0.5 , <sip:k@y>,,"#;
        assert_eq!(
            split_commas(v),
            vec![r#""Doe, John" <sip:j@x;a=1,2>;q=0.5"#, "<sip:k@y>"]
        );
    }

    #[test]
    fn quoted_string_escapes_are_decoded() {
        let (s, used) = read_quoted(r#""a \"b\" \\ c" rest"#).unwrap();
        assert_eq!(s, r#"a "b" \ c"#);
        assert_eq!(used, 14);
        assert!(read_quoted(r#""never ends"#).is_none());
        assert_eq!(quote(r#"x"y\"#), r#""x\"y\\""#);
    }

    #[test]
    fn params_keep_order_and_quoted_values() {
        let p = Params::parse(r#";lr;Transport=TCP;x="a;b";expires=60"#).unwrap();
        assert_eq!(p.get("lr"), Some(None));
        assert_eq!(p.value("transport").as_deref(), Some("TCP"));
        assert_eq!(p.value("x").as_deref(), Some("a;b"));
        let mut out = String::new();
        p.write(&mut out);
        assert_eq!(out, r#";lr;Transport=TCP;x="a;b";expires=60"#);
        assert!(Params::parse(";=x").is_err());
        assert!(Params::parse(";a=\"open").is_err());
    }

    #[test]
    fn unescape_decodes_valid_escapes_only() {
        assert_eq!(unescape("a%20b"), "a b");
        assert_eq!(unescape("%zz%4"), "%zz%4");
        assert_eq!(unescape("sip%3Auser"), "sip:user");
    }

    #[test]
    fn unescape_borrows_text_without_escapes() {
        for s in ["", "alice", "transport=udp", "ünïcode", "a+b=c"] {
            assert!(
                matches!(unescape(s), std::borrow::Cow::Borrowed(b) if b == s),
                "{s}"
            );
        }
        assert_eq!(unescape("%C3%BC"), "ü");
        assert_eq!(unescape("%FF"), "\u{FFFD}");
    }
}
