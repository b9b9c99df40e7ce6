//! Stateless Digest nonces and a bounded nonce-count replay guard.
//!
//! A nonce carries its own issue time and a MAC over it, so the registrar
//! can check any nonce it handed out without remembering it; only nonces a
//! phone actually uses take memory, in [`NonceCounts`]. Time always comes in
//! as a parameter (unix seconds): nothing here reads a clock.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How far in the future a nonce's timestamp may be. Nonces only come from
/// this process, so anything beyond small clock adjustments is forged or
/// issued under a different clock.
pub const MAX_FUTURE_SKEW_SECS: u64 = 5;

/// 16 hex timestamp + 16 hex salt + 32 hex MAC.
pub const NONCE_LEN: usize = 64;

/// Binds the MAC to this use, so the same key could safely sign other things.
const MAC_LABEL: &[u8] = b"busylamp digest nonce v1\0";
/// Binds the salt derivation to its use (domain separation from [`MAC_LABEL`]).
const SALT_LABEL: &[u8] = b"busylamp digest nonce salt v1\0";

type HmacSha256 = hmac::Hmac<Sha256>;

/// The secret that signs nonces.
///
/// Besides the key it holds an issue counter, which makes every nonce
/// distinct: with the timestamp alone, two phones challenged in the same
/// second would get the same nonce, and the second one's `nc=00000001` would
/// then be refused as a replay of the first's. The counter itself never
/// leaves: a nonce carries a salt derived from it with the key (HMAC), so one
/// nonce says nothing about the next.
pub struct NonceKey {
    /// HMAC-SHA256 keyed once; each use clones the keyed state.
    mac: HmacSha256,
    seq: AtomicU64,
}

/// What [`NonceKey::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours and within its lifetime.
    Fresh { issued_secs: u64 },
    /// Ours but expired: challenge again with `stale=true` so the phone
    /// retries without asking its user for a password.
    Stale,
    /// Not ours, tampered with, malformed, or from the future.
    Invalid,
}

impl NonceKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        NonceKey {
            mac: HmacSha256::new_from_slice(&bytes).expect("HMAC takes keys of any length"),
            seq: AtomicU64::new(0),
        }
    }

    /// A fresh key from the operating system's CSPRNG. A per-process key
    /// means nonces issued before a restart stop verifying, which only costs
    /// phones one extra challenge.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(NonceKey::new(bytes))
    }

    /// A nonce for a challenge issued at `now_secs`. Lowercase hex only, so
    /// it is safe inside a quoted-string and never needs escaping.
    pub fn issue(&self, now_secs: u64) -> String {
        // Relaxed suffices: the counter only has to hand out distinct values.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let salt = self.salt(seq);
        let mac = self.mac(now_secs, salt);
        let mut nonce = format!("{now_secs:016x}{salt:016x}");
        nonce.push_str(&hex::encode(&mac[..16]));
        nonce
    }

    /// Verifies a nonce this key issued and says whether it is still usable.
    pub fn check(&self, nonce: &str, now_secs: u64, max_age_secs: u64) -> NonceCheck {
        let bytes = nonce.as_bytes();
        // Only the exact lowercase form we issue is accepted: an uppercase
        // spelling would carry the same MAC yet be a different string, and so
        // a different key in NonceCounts, which would defeat replay checks.
        if bytes.len() != NONCE_LEN || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return NonceCheck::Invalid;
        }
        let mut fields = [0u8; NONCE_LEN / 2];
        if hex::decode_to_slice(bytes, &mut fields).is_err() {
            return NonceCheck::Invalid;
        }
        let (issued, rest) = fields.split_at(8);
        let (salt, given) = rest.split_at(8);
        let issued = u64::from_be_bytes(issued.try_into().unwrap_or_default());
        let salt = u64::from_be_bytes(salt.try_into().unwrap_or_default());
        if self
            .mac_state(issued, salt)
            .verify_truncated_left(given)
            .is_err()
        {
            return NonceCheck::Invalid;
        }
        if issued > now_secs.saturating_add(MAX_FUTURE_SKEW_SECS) {
            return NonceCheck::Invalid;
        }
        if now_secs.saturating_sub(issued) > max_age_secs {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh {
            issued_secs: issued,
        }
    }

    /// The salt of the `seq`th nonce: unique per `seq` with overwhelming
    /// probability and, without the key, unrelated to any other salt.
    fn salt(&self, seq: u64) -> u64 {
        let mut mac = self.mac.clone();
        mac.update(SALT_LABEL);
        mac.update(&seq.to_be_bytes());
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_be_bytes(first)
    }

    fn mac_state(&self, issued_secs: u64, salt: u64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(MAC_LABEL);
        mac.update(&issued_secs.to_be_bytes());
        mac.update(&salt.to_be_bytes());
        mac
    }

    fn mac(&self, issued_secs: u64, salt: u64) -> [u8; 32] {
        self.mac_state(issued_secs, salt)
            .finalize()
            .into_bytes()
            .into()
    }
}

impl fmt::Debug for NonceKey {
    // Never print the key: a Debug dump in a log would let anyone mint nonces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceKey")
            .field("key", &"<redacted>")
            .field("issued", &self.seq.load(Ordering::Relaxed))
            .finish()
    }
}

/// Replay guard for Digest nonce counts: remembers, per nonce, the highest
/// `nc` accepted, and accepts a request only if its `nc` is higher.
///
/// Memory is bounded by `capacity`. When full, it forgets the entry issued
/// earliest (expired entries go first anyway, being the earliest). Forgetting
/// must not let a nonce start over at a low `nc`, so every forgotten entry
/// raises a watermark, `forgotten_through`: an untracked nonce at or below it
/// is refused. Entries are ordered by `(issued_secs, nonce)`, and only keys
/// above the watermark are ever inserted, so everything tracked sits above it
/// and everything forgotten sits at or below it. The watermark is one key, so
/// it costs O(1) memory. A refused phone just gets a fresh challenge.
///
/// Each call is O(log n): a hash lookup plus heap operations, with expired
/// entries purged from the front of the heap as time passes.
#[derive(Debug)]
pub struct NonceCounts {
    capacity: usize,
    max_age_secs: u64,
    highest_nc: crate::hashing::FastMap<Arc<str>, u32>,
    by_age: BinaryHeap<Reverse<(u64, Arc<str>)>>,
    forgotten_through: Option<(u64, Arc<str>)>,
}

impl NonceCounts {
    /// `capacity` is raised to 1 if 0: a guard that can track nothing could
    /// only refuse everything. `max_age_secs` should match the age passed to
    /// [`NonceKey::check`].
    pub fn new(capacity: usize, max_age_secs: u64) -> Self {
        let capacity = capacity.max(1);
        NonceCounts {
            capacity,
            max_age_secs,
            // Grows on demand: a large configured bound costs nothing idle.
            highest_nc: crate::hashing::map(),
            by_age: BinaryHeap::new(),
            forgotten_through: None,
        }
    }

    /// Records `nc` for `nonce` (issued at `issued_secs`, as returned by
    /// [`NonceKey::check`]) and says whether the request may proceed: true iff
    /// `nc` is above every `nc` accepted before for this nonce (first use: any
    /// `nc >= 1`), the nonce has not expired, and it was not forgotten.
    pub fn accept(&mut self, nonce: &str, nc: u32, issued_secs: u64, now_secs: u64) -> bool {
        self.purge_expired(now_secs);
        if nc == 0 || self.is_expired(issued_secs, now_secs) {
            return false;
        }
        if let Some(highest) = self.highest_nc.get_mut(nonce) {
            if nc > *highest {
                *highest = nc;
                return true;
            }
            return false;
        }
        if self.is_forgotten(issued_secs, nonce) {
            return false;
        }
        while self.highest_nc.len() >= self.capacity {
            let newcomer_is_oldest = self
                .by_age
                .peek()
                .is_some_and(|Reverse((t, n))| (issued_secs, nonce) < (*t, &**n));
            if newcomer_is_oldest {
                // It is the entry we would evict first, so refuse it outright;
                // recording it keeps it refused if it comes back.
                self.raise_watermark(issued_secs, Arc::from(nonce));
                return false;
            }
            if !self.forget_oldest() {
                break;
            }
        }
        let key: Arc<str> = Arc::from(nonce);
        self.highest_nc.insert(Arc::clone(&key), nc);
        self.by_age.push(Reverse((issued_secs, key)));
        true
    }

    /// Nonces currently tracked; never more than [`capacity`](Self::capacity).
    pub fn len(&self) -> usize {
        self.highest_nc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.highest_nc.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn is_expired(&self, issued_secs: u64, now_secs: u64) -> bool {
        now_secs.saturating_sub(issued_secs) > self.max_age_secs
    }

    fn is_forgotten(&self, issued_secs: u64, nonce: &str) -> bool {
        self.forgotten_through
            .as_ref()
            .is_some_and(|(t, n)| (issued_secs, nonce) <= (*t, &**n))
    }

    fn purge_expired(&mut self, now_secs: u64) {
        while let Some(Reverse((issued, _))) = self.by_age.peek() {
            if !self.is_expired(*issued, now_secs) {
                break;
            }
            self.forget_oldest();
        }
    }

    /// Drops the earliest-issued entry. Raising the watermark even for
    /// expired entries is what keeps them refused if the caller's clock later
    /// steps backwards.
    fn forget_oldest(&mut self) -> bool {
        let Some(Reverse((issued, nonce))) = self.by_age.pop() else {
            return false;
        };
        self.highest_nc.remove(&nonce);
        self.raise_watermark(issued, nonce);
        true
    }

    fn raise_watermark(&mut self, issued_secs: u64, nonce: Arc<str>) {
        let higher = match &self.forgotten_through {
            Some((t, n)) => (issued_secs, &*nonce) > (*t, &**n),
            None => true,
        };
        if higher {
            self.forgotten_through = Some((issued_secs, nonce));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: u64 = 300;
    const T0: u64 = 1_700_000_000;

    fn key() -> NonceKey {
        NonceKey::new([7; 32])
    }

    #[test]
    fn issued_nonce_checks_as_fresh_with_its_issue_time() {
        let key = key();
        let nonce = key.issue(T0);
        assert_eq!(
            key.check(&nonce, T0, MAX_AGE),
            NonceCheck::Fresh { issued_secs: T0 }
        );
        assert_eq!(
            key.check(&nonce, T0 + 10, MAX_AGE),
            NonceCheck::Fresh { issued_secs: T0 }
        );
    }

    #[test]
    fn nonce_is_lowercase_hex_safe_in_a_quoted_string() {
        let nonce = key().issue(u64::MAX);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(nonce.starts_with("ffffffffffffffff"));
    }

    #[test]
    fn nonces_issued_in_the_same_second_differ() {
        let key = key();
        let a = key.issue(T0);
        let b = key.issue(T0);
        assert_ne!(a, b);
        assert!(matches!(
            key.check(&b, T0, MAX_AGE),
            NonceCheck::Fresh { .. }
        ));
    }

    #[test]
    fn tampered_nonce_is_invalid() {
        let key = key();
        let nonce = key.issue(T0);
        for i in 0..nonce.len() {
            let mut bytes = nonce.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let tampered = String::from_utf8(bytes).expect("ASCII stays UTF-8");
            assert_eq!(
                key.check(&tampered, T0, MAX_AGE),
                NonceCheck::Invalid,
                "flipped char {i}"
            );
        }
    }

    #[test]
    fn backdated_nonce_with_forged_timestamp_is_invalid() {
        let key = key();
        let nonce = key.issue(T0 - 1000);
        let forged = format!("{T0:016x}{}", &nonce[16..]);
        assert_eq!(key.check(&forged, T0, MAX_AGE), NonceCheck::Invalid);
    }

    #[test]
    fn nonce_from_another_key_is_invalid() {
        let nonce = NonceKey::new([8; 32]).issue(T0);
        assert_eq!(key().check(&nonce, T0, MAX_AGE), NonceCheck::Invalid);
    }

    #[test]
    fn uppercase_spelling_of_a_valid_nonce_is_invalid() {
        let key = key();
        let nonce = key.issue(T0);
        assert_eq!(
            key.check(&nonce.to_uppercase(), T0, MAX_AGE),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn malformed_nonces_are_invalid() {
        let key = key();
        let nonce = key.issue(T0);
        let cases = [
            String::new(),
            nonce[..NONCE_LEN - 1].to_owned(),
            format!("{nonce}0"),
            format!("{}g", &nonce[..NONCE_LEN - 1]),
            format!("{} ", &nonce[..NONCE_LEN - 1]),
            "é".repeat(NONCE_LEN / 2),
            "921a55467c54fdd626a9077a1c7f6358".to_owned(),
        ];
        for case in cases {
            assert_eq!(
                key.check(&case, T0, MAX_AGE),
                NonceCheck::Invalid,
                "{case:?}"
            );
        }
    }

    #[test]
    fn old_nonce_is_stale_after_max_age() {
        let key = key();
        let nonce = key.issue(T0);
        assert_eq!(
            key.check(&nonce, T0 + MAX_AGE, MAX_AGE),
            NonceCheck::Fresh { issued_secs: T0 }
        );
        assert_eq!(
            key.check(&nonce, T0 + MAX_AGE + 1, MAX_AGE),
            NonceCheck::Stale
        );
    }

    #[test]
    fn nonce_from_the_future_is_invalid_beyond_skew() {
        let key = key();
        let near = key.issue(T0 + MAX_FUTURE_SKEW_SECS);
        assert_eq!(
            key.check(&near, T0, MAX_AGE),
            NonceCheck::Fresh {
                issued_secs: T0 + MAX_FUTURE_SKEW_SECS
            }
        );
        let far = key.issue(T0 + MAX_FUTURE_SKEW_SECS + 1);
        assert_eq!(key.check(&far, T0, MAX_AGE), NonceCheck::Invalid);
    }

    #[test]
    fn random_keys_differ_and_work() {
        let a = NonceKey::random().expect("OS RNG readable");
        let b = NonceKey::random().expect("OS RNG readable");
        assert_ne!(a.issue(T0), b.issue(T0));
        let nonce = a.issue(T0);
        assert!(matches!(
            a.check(&nonce, T0, MAX_AGE),
            NonceCheck::Fresh { .. }
        ));
        assert_eq!(b.check(&nonce, T0, MAX_AGE), NonceCheck::Invalid);
    }

    #[test]
    fn debug_output_hides_the_key() {
        let shown = format!("{:?}", NonceKey::new([0xab; 32]));
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("171"));
        assert!(!shown.to_lowercase().contains("ab, ab"));
    }

    #[test]
    fn first_use_accepts_any_positive_nc_but_not_zero() {
        let mut counts = NonceCounts::new(10, MAX_AGE);
        assert!(!counts.accept("a", 0, T0, T0));
        assert!(counts.accept("a", 1, T0, T0));
        assert!(counts.accept("b", 42, T0, T0));
    }

    #[test]
    fn same_nc_twice_is_refused() {
        let mut counts = NonceCounts::new(10, MAX_AGE);
        assert!(counts.accept("a", 1, T0, T0));
        assert!(!counts.accept("a", 1, T0, T0 + 1));
    }

    #[test]
    fn lower_nc_is_refused_and_higher_accepted() {
        let mut counts = NonceCounts::new(10, MAX_AGE);
        assert!(counts.accept("a", 5, T0, T0));
        assert!(!counts.accept("a", 4, T0, T0));
        assert!(!counts.accept("a", 5, T0, T0));
        assert!(counts.accept("a", 6, T0, T0));
        assert!(counts.accept("a", 9, T0, T0));
        assert!(!counts.accept("a", 7, T0, T0));
        assert!(counts.accept("a", u32::MAX, T0, T0));
        assert!(!counts.accept("a", u32::MAX, T0, T0));
    }

    #[test]
    fn counts_are_per_nonce() {
        let mut counts = NonceCounts::new(10, MAX_AGE);
        assert!(counts.accept("a", 3, T0, T0));
        assert!(counts.accept("b", 1, T0, T0));
        assert!(counts.accept("a", 4, T0, T0));
        assert!(counts.accept("b", 2, T0, T0));
    }

    #[test]
    fn expired_nonce_is_refused_and_purged() {
        let mut counts = NonceCounts::new(10, MAX_AGE);
        assert!(counts.accept("a", 1, T0, T0));
        assert!(!counts.accept("a", 2, T0, T0 + MAX_AGE + 1));
        assert!(counts.is_empty());
        assert!(!counts.accept("old", 1, T0, T0 + MAX_AGE + 1));
    }

    #[test]
    fn purged_nonce_stays_refused_if_the_clock_steps_back() {
        let mut counts = NonceCounts::new(10, MAX_AGE);
        assert!(counts.accept("a", 1, T0, T0));
        assert!(counts.accept("b", 1, T0 + MAX_AGE, T0 + MAX_AGE + 1));
        assert_eq!(counts.len(), 1);
        assert!(!counts.accept("a", 1, T0, T0));
    }

    #[test]
    fn expiry_frees_room_without_refusing_fresh_nonces() {
        let mut counts = NonceCounts::new(2, MAX_AGE);
        assert!(counts.accept("a", 1, T0, T0));
        assert!(counts.accept("b", 1, T0, T0));
        let later = T0 + MAX_AGE + 1;
        assert!(counts.accept("c", 1, later, later));
        assert!(counts.accept("d", 1, later, later));
        assert_eq!(counts.len(), 2);
        assert!(counts.accept("c", 2, later, later));
    }

    #[test]
    fn capacity_bound_holds_under_100k_distinct_nonces() {
        let capacity = 1000;
        let mut counts = NonceCounts::new(capacity, MAX_AGE);
        let key = key();
        let mut issued = Vec::new();
        for i in 0..100_000u64 {
            // Many nonces per second, as under a registration storm.
            let now = T0 + i / 1000;
            let nonce = key.issue(now);
            assert!(counts.accept(&nonce, 1, now, now), "nonce {i}");
            assert!(counts.len() <= capacity, "len {} at {i}", counts.len());
            if i % 10_000 == 0 {
                issued.push((nonce, now));
            }
        }
        assert_eq!(counts.len(), capacity);
        let now = T0 + 100;
        for (nonce, at) in &issued {
            // Evicted long ago: must not be treated as a first use again.
            assert!(!counts.accept(nonce, 1, *at, now), "replayed {nonce}");
            assert!(!counts.accept(nonce, 2, *at, now), "advanced {nonce}");
        }
        assert!(counts.len() <= capacity);
    }

    #[test]
    fn nonce_evicted_for_capacity_is_refused_even_with_a_higher_nc() {
        let mut counts = NonceCounts::new(2, MAX_AGE);
        assert!(counts.accept("a", 1, T0, T0));
        assert!(counts.accept("b", 1, T0 + 1, T0 + 1));
        assert!(counts.accept("c", 1, T0 + 2, T0 + 2));
        assert_eq!(counts.len(), 2);
        assert!(!counts.accept("a", 1, T0, T0 + 3));
        assert!(!counts.accept("a", 2, T0, T0 + 3));
        assert!(counts.accept("b", 2, T0 + 1, T0 + 3));
        assert!(counts.accept("c", 2, T0 + 2, T0 + 3));
    }

    #[test]
    fn newcomer_older_than_everything_tracked_is_refused_when_full() {
        let mut counts = NonceCounts::new(2, MAX_AGE);
        assert!(counts.accept("b", 1, T0 + 10, T0 + 10));
        assert!(counts.accept("c", 1, T0 + 11, T0 + 11));
        assert!(!counts.accept("a", 1, T0 + 5, T0 + 12));
        assert!(counts.accept("b", 2, T0 + 10, T0 + 12));
        assert!(counts.accept("c", 2, T0 + 11, T0 + 12));
        assert!(!counts.accept("a", 1, T0 + 5, T0 + 12));
    }

    #[test]
    fn zero_capacity_is_raised_to_one() {
        let mut counts = NonceCounts::new(0, MAX_AGE);
        assert_eq!(counts.capacity(), 1);
        assert!(counts.accept("a", 1, T0, T0));
        assert!(!counts.accept("a", 1, T0, T0));
        assert!(counts.accept("b", 1, T0 + 1, T0 + 1));
        assert_eq!(counts.len(), 1);
    }

    #[test]
    fn works_with_checked_nonces_end_to_end() {
        let key = key();
        let mut counts = NonceCounts::new(16, MAX_AGE);
        let nonce = key.issue(T0);
        let NonceCheck::Fresh { issued_secs } = key.check(&nonce, T0 + 1, MAX_AGE) else {
            panic!("fresh nonce did not check as fresh");
        };
        assert!(counts.accept(&nonce, 1, issued_secs, T0 + 1));
        assert!(!counts.accept(&nonce, 1, issued_secs, T0 + 2));
        assert!(counts.accept(&nonce, 2, issued_secs, T0 + 2));
    }
}
