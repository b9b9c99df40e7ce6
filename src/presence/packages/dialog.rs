//! `dialog` (RFC 4235, BLF lamps): the dialogs of all publications of a presentity in one
//! full document per watcher, with the watcher's `version`.
//!
//! A publication is usually one dialog (the in-process dialog publisher uses the dialog id as
//! its source id) but may hold several. One dialog id in two publications: the newest
//! publication's wins (within one publication, the first). Dialogs are written oldest
//! publication first, in document order. Terminated dialogs are written too, so the watcher
//! sees the transition; the core drops terminated publications later. No dialogs: the
//! profile's idle document (an empty `<dialog-info>`, or one dummy terminated dialog).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;

use super::super::package::{DialogIdle, EventPackage, PublishedBody, Rendered, WatcherView};
use super::{check_type, oldest_first};
use crate::sip::body::dialog_info::{self, rank, DialogInfo, DialogState, Direction, DocState};
use crate::sip::body::BodyError;

/// The `dialog` package.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dialog;

/// The publications oldest first: typed state as it is, documents parsed (one that no longer
/// parses is left out).
pub(crate) fn documents<'a>(publications: &[PublishedBody<'a>]) -> Vec<Cow<'a, DialogInfo>> {
    oldest_first(publications, dialog_info::CONTENT_TYPE)
        .into_iter()
        .filter_map(|p| match p.dialogs {
            Some(d) => Some(Cow::Borrowed(d)),
            None => dialog_info::parse(p.body).ok().map(Cow::Owned),
        })
        .collect()
}

/// One dialog per id across `docs` (oldest first): the newest document's wins. Each comes
/// with its position (document, index in it), and the list is in that order.
pub(crate) fn aggregate<'d>(
    docs: &'d [Cow<'_, DialogInfo>],
) -> Vec<((usize, usize), &'d dialog_info::Dialog)> {
    let mut winners: HashMap<&str, (usize, usize)> = HashMap::new();
    for (di, doc) in docs.iter().enumerate().rev() {
        for (dj, d) in doc.dialogs.iter().enumerate() {
            winners.entry(d.id.as_str()).or_insert((di, dj));
        }
    }
    let mut list: Vec<((usize, usize), &dialog_info::Dialog)> = winners
        .into_values()
        .map(|(di, dj)| ((di, dj), &docs[di].dialogs[dj]))
        .collect();
    list.sort_by_key(|(pos, _)| *pos);
    list
}

/// The whole document for one watcher. `sla` writes line appearances and ignores
/// single-dialog mode.
pub(crate) fn render_dialogs(
    presentity: &str,
    publications: &[PublishedBody<'_>],
    watcher: &WatcherView<'_>,
    sla: bool,
) -> Rendered {
    let docs = documents(publications);
    let mut dialogs: Vec<&dialog_info::Dialog> =
        aggregate(&docs).into_iter().map(|(_, d)| d).collect();
    if watcher.options.dialog_single && !sla {
        // The most relevant; ties: the newest publication, then the first in it.
        let top = aggregate(&docs)
            .into_iter()
            .max_by_key(|((di, dj), d)| (rank(d.state), *di, Reverse(*dj)))
            .map(|(_, d)| d);
        dialogs = top.into_iter().collect();
    }
    // Vendor profile: a ringing outgoing call shown as answered.
    let shown: Vec<dialog_info::Dialog>;
    if watcher.options.caller_confirmed && !sla && dialogs.iter().any(|d| ringing_out(d)) {
        shown = dialogs
            .iter()
            .map(|d| {
                let mut d = (*d).clone();
                if ringing_out(&d) {
                    d.state = DialogState::Confirmed;
                }
                d
            })
            .collect();
        dialogs = shown.iter().collect();
    }
    // Only watchers allowed to pick up (or, BLA, to join) get the dialog identifiers, and
    // the parties' targets: a target is a phone's Contact, its IP and port.
    let anonymous: Vec<dialog_info::Dialog>;
    if watcher.options.without_dialog_ids {
        anonymous = dialogs
            .iter()
            .map(|d| dialog_info::Dialog {
                call_id: None,
                local_tag: None,
                remote_tag: None,
                local: without_contact(&d.local),
                remote: without_contact(&d.remote),
                ..(*d).clone()
            })
            .collect();
        dialogs = anonymous.iter().collect();
    }
    let dummy = dialog_info::Dialog::dummy_terminated();
    if dialogs.is_empty() && watcher.options.dialog_idle == DialogIdle::DummyTerminated {
        dialogs.push(&dummy);
    }
    let mut out = String::new();
    dialog_info::write(
        &mut out,
        presentity,
        watcher.version,
        DocState::Full,
        &dialogs,
        sla,
    );
    Rendered {
        content_type: dialog_info::CONTENT_TYPE,
        body: out.into_bytes(),
    }
}

/// An outgoing dialog (direction initiator) that has not been answered yet.
fn ringing_out(d: &dialog_info::Dialog) -> bool {
    d.direction == Some(Direction::Initiator)
        && matches!(
            d.state,
            DialogState::Trying | DialogState::Proceeding | DialogState::Early
        )
}

impl EventPackage for Dialog {
    fn name(&self) -> &'static str {
        "dialog"
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
        render_dialogs(presentity, publications, watcher, false)
    }
}

/// A participant as a watcher not allowed to pick up sees it: no target naming a phone's
/// address. A target that only says the party holds (`+sip.rendering=no`, RFC 4235
/// §4.1.6.2) keeps saying so on the party's identity URI.
fn without_contact(p: &dialog_info::Participant) -> dialog_info::Participant {
    let target = p
        .target
        .as_ref()
        .filter(|t| !t.params.is_empty())
        .and_then(|t| {
            p.identity.as_ref().map(|id| dialog_info::Target {
                uri: id.uri.clone(),
                params: t.params.clone(),
            })
        });
    dialog_info::Participant {
        identity: p.identity.clone(),
        target,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::presence::package::RenderOptions;

    const ENTITY: &str = "sip:201@example.com";
    const CT: &str = "application/dialog-info+xml";

    /// As the in-process publisher writes them: one dialog each.
    const EARLY: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:201@example.com">
  <dialog id="call-1" call-id="a84b4c76e66710@192.0.2.5" local-tag="1928301774" remote-tag="a6c85cf" direction="recipient">
    <state>early</state>
    <local>
      <identity display="Bob">sip:201@example.com</identity>
      <target uri="sip:201@192.0.2.10:5060"/>
    </local>
    <remote>
      <identity display="Alice">sip:100@example.com</identity>
      <target uri="sip:100@192.0.2.20:5060"/>
    </remote>
  </dialog>
</dialog-info>
"#;
    const CONFIRMED_HELD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="full" entity="sip:201@example.com">
  <dialog id="call-2" call-id="f81d4fae7dec11d0@192.0.2.5" local-tag="314159" remote-tag="8321234356" direction="initiator">
    <state>confirmed</state>
    <duration>42</duration>
    <local>
      <identity display="Bob">sip:201@example.com</identity>
      <target uri="sip:201@192.0.2.10:5060">
        <param pname="+sip.rendering" pvalue="no"/>
      </target>
    </local>
    <remote>
      <identity display="Carol">sip:300@example.com</identity>
      <target uri="sip:300@192.0.2.30:5060"/>
    </remote>
  </dialog>
</dialog-info>
"#;

    fn render(pubs: &[PublishedBody<'_>], version: u32, options: RenderOptions) -> String {
        let r = Dialog.render(ENTITY, pubs, &view(&[], version, options));
        assert_eq!(r.content_type, CT);
        String::from_utf8(r.body).unwrap()
    }

    fn two() -> [PublishedBody<'static>; 2] {
        [
            publication("call-2", CT, CONFIRMED_HELD, 2),
            publication("call-1", CT, EARLY, 1),
        ]
    }

    #[test]
    fn rfc4235_golden_two_dialogs() {
        let out = render(&two(), 5, RenderOptions::default());
        assert_eq!(out, golden("dialog-two-dialogs.xml"));
        let back = dialog_info::parse(out.as_bytes()).unwrap();
        assert_eq!(back.version, 5);
        assert_eq!(back.entity, ENTITY);
        assert_eq!(back.dialogs.len(), 2);
    }

    #[test]
    fn rfc4235_golden_idle_empty_and_dummy() {
        assert_eq!(
            render(&[], 1, RenderOptions::default()),
            golden("dialog-idle-empty.xml")
        );
        let dummy = RenderOptions {
            dialog_idle: DialogIdle::DummyTerminated,
            dialog_single: false,
            ..Default::default()
        };
        assert_eq!(render(&[], 1, dummy), golden("dialog-idle-dummy.xml"));
        // With dialogs, no dummy.
        assert!(!render(&two(), 1, dummy).contains("id=\"idle\""));
    }

    #[test]
    fn golden_single_dialog_mode_keeps_the_early_one() {
        let single = RenderOptions {
            dialog_idle: DialogIdle::Empty,
            dialog_single: true,
            ..Default::default()
        };
        assert_eq!(render(&two(), 6, single), golden("dialog-single.xml"));
    }

    #[test]
    fn single_mode_ties_go_to_the_newest_publication() {
        let a = EARLY.replace("call-1\"", "a\"");
        let b = EARLY.replace("call-1\"", "b\"");
        let pubs = [publication("a", CT, &a, 1), publication("b", CT, &b, 9)];
        let single = RenderOptions {
            dialog_idle: DialogIdle::Empty,
            dialog_single: true,
            ..Default::default()
        };
        let out = render(&pubs, 1, single);
        assert!(out.contains("<dialog id=\"b\"") && !out.contains("<dialog id=\"a\""));
    }

    #[test]
    fn one_dialog_id_in_two_publications_newest_wins() {
        let terminated = EARLY.replace(
            "<state>early</state>",
            "<state event=\"cancelled\">terminated</state>",
        );
        for (seq_early, seq_term) in [(1, 2), (2, 1)] {
            let pubs = [
                publication("x", CT, EARLY, seq_early),
                publication("y", CT, &terminated, seq_term),
            ];
            let doc =
                dialog_info::parse(render(&pubs, 1, RenderOptions::default()).as_bytes()).unwrap();
            assert_eq!(doc.dialogs.len(), 1);
            let want = if seq_term > seq_early {
                DialogState::Terminated
            } else {
                DialogState::Early
            };
            assert_eq!(doc.dialogs[0].state, want);
        }
    }

    #[test]
    fn terminated_dialogs_are_rendered() {
        let body = capture("asterisk-pjsip-dialog-info-v10-terminated-minimal.xml");
        let pubs = [publication("a", CT, &body, 1)];
        let out = render(&pubs, 11, RenderOptions::default());
        assert!(
            out.contains("<dialog id=\"103\">\n    <state>terminated</state>"),
            "{out}"
        );
        assert!(
            out.contains("entity=\"sip:201@example.com\""),
            "the presentity, not the publisher's entity"
        );
    }

    #[test]
    fn the_line_appearance_is_not_written_for_blf() {
        let body = capture("polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip");
        let pubs = [publication("p", CT, &body, 1)];
        let out = render(&pubs, 1, RenderOptions::default());
        assert!(!out.contains("x-line-id"), "{out}");
        assert!(
            out.contains("<param pname=\"x-sipX-nonat\" pval=\"\"/>"),
            "{out}"
        );
    }

    #[test]
    fn version_is_the_first_quoted_number_the_core_can_replace() {
        // The core renders once with u32::MAX and puts each watcher's version in place of
        // the first `"4294967295"`.
        let out = render(&two(), u32::MAX, RenderOptions::default());
        let first = out.find("\"4294967295\"").unwrap();
        assert!(out[..first].ends_with("version="), "{out}");
    }

    #[test]
    fn validate_checks_type_and_document() {
        assert!(Dialog.validate(CT, EARLY.as_bytes()).is_ok());
        assert!(Dialog
            .validate("application/pidf+xml", EARLY.as_bytes())
            .is_err());
        let e = Dialog
            .validate(CT, EARLY.replace("early", "ringing").as_bytes())
            .unwrap_err();
        assert!(
            e.to_string().contains("'ringing' is not a dialog state"),
            "{e}"
        );
    }

    #[test]
    fn many_publications_render_without_quadratic_blowup() {
        // 1,000 one-dialog publications: one pass with a hash map.
        let bodies: Vec<String> = (0..1000)
            .map(|i| EARLY.replace("call-1\"", &format!("call-{i}\"")))
            .collect();
        let pubs: Vec<PublishedBody<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| publication("s", CT, b, i as u64))
            .collect();
        let out = render(&pubs, 1, RenderOptions::default());
        assert_eq!(out.matches("<dialog id=").count(), 1000);
    }

    #[test]
    fn vendor_caller_confirmed_shows_ringing_outgoing_calls_confirmed() {
        // pua_dialoginfo's caller_confirmed as a vendor-profile option: the watcher's phone
        // sees an outgoing call that still rings as confirmed; incoming calls still ring.
        let outgoing = EARLY
            .replace("call-1\"", "out\"")
            .replace("direction=\"recipient\"", "direction=\"initiator\"");
        let pubs = [
            publication("in", CT, EARLY, 1),
            publication("out", CT, &outgoing, 2),
        ];
        let opts = RenderOptions {
            caller_confirmed: true,
            ..Default::default()
        };
        let doc = dialog_info::parse(render(&pubs, 1, opts).as_bytes()).unwrap();
        let state = |id: &str| doc.dialogs.iter().find(|d| d.id == id).unwrap().state;
        assert_eq!(state("out"), DialogState::Confirmed);
        assert_eq!(state("call-1"), DialogState::Early);
        // Off (the default): as published.
        let doc =
            dialog_info::parse(render(&pubs, 1, RenderOptions::default()).as_bytes()).unwrap();
        assert!(doc.dialogs.iter().all(|d| d.state == DialogState::Early));
        // Terminated outgoing calls stay terminated.
        let ended = outgoing.replace("<state>early</state>", "<state>terminated</state>");
        let pubs = [publication("out", CT, &ended, 1)];
        let doc = dialog_info::parse(render(&pubs, 1, opts).as_bytes()).unwrap();
        assert_eq!(doc.dialogs[0].state, DialogState::Terminated);
    }

    #[test]
    fn rfc4235_4_1_dialog_ids_only_for_watchers_allowed_to_pick_up() {
        let pubs = [publication("call-1", CT, EARLY, 1)];
        let with = render(&pubs, 1, RenderOptions::default());
        assert!(
            with.contains("call-id=\"a84b4c76e66710@192.0.2.5\"")
                && with.contains("local-tag=\"1928301774\"")
                && with.contains("remote-tag=\"a6c85cf\""),
            "{with}"
        );
        let opts = RenderOptions {
            without_dialog_ids: true,
            ..Default::default()
        };
        let without = render(&pubs, 1, opts);
        assert!(
            !without.contains("call-id=")
                && !without.contains("local-tag=")
                && !without.contains("remote-tag=")
                && !without.contains("<target"),
            "{without}"
        );
        // The lamp itself is the same: the dialog, its state, direction and parties.
        let doc = dialog_info::parse(without.as_bytes()).unwrap();
        assert_eq!(doc.dialogs.len(), 1);
        let d = &doc.dialogs[0];
        assert_eq!(
            (d.id.as_str(), d.state, d.direction),
            ("call-1", DialogState::Early, Some(Direction::Recipient))
        );
        assert!(d.remote.identity.is_some());
        assert!(
            with.contains("<target uri=\"sip:100@192.0.2.20:5060\""),
            "{with}"
        );
    }

    #[test]
    fn rfc4235_4_1_6_2_a_watcher_without_ids_still_sees_hold_but_no_phone_address() {
        let pubs = [publication("call-2", CT, CONFIRMED_HELD, 1)];
        let opts = RenderOptions {
            without_dialog_ids: true,
            ..Default::default()
        };
        let without = render(&pubs, 1, opts);
        assert!(!without.contains("192.0.2."), "{without}");
        let doc = dialog_info::parse(without.as_bytes()).unwrap();
        let d = &doc.dialogs[0];
        let held = d.local.target.as_ref().expect("the hold stays visible");
        assert_eq!(held.uri, "sip:201@example.com");
        assert_eq!(held.params[0].name, "+sip.rendering");
        assert!(d.remote.target.is_none());
    }
}
