//! One NOTIFY in flight per subscription (RFC 6665 §4.2.2 leaves the pacing to the notifier;
//! the README promises this): a change while a NOTIFY is unanswered is owed and sent, as the
//! newest state, when the answer comes; a failed NOTIFY is owed again (retried later); a
//! subscription that ends while one is in flight sends its final NOTIFY after the answer. So
//! the NOTIFYs of one subscription leave in CSeq order. Pure: the subscription's events in,
//! "send now" or "wait" out.

/// Where one subscription's NOTIFYs stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Delivery {
    in_flight: bool,
    /// The state changed since the NOTIFY in flight (or the last failed one) was built.
    owed: bool,
}

impl Delivery {
    /// The watcher's state changed: `true` when a NOTIFY may leave now; otherwise it is owed
    /// until the one in flight is answered.
    pub(super) fn changed(&mut self) -> bool {
        if self.in_flight {
            self.owed = true;
        }
        !self.in_flight
    }

    /// A NOTIFY was built with the current state: it is in flight and nothing is owed.
    pub(super) fn sent(&mut self) {
        self.in_flight = true;
        self.owed = false;
    }

    /// The NOTIFY in flight was answered 2xx: `true` when a change is owed (send it now).
    pub(super) fn delivered(&mut self) -> bool {
        self.in_flight = false;
        self.owed
    }

    /// The NOTIFY in flight failed in a way that keeps the subscription: the state is owed
    /// again, for the retry (or an earlier change).
    pub(super) fn failed(&mut self) {
        self.in_flight = false;
        self.owed = true;
    }

    /// A retry timer fired: `true` when the state is still owed and nothing is in flight
    /// (a change may have sent it meanwhile).
    pub(super) fn retry_due(&self) -> bool {
        !self.in_flight && self.owed
    }

    /// Whether a NOTIFY is unanswered: a final NOTIFY must wait for its answer.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6665_4_2_2_a_change_while_a_notify_is_unanswered_waits_for_the_answer() {
        let mut d = Delivery::default();
        assert!(d.changed(), "nothing in flight: send at once");
        d.sent();
        assert!(!d.changed(), "in flight: owed");
        assert!(!d.changed(), "two changes are one NOTIFY");
        assert!(d.delivered(), "answered: the owed state leaves");
        d.sent();
        assert!(!d.delivered(), "nothing owed after it");
        assert!(d.changed());
    }

    #[test]
    fn rfc6665_4_2_2_a_failed_notify_is_retried_unless_a_change_sent_the_state_first() {
        let mut d = Delivery::default();
        d.sent();
        d.failed();
        assert!(d.retry_due());
        assert!(d.changed(), "a change goes out at once after a failure");
        d.sent();
        assert!(!d.retry_due(), "the retry finds the state sent");
        d.failed();
        assert!(d.retry_due());
    }

    #[test]
    fn the_final_notify_waits_while_one_is_in_flight() {
        let mut d = Delivery::default();
        assert!(!d.in_flight());
        d.sent();
        assert!(
            d.in_flight(),
            "an ending subscription holds its final NOTIFY"
        );
        d.delivered();
        assert!(!d.in_flight(), "answered: the final NOTIFY may leave");
    }
}
