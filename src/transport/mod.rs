//! Sockets: UDP and TCP listeners, TCP framing by Content-Length, connection reuse and idle
//! timeout, CRLF keep-alive pongs (RFC 5626 §3.5.1). It hands whole messages, as bytes, to an
//! [`Inbound`] handler and sends bytes where it is told; it parses nothing beyond framing.

use crate::config::{ListenAddr, ListenProto};
use crate::sip::parse::{frame_stream, Frame, Limits};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn via_name(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
        }
    }

    pub fn reliable(self) -> bool {
        self == Proto::Tcp
    }
}

/// Where a message came from, and so where its responses go back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub proto: Proto,
    pub remote: SocketAddr,
    /// Our socket's address.
    pub local: SocketAddr,
    /// The TCP connection, for answering over the connection the request came in on.
    pub conn: Option<u64>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        };
        write!(f, "{p}:{}", self.remote)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr} ({proto}): {source}; check that no other SIP server uses the port and that busylamp may bind it")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no {0} socket to send from")]
    NoSocket(&'static str),
    #[error("send to {0} failed: {1}")]
    Send(SocketAddr, std::io::Error),
    #[error("connection to {0} is gone")]
    ConnectionGone(SocketAddr),
}

struct Conn {
    remote: SocketAddr,
    tx: mpsc::Sender<Arc<[u8]>>,
}

pub struct Transport {
    /// UDP sockets with their bound address (looked up once: getsockname is a syscall).
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    tcp_local: Vec<SocketAddr>,
    conns: Mutex<HashMap<u64, Conn>>,
    /// Latest connection per remote address, for reuse by requests we originate.
    by_remote: Mutex<HashMap<SocketAddr, u64>>,
    next_conn: AtomicU64,
    open_conns: AtomicUsize,
    limits: Limits,
    idle: Duration,
    max_conns: usize,
}

fn bind_err(proto: &'static str, addr: SocketAddr) -> impl Fn(std::io::Error) -> TransportError {
    move |source| TransportError::Bind {
        proto,
        addr,
        source,
    }
}

/// UDP socket buffer size asked of the kernel. A registration storm arrives in bursts; with the
/// default (~200 KiB) the kernel drops datagrams long before the CPU is busy, and every drop
/// costs a client retransmission.
const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Raises SO_RCVBUF and SO_SNDBUF (the kernel caps them at net.core.[rw]mem_max; a refusal
/// only costs throughput, so it is logged, not fatal).
fn set_udp_buffers(sock: &UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(sock);
    let results = [
        ("receive", sock.set_recv_buffer_size(bytes)),
        ("send", sock.set_send_buffer_size(bytes)),
    ];
    for (buffer, result) in results {
        if let Err(e) = result {
            tracing::warn!(error = %e, buffer, "cannot enlarge the UDP socket buffer");
        }
    }
}

/// Receive tasks per UDP socket.
const UDP_RECEIVERS: usize = 2;

/// Bytes queued per TCP connection before we stop waiting for a slow reader and drop it.
const CONN_QUEUE: usize = 256;

impl Transport {
    /// Binds every listen address. Nothing is received until [`Transport::start`].
    pub async fn bind(
        addrs: &[ListenAddr],
        limits: Limits,
        idle: Duration,
        max_conns: usize,
    ) -> Result<(Arc<Transport>, Vec<TcpListener>), TransportError> {
        let mut udp = Vec::new();
        let mut listeners = Vec::new();
        let mut tcp_local = Vec::new();
        for a in addrs {
            match a.proto {
                ListenProto::Udp => {
                    let s = UdpSocket::bind(a.addr)
                        .await
                        .map_err(bind_err("udp", a.addr))?;
                    set_udp_buffers(&s, UDP_BUFFER_BYTES);
                    let local = s.local_addr().map_err(bind_err("udp", a.addr))?;
                    udp.push((local, Arc::new(s)));
                }
                ListenProto::Tcp => {
                    let l = TcpListener::bind(a.addr)
                        .await
                        .map_err(bind_err("tcp", a.addr))?;
                    if let Ok(addr) = l.local_addr() {
                        tcp_local.push(addr);
                    }
                    listeners.push(l);
                }
            }
        }
        Ok((
            Arc::new(Transport {
                udp,
                tcp_local,
                conns: Mutex::new(HashMap::new()),
                by_remote: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                open_conns: AtomicUsize::new(0),
                limits,
                idle,
                max_conns,
            }),
            listeners,
        ))
    }

    /// Addresses actually bound (port 0 resolved), UDP first.
    pub fn local_addrs(&self) -> Vec<(Proto, SocketAddr)> {
        let mut v: Vec<(Proto, SocketAddr)> =
            self.udp.iter().map(|(a, _)| (Proto::Udp, *a)).collect();
        v.extend(self.tcp_local.iter().map(|a| (Proto::Tcp, *a)));
        v
    }

    pub fn open_connections(&self) -> usize {
        self.open_conns.load(Ordering::Relaxed)
    }

    /// Starts the receive loops.
    pub fn start(self: &Arc<Self>, listeners: Vec<TcpListener>, inbound: Arc<dyn Inbound>) {
        for (_, sock) in &self.udp {
            // Two receivers per socket keep both cores busy on a UDP storm.
            for _ in 0..UDP_RECEIVERS {
                let sock = sock.clone();
                let inbound = inbound.clone();
                let max = self.limits.max_message;
                tokio::spawn(async move { udp_loop(sock, inbound, max).await });
            }
        }
        for l in listeners {
            let me = self.clone();
            let inbound = inbound.clone();
            tokio::spawn(async move { me.accept_loop(l, inbound).await });
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, inbound: Arc<dyn Inbound>) {
        let local = match listener.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.open_conns.load(Ordering::Relaxed) >= self.max_conns {
                tracing::warn!(%remote, limit = self.max_conns, "refusing tcp connection: limit reached");
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.clone()
                .run_conn(stream, remote, local, inbound.clone());
        }
    }

    fn run_conn(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        local: SocketAddr,
        inbound: Arc<dyn Inbound>,
    ) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(CONN_QUEUE);
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Conn {
                remote,
                tx: tx.clone(),
            },
        );
        self.by_remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(remote, id);
        self.open_conns.fetch_add(1, Ordering::Relaxed);
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let me = self.clone();
        tokio::spawn(async move {
            let peer = Peer {
                proto: Proto::Tcp,
                remote,
                local,
                conn: Some(id),
            };
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 16 * 1024];
            'conn: loop {
                let n = match tokio::time::timeout(me.idle, rd.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::debug!(%remote, "closing idle tcp connection");
                        break;
                    }
                    Ok(Ok(n)) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match frame_stream(&buf, &me.limits) {
                        Ok(Frame::Incomplete) => break,
                        Ok(Frame::KeepAlive { len, pong }) => {
                            buf.drain(..len);
                            if pong {
                                let _ = tx.try_send(Arc::from(&b"\r\n"[..]));
                            }
                        }
                        Ok(Frame::Message(len)) => {
                            let msg: Vec<u8> = buf.drain(..len).collect();
                            inbound.clone().on_message(msg, peer);
                        }
                        Err(e) => {
                            // The stream cannot be framed any more: answer if we can, then
                            // close (RFC 3261 §18.3).
                            tracing::info!(%remote, error = %e, "closing unframeable tcp stream");
                            let msg = std::mem::take(&mut buf);
                            if let Some(answer) = inbound.clone().on_unframeable(msg, peer, e) {
                                let _ = tx.send(Arc::from(answer)).await;
                            }
                            break 'conn;
                        }
                    }
                }
            }
            me.drop_conn(id, remote);
            drop(tx);
            let _ = writer.await;
        });
        id
    }

    fn drop_conn(&self, id: u64, remote: SocketAddr) {
        if self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .is_some()
        {
            self.open_conns.fetch_sub(1, Ordering::Relaxed);
        }
        let mut by = self.by_remote.lock().unwrap_or_else(|p| p.into_inner());
        if by.get(&remote) == Some(&id) {
            by.remove(&remote);
        }
    }

    fn udp_socket_for(&self, peer: &Peer) -> Result<&Arc<UdpSocket>, TransportError> {
        self.udp
            .iter()
            .find(|(a, _)| *a == peer.local)
            .or_else(|| {
                self.udp
                    .iter()
                    .find(|(a, _)| a.is_ipv4() == peer.remote.is_ipv4())
            })
            .map(|(_, s)| s)
            .ok_or(TransportError::NoSocket("udp"))
    }

    /// Sends without waiting: `Ok(None)` when sent or queued, `Ok(Some(bytes))` when the UDP
    /// socket buffer is full and the caller must fall back to [`Transport::send`].
    pub fn try_send(
        &self,
        peer: &Peer,
        bytes: Arc<[u8]>,
    ) -> Result<Option<Arc<[u8]>>, TransportError> {
        match peer.proto {
            Proto::Udp => {
                let sock = self.udp_socket_for(peer)?;
                match sock.try_send_to(&bytes, peer.remote) {
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Some(bytes)),
                    Err(e) => Err(TransportError::Send(peer.remote, e)),
                }
            }
            Proto::Tcp => self.send_tcp(peer, bytes).map(|_| None),
        }
    }

    /// Whether a message to `peer` can leave: over UDP with a socket of its family; over TCP
    /// only while a connection to it is open (we never connect out, RFC 5626 style: phones
    /// keep theirs).
    pub fn reaches(&self, peer: &Peer) -> bool {
        match peer.proto {
            Proto::Udp => self.udp_socket_for(peer).is_ok(),
            Proto::Tcp => {
                let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                let by = self.by_remote.lock().unwrap_or_else(|p| p.into_inner());
                peer.conn
                    .and_then(|id| conns.get(&id))
                    .or_else(|| by.get(&peer.remote).and_then(|id| conns.get(id)))
                    .is_some_and(|c| c.remote == peer.remote && !c.tx.is_closed())
            }
        }
    }

    fn send_tcp(&self, peer: &Peer, bytes: Arc<[u8]>) -> Result<(), TransportError> {
        let tx = {
            let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            let by = self.by_remote.lock().unwrap_or_else(|p| p.into_inner());
            peer.conn
                .and_then(|id| conns.get(&id))
                .or_else(|| by.get(&peer.remote).and_then(|id| conns.get(id)))
                .filter(|c| c.remote == peer.remote)
                .map(|c| c.tx.clone())
        };
        match tx {
            Some(tx) => tx
                .try_send(bytes)
                .map_err(|_| TransportError::ConnectionGone(peer.remote)),
            None => Err(TransportError::ConnectionGone(peer.remote)),
        }
    }

    /// Sends to a peer: UDP from the socket the peer talked to, TCP over its connection
    /// (or the latest connection from the same address when that one closed).
    pub async fn send(&self, peer: &Peer, bytes: Arc<[u8]>) -> Result<(), TransportError> {
        match peer.proto {
            Proto::Udp => self
                .udp_socket_for(peer)?
                .send_to(&bytes, peer.remote)
                .await
                .map(|_| ())
                .map_err(|e| TransportError::Send(peer.remote, e)),
            Proto::Tcp => self.send_tcp(peer, bytes),
        }
    }
}

/// Receives every framed message.
pub trait Inbound: Send + Sync + 'static {
    fn on_message(self: Arc<Self>, bytes: Vec<u8>, peer: Peer);
    /// A stream that can no longer be framed; `bytes` is what was buffered. Returns an
    /// answer to write before the connection is closed.
    fn on_unframeable(
        self: Arc<Self>,
        bytes: Vec<u8>,
        peer: Peer,
        error: crate::sip::ParseError,
    ) -> Option<Vec<u8>>;
}

async fn udp_loop(sock: Arc<UdpSocket>, inbound: Arc<dyn Inbound>, max: usize) {
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    // One byte more than the limit, so an oversized datagram is seen as such, not truncated
    // into something that parses.
    let mut buf = vec![0u8; max + 1];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                if buf[..n].iter().all(|&b| b == b'\r' || b == b'\n' || b == 0) {
                    continue; // keep-alive datagram
                }
                inbound.clone().on_message(
                    buf[..n].to_vec(),
                    Peer {
                        proto: Proto::Udp,
                        remote,
                        local,
                        conn: None,
                    },
                );
            }
            Err(e) => {
                // ICMP port unreachable from an earlier send shows up here on Linux: ignore.
                tracing::trace!(error = %e, "udp recv error");
            }
        }
    }
}
