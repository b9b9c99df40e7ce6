//! The subscription and publication caps (`presence.max_subscriptions`, `max_publications`)
//! are checked and taken in one step: SUBSCRIBEs and PUBLISHes racing at the limit on several
//! threads (different presentities, so different shard locks) admit exactly the cap, never
//! more; the rest get `503` with `Retry-After`.

use busylamp::clock::Clock;
use busylamp::config::Config;
use busylamp::presence::event::Pkg;
use busylamp::presence::{Presence, PublishError, Reply, Requester};
use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::{Message, Request};
use busylamp::storage::memory::MemoryStore;
use busylamp::transport::{Peer, Proto};
use std::sync::{Arc, Barrier};

const THREADS: usize = 8;
const PER_THREAD: usize = 16;
const CAP: usize = 37;

fn config() -> Config {
    Config::from_toml(
        &format!(
            r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[presence]
coalesce_ms = 0
max_subscriptions = {CAP}
max_publications = {CAP}
"#
        ),
        "cap.toml",
    )
    .expect("config")
}

fn subscribe(n: usize) -> Request {
    let text = format!(
        "SUBSCRIBE sip:{n}@example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKcap{n}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:w{n}@example.test>;tag=f{n}\r\n\
         To: <sip:{n}@example.test>\r\n\
         Call-ID: cap-{n}\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:w@127.0.0.1:5999>\r\n\
         Event: presence\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    );
    match parse_message(text.as_bytes(), &Limits::default()) {
        Ok(Message::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn peer() -> Peer {
    Peer {
        proto: Proto::Udp,
        remote: "127.0.0.1:5999".parse().unwrap(),
        local: "127.0.0.1:5060".parse().unwrap(),
        conn: None,
    }
}

fn status(reply: Reply) -> u16 {
    match reply {
        Reply::Now(r) => r.status,
        Reply::AfterWrite { response, .. } => response.status,
    }
}

/// Runs `each(n)` for THREADS × PER_THREAD distinct `n`, all threads released at once (inside
/// a runtime: an in-process publication spawns the wait for its write).
fn race<T: Send>(each: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let runtime = runtime.handle();
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (start, each) = (&start, &each);
                scope.spawn(move || {
                    let _inside = runtime.enter();
                    start.wait();
                    (0..PER_THREAD)
                        .map(|i| each(t * PER_THREAD + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
fn concurrent_subscribes_at_the_limit_admit_exactly_the_cap() {
    for round in 0..20 {
        let presence = Presence::new(
            &config(),
            Arc::new(MemoryStore::new()),
            Default::default(),
            Clock::new(),
        );
        let requests: Vec<Request> = (0..THREADS * PER_THREAD).map(subscribe).collect();
        let answers = race(|n| {
            let req = &requests[n];
            let parsed = req.validate().unwrap();
            let tag = format!("t{n}");
            status(presence.subscribe(req, &parsed, peer(), Requester::Unchecked, &tag))
        });
        let admitted = answers.iter().filter(|s| **s == 200).count();
        assert_eq!(admitted, CAP, "round {round}: {answers:?}");
        assert!(
            answers.iter().all(|s| *s == 200 || *s == 503),
            "{answers:?}"
        );
        assert_eq!(presence.subscription_count(), CAP);
        assert_eq!(presence.subscriptions().len(), CAP);
    }
}

#[test]
fn concurrent_publications_at_the_limit_admit_exactly_the_cap() {
    let pidf = b"<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:x@example.test\"><tuple id=\"t\"><status><basic>open</basic></status></tuple></presence>";
    for round in 0..20 {
        let presence = Presence::new(
            &config(),
            Arc::new(MemoryStore::new()),
            Default::default(),
            Clock::new(),
        );
        let answers = race(|n| {
            presence
                .publish(
                    &format!("sip:{n}@example.test"),
                    Pkg::Presence,
                    "cap",
                    pidf,
                    600,
                )
                .map(drop)
        });
        let admitted = answers.iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted, CAP, "round {round}");
        assert!(answers
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(PublishError::Full))));
        assert_eq!(presence.publication_count(), CAP);
    }
}
