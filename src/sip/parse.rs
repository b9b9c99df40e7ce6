//! Wire parser (RFC 3261 §7, §18.3; RFC 4475 torture cases) with size limits.
//!
//! Parsing is lexical: start line, header lines (unfolded, compact names classified) and body cut
//! by Content-Length. Header *values* are interpreted later, on demand, so an unusual header we
//! never read can never make a message fail. When a message cannot be parsed but its headers
//! could be read, they are returned in [`ParseFailure::salvage`] so the caller can still answer
//! the sender with a 400 that names the problem.

use super::header::HeaderName;
use super::message::{Header, Headers, Message, Request, Response};
use super::text::is_token;
use super::uri::{Uri, UriError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole message, headers and body (UDP datagram or one framed stream message).
    pub max_message: usize,
    pub max_headers: usize,
    /// One header line after unfolding, and the start line.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 64 * 1024,
            max_headers: 128,
            max_line: 8 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Empty message")]
    Empty,
    #[error("Message Too Large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("Too many header fields (limit {0})")]
    TooManyHeaders(usize),
    #[error("Header line too long (limit {0} bytes)")]
    LineTooLong(usize),
    #[error("No blank line after the headers")]
    NoHeaderEnd,
    #[error("Malformed start line: {0}")]
    BadStartLine(&'static str),
    #[error("SIP version {0} not supported")]
    BadVersion(String),
    #[error("Bad Request-URI: {0}")]
    BadUri(UriError),
    #[error("Malformed header line: {0}")]
    BadHeaderLine(&'static str),
    #[error("Header {0} is not valid UTF-8")]
    NotUtf8(String),
    #[error("Content-Length is not a valid number")]
    BadContentLength,
    #[error("Conflicting Content-Length headers")]
    ConflictingContentLength,
    #[error("Body shorter than Content-Length ({got} of {declared} bytes)")]
    BodyTruncated { declared: usize, got: usize },
    #[error("Content-Length missing on a stream transport")]
    StreamWithoutContentLength,
    #[error("Bad status code {0}")]
    BadStatus(String),
}

impl ParseError {
    /// The status a request that failed this way is answered with (responses are dropped).
    pub fn status(&self) -> u16 {
        match self {
            ParseError::TooLarge(_) => 513,
            ParseError::BadVersion(_) => 505,
            ParseError::BadUri(_) => 400,
            _ => 400,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    pub error: ParseError,
    /// The headers, when they could be read and the message is a request: enough to answer.
    pub salvage: Option<Headers>,
}

impl ParseFailure {
    fn bare(error: ParseError) -> Self {
        ParseFailure {
            error,
            salvage: None,
        }
    }
}

enum StartLine {
    Request {
        method: String,
        uri: Result<Uri, UriError>,
    },
    Response {
        status: u16,
        reason: String,
    },
}

/// Parses one datagram (or one framed stream message). Per RFC 3261 §18.3, bytes beyond
/// Content-Length are discarded and a body shorter than it is an error.
pub fn parse_message(buf: &[u8], limits: &Limits) -> Result<Message, ParseFailure> {
    if buf.len() > limits.max_message {
        // The header block usually fits even when the body does not: read it (bounded by the
        // header and line limits) so the 513 can be answered.
        let salvage = salvage_headers(buf, limits);
        return Err(ParseFailure {
            error: ParseError::TooLarge(limits.max_message),
            salvage,
        });
    }
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(ParseFailure::bare(ParseError::Empty))?;
    let buf = &buf[start..];
    // RFC 3261 §7: the header fields end with an empty line. A datagram without one was cut
    // short (or is not SIP); it is refused, but its headers are still read for the answer.
    let (head_end, body_start, complete) = match find_header_end(buf) {
        Some((e, b)) => (e, b, true),
        None => (buf.len(), buf.len(), false),
    };
    let head = &buf[..head_end];
    let text = Utf8Head::new(head);
    let mut lines = LineIter::new(head);
    let first = lines.next().ok_or(ParseFailure::bare(ParseError::Empty))?;
    if first.len() > limits.max_line {
        return Err(ParseFailure::bare(ParseError::LineTooLong(limits.max_line)));
    }
    let start_line = parse_start_line(first);
    let is_request = !first.starts_with(b"SIP/");
    let headers = match parse_header_lines(lines, limits, &text) {
        Ok(h) => h,
        Err(error) => {
            // Too many header lines, or one too long (a huge Record-Route list): the lines
            // within the limits usually hold what an answer needs, so the sender hears why.
            // A broken header line (no colon, bad name, control characters, not UTF-8): the
            // others still address the 400 that names it.
            let salvage = match error {
                ParseError::TooManyHeaders(_)
                | ParseError::LineTooLong(_)
                | ParseError::BadHeaderLine(_)
                | ParseError::NotUtf8(_)
                    if is_request =>
                {
                    salvage_headers(buf, limits)
                }
                _ => None,
            };
            return Err(ParseFailure { error, salvage });
        }
    };
    let fail = |error: ParseError, headers: Headers| ParseFailure {
        error,
        salvage: if is_request { Some(headers) } else { None },
    };
    let start_line = match start_line {
        Ok(s) => s,
        Err(e) => return Err(fail(e, headers)),
    };
    if !complete {
        return Err(fail(ParseError::NoHeaderEnd, headers));
    }
    let available = &buf[body_start..];
    let body = match content_length(&headers) {
        // RFC 3261 §21.5.14: a message declared longer than we accept is 513, whatever
        // arrived of it.
        Ok(Some(cl)) if body_start.saturating_add(cl) > limits.max_message => {
            return Err(fail(ParseError::TooLarge(limits.max_message), headers))
        }
        Ok(Some(cl)) if cl > available.len() => {
            return Err(fail(
                ParseError::BodyTruncated {
                    declared: cl,
                    got: available.len(),
                },
                headers,
            ))
        }
        Ok(Some(cl)) => available[..cl].to_vec(),
        Ok(None) => available.to_vec(),
        Err(e) => return Err(fail(e, headers)),
    };
    match start_line {
        StartLine::Request { method, uri } => match uri {
            Ok(uri) => Ok(Message::Request(Request {
                method,
                uri,
                headers,
                body,
            })),
            Err(e) => Err(fail(ParseError::BadUri(e), headers)),
        },
        StartLine::Response { status, reason } => Ok(Message::Response(Response {
            status,
            reason,
            headers,
            body,
        })),
    }
}

/// What a stream buffer holds at its front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet.
    Incomplete,
    /// `n` bytes of CRLF keep-alive (RFC 5626 §3.5.1) to consume; `pong` when a double CRLF
    /// ping was seen and must be answered with a single CRLF.
    KeepAlive { len: usize, pong: bool },
    /// One whole message of `len` bytes.
    Message(usize),
}

/// Finds the first message in a stream buffer by its Content-Length (RFC 3261 §18.3). An error
/// means the stream cannot be framed any more and the connection must be closed.
pub fn frame_stream(buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
    let lead = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if lead > 0 {
        let pong = buf[..lead].windows(4).any(|w| w == b"\r\n\r\n");
        return Ok(Frame::KeepAlive { len: lead, pong });
    }
    let Some((head_end, body_start)) = find_header_end(buf) else {
        if buf.len() > limits.max_message {
            return Err(ParseError::TooLarge(limits.max_message));
        }
        return Ok(Frame::Incomplete);
    };
    let head = &buf[..head_end];
    let mut cl: Option<usize> = None;
    // The value of the Content-Length header being read, which may be folded over lines.
    let mut pending: Option<String> = None;
    let mut settle = |pending: &mut Option<String>| -> Result<(), ParseError> {
        if let Some(v) = pending.take() {
            let n = parse_cl_value(v.trim())?;
            if cl.is_some_and(|prev| prev != n) {
                return Err(ParseError::ConflictingContentLength);
            }
            cl = Some(n);
        }
        Ok(())
    };
    let mut lines = LineIter::new(head);
    lines.next();
    for line in lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some(v) = pending.as_mut() {
                v.push(' ');
                v.push_str(std::str::from_utf8(line).unwrap_or("").trim());
            }
            continue;
        }
        settle(&mut pending)?;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim();
        if HeaderName::classify(name) == HeaderName::ContentLength {
            pending = Some(
                std::str::from_utf8(&line[colon + 1..])
                    .unwrap_or("")
                    .to_string(),
            );
        }
    }
    settle(&mut pending)?;
    let cl = cl.ok_or(ParseError::StreamWithoutContentLength)?;
    let total = body_start.saturating_add(cl);
    if total > limits.max_message {
        return Err(ParseError::TooLarge(limits.max_message));
    }
    if buf.len() < total {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message(total))
}

/// Returns (end of the last header line, start of the body). Accepts bare LF line ends, which
/// some embedded stacks send.
fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    // From one line end to the next (memchr), not byte by byte: a header block is ~500
    // bytes and ~10 lines.
    for i in memchr::memchr_iter(b'\n', buf) {
        if buf.get(i + 1) == Some(&b'\n') {
            return Some((i, i + 2));
        }
        if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
            return Some((i, i + 3));
        }
    }
    None
}

struct LineIter<'a> {
    rest: &'a [u8],
}

impl<'a> LineIter<'a> {
    fn new(buf: &'a [u8]) -> Self {
        LineIter { rest: buf }
    }
}

impl<'a> Iterator for LineIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr::memchr(b'\n', self.rest) {
            Some(n) => (&self.rest[..n], &self.rest[n + 1..]),
            None => (self.rest, &self.rest[self.rest.len()..]),
        };
        self.rest = rest;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

fn parse_start_line(line: &[u8]) -> Result<StartLine, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::BadStartLine("not UTF-8"))?;
    if let Some(rest) = line.strip_prefix("SIP/") {
        let mut parts = rest.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if version != "2.0" {
            return Err(ParseError::BadVersion(format!("SIP/{version}")));
        }
        let code = parts.next().unwrap_or("");
        let reason = parts.next().unwrap_or("").to_string();
        // Reason-Phrase = *(reserved / unreserved / escaped / UTF8 / SP / HTAB): no controls.
        if reason
            .bytes()
            .any(|b| (b < b' ' && b != b'\t') || b == 0x7f)
        {
            return Err(ParseError::BadStartLine(
                "control character in the reason phrase",
            ));
        }
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadStatus(code.to_string()));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| ParseError::BadStatus(code.to_string()))?;
        if !(100..=699).contains(&status) {
            return Err(ParseError::BadStatus(code.to_string()));
        }
        return Ok(StartLine::Response { status, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly single spaces (RFC 4475
    // §3.1.2.9 "lwsstart", §3.1.2.8 "lwsruri").
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine(
            "request line must be Method SP Request-URI SP SIP/2.0",
        ));
    };
    if !is_token(method) {
        return Err(ParseError::BadStartLine("method is not a token"));
    }
    if !version.starts_with("SIP/") || version.len() < 5 {
        return Err(ParseError::BadStartLine("missing SIP version"));
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(ParseError::BadVersion(version.to_string()));
    }
    // RFC 3261 §19.1.1 (table 1): headers are not allowed in a Request-URI. Accepting them
    // (RFC 4475 §3.1.2.11 "escruri") would mean stripping them before forwarding; refusing with a
    // 400 that says why is simpler and safer for a proxy.
    let uri = Uri::parse(uri).and_then(|u| match &u {
        Uri::Sip(s) if s.headers.is_some() => Err(UriError::HeadersInRequestUri),
        _ => Ok(u),
    });
    Ok(StartLine::Request {
        method: method.to_string(),
        uri,
    })
}

/// The header block, checked for UTF-8 once: each header's name and value is then a slice
/// of that text instead of being checked again, two `from_utf8` calls per header line (~3 %
/// of a registration's instructions). A block that is not UTF-8 is checked line by line, so
/// the error still names the header.
struct Utf8Head<'a> {
    bytes: &'a [u8],
    text: Option<&'a str>,
}

impl<'a> Utf8Head<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Utf8Head {
            bytes,
            text: std::str::from_utf8(bytes).ok(),
        }
    }

    /// `part` (a slice of the block's bytes) as text.
    fn str_of(&self, part: &'a [u8]) -> Result<&'a str, std::str::Utf8Error> {
        let start = (part.as_ptr() as usize).wrapping_sub(self.bytes.as_ptr() as usize);
        let within = start <= self.bytes.len() && part.len() <= self.bytes.len() - start;
        match self.text.filter(|_| within) {
            // Every cut is at an ASCII byte (CR, LF, colon, blank), so `get` finds char
            // boundaries; were it not so, the slice is checked on its own.
            Some(text) => match text.get(start..start + part.len()) {
                Some(s) => Ok(s),
                None => std::str::from_utf8(part),
            },
            None => std::str::from_utf8(part),
        }
    }
}

fn parse_header_lines<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    limits: &Limits,
    text: &Utf8Head<'a>,
) -> Result<Headers, ParseError> {
    let mut headers: Vec<Header> = Vec::with_capacity(16);
    for line in lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // RFC 3261 §7.3.1 folding: a continuation line joins the previous value with SP.
            let last = headers.last_mut().ok_or(ParseError::BadHeaderLine(
                "continuation line before any header",
            ))?;
            let cont = text
                .str_of(line)
                .map_err(|_| ParseError::NotUtf8(last.name.to_string()))?
                .trim_matches([' ', '\t']);
            if !value_octets_ok(cont.as_bytes()) {
                return Err(ParseError::BadHeaderLine(
                    "control character in a header value",
                ));
            }
            if last.value.len() + cont.len() + 1 > limits.max_line {
                return Err(ParseError::LineTooLong(limits.max_line));
            }
            if !cont.is_empty() {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(cont);
            }
            continue;
        }
        if line.len() > limits.max_line {
            return Err(ParseError::LineTooLong(limits.max_line));
        }
        if headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders(limits.max_headers));
        }
        let colon = memchr::memchr(b':', line)
            .ok_or(ParseError::BadHeaderLine("no colon after the header name"))?;
        let name = text
            .str_of(&line[..colon])
            .map_err(|_| ParseError::BadHeaderLine("header name is not a token"))?
            .trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(ParseError::BadHeaderLine("header name is not a token"));
        }
        let value = text
            .str_of(&line[colon + 1..])
            .map_err(|_| ParseError::NotUtf8(name.to_string()))?
            .trim_matches([' ', '\t']);
        if !value_octets_ok(value.as_bytes()) {
            return Err(ParseError::BadHeaderLine(
                "control character in a header value",
            ));
        }
        let kind = HeaderName::classify(name);
        headers.push(Header {
            name: kind.spelled(name),
            kind,
            value: value.to_string(),
        });
    }
    Ok(Headers(headers))
}

/// A bare CR never belongs in a header value; NUL only as a quoted-pair (`\` NUL), which
/// RFC 3261 allows inside quoted strings (RFC 4475 §3.1.1.2 "intmeth").
fn value_octets_ok(v: &[u8]) -> bool {
    // The usual value has neither: one SIMD scan instead of a check per byte.
    if memchr::memchr2(b'\r', 0, v).is_none() {
        return true;
    }
    v.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => false,
        0 => i > 0 && v[i - 1] == b'\\',
        _ => true,
    })
}

/// A Content-Length value (RFC 3261 §20.14: `1*DIGIT`). A number too big for `usize` is still
/// a number: it saturates, so the caller answers 513 (beyond any limit), not 400.
fn parse_cl_value(v: &str) -> Result<usize, ParseError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadContentLength);
    }
    // All digits: the only way `parse` fails is overflow.
    Ok(v.parse().unwrap_or(usize::MAX))
}

fn content_length(headers: &Headers) -> Result<Option<usize>, ParseError> {
    let mut cl = None;
    for v in headers.all(HeaderName::ContentLength) {
        let n = parse_cl_value(v.trim())?;
        if cl.is_some_and(|prev| prev != n) {
            return Err(ParseError::ConflictingContentLength);
        }
        cl = Some(n);
    }
    Ok(cl)
}

/// Best effort for a request that cannot be read whole (oversized, over the header limits,
/// or with a broken header line): the header fields that can be read (at most `max_headers`,
/// each within `max_line`), skipping the broken ones, to answer 513 or 400.
fn salvage_headers(buf: &[u8], limits: &Limits) -> Option<Headers> {
    if buf.starts_with(b"SIP/") {
        return None;
    }
    // A datagram is cut at the socket, so the header block may be incomplete: keep the lines
    // that arrived whole, drop the one the cut went through.
    let end = find_header_end(buf)
        .map(|(e, _)| e)
        .or_else(|| buf.iter().rposition(|&b| b == b'\n'))?;
    let text = Utf8Head::new(&buf[..end]);
    let mut lines = LineIter::new(&buf[..end]);
    lines.next();
    // One header field at a time (its line and any continuation lines): a field that does
    // not parse is left out, the others are kept.
    let mut kept: Vec<Header> = Vec::new();
    let mut field: Vec<&[u8]> = Vec::new();
    let take = |field: &mut Vec<&[u8]>, kept: &mut Vec<Header>| {
        if let Ok(h) = parse_header_lines(field.drain(..), limits, &text) {
            kept.extend(h.0);
        }
    };
    for line in lines {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if continuation {
            if !field.is_empty() {
                field.push(line);
            }
            continue;
        }
        take(&mut field, &mut kept);
        if kept.len() >= limits.max_headers {
            break;
        }
        field.push(line);
    }
    take(&mut field, &mut kept);
    kept.truncate(limits.max_headers);
    Some(Headers(kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::HasHeaders;

    fn req(s: &str) -> Request {
        match parse_message(s.as_bytes(), &Limits::default()).unwrap() {
            Message::Request(r) => r,
            _ => panic!("not a request"),
        }
    }

    const REGISTER: &str = "REGISTER sip:example.test SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1, SIP/2.0/TCP 10.0.0.1\r\n\
        v: SIP/2.0/UDP [::1]:5062;branch=z9hG4bK2\r\n\
        f: \"A, B\" <sip:1001@example.test>;tag=x\r\n\
        t: <sip:1001@example.test>\r\n\
        i: abc@host\r\n\
        CSeq: 1 REGISTER\r\n\
        Subject: a\r\n  folded\r\n\tline\r\n\
        X-Custom :  kept as is  \r\n\
        l: 4\r\n\r\nbodyEXTRA";

    #[test]
    fn rfc3261_7_parses_compact_folded_and_multi_value_headers() {
        let r = req(REGISTER);
        assert_eq!(r.method, "REGISTER");
        assert_eq!(r.headers.list(HeaderName::Via).len(), 3);
        assert_eq!(r.vias().unwrap()[2].port, Some(5062));
        assert_eq!(r.headers.get(HeaderName::Subject), Some("a folded line"));
        assert_eq!(r.headers.get_named("x-custom"), Some("kept as is"));
        assert_eq!(r.from_hdr().unwrap().display.as_deref(), Some("A, B"));
        assert_eq!(r.call_id().unwrap(), "abc@host");
        // §18.3: bytes beyond Content-Length are discarded.
        assert_eq!(r.body, b"body");
        r.validate().unwrap();
    }

    #[test]
    fn printing_keeps_names_order_and_fixes_content_length() {
        let r = req(REGISTER);
        let printed = String::from_utf8(r.to_bytes()).unwrap();
        assert!(printed.starts_with("REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP"));
        assert!(printed.contains("\r\nv: SIP/2.0/UDP [::1]:5062;branch=z9hG4bK2\r\n"));
        assert!(printed.contains("\r\nX-Custom: kept as is\r\n"));
        assert!(printed.contains("\r\nl: 4\r\n\r\nbody"));
        let again = req(&printed);
        assert_eq!(again, r);
    }

    #[test]
    fn rfc3261_18_3_short_body_is_an_error_that_can_be_answered() {
        let m = "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 10\r\n\r\nshort";
        let e = parse_message(m.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(
            e.error,
            ParseError::BodyTruncated {
                declared: 10,
                got: 5
            }
        );
        assert!(e.salvage.is_some());
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_message: 300,
            max_headers: 3,
            max_line: 40,
        };
        let big = format!("OPTIONS sip:x SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(400));
        assert_eq!(
            parse_message(big.as_bytes(), &limits).unwrap_err().error,
            ParseError::TooLarge(300)
        );
        let long = format!("OPTIONS sip:x SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(50));
        assert_eq!(
            parse_message(long.as_bytes(), &limits).unwrap_err().error,
            ParseError::LineTooLong(40)
        );
        let many = "OPTIONS sip:x SIP/2.0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        let e = parse_message(many.as_bytes(), &limits).unwrap_err();
        assert_eq!(e.error, ParseError::TooManyHeaders(3));
        // What fits the limits is kept to answer with.
        let kept = e.salvage.expect("headers salvaged");
        assert_eq!(kept.0.len(), 3);
        assert_eq!(kept.get_named("c"), Some("3"));
        let e = parse_message(long.as_bytes(), &limits).unwrap_err();
        assert!(e.salvage.is_some_and(|h| h.0.is_empty()));
        // A broken line is left out, the rest kept.
        let broken = "OPTIONS sip:x SIP/2.0\r\nA: 1\r\nno colon here\r\nB: 2\r\n  folded\r\n\r\n";
        let e = parse_message(broken.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(
            e.error,
            ParseError::BadHeaderLine("no colon after the header name")
        );
        let kept = e.salvage.expect("headers salvaged");
        assert_eq!(kept.0.len(), 2);
        assert_eq!(kept.get_named("b"), Some("2 folded"));
        let latin1 = b"OPTIONS sip:x SIP/2.0\r\nA: caf\xe9\r\nB: 2\r\n\r\n";
        let e = parse_message(latin1, &Limits::default()).unwrap_err();
        assert_eq!(e.error, ParseError::NotUtf8("A".into()));
        assert_eq!(e.salvage.expect("headers salvaged").0.len(), 1);
        // Never for a response (they are dropped, not answered).
        let resp = "SIP/2.0 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert!(parse_message(resp.as_bytes(), &limits)
            .unwrap_err()
            .salvage
            .is_none());
    }

    #[test]
    fn utf8_header_values_are_slices_of_the_checked_block() {
        // Multi-byte characters next to the cuts (colon, blanks, folding): each value is the
        // same text a line-by-line check would give.
        let raw = "OPTIONS sip:x SIP/2.0\r\nFrom: \"Zoë\" <sip:z@x>;tag=1\r\nSubject: été\r\n \tçà\r\nX-U:\tü\r\nContent-Length: 0\r\n\r\n";
        let Ok(Message::Request(r)) = parse_message(raw.as_bytes(), &Limits::default()) else {
            panic!("does not parse");
        };
        assert_eq!(
            r.headers.get(HeaderName::From),
            Some("\"Zoë\" <sip:z@x>;tag=1")
        );
        assert_eq!(r.headers.get(HeaderName::Subject), Some("été çà"));
        assert_eq!(r.headers.get_named("x-u"), Some("ü"));
        let head = b"A: \xc3\xa9\r\nB: 2";
        let text = Utf8Head::new(head);
        assert_eq!(text.str_of(&head[3..5]), Ok("é"));
        // A slice from elsewhere is checked on its own.
        assert_eq!(text.str_of(b"other"), Ok("other"));
        // Half a character is not text.
        assert!(text.str_of(&head[3..4]).is_err());
    }

    #[test]
    fn stream_framing_by_content_length_and_keepalives() {
        let limits = Limits::default();
        assert_eq!(
            frame_stream(b"\r\n\r\nOPTIONS", &limits),
            Ok(Frame::KeepAlive { len: 4, pong: true })
        );
        assert_eq!(
            frame_stream(b"\r\n", &limits),
            Ok(Frame::KeepAlive {
                len: 2,
                pong: false
            })
        );
        let m = b"OPTIONS sip:x SIP/2.0\r\nl: 3\r\n\r\nabcNEXT";
        assert_eq!(frame_stream(m, &limits), Ok(Frame::Message(m.len() - 4)));
        assert_eq!(frame_stream(&m[..20], &limits), Ok(Frame::Incomplete));
        assert_eq!(frame_stream(&m[..30], &limits), Ok(Frame::Incomplete));
        assert_eq!(
            frame_stream(b"OPTIONS sip:x SIP/2.0\r\n\r\n", &limits),
            Err(ParseError::StreamWithoutContentLength)
        );
        assert_eq!(
            frame_stream(
                b"OPTIONS sip:x SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\n",
                &limits
            ),
            Err(ParseError::ConflictingContentLength)
        );
    }

    #[test]
    fn responses_parse_and_bad_status_is_refused() {
        let m = "SIP/2.0 401 Unauthorized Now\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n";
        match parse_message(m.as_bytes(), &Limits::default()).unwrap() {
            Message::Response(r) => {
                assert_eq!(r.status, 401);
                assert_eq!(r.reason, "Unauthorized Now");
            }
            _ => panic!(),
        }
        let bad = "SIP/2.0 4294967301 Huge\r\n\r\n";
        assert!(parse_message(bad.as_bytes(), &Limits::default()).is_err());
        let bad = "SIP/2.0 099 Low\r\n\r\n";
        assert!(parse_message(bad.as_bytes(), &Limits::default()).is_err());
    }

    /// Issue 11, RFC 3261 §20.14 / §21.5.14: a Content-Length is `1*DIGIT`; one beyond what we
    /// accept (also beyond u64) is a message too large (513), not a malformed number (400),
    /// on a datagram and on a stream. A value that is no number stays 400.
    #[test]
    fn rfc3261_21_5_14_huge_content_length_is_513_not_a_bad_number() {
        let msg = |cl: &str| {
            format!(
                "MESSAGE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: {cl}\r\n\r\nhi"
            )
        };
        let limits = Limits::default();
        for cl in [
            "1000000000000",
            "18446744073709551616",
            "99999999999999999999999999999999",
            "70000",
        ] {
            let e = parse_message(msg(cl).as_bytes(), &limits).unwrap_err();
            assert_eq!(e.error, ParseError::TooLarge(limits.max_message), "{cl}");
            assert_eq!(e.error.status(), 513, "{cl}");
            assert!(e.salvage.is_some_and(|h| h.has(HeaderName::Via)), "{cl}");
            assert_eq!(
                frame_stream(msg(cl).as_bytes(), &limits),
                Err(ParseError::TooLarge(limits.max_message)),
                "{cl}"
            );
        }
        for cl in ["-1", "1e3", "0x10", ""] {
            let e = parse_message(msg(cl).as_bytes(), &limits).unwrap_err();
            assert_eq!(e.error, ParseError::BadContentLength, "{cl:?}");
            assert_eq!(e.error.status(), 400);
        }
    }
}
