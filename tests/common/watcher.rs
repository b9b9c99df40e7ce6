//! A BLF key: a `dialog` subscription (RFC 4235) of user 1003 to one presentity, reading the
//! lamp from the NOTIFYs it answers. CSeqs and versions never go backwards nor repeat: while
//! the server runs each NOTIFY's `version` is exactly one more than the last one's; after a
//! restart (the CSeq jumps ahead: the server continues above what it reserved on disk) the
//! version may jump too, with a full document (RFC 4235 §4.1).

#![allow(dead_code)]

use super::ua::{cseq_of, Ua};
use super::{branch, wire};
use busylamp::sip::body::dialog_info::{parse, DialogInfo, DialogState, DocState};
use busylamp::sip::Request;
use std::net::SocketAddr;

pub struct Watcher {
    pub ua: Ua,
    last_version: Option<u32>,
    last_cseq: Option<u32>,
}

impl Watcher {
    /// Subscribes to `presentity`'s dialogs and reads the first (idle) document.
    pub async fn new(server: SocketAddr, presentity: &str) -> Watcher {
        let mut ua = Ua::new(server).await;
        let sub = wire(&format!(
            "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
            Max-Forwards: 70
            From: <sip:1003@example.test>;tag=w1
            To: <sip:{presentity}@example.test>
            Call-ID: blf-{presentity}-{p}
            CSeq: 1 SUBSCRIBE
            Contact: <sip:1003@127.0.0.1:{p}>
            Event: dialog
            Accept: application/dialog-info+xml
            Expires: 3600
            ",
            p = ua.port(),
            b = branch()
        ));
        let r = ua.request(&sub).await;
        assert_eq!(r.status, 200, "SUBSCRIBE: {}", r.reason);
        let mut w = Watcher {
            ua,
            last_version: None,
            last_cseq: None,
        };
        let first = w.next().await;
        assert!(first.dialogs.is_empty(), "idle at first: {first:?}");
        w
    }

    /// The CSeq of the last NOTIFY read.
    pub fn last_cseq(&self) -> Option<u32> {
        self.last_cseq
    }

    /// The next NOTIFY's document; its version must be exactly one more than the last, or,
    /// after a restart, higher, with the full state.
    pub async fn next(&mut self) -> DialogInfo {
        self.next_within(5000).await.expect("a NOTIFY within 5 s")
    }

    /// The next new NOTIFY's document within `ms` (each answered 200), or `None`.
    /// Retransmissions (same CSeq: our 200 crossed a Timer E firing, which the paused clock
    /// makes likely) are answered and skipped.
    pub async fn next_within(&mut self, ms: u64) -> Option<DialogInfo> {
        let (n, previous_cseq): (Request, Option<u32>) = loop {
            let n = self.ua.next_request_within(ms).await?;
            assert_eq!(n.method, "NOTIFY", "the watcher got a {}", n.method);
            self.ua.answer(&n, 200).await;
            let cseq = cseq_of(&n);
            if self.last_cseq != Some(cseq) {
                if let Some(last) = self.last_cseq {
                    assert!(cseq > last, "CSeq went backwards: {cseq} after {last}");
                }
                break (n, self.last_cseq.replace(cseq));
            }
        };
        let doc = parse(&n.body).expect("dialog-info body");
        if let Some(v) = self.last_version {
            if previous_cseq.is_some_and(|c| cseq_of(&n) == c + 1) {
                assert_eq!(doc.version, v + 1, "versions go up by one per NOTIFY");
            } else {
                // A restart: above anything before, and the whole state.
                assert!(doc.version > v, "version {} after {v}", doc.version);
                assert_eq!(
                    doc.state,
                    DocState::Full,
                    "a jump comes with the full state"
                );
            }
        }
        self.last_version = Some(doc.version);
        Some(doc)
    }

    /// Reads NOTIFYs until none comes for `ms`: the last document (`None` if none came).
    pub async fn settled(&mut self, ms: u64) -> Option<DialogInfo> {
        let mut last = None;
        for _ in 0..100 {
            match self.next_within(ms).await {
                Some(d) => last = Some(d),
                None => return last,
            }
        }
        panic!("the lamp keeps changing");
    }

    /// NOTIFYs until the dialog states of the document satisfy `done` (changes made while
    /// a NOTIFY is unanswered arrive together: wait for a state, not a count).
    pub async fn until_states(
        &mut self,
        what: &str,
        done: impl Fn(&[DialogState]) -> bool,
    ) -> DialogInfo {
        for _ in 0..10 {
            let doc = self.next().await;
            let states: Vec<DialogState> = doc.dialogs.iter().map(|d| d.state).collect();
            if done(&states) {
                return doc;
            }
        }
        panic!("lamp never became {what}");
    }

    /// NOTIFYs until the lamp shows `state` for some dialog (or dark for `None`).
    pub async fn until(&mut self, state: Option<DialogState>) -> DialogInfo {
        match state {
            None => self.dark().await,
            Some(s) => {
                self.until_states(&format!("{s:?}"), |states| states.contains(&s))
                    .await
            }
        }
    }

    /// The lamp goes dark: every dialog terminated (or none: idle).
    pub async fn dark(&mut self) -> DialogInfo {
        self.until_states("dark", dark).await
    }

    /// True when no NOTIFY arrives within `ms`, or only ones that keep the lamp dark.
    pub async fn stays_dark(&mut self, ms: u64) -> bool {
        for _ in 0..5 {
            let Some(d) = self.next_within(ms).await else {
                return true;
            };
            let states: Vec<DialogState> = d.dialogs.iter().map(|x| x.state).collect();
            if !dark(&states) {
                return false;
            }
        }
        false
    }
}

/// A call is up (some dialog confirmed).
pub fn lit(s: &[DialogState]) -> bool {
    s.contains(&DialogState::Confirmed)
}

/// Every dialog terminated, or none.
pub fn dark(s: &[DialogState]) -> bool {
    s.iter().all(|x| *x == DialogState::Terminated)
}
