//! Issue 15: a PUBLISH to a presentity with 1,000 watchers is answered without waiting for
//! its fan-out. The NOTIFYs are decided under the presentity's lock (CSeq, version, order) but
//! built and rendered by the outbox, chunk by chunk, after the request path is done; the
//! outbox lets a ready answer go first. Checked by the order on the wire (one socket is the
//! publisher and every watcher, so it sees the server's sends in order), not by wall time:
//! the `200` arrives before the first NOTIFY, and every watcher still gets the new state with
//! the next CSeq and version. When the publication is already stored the fan-out is handed to
//! the outbox only once the `200` has left, so this holds for a fan-out of any size; while it
//! is still being committed the fan-out goes out, and the `200` waits for the commit only.

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

/// `watchers` subscriptions to 1001 from one socket, each initial NOTIFY answered, so that
/// nothing is in flight when the PUBLISH comes; with the CSeq of each initial NOTIFY.
async fn subscribed(s: &TestServer, watchers: usize) -> (Wire, u16, HashMap<String, u32>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // This one socket stands for every watcher's phone, each of which would receive one
    // NOTIFY: it gets a buffer for a whole fan-out (the server sends up to a thousand
    // before it lets anything else run, this test included), as the benchmark's sipp does.
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let w = Wire {
        sock,
        server: s.udp,
    };
    let port = w.sock.local_addr().unwrap().port();
    // 50 at a time (socket buffers).
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
    (w, port, cseq)
}

async fn publish_is_answered_before_its_fanout(watchers: usize) {
    let s = server(CONFIG).await;
    let (w, port, cseq) = subscribed(&s, watchers).await;

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

/// A presence store whose writes, while `holding`, are acknowledged only when the test
/// releases them: a commit that takes its time.
struct HeldStore {
    inner: std::sync::Arc<busylamp::storage::MemoryStore>,
    holding: std::sync::atomic::AtomicBool,
    held: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<Result<(), StorageError>>>>,
}

use busylamp::storage::{PresenceStore, StorageError};

impl PresenceStore for HeldStore {
    fn load_publications(&self) -> Result<Vec<busylamp::storage::PublicationRecord>, StorageError> {
        self.inner.load_publications()
    }

    fn load_subscriptions(
        &self,
    ) -> Result<Vec<busylamp::storage::SubscriptionRecord>, StorageError> {
        self.inner.load_subscriptions()
    }

    fn write(&self, writes: Vec<busylamp::storage::PresenceWrite>) -> busylamp::storage::Durable {
        let written = self.inner.write(writes);
        if !self.holding.load(std::sync::atomic::Ordering::SeqCst) {
            return written;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.held.lock().unwrap().push(tx);
        rx
    }
}

/// While the publication is being committed, its fan-out goes out (the NOTIFYs wait for no
/// disk write of theirs), but the PUBLISH is answered only once the commit is done:
/// acknowledged means durable. The answer then leaves between two steps of the fan-out, or
/// after it when the fan-out was done first.
#[tokio::test]
async fn rfc3903_a_publish_is_answered_only_once_stored_while_its_fanout_goes_out() {
    use busylamp::storage::MemoryStore;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    const W: usize = 100;
    let cfg = busylamp::config::Config::from_toml(CONFIG, "test.toml").unwrap();
    let mem = Arc::new(MemoryStore::new());
    let held = Arc::new(HeldStore {
        inner: mem.clone(),
        holding: std::sync::atomic::AtomicBool::new(false),
        held: std::sync::Mutex::new(Vec::new()),
    });
    let s = server_with_presence_store(cfg, mem, held.clone()).await;
    let (w, port, cseq) = subscribed(&s, W).await;

    held.holding.store(true, Ordering::SeqCst);
    w.send(&publish(port)).await;
    // Every watcher hears the new state (which also proves the PUBLISH was processed), and
    // no answer comes while the write is held.
    let mut notified = HashMap::new();
    while notified.len() < W {
        match w.next().await {
            Message::Response(r) => {
                panic!("answered {} before the publication was stored", r.status)
            }
            Message::Request(n) => {
                assert_eq!(n.method, "NOTIFY");
                let call_id = n.call_id().unwrap().to_string();
                assert!(body(&n).contains("<basic>open</basic>"), "{}", body(&n));
                assert_eq!(cseq_of(&n), cseq[&call_id] + 1, "{call_id}");
                notified.insert(call_id, n);
            }
        }
    }
    // The commit ends: now the 200 (NOTIFY retransmissions may come first).
    let held_writes: Vec<_> = std::mem::take(&mut *held.held.lock().unwrap());
    assert_eq!(held_writes.len(), 1, "the publication is the one write");
    for tx in held_writes {
        let _ = tx.send(Ok(()));
    }
    loop {
        match w.next().await {
            Message::Response(r) => {
                assert_eq!(cseq_method(&r), "PUBLISH");
                assert_eq!(r.status, 200, "{}", r.reason);
                break;
            }
            Message::Request(n) => {
                assert_eq!(n.method, "NOTIFY", "only retransmissions before the 200");
                assert!(notified.contains_key(n.call_id().unwrap()));
            }
        }
    }
    for n in notified.values() {
        w.answer(n).await;
    }
}
