//! Policy: who may watch whom (RFC 3856 §5.1.2 authorization, RFC 3857 pending watchers,
//! the config's rules) and which documents a watcher takes (RFC 6665 §3.1.3 Accept). Pure:
//! plain values in, a decision out.

use crate::config::{Policy, PresenceConfig};
use crate::domain::Domains;
use crate::presence::event::Pkg;
use crate::sip::{HeaderName, Request, Uri};

/// One side of an authorization rule, parsed once from the config.
#[derive(Debug, Clone)]
pub(super) enum Pattern {
    Any,
    /// `*@domain`, lowercased.
    Domain(String),
    /// A canonical AOR.
    Aor(String),
}

impl Pattern {
    pub(super) fn parse(pattern: &str, domains: &Domains) -> Pattern {
        if pattern == "*" {
            return Pattern::Any;
        }
        if let Some(d) = pattern.strip_prefix("*@") {
            return Pattern::Domain(d.to_ascii_lowercase());
        }
        match Uri::parse(pattern) {
            Ok(Uri::Sip(s)) => Pattern::Aor(domains.canonical_user(&s).unwrap_or_else(|| s.aor())),
            // Config validation refuses anything else; match nothing rather than everything.
            _ => Pattern::Aor(String::new()),
        }
    }

    pub(super) fn matches(&self, aor: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Domain(d) => aor
                .rsplit('@')
                .next()
                .is_some_and(|h| h.eq_ignore_ascii_case(d)),
            Pattern::Aor(a) => a == aor,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    presentity: Pattern,
    watcher: Pattern,
    action: Policy,
}

/// Media types of an Accept header, lowercased, without parameters.
pub(super) fn accept_list(req: &Request) -> Vec<String> {
    req.headers
        .list(HeaderName::Accept)
        .into_iter()
        .filter_map(|v| {
            let t = v.split(';').next()?.trim().to_ascii_lowercase();
            (!t.is_empty()).then_some(t)
        })
        .collect()
}

pub(super) fn accepts(accept: &[String], media: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    let major = media.split('/').next().unwrap_or("");
    accept
        .iter()
        .any(|a| a == media || a == "*/*" || a.strip_suffix("/*").is_some_and(|m| m == major))
}

/// The authorization rules and domain policies, parsed once from the config.
#[derive(Debug, Clone)]
pub(super) struct Policies {
    rules: Vec<Rule>,
    same_domain: Policy,
    other_domains: Policy,
}

impl Policies {
    pub(super) fn new(cfg: &PresenceConfig, domains: &Domains) -> Policies {
        Policies {
            rules: cfg
                .rules
                .iter()
                .map(|r| Rule {
                    presentity: Pattern::parse(&r.presentity, domains),
                    watcher: Pattern::parse(&r.watcher, domains),
                    action: r.action,
                })
                .collect(),
            same_domain: cfg.same_domain,
            other_domains: cfg.other_domains,
        }
    }

    /// The authorization decision for a watcher (RFC 3856 §5.1.2): the first matching rule,
    /// else the domain policy. A mailbox's state (message-summary) and a presentity's
    /// watcher list (winfo) are only for the owner unless a rule says otherwise.
    pub(super) fn decide(
        &self,
        pkg: Pkg,
        presentity: &str,
        watcher: &str,
        watcher_ours: bool,
    ) -> Policy {
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| r.presentity.matches(presentity) && r.watcher.matches(watcher))
        {
            return r.action;
        }
        if watcher == presentity {
            return Policy::Allow;
        }
        if matches!(pkg, Pkg::MessageSummary | Pkg::Winfo) {
            return Policy::Block;
        }
        if watcher_ours {
            self.same_domain
        } else {
            self.other_domains
        }
    }
}
