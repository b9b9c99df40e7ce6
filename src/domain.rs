//! The SIP domain(s) this server is responsible for (the configured domain, its aliases and
//! every specific address we listen on) and the one canonical AOR every service keys by.

use crate::config::Config;
use crate::sip::{Host, SipUri};

#[derive(Debug, Clone)]
pub struct Domains {
    hosts: Vec<Host>,
    /// The non-zero ports of `server.listen`: a URI of ours written with one of them is the
    /// same AOR as without (`sip:6333@192.0.2.10:5070` when we listen on 5070).
    ports: Vec<u16>,
    /// `server.domain`, lowercased: the host of canonical AORs.
    primary: String,
}

impl Domains {
    pub fn new(cfg: &Config) -> Domains {
        let mut hosts = vec![cfg.server.domain.clone()];
        hosts.extend(cfg.server.aliases.iter().cloned());
        let mut ports = Vec::new();
        for l in &cfg.server.listen {
            if !l.addr.ip().is_unspecified() {
                hosts.push(Host::from(l.addr.ip()));
            }
            if l.addr.port() != 0 && !ports.contains(&l.addr.port()) {
                ports.push(l.addr.port());
            }
        }
        Domains {
            hosts,
            ports,
            primary: cfg.server.domain.to_string().to_ascii_lowercase(),
        }
    }

    /// `server.domain`, lowercased.
    pub fn primary(&self) -> &str {
        &self.primary
    }

    pub fn serves(&self, host: &Host) -> bool {
        self.hosts.iter().any(|d| d.matches(host))
    }

    /// The canonical address-of-record of `uri`, the one key the registrar, the proxy, the
    /// dialog tracker, presence and usrloc use (RFC 3261 §10.3 step 5):
    ///
    /// - `sips:` names the same AOR as `sip:`; URI parameters and headers are dropped;
    /// - the user part is unescaped and kept case-sensitive (§19.1.4);
    /// - a host of ours (the domain, an alias, a listen address, in any case) with no port,
    ///   the scheme's default port (5060, 5061 for `sips:`) or one of our listen ports is
    ///   `server.domain`: `sip:6333@192.0.2.10:5060` is `sip:6333@example.com`;
    /// - any other host (or another port, which may be another service on our address) keeps
    ///   its host, lowercased, and its port unless it is the default: see [`SipUri::aor`].
    pub fn aor(&self, uri: &SipUri) -> String {
        if self.at_our_port(uri) && self.serves(&uri.host) {
            let mut s = String::from("sip:");
            if let Some(user) = &uri.user {
                s.push_str(&crate::sip::text::unescape(user));
                s.push('@');
            }
            s.push_str(&self.primary);
            s
        } else {
            uri.aor()
        }
    }

    /// Whether `uri` names no port, the scheme's default port (5060, 5061 for `sips:`) or one
    /// of our listen ports: at a host of ours, such a URI names us; at another port it names
    /// something else on the same host.
    pub fn at_our_port(&self, uri: &SipUri) -> bool {
        let default_port = if uri.secure { 5061 } else { 5060 };
        uri.port
            .is_none_or(|p| p == default_port || self.ports.contains(&p))
    }

    /// The canonical form of a stored AOR key (written before there was one canonical form:
    /// `sip:6333@192.0.2.10:5060`, `sips:`, an alias); a key that is no SIP URI is kept.
    pub fn aor_of_key(&self, key: &str) -> String {
        match crate::sip::Uri::parse(key) {
            Ok(crate::sip::Uri::Sip(u)) => self.aor(&u),
            _ => key.to_string(),
        }
    }

    /// The canonical AOR ([`Domains::aor`], `sip:user@domain`) of a user of ours: a URI with
    /// a user part at a host we serve and a port of ours; `None` for a foreign or user-less
    /// URI, or another port on our host (not us).
    pub fn local_aor(&self, uri: &SipUri) -> Option<String> {
        let user = uri.user.as_deref().filter(|u| !u.is_empty());
        (user.is_some() && self.serves(&uri.host) && self.at_our_port(uri)).then(|| self.aor(uri))
    }

    /// Whether `uri` is an AOR of the local user `name` (an authenticated user's own AOR):
    /// its user part, unescaped and compared case-sensitively, is `name`, at a host we serve.
    pub fn is_aor_of(&self, uri: &SipUri, name: &str) -> bool {
        self.serves(&uri.host) && user_of_aor(&self.aor(uri)) == name
    }
}

/// The user an AOR key (`sip:USER@host[:port]`, as [`Domains::aor`] writes it) belongs to. The
/// user part may itself hold an `@` (escaped on the wire); the host never does, so the last
/// `@` ends the user. `""` for an AOR without a user.
pub fn user_of_aor(aor: &str) -> &str {
    let rest = aor
        .strip_prefix("sips:")
        .or_else(|| aor.strip_prefix("sip:"))
        .unwrap_or(aor);
    rest.rsplit_once('@').map(|(user, _)| user).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Domains {
        let cfg = Config::from_toml(
            r#"
[server]
domain = "Example.COM"
aliases = ["192.0.2.10", "pbx.local"]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5070", "udp:0.0.0.0:5080"]
"#,
            "t.toml",
        )
        .unwrap();
        Domains::new(&cfg)
    }

    fn uri(s: &str) -> SipUri {
        crate::sip::Uri::parse(s).unwrap().as_sip().unwrap().clone()
    }

    /// Issue 11 item 1: every spelling a phone uses for one of our users is one AOR.
    #[test]
    fn rfc3261_10_3_canonical_aor_table() {
        let d = domains();
        let table = [
            // the domain itself, in any case, with or without the default port
            ("sip:6333@example.com", "sip:6333@example.com"),
            ("sip:6333@EXAMPLE.com", "sip:6333@example.com"),
            ("sip:6333@example.com:5060", "sip:6333@example.com"),
            // aliases: an IP (the D-Link DPH-150S's To), a name in any case
            ("sip:6333@192.0.2.10:5060", "sip:6333@example.com"),
            ("sip:6333@192.0.2.10", "sip:6333@example.com"),
            ("sip:6333@pbx.local", "sip:6333@example.com"),
            ("sip:6333@PBX.LOCAL", "sip:6333@example.com"),
            // a listen address, with its port or the default one; a wildcard socket's port
            ("sip:6333@127.0.0.1:5060", "sip:6333@example.com"),
            ("sip:6333@127.0.0.1:5070", "sip:6333@example.com"),
            ("sip:6333@pbx.local:5080", "sip:6333@example.com"),
            // sips: the same AOR; its default port is 5061
            ("sips:6333@example.com", "sip:6333@example.com"),
            ("sips:6333@192.0.2.10:5061", "sip:6333@example.com"),
            // parameters and headers dropped; the user's own parameters are part of the user
            ("sip:6333@example.com;user=phone", "sip:6333@example.com"),
            (
                "sip:6333@192.0.2.10:5060;transport=udp;user=phone?Subject=x",
                "sip:6333@example.com",
            ),
            (
                "sip:+4930123;isub=7@example.com;user=phone",
                "sip:+4930123;isub=7@example.com",
            ),
            // escaped user: unescaped; the user part stays case-sensitive (§19.1.4)
            ("sip:%36333@example.com", "sip:6333@example.com"),
            ("sip:alice%20b@example.com", "sip:alice b@example.com"),
            ("sip:Alice@example.com", "sip:Alice@example.com"),
            // another port on a host of ours is another AOR (maybe another service)
            ("sip:6333@example.com:7001", "sip:6333@example.com:7001"),
            ("sip:6333@127.0.0.1:5090", "sip:6333@127.0.0.1:5090"),
            ("sip:6333@Example.COM:5061", "sip:6333@example.com:5061"),
            // foreign domains keep their host (case folded) and any non-default port
            ("sip:bob@Elsewhere.TEST", "sip:bob@elsewhere.test"),
            ("sip:bob@elsewhere.test:5060", "sip:bob@elsewhere.test"),
            ("sips:bob@elsewhere.test:5061", "sip:bob@elsewhere.test"),
            ("sip:bob@elsewhere.test:5070", "sip:bob@elsewhere.test:5070"),
            ("sip:bob@[2001:DB8::1]:5060", "sip:bob@[2001:db8::1]"),
            // no user: the host alone
            ("sip:192.0.2.10:5060", "sip:example.com"),
        ];
        for (input, want) in table {
            assert_eq!(d.aor(&uri(input)), want, "{input}");
        }
        assert_ne!(
            d.aor(&uri("sip:alice@example.com")),
            d.aor(&uri("sip:Alice@example.com")),
            "user parts are case-sensitive"
        );
    }

    #[test]
    fn local_aor_is_for_users_of_our_hosts_only() {
        let d = domains();
        assert_eq!(
            d.local_aor(&uri("sip:1001@192.0.2.10:5060;transport=udp")),
            Some("sip:1001@example.com".into())
        );
        assert_eq!(d.local_aor(&uri("sip:1001@example.com:7001")), None);
        assert_eq!(d.local_aor(&uri("sip:1001@elsewhere.test")), None);
        assert_eq!(d.local_aor(&uri("sip:example.com")), None);
        assert!(d.is_aor_of(&uri("sip:%31001@PBX.local:5060"), "1001"));
        assert!(!d.is_aor_of(&uri("sip:1001@elsewhere.test"), "1001"));
        assert!(!d.is_aor_of(&uri("sip:10011@example.com"), "1001"));
        // Another port is another AOR, but still the user's own (the quota counts it).
        assert!(d.is_aor_of(&uri("sip:1001@example.com:7001"), "1001"));
    }
}
