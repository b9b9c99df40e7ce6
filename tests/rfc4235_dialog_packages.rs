//! The dialog packages: RFC 4235 BLF documents with per-watcher versions, vendor profiles
//! (idle document, single-dialog mode), `dialog;sla` echo suppression, RFC 3842
//! message-summary, and the real pjsua/Yealink BLF SUBSCRIBE captures.

mod common;
use busylamp::presence::event::Pkg;
use busylamp::sip::HeaderName;
use common::ua::*;
use common::*;

const OPEN: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
coalesce_ms = 0
[[presence.profiles]]
name = "dummy"
user_agent = "DummyPhone"
dialog_idle = "dummy-terminated"
[[presence.profiles]]
name = "single"
user_agent = "SinglePhone"
dialog_single = true
# The presentities watched: a SUBSCRIBE for a user nobody knows is 404.
[[users]]
name = "1001"
password = "pw1001"
[[users]]
name = "1002"
password = "pw1002"
[[users]]
name = "1003"
password = "pw1003"
[[users]]
name = "593"
password = "pw593"
[[users]]
name = "line1"
password = "pwline1"
[[users]]
name = "103"
password = "pw103"
"#;

fn subscribe(
    port: u16,
    watcher: &str,
    presentity: &str,
    event: &str,
    call_id: &str,
    ua: &str,
) -> Vec<u8> {
    wire(&format!(
        "SUBSCRIBE sip:{presentity}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
        Max-Forwards: 70
        From: <sip:{watcher}@example.test>;tag=t{call_id}
        To: <sip:{presentity}@example.test>
        Call-ID: {call_id}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:{watcher}@127.0.0.1:{port}>
        Event: {event}
        User-Agent: {ua}
        Expires: 600
        ",
        b = branch()
    ))
}

fn dialog_info(entity: &str, id: &str, state: &str, line: Option<u32>) -> String {
    let line = line
        .map(|l| format!("<local><target uri=\"{entity}\"><param pname=\"x-line-id\" pval=\"{l}\"/></target></local>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"0\" state=\"full\" entity=\"{entity}\"><dialog id=\"{id}\" call-id=\"c-{id}\" local-tag=\"l\" remote-tag=\"r\" direction=\"recipient\"><state>{state}</state>{line}</dialog></dialog-info>"
    )
}

#[tokio::test]
async fn rfc4235_4_1_lamp_follows_the_call_with_increasing_versions() {
    let s = server(OPEN).await;
    let p = s.handle.core.presence.clone();
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(w.port(), "1002", "1001", "dialog", "b1", "Test"))
        .await;
    assert_eq!(r.status, 200);
    let n = w.notify().await;
    assert_eq!(
        header(&n, HeaderName::ContentType),
        "application/dialog-info+xml"
    );
    let b = body(&n);
    assert_eq!(version_of(&b), 0);
    assert!(!b.contains("<dialog "), "idle is an empty document: {b}");
    let entity = "sip:1001@example.test";
    let mut last = 0;
    for state in ["early", "confirmed", "terminated"] {
        let d = p
            .publish(
                entity,
                Pkg::Dialog,
                "call-1",
                dialog_info(entity, "d1", state, None).as_bytes(),
                60,
            )
            .unwrap();
        busylamp::storage::durable(d).await.unwrap();
        let n = w.notify().await;
        let b = body(&n);
        assert!(b.contains(&format!("<state>{state}</state>")), "{b}");
        assert!(b.contains("call-id=\"c-d1\""), "{b}");
        assert_eq!(version_of(&b), last + 1);
        last = version_of(&b);
    }
    // Gone: back to idle.
    let d = p.publish(entity, Pkg::Dialog, "call-1", b"", 0).unwrap();
    busylamp::storage::durable(d).await.unwrap();
    let b = body(&w.notify().await);
    assert_eq!(version_of(&b), last + 1);
    assert!(!b.contains("<dialog "), "{b}");
}

#[tokio::test]
async fn vendor_profiles_dummy_idle_and_single_dialog() {
    let s = server(OPEN).await;
    let p = s.handle.core.presence.clone();
    let mut dummy = Ua::new(s.udp).await;
    let r = dummy
        .request(&subscribe(
            dummy.port(),
            "1002",
            "1001",
            "dialog",
            "v1",
            "DummyPhone 1.0",
        ))
        .await;
    assert_eq!(r.status, 200);
    let b = body(&dummy.notify().await);
    assert!(b.contains("<dialog ") && b.contains("terminated"), "{b}");

    let mut single = Ua::new(s.udp).await;
    let r = single
        .request(&subscribe(
            single.port(),
            "1003",
            "1001",
            "dialog",
            "v2",
            "SinglePhone 2.0",
        ))
        .await;
    assert_eq!(r.status, 200);
    single.notify().await;
    let entity = "sip:1001@example.test";
    for (src, id, st) in [("a", "d1", "confirmed"), ("b", "d2", "early")] {
        let d = p
            .publish(
                entity,
                Pkg::Dialog,
                src,
                dialog_info(entity, id, st, None).as_bytes(),
                60,
            )
            .unwrap();
        busylamp::storage::durable(d).await.unwrap();
    }
    // Single-dialog mode shows only the early dialog once both are in.
    let b = body(&single.notify_until(|b| b.contains("d2")).await);
    assert!(!b.contains("\"d1\""), "{b}");
    let b = body(&dummy.notify_until(|b| b.contains("d2")).await);
    assert!(b.contains("d1"), "{b}");
}

#[tokio::test]
async fn sla_change_is_not_echoed_to_the_phone_that_made_it() {
    let s = server(OPEN).await;
    let p = s.handle.core.presence.clone();
    let mut a = Ua::new(s.udp).await;
    let mut b = Ua::new(s.udp).await;
    for (ua, who, cid) in [(&mut a, "1002", "s1"), (&mut b, "1003", "s2")] {
        let r = ua
            .request(&subscribe(
                ua.port(),
                who,
                "line1",
                "dialog;sla",
                cid,
                "Polycom",
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.reason);
        let n = ua.notify().await;
        assert_eq!(header(&n, HeaderName::Event), "dialog;sla");
    }
    let line = "sip:line1@example.test";
    // Phone 1002 seized appearance 1 (BLA learns the sender from its own dialog with it).
    let d = p
        .publish(
            line,
            Pkg::Sla,
            "sip:1002@example.test",
            dialog_info(line, "x", "trying", Some(1)).as_bytes(),
            60,
        )
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
    // The other member's NOTIFY shows the change was handled.
    let n = b.notify().await;
    assert!(body(&n).contains("x-line-id"), "{}", body(&n));
    assert!(a.no_notify(150).await, "the sender got its own change back");
}

#[tokio::test]
async fn rfc3842_message_summary_is_published_and_sent_on_every_new_subscription() {
    let s = server(OPEN).await;
    let mut vm = Ua::new(s.udp).await;
    let summary = "Messages-Waiting: yes\r\nMessage-Account: sip:1001@example.test\r\nVoice-Message: 2/8 (0/2)\r\n";
    let m = wire(&format!(
        "PUBLISH sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{};branch={}
        From: <sip:1001@example.test>;tag=vm
        To: <sip:1001@example.test>
        Call-ID: vm-1
        CSeq: 1 PUBLISH
        Max-Forwards: 70
        Event: message-summary
        Expires: 600
        Content-Type: application/simple-message-summary

        {summary}",
        vm.port(),
        branch()
    ));
    let r = vm.request(&m).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let mut phone = Ua::new(s.udp).await;
    let r = phone
        .request(&subscribe(
            phone.port(),
            "1001",
            "1001",
            "message-summary",
            "mw1",
            "Polycom",
        ))
        .await;
    assert_eq!(r.status, 200);
    let n = phone.notify().await;
    assert_eq!(
        header(&n, HeaderName::ContentType),
        "application/simple-message-summary"
    );
    let b = body(&n);
    assert!(
        b.contains("Messages-Waiting: yes") && b.contains("2/8"),
        "{b}"
    );
    // Not a valid summary: 400.
    let bad = String::from_utf8(m)
        .unwrap()
        .replace("Messages-Waiting: yes", "Messages-Waiting: perhaps")
        .replace("CSeq: 1", "CSeq: 2")
        .replace("z9hG4bK", "z9hG4bKq");
    let bad = wire(&String::from_utf8_lossy(bad.as_bytes()).replace("\r\n", "\n"));
    let r = vm.request(&bad).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn pjsua_and_yealink_blf_subscribe_captures_are_accepted() {
    let s = server(OPEN).await;
    let mut w = Ua::new(s.udp).await;
    // pjsua over TLS in the capture: readdressed to our UDP socket; the rest verbatim.
    let pj = capture("pjsua-2.15-subscribe-dialog-blf.sip")
        .replace("domain.com", "example.test")
        .replace(
            "SIP/2.0/TLS 82.58.254.22:57813",
            &format!("SIP/2.0/UDP 127.0.0.1:{}", w.port()),
        )
        .replace(
            "82.58.254.22:57813;transport=TLS",
            &format!("127.0.0.1:{}", w.port()),
        )
        .replace("Route: <sip:sip.example.test:5061;transport=tls;lr>\n", "");
    let r = w.request(&wire(&pj)).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = w.notify().await;
    assert_eq!(
        header(&n, HeaderName::ContentType),
        "application/dialog-info+xml"
    );
    assert!(
        body(&n).contains("entity=\"sip:593@example.test\""),
        "{}",
        body(&n)
    );

    // The Yealink paste kept only some headers: its Request-URI has no user, the presentity
    // is in To. Complete what the reporter cut.
    let y = capture("yealink-vp59-subscribe-dialog-ABRIDGED-by-reporter.sip")
        .replace("192.168.1.10:5060", "example.test")
        .replace("192.168.1.10", "example.test");
    let (first, rest) = y.split_once('\n').unwrap();
    let full = format!(
        "{first}\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch={b}\nCall-ID: yealink-1\nCSeq: 1 SUBSCRIBE\nMax-Forwards: 70\nContact: <sip:101@127.0.0.1:{p}>\nExpires: 600\n{rest}",
        p = w.port(),
        b = branch()
    )
    .replace("From: \"User A\" <sip:101@example.test>", "From: \"User A\" <sip:101@example.test>;tag=yl1");
    let r = w.request(&wire(&full)).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = w.notify().await;
    assert!(body(&n).contains("sip:103@example.test"), "{}", body(&n));
}

#[tokio::test(start_paused = true)]
async fn an_ended_call_lingers_briefly_then_the_lamp_is_idle() {
    let s = server(OPEN).await;
    let p = s.handle.core.presence.clone();
    let mut w = Ua::new(s.udp).await;
    let r = w
        .request(&subscribe(
            w.port(),
            "1002",
            "1001",
            "dialog",
            "lg1",
            "Test",
        ))
        .await;
    assert_eq!(r.status, 200);
    w.notify().await;
    let entity = "sip:1001@example.test";
    let d = p
        .publish(
            entity,
            Pkg::Dialog,
            "call-9",
            dialog_info(entity, "d9", "terminated", None).as_bytes(),
            3600,
        )
        .unwrap();
    busylamp::storage::durable(d).await.unwrap();
    assert!(body(&w.notify().await).contains("terminated"));
    // Not kept for the hour it was published for: a few seconds later the lamp is idle and
    // the publication is gone.
    let n = w.notify_unanswered_within(30_000).await;
    w.answer(&n, 200).await;
    assert!(!body(&n).contains("<dialog "), "{}", body(&n));
    assert_eq!(p.publication_count(), 0);
}
