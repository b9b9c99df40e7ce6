//! The control socket: a Unix stream socket speaking JSON-RPC 2.0, one line per request,
//! answer or notification (see [`super::rpc`]).
//!
//! Who may connect is decided by the file system: the socket is mode 0660 with the data
//! directory's group. What a client may cost is bounded: at most `max_clients` at once, lines
//! of at most `max_line` bytes, and a queue of `queue` lines towards each client. A client
//! that does not read its answers fills its queue and is disconnected (a `follow` stream is
//! told `resync` instead, see [`super::follow`]); the server never waits for a client, and a
//! write that makes no progress for `write_timeout` ends the connection.

use super::rpc::{self, RpcError};
use super::{follow, Methods};
use crate::events::EventBus;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Mode of the socket file: the service user and its group read and write, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Clients connected at once; one more is answered an error line and closed.
    pub max_clients: usize,
    /// Bytes of one line from a client (without its newline).
    pub max_line: usize,
    /// Lines waiting to be written to one client. A full queue disconnects a client that sent
    /// requests and makes a `follow` stream lag.
    pub queue: usize,
    /// A write to a client that makes no progress this long ends the connection.
    pub write_timeout: Duration,
}

impl Limits {
    pub fn from_config(c: &crate::config::ControlConfig) -> Limits {
        Limits {
            max_clients: c.max_clients,
            max_line: c.max_line,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 32,
            max_line: 65536,
            // Answers are written as fast as the client reads; the slack lets a script
            // pipeline requests and a `follow` stream ride out a burst (a call is about a dozen
            // change lines: with 64, a dashboard under the calls bench was resynced ~100 times
            // per 2,000 calls, each a full snapshot, +15 % server CPU per call), and bounds
            // what a stuck client holds (1,024 short lines, plus the socket buffer).
            queue: 1024,
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another busylamp answers on the control socket {0}: stop it first, or give this server its own [control] socket (or data directory)")]
    Live(PathBuf),
    #[error("{0} exists and is not a socket: remove it, or set [control] socket to another path")]
    NotASocket(PathBuf),
    #[error("cannot create the control socket {path}: {source}; fix: make its directory exist and be writable by the service user, or set [control] socket")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set the mode of the control socket {path} to 0660: {source}")]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running control socket. [`ControlServer::stop`] closes it and removes its file.
pub struct ControlServer {
    path: PathBuf,
    /// The socket file's inode: `stop` removes the file only while it is still ours.
    inode: (u64, u64),
    accept: tokio::task::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

/// Binds the control socket at `path` and serves `methods` on it, with `follow` streams fed
/// by `events`. The socket gets mode 0660 and the group of `group_of` (the data directory),
/// so the .deb's `busylamp` group reaches it. A socket file left by a server that died is
/// replaced; one another server still answers on is an error. Call within a tokio runtime.
pub fn start(
    path: &Path,
    group_of: Option<&Path>,
    limits: Limits,
    methods: Arc<dyn Methods>,
    events: EventBus,
) -> Result<ControlServer, ControlError> {
    let listener = bind(path)?;
    // After bind, whatever the umask made of it: bind(2) has no mode argument.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |source| ControlError::Mode {
            path: path.to_path_buf(),
            source,
        },
    )?;
    if let Some(dir) = group_of {
        give_group_of(path, dir);
    }
    let inode = std::fs::symlink_metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or_default();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(
        listener,
        Arc::new(Shared {
            methods,
            events,
            limits,
        }),
        Arc::new(Semaphore::new(limits.max_clients)),
        shutdown_rx,
    ));
    tracing::info!(path = %path.display(), "control socket ready");
    Ok(ControlServer {
        path: path.to_path_buf(),
        inode,
        accept,
        shutdown,
    })
}

impl ControlServer {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends every client's connection and removes the socket file (unless
    /// another server has replaced it since).
    pub fn stop(self) {
        self.accept.abort();
        let _ = self.shutdown.send(true);
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the control socket");
            }
        }
    }
}

/// Binds `path`, replacing a stale socket file (nobody accepts on it) but never a live one
/// and never a file that is not a socket.
fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_error = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match UnixListener::bind(path) {
        Ok(l) => return Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(bind_error(e)),
    }
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(ControlError::NotASocket(path.to_path_buf()));
    }
    // A local connect is answered at once: accepted (queued) when a server listens, refused
    // when the file is all that is left of one.
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => return Err(ControlError::Live(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing the control socket a stopped server left");
        }
        // Full backlog (EAGAIN) means someone listens.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(ControlError::Live(path.to_path_buf()))
        }
        Err(e) => return Err(bind_error(e)),
    }
    std::fs::remove_file(path).map_err(bind_error)?;
    UnixListener::bind(path).map_err(bind_error)
}

/// Gives the socket the group of `dir` when it has another one. The .deb runs the service
/// with the data directory's group, so there this changes nothing (and its seccomp filter,
/// which refuses chown, is never asked); a failure leaves the service user's own group, which
/// is no wider, and is logged.
fn give_group_of(path: &Path, dir: &Path) {
    let Ok(want) = std::fs::metadata(dir).map(|m| m.gid()) else {
        return;
    };
    let have = std::fs::symlink_metadata(path).map(|m| m.gid()).ok();
    if have == Some(want) {
        return;
    }
    if let Err(e) = std::os::unix::fs::chown(path, None, Some(want)) {
        tracing::warn!(
            path = %path.display(),
            gid = want,
            error = %e,
            "cannot give the control socket the data directory's group: only the service user's group reaches it"
        );
    }
}

struct Shared {
    methods: Arc<dyn Methods>,
    events: EventBus,
    limits: Limits,
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning on it.
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(serve_client(
                    stream,
                    shared.clone(),
                    permit,
                    shutdown.clone(),
                ));
            }
            Err(_) => {
                // One try, never a wait: a fresh socket's buffer takes this line.
                let line = rpc::error_line(
                    &serde_json::Value::Null,
                    &RpcError::new(
                        rpc::REFUSED,
                        format!(
                            "too many control clients (control.max_clients = {}): try again later",
                            shared.limits.max_clients
                        ),
                    ),
                );
                let _ = stream.try_write(line.as_bytes());
            }
        }
    }
}

/// A task that is aborted when this is dropped, however its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a client's session ended.
enum End {
    /// The client closed its side: what is queued is still written.
    Eof,
    /// We close after the queued lines (an over-long line's error answer).
    Close,
    /// The client cannot be written to (queue full, write stalled or failed): dropped.
    Dead,
    Shutdown,
}

/// The lines towards one client.
#[derive(Clone)]
pub(super) struct Out {
    pub(super) tx: mpsc::Sender<String>,
    /// Signalled when the connection is to be dropped at once.
    dead: Arc<Notify>,
}

impl Out {
    /// Queues an answer; a client whose queue is full does not read its answers: it is
    /// disconnected.
    fn answer(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("control client does not read its answers: disconnected");
                self.dead.notify_one();
            }
        }
    }
}

async fn serve_client(
    stream: UnixStream,
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(shared.limits.queue);
    let dead = Arc::new(Notify::new());
    let mut writer = AbortOnDrop(tokio::spawn(write_loop(
        wr,
        rx,
        shared.limits.write_timeout,
        dead.clone(),
    )));
    let mut session = Session {
        shared: shared.clone(),
        out: Out {
            tx,
            dead: dead.clone(),
        },
        follow: None,
    };
    let end = tokio::select! {
        end = session.read_loop(rd) => end,
        _ = dead.notified() => End::Dead,
        _ = stopped(&mut shutdown) => End::Shutdown,
    };
    let end = match end {
        // A client that closed its sending side after `follow` (`socat` with a pipe) still
        // reads: the stream goes on until it closes for good (a write fails) or we stop.
        End::Eof if session.follow.is_some() => tokio::select! {
            _ = dead.notified() => End::Dead,
            _ = stopped(&mut shutdown) => End::Shutdown,
        },
        other => other,
    };
    session.follow = None;
    if matches!(end, End::Eof | End::Close) {
        // Write what is queued, then close: the writer ends once the queue is empty and
        // closed, or when a write stalls.
        drop(session);
        let _ = (&mut writer.0).await;
    }
}

/// Resolves when [`ControlServer::stop`] was called. A server dropped without `stop` keeps
/// its clients, as a dropped [`crate::server::ServerHandle`] keeps its tasks.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct Session {
    shared: Arc<Shared>,
    out: Out,
    /// The `follow` stream's task, when one runs.
    follow: Option<AbortOnDrop>,
}

impl Session {
    /// Reads lines of at most `max_line` bytes and handles each before reading the next, so
    /// a client's answers come in the order of its requests.
    async fn read_loop(&mut self, rd: OwnedReadHalf) -> End {
        let max = self.shared.limits.max_line;
        let mut reader = BufReader::with_capacity(8 * 1024, rd);
        let mut line: Vec<u8> = Vec::new();
        loop {
            let buf = match reader.fill_buf().await {
                Ok(b) => b,
                Err(_) => return End::Dead,
            };
            if buf.is_empty() {
                // A last line without its newline is still a request.
                if !line.is_empty() {
                    self.handle(&line).await;
                }
                return End::Eof;
            }
            let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if line.len() + take > max {
                self.out.answer(rpc::error_line(
                    &serde_json::Value::Null,
                    &RpcError::new(
                        rpc::INVALID_REQUEST,
                        format!(
                            "line longer than {max} bytes (control.max_line): the connection is closed"
                        ),
                    ),
                ));
                return End::Close;
            }
            line.extend_from_slice(&buf[..take]);
            reader.consume(take + usize::from(complete));
            if complete {
                self.handle(&line).await;
                line.clear();
            }
        }
    }

    async fn handle(&mut self, line: &[u8]) {
        let req = match rpc::parse_line(line) {
            Ok(r) => r,
            Err(refusal) => return self.out.answer(refusal.line()),
        };
        let result = match req.method.as_str() {
            "follow" | "unfollow" if !no_params(&req.params) => Err(RpcError::invalid_params(
                format!("{} takes no params", req.method),
            )),
            "follow" => return self.follow(req.id),
            "unfollow" => {
                let was_following = self.follow.take().is_some();
                Ok(serde_json::json!({ "following": false, "was_following": was_following }))
            }
            method => self.shared.methods.call(method, req.params).await,
        };
        self.answer(req.id, result);
    }

    fn answer(&self, id: Option<serde_json::Value>, result: Result<serde_json::Value, RpcError>) {
        let Some(id) = id else {
            return; // a notification: no answer, even an error (JSON-RPC 2.0 §4.1)
        };
        self.out.answer(match result {
            Ok(v) => rpc::result_line(&id, &v),
            Err(e) => rpc::error_line(&id, &e),
        });
    }

    /// Answers `follow` and starts the stream, whose snapshot comes after the answer.
    fn follow(&mut self, id: Option<serde_json::Value>) {
        if self.follow.is_some() {
            return self.answer(
                id,
                Err(RpcError::new(
                    rpc::REFUSED,
                    "this connection already follows: one stream per connection",
                )),
            );
        }
        // Subscribed before the snapshot is taken, so no change falls between the two.
        let bus = self.shared.events.subscribe();
        self.answer(id, Ok(serde_json::json!({ "following": true })));
        let methods = self.shared.methods.clone();
        let tx = self.out.tx.clone();
        self.follow = Some(AbortOnDrop(tokio::spawn(follow::run(methods, bus, tx))));
    }
}

/// Whether `params` is absent or an empty object.
fn no_params(params: &serde_json::Value) -> bool {
    params.is_null() || params.as_object().is_some_and(|o| o.is_empty())
}

/// Writes queued lines until the queue closes; a write that makes no progress for `stall`
/// (the client does not read) or fails signals `dead`.
async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<String>,
    stall: Duration,
    dead: Arc<Notify>,
) {
    while let Some(line) = rx.recv().await {
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            match tokio::time::timeout(stall, wr.write(rest)).await {
                Ok(Ok(n)) if n > 0 => rest = &rest[n..],
                _ => {
                    dead.notify_one();
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(stall, wr.shutdown()).await;
}
