//! The event loop: a thread reads the `follow` stream (reconnecting when the server goes), a
//! thread reads the terminal's keys, a thread makes the calls the dashboard asks for
//! (approve, block, details of a new watcher); the main thread applies what they send to the
//! model and redraws at most ~30 times a second. The server never waits for us: the stream is
//! read as fast as it comes, and when the screen falls far behind, the stream is dropped and
//! a fresh snapshot asked for.

use super::model::Model;
use super::view::{self, Confirm, Tab, Ui};
use crate::control::client::{CallError, Client};
use ratatui::crossterm::cursor::Show;
use ratatui::crossterm::event::{
    self, DisableMouseCapture, EnableMouseCapture, Event as TermEvent, KeyCode, KeyEvent,
    KeyEventKind, KeyModifiers, MouseEventKind,
};
use ratatui::crossterm::execute;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Shortest time between two frames (~30 per second).
const FRAME: Duration = Duration::from_millis(33);
/// Messages waiting for the main thread; past this the stream is dropped and resynced.
const QUEUE: usize = 20_000;
/// Wait between two attempts to reach a server that went away.
const RETRY: Duration = Duration::from_millis(500);
/// How often the header's NOTIFY/s is sampled from `status`.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long a call (approve, block, a list) may take.
const CALL_WAIT: Duration = Duration::from_secs(10);

pub enum Msg {
    Notice(String, Value),
    Disconnected(String),
    Input(TermEvent),
    /// The answer to a call made for the user (shown in the footer).
    Answer(String),
    /// Fresh `subscriptions` items, to correct what a thin notice could not say.
    Subscriptions(Value),
    /// A page of `users_list`: the users that have never registered get rows too.
    Users(Value),
    /// A `status` answer: its NOTIFY counter feeds the header's NOTIFY/s.
    Status(Value),
}

/// What the loop does after a key.
#[derive(Debug, PartialEq)]
pub enum Action {
    None,
    Quit,
    /// Call a method for the user: approve or block.
    Call(String, Value),
}

/// A test hook, in debug builds only (a release binary has no such variable): with
/// `BUSYLAMP_TUI_TEST_PANIC=1` in its environment the running dashboard panics when `!` is
/// pressed, so tests/tui_e2e.rs can check that the panic hook gives the terminal back
/// (normal screen, cursor shown, mouse reporting off, the message printed, a failing exit).
#[cfg(debug_assertions)]
const TEST_PANIC_ENV: &str = "BUSYLAMP_TUI_TEST_PANIC";

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Moves the selection by `delta` rows within `count`.
fn step(ui: &mut Ui, count: usize, delta: isize) {
    let i = ui.tab.index();
    let last = count.saturating_sub(1) as isize;
    ui.selected[i] = (ui.selected[i].min(last as usize) as isize + delta).clamp(0, last) as usize;
}

/// One key (or mouse event): changes the UI state, or asks the loop for something.
pub fn on_input(ui: &mut Ui, m: &Model, ev: &TermEvent) -> Action {
    let key = match ev {
        TermEvent::Key(k) if k.kind != KeyEventKind::Release => *k,
        TermEvent::Mouse(me) => {
            let count = view::row_count(m, ui);
            match me.kind {
                MouseEventKind::ScrollDown => step(ui, count, 3),
                MouseEventKind::ScrollUp => step(ui, count, -3),
                _ => {}
            }
            return Action::None;
        }
        _ => return Action::None,
    };
    on_key(ui, m, key)
}

pub fn on_key(ui: &mut Ui, m: &Model, key: KeyEvent) -> Action {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if ui.help {
        ui.help = false;
        return Action::None;
    }
    if let Some(c) = ui.confirm.take() {
        if key.code == KeyCode::Char('y') {
            let method = if c.approve { "approve" } else { "block" };
            ui.message = Some(format!(
                "{}...",
                if c.approve { "approving" } else { "blocking" }
            ));
            return Action::Call(
                method.into(),
                json!({"presentity": c.presentity, "watcher": c.watcher, "event": c.package}),
            );
        }
        ui.message = Some("nothing changed".into());
        return Action::None;
    }
    if ui.editing_filter {
        match key.code {
            KeyCode::Char(ch) => ui.filter.push(ch),
            KeyCode::Backspace => {
                ui.filter.pop();
            }
            KeyCode::Enter => ui.editing_filter = false,
            KeyCode::Esc => {
                ui.filter.clear();
                ui.editing_filter = false;
            }
            _ => {}
        }
        ui.selected = [0; 4];
        return Action::None;
    }
    ui.message = None;
    let count = view::row_count(m, ui);
    let page = ui.page.max(1) as isize;
    match key.code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Esc => {
            if ui.detail {
                ui.detail = false;
            } else if !ui.filter.is_empty() {
                ui.filter.clear();
                ui.selected = [0; 4];
            } else {
                return Action::Quit;
            }
        }
        KeyCode::Tab => ui.tab = ui.tab.next(),
        KeyCode::BackTab => ui.tab = ui.tab.prev(),
        KeyCode::Char(d @ '1'..='4') => ui.tab = Tab::ALL[(d as u8 - b'1') as usize],
        KeyCode::Down | KeyCode::Char('j') => step(ui, count, 1),
        KeyCode::Up | KeyCode::Char('k') => step(ui, count, -1),
        KeyCode::PageDown => step(ui, count, page),
        KeyCode::PageUp => step(ui, count, -page),
        KeyCode::Home | KeyCode::Char('g') => ui.selected[ui.tab.index()] = 0,
        KeyCode::End | KeyCode::Char('G') => ui.selected[ui.tab.index()] = count.saturating_sub(1),
        KeyCode::Char('/') => ui.editing_filter = true,
        KeyCode::Enter => ui.detail = !ui.detail,
        KeyCode::Char('?') => ui.help = true,
        KeyCode::Char(c @ ('a' | 'b')) if ui.tab == Tab::Watchers => {
            let rows = view::filtered_watchers(m, ui);
            match rows.get(ui.selected()) {
                Some(s) if s.api => {
                    ui.message = Some("a subscription of ours: end it with unsubscribe".into())
                }
                Some(s) if c == 'b' || s.state == "pending" => {
                    ui.confirm = Some(Confirm {
                        approve: c == 'a',
                        presentity: s.presentity.clone(),
                        watcher: s.watcher.clone(),
                        package: s.package.clone(),
                    })
                }
                Some(_) => ui.message = Some("only a pending watcher awaits approval".into()),
                None => {}
            }
        }
        _ => {}
    }
    Action::None
}

/// Reads the `follow` stream for ever, reconnecting; sends what it reads.
fn follow_thread(path: PathBuf, tx: SyncSender<Msg>) {
    loop {
        let problem = match follow_once(&path, &tx) {
            Ok(()) => return, // the main thread is gone
            Err(p) => p,
        };
        if tx.send(Msg::Disconnected(problem)).is_err() {
            return;
        }
        std::thread::sleep(RETRY);
    }
}

/// One connection: `Ok` when the main thread went away, else why the stream ended.
fn follow_once(path: &Path, tx: &SyncSender<Msg>) -> Result<(), String> {
    let mut client = Client::connect(path).map_err(|e| e.to_string())?;
    client.set_timeout(Some(CALL_WAIT));
    client.follow().map_err(|e| e.to_string())?;
    client.set_timeout(None);
    loop {
        let (method, params) = client.next_notification().map_err(|e| match e {
            CallError::Connection { problem, .. } => problem,
            CallError::Rpc(e) => e.message,
        })?;
        match tx.try_send(Msg::Notice(method, params)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // The screen is far behind: drop this stream (the server forgets us at
                // once) and start again from a fresh snapshot.
                return Err("the dashboard fell behind; a fresh snapshot follows".into());
            }
            Err(TrySendError::Disconnected(_)) => return Ok(()),
        }
    }
}

/// A call the dashboard makes on its own connection.
enum Query {
    User(String, Value),
    Subscriptions(String),
    /// `users_list` from this offset.
    Users(u64),
    /// `status`, for the header's NOTIFY/s.
    Status,
}

/// Users listed at most (10 pages of the API's largest).
const MAX_USERS: u64 = 10_000;

fn query_thread(path: PathBuf, rx: Receiver<Query>, tx: SyncSender<Msg>) {
    let mut client: Option<Client> = None;
    for q in rx {
        let (method, params) = match &q {
            Query::User(m, p) => (m.clone(), p.clone()),
            Query::Subscriptions(filter) => (
                "subscriptions".to_string(),
                json!({"filter": filter, "limit": 1000}),
            ),
            Query::Users(offset) => (
                "users_list".to_string(),
                json!({"offset": offset, "limit": 1000}),
            ),
            Query::Status => ("status".to_string(), json!({})),
        };
        if client.is_none() {
            client = Client::connect(&path).ok();
            if let Some(c) = &client {
                c.set_timeout(Some(CALL_WAIT));
            }
        }
        let answer = match client.as_mut() {
            Some(c) => c.call(&method, params),
            None => Err(CallError::Connection {
                path: path.clone(),
                problem: "cannot connect".into(),
            }),
        };
        if matches!(answer, Err(CallError::Connection { .. })) {
            client = None;
        }
        let msg = match (q, answer) {
            (Query::User(m, _), Ok(v)) => Msg::Answer(match m.as_str() {
                "approve" => format!("approved (rule {})", v["id"].as_str().unwrap_or("?")),
                "block" => format!("blocked (rule {})", v["id"].as_str().unwrap_or("?")),
                _ => format!("{m}: done"),
            }),
            (Query::User(m, _), Err(e)) => Msg::Answer(format!("{m} failed: {e}")),
            (Query::Subscriptions(_), Ok(v)) => Msg::Subscriptions(v),
            (Query::Subscriptions(_), Err(_)) => continue,
            (Query::Users(offset), Ok(v)) => {
                // The following pages at once, on this connection.
                let next = offset + 1000;
                if v["total"].as_u64().is_some_and(|t| t > next) && next < MAX_USERS {
                    if tx.send(Msg::Users(v)).is_err() {
                        return;
                    }
                    let mut o = next;
                    while let Some(c) = client.as_mut() {
                        let Ok(v) = c.call("users_list", json!({"offset": o, "limit": 1000}))
                        else {
                            break;
                        };
                        let last = v["total"].as_u64().is_none_or(|t| t <= o + 1000)
                            || o + 1000 >= MAX_USERS;
                        if tx.send(Msg::Users(v)).is_err() {
                            return;
                        }
                        if last {
                            break;
                        }
                        o += 1000;
                    }
                    continue;
                }
                Msg::Users(v)
            }
            // A server without a users file or an older one: the rows come as phones register.
            (Query::Users(_), Err(_)) => continue,
            (Query::Status, Ok(v)) => Msg::Status(v),
            (Query::Status, Err(_)) => continue,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

fn input_thread(tx: SyncSender<Msg>) {
    while let Ok(ev) = event::read() {
        if tx.send(Msg::Input(ev)).is_err() {
            return;
        }
    }
}

/// `busylamp tui`: runs until the user quits. The exit code as the control commands': 3 when
/// the server cannot be reached at the start.
pub fn run(path: PathBuf) -> i32 {
    // Say why at once, on a plain terminal, when there is no server to watch.
    if let Err(e) = Client::connect(&path) {
        eprintln!("error: {e}");
        return 3;
    }
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    let (qtx, qrx) = mpsc::sync_channel::<Query>(64);
    {
        let (p, t) = (path.clone(), tx.clone());
        std::thread::spawn(move || follow_thread(p, t));
        let (p, t) = (path.clone(), tx.clone());
        std::thread::spawn(move || query_thread(p, qrx, t));
        let t = tx.clone();
        std::thread::spawn(move || input_thread(t));
    }
    drop(tx);

    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            eprintln!("error: busylamp tui needs a terminal: {e}");
            return 1;
        }
    };
    let _ = execute!(std::io::stdout(), EnableMouseCapture);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Mouse reporting off and the cursor shown here, not left to the terminal's Drop:
        // that runs only when the main thread unwinds, after this hook printed the message.
        let _ = execute!(std::io::stdout(), DisableMouseCapture, Show);
        ratatui::restore();
        // ratatui's own hook (restore again, harmless), then Rust's: the message on the
        // normal screen.
        previous(info);
        // A panic on another thread (the connection's reader) would leave the main loop
        // drawing on the terminal just restored: end the process as a main-thread panic does.
        if std::thread::current().name() != Some("main") {
            std::process::exit(101);
        }
    }));
    #[cfg(debug_assertions)]
    let test_panic = std::env::var_os(TEST_PANIC_ENV).is_some_and(|v| v == "1");

    let mut model = Model::new();
    let mut ui = Ui {
        now_ms: now_ms(),
        ..Ui::default()
    };
    let mut dirty = true;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut last_status = Instant::now();
    'main: loop {
        let wait = if dirty {
            FRAME.saturating_sub(last_draw.elapsed())
        } else {
            Duration::from_secs(1).saturating_sub(last_draw.elapsed())
        };
        let first = match rx.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(first) = first {
            let tail = ui.tab == Tab::Events && ui.selected() + 1 >= view::row_count(&model, &ui);
            // What has come meanwhile, at once (bounded: the screen is redrawn between).
            let more = std::iter::from_fn(|| rx.try_recv().ok()).take(QUEUE);
            for msg in std::iter::once(first).chain(more) {
                let now = now_ms();
                match msg {
                    Msg::Notice(method, params) => {
                        if method == "change"
                            && params["kind"] == "subscription"
                            && params["change"] == "created"
                        {
                            if let Some(w) = params["watcher"].as_str() {
                                let _ = qtx.try_send(Query::Subscriptions(w.to_string()));
                            }
                        }
                        model.apply(&method, &params, now);
                        if method == "snapshot" {
                            let _ = qtx.try_send(Query::Users(0));
                        }
                    }
                    Msg::Disconnected(problem) => model.disconnected(problem, now),
                    Msg::Answer(text) => ui.message = Some(text),
                    Msg::Subscriptions(v) => model.merge_subscriptions(&v["items"]),
                    Msg::Users(v) => model.add_users(&v["items"]),
                    Msg::Status(v) => model.notify_sample(&v, now),
                    Msg::Input(ev) => {
                        #[cfg(debug_assertions)]
                        if test_panic
                            && matches!(ev, TermEvent::Key(k) if k.code == KeyCode::Char('!'))
                        {
                            panic!("{TEST_PANIC_ENV}: the dashboard panics on '!' as asked");
                        }
                        if let TermEvent::Resize(..) = ev {
                            let _ = terminal.autoresize();
                        }
                        match on_input(&mut ui, &model, &ev) {
                            Action::Quit => break 'main,
                            Action::Call(m, p) => {
                                if qtx.try_send(Query::User(m, p)).is_err() {
                                    ui.message = Some("busy: try again".into());
                                }
                            }
                            Action::None => {}
                        }
                    }
                }
            }
            if tail {
                let n = view::row_count(&model, &ui);
                ui.selected[Tab::Events.index()] = n.saturating_sub(1);
            }
            dirty = true;
        }
        if last_draw.elapsed() >= Duration::from_secs(1) {
            dirty = true; // durations tick
        }
        // The NOTIFY counter is not on the bus (one event per NOTIFY would be the flood the
        // bus avoids): sampled from `status` every STATUS_EVERY.
        if last_status.elapsed() >= STATUS_EVERY && qtx.try_send(Query::Status).is_ok() {
            last_status = Instant::now();
        }
        if dirty && last_draw.elapsed() >= FRAME {
            ui.now_ms = now_ms();
            if let Ok(size) = terminal.size() {
                ui.page = size.height.saturating_sub(6) as usize;
            }
            if terminal.draw(|f| view::draw(f, &model, &ui)).is_err() {
                break;
            }
            dirty = false;
            last_draw = Instant::now();
        }
    }
    let _ = execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn model_with_pending() -> Model {
        let mut m = Model::new();
        m.apply(
            "snapshot",
            &json!({"seq": 0, "status": {"version": "0.1.0", "uptime": 1},
                "registrations": [], "calls": [], "lines": [],
                "subscriptions": [
                    {"kind": "watcher", "watcher": "sip:1003@example.test", "presentity": "sip:1001@example.test",
                     "package": "presence", "state": "pending"},
                    {"kind": "watcher", "watcher": "sip:1004@example.test", "presentity": "sip:1001@example.test",
                     "package": "presence", "state": "active"}]}),
            1_000,
        );
        m
    }

    #[test]
    fn keys_switch_views_move_filter_and_quit() {
        let m = model_with_pending();
        let mut ui = Ui::default();
        assert_eq!(on_key(&mut ui, &m, key(KeyCode::Tab)), Action::None);
        assert_eq!(ui.tab, Tab::Calls);
        on_key(&mut ui, &m, key(KeyCode::Char('3')));
        assert_eq!(ui.tab, Tab::Watchers);
        on_key(&mut ui, &m, key(KeyCode::End));
        assert_eq!(ui.selected(), 1);
        on_key(&mut ui, &m, key(KeyCode::Down));
        assert_eq!(ui.selected(), 1, "stays on the last row");
        on_key(&mut ui, &m, key(KeyCode::Home));
        assert_eq!(ui.selected(), 0);
        on_key(&mut ui, &m, key(KeyCode::Char('/')));
        for c in "1004".chars() {
            on_key(&mut ui, &m, key(KeyCode::Char(c)));
        }
        on_key(&mut ui, &m, key(KeyCode::Enter));
        assert_eq!(ui.filter, "1004");
        assert_eq!(view::row_count(&m, &ui), 1);
        on_key(&mut ui, &m, key(KeyCode::Esc));
        assert!(ui.filter.is_empty(), "Esc clears the filter first");
        on_key(&mut ui, &m, key(KeyCode::Char('?')));
        assert!(ui.help);
        on_key(&mut ui, &m, key(KeyCode::Char('x')));
        assert!(!ui.help);
        assert_eq!(
            on_key(
                &mut ui,
                &m,
                KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
            ),
            Action::Quit
        );
        assert_eq!(on_key(&mut ui, &m, key(KeyCode::Char('q'))), Action::Quit);
    }

    #[test]
    fn a_pending_watcher_is_approved_after_a_confirmation() {
        let m = model_with_pending();
        let mut ui = Ui {
            tab: Tab::Watchers,
            ..Ui::default()
        };
        on_key(&mut ui, &m, key(KeyCode::Char('a')));
        assert!(ui.confirm.is_some());
        on_key(&mut ui, &m, key(KeyCode::Char('n')));
        assert!(ui.confirm.is_none());
        on_key(&mut ui, &m, key(KeyCode::Char('a')));
        let a = on_key(&mut ui, &m, key(KeyCode::Char('y')));
        assert_eq!(
            a,
            Action::Call(
                "approve".into(),
                json!({"presentity": "sip:1001@example.test", "watcher": "sip:1003@example.test", "event": "presence"})
            )
        );
        // The active one cannot be approved, but can be blocked.
        on_key(&mut ui, &m, key(KeyCode::Down));
        on_key(&mut ui, &m, key(KeyCode::Char('a')));
        assert!(ui.confirm.is_none());
        on_key(&mut ui, &m, key(KeyCode::Char('b')));
        assert!(matches!(&ui.confirm, Some(c) if !c.approve));
    }
}
