//! RFC 3261 §10.3 registrar rules (plus RFC 3327 Path and RFC 5626 instance/reg-id), over raw
//! SIP bytes against an in-process server. Sources are trusted here so each test isolates one
//! rule; digest auth has its own file.

mod common;
use busylamp::events::{Event, RegistrationChange};
use busylamp::sip::HeaderName;
use common::*;

const TRUSTED: &str = r#"
[server]
domain = "example.test"
aliases = ["pbx.example.test"]
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
[registrar]
min_expires = 60
max_expires = 3600
default_expires = 1800
max_contacts = 3
[auth]
trusted = ["127.0.0.0/8", "::1"]
trusted_for = ["calls", "register", "subscribe", "publish"]
"#;

#[tokio::test]
async fn s10_3_two_contacts_are_bound_and_the_200_lists_each_with_its_expires() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid-1",
            1,
            "Contact: <sip:1001@127.0.0.1:5061>;q=0.5, <sip:1001@127.0.0.1:5062>;expires=120\n        Expires: 600",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let mut got = contacts(&r);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("sip:1001@127.0.0.1:5061".to_string(), 600),
            ("sip:1001@127.0.0.1:5062".to_string(), 120)
        ]
    );
    assert!(
        r.headers.get(HeaderName::Date).is_some(),
        "§10.3 step 8: Date"
    );
    let to = r.headers.get(HeaderName::To).unwrap();
    assert!(to.contains(";tag="), "To tag added: {to}");
    assert_eq!(
        s.handle
            .core
            .registrar
            .lookup("sip:1001@example.test")
            .len(),
        2
    );
}

#[tokio::test]
async fn s10_3_default_expires_and_clamp_to_max_expires() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            1,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    assert_eq!(contacts(&r), vec![("sip:a@127.0.0.1:1".into(), 1800)]);
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            2,
            "Contact: <sip:a@127.0.0.1:1>\n        Expires: 99999",
        ))
        .await;
    assert_eq!(contacts(&r), vec![("sip:a@127.0.0.1:1".into(), 3600)]);
}

#[tokio::test]
async fn s10_3_step6_interval_too_brief_gets_423_with_min_expires() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            1,
            "Contact: <sip:a@127.0.0.1:1>;expires=30",
        ))
        .await;
    assert_eq!(r.status, 423);
    assert_eq!(r.headers.get(HeaderName::MinExpires), Some("60"));
    assert!(s
        .handle
        .core
        .registrar
        .lookup("sip:1001@example.test")
        .is_empty());
}

#[tokio::test]
async fn s10_3_refresh_then_expires_zero_removes_one_binding() {
    let s = server(TRUSTED).await;
    let mut events = s.handle.events.subscribe();
    let c = Udp::new(s.udp).await;
    let both = "Contact: <sip:a@127.0.0.1:1>, <sip:b@127.0.0.1:2>\n        Expires: 300";
    assert_eq!(
        c.request(&register("1001", c.port(), "cid", 1, both))
            .await
            .status,
        200
    );
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            2,
            "Contact: <sip:a@127.0.0.1:1>\n        Expires: 900",
        ))
        .await;
    let mut got = contacts(&r);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("sip:a@127.0.0.1:1".into(), 900),
            ("sip:b@127.0.0.1:2".into(), 300)
        ]
    );
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            3,
            "Contact: <sip:b@127.0.0.1:2>;expires=0",
        ))
        .await;
    assert_eq!(contacts(&r), vec![("sip:a@127.0.0.1:1".into(), 900)]);

    let mut changes = Vec::new();
    // The bus also carries other notices (presence from these registrations).
    while let Ok(event) = events.try_recv() {
        let Event::Registration {
            change,
            contact,
            user_agent,
            ..
        } = event
        else {
            continue;
        };
        assert_eq!(user_agent.as_deref(), Some("busylamp-test"));
        changes.push((change, contact));
    }
    assert_eq!(
        changes,
        vec![
            (RegistrationChange::Registered, "sip:a@127.0.0.1:1".into()),
            (RegistrationChange::Registered, "sip:b@127.0.0.1:2".into()),
            (RegistrationChange::Refreshed, "sip:a@127.0.0.1:1".into()),
            (RegistrationChange::Unregistered, "sip:b@127.0.0.1:2".into()),
        ]
    );
}

#[tokio::test]
async fn s10_3_star_with_expires_zero_removes_all_and_star_otherwise_is_400() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let both = "Contact: <sip:a@127.0.0.1:1>, <sip:b@127.0.0.1:2>";
    assert_eq!(
        c.request(&register("1001", c.port(), "cid", 1, both))
            .await
            .status,
        200
    );
    let r = c
        .request(&register("1001", c.port(), "cid2", 1, "Contact: *"))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("Contact *"), "{}", r.reason);
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid2",
            2,
            "Contact: *\n        Expires: 0",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert!(contacts(&r).is_empty());
    assert!(s
        .handle
        .core
        .registrar
        .lookup("sip:1001@example.test")
        .is_empty());
}

#[tokio::test]
async fn s10_2_3_register_without_contact_is_a_query() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    c.request(&register(
        "1001",
        c.port(),
        "cid",
        1,
        "Contact: <sip:a@127.0.0.1:1>",
    ))
    .await;
    let r = c
        .request(&register("1001", c.port(), "other-call", 1, ""))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(contacts(&r).len(), 1);
    let r = c
        .request(&register("1002", c.port(), "other-call", 2, ""))
        .await;
    assert_eq!(r.status, 200);
    assert!(contacts(&r).is_empty());
}

#[tokio::test]
async fn s10_3_step7_out_of_order_cseq_for_the_same_call_id_is_refused() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    c.request(&register(
        "1001",
        c.port(),
        "cid",
        5,
        "Contact: <sip:a@127.0.0.1:1>",
    ))
    .await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            4,
            "Contact: <sip:a@127.0.0.1:1>;expires=0",
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("Out-of-order"), "{}", r.reason);
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
async fn max_aors_bounds_unauthenticated_registration() {
    let s = server(&TRUSTED.replace("max_contacts = 3", "max_contacts = 3\nmax_aors = 2")).await;
    let c = Udp::new(s.udp).await;
    for user in ["1001", "1002"] {
        let r = c
            .request(&register(
                user,
                c.port(),
                user,
                1,
                "Contact: <sip:a@127.0.0.1:1>",
            ))
            .await;
        assert_eq!(r.status, 200);
    }
    let r = c
        .request(&register(
            "1003",
            c.port(),
            "1003",
            1,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    assert_eq!(r.status, 403);
    assert!(r.reason.contains("max_aors"), "{}", r.reason);
    // Refreshing an existing AOR still works, and freeing one makes room.
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "1001",
            2,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .request(&register(
            "1002",
            c.port(),
            "1002",
            2,
            "Contact: *\n        Expires: 0",
        ))
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .request(&register(
            "1003",
            c.port(),
            "1003",
            2,
            "Contact: <sip:a@127.0.0.1:1>",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(s.handle.core.registrar.aor_count(), 2);
}

#[tokio::test]
async fn max_contacts_per_aor_is_enforced_whole() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let three = "Contact: <sip:a@127.0.0.1:1>, <sip:b@127.0.0.1:2>, <sip:c@127.0.0.1:3>";
    assert_eq!(
        c.request(&register("1001", c.port(), "cid", 1, three))
            .await
            .status,
        200
    );
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            2,
            "Contact: <sip:d@127.0.0.1:4>",
        ))
        .await;
    assert_eq!(r.status, 403);
    assert!(r.reason.contains("max 3"), "{}", r.reason);
    assert_eq!(
        s.handle
            .core
            .registrar
            .lookup("sip:1001@example.test")
            .len(),
        3
    );
}

#[tokio::test]
async fn rfc3327_path_is_stored_and_echoed_when_supported() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            1,
            "Contact: <sip:a@127.0.0.1:1>\n        Path: <sip:edge1.example.test;lr>\n        Path: <sip:edge2.example.test;lr>\n        Supported: path",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get(HeaderName::Path),
        Some("<sip:edge1.example.test;lr>, <sip:edge2.example.test;lr>")
    );
    let b = s.handle.core.registrar.lookup("sip:1001@example.test");
    assert_eq!(b[0].path.len(), 2);
}

#[tokio::test]
async fn rfc5626_instance_and_reg_id_are_stored_and_echoed() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "cid",
            1,
            "Contact: <sip:a@127.0.0.1:1;ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1",
        ))
        .await;
    assert_eq!(r.status, 200);
    let c0 = r.headers.get(HeaderName::Contact).unwrap();
    assert!(
        c0.contains("+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\""),
        "{c0}"
    );
    assert!(c0.contains("reg-id=1"), "{c0}");
    let b = s.handle.core.registrar.lookup("sip:1001@example.test");
    assert_eq!(b[0].reg_id, Some(1));
    assert!(b[0].instance.as_deref().unwrap().contains("urn:uuid"));
}

#[tokio::test]
async fn foreign_domain_unknown_require_and_non_sip_to_are_refused_with_reasons() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let r = c
        .request(&wire(&format!(
            "REGISTER sip:example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
            From: <sip:1001@elsewhere.test>;tag=1
            To: <sip:1001@elsewhere.test>
            Call-ID: x
            CSeq: 1 REGISTER
            Contact: <sip:a@127.0.0.1:1>
            ",
            p = c.port(),
            b = branch()
        )))
        .await;
    assert_eq!(r.status, 403);
    assert!(r.reason.contains("elsewhere.test"), "{}", r.reason);
    // An alias of our domain is the same domain.
    let r = c
        .request(&wire(&format!(
            "REGISTER sip:pbx.example.test SIP/2.0
            Via: SIP/2.0/UDP 127.0.0.1:{p};branch={b}
            From: <sip:1001@PBX.example.test>;tag=1
            To: <sip:1001@PBX.example.test>
            Call-ID: y
            CSeq: 1 REGISTER
            Contact: <sip:a@127.0.0.1:1>
            ",
            p = c.port(),
            b = branch()
        )))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    let r = c
        .request(&register(
            "1001",
            c.port(),
            "z",
            1,
            "Contact: <sip:a@127.0.0.1:1>\n        Require: gruu, path",
        ))
        .await;
    assert_eq!(r.status, 420);
    assert_eq!(r.headers.get(HeaderName::Unsupported), Some("gruu"));
}

#[tokio::test]
async fn registration_over_tcp_answers_on_the_same_connection() {
    let s = server(TRUSTED).await;
    let mut t = Tcp::connect(s.tcp).await;
    let r = t
        .request(&register(
            "1001",
            5099,
            "tcp-call",
            1,
            "Contact: <sip:1001@127.0.0.1:5099;transport=tcp>",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(contacts(&r)[0].0, "sip:1001@127.0.0.1:5099;transport=tcp");
    let b = s.handle.core.registrar.lookup("sip:1001@example.test");
    assert!(b[0].source.starts_with("tcp:127.0.0.1:"), "{}", b[0].source);
}

#[tokio::test]
async fn registration_over_ipv6_udp_and_tcp() {
    let cfg = TRUSTED.replace(
        r#"listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]"#,
        r#"listen = ["udp:[::1]:0", "tcp:[::1]:0"]
aliases = ["[::1]"]"#,
    );
    let cfg = cfg.replacen("aliases = [\"pbx.example.test\"]\n", "", 1);
    let s = server(&cfg).await;
    let sock = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let msg = wire(&format!(
        "REGISTER sip:[::1] SIP/2.0
        Via: SIP/2.0/UDP [::1]:{port};branch={b};rport
        From: <sip:1001@[::1]>;tag=1
        To: <sip:1001@[::1]>
        Call-ID: v6
        CSeq: 1 REGISTER
        Contact: <sip:1001@[::1]:{port}>
        ",
        b = branch()
    ));
    sock.send_to(&msg, s.udp).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let r = parse_response(&buf[..n]);
    assert_eq!(r.status, 200, "{}", r.reason);
    let via = r.headers.get(HeaderName::Via).unwrap();
    assert!(
        via.contains(&format!("rport={port}")),
        "RFC 3581 rport filled: {via}"
    );
    assert_eq!(contacts(&r)[0].0, format!("sip:1001@[::1]:{port}"));
    let mut t = Tcp::connect(s.tcp).await;
    let r = t
        .request(&wire(&format!(
            "REGISTER sip:[::1] SIP/2.0
            Via: SIP/2.0/TCP [::1]:5070;branch={b}
            From: <sip:1002@[::1]>;tag=1
            To: <sip:1002@[::1]>
            Call-ID: v6t
            CSeq: 1 REGISTER
            Contact: <sip:1002@[::1]:5070;transport=tcp>
            ",
            b = branch()
        )))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
}

#[tokio::test]
async fn rfc3581_received_and_rport_are_stamped_on_the_response_via() {
    let s = server(TRUSTED).await;
    let c = Udp::new(s.udp).await;
    let msg = wire(&format!(
        "OPTIONS sip:example.test SIP/2.0
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch={b};rport
        From: <sip:1001@example.test>;tag=1
        To: <sip:example.test>
        Call-ID: nat
        CSeq: 1 OPTIONS
        ",
        b = branch()
    ));
    // The Via claims 192.0.2.1, the packet comes from 127.0.0.1: with rport the answer still
    // reaches us, at our real port.
    let r = c.request(&msg).await;
    assert_eq!(r.status, 200);
    let via = r.headers.get(HeaderName::Via).unwrap();
    assert!(via.contains("received=127.0.0.1"), "{via}");
    assert!(via.contains(&format!("rport={}", c.port())), "{via}");
    assert!(r
        .headers
        .get(HeaderName::Allow)
        .unwrap()
        .contains("REGISTER"));
}
