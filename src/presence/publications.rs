//! Publications (RFC 3903): SIP PUBLISH with its ETags, and the in-process publishers'
//! API (documents or typed dialog state, no ETag round trip).

use super::decide::{find_etag, publish_ask, PublishAsk, PublishRefused};
use super::*;

/// A dialog publication whose dialogs have all ended is kept this long (seconds), long
/// enough for every watcher to see the terminated state, then the lamp goes idle. Without
/// it, phones that publish each call anew would pile up ended calls until their expiry.
pub(super) const TERMINATED_LINGER: u32 = 5;
/// Whether the body is dialog state whose dialogs have all ended.
fn all_dialogs_terminated(pkg: Pkg, body: &PublicationBody) -> bool {
    matches!(pkg, Pkg::Dialog | Pkg::Sla) && crate::storage::presence::all_dialogs_terminated(body)
}

impl Presence {
    /// A PUBLISH that passed digest auth (RFC 3903 §6).
    pub fn publish_sip(
        &self,
        req: &Request,
        parsed: &Parsed,
        who: Requester<'_>,
        to_tag: &str,
    ) -> Reply {
        match self.publish_sip_inner(req, parsed, who, to_tag) {
            Ok(r) => r,
            Err(r) => Reply::Now(r),
        }
    }

    pub(super) fn publish_sip_inner(
        &self,
        req: &Request,
        parsed: &Parsed,
        who: Requester<'_>,
        to_tag: &str,
    ) -> Result<Reply, Response> {
        let fail = |status: u16, reason: &str| Self::error_reply(req, status, reason, to_tag);
        let ev = parse_event(req.headers.get(HeaderName::Event))
            .map_err(|e| fail(e.status(), &e.to_string()))?;
        if !ev.pkg.publishable() {
            return Err(fail(489, "Bad Event: presence.winfo cannot be published"));
        }
        let pkg = package(ev.pkg).ok_or_else(|| fail(489, "Bad Event: package not served"))?;
        let (target_uri, presentity) = self
            .presentity_of(req, parsed)
            .map_err(|(status, reason)| fail(status, &reason))?;
        if let Requester::User(name) = who {
            let user = target_uri.user.as_deref().map(crate::sip::text::unescape);
            if user.as_deref() != Some(name) {
                return Err(fail(
                    403,
                    &format!("Forbidden: user {name} may not publish for {presentity}"),
                ));
            }
        }
        let expires = self
            .granted_expires(parsed)
            .map_err(|min| Self::too_brief(req, min, to_tag))?;
        let if_match = req
            .headers
            .get(HeaderName::SipIfMatch)
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let has_body = !req.body.is_empty();
        let document = PublicationBody::from(&req.body);
        let content_type = if has_body {
            let ct = req
                .headers
                .get(HeaderName::ContentType)
                .ok_or_else(|| fail(400, "Bad Request: body without Content-Type"))?;
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let Some(t) = pkg.publish_types().iter().find(|t| **t == media) else {
                let mut r = fail(415, "Unsupported Media Type");
                r.headers
                    .push(HeaderName::Accept, pkg.publish_types().join(", "));
                return Err(r);
            };
            pkg.validate(t, &req.body)
                .map_err(|e| fail(400, &e.to_string()))?;
            Some(*t)
        } else {
            None
        };
        // An ended call lingers only briefly (see TERMINATED_LINGER).
        let expires = if expires > 0 && has_body && all_dialogs_terminated(ev.pkg, &document) {
            expires.min(TERMINATED_LINGER)
        } else {
            expires
        };
        let refused = |e: PublishRefused| fail(e.status(), &e.to_string());
        let ask = publish_ask(if_match, has_body, expires).map_err(refused)?;
        let res = ResKey {
            presentity: presentity.clone(),
            pkg: ev.pkg,
        };
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut shard = self.shard(&presentity);
        let new_etag = self.ids.unique();
        // A refresh without a body keeps an ended call's linger.
        let expires = match ask {
            PublishAsk::Refresh(tag) => {
                let ended = shard.resource(&res).is_some_and(|r| {
                    r.pubs
                        .iter()
                        .any(|p| p.rec.etag == tag && all_dialogs_terminated(ev.pkg, &p.rec.body))
                });
                if ended {
                    expires.min(TERMINATED_LINGER)
                } else {
                    expires
                }
            }
            _ => expires,
        };
        let granted = expires
            .saturating_sub(self.cfg.expires_offset)
            .max(if expires == 0 { 0 } else { 1 });
        let source = match ask {
            PublishAsk::Refresh(tag) | PublishAsk::Modify(tag) | PublishAsk::Remove(tag) => {
                // RFC 3903 §6 step 4: the ETag must name a live publication of this resource.
                let resource = shard.resources.get_mut(&res);
                let found = resource.and_then(|r| {
                    let etags = r
                        .pubs
                        .iter()
                        .map(|p| (p.rec.etag.as_str(), p.rec.expires_at));
                    find_etag(tag, now, etags).ok().map(|i| (r, i))
                });
                let Some((resource, i)) = found else {
                    return Err(refused(PublishRefused::UnknownEtag));
                };
                let p = &mut resource.pubs[i];
                let source = p.rec.source_id.clone();
                if expires == 0 {
                    let key = p.rec.key();
                    let gone = resource.pubs.remove(i);
                    self.publication_gone(&gone.rec);
                    self.cancel(&Timer::PublicationExpiry(res.clone(), source.clone()));
                    writes.push(PresenceWrite::DeletePublication(key));
                } else {
                    p.rec.etag = new_etag.clone();
                    p.rec.expires_at = now + u64::from(expires);
                    if let (Some(ct), true) = (content_type, has_body) {
                        p.rec.content_type = ct.into();
                        p.rec.body = document.clone();
                        p.rec.seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    }
                    writes.push(PresenceWrite::publication(&p.rec));
                    let at = self.at_unix(p.rec.expires_at);
                    self.schedule(Timer::PublicationExpiry(res.clone(), source.clone()), at);
                }
                source
            }
            PublishAsk::Initial => {
                let resource = shard.resources.entry(res.clone()).or_default();
                // Per presentity, per publisher (see `quota`), in total: each place checked
                // and taken in one step, under the shard lock; a later refusal gives back
                // the places taken before it.
                let refusal = if resource.pubs.len() >= self.cfg.max_publications_per_presentity {
                    Some(fail(503, "Service Unavailable: too many publications"))
                } else if !self.quotas.take(&presentity, Quota::Publications) {
                    Some(fail(403, &Quota::Publications.refusal(&presentity)))
                } else if !take_place(&self.publication_count, self.cfg.max_publications) {
                    self.quotas.release(&presentity, Quota::Publications);
                    Some(fail(503, "Service Unavailable: too many publications"))
                } else {
                    None
                };
                if let Some(mut r) = refusal {
                    if r.status == 503 {
                        r.headers.push_raw("Retry-After", "60");
                    }
                    if resource.is_empty() {
                        shard.resources.remove(&res);
                    }
                    return Err(r);
                }
                let source = format!("etag:{new_etag}");
                let rec = PublicationRecord {
                    presentity: presentity.to_string(),
                    event: ev.pkg.key().into(),
                    etag: new_etag.clone(),
                    source_id: source.clone(),
                    content_type: content_type.unwrap_or_default().into(),
                    body: document,
                    expires_at: now + u64::from(expires),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                };
                writes.push(PresenceWrite::publication(&rec));
                let at = self.at_unix(rec.expires_at);
                resource.pubs.push(Publication { rec });
                self.schedule(Timer::PublicationExpiry(res.clone(), source.clone()), at);
                source
            }
        };
        // The 200 waits for the publication only, so it is queued for the disk before the
        // fan-out is decided: its commit runs while the NOTIFYs are decided. Queued under
        // the lock, so the presentity's writes reach the disk in the order they were made.
        let durable = self.store.write(writes);
        let mut writes = Vec::new();
        self.changed(&mut shard, &res, Some(&source), &mut writes, &mut out);
        if shard.resource(&res).is_some_and(Resource::is_empty) {
            shard.resources.remove(&res);
        }
        // The watchers' NOTIFYs wait for nothing but the reservations some of them may be
        // due (queued after the publication, under the same lock).
        let after = self.write_gating(writes);
        drop(shard);
        let mut response = req.response(200, "OK", Some(to_tag));
        if expires > 0 {
            response.headers.push(HeaderName::SipEtag, new_etag);
        }
        response
            .headers
            .push(HeaderName::Expires, granted.to_string());
        response.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        Ok(Reply::AfterWrite {
            response,
            durable,
            notifies: Vec::new(),
            fanout: Some(NotifyBatch {
                notifies: out,
                after,
            }),
        })
    }

    /// The in-process publisher API (pua_usrloc, pua_dialoginfo, BLA): sets the state
    /// `source_id` publishes for `presentity` (a canonical AOR) in `pkg`, for `expires`
    /// seconds; 0 removes it. No ETag round trip: the source id names the publication.
    /// Resolves once the state is on disk; NOTIFYs go out on their own, without waiting for
    /// it.
    pub fn publish(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
        body: impl Into<PublicationBody>,
        expires: u32,
    ) -> Result<Durable, PublishError> {
        self.publish_in_process(presentity, pkg, source_id, body.into(), expires, true)
    }

    /// As [`Presence::publish`], for a publisher that does not wait for the disk (presence
    /// from registrations, a call's dialog state): its write joins the next group commit
    /// instead of forcing one ([`PresenceStore::write_unawaited`]). Its NOTIFYs are the same.
    pub fn publish_unawaited(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
        body: impl Into<PublicationBody>,
        expires: u32,
    ) -> Result<Durable, PublishError> {
        self.publish_in_process(presentity, pkg, source_id, body.into(), expires, false)
    }

    fn publish_in_process(
        &self,
        presentity: &str,
        pkg: Pkg,
        source_id: &str,
        body: PublicationBody,
        expires: u32,
        awaited: bool,
    ) -> Result<Durable, PublishError> {
        let write = |writes: Vec<PresenceWrite>| {
            if awaited {
                self.store.write(writes)
            } else {
                self.store.write_unawaited(writes)
            }
        };
        if !pkg.publishable() {
            return Err(PublishError::NotPublishable(pkg.key()));
        }
        let package = package(pkg).ok_or(PublishError::NotPublishable(pkg.key()))?;
        let content_type = package.publish_types()[0];
        if expires > 0 {
            match &body {
                PublicationBody::Document(b) => package.validate(content_type, b)?,
                // Typed dialog state is valid by construction, for the dialog packages only.
                PublicationBody::Dialogs(_) if matches!(pkg, Pkg::Dialog | Pkg::Sla) => {}
                PublicationBody::Dialogs(_) => return Err(PublishError::NotPublishable(pkg.key())),
            }
        }
        let expires = if expires > 0 && all_dialogs_terminated(pkg, &body) {
            expires.min(TERMINATED_LINGER)
        } else {
            expires
        };
        let presentity: Arc<str> = presentity.into();
        let res = ResKey {
            presentity: presentity.clone(),
            pkg,
        };
        let now = self.clock.now_unix();
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut shard = self.shard(&presentity);
        let resource = shard.resources.entry(res.clone()).or_default();
        let existing = resource
            .pubs
            .iter()
            .position(|p| p.rec.source_id == source_id);
        match (existing, expires) {
            (Some(i), 0) => {
                let key = resource.pubs[i].rec.key();
                let gone = resource.pubs.remove(i);
                self.publication_gone(&gone.rec);
                self.cancel(&Timer::PublicationExpiry(res.clone(), source_id.into()));
                writes.push(PresenceWrite::DeletePublication(key));
            }
            (None, 0) => {
                if resource.is_empty() {
                    shard.resources.remove(&res);
                }
                drop(shard);
                return Ok(write(writes));
            }
            (found, _) => {
                if found.is_none()
                    && (resource.pubs.len() >= self.cfg.max_publications_per_presentity
                        || !take_place(&self.publication_count, self.cfg.max_publications))
                {
                    if resource.is_empty() {
                        shard.resources.remove(&res);
                    }
                    return Err(PublishError::Full);
                }
                let rec = PublicationRecord {
                    presentity: presentity.to_string(),
                    event: pkg.key().into(),
                    etag: self.ids.unique(),
                    source_id: source_id.into(),
                    content_type: content_type.into(),
                    body,
                    expires_at: now + u64::from(expires),
                    seq: self.seq.fetch_add(1, Ordering::Relaxed),
                };
                writes.push(PresenceWrite::publication(&rec));
                let at = self.at_unix(rec.expires_at);
                match found {
                    Some(i) => resource.pubs[i] = Publication { rec },
                    // Its place was taken with the check above.
                    None => resource.pubs.push(Publication { rec }),
                }
                self.schedule(Timer::PublicationExpiry(res.clone(), source_id.into()), at);
            }
        }
        // The caller waits for the publication, queued (under the lock, in the presentity's
        // order) before the fan-out is decided; the NOTIFYs (a call's state reaching the
        // lamps) only for the reservations some watchers may be due.
        let durable = write(writes);
        let mut writes = Vec::new();
        self.changed(&mut shard, &res, Some(source_id), &mut writes, &mut out);
        let after = self.write_gating(writes);
        drop(shard);
        if awaited {
            self.send(out, after);
        } else {
            // A call's state on its way to the lamps: nobody waits for the publication, so
            // nothing is answered before these NOTIFYs either.
            self.send_express(out, after);
        }
        Ok(durable)
    }
}
