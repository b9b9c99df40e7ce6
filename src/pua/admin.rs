//! The control API's own subscriptions (pua_mi's `subscribe`): made through the presence
//! client like any other, and kept here with what their NOTIFYs said, so the API can list
//! them next to the presence server's watchers and end them by id. Not stored: they end with
//! the process (the client unsubscribes nothing on a kill; the notifier's subscription then
//! expires on its own).

use super::client::{NotifyCallback, SubState, SubscribeError, Subscription, SubscriptionEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// At most this many subscriptions of the control API at once.
pub const MAX_ADMIN_SUBSCRIPTIONS: usize = 1000;

/// A snapshot of one of the API's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSubscriptionInfo {
    pub id: String,
    pub watcher: String,
    pub target: String,
    pub event: String,
    /// Asked for, seconds.
    pub expires: u32,
    /// `subscribing` (no NOTIFY yet), `active`, `pending`, `terminated` (between a failure
    /// and the new try), `ended` (given up or unsubscribed).
    pub state: String,
    /// NOTIFYs received.
    pub notifies: u64,
    pub content_type: Option<String>,
    /// Size of the last NOTIFY's body.
    pub last_body_len: Option<usize>,
    /// Why the last dialog ended, when one did.
    pub reason: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
}

struct Entry {
    info: Arc<Mutex<AdminSubscriptionInfo>>,
    handle: Subscription,
}

#[derive(Default)]
pub struct AdminSubscriptions {
    entries: Mutex<HashMap<String, Entry>>,
}

/// Why a subscription of the API was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminSubscribeError {
    #[error("too many subscriptions of the control API (at most {MAX_ADMIN_SUBSCRIPTIONS})")]
    Full,
    #[error("{0}")]
    Bad(#[from] SubscribeError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AdminSubscriptions {
    /// Makes a subscription through `subscribe` (given the callback that keeps its
    /// snapshot current) and keeps it under `info.id`.
    pub fn add(
        &self,
        info: AdminSubscriptionInfo,
        subscribe: impl FnOnce(NotifyCallback) -> Result<Subscription, SubscribeError>,
    ) -> Result<(), AdminSubscribeError> {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_ADMIN_SUBSCRIPTIONS {
            return Err(AdminSubscribeError::Full);
        }
        let id = info.id.clone();
        let shared = Arc::new(Mutex::new(info));
        let seen = Arc::downgrade(&shared);
        let on_event: NotifyCallback = Arc::new(move |event: &SubscriptionEvent| {
            let Some(info) = seen.upgrade() else {
                return;
            };
            let mut info = lock(&info);
            match event {
                SubscriptionEvent::Notify {
                    state,
                    content_type,
                    body,
                } => {
                    info.notifies += 1;
                    info.state = match state {
                        SubState::Active { .. } => "active",
                        SubState::Pending { .. } => "pending",
                        SubState::Terminated { .. } => "terminated",
                    }
                    .into();
                    if let SubState::Terminated { reason, .. } = state {
                        info.reason = reason.clone();
                    }
                    info.content_type = content_type.clone();
                    info.last_body_len = Some(body.len());
                }
                SubscriptionEvent::Ended { reason, retry_in } => {
                    info.state = if retry_in.is_some() {
                        "terminated"
                    } else {
                        "ended"
                    }
                    .into();
                    info.reason = Some(reason.clone());
                }
            }
        });
        let handle = subscribe(on_event)?;
        entries.insert(
            id,
            Entry {
                info: shared,
                handle,
            },
        );
        Ok(())
    }

    /// Ends and forgets the subscription `id`; `false` when there is none.
    pub fn remove(&self, id: &str) -> bool {
        match lock(&self.entries).remove(id) {
            Some(e) => {
                e.handle.unsubscribe();
                true
            }
            None => false,
        }
    }

    /// Every subscription of the API, by id.
    pub fn list(&self) -> Vec<AdminSubscriptionInfo> {
        let mut v: Vec<AdminSubscriptionInfo> = lock(&self.entries)
            .values()
            .map(|e| lock(&e.info).clone())
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }
}
