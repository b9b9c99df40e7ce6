//! Sockets: UDP and TCP listeners, TCP framing by Content-Length, connection reuse and idle
//! timeout, CRLF keep-alive pongs (RFC 5626 §3.5.1). It hands whole messages, as bytes, to an
//! [`Inbound`] handler and sends bytes where it is told; it parses nothing beyond framing.

use crate::config::{ListenAddr, ListenProto};
use crate::drain::{Drain, Token};
use crate::sip::parse::{frame_stream, Frame, Limits};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

mod recv_batch;
use recv_batch::RecvBatch;

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
    #[error("UDP send buffer and queue full: message to {0} dropped")]
    QueueFull(SocketAddr),
}

/// How TCP connections are bounded (`[server]` keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// A connection that reads nothing for this long is closed (`tcp_idle_timeout`).
    pub idle: Duration,
    /// Connections open at once (`max_tcp_connections`).
    pub max_conns: usize,
    /// Connections open at once from one source ([`source_of`];
    /// `max_tcp_connections_per_source`).
    pub max_per_source: usize,
    /// Time to finish a message once its first byte arrived (`tcp_message_timeout`).
    pub message_timeout: Duration,
}

/// The source a TCP connection counts for in `max_tcp_connections_per_source`: the IPv4
/// address, or the /64 of an IPv6 address (one host usually holds a whole /64, so counting
/// single IPv6 addresses would bound nothing). IPv4-mapped IPv6 counts as IPv4.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// When the message left unfinished in a TCP buffer began (its deadline counts from there),
/// after a read at `read_at`: `None` when nothing is left (keep-alives are consumed as they
/// come, so they never start one); the earlier start while the same message goes on; this
/// read when a new message began in it (nothing was buffered, or a message was framed).
fn message_start(
    began: Option<tokio::time::Instant>,
    was_partial: bool,
    framed_message: bool,
    partial_left: bool,
    read_at: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    if !partial_left {
        None
    } else if was_partial && !framed_message {
        began.or(Some(read_at))
    } else {
        Some(read_at)
    }
}

struct Conn {
    remote: SocketAddr,
    tx: mpsc::Sender<Arc<[u8]>>,
}

/// Where the transport is in its life: shutdown first stops reading, then (once the answers
/// in flight are out) closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Nothing more is read or accepted; sends still leave.
    Draining,
    /// Queued bytes are written, then every socket and connection is closed.
    Closed,
}

/// One UDP socket and the queue of datagrams that found its send buffer full.
struct UdpSock {
    local: SocketAddr,
    sock: Arc<UdpSocket>,
    /// Datagrams waiting, in order, for the socket's one sender task.
    backlog: mpsc::Sender<(SocketAddr, Arc<[u8]>)>,
    /// Datagrams in the backlog or being sent by its task. While any are, a new datagram goes
    /// behind them rather than overtaking them.
    queued: Arc<AtomicUsize>,
}

pub struct Transport {
    /// UDP sockets; emptied at close so their ports are free again.
    udp: RwLock<Vec<UdpSock>>,
    /// Bound UDP addresses (looked up once: getsockname is a syscall).
    udp_local: Vec<SocketAddr>,
    tcp_local: Vec<SocketAddr>,
    conns: Mutex<HashMap<u64, Conn>>,
    /// Latest connection per remote address, for reuse by requests we originate.
    by_remote: Mutex<HashMap<SocketAddr, u64>>,
    next_conn: AtomicU64,
    open_conns: AtomicUsize,
    /// Open connections per source ([`source_of`]); sources with none are not kept.
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Connections closed at once because their source held `max_per_source` already.
    refused_per_source: AtomicU64,
    /// Connections closed because a message was not finished within `message_timeout`.
    message_timeouts: AtomicU64,
    /// UDP datagrams dropped because the socket buffer and its backlog were full.
    dropped_sends: AtomicU64,
    limits: Limits,
    tcp: TcpLimits,
    phase: watch::Sender<Phase>,
    /// The receive loops, accept loops and connection readers, until they stop reading.
    readers: Drain,
    /// The UDP sender tasks and the connections, until they have written what was queued.
    writers: Drain,
    /// Lines a peer can repeat at will (here and in the server core) are throttled per source.
    pub(crate) log_throttle: crate::logs::Throttle,
    /// Where messages read from connections we open go; set by [`Transport::start`] (a
    /// connection opened before that, by a restart NOTIFY, waits for it). Weak: the handler
    /// (the server core) owns this transport.
    inbound: watch::Sender<Option<std::sync::Weak<dyn Inbound>>>,
    /// Connections we opened to a TCP peer whose own connection was gone.
    connects: AtomicU64,
    /// Of those, the ones that could not be established (refused, unreachable, timed out).
    connect_failures: AtomicU64,
}

/// How long opening a connection to a peer may take (RFC 3261 §18.1.1 leaves it to us; the
/// transaction's own timer covers the rest).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

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
/// The largest UDP payload there can be (a 16-bit length, header included).
const MAX_UDP_PAYLOAD: usize = 65_535;

/// Datagrams queued per UDP socket while its send buffer is full (the kernel buffer already
/// holds megabytes; this only rides out a short stall). Beyond it a datagram is dropped and
/// counted, as the network would: SIP retransmits.
pub const UDP_BACKLOG: usize = 1024;

/// Bytes queued per TCP connection before we stop waiting for a slow reader and drop it.
const CONN_QUEUE: usize = 256;

impl Transport {
    /// Binds every listen address. Nothing is received until [`Transport::start`].
    pub async fn bind(
        addrs: &[ListenAddr],
        limits: Limits,
        tcp: TcpLimits,
    ) -> Result<(Arc<Transport>, Vec<TcpListener>), TransportError> {
        let mut udp = Vec::new();
        let mut listeners = Vec::new();
        let mut tcp_local = Vec::new();
        let writers = Drain::default();
        for a in addrs {
            match a.proto {
                ListenProto::Udp => {
                    let s = UdpSocket::bind(a.addr)
                        .await
                        .map_err(bind_err("udp", a.addr))?;
                    set_udp_buffers(&s, UDP_BUFFER_BYTES);
                    let local = s.local_addr().map_err(bind_err("udp", a.addr))?;
                    let sock = Arc::new(s);
                    let (backlog, rx) = mpsc::channel(UDP_BACKLOG);
                    let queued = Arc::new(AtomicUsize::new(0));
                    // Started at once: the restart NOTIFYs leave before the receive loops start.
                    spawn_holding(
                        writers.token(),
                        udp_sender(sock.clone(), rx, queued.clone()),
                    );
                    udp.push(UdpSock {
                        local,
                        sock,
                        backlog,
                        queued,
                    });
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
                udp_local: udp.iter().map(|u| u.local).collect(),
                udp: RwLock::new(udp),
                tcp_local,
                conns: Mutex::new(HashMap::new()),
                by_remote: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                open_conns: AtomicUsize::new(0),
                per_source: Mutex::new(HashMap::new()),
                refused_per_source: AtomicU64::new(0),
                message_timeouts: AtomicU64::new(0),
                dropped_sends: AtomicU64::new(0),
                limits,
                tcp,
                phase: watch::Sender::new(Phase::Running),
                readers: Drain::default(),
                writers,
                log_throttle: Default::default(),
                inbound: watch::Sender::new(None),
                connects: AtomicU64::new(0),
                connect_failures: AtomicU64::new(0),
            }),
            listeners,
        ))
    }

    /// Addresses actually bound (port 0 resolved), UDP first.
    pub fn local_addrs(&self) -> Vec<(Proto, SocketAddr)> {
        let mut v: Vec<(Proto, SocketAddr)> =
            self.udp_local.iter().map(|a| (Proto::Udp, *a)).collect();
        v.extend(self.tcp_local.iter().map(|a| (Proto::Tcp, *a)));
        v
    }

    pub fn open_connections(&self) -> usize {
        self.open_conns.load(Ordering::Relaxed)
    }

    /// TCP connections closed at once so far because their source held
    /// `max_tcp_connections_per_source` connections already.
    pub fn refused_per_source(&self) -> u64 {
        self.refused_per_source.load(Ordering::Relaxed)
    }

    /// TCP connections closed so far because a message was not finished within
    /// `tcp_message_timeout` of its first byte.
    pub fn message_timeouts(&self) -> u64 {
        self.message_timeouts.load(Ordering::Relaxed)
    }

    /// UDP datagrams dropped so far because a socket's buffer and backlog were full.
    pub fn dropped_sends(&self) -> u64 {
        self.dropped_sends.load(Ordering::Relaxed)
    }

    /// Datagrams waiting in the UDP backlogs (at most [`UDP_BACKLOG`] per socket).
    pub fn queued_sends(&self) -> usize {
        self.udp_read()
            .iter()
            .map(|u| u.queued.load(Ordering::Relaxed))
            .sum()
    }

    fn udp_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<UdpSock>> {
        self.udp.read().unwrap_or_else(|p| p.into_inner())
    }

    /// TCP connections we opened so far because the peer's own connection was gone.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Of [`Transport::connects`], the ones that could not be established.
    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// Starts the receive loops.
    pub fn start(self: &Arc<Self>, listeners: Vec<TcpListener>, inbound: Arc<dyn Inbound>) {
        self.inbound.send_replace(Some(Arc::downgrade(&inbound)));
        for u in self.udp_read().iter() {
            // Two receivers per socket keep both cores busy on a UDP storm.
            for _ in 0..UDP_RECEIVERS {
                let sock = u.sock.clone();
                let inbound = inbound.clone();
                let max = self.limits.max_message;
                let phase = self.phase.subscribe();
                spawn_holding(self.readers.token(), udp_loop(sock, inbound, max, phase));
            }
        }
        for l in listeners {
            let accepting = self.clone().accept_loop(l, inbound.clone());
            spawn_holding(self.readers.token(), accepting);
        }
    }

    /// Shutdown, first step: stops reading and accepting, and returns once no receive loop
    /// is left (every message read has been handed to [`Inbound`]). Sends still leave.
    pub async fn stop_reading(&self) {
        self.phase.send_replace(Phase::Draining);
        self.readers.close().await;
    }

    /// Shutdown, last step: writes what is queued, then closes every socket and connection
    /// (their ports can be bound again once this returns).
    pub async fn close(&self) {
        self.phase.send_replace(Phase::Closed);
        // Dropping the backlog senders ends each sender task once its queue is written; the
        // task holds the last reference to its socket.
        self.udp.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.writers.close().await;
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, inbound: Arc<dyn Inbound>) {
        let local = match listener.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        };
        let mut phase = self.phase.subscribe();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.open_conns.load(Ordering::Relaxed) >= self.tcp.max_conns {
                if self.log_allowed("tcp connection limit", remote.ip()) {
                    tracing::warn!(%remote, limit = self.tcp.max_conns, "refusing tcp connection: limit reached");
                }
                drop(stream);
                continue;
            }
            if !self.admit_source(remote) {
                // Debug, not warn: the log must not grow at the rate a host can connect.
                self.refused_per_source.fetch_add(1, Ordering::Relaxed);
                if self.log_allowed("tcp per-source limit", remote.ip()) {
                    tracing::debug!(%remote, limit = self.tcp.max_per_source, "refusing tcp connection: per-source limit reached (server.max_tcp_connections_per_source)");
                }
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.clone()
                .run_conn(stream, remote, local, inbound.clone());
        }
    }

    /// Whether a line of `kind` about `source` may be written now ([`crate::logs::Throttle`]).
    pub(crate) fn log_allowed(&self, kind: &'static str, source: IpAddr) -> bool {
        self.log_throttle
            .allow(kind, source, tokio::time::Instant::now().into_std())
    }

    /// Counts one more connection from `remote`'s source, unless it has `max_per_source`.
    fn admit_source(&self, remote: SocketAddr) -> bool {
        let mut per = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let open = per.entry(source_of(remote.ip())).or_insert(0);
        if *open >= self.tcp.max_per_source {
            return false;
        }
        *open += 1;
        true
    }

    fn release_source(&self, remote: SocketAddr) {
        let source = source_of(remote.ip());
        let mut per = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = per.get_mut(&source) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per.remove(&source);
            }
        }
    }

    fn run_conn(
        self: Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        local: SocketAddr,
        inbound: Arc<dyn Inbound>,
    ) -> u64 {
        let (id, tx, rx) = self.add_conn(remote);
        self.drive_conn(id, stream, remote, local, inbound, tx, rx);
        id
    }

    /// Counts a connection to `remote` (its source already admitted) and makes it the one
    /// later sends to `remote` use; what is sent waits in its queue until it is driven.
    #[allow(clippy::type_complexity)]
    fn add_conn(
        &self,
        remote: SocketAddr,
    ) -> (u64, mpsc::Sender<Arc<[u8]>>, mpsc::Receiver<Arc<[u8]>>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<Arc<[u8]>>(CONN_QUEUE);
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
        (id, tx, rx)
    }

    /// RFC 3261 §18.1.1 / §18.2.2: the connection to a TCP peer is gone (it closed, or we
    /// restarted), so we open one to its address, within `max_tcp_connections` and the
    /// per-source limit. Returns the new connection's id (sends to `remote` queue on it at
    /// once), or `None` when no connection may be opened now. A connection that cannot be
    /// established is dropped with what was queued on it; the transaction's timer reports it.
    fn open_conn(self: &Arc<Self>, remote: SocketAddr, local: SocketAddr) -> Option<u64> {
        if *self.phase.borrow() != Phase::Running
            || self.open_conns.load(Ordering::Relaxed) >= self.tcp.max_conns
        {
            return None;
        }
        if !self.admit_source(remote) {
            self.refused_per_source.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.connects.fetch_add(1, Ordering::Relaxed);
        let (id, tx, rx) = self.add_conn(remote);
        let me = self.clone();
        let mut inbound = self.inbound.subscribe();
        let mut phase = self.phase.subscribe();
        tokio::spawn(async move {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await;
            let stream = match connected {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return me.connect_failed(id, remote, local, &e.to_string()),
                Err(_) => return me.connect_failed(id, remote, local, "timed out"),
            };
            let _ = stream.set_nodelay(true);
            // Before start (restart NOTIFYs): what the peer answers waits for the handler.
            let handler = tokio::select! {
                i = inbound.wait_for(|i| i.is_some()) => {
                    i.ok().and_then(|i| i.as_ref().and_then(|w| w.upgrade()))
                }
                _ = phase.wait_for(|p| *p >= Phase::Draining) => None,
            };
            let Some(handler) = handler else {
                return me.connect_failed(id, remote, local, "transport stopped");
            };
            tracing::debug!(%remote, "opened a tcp connection to a peer whose own was gone");
            me.clone()
                .drive_conn(id, stream, remote, local, handler, tx, rx);
        });
        Some(id)
    }

    fn connect_failed(&self, id: u64, remote: SocketAddr, local: SocketAddr, why: &str) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%remote, error = why, "cannot open a tcp connection to the peer");
        self.drop_conn(id, remote);
        let handler = self.inbound.borrow().as_ref().and_then(|w| w.upgrade());
        if let Some(handler) = handler {
            handler.on_unreachable(Peer {
                proto: Proto::Tcp,
                remote,
                local,
                conn: None,
            });
        }
    }

    /// Reads and writes connection `id` until it closes. `local` is the address its
    /// messages are reported as received on (our listening socket for connections we opened,
    /// so what we advertise from them is a port that accepts connections).
    #[allow(clippy::too_many_arguments)]
    fn drive_conn(
        self: Arc<Self>,
        id: u64,
        stream: TcpStream,
        remote: SocketAddr,
        local: SocketAddr,
        inbound: Arc<dyn Inbound>,
        tx: mpsc::Sender<Arc<[u8]>>,
        mut rx: mpsc::Receiver<Arc<[u8]>>,
    ) {
        let (mut rd, mut wr) = stream.into_split();
        let writing = self.writers.token();
        let reading = self.readers.token();
        let mut phase = self.phase.subscribe();
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let me = self.clone();
        // The token outlives the connection's halves: once shutdown sees it dropped, the
        // socket is closed.
        spawn_holding(writing, async move {
            let peer = Peer {
                proto: Proto::Tcp,
                remote,
                local,
                conn: Some(id),
            };
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 16 * 1024];
            let mut stopped = false;
            // When the first byte of the message now in `buf` arrived; `None` while `buf`
            // holds no message bytes (keep-alives are consumed as they come).
            let mut message_began: Option<tokio::time::Instant> = None;
            'conn: loop {
                let idle_until = tokio::time::Instant::now() + me.tcp.idle;
                let finish_by = message_began.map(|t| t + me.tcp.message_timeout);
                let read = tokio::select! {
                    biased;
                    _ = phase.wait_for(|p| *p >= Phase::Draining) => {
                        stopped = true;
                        break;
                    }
                    r = tokio::time::timeout_at(
                        finish_by.map_or(idle_until, |f| f.min(idle_until)),
                        rd.read(&mut chunk),
                    ) => r,
                };
                let n = match read {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Err(_) if finish_by.is_some_and(|f| f <= tokio::time::Instant::now()) => {
                        // A peer that trickles a message holds a slot as long as it likes
                        // unless the whole message has a deadline.
                        me.message_timeouts.fetch_add(1, Ordering::Relaxed);
                        if me.log_allowed("tcp message timeout", remote.ip()) {
                            tracing::debug!(%remote, "closing tcp connection: message not finished in time (server.tcp_message_timeout)");
                        }
                        break;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "closing idle tcp connection");
                        break;
                    }
                    Ok(Ok(n)) => n,
                };
                let read_at = tokio::time::Instant::now();
                let continuing = !buf.is_empty();
                let mut framed_message = false;
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
                            framed_message = true;
                            inbound.clone().on_message(msg, peer);
                        }
                        Err(e) => {
                            // The stream cannot be framed any more: answer if we can, then
                            // close (RFC 3261 §18.3).
                            if me.log_allowed("unframeable tcp stream", remote.ip()) {
                                tracing::info!(%remote, error = %e, "closing unframeable tcp stream");
                            }
                            let msg = std::mem::take(&mut buf);
                            if let Some(answer) = inbound.clone().on_unframeable(msg, peer, e) {
                                let _ = tx.send(Arc::from(answer)).await;
                            }
                            break 'conn;
                        }
                    }
                }
                message_began = message_start(
                    message_began,
                    continuing,
                    framed_message,
                    !buf.is_empty(),
                    read_at,
                );
            }
            drop(reading);
            if stopped {
                // Shutting down: answers to what was read may still have to leave over this
                // connection; it closes with the others.
                let _ = phase.wait_for(|p| *p == Phase::Closed).await;
            }
            me.drop_conn(id, remote);
            drop(tx);
            let _ = writer.await;
        });
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
            self.release_source(remote);
        }
        let mut by = self.by_remote.lock().unwrap_or_else(|p| p.into_inner());
        if by.get(&remote) == Some(&id) {
            by.remove(&remote);
        }
    }

    /// Sends without waiting: UDP from the socket the peer talked to (behind the datagrams
    /// already waiting for room in its send buffer, if any), TCP over its connection (or the
    /// latest connection from the same address when that one closed, or a new one we open to
    /// that address when none is left: [`Transport::open_conn`]). A datagram that finds
    /// the buffer and the backlog full is dropped and counted ([`Transport::dropped_sends`]).
    pub fn send(self: &Arc<Self>, peer: &Peer, bytes: Arc<[u8]>) -> Result<(), TransportError> {
        match peer.proto {
            Proto::Udp => {
                let udp = self.udp_read();
                let u = udp_socket_for(&udp, peer)?;
                if u.queued.load(Ordering::Acquire) == 0 {
                    match u.sock.try_send_to(&bytes, peer.remote) {
                        Ok(_) => return Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(TransportError::Send(peer.remote, e)),
                    }
                }
                self.enqueue(u, peer.remote, bytes)
            }
            Proto::Tcp => self.send_tcp(peer, bytes),
        }
    }

    /// Puts a datagram in its socket's backlog, or drops and counts it when the backlog is
    /// full (or closed by shutdown).
    fn enqueue(
        &self,
        u: &UdpSock,
        remote: SocketAddr,
        bytes: Arc<[u8]>,
    ) -> Result<(), TransportError> {
        u.queued.fetch_add(1, Ordering::AcqRel);
        match u.backlog.try_send((remote, bytes)) {
            Ok(()) => Ok(()),
            Err(_) => {
                u.queued.fetch_sub(1, Ordering::AcqRel);
                self.dropped_sends.fetch_add(1, Ordering::Relaxed);
                if self.log_allowed("udp send dropped", remote.ip()) {
                    tracing::debug!(%remote, backlog = UDP_BACKLOG, "udp send buffer and backlog full: datagram dropped");
                }
                Err(TransportError::QueueFull(remote))
            }
        }
    }

    /// Whether a message to `peer` can leave: over UDP with a socket of its family; over TCP
    /// while a connection to it is open, or while we may open one to its address (RFC 3261
    /// §18.1.1: the phone's connection closed, or we restarted).
    pub fn reaches(&self, peer: &Peer) -> bool {
        match peer.proto {
            Proto::Udp => udp_socket_for(&self.udp_read(), peer).is_ok(),
            Proto::Tcp => self.tcp_sender(peer).is_some() || self.may_connect(peer.remote),
        }
    }

    /// Whether a connection to `remote` could be opened now: running, below
    /// `max_tcp_connections` and below the per-source limit for `remote`.
    fn may_connect(&self, remote: SocketAddr) -> bool {
        *self.phase.borrow() == Phase::Running
            && self.open_conns.load(Ordering::Relaxed) < self.tcp.max_conns
            && self
                .per_source
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&source_of(remote.ip()))
                .is_none_or(|open| *open < self.tcp.max_per_source)
    }

    /// The queue of the open connection to `peer`: its own, else the latest to its address.
    fn tcp_sender(&self, peer: &Peer) -> Option<mpsc::Sender<Arc<[u8]>>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let by = self.by_remote.lock().unwrap_or_else(|p| p.into_inner());
        let usable = |c: &&Conn| c.remote == peer.remote && !c.tx.is_closed();
        peer.conn
            .and_then(|id| conns.get(&id))
            .filter(usable)
            .or_else(|| {
                by.get(&peer.remote)
                    .and_then(|id| conns.get(id))
                    .filter(usable)
            })
            .map(|c| c.tx.clone())
    }

    fn send_tcp(self: &Arc<Self>, peer: &Peer, bytes: Arc<[u8]>) -> Result<(), TransportError> {
        let tx = match self.tcp_sender(peer) {
            Some(tx) => tx,
            None => {
                let local = self.listening_tcp(peer);
                self.open_conn(peer.remote, local)
                    .and_then(|_| self.tcp_sender(peer))
                    .ok_or(TransportError::ConnectionGone(peer.remote))?
            }
        };
        tx.try_send(bytes)
            .map_err(|_| TransportError::ConnectionGone(peer.remote))
    }

    /// Our listening TCP address that suits `peer` (its own local address when it is one).
    fn listening_tcp(&self, peer: &Peer) -> SocketAddr {
        if self.tcp_local.contains(&peer.local) {
            return peer.local;
        }
        self.tcp_local
            .iter()
            .find(|a| a.is_ipv4() == peer.remote.is_ipv4())
            .copied()
            .unwrap_or(peer.local)
    }
}

/// The socket the peer talked to, else one of its address family.
fn udp_socket_for<'a>(udp: &'a [UdpSock], peer: &Peer) -> Result<&'a UdpSock, TransportError> {
    udp.iter()
        .find(|u| u.local == peer.local)
        .or_else(|| {
            udp.iter()
                .find(|u| u.local.is_ipv4() == peer.remote.is_ipv4())
        })
        .ok_or(TransportError::NoSocket("udp"))
}

/// The one task per UDP socket that waits for room in its send buffer: writes its backlog in
/// order, and ends (closing the socket) once the transport is closed and the backlog written.
async fn udp_sender(
    sock: Arc<UdpSocket>,
    mut backlog: mpsc::Receiver<(SocketAddr, Arc<[u8]>)>,
    queued: Arc<AtomicUsize>,
) {
    while let Some((remote, bytes)) = backlog.recv().await {
        if let Err(e) = sock.send_to(&bytes, remote).await {
            tracing::debug!(%remote, error = %e, "udp send failed");
        }
        queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spawns `work` holding `token` until `work` has ended and everything it owned (its sockets
/// above all) is dropped.
fn spawn_holding(
    token: Option<Token>,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        work.await;
        drop(token);
    });
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
    /// A connection to `peer` could not be opened: what was sent to it is lost (RFC 3261
    /// §17.1.4 transport error).
    fn on_unreachable(self: Arc<Self>, _peer: Peer) {}
}

async fn udp_loop(
    sock: Arc<UdpSocket>,
    inbound: Arc<dyn Inbound>,
    max: usize,
    mut phase: watch::Receiver<Phase>,
) {
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    // One byte more than the limit per datagram, so an oversized datagram is seen as such,
    // not truncated into something that parses. No UDP datagram is longer than 65,535 bytes:
    // with a larger limit (up to 1 MiB) a slot that size holds any of them whole.
    let mut batch = RecvBatch::new((max + 1).min(MAX_UDP_PAYLOAD + 1));
    loop {
        let received = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p >= Phase::Draining) => return,
            r = sock.async_io(tokio::io::Interest::READABLE, || batch.recv(&*sock)) => r,
        };
        match received {
            Ok(n) => {
                for (bytes, remote) in (0..n).filter_map(|i| batch.get(i)) {
                    if bytes.iter().all(|&b| b == b'\r' || b == b'\n' || b == 0) {
                        continue; // keep-alive datagram
                    }
                    inbound.clone().on_message(
                        bytes.to_vec(),
                        Peer {
                            proto: Proto::Udp,
                            remote,
                            local,
                            conn: None,
                        },
                    );
                }
            }
            Err(e) => {
                // ICMP port unreachable from an earlier send shows up here on Linux: ignore.
                tracing::trace!(error = %e, "udp recv error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::recv_batch::RECV_BATCH;
    use super::*;

    async fn one_udp_socket() -> Arc<Transport> {
        udp_transport(Limits::default()).await.0
    }

    /// A transport on one UDP socket at 127.0.0.1, with these limits.
    async fn udp_transport(limits: Limits) -> (Arc<Transport>, Vec<TcpListener>) {
        let addr = ListenAddr {
            proto: ListenProto::Udp,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let tcp = TcpLimits {
            idle: Duration::from_secs(60),
            max_conns: 10,
            max_per_source: 10,
            message_timeout: Duration::from_secs(10),
        };
        Transport::bind(&[addr], limits, tcp).await.unwrap()
    }

    /// On a current-thread runtime the sender task cannot run while this test does not
    /// yield: a socket whose buffer is full, as far as the queue can tell.
    #[tokio::test]
    async fn sends_to_a_full_socket_wait_in_one_bounded_queue_without_a_task_each() {
        let t = one_udp_socket().await;
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        set_udp_buffers(&rx, UDP_BUFFER_BYTES);
        let peer = Peer {
            proto: Proto::Udp,
            remote: rx.local_addr().unwrap(),
            local: t.local_addrs()[0].1,
            conn: None,
        };
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        // The first datagram found the send buffer full (WouldBlock): it waits in the queue,
        // and every later one goes behind it.
        {
            let udp = t.udp_read();
            t.enqueue(&udp[0], peer.remote, Arc::from(&0u32.to_be_bytes()[..]))
                .unwrap();
        }
        let attempts = 10 * UDP_BACKLOG as u32;
        let mut refused = 0;
        for i in 1..attempts {
            if let Err(e) = t.send(&peer, Arc::from(&i.to_be_bytes()[..])) {
                assert!(matches!(e, TransportError::QueueFull(_)), "{e}");
                refused += 1;
            }
            assert!(t.queued_sends() <= UDP_BACKLOG, "queue grew past its bound");
        }
        assert_eq!(t.queued_sends(), UDP_BACKLOG);
        assert_eq!(refused, attempts as usize - UDP_BACKLOG);
        assert_eq!(t.dropped_sends(), refused as u64);
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            tasks,
            "a task per waiting send"
        );
        // Room again: the sender task writes the queue in order and it empties.
        let mut buf = [0u8; 16];
        let mut last = None;
        while last != Some(UDP_BACKLOG as u32 - 1) {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv_from(&mut buf))
                .await
                .expect("the queue's tail arrives")
                .unwrap();
            assert_eq!(n, 4);
            let v = u32::from_be_bytes(buf[..4].try_into().unwrap());
            assert!(last.is_none_or(|l| v > l), "{v} after {last:?}");
            assert!(v < UDP_BACKLOG as u32, "{v} was dropped, yet arrived");
            last = Some(v);
        }
        // The sender task counts a datagram out once sent; let it finish its last one.
        while t.queued_sends() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(t.queued_sends(), 0);
        // With the queue empty, a send goes straight to the socket again.
        t.send(&peer, Arc::from(&7u32.to_be_bytes()[..])).unwrap();
        let (n, _) = rx.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &7u32.to_be_bytes());
        assert_eq!(t.queued_sends(), 0);
    }

    /// RFC 3261 §18.3 frames a stream by Content-Length; a message's deadline runs from its
    /// own first byte, whatever came before it on the connection.
    #[test]
    fn rfc3261_18_3_a_message_deadline_starts_at_its_first_byte() {
        let t0 = tokio::time::Instant::now();
        let t1 = t0 + Duration::from_secs(3);
        // The first bytes of a message: its clock starts.
        assert_eq!(message_start(None, false, false, true, t0), Some(t0));
        // More bytes of the same message do not move it.
        assert_eq!(message_start(Some(t0), true, false, true, t1), Some(t0));
        // The message completed and nothing is left: no deadline.
        assert_eq!(message_start(Some(t0), true, true, false, t1), None);
        // It completed and the next one began in the same read (pipelining): a new clock.
        assert_eq!(message_start(Some(t0), true, true, true, t1), Some(t1));
        // Keep-alives only (consumed, nothing left): none.
        assert_eq!(message_start(None, false, false, false, t1), None);
    }

    #[test]
    fn tcp_sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(source_of(ip("192.0.2.7")), source_of(ip("192.0.2.8")));
        // One host's /64: every interface id counts for the same source.
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
        // IPv4-mapped: the IPv4 address, not the /64 of every mapped address.
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(
            source_of(ip("::ffff:192.0.2.7")),
            source_of(ip("::ffff:192.0.2.8"))
        );
    }

    /// Records what the receive loops hand over.
    #[derive(Default)]
    struct Collected(Mutex<Vec<(Vec<u8>, SocketAddr)>>);

    impl Inbound for Collected {
        fn on_message(self: Arc<Self>, bytes: Vec<u8>, peer: Peer) {
            self.0.lock().unwrap().push((bytes, peer.remote));
        }
        fn on_unframeable(
            self: Arc<Self>,
            _: Vec<u8>,
            _: Peer,
            _: crate::sip::ParseError,
        ) -> Option<Vec<u8>> {
            None
        }
    }

    /// recvmmsg reads up to RECV_BATCH datagrams per call: a burst several batches long is
    /// delivered whole, each datagram with its own bytes and source, keep-alives among them are
    /// skipped, and an oversized datagram arrives one byte over the limit (the parser then
    /// refuses it as too large, `tests/robustness.rs`), not cut down to something that parses.
    #[tokio::test]
    async fn a_udp_burst_is_read_in_batches_whole_with_keep_alives_skipped() {
        const MAX: usize = 1000;
        let (t, listeners) = udp_transport(Limits {
            max_message: MAX,
            ..Limits::default()
        })
        .await;
        let server = t.local_addrs()[0].1;
        let got = Arc::new(Collected::default());
        // Two senders, so each datagram's source must come from its own header.
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // The whole burst is queued at the socket before any receive loop runs (this runtime
        // has one thread, and the loops start only when the test awaits).
        let burst = 5 * RECV_BATCH + 3;
        let mut expected = Vec::new();
        for i in 0..burst {
            let from = if i % 2 == 0 { &a } else { &b };
            let msg = format!("datagram {i} {}", "x".repeat(i * 7));
            from.send_to(msg.as_bytes(), server).unwrap();
            expected.push((msg.into_bytes(), from.local_addr().unwrap()));
            if i % 5 == 0 {
                a.send_to(b"\r\n\r\n", server).unwrap(); // keep-alive
            }
        }
        b.send_to(&vec![b'y'; 3 * MAX], server).unwrap();
        t.start(listeners, got.clone());
        let all = burst + 1;
        tokio::time::timeout(Duration::from_secs(10), async {
            while got.0.lock().unwrap().len() < all {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("every datagram delivered");
        let mut got = std::mem::take(&mut *got.0.lock().unwrap());
        assert_eq!(got.len(), all, "keep-alives are not handed over");
        let at = got
            .iter()
            .position(|(bytes, _)| bytes.len() > MAX)
            .expect("the oversized one");
        let oversized = got.remove(at);
        assert_eq!(oversized.0.len(), MAX + 1, "over the limit, so refused");
        assert_eq!(oversized.1, b.local_addr().unwrap());
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn udp_buffers_are_enlarged_through_socket2() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let before = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
            set_udp_buffers(&s, before * 4);
            let after = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
            // Linux caps the request at net.core.rmem_max and doubles it (bookkeeping), so
            // the buffer grows even where rmem_max is the default.
            assert!(after > before, "{after} <= {before}");
        });
    }
}
