//! `[proxy] max_calls_per_user`: how many calls each authenticated user originates at once.
//!
//! A call counts from the moment its INVITE is authenticated and tracked until the dialog
//! tracker reports it ended (refused, cancelled, timed out, hung up or expired). Only calls
//! a user authenticated with digest count, keyed by the user name the credentials proved:
//! calls from the trusted PBX (or in open mode) belong to nobody and are not counted. The
//! entries are the tracker's calls, so this table is bounded by `dialog.max_calls`.

use crate::dialog::CallKey;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct CallsPerUser {
    /// Who originated each counted call.
    by_call: HashMap<CallKey, String>,
    /// Calls in progress per user (no entry at zero).
    counts: HashMap<String, usize>,
}

impl CallsPerUser {
    /// Calls `user` originates now.
    pub fn count(&self, user: &str) -> usize {
        self.counts.get(user).copied().unwrap_or(0)
    }

    /// Whether `user` may originate one more call under a limit of `max`.
    pub fn admits(&self, user: &str, max: usize) -> bool {
        self.count(user) < max
    }

    /// Call `key` is `user`'s (counted once however often it is noted).
    pub fn add(&mut self, user: &str, key: CallKey) {
        if self.by_call.contains_key(&key) {
            return;
        }
        self.by_call.insert(key, user.to_string());
        *self.counts.entry(user.to_string()).or_default() += 1;
    }

    /// Call `key` ended: it no longer counts (nothing happens for a call never counted).
    pub fn release(&mut self, key: &CallKey) {
        let Some(user) = self.by_call.remove(key) else {
            return;
        };
        if let Some(n) = self.counts.get_mut(&user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&user);
            }
        }
    }

    /// Calls counted, all users together.
    pub fn len(&self) -> usize {
        self.by_call.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_call.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> CallKey {
        CallKey {
            call_id: format!("c{n}"),
            from_tag: "f".into(),
        }
    }

    #[test]
    fn a_user_at_the_limit_is_refused_until_one_of_its_calls_ends_others_are_not() {
        let mut q = CallsPerUser::default();
        for n in 0..3 {
            assert!(q.admits("1001", 3));
            q.add("1001", key(n));
        }
        assert_eq!(q.count("1001"), 3);
        assert!(!q.admits("1001", 3));
        // Another user is counted on its own.
        assert!(q.admits("1002", 3));
        q.add("1002", key(10));
        assert_eq!((q.count("1001"), q.count("1002")), (3, 1));
        // Noting a call twice (a retry with the same Call-ID and tag) counts it once.
        q.add("1001", key(0));
        assert_eq!(q.count("1001"), 3);
        q.release(&key(1));
        assert!(q.admits("1001", 3));
        // Ending a call twice, or one never counted, changes nothing.
        q.release(&key(1));
        q.release(&key(99));
        assert_eq!((q.count("1001"), q.len()), (2, 3));
        for k in [key(0), key(2), key(10)] {
            q.release(&k);
        }
        assert!(q.is_empty());
        assert!(
            q.counts.is_empty(),
            "no entry is left for a user with no call"
        );
    }
}
