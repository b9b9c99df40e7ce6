//! Property tests (proptest) of the codec: a generator builds valid SIP requests and
//! responses (random methods, URIs with IPv6 hosts and parameters, display names needing
//! quotes and escapes, compact header names, multi-value Vias/Contacts split over lines or
//! commas, folded lines, extension headers, bodies containing CRLFs). Each must parse,
//! validate, expose what was generated, and survive print → parse unchanged. A mutation test
//! then corrupts fixtures and generated messages and checks the parser never panics and that
//! whatever still parses reprints to an equal message. A failing case shrinks to a simpler
//! one; the seed is fixed unless `PROPTEST_RNG_SEED` names another.

mod common;

use busylamp::sip::{
    frame_stream, parse_message, ContactValue, HasHeaders, HeaderName, Host, Limits, Message,
};
use common::mutate;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The generator's choices, drawn by proptest (as Hypothesis does): each draw takes the next
/// number, 0 once they run out. Shrinking moves the numbers towards 0, which means the first
/// alternative, the shortest string, no optional part: a failure shrinks to a plain message.
struct Choices {
    drawn: Vec<u64>,
    at: usize,
}

/// Enough choices for the largest message the generator builds.
const CHOICES: usize = 1024;

fn choices() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(any::<u64>(), CHOICES)
}

impl Choices {
    fn new(drawn: Vec<u64>) -> Choices {
        Choices { drawn, at: 0 }
    }
    fn next(&mut self) -> u64 {
        let v = self.drawn.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True `percent` times in 100; a choice of 0 says no.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) >= 100 - percent
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
    fn string_from(&mut self, alphabet: &[u8], min: usize, max: usize) -> String {
        let n = min + self.below(max - min + 1);
        (0..n)
            .map(|_| alphabet[self.below(alphabet.len())] as char)
            .collect()
    }
}

/// `cases` cases from a fixed seed (or `PROPTEST_RNG_SEED`), no regression files.
fn config(cases: u32) -> Config {
    let mut c = Config {
        cases,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0x5eed);
    }
    c
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~";
const USER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/";

fn token(choices: &mut Choices, max: usize) -> String {
    choices.string_from(TOKEN, 1, max)
}

/// What the generator put into a message, to check against what the parser reads back.
struct Expect {
    method: Option<String>,
    call_id: String,
    vias: usize,
    contacts: usize,
    from_display: Option<String>,
    body: Vec<u8>,
}

/// One header (or a group of same-named ones) to emit, in a random order.
type Part = Box<dyn FnOnce(&mut Gen, &mut String, &mut Expect)>;

struct Gen {
    choices: Choices,
}

impl Gen {
    fn host(&mut self) -> (String, Host) {
        match self.choices.below(3) {
            0 => {
                let labels = 1 + self.choices.below(3);
                let mut name: Vec<String> = (0..labels)
                    .map(|_| self.choices.string_from(ALNUM, 1, 10))
                    .collect();
                name.push(
                    self.choices
                        .pick(&["com", "net", "example", "test"])
                        .to_string(),
                );
                let n = name.join(".");
                (n.clone(), Host::Name(n))
            }
            1 => {
                let a = Ipv4Addr::from(self.choices.next() as u32);
                (a.to_string(), Host::V4(a))
            }
            _ => {
                let mut segs = [0u16; 8];
                for s in segs.iter_mut() {
                    *s = if self.choices.chance(40) {
                        0
                    } else {
                        self.choices.next() as u16
                    };
                }
                let a = Ipv6Addr::from(segs);
                (format!("[{a}]"), Host::V6(a))
            }
        }
    }

    /// A SIP URI; `rich` allows user-part oddities, parameters and (for name-addr) headers.
    fn uri(&mut self, rich: bool, headers: bool) -> String {
        let mut s = String::from(if self.choices.chance(15) {
            "sips:"
        } else {
            "sip:"
        });
        if self.choices.chance(80) {
            let user = if rich {
                let mut u = self.choices.string_from(USER, 1, 12);
                if self.choices.chance(30) {
                    u.push_str("%4a");
                }
                u
            } else {
                self.choices.string_from(ALNUM, 1, 12)
            };
            s.push_str(&user);
            if rich && self.choices.chance(10) {
                s.push(':');
                s.push_str(&self.choices.string_from(ALNUM, 0, 6));
            }
            s.push('@');
        }
        s.push_str(&self.host().0);
        if self.choices.chance(40) {
            s.push_str(&format!(":{}", self.choices.below(65536)));
        }
        if rich {
            for _ in 0..self.choices.below(4) {
                match self.choices.below(4) {
                    0 => s.push_str(";lr"),
                    1 => s.push_str(self.choices.pick(&[
                        ";transport=udp",
                        ";transport=TCP",
                        ";transport=ws",
                    ])),
                    2 => s.push_str(&format!(";maddr={}", self.host().0)),
                    _ => s.push_str(&format!(
                        ";{}={}",
                        token(&mut self.choices, 8),
                        token(&mut self.choices, 8)
                    )),
                }
            }
            if headers && self.choices.chance(20) {
                s.push_str(&format!(
                    "?subject={}&priority=urgent",
                    self.choices.string_from(ALNUM, 1, 8)
                ));
            }
        }
        s
    }

    /// (wire form, decoded display name)
    fn display(&mut self) -> (String, Option<String>) {
        match self.choices.below(4) {
            0 => (String::new(), None),
            1 => {
                let words: Vec<String> = (0..1 + self.choices.below(3))
                    .map(|_| token(&mut self.choices, 8))
                    .collect();
                let d = words.join(" ");
                (format!("{d} "), Some(d))
            }
            _ => {
                let pieces = [
                    "a", "B", " ", ",", ";", "<", ">", "@", ":", "é", "\"", "\\", "Doe", "x y",
                    "\t",
                ];
                let n = 1 + self.choices.below(8);
                let mut wire = String::from("\"");
                let mut plain = String::new();
                for _ in 0..n {
                    let p = self.choices.pick(&pieces);
                    if p == "\"" || p == "\\" || (p != "\t" && self.choices.chance(5)) {
                        // quoted-pair; any char may be escaped
                        for c in p.chars() {
                            wire.push('\\');
                            wire.push(c);
                        }
                    } else {
                        wire.push_str(p);
                    }
                    plain.push_str(p);
                }
                wire.push('"');
                let space = if self.choices.chance(50) { " " } else { "" };
                (format!("{wire}{space}"), Some(plain))
            }
        }
    }

    /// name-addr or (plain URI) addr-spec, with header params.
    fn address(&mut self, tag: bool) -> (String, Option<String>) {
        let (mut s, display) = if self.choices.chance(75) {
            let (d, plain) = self.display();
            (format!("{d}<{}>", self.uri(true, true)), plain)
        } else {
            (self.uri(false, false), None)
        };
        if tag {
            s.push_str(&format!(";tag={}", token(&mut self.choices, 12)));
        }
        if self.choices.chance(20) {
            s.push_str(&format!(" ; {}", token(&mut self.choices, 6)));
        }
        (s, display)
    }

    fn name(&mut self, long: &'static str, compact: &'static str) -> String {
        let n = if !compact.is_empty() && self.choices.chance(40) {
            compact
        } else {
            long
        };
        let mut n = if self.choices.chance(20) {
            n.to_ascii_uppercase()
        } else {
            n.to_string()
        };
        if self.choices.chance(10) {
            n.push(' ');
        }
        n
    }

    /// A header line (or lines), possibly folded at one of its spaces.
    fn line(&mut self, out: &mut String, name: &str, value: &str) {
        let mut value = value.to_string();
        if self.choices.chance(25) {
            // Fold at a single space between two non-blank characters.
            let b = value.as_bytes();
            let spaces: Vec<usize> = (1..b.len().saturating_sub(1))
                .filter(|&i| b[i] == b' ' && b[i - 1] > b' ' && b[i + 1] > b' ')
                .collect();
            if !spaces.is_empty() {
                let at = spaces[self.choices.below(spaces.len())];
                let fold = self.choices.pick(&["\r\n ", "\r\n\t", "\r\n    "]);
                value.replace_range(at..at + 1, fold);
            }
        }
        let sep = self.choices.pick(&[": ", ":", " :  ", ":\t"]);
        out.push_str(&format!("{name}{sep}{value}\r\n"));
    }

    fn via(&mut self) -> String {
        let slash = self.choices.pick(&["/", " / ", "/"]);
        let transport = self
            .choices
            .pick(&["UDP", "TCP", "TLS", "WS", "udp", "SCTP"]);
        let mut v = format!("SIP{slash}2.0{slash}{transport} {}", self.host().0);
        if self.choices.chance(40) {
            v.push_str(&format!(":{}", 1 + self.choices.below(65535)));
        }
        v.push_str(&format!(
            ";branch=z9hG4bK{}",
            self.choices.string_from(ALNUM, 1, 16)
        ));
        if self.choices.chance(30) {
            v.push_str(";rport");
        }
        if self.choices.chance(20) {
            v.push_str(&format!(
                ";received={}",
                Ipv4Addr::from(self.choices.next() as u32)
            ));
        }
        v
    }

    /// Emits `values` of a list header as separate lines, comma lists, or a mix.
    fn list(
        &mut self,
        out: &mut String,
        long: &'static str,
        compact: &'static str,
        values: &[String],
    ) {
        let mut i = 0;
        while i < values.len() {
            let take = 1 + self.choices.below(values.len() - i);
            let sep = self.choices.pick(&[", ", ",", " , ", ",\r\n "]);
            let joined = values[i..i + take].join(sep);
            let name = self.name(long, compact);
            self.line(out, &name, &joined);
            i += take;
        }
    }

    fn body(&mut self) -> Vec<u8> {
        match self.choices.below(4) {
            0 => Vec::new(),
            1 => b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
                .to_vec(),
            _ => (0..self.choices.below(120))
                .map(|_| match self.choices.below(10) {
                    0 => b'\r',
                    1 => b'\n',
                    _ => self.choices.next() as u8,
                })
                .collect(),
        }
    }

    fn common(&mut self, out: &mut String, method: &str, e: &mut Expect) {
        let mut parts: Vec<Part> = Vec::new();
        let vias: Vec<String> = (0..1 + self.choices.below(4)).map(|_| self.via()).collect();
        e.vias = vias.len();
        parts.push(Box::new(move |g, o, _| g.list(o, "Via", "v", &vias)));
        let m = method.to_string();
        parts.push(Box::new(move |g, o, e| {
            let (from, d) = g.address(true);
            e.from_display = d;
            let n = g.name("From", "f");
            g.line(o, &n, &from);
        }));
        parts.push(Box::new(move |g, o, _| {
            let tagged = g.choices.chance(30);
            let (to, _) = g.address(tagged);
            let n = g.name("To", "t");
            g.line(o, &n, &to);
        }));
        parts.push(Box::new(move |g, o, e| {
            let id = format!("{}@{}", g.choices.string_from(ALNUM, 4, 20), g.host().0);
            e.call_id = id.clone();
            let n = g.name("Call-ID", "i");
            g.line(o, &n, &id);
        }));
        parts.push(Box::new(move |g, o, _| {
            let zeros = if g.choices.chance(10) { "00" } else { "" };
            let v = format!("{zeros}{} {m}", g.choices.below(1 << 31));
            let n = g.name("CSeq", "");
            g.line(o, &n, &v);
        }));
        if self.choices.chance(60) {
            let contacts: Vec<String> = (0..1 + self.choices.below(3))
                .map(|_| {
                    let (d, _) = self.display();
                    let mut c = format!("{d}<{}>", self.uri(true, true));
                    if self.choices.chance(50) {
                        c.push_str(&format!(
                            ";expires={};q=0.{}",
                            self.choices.below(7200),
                            self.choices.below(10)
                        ));
                    }
                    c
                })
                .collect();
            e.contacts = contacts.len();
            parts.push(Box::new(move |g, o, _| {
                g.list(o, "Contact", "m", &contacts)
            }));
        }
        for _ in 0..self.choices.below(4) {
            parts.push(Box::new(|g, o, _| {
                let name = format!("X-{}", token(&mut g.choices, 10));
                let value = g.choices.string_from(b"abc XYZ019;,=\"<>@:/\\.-_", 1, 30);
                let value = value.trim().to_string();
                let value = if value.is_empty() {
                    "v".to_string()
                } else {
                    value
                };
                g.line(o, &name, &value);
            }));
        }
        if self.choices.chance(30) {
            parts.push(Box::new(|g, o, _| {
                let n = g.name("Subject", "s");
                let words: Vec<String> = (0..self_words(g))
                    .map(|_| token(&mut g.choices, 6))
                    .collect();
                g.line(o, &n, &words.join(" "));
            }));
        }
        if self.choices.chance(30) {
            parts.push(Box::new(|g, o, _| {
                let n = g.name("Supported", "k");
                g.line(o, &n, "replaces, timer, path");
            }));
        }
        // Header order is free (RFC 3261 §7.3.1) except among same-named headers, which the
        // list closures keep together.
        while !parts.is_empty() {
            let i = self.choices.below(parts.len());
            let f = parts.swap_remove(i);
            f(self, out, e);
        }
    }

    fn request(&mut self) -> (Vec<u8>, Expect) {
        let method = if self.choices.chance(85) {
            self.choices
                .pick(&[
                    "INVITE",
                    "REGISTER",
                    "OPTIONS",
                    "BYE",
                    "ACK",
                    "SUBSCRIBE",
                    "NOTIFY",
                    "MESSAGE",
                    "INFO",
                    "PUBLISH",
                ])
                .to_string()
        } else {
            token(&mut self.choices, 12)
        };
        let mut e = Expect {
            method: Some(method.clone()),
            call_id: String::new(),
            vias: 0,
            contacts: 0,
            from_display: None,
            body: self.body(),
        };
        let mut s = format!("{method} {} SIP/2.0\r\n", self.uri(true, false));
        self.common(&mut s, &method, &mut e);
        let mf = format!(
            "{}{}",
            if self.choices.chance(10) { "0" } else { "" },
            self.choices.below(256)
        );
        let n = self.name("Max-Forwards", "");
        self.line(&mut s, &n, &mf);
        if self.choices.chance(20) {
            let n = self.name("Expires", "");
            let v = self.choices.below(100_000).to_string();
            self.line(&mut s, &n, &v);
        }
        (self.finish(s, &e.body), e)
    }

    fn response(&mut self) -> (Vec<u8>, Expect) {
        let status = 100 + self.choices.below(600);
        let reason = self
            .choices
            .pick(&["OK", "", "Not Found", "Très bien", "a  b\tc", "Ringing"]);
        let method = self
            .choices
            .pick(&["INVITE", "REGISTER", "OPTIONS"])
            .to_string();
        let mut e = Expect {
            method: None,
            call_id: String::new(),
            vias: 0,
            contacts: 0,
            from_display: None,
            body: self.body(),
        };
        let mut s = format!("SIP/2.0 {status} {reason}\r\n");
        self.common(&mut s, &method, &mut e);
        (self.finish(s, &e.body), e)
    }

    fn finish(&mut self, mut s: String, body: &[u8]) -> Vec<u8> {
        let zeros = if self.choices.chance(10) { "0" } else { "" };
        let n = self.name("Content-Length", "l");
        self.line(&mut s, &n, &format!("{zeros}{}", body.len()));
        s.push_str("\r\n");
        let mut out = s.into_bytes();
        out.extend_from_slice(body);
        out
    }
}

fn self_words(g: &mut Gen) -> usize {
    1 + g.choices.below(5)
}

/// What print → parse must give back: the same message, plus the Content-Length the printer
/// adds when there was none.
fn expected_reprint(m: &Message) -> Message {
    let mut m = m.clone();
    let (headers, len) = match &mut m {
        Message::Request(r) => (&mut r.headers, r.body.len()),
        Message::Response(r) => (&mut r.headers, r.body.len()),
    };
    if !headers.has(HeaderName::ContentLength) {
        headers.push(HeaderName::ContentLength, len.to_string());
    }
    m
}

fn check_reprint(m: &Message, limits: &Limits, what: &dyn Fn() -> String) {
    let _ = limits; // printing may grow a message (": ", Content-Length), so reparse unbounded
    let roomy = Limits {
        max_message: 1 << 24,
        max_headers: 1 << 16,
        max_line: 1 << 24,
    };
    let printed = m.to_bytes();
    match parse_message(&printed, &roomy) {
        Ok(again) => assert_eq!(again, expected_reprint(m), "{}", what()),
        Err(f) => panic!(
            "{}: printed form does not parse: {f:?}\n{}",
            what(),
            String::from_utf8_lossy(&printed)
        ),
    }
}

fn check_generated(bytes: &[u8], e: &Expect) {
    let limits = Limits::default();
    let what = || format!("generated:\n{}", String::from_utf8_lossy(bytes));
    let m = parse_message(bytes, &limits).unwrap_or_else(|f| panic!("{f:?} {}", what()));
    match &m {
        Message::Request(r) => {
            if let Err(err) = r.validate() {
                panic!("validate: {err} {}", what());
            }
            assert_eq!(Some(&r.method), e.method.as_ref(), "{}", what());
            assert_eq!(r.call_id().unwrap(), e.call_id, "{}", what());
            assert_eq!(r.vias().unwrap().len(), e.vias, "{}", what());
            assert_eq!(r.contacts().unwrap().len(), e.contacts, "{}", what());
            assert_eq!(r.from_hdr().unwrap().display, e.from_display, "{}", what());
            assert_eq!(r.body, e.body, "{}", what());
            assert_eq!(r.cseq().unwrap().method, r.method);
        }
        Message::Response(r) => {
            assert!(e.method.is_none());
            assert_eq!(r.call_id().unwrap(), e.call_id, "{}", what());
            assert_eq!(r.vias().unwrap().len(), e.vias, "{}", what());
            assert_eq!(r.from_hdr().unwrap().display, e.from_display, "{}", what());
            assert!(r
                .contacts()
                .unwrap()
                .iter()
                .all(|c| matches!(c, ContactValue::Addr(_))));
            assert_eq!(r.body, e.body, "{}", what());
            r.cseq().unwrap();
        }
    }
    check_reprint(&m, &limits, &what);
    // A stream carrying the message frames exactly it.
    assert_eq!(
        frame_stream(bytes, &limits),
        Ok(busylamp::sip::Frame::Message(bytes.len())),
        "{}",
        what()
    );
}

proptest! {
    #![proptest_config(config(6_000))]

    #[test]
    fn generated_requests_parse_validate_and_roundtrip(drawn in choices()) {
        let (bytes, e) = Gen { choices: Choices::new(drawn) }.request();
        check_generated(&bytes, &e);
    }

    #[test]
    fn generated_responses_parse_and_roundtrip(drawn in choices()) {
        let (bytes, e) = Gen { choices: Choices::new(drawn) }.response();
        check_generated(&bytes, &e);
    }
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = format!("{}/fixtures/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| std::fs::read(p).expect("fixture"))
        .collect()
}

#[test]
fn mutated_messages_never_panic_and_reprint_equal() {
    let mut corpus = fixtures();
    let mut runner = mutate::fixed_runner(1_000_000);
    for n in 0..300 {
        let mut g = Gen {
            choices: Choices::new(mutate::draw(&mut runner, &choices())),
        };
        corpus.push(if n % 2 == 0 {
            g.request().0
        } else {
            g.response().0
        });
    }
    let limits = Limits::default();
    let tight = Limits {
        max_message: 700,
        max_headers: 20,
        max_line: 200,
    };
    let parsed = std::cell::Cell::new(0usize);
    let cases = 24_000;
    // A mutant: a message of the corpus, up to 4 edits, and the tight limits one time in 5.
    let mutant = (any::<Index>(), mutate::edits(4), prop::bool::weighted(0.2));
    TestRunner::new(config(cases))
        .run(&mutant, |(base, edits, is_tight)| {
            let bytes = mutate::apply(base.get::<Vec<u8>>(&corpus), &edits);
            let l = if is_tight { &tight } else { &limits };
            let _ = frame_stream(&bytes, l);
            match parse_message(&bytes, l) {
                Ok(m) => {
                    if let Message::Request(r) = &m {
                        let _ = r.validate();
                        let _ = r.max_forwards();
                        let _ = r.response(400, "reason", Some("tag"));
                    }
                    let _ = m.headers();
                    match &m {
                        Message::Request(r) => touch(r),
                        Message::Response(r) => touch(r),
                    }
                    check_reprint(&m, l, &|| {
                        format!("mutant:\n{}", String::from_utf8_lossy(&bytes))
                    });
                    parsed.set(parsed.get() + 1);
                }
                Err(f) => {
                    let _ = (f.error.status(), f.error.to_string());
                }
            }
            Ok::<(), TestCaseError>(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The corpus is mostly valid, so a fair share of mutants must still parse, which keeps
    // the reprint check meaningful.
    let parsed = parsed.get();
    assert!(
        parsed > cases as usize / 10,
        "only {parsed} of {cases} mutants parsed"
    );
}

fn touch(h: &impl HasHeaders) {
    let _ = h.call_id();
    let _ = h.cseq();
    let _ = h.from_hdr().map(|n| n.to_string());
    let _ = h.to_hdr().map(|n| n.to_string());
    let _ = h.top_via();
    let _ = h
        .vias()
        .map(|v| v.iter().map(|v| v.to_string()).collect::<Vec<_>>());
    let _ = h.contacts();
    let _ = h.expires();
}
