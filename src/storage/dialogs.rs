//! Calls of the dialog tracker, so lamps and the keepalive probe survive a restart: one record
//! per call (Call-ID and From-tag), rewritten whole on every change and deleted when the call
//! ends. Written through the same group commit as everything else.

use super::codec::{Dec, Enc};
use super::{DecodeError, Durable, StorageError};
use crate::dialog::{Branch, Call, CallKey, DialogState, EndReason, Party};

/// One change to the `dialogs` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogWrite {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete(Vec<u8>),
}

/// Calls in progress, keyed by [`call_key`].
pub trait DialogStore: Send + Sync {
    /// Every stored call that decodes (corrupt records are logged and skipped).
    fn load_calls(&self) -> Result<Vec<Call>, StorageError>;

    /// Applies the writes in order, as one group.
    fn write_calls(&self, writes: Vec<DialogWrite>) -> Durable;

    fn save_call(&self, key: &[u8], value: Vec<u8>) -> Durable {
        self.write_calls(vec![DialogWrite::Put {
            key: key.to_vec(),
            value,
        }])
    }

    fn delete_call(&self, key: &[u8]) -> Durable {
        self.write_calls(vec![DialogWrite::Delete(key.to_vec())])
    }

    /// The write of a tracker [`Update`](crate::dialog::Update).
    fn apply_call(&self, write: DialogWrite) -> Durable {
        self.write_calls(vec![write])
    }
}

/// The record key of a call: Call-ID and From-tag, each length-prefixed.
pub fn call_key(key: &CallKey) -> Vec<u8> {
    let mut e = Enc::default();
    e.str(&key.call_id).str(&key.from_tag);
    e.finish()
}

const CALL_V1: u8 = 1;
/// V1 and each branch's route set after the sequence number.
const CALL_V2: u8 = 2;
/// Bounds a corrupt record cannot make us allocate past.
const MAX_RECORD_BRANCHES: u64 = 1024;

fn state_code(s: DialogState) -> u64 {
    match s {
        DialogState::Trying => 0,
        DialogState::Proceeding => 1,
        DialogState::Early => 2,
        DialogState::Confirmed => 3,
        DialogState::Terminated => 4,
    }
}

fn state_of(n: u64) -> Result<DialogState, DecodeError> {
    Ok(match n {
        0 => DialogState::Trying,
        1 => DialogState::Proceeding,
        2 => DialogState::Early,
        3 => DialogState::Confirmed,
        4 => DialogState::Terminated,
        _ => return Err(DecodeError("unknown dialog state")),
    })
}

fn reason_code(r: Option<EndReason>) -> u64 {
    match r {
        None => 0,
        Some(EndReason::Cancelled) => 1,
        Some(EndReason::Rejected) => 2,
        Some(EndReason::Replaced) => 3,
        Some(EndReason::CallerBye) => 4,
        Some(EndReason::CalleeBye) => 5,
        Some(EndReason::Timeout) => 6,
        Some(EndReason::Error) => 7,
    }
}

fn reason_of(n: u64) -> Result<Option<EndReason>, DecodeError> {
    Ok(Some(match n {
        0 => return Ok(None),
        1 => EndReason::Cancelled,
        2 => EndReason::Rejected,
        3 => EndReason::Replaced,
        4 => EndReason::CallerBye,
        5 => EndReason::CalleeBye,
        6 => EndReason::Timeout,
        7 => EndReason::Error,
        _ => return Err(DecodeError("unknown end reason")),
    }))
}

fn opt_u64(e: &mut Enc, v: Option<u64>) {
    match v {
        None => e.u64(0),
        Some(v) => e.u64(1).u64(v),
    };
}

fn dec_opt_u64(d: &mut Dec<'_>) -> Result<Option<u64>, DecodeError> {
    match d.u64()? {
        0 => Ok(None),
        1 => Ok(Some(d.u64()?)),
        _ => Err(DecodeError("bad option tag")),
    }
}

fn dec_opt_u32(d: &mut Dec<'_>) -> Result<Option<u32>, DecodeError> {
    dec_opt_u64(d)?
        .map(|v| u32::try_from(v).map_err(|_| DecodeError("number out of range")))
        .transpose()
}

fn dec_u16(d: &mut Dec<'_>) -> Result<u16, DecodeError> {
    u16::try_from(d.u64()?).map_err(|_| DecodeError("status out of range"))
}

fn dec_bool(d: &mut Dec<'_>) -> Result<bool, DecodeError> {
    match d.u64()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError("bad flag")),
    }
}

fn enc_party(e: &mut Enc, p: &Party) {
    e.str(&p.uri)
        .opt_str(p.display.as_deref())
        .opt_str(p.aor.as_deref())
        .opt_str(p.target.as_deref());
}

fn dec_party(d: &mut Dec<'_>) -> Result<Party, DecodeError> {
    Ok(Party {
        uri: d.str()?,
        display: d.opt_str()?,
        aor: d.opt_str()?,
        target: d.opt_str()?,
    })
}

pub fn encode_call(c: &Call) -> Vec<u8> {
    let mut e = Enc::new(CALL_V2);
    e.str(&c.key.call_id).str(&c.key.from_tag);
    enc_party(&mut e, &c.caller);
    enc_party(&mut e, &c.callee);
    e.str(&c.request_uri)
        .str(&c.caller_flow.to_string())
        .u64(u64::from(c.caller_cseq))
        .u64(state_code(c.state));
    opt_u64(&mut e, c.code.map(u64::from));
    e.u64(reason_code(c.end))
        .u64(u64::from(c.proceeding))
        .u64(c.created_ms)
        .u64(c.progress_ms);
    opt_u64(&mut e, c.confirmed_ms);
    opt_u64(&mut e, c.ended_ms);
    e.u64(c.branches.len() as u64);
    for b in &c.branches {
        e.str(&b.to_tag)
            .u64(state_code(b.state))
            .opt_str(b.target.as_deref())
            .opt_str(b.flow.map(|f| f.to_string()).as_deref())
            .u64(u64::from(b.code))
            .u64(b.created_ms);
        opt_u64(&mut e, b.confirmed_ms);
        e.u64(u64::from(b.caller_held))
            .u64(u64::from(b.callee_held));
        opt_u64(&mut e, b.callee_cseq.map(u64::from));
    }
    e.strs(&c.dead_tags).u64(c.seq);
    for b in &c.branches {
        e.strs(&b.route_set);
    }
    e.finish()
}

pub fn decode_call(buf: &[u8]) -> Result<Call, DecodeError> {
    let mut d = Dec::new(buf)?;
    if d.version != CALL_V1 && d.version != CALL_V2 {
        return Err(DecodeError("unknown call record version"));
    }
    let key = CallKey {
        call_id: d.str()?,
        from_tag: d.str()?,
    };
    let caller = dec_party(&mut d)?;
    let callee = dec_party(&mut d)?;
    let request_uri = d.str()?;
    let caller_flow = d
        .str()?
        .parse()
        .map_err(|_| DecodeError("bad caller flow"))?;
    let caller_cseq = d.u32()?;
    let state = state_of(d.u64()?)?;
    let code = dec_opt_u64(&mut d)?
        .map(|v| u16::try_from(v).map_err(|_| DecodeError("status out of range")))
        .transpose()?;
    let end = reason_of(d.u64()?)?;
    let proceeding = dec_bool(&mut d)?;
    let created_ms = d.u64()?;
    let progress_ms = d.u64()?;
    let confirmed_ms = dec_opt_u64(&mut d)?;
    let ended_ms = dec_opt_u64(&mut d)?;
    let n = d.u64()?;
    if n > MAX_RECORD_BRANCHES {
        return Err(DecodeError("too many branches"));
    }
    let mut branches = Vec::with_capacity(n as usize);
    for _ in 0..n {
        branches.push(Branch {
            to_tag: d.str()?,
            state: state_of(d.u64()?)?,
            target: d.opt_str()?,
            flow: d
                .opt_str()?
                .map(|f| f.parse())
                .transpose()
                .map_err(|_| DecodeError("bad branch flow"))?,
            code: dec_u16(&mut d)?,
            created_ms: d.u64()?,
            confirmed_ms: dec_opt_u64(&mut d)?,
            caller_held: dec_bool(&mut d)?,
            callee_held: dec_bool(&mut d)?,
            callee_cseq: dec_opt_u32(&mut d)?,
            route_set: Vec::new(),
        });
    }
    let dead_tags = d.strs()?;
    let seq = d.u64()?;
    if d.version == CALL_V2 {
        for b in &mut branches {
            b.route_set = d.strs()?;
        }
    }
    if !d.is_empty() {
        return Err(DecodeError("trailing bytes after call record"));
    }
    Ok(Call {
        key,
        caller,
        callee,
        request_uri,
        caller_flow,
        caller_cseq,
        state,
        code,
        end,
        proceeding,
        created_ms,
        progress_ms,
        confirmed_ms,
        ended_ms,
        branches,
        dead_tags,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Call {
        Call {
            key: CallKey {
                call_id: "a84b4c76e66710@192.0.2.7".into(),
                from_tag: "1928301774".into(),
            },
            caller: Party {
                uri: "sip:1001@example.com".into(),
                display: Some("Alice \"A\"".into()),
                aor: Some("sip:1001@example.com".into()),
                target: Some("sip:1001@192.0.2.7:5060".into()),
            },
            callee: Party {
                uri: "sip:1002@example.com".into(),
                display: None,
                aor: Some("sip:1002@example.com".into()),
                target: None,
            },
            request_uri: "sip:1002@example.com".into(),
            caller_flow: "udp:192.0.2.7:5060".parse().unwrap(),
            caller_cseq: 101,
            state: DialogState::Confirmed,
            code: None,
            end: None,
            proceeding: true,
            created_ms: 1_700_000_000_000,
            progress_ms: 1_700_000_001_000,
            confirmed_ms: Some(1_700_000_004_000),
            ended_ms: None,
            branches: vec![Branch {
                to_tag: "a6c85cf".into(),
                state: DialogState::Confirmed,
                target: Some("sip:1002@192.0.2.9:5060".into()),
                flow: "udp:192.0.2.9:5060".parse().ok(),
                code: 200,
                created_ms: 1_700_000_001_000,
                confirmed_ms: Some(1_700_000_004_000),
                caller_held: true,
                callee_held: false,
                callee_cseq: Some(7),
                route_set: vec![
                    "<sip:192.0.2.10:5060;lr>".into(),
                    "<sip:pbx.example.com;lr>".into(),
                ],
            }],
            dead_tags: vec!["x1".into()],
            seq: 5,
        }
    }

    #[test]
    fn call_record_round_trips() {
        let c = sample();
        assert_eq!(decode_call(&encode_call(&c)).unwrap(), c);
        let ended = Call {
            state: DialogState::Terminated,
            code: Some(487),
            end: Some(EndReason::Cancelled),
            ended_ms: Some(1),
            confirmed_ms: None,
            branches: vec![],
            dead_tags: vec![],
            ..sample()
        };
        assert_eq!(decode_call(&encode_call(&ended)).unwrap(), ended);
    }

    #[test]
    fn a_v1_record_decodes_with_empty_route_sets() {
        // Written before route sets were recorded: V1 is V2 without the trailing route sets.
        let mut c = sample();
        let mut v1 = encode_call(&Call {
            branches: c
                .branches
                .iter()
                .map(|b| Branch {
                    route_set: vec![],
                    ..b.clone()
                })
                .collect(),
            ..c.clone()
        });
        assert_eq!(v1.pop(), Some(0), "an empty route set is one zero count");
        v1[0] = CALL_V1;
        c.branches[0].route_set.clear();
        assert_eq!(decode_call(&v1).unwrap(), c);
    }

    #[test]
    fn corrupt_call_records_are_errors_not_panics() {
        let bytes = encode_call(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_call(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_call(&longer).is_err());
        let mut v3 = bytes.clone();
        v3[0] = 3;
        assert!(decode_call(&v3).unwrap_err().0.contains("version"));
        // Every single-byte corruption: an error or some call, never a panic.
        for i in 0..bytes.len() {
            for x in [0x00, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = x;
                let _ = decode_call(&b);
            }
        }
    }

    #[test]
    fn keys_do_not_collide_across_the_boundary() {
        let k = |c: &str, f: &str| {
            call_key(&CallKey {
                call_id: c.into(),
                from_tag: f.into(),
            })
        };
        assert_ne!(k("ab", "c"), k("a", "bc"));
    }
}
