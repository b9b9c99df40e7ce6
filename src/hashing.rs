//! The hasher of the hot tables whose keys come from the network (transactions, bindings,
//! nonces): foldhash, seeded from the OS random number generator.
//!
//! Why not std's SipHash: a REGISTER storm hashes transaction keys, AORs and nonces several
//! times per message, and foldhash hashes a short key in a few multiplications. Measured
//! (tests/bench/instructions.sh): ~2,400 fewer instructions per registration (~1 %); most of
//! the SipHash left in a profile is redb's own tables (page cache, uncommitted pages) in the
//! store's writer thread.
//!
//! HashDoS: the keys are chosen by whoever sends us packets (branches, Call-IDs, AORs). A
//! flood of keys crafted to collide needs the hash's secret. foldhash mixes a secret seed
//! into every step; we take that seed from the OS RNG once per process ([`shared_seed`]),
//! not foldhash's default (addresses and the time), and give every table its own per-table
//! seed from the OS RNG as well, so one table's collisions do not carry to another or to the
//! next start. foldhash says itself that it resists "very simple attacks" and not an
//! attacker who can study hash outputs; no table here exposes its order or its hashes on
//! the wire, and each one is bounded (transactions, nonces, bindings per user), so the worst
//! a successful attacker gets is slower lookups in a table of bounded size.

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;
use std::sync::OnceLock;

/// A `HashMap` with the keyed fast hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, Keyed>;

/// Builds the keyed fast hasher: a per-process secret and a per-table secret, both from the
/// OS RNG.
#[derive(Clone, Debug)]
pub struct Keyed(SeedableRandomState);

impl Default for Keyed {
    fn default() -> Self {
        Keyed(SeedableRandomState::with_seed(random_u64(), shared_seed()))
    }
}

impl std::hash::BuildHasher for Keyed {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// An empty [`FastMap`].
pub fn map<K, V>() -> FastMap<K, V> {
    FastMap::with_hasher(Keyed::default())
}

/// The per-process secret, from the OS RNG on first use.
fn shared_seed() -> &'static SharedSeed {
    static SEED: OnceLock<SharedSeed> = OnceLock::new();
    SEED.get_or_init(|| SharedSeed::from_u64(random_u64()))
}

/// A random number from the OS; should the OS refuse one (the server needs it at start for
/// its keys and would not have started), foldhash's own per-table seed.
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hasher};
        foldhash::fast::RandomState::default()
            .build_hasher()
            .finish()
    })
}

/// Hashes `v` with the process's keyed hasher (a fixed key for the process's lifetime): for
/// picking a lock shard, and for keys that carry their hash (transaction keys).
pub fn hash_one<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
    use std::hash::BuildHasher;
    static KEYED: OnceLock<Keyed> = OnceLock::new();
    KEYED.get_or_init(Keyed::default).hash_one(v)
}

/// A hash that is the same in every process, for picking one of a fixed number of lock
/// shards: the shard of a key does not depend on the run (as with std's `DefaultHasher`
/// before), and a crafted set of keys on one shard costs lock contention, not a degraded
/// table (each shard's table is a [`FastMap`]).
pub fn fixed_hash<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(v)
}

/// Below this capacity a map keeps what it has: small tables are not worth reallocating.
const SHRINK_ABOVE: usize = 256;

/// Gives back most of a map's spare capacity once a burst has drained: a hash table never
/// shrinks by itself, so 10,000 SUBSCRIBEs in two seconds would leave the transaction and
/// timer tables sized for 10,000 (hundreds of bytes per subscription, resident for good).
/// Shrinks to twice the length when under a quarter is used: the next burst regrows it, and
/// a shrink follows at least `capacity / 4` removals, so its cost is amortised O(1).
pub fn shrink_after_burst<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<K, V, S>,
) {
    let cap = map.capacity();
    if cap > SHRINK_ABOVE && map.len() < cap / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn equal_keys_hash_equal_and_tables_work() {
        let mut m: FastMap<String, u32> = map();
        m.insert("sip:1001@example.test".into(), 1);
        m.insert("sip:1002@example.test".into(), 2);
        assert_eq!(m.get("sip:1001@example.test"), Some(&1));
        assert_eq!(m.get("sip:1002@example.test"), Some(&2));
        assert_eq!(hash_one("z9hG4bK1"), hash_one("z9hG4bK1"));
        assert_ne!(hash_one("z9hG4bK1"), hash_one("z9hG4bK2"));
        assert_eq!(
            fixed_hash("sip:1001@example.test"),
            fixed_hash("sip:1001@example.test")
        );
    }

    #[test]
    fn every_table_has_its_own_secret() {
        // Two tables hash the same key differently (per-table seeds from the OS RNG), so a
        // set of keys crafted to collide in one does not collide in another.
        let (a, b) = (Keyed::default(), Keyed::default());
        let differ = (0..8)
            .filter(|i| a.hash_one(format!("branch{i}")) != b.hash_one(format!("branch{i}")))
            .count();
        assert_eq!(differ, 8);
    }
}
