//! `[proxy] upstream` given as a host name (RFC 3263 §4): with a port, its A/AAAA records;
//! without one, the SRV records `_sip._udp.HOST` (`_sip._tcp` with `transport=tcp`), tried
//! by priority, and A/AAAA at port 5060 when there are none. Found again when the answer's
//! TTL runs out (capped by `proxy.upstream_refresh`) and at once when the address in use stops
//! answering (a transaction towards it timed out, or no connection to it could be opened),
//! then moving on to the next address meanwhile. The resolver is a trait: hickory in
//! production, a table in tests; everything else here is pure.

use crate::sip::SipUri;
use crate::transport::Proto;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Records and how long they may be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub records: T,
    pub ttl: Duration,
}

pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = Result<Answer<T>, String>> + Send + 'a>>;

/// DNS as the upstream needs it. An empty answer is `Ok` with no records.
pub trait SipResolver: Send + Sync {
    fn srv<'a>(&'a self, name: &'a str) -> Lookup<'a, Vec<Srv>>;
    fn ips<'a>(&'a self, host: &'a str) -> Lookup<'a, Vec<IpAddr>>;
}

/// Where the PBX is: its addresses in the order to try them, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub proto: Proto,
    pub addrs: Vec<SocketAddr>,
    pub ttl: Duration,
}

/// RFC 2782 order: lowest priority first; within a priority the heavier first (the RFC's
/// weighted random draw, made deterministic: one PBX and its standby is the case here).
pub fn srv_order(mut records: Vec<Srv>) -> Vec<Srv> {
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    records
}

/// RFC 3263 §4.1-4.2 for `uri` (its host a name, not an address).
pub async fn find(resolver: &dyn SipResolver, uri: &SipUri) -> Result<Found, String> {
    let proto = match uri.params.get("transport") {
        Some(Some(t)) if t.eq_ignore_ascii_case("tcp") => Proto::Tcp,
        _ => Proto::Udp,
    };
    let host = uri.host.to_string();
    if let Some(port) = uri.port {
        let a = resolver.ips(&host).await?;
        return found(
            proto,
            a.records.iter().map(|ip| SocketAddr::new(*ip, port)),
            a.ttl,
            &host,
        );
    }
    let service = match proto {
        Proto::Udp => format!("_sip._udp.{host}"),
        Proto::Tcp => format!("_sip._tcp.{host}"),
    };
    let srv = resolver.srv(&service).await;
    let records = match &srv {
        Ok(a) => srv_order(a.records.clone()),
        Err(_) => Vec::new(),
    };
    if records.is_empty() {
        // §4.2: no SRV records: the host's own addresses at the default port.
        let a = resolver.ips(&host).await?;
        return found(
            proto,
            a.records.iter().map(|ip| SocketAddr::new(*ip, 5060)),
            a.ttl,
            &host,
        );
    }
    let mut ttl = srv.as_ref().map(|a| a.ttl).unwrap_or_default();
    let mut addrs = Vec::new();
    for r in &records {
        // A target that does not resolve is skipped; the others still serve.
        if let Ok(a) = resolver.ips(r.target.trim_end_matches('.')).await {
            ttl = ttl.min(a.ttl);
            addrs.extend(a.records.iter().map(|ip| SocketAddr::new(*ip, r.port)));
        }
    }
    found(proto, addrs.into_iter(), ttl, &service)
}

fn found(
    proto: Proto,
    addrs: impl Iterator<Item = SocketAddr>,
    ttl: Duration,
    name: &str,
) -> Result<Found, String> {
    let mut unique: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    if unique.is_empty() {
        return Err(format!("{name} has no address"));
    }
    Ok(Found {
        proto,
        addrs: unique,
        ttl,
    })
}

/// How soon a failed lookup is tried again (an address already found is kept meanwhile).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// The shortest time an answer is kept (a TTL of 0 must not make us query in a loop).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The upstream's addresses, the one in use, and when to look again.
#[derive(Debug, Clone)]
pub struct UpstreamState {
    found: Option<Found>,
    current: usize,
    refresh_at: Option<Instant>,
    /// `proxy.upstream_refresh`: the longest an answer is kept, whatever its TTL.
    cap: Duration,
}

impl UpstreamState {
    pub fn new(cap: Duration) -> UpstreamState {
        UpstreamState {
            found: None,
            current: 0,
            refresh_at: None,
            cap: cap.max(MIN_REFRESH),
        }
    }

    /// The address requests to the PBX go to now.
    pub fn current(&self) -> Option<(Proto, SocketAddr)> {
        let f = self.found.as_ref()?;
        Some((f.proto, *f.addrs.get(self.current)?))
    }

    /// A lookup finished at `now`. A failure keeps what was found before (stale beats
    /// nothing) and tries again soon.
    pub fn resolved(&mut self, result: Result<Found, String>, now: Instant) {
        match result {
            Ok(f) => {
                let keep = f.ttl.clamp(MIN_REFRESH, self.cap);
                self.found = Some(f);
                self.current = 0;
                self.refresh_at = Some(now + keep);
            }
            Err(_) => self.refresh_at = Some(now + RETRY_AFTER_FAILURE.min(self.cap)),
        }
    }

    /// `addr` stopped answering at `now`: the next address is used meanwhile, and a lookup
    /// is due at once. `false` when `addr` is not the one in use (nothing changes).
    pub fn failed(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let Some(f) = &self.found else { return false };
        if f.addrs.get(self.current) != Some(&addr) {
            return false;
        }
        self.current = (self.current + 1) % f.addrs.len();
        self.refresh_at = Some(now);
        true
    }

    /// When the next lookup is due (`None`: at once, nothing found yet).
    pub fn refresh_at(&self) -> Option<Instant> {
        self.refresh_at
    }

    pub fn refresh_due(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| at <= now)
    }
}

/// The system's resolver (`/etc/resolv.conf`, `/etc/hosts`) through hickory.
pub struct HickoryResolver(hickory_resolver::TokioResolver);

impl HickoryResolver {
    pub fn from_system() -> Result<HickoryResolver, String> {
        let builder =
            hickory_resolver::TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
        builder
            .build()
            .map(HickoryResolver)
            .map_err(|e| e.to_string())
    }
}

fn ttl_until(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

impl SipResolver for HickoryResolver {
    fn srv<'a>(&'a self, name: &'a str) -> Lookup<'a, Vec<Srv>> {
        Box::pin(async move {
            let lookup = self.0.srv_lookup(name).await.map_err(|e| e.to_string())?;
            let records = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(s) => Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_string(),
                    }),
                    _ => None,
                })
                .collect();
            Ok(Answer {
                records,
                ttl: ttl_until(lookup.valid_until()),
            })
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> Lookup<'a, Vec<IpAddr>> {
        Box::pin(async move {
            let lookup = self.0.lookup_ip(host).await.map_err(|e| e.to_string())?;
            Ok(Answer {
                records: lookup.iter().collect(),
                ttl: ttl_until(lookup.valid_until()),
            })
        })
    }
}

/// Fallback when the system's resolver configuration cannot be read: the C library's
/// `getaddrinfo` (A/AAAA and /etc/hosts, no SRV, no TTL: kept `proxy.upstream_refresh`).
pub struct GetAddrInfo;

impl SipResolver for GetAddrInfo {
    fn srv<'a>(&'a self, _name: &'a str) -> Lookup<'a, Vec<Srv>> {
        Box::pin(async move {
            Ok(Answer {
                records: Vec::new(),
                ttl: Duration::MAX,
            })
        })
    }

    fn ips<'a>(&'a self, host: &'a str) -> Lookup<'a, Vec<IpAddr>> {
        Box::pin(async move {
            let found = tokio::net::lookup_host((host, 0))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Answer {
                records: found.map(|a| a.ip()).collect(),
                ttl: Duration::MAX,
            })
        })
    }
}

/// The upstream host name, its resolver and what was found: shared by the refresh task
/// and the proxy (which reports an address that stopped answering).
pub struct UpstreamDns {
    pub uri: SipUri,
    resolver: Box<dyn SipResolver>,
    state: std::sync::Mutex<UpstreamState>,
    /// Rings when a lookup is due at once.
    wake: tokio::sync::Notify,
}

impl UpstreamDns {
    pub fn new(uri: SipUri, resolver: Box<dyn SipResolver>, cap: Duration) -> UpstreamDns {
        UpstreamDns {
            uri,
            resolver,
            state: std::sync::Mutex::new(UpstreamState::new(cap)),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UpstreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current(&self) -> Option<(Proto, SocketAddr)> {
        self.state().current()
    }

    /// Looks the name up now; the address to use afterwards. Only addresses `usable` says
    /// we can send to (a socket of their family and transport) are kept.
    pub async fn lookup(
        &self,
        now: impl Fn() -> Instant,
        usable: impl Fn(Proto, &SocketAddr) -> bool,
    ) -> Option<(Proto, SocketAddr)> {
        let result = find(self.resolver.as_ref(), &self.uri)
            .await
            .and_then(|mut f| {
                f.addrs.retain(|a| usable(f.proto, a));
                if f.addrs.is_empty() {
                    Err("no address of a family and transport we listen on".into())
                } else {
                    Ok(f)
                }
            });
        if let Err(e) = &result {
            tracing::warn!(upstream = %self.uri, error = %e, "cannot resolve [proxy] upstream; the addresses found before are kept");
        }
        let mut st = self.state();
        st.resolved(result, now());
        st.current()
    }

    /// `addr` stopped answering: see [`UpstreamState::failed`]. The refresh task looks the
    /// name up at once.
    pub fn failed(&self, addr: SocketAddr, now: Instant) -> Option<(Proto, SocketAddr)> {
        let mut st = self.state();
        if !st.failed(addr, now) {
            return None;
        }
        tracing::info!(upstream = %self.uri, %addr, next = ?st.current(), "upstream address stopped answering; looking the name up again");
        self.wake.notify_one();
        st.current()
    }

    /// Waits until a lookup is due by the clock of `now`, or one is asked for.
    pub async fn due(&self, now: impl Fn() -> Instant) {
        let at = self.state().refresh_at();
        let wait = at.map_or(Duration::ZERO, |at| at.saturating_duration_since(now()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Answers from a table; counts the questions.
    #[derive(Default)]
    struct Table {
        srv: HashMap<String, Vec<Srv>>,
        ips: Mutex<HashMap<String, Vec<IpAddr>>>,
        asked: Mutex<Vec<String>>,
    }

    impl SipResolver for Table {
        fn srv<'a>(&'a self, name: &'a str) -> Lookup<'a, Vec<Srv>> {
            self.asked.lock().unwrap().push(format!("SRV {name}"));
            let records = self.srv.get(name).cloned().unwrap_or_default();
            Box::pin(async move {
                Ok(Answer {
                    records,
                    ttl: Duration::from_secs(600),
                })
            })
        }
        fn ips<'a>(&'a self, host: &'a str) -> Lookup<'a, Vec<IpAddr>> {
            self.asked.lock().unwrap().push(format!("A {host}"));
            let records = self.ips.lock().unwrap().get(host).cloned();
            Box::pin(async move {
                match records {
                    Some(records) => Ok(Answer {
                        records,
                        ttl: Duration::from_secs(60),
                    }),
                    None => Err(format!("{host}: no such name")),
                }
            })
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn uri(s: &str) -> SipUri {
        crate::sip::Uri::parse(s).unwrap().as_sip().unwrap().clone()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn table() -> Table {
        let mut t = Table::default();
        t.srv.insert(
            "_sip._udp.pbx.test".into(),
            vec![
                srv(20, 0, 5080, "standby.pbx.test."),
                srv(10, 10, 5060, "light.pbx.test."),
                srv(10, 90, 5062, "main.pbx.test."),
            ],
        );
        t.srv.insert(
            "_sip._tcp.pbx.test".into(),
            vec![srv(0, 0, 5070, "main.pbx.test.")],
        );
        let mut ips = t.ips.lock().unwrap();
        ips.insert("main.pbx.test".into(), vec!["192.0.2.1".parse().unwrap()]);
        ips.insert("light.pbx.test".into(), vec!["192.0.2.2".parse().unwrap()]);
        ips.insert(
            "standby.pbx.test".into(),
            vec!["192.0.2.3".parse().unwrap()],
        );
        ips.insert("pbx.test".into(), vec!["192.0.2.9".parse().unwrap()]);
        ips.insert("nosrv.test".into(), vec!["192.0.2.8".parse().unwrap()]);
        drop(ips);
        t
    }

    #[test]
    fn rfc2782_srv_records_go_by_priority_then_the_heavier_first() {
        let ordered = srv_order(vec![
            srv(20, 0, 1, "c"),
            srv(10, 10, 2, "b"),
            srv(10, 90, 3, "a"),
        ]);
        let targets: Vec<&str> = ordered.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(targets, ["a", "b", "c"]);
    }

    #[test]
    fn rfc3263_4_2_no_port_uses_srv_for_the_transport_and_its_ports() {
        let t = table();
        let f = block_on(find(&t, &uri("sip:pbx.test"))).unwrap();
        assert_eq!(f.proto, Proto::Udp);
        assert_eq!(
            f.addrs,
            [
                addr("192.0.2.1:5062"),
                addr("192.0.2.2:5060"),
                addr("192.0.2.3:5080")
            ]
        );
        // The shortest TTL of the answers used (SRV 600 s, A 60 s).
        assert_eq!(f.ttl, Duration::from_secs(60));
        let f = block_on(find(&t, &uri("sip:pbx.test;transport=tcp"))).unwrap();
        assert_eq!(
            (f.proto, f.addrs),
            (Proto::Tcp, vec![addr("192.0.2.1:5070")])
        );
        assert!(t
            .asked
            .lock()
            .unwrap()
            .contains(&"SRV _sip._tcp.pbx.test".to_string()));
    }

    #[test]
    fn rfc3263_4_2_a_port_skips_srv_and_no_srv_falls_back_to_5060() {
        let t = table();
        let f = block_on(find(&t, &uri("sip:pbx.test:5099"))).unwrap();
        assert_eq!(f.addrs, [addr("192.0.2.9:5099")]);
        assert_eq!(*t.asked.lock().unwrap(), ["A pbx.test"]);
        let f = block_on(find(&t, &uri("sip:nosrv.test"))).unwrap();
        assert_eq!(f.addrs, [addr("192.0.2.8:5060")]);
        assert!(block_on(find(&t, &uri("sip:unknown.test"))).is_err());
    }

    #[test]
    fn refreshed_when_the_ttl_runs_out_capped_and_at_once_when_the_address_stops_answering() {
        let t = table();
        let t0 = Instant::now();
        let mut st = UpstreamState::new(Duration::from_secs(30));
        assert!(st.refresh_due(t0), "nothing found yet");
        st.resolved(block_on(find(&t, &uri("sip:pbx.test"))), t0);
        assert_eq!(st.current(), Some((Proto::Udp, addr("192.0.2.1:5062"))));
        // TTL 60 s, capped at 30 s.
        assert!(!st.refresh_due(t0 + Duration::from_secs(29)));
        assert!(st.refresh_due(t0 + Duration::from_secs(30)));
        // A failure of another address changes nothing.
        let t1 = t0 + Duration::from_secs(5);
        assert!(!st.failed(addr("192.0.2.3:5080"), t1));
        assert!(!st.refresh_due(t1));
        // The address in use stops answering: the next one meanwhile, a lookup at once.
        assert!(st.failed(addr("192.0.2.1:5062"), t1));
        assert_eq!(st.current(), Some((Proto::Udp, addr("192.0.2.2:5060"))));
        assert!(st.refresh_due(t1));
        // The PBX moved: the new lookup finds it.
        t.ips
            .lock()
            .unwrap()
            .insert("main.pbx.test".into(), vec!["192.0.2.11".parse().unwrap()]);
        st.resolved(block_on(find(&t, &uri("sip:pbx.test"))), t1);
        assert_eq!(st.current(), Some((Proto::Udp, addr("192.0.2.11:5062"))));
        // A failed lookup keeps what was found and tries again within 30 s.
        let t2 = t1 + Duration::from_secs(40);
        st.resolved(Err("timeout".into()), t2);
        assert_eq!(st.current(), Some((Proto::Udp, addr("192.0.2.11:5062"))));
        assert!(st.refresh_due(t2 + RETRY_AFTER_FAILURE));
        // A TTL of 0 is kept a second, not looked up in a loop.
        let mut st = UpstreamState::new(Duration::from_secs(300));
        st.resolved(
            Ok(Found {
                proto: Proto::Udp,
                addrs: vec![addr("192.0.2.1:5060")],
                ttl: Duration::ZERO,
            }),
            t0,
        );
        assert_eq!(st.refresh_at(), Some(t0 + MIN_REFRESH));
    }

    /// The real resolver, on /etc/hosts only: `localhost` with a port (no SRV asked).
    #[test]
    fn hickory_finds_localhost_from_the_hosts_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Ok(r) = HickoryResolver::from_system() else {
                return; // no resolv.conf on this machine: nothing to test against
            };
            let f = find(&r, &uri("sip:localhost:5070")).await.unwrap();
            assert!(
                f.addrs
                    .iter()
                    .all(|a| a.ip().is_loopback() && a.port() == 5070),
                "{f:?}"
            );
        });
    }
}
