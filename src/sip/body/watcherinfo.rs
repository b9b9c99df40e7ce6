//! Watcher information (RFC 3858, `application/watcherinfo+xml`): the document the notifier
//! of `presence.winfo` (RFC 3857) sends. We are the notifier, so printing is what matters;
//! the parser is there for tests and for reading other servers' documents.

use super::xml::{self, escape_text, indent, push_attr, Element};
use super::{quote, BodyError};

pub const NS_WATCHERINFO: &str = "urn:ietf:params:xml:ns:watcherinfo";
/// Media type of watcherinfo.
pub const CONTENT_TYPE: &str = "application/watcherinfo+xml";

/// A subscription's state as a watcher (RFC 3857 §5.2, RFC 3858 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherStatus {
    Pending,
    Active,
    Waiting,
    Terminated,
}

impl WatcherStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WatcherStatus::Pending => "pending",
            WatcherStatus::Active => "active",
            WatcherStatus::Waiting => "waiting",
            WatcherStatus::Terminated => "terminated",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => WatcherStatus::Pending,
            "active" => WatcherStatus::Active,
            "waiting" => WatcherStatus::Waiting,
            "terminated" => WatcherStatus::Terminated,
            _ => return None,
        })
    }
}

/// What moved the watcher into its status (RFC 3857 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherEvent {
    Subscribe,
    Approved,
    Deactivated,
    Probation,
    Rejected,
    Timeout,
    Giveup,
    Noresource,
}

impl WatcherEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            WatcherEvent::Subscribe => "subscribe",
            WatcherEvent::Approved => "approved",
            WatcherEvent::Deactivated => "deactivated",
            WatcherEvent::Probation => "probation",
            WatcherEvent::Rejected => "rejected",
            WatcherEvent::Timeout => "timeout",
            WatcherEvent::Giveup => "giveup",
            WatcherEvent::Noresource => "noresource",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "subscribe" => WatcherEvent::Subscribe,
            "approved" => WatcherEvent::Approved,
            "deactivated" => WatcherEvent::Deactivated,
            "probation" => WatcherEvent::Probation,
            "rejected" => WatcherEvent::Rejected,
            "timeout" => WatcherEvent::Timeout,
            "giveup" => WatcherEvent::Giveup,
            "noresource" => WatcherEvent::Noresource,
            _ => return None,
        })
    }
}

/// One `<watcher>` (RFC 3858 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Unique per watcher within the list, stable across documents.
    pub id: String,
    pub status: WatcherStatus,
    pub event: WatcherEvent,
    /// Seconds the subscription has existed.
    pub duration_subscribed: Option<u64>,
    /// Seconds until the subscription expires.
    pub expiration: Option<u64>,
    pub display_name: Option<String>,
    /// The watcher's URI (the SUBSCRIBE's From).
    pub uri: String,
}

/// A watcherinfo document with one `<watcher-list>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherInfo {
    pub version: u32,
    /// `state="full"` (every watcher) or `"partial"` (only the ones that changed).
    pub full: bool,
    /// The watched resource (the presentity URI).
    pub resource: String,
    /// The watched event package, e.g. `presence`.
    pub package: String,
    pub watchers: Vec<Watcher>,
}

/// Prints the document.
pub fn render(info: &WatcherInfo) -> String {
    info.render()
}

impl WatcherInfo {
    /// Prints the document.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256 + self.watchers.len() * 160);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<watcherinfo");
        push_attr(&mut out, "xmlns", NS_WATCHERINFO);
        push_attr(&mut out, "version", &self.version.to_string());
        push_attr(
            &mut out,
            "state",
            if self.full { "full" } else { "partial" },
        );
        out.push_str(">\n");
        indent(&mut out, 1);
        out.push_str("<watcher-list");
        push_attr(&mut out, "resource", &self.resource);
        push_attr(&mut out, "package", &self.package);
        out.push_str(">\n");
        for w in &self.watchers {
            indent(&mut out, 2);
            out.push_str("<watcher");
            push_attr(&mut out, "id", &w.id);
            push_attr(&mut out, "status", w.status.as_str());
            push_attr(&mut out, "event", w.event.as_str());
            if let Some(d) = w.duration_subscribed {
                push_attr(&mut out, "duration-subscribed", &d.to_string());
            }
            if let Some(e) = w.expiration {
                push_attr(&mut out, "expiration", &e.to_string());
            }
            if let Some(n) = &w.display_name {
                push_attr(&mut out, "display-name", n);
            }
            out.push('>');
            escape_text(&w.uri, &mut out);
            out.push_str("</watcher>\n");
        }
        indent(&mut out, 1);
        out.push_str("</watcher-list>\n</watcherinfo>\n");
        out
    }
}

/// Parses a watcherinfo document (its first `<watcher-list>`).
pub fn parse(body: &[u8]) -> Result<WatcherInfo, BodyError> {
    let root = xml::parse(body)?;
    if !root.is(NS_WATCHERINFO, "watcherinfo") {
        return Err(BodyError::invalid(format!(
            "root element is <{}>, not <watcherinfo> in {NS_WATCHERINFO}",
            quote(&root.name.qualified())
        )));
    }
    let version = root
        .attr("version")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .ok_or_else(|| BodyError::invalid("watcherinfo version is missing or not a number"))?;
    let full = match root.attr("state").map(str::trim) {
        Some("full") => true,
        Some("partial") => false,
        _ => {
            return Err(BodyError::invalid(
                "watcherinfo state is not full or partial",
            ))
        }
    };
    let Some(list) = root.child(NS_WATCHERINFO, "watcher-list") else {
        return Err(BodyError::invalid("watcherinfo has no <watcher-list>"));
    };
    let (Some(resource), Some(package)) = (list.attr("resource"), list.attr("package")) else {
        return Err(BodyError::invalid(
            "<watcher-list> needs resource and package attributes",
        ));
    };
    let watchers = list
        .children_named(NS_WATCHERINFO, "watcher")
        .map(parse_watcher)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WatcherInfo {
        version,
        full,
        resource: resource.trim().to_string(),
        package: package.trim().to_string(),
        watchers,
    })
}

fn parse_watcher(el: &Element) -> Result<Watcher, BodyError> {
    let id = el.attr("id").map(str::trim).unwrap_or("");
    if id.is_empty() {
        return Err(BodyError::invalid("<watcher> has no id"));
    }
    let status = el
        .attr("status")
        .and_then(|s| WatcherStatus::parse(s.trim()))
        .ok_or_else(|| {
            BodyError::invalid(format!(
                "watcher '{}' status is missing or unknown",
                quote(id)
            ))
        })?;
    let event = el
        .attr("event")
        .and_then(|s| WatcherEvent::parse(s.trim()))
        .ok_or_else(|| {
            BodyError::invalid(format!(
                "watcher '{}' event is missing or unknown",
                quote(id)
            ))
        })?;
    let seconds = |name: &str| -> Result<Option<u64>, BodyError> {
        match el.attr(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                BodyError::invalid(format!("watcher '{}' {name} is not a number", quote(id)))
            }),
        }
    };
    Ok(Watcher {
        id: id.to_string(),
        status,
        event,
        duration_subscribed: seconds("duration-subscribed")?,
        expiration: seconds("expiration")?,
        display_name: el.attr("display-name").map(str::to_string),
        uri: el.text().trim().to_string(),
    })
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

    fn full() -> WatcherInfo {
        WatcherInfo {
            version: 0,
            full: true,
            resource: "sip:professor@example.net".into(),
            package: "presence".into(),
            watchers: vec![
                Watcher {
                    id: "8ajksjda7s".into(),
                    status: WatcherStatus::Active,
                    event: WatcherEvent::Approved,
                    duration_subscribed: Some(509),
                    expiration: Some(3091),
                    display_name: None,
                    uri: "sip:userA@example.net".into(),
                },
                Watcher {
                    id: "hh8juja87s997-ass7".into(),
                    status: WatcherStatus::Pending,
                    event: WatcherEvent::Subscribe,
                    duration_subscribed: Some(0),
                    expiration: None,
                    display_name: Some("Mr. Subscriber".into()),
                    uri: "sip:userB@example.org".into(),
                },
            ],
        }
    }

    fn partial() -> WatcherInfo {
        WatcherInfo {
            version: 1,
            full: false,
            resource: "sip:professor@example.net".into(),
            package: "presence".into(),
            watchers: vec![Watcher {
                id: "hh8juja87s997-ass7".into(),
                status: WatcherStatus::Terminated,
                event: WatcherEvent::Rejected,
                duration_subscribed: Some(12),
                expiration: None,
                display_name: Some("Mr. \"Sub\" <scriber>".into()),
                uri: "sip:userB@example.org".into(),
            }],
        }
    }

    #[test]
    fn rfc3858_4_golden_full_document() {
        assert_eq!(full().render(), golden("watcherinfo-full.xml"));
        assert_eq!(parse(full().render().as_bytes()).unwrap(), full());
    }

    #[test]
    fn rfc3858_4_golden_partial_document() {
        assert_eq!(render(&partial()), golden("watcherinfo-partial.xml"));
        assert_eq!(parse(partial().render().as_bytes()).unwrap(), partial());
    }

    #[test]
    fn rfc3858_4_empty_list() {
        let mut w = full();
        w.watchers.clear();
        let printed = w.render();
        assert!(printed.contains(
            "<watcher-list resource=\"sip:professor@example.net\" package=\"presence\">\n  </watcher-list>"
        ));
        assert_eq!(parse(printed.as_bytes()).unwrap(), w);
    }

    #[test]
    fn rfc3858_4_parser_refuses_bad_documents() {
        let e = |b: &str| parse(b.as_bytes()).unwrap_err().to_string();
        assert!(e("<watcherinfo version='0' state='full'/>").contains("not <watcherinfo>"));
        let ns = NS_WATCHERINFO;
        assert!(e(&format!("<watcherinfo xmlns='{ns}' state='full'/>")).contains("version"));
        assert!(e(&format!(
            "<watcherinfo xmlns='{ns}' version='0' state='full'/>"
        ))
        .contains("no <watcher-list>"));
        assert!(e(&format!(
            "<watcherinfo xmlns='{ns}' version='0' state='full'><watcher-list resource='r' package='p'>\
             <watcher id='a' status='happy' event='approved'>sip:a@b</watcher></watcher-list></watcherinfo>"
        ))
        .contains("status is missing or unknown"));
    }
}
