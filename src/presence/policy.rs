//! Policy: who may watch whom (RFC 3856 §5.1.2 authorization, RFC 3857 pending watchers,
//! the config's rules) and which documents a watcher takes (RFC 6665 §3.1.3 Accept). Pure:
//! plain values in, a decision out.

use crate::config::{Policy, PresenceConfig, RulePattern};
use crate::domain::Domains;
use crate::presence::event::Pkg;
use crate::sip::{HeaderName, Request};

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
    pub(super) fn new(pattern: &RulePattern, domains: &Domains) -> Pattern {
        match pattern {
            RulePattern::Any => Pattern::Any,
            RulePattern::Domain(d) => Pattern::Domain(d.to_ascii_lowercase()),
            RulePattern::Uri(s) => Pattern::Aor(domains.aor(s)),
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
                    presentity: Pattern::new(&r.presentity, domains),
                    watcher: Pattern::new(&r.watcher, domains),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policies(extra: &str) -> Policies {
        let cfg = Config::from_toml(
            &format!(
                "[server]\ndomain = \"example.com\"\nlisten = [\"udp:127.0.0.1:0\"]\n\
                 data_dir = \"/nonexistent\"\n[presence]\n{extra}"
            ),
            "t.toml",
        )
        .unwrap();
        Policies::new(&cfg.presence, &Domains::new(&cfg))
    }

    const A: &str = "sip:1001@example.com";
    const B: &str = "sip:1002@example.com";
    const EVE: &str = "sip:eve@other.test";

    #[test]
    fn rfc3856_5_1_2_domain_policies_by_default() {
        let p = policies("");
        assert_eq!(p.decide(Pkg::Presence, A, B, true), Policy::Allow);
        assert_eq!(p.decide(Pkg::Dialog, A, EVE, false), Policy::Confirm);
        let p = policies("same_domain = \"confirm\"\nother_domains = \"block\"\n");
        assert_eq!(p.decide(Pkg::Presence, A, B, true), Policy::Confirm);
        assert_eq!(p.decide(Pkg::Presence, A, EVE, false), Policy::Block);
        // A presentity may always watch itself.
        assert_eq!(p.decide(Pkg::Presence, A, A, true), Policy::Allow);
    }

    #[test]
    fn rfc3857_winfo_and_rfc3842_mailboxes_are_the_owners_unless_a_rule_says_otherwise() {
        let p = policies("");
        for pkg in [Pkg::Winfo, Pkg::MessageSummary] {
            assert_eq!(p.decide(pkg, A, B, true), Policy::Block, "{pkg:?}");
            assert_eq!(p.decide(pkg, A, A, true), Policy::Allow, "{pkg:?}");
        }
        let p = policies(
            "[[presence.rules]]\npresentity = \"sip:1001@example.com\"\n\
             watcher = \"sip:1002@example.com\"\naction = \"allow\"\n",
        );
        assert_eq!(p.decide(Pkg::Winfo, A, B, true), Policy::Allow);
    }

    #[test]
    fn rules_first_match_wins_with_domain_wildcards_case_insensitive() {
        let p = policies(
            "[[presence.rules]]\npresentity = \"*\"\nwatcher = \"*@OTHER.test\"\naction = \"block\"\n\
             [[presence.rules]]\npresentity = \"*\"\nwatcher = \"*\"\naction = \"allow\"\n",
        );
        assert_eq!(p.decide(Pkg::Presence, A, EVE, false), Policy::Block);
        assert_eq!(
            p.decide(Pkg::Presence, A, "sip:x@elsewhere.test", false),
            Policy::Allow
        );
    }

    #[test]
    fn rfc6665_3_1_3_accept_wildcards_and_the_package_default() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            accepts(&[], "application/pidf+xml"),
            "no Accept: the default"
        );
        assert!(accepts(&a(&["application/*"]), "application/pidf+xml"));
        assert!(accepts(&a(&["*/*"]), "application/dialog-info+xml"));
        assert!(!accepts(&a(&["text/plain"]), "application/pidf+xml"));
    }
}
