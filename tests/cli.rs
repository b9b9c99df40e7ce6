//! The command line: check-config names the bad key and the fix; users add/list/remove keep
//! only HA1s; serve refuses a database it cannot open with a message naming the path.

mod common;

use std::process::Command;

fn busylamp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_busylamp"))
}

#[test]
fn check_config_accepts_the_valid_fixtures_the_profiles_and_the_packaged_config() {
    let paths = common::shipped_configs();
    assert!(paths.len() >= 5);
    for path in paths {
        let out = busylamp().arg("check-config").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    }
}

#[test]
fn check_config_names_the_key_of_each_invalid_fixture() {
    let mut n = 0;
    for entry in std::fs::read_dir("fixtures/config/invalid").unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# expect:")
            .trim()
            .to_string();
        let out = busylamp().arg("check-config").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        assert!(
            err.contains(&expect),
            "{}: {err:?} should contain {expect:?}",
            path.display()
        );
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        // Every bad value, whether refused while reading (type, enum, URI, address) or by
        // validation afterwards, gets the key path and a fix.
        assert!(
            err.contains("key `") && err.contains("; fix: "),
            "{}: names the key and the fix: {err}",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 20);
    let out = busylamp()
        .arg("check-config")
        .arg("fixtures/config/none.toml")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

/// A config that trusts a network for REGISTER, SUBSCRIBE or PUBLISH is valid, but
/// check-config says on its own line, for each, what any host there may then do.
#[test]
fn check_config_warns_once_per_purpose_a_trusted_network_skips_digest_for() {
    let dir = std::env::temp_dir().join(format!("busylamp-cli-trusted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, trusted_for: &str| {
        let cfg = dir.join(name);
        std::fs::write(
            &cfg,
            // One user and a data dir of its own: the only warnings are about trust.
            format!(
                "[server]\ndata_dir = \"{}\"\n[auth]\ntrusted = [\"192.0.2.20\"]\ntrusted_for = {trusted_for}\n[[users]]\nname = \"1001\"\npassword = \"pw\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let out = busylamp().arg("check-config").arg(&cfg).output().unwrap();
        assert!(out.status.success(), "{name}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = check(
        "all.toml",
        r#"["calls", "register", "subscribe", "publish"]"#,
    );
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 3, "{err}");
    for (line, purpose) in warnings.iter().zip(["register", "subscribe", "publish"]) {
        assert!(
            line.contains(&format!("auth.trusted_for names \"{purpose}\""))
                && line.contains("192.0.2.20"),
            "{line}"
        );
    }
    assert_eq!(check("calls.toml", r#"["calls"]"#), "");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 11: SHA-256 offered to every phone locks out the phones that read only the first
/// challenge or know MD5 only: check-config says so with the fix; per profile it is quiet.
#[test]
fn check_config_warns_when_sha256_is_offered_to_every_phone() {
    let dir = std::env::temp_dir().join(format!("busylamp-cli-sha256-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, toml: &str| {
        let cfg = dir.join(name);
        std::fs::write(&cfg, toml).unwrap();
        let out = busylamp().arg("check-config").arg(&cfg).output().unwrap();
        assert!(out.status.success(), "{name}");
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("warning:") && l.contains("SHA-256"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let w = check("all.toml", "[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("auth.algorithms offers SHA-256 to every phone")
            && w[0].contains("[[auth.profiles]]"),
        "{w:?}"
    );
    let profile = "[[auth.profiles]]\nname = \"linphone\"\nuser_agent = \"Linphone\"\nalgorithms = [\"SHA-256\", \"MD5\"]\n";
    assert!(check("profile.toml", profile).is_empty());
    assert!(check("default.toml", "").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve` logs the same warnings at start.
#[tokio::test]
async fn serve_warns_of_each_purpose_a_trusted_network_skips_digest_for() {
    // The harness's binary config trusts loopback for everything.
    let server = common::binary::Busylamp::new("trusted-warnings", "");
    server.wait_ready().await;
    let log = server.log_text();
    for purpose in ["register", "subscribe", "publish"] {
        assert!(
            log.contains(&format!("auth.trusted_for names \"{purpose}\"")),
            "{purpose}: {log}"
        );
    }
}

#[test]
fn users_add_list_remove_store_only_ha1() {
    let dir = std::env::temp_dir().join(format!("busylamp-cli-users-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomain = \"example.test\"\ndata_dir = \"{}\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = busylamp()
        .args(["users", "--config"])
        .arg(&cfg)
        .args(["add", "1001", "--password", "hunter2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Password from standard input.
    let mut child = busylamp()
        .args(["users", "--config"])
        .arg(&cfg)
        .args(["add", "1002"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"pw1002\n").unwrap();
    assert!(child.wait().unwrap().success());
    let stored = std::fs::read_to_string(dir.join("users")).unwrap();
    assert!(
        !stored.contains("hunter2") && !stored.contains("pw1002"),
        "no cleartext: {stored}"
    );
    let md5 = busylamp::sip::digest::ha1(
        busylamp::sip::digest::Algorithm::Md5,
        "1001",
        "example.test",
        "hunter2",
    );
    assert!(stored.contains(&md5));
    let out = busylamp()
        .args(["users", "--config"])
        .arg(&cfg)
        .arg("list")
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("1001\texample.test\tMD5,SHA-256") && list.contains("1002"),
        "{list}"
    );
    let out = busylamp()
        .args(["users", "--config"])
        .arg(&cfg)
        .args(["remove", "1001"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = busylamp()
        .args(["users", "--config"])
        .arg(&cfg)
        .args(["remove", "1001"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_with_an_unusable_data_dir_stops_with_the_path_and_the_fix() {
    let dir = std::env::temp_dir().join(format!("busylamp-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"udp:127.0.0.1:0\"]\ndata_dir = \"{}\"\n",
            blocker.display()
        ),
    )
    .unwrap();
    let out = busylamp()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&blocker.display().to_string()) && err.contains("writable"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh temp dir with a config whose data dir is inside it (`extra` appended).
fn config_in_temp_dir(name: &str, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("busylamp-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("busylamp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ndomain = \"example.test\"\ndata_dir = \"{}\"\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    (dir, cfg)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A digest config without any user refuses every REGISTER: check-config says so with the
/// fix, and stops saying so once `users add` gave the users file one (counted too).
#[test]
fn check_config_warns_of_no_users_with_the_fix_and_counts_the_users_file() {
    let (dir, cfg) = config_in_temp_dir("no-users", "");
    let (ok, out, err) = run(busylamp().arg("check-config").arg(&cfg));
    assert!(ok, "{err}");
    assert!(out.contains("0 user(s) in the config, 0 in"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("no users") && warnings[0].contains("busylamp users add"),
        "{err}"
    );
    let (ok, _, err) = run(busylamp()
        .args(["users", "add", "1001", "--password", "pw", "--config"])
        .arg(&cfg));
    assert!(ok, "{err}");
    let (ok, out, err) = run(busylamp().arg("check-config").arg(&cfg));
    assert!(ok, "{err}");
    assert!(out.contains("0 user(s) in the config, 1 in"), "{out}");
    assert_eq!(err, "", "no warning once the users file has a user");
    // A user stored for another realm (added without this config) cannot log in: said too.
    let (ok, _, err) = run(busylamp().arg("check-config").arg({
        std::fs::write(
            &cfg,
            std::fs::read_to_string(&cfg)
                .unwrap()
                .replace("example.test", "other.test"),
        )
        .unwrap();
        &cfg
    }));
    assert!(ok);
    assert!(
        err.contains("no users")
            && err.contains("user 1001 in the users file was stored for realm \"example.test\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12: a shared line's member that is nobody is named by its key with the fix, and
/// stops being named once `users add` stored it in the users file; a member list the
/// registrar cannot hold is named too.
#[test]
fn check_config_names_shared_line_members_nobody_can_log_in_as() {
    let (dir, cfg) = config_in_temp_dir(
        "bla-members",
        "[[bla.lines]]\naor = \"2000\"\nlabel = \"Main line\"\nmembers = [\"1001\", \"1002\"]\n",
    );
    let (ok, _, err) = run(busylamp()
        .args(["users", "add", "1001", "--password", "pw", "--config"])
        .arg(&cfg));
    assert!(ok, "{err}");
    let (ok, out, err) = run(busylamp().arg("check-config").arg(&cfg));
    assert!(ok, "{err}");
    assert!(out.contains("OK"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("bla.lines[0].members[1]: user 1002")
            && warnings[0].contains("busylamp users --config FILE add 1002"),
        "{err}"
    );
    let (ok, _, err) = run(busylamp()
        .args(["users", "add", "1002", "--password", "pw", "--config"])
        .arg(&cfg));
    assert!(ok, "{err}");
    let (ok, _, err) = run(busylamp().arg("check-config").arg(&cfg));
    assert!(ok, "{err}");
    assert_eq!(
        err, "",
        "every member can log in (the line's own user 2000 need not)"
    );

    // Five members, four contacts per AOR: valid, but the fifth phone would be refused.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "members = [\"1001\", \"1002\"]",
            "members = [\"1001\", \"1002\", \"1003\", \"1004\", \"1005\"]\n[registrar]\nmax_contacts = 4",
        ),
    )
    .unwrap();
    let (ok, _, err) = run(busylamp().arg("check-config").arg(&cfg));
    assert!(ok, "{err}");
    assert!(
        err.contains("bla.lines[0].members lists 5 users") && err.contains("at most 4"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve` logs the no-users warning at start; a user the config's `[[users]]` shadows is
/// named at `users add` and, once per shadowed user, at the next start.
#[tokio::test]
async fn serve_warns_of_no_users_and_of_each_user_the_config_shadows() {
    let mut server = common::binary::Busylamp::new("no-users", "");
    server.wait_ready().await;
    let log = server.log_text();
    assert!(
        log.contains("no users: every REGISTER will be refused")
            && log.contains("busylamp users add"),
        "{log}"
    );
    server.kill9();

    let mut server = common::binary::Busylamp::new(
        "shadowed",
        "[[users]]\nname = \"1001\"\npassword = \"pw\"\n",
    );
    server.wait_ready().await;
    assert!(
        !server.log_text().contains("no users"),
        "{}",
        server.log_text()
    );
    server.kill9();
    let users = |name: &str| {
        run(busylamp()
            .args(["users", "add", name, "--password", "other", "--config"])
            .arg(server.config_path()))
    };
    let (ok, _, err) = users("1001");
    assert!(ok, "{err}");
    assert!(
        err.contains("user 1001 is also defined in [[users]] of")
            && err.contains("the users file's entry is ignored"),
        "{err}"
    );
    let (ok, _, err) = users("1002");
    assert!(ok && err.is_empty(), "{err}");
    server.start();
    server.wait_ready().await;
    let log = server.log_text();
    assert_eq!(
        log.matches("is also defined in [[users]]").count(),
        1,
        "{log}"
    );
    assert!(log.contains("user 1001 is also defined"), "{log}");
}

/// Without --config, admin commands read the packaged config (here: BUSYLAMP_CONFIG names
/// it), so `users add` stores the user for that config's realm in its data directory.
#[test]
fn admin_commands_without_config_read_the_default_config() {
    let (dir, cfg) = config_in_temp_dir("default-config", "");
    let (ok, out, err) = run(busylamp().env("BUSYLAMP_CONFIG", &cfg).args([
        "users",
        "add",
        "1001",
        "--password",
        "pw",
    ]));
    assert!(ok, "{err}");
    assert!(
        out.contains("realm example.test") && out.contains(&cfg.display().to_string()),
        "{out}"
    );
    let stored = std::fs::read_to_string(dir.join("data/users")).unwrap();
    assert!(stored.contains("1001:example.test:"), "{stored}");
    let (ok, out, _) = run(busylamp()
        .env("BUSYLAMP_CONFIG", &cfg)
        .args(["users", "list"]));
    assert!(ok && out.contains("1001\texample.test"), "{out}");
    let (ok, out, err) = run(busylamp().env("BUSYLAMP_CONFIG", &cfg).arg("check-config"));
    assert!(ok, "{err}");
    assert!(
        out.contains(&cfg.display().to_string()) && out.contains("1 in"),
        "{out}"
    );
    // A default that does not exist: said, and check-config has nothing to check.
    let missing = dir.join("missing.toml");
    let (ok, _, err) = run(busylamp()
        .env("BUSYLAMP_CONFIG", &missing)
        .arg("check-config"));
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every admin command and option says what it is for, and the man page is generated from
/// the same text.
#[test]
fn users_commands_and_config_have_help_texts() {
    let (ok, out, _) = run(busylamp().args(["users", "--help"]));
    assert!(ok);
    for line in ["add ", "remove ", "list ", "--config"] {
        let described = out
            .lines()
            .find(|l| l.trim_start().starts_with(line) || l.contains(&format!(" {line}")))
            .unwrap_or_else(|| panic!("{line} in {out}"));
        assert!(
            described.split_whitespace().count() > 2,
            "{line} has a help text: {out}"
        );
    }
    let (ok, out, _) = run(busylamp().args(["users", "add", "--help"]));
    assert!(
        ok && out.contains("SIP user name") && out.contains("standard input"),
        "{out}"
    );
    let (ok, out, _) = run(busylamp().args(["serve", "--help"]));
    assert!(ok && out.contains("/etc/busylamp/busylamp.toml"), "{out}");
}

/// The man pages the .deb ships (packaging/man) are what `busylamp man` makes of the same
/// help texts: regenerate them with `cargo run -- man packaging/man` when this fails.
#[test]
fn the_packaged_man_pages_are_generated_from_the_current_help_texts() {
    let dir = std::env::temp_dir().join(format!("busylamp-cli-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, _, err) = run(busylamp().arg("man").arg(&dir));
    assert!(ok, "{err}");
    let pages = |d: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".1"))
            .collect();
        names.sort();
        names
    };
    let fresh = pages(&dir);
    for page in [
        "busylamp.1",
        "busylamp-check-config.1",
        "busylamp-users-add.1",
    ] {
        assert!(fresh.contains(&page.to_string()), "{fresh:?}");
    }
    let shipped = std::path::Path::new("packaging/man");
    assert_eq!(
        fresh,
        pages(shipped),
        "run `cargo run -- man packaging/man`"
    );
    for name in &fresh {
        assert_eq!(
            std::fs::read_to_string(dir.join(name)).unwrap(),
            std::fs::read_to_string(shipped.join(name)).unwrap(),
            "packaging/man/{name} is stale: run `cargo run -- man packaging/man`"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A control command against `server` (its config), with `args` after the command name.
fn ctl(
    server: &common::binary::Busylamp,
    command: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let out = busylamp()
        .arg(command)
        .args(args)
        .arg("--config")
        .arg(server.config_path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The control commands against a running `busylamp serve`: tables for people, `--json` for
/// scripts, exit 1 with the server's message for an error it answers, 2 for usage.
#[tokio::test]
async fn control_commands_ask_the_running_server() {
    let server = common::binary::Busylamp::new("ctl-cli", "");
    server.wait_ready().await;
    let ua = common::Udp::new(server.addr).await;
    let contact = format!("Contact: <sip:1001@127.0.0.1:{}>\nExpires: 600", ua.port());
    let r = ua
        .request(&common::register("1001", ua.port(), "cli-reg", 1, &contact))
        .await;
    assert_eq!(r.status, 200);

    let (code, out, err) = ctl(&server, "status", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("busylamp 0.1.0 (control API 1), up "),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["bindings", "1"])),
        "{out}"
    );
    let (code, out, err) = ctl(&server, "status", &["--json"]);
    assert_eq!(code, Some(0), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(status["api"], 1);
    assert_eq!(status["counts"]["aors"], 1, "{status}");

    let (code, out, err) = ctl(&server, "registrations", &[]);
    assert_eq!(code, Some(0), "{err}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("AOR "), "{out}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("sip:1001@example.test")
            && row.contains("in ")
            && row.contains("busylamp-test"),
        "{out}"
    );
    let (code, out, _) = ctl(&server, "registrations", &["--json", "--filter", "1001"]);
    assert_eq!(code, Some(0));
    let regs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(regs["total"], 1, "{regs}");
    assert_eq!(regs["items"][0]["aor"], "sip:1001@example.test", "{regs}");
    assert!(
        regs["items"][0]["contacts"][0]["contact"]
            .as_str()
            .unwrap()
            .contains("1001@127.0.0.1"),
        "{regs}"
    );
    let (code, out, _) = ctl(&server, "registrations", &["--filter", "nobody"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("(none)"), "{out}");

    for command in ["calls", "watchers", "lines"] {
        let (code, out, err) = ctl(&server, command, &[]);
        assert_eq!(code, Some(0), "{command}: {err}");
        assert!(out.contains("(none)"), "{command}: {out}");
        let (code, out, err) = ctl(&server, command, &["--json"]);
        assert_eq!(code, Some(0), "{command}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["total"], 0, "{command}: {v}");
    }

    // The pua_mi job and a standing rule.
    let pidf = r#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:1001@example.test"><tuple id="t"><status><basic>open</basic></status></tuple></presence>"#;
    let (code, out, err) = ctl(
        &server,
        "publish",
        &["sip:1001@example.test", "--body", pidf, "--expires", "600"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("published: id "), "{out}");
    let (code, out, err) = ctl(
        &server,
        "approve",
        &[
            "sip:1002@example.test",
            "sip:1001@example.test",
            "--event",
            "presence",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("approved"), "{out}");
    let (code, out, err) = ctl(&server, "ctl", &["rules"]);
    assert_eq!(code, Some(0), "{err}");
    let rules: serde_json::Value = serde_json::from_str(&out).expect("ctl prints JSON");
    assert!(
        rules.to_string().contains("sip:1002@example.test"),
        "{rules}"
    );
    let (code, out, err) = ctl(&server, "ctl", &["presentities", r#"{"filter":"1001"}"#]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("sip:1001@example.test"), "{out}");

    // A subscription of the presence client shows among the watchers.
    let (code, out, err) = ctl(
        &server,
        "subscribe",
        &[
            "sip:1002@example.test",
            "sip:1001@example.test",
            "--expires",
            "600",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("subscribed: id "), "{out}");
    let id = out.trim().rsplit(' ').next().unwrap().to_string();
    let (code, out, err) = ctl(
        &server,
        "ctl",
        &[
            "unsubscribe",
            &format!("{{\"id\":{}}}", serde_json::json!(id)),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // A bad publish: the server's message, exit 1.
    let (code, _, err) = ctl(
        &server,
        "publish",
        &["sip:1001@example.test", "--body", "<not-pidf"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("-32602"),
        "{err}"
    );
    let (code, _, err) = ctl(&server, "ctl", &["no_such_method"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no_such_method"), "{err}");
    // Usage: exit 2.
    let (code, _, err) = ctl(&server, "ctl", &["status", "[1]"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = ctl(&server, "ctl", &["status", "{"]);
    assert_eq!(code, Some(2), "{err}");
    let out = busylamp().args(["status", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    // `ctl follow` prints the stream, one JSON line per notification.
    let mut follow = busylamp()
        .args(["ctl", "follow", "--config"])
        .arg(server.config_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let snap: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(snap["method"], "snapshot", "{line}");
    assert_eq!(
        snap["params"]["registrations"][0]["aor"], "sip:1001@example.test",
        "{line}"
    );
    let r = ua
        .request(&common::register("1001", ua.port(), "cli-reg", 2, &contact))
        .await;
    assert_eq!(r.status, 200);
    let change = loop {
        line.clear();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["params"]["kind"] == "registration" {
            break v;
        }
    };
    assert_eq!(change["method"], "change");
    assert_eq!(change["params"]["change"], "refreshed", "{change}");
    follow.kill().unwrap();
    let _ = follow.wait();
}

/// No server: exit 3 and a message that says it is not running and names the socket; the
/// same for a socket left by a server that died, a path that is no socket, and one the user
/// may not open.
#[test]
fn control_commands_say_why_the_server_cannot_be_reached() {
    let (dir, cfg) = config_in_temp_dir("ctl-down", "");
    let socket = dir.join("data/control.sock");
    let (code, out, err) = {
        let out = busylamp()
            .args(["status", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        err.contains("not running") && err.contains(&socket.display().to_string()),
        "{err}"
    );
    // Without --config, the default config (BUSYLAMP_CONFIG here) names the socket.
    let out = busylamp()
        .env("BUSYLAMP_CONFIG", &cfg)
        .arg("watchers")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&socket.display().to_string()));

    let run_socket = |path: &std::path::Path| {
        let out = busylamp()
            .args(["registrations", "--socket"])
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::create_dir_all(dir.join("data")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (code, err) = run_socket(&socket);
    assert_eq!(code, Some(3));
    assert!(
        err.contains("not running") && err.contains("nothing answers"),
        "{err}"
    );
    let (code, err) = run_socket(&cfg);
    assert_eq!(code, Some(3));
    assert!(
        err.contains("is not a socket") && err.contains(&cfg.display().to_string()),
        "{err}"
    );

    // Permission denied: a live socket the user may not open. Root opens anything, so as
    // root the command runs as nobody (setpriv); otherwise the socket's directory is closed.
    let closed = dir.join("closed");
    std::fs::create_dir_all(&closed).unwrap();
    let live = closed.join("c.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let out = if root {
        std::fs::set_permissions(&live, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .unwrap();
        match Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_busylamp"))
            .args(["status", "--socket"])
            .arg(&live)
            .output()
        {
            Ok(out) => Some(out),
            Err(e) => {
                eprintln!("skipped the permission case: no setpriv ({e})");
                None
            }
        }
    } else {
        std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        Some(
            busylamp()
                .args(["status", "--socket"])
                .arg(&live)
                .output()
                .unwrap(),
        )
    };
    if let Some(out) = out {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains("permission denied on") && err.contains(&live.display().to_string()),
            "{err}"
        );
        assert!(err.contains("group"), "says what to do: {err}");
    }
    let _ = std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The control commands keep their names and flags (scripts use them), each says what it is
/// for, and the help gives the exit codes.
#[test]
fn control_commands_have_help_texts_and_the_exit_codes() {
    let (ok, out, _) = run(busylamp().arg("--help"));
    assert!(ok);
    for command in [
        "status",
        "registrations",
        "calls",
        "watchers",
        "lines",
        "publish",
        "subscribe",
        "approve",
        "ctl",
    ] {
        let described = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("{command} in {out}"));
        assert!(described.split_whitespace().count() > 3, "{command}: {out}");
        let (ok, help, _) = run(busylamp().args([command, "--help"]));
        assert!(ok, "{command}");
        for flag in ["--config", "--socket", "--json"] {
            assert!(help.contains(flag), "{command} {flag}: {help}");
        }
    }
    assert!(
        out.contains("3 the server cannot be reached")
            && out.contains("1 the server answered an error"),
        "{out}"
    );
}
