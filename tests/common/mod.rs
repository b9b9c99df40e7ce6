//! Test harness: a server started in-process on 127.0.0.1:0 with the in-memory store, and
//! clients that speak raw SIP bytes over UDP and TCP.
#![allow(dead_code)]

use busylamp::config::Config;
use busylamp::server::{start, ServerHandle, Stores};
use busylamp::sip::digest::{self, Algorithm};
use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::{HeaderName, Message, Response};
use busylamp::storage::{BindingStore, MemoryStore};
use busylamp::transport::Proto;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const NONCE_KEY: [u8; 32] = [42; 32];

pub const BASE_CONFIG: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[registrar]
min_expires = 60
max_expires = 3600
default_expires = 3600
max_contacts = 5
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
"#;

/// No digest: every request from 127.0.0.0/8 is trusted, for REGISTER, SUBSCRIBE and PUBLISH
/// too (named in `trusted_for`; the default trusts a source for calls only).
pub const TRUSTED: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
"#;

pub struct TestServer {
    pub handle: ServerHandle,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub store: Arc<MemoryStore>,
    pub cfg: Config,
}

pub async fn server(config_toml: &str) -> TestServer {
    let cfg = Config::from_toml(config_toml, "test.toml").expect("test config");
    let store = Arc::new(MemoryStore::new());
    server_with_store(cfg, store).await
}

pub async fn server_with_store(cfg: Config, store: Arc<MemoryStore>) -> TestServer {
    server_with_users(cfg, store, None).await
}

/// As [`server_with_store`], with users from a user file as well as from the config.
pub async fn server_with_users(
    cfg: Config,
    store: Arc<MemoryStore>,
    users: Option<busylamp::storage::UserFile>,
) -> TestServer {
    let presence = store.clone() as Arc<dyn busylamp::storage::PresenceStore>;
    server_with_stores(cfg, store, presence, users).await
}

/// As [`server_with_store`], with presence state kept by `presence` (a store that fails or
/// holds its writes on the test's command, usually wrapping `store`).
pub async fn server_with_presence_store(
    cfg: Config,
    store: Arc<MemoryStore>,
    presence: Arc<dyn busylamp::storage::PresenceStore>,
) -> TestServer {
    server_with_stores(cfg, store, presence, None).await
}

async fn server_with_stores(
    cfg: Config,
    store: Arc<MemoryStore>,
    presence: Arc<dyn busylamp::storage::PresenceStore>,
    users: Option<busylamp::storage::UserFile>,
) -> TestServer {
    let handle = start(
        &cfg,
        Stores {
            bindings: store.clone() as Arc<dyn BindingStore>,
            presence,
            dialogs: store.clone() as Arc<dyn busylamp::storage::DialogStore>,
            users,
            nonce_key: Some(NONCE_KEY),
        },
    )
    .await
    .expect("server starts");
    TestServer {
        udp: handle.local_addr(Proto::Udp).expect("udp"),
        tcp: handle.local_addr(Proto::Tcp).expect("tcp"),
        handle,
        store,
        cfg,
    }
}

impl TestServer {
    /// The server's count of messages read from the network. Take it just before sending
    /// the input of a check that something does NOT happen, for
    /// [`TestServer::assert_processed_then_silent`].
    pub fn mark(&self) -> u64 {
        self.handle.core.messages_received()
    }

    /// Asserts that the server read at least `n` messages since `mark` and handled them, and
    /// only then that `silent` (a check that nothing arrived within some time: `no_notify`,
    /// `recv_nothing`, `next_request_within(..).is_none()`) holds. Without the first half a
    /// check that nothing came back passes against a dead server, or before the server ever
    /// saw the input.
    pub async fn assert_processed_then_silent(
        &self,
        mark: u64,
        n: u64,
        silent: impl std::future::Future<Output = bool>,
        what: &str,
    ) {
        processed_since(&self.handle.core, mark, n).await;
        assert!(silent.await, "{what}");
    }
}

/// Waits (at most 5,000 polls, 1 ms apart once the first ones found nothing) until `core` has
/// read at least `n` messages since `mark`; panics otherwise. The receive loops hand each
/// message to the core inline (no task per message) and the tests run on one thread, so a
/// message that was counted has also been handled once this task runs again.
pub async fn processed_since(core: &busylamp::server::Core, mark: u64, n: u64) {
    assert_eq!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread,
        "a count of messages read proves them handled only on a one-thread runtime"
    );
    for poll in 0..5_000 {
        if core.messages_received() >= mark + n {
            return;
        }
        if poll < 100 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    panic!(
        "the server read {} of the {n} messages sent to it: it never handled the input",
        core.messages_received() - mark
    );
}

/// Whether the server counts a datagram as a message read (`messages_received`): keep-alives
/// (nothing but CR, LF and NUL, or nothing at all) are skipped unread.
pub fn counts_as_message(datagram: &[u8]) -> bool {
    datagram.iter().any(|&b| !matches!(b, b'\r' | b'\n' | 0))
}

/// Every config we ship: the valid fixtures, the profiles and the packaged config.
pub fn shipped_configs() -> Vec<std::path::PathBuf> {
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir("fixtures/config/valid")
        .unwrap()
        .chain(std::fs::read_dir("profiles").unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.push("packaging/busylamp.toml".into());
    paths.sort();
    paths
}

/// Turns a readable multi-line literal into wire form: LF → CRLF, Content-Length fixed.
pub fn wire(text: &str) -> Vec<u8> {
    let text = text.trim_start_matches('\n');
    let (head, body) = match text.find("\n\n") {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text.trim_end_matches('\n'), ""),
    };
    let mut out = String::new();
    for line in head.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.to_ascii_lowercase().starts_with("content-length:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    out.push_str(body);
    out.into_bytes()
}

pub fn parse_response(bytes: &[u8]) -> Response {
    match parse_message(bytes, &Limits::default()) {
        Ok(Message::Response(r)) => r,
        other => panic!(
            "not a response: {other:?}\n{}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

pub struct Udp {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Udp {
    pub async fn new(server: SocketAddr) -> Udp {
        Udp {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    pub async fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).await.unwrap();
    }

    pub async fn recv(&self) -> Response {
        let mut buf = vec![0u8; 65536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        parse_response(&buf[..n])
    }

    /// Waits briefly and says whether anything arrived (for "must be dropped" checks).
    pub async fn recv_nothing(&self, ms: u64) -> bool {
        let mut buf = vec![0u8; 65536];
        tokio::time::timeout(Duration::from_millis(ms), self.sock.recv_from(&mut buf))
            .await
            .is_err()
    }

    /// Sends a final-response-producing request, skipping provisional responses.
    pub async fn request(&self, bytes: &[u8]) -> Response {
        self.send(bytes).await;
        loop {
            let r = self.recv().await;
            if r.status >= 200 {
                return r;
            }
        }
    }
}

pub struct Tcp {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Tcp {
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    pub fn over(stream: TcpStream) -> Tcp {
        Tcp {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn connect(server: SocketAddr) -> Tcp {
        Tcp {
            stream: TcpStream::connect(server).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// A connection from another host: `ip` is a loopback address such as 127.0.0.2.
    pub async fn connect_from(ip: &str, server: SocketAddr) -> Tcp {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        Tcp {
            stream: sock.connect(server).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Sends a CRLF keep-alive (RFC 5626 §4.4.1) and reads the pong, proving the connection
    /// is open and served. False if the server closed it.
    pub async fn ping(&mut self) -> bool {
        if self.stream.write_all(b"\r\n\r\n").await.is_err() {
            return false;
        }
        let mut pong = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(5), self.stream.read_exact(&mut pong)).await
        {
            Ok(Ok(_)) => &pong == b"\r\n",
            Ok(Err(_)) => false,
            Err(_) => panic!("no pong and no close within 5 s"),
        }
    }

    /// Whether the server closes the connection within `ms` (reads end, or are reset),
    /// skipping anything it sends first.
    pub async fn closed_within(&mut self, ms: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn recv(&mut self) -> Response {
        match self.recv_message().await {
            Message::Response(r) => r,
            Message::Request(r) => panic!("expected a response, got {}", r.method),
        }
    }

    /// The next message of either kind on the connection, within 5 s.
    pub async fn recv_message(&mut self) -> Message {
        self.recv_message_within(5000)
            .await
            .expect("a message within 5 s")
    }

    /// The next message of either kind within `ms`, or `None` (CRLF keep-alives skipped).
    pub async fn recv_message_within(&mut self, ms: u64) -> Option<Message> {
        use busylamp::sip::parse::{frame_stream, Frame};
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match frame_stream(&self.buf, &Limits::default()) {
                Ok(Frame::Message(n)) => {
                    let msg: Vec<u8> = self.buf.drain(..n).collect();
                    return Some(parse_message(&msg, &Limits::default()).expect("a SIP message"));
                }
                Ok(Frame::KeepAlive { len, .. }) => {
                    self.buf.drain(..len);
                    continue;
                }
                _ => {}
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .ok()?
                .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes).await;
        loop {
            let r = self.recv().await;
            if r.status >= 200 {
                return r;
            }
        }
    }
}

static BRANCH: AtomicU32 = AtomicU32::new(1);

pub fn branch() -> String {
    format!("z9hG4bKtest{}", BRANCH.fetch_add(1, Ordering::Relaxed))
}

/// A REGISTER for `user` from a UA at 127.0.0.1:`port` with the given extra header lines.
pub fn register(user: &str, port: u16, call_id: &str, cseq: u32, extra: &str) -> Vec<u8> {
    wire(
        &format!(
            "REGISTER sip:example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:{user}@example.test>;tag=ft{cseq}
        To: <sip:{user}@example.test>
        Call-ID: {call_id}
        CSeq: {cseq} REGISTER
        User-Agent: busylamp-test
        {extra}
        ",
            b = branch()
        )
        .replace("\n        \n", "\n"),
    )
}

/// Parses a `Digest ...` challenge into (realm, nonce, algorithm).
pub fn challenge_params(value: &str) -> (String, String, String) {
    let get = |k: &str| -> String {
        let pat = format!("{k}=");
        let i = value.find(&pat).unwrap_or_else(|| panic!("{k} in {value}")) + pat.len();
        let rest = &value[i..];
        if let Some(r) = rest.strip_prefix('"') {
            r[..r.find('"').unwrap()].to_string()
        } else {
            rest.split([',', ' ']).next().unwrap().to_string()
        }
    };
    let alg = if value.contains("algorithm=") {
        get("algorithm")
    } else {
        "MD5".into()
    };
    (get("realm"), get("nonce"), alg)
}

/// An Authorization header value answering `challenge` for `user`/`password`.
pub fn authorization(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let (realm, nonce, alg_name) = challenge_params(challenge);
    authorization_with(&realm, &nonce, &alg_name, user, password, method, uri, nc)
}

#[allow(clippy::too_many_arguments)]
pub fn authorization_with(
    realm: &str,
    nonce: &str,
    alg_name: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
) -> String {
    let alg = Algorithm::from_name(alg_name).expect("algorithm");
    let creds = digest::Credentials {
        username: user.into(),
        realm: realm.into(),
        nonce: nonce.into(),
        uri: uri.into(),
        algorithm: Some(alg_name.into()),
        cnonce: Some("0a4f113b".into()),
        nc: Some(format!("{nc:08x}")),
        qop: Some("auth".into()),
        ..Default::default()
    };
    let ha1 = digest::ha1(alg, user, realm, password);
    let response = digest::response(alg, &ha1, method, &creds);
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm={alg_name}, cnonce=\"0a4f113b\", nc={nc:08x}, qop=auth"
    )
}

/// REGISTERs `user` with digest auth (first challenge offered: MD5 by default) and
/// returns the final response.
pub async fn register_authed(
    c: &Udp,
    user: &str,
    password: &str,
    call_id: &str,
    cseq: u32,
    extra: &str,
) -> Response {
    let r = c
        .request(&register(user, c.port(), call_id, cseq, extra))
        .await;
    assert_eq!(
        r.status, 401,
        "challenge expected, got {} {}",
        r.status, r.reason
    );
    let ch = r
        .headers
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_string();
    let auth = authorization(&ch, user, password, "REGISTER", "sip:example.test", 1);
    let extra = format!("{extra}\n        Authorization: {auth}");
    c.request(&register(user, c.port(), call_id, cseq + 1, &extra))
        .await
}

/// Contact values of a 200, as (uri, expires).
pub fn contacts(r: &Response) -> Vec<(String, u32)> {
    use busylamp::sip::{ContactValue, HasHeaders};
    r.contacts()
        .unwrap()
        .into_iter()
        .filter_map(|c| match c {
            ContactValue::Addr(na) => Some((
                na.uri.to_string(),
                na.params
                    .value("expires")
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(0),
            )),
            ContactValue::Star => None,
        })
        .collect()
}
/// An OPTIONS from a UA at 127.0.0.1:`port` (a probe: every server answers it).
pub fn options(port: u16) -> Vec<u8> {
    let b = branch();
    wire(&format!(
        "OPTIONS sip:example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:probe@example.test>;tag=1
        To: <sip:example.test>
        Call-ID: probe-{b}
        CSeq: 1 OPTIONS
        "
    ))
}

/// Whether a server (a real binary starting up) answers OPTIONS within `within`.
pub async fn answers_options_within(server: SocketAddr, within: Duration) -> bool {
    let c = Udp::new(server).await;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        c.send(&options(c.port())).await;
        if !c.recv_nothing(200).await {
            return true;
        }
    }
    false
}

pub mod authed;
pub mod binary;
pub mod bla;
pub mod mutate;
pub mod peer;
pub mod phone;
pub mod ua;
pub mod watcher;
