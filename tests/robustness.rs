//! Hostile input: a bounded storm of malformed datagrams and TCP streams must leave the server
//! answering, with its stored bindings untouched; malformed requests that can be answered get
//! a 4xx whose reason names the problem.

mod common;
use busylamp::sip::{HasHeaders, HeaderName};
use common::*;

const TRUSTED: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
max_message_size = 4096
[auth]
trusted = ["127.0.0.0/8"]
"#;

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        if m.is_empty() {
            break;
        }
        let i = rng.below(m.len());
        match rng.below(6) {
            0 => m[i] = rng.next() as u8,
            1 => {
                m.remove(i);
            }
            2 => {
                let specials = b"\r\n:;,<>\"\\\0 %[]";
                m.insert(i, specials[rng.below(specials.len())])
            }
            3 => m.truncate(i),
            4 => {
                let j = rng.below(m.len());
                let chunk: Vec<u8> = m[i.min(j)..i.max(j)].to_vec();
                m.splice(i..i, chunk);
            }
            _ => m[i] = m[i].to_ascii_uppercase(),
        }
    }
    m
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
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    // Bounded: 6,000 datagrams, ~60 ms of pacing in all.
    for i in 0..6000 {
        let base = &seeds[rng.below(seeds.len())];
        let mut m = mutate(&mut rng, base);
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
        if i % 100 == 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
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
    c.send(b"\x00\x01garbage\r\n\r\n").await;
    assert!(c.recv_nothing(200).await);
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
    c.send(no_call_id.as_bytes()).await;
    // Fails parsing (two spaces in the request line), but its headers could address an answer.
    let bad_line = format!(
        "ACK  sip:1001@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>;tag=2\r\nCall-ID: x\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        branch()
    );
    c.send(bad_line.as_bytes()).await;
    assert!(c.recv_nothing(300).await, "an ACK must never be answered");
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
    // A panic in a receive task would not fail this test by itself (the other receiver keeps
    // answering): count them.
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
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
    let mut rng = XorShift(0xfeed_5eed_0123_4567);
    // Bounded: 4,000 datagrams with a little pacing.
    for i in 0..4000 {
        let seed = &seeds[rng.below(seeds.len())];
        let m = mutate(&mut rng, seed);
        let _ = junk.send_to(&m, s.udp).await;
        if i % 100 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
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
    assert!(
        bob.ua.next_request_within(300).await.is_none(),
        "nothing malformed reaches the phone"
    );
}
