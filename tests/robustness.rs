//! Hostile input: a bounded storm of malformed datagrams and TCP streams must leave the server
//! answering, with its stored bindings untouched; malformed requests that can be answered get
//! a 4xx whose reason names the problem.

mod common;
use busylamp::sip::{HasHeaders, HeaderName};
use common::mutate::{self, fixed_runner};
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;

const TRUSTED: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
max_message_size = 4096
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
# The presentities watched: a SUBSCRIBE for a user nobody knows is 404.
[[users]]
name = "1001"
password = "pw1001"
[[users]]
name = "1002"
password = "pw1002"
"#;

/// A mutant: which seed message, and up to 8 edits of it.
fn mutant() -> impl Strategy<Value = (Index, Vec<mutate::Edit>)> {
    (any::<Index>(), mutate::edits(8))
}

/// A counter of panics in any thread from now on (a panic in a receive task would not fail
/// a test by itself: the other receivers keep answering). Shared by the tests of this file;
/// it reads zero at the end of a test only when nothing panicked while it ran.
fn count_panics() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            default_hook(info);
        }));
    });
    &PANICS
}

fn options(port: u16, branch: &str) -> Vec<u8> {
    wire(&format!(
        "OPTIONS sip:example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}
        Max-Forwards: 70
        From: <sip:probe@example.test>;tag=p
        To: <sip:example.test>
        Call-ID: probe-{branch}
        CSeq: 1 OPTIONS
        "
    ))
}

#[tokio::test]
async fn a_storm_of_malformed_datagrams_leaves_the_server_answering_and_state_intact() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "keep",
            1,
            "Contact: <sip:keep@127.0.0.1:9>",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let before = s.handle.core.registrar.lookup("sip:1001@example.test");

    // Mutants come from (and are answered to) a socket of their own.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let jp = junk.local_addr().unwrap().port();
    let seeds: Vec<Vec<u8>> = vec![
        register(
            "1001",
            jp,
            "keep",
            2,
            "Contact: <sip:evil@127.0.0.1:9>;expires=0",
        ),
        options(jp, "z9hG4bKseed"),
        std::fs::read("fixtures/captures/polycom-vvx350-5.9.5-register-digest-cseq2.sip").unwrap(),
        std::fs::read("fixtures/captures/polycom-vvx350-5.9.5-register-401-response.sip").unwrap(),
    ];
    let mut runner = fixed_runner(0x5eed_1234_abcd_ef01);
    let mark = s.mark();
    let mut counted = 0;
    // Bounded: 6,000 datagrams; every 50 the server must have read all sent so far (no
    // receive buffer overflows, no pacing by the clock).
    for i in 0..6000 {
        let (seed, edits) = mutate::draw(&mut runner, &mutant());
        let mut m = mutate::apply(&seeds[seed.index(seeds.len())], &edits);
        if i % 500 == 0 {
            m = vec![b'A'; 5000]; // over max_message_size
        }
        // Never let a mutant keep the "keep" Call-ID with a higher CSeq and a valid shape: it
        // could legitimately change state. Mutants come from the junk socket, whose replies we
        // ignore; the trusted binding must survive only what is invalid.
        let text = String::from_utf8_lossy(&m);
        if text.contains("Call-ID: keep") && text.contains("REGISTER") {
            continue;
        }
        let _ = junk.send_to(&m, s.udp).await;
        counted += u64::from(counts_as_message(&m));
        if i % 50 == 0 {
            processed_since(&s.handle.core, mark, counted).await;
        }
    }
    processed_since(&s.handle.core, mark, counted).await;
    let r = c.request(&options(c.port(), &branch())).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(
        s.handle.core.registrar.lookup("sip:1001@example.test"),
        before
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_reason_naming_the_problem() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let p = c.port();
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", branch()),
            400,
            "Call-ID",
        ),
        (
            format!("OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", branch()),
            400,
            "CSeq method",
        ),
        (
            format!("OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 50\r\n\r\nshort", branch()),
            400,
            "Content-Length",
        ),
        (
            format!("OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 300\r\nContent-Length: 0\r\n\r\n", branch()),
            400,
            "Max-Forwards",
        ),
        (
            format!("OPTIONS sip:example.test SIP/3.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n", branch()),
            505,
            "SIP/3.0",
        ),
        (
            format!("OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n", branch(), "p".repeat(4200)),
            513,
            "Too Large",
        ),
    ];
    for (msg, status, needle) in cases {
        let r = c.request(msg.as_bytes()).await;
        assert_eq!(r.status, status, "{}", r.reason);
        assert!(
            r.reason.contains(needle),
            "reason {:?} should name {needle}",
            r.reason
        );
    }
    // Garbage without the headers to address an answer is dropped, silently.
    let mark = s.mark();
    c.send(b"\x00\x01garbage\r\n\r\n").await;
    s.assert_processed_then_silent(mark, 1, c.recv_nothing(200), "garbage was answered")
        .await;
}

#[tokio::test]
async fn an_unframeable_tcp_stream_is_answered_then_closed_and_others_are_unaffected() {
    let s = server(TRUSTED).await;
    let mut t = Tcp::connect(s.tcp).await;
    // Conflicting Content-Length: the stream cannot be framed any more.
    t.send(
        format!(
            "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 1\r\nl: 2\r\n\r\nab",
            branch()
        )
        .as_bytes(),
    )
    .await;
    let r = t.recv().await;
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("Content-Length"), "{}", r.reason);
    // A fresh connection works, and CRLF keep-alive pings get a pong (RFC 5626 §3.5.1).
    let mut t2 = Tcp::connect(s.tcp).await;
    t2.send(b"\r\n\r\n").await;
    let mut pong = [0u8; 2];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut t2.stream, &mut pong),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&pong, b"\r\n");
    let r = t2.request(&options(1, &branch())).await;
    assert_eq!(r.status, 200);
    assert!(r
        .headers
        .get(HeaderName::Server)
        .unwrap()
        .starts_with("busylamp"));
}

#[tokio::test]
async fn rfc3261_17_a_malformed_ack_is_never_answered() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let p = c.port();
    // Fails validation (no Call-ID).
    let no_call_id = format!(
        "ACK sip:1001@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>;tag=2\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        branch()
    );
    let mark = s.mark();
    c.send(no_call_id.as_bytes()).await;
    // Fails parsing (two spaces in the request line), but its headers could address an answer.
    let bad_line = format!(
        "ACK  sip:1001@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>;tag=2\r\nCall-ID: x\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        branch()
    );
    c.send(bad_line.as_bytes()).await;
    s.assert_processed_then_silent(
        mark,
        2,
        c.recv_nothing(300),
        "an ACK must never be answered",
    )
    .await;
}

#[tokio::test]
async fn rfc3261_8_2_6_2_answers_to_unparseable_requests_carry_a_to_tag() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let m = format!(
        "OPTIONS  sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        c.port(),
        branch()
    );
    let r = c.request(m.as_bytes()).await;
    assert_eq!(r.status, 400, "{}", r.reason);
    assert!(
        r.headers.get(HeaderName::To).unwrap().contains(";tag="),
        "{:?}",
        r.headers.get(HeaderName::To)
    );
}

/// Presence seeds: SUBSCRIBEs and PUBLISHes (PIDF, dialog-info, message-summary) for a
/// presentity other than the one whose state is checked.
fn presence_seeds(port: u16) -> Vec<Vec<u8>> {
    let publish = |event: &str, ct: &str, body: &str| {
        wire(&format!(
            "PUBLISH sip:2001@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKpub
            Max-Forwards: 70
            From: <sip:2001@example.test>;tag=pp
            To: <sip:2001@example.test>
            Call-ID: junk-pub
            CSeq: 1 PUBLISH
            Event: {event}
            Expires: 600
            Content-Type: {ct}

            {body}"
        ))
    };
    vec![
        wire(&format!(
            "SUBSCRIBE sip:2001@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKsub
            Max-Forwards: 70
            From: <sip:2002@example.test>;tag=ss
            To: <sip:2001@example.test>
            Call-ID: junk-sub
            CSeq: 1 SUBSCRIBE
            Contact: <sip:2002@127.0.0.1:{port}>
            Event: dialog;id=3
            Accept: application/dialog-info+xml
            Expires: 600
            "
        )),
        publish(
            "presence",
            "application/pidf+xml",
            "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" entity=\"sip:2001@example.test\"><tuple id=\"t\"><status><basic>open</basic></status><contact priority=\"0.8\">sip:2001@example.test</contact></tuple><dm:person id=\"p\"/></presence>",
        ),
        publish(
            "dialog",
            "application/dialog-info+xml",
            "<?xml version=\"1.0\"?><dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"1\" state=\"full\" entity=\"sip:2001@example.test\"><dialog id=\"a\" call-id=\"c\" local-tag=\"l\" remote-tag=\"r\" direction=\"initiator\"><state>early</state><local><identity display=\"A\">sip:2001@example.test</identity><target uri=\"sip:2001@h\"><param pname=\"x-line-id\" pval=\"0\"/></target></local></dialog></dialog-info>",
        ),
        publish(
            "message-summary",
            "application/simple-message-summary",
            "Messages-Waiting: yes\r\nMessage-Account: sip:2001@example.test\r\nVoice-Message: 2/8 (0/2)\r\n",
        ),
    ]
}

#[tokio::test]
async fn a_storm_of_malformed_presence_requests_leaves_presence_state_intact() {
    use common::ua::{body, Ua};
    let panics = count_panics();
    let s = server(TRUSTED).await;
    // A watched presentity with a publication: its document must come through unchanged.
    let mut w = Ua::new(s.udp).await;
    let sub = wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <sip:1002@example.test>;tag=keep
        To: <sip:1001@example.test>
        Call-ID: keep-sub
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
    let pidf = "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\"><tuple id=\"k\"><status><basic>open</basic></status></tuple></presence>";
    let d = s
        .handle
        .core
        .presence
        .publish(
            "sip:1001@example.test",
            busylamp::presence::event::Pkg::Presence,
            "keep",
            pidf.as_bytes(),
            600,
        )
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
    let before = body(&w.notify().await);

    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let seeds = presence_seeds(junk.local_addr().unwrap().port());
    let mut runner = fixed_runner(0xfeed_5eed_0123_4567);
    let mark = s.mark();
    let mut counted = 0;
    // Bounded: 4,000 datagrams, paced by the server's count of messages read.
    for i in 0..4000 {
        let (seed, edits) = mutate::draw(&mut runner, &mutant());
        let m = mutate::apply(&seeds[seed.index(seeds.len())], &edits);
        let _ = junk.send_to(&m, s.udp).await;
        counted += u64::from(counts_as_message(&m));
        if i % 50 == 0 {
            processed_since(&s.handle.core, mark, counted).await;
        }
    }
    processed_since(&s.handle.core, mark, counted).await;
    let r = w.request(&options(w.port(), &branch())).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // The watcher's subscription is still there, and the kept publication is still part of
    // the document a new change produces.
    assert!(s
        .handle
        .core
        .presence
        .subscriptions()
        .iter()
        .any(|x| x.presentity == "sip:1001@example.test" && x.watcher == "sip:1002@example.test"));
    let d = s
        .handle
        .core
        .presence
        .publish("sip:1001@example.test", busylamp::presence::event::Pkg::Presence, "probe", b"<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\"><tuple id=\"z\"><status><basic>closed</basic></status></tuple></presence>", 600)
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
    let after = body(&w.notify_until(|b| b.contains("id=\"z\"")).await);
    assert!(
        after.contains("id=\"k\""),
        "the kept publication survived: {after}"
    );
    assert!(before.contains("id=\"k\""));
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a receive task panicked"
    );
}

/// Malformed and unserviceable requests the proxy would otherwise forward: each gets a 4xx
/// whose reason (or Unsupported header) names the problem, and nothing reaches the phone.
#[tokio::test]
async fn rfc3261_16_3_malformed_proxied_requests_get_a_4xx_naming_the_problem() {
    use common::phone::{Phone, CALLS};
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let p = alice.ua.port();
    let request = |first: &str, extra: &str, cseq: &str, to: &str, call_id: &str| {
        format!(
            "{first}\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={b}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@example.test>;tag=a\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nContact: <sip:1001@127.0.0.1:{p}>\r\n{extra}Content-Length: 0\r\n\r\n",
            b = branch()
        )
    };
    let invite = |extra: &str, call_id: &str| {
        request(
            "INVITE sip:1002@example.test SIP/2.0",
            extra,
            "1 INVITE",
            "<sip:1002@example.test>",
            call_id,
        )
    };
    let many_rr: String = (0..200)
        .map(|i| format!("Record-Route: <sip:10.0.0.{}:5060;lr>\r\n", i % 250))
        .collect();
    let long_rr = format!(
        "Record-Route: {}\r\n",
        vec!["<sip:10.0.0.1:5060;lr>"; 500].join(", ")
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "bad-via",
            invite("", "bad-via").replace("UDP 127.0.0.1:", "UDP :"),
            400,
            "Via",
        ),
        (
            "absurd-cseq",
            invite("", "absurd-cseq").replace("CSeq: 1 INVITE", "CSeq: 99999999999999 INVITE"),
            400,
            "CSeq",
        ),
        (
            "negative-cseq",
            invite("", "negative-cseq").replace("CSeq: 1 INVITE", "CSeq: -1 INVITE"),
            400,
            "CSeq",
        ),
        (
            "cseq-method",
            invite("", "cseq-method").replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            400,
            "CSeq method",
        ),
        (
            "empty-to-tag",
            invite("", "empty-to-tag").replace(
                "<sip:1002@example.test>\r\n",
                "<sip:1002@example.test>;tag=\r\n",
            ),
            400,
            "To",
        ),
        (
            // A quoted From tag would land in our Record-Route (ftag) and add a hop to the
            // dialog's route set.
            "injected-ftag",
            invite("", "injected-ftag")
                .replace("tag=a\r\n", "tag=\"x>, <sip:127.0.0.9:5060;lr\"\r\n"),
            400,
            "tag is not a token",
        ),
        (
            "max-forwards",
            invite("", "max-forwards").replace("Max-Forwards: 70", "Max-Forwards: abc"),
            400,
            "Max-Forwards",
        ),
        ("many-rr", invite(&many_rr, "many-rr"), 400, "header"),
        ("long-rr", invite(&long_rr, "long-rr"), 400, "too long"),
        (
            "garbage-route",
            invite("Route: <<<garbage\r\n", "garbage-route"),
            400,
            "Route",
        ),
        (
            "http-route",
            invite("Route: <http://x.test/;lr>\r\n", "http-route"),
            400,
            "http",
        ),
        (
            "tel-uri",
            invite("", "tel-uri").replace("INVITE sip:1002@example.test", "INVITE tel:+15551234"),
            416,
            "tel",
        ),
        (
            "prack-not-ours",
            request(
                &format!("PRACK {} SIP/2.0", bob.contact()),
                "RAck: 1 1 INVITE\r\n",
                "2 PRACK",
                "<sip:1002@example.test>;tag=zz",
                "prack-not-ours",
            ),
            404,
            "not routed through us",
        ),
        (
            "cancel-unknown",
            request(
                "CANCEL sip:1002@example.test SIP/2.0",
                "",
                "1 CANCEL",
                "<sip:1002@example.test>",
                "cancel-unknown",
            ),
            481,
            "Does Not Exist",
        ),
    ];
    let mark = s.mark();
    let sent = cases.len() as u64 + 1;
    for (call_id, msg, status, needle) in cases {
        alice.ua.send(msg.as_bytes()).await;
        let r = loop {
            let r = alice.ua.response().await;
            if r.call_id().ok() == Some(call_id) {
                break r;
            }
        };
        assert_eq!(r.status, status, "{call_id}: {} {}", r.status, r.reason);
        assert!(
            r.reason.to_lowercase().contains(&needle.to_lowercase()),
            "{call_id}: reason {:?} should name {needle}",
            r.reason
        );
    }
    // RFC 3261 §16.3 item 5: an extension the proxy does not support in Proxy-Require is
    // refused with 420 and listed in Unsupported.
    alice
        .ua
        .send(invite("Proxy-Require: x-teleport\r\n", "proxy-require").as_bytes())
        .await;
    let r = alice.ua.response().await;
    assert_eq!(r.status, 420, "{}", r.reason);
    assert_eq!(r.headers.get(HeaderName::Unsupported), Some("x-teleport"));
    s.assert_processed_then_silent(
        mark,
        sent,
        async { bob.ua.next_request_within(300).await.is_none() },
        "nothing malformed reaches the phone",
    )
    .await;
}

/// Whether the server, handling `m`, could only ever send to loopback addresses: every
/// host it might route a request by (Request-URI, Route, `maddr`) or send a stateless
/// response to (Via, `received`) is a loopback IP literal. Mutants that fail this are not
/// sent: a mutated host name would make the server ask DNS, and a mutated address would
/// make it send off this machine.
fn stays_on_loopback(m: &[u8]) -> bool {
    use busylamp::sip::parse::{parse_message, Limits};
    use busylamp::sip::{Message, NameAddr, Uri};
    let loopback = |u: &Uri| match u {
        Uri::Sip(s) => {
            let host_ok = s.host.ip().is_some_and(|ip| ip.is_loopback());
            let maddr_ok = s.param("maddr").is_none_or(|m| {
                m.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
            });
            host_ok && maddr_ok
        }
        Uri::Other { .. } => true,
    };
    match parse_message(m, &Limits::default()) {
        Err(_) => true,
        // A CANCEL is matched to its INVITE, never routed by its URI.
        Ok(Message::Request(r)) if r.method == "CANCEL" => true,
        Ok(Message::Request(r)) => {
            loopback(&r.uri)
                && r.headers
                    .list(HeaderName::Route)
                    .iter()
                    .all(|v| NameAddr::parse(v).map_or(true, |na| loopback(&na.uri)))
        }
        Ok(Message::Response(r)) => r.vias().is_ok_and(|vias| {
            vias.iter().all(|v| {
                v.host.ip().is_some_and(|ip| ip.is_loopback())
                    && v.params.value("received").is_none_or(|a| {
                        a.parse::<std::net::IpAddr>()
                            .map_or(true, |ip| ip.is_loopback())
                    })
            })
        }),
    }
}

/// The top Via branch of a request the server can answer and whose answers come back to
/// the socket at `port`, read leniently and independently of the server's parser (lines end
/// at LF, a CR before it dropped; the head ends at the first empty line, and without one the
/// last line was cut; folded lines join their field; fields with a stray CR or NUL, or over
/// 8 KiB, are unreadable): Via, From, To, Call-ID and CSeq are readable, the CSeq method is
/// not ACK, and the top Via is ours, without rport.
fn answerable_branch(m: &[u8], port: u16) -> Option<String> {
    use busylamp::sip::Via;
    if m.starts_with(b"SIP/") || m.starts_with(b"ACK ") {
        return None;
    }
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut complete = false;
    for line in m.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && !lines.is_empty() {
            complete = true;
            break;
        }
        lines.push(line);
    }
    if !complete {
        lines.pop();
    }
    if lines.first().is_none_or(|l| l.len() > 8 * 1024) {
        return None;
    }
    // Fields: a line and its continuation lines. A fold before the colon breaks the field
    // (RFC 3261 §7.3.1: values may be folded; HCOLON allows no line break), marked by a NUL.
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in &lines[1..] {
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) if !last.contains(&b':') => last.push(0),
            (Some(b' ' | b'\t'), Some(last)) => {
                last.push(b' ');
                last.extend_from_slice(line);
            }
            _ => fields.push(line.to_vec()),
        }
    }
    let mut found: std::collections::HashMap<&str, String> = Default::default();
    for field in &fields {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        if field.len() > 8 * 1024 || field.bytes().any(|b| b == b'\r' || b == 0) {
            continue;
        }
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        let key = match name.trim_end().to_ascii_lowercase().as_str() {
            "via" | "v" => "via",
            "from" | "f" => "from",
            "to" | "t" => "to",
            "call-id" | "i" => "call-id",
            "cseq" => "cseq",
            _ => continue,
        };
        found.entry(key).or_insert_with(|| value.trim().to_string());
    }
    if found.len() < 5 {
        return None;
    }
    if found["cseq"].split_ascii_whitespace().nth(1) == Some("ACK") {
        return None;
    }
    let top = found["via"].split(',').next()?.trim().to_string();
    let via = Via::parse(&top).ok()?;
    if via.sent_by() != format!("127.0.0.1:{port}") || via.params.has("rport") {
        return None;
    }
    via.branch()
}

/// A 2xx to INVITE with a To tag other than `tag`: another fork answering, which a real
/// caller would ACK and BYE (RFC 6026); the test's caller does not, so such mutants would
/// leave a confirmed dialog nobody hangs up until `max_lifetime`.
fn answers_as_another_fork(m: &[u8], tag: &str) -> bool {
    use busylamp::sip::parse::{parse_message, Limits};
    use busylamp::sip::Message;
    match parse_message(m, &Limits::default()) {
        Ok(Message::Response(r)) => {
            (200..300).contains(&r.status)
                && r.to_hdr().ok().and_then(|t| t.tag()).as_deref() != Some(tag)
        }
        _ => false,
    }
}

/// Thousands of mutants of the messages of a call in progress (INVITE, CANCEL, ACK, BYE,
/// re-INVITE, PRACK from the caller's side; 1xx/2xx/4xx from the callee's side, with bad
/// Vias, To tags, CSeqs, Contacts, SDP, Record-Route lists) from a socket of their own: no
/// panic, the server still answers, the call can still be ended, new calls work, and the
/// callee's lamp ends dark.
#[tokio::test(start_paused = true)]
async fn a_storm_of_mutated_call_messages_leaves_calls_working_and_the_lamp_dark() {
    use busylamp::sip::body::dialog_info::DialogState;
    use common::phone::{Phone, CALLS, SDP};
    use common::watcher::{dark, Watcher};
    let panics = count_panics();
    let s = server(CALLS).await;
    let mut alice = Phone::registered(s.udp, "1001", "a").await;
    let mut bob = Phone::registered(s.udp, "1002", "desk").await;
    let mut lamp = Watcher::new(s.udp, "1002").await;

    // The live call: ringing.
    let invite = alice.invite("1002", "live").await;
    let at = bob.ua.next_request().await;
    assert_eq!(at.method, "INVITE");
    bob.reply(&at, 180, "b").await;
    lamp.until(Some(DialogState::Early)).await;

    // Seeds: what the caller and the callee could send, in a few broken shapes each. Requests
    // from the junk socket get a fresh branch each (a repeated branch is only a
    // retransmission); the caller's INVITE and CANCEL and the callee's responses keep theirs,
    // so that they reach the live transactions.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let jp = junk.local_addr().unwrap().port();
    let us = s.udp;
    let ap = alice.ua.port();
    let bob_contact = bob.contact();
    let huge_rr: String = (0..60)
        .map(|i| format!("Record-Route: <sip:127.0.0.{}:5060;lr>\r\n", 1 + i % 200))
        .collect();
    let garbage_sdp = "v=0\r\no=- x\r\nc=IN IP4 999.1.1.1\r\nm=audio -1 RTP/AVP\r\na=sendonly\r\na=inactive\r\n\u{1}\u{7f}";
    let hold = SDP.replace("a=sendrecv", "a=sendonly");
    type Seed<'a> = Box<dyn Fn() -> Vec<u8> + 'a>;
    let in_dialog = |method: &'static str, cseq: u32, extra: String, body: String| -> Seed {
        let bob_contact = bob_contact.clone();
        Box::new(move || {
            format!(
                "{method} {bob_contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{jp};branch={b}\r\nMax-Forwards: 70\r\nRoute: <sip:{us};lr>\r\nFrom: \"1001 a\" <sip:1001@example.test>;tag=from-live\r\nTo: \"Ext 1002\" <sip:1002@example.test>;tag=b\r\nCall-ID: live\r\nCSeq: {cseq} {method}\r\nContact: <sip:1001@127.0.0.1:{ap}>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                body.len(),
                b = branch()
            )
            .into_bytes()
        })
    };
    let sdp_type = || "Content-Type: application/sdp\r\n".to_string();
    let new_call = |extra: String, contact: &'static str, body: &'static str| -> Seed {
        Box::new(move || {
            format!(
                "INVITE sip:1003@{us} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{jp};branch={b}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@example.test>;tag=n1\r\nTo: <sip:1003@example.test>\r\nCall-ID: storm-{b}\r\nCSeq: 1 INVITE\r\n{contact}{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len(),
                b = branch()
            )
            .into_bytes()
        })
    };
    let response = |status: u16, contact: Option<&str>, extra_rr: bool, body: &str| -> Seed {
        let mut r = at.response(status, "Whatever", Some("b"));
        for rr in at.headers.all(HeaderName::RecordRoute) {
            r.headers.push(HeaderName::RecordRoute, rr.to_string());
        }
        if extra_rr {
            for i in 0..60 {
                r.headers.push(
                    HeaderName::RecordRoute,
                    format!("<sip:127.0.0.{}:5060;lr>", 1 + i),
                );
            }
        }
        match contact {
            Some("") => {}
            Some(c) => r.headers.push(HeaderName::Contact, c.to_string()),
            None => r
                .headers
                .push(HeaderName::Contact, format!("<{bob_contact}>")),
        }
        if !body.is_empty() {
            r.headers.push(HeaderName::ContentType, "application/sdp");
            r.body = body.as_bytes().to_vec();
        }
        let bytes = r.to_bytes();
        Box::new(move || bytes.clone())
    };
    let fixed = |bytes: Vec<u8>| -> Seed { Box::new(move || bytes.clone()) };
    let mut runner = fixed_runner(0x0ca1_1ed5_7012_3456);
    let mut storm = |seeds: &[Seed], n: usize| {
        let mut out = Vec::new();
        for _ in 0..n {
            let (seed, edits) = mutate::draw(&mut runner, &mutant());
            let m = mutate::apply(&seeds[seed.index(seeds.len())](), &edits);
            // Never a mutant that could make the server leave loopback, and never another
            // fork's 2xx (the caller here would not hang it up).
            if stays_on_loopback(&m) && !answers_as_another_fork(&m, "b") {
                out.push(m);
            }
        }
        out
    };
    // While it rings: the caller's INVITE again, PRACK, new calls; the callee's
    // provisionals and answers (a 2xx with the callee's tag answers the call, as its own
    // would).
    let ringing: Vec<Seed> = vec![
        fixed(invite.to_bytes()),
        in_dialog("PRACK", 2, "RAck: 1 1 INVITE\r\n".into(), String::new()),
        new_call(
            String::new(),
            "Contact: <sip:1001@127.0.0.1:9>\r\n",
            garbage_sdp,
        ),
        new_call(
            huge_rr.clone(),
            "Contact: <mailto:nobody@example.test>\r\n",
            SDP,
        ),
        new_call(String::new(), "", ""),
        response(180, None, false, ""),
        response(183, None, false, garbage_sdp),
        response(180, Some("<tel:+15550000>"), true, ""),
        response(200, None, false, SDP),
        response(200, Some(""), false, SDP),
    ];
    // Once answered: ACK, re-INVITEs (hold, garbage SDP), PRACK, UPDATE with a huge
    // Record-Route list, CANCEL of the answered INVITE, 2xx retransmissions and a late 486.
    let answered: Vec<Seed> = vec![
        fixed(Phone::cancel(&invite)),
        in_dialog("ACK", 1, String::new(), String::new()),
        in_dialog("INVITE", 3, sdp_type(), hold.clone()),
        in_dialog("INVITE", 4, sdp_type(), garbage_sdp.into()),
        in_dialog("PRACK", 5, "RAck: 1 1 INVITE\r\n".into(), String::new()),
        in_dialog("UPDATE", 6, huge_rr.clone(), String::new()),
        new_call(
            String::new(),
            "Contact: <sip:1001@127.0.0.1:9>\r\n",
            garbage_sdp,
        ),
        response(200, None, false, SDP),
        response(200, Some("<tel:+15550000>"), true, ""),
        response(486, None, false, ""),
    ];
    let hanging_up: Vec<Seed> = vec![in_dialog("BYE", 7, String::new(), String::new())];
    let phases = [
        storm(&ringing, 2000),
        storm(&answered, 2500),
        storm(&hanging_up, 500),
    ];
    let junk = std::sync::Arc::new(junk);
    let answers = std::sync::Arc::new(std::sync::Mutex::new(
        Vec::<(String, u16, String, String)>::new(),
    ));
    let reader = {
        let junk = junk.clone();
        let answers = answers.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = junk.recv_from(&mut buf).await {
                if let Ok(busylamp::sip::Message::Response(r)) =
                    busylamp::sip::parse::parse_message(&buf[..n], &Default::default())
                {
                    let b = r
                        .top_via()
                        .ok()
                        .and_then(|v| v.branch())
                        .unwrap_or_default();
                    let method = r.cseq().map(|c| c.method).unwrap_or_default();
                    answers
                        .lock()
                        .unwrap()
                        .push((b, r.status, r.reason.clone(), method));
                }
            }
        })
    };
    let mut sent = 0;
    for (phase, mutants) in phases.iter().enumerate() {
        if phase == 1 {
            // Bob answers for real.
            bob.reply(&at, 200, "b").await;
        }
        for (i, m) in mutants.iter().enumerate() {
            let _ = junk.send_to(m, s.udp).await;
            sent += 1;
            if i % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
    assert!(sent > 4500, "{sent} sent");
    // Still answering (Alice also hears the answers to the mutants of her INVITE and CANCEL).
    let probe = branch();
    alice.ua.send(&options(alice.ua.port(), &probe)).await;
    let r = loop {
        let r = alice.ua.response().await;
        if r.call_id().ok() == Some(format!("probe-{probe}").as_str()) {
            break r;
        }
    };
    assert_eq!(r.status, 200, "{}", r.reason);

    // The live call ends as a call does, whatever state the storm left it in: Bob answers
    // (or repeats his answer), Alice ACKs and hangs up.
    bob.reply(&at, 200, "b").await;
    let route = vec![format!("<sip:{us};lr>")];
    let mut leg = common::phone::Leg {
        call_id: "live".into(),
        local: invite.headers.get(HeaderName::From).unwrap().to_string(),
        remote: format!("{};tag=b", invite.headers.get(HeaderName::To).unwrap()),
        remote_target: bob.contact(),
        route,
        cseq: 100,
    };
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    // Bob answers whatever reaches him for the live call.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(300);
    while tokio::time::Instant::now() < deadline {
        let Some(r) = bob.ua.next_request_within(5_000).await else {
            break;
        };
        if r.call_id().ok() == Some("live") && r.method != "ACK" {
            bob.reply(&r, 200, "b").await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    // Every request mutant that can be answered (its Via, From, To, Call-ID and CSeq read,
    // its Via ours, not an ACK) was answered with a final response: its own 4xx, or the
    // answer of the phone it was forwarded to, or 408 when the phone kept quiet; and no 400
    // is a bare "Bad Request".
    {
        let answers = answers.lock().unwrap();
        let answered: std::collections::HashSet<&str> = answers
            .iter()
            .filter(|a| a.1 >= 200)
            .map(|a| a.0.as_str())
            .collect();
        let mut unanswered = Vec::new();
        let mut answerable = 0;
        for m in phases.iter().flatten() {
            if let Some(b) = answerable_branch(m, jp) {
                answerable += 1;
                if !answered.contains(b.as_str()) {
                    unanswered.push(String::from_utf8_lossy(m).into_owned());
                }
            }
        }
        assert!(answerable > 1000, "only {answerable} answerable mutants");
        assert!(
            unanswered.is_empty(),
            "{} requests unanswered, e.g. {:?}",
            unanswered.len(),
            &unanswered[..unanswered.len().min(3)]
        );
        let bare: Vec<_> = answers
            .iter()
            .filter(|a| a.1 == 400 && a.2 == "Bad Request")
            .collect();
        assert!(bare.is_empty(), "400 without a reason: {}", bare.len());
        // An ACK is never answered (RFC 3261 §17), however broken.
        assert!(answers.iter().all(|a| a.3 != "ACK"), "an ACK was answered");
    }
    reader.abort();
    // Everything the storm started has timed out by now (Timer B, C, the wait after a
    // CANCEL): the lamp is dark.
    tokio::time::sleep(std::time::Duration::from_secs(250)).await;
    let doc = lamp.settled(2_000).await.expect("the lamp changed");
    let states: Vec<DialogState> = doc.dialogs.iter().map(|d| d.state).collect();
    assert!(dark(&states), "the lamp is not dark: {doc:?}");
    let calls = s.handle.core.calls();
    assert!(
        calls.iter().all(|c| c.is_terminated()),
        "calls left: {calls:?}"
    );
    // Nothing the storm started is still held once the transaction timers have run.
    tokio::time::sleep(std::time::Duration::from_secs(40)).await;
    assert_eq!(
        s.handle.core.in_flight(),
        busylamp::server::InFlight::default()
    );

    // A new call works from start to end.
    let invite = alice.invite("1002", "after-storm").await;
    let at = loop {
        let r = bob.ua.next_request().await;
        if r.call_id().ok() == Some("after-storm") && r.method == "INVITE" {
            break r;
        }
    };
    bob.reply(&at, 180, "b2").await;
    bob.reply(&at, 200, "b2").await;
    let ok = loop {
        let r = alice.ua.response().await;
        if r.call_id().ok() == Some("after-storm") && r.cseq().unwrap().method == "INVITE" {
            break r;
        }
    };
    assert_eq!(ok.status, 200);
    lamp.until(Some(DialogState::Confirmed)).await;
    let mut leg = Phone::caller_leg(&invite, &ok);
    alice.ua.send(&alice.in_dialog(&mut leg, "ACK", None)).await;
    alice.ua.send(&alice.in_dialog(&mut leg, "BYE", None)).await;
    let bye = loop {
        let r = bob.ua.next_request().await;
        if r.call_id().ok() == Some("after-storm") && r.method == "BYE" {
            break r;
        }
    };
    bob.reply(&bye, 200, "b2").await;
    lamp.dark().await;
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a task panicked"
    );
}
