//! Acknowledged means durable: the real binary is killed with SIGKILL in the middle of a
//! REGISTER load; after a restart on the same data directory every binding that got a 200 is
//! still there. Bounded: at most ~4,000 REGISTERs and 60 s.

mod common;
use busylamp::sip::HeaderName;
use common::binary::Busylamp;
use common::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

fn user_register(user: &str, port: u16, extra: &str) -> Vec<u8> {
    wire(&format!(
        "REGISTER sip:example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        From: <sip:{user}@example.test>;tag=f
        To: <sip:{user}@example.test>
        Call-ID: call-{user}
        CSeq: 1 REGISTER
        {extra}
        ",
        b = branch()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_binding_survives_kill_9() {
    let mut busylamp = Busylamp::new("registrar", "");
    let server = busylamp.addr;
    busylamp.wait_ready().await;

    // Four senders keep a window of REGISTERs in flight; every 200 is recorded.
    let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for t in 0..4 {
        let acked = acked.clone();
        let sent = sent.clone();
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let p = sock.local_addr().unwrap().port();
            let mut buf = vec![0u8; 65536];
            for batch in 0..25 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for i in 0..40 {
                    let user = format!("u{t}x{batch}x{i}");
                    let m = user_register(
                        &user,
                        p,
                        &format!("Contact: <sip:{user}@127.0.0.1:{p}>\n        Expires: 3600"),
                    );
                    let _ = sock.send_to(&m, server).await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let until = tokio::time::Instant::now() + Duration::from_millis(400);
                let mut got = 0;
                while got < 40 {
                    match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
                        Ok(Ok((n, _))) => {
                            let r = parse_response(&buf[..n]);
                            if r.status == 200 {
                                let call = r.headers.get(HeaderName::CallId).unwrap();
                                acked
                                    .lock()
                                    .unwrap()
                                    .insert(call.trim_start_matches("call-").to_string());
                            }
                            got += 1;
                        }
                        _ => break,
                    }
                }
            }
        }));
    }
    // Kill once a good number were acknowledged, while the senders are still sending.
    let start = Instant::now();
    while acked.lock().unwrap().len() < 1200 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    busylamp.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    let acked: Vec<String> = acked.lock().unwrap().iter().cloned().collect();
    let total_sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        acked.len() >= 500,
        "load too small to prove anything: {} acked",
        acked.len()
    );
    assert!(
        total_sent > acked.len(),
        "the kill must land mid-load ({total_sent} sent, {} acked)",
        acked.len()
    );

    busylamp.start();
    busylamp.wait_ready().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = sock.local_addr().unwrap().port();
    let mut missing = Vec::new();
    let mut buf = vec![0u8; 65536];
    for chunk in acked.chunks(50) {
        for user in chunk {
            let _ = sock.send_to(&user_register(user, p, ""), server).await;
        }
        let mut seen = HashSet::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < chunk.len() {
            let (n, _) = tokio::time::timeout_at(until, sock.recv_from(&mut buf))
                .await
                .expect("query answers within 5 s")
                .unwrap();
            let r = parse_response(&buf[..n]);
            let user = r
                .headers
                .get(HeaderName::CallId)
                .unwrap()
                .trim_start_matches("call-")
                .to_string();
            if contacts(&r).is_empty() {
                missing.push(user.clone());
            }
            seen.insert(user);
        }
    }
    let log_text = busylamp.log_text();
    drop(busylamp);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged bindings lost after kill -9 ({total_sent} sent): {:?}\n{log_text}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "kill -9: {} acknowledged of {total_sent} sent, all {} present after restart",
        acked.len(),
        acked.len()
    );
}
