//! The registrar service (RFC 3261 §10.3): checks a REGISTER, applies it to the AOR's bindings
//! under that AOR's shard lock, writes the new binding set, and answers only once the write is
//! durable. Expiry runs on the deadline service; every change is announced on the event bus.

pub mod bindings;
pub mod quota;

use crate::clock::Clock;
use crate::config::Config;
use crate::deadline::Deadlines;
use crate::domain::Domains;
use crate::events::{Event, EventBus};
use crate::hashing::FastMap;
use crate::sip::message::default_reason;
use crate::sip::message::Parsed;
use crate::sip::{HasHeaders, HeaderName, Host, Request, Response, Uri};
use crate::storage::{durable, resolved, settled, Binding, BindingStore, StorageError};
use bindings::{apply_register, sweep, Change, RegError, RegisterInput};
use quota::{user_of_aor, PerUser};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Hears every durable change of an AOR's bindings, synchronously, from the registrar's own
/// code paths (a completed REGISTER, an expiry sweep, bindings dropped at load), unlike the
/// event bus, which may drop notices. Called with the AOR's current live bindings while
/// that AOR's shard lock is held, so calls for one AOR arrive in order and each carries the
/// newest set. Implementations must not block, await or call back into the registrar.
pub trait BindingObserver: Send + Sync {
    fn bindings_changed(&self, aor: &str, bindings: &[Binding]);
}

/// Who the request was authenticated as, decided before the registrar sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Trusted source or open mode: any AOR of our domains may be registered.
    Unchecked,
    User(String),
}

const SHARDS: usize = 64;

/// What the synchronous part of a REGISTER decided.
pub enum Step {
    /// Answer now (nothing to write, or an error).
    Done(Response),
    /// Answer once the write is durable.
    Pending(Pending),
}

pub struct Pending {
    pub durable: crate::storage::Durable,
    pub rest: PendingRegister,
}

/// A REGISTER whose change is applied in memory and queued for disk, waiting to be answered.
pub struct PendingRegister {
    aor: String,
    bindings: Vec<Binding>,
    changes: Vec<Change>,
    ok: Response,
}

pub struct Registrar {
    cfg: crate::config::RegistrarConfig,
    domains: Domains,
    /// `[[bla.lines]]`: shared lines their members may register.
    bla: crate::config::BlaConfig,
    shards: Vec<Mutex<FastMap<String, Vec<Binding>>>>,
    store: Arc<dyn BindingStore>,
    events: EventBus,
    clock: Clock,
    expiry: Mutex<Deadlines<String>>,
    expiry_changed: Notify,
    /// AORs with at least one binding (kept with the shard maps, read without locking them).
    aors: AtomicUsize,
    /// Bindings per user across its AORs, changed with the shard maps (locked inside an
    /// AOR's shard lock, never the other way round).
    per_user: Mutex<PerUser>,
    observer: Option<Arc<dyn BindingObserver>>,
}

fn shard_of(aor: &str) -> usize {
    (crate::hashing::fixed_hash(aor) as usize) % SHARDS
}

impl Registrar {
    /// The home domain (`[server] domain`), for the control API's `status`.
    pub fn domain(&self) -> &str {
        self.domains.primary()
    }

    pub fn new(
        cfg: &Config,
        store: Arc<dyn BindingStore>,
        events: EventBus,
        clock: Clock,
    ) -> Arc<Registrar> {
        Registrar::with_observer(cfg, store, events, clock, None)
    }

    /// A registrar that tells `observer` (pua_usrloc) every change of an AOR's bindings.
    pub fn with_observer(
        cfg: &Config,
        store: Arc<dyn BindingStore>,
        events: EventBus,
        clock: Clock,
        observer: Option<Arc<dyn BindingObserver>>,
    ) -> Arc<Registrar> {
        let domains = Domains::new(cfg);
        Arc::new(Registrar {
            cfg: cfg.registrar.clone(),
            domains,
            bla: cfg.bla.clone(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(crate::hashing::map()))
                .collect(),
            store,
            events,
            clock,
            expiry: Mutex::new(Deadlines::new()),
            expiry_changed: Notify::new(),
            aors: AtomicUsize::new(0),
            per_user: Mutex::new(PerUser::default()),
            observer,
        })
    }

    /// Tells the observer the current bindings of `aor` (none: an empty slice).
    pub fn observe(&self, aor: &str) {
        let Some(observer) = &self.observer else {
            return;
        };
        let now = self.clock.now_unix();
        let shard = self.lock(aor);
        match shard.get(aor) {
            Some(list) if list.iter().all(|b| b.expires_at > now) => {
                observer.bindings_changed(aor, list)
            }
            Some(list) => {
                let live: Vec<Binding> = list
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect();
                observer.bindings_changed(aor, &live)
            }
            None => observer.bindings_changed(aor, &[]),
        }
    }

    /// Tells the observer the current bindings of every AOR that has some (at start, once
    /// the observer's side is loaded).
    pub fn observe_all(&self) {
        if self.observer.is_none() {
            return;
        }
        for i in 0..SHARDS {
            let aors: Vec<String> = self.shards[i]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            for aor in aors {
                self.observe(&aor);
            }
        }
    }

    /// Loads the stored bindings, drops the ones that expired while we were down (announcing
    /// them) and schedules the rest. Sets stored under another spelling of an AOR (before one
    /// canonical form existed: `sip:6333@192.0.2.10:5060`, `sips:`, an alias, upper case) are
    /// merged into the canonical AOR ([`Domains::aor`]) and moved there on disk. Returns the
    /// number of live bindings.
    pub async fn load(&self) -> Result<usize, StorageError> {
        let now = self.clock.now_unix();
        let mut merged: HashMap<String, (Vec<Binding>, Vec<String>)> = HashMap::new();
        for (key, list) in self.store.load_bindings()? {
            let canonical = self.domains.aor_of_key(&key);
            let (set, old_keys) = merged.entry(canonical.clone()).or_default();
            if canonical != key {
                old_keys.push(key);
            }
            merge_bindings(set, list);
        }
        let mut live = 0;
        let mut writes = Vec::new();
        for (aor, (mut list, old_keys)) in merged {
            let gone = sweep(&mut list, now);
            if !gone.is_empty() || !old_keys.is_empty() {
                // The canonical set first: a crash between the writes loses nothing.
                self.write_at_start(&mut writes, &aor, &list).await?;
            }
            if !old_keys.is_empty() {
                tracing::info!(%aor, from = ?old_keys, "bindings moved to their canonical AOR");
                for old in &old_keys {
                    self.write_at_start(&mut writes, old, &[]).await?;
                }
            }
            if !gone.is_empty() {
                self.announce(&aor, &gone);
            }
            live += list.len();
            let dropped = !gone.is_empty();
            if !list.is_empty() {
                self.schedule(&aor, &list);
                let mut shard = self.lock(&aor);
                self.per_user().set(user_of_aor(&aor), 0, list.len());
                shard.insert(aor.clone(), list);
                drop(shard);
                self.aors.fetch_add(1, Ordering::Relaxed);
            }
            if dropped {
                self.observe(&aor);
            }
        }
        for w in writes {
            durable(w).await?;
        }
        Ok(live)
    }

    /// Queues a write made at start. After a long downtime more AORs may have expired than
    /// the bounded write queue holds: when it is full, waits for what is queued, then retries.
    async fn write_at_start(
        &self,
        queued: &mut Vec<crate::storage::Durable>,
        aor: &str,
        list: &[Binding],
    ) -> Result<(), StorageError> {
        let mut write = self.store.save_bindings(aor, list);
        match settled(&mut write) {
            Some(Err(StorageError::Busy { .. })) => {
                for w in queued.drain(..) {
                    durable(w).await?;
                }
                write = self.store.save_bindings(aor, list);
            }
            Some(result) => write = resolved(result),
            None => {}
        }
        queued.push(write);
        Ok(())
    }

    fn lock(&self, aor: &str) -> std::sync::MutexGuard<'_, FastMap<String, Vec<Binding>>> {
        // A panic while holding a shard lock cannot leave a half-applied binding set (we
        // replace whole vectors), so a poisoned lock is safe to keep using.
        self.shards[shard_of(aor)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn per_user(&self) -> std::sync::MutexGuard<'_, PerUser> {
        self.per_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bindings `user` holds across all its AORs (`registrar.max_bindings_per_user`).
    pub fn bindings_of_user(&self, user: &str) -> usize {
        self.per_user().count(user)
    }

    fn schedule(&self, aor: &str, list: &[Binding]) {
        let mut exp = self.expiry.lock().unwrap_or_else(|p| p.into_inner());
        match list.iter().map(|b| b.expires_at).min() {
            Some(at) => exp.schedule(aor.to_string(), self.clock.instant_of(at).into_std()),
            None => {
                exp.cancel(&aor.to_string());
            }
        }
        drop(exp);
        self.expiry_changed.notify_one();
    }

    fn announce(&self, aor: &str, changes: &[Change]) {
        for c in changes {
            self.events.publish(Event::Registration {
                change: c.change,
                aor: aor.to_string(),
                contact: c.contact.clone(),
                user_agent: c.user_agent.clone(),
                expires: c.expires,
                flow: c.flow.clone(),
            });
        }
    }

    /// Current bindings of an AOR (canonical form), expired ones left out.
    pub fn lookup(&self, aor: &str) -> Vec<Binding> {
        let now = self.clock.now_unix();
        self.lock(aor)
            .get(aor)
            .map(|l| l.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default()
    }

    /// Every AOR with its current bindings (expired ones left out), sorted by AOR: for the
    /// control API. One shard locked at a time.
    pub fn snapshot(&self) -> Vec<(String, Vec<Binding>)> {
        let now = self.clock.now_unix();
        let mut v = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (aor, list) in map.iter() {
                let live: Vec<Binding> = list
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect();
                if !live.is_empty() {
                    v.push((aor.clone(), live));
                }
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn binding_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|m| m.values().map(Vec::len).sum::<usize>())
                    .unwrap_or(0)
            })
            .sum()
    }

    pub fn aor_count(&self) -> usize {
        self.aors.load(Ordering::Relaxed)
    }

    fn serves(&self, host: &Host) -> bool {
        self.domains.serves(host)
    }

    /// Handles an authenticated (or trusted) REGISTER; `source` is the transport address it
    /// came from. `to_tag` is the tag our response carries.
    pub async fn register(
        &self,
        req: &Request,
        who: &Identity,
        source: &str,
        to_tag: &str,
    ) -> Response {
        let parsed = match req.validate() {
            Ok(p) => p,
            Err(e) => return req.response(400, &e.to_string(), Some(to_tag)),
        };
        match self.begin(req, &parsed, who, source, to_tag) {
            Step::Done(r) => r,
            Step::Pending(p) => {
                let result = durable(p.durable).await;
                self.complete(p.rest, result)
            }
        }
    }

    /// The synchronous part of a REGISTER: checks, applies the change under the AOR's lock and
    /// queues its write. The caller answers a [`Step::Done`] at once; a [`Step::Pending`] once
    /// its write is durable, through [`Registrar::complete`].
    pub fn begin(
        &self,
        req: &Request,
        parsed: &Parsed,
        who: &Identity,
        source: &str,
        to_tag: &str,
    ) -> Step {
        match self.register_inner(req, parsed, who, source, to_tag) {
            Ok(step) => step,
            Err((status, reason, extra)) => {
                let mut r = req.response(status, &reason, Some(to_tag));
                for (k, v) in extra {
                    r.headers.push(k, v);
                }
                Step::Done(r)
            }
        }
    }

    /// Finishes a pending REGISTER once its write resolved: announces the change and returns
    /// the 200, or a 500 when the write failed (the change is then not acknowledged).
    pub fn complete(&self, p: PendingRegister, written: Result<(), StorageError>) -> Response {
        match written {
            Ok(()) => {
                self.schedule(&p.aor, &p.bindings);
                self.announce(&p.aor, &p.changes);
                self.observe(&p.aor);
                p.ok
            }
            Err(e) => {
                tracing::error!(aor = %p.aor, error = %e, "binding not stored");
                not_stored(p.ok)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn register_inner(
        &self,
        req: &Request,
        parsed: &Parsed,
        who: &Identity,
        source: &str,
        to_tag: &str,
    ) -> Result<Step, (u16, String, Vec<(HeaderName, String)>)> {
        let fail = |status: u16, reason: String| (status, reason, vec![]);
        // RFC 3327 §5.3 / RFC 3261 §10.3 step 2: we support "path" and nothing else.
        let unsupported: Vec<&str> = req
            .headers
            .list(HeaderName::Require)
            .into_iter()
            .filter(|o| !o.eq_ignore_ascii_case("path"))
            .collect();
        if !unsupported.is_empty() {
            return Err((
                420,
                default_reason(420).to_string(),
                vec![(HeaderName::Unsupported, unsupported.join(", "))],
            ));
        }
        let to_uri = match &parsed.to.uri {
            Uri::Sip(u) => u,
            other => {
                return Err(fail(
                    416,
                    format!("Unsupported URI Scheme {} in To", other.scheme()),
                ))
            }
        };
        if to_uri.user.is_none() {
            return Err(fail(400, "To URI has no user part to register".into()));
        }
        // Step 5: the AOR must belong to a domain we are registrar for.
        if !self.serves(&to_uri.host) {
            return Err(fail(
                403,
                format!("Domain {} is not served here", to_uri.host),
            ));
        }
        let aor = self.domains.aor(to_uri);
        // Step 4: an authenticated user may register only its own AOR, or a shared line
        // (`[[bla.lines]]`) it is the user or a member of.
        if let Identity::User(name) = who {
            let shared_line = || {
                self.bla
                    .line(&self.domains, &aor)
                    .is_some_and(|l| l.may_register(name))
            };
            if !self.domains.is_aor_of(to_uri, name) && !shared_line() {
                return Err(fail(403, format!("User {name} may not register {aor}")));
            }
        }
        let input = RegisterInput {
            contacts: &parsed.contacts,
            header_expires: parsed.expires,
            call_id: req.call_id().map_err(|e| fail(400, e.to_string()))?,
            cseq: parsed.cseq.seq,
            path: req
                .headers
                .list(HeaderName::Path)
                .into_iter()
                .map(String::from)
                .collect(),
            user_agent: req.headers.get(HeaderName::UserAgent).map(String::from),
            source,
            now: self.clock.now_unix(),
        };

        // Apply under the shard lock and queue the write before releasing it, so writes of
        // one AOR reach the disk in the order they were applied.
        let (applied, write) = {
            let mut shard = self.lock(&aor);
            let existing = shard.get(&aor).map(Vec::as_slice).unwrap_or(&[]);
            let applied = apply_register(existing, &input, &self.cfg).map_err(|e| match e {
                RegError::TooBrief { min } => (
                    423,
                    default_reason(423).to_string(),
                    vec![(HeaderName::MinExpires, min.to_string())],
                ),
                e => (e.status(), e.to_string(), vec![]),
            })?;
            let write = if applied.changed {
                // Across every AOR of the user (ports, aliases, schemes): one user cannot
                // take the room of everybody else's AORs.
                let user = user_of_aor(&aor);
                let before = shard.get(&aor).map_or(0, Vec::len);
                let after = applied.bindings.len();
                self.per_user()
                    .admit(user, before, after, self.cfg.max_bindings_per_user)
                    .map_err(|e| fail(e.status(), e.to_string()))?;
                if !applied.bindings.is_empty()
                    && !shard.contains_key(&aor)
                    && self.aors.load(Ordering::Relaxed) >= self.cfg.max_aors
                {
                    // Bounded even where nobody authenticates (open mode, trusted networks):
                    // each AOR costs memory and disk.
                    self.per_user().set(user, after, before);
                    return Err(fail(
                        403,
                        format!(
                            "Registrar full: {} AORs registered (registrar.max_aors)",
                            self.cfg.max_aors
                        ),
                    ));
                }
                // Queued before memory changes: a write the store refuses (its queue is full)
                // leaves the bindings as they were, and the REGISTER is answered 503 with
                // Retry-After, never acknowledged.
                let mut write = self.store.save_bindings(&aor, &applied.bindings);
                match settled(&mut write) {
                    Some(Err(e)) => {
                        self.per_user().set(user, after, before);
                        tracing::debug!(%aor, error = %e, "binding not queued for disk");
                        let answer = e.answer();
                        let mut r = req.response(answer.status, answer.reason, Some(to_tag));
                        if let Some(secs) = answer.retry_after {
                            r.headers.push_raw("Retry-After", secs.to_string());
                        }
                        return Ok(Step::Done(r));
                    }
                    Some(Ok(())) => write = resolved(Ok(())),
                    None => {}
                }
                if applied.bindings.is_empty() {
                    if shard.remove(&aor).is_some() {
                        self.aors.fetch_sub(1, Ordering::Relaxed);
                    }
                } else {
                    if !shard.contains_key(&aor) {
                        self.aors.fetch_add(1, Ordering::Relaxed);
                    }
                    shard.insert(aor.clone(), applied.bindings.clone());
                }
                Some(write)
            } else {
                None
            };
            (applied, write)
        };
        let mut resp = req.response(200, "OK", Some(to_tag));
        let now = input.now;
        for b in &applied.bindings {
            resp.headers.push(
                HeaderName::Contact,
                format!(
                    "<{}>{};expires={}",
                    b.contact,
                    b.params,
                    b.expires_at.saturating_sub(now)
                ),
            );
        }
        // RFC 3327 §5.3: echo Path only to a UA that said it supports it.
        if !input.path.is_empty()
            && req
                .headers
                .list(HeaderName::Supported)
                .iter()
                .any(|s| s.eq_ignore_ascii_case("path"))
        {
            resp.headers.push(HeaderName::Path, input.path.join(", "));
        }
        resp.headers.push(HeaderName::Date, http_date(now));
        match write {
            None => Ok(Step::Done(resp)),
            Some(durable) => Ok(Step::Pending(Pending {
                durable,
                rest: PendingRegister {
                    ok: resp,
                    aor,
                    bindings: applied.bindings,
                    changes: applied.changes,
                },
            })),
        }
    }

    /// Expires bindings on time. Runs until the registrar is dropped by everyone else.
    pub async fn run_expiry(self: Arc<Self>) {
        loop {
            let next = self.expiry.lock().map(|e| e.next()).unwrap_or(None);
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                        _ = self.expiry_changed.notified() => continue,
                    }
                }
                None => {
                    self.expiry_changed.notified().await;
                    continue;
                }
            }
            let due = self
                .expiry
                .lock()
                .map(|mut e| e.pop_due(tokio::time::Instant::now().into_std()))
                .unwrap_or_default();
            let now = self.clock.now_unix();
            for aor in due {
                let (gone, remaining, write) = {
                    let mut shard = self.lock(&aor);
                    let Some(list) = shard.get_mut(&aor) else {
                        continue;
                    };
                    let before = list.len();
                    let gone = sweep(list, now);
                    let remaining = list.clone();
                    self.per_user()
                        .set(user_of_aor(&aor), before, remaining.len());
                    if remaining.is_empty() && shard.remove(&aor).is_some() {
                        self.aors.fetch_sub(1, Ordering::Relaxed);
                    }
                    let write =
                        (!gone.is_empty()).then(|| self.store.save_bindings(&aor, &remaining));
                    (gone, remaining, write)
                };
                if let Some(w) = write {
                    if let Err(e) = durable(w).await {
                        tracing::error!(%aor, error = %e, "expiry not stored");
                    }
                }
                self.schedule(&aor, &remaining);
                self.announce(&aor, &gone);
                if !gone.is_empty() {
                    self.observe(&aor);
                }
            }
        }
    }
}

/// The 500 for a REGISTER whose bindings could not be stored, made from its 200 when the
/// write fails (not built beside every 200): the headers copied from the request (which
/// begin the 200, To with our tag), without what the 200 added (Contact, Path, Date).
fn not_stored(mut ok: Response) -> Response {
    ok.status = 500;
    ok.reason = "Bindings could not be stored".into();
    ok.headers.0.retain(|h| {
        matches!(
            h.kind,
            HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
        )
    });
    ok
}

/// Adds the bindings of another spelling of an AOR to its set: a contact both hold (the same
/// instance, or equivalent URIs) keeps the binding that lasts longer.
fn merge_bindings(set: &mut Vec<Binding>, more: Vec<Binding>) {
    for b in more {
        let same = |a: &Binding| match (&a.instance, &b.instance) {
            (Some(x), Some(y)) => x == y && a.reg_id == b.reg_id,
            _ => match (Uri::parse(&a.contact), Uri::parse(&b.contact)) {
                (Ok(x), Ok(y)) => x.equivalent(&y),
                _ => a.contact == b.contact,
            },
        };
        match set.iter_mut().find(|a| same(a)) {
            Some(a) if a.expires_at < b.expires_at => *a = b,
            Some(_) => {}
            None => set.push(b),
        }
    }
}

/// RFC 1123 date for the Date header (RFC 3261 §20.17), from unix seconds.
/// Clamped to the last second `httpdate` can print (it panics past 9999-12-31): a clock that
/// far off must not take the request path down.
pub fn http_date(unix: u64) -> String {
    const LAST: u64 = 253_402_300_799;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.min(LAST));
    httpdate::fmt_http_date(at)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_500_made_from_the_200_is_the_requests_500() {
        use crate::sip::{HeaderName, Message};
        let raw = "REGISTER sip:example.test SIP/2.0\r\n\
            Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa\r\n\
            Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKb\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:1001@example.test>;tag=f1\r\n\
            To: <sip:1001@example.test>\r\n\
            Call-ID: c1@192.0.2.1\r\n\
            CSeq: 2 REGISTER\r\n\
            Contact: <sip:1001@192.0.2.1:5060>\r\n\
            Supported: path\r\n\
            Content-Length: 0\r\n\r\n";
        let Ok(Message::Request(req)) =
            crate::sip::parse::parse_message(raw.as_bytes(), &Default::default())
        else {
            panic!("test request does not parse");
        };
        let mut ok = req.response(200, "OK", Some("t1"));
        ok.headers
            .push(HeaderName::Contact, "<sip:1001@192.0.2.1:5060>;expires=60");
        ok.headers.push(HeaderName::Path, "<sip:p.example.test;lr>");
        ok.headers.push(HeaderName::Date, super::http_date(0));
        let failed = super::not_stored(ok);
        assert_eq!(
            failed,
            req.response(500, "Bindings could not be stored", Some("t1"))
        );
    }

    #[test]
    fn rfc1123_dates() {
        assert_eq!(super::http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            super::http_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        assert_eq!(
            super::http_date(951_782_400),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(super::http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }
}
