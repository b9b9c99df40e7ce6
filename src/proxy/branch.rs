//! Our Via headers and their branches (RFC 3261 §8.1.1.7, §16.6 item 8, §16.11): the one
//! place they are minted and recognised. Every request we send (a proxied branch, a relayed
//! ACK, a NOTIFY, the presence client's, a keepalive probe) gets its branch here, and a
//! response that matched no transaction is checked here for whether we minted its branch.
//!
//! The unforgeable part is a MAC under the [`BranchKey`](crate::transaction::BranchKey)
//! (HMAC-SHA256, 32 bytes from the OS RNG, kept in `data_dir/branch.key`). A forwarded
//! request's tag also covers the hop its responses go back to, so a real branch seen on one
//! call cannot aim a forged 2xx anywhere else; a relayed ACK's branch is a keyed derivation
//! that is never a valid forwarded branch.

use crate::sip::header::BRANCH_MAGIC;
use crate::sip::Via;
use crate::transport::Proto;

/// What our branches are minted under.
pub type BranchSecret = crate::transaction::BranchKey;

/// A fresh branch (magic cookie included) for a request of ours: a tag only the holder of
/// `secret` can compute over the random `unique`.
pub fn mint(secret: &BranchSecret, unique: u64) -> String {
    secret.mint(unique)
}

/// Where a forwarded request's minted part starts: after the magic cookie, `L` and the
/// 8-digit loop hash (RFC 3261 §16.6 item 8).
const FORWARDED_TAIL: usize = BRANCH_MAGIC.len() + 1 + 8;

/// Where responses to a request go back (`response_addr` of the Via below ours), the hop a
/// forwarded branch is bound to.
pub fn back_hop(below: Option<&Via>) -> String {
    below
        .and_then(super::response_addr)
        .map(|(proto, addr)| format!("{}/{addr}", proto.via_name()))
        .unwrap_or_default()
}

/// The branch of a request the proxy forwards: `z9hG4bK`, `L`, the loop hash of the request
/// as received, then a tail minted for `unique` and the hop `back` ([`back_hop`] of the
/// request's top Via as received).
pub fn forwarded(secret: &BranchSecret, loop_hash: &str, unique: u64, back: &str) -> String {
    format!(
        "{BRANCH_MAGIC}L{loop_hash}{}",
        secret.mint_tail(unique, back.as_bytes())
    )
}

/// The branch of an ACK for a 2xx the proxy relays statelessly (RFC 3261 §16.11): the same
/// incoming branch always gives the same one (a retransmitted ACK is the same transaction
/// downstream). A keyed derivation of the incoming branch: it reveals nothing of the key and
/// is never accepted by [`is_forwarded`] (no response answers an ACK).
pub fn relayed_ack(secret: &BranchSecret, loop_hash: &str, incoming: &str) -> String {
    format!(
        "{BRANCH_MAGIC}L{loop_hash}{}",
        secret.derive(incoming.as_bytes())
    )
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
/// `secret` for the hop `back` (a response to it may be relayed statelessly).
pub fn is_forwarded(secret: &BranchSecret, branch: &str, back: &str) -> bool {
    loop_hash_of(branch).is_some()
        && branch
            .get(FORWARDED_TAIL..)
            .is_some_and(|tail| secret.is_ours(tail, back.as_bytes()))
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

    fn key(b: u8) -> BranchSecret {
        BranchSecret::new([b; 32])
    }

    const HOP: &str = "UDP/192.0.2.7:5060";

    #[test]
    fn rfc3261_16_6_forwarded_branches_carry_the_loop_hash_and_a_minted_tail() {
        let b = forwarded(&key(42), "0badcafe", 7, HOP);
        assert!(b.starts_with("z9hG4bKL0badcafe"), "{b}");
        assert!(is_forwarded(&key(42), &b, HOP));
        assert!(
            !is_forwarded(&key(43), &b, HOP),
            "another key did not mint it"
        );
        assert!(
            !is_forwarded(&key(42), &b, "UDP/192.0.2.66:5060"),
            "another hop"
        );
        assert_ne!(b, forwarded(&key(42), "0badcafe", 8, HOP));
        // A fresh branch of ours (no loop hash) is not a forwarded one.
        assert!(!is_forwarded(&key(42), &mint(&key(42), 7), ""));
        assert!(!is_forwarded(&key(42), "z9hG4bKL0badcafe", HOP));
        assert!(!is_forwarded(&key(42), "z9hG4bK", HOP));
    }

    #[test]
    fn rfc3261_16_11_a_retransmitted_ack_gets_the_same_branch_which_is_no_ticket() {
        let a = relayed_ack(&key(42), "0badcafe", "z9hG4bKcaller1");
        assert_eq!(a, relayed_ack(&key(42), "0badcafe", "z9hG4bKcaller1"));
        assert_ne!(a, relayed_ack(&key(42), "0badcafe", "z9hG4bKcaller2"));
        assert_ne!(a, relayed_ack(&key(43), "0badcafe", "z9hG4bKcaller1"));
        // A response carrying it is never relayed, whatever Via is below.
        for back in ["", HOP] {
            assert!(!is_forwarded(&key(42), &a, back));
        }
    }

    #[test]
    fn rfc3581_our_via_asks_for_rport() {
        assert_eq!(
            via(Proto::Tcp, "192.0.2.10:5060", "z9hG4bKx"),
            "SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKx;rport"
        );
    }
}
