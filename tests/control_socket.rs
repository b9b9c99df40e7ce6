//! The control socket against the in-process server: JSON-RPC over a real Unix socket, several
//! clients at once, bad input (1,000 mutated lines, an over-long line, a client that never
//! reads) answered with an error or a disconnect while SIP and the other clients go on, and
//! `follow`: a change within 50 ms of a REGISTER, `resync` after lag.

mod common;

use busylamp::control::rpc::RpcError;
use busylamp::control::server::{self as control, ControlError, Limits};
use busylamp::control::{Answer, Methods};
use busylamp::events::{Event, EventBus};
use common::mutate::{apply, draw, edits, fixed_runner};
use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// A fresh directory for one test's socket (short: a socket path holds 107 bytes).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The trusting test server with its control socket at `DIR/control.sock` and `extra` in
/// `[control]`.
async fn server_with_socket(name: &str, extra: &str) -> (TestServer, PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let path = dir.join("control.sock");
    let cfg = format!(
        "{TRUSTED}\n[control]\nsocket = \"{}\"\n{extra}\n",
        path.display()
    );
    let s = server(&cfg).await;
    assert_eq!(s.handle.control_socket(), Some(path.as_path()));
    (s, path, dir)
}

/// One control connection, read line by line.
struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Conn {
    async fn connect(path: &Path) -> Conn {
        let (rd, wr) = UnixStream::connect(path).await.unwrap().into_split();
        Conn {
            rd: BufReader::new(rd),
            wr,
        }
    }

    async fn send(&mut self, line: &[u8]) {
        self.wr.write_all(line).await.unwrap();
        self.wr.write_all(b"\n").await.unwrap();
    }

    /// The next line as JSON; `None` when the server closed the connection.
    async fn line(&mut self) -> Option<Value> {
        self.line_within(Duration::from_secs(5))
            .await
            .expect("a line from the control socket within the time")
    }

    /// `Err` when nothing came within `within`.
    async fn line_within(&mut self, within: Duration) -> Result<Option<Value>, ()> {
        let mut line = String::new();
        match tokio::time::timeout(within, self.rd.read_line(&mut line)).await {
            Err(_) => Err(()),
            Ok(Err(_)) | Ok(Ok(0)) => Ok(None),
            // Closed in the middle of a line: the end of the connection.
            Ok(Ok(_)) if !line.ends_with('\n') => Ok(None),
            Ok(Ok(_)) => Ok(Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                let head: String = line.chars().take(200).collect();
                panic!("{e}: {head:?}")
            }))),
        }
    }

    async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(req.to_string().as_bytes()).await;
        let answer = self
            .line()
            .await
            .expect("an answer, not a closed connection");
        assert_eq!(answer["id"], id, "{answer}");
        answer
    }

    async fn status(&mut self, id: u64) -> Value {
        let answer = self.call(id, "status", json!({})).await;
        assert_eq!(answer["result"]["api"], 1, "{answer}");
        answer["result"].clone()
    }

    /// Whether the server closes the connection within `within` (lines before it skipped).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.line_within(left).await {
                Ok(None) => return true,
                Ok(Some(_)) => {}
                Err(()) => return false,
            }
        }
    }
}

#[tokio::test]
async fn status_answers_over_the_real_socket_which_is_0660_and_removed_at_shutdown() {
    // The default place: control.sock in the data directory, with its group.
    let dir = temp_dir("default");
    let cfg = TRUSTED.replace(
        "data_dir = \"/nonexistent-unused-by-memory-store\"",
        &format!("data_dir = \"{}\"", dir.display()),
    );
    let s = server(&cfg).await;
    let path = dir.join("control.sock");
    assert_eq!(s.handle.control_socket(), Some(path.as_path()));
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), std::fs::metadata(&dir).unwrap().gid());

    let mut c = Conn::connect(&path).await;
    let status = c.status(1).await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["counts"]["bindings"].is_u64(), "{status}");
    // Methods the api serves answer through the socket too, errors with the field named.
    let answer = c.call(2, "registrations", json!({"limit": 5000})).await;
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{answer}"
    );
    let answer = c.call(3, "no_such_method", json!({})).await;
    assert_eq!(answer["error"]["code"], -32601, "{answer}");
    // A notification gets no answer: the next answer is the next request's.
    c.send(br#"{"jsonrpc":"2.0","method":"status"}"#).await;
    c.status(4).await;

    s.handle.shutdown().await;
    assert!(!path.exists(), "the socket file is removed at shutdown");
    assert!(c.closed_within(Duration::from_secs(5)).await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn several_clients_at_once_each_get_their_answers_in_order_and_extra_clients_are_refused() {
    let (s, path, dir) = server_with_socket("many", "max_clients = 8").await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Conn::connect(&path).await);
    }
    // Every client pipelines 20 requests before reading any answer.
    for c in clients.iter_mut() {
        for id in 0..20u64 {
            let req = json!({"jsonrpc": "2.0", "id": id, "method": "status"});
            c.send(req.to_string().as_bytes()).await;
        }
    }
    for c in clients.iter_mut() {
        for id in 0..20u64 {
            let a = c.line().await.unwrap();
            assert_eq!(a["id"], id, "in order: {a}");
            assert_eq!(a["result"]["api"], 1);
        }
    }
    // The ninth is told why and closed.
    let mut ninth = Conn::connect(&path).await;
    let refused = ninth.line().await.expect("an error line");
    assert_eq!(refused["error"]["code"], -32003, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_clients = 8"),
        "{refused}"
    );
    assert!(ninth.closed_within(Duration::from_secs(5)).await);
    // One leaves: its slot is free again once the server saw it go.
    drop(clients.pop());
    let mut got_in = false;
    for _ in 0..200 {
        let mut c = Conn::connect(&path).await;
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "status"});
        c.send(req.to_string().as_bytes()).await;
        if c.line()
            .await
            .and_then(|a| a.get("result").cloned())
            .is_some()
        {
            got_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(got_in, "a slot is freed when a client leaves");
    for c in clients.iter_mut() {
        c.status(99).await;
    }
    s.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lines a JSON parser and a JSON-RPC reader trip on, besides the mutated ones.
fn nasty_lines() -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = [
        "",
        " ",
        "\r",
        "null",
        "{}",
        "[]",
        "\"status\"",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\",\"params\":{\"a\":1e999999}}",
        "{\"jsonrpc\":\"2.0\",\"id\":1e400,\"method\":\"status\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\\ud800\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\\u0000\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"id\":2,\"method\":\"status\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":[1],\"method\":\"status\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"follow\",\"params\":{\"x\":\"y\"}}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"registrations\",\"params\":{\"limit\":-1,\"offset\":1e30}}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"publish\",\"params\":{\"presentity\":\"\\u0000\",\"event\":\"presence\"}}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    lines.push(b"\xff\xfe{\"jsonrpc\"".to_vec());
    lines.push([b"[".repeat(5000), b"]".repeat(5000)].concat());
    lines.push([b"{\"a\":".repeat(3000), b"1".to_vec(), b"}".repeat(3000)].concat());
    lines
}

/// Valid requests the mutations start from.
fn base_lines() -> Vec<Vec<u8>> {
    [
        json!({"jsonrpc": "2.0", "id": 1, "method": "status"}),
        json!({"jsonrpc": "2.0", "id": "x", "method": "registrations", "params": {"filter": "100", "offset": 0, "limit": 10}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "subscriptions", "params": {"limit": 1000}}),
        json!({"jsonrpc": "2.0", "id": 4, "method": "calls", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "lines"}),
        json!({"jsonrpc": "2.0", "id": 6, "method": "rules"}),
    ]
    .iter()
    .map(|v| v.to_string().into_bytes())
    .collect()
}

#[tokio::test]
async fn a_thousand_mutated_lines_each_get_an_error_or_an_answer_and_the_server_goes_on() {
    let (s, path, dir) = server_with_socket("mutated", "").await;
    let mut c = Conn::connect(&path).await;
    let mut other = Conn::connect(&path).await;
    let bases = base_lines();
    let mut runner = fixed_runner(13);
    let strategy = edits(6);
    let mut lines = nasty_lines();
    for i in 0..1000 {
        let mut line = apply(&bases[i % bases.len()], &draw(&mut runner, &strategy));
        // One line each: a newline the edits made would split it in two.
        line.retain(|&b| b != b'\n');
        lines.push(line);
    }
    let (mut errors, mut results, mut silent) = (0, 0, 0);
    for (n, line) in lines.iter().enumerate() {
        c.send(line).await;
        // A status request behind each line: what comes before its answer is the line's.
        let sentinel = format!("sentinel-{n}");
        let req = json!({"jsonrpc": "2.0", "id": sentinel, "method": "status"});
        c.send(req.to_string().as_bytes()).await;
        let mut answers = Vec::new();
        loop {
            let a = c
                .line()
                .await
                .unwrap_or_else(|| panic!("closed after {:?}", String::from_utf8_lossy(line)));
            if a.get("id").is_none() {
                continue; // a notification of a stream a mutated line started
            }
            if a["id"] == sentinel.as_str() {
                assert_eq!(a["result"]["api"], 1);
                break;
            }
            answers.push(a);
        }
        match answers.as_slice() {
            [] => silent += 1, // it became a notification: no answer, by JSON-RPC
            [a] if a["error"]["code"].is_i64() => {
                assert!(a["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()));
                errors += 1
            }
            [a] if a.get("result").is_some() => results += 1,
            more => panic!(
                "{} answers to {:?}: {more:?}",
                more.len(),
                String::from_utf8_lossy(line)
            ),
        }
        if n % 100 == 0 {
            other.status(n as u64).await;
        }
    }
    assert!(
        errors > 500,
        "{errors} errors, {results} results, {silent} silent"
    );
    // The server is fine: SIP and the other client are answered.
    other.status(1).await;
    let ua = Udp::new(s.udp).await;
    assert_eq!(ua.request(&options(ua.port())).await.status, 200);
    s.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_over_long_line_is_answered_and_the_connection_closed() {
    let (s, path, dir) = server_with_socket("long", "max_line = 1024").await;
    // A line of exactly the limit is read.
    let mut c = Conn::connect(&path).await;
    let head = r#"{"jsonrpc":"2.0","id":1,"method":"status"}"#;
    let fits = format!("{head}{}", " ".repeat(1024 - head.len()));
    assert_eq!(fits.len(), 1024);
    c.send(fits.as_bytes()).await;
    assert_eq!(c.line().await.unwrap()["result"]["api"], 1);
    // One byte more, without its newline even: an error, then the connection is closed.
    let mut long = Conn::connect(&path).await;
    long.wr
        .write_all(format!("{fits} ").as_bytes())
        .await
        .unwrap();
    let a = long.line().await.expect("an error line");
    assert_eq!(a["error"]["code"], -32600, "{a}");
    assert!(
        a["error"]["message"].as_str().unwrap().contains("1024"),
        "{a}"
    );
    assert!(long.closed_within(Duration::from_secs(5)).await);
    // Megabytes in one line cost the server no more than the limit.
    let mut huge = Conn::connect(&path).await;
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..16 {
        if huge.wr.write_all(&chunk).await.is_err() {
            break; // closed under us: fine
        }
    }
    assert!(huge.closed_within(Duration::from_secs(5)).await);
    c.status(2).await;
    s.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A REGISTER of `user` for 3600 s from `ua`, the `cseq`th of its Call-ID.
fn register_1h(ua: &Udp, user: &str, cseq: u32) -> Vec<u8> {
    register(
        user,
        ua.port(),
        &format!("ctl-{user}-{}", ua.port()),
        cseq,
        &format!(
            "Contact: <sip:{user}@127.0.0.1:{}>\nExpires: 3600",
            ua.port()
        ),
    )
}

#[tokio::test]
async fn follow_delivers_a_change_within_50_ms_of_a_register() {
    let (s, path, dir) = server_with_socket("follow", "").await;
    let mut f = Conn::connect(&path).await;
    let answer = f.call(1, "follow", Value::Null).await;
    assert_eq!(answer["result"]["following"], true, "{answer}");
    let snap = f.line().await.unwrap();
    assert_eq!(snap["method"], "snapshot", "{snap}");
    assert_eq!(snap["params"]["seq"], 0);
    assert_eq!(snap["params"]["status"]["api"], 1, "{snap}");
    for key in ["registrations", "calls", "subscriptions", "lines"] {
        assert!(snap["params"][key].is_array(), "{key}: {snap}");
    }
    let ua = Udp::new(s.udp).await;
    let mut seq = 0;
    for (cseq, change) in [(1, "registered"), (2, "refreshed")] {
        let sent = tokio::time::Instant::now();
        ua.send(&register_1h(&ua, "1001", cseq)).await;
        // The first registration change, and every line before it numbered in turn.
        let got = loop {
            let left = Duration::from_millis(50).saturating_sub(sent.elapsed());
            let n = f
                .line_within(left)
                .await
                .unwrap_or_else(|()| panic!("no {change} change within 50 ms"))
                .unwrap();
            assert_eq!(n["method"], "change", "{n}");
            seq += 1;
            assert_eq!(n["params"]["seq"], seq, "{n}");
            if n["params"]["kind"] == "registration" {
                break n;
            }
        };
        assert!(sent.elapsed() <= Duration::from_millis(50));
        assert_eq!(got["params"]["change"], change, "{got}");
        assert_eq!(got["params"]["aor"], "sip:1001@example.test", "{got}");
        // The binding's flow and expiry (unix seconds), named as the snapshot's contacts.
        assert_eq!(
            got["params"]["flow"],
            format!("udp:127.0.0.1:{}", ua.port()),
            "{got}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expires = got["params"]["expires"].as_u64().expect("expires");
        assert!(
            (now + 3590..=now + 3601).contains(&expires),
            "{expires} vs now {now}: {got}"
        );
        assert_eq!(ua.recv().await.status, 200);
    }
    // A second follow on the same connection is refused; unfollow ends the stream.
    let again = f.call(2, "follow", Value::Null).await;
    assert_eq!(again["error"]["code"], -32003, "{again}");
    let stop = f.call(3, "unfollow", Value::Null).await;
    assert_eq!(stop["result"]["was_following"], true, "{stop}");
    ua.send(&register_1h(&ua, "1001", 3)).await;
    assert_eq!(ua.recv().await.status, 200);
    f.status(4).await; // the next line is the answer, no change
    s.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Methods of a fixed state, for the socket's own behaviour; its snapshot has this many
/// bytes of padding.
struct Fixed(usize);

impl Methods for Fixed {
    fn call(&self, method: &str, _params: Value) -> Answer {
        let r = match method {
            "status" => Ok(json!({"api": 1})),
            other => Err(RpcError::new(-32601, format!("unknown method {other:?}"))),
        };
        Box::pin(async move { r })
    }
    fn snapshot(&self) -> Value {
        json!({"status": {"api": 1}, "padding": "x".repeat(self.0)})
    }
}

fn appearance(i: u32) -> Event {
    Event::Appearance {
        line: "sip:2000@example.test".into(),
        appearance: i,
        state: "seized",
        phone: Some("sip:1001@example.test".into()),
        peer: None,
    }
}

#[tokio::test]
async fn a_follower_the_bus_left_behind_gets_resync_and_a_fresh_snapshot() {
    let dir = temp_dir("lag");
    let path = dir.join("c.sock");
    let bus = EventBus::new(8);
    let server = control::start(
        &path,
        None,
        Limits::default(),
        Arc::new(Fixed(0)),
        bus.clone(),
    )
    .unwrap();
    let mut f = Conn::connect(&path).await;
    assert_eq!(
        f.call(1, "follow", Value::Null).await["result"]["following"],
        true
    );
    assert_eq!(f.line().await.unwrap()["params"]["seq"], 0);
    bus.publish(appearance(0));
    assert_eq!(f.line().await.unwrap()["params"]["seq"], 1);
    // 100 changes at once: the bus keeps 8 for this reader, which is told to start again.
    for i in 0..100 {
        bus.publish(appearance(i));
    }
    let resync = f.line().await.unwrap();
    assert_eq!(resync, json!({"jsonrpc": "2.0", "method": "resync"}));
    let snap = f.line().await.unwrap();
    assert_eq!(snap["method"], "snapshot", "{snap}");
    assert_eq!(snap["params"]["seq"], 2);
    bus.publish(appearance(7));
    let next = f.line().await.unwrap();
    assert_eq!(
        (
            next["method"].as_str(),
            next["params"]["seq"].as_u64(),
            next["params"]["appearance"].as_u64()
        ),
        (Some("change"), Some(3), Some(7))
    );
    server.stop();
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_follower_that_never_reads_is_resynced_or_dropped_while_sip_goes_on() {
    let (s, path, dir) = server_with_socket("stuck", "").await;
    let mut stuck = Conn::connect(&path).await;
    stuck
        .send(br#"{"jsonrpc":"2.0","id":1,"method":"follow"}"#)
        .await;
    let mut other = Conn::connect(&path).await;
    other.status(1).await;
    // Far more changes than the socket buffer and the queue hold; every REGISTER answered.
    let ua = Udp::new(s.udp).await;
    let started = std::time::Instant::now();
    for cseq in 1..=1500u32 {
        let r = ua.request(&register_1h(&ua, "1001", cseq)).await;
        assert_eq!(r.status, 200);
        if cseq % 250 == 0 {
            other.status(u64::from(cseq)).await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "SIP kept its pace"
    );
    // The stuck client, reading at last: the stream it missed is not there; it was either
    // told to resync or dropped.
    let mut lines = 0;
    let outcome = loop {
        match stuck.line().await {
            None => break "disconnected",
            Some(n) if n["method"] == "resync" => {
                let snap = stuck.line().await.unwrap();
                assert_eq!(snap["method"], "snapshot", "{snap}");
                break "resynced";
            }
            Some(_) => lines += 1,
        }
        assert!(
            lines < 1500,
            "all 1500 changes were kept for a client that did not read"
        );
    };
    eprintln!("the stuck follower was {outcome} after {lines} lines");
    other.status(2).await;
    s.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_a_live_one_or_another_file_is_an_error_naming_the_path() {
    let dir = temp_dir("stale");
    let path = dir.join("c.sock");
    // Left by a server that died: nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let first = control::start(
        &path,
        None,
        Limits::default(),
        Arc::new(Fixed(0)),
        EventBus::new(8),
    )
    .expect("the stale socket is replaced");
    Conn::connect(&path).await.status(1).await;
    // Another server on the same path while the first answers.
    let err = control::start(
        &path,
        None,
        Limits::default(),
        Arc::new(Fixed(0)),
        EventBus::new(8),
    )
    .err()
    .expect("a live socket is not taken over");
    assert!(matches!(err, ControlError::Live(_)), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    Conn::connect(&path).await.status(2).await;
    first.stop();
    // A file that is not a socket is never removed.
    let file = dir.join("notes");
    std::fs::write(&file, "keep me").unwrap();
    let err = control::start(
        &file,
        None,
        Limits::default(),
        Arc::new(Fixed(0)),
        EventBus::new(8),
    )
    .err()
    .unwrap();
    assert!(matches!(err, ControlError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    // Through the server's start: its error names the path.
    let cfg = format!("{TRUSTED}\n[control]\nsocket = \"{}\"\n", file.display());
    let cfg = busylamp::config::Config::from_toml(&cfg, "t.toml").unwrap();
    let store = Arc::new(busylamp::storage::MemoryStore::new());
    let err = busylamp::server::start(
        &cfg,
        busylamp::server::Stores {
            bindings: store.clone(),
            presence: store.clone(),
            dialogs: store,
            users: None,
            nonce_key: None,
        },
    )
    .await
    .err()
    .expect("no start on a path that is not a socket");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that never reads, on a socket whose writes stall: dropped once a write made no
/// progress for `write_timeout` (paused clock: the timeout passes without waiting for it).
#[tokio::test(start_paused = true)]
async fn a_client_whose_writes_stall_is_disconnected() {
    let dir = temp_dir("stall");
    let path = dir.join("c.sock");
    let bus = EventBus::new(64);
    let limits = Limits {
        queue: 2,
        write_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    // Every resync sends 64 KB: a few fill the socket buffer.
    let server =
        control::start(&path, None, limits, Arc::new(Fixed(64 * 1024)), bus.clone()).unwrap();
    let mut f = Conn::connect(&path).await;
    assert_eq!(
        f.call(1, "follow", Value::Null).await["result"]["following"],
        true
    );
    assert_eq!(f.line().await.unwrap()["method"], "snapshot");
    // Far more than the socket buffer holds, while the client reads nothing.
    for batch in 0..200 {
        for i in 0..50 {
            bus.publish(appearance(batch * 50 + i));
        }
        tokio::task::yield_now().await;
    }
    let mut other = Conn::connect(&path).await;
    other.status(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // What the socket buffer held, then the end (without it, `line` would find nothing to
    // read and panic): the server dropped the connection and kept no backlog.
    let mut lines = 0;
    while f.line().await.is_some() {
        lines += 1;
        assert!(
            lines < 10_000,
            "the server kept everything for a client that did not read"
        );
    }
    other.status(2).await;
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that sends requests and never reads the answers: its queue fills and it is
/// disconnected; the server and another client go on.
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_disconnected() {
    let (s, path, dir) = server_with_socket("noread", "").await;
    let mut other = Conn::connect(&path).await;
    let mut greedy = Conn::connect(&path).await;
    let req = format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "id": 1, "method": "lines"})
    );
    // Up to 100,000 requests (~5 MB), far beyond what the socket buffers and the queue hold;
    // a write fails once the server has dropped the connection.
    let mut sent = 0;
    for _ in 0..100_000 {
        match tokio::time::timeout(Duration::from_secs(5), greedy.wr.write_all(req.as_bytes()))
            .await
        {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break,
            Err(_) => panic!("the server stopped reading without closing: {sent} requests sent"),
        }
    }
    assert!(
        sent < 100_000,
        "all 100,000 requests were taken from a client that read nothing"
    );
    assert!(greedy.closed_within(Duration::from_secs(5)).await);
    other.status(1).await;
    let ua = Udp::new(s.udp).await;
    assert_eq!(ua.request(&options(ua.port())).await.status, 200);
    s.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The socket gets the data directory's group (the .deb's `busylamp` group reaches it), when
/// this process may give it (root here; otherwise the check is skipped).
#[tokio::test]
async fn the_socket_gets_the_group_of_the_data_directory() {
    let dir = temp_dir("group");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let other_gid = 65534; // nogroup
    if std::os::unix::fs::chown(&data, None, Some(other_gid)).is_err() {
        eprintln!("skipped: this process may not change a directory's group");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let path = dir.join("c.sock");
    let server = control::start(
        &path,
        Some(&data),
        Limits::default(),
        Arc::new(Fixed(0)),
        EventBus::new(8),
    )
    .unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.gid(), other_gid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
