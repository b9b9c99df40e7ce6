//! Subscriptions (RFC 6665): SUBSCRIBE (new, refresh, unsubscribe, fetch), authorization
//! decisions about pending watchers (RFC 3857), what became of each NOTIFY (RFC 6665 §4.2.2,
//! RFC 5057), and the end of a subscription with its final NOTIFY, which waits for the one in
//! flight.

use super::*;

impl Presence {
    /// Removes a subscription; its final NOTIFY (with the current state when `with_state`)
    /// is pushed to `out`. Winfo watchers hear of it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn terminate(
        &self,
        shard: &mut Shard,
        res: &ResKey,
        key: &Arc<[u8]>,
        reason: &'static str,
        send_final: bool,
        writes: &mut Vec<PresenceWrite>,
        out: &mut Vec<PendingNotify>,
    ) {
        let presence_key = ResKey {
            presentity: res.presentity.clone(),
            pkg: Pkg::Presence,
        };
        let Some(mut resource) = shard.resources.remove(res) else {
            return;
        };
        let Some(mut sub) = resource.subs.remove(key) else {
            shard.resources.insert(res.clone(), resource);
            return;
        };
        self.subscription_count.fetch_sub(1, Ordering::Relaxed);
        self.quotas.release(&sub.rec.watcher, Quota::Subscriptions);
        self.quotas.recovered(
            &sub.rec.watcher,
            &SubRef {
                res: res.clone(),
                key: key.clone(),
            },
        );
        self.emit_subscription(SubscriptionChange::Terminated(reason), res.pkg, &sub.rec);
        self.dialog_index(key).remove(key);
        self.cancel(&Timer::SubscriptionExpiry(res.clone(), key.clone()));
        self.cancel(&Timer::Retry(res.clone(), key.clone()));
        writes.push(PresenceWrite::DeleteSubscription(key.to_vec()));
        let gone_entry = (res.pkg == Pkg::Presence).then(|| {
            let event = match reason {
                "rejected" => watcherinfo::WatcherEvent::Rejected,
                "timeout" => watcherinfo::WatcherEvent::Timeout,
                _ => watcherinfo::WatcherEvent::Deactivated,
            };
            self.winfo_entry(&sub, event, true)
        });
        if send_final && sub.delivery.in_flight() {
            // One NOTIFY in flight, in CSeq order: the final one waits for the answer.
            resource
                .closing
                .insert(key.clone(), Closing { sub, reason });
        } else if send_final {
            let winfo = if res.pkg == Pkg::Winfo {
                shard.resource(&presence_key)
            } else {
                None
            };
            out.push(self.final_notify(res, &resource, &mut sub, reason, winfo));
        }
        if resource.is_empty() {
            drop(resource);
        } else {
            shard.resources.insert(res.clone(), resource);
        }
        if let Some(e) = gone_entry {
            self.winfo_changed(shard, &res.presentity, e, writes, out);
        }
    }

    /// The final NOTIFY of an ended subscription (nothing written: its record is deleted).
    pub(super) fn final_notify(
        &self,
        res: &ResKey,
        resource: &Resource,
        sub: &mut Sub,
        reason: &'static str,
        winfo: Option<&Resource>,
    ) -> PendingNotify {
        // RFC 6665 §4.2.2: the final NOTIFY carries the state when there is one to give;
        // not after a rejection.
        let body = if reason == "rejected" {
            Body::None
        } else {
            sub.winfo_full = true;
            self.body_for(res, resource, sub, winfo)
        };
        self.next_notify(
            res,
            sub,
            SubscriptionState::Terminated { reason },
            body,
            &mut Vec::new(),
            Persist::No,
        )
    }

    /// The NOTIFY in flight of an ended subscription was answered (or timed out): its final
    /// NOTIFY leaves now, unless the watcher said the subscription is gone already.
    pub(super) fn closing_answered(
        &self,
        shard: &mut Shard,
        sub: &SubRef,
        outcome: Outcome,
    ) -> Option<PendingNotify> {
        let mut resource = shard.resources.remove(&sub.res)?;
        let out = resource.closing.remove(&sub.key).and_then(|mut c| {
            if matches!(outcome, Outcome::Rejected(_)) {
                return None;
            }
            let presence_key = ResKey {
                presentity: sub.res.presentity.clone(),
                pkg: Pkg::Presence,
            };
            let winfo = if sub.res.pkg == Pkg::Winfo {
                shard.resource(&presence_key)
            } else {
                None
            };
            Some(self.final_notify(&sub.res, &resource, &mut c.sub, c.reason, winfo))
        });
        if !resource.is_empty() {
            shard.resources.insert(sub.res.clone(), resource);
        }
        out
    }

    // ---------------------------------------------------------------------------- SUBSCRIBE

    /// A SUBSCRIBE that passed digest auth (RFC 6665 §4.2.1), for a caller that decided
    /// itself that the presentity exists (every user of our domain does here).
    pub fn subscribe(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: Peer,
        who: Requester<'_>,
        to_tag: &str,
    ) -> Reply {
        self.subscribe_in(req, parsed, peer, who, to_tag, &Everyone)
    }

    /// A SUBSCRIBE that passed digest auth (RFC 6665 §4.2.1); a new subscription to a
    /// presentity that exists neither in `directory` nor here (a publication) gets `404`.
    pub fn subscribe_in(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: Peer,
        who: Requester<'_>,
        to_tag: &str,
        directory: &dyn Directory,
    ) -> Reply {
        match self.subscribe_inner(req, parsed, peer, who, to_tag, directory) {
            Ok(r) => r,
            Err(r) => Reply::Now(r),
        }
    }

    /// Whether a presentity exists: open mode (nobody to check against), the directory
    /// (users, bindings), or a publication of it in any package.
    fn exists(&self, presentity: &Arc<str>, directory: &dyn Directory) -> bool {
        if self.open_mode || directory.exists(presentity) {
            return true;
        }
        let shard = self.shard(presentity);
        Pkg::ALL.into_iter().any(|pkg| {
            shard
                .resources
                .get(&ResKey {
                    presentity: presentity.clone(),
                    pkg,
                })
                .is_some_and(|r| !r.pubs.is_empty())
        })
    }

    /// `dialog;sla` (draft-anil-sipping-bla-03): the shared line a member phone's SUBSCRIBE
    /// is for. The Request-URI when it names a line; else, as Kamailio and OpenSIPS do
    /// (Polycom puts its own address there), the Contact user at the From domain when that
    /// is a line. Only the line's user and its members may watch it (`403` for others); a
    /// SUBSCRIBE that names no line is an ordinary `dialog;sla` subscription.
    fn shared_line_of(
        &self,
        presentity: Arc<str>,
        parsed: &Parsed,
        who: &Requester<'_>,
        directory: &dyn Directory,
    ) -> Result<Arc<str>, (u16, String)> {
        let fallback = || -> Option<String> {
            let from = parsed.from.uri.as_sip()?;
            let contact = match parsed.contacts.first()? {
                ContactValue::Addr(a) => a.uri.as_sip()?.clone(),
                ContactValue::Star => return None,
            };
            let mut uri = from.clone();
            uri.user = contact.user.clone();
            uri.port = None;
            uri.params = Default::default();
            uri.headers = None;
            Some(self.domains.aor(&uri))
        };
        let (line, users) = match directory.shared_line_users(&presentity) {
            Some(users) => (presentity, users),
            None => match fallback().and_then(|f| Some((directory.shared_line_users(&f)?, f))) {
                Some((users, f)) => (Arc::from(f.as_str()), users),
                None => return Ok(presentity),
            },
        };
        if let Requester::User(name) = who {
            if !users.iter().any(|u| u == name) {
                return Err((
                    403,
                    format!("Forbidden: {name} is not a member of the shared line {line}"),
                ));
            }
        }
        Ok(line)
    }

    pub(super) fn subscribe_inner(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: Peer,
        who: Requester<'_>,
        to_tag: &str,
        directory: &dyn Directory,
    ) -> Result<Reply, Response> {
        let fail = |status: u16, reason: &str| Self::error_reply(req, status, reason, to_tag);
        let ev = parse_event(req.headers.get(HeaderName::Event))
            .map_err(|e: EventError| fail(e.status(), &e.to_string()))?;
        let expires = self
            .granted_expires(parsed)
            .map_err(|min| Self::too_brief(req, min, to_tag))?;
        let call_id = req.call_id().map_err(|e| fail(400, &e.to_string()))?;
        let remote_tag = parsed
            .from
            .tag()
            .ok_or_else(|| fail(400, "Bad Request: From has no tag"))?;
        let watcher_uri = parsed
            .from
            .uri
            .as_sip()
            .ok_or_else(|| fail(416, "Unsupported URI Scheme in From"))?;
        let watcher = self.domains.aor(watcher_uri);
        if let Requester::User(name) = who {
            // A member phone of a shared line subscribes as the line (its From is the line's
            // AOR) with its user's own credentials.
            let line_member = || {
                directory
                    .shared_line_users(&watcher)
                    .is_some_and(|users| users.iter().any(|u| u == name))
            };
            if !self.domains.is_aor_of(watcher_uri, name) && !line_member() {
                return Err(fail(
                    403,
                    &format!("Forbidden: user {name} may not subscribe as {watcher}"),
                ));
            }
        }
        let contact_uri = match parsed.contacts.as_slice() {
            [ContactValue::Addr(a)] => Some(&a.uri),
            [] => None,
            _ => {
                return Err(fail(
                    400,
                    "Bad Request: SUBSCRIBE needs exactly one Contact URI",
                ))
            }
        };
        let contact = contact_uri.map(|u| u.to_string());
        let now = self.clock.now_unix();
        if let Some(local_tag) = parsed.to.tag() {
            return self.resubscribe(
                req,
                parsed,
                peer,
                &watcher,
                ev,
                expires,
                call_id,
                &local_tag,
                &remote_tag,
                contact,
                now,
            );
        }
        let contact = contact.ok_or_else(|| fail(400, "Bad Request: SUBSCRIBE without Contact"))?;
        let (_, mut presentity) = self
            .presentity_of(req, parsed)
            .map_err(|(status, reason)| fail(status, &reason))?;
        if ev.pkg == Pkg::Sla {
            presentity = self
                .shared_line_of(presentity, parsed, &who, directory)
                .map_err(|(status, reason)| fail(status, &reason))?;
        }
        if !self.exists(&presentity, directory) {
            return Err(fail(404, &format!("Not Found: no such user {presentity}")));
        }
        let accept = accept_list(req);
        let notify_types: &[&str] = match ev.pkg {
            Pkg::Winfo => &["application/watcherinfo+xml"],
            p => package(p).map(|p| p.notify_types()).unwrap_or(&[]),
        };
        if !notify_types.iter().any(|t| accepts(&accept, t)) {
            let mut r = fail(
                406,
                "Not Acceptable: none of the Accept types can be sent for this package",
            );
            r.headers.push(HeaderName::Accept, notify_types.join(", "));
            return Err(r);
        }
        // The admin's standing decision about this watcher comes first.
        let policy = self
            .standing_decision(&presentity, &watcher, ev.pkg)
            .unwrap_or_else(|| {
                self.policies.decide(
                    ev.pkg,
                    &presentity,
                    &watcher,
                    self.domains.serves(&watcher_uri.host),
                )
            });
        let Some(new) = decide::new_subscription(policy, expires) else {
            return Err(fail(
                403,
                &format!("Forbidden: {watcher} may not watch {presentity}"),
            ));
        };
        let state = new.state;
        let (our_contact, via_sent_by) = self.our_contact(req, &peer);
        let user_agent = req.headers.get(HeaderName::UserAgent).map(str::to_string);
        let profile = self.profile_for(user_agent.as_deref());
        let rec = SubscriptionRecord {
            presentity: presentity.to_string(),
            event: ev.pkg.key().into(),
            event_id: ev.id.clone(),
            watcher: watcher.clone(),
            watcher_header: notify::without_tag(&parsed.from),
            presentity_header: notify::without_tag(&parsed.to),
            call_id: call_id.to_string(),
            local_tag: to_tag.to_string(),
            remote_tag: remote_tag.clone(),
            remote_target: contact,
            route_set: req
                .headers
                .list(HeaderName::RecordRoute)
                .into_iter()
                .map(str::to_string)
                .collect(),
            local_cseq: 0,
            remote_cseq: parsed.cseq.seq,
            version: 0,
            cseq_reserved: 0,
            version_reserved: 0,
            expires_at: now + u64::from(expires),
            state,
            accept,
            flow: flow_of(&peer),
            user_agent,
            contact: our_contact.clone(),
            created_at: now,
        };
        let key: Arc<[u8]> = rec.key().into();
        let target = contact_uri.cloned();
        let route = target
            .and_then(|t| notify_route_of(&rec, &self.trusted, &peer, t, via_sent_by))
            .ok_or_else(|| fail(500, "Server Internal Error: no route to the watcher"))?;
        let res = ResKey {
            presentity: presentity.clone(),
            pkg: ev.pkg,
        };
        let dialog_ids = self.dialog_ids_for(&rec.watcher);
        let mut sub = Sub::new(rec, key.clone(), route, profile, dialog_ids);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut shard = self.shard(&presentity);
        let fresh_resource = !shard.resources.contains_key(&res);
        let watchers = shard.resource(&res).map_or(0, |r| r.subs.len());
        if !new.fetch && watchers >= self.cfg.max_watchers_per_presentity {
            let mut r = fail(
                503,
                "Service Unavailable: too many watchers of this presentity",
            );
            r.headers.push_raw("Retry-After", "60");
            return Err(r);
        }
        // The places (the watcher's own, then one in the table) are taken here, under the
        // shard lock, and the subscription inserted below without another way out. One
        // watcher's quota is far below a presentity's watcher cap: a user that fills its
        // quota leaves the presentity's other watchers their places.
        if !new.fetch && !self.quotas.take(&watcher, Quota::Subscriptions) {
            return Err(fail(403, &Quota::Subscriptions.refusal(&watcher)));
        }
        if !new.fetch && !take_place(&self.subscription_count, self.cfg.max_subscriptions) {
            self.quotas.release(&watcher, Quota::Subscriptions);
            let mut r = fail(503, "Service Unavailable: subscription table is full");
            r.headers.push_raw("Retry-After", "60");
            return Err(r);
        }
        shard.resources.entry(res.clone()).or_default();
        let mut response = req.response(200, "OK", Some(to_tag));
        // RFC 3261 §12.1.1: the 2xx that creates the dialog copies Record-Route, in order;
        // the watcher takes its route set from it.
        for h in req
            .headers
            .0
            .iter()
            .filter(|h| h.kind == HeaderName::RecordRoute)
        {
            response
                .headers
                .push(HeaderName::RecordRoute, h.value.clone());
        }
        response
            .headers
            .push(HeaderName::Expires, expires.to_string());
        response
            .headers
            .push(HeaderName::Contact, format!("<{our_contact}>"));
        response.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        if new.fetch {
            // A fetch (RFC 6665 §4.4.3): one NOTIFY with the state, terminated; nothing kept.
            let winfo = (ev.pkg == Pkg::Winfo).then(|| {
                shard.resource(&ResKey {
                    presentity: presentity.clone(),
                    pkg: Pkg::Presence,
                })
            });
            let resource = shard.resource(&res);
            let empty = Resource::default();
            let body = self.body_for(&res, resource.unwrap_or(&empty), &mut sub, winfo.flatten());
            out.push(self.next_notify(
                &res,
                &mut sub,
                SubscriptionState::Terminated { reason: "timeout" },
                body,
                &mut writes,
                Persist::No,
            ));
            if shard.resource(&res).is_some_and(Resource::is_empty) {
                shard.resources.remove(&res);
            }
            drop(shard);
            return Ok(Reply::AfterWrite {
                response,
                durable: self.store.write(writes),
                notifies: self.build_notifies(out),
                fanout: None,
            });
        }
        let expiry_at = self.at_unix(sub.rec.expires_at);
        let entry = (ev.pkg == Pkg::Presence)
            .then(|| self.winfo_entry(&sub, watcherinfo::WatcherEvent::Subscribe, false));
        {
            let presence = (ev.pkg == Pkg::Winfo)
                .then(|| {
                    shard.resource(&ResKey {
                        presentity: presentity.clone(),
                        pkg: Pkg::Presence,
                    })
                })
                .flatten();
            let empty = Resource::default();
            let resource = shard.resource(&res).unwrap_or(&empty);
            let body = self.body_for(&res, resource, &mut sub, presence);
            let st = self.state_of(&sub, now);
            // A new subscription: the whole record goes to disk before the 200.
            out.push(self.next_notify(&res, &mut sub, st, body, &mut writes, Persist::Record));
        }
        if fresh_resource {
            // A new resource: what the watcher just got is the idle document.
            if let Some(r) = shard.resources.get_mut(&res) {
                r.fanned_out = Some(self.snapshot(&res, &Resource::default()));
            }
        }
        self.emit_subscription(SubscriptionChange::Created, ev.pkg, &sub.rec);
        let resource = shard.resources.entry(res.clone()).or_default();
        resource.subs.insert(key.clone(), sub);
        resource.sent_current();
        self.dialog_index(&key).insert(key.clone(), res.clone());
        self.schedule(
            Timer::SubscriptionExpiry(res.clone(), key.clone()),
            expiry_at,
        );
        if let Some(e) = entry {
            self.winfo_changed(&mut shard, &presentity, e, &mut writes, &mut out);
        }
        let durable = self.store.write(writes);
        drop(shard);
        Ok(Reply::AfterWrite {
            response,
            durable,
            notifies: self.build_notifies(out),
            fanout: None,
        })
    }

    /// The resource a SUBSCRIBE or PUBLISH is about (RFC 6665 §4.1.2.1, RFC 3903 §6 step 2):
    /// the Request-URI, or To when phones put only our address there (Yealink), as our
    /// canonical AOR; 404 for a user of another domain.
    pub(super) fn presentity_of<'a>(
        &self,
        req: &'a Request,
        parsed: &'a Parsed,
    ) -> Result<(&'a crate::sip::SipUri, Arc<str>), (u16, String)> {
        let uri = req
            .uri
            .as_sip()
            .filter(|u| u.user.is_some())
            .or_else(|| parsed.to.uri.as_sip())
            .ok_or((416, "Unsupported URI Scheme in To".to_string()))?;
        let presentity = self.domains.local_aor(uri).ok_or_else(|| {
            (
                404,
                format!("Not Found: {} is not a user of this domain", uri.aor()),
            )
        })?;
        Ok((uri, presentity.into()))
    }

    /// Our Contact in a new subscription dialog.
    /// Our Contact in a new subscription's dialog, and its `host:port` (the Via of our
    /// NOTIFYs, [`routing::sent_by`] of it, without printing and parsing it back).
    pub(super) fn our_contact(&self, req: &Request, peer: &Peer) -> (String, Arc<str>) {
        if let Some(u) = &self.cfg.server_address {
            let c = u.to_string();
            let sent_by = super::routing::sent_by(&c).into();
            return (c, sent_by);
        }
        let host = if peer.local.ip().is_unspecified() {
            match req.uri.as_sip() {
                Some(u) => u.host.to_string(),
                None => Host::from(peer.local.ip()).to_string(),
            }
        } else {
            Host::from(peer.local.ip()).to_string()
        };
        let sent_by: Arc<str> = format!("{host}:{}", peer.local.port()).into();
        let mut c = format!("sip:{sent_by}");
        if peer.proto == Proto::Tcp {
            c.push_str(";transport=tcp");
        }
        (c, sent_by)
    }

    /// A SUBSCRIBE inside an existing subscription dialog: refresh or unsubscribe.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn resubscribe(
        &self,
        req: &Request,
        parsed: &Parsed,
        peer: Peer,
        watcher: &str,
        ev: event::EventHeader,
        expires: u32,
        call_id: &str,
        local_tag: &str,
        remote_tag: &str,
        contact: Option<String>,
        now: u64,
    ) -> Result<Reply, Response> {
        let fail = |status: u16, reason: &str| Self::error_reply(req, status, reason, local_tag);
        let key: Arc<[u8]> = subscription_key(call_id, local_tag, remote_tag).into();
        let gone = || fail(481, "Subscription Does Not Exist");
        let res = self
            .dialog_index(&key)
            .get(&key)
            .cloned()
            .ok_or_else(gone)?;
        let mut shard = self.shard(&res.presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let decision = {
            let sub = shard
                .resources
                .get_mut(&res)
                .and_then(|r| r.subs.get_mut(&key))
                .ok_or_else(gone)?;
            let stored = decide::DialogSide {
                watcher: &sub.rec.watcher,
                pkg: res.pkg,
                event_id: sub.rec.event_id.as_deref(),
                cseq: sub.rec.remote_cseq,
            };
            let asked = decide::DialogSide {
                watcher,
                pkg: ev.pkg,
                event_id: ev.id.as_deref(),
                cseq: parsed.cseq.seq,
            };
            let decision = decide::in_dialog(stored, asked, expires, now)
                .map_err(|e| fail(e.status(), &e.to_string()))?;
            sub.rec.remote_cseq = parsed.cseq.seq;
            if let Some(c) = contact {
                sub.rec.remote_target = c;
            }
            sub.rec.flow = flow_of(&peer);
            if let Some(r) = notify_route(&sub.rec, &self.trusted) {
                sub.route = r;
            }
            decision
        };
        let mut response = req.response(200, "OK", Some(local_tag));
        response
            .headers
            .push(HeaderName::Expires, expires.to_string());
        let contact_of = shard.resources[&res].subs[&key].rec.contact.clone();
        response
            .headers
            .push(HeaderName::Contact, format!("<{contact_of}>"));
        response.headers.push(HeaderName::AllowEvents, ALLOW_EVENTS);
        if let decide::InDialog::Refresh { expires_at } = decision {
            let send_now = {
                let sub = shard
                    .resources
                    .get_mut(&res)
                    .and_then(|r| r.subs.get_mut(&key))
                    .ok_or_else(gone)?;
                sub.rec.expires_at = expires_at;
                sub.failures = 0;
                self.quotas.recovered(
                    &sub.rec.watcher,
                    &SubRef {
                        res: res.clone(),
                        key: key.clone(),
                    },
                );
                sub.winfo_full = true;
                self.emit_subscription(SubscriptionChange::Refreshed, res.pkg, &sub.rec);
                let send_now = sub.delivery.changed();
                if !send_now {
                    // Owed; the refresh is stored now.
                    writes.push(PresenceWrite::subscription(&sub.rec));
                }
                send_now
            };
            self.cancel(&Timer::Retry(res.clone(), key.clone()));
            self.schedule(
                Timer::SubscriptionExpiry(res.clone(), key.clone()),
                self.at_unix(expires_at),
            );
            // RFC 6665 §4.2.1.2: a refresh is answered with a NOTIFY of the current state.
            if send_now {
                if let Some(n) =
                    self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Record)
                {
                    out.push(n);
                }
            }
        } else {
            // RFC 6665 §4.2.1.4: unsubscribing gets a final NOTIFY with the state.
            self.terminate(
                &mut shard,
                &res,
                &key,
                "timeout",
                true,
                &mut writes,
                &mut out,
            );
        }
        let durable = self.store.write(writes);
        drop(shard);
        Ok(Reply::AfterWrite {
            response,
            durable,
            notifies: self.build_notifies(out),
            fanout: None,
        })
    }

    // ---------------------------------------------------------------- authorization decisions

    /// The presentity (or the admin) decided about a watcher (RFC 3857's pending watchers):
    /// `Allow` activates its pending subscriptions with a full NOTIFY, `Block` ends them with
    /// `terminated;reason=rejected`. Returns how many subscriptions changed.
    pub fn authorize(&self, presentity: &str, watcher: &str, decision: Policy) -> usize {
        self.authorize_in(presentity, watcher, None, decision)
    }

    /// [`Presence::authorize`] for the subscriptions in `pkg` only (`None`: every package).
    pub fn authorize_in(
        &self,
        presentity: &str,
        watcher: &str,
        pkg: Option<Pkg>,
        decision: Policy,
    ) -> usize {
        let mut shard = self.shard(presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        let mut changed = 0;
        let keys: Vec<(ResKey, Arc<[u8]>)> = shard
            .resources
            .iter()
            .filter(|(k, _)| {
                &*k.presentity == presentity
                    && k.pkg != Pkg::Winfo
                    && pkg.is_none_or(|p| p == k.pkg)
            })
            .flat_map(|(k, r)| {
                r.subs
                    .iter()
                    .filter(|(_, s)| s.rec.watcher == watcher)
                    .map(move |(sk, _)| (k.clone(), sk.clone()))
            })
            .collect();
        for (res, key) in keys {
            match decision {
                Policy::Block => {
                    self.terminate(
                        &mut shard,
                        &res,
                        &key,
                        "rejected",
                        true,
                        &mut writes,
                        &mut out,
                    );
                    changed += 1;
                }
                Policy::Allow => {
                    let entry = {
                        let Some(sub) = shard
                            .resources
                            .get_mut(&res)
                            .and_then(|r| r.subs.get_mut(&key))
                        else {
                            continue;
                        };
                        if sub.rec.state != SubState::Pending {
                            continue;
                        }
                        sub.rec.state = SubState::Active;
                        self.emit_subscription(SubscriptionChange::Activated, res.pkg, &sub.rec);
                        let in_flight = !sub.delivery.changed();
                        if in_flight {
                            // No NOTIFY (which would write the record) until the one in
                            // flight is answered: store the decision now.
                            writes.push(PresenceWrite::subscription(&sub.rec));
                        }
                        (res.pkg == Pkg::Presence)
                            .then(|| {
                                self.winfo_entry(sub, watcherinfo::WatcherEvent::Approved, false)
                            })
                            .map(|e| (e, in_flight))
                    };
                    let in_flight = entry.as_ref().map(|e| e.1).unwrap_or(false);
                    if !in_flight {
                        if let Some(n) =
                            self.notify_one(&mut shard, &res, &key, &mut writes, Persist::Record)
                        {
                            out.push(n);
                        }
                    }
                    if let Some((e, _)) = entry {
                        self.winfo_changed(&mut shard, &res.presentity, e, &mut writes, &mut out);
                    }
                    changed += 1;
                }
                Policy::Confirm => {}
            }
        }
        let durable = self.write_gating(writes);
        drop(shard);
        self.send(out, durable);
        changed
    }

    // ----------------------------------------------------------------------- NOTIFY outcomes

    /// A NOTIFY could not leave: the write it waited for (a reservation, the record) did not
    /// reach the disk. The reserved range held in memory is not on disk then, so the next
    /// NOTIFY reserves again before it leaves; the state is retried as after a lost NOTIFY.
    pub fn not_stored(&self, sub: &SubRef) {
        {
            let mut shard = self.shard(&sub.res.presentity);
            if let Some(s) = shard
                .resources
                .get_mut(&sub.res)
                .and_then(|r| r.subs.get_mut(&sub.key))
            {
                s.rec.cseq_reserved = s.rec.local_cseq;
            }
        }
        self.notify_outcome(sub, Outcome::Failed(500));
    }

    /// What became of a NOTIFY we sent.
    pub fn notify_outcome(&self, sub: &SubRef, outcome: Outcome) {
        let mut shard = self.shard(&sub.res.presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        if shard
            .resources
            .get(&sub.res)
            .is_some_and(|r| r.closing.contains_key(&sub.key))
        {
            let last = self.closing_answered(&mut shard, sub, outcome);
            drop(shard);
            self.send(last.into_iter().collect(), None);
            return;
        }
        let Some(s) = shard
            .resources
            .get_mut(&sub.res)
            .and_then(|r| r.subs.get_mut(&sub.key))
        else {
            return;
        };
        s.last_answer = Some(match outcome {
            Outcome::Delivered => 200,
            Outcome::Failed(status) | Outcome::Rejected(status) => status,
        });
        // Beyond the watcher's failing subscriptions, the one failing longest, to end once
        // this shard's lock is released (it may be another presentity's).
        let mut give_up = None;
        match decide::after_answer(
            outcome,
            s.failures,
            s.profile.keep_on_timeout,
            s.profile.retry_ms,
        ) {
            decide::AfterAnswer::Delivered => {
                if s.failures > 0 {
                    self.quotas.recovered(&s.rec.watcher, sub);
                }
                s.failures = 0;
                if s.delivery.delivered() {
                    if let Some(n) = self.notify_one(
                        &mut shard,
                        &sub.res,
                        &sub.key,
                        &mut writes,
                        Persist::Reservation,
                    ) {
                        out.push(n);
                    }
                }
            }
            decide::AfterAnswer::Retry { failures, after } => {
                if s.failures == 0 {
                    // The first failure of a streak only (see `Event::NotifyFailed`).
                    self.emit(Event::NotifyFailed {
                        presentity: s.rec.presentity.clone(),
                        event: sub.res.pkg.key(),
                        watcher: s.rec.watcher.clone(),
                        status: s.last_answer.unwrap_or(408),
                        gave_up: false,
                    });
                }
                s.failures = failures;
                s.delivery.failed();
                s.winfo_full = true;
                give_up = self.quotas.failed(&s.rec.watcher, sub);
                self.notify_failures.retried();
                self.notify_counts.retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(watcher = %s.rec.watcher, presentity = %sub.res.presentity, ?outcome, failures, "NOTIFY failed; retrying");
                self.schedule(
                    Timer::Retry(sub.res.clone(), sub.key.clone()),
                    self.now() + after,
                );
            }
            decide::AfterAnswer::End => {
                self.emit(Event::NotifyFailed {
                    presentity: s.rec.presentity.clone(),
                    event: sub.res.pkg.key(),
                    watcher: s.rec.watcher.clone(),
                    status: s.last_answer.unwrap_or(481),
                    gave_up: true,
                });
                self.notify_failures.refused();
                self.notify_counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(watcher = %s.rec.watcher, presentity = %sub.res.presentity, ?outcome, "NOTIFY refused; ending the subscription");
                self.terminate(
                    &mut shard,
                    &sub.res,
                    &sub.key,
                    "deactivated",
                    false,
                    &mut writes,
                    &mut out,
                );
            }
        }
        let durable = self.write_gating(writes);
        drop(shard);
        self.send(out, durable);
        if let Some(oldest) = give_up {
            self.give_up(&oldest);
        }
    }

    /// Ends a subscription whose watcher has too many failing
    /// (`presence.max_failing_watchers_per_user`): no final NOTIFY (it would be one more
    /// transaction to a watcher that answers nothing); a refresh gets 481 and the watcher
    /// subscribes again.
    fn give_up(&self, sub: &SubRef) {
        let mut shard = self.shard(&sub.res.presentity);
        let mut writes = Vec::new();
        let mut out = Vec::new();
        if let Some(s) = shard
            .resources
            .get(&sub.res)
            .and_then(|r| r.subs.get(&sub.key))
        {
            self.notify_failures.given_up();
            tracing::debug!(watcher = %s.rec.watcher, presentity = %sub.res.presentity, "too many failing subscriptions of this watcher (presence.max_failing_watchers_per_user); ending the one failing longest");
        }
        self.terminate(
            &mut shard,
            &sub.res,
            &sub.key,
            "giveup",
            false,
            &mut writes,
            &mut out,
        );
        let durable = self.write_gating(writes);
        drop(shard);
        self.send(out, durable);
    }
}
