//! The stateful edge proxy (RFC 3261 §16): which requests it forwards, where to (registered
//! contacts forked by q groups, the upstream PBX, the next Route), and how a forwarded request
//! and a returning response are rewritten (Via, Record-Route, Route, Max-Forwards).
//!
//! Pure code: no sockets, no clock. The server core owns the transactions and drives the
//! [`context::Context`] of each forwarded request with what arrives.

pub mod branch;
pub mod calls_per_user;
pub mod context;
pub mod forward;
pub mod forwarding;
pub mod identity;
pub mod service;
pub mod upstream;

pub use service::ProxyService;

use crate::config::{Config, ProxyConfig, TrustedFor, Unregistered};
use crate::dialog::Flow;
use crate::domain::Domains;
use crate::sip::{HasHeaders, HeaderName, Host, Request, Response, SipUri, Uri, Via};
use crate::storage::Binding;
use crate::transport::{Peer, Proto};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors of the proxy layer, each with the status it is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("Too Many Hops")]
    TooManyHops,
    #[error("Loop Detected")]
    Loop,
    #[error("Not Found: no such user here")]
    UnknownUser,
    #[error("Temporarily Unavailable: no phone of this user is registered")]
    NotRegistered,
    #[error("Not Found: no route for this request")]
    NoRoute,
    #[error("Bad Request: {0}")]
    BadRoute(String),
    #[error("Forbidden: calls may only be made as the authenticated user")]
    WrongIdentity,
    /// RFC 3325 §9.1: a user's own call names another domain in its From.
    #[error("Forbidden: From domain is not ours")]
    ForeignFromDomain,
    /// `[proxy] max_calls_per_user`: the authenticated user already originates that many.
    #[error("Too many calls for this user (proxy.max_calls_per_user)")]
    TooManyCalls,
    /// RFC 3261 §8.1.1.3: a user's new call without a From tag (the call could not be
    /// tracked, nor counted against the user's calls).
    #[error("Bad Request: From tag missing")]
    NoFromTag,
    /// RFC 3261 §16.3 item 5: Proxy-Require names extensions we do not support (listed in
    /// the answer's Unsupported header).
    #[error("Bad Extension: Proxy-Require {}", .0.join(", "))]
    BadExtension(Vec<String>),
    /// RFC 3261 §16.3 item 2: a Request-URI scheme we cannot route.
    #[error("Unsupported URI Scheme {0}")]
    UnsupportedScheme(String),
    /// An in-dialog request addressed to us without our Route: no dialog of ours.
    #[error("Call/Transaction Does Not Exist")]
    NoSuchDialog,
    /// An in-dialog request for someone else without our Route: a dialog we are not in.
    #[error("Not Found: in-dialog request not routed through us")]
    NotRoutedThroughUs,
    /// A request in a dialog we know, from someone who authenticated as another user than
    /// the party it claims to be (or could not be identified: a trusted source for a side
    /// that is not the PBX).
    #[error("Forbidden: Not a party of this dialog")]
    NotDialogParty,
    /// An in-dialog request naming a Route its dialog's route set does not have.
    #[error("Forbidden: Route not in this dialog's route set: {0}")]
    RouteNotInDialog(String),
    /// An initial request from a phone with Route entries other than ours.
    #[error("Forbidden: Route entries other than ours are not accepted from phones (the proxy routes calls)")]
    PreloadedRoute,
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::TooManyHops => 483,
            ProxyError::Loop => 482,
            ProxyError::UnknownUser | ProxyError::NoRoute | ProxyError::NotRoutedThroughUs => 404,
            ProxyError::NoSuchDialog => 481,
            ProxyError::NotRegistered => 480,
            ProxyError::BadRoute(_) => 400,
            ProxyError::WrongIdentity
            | ProxyError::ForeignFromDomain
            | ProxyError::TooManyCalls
            | ProxyError::NotDialogParty
            | ProxyError::RouteNotInDialog(_)
            | ProxyError::PreloadedRoute => 403,
            ProxyError::NoFromTag => 400,
            ProxyError::BadExtension(_) => 420,
            ProxyError::UnsupportedScheme(_) => 416,
        }
    }
}

/// Where one branch goes: the Request-URI it carries, Route entries to put in front (the
/// contact's Path, RFC 3327), and the transport address when it is known from a registration
/// (the flow the REGISTER came over: phones behind NAT, TCP connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub uri: Uri,
    pub route: Vec<String>,
    pub flow: Option<Flow>,
}

/// What to do with a request the proxy owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Fork: parallel within a group, groups one after the other (RFC 3261 §16.6, q-values).
    Groups(Vec<Vec<Hop>>),
    /// Send on by the Request-URI or the top Route (in-dialog, loose routing, foreign domain).
    Onward,
    /// The upstream PBX.
    Upstream,
}

pub struct Proxy {
    pub cfg: ProxyConfig,
    domains: Domains,
    /// `[proxy] upstream`, parsed.
    pub upstream: Option<SipUri>,
    /// Our listening sockets and the host others reach a wildcard socket by.
    local: Vec<(Proto, SocketAddr)>,
    advertised_host: String,
    /// Keyed hash for loop detection, random per process.
    loop_key: std::collections::hash_map::RandomState,
    /// `[auth] trusted` and what for: sources trusted for calls are the ones whose identity
    /// headers pass, and the hops (with the upstream PBX) they are kept for.
    trust: crate::config::Trust,
    /// `[[bla.lines]]`: shared lines whose members call as the line.
    bla: crate::config::BlaConfig,
}

impl Proxy {
    pub fn new(cfg: &Config, local: Vec<(Proto, SocketAddr)>, advertised_host: String) -> Proxy {
        Proxy {
            cfg: cfg.proxy.clone(),
            domains: Domains::new(cfg),
            upstream: cfg.proxy.upstream.clone(),
            local,
            advertised_host,
            loop_key: Default::default(),
            trust: cfg.auth.trust(),
            bla: cfg.bla.clone(),
        }
    }

    /// The user of the shared line a caller authenticated as `user` calls from: `uri` (its
    /// From) is a `[[bla.lines]]` AOR whose own user or member `user` is. `None` for any
    /// other From, and for a user that is neither: RFC 3325 §9.1, we assert only what the
    /// credentials prove, and a member's credentials prove it may use the line.
    pub fn shared_line_user(&self, uri: &Uri, user: &str) -> Option<String> {
        let aor = self.local_aor(uri)?;
        self.shared_line_member(&aor, user)
            .then(|| crate::domain::user_of_aor(&aor).to_string())
    }

    /// Whether the canonical local AOR `aor` is a shared line `user` may use (register, call
    /// from, act for in its dialogs).
    pub fn shared_line_member(&self, aor: &str, user: &str) -> bool {
        self.bla
            .line(&self.domains, aor)
            .is_some_and(|l| l.may_register(user))
    }

    /// Whether `ip` is inside the trust domain for calls (RFC 3325 §2.3): a source in
    /// `[auth] trusted` trusted for calls. Its identity headers pass; a request sent to it
    /// keeps its asserted identity whatever Privacy says.
    pub fn trusted_for_calls(&self, ip: std::net::IpAddr) -> bool {
        self.trust.trusts(ip, TrustedFor::Calls)
    }

    /// `host:port` of our socket `local` as others reach it.
    pub fn advertised(&self, local: SocketAddr) -> String {
        if local.ip().is_unspecified() {
            format!("{}:{}", self.advertised_host, local.port())
        } else {
            local.to_string()
        }
    }

    /// Whether a URI without a user names this proxy: one of our socket addresses, or our
    /// domain/advertised host at one of our ports (RFC 3261 §16.4).
    pub fn is_us(&self, uri: &SipUri) -> bool {
        if uri.user.is_some() {
            return false;
        }
        let port = uri.port.unwrap_or(5060);
        let host_ip = uri.host.ip();
        self.local.iter().any(|(_, a)| {
            if a.port() != port {
                return false;
            }
            match host_ip {
                Some(ip) => {
                    ip == a.ip()
                        || (a.ip().is_unspecified()
                            && (ip.is_loopback() || self.domains.serves(&uri.host)))
                }
                None => {
                    self.domains.serves(&uri.host)
                        || uri
                            .host
                            .to_string()
                            .eq_ignore_ascii_case(&self.advertised_host)
                }
            }
        })
    }

    /// Whether a host is one of our SIP domains.
    pub fn serves(&self, host: &Host) -> bool {
        self.domains.serves(host)
    }

    /// Our SIP domain (`server.domain`): the host of the identities we assert.
    pub fn domain(&self) -> &str {
        self.domains.primary()
    }

    /// The canonical AOR of a local user's URI.
    pub fn local_aor(&self, uri: &Uri) -> Option<String> {
        uri.as_sip().and_then(|u| self.domains.local_aor(u))
    }

    /// RFC 3261 §16.3 item 3: Max-Forwards of zero ends here with 483 (OPTIONS addressed to
    /// us is answered by the caller before this).
    pub fn check_max_forwards(req: &Request) -> Result<(), ProxyError> {
        match req.max_forwards() {
            Ok(Some(0)) => Err(ProxyError::TooManyHops),
            _ => Ok(()),
        }
    }

    /// RFC 3261 §16.3 item 5: every option tag in Proxy-Require must be one this proxy
    /// supports, and it supports none.
    pub fn check_proxy_require(req: &Request) -> Result<(), ProxyError> {
        let tags: Vec<String> = req
            .headers
            .list(HeaderName::ProxyRequire)
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if tags.is_empty() {
            Ok(())
        } else {
            Err(ProxyError::BadExtension(tags))
        }
    }

    /// The loop-detection hash of RFC 3261 §16.6 item 8, of a request as received: the fields that change when a
    /// request spirals legitimately (Request-URI, Route, Proxy-Require, Proxy-Authorization)
    /// plus the transaction identity. Eight hex digits, in our Via branch after `z9hG4bKL`.
    pub fn loop_hash(&self, req: &Request) -> String {
        let mut h = self.loop_key.build_hasher();
        h.write(req.uri.to_string().as_bytes());
        for kind in [
            HeaderName::From,
            HeaderName::CallId,
            HeaderName::Route,
            HeaderName::ProxyRequire,
            HeaderName::ProxyAuthorization,
        ] {
            for v in req.headers.all(kind) {
                h.write(v.as_bytes());
            }
            h.write_u8(0);
        }
        if let Ok(c) = req.cseq() {
            h.write_u32(c.seq);
        }
        format!("{:08x}", h.finish() as u32)
    }

    /// RFC 3261 §16.3 item 4: a request whose [`loop_hash`](Self::loop_hash) (of the request
    /// as received) is `hash` already went through us unchanged (a spiral changes the
    /// Request-URI or Route, and so the hash).
    pub fn is_loop(&self, hash: &str, vias: &[Via]) -> bool {
        vias.iter().any(|v| {
            v.branch()
                .is_some_and(|b| branch::loop_hash_of(&b) == Some(hash))
                && self.is_our_via(v)
        })
    }

    /// Whether a Via was put there by this proxy: a branch of the form we give forwarded
    /// requests (`z9hG4bKL`...) and the sent-by of one of our sockets (RFC 3261 §18.1.2: a
    /// response whose top Via is not ours is discarded).
    pub fn is_our_via(&self, via: &Via) -> bool {
        via.branch()
            .is_some_and(|b| branch::has_forwarded_prefix(&b))
            && self
                .local
                .iter()
                .any(|(_, a)| via.sent_by().eq_ignore_ascii_case(&self.advertised(*a)))
    }

    /// RFC 3261 §16.4 route information preprocessing. A strict router before us put our
    /// URI in the Request-URI: the last Route is the real one. Then every entry of ours on top
    /// of Route is removed: two when we double Record-Routed, and any further ones, which
    /// would only send the request back to us for another pass (a transaction pair and a
    /// Record-Route entry each). Returns whether a Route of ours was removed (the request
    /// was routed to us, e.g. in-dialog).
    pub fn preprocess_routes(&self, req: &mut Request) -> bool {
        if let Some(u) = req.uri.as_sip() {
            if self.is_us(u) && req.headers.has(HeaderName::Route) {
                let routes: Vec<String> = req
                    .headers
                    .list(HeaderName::Route)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                if let Some(last) = routes.last() {
                    if let Ok(na) = crate::sip::NameAddr::parse(last) {
                        req.uri = na.uri;
                        set_list(req, HeaderName::Route, &routes[..routes.len() - 1]);
                    }
                }
            }
        }
        let mut removed = false;
        while let Some(top) = req
            .headers
            .list(HeaderName::Route)
            .first()
            .map(|s| s.to_string())
        {
            let ours = crate::sip::NameAddr::parse(&top)
                .ok()
                .and_then(|na| na.uri.as_sip().map(|u| self.is_us(u)))
                .unwrap_or(false);
            if !ours {
                break;
            }
            req.headers.pop_first_element(HeaderName::Route);
            removed = true;
        }
        removed
    }

    /// RFC 3261 §16.5: where a request that was not routed elsewhere by Route goes.
    /// `bindings` are the Request-URI user's live bindings (when it is a local user),
    /// `known_user` whether that user exists here, `from_upstream` whether the request came
    /// from the PBX (which is never sent back there).
    pub fn targets(
        &self,
        req: &Request,
        in_dialog: bool,
        bindings: &[Binding],
        known_user: bool,
        from_upstream: bool,
    ) -> Result<Targets, ProxyError> {
        if in_dialog || req.headers.has(HeaderName::Route) {
            return Ok(Targets::Onward);
        }
        let upstream_ok = self.upstream.is_some() && !from_upstream;
        let Some(uri) = req.uri.as_sip() else {
            // A tel: number is the PBX's business; without a PBX we cannot route it.
            return if upstream_ok {
                Ok(Targets::Upstream)
            } else {
                Err(ProxyError::UnsupportedScheme(req.uri.scheme().to_string()))
            };
        };
        let ours = self.serves(&uri.host) && uri.user.is_some();
        // A user at another port on our host is not ours to look up (`Domains::local_aor`):
        // whatever listens there (a phone's contact, another service).
        if ours && !self.domains.at_our_port(uri) {
            return Ok(Targets::Onward);
        }
        let local = ours;
        if !local {
            if self.is_us(uri) || self.serves(&uri.host) {
                return Err(ProxyError::NoRoute);
            }
            return Ok(if upstream_ok {
                Targets::Upstream
            } else {
                Targets::Onward
            });
        }
        if !bindings.is_empty() {
            return Ok(Targets::Groups(self.fork_groups(bindings)));
        }
        if known_user {
            return match self.cfg.unregistered {
                Unregistered::Upstream if upstream_ok => Ok(Targets::Upstream),
                _ => Err(ProxyError::NotRegistered),
            };
        }
        if upstream_ok {
            // Extensions that live only on the PBX (queues, voicemail, other phones).
            return Ok(Targets::Upstream);
        }
        Err(ProxyError::UnknownUser)
    }

    /// Bindings as q groups, highest q first (RFC 3261 §16.6: parallel within a group,
    /// serial between groups), at most `max_branches` in all.
    pub fn fork_groups(&self, bindings: &[Binding]) -> Vec<Vec<Hop>> {
        let mut sorted: Vec<&Binding> = bindings.iter().collect();
        sorted.sort_by_key(|b| std::cmp::Reverse(b.q));
        let mut groups: Vec<(u16, Vec<Hop>)> = Vec::new();
        for b in sorted.into_iter().take(self.cfg.max_branches) {
            let Ok(uri) = Uri::parse(&b.contact) else {
                continue;
            };
            let hop = Hop {
                uri,
                route: b.path.clone(),
                flow: b.source.parse().ok(),
            };
            match groups.last_mut() {
                Some((q, g)) if *q == b.q => g.push(hop),
                _ => groups.push((b.q, vec![hop])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// Record-Route values for a dialog-creating request going out through `out` that came in
    /// through `inbound`: one entry, or two when the transport or socket changes
    /// (RFC 3261 §16.6 item 4; the `r2=on` convention of Kamailio/OpenSIPS). The first value
    /// is the top one (facing the next hop).
    pub fn record_route(&self, inbound: &Peer, out: &Peer, ftag: Option<&str>) -> Vec<String> {
        let entry = |p: &Peer, r2: bool| {
            let mut s = format!("<sip:{};lr", self.advertised(p.local));
            if p.proto == Proto::Tcp {
                s.push_str(";transport=tcp");
            }
            if r2 {
                s.push_str(";r2=on");
            }
            if let Some(t) = ftag {
                s.push_str(";ftag=");
                s.push_str(t);
            }
            s.push('>');
            s
        };
        if inbound.proto == out.proto && inbound.local == out.local {
            vec![entry(out, false)]
        } else {
            vec![entry(out, true), entry(inbound, true)]
        }
    }
}

/// A copy of `req` for one branch (RFC 3261 §16.6): the Request-URI of the hop, its Route
/// entries in front, Max-Forwards decremented (70 when absent), our Via on top, our
/// Record-Route entries on top.
pub fn branch_request(
    req: &Request,
    hop: Option<&Hop>,
    via: String,
    record_route: &[String],
) -> Request {
    let mut out = forwarded_request(req, hop, record_route);
    out.headers.prepend(HeaderName::Via, via);
    out
}

/// [`branch_request`] without its Via: the hop's Request-URI and Route, Max-Forwards one
/// less, our Record-Route on top. The Via goes on once the socket it leaves from is known.
pub fn forwarded_request(req: &Request, hop: Option<&Hop>, record_route: &[String]) -> Request {
    let mut out = req.clone();
    if let Some(h) = hop {
        out.uri = h.uri.clone();
        if !h.route.is_empty() {
            let mut routes: Vec<String> = h.route.clone();
            routes.extend(
                out.headers
                    .list(HeaderName::Route)
                    .into_iter()
                    .map(str::to_string),
            );
            set_list(&mut out, HeaderName::Route, &routes);
        }
    }
    let mf = req
        .max_forwards()
        .ok()
        .flatten()
        .map(|m| m.saturating_sub(1))
        .unwrap_or(70);
    out.headers.set(HeaderName::MaxForwards, mf.to_string());
    for rr in record_route.iter().rev() {
        out.headers.prepend(HeaderName::RecordRoute, rr.clone());
    }
    out
}

/// RFC 3261 §16.7 item 3: a response forwarded upstream without our Via.
pub fn strip_top_via(resp: &mut Response) {
    resp.headers.pop_first_element(HeaderName::Via);
}

/// The URI the next hop is taken from: the top Route, else the Request-URI (§16.6 item 6/7).
/// The error names the header that cannot be routed by.
pub fn next_hop_uri(req: &Request) -> Result<SipUri, ProxyError> {
    let (uri, from) = match req.headers.list(HeaderName::Route).first() {
        Some(r) => (
            crate::sip::NameAddr::parse(r)
                .map_err(|e| ProxyError::BadRoute(format!("Route header: {e}")))?
                .uri,
            "Route header",
        ),
        None => (req.uri.clone(), "Request-URI"),
    };
    match uri {
        Uri::Sip(u) => Ok(u),
        Uri::Other { scheme, .. } => Err(ProxyError::BadRoute(format!(
            "{from}: cannot route to a {scheme}: URI"
        ))),
    }
}

/// The transport and address a SIP URI names, when its host is an IP address (host names
/// need the resolver: `None`). TCP only with `transport=tcp`.
pub fn uri_addr(uri: &SipUri) -> Option<(Proto, SocketAddr)> {
    let proto = match uri.transport().as_deref() {
        Some("tcp") => Proto::Tcp,
        _ => Proto::Udp,
    };
    let host = uri.param("maddr").and_then(|m| Host::parse(&m).ok());
    let ip = host.as_ref().unwrap_or(&uri.host).ip()?;
    Some((proto, SocketAddr::new(ip, uri.port.unwrap_or(5060))))
}

/// Where a response goes when it is forwarded statelessly (RFC 3261 §18.2.2 for the Via it
/// now has on top): the `received`/`rport` address, else the sent-by.
pub fn response_addr(via: &Via) -> Option<(Proto, SocketAddr)> {
    let proto = if via.transport.eq_ignore_ascii_case("TCP") {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let ip = match via.params.value("received") {
        Some(r) => r.parse().ok()?,
        None => via.host.ip()?,
    };
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    Some((proto, SocketAddr::new(ip, port)))
}

/// The first of `routes` (Route values of a request, ours removed) that is not an entry of
/// the dialog's `route_set` (RFC 3261 §12.2.1.1, URIs compared by §19.1.4), if any.
pub fn route_outside<'a>(routes: &[&'a str], route_set: &[String]) -> Option<&'a str> {
    let uri = |v: &str| crate::sip::NameAddr::parse(v).ok().map(|na| na.uri);
    let set: Vec<Uri> = route_set.iter().filter_map(|r| uri(r)).collect();
    routes.iter().copied().find(|r| match uri(r) {
        Some(u) => !set.iter().any(|s| s.equivalent(&u)),
        None => true,
    })
}

/// Replaces all values of a list header by `values`, at the first one's place.
fn set_list(req: &mut Request, kind: HeaderName, values: &[String]) {
    if values.is_empty() {
        req.headers.remove(kind);
    } else {
        let first = req.headers.0.iter().position(|h| h.kind == kind);
        req.headers.remove(kind);
        let at = first
            .unwrap_or(req.headers.0.len())
            .min(req.headers.0.len());
        req.headers.0.insert(
            at,
            crate::sip::message::Header {
                name: std::borrow::Cow::Borrowed(kind.canonical()),
                kind,
                value: values.join(", "),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{parse_message, Limits, Message};

    fn req(text: &str) -> Request {
        let raw = text.replace('\n', "\r\n");
        match parse_message(raw.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn proxy() -> Proxy {
        let mut cfg = Config::default();
        cfg.server.domain = crate::sip::Host::Name("example.com".into());
        Proxy::new(
            &cfg,
            vec![
                (Proto::Udp, "192.0.2.10:5060".parse().unwrap()),
                (Proto::Tcp, "192.0.2.10:5060".parse().unwrap()),
            ],
            "example.com".into(),
        )
    }

    /// Issue 12: a member calls as its shared line; nobody else does, and nothing but a
    /// local line AOR is one.
    #[test]
    fn shared_line_user_is_the_line_for_its_members_only() {
        let cfg = Config::from_toml(
            "[server]\ndomain = \"example.com\"\naliases = [\"192.0.2.10\"]\n\
             [[bla.lines]]\naor = \"2000\"\nmembers = [\"1001\"]\n",
            "t.toml",
        )
        .unwrap();
        let p = Proxy::new(&cfg, vec![], "example.com".into());
        let uri = |s: &str| Uri::parse(s).unwrap();
        for from in [
            "sip:2000@example.com",
            "sips:2000@192.0.2.10:5061",
            "sip:%32000@EXAMPLE.com;user=phone",
        ] {
            assert_eq!(
                p.shared_line_user(&uri(from), "1001").as_deref(),
                Some("2000"),
                "{from}"
            );
            assert_eq!(
                p.shared_line_user(&uri(from), "2000").as_deref(),
                Some("2000"),
                "{from}"
            );
            assert_eq!(p.shared_line_user(&uri(from), "1002"), None, "{from}");
        }
        for from in [
            "sip:2000@elsewhere.test",
            "sip:2000@example.com:7001",
            "sip:1001@example.com",
            "tel:2000",
        ] {
            assert_eq!(p.shared_line_user(&uri(from), "1001"), None, "{from}");
        }
        assert!(p.shared_line_member("sip:2000@example.com", "1001"));
        assert!(!p.shared_line_member("sip:2000@example.com", ""));
    }

    const INVITE: &str = "INVITE sip:1002@example.com SIP/2.0\n\
Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa1\n\
Max-Forwards: 70\n\
From: \"Alice\" <sip:1001@example.com>;tag=f1\n\
To: <sip:1002@example.com>\n\
Call-ID: c1\n\
CSeq: 1 INVITE\n\
Contact: <sip:1001@192.0.2.7:5060>\n\
Content-Length: 0\n\n";

    fn binding(contact: &str, q: u16, source: &str) -> Binding {
        Binding {
            contact: contact.into(),
            params: String::new(),
            q,
            expires_at: u64::MAX,
            call_id: "r".into(),
            cseq: 1,
            path: vec![],
            instance: None,
            reg_id: None,
            user_agent: None,
            source: source.into(),
            registered_at: 0,
        }
    }

    #[test]
    fn rfc3261_16_3_max_forwards_zero_is_483() {
        let r = req(&INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0"));
        assert_eq!(Proxy::check_max_forwards(&r), Err(ProxyError::TooManyHops));
        assert_eq!(ProxyError::TooManyHops.status(), 483);
        assert!(Proxy::check_max_forwards(&req(INVITE)).is_ok());
    }

    #[test]
    fn rfc3261_16_3_proxy_require_and_uri_scheme_are_checked() {
        let r = req(&INVITE.replace(
            "Max-Forwards: 70\n",
            "Max-Forwards: 70\nProxy-Require: foo, bar\n",
        ));
        let e = Proxy::check_proxy_require(&r).unwrap_err();
        assert_eq!(
            e,
            ProxyError::BadExtension(vec!["foo".into(), "bar".into()])
        );
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (420, "Bad Extension: Proxy-Require foo, bar")
        );
        assert!(Proxy::check_proxy_require(&req(INVITE)).is_ok());
        let tel = req(&INVITE.replace("INVITE sip:1002@example.com", "INVITE tel:+15551234"));
        let e = proxy().targets(&tel, false, &[], false, false).unwrap_err();
        assert_eq!(
            (e.status(), e.to_string().as_str()),
            (416, "Unsupported URI Scheme tel")
        );
        let bad_route = req(&INVITE.replace(
            "Max-Forwards: 70\n",
            "Max-Forwards: 70\nRoute: <http://x.test/>\n",
        ));
        let e = next_hop_uri(&bad_route).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(
            e.to_string()
                .contains("Route header: cannot route to a http: URI"),
            "{e}"
        );
    }

    #[test]
    fn rfc3261_16_6_branch_decrements_max_forwards_and_adds_via_and_record_route() {
        let r = req(INVITE);
        let hop = Hop {
            uri: Uri::parse("sip:1002@192.0.2.8:5062").unwrap(),
            route: vec!["<sip:edge.example.com;lr>".into()],
            flow: None,
        };
        let out = branch_request(
            &r,
            Some(&hop),
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKLx".into(),
            &["<sip:192.0.2.10:5060;lr>".into()],
        );
        assert_eq!(out.uri.to_string(), "sip:1002@192.0.2.8:5062");
        assert_eq!(out.headers.get(HeaderName::MaxForwards), Some("69"));
        let vias = out.headers.list(HeaderName::Via);
        assert_eq!(vias.len(), 2);
        assert!(vias[0].contains("z9hG4bKLx"));
        assert_eq!(
            out.headers.get(HeaderName::RecordRoute),
            Some("<sip:192.0.2.10:5060;lr>")
        );
        assert_eq!(
            out.headers.list(HeaderName::Route),
            vec!["<sip:edge.example.com;lr>"]
        );
    }

    #[test]
    fn rfc3261_16_4_our_route_is_removed_and_strict_routing_fixed() {
        let p = proxy();
        let mut r = req(&INVITE.replace(
            "Max-Forwards: 70\n",
            "Max-Forwards: 70\nRoute: <sip:192.0.2.10:5060;lr;r2=on>, <sip:192.0.2.10:5060;transport=tcp;lr;r2=on>, <sip:pbx.example.net;lr>\n",
        ));
        assert!(p.preprocess_routes(&mut r));
        assert_eq!(
            r.headers.list(HeaderName::Route),
            vec!["<sip:pbx.example.net;lr>"]
        );
        // Our address again and again: all of it goes in one pass.
        let mut r = req(&INVITE.replace(
            "Max-Forwards: 70\n",
            "Max-Forwards: 70\nRoute: <sip:192.0.2.10:5060;lr>, <sip:192.0.2.10;lr>\nRoute: <sip:192.0.2.10:5060;lr>, <sip:1002@192.0.2.8;lr>\n",
        ));
        assert!(p.preprocess_routes(&mut r));
        assert_eq!(
            r.headers.list(HeaderName::Route),
            vec!["<sip:1002@192.0.2.8;lr>"]
        );
        // A strict router before us: Request-URI is ours, the last Route is the target.
        let mut s = req(&INVITE
            .replace("INVITE sip:1002@example.com", "INVITE sip:192.0.2.10:5060")
            .replace(
                "Max-Forwards: 70\n",
                "Max-Forwards: 70\nRoute: <sip:1002@192.0.2.8>\n",
            ));
        p.preprocess_routes(&mut s);
        assert_eq!(s.uri.to_string(), "sip:1002@192.0.2.8");
        assert!(!s.headers.has(HeaderName::Route));
    }

    #[test]
    fn rfc3261_16_5_targets_local_user_forks_by_q_and_unknown_is_404() {
        let p = proxy();
        let r = req(INVITE);
        let b = [
            binding("sip:1002@192.0.2.8:5060", 500, "udp:192.0.2.8:5060"),
            binding("sip:1002@192.0.2.9:5060", 1000, "tcp:192.0.2.9:40000"),
            binding("sip:1002@192.0.2.11:5060", 1000, "udp:198.51.100.1:1024"),
        ];
        match p.targets(&r, false, &b, true, false).unwrap() {
            Targets::Groups(g) => {
                assert_eq!(g.len(), 2);
                assert_eq!(g[0].len(), 2);
                assert_eq!(g[1][0].uri.to_string(), "sip:1002@192.0.2.8:5060");
                assert_eq!(g[0][0].flow.unwrap().proto, Proto::Tcp);
                assert_eq!(
                    g[0][1].flow.unwrap().remote,
                    "198.51.100.1:1024".parse().unwrap()
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p.targets(&r, false, &[], false, false),
            Err(ProxyError::UnknownUser)
        );
        assert_eq!(
            p.targets(&r, false, &[], true, false),
            Err(ProxyError::NotRegistered)
        );
        assert_eq!(p.targets(&r, true, &[], false, false), Ok(Targets::Onward));
    }

    #[test]
    fn rfc3261_16_5_upstream_gets_foreign_and_unknown_but_never_its_own_requests_back() {
        let mut cfg = Config::default();
        cfg.server.domain = crate::sip::Host::Name("example.com".into());
        cfg.proxy.upstream = Uri::parse("sip:192.0.2.5:5060").unwrap().as_sip().cloned();
        let p = Proxy::new(
            &cfg,
            vec![(Proto::Udp, "192.0.2.10:5060".parse().unwrap())],
            "example.com".into(),
        );
        let r = req(INVITE);
        assert_eq!(
            p.targets(&r, false, &[], false, false),
            Ok(Targets::Upstream)
        );
        assert_eq!(
            p.targets(&r, false, &[], false, true),
            Err(ProxyError::UnknownUser)
        );
        assert_eq!(
            p.targets(&r, false, &[], true, false),
            Err(ProxyError::NotRegistered)
        );
        let foreign = req(&INVITE.replace(
            "INVITE sip:1002@example.com",
            "INVITE sip:+15551234@carrier.example.net",
        ));
        assert_eq!(
            p.targets(&foreign, false, &[], false, false),
            Ok(Targets::Upstream)
        );
    }

    #[test]
    fn rfc3261_16_3_loop_detected_only_with_our_via_and_same_hash() {
        let p = proxy();
        let r = req(INVITE);
        let h = p.loop_hash(&r);
        let via = Via::parse(&format!(
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKL{h}abc"
        ))
        .unwrap();
        assert!(p.is_loop(&h, std::slice::from_ref(&via)));
        // A spiral: the Request-URI changed, so the hash differs.
        let spiral =
            req(&INVITE.replace("INVITE sip:1002@example.com", "INVITE sip:1003@example.com"));
        assert!(!p.is_loop(&p.loop_hash(&spiral), &[via]));
        let other = Via::parse(&format!(
            "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKL{h}abc"
        ))
        .unwrap();
        assert!(!p.is_loop(&h, std::slice::from_ref(&other)));
        // A response only comes back through a Via of ours: our branch form and sent-by.
        assert!(p.is_our_via(&Via::parse("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKLab").unwrap()));
        assert!(!p.is_our_via(&other));
        assert!(!p.is_our_via(&Via::parse("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKab").unwrap()));
    }

    #[test]
    fn rfc3261_16_6_double_record_route_when_transport_changes() {
        let p = proxy();
        let udp = Peer {
            proto: Proto::Udp,
            remote: "192.0.2.7:5060".parse().unwrap(),
            local: "192.0.2.10:5060".parse().unwrap(),
            conn: None,
        };
        let tcp = Peer {
            proto: Proto::Tcp,
            ..udp
        };
        assert_eq!(
            p.record_route(&udp, &udp, None),
            vec!["<sip:192.0.2.10:5060;lr>"]
        );
        assert_eq!(
            p.record_route(&udp, &tcp, Some("f1")),
            vec![
                "<sip:192.0.2.10:5060;lr;transport=tcp;r2=on;ftag=f1>",
                "<sip:192.0.2.10:5060;lr;r2=on;ftag=f1>"
            ]
        );
        let rr = Uri::parse("sip:192.0.2.10:5060;lr;transport=tcp;r2=on").unwrap();
        assert!(p.is_us(rr.as_sip().unwrap()));
        assert!(!p.is_us(
            Uri::parse("sip:192.0.2.10:5070;lr")
                .unwrap()
                .as_sip()
                .unwrap()
        ));
    }

    #[test]
    fn rfc3261_12_2_1_1_a_route_outside_the_dialogs_route_set_is_named() {
        let set = vec![
            "<sip:192.0.2.10:5060;lr;r2=on>".to_string(),
            "\"edge\" <sip:Edge.Example.com;lr>".to_string(),
        ];
        // Entries of the set, in any order or spelling of the same URI (§19.1.4).
        assert_eq!(route_outside(&[], &set), None);
        assert_eq!(
            route_outside(
                &[
                    "<sip:edge.example.com;lr>",
                    "<sip:192.0.2.10:5060;lr;r2=on>"
                ],
                &set
            ),
            None
        );
        // Anything else is named, the first one first; an unparsable entry too.
        assert_eq!(
            route_outside(&["<sip:edge.example.com;lr>", "<sip:pbx.test;lr>"], &set),
            Some("<sip:pbx.test;lr>")
        );
        assert_eq!(
            route_outside(&["<sip:192.0.2.10:5070;lr>"], &set),
            Some("<sip:192.0.2.10:5070;lr>")
        );
        assert_eq!(route_outside(&["not a uri"], &set), Some("not a uri"));
        // An empty route set (no Record-Route at all) admits no Route.
        assert_eq!(
            route_outside(&["<sip:edge.example.com;lr>"], &[]),
            Some("<sip:edge.example.com;lr>")
        );
    }

    #[test]
    fn rfc3261_18_2_2_stateless_response_goes_to_received_and_rport() {
        let v = Via::parse(
            "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKx;received=198.51.100.1;rport=1024",
        )
        .unwrap();
        assert_eq!(
            response_addr(&v),
            Some((Proto::Udp, "198.51.100.1:1024".parse().unwrap()))
        );
    }
}
