//! One call for the tracker's and the BLF renderer's unit tests: Alice (1001) calls Bob (1002)
//! at `T0`, the call ids of RFC 3261's examples.

use super::{CallKey, InviteInfo, Party};
use crate::config::DialogConfig;

pub const T0: u64 = 1_700_000_000_000;

pub fn cfg() -> DialogConfig {
    DialogConfig::default()
}

pub fn key() -> CallKey {
    CallKey {
        call_id: "a84b4c76e66710@192.0.2.7".into(),
        from_tag: "1928301774".into(),
    }
}

pub fn info() -> InviteInfo {
    InviteInfo {
        caller: Party {
            uri: "sip:1001@example.com".into(),
            display: Some("Alice".into()),
            aor: Some("sip:1001@example.com".into()),
            target: Some("sip:1001@192.0.2.7:5060".into()),
        },
        callee: Party {
            uri: "sip:1002@example.com".into(),
            display: Some("Bob".into()),
            aor: Some("sip:1002@example.com".into()),
            target: None,
        },
        request_uri: "sip:1002@example.com".into(),
        caller_flow: "udp:192.0.2.7:5060".parse().unwrap(),
        cseq: 101,
    }
}
