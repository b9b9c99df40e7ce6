//! A scripted SIP peer on a raw UDP socket, for testing our client side: it receives our
//! requests (retransmissions of one transaction dropped), answers them as the test says,
//! and sends requests of its own (NOTIFYs) to the server.

use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::{HasHeaders, HeaderName, Message, Request, Response};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

pub struct FakePeer {
    pub sock: UdpSocket,
    seen: HashSet<(String, String)>,
    requests: VecDeque<(Request, SocketAddr)>,
    responses: VecDeque<Response>,
}

impl FakePeer {
    pub async fn new() -> FakePeer {
        FakePeer {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            seen: HashSet::new(),
            requests: VecDeque::new(),
            responses: VecDeque::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    /// `sip:127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port())
    }

    async fn read(&mut self, ms: u64) -> Option<()> {
        let mut buf = vec![0u8; 65536];
        let (n, from) =
            tokio::time::timeout(Duration::from_millis(ms), self.sock.recv_from(&mut buf))
                .await
                .ok()?
                .unwrap();
        match parse_message(&buf[..n], &Limits::default()) {
            Ok(Message::Request(r)) => {
                let branch = r
                    .top_via()
                    .ok()
                    .and_then(|v| v.branch())
                    .unwrap_or_default();
                // A retransmission of a request we already have.
                if self.seen.insert((branch, r.method.clone())) {
                    self.requests.push_back((r, from));
                }
            }
            Ok(Message::Response(r)) => self.responses.push_back(r),
            Err(e) => panic!("unparseable: {e:?}"),
        }
        Some(())
    }

    /// The next new request within `ms`, with where it came from.
    pub async fn request_within(&mut self, ms: u64) -> Option<(Request, SocketAddr)> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            if let Some(r) = self.requests.pop_front() {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            self.read(left.as_millis() as u64 + 1).await;
        }
    }

    /// The next new request, within 5 s.
    pub async fn request(&mut self) -> (Request, SocketAddr) {
        self.request_within(5000)
            .await
            .expect("a request within 5 s")
    }

    /// The next final response within 5 s (to a request this peer sent).
    pub async fn response(&mut self) -> Response {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            while let Some(r) = self.responses.pop_front() {
                if r.status >= 200 {
                    return r;
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "a response within 5 s");
            self.read(left.as_millis() as u64 + 1).await;
        }
    }

    /// Answers `req` with `status`, a To tag (if given) and extra headers.
    pub async fn answer(
        &self,
        req: &Request,
        to: SocketAddr,
        status: u16,
        to_tag: Option<&str>,
        extra: &[(&str, String)],
    ) {
        let mut r = req.response(status, "Scripted", to_tag);
        for (name, value) in extra {
            r.headers.push_raw(name, value.clone());
        }
        self.sock.send_to(&r.to_bytes(), to).await.unwrap();
    }

    pub async fn send(&self, bytes: &[u8], to: SocketAddr) {
        self.sock.send_to(bytes, to).await.unwrap();
    }
}

/// A header's value, or "" when absent.
pub fn hdr(m: &impl HasHeaders, h: HeaderName) -> String {
    m.headers().get(h).unwrap_or("").to_string()
}
