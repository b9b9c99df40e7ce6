//! Timers: publication and subscription expiry, the end of a coalescing window, NOTIFY
//! retries; one deadline map, driven by [`Presence::run_timers`].

use super::*;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Timer {
    PublicationExpiry(ResKey, String),
    SubscriptionExpiry(ResKey, Arc<[u8]>),
    Flush(ResKey),
    Retry(ResKey, Arc<[u8]>),
}

impl Presence {
    /// Expiry, coalescing and retry timers; runs for the server's lifetime.
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            let next = self.timers.lock().map(|t| t.next()).unwrap_or(None);
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                        _ = self.timers_changed.notified() => continue,
                    }
                }
                None => {
                    self.timers_changed.notified().await;
                    continue;
                }
            }
            let due = self
                .timers
                .lock()
                .map(|mut t| t.pop_due(self.now()))
                .unwrap_or_default();
            for t in due {
                self.on_timer(t);
            }
        }
    }

    pub(super) fn on_timer(&self, timer: Timer) {
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let presentity = match &timer {
            Timer::PublicationExpiry(r, _)
            | Timer::SubscriptionExpiry(r, _)
            | Timer::Flush(r)
            | Timer::Retry(r, _) => r.presentity.clone(),
        };
        let mut shard = self.shard(&presentity);
        match timer {
            Timer::PublicationExpiry(res, source) => {
                let Some(resource) = shard.resources.get_mut(&res) else {
                    return;
                };
                let Some(i) = resource.pubs.iter().position(|p| p.rec.source_id == source) else {
                    return;
                };
                if resource.pubs[i].rec.expires_at > now {
                    let at = self.at_unix(resource.pubs[i].rec.expires_at);
                    self.schedule(Timer::PublicationExpiry(res, source), at);
                    return;
                }
                writes.push(PresenceWrite::DeletePublication(publication_key(
                    &res.presentity,
                    res.pkg.key(),
                    &source,
                )));
                let gone = resource.pubs.remove(i);
                self.publication_gone(&gone.rec);
                self.changed(&mut shard, &res, None, &mut writes, &mut out);
                if shard.resource(&res).is_some_and(Resource::is_empty) {
                    shard.resources.remove(&res);
                }
            }
            Timer::SubscriptionExpiry(res, key) => {
                let expires_at = shard
                    .resources
                    .get(&res)
                    .and_then(|r| r.subs.get(&key))
                    .map(|s| s.rec.expires_at);
                match expires_at.map(|at| decide::expired(at, now)) {
                    Some(Err(at)) => {
                        self.schedule(Timer::SubscriptionExpiry(res, key), self.at_unix(at));
                    }
                    Some(Ok(())) => self.terminate(
                        &mut shard,
                        &res,
                        &key,
                        "timeout",
                        true,
                        &mut writes,
                        &mut out,
                    ),
                    None => {}
                }
            }
            Timer::Flush(res) => self.fanout(&mut shard, &res, &mut writes, &mut out),
            Timer::Retry(res, key) => {
                let due = shard
                    .resources
                    .get(&res)
                    .and_then(|r| r.subs.get(&key))
                    .is_some_and(|s| s.delivery.retry_due());
                // Only if no change has delivered the state meanwhile.
                if due {
                    if let Some(n) =
                        self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Reservation)
                    {
                        out.push(n);
                    }
                }
            }
        }
        let durable = self.write_gating(writes);
        drop(shard);
        self.send(out, durable);
    }
}
