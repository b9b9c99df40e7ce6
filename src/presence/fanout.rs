//! Fan-out and NOTIFY building: a change of a resource goes to its watchers (coalesced,
//! unchanged documents skipped, one NOTIFY in flight per subscription: later changes are owed
//! and sent when it is answered), and the presentity's winfo watchers hear of its watchers
//! (RFC 3857 §3.2.4).

use super::*;

/// Watcher changes a winfo subscription queues for a partial document; beyond this it gets
/// the full list instead (bounds memory under a SUBSCRIBE flood).
pub(super) const MAX_WINFO_CHANGES: usize = 256;

impl Presence {
    /// Builds the next NOTIFY of `sub`: counts its CSeq (and version, when it has a body)
    /// and queues into `writes` what must be on disk before it leaves: nothing while both
    /// stay within the subscription's reserved range, a new reservation when one would pass
    /// it, or the whole record (`persist`). Whoever sends the NOTIFY waits for `writes` only
    /// when they hold such a write ([`PresenceWrite::gates_notifies`]). `body` is the
    /// document to render once the shard lock is released, with the request.
    pub(super) fn next_notify(
        &self,
        res: &ResKey,
        sub: &mut Sub,
        state: SubscriptionState,
        body: Body,
        writes: &mut Vec<PresenceWrite>,
        persist: Persist,
    ) -> PendingNotify {
        let due = sub
            .rec
            .count_notify(body.is_some(), self.cfg.notify_reserve);
        match persist {
            Persist::No => {}
            Persist::Reservation if due => writes.push(PresenceWrite::reservation(&sub.rec)),
            Persist::Reservation => {}
            Persist::Record => {
                sub.rec.reserve_ahead(self.cfg.notify_reserve);
                writes.push(PresenceWrite::subscription(&sub.rec));
            }
        }
        // Only what the NOTIFY's place in the order needs is taken here (its CSeq, counted
        // above, and a reference to the dialog); its branch, request and body are made by
        // whoever sends it, with the lock released (`build_notifies`).
        sub.delivery.sent();
        PendingNotify {
            sub: SubRef {
                res: res.clone(),
                key: sub.key.clone(),
            },
            to: sub.route.to,
            request_uri: sub.route.request_uri.clone(),
            via_sent_by: sub.route.via_sent_by.clone(),
            head: sub.head.clone(),
            cseq: sub.rec.local_cseq,
            state,
            body,
        }
    }

    pub(super) fn state_of(&self, sub: &Sub, now_unix: u64) -> SubscriptionState {
        let expires = sub.rec.expires_at.saturating_sub(now_unix);
        match sub.rec.state {
            SubState::Active => SubscriptionState::Active { expires },
            SubState::Pending => SubscriptionState::Pending { expires },
        }
    }

    /// The current document for one watcher, to render after the shard lock is released
    /// (none while pending: RFC 3856 §6.6.2, a pending NOTIFY reveals nothing).
    pub(super) fn body_for(
        &self,
        res: &ResKey,
        resource: &Resource,
        sub: &mut Sub,
        winfo: Option<&Resource>,
    ) -> Body {
        if sub.rec.state == SubState::Pending {
            return Body::None;
        }
        // The version this NOTIFY carries is the one before next_notify counts it.
        let version = sub.rec.version;
        if res.pkg == Pkg::Winfo {
            let full = sub.winfo_full || sub.winfo_changes.is_empty();
            let watchers = if full {
                winfo.map(|r| self.winfo_watchers(r)).unwrap_or_default()
            } else {
                std::mem::take(&mut sub.winfo_changes)
            };
            sub.winfo_changes.clear();
            sub.winfo_full = false;
            return Body::Winfo(watcherinfo::WatcherInfo {
                version,
                full,
                resource: res.presentity.to_string(),
                package: "presence".into(),
                watchers,
            });
        }
        if package(res.pkg).is_none() {
            return Body::None;
        }
        Body::Document {
            snapshot: self.snapshot(res, resource),
            options: Self::options_of(sub),
            version,
        }
    }

    pub(super) fn winfo_entry(
        &self,
        sub: &Sub,
        event: watcherinfo::WatcherEvent,
        terminated: bool,
    ) -> watcherinfo::Watcher {
        let now = self.clock.now_unix();
        watcherinfo::Watcher {
            id: sub.rec.local_tag.clone(),
            status: if terminated {
                watcherinfo::WatcherStatus::Terminated
            } else if sub.rec.state == SubState::Pending {
                watcherinfo::WatcherStatus::Pending
            } else {
                watcherinfo::WatcherStatus::Active
            },
            event,
            uri: sub.rec.watcher.clone(),
            display_name: None,
            duration_subscribed: Some(now.saturating_sub(sub.rec.created_at)),
            expiration: Some(sub.rec.expires_at.saturating_sub(now)),
        }
    }

    pub(super) fn winfo_watchers(&self, presence: &Resource) -> Vec<watcherinfo::Watcher> {
        let mut v: Vec<_> = presence
            .subs
            .values()
            .map(|s| self.winfo_entry(s, watcherinfo::WatcherEvent::Subscribe, false))
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Tells the presentity's winfo watchers that one of its presence watchers came, went or
    /// changed status (RFC 3857 §3.2.4).
    pub(super) fn winfo_changed(
        &self,
        shard: &mut Shard,
        presentity: &Arc<str>,
        entry: watcherinfo::Watcher,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<PendingNotify>,
    ) {
        let wkey = ResKey {
            presentity: presentity.clone(),
            pkg: Pkg::Winfo,
        };
        let pkey = ResKey {
            presentity: presentity.clone(),
            pkg: Pkg::Presence,
        };
        let now = self.clock.now_unix();
        let Some(mut winfo) = shard.resources.remove(&wkey) else {
            return;
        };
        let presence = shard.resource(&pkey);
        for sub in winfo.subs.values_mut() {
            if sub.rec.state != SubState::Active {
                continue;
            }
            if sub.winfo_changes.len() >= MAX_WINFO_CHANGES {
                // Too many changes queued behind an unanswered NOTIFY: send the whole list.
                sub.winfo_changes.clear();
                sub.winfo_full = true;
            } else if !sub.winfo_full {
                sub.winfo_changes.push(entry.clone());
            }
            if !sub.delivery.changed() {
                continue;
            }
            let empty = Resource::default();
            let body = self.body_for(&wkey, &empty, sub, presence);
            let state = self.state_of(sub, now);
            out.push(self.next_notify(&wkey, sub, state, body, writes, Persist::Reservation));
        }
        shard.resources.insert(wkey, winfo);
    }

    /// Sends the current state of `res` to its watchers after a change (`source`: who made
    /// it, for `dialog;sla` echo suppression). Honors the coalescing window: the first change
    /// goes out at once, later ones within `coalesce_ms` together at its end.
    pub(super) fn changed(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        source: Option<&str>,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<PendingNotify>,
    ) {
        // A mailbox's lamp, for the dashboard: waiting when any of its publications says so
        // (parsed only for message-summary, whose bodies are a few short lines).
        let waiting = (res.pkg == Pkg::MessageSummary).then(|| {
            shard.resource(res).is_some_and(|r| {
                r.pubs.iter().any(|p| {
                    crate::sip::body::mwi::parse(&p.rec.body.rendered()).is_ok_and(|m| m.waiting)
                })
            })
        });
        self.emit(Event::Publication {
            presentity: res.presentity.to_string(),
            event: res.pkg.key(),
            source: source.map(str::to_string),
            waiting,
        });
        let now = self.now();
        let window = Duration::from_millis(self.cfg.coalesce_ms);
        let Some(resource) = shard.resources.get_mut(res) else {
            return;
        };
        let src = source.map(str::to_string);
        resource.pending_source = Some(match resource.pending_source.take() {
            None => src,
            Some(prev) if prev == src => prev,
            Some(_) => None,
        });
        if let Some(last) = resource.last_fanout {
            if now < last + window {
                if !resource.flush_scheduled {
                    resource.flush_scheduled = true;
                    self.schedule(Timer::Flush(res.clone()), last + window);
                }
                return;
            }
        }
        self.fanout(shard, res, writes, out);
    }

    pub(super) fn fanout(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<PendingNotify>,
    ) {
        let now_unix = self.clock.now_unix();
        let Some(mut resource) = shard.resources.remove(res) else {
            return;
        };
        resource.flush_scheduled = false;
        let source = resource.pending_source.take().flatten();
        // Nothing is rendered here (the shard is locked): the document is unchanged when the
        // publications are.
        let snapshot = self.snapshot(res, &resource);
        if resource
            .fanned_out
            .as_ref()
            .is_some_and(|last| last.same_document(&snapshot))
        {
            shard.resources.insert(res.clone(), resource);
            return;
        }
        resource.fanned_out = Some(snapshot.clone());
        resource.last_fanout = Some(self.now());
        // One rendering per (accept, options) with a sentinel version, the version put in
        // per watcher (render_for's cache): a fan-out to 1,000 watchers renders once, after
        // the lock is released.
        for sub in resource.subs.values_mut() {
            if sub.rec.state != SubState::Active {
                continue;
            }
            // dialog;sla: the phone that made the change is not told of it.
            if res.pkg == Pkg::Sla && source.as_deref() == Some(sub.rec.watcher.as_str()) {
                continue;
            }
            // A shared line's member phone whose own dialogs changed: its document (which
            // leaves out its own dialogs) is the same as before.
            if res.pkg == Pkg::Sla
                && source.is_some()
                && Self::options_of(sub).own_phone.map(crate::bla::source_id) == source
            {
                continue;
            }
            if !sub.delivery.changed() {
                continue;
            }
            let body = Body::Document {
                snapshot: snapshot.clone(),
                options: Self::options_of(sub),
                version: sub.rec.version,
            };
            let state = self.state_of(sub, now_unix);
            out.push(self.next_notify(res, sub, state, body, writes, Persist::Reservation));
        }
        shard.resources.insert(res.clone(), resource);
    }

    /// The NOTIFY a subscription is owed now (in flight answered, retry due, refresh).
    pub(super) fn notify_one(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        key: &Arc<[u8]>,
        writes: &mut Vec<PresenceWrite>,
        persist: Persist,
    ) -> Option<PendingNotify> {
        let now_unix = self.clock.now_unix();
        let presence_key = ResKey {
            presentity: res.presentity.clone(),
            pkg: Pkg::Presence,
        };
        let mut resource = shard.resources.remove(res)?;
        let winfo = if res.pkg == Pkg::Winfo {
            shard.resource(&presence_key)
        } else {
            None
        };
        let out = match resource.subs.remove(key) {
            Some(mut sub) => {
                let body = self.body_for(res, &resource, &mut sub, winfo);
                let state = self.state_of(&sub, now_unix);
                let n = Some(self.next_notify(res, &mut sub, state, body, writes, persist));
                resource.subs.insert(key.clone(), sub);
                resource.sent_current();
                n
            }
            None => None,
        };
        shard.resources.insert(res.clone(), resource);
        out
    }
}
