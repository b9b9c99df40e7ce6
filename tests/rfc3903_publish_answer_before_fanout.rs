//! Issue 15: a PUBLISH to a presentity with 1,000 watchers is answered without waiting for
//! its fan-out. The NOTIFYs are decided under the presentity's lock (CSeq, version, order) but
//! built and rendered by the outbox, chunk by chunk, after the request path is done; the
//! outbox lets a ready answer go first. Checked by the order on the wire (one socket is the
//! publisher and every watcher, so it sees the server's sends in order), not by wall time:
//! the `200` arrives before the first NOTIFY, and every watcher still gets the new state with
//! the next CSeq and version. The fan-out is handed to the outbox only once the `200` has
//! left, so this holds for a fan-out of any size, one chunk or many.

mod common;
use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::{HasHeaders, HeaderName, Message, Request};
use common::ua::*;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

const WATCHERS: usize = 1_000;

const CONFIG: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
coalesce_ms = 0
max_subscriptions_per_user = 2000
[[users]]
name = "1001"
password = "pw1001"
"#;

/// Bounded reads from the one socket, in arrival order.
struct Wire {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Wire {
    async fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).await.unwrap();
    }

    async fn next(&self) -> Message {
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
            .await
            .expect("a message within 5 s")
            .unwrap();
        parse_message(&buf[..n], &Limits::default()).expect("parseable")
    }

    async fn answer(&self, req: &Request) {
        let mut r = req.response(200, "OK", Some("w"));
        r.headers.0.retain(|h| h.kind != HeaderName::ContentLength);
        self.send(&r.to_bytes()).await;
    }
}

fn subscribe(port: u16, i: usize) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:w{i}@example.test>;tag=t{i}
        To: <sip:1001@example.test>
        Call-ID: watch-{i}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:w{i}@127.0.0.1:{port}>
        Event: presence
        Expires: 600
        ",
        b = branch()
    ))
}

fn publish(port: u16) -> Vec<u8> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\">\n <tuple id=\"a\">\n  <status><basic>open</basic></status>\n </tuple>\n</presence>\n";
    wire(&format!(
        "PUBLISH sip:1001@example.test SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={b}\nMax-Forwards: 70\nFrom: <sip:1001@example.test>;tag=p1\nTo: <sip:1001@example.test>\nCall-ID: pub-1001\nCSeq: 1 PUBLISH\nEvent: presence\nExpires: 600\nContent-Type: application/pidf+xml\n\n{body}",
        b = branch()
    ))
}

#[tokio::test]
async fn rfc3903_the_200_to_a_publish_does_not_wait_for_its_thousand_notifies() {
    publish_is_answered_before_its_fanout(WATCHERS).await;
}

/// A fan-out smaller than one outbox chunk: the outbox would send it in one go, without the
/// yield a longer one makes first, so only holding it back until the `200` has left keeps
/// the answer ahead.
#[tokio::test]
async fn rfc3903_the_200_to_a_publish_leaves_before_a_small_fanout_too() {
    publish_is_answered_before_its_fanout(10).await;
}

async fn publish_is_answered_before_its_fanout(watchers: usize) {
    let s = server(CONFIG).await;
    let w = Wire {
        sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        server: s.udp,
    };
    let port = w.sock.local_addr().unwrap().port();

    // 1,000 watchers on the one socket, 50 at a time (socket buffers); each initial NOTIFY
    // answered, so that nothing is in flight when the PUBLISH comes.
    let mut cseq: HashMap<String, u32> = HashMap::new();
    for start in (0..watchers).step_by(50) {
        let n = 50.min(watchers - start);
        for i in start..start + n {
            w.send(&subscribe(port, i)).await;
        }
        let (mut ok, mut notified) = (0, 0);
        while ok < n || notified < n {
            match w.next().await {
                Message::Response(r) => {
                    assert_eq!(r.status, 200, "{}", r.reason);
                    ok += 1;
                }
                Message::Request(n) => {
                    assert_eq!(n.method, "NOTIFY");
                    cseq.insert(n.call_id().unwrap().to_string(), cseq_of(&n));
                    w.answer(&n).await;
                    notified += 1;
                }
            }
        }
    }
    assert_eq!(cseq.len(), watchers);

    w.send(&publish(port)).await;
    // Everything the PUBLISH causes, in the order it arrives. The NOTIFYs are not answered
    // before the 200 is seen (answers would be more input for the server to read first).
    let mut order = Vec::new();
    let mut notifies = Vec::new();
    while notifies.len() < watchers || !order.contains(&"200") {
        match w.next().await {
            Message::Response(r) => {
                assert_eq!(cseq_method(&r), "PUBLISH");
                assert_eq!(r.status, 200, "{}", r.reason);
                order.push("200");
            }
            Message::Request(n) => {
                assert_eq!(n.method, "NOTIFY");
                order.push("NOTIFY");
                notifies.push(n);
            }
        }
    }
    let before = order.iter().position(|m| *m == "200").unwrap();
    assert_eq!(
        before, 0,
        "the 200 left after {before} of the {watchers} NOTIFYs: it waited for the fan-out"
    );

    // The fan-out itself is whole and in order: every watcher once, with the new state and
    // the CSeq after its initial NOTIFY's.
    let mut seen = HashMap::new();
    for n in &notifies {
        let call_id = n.call_id().unwrap().to_string();
        assert!(body(n).contains("<basic>open</basic>"), "{}", body(n));
        assert_eq!(cseq_of(n), cseq[&call_id] + 1, "{call_id}");
        assert!(seen.insert(call_id, ()).is_none(), "one NOTIFY per watcher");
        w.answer(n).await;
    }
    assert_eq!(seen.len(), watchers);
}

fn cseq_method(r: &impl HasHeaders) -> String {
    r.headers()
        .get(HeaderName::CSeq)
        .and_then(|c| c.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string()
}
