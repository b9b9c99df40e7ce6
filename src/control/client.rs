//! The control socket's client, for the `busylamp` admin commands: blocking (the commands do
//! one call and exit), one request at a time.

use super::rpc::{self, Reply, RpcError};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest line read from the server: a `follow` snapshot of a large site is big, but not
/// without bound.
pub const MAX_REPLY: usize = 256 * 1024 * 1024;

/// Why the control socket cannot be reached. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("busylamp is not running: there is no control socket {0} (start it with `systemctl start busylamp`, or give the server's config with --config or its socket with --socket)")]
    NoSocket(PathBuf),
    #[error("busylamp is not running: nothing answers on the control socket {0} (a file left by a server that stopped)")]
    Refused(PathBuf),
    #[error("permission denied on {path}: {hint}")]
    PermissionDenied { path: PathBuf, hint: String },
    #[error("{0} is not a socket: give the control socket with --socket or the server's config with --config")]
    NotASocket(PathBuf),
    #[error("cannot connect to the control socket {path}: {source}")]
    Other {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a call got no answer from the server's methods.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error.
    #[error("{}", .0.message)]
    Rpc(RpcError),
    /// The connection failed or the server sent something unreadable.
    #[error("control socket {path}: {problem}")]
    Connection { path: PathBuf, problem: String },
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ConnectError> {
        use std::io::ErrorKind;
        use std::os::unix::fs::FileTypeExt;
        let p = || path.to_path_buf();
        match std::fs::metadata(path) {
            Ok(m) if !m.file_type().is_socket() => return Err(ConnectError::NotASocket(p())),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                return Err(ConnectError::PermissionDenied {
                    path: p(),
                    hint: permission_hint(path),
                })
            }
            _ => {}
        }
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => ConnectError::NoSocket(p()),
            ErrorKind::ConnectionRefused => ConnectError::Refused(p()),
            ErrorKind::PermissionDenied => ConnectError::PermissionDenied {
                path: p(),
                hint: permission_hint(path),
            },
            _ => ConnectError::Other {
                path: p(),
                source: e,
            },
        })?;
        let writer = stream
            .try_clone()
            .map_err(|source| ConnectError::Other { path: p(), source })?;
        Ok(Client {
            path: p(),
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits at most `timeout` for each line from the server (`None`: for ever, as `follow`
    /// does).
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        let _ = self.writer.set_read_timeout(timeout);
        let _ = self.writer.set_write_timeout(timeout);
    }

    /// Calls `method` with `params` (an object, or `Null` for none) and waits for its answer.
    /// Notifications that arrive meanwhile (of a `follow` on this connection) are skipped.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer
            .write_all(rpc::request_line(id, method, &params).as_bytes())
            .map_err(|e| self.broken(format!("cannot send the request: {e}")))?;
        loop {
            match self.read()? {
                Reply::Answer { id: got, result } if got == id => {
                    return result.map_err(CallError::Rpc)
                }
                Reply::Answer { id: got, result } => {
                    // The server answers a line it could not read with id null.
                    if let (Value::Null, Err(e)) = (&got, result) {
                        return Err(CallError::Rpc(e));
                    }
                }
                Reply::Notification { .. } => {}
            }
        }
    }

    /// Starts a `follow` stream: then read its notifications with [`Client::next_notification`].
    pub fn follow(&mut self) -> Result<(), CallError> {
        self.call("follow", Value::Null).map(|_| ())
    }

    /// The next notification from the server (`method`, `params`): `snapshot`, `change` or
    /// `resync`.
    pub fn next_notification(&mut self) -> Result<(String, Value), CallError> {
        loop {
            if let Reply::Notification { method, params } = self.read()? {
                return Ok((method, params));
            }
        }
    }

    fn read(&mut self) -> Result<Reply, CallError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_REPLY as u64 + 1)
            .read_until(b'\n', &mut line);
        let n = read.map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                self.broken("the server did not answer in time".into())
            } else {
                self.broken(format!("reading the answer: {e}"))
            }
        })?;
        if n == 0 {
            return Err(self.broken("the server closed the connection".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(self.broken(if line.len() > MAX_REPLY {
                format!("an answer longer than {MAX_REPLY} bytes")
            } else {
                "the server closed the connection in the middle of an answer".into()
            }));
        }
        line.pop();
        rpc::parse_reply(&line).map_err(|problem| self.broken(problem))
    }

    fn broken(&self, problem: String) -> CallError {
        CallError::Connection {
            path: self.path.clone(),
            problem,
        }
    }
}

/// What to do about a socket we may not open: join its group, or run as its owner.
fn permission_hint(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    // The socket itself, or (when its directory is closed to us) the nearest directory above
    // it that we can see.
    let seen = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok().map(|m| (p.to_path_buf(), m)));
    match seen {
        Some((p, m)) => {
            let group = group_name(m.gid()).unwrap_or_else(|| format!("gid {}", m.gid()));
            format!(
                "{} belongs to group {group} (mode {:o}): run the command as root or as the service user (sudo -u busylamp), or add your user to group {group} and log in again",
                p.display(),
                m.mode() & 0o7777
            )
        }
        None => "run the command as root or as the service user (sudo -u busylamp)".into(),
    }
}

/// The name of group `gid` from /etc/group (no NSS: a hint only).
fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("busylamp-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn connect_errors_say_why() {
        let dir = temp("errors");
        let missing = dir.join("control.sock");
        let e = Client::connect(&missing).err().unwrap();
        assert!(matches!(e, ConnectError::NoSocket(_)), "{e}");
        assert!(
            e.to_string().contains("not running")
                && e.to_string().contains(&missing.display().to_string())
        );

        let file = dir.join("file");
        std::fs::write(&file, "x").unwrap();
        let e = Client::connect(&file).err().unwrap();
        assert!(matches!(e, ConnectError::NotASocket(_)), "{e}");

        // A socket file nobody listens on any more.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let e = Client::connect(&stale).err().unwrap();
        assert!(matches!(e, ConnectError::Refused(_)), "{e}");
        assert!(e.to_string().contains("not running"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn group_names_come_from_etc_group() {
        // gid 0 is root's group wherever /etc/group exists.
        if std::path::Path::new("/etc/group").exists() {
            assert_eq!(group_name(0).as_deref(), Some("root"));
        }
    }
}
