//! The Prometheus endpoint (`[control] metrics`): a scrape over TCP shows the counters and
//! gauges move with what the SIP side did (REGISTERs, SUBSCRIBEs and their NOTIFYs, one
//! failing and one refused, a call through the proxy), and the store's flush histogram; with
//! the key unset the server opens no port for it.

mod common;

use busylamp::config::Config;
use busylamp::server::{start, ServerHandle, Stores};
use busylamp::storage::SledStore;
use busylamp::transport::Proto;
use common::phone::{Phone, CALLS};
use common::ua::Ua;
use common::watcher::Watcher;
use common::{branch, processed_since, wire, NONCE_KEY};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tests compare the TCP ports this process listens on before and after a start: one at
/// a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Sled {
    handle: ServerHandle,
    _dir: TempDir,
}

/// Removed when the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The office of [`CALLS`] on a sled store in a fresh directory (so that flushes are real
/// and timed), with `control` as its `[control]` section.
async fn office(name: &str, control: &str) -> Sled {
    let dir = std::env::temp_dir().join(format!("busylamp-metrics-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = CALLS.replace(
        "data_dir = \"/nonexistent-unused-by-memory-store\"",
        &format!("data_dir = {:?}", dir.display().to_string()),
    ) + control;
    let cfg = Config::from_toml(&text, "test.toml").expect("test config");
    let store = Arc::new(SledStore::open(&dir.join("db"), Duration::ZERO).unwrap());
    let handle = start(
        &cfg,
        Stores {
            bindings: store.clone(),
            presence: store.clone(),
            dialogs: store,
            users: None,
            nonce_key: Some(NONCE_KEY),
        },
    )
    .await
    .expect("server starts");
    Sled {
        handle,
        _dir: TempDir(dir),
    }
}

/// TCP ports this process listens on (from /proc: its socket inodes in LISTEN state).
fn listening_ports() -> BTreeSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is f[1] ("0100007F:1F90"), st f[3] (0A = LISTEN), inode f[9].
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// One scrape: `GET /metrics` over a fresh connection; the status line, the headers and
/// the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut raw))
        .await
        .expect("the endpoint answers within 5 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

/// The samples of a scrape: `name{labels}` → value (HELP and TYPE lines left out).
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, headers, body) = get(addr, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// A `dialog` SUBSCRIBE of 1003 to `presentity` from `ua`, answered 200.
async fn subscribe(ua: &mut Ua, presentity: &str, call_id: &str) {
    let sub = wire(&format!(
        "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <sip:1003@example.test>;tag={call_id}
        To: <sip:{presentity}@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1003@127.0.0.1:{p}>
        Event: dialog
        Accept: application/dialog-info+xml
        Expires: 3600
        ",
        p = ua.port(),
        b = branch()
    ));
    let r = ua.request(&sub).await;
    assert_eq!(r.status, 200, "SUBSCRIBE: {}", r.reason);
}

#[tokio::test]
async fn metrics_follow_registrations_subscriptions_notifies_and_a_call() {
    let _one = SERIAL.lock().await;
    let before = listening_ports();
    let s = office("on", "[control]\nmetrics = \"127.0.0.1:0\"\n").await;
    let addr = s.handle.metrics_addr().expect("metrics endpoint");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let sip_tcp = s.handle.local_addr(Proto::Tcp).unwrap().port();
    let opened: BTreeSet<u16> = listening_ports().difference(&before).copied().collect();
    assert_eq!(opened, BTreeSet::from([sip_tcp, addr.port()]));
    let udp = s.handle.local_addr(Proto::Udp).unwrap();
    let core = s.handle.core.clone();

    let m = scrape(addr).await;
    assert_eq!(value(&m, "busylamp_bindings"), 0.0);
    assert_eq!(value(&m, "busylamp_notifies_total{result=\"sent\"}"), 0.0);
    assert_eq!(
        value(&m, "busylamp_subscriptions{package=\"dialog\"}"),
        0.0,
        "every package is listed, at 0: {m:?}"
    );
    assert!(m.contains_key("busylamp_subscriptions{package=\"dialog\"}"));
    assert!(m.contains_key("busylamp_transactions{kind=\"server\"}"));

    // Two phones register.
    let mut alice = Phone::registered(udp, "1001", "a").await;
    let mut bob = Phone::registered(udp, "1002", "desk").await;
    let m = scrape(addr).await;
    assert_eq!(value(&m, "busylamp_bindings"), 2.0);
    assert_eq!(
        value(
            &m,
            "busylamp_requests_total{method=\"REGISTER\",status=\"200\"}"
        ),
        2.0
    );
    assert_eq!(
        value(&m, "busylamp_requests_received_total{method=\"REGISTER\"}"),
        2.0
    );
    // Each REGISTER was a flush (written before its 200).
    let flushes = value(&m, "busylamp_storage_flush_seconds_count");
    assert!(flushes >= 2.0, "{m:?}");
    assert_eq!(
        value(&m, "busylamp_storage_flush_seconds_bucket{le=\"+Inf\"}"),
        flushes
    );
    assert!(value(&m, "busylamp_storage_flush_seconds_sum") > 0.0);

    // A BLF key watches 1002 (its first NOTIFY answered 200); a second watcher's first
    // NOTIFY fails (503: retried later), a third's is refused (481: the subscription ends).
    let mut lamp = Watcher::new(udp, "1002").await;
    let mut failing = Ua::new(udp).await;
    subscribe(&mut failing, "1001", "metrics-503").await;
    let n = failing.notify_unanswered().await;
    let mark = core.messages_received();
    failing.answer(&n, 503).await;
    processed_since(&core, mark, 1).await;
    let mut refusing = Ua::new(udp).await;
    subscribe(&mut refusing, "1001", "metrics-481").await;
    let n = refusing.notify_unanswered().await;
    let mark = core.messages_received();
    refusing.answer(&n, 481).await;
    processed_since(&core, mark, 1).await;
    let m = scrape(addr).await;
    assert_eq!(
        value(
            &m,
            "busylamp_requests_total{method=\"SUBSCRIBE\",status=\"200\"}"
        ),
        3.0
    );
    assert_eq!(value(&m, "busylamp_notifies_total{result=\"sent\"}"), 3.0);
    assert_eq!(
        value(&m, "busylamp_notifies_total{result=\"retried\"}"),
        1.0
    );
    assert_eq!(value(&m, "busylamp_notifies_total{result=\"failed\"}"), 1.0);
    // The refused one is gone; the failing one stays (its state is sent again later).
    assert_eq!(value(&m, "busylamp_subscriptions{package=\"dialog\"}"), 2.0);
    let sent_before_call = value(&m, "busylamp_notifies_total{result=\"sent\"}");

    // 1001 calls 1002, who answers; the lamp lights.
    let invite = alice.invite("1002", "metrics-call").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 180, "b").await;
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut leg = alice.ack(&mut bob, &invite, &ok).await;
    lamp.until(Some(
        busylamp::sip::body::dialog_info::DialogState::Confirmed,
    ))
    .await;
    let m = scrape(addr).await;
    assert_eq!(value(&m, "busylamp_calls"), 1.0);
    assert!(value(&m, "busylamp_lamps") >= 1.0, "{m:?}");
    assert!(value(&m, "busylamp_publications{package=\"dialog\"}") >= 1.0);
    assert_eq!(
        value(
            &m,
            "busylamp_requests_total{method=\"INVITE\",status=\"200\"}"
        ),
        1.0
    );
    // Provisional answers are not counted: a request counts once, with its final status.
    assert_eq!(
        value(
            &m,
            "busylamp_requests_total{method=\"INVITE\",status=\"180\"}"
        ),
        0.0
    );
    assert_eq!(
        value(&m, "busylamp_requests_received_total{method=\"ACK\"}"),
        1.0
    );
    assert!(value(&m, "busylamp_notifies_total{result=\"sent\"}") > sent_before_call);

    alice.hang_up(&mut bob, &mut leg, "b").await;
    lamp.dark().await;
    let m = scrape(addr).await;
    assert_eq!(
        value(&m, "busylamp_requests_total{method=\"BYE\",status=\"200\"}"),
        1.0
    );

    // Anything but /metrics: 404; a POST: 405.
    let (status, _, _) = get(addr, "/").await;
    assert!(status.contains(" 404 "), "{status}");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    // An over-long request head is refused, and the endpoint still serves.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = c.write_all(huge.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut raw)).await;
    assert!(
        !String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"),
        "a 64 KiB header was read"
    );
    assert!(scrape(addr).await.contains_key("busylamp_bindings"));
    s.handle.shutdown().await;
}

#[tokio::test]
async fn without_the_key_no_port_is_opened_for_metrics() {
    let _one = SERIAL.lock().await;
    assert_eq!(Config::default().control.metrics, None, "off by default");
    let before = listening_ports();
    let s = office("off", "").await;
    assert_eq!(s.handle.metrics_addr(), None);
    // The server is up and answers: only its SIP TCP socket is new.
    let udp = s.handle.local_addr(Proto::Udp).unwrap();
    let _ = Phone::registered(udp, "1001", "a").await;
    let sip_tcp = s.handle.local_addr(Proto::Tcp).unwrap().port();
    let opened: BTreeSet<u16> = listening_ports().difference(&before).copied().collect();
    assert_eq!(opened, BTreeSet::from([sip_tcp]));
    s.handle.shutdown().await;
}

#[tokio::test]
async fn a_taken_metrics_port_stops_the_start_naming_the_key() {
    let _one = SERIAL.lock().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("busylamp-metrics-taken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = CALLS.replace(
        "data_dir = \"/nonexistent-unused-by-memory-store\"",
        &format!("data_dir = {:?}", dir.display().to_string()),
    ) + &format!("[control]\nmetrics = \"127.0.0.1:{port}\"\n");
    let cfg = Config::from_toml(&text, "test.toml").unwrap();
    let store = Arc::new(busylamp::storage::MemoryStore::new());
    let e = match start(
        &cfg,
        Stores {
            bindings: store.clone(),
            presence: store.clone(),
            dialogs: store,
            users: None,
            nonce_key: Some(NONCE_KEY),
        },
    )
    .await
    {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("[control] metrics") && e.contains(&port.to_string()),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
