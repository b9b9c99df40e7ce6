//! Per-user quotas: how many subscriptions and SIP publications one user holds, and how many
//! of its subscriptions have NOTIFYs failing at once. Without them one authenticated user
//! could fill the server's tables (and a colleague's watcher slots), and watchers that
//! answer nothing could hold the client transaction table.
//!
//! Whose quota: a subscription counts for its watcher (the From AOR, which for an
//! authenticated SUBSCRIBE is the authenticated user's own AOR, checked before); a SIP
//! publication for the presentity it publishes (for an authenticated PUBLISH the user's own
//! AOR); in-process publications (usrloc, dialoginfo) count for nobody. Both are read from
//! the stored records, so the counts are rebuilt after a restart.
//!
//! A place is checked and taken in one step under the table's lock, which is taken while the
//! presentity's shard lock is held (lock order: shard, then this table; never the reverse),
//! and released where the subscription or publication goes.

use super::SubRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quota {
    Subscriptions,
    Publications,
}

impl Quota {
    /// The config key that sets it.
    pub(super) fn key(self) -> &'static str {
        match self {
            Quota::Subscriptions => "presence.max_subscriptions_per_user",
            Quota::Publications => "presence.max_publications_per_user",
        }
    }

    /// The reason phrase of a refusal: names the limit, whose it is and its key.
    pub(super) fn refusal(self, user: &str) -> String {
        let what = match self {
            Quota::Subscriptions => "subscriptions",
            Quota::Publications => "publications",
        };
        format!("Forbidden: too many {what} for {user} ({})", self.key())
    }
}

/// One user's use. Pure: the limits are passed in.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Usage {
    subscriptions: usize,
    publications: usize,
    /// Its subscriptions whose last NOTIFY failed, the one failing longest first.
    failing: Vec<SubRef>,
}

impl Usage {
    fn count(&mut self, q: Quota) -> &mut usize {
        match q {
            Quota::Subscriptions => &mut self.subscriptions,
            Quota::Publications => &mut self.publications,
        }
    }

    /// Takes one place if fewer than `max` are taken.
    pub(super) fn take(&mut self, q: Quota, max: usize) -> bool {
        let n = self.count(q);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one that exists already (restore), whatever the limit is now.
    pub(super) fn add(&mut self, q: Quota) {
        *self.count(q) += 1;
    }

    pub(super) fn release(&mut self, q: Quota) {
        let n = self.count(q);
        *n = n.saturating_sub(1);
    }

    /// A NOTIFY of `sub` failed: it is failing (if it was not already). Beyond `max` failing
    /// subscriptions, the one failing longest is returned, to be ended (and forgotten here).
    pub(super) fn failed(&mut self, sub: &SubRef, max: usize) -> Option<SubRef> {
        if !self.failing.contains(sub) {
            self.failing.push(sub.clone());
        }
        (self.failing.len() > max).then(|| self.failing.remove(0))
    }

    /// A NOTIFY of `sub` was delivered, or `sub` ended: it is not failing.
    pub(super) fn recovered(&mut self, sub: &SubRef) {
        self.failing.retain(|s| s != sub);
    }

    fn is_empty(&self) -> bool {
        self.subscriptions == 0 && self.publications == 0 && self.failing.is_empty()
    }
}

/// The limits and every user's use.
pub(super) struct Quotas {
    users: Mutex<HashMap<Arc<str>, Usage>>,
    max_subscriptions: usize,
    max_publications: usize,
    max_failing: usize,
}

impl Quotas {
    pub(super) fn new(cfg: &crate::config::PresenceConfig) -> Quotas {
        Quotas {
            users: Mutex::new(HashMap::new()),
            max_subscriptions: cfg.max_subscriptions_per_user,
            max_publications: cfg.max_publications_per_user,
            max_failing: cfg.max_failing_watchers_per_user,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Usage>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn max(&self, q: Quota) -> usize {
        match q {
            Quota::Subscriptions => self.max_subscriptions,
            Quota::Publications => self.max_publications,
        }
    }

    /// Takes one of `user`'s places, checked and taken in one step.
    pub(super) fn take(&self, user: &str, q: Quota) -> bool {
        let max = self.max(q);
        let mut users = self.lock();
        match users.get_mut(user) {
            Some(u) => u.take(q, max),
            None => {
                let mut u = Usage::default();
                let taken = u.take(q, max);
                if taken {
                    users.insert(user.into(), u);
                }
                taken
            }
        }
    }

    /// Counts one that exists already (restore after a start).
    pub(super) fn add(&self, user: &str, q: Quota) {
        self.lock().entry(user.into()).or_default().add(q);
    }

    pub(super) fn release(&self, user: &str, q: Quota) {
        self.update(user, |u| u.release(q));
    }

    /// See [`Usage::failed`].
    pub(super) fn failed(&self, user: &str, sub: &SubRef) -> Option<SubRef> {
        let max = self.max_failing;
        self.lock().entry(user.into()).or_default().failed(sub, max)
    }

    pub(super) fn recovered(&self, user: &str, sub: &SubRef) {
        self.update(user, |u| u.recovered(sub));
    }

    /// How many of `user`'s places are taken.
    pub(super) fn used(&self, user: &str, q: Quota) -> usize {
        self.lock().get(user).map_or(0, |u| match q {
            Quota::Subscriptions => u.subscriptions,
            Quota::Publications => u.publications,
        })
    }

    /// How many of `user`'s subscriptions are failing.
    pub(super) fn failing(&self, user: &str) -> usize {
        self.lock().get(user).map_or(0, |u| u.failing.len())
    }

    /// Forgets everything (before a restore counts again).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    fn update(&self, user: &str, f: impl FnOnce(&mut Usage)) {
        let mut users = self.lock();
        if let Some(u) = users.get_mut(user) {
            f(u);
            if u.is_empty() {
                users.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::event::Pkg;
    use crate::presence::ResKey;

    fn sub(n: u8) -> SubRef {
        SubRef {
            res: ResKey {
                presentity: "sip:1001@example.com".into(),
                pkg: Pkg::Dialog,
            },
            key: vec![n].into(),
        }
    }

    #[test]
    fn rfc6665_4_2_1_a_user_holds_at_most_its_quota_and_a_release_frees_a_place() {
        let mut u = Usage::default();
        assert!(u.take(Quota::Subscriptions, 2));
        assert!(u.take(Quota::Subscriptions, 2));
        assert!(!u.take(Quota::Subscriptions, 2), "the third is refused");
        assert!(u.take(Quota::Publications, 1), "each quota is its own");
        u.release(Quota::Subscriptions);
        assert!(u.take(Quota::Subscriptions, 2));
        // Restored records count even beyond a limit lowered meanwhile.
        u.add(Quota::Subscriptions);
        assert!(!u.take(Quota::Subscriptions, 2));
    }

    #[test]
    fn rfc6665_4_2_2_beyond_the_cap_the_subscription_failing_longest_is_ended() {
        let mut u = Usage::default();
        assert_eq!(u.failed(&sub(1), 2), None);
        assert_eq!(u.failed(&sub(2), 2), None);
        assert_eq!(u.failed(&sub(1), 2), None, "failing again is still one");
        assert_eq!(u.failed(&sub(3), 2), Some(sub(1)), "the oldest goes");
        u.recovered(&sub(2));
        assert_eq!(
            u.failed(&sub(4), 2),
            None,
            "a delivered NOTIFY frees its place"
        );
        assert_eq!(u.failed(&sub(5), 2), Some(sub(3)));
    }

    #[test]
    fn refusals_name_the_limit_the_user_and_the_key() {
        assert_eq!(
            Quota::Subscriptions.refusal("sip:1001@example.com"),
            "Forbidden: too many subscriptions for sip:1001@example.com (presence.max_subscriptions_per_user)"
        );
        assert!(Quota::Publications
            .refusal("sip:1001@example.com")
            .ends_with("(presence.max_publications_per_user)"));
    }

    #[test]
    fn a_user_with_nothing_left_is_forgotten() {
        let q = Quotas::new(&crate::config::PresenceConfig::default());
        assert!(q.take("a", Quota::Subscriptions));
        assert!(q.failed("a", &sub(1)).is_none());
        q.release("a", Quota::Subscriptions);
        q.recovered("a", &sub(1));
        assert!(q.lock().is_empty());
        assert_eq!(q.used("a", Quota::Subscriptions), 0);
    }
}
