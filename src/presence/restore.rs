//! Restore after a start: publications and subscriptions reloaded from storage, what expired
//! while down removed, every watcher a fresh full-state NOTIFY whose CSeq and version are
//! above any it got before (above the ranges reserved on disk).

use super::*;

impl Presence {
    /// Reloads publications and subscriptions after a start (RFC 6665 §4.2.2 does not say
    /// what a restarted notifier owes; we owe every watcher the current state): what expired
    /// while we were down is removed (its watchers get `terminated;reason=timeout`), every
    /// other watcher a fresh full NOTIFY whose CSeq and version are above the ceilings
    /// reserved before (so above any it got), after a new reservation is on disk.
    pub fn load(&self) -> Result<(usize, usize), StorageError> {
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut pubs = 0;
        // The per-user counts are rebuilt from the records kept.
        self.quotas.clear();
        *self.standing.lock().unwrap_or_else(|p| p.into_inner()) = self.store.load_rules()?;
        for rec in self.canonical_publications(&mut writes)? {
            let Some(pkg) = Pkg::from_key(&rec.event) else {
                writes.push(PresenceWrite::DeletePublication(rec.key()));
                continue;
            };
            if rec.expires_at <= now {
                writes.push(PresenceWrite::DeletePublication(rec.key()));
                continue;
            }
            let presentity: Arc<str> = rec.presentity.as_str().into();
            let res = ResKey {
                presentity: presentity.clone(),
                pkg,
            };
            self.seq.fetch_max(rec.seq + 1, Ordering::Relaxed);
            if let Some(user) = Self::publisher_of(&rec) {
                self.quotas.add(user, Quota::Publications);
            }
            self.schedule(
                Timer::PublicationExpiry(res.clone(), rec.source_id.clone()),
                self.at_unix(rec.expires_at),
            );
            let mut shard = self.shard(&presentity);
            shard
                .resources
                .entry(res)
                .or_default()
                .pubs
                .push(Publication { rec });
            pubs += 1;
        }
        self.publication_count.store(pubs, Ordering::Relaxed);
        let mut subs = 0;
        let mut loaded: Vec<(ResKey, Arc<[u8]>)> = Vec::new();
        for mut rec in self.store.load_subscriptions()? {
            // Whatever was sent before the stop is within the reserved ceilings: continue
            // above them (RFC 4235 §4.1: a forward jump, with the full state, is what a
            // watcher handles; never a CSeq or version it had).
            rec.resume_above_reserved();
            // Stored before the AOR was canonical: the record moves with its dialog key.
            let presentity = self.domains.aor_of_key(&rec.presentity);
            let watcher = self.domains.aor_of_key(&rec.watcher);
            if (&presentity, &watcher) != (&rec.presentity, &rec.watcher) {
                rec.presentity = presentity;
                rec.watcher = watcher;
                writes.push(PresenceWrite::subscription(&rec));
            }
            let Some(pkg) = Pkg::from_key(&rec.event) else {
                writes.push(PresenceWrite::DeleteSubscription(rec.key()));
                continue;
            };
            let Some(route) = notify_route(&rec, &self.trusted) else {
                writes.push(PresenceWrite::DeleteSubscription(rec.key()));
                continue;
            };
            let presentity: Arc<str> = rec.presentity.as_str().into();
            let res = ResKey {
                presentity: presentity.clone(),
                pkg,
            };
            let key: Arc<[u8]> = rec.key().into();
            let profile = self.profile_for(rec.user_agent.as_deref());
            let expired = rec.expires_at <= now;
            let dialog_ids = self.dialog_ids_for(&rec.watcher);
            let mut sub = Sub::new(rec, key.clone(), route, profile, dialog_ids);
            if expired {
                writes.push(PresenceWrite::DeleteSubscription(key.to_vec()));
                out.push(self.next_notify(
                    &res,
                    &mut sub,
                    SubscriptionState::Terminated { reason: "timeout" },
                    Body::None,
                    &mut writes,
                    Persist::No,
                ));
                continue;
            }
            self.schedule(
                Timer::SubscriptionExpiry(res.clone(), key.clone()),
                self.at_unix(sub.rec.expires_at),
            );
            self.dialog_index(&key).insert(key.clone(), res.clone());
            self.quotas.add(&sub.rec.watcher, Quota::Subscriptions);
            let mut shard = self.shard(&presentity);
            shard
                .resources
                .entry(res.clone())
                .or_default()
                .subs
                .insert(key.clone(), sub);
            loaded.push((res, key));
            subs += 1;
        }
        self.subscription_count.store(subs, Ordering::Relaxed);
        for (res, key) in loaded {
            let mut shard = self.shard(&res.presentity);
            if let Some(n) =
                self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Reservation)
            {
                out.push(n);
            }
        }
        // The documents as they are now are what every watcher just got.
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<ResKey> = shard.resources.keys().cloned().collect();
            for k in keys {
                if let Some(r) = shard.resources.get_mut(&k) {
                    r.fanned_out = Some(self.snapshot(&k, r));
                }
            }
        }
        // Each first NOTIFY is past its subscription's reserved range: it waits for the new
        // reservation in `writes`.
        let durable = self.write_gating(writes);
        self.send(out, durable);
        Ok((pubs, subs))
    }

    /// The stored publications, those stored under another spelling of their presentity's
    /// AOR (before one canonical form existed) moved to the canonical one: the old record is
    /// deleted, and where the move meets a publication of the same source, the one that
    /// lasts longer stays.
    fn canonical_publications(
        &self,
        writes: &mut Vec<PresenceWrite>,
    ) -> Result<Vec<PublicationRecord>, StorageError> {
        let mut kept: HashMap<Vec<u8>, PublicationRecord> = HashMap::new();
        let mut moved = std::collections::HashSet::new();
        for mut rec in self.store.load_publications()? {
            let presentity = self.domains.aor_of_key(&rec.presentity);
            if presentity != rec.presentity {
                writes.push(PresenceWrite::DeletePublication(rec.key()));
                rec.presentity = presentity;
                moved.insert(rec.key());
            }
            match kept.entry(rec.key()) {
                std::collections::hash_map::Entry::Occupied(e)
                    if e.get().expires_at >= rec.expires_at => {}
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.insert(rec);
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(rec);
                }
            }
        }
        for (key, rec) in &kept {
            if moved.contains(key) {
                writes.push(PresenceWrite::publication(rec));
            }
        }
        Ok(kept.into_values().collect())
    }
}
