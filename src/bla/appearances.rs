//! The appearance manager of shared lines (BLA, issue 12): per line, which member phone's
//! dialogs hold which appearance, and the arbitration that lets only one phone seize an
//! appearance. Pure: no I/O, no clock (times are unix seconds passed in), no configuration.
//!
//! A phone's state on a line is what it NOTIFYed inside our `dialog;sla` subscription to it
//! (typed [`DialogInfo`]). The rules (issue 12 §3, `/work/wt/BLA12.md`):
//! - `full` replaces the phone's dialogs, `partial` upserts by dialog id, a `terminated`
//!   dialog is removed; the document `version` is not checked (Polycom always sends 0);
//! - a dialog newly claiming appearance k is refused ([`Refusal::Taken`], nothing applied) while
//!   another phone has a live, not held, phone-confirmed dialog on k. A held dialog does not
//!   block: the claim is a pickup, the held dialog is superseded (hidden until the phone drops
//!   it). A dialog restored after a restart and not yet confirmed never blocks: it is dropped;
//! - dialogs without an appearance are private: kept (so `full`/`partial` stay right), never
//!   shown and never blocking;
//! - every field from the phone is bounded, and so is the number of dialogs.
//!
//! Invariant (checked by the property test): at any time at most one phone holds each
//! appearance with dialogs that are not superseded, so no appearance is ever shown live by two
//! phones; and a refused NOTIFY leaves the table exactly as it was.

use std::collections::{BTreeMap, BTreeSet};

use crate::sip::body::dialog_info::{
    Dialog, DialogInfo, DialogState, DocState, Participant, Rendering, Target,
};

/// Live dialogs one phone may have on one line (a Polycom has a handful of line keys with one
/// or two calls each; more is a broken or hostile phone).
pub const MAX_DIALOGS_PER_PHONE: usize = 16;
/// The longest dialog id, Call-ID, tag, URI, display name or target parameter kept (bytes).
/// Kamailio's `pua_bla` overflowed a 255-byte buffer on a longer Contact; every field we
/// republish to the other phones is bounded.
pub const MAX_FIELD_LEN: usize = 256;
/// The most appearances a line can have (the configuration allows 1..=64); [`Line::new`]
/// clamps to it so that a snapshot is always small.
pub const MAX_APPEARANCES: u32 = 64;

/// Why a phone's NOTIFY was refused; [`Refusal::status`] is the SIP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another phone's live dialog holds the appearance (sipXsaa answers the same 409).
    #[error("Conflict: appearance {appearance} is in use by another phone")]
    Taken { appearance: u32 },
    #[error("Conflict: no appearance {appearance}, the line has {appearances} appearances")]
    OutOfRange { appearance: u32, appearances: u32 },
    #[error("Bad Request: more than {limit} dialogs on this line from one phone")]
    TooMany { limit: usize },
    #[error("Bad Request: {what} longer than {limit} bytes")]
    FieldTooLong { what: &'static str, limit: usize },
}

impl Refusal {
    /// The SIP status and reason phrase (the reason names the problem).
    pub fn status(&self) -> (u16, String) {
        let code = match self {
            Refusal::Taken { .. } | Refusal::OutOfRange { .. } => 409,
            Refusal::TooMany { .. } | Refusal::FieldTooLong { .. } => 400,
        };
        (code, self.to_string())
    }
}

/// The outcome of an accepted NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What others see of this phone ([`Line::shown`]) changed, or `others` is not empty.
    pub changed: bool,
    /// The phone now holds a seized (trying) appearance.
    pub seized: bool,
    /// Other phones whose shown dialogs changed too: their held dialog was superseded by this
    /// phone's pickup, or their restored, unconfirmed dialog was dropped by this claim. Sorted.
    pub others: Vec<String>,
}

/// The state of one appearance, for the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppearanceState {
    Free,
    /// A dialog still `trying`: the phone went off-hook on it.
    Seized,
    /// `proceeding` or `early`.
    Ringing,
    /// `confirmed`.
    Active,
    /// `confirmed` with `+sip.rendering=no` on the local target.
    Held,
}

impl AppearanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            AppearanceState::Free => "free",
            AppearanceState::Seized => "seized",
            AppearanceState::Ringing => "ringing",
            AppearanceState::Active => "active",
            AppearanceState::Held => "held",
        }
    }

    /// Which of several dialogs on one appearance the dashboard shows: a call in progress
    /// before a ringing one, before a seize, before a held call.
    fn priority(self) -> u8 {
        match self {
            AppearanceState::Active => 4,
            AppearanceState::Ringing => 3,
            AppearanceState::Seized => 2,
            AppearanceState::Held => 1,
            AppearanceState::Free => 0,
        }
    }
}

/// One appearance in [`Line::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appearance {
    pub index: u32,
    pub state: AppearanceState,
    /// The phone holding it (`None` when free).
    pub phone: Option<String>,
    /// The far end: remote identity URI, else remote target URI.
    pub peer: Option<String>,
    /// When the shown dialog entered its state (unix s); 0 when free (a release has no clock).
    pub since: u64,
}

/// A dialog as the table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    dialog: Dialog,
    /// When the dialog entered its current [`phase`] (a re-sent `trying` does not extend a
    /// seize).
    since: u64,
    /// Held, then picked up by another phone: hidden, never claims, gone when the phone drops
    /// it.
    superseded: bool,
    /// From [`Line::restore`], not yet said again by the phone: never blocks a claim.
    restored: bool,
}

impl Kept {
    /// The appearance this dialog holds: it has one and is not superseded.
    fn holds(&self) -> Option<u32> {
        if self.superseded {
            None
        } else {
            self.dialog.line
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PhoneDialogs {
    /// Live dialogs in the order the phone sent them (never terminated ones).
    dialogs: Vec<Kept>,
    /// Restored and no full NOTIFY since.
    unconfirmed: bool,
}

/// One shared line: its appearances and every member phone's dialogs on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    aor: String,
    appearances: u32,
    /// Phone key → its dialogs; a phone with no dialog has no entry. Ordered, so every
    /// listing is deterministic.
    phones: BTreeMap<String, PhoneDialogs>,
}

/// What a claim does to another phone's dialog on the claimed appearance.
enum Yield {
    Supersede,
    Drop,
}

impl Line {
    /// A line with `appearances` appearances (clamped to [`MAX_APPEARANCES`]), all free.
    pub fn new(aor: &str, appearances: u32) -> Line {
        Line {
            aor: aor.to_string(),
            appearances: appearances.min(MAX_APPEARANCES),
            phones: BTreeMap::new(),
        }
    }

    pub fn aor(&self) -> &str {
        &self.aor
    }

    pub fn appearances(&self) -> u32 {
        self.appearances
    }

    /// A NOTIFY body from `phone` inside our subscription to it. Atomic: on `Err` nothing
    /// changed. A terminated dialog's appearance is not range-checked (it claims nothing).
    pub fn apply(&mut self, phone: &str, doc: &DialogInfo, now: u64) -> Result<Applied, Refusal> {
        for d in &doc.dialogs {
            check_fields(d)?;
        }
        for d in doc
            .dialogs
            .iter()
            .filter(|d| d.state != DialogState::Terminated)
        {
            match d.line {
                Some(k) if k >= self.appearances => {
                    return Err(Refusal::OutOfRange {
                        appearance: k,
                        appearances: self.appearances,
                    })
                }
                _ => {}
            }
        }

        let before = self.shown(phone);
        let old: &[Kept] = self
            .phones
            .get(phone)
            .map(|p| p.dialogs.as_slice())
            .unwrap_or(&[]);
        let mut new: Vec<Kept> = match doc.state {
            DocState::Full => Vec::new(),
            DocState::Partial => old.to_vec(),
        };
        for d in &doc.dialogs {
            let at = new.iter().position(|k| k.dialog.id == d.id);
            if d.state == DialogState::Terminated {
                if let Some(i) = at {
                    new.remove(i);
                }
                continue;
            }
            let prev = old.iter().find(|k| k.dialog.id == d.id);
            let kept = Kept {
                dialog: d.clone(),
                since: match prev {
                    Some(p) if phase(&p.dialog) == phase(d) => p.since,
                    _ => now,
                },
                superseded: prev.is_some_and(|p| p.superseded),
                restored: false,
            };
            match at {
                Some(i) => new[i] = kept,
                None => new.push(kept),
            }
        }
        if new.len() > MAX_DIALOGS_PER_PHONE {
            return Err(Refusal::TooMany {
                limit: MAX_DIALOGS_PER_PHONE,
            });
        }

        // Appearances this NOTIFY newly claims, and what each claim does to the other phones.
        // A claim is a dialog on an appearance it was not on before (a second call on an
        // appearance the phone already has counts too: another phone's call may ring there).
        let held_before: BTreeSet<(u32, &str)> = old
            .iter()
            .filter_map(|d| d.holds().map(|k| (k, d.dialog.id.as_str())))
            .collect();
        let claims: BTreeSet<u32> = new
            .iter()
            .filter_map(|d| {
                d.holds()
                    .filter(|k| !held_before.contains(&(*k, d.dialog.id.as_str())))
            })
            .collect();
        let mut yields: Vec<(String, String, Yield)> = Vec::new();
        for &k in &claims {
            // The call this phone reports on `k`, when it is not a seize: an incoming call
            // to the line rings every member phone (one fork each, one Call-ID), and each
            // may report it ringing on the same appearance.
            // `Some(call)` when every dialog of this phone on `k` is that one call (no seize).
            let mut on_k = new.iter().filter(|n| n.holds() == Some(k));
            let first = on_k.next().and_then(|n| n.dialog.call_id.as_deref());
            let ringing_call = first.filter(|c| {
                new.iter().filter(|n| n.holds() == Some(k)).all(|n| {
                    n.dialog.state != DialogState::Trying && n.dialog.call_id.as_deref() == Some(*c)
                })
            });
            for (other, dialogs) in self.phones.iter().filter(|(p, _)| p.as_str() != phone) {
                for kept in dialogs.dialogs.iter().filter(|d| d.holds() == Some(k)) {
                    let same_call = matches!(
                        kept.dialog.state,
                        DialogState::Proceeding | DialogState::Early
                    ) && kept
                        .dialog
                        .call_id
                        .as_deref()
                        .is_some_and(|c| ringing_call == Some(c));
                    if same_call {
                        continue;
                    }
                    let action = if kept.restored {
                        Yield::Drop
                    } else if phase(&kept.dialog) == AppearanceState::Held {
                        Yield::Supersede
                    } else {
                        return Err(Refusal::Taken { appearance: k });
                    };
                    yields.push((other.clone(), kept.dialog.id.clone(), action));
                }
            }
        }

        // Accepted: commit.
        let mut others = BTreeSet::new();
        for (other, id, action) in yields {
            if let Some(entry) = self.phones.get_mut(&other) {
                match action {
                    Yield::Drop => entry.dialogs.retain(|d| d.dialog.id != id),
                    Yield::Supersede => entry
                        .dialogs
                        .iter_mut()
                        .filter(|d| d.dialog.id == id)
                        .for_each(|d| d.superseded = true),
                }
                if entry.dialogs.is_empty() {
                    self.phones.remove(&other);
                }
                others.insert(other);
            }
        }
        if new.is_empty() {
            self.phones.remove(phone);
        } else {
            let entry = self.phones.entry(phone.to_string()).or_default();
            entry.dialogs = new;
            if doc.state == DocState::Full {
                entry.unconfirmed = false;
            }
        }
        let others: Vec<String> = others.into_iter().collect();
        Ok(Applied {
            changed: !others.is_empty() || self.shown(phone) != before,
            seized: self.has_seize(phone),
            others,
        })
    }

    /// The phone's registration ended, our subscription to it failed for good, or it NOTIFYed
    /// `terminated`: every dialog it had on the line goes. Whether it had any.
    pub fn release_phone(&mut self, phone: &str) -> bool {
        self.phones.remove(phone).is_some()
    }

    /// Seizes (dialogs on an appearance still `trying`) at least `timeout` s old go; the phones
    /// that lost one, sorted.
    pub fn expire_seizes(&mut self, now: u64, timeout: u64) -> Vec<String> {
        let mut changed = Vec::new();
        for (phone, entry) in self.phones.iter_mut() {
            let before = entry.dialogs.len();
            entry
                .dialogs
                .retain(|d| !(is_seize(d) && now.saturating_sub(d.since) >= timeout));
            if entry.dialogs.len() != before {
                changed.push(phone.clone());
            }
        }
        self.phones.retain(|_, e| !e.dialogs.is_empty());
        changed
    }

    /// When the next seize expires (unix s) for [`Line::expire_seizes`] with this `timeout`.
    pub fn next_seize_expiry(&self, timeout: u64) -> Option<u64> {
        self.phones
            .values()
            .flat_map(|e| e.dialogs.iter())
            .filter(|d| is_seize(d))
            .map(|d| d.since.saturating_add(timeout))
            .min()
    }

    /// Whether `phone` holds a seized (trying) appearance.
    pub fn has_seize(&self, phone: &str) -> bool {
        self.phones
            .get(phone)
            .is_some_and(|e| e.dialogs.iter().any(is_seize))
    }

    /// What the other phones see of `phone`: its dialogs holding an appearance (not private,
    /// not superseded), in the order it sent them, with the id `"{phone}-{id}"` and the remote
    /// target replaced by the remote identity (OpenSIPS `bla_fix_remote_target`: Polycom
    /// writes the far end's IP there, and a pickup would go around the proxy; with no remote
    /// identity the target is left out).
    pub fn shown(&self, phone: &str) -> Vec<Dialog> {
        let Some(entry) = self.phones.get(phone) else {
            return Vec::new();
        };
        entry
            .dialogs
            .iter()
            .filter(|d| d.holds().is_some())
            .map(|d| {
                let mut shown = d.dialog.clone();
                shown.id = format!("{phone}-{}", d.dialog.id);
                shown.remote = remote_via_identity(&d.dialog.remote);
                shown
            })
            .collect()
    }

    /// Phones with any dialog on the line (shown, private or superseded), sorted.
    pub fn phones(&self) -> Vec<String> {
        self.phones.keys().cloned().collect()
    }

    /// After a restart: `phone`'s shown dialogs from the stored publication (ids carry the
    /// `"{phone}-"` prefix, stripped here). They are shown but unconfirmed until the phone
    /// sends a full NOTIFY, and never block another phone's claim.
    ///
    /// Only for a phone the table does not know yet: one that already NOTIFYed keeps what it
    /// said. Stored state is bounded like a NOTIFY: terminated or private dialogs, appearances
    /// out of range or already held by another phone, over-long fields and dialogs beyond
    /// [`MAX_DIALOGS_PER_PHONE`] are left out.
    pub fn restore(&mut self, phone: &str, dialogs: Vec<Dialog>, now: u64) {
        if self.phones.contains_key(phone) {
            return;
        }
        let prefix = format!("{phone}-");
        let mut kept: Vec<Kept> = Vec::new();
        for mut d in dialogs {
            if let Some(id) = d.id.strip_prefix(&prefix) {
                d.id = id.to_string();
            }
            let Some(k) = d.line else { continue };
            if d.state == DialogState::Terminated
                || k >= self.appearances
                || check_fields(&d).is_err()
                || self.holder(k).is_some()
                || kept.iter().any(|x| x.dialog.id == d.id)
            {
                continue;
            }
            if kept.len() == MAX_DIALOGS_PER_PHONE {
                break;
            }
            kept.push(Kept {
                dialog: d,
                since: now,
                superseded: false,
                restored: true,
            });
        }
        if !kept.is_empty() {
            self.phones.insert(
                phone.to_string(),
                PhoneDialogs {
                    dialogs: kept,
                    unconfirmed: true,
                },
            );
        }
    }

    /// Phones restored and not confirmed by a full NOTIFY since, sorted; the caller releases
    /// them after its reconcile timeout.
    pub fn unconfirmed(&self) -> Vec<String> {
        self.phones
            .iter()
            .filter(|(_, e)| e.unconfirmed)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// One entry per appearance, 0 to n-1. Several dialogs on one appearance (one phone, two
    /// calls on a line key): the one in the most significant state, see
    /// [`AppearanceState::priority`]; ties: the first.
    pub fn snapshot(&self) -> Vec<Appearance> {
        let mut out: Vec<Appearance> = (0..self.appearances)
            .map(|index| Appearance {
                index,
                state: AppearanceState::Free,
                phone: None,
                peer: None,
                since: 0,
            })
            .collect();
        for (phone, entry) in &self.phones {
            for kept in &entry.dialogs {
                let Some(slot) = kept.holds().and_then(|k| out.get_mut(k as usize)) else {
                    continue;
                };
                let state = phase(&kept.dialog);
                if state.priority() > slot.state.priority() {
                    let remote = &kept.dialog.remote;
                    *slot = Appearance {
                        index: slot.index,
                        state,
                        phone: Some(phone.clone()),
                        peer: remote
                            .identity
                            .as_ref()
                            .map(|i| i.uri.clone())
                            .or_else(|| remote.target.as_ref().map(|t| t.uri.clone())),
                        since: kept.since,
                    };
                }
            }
        }
        out
    }

    /// The phone holding appearance `k` (its dialogs on it are not superseded).
    pub fn holder(&self, k: u32) -> Option<&str> {
        self.phones
            .iter()
            .find(|(_, e)| e.dialogs.iter().any(|d| d.holds() == Some(k)))
            .map(|(p, _)| p.as_str())
    }
}

/// The appearance state a dialog gives.
fn phase(d: &Dialog) -> AppearanceState {
    match d.state {
        DialogState::Trying => AppearanceState::Seized,
        DialogState::Proceeding | DialogState::Early => AppearanceState::Ringing,
        DialogState::Confirmed if d.rendering() == Some(Rendering::No) => AppearanceState::Held,
        DialogState::Confirmed => AppearanceState::Active,
        DialogState::Terminated => AppearanceState::Free,
    }
}

/// A dialog that seizes an appearance without a call yet.
fn is_seize(d: &Kept) -> bool {
    d.holds().is_some() && d.dialog.state == DialogState::Trying
}

/// The remote participant with its target URI replaced by its identity URI (the target's
/// parameters kept); no identity, no target.
fn remote_via_identity(remote: &Participant) -> Participant {
    Participant {
        identity: remote.identity.clone(),
        target: remote.identity.as_ref().map(|i| Target {
            uri: i.uri.clone(),
            params: remote
                .target
                .as_ref()
                .map(|t| t.params.clone())
                .unwrap_or_default(),
        }),
    }
}

/// Refuses a dialog with a field over [`MAX_FIELD_LEN`] bytes.
fn check_fields(d: &Dialog) -> Result<(), Refusal> {
    fn bound(what: &'static str, value: &str) -> Result<(), Refusal> {
        if value.len() > MAX_FIELD_LEN {
            Err(Refusal::FieldTooLong {
                what,
                limit: MAX_FIELD_LEN,
            })
        } else {
            Ok(())
        }
    }
    bound("dialog id", &d.id)?;
    bound("call-id", d.call_id.as_deref().unwrap_or(""))?;
    bound("local tag", d.local_tag.as_deref().unwrap_or(""))?;
    bound("remote tag", d.remote_tag.as_deref().unwrap_or(""))?;
    for (p, identity, display, target) in [
        (
            &d.local,
            "local identity URI",
            "local display name",
            "local target URI",
        ),
        (
            &d.remote,
            "remote identity URI",
            "remote display name",
            "remote target URI",
        ),
    ] {
        if let Some(i) = &p.identity {
            bound(identity, &i.uri)?;
            bound(display, i.display.as_deref().unwrap_or(""))?;
        }
        if let Some(t) = &p.target {
            bound(target, &t.uri)?;
            for param in &t.params {
                bound("target parameter name", &param.name)?;
                bound("target parameter value", &param.value)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::body::dialog_info::{parse, NS_DIALOG_INFO};
    use proptest::prelude::*;

    const AOR: &str = "sip:2000@example.com";
    const A: &str = "p0a1b2c3d4e5f";
    const B: &str = "p1b2c3d4e5f60";
    const C: &str = "p2c3d4e5f6071";

    fn capture(name: &str) -> DialogInfo {
        let path = format!(
            "{}/fixtures/bodies/captures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let body = match name.ends_with(".sip") {
            true => text.split_once("\n\n").map(|(_, b)| b.to_string()).unwrap(),
            false => text,
        };
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// One dialog as a Polycom writes it: no local identity, the appearance in the local
    /// target with `pval`, `+sip.rendering=no` when held.
    fn polycom_dialog(id: &str, state: &str, line: Option<u32>, held: bool) -> String {
        let mut params = String::new();
        if let Some(n) = line {
            params.push_str(&format!("<param pname=\"x-line-id\" pval=\"{n}\" />"));
        }
        if held {
            params.push_str("<param pname=\"+sip.rendering\" pval=\"no\" />");
        }
        format!(
            "<dialog id=\"{id}\" call-id=\"{id}@192.0.2.10\" local-tag=\"lt-{id}\" remote-tag=\"rt-{id}\" direction=\"initiator\">\
             <state>{state}</state>\
             <local><target uri=\"sip:2000@example.com\">{params}</target></local>\
             <remote><identity>sip:5551234@example.com</identity><target uri=\"sip:5551234@198.51.100.7:5060\"/></remote>\
             </dialog>"
        )
    }

    fn document(state: &str, dialogs: &[String]) -> DialogInfo {
        let body = format!(
            "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"{NS_DIALOG_INFO}\" version=\"0\" state=\"{state}\" entity=\"{AOR}\">\n{}\n</dialog-info>",
            dialogs.concat()
        );
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn partial(dialogs: &[String]) -> DialogInfo {
        document("partial", dialogs)
    }

    fn full(dialogs: &[String]) -> DialogInfo {
        document("full", dialogs)
    }

    fn seize(id: &str, line: u32) -> DialogInfo {
        partial(&[polycom_dialog(id, "trying", Some(line), false)])
    }

    fn states(line: &Line) -> Vec<(AppearanceState, Option<&str>)> {
        line.snapshot()
            .iter()
            .map(|a| {
                (
                    a.state,
                    a.phone
                        .as_deref()
                        .map(|p| [A, B, C].into_iter().find(|x| *x == p).unwrap()),
                )
            })
            .collect()
    }

    /// `apply` must refuse with `want` and leave the table exactly as it was.
    fn refused(line: &mut Line, phone: &str, doc: &DialogInfo, want: Refusal) {
        let before = line.clone();
        let snapshot = line.snapshot();
        assert_eq!(line.apply(phone, doc, 500), Err(want));
        assert_eq!(line.snapshot(), snapshot);
        assert_eq!(*line, before);
    }

    #[test]
    fn seize_free_appearance_is_applied_and_seized() {
        let mut line = Line::new(AOR, 2);
        assert_eq!((line.aor(), line.appearances()), (AOR, 2));
        let applied = line.apply(A, &seize("s1", 0), 100).unwrap();
        assert_eq!(
            applied,
            Applied {
                changed: true,
                seized: true,
                others: vec![]
            }
        );
        assert!(line.has_seize(A) && !line.has_seize(B));
        let snap = line.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(
            snap[0],
            Appearance {
                index: 0,
                state: AppearanceState::Seized,
                phone: Some(A.into()),
                peer: Some("sip:5551234@example.com".into()),
                since: 100,
            }
        );
        assert_eq!(snap[1].state, AppearanceState::Free);
        // The same seize again: nothing changed, and the seize keeps its age.
        let again = line.apply(A, &seize("s1", 0), 110).unwrap();
        assert!(!again.changed && again.seized);
        assert_eq!(line.snapshot()[0].since, 100);
    }

    #[test]
    fn seize_taken_is_refused_and_the_table_unchanged() {
        let mut line = Line::new(AOR, 2);
        line.apply(A, &seize("s1", 0), 100).unwrap();
        refused(
            &mut line,
            B,
            &seize("x", 0),
            Refusal::Taken { appearance: 0 },
        );
        let (code, reason) = Refusal::Taken { appearance: 0 }.status();
        assert_eq!(code, 409);
        assert_eq!(reason, "Conflict: appearance 0 is in use by another phone");
        // Nothing of the refused NOTIFY applied, not even its other, acceptable dialog.
        let both = partial(&[
            polycom_dialog("y", "trying", Some(1), false),
            polycom_dialog("x", "trying", Some(0), false),
        ]);
        refused(&mut line, B, &both, Refusal::Taken { appearance: 0 });
        // Once A's seize is a call, still taken; B takes the other appearance.
        line.apply(
            A,
            &partial(&[polycom_dialog("s1", "confirmed", Some(0), false)]),
            105,
        )
        .unwrap();
        refused(
            &mut line,
            B,
            &seize("x", 0),
            Refusal::Taken { appearance: 0 },
        );
        assert!(line.apply(B, &seize("y", 1), 106).unwrap().seized);
        assert_eq!(
            states(&line),
            vec![
                (AppearanceState::Active, Some(A)),
                (AppearanceState::Seized, Some(B))
            ]
        );
        assert_eq!(line.holder(0), Some(A));
    }

    /// The scenario of issue 12's end-to-end test, on the table alone.
    #[test]
    fn issue_12_scenario_seize_conflict_answer_hold_pickup_hangup_expiry() {
        use AppearanceState::*;
        let mut line = Line::new(AOR, 2);
        let call = |state: &str, held: bool| partial(&[polycom_dialog("a", state, Some(0), held)]);
        assert!(line.apply(A, &seize("a", 0), 100).unwrap().changed);
        assert_eq!(
            line.apply(B, &seize("b", 0), 101),
            Err(Refusal::Taken { appearance: 0 })
        );
        assert!(line.apply(B, &seize("b", 1), 102).unwrap().seized);
        line.apply(A, &call("early", false), 103).unwrap();
        line.apply(A, &call("confirmed", false), 104).unwrap();
        assert_eq!(states(&line)[0], (Active, Some(A)));
        assert!(!line.has_seize(A));
        line.apply(A, &call("confirmed", true), 105).unwrap();
        assert_eq!(states(&line)[0], (Held, Some(A)));
        let picked = partial(&[polycom_dialog("c", "confirmed", Some(0), false)]);
        assert_eq!(line.apply(C, &picked, 106).unwrap().others, vec![A]);
        // The pickup replaced A's dialog: A says so.
        line.apply(A, &call("terminated", false), 107).unwrap();
        assert_eq!(states(&line)[0], (Active, Some(C)));
        let hangup = partial(&[polycom_dialog("c", "terminated", Some(0), false)]);
        line.apply(C, &hangup, 108).unwrap();
        assert_eq!(states(&line)[0], (Free, None));
        // A calls again on 0; its registration expires mid-call: released.
        line.apply(A, &call("confirmed", false), 109).unwrap();
        assert!(line.release_phone(A));
        assert_eq!(states(&line), vec![(Free, None), (Seized, Some(B))]);
        // B's seize never became a call.
        assert_eq!(line.expire_seizes(132, 30), vec![B]);
        assert_eq!(states(&line), vec![(Free, None), (Free, None)]);
        assert!(line.phones().is_empty());
    }

    #[test]
    fn two_phones_seizing_the_same_free_appearance_first_apply_wins() {
        let mut line = Line::new(AOR, 2);
        let first = line.apply(B, &seize("b", 1), 100);
        let second = line.apply(C, &seize("c", 1), 100);
        assert!(first.is_ok());
        assert_eq!(second, Err(Refusal::Taken { appearance: 1 }));
        assert_eq!(line.holder(1), Some(B));
    }

    #[test]
    fn appearance_out_of_range_is_refused() {
        let mut line = Line::new(AOR, 2);
        let want = Refusal::OutOfRange {
            appearance: 2,
            appearances: 2,
        };
        refused(&mut line, A, &seize("s", 2), want.clone());
        assert_eq!(
            want.status(),
            (
                409,
                "Conflict: no appearance 2, the line has 2 appearances".to_string()
            )
        );
        // A terminated dialog claims nothing: its appearance is not checked.
        let gone = partial(&[polycom_dialog("s", "terminated", Some(7), false)]);
        assert!(!line.apply(A, &gone, 100).unwrap().changed);
        // The configuration allows 64 appearances at most.
        assert_eq!(Line::new(AOR, u32::MAX).snapshot().len(), 64);
    }

    #[test]
    fn full_replaces_partial_upserts_terminated_removes() {
        let mut line = Line::new(AOR, 3);
        // The real Polycom body: full, early on appearance 0.
        line.apply(
            A,
            &capture("polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip"),
            100,
        )
        .unwrap();
        assert_eq!(line.shown(A).len(), 1);
        assert_eq!(states(&line)[0], (AppearanceState::Ringing, Some(A)));
        // Partial: adds a dialog, keeps the other.
        line.apply(A, &seize("two", 1), 101).unwrap();
        let ids =
            |line: &Line| -> Vec<String> { line.shown(A).into_iter().map(|d| d.id).collect() };
        assert_eq!(ids(&line), [format!("{A}-idaaec6cc1"), format!("{A}-two")]);
        // Partial: upserts by id.
        line.apply(
            A,
            &partial(&[polycom_dialog("two", "early", Some(1), false)]),
            102,
        )
        .unwrap();
        assert_eq!(line.shown(A)[1].state, DialogState::Early);
        assert_eq!(line.shown(A).len(), 2);
        // Partial: terminated removes.
        line.apply(
            A,
            &partial(&[polycom_dialog("idaaec6cc1", "terminated", Some(0), false)]),
            103,
        )
        .unwrap();
        assert_eq!(ids(&line), [format!("{A}-two")]);
        // Full: replaces everything.
        line.apply(
            A,
            &full(&[polycom_dialog("three", "confirmed", Some(2), false)]),
            104,
        )
        .unwrap();
        assert_eq!(ids(&line), [format!("{A}-three")]);
        assert_eq!(
            states(&line),
            vec![
                (AppearanceState::Free, None),
                (AppearanceState::Free, None),
                (AppearanceState::Active, Some(A))
            ]
        );
        // yxa's full document with only a terminated dialog: the phone has nothing left.
        let applied = line
            .apply(
                A,
                &capture("yxa-sipit-dialog-info-x-line-id-pvalue-terminated.xml"),
                105,
            )
            .unwrap();
        assert!(applied.changed && !applied.seized);
        assert!(line.shown(A).is_empty() && line.phones().is_empty());
        // The NOTIFY version is not checked (Polycom sends 0 every time).
        assert!(line.apply(A, &seize("again", 0), 106).unwrap().changed);
    }

    #[test]
    fn private_dialogs_are_kept_but_never_shown_and_never_block() {
        let mut line = Line::new(AOR, 2);
        let private = partial(&[polycom_dialog("intercom", "confirmed", None, false)]);
        let applied = line.apply(A, &private, 100).unwrap();
        assert!(!applied.changed && !applied.seized);
        assert_eq!(line.phones(), vec![A.to_string()]);
        assert!(line.shown(A).is_empty());
        assert!(line
            .snapshot()
            .iter()
            .all(|a| a.state == AppearanceState::Free));
        // It blocks nothing.
        line.apply(B, &seize("b", 0), 101).unwrap();
        // A partial from A leaves it in place; a full without it removes it.
        line.apply(A, &seize("a", 1), 102).unwrap();
        line.apply(
            A,
            &full(&[polycom_dialog("a", "trying", Some(1), false)]),
            103,
        )
        .unwrap();
        line.apply(A, &full(&[]), 104).unwrap();
        assert_eq!(line.phones(), vec![B.to_string()]);
    }

    #[test]
    fn held_does_not_block_and_pickup_moves_the_appearance() {
        let mut line = Line::new(AOR, 2);
        // sipXsaa's held dialog on appearance 0 (confirmed, +sip.rendering=no).
        line.apply(
            A,
            &capture("sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-no-held.xml"),
            100,
        )
        .unwrap();
        assert_eq!(states(&line)[0], (AppearanceState::Held, Some(A)));
        assert_eq!(line.snapshot()[0].peer.as_deref(), Some("4444@10.1.1.153"));
        // C picks it up: accepted, A's held dialog superseded and no longer shown.
        let pickup = partial(&[polycom_dialog("c1", "confirmed", Some(0), false)]);
        let applied = line.apply(C, &pickup, 110).unwrap();
        assert_eq!(
            applied,
            Applied {
                changed: true,
                seized: false,
                others: vec![A.to_string()]
            }
        );
        assert!(line.shown(A).is_empty());
        assert_eq!(line.phones(), vec![A.to_string(), C.to_string()]);
        assert_eq!(states(&line)[0], (AppearanceState::Active, Some(C)));
        assert_eq!(line.snapshot()[0].since, 110);
        // A re-sending its held dialog does not bring it back, and is not refused.
        let resent =
            capture("sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-no-held.xml");
        assert!(!line.apply(A, &resent, 111).unwrap().changed);
        assert_eq!(states(&line)[0], (AppearanceState::Active, Some(C)));
        // A now claiming the appearance with a new dialog: C's call blocks it.
        refused(
            &mut line,
            A,
            &seize("a2", 0),
            Refusal::Taken { appearance: 0 },
        );
        // A drops the replaced dialog: gone.
        let mut gone = resent.clone();
        gone.dialogs[0].state = DialogState::Terminated;
        line.apply(A, &gone, 112).unwrap();
        assert_eq!(line.phones(), vec![C.to_string()]);
    }

    #[test]
    fn a_call_not_held_blocks_a_pickup() {
        let mut line = Line::new(AOR, 2);
        line.apply(
            A,
            &capture("sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-yes.xml"),
            100,
        )
        .unwrap();
        assert_eq!(states(&line)[0], (AppearanceState::Active, Some(A)));
        let pickup = partial(&[polycom_dialog("c1", "confirmed", Some(0), false)]);
        refused(&mut line, C, &pickup, Refusal::Taken { appearance: 0 });
        // A holds (same dialog id, rendering no): now C may take it.
        line.apply(
            A,
            &capture("sipxsaa-test-dialog-info-partial-x-line-id-confirmed-rendering-no-held.xml"),
            101,
        )
        .unwrap();
        assert_eq!(line.snapshot()[0].since, 101);
        assert_eq!(line.apply(C, &pickup, 102).unwrap().others, vec![A]);
    }

    /// An incoming call to the line rings every member phone (one fork each, one Call-ID):
    /// each may report it ringing on the same appearance; a seize of it is still refused.
    #[test]
    fn one_incoming_call_rings_on_every_phone_on_one_appearance() {
        let mut line = Line::new(AOR, 2);
        let ring = |state: &str| partial(&[polycom_dialog("in1", state, Some(0), false)]);
        line.apply(A, &ring("early"), 100).unwrap();
        line.apply(B, &ring("early"), 100).unwrap();
        assert_eq!(states(&line)[0].0, AppearanceState::Ringing);
        refused(
            &mut line,
            C,
            &seize("c1", 0),
            Refusal::Taken { appearance: 0 },
        );
        // Another call on that appearance is refused too.
        let other = partial(&[polycom_dialog("in2", "early", Some(0), false)]);
        refused(&mut line, C, &other, Refusal::Taken { appearance: 0 });
        // B answers, A's fork is cancelled: the appearance is B's.
        line.apply(B, &ring("confirmed"), 101).unwrap();
        line.apply(A, &ring("terminated"), 101).unwrap();
        assert_eq!(states(&line)[0], (AppearanceState::Active, Some(B)));
    }

    #[test]
    fn release_phone_frees_its_appearances() {
        let mut line = Line::new(AOR, 2);
        line.apply(A, &seize("a", 0), 100).unwrap();
        line.apply(
            A,
            &partial(&[polycom_dialog("p", "confirmed", None, false)]),
            100,
        )
        .unwrap();
        line.apply(B, &seize("b", 1), 100).unwrap();
        assert!(line.release_phone(A));
        assert!(!line.release_phone(A));
        assert_eq!(line.phones(), vec![B.to_string()]);
        assert_eq!(
            states(&line),
            vec![
                (AppearanceState::Free, None),
                (AppearanceState::Seized, Some(B))
            ]
        );
        // Free again for anyone.
        line.apply(C, &seize("c", 0), 101).unwrap();
    }

    #[test]
    fn expire_seizes_only_removes_dialogs_still_trying_after_the_timeout() {
        let mut line = Line::new(AOR, 3);
        assert_eq!(line.next_seize_expiry(30), None);
        line.apply(A, &seize("a", 0), 100).unwrap();
        line.apply(B, &seize("b", 1), 105).unwrap();
        line.apply(
            C,
            &partial(&[polycom_dialog("c", "trying", None, false)]),
            90,
        )
        .unwrap();
        // B's seize becomes a ringing call before it expires.
        line.apply(
            B,
            &partial(&[polycom_dialog("b", "proceeding", Some(1), false)]),
            110,
        )
        .unwrap();
        // A re-sends its trying dialog: the seize does not get younger.
        line.apply(A, &seize("a", 0), 120).unwrap();
        assert_eq!(line.next_seize_expiry(30), Some(130));
        assert!(line.expire_seizes(129, 30).is_empty());
        assert_eq!(line.expire_seizes(130, 30), vec![A.to_string()]);
        assert!(!line.has_seize(A));
        assert_eq!(line.next_seize_expiry(30), None);
        assert!(line.expire_seizes(1000, 30).is_empty());
        // B's call and C's private dialog stay.
        assert_eq!(line.phones(), vec![B.to_string(), C.to_string()]);
        assert_eq!(states(&line)[1], (AppearanceState::Ringing, Some(B)));
    }

    #[test]
    fn restore_is_unconfirmed_and_a_claim_wins_over_it() {
        let mut before = Line::new(AOR, 3);
        before.apply(A, &seize("a", 0), 100).unwrap();
        before
            .apply(
                A,
                &partial(&[polycom_dialog("h", "confirmed", Some(1), true)]),
                100,
            )
            .unwrap();
        let stored = before.shown(A);

        let mut line = Line::new(AOR, 3);
        line.restore(A, stored.clone(), 200);
        assert_eq!(line.unconfirmed(), vec![A.to_string()]);
        // Shown the same (the prefix stripped and put back).
        assert_eq!(line.shown(A), stored);
        assert_eq!(
            states(&line)[..2],
            [
                (AppearanceState::Seized, Some(A)),
                (AppearanceState::Held, Some(A))
            ]
        );
        // A restore for a phone the table knows is ignored.
        line.restore(A, vec![], 201);
        assert_eq!(line.shown(A), stored);
        // B claims appearance 0: the restored dialog does not block, it is dropped.
        let applied = line.apply(B, &seize("b", 0), 210).unwrap();
        assert_eq!(applied.others, vec![A.to_string()]);
        assert_eq!(states(&line)[0], (AppearanceState::Seized, Some(B)));
        assert_eq!(line.shown(A).len(), 1);
        // Another restore cannot take what B holds.
        line.release_phone(A);
        line.restore(A, stored.clone(), 220);
        assert_eq!(line.shown(A).len(), 1);
        assert_eq!(line.holder(0), Some(B));
    }

    #[test]
    fn full_notify_confirms_a_restored_phone() {
        let mut line = Line::new(AOR, 2);
        let mut restored = Dialog::new(format!("{A}-a"), DialogState::Confirmed);
        restored.line = Some(0);
        line.restore(A, vec![restored], 200);
        // A partial does not confirm; the phone is still unconfirmed.
        line.apply(A, &seize("x", 1), 201).unwrap();
        assert_eq!(line.unconfirmed(), vec![A.to_string()]);
        // The full NOTIFY confirms and replaces.
        let applied = line
            .apply(
                A,
                &full(&[polycom_dialog("a", "confirmed", Some(0), false)]),
                202,
            )
            .unwrap();
        assert!(applied.changed);
        assert!(line.unconfirmed().is_empty());
        assert_eq!(line.shown(A).len(), 1);
        // Now confirmed, it blocks.
        refused(
            &mut line,
            B,
            &seize("b", 0),
            Refusal::Taken { appearance: 0 },
        );
        // Restored dialogs that could not be shown are left out.
        let mut other = Line::new(AOR, 2);
        let mut out_of_range = Dialog::new("o", DialogState::Trying);
        out_of_range.line = Some(5);
        let private = Dialog::new("p", DialogState::Confirmed);
        let mut long = Dialog::new("l".repeat(300), DialogState::Trying);
        long.line = Some(1);
        other.restore(C, vec![out_of_range, private, long], 300);
        assert!(other.phones().is_empty() && other.unconfirmed().is_empty());
    }

    #[test]
    fn limits_are_refused_with_nothing_changed() {
        let mut line = Line::new(AOR, 2);
        line.apply(A, &seize("a", 0), 100).unwrap();
        // 17 live dialogs (16 private plus the seize already there).
        let many: Vec<String> = (0..16)
            .map(|i| polycom_dialog(&format!("m{i}"), "confirmed", None, false))
            .collect();
        refused(
            &mut line,
            A,
            &partial(&many),
            Refusal::TooMany { limit: 16 },
        );
        assert_eq!(
            Refusal::TooMany { limit: 16 }.status(),
            (
                400,
                "Bad Request: more than 16 dialogs on this line from one phone".into()
            )
        );
        // 16 in a full document are fine.
        line.apply(B, &full(&many), 100).unwrap();

        let long = |what: &'static str| Refusal::FieldTooLong { what, limit: 256 };
        let id = "i".repeat(300);
        refused(&mut line, C, &seize(&id, 1), long("dialog id"));
        assert_eq!(
            long("dialog id").status(),
            (400, "Bad Request: dialog id longer than 256 bytes".into())
        );
        let uri = format!("sip:{}@example.com", "u".repeat(300));
        let mut doc = seize("c", 1);
        doc.dialogs[0].remote.identity.as_mut().unwrap().uri = uri.clone();
        refused(&mut line, C, &doc, long("remote identity URI"));
        let mut doc = seize("c", 1);
        doc.dialogs[0].remote.target.as_mut().unwrap().uri = uri.clone();
        refused(&mut line, C, &doc, long("remote target URI"));
        let mut doc = seize("c", 1);
        doc.dialogs[0].local.target.as_mut().unwrap().uri = uri.clone();
        refused(&mut line, C, &doc, long("local target URI"));
        let mut doc = seize("c", 1);
        doc.dialogs[0].call_id = Some(uri.clone());
        refused(&mut line, C, &doc, long("call-id"));
        // Even in a terminated dialog, through the parser, 300 characters of Contact user.
        let body = format!(
            "<dialog-info xmlns=\"{NS_DIALOG_INFO}\" version=\"0\" state=\"partial\" entity=\"{AOR}\">{}</dialog-info>",
            polycom_dialog("t", "terminated", Some(1), false)
                .replace("sip:2000@example.com", &uri)
        );
        let doc = parse(body.as_bytes()).unwrap();
        refused(&mut line, C, &doc, long("local target URI"));
        // At the limit: accepted.
        let mut doc = seize(&"i".repeat(256), 1);
        let d = &mut doc.dialogs[0];
        d.call_id = Some("c".repeat(256));
        (d.local_tag, d.remote_tag) = (Some("l".repeat(256)), Some("r".repeat(256)));
        d.remote.identity.as_mut().unwrap().uri = "s".repeat(256);
        line.apply(C, &doc, 101).unwrap();
    }

    #[test]
    fn shown_prefixes_ids_and_replaces_the_remote_target_by_the_identity() {
        let mut line = Line::new(AOR, 2);
        let polycom = capture("polycom-spip320-3.1.2-notify-dialog-early-x-line-id.sip");
        line.apply(A, &polycom, 100).unwrap();
        let shown = line.shown(A);
        assert_eq!(shown.len(), 1);
        let d = &shown[0];
        assert_eq!(d.id, format!("{A}-idaaec6cc1"));
        assert_eq!(d.line, Some(0));
        assert_eq!(
            d.call_id.as_deref(),
            Some("654756997_112823414@192.168.47.68.0")
        );
        let target = d.remote.target.as_ref().unwrap();
        assert_eq!(target.uri, "sip:+12171@192.168.47.68");
        assert_eq!(d.remote.param("x-sipX-nonat"), Some(""));
        assert_eq!(d.local, polycom.dialogs[0].local);
        // Without a remote identity, the remote target (an address) is not shown at all.
        let mut anonymous = seize("n", 1);
        anonymous.dialogs[0].remote.identity = None;
        line.apply(B, &anonymous, 100).unwrap();
        assert!(line.shown(B)[0].remote.is_empty());
        assert!(line.shown(C).is_empty());
    }

    #[test]
    fn refusal_reasons_name_the_problem() {
        for r in [
            Refusal::Taken { appearance: 1 },
            Refusal::OutOfRange {
                appearance: 9,
                appearances: 2,
            },
            Refusal::TooMany { limit: 16 },
            Refusal::FieldTooLong {
                what: "call-id",
                limit: 256,
            },
        ] {
            let (code, reason) = r.status();
            assert!(code == 409 || code == 400);
            assert!(reason.starts_with(if code == 409 {
                "Conflict: "
            } else {
                "Bad Request: "
            }));
            assert!(reason.len() < 80 && !reason.contains('\n'), "{reason}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Seize {
            phone: usize,
            id: u8,
            line: u32,
        },
        Partial {
            phone: usize,
            dialogs: Vec<(u8, u8, Option<u32>, bool)>,
        },
        Full {
            phone: usize,
            dialogs: Vec<(u8, u8, Option<u32>, bool)>,
        },
        Release {
            phone: usize,
        },
        Expire {
            after: u64,
        },
    }

    const STATES: [&str; 5] = ["trying", "proceeding", "early", "confirmed", "terminated"];

    fn op() -> impl Strategy<Value = Op> {
        let dialog = (
            0u8..4,
            0u8..5,
            proptest::option::weighted(0.8, 0u32..3),
            any::<bool>(),
        );
        prop_oneof![
            3 => (0usize..3, 0u8..4, 0u32..3).prop_map(|(phone, id, line)| Op::Seize { phone, id, line }),
            3 => (0usize..3, proptest::collection::vec(dialog.clone(), 1..3))
                .prop_map(|(phone, dialogs)| Op::Partial { phone, dialogs }),
            2 => (0usize..3, proptest::collection::vec(dialog, 0..4))
                .prop_map(|(phone, dialogs)| Op::Full { phone, dialogs }),
            1 => (0usize..3).prop_map(|phone| Op::Release { phone }),
            1 => (0u64..40).prop_map(|after| Op::Expire { after }),
        ]
    }

    fn dialogs(list: &[(u8, u8, Option<u32>, bool)]) -> Vec<String> {
        list.iter()
            .map(|&(id, state, line, held)| {
                polycom_dialog(&format!("d{id}"), STATES[state as usize], line, held)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn no_appearance_is_live_on_two_phones_and_refusals_change_nothing(
            ops in proptest::collection::vec(op(), 1..40),
            restored in any::<bool>(),
        ) {
            let phones = [A, B, C];
            let mut line = Line::new(AOR, 2);
            let mut now = 1000u64;
            if restored {
                let mut d = Dialog::new(format!("{C}-r"), DialogState::Confirmed);
                d.line = Some(1);
                line.restore(C, vec![d], now);
            }
            for op in ops {
                now += 1;
                let before = line.clone();
                let result = match &op {
                    Op::Seize { phone, id, line: k } => {
                        Some(line.apply(phones[*phone], &seize(&format!("d{id}"), *k), now))
                    }
                    Op::Partial { phone, dialogs: list } => {
                        Some(line.apply(phones[*phone], &partial(&dialogs(list)), now))
                    }
                    Op::Full { phone, dialogs: list } => {
                        Some(line.apply(phones[*phone], &full(&dialogs(list)), now))
                    }
                    Op::Release { phone } => {
                        line.release_phone(phones[*phone]);
                        None
                    }
                    Op::Expire { after } => {
                        now += after;
                        line.expire_seizes(now, 30);
                        None
                    }
                };
                if let Some(Err(_)) = result {
                    prop_assert_eq!(line.snapshot(), before.snapshot());
                    prop_assert_eq!(&line, &before);
                }
                if let (Some(Ok(applied)), Op::Seize { phone, .. } | Op::Partial { phone, .. } | Op::Full { phone, .. }) = (&result, &op) {
                    prop_assert_eq!(applied.seized, line.has_seize(phones[*phone]));
                }
                // No appearance is shown live (not held) by two phones at once, and every
                // shown dialog is in range and carries its phone's prefix.
                for k in 0..line.appearances() {
                    let live: Vec<&str> = phones
                        .iter()
                        .copied()
                        .filter(|p| {
                            line.shown(p).iter().any(|d| {
                                d.line == Some(k) && phase(d) != AppearanceState::Held
                            })
                        })
                        .collect();
                    if live.len() > 1 {
                        // Only one incoming call forked to several phones rings on them.
                        let on_k: Vec<Dialog> = live
                            .iter()
                            .flat_map(|p| line.shown(p))
                            .filter(|d| d.line == Some(k) && phase(d) != AppearanceState::Held)
                            .collect();
                        let calls: BTreeSet<&Option<String>> =
                            on_k.iter().map(|d| &d.call_id).collect();
                        let answered = on_k
                            .iter()
                            .filter(|d| d.state == DialogState::Confirmed)
                            .count();
                        prop_assert!(calls.len() == 1 && answered <= 1,
                            "appearance {} live on {:?} after {:?}", k, live, op);
                    }
                }
                // On the table itself: one holder per appearance, but for one forked call
                // ringing on several phones.
                for k in 0..line.appearances() {
                    let held: Vec<&Kept> = line
                        .phones
                        .values()
                        .flat_map(|e| e.dialogs.iter().filter(|d| d.holds() == Some(k)))
                        .collect();
                    let holders = line
                        .phones
                        .values()
                        .filter(|e| e.dialogs.iter().any(|d| d.holds() == Some(k)))
                        .count();
                    let one_call = held
                        .iter()
                        .map(|d| &d.dialog.call_id)
                        .collect::<BTreeSet<_>>()
                        .len()
                        == 1;
                    prop_assert!(holders <= 1 || one_call, "appearance {} held by {} phones after {:?}", k, holders, op);
                }
                for p in phones {
                    prop_assert!(line.phones.get(p).is_none_or(|e| !e.dialogs.is_empty()
                        && e.dialogs.len() <= MAX_DIALOGS_PER_PHONE));
                    for d in line.shown(p) {
                        prop_assert!(d.line.is_some_and(|k| k < 2));
                        let prefix = format!("{}-", p);
                        prop_assert!(d.id.starts_with(&prefix));
                    }
                }
                prop_assert!(line.snapshot().len() == 2);
            }
        }
    }
}
