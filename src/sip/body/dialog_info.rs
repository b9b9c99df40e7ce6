//! Dialog-info (RFC 4235, `application/dialog-info+xml`): a typed model, parsing with
//! validation, and printing — with the Bridged Line Appearance additions phones use
//! (draft-anil-sipping-bla-03 and its descendants).
//!
//! The line appearance comes in several spellings, all read into [`Dialog::line`]:
//! - `<param pname="x-line-id" pval="0"/>` in a participant's `<target>` (Polycom, sipXsaa);
//! - the same with `pvalue` (RFC 4235's prose, yxa, FreeSWITCH);
//! - `<param pname="appearance" .../>`;
//! - an `<appearance>` element in the dialog (draft-ietf-bliss-shared-appearances,
//!   `urn:ietf:params:xml:ns:sa-dialog-info`, or any namespace).
//!
//! Printing writes one form only: `<param pname="x-line-id" pval="N"/>` first in the local
//! `<target>` — `pval` is what RFC 4235's schema and Polycom (its default
//! `voIpProt.SIP.dialog.usePvalue=0`) read, and how sipXsaa writes it. All target parameters
//! are printed with `pval` for the same reason.
//!
//! Not kept: `<replaces>`, `<referred-by>`, `<route-set>`, `<session-description>`,
//! `<cseq>` and unknown extensions (no watcher we serve reads them).

use super::xml::{self, escape_attr, escape_text, indent, push_attr, Element};
use super::{quote, BodyError};

pub const NS_DIALOG_INFO: &str = "urn:ietf:params:xml:ns:dialog-info";
/// Shared appearances (draft-ietf-bliss-shared-appearances) namespace.
pub const NS_SHARED_APPEARANCE: &str = "urn:ietf:params:xml:ns:sa-dialog-info";
/// Media type of dialog-info.
pub const CONTENT_TYPE: &str = "application/dialog-info+xml";

/// The id [`Dialog::dummy_terminated`] uses.
pub const DUMMY_DIALOG_ID: &str = "idle";

/// The `state` attribute of `<dialog-info>` (RFC 4235 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocState {
    Full,
    Partial,
}

impl DocState {
    pub fn as_str(self) -> &'static str {
        match self {
            DocState::Full => "full",
            DocState::Partial => "partial",
        }
    }

    /// The state named by [`DocState::as_str`]'s text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(DocState::Full),
            "partial" => Some(DocState::Partial),
            _ => None,
        }
    }
}

/// The `direction` attribute of `<dialog>` (RFC 4235 §4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Initiator,
    Recipient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Initiator => "initiator",
            Direction::Recipient => "recipient",
        }
    }

    /// The direction named by [`Direction::as_str`]'s text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "initiator" => Some(Direction::Initiator),
            "recipient" => Some(Direction::Recipient),
            _ => None,
        }
    }
}

/// A dialog's `<state>` (RFC 4235 §3.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialogState {
    Trying,
    Proceeding,
    Early,
    Confirmed,
    Terminated,
}

impl DialogState {
    pub fn as_str(self) -> &'static str {
        match self {
            DialogState::Trying => "trying",
            DialogState::Proceeding => "proceeding",
            DialogState::Early => "early",
            DialogState::Confirmed => "confirmed",
            DialogState::Terminated => "terminated",
        }
    }

    /// The state named by [`DialogState::as_str`]'s text.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "trying" => DialogState::Trying,
            "proceeding" => DialogState::Proceeding,
            "early" => DialogState::Early,
            "confirmed" => DialogState::Confirmed,
            "terminated" => DialogState::Terminated,
            _ => return None,
        })
    }
}

/// How relevant a dialog in this state is to a lamp, for single-dialog mode: early (ringing)
/// > confirmed > trying/proceeding > terminated.
pub fn rank(state: DialogState) -> u8 {
    match state {
        DialogState::Early => 4,
        DialogState::Confirmed => 3,
        DialogState::Trying | DialogState::Proceeding => 2,
        DialogState::Terminated => 1,
    }
}

/// The `event` attribute of `<state>` (RFC 4235 §4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    Cancelled,
    Rejected,
    Replaced,
    LocalBye,
    RemoteBye,
    Error,
    Timeout,
}

impl StateEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            StateEvent::Cancelled => "cancelled",
            StateEvent::Rejected => "rejected",
            StateEvent::Replaced => "replaced",
            StateEvent::LocalBye => "local-bye",
            StateEvent::RemoteBye => "remote-bye",
            StateEvent::Error => "error",
            StateEvent::Timeout => "timeout",
        }
    }

    /// The event named by [`StateEvent::as_str`]'s text.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cancelled" => StateEvent::Cancelled,
            "rejected" => StateEvent::Rejected,
            "replaced" => StateEvent::Replaced,
            "local-bye" => StateEvent::LocalBye,
            "remote-bye" => StateEvent::RemoteBye,
            "error" => StateEvent::Error,
            "timeout" => StateEvent::Timeout,
            _ => return None,
        })
    }
}

/// The `+sip.rendering` target parameter (RFC 3840 feature tag): whether media is being
/// rendered — `no` on a BLA line means held (appearance still taken, line not busy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    Yes,
    No,
    Unknown,
}

impl Rendering {
    pub fn as_str(self) -> &'static str {
        match self {
            Rendering::Yes => "yes",
            Rendering::No => "no",
            Rendering::Unknown => "unknown",
        }
    }
}

/// A `<param>` of a `<target>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: String,
}

/// A participant's `<target>`: its contact URI and parameters (the line parameter is not
/// kept here but in [`Dialog::line`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uri: String,
    pub params: Vec<Param>,
}

/// A participant's `<identity>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uri: String,
    pub display: Option<String>,
}

/// `<local>` or `<remote>`; both fields `None` = the element is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Participant {
    pub identity: Option<Identity>,
    pub target: Option<Target>,
}

impl Participant {
    pub fn is_empty(&self) -> bool {
        self.identity.is_none() && self.target.is_none()
    }

    /// The value of target parameter `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.target
            .as_ref()?
            .params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_str())
    }
}

/// One `<dialog>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub id: String,
    pub call_id: Option<String>,
    pub local_tag: Option<String>,
    pub remote_tag: Option<String>,
    pub direction: Option<Direction>,
    pub state: DialogState,
    pub event: Option<StateEvent>,
    pub code: Option<u16>,
    /// Seconds since the dialog was created (`<duration>`).
    pub duration: Option<u64>,
    pub local: Participant,
    pub remote: Participant,
    /// The BLA line appearance (`x-line-id`/`appearance`), whatever spelling it came in.
    pub line: Option<u32>,
}

impl Dialog {
    /// A dialog with only an id and a state.
    pub fn new(id: impl Into<String>, state: DialogState) -> Self {
        Dialog {
            id: id.into(),
            call_id: None,
            local_tag: None,
            remote_tag: None,
            direction: None,
            state,
            event: None,
            code: None,
            duration: None,
            local: Participant::default(),
            remote: Participant::default(),
            line: None,
        }
    }

    /// The placeholder some phones need to turn a lamp off: id [`DUMMY_DIALOG_ID`],
    /// direction recipient, state terminated.
    pub fn dummy_terminated() -> Self {
        let mut d = Dialog::new(DUMMY_DIALOG_ID, DialogState::Terminated);
        d.direction = Some(Direction::Recipient);
        d
    }

    /// The local target's `+sip.rendering`.
    pub fn rendering(&self) -> Option<Rendering> {
        match self.local.param("+sip.rendering")?.trim() {
            v if v.eq_ignore_ascii_case("yes") => Some(Rendering::Yes),
            v if v.eq_ignore_ascii_case("no") => Some(Rendering::No),
            _ => Some(Rendering::Unknown),
        }
    }
}

/// A whole dialog-info document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogInfo {
    pub entity: String,
    pub version: u32,
    pub state: DocState,
    pub dialogs: Vec<Dialog>,
}

impl DialogInfo {
    /// Prints the document; `with_line` writes each dialog's line appearance (BLA).
    pub fn render(&self, with_line: bool) -> String {
        let dialogs: Vec<&Dialog> = self.dialogs.iter().collect();
        let mut out = String::new();
        write(
            &mut out,
            &self.entity,
            self.version,
            self.state,
            &dialogs,
            with_line,
        );
        out
    }
}

/// Parses and validates a dialog-info document (RFC 4235 §4).
pub fn parse(body: &[u8]) -> Result<DialogInfo, BodyError> {
    let root = xml::parse(body)?;
    if !root.is(NS_DIALOG_INFO, "dialog-info") {
        return Err(if root.name.local == "dialog-info" {
            BodyError::invalid(format!(
                "<dialog-info> is not in the namespace {NS_DIALOG_INFO}"
            ))
        } else {
            BodyError::invalid(format!(
                "root element is <{}>, not <dialog-info>",
                quote(&root.name.qualified())
            ))
        });
    }
    let version = match root.attr("version").map(str::trim) {
        None | Some("") => return Err(BodyError::invalid("dialog-info has no version attribute")),
        Some(v) => number(v).ok_or_else(|| {
            BodyError::invalid(format!(
                "dialog-info version '{}' is not a number",
                quote(v)
            ))
        })?,
    };
    let state = match root.attr("state").map(str::trim) {
        Some("full") => DocState::Full,
        Some("partial") => DocState::Partial,
        None => return Err(BodyError::invalid("dialog-info has no state attribute")),
        Some(other) => {
            return Err(BodyError::invalid(format!(
                "dialog-info state '{}' is not full or partial",
                quote(other)
            )))
        }
    };
    let entity = root.attr("entity").map(str::trim).unwrap_or("");
    if entity.is_empty() {
        return Err(BodyError::invalid("dialog-info has no entity attribute"));
    }
    let dialogs = root
        .children_named(NS_DIALOG_INFO, "dialog")
        .map(parse_dialog)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DialogInfo {
        entity: entity.to_string(),
        version: u32::try_from(version).unwrap_or(u32::MAX),
        state,
        dialogs,
    })
}

/// A non-negative integer (digits only), saturating.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn nonempty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn parse_dialog(el: &Element) -> Result<Dialog, BodyError> {
    let id = el.attr("id").map(str::trim).unwrap_or("");
    if id.is_empty() {
        return Err(BodyError::invalid("<dialog> has no id attribute"));
    }
    let direction = match el.attr("direction").map(str::trim) {
        None => None,
        Some("initiator") => Some(Direction::Initiator),
        Some("recipient") => Some(Direction::Recipient),
        Some(other) => {
            return Err(BodyError::invalid(format!(
                "dialog '{}' direction '{}' is not initiator or recipient",
                quote(id),
                quote(other)
            )))
        }
    };
    let Some(state_el) = el.child(NS_DIALOG_INFO, "state") else {
        return Err(BodyError::invalid(format!(
            "dialog '{}' has no <state>",
            quote(id)
        )));
    };
    let state_text = state_el.text();
    let state = DialogState::parse(state_text.trim()).ok_or_else(|| {
        BodyError::invalid(format!(
            "dialog '{}' state '{}' is not a dialog state",
            quote(id),
            quote(state_text.trim())
        ))
    })?;
    let event = match state_el.attr("event").map(str::trim) {
        None => None,
        Some(e) => Some(StateEvent::parse(e).ok_or_else(|| {
            BodyError::invalid(format!(
                "dialog '{}' state event '{}' is unknown",
                quote(id),
                quote(e)
            ))
        })?),
    };
    let code = match state_el.attr("code").map(str::trim) {
        None => None,
        Some(c) => Some(
            c.parse::<u16>()
                .ok()
                .filter(|c| (100..=699).contains(c))
                .ok_or_else(|| {
                    BodyError::invalid(format!(
                        "dialog '{}' state code '{}' is not a SIP status",
                        quote(id),
                        quote(c)
                    ))
                })?,
        ),
    };
    let duration = match el.child(NS_DIALOG_INFO, "duration") {
        None => None,
        Some(d) => {
            let text = d.text();
            Some(number(text.trim()).ok_or_else(|| {
                BodyError::invalid(format!(
                    "dialog '{}' duration '{}' is not a number",
                    quote(id),
                    quote(text.trim())
                ))
            })?)
        }
    };
    let mut line = None;
    let local = match el.child(NS_DIALOG_INFO, "local") {
        Some(p) => parse_participant(id, p, &mut line)?,
        None => Participant::default(),
    };
    let remote = match el.child(NS_DIALOG_INFO, "remote") {
        Some(p) => parse_participant(id, p, &mut line)?,
        None => Participant::default(),
    };
    if line.is_none() {
        if let Some(a) = el.elements().find(|e| e.name.local == "appearance") {
            line = Some(line_number(id, &a.text())?);
        }
    }
    Ok(Dialog {
        id: id.to_string(),
        call_id: nonempty(el.attr("call-id")),
        local_tag: nonempty(el.attr("local-tag")),
        remote_tag: nonempty(el.attr("remote-tag")),
        direction,
        state,
        event,
        code,
        duration,
        local,
        remote,
        line,
    })
}

fn line_number(id: &str, value: &str) -> Result<u32, BodyError> {
    value.trim().parse::<u32>().map_err(|_| {
        BodyError::invalid(format!(
            "dialog '{}' line appearance '{}' is not a number",
            quote(id),
            quote(value.trim())
        ))
    })
}

fn parse_participant(
    id: &str,
    el: &Element,
    line: &mut Option<u32>,
) -> Result<Participant, BodyError> {
    let identity = match el.child(NS_DIALOG_INFO, "identity") {
        None => None,
        Some(i) => {
            let uri = i.text().trim().to_string();
            if uri.is_empty() {
                None
            } else {
                Some(Identity {
                    uri,
                    display: el_display(i),
                })
            }
        }
    };
    let target = match el.child(NS_DIALOG_INFO, "target") {
        None => None,
        Some(t) => {
            let uri = t.attr("uri").map(str::trim).unwrap_or("");
            if uri.is_empty() {
                return Err(BodyError::invalid(format!(
                    "dialog '{}' <target> has no uri",
                    quote(id)
                )));
            }
            let mut params = Vec::new();
            for p in t.children_named(NS_DIALOG_INFO, "param") {
                let name = p.attr("pname").map(str::trim).unwrap_or("");
                if name.is_empty() {
                    return Err(BodyError::invalid(format!(
                        "dialog '{}' <param> has no pname",
                        quote(id)
                    )));
                }
                let value = p.attr("pval").or_else(|| p.attr("pvalue")).unwrap_or("");
                if name.eq_ignore_ascii_case("x-line-id") || name.eq_ignore_ascii_case("appearance")
                {
                    let n = line_number(id, value)?;
                    line.get_or_insert(n);
                } else {
                    params.push(Param {
                        name: name.to_string(),
                        value: value.to_string(),
                    });
                }
            }
            Some(Target {
                uri: uri.to_string(),
                params,
            })
        }
    };
    Ok(Participant { identity, target })
}

fn el_display(identity: &Element) -> Option<String> {
    identity.attr("display").map(str::to_string)
}

/// Appends a whole document: the XML declaration, `<dialog-info>` with these attributes and
/// `dialogs` in order. `with_line` writes each dialog's line appearance as
/// `<param pname="x-line-id" pval="N"/>` (see the module notes).
pub fn write(
    out: &mut String,
    entity: &str,
    version: u32,
    state: DocState,
    dialogs: &[&Dialog],
    with_line: bool,
) {
    out.reserve(200 + dialogs.len() * 400);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<dialog-info");
    push_attr(out, "xmlns", NS_DIALOG_INFO);
    push_attr(out, "version", &version.to_string());
    push_attr(out, "state", state.as_str());
    push_attr(out, "entity", entity);
    out.push_str(">\n");
    for dialog in dialogs {
        write_dialog(out, entity, dialog, with_line);
    }
    out.push_str("</dialog-info>\n");
}

fn write_dialog(out: &mut String, entity: &str, d: &Dialog, with_line: bool) {
    indent(out, 1);
    out.push_str("<dialog");
    push_attr(out, "id", &d.id);
    if let Some(v) = &d.call_id {
        push_attr(out, "call-id", v);
    }
    if let Some(v) = &d.local_tag {
        push_attr(out, "local-tag", v);
    }
    if let Some(v) = &d.remote_tag {
        push_attr(out, "remote-tag", v);
    }
    if let Some(v) = d.direction {
        push_attr(out, "direction", v.as_str());
    }
    out.push_str(">\n");
    indent(out, 2);
    out.push_str("<state");
    if let Some(e) = d.event {
        push_attr(out, "event", e.as_str());
    }
    if let Some(c) = d.code {
        push_attr(out, "code", &c.to_string());
    }
    out.push('>');
    out.push_str(d.state.as_str());
    out.push_str("</state>\n");
    if let Some(s) = d.duration {
        indent(out, 2);
        out.push_str("<duration>");
        out.push_str(&s.to_string());
        out.push_str("</duration>\n");
    }
    let line = if with_line { d.line } else { None };
    write_participant(out, "local", &d.local, line, entity);
    write_participant(out, "remote", &d.remote, None, entity);
    indent(out, 1);
    out.push_str("</dialog>\n");
}

fn write_param(out: &mut String, name: &str, value: &str) {
    indent(out, 4);
    out.push_str("<param");
    push_attr(out, "pname", name);
    push_attr(out, "pval", value);
    out.push_str("/>\n");
}

fn write_participant(
    out: &mut String,
    tag: &str,
    p: &Participant,
    line: Option<u32>,
    entity: &str,
) {
    if p.is_empty() && line.is_none() {
        return;
    }
    indent(out, 2);
    out.push('<');
    out.push_str(tag);
    out.push_str(">\n");
    if let Some(i) = &p.identity {
        indent(out, 3);
        out.push_str("<identity");
        if let Some(d) = &i.display {
            push_attr(out, "display", d);
        }
        out.push('>');
        escape_text(&i.uri, out);
        out.push_str("</identity>\n");
    }
    // A line appearance needs a target to sit in: the identity's URI, else the entity.
    let uri = match (&p.target, &p.identity) {
        (Some(t), _) => Some(t.uri.as_str()),
        (None, Some(i)) if line.is_some() => Some(i.uri.as_str()),
        (None, None) if line.is_some() => Some(entity),
        _ => None,
    };
    if let Some(uri) = uri {
        let params = p
            .target
            .as_ref()
            .map(|t| t.params.as_slice())
            .unwrap_or(&[]);
        indent(out, 3);
        out.push_str("<target uri=\"");
        escape_attr(uri, out);
        out.push('"');
        if params.is_empty() && line.is_none() {
            out.push_str("/>\n");
        } else {
            out.push_str(">\n");
            if let Some(n) = line {
                write_param(out, "x-line-id", &n.to_string());
            }
            for param in params {
                write_param(out, &param.name, &param.value);
            }
            indent(out, 3);
            out.push_str("</target>\n");
        }
    }
    indent(out, 2);
    out.push_str("</");
    out.push_str(tag);
    out.push_str(">\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(name: &str) -> String {
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

    fn doc(body: &str) -> DialogInfo {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().to_string()
    }

    fn wrap(dialogs: &str) -> String {
        format!("<dialog-info xmlns='{NS_DIALOG_INFO}' version='1' state='full' entity='sip:a@b'>{dialogs}</dialog-info>")
    }

    #[test]
    fn asterisk_minimal_bodies() {
        let v9 = doc(&capture(
            "asterisk-pjsip-dialog-info-v9-confirmed-minimal.xml",
        ));
        assert_eq!(v9.version, 9);
        assert_eq!(v9.state, DocState::Full);
        assert_eq!(v9.entity, "sip:103@192.168.1.10:5060");
        assert_eq!(v9.dialogs.len(), 1);
        let d = &v9.dialogs[0];
        assert_eq!((d.id.as_str(), d.state), ("103", DialogState::Confirmed));
        assert!(d.call_id.is_none() && d.local.is_empty() && d.remote.is_empty());
        let v10 = doc(&capture(
            "asterisk-pjsip-dialog-info-v10-terminated-minimal.xml",
        ));
        assert_eq!(v10.version, 10);
        assert_eq!(v10.dialogs[0].state, DialogState::Terminated);
    }

    #[test]
    fn freeswitch_identities_and_pvalue() {
        let info = doc(&capture(
            "freeswitch-dialog-info-confirmed-with-remote-identity.xml",
        ));
        let d = &info.dialogs[0];
        assert_eq!(d.direction, Some(Direction::Initiator));
        let li = d.local.identity.as_ref().unwrap();
        assert_eq!(
            (li.uri.as_str(), li.display.as_deref()),
            ("sip:11@pbx.xxxx.net", Some("11"))
        );
        assert_eq!(d.rendering(), Some(Rendering::Yes));
        let ri = d.remote.identity.as_ref().unwrap();
        assert_eq!(ri.display.as_deref(), Some("0310000"));
        assert_eq!(
            d.remote.target.as_ref().unwrap().uri,
            "sip:**11@pbx.xxxx.net"
        );
        assert_eq!(d.line, None);
    }

    #[test]
    fn bla_x_line_id_pval_from_sipxsaa_and_polycom() {
        let held = doc(&capture(
            "sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-no-held.xml",
        ));
        assert_eq!(held.state, DocState::Partial);
        let d = &held.dialogs[0];
        assert_eq!(d.line, Some(0));
        assert_eq!(d.rendering(), Some(Rendering::No));
        assert_eq!(d.call_id.as_deref(), Some("call-1116603513-890@10.1.1.153"));
        assert_eq!(d.local_tag.as_deref(), Some("264460498"));
        assert_eq!(d.remote_tag.as_deref(), Some("1c10982"));
        // The line parameter is moved out of the target's parameter list.
        assert_eq!(d.local.target.as_ref().unwrap().params.len(), 1);
        let yes = doc(&capture(
            "sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-yes.xml",
        ));
        assert_eq!(yes.dialogs[0].rendering(), Some(Rendering::Yes));

        let polycom = doc(&capture(
            "polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip",
        ));
        let d = &polycom.dialogs[0];
        assert_eq!(d.state, DialogState::Early);
        assert_eq!(d.line, Some(0));
        assert!(d.local.identity.is_none());
        assert_eq!(d.remote.param("x-sipX-nonat"), Some(""));
    }

    #[test]
    fn bla_x_line_id_pvalue_from_yxa() {
        let info = doc(&capture(
            "yxa-sipit-dialog-info-x-line-id-pvalue-terminated.xml",
        ));
        let d = &info.dialogs[0];
        assert_eq!(d.id, "(null)");
        assert_eq!(d.line, Some(0));
        assert_eq!(d.state, DialogState::Terminated);
        assert_eq!(
            d.remote.target.as_ref().unwrap().uri,
            "sip:ft@132.177.127.231:1237;transport=TCP"
        );
    }

    #[test]
    fn bla_appearance_param_and_element() {
        let p = doc(&wrap("<dialog id='a'><state>trying</state><local><target uri='sip:a@h'><param pname='appearance' pvalue='2'/></target></local></dialog>"));
        assert_eq!(p.dialogs[0].line, Some(2));
        let e = doc(&format!(
            "<dialog-info xmlns='{NS_DIALOG_INFO}' xmlns:sa='{NS_SHARED_APPEARANCE}' version='1' state='partial' entity='sip:a@b'>\
             <dialog id='a'><sa:appearance>3</sa:appearance><sa:exclusive>false</sa:exclusive><state>trying</state></dialog></dialog-info>"
        ));
        assert_eq!(e.dialogs[0].line, Some(3));
        let e = err(&wrap("<dialog id='a'><state>trying</state><local><target uri='sip:a@h'><param pname='x-line-id' pval='one'/></target></local></dialog>"));
        assert!(e.contains("line appearance 'one' is not a number"), "{e}");
    }

    #[test]
    fn rfc4235_4_1_root_and_its_attributes() {
        assert!(
            err("<dialog-info version='1' state='full' entity='sip:a@b'/>")
                .contains("not in the namespace")
        );
        assert!(err("<presence xmlns='urn:ietf:params:xml:ns:pidf'/>")
            .contains("root element is <presence>, not <dialog-info>"));
        let base = |attrs: &str| format!("<dialog-info xmlns='{NS_DIALOG_INFO}' {attrs}/>");
        assert!(err(&base("state='full' entity='sip:a@b'")).contains("no version"));
        assert!(err(&base("version='-1' state='full' entity='sip:a@b'")).contains("not a number"));
        assert!(err(&base("version='1' entity='sip:a@b'")).contains("no state"));
        assert!(err(&base("version='1' state='fool' entity='sip:a@b'"))
            .contains("state 'fool' is not full or partial"));
        assert!(err(&base("version='1' state='full'")).contains("no entity"));
        let huge = doc(&base(
            "version='99999999999999' state='full' entity='sip:a@b'",
        ));
        assert_eq!(huge.version, u32::MAX);
    }

    #[test]
    fn rfc4235_4_1_1_dialog_needs_id_and_valid_direction() {
        assert!(err(&wrap("<dialog><state>early</state></dialog>")).contains("<dialog> has no id"));
        assert!(err(&wrap(
            "<dialog id='x' direction='sideways'><state>early</state></dialog>"
        ))
        .contains("direction 'sideways'"));
    }

    #[test]
    fn rfc4235_4_1_2_state_values_event_and_code() {
        assert!(err(&wrap("<dialog id='x'/>")).contains("dialog 'x' has no <state>"));
        assert!(err(&wrap("<dialog id='x'><state>ringing</state></dialog>"))
            .contains("state 'ringing' is not a dialog state"));
        let d = doc(&wrap(
            "<dialog id='x'><state event='remote-bye' code='487'> terminated </state></dialog>",
        ));
        assert_eq!(d.dialogs[0].event, Some(StateEvent::RemoteBye));
        assert_eq!(d.dialogs[0].code, Some(487));
        assert!(err(&wrap(
            "<dialog id='x'><state event='hangup'>terminated</state></dialog>"
        ))
        .contains("event 'hangup' is unknown"));
        assert!(err(&wrap(
            "<dialog id='x'><state code='99'>terminated</state></dialog>"
        ))
        .contains("code '99'"));
    }

    #[test]
    fn rfc4235_4_1_6_target_needs_uri_and_params_need_names() {
        assert!(err(&wrap(
            "<dialog id='x'><state>early</state><local><target/></local></dialog>"
        ))
        .contains("<target> has no uri"));
        assert!(err(&wrap("<dialog id='x'><state>early</state><local><target uri='sip:a@b'><param pval='1'/></target></local></dialog>"))
            .contains("<param> has no pname"));
    }

    #[test]
    fn rank_orders_states_for_single_dialog_mode() {
        use DialogState::*;
        assert!(rank(Early) > rank(Confirmed));
        assert!(rank(Confirmed) > rank(Trying));
        assert_eq!(rank(Trying), rank(Proceeding));
        assert!(rank(Proceeding) > rank(Terminated));
    }

    #[test]
    fn render_then_parse_gives_the_same_document() {
        for name in [
            "freeswitch-dialog-info-confirmed-with-remote-identity.xml",
            "sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-no-held.xml",
            "yxa-sipit-dialog-info-x-line-id-pvalue-terminated.xml",
            "polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip",
            "asterisk-pjsip-dialog-info-v9-confirmed-minimal.xml",
        ] {
            let info = doc(&capture(name));
            let printed = info.render(true);
            assert_eq!(doc(&printed), info, "{name}:\n{printed}");
            // Without lines, the line is gone and nothing else changed.
            let mut no_line = info.clone();
            no_line.dialogs.iter_mut().for_each(|d| d.line = None);
            assert_eq!(doc(&info.render(false)), no_line, "{name}");
        }
    }

    #[test]
    fn render_escapes_and_synthesises_a_target_for_the_line() {
        let mut d = Dialog::new("a\"<b>", DialogState::Trying);
        d.local.identity = Some(Identity {
            uri: "sip:a&b@h".into(),
            display: Some("A \"B\" <C>".into()),
        });
        d.line = Some(7);
        let info = DialogInfo {
            entity: "sip:line@h".into(),
            version: 3,
            state: DocState::Partial,
            dialogs: vec![d],
        };
        let out = info.render(true);
        assert!(out.contains("<dialog id=\"a&quot;&lt;b&gt;\">"), "{out}");
        assert!(out
            .contains("<identity display=\"A &quot;B&quot; &lt;C&gt;\">sip:a&amp;b@h</identity>"));
        assert!(out.contains(
            "<target uri=\"sip:a&amp;b@h\">\n        <param pname=\"x-line-id\" pval=\"7\"/>"
        ));
        // Read back, the synthesised target is there.
        let mut expected = info.clone();
        expected.dialogs[0].local.target = Some(Target {
            uri: "sip:a&b@h".into(),
            params: vec![],
        });
        assert_eq!(doc(&out), expected);
    }

    #[test]
    fn hostile_input_is_refused_with_a_reason() {
        let deep = format!(
            "<dialog-info>{}{}</dialog-info>",
            "<x>".repeat(40),
            "</x>".repeat(40)
        );
        assert!(err(&deep).contains("deeper than 32"));
        let laughs = "<!DOCTYPE d [<!ENTITY a \"aaaa\">]><dialog-info>&a;</dialog-info>";
        assert!(err(laughs).contains("DOCTYPE"));
        assert!(
            err(&capture("polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip")[..300])
                .contains("truncated")
        );
        let e = parse(b"<dialog-info xmlns='urn:ietf:params:xml:ns:dialog-info' entity='\xff'/>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }
}
