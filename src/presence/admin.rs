//! What the admin (the control API) does to the presence server beyond SIP: standing
//! authorization rules, re-sending the current state to a presentity's watchers
//! (Kamailio's `presence.refreshWatchers`), and the presentity snapshot.

use super::*;
use crate::storage::{RuleAction, RuleRecord};

/// At most this many standing rules (each is a few dozen bytes; the bound keeps a script gone
/// wrong from filling memory and disk).
pub const MAX_RULES: usize = 10_000;

/// A snapshot of one presentity in one package, for the control API.
#[derive(Debug, Clone)]
pub struct PresentityInfo {
    pub presentity: String,
    pub event: &'static str,
    pub publications: Vec<PublicationInfo>,
    /// Subscriptions to it (the watchers).
    pub watchers: usize,
}

#[derive(Debug, Clone)]
pub struct PublicationInfo {
    /// Who publishes: `etag:<first etag>` for SIP PUBLISH, `api:<id>` for the control API,
    /// the in-process publishers' own ids.
    pub source: String,
    pub etag: String,
    pub content_type: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Counts of the presence state, taken without copying it (for `status` and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceCounts {
    /// Distinct presentities with publications or watchers (any package).
    pub presentities: usize,
    /// Subscriptions per package key, every package listed.
    pub by_package: Vec<(&'static str, usize)>,
    /// Publications per package key, every package listed.
    pub publications_by_package: Vec<(&'static str, usize)>,
    pub active: usize,
    pub pending: usize,
    /// Presentities with a `dialog` publication (lamps that can light).
    pub lamps: usize,
}

/// A standing rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("too many standing rules (at most {MAX_RULES}); remove some first")]
    Full,
    #[error("no rule {0:?}")]
    NotFound(String),
}

impl Presence {
    /// The canonical AOR of a `sip:`/`sips:` URI (as the presence server keys presentities
    /// and watchers), `None` for anything else.
    pub fn canonical_aor(&self, uri: &str) -> Option<String> {
        match crate::sip::Uri::parse(uri.trim()) {
            Ok(crate::sip::Uri::Sip(u)) => Some(self.domains.aor(&u)),
            _ => None,
        }
    }

    /// Whether `uri` names a host (and port) of ours: a presentity this server holds.
    pub fn serves_uri(&self, uri: &str) -> bool {
        match crate::sip::Uri::parse(uri.trim()) {
            Ok(crate::sip::Uri::Sip(u)) => self.domains.local_aor(&u).is_some(),
            _ => false,
        }
    }

    /// What the store tells of its writes.
    pub fn store_stats(&self) -> Option<crate::storage::StoreStats> {
        self.store.stats()
    }

    /// What the store holds and takes on disk (reads every record: on request only).
    pub fn store_space(
        &self,
    ) -> Option<Result<crate::storage::StorageSpace, crate::storage::StorageError>> {
        self.store.space()
    }

    /// A fresh random id for things the admin names later (rules, publications of the
    /// control API): 64 random bits in hex.
    pub fn new_id(&self) -> String {
        format!("{:016x}", self.ids.next())
    }

    /// The standing decision about `watcher` watching `presentity` in `pkg`, if a rule makes
    /// one. A rule for one package wins over a rule for every package; a mailbox
    /// (message-summary) is only opened to others by a rule that names it.
    pub(super) fn standing_decision(
        &self,
        presentity: &str,
        watcher: &str,
        pkg: Pkg,
    ) -> Option<Policy> {
        let rules = self.standing.lock().unwrap_or_else(|p| p.into_inner());
        if rules.is_empty() || pkg == Pkg::Winfo {
            return None;
        }
        let covering = || {
            rules
                .iter()
                .filter(|r| r.covers(presentity, watcher, pkg.key()))
                .filter(|r| r.event.is_some() || pkg != Pkg::MessageSummary)
        };
        covering()
            .find(|r| r.event.is_some())
            .or_else(|| covering().next())
            .map(|r| match r.action {
                RuleAction::Allow => Policy::Allow,
                RuleAction::Block => Policy::Block,
            })
    }

    /// Stores a standing rule (replacing one for the same presentity, watcher and package)
    /// and applies it at once: an approval activates the watcher's pending subscriptions, a
    /// block ends its subscriptions (`terminated;reason=rejected`). Returns the rule, the
    /// write to wait for (durable before the caller says "done") and how many subscriptions
    /// changed. `presentity` and `watcher` are canonical AORs.
    pub fn add_rule(
        &self,
        presentity: &str,
        watcher: &str,
        pkg: Option<Pkg>,
        action: RuleAction,
    ) -> Result<(RuleRecord, Durable, usize), RuleError> {
        let event = pkg.map(|p| p.key().to_string());
        let rule = RuleRecord {
            id: self.new_id(),
            presentity: presentity.to_string(),
            watcher: watcher.to_string(),
            event: event.clone(),
            action,
            created_at: self.clock.now_unix(),
        };
        let durable = {
            let mut rules = self.standing.lock().unwrap_or_else(|p| p.into_inner());
            let mut writes = Vec::new();
            rules.retain(|r| {
                let same = r.presentity == presentity && r.watcher == watcher && r.event == event;
                if same {
                    writes.push(PresenceWrite::DeleteRule(r.key()));
                }
                !same
            });
            if rules.len() >= MAX_RULES {
                return Err(RuleError::Full);
            }
            writes.push(PresenceWrite::rule(&rule));
            rules.push(rule.clone());
            // Written under the lock: a removal of the same rule cannot be stored before it.
            self.store.write(writes)
        };
        let decision = match action {
            RuleAction::Allow => Policy::Allow,
            RuleAction::Block => Policy::Block,
        };
        let changed = self.authorize_in(presentity, watcher, pkg, decision);
        Ok((rule, durable, changed))
    }

    /// Removes a standing rule; subscriptions it decided stay as they are.
    pub fn remove_rule(&self, id: &str) -> Result<Durable, RuleError> {
        let mut rules = self.standing.lock().unwrap_or_else(|p| p.into_inner());
        let i = rules
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| RuleError::NotFound(id.to_string()))?;
        let gone = rules.remove(i);
        Ok(self
            .store
            .write(vec![PresenceWrite::DeleteRule(gone.key())]))
    }

    /// The standing rules, oldest first.
    pub fn rules(&self) -> Vec<RuleRecord> {
        let mut v = self
            .standing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    /// Sends every watcher of `presentity` (in `pkg`, or in every package) a NOTIFY with the
    /// current state, as a change would (one in flight per subscription: a watcher with a
    /// NOTIFY unanswered gets the state after its answer). Returns how many watchers are
    /// owed one.
    pub fn refresh_watchers(&self, presentity: &str, pkg: Option<Pkg>) -> usize {
        let mut shard = self.shard(presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut owed = 0;
        let targets: Vec<(ResKey, Vec<Arc<[u8]>>)> = shard
            .resources
            .iter()
            .filter(|(k, _)| &*k.presentity == presentity && pkg.is_none_or(|p| p == k.pkg))
            .map(|(k, r)| (k.clone(), r.subs.keys().cloned().collect()))
            .collect();
        for (res, keys) in targets {
            for key in keys {
                let send_now = {
                    let Some(sub) = shard
                        .resources
                        .get_mut(&res)
                        .and_then(|r| r.subs.get_mut(&key))
                    else {
                        continue;
                    };
                    sub.winfo_full = true;
                    sub.delivery.changed()
                };
                owed += 1;
                if send_now {
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
        owed
    }

    /// Counts of presentities, subscriptions and publications, one shard locked at a time.
    pub fn counts(&self) -> PresenceCounts {
        let mut subs = [0usize; Pkg::ALL.len()];
        let mut pubs = [0usize; Pkg::ALL.len()];
        let index = |pkg: Pkg| Pkg::ALL.iter().position(|p| *p == pkg).unwrap_or(0);
        let mut c = PresenceCounts::default();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Presentities hash to one shard: counting them per shard counts each once.
            let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
            for (k, r) in &shard.resources {
                if r.pubs.is_empty() && r.subs.is_empty() {
                    continue;
                }
                seen.insert(&k.presentity);
                subs[index(k.pkg)] += r.subs.len();
                pubs[index(k.pkg)] += r.pubs.len();
                if k.pkg == Pkg::Dialog && !r.pubs.is_empty() {
                    c.lamps += 1;
                }
                for s in r.subs.values() {
                    match s.rec.state {
                        SubState::Active => c.active += 1,
                        SubState::Pending => c.pending += 1,
                    }
                }
            }
            c.presentities += seen.len();
        }
        c.by_package = Pkg::ALL
            .iter()
            .map(|p| (p.key(), subs[index(*p)]))
            .collect();
        c.publications_by_package = Pkg::ALL
            .iter()
            .map(|p| (p.key(), pubs[index(*p)]))
            .collect();
        c
    }

    /// Every presentity with publications or watchers, per package.
    pub fn presentities(&self) -> Vec<PresentityInfo> {
        let mut v = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, r) in &shard.resources {
                if r.pubs.is_empty() && r.subs.is_empty() {
                    continue;
                }
                v.push(PresentityInfo {
                    presentity: k.presentity.to_string(),
                    event: k.pkg.key(),
                    publications: r
                        .pubs
                        .iter()
                        .map(|p| PublicationInfo {
                            source: p.rec.source_id.clone(),
                            etag: p.rec.etag.clone(),
                            content_type: p.rec.content_type.clone(),
                            expires_at: p.rec.expires_at,
                        })
                        .collect(),
                    watchers: r.subs.len(),
                });
            }
        }
        v.sort_by(|a, b| (&a.presentity, a.event).cmp(&(&b.presentity, b.event)));
        v
    }
}
