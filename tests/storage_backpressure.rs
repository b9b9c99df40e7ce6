//! Bounded storage (issue 9 §1): a flood of REGISTERs while the disk is slow. The write queue
//! never holds more than its bound, the requests it cannot take are answered `503 Storage busy`
//! with `Retry-After` (and change nothing), and every binding answered 200 is on "disk".
//! The in-memory store's stalled disk stands in for a slow one: writes wait in the same
//! bounded queue the sled store uses until the test flushes.

mod common;
use busylamp::config::Config;
use busylamp::sip::{HasHeaders, HeaderName};
use busylamp::storage::{BindingStore, MemoryStore};
use common::*;
use std::collections::HashSet;
use std::sync::Arc;

const BOUND: usize = 8;

fn register_user(user: &str, port: u16) -> Vec<u8> {
    register(
        user,
        port,
        &format!("flood-{user}"),
        1,
        &format!("Contact: <sip:{user}@127.0.0.1:{port}>\n        Expires: 600"),
    )
}

fn aor(user: &str) -> String {
    format!("sip:{user}@example.test")
}

fn user_of(r: &busylamp::sip::Response) -> String {
    r.headers
        .get(HeaderName::CallId)
        .unwrap()
        .trim_start_matches("flood-")
        .to_string()
}

fn stored_aors(store: &MemoryStore) -> HashSet<String> {
    store
        .load_bindings()
        .unwrap()
        .into_iter()
        .map(|(aor, _)| aor)
        .collect()
}

#[tokio::test]
async fn a_register_flood_on_a_slow_disk_gets_503s_and_loses_nothing_acknowledged() {
    let cfg = Config::from_toml(TRUSTED, "test.toml").unwrap();
    let store = Arc::new(MemoryStore::with_max_queued_writes(BOUND));
    let s = server_with_store(cfg, store.clone()).await;
    let c = Udp::new(s.udp).await;
    let users: Vec<String> = (0..5 * BOUND).map(|i| format!("u{i}")).collect();

    store.stall_disk();
    for u in &users {
        c.send(&register_user(u, c.port())).await;
    }
    // Everything beyond the bound is refused at once; the rest waits for the disk.
    let mut refused = Vec::new();
    for _ in 0..users.len() - BOUND {
        let r = c.recv().await;
        assert_eq!(
            (r.status, r.reason.as_str()),
            (503, "Storage busy"),
            "only refusals come back while the disk is stalled"
        );
        assert_eq!(r.headers.get_named("Retry-After"), Some("5"), "{r:?}");
        assert!(
            r.contacts().unwrap().is_empty(),
            "a refusal lists no binding"
        );
        refused.push(user_of(&r));
    }
    assert!(s.handle.core.messages_received() >= users.len() as u64);
    let q = store.write_queue();
    assert_eq!(q.waiting, BOUND, "{q:?}");
    assert_eq!(
        q.high_water, BOUND,
        "the queue never held more than its bound"
    );
    assert_eq!(q.refused, (users.len() - BOUND) as u64);
    assert!(stored_aors(&store).is_empty(), "nothing on disk yet");
    for u in &refused {
        assert!(
            s.handle.core.registrar.lookup(&aor(u)).is_empty(),
            "a refused REGISTER changed the bindings of {u}"
        );
    }

    // The disk catches up: the queued REGISTERs are answered 200, and only now.
    assert_eq!(store.flush_disk(), BOUND);
    let mut acknowledged = Vec::new();
    for _ in 0..BOUND {
        let r = c.recv().await;
        assert_eq!(r.status, 200, "{} {}", r.status, r.reason);
        acknowledged.push(user_of(&r));
    }
    let on_disk = stored_aors(&store);
    for u in &acknowledged {
        assert!(
            on_disk.contains(&aor(u)),
            "{u} was acknowledged, not stored"
        );
        assert!(!refused.contains(u));
    }

    // The refused ones try again (as Retry-After says) and get in.
    store.resume_disk();
    for u in &refused {
        let r = c.request(&register_user(u, c.port())).await;
        assert_eq!(r.status, 200, "{u}: {} {}", r.status, r.reason);
    }
    let on_disk = stored_aors(&store);
    for u in &users {
        assert!(on_disk.contains(&aor(u)), "{u} missing");
    }
    assert!(store.write_queue().high_water <= BOUND);
}

#[tokio::test]
async fn a_publish_that_finds_the_write_queue_full_gets_503_with_retry_after() {
    let cfg = Config::from_toml(TRUSTED, "test.toml").unwrap();
    let store = Arc::new(MemoryStore::with_max_queued_writes(BOUND));
    let s = server_with_store(cfg, store.clone()).await;
    let c = Udp::new(s.udp).await;
    store.stall_disk();
    for i in 0..BOUND {
        c.send(&register_user(&format!("f{i}"), c.port())).await;
    }
    // Sent after the REGISTERs from the same socket: read after them.
    let body = "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\"><tuple id=\"t\"><status><basic>open</basic></status></tuple></presence>\n";
    let publish = wire(&format!(
        "PUBLISH sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <sip:1001@example.test>;tag=p1
        To: <sip:1001@example.test>
        Call-ID: pub-1001
        CSeq: 1 PUBLISH
        Event: presence
        Expires: 600
        Content-Type: application/pidf+xml

{body}",
        p = c.port(),
        b = branch()
    ));
    let r = c.request(&publish).await;
    assert_eq!((r.status, r.reason.as_str()), (503, "Storage busy"));
    assert_eq!(r.headers.get_named("Retry-After"), Some("5"));
    assert!(
        r.headers.get(HeaderName::SipEtag).is_none(),
        "no ETag for a refused PUBLISH"
    );
    assert_eq!(store.write_queue().waiting, BOUND);
    assert_eq!(store.flush_disk(), BOUND);
    for _ in 0..BOUND {
        assert_eq!(c.recv().await.status, 200);
    }
}

#[tokio::test]
async fn a_start_after_a_long_downtime_rewrites_more_expired_aors_than_the_queue_holds() {
    use busylamp::storage::{durable, Binding};
    let store = Arc::new(MemoryStore::with_max_queued_writes(4));
    for i in 0..20 {
        let aor = aor(&format!("gone{i}"));
        let expired = Binding {
            contact: format!("sip:gone{i}@127.0.0.1:5070"),
            params: String::new(),
            q: 1000,
            expires_at: 1,
            call_id: "c".into(),
            cseq: 1,
            path: vec![],
            instance: None,
            reg_id: None,
            user_agent: None,
            source: "udp:127.0.0.1:5070".into(),
            registered_at: 0,
        };
        durable(store.save_bindings(&aor, &[expired]))
            .await
            .unwrap();
    }
    // A slow disk that keeps catching up while the server loads.
    store.stall_disk();
    let flusher = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                store.flush_disk();
                tokio::task::yield_now().await;
            }
        })
    };
    let cfg = Config::from_toml(TRUSTED, "test.toml").unwrap();
    let s = server_with_store(cfg, store.clone()).await;
    flusher.abort();
    assert!(
        stored_aors(&store).is_empty(),
        "expired bindings left on disk"
    );
    // The loader met a full queue several times and waited instead of failing the start.
    let q = store.write_queue();
    assert!(q.refused > 0, "the queue was never full: {q:?}");
    assert!(q.high_water <= 4, "{q:?}");
    assert_eq!(s.handle.core.registrar.binding_count(), 0);
}
