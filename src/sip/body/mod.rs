//! Event-package bodies: parsing (with validation) and printing of PIDF (RFC 3863, with RPID
//! RFC 4480 and the data model RFC 4479), XPIDF, dialog-info (RFC 4235, with the BLA
//! `x-line-id`/`appearance` parameters), watcherinfo (RFC 3858) and message-summary
//! (RFC 3842). Pure: no I/O.
//!
//! Every parser here takes untrusted bytes from the network: it refuses bodies over
//! [`MAX_BODY_LEN`], never panics, never expands a DTD or an entity, and bounds nesting depth
//! and element count (see [`xml`]). A refusal is a [`BodyError`] whose text is a single short
//! line, fit to be the reason phrase of a 400.

pub mod dialog_info;
pub mod mwi;
pub mod pidf;
pub mod watcherinfo;
pub mod xml;

/// The largest body any parser here accepts (64 KiB); larger ones are [`BodyError::TooLarge`].
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// How many characters of caller-supplied text (a name, a line) an error message quotes.
const QUOTE_MAX: usize = 32;

/// Why a body was refused; the message is the reason phrase of the 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("Bad Request: body is not well-formed XML: {0}")]
    Xml(String),
    #[error("Bad Request: {0}")]
    Invalid(String),
    #[error("Bad Request: body is {0} bytes, more than {1} allowed")]
    TooLarge(usize, usize),
}

impl BodyError {
    /// A refusal for a body that parsed but breaks its format's rules. The message is cleaned to
    /// one printable line.
    pub fn invalid(message: impl AsRef<str>) -> Self {
        BodyError::Invalid(one_line(message.as_ref(), 86))
    }

    /// A refusal for a body that is not well-formed XML.
    pub fn xml(message: impl AsRef<str>) -> Self {
        BodyError::Xml(one_line(message.as_ref(), 56))
    }
}

/// Refuses a body larger than [`MAX_BODY_LEN`].
pub fn check_len(body: &[u8]) -> Result<(), BodyError> {
    if body.len() > MAX_BODY_LEN {
        Err(BodyError::TooLarge(body.len(), MAX_BODY_LEN))
    } else {
        Ok(())
    }
}

/// Text fit for a reason phrase: control characters become spaces, runs of spaces collapse and
/// the result is cut to `max` characters (with `...` when cut).
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 3));
    let mut count = 0;
    let mut last_space = false;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        if count == max {
            out.push_str("...");
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Caller-supplied text quoted inside an error message: one line, at most [`QUOTE_MAX`]
/// characters.
pub(crate) fn quote(text: &str) -> String {
    one_line(text, QUOTE_MAX)
}

/// The media type without parameters, trimmed and lowercased (`Application/PIDF+XML; x=1` →
/// `application/pidf+xml`).
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_one_short_line() {
        let e = BodyError::invalid("a\r\nb\tc".repeat(100));
        let text = e.to_string();
        assert!(!text.contains('\r') && !text.contains('\n') && !text.contains('\t'));
        assert!(text.chars().count() <= 110, "{text}");
        let e = BodyError::xml("x".repeat(500));
        assert!(e.to_string().chars().count() <= 110);
    }

    #[test]
    fn too_large_names_the_limit() {
        let body = vec![b' '; MAX_BODY_LEN + 1];
        assert_eq!(
            check_len(&body),
            Err(BodyError::TooLarge(MAX_BODY_LEN + 1, MAX_BODY_LEN))
        );
        assert!(check_len(&body[..MAX_BODY_LEN]).is_ok());
    }

    #[test]
    fn media_type_drops_parameters() {
        assert_eq!(
            media_type(" Application/PIDF+XML ; charset=utf-8"),
            "application/pidf+xml"
        );
    }
}
