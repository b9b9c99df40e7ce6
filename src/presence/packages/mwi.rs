//! `message-summary` (RFC 3842): the newest publication's summary, re-printed from its
//! parsed form, or `Messages-Waiting: no` when nobody published.

use super::super::package::{EventPackage, PublishedBody, Rendered, WatcherView};
use super::{check_type, oldest_first};
use crate::sip::body::mwi;
use crate::sip::body::BodyError;

/// The `message-summary` package.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageSummary;

impl EventPackage for MessageSummary {
    fn name(&self) -> &'static str {
        "message-summary"
    }

    fn publish_types(&self) -> &'static [&'static str] {
        &[mwi::CONTENT_TYPE]
    }

    fn notify_types(&self) -> &'static [&'static str] {
        &[mwi::CONTENT_TYPE]
    }

    fn validate(&self, content_type: &str, body: &[u8]) -> Result<(), BodyError> {
        check_type(content_type, mwi::CONTENT_TYPE)?;
        mwi::parse(body).map(|_| ())
    }

    fn render(
        &self,
        _presentity: &str,
        publications: &[PublishedBody<'_>],
        _watcher: &WatcherView<'_>,
    ) -> Rendered {
        // The newest that still parses.
        let summary = oldest_first(publications, mwi::CONTENT_TYPE)
            .into_iter()
            .rev()
            .find_map(|p| mwi::parse(p.body).ok())
            .unwrap_or_else(mwi::MessageSummary::idle);
        Rendered {
            content_type: mwi::CONTENT_TYPE,
            body: summary.render().into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::presence::package::RenderOptions;

    const CT: &str = "application/simple-message-summary";

    fn render(pubs: &[PublishedBody<'_>]) -> String {
        let r = MessageSummary.render(
            "sip:alice@example.com",
            pubs,
            &view(&[], 0, RenderOptions::default()),
        );
        assert_eq!(r.content_type, CT);
        String::from_utf8(r.body).unwrap()
    }

    #[test]
    fn rfc3842_nobody_published_means_no_messages() {
        assert_eq!(render(&[]), "Messages-Waiting: no\r\n");
    }

    #[test]
    fn rfc3842_newest_publication_reprinted() {
        let older = "Messages-Waiting: no\n";
        // LF line ends and loose spacing in; the golden (CRLF) out.
        let newer = "messages-waiting: yes\nMessage-Account: sip:alice@vm.example.com\nVoice-Message: 2/8 (0/2)\nfax-message: 1 / 0\n\nX-Mailbox: 100\n";
        let pubs = [
            publication("n", CT, newer, 5),
            publication("o", CT, older, 4),
        ];
        assert_eq!(render(&pubs), golden("message-summary.txt"));
    }

    #[test]
    fn validate_checks_type_and_body() {
        assert!(MessageSummary
            .validate(CT, b"Messages-Waiting: yes\r\n")
            .is_ok());
        assert!(MessageSummary
            .validate("text/plain", b"Messages-Waiting: yes\r\n")
            .is_err());
        let e = MessageSummary
            .validate(CT, b"Messages-Waiting: perhaps\r\n")
            .unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
