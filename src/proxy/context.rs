//! The response context of one forwarded request (RFC 3261 §16.7): its branches, which
//! responses go upstream at once, the best final response once every branch is done, CANCEL
//! of the other branches (§16.10) and the next q group (serial forking).
//!
//! Pure: the core feeds it responses, timeouts and CANCELs and carries out the returned
//! [`Step`]s. Branch numbers index `branches`; the core maps client transactions to them.

use crate::sip::{HasHeaders, HeaderName, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchState {
    /// Sent, nothing heard.
    Calling,
    /// A provisional response arrived: a CANCEL may now be sent (§9.1).
    Proceeding,
    /// A final response arrived (or the branch timed out).
    Done,
}

#[derive(Debug, Clone)]
pub struct Branch {
    pub state: BranchState,
    /// CANCEL wanted, waiting for the first provisional (§9.1: not before one).
    pub cancel_pending: bool,
    pub cancel_sent: bool,
}

/// What the core does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this response upstream through the server transaction (a provisional, a 2xx, or
    /// the final answer).
    Forward(Response),
    /// Send a CANCEL on this branch.
    Cancel(usize),
    /// Every branch of the current group failed: start the next q group.
    NextGroup,
}

#[derive(Debug, Clone)]
pub struct Context {
    pub invite: bool,
    pub branches: Vec<Branch>,
    /// q groups still to try.
    pub groups_left: usize,
    /// A final response went upstream (the first 2xx, or the best one).
    pub final_sent: bool,
    /// The caller cancelled, a 2xx or a 6xx arrived: no new branches.
    pub no_new_branches: bool,
    /// Final responses of finished branches (best-response candidates).
    finals: Vec<Response>,
}

impl Context {
    pub fn new(invite: bool, groups_left: usize) -> Context {
        Context {
            invite,
            branches: Vec::new(),
            groups_left,
            final_sent: false,
            no_new_branches: false,
            finals: Vec::new(),
        }
    }

    /// A branch was started; returns its number.
    pub fn add_branch(&mut self) -> usize {
        self.branches.push(Branch {
            state: BranchState::Calling,
            cancel_pending: false,
            cancel_sent: false,
        });
        self.branches.len() - 1
    }

    pub fn all_done(&self) -> bool {
        self.branches.iter().all(|b| b.state == BranchState::Done)
    }

    /// A response arrived on branch `i` (our Via already removed).
    pub fn on_response(&mut self, i: usize, resp: Response) -> Vec<Step> {
        let mut steps = Vec::new();
        let Some(b) = self.branches.get_mut(i) else {
            return steps;
        };
        let status = resp.status;
        if b.state == BranchState::Done {
            // A 2xx retransmission or another fork's 2xx on an accepted INVITE goes on
            // (RFC 6026); anything else after the final is absorbed.
            if self.invite && (200..300).contains(&status) {
                steps.push(Step::Forward(resp));
            }
            return steps;
        }
        if status < 200 {
            b.state = BranchState::Proceeding;
            if b.cancel_pending && !b.cancel_sent {
                b.cancel_sent = true;
                steps.push(Step::Cancel(i));
            }
            // §16.7 item 5: provisionals other than 100 go upstream while no final has.
            if status > 100 && self.invite && !self.final_sent {
                steps.push(Step::Forward(resp));
            }
            return steps;
        }
        b.state = BranchState::Done;
        if (200..300).contains(&status) {
            let first = !self.final_sent;
            self.final_sent = true;
            self.no_new_branches = true;
            if self.invite {
                steps.push(Step::Forward(resp));
                steps.extend(self.cancel_others());
            } else if first {
                steps.push(Step::Forward(resp));
            }
            return steps;
        }
        if status >= 600 && self.invite {
            // §16.7 item 5: a 6xx ends the search: cancel the rest, no new branches.
            self.no_new_branches = true;
            steps.extend(self.cancel_others());
        }
        self.finals.push(resp);
        steps.extend(self.maybe_finish());
        steps
    }

    /// Branch `i` got no final response in time (Timer B/F, or no answer after CANCEL):
    /// a 408 for it (§16.7 item 6... the proxy "behaves as if it received a 408").
    pub fn on_timeout(&mut self, i: usize, synthetic: Response) -> Vec<Step> {
        if self
            .branches
            .get(i)
            .is_none_or(|b| b.state == BranchState::Done)
        {
            return Vec::new();
        }
        self.on_response(i, synthetic)
    }

    /// The caller sent CANCEL (§16.10): every pending branch is cancelled, no new ones.
    pub fn cancel(&mut self) -> Vec<Step> {
        self.no_new_branches = true;
        self.cancel_others()
    }

    fn cancel_others(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        for (i, b) in self.branches.iter_mut().enumerate() {
            match b.state {
                BranchState::Proceeding if !b.cancel_sent => {
                    b.cancel_sent = true;
                    steps.push(Step::Cancel(i));
                }
                BranchState::Calling => b.cancel_pending = true,
                _ => {}
            }
        }
        steps
    }

    fn maybe_finish(&mut self) -> Vec<Step> {
        if self.final_sent || !self.all_done() {
            return Vec::new();
        }
        if self.groups_left > 0 && !self.no_new_branches {
            self.groups_left -= 1;
            return vec![Step::NextGroup];
        }
        self.final_sent = true;
        vec![Step::Forward(self.best())]
    }

    /// RFC 3261 §16.7 item 6 and 7: a 6xx if any, else the lowest class (3xx before 4xx before
    /// 5xx; first arrival within a class), 503 sent as 500; a 401/407 carries every challenge
    /// the branches sent.
    fn best(&mut self) -> Response {
        let class = |r: &Response| match r.status / 100 {
            6 => 0,
            c => c,
        };
        let idx = (0..self.finals.len())
            .min_by_key(|&i| (class(&self.finals[i]), i))
            .unwrap_or(0);
        let mut best = self.finals.swap_remove(idx);
        if best.status == 503 {
            best.status = 500;
            best.reason = "Server Internal Error: next hop unavailable".into();
        }
        if matches!(best.status, 401 | 407) {
            for other in &self.finals {
                for kind in [HeaderName::WwwAuthenticate, HeaderName::ProxyAuthenticate] {
                    for v in other.headers.all(kind) {
                        if !best.headers.all(kind).any(|x| x == v) {
                            best.headers.push(kind, v.to_string());
                        }
                    }
                }
            }
        }
        best
    }

    /// The Call-ID of a response, for logs.
    pub fn describe(resp: &Response) -> String {
        format!("{} {}", resp.status, resp.call_id().unwrap_or("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Headers;

    fn resp(status: u16) -> Response {
        Response {
            status,
            reason: crate::sip::message::default_reason(status).into(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    fn forwarded(steps: &[Step]) -> Vec<u16> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Forward(r) => Some(r.status),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rfc3261_16_7_provisionals_forwarded_100_absorbed() {
        let mut c = Context::new(true, 0);
        let a = c.add_branch();
        assert!(forwarded(&c.on_response(a, resp(100))).is_empty());
        assert_eq!(forwarded(&c.on_response(a, resp(180))), vec![180]);
        assert_eq!(c.branches[a].state, BranchState::Proceeding);
    }

    #[test]
    fn rfc3261_16_7_first_2xx_forwarded_at_once_others_cancelled_later_2xx_too() {
        let mut c = Context::new(true, 0);
        let a = c.add_branch();
        let b = c.add_branch();
        let d = c.add_branch();
        c.on_response(a, resp(180));
        c.on_response(b, resp(180));
        let steps = c.on_response(b, resp(200));
        assert_eq!(forwarded(&steps), vec![200]);
        assert!(steps.contains(&Step::Cancel(a)));
        // d has not answered yet: its CANCEL waits for a provisional (§9.1).
        assert!(!steps.contains(&Step::Cancel(d)));
        assert_eq!(c.on_response(d, resp(183)), vec![Step::Cancel(d)]);
        // A second 2xx (another fork) also goes upstream.
        assert_eq!(forwarded(&c.on_response(a, resp(200))), vec![200]);
        // A 487 after the 2xx goes nowhere.
        assert!(forwarded(&c.on_response(d, resp(487))).is_empty());
    }

    #[test]
    fn rfc3261_16_7_best_response_lowest_class_when_all_done() {
        let mut c = Context::new(true, 0);
        let a = c.add_branch();
        let b = c.add_branch();
        assert!(forwarded(&c.on_response(a, resp(503))).is_empty());
        let steps = c.on_response(b, resp(486));
        assert_eq!(forwarded(&steps), vec![486]);
        // All failed with 503: upstream sees 500.
        let mut c = Context::new(true, 0);
        let a = c.add_branch();
        assert_eq!(forwarded(&c.on_response(a, resp(503))), vec![500]);
    }

    #[test]
    fn rfc3261_16_7_6xx_cancels_the_rest_and_wins() {
        let mut c = Context::new(true, 1);
        let a = c.add_branch();
        let b = c.add_branch();
        c.on_response(a, resp(180));
        let steps = c.on_response(b, resp(603));
        assert_eq!(steps, vec![Step::Cancel(a)]);
        let steps = c.on_response(a, resp(487));
        // No next group after a 6xx.
        assert_eq!(forwarded(&steps), vec![603]);
    }

    #[test]
    fn rfc3261_16_6_serial_groups_start_when_a_group_fails() {
        let mut c = Context::new(true, 1);
        let a = c.add_branch();
        assert_eq!(c.on_response(a, resp(480)), vec![Step::NextGroup]);
        let b = c.add_branch();
        // Best of the whole context: same class, first arrival.
        assert_eq!(forwarded(&c.on_response(b, resp(486))), vec![480]);
    }

    #[test]
    fn rfc3261_16_10_cancel_waits_for_provisional_and_timeout_is_408() {
        let mut c = Context::new(true, 2);
        let a = c.add_branch();
        let b = c.add_branch();
        c.on_response(a, resp(180));
        assert_eq!(c.cancel(), vec![Step::Cancel(a)]);
        assert!(c.branches[b].cancel_pending);
        c.on_response(a, resp(487));
        // b never answers: Timer B → 408; the best response is the 487 (same class, first),
        // and no next group after a CANCEL.
        let steps = c.on_timeout(b, resp(408));
        assert_eq!(forwarded(&steps), vec![487]);
    }

    #[test]
    fn rfc3261_16_7_challenges_of_all_branches_are_merged() {
        let mut c = Context::new(true, 0);
        let a = c.add_branch();
        let b = c.add_branch();
        let mut r1 = resp(407);
        r1.headers
            .push(HeaderName::ProxyAuthenticate, "Digest realm=\"a\"");
        let mut r2 = resp(401);
        r2.headers
            .push(HeaderName::WwwAuthenticate, "Digest realm=\"b\"");
        c.on_response(a, r1);
        let steps = c.on_response(b, r2);
        let Step::Forward(r) = &steps[0] else {
            panic!()
        };
        assert_eq!(r.status, 407);
        assert!(r.headers.has(HeaderName::WwwAuthenticate));
    }

    #[test]
    fn non_invite_forwards_only_the_first_final() {
        let mut c = Context::new(false, 0);
        let a = c.add_branch();
        assert!(forwarded(&c.on_response(a, resp(100))).is_empty());
        assert_eq!(forwarded(&c.on_response(a, resp(200))), vec![200]);
        assert!(forwarded(&c.on_response(a, resp(200))).is_empty());
    }
}
