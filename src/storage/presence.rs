//! Presence records: publications (RFC 3903) and subscriptions (RFC 6665 dialogs with their
//! NOTIFY CSeq and body version). Written through the same group commit as bindings, so a
//! 2xx to PUBLISH or SUBSCRIBE follows a flush of what it promised. A NOTIFY's CSeq and
//! version are not written one by one: a subscription reserves ranges of them on disk
//! ([`SubscriptionRecord::cseq_reserved`]) and after a restart continues above them.

use super::codec::{Dec, DecodeError, Enc};
use super::{Durable, StorageError};
use crate::sip::body::dialog_info::{
    self, Dialog, DialogInfo, DialogState, Direction, DocState, Identity, Param, Participant,
    StateEvent, Target,
};
use std::borrow::Cow;
use std::sync::Arc;

/// What a publication holds: a document as it was published (SIP PUBLISH, or an in-process
/// publisher that hands bytes), or dialog state handed in typed by the dialog tracker's
/// publisher, rendered to XML only when a NOTIFY or a PUBLISH to a remote server leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationBody {
    Document(Arc<[u8]>),
    /// RFC 4235 dialog state (`application/dialog-info+xml` when rendered).
    Dialogs(Arc<DialogInfo>),
}

impl PublicationBody {
    /// The document as bytes: a published document as it is, typed state rendered.
    pub fn rendered(&self) -> Cow<'_, [u8]> {
        match self {
            PublicationBody::Document(b) => Cow::Borrowed(b),
            PublicationBody::Dialogs(d) => Cow::Owned(d.render(false).into_bytes()),
        }
    }

    /// A publication with no document (a body-less SIP PUBLISH has none to keep).
    pub fn is_empty(&self) -> bool {
        matches!(self, PublicationBody::Document(b) if b.is_empty())
    }
}

impl Default for PublicationBody {
    fn default() -> Self {
        PublicationBody::Document(Arc::from(&[][..]))
    }
}

impl From<&[u8]> for PublicationBody {
    fn from(b: &[u8]) -> Self {
        PublicationBody::Document(Arc::from(b))
    }
}

impl<const N: usize> From<&[u8; N]> for PublicationBody {
    fn from(b: &[u8; N]) -> Self {
        PublicationBody::Document(Arc::from(&b[..]))
    }
}

impl From<&Vec<u8>> for PublicationBody {
    fn from(b: &Vec<u8>) -> Self {
        PublicationBody::Document(Arc::from(b.as_slice()))
    }
}

impl From<Vec<u8>> for PublicationBody {
    fn from(b: Vec<u8>) -> Self {
        PublicationBody::Document(Arc::from(b))
    }
}

impl From<DialogInfo> for PublicationBody {
    fn from(d: DialogInfo) -> Self {
        PublicationBody::Dialogs(Arc::new(d))
    }
}

impl From<Arc<DialogInfo>> for PublicationBody {
    fn from(d: Arc<DialogInfo>) -> Self {
        PublicationBody::Dialogs(d)
    }
}

impl From<&Arc<DialogInfo>> for PublicationBody {
    fn from(d: &Arc<DialogInfo>) -> Self {
        PublicationBody::Dialogs(d.clone())
    }
}

impl From<&PublicationBody> for PublicationBody {
    fn from(b: &PublicationBody) -> Self {
        b.clone()
    }
}

/// One publication of one presentity for one event package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationRecord {
    /// Canonical AOR, `sip:1001@example.com`.
    pub presentity: String,
    /// Package key: `presence`, `dialog`, `dialog;sla`, `message-summary`.
    pub event: String,
    /// The current entity-tag (RFC 3903 §4.1); changes on every successful PUBLISH.
    pub etag: String,
    /// Who publishes: `etag:<first etag>` for SIP PUBLISH, the caller's id in-process.
    pub source_id: String,
    pub content_type: String,
    pub body: PublicationBody,
    /// Absolute expiry, unix seconds.
    pub expires_at: u64,
    /// Arrival order across all publications (newest wins ties when aggregating).
    pub seq: u64,
}

impl PublicationRecord {
    pub fn key(&self) -> Vec<u8> {
        publication_key(&self.presentity, &self.event, &self.source_id)
    }
}

/// Publications are keyed by their source, which stays fixed while the ETag changes.
pub fn publication_key(presentity: &str, event: &str, source_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(presentity.len() + event.len() + source_id.len() + 2);
    k.extend_from_slice(presentity.as_bytes());
    k.push(0);
    k.extend_from_slice(event.as_bytes());
    k.push(0);
    k.extend_from_slice(source_id.as_bytes());
    k
}

/// CSeqs and versions a subscription reserves on disk at a time (`presence.notify_reserve`).
/// A NOTIFY within the range leaves without a write, so a lamp never waits for a flush (10-50
/// ms on a busy disk) and a fan-out to 1,000 watchers writes nothing; one NOTIFY in 1,000
/// waits for a dozen-byte write. After a crash the CSeq and version jump ahead by at most
/// this much, which a watcher takes as it takes any new full state (RFC 4235 §4.1: a version
/// higher than expected with a full document); u32 CSeqs last millions of such jumps.
pub const NOTIFY_RESERVE: u32 = 1_000;

/// Where a watcher is reached: the transport flow its SUBSCRIBE came in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// `udp` or `tcp`.
    pub proto: String,
    pub remote: String,
    pub local: String,
}

/// Subscription authorization state (RFC 6665 §4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    Active,
    Pending,
}

/// One subscription: its dialog (RFC 3261 §12, RFC 6665 §4.1.1.1) and notifier state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub presentity: String,
    pub event: String,
    /// The Event header `id` parameter (RFC 6665 §8.2.1).
    pub event_id: Option<String>,
    /// Canonical AOR of the watcher (From URI).
    pub watcher: String,
    /// The SUBSCRIBE's From and To header values without tags: our NOTIFYs' To and From.
    pub watcher_header: String,
    pub presentity_header: String,
    pub call_id: String,
    /// Our tag (the To tag of our 200).
    pub local_tag: String,
    pub remote_tag: String,
    /// The watcher's Contact URI (RFC 3261 §12.1.1 remote target).
    pub remote_target: String,
    /// Record-Route values of the SUBSCRIBE, in order (the route set of our NOTIFYs).
    pub route_set: Vec<String>,
    /// CSeq of the last NOTIFY we sent (0 before the first).
    pub local_cseq: u32,
    /// CSeq of the last SUBSCRIBE we accepted.
    pub remote_cseq: u32,
    /// Body version the next NOTIFY carries (RFC 4235 §4.1, RFC 3858 §4.2: starts at 0).
    pub version: u32,
    /// The highest CSeq a NOTIFY may carry under the range reserved on disk: NOTIFYs up to
    /// it write nothing; after a restart NOTIFYs continue above it (never a repeat).
    pub cseq_reserved: u32,
    /// The highest body version a NOTIFY may carry under the range reserved on disk.
    pub version_reserved: u32,
    pub expires_at: u64,
    pub state: SubState,
    /// Media types of the SUBSCRIBE's Accept, lowercased.
    pub accept: Vec<String>,
    pub flow: FlowRecord,
    pub user_agent: Option<String>,
    /// Our Contact URI in this dialog.
    pub contact: String,
    pub created_at: u64,
}

impl SubscriptionRecord {
    pub fn key(&self) -> Vec<u8> {
        subscription_key(&self.call_id, &self.local_tag, &self.remote_tag)
    }

    /// Gives back the spare capacity of its strings (headers rendered with `fmt` carry up to
    /// twice their length): a record lives as long as its subscription, one per lamp.
    pub fn shrink_to_fit(&mut self) {
        for s in [
            &mut self.presentity,
            &mut self.event,
            &mut self.watcher,
            &mut self.watcher_header,
            &mut self.presentity_header,
            &mut self.call_id,
            &mut self.local_tag,
            &mut self.remote_tag,
            &mut self.remote_target,
            &mut self.contact,
            &mut self.flow.proto,
            &mut self.flow.remote,
            &mut self.flow.local,
        ] {
            s.shrink_to_fit();
        }
        for s in self
            .route_set
            .iter_mut()
            .chain(self.accept.iter_mut())
            .chain(self.event_id.iter_mut())
            .chain(self.user_agent.iter_mut())
        {
            s.shrink_to_fit();
        }
        self.route_set.shrink_to_fit();
        self.accept.shrink_to_fit();
    }

    /// Counts the next NOTIFY: its CSeq, and its body version when it has a body (the
    /// version it carries is [`Self::version`] before this call). Returns whether it goes
    /// past the reserved range: the ceilings are then raised `reserve` ahead, and that
    /// reservation must be on disk before the NOTIFY leaves.
    pub fn count_notify(&mut self, with_body: bool, reserve: u32) -> bool {
        self.local_cseq = self.local_cseq.wrapping_add(1).max(1);
        let mut due = self.local_cseq > self.cseq_reserved;
        if with_body {
            due |= self.version > self.version_reserved;
            self.version = self.version.wrapping_add(1);
        }
        if due {
            self.reserve_ahead(reserve);
        }
        due
    }

    /// Raises the ceilings `reserve` beyond the CSeq and version in use (never lowers them).
    pub fn reserve_ahead(&mut self, reserve: u32) {
        self.cseq_reserved = self
            .cseq_reserved
            .max(self.local_cseq.saturating_add(reserve));
        self.version_reserved = self
            .version_reserved
            .max(self.version.saturating_add(reserve));
    }

    /// After a restart: whatever was sent before is at most the ceilings, so the next NOTIFY
    /// carries CSeq `cseq_reserved + 1` and version `version_reserved + 1`; both are past
    /// the range, so that NOTIFY reserves a new one first.
    pub fn resume_above_reserved(&mut self) {
        self.local_cseq = self.local_cseq.max(self.cseq_reserved);
        self.version = self.version.max(self.version_reserved.saturating_add(1));
    }
}

pub fn subscription_key(call_id: &str, local_tag: &str, remote_tag: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(call_id.len() + local_tag.len() + remote_tag.len() + 2);
    k.extend_from_slice(call_id.as_bytes());
    k.push(0);
    k.extend_from_slice(local_tag.as_bytes());
    k.push(0);
    k.extend_from_slice(remote_tag.as_bytes());
    k
}

// Distinct version bytes per record kind: a record read from the wrong tree fails to decode.
/// A publication whose body is a document's bytes (the only kind before typed dialog state;
/// still written for documents, so older binaries read them).
const PUBLICATION_V1: u8 = 0x11;
/// A publication whose body is typed dialog state, encoded field by field (no XML).
const PUBLICATION_DIALOGS_V2: u8 = 0x12;
/// A subscription without reserved ceilings: its CSeq and version were exact (each NOTIFY's
/// were written), so they are its ceilings.
const SUBSCRIPTION_V1: u8 = 0x21;
/// A subscription with its reserved ceilings (CSeq, version) after the V1 fields.
const SUBSCRIPTION_V2: u8 = 0x22;

pub fn encode_publication(p: &PublicationRecord) -> Vec<u8> {
    let version = match p.body {
        PublicationBody::Document(_) => PUBLICATION_V1,
        PublicationBody::Dialogs(_) => PUBLICATION_DIALOGS_V2,
    };
    let mut e = Enc::new(version);
    e.str(&p.presentity)
        .str(&p.event)
        .str(&p.etag)
        .str(&p.source_id)
        .str(&p.content_type);
    match &p.body {
        PublicationBody::Document(b) => {
            e.bytes(b);
        }
        PublicationBody::Dialogs(d) => encode_dialog_info(&mut e, d),
    }
    e.u64(p.expires_at).u64(p.seq);
    e.finish()
}

pub fn decode_publication(buf: &[u8]) -> Result<PublicationRecord, DecodeError> {
    let mut d = Dec::new(buf)?;
    if d.version != PUBLICATION_V1 && d.version != PUBLICATION_DIALOGS_V2 {
        return Err(DecodeError("unknown publication record version"));
    }
    let p = PublicationRecord {
        presentity: d.str()?,
        event: d.str()?,
        etag: d.str()?,
        source_id: d.str()?,
        content_type: d.str()?,
        body: if d.version == PUBLICATION_V1 {
            PublicationBody::Document(d.bytes()?.into())
        } else {
            PublicationBody::Dialogs(Arc::new(decode_dialog_info(&mut d)?))
        },
        expires_at: d.u64()?,
        seq: d.u64()?,
    };
    if !d.is_empty() {
        return Err(DecodeError("trailing bytes after publication"));
    }
    Ok(p)
}

fn encode_dialog_info(e: &mut Enc, info: &DialogInfo) {
    e.str(&info.entity)
        .u64(u64::from(info.version))
        .str(info.state.as_str())
        .u64(info.dialogs.len() as u64);
    for d in &info.dialogs {
        e.str(&d.id)
            .opt_str(d.call_id.as_deref())
            .opt_str(d.local_tag.as_deref())
            .opt_str(d.remote_tag.as_deref())
            .opt_str(d.direction.map(Direction::as_str))
            .str(d.state.as_str())
            .opt_str(d.event.map(StateEvent::as_str))
            .u64(d.code.map_or(0, |c| u64::from(c) + 1))
            .u64(d.duration.map_or(0, |s| s.saturating_add(1)))
            .u64(d.line.map_or(0, |l| u64::from(l) + 1));
        for p in [&d.local, &d.remote] {
            match &p.identity {
                None => e.u64(0),
                Some(i) => e.u64(1).str(&i.uri).opt_str(i.display.as_deref()),
            };
            match &p.target {
                None => {
                    e.u64(0);
                }
                Some(t) => {
                    e.u64(1).str(&t.uri).u64(t.params.len() as u64);
                    for param in &t.params {
                        e.str(&param.name).str(&param.value);
                    }
                }
            }
        }
    }
}

/// A count read from a record, refused when it could not fit in what is left of it.
fn count(d: &mut Dec<'_>) -> Result<usize, DecodeError> {
    let n = d.u64()?;
    if d.is_empty() && n > 0 {
        return Err(DecodeError("list longer than record"));
    }
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= 1 << 16)
        .ok_or(DecodeError("list too long"))
}

/// An optional number written as 0 (none) or value + 1.
fn opt_num<T: TryFrom<u64>>(d: &mut Dec<'_>) -> Result<Option<T>, DecodeError> {
    match d.u64()? {
        0 => Ok(None),
        n => T::try_from(n - 1)
            .map(Some)
            .map_err(|_| DecodeError("number out of range")),
    }
}

fn flag(d: &mut Dec<'_>) -> Result<bool, DecodeError> {
    match d.u64()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError("bad option tag")),
    }
}

fn decode_dialog_info(d: &mut Dec<'_>) -> Result<DialogInfo, DecodeError> {
    let entity = d.str()?;
    let version = d.u32()?;
    let state = DocState::parse(&d.str()?).ok_or(DecodeError("unknown document state"))?;
    let n = count(d)?;
    let mut dialogs = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let mut dialog = Dialog::new(d.str()?, DialogState::Terminated);
        dialog.call_id = d.opt_str()?;
        dialog.local_tag = d.opt_str()?;
        dialog.remote_tag = d.opt_str()?;
        dialog.direction = match d.opt_str()? {
            None => None,
            Some(s) => Some(Direction::parse(&s).ok_or(DecodeError("unknown direction"))?),
        };
        dialog.state = DialogState::parse(&d.str()?).ok_or(DecodeError("unknown dialog state"))?;
        dialog.event = match d.opt_str()? {
            None => None,
            Some(s) => Some(StateEvent::parse(&s).ok_or(DecodeError("unknown state event"))?),
        };
        dialog.code = opt_num(d)?;
        dialog.duration = opt_num(d)?;
        dialog.line = opt_num(d)?;
        let mut participants = [Participant::default(), Participant::default()];
        for p in &mut participants {
            if flag(d)? {
                p.identity = Some(Identity {
                    uri: d.str()?,
                    display: d.opt_str()?,
                });
            }
            if flag(d)? {
                let uri = d.str()?;
                let n = count(d)?;
                let params = (0..n)
                    .map(|_| {
                        Ok(Param {
                            name: d.str()?,
                            value: d.str()?,
                        })
                    })
                    .collect::<Result<Vec<_>, DecodeError>>()?;
                p.target = Some(Target { uri, params });
            }
        }
        let [local, remote] = participants;
        (dialog.local, dialog.remote) = (local, remote);
        dialogs.push(dialog);
    }
    Ok(DialogInfo {
        entity,
        version,
        state,
        dialogs,
    })
}

/// Whether the body is dialog state whose dialogs have all ended (a publication that is
/// about to be dropped). A document is parsed; typed state is looked at.
pub fn all_dialogs_terminated(body: &PublicationBody) -> bool {
    let all = |d: &DialogInfo| {
        !d.dialogs.is_empty() && d.dialogs.iter().all(|x| x.state == DialogState::Terminated)
    };
    match body {
        PublicationBody::Dialogs(d) => all(d),
        PublicationBody::Document(b) => dialog_info::parse(b).is_ok_and(|d| all(&d)),
    }
}

pub fn encode_subscription(s: &SubscriptionRecord) -> Vec<u8> {
    let mut e = Enc::new(SUBSCRIPTION_V2);
    e.str(&s.presentity)
        .str(&s.event)
        .opt_str(s.event_id.as_deref())
        .str(&s.watcher)
        .str(&s.watcher_header)
        .str(&s.presentity_header)
        .str(&s.call_id)
        .str(&s.local_tag)
        .str(&s.remote_tag)
        .str(&s.remote_target)
        .strs(&s.route_set)
        .u64(u64::from(s.local_cseq))
        .u64(u64::from(s.remote_cseq))
        .u64(u64::from(s.version))
        .u64(s.expires_at)
        .u64(match s.state {
            SubState::Active => 0,
            SubState::Pending => 1,
        })
        .strs(&s.accept)
        .str(&s.flow.proto)
        .str(&s.flow.remote)
        .str(&s.flow.local)
        .opt_str(s.user_agent.as_deref())
        .str(&s.contact)
        .u64(s.created_at)
        .u64(u64::from(s.cseq_reserved))
        .u64(u64::from(s.version_reserved));
    e.finish()
}

pub fn decode_subscription(buf: &[u8]) -> Result<SubscriptionRecord, DecodeError> {
    let mut d = Dec::new(buf)?;
    if d.version != SUBSCRIPTION_V1 && d.version != SUBSCRIPTION_V2 {
        return Err(DecodeError("unknown subscription record version"));
    }
    let mut s = SubscriptionRecord {
        presentity: d.str()?,
        event: d.str()?,
        event_id: d.opt_str()?,
        watcher: d.str()?,
        watcher_header: d.str()?,
        presentity_header: d.str()?,
        call_id: d.str()?,
        local_tag: d.str()?,
        remote_tag: d.str()?,
        remote_target: d.str()?,
        route_set: d.strs()?,
        local_cseq: d.u32()?,
        remote_cseq: d.u32()?,
        version: d.u32()?,
        cseq_reserved: 0,
        version_reserved: 0,
        expires_at: d.u64()?,
        state: match d.u64()? {
            0 => SubState::Active,
            1 => SubState::Pending,
            _ => return Err(DecodeError("unknown subscription state")),
        },
        accept: d.strs()?,
        flow: FlowRecord {
            proto: d.str()?,
            remote: d.str()?,
            local: d.str()?,
        },
        user_agent: d.opt_str()?,
        contact: d.str()?,
        created_at: d.u64()?,
    };
    (s.cseq_reserved, s.version_reserved) = if d.version == SUBSCRIPTION_V1 {
        (s.local_cseq, s.version)
    } else {
        (d.u32()?, d.u32()?)
    };
    if !d.is_empty() {
        return Err(DecodeError("trailing bytes after subscription"));
    }
    Ok(s)
}

/// The CSeq and version after one NOTIFY, written on every NOTIFY by older binaries: exact
/// values, read as ceilings.
const NOTIFY_SEQ_V1: u8 = 0x31;
/// A reservation: the ceilings (CSeq, version) of a subscription's reserved range.
const NOTIFY_RESERVATION_V2: u8 = 0x32;

/// A subscription's reserved ceilings, kept apart from its record: a reservation writes a
/// dozen bytes instead of the whole subscription.
pub fn encode_notify_seq(cseq_reserved: u32, version_reserved: u32) -> Vec<u8> {
    let mut e = Enc::new(NOTIFY_RESERVATION_V2);
    e.u64(u64::from(cseq_reserved))
        .u64(u64::from(version_reserved));
    e.finish()
}

/// The ceilings (CSeq, version) of a reservation, or of an older binary's exact sequence.
pub fn decode_notify_seq(buf: &[u8]) -> Result<(u32, u32), DecodeError> {
    let mut d = Dec::new(buf)?;
    if d.version != NOTIFY_SEQ_V1 && d.version != NOTIFY_RESERVATION_V2 {
        return Err(DecodeError("unknown notify sequence version"));
    }
    let v = (d.u32()?, d.u32()?);
    if !d.is_empty() {
        return Err(DecodeError("trailing bytes after notify sequence"));
    }
    Ok(v)
}

/// A subscription as loaded: the record, with ceilings from its separate reservation when
/// that is higher (a reservation is written alone; the record only when it changes).
/// Ceilings are never below the CSeq and version stored with them.
pub fn merge_notify_seq(
    mut rec: SubscriptionRecord,
    seq: Option<(u32, u32)>,
) -> SubscriptionRecord {
    let (cseq, version) = seq.unwrap_or_default();
    rec.cseq_reserved = rec.cseq_reserved.max(cseq).max(rec.local_cseq);
    rec.version_reserved = rec.version_reserved.max(version).max(rec.version);
    rec
}

/// What a standing authorization rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Block,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Allow => "allow",
            RuleAction::Block => "block",
        }
    }
}

/// A standing authorization decision of the admin (the control API's `approve`/`block`):
/// every later SUBSCRIBE of `watcher` to `presentity` (in `event`, or in every package but
/// winfo when `None`) is decided by it, before the config's rules and domain policies. Kept
/// durably: it outlives the subscriptions it was made for, and restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    /// Names the rule for `rule_remove`.
    pub id: String,
    /// Canonical AORs.
    pub presentity: String,
    pub watcher: String,
    /// Package key (`presence`, `dialog`...); `None`: every package.
    pub event: Option<String>,
    pub action: RuleAction,
    /// Unix seconds.
    pub created_at: u64,
}

impl RuleRecord {
    pub fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }

    /// Whether the rule decides a SUBSCRIBE of `watcher` to `presentity` in `event`.
    pub fn covers(&self, presentity: &str, watcher: &str, event: &str) -> bool {
        self.presentity == presentity
            && self.watcher == watcher
            && self.event.as_deref().is_none_or(|e| e == event)
    }
}

const RULE_V1: u8 = 0x41;

pub fn encode_rule(r: &RuleRecord) -> Vec<u8> {
    let mut e = Enc::new(RULE_V1);
    e.str(&r.id)
        .str(&r.presentity)
        .str(&r.watcher)
        .opt_str(r.event.as_deref())
        .u64(match r.action {
            RuleAction::Allow => 0,
            RuleAction::Block => 1,
        })
        .u64(r.created_at);
    e.finish()
}

pub fn decode_rule(buf: &[u8]) -> Result<RuleRecord, DecodeError> {
    let mut d = Dec::new(buf)?;
    if d.version != RULE_V1 {
        return Err(DecodeError("unknown rule record version"));
    }
    let r = RuleRecord {
        id: d.str()?,
        presentity: d.str()?,
        watcher: d.str()?,
        event: d.opt_str()?,
        action: match d.u64()? {
            0 => RuleAction::Allow,
            1 => RuleAction::Block,
            _ => return Err(DecodeError("unknown rule action")),
        },
        created_at: d.u64()?,
    };
    if !d.is_empty() {
        return Err(DecodeError("trailing bytes after rule"));
    }
    Ok(r)
}

/// One change to presence state; a list of them is written as one unit. Records are
/// encoded when the write is made (one allocation, under the caller's lock, instead of a
/// clone of every field).
#[derive(Debug, Clone)]
pub enum PresenceWrite {
    /// Key from [`publication_key`], value from [`encode_publication`].
    PutPublication {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    DeletePublication(Vec<u8>),
    /// Key from [`subscription_key`], value from [`encode_subscription`].
    PutSubscription {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Removes the subscription and its NOTIFY sequence.
    DeleteSubscription(Vec<u8>),
    /// A subscription's reserved ceilings (CSeq, version), kept apart from the record:
    /// [`encode_notify_seq`]. Written when a NOTIFY would pass the reserved range.
    NotifySeq {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Key from [`RuleRecord::key`], value from [`encode_rule`].
    PutRule {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteRule(Vec<u8>),
}

impl PresenceWrite {
    pub fn publication(p: &PublicationRecord) -> PresenceWrite {
        PresenceWrite::PutPublication {
            key: p.key(),
            value: encode_publication(p),
        }
    }

    /// The reservation of `s`: its ceilings.
    pub fn reservation(s: &SubscriptionRecord) -> PresenceWrite {
        PresenceWrite::NotifySeq {
            key: s.key(),
            value: encode_notify_seq(s.cseq_reserved, s.version_reserved),
        }
    }

    /// Whether a NOTIFY decided with this write must wait for it: reservations, a
    /// subscription's record and its deletion. Publications need not (their 2xx waits).
    pub fn gates_notifies(&self) -> bool {
        !matches!(
            self,
            PresenceWrite::PutPublication { .. } | PresenceWrite::DeletePublication(_)
        )
    }

    pub fn rule(r: &RuleRecord) -> PresenceWrite {
        PresenceWrite::PutRule {
            key: r.key(),
            value: encode_rule(r),
        }
    }

    pub fn subscription(s: &SubscriptionRecord) -> PresenceWrite {
        PresenceWrite::PutSubscription {
            key: s.key(),
            value: encode_subscription(s),
        }
    }
}

pub trait PresenceStore: Send + Sync {
    fn load_publications(&self) -> Result<Vec<PublicationRecord>, StorageError>;
    fn load_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StorageError>;
    /// The standing authorization rules. The default keeps none: for test doubles that
    /// wrap a store for its publications and subscriptions; both real stores keep them.
    fn load_rules(&self) -> Result<Vec<RuleRecord>, StorageError> {
        Ok(Vec::new())
    }
    /// What the store can tell about its writes (the control API's `status`).
    fn stats(&self) -> Option<super::StoreStats> {
        None
    }
    /// What the store holds and its size on disk (the control API's `status`); reads every
    /// record, so only on request. `None` for a store that cannot tell.
    fn space(&self) -> Option<Result<super::StorageSpace, StorageError>> {
        None
    }
    /// Queues the writes in order; the result resolves once all of them are on disk. Writes
    /// queued earlier are never applied after writes queued later.
    fn write(&self, writes: Vec<PresenceWrite>) -> Durable;
    /// As [`PresenceStore::write`], for state no answer and no NOTIFY waits for (an
    /// in-process publisher's): a store that gathers writes into group commits may keep it
    /// for the next one instead of committing at once. Same order, same durability once
    /// resolved. The default writes it as any other.
    fn write_unawaited(&self, writes: Vec<PresenceWrite>) -> Durable {
        self.write(writes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_subscription() -> SubscriptionRecord {
        SubscriptionRecord {
            presentity: "sip:1001@example.com".into(),
            event: "dialog".into(),
            event_id: Some("7".into()),
            watcher: "sip:1002@example.com".into(),
            watcher_header: "\"Bob\" <sip:1002@example.com>".into(),
            presentity_header: "<sip:1001@example.com>".into(),
            call_id: "abc@h".into(),
            local_tag: "bl1".into(),
            remote_tag: "x9".into(),
            remote_target: "sip:1002@192.0.2.7:5062".into(),
            route_set: vec!["<sip:p1;lr>".into()],
            local_cseq: 41,
            remote_cseq: 3,
            version: 40,
            cseq_reserved: 1_041,
            version_reserved: 1_040,
            expires_at: 1_900_000_000,
            state: SubState::Pending,
            accept: vec!["application/dialog-info+xml".into()],
            flow: FlowRecord {
                proto: "udp".into(),
                remote: "192.0.2.7:5062".into(),
                local: "192.0.2.1:5060".into(),
            },
            user_agent: Some("PolycomVVX".into()),
            contact: "sip:192.0.2.1:5060".into(),
            created_at: 1_899_990_000,
        }
    }

    #[test]
    fn rule_records_round_trip_and_other_kinds_do_not_decode_as_rules() {
        let r = RuleRecord {
            id: "r1".into(),
            presentity: "sip:1001@example.com".into(),
            watcher: "sip:eve@other.test".into(),
            event: Some("presence".into()),
            action: RuleAction::Block,
            created_at: 1_900_000_000,
        };
        let bytes = encode_rule(&r);
        assert_eq!(decode_rule(&bytes).unwrap(), r);
        for cut in 1..bytes.len() {
            assert!(decode_rule(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_rule(&encode_subscription(&sample_subscription())).is_err());
        let any = RuleRecord {
            event: None,
            ..r.clone()
        };
        assert_eq!(decode_rule(&encode_rule(&any)).unwrap(), any);
        assert!(any.covers("sip:1001@example.com", "sip:eve@other.test", "dialog"));
        assert!(!r.covers("sip:1001@example.com", "sip:eve@other.test", "dialog"));
    }

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let s = sample_subscription();
        let bytes = encode_subscription(&s);
        assert_eq!(decode_subscription(&bytes).unwrap(), s);
        assert!(decode_subscription(&bytes[..bytes.len() - 1]).is_err());
        let p = PublicationRecord {
            presentity: "sip:1001@example.com".into(),
            event: "presence".into(),
            etag: "e1".into(),
            source_id: "etag:e0".into(),
            content_type: "application/pidf+xml".into(),
            body: b"<presence/>".into(),
            expires_at: 5,
            seq: 9,
        };
        let bytes = encode_publication(&p);
        assert_eq!(decode_publication(&bytes).unwrap(), p);
        assert!(decode_publication(&bytes[..3]).is_err());
        assert!(decode_publication(&encode_subscription(&s)).is_err());
    }

    /// A subscription as the binaries before reservations wrote it (version 0x21, no
    /// ceilings), by hand: a change of `encode_subscription` cannot hide a broken reader.
    fn v1_subscription_bytes(s: &SubscriptionRecord) -> Vec<u8> {
        let mut e = Enc::new(0x21);
        e.str(&s.presentity)
            .str(&s.event)
            .opt_str(s.event_id.as_deref())
            .str(&s.watcher)
            .str(&s.watcher_header)
            .str(&s.presentity_header)
            .str(&s.call_id)
            .str(&s.local_tag)
            .str(&s.remote_tag)
            .str(&s.remote_target)
            .strs(&s.route_set)
            .u64(u64::from(s.local_cseq))
            .u64(u64::from(s.remote_cseq))
            .u64(u64::from(s.version))
            .u64(s.expires_at)
            .u64(1)
            .strs(&s.accept)
            .str(&s.flow.proto)
            .str(&s.flow.remote)
            .str(&s.flow.local)
            .opt_str(s.user_agent.as_deref())
            .str(&s.contact)
            .u64(s.created_at);
        e.finish()
    }

    #[test]
    fn a_subscription_written_before_reservations_restores_with_its_exact_values_as_ceilings() {
        let s = sample_subscription();
        let old = decode_subscription(&v1_subscription_bytes(&s)).unwrap();
        assert_eq!(
            old,
            SubscriptionRecord {
                cseq_reserved: 41,
                version_reserved: 40,
                ..s.clone()
            }
        );
        // And the NOTIFY sequence those binaries wrote per NOTIFY (0x31: exact values).
        let mut e = Enc::new(0x31);
        e.u64(57).u64(50);
        assert_eq!(decode_notify_seq(&e.finish()).unwrap(), (57, 50));
        let merged = merge_notify_seq(old, Some((57, 50)));
        assert_eq!((merged.cseq_reserved, merged.version_reserved), (57, 50));
        let mut resumed = merged;
        resumed.resume_above_reserved();
        assert_eq!((resumed.local_cseq, resumed.version), (57, 51));
    }

    #[test]
    fn reservations_round_trip_and_the_higher_ceilings_win_on_load() {
        let bytes = encode_notify_seq(2_041, 2_040);
        assert_eq!(bytes[0], NOTIFY_RESERVATION_V2);
        assert_eq!(decode_notify_seq(&bytes).unwrap(), (2_041, 2_040));
        for cut in 1..bytes.len() {
            assert!(decode_notify_seq(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let s = sample_subscription();
        let later = merge_notify_seq(s.clone(), Some((2_041, 2_040)));
        assert_eq!(
            (later.cseq_reserved, later.version_reserved),
            (2_041, 2_040)
        );
        // A reservation older than the record (the record was rewritten since) loses.
        let older = merge_notify_seq(s.clone(), Some((500, 400)));
        assert_eq!(
            (older.cseq_reserved, older.version_reserved),
            (1_041, 1_040)
        );
        assert_eq!(merge_notify_seq(s.clone(), None), s);
    }

    #[test]
    fn rfc6665_4_2_2_notifies_within_the_reservation_write_nothing_and_the_next_reserves() {
        let mut s = sample_subscription();
        (s.local_cseq, s.version, s.cseq_reserved, s.version_reserved) = (0, 0, 0, 0);
        // The first NOTIFY is past the (empty) range: it reserves 1..=1+R.
        assert!(s.count_notify(true, 10));
        assert_eq!((s.local_cseq, s.version), (1, 1));
        assert_eq!((s.cseq_reserved, s.version_reserved), (11, 11));
        let mut sent = vec![(1, 0)];
        for _ in 0..10 {
            let version = s.version;
            assert!(
                !s.count_notify(true, 10),
                "within the range at {}",
                s.local_cseq
            );
            sent.push((s.local_cseq, version));
        }
        assert_eq!(sent.last(), Some(&(11, 10)));
        // CSeq 12 is past 11: one reservation, 10 further.
        let version = s.version;
        assert!(s.count_notify(true, 10));
        sent.push((s.local_cseq, version));
        assert_eq!((s.cseq_reserved, s.version_reserved), (22, 22));
        // A body-less NOTIFY (pending) counts the CSeq only.
        assert!(!s.count_notify(false, 10));
        assert_eq!(s.version, 12);
        sent.push((s.local_cseq, u32::MAX));
        // A crash now: what is on disk are the last ceilings; everything sent is at most
        // them, and the first NOTIFY after the restart is past them and reserves again.
        let mut restored = s.clone();
        restored.resume_above_reserved();
        assert!(sent.iter().all(|&(c, _)| c <= restored.local_cseq));
        assert!(sent
            .iter()
            .filter(|&&(_, v)| v != u32::MAX)
            .all(|&(_, v)| v < restored.version));
        let first_version = restored.version;
        assert!(restored.count_notify(true, 10));
        assert_eq!((restored.local_cseq, first_version), (23, 23));
        assert_eq!(
            (restored.cseq_reserved, restored.version_reserved),
            (33, 34)
        );
    }

    #[test]
    fn ceilings_never_go_down() {
        let mut s = sample_subscription();
        s.reserve_ahead(1);
        assert_eq!((s.cseq_reserved, s.version_reserved), (1_041, 1_040));
        s.reserve_ahead(5_000);
        assert_eq!((s.cseq_reserved, s.version_reserved), (5_041, 5_040));
        s.local_cseq = u32::MAX - 1;
        s.reserve_ahead(5_000);
        assert_eq!(s.cseq_reserved, u32::MAX);
    }

    fn typed_dialogs() -> DialogInfo {
        let mut d = Dialog::new("d1", DialogState::Early);
        d.call_id = Some("c@h".into());
        d.local_tag = Some("lt".into());
        d.direction = Some(Direction::Recipient);
        d.code = Some(486);
        d.duration = Some(0);
        d.line = Some(2);
        d.local = Participant {
            identity: Some(Identity {
                uri: "sip:1001@example.com".into(),
                display: Some("A <&> \"B\"".into()),
            }),
            target: Some(Target {
                uri: "sip:1001@192.0.2.1".into(),
                params: vec![Param {
                    name: "+sip.rendering".into(),
                    value: "no".into(),
                }],
            }),
        };
        let mut ended = Dialog::new("d2", DialogState::Terminated);
        ended.event = Some(StateEvent::RemoteBye);
        ended.remote.target = Some(Target {
            uri: "sip:x@y".into(),
            params: Vec::new(),
        });
        DialogInfo {
            entity: "sip:1001@example.com".into(),
            version: 7,
            state: DocState::Full,
            dialogs: vec![d, ended],
        }
    }

    #[test]
    fn typed_dialog_state_round_trips_without_xml() {
        let p = PublicationRecord {
            presentity: "sip:1001@example.com".into(),
            event: "dialog".into(),
            etag: "e1".into(),
            source_id: "dlg:1:callee".into(),
            content_type: dialog_info::CONTENT_TYPE.into(),
            body: typed_dialogs().into(),
            expires_at: 5,
            seq: 9,
        };
        let bytes = encode_publication(&p);
        assert_eq!(bytes[0], PUBLICATION_DIALOGS_V2);
        assert!(!bytes.windows(7).any(|w| w == b"<dialog"), "no XML on disk");
        assert_eq!(decode_publication(&bytes).unwrap(), p);
        for cut in 1..bytes.len() {
            assert!(decode_publication(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_dialog_info_document_written_before_typed_state_still_reads() {
        // The only encoding before typed state: version 0x11, the document's bytes. Written
        // by hand here so a change of `encode_publication` cannot hide a broken reader.
        let xml = typed_dialogs().render(false);
        let mut e = Enc::new(0x11);
        e.str("sip:1001@example.com")
            .str("dialog")
            .str("e1")
            .str("dlg:1:callee")
            .str(dialog_info::CONTENT_TYPE)
            .bytes(xml.as_bytes())
            .u64(5)
            .u64(9);
        let p = decode_publication(&e.finish()).unwrap();
        assert_eq!(p.body, PublicationBody::from(xml.as_bytes()));
        assert_eq!(p.body.rendered(), xml.as_bytes());
        assert!(!all_dialogs_terminated(&p.body));
    }

    #[test]
    fn typed_state_renders_as_the_document_it_replaces() {
        let typed: PublicationBody = typed_dialogs().into();
        assert_eq!(
            typed.rendered().into_owned(),
            typed_dialogs().render(false).into_bytes()
        );
        let mut all_ended = typed_dialogs();
        for d in &mut all_ended.dialogs {
            d.state = DialogState::Terminated;
        }
        assert!(all_dialogs_terminated(&all_ended.clone().into()));
        assert!(all_dialogs_terminated(&PublicationBody::from(
            all_ended.render(false).as_bytes()
        )));
        assert!(!all_dialogs_terminated(&typed));
    }
}
