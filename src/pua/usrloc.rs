//! Presence from registrations (the job of Kamailio's `pua_usrloc`): an AOR with bindings
//! is `open`, with one `<tuple>` per phone (no `<contact>`: watchers never see a phone's
//! address); an AOR whose last binding went is `closed`.
//!
//! The registrar calls [`Usrloc`] directly ([`BindingObserver`]) after every change of an
//! AOR's bindings, with the current set, in order (not through the event bus, which may
//! drop notices). The document is published through [`Pua::publish`] under the source id
//! [`SOURCE_ID`] only when it differs from what is published. It lives until the latest
//! binding expires plus [`MARGIN`] seconds, so a missed change cannot leave an AOR open for
//! ever. A REGISTER refresh changes no document and publishes nothing: shortly before the
//! publication would end ([`MARGIN`]/2 seconds), a timer extends it to the bindings' new
//! expiry if they are still there (one write per publication lifetime, not per REGISTER).
//!
//! Tuple ids are stable: derived from the binding's `+sip.instance` (else its contact URI),
//! so a refresh or a re-registration of one phone keeps its tuple.
//!
//! At start ([`Usrloc::start`]), after the bindings and the stored publications are loaded,
//! every AOR with bindings is published if its stored document differs, and every stored
//! usrloc publication without bindings (they expired while we were down) becomes `closed`.

use super::Pua;
use crate::clock::Clock;
use crate::config::Config;
use crate::deadline::Deadlines;
use crate::presence::event::Pkg;
use crate::registrar::{BindingObserver, Registrar};
use crate::sip::body::pidf::{self, Basic, TupleSpec};
use crate::sip::Uri;
use crate::storage::Binding;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

/// The source id of usrloc publications.
pub const SOURCE_ID: &str = "usrloc";
/// Seconds a publication outlives the latest binding of its AOR.
pub const MARGIN: u64 = 10;

pub use crate::config::UserPattern;

/// The stable tuple id of a binding: `ul` and 12 hex digits of a hash of its instance id
/// (RFC 5626) or, without one, its REGISTER Call-ID and contact URI. Never of the contact
/// alone: watchers see the id, and a hash of `sip:1001@192.168.1.23:5060` is undone by
/// trying the few likely addresses; the Call-ID (random, kept by a phone for its boot cycle,
/// RFC 3261 §10.2.4) makes it unguessable.
pub fn tuple_id(b: &Binding) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    match &b.instance {
        Some(instance) => h.update(instance.as_bytes()),
        None => {
            h.update(b.call_id.as_bytes());
            h.update([0]);
            h.update(b.contact.as_bytes());
        }
    }
    format!("ul{}", &hex::encode(h.finalize())[..12])
}

/// The `open` document for these bindings (at least one): one tuple per phone, highest
/// q first; two bindings of one instance (RFC 5626 flows) are one tuple. No `<contact>`:
/// every watcher gets this document, and a phone's address (IP and port) is nobody's
/// business but the registrar's (issue 10 finding 8).
pub fn open_document(aor: &str, bindings: &[Binding]) -> String {
    let mut by_id: BTreeMap<String, &Binding> = BTreeMap::new();
    for b in bindings {
        let id = tuple_id(b);
        match by_id.get(&id) {
            Some(have) if (have.q, have.registered_at) >= (b.q, b.registered_at) => {}
            _ => {
                by_id.insert(id, b);
            }
        }
    }
    let mut tuples: Vec<TupleSpec> = by_id
        .into_iter()
        .map(|(id, b)| TupleSpec {
            id,
            basic: Basic::Open,
            contact: None,
            priority: Some(b.q),
        })
        .collect();
    tuples.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
    pidf::document(aor, &tuples)
}

/// The `closed` document that follows `previous` (what was published): each of its tuples,
/// same id (without a contact, whatever an older version published), now `closed`, so that a server merging publications by tuple id
/// (ours does; a remote one may still hold an older publication of ours after a restart)
/// cannot keep showing an old `open` tuple. Without a previous document: one closed tuple.
pub fn closed_document(aor: &str, previous: Option<&[u8]>) -> String {
    let tuples: Vec<TupleSpec> = previous
        .and_then(|b| pidf::parse(b).ok())
        .map(|doc| {
            doc.tuples()
                .map(|t| TupleSpec {
                    id: t.id().to_string(),
                    basic: Basic::Closed,
                    contact: None,
                    priority: None,
                })
                .collect()
        })
        .unwrap_or_default();
    pidf::document(aor, &tuples)
}

/// Whether a published document says nobody is there (every tuple closed).
fn is_closed(body: &[u8]) -> bool {
    pidf::parse(body).is_ok_and(|d| d.tuples().all(|t| t.basic() == Some(Basic::Closed)))
}

pub struct Usrloc {
    pua: Arc<Pua>,
    clock: Clock,
    enabled: bool,
    users: Vec<UserPattern>,
    closed_expires: u32,
    /// Changes are ignored until [`Usrloc::start`] (the presence state is not loaded yet).
    ready: AtomicBool,
    /// When each open publication is checked for extension.
    extend: Mutex<Deadlines<String>>,
    extend_changed: Notify,
}

impl Usrloc {
    pub fn new(cfg: &Config, pua: Arc<Pua>, clock: Clock) -> Arc<Usrloc> {
        Arc::new(Usrloc {
            pua,
            clock,
            enabled: cfg.pua.usrloc.enabled,
            users: cfg.pua.usrloc.users.clone(),
            closed_expires: cfg.pua.publish_expires,
            ready: AtomicBool::new(false),
            extend: Mutex::new(Deadlines::new()),
            extend_changed: Notify::new(),
        })
    }

    /// Whether registrations of `aor` publish presence.
    pub fn wants(&self, aor: &str) -> bool {
        if !self.enabled {
            return false;
        }
        // The usual pattern, "*", needs no user part: the AOR is parsed (once per REGISTER)
        // only for the patterns that do.
        if self.users.iter().any(|p| matches!(p, UserPattern::Any)) {
            return true;
        }
        let uri = match Uri::parse(aor) {
            Ok(Uri::Sip(u)) => Some(u),
            _ => None,
        };
        self.users.iter().any(|p| p.matches(aor, uri.as_ref()))
    }

    /// Brings the published state in line with the loaded bindings and starts following
    /// the registrar: every AOR with bindings is published (if its stored document
    /// differs), stored usrloc publications of AORs without bindings become `closed`, and
    /// those of users no longer configured (or all, when disabled) are removed. The
    /// current states are also sent to the remote presence server, if any.
    pub fn start(&self, registrar: &Registrar) {
        self.ready.store(true, Ordering::SeqCst);
        let presence = self.pua.presence().clone();
        for aor in presence.published_by(Pkg::Presence, SOURCE_ID) {
            if !self.wants(&aor) {
                if let Err(e) = self.pua.publish(&aor, Pkg::Presence, SOURCE_ID, b"", 0) {
                    tracing::warn!(%aor, error = %e, "usrloc publication not removed");
                }
            }
        }
        if !self.enabled {
            return;
        }
        registrar.observe_all();
        let now = self.clock.now_unix();
        for aor in presence.published_by(Pkg::Presence, SOURCE_ID) {
            // AORs without bindings: closed, if they were open.
            registrar.observe(&aor);
            self.pua.republish(&aor, Pkg::Presence, SOURCE_ID, now);
        }
    }

    /// Extends open publications before they end while their AOR still has bindings.
    /// Runs until the registrar is gone.
    pub async fn run_extensions(self: Arc<Self>, registrar: Weak<Registrar>) {
        loop {
            let next = self.extend.lock().unwrap_or_else(|p| p.into_inner()).next();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                        _ = self.extend_changed.notified() => continue,
                    }
                }
                None => {
                    self.extend_changed.notified().await;
                    continue;
                }
            }
            let due = self
                .extend
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_due(tokio::time::Instant::now().into_std());
            let Some(registrar) = registrar.upgrade() else {
                return;
            };
            for aor in due {
                // The observer sees the current bindings and extends (or closes).
                registrar.observe(&aor);
            }
        }
    }

    /// Checks `aor`'s publication shortly before it ends at `expires_at` (unix seconds).
    fn schedule_extension(&self, aor: &str, expires_at: u64) {
        let at = self
            .clock
            .instant_of(expires_at.saturating_sub(MARGIN / 2))
            .into_std();
        let mut d = self.extend.lock().unwrap_or_else(|p| p.into_inner());
        let key = aor.to_string();
        if d.get(&key) == Some(at) {
            return;
        }
        let earlier = d.next().is_none_or(|n| at < n);
        d.schedule(key, at);
        drop(d);
        if earlier {
            self.extend_changed.notify_one();
        }
    }

    fn cancel_extension(&self, aor: &str) {
        self.extend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel(&aor.to_string());
    }

    /// Open publications with an extension check pending.
    pub fn scheduled_extensions(&self) -> usize {
        self.extend.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn publish(&self, aor: &str, body: &str, expires: u64) {
        let expires = u32::try_from(expires).unwrap_or(u32::MAX).max(1);
        match self
            .pua
            .publish_unawaited(aor, Pkg::Presence, SOURCE_ID, body.as_bytes(), expires)
        {
            Ok(_) => tracing::debug!(%aor, expires, "usrloc published"),
            Err(e) => tracing::warn!(%aor, error = %e, "usrloc publication failed"),
        }
    }
}

impl BindingObserver for Usrloc {
    fn bindings_changed(&self, aor: &str, bindings: &[Binding]) {
        if !self.ready.load(Ordering::SeqCst) || !self.wants(aor) {
            return;
        }
        let now = self.clock.now_unix();
        let current = self
            .pua
            .presence()
            .publication(aor, Pkg::Presence, SOURCE_ID);
        if bindings.is_empty() {
            self.cancel_extension(aor);
            match current {
                // Never published, or already closed: watchers see closed already.
                None => {}
                Some((body, _)) if is_closed(&body) => {}
                Some((body, _)) => {
                    let closed = closed_document(aor, Some(&body));
                    self.publish(aor, &closed, self.closed_expires.into())
                }
            }
            return;
        }
        let doc = open_document(aor, bindings);
        let latest = bindings.iter().map(|b| b.expires_at).max().unwrap_or(now);
        let until = latest + MARGIN;
        if let Some((body, expires_at)) = &current {
            // Unchanged, and neither about to end nor outliving the bindings: nothing to
            // publish; the extension check comes before it ends.
            if body == doc.as_bytes() && *expires_at > now + MARGIN && *expires_at <= until {
                self.schedule_extension(aor, *expires_at);
                return;
            }
        }
        self.publish(aor, &doc, until.saturating_sub(now));
        self.schedule_extension(aor, until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, q: u16, instance: Option<&str>) -> Binding {
        Binding {
            contact: contact.into(),
            params: String::new(),
            q,
            expires_at: 2_000_000_000,
            call_id: "c".into(),
            cseq: 1,
            path: vec![],
            instance: instance.map(str::to_string),
            reg_id: None,
            user_agent: None,
            source: "udp:127.0.0.1:5060".into(),
            registered_at: 1,
        }
    }

    #[test]
    fn user_patterns() {
        let aor = "sip:1001@example.test";
        let uri = match Uri::parse(aor).unwrap() {
            Uri::Sip(u) => u,
            _ => unreachable!(),
        };
        let m = |p: &str| UserPattern::parse(p).unwrap().matches(aor, Some(&uri));
        assert!(m("*"));
        assert!(m("1001"));
        assert!(!m("100"));
        assert!(m("10*"));
        assert!(m("1001*"));
        assert!(!m("11*"));
        assert!(m("sip:1001@EXAMPLE.test"));
        assert!(!m("sip:1001@other.test"));
        for bad in ["", "10*1", "sip:example.test", "sip:10*@x", "a b", "**"] {
            assert_eq!(UserPattern::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rfc3863_open_document_one_tuple_per_phone_with_stable_ids() {
        let a = binding("sip:1001@192.0.2.1:5060", 500, None);
        let b = binding("sip:1001@192.0.2.2:5060", 1000, Some("<urn:uuid:b>"));
        let doc = open_document("sip:1001@example.test", &[a.clone(), b.clone()]);
        let parsed = pidf::parse(doc.as_bytes()).unwrap();
        let tuples: Vec<(String, Option<String>)> = parsed
            .tuples()
            .map(|t| (t.id().to_string(), t.contact()))
            .collect();
        assert_eq!(tuples.len(), 2);
        // Highest q first.
        assert_eq!(tuples[0].0, tuple_id(&b));
        // No phone's address in what watchers get.
        assert!(tuples.iter().all(|t| t.1.is_none()), "{doc}");
        assert!(!doc.contains("192.0.2."), "{doc}");
        // The same phone re-registering from another address keeps its tuple id.
        let moved = binding("sip:1001@192.0.2.9:5060", 1000, Some("<urn:uuid:b>"));
        assert_eq!(tuple_id(&moved), tuple_id(&b));
        assert_ne!(tuple_id(&a), tuple_id(&b));
        // Without an instance id the id is not a hash of the contact alone (which a watcher
        // could undo by trying addresses): the REGISTER's Call-ID goes into it.
        let mut other_boot = a.clone();
        other_boot.call_id = "d".into();
        assert_ne!(tuple_id(&other_boot), tuple_id(&a));
        use md5::Digest;
        let contact_only = format!(
            "ul{}",
            &hex::encode(md5::Md5::digest(a.contact.as_bytes()))[..12]
        );
        assert_ne!(tuple_id(&a), contact_only);
        // Order of the bindings does not matter.
        assert_eq!(
            doc,
            open_document("sip:1001@example.test", &[b.clone(), a.clone()])
        );
        // Closed keeps the tuple ids, each closed; contacts an older version published are
        // not carried over.
        let old = doc.replacen(
            "</status>",
            "</status><contact>sip:1001@192.0.2.2:5060</contact>",
            1,
        );
        let closed_old = closed_document("sip:1001@example.test", Some(old.as_bytes()));
        assert!(
            old.contains("192.0.2.2") && !closed_old.contains("192.0.2."),
            "{closed_old}"
        );
        assert_eq!(
            pidf::parse(closed_old.as_bytes()).unwrap().tuples().count(),
            2
        );
        let closed = closed_document("sip:1001@example.test", Some(doc.as_bytes()));
        let parsed = pidf::parse(closed.as_bytes()).unwrap();
        let ids: Vec<(String, Option<Basic>)> = parsed
            .tuples()
            .map(|t| (t.id().to_string(), t.basic()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (tuple_id(&b), Some(Basic::Closed)),
                (tuple_id(&a), Some(Basic::Closed))
            ]
        );
        assert!(is_closed(closed.as_bytes()) && !is_closed(doc.as_bytes()));
        assert_eq!(
            closed_document("sip:1001@example.test", None),
            pidf::closed("sip:1001@example.test")
        );
        // Two flows of one instance: one tuple.
        let flow2 = binding("sip:1001@192.0.2.3:5060", 1000, Some("<urn:uuid:b>"));
        let doc = open_document("sip:1001@example.test", &[b, flow2]);
        assert_eq!(pidf::parse(doc.as_bytes()).unwrap().tuples().count(), 1);
    }
}
