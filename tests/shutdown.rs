//! Orderly shutdown in-process (issue 9 §1 "Shutdown"): the UDP and TCP loops end and their
//! sockets close (the ports can be bound again, a message sent there reaches no server), a
//! REGISTER already read is answered once its write is flushed, and what was acknowledged is
//! on disk when the store is reopened.

mod common;
use busylamp::config::Config;
use busylamp::server::{start, Stores};
use busylamp::storage::{BindingStore, DialogStore, MemoryStore, PresenceStore, SledStore};
use busylamp::transport::Proto;
use common::*;
use std::sync::Arc;
use std::time::Duration;

fn register_user(user: &str, port: u16, transport: &str) -> Vec<u8> {
    let m = register(
        user,
        port,
        &format!("stop-{user}"),
        1,
        &format!("Contact: <sip:{user}@127.0.0.1:{port}>\n        Expires: 600"),
    );
    String::from_utf8(m)
        .unwrap()
        .replace("SIP/2.0/UDP", &format!("SIP/2.0/{transport}"))
        .into_bytes()
}

/// Opens the sled store at `dir`, retrying while the previous instance still holds its lock
/// (its last references drop as the aborted tasks are dropped).
async fn reopen(dir: &std::path::Path) -> SledStore {
    for _ in 0..250 {
        if let Ok(s) = SledStore::open(dir, Duration::ZERO) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("store at {} not released", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_the_sockets_are_closed_and_acknowledged_writes_are_on_disk() {
    let dir = std::env::temp_dir().join(format!("busylamp-shutdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(SledStore::open(&dir, Duration::ZERO).unwrap());
    let cfg = Config::from_toml(TRUSTED, "test.toml").unwrap();
    let handle = start(
        &cfg,
        Stores {
            bindings: store.clone() as Arc<dyn BindingStore>,
            presence: store.clone() as Arc<dyn PresenceStore>,
            dialogs: store.clone() as Arc<dyn DialogStore>,
            users: None,
            nonce_key: Some(NONCE_KEY),
        },
    )
    .await
    .unwrap();
    let udp = handle.local_addr(Proto::Udp).unwrap();
    let tcp = handle.local_addr(Proto::Tcp).unwrap();
    let core = handle.core.clone();
    let c = Udp::new(udp).await;
    let r = c.request(&register_user("1001", c.port(), "UDP")).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let mut t = Tcp::connect(tcp).await;
    let port = t.local_port();
    let r = t.request(&register_user("1002", port, "TCP")).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let received = core.messages_received();

    tokio::time::timeout(Duration::from_secs(2), handle.shutdown())
        .await
        .expect("shutdown within 2 s");

    // The TCP connection was closed by the server...
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut t.stream, &mut byte),
    )
    .await
    .expect("the connection is closed, not left hanging")
    .unwrap_or(0);
    assert_eq!(n, 0, "connection still open");
    // ...and both ports are free: the sockets are closed, not merely unread.
    let rebound_udp = tokio::net::UdpSocket::bind(udp)
        .await
        .expect("UDP port free");
    drop(
        tokio::net::TcpListener::bind(tcp)
            .await
            .expect("TCP port free"),
    );
    assert!(
        tokio::net::TcpStream::connect(tcp).await.is_err(),
        "something still accepts"
    );
    // A request sent to the old address lands in our socket, not in the server's: no answer,
    // and the server read nothing more.
    c.send(&options(c.port())).await;
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), rebound_udp.recv_from(&mut buf))
        .await
        .expect("the OPTIONS arrives at the port")
        .unwrap();
    assert!(n > 0 && from.port() == c.port());
    assert_eq!(core.messages_received(), received);
    drop(core);

    store.close().unwrap();
    drop(store);
    let reopened = reopen(&dir).await;
    let aors: Vec<String> = reopened
        .load_bindings()
        .unwrap()
        .into_iter()
        .map(|(aor, _)| aor)
        .collect();
    assert!(
        aors.contains(&"sip:1001@example.test".to_string()),
        "{aors:?}"
    );
    assert!(
        aors.contains(&"sip:1002@example.test".to_string()),
        "{aors:?}"
    );
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn shutdown_answers_a_register_waiting_for_its_write_before_closing_the_connection() {
    let cfg = Config::from_toml(TRUSTED, "test.toml").unwrap();
    let store = Arc::new(MemoryStore::new());
    let s = server_with_store(cfg, store.clone()).await;
    let mut t = Tcp::connect(s.tcp).await;
    let port = t.local_port();
    store.stall_disk();
    t.send(&register_user("1001", port, "TCP")).await;
    // Read and queued for the disk, not yet answered.
    tokio::time::timeout(Duration::from_secs(5), async {
        while store.write_queue().waiting == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the REGISTER reaches the write queue");

    let stopping = tokio::spawn(s.handle.shutdown());
    // Shutdown waits for that answer: let it run as far as it can.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the write in flight"
    );
    assert_eq!(store.flush_disk(), 1);
    let r = t.recv().await;
    assert_eq!(r.status, 200, "{}", r.reason);
    tokio::time::timeout(Duration::from_secs(2), stopping)
        .await
        .expect("shutdown ends once the answer left")
        .unwrap();
    assert_eq!(store.load_bindings().unwrap().len(), 1);
    assert!(tokio::net::TcpStream::connect(s.tcp).await.is_err());
}
