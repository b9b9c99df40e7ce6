//! Rendering outside the shard lock, and the render cache. Under the lock a NOTIFY gets a
//! [`Body`]: a [`Snapshot`] of the publications (one per change, with a higher generation
//! each time) and the watcher's view; the XML is rendered after the lock is released. Each
//! document is rendered once per generation and view (Accept, vendor options), with a
//! sentinel version that each watcher's NOTIFY replaces, so a fan-out to 1,000 watchers
//! renders once.

use super::*;

/// Version substituted per watcher in a document rendered once for a whole fan-out.
pub(super) const VERSION_SENTINEL: u32 = u32::MAX;

/// Packages whose documents carry a per-watcher `version` (RFC 4235, RFC 3858).
pub(super) fn versioned(pkg: Pkg) -> bool {
    matches!(pkg, Pkg::Dialog | Pkg::Sla | Pkg::Winfo)
}

/// Rendered documents per (Accept, render options), version left as the sentinel, for one
/// generation of a resource's publications. Shared between the shard (which hands out
/// [`Snapshot`]s) and the renderers, which run after the shard lock is released: its own lock
/// is held for a look-up or an insert, never while rendering. A render of an older
/// generation is never stored over a newer one, so a stale render cannot be used for a newer
/// state.
#[derive(Debug, Default)]
pub(super) struct RenderCache {
    generation: u64,
    docs: HashMap<(Vec<String>, RenderOptions), Option<Rendered>>,
}

/// Most distinct (Accept, options) views cached per resource (each is one document).
pub(super) const MAX_CACHED_VIEWS: usize = 16;

/// One state of a resource's publications, taken under the shard lock and rendered after it
/// is released. `generation` is new (and higher) for every change of the publications.
#[derive(Debug)]
pub(super) struct Snapshot {
    res: ResKey,
    generation: u64,
    pub(super) pubs: Vec<Publication>,
    cache: Arc<Mutex<RenderCache>>,
    /// Whether its renders are kept in the cache: only when more than one watcher can use
    /// them. A presentity with one watcher (a buddy list) would otherwise keep a copy of the
    /// document its watcher already got, for as long as the state lasts.
    shared: bool,
}

impl Snapshot {
    /// Whether `pubs` are the publications this snapshot was taken of (each change of a
    /// publication gives it a new arrival number).
    fn is_of(&self, pubs: &[Publication]) -> bool {
        self.pubs.len() == pubs.len()
            && self
                .pubs
                .iter()
                .zip(pubs)
                .all(|(a, b)| a.rec.seq == b.rec.seq)
    }

    /// Whether every view renders the same document from both: the same bodies from the same
    /// sources, in the same order of arrival (the packages compose by arrival order, not by
    /// the arrival numbers themselves). A refresh that changes nothing is not re-sent.
    pub(super) fn same_document(&self, other: &Snapshot) -> bool {
        fn by_arrival(pubs: &[Publication]) -> Vec<&PublicationRecord> {
            let mut v: Vec<_> = pubs.iter().map(|p| &p.rec).collect();
            v.sort_by_key(|r| r.seq);
            v
        }
        self.pubs.len() == other.pubs.len()
            && by_arrival(&self.pubs)
                .into_iter()
                .zip(by_arrival(&other.pubs))
                .all(|(a, b)| {
                    a.source_id == b.source_id
                        && a.content_type == b.content_type
                        && a.body == b.body
                })
    }
}

/// A NOTIFY body as decided under the shard lock, rendered after it is released.
#[derive(Debug)]
pub(super) enum Body {
    /// Pending, or a final NOTIFY after a rejection: no body.
    None,
    /// The resource's document for this watcher's view, with its version (the view's
    /// Accept is the subscription's, shared in its [`DialogHead`](super::notify::DialogHead)).
    Document {
        snapshot: Arc<Snapshot>,
        options: RenderOptions,
        version: u32,
    },
    /// A watcher-info document (RFC 3858), its watchers already listed.
    Winfo(watcherinfo::WatcherInfo),
}

impl Body {
    pub(super) fn is_some(&self) -> bool {
        !matches!(self, Body::None)
    }
}

/// Replaces the one sentinel version attribute value in a document rendered for a whole
/// fan-out with this watcher's version.
pub(super) fn with_version(doc: &Rendered, version: u32) -> Rendered {
    let needle = format!("\"{VERSION_SENTINEL}\"");
    let body = match std::str::from_utf8(&doc.body) {
        Ok(s) => s
            .replacen(&needle, &format!("\"{version}\""), 1)
            .into_bytes(),
        Err(_) => doc.body.clone(),
    };
    Rendered {
        content_type: doc.content_type,
        body,
    }
}

fn lock(cache: &Mutex<RenderCache>) -> MutexGuard<'_, RenderCache> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

impl Presence {
    /// The publications of `resource` as they are now, for rendering after the shard lock is
    /// released: the same snapshot (and generation) until they change.
    pub(super) fn snapshot(&self, res: &ResKey, resource: &Resource) -> Arc<Snapshot> {
        self.snapshot_for(res, resource, resource.subs.len() > 1)
    }

    /// [`Presence::snapshot`], its renders cached when `shared`.
    fn snapshot_for(&self, res: &ResKey, resource: &Resource, shared: bool) -> Arc<Snapshot> {
        let mut memo = resource.snapshot.borrow_mut();
        let same = memo.as_ref().filter(|s| s.is_of(&resource.pubs));
        if let Some(s) = same.filter(|s| s.shared == shared) {
            return s.clone();
        }
        let s = Arc::new(Snapshot {
            res: res.clone(),
            // From the one counter every publication change draws from: a later state of a
            // resource always has a higher generation. The same publications seen by more
            // (or fewer) watchers keep theirs: the same documents.
            generation: same.map_or_else(
                || self.seq.fetch_add(1, Ordering::Relaxed),
                |s| s.generation,
            ),
            pubs: resource.pubs.clone(),
            cache: resource.rendered.clone(),
            shared,
        });
        *memo = Some(s.clone());
        s
    }

    /// Renders a NOTIFY body decided under the lock for a watcher accepting `accept`. Called
    /// with no shard lock held.
    pub(super) fn render_body(&self, body: Body, accept: &[String]) -> Option<Rendered> {
        match body {
            Body::None => None,
            Body::Document {
                snapshot,
                options,
                version,
            } => self.render_for(&snapshot, accept, version, options),
            Body::Winfo(info) => Some(Rendered {
                content_type: "application/watcherinfo+xml",
                body: watcherinfo::render(&info).into_bytes(),
            }),
        }
    }

    /// The document for one view (Accept, options) at `version`. Rendered once per
    /// generation and view, then reused: a fan-out, and each NOTIFY owed after a watcher's
    /// answer, substitute the version into the cached document instead of parsing every
    /// publication again.
    pub(super) fn render_for(
        &self,
        snapshot: &Snapshot,
        accept: &[String],
        version: u32,
        options: RenderOptions,
    ) -> Option<Rendered> {
        let view = (accept.to_vec(), options);
        let cached = {
            let cache = lock(&snapshot.cache);
            (cache.generation == snapshot.generation)
                .then(|| cache.docs.get(&view).cloned())
                .flatten()
        };
        let doc = match cached {
            Some(d) => d,
            None => {
                let d = self.render_uncached(snapshot, accept, VERSION_SENTINEL, options);
                let mut cache = lock(&snapshot.cache);
                if cache.generation < snapshot.generation {
                    cache.generation = snapshot.generation;
                    cache.docs.clear();
                }
                if snapshot.shared
                    && cache.generation == snapshot.generation
                    && cache.docs.len() < MAX_CACHED_VIEWS
                {
                    cache.docs.insert(view, d.clone());
                }
                d
            }
        }?;
        Some(if versioned(snapshot.res.pkg) {
            with_version(&doc, version)
        } else {
            doc
        })
    }

    pub(super) fn render_uncached(
        &self,
        snapshot: &Snapshot,
        accept: &[String],
        version: u32,
        options: RenderOptions,
    ) -> Option<Rendered> {
        let pkg = package(snapshot.res.pkg)?;
        // A member phone of a shared line does not get its own dialogs back.
        let own_source = options.own_phone.map(crate::bla::source_id);
        let bodies: Vec<PublishedBody<'_>> = snapshot
            .pubs
            .iter()
            .filter(|p| own_source.as_deref() != Some(p.rec.source_id.as_str()))
            .map(|p| PublishedBody {
                source_id: &p.rec.source_id,
                content_type: &p.rec.content_type,
                body: match &p.rec.body {
                    PublicationBody::Document(b) => b,
                    PublicationBody::Dialogs(_) => &[],
                },
                dialogs: match &p.rec.body {
                    PublicationBody::Dialogs(d) => Some(d),
                    PublicationBody::Document(_) => None,
                },
                seq: p.rec.seq,
            })
            .collect();
        Some(pkg.render(
            &snapshot.res.presentity,
            &bodies,
            &WatcherView {
                accept,
                version,
                options,
            },
        ))
    }

    pub(super) fn options_of(sub: &Sub) -> RenderOptions {
        let profile = &sub.profile;
        RenderOptions {
            without_dialog_ids: !sub.dialog_ids,
            dialog_idle: profile.dialog_idle,
            dialog_single: profile.dialog_single,
            caller_confirmed: profile.caller_confirmed,
            own_phone: if sub.rec.event == Pkg::Sla.key() {
                crate::bla::phone_of(&sub.rec.remote_target)
            } else {
                None
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4235_4_1_each_watcher_gets_its_own_version_in_the_shared_document() {
        let doc = Rendered {
            content_type: "application/dialog-info+xml",
            body: format!(
                "<dialog-info version=\"{VERSION_SENTINEL}\"><dialog id=\"{VERSION_SENTINEL}\"/>"
            )
            .into_bytes(),
        };
        let mine = with_version(&doc, 7);
        assert_eq!(
            String::from_utf8(mine.body).unwrap(),
            format!("<dialog-info version=\"7\"><dialog id=\"{VERSION_SENTINEL}\"/>"),
            "only the first (the document's version) is replaced"
        );
        assert!(versioned(Pkg::Dialog) && versioned(Pkg::Sla) && versioned(Pkg::Winfo));
        assert!(!versioned(Pkg::Presence) && !versioned(Pkg::MessageSummary));
    }

    fn publication(source: &str, body: &str, seq: u64) -> Publication {
        Publication {
            rec: PublicationRecord {
                presentity: "sip:1001@example.com".into(),
                event: "presence".into(),
                etag: format!("e{seq}"),
                source_id: source.into(),
                content_type: "application/pidf+xml".into(),
                body: body.as_bytes().into(),
                expires_at: seq,
                seq,
            },
        }
    }

    fn presence() -> Arc<Presence> {
        let cfg =
            crate::config::Config::from_toml("[server]\ndomain = \"example.com\"\n", "test.toml")
                .unwrap();
        Presence::new(
            &cfg,
            Arc::new(crate::storage::MemoryStore::new()),
            Default::default(),
            Clock::new(),
            crate::ids::Ids::new().expect("OS RNG"),
            crate::transaction::BranchKey::random().expect("OS RNG"),
        )
    }

    fn res() -> ResKey {
        ResKey {
            presentity: "sip:1001@example.com".into(),
            pkg: Pkg::Presence,
        }
    }

    #[test]
    fn a_snapshot_is_kept_until_the_publications_change_and_then_is_newer() {
        let p = presence();
        let mut r = Resource::default();
        r.pubs.push(publication("a", "one", 1));
        let first = p.snapshot(&res(), &r);
        assert!(Arc::ptr_eq(&first, &p.snapshot(&res(), &r)), "unchanged");
        r.pubs[0] = publication("a", "two", 2);
        let second = p.snapshot(&res(), &r);
        assert!(second.generation > first.generation);
        assert!(!second.same_document(&first));
    }

    #[test]
    fn rfc3903_4_a_refresh_that_changes_nothing_is_the_same_document() {
        // A refresh gives the publication a new arrival number, its ETag and expiry change.
        let before = [publication("a", "one", 1), publication("b", "two", 2)];
        let after = [publication("a", "one", 3), publication("b", "two", 2)];
        let snap = |pubs: &[Publication]| Snapshot {
            res: res(),
            generation: 0,
            pubs: pubs.to_vec(),
            cache: Default::default(),
            shared: true,
        };
        // a now arrived after b: the packages compose by arrival (newest wins), so that is
        // another document.
        assert!(!snap(&before).same_document(&snap(&after)));
        let refreshed = [publication("a", "one", 3), publication("b", "two", 4)];
        assert!(snap(&before).same_document(&snap(&refreshed)));
        assert!(!snap(&before).same_document(&snap(&before[..1])));
        let other = [publication("a", "one", 1), publication("b", "three", 2)];
        assert!(!snap(&before).same_document(&snap(&other)));
    }

    #[test]
    fn a_render_of_an_older_state_is_never_used_for_a_newer_one() {
        let p = presence();
        let mut r = Resource::default();
        let pidf = |basic: &str| {
            format!(
                "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
                 entity=\"sip:1001@example.com\"><tuple id=\"t\"><status><basic>{basic}\
                 </basic></status></tuple></presence>"
            )
        };
        r.pubs.push(publication("a", &pidf("closed"), 1));
        // As with several watchers: renders are cached.
        let old = p.snapshot_for(&res(), &r, true);
        r.pubs[0] = publication("a", &pidf("open"), 2);
        let new = p.snapshot_for(&res(), &r, true);
        let view = |s: &Snapshot| p.render_for(s, &[], 0, RenderOptions::default()).unwrap();
        // The newer state rendered first, then a late render of the older one: the older
        // does not replace the newer in the cache.
        let new_doc = view(&new);
        let old_doc = view(&old);
        assert_ne!(new_doc.body, old_doc.body);
        assert_eq!(view(&new).body, new_doc.body);
        assert_eq!(lock(&new.cache).generation, new.generation);
        assert_eq!(
            view(&old).body,
            old_doc.body,
            "rendered again, not the newer"
        );
    }

    #[test]
    fn a_document_one_watcher_alone_uses_is_not_kept() {
        let p = presence();
        let mut r = Resource::default();
        r.pubs.push(publication("a", "one", 1));
        let alone = p.snapshot(&res(), &r);
        assert!(p
            .render_for(&alone, &[], 0, RenderOptions::default())
            .is_some());
        assert!(lock(&alone.cache).docs.is_empty(), "nothing kept");
        // Several watchers of the same state: the same generation, its render kept.
        let shared = p.snapshot_for(&res(), &r, true);
        assert_eq!(shared.generation, alone.generation);
        p.render_for(&shared, &[], 0, RenderOptions::default());
        assert_eq!(lock(&shared.cache).docs.len(), 1);
    }
}
