//! The Event header (RFC 6665 §8.2.1) and the packages we serve.

use crate::sip::text::Params;

/// An event package this server is the notifier for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pkg {
    /// RFC 3856.
    Presence,
    /// RFC 3857: the watchers of a presentity's `presence`.
    Winfo,
    /// RFC 4235 (busy lamp field).
    Dialog,
    /// `dialog;sla`: Bridged Line Appearance (draft-anil-sipping-bla).
    Sla,
    /// RFC 3842.
    MessageSummary,
}

/// Allow-Events of every presence response (RFC 6665 §8.2.2).
pub const ALLOW_EVENTS: &str = "presence, presence.winfo, dialog, message-summary";

impl Pkg {
    pub const ALL: [Pkg; 5] = [
        Pkg::Presence,
        Pkg::Winfo,
        Pkg::Dialog,
        Pkg::Sla,
        Pkg::MessageSummary,
    ];

    /// The key records and packages are stored under.
    pub fn key(self) -> &'static str {
        match self {
            Pkg::Presence => "presence",
            Pkg::Winfo => "presence.winfo",
            Pkg::Dialog => "dialog",
            Pkg::Sla => "dialog;sla",
            Pkg::MessageSummary => "message-summary",
        }
    }

    pub fn from_key(key: &str) -> Option<Pkg> {
        Pkg::ALL.into_iter().find(|p| p.key() == key)
    }

    /// Whether PUBLISH may set its state (winfo state is the watcher list itself).
    pub fn publishable(self) -> bool {
        self != Pkg::Winfo
    }
}

/// A parsed Event header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    pub pkg: Pkg,
    /// The `id` parameter, which tells subscriptions in one dialog apart.
    pub id: Option<String>,
}

impl EventHeader {
    /// The header value our NOTIFYs carry: the package and the subscription's `id`.
    pub fn value(pkg: Pkg, id: Option<&str>) -> String {
        let mut v = String::from(match pkg {
            Pkg::Sla => "dialog;sla",
            p => p.key(),
        });
        if let Some(id) = id {
            v.push_str(";id=");
            v.push_str(id);
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("Bad Event: no Event header")]
    Missing,
    #[error("Bad Event: package {0:?} is not served here")]
    Unknown(String),
    #[error("Bad Request: malformed Event header")]
    Malformed,
}

impl EventError {
    pub fn status(&self) -> u16 {
        match self {
            EventError::Malformed => 400,
            _ => 489,
        }
    }
}

pub fn parse_event(value: Option<&str>) -> Result<EventHeader, EventError> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    let value = value.ok_or(EventError::Missing)?;
    let (token, params) = match value.find(';') {
        Some(i) => (value[..i].trim(), &value[i..]),
        None => (value, ""),
    };
    if !crate::sip::text::is_token(token) {
        return Err(EventError::Malformed);
    }
    let params = Params::parse(params).map_err(|_| EventError::Malformed)?;
    let sla = params.has("sla");
    let pkg = match (token.to_ascii_lowercase().as_str(), sla) {
        ("presence", _) => Pkg::Presence,
        ("presence.winfo", _) => Pkg::Winfo,
        ("dialog", false) => Pkg::Dialog,
        ("dialog", true) => Pkg::Sla,
        ("message-summary", _) => Pkg::MessageSummary,
        _ => return Err(EventError::Unknown(token.to_string())),
    };
    let id = params.value("id");
    if id.as_deref().is_some_and(|i| i.is_empty() || i.len() > 128) {
        return Err(EventError::Malformed);
    }
    Ok(EventHeader { pkg, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6665_8_2_1_event_header() {
        assert_eq!(
            parse_event(Some("presence")).unwrap(),
            EventHeader {
                pkg: Pkg::Presence,
                id: None
            }
        );
        assert_eq!(parse_event(Some("dialog;sla")).unwrap().pkg, Pkg::Sla);
        assert_eq!(parse_event(Some("dialog ; sla")).unwrap().pkg, Pkg::Sla);
        assert_eq!(
            parse_event(Some("dialog;id=7")).unwrap(),
            EventHeader {
                pkg: Pkg::Dialog,
                id: Some("7".into())
            }
        );
        assert_eq!(parse_event(None), Err(EventError::Missing));
        assert_eq!(parse_event(Some("  ")), Err(EventError::Missing));
        assert_eq!(
            parse_event(Some("conference")),
            Err(EventError::Unknown("conference".into()))
        );
        assert_eq!(parse_event(Some("pres<ence")), Err(EventError::Malformed));
        assert_eq!(EventHeader::value(Pkg::Sla, Some("a")), "dialog;sla;id=a");
    }
}
