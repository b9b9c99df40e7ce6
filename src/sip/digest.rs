//! HTTP Digest authentication as SIP uses it (RFC 2617, RFC 7616, RFC 8760).
//!
//! The hashes are RustCrypto's (`md-5`, `sha2`), the comparison `subtle`'s and the hex
//! `hex`'s; this file only knows how Digest strings the pieces together. Hashing streams the
//! pieces of each digest input straight into the hash state, so computing a response
//! allocates only the returned hex string.

use md5::Md5;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Longest Authorization value we will parse; real phones send ~400 bytes,
/// and the bound keeps a hostile header from costing unbounded work.
pub const MAX_CREDENTIALS_LEN: usize = 4096;

/// Hex digest on the stack: the intermediate HA1'/HA2 values never need heap.
struct HexDigest {
    buf: [u8; 64],
    len: usize,
}

impl HexDigest {
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut buf = [0u8; 64];
        let len = bytes.len().min(32) * 2;
        // Cannot fail: the slice is exactly twice the (capped) input length.
        let _ = hex::encode_to_slice(&bytes[..len / 2], &mut buf[..len]);
        HexDigest { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn to_string_lossless(&self) -> String {
        self.as_bytes().iter().map(|&b| char::from(b)).collect()
    }
}

// ---------------------------------------------------------------------------
// Algorithms

/// Digest algorithms SIP phones use. SHA-512-256 (RFC 7616) is left out on
/// purpose: no deployed SIP handset we target offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    /// The token as it appears in `algorithm=`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Tokens are case-insensitive (RFC 7616 §3.3).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|alg| alg.name().eq_ignore_ascii_case(name))
    }

    /// Whether HA1 is re-keyed per client nonce (`-sess`).
    pub fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lowercase hex of the algorithm's hash over `data` (the `-sess`
    /// variants use the same hash as their base algorithm).
    pub fn hash_hex(self, data: &[u8]) -> String {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finish_hex().to_string_lossless()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
}

impl Hasher {
    fn new(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Md5 | Algorithm::Md5Sess => Hasher::Md5(Md5::new()),
            Algorithm::Sha256 | Algorithm::Sha256Sess => Hasher::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// Feeds `data` lowercased: a stored HA1 typed in uppercase hex must still
    /// produce the same digest the phone computed from lowercase hex.
    fn update_lowercase(&mut self, data: &[u8]) {
        let mut chunk = [0u8; 64];
        for part in data.chunks(64) {
            let lowered = &mut chunk[..part.len()];
            lowered.copy_from_slice(part);
            lowered.make_ascii_lowercase();
            self.update(lowered);
        }
    }

    /// Feeds `parts` joined by `:`, the separator of every Digest hash input.
    fn update_joined(&mut self, parts: &[&[u8]]) {
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                self.update(b":");
            }
            self.update(part);
        }
    }

    fn finish_hex(self) -> HexDigest {
        match self {
            Hasher::Md5(h) => HexDigest::from_bytes(&h.finalize()),
            Hasher::Sha256(h) => HexDigest::from_bytes(&h.finalize()),
        }
    }
}

// ---------------------------------------------------------------------------
// Challenge (WWW-Authenticate / Proxy-Authenticate)

/// A Digest challenge as the registrar sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge {
    /// The header value, e.g.
    /// `Digest realm="x", nonce="n", opaque="o", algorithm=SHA-256, qop="auth", stale=true`.
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(
            64 + self.realm.len() + self.nonce.len() + self.opaque.as_ref().map_or(0, String::len),
        );
        out.push_str("Digest realm=");
        push_quoted(&mut out, &self.realm);
        out.push_str(", nonce=");
        push_quoted(&mut out, &self.nonce);
        if let Some(opaque) = &self.opaque {
            out.push_str(", opaque=");
            push_quoted(&mut out, opaque);
        }
        out.push_str(", algorithm=");
        out.push_str(self.algorithm.name());
        if self.qop_auth {
            out.push_str(", qop=\"auth\"");
        }
        if self.stale {
            out.push_str(", stale=true");
        }
        out
    }
}

fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // A quoted-string cannot carry control characters, and a CR or LF
            // from a misconfigured realm would split the header; drop them.
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Credentials (Authorization / Proxy-Authorization)

/// The parameters of a Digest credential, quoted strings already unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub nc: Option<String>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
}

impl Credentials {
    /// The nonce count as a number, if `nc` is present and well formed.
    pub fn nc_value(&self) -> Option<u32> {
        let nc = self.nc.as_deref()?;
        if !is_valid_nc(nc) {
            return None;
        }
        u32::from_str_radix(nc, 16).ok()
    }
}

fn is_valid_nc(nc: &str) -> bool {
    // Checked by hand because from_str_radix would also take a leading '+'.
    nc.len() == 8 && nc.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why an Authorization value was refused. Messages never echo the value
/// itself: it is attacker-controlled and would end up in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    TooLong {
        len: usize,
    },
    NotDigest,
    Syntax {
        offset: usize,
        expected: &'static str,
    },
    UnterminatedQuote {
        offset: usize,
    },
    MissingParam(&'static str),
    DuplicateParam(&'static str),
    MalformedNc,
    QopWithout(&'static str),
    ExtendedUsername,
    UserHash,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::TooLong { len } => write!(
                f,
                "Authorization is {len} bytes long, over the {MAX_CREDENTIALS_LEN}-byte limit"
            ),
            DigestError::NotDigest => f.write_str("Authorization is not a Digest credential"),
            DigestError::Syntax { offset, expected } => write!(
                f,
                "Authorization is malformed at byte {offset}: expected {expected}"
            ),
            DigestError::UnterminatedQuote { offset } => write!(
                f,
                "Authorization has an unterminated quoted string starting at byte {offset}"
            ),
            DigestError::MissingParam(name) => {
                write!(f, "Authorization lacks the {name} parameter")
            }
            DigestError::DuplicateParam(name) => {
                write!(f, "Authorization parameter {name} appears twice")
            }
            DigestError::MalformedNc => {
                f.write_str("Authorization has a malformed nc (want 8 hex digits)")
            }
            DigestError::QopWithout(name) => {
                write!(f, "Authorization has qop but lacks the {name} parameter")
            }
            DigestError::ExtendedUsername => f.write_str(
                "Authorization uses username* (RFC 7616 extended username), which is not supported",
            ),
            DigestError::UserHash => f.write_str(
                "Authorization uses userhash=true (RFC 7616 hashed username), which is not supported",
            ),
        }
    }
}

impl std::error::Error for DigestError {}

fn is_lws(b: u8) -> bool {
    // CR and LF count because SIP allows folded header lines (RFC 3261 §7.3.1).
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Unquoted values are meant to be tokens, but some phones send things like
/// an unquoted URI; accept any visible ASCII that cannot be a delimiter.
fn is_bare_value_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b',' && b != b'"'
}

struct Cursor<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn skip_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&pred) {
            self.pos += 1;
        }
        // Predicates only accept ASCII, so both ends are char boundaries.
        &self.src[start..self.pos]
    }

    fn syntax(&self, expected: &'static str) -> DigestError {
        DigestError::Syntax {
            offset: self.pos,
            expected,
        }
    }

    fn quoted(&mut self) -> Result<String, DigestError> {
        let start = self.pos;
        let rest = &self.src[start + 1..];
        // Nearly every value has no escape: up to its closing quote it is copied whole, not
        // pushed a char at a time (~750 instructions per value before).
        match memchr::memchr2(b'"', b'\\', rest.as_bytes()) {
            Some(end) if rest.as_bytes()[end] == b'"' => {
                self.pos = start + 1 + end + 1;
                return Ok(rest[..end].to_string());
            }
            _ => {}
        }
        let mut out = String::with_capacity(rest.len().min(64));
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos = start + 1 + i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, escaped)) => out.push(escaped),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(DigestError::UnterminatedQuote { offset: start })
    }
}

/// Parameters we store; each may appear at most once.
#[derive(Default)]
struct Slots {
    username: Option<String>,
    realm: Option<String>,
    nonce: Option<String>,
    uri: Option<String>,
    response: Option<String>,
    algorithm: Option<String>,
    cnonce: Option<String>,
    nc: Option<String>,
    qop: Option<String>,
    opaque: Option<String>,
}

impl Slots {
    fn slot(&mut self, name: &str) -> Option<(&mut Option<String>, &'static str)> {
        const NAMES: [&str; 10] = [
            "username",
            "realm",
            "nonce",
            "uri",
            "response",
            "algorithm",
            "cnonce",
            "nc",
            "qop",
            "opaque",
        ];
        let canonical = NAMES.into_iter().find(|n| n.eq_ignore_ascii_case(name))?;
        let slot = match canonical {
            "username" => &mut self.username,
            "realm" => &mut self.realm,
            "nonce" => &mut self.nonce,
            "uri" => &mut self.uri,
            "response" => &mut self.response,
            "algorithm" => &mut self.algorithm,
            "cnonce" => &mut self.cnonce,
            "nc" => &mut self.nc,
            "qop" => &mut self.qop,
            _ => &mut self.opaque,
        };
        Some((slot, canonical))
    }
}

/// Parses an Authorization or Proxy-Authorization value of the form
/// `Digest k=v, k="v", ...`.
///
/// Tolerant where phones differ (case, whitespace and folding around `=` and
/// `,`, quoted or bare values, empty list elements, unknown parameters) and
/// strict where ambiguity could be exploited (a repeated known parameter is
/// an error rather than first- or last-wins).
pub fn parse_credentials(value: &str) -> Result<Credentials, DigestError> {
    if value.len() > MAX_CREDENTIALS_LEN {
        return Err(DigestError::TooLong { len: value.len() });
    }
    let mut cur = Cursor { src: value, pos: 0 };
    cur.skip_while(is_lws);
    let scheme = cur.skip_while(|b| !is_lws(b));
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }

    let mut slots = Slots::default();
    loop {
        cur.skip_while(|b| is_lws(b) || b == b',');
        if cur.peek().is_none() {
            break;
        }
        let name = cur.skip_while(is_tchar);
        if name.is_empty() {
            return Err(cur.syntax("a parameter name"));
        }
        cur.skip_while(is_lws);
        if cur.peek() != Some(b'=') {
            return Err(cur.syntax("'=' after a parameter name"));
        }
        cur.pos += 1;
        cur.skip_while(is_lws);
        let param_value = if cur.peek() == Some(b'"') {
            cur.quoted()?
        } else {
            let bare = cur.skip_while(is_bare_value_byte);
            if bare.is_empty() {
                return Err(cur.syntax("a parameter value"));
            }
            bare.to_owned()
        };
        cur.skip_while(is_lws);
        if !matches!(cur.peek(), None | Some(b',')) {
            return Err(cur.syntax("',' between parameters"));
        }

        if name.eq_ignore_ascii_case("username*") {
            return Err(DigestError::ExtendedUsername);
        }
        if name.eq_ignore_ascii_case("userhash") {
            if param_value.eq_ignore_ascii_case("true") {
                return Err(DigestError::UserHash);
            }
            continue;
        }
        // Unknown parameters are ignored: RFC 7616 §3.4 lets clients add them.
        if let Some((slot, canonical)) = slots.slot(name) {
            if slot.is_some() {
                return Err(DigestError::DuplicateParam(canonical));
            }
            *slot = Some(param_value);
        }
    }

    let required =
        |slot: Option<String>, name: &'static str| slot.ok_or(DigestError::MissingParam(name));
    let creds = Credentials {
        username: required(slots.username, "username")?,
        realm: required(slots.realm, "realm")?,
        nonce: required(slots.nonce, "nonce")?,
        uri: required(slots.uri, "uri")?,
        response: required(slots.response, "response")?,
        algorithm: slots.algorithm,
        cnonce: slots.cnonce,
        nc: slots.nc,
        qop: slots.qop,
        opaque: slots.opaque,
    };
    if creds.nc.as_deref().is_some_and(|nc| !is_valid_nc(nc)) {
        return Err(DigestError::MalformedNc);
    }
    if creds.qop.is_some() {
        if creds.cnonce.is_none() {
            return Err(DigestError::QopWithout("cnonce"));
        }
        if creds.nc.is_none() {
            return Err(DigestError::QopWithout("nc"));
        }
    }
    Ok(creds)
}

// ---------------------------------------------------------------------------
// Response computation

/// Hex of H(username:realm:password), the value a registrar stores instead of
/// the password. For `-sess` algorithms this is still the plain HA1: the
/// per-session HA1 depends on the client nonce and is derived in `response`.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    let mut h = Hasher::new(alg);
    h.update_joined(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()]);
    h.finish_hex().to_string_lossless()
}

/// The request-digest the client should have sent (RFC 7616 §3.4.1 when `qop`
/// is present, the RFC 2069 form when absent). `ha1_hex` is the stored plain
/// HA1; uppercase hex is accepted. The `qop` value is hashed as sent, and
/// HA2 is always H(method:uri), so `qop=auth-int` gives a meaningless result:
/// use `verify`, which refuses it. Missing `cnonce`/`nc` hash as empty.
pub fn response(alg: Algorithm, ha1_hex: &str, method: &str, creds: &Credentials) -> String {
    let nonce = creds.nonce.as_bytes();
    let cnonce = creds.cnonce.as_deref().unwrap_or("").as_bytes();

    let mut h = Hasher::new(alg);
    if alg.is_sess() {
        let mut sess = Hasher::new(alg);
        sess.update_lowercase(ha1_hex.as_bytes());
        sess.update(b":");
        sess.update_joined(&[nonce, cnonce]);
        h.update(sess.finish_hex().as_bytes());
    } else {
        h.update_lowercase(ha1_hex.as_bytes());
    }

    let mut ha2 = Hasher::new(alg);
    ha2.update_joined(&[method.as_bytes(), creds.uri.as_bytes()]);
    let ha2 = ha2.finish_hex();

    h.update(b":");
    h.update(nonce);
    h.update(b":");
    if let Some(qop) = &creds.qop {
        let nc = creds.nc.as_deref().unwrap_or("").as_bytes();
        h.update_joined(&[nc, cnonce, qop.as_bytes()]);
        h.update(b":");
    }
    h.update(ha2.as_bytes());
    h.finish_hex().to_string_lossless()
}

/// Whether `creds.response` is right for `alg` and the stored HA1.
///
/// Refuses what `response` cannot check honestly: `qop` other than `auth`,
/// `qop` without `cnonce`/`nc`, and `-sess` without `cnonce`. The caller
/// still has to check the realm, the nonce's freshness, the nonce count, and
/// that `creds.algorithm` names `alg`.
pub fn verify(alg: Algorithm, ha1_hex: &str, method: &str, creds: &Credentials) -> bool {
    if let Some(qop) = &creds.qop {
        if !qop.eq_ignore_ascii_case("auth") || creds.cnonce.is_none() || creds.nc.is_none() {
            return false;
        }
    }
    if alg.is_sess() && creds.cnonce.is_none() {
        return false;
    }
    let expected = response(alg, ha1_hex, method, creds);
    let given = creds.response.to_ascii_lowercase();
    // Constant time: response timing must not reveal how much of a guess was right.
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

// ---------------------------------------------------------------------------
// Client side: answering a challenge (RFC 3261 §22.2, RFC 7616 §3.4)

/// Parses a `WWW-Authenticate` / `Proxy-Authenticate` value of the form
/// `Digest realm="x", nonce="n", ...` as a client reads it. `None` when it is not a
/// Digest challenge we can answer: no realm or nonce, an algorithm we do not know, or a
/// `qop` list without `auth` (only `auth-int`). Unknown parameters are ignored.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    if value.len() > MAX_CREDENTIALS_LEN {
        return None;
    }
    let mut cur = Cursor { src: value, pos: 0 };
    cur.skip_while(is_lws);
    let scheme = cur.skip_while(|b| !is_lws(b));
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let (mut realm, mut nonce, mut opaque, mut algorithm, mut qop, mut stale) =
        (None, None, None, None, None, false);
    loop {
        cur.skip_while(|b| is_lws(b) || b == b',');
        cur.peek()?;
        let name = cur.skip_while(is_tchar);
        if name.is_empty() {
            return None;
        }
        cur.skip_while(is_lws);
        if cur.peek() != Some(b'=') {
            return None;
        }
        cur.pos += 1;
        cur.skip_while(is_lws);
        let v = if cur.peek() == Some(b'"') {
            cur.quoted().ok()?
        } else {
            cur.skip_while(is_bare_value_byte).to_owned()
        };
        match name.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "nonce" => nonce = Some(v),
            "opaque" => opaque = Some(v),
            "algorithm" => algorithm = Some(Algorithm::from_name(&v)?),
            "qop" => qop = Some(v),
            "stale" => stale = v.eq_ignore_ascii_case("true"),
            _ => {}
        }
        cur.skip_while(is_lws);
        if cur.peek().is_none() {
            break;
        }
    }
    let qop_auth = match qop {
        None => false,
        Some(list) => {
            if !list
                .split(',')
                .any(|q| q.trim().eq_ignore_ascii_case("auth"))
            {
                return None;
            }
            true
        }
    };
    Some(Challenge {
        realm: realm?,
        nonce: nonce?,
        opaque,
        algorithm: algorithm.unwrap_or(Algorithm::Md5),
        qop_auth,
        stale,
    })
}

/// The `Authorization` / `Proxy-Authorization` value answering `challenge` for a request
/// with `method` and Request-URI `uri` (RFC 7616 §3.4). `cnonce` is the client nonce
/// (any unpredictable token) and `nc` the count of requests made with this nonce.
pub fn authorization(
    challenge: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let alg = challenge.algorithm;
    let creds = Credentials {
        username: username.to_owned(),
        realm: challenge.realm.clone(),
        nonce: challenge.nonce.clone(),
        uri: uri.to_owned(),
        response: String::new(),
        algorithm: Some(alg.name().to_owned()),
        cnonce: challenge.qop_auth.then(|| cnonce.to_owned()),
        nc: challenge.qop_auth.then(|| format!("{nc:08x}")),
        qop: challenge.qop_auth.then(|| "auth".to_owned()),
        opaque: challenge.opaque.clone(),
    };
    let ha1 = ha1(alg, username, &challenge.realm, password);
    let response = response(alg, &ha1, method, &creds);
    let mut out = String::with_capacity(256);
    out.push_str("Digest username=");
    push_quoted(&mut out, username);
    out.push_str(", realm=");
    push_quoted(&mut out, &challenge.realm);
    out.push_str(", nonce=");
    push_quoted(&mut out, &challenge.nonce);
    out.push_str(", uri=");
    push_quoted(&mut out, uri);
    out.push_str(", response=\"");
    out.push_str(&response);
    out.push_str("\", algorithm=");
    out.push_str(alg.name());
    if let (Some(cn), Some(nc)) = (&creds.cnonce, &creds.nc) {
        out.push_str(", cnonce=");
        push_quoted(&mut out, cn);
        out.push_str(", nc=");
        out.push_str(nc);
        out.push_str(", qop=auth");
    }
    if let Some(o) = &challenge.opaque {
        out.push_str(", opaque=");
        push_quoted(&mut out, o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The RFC vectors below test our use of the crates: which hash, fed how, printed how.
    fn hex_of(bytes: &[u8]) -> String {
        hex::encode(bytes)
    }

    fn md5(data: &[u8]) -> Vec<u8> {
        Md5::digest(data).to_vec()
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        Sha256::digest(data).to_vec()
    }

    fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn md5_matches_rfc1321_appendix_a5() {
        let vectors: [(&str, &str); 7] = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in vectors {
            assert_eq!(hex_of(&md5(input.as_bytes())), want, "MD5({input:?})");
        }
    }

    #[test]
    fn sha256_matches_fips180_abc() {
        assert_eq!(
            hex_of(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sha256_matches_fips180_448_bit_message() {
        assert_eq!(
            hex_of(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn sha256_matches_fips180_million_a() {
        let data = vec![b'a'; 1_000_000];
        assert_eq!(
            hex_of(&sha256(&data)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            hex_of(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hashes_pad_correctly_around_block_boundaries() {
        // Reference values from Python's hashlib for the same byte pattern.
        let vectors: [(usize, &str, &str); 8] = [
            (
                55,
                "6912ee65fff2d9f9ce2508cddf8bcda0",
                "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59",
            ),
            (
                56,
                "51fdd1acda72405dfdfa03fcb85896d7",
                "da2ae4d6b36748f2a318f23e7ab1dfdf45acdc9d049bd80e59de82a60895f562",
            ),
            (
                63,
                "48a6295221902e8e0938f773a7185e72",
                "29af2686fd53374a36b0846694cc342177e428d1647515f078784d69cdb9e488",
            ),
            (
                64,
                "b2d3f56bc197fd985d5965079b5e7148",
                "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108",
            ),
            (
                65,
                "8bd7053801c768420faf816fadba971c",
                "4bfd2c8b6f1eec7a2afeb48b934ee4b2694182027e6d0fc075074f2fabb31781",
            ),
            (
                119,
                "1c772251899a7ff007400b888d6b2042",
                "da18797ed7c3a777f0847f429724a2d8cd5138e6ed2895c3fa1a6d39d18f7ec6",
            ),
            (
                120,
                "b7ba1efc6022e9ed272f00b8831e26e6",
                "f52b23db1fbb6ded89ef42a23ce0c8922c45f25c50b568a93bf1c075420bbb7c",
            ),
            (
                128,
                "37eff01866ba3f538421b30b7cbefcac",
                "471fb943aa23c511f6f72f8d1652d9c880cfa392ad80503120547703e56a2be5",
            ),
        ];
        for (len, want_md5, want_sha) in vectors {
            let data = pattern(len);
            assert_eq!(hex_of(&md5(&data)), want_md5, "MD5 of {len} bytes");
            assert_eq!(hex_of(&sha256(&data)), want_sha, "SHA-256 of {len} bytes");
        }
    }

    #[test]
    fn streaming_in_pieces_matches_one_shot() {
        // `response` feeds each digest input in pieces through `Hasher`.
        let data = pattern(300);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let want = alg.hash_hex(&data);
            for split in [0, 1, 55, 63, 64, 65, 128, 299, 300] {
                for second in [split, (split + 70).min(300)] {
                    let (a, rest) = data.split_at(split);
                    let (b, c) = rest.split_at(second - split);
                    let mut h = Hasher::new(alg);
                    for part in [a, b, c] {
                        h.update(part);
                    }
                    let got = h.finish_hex().to_string_lossless();
                    assert_eq!(got, want, "{alg} split at {split}/{second}");
                }
            }
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_cases_1_to_4_6_7() {
        let big_key = [0xaa_u8; 131];
        let key4: Vec<u8> = (1..=25).collect();
        let cases: [(&[u8], &[u8], &str); 6] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 20],
                &[0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                &key4,
                &[0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                &big_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &big_key,
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (i, (key, data, want)) in cases.into_iter().enumerate() {
            assert_eq!(hex_of(&hmac_sha256(key, data)), want, "case index {i}");
        }
    }

    #[test]
    fn hmac_sha256_with_exactly_block_size_key_is_not_rehashed() {
        // Python: hmac.new(b"\x11"*64, b"exactly block-size key", "sha256").
        assert_eq!(
            hex_of(&hmac_sha256(&[0x11; 64], b"exactly block-size key")),
            "8b37f9f0aee3509706394f87cd08eab4ce571ee73d85b2290ca106b8dd3d960b"
        );
    }

    #[test]
    fn hex_digest_is_lowercase_and_two_chars_per_byte() {
        assert_eq!(
            HexDigest::from_bytes(&[0x00, 0x0f, 0xa5, 0xff]).to_string_lossless(),
            "000fa5ff"
        );
        assert_eq!(HexDigest::from_bytes(&[]).to_string_lossless(), "");
        assert_eq!(HexDigest::from_bytes(&[0xab; 32]).as_bytes().len(), 64);
    }

    #[test]
    fn algorithm_names_round_trip_case_insensitively() {
        for alg in [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ] {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
            assert_eq!(Algorithm::from_name(&alg.name().to_lowercase()), Some(alg));
            assert_eq!(Algorithm::from_name(&alg.name().to_uppercase()), Some(alg));
            assert_eq!(alg.to_string(), alg.name());
        }
        assert_eq!(Algorithm::from_name("md5-Sess"), Some(Algorithm::Md5Sess));
        assert_eq!(Algorithm::from_name("SHA-512-256"), None);
        assert_eq!(Algorithm::from_name("SHA256"), None);
        assert_eq!(Algorithm::from_name(""), None);
    }

    #[test]
    fn hash_hex_uses_the_base_hash_for_sess_variants() {
        assert_eq!(
            Algorithm::Md5Sess.hash_hex(b"abc"),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            Algorithm::Sha256Sess.hash_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn rfc2617_creds() -> Credentials {
        Credentials {
            username: "Mufasa".into(),
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            response: "6629fae49393a05397450978507c4ef1".into(),
            algorithm: None,
            cnonce: Some("0a4f113b".into()),
            nc: Some("00000001".into()),
            qop: Some("auth".into()),
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
        }
    }

    #[test]
    fn rfc2617_section_3_5_example_response() {
        let creds = rfc2617_creds();
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(
            response(Algorithm::Md5, &ha1, "GET", &creds),
            "6629fae49393a05397450978507c4ef1"
        );
        assert!(verify(Algorithm::Md5, &ha1, "GET", &creds));
    }

    fn rfc7616_creds(response: &str) -> Credentials {
        Credentials {
            username: "Mufasa".into(),
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            uri: "/dir/index.html".into(),
            response: response.into(),
            algorithm: None,
            cnonce: Some("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into()),
            nc: Some("00000001".into()),
            qop: Some("auth".into()),
            opaque: Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".into()),
        }
    }

    const RFC7616_PASSWORD: &str = "Circle of Life";

    #[test]
    fn rfc7616_section_3_9_1_md5_example() {
        let creds = rfc7616_creds("8ca523f5e9506fed4657c9700eebdbec");
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "http-auth@example.org",
            RFC7616_PASSWORD,
        );
        assert_eq!(ha1, "3d78807defe7de2157e2b0b6573a855f");
        assert_eq!(
            response(Algorithm::Md5, &ha1, "GET", &creds),
            creds.response
        );
        assert!(verify(Algorithm::Md5, &ha1, "GET", &creds));
    }

    #[test]
    fn rfc7616_section_3_9_1_sha256_example() {
        let creds =
            rfc7616_creds("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
        let ha1 = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            RFC7616_PASSWORD,
        );
        assert_eq!(
            ha1,
            "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
        );
        assert_eq!(
            response(Algorithm::Sha256, &ha1, "GET", &creds),
            creds.response
        );
        assert!(verify(Algorithm::Sha256, &ha1, "GET", &creds));
    }

    #[test]
    fn sess_variants_rekey_ha1_with_nonce_and_cnonce() {
        // Reference values computed independently in Python with
        // HA1' = H(HA1 ":" nonce ":" cnonce), HA1 in lowercase hex.
        for (alg, want) in [
            (Algorithm::Md5Sess, "e783283f46242139c486a698fec7211d"),
            (
                Algorithm::Sha256Sess,
                "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7",
            ),
        ] {
            let creds = rfc7616_creds(want);
            let ha1 = ha1(alg, "Mufasa", "http-auth@example.org", RFC7616_PASSWORD);
            assert_eq!(response(alg, &ha1, "GET", &creds), want, "{alg}");
            assert!(verify(alg, &ha1, "GET", &creds), "{alg}");
        }
    }

    #[test]
    fn rfc2069_form_when_qop_absent() {
        // RFC 2069's own example has a wrong response (erratum); this is the
        // corrected value, also computed independently in Python.
        let creds = Credentials {
            qop: None,
            cnonce: None,
            nc: None,
            response: "1949323746fe6a43ef61f9606e7febea".into(),
            ..rfc2617_creds()
        };
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "CircleOfLife",
        );
        assert_eq!(
            response(Algorithm::Md5, &ha1, "GET", &creds),
            creds.response
        );
        assert!(verify(Algorithm::Md5, &ha1, "GET", &creds));

        let sha = Credentials {
            response: "89381827616a396139e299fae10b3a81aaa7bb9e04bee0dcb56ca48dd58af998".into(),
            ..creds.clone()
        };
        let ha1 = super::ha1(
            Algorithm::Sha256,
            "Mufasa",
            "testrealm@host.com",
            "CircleOfLife",
        );
        assert!(verify(Algorithm::Sha256, &ha1, "GET", &sha));
    }

    #[test]
    fn verify_accepts_uppercase_hex_response_and_stored_ha1() {
        let mut creds = rfc2617_creds();
        creds.response = creds.response.to_uppercase();
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert!(verify(Algorithm::Md5, &ha1, "GET", &creds));
        assert!(verify(Algorithm::Md5, &ha1.to_uppercase(), "GET", &creds));
    }

    #[test]
    fn verify_rejects_wrong_password_method_uri_or_algorithm() {
        let creds = rfc2617_creds();
        let good = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let bad = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "circle of life",
        );
        assert!(!verify(Algorithm::Md5, &bad, "GET", &creds));
        assert!(!verify(Algorithm::Md5, &good, "REGISTER", &creds));
        assert!(!verify(Algorithm::Sha256, &good, "GET", &creds));
        let other_uri = Credentials {
            uri: "/dir/other.html".into(),
            ..creds.clone()
        };
        assert!(!verify(Algorithm::Md5, &good, "GET", &other_uri));
        let truncated = Credentials {
            response: creds.response[..31].into(),
            ..creds.clone()
        };
        assert!(!verify(Algorithm::Md5, &good, "GET", &truncated));
    }

    #[test]
    fn verify_refuses_auth_int_and_incomplete_qop() {
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let base = rfc2617_creds();
        let mut auth_int = base.clone();
        auth_int.qop = Some("auth-int".into());
        auth_int.response = response(Algorithm::Md5, &ha1, "GET", &auth_int);
        assert!(!verify(Algorithm::Md5, &ha1, "GET", &auth_int));

        let no_cnonce = Credentials {
            cnonce: None,
            ..base.clone()
        };
        assert!(!verify(Algorithm::Md5, &ha1, "GET", &no_cnonce));
        let no_nc = Credentials {
            nc: None,
            ..base.clone()
        };
        assert!(!verify(Algorithm::Md5, &ha1, "GET", &no_nc));

        let mut sess_without_cnonce = Credentials {
            qop: None,
            nc: None,
            cnonce: None,
            ..base
        };
        sess_without_cnonce.response =
            response(Algorithm::Md5Sess, &ha1, "GET", &sess_without_cnonce);
        assert!(!verify(
            Algorithm::Md5Sess,
            &ha1,
            "GET",
            &sess_without_cnonce
        ));
    }

    const POLYCOM: &str = "Digest username=\"1013\", realm=\"pierrefouquet.babblevoice.com\", nonce=\"921a55467c54fdd626a9077a1c7f6358\", qop=auth, cnonce=\"X+5uJHgPKBGjp82\", nc=00000001, opaque=\"4804ccfd48df7fecce5b185da0e7175d\", uri=\"sip:pierrefouquet.babblevoice.com;transport=udp\", response=\"595e46251eb788c6df3b717fe7ad6f4a\", algorithm=MD5";

    #[test]
    fn parses_real_polycom_vvx_header() {
        let creds = parse_credentials(POLYCOM).expect("Polycom header parses");
        assert_eq!(
            creds,
            Credentials {
                username: "1013".into(),
                realm: "pierrefouquet.babblevoice.com".into(),
                nonce: "921a55467c54fdd626a9077a1c7f6358".into(),
                uri: "sip:pierrefouquet.babblevoice.com;transport=udp".into(),
                response: "595e46251eb788c6df3b717fe7ad6f4a".into(),
                algorithm: Some("MD5".into()),
                cnonce: Some("X+5uJHgPKBGjp82".into()),
                nc: Some("00000001".into()),
                qop: Some("auth".into()),
                opaque: Some("4804ccfd48df7fecce5b185da0e7175d".into()),
            }
        );
        assert_eq!(creds.nc_value(), Some(1));
    }

    #[test]
    fn parsed_rfc2617_header_verifies() {
        let value = "Digest username=\"Mufasa\",\r\n realm=\"testrealm@host.com\",\r\n nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n uri=\"/dir/index.html\",\r\n qop=auth,\r\n nc=00000001,\r\n cnonce=\"0a4f113b\",\r\n response=\"6629fae49393a05397450978507c4ef1\",\r\n opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let creds = parse_credentials(value).expect("RFC 2617 example parses");
        assert_eq!(creds, rfc2617_creds());
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert!(verify(Algorithm::Md5, &ha1, "GET", &creds));
    }

    #[test]
    fn parse_is_case_insensitive_and_tolerates_whitespace() {
        let value = "  dIgEsT\tUserName = \"alice\" ,REALM=\"r\",  nonce\t=\t\"n\" ,, uri= \"sip:r\",Response =\"abc\" , QOP = \"auth\", CNonce=c, NC=0000000A ,";
        let creds = parse_credentials(value).expect("loose header parses");
        assert_eq!(creds.username, "alice");
        assert_eq!(creds.realm, "r");
        assert_eq!(creds.nonce, "n");
        assert_eq!(creds.uri, "sip:r");
        assert_eq!(creds.response, "abc");
        assert_eq!(creds.qop.as_deref(), Some("auth"));
        assert_eq!(creds.cnonce.as_deref(), Some("c"));
        assert_eq!(creds.nc_value(), Some(10));
    }

    #[test]
    fn parse_unescapes_quoted_strings() {
        let value = r#"Digest username="a\"b\\c\d", realm="with, comma = and spaces", nonce="n", uri="sip:x", response="r", opaque="é\ü""#;
        let creds = parse_credentials(value).expect("escaped header parses");
        assert_eq!(creds.username, "a\"b\\cd");
        assert_eq!(creds.realm, "with, comma = and spaces");
        assert_eq!(creds.opaque.as_deref(), Some("éü"));
    }

    #[test]
    fn parse_ignores_unknown_params_even_if_repeated() {
        let value = "Digest foo=bar, username=\"u\", foo=\"baz\", realm=r, nonce=n, uri=\"sip:x\", response=r, userhash=false, x-custom=\"1\"";
        let creds = parse_credentials(value).expect("unknown params are ignored");
        assert_eq!(creds.username, "u");
    }

    #[test]
    fn parse_accepts_empty_quoted_values() {
        let value = "Digest username=\"\", realm=\"\", nonce=\"\", uri=\"\", response=\"\"";
        let creds = parse_credentials(value).expect("empty strings are values");
        assert_eq!(creds, Credentials::default());
    }

    #[test]
    fn parse_rejects_over_long_values() {
        let long = format!(
            "Digest username=\"{}\", realm=r, nonce=n, uri=u, response=r",
            "x".repeat(MAX_CREDENTIALS_LEN)
        );
        assert_eq!(
            parse_credentials(&long),
            Err(DigestError::TooLong { len: long.len() })
        );
        let frame = "Digest realm=r, nonce=n, uri=u, response=r, username=\"\"";
        let exactly = format!(
            "Digest realm=r, nonce=n, uri=u, response=r, username=\"{}\"",
            "x".repeat(MAX_CREDENTIALS_LEN - frame.len())
        );
        assert_eq!(exactly.len(), MAX_CREDENTIALS_LEN);
        assert!(parse_credentials(&exactly).is_ok());
    }

    #[test]
    fn parse_rejects_other_schemes() {
        for value in [
            "",
            "   ",
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            "Digestusername=\"a\"",
            "DigestX username=\"a\"",
            "Bearer abc",
        ] {
            assert_eq!(
                parse_credentials(value),
                Err(DigestError::NotDigest),
                "{value:?}"
            );
        }
    }

    #[test]
    fn parse_reports_syntax_errors_with_offsets() {
        let cases: [(&str, usize, &str); 5] = [
            ("Digest =x", 7, "a parameter name"),
            ("Digest username", 15, "'=' after a parameter name"),
            ("Digest username x", 16, "'=' after a parameter name"),
            ("Digest username=, realm=r", 16, "a parameter value"),
            (
                "Digest username=\"a\" realm=r",
                20,
                "',' between parameters",
            ),
        ];
        for (value, offset, expected) in cases {
            assert_eq!(
                parse_credentials(value),
                Err(DigestError::Syntax { offset, expected }),
                "{value:?}"
            );
        }
    }

    #[test]
    fn parse_rejects_unterminated_quotes() {
        assert_eq!(
            parse_credentials("Digest username=\"abc"),
            Err(DigestError::UnterminatedQuote { offset: 16 })
        );
        assert_eq!(
            parse_credentials("Digest username=\"abc\\\""),
            Err(DigestError::UnterminatedQuote { offset: 16 })
        );
        assert_eq!(
            parse_credentials("Digest username=\"abc\\"),
            Err(DigestError::UnterminatedQuote { offset: 16 })
        );
    }

    #[test]
    fn parse_reports_each_missing_required_param() {
        let all = [
            ("username", "username=\"u\""),
            ("realm", "realm=\"r\""),
            ("nonce", "nonce=\"n\""),
            ("uri", "uri=\"sip:x\""),
            ("response", "response=\"abc\""),
        ];
        for (missing, _) in all {
            let params: Vec<&str> = all
                .iter()
                .filter(|(name, _)| *name != missing)
                .map(|(_, p)| *p)
                .collect();
            let value = format!("Digest {}", params.join(", "));
            assert_eq!(
                parse_credentials(&value),
                Err(DigestError::MissingParam(missing)),
                "{value}"
            );
        }
        assert_eq!(
            parse_credentials("Digest"),
            Err(DigestError::MissingParam("username"))
        );
    }

    #[test]
    fn parse_rejects_duplicate_known_params_case_insensitively() {
        let value = "Digest username=u, realm=a, nonce=n, uri=u, response=r, REALM=\"b\"";
        assert_eq!(
            parse_credentials(value),
            Err(DigestError::DuplicateParam("realm"))
        );
        let value = "Digest username=u, realm=a, nonce=n, uri=u, response=r, response=r";
        assert_eq!(
            parse_credentials(value),
            Err(DigestError::DuplicateParam("response"))
        );
    }

    #[test]
    fn parse_rejects_malformed_nc() {
        for nc in ["1", "0000001", "000000001", "0000000g", "+0000001", "\"\""] {
            let value = format!(
                "Digest username=u, realm=r, nonce=n, uri=u, response=r, qop=auth, cnonce=c, nc={nc}"
            );
            assert_eq!(
                parse_credentials(&value),
                Err(DigestError::MalformedNc),
                "nc={nc}"
            );
        }
    }

    #[test]
    fn parse_requires_cnonce_and_nc_with_qop() {
        assert_eq!(
            parse_credentials(
                "Digest username=u, realm=r, nonce=n, uri=u, response=r, qop=auth, nc=00000001"
            ),
            Err(DigestError::QopWithout("cnonce"))
        );
        assert_eq!(
            parse_credentials(
                "Digest username=u, realm=r, nonce=n, uri=u, response=r, qop=auth, cnonce=c"
            ),
            Err(DigestError::QopWithout("nc"))
        );
    }

    #[test]
    fn parse_rejects_rfc7616_username_forms() {
        assert_eq!(
            parse_credentials(
                "Digest username*=UTF-8''J%C3%A4s%C3%B8n, realm=r, nonce=n, uri=u, response=r"
            ),
            Err(DigestError::ExtendedUsername)
        );
        assert_eq!(
            parse_credentials(
                "Digest username=\"5a1a\", userhash=TRUE, realm=r, nonce=n, uri=u, response=r"
            ),
            Err(DigestError::UserHash)
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            (
                DigestError::NotDigest,
                "Authorization is not a Digest credential",
            ),
            (
                DigestError::MissingParam("nonce"),
                "Authorization lacks the nonce parameter",
            ),
            (
                DigestError::MalformedNc,
                "Authorization has a malformed nc (want 8 hex digits)",
            ),
            (
                DigestError::DuplicateParam("realm"),
                "Authorization parameter realm appears twice",
            ),
            (
                DigestError::QopWithout("cnonce"),
                "Authorization has qop but lacks the cnonce parameter",
            ),
            (
                DigestError::TooLong { len: 5000 },
                "Authorization is 5000 bytes long, over the 4096-byte limit",
            ),
            (
                DigestError::Syntax {
                    offset: 7,
                    expected: "a parameter name",
                },
                "Authorization is malformed at byte 7: expected a parameter name",
            ),
            (
                DigestError::UnterminatedQuote { offset: 16 },
                "Authorization has an unterminated quoted string starting at byte 16",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
        assert!(DigestError::ExtendedUsername
            .to_string()
            .contains("username*"));
        assert!(DigestError::UserHash.to_string().contains("userhash"));
        let boxed: Box<dyn std::error::Error> = Box::new(DigestError::NotDigest);
        assert!(boxed.source().is_none());
    }

    #[test]
    fn nc_value_reads_hex_and_rejects_junk() {
        let mut creds = Credentials::default();
        assert_eq!(creds.nc_value(), None);
        creds.nc = Some("ffffffff".into());
        assert_eq!(creds.nc_value(), Some(u32::MAX));
        creds.nc = Some("+0000001".into());
        assert_eq!(creds.nc_value(), None);
    }

    #[test]
    fn challenge_formats_all_fields_in_order() {
        let challenge = Challenge {
            realm: "x".into(),
            nonce: "n".into(),
            opaque: Some("o".into()),
            algorithm: Algorithm::Sha256,
            qop_auth: true,
            stale: true,
        };
        assert_eq!(
            challenge.to_header_value(),
            r#"Digest realm="x", nonce="n", opaque="o", algorithm=SHA-256, qop="auth", stale=true"#
        );
    }

    #[test]
    fn challenge_omits_absent_opaque_qop_and_false_stale() {
        let challenge = Challenge {
            realm: "example.com".into(),
            nonce: "abc".into(),
            opaque: None,
            algorithm: Algorithm::Md5,
            qop_auth: false,
            stale: false,
        };
        assert_eq!(
            challenge.to_header_value(),
            r#"Digest realm="example.com", nonce="abc", algorithm=MD5"#
        );
    }

    #[test]
    fn challenge_escapes_quotes_and_backslashes_and_drops_controls() {
        let challenge = Challenge {
            realm: "a\"b\\c".into(),
            nonce: "n\r\nX-Injected: 1".into(),
            opaque: Some("tab\there".into()),
            algorithm: Algorithm::Md5Sess,
            qop_auth: true,
            stale: false,
        };
        let value = challenge.to_header_value();
        assert_eq!(
            value,
            "Digest realm=\"a\\\"b\\\\c\", nonce=\"nX-Injected: 1\", opaque=\"tab\there\", algorithm=MD5-sess, qop=\"auth\""
        );
    }

    #[test]
    fn challenge_round_trips_through_the_credential_parser() {
        // The parser reads the same quoted-string grammar the formatter writes.
        let challenge = Challenge {
            realm: "we\"ird\\realm".into(),
            nonce: "nonce".into(),
            opaque: Some("op,aque".into()),
            algorithm: Algorithm::Sha256,
            qop_auth: true,
            stale: false,
        };
        let header = challenge.to_header_value().replacen(
            "Digest ",
            "Digest username=u, uri=u, response=r, cnonce=c, nc=00000001, ",
            1,
        );
        let creds = parse_credentials(&header).expect("formatted challenge parses");
        assert_eq!(creds.realm, challenge.realm);
        assert_eq!(creds.opaque, challenge.opaque);
        assert_eq!(creds.algorithm.as_deref(), Some("SHA-256"));
    }

    #[test]
    fn client_answers_a_challenge_the_server_side_verifies() {
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let ch = Challenge {
                realm: "example.test".into(),
                nonce: "abc\"def".into(),
                opaque: Some("op".into()),
                algorithm: alg,
                qop_auth: true,
                stale: false,
            };
            let parsed = parse_challenge(&ch.to_header_value()).expect("our own challenge");
            assert_eq!(parsed, ch);
            let value = authorization(
                &parsed,
                "1001",
                "secret",
                "PUBLISH",
                "sip:1001@example.test",
                "c0ffee",
                1,
            );
            let creds = parse_credentials(&value).expect("parses");
            assert_eq!(creds.nc.as_deref(), Some("00000001"));
            assert_eq!(creds.opaque.as_deref(), Some("op"));
            let stored = ha1(alg, "1001", "example.test", "secret");
            assert!(verify(alg, &stored, "PUBLISH", &creds), "{alg}");
            assert!(!verify(alg, &stored, "SUBSCRIBE", &creds));
        }
    }

    #[test]
    fn client_challenge_parsing_is_tolerant_and_refuses_what_it_cannot_answer() {
        let c = parse_challenge(
            "digest  REALM = x ,nonce=\"n\", qop=\"auth-int, auth\", stale=TRUE, foo=bar",
        )
        .unwrap();
        assert_eq!(
            (
                c.realm.as_str(),
                c.nonce.as_str(),
                c.algorithm,
                c.qop_auth,
                c.stale
            ),
            ("x", "n", Algorithm::Md5, true, true)
        );
        let c = parse_challenge("Digest realm=\"x\", nonce=\"n\"").unwrap();
        assert!(!c.qop_auth);
        // RFC 2069 form (no qop): no cnonce/nc in the answer.
        let v = authorization(&c, "u", "p", "SUBSCRIBE", "sip:x", "cn", 1);
        assert!(!v.contains("cnonce") && !v.contains("qop"), "{v}");
        assert!(parse_challenge("Basic realm=\"x\"").is_none());
        assert!(parse_challenge("Digest realm=\"x\"").is_none(), "no nonce");
        assert!(parse_challenge("Digest realm=x, nonce=n, algorithm=SHA-512-256").is_none());
        assert!(parse_challenge("Digest realm=x, nonce=n, qop=\"auth-int\"").is_none());
        assert!(parse_challenge("Digest realm=\"x, nonce=n").is_none());
    }
}
