//! The project's one deadline service: a set of keyed deadlines, ordered by time.
//!
//! Pure data structure, no clock: time comes in as [`Instant`] arguments. The transaction layer
//! keys it by `(transaction, timer)`, the registrar by binding, the presence service by
//! subscription. An async shell sleeps until [`Deadlines::next`] and then calls
//! [`Deadlines::pop_due`] with the current time.
//!
//! Every operation is O(log n): a `BTreeMap` ordered by `(instant, sequence)` gives the order,
//! a `HashMap` from key to its slot gives replacement and cancellation. The sequence number
//! makes equal instants come out in the order they were scheduled.

use crate::hashing::{shrink_after_burst, FastMap};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Deadlines<K: Eq + Hash + Clone> {
    by_time: BTreeMap<(Instant, u64), K>,
    by_key: FastMap<K, (Instant, u64)>,
    seq: u64,
}

impl<K: Eq + Hash + Clone> Default for Deadlines<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> Deadlines<K> {
    pub fn new() -> Self {
        Deadlines {
            by_time: BTreeMap::new(),
            by_key: crate::hashing::map(),
            seq: 0,
        }
    }

    /// Sets the deadline of `key` to `at`, replacing any deadline it already had (the replaced
    /// one counts as newly scheduled for the ordering of equal instants).
    pub fn schedule(&mut self, key: K, at: Instant) {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        if let Some(old) = self.by_key.insert(key.clone(), (at, seq)) {
            self.by_time.remove(&old);
        }
        self.by_time.insert((at, seq), key);
    }

    /// Removes the deadline of `key`; `true` when it had one.
    pub fn cancel(&mut self, key: &K) -> bool {
        match self.by_key.remove(key) {
            Some(slot) => {
                self.by_time.remove(&slot);
                shrink_after_burst(&mut self.by_key);
                true
            }
            None => false,
        }
    }

    /// When `key` is due, if it is scheduled.
    pub fn get(&self, key: &K) -> Option<Instant> {
        self.by_key.get(key).map(|(at, _)| *at)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns every key whose deadline is at or before `now`, earliest first;
    /// equal instants in scheduling order.
    pub fn pop_due(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.by_key.remove(&key);
            out.push(key);
        }
        shrink_after_burst(&mut self.by_key);
        out
    }

    /// Keys with their deadlines, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, Instant)> {
        self.by_time.iter().map(|((at, _), k)| (k, *at))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iter_walks_in_deadline_order() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        d.schedule("b", t0 + std::time::Duration::from_secs(2));
        d.schedule("a", t0 + std::time::Duration::from_secs(1));
        d.schedule("c", t0 + std::time::Duration::from_secs(3));
        let keys: Vec<&str> = d.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
    }
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn empty_has_no_next_and_pops_nothing() {
        let mut d: Deadlines<u32> = Deadlines::new();
        assert!(d.is_empty());
        assert_eq!(d.next(), None);
        assert!(d.pop_due(Instant::now()).is_empty());
        assert!(!d.cancel(&1));
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        d.schedule("c", t0 + ms(30));
        d.schedule("a", t0 + ms(10));
        d.schedule("b", t0 + ms(20));
        assert_eq!(d.len(), 3);
        assert_eq!(d.next(), Some(t0 + ms(10)));
        assert!(d.pop_due(t0 + ms(9)).is_empty());
        assert_eq!(d.pop_due(t0 + ms(20)), vec!["a", "b"]);
        assert_eq!(d.next(), Some(t0 + ms(30)));
        assert_eq!(d.pop_due(t0 + ms(100)), vec!["c"]);
        assert!(d.is_empty());
        assert_eq!(d.next(), None);
    }

    #[test]
    fn equal_instants_come_out_in_scheduling_order() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        for k in [5, 3, 9, 1, 7] {
            d.schedule(k, t0);
        }
        assert_eq!(d.pop_due(t0), vec![5, 3, 9, 1, 7]);
    }

    #[test]
    fn schedule_replaces_the_previous_deadline_of_a_key() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        d.schedule(1, t0 + ms(10));
        d.schedule(2, t0 + ms(20));
        d.schedule(1, t0 + ms(30));
        assert_eq!(d.len(), 2);
        assert_eq!(d.get(&1), Some(t0 + ms(30)));
        assert_eq!(d.pop_due(t0 + ms(25)), vec![2]);
        assert_eq!(d.pop_due(t0 + ms(30)), vec![1]);
        // Rescheduling earlier works too.
        d.schedule(3, t0 + ms(50));
        d.schedule(3, t0 + ms(5));
        assert_eq!(d.next(), Some(t0 + ms(5)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn cancel_removes_only_that_key() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        d.schedule("x", t0);
        d.schedule("y", t0 + ms(1));
        assert!(d.cancel(&"x"));
        assert!(!d.cancel(&"x"));
        assert!(!d.contains(&"x"));
        assert_eq!(d.next(), Some(t0 + ms(1)));
        assert_eq!(d.pop_due(t0 + ms(1)), vec!["y"]);
        assert!(d.is_empty());
    }

    #[test]
    fn many_keys_stay_consistent() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        for i in 0..1000u64 {
            d.schedule(i, t0 + ms((i * 7919) % 1000));
        }
        for i in (0..1000u64).step_by(2) {
            assert!(d.cancel(&i));
        }
        assert_eq!(d.len(), 500);
        let popped = d.pop_due(t0 + ms(1000));
        assert_eq!(popped.len(), 500);
        let times: Vec<_> = popped.iter().map(|i| (i * 7919) % 1000).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(popped.iter().all(|i| i % 2 == 1));
        assert!(d.is_empty());
    }

    #[test]
    fn a_drained_burst_gives_back_its_capacity() {
        let mut d = Deadlines::new();
        let t = Instant::now();
        for i in 0..20_000u32 {
            d.schedule(i, t);
        }
        let grown = d.by_key.capacity();
        assert!(grown >= 20_000);
        for i in 0..19_990u32 {
            d.cancel(&i);
        }
        assert!(d.by_key.capacity() < grown / 4, "{}", d.by_key.capacity());
        assert_eq!(d.len(), 10);
        assert_eq!(d.pop_due(t).len(), 10);
        // Small tables keep their capacity: not worth reallocating.
        let mut small: std::collections::HashMap<u32, ()> = (0..100).map(|i| (i, ())).collect();
        small.retain(|&i, _| i < 2);
        let cap = small.capacity();
        shrink_after_burst(&mut small);
        assert_eq!(small.capacity(), cap);
    }
}
