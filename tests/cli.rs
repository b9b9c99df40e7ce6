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
            format!("[auth]\ntrusted = [\"192.0.2.20\"]\ntrusted_for = {trusted_for}\n"),
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
