//! The SIP domain(s) this server is responsible for: the configured domain, its aliases and
//! every specific address we listen on.

use crate::config::Config;
use crate::sip::{Host, SipUri};

#[derive(Debug, Clone)]
pub struct Domains {
    hosts: Vec<Host>,
    /// `server.domain`, lowercased: the host of canonical presentity AORs.
    primary: String,
}

impl Domains {
    pub fn new(cfg: &Config) -> Domains {
        let mut hosts = vec![cfg.server.domain.clone()];
        hosts.extend(cfg.server.aliases.iter().cloned());
        for l in &cfg.server.listen {
            if !l.addr.ip().is_unspecified() {
                hosts.push(Host::from(l.addr.ip()));
            }
        }
        Domains {
            hosts,
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

    /// `sip:user@domain` for a URI with a user part in one of our domains, whatever alias,
    /// address or port it was written with: one presentity has one name.
    pub fn canonical_user(&self, uri: &SipUri) -> Option<String> {
        let user = uri.user.as_deref().filter(|u| !u.is_empty())?;
        if !self.serves(&uri.host) {
            return None;
        }
        Some(format!(
            "sip:{}@{}",
            crate::sip::text::unescape(user),
            self.primary
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_ports_name_the_same_presentity() {
        let mut cfg = Config::default();
        cfg.server.domain = Host::Name("Example.COM".into());
        cfg.server.aliases = vec![Host::parse("192.0.2.10").unwrap()];
        let d = Domains::new(&cfg);
        let uri = |s: &str| crate::sip::Uri::parse(s).unwrap().as_sip().unwrap().clone();
        assert_eq!(
            d.canonical_user(&uri("sip:1001@192.0.2.10:5060;transport=udp")),
            Some("sip:1001@example.com".into())
        );
        assert_eq!(
            d.canonical_user(&uri("sip:1001@example.com")),
            Some("sip:1001@example.com".into())
        );
        assert_eq!(d.canonical_user(&uri("sip:1001@elsewhere.test")), None);
        assert_eq!(d.canonical_user(&uri("sip:example.com")), None);
    }
}
