//! The dialog tracker: the state of every call the proxy forwards, one early or confirmed
//! dialog per forked branch (RFC 3261 §12, §13, §16.7; RFC 4235 §3.7.1), for BLF lamps
//! (`pua::dialoginfo`) and for the in-dialog keepalive probe after a restart.
//!
//! Pure: no clock, no sockets, no tasks. The proxy reports what passes through it (initial
//! INVITE, its responses, CANCEL, BYE, re-INVITE/UPDATE) with the time as unix milliseconds;
//! each call returns an [`Update`] (the call after the change and the record write) when
//! something changed, `None` otherwise — so a duplicate never becomes a duplicate
//! publication.
//!
//! State is monotonic (DESIGN "Monotonic dialog state"): nothing leaves `terminated` (an ended
//! call is forgotten and its key remembered for a while, so nothing recreates it); `confirmed`
//! only comes from a 2xx; each forked branch (to-tag) is its own early dialog; when a 2xx
//! wins, the other unanswered branches vanish (they are not shown terminated: they never
//! were the call); once a call is answered no new early dialogs appear, but a late 2xx from
//! another branch is a second confirmed dialog (the caller will BYE it, RFC 3261 §13.2.2.4).

pub mod sdp;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use crate::config::DialogConfig;
pub use crate::sip::body::dialog_info::DialogState;
use crate::storage::dialogs::{call_key, encode_call, DialogWrite};
use crate::transport::{Peer, Proto};

/// How many ended calls are remembered, and for how long (ms): long enough for any late
/// response or retransmitted INVITE (64·T1) to find the call ended instead of new.
pub const ENDED_KEEP: usize = 10_000;
pub const ENDED_KEEP_MS: u64 = 64_000;
/// Most dialogs (to-tags) one call forks into; further ones are not tracked.
pub const MAX_BRANCHES: usize = 64;
/// Most to-tags of ended branches remembered per call (so their late 1xx cannot revive them).
const MAX_DEAD_TAGS: usize = 64;
/// Most Record-Route entries kept as one dialog's route set; an entry past them is not in
/// the route set (a request naming it is refused, never relayed).
pub const MAX_ROUTE_SET: usize = 16;

/// Where a party's requests come from, and so where in-dialog requests to it go: the
/// transport and the remote address (behind NAT: the address the request really came from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub proto: Proto,
    pub remote: SocketAddr,
}

impl Flow {
    /// The flow a message arrived over.
    pub fn of(peer: &Peer) -> Flow {
        Flow {
            proto: peer.proto,
            remote: peer.remote,
        }
    }
}

/// `udp:192.0.2.7:5060`, `tcp:[2001:db8::1]:5061` (as a registration's `source` is written).
impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        };
        write!(f, "{proto}:{}", self.remote)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a flow (udp:ADDRESS:PORT or tcp:ADDRESS:PORT): {0:?}")]
pub struct BadFlow(pub String);

impl std::str::FromStr for Flow {
    type Err = BadFlow;

    fn from_str(s: &str) -> Result<Flow, BadFlow> {
        let bad = || BadFlow(s.chars().take(64).collect());
        let (proto, addr) = s.split_once(':').ok_or_else(bad)?;
        let proto = match proto {
            "udp" => Proto::Udp,
            "tcp" => Proto::Tcp,
            _ => return Err(bad()),
        };
        let remote = addr.parse().map_err(|_| bad())?;
        Ok(Flow { proto, remote })
    }
}

/// One dialog as the requests of one side name it (RFC 3261 §12: Call-ID, the sender's tag
/// in From, the other's in To).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
}

/// One call: one initial INVITE (Call-ID and From-tag; RFC 3261 §12.1 without the to-tag,
/// which each branch adds).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey {
    pub call_id: String,
    pub from_tag: String,
}

/// One end of the call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Party {
    /// Identity: the From URI (caller) or To URI (callee), e.g. "sip:1001@example.com".
    pub uri: String,
    /// Display name from From/To.
    pub display: Option<String>,
    /// The canonical local AOR when this party is a local user: publish for it only then.
    pub aor: Option<String>,
    /// Contact URI: the caller's from the INVITE; the callee's from the 1xx/2xx of the winning
    /// branch (each branch keeps its own in [`Branch::target`]).
    pub target: Option<String>,
}

/// What the proxy knows of an initial INVITE it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteInfo {
    pub caller: Party,
    pub callee: Party,
    pub request_uri: String,
    /// Where the INVITE came from.
    pub caller_flow: Flow,
    pub cseq: u32,
}

/// Why a call or dialog ended (RFC 4235 §4.1.2 `event`; the BYE direction is turned into
/// `local-bye`/`remote-bye` per side when rendered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// CANCEL (or a 487 as the call's final answer).
    Cancelled,
    /// A final non-2xx answer.
    Rejected,
    /// Replaced by another dialog (INVITE with Replaces, RFC 3891).
    Replaced,
    /// BYE from the caller.
    CallerBye,
    /// BYE from the callee.
    CalleeBye,
    /// A timer ended it: Timer C / 408, the lifetime limit, or it cannot have survived a
    /// restart.
    Timeout,
    /// An error: e.g. the in-dialog keepalive got 481 after a restart.
    Error,
}

/// One dialog of the call: a branch's answer with its to-tag (RFC 3261 §12.1.2: each
/// provisional or final answer with a new to-tag is its own dialog).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    pub to_tag: String,
    /// Early, confirmed, or terminated (only in the snapshot of a call that just ended).
    pub state: DialogState,
    /// The callee's Contact on this branch.
    pub target: Option<String>,
    /// Where this branch's responses came from (the callee's flow).
    pub flow: Option<Flow>,
    /// The last status this branch answered (180, 183, 200).
    pub code: u16,
    pub created_ms: u64,
    pub confirmed_ms: Option<u64>,
    /// The caller holds (its last offer was sendonly/inactive/0.0.0.0).
    pub caller_held: bool,
    /// The callee holds.
    pub callee_held: bool,
    /// The highest CSeq seen in a request from the callee in this dialog (see
    /// [`DialogTracker::note_cseq`]).
    pub callee_cseq: Option<u32>,
    /// The dialog's route set as this branch's answer recorded it (its Record-Route values,
    /// ours included; RFC 3261 §12.1: the 2xx's replaces an early one's). In-dialog requests
    /// may name no other Route.
    pub route_set: Vec<String>,
}

impl Branch {
    fn live(&self) -> bool {
        matches!(self.state, DialogState::Early | DialogState::Confirmed)
    }
}

/// A call and its dialogs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub key: CallKey,
    pub caller: Party,
    pub callee: Party,
    pub request_uri: String,
    /// Where the caller's requests come from (and where in-dialog requests to it go).
    pub caller_flow: Flow,
    /// The highest CSeq from the caller in this call (the INVITE's, then later requests').
    pub caller_cseq: u32,
    /// The call's state: terminated once ended; else confirmed when a dialog is, early when
    /// one rings, proceeding after a provisional answer, trying before any.
    pub state: DialogState,
    /// The final status of a call that failed (486, 487, 408...).
    pub code: Option<u16>,
    pub end: Option<EndReason>,
    /// Some provisional answer (with or without a to-tag) was seen.
    pub proceeding: bool,
    pub created_ms: u64,
    /// The last provisional answer (Timer C restarts with each, RFC 3261 §16.7 step 2), or
    /// the INVITE: an unanswered call times out `early_timeout` after it.
    pub progress_ms: u64,
    pub confirmed_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// One per to-tag, in the order they appeared.
    pub branches: Vec<Branch>,
    /// To-tags of branches that ended on their own (a final non-2xx or a BYE): their late
    /// provisional answers must not bring them back.
    pub dead_tags: Vec<String>,
    /// Counts changes: every [`Update`] of a call has a higher one.
    pub seq: u64,
}

impl Call {
    pub fn is_confirmed(&self) -> bool {
        self.branches
            .iter()
            .any(|b| b.state == DialogState::Confirmed)
    }

    pub fn is_terminated(&self) -> bool {
        self.end.is_some()
    }

    /// A party of a confirmed dialog holds (the dashboard's `held` lamp).
    pub fn is_held(&self) -> bool {
        self.branches
            .iter()
            .any(|b| b.state == DialogState::Confirmed && (b.caller_held || b.callee_held))
    }

    /// The first confirmed dialog.
    pub fn winner(&self) -> Option<&Branch> {
        self.branches
            .iter()
            .find(|b| b.state == DialogState::Confirmed)
    }

    pub fn branch(&self, to_tag: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.to_tag == to_tag)
    }

    fn branch_mut(&mut self, to_tag: &str) -> Option<&mut Branch> {
        self.branches.iter_mut().find(|b| b.to_tag == to_tag)
    }

    /// The winning branch's flow (where in-dialog requests to the callee go).
    pub fn callee_flow(&self) -> Option<Flow> {
        self.winner()?.flow
    }

    fn dead(&self, to_tag: &str) -> bool {
        self.dead_tags.iter().any(|t| t == to_tag)
    }

    fn bury(&mut self, to_tag: &str) {
        if !self.dead(to_tag) {
            if self.dead_tags.len() >= MAX_DEAD_TAGS {
                self.dead_tags.remove(0);
            }
            self.dead_tags.push(to_tag.to_string());
        }
    }

    /// Removes the unanswered branches; whether there were any.
    fn drop_unanswered(&mut self) -> bool {
        let before = self.branches.len();
        self.branches.retain(|b| b.state == DialogState::Confirmed);
        self.branches.len() != before
    }

    fn terminate(&mut self, reason: EndReason, code: Option<u16>, now: u64) {
        self.end = Some(reason);
        if code.is_some() {
            self.code = code;
        }
        self.ended_ms = Some(now);
        for b in &mut self.branches {
            b.state = DialogState::Terminated;
        }
    }

    fn derive_state(&self) -> DialogState {
        if self.end.is_some() {
            DialogState::Terminated
        } else if self.is_confirmed() {
            DialogState::Confirmed
        } else if self.branches.iter().any(|b| b.state == DialogState::Early) {
            DialogState::Early
        } else if self.proceeding {
            DialogState::Proceeding
        } else {
            DialogState::Trying
        }
    }

    /// When the call is past its lifetime: answered calls `max_lifetime` after the answer,
    /// unanswered ones `early_timeout` after the INVITE or the last provisional answer.
    fn deadline(&self, limits: &Limits) -> Option<u64> {
        if self.end.is_some() {
            return None;
        }
        Some(match self.confirmed_ms {
            Some(t) if self.is_confirmed() => t.saturating_add(limits.max_lifetime_ms),
            _ => self
                .created_ms
                .max(self.progress_ms)
                .saturating_add(limits.early_timeout_ms),
        })
    }
}

/// A change of one call: the call after it, and the record write (a put, or a delete once
/// the call has ended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub call: Call,
    pub write: DialogWrite,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_lifetime_ms: u64,
    early_timeout_ms: u64,
    max_calls: usize,
}

/// All calls in progress.
#[derive(Debug)]
pub struct DialogTracker {
    limits: Limits,
    calls: HashMap<CallKey, Call>,
    /// Call-ID → From-tags of the calls with it (in-dialog requests name a dialog by Call-ID
    /// and tags in either order).
    by_call_id: HashMap<String, Vec<String>>,
    deadlines: BTreeSet<(u64, CallKey)>,
    /// Ended calls, remembered for [`ENDED_KEEP_MS`] (oldest first).
    ended: Recent<CallKey>,
    /// Dialogs whose 2xx to an INVITE (initial or re-INVITE) went through the proxy lately,
    /// with when (oldest first): their ACK is expected even when no call here follows them
    /// (cancelled as the 2xx crossed, set up before a restart, tracker full).
    answered: Recent<DialogId>,
}

/// One end of a dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Caller,
    Callee,
}

/// The party an in-dialog request claims to be from (its From tag names the side), as the
/// tracker recorded it when the dialog was set up (see [`DialogTracker::sender`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialogSender {
    pub side: Side,
    /// The flow that side set the dialog up over: the caller's INVITE came from it, the
    /// callee's answers came back over it.
    pub flow: Option<Flow>,
    /// That side's canonical local AOR, when it is a user of ours.
    pub aor: Option<String>,
    /// The dialog's route set (the Record-Route values of the answer, ours included).
    pub route_set: Vec<String>,
}

impl DialogSender {
    /// Whether a request that arrived over `source` comes from this party (RFC 3261 §12.2:
    /// only the dialog's parties send requests in it; a proxy that relays requests from
    /// anyone who knows the Call-ID and tags lets them hijack the call):
    /// - the flow the dialog was set up over on this side;
    /// - a flow a phone of this party's AOR is registered from (`registered`: it re-registered
    ///   from a new port or connection since);
    /// - for a side that is the PBX (its flow is a source trusted for calls, `trusted`), any
    ///   source trusted for calls (a PBX answers and sends from more than one address).
    pub fn sent_from(
        &self,
        source: Flow,
        registered: &[Flow],
        trusted: impl Fn(IpAddr) -> bool,
    ) -> bool {
        self.flow == Some(source)
            || registered.contains(&source)
            || (trusted(source.remote.ip()) && self.flow.is_some_and(|f| trusted(f.remote.ip())))
    }

    /// Whether `username`, authenticated by digest, is this party: the user of its AOR (the
    /// From user of the caller, the To user of the callee). A side without a local AOR (the
    /// PBX, a foreign caller) has no user here.
    pub fn is_user(&self, username: &str) -> bool {
        self.aor
            .as_deref()
            .is_some_and(|aor| !username.is_empty() && crate::domain::user_of_aor(aor) == username)
    }
}

/// Which side sent an in-dialog request, and the dialog it names.
struct Found {
    key: CallKey,
    to_tag: String,
    by_caller: bool,
}

impl DialogTracker {
    pub fn new(cfg: &DialogConfig) -> Self {
        DialogTracker {
            limits: Limits {
                max_lifetime_ms: cfg.max_lifetime.saturating_mul(1000),
                early_timeout_ms: cfg.early_timeout.saturating_mul(1000),
                max_calls: cfg.max_calls,
            },
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            deadlines: BTreeSet::new(),
            ended: Recent::default(),
            answered: Recent::default(),
        }
    }

    /// New call (initial INVITE forwarded). None if the call is already known (retransmission,
    /// spiral), ended a moment ago, or the tracker is full (the proxy still routes it).
    pub fn invite(&mut self, key: CallKey, info: InviteInfo, now: u64) -> Option<Update> {
        self.ended.forget(now);
        if self.calls.contains_key(&key)
            || self.ended.contains(&key, now)
            || self.calls.len() >= self.limits.max_calls
        {
            return None;
        }
        let call = Call {
            key: key.clone(),
            caller: info.caller,
            callee: info.callee,
            request_uri: info.request_uri,
            caller_flow: info.caller_flow,
            caller_cseq: info.cseq,
            state: DialogState::Trying,
            code: None,
            end: None,
            proceeding: false,
            created_ms: now,
            progress_ms: now,
            confirmed_ms: None,
            ended_ms: None,
            branches: Vec::new(),
            dead_tags: Vec::new(),
            seq: 1,
        };
        if let Some(d) = call.deadline(&self.limits) {
            self.deadlines.insert((d, key.clone()));
        }
        self.by_call_id
            .entry(key.call_id.clone())
            .or_default()
            .push(key.from_tag.clone());
        let update = Update {
            write: DialogWrite::Put {
                key: call_key(&key),
                value: encode_call(&call),
            },
            call: call.clone(),
        };
        self.calls.insert(key, call);
        Some(update)
    }

    /// A response to the initial INVITE as it passes the proxy (from any branch), 101..=699
    /// (100 is hop-by-hop and ignored).
    ///
    /// - 1xx without a to-tag: the call is `proceeding` (RFC 4235 §3.7.1).
    /// - 1xx with a to-tag: that branch is its own early dialog (RFC 3261 §12.1, §13.2.2.4);
    ///   a later 1xx of the same branch only updates its Contact.
    /// - 2xx: that branch is `confirmed`; every unanswered branch vanishes (§16.7 step 10:
    ///   the proxy cancels them). A 2xx from another branch after the winner is a second
    ///   confirmed dialog.
    /// - 3xx-6xx with a to-tag: that branch ends and vanishes; the call ends only through
    ///   [`failed`](Self::failed), when the proxy forwards its best answer.
    pub fn response(
        &mut self,
        key: &CallKey,
        to_tag: Option<&str>,
        status: u16,
        contact: Option<&str>,
        flow: Option<Flow>,
        now: u64,
    ) -> Option<Update> {
        self.response_routed(key, to_tag, status, contact, flow, &[], now)
    }

    /// [`response`](Self::response) with the answer's Record-Route values: the route set of
    /// the dialog it creates or confirms (at most [`MAX_ROUTE_SET`] entries kept).
    #[allow(clippy::too_many_arguments)]
    pub fn response_routed(
        &mut self,
        key: &CallKey,
        to_tag: Option<&str>,
        status: u16,
        contact: Option<&str>,
        flow: Option<Flow>,
        route_set: &[String],
        now: u64,
    ) -> Option<Update> {
        let route_set = &route_set[..route_set.len().min(MAX_ROUTE_SET)];
        if !(101..=699).contains(&status) {
            return None;
        }
        let to_tag = to_tag.map(str::trim).filter(|t| !t.is_empty());
        if status < 200 {
            // Restarts the unanswered deadline even when nothing visible changes (a PBX queue
            // sending 183 every minute); persisted with the next visible change.
            self.progress(key, now);
        }
        self.change(key, now, |c| match (status, to_tag) {
            (101..=199, None) => {
                let changed = !c.proceeding && c.branches.is_empty();
                c.proceeding = true;
                changed
            }
            (101..=199, Some(tag)) => {
                c.proceeding = true;
                // After the answer no new early dialogs: a loser's 180 racing its 487.
                if c.dead(tag) || c.is_confirmed() {
                    return false;
                }
                if let Some(b) = c.branch_mut(tag) {
                    // Same branch again (180 then 183, or a retransmission).
                    b.code = status;
                    let mut changed = false;
                    if let Some(uri) = contact {
                        if b.target.as_deref() != Some(uri) {
                            b.target = Some(uri.to_string());
                            changed = true;
                        }
                    }
                    if b.flow.is_none() && flow.is_some() {
                        b.flow = flow;
                    }
                    if b.route_set.is_empty() {
                        b.route_set = route_set.to_vec();
                    }
                    return changed;
                }
                if c.branches.len() >= MAX_BRANCHES {
                    return false;
                }
                c.branches.push(Branch {
                    to_tag: tag.to_string(),
                    state: DialogState::Early,
                    target: contact.map(str::to_string),
                    flow,
                    code: status,
                    created_ms: now,
                    confirmed_ms: None,
                    caller_held: false,
                    callee_held: false,
                    callee_cseq: None,
                    route_set: route_set.to_vec(),
                });
                true
            }
            (200..=299, Some(tag)) => {
                if c.dead(tag) {
                    return false;
                }
                match c.branch_mut(tag) {
                    Some(b) if b.state == DialogState::Confirmed => return false,
                    Some(b) => {
                        b.state = DialogState::Confirmed;
                        b.code = status;
                        b.confirmed_ms = Some(now);
                        if let Some(uri) = contact {
                            b.target = Some(uri.to_string());
                        }
                        if flow.is_some() {
                            b.flow = flow;
                        }
                        b.route_set = route_set.to_vec();
                    }
                    None => {
                        if c.branches.len() >= MAX_BRANCHES && !c.drop_unanswered() {
                            return false;
                        }
                        c.branches.push(Branch {
                            to_tag: tag.to_string(),
                            state: DialogState::Confirmed,
                            target: contact.map(str::to_string),
                            flow,
                            code: status,
                            created_ms: now,
                            confirmed_ms: Some(now),
                            caller_held: false,
                            callee_held: false,
                            callee_cseq: None,
                            route_set: route_set.to_vec(),
                        });
                    }
                }
                if c.confirmed_ms.is_none() {
                    c.confirmed_ms = Some(now);
                    if contact.is_some() {
                        c.callee.target = contact.map(str::to_string);
                    }
                }
                c.drop_unanswered();
                true
            }
            // A 2xx without a to-tag is broken (RFC 3261 §8.2.6.2); nothing to track.
            (200..=299, None) => false,
            (_, Some(tag)) => {
                if c.branch(tag)
                    .is_some_and(|b| b.state == DialogState::Confirmed)
                {
                    return false;
                }
                c.bury(tag);
                let before = c.branches.len();
                c.branches.retain(|b| b.to_tag != tag);
                c.branches.len() != before
            }
            (_, None) => false,
        })
    }

    /// The proxy sent the final non-2xx upstream (best answer of all branches, or Timer C's
    /// 408): every unanswered dialog ends; the call ends unless a dialog is confirmed.
    pub fn failed(&mut self, key: &CallKey, status: u16, now: u64) -> Option<Update> {
        self.change(key, now, |c| {
            if c.is_confirmed() {
                return c.drop_unanswered();
            }
            let reason = match status {
                408 => EndReason::Timeout,
                487 => EndReason::Cancelled,
                _ => EndReason::Rejected,
            };
            c.terminate(reason, Some(status), now);
            true
        })
    }

    /// CANCEL from the caller (RFC 3261 §9): the unanswered dialogs end at once (the lamp
    /// stops ringing before the 487s come back), code 487.
    pub fn cancel(&mut self, key: &CallKey, now: u64) -> Option<Update> {
        self.change(key, now, |c| {
            if c.is_confirmed() {
                return c.drop_unanswered();
            }
            c.terminate(EndReason::Cancelled, Some(487), now);
            true
        })
    }

    /// BYE (RFC 3261 §15) in either direction: `tag_a` is the BYE's From-tag and `tag_b` its
    /// To-tag (the sender is told from them: `local-bye`/`remote-bye`); the tags are also
    /// found in the other order. That dialog ends; the call ends when no dialog is left.
    pub fn bye(&mut self, call_id: &str, tag_a: &str, tag_b: &str, now: u64) -> Option<Update> {
        let f = self.find(call_id, tag_a, tag_b)?;
        let reason = if f.by_caller {
            EndReason::CallerBye
        } else {
            EndReason::CalleeBye
        };
        self.end_branch(&f.key, &f.to_tag, reason, now)
    }

    /// re-INVITE or UPDATE with an SDP offer (RFC 3264 §8.4) in a confirmed dialog, in either
    /// direction: `from_tag` is the sender's tag. Sendonly/inactive or `c=0.0.0.0`: the sender
    /// holds; otherwise it does not (any more). A body that is not SDP changes nothing. The
    /// offer is taken as it is sent; an offer the other side refuses (488/491) is not undone.
    pub fn reinvite(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        now: u64,
    ) -> Option<Update> {
        let f = self.find(call_id, from_tag, to_tag)?;
        let held = sdp::holds(sdp)?;
        self.change(&f.key, now, |c| {
            let Some(b) = c.branch_mut(&f.to_tag) else {
                return false;
            };
            if b.state != DialogState::Confirmed {
                return false;
            }
            let flag = if f.by_caller {
                &mut b.caller_held
            } else {
                &mut b.callee_held
            };
            let changed = *flag != held;
            *flag = held;
            changed
        })
    }

    /// Ends a whole call for a reason the proxy found (in-dialog keepalive answered 481/408
    /// after a restart, an INVITE with Replaces).
    pub fn end(&mut self, key: &CallKey, reason: EndReason, now: u64) -> Option<Update> {
        self.change(key, now, |c| {
            c.terminate(reason, None, now);
            true
        })
    }

    /// Ends one dialog of a call (tags in either order, as for [`bye`](Self::bye)); the call
    /// ends when no dialog is left.
    pub fn end_dialog(
        &mut self,
        call_id: &str,
        tag_a: &str,
        tag_b: &str,
        reason: EndReason,
        now: u64,
    ) -> Option<Update> {
        let f = self.find(call_id, tag_a, tag_b)?;
        self.end_branch(&f.key, &f.to_tag, reason, now)
    }

    /// Where an in-dialog request from the party with `from_tag` goes: the other party's
    /// flow (the caller's source, or the answering branch's), for phones behind NAT or on TCP.
    pub fn flow_towards(&self, call_id: &str, from_tag: &str, to_tag: &str) -> Option<Flow> {
        let f = self.find(call_id, from_tag, to_tag)?;
        let call = self.calls.get(&f.key)?;
        if f.by_caller {
            call.branch(&f.to_tag)?.flow
        } else {
            Some(call.caller_flow)
        }
    }

    /// The party that an in-dialog request claims to come from (its From tag names the
    /// side), as the tracker recorded it, when the request names a live dialog (early or
    /// confirmed) of a call in progress.
    pub fn sender(&self, id: &DialogId) -> Option<DialogSender> {
        let f = self.find(&id.call_id, &id.from_tag, &id.to_tag)?;
        let call = self.calls.get(&f.key)?;
        let branch = call.branch(&f.to_tag).filter(|b| b.live())?;
        Some(if f.by_caller {
            DialogSender {
                side: Side::Caller,
                flow: Some(call.caller_flow),
                aor: call.caller.aor.clone(),
                route_set: branch.route_set.clone(),
            }
        } else {
            DialogSender {
                side: Side::Callee,
                flow: branch.flow,
                aor: call.callee.aor.clone(),
                route_set: branch.route_set.clone(),
            }
        })
    }

    /// A 2xx to an INVITE of dialog `id` (its From and To tags as the response carries them)
    /// went through the proxy: the end-to-end ACK for it is expected for
    /// [`ENDED_KEEP_MS`] (longer than the 2xx is retransmitted, RFC 6026 Timer L).
    pub fn answered(&mut self, id: DialogId, now: u64) {
        self.answered.remember(id, now);
    }

    /// Whether the end-to-end ACK `id` names (From and To tags as the ACK carries them) is
    /// one the proxy relays (RFC 3261 §16.11): the ACK of a confirmed dialog of a call in
    /// progress (a re-INVITE's, or the answer's), or of a 2xx that went through lately
    /// ([`answered`](Self::answered)). Any other ACK is no business of ours.
    pub fn expects_ack(&self, id: &DialogId, now: u64) -> bool {
        let confirmed = self
            .find(&id.call_id, &id.from_tag, &id.to_tag)
            .is_some_and(|f| {
                self.calls
                    .get(&f.key)
                    .and_then(|c| c.branch(&f.to_tag))
                    .is_some_and(|b| b.state == DialogState::Confirmed)
            });
        confirmed || self.answered.contains(id, now)
    }

    /// Records the CSeq of an in-dialog request (`from_tag` is the sender's), so a keepalive
    /// probe after a restart can send a higher one. Returns the record write when it rose;
    /// not a visible change (no publication).
    pub fn note_cseq(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        cseq: u32,
    ) -> Option<DialogWrite> {
        let f = self.find(call_id, from_tag, to_tag)?;
        let c = self.calls.get_mut(&f.key)?;
        if f.by_caller {
            if cseq <= c.caller_cseq {
                return None;
            }
            c.caller_cseq = cseq;
        } else {
            let b = c.branch_mut(&f.to_tag)?;
            if b.callee_cseq.is_some_and(|old| cseq <= old) {
                return None;
            }
            b.callee_cseq = Some(cseq);
        }
        Some(DialogWrite::Put {
            key: call_key(&c.key),
            value: encode_call(c),
        })
    }

    /// Calls past their lifetime, terminated (event `timeout`): answered longer ago than
    /// `max_lifetime` (a phone that lost power never sends BYE), or never answered and older
    /// than `early_timeout` (Timer C lost across a restart).
    pub fn expire(&mut self, now: u64) -> Vec<Update> {
        self.ended.forget(now);
        let due: Vec<CallKey> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, k)| k.clone())
            .collect();
        due.iter()
            .filter_map(|k| self.end(k, EndReason::Timeout, now))
            .collect()
    }

    /// The earliest time [`expire`](Self::expire) has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// After a restart: the stored calls. Those that cannot still be alive (ended, or past
    /// their lifetime as [`expire`](Self::expire) counts it) come back as updates in state
    /// terminated with a record delete (publish them: the lamps saved before the restart go
    /// dark); the others are kept.
    pub fn restore(&mut self, calls: Vec<Call>, now: u64) -> Vec<Update> {
        let mut out = Vec::new();
        for mut call in calls {
            if self.calls.contains_key(&call.key) {
                continue;
            }
            let dead = call.end.is_some()
                || call.branches.iter().all(|b| !b.live()) && call.confirmed_ms.is_some()
                || call.deadline(&self.limits).is_some_and(|d| d <= now);
            if dead {
                if call.end.is_none() {
                    call.terminate(EndReason::Timeout, None, now);
                } else {
                    for b in &mut call.branches {
                        b.state = DialogState::Terminated;
                    }
                }
                call.state = DialogState::Terminated;
                call.seq += 1;
                self.ended.remember(call.key.clone(), now);
                out.push(Update {
                    write: DialogWrite::Delete(call_key(&call.key)),
                    call,
                });
                continue;
            }
            call.state = call.derive_state();
            if let Some(d) = call.deadline(&self.limits) {
                self.deadlines.insert((d, call.key.clone()));
            }
            self.by_call_id
                .entry(call.key.call_id.clone())
                .or_default()
                .push(call.key.from_tag.clone());
            self.calls.insert(call.key.clone(), call);
        }
        out
    }

    pub fn get(&self, key: &CallKey) -> Option<&Call> {
        self.calls.get(key)
    }

    /// Every call in progress (any order).
    pub fn calls(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    /// Calls with a confirmed dialog, for keepalive probing after a restart.
    pub fn confirmed(&self) -> Vec<Call> {
        self.calls
            .values()
            .filter(|c| c.is_confirmed())
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The call and dialog an in-dialog request names: `tag_a` the sender's tag.
    fn find(&self, call_id: &str, tag_a: &str, tag_b: &str) -> Option<Found> {
        for from_tag in self.by_call_id.get(call_id)? {
            let key = CallKey {
                call_id: call_id.to_string(),
                from_tag: from_tag.clone(),
            };
            let Some(call) = self.calls.get(&key) else {
                continue;
            };
            for (caller_tag, to_tag, by_caller) in [(tag_a, tag_b, true), (tag_b, tag_a, false)] {
                if caller_tag == from_tag && call.branch(to_tag).is_some() {
                    return Some(Found {
                        key,
                        to_tag: to_tag.to_string(),
                        by_caller,
                    });
                }
            }
        }
        None
    }

    fn end_branch(
        &mut self,
        key: &CallKey,
        to_tag: &str,
        reason: EndReason,
        now: u64,
    ) -> Option<Update> {
        self.change(key, now, |c| {
            if !c.branch(to_tag).is_some_and(Branch::live) {
                return false;
            }
            let others = c.branches.iter().any(|b| b.to_tag != to_tag && b.live());
            if others {
                c.bury(to_tag);
                c.branches.retain(|b| b.to_tag != to_tag);
            } else {
                c.terminate(reason, None, now);
            }
            true
        })
    }

    /// Applies `f` to a live call; when it reports a change: counts it, keeps the deadline
    /// index, and makes the update (a delete and a tombstone once the call has ended).
    fn change(
        &mut self,
        key: &CallKey,
        now: u64,
        f: impl FnOnce(&mut Call) -> bool,
    ) -> Option<Update> {
        let limits = self.limits;
        let call = self.calls.get_mut(key)?;
        let before = call.deadline(&limits);
        if call.end.is_some() || !f(call) {
            return None;
        }
        call.seq += 1;
        call.state = call.derive_state();
        let after = call.deadline(&limits);
        if before != after {
            if let Some(d) = before {
                self.deadlines.remove(&(d, key.clone()));
            }
            if let Some(d) = after {
                self.deadlines.insert((d, key.clone()));
            }
        }
        if call.end.is_none() {
            return Some(Update {
                write: DialogWrite::Put {
                    key: call_key(key),
                    value: encode_call(call),
                },
                call: call.clone(),
            });
        }
        let call = self.calls.remove(key)?;
        if let Some(tags) = self.by_call_id.get_mut(&key.call_id) {
            tags.retain(|t| *t != key.from_tag);
            if tags.is_empty() {
                self.by_call_id.remove(&key.call_id);
            }
        }
        self.ended.remember(key.clone(), now);
        Some(Update {
            write: DialogWrite::Delete(call_key(key)),
            call,
        })
    }

    fn progress(&mut self, key: &CallKey, now: u64) {
        let limits = self.limits;
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let before = call.deadline(&limits);
        call.progress_ms = call.progress_ms.max(now);
        let after = call.deadline(&limits);
        if before != after {
            if let Some(d) = before {
                self.deadlines.remove(&(d, key.clone()));
            }
            if let Some(d) = after {
                self.deadlines.insert((d, key.clone()));
            }
        }
    }
}

/// Keys remembered for [`ENDED_KEEP_MS`] after they were first seen, at most [`ENDED_KEEP`]
/// of them (the oldest go first).
#[derive(Debug)]
struct Recent<K> {
    since: HashMap<K, u64>,
    order: VecDeque<(u64, K)>,
}

impl<K> Default for Recent<K> {
    fn default() -> Self {
        Recent {
            since: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Recent<K> {
    /// Seen at `now`; seen again, it keeps its first time (the window counts from then).
    fn remember(&mut self, key: K, now: u64) {
        self.forget(now);
        if self.since.contains_key(&key) {
            return;
        }
        if self.since.len() >= ENDED_KEEP {
            if let Some((_, old)) = self.order.pop_front() {
                self.since.remove(&old);
            }
        }
        self.since.insert(key.clone(), now);
        self.order.push_back((now, key));
    }

    fn contains(&self, key: &K, now: u64) -> bool {
        self.since
            .get(key)
            .is_some_and(|at| at.saturating_add(ENDED_KEEP_MS) > now)
    }

    /// Forgets what was first seen [`ENDED_KEEP_MS`] or longer before `now`.
    fn forget(&mut self, now: u64) {
        while let Some((at, _)) = self.order.front() {
            if at.saturating_add(ENDED_KEEP_MS) > now {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.since.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.since.len()
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
