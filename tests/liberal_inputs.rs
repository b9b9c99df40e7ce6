//! Issue 11: liberal where real software is sloppy, over raw bytes to an in-process server:
//! every answer (the 400s to unparseable or invalid requests too) carries `received`/`rport`
//! when the request asked (RFC 3581 §4), a Content-Length beyond any limit is `513` (RFC 3261
//! §21.5.14), and Kamailio's PIDF with a scheme-less `entity` is published (RFC 3863 §4.1.1).

mod common;
use busylamp::sip::{HasHeaders, HeaderName, Response};
use common::ua::*;
use common::*;

/// A request whose Via names another host (as behind NAT) and asks for
/// rport, with `broken` as its last header line and `cl` as its Content-Length.
fn raw_options(broken: &str, cl: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.9:5099;branch={b};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@example.test>;tag=a\r\n\
         To: <sip:example.test>\r\n\
         Call-ID: liberal-{b}\r\n\
         CSeq: 1 OPTIONS\r\n\
         {broken}\
         Content-Length: {cl}\r\n\r\n",
        b = branch()
    )
    .into_bytes()
}

/// The answer's top Via says where the request really came from: our socket's address and
/// port (RFC 3581 §4), and the answer reached that port although the Via names another.
fn assert_received_and_rport(r: &Response, port: u16) {
    let via = r.top_via().unwrap();
    assert_eq!(via.host.to_string(), "192.0.2.9");
    assert_eq!(
        via.params.get("received"),
        Some(Some("127.0.0.1".to_string())),
        "{via:?}"
    );
    assert_eq!(via.rport(), Some(Some(port)), "{via:?}");
}

#[tokio::test]
async fn rfc3581_4_the_400_to_an_unparseable_request_carries_received_and_rport() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    // A header line without a colon: the message cannot be parsed, its headers are salvaged.
    let r = c.request(&raw_options("no colon here\r\n", "0")).await;
    assert_eq!(r.status, 400, "{}", r.reason);
    assert!(r.reason.contains("Malformed header line"), "{}", r.reason);
    assert_received_and_rport(&r, c.port());
}

#[tokio::test]
async fn rfc3581_4_the_400_to_an_invalid_request_carries_received_and_rport() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    // Parses, but a CSeq whose method is not the request's is refused by validation.
    let r = c
        .request(
            &String::from_utf8(raw_options("", "0"))
                .unwrap()
                .replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE")
                .into_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.reason);
    assert_received_and_rport(&r, c.port());
    // And an ordinary answer, for comparison, says the same.
    let r = c.request(&raw_options("", "0")).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_received_and_rport(&r, c.port());
}

#[tokio::test]
async fn rfc3261_21_5_14_a_content_length_beyond_any_limit_is_513() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    for cl in ["1000000000000", "99999999999999999999999999"] {
        let r = c.request(&raw_options("", cl)).await;
        assert_eq!(
            (r.status, r.reason.as_str()),
            (513, "Message Too Large (limit 65536 bytes)"),
            "{cl}"
        );
        assert_received_and_rport(&r, c.port());
    }
    // Over TCP the stream cannot be framed: the 513 goes out, then the connection closes.
    let mut t = Tcp::connect(s.tcp).await;
    let r = t.request(&raw_options("", "1000000000000")).await;
    assert_eq!(r.status, 513, "{}", r.reason);
}

/// Kamailio's PUBLISH writes the PIDF entity without a scheme (`user@host`); Kamailio accepts
/// it, and so do we: 200, and the watcher gets the document.
#[tokio::test]
async fn rfc3863_4_1_1_kamailio_publish_with_a_scheme_less_entity_is_200_and_notified() {
    let s = server(TRUSTED).await;
    // The presentity must exist (a SUBSCRIBE for an unknown user is 404): register it.
    let _phone = common::phone::Phone::registered(s.udp, "1001", "p").await;
    let mut w = Ua::new(s.udp).await;
    let sub = wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <sip:1002@example.test>;tag=wt
        To: <sip:1001@example.test>
        Call-ID: watch-kam-{p}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1002@127.0.0.1:{p}>
        Event: presence
        Expires: 600
        ",
        p = w.port(),
        b = branch()
    ));
    let r = w.request(&sub).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    w.notify().await;

    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n\
        <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
        xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" xmlns:c=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\"1001@example.test\">\n\
        <tuple id=\"0x7f5e1c2d3e40\">\n<status><basic>open</basic></status>\n</tuple>\n\
        <dm:person id=\"1\"><rpid:activities><rpid:unknown/></rpid:activities></dm:person>\n\
        </presence>\n";
    let p = Udp::new(s.udp).await;
    let publish = wire(&format!(
        "PUBLISH sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:1001@example.test>;tag=kam1
        To: <sip:1001@example.test>
        Call-ID: kam-publish-1
        CSeq: 10 PUBLISH
        Event: presence
        Expires: 3600
        User-Agent: kamailio (5.6.3 (x86_64/linux))
        Content-Type: application/pidf+xml

{body}",
        port = p.port(),
        b = branch()
    ));
    let r = p.request(&publish).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert!(r.headers.get(HeaderName::SipEtag).is_some());
    let n = w.notify().await;
    let doc = common::ua::body(&n);
    assert!(doc.contains("<basic>open</basic>"), "{doc}");
    assert!(doc.contains("entity=\"sip:1001@example.test\""), "{doc}");
}
