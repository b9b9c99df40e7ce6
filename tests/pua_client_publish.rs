//! The presence client's PUBLISH (RFC 3903) towards a remote presence server, against a
//! scripted fake server on a raw UDP socket: the initial PUBLISH with its body, the
//! body-less refresh with SIP-If-Match before expiry (paused clock), modify with
//! SIP-If-Match, removal with Expires 0, 412 → a fresh publication, 401 → the same
//! request with credentials, one PUBLISH in flight (the newest state after it), failures
//! retried with backoff; and two in-process servers, a REGISTER at one making a watcher
//! at the other see `open`.

mod common;
use busylamp::presence::event::Pkg;
use busylamp::sip::digest;
use busylamp::sip::{HasHeaders, HeaderName, Request};
use common::peer::*;
use common::ua::*;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

const AOR: &str = "sip:1001@example.test";

fn config(presence_server: &str, extra: &str) -> String {
    format!(
        r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
coalesce_ms = 0
[pua]
presence_server = "{presence_server}"
publish_expires = 300
{extra}
[pua.usrloc]
enabled = false
# The presentity watched: a SUBSCRIBE for a user nobody knows is 404.
[[users]]
name = "1001"
password = "pw1001"
"#
    )
}

fn doc(note: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{AOR}\">\
         <tuple id=\"t\"><status><basic>open</basic></status><note>{note}</note></tuple></presence>"
    )
    .into_bytes()
}

fn publish(s: &TestServer, body: &[u8], expires: u32) {
    s.handle
        .core
        .pua
        .publish(AOR, Pkg::Presence, "test", body, expires)
        .expect("published locally");
}

/// The next PUBLISH the fake server gets.
async fn next_publish(f: &mut FakePeer, within_ms: u64) -> (Request, SocketAddr) {
    let (r, from) = f
        .request_within(within_ms)
        .await
        .unwrap_or_else(|| panic!("a PUBLISH within {within_ms} ms"));
    assert_eq!(r.method, "PUBLISH");
    (r, from)
}

async fn ok(f: &FakePeer, r: &Request, from: SocketAddr, etag: &str, expires: u32) {
    f.answer(
        r,
        from,
        200,
        Some("srv"),
        &[
            ("SIP-ETag", etag.to_string()),
            ("Expires", expires.to_string()),
        ],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn rfc3903_initial_refresh_modify_remove() {
    let mut f = FakePeer::new().await;
    let s = server(&config(&f.uri(), "")).await;
    publish(&s, &doc("a"), 3600);

    let (r, from) = next_publish(&mut f, 5000).await;
    assert_eq!(r.uri.to_string(), AOR);
    assert_eq!(hdr(&r, HeaderName::Event), "presence");
    assert_eq!(
        hdr(&r, HeaderName::Expires),
        "300",
        "at most publish_expires"
    );
    assert_eq!(hdr(&r, HeaderName::ContentType), "application/pidf+xml");
    assert!(!r.headers.has(HeaderName::SipIfMatch), "initial: no ETag");
    assert_eq!(r.body, doc("a"));
    assert!(hdr(&r, HeaderName::From).starts_with(&format!("<{AOR}>;tag=")));
    assert_eq!(hdr(&r, HeaderName::To), format!("<{AOR}>"));
    let call_id = hdr(&r, HeaderName::CallId);
    let cseq1 = r.cseq().unwrap().seq;
    let t0 = tokio::time::Instant::now();
    ok(&f, &r, from, "e1", 300).await;

    // Refresh before expiry: body-less, with the ETag.
    let (r, from) = next_publish(&mut f, 400_000).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(265) && waited <= Duration::from_secs(272),
        "refreshed {waited:?} after the 200 (300 s granted, 30 s margin)"
    );
    assert_eq!(hdr(&r, HeaderName::SipIfMatch), "e1");
    assert!(r.body.is_empty(), "a refresh has no body");
    assert!(!r.headers.has(HeaderName::ContentType));
    assert_eq!(hdr(&r, HeaderName::Expires), "300");
    assert_eq!(hdr(&r, HeaderName::CallId), call_id);
    assert!(r.cseq().unwrap().seq > cseq1);
    ok(&f, &r, from, "e2", 300).await;

    // Modify: the new body with the newest ETag.
    publish(&s, &doc("b"), 3600);
    let (r, from) = next_publish(&mut f, 5000).await;
    assert_eq!(hdr(&r, HeaderName::SipIfMatch), "e2");
    assert_eq!(r.body, doc("b"));
    ok(&f, &r, from, "e3", 300).await;

    // The same state again: nothing to send (the removal's PUBLISH below, not a duplicate,
    // is the next request: the publication's task handled this one).
    publish(&s, &doc("b"), 3600);
    assert!(
        f.request_within(1000).await.is_none(),
        "no duplicate PUBLISH"
    );

    // Remove: Expires 0 with the ETag, no body.
    publish(&s, b"", 0);
    let (r, from) = next_publish(&mut f, 5000).await;
    assert_eq!(hdr(&r, HeaderName::Expires), "0");
    assert_eq!(hdr(&r, HeaderName::SipIfMatch), "e3");
    assert!(r.body.is_empty());
    let mark = s.mark();
    f.answer(&r, from, 200, Some("srv"), &[("Expires", "0".into())])
        .await;
    s.assert_processed_then_silent(
        mark,
        1,
        async { f.request_within(4_000_000).await.is_none() },
        "nothing after the removal, not even a refresh",
    )
    .await;
    assert_eq!(s.handle.core.pua.client().remote_publications(), 0);
}

#[tokio::test]
async fn rfc3903_412_is_answered_by_a_fresh_publication() {
    let mut f = FakePeer::new().await;
    let s = server(&config(&f.uri(), "")).await;
    publish(&s, &doc("a"), 600);
    let (r, from) = next_publish(&mut f, 5000).await;
    ok(&f, &r, from, "e1", 300).await;

    publish(&s, &doc("b"), 600);
    let (r, from) = next_publish(&mut f, 5000).await;
    assert_eq!(hdr(&r, HeaderName::SipIfMatch), "e1");
    f.answer(&r, from, 412, Some("srv"), &[]).await;

    let (r, from) = next_publish(&mut f, 5000).await;
    assert!(
        !r.headers.has(HeaderName::SipIfMatch),
        "fresh publication after 412"
    );
    assert_eq!(r.body, doc("b"), "with the full, current body");
    ok(&f, &r, from, "e9", 300).await;

    publish(&s, &doc("c"), 600);
    let (r, _) = next_publish(&mut f, 5000).await;
    assert_eq!(hdr(&r, HeaderName::SipIfMatch), "e9");
}

#[tokio::test]
async fn a_401_is_answered_once_with_credentials_sha256_preferred() {
    let mut f = FakePeer::new().await;
    let s = server(&config(
        &f.uri(),
        "username = \"pua\"\npassword = \"s3cret\"",
    ))
    .await;
    publish(&s, &doc("a"), 600);
    let (r, from) = next_publish(&mut f, 5000).await;
    assert!(!r.headers.has(HeaderName::Authorization));
    let md5 = "Digest realm=\"remote\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"";
    let sha =
        "Digest realm=\"remote\", nonce=\"n2\", algorithm=SHA-256, qop=\"auth\", opaque=\"o\"";
    f.answer(
        &r,
        from,
        401,
        Some("srv"),
        &[
            ("WWW-Authenticate", md5.into()),
            ("WWW-Authenticate", sha.into()),
        ],
    )
    .await;

    let (r2, from) = next_publish(&mut f, 5000).await;
    assert_eq!(hdr(&r2, HeaderName::CallId), hdr(&r, HeaderName::CallId));
    assert_eq!(r2.cseq().unwrap().seq, r.cseq().unwrap().seq + 1);
    assert_eq!(r2.body, doc("a"));
    let creds = digest::parse_credentials(&hdr(&r2, HeaderName::Authorization)).unwrap();
    assert_eq!(creds.username, "pua");
    assert_eq!(creds.nonce, "n2", "SHA-256 preferred");
    assert_eq!(creds.opaque.as_deref(), Some("o"));
    assert_eq!(creds.uri, AOR);
    let ha1 = digest::ha1(digest::Algorithm::Sha256, "pua", "remote", "s3cret");
    assert!(digest::verify(
        digest::Algorithm::Sha256,
        &ha1,
        "PUBLISH",
        &creds
    ));

    // A second 401 is not answered again: the publication backs off.
    let mark = s.mark();
    f.answer(
        &r2,
        from,
        401,
        Some("srv"),
        &[("WWW-Authenticate", sha.into())],
    )
    .await;
    s.assert_processed_then_silent(
        mark,
        1,
        async { f.request_within(1000).await.is_none() },
        "no third attempt at once",
    )
    .await;
}

#[tokio::test]
async fn one_publish_in_flight_and_the_newest_state_wins() {
    let mut f = FakePeer::new().await;
    let s = server(&config(&f.uri(), "")).await;
    publish(&s, &doc("1"), 600);
    let (r1, from) = next_publish(&mut f, 5000).await;
    assert_eq!(r1.body, doc("1"));
    // Changes arrive while the first PUBLISH is unanswered (handled: the next PUBLISH carries
    // the last of them).
    for i in 2..=6 {
        publish(&s, &doc(&i.to_string()), 600);
        tokio::task::yield_now().await;
    }
    assert!(
        f.request_within(700).await.is_none(),
        "nothing new while one PUBLISH is in flight (retransmissions aside)"
    );
    ok(&f, &r1, from, "e1", 300).await;
    let (r, from) = next_publish(&mut f, 5000).await;
    assert_eq!(r.body, doc("6"), "only the newest state");
    assert_eq!(hdr(&r, HeaderName::SipIfMatch), "e1");
    let mark = s.mark();
    ok(&f, &r, from, "e2", 300).await;
    s.assert_processed_then_silent(
        mark,
        1,
        async { f.request_within(500).await.is_none() },
        "and only once",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_and_the_newest_state() {
    let mut f = FakePeer::new().await;
    let s = server(&config(&f.uri(), "retry_min = 2\nretry_max = 8")).await;
    publish(&s, &doc("a"), 3600);
    let (r, from) = next_publish(&mut f, 5000).await;
    f.answer(&r, from, 503, Some("srv"), &[]).await;
    let t = tokio::time::Instant::now();
    publish(&s, &doc("b"), 3600);
    let (r, from) = next_publish(&mut f, 10_000).await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(r.body, doc("b"));
    f.answer(&r, from, 500, Some("srv"), &[]).await;
    let t = tokio::time::Instant::now();
    let (r, from) = next_publish(&mut f, 20_000).await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(3900) && waited < Duration::from_secs(5),
        "doubled: {waited:?}"
    );
    // No answer at all (timeout, 32 s), then it works.
    let _ = (r, from);
    let (r, from) = next_publish(&mut f, 60_000).await;
    ok(&f, &r, from, "e1", 300).await;
    assert_eq!(r.body, doc("b"));
}

#[tokio::test]
async fn a_register_at_one_server_makes_a_watcher_at_the_remote_presence_server_see_open() {
    // B: the remote presence server. A: registrar with presence_server = B.
    let b = server(&config("", "")).await;
    let a = server(
        &config(&format!("sip:{}", b.udp), "").replace("[pua.usrloc]\nenabled = false\n", ""),
    )
    .await;
    let mut w = Ua::new(b.udp).await;
    let sub = wire(&format!(
        "SUBSCRIBE {AOR} SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={br}
        Max-Forwards: 70
        From: <sip:1002@example.test>;tag=wb
        To: <{AOR}>
        Call-ID: two-servers
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1002@127.0.0.1:{p}>
        Event: presence
        Expires: 600
        ",
        p = w.port(),
        br = branch()
    ));
    assert_eq!(w.request(&sub).await.status, 200);
    assert!(body(&w.notify().await).contains("<basic>closed</basic>"));

    let c = Udp::new(a.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "two",
            1,
            "Contact: <sip:1001@127.0.0.1:5071>;expires=600",
        ))
        .await;
    assert_eq!(r.status, 200);
    let n = w.notify_until(|b| b.contains("<basic>open</basic>")).await;
    // What a remote server's watchers see carries no phone address either (finding 8).
    assert!(!body(&n).contains("127.0.0.1:5071"), "{}", body(&n));

    // Unregistered at A: closed at B.
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "two",
            2,
            "Contact: <sip:1001@127.0.0.1:5071>;expires=0",
        ))
        .await;
    assert_eq!(r.status, 200);
    w.notify_until(|b| b.contains("<basic>closed</basic>") && !b.contains("open"))
        .await;
}
