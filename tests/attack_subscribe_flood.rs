//! Issue 11, item 7: baresip's mwi module loops (21,222 SUBSCRIBEs in 5 s from one client).
//! `[server] rate_limit_per_source` gives each source a token bucket for new SUBSCRIBEs and
//! REGISTERs: past its burst a flooding source gets `503` with `Retry-After`, while another
//! source is served as before, and the bucket refills with time.

mod common;
use common::authed::Authed;
use common::ua::Ua;
use common::*;
use std::time::Duration;

const BURST: usize = 20;

/// Digest users 1001/1002; 2 new SUBSCRIBEs/REGISTERs per second per source, 20 at once;
/// 127.0.0.3 is trusted for SUBSCRIBE.
fn config() -> String {
    BASE_CONFIG.replace(
        "data_dir = ",
        &format!("rate_limit_per_source = 2\nrate_limit_burst = {BURST}\ndata_dir = "),
    ) + "[auth]\ntrusted = [\"127.0.0.3/32\"]\ntrusted_for = [\"calls\", \"subscribe\"]\n"
}

/// A new SUBSCRIBE without credentials (as a looping client sends them).
fn subscribe(ua: &Ua, call_id: &str) -> Vec<u8> {
    let port = ua.port();
    let ip = ua.local_addr().ip();
    wire(&format!(
        "SUBSCRIBE sip:1002@example.test SIP/2.0
        Via: SIP/2.0/UDP {ip}:{port};branch={b}
        Max-Forwards: 70
        From: <sip:1001@example.test>;tag=t-{call_id}
        To: <sip:1002@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1001@{ip}:{port}>
        Event: message-summary
        Expires: 3600
        ",
        b = branch()
    ))
}

#[tokio::test(start_paused = true)]
async fn a_source_flooding_subscribes_gets_503_after_its_burst_and_others_are_served() {
    let s = server(&config()).await;
    let mut flooder = Ua::new(s.udp).await;
    let mut statuses = Vec::new();
    for i in 0..BURST + 30 {
        let r = flooder
            .request(&subscribe(&flooder, &format!("loop-{i}")))
            .await;
        if r.status == 503 {
            assert!(
                r.reason.contains("server.rate_limit_per_source"),
                "{}",
                r.reason
            );
            // 2 tokens a second: the next one is back within a second.
            assert_eq!(r.headers.get_named("Retry-After"), Some("1"), "{r:?}");
        }
        statuses.push(r.status);
    }
    // The burst is served (challenged, as any SUBSCRIBE without credentials), then 503s.
    assert!(
        statuses[..BURST].iter().all(|&st| st == 401),
        "{statuses:?}"
    );
    assert!(
        statuses[BURST..].iter().all(|&st| st == 503),
        "{statuses:?}"
    );
    assert_eq!(s.handle.core.rate_limited(), 30);
    // Its REGISTERs share the bucket.
    let r = flooder
        .request(&register("1001", flooder.port(), "reg-flood", 1, ""))
        .await;
    assert_eq!(r.status, 503, "{}", r.reason);

    // Another source subscribes (with its challenge round trip) and is served.
    let mut lamp = Authed::with(Ua::bind("127.0.0.2", s.udp).await, "1002", "other");
    let r = lamp.subscribe("1001", "dialog", "lamp-1", "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // A source trusted for SUBSCRIBE is never limited.
    let mut trusted = Ua::bind("127.0.0.3", s.udp).await;
    for i in 0..BURST + 5 {
        let r = trusted
            .request(&subscribe(&trusted, &format!("pbx-{i}")))
            .await;
        assert_ne!(r.status, 503, "{}", r.reason);
    }

    // The bucket refills with time: one second gives the flooder two more.
    tokio::time::advance(Duration::from_secs(1)).await;
    for i in 0..2 {
        let r = flooder
            .request(&subscribe(&flooder, &format!("later-{i}")))
            .await;
        assert_eq!(r.status, 401, "{}", r.reason);
    }
    let r = flooder.request(&subscribe(&flooder, "later-2")).await;
    assert_eq!(r.status, 503, "{}", r.reason);
}
