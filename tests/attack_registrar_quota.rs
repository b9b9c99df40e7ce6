//! Issue 10, finding 3 (registrar side): one authenticated user registering AOR variants
//! (`sip:1001@example.test:N` for every N) must not fill `registrar.max_aors` for everybody.
//! Every variant counts for the same user (`registrar.max_bindings_per_user`), across a
//! restart too, and a user may not register an AOR whose user part is another user's.

mod common;
use busylamp::config::Config;
use busylamp::sip::HeaderName;
use common::*;

/// Digest users 1001 and 1002 (from BASE_CONFIG); `max_aors` below the attacker's 500
/// variants, so that without a per-user limit the registrar fills up. The per-source rate
/// limit is off: the quota must hold on its own (attacker and victim share 127.0.0.1 here).
fn config() -> String {
    BASE_CONFIG
        .replace("max_contacts = 5", "max_contacts = 5\nmax_aors = 400")
        .replace(
            "domain = \"example.test\"",
            "domain = \"example.test\"\nrate_limit_per_source = 0",
        )
}

/// A challenge for REGISTER, answered many times with increasing nonce counts (RFC 7616
/// §3.4.5: a nonce may be reused with nc counting up), so that the attacker spends one round
/// trip per REGISTER, as fast as a phone can.
async fn challenge(c: &Udp, user: &str) -> String {
    let r = c
        .request(&register(user, c.port(), "challenge-me", 1, ""))
        .await;
    assert_eq!(r.status, 401, "{}", r.reason);
    r.headers
        .get(HeaderName::WwwAuthenticate)
        .unwrap()
        .to_string()
}

/// An authenticated REGISTER of `user` for the AOR variant `to` with one Contact.
fn variant(c: &Udp, user: &str, to: &str, ch: &str, nc: u32, call_id: &str) -> Vec<u8> {
    let auth = authorization(ch, user, "secret", "REGISTER", "sip:example.test", nc);
    let bytes = register(
        user,
        c.port(),
        call_id,
        1,
        &format!("Contact: <sip:{user}@127.0.0.1:5999>\n        Authorization: {auth}"),
    );
    let text = String::from_utf8(bytes).unwrap();
    let plain = format!("To: <sip:{user}@example.test>");
    assert!(text.contains(&plain));
    text.replace(&plain, &format!("To: <{to}>")).into_bytes()
}

#[tokio::test]
async fn one_user_registering_500_aor_variants_gets_max_bindings_per_user_and_others_still_register(
) {
    let cfg = Config::from_toml(&config(), "t.toml").unwrap();
    let max = cfg.registrar.max_bindings_per_user;
    assert_eq!(max, 10, "the default");
    let s = server(&config()).await;
    let attacker = Udp::new(s.udp).await;
    let ch = challenge(&attacker, "1001").await;

    // 500 variants, sent 50 at a time without waiting for answers.
    let mut statuses = std::collections::BTreeMap::<(u16, String), usize>::new();
    let mut nc = 0;
    for batch in 0..10u16 {
        for i in 0..50u16 {
            nc += 1;
            let port = 10_000 + batch * 50 + i;
            let to = format!("sip:1001@example.test:{port}");
            attacker
                .send(&variant(
                    &attacker,
                    "1001",
                    &to,
                    &ch,
                    nc,
                    &format!("v{port}"),
                ))
                .await;
        }
        for _ in 0..50 {
            let r = attacker.recv().await;
            *statuses.entry((r.status, r.reason)).or_default() += 1;
        }
    }
    let refusal = (
        403,
        "Too many bindings for this user (registrar.max_bindings_per_user)".to_string(),
    );
    assert_eq!(
        statuses.get(&(200, "OK".to_string())),
        Some(&max),
        "{statuses:?}"
    );
    assert_eq!(statuses.get(&refusal), Some(&(500 - max)), "{statuses:?}");
    let reg = &s.handle.core.registrar;
    assert_eq!(reg.bindings_of_user("1001"), max);
    assert_eq!(reg.aor_count(), max, "max_aors (400) is nowhere near");

    // Another user is still served.
    let other = Udp::new(s.udp).await;
    let r = register_authed(
        &other,
        "1002",
        "other",
        "b-1",
        1,
        &format!("Contact: <sip:1002@127.0.0.1:{}>", other.port()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.reason);

    // The attacker's existing bindings still refresh.
    nc += 1;
    let refresh = variant(
        &attacker,
        "1001",
        "sip:1001@example.test:10000",
        &ch,
        nc,
        "again",
    );
    let r = attacker.request(&refresh).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(reg.bindings_of_user("1001"), max);

    // Other schemes and spellings of the same user count for it too.
    for to in [
        "sips:1001@example.test",
        "sip:%31001@example.test:9",
        "sip:1001@127.0.0.1",
    ] {
        nc += 1;
        let r = attacker
            .request(&variant(&attacker, "1001", to, &ch, nc, to))
            .await;
        assert_eq!((r.status, r.reason.clone()), refusal, "{to}");
    }
}

#[tokio::test]
async fn an_authenticated_user_cannot_register_another_users_aor() {
    let s = server(&config()).await;
    let attacker = Udp::new(s.udp).await;
    let ch = challenge(&attacker, "1001").await;
    for (nc, to) in [
        "sip:1002@example.test",
        "sip:1002@example.test:5070",
        "sip:%31002@example.test",
        "sips:1002@example.test",
    ]
    .into_iter()
    .enumerate()
    {
        let r = attacker
            .request(&variant(&attacker, "1001", to, &ch, nc as u32 + 1, to))
            .await;
        assert_eq!(r.status, 403, "{to}: {}", r.reason);
    }
    let reg = &s.handle.core.registrar;
    assert_eq!(reg.bindings_of_user("1002"), 0);
    assert_eq!(reg.aor_count(), 0);
}

/// The count is rebuilt from the stored bindings at start, and goes down as bindings are
/// removed.
#[tokio::test]
async fn the_per_user_count_survives_a_restart_and_frees_on_removal() {
    let cfg = Config::from_toml(
        &config().replace(
            "max_aors = 400",
            "max_aors = 400\nmax_bindings_per_user = 3",
        ),
        "t.toml",
    )
    .unwrap();
    let store = std::sync::Arc::new(busylamp::storage::MemoryStore::new());
    let s = server_with_store(cfg.clone(), store.clone()).await;
    let c = Udp::new(s.udp).await;
    let ch = challenge(&c, "1001").await;
    for (nc, port) in (1..=3).zip(7001..) {
        let to = format!("sip:1001@example.test:{port}");
        let r = c.request(&variant(&c, "1001", &to, &ch, nc, &to)).await;
        assert_eq!(r.status, 200, "{}", r.reason);
    }
    s.handle.shutdown().await;

    let s = server_with_store(cfg, store).await;
    let reg = &s.handle.core.registrar;
    assert_eq!(reg.bindings_of_user("1001"), 3, "rebuilt from the store");
    let c = Udp::new(s.udp).await;
    let ch = challenge(&c, "1001").await;
    let r = c
        .request(&variant(
            &c,
            "1001",
            "sip:1001@example.test:7004",
            &ch,
            1,
            "new",
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.reason);
    assert!(
        r.reason.contains("registrar.max_bindings_per_user"),
        "{}",
        r.reason
    );

    // Removing one binding (Expires: 0) makes room for another variant.
    let gone = String::from_utf8(variant(
        &c,
        "1001",
        "sip:1001@example.test:7001",
        &ch,
        2,
        "sip:1001@example.test:7001",
    ))
    .unwrap()
    .replace("CSeq: 1 REGISTER", "CSeq: 2 REGISTER\r\nExpires: 0");
    let r = c.request(gone.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(reg.bindings_of_user("1001"), 2);
    let r = c
        .request(&variant(
            &c,
            "1001",
            "sip:1001@example.test:7004",
            &ch,
            3,
            "new",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
    assert_eq!(reg.bindings_of_user("1001"), 3);
}

/// Without digest (a source trusted for REGISTER, said explicitly), the user is the AOR's
/// user part: the variants of one user are bounded the same way.
#[tokio::test]
async fn trusted_registrations_are_bounded_per_aor_user_part() {
    let s = server(&format!(
        "{TRUSTED}[registrar]\nmax_bindings_per_user = 2\n"
    ))
    .await;
    let c = Udp::new(s.udp).await;
    let mut statuses = Vec::new();
    for port in 1..=5u16 {
        let bytes = String::from_utf8(register(
            "1001",
            c.port(),
            &format!("t{port}"),
            1,
            "Contact: <sip:1001@127.0.0.1:5999>",
        ))
        .unwrap()
        .replace(
            "To: <sip:1001@example.test>",
            &format!("To: <sip:1001@example.test:{port}>"),
        );
        statuses.push(c.request(bytes.as_bytes()).await.status);
    }
    assert_eq!(statuses, [200, 200, 403, 403, 403]);
    let r = c
        .request(&register(
            "1002",
            c.port(),
            "u2",
            1,
            "Contact: <sip:1002@127.0.0.1:5999>",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.reason);
}
