//! The TOML configuration: every key has a default, unknown keys are refused, and validation
//! messages name the key and the fix. `busylamp serve` without `--config` runs on
//! [`Config::default`].
//!
//! Values are typed when read (addresses, networks, URIs, hosts, patterns, enums): each
//! parser refuses a bad value with a [`BadValue`], and the loader names its key from the
//! error's position in the text. [`Config::validate`] then checks ranges and the rules that
//! tie keys together. The rest of the program takes the typed values and parses nothing again.

use crate::sip::digest::Algorithm;
use crate::sip::{Host, SipUri, Uri};
use ipnet::IpNet;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    /// A value that is wrong: `key` is its path (`server.listen[1]`), `path` the file (with
    /// `:LINE` when the value was refused while reading it).
    #[error("{path}: key `{key}`: {problem}; fix: {fix}")]
    Invalid {
        path: String,
        key: String,
        problem: String,
        fix: String,
    },
}

/// What is wrong with one value and how to fix it: the error of the typed values' `FromStr`.
/// The loader adds the key and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}{FIX}{fix}")]
pub struct BadValue {
    pub problem: String,
    pub fix: String,
}

/// Separates problem and fix in a [`BadValue`] carried through serde's string errors.
const FIX: &str = "; fix: ";

impl BadValue {
    fn new(problem: impl Into<String>, fix: &str) -> BadValue {
        BadValue {
            problem: problem.into(),
            fix: fix.to_string(),
        }
    }
}

/// A user both in the users file and in `[[users]]` of `config`: the config's entry wins.
pub fn shadowed_user_warning(name: &str, config: &str) -> String {
    format!(
        "user {name} is also defined in [[users]] of {config}, whose password wins: the users file's entry is ignored. Remove one of them"
    )
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub registrar: RegistrarConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub presence: PresenceConfig,
    pub proxy: ProxyConfig,
    pub dialog: DialogConfig,
    pub pua: PuaConfig,
    pub bla: BlaConfig,
    pub control: ControlConfig,
    pub users: Vec<UserConfig>,
}

/// `[proxy]`: the stateful edge proxy (calls between phones and to/from the PBX).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The PBX every request that is not for a registered local user goes to, e.g.
    /// "sip:192.0.2.5:5060". Empty (`None`): no PBX; such requests get 404 (unknown user) or
    /// 480.
    #[serde(deserialize_with = "values::upstream")]
    pub upstream: Option<SipUri>,
    /// Seconds the addresses found for an `upstream` host name are kept at most (the DNS
    /// TTL when shorter); it is looked up again sooner when its address stops answering.
    pub upstream_refresh: u64,
    /// Local users without a binding here: "reject" (480 Temporarily Unavailable) or
    /// "upstream" (the PBX may reach them some other way).
    pub unregistered: Unregistered,
    /// Timer C (RFC 3261 §16.6 step 11): seconds a branch may ring without a final answer
    /// before it is cancelled; reset by every provisional response. At least 180.
    pub timer_c: u64,
    /// Most branches one request is forked to.
    pub max_branches: usize,
    /// Most calls one authenticated user originates at once (ringing or answered); a new
    /// INVITE beyond it gets 403. Calls from trusted sources (the PBX) are not counted.
    pub max_calls_per_user: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unregistered {
    Reject,
    Upstream,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstream: None,
            upstream_refresh: 300,
            unregistered: Unregistered::Reject,
            timer_c: 180,
            max_branches: 16,
            max_calls_per_user: 20,
        }
    }
}

/// `[dialog]`: the dialog tracker (call state per forked branch, for BLF lamps and the
/// in-dialog keepalive after a restart).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DialogConfig {
    /// Seconds a confirmed dialog lives without a BYE before it is ended (and its lamps go
    /// dark): a phone that lost power never sends one.
    pub max_lifetime: u64,
    /// Seconds a call may stay unanswered (trying, proceeding, early) before it is ended:
    /// Timer C (proxy.timer_c) plus 32 s for the final answer, so it only fires when the
    /// proxy's own Timer C was lost, e.g. across a restart.
    pub early_timeout: u64,
    /// Most calls tracked at once; beyond it new calls are still routed but get no lamps.
    pub max_calls: usize,
}

impl Default for DialogConfig {
    fn default() -> Self {
        DialogConfig {
            max_lifetime: 4 * 3600,
            early_timeout: 180 + 32,
            max_calls: 100_000,
        }
    }
}

/// Longest `dialog.max_lifetime` accepted (30 days): publications for a call last this long
/// plus 5 minutes, and must fit a SIP Expires.
pub const MAX_DIALOG_LIFETIME: u64 = 30 * 24 * 3600;

/// `[pua]`: the presence user agent: the publishers that feed the presence server
/// (`[pua.usrloc]`, `[pua.dialoginfo]`) and the SIP client towards a remote presence server.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PuaConfig {
    /// A remote presence server the publishers also PUBLISH to, e.g.
    /// "sip:presence.example.com:5060". Empty (`None`): publish only into our own presence
    /// server.
    #[serde(deserialize_with = "values::presence_server")]
    pub presence_server: Option<SipUri>,
    /// Digest user name for requests the remote presence server (or a notifier) challenges
    /// with 401/407. Empty: challenges are not answered.
    pub username: String,
    /// Digest password that goes with `username`.
    pub password: String,
    /// Expires of our PUBLISHes to the remote server, in seconds (at most; a shorter-lived
    /// publication asks for less).
    pub publish_expires: u32,
    /// A publication or subscription is refreshed this many seconds before it expires (at
    /// most half of its lifetime before).
    pub refresh_margin: u32,
    /// Least seconds between two refreshes of one publication or subscription, whatever
    /// Expires the server grants.
    pub min_refresh: u32,
    /// First delay (seconds) before a failed PUBLISH or SUBSCRIBE is tried again; doubles
    /// with each failure in a row up to `retry_max`.
    pub retry_min: u32,
    pub retry_max: u32,
    pub usrloc: UsrlocConfig,
    pub dialoginfo: DialogInfoConfig,
}

impl Default for PuaConfig {
    fn default() -> Self {
        PuaConfig {
            presence_server: None,
            username: String::new(),
            password: String::new(),
            publish_expires: 3600,
            refresh_margin: 30,
            min_refresh: 10,
            retry_min: 2,
            retry_max: 300,
            usrloc: UsrlocConfig::default(),
            dialoginfo: DialogInfoConfig::default(),
        }
    }
}

/// `[pua.usrloc]`: presence (PIDF open/closed) from registrations.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsrlocConfig {
    pub enabled: bool,
    /// Whose registrations publish presence: `"*"` (everyone), a user (`"1001"`), a user
    /// prefix (`"10*"`) or an AOR (`"sip:1001@example.com"`).
    pub users: Vec<UserPattern>,
}

impl Default for UsrlocConfig {
    fn default() -> Self {
        UsrlocConfig {
            enabled: true,
            users: vec![UserPattern::Any],
        }
    }
}

/// `[pua.dialoginfo]`: RFC 4235 dialog state (BLF) from the dialog tracker, with the options
/// of Kamailio's pua_dialoginfo.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DialogInfoConfig {
    pub enabled: bool,
    /// Publish the caller's side (direction initiator) for a local caller.
    pub caller: bool,
    /// Publish the callee's side (direction recipient) for a local callee.
    pub callee: bool,
    /// Write the `call-id` attribute (directed pickup needs it).
    pub include_callid: bool,
    /// Write `local-tag` and `remote-tag` (directed pickup needs them).
    pub include_tags: bool,
    /// Write `<local>` and `<remote>` (identities and targets: who calls whom).
    pub include_localremote: bool,
    /// Show the caller `confirmed` while the callee still rings (trying/proceeding/early),
    /// so the caller's lamp does not blink like an incoming call.
    pub caller_confirmed: bool,
    /// Publish the callee's side already while the INVITE is on its way (`trying`,
    /// `proceeding`); by default its lamp lights when a phone rings (`early`), as Kamailio's.
    pub callee_trying: bool,
    /// Which local users publish: "*" (all), a user ("1001"), a user prefix ("10*") or an
    /// AOR ("sip:1001@example.com").
    pub users: Vec<UserPattern>,
}

impl Default for DialogInfoConfig {
    fn default() -> Self {
        DialogInfoConfig {
            enabled: true,
            caller: true,
            callee: true,
            include_callid: true,
            include_tags: true,
            include_localremote: true,
            caller_confirmed: false,
            callee_trying: false,
            users: vec![UserPattern::Any],
        }
    }
}

impl DialogInfoConfig {
    /// Whether the local user `aor` ("sip:1001@example.com") publishes, by `users`.
    pub fn allows(&self, aor: &str) -> bool {
        self.users.iter().any(|p| p.matches_aor(aor))
    }
}

/// One entry of a `users` list (`[pua.usrloc]`, `[pua.dialoginfo]`): which local users a
/// publisher publishes for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPattern {
    /// `*`: everyone.
    Any,
    /// `1001`: that user of any of our domains.
    User(String),
    /// `10*`: users starting with `10`.
    Prefix(String),
    /// `sip:1001@example.com`: that AOR (canonical form, [`crate::domain::Domains::aor`],
    /// once the config is read: an alias names the user of the domain).
    Aor(String),
}

fn user_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'@' | b':' | b'"' | b'*' | b'<' | b'>'))
}

impl UserPattern {
    pub fn parse(s: &str) -> Option<UserPattern> {
        let s = s.trim();
        if s == "*" {
            return Some(UserPattern::Any);
        }
        let scheme = |p: &str| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        if scheme("sip:") || scheme("sips:") {
            return match crate::sip::Uri::parse(s) {
                Ok(crate::sip::Uri::Sip(u)) if u.user.is_some() && !s.contains('*') => {
                    Some(UserPattern::Aor(u.aor()))
                }
                _ => None,
            };
        }
        if let Some(prefix) = s.strip_suffix('*') {
            return user_chars(prefix).then(|| UserPattern::Prefix(prefix.to_string()));
        }
        user_chars(s).then(|| UserPattern::User(s.to_string()))
    }

    /// Whether the AOR (canonical, as the registrar keys it) matches; `uri` is the AOR
    /// parsed, when the caller has it.
    pub fn matches(&self, aor: &str, uri: Option<&crate::sip::SipUri>) -> bool {
        let user = uri
            .and_then(|u| u.user.as_deref())
            .map(crate::sip::text::unescape);
        match self {
            UserPattern::Any => true,
            UserPattern::User(name) => user.is_some_and(|u| u == name.as_str()),
            UserPattern::Prefix(p) => user.is_some_and(|u| u.starts_with(p.as_str())),
            UserPattern::Aor(a) => a == aor,
        }
    }

    /// As [`UserPattern::matches`], parsing the AOR.
    pub fn matches_aor(&self, aor: &str) -> bool {
        let uri = crate::sip::Uri::parse(aor).ok();
        self.matches(aor, uri.as_ref().and_then(|u| u.as_sip()))
    }
}

impl FromStr for UserPattern {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<UserPattern, BadValue> {
        UserPattern::parse(s).ok_or_else(|| {
            BadValue::new(
                format!("{s:?} is not a user pattern"),
                "write \"*\", a user (\"1001\"), a prefix (\"10*\") or an AOR (\"sip:1001@example.com\")",
            )
        })
    }
}

impl<'de> Deserialize<'de> for UserPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UserPattern, D::Error> {
        values::parsed(d, str::parse)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The SIP domain we are registrar for; also the default digest realm.
    #[serde(deserialize_with = "values::domain")]
    pub domain: Host,
    /// Other host names or addresses phones may use in their AOR for the same domain.
    #[serde(deserialize_with = "values::aliases")]
    pub aliases: Vec<Host>,
    /// `udp:ADDR:PORT` / `tcp:ADDR:PORT`; IPv6 as `udp:[::1]:5060`.
    pub listen: Vec<ListenAddr>,
    pub data_dir: PathBuf,
    /// Largest SIP message accepted from the network, in bytes.
    pub max_message_size: usize,
    pub max_headers: usize,
    /// Seconds an idle TCP connection is kept open.
    pub tcp_idle_timeout: u64,
    /// Most TCP connections open at once; more are refused.
    pub max_tcp_connections: usize,
    /// Most TCP connections open at once from one source (an IPv4 address, an IPv6 /64);
    /// more from it are closed at once, so one host cannot hold every slot.
    pub max_tcp_connections_per_source: usize,
    /// Seconds a TCP peer has to finish a message (headers and body) once its first byte
    /// arrived; then the connection is closed. CRLF keep-alives are not message bytes.
    pub tcp_message_timeout: u64,
    /// New SUBSCRIBEs and REGISTERs per second from one source (an IPv4 address, an IPv6
    /// /64) once its burst is spent; beyond it `503` with `Retry-After`. `0` turns it off.
    /// Sources trusted for REGISTER/SUBSCRIBE (`[auth] trusted_for`) are not limited.
    /// Refreshes inside an existing subscription dialog do not count.
    pub rate_limit_per_source: f64,
    /// New SUBSCRIBEs and REGISTERs one source may send at once after a quiet time (a phone
    /// booting: one REGISTER and a SUBSCRIBE per BLF key).
    pub rate_limit_burst: u32,
    /// Most SIP transactions held at once (each ~1 KB). When full, the oldest completed
    /// non-INVITE transactions are ended early; only if none is left are requests answered 503.
    pub max_transactions: usize,
    /// Value of our Server / User-Agent header; empty: no such header. No version by
    /// default (it tells an attacker which flaws to try).
    pub server_header: String,
    /// Log filter (tracing EnvFilter syntax), overridden by RUST_LOG.
    pub log: String,
    /// `0`: the server's threads run in the normal (time-shared) class. `1`–`99`: in the
    /// round-robin real-time class at this priority (`crate::sched`), so that on a machine
    /// whose cores also run CPU-bound work a woken thread does not wait for a scheduler tick
    /// (up to 4 ms) behind it before a lamp's NOTIFYs leave.
    pub realtime_priority: u8,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
    /// Most addresses-of-record with bindings; further new AORs get 403. Bounds memory and
    /// disk where registrations are not authenticated (open mode, trusted networks).
    pub max_aors: usize,
    /// Most bindings one user holds across all the AORs it registers (every port, alias
    /// and scheme of `sip:USER@domain`); a new binding beyond it gets 403. The user is the
    /// AOR's user part (the authenticated user may register no other).
    pub max_bindings_per_user: usize,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Digest,
    Open,
}

/// What a source in `[auth] trusted` is trusted for: each purpose is named on its own.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TrustedFor {
    /// Calls (and other requests the proxy relays) to and from the PBX.
    Calls,
    /// REGISTER for any user's AOR.
    Register,
    /// SUBSCRIBE as any user.
    Subscribe,
    /// PUBLISH for any presentity.
    Publish,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Digest realm; empty means the server domain.
    pub realm: String,
    /// Challenges offered to every phone, most preferred first (RFC 8760 §2.4): "MD5"
    /// (default), "SHA-256". One challenge: many phones read only the first, or know MD5 only
    /// (baresip 1.0 gives up on any SHA-256 challenge); offer SHA-256 per `profiles`.
    #[serde(deserialize_with = "values::algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Challenges for phones chosen by User-Agent (`[[auth.profiles]]`); the first match
    /// wins, other phones get `algorithms`.
    pub profiles: Vec<AuthProfile>,
    /// Source networks that are not challenged for what `trusted_for` names, e.g. the PBX:
    /// "10.0.0.0/8", "192.0.2.7" (an address alone is a network of one).
    #[serde(deserialize_with = "values::trusted")]
    pub trusted: Vec<IpNet>,
    /// What a source in `trusted` is not challenged for: "calls" (default; requests the proxy
    /// relays to and from the PBX), "register", "subscribe", "publish". The last three let any
    /// host in those networks (a UDP source address is easily spoofed) register or subscribe
    /// as any user: `serve` and `check-config` warn about each.
    pub trusted_for: Vec<TrustedFor>,
    /// Seconds a nonce stays valid before the client gets `stale=true`.
    pub nonce_ttl: u64,
}

/// The digest challenges offered to the phones whose User-Agent contains `user_agent`, e.g.
/// SHA-256 first for a phone known to answer it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthProfile {
    pub name: String,
    /// Substring of the request's User-Agent that selects this profile (not empty).
    pub user_agent: String,
    /// Challenges offered to those phones, most preferred first: "SHA-256", "MD5".
    #[serde(deserialize_with = "values::algorithms")]
    pub algorithms: Vec<Algorithm>,
}

impl AuthConfig {
    /// The challenges offered to a request with this User-Agent: the first profile whose
    /// `user_agent` it contains, else `algorithms`.
    pub fn algorithms_for(&self, user_agent: Option<&str>) -> &[Algorithm] {
        user_agent
            .and_then(|ua| {
                self.profiles
                    .iter()
                    .find(|p| !p.user_agent.is_empty() && ua.contains(p.user_agent.as_str()))
            })
            .map_or(&self.algorithms, |p| &p.algorithms)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Least time between two flushes to disk, in milliseconds. An idle server flushes a write
    /// at once; under load every write that arrives within this interval shares one flush
    /// (group commit), which bounds the fsync rate. 0 flushes back to back. Presence writes
    /// (NOTIFY CSeq/version, SUBSCRIBE, PUBLISH) skip the interval: a lamp waits for the flush
    /// in progress, not for the interval.
    pub flush_interval_ms: u64,
    /// Writes that may wait for the disk at once. A request whose write finds this many
    /// waiting is answered `503 Storage busy` with `Retry-After`, never acknowledged.
    pub max_queued_writes: usize,
    /// The database in the data directory. Unset: redb, except that a data directory holding
    /// only a sled database (written by an earlier busylamp) is migrated to redb once at
    /// start (the sled files are kept beside it). "sled" keeps using sled.
    pub backend: Option<StorageBackend>,
}

/// The embedded database behind the stores (`[storage] backend`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Redb,
    Sled,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Our Contact in subscription dialogs, e.g. "sip:192.0.2.10:5060". Empty: the address
    /// the watcher's SUBSCRIBE reached (the socket address, or the Request-URI host when the
    /// socket is bound to a wildcard address).
    #[serde(deserialize_with = "values::server_address")]
    pub server_address: Option<SipUri>,
    /// Shortest subscription or publication accepted; shorter gets 423 with Min-Expires.
    pub min_expires: u32,
    /// Longer requested durations are cut to this.
    pub max_expires: u32,
    /// Duration of a SUBSCRIBE or PUBLISH without Expires (RFC 3856 §6.4, RFC 3903 §4).
    pub default_expires: u32,
    /// Seconds subtracted from the Expires of a PUBLISH's 200, so publishers refresh before
    /// their publication runs out (Kamailio's `expires_offset`).
    pub expires_offset: u32,
    /// Changes to one presentity within this many milliseconds after a NOTIFY fan-out are
    /// sent together as one NOTIFY per watcher; the first change goes out at once.
    pub coalesce_ms: u64,
    /// NOTIFY CSeqs and versions reserved on disk at a time per subscription: NOTIFYs
    /// within the range write nothing and wait for no disk; after a restart NOTIFYs continue
    /// above it. 0: every NOTIFY's CSeq and version are written before it leaves.
    pub notify_reserve: u32,
    /// Most subscriptions held in total; more get 503.
    pub max_subscriptions: usize,
    /// Most watchers of one presentity and package.
    pub max_watchers_per_presentity: usize,
    /// Most publications held in total, and per presentity and package.
    pub max_publications: usize,
    pub max_publications_per_presentity: usize,
    /// Most subscriptions one user holds (keyed by the authenticated user; unauthenticated,
    /// in open mode or from a source trusted for subscribe, by the From AOR): more get 403.
    pub max_subscriptions_per_user: usize,
    /// Most SIP publications one user holds (keyed by the presentity published for, which
    /// for an authenticated user is its own AOR): more get 403.
    pub max_publications_per_user: usize,
    /// Most subscriptions of one user whose NOTIFYs are failing (timeouts, 408, 5xx) at
    /// once: beyond it the one failing longest is ended, so a watcher that answers nothing
    /// cannot hold more than this many retrying transactions.
    pub max_failing_watchers_per_user: usize,
    /// Who gets the `call-id`, `local-tag` and `remote-tag` of dialogs in dialog-info
    /// NOTIFYs (what directed call pickup needs): "same_domain" (watchers that are users of
    /// our domain), "everyone" or "nobody"; the others get the dialogs without them.
    pub dialog_ids_to: DialogIdsTo,
    /// Authorization of watchers in our own domain(s): "allow", "confirm" or "block".
    pub same_domain: Policy,
    /// Authorization of watchers from other domains.
    pub other_domains: Policy,
    /// Per-presentity authorization rules, first match wins.
    pub rules: Vec<PresenceRule>,
    /// Vendor profiles chosen by the watcher's User-Agent; the first match wins, and the
    /// profile named "default" (or built-in defaults) applies otherwise.
    pub profiles: Vec<VendorProfile>,
}

/// Whom a presence rule is about: `"*"`, `"*@domain"` or a SIP URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePattern {
    Any,
    /// `*@example.com`: every AOR of that domain (as written).
    Domain(String),
    Uri(SipUri),
}

impl RulePattern {
    pub fn parse(s: &str) -> Option<RulePattern> {
        if s == "*" {
            return Some(RulePattern::Any);
        }
        if let Some(d) = s.strip_prefix("*@").filter(|d| !d.is_empty()) {
            return Some(RulePattern::Domain(d.to_string()));
        }
        match Uri::parse(s) {
            Ok(Uri::Sip(u)) => Some(RulePattern::Uri(u)),
            _ => None,
        }
    }
}

/// Which watchers see the dialog identifiers (`call-id`, tags) in dialog-info NOTIFYs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DialogIdsTo {
    /// Watchers that are users of our domain (authenticated as such, where auth is on).
    SameDomain,
    Everyone,
    Nobody,
}

/// What to do with a watcher (RFC 5025 sub-handling, simplified).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Active at once.
    Allow,
    /// Pending until the presentity (or the admin) decides; its winfo watchers are told.
    Confirm,
    /// Refused with 403.
    Block,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PresenceRule {
    /// AOR whose watchers the rule governs ("sip:1001@example.com"), or "*".
    #[serde(deserialize_with = "values::rule_presentity")]
    pub presentity: RulePattern,
    /// Watcher AOR, "*@domain" for a whole domain, or "*".
    #[serde(deserialize_with = "values::rule_watcher")]
    pub watcher: RulePattern,
    pub action: Policy,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VendorProfile {
    pub name: String,
    /// Substring of the watcher's User-Agent that selects this profile ("" matches none,
    /// except for the profile named "default").
    pub user_agent: String,
    /// Idle BLF document: "empty" or "dummy-terminated".
    pub dialog_idle: crate::presence::package::DialogIdle,
    /// Send only the most relevant dialog (early > confirmed > trying > terminated).
    pub dialog_single: bool,
    /// A NOTIFY that times out or gets 408/5xx keeps the subscription and is retried with
    /// backoff (true), or ends it (false, RFC 6665 §4.2.2's default).
    pub keep_on_timeout: bool,
    /// First retry delay after a failed NOTIFY, in milliseconds; doubles up to 60 s.
    pub retry_ms: u64,
    /// BLF: show outgoing calls (direction initiator) that still ring as `confirmed`, for
    /// phones that would otherwise blink the lamp as if the call were incoming.
    pub caller_confirmed: bool,
    /// Shared lines: contacts registered to a `[[bla.lines]]` AOR by a phone whose
    /// User-Agent selects this profile get our `dialog;sla` SUBSCRIBE (false: a phone that
    /// registers the line but does not speak BLA, and would answer it with an error).
    pub bla_subscribe: bool,
}

impl Default for VendorProfile {
    fn default() -> Self {
        VendorProfile {
            name: "default".into(),
            user_agent: String::new(),
            dialog_idle: Default::default(),
            dialog_single: false,
            keep_on_timeout: true,
            retry_ms: 2000,
            caller_confirmed: false,
            bla_subscribe: true,
        }
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            server_address: None,
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            expires_offset: 0,
            coalesce_ms: 10,
            notify_reserve: crate::storage::presence::NOTIFY_RESERVE,
            max_subscriptions: 200_000,
            max_watchers_per_presentity: 10_000,
            max_publications: 200_000,
            max_publications_per_presentity: 64,
            max_subscriptions_per_user: 200,
            max_publications_per_user: 64,
            max_failing_watchers_per_user: 32,
            dialog_ids_to: DialogIdsTo::SameDomain,
            same_domain: Policy::Allow,
            other_domains: Policy::Confirm,
            rules: Vec::new(),
            profiles: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    pub name: String,
    pub password: Option<String>,
    /// MD5 HA1 = md5(name:realm:password), hex.
    pub ha1: Option<String>,
    /// SHA-256 HA1 = sha256(name:realm:password), hex.
    pub ha1_sha256: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            domain: Host::Name("localhost".into()),
            aliases: Vec::new(),
            listen: vec![
                ListenAddr {
                    proto: ListenProto::Udp,
                    addr: SocketAddr::from(([0, 0, 0, 0], 5060)),
                },
                ListenAddr {
                    proto: ListenProto::Tcp,
                    addr: SocketAddr::from(([0, 0, 0, 0], 5060)),
                },
            ],
            data_dir: PathBuf::from("/var/lib/busylamp"),
            max_message_size: 64 * 1024,
            max_headers: 128,
            tcp_idle_timeout: 600,
            max_tcp_connections: 10_000,
            max_tcp_connections_per_source: 16,
            tcp_message_timeout: 10,
            rate_limit_per_source: 50.0,
            rate_limit_burst: 500,
            max_transactions: 200_000,
            server_header: "busylamp".into(),
            log: "info".into(),
            realtime_priority: 0,
        }
    }
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 10,
            max_aors: 100_000,
            max_bindings_per_user: 10,
        }
    }
}

/// Who is trusted for what (`[auth] trusted` and `[auth] trusted_for`): the one rule the
/// authenticator and the proxy both ask.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trust {
    networks: Vec<IpNet>,
    purposes: Vec<TrustedFor>,
}

impl Trust {
    /// Whether `ip` is in a trusted network and `purpose` is one it is trusted for.
    pub fn trusts(&self, ip: IpAddr, purpose: TrustedFor) -> bool {
        self.purposes.contains(&purpose) && in_networks(&self.networks, ip)
    }
}

impl AuthConfig {
    pub fn trust(&self) -> Trust {
        Trust {
            networks: self.trusted.clone(),
            purposes: self.trusted_for.clone(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Digest,
            realm: String::new(),
            algorithms: vec![Algorithm::Md5],
            profiles: Vec::new(),
            trusted: Vec::new(),
            trusted_for: vec![TrustedFor::Calls],
            nonce_ttl: 300,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            flush_interval_ms: 10,
            max_queued_writes: crate::storage::DEFAULT_MAX_QUEUED_WRITES,
            backend: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenProto {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    pub proto: ListenProto,
    pub addr: SocketAddr,
}

impl FromStr for ListenAddr {
    type Err = BadValue;
    fn from_str(s: &str) -> Result<ListenAddr, BadValue> {
        let bad = || {
            BadValue::new(
                format!("{s:?} is not PROTO:ADDRESS:PORT"),
                "write \"udp:0.0.0.0:5060\", \"tcp:127.0.0.1:5070\" or \"udp:[::1]:5060\"",
            )
        };
        let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "udp" => ListenProto::Udp,
            "tcp" => ListenProto::Tcp,
            _ => return Err(bad()),
        };
        Ok(ListenAddr {
            proto,
            addr: rest.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            ListenProto::Udp => "udp",
            ListenProto::Tcp => "tcp",
        };
        write!(f, "{proto}:{}", self.addr)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ListenAddr, D::Error> {
        values::parsed(d, str::parse)
    }
}

/// Whether `ip` is in one of `nets`; an IPv4 peer on a dual-stack socket (`::ffff:a.b.c.d`)
/// counts as its IPv4 address.
pub fn in_networks(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// The parsers of the values that are not plain numbers, booleans or enums: each refuses a
/// bad value with a [`BadValue`] (the problem and the fix), raised inside the value's own
/// deserializer so the error carries the value's position, which the loader turns into the key.
mod values;

/// Turns a TOML or serde error into a [`ConfigError`] that names the key (found from the
/// error's position) and a fix.
mod locate;

/// `[bla]`: shared lines, their checks and who may register and call from them.
mod bla;
pub use bla::{BlaConfig, BlaLine, MAX_APPEARANCES};

/// `[control]`: the control socket and the metrics endpoint.
mod control;
pub use control::{ControlConfig, DEFAULT_CONTROL_SOCKET, MAX_SOCKET_PATH};

impl Config {
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| locate::config_error(text, path, &e))?;
        cfg.validate(path)?;
        cfg.canonical_user_patterns();
        Ok(cfg)
    }

    /// Writes the AORs of the `users` lists in canonical form, now that the domains are known,
    /// so that they compare equal to the AORs the registrar keys by.
    fn canonical_user_patterns(&mut self) {
        let domains = crate::domain::Domains::new(self);
        let lists = [&mut self.pua.usrloc.users, &mut self.pua.dialoginfo.users];
        for pattern in lists.into_iter().flatten() {
            if let UserPattern::Aor(aor) = pattern {
                if let Ok(crate::sip::Uri::Sip(u)) = crate::sip::Uri::parse(aor) {
                    *aor = domains.aor(&u);
                }
            }
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// `auth.realm`, or the domain when that is empty.
    pub fn realm(&self) -> String {
        if self.auth.realm.is_empty() {
            self.server.domain.to_string()
        } else {
            self.auth.realm.clone()
        }
    }

    /// What a valid config still allows that an operator should know about, one line each:
    /// `serve` logs them and `check-config` prints them.
    pub fn warnings(&self) -> Vec<String> {
        let a = &self.auth;
        let mut warnings = self.bla_capacity_warnings();
        if a.mode == AuthMode::Open {
            return warnings;
        }
        if a.algorithms.contains(&Algorithm::Sha256) {
            warnings.push(
                "*** auth.algorithms offers SHA-256 to every phone: phones that know MD5 only, or read only the first challenge, cannot register (baresip 1.0 gives up on any SHA-256 challenge). Set auth.algorithms = [\"MD5\"] and offer SHA-256 to the phones known to answer it with [[auth.profiles]] (user_agent, algorithms = [\"SHA-256\", \"MD5\"]). ***"
                    .to_string(),
            );
        }
        if a.trusted.is_empty() {
            return warnings;
        }
        let networks: Vec<String> = a.trusted.iter().map(|n| n.to_string()).collect();
        let networks = networks.join(", ");
        warnings.extend([
            (TrustedFor::Register, "register", "register as any user (and remove their phones' bindings)"),
            (TrustedFor::Subscribe, "subscribe", "subscribe as any user (BLF, voicemail, watcher lists)"),
            (TrustedFor::Publish, "publish", "publish any user's presence"),
        ]
        .into_iter()
        .filter(|(purpose, _, _)| a.trusted_for.contains(purpose))
        .map(|(_, name, what)| {
            format!(
                "*** auth.trusted_for names \"{name}\": any host in auth.trusted ({networks}) may {what} without a password, and a UDP source address is easily spoofed. Remove \"{name}\" unless that host truly needs it. ***"
            )
        }));
        warnings
    }

    /// The warnings about users, given the users file's records (`serve` logs them after
    /// loading the file, `check-config` prints them): no user at all in digest mode (every
    /// REGISTER fails), a file user the config's `[[users]]` shadows, a file user stored for
    /// another realm (it can never log in), a shared line's member or line nobody can log in
    /// as.
    pub fn user_warnings(&self, file_users: &[crate::storage::UserRecord]) -> Vec<String> {
        if self.auth.mode == AuthMode::Open {
            return Vec::new();
        }
        let realm = self.realm();
        let mut out = Vec::new();
        let usable = file_users.iter().filter(|u| u.realm == realm).count();
        if self.users.is_empty() && usable == 0 {
            out.push(format!(
                "no users: every REGISTER will be refused. Add one with `busylamp users add NAME` (for this config: `busylamp users --config FILE add NAME`), realm {realm}"
            ));
        }
        for u in file_users {
            if self.users.iter().any(|c| c.name == u.name) {
                out.push(shadowed_user_warning(&u.name, "the config"));
            } else if u.realm != realm {
                out.push(format!(
                    "user {} in the users file was stored for realm {:?}, not this config's {realm:?}: it cannot log in (403). Add it again with this config: `busylamp users --config FILE add {}`",
                    u.name, u.realm, u.name
                ));
            }
        }
        let known = |name: &str| {
            self.users.iter().any(|c| c.name == name)
                || file_users
                    .iter()
                    .any(|u| u.name == name && u.realm == realm)
        };
        // With no user at all the warning above says it all: no line can be registered.
        if !self.users.is_empty() || usable > 0 {
            out.extend(self.bla_user_warnings(&known));
        }
        out
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String, fix: &str| ConfigError::Invalid {
            path: path.to_string(),
            key: key.to_string(),
            problem,
            fix: fix.to_string(),
        };
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(bad(
                "server.listen",
                "is empty".into(),
                "list at least one address, e.g. [\"udp:0.0.0.0:5060\"]",
            ));
        }
        if s.data_dir.as_os_str().is_empty() {
            return Err(bad(
                "server.data_dir",
                "is empty".into(),
                "set a directory busylamp may write, e.g. \"/var/lib/busylamp\"",
            ));
        }
        if !(1024..=1024 * 1024).contains(&s.max_message_size) {
            return Err(bad(
                "server.max_message_size",
                format!("{} is out of range", s.max_message_size),
                "use a byte count from 1024 to 1048576 (default 65536)",
            ));
        }
        if !(16..=1024).contains(&s.max_headers) {
            return Err(bad(
                "server.max_headers",
                format!("{} is out of range", s.max_headers),
                "use a number from 16 to 1024 (default 128)",
            ));
        }
        if s.tcp_idle_timeout == 0 {
            return Err(bad(
                "server.tcp_idle_timeout",
                "is 0".into(),
                "use a number of seconds, e.g. 600",
            ));
        }
        if s.max_tcp_connections == 0 {
            return Err(bad(
                "server.max_tcp_connections",
                "is 0".into(),
                "use a positive number, e.g. 10000",
            ));
        }
        if s.max_tcp_connections_per_source == 0 {
            return Err(bad(
                "server.max_tcp_connections_per_source",
                "is 0".into(),
                "use a positive number, e.g. 16 (more if many phones share one address)",
            ));
        }
        if !s.rate_limit_per_source.is_finite() || s.rate_limit_per_source < 0.0 {
            return Err(bad(
                "server.rate_limit_per_source",
                format!("is {}", s.rate_limit_per_source),
                "use requests per second, e.g. 50, or 0 to turn the limit off",
            ));
        }
        if s.rate_limit_burst == 0 {
            return Err(bad(
                "server.rate_limit_burst",
                "is 0".into(),
                "use a positive number, e.g. 500 (a phone booting sends one SUBSCRIBE per BLF key)",
            ));
        }
        if s.tcp_message_timeout == 0 {
            return Err(bad(
                "server.tcp_message_timeout",
                "is 0".into(),
                "use a number of seconds, e.g. 10",
            ));
        }
        if !(1000..=10_000_000).contains(&s.max_transactions) {
            return Err(bad(
                "server.max_transactions",
                format!("{} is out of range", s.max_transactions),
                "use a number from 1000 to 10000000 (default 200000)",
            ));
        }
        if s.realtime_priority > 99 {
            return Err(bad(
                "server.realtime_priority",
                format!("{} is out of range", s.realtime_priority),
                "use 0 (off) or a real-time priority from 1 to 99, e.g. 10",
            ));
        }
        if s.server_header.chars().any(|c| c.is_control()) {
            return Err(bad(
                "server.server_header",
                "contains control characters".into(),
                "use plain text such as \"busylamp\"",
            ));
        }
        let r = &self.registrar;
        if r.min_expires == 0 {
            return Err(bad(
                "registrar.min_expires",
                "is 0".into(),
                "use a number of seconds, e.g. 60",
            ));
        }
        if r.max_expires < r.min_expires {
            return Err(bad(
                "registrar.max_expires",
                format!("{} is below min_expires ({})", r.max_expires, r.min_expires),
                "make max_expires at least min_expires",
            ));
        }
        if r.default_expires < r.min_expires || r.default_expires > r.max_expires {
            return Err(bad(
                "registrar.default_expires",
                format!(
                    "{} is outside min_expires..max_expires ({}..{})",
                    r.default_expires, r.min_expires, r.max_expires
                ),
                "pick a value between min_expires and max_expires",
            ));
        }
        if r.max_contacts == 0 || r.max_contacts > 1000 {
            return Err(bad(
                "registrar.max_contacts",
                format!("{} is out of range", r.max_contacts),
                "use a number from 1 to 1000 (default 10)",
            ));
        }
        if r.max_aors == 0 {
            return Err(bad(
                "registrar.max_aors",
                "is 0".into(),
                "use a positive number, e.g. 100000",
            ));
        }
        if r.max_bindings_per_user == 0 {
            return Err(bad(
                "registrar.max_bindings_per_user",
                "is 0".into(),
                "use a positive number, e.g. 10",
            ));
        }
        let a = &self.auth;
        if a.algorithms.is_empty() {
            return Err(bad(
                "auth.algorithms",
                "is empty".into(),
                "list \"SHA-256\", \"MD5\" or both",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in a.profiles.iter().enumerate() {
            let key = |k: &str| format!("auth.profiles[{i}].{k}");
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(bad(
                    &key("name"),
                    format!("{:?} is empty or used twice", p.name),
                    "give every profile its own name, e.g. \"linphone\"",
                ));
            }
            if p.user_agent.is_empty() {
                return Err(bad(
                    &key("user_agent"),
                    "is empty, so the profile matches no phone".into(),
                    "name a part of the phones' User-Agent, e.g. \"Linphone\"",
                ));
            }
            if p.algorithms.is_empty() {
                return Err(bad(
                    &key("algorithms"),
                    "is empty".into(),
                    "list \"SHA-256\", \"MD5\" or both",
                ));
            }
        }
        if a.trusted_for.is_empty() && !a.trusted.is_empty() {
            return Err(bad(
                "auth.trusted_for",
                "is empty, so auth.trusted would trust its networks for nothing".into(),
                "use [\"calls\"] (the PBX's calls skip the challenge), or empty auth.trusted",
            ));
        }
        if a.nonce_ttl < 10 {
            return Err(bad(
                "auth.nonce_ttl",
                format!("{} is too short", a.nonce_ttl),
                "use at least 10 seconds (default 300)",
            ));
        }
        if self.storage.flush_interval_ms > 100 {
            return Err(bad(
                "storage.flush_interval_ms",
                format!(
                    "{} would delay answers under load",
                    self.storage.flush_interval_ms
                ),
                "use 0 to 100 milliseconds (default 10)",
            ));
        }
        if self.storage.max_queued_writes == 0 {
            return Err(bad(
                "storage.max_queued_writes",
                "0 would refuse every write".into(),
                "use at least 1 (default 16384)",
            ));
        }
        self.validate_presence(&bad)?;
        self.validate_proxy(&bad)?;
        self.validate_pua(&bad)?;
        self.validate_bla(&bad)?;
        self.validate_control(&bad)?;
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("users[{i}]");
            if !bla::usable_user_name(&u.name) {
                return Err(bad(
                    &format!("{key}.name"),
                    format!("{:?} is not a usable SIP user name", u.name),
                    "use letters, digits and . - _ + (e.g. \"1001\")",
                ));
            }
            if !seen.insert(u.name.clone()) {
                return Err(bad(
                    &format!("{key}.name"),
                    format!("user {:?} is defined twice", u.name),
                    "keep one [[users]] entry per name",
                ));
            }
            if u.password.is_none() && u.ha1.is_none() && u.ha1_sha256.is_none() {
                return Err(bad(
                    &key,
                    format!("user {:?} has no password, ha1 or ha1_sha256", u.name),
                    "add password = \"...\" (or the HA1 hashes)",
                ));
            }
            for (k, v, len) in [("ha1", &u.ha1, 32), ("ha1_sha256", &u.ha1_sha256, 64)] {
                if let Some(v) = v {
                    if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad(
                            &format!("{key}.{k}"),
                            format!("is not {len} hex digits"),
                            "write the hex digest of name:realm:password",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_proxy(
        &self,
        bad: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let p = &self.proxy;
        if p.upstream_refresh == 0 {
            return Err(bad(
                "proxy.upstream_refresh",
                "is 0".into(),
                "use seconds, e.g. 300 (the DNS TTL still applies when shorter)",
            ));
        }
        if p.unregistered == Unregistered::Upstream && p.upstream.is_none() {
            return Err(bad(
                "proxy.unregistered",
                "is \"upstream\" but proxy.upstream is empty".into(),
                "set proxy.upstream to the PBX, or use unregistered = \"reject\"",
            ));
        }
        if p.timer_c < 180 {
            return Err(bad(
                "proxy.timer_c",
                format!(
                    "{} is shorter than RFC 3261 allows (more than 3 minutes)",
                    p.timer_c
                ),
                "use at least 180 seconds",
            ));
        }
        if p.max_branches == 0 || p.max_branches > 64 {
            return Err(bad(
                "proxy.max_branches",
                format!("{} is outside 1..=64", p.max_branches),
                "use a number between 1 and 64, e.g. 16",
            ));
        }
        if p.max_calls_per_user == 0 {
            return Err(bad(
                "proxy.max_calls_per_user",
                "is 0: no phone could make a call".into(),
                "use at least 1, e.g. 20",
            ));
        }
        self.validate_dialog(bad)
    }

    fn validate_dialog(
        &self,
        bad: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let d = &self.dialog;
        if d.max_lifetime < 60 {
            return Err(bad(
                "dialog.max_lifetime",
                format!("{} seconds would end live calls", d.max_lifetime),
                "use at least 60 seconds; the default is 14400 (4 hours)",
            ));
        }
        if d.max_lifetime > MAX_DIALOG_LIFETIME {
            return Err(bad(
                "dialog.max_lifetime",
                format!(
                    "{} seconds is more than 30 days: a phone that lost power would keep its lamp lit that long",
                    d.max_lifetime
                ),
                "use at most 2592000 seconds; the default is 14400 (4 hours)",
            ));
        }
        if d.early_timeout <= self.proxy.timer_c || d.early_timeout > 3600 {
            return Err(bad(
                "dialog.early_timeout",
                format!(
                    "{} seconds is not between proxy.timer_c ({}) and 3600: ringing calls would be ended before Timer C, or lamps would blink for an hour after a restart",
                    d.early_timeout, self.proxy.timer_c
                ),
                "use proxy.timer_c + 32 seconds (default 212)",
            ));
        }
        if d.max_calls == 0 || d.max_calls > 10_000_000 {
            return Err(bad(
                "dialog.max_calls",
                format!("{} is outside 1..=10000000", d.max_calls),
                "use a positive number, e.g. 100000 (the default)",
            ));
        }
        let di = &self.pua.dialoginfo;
        if di.enabled && di.users.is_empty() {
            return Err(bad(
                "pua.dialoginfo.users",
                "is empty, so no user would publish".into(),
                "use [\"*\"] for everybody, or set enabled = false",
            ));
        }
        Ok(())
    }

    fn validate_pua(
        &self,
        bad: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let p = &self.pua;
        let bad_chars = |v: &str| v.chars().any(|c| c.is_control());
        if bad_chars(&p.username) || p.username.contains('"') {
            return Err(bad(
                "pua.username",
                "contains control characters or quotes".into(),
                "use the plain digest user name, e.g. \"busylamp\"",
            ));
        }
        if bad_chars(&p.password) {
            return Err(bad(
                "pua.password",
                "contains control characters".into(),
                "use printable characters only",
            ));
        }
        if p.username.is_empty() && !p.password.is_empty() {
            return Err(bad(
                "pua.password",
                "is set but pua.username is empty".into(),
                "set pua.username to the digest user the password belongs to",
            ));
        }
        if !(60..=86_400).contains(&p.publish_expires) {
            return Err(bad(
                "pua.publish_expires",
                format!("{} is outside 60..=86400", p.publish_expires),
                "use a number of seconds from 60 to 86400 (default 3600)",
            ));
        }
        if !(1..=3600).contains(&p.refresh_margin) {
            return Err(bad(
                "pua.refresh_margin",
                format!("{} is outside 1..=3600", p.refresh_margin),
                "use a number of seconds from 1 to 3600 (default 30)",
            ));
        }
        if p.min_refresh == 0 || p.min_refresh > p.publish_expires / 2 {
            return Err(bad(
                "pua.min_refresh",
                format!(
                    "{} is outside 1..={} (half of publish_expires)",
                    p.min_refresh,
                    p.publish_expires / 2
                ),
                "use a few seconds, e.g. 10",
            ));
        }
        if p.retry_min == 0 {
            return Err(bad(
                "pua.retry_min",
                "is 0".into(),
                "use at least 1 second (default 2)",
            ));
        }
        if p.retry_max < p.retry_min || p.retry_max > 3600 {
            return Err(bad(
                "pua.retry_max",
                format!(
                    "{} is outside retry_min..=3600 ({}..=3600)",
                    p.retry_max, p.retry_min
                ),
                "use a number of seconds between retry_min and 3600 (default 300)",
            ));
        }
        if p.usrloc.users.is_empty() {
            return Err(bad(
                "pua.usrloc.users",
                "is empty".into(),
                "list the users whose registrations publish presence, [\"*\"] for everyone, or set pua.usrloc.enabled = false",
            ));
        }
        Ok(())
    }

    fn validate_presence(
        &self,
        bad: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let p = &self.presence;
        if p.min_expires == 0 {
            return Err(bad(
                "presence.min_expires",
                "is 0".into(),
                "use a number of seconds, e.g. 60",
            ));
        }
        if p.max_expires < p.min_expires {
            return Err(bad(
                "presence.max_expires",
                format!("{} is below min_expires ({})", p.max_expires, p.min_expires),
                "make max_expires at least min_expires",
            ));
        }
        if p.default_expires < p.min_expires || p.default_expires > p.max_expires {
            return Err(bad(
                "presence.default_expires",
                format!(
                    "{} is outside min_expires..max_expires ({}..{})",
                    p.default_expires, p.min_expires, p.max_expires
                ),
                "pick a value between min_expires and max_expires",
            ));
        }
        if p.expires_offset >= p.min_expires {
            return Err(bad(
                "presence.expires_offset",
                format!(
                    "{} is not below min_expires ({})",
                    p.expires_offset, p.min_expires
                ),
                "use a few seconds, e.g. 10, or 0",
            ));
        }
        if p.coalesce_ms > 1000 {
            return Err(bad(
                "presence.coalesce_ms",
                format!("{} would delay lamps visibly", p.coalesce_ms),
                "use 0 to 1000 milliseconds (default 10)",
            ));
        }
        for (key, v) in [
            ("presence.max_subscriptions", p.max_subscriptions),
            (
                "presence.max_watchers_per_presentity",
                p.max_watchers_per_presentity,
            ),
            ("presence.max_publications", p.max_publications),
            (
                "presence.max_publications_per_presentity",
                p.max_publications_per_presentity,
            ),
            (
                "presence.max_subscriptions_per_user",
                p.max_subscriptions_per_user,
            ),
            (
                "presence.max_publications_per_user",
                p.max_publications_per_user,
            ),
            (
                "presence.max_failing_watchers_per_user",
                p.max_failing_watchers_per_user,
            ),
        ] {
            if v == 0 {
                return Err(bad(key, "is 0".into(), "use a positive number"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, v) in p.profiles.iter().enumerate() {
            if v.name.is_empty() || !names.insert(v.name.clone()) {
                return Err(bad(
                    &format!("presence.profiles[{i}].name"),
                    format!("{:?} is empty or used twice", v.name),
                    "give every profile its own name, e.g. \"yealink\"",
                ));
            }
            if v.retry_ms < 100 || v.retry_ms > 60_000 {
                return Err(bad(
                    &format!("presence.profiles[{i}].retry_ms"),
                    format!("{} is out of range", v.retry_ms),
                    "use 100 to 60000 milliseconds (default 2000)",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
