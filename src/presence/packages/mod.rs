//! The event packages the presence server serves, each behind [`EventPackage`].

use super::package::{EventPackage, PublishedBody};

pub mod dialog;
pub mod mwi;
pub mod presence;
pub mod sla;

static PRESENCE: presence::Presence = presence::Presence;
static DIALOG: dialog::Dialog = dialog::Dialog;
static SLA: sla::Sla = sla::Sla;
static MWI: mwi::MessageSummary = mwi::MessageSummary;

/// The package for an Event header value's key: `presence`, `dialog`, `dialog;sla`,
/// `message-summary`. `presence.winfo` is served by the core (its state is the watcher list,
/// not publications), so it is not here.
pub fn lookup(key: &str) -> Option<&'static dyn EventPackage> {
    match key {
        "presence" => Some(&PRESENCE),
        "dialog" => Some(&DIALOG),
        "dialog;sla" => Some(&SLA),
        "message-summary" => Some(&MWI),
        _ => None,
    }
}

/// Whether a watcher whose Accept is `accept` (lowercased media types; empty = the package
/// default) takes `media`.
pub(crate) fn accepts(accept: &[String], media: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    let major = media.split('/').next().unwrap_or("");
    accept
        .iter()
        .any(|a| a == media || a == "*/*" || a.strip_suffix("/*") == Some(major))
}

/// The publications of content type `media`, oldest first (by arrival order; ties keep the
/// order given).
pub(crate) fn oldest_first<'p, 'a>(
    publications: &'p [PublishedBody<'a>],
    media: &str,
) -> Vec<&'p PublishedBody<'a>> {
    let mut v: Vec<&PublishedBody<'a>> = publications
        .iter()
        .filter(|p| crate::sip::body::media_type(p.content_type) == media)
        .collect();
    v.sort_by_key(|p| p.seq);
    v
}

/// Refuses a content type other than `media` (the core checks first; this is for direct
/// callers).
pub(crate) fn check_type(
    content_type: &str,
    media: &str,
) -> Result<(), crate::sip::body::BodyError> {
    let got = crate::sip::body::media_type(content_type);
    if got == media {
        Ok(())
    } else {
        Err(crate::sip::body::BodyError::invalid(format!(
            "content type '{}' is not {media}",
            crate::sip::body::quote(&got)
        )))
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::super::package::{PublishedBody, RenderOptions, WatcherView};

    pub fn golden(name: &str) -> String {
        let path = format!(
            "{}/fixtures/bodies/golden/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub fn capture(name: &str) -> String {
        let path = format!(
            "{}/fixtures/bodies/captures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        match name.ends_with(".sip") {
            true => text.split_once("\n\n").map(|(_, b)| b.to_string()).unwrap(),
            false => text,
        }
    }

    pub fn publication<'a>(
        source_id: &'a str,
        content_type: &'a str,
        body: &'a str,
        seq: u64,
    ) -> PublishedBody<'a> {
        PublishedBody {
            source_id,
            content_type,
            body: body.as_bytes(),
            dialogs: None,
            seq,
        }
    }

    pub fn view(accept: &[String], version: u32, options: RenderOptions) -> WatcherView<'_> {
        WatcherView {
            accept,
            version,
            options,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_knows_the_four_publishable_packages() {
        for (key, name) in [
            ("presence", "presence"),
            ("dialog", "dialog"),
            ("dialog;sla", "dialog;sla"),
            ("message-summary", "message-summary"),
        ] {
            assert_eq!(lookup(key).map(|p| p.name()), Some(name));
        }
        assert!(lookup("presence.winfo").is_none());
        assert!(lookup("kpml").is_none());
        assert!(lookup("Presence").is_none());
    }

    #[test]
    fn rfc6665_3_1_3_accept_wildcards_and_default() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(accepts(&[], "application/pidf+xml"));
        assert!(accepts(&a(&["application/*"]), "application/pidf+xml"));
        assert!(accepts(&a(&["*/*"]), "application/pidf+xml"));
        assert!(!accepts(
            &a(&["application/xpidf+xml"]),
            "application/pidf+xml"
        ));
        assert!(!accepts(&a(&["text/*"]), "application/pidf+xml"));
    }
}
