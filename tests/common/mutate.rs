//! Byte-level corruption of SIP messages as proptest strategies, for the parser property tests
//! (a failing case shrinks to fewer, simpler edits) and the storms against a live server (a
//! fixed-seed runner draws a bounded, reproducible batch).

#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// Bytes that mean something to a SIP parser.
pub const INTERESTING: &[u8] = b"\r\n:;,\"<>\\ \t%@?[]/=0\x00\xff\xc3";

/// One corruption of a message; positions are drawn as [`Index`]es, so an edit fits any
/// length.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Flips bit `1` of byte `0`.
    FlipBit(Index, u8),
    /// Sets a byte to any value.
    Set(Index, u8),
    /// Sets a byte to one of [`INTERESTING`].
    SetInteresting(Index, Index),
    /// Inserts one of [`INTERESTING`].
    InsertInteresting(Index, Index),
    /// Removes 1 to 16 bytes.
    Remove(Index, u8),
    /// Cuts the message short.
    Truncate(Index),
    /// Copies up to 40 bytes from one place to another.
    Duplicate(Index, u8, Index),
    /// Inserts a line fold (CRLF and a space).
    Fold(Index),
    /// Upper-cases a byte (header names and tokens are case-insensitive, values often not).
    Upper(Index),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    let i = any::<Index>;
    prop_oneof![
        (i(), 0u8..8).prop_map(|(a, b)| Edit::FlipBit(a, b)),
        (i(), any::<u8>()).prop_map(|(a, b)| Edit::Set(a, b)),
        (i(), i()).prop_map(|(a, b)| Edit::SetInteresting(a, b)),
        (i(), i()).prop_map(|(a, b)| Edit::InsertInteresting(a, b)),
        (i(), 1u8..=16).prop_map(|(a, n)| Edit::Remove(a, n)),
        i().prop_map(Edit::Truncate),
        (i(), 1u8..=40, i()).prop_map(|(a, n, b)| Edit::Duplicate(a, n, b)),
        i().prop_map(Edit::Fold),
        i().prop_map(Edit::Upper),
    ]
}

/// One to `max` edits.
pub fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..=max)
}

/// `base` with `edits` applied in order (an edit of a byte of an empty message does nothing).
pub fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = base.to_vec();
    for e in edits {
        let len = b.len();
        match *e {
            Edit::FlipBit(i, bit) if len > 0 => b[i.index(len)] ^= 1 << bit,
            Edit::Set(i, v) if len > 0 => b[i.index(len)] = v,
            Edit::SetInteresting(i, v) if len > 0 => b[i.index(len)] = *v.get(INTERESTING),
            Edit::InsertInteresting(i, v) => b.insert(i.index(len + 1), *v.get(INTERESTING)),
            Edit::Remove(i, n) if len > 0 => {
                let at = i.index(len);
                let end = (at + usize::from(n)).min(len);
                b.drain(at..end);
            }
            Edit::Truncate(i) => b.truncate(i.index(len + 1)),
            Edit::Duplicate(from, n, to) if len > 0 => {
                let at = from.index(len);
                let chunk: Vec<u8> = b[at..(at + usize::from(n)).min(len)].to_vec();
                let to = to.index(len + 1);
                b.splice(to..to, chunk);
            }
            Edit::Fold(i) => {
                let at = i.index(len + 1);
                b.splice(at..at, b"\r\n ".iter().copied());
            }
            Edit::Upper(i) if len > 0 => {
                let at = i.index(len);
                b[at] = b[at].to_ascii_uppercase();
            }
            _ => {}
        }
    }
    b
}

/// A runner whose values depend only on `seed`: for a batch drawn once and sent to a live
/// server, where a count bounds the work and the same seed replays it.
pub fn fixed_runner(seed: u64) -> TestRunner {
    TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    })
}

/// One value of `strategy` from `runner`.
pub fn draw<S: Strategy>(runner: &mut TestRunner, strategy: &S) -> S::Value {
    strategy
        .new_tree(runner)
        .expect("the strategy rejects nothing")
        .current()
}
