//! Bindings per user across all of the user's AORs (`registrar.max_bindings_per_user`).
//!
//! RFC 3261 §10.3 counts bindings per AOR. Aliases, our addresses, `sips:` and the default
//! port fold into one canonical AOR ([`crate::domain::Domains::aor`]), but every other port
//! of `sip:USER@domain` is an AOR of its own: without a count across them one user could fill
//! `registrar.max_aors` for everybody. The user is the AOR's user part (unescaped, as in the
//! AOR key): for a digest-authenticated REGISTER that is the authenticated user (the
//! registrar refuses any other user part), for a trusted or open-mode one it is the user
//! part the request named.

use super::bindings::RegError;
use crate::hashing::FastMap;

pub use crate::domain::user_of_aor;

/// Live bindings per user. Users with none are not kept, so the map is bounded by the
/// bindings themselves.
#[derive(Debug, Default)]
pub struct PerUser {
    counts: FastMap<String, usize>,
}

impl PerUser {
    pub fn count(&self, user: &str) -> usize {
        self.counts.get(user).copied().unwrap_or(0)
    }

    /// One AOR of `user` goes from `before` to `after` bindings, if the user stays within
    /// `max`. Growth beyond it is refused; a change that does not grow (a refresh, a removal,
    /// or a user already over a lowered limit replacing a binding) always passes.
    pub fn admit(
        &mut self,
        user: &str,
        before: usize,
        after: usize,
        max: usize,
    ) -> Result<(), RegError> {
        if after > before && self.count(user).saturating_sub(before) + after > max {
            return Err(RegError::TooManyUserBindings(max));
        }
        self.set(user, before, after);
        Ok(())
    }

    /// One AOR of `user` went from `before` to `after` bindings (expiry, load, or undoing an
    /// [`PerUser::admit`] whose write was refused).
    pub fn set(&mut self, user: &str, before: usize, after: usize) {
        let now = self.count(user).saturating_sub(before) + after;
        if now == 0 {
            self.counts.remove(user);
        } else if let Some(c) = self.counts.get_mut(user) {
            *c = now;
        } else {
            self.counts.insert(user.to_string(), now);
        }
    }

    /// Users with at least one binding.
    pub fn users(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3261_10_3_every_aor_variant_of_a_user_counts_for_that_user() {
        for aor in [
            "sip:1001@example.test",
            "sip:1001@example.test:5061",
            "sips:1001@example.test",
            "sip:1001@192.0.2.10:7",
            "sip:1001@[2001:db8::1]:5060",
        ] {
            assert_eq!(user_of_aor(aor), "1001", "{aor}");
        }
        // An escaped @ in the user part stays in the user (the AOR key holds it unescaped).
        assert_eq!(user_of_aor("sip:a@b@example.test"), "a@b");
        assert_eq!(user_of_aor("sip:example.test"), "");
    }

    #[test]
    fn growth_beyond_the_limit_is_refused_across_aors() {
        let mut q = PerUser::default();
        for _ in 0..3 {
            q.admit("1001", 0, 1, 4).unwrap();
        }
        // A fourth AOR with two bindings would make five.
        assert_eq!(
            q.admit("1001", 0, 2, 4),
            Err(RegError::TooManyUserBindings(4))
        );
        assert_eq!(q.count("1001"), 3, "a refused change counts nothing");
        q.admit("1001", 0, 1, 4).unwrap();
        assert_eq!(
            q.admit("1001", 0, 1, 4),
            Err(RegError::TooManyUserBindings(4))
        );
        // Another user is not affected.
        q.admit("1002", 0, 1, 4).unwrap();
        assert_eq!(q.count("1002"), 1);
    }

    #[test]
    fn refreshes_and_removals_pass_at_the_limit_and_free_room() {
        let mut q = PerUser::default();
        q.admit("1001", 0, 2, 2).unwrap();
        // A refresh of both: no growth.
        q.admit("1001", 2, 2, 2).unwrap();
        // An AOR whose expired binding is swept while a new one is added: no growth either.
        q.admit("1001", 2, 2, 2).unwrap();
        q.admit("1001", 2, 1, 2).unwrap();
        assert_eq!(q.count("1001"), 1);
        q.admit("1001", 0, 1, 2).unwrap();
        // Expiry takes everything: the user is forgotten.
        q.set("1001", 1, 0);
        q.set("1001", 1, 0);
        assert_eq!((q.count("1001"), q.users()), (0, 0));
    }

    #[test]
    fn a_limit_lowered_across_a_restart_refuses_growth_but_keeps_refreshes() {
        let mut q = PerUser::default();
        // Loaded from disk: 5 bindings, the limit is now 3.
        q.set("1001", 0, 5);
        q.admit("1001", 5, 5, 3).unwrap();
        assert!(q.admit("1001", 0, 1, 3).is_err());
        q.admit("1001", 5, 4, 3).unwrap();
        assert_eq!(q.count("1001"), 4);
    }
}
