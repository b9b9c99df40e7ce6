//! The binding rules of RFC 3261 §10.3 steps 6–7 (plus RFC 5626 instance/reg-id and
//! RFC 3327 Path), as a pure function from (current bindings, REGISTER) to new bindings.

use crate::config::RegistrarConfig;
use crate::events::RegistrationChange;
use crate::sip::header::ContactValue;
use crate::sip::message::parse_delta_seconds;
use crate::sip::{NameAddr, Uri};
use crate::storage::Binding;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegError {
    #[error("Contact * must be the only Contact and needs Expires: 0")]
    BadStar,
    #[error("Contact URI scheme {0} cannot be registered")]
    BadContactScheme(String),
    #[error("Bad q-value {0:?} in Contact (want 0 to 1)")]
    BadQ(String),
    #[error("Interval Too Brief")]
    TooBrief { min: u32 },
    #[error("Out-of-order REGISTER: CSeq {got} is not above {have} for this Call-ID")]
    OutOfOrder { got: u32, have: u32 },
    #[error("Too many contacts for this AOR (max {0})")]
    TooManyContacts(usize),
    /// Across all of the user's AORs (see [`super::quota`]).
    #[error("Too many bindings for this user (registrar.max_bindings_per_user)")]
    TooManyUserBindings(usize),
}

impl RegError {
    pub fn status(&self) -> u16 {
        match self {
            RegError::TooBrief { .. } => 423,
            RegError::TooManyContacts(_) | RegError::TooManyUserBindings(_) => 403,
            _ => 400,
        }
    }
}

/// The parts of a REGISTER the binding rules read.
#[derive(Debug, Clone)]
pub struct RegisterInput<'a> {
    pub contacts: &'a [ContactValue],
    pub header_expires: Option<u32>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub path: Vec<String>,
    pub user_agent: Option<String>,
    pub source: &'a str,
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub change: RegistrationChange,
    pub contact: String,
    pub user_agent: Option<String>,
    /// When the binding expires (unix seconds, as `Binding::expires_at`); for one that ended
    /// (unregistered, expired), when it ended.
    pub expires: u64,
    /// The flow the binding came over (`udp:192.0.2.1:5060`, as `Binding::source`).
    pub flow: String,
}

impl Change {
    fn of(change: RegistrationChange, b: &Binding, expires: u64) -> Change {
        Change {
            change,
            contact: b.contact.clone(),
            user_agent: b.user_agent.clone(),
            expires,
            flow: b.source.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub bindings: Vec<Binding>,
    pub changes: Vec<Change>,
    /// False for a query, or for a retransmitted REGISTER already applied (nothing to write).
    pub changed: bool,
}

/// Drops bindings whose time is up; returns them as Expired changes.
pub fn sweep(bindings: &mut Vec<Binding>, now: u64) -> Vec<Change> {
    let mut gone = Vec::new();
    bindings.retain(|b| {
        if b.expires_at > now {
            return true;
        }
        gone.push(Change::of(RegistrationChange::Expired, b, b.expires_at));
        false
    });
    gone
}

struct Wanted {
    uri: Uri,
    uri_text: String,
    params: String,
    q: u16,
    expires: u32,
    instance: Option<String>,
    reg_id: Option<u32>,
}

fn parse_q(v: &str) -> Option<u16> {
    // qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_val: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_val),
        "1" if frac_val == 0 => Some(1000),
        _ => None,
    }
}

fn wanted(
    na: &NameAddr,
    header_expires: Option<u32>,
    cfg: &RegistrarConfig,
) -> Result<Wanted, RegError> {
    if na.uri.as_sip().is_none() {
        return Err(RegError::BadContactScheme(na.uri.scheme().to_string()));
    }
    let q = match na.params.value("q") {
        None => 1000,
        Some(v) => parse_q(&v).ok_or(RegError::BadQ(v))?,
    };
    // §10.3 step 6: the expires parameter wins over the Expires header, which wins over the
    // default. A non-numeric expires parameter (RFC 2543 dates) is ignored.
    let requested = na
        .params
        .value("expires")
        .and_then(|v| parse_delta_seconds(&v))
        .or(header_expires)
        .unwrap_or(cfg.default_expires);
    if requested != 0 && requested < cfg.min_expires {
        return Err(RegError::TooBrief {
            min: cfg.min_expires,
        });
    }
    let mut params = na.params.clone();
    params.remove("expires");
    let mut p = String::new();
    params.write(&mut p);
    Ok(Wanted {
        uri_text: na.uri.to_string(),
        uri: na.uri.clone(),
        params: p,
        q,
        expires: requested.min(cfg.max_expires),
        instance: na.params.value("+sip.instance"),
        reg_id: na.params.value("reg-id").and_then(|r| r.parse().ok()),
    })
}

fn same_binding(b: &Binding, w: &Wanted) -> bool {
    // RFC 5626 §6: with an instance id the binding is (instance, reg-id), whatever the URI.
    if let (Some(bi), Some(wi)) = (&b.instance, &w.instance) {
        return bi == wi && b.reg_id == w.reg_id;
    }
    // A refresh sends the contact it registered, byte for byte (and we store it as printed
    // from its parse): equal text is an equivalent URI, without parsing the stored one.
    if b.contact == w.uri_text {
        return true;
    }
    Uri::parse(&b.contact)
        .map(|u| u.equivalent(&w.uri))
        .unwrap_or(false)
}

/// Applies one REGISTER to the current bindings of its AOR.
pub fn apply_register(
    existing: &[Binding],
    input: &RegisterInput<'_>,
    cfg: &RegistrarConfig,
) -> Result<Applied, RegError> {
    let mut bindings = existing.to_vec();
    let mut changes = sweep(&mut bindings, input.now);
    let mut changed = !changes.is_empty();

    if input.contacts.is_empty() {
        return Ok(Applied {
            bindings,
            changes,
            changed,
        });
    }
    if input
        .contacts
        .iter()
        .any(|c| matches!(c, ContactValue::Star))
    {
        if input.contacts.len() != 1 || input.header_expires != Some(0) {
            return Err(RegError::BadStar);
        }
        for b in &bindings {
            if b.call_id == input.call_id && input.cseq <= b.cseq {
                return Err(RegError::OutOfOrder {
                    got: input.cseq,
                    have: b.cseq,
                });
            }
        }
        for b in bindings.drain(..) {
            changes.push(Change::of(RegistrationChange::Unregistered, &b, input.now));
            changed = true;
        }
        return Ok(Applied {
            bindings,
            changes,
            changed,
        });
    }

    let mut wanted_all = Vec::with_capacity(input.contacts.len());
    for c in input.contacts {
        if let ContactValue::Addr(na) = c {
            wanted_all.push(wanted(na, input.header_expires, cfg)?);
        }
    }
    // Check ordering for every contact before changing anything: a REGISTER applies whole or
    // not at all.
    let mut retransmission = true;
    for w in &wanted_all {
        match bindings.iter().find(|b| same_binding(b, w)) {
            Some(b) if b.call_id == input.call_id && input.cseq < b.cseq => {
                return Err(RegError::OutOfOrder {
                    got: input.cseq,
                    have: b.cseq,
                })
            }
            // Same Call-ID and CSeq: this exact REGISTER was applied already (a retransmission
            // that outlived our transaction, e.g. across a restart). Answer it again.
            Some(b) if b.call_id == input.call_id && input.cseq == b.cseq => {}
            Some(_) => retransmission = false,
            None if w.expires == 0 => {}
            None => retransmission = false,
        }
    }
    if retransmission {
        return Ok(Applied {
            bindings,
            changes,
            changed,
        });
    }

    for w in wanted_all {
        let pos = bindings.iter().position(|b| same_binding(b, &w));
        if w.expires == 0 {
            if let Some(i) = pos {
                let b = bindings.remove(i);
                changes.push(Change::of(RegistrationChange::Unregistered, &b, input.now));
                changed = true;
            }
            continue;
        }
        let fresh = Binding {
            contact: w.uri_text,
            params: w.params,
            q: w.q,
            expires_at: input.now + u64::from(w.expires),
            call_id: input.call_id.to_string(),
            cseq: input.cseq,
            path: input.path.clone(),
            instance: w.instance,
            reg_id: w.reg_id,
            user_agent: input.user_agent.clone(),
            source: input.source.to_string(),
            registered_at: input.now,
        };
        let change = match pos {
            Some(i) => {
                let registered_at = bindings[i].registered_at;
                bindings[i] = Binding {
                    registered_at,
                    ..fresh
                };
                RegistrationChange::Refreshed
            }
            None => {
                bindings.push(fresh);
                RegistrationChange::Registered
            }
        };
        let b = match pos {
            Some(i) => &bindings[i],
            None => &bindings[bindings.len() - 1],
        };
        changes.push(Change::of(change, b, b.expires_at));
        changed = true;
    }
    if bindings.len() > cfg.max_contacts {
        return Err(RegError::TooManyContacts(cfg.max_contacts));
    }
    Ok(Applied {
        bindings,
        changes,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::header::parse_contacts;

    fn cfg() -> RegistrarConfig {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 1800,
            max_contacts: 3,
            max_aors: 100,
            max_bindings_per_user: 10,
        }
    }

    fn input(
        contacts: &[&str],
        expires: Option<u32>,
        call_id: &str,
        cseq: u32,
        now: u64,
    ) -> RegisterInput<'static> {
        // Leaked (a few bytes per test) so the input can borrow, as the server's does.
        let contacts: &'static [ContactValue] =
            Box::leak(parse_contacts(contacts).unwrap().into_boxed_slice());
        RegisterInput {
            contacts,
            header_expires: expires,
            call_id: Box::leak(call_id.to_string().into_boxed_str()),
            cseq,
            path: vec![],
            user_agent: Some("ua".into()),
            source: "udp:127.0.0.1:1",
            now,
        }
    }

    fn kinds(a: &Applied) -> Vec<RegistrationChange> {
        a.changes.iter().map(|c| c.change).collect()
    }

    #[test]
    fn rfc3261_10_3_step6_expires_param_header_default_and_clamp() {
        let a = apply_register(
            &[],
            &input(
                &[
                    "<sip:a@h>;expires=120",
                    "<sip:b@h>",
                    "<sip:c@h>;expires=99999",
                ],
                Some(300),
                "c",
                1,
                1000,
            ),
            &cfg(),
        )
        .unwrap();
        let exp: Vec<u64> = a.bindings.iter().map(|b| b.expires_at - 1000).collect();
        assert_eq!(exp, vec![120, 300, 3600]);
        let a = apply_register(&[], &input(&["<sip:a@h>"], None, "c", 1, 1000), &cfg()).unwrap();
        assert_eq!(a.bindings[0].expires_at, 1000 + 1800);
        assert_eq!(kinds(&a), vec![RegistrationChange::Registered]);
    }

    #[test]
    fn rfc3261_10_3_step6_423_below_min_expires_but_zero_removes() {
        let e =
            apply_register(&[], &input(&["<sip:a@h>"], Some(30), "c", 1, 0), &cfg()).unwrap_err();
        assert_eq!(e, RegError::TooBrief { min: 60 });
        assert_eq!(e.status(), 423);
        let a = apply_register(&[], &input(&["<sip:a@h>"], Some(0), "c", 1, 0), &cfg()).unwrap();
        assert!(a.bindings.is_empty() && !a.changed);
    }

    #[test]
    fn rfc3261_10_3_step7_refresh_remove_and_cseq_ordering() {
        let a = apply_register(
            &[],
            &input(&["<sip:a@h>", "<sip:b@h>;q=0.5"], Some(600), "c", 1, 0),
            &cfg(),
        )
        .unwrap();
        assert_eq!(a.bindings[1].q, 500);
        // Refresh from the same Call-ID with a higher CSeq; URI compared per §19.1.4.
        let r = apply_register(
            &a.bindings,
            &input(&["<sip:a@H>"], Some(900), "c", 2, 10),
            &cfg(),
        )
        .unwrap();
        assert_eq!(kinds(&r), vec![RegistrationChange::Refreshed]);
        assert_eq!(r.bindings[0].expires_at, 910);
        assert_eq!(r.bindings[0].registered_at, 0);
        // Lower CSeq on the same Call-ID: refused, nothing applied.
        let e = apply_register(
            &r.bindings,
            &input(&["<sip:a@h>"], Some(0), "c", 1, 20),
            &cfg(),
        )
        .unwrap_err();
        assert_eq!(e, RegError::OutOfOrder { got: 1, have: 2 });
        // A different Call-ID may update regardless of CSeq.
        let r2 = apply_register(
            &r.bindings,
            &input(&["<sip:a@h>"], Some(0), "other", 1, 20),
            &cfg(),
        )
        .unwrap();
        assert_eq!(kinds(&r2), vec![RegistrationChange::Unregistered]);
        assert_eq!(r2.bindings.len(), 1);
    }

    #[test]
    fn each_change_carries_the_bindings_expiry_and_flow() {
        let a =
            apply_register(&[], &input(&["<sip:a@h>"], Some(600), "c", 1, 100), &cfg()).unwrap();
        let c = &a.changes[0];
        assert_eq!((c.expires, c.flow.as_str()), (700, "udp:127.0.0.1:1"));
        let r = apply_register(
            &a.bindings,
            &input(&["<sip:a@h>"], Some(900), "c", 2, 200),
            &cfg(),
        )
        .unwrap();
        assert_eq!(r.changes[0].expires, 1100, "a refresh: the new expiry");
        // Removed: when it ended.
        let u = apply_register(
            &r.bindings,
            &input(&["<sip:a@h>"], Some(0), "c", 3, 300),
            &cfg(),
        )
        .unwrap();
        assert_eq!(kinds(&u), vec![RegistrationChange::Unregistered]);
        assert_eq!(
            (u.changes[0].expires, u.changes[0].flow.as_str()),
            (300, "udp:127.0.0.1:1")
        );
        let mut left = r.bindings.clone();
        let gone = sweep(&mut left, 5000);
        assert_eq!(gone[0].change, RegistrationChange::Expired);
        assert_eq!(gone[0].expires, 1100, "expired: when its time was up");
    }

    #[test]
    fn same_register_again_is_answered_without_change() {
        let a = apply_register(&[], &input(&["<sip:a@h>"], Some(600), "c", 5, 0), &cfg()).unwrap();
        let again = apply_register(
            &a.bindings,
            &input(&["<sip:a@h>"], Some(600), "c", 5, 3),
            &cfg(),
        )
        .unwrap();
        assert!(!again.changed);
        assert_eq!(again.bindings, a.bindings);
    }

    #[test]
    fn rfc3261_10_3_star_removes_all_only_with_expires_zero_alone() {
        let a = apply_register(
            &[],
            &input(&["<sip:a@h>", "<sip:b@h>"], Some(600), "c", 1, 0),
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            apply_register(&a.bindings, &input(&["*"], None, "d", 1, 0), &cfg()),
            Err(RegError::BadStar)
        );
        assert_eq!(
            apply_register(
                &a.bindings,
                &input(&["*", "<sip:x@y>"], Some(0), "d", 1, 0),
                &cfg()
            ),
            Err(RegError::BadStar)
        );
        let r = apply_register(&a.bindings, &input(&["*"], Some(0), "d", 1, 0), &cfg()).unwrap();
        assert!(r.bindings.is_empty());
        assert_eq!(r.changes.len(), 2);
    }

    #[test]
    fn rfc5626_instance_and_reg_id_identify_the_binding() {
        let inst = "<sip:a@h:1>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1";
        let moved = "<sip:a@h:2>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1";
        let a = apply_register(&[], &input(&[inst], Some(600), "c", 1, 0), &cfg()).unwrap();
        assert_eq!(a.bindings[0].reg_id, Some(1));
        let r =
            apply_register(&a.bindings, &input(&[moved], Some(600), "c2", 1, 0), &cfg()).unwrap();
        assert_eq!(r.bindings.len(), 1);
        assert_eq!(r.bindings[0].contact, "sip:a@h:2");
        assert!(r.bindings[0].params.contains("reg-id=1"));
    }

    #[test]
    fn max_contacts_and_expired_bindings_are_swept() {
        let a = apply_register(
            &[],
            &input(
                &["<sip:a@h>", "<sip:b@h>", "<sip:c@h>"],
                Some(60),
                "c",
                1,
                0,
            ),
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            apply_register(
                &a.bindings,
                &input(&["<sip:d@h>"], Some(600), "z", 1, 10),
                &cfg()
            ),
            Err(RegError::TooManyContacts(3))
        );
        // After they expired there is room again, and the expired ones are reported.
        let r = apply_register(
            &a.bindings,
            &input(&["<sip:d@h>"], Some(600), "z", 1, 61),
            &cfg(),
        )
        .unwrap();
        assert_eq!(r.bindings.len(), 1);
        assert_eq!(
            r.changes
                .iter()
                .filter(|c| c.change == RegistrationChange::Expired)
                .count(),
            3
        );
    }

    #[test]
    fn bad_contacts_are_named() {
        assert_eq!(
            apply_register(&[], &input(&["<tel:+123>"], None, "c", 1, 0), &cfg()),
            Err(RegError::BadContactScheme("tel".into()))
        );
        assert_eq!(
            apply_register(&[], &input(&["<sip:a@h>;q=2"], None, "c", 1, 0), &cfg()),
            Err(RegError::BadQ("2".into()))
        );
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.1234"), None);
    }
}
