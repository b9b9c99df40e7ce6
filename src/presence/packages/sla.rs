//! `dialog;sla` (Bridged Line Appearance, draft-anil-sipping-bla-03): the dialog-info of a
//! shared line, aggregated like `dialog` (see [`super::dialog`]) but with each dialog's line
//! appearance written as `<param pname="x-line-id" pval="N"/>` — the form Polycom reads —
//! whatever spelling the member phone published it in. No single-dialog mode: every phone on
//! the line needs every appearance.

use super::super::package::{EventPackage, PublishedBody, Rendered, WatcherView};
use super::check_type;
use super::dialog::render_dialogs;
use crate::sip::body::dialog_info;
use crate::sip::body::BodyError;

/// The `dialog;sla` package.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sla;

impl EventPackage for Sla {
    fn name(&self) -> &'static str {
        "dialog;sla"
    }

    fn publish_types(&self) -> &'static [&'static str] {
        &[dialog_info::CONTENT_TYPE]
    }

    fn notify_types(&self) -> &'static [&'static str] {
        &[dialog_info::CONTENT_TYPE]
    }

    fn validate(&self, content_type: &str, body: &[u8]) -> Result<(), BodyError> {
        check_type(content_type, dialog_info::CONTENT_TYPE)?;
        dialog_info::parse(body).map(|_| ())
    }

    fn render(
        &self,
        presentity: &str,
        publications: &[PublishedBody<'_>],
        watcher: &WatcherView<'_>,
    ) -> Rendered {
        render_dialogs(presentity, publications, watcher, true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::presence::package::{DialogIdle, RenderOptions};

    const LINE: &str = "sip:line1@example.com";
    const CT: &str = "application/dialog-info+xml";

    /// A member phone holding a call on appearance 1, written with `pvalue` (yxa style).
    const HELD_PVALUE: &str = r#"<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="4" state="partial" entity="sip:line1@example.com">
<dialog id="held-1" call-id="9f2c@192.0.2.11" local-tag="77" remote-tag="88" direction="initiator">
<state>confirmed</state>
<local>
<identity>sip:line1@example.com</identity>
<target uri="sip:line1@192.0.2.11"><param pname="x-line-id" pvalue="1"/><param pname="+sip.rendering" pvalue="no"/></target>
</local>
<remote><identity>sip:5551234@example.com</identity></remote>
</dialog>
</dialog-info>"#;

    fn render(pubs: &[PublishedBody<'_>], version: u32, options: RenderOptions) -> String {
        let r = Sla.render(LINE, pubs, &view(&[], version, options));
        assert_eq!(r.content_type, CT);
        String::from_utf8(r.body).unwrap()
    }

    #[test]
    fn golden_sla_with_x_line_id() {
        let polycom = capture("polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip");
        let pubs = [
            publication("sip:202@example.com", CT, HELD_PVALUE, 2),
            publication("sip:201@example.com", CT, &polycom, 1),
        ];
        let out = render(&pubs, 2, RenderOptions::default());
        assert_eq!(out, golden("sla-x-line-id.xml"));
        let back = dialog_info::parse(out.as_bytes()).unwrap();
        let lines: Vec<Option<u32>> = back.dialogs.iter().map(|d| d.line).collect();
        assert_eq!(lines, [Some(0), Some(1)]);
        assert_eq!(
            back.dialogs[1].rendering(),
            Some(dialog_info::Rendering::No)
        );
    }

    #[test]
    fn no_single_dialog_mode_for_sla() {
        let polycom = capture("polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip");
        let pubs = [
            publication("a", CT, HELD_PVALUE, 2),
            publication("b", CT, &polycom, 1),
        ];
        let single = RenderOptions {
            dialog_idle: DialogIdle::Empty,
            dialog_single: true,
            ..Default::default()
        };
        assert_eq!(render(&pubs, 2, single).matches("<dialog id=").count(), 2);
    }

    #[test]
    fn every_spelling_of_the_line_comes_out_as_pval() {
        for name in [
            "sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-no-held.xml",
            "yxa-sipit-dialog-info-x-line-id-pvalue-terminated.xml",
        ] {
            let body = capture(name);
            let out = render(
                &[publication("a", CT, &body, 1)],
                1,
                RenderOptions::default(),
            );
            assert!(
                out.contains("<param pname=\"x-line-id\" pval=\"0\"/>"),
                "{name}: {out}"
            );
            assert!(!out.contains("pvalue"), "{out}");
        }
        let appearance = format!(
            "<dialog-info xmlns='urn:ietf:params:xml:ns:dialog-info' xmlns:sa='urn:ietf:params:xml:ns:sa-dialog-info' version='1' state='partial' entity='{LINE}'>\
             <dialog id='s'><sa:appearance>2</sa:appearance><state>trying</state></dialog></dialog-info>"
        );
        let out = render(
            &[publication("a", CT, &appearance, 1)],
            1,
            RenderOptions::default(),
        );
        assert!(
            out.contains("<local>\n      <target uri=\"sip:line1@example.com\">\n        <param pname=\"x-line-id\" pval=\"2\"/>"),
            "{out}"
        );
    }

    #[test]
    fn idle_line() {
        let out = render(&[], 3, RenderOptions::default());
        assert!(!out.contains("<dialog "), "{out}");
        assert!(out.contains("version=\"3\" state=\"full\" entity=\"sip:line1@example.com\""));
    }

    #[test]
    fn draft_anil_sipping_bla_ids_only_for_watchers_allowed_to_join() {
        let pubs = [publication("sip:202@example.com", CT, HELD_PVALUE, 1)];
        let with = render(&pubs, 1, RenderOptions::default());
        assert!(with.contains("call-id=\"9f2c@192.0.2.11\""), "{with}");
        let without = render(
            &pubs,
            1,
            RenderOptions {
                without_dialog_ids: true,
                ..Default::default()
            },
        );
        assert!(
            !without.contains("call-id=")
                && !without.contains("local-tag=")
                && !without.contains("remote-tag="),
            "{without}"
        );
        // The appearance and its state stay.
        let back = dialog_info::parse(without.as_bytes()).unwrap();
        assert_eq!(back.dialogs[0].line, Some(1));
    }
}
