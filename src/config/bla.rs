//! `[bla]` and `[[bla.lines]]`: shared lines (Bridged Line Appearance, Polycom `dialog;sla`).
//! The schema, its checks and the questions the registrar and the proxy ask of it (which line
//! an AOR is, who may register and call from it).

use super::*;
use crate::domain::Domains;

/// `[bla]`: the shared lines and the timers of the appearance arbitration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BlaConfig {
    /// Seconds a seize (a dialog still `trying`) may hold an appearance before it is released:
    /// a phone taken off-hook and never dialled must not block the appearance for good.
    pub seize_timeout: u64,
    /// Our `dialog;sla` SUBSCRIBE to a phone asks for the binding's remaining seconds plus
    /// this, so the subscription outlives the registration it belongs to.
    pub subscribe_margin: u32,
    /// Expires of our SUBSCRIBE while the phone holds a seized appearance: refreshed more
    /// often, so a phone that died mid-seize is noticed sooner.
    pub seized_expires: u32,
    /// Seconds to wait for the old subscription's final NOTIFY before a new SUBSCRIBE to the
    /// same phone: Polycoms cannot hold two `dialog;sla` subscriptions at once.
    pub resubscribe_wait: u64,
    /// Seconds after start during which the appearances restored from disk wait for their
    /// phone's full NOTIFY; those nobody confirmed are then released.
    pub reconcile_timeout: u64,
    pub lines: Vec<BlaLine>,
}

impl Default for BlaConfig {
    fn default() -> Self {
        BlaConfig {
            seize_timeout: 30,
            subscribe_margin: 30,
            seized_expires: 120,
            resubscribe_wait: 2,
            reconcile_timeout: 32,
            lines: Vec::new(),
        }
    }
}

/// One `[[bla.lines]]` entry: a shared line several phones register and show.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlaLine {
    /// The line's AOR as written: a user of our domain (`"2000"`) or a SIP URI at one of our
    /// domains (`"sip:2000@example.com"`). Compare with [`BlaLine::canonical_aor`].
    pub aor: String,
    /// What the dashboard calls the line.
    #[serde(default)]
    pub label: Option<String>,
    /// Appearances (calls at once) the line has, numbered from 0 as the phones' `x-line-id`.
    #[serde(default = "default_appearances")]
    pub appearances: u32,
    /// Users whose own credentials may register (and call from) the line, besides the line's
    /// own user.
    #[serde(default)]
    pub members: Vec<String>,
}

fn default_appearances() -> u32 {
    2
}

/// Most appearances one line may have: Polycom shows at most a few dozen line keys, and
/// every appearance is a row in each watcher's document.
pub const MAX_APPEARANCES: u32 = 64;

/// Longest `label`, in bytes.
const MAX_LABEL: usize = 128;

/// Whether `s` is usable as a SIP user name in the config (`[[users]] name`, a member, a
/// line's user): printable ASCII without the characters that end a user part.
pub(super) fn usable_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'@' | b'"'))
}

fn has_scheme(s: &str) -> bool {
    let scheme = |p: &str| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    scheme("sip:") || scheme("sips:")
}

impl BlaLine {
    /// The line's canonical AOR ([`Domains::aor`]), the key the registrar and presence use:
    /// `"2000"` is `sip:2000@<server.domain>`. For a line that did not pass validation (only
    /// an unvalidated [`Config`] has one) the text as written, which matches no request.
    pub fn canonical_aor(&self, domains: &Domains) -> String {
        self.local_aor(domains)
            .unwrap_or_else(|| self.aor.trim().to_string())
    }

    /// The canonical AOR, or `None` when `aor` is not a user at one of our domains.
    fn local_aor(&self, domains: &Domains) -> Option<String> {
        let aor = self.aor.trim();
        if !has_scheme(aor) {
            return usable_user_name(aor).then(|| format!("sip:{aor}@{}", domains.primary()));
        }
        match Uri::parse(aor) {
            Ok(Uri::Sip(u)) => domains.local_aor(&u),
            _ => None,
        }
    }

    /// The line's own user: the one whose `[[users]]` entry (e.g. `name = "2000"`) may always
    /// register it. `""` for an unusable `aor`.
    pub fn user(&self) -> String {
        let aor = self.aor.trim();
        if !has_scheme(aor) {
            return aor.to_string();
        }
        match Uri::parse(aor) {
            Ok(Uri::Sip(u)) => u
                .user
                .as_deref()
                .map(|user| crate::sip::text::unescape(user).into_owned())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Whether the authenticated `user` may register the line's AOR and place calls from it:
    /// the line's own user or one of its members.
    pub fn may_register(&self, user: &str) -> bool {
        !user.is_empty() && (self.user() == user || self.members.iter().any(|m| m == user))
    }
}

impl BlaConfig {
    /// The shared line whose canonical AOR is `canonical_aor` (as [`Domains::aor`] writes it).
    pub fn line(&self, domains: &Domains, canonical_aor: &str) -> Option<&BlaLine> {
        self.lines
            .iter()
            .find(|l| l.local_aor(domains).is_some_and(|a| a == canonical_aor))
    }
}

impl Config {
    pub(super) fn validate_bla(
        &self,
        bad: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let b = &self.bla;
        if !(5..=600).contains(&b.seize_timeout) {
            return Err(bad(
                "bla.seize_timeout",
                format!("{} is outside 5..=600", b.seize_timeout),
                "use seconds from 5 to 600 (default 30): how long an off-hook phone that never dials keeps the appearance",
            ));
        }
        if b.subscribe_margin > 3600 {
            return Err(bad(
                "bla.subscribe_margin",
                format!("{} is outside 0..=3600", b.subscribe_margin),
                "use seconds from 0 to 3600 (default 30)",
            ));
        }
        if !(10..=3600).contains(&b.seized_expires) {
            return Err(bad(
                "bla.seized_expires",
                format!("{} is outside 10..=3600", b.seized_expires),
                "use seconds from 10 to 3600 (default 120)",
            ));
        }
        if b.resubscribe_wait > 32 {
            return Err(bad(
                "bla.resubscribe_wait",
                format!(
                    "{} seconds would leave the phone's line unwatched that long",
                    b.resubscribe_wait
                ),
                "use seconds from 0 to 32 (default 2)",
            ));
        }
        if !(1..=3600).contains(&b.reconcile_timeout) {
            return Err(bad(
                "bla.reconcile_timeout",
                format!("{} is outside 1..=3600", b.reconcile_timeout),
                "use seconds from 1 to 3600 (default 32): time for every phone to answer our SUBSCRIBE after a restart",
            ));
        }
        let domains = Domains::new(self);
        // canonical AOR -> the index of the line that has it first
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        for (i, line) in b.lines.iter().enumerate() {
            let key = |k: &str| format!("bla.lines[{i}].{k}");
            let Some(aor) = line.local_aor(&domains) else {
                let aor = line.aor.trim();
                let problem = if has_scheme(aor) {
                    match Uri::parse(aor) {
                        Ok(Uri::Sip(u)) if u.user.as_deref().is_some_and(|u| !u.is_empty()) => {
                            format!(
                                "{:?} is not at our domain ({} or server.aliases, at a port we listen on)",
                                line.aor, self.server.domain
                            )
                        }
                        _ => format!("{:?} is not a SIP URI with a user", line.aor),
                    }
                } else {
                    format!("{:?} is not a usable SIP user name", line.aor)
                };
                return Err(bad(
                    &key("aor"),
                    problem,
                    &format!(
                        "write the line's user (\"2000\") or its AOR at our domain (\"sip:2000@{}\")",
                        self.server.domain
                    ),
                ));
            };
            if let Some(first) = seen.get(&aor) {
                return Err(bad(
                    &key("aor"),
                    format!("{aor} is also bla.lines[{first}].aor"),
                    "keep one [[bla.lines]] entry per line; list every phone's user in its members",
                ));
            }
            seen.insert(aor, i);
            if let Some(label) = &line.label {
                if label.len() > MAX_LABEL || label.chars().any(|c| c.is_control()) {
                    return Err(bad(
                        &key("label"),
                        "is longer than 128 bytes or contains control characters".into(),
                        "use a short name such as \"Main line\"",
                    ));
                }
            }
            if !(1..=MAX_APPEARANCES).contains(&line.appearances) {
                return Err(bad(
                    &key("appearances"),
                    format!("{} is outside 1..={MAX_APPEARANCES}", line.appearances),
                    "use the number of calls the line carries at once, e.g. 2 (the default): one line key per appearance on the phones",
                ));
            }
            let mut members = std::collections::HashSet::new();
            for (j, m) in line.members.iter().enumerate() {
                let key = format!("bla.lines[{i}].members[{j}]");
                if !usable_user_name(m) {
                    return Err(bad(
                        &key,
                        format!("{m:?} is not a usable SIP user name"),
                        "list user names as in [[users]] name, e.g. \"1001\" (not AORs)",
                    ));
                }
                if !members.insert(m.as_str()) {
                    return Err(bad(
                        &key,
                        format!("user {m:?} is listed twice"),
                        "list each member once",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Shared lines with more members than one AOR may hold bindings: every member's phone
    /// registers the line's AOR, and the registrar refuses those beyond
    /// `registrar.max_contacts` (per AOR) or `registrar.max_bindings_per_user` (counted for
    /// the line's user).
    pub(super) fn bla_capacity_warnings(&self) -> Vec<String> {
        let r = &self.registrar;
        let room = r.max_contacts.min(r.max_bindings_per_user);
        self.bla
            .lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.members.len() > room)
            .map(|(i, line)| {
                format!(
                    "bla.lines[{i}].members lists {} users, but line {} holds at most {room} registered phones (registrar.max_contacts {}, registrar.max_bindings_per_user {}): the phones beyond are refused. Raise both to at least the number of phones that share the line",
                    line.members.len(),
                    line.aor,
                    r.max_contacts,
                    r.max_bindings_per_user
                )
            })
            .collect()
    }

    /// The shared lines' users that cannot log in, given the usable users (`[[users]]` and
    /// the users file's for our realm): a member that is nobody, a line nobody may register.
    pub(super) fn bla_user_warnings(&self, known: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for (i, line) in self.bla.lines.iter().enumerate() {
            let mut usable_members = 0;
            for (j, m) in line.members.iter().enumerate() {
                if known(m) {
                    usable_members += 1;
                } else {
                    out.push(format!(
                        "bla.lines[{i}].members[{j}]: user {m} is neither in [[users]] nor in the users file, so no phone can register line {} as {m}. Add the user (`busylamp users --config FILE add {m}`) or remove it from members",
                        line.aor
                    ));
                }
            }
            let user = line.user();
            if usable_members == 0 && !known(&user) {
                out.push(format!(
                    "bla.lines[{i}]: nobody may register line {}: its user {user} is neither in [[users]] nor in the users file, and it has no usable members. Add the line's user (`busylamp users --config FILE add {user}`) or list the users of its phones in bla.lines[{i}].members",
                    line.aor
                ));
            }
        }
        out
    }
}
