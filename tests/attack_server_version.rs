//! Issue 10, finding 8 (first half): our answers and requests name no version unless the
//! admin configures one (`server.server_header`); an empty value sends no such header.

mod common;
use busylamp::sip::{HasHeaders, HeaderName};
use common::ua::Ua;
use common::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Server header of the answers to an OPTIONS and a REGISTER under `config`.
async fn server_headers(config: &str) -> Vec<Option<String>> {
    let s = server(config).await;
    let c = Udp::new(s.udp).await;
    let options = c.request(&options(c.port())).await;
    let register = c.request(&register("1001", c.port(), "v", 1, "")).await;
    assert_eq!((options.status, register.status), (200, 401));
    [options, register]
        .iter()
        .map(|r| r.headers.get(HeaderName::Server).map(String::from))
        .collect()
}

#[tokio::test]
async fn by_default_answers_say_busylamp_without_a_version() {
    for h in server_headers(BASE_CONFIG).await {
        let h = h.expect("a Server header by default");
        assert_eq!(h, "busylamp");
        assert!(!h.contains(VERSION), "{h}");
    }
}

#[tokio::test]
async fn the_version_only_when_configured_and_an_empty_value_sends_none() {
    let with = BASE_CONFIG.replace(
        "data_dir = ",
        &format!("server_header = \"busylamp/{VERSION}\"\ndata_dir = "),
    );
    for h in server_headers(&with).await {
        assert_eq!(h.as_deref(), Some(format!("busylamp/{VERSION}").as_str()));
    }
    let without = BASE_CONFIG.replace("data_dir = ", "server_header = \"\"\ndata_dir = ");
    assert_eq!(server_headers(&without).await, [None, None]);
}

/// The User-Agent of requests we send (a NOTIFY) follows the same rule.
#[tokio::test]
async fn notifies_carry_no_version_by_default() {
    let trusted = BASE_CONFIG.replace(
        "[registrar]",
        "[auth]\ntrusted = [\"127.0.0.0/8\"]\ntrusted_for = [\"calls\", \"register\", \"subscribe\", \"publish\"]\n[registrar]",
    );
    let s = server(&trusted).await;
    let mut ua = Ua::new(s.udp).await;
    let sub = wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <sip:1002@example.test>;tag=w1
        To: <sip:1001@example.test>
        Call-ID: ua-version
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1002@127.0.0.1:{p}>
        Event: dialog
        Accept: application/dialog-info+xml
        Expires: 600
        ",
        p = ua.port(),
        b = branch()
    ));
    let r = ua.request(&sub).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let notify = ua.notify().await;
    assert_eq!(
        notify.headers.get(HeaderName::UserAgent),
        Some("busylamp"),
        "{:?}",
        notify.headers().get(HeaderName::UserAgent)
    );
}
