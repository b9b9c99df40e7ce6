//! Our Via headers and their branches (RFC 3261 §8.1.1.7, §16.6 item 8, §16.11): the one
//! place they are minted and recognised. Every request we send (a proxied branch, a relayed
//! ACK, a NOTIFY, the presence client's, a keepalive probe) gets its branch here, and a
//! response that matched no transaction is checked here for whether we minted its branch.
//!
//! The unforgeable part comes from [`mint`] alone, under the branch secret drawn at start-up:
//! swapping what that secret is and how `mint`/[`is_minted`] compute the tag changes every
//! branch we make.

use crate::sip::header::BRANCH_MAGIC;
use crate::transport::Proto;
use std::hash::{DefaultHasher, Hash, Hasher};

/// What our branches are minted under.
pub type BranchSecret = u64;

/// A fresh branch (magic cookie included) unique under `secret` for each `counter`: a tag
/// only the holder of `secret` can compute, then the counter.
pub fn mint(secret: &BranchSecret, counter: u64) -> String {
    crate::transaction::branch_from(counter, *secret)
}

/// Whether `tail` (a branch after its magic cookie and any prefix of ours) came from
/// [`mint`] under `secret`.
pub fn is_minted(secret: &BranchSecret, tail: &str) -> bool {
    crate::transaction::is_branch_from(tail, *secret)
}

/// Where a forwarded request's minted part starts: after the magic cookie, `L` and the
/// 8-digit loop hash (RFC 3261 §16.6 item 8).
const FORWARDED_TAIL: usize = BRANCH_MAGIC.len() + 1 + 8;

/// The branch of a request the proxy forwards: `z9hG4bK`, `L`, the loop hash of the request
/// as received, then a minted tail.
pub fn forwarded(secret: &BranchSecret, loop_hash: &str, counter: u64) -> String {
    let minted = mint(secret, counter);
    format!(
        "{BRANCH_MAGIC}L{loop_hash}{}",
        &minted[BRANCH_MAGIC.len()..]
    )
}

/// The branch of an ACK for a 2xx the proxy relays statelessly (RFC 3261 §16.11): the same
/// incoming branch always gives the same one (a retransmitted ACK is the same transaction
/// downstream), minted like any other so it cannot be told from a stateful branch.
pub fn relayed_ack(secret: &BranchSecret, loop_hash: &str, incoming: &str) -> String {
    // Not a secret: only a stable counter for `mint` within this process.
    let mut h = DefaultHasher::new();
    incoming.hash(&mut h);
    forwarded(secret, loop_hash, h.finish())
}

/// Whether `branch` starts the way every [`forwarded`] branch does (`z9hG4bKL`), whoever
/// minted it.
pub fn has_forwarded_prefix(branch: &str) -> bool {
    branch
        .strip_prefix(BRANCH_MAGIC)
        .is_some_and(|rest| rest.starts_with('L'))
}

/// The loop hash in a branch of the form [`forwarded`] makes (whoever minted it).
pub fn loop_hash_of(branch: &str) -> Option<&str> {
    branch
        .strip_prefix(BRANCH_MAGIC)?
        .strip_prefix('L')?
        .get(..8)
}

/// Whether `branch` has the form of one [`forwarded`] made, with a tail minted under
/// `secret` (a response to it may be relayed statelessly).
pub fn is_forwarded(secret: &BranchSecret, branch: &str) -> bool {
    loop_hash_of(branch).is_some()
        && branch
            .get(FORWARDED_TAIL..)
            .is_some_and(|tail| is_minted(secret, tail))
}

/// A top Via of ours (with `rport`, RFC 3581) for a request leaving over `proto`.
pub fn via(proto: Proto, sent_by: &str, branch: &str) -> String {
    format!(
        "SIP/2.0/{} {sent_by};branch={branch};rport",
        proto.via_name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3261_16_6_forwarded_branches_carry_the_loop_hash_and_a_minted_tail() {
        let b = forwarded(&42, "0badcafe", 7);
        assert!(b.starts_with("z9hG4bKL0badcafe"), "{b}");
        assert!(is_forwarded(&42, &b));
        assert!(!is_forwarded(&43, &b), "another secret did not mint it");
        assert_ne!(b, forwarded(&42, "0badcafe", 8));
        // A fresh branch of ours (no loop hash) is not a forwarded one.
        assert!(!is_forwarded(&42, &mint(&42, 7)));
        assert!(!is_forwarded(&42, "z9hG4bKL0badcafe"));
        assert!(!is_forwarded(&42, "z9hG4bK"));
    }

    #[test]
    fn rfc3261_16_11_a_retransmitted_ack_gets_the_same_branch() {
        let a = relayed_ack(&42, "0badcafe", "z9hG4bKcaller1");
        assert_eq!(a, relayed_ack(&42, "0badcafe", "z9hG4bKcaller1"));
        assert_ne!(a, relayed_ack(&42, "0badcafe", "z9hG4bKcaller2"));
        assert!(is_forwarded(&42, &a));
    }

    #[test]
    fn rfc3581_our_via_asks_for_rport() {
        assert_eq!(
            via(Proto::Tcp, "192.0.2.10:5060", "z9hG4bKx"),
            "SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKx;rport"
        );
    }
}
