//! The decisions about a SUBSCRIBE or PUBLISH that do not need the message, the state or a
//! socket: plain values in, a decision (or the refusal and its SIP answer) out. The request
//! handlers in `subscriptions` and `publications` parse, look up and carry these out.

use super::event::Pkg;
use super::Outcome;
use crate::config::Policy;
use crate::storage::SubState;
use std::time::Duration;

/// The Expires a SUBSCRIBE or PUBLISH asked for (`None`: the header was absent) against the
/// configured default, minimum and maximum (RFC 6665 §4.2.1.1, RFC 3903 §6 step 6): shortened
/// to the maximum; `Err(min)` is the 423 with its Min-Expires. 0 (unsubscribe, remove) is
/// always allowed.
pub(super) fn granted_expires(
    asked: Option<u32>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, u32> {
    let asked = asked.unwrap_or(default);
    if asked != 0 && asked < min {
        return Err(min);
    }
    Ok(asked.min(max))
}

/// What a PUBLISH asks for (RFC 3903 §4), from its SIP-If-Match, whether it has a body and
/// its granted Expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PublishAsk<'a> {
    /// No SIP-If-Match, a body: a new publication (§4.1).
    Initial,
    /// SIP-If-Match, no body, Expires > 0: the publication lives on (§4.2).
    Refresh(&'a str),
    /// SIP-If-Match and a body: its document is replaced (§4.3).
    Modify(&'a str),
    /// SIP-If-Match, Expires 0: the publication ends (§4.4).
    Remove(&'a str),
}

/// A PUBLISH refused before or when its publication is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum PublishRefused {
    #[error("Bad Request: initial PUBLISH without a body")]
    InitialWithoutBody,
    #[error("Bad Request: PUBLISH with Expires 0 needs SIP-If-Match")]
    RemoveWithoutIfMatch,
    #[error("Conditional Request Failed: unknown or expired SIP-If-Match")]
    UnknownEtag,
}

impl PublishRefused {
    pub(super) fn status(self) -> u16 {
        match self {
            PublishRefused::InitialWithoutBody | PublishRefused::RemoveWithoutIfMatch => 400,
            PublishRefused::UnknownEtag => 412,
        }
    }
}

/// RFC 3903 §6 steps 4-5: what the PUBLISH asks for, or why it cannot be.
pub(super) fn publish_ask(
    if_match: Option<&str>,
    has_body: bool,
    expires: u32,
) -> Result<PublishAsk<'_>, PublishRefused> {
    match if_match {
        None if !has_body => Err(PublishRefused::InitialWithoutBody),
        None if expires == 0 => Err(PublishRefused::RemoveWithoutIfMatch),
        None => Ok(PublishAsk::Initial),
        Some(tag) if expires == 0 => Ok(PublishAsk::Remove(tag)),
        Some(tag) if has_body => Ok(PublishAsk::Modify(tag)),
        Some(tag) => Ok(PublishAsk::Refresh(tag)),
    }
}

/// RFC 3903 §6 step 4: the SIP-If-Match must name a publication of this resource that has not
/// expired at `now`; `existing` are the resource's (ETag, expiry) in order. The index of the
/// one it names, or the 412.
pub(super) fn find_etag<'a>(
    tag: &str,
    now: u64,
    existing: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<usize, PublishRefused> {
    existing
        .into_iter()
        .position(|(etag, expires_at)| etag == tag && expires_at > now)
        .ok_or(PublishRefused::UnknownEtag)
}

/// A new SUBSCRIBE (no To tag) as the policy for its watcher allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NewSubscription {
    /// `Active`, or `Pending` until the presentity decides (RFC 3857, RFC 3856 §6.6.2: a
    /// pending NOTIFY carries no state).
    pub(super) state: SubState,
    /// Expires 0: a fetch (RFC 6665 §4.4.3): one NOTIFY with the state, terminated, nothing
    /// kept (so it takes no place in the tables).
    pub(super) fetch: bool,
}

/// RFC 6665 §4.2.1 with the authorization policy's verdict for this watcher; `None` is the
/// 403 of a blocked watcher.
pub(super) fn new_subscription(policy: Policy, expires: u32) -> Option<NewSubscription> {
    let state = match policy {
        Policy::Allow => SubState::Active,
        Policy::Confirm => SubState::Pending,
        Policy::Block => return None,
    };
    Some(NewSubscription {
        state,
        fetch: expires == 0,
    })
}

/// A subscription's expiry timer fired at `now` (RFC 6665 §4.2.2 "timeout"): it ends, or, when
/// a refresh moved `expires_at` meanwhile, waits until then.
pub(super) fn expired(expires_at: u64, now: u64) -> Result<(), u64> {
    if expires_at > now {
        Err(expires_at)
    } else {
        Ok(())
    }
}

/// One side of a subscription dialog, as the in-dialog SUBSCRIBE decision needs it: the stored
/// subscription's, or the request's (`cseq` its CSeq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DialogSide<'a> {
    pub(super) watcher: &'a str,
    pub(super) pkg: Pkg,
    pub(super) event_id: Option<&'a str>,
    pub(super) cseq: u32,
}

/// What a SUBSCRIBE inside an existing subscription dialog does (RFC 6665 §4.1.2.2, §4.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InDialog {
    /// Expires > 0: the subscription lives until `expires_at` and the watcher is owed a
    /// NOTIFY of the current state (RFC 6665 §4.2.1.2).
    Refresh { expires_at: u64 },
    /// Expires 0: the subscription ends with a final NOTIFY carrying the state (§4.2.1.4).
    Unsubscribe,
}

/// An in-dialog SUBSCRIBE refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum InDialogRefused {
    /// The dialog identifiers are not secret (a proxy sees them): only the watcher that made
    /// the subscription may refresh or end it.
    #[error("Forbidden: this subscription belongs to {0}")]
    NotTheWatcher(String),
    /// RFC 6665 §4.1.2.2: a refresh names the same package and id.
    #[error("Bad Event: this dialog's subscription is for another event package or id")]
    OtherEvent,
    /// RFC 3261 §12.2.2: a CSeq at or below the last one is out of order.
    #[error("Server Internal Error: CSeq out of order")]
    CSeqOutOfOrder,
}

impl InDialogRefused {
    pub(super) fn status(&self) -> u16 {
        match self {
            InDialogRefused::NotTheWatcher(_) => 403,
            InDialogRefused::OtherEvent => 489,
            InDialogRefused::CSeqOutOfOrder => 500,
        }
    }
}

/// An in-dialog SUBSCRIBE against the stored subscription, with its granted Expires at `now`.
pub(super) fn in_dialog(
    stored: DialogSide<'_>,
    asked: DialogSide<'_>,
    expires: u32,
    now: u64,
) -> Result<InDialog, InDialogRefused> {
    if stored.watcher != asked.watcher {
        return Err(InDialogRefused::NotTheWatcher(stored.watcher.to_string()));
    }
    if stored.pkg != asked.pkg || stored.event_id != asked.event_id {
        return Err(InDialogRefused::OtherEvent);
    }
    if asked.cseq <= stored.cseq {
        return Err(InDialogRefused::CSeqOutOfOrder);
    }
    Ok(match expires {
        0 => InDialog::Unsubscribe,
        e => InDialog::Refresh {
            expires_at: now + u64::from(e),
        },
    })
}

/// What a subscription does after its NOTIFY was answered (RFC 6665 §4.2.2, RFC 5057 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterAnswer {
    /// 2xx: the failures are forgotten; a change owed meanwhile leaves now.
    Delivered,
    /// A failure the profile keeps the subscription through (408, timeout, 5xx, ...): the
    /// state is owed again and retried after this delay, the `failures`th in a row.
    Retry { failures: u32, after: Duration },
    /// The watcher ended it (481 and the like), or the profile does not keep subscriptions
    /// on failures: it ends, with no final NOTIFY (the watcher would not take one).
    End,
}

/// Longest wait before a NOTIFY is retried.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// The answer to a NOTIFY of a subscription that had failed `failures` times in a row before
/// it, under a profile that keeps subscriptions on failures (`keep_on_timeout`) and retries
/// first after `retry_ms`, doubling per failure up to a minute.
pub(super) fn after_answer(
    outcome: Outcome,
    failures: u32,
    keep_on_timeout: bool,
    retry_ms: u64,
) -> AfterAnswer {
    match outcome {
        Outcome::Delivered => AfterAnswer::Delivered,
        Outcome::Failed(_) if keep_on_timeout => {
            let failures = failures.saturating_add(1);
            let shift = (failures - 1).min(10);
            AfterAnswer::Retry {
                failures,
                after: Duration::from_millis(retry_ms.saturating_mul(1 << shift))
                    .min(MAX_RETRY_DELAY),
            }
        }
        Outcome::Failed(_) | Outcome::Rejected(_) => AfterAnswer::End,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6665_4_2_1_1_and_rfc3903_6_step_6_expires_shortened_or_423() {
        // Absent: the default.
        assert_eq!(granted_expires(None, 600, 60, 3600), Ok(600));
        // Too long: shortened to the maximum.
        assert_eq!(granted_expires(Some(7200), 600, 60, 3600), Ok(3600));
        // Too brief: 423 with Min-Expires.
        assert_eq!(granted_expires(Some(30), 600, 60, 3600), Err(60));
        // 0 ends the subscription or publication, whatever the minimum.
        assert_eq!(granted_expires(Some(0), 600, 60, 3600), Ok(0));
        assert_eq!(granted_expires(Some(60), 600, 60, 3600), Ok(60));
    }

    #[test]
    fn rfc3903_4_what_a_publish_asks_for() {
        assert_eq!(publish_ask(None, true, 600), Ok(PublishAsk::Initial));
        assert_eq!(
            publish_ask(Some("e1"), false, 600),
            Ok(PublishAsk::Refresh("e1"))
        );
        assert_eq!(
            publish_ask(Some("e1"), true, 600),
            Ok(PublishAsk::Modify("e1"))
        );
        assert_eq!(
            publish_ask(Some("e1"), false, 0),
            Ok(PublishAsk::Remove("e1"))
        );
        // A removal with a body is still a removal (§4.4: Expires 0 ends it).
        assert_eq!(
            publish_ask(Some("e1"), true, 0),
            Ok(PublishAsk::Remove("e1"))
        );
    }

    #[test]
    fn rfc3903_6_steps_4_5_a_publish_that_cannot_be_is_400() {
        // §6 step 5: an initial PUBLISH must carry the state.
        let e = publish_ask(None, false, 600).unwrap_err();
        assert_eq!((e, e.status()), (PublishRefused::InitialWithoutBody, 400));
        // Nothing to remove without naming it.
        let e = publish_ask(None, true, 0).unwrap_err();
        assert_eq!((e, e.status()), (PublishRefused::RemoveWithoutIfMatch, 400));
        assert!(
            e.to_string().contains("SIP-If-Match"),
            "the reason names the problem"
        );
    }

    #[test]
    fn rfc3903_6_step_4_an_unknown_or_expired_etag_is_412() {
        let existing = [("e1", 100), ("e2", 200)];
        assert_eq!(find_etag("e2", 150, existing), Ok(1));
        assert_eq!(find_etag("e1", 50, existing), Ok(0));
        // Expired (its expiry timer may not have run yet).
        let e = find_etag("e1", 100, existing).unwrap_err();
        assert_eq!((e, e.status()), (PublishRefused::UnknownEtag, 412));
        assert_eq!(
            find_etag("e3", 0, existing),
            Err(PublishRefused::UnknownEtag)
        );
        assert_eq!(find_etag("e1", 0, []), Err(PublishRefused::UnknownEtag));
    }

    fn side(
        watcher: &'static str,
        pkg: Pkg,
        event_id: Option<&'static str>,
        cseq: u32,
    ) -> DialogSide<'static> {
        DialogSide {
            watcher,
            pkg,
            event_id,
            cseq,
        }
    }

    #[test]
    fn rfc6665_4_2_1_2_a_refresh_extends_and_owes_the_state() {
        let stored = side("sip:1002@example.com", Pkg::Dialog, None, 1);
        let asked = side("sip:1002@example.com", Pkg::Dialog, None, 2);
        assert_eq!(
            in_dialog(stored, asked, 600, 1000),
            Ok(InDialog::Refresh { expires_at: 1600 })
        );
    }

    #[test]
    fn rfc6665_4_2_1_4_expires_0_unsubscribes() {
        let stored = side("sip:1002@example.com", Pkg::Presence, Some("7"), 4);
        let asked = side("sip:1002@example.com", Pkg::Presence, Some("7"), 5);
        assert_eq!(in_dialog(stored, asked, 0, 1000), Ok(InDialog::Unsubscribe));
    }

    #[test]
    fn rfc6665_4_1_2_2_a_refresh_for_another_package_or_id_is_489() {
        let stored = side("sip:1002@example.com", Pkg::Dialog, Some("1"), 1);
        for asked in [
            side("sip:1002@example.com", Pkg::Presence, Some("1"), 2),
            side("sip:1002@example.com", Pkg::Dialog, Some("2"), 2),
            side("sip:1002@example.com", Pkg::Dialog, None, 2),
        ] {
            let e = in_dialog(stored, asked, 600, 0).unwrap_err();
            assert_eq!((e.status(), e), (489, InDialogRefused::OtherEvent));
        }
    }

    #[test]
    fn rfc3261_12_2_2_an_old_cseq_is_refused_and_only_the_watcher_may_refresh() {
        let stored = side("sip:1002@example.com", Pkg::Dialog, None, 5);
        let old = side("sip:1002@example.com", Pkg::Dialog, None, 5);
        let e = in_dialog(stored, old, 600, 0).unwrap_err();
        assert_eq!((e.status(), e), (500, InDialogRefused::CSeqOutOfOrder));
        // Someone who saw the dialog identifiers, with a higher CSeq.
        let other = side("sip:eve@example.com", Pkg::Dialog, None, 6);
        let e = in_dialog(stored, other, 0, 0).unwrap_err();
        assert_eq!(e.status(), 403);
        assert_eq!(
            e.to_string(),
            "Forbidden: this subscription belongs to sip:1002@example.com"
        );
    }

    #[test]
    fn rfc6665_4_2_2_a_failed_notify_is_retried_with_backoff_when_the_profile_keeps_it() {
        assert_eq!(
            after_answer(Outcome::Delivered, 3, true, 2000),
            AfterAnswer::Delivered
        );
        let retry = |failures| after_answer(Outcome::Failed(408), failures, true, 2000);
        assert_eq!(
            retry(0),
            AfterAnswer::Retry {
                failures: 1,
                after: Duration::from_secs(2)
            }
        );
        assert_eq!(
            retry(1),
            AfterAnswer::Retry {
                failures: 2,
                after: Duration::from_secs(4)
            }
        );
        // Doubling stops at a minute, and the count does not overflow.
        assert_eq!(
            retry(20),
            AfterAnswer::Retry {
                failures: 21,
                after: Duration::from_secs(60)
            }
        );
        assert!(matches!(retry(u32::MAX), AfterAnswer::Retry { .. }));
        assert_eq!(
            after_answer(Outcome::Failed(408), 0, false, 2000),
            AfterAnswer::End,
            "a profile that does not keep subscriptions on timeout ends it"
        );
    }

    #[test]
    fn rfc5057_5_1_an_answer_that_ends_the_usage_ends_the_subscription() {
        for keep in [true, false] {
            assert_eq!(
                after_answer(Outcome::Rejected(481), 0, keep, 2000),
                AfterAnswer::End
            );
        }
    }

    #[test]
    fn rfc6665_4_2_1_and_rfc3857_a_new_subscription_is_active_pending_or_refused() {
        let new = |policy, expires| new_subscription(policy, expires);
        assert_eq!(
            new(Policy::Allow, 600),
            Some(NewSubscription {
                state: SubState::Active,
                fetch: false
            })
        );
        assert_eq!(new(Policy::Confirm, 600).unwrap().state, SubState::Pending);
        assert_eq!(new(Policy::Block, 600), None);
        assert_eq!(
            new(Policy::Block, 0),
            None,
            "a blocked watcher may not fetch"
        );
    }

    #[test]
    fn rfc6665_4_4_3_expires_0_is_a_fetch() {
        let f = new_subscription(Policy::Allow, 0).unwrap();
        assert!(f.fetch);
        assert!(new_subscription(Policy::Confirm, 0).unwrap().fetch);
    }

    #[test]
    fn rfc6665_4_2_2_timeout_only_once_the_subscription_is_due() {
        assert_eq!(expired(1000, 1000), Ok(()));
        assert_eq!(expired(1000, 1001), Ok(()));
        // A refresh moved it after the timer was set.
        assert_eq!(expired(1600, 1000), Err(1600));
    }
}
