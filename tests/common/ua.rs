//! A raw-bytes SIP user agent for presence tests: sends SUBSCRIBE/PUBLISH, receives both
//! responses and the NOTIFYs the server sends, and answers NOTIFYs itself.

use super::Tcp;
use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::{HasHeaders, HeaderName, Message, Request, Response};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

/// How a UA reaches the server: its own UDP socket, or one TCP connection (RFC 3261 §18: the
/// server answers and sends its requests over the connection).
enum Link {
    Udp(UdpSocket),
    Tcp(Box<Tcp>),
}

pub struct Ua {
    link: Link,
    pub server: SocketAddr,
    requests: VecDeque<Request>,
    responses: VecDeque<Response>,
}

impl Ua {
    pub async fn new(server: SocketAddr) -> Ua {
        Ua::bind("127.0.0.1", server).await
    }

    /// A UA on another loopback address (127.0.0.2 for a trusted PBX, for example).
    pub async fn bind(ip: &str, server: SocketAddr) -> Ua {
        Ua::with(
            Link::Udp(UdpSocket::bind(format!("{ip}:0")).await.unwrap()),
            server,
        )
    }

    /// A UA with one TCP connection to the server's TCP socket `server`.
    pub async fn tcp(server: SocketAddr) -> Ua {
        Ua::with(Link::Tcp(Box::new(Tcp::connect(server).await)), server)
    }

    /// A TCP UA as many desk phones are: it listens on one port and connects to the server
    /// from that same port (SO_REUSEPORT), so the address of its flow accepts connections.
    pub async fn tcp_listening(server: SocketAddr) -> (Ua, tokio::net::TcpListener) {
        let listening = tokio::net::TcpSocket::new_v4().unwrap();
        listening.set_reuseport(true).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = listening.local_addr().unwrap();
        let listener = listening.listen(16).unwrap();
        let connecting = tokio::net::TcpSocket::new_v4().unwrap();
        connecting.set_reuseport(true).unwrap();
        connecting.bind(at).unwrap();
        let stream = connecting.connect(server).await.unwrap();
        (
            Ua::with(Link::Tcp(Box::new(Tcp::over(stream))), server),
            listener,
        )
    }

    /// Closes this UA's TCP connection and returns once the server closed its side too.
    pub async fn close_tcp(&mut self) {
        let Link::Tcp(t) = &mut self.link else {
            panic!("a UDP user agent has no connection")
        };
        tokio::io::AsyncWriteExt::shutdown(&mut t.stream)
            .await
            .unwrap();
        assert!(
            t.closed_within(5000).await,
            "the server kept the connection"
        );
    }

    /// Takes the next connection made to `listener` (by the server) as this UA's link.
    pub async fn accept_tcp(&mut self, listener: &tokio::net::TcpListener) {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the server opens a connection within 5 s")
            .unwrap();
        self.link = Link::Tcp(Box::new(Tcp::over(stream)));
    }

    fn with(link: Link, server: SocketAddr) -> Ua {
        Ua {
            link,
            server,
            requests: VecDeque::new(),
            responses: VecDeque::new(),
        }
    }

    /// The UDP socket, for a test that takes over the wire itself.
    pub fn into_udp_socket(self) -> UdpSocket {
        match self.link {
            Link::Udp(s) => s,
            Link::Tcp(_) => panic!("a TCP user agent has no UDP socket"),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        match &self.link {
            Link::Udp(s) => s.local_addr().unwrap(),
            Link::Tcp(t) => t.stream.local_addr().unwrap(),
        }
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// `UDP` or `TCP`, for our Via.
    pub fn transport(&self) -> &'static str {
        match self.link {
            Link::Udp(_) => "UDP",
            Link::Tcp(_) => "TCP",
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(bytes, self.server).await.unwrap();
            }
            Link::Tcp(t) => t.send(bytes).await,
        }
    }

    /// The next message within `ms`, or `None`.
    async fn read(&mut self, ms: u64) -> Option<()> {
        let msg = match &mut self.link {
            Link::Udp(s) => {
                let mut buf = vec![0u8; 65536];
                let (n, _) = tokio::time::timeout(Duration::from_millis(ms), s.recv_from(&mut buf))
                    .await
                    .ok()?
                    .unwrap();
                parse_message(&buf[..n], &Limits::default())
                    .unwrap_or_else(|e| panic!("unparseable from server: {e:?}"))
            }
            Link::Tcp(t) => t.recv_message_within(ms).await?,
        };
        match msg {
            Message::Request(r) => self.requests.push_back(r),
            Message::Response(r) => self.responses.push_back(r),
        }
        Some(())
    }

    /// The next final response (provisionals skipped), within 5 s.
    pub async fn response(&mut self) -> Response {
        loop {
            while let Some(r) = self.responses.pop_front() {
                if r.status >= 200 {
                    return r;
                }
            }
            self.read(5000).await.expect("a response within 5 s");
        }
    }

    /// The next final response within `ms` (paused-clock tests).
    pub async fn response_within(&mut self, ms: u64) -> Response {
        loop {
            while let Some(r) = self.responses.pop_front() {
                if r.status >= 200 {
                    return r;
                }
            }
            self.read(ms)
                .await
                .unwrap_or_else(|| panic!("a response within {ms} ms"));
        }
    }

    /// The next response, provisional or final, within 5 s.
    pub async fn any_response(&mut self) -> Response {
        loop {
            if let Some(r) = self.responses.pop_front() {
                return r;
            }
            self.read(5000).await.expect("a response within 5 s");
        }
    }

    /// The next response, provisional or final, within `ms`, or `None`.
    pub async fn any_response_within(&mut self, ms: u64) -> Option<Response> {
        loop {
            if let Some(r) = self.responses.pop_front() {
                return Some(r);
            }
            self.read(ms).await?;
        }
    }

    /// The next request of any method, unanswered, within `ms`.
    pub async fn next_request_within(&mut self, ms: u64) -> Option<Request> {
        loop {
            if let Some(r) = self.requests.pop_front() {
                return Some(r);
            }
            self.read(ms).await?;
        }
    }

    /// The next request of any method, unanswered, within 5 s.
    pub async fn next_request(&mut self) -> Request {
        self.next_request_within(5000)
            .await
            .expect("a request within 5 s")
    }

    /// Sends a request and returns its final response.
    pub async fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes).await;
        self.response().await
    }

    /// The next NOTIFY, unanswered, within 5 s.
    pub async fn notify_unanswered(&mut self) -> Request {
        self.notify_unanswered_within(5000).await
    }

    /// The next NOTIFY, unanswered, within `ms` (paused-clock tests wait for expiries).
    pub async fn notify_unanswered_within(&mut self, ms: u64) -> Request {
        loop {
            if let Some(r) = self.requests.pop_front() {
                assert_eq!(r.method, "NOTIFY", "server sent {}", r.method);
                return r;
            }
            self.read(ms)
                .await
                .unwrap_or_else(|| panic!("a NOTIFY within {ms} ms"));
        }
    }

    /// Answers NOTIFYs (200) until one whose body satisfies `done`; returns it. Changes
    /// made while a NOTIFY is unanswered arrive together, so tests wait for a state, not
    /// for a count of NOTIFYs.
    pub async fn notify_until(&mut self, done: impl Fn(&str) -> bool) -> Request {
        for _ in 0..20 {
            let n = self.notify().await;
            if done(&String::from_utf8_lossy(&n.body)) {
                return n;
            }
        }
        panic!("no NOTIFY reached the expected state");
    }

    /// The next NOTIFY, answered 200.
    pub async fn notify(&mut self) -> Request {
        let n = self.notify_unanswered().await;
        self.answer(&n, 200).await;
        n
    }

    /// True when no request arrives within `ms` (responses are kept for later).
    pub async fn no_notify(&mut self, ms: u64) -> bool {
        if !self.requests.is_empty() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            if self.read(left.as_millis() as u64 + 1).await.is_none() {
                return self.requests.is_empty();
            }
            if !self.requests.is_empty() {
                return false;
            }
        }
    }

    /// Answers a request the server sent us.
    pub async fn answer(&mut self, req: &Request, status: u16) {
        let mut r = req.response(status, "Whatever", Some("ua"));
        r.headers.0.retain(|h| h.kind != HeaderName::ContentLength);
        self.send(&r.to_bytes()).await;
    }
}

/// Header value helper.
pub fn header(m: &impl HasHeaders, h: HeaderName) -> &str {
    m.headers()
        .get(h)
        .unwrap_or_else(|| panic!("no {h:?} header"))
}

pub fn body(r: &Request) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// `tag` of a From/To value.
pub fn tag_of(value: &str) -> String {
    value
        .split(";tag=")
        .nth(1)
        .map(|t| t.split(';').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

pub fn cseq_of(r: &impl HasHeaders) -> u32 {
    r.cseq().unwrap().seq
}

/// The `version="N"` attribute of a dialog-info or watcherinfo body.
pub fn version_of(body: &str) -> u32 {
    let root = body
        .find("<dialog-info")
        .or_else(|| body.find("<watcherinfo"))
        .expect("a dialog-info or watcherinfo root");
    let i = root
        + body[root..]
            .find("version=\"")
            .expect("a version attribute")
        + 9;
    body[i..].split('"').next().unwrap().parse().unwrap()
}

/// A file of `fixtures/captures/` (real phone messages, LF line ends).
pub fn capture(name: &str) -> String {
    let path = format!("{}/fixtures/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
