//! The proxy service: everything the proxy owns, in one place. Its routing rules and identity
//! ([`Proxy`]), the response context of every request it forwards with their timers, the
//! dialog tracker and the tracker's store, and the PBX's address resolved at start.
//!
//! The server core reaches the proxy's state only through this value; it sends what the
//! proxy decides, runs its client transactions and hands the tracker's updates to the
//! publishers.

use super::forward::Forwarding;
use super::{lock, Proxy};
use crate::config::DialogConfig;
use crate::dialog::{Call, DialogId, DialogTracker, Flow};
use crate::sip::{HasHeaders, Request, Response};
use crate::storage::DialogStore;
use crate::transport::Peer;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct ProxyService {
    /// Routing rules and our identity (domains, sockets, upstream).
    pub rules: Proxy,
    /// Requests being forwarded statefully: response contexts and their timers.
    pub(crate) forwarding: Mutex<Forwarding>,
    /// Calls through the proxy (one lock: every change of a call is published under it, so a
    /// call's lamps change in order).
    pub(crate) dialogs: Mutex<DialogTracker>,
    pub(crate) dialog_store: Arc<dyn DialogStore>,
    /// `[proxy] upstream` resolved at start when it is a host name.
    upstream_resolved: Option<Peer>,
}

impl ProxyService {
    pub fn new(
        rules: Proxy,
        dialog: &DialogConfig,
        dialog_store: Arc<dyn DialogStore>,
        upstream_resolved: Option<Peer>,
    ) -> ProxyService {
        ProxyService {
            rules,
            forwarding: Mutex::new(Forwarding::default()),
            dialogs: Mutex::new(DialogTracker::new(dialog)),
            dialog_store,
            upstream_resolved,
        }
    }

    /// The PBX's address found at start for a host name in `[proxy] upstream`.
    pub fn upstream_resolved(&self) -> Option<Peer> {
        self.upstream_resolved
    }

    /// Requests being forwarded statefully (response contexts held).
    pub fn forwarded(&self) -> usize {
        lock(&self.forwarding).len()
    }

    /// When the next proxy timer (Timer C, the wait after a CANCEL) is due.
    pub fn next_timer(&self) -> Option<Instant> {
        lock(&self.forwarding).timers.next()
    }

    /// Whether the tracker expects this end-to-end ACK (see
    /// [`DialogTracker::expects_ack`]) at `now_ms` (unix milliseconds).
    pub fn expects_ack(&self, ack: &Request, now_ms: u64) -> bool {
        let Some(id) = dialog_id(ack) else {
            return false;
        };
        lock(&self.dialogs).expects_ack(&id, now_ms)
    }

    /// A response goes upstream: when it is a 2xx to an INVITE, its ACK will follow (see
    /// [`DialogTracker::answered`]).
    pub fn note_answered(&self, resp: &Response, now_ms: u64) {
        if !(200..300).contains(&resp.status) || !resp.cseq().is_ok_and(|c| c.method == "INVITE") {
            return;
        }
        if let Some(id) = dialog_id(resp) {
            lock(&self.dialogs).answered(id, now_ms);
        }
    }

    /// For an in-dialog request of a tracked call: the flow of the party it goes to (where
    /// its INVITE or answer came from), so phones behind NAT and on TCP are reached.
    pub fn flow_towards(&self, req: &Request) -> Option<Flow> {
        let id = dialog_id(req)?;
        lock(&self.dialogs).flow_towards(&id.call_id, &id.from_tag, &id.to_tag)
    }

    /// The calls in progress (a snapshot).
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.dialogs).calls().cloned().collect()
    }
}

/// The dialog a message names by its Call-ID, From tag and To tag, when it has all three.
fn dialog_id(m: &impl HasHeaders) -> Option<DialogId> {
    Some(DialogId {
        call_id: m.call_id().ok()?.to_string(),
        from_tag: m.from_hdr().ok()?.tag()?,
        to_tag: m.to_hdr().ok()?.tag()?,
    })
}
