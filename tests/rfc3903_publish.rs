//! RFC 3903 PUBLISH over raw SIP bytes: ETags, refresh, modify, remove, 412, 489, 415, 400,
//! 423, clamping, expires_offset, expiry, aggregation, and the Linphone/Zoiper captures.

mod common;
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
min_expires = 60
max_expires = 3600
expires_offset = 5
coalesce_ms = 0
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
"#;

fn pidf(basic: &str, tuple: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1001@example.test\">\n <tuple id=\"{tuple}\">\n  <status><basic>{basic}</basic></status>\n </tuple>\n</presence>\n"
    )
}

#[allow(clippy::too_many_arguments)]
fn publish(
    port: u16,
    user: &str,
    event: &str,
    cseq: u32,
    expires: Option<u32>,
    if_match: Option<&str>,
    content_type: &str,
    body: &str,
) -> Vec<u8> {
    let mut extra = String::new();
    if let Some(e) = expires {
        extra.push_str(&format!("Expires: {e}\n"));
    }
    if let Some(t) = if_match {
        extra.push_str(&format!("SIP-If-Match: {t}\n"));
    }
    if !body.is_empty() {
        extra.push_str(&format!("Content-Type: {content_type}\n"));
    }
    let head = format!(
        "PUBLISH sip:{user}@example.test SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={b}\nMax-Forwards: 70\nFrom: <sip:{user}@example.test>;tag=p{cseq}\nTo: <sip:{user}@example.test>\nCall-ID: pub-{user}\nCSeq: {cseq} PUBLISH\nEvent: {event}\n{extra}",
        b = branch()
    );
    wire(&format!("{head}\n{body}"))
}

async fn watch(s: &TestServer, user: &str, event: &str, accept: &str) -> Ua {
    let mut w = Ua::new(s.udp).await;
    let m = wire(
        &format!(
            "SUBSCRIBE sip:{user}@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <sip:1002@example.test>;tag=wt
        To: <sip:{user}@example.test>
        Call-ID: watch-{p}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1002@127.0.0.1:{p}>
        Event: {event}
        {accept}
        Expires: 600
        ",
            p = w.port(),
            b = branch()
        )
        .replace("\n        \n", "\n"),
    );
    let r = w.request(&m).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    w.notify().await;
    w
}

#[tokio::test]
async fn rfc3903_4_1_new_refresh_modify_remove() {
    let s = server(OPEN).await;
    let mut w = watch(&s, "1001", "presence", "").await;
    let mut p = Ua::new(s.udp).await;

    // Initial publication: 200 with SIP-ETag and Expires (minus expires_offset).
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            1,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let etag1 = header(&r, HeaderName::SipEtag).to_string();
    assert_eq!(header(&r, HeaderName::Expires), "595");
    let n = w.notify().await;
    assert!(body(&n).contains("<basic>open</basic>"), "{}", body(&n));

    // Refresh: no body, SIP-If-Match; a new ETag, and no NOTIFY (nothing changed).
    let mark = s.mark();
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            2,
            Some(600),
            Some(&etag1),
            "",
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let etag2 = header(&r, HeaderName::SipEtag).to_string();
    assert_ne!(etag1, etag2);
    s.assert_processed_then_silent(mark, 1, w.no_notify(150), "a refresh changed nothing")
        .await;

    // The old ETag is gone.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            3,
            Some(600),
            Some(&etag1),
            "",
            "",
        ))
        .await;
    assert_eq!(r.status, 412);

    // Modify: SIP-If-Match with a body.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            4,
            Some(600),
            Some(&etag2),
            "application/pidf+xml",
            &pidf("closed", "a"),
        ))
        .await;
    assert_eq!(r.status, 200);
    let etag3 = header(&r, HeaderName::SipEtag).to_string();
    let n = w.notify().await;
    assert!(body(&n).contains("<basic>closed</basic>"));

    // Back to open, then remove: the presentity is offline again.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            5,
            Some(600),
            Some(&etag3),
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    let etag4 = header(&r, HeaderName::SipEtag).to_string();
    assert!(body(&w.notify().await).contains("open"));
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            6,
            Some(0),
            Some(&etag4),
            "",
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, HeaderName::Expires), "0");
    let n = w.notify().await;
    assert!(body(&n).contains("<basic>closed</basic>"), "{}", body(&n));
    assert_eq!(s.handle.core.presence.publication_count(), 0);
}

#[tokio::test]
async fn rfc3903_6_errors_name_the_problem() {
    let s = server(OPEN).await;
    let mut p = Ua::new(s.udp).await;
    // 412: unknown ETag.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            1,
            Some(600),
            Some("nosuch"),
            "",
            "",
        ))
        .await;
    assert_eq!(r.status, 412);
    // 489 with Allow-Events.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "kpml",
            2,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 489);
    assert!(header(&r, HeaderName::AllowEvents).contains("presence"));
    // presence.winfo is not publishable.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence.winfo",
            3,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 489);
    // 415 with Accept.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            4,
            Some(600),
            None,
            "text/plain",
            "open",
        ))
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(header(&r, HeaderName::Accept), "application/pidf+xml");
    // 400 for a body that is not PIDF.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            5,
            Some(600),
            None,
            "application/pidf+xml",
            "<presence><tuple>",
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.reason.len() > 12, "{}", r.reason);
    // 423 with Min-Expires.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            6,
            Some(5),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 423);
    assert_eq!(header(&r, HeaderName::MinExpires), "60");
    // Clamped to max_expires (minus the offset).
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            7,
            Some(99_999),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, HeaderName::Expires), "3595");
    // Initial PUBLISH without a body.
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            8,
            Some(600),
            None,
            "",
            "",
        ))
        .await;
    assert_eq!(r.status, 400);
    // A presentity of another domain.
    let m = String::from_utf8(publish(
        p.port(),
        "1001",
        "presence",
        9,
        Some(600),
        None,
        "application/pidf+xml",
        &pidf("open", "a"),
    ))
    .unwrap()
    .replacen(
        "sip:1001@example.test SIP/2.0",
        "sip:1001@elsewhere.test SIP/2.0",
        1,
    );
    let r = p.request(m.as_bytes()).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn rfc3863_two_publications_aggregate_into_one_document() {
    let s = server(OPEN).await;
    let mut w = watch(&s, "1001", "presence", "").await;
    let mut p = Ua::new(s.udp).await;
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            1,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("open", "desk"),
        ))
        .await;
    assert_eq!(r.status, 200);
    w.notify().await;
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            2,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("closed", "mobile"),
        ))
        .await;
    assert_eq!(r.status, 200);
    let n = w.notify().await;
    let b = body(&n);
    assert!(
        b.contains("id=\"desk\"") && b.contains("id=\"mobile\""),
        "{b}"
    );
    assert_eq!(s.handle.core.presence.publication_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn rfc3903_4_publication_expiry_is_notified() {
    let s = server(OPEN).await;
    let mut w = watch(&s, "1001", "presence", "").await;
    let mut p = Ua::new(s.udp).await;
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            1,
            Some(60),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 200);
    assert!(body(&w.notify().await).contains("open"));
    // Paused clock: waiting lets time run to the expiry.
    let n = w.notify_unanswered_within(120_000).await;
    assert!(body(&n).contains("<basic>closed</basic>"), "{}", body(&n));
    assert_eq!(s.handle.core.presence.publication_count(), 0);
}

/// A captured PUBLISH, readdressed to our domain and this test's socket, line endings made
/// CRLF and Content-Length recomputed.
fn replay(text: &str, port: u16) -> Vec<u8> {
    let text = text
        .replace("CPBX-1234567890@pbx.easybell.de", "1001@example.test")
        .replace("192.168.2.225:5060", &format!("127.0.0.1:{port}"));
    let (head, body) = text.split_once("\n\n").unwrap();
    let head: Vec<&str> = head.lines().map(str::trim_end).collect();
    wire(&format!("{}\n\n{}", head.join("\n"), body))
}

#[tokio::test]
async fn linphone_and_zoiper_publish_captures_are_accepted() {
    let s = server(OPEN).await;
    let mut w = watch(&s, "1001", "presence", "").await;
    let mut p = Ua::new(s.udp).await;
    let r = p
        .request(&replay(
            &capture("linphone-desktop-4.2.3-publish-pidf.sip"),
            p.port(),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert!(body(&w.notify().await).contains("<basic>open</basic>"));

    // The Zoiper paste starts at CSeq: complete the headers it lost, keep the rest verbatim
    // (trailing spaces included).
    let z = capture("zoiper-3.3-publish-pidf-PARTIAL-headers.sip");
    let z = z.replace(
        "sip:alice@***.***.com;transport=TCP",
        "sip:1001@example.test",
    );
    let (head, body_text) = z
        .split_once("\n \n")
        .or_else(|| z.split_once("\n\n"))
        .unwrap();
    let head: Vec<&str> = head.lines().map(str::trim_end).collect();
    let full = format!(
        "PUBLISH sip:1001@example.test SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{};branch={}\nFrom: <sip:1001@example.test>;tag=z1\nTo: <sip:1001@example.test>\nCall-ID: zoiper-1\nMax-Forwards: 70\n{}\n\n{}",
        p.port(),
        branch(),
        head.join("\n"),
        body_text
    );
    let r = p.request(&wire(&full)).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = w.notify().await;
    assert!(body(&n).contains("On the phone"), "{}", body(&n));
}

const COALESCE: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
[presence]
coalesce_ms = 200
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
"#;

#[tokio::test]
async fn changes_within_the_coalescing_window_make_one_notify_per_watcher() {
    let s = server(COALESCE).await;
    let mut w = watch(&s, "1001", "presence", "").await;
    let mut p = Ua::new(s.udp).await;
    let mut etag = None;
    // Three changes in quick succession: the first goes out at once, the other two wait for
    // the end of the window and leave as one NOTIFY with the last state.
    for (i, (basic, tuple)) in [("open", "a"), ("closed", "a"), ("open", "b")]
        .iter()
        .enumerate()
    {
        let r = p
            .request(&publish(
                p.port(),
                "1001",
                "presence",
                i as u32 + 1,
                Some(600),
                etag.as_deref(),
                "application/pidf+xml",
                &pidf(basic, tuple),
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.reason);
        etag = Some(header(&r, HeaderName::SipEtag).to_string());
    }
    // The watcher's 200s to both NOTIFYs are what could release a third one.
    let mark = s.mark();
    let first = w.notify().await;
    assert!(body(&first).contains("id=\"a\"") && body(&first).contains("open"));
    let second = w.notify().await;
    assert!(body(&second).contains("id=\"b\""), "{}", body(&second));
    assert_eq!(cseq_of(&second), cseq_of(&first) + 1);
    s.assert_processed_then_silent(
        mark,
        2,
        w.no_notify(400),
        "a third NOTIFY for changes already sent",
    )
    .await;
}

#[tokio::test]
async fn rfc3856_xpidf_only_watchers_get_xpidf() {
    let s = server(OPEN).await;
    let mut w = watch(&s, "1001", "presence", "Accept: application/xpidf+xml").await;
    let mut p = Ua::new(s.udp).await;
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            1,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 200);
    let n = w.notify().await;
    assert_eq!(header(&n, HeaderName::ContentType), "application/xpidf+xml");
    assert!(body(&n).contains("status=\"open\""), "{}", body(&n));
}

#[tokio::test]
async fn a_watcher_sent_a_state_inside_the_window_gets_the_state_the_window_ends_on() {
    // The window's closing fan-out is skipped when the document is back to what the last
    // fan-out sent; but a watcher that subscribed inside the window was sent the state in
    // between, and must not be left on it.
    let s = server(&COALESCE.replace("coalesce_ms = 200", "coalesce_ms = 1000")).await;
    let mut w1 = watch(&s, "1001", "presence", "").await;
    let mut p = Ua::new(s.udp).await;
    let step = |port: u16, cseq: u32, basic: &str, etag: Option<&str>| {
        publish(
            port,
            "1001",
            "presence",
            cseq,
            Some(600),
            etag,
            "application/pidf+xml",
            &pidf(basic, "a"),
        )
    };
    // open: the first change of the window goes out at once.
    let r = p.request(&step(p.port(), 1, "open", None)).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let etag = header(&r, HeaderName::SipEtag).to_string();
    let n = w1.notify().await;
    assert!(body(&n).contains("open"), "{}", body(&n));
    // closed, inside the window: waits.
    let r = p.request(&step(p.port(), 2, "closed", Some(&etag))).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let etag = header(&r, HeaderName::SipEtag).to_string();
    // A new watcher now gets the current state: closed.
    let mut w2 = Ua::new(s.udp).await;
    let m = wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
        Max-Forwards: 70
        From: <sip:1003@example.test>;tag=w2
        To: <sip:1001@example.test>
        Call-ID: watch2-{p}
        CSeq: 1 SUBSCRIBE
        Contact: <sip:1003@127.0.0.1:{p}>
        Event: presence
        Expires: 600
        ",
        p = w2.port(),
        b = branch()
    ));
    let r = w2.request(&m).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = w2.notify().await;
    assert!(body(&n).contains("closed"), "{}", body(&n));
    // open again, inside the window: the document is what the last fan-out sent...
    let r = p.request(&step(p.port(), 3, "open", Some(&etag))).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // ...but the new watcher was told closed and must hear open when the window ends.
    let n = w2.notify_unanswered_within(3000).await;
    assert!(body(&n).contains("open"), "{}", body(&n));
}

/// A presence store whose writes can be made to fail (a full or broken disk).
struct FlakyStore {
    inner: std::sync::Arc<busylamp::storage::MemoryStore>,
    failing: std::sync::atomic::AtomicBool,
}

impl busylamp::storage::PresenceStore for FlakyStore {
    fn load_publications(
        &self,
    ) -> Result<Vec<busylamp::storage::PublicationRecord>, busylamp::storage::StorageError> {
        self.inner.load_publications()
    }

    fn load_subscriptions(
        &self,
    ) -> Result<Vec<busylamp::storage::SubscriptionRecord>, busylamp::storage::StorageError> {
        self.inner.load_subscriptions()
    }

    fn write(&self, writes: Vec<busylamp::storage::PresenceWrite>) -> busylamp::storage::Durable {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Err(busylamp::storage::StorageError::Write(
                "disk full".into(),
            )));
            return rx;
        }
        self.inner.write(writes)
    }
}

#[tokio::test]
async fn a_publish_that_could_not_be_stored_does_not_silence_its_watchers() {
    use busylamp::storage::MemoryStore;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let cfg = busylamp::config::Config::from_toml(OPEN, "test.toml").unwrap();
    let mem = Arc::new(MemoryStore::new());
    let flaky = Arc::new(FlakyStore {
        inner: mem.clone(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let s = server_with_presence_store(cfg, mem, flaky.clone()).await;
    let mut w = watch(&s, "1001", "presence", "").await;
    let mut p = Ua::new(s.udp).await;
    // The disk fails: the PUBLISH is not acknowledged (500), and its NOTIFY is not sent.
    flaky.failing.store(true, Ordering::SeqCst);
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            1,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("open", "a"),
        ))
        .await;
    assert_eq!(r.status, 500, "{}", r.reason);
    // The disk is back; the publisher retries. The watcher must hear of it.
    flaky.failing.store(false, Ordering::SeqCst);
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "presence",
            2,
            Some(600),
            None,
            "application/pidf+xml",
            &pidf("open", "b"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let n = w.notify_until(|b| b.contains("id=\"b\"")).await;
    assert!(body(&n).contains("open"), "{}", body(&n));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_without_body_does_not_keep_an_ended_call_for_its_expiry() {
    let s = server(OPEN).await;
    let mut p = Ua::new(s.udp).await;
    let ended = "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"1\" state=\"full\" entity=\"sip:1001@example.test\">\n <dialog id=\"d1\" direction=\"initiator\"><state>terminated</state></dialog>\n</dialog-info>\n";
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "dialog",
            1,
            Some(3600),
            None,
            "application/dialog-info+xml",
            ended,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let etag = header(&r, HeaderName::SipEtag).to_string();
    // The publisher refreshes what it was granted, without a body (RFC 3903 §4.2).
    let r = p
        .request(&publish(
            p.port(),
            "1001",
            "dialog",
            2,
            Some(3600),
            Some(&etag),
            "",
            "",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(
        header(&r, HeaderName::Expires),
        "1",
        "the ended call still lingers briefly"
    );
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    assert_eq!(s.handle.core.presence.publication_count(), 0);
}
