//! The control API's methods over the server's services (see the README's "Control API").
//!
//! Every method reads the services through their snapshots or changes them through the same
//! entry points the SIP side uses (`Pua::publish`, `Pua::subscribe`, the presence server's
//! authorization, the users file). Params are checked before anything changes; every error
//! names the field (`params.expires: ...`) or the thing that was not found.

use super::rpc::{self, RpcError};
use super::{Answer, Methods};
use crate::presence::event::Pkg;
use crate::server::Core;
use crate::storage::{RuleAction, RuleRecord, StorageError, UserRecord};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Items a list answers at most at once.
pub const MAX_LIMIT: u64 = 1000;
/// Items a list answers when `limit` is not given.
pub const DEFAULT_LIMIT: u64 = 100;
/// The longest string param (URIs, names, filters); bodies have their own bound.
const MAX_STRING: usize = 1024;
/// The largest document `publish` takes.
pub const MAX_BODY: usize = 60 * 1024;
/// The longest expiry a method takes, seconds.
const MAX_EXPIRES: u32 = 86_400;
/// The longest (and the default) expiry of `message_summary`: a year.
const MAX_MWI_EXPIRES: u32 = 365 * 86_400;

pub struct Api {
    core: Arc<Core>,
    started: tokio::time::Instant,
    /// The store's space as last read, and when: reading it walks every record, and a
    /// dashboard asks for `status` every 2 s.
    space: Arc<std::sync::Mutex<Option<(std::time::Instant, SpaceReading)>>>,
}

type SpaceReading = Option<Result<crate::storage::StorageSpace, StorageError>>;

/// How long a reading of the store's space is answered again before the store is read anew.
const SPACE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// A method's params: an object (or none), read field by field.
struct Params<'a> {
    map: Option<&'a Map<String, Value>>,
}

fn bad(field: &str, what: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(format!("params.{field}: {what}"))
}

impl<'a> Params<'a> {
    fn new(params: &'a Value, allowed: &[&str]) -> Result<Params<'a>, RpcError> {
        let map = match params {
            Value::Null => None,
            Value::Object(m) => Some(m),
            _ => return Err(RpcError::invalid_params("params: must be an object")),
        };
        if let Some(m) = map {
            if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
                let expected = if allowed.is_empty() {
                    "this method takes no params".to_string()
                } else {
                    format!("expected one of {}", allowed.join(", "))
                };
                return Err(bad(k, format!("unknown field ({expected})")));
            }
        }
        Ok(Params { map })
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(name)).filter(|v| !v.is_null())
    }

    fn opt_str(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() > MAX_STRING => {
                Err(bad(name, format!("longer than {MAX_STRING} bytes")))
            }
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                Err(bad(name, "must not hold control characters"))
            }
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad(name, "must be a string")),
        }
    }

    fn str(&self, name: &str) -> Result<&'a str, RpcError> {
        match self.opt_str(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s.trim()),
            Some(_) => Err(bad(name, "must not be empty")),
            None => Err(bad(name, "required")),
        }
    }

    fn opt_u32(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u32>,
        what: &str,
    ) -> Result<Option<u32>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| range.contains(n))
                .map(Some)
                .ok_or_else(|| {
                    bad(
                        name,
                        format!("must be {what} {}..={}", range.start(), range.end()),
                    )
                }),
        }
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(name, "must be true or false")),
        }
    }

    /// A `sip:`/`sips:` URI as the presence server keys it (canonical AOR).
    fn aor(&self, core: &Core, name: &str) -> Result<String, RpcError> {
        let s = self.str(name)?;
        core.presence
            .canonical_aor(s)
            .ok_or_else(|| bad(name, format!("{s:?} is not a sip: URI")))
    }

    /// An event package key; `publishable`: one PUBLISH (and `publish`) may set.
    fn pkg(&self, name: &str, publishable: bool) -> Result<Pkg, RpcError> {
        let s = self.str(name)?;
        let names = || {
            Pkg::ALL
                .iter()
                .filter(|p| !publishable || p.publishable())
                .map(|p| p.key())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Pkg::from_key(&s.trim().to_ascii_lowercase())
            .filter(|p| !publishable || p.publishable())
            .ok_or_else(|| {
                bad(
                    name,
                    format!("unknown event package {s:?} (one of {})", names()),
                )
            })
    }

    fn opt_pkg(&self, name: &str) -> Result<Option<Pkg>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.pkg(name, false).map(Some),
        }
    }

    /// An id we handed out (or one the caller picks for a publication): `[A-Za-z0-9._-]`.
    fn id(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(s)
                if !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Ok(Some(s))
            }
            Some(_) => Err(bad(name, "must be 1 to 64 of A-Z a-z 0-9 . _ -")),
        }
    }
}

/// `{"filter","offset","limit"}` of a list.
struct Page<'a> {
    filter: Option<&'a str>,
    offset: u64,
    limit: u64,
}

const PAGE_FIELDS: [&str; 3] = ["filter", "offset", "limit"];

impl<'a> Page<'a> {
    fn of(p: &Params<'a>) -> Result<Page<'a>, RpcError> {
        let num = |name: &str| match p.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(name, "must be a whole number 0 or more")),
        };
        let limit = num("limit")?.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad("limit", format!("must be 1..={MAX_LIMIT}")));
        }
        Ok(Page {
            filter: p.opt_str("filter")?.filter(|f| !f.is_empty()),
            offset: num("offset")?.unwrap_or(0),
            limit,
        })
    }

    /// `{"total": matching items, "items": the page of them}`.
    fn answer(&self, items: impl IntoIterator<Item = Value>) -> Value {
        let matching: Vec<Value> = items
            .into_iter()
            .filter(|v| self.filter.is_none_or(|f| has_text(v, f)))
            .collect();
        let total = matching.len();
        let page: Vec<Value> = matching
            .into_iter()
            .skip(usize::try_from(self.offset).unwrap_or(usize::MAX))
            .take(usize::try_from(self.limit).unwrap_or(usize::MAX))
            .collect();
        json!({ "total": total, "items": page })
    }
}

/// Whether some text of the item (at any depth) holds `needle`.
fn has_text(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(a) => a.iter().any(|x| has_text(x, needle)),
        Value::Object(m) => m.values().any(|x| has_text(x, needle)),
        _ => false,
    }
}

fn internal(what: impl std::fmt::Display) -> RpcError {
    RpcError::new(rpc::INTERNAL_ERROR, what.to_string())
}

/// A failed write: a full queue is a refusal (try again), anything else internal.
fn storage_error(e: StorageError) -> RpcError {
    match e {
        StorageError::Busy { .. } => RpcError::new(rpc::REFUSED, e.to_string()),
        e => internal(e),
    }
}

async fn stored(d: crate::storage::Durable) -> Result<(), RpcError> {
    crate::storage::durable(d).await.map_err(storage_error)
}

fn rule_json(r: &RuleRecord) -> Value {
    json!({
        "id": r.id,
        "presentity": r.presentity,
        "watcher": r.watcher,
        "event": r.event,
        "action": r.action.as_str(),
        "created": r.created_at,
    })
}

/// `status.storage`: the writes (flush times, queue) and the space (what the store holds,
/// live key plus value bytes per tree, and its size on disk); `null` for a store that tells
/// neither.
fn storage_json(
    stats: Option<crate::storage::StoreStats>,
    space: Option<Result<crate::storage::StorageSpace, StorageError>>,
) -> Value {
    let mut m = Map::new();
    if let Some(s) = stats {
        m.insert("flush_ms_last".into(), json!(s.flush_ms_last));
        m.insert("flush_ms_max".into(), json!(s.flush_ms_max));
        m.insert("queued".into(), json!(s.queued));
        m.insert("refused".into(), json!(s.refused));
    }
    match space {
        Some(Ok(sp)) => {
            let trees: Map<String, Value> = sp
                .trees
                .iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        json!({ "records": t.records, "bytes": t.bytes }),
                    )
                })
                .collect();
            m.insert("backend".into(), json!(sp.backend));
            m.insert("on_disk".into(), json!(sp.on_disk));
            m.insert("live_bytes".into(), json!(sp.live_bytes));
            m.insert("records".into(), json!(sp.records));
            m.insert("trees".into(), Value::Object(trees));
        }
        Some(Err(e)) => {
            m.insert("space_error".into(), json!(e.to_string()));
        }
        None => {}
    }
    if m.is_empty() {
        Value::Null
    } else {
        Value::Object(m)
    }
}

impl Api {
    pub fn new(core: Arc<Core>) -> Arc<Api> {
        Arc::new(Api {
            core,
            started: tokio::time::Instant::now(),
            space: Arc::new(std::sync::Mutex::new(None)),
        })
    }

    /// One request: `method` with its `params` (an object, or `Null`).
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let p = &params;
        match method {
            "status" => {
                Params::new(p, &[])?;
                Ok(self.status())
            }
            "registrations" => self.page(p, &[], |_| Ok(self.registrations())),
            "calls" => self.page(p, &[], |_| Ok(self.calls())),
            "presentities" => self.page(p, &[], |_| Ok(self.presentities())),
            "subscriptions" => self.page(p, &[], |_| Ok(self.subscriptions())),
            "lines" => self.page(p, &[], |_| Ok(self.lines())),
            "rules" => self.page(p, &[], |_| {
                Ok(self.core.presence.rules().iter().map(rule_json).collect())
            }),
            "users_list" => self.page(p, &[], |_| self.users_list()),
            "publish" => self.publish(p).await,
            "subscribe" => self.subscribe(p),
            "unsubscribe" => self.unsubscribe(p),
            "refresh_watchers" => self.refresh_watchers(p),
            "message_summary" => self.message_summary(p).await,
            "approve" => self.rule(p, RuleAction::Allow).await,
            "block" => self.rule(p, RuleAction::Block).await,
            "rule_remove" => self.rule_remove(p).await,
            "users_add" => self.users_add(p).await,
            "users_remove" => self.users_remove(p).await,
            other => Err(RpcError::new(
                rpc::METHOD_NOT_FOUND,
                format!("unknown method {other:?}"),
            )),
        }
    }

    /// A list method: its page params (and `extra` ones), then the page of `items`.
    fn page(
        &self,
        params: &Value,
        extra: &[&str],
        items: impl FnOnce(&Params<'_>) -> Result<Vec<Value>, RpcError>,
    ) -> Result<Value, RpcError> {
        let allowed: Vec<&str> = PAGE_FIELDS.iter().chain(extra).copied().collect();
        let p = Params::new(params, &allowed)?;
        let page = Page::of(&p)?;
        Ok(page.answer(items(&p)?))
    }

    // ------------------------------------------------------------------------- snapshots

    fn status(&self) -> Value {
        let core = &self.core;
        let counts = core.presence.counts();
        let by_package: Map<String, Value> = counts
            .by_package
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        let listen: Vec<String> = core
            .transport
            .local_addrs()
            .into_iter()
            .map(|(proto, addr)| format!("{}:{addr}", proto_name(proto)))
            .collect();
        let in_flight = core.in_flight();
        let notifies = core.presence.notify_counts().totals();
        json!({
            "api": rpc::API_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": self.started.elapsed().as_secs(),
            "domain": core.registrar.domain(),
            "listen": listen,
            "notifies": {
                "sent": notifies.sent,
                "retried": notifies.retried,
                "failed": notifies.failed,
            },
            "counts": {
                "aors": core.registrar.aor_count(),
                "bindings": core.registrar.binding_count(),
                "calls": core.proxy.calls().iter().filter(|c| !c.is_terminated()).count(),
                "presentities": counts.presentities,
                "publications": core.presence.publication_count(),
                "subscriptions": {
                    "total": counts.active + counts.pending,
                    "by_package": by_package,
                    "by_state": { "active": counts.active, "pending": counts.pending },
                },
                "lamps": counts.lamps,
                "api_subscriptions": core.pua.admin().list().len(),
                "rules": core.presence.rules().len(),
                "shared_lines": core.bla.lines().len(),
            },
            "storage": storage_json(core.presence.store_stats(), self.store_space()),
            "transactions": in_flight.server_transactions + in_flight.client_transactions,
        })
    }

    /// The store's space, read at most every [`SPACE_MAX_AGE`].
    fn store_space(&self) -> SpaceReading {
        let mut cached = self.space.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((at, reading)) if at.elapsed() < SPACE_MAX_AGE => reading.clone(),
            _ => {
                let reading = self.core.presence.store_space();
                *cached = Some((std::time::Instant::now(), reading.clone()));
                reading
            }
        }
    }

    fn registrations(&self) -> Vec<Value> {
        self.core
            .registrar
            .snapshot()
            .into_iter()
            .map(|(aor, bindings)| {
                let contacts: Vec<Value> = bindings
                    .iter()
                    .map(|b| {
                        json!({
                            "contact": b.contact,
                            "expires": b.expires_at,
                            "user_agent": b.user_agent,
                            "flow": b.source,
                            "q": f64::from(b.q) / 1000.0,
                            "instance": b.instance,
                            "reg_id": b.reg_id,
                            "registered": b.registered_at,
                        })
                    })
                    .collect();
                json!({ "aor": aor, "contacts": contacts })
            })
            .collect()
    }

    fn calls(&self) -> Vec<Value> {
        let mut calls = self.core.proxy.calls();
        calls.retain(|c| !c.is_terminated());
        calls.sort_by_key(|c| c.created_ms);
        calls
            .iter()
            .map(|c| {
                let branches: Vec<Value> = c
                    .branches
                    .iter()
                    .map(|b| {
                        json!({
                            "target": b.target,
                            "state": b.state.as_str(),
                            "code": b.code,
                            "flow": b.flow.map(|f| f.to_string()),
                        })
                    })
                    .collect();
                json!({
                    "call_id": c.key.call_id,
                    "caller": c.caller.uri,
                    "callee": c.callee.uri,
                    "state": c.state.as_str(),
                    "held": c.is_held(),
                    "since": c.created_ms / 1000,
                    "confirmed": c.confirmed_ms.map(|ms| ms / 1000),
                    "caller_flow": c.caller_flow.to_string(),
                    "branches": branches,
                })
            })
            .collect()
    }

    fn presentities(&self) -> Vec<Value> {
        self.core
            .presence
            .presentities()
            .into_iter()
            .map(|p| {
                let pubs: Vec<Value> = p
                    .publications
                    .iter()
                    .map(|x| {
                        json!({
                            "source": x.source,
                            "etag": x.etag,
                            "expires": x.expires_at,
                            "content_type": x.content_type,
                        })
                    })
                    .collect();
                json!({
                    "presentity": p.presentity,
                    "package": p.event,
                    "watchers": p.watchers,
                    "publications": pubs,
                })
            })
            .collect()
    }

    /// The presence server's watchers, then the API's own subscriptions (`"kind": "api"`).
    fn subscriptions(&self) -> Vec<Value> {
        let mut subs = self.core.presence.subscriptions();
        subs.sort_by(|a, b| {
            (&a.presentity, a.event, &a.watcher).cmp(&(&b.presentity, b.event, &b.watcher))
        });
        let mut v: Vec<Value> = subs
            .iter()
            .map(|s| {
                json!({
                    "kind": "watcher",
                    "watcher": s.watcher,
                    "presentity": s.presentity,
                    "package": s.event,
                    "state": match s.state {
                        crate::storage::SubState::Active => "active",
                        crate::storage::SubState::Pending => "pending",
                    },
                    "expires": s.expires_at,
                    // The last NOTIFY's: its CSeq, and the version its body carried (the
                    // record holds the next one; `null` before a body was sent).
                    "cseq": s.local_cseq,
                    "version": s.version.checked_sub(1),
                    "failures": s.failures,
                    "user_agent": s.user_agent,
                    "last_answer": s.last_answer,
                })
            })
            .collect();
        v.extend(self.core.pua.admin().list().into_iter().map(|a| {
            json!({
                "kind": "api",
                "id": a.id,
                "watcher": a.watcher,
                "presentity": a.target,
                "package": a.event,
                "state": a.state,
                // The notifier's grant is the client's to keep: the interval asked for.
                "expires": null,
                "interval": a.expires,
                "notifies": a.notifies,
                "content_type": a.content_type,
                "last_body_len": a.last_body_len,
                "reason": a.reason,
                "created": a.created_at,
            })
        }));
        v
    }

    fn lines(&self) -> Vec<Value> {
        self.core
            .bla
            .lines()
            .into_iter()
            .map(|l| {
                let appearances: Vec<Value> = l
                    .appearances
                    .iter()
                    .map(|a| {
                        json!({
                            "index": a.index,
                            "state": a.state,
                            "phone": a.phone,
                            "contact": a.contact,
                            "peer": a.peer,
                            "since": a.since,
                        })
                    })
                    .collect();
                let phones: Vec<Value> = l
                    .phones
                    .iter()
                    .map(|p| {
                        json!({
                            "phone": p.phone,
                            "contact": p.contact,
                            "user_agent": p.user_agent,
                            "subscribed": p.subscribed,
                        })
                    })
                    .collect();
                json!({
                    "aor": l.aor,
                    "label": l.label,
                    "appearances": appearances,
                    "phones": phones,
                })
            })
            .collect()
    }

    /// Everything a `follow` stream starts with.
    pub fn full_snapshot(&self) -> Value {
        // Built by moving each list in: `json!` would pass them through `to_value`, a deep
        // copy of megabytes (a third of the snapshot's cost at 5,000 AORs).
        let mut o = Map::new();
        o.insert("status".into(), self.status());
        o.insert("registrations".into(), Value::Array(self.registrations()));
        o.insert("calls".into(), Value::Array(self.calls()));
        o.insert("subscriptions".into(), Value::Array(self.subscriptions()));
        o.insert("lines".into(), Value::Array(self.lines()));
        o.insert("mwi".into(), Value::Array(self.mwi()));
        Value::Object(o)
    }

    /// Each mailbox with a message-summary publication: waiting, and the new/old counts
    /// summed over the message classes. With several publishers of one mailbox (rare), the
    /// highest counts win, so the lamp is not dark while one source still says messages wait.
    fn mwi(&self) -> Vec<Value> {
        let presence = &self.core.presence;
        let mut mailboxes: Vec<String> = presence
            .presentities()
            .into_iter()
            .filter(|p| p.event == Pkg::MessageSummary.key())
            .map(|p| p.presentity)
            .collect();
        mailboxes.sort();
        mailboxes.dedup();
        mailboxes
            .into_iter()
            .filter_map(|mailbox| {
                let mut found = false;
                let (mut waiting, mut new, mut old) = (false, 0u64, 0u64);
                for (_, body) in presence.publications_of(&mailbox, Pkg::MessageSummary) {
                    let Ok(ms) = crate::sip::body::mwi::parse(&body.rendered()) else {
                        continue;
                    };
                    found = true;
                    waiting |= ms.waiting;
                    new = new.max(ms.summaries.iter().map(|s| u64::from(s.new)).sum());
                    old = old.max(ms.summaries.iter().map(|s| u64::from(s.old)).sum());
                }
                found.then(
                    || json!({"mailbox": mailbox, "waiting": waiting, "new": new, "old": old}),
                )
            })
            .collect()
    }

    // ------------------------------------------------------------------------ the pua_mi job

    async fn publish(&self, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(
            params,
            &[
                "presentity",
                "event",
                "content_type",
                "body",
                "expires",
                "id",
            ],
        )?;
        let presentity = p.aor(&self.core, "presentity")?;
        let pkg = p.pkg("event", true)?;
        let expires = p
            .opt_u32("expires", 0..=MAX_EXPIRES, "a number of seconds")?
            .unwrap_or(3600);
        let types = crate::presence::packages::lookup(pkg.key())
            .map(|k| k.publish_types())
            .unwrap_or(&[]);
        if let Some(ct) = p.opt_str("content_type")? {
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !types.contains(&media.as_str()) {
                return Err(bad(
                    "content_type",
                    format!(
                        "{ct:?} cannot be published in {} (one of {})",
                        pkg.key(),
                        types.join(", ")
                    ),
                ));
            }
        }
        let body = match p.get("body") {
            None => None,
            Some(Value::String(s)) if s.len() > MAX_BODY => {
                return Err(bad("body", format!("longer than {MAX_BODY} bytes")))
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("body", "must be a string (the document)")),
        };
        let given = p.id("id")?;
        let id = match given {
            Some(id) => id.to_string(),
            None if expires == 0 => {
                return Err(bad("id", "required to remove a publication (expires 0)"))
            }
            None if body.is_none() => {
                return Err(bad(
                    "body",
                    "required for a new publication (no id given to refresh)",
                ))
            }
            None => self.core.presence.new_id(),
        };
        let source = format!("api:{id}");
        let existing = self
            .core
            .presence
            .publication_body(&presentity, pkg, &source);
        let body = match (body, existing) {
            (Some(b), _) => crate::storage::PublicationBody::from(b.into_bytes()),
            (None, Some((b, _))) => b,
            (None, None) => {
                return Err(RpcError::not_found(format!(
                    "no publication {id:?} of {presentity} in {} (params.id)",
                    pkg.key()
                )))
            }
        };
        let durable = self
            .core
            .pua
            .publish(&presentity, pkg, &source, body, expires)
            .map_err(|e| match e {
                crate::presence::PublishError::Body(e) => bad("body", e),
                crate::presence::PublishError::NotPublishable(k) => {
                    bad("event", format!("package {k} cannot be published"))
                }
                crate::presence::PublishError::Full => RpcError::new(
                    rpc::REFUSED,
                    "too many publications (presence.max_publications)",
                ),
            })?;
        stored(durable).await?;
        Ok(json!({
            "id": id,
            "presentity": presentity,
            "event": pkg.key(),
            "expires": expires,
        }))
    }

    fn subscribe(&self, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(params, &["watcher", "presentity", "event", "expires"])?;
        let watcher = p.str("watcher")?;
        let target = p.str("presentity")?;
        let event = p.str("event")?.trim().to_string();
        let expires = p
            .opt_u32("expires", 60..=MAX_EXPIRES, "a number of seconds")?
            .unwrap_or(3600);
        let presence = &self.core.presence;
        presence
            .canonical_aor(watcher)
            .ok_or_else(|| bad("watcher", format!("{watcher:?} is not a sip: URI")))?;
        presence
            .canonical_aor(target)
            .ok_or_else(|| bad("presentity", format!("{target:?} is not a sip: URI")))?;
        // A presentity of ours is reached at our own socket (the request never leaves the
        // host); another is reached as the client reaches any target.
        let outbound = if presence.serves_uri(target) {
            Some(self.own_address().ok_or_else(|| {
                RpcError::new(rpc::REFUSED, "no socket of ours to send the SUBSCRIBE to")
            })?)
        } else {
            None
        };
        let id = presence.new_id();
        let info = crate::pua::admin::AdminSubscriptionInfo {
            id: id.clone(),
            watcher: watcher.to_string(),
            target: target.to_string(),
            event: event.clone(),
            expires,
            state: "subscribing".into(),
            notifies: 0,
            content_type: None,
            last_body_len: None,
            reason: None,
            created_at: self.core.clock.now_unix(),
        };
        let pua = &self.core.pua;
        pua.admin()
            .add(info, |on_event| match &outbound {
                Some(o) => pua.subscribe_via(target, &event, watcher, expires, o, on_event),
                None => pua.subscribe(target, &event, watcher, expires, on_event),
            })
            .map_err(|e| {
                use crate::pua::admin::AdminSubscribeError as E;
                use crate::pua::client::SubscribeError as S;
                match e {
                    E::Full => RpcError::new(rpc::REFUSED, e.to_string()),
                    E::Bad(S::BadEvent(_)) => bad("event", e),
                    E::Bad(S::BadWatcher(_)) => bad("watcher", e),
                    E::Bad(_) => bad("presentity", e),
                }
            })?;
        Ok(json!({ "id": id }))
    }

    /// `sip:ADDR:PORT` of our first socket (UDP first), loopback for a wildcard one.
    fn own_address(&self) -> Option<String> {
        let mut addrs = self.core.transport.local_addrs();
        addrs.sort_by_key(|(proto, _)| *proto != crate::transport::Proto::Udp);
        let (proto, mut addr) = addrs.into_iter().next()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        Some(format!("sip:{addr};transport={}", proto_name(proto)))
    }

    fn unsubscribe(&self, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(params, &["id"])?;
        let id = p.id("id")?.ok_or_else(|| bad("id", "required"))?;
        if !self.core.pua.admin().remove(id) {
            return Err(RpcError::not_found(format!(
                "no subscription {id:?} of the control API (params.id)"
            )));
        }
        Ok(json!({ "id": id, "unsubscribed": true }))
    }

    fn refresh_watchers(&self, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(params, &["presentity", "event"])?;
        let presentity = p.aor(&self.core, "presentity")?;
        let pkg = p.opt_pkg("event")?;
        let n = self.core.presence.refresh_watchers(&presentity, pkg);
        Ok(json!({ "notified": n }))
    }

    async fn message_summary(&self, params: &Value) -> Result<Value, RpcError> {
        use crate::sip::body::mwi::{MessageClass, MessageSummary, Summary};
        let p = Params::new(
            params,
            &[
                "mailbox",
                "waiting",
                "new",
                "old",
                "urgent_new",
                "urgent_old",
                "account",
                "expires",
            ],
        )?;
        let mailbox = p.aor(&self.core, "mailbox")?;
        let waiting = p
            .opt_bool("waiting")?
            .ok_or_else(|| bad("waiting", "required (true or false)"))?;
        let count = |name| p.opt_u32(name, 0..=1_000_000, "a count");
        let (new, old) = (count("new")?, count("old")?);
        let urgent = match (count("urgent_new")?, count("urgent_old")?) {
            (None, None) => None,
            (a, b) => Some((a.unwrap_or(0), b.unwrap_or(0))),
        };
        let account = match p.opt_str("account")? {
            None => None,
            Some(a) => Some(
                self.core
                    .presence
                    .canonical_aor(a)
                    .map(|_| a.to_string())
                    .ok_or_else(|| bad("account", format!("{a:?} is not a sip: URI")))?,
            ),
        };
        // A mailbox's state holds until the voicemail system changes it: a year unless told.
        let expires = p
            .opt_u32("expires", 0..=MAX_MWI_EXPIRES, "a number of seconds")?
            .unwrap_or(MAX_MWI_EXPIRES);
        let summaries = if new.is_some() || old.is_some() || urgent.is_some() {
            vec![Summary {
                class: MessageClass::Voice,
                new: new.unwrap_or(0),
                old: old.unwrap_or(0),
                urgent,
            }]
        } else {
            Vec::new()
        };
        let body = MessageSummary {
            waiting,
            account,
            summaries,
            headers: Vec::new(),
        }
        .render();
        let durable = self
            .core
            .pua
            .publish(
                &mailbox,
                Pkg::MessageSummary,
                MWI_SOURCE,
                body.into_bytes(),
                expires,
            )
            .map_err(|e| match e {
                crate::presence::PublishError::Full => RpcError::new(
                    rpc::REFUSED,
                    "too many publications (presence.max_publications)",
                ),
                e => internal(e),
            })?;
        stored(durable).await?;
        Ok(json!({ "mailbox": mailbox, "waiting": waiting, "expires": expires }))
    }

    // ---------------------------------------------------------------------- authorization

    async fn rule(&self, params: &Value, action: RuleAction) -> Result<Value, RpcError> {
        let p = Params::new(params, &["presentity", "watcher", "event"])?;
        let presentity = p.aor(&self.core, "presentity")?;
        let watcher = p.aor(&self.core, "watcher")?;
        let pkg = p.opt_pkg("event")?;
        if pkg == Some(Pkg::Winfo) {
            return Err(bad(
                "event",
                "presence.winfo is the presentity's own; no rule applies to it",
            ));
        }
        let (rule, durable, changed) = self
            .core
            .presence
            .add_rule(&presentity, &watcher, pkg, action)
            .map_err(|e| RpcError::new(rpc::REFUSED, e.to_string()))?;
        if let Err(e) = stored(durable).await {
            // Not on disk: not kept either (a rule that vanishes at the next restart would
            // be worse than none). What it changed at once stays changed.
            let _ = self.core.presence.remove_rule(&rule.id);
            return Err(e);
        }
        let mut v = rule_json(&rule);
        v["changed"] = json!(changed);
        Ok(v)
    }

    async fn rule_remove(&self, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(params, &["id"])?;
        let id = p.id("id")?.ok_or_else(|| bad("id", "required"))?;
        let durable = self
            .core
            .presence
            .remove_rule(id)
            .map_err(|_| RpcError::not_found(format!("no rule {id:?} (params.id)")))?;
        stored(durable).await?;
        Ok(json!({ "id": id, "removed": true }))
    }

    // ------------------------------------------------------------------------------ users

    fn user_file(&self) -> Result<Arc<crate::storage::UserFile>, RpcError> {
        self.core.auth.user_file().cloned().ok_or_else(|| {
            RpcError::new(
                rpc::REFUSED,
                "this server reads no users file (only [[users]] of its config)",
            )
        })
    }

    fn users_list(&self) -> Result<Vec<Value>, RpcError> {
        let auth = &self.core.auth;
        let mut v: Vec<Value> = Vec::new();
        if let Some(file) = auth.user_file() {
            let mut users = file.loaded();
            users.sort_by(|a, b| a.name.cmp(&b.name));
            for u in users {
                let algorithms: Vec<&str> = [
                    ("MD5", u.ha1_md5.is_some()),
                    ("SHA-256", u.ha1_sha256.is_some()),
                ]
                .into_iter()
                .filter(|(_, has)| *has)
                .map(|(n, _)| n)
                .collect();
                v.push(json!({
                    "name": u.name,
                    "realm": u.realm,
                    "source": "file",
                    "algorithms": algorithms,
                }));
            }
        }
        for name in auth.config_user_names() {
            v.push(json!({ "name": name, "realm": auth.realm(), "source": "config" }));
        }
        Ok(v)
    }

    async fn users_add(&self, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(params, &["name", "password"])?;
        let name = p.str("name")?.to_string();
        if name.contains([':', '@', '"']) || name.chars().any(char::is_whitespace) {
            return Err(bad(
                "name",
                format!("{name:?} is not a usable SIP user name (no ':', '@', quotes or spaces)"),
            ));
        }
        // As given: spaces may be part of a password.
        let password = match p.opt_str("password")? {
            Some(pw) if !pw.is_empty() => pw.to_string(),
            Some(_) => return Err(bad("password", "must not be empty")),
            None => return Err(bad("password", "required")),
        };
        let file = self.user_file()?;
        let realm = self.core.auth.realm().to_string();
        let rec = {
            use crate::sip::digest::{ha1, Algorithm};
            UserRecord {
                ha1_md5: Some(ha1(Algorithm::Md5, &name, &realm, &password)),
                ha1_sha256: Some(ha1(Algorithm::Sha256, &name, &realm, &password)),
                name: name.clone(),
                realm: realm.clone(),
            }
        };
        // File I/O off the runtime's threads; the server's table is reloaded at once (the
        // watcher would see the new file within a second anyway).
        tokio::task::spawn_blocking(move || {
            file.add(rec)?;
            file.reload();
            Ok::<(), StorageError>(())
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let mut v = json!({ "name": name, "realm": realm });
        if self.core.auth.is_config_user(&name) {
            v["warning"] = json!(format!(
                "user {name} is also defined in [[users]] of the config, whose password wins"
            ));
        }
        Ok(v)
    }

    async fn users_remove(&self, params: &Value) -> Result<Value, RpcError> {
        let p = Params::new(params, &["name"])?;
        let name = p.str("name")?.to_string();
        if self.core.auth.is_config_user(&name) {
            return Err(RpcError::new(
                rpc::REFUSED,
                format!("user {name} is defined in [[users]] of the config: remove it there"),
            ));
        }
        let file = self.user_file()?;
        let n = name.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let removed = file.remove(&n)?;
            file.reload();
            Ok::<bool, StorageError>(removed)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        if !removed {
            return Err(RpcError::not_found(format!(
                "no user {name:?} in the users file (params.name)"
            )));
        }
        Ok(json!({ "name": name, "removed": true }))
    }
}

/// The source id of the mailbox state `message_summary` publishes (one per mailbox: a new
/// call replaces it).
pub const MWI_SOURCE: &str = "api:mwi";

fn proto_name(p: crate::transport::Proto) -> &'static str {
    match p {
        crate::transport::Proto::Udp => "udp",
        crate::transport::Proto::Tcp => "tcp",
    }
}

impl Methods for Api {
    fn call(&self, method: &str, params: Value) -> Answer {
        let api = Api {
            core: self.core.clone(),
            started: self.started,
            space: self.space.clone(),
        };
        let method = method.to_string();
        Box::pin(async move { api.call(&method, params).await })
    }

    fn snapshot(&self) -> Value {
        self.full_snapshot()
    }
}
