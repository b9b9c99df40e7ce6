//! `presence` (RFC 3856): PIDF publications composed into one document per presentity
//! (see [`crate::sip::body::pidf`] for the rules), or XPIDF for a watcher that accepts only
//! that (older Polycom firmware).

use super::super::package::{EventPackage, PublishedBody, Rendered, WatcherView};
use super::{accepts, check_type, oldest_first};
use crate::sip::body::pidf::{self, Pidf};
use crate::sip::body::BodyError;

/// The `presence` package.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presence;

impl Presence {
    /// XPIDF only when the watcher names XPIDF and does not take PIDF.
    fn wants_xpidf(accept: &[String]) -> bool {
        !accepts(accept, pidf::CONTENT_TYPE) && accepts(accept, pidf::XPIDF_CONTENT_TYPE)
    }

    /// The publications, parsed, oldest first. Bodies were validated on the way in; one that
    /// no longer parses is left out rather than failing the whole document.
    fn documents(publications: &[PublishedBody<'_>]) -> Vec<Pidf> {
        oldest_first(publications, pidf::CONTENT_TYPE)
            .into_iter()
            .filter_map(|p| pidf::parse(p.body).ok())
            .collect()
    }
}

impl EventPackage for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn publish_types(&self) -> &'static [&'static str] {
        &[pidf::CONTENT_TYPE]
    }

    fn notify_types(&self) -> &'static [&'static str] {
        &[pidf::CONTENT_TYPE, pidf::XPIDF_CONTENT_TYPE]
    }

    fn validate(&self, content_type: &str, body: &[u8]) -> Result<(), BodyError> {
        check_type(content_type, pidf::CONTENT_TYPE)?;
        pidf::parse(body).map(|_| ())
    }

    fn render(
        &self,
        presentity: &str,
        publications: &[PublishedBody<'_>],
        watcher: &WatcherView<'_>,
    ) -> Rendered {
        let docs = Self::documents(publications);
        if Self::wants_xpidf(watcher.accept) {
            Rendered {
                content_type: pidf::XPIDF_CONTENT_TYPE,
                body: pidf::xpidf(presentity, &docs).into_bytes(),
            }
        } else {
            Rendered {
                content_type: pidf::CONTENT_TYPE,
                body: pidf::merge(presentity, &docs).into_bytes(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::presence::package::RenderOptions;

    const ENTITY: &str = "sip:alice@example.com";

    fn render(pubs: &[PublishedBody<'_>], accept: &[&str]) -> Rendered {
        let accept: Vec<String> = accept.iter().map(|s| s.to_string()).collect();
        Presence.render(ENTITY, pubs, &view(&accept, 0, RenderOptions::default()))
    }

    #[test]
    fn rfc3856_6_7_no_publication_is_closed() {
        let r = render(&[], &[]);
        assert_eq!(r.content_type, "application/pidf+xml");
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            golden("pidf-closed.xml")
        );
    }

    #[test]
    fn rfc3856_two_publications_compose_newest_first() {
        let linphone = capture("linphone-desktop-4.2.3-publish-pidf.sip");
        let zoiper = capture("zoiper-3.3-publish-pidf-PARTIAL-headers.sip");
        // Given in any order: arrival order decides.
        let pubs = [
            publication("z", "application/pidf+xml", &zoiper, 7),
            publication("l", "Application/PIDF+XML", &linphone, 3),
        ];
        let r = render(&pubs, &["application/pidf+xml", "application/xpidf+xml"]);
        assert_eq!(r.content_type, "application/pidf+xml");
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            golden("pidf-merged-linphone-zoiper.xml")
        );
    }

    #[test]
    fn xpidf_for_a_watcher_that_accepts_only_xpidf() {
        let linphone = capture("linphone-desktop-4.2.3-publish-pidf.sip");
        let zoiper = capture("zoiper-3.3-publish-pidf-PARTIAL-headers.sip");
        let pubs = [
            publication("l", "application/pidf+xml", &linphone, 1),
            publication("z", "application/pidf+xml", &zoiper, 2),
        ];
        let r = render(&pubs, &["application/xpidf+xml"]);
        assert_eq!(r.content_type, "application/xpidf+xml");
        assert_eq!(String::from_utf8(r.body).unwrap(), golden("xpidf-open.xml"));
        assert_eq!(render(&pubs, &["*/*"]).content_type, "application/pidf+xml");
        let closed = render(&[], &["application/xpidf+xml"]);
        assert!(String::from_utf8(closed.body)
            .unwrap()
            .contains("<status status=\"closed\"/>"));
    }

    #[test]
    fn validate_checks_type_and_document() {
        let linphone = capture("linphone-desktop-4.2.3-publish-pidf.sip");
        assert!(Presence
            .validate("application/pidf+xml", linphone.as_bytes())
            .is_ok());
        let e = Presence
            .validate("application/xpidf+xml", linphone.as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("is not application/pidf+xml"));
        let e = Presence
            .validate("application/pidf+xml", b"<presence><tuple>")
            .unwrap_err();
        assert!(e.to_string().starts_with("Bad Request: "), "{e}");
    }

    #[test]
    fn a_body_that_stopped_parsing_is_left_out() {
        let pubs = [
            publication("bad", "application/pidf+xml", "<presence>", 2),
            publication(
                "ok",
                "application/pidf+xml",
                "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:a@b'><tuple id='t'><status><basic>open</basic></status></tuple></presence>",
                1,
            ),
        ];
        let body = String::from_utf8(render(&pubs, &[]).body).unwrap();
        assert!(body.contains("<tuple id=\"t\">"), "{body}");
    }
}
