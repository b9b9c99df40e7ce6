//! pua_dialoginfo: turns a call of the dialog tracker into RFC 4235 dialog-info publications
//! for the local users in it (BLF lamps). Pure, and no XML is made here: the caller hands
//! the publications, typed, to [`Pua::publish`](crate::pua::Pua::publish) (package
//! `dialog`), which gives them to our presence server and, if configured, to a remote
//! presence server; each renders the document only when a NOTIFY or PUBLISH leaves.
//!
//! Per call up to two publications: the caller's side (direction `initiator`, for the
//! caller's AOR) and the callee's side (direction `recipient`, for the callee's AOR), each
//! only for a local, enabled and allowed user. Each is a full document of that call's dialogs
//! as that side sees them: one `<dialog>` per live branch (forked early dialogs each on their
//! own), or before any to-tag one `<dialog>` for the call. The source id is stable per call
//! and side, so every change replaces the previous publication; an ended call is published
//! all-terminated, which the presence server keeps for a few seconds (`TERMINATED_LINGER`)
//! so watchers see the lamp go off, then drops.

use crate::config::DialogInfoConfig;
use crate::dialog::{Branch, Call, DialogState, EndReason};
use crate::sip::body::dialog_info::{
    self, Dialog, DialogInfo, Direction, DocState, Identity, Param, Participant, StateEvent, Target,
};
use std::sync::Arc;

/// One publication to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The local user's AOR.
    pub presentity: String,
    /// Stable per call and side: "dlg:<hash>:caller" / "dlg:<hash>:callee".
    pub source_id: String,
    /// The side's dialog state, typed: the presence server keeps it so and renders
    /// `application/dialog-info+xml` only when a NOTIFY (or a PUBLISH to a remote presence
    /// server) leaves. `&publication.body` goes to [`Pua::publish`](crate::pua::Pua::publish)
    /// as it is.
    pub body: Arc<DialogInfo>,
    /// Seconds: a call cannot outlive `max_lifetime`; ended calls are cut short by the server.
    pub expires: u32,
}

/// The media type of [`Publication::body`] once rendered.
pub const CONTENT_TYPE: &str = dialog_info::CONTENT_TYPE;

/// Which end of the call a publication shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

/// 0..=2 publications for one change of `call`: the caller's side for `caller.aor` and the
/// callee's side for `callee.aor`, each only when that party is local, the side is enabled
/// and `users` allows the user. `max_lifetime` is `dialog.max_lifetime` in seconds.
pub fn publications(call: &Call, cfg: &DialogInfoConfig, max_lifetime: u64) -> Vec<Publication> {
    if !cfg.enabled {
        return Vec::new();
    }
    let expires = u32::try_from(max_lifetime.saturating_add(300)).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    for (side, on, party) in [
        (Side::Caller, cfg.caller, &call.caller),
        (Side::Callee, cfg.callee, &call.callee),
    ] {
        let Some(aor) = party.aor.as_deref().filter(|a| !a.is_empty()) else {
            continue;
        };
        if !on || !cfg.allows(aor) {
            continue;
        }
        if side == Side::Callee && !cfg.callee_trying && !callee_shown(call) {
            // Nothing rings yet: the callee's lamp stays as it is (Kamailio's behaviour; a
            // BLF key has nothing to show for an INVITE still on its way).
            continue;
        }
        out.push(Publication {
            presentity: aor.to_string(),
            source_id: source_id(call, side),
            body: Arc::new(document(call, side, aor, cfg)),
            expires,
        });
    }
    out
}

/// Whether the callee's side shows the call: while it lasts, once a phone rings (an early
/// dialog) or answered; when it ends, if a provisional answer ever came (it may have rung).
/// A call refused at once (a 486, even with its To-tag) publishes nothing for the callee.
fn callee_shown(call: &Call) -> bool {
    let rang = !call.branches.is_empty() || call.confirmed_ms.is_some();
    if call.is_terminated() {
        rang || call.proceeding
    } else {
        rang
    }
}

/// The source id of one side of a call.
pub fn source_id(call: &Call, side: Side) -> String {
    format!(
        "dlg:{:016x}:{}",
        fnv1a(&[&call.key.call_id, &call.key.from_tag]),
        side.name()
    )
}

/// The dialog-info document of one side of `call` for `entity`.
pub fn document(call: &Call, side: Side, entity: &str, cfg: &DialogInfoConfig) -> DialogInfo {
    let mut dialogs: Vec<Dialog> = call
        .branches
        .iter()
        .filter(|b| b.state != DialogState::Terminated || call.is_terminated())
        .map(|b| dialog(call, Some(b), side, cfg))
        .collect();
    if dialogs.is_empty() {
        dialogs.push(dialog(call, None, side, cfg));
    }
    DialogInfo {
        entity: entity.to_string(),
        version: u32::try_from(call.seq).unwrap_or(u32::MAX),
        state: DocState::Full,
        dialogs,
    }
}

/// One `<dialog>`: a branch, or (`None`) the call before any to-tag.
fn dialog(call: &Call, branch: Option<&Branch>, side: Side, cfg: &DialogInfoConfig) -> Dialog {
    let to_tag = branch.map(|b| b.to_tag.as_str());
    let side_name = side.name();
    let id = format!(
        "{:016x}",
        fnv1a(&[
            &call.key.call_id,
            &call.key.from_tag,
            to_tag.unwrap_or(""),
            side_name
        ])
    );
    let mut state = if call.is_terminated() {
        DialogState::Terminated
    } else {
        branch.map(|b| b.state).unwrap_or(call.state)
    };
    if side == Side::Caller
        && cfg.caller_confirmed
        && matches!(
            state,
            DialogState::Trying | DialogState::Proceeding | DialogState::Early
        )
    {
        state = DialogState::Confirmed;
    }
    let mut d = Dialog::new(id, state);
    d.direction = Some(match side {
        Side::Caller => Direction::Initiator,
        Side::Callee => Direction::Recipient,
    });
    if state == DialogState::Terminated {
        d.event = call.end.map(|r| event(r, side));
        d.code = call.code;
    }
    if cfg.include_callid {
        d.call_id = Some(call.key.call_id.clone());
    }
    if cfg.include_tags {
        let from_tag = Some(call.key.from_tag.clone());
        let to_tag = to_tag.map(str::to_string);
        (d.local_tag, d.remote_tag) = match side {
            Side::Caller => (from_tag, to_tag),
            Side::Callee => (to_tag, from_tag),
        };
    }
    if cfg.include_localremote {
        let caller_held = branch.is_some_and(|b| b.caller_held);
        let callee_held = branch.is_some_and(|b| b.callee_held);
        let caller = participant(
            &call.caller.uri,
            call.caller.display.as_deref(),
            call.caller.target.as_deref(),
            caller_held,
        );
        let callee_target = branch.and_then(|b| b.target.as_deref()).or(call
            .callee
            .target
            .as_deref()
            .filter(|_| branch.is_none()));
        let callee = participant(
            &call.callee.uri,
            call.callee.display.as_deref(),
            callee_target,
            callee_held,
        );
        (d.local, d.remote) = match side {
            Side::Caller => (caller, callee),
            Side::Callee => (callee, caller),
        };
    }
    d
}

/// `<local>`/`<remote>`: identity and target; a holding party's target says it does not
/// render media (`+sip.rendering=no`, RFC 4235 §4.1.6.2 with RFC 3840's feature tag).
fn participant(uri: &str, display: Option<&str>, target: Option<&str>, held: bool) -> Participant {
    let identity = (!uri.is_empty()).then(|| Identity {
        uri: uri.to_string(),
        display: display.filter(|d| !d.is_empty()).map(str::to_string),
    });
    let target_uri = target.or(if held && !uri.is_empty() {
        Some(uri)
    } else {
        None
    });
    let target = target_uri.map(|t| Target {
        uri: t.to_string(),
        params: if held {
            vec![Param {
                name: "+sip.rendering".into(),
                value: "no".into(),
            }]
        } else {
            Vec::new()
        },
    });
    Participant { identity, target }
}

/// RFC 4235 §4.1.2 `event` for one side: a BYE is `local-bye` for the side that sent it.
fn event(reason: EndReason, side: Side) -> StateEvent {
    match (reason, side) {
        (EndReason::Cancelled, _) => StateEvent::Cancelled,
        (EndReason::Rejected, _) => StateEvent::Rejected,
        (EndReason::Replaced, _) => StateEvent::Replaced,
        (EndReason::CallerBye, Side::Caller) | (EndReason::CalleeBye, Side::Callee) => {
            StateEvent::LocalBye
        }
        (EndReason::CallerBye, Side::Callee) | (EndReason::CalleeBye, Side::Caller) => {
            StateEvent::RemoteBye
        }
        (EndReason::Timeout, _) => StateEvent::Timeout,
        (EndReason::Error, _) => StateEvent::Error,
    }
}

/// FNV-1a 64 over the parts (each followed by a 0 byte): stable across builds and restarts,
/// unlike std's hasher.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests;
