//! The event-package trait (RFC 6665 §7): what a package checks in a PUBLISH body and how it
//! turns the current publications of one presentity into the document one watcher gets.
//! Each package is a small module in `packages/`; the presence core knows only this trait.

use crate::sip::body::dialog_info::DialogInfo;
use crate::sip::body::BodyError;

/// One publication as a package sees it (the core owns ETags, expiry and storage).
#[derive(Debug, Clone)]
pub struct PublishedBody<'a> {
    /// Who published it: an ETag-derived id for SIP PUBLISH, the caller's id for in-process
    /// publishers.
    pub source_id: &'a str,
    pub content_type: &'a str,
    /// The document as published; empty when the state came typed (`dialogs`).
    pub body: &'a [u8],
    /// Dialog state an in-process publisher handed in typed (package `dialog`): no XML to
    /// parse.
    pub dialogs: Option<&'a DialogInfo>,
    /// Arrival order (higher is newer): ties in aggregation go to the newest.
    pub seq: u64,
}

/// How a dialog-package document looks when a presentity has no dialogs (vendor profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DialogIdle {
    /// `<dialog-info>` without `<dialog>` children: most phones read this as lamp off.
    #[default]
    Empty,
    /// One `<dialog>` in state terminated: some phones need it to turn the lamp off.
    DummyTerminated,
}

/// Per-watcher rendering options, from the watcher's vendor profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RenderOptions {
    pub dialog_idle: DialogIdle,
    /// Send only the most relevant dialog: early > confirmed > trying/proceeding > terminated.
    pub dialog_single: bool,
    /// BLF: outgoing dialogs (direction initiator) still trying, proceeding or early are shown
    /// `confirmed` (pua_dialoginfo's `caller_confirmed`, per watcher).
    pub caller_confirmed: bool,
    /// BLF and BLA: the dialogs without `call-id`, `local-tag` and `remote-tag` (what directed call
    /// pickup needs, and what would let a watcher act inside the call), for watchers
    /// `presence.dialog_ids_to` does not give them to.
    pub without_dialog_ids: bool,
    /// `dialog;sla`: the watcher is this member phone of the shared line
    /// ([`crate::bla::phone_of`]); its own dialogs are not sent back to it as if they were
    /// another phone's.
    pub own_phone: Option<u64>,
}

/// What the watcher is and which document it is about to get.
#[derive(Debug, Clone)]
pub struct WatcherView<'a> {
    /// Media types from the SUBSCRIBE's Accept header, lowercased, without parameters;
    /// empty when the SUBSCRIBE had none (RFC 6665 §3.1.3: the package default).
    pub accept: &'a [String],
    /// The `version` attribute of this NOTIFY's body (dialog-info, watcherinfo): one more than
    /// the last one this watcher got.
    pub version: u32,
    pub options: RenderOptions,
}

/// A rendered NOTIFY body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

pub trait EventPackage: Send + Sync {
    /// The Event header token, e.g. `presence`, `dialog;sla` is `dialog` with `sla` set.
    fn name(&self) -> &'static str;

    /// Content types a PUBLISH may carry; anything else gets 415 with these in Accept
    /// (RFC 3903 §6 step 5).
    fn publish_types(&self) -> &'static [&'static str];

    /// Content types a watcher can be sent, preferred first. A SUBSCRIBE whose Accept names
    /// none of them gets 406 (RFC 6665 §4.2.1.1 / RFC 3261 §21.4.7).
    fn notify_types(&self) -> &'static [&'static str];

    /// Checks a PUBLISH body of an accepted content type; the error names what is wrong (400).
    fn validate(&self, content_type: &str, body: &[u8]) -> Result<(), BodyError>;

    /// The document for one watcher: all live publications of `presentity` (any order),
    /// merged. With no publications, the package's idle document (PIDF `closed`, an empty
    /// dialog-info, `Messages-Waiting: no`).
    fn render(
        &self,
        presentity: &str,
        publications: &[PublishedBody<'_>],
        watcher: &WatcherView<'_>,
    ) -> Rendered;
}
