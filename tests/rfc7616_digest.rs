//! Digest authentication of REGISTER (RFC 3261 §22, RFC 7616, RFC 8760) over raw SIP bytes,
//! and the real Polycom VVX 350 REGISTER / 401 / REGISTER capture replayed.

mod common;
use busylamp::auth::nonce::NonceKey;
use busylamp::sip::HeaderName;
use common::*;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// BASE_CONFIG with SHA-256 offered to every phone, first (RFC 8760 §2.4 order).
fn sha256_for_all() -> String {
    format!("{BASE_CONFIG}[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n")
}

/// BASE_CONFIG offering SHA-256 first to Linphone only (`[[auth.profiles]]`).
fn sha256_for_linphone() -> String {
    format!(
        "{BASE_CONFIG}[[auth.profiles]]\nname = \"linphone\"\nuser_agent = \"Linphone\"\nalgorithms = [\"SHA-256\", \"MD5\"]\n"
    )
}

/// A REGISTER of 1001 from a phone whose User-Agent is `ua`.
fn register_from(ua: &str, c: &Udp, cseq: u32, extra: &str) -> Vec<u8> {
    let r = register("1001", c.port(), "c-ua", cseq, extra);
    String::from_utf8(r)
        .unwrap()
        .replace("User-Agent: busylamp-test", &format!("User-Agent: {ua}"))
        .into_bytes()
}

async fn challenges_to(s: &TestServer, ua: &str) -> Vec<String> {
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register_from(ua, &c, 1, "Contact: <sip:a@127.0.0.1:1>"))
        .await;
    assert_eq!(r.status, 401);
    r.headers
        .all(HeaderName::WwwAuthenticate)
        .map(String::from)
        .collect()
}

/// Issue 11: the default is one MD5 challenge (baresip 1.0 gives up on two; many desk phones
/// read only the first or know MD5 only).
#[tokio::test]
async fn rfc8760_401_offers_one_md5_challenge_by_default_with_qop_auth() {
    let s = server(BASE_CONFIG).await;
    let ch = challenges_to(&s, "busylamp-test").await;
    assert_eq!(ch.len(), 1, "{ch:?}");
    assert!(
        ch[0].contains("algorithm=MD5") && ch[0].contains("realm=\"example.test\""),
        "{}",
        ch[0]
    );
    assert!(ch[0].contains("qop=\"auth\""));
    assert!(s
        .handle
        .core
        .registrar
        .lookup("sip:1001@example.test")
        .is_empty());
}

#[tokio::test]
async fn rfc8760_401_offers_sha256_then_md5_when_configured_for_all() {
    let s = server(&sha256_for_all()).await;
    let ch = challenges_to(&s, "busylamp-test").await;
    assert_eq!(ch.len(), 2);
    assert!(ch[0].contains("algorithm=SHA-256"), "{}", ch[0]);
    assert!(ch[1].contains("algorithm=MD5"), "{}", ch[1]);
    assert!(ch.iter().all(|c| c.contains("qop=\"auth\"")));
}

/// Issue 11: `[[auth.profiles]]` offers SHA-256 first to the User-Agents it names, which then
/// register with it; other phones get the one MD5 challenge.
#[tokio::test]
async fn rfc8760_profile_offers_sha256_by_user_agent_and_it_registers() {
    let s = server(&sha256_for_linphone()).await;
    let ch = challenges_to(&s, "baresip v1.0.0 (x86_64/linux)").await;
    assert_eq!(ch.len(), 1, "{ch:?}");
    assert!(ch[0].contains("algorithm=MD5"));
    let ua = "Linphone/5.1.2 (belle-sip/5.1.0)";
    let ch = challenges_to(&s, ua).await;
    assert_eq!(ch.len(), 2, "{ch:?}");
    assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
    let c = Udp::new(s.udp).await;
    let auth = authorization(&ch[0], "1001", "secret", "REGISTER", "sip:example.test", 1);
    assert!(auth.contains("algorithm=SHA-256"), "{auth}");
    let extra = format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth}");
    let r = c.request(&register_from(ua, &c, 2, &extra)).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(
        s.handle
            .core
            .registrar
            .lookup("sip:1001@example.test")
            .len(),
        1
    );
}

#[tokio::test]
async fn rfc7616_sha256_and_md5_answers_register() {
    // SHA-256 offered first, so register_authed (first challenge) answers SHA-256.
    let s = server(&sha256_for_all()).await;
    let c = Udp::new(s.udp).await;
    let r = register_authed(
        &c,
        "1001",
        "secret",
        "c1",
        1,
        "Contact: <sip:a@127.0.0.1:1>",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // Now answer the MD5 challenge instead.
    let r = c
        .request(&register(
            "1002",
            c.port(),
            "c2",
            1,
            "Contact: <sip:b@127.0.0.1:2>",
        ))
        .await;
    let md5 = r
        .headers
        .all(HeaderName::WwwAuthenticate)
        .find(|v| v.contains("MD5"))
        .unwrap()
        .to_string();
    let auth = authorization(&md5, "1002", "other", "REGISTER", "sip:example.test", 1);
    let r = c
        .request(&register(
            "1002",
            c.port(),
            "c2",
            2,
            &format!("Contact: <sip:b@127.0.0.1:2>\n        Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(s.handle.core.registrar.binding_count(), 2);
}

#[tokio::test]
async fn wrong_password_is_403_and_nothing_is_bound() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    let r = register_authed(
        &c,
        "1001",
        "not-the-password",
        "c",
        1,
        "Contact: <sip:a@127.0.0.1:1>",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.reason.contains("Wrong password"), "{}", r.reason);
    assert_eq!(s.handle.core.registrar.binding_count(), 0);
}

#[tokio::test]
async fn rfc3261_10_3_step4_user_may_only_register_its_own_aor() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    // 1002 authenticates correctly but asks to bind 1001.
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            1,
            "Contact: <sip:evil@127.0.0.1:1>",
        ))
        .await;
    let ch = r
        .headers
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_string();
    let auth = authorization(&ch, "1002", "other", "REGISTER", "sip:example.test", 1);
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            2,
            &format!("Contact: <sip:evil@127.0.0.1:1>\n        Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 403);
    assert!(r.reason.contains("may not register"), "{}", r.reason);
}

#[tokio::test]
async fn rfc7616_3_3_expired_nonce_gets_stale_true() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    // A nonce the server itself issued 1,000 s ago (same key): the MAC verifies, age does not.
    let old = NonceKey::new(NONCE_KEY).issue(unix_now() - 1000);
    let auth = authorization_with(
        "example.test",
        &old,
        "MD5",
        "1001",
        "secret",
        "REGISTER",
        "sip:example.test",
        1,
    );
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            1,
            &format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 401);
    assert!(r
        .headers
        .all(HeaderName::WwwAuthenticate)
        .all(|v| v.contains("stale=true")));
    // A nonce we never issued is not stale, just wrong.
    let auth = authorization_with(
        "example.test",
        "deadbeef",
        "MD5",
        "1001",
        "secret",
        "REGISTER",
        "sip:example.test",
        1,
    );
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            2,
            &format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 401);
    assert!(r
        .headers
        .all(HeaderName::WwwAuthenticate)
        .all(|v| !v.contains("stale")));
}

#[tokio::test]
async fn rfc7616_replayed_nonce_count_is_refused() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            1,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    let ch = r
        .headers
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_string();
    let auth = authorization(&ch, "1001", "secret", "REGISTER", "sip:example.test", 1);
    let with = |cseq| {
        register(
            "1001",
            c.port(),
            "c",
            cseq,
            &format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth}"),
        )
    };
    assert_eq!(c.request(&with(2)).await.status, 200);
    // The same credentials again (new request, same nc): a replay.
    let r = c.request(&with(3)).await;
    assert_eq!(r.status, 401);
    assert!(r
        .headers
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .contains("stale=true"));
    // nc=2 on the same nonce is fine.
    let auth2 = authorization(&ch, "1001", "secret", "REGISTER", "sip:example.test", 2);
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            4,
            &format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth2}"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
}

#[tokio::test]
async fn malformed_authorization_is_400_naming_the_problem() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            1,
            "Contact: <sip:a@127.0.0.1:1>\n        Authorization: Digest username=\"1001\", realm=\"example.test\"",
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("Authorization"), "{}", r.reason);
}

#[tokio::test]
async fn open_mode_and_trusted_sources_skip_the_challenge_but_options_never_needs_it() {
    let open = BASE_CONFIG.replace("[registrar]", "[auth]\nmode = \"open\"\n[registrar]");
    let s = server(&open).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "c",
            1,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    assert_eq!(r.status, 200);

    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&wire(&format!(
            "OPTIONS sip:example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
            From: <sip:x@example.test>;tag=1
            To: <sip:example.test>
            Call-ID: o
            CSeq: 1 OPTIONS
            ",
            p = c.port(),
            b = branch()
        )))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn users_from_the_user_file_authenticate() {
    use busylamp::server::{start, Stores};
    use busylamp::sip::digest::{ha1, Algorithm};
    use busylamp::storage::{MemoryStore, UserFile, UserRecord};
    let dir = std::env::temp_dir().join(format!("busylamp-userfile-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = UserFile::new(&dir);
    file.add(UserRecord {
        name: "2001".into(),
        realm: "example.test".into(),
        ha1_md5: Some(ha1(Algorithm::Md5, "2001", "example.test", "pw2001")),
        ha1_sha256: None,
    })
    .unwrap();
    let cfg = busylamp::config::Config::from_toml(BASE_CONFIG, "t").unwrap();
    let h = start(
        &cfg,
        Stores {
            bindings: std::sync::Arc::new(MemoryStore::new()),
            presence: std::sync::Arc::new(MemoryStore::new()),
            dialogs: std::sync::Arc::new(MemoryStore::new()),
            users: Some(UserFile::new(&dir)),
            nonce_key: None,
        },
    )
    .await
    .unwrap();
    let c = Udp::new(h.local_addr(busylamp::transport::Proto::Udp).unwrap()).await;
    let r = c
        .request(&register(
            "2001",
            c.port(),
            "c",
            1,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    // Only an MD5 HA1 is stored for 2001, so only MD5 is offered.
    let ch: Vec<&str> = r.headers.all(HeaderName::WwwAuthenticate).collect();
    assert_eq!(ch.len(), 1, "{ch:?}");
    let auth = authorization(ch[0], "2001", "pw2001", "REGISTER", "sip:example.test", 1);
    let r = c
        .request(&register(
            "2001",
            c.port(),
            "c",
            2,
            &format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real Polycom VVX 350 (UC 5.9.5) exchange from fixtures/captures: its first REGISTER
/// carries credentials for a nonce of another server, which we must challenge; its second is
/// replayed with our nonce and a digest computed here for password "1013pass".
#[tokio::test]
async fn polycom_vvx350_capture_register_401_register() {
    let cfg = BASE_CONFIG
        .replace(
            "domain = \"example.test\"",
            "domain = \"pierrefouquet.babblevoice.com\"",
        )
        .replace(
            "name = \"1001\"\npassword = \"secret\"",
            "name = \"1013\"\npassword = \"1013pass\"",
        );
    let s = server(&cfg).await;
    // Over TCP: the capture's Via names the phone's public address, and a TCP answer goes back
    // on the connection whatever the Via says.
    let mut t = Tcp::connect(s.tcp).await;
    let first =
        std::fs::read("fixtures/captures/polycom-vvx350-5.9.5-register-digest-cseq2.sip").unwrap();
    let r = t.request(&first).await;
    assert_eq!(r.status, 401, "{}", r.reason);
    assert_eq!(
        r.headers.get(HeaderName::CallId),
        Some("c7f6bc72e0778e72f7055172226c01d1")
    );
    let md5 = r
        .headers
        .all(HeaderName::WwwAuthenticate)
        .find(|v| v.contains("algorithm=MD5"))
        .expect("MD5 challenge for the Polycom")
        .to_string();
    let (realm, nonce, _) = challenge_params(&md5);
    assert_eq!(realm, "pierrefouquet.babblevoice.com");

    let second = String::from_utf8(
        std::fs::read("fixtures/captures/polycom-vvx350-5.9.5-register-digest-cseq3.sip").unwrap(),
    )
    .unwrap();
    // Keep the phone's own uri, cnonce, nc, qop; put our nonce and the right response in.
    let creds = busylamp::sip::digest::Credentials {
        username: "1013".into(),
        realm: realm.clone(),
        nonce: nonce.clone(),
        uri: "sip:pierrefouquet.babblevoice.com;transport=udp".into(),
        algorithm: Some("MD5".into()),
        cnonce: Some("nrQhP0p3w8fjTMn".into()),
        nc: Some("00000001".into()),
        qop: Some("auth".into()),
        opaque: Some("59ea226be29c979bb10105e8ba654779".into()),
        ..Default::default()
    };
    use busylamp::sip::digest::{ha1, response, Algorithm};
    let h = ha1(Algorithm::Md5, "1013", &realm, "1013pass");
    let resp = response(Algorithm::Md5, &h, "REGISTER", &creds);
    let second = second
        .replace("7d4b7aa44cda192fecad03e48a45ca59", &nonce)
        .replace("ab709ea589a580790e2e1cea141f7107", &resp);
    let r = t.request(second.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let b = s
        .handle
        .core
        .registrar
        .lookup("sip:1013@pierrefouquet.babblevoice.com");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].contact, "sip:1013@82.71.31.12:52917;transport=udp");
    assert_eq!(
        b[0].user_agent.as_deref(),
        Some("PolycomVVX-VVX_350-UA/5.9.5.0614")
    );
    assert!(
        b[0].params.contains("methods="),
        "Polycom's methods param kept: {}",
        b[0].params
    );
    assert_eq!(
        contacts(&r),
        vec![("sip:1013@82.71.31.12:52917;transport=udp".into(), 3600)]
    );
}

/// RFC 7616 §3.4.6 / RFC 2617 §3.2.2.5, as an attacker: credentials valid in every other
/// respect (right password, our fresh nonce) but computed for another `uri` than the
/// Request-URI are refused with a 400 naming the mismatch, and nothing is bound; the same
/// nonce answered for the right uri then registers, so the refusal was the uri's.
#[tokio::test]
async fn rfc7616_3_4_6_register_with_credentials_for_another_uri_is_refused() {
    let s = server(BASE_CONFIG).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "u1",
            1,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    assert_eq!(r.status, 401);
    let ch = r
        .headers
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_string();
    for (nc, other) in [
        (1, "sip:evil.example"),
        (2, "sip:example.test:5070"),
        (3, "sip:1001@example.test"),
    ] {
        let auth = authorization(&ch, "1001", "secret", "REGISTER", other, nc);
        let r = c
            .request(&register(
                "1001",
                c.port(),
                "u1",
                1 + nc,
                &format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth}"),
            ))
            .await;
        assert_eq!(r.status, 400, "{other}: {} {}", r.status, r.reason);
        assert!(
            r.reason.contains("Digest uri does not match Request-URI"),
            "{}",
            r.reason
        );
    }
    assert_eq!(s.handle.core.registrar.binding_count(), 0);
    let auth = authorization(&ch, "1001", "secret", "REGISTER", "sip:example.test", 4);
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "u1",
            5,
            &format!("Contact: <sip:a@127.0.0.1:1>\n        Authorization: {auth}"),
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(s.handle.core.registrar.binding_count(), 1);
}

/// The same for SUBSCRIBE and PUBLISH (the watcher's or publisher's digest): credentials for
/// another presentity's URI do not open this one.
#[tokio::test]
async fn rfc7616_3_4_6_subscribe_and_publish_with_credentials_for_another_uri_are_refused() {
    let s = server(BASE_CONFIG).await;
    let subscribe = |port: u16, cseq: u32, authz: &str| {
        wire(&format!(
            "SUBSCRIBE sip:1001@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
            Max-Forwards: 70
            From: <sip:1002@example.test>;tag=w1
            To: <sip:1001@example.test>
            Call-ID: uri-sub
            CSeq: {cseq} SUBSCRIBE
            Contact: <sip:w@127.0.0.1:{port}>
            Event: presence
            Expires: 600
            {authz}
            ",
            b = branch()
        ))
    };
    let publish = |port: u16, cseq: u32, authz: &str| {
        wire(&format!(
            "PUBLISH sip:1002@example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
            Max-Forwards: 70
            From: <sip:1002@example.test>;tag=p1
            To: <sip:1002@example.test>
            Call-ID: uri-pub
            CSeq: {cseq} PUBLISH
            Event: presence
            Expires: 600
            {authz}
            Content-Type: application/pidf+xml

            <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:1002@example.test\"><tuple id=\"a\"><status><basic>open</basic></status></tuple></presence>",
            b = branch()
        ))
    };
    for (method, make, target) in [
        (
            "SUBSCRIBE",
            &subscribe as &dyn Fn(u16, u32, &str) -> Vec<u8>,
            "sip:1001@example.test",
        ),
        ("PUBLISH", &publish, "sip:1002@example.test"),
    ] {
        // One socket per method: the SUBSCRIBE's NOTIFY goes to its own.
        let c = Udp::new(s.udp).await;
        let port = c.port();
        let r = c.request(&make(port, 1, "")).await;
        assert_eq!(r.status, 401, "{method}");
        let ch = r
            .headers
            .get(HeaderName::WwwAuthenticate)
            .unwrap()
            .to_string();
        let wrong = authorization(&ch, "1002", "other", method, "sip:1003@example.test", 1);
        let r = c
            .request(&make(port, 2, &format!("Authorization: {wrong}")))
            .await;
        assert_eq!(r.status, 400, "{method}: {} {}", r.status, r.reason);
        assert!(
            r.reason.contains("Digest uri does not match Request-URI"),
            "{method}: {}",
            r.reason
        );
        let right = authorization(&ch, "1002", "other", method, target, 2);
        let r = c
            .request(&make(port, 3, &format!("Authorization: {right}")))
            .await;
        assert_eq!(r.status, 200, "{method}: {}", r.reason);
    }
}
