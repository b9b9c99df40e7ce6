//! RFC 4475 torture tests against the codec, one test per message, named by RFC section.
//!
//! Valid messages (§3.1.1) must parse, pass `Request::validate()` and expose the right fields.
//! Invalid ones (§3.1.2) must end in the status a proxy/registrar answers with: a
//! `ParseFailure` (whose `error.status()` is 400/505/513) or a `validate()` error (400, its
//! Display being the reason phrase). The §3.3 application-layer cases parse; for those the
//! router answers (416, 420, 415, 483, ...) and the tests check the codec hands it what it
//! needs. Where the RFC allows leniency or rejection, the choice is commented.

use busylamp::sip::{
    parse_message, ContactValue, HasHeaders, HeaderName, Host, Limits, Message, ParseError,
    Request, Response, Uri,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/fixtures/rfc4475/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse(name: &str) -> Result<Message, busylamp::sip::ParseFailure> {
    parse_message(&fixture(name), &Limits::default())
}

fn request(name: &str) -> Request {
    match parse(name) {
        Ok(Message::Request(r)) => r,
        other => panic!("{name}: expected a request, got {other:?}"),
    }
}

fn response(name: &str) -> Response {
    match parse(name) {
        Ok(Message::Response(r)) => r,
        other => panic!("{name}: expected a response, got {other:?}"),
    }
}

/// A valid request: parses and validates.
fn valid(name: &str) -> Request {
    let r = request(name);
    if let Err(e) = r.validate() {
        panic!("{name}: validate() refused a valid request: {e}");
    }
    r
}

/// What the server answers a request with: the status and the reason phrase, or 200 when the
/// codec has nothing against it. Panics when there is nothing to answer (no salvage).
fn answer(name: &str) -> (u16, String) {
    match parse(name) {
        Ok(Message::Request(r)) => match r.validate() {
            Ok(_) => (200, String::new()),
            Err(e) => (400, e.to_string()),
        },
        Ok(Message::Response(_)) => panic!("{name}: is a response"),
        Err(f) => {
            assert!(
                f.salvage.is_some(),
                "{name}: request failure without salvage: {f:?}"
            );
            (f.error.status(), f.error.to_string())
        }
    }
}

fn sip_host(u: &Uri) -> String {
    match &u.as_sip().expect("sip uri").host {
        Host::Name(n) => n.clone(),
        h => h.to_string(),
    }
}

/// Parsed messages print to bytes that parse back to the same message.
fn assert_reprints(name: &str) {
    let m = parse(name).unwrap_or_else(|f| panic!("{name}: {f:?}"));
    let again = parse_message(&m.to_bytes(), &Limits::default())
        .unwrap_or_else(|f| panic!("{name}: printed form does not parse: {f:?}"));
    let mut expected = m.clone();
    let headers = match &mut expected {
        Message::Request(r) => &mut r.headers,
        Message::Response(r) => &mut r.headers,
    };
    if !headers.has(HeaderName::ContentLength) {
        // The printer always adds Content-Length (stream transports need it).
        headers.push(HeaderName::ContentLength, m.body_len().to_string());
    }
    assert_eq!(again, expected, "{name}");
}

trait BodyLen {
    fn body_len(&self) -> usize;
}
impl BodyLen for Message {
    fn body_len(&self) -> usize {
        match self {
            Message::Request(r) => r.body.len(),
            Message::Response(r) => r.body.len(),
        }
    }
}

// ------------------------------------------------------------------ §3.1.1 valid messages

#[test]
fn s3_1_1_1_wsinv_parses() {
    let r = valid("wsinv");
    assert_eq!(r.method, "INVITE");
    let ruri = r.uri.as_sip().unwrap();
    assert_eq!(ruri.user.as_deref(), Some("vivekg"));
    assert_eq!(sip_host(&r.uri), "chair-dnrc.example.com");
    assert_eq!(ruri.params.get("unknownparam"), Some(None));
    let to = r.to_hdr().unwrap();
    assert_eq!(to.display, None);
    assert_eq!(to.tag().as_deref(), Some("1918181833n"));
    let from = r.from_hdr().unwrap();
    assert_eq!(from.display.as_deref(), Some(r#"J Rosenberg \""#));
    assert_eq!(from.tag().as_deref(), Some("98asjd8"));
    assert_eq!(r.max_forwards().unwrap(), Some(68));
    assert_eq!(r.call_id().unwrap(), "wsinv.ndaksdj@192.0.2.1");
    let cseq = r.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method.as_str()), (9, "INVITE"));
    let vias = r.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[0].transport.as_str(), vias[0].sent_by()),
        ("UDP", "192.0.2.2".into())
    );
    assert_eq!(vias[0].branch().as_deref(), Some("390skdjuw"));
    assert_eq!(
        (vias[1].transport.as_str(), vias[1].sent_by()),
        ("TCP", "spindle.example.com".into())
    );
    assert_eq!(vias[1].branch().as_deref(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].sent_by(), "192.168.255.111");
    assert_eq!(vias[2].branch().as_deref(), Some("z9hG4bK30239"));
    assert_eq!(r.headers.get(HeaderName::Subject), Some(""));
    assert_eq!(
        r.headers.get_named("NewFangledHeader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(
        r.headers.get_named("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;")
    );
    let contacts = r.contacts().unwrap();
    assert_eq!(contacts.len(), 1);
    let ContactValue::Addr(c) = &contacts[0] else {
        panic!("star")
    };
    assert_eq!(c.display.as_deref(), Some(r#"Quoted string """#));
    assert_eq!(c.params.value("newparam").as_deref(), Some("newvalue"));
    assert_eq!(c.params.get("secondparam"), Some(None));
    assert_eq!(c.params.value("q").as_deref(), Some("0.33"));
    assert_eq!(r.headers.list(HeaderName::Route).len(), 1);
    assert_eq!(r.body.len(), 150);
    assert_reprints("wsinv");
}

#[test]
fn s3_1_1_2_intmeth_parses() {
    let r = valid("intmeth");
    assert_eq!(r.method, "!interesting-Method0123456789_*+`.%indeed'~");
    let ruri = r.uri.as_sip().unwrap();
    assert_eq!(
        ruri.user.as_deref(),
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        ruri.password.as_deref(),
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(sip_host(&r.uri), "example.com");
    assert!(ruri.params.0.is_empty() && ruri.headers.is_none());
    // The To display name holds quoted-pair escaped BEL, NUL and DEL.
    assert_eq!(
        r.to_hdr().unwrap().display.as_deref(),
        Some("BEL:\x07 NUL:\x00 DEL:\x7f")
    );
    let from = r.from_hdr().unwrap();
    assert_eq!(
        from.display.as_deref(),
        Some("token1~` token2'+_ token3*%!.-")
    );
    assert_eq!(from.tag().as_deref(), Some("_token~1'+`*%!-."));
    assert_eq!(
        from.params.value("fromParam''~+*_!.-%").as_deref(),
        Some("работающий")
    );
    assert_eq!(
        r.call_id().unwrap(),
        r#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#
    );
    assert_eq!(r.cseq().unwrap().seq, 139122385);
    assert_eq!(r.max_forwards().unwrap(), Some(255));
    assert_eq!(
        r.top_via().unwrap().branch().as_deref(),
        Some("z9hG4bK-.!%66*_+`'~")
    );
    assert_eq!(
        r.headers.get_named("extensionHeader-!.%*+_`'~"),
        Some("\u{feff}大停電")
    );
    assert!(r.body.is_empty());
    assert_reprints("intmeth");
}

#[test]
fn s3_1_1_3_esc01_parses() {
    let r = valid("esc01");
    assert_eq!(
        r.uri.as_sip().unwrap().user.as_deref(),
        Some("sips%3Auser%40example.com")
    );
    assert_eq!(sip_host(&r.uri), "example.net");
    // %-escapes compare unescaped in URIs...
    assert_eq!(
        r.to_hdr().unwrap().uri.as_sip().unwrap().aor(),
        "sip:user@example.com"
    );
    assert_eq!(
        r.from_hdr().unwrap().uri.as_sip().unwrap().aor(),
        "sip:I have spaces@example.net"
    );
    let ContactValue::Addr(c) = &r.contacts().unwrap()[0] else {
        panic!()
    };
    let cu = c.uri.as_sip().unwrap();
    assert_eq!(cu.aor(), "sip:caller@host5.example.net");
    assert_eq!(cu.params.0.len(), 2);
    // ...but never recursively: n%61me=v%61lue%25%34%31 means name=value%41, not valueA.
    assert!(Uri::parse("sip:caller@host5.example.net;name=value%2541")
        .unwrap()
        .equivalent(&c.uri));
    assert!(!Uri::parse("sip:caller@host5.example.net;name=valueA;lr")
        .unwrap()
        .equivalent(&c.uri));
    assert_eq!(r.call_id().unwrap(), "esc01.239409asdfakjkn23onasd0-3234");
    assert_eq!(
        r.headers.get(HeaderName::ContentType),
        Some("application/sdp")
    );
    assert_eq!(r.body.len(), 150);
    assert_reprints("esc01");
}

#[test]
fn s3_1_1_4_escnull_parses() {
    let r = valid("escnull");
    assert_eq!(r.method, "REGISTER");
    // The AOR keeps the escaped NUL and what follows it: not shortened to "null-".
    let aor = r.to_hdr().unwrap().uri.as_sip().unwrap().aor();
    assert_eq!(aor, "sip:null-\u{0}-null@example.com");
    let contacts = r.contacts().unwrap();
    assert_eq!(contacts.len(), 2, "two distinct contacts");
    let users: Vec<String> = contacts
        .iter()
        .map(|c| match c {
            ContactValue::Addr(a) => a.uri.as_sip().unwrap().aor(),
            ContactValue::Star => panic!(),
        })
        .collect();
    assert_ne!(users[0], users[1]);
    assert!(r.body.is_empty());
    assert_reprints("escnull");
}

#[test]
fn s3_1_1_5_esc02_parses() {
    let r = valid("esc02");
    // % is not an escape in a method: this is an unknown method, not REGISTER.
    assert_eq!(r.method, "RE%47IST%45R");
    assert_ne!(r.method, "REGISTER");
    assert_eq!(r.to_hdr().unwrap().display.as_deref(), Some("%Z%45"));
    assert_eq!(r.from_hdr().unwrap().display.as_deref(), Some("%Z%45"));
    // Two Contact values, not three: C%6Fntact is an extension header.
    assert_eq!(r.contacts().unwrap().len(), 2);
    assert_eq!(
        r.headers.get_named("C%6Fntact"),
        Some("<sip:alias2@host2.example.com>")
    );
    assert_eq!(
        r.top_via().unwrap().branch().as_deref(),
        Some("z9hG4bK209%fzsnel234")
    );
    assert_reprints("esc02");
}

#[test]
fn s3_1_1_6_lwsdisp_parses() {
    // Not valid per the RFC 3261 grammar, but a known spec bug: accepted.
    let r = valid("lwsdisp");
    let from = r.from_hdr().unwrap();
    assert_eq!(from.display.as_deref(), Some("caller"));
    assert_eq!(from.tag().as_deref(), Some("323"));
    assert_reprints("lwsdisp");
}

#[test]
fn s3_1_1_7_longreq_parses() {
    let r = valid("longreq");
    let to = r.to_hdr().unwrap();
    assert_eq!(
        to.display.as_deref(),
        Some(format!("I have a user name of {} proportion", "extreme".repeat(10)).as_str())
    );
    let tu = to.uri.as_sip().unwrap();
    assert_eq!(tu.port, Some(6000));
    assert_eq!(tu.params.0.len(), 3);
    let from = r.from_hdr().unwrap();
    assert_eq!(from.tag().unwrap(), format!("12{}424", "982".repeat(50)));
    assert_eq!(from.params.0.len(), 3);
    assert_eq!(
        r.call_id().unwrap(),
        format!("longreq.one{}longcallid", "really".repeat(20))
    );
    let vias = r.vias().unwrap();
    assert_eq!(vias.len(), 34);
    for (i, v) in vias.iter().take(33).enumerate() {
        assert_eq!(v.sent_by(), format!("sip{}.example.com", 33 - i));
    }
    assert_eq!(
        vias[33].branch().unwrap(),
        format!("very{}branchvalue", "long".repeat(50))
    );
    assert_eq!(
        vias[33].params.value("received").as_deref(),
        Some("192.0.2.5")
    );
    let ext = format!("Unknown-{}-Name", "Long".repeat(20));
    assert!(r
        .headers
        .get_named(&ext)
        .unwrap()
        .starts_with("unknown-long"));
    assert_eq!(r.body.len(), 150);
    assert_reprints("longreq");
}

#[test]
fn s3_1_1_8_dblreq_parses_and_ignores_trailing_octets() {
    let r = valid("dblreq");
    assert_eq!(r.method, "REGISTER");
    assert_eq!(
        r.call_id().unwrap(),
        "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    );
    // RFC 3261 §18.3: the INVITE-looking octets after Content-Length: 0 are noise.
    assert!(r.body.is_empty());
    let printed = String::from_utf8(r.to_bytes()).unwrap();
    assert!(!printed.contains("INVITE"));
}

#[test]
fn s3_1_1_9_semiuri_parses() {
    let r = valid("semiuri");
    let u = r.uri.as_sip().unwrap();
    assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
    assert_eq!(sip_host(&r.uri), "example.com");
    assert!(u.params.0.is_empty());
    assert_eq!(r.headers.list(HeaderName::Accept).len(), 6);
    assert_reprints("semiuri");
}

#[test]
fn s3_1_1_10_transports_parses() {
    let r = valid("transports");
    let t: Vec<String> = r.vias().unwrap().into_iter().map(|v| v.transport).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    assert_eq!(r.call_id().unwrap(), "transports.kijh4akdnaqjkwendsasfdj");
    assert_reprints("transports");
}

#[test]
fn s3_1_1_11_mpart01_parses() {
    let r = valid("mpart01");
    assert_eq!(r.method, "MESSAGE");
    assert_eq!(r.body.len(), 553);
    assert!(r.body.contains(&0), "binary part with NULs is kept");
    assert!(r.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
    let v = r.top_via().unwrap();
    assert_eq!((v.port, v.rport()), (Some(5070), Some(None)));
    assert_eq!(
        r.headers.get(HeaderName::ContentType),
        Some("multipart/mixed;boundary=7a9cbec02ceef655")
    );
    assert_reprints("mpart01");
}

#[test]
fn s3_1_1_12_unreason_parses() {
    let r = response("unreason");
    assert_eq!(r.status, 200);
    assert_eq!(r.reason, "= 2**3 * 5**2 но сто девяносто девять - простое");
    assert_eq!(r.cseq().unwrap().method, "INVITE");
    assert_eq!(r.body.len(), 154);
    assert_reprints("unreason");
}

#[test]
fn s3_1_1_13_noreason_parses() {
    let r = response("noreason");
    assert_eq!((r.status, r.reason.as_str()), (100, ""));
    assert_eq!(r.call_id().unwrap(), "noreason.asndj203insdf99223ndf");
    assert_reprints("noreason");
}

// ---------------------------------------------------------------- §3.1.2 invalid messages

#[test]
fn s3_1_2_1_badinv01_is_400() {
    let (status, reason) = answer("badinv01");
    assert_eq!(status, 400);
    assert!(reason.starts_with("Bad Via header"), "{reason}");
}

#[test]
fn s3_1_2_2_clerr_is_400() {
    // Over UDP: 400. (On a stream, frame_stream just waits for more octets.)
    let f = parse("clerr").unwrap_err();
    assert_eq!(
        f.error,
        ParseError::BodyTruncated {
            declared: 9999,
            got: 154
        }
    );
    assert_eq!(answer("clerr").0, 400);
    assert_eq!(
        busylamp::sip::frame_stream(&fixture("clerr"), &Limits::default()),
        Ok(busylamp::sip::Frame::Incomplete)
    );
}

#[test]
fn s3_1_2_3_ncl_is_400() {
    assert_eq!(
        parse("ncl").unwrap_err().error,
        ParseError::BadContentLength
    );
    assert_eq!(answer("ncl").0, 400);
    // On a stream the framing error is fatal: the connection is closed.
    assert!(busylamp::sip::frame_stream(&fixture("ncl"), &Limits::default()).is_err());
}

#[test]
fn s3_1_2_4_scalar02_is_400() {
    let (status, reason) = answer("scalar02");
    assert_eq!(status, 400);
    assert!(reason.starts_with("Bad CSeq header"), "{reason}");
    // The other scalars are out of range too; each would be caught on its own.
    let r = request("scalar02");
    assert!(r.max_forwards().is_err());
    assert_eq!(
        r.expires().unwrap(),
        Some(u32::MAX),
        "Expires saturates (RFC 3261 §20.19)"
    );
}

#[test]
fn s3_1_2_5_scalarlg_response_is_dropped() {
    // A response: never answered. Its CSeq cannot be read, so it matches no transaction and
    // is discarded.
    let r = response("scalarlg");
    assert!(r.cseq().is_err());
}

#[test]
fn s3_1_2_6_quotbal_is_400() {
    // Inferring the missing quote is possible but guesswork; refused.
    let (status, reason) = answer("quotbal");
    assert_eq!(status, 400);
    assert_eq!(reason, "Bad To header: unterminated quoted display name");
}

#[test]
fn s3_1_2_7_ltgtruri_is_400() {
    let f = parse("ltgtruri").unwrap_err();
    assert!(matches!(f.error, ParseError::BadUri(_)), "{:?}", f.error);
    assert_eq!(answer("ltgtruri").0, 400);
}

#[test]
fn s3_1_2_8_lwsruri_is_400() {
    let f = parse("lwsruri").unwrap_err();
    assert!(matches!(f.error, ParseError::BadStartLine(_)));
    assert_eq!(answer("lwsruri").0, 400);
}

#[test]
fn s3_1_2_9_lwsstart_is_400() {
    // Rejection is allowed; we are strict about the start line so that what we forward is
    // exactly what we parsed.
    assert!(matches!(
        parse("lwsstart").unwrap_err().error,
        ParseError::BadStartLine(_)
    ));
    assert_eq!(answer("lwsstart").0, 400);
}

#[test]
fn s3_1_2_10_trws_is_400() {
    assert!(matches!(
        parse("trws").unwrap_err().error,
        ParseError::BadStartLine(_)
    ));
    assert_eq!(answer("trws").0, 400);
}

#[test]
fn s3_1_2_11_escruri_is_400() {
    // Headers in a Request-URI are forbidden (RFC 3261 §19.1.1); refusing beats stripping.
    let (status, reason) = answer("escruri");
    assert_eq!(status, 400);
    assert_eq!(
        reason,
        "Bad Request-URI: SIP Request-URI must not contain headers ('?')"
    );
}

#[test]
fn s3_1_2_12_baddate_is_accepted() {
    // The RFC allows rejection but advises against it unless Date matters: it does not to a
    // proxy/registrar, which forwards Date verbatim. Leniency chosen.
    let r = valid("baddate");
    assert_eq!(
        r.headers.get(HeaderName::Date),
        Some("Fri, 01 Jan 2010 16:00:00 EST")
    );
}

#[test]
fn s3_1_2_13_regbadct_is_400() {
    // Inferring the angle brackets is only unambiguous in this example; refused.
    let (status, reason) = answer("regbadct");
    assert_eq!(status, 400);
    assert_eq!(
        reason,
        "Bad Contact header: URI with '?', ',' or ';' must be enclosed in <>"
    );
}

#[test]
fn s3_1_2_14_badaspec_is_400() {
    // Ignoring the spaces inside <> is allowed; we refuse, since To/From identify the dialog
    // and a proxy must not forward a malformed one.
    let (status, reason) = answer("badaspec");
    assert_eq!(status, 400);
    assert!(reason.starts_with("Bad To header"), "{reason}");
}

#[test]
fn s3_1_2_15_baddn_is_400() {
    let (status, reason) = answer("baddn");
    assert_eq!(status, 400);
    assert_eq!(
        reason,
        "Bad From header: unquoted display name contains characters that need quotes"
    );
}

#[test]
fn s3_1_2_16_badvers_is_505() {
    let f = parse("badvers").unwrap_err();
    assert_eq!(f.error, ParseError::BadVersion("SIP/7.0".into()));
    assert_eq!(answer("badvers").0, 505);
}

#[test]
fn s3_1_2_17_mismatch01_is_400() {
    let (status, reason) = answer("mismatch01");
    assert_eq!(status, 400);
    assert_eq!(
        reason,
        "CSeq method INVITE does not match request method OPTIONS"
    );
}

#[test]
fn s3_1_2_18_mismatch02_is_400() {
    // The RFC prefers 501 for an unknown method, 400 being acceptable. The codec reports the
    // mismatch; the router, which knows which methods it implements, may turn it into 501.
    let (status, reason) = answer("mismatch02");
    assert_eq!(status, 400);
    assert_eq!(
        reason,
        "CSeq method INVITE does not match request method NEWMETHOD"
    );
}

#[test]
fn s3_1_2_19_bigcode_response_is_dropped() {
    let f = parse("bigcode").unwrap_err();
    assert!(matches!(f.error, ParseError::BadStatus(_)));
    assert!(f.salvage.is_none(), "responses are dropped, never answered");
}

#[test]
fn s3_1_2_20_badbranch_is_accepted() {
    // The parser must not break. A bare magic cookie is kept as the branch; the transaction
    // layer can treat it as an RFC 2543-style (non-unique) branch.
    let r = valid("badbranch");
    assert_eq!(r.top_via().unwrap().branch().as_deref(), Some("z9hG4bK"));
}

// ------------------------------------------------------- §3.3 application-layer semantics

#[test]
fn s3_3_1_insuf_is_400() {
    let (status, reason) = answer("insuf");
    assert_eq!((status, reason.as_str()), (400, "Missing From header"));
}

#[test]
fn s3_3_2_unkscm_gives_router_other_uri_for_416() {
    let r = valid("unkscm");
    assert_eq!(
        r.uri,
        Uri::Other {
            scheme: "nobodyKnowsThisScheme".into(),
            rest: "totallyopaquecontent".into()
        }
    );
}

#[test]
fn s3_3_3_novelsc_gives_router_other_uri_for_416() {
    let r = valid("novelsc");
    assert_eq!(r.uri.scheme(), "soap.beep");
    assert!(r.uri.as_sip().is_none());
}

#[test]
fn s3_3_4_unksm_gives_registrar_other_uris_for_416() {
    for name in ["unksm", "unksm2"] {
        let r = valid(name);
        assert_eq!(r.to_hdr().unwrap().uri.scheme(), "isbn", "{name}");
        assert_eq!(r.from_hdr().unwrap().uri.scheme(), "http", "{name}");
        let ContactValue::Addr(c) = &r.contacts().unwrap()[0] else {
            panic!()
        };
        assert_eq!(
            c.uri,
            Uri::Other {
                scheme: "name".into(),
                rest: "John_Smith".into()
            }
        );
    }
}

#[test]
fn s3_3_5_bext01_lists_require_for_420() {
    let r = valid("bext01");
    assert_eq!(
        r.headers.list(HeaderName::Require),
        ["nothingSupportsThis", "nothingSupportsThisEither"]
    );
    assert_eq!(
        r.headers.list(HeaderName::ProxyRequire),
        ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    );
}

#[test]
fn s3_3_6_invut_gives_content_type_for_415() {
    let r = valid("invut");
    assert_eq!(
        r.headers.get(HeaderName::ContentType),
        Some("application/unknownformat")
    );
    assert_eq!(r.body.len(), 40);
}

#[test]
fn s3_3_7_regaut01_keeps_unknown_authorization_raw() {
    let r = valid("regaut01");
    assert_eq!(
        r.headers.get(HeaderName::Authorization),
        Some("NoOneKnowsThisScheme opaque-data=here")
    );
}

#[test]
fn s3_3_8_multi01_is_400() {
    let (status, reason) = answer("multi01");
    assert_eq!((status, reason.as_str()), (400, "Duplicate From header"));
}

#[test]
fn s3_3_9_mcl01_is_400() {
    let f = parse("mcl01").unwrap_err();
    assert_eq!(f.error, ParseError::ConflictingContentLength);
    assert_eq!(answer("mcl01").0, 400);
}

#[test]
fn s3_3_10_bcast_exposes_broadcast_via() {
    // A proxy forwarding this response would send it to 255.255.255.255: the router checks
    // the next Via's host and drops it.
    let r = response("bcast");
    let vias = r.vias().unwrap();
    assert_eq!(vias[1].host, Host::V4(std::net::Ipv4Addr::BROADCAST));
    assert_reprints("bcast");
}

#[test]
fn s3_3_11_zeromf_gives_router_zero_for_483() {
    let r = valid("zeromf");
    assert_eq!(r.max_forwards().unwrap(), Some(0));
}

#[test]
fn s3_3_12_cparam01_param_belongs_to_contact() {
    let r = valid("cparam01");
    let ContactValue::Addr(c) = &r.contacts().unwrap()[0] else {
        panic!()
    };
    assert!(c.params.has("unknownparam"));
    assert!(c.uri.as_sip().unwrap().params.0.is_empty());
}

#[test]
fn s3_3_13_cparam02_param_belongs_to_uri() {
    let r = valid("cparam02");
    let ContactValue::Addr(c) = &r.contacts().unwrap()[0] else {
        panic!()
    };
    assert!(c.params.0.is_empty());
    assert!(c.uri.as_sip().unwrap().params.has("unknownparam"));
}

#[test]
fn s3_3_14_regescrt_keeps_escaped_uri_header() {
    let r = valid("regescrt");
    let ContactValue::Addr(c) = &r.contacts().unwrap()[0] else {
        panic!()
    };
    assert_eq!(
        c.uri.as_sip().unwrap().headers.as_deref(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
}

#[test]
fn s3_3_15_sdp01_exposes_accept() {
    let r = valid("sdp01");
    assert_eq!(r.headers.list(HeaderName::Accept), ["text/nobodyKnowsThis"]);
    assert_eq!(r.body.len(), 150);
}

#[test]
fn s3_4_1_inv2543_is_accepted() {
    // RFC 2543 syntax: no Max-Forwards, no branch, no tags, no Content-Length (UDP). Accepted
    // for backwards compatibility; the body is the rest of the datagram.
    let r = valid("inv2543");
    assert_eq!(r.max_forwards().unwrap(), None);
    assert_eq!(r.top_via().unwrap().branch(), None);
    assert_eq!(r.from_hdr().unwrap().tag(), None);
    assert_eq!(r.body.len(), 105);
    assert_reprints("inv2543");
}

// ---------------------------------------------------------------------------- robustness

const ALL: &[&str] = &[
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    "badinv01",
    "clerr",
    "ncl",
    "scalar02",
    "scalarlg",
    "quotbal",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "trws",
    "escruri",
    "baddate",
    "regbadct",
    "badaspec",
    "baddn",
    "badvers",
    "mismatch01",
    "mismatch02",
    "bigcode",
    "badbranch",
    "insuf",
    "unkscm",
    "novelsc",
    "unksm",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "multi01",
    "mcl01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    "inv2543",
];

/// Every typed accessor on whatever parses, so that a panic anywhere would show.
fn exercise(m: &Message) {
    match m {
        Message::Request(r) => {
            let _ = r.validate();
            let _ = r.max_forwards();
            let _ = r.response(400, "x\r\ny", Some("t"));
            exercise_headers(r);
        }
        Message::Response(r) => exercise_headers(r),
    }
    let _ = m.to_bytes();
}

fn exercise_headers(h: &impl HasHeaders) {
    let _ = h.call_id();
    let _ = h.cseq();
    let _ = h.from_hdr().map(|n| n.to_string());
    let _ = h.to_hdr().map(|n| n.to_string());
    let _ = h.vias().map(|v| {
        v.iter()
            .map(|v| (v.to_string(), v.rport()))
            .collect::<Vec<_>>()
    });
    let _ = h.contacts();
    let _ = h.expires();
}

#[test]
fn bad_input_never_panics() {
    let limits = Limits::default();
    let tight = Limits {
        max_message: 300,
        max_headers: 8,
        max_line: 64,
    };
    for name in ALL {
        let bytes = fixture(name);
        for cut in 0..=bytes.len() {
            for l in [&limits, &tight] {
                let r = std::panic::catch_unwind(|| {
                    if let Ok(m) = parse_message(&bytes[..cut], l) {
                        exercise(&m);
                    }
                    let _ = busylamp::sip::frame_stream(&bytes[..cut], l);
                });
                assert!(r.is_ok(), "{name} cut at {cut} panicked");
            }
        }
    }
}

#[test]
fn oversized_request_is_513_with_salvage() {
    let limits = Limits {
        max_message: 400,
        ..Limits::default()
    };
    let f = parse_message(&fixture("wsinv"), &limits).unwrap_err();
    assert_eq!(f.error.status(), 513);
    assert!(f.salvage.is_some(), "headers kept to answer the 513");
}
