//! The views: pure functions of the [`Model`] and the [`Ui`] state, drawing into a ratatui
//! frame. Only the rows that fit are formatted, so thousands of lines scroll as fast as ten.
//! Every lamp is a word as well as a colour: the screen reads on a monochrome terminal, and
//! scripts read the words.

use super::model::{rate, user_part, Call, Lamp, LineRow, Model, Subscription};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tab {
    #[default]
    Lines,
    Calls,
    Watchers,
    Events,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Lines, Tab::Calls, Tab::Watchers, Tab::Events];

    pub fn index(self) -> usize {
        match self {
            Tab::Lines => 0,
            Tab::Calls => 1,
            Tab::Watchers => 2,
            Tab::Events => 3,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Tab::Lines => "Lines",
            Tab::Calls => "Calls",
            Tab::Watchers => "Watchers",
            Tab::Events => "Events",
        }
    }

    pub fn next(self) -> Tab {
        Tab::ALL[(self.index() + 1) % 4]
    }

    pub fn prev(self) -> Tab {
        Tab::ALL[(self.index() + 3) % 4]
    }
}

/// What a pending approval or block would do, waiting for `y`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirm {
    pub approve: bool,
    pub presentity: String,
    pub watcher: String,
    pub package: String,
}

/// The state of the screen that is not the server's: which view, where, what is typed.
#[derive(Clone, Debug, Default)]
pub struct Ui {
    pub tab: Tab,
    /// The selected row of each view (an index into its filtered rows).
    pub selected: [usize; 4],
    /// Only rows holding this text (every view).
    pub filter: String,
    /// `/` was typed: keys go to the filter.
    pub editing_filter: bool,
    pub detail: bool,
    pub help: bool,
    pub confirm: Option<Confirm>,
    /// A one-line answer (an approval done, an error), shown in the footer.
    pub message: Option<String>,
    /// Wall clock, unix ms: durations and expiries count from it.
    pub now_ms: u64,
    /// Rows the body showed at the last draw (PgUp/PgDn move by it).
    pub page: usize,
}

impl Ui {
    pub fn selected(&self) -> usize {
        self.selected[self.tab.index()]
    }
}

fn lamp_style(l: Lamp) -> Style {
    let s = Style::default();
    match l {
        Lamp::Offline => s.fg(Color::DarkGray),
        Lamp::Idle => s.fg(Color::Green),
        Lamp::Held => s.fg(Color::Magenta).add_modifier(Modifier::BOLD),
        Lamp::Talking => s.fg(Color::Red).add_modifier(Modifier::BOLD),
        Lamp::Ringing => s
            .fg(Color::Black)
            .bg(Color::Yellow)
            .add_modifier(Modifier::BOLD),
    }
}

fn lamp_cell(l: Lamp) -> Cell<'static> {
    Cell::from(Span::styled(l.word(), lamp_style(l)))
}

fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

/// `m:ss`, `h:mm:ss` or `Nd hh:mm`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}")
    } else if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// `HH:MM:SS` UTC of unix ms.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn short(uri: &str) -> &str {
    uri.strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .unwrap_or(uri)
}

/// The whole screen.
pub fn draw(f: &mut Frame, m: &Model, ui: &Ui) {
    let area = f.area();
    let [head, tabs, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    header(f, head, m, ui);
    tab_bar(f, tabs, ui);
    let (list, detail_area) = if ui.detail {
        if body.width >= 120 {
            let [a, b] = Layout::horizontal([Constraint::Fill(3), Constraint::Fill(2)]).areas(body);
            (a, Some(b))
        } else {
            let [a, b] = Layout::vertical([Constraint::Fill(1), Constraint::Fill(1)]).areas(body);
            (a, Some(b))
        }
    } else {
        (body, None)
    };
    match ui.tab {
        Tab::Lines => lines_view(f, list, m, ui),
        Tab::Calls => calls_view(f, list, m, ui),
        Tab::Watchers => watchers_view(f, list, m, ui),
        Tab::Events => events_view(f, list, m, ui),
    }
    if let Some(d) = detail_area {
        let text = detail(m, ui);
        let p = Paragraph::new(text)
            .block(Block::default().borders(Borders::ALL).title(" detail "))
            .wrap(Wrap { trim: false });
        f.render_widget(p, d);
    }
    footer(f, foot, ui);
    if ui.help {
        help(f, area);
    }
}

fn header(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let now = ui.now_ms;
    let mut first = vec![Span::styled(
        format!(" busylamp {} ", m.status.version),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if m.snapshots > 0 {
        first.push(Span::raw(format!(" up {} ", duration(m.uptime(now)))));
    }
    let rates = if area.width >= 120 {
        format!(
            "  │ REGISTER/s {:.1}  calls/s {:.1}  NOTIFY/s {:.1}",
            rate(&m.register_times, now),
            rate(&m.call_times, now),
            m.notify_rate(),
        )
    } else {
        format!(
            "  reg/s {:.1} calls/s {:.1} ntf/s {:.1}",
            rate(&m.register_times, now),
            rate(&m.call_times, now),
            m.notify_rate(),
        )
    };
    if m.connected {
        first.push(Span::styled(
            " connected ",
            Style::default().fg(Color::Green),
        ));
        first.push(Span::raw(rates));
    } else {
        first.push(Span::styled(
            " reconnecting... ",
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        ));
        if let Some(p) = &m.problem {
            first.push(Span::styled(format!(" {p}"), dim()));
        }
    }
    let second = Line::from(format!(
        " AORs {}  phones {}  calls {}  watchers {} ({} pending)  shared lines {}",
        m.registrations.len(),
        m.binding_count(),
        m.calls.len(),
        m.subscriptions.values().filter(|s| !s.api).count(),
        m.pending_count(),
        m.lines.len(),
    ));
    f.render_widget(Paragraph::new(vec![Line::from(first), second]), area);
}

fn tab_bar(f: &mut Frame, area: Rect, ui: &Ui) {
    let mut spans = Vec::new();
    for (i, t) in Tab::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, t.title());
        let style = if *t == ui.tab {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::default()
        };
        spans.push(Span::styled(label, style));
        spans.push(Span::raw(" "));
    }
    if !ui.filter.is_empty() || ui.editing_filter {
        spans.push(Span::styled(
            format!(" filter: {}", ui.filter),
            Style::default().fg(Color::Cyan),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn footer(f: &mut Frame, area: Rect, ui: &Ui) {
    let line = if let Some(c) = &ui.confirm {
        Line::from(Span::styled(
            format!(
                " {} {} watching {} ({})? y: yes, n: no",
                if c.approve { "Approve" } else { "Block" },
                short(&c.watcher),
                short(&c.presentity),
                c.package
            ),
            Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ))
    } else if ui.editing_filter {
        Line::from(format!(" /{}_   (Enter: keep, Esc: clear)", ui.filter))
    } else if let Some(msg) = &ui.message {
        Line::from(format!(" {msg}"))
    } else {
        let keys = if ui.tab == Tab::Watchers {
            " q quit  Tab/1-4 views  / filter  Enter detail  a approve  b block  ? help"
        } else {
            " q quit  Tab/1-4 views  ↑↓ PgUp/Dn Home/End  / filter  Enter detail  ? help"
        };
        Line::from(Span::styled(keys, dim()))
    };
    f.render_widget(Paragraph::new(line), area);
}

fn help(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("busylamp tui: keys"),
        Line::from(""),
        Line::from("Tab, Shift-Tab, 1-4   switch view (Lines, Calls, Watchers, Events)"),
        Line::from("↑ ↓ PgUp PgDn Home End, mouse wheel   move"),
        Line::from("/   filter the rows (every view); Enter keeps it, Esc clears it"),
        Line::from("Enter   detail of the selected row; Enter or Esc again closes it"),
        Line::from("a / b   (Watchers) approve / block a pending watcher, after y"),
        Line::from("?   this help      q, Esc, Ctrl-C   quit"),
        Line::from(""),
        Line::from("Lamps: idle, ringing, talking, held; offline = not registered."),
    ];
    let w = area.width.min(76);
    let h = area.height.min(text.len() as u16 + 2);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" help ")),
        r,
    );
}

/// The rows of `len` that fit in `height` with `selected` among them: `(offset, end)`.
fn window(len: usize, selected: usize, height: usize) -> (usize, usize) {
    if height == 0 || len == 0 {
        return (0, 0);
    }
    let selected = selected.min(len - 1);
    let offset = if selected >= height {
        selected + 1 - height
    } else {
        0
    };
    (offset, (offset + height).min(len))
}

fn table<'a>(
    f: &mut Frame,
    area: Rect,
    head: &[&'static str],
    widths: &[Constraint],
    rows: Vec<Row<'a>>,
    selected_in_window: Option<usize>,
    title: String,
) {
    let header = Row::new(head.iter().map(|h| Cell::from(*h)))
        .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let rows: Vec<Row<'a>> = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            if Some(i) == selected_in_window {
                r.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                r
            }
        })
        .collect();
    let t = Table::new(rows, widths.to_vec())
        .header(header)
        .column_spacing(1)
        .block(Block::default().borders(Borders::TOP).title(title));
    f.render_widget(t, area);
}

/// Body rows that fit under the block's top line and the table's header.
fn body_height(area: Rect) -> usize {
    area.height.saturating_sub(2) as usize
}

fn matches(filter: &str, texts: &[&str]) -> bool {
    filter.is_empty() || texts.iter().any(|t| t.contains(filter))
}

/// The Lines view's rows after the filter.
pub fn filtered_lines<'a>(m: &'a Model, ui: &Ui) -> Vec<LineRow<'a>> {
    let f = ui.filter.as_str();
    m.line_rows()
        .into_iter()
        .filter(|r| match r {
            LineRow::User(aor) => {
                f.is_empty()
                    || aor.contains(f)
                    || m.registrations.get(*aor).is_some_and(|reg| {
                        reg.contacts
                            .iter()
                            .any(|c| c.user_agent.as_deref().is_some_and(|u| u.contains(f)))
                    })
                    || m.lamp(aor).word() == f
            }
            LineRow::Line(l) | LineRow::Appearance(l, _) => matches(
                f,
                &[&l.aor, l.label.as_deref().unwrap_or(""), l.lamp().word()],
            ),
        })
        .collect()
}

pub fn filtered_calls<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a Call> {
    let mut v: Vec<&Call> = m
        .calls
        .values()
        .filter(|c| matches(&ui.filter, &[&c.caller, &c.callee, &c.call_id, &c.state]))
        .collect();
    v.sort_by(|a, b| (a.since, &a.call_id).cmp(&(b.since, &b.call_id)));
    v
}

pub fn filtered_watchers<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a Subscription> {
    m.subscriptions
        .values()
        .filter(|s| {
            matches(
                &ui.filter,
                &[&s.presentity, &s.package, &s.watcher, &s.state],
            )
        })
        .collect()
}

pub fn filtered_events<'a>(m: &'a Model, ui: &Ui) -> Vec<&'a super::model::LogEntry> {
    m.events
        .iter()
        .filter(|e| matches(&ui.filter, &[e.kind, &e.text]))
        .collect()
}

/// How many rows the current view has (for Home/End and paging).
pub fn row_count(m: &Model, ui: &Ui) -> usize {
    match ui.tab {
        Tab::Lines => filtered_lines(m, ui).len(),
        Tab::Calls => filtered_calls(m, ui).len(),
        Tab::Watchers => filtered_watchers(m, ui).len(),
        Tab::Events => filtered_events(m, ui).len(),
    }
}

fn title(name: &str, len: usize, offset: usize, end: usize, stale: bool) -> String {
    let stale = if stale { " (stale)" } else { "" };
    if len == 0 {
        format!(" {name}: none{stale} ")
    } else {
        format!(" {name}: {}-{} of {len}{stale} ", offset + 1, end)
    }
}

fn phones_cell(m: &Model, aor: &str) -> Cell<'static> {
    match m.registrations.get(aor) {
        Some(r) if !r.contacts.is_empty() => {
            let mut transports: Vec<&str> =
                r.contacts.iter().map(|c| c.transport.as_str()).collect();
            transports.sort_unstable();
            transports.dedup();
            let ua = r
                .contacts
                .iter()
                .find_map(|c| c.user_agent.as_deref())
                .unwrap_or("-");
            Cell::from(format!(
                "{} {} {ua}",
                r.contacts.len(),
                transports.join("+")
            ))
        }
        _ => Cell::from(Span::styled("not registered", dim())),
    }
}

fn lines_view(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let rows = filtered_lines(m, ui);
    let h = body_height(area);
    let (offset, end) = window(rows.len(), ui.selected(), h);
    let now_s = ui.now_ms / 1000;
    // The LINE column (the AOR, the shared line's label) only where there is room.
    let wide = area.width >= 120;
    let shown: Vec<Row> = rows[offset..end]
        .iter()
        .map(|r| {
            let mwi = match r {
                LineRow::User(aor) => m.mwi_word(aor),
                LineRow::Line(l) => m.mwi_word(&l.aor),
                LineRow::Appearance(..) => String::new(),
            };
            let (ext, line, lamp, phones, peer, time, watch) = match r {
                LineRow::User(aor) => {
                    let call = m.calls_of(aor).max_by_key(|c| (c.ringing(), c.since));
                    let (peer, time) = match call {
                        Some(c) => {
                            let other = if c.caller == *aor {
                                &c.callee
                            } else {
                                &c.caller
                            };
                            let start = c.confirmed.unwrap_or(c.since);
                            (
                                m.name(other).to_string(),
                                duration(now_s.saturating_sub(start)),
                            )
                        }
                        None => (String::new(), String::new()),
                    };
                    (
                        Cell::from(user_part(aor).to_string()),
                        Cell::from(short(aor).to_string()),
                        lamp_cell(m.lamp(aor)),
                        phones_cell(m, aor),
                        peer,
                        time,
                        m.watcher_count(aor).to_string(),
                    )
                }
                LineRow::Line(l) => {
                    let registered = l.phones.iter().filter(|p| !p.contact.is_empty()).count();
                    let label = l.label.as_deref().unwrap_or("");
                    (
                        Cell::from(user_part(&l.aor).to_string()),
                        Cell::from(format!("{label} [shared]")),
                        lamp_cell(l.lamp()),
                        Cell::from(if wide {
                            format!("{registered} member phones")
                        } else {
                            format!("[shared] {label}, {registered} phones")
                        }),
                        String::new(),
                        String::new(),
                        m.watcher_count(&l.aor).to_string(),
                    )
                }
                LineRow::Appearance(_, a) => {
                    let busy = a.state != "free";
                    let phone = a.phone.as_deref().map(|p| m.name(p)).unwrap_or("");
                    (
                        Cell::from(format!(" └ #{}", a.index)),
                        Cell::from(format!("  {phone}")),
                        lamp_cell(Lamp::of_appearance(&a.state)),
                        Cell::from(Span::styled(
                            if wide || phone.is_empty() {
                                a.state.clone()
                            } else {
                                format!("{} on {phone}", a.state)
                            },
                            dim(),
                        )),
                        a.peer
                            .as_deref()
                            .map(|p| m.name(p))
                            .unwrap_or("")
                            .to_string(),
                        if busy && a.since > 0 {
                            duration(now_s.saturating_sub(a.since))
                        } else {
                            String::new()
                        },
                        String::new(),
                    )
                }
            };
            let mut cells = vec![ext];
            if wide {
                cells.push(line);
            }
            cells.extend([
                lamp,
                phones,
                Cell::from(peer),
                Cell::from(time),
                Cell::from(watch),
                Cell::from(mwi),
            ]);
            Row::new(cells)
        })
        .collect();
    let mut widths = vec![Constraint::Length(8)];
    let mut head = vec!["EXT"];
    if wide {
        widths.push(Constraint::Fill(2));
        head.push("LINE");
    }
    widths.extend([
        Constraint::Length(7),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(6),
    ]);
    head.extend(["LAMP", "PHONES", "OTHER PARTY", "TIME", "WATCH", "MWI"]);
    let sel = ui.selected().min(rows.len().saturating_sub(1));
    table(
        f,
        area,
        &head,
        &widths,
        shown,
        (!rows.is_empty()).then(|| sel - offset),
        title("Lines", rows.len(), offset, end, !m.connected),
    );
}

/// A call's lamp word: ringing until answered, held, else talking.
fn call_word(c: &Call) -> Lamp {
    if c.held {
        Lamp::Held
    } else if c.ringing() {
        Lamp::Ringing
    } else {
        Lamp::Talking
    }
}

fn calls_view(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let rows = filtered_calls(m, ui);
    let h = body_height(area);
    let (offset, end) = window(rows.len(), ui.selected(), h);
    let now_s = ui.now_ms / 1000;
    let shown: Vec<Row> = rows[offset..end]
        .iter()
        .map(|c| {
            let branches = if c.branches.is_empty() {
                String::new()
            } else {
                c.branches
                    .iter()
                    .map(|b| {
                        // The phone's contact without its parameters: which phone rings.
                        let phone = m.name(&b.target);
                        let phone = phone.split(';').next().unwrap_or(phone);
                        format!("{} {phone}", b.state)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Row::new(vec![
                Cell::from(m.name(&c.caller).to_string()),
                Cell::from(m.name(&c.callee).to_string()),
                lamp_cell(call_word(c)),
                Cell::from(c.state.clone()),
                Cell::from(duration(now_s.saturating_sub(c.since))),
                Cell::from(branches),
                Cell::from(c.call_id.clone()),
            ])
        })
        .collect();
    let widths = [
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Fill(3),
        Constraint::Fill(1),
    ];
    let sel = ui.selected().min(rows.len().saturating_sub(1));
    table(
        f,
        area,
        &[
            "CALLER", "CALLEE", "LAMP", "STATE", "TIME", "BRANCHES", "CALL-ID",
        ],
        &widths,
        shown,
        (!rows.is_empty()).then(|| sel - offset),
        title("Calls", rows.len(), offset, end, !m.connected),
    );
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

fn watchers_view(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let rows = filtered_watchers(m, ui);
    let h = body_height(area);
    let (offset, end) = window(rows.len(), ui.selected(), h);
    let now_s = ui.now_ms / 1000;
    let shown: Vec<Row> = rows[offset..end]
        .iter()
        .map(|s| {
            let state_style = match s.state.as_str() {
                "pending" => Style::default()
                    .fg(Color::Black)
                    .bg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
                "active" => Style::default().fg(Color::Green),
                _ => dim(),
            };
            let expires = match s.expires {
                Some(e) => format!("{}s", e.saturating_sub(now_s)),
                None => "-".into(),
            };
            let failures = if s.failures > 0 {
                Cell::from(Span::styled(
                    s.failures.to_string(),
                    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                ))
            } else {
                Cell::from("0")
            };
            let package = if s.api {
                format!("{} (ours)", s.package)
            } else {
                s.package.clone()
            };
            Row::new(vec![
                Cell::from(m.name(&s.presentity).to_string()),
                Cell::from(package),
                Cell::from(m.name(&s.watcher).to_string()),
                Cell::from(Span::styled(s.state.clone(), state_style)),
                Cell::from(expires),
                Cell::from(format!("{}/{}", opt(s.cseq), opt(s.version))),
                failures,
                Cell::from(opt(s.last_answer)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Fill(2),
        Constraint::Length(9),
        Constraint::Fill(2),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(4),
        Constraint::Length(4),
    ];
    let sel = ui.selected().min(rows.len().saturating_sub(1));
    table(
        f,
        area,
        &[
            "PRESENTITY",
            "PACKAGE",
            "WATCHER",
            "STATE",
            "EXPIRES",
            "CSEQ/V",
            "FAIL",
            "LAST",
        ],
        &widths,
        shown,
        (!rows.is_empty()).then(|| sel - offset),
        title("Watchers", rows.len(), offset, end, !m.connected),
    );
}

fn events_view(f: &mut Frame, area: Rect, m: &Model, ui: &Ui) {
    let rows = filtered_events(m, ui);
    let h = body_height(area);
    let (offset, end) = window(rows.len(), ui.selected(), h);
    let shown: Vec<Row> = rows[offset..end]
        .iter()
        .map(|e| {
            Row::new(vec![
                Cell::from(clock(e.at_ms)),
                Cell::from(e.kind),
                Cell::from(short_text(m, &e.text)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(8),
        Constraint::Length(12),
        Constraint::Fill(1),
    ];
    let sel = ui.selected().min(rows.len().saturating_sub(1));
    table(
        f,
        area,
        &["UTC", "KIND", "WHAT"],
        &widths,
        shown,
        (!rows.is_empty()).then(|| sel - offset),
        title("Events", rows.len(), offset, end, !m.connected),
    );
}

/// A log line as the views name things: no `sip:`, users of the home domain by user part.
fn short_text(m: &Model, text: &str) -> String {
    let t = text.replace("sip:", "");
    if m.domain.is_empty() {
        t
    } else {
        t.replace(&format!("@{}", m.domain), "")
    }
}

/// The detail pane's text for the selected row.
pub fn detail(m: &Model, ui: &Ui) -> Vec<Line<'static>> {
    let sel = ui.selected();
    let now_s = ui.now_ms / 1000;
    let mut out: Vec<String> = Vec::new();
    match ui.tab {
        Tab::Lines => match filtered_lines(m, ui).get(sel) {
            Some(LineRow::User(aor)) => {
                out.push(format!("{aor}: {}", m.lamp(aor).word()));
                match m.registrations.get(*aor) {
                    Some(r) => {
                        for c in &r.contacts {
                            let exp = c
                                .expires
                                .map(|e| format!(", expires in {}s", e.saturating_sub(now_s)))
                                .unwrap_or_default();
                            // The address it registered from (its flow) when the contact
                            // does not say it: a phone behind NAT, a TCP connection's port.
                            let from = c
                                .flow
                                .as_deref()
                                .and_then(|f| f.split_once(':'))
                                .map(|(_, addr)| addr)
                                .filter(|addr| !c.contact.contains(addr))
                                .map(|addr| format!(" from {addr}"))
                                .unwrap_or_default();
                            out.push(format!(
                                "phone {} ({}{from}, {}{exp})",
                                c.contact,
                                c.transport,
                                c.user_agent.as_deref().unwrap_or("no user agent")
                            ));
                        }
                    }
                    None => out.push("not registered".into()),
                }
                for c in m.calls_of(aor) {
                    out.push(format!(
                        "call {} {} → {} {}",
                        c.call_id, c.caller, c.callee, c.state
                    ));
                }
                for s in m.subscriptions.values().filter(|s| s.presentity == *aor) {
                    out.push(format!(
                        "watched by {} ({}, {})",
                        s.watcher, s.package, s.state
                    ));
                }
            }
            Some(LineRow::Line(l)) | Some(LineRow::Appearance(l, _)) => {
                out.push(format!(
                    "shared line {} {}: {}",
                    l.aor,
                    l.label.as_deref().unwrap_or(""),
                    l.lamp().word()
                ));
                for a in &l.appearances {
                    out.push(format!(
                        "#{} {} {} {}",
                        a.index,
                        a.state,
                        a.phone.as_deref().unwrap_or("-"),
                        a.peer.as_deref().unwrap_or("")
                    ));
                }
                for p in &l.phones {
                    out.push(format!(
                        "member {} at {} ({}){}",
                        p.phone,
                        if p.contact.is_empty() {
                            "-"
                        } else {
                            &p.contact
                        },
                        p.user_agent.as_deref().unwrap_or("no user agent"),
                        if p.subscribed { "" } else { ", not subscribed" }
                    ));
                }
            }
            None => {}
        },
        Tab::Calls => {
            if let Some(c) = filtered_calls(m, ui).get(sel) {
                out.push(format!("call {}", c.call_id));
                out.push(format!("{} → {}", c.caller, c.callee));
                out.push(format!(
                    "{} for {}{}",
                    c.state,
                    duration(now_s.saturating_sub(c.since)),
                    if c.held { ", held" } else { "" }
                ));
                for b in &c.branches {
                    out.push(format!("branch {} {}", b.target, b.state));
                }
            }
        }
        Tab::Watchers => {
            if let Some(s) = filtered_watchers(m, ui).get(sel) {
                out.push(format!(
                    "{} watches {} ({})",
                    s.watcher, s.presentity, s.package
                ));
                out.push(format!(
                    "state {}{}",
                    s.state,
                    s.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ));
                out.push(format!(
                    "CSeq {}, version {}, NOTIFY failures {}, last answer {}",
                    opt(s.cseq),
                    opt(s.version),
                    s.failures,
                    opt(s.last_answer)
                ));
                out.push(format!(
                    "user agent {}",
                    s.user_agent.as_deref().unwrap_or("-")
                ));
                if s.state == "pending" {
                    out.push("a: approve, b: block".into());
                }
            }
        }
        Tab::Events => {
            if let Some(e) = filtered_events(m, ui).get(sel) {
                out.push(format!("{} UTC {}", clock(e.at_ms), e.kind));
                out.push(e.text.clone());
            }
        }
    }
    out.into_iter().map(Line::from).collect()
}

/// The screen as text, one line per row (trailing blanks trimmed): for tests and the README.
pub fn buffer_text(buf: &ratatui::buffer::Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buf[(area.x + x, area.y + y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_selection_visible() {
        assert_eq!(window(0, 0, 10), (0, 0));
        assert_eq!(window(5, 3, 10), (0, 5));
        assert_eq!(window(100, 0, 10), (0, 10));
        assert_eq!(window(100, 25, 10), (16, 26));
        assert_eq!(window(100, 500, 10), (90, 100));
    }

    #[test]
    fn durations_read_as_clocks() {
        assert_eq!(duration(5), "0:05");
        assert_eq!(duration(3725), "1:02:05");
        assert_eq!(duration(90_000), "1d 01:00");
    }
}
