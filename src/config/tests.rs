//! Config parsing and validation: typed values, and every refused value named with its key,
//! its line and a fix.

use super::*;

#[test]
fn defaults_are_valid_and_secure() {
    let c = Config::default();
    c.validate("default").unwrap();
    assert_eq!(c.auth.mode, AuthMode::Digest);
    assert!(c.auth.trusted.is_empty());
    assert_eq!(c.auth.trusted_for, vec![TrustedFor::Calls]);
    assert!(c.warnings().is_empty());
}

#[test]
fn trusted_for_defaults_to_calls_warns_per_purpose_and_is_never_empty_with_trusted() {
    let c = Config::from_toml("[auth]\ntrusted = [\"192.0.2.20\"]\n", "t.toml").unwrap();
    assert_eq!(c.auth.trusted_for, vec![TrustedFor::Calls]);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = Config::from_toml(
        "[auth]\ntrusted = [\"192.0.2.20\", \"10.0.0.0/8\"]\n\
         trusted_for = [\"calls\", \"register\", \"subscribe\", \"publish\"]\n",
        "t.toml",
    )
    .unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    for (line, name) in w.iter().zip(["register", "subscribe", "publish"]) {
        assert!(
            line.contains(&format!("auth.trusted_for names \"{name}\""))
                && line.contains("192.0.2.20/32, 10.0.0.0/8")
                && line.contains("spoofed"),
            "{line}"
        );
    }
    // Without trusted networks, or in open mode (nobody is challenged), nothing to warn of.
    let c = Config::from_toml("[auth]\ntrusted_for = [\"register\"]\n", "t.toml").unwrap();
    assert!(c.warnings().is_empty());
    let c = Config::from_toml(
        "[auth]\nmode = \"open\"\ntrusted = [\"10.0.0.0/8\"]\ntrusted_for = [\"register\"]\n",
        "t.toml",
    )
    .unwrap();
    assert!(c.warnings().is_empty());
    // Trusted for nothing is a mistake, named with its fix.
    let e = Config::from_toml(
        "[auth]\ntrusted = [\"10.0.0.0/8\"]\ntrusted_for = []\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("auth.trusted_for") && e.contains("[\"calls\"]"),
        "{e}"
    );
    Config::from_toml("[auth]\ntrusted_for = []\n", "t.toml").unwrap();
    let e = Config::from_toml("[auth]\ntrusted_for = [\"everything\"]\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.trusted_for"), "{e}");
}

#[test]
fn issue_example_parses() {
    let c = Config::from_toml(
        r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:5070", "tcp:127.0.0.1:5070"]
data_dir = "/var/lib/busylamp"
[registrar]
min_expires = 60
max_expires = 3600
default_expires = 3600
[[users]]
name = "1001"
password = "secret"
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.server.listen.len(), 2);
    assert_eq!(c.realm(), "example.test");
}

#[test]
fn unknown_and_bad_keys_are_named() {
    let e = Config::from_toml("[server]\ndomian = \"x\"\n", "t.toml").unwrap_err();
    assert!(e.to_string().contains("domian"), "{e}");
    let e = Config::from_toml(
        "[registrar]\nmin_expires = 100\nmax_expires = 50\n",
        "t.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("registrar.max_expires"), "{e}");
    let e = Config::from_toml("[server]\nlisten = [\"sctp:1.2.3.4:5\"]\n", "t.toml").unwrap_err();
    assert!(e.to_string().contains("server.listen"), "{e}");
    let e = Config::from_toml("[auth]\ntrusted = [\"10.0.0.0/33\"]\n", "t.toml").unwrap_err();
    assert!(e.to_string().contains("auth.trusted"), "{e}");
    let e = Config::from_toml("[[users]]\nname = \"a\"\n", "t.toml").unwrap_err();
    assert!(e.to_string().contains("users[0]"), "{e}");
}

/// The networks of `auth.trusted`, read from a config.
fn trusted(list: &str) -> Vec<IpNet> {
    Config::from_toml(&format!("[auth]\ntrusted = [{list}]\n"), "t.toml")
        .unwrap()
        .auth
        .trusted
}

#[test]
fn trusted_networks_match_v4_v6_and_mapped() {
    let n = trusted("\"10.0.0.0/8\"");
    assert!(in_networks(&n, "10.2.3.4".parse().unwrap()));
    assert!(in_networks(&n, "::ffff:10.2.3.4".parse().unwrap()));
    assert!(!in_networks(&n, "11.0.0.1".parse().unwrap()));
    let n = trusted("\"2001:db8::/32\"");
    assert!(in_networks(&n, "2001:db8:1::1".parse().unwrap()));
    assert!(!in_networks(&n, "2001:db9::1".parse().unwrap()));
    // An address alone is a network of one.
    let n = trusted("\"127.0.0.1\"");
    assert!(in_networks(&n, "127.0.0.1".parse().unwrap()));
    assert!(!in_networks(&n, "127.0.0.2".parse().unwrap()));
    assert!(in_networks(
        &trusted("\"0.0.0.0/0\""),
        "8.8.8.8".parse().unwrap()
    ));
    // Host bits in the network address do not narrow it.
    assert!(in_networks(
        &trusted("\"10.1.2.3/8\""),
        "10.9.9.9".parse().unwrap()
    ));
    assert_eq!(trusted("\" 10.0.0.0 / 8 \"").len(), 1);
    for bad in [
        "10.0.0.0/33",
        "10.0.0.0/",
        "2001:db8::/129",
        "10.0.0",
        "example.com",
        "",
    ] {
        let e = Config::from_toml(
            &format!("[auth]\ntrusted = [\"10.0.0.0/8\", {bad:?}]\n"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("key `auth.trusted[1]`") && e.contains("fix:"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn values_are_typed_when_read() {
    let c = Config::from_toml(
        r#"
[server]
aliases = ["192.0.2.10", "pbx.example.com"]
listen = ["UDP:[::1]:5060", "tcp:127.0.0.1:5070"]
[auth]
algorithms = ["md5", "SHA-256"]
[proxy]
upstream = "sip:192.0.2.5:5062;transport=tcp"
[presence]
server_address = "sip:192.0.2.10:5060"
[[presence.rules]]
presentity = "sip:1001@example.com"
watcher = "*@example.com"
action = "block"
[pua]
presence_server = "sip:presence.example.com"
[pua.usrloc]
users = ["10*", "*"]
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.server.aliases,
        [
            Host::V4("192.0.2.10".parse().unwrap()),
            Host::Name("pbx.example.com".into())
        ]
    );
    assert_eq!(
        c.server
            .listen
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>(),
        ["udp:[::1]:5060", "tcp:127.0.0.1:5070"]
    );
    assert_eq!(c.auth.algorithms, [Algorithm::Md5, Algorithm::Sha256]);
    let up = c.proxy.upstream.unwrap();
    assert_eq!(
        (up.host.to_string(), up.port),
        ("192.0.2.5".into(), Some(5062))
    );
    assert_eq!(c.presence.server_address.unwrap().port, Some(5060));
    assert_eq!(
        c.presence.rules[0].watcher,
        RulePattern::Domain("example.com".into())
    );
    assert!(matches!(
        c.presence.rules[0].presentity,
        RulePattern::Uri(_)
    ));
    assert!(c.pua.presence_server.is_some());
    assert_eq!(
        c.pua.usrloc.users,
        [UserPattern::Prefix("10".into()), UserPattern::Any]
    );
    // Empty URIs mean "none".
    let c = Config::from_toml(
        "[proxy]\nupstream = \"\"\n[presence]\nserver_address = \"\"\n[pua]\npresence_server = \"\"\n",
        "t.toml",
    )
    .unwrap();
    assert!(c.proxy.upstream.is_none() && c.presence.server_address.is_none());
    assert!(c.pua.presence_server.is_none());
}

/// Issue 10: per-user bindings, per-source TCP connections, a deadline per TCP message,
/// and no version in our Server header unless the admin writes one.
#[test]
fn per_user_and_per_source_limits_and_the_server_header() {
    let c = Config::default();
    assert_eq!(c.registrar.max_bindings_per_user, 10);
    assert_eq!(c.server.max_tcp_connections_per_source, 16);
    assert_eq!(c.server.tcp_message_timeout, 10);
    assert_eq!(c.server.server_header, "busylamp");
    let c = Config::from_toml(
        "[server]\nmax_tcp_connections_per_source = 64\ntcp_message_timeout = 3\nserver_header = \"\"\n[registrar]\nmax_bindings_per_user = 2\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        (
            c.server.max_tcp_connections_per_source,
            c.server.tcp_message_timeout,
            c.server.server_header.as_str(),
            c.registrar.max_bindings_per_user
        ),
        (64, 3, "", 2)
    );
    for (toml, key) in [
        (
            "[server]\nmax_tcp_connections_per_source = 0\n",
            "server.max_tcp_connections_per_source",
        ),
        (
            "[server]\ntcp_message_timeout = 0\n",
            "server.tcp_message_timeout",
        ),
        (
            "[registrar]\nmax_bindings_per_user = 0\n",
            "registrar.max_bindings_per_user",
        ),
    ] {
        let e = Config::from_toml(toml, "t.toml").unwrap_err();
        let ConfigError::Invalid { key: k, fix, .. } = &e else {
            panic!("{toml}: not an invalid value: {e}");
        };
        assert_eq!(k, key, "{e}");
        assert!(!fix.is_empty(), "{e}");
    }
}

#[test]
fn every_refused_value_names_its_key_its_line_and_a_fix() {
    for (toml, key, line) in [
        ("[server]\ndomain = \"\"\n", "server.domain", 2),
        ("[server]\ndomain = \"pbx example\"\n", "server.domain", 2),
        (
            "[server]\nlisten = [\"udp:0.0.0.0:5060\", \"sctp:1.2.3.4:5\"]\n",
            "server.listen[1]",
            2,
        ),
        ("[server]\naliases = [\"a b\"]\n", "server.aliases[0]", 2),
        (
            "[auth]\nalgorithms = [\"SHA-512-256\"]\n",
            "auth.algorithms[0]",
            2,
        ),
        ("[auth]\nmode = \"none\"\n", "auth.mode", 2),
        ("[storage]\nbackend = \"lmdb\"\n", "storage.backend", 2),
        (
            "\n[registrar]\nmin_expires = \"sixty\"\n",
            "registrar.min_expires",
            3,
        ),
        (
            "[registrar]\nmin_expires = -1\n",
            "registrar.min_expires",
            2,
        ),
        ("[pua.usrloc]\nenabled = \"yes\"\n", "pua.usrloc.enabled", 2),
        (
            "[server]\nlisten = \"udp:0.0.0.0:5060\"\n",
            "server.listen",
            2,
        ),
        ("server = 5\n", "server", 1),
        (
            "[proxy]\nupstream = \"sip:1001@pbx\"\n",
            "proxy.upstream",
            2,
        ),
        ("[proxy]\nupstream = \"pbx:5060\"\n", "proxy.upstream", 2),
        (
            "[presence]\nserver_address = \"192.0.2.10\"\n",
            "presence.server_address",
            2,
        ),
        (
            "[presence]\nsame_domain = \"maybe\"\n",
            "presence.same_domain",
            2,
        ),
        (
            "[[presence.rules]]\npresentity = \"*\"\nwatcher = \"nobody\"\naction = \"allow\"\n",
            "presence.rules[0].watcher",
            3,
        ),
        (
            "[[presence.rules]]\npresentity = \"1001\"\nwatcher = \"*\"\naction = \"allow\"\n",
            "presence.rules[0].presentity",
            2,
        ),
        (
            "[[presence.rules]]\npresentity = \"*\"\naction = \"allow\"\n",
            "presence.rules[0].watcher",
            1,
        ),
        (
            "[[presence.profiles]]\nname = \"x\"\ndialog_idle = \"dark\"\n",
            "presence.profiles[0].dialog_idle",
            3,
        ),
        ("[auth]\nmode = 1\n", "auth.mode", 2),
        (
            "[pua.dialoginfo]\nusers = [\"1001\", \"1*0\"]\n",
            "pua.dialoginfo.users[1]",
            2,
        ),
        ("[server]\ndomian = \"x\"\n", "server.domian", 2),
        ("[servre]\ndomain = \"x\"\n", "servre", 1),
        (
            "pua = { usrloc = { users = [\"a b\"] } }\n",
            "pua.usrloc.users[0]",
            1,
        ),
    ] {
        let e = Config::from_toml(toml, "t.toml").unwrap_err();
        let ConfigError::Invalid {
            path, key: k, fix, ..
        } = &e
        else {
            panic!("{toml}: not an invalid value: {e}");
        };
        assert_eq!(
            (k.as_str(), path.as_str()),
            (key, format!("t.toml:{line}").as_str()),
            "{toml}: {e}"
        );
        assert!(!fix.is_empty(), "{e}");
    }
    // Not TOML at all: TOML's own message, with the line.
    let e = Config::from_toml("[server\n", "t.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn pua_keys_have_defaults_and_bad_values_are_named_with_a_fix() {
    let c = Config::default();
    assert_eq!(c.pua.publish_expires, 3600);
    assert_eq!(c.pua.usrloc.users, [UserPattern::Any]);
    assert!(c.pua.usrloc.enabled);
    for (toml, key) in [
        (
            "[pua]\npresence_server = \"sips:x\"\n",
            "pua.presence_server",
        ),
        (
            "[pua]\npresence_server = \"sip:1001@x\"\n",
            "pua.presence_server",
        ),
        ("[pua]\npassword = \"p\"\n", "pua.password"),
        ("[pua]\nusername = \"a\\\"b\"\n", "pua.username"),
        ("[pua]\npublish_expires = 10\n", "pua.publish_expires"),
        ("[pua]\nrefresh_margin = 0\n", "pua.refresh_margin"),
        ("[pua]\nmin_refresh = 0\n", "pua.min_refresh"),
        ("[pua]\nretry_min = 0\n", "pua.retry_min"),
        ("[pua]\nretry_min = 10\nretry_max = 5\n", "pua.retry_max"),
        ("[pua.usrloc]\nusers = []\n", "pua.usrloc.users"),
        ("[pua.usrloc]\nusers = [\"a b\"]\n", "pua.usrloc.users"),
    ] {
        let e = Config::from_toml(toml, "t.toml").unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("fix:"), "{toml}: {e}");
    }
    Config::from_toml(
        "[pua]\npresence_server = \"sip:192.0.2.1:5060;transport=tcp\"\nusername = \"u\"\npassword = \"p\"\n[pua.usrloc]\nusers = [\"*\", \"10*\", \"1001\", \"sip:1001@example.com\"]\n",
        "t.toml",
    )
    .unwrap();
}

#[test]
fn dialog_and_dialoginfo_defaults_and_validation() {
    let c = Config::default();
    assert_eq!(c.dialog.max_lifetime, 14_400);
    assert_eq!(c.dialog.early_timeout, 212);
    assert_eq!(c.dialog.max_calls, 100_000);
    let di = &c.pua.dialoginfo;
    assert!(di.enabled && di.caller && di.callee);
    assert!(di.include_callid && di.include_tags && di.include_localremote);
    assert!(!di.caller_confirmed);
    assert_eq!(di.users, [UserPattern::Any]);
    for (toml, key) in [
        ("[dialog]\nmax_lifetime = 10\n", "dialog.max_lifetime"),
        ("[dialog]\nmax_lifetime = 99999999\n", "dialog.max_lifetime"),
        ("[dialog]\nearly_timeout = 180\n", "dialog.early_timeout"),
        ("[dialog]\nearly_timeout = 7200\n", "dialog.early_timeout"),
        ("[dialog]\nmax_calls = 0\n", "dialog.max_calls"),
        ("[pua.dialoginfo]\nusers = []\n", "pua.dialoginfo.users"),
        (
            "[pua.dialoginfo]\nusers = [\"\"]\n",
            "pua.dialoginfo.users[0]",
        ),
        (
            "[pua.dialoginfo]\nusers = [\"*1\"]\n",
            "pua.dialoginfo.users[0]",
        ),
        (
            "[pua.dialoginfo]\nusers = [\"sip:example.com\"]\n",
            "pua.dialoginfo.users[0]",
        ),
    ] {
        let e = Config::from_toml(toml, "t.toml").unwrap_err().to_string();
        assert!(e.contains(&format!("key `{key}`")), "{toml}: {e}");
        assert!(e.contains("fix:"), "{e}");
    }
    // Disabled with no users is fine.
    Config::from_toml("[pua.dialoginfo]\nenabled = false\nusers = []\n", "t.toml").unwrap();
    // A longer Timer C needs a longer early_timeout.
    Config::from_toml(
        "[proxy]\ntimer_c = 300\n[dialog]\nearly_timeout = 332\n",
        "t.toml",
    )
    .unwrap();
}

/// Issue 11 item 1: an AOR in a `users` list written with an alias, a port or `sips:` names
/// the canonical AOR the registrar keys by.
#[test]
fn user_pattern_aors_are_canonical_after_reading() {
    let cfg = Config::from_toml(
        r#"
[server]
domain = "example.com"
aliases = ["192.0.2.10", "pbx.local"]
[pua.usrloc]
users = ["sip:1001@192.0.2.10:5060"]
[pua.dialoginfo]
users = ["sips:1002@PBX.LOCAL", "sip:1003@elsewhere.test:5060"]
"#,
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        cfg.pua.usrloc.users,
        [UserPattern::Aor("sip:1001@example.com".into())]
    );
    assert!(cfg.pua.dialoginfo.allows("sip:1002@example.com"));
    assert!(cfg.pua.dialoginfo.allows("sip:1003@elsewhere.test"));
    assert!(!cfg.pua.dialoginfo.allows("sip:1001@example.com"));
}

#[test]
fn dialoginfo_users_patterns() {
    let cfg = |users: &[&str]| DialogInfoConfig {
        users: users.iter().filter_map(|u| u.parse().ok()).collect(),
        ..Default::default()
    };
    let aor = "sip:1001@example.com";
    assert!(cfg(&["*"]).allows(aor));
    assert!(cfg(&["1001"]).allows(aor));
    assert!(!cfg(&["100"]).allows(aor));
    assert!(cfg(&["10*"]).allows(aor));
    assert!(!cfg(&["11*"]).allows(aor));
    assert!(cfg(&["sip:1001@EXAMPLE.COM"]).allows(aor));
    assert!(!cfg(&["sip:1001@other.com"]).allows(aor));
    assert!(!cfg(&["SIP:1001@example.com"]).allows("sip:1002@example.com"));
    assert!(cfg(&["2000", "1001"]).allows(aor));
    assert!(!cfg(&[]).allows(aor));
}

#[test]
fn proxy_max_calls_per_user_defaults_to_20_and_is_at_least_one() {
    assert_eq!(Config::default().proxy.max_calls_per_user, 20);
    let c = Config::from_toml("[proxy]\nmax_calls_per_user = 3\n", "t.toml").unwrap();
    assert_eq!(c.proxy.max_calls_per_user, 3);
    let e = Config::from_toml("[proxy]\nmax_calls_per_user = 0\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("key `proxy.max_calls_per_user`"), "{e}");
    assert!(e.contains("fix:"), "{e}");
}

#[test]
fn presence_per_user_quotas_and_dialog_ids_have_defaults_and_are_checked() {
    let c = Config::default();
    assert_eq!(c.presence.max_subscriptions_per_user, 200);
    assert_eq!(c.presence.max_publications_per_user, 64);
    assert_eq!(c.presence.max_failing_watchers_per_user, 32);
    assert_eq!(c.presence.dialog_ids_to, DialogIdsTo::SameDomain);
    let c = Config::from_toml(
        "[presence]\nmax_subscriptions_per_user = 5\nmax_publications_per_user = 3\nmax_failing_watchers_per_user = 2\ndialog_ids_to = \"nobody\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        (
            c.presence.max_subscriptions_per_user,
            c.presence.max_publications_per_user,
            c.presence.max_failing_watchers_per_user,
            c.presence.dialog_ids_to
        ),
        (5, 3, 2, DialogIdsTo::Nobody)
    );
    for v in ["everyone", "same_domain"] {
        Config::from_toml(&format!("[presence]\ndialog_ids_to = \"{v}\"\n"), "t.toml").unwrap();
    }
    for (toml, key) in [
        (
            "[presence]\nmax_subscriptions_per_user = 0\n",
            "presence.max_subscriptions_per_user",
        ),
        (
            "[presence]\nmax_publications_per_user = 0\n",
            "presence.max_publications_per_user",
        ),
        (
            "[presence]\nmax_failing_watchers_per_user = 0\n",
            "presence.max_failing_watchers_per_user",
        ),
        ("[presence]\ndialog_ids_to = \"some\"\n", "dialog_ids_to"),
    ] {
        let e = Config::from_toml(toml, "t.toml").unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
}

/// Issue 11, item 7: the per-source rate limit for new SUBSCRIBEs and REGISTERs.
#[test]
fn per_source_rate_limit_keys() {
    let c = Config::default();
    assert_eq!(c.server.rate_limit_per_source, 50.0);
    assert_eq!(c.server.rate_limit_burst, 500);
    let c = Config::from_toml(
        "[server]\nrate_limit_per_source = 0\nrate_limit_burst = 20\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.server.rate_limit_per_source, 0.0);
    assert_eq!(c.server.rate_limit_burst, 20);
    let c = Config::from_toml("[server]\nrate_limit_per_source = 2.5\n", "t.toml").unwrap();
    assert_eq!(c.server.rate_limit_per_source, 2.5);
    for (toml, key) in [
        (
            "[server]\nrate_limit_per_source = -1\n",
            "server.rate_limit_per_source",
        ),
        (
            "[server]\nrate_limit_per_source = nan\n",
            "server.rate_limit_per_source",
        ),
        (
            "[server]\nrate_limit_burst = 0\n",
            "server.rate_limit_burst",
        ),
    ] {
        let e = Config::from_toml(toml, "t.toml").unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
}

/// Issue 11, item 6: how long the addresses of an upstream host name are kept at most.
#[test]
fn upstream_refresh_key() {
    assert_eq!(Config::default().proxy.upstream_refresh, 300);
    let c = Config::from_toml("[proxy]\nupstream_refresh = 30\n", "t.toml").unwrap();
    assert_eq!(c.proxy.upstream_refresh, 30);
    let e = Config::from_toml("[proxy]\nupstream_refresh = 0\n", "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("proxy.upstream_refresh"), "{e}");
}

/// Issue 11: one MD5 challenge by default; SHA-256 per `[[auth.profiles]]` (User-Agent);
/// SHA-256 offered to everyone is allowed but warned about, with the fix.
#[test]
fn auth_offers_md5_by_default_sha256_per_profile_and_warns_when_offered_to_all() {
    let c = Config::default();
    assert_eq!(c.auth.algorithms, [Algorithm::Md5]);
    assert!(c.auth.profiles.is_empty());
    let c = Config::from_toml(
        "[[auth.profiles]]\nname = \"linphone\"\nuser_agent = \"Linphone\"\nalgorithms = [\"SHA-256\", \"MD5\"]\n",
        "t.toml",
    )
    .unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert_eq!(
        c.auth
            .algorithms_for(Some("Linphone/5.1.2 (belle-sip/5.1.0)")),
        [Algorithm::Sha256, Algorithm::Md5]
    );
    assert_eq!(
        c.auth.algorithms_for(Some("baresip v1.0.0")),
        [Algorithm::Md5]
    );
    assert_eq!(c.auth.algorithms_for(None), [Algorithm::Md5]);

    let c = Config::from_toml("[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n", "t.toml").unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("auth.algorithms offers SHA-256 to every phone")
            && w[0].contains("MD5 only")
            && w[0].contains("[[auth.profiles]]"),
        "{w:?}"
    );
    // Nobody is challenged in open mode: nothing to warn of.
    let c = Config::from_toml(
        "[auth]\nmode = \"open\"\nalgorithms = [\"SHA-256\"]\n",
        "t.toml",
    )
    .unwrap();
    assert!(c.warnings().is_empty());

    for (toml, key) in [
        (
            "[[auth.profiles]]\nuser_agent = \"X\"\nalgorithms = [\"MD5\"]\n",
            "auth.profiles[0].name",
        ),
        (
            "[[auth.profiles]]\nname = \"x\"\nalgorithms = [\"MD5\"]\n",
            "auth.profiles[0].user_agent",
        ),
        (
            "[[auth.profiles]]\nname = \"x\"\nuser_agent = \"X\"\n",
            "auth.profiles[0].algorithms",
        ),
        (
            "[[auth.profiles]]\nname = \"x\"\nuser_agent = \"X\"\nalgorithms = [\"SHA-512\"]\n",
            "auth.profiles[0].algorithms[0]",
        ),
    ] {
        let e = Config::from_toml(toml, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains(&format!("key `{key}`")) && e.contains("fix:"),
            "{toml}: {e}"
        );
    }
}

/// Issue 12: `[bla]` and `[[bla.lines]]` as BLA12.md fixes them: defaults, the canonical AOR
/// of a line, and who may register and call from it.
#[test]
fn bla_lines_read_with_defaults_and_answer_who_may_use_them() {
    let c = Config::default();
    assert_eq!(c.bla, BlaConfig::default());
    assert!(c.bla.lines.is_empty());
    assert_eq!(
        (
            c.bla.seize_timeout,
            c.bla.subscribe_margin,
            c.bla.seized_expires,
            c.bla.resubscribe_wait,
            c.bla.reconcile_timeout
        ),
        (30, 30, 120, 2, 32)
    );
    assert!(VendorProfile::default().bla_subscribe);

    let c = Config::from_toml(
        r#"
[server]
domain = "Example.COM"
aliases = ["192.0.2.10"]
listen = ["udp:0.0.0.0:5070"]
[bla]
seize_timeout = 20
[[bla.lines]]
aor = "2000"
label = "Main line"
members = ["1001", "1002"]
[[bla.lines]]
aor = "sips:%32001@192.0.2.10:5070;transport=tcp"
appearances = 4
[[presence.profiles]]
name = "cisco"
user_agent = "Cisco"
bla_subscribe = false
"#,
        "t.toml",
    )
    .unwrap();
    let d = crate::domain::Domains::new(&c);
    assert_eq!(c.bla.seize_timeout, 20);
    assert_eq!(c.bla.seized_expires, 120);
    assert!(!c.presence.profiles[0].bla_subscribe);
    let main = &c.bla.lines[0];
    assert_eq!(main.label.as_deref(), Some("Main line"));
    assert_eq!(main.appearances, 2, "default");
    assert_eq!(main.canonical_aor(&d), "sip:2000@example.com");
    assert_eq!(main.user(), "2000");
    let boss = &c.bla.lines[1];
    assert_eq!(boss.canonical_aor(&d), "sip:2001@example.com");
    assert_eq!(boss.user(), "2001", "unescaped");
    assert_eq!(boss.appearances, 4);
    assert!(boss.members.is_empty() && boss.label.is_none());

    // Lookup by canonical AOR, the registrar's and the proxy's key.
    assert_eq!(c.bla.line(&d, "sip:2000@example.com"), Some(main));
    assert_eq!(c.bla.line(&d, "sip:2001@example.com"), Some(boss));
    assert_eq!(c.bla.line(&d, "sip:1001@example.com"), None);
    assert_eq!(c.bla.line(&d, "sip:2000@elsewhere.test"), None);
    assert_eq!(c.bla.line(&d, "2000"), None, "only canonical AORs");

    // The line's own user and its members; nobody else, case-sensitively.
    assert!(main.may_register("2000"));
    assert!(main.may_register("1001") && main.may_register("1002"));
    assert!(!main.may_register("1003"));
    assert!(!main.may_register(""));
    assert!(!main.may_register("20000"));
    assert!(boss.may_register("2001") && !boss.may_register("1001"));
}

/// Every wrong `[bla]` value is refused naming its key and a fix; a later line naming the
/// same line as an earlier one (any spelling of its AOR) is refused too.
#[test]
fn bla_refuses_bad_lines_naming_the_key() {
    let head = "[server]\ndomain = \"example.com\"\naliases = [\"pbx.local\"]\n";
    for (toml, key, says) in [
        (
            "[[bla.lines]]\naor = \"\"\n",
            "bla.lines[0].aor",
            "user name",
        ),
        (
            "[[bla.lines]]\naor = \"a b\"\n",
            "bla.lines[0].aor",
            "user name",
        ),
        (
            "[[bla.lines]]\naor = \"sip:2000@elsewhere.test\"\n",
            "bla.lines[0].aor",
            "not at our domain",
        ),
        (
            "[[bla.lines]]\naor = \"sip:2000@example.com:7001\"\n",
            "bla.lines[0].aor",
            "not at our domain",
        ),
        (
            "[[bla.lines]]\naor = \"sip:example.com\"\n",
            "bla.lines[0].aor",
            "with a user",
        ),
        (
            "[[bla.lines]]\naor = \"2000\"\n[[bla.lines]]\naor = \"sip:2000@PBX.local:5060\"\n",
            "bla.lines[1].aor",
            "is also bla.lines[0].aor",
        ),
        (
            "[[bla.lines]]\naor = \"2000\"\nappearances = 0\n",
            "bla.lines[0].appearances",
            "outside 1..=64",
        ),
        (
            "[[bla.lines]]\naor = \"2000\"\nappearances = 65\n",
            "bla.lines[0].appearances",
            "outside 1..=64",
        ),
        (
            "[[bla.lines]]\naor = \"2000\"\nmembers = [\"1001\", \"sip:1002@example.com\"]\n",
            "bla.lines[0].members[1]",
            "user name",
        ),
        (
            "[[bla.lines]]\naor = \"2000\"\nmembers = [\"1001\", \"1001\"]\n",
            "bla.lines[0].members[1]",
            "twice",
        ),
        (
            "[[bla.lines]]\naor = \"2000\"\nlabel = \"a\\nb\"\n",
            "bla.lines[0].label",
            "control",
        ),
        ("[bla]\nseize_timeout = 0\n", "bla.seize_timeout", "5..=600"),
        (
            "[bla]\nseized_expires = 5\n",
            "bla.seized_expires",
            "10..=3600",
        ),
        (
            "[bla]\nsubscribe_margin = 4000\n",
            "bla.subscribe_margin",
            "0..=3600",
        ),
        (
            "[bla]\nresubscribe_wait = 60\n",
            "bla.resubscribe_wait",
            "unwatched",
        ),
        (
            "[bla]\nreconcile_timeout = 0\n",
            "bla.reconcile_timeout",
            "1..=3600",
        ),
        // Refused while reading: the locator names the key and the line.
        (
            "[[bla.lines]]\naor = \"2000\"\nmembrs = [\"1001\"]\n",
            "bla.lines[0].membrs",
            "unknown field",
        ),
        (
            "[[bla.lines]]\nlabel = \"x\"\n",
            "bla.lines[0].aor",
            "missing",
        ),
        (
            "[[bla.lines]]\naor = 2000\n",
            "bla.lines[0].aor",
            "invalid type",
        ),
        ("[bla]\nline = []\n", "bla.line", "unknown field"),
        (
            "[[presence.profiles]]\nname = \"x\"\nbla_subscribe = \"yes\"\n",
            "presence.profiles[0].bla_subscribe",
            "invalid type",
        ),
    ] {
        let e = Config::from_toml(&format!("{head}{toml}"), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("key `{key}`")) && e.contains(says) && e.contains("; fix: "),
            "{toml}: {e}"
        );
    }
}

/// A member or a line user that is nobody (neither in `[[users]]` nor in the users file for
/// our realm) is warned about, naming the key and the fix; users from the file count.
#[test]
fn bla_warns_of_members_and_lines_nobody_can_log_in_as() {
    let c = Config::from_toml(
        r#"
[server]
domain = "example.com"
[[users]]
name = "1001"
password = "x"
[[bla.lines]]
aor = "2000"
members = ["1001", "1002"]
[[bla.lines]]
aor = "2001"
[[bla.lines]]
aor = "2002"
members = ["1003"]
[[bla.lines]]
aor = "3000"
"#,
        "t.toml",
    )
    .unwrap();
    let file = |name: &str, realm: &str| crate::storage::UserRecord {
        name: name.into(),
        realm: realm.into(),
        ha1_md5: Some("0".repeat(32)),
        ha1_sha256: None,
    };
    let w = c.user_warnings(&[]);
    let about = |w: &[String], s: &str| w.iter().filter(|l| l.contains(s)).count();
    // 1002 and 1003 are nobody; 2001 and 2002 (whose member is nobody) cannot be registered,
    // nor 3000.
    assert_eq!(about(&w, "bla.lines[0].members[1]: user 1002"), 1, "{w:?}");
    assert_eq!(about(&w, "bla.lines[0]: nobody"), 0, "1001 may: {w:?}");
    assert_eq!(about(&w, "bla.lines[1]: nobody may register line 2001"), 1);
    assert_eq!(about(&w, "bla.lines[2].members[0]: user 1003"), 1);
    assert_eq!(about(&w, "bla.lines[2]: nobody may register line 2002"), 1);
    assert_eq!(about(&w, "bla.lines[3]: nobody"), 1);
    assert!(
        w.iter()
            .filter(|l| l.starts_with("bla."))
            .all(|l| l.contains("busylamp users --config FILE add")),
        "{w:?}"
    );
    assert_eq!(w.len(), 5, "{w:?}");
    // Users from the users file count when stored for our realm.
    let w = c.user_warnings(&[
        file("1002", "example.com"),
        file("2001", "example.com"),
        file("1003", "other.test"),
        file("3000", "example.com"),
    ]);
    assert_eq!(about(&w, "user 1002"), 0, "{w:?}");
    assert_eq!(about(&w, "line 2001"), 0, "{w:?}");
    assert_eq!(about(&w, "line 3000"), 0, "{w:?}");
    assert_eq!(about(&w, "bla.lines[2].members[0]: user 1003"), 1, "{w:?}");
    assert_eq!(about(&w, "bla.lines[2]: nobody"), 1, "{w:?}");
    // No user at all: the one "no users" warning, not one per member.
    let mut nobody = c.clone();
    nobody.users.clear();
    let w = nobody.user_warnings(&[]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("no users"), "{w:?}");
    // Open mode challenges nobody: nothing to warn of.
    let mut open = c.clone();
    open.auth.mode = AuthMode::Open;
    assert!(open.user_warnings(&[]).is_empty());
}

/// More members than the registrar lets one AOR hold: valid, but the phones beyond are
/// refused, so check-config says so (in open mode too: the limits hold there as well).
#[test]
fn bla_warns_when_a_line_has_more_members_than_the_registrar_lets_it_register() {
    let members = |n: usize| {
        let names: Vec<String> = (0..n).map(|i| format!("\"{}\"", 1001 + i)).collect();
        format!(
            "[registrar]\nmax_contacts = 4\n[[bla.lines]]\naor = \"2000\"\nmembers = [{}]\n",
            names.join(", ")
        )
    };
    let c = Config::from_toml(&members(4), "t.toml").unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let c = Config::from_toml(&members(5), "t.toml").unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("bla.lines[0].members lists 5 users")
            && w[0].contains("at most 4")
            && w[0].contains("registrar.max_contacts"),
        "{w:?}"
    );
    let c = Config::from_toml(
        &format!("[auth]\nmode = \"open\"\n{}", members(5)),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.warnings().len(), 1);
}

/// Issue 15: the server's threads in the real-time class only when asked, at a priority the
/// kernel accepts (1–99).
#[test]
fn realtime_priority_is_off_by_default_and_checked() {
    assert_eq!(Config::default().server.realtime_priority, 0);
    let c = Config::from_toml("[server]\nrealtime_priority = 10\n", "t.toml").unwrap();
    assert_eq!(c.server.realtime_priority, 10);
    let e = Config::from_toml("[server]\nrealtime_priority = 100\n", "t.toml").unwrap_err();
    let ConfigError::Invalid { key, fix, .. } = &e else {
        panic!("not an invalid value: {e}");
    };
    assert_eq!(key, "server.realtime_priority", "{e}");
    assert!(fix.contains("1 to 99"), "{e}");
}
