//! The render cache: each document is rendered once per change of a resource's publications
//! and per view (Accept, vendor options), with a sentinel version that each watcher's NOTIFY
//! replaces, so a fan-out to 1,000 watchers renders once.

use super::*;

/// Version substituted per watcher in a document rendered once for a whole fan-out.
pub(super) const VERSION_SENTINEL: u32 = u32::MAX;

/// Packages whose documents carry a per-watcher `version` (RFC 4235, RFC 3858).
pub(super) fn versioned(pkg: Pkg) -> bool {
    matches!(pkg, Pkg::Dialog | Pkg::Sla | Pkg::Winfo)
}

/// Rendered documents per (Accept, render options), version left as the sentinel, valid while
/// the publications are those whose arrival numbers hash to `pubs_key`: every change of a
/// publication gives it a new number, so a changed set never matches an old key.
#[derive(Debug, Default)]
pub(super) struct RenderCache {
    pubs_key: u64,
    docs: HashMap<(Vec<String>, RenderOptions), Option<Rendered>>,
}

/// Most distinct (Accept, options) views cached per resource (each is one document).
pub(super) const MAX_CACHED_VIEWS: usize = 16;

pub(super) fn pubs_key(pubs: &[Publication]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ pubs.len() as u64;
    for p in pubs {
        h ^= p.rec.seq;
        h = h.wrapping_mul(0x0100_0000_01b3).rotate_left(17);
    }
    h
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

impl Presence {
    /// The document for one view (Accept, options) at `version`. Rendered once per change of
    /// the publications and view, then reused: a fan-out, and each NOTIFY owed after a
    /// watcher's answer, substitute the version into the cached document instead of parsing
    /// every publication again.
    pub(super) fn render_for(
        &self,
        res: &ResKey,
        resource: &Resource,
        accept: &[String],
        version: u32,
        options: RenderOptions,
    ) -> Option<Rendered> {
        let key = pubs_key(&resource.pubs);
        let view = (accept.to_vec(), options);
        let cached = {
            let mut cache = resource.rendered.borrow_mut();
            if cache.pubs_key != key {
                cache.pubs_key = key;
                cache.docs.clear();
            }
            cache.docs.get(&view).cloned()
        };
        let doc = match cached {
            Some(d) => d,
            None => {
                let d = self.render_uncached(res, resource, accept, VERSION_SENTINEL, options);
                let mut cache = resource.rendered.borrow_mut();
                if cache.docs.len() < MAX_CACHED_VIEWS {
                    cache.docs.insert(view, d.clone());
                }
                d
            }
        }?;
        Some(if versioned(res.pkg) {
            with_version(&doc, version)
        } else {
            doc
        })
    }

    pub(super) fn render_uncached(
        &self,
        res: &ResKey,
        resource: &Resource,
        accept: &[String],
        version: u32,
        options: RenderOptions,
    ) -> Option<Rendered> {
        let pkg = package(res.pkg)?;
        let bodies: Vec<PublishedBody<'_>> = resource
            .pubs
            .iter()
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
            &res.presentity,
            &bodies,
            &WatcherView {
                accept,
                version,
                options,
            },
        ))
    }

    pub(super) fn doc_hash(&self, res: &ResKey, resource: &Resource) -> u64 {
        match self.render_for(res, resource, &[], 0, RenderOptions::default()) {
            Some(r) => hash_of(&r.body),
            None => 0,
        }
    }

    pub(super) fn options_of(profile: &VendorProfile) -> RenderOptions {
        RenderOptions {
            dialog_idle: profile.dialog_idle,
            dialog_single: profile.dialog_single,
            caller_confirmed: profile.caller_confirmed,
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

    #[test]
    fn a_changed_publication_changes_the_cache_key() {
        let p = |seq| Publication {
            rec: PublicationRecord {
                presentity: "sip:1001@example.com".into(),
                event: "presence".into(),
                etag: "e".into(),
                source_id: "s".into(),
                content_type: "application/pidf+xml".into(),
                body: PublicationBody::default(),
                expires_at: 0,
                seq,
            },
        };
        assert_eq!(pubs_key(&[p(1), p(2)]), pubs_key(&[p(1), p(2)]));
        assert_ne!(pubs_key(&[p(1), p(2)]), pubs_key(&[p(1), p(3)]));
        assert_ne!(pubs_key(&[p(1)]), pubs_key(&[p(1), p(2)]));
        assert_ne!(pubs_key(&[]), pubs_key(&[p(1)]));
    }
}
