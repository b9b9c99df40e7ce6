//! Message summary (RFC 3842 §5.2, `application/simple-message-summary`): the body of
//! `message-summary` NOTIFYs and PUBLISHes (message-waiting lamps).
//!
//! ```text
//! Messages-Waiting: yes                 required, first
//! Message-Account: sip:alice@vm.example optional
//! Voice-Message: 2/8 (0/2)              new/old (urgent new/urgent old), per RFC 3458 class
//!                                       optional empty line, then
//! Extra-Header: value                   other headers, kept in order
//! ```
//!
//! Lines may end in CRLF or LF; printing uses CRLF. Header names are case-insensitive. An
//! unknown `Name: value` line before the empty line is kept as an extra header (some
//! servers write those without the empty line); anything that is not a header line is
//! refused, naming the line.

use super::{check_len, quote, BodyError};

/// Media type of message summaries.
pub const CONTENT_TYPE: &str = "application/simple-message-summary";

/// The message-context classes of RFC 3458 §3 (the summary line names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageClass {
    Voice,
    Fax,
    Pager,
    Multimedia,
    Text,
    None,
}

impl MessageClass {
    const ALL: [MessageClass; 6] = [
        MessageClass::Voice,
        MessageClass::Fax,
        MessageClass::Pager,
        MessageClass::Multimedia,
        MessageClass::Text,
        MessageClass::None,
    ];

    /// The summary line's header name, e.g. `Voice-Message`.
    pub fn header_name(self) -> &'static str {
        match self {
            MessageClass::Voice => "Voice-Message",
            MessageClass::Fax => "Fax-Message",
            MessageClass::Pager => "Pager-Message",
            MessageClass::Multimedia => "Multimedia-Message",
            MessageClass::Text => "Text-Message",
            MessageClass::None => "None",
        }
    }

    fn from_header(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.header_name().eq_ignore_ascii_case(name))
    }
}

/// One summary line: `Class: new/old (urgent_new/urgent_old)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub class: MessageClass,
    pub new: u32,
    pub old: u32,
    /// `(urgent new, urgent old)` when given.
    pub urgent: Option<(u32, u32)>,
}

/// A whole message-summary body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSummary {
    pub waiting: bool,
    /// The `Message-Account` URI.
    pub account: Option<String>,
    pub summaries: Vec<Summary>,
    /// Other headers (name, value), in order.
    pub headers: Vec<(String, String)>,
}

impl MessageSummary {
    /// `Messages-Waiting: no` and nothing else: the document when nobody published.
    pub fn idle() -> Self {
        MessageSummary {
            waiting: false,
            account: None,
            summaries: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Prints the body (CRLF line ends).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 + self.summaries.len() * 32);
        out.push_str("Messages-Waiting: ");
        out.push_str(if self.waiting { "yes" } else { "no" });
        out.push_str("\r\n");
        if let Some(a) = &self.account {
            out.push_str("Message-Account: ");
            push_value(&mut out, a);
            out.push_str("\r\n");
        }
        for s in &self.summaries {
            out.push_str(s.class.header_name());
            out.push_str(&format!(": {}/{}", s.new, s.old));
            if let Some((un, uo)) = s.urgent {
                out.push_str(&format!(" ({un}/{uo})"));
            }
            out.push_str("\r\n");
        }
        if !self.headers.is_empty() {
            out.push_str("\r\n");
            for (name, value) in &self.headers {
                push_value(&mut out, name);
                out.push_str(": ");
                push_value(&mut out, value);
                out.push_str("\r\n");
            }
        }
        out
    }
}

/// Appends `text` with control characters (CR, LF...) turned into spaces, so a value can
/// never start a line of its own.
fn push_value(out: &mut String, text: &str) {
    out.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
}

/// RFC 3261 `token` characters (header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// `Name : value` → (name, value), both trimmed.
fn header(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let name = name.trim_end_matches([' ', '\t']);
    is_token(name).then(|| (name, value.trim_matches([' ', '\t'])))
}

/// A line quoted in an error.
fn line_err(n: usize, line: &str, what: &str) -> BodyError {
    BodyError::invalid(format!(
        "message-summary line {n} '{}': {what}",
        quote(line)
    ))
}

/// `a / b` → (a, b).
fn pair(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('/')?;
    let num = |x: &str| {
        let x = x.trim_matches([' ', '\t']);
        (!x.is_empty() && x.bytes().all(|c| c.is_ascii_digit()))
            .then(|| x.parse::<u32>().ok())
            .flatten()
    };
    Some((num(a)?, num(b)?))
}

/// New, old and (urgent new, urgent old) counts of a summary line.
type Counts = (u32, u32, Option<(u32, u32)>);

/// `new/old` or `new/old (urgent_new/urgent_old)`.
fn counts(value: &str) -> Option<Counts> {
    match value.split_once('(') {
        None => {
            let (n, o) = pair(value)?;
            Some((n, o, None))
        }
        Some((main, rest)) => {
            let inner = rest.trim_end_matches([' ', '\t']).strip_suffix(')')?;
            let (n, o) = pair(main)?;
            Some((n, o, Some(pair(inner)?)))
        }
    }
}

/// Parses and validates a message-summary body.
pub fn parse(body: &[u8]) -> Result<MessageSummary, BodyError> {
    check_len(body)?;
    let text = std::str::from_utf8(body).map_err(|e| {
        BodyError::invalid(format!(
            "message-summary is not UTF-8 (byte {})",
            e.valid_up_to()
        ))
    })?;
    // Leading blank lines or indentation before the first header are tolerated.
    let text = text.trim_start_matches([' ', '\t', '\r', '\n']);
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l));

    let mut summary = MessageSummary::idle();
    let (n, line) = lines.next().unwrap_or((1, ""));
    match header(line) {
        Some((name, value)) if name.eq_ignore_ascii_case("Messages-Waiting") => {
            summary.waiting = if value.eq_ignore_ascii_case("yes") {
                true
            } else if value.eq_ignore_ascii_case("no") {
                false
            } else {
                return Err(line_err(n, line, "Messages-Waiting must be yes or no"));
            };
        }
        _ => return Err(line_err(n, line, "Messages-Waiting must come first")),
    }

    let mut in_extra = false;
    for (n, line) in lines {
        if line.is_empty() {
            in_extra = true;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation of an extra header.
            match summary.headers.last_mut() {
                Some((_, value)) if in_extra => {
                    value.push(' ');
                    value.push_str(line.trim_matches([' ', '\t']));
                    continue;
                }
                _ => return Err(line_err(n, line, "unexpected continuation line")),
            }
        }
        let Some((name, value)) = header(line) else {
            return Err(line_err(n, line, "not a 'Name: value' line"));
        };
        if in_extra {
            summary.headers.push((name.to_string(), value.to_string()));
            continue;
        }
        if name.eq_ignore_ascii_case("Messages-Waiting") {
            return Err(line_err(n, line, "Messages-Waiting appears twice"));
        } else if name.eq_ignore_ascii_case("Message-Account") {
            if summary.account.is_some() {
                return Err(line_err(n, line, "Message-Account appears twice"));
            }
            let uri = value.trim_start_matches('<').trim_end_matches('>').trim();
            if !uri.contains(':') {
                return Err(line_err(n, line, "Message-Account is not a URI"));
            }
            summary.account = Some(value.to_string());
        } else if let Some(class) = MessageClass::from_header(name) {
            if summary.summaries.iter().any(|s| s.class == class) {
                return Err(line_err(n, line, "message class appears twice"));
            }
            let Some((new, old, urgent)) = counts(value) else {
                return Err(line_err(n, line, "counts must be new/old (urgent/urgent)"));
            };
            summary.summaries.push(Summary {
                class,
                new,
                old,
                urgent,
            });
        } else {
            summary.headers.push((name.to_string(), value.to_string()));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> String {
        let path = format!(
            "{}/fixtures/bodies/golden/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn ok(body: &str) -> MessageSummary {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body:?}"))
    }

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().to_string()
    }

    /// The example of RFC 3842 §5.2 (with the extra headers it shows).
    const RFC_EXAMPLE: &str = "Messages-Waiting: yes\r\n\
        Message-Account: sip:alice@vmail.example.com\r\n\
        Voice-Message: 4/8 (1/2)\r\n\
        \r\n\
        To: <alice@atlanta.example.com>\r\n\
        From: <bob@biloxi.example.com>\r\n\
        Subject: carpool tomorrow?\r\n\
        Date: Sun, 09 May 2004 20:11:13 -0400\r\n\
        Priority: normal\r\n\
        Message-ID: 13784434989@vmail.example.com\r\n";

    #[test]
    fn rfc3842_5_2_example_parses_and_prints_back() {
        let s = ok(RFC_EXAMPLE);
        assert!(s.waiting);
        assert_eq!(s.account.as_deref(), Some("sip:alice@vmail.example.com"));
        assert_eq!(
            s.summaries,
            [Summary {
                class: MessageClass::Voice,
                new: 4,
                old: 8,
                urgent: Some((1, 2))
            }]
        );
        assert_eq!(s.headers.len(), 6);
        assert_eq!(s.headers[2], ("Subject".into(), "carpool tomorrow?".into()));
        assert_eq!(s.render(), RFC_EXAMPLE);
    }

    #[test]
    fn rfc3842_5_2_golden() {
        let s = MessageSummary {
            waiting: true,
            account: Some("sip:alice@vm.example.com".into()),
            summaries: vec![
                Summary {
                    class: MessageClass::Voice,
                    new: 2,
                    old: 8,
                    urgent: Some((0, 2)),
                },
                Summary {
                    class: MessageClass::Fax,
                    new: 1,
                    old: 0,
                    urgent: None,
                },
            ],
            headers: vec![("X-Mailbox".into(), "100".into())],
        };
        let golden = golden("message-summary.txt");
        assert!(golden.contains("\r\n"), "golden file lost its CRLFs");
        assert_eq!(s.render(), golden);
        assert_eq!(ok(&golden), s);
        assert_eq!(MessageSummary::idle().render(), "Messages-Waiting: no\r\n");
    }

    #[test]
    fn rfc3842_5_2_lf_line_ends_and_loose_spacing() {
        let s = ok("messages-waiting : YES\nvoice-message: 3 / 1 ( 0 / 0 )\nFax-Message:0/0");
        assert!(s.waiting);
        assert_eq!(s.summaries[0].new, 3);
        assert_eq!(s.summaries[0].urgent, Some((0, 0)));
        assert_eq!(s.summaries[1].class, MessageClass::Fax);
        assert_eq!(
            s.render(),
            "Messages-Waiting: yes\r\nVoice-Message: 3/1 (0/0)\r\nFax-Message: 0/0\r\n"
        );
    }

    #[test]
    fn rfc3842_5_2_messages_waiting_is_required_and_first() {
        assert!(err("").contains("line 1 '': Messages-Waiting must come first"));
        // Leading blank lines and indentation are tolerated; the first header still rules.
        assert!(ok("\r\n   Messages-Waiting: yes\r\n").waiting);
        assert!(err("\r\nVoice-Message: 1/0\r\n").contains("must come first"));
        assert!(err("Voice-Message: 1/0\r\nMessages-Waiting: yes\r\n")
            .contains("line 1 'Voice-Message: 1/0': Messages-Waiting must come first"));
        assert!(err("Messages-Waiting: maybe\r\n").contains("must be yes or no"));
        assert!(err("Messages-Waiting: yes\r\nMessages-Waiting: no\r\n")
            .contains("line 2 'Messages-Waiting: no': Messages-Waiting appears twice"));
    }

    #[test]
    fn rfc3842_5_2_summary_lines_are_checked() {
        let e = err("Messages-Waiting: yes\r\nVoice-Message: two/0\r\n");
        assert_eq!(
            e,
            "Bad Request: message-summary line 2 'Voice-Message: two/0': counts must be new/old (urgent/urgent)"
        );
        assert!(err("Messages-Waiting: yes\nVoice-Message: 1/0 (1/0\n").contains("line 2"));
        assert!(
            err("Messages-Waiting: yes\nVoice-Message: 1/0\nvoice-message: 2/0\n")
                .contains("appears twice")
        );
        assert!(err("Messages-Waiting: yes\nVoice-Message: 99999999999/0\n").contains("counts"));
        assert!(err("Messages-Waiting: yes\nMessage-Account: alice\n").contains("not a URI"));
        assert!(err("Messages-Waiting: yes\nthis is not a header\n")
            .contains("line 2 'this is not a header': not a 'Name: value' line"));
    }

    #[test]
    fn rfc3842_5_2_extra_headers_kept_including_folded_and_unannounced() {
        let s = ok("Messages-Waiting: no\nX-Box: 1\n\nSubject: a\n long\n\n");
        assert_eq!(
            s.headers,
            [
                ("X-Box".into(), "1".into()),
                ("Subject".into(), "a long".into())
            ]
        );
        assert!(err("Messages-Waiting: no\n folded\n").contains("continuation"));
    }

    #[test]
    fn hostile_input() {
        let e = parse(b"Messages-Waiting: yes\r\nSubject: \xff\r\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let big = "Messages-Waiting: yes\r\n".repeat(4000);
        assert!(matches!(
            parse(big.as_bytes()),
            Err(BodyError::TooLarge(..))
        ));
        let long_line = format!("Messages-Waiting: yes\r\n{}\r\n", "x".repeat(1000));
        let e = err(&long_line);
        assert!(e.chars().count() < 110 && !e.contains('\n'), "{e}");
        // Values cannot inject lines when printed.
        let s = MessageSummary {
            waiting: true,
            account: Some("sip:a@b\r\nVoice-Message: 9/9".into()),
            summaries: vec![],
            headers: vec![("X".into(), "1\r\n\r\nY: 2".into())],
        };
        assert_eq!(ok(&s.render()).summaries.len(), 0);
        assert_eq!(ok(&s.render()).headers.len(), 1);
    }
}
