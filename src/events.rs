//! The internal event bus: thin "what changed" notices. Publishers never wait for readers; a
//! reader that falls behind loses the oldest notices (tokio broadcast semantics) and should
//! pull a fresh snapshot.

use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationChange {
    Registered,
    Refreshed,
    Unregistered,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionChange {
    Created,
    Refreshed,
    /// A pending watcher was approved.
    Activated,
    /// Ended; the reason is the one its final NOTIFY gave (or `deactivated` when the watcher
    /// refused a NOTIFY).
    Terminated(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Registration {
        change: RegistrationChange,
        aor: String,
        contact: String,
        user_agent: Option<String>,
        /// When the binding expires (unix seconds); for an unregistered or expired one, when
        /// it ended.
        expires: u64,
        /// The flow it came over: `udp:192.0.2.1:5060` (transport:address, as the snapshot's
        /// contacts' `flow`).
        flow: String,
    },
    /// A presence subscription came, changed or went.
    Subscription {
        change: SubscriptionChange,
        presentity: String,
        /// Package key: `presence`, `dialog`, `dialog;sla`, ...
        event: &'static str,
        watcher: String,
        /// Its state after the change: `active` or `pending` (an ended one: its last).
        state: &'static str,
    },
    /// A call through the proxy changed state (the dialog tracker's view; `Call::state` of
    /// RFC 4235: trying, proceeding, early, confirmed, terminated).
    Call {
        call_id: String,
        caller: String,
        callee: String,
        state: &'static str,
        /// A party of a confirmed dialog of the call holds (sendonly/inactive offer).
        held: bool,
        /// When the call began (unix seconds).
        since: u64,
    },
    /// An appearance of a shared line changed: `state` is `free`, `seized`, `ringing`,
    /// `active` or `held`; `phone` the member phone holding it.
    Appearance {
        line: String,
        appearance: u32,
        state: &'static str,
        phone: Option<String>,
        /// The other party of its call, when known.
        peer: Option<String>,
    },
    /// A NOTIFY to a watcher got no 2xx (a timeout counts as 408). Thin on purpose: one per
    /// subscription per failure streak (its first failure) plus one when the server gives the
    /// subscription up, so a storm of dead watchers cannot flood the bus; the `subscriptions`
    /// list has the running count.
    NotifyFailed {
        presentity: String,
        event: &'static str,
        watcher: String,
        status: u16,
        /// `true`: the subscription ended (refused for good); `false`: it stays, retried.
        gave_up: bool,
    },
    /// The state of a presentity changed (a publication came, changed, expired or went).
    Publication {
        presentity: String,
        event: &'static str,
        /// Who changed it; `None` for an expiry.
        source: Option<String>,
        /// For `message-summary`: whether messages wait now (any publication says so);
        /// `None` for the other packages.
        waiting: Option<bool>,
    },
}

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(capacity: usize) -> EventBus {
        EventBus {
            tx: broadcast::channel(capacity).0,
        }
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is fine: nobody is listening yet.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(4096)
    }
}
