//! Digest authentication of requests (RFC 3261 §22, RFC 7616, RFC 8760): challenges with
//! stateless nonces, verification against HA1s from the config and the user file, nonce-count
//! replay protection, trusted source networks (each trusted only for the purposes
//! `[auth] trusted_for` names) and the explicit open mode.

pub mod nonce;

use crate::config::{AuthConfig, AuthMode, Config, TrustedFor};
use crate::logs::AuthFailure;
use crate::sip::digest::{self, Algorithm, Challenge};
use crate::sip::{HeaderName, Request, Uri};
use crate::storage::UserFile;
use nonce::{NonceCheck, NonceCounts, NonceKey};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The 400 reason phrase for credentials whose `uri` is not the Request-URI.
pub const DIGEST_URI_MISMATCH: &str = "Digest uri does not match Request-URI";

/// What authentication decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// The source is trusted for this purpose, or the server runs in open mode: nobody was
    /// identified.
    Skipped,
    Authenticated {
        username: String,
    },
    /// Answer 401 (or 407) with fresh challenges.
    Challenge {
        stale: bool,
    },
    /// Answer 403 with this reason.
    Forbidden(&'static str),
    /// Answer 400 with this reason.
    BadRequest(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ha1s {
    pub md5: Option<String>,
    pub sha256: Option<String>,
}

impl Ha1s {
    fn for_alg(&self, alg: Algorithm) -> Option<&str> {
        match alg {
            Algorithm::Md5 | Algorithm::Md5Sess => self.md5.as_deref(),
            Algorithm::Sha256 | Algorithm::Sha256Sess => self.sha256.as_deref(),
        }
    }
}

pub struct Authenticator {
    mode: AuthMode,
    realm: String,
    /// `algorithms` and the per-User-Agent `profiles` that choose the challenges.
    challenges: AuthConfig,
    trust: crate::config::Trust,
    nonce_ttl: u64,
    key: NonceKey,
    counts: Mutex<NonceCounts>,
    config_users: crate::hashing::FastMap<String, Ha1s>,
    user_file: Option<Arc<UserFile>>,
}

/// Nonces tracked for nonce-count replay protection; beyond this the oldest are forgotten
/// (and then refused, so a forgotten nonce cannot be replayed).
const NONCE_TRACKING: usize = 200_000;

impl Authenticator {
    /// The users file the server reads users from, when it has one.
    pub fn user_file(&self) -> Option<&Arc<UserFile>> {
        self.user_file.as_ref()
    }

    /// Whether `name` is a user of the config's `[[users]]` (the users file cannot remove it).
    pub fn is_config_user(&self, name: &str) -> bool {
        self.config_users.contains_key(name)
    }

    /// The users of the config's `[[users]]`, sorted.
    pub fn config_user_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.config_users.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn new(cfg: &Config, key: NonceKey, user_file: Option<Arc<UserFile>>) -> Authenticator {
        let realm = cfg.realm();
        let config_users = cfg
            .users
            .iter()
            .map(|u| {
                let from_pw = |alg| {
                    u.password
                        .as_deref()
                        .map(|p| digest::ha1(alg, &u.name, &realm, p))
                };
                (
                    u.name.clone(),
                    Ha1s {
                        md5: u
                            .ha1
                            .clone()
                            .map(|h| h.to_ascii_lowercase())
                            .or_else(|| from_pw(Algorithm::Md5)),
                        sha256: u
                            .ha1_sha256
                            .clone()
                            .map(|h| h.to_ascii_lowercase())
                            .or_else(|| from_pw(Algorithm::Sha256)),
                    },
                )
            })
            .collect();
        Authenticator {
            mode: cfg.auth.mode,
            challenges: cfg.auth.clone(),
            trust: cfg.auth.trust(),
            nonce_ttl: cfg.auth.nonce_ttl,
            key,
            counts: Mutex::new(NonceCounts::new(NONCE_TRACKING, cfg.auth.nonce_ttl)),
            config_users,
            user_file,
            realm,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The algorithms offered to (and so accepted from) `req`'s phone: its User-Agent's
    /// `[[auth.profiles]]` entry, else `auth.algorithms`.
    fn algorithms_for(&self, req: &Request) -> &[Algorithm] {
        self.challenges
            .algorithms_for(req.headers.get(HeaderName::UserAgent))
    }

    /// Whether `ip` is in `[auth] trusted` and `[auth] trusted_for` names `purpose`. A trusted
    /// PBX is trusted for calls; a REGISTER, SUBSCRIBE or PUBLISH from its address (which
    /// anyone can put on a UDP datagram) is challenged like anyone's unless named too.
    pub fn is_trusted(&self, ip: IpAddr, purpose: TrustedFor) -> bool {
        self.trust.trusts(ip, purpose)
    }

    /// A user with credentials here (config or user file): a local user even when no phone of
    /// theirs is registered (the proxy answers 480 rather than 404 for them).
    pub fn knows(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    /// Whether requests for `purpose` from `source` are challenged at all.
    pub fn challenges_source(&self, source: IpAddr, purpose: TrustedFor) -> bool {
        self.mode != AuthMode::Open && !self.is_trusted(source, purpose)
    }

    fn lookup(&self, name: &str) -> Option<Ha1s> {
        if let Some(h) = self.config_users.get(name) {
            return Some(h.clone());
        }
        let rec = self.user_file.as_ref()?.get(name)?;
        if rec.realm != self.realm {
            return None;
        }
        Some(Ha1s {
            md5: rec.ha1_md5,
            sha256: rec.ha1_sha256,
        })
    }

    /// Checks the credentials of `req` in `header` (Authorization for a registrar or notifier,
    /// Proxy-Authorization for a proxy), made for `purpose`: a source trusted for another
    /// purpose only is challenged.
    pub fn check(
        &self,
        req: &Request,
        header: HeaderName,
        source: IpAddr,
        purpose: TrustedFor,
        now_unix: u64,
    ) -> AuthResult {
        if !self.challenges_source(source, purpose) {
            return AuthResult::Skipped;
        }
        let failed =
            |user: &str, reason| crate::logs::auth_failed(source, user, &req.method, reason);
        let mut creds = None;
        for value in req.headers.all(header) {
            match digest::parse_credentials(value) {
                Ok(c) if c.realm == self.realm => {
                    creds = Some(c);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    failed(&username_in(value), AuthFailure::BadCredentials);
                    return AuthResult::BadRequest(format!(
                        "Bad {} header: {e}",
                        header.canonical()
                    ));
                }
            }
        }
        let Some(creds) = creds else {
            return AuthResult::Challenge { stale: false };
        };
        // RFC 7616 §3.4.6 / RFC 2617 §3.2.2.5: the credentials are for the uri they name, so
        // that uri must be this request's (equal per RFC 3261 §19.1.4); otherwise credentials
        // captured for one request could be replayed against another target.
        if !Uri::parse(&creds.uri).is_ok_and(|u| u.equivalent(&req.uri)) {
            failed(&creds.username, AuthFailure::DigestUriMismatch);
            return AuthResult::BadRequest(DIGEST_URI_MISMATCH.to_string());
        }
        let alg = match creds.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::from_name(a) {
                Some(a) if self.algorithms_for(req).contains(&a) => a,
                _ => return AuthResult::Challenge { stale: false },
            },
        };
        if creds
            .qop
            .as_deref()
            .is_some_and(|q| !q.eq_ignore_ascii_case("auth"))
        {
            return AuthResult::Challenge { stale: false };
        }
        let issued = match self.key.check(&creds.nonce, now_unix, self.nonce_ttl) {
            NonceCheck::Fresh { issued_secs } => issued_secs,
            NonceCheck::Stale => return AuthResult::Challenge { stale: true },
            NonceCheck::Invalid => {
                // Also every phone's nonce from before our restart: not a failure.
                tracing::debug!(%source, user = ?creds.username, "nonce not ours or damaged: challenged again");
                return AuthResult::Challenge { stale: false };
            }
        };
        let Some(ha1) = self.lookup(&creds.username) else {
            failed(&creds.username, AuthFailure::UnknownUser);
            return AuthResult::Forbidden("Wrong password or unknown user");
        };
        let Some(ha1) = ha1.for_alg(alg) else {
            // The user's password is only known hashed for the other algorithm.
            return AuthResult::Challenge { stale: false };
        };
        if !digest::verify(alg, ha1, &req.method, &creds) {
            failed(&creds.username, AuthFailure::WrongPassword);
            return AuthResult::Forbidden("Wrong password or unknown user");
        }
        // Without qop there is no nc: the nonce is then good for one request.
        let nc = creds.nc_value().unwrap_or(1);
        let accepted = self
            .counts
            .lock()
            .map(|mut c| c.accept(&creds.nonce, nc, issued, now_unix))
            .unwrap_or(false);
        if !accepted {
            // A replayed nonce-count: make the client start over with a fresh nonce. Not
            // logged as a failure: the password was right (a retransmission or a replay).
            tracing::debug!(%source, user = ?creds.username, "nonce-count replayed: challenged again");
            return AuthResult::Challenge { stale: true };
        }
        AuthResult::Authenticated {
            username: creds.username,
        }
    }

    /// WWW-Authenticate / Proxy-Authenticate values for `req`, most preferred algorithm
    /// first (RFC 8760 §2.4), as its User-Agent's profile says. When the user named in the
    /// request is known, only the algorithms we hold an HA1 for are offered.
    pub fn challenges(
        &self,
        req: &Request,
        stale: bool,
        now_unix: u64,
        user_hint: Option<&str>,
    ) -> Vec<String> {
        let nonce = self.key.issue(now_unix);
        let known = user_hint.and_then(|u| self.lookup(u));
        let algorithms = self.algorithms_for(req);
        let mut offered: Vec<Algorithm> = algorithms
            .iter()
            .copied()
            .filter(|a| known.as_ref().is_none_or(|h| h.for_alg(*a).is_some()))
            .collect();
        if offered.is_empty() {
            offered = algorithms.to_vec();
        }
        offered
            .into_iter()
            .map(|algorithm| {
                Challenge {
                    realm: self.realm.clone(),
                    nonce: nonce.clone(),
                    opaque: None,
                    algorithm,
                    qop_auth: true,
                    stale,
                }
                .to_header_value()
            })
            .collect()
    }
}

/// The `username` of a credentials header that does not parse, for the log (empty when none
/// can be found).
fn username_in(value: &str) -> String {
    let Some(i) = value.find("username") else {
        return String::new();
    };
    let rest = value[i + "username".len()..].trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return String::new();
    };
    let rest = rest.trim_start();
    match rest.strip_prefix('"') {
        Some(q) => q.split('"').next().unwrap_or("").to_string(),
        None => rest
            .split(|c: char| c == ',' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;
    use crate::sip::parse::{parse_message, Limits};
    use crate::sip::Message;

    fn auth(algs: &[&str]) -> Authenticator {
        let mut cfg = Config::default();
        cfg.server.domain = crate::sip::Host::Name("example.test".into());
        cfg.auth.algorithms = algs
            .iter()
            .map(|s| Algorithm::from_name(s).unwrap())
            .collect();
        cfg.auth.trusted = vec!["10.0.0.0/8".parse().unwrap()];
        cfg.users = vec![
            UserConfig {
                name: "1001".into(),
                password: Some("secret".into()),
                ..Default::default()
            },
            UserConfig {
                name: "md5only".into(),
                ha1: Some(digest::ha1(Algorithm::Md5, "md5only", "example.test", "pw")),
                ..Default::default()
            },
        ];
        Authenticator::new(&cfg, NonceKey::new([7; 32]), None)
    }

    fn register(authz: Option<String>) -> Request {
        let mut m = String::from(
            "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:1001@example.test>;tag=1\r\nTo: <sip:1001@example.test>\r\n\
             Call-ID: c\r\nCSeq: 1 REGISTER\r\n",
        );
        if let Some(a) = authz {
            m.push_str(&format!("Authorization: {a}\r\n"));
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        match parse_message(m.as_bytes(), &Limits::default()).unwrap() {
            Message::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn answer(
        a: &Authenticator,
        user: &str,
        pw: &str,
        alg: Algorithm,
        nonce: &str,
        nc: u32,
    ) -> String {
        let creds = digest::Credentials {
            username: user.into(),
            realm: "example.test".into(),
            nonce: nonce.into(),
            uri: "sip:example.test".into(),
            algorithm: Some(alg.name().into()),
            cnonce: Some("abc".into()),
            nc: Some(format!("{nc:08x}")),
            qop: Some("auth".into()),
            ..Default::default()
        };
        let ha1 = digest::ha1(alg, user, a.realm(), pw);
        let resp = digest::response(alg, &ha1, "REGISTER", &creds);
        format!(
            "Digest username=\"{user}\", realm=\"example.test\", nonce=\"{nonce}\", uri=\"sip:example.test\", \
             response=\"{resp}\", algorithm={}, cnonce=\"abc\", nc={nc:08x}, qop=auth",
            alg.name()
        )
    }

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REG: TrustedFor = TrustedFor::Register;

    /// Valid credentials (right password, fresh nonce) computed for `digest_uri`, on a
    /// REGISTER whose Request-URI is `sip:example.test`.
    fn register_with_digest_uri(a: &Authenticator, digest_uri: &str, nc: u32) -> Request {
        let nonce = a.key.issue(1000);
        let creds = digest::Credentials {
            username: "1001".into(),
            realm: "example.test".into(),
            nonce: nonce.clone(),
            uri: digest_uri.into(),
            algorithm: Some("MD5".into()),
            cnonce: Some("abc".into()),
            nc: Some(format!("{nc:08x}")),
            qop: Some("auth".into()),
            ..Default::default()
        };
        let ha1 = digest::ha1(Algorithm::Md5, "1001", a.realm(), "secret");
        let resp = digest::response(Algorithm::Md5, &ha1, "REGISTER", &creds);
        register(Some(format!(
            "Digest username=\"1001\", realm=\"example.test\", nonce=\"{nonce}\", \
             uri=\"{digest_uri}\", response=\"{resp}\", algorithm=MD5, cnonce=\"abc\", \
             nc={nc:08x}, qop=auth"
        )))
    }

    #[test]
    fn rfc7616_3_4_6_digest_uri_must_be_the_request_uri() {
        let a = auth(&["MD5"]);
        for other in [
            "sip:evil.example",
            "sip:example.test:5070",
            "sips:example.test",
            "sip:1001@example.test",
            "sip:example.test;maddr=192.0.2.1",
            "sip:example.test;transport=tcp",
            "tel:+15551234",
            "not a uri",
            "",
        ] {
            let r = register_with_digest_uri(&a, other, 1);
            assert_eq!(
                a.check(&r, HeaderName::Authorization, SRC, REG, 1000),
                AuthResult::BadRequest(DIGEST_URI_MISMATCH.into()),
                "{other:?}"
            );
        }
        // Equal per RFC 3261 §19.1.4 (host and scheme case, a parameter other than user, ttl,
        // method, maddr or transport in one only) is the same uri.
        for (nc, same) in [
            "sip:example.test",
            "sip:EXAMPLE.test",
            "SIP:example.test",
            "sip:example.test;newparam=5",
        ]
        .into_iter()
        .enumerate()
        {
            let r = register_with_digest_uri(&a, same, nc as u32 + 1);
            assert_eq!(
                a.check(&r, HeaderName::Authorization, SRC, REG, 1000),
                AuthResult::Authenticated {
                    username: "1001".into()
                },
                "{same:?}"
            );
        }
    }

    #[test]
    fn rfc8760_sha256_and_md5_are_both_accepted_and_replay_is_refused() {
        let a = auth(&["SHA-256", "MD5"]);
        let nonce = a.key.issue(1000);
        for (alg, nc) in [(Algorithm::Sha256, 1), (Algorithm::Md5, 2)] {
            let r = register(Some(answer(&a, "1001", "secret", alg, &nonce, nc)));
            assert_eq!(
                a.check(&r, HeaderName::Authorization, SRC, REG, 1001),
                AuthResult::Authenticated {
                    username: "1001".into()
                }
            );
        }
        // Same nc again: replay.
        let r = register(Some(answer(
            &a,
            "1001",
            "secret",
            Algorithm::Md5,
            &nonce,
            2,
        )));
        assert_eq!(
            a.check(&r, HeaderName::Authorization, SRC, REG, 1002),
            AuthResult::Challenge { stale: true }
        );
    }

    #[test]
    fn wrong_password_stale_nonce_and_garbage() {
        let a = auth(&["SHA-256", "MD5"]);
        let nonce = a.key.issue(1000);
        let r = register(Some(answer(&a, "1001", "wrong", Algorithm::Md5, &nonce, 1)));
        assert!(matches!(
            a.check(&r, HeaderName::Authorization, SRC, REG, 1000),
            AuthResult::Forbidden(_)
        ));
        let r = register(Some(answer(
            &a,
            "1001",
            "secret",
            Algorithm::Md5,
            &nonce,
            1,
        )));
        assert_eq!(
            a.check(&r, HeaderName::Authorization, SRC, REG, 1000 + 301),
            AuthResult::Challenge { stale: true }
        );
        let r = register(Some("Digest username=\"x\"".into()));
        assert!(matches!(
            a.check(&r, HeaderName::Authorization, SRC, REG, 1000),
            AuthResult::BadRequest(_)
        ));
        assert_eq!(
            a.check(&register(None), HeaderName::Authorization, SRC, REG, 1),
            AuthResult::Challenge { stale: false }
        );
    }

    #[test]
    fn a_trusted_source_is_trusted_only_for_the_purposes_trusted_for_names() {
        use TrustedFor::*;
        let ten: IpAddr = "10.1.2.3".parse().unwrap();
        // The default: calls only.
        let a = auth(&["MD5"]);
        let req = register(None);
        assert_eq!(
            a.check(&req, HeaderName::ProxyAuthorization, ten, Calls, 1),
            AuthResult::Skipped
        );
        for purpose in [Register, Subscribe, Publish] {
            assert_eq!(
                a.check(&req, HeaderName::Authorization, ten, purpose, 1),
                AuthResult::Challenge { stale: false },
                "{purpose:?}"
            );
            assert!(a.challenges_source(ten, purpose));
        }
        // Outside the trusted networks nothing is skipped.
        assert!(a.challenges_source(SRC, Calls));
        // Each purpose named on its own.
        let mut cfg = Config::default();
        cfg.auth.trusted = vec!["10.0.0.0/8".parse().unwrap()];
        cfg.auth.trusted_for = vec![Calls, Register];
        let a = Authenticator::new(&cfg, NonceKey::new([7; 32]), None);
        assert!(a.is_trusted(ten, Calls) && a.is_trusted(ten, Register));
        assert!(!a.is_trusted(ten, Subscribe) && !a.is_trusted(ten, Publish));
        assert!(!a.is_trusted(SRC, Register));
        // Open mode challenges nobody, whatever trusted_for says.
        cfg.auth.mode = AuthMode::Open;
        cfg.auth.trusted_for = vec![Calls];
        let a = Authenticator::new(&cfg, NonceKey::new([7; 32]), None);
        assert!(!a.challenges_source(SRC, Publish));
    }

    #[test]
    fn challenges_offer_only_algorithms_the_user_can_answer() {
        let a = auth(&["SHA-256", "MD5"]);
        let req = register(None);
        let c = a.challenges(&req, false, 5, Some("1001"));
        assert_eq!(c.len(), 2);
        assert!(c[0].contains("algorithm=SHA-256") && c[1].contains("algorithm=MD5"));
        assert!(c[0].contains("qop=\"auth\""));
        let c = a.challenges(&req, true, 5, Some("md5only"));
        assert_eq!(c.len(), 1);
        assert!(c[0].contains("MD5") && c[0].contains("stale=true"));
    }

    fn with_user_agent(mut req: Request, ua: &str) -> Request {
        req.headers.push(HeaderName::UserAgent, ua.to_string());
        req
    }

    /// Issue 11: one MD5 challenge by default (phones that read only the first challenge, or
    /// know MD5 only, can register); SHA-256 first for the User-Agents a profile names.
    #[test]
    fn rfc8760_default_is_one_md5_challenge_and_profiles_offer_sha256_by_user_agent() {
        let a = Authenticator::new(&Config::default(), NonceKey::new([7; 32]), None);
        let c = a.challenges(&register(None), false, 5, None);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].contains("algorithm=MD5"), "{c:?}");

        let mut cfg = Config::default();
        cfg.server.domain = crate::sip::Host::Name("example.test".into());
        cfg.users = vec![UserConfig {
            name: "1001".into(),
            password: Some("secret".into()),
            ..Default::default()
        }];
        cfg.auth.profiles = vec![crate::config::AuthProfile {
            name: "linphone".into(),
            user_agent: "Linphone".into(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }];
        let a = Authenticator::new(&cfg, NonceKey::new([7; 32]), None);
        let linphone = with_user_agent(register(None), "Linphone/5.1.2 (belle-sip/5.1.0)");
        let c = a.challenges(&linphone, false, 5, Some("1001"));
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("algorithm=SHA-256") && c[1].contains("algorithm=MD5"));
        let baresip = with_user_agent(register(None), "baresip v1.0.0 (x86_64/linux)");
        let c = a.challenges(&baresip, false, 5, Some("1001"));
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].contains("algorithm=MD5"));

        // What is offered is what is accepted: SHA-256 credentials from the profile's phone
        // pass; from a phone that was offered MD5 only, they get a fresh (MD5) challenge.
        let nonce = a.key.issue(1000);
        let sha = answer(&a, "1001", "secret", Algorithm::Sha256, &nonce, 1);
        let r = with_user_agent(register(Some(sha.clone())), "Linphone/5.1.2");
        assert_eq!(
            a.check(&r, HeaderName::Authorization, SRC, REG, 1001),
            AuthResult::Authenticated {
                username: "1001".into()
            }
        );
        let r = with_user_agent(register(Some(sha)), "baresip v1.0.0");
        assert_eq!(
            a.check(&r, HeaderName::Authorization, SRC, REG, 1001),
            AuthResult::Challenge { stale: false }
        );
        let md5 = answer(&a, "1001", "secret", Algorithm::Md5, &nonce, 2);
        let r = with_user_agent(register(Some(md5)), "baresip v1.0.0");
        assert_eq!(
            a.check(&r, HeaderName::Authorization, SRC, REG, 1001),
            AuthResult::Authenticated {
                username: "1001".into()
            }
        );
    }
}
