//! Tags, Call-IDs, ETags and other ids that must be unique and that nobody may predict.
//!
//! Every value is drawn fresh from a CSPRNG (ChaCha12, `rand`'s `StdRng`) seeded from the
//! operating system's RNG: seeing any number of them tells nothing about the next. Uniqueness
//! comes from their size: 64 random bits for tags and branches (unique per dialog or
//! transaction), 128 for ids that must be unique everywhere (Call-IDs, ETags).

use rand::rngs::{StdRng, SysRng};
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

/// A source of unpredictable ids. Each service holds its own (its own lock).
pub struct Ids {
    rng: Mutex<StdRng>,
}

impl Ids {
    /// Seeds a CSPRNG from the operating system. Fails only when the OS cannot give random
    /// bytes: the server then refuses to start rather than hand out guessable ids.
    pub fn new() -> Result<Ids, getrandom::Error> {
        Ok(Ids {
            rng: Mutex::new(StdRng::try_from_rng(&mut SysRng)?),
        })
    }

    /// A fresh random 64-bit value.
    pub fn next(&self) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_u64()
    }

    /// A To/From tag (RFC 3261 §19.3: at least 32 random bits; we use 64).
    pub fn tag(&self) -> String {
        format!("bl{:016x}", self.next())
    }

    /// 128 random bits in lowercase hex: for Call-IDs and ETags, which must be unique across
    /// space and time, not only within one dialog.
    pub fn unique(&self) -> String {
        let mut bytes = [0u8; 16];
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fill_bytes(&mut bytes);
        hex::encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistical checks that consecutive values share no predictable relation: the old
    /// `counter * constant ^ salt` passed "they differ" but failed every one of these.
    #[test]
    fn consecutive_ids_share_no_predictable_relation() {
        let ids = Ids::new().expect("OS RNG");
        let values: Vec<u64> = (0..4096).map(|_| ids.next()).collect();
        let ceil = |x: f64| x as usize;
        let n = values.len() - 1;
        // No repeated difference or xor between neighbours (a counter-based scheme repeats
        // one of them for every pair).
        let diffs: std::collections::HashSet<u64> =
            values.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        let xors: std::collections::HashSet<u64> = values.windows(2).map(|w| w[1] ^ w[0]).collect();
        assert_eq!(diffs.len(), n, "equal differences between neighbours");
        assert_eq!(xors.len(), n, "equal xors between neighbours");
        // Each bit of a value agrees with the same bit of the previous value about half the
        // time, and each bit is set about half the time (binomial, n = 4095: mean 2047.5,
        // sd 32; 6 sd bounds).
        let (lo, hi) = (ceil(2047.5 - 6.0 * 32.0), ceil(2047.5 + 6.0 * 32.0));
        for bit in 0..64 {
            let agree = values
                .windows(2)
                .filter(|w| (w[0] >> bit) & 1 == (w[1] >> bit) & 1)
                .count();
            assert!((lo..=hi).contains(&agree), "bit {bit} agrees {agree}/{n}");
            let set = values[1..].iter().filter(|v| (*v >> bit) & 1 == 1).count();
            assert!((lo..=hi).contains(&set), "bit {bit} set {set}/{n}");
        }
    }

    #[test]
    fn tags_and_unique_ids_have_their_size_and_do_not_repeat() {
        let ids = Ids::new().expect("OS RNG");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let t = ids.tag();
            assert_eq!(t.len(), 2 + 16, "{t}");
            assert!(crate::sip::text::is_token(&t));
            assert!(seen.insert(t));
            let u = ids.unique();
            assert_eq!(u.len(), 32, "{u}");
            assert!(u.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(u));
        }
        // Two sources seeded separately do not follow each other.
        let other = Ids::new().expect("OS RNG");
        assert_ne!(ids.next(), other.next());
    }
}
