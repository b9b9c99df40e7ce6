//! `busylamp tui` end to end: the real server (tests/common/binary.rs) and the real dashboard
//! in a pseudo-terminal (a tmux session on a tmux server of its own, read with
//! `capture-pane`). Two scripted phones call through the proxy and the callee's row goes
//! ringing → talking → idle on the screen; the server is killed and the header says
//! "reconnecting..."; it restarts and the rows come back; Ctrl-C quits and restores the
//! terminal. A user that never registered is listed `offline`. `q`, Ctrl-C and a panic (a
//! debug-only test hook) each give the terminal back: normal screen, cursor, mouse reporting
//! off (read from tmux's pane flags). Loopback only; every wait is bounded. Skipped (with a
//! message) where tmux is not installed.

mod common;

use common::binary::Busylamp;
use common::phone::Phone;
use common::ua::Ua;
use common::{branch, wire};
use std::process::Command;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[presence]
coalesce_ms = 0
[[users]]
name = "1001"
password = "a"
[[users]]
name = "1002"
password = "b"
[[users]]
name = "1003"
password = "c"
"#;

/// A tmux server of our own (`-L`), killed on every path.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn start(name: &str, command: &str) -> Tmux {
        let t = Tmux {
            socket: format!("busylamp-{name}-{}", std::process::id()),
        };
        let ok = Command::new("tmux")
            .args(["-L", &t.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "120", "-y", "30", "-s", "tui", command])
            .env("TERM", "xterm-256color")
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux new-session failed");
        t
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "tui"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "tui", keys])
            .status();
    }

    /// A tmux format of the pane (`#{alternate_on}`, `#{cursor_flag}`...): what the program in
    /// it has asked of the terminal.
    fn format(&self, format: &str) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "display", "-p", "-t", "tui", format])
            .output()
            .expect("tmux display");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The terminal modes a full-screen program changes: alternate screen, cursor shown, and
    /// every mouse reporting mode (crossterm's EnableMouseCapture sets 1000, 1002, 1003, 1006
    /// and 1015).
    fn modes(&self) -> Modes {
        let v = self.format(
            "#{alternate_on} #{cursor_flag} #{mouse_any_flag} #{mouse_all_flag} \
             #{mouse_button_flag} #{mouse_standard_flag} #{mouse_sgr_flag}",
        );
        let f: Vec<bool> = v.split_whitespace().map(|x| x == "1").collect();
        assert_eq!(f.len(), 7, "tmux display said {v:?}");
        Modes {
            alternate: f[0],
            cursor: f[1],
            mouse: f[2..].iter().any(|x| *x),
        }
    }

    /// Polls the screen every 20 ms until `ok` holds, for at most `within`; returns how long
    /// it took.
    async fn until(&self, what: &str, within: Duration, ok: impl Fn(&str) -> bool) -> Duration {
        let started = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "the screen did not show {what} within {within:?}:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[derive(Debug, PartialEq)]
struct Modes {
    alternate: bool,
    cursor: bool,
    /// Any mouse reporting mode on.
    mouse: bool,
}

/// The row of extension `ext` on the Lines view, if shown.
fn row<'a>(screen: &'a str, ext: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(ext))
}

fn lamp_of(screen: &str, ext: &str) -> Option<&'static str> {
    let r = row(screen, ext)?;
    ["ringing", "talking", "held", "idle", "offline"]
        .into_iter()
        .find(|w| r.split_whitespace().any(|x| x == *w))
}

#[tokio::test]
async fn the_callee_row_rings_talks_and_goes_idle_and_the_dashboard_survives_a_restart() {
    if !Tmux::available() {
        println!("SKIPPED: tmux is not installed (apt-get install tmux)");
        return;
    }
    let mut server = Busylamp::new("tui-e2e", CONFIG);
    server.wait_ready().await;
    let mut alice = Phone::registered(server.addr, "1001", "a").await;
    let mut bob = Phone::registered(server.addr, "1002", "desk").await;

    let command = format!(
        "{} tui --config {}; echo EXITED $?; sleep 60",
        env!("CARGO_BIN_EXE_busylamp"),
        server.config_path().display()
    );
    let tmux = Tmux::start("tui-e2e", &command);
    let long = Duration::from_secs(10);
    // 1003 never registered: listed (from users_list) as offline.
    tmux.until("both phones idle, 1003 offline", long, |s| {
        lamp_of(s, "1001") == Some("idle")
            && lamp_of(s, "1002") == Some("idle")
            && lamp_of(s, "1003") == Some("offline")
    })
    .await;

    let invite = alice.invite("1002", "tui-e2e-call").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 180, "b1").await;
    let ringing = tmux
        .until("1002 ringing", long, |s| {
            lamp_of(s, "1002") == Some("ringing")
        })
        .await;
    println!("{}", tmux.screen());
    bob.reply(&at, 200, "b1").await;
    let talking = tmux
        .until("1002 talking", long, |s| {
            lamp_of(s, "1002") == Some("talking")
        })
        .await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut leg = alice.ack(&mut bob, &invite, &ok).await;
    alice.hang_up(&mut bob, &mut leg, "b1").await;
    let idle = tmux
        .until("1002 idle again", long, |s| {
            lamp_of(s, "1002") == Some("idle")
        })
        .await;
    // Polled every 20 ms by a test that shares 2 cores with builds: an upper bound.
    println!("screen after the change: ringing {ringing:?}, talking {talking:?}, idle {idle:?}");

    server.kill9();
    tmux.until("reconnecting...", long, |s| s.contains("reconnecting..."))
        .await;
    println!("{}", tmux.screen());
    server.start();
    server.wait_ready().await;
    tmux.until("the rows after the restart", Duration::from_secs(20), |s| {
        !s.contains("reconnecting...")
            && s.contains("connected")
            && lamp_of(s, "1002") == Some("idle")
            && lamp_of(s, "1001") == Some("idle")
    })
    .await;

    // The Calls view by its number key, then Ctrl-C (a key in raw mode; q and Esc take the
    // same way out): the terminal is given back (the shell's line after the dashboard's exit
    // shows on the normal screen).
    tmux.keys("2");
    tmux.until("the Calls view", long, |s| s.contains("Calls: none"))
        .await;
    tmux.keys("C-c");
    tmux.until("the exit and the normal screen", long, |s| {
        s.contains("EXITED 0") && !s.contains("Calls: none")
    })
    .await;
}

/// No server: the dashboard says why on the plain terminal and exits 3, as the control
/// commands do, without touching the terminal's mode.
#[test]
fn without_a_server_it_says_why_and_exits_3() {
    let dir = std::env::temp_dir().join(format!("busylamp-tui-none-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_busylamp"))
        .arg("tui")
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .output()
        .expect("run busylamp tui");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busylamp is not running"), "{err}");
}

/// A watcher of another domain awaits approval (`other_domains = "confirm"`): its row on the
/// Watchers view says `pending`; `a`, then `y`, approves it through the control socket, the
/// footer says so and the row turns `active`, and the watcher gets an active NOTIFY.
#[tokio::test]
async fn a_pending_watcher_is_approved_from_the_watchers_view() {
    if !Tmux::available() {
        println!("SKIPPED: tmux is not installed (apt-get install tmux)");
        return;
    }
    let server = Busylamp::new(
        "tui-approve",
        "[presence]\nother_domains = \"confirm\"\n[[users]]\nname = \"1001\"\npassword = \"a\"\n",
    );
    server.wait_ready().await;
    let command = format!(
        "{} tui --config {}; echo EXITED $?; sleep 60",
        env!("CARGO_BIN_EXE_busylamp"),
        server.config_path().display()
    );
    let tmux = Tmux::start("tui-approve", &command);
    let long = Duration::from_secs(10);
    tmux.until("the dashboard", long, |s| s.contains("connected"))
        .await;
    tmux.keys("3");
    tmux.until("the Watchers view", long, |s| s.contains("Watchers: none"))
        .await;

    let mut eve = Ua::new(server.addr).await;
    let sub = wire(&format!(
        "SUBSCRIBE sip:1001@example.test SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.1:{p};branch={br}
        Max-Forwards: 70
        From: <sip:eve@other.test>;tag=e-1
        To: <sip:1001@example.test>
        Call-ID: tui-approve-1
        CSeq: 1 SUBSCRIBE
        Contact: <sip:eve@127.0.0.1:{p}>
        Event: presence
        Expires: 600
        ",
        p = eve.port(),
        br = branch()
    ));
    assert_eq!(eve.request(&sub).await.status, 200);
    let first = eve.notify().await;
    let state = |n: &busylamp::sip::Request| {
        n.headers
            .get(busylamp::sip::HeaderName::SubscriptionState)
            .unwrap_or("")
            .to_string()
    };
    assert!(state(&first).starts_with("pending"), "{}", state(&first));
    let eve_row = |s: &str| {
        s.lines()
            .find(|l| l.contains("eve@other.test"))
            .map(str::to_string)
    };
    tmux.until("eve pending", long, |s| {
        eve_row(s).is_some_and(|r| r.contains("pending"))
    })
    .await;

    tmux.keys("a");
    tmux.until("the confirmation", long, |s| {
        s.contains("Approve eve@other.test watching") && s.contains("y: yes")
    })
    .await;
    tmux.keys("y");
    tmux.until("approved, eve active", long, |s| {
        s.contains("approved (rule") && eve_row(s).is_some_and(|r| r.contains("active"))
    })
    .await;
    let next = eve.notify().await;
    assert!(state(&next).starts_with("active"), "{}", state(&next));
}

/// The terminal is given back whichever way the dashboard ends: `q`, Ctrl-C, and a panic
/// (made by the debug-only test hook `BUSYLAMP_TUI_TEST_PANIC=1`, which panics on `!`; see
/// src/tui/app.rs). While it runs the pane is on the alternate screen with the cursor hidden
/// and mouse reporting on (asserted first, so "off" afterwards means something); afterwards
/// it is on the normal screen, the cursor shows, mouse reporting is off, and for the panic the
/// message is on the normal screen and the exit status is 101.
#[tokio::test]
async fn q_ctrl_c_and_a_panic_all_give_the_terminal_back() {
    if !Tmux::available() {
        println!("SKIPPED: tmux is not installed (apt-get install tmux)");
        return;
    }
    let server = Busylamp::new("tui-restore", CONFIG);
    server.wait_ready().await;
    let long = Duration::from_secs(10);
    for (way, keys, status) in [("q", "q", 0), ("ctrl-c", "C-c", 0), ("panic", "!", 101)] {
        let command = format!(
            "echo BEFORE; BUSYLAMP_TUI_TEST_PANIC=1 {} tui --config {}; echo EXITED $?; sleep 60",
            env!("CARGO_BIN_EXE_busylamp"),
            server.config_path().display()
        );
        let tmux = Tmux::start(&format!("tui-restore-{way}"), &command);
        tmux.until("the dashboard", long, |s| {
            s.contains("connected") && lamp_of(s, "1003") == Some("offline")
        })
        .await;
        assert_eq!(
            tmux.modes(),
            Modes {
                alternate: true,
                cursor: false,
                mouse: true
            },
            "{way}: the dashboard runs full screen"
        );
        tmux.keys(keys);
        let exited = format!("EXITED {status}");
        tmux.until(&exited, long, |s| s.contains(&exited)).await;
        let screen = tmux.screen();
        assert_eq!(
            tmux.modes(),
            Modes {
                alternate: false,
                cursor: true,
                mouse: false
            },
            "{way}: the terminal is given back:\n{screen}"
        );
        // The normal screen: what was printed before the dashboard started is there, and
        // none of the dashboard is.
        assert!(screen.contains("BEFORE"), "{way}:\n{screen}");
        assert!(!screen.contains("1 Lines"), "{way}:\n{screen}");
        if way == "panic" {
            assert!(
                screen.contains("panicked at")
                    && screen.contains("BUSYLAMP_TUI_TEST_PANIC: the dashboard panics on '!'"),
                "the panic message on the normal screen:\n{screen}"
            );
        } else {
            assert!(!screen.contains("panicked"), "{way}:\n{screen}");
        }
    }
}
