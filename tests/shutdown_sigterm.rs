//! SIGTERM to the real binary (issue 9 §1 "Shutdown"): it stops reading, answers the
//! REGISTERs it already read once their writes are flushed, exits 0 within 2 s, and after a
//! restart on the same data directory every binding it acknowledged is there.

mod common;
use busylamp::sip::HeaderName;
use common::binary::Busylamp;
use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

fn binding(user: &str, port: u16) -> Vec<u8> {
    register(
        user,
        port,
        &format!("call-{user}"),
        1,
        &format!("Contact: <sip:{user}@127.0.0.1:{port}>\n        Expires: 3600"),
    )
}

/// A REGISTER without Contact: a query, answered with the current bindings.
fn query(user: &str, port: u16) -> Vec<u8> {
    register(user, port, &format!("query-{user}"), 1, "")
}

fn user_of(r: &busylamp::sip::Response) -> String {
    r.headers
        .get(HeaderName::CallId)
        .unwrap()
        .trim_start_matches("call-")
        .trim_start_matches("query-")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_within_2_s_and_keeps_every_acknowledged_binding() {
    let mut busylamp = Busylamp::new("sigterm", "");
    let server = busylamp.addr;
    busylamp.wait_ready().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = sock.local_addr().unwrap().port();
    let mut buf = vec![0u8; 65536];
    let mut acked = HashSet::new();

    // Registered well before the signal.
    for i in 0..50 {
        sock.send_to(&binding(&format!("a{i}"), p), server)
            .await
            .unwrap();
    }
    while acked.len() < 50 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("answers within 5 s")
            .unwrap();
        let r = parse_response(&buf[..n]);
        assert_eq!(r.status, 200, "{}", r.reason);
        acked.insert(user_of(&r));
    }
    // A burst still in flight when the signal lands: whatever of it is acknowledged must
    // survive too.
    for i in 0..200 {
        sock.send_to(&binding(&format!("b{i}"), p), server)
            .await
            .unwrap();
    }
    let signalled = Instant::now();
    let status = busylamp.terminate(Duration::from_secs(2)).await;
    let took = signalled.elapsed();
    let log_text = busylamp.log_text();
    let status = status.unwrap_or_else(|| panic!("still running 2 s after SIGTERM\n{log_text}"));
    assert_eq!(status.code(), Some(0), "exit status {status}\n{log_text}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Answers sent before the exit are in our socket buffer.
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await
    {
        let r = parse_response(&buf[..n]);
        if r.status == 200 {
            acked.insert(user_of(&r));
        }
    }

    busylamp.start();
    busylamp.wait_ready().await;
    let mut missing = Vec::new();
    let acked: Vec<String> = acked.into_iter().collect();
    for chunk in acked.chunks(50) {
        for user in chunk {
            sock.send_to(&query(user, p), server).await.unwrap();
        }
        let mut seen = HashSet::new();
        while seen.len() < chunk.len() {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .expect("query answers within 5 s")
                .unwrap();
            let r = parse_response(&buf[..n]);
            let user = user_of(&r);
            if contacts(&r).is_empty() {
                missing.push(user.clone());
            }
            seen.insert(user);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged bindings lost after SIGTERM: {missing:?}\n{}",
        missing.len(),
        acked.len(),
        busylamp.log_text()
    );
    eprintln!(
        "SIGTERM: exit 0 after {took:?}, {} acknowledged bindings all present after restart",
        acked.len()
    );
}
