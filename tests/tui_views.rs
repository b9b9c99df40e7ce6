//! The dashboard's views rendered from fixed models into ratatui's TestBackend, at 80x24 and
//! 200x50, compared with the text snapshots in tests/snapshots/ (`tui_*.txt`). After a
//! deliberate change of a view: `UPDATE_SNAPSHOTS=1 cargo test --test tui_views`, then read
//! the diff of the snapshots.

use busylamp::tui::model::Model;
use busylamp::tui::view::{self, buffer_text, Confirm, Tab, Ui};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use serde_json::json;
use std::path::PathBuf;

/// 2027-01-15 09:20:00 UTC.
const T: u64 = 1_800_000_000_000;

fn office() -> Model {
    let s = T / 1000;
    let mut m = Model::new();
    m.apply(
        "snapshot",
        &json!({
            "seq": 0,
            "status": {"api": 1, "version": "0.1.0", "uptime": 93_784, "listen": ["udp:0.0.0.0:5060"]},
            "registrations": [
                {"aor": "sip:1001@example.com", "contacts": [
                    {"contact": "sip:1001@192.0.2.11:5060", "expires": s + 1800, "user_agent": "Yealink SIP-T46U 108.86",
                     "flow": "udp:192.0.2.11:5060", "q": 1.0}]},
                {"aor": "sip:1002@example.com", "contacts": [
                    {"contact": "sip:1002@192.0.2.12:5060;transport=tcp", "expires": s + 600, "user_agent": "Polycom VVX 450",
                     "flow": "tcp:192.0.2.12:40112", "q": 1.0},
                    {"contact": "sip:1002@192.0.2.22:5060", "expires": s + 3000, "user_agent": "Polycom VVX 250",
                     "flow": "udp:192.0.2.22:5060", "q": 0.5}]},
                {"aor": "sip:1003@example.com", "contacts": [
                    {"contact": "sip:1003@192.0.2.13:5060", "expires": s + 900, "user_agent": "Snom D785",
                     "flow": "udp:192.0.2.13:5060", "q": 1.0}]},
                {"aor": "sip:1005@example.com", "contacts": [
                    {"contact": "sip:1005@192.0.2.15:5060", "expires": s + 900, "user_agent": "Grandstream GRP2614",
                     "flow": "udp:192.0.2.15:5060", "q": 1.0}]}
            ],
            "calls": [
                {"call_id": "a84b4c76e66710", "caller": "sip:1001@example.com", "callee": "sip:1002@example.com",
                 "state": "confirmed", "since": s - 125, "confirmed": s - 118, "branches": [
                    {"target": "sip:1002@192.0.2.12:5060;transport=tcp", "state": "confirmed", "code": 200}]},
                {"call_id": "f81d4fae-7dec-11d0", "caller": "sip:1005@example.com", "callee": "sip:1003@example.com",
                 "state": "early", "since": s - 4, "branches": [
                    {"target": "sip:1003@192.0.2.13:5060", "state": "early", "code": 180}]}
            ],
            "subscriptions": [
                {"kind": "watcher", "watcher": "sip:1001@example.com", "presentity": "sip:1002@example.com",
                 "package": "dialog", "state": "active", "expires": s + 3400, "cseq": 14, "version": 13,
                 "failures": 0, "user_agent": "Yealink SIP-T46U", "last_answer": 200},
                {"kind": "watcher", "watcher": "sip:1003@example.com", "presentity": "sip:1002@example.com",
                 "package": "dialog", "state": "active", "expires": s + 1200, "cseq": 9, "version": 8,
                 "failures": 2, "user_agent": "Snom D785", "last_answer": 408},
                {"kind": "watcher", "watcher": "sip:1002@example.com", "presentity": "sip:1001@example.com",
                 "package": "presence", "state": "active", "expires": s + 500, "cseq": 3, "version": 2,
                 "failures": 0, "user_agent": "Polycom VVX 450", "last_answer": 200},
                {"kind": "watcher", "watcher": "sip:1009@partner.example.net", "presentity": "sip:1001@example.com",
                 "package": "presence", "state": "pending", "expires": s + 3600, "cseq": 1, "version": 0,
                 "failures": 0, "user_agent": "Zoiper 5", "last_answer": 200}
            ],
            "lines": [
                {"aor": "sip:2000@example.com", "label": "Reception", "appearances": [
                    {"index": 1, "state": "active", "phone": "sip:1001@example.com", "contact": null,
                     "peer": "sip:+15551234567@example.com", "since": s - 61},
                    {"index": 2, "state": "held", "phone": "sip:1005@example.com", "contact": null,
                     "peer": "sip:1003@example.com", "since": s - 20},
                    {"index": 3, "state": "free", "phone": null, "contact": null, "peer": null, "since": s - 3600}],
                 "phones": [
                    {"phone": "sip:1001@example.com", "contact": "sip:1001@192.0.2.11:5060", "user_agent": "Yealink", "subscribed": true},
                    {"phone": "sip:1005@example.com", "contact": "sip:1005@192.0.2.15:5060", "user_agent": "Grandstream", "subscribed": true}]}
            ],
            "mwi": [
                {"mailbox": "sip:1001@example.com", "waiting": true, "new": 3, "old": 1},
                {"mailbox": "sip:1002@example.com", "waiting": false, "new": 0, "old": 4}
            ]
        }),
        T - 60_000,
    );
    // A user seen in the log who has since gone: listed as offline.
    let reg = |change: &str, at: u64| {
        json!({"seq": at, "kind": "registration", "change": change, "aor": "sip:1004@example.com",
               "contact": "sip:1004@192.0.2.14:5060", "user_agent": "Cisco SPA504G"})
    };
    m.apply("change", &reg("registered", 1), T - 50_000);
    m.apply(
        "change",
        &json!({"seq": 2, "kind": "subscription", "change": "created", "reason": null,
            "presentity": "sip:1001@example.com", "event": "presence", "watcher": "sip:1009@partner.example.net"}),
        T - 40_000,
    );
    m.apply(
        "change",
        &json!({"seq": 3, "kind": "call", "call_id": "f81d4fae-7dec-11d0", "caller": "sip:1005@example.com",
            "callee": "sip:1003@example.com", "state": "early"}),
        T - 4_000,
    );
    m.apply(
        "change",
        &json!({"seq": 4, "kind": "subscription", "change": "terminated", "reason": "timeout",
            "presentity": "sip:1005@example.com", "event": "dialog", "watcher": "sip:1004@example.com"}),
        T - 3_000,
    );
    m.apply("change", &reg("expired", 5), T - 2_000);
    m.apply(
        "change",
        &json!({"seq": 6, "kind": "notify_failed", "presentity": "sip:1002@example.com",
            "event": "dialog", "watcher": "sip:1001@example.com", "status": 408, "gave_up": false}),
        T - 1_000,
    );
    // Two `status` polls 2 s apart, 12 NOTIFYs between: the header shows 6.0 NOTIFY/s.
    m.notify_sample(&json!({"notifies": {"sent": 100}}), T - 4_000);
    m.notify_sample(&json!({"notifies": {"sent": 112}}), T - 2_000);
    m
}

fn render(m: &Model, ui: &Ui, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::draw(f, m, ui)).unwrap();
    buffer_text(t.backend().buffer())
}

/// Compares with tests/snapshots/tui_NAME.txt (written when missing or UPDATE_SNAPSHOTS=1).
fn snapshot(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("tui_{name}.txt"));
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    match std::fs::read_to_string(&path) {
        Ok(expected) if !update => {
            if expected != text {
                let new = path.with_extension("txt.new");
                std::fs::write(&new, text).unwrap();
                panic!(
                    "view {name} differs from {}:\n--- expected\n{expected}\n--- got (in {})\n{text}",
                    path.display(),
                    new.display()
                );
            }
        }
        _ => {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
    }
}

fn ui(tab: Tab) -> Ui {
    Ui {
        tab,
        now_ms: T,
        ..Ui::default()
    }
}

#[test]
fn every_view_at_80x24_and_200x50() {
    let m = office();
    for tab in Tab::ALL {
        for (w, h) in [(80, 24), (200, 50)] {
            let text = render(&m, &ui(tab), w, h);
            snapshot(&format!("{}_{w}x{h}", tab.title().to_lowercase()), &text);
        }
    }
}

#[test]
fn the_lines_view_shows_every_lamp_word_and_the_appearances() {
    let m = office();
    let text = render(&m, &ui(Tab::Lines), 200, 50);
    let row = |ext: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(ext))
            .unwrap_or_else(|| panic!("no row {ext}:\n{text}"))
            .to_string()
    };
    assert!(row("1001 ").contains("talking"), "{}", row("1001 "));
    assert!(row("1002 ").contains("talking"));
    assert!(row("1002 ").contains("2 tcp+udp Polycom VVX 450"));
    assert!(row("1003 ").contains("ringing"));
    assert!(row("1004 ").contains("offline") && row("1004 ").contains("not registered"));
    assert!(row("2000 ").contains("Reception [shared]") && row("2000 ").contains("talking"));
    assert!(row("└ #2").contains("held") && row("└ #2").contains(" 1003 "));
    assert!(row("└ #3").contains("idle"));
}

#[test]
fn the_header_says_reconnecting_when_the_stream_is_lost() {
    let mut m = office();
    m.disconnected("the server closed the connection".into(), T - 1000);
    let text = render(&m, &ui(Tab::Lines), 80, 24);
    assert!(
        text.lines().next().unwrap().contains("reconnecting..."),
        "{text}"
    );
    assert!(text.contains("(stale)"));
    snapshot("reconnecting_80x24", &text);
}

#[test]
fn filter_detail_help_and_confirmation() {
    let m = office();
    let mut u = ui(Tab::Events);
    u.filter = "1004".into();
    let text = render(&m, &u, 80, 24);
    assert!(text.contains("Events: 1-3 of 3"), "{text}");
    snapshot("events_filtered_80x24", &text);

    let mut u = ui(Tab::Lines);
    u.selected[0] = 1; // 1002
    u.detail = true;
    let text = render(&m, &u, 200, 50);
    assert!(
        text.contains("phone sip:1002@192.0.2.22:5060 (udp, Polycom VVX 250, expires in 3000s)")
    );
    snapshot("lines_detail_200x50", &text);

    let text = render(
        &m,
        &Ui {
            help: true,
            ..ui(Tab::Lines)
        },
        80,
        24,
    );
    assert!(text.contains("this help"));
    snapshot("help_80x24", &text);

    let mut u = ui(Tab::Watchers);
    u.confirm = Some(Confirm {
        approve: true,
        presentity: "sip:1001@example.com".into(),
        watcher: "sip:1009@partner.example.net".into(),
        package: "presence".into(),
    });
    let text = render(&m, &u, 80, 24);
    assert!(
        text.contains("Approve 1009@partner.example.net watching 1001@example.com (presence)? y")
    );
    snapshot("watchers_confirm_80x24", &text);
}

#[test]
fn only_the_visible_rows_are_drawn_and_the_selection_scrolls_into_view() {
    let mut m = Model::new();
    let regs: Vec<_> = (0..5000)
        .map(|i| {
            json!({"aor": format!("sip:{}@example.com", 10_000 + i), "contacts": [
            {"contact": format!("sip:{}@192.0.2.1:5060", 10_000 + i), "expires": T / 1000 + 60,
             "user_agent": "phone", "flow": "udp:192.0.2.1:5060"}]})
        })
        .collect();
    m.apply(
        "snapshot",
        &json!({"seq": 0, "status": {"version": "0.1.0", "uptime": 1}, "registrations": regs,
                "calls": [], "subscriptions": [], "lines": []}),
        T,
    );
    let mut u = ui(Tab::Lines);
    u.selected[0] = 4999;
    let started = std::time::Instant::now();
    let text = render(&m, &u, 80, 24);
    assert!(text.contains("Lines: 4983-5000 of 5000"), "{text}");
    assert!(text.contains("14999"));
    assert!(!text.contains("14981 "));
    // Generous for a debug build on a busy machine; the release figure is in the README.
    assert!(
        started.elapsed().as_millis() < 1000,
        "{:?}",
        started.elapsed()
    );
}
