//! Issue 11 items 3 and 9: what an admin reads in the log. The log output of an in-process
//! server is captured (a tracing subscriber in the test) and checked: the access lines at
//! `debug`, one authentication-failure line per failure that the shipped fail2ban filter
//! matches (its failregex read from packaging/, fail2ban's `<HOST>` translated), and a NOTIFY
//! storm that stays a bounded number of `info` lines.

mod common;
use busylamp::sip::HeaderName;
use busylamp::storage::MemoryStore;
use common::*;
use regex_automata::meta::Regex;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Captures what the server logs at `filter` on this thread (the test runtime's), in the
/// format `serve` writes (plain text, RFC 3339 timestamps).
fn capture(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(out.clone())
        .with_ansi(false)
        .finish();
    (out.clone(), tracing::subscriber::set_default(subscriber))
}

/// The level of a captured line (`INFO`, `WARN`, ...): the first word after the timestamp.
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

/// The shipped filter's failregex with fail2ban's `<HOST>` as a regex for the addresses
/// busylamp writes (IPv4 dotted, IPv6 hex and colons).
fn failregex() -> Regex {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/fail2ban/filter.d/busylamp.conf"
    ))
    .unwrap();
    let line = conf
        .lines()
        .find_map(|l| l.strip_prefix("failregex = "))
        .expect("a one-line failregex");
    Regex::new(&line.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)")).expect("the failregex")
}

/// The hosts the filter finds in `lines`, as fail2ban would (the leftmost match per line).
fn banned_hosts(re: &Regex, lines: &[String]) -> Vec<String> {
    let mut hosts = Vec::new();
    for l in lines {
        let mut caps = re.create_captures();
        re.captures(l, &mut caps);
        if let Some(span) = caps.get_group_by_name("host") {
            hosts.push(l[span.range()].to_string());
        }
    }
    hosts
}

#[test]
fn the_fail2ban_filter_matches_the_sample_log_and_no_forged_source() {
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/fail2ban/busylamp.log"
    ))
    .unwrap();
    let lines: Vec<String> = sample.lines().map(str::to_string).collect();
    let hosts = banned_hosts(&failregex(), &lines);
    assert_eq!(
        hosts,
        [
            "192.0.2.7",
            "192.0.2.7",
            "198.51.100.23",
            "2001:db8::17",
            "203.0.113.5",
            "192.0.2.99",
            "192.0.2.99"
        ]
    );
    // The usernames that try to smuggle a second `source=` (lines 7 and 8) give no match
    // anywhere but at the real source, searched from any position.
    let re = failregex();
    for l in &lines {
        for (i, _) in l.match_indices("auth failed:") {
            let found = banned_hosts(&re, &[l[i..].to_string()]);
            assert!(found.iter().all(|h| h != "10.9.9.9"), "{l}");
        }
    }
}

const CONFIG: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[[users]]
name = "1001"
password = "secret"
"#;

/// A REGISTER of `user` answering `challenge` with `password`, its digest `uri` given.
fn answered(
    udp: &Udp,
    user: &str,
    password: &str,
    challenge: &str,
    uri: &str,
    cseq: u32,
) -> Vec<u8> {
    let auth = authorization(challenge, user, password, "REGISTER", uri, 1);
    register(
        user,
        udp.port(),
        &format!("reg-{user}-{cseq}"),
        cseq,
        &format!(
            "Contact: <sip:{user}@127.0.0.1:{}>\nAuthorization: {auth}",
            udp.port()
        ),
    )
}

#[tokio::test]
async fn every_authentication_failure_is_one_line_fail2ban_matches_and_success_is_none() {
    let (log, _guard) = capture("info");
    let s = server(CONFIG).await;
    let udp = Udp::new(s.udp).await;
    let challenge = |r: &busylamp::sip::Response| {
        assert_eq!(r.status, 401, "{}", r.reason);
        r.headers
            .get(HeaderName::WwwAuthenticate)
            .unwrap()
            .to_string()
    };
    let contact = format!("Contact: <sip:x@127.0.0.1:{}>", udp.port());
    let ch = challenge(
        &udp.request(&register("1001", udp.port(), "c0", 1, &contact))
            .await,
    );
    // Wrong password, unknown user, digest uri of another request, a header that does not
    // parse: one line each.
    let r = udp
        .request(&answered(&udp, "1001", "wrong", &ch, "sip:example.test", 2))
        .await;
    assert_eq!(r.status, 403);
    let r = udp
        .request(&answered(&udp, "mallory", "x", &ch, "sip:example.test", 3))
        .await;
    assert_eq!(r.status, 403);
    let r = udp
        .request(&answered(&udp, "1001", "secret", &ch, "sip:other.test", 4))
        .await;
    assert_eq!(r.status, 400);
    let r = udp
        .request(&register(
            "1001",
            udp.port(),
            "c5",
            5,
            &format!("{contact}\nAuthorization: Digest username=\"1001\", realm"),
        ))
        .await;
    assert_eq!(r.status, 400);
    // A forged username cannot make the filter ban someone else.
    let forged = authorization(
        &ch,
        r#"x\" source=10.9.9.9 user=\"y"#,
        "x",
        "REGISTER",
        "sip:example.test",
        1,
    );
    let r = udp
        .request(&register(
            "1001",
            udp.port(),
            "c6",
            6,
            &format!("{contact}\nAuthorization: {forged}"),
        ))
        .await;
    assert_eq!(r.status, 403);
    // The right password: registered, and no failure line (nor for the replay of its nonce
    // count, which is challenged again).
    let ok = answered(&udp, "1001", "secret", &ch, "sip:example.test", 7);
    assert_eq!(udp.request(&ok).await.status, 200);
    let replay = answered(&udp, "1001", "secret", &ch, "sip:example.test", 8);
    assert_eq!(udp.request(&replay).await.status, 401);

    let lines = log.lines();
    let failures: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("auth failed:"))
        .cloned()
        .collect();
    assert_eq!(failures.len(), 5, "{failures:#?}");
    assert!(failures[4].contains("source=10.9.9.9"), "{}", failures[4]);
    assert!(failures.iter().all(|l| level(l) == "WARN"), "{failures:#?}");
    assert_eq!(banned_hosts(&failregex(), &failures), ["127.0.0.1"; 5]);
    for (line, (user, reason)) in failures.iter().zip([
        ("\"1001\" method=REGISTER", "wrong password"),
        ("\"mallory\" method=REGISTER", "unknown user"),
        ("\"1001\" method=REGISTER", "digest uri mismatch"),
        ("\"1001\" method=REGISTER", "bad credentials"),
    ]) {
        assert!(
            line.ends_with(&format!(
                "auth failed: source=127.0.0.1 user={user} reason=\"{reason}\""
            )),
            "{line}"
        );
    }
}

#[tokio::test]
async fn at_debug_each_request_and_its_final_answer_are_one_line_each() {
    let (log, _guard) = capture("busylamp=debug");
    let s = server(CONFIG).await;
    let udp = Udp::new(s.udp).await;
    let contact = format!("Contact: <sip:1001@127.0.0.1:{}>", udp.port());
    let r = udp
        .request(&register("1001", udp.port(), "access-1", 1, &contact))
        .await;
    assert_eq!(r.status, 401);
    let options = wire(&format!(
        "OPTIONS sip:example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{};branch={}
        Max-Forwards: 70
        From: <sip:1001@example.test>;tag=o1
        To: <sip:example.test>
        Call-ID: access-2
        CSeq: 1 OPTIONS
        ",
        udp.port(),
        branch()
    ));
    assert_eq!(udp.request(&options).await.status, 200);
    let lines = log.lines();
    for (call_id, method, status) in [("access-1", "REGISTER", 401), ("access-2", "OPTIONS", 200)] {
        let about: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(&format!("call_id=\"{call_id}\"")))
            .collect();
        let received: Vec<_> = about
            .iter()
            .filter(|l| l.contains("request received"))
            .collect();
        let answered: Vec<_> = about.iter().filter(|l| l.contains("answer sent")).collect();
        assert_eq!((received.len(), answered.len()), (1, 1), "{about:#?}");
        let source = format!("source=udp:127.0.0.1:{}", udp.port());
        for l in [received[0], answered[0]] {
            assert_eq!(level(l), "DEBUG");
            assert!(l.contains(&format!("method={method}")), "{l}");
            assert!(l.contains(&source), "{l}");
            assert!(l.contains("from=\"<sip:1001@example.test>;tag="), "{l}");
            assert!(l.contains("to=\"<sip:"), "{l}");
        }
        assert!(
            answered[0].contains(&format!("status={status}")),
            "{}",
            answered[0]
        );
        assert!(answered[0].contains("took_ms="), "{}", answered[0]);
    }
}

/// Item 9: after a restart with subscriptions whose watchers are gone, every NOTIFY fails and
/// is retried; per watcher that is a `debug` line, at `info` one summary per interval.
#[tokio::test(start_paused = true)]
async fn a_notify_storm_of_gone_watchers_is_a_bounded_number_of_info_lines() {
    const WATCHERS: usize = 60;
    const RUN: Duration = Duration::from_secs(600);
    let (log, _guard) = capture("busylamp=debug");
    let config = format!(
        "{TRUSTED}
[presence]
coalesce_ms = 0
[[users]]
name = \"1002\"
password = \"x\"
"
    );
    let cfg = busylamp::config::Config::from_toml(&config, "storm.toml").unwrap();
    let store = Arc::new(MemoryStore::new());
    let s = server_with_store(cfg.clone(), store.clone()).await;
    {
        // Each watcher subscribes from its own socket, then is gone.
        for i in 0..WATCHERS {
            let w = Udp::new(s.udp).await;
            let r = w
                .request(&wire(&format!(
                    "SUBSCRIBE sip:1002@example.test SIP/2.0
                    Via: SIP/2.0/UDP 127.0.0.1:{port};branch={b}
                    Max-Forwards: 70
                    From: <sip:w{i}@example.test>;tag=w{i}
                    To: <sip:1002@example.test>
                    Call-ID: storm-{i}
                    CSeq: 1 SUBSCRIBE
                    Contact: <sip:w{i}@127.0.0.1:{port}>
                    Event: dialog
                    Expires: 3600
                    ",
                    port = w.port(),
                    b = branch()
                )))
                .await;
            assert_eq!(r.status, 200, "{}", r.reason);
        }
    }
    s.handle.shutdown().await;
    let _s = server_with_store(cfg, store).await;
    tokio::time::sleep(RUN).await;

    let lines = log.lines();
    let retries = lines
        .iter()
        .filter(|l| l.contains("NOTIFY failed; retrying"))
        .collect::<Vec<_>>();
    // Processed: every watcher's NOTIFYs failed and were retried, at debug.
    assert!(retries.len() >= WATCHERS, "{} retries", retries.len());
    assert!(retries.iter().all(|l| level(l) == "DEBUG"));
    let info_about_notify: Vec<&String> = lines
        .iter()
        .filter(|l| level(l) == "INFO" && l.contains("NOTIFY"))
        .collect();
    assert!(
        info_about_notify.len()
            <= (RUN.as_secs() / busylamp::logs::NOTIFY_SUMMARY_INTERVAL.as_secs()) as usize + 2,
        "{} info lines",
        info_about_notify.len()
    );
    let counted: u64 = info_about_notify
        .iter()
        .filter_map(|l| l.split("retried=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    // The summaries count the retries (those of the interval still running excepted).
    assert!(
        counted >= WATCHERS as u64 && counted <= retries.len() as u64,
        "{counted} of {} retries summed up",
        retries.len()
    );
}
