//! The decisions about a SUBSCRIBE or PUBLISH that do not need the message, the state or a
//! socket: plain values in, a decision (or the refusal and its SIP answer) out. The request
//! handlers in `subscriptions` and `publications` parse, look up and carry these out.

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
}
