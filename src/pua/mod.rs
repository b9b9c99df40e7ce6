//! The presence user agent: the in-process publishers that feed the presence server
//! (`usrloc`: presence from registrations; `dialoginfo`: BLF from the dialog tracker; BLA
//! later) and the SIP client that also PUBLISHes their state to a remote presence server
//! and SUBSCRIBEs at remote notifiers ([`client`]).
//!
//! Every publisher goes through [`Pua::publish`]: the state goes into our own presence
//! server directly (no SIP to ourselves), and, when `[pua] presence_server` is set, to
//! that server by SIP PUBLISH. Calls for one (presentity, package, source) must come in
//! the order the states happened (each publisher serializes its own), and the remote side
//! keeps that order.

pub mod admin;
pub mod client;
pub mod dialoginfo;
pub mod usrloc;

use crate::config::Config;
use crate::presence::event::Pkg;
use crate::presence::{Presence, PublishError};
use crate::sip::message::Parsed;
use crate::sip::Request;
use crate::storage::{Durable, PublicationBody};
use client::{
    Client, NotifyAnswer, NotifyCallback, SipSender, SubscribeError, SubscribeOptions, Subscription,
};
use std::sync::Arc;

pub struct Pua {
    presence: Arc<Presence>,
    client: Arc<Client>,
    /// The control API's own subscriptions (made with [`Pua::subscribe`]).
    admin: admin::AdminSubscriptions,
}

impl Pua {
    /// `ids` makes the SIP client's Call-IDs, tags and client nonces.
    /// `sender` reaches the network (PUBLISH and SUBSCRIBE to a remote server).
    pub fn new(
        cfg: &Config,
        presence: Arc<Presence>,
        ids: crate::ids::Ids,
        sender: Arc<dyn SipSender>,
    ) -> Arc<Pua> {
        Arc::new(Pua {
            presence,
            client: Client::new(client::Settings::from_config(cfg), ids, sender),
            admin: Default::default(),
        })
    }

    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The control API's subscriptions.
    pub fn admin(&self) -> &admin::AdminSubscriptions {
        &self.admin
    }

    /// Sets the state `source_id` publishes for `presentity` (a canonical AOR) in `pkg` for
    /// `expires` seconds (0 removes it): into our presence server (the returned [`Durable`]
    /// resolves once it is on disk; NOTIFYs go out on their own) and, with `[pua]
    /// presence_server`, by PUBLISH to that server (queued: one PUBLISH in flight per
    /// publication, the newest state wins, ETag kept, refreshed before expiry). `body` is a
    /// document's bytes, or typed state (dialog-info from the dialog tracker), which stays
    /// typed in both and is rendered only when a NOTIFY or the PUBLISH leaves.
    pub fn publish(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
        body: impl Into<PublicationBody>,
        expires: u32,
    ) -> Result<Durable, PublishError> {
        let body = body.into();
        let durable = self
            .presence
            .publish(presentity, pkg, source_id, body.clone(), expires)?;
        self.client
            .publish(presentity, pkg, source_id, body, expires);
        Ok(durable)
    }

    /// As [`Pua::publish`], for a publisher that waits for nothing (presence from
    /// registrations, a call's dialog state): the state reaches the disk with the next group
    /// commit instead of forcing one ([`Presence::publish_unawaited`]); the watchers'
    /// NOTIFYs and the remote PUBLISH are the same.
    pub fn publish_unawaited(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
        body: impl Into<PublicationBody>,
        expires: u32,
    ) -> Result<(), PublishError> {
        let body = body.into();
        self.presence
            .publish_unawaited(presentity, pkg, source_id, body.clone(), expires)?;
        self.client
            .publish(presentity, pkg, source_id, body, expires);
        Ok(())
    }

    /// Sends the state `source_id` currently has in our presence server for `presentity`
    /// to the remote presence server (a fresh publication: after a restart the old ETag is
    /// gone). Nothing without `presence_server` or without a current state.
    pub fn republish(&self, presentity: &str, pkg: Pkg, source_id: &str, now_unix: u64) {
        if let Some((body, expires_at)) = self.presence.publication_body(presentity, pkg, source_id)
        {
            let left = expires_at.saturating_sub(now_unix);
            if left > 0 {
                self.client.publish(
                    presentity,
                    pkg,
                    source_id,
                    body,
                    u32::try_from(left).unwrap_or(u32::MAX),
                );
            }
        }
    }

    /// Subscribes `watcher` (our From URI) to `event` at `target` for `expires` seconds;
    /// every NOTIFY (answered 200) and every end of the subscription reaches `on_event`.
    /// The client refreshes it and makes a new one after a failure until
    /// [`Subscription::unsubscribe`].
    pub fn subscribe(
        &self,
        target: &str,
        event: &str,
        watcher: &str,
        expires: u32,
        on_event: NotifyCallback,
    ) -> Result<Subscription, SubscribeError> {
        self.client
            .subscribe(target, event, watcher, expires, None, on_event)
    }

    /// [`Pua::subscribe`] with the requests outside the dialog sent to `outbound` (a
    /// `sip:` URI of a proxy or presence server) instead of the target.
    pub fn subscribe_via(
        &self,
        target: &str,
        event: &str,
        watcher: &str,
        expires: u32,
        outbound: &str,
        on_event: NotifyCallback,
    ) -> Result<Subscription, SubscribeError> {
        self.client
            .subscribe(target, event, watcher, expires, Some(outbound), on_event)
    }

    /// [`Pua::subscribe`] with [`SubscribeOptions`] (another To, requests pinned to a
    /// flow, a judge for each NOTIFY's answer).
    pub fn subscribe_with(
        &self,
        target: &str,
        event: &str,
        watcher: &str,
        expires: u32,
        options: SubscribeOptions,
        on_event: NotifyCallback,
    ) -> Result<Subscription, SubscribeError> {
        self.client
            .subscribe_with(target, event, watcher, expires, options, on_event)
    }

    /// A NOTIFY reached us: what to answer (200 for our subscriptions unless their judge
    /// says otherwise, 481 for anything else).
    pub fn on_notify(&self, req: &Request, parsed: &Parsed) -> NotifyAnswer {
        self.client.on_notify(req, parsed)
    }
}
