//! `busylamp`: serve, check-config, users, and the control commands (status, registrations,
//! calls, watchers, lines, publish, subscribe, approve, ctl) that ask a running server over its
//! control socket.

use anyhow::Context;
use busylamp::config::Config;
use busylamp::sip::digest::{self, Algorithm};
use busylamp::storage::{DiskStore, UserFile, UserRecord};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "busylamp",
    version,
    about = "SIP registrar, edge proxy and presence server for desk phones",
    after_help = "Without --config, every command reads /etc/busylamp/busylamp.toml when it exists \
(the .deb's config), else the built-in defaults; the environment variable BUSYLAMP_CONFIG \
names another such default file.

The control commands (status, registrations, calls, watchers, lines, publish, subscribe, approve, \
ctl) and the dashboard (tui) ask the running server over its control socket ([control] socket, default \
DATA_DIR/control.sock, mode 0660: run them as root, as the service user or as a member of its \
group). Exit codes: 0 done; 1 the server answered an error (its message on standard error); 2 \
usage; 3 the server cannot be reached (not running, permission denied, not a socket)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Config file [default: /etc/busylamp/busylamp.toml when it exists, else built-in defaults].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and say what is wrong with it; count the users it and the users
    /// file give.
    CheckConfig {
        /// Config file [default: /etc/busylamp/busylamp.toml].
        file: Option<PathBuf>,
    },
    /// Manage the users kept in the data directory (only HA1 hashes are stored). Run it with
    /// the server's config (its realm and data directory): the default is the .deb's.
    Users {
        /// Config file [default: /etc/busylamp/busylamp.toml when it exists, else built-in defaults].
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Show the running server: version, uptime, listen addresses, counts, storage, transactions.
    Status {
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// List the registrations: each AOR with its contacts (expires, user agent, flow).
    Registrations {
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// List the calls through the proxy: parties, state, since, per-branch state.
    Calls {
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// List the subscriptions (watchers): package, state, expires, CSeq, version, NOTIFY
    /// failures and the last NOTIFY's answer.
    Watchers {
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// List the shared lines and their appearances.
    Lines {
        #[command(flatten)]
        list: ListArgs,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Publish a presentity's state into the presence server (and to [pua] presence_server
    /// when set). Without a body: refresh the publication given with --id.
    Publish {
        /// The presentity, e.g. sip:1001@example.com.
        presentity: String,
        /// The event package: presence, dialog, message-summary, ...
        #[arg(long, default_value = "presence")]
        event: String,
        /// Content type of the body [default: the package's usual one].
        #[arg(long)]
        content_type: Option<String>,
        /// The body; "-" reads it from standard input.
        #[arg(long)]
        body: Option<String>,
        /// Seconds the publication lasts; 0 removes it.
        #[arg(long)]
        expires: Option<u32>,
        /// The id of an earlier publish, to update (or refresh, or remove) that publication.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Subscribe, through the presence client, to a presentity's state on behalf of a
    /// watcher; its NOTIFYs show in `busylamp watchers`. `busylamp ctl unsubscribe '{"id":..}'`
    /// ends it.
    Subscribe {
        /// Who subscribes, e.g. sip:1001@example.com.
        watcher: String,
        /// Whom to watch, e.g. sip:1002@example.com.
        presentity: String,
        /// The event package.
        #[arg(long, default_value = "presence")]
        event: String,
        /// Seconds the subscription lasts (refreshed until unsubscribed).
        #[arg(long)]
        expires: Option<u32>,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Allow a watcher to see a presentity, as a standing rule stored durably: pending
    /// subscriptions of that watcher become active now, later ones at once. `busylamp ctl
    /// block ...`, `rules` and `rule_remove` do the rest.
    Approve {
        /// The watcher, e.g. sip:1001@example.com.
        watcher: String,
        /// The presentity it may watch, e.g. sip:1002@example.com.
        presentity: String,
        /// The event package the rule is for [default: every package].
        #[arg(long)]
        event: Option<String>,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// Call any control method with JSON params and print the JSON result, e.g.
    /// `busylamp ctl refresh_watchers '{"presentity":"sip:1001@example.com"}'`; `ctl follow`
    /// prints the stream of changes, one JSON line each.
    Ctl {
        /// The method: status, registrations, calls, presentities, subscriptions, lines,
        /// publish, subscribe, unsubscribe, refresh_watchers, message_summary, approve, block,
        /// rules, rule_remove, users_list, users_add, users_remove, follow.
        method: String,
        /// The params, a JSON object [default: none].
        params: Option<String>,
        #[command(flatten)]
        ctl: CtlArgs,
    },
    /// The live dashboard: every line with its lamp (idle, ringing, talking, held, offline),
    /// the calls, the watchers and a log of changes, pushed by the running server over its
    /// control socket. Keys: Tab or 1-4 switch views, / filters, Enter details, ? help, q quits.
    Tui {
        /// Config file of the server, whose control socket is [control] socket or control.sock
        /// in its data directory [default: /etc/busylamp/busylamp.toml when it exists, else
        /// built-in defaults].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The control socket, instead of finding it through the config.
        #[arg(long, conflicts_with = "config")]
        socket: Option<PathBuf>,
    },
    /// Write the man pages (busylamp.1, busylamp-users.1, ...) into a directory.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// How a control command finds the server and prints its answer.
#[derive(clap::Args)]
struct CtlArgs {
    /// Config file of the server, whose control socket is [control] socket or control.sock in
    /// its data directory [default: /etc/busylamp/busylamp.toml when it exists, else built-in
    /// defaults].
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The control socket, instead of finding it through the config.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Print the method's result as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

/// Filter and paging of a list.
#[derive(clap::Args)]
struct ListArgs {
    /// Only the items that contain this text.
    #[arg(long)]
    filter: Option<String>,
    /// Skip this many items.
    #[arg(long)]
    offset: Option<u64>,
    /// At most this many items (the server allows up to 1000) [default: 100].
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Subcommand)]
enum UsersAction {
    /// Add or replace a user. The password is read from --password or from standard input.
    Add {
        /// The SIP user name (the phone's auth user), e.g. 1001.
        name: String,
        /// The password (visible in the process list: prefer one line on standard input).
        #[arg(long)]
        password: Option<String>,
    },
    /// Remove a user from the users file.
    Remove {
        /// The SIP user name.
        name: String,
    },
    /// List the users of the users file: name, realm, hash algorithms.
    List,
}

/// The config the .deb installs; commands read it when no --config is given and it exists.
const PACKAGED_CONFIG: &str = "/etc/busylamp/busylamp.toml";
/// Names another default config file in place of [`PACKAGED_CONFIG`] (tests, other layouts).
const DEFAULT_CONFIG_ENV: &str = "BUSYLAMP_CONFIG";

/// The config file a command reads: the one given, else the default one when it exists
/// (`None`: built-in defaults).
fn config_path(given: Option<PathBuf>) -> Option<PathBuf> {
    if given.is_some() {
        return given;
    }
    let default = std::env::var_os(DEFAULT_CONFIG_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PACKAGED_CONFIG));
    if default.exists() {
        return Some(default);
    }
    if std::env::var_os(DEFAULT_CONFIG_ENV).is_some() {
        eprintln!(
            "warning: {DEFAULT_CONFIG_ENV} names {}, which does not exist: using the built-in defaults",
            default.display()
        );
    }
    None
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// How a command names the config it used, for its messages.
fn config_name(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "the built-in defaults".to_string(),
    }
}

/// The global allocator and its upkeep.
#[cfg(feature = "mimalloc")]
mod allocator {
    use std::time::Duration;

    // mimalloc: 19 % less server CPU per REGISTER than glibc's malloc, which spent most of its
    // time consolidating fastbins (tests/bench/ab.sh; README "Performance"). Default feature;
    // `--no-default-features` builds with glibc's malloc for comparison.
    #[global_allocator]
    static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

    /// How often idle memory is looked at: mimalloc's own purge delay is 1 s, so a page freed
    /// by a burst is back with the OS within about two seconds.
    pub const RETURN_EVERY: Duration = Duration::from_secs(1);

    /// Gives memory freed by a burst back to the OS, also when the server then goes idle.
    /// mimalloc returns a freed page only after a delay, and only when it next does work; on
    /// a server that falls quiet after a burst (a SUBSCRIBE storm at boot, a restart's
    /// NOTIFY burst) nothing would do that work, and the freed pages stayed resident for
    /// good. `mi_collect(false)` returns the pages whose delay is over (arena purges are
    /// process-wide) and forces nothing else back, so pages a busy server reuses stay.
    pub async fn return_freed_memory(every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // SAFETY: mi_collect takes no pointers; it walks mimalloc's own structures for
            // the calling thread and the process-wide arenas, which it locks itself.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn resident_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }

        /// Real time, not tokio's paused clock: the delay being waited out is mimalloc's own.
        /// The first half shows the problem is real (without the collector the freed burst
        /// stays resident past mimalloc's delay), the second that the collector ends it. If
        /// mimalloc ever returns idle memory by itself, the first half fails and says so.
        #[test]
        fn a_freed_burst_goes_back_to_the_os_once_idle() {
            const BURST_KB: u64 = 96 * 1024;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let before = resident_kb();
                // Many small blocks, as a burst of messages and transactions leaves them.
                let blocks: Vec<Vec<u8>> = (0..BURST_KB * 4).map(|i| vec![i as u8; 256]).collect();
                let during = resident_kb();
                assert!(
                    during >= before + BURST_KB * 3 / 4,
                    "the burst is resident: {before} -> {during} kB"
                );
                drop(blocks);
                tokio::time::sleep(RETURN_EVERY * 2).await;
                let idle = resident_kb();
                assert!(
                    idle >= before + BURST_KB / 2,
                    "without the collector the freed burst stays: {before} -> {during} -> {idle} kB"
                );
                let collector = tokio::spawn(return_freed_memory(Duration::from_millis(100)));
                tokio::time::sleep(RETURN_EVERY * 2).await;
                collector.abort();
                let after = resident_kb();
                assert!(
                    after <= before + BURST_KB / 4,
                    "the collector gave it back: {before} -> {during} -> {idle} -> {after} kB"
                );
            });
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its heap
/// (`MADV_HUGEPAGE`), and it returns freed memory to the OS a while after a burst; each page
/// touched again is then faulted in and zeroed 2 MiB at a time. On a SUBSCRIBE storm (each
/// subscription keeps ~5 KB, the transactions' memory comes and goes) `clear_page_erms` was
/// 21 % of the server's CPU; with THP off, 4 KiB page faults, server CPU per SUBSCRIBE fell
/// ~6 % (tests/bench/cost.sh, README "Performance"). Same as mimalloc's
/// `MIMALLOC_ALLOW_THP=0`, which cannot be set from inside the process before its heap
/// starts. The kernel checks the flag at each fault, so memory mapped before this call is
/// covered too.
fn no_transparent_huge_pages() {
    // prctl(PR_SET_THP_DISABLE): the flag is kept on the process's address space, so it
    // covers every thread, those started later included.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "PR_SET_THP_DISABLE");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Man { dir } => {
            use clap::CommandFactory;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))
        }
        Command::Tui { config, socket } => {
            let path = match socket {
                Some(s) => s,
                None => match load_config(&config_path(config)) {
                    Ok(cfg) => cfg.control_socket(),
                    Err(e) => {
                        eprintln!(
                            "error: {e}: cannot find the control socket (give it with --socket)"
                        );
                        std::process::exit(3);
                    }
                },
            };
            std::process::exit(busylamp::tui::app::run(path));
        }
        Command::CheckConfig { file } => {
            let Some(file) = config_path(file) else {
                eprintln!("error: no config file given and {PACKAGED_CONFIG} does not exist");
                std::process::exit(2);
            };
            match Config::load(&file) {
                Ok(cfg) => {
                    let users = UserFile::new(&cfg.server.data_dir);
                    let file_users = users.read_all().unwrap_or_else(|e| {
                        eprintln!("warning: {e}");
                        Vec::new()
                    });
                    println!(
                        "{}: OK (domain {}, {} listen address(es), {} user(s) in the config, {} in {}, auth {:?})",
                        file.display(),
                        cfg.server.domain,
                        cfg.server.listen.len(),
                        cfg.users.len(),
                        file_users.len(),
                        users.path().display(),
                        cfg.auth.mode
                    );
                    for warning in cfg
                        .warnings()
                        .into_iter()
                        .chain(cfg.user_warnings(&file_users))
                    {
                        eprintln!("warning: {warning}");
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(2);
                }
            }
        }
        Command::Users { config, action } => {
            let config = config_path(config);
            let cfg = load_config(&config)?;
            let file = UserFile::new(&cfg.server.data_dir);
            match action {
                UsersAction::Add { name, password } => {
                    let password = match password {
                        Some(p) => p,
                        None => {
                            let mut line = String::new();
                            std::io::stdin()
                                .read_line(&mut line)
                                .context("reading the password from standard input")?;
                            line.trim_end_matches(['\r', '\n']).to_string()
                        }
                    };
                    if password.is_empty() {
                        anyhow::bail!(
                            "empty password: give --password or one line on standard input"
                        );
                    }
                    if name.is_empty()
                        || name.contains([':', '@', '"'])
                        || name.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        anyhow::bail!("{name:?} is not a usable SIP user name (no ':', '@', quotes or spaces)");
                    }
                    let realm = cfg.realm();
                    file.add(UserRecord {
                        ha1_md5: Some(digest::ha1(Algorithm::Md5, &name, &realm, &password)),
                        ha1_sha256: Some(digest::ha1(Algorithm::Sha256, &name, &realm, &password)),
                        name: name.clone(),
                        realm: realm.clone(),
                    })?;
                    println!(
                        "user {name} stored for realm {realm} in {} (config: {})",
                        file.path().display(),
                        config_name(&config)
                    );
                    if cfg.users.iter().any(|u| u.name == name) {
                        eprintln!(
                            "warning: {}",
                            busylamp::config::shadowed_user_warning(&name, &config_name(&config))
                        );
                    }
                }
                UsersAction::Remove { name } => {
                    let in_config = cfg.users.iter().any(|u| u.name == name);
                    if in_config {
                        eprintln!(
                            "warning: user {name} is also defined in [[users]] of {}: it stays a user until removed there",
                            config_name(&config)
                        );
                    }
                    if file.remove(&name)? {
                        println!("user {name} removed from {}", file.path().display());
                    } else {
                        eprintln!("no user {name} in {}", file.path().display());
                        std::process::exit(1);
                    }
                }
                UsersAction::List => {
                    for u in file.read_all()? {
                        let algs: Vec<&str> = [
                            ("MD5", u.ha1_md5.is_some()),
                            ("SHA-256", u.ha1_sha256.is_some()),
                        ]
                        .iter()
                        .filter(|(_, has)| *has)
                        .map(|(n, _)| *n)
                        .collect();
                        println!("{}\t{}\t{}", u.name, u.realm, algs.join(","));
                    }
                }
            }
            Ok(())
        }
        Command::Serve { config } => {
            let config = config_path(config);
            let cfg = load_config(&config)?;
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.server.log));
            // Colours only on a terminal: journald and log files get plain text.
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            no_transparent_huge_pages();
            // Before any thread is started: the runtime's threads and the store's writer
            // inherit the class from this one.
            busylamp::sched::apply_realtime_priority(cfg.server.realtime_priority);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("busylamp")
                .build()
                .context("starting the async runtime")?;
            let result = rt.block_on(serve(cfg, config));
            // A flush that overran the grace period must not hold the exit.
            rt.shutdown_timeout(Duration::from_millis(100));
            result
        }
        control => std::process::exit(ctl::run(control)),
    }
}

async fn serve(cfg: Config, config: Option<PathBuf>) -> anyhow::Result<()> {
    let store = DiskStore::open(
        &cfg.server.data_dir,
        cfg.storage.backend,
        Duration::from_millis(cfg.storage.flush_interval_ms),
        cfg.storage.max_queued_writes,
    )?;
    tracing::info!(backend = store.backend(), "database opened");
    let users = UserFile::new(&cfg.server.data_dir);
    let stores = busylamp::server::Stores {
        bindings: store.bindings(),
        presence: store.presence(),
        dialogs: store.dialogs(),
        users: Some(users),
        nonce_key: None,
    };
    let handle = busylamp::server::start(&cfg, stores).await?;
    #[cfg(feature = "mimalloc")]
    let _collector = tokio::spawn(allocator::return_freed_memory(allocator::RETURN_EVERY));
    tracing::info!(config = %config_name(&config), "configuration read");
    tracing::info!(domain = %cfg.server.domain, data_dir = %cfg.server.data_dir.display(), "busylamp ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    // Stop reading, answer what was read (its writes flushed), write queued sends, close the
    // sockets; then flush what else is queued (expiry, call records) and close the database.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    if tokio::time::timeout_at(deadline - STORE_CLOSE_SHARE, handle.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "answers still waiting for the disk at shutdown were dropped (not acknowledged)"
        );
    }
    let closing = tokio::task::spawn_blocking(move || store.close());
    match tokio::time::timeout_at(deadline, closing).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(e).context("final flush at shutdown"),
        Ok(Err(e)) => Err(e).context("final flush at shutdown"),
        Err(_) => anyhow::bail!(
            "the final flush did not finish within {} s; writes not acknowledged may be lost",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
}

/// SIGTERM to exit: systemd's default stop timeout is far longer, but a restart should be quick.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1900);
/// Of the grace, what the final flush and database close get at least.
const STORE_CLOSE_SHARE: Duration = Duration::from_millis(500);

/// The control commands: one call to the running server over its control socket, its answer
/// printed as a table (or as JSON with `--json`).
mod ctl {
    use super::{config_path, load_config, Command, CtlArgs, ListArgs};
    use busylamp::control::client::{CallError, Client};
    use serde_json::{json, Map, Value};
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Duration;

    /// Exit codes, for scripts: the answer was printed.
    pub const OK: i32 = 0;
    /// The server answered with an error (its message on standard error).
    pub const SERVER_ERROR: i32 = 1;
    /// The command line is wrong (clap uses 2 too).
    pub const USAGE: i32 = 2;
    /// The server cannot be reached: not running, permission denied, not a socket, no config.
    pub const UNREACHABLE: i32 = 3;

    /// How long a command waits for its answer: `subscribe` waits for the notifier's answer,
    /// which SIP's timers bound to 32 s.
    const ANSWER_WAIT: Duration = Duration::from_secs(60);

    /// How the answer is shown to people.
    #[derive(Clone, Copy)]
    enum Show {
        Status,
        Registrations,
        Calls,
        Watchers,
        Lines,
        /// A one-line confirmation: what was done, and the result's `id` when it has one.
        Done(&'static str),
        Json,
    }

    impl ListArgs {
        fn params(&self) -> Value {
            let mut p = Map::new();
            if let Some(f) = &self.filter {
                p.insert("filter".into(), json!(f));
            }
            if let Some(o) = self.offset {
                p.insert("offset".into(), json!(o));
            }
            if let Some(l) = self.limit {
                p.insert("limit".into(), json!(l));
            }
            Value::Object(p)
        }
    }

    /// `params` without the members that are `null` (options not given).
    fn object(params: Value) -> Value {
        match params {
            Value::Object(o) => {
                Value::Object(o.into_iter().filter(|(_, v)| !v.is_null()).collect())
            }
            other => other,
        }
    }

    pub fn run(command: Command) -> i32 {
        let (ctl, method, params, show) = match command {
            Command::Status { ctl } => (ctl, "status".to_string(), Value::Null, Show::Status),
            Command::Registrations { list, ctl } => (
                ctl,
                "registrations".into(),
                list.params(),
                Show::Registrations,
            ),
            Command::Calls { list, ctl } => (ctl, "calls".into(), list.params(), Show::Calls),
            Command::Watchers { list, ctl } => {
                (ctl, "subscriptions".into(), list.params(), Show::Watchers)
            }
            Command::Lines { list, ctl } => (ctl, "lines".into(), list.params(), Show::Lines),
            Command::Publish {
                presentity,
                event,
                content_type,
                body,
                expires,
                id,
                ctl,
            } => {
                let body = match body.as_deref() {
                    Some("-") => {
                        let mut text = String::new();
                        if let Err(e) =
                            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                        {
                            eprintln!("error: reading the body from standard input: {e}");
                            return USAGE;
                        }
                        Some(text)
                    }
                    _ => body,
                };
                let params = object(json!({
                    "presentity": presentity,
                    "event": event,
                    "content_type": content_type,
                    "body": body,
                    "expires": expires,
                    "id": id,
                }));
                (ctl, "publish".into(), params, Show::Done("published"))
            }
            Command::Subscribe {
                watcher,
                presentity,
                event,
                expires,
                ctl,
            } => {
                let params = object(json!({
                    "watcher": watcher,
                    "presentity": presentity,
                    "event": event,
                    "expires": expires,
                }));
                (ctl, "subscribe".into(), params, Show::Done("subscribed"))
            }
            Command::Approve {
                watcher,
                presentity,
                event,
                ctl,
            } => {
                let params = object(json!({
                    "watcher": watcher,
                    "presentity": presentity,
                    "event": event,
                }));
                (ctl, "approve".into(), params, Show::Done("approved"))
            }
            Command::Ctl {
                method,
                params,
                ctl,
            } => {
                let params = match params.as_deref().map(serde_json::from_str::<Value>) {
                    None => Value::Null,
                    Some(Ok(v @ (Value::Object(_) | Value::Null))) => v,
                    Some(Ok(_)) => {
                        eprintln!("error: PARAMS must be a JSON object, e.g. '{{\"limit\":10}}'");
                        return USAGE;
                    }
                    Some(Err(e)) => {
                        eprintln!("error: PARAMS is not JSON: {e}");
                        return USAGE;
                    }
                };
                (ctl, method, params, Show::Json)
            }
            Command::Serve { .. }
            | Command::CheckConfig { .. }
            | Command::Users { .. }
            | Command::Tui { .. }
            | Command::Man { .. } => {
                eprintln!("error: not a control command");
                return USAGE;
            }
        };
        let path = match socket(&ctl) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                return UNREACHABLE;
            }
        };
        let mut client = match Client::connect(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return UNREACHABLE;
            }
        };
        client.set_timeout(Some(ANSWER_WAIT));
        if method == "follow" {
            return follow(&mut client);
        }
        match client.call(&method, params) {
            Ok(result) => {
                let text = if ctl.json || matches!(show, Show::Json) {
                    serde_json::to_string_pretty(&result).unwrap_or_default()
                } else {
                    render(show, &result, now())
                };
                println!("{}", text.trim_end());
                OK
            }
            Err(CallError::Rpc(e)) => {
                eprintln!("error: {} (code {})", e.message, e.code);
                SERVER_ERROR
            }
            Err(e @ CallError::Connection { .. }) => {
                eprintln!("error: {e}");
                UNREACHABLE
            }
        }
    }

    /// The control socket: `--socket`, else the config's (`[control] socket`, or
    /// control.sock in its data directory).
    fn socket(ctl: &CtlArgs) -> Result<PathBuf, String> {
        if let Some(s) = &ctl.socket {
            return Ok(s.clone());
        }
        let config = config_path(ctl.config.clone());
        let cfg = load_config(&config)
            .map_err(|e| format!("{e}: cannot find the control socket (give it with --socket)"))?;
        Ok(cfg.control_socket())
    }

    /// `ctl follow`: the stream, one JSON line per notification, until the server goes.
    fn follow(client: &mut Client) -> i32 {
        if let Err(e) = client.follow() {
            eprintln!("error: {e}");
            return if matches!(e, CallError::Rpc(_)) {
                SERVER_ERROR
            } else {
                UNREACHABLE
            };
        }
        client.set_timeout(None);
        let mut out = std::io::stdout().lock();
        loop {
            match client.next_notification() {
                Ok((method, params)) => {
                    let line = json!({ "method": method, "params": params });
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        return OK; // the reader went away (a pipe closed)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return UNREACHABLE;
                }
            }
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// A result as text for people. Fields the server did not send show as `-`.
    fn render(show: Show, v: &Value, now: u64) -> String {
        match show {
            Show::Status => status(v),
            Show::Registrations => list(
                v,
                &["AOR", "CONTACT", "EXPIRES", "FLOW", "USER-AGENT"],
                |item| {
                    let contacts = item["contacts"].as_array().cloned().unwrap_or_default();
                    if contacts.is_empty() {
                        return vec![vec![
                            text(&item["aor"]),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                        ]];
                    }
                    contacts
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            vec![
                                if i == 0 {
                                    text(&item["aor"])
                                } else {
                                    String::new()
                                },
                                text(&c["contact"]),
                                until(&c["expires"], now),
                                text(&c["flow"]),
                                text(&c["user_agent"]),
                            ]
                        })
                        .collect()
                },
            ),
            Show::Calls => list(
                v,
                &["CALL-ID", "CALLER", "CALLEE", "STATE", "SINCE", "BRANCHES"],
                |c| {
                    let branches: Vec<String> = c["branches"]
                        .as_array()
                        .map(|b| {
                            b.iter()
                                .map(|b| format!("{} {}", text(&b["target"]), text(&b["state"])))
                                .collect()
                        })
                        .unwrap_or_default();
                    vec![vec![
                        text(&c["call_id"]),
                        text(&c["caller"]),
                        text(&c["callee"]),
                        text(&c["state"]),
                        ago(&c["since"], now),
                        if branches.is_empty() {
                            "-".into()
                        } else {
                            branches.join(", ")
                        },
                    ]]
                },
            ),
            Show::Watchers => list(
                v,
                &[
                    "WATCHER",
                    "PRESENTITY",
                    "PACKAGE",
                    "STATE",
                    "EXPIRES",
                    "CSEQ",
                    "VERSION",
                    "FAILURES",
                    "LAST",
                    "KIND",
                ],
                // KIND: `watcher` (a SUBSCRIBE we serve) or `api` (one our presence client
                // made for `busylamp subscribe`).
                |s| {
                    vec![vec![
                        text(&s["watcher"]),
                        text(&s["presentity"]),
                        text(&s["package"]),
                        text(&s["state"]),
                        until(&s["expires"], now),
                        text(&s["cseq"]),
                        text(&s["version"]),
                        text(&s["failures"]),
                        text(&s["last_answer"]),
                        text(&s["kind"]),
                    ]]
                },
            ),
            Show::Lines => list(
                v,
                &["LINE", "LABEL", "APPEARANCE", "STATE", "PHONE", "SINCE"],
                |l| {
                    let apps = l["appearances"].as_array().cloned().unwrap_or_default();
                    if apps.is_empty() {
                        return vec![vec![
                            text(&l["aor"]),
                            text(&l["label"]),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                        ]];
                    }
                    apps.iter()
                        .enumerate()
                        .map(|(i, a)| {
                            let first = i == 0;
                            vec![
                                if first {
                                    text(&l["aor"])
                                } else {
                                    String::new()
                                },
                                if first {
                                    text(&l["label"])
                                } else {
                                    String::new()
                                },
                                text(&a["index"]),
                                text(&a["state"]),
                                text(&a["phone"]),
                                ago(&a["since"], now),
                            ]
                        })
                        .collect()
                },
            ),
            Show::Done(what) => match v.get("id") {
                Some(id) => format!("{what}: id {}", text(id)),
                None => format!("{what}: {v}"),
            },
            Show::Json => serde_json::to_string_pretty(v).unwrap_or_default(),
        }
    }

    /// `status`: the version line, then one `name  value` line per member (nested objects
    /// flattened as `a.b`).
    fn status(v: &Value) -> String {
        let mut out = format!(
            "busylamp {} (control API {}), up {}\n",
            text(&v["version"]),
            text(&v["api"]),
            v["uptime"].as_u64().map_or("-".into(), duration)
        );
        let mut rows = Vec::new();
        if let Some(listen) = v["listen"].as_array() {
            let l: Vec<String> = listen.iter().map(text).collect();
            rows.push(vec!["listen".to_string(), l.join(", ")]);
        }
        let mut flat = Vec::new();
        for (k, val) in v.as_object().into_iter().flatten() {
            if !matches!(k.as_str(), "version" | "api" | "uptime" | "listen") {
                // The counts are what people look for: without their prefix.
                let prefix = if k == "counts" {
                    String::new()
                } else {
                    k.clone()
                };
                flatten(&prefix, val, &mut flat);
            }
        }
        rows.extend(flat.into_iter().map(|(k, v)| vec![k, v]));
        out.push_str(&table(&[], &rows));
        out
    }

    fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                for (k, val) in o {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, val, out);
                }
            }
            other => out.push((prefix.to_string(), text(other))),
        }
    }

    /// A `{"total", "items"}` list as a table, `rows` giving each item's rows; a footer when
    /// a page shows fewer than all.
    fn list(v: &Value, headers: &[&str], rows: impl Fn(&Value) -> Vec<Vec<String>>) -> String {
        let Some(items) = v["items"].as_array() else {
            return serde_json::to_string_pretty(v).unwrap_or_default();
        };
        let all: Vec<Vec<String>> = items.iter().flat_map(rows).collect();
        let mut out = table(headers, &all);
        let total = v["total"].as_u64().unwrap_or(items.len() as u64);
        if total != items.len() as u64 {
            out.push_str(&format!(
                "({} of {total}: see --offset and --limit)\n",
                items.len()
            ));
        } else if items.is_empty() {
            out.push_str("(none)\n");
        }
        out
    }

    /// Columns padded to their widest cell, two spaces apart; no padding after the last.
    fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
        let cols = rows
            .iter()
            .map(Vec::len)
            .chain([headers.len()])
            .max()
            .unwrap_or(0);
        let mut width = vec![0; cols];
        let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        for row in rows.iter().chain((!head.is_empty()).then_some(&head)) {
            for (i, cell) in row.iter().enumerate() {
                width[i] = width[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in (!head.is_empty()).then_some(&head).into_iter().chain(rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    line.push_str(&format!("{cell:<w$}  ", w = width[i]));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// A JSON value as a cell: strings without quotes, `null` or absent as `-`.
    fn text(v: &Value) -> String {
        match v {
            Value::Null => "-".into(),
            Value::String(s) if s.is_empty() => "-".into(),
            Value::String(s) => s.chars().filter(|c| !c.is_control()).collect(),
            other => other.to_string(),
        }
    }

    /// A unix time in the future as "in 59m 10s" (the API's times are unix seconds).
    fn until(v: &Value, now: u64) -> String {
        match v.as_u64() {
            Some(t) if t >= now => format!("in {}", duration(t - now)),
            Some(_) => "expired".into(),
            None => text(v),
        }
    }

    /// A unix time in the past as "3m 2s ago".
    fn ago(v: &Value, now: u64) -> String {
        match v.as_u64() {
            Some(t) => format!("{} ago", duration(now.saturating_sub(t))),
            None => text(v),
        }
    }

    fn duration(s: u64) -> String {
        let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
        match (d, h, m) {
            (0, 0, 0) => format!("{s}s"),
            (0, 0, _) => format!("{m}m {s}s"),
            (0, _, _) => format!("{h}h {m}m"),
            _ => format!("{d}d {h}h"),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tables_read_the_lists_and_show_missing_fields_as_dashes() {
            let now = 1_000_000_000;
            let regs = json!({"total": 3, "items": [
                {"aor": "sip:1001@example.test", "contacts": [
                    {"contact": "sip:1001@192.0.2.1:5060", "expires": now + 3600, "user_agent": "Yealink", "flow": null},
                    {"contact": "sip:1001@192.0.2.2:5060", "expires": now + 5}
                ]}
            ]});
            let t = render(Show::Registrations, &regs, now);
            let lines: Vec<&str> = t.lines().collect();
            assert!(
                lines[0].starts_with("AOR") && lines[0].contains("USER-AGENT"),
                "{t}"
            );
            assert!(
                lines[1].contains("sip:1001@example.test")
                    && lines[1].contains("in 1h 0m")
                    && lines[1].ends_with("Yealink"),
                "{t}"
            );
            assert!(
                lines[2].starts_with(' ') && lines[2].contains("in 5s") && lines[2].ends_with('-'),
                "{t}"
            );
            assert!(lines[3].contains("1 of 3"), "{t}");
            assert_eq!(
                render(Show::Calls, &json!({"total": 0, "items": []}), now)
                    .lines()
                    .nth(1),
                Some("(none)")
            );
            let s = render(
                Show::Status,
                &json!({"api": 1, "version": "0.1.0", "uptime": 65, "listen": ["udp:127.0.0.1:5060"], "counts": {"aors": 2, "subscriptions": {"by_state": {"active": 1}}}}),
                now,
            );
            assert!(
                s.starts_with("busylamp 0.1.0 (control API 1), up 1m 5s\n"),
                "{s}"
            );
            for row in [
                ["listen", "udp:127.0.0.1:5060"],
                ["aors", "2"],
                ["subscriptions.by_state.active", "1"],
            ] {
                assert!(
                    s.lines().any(|l| l.split_whitespace().eq(row)),
                    "{row:?}: {s}"
                );
            }
            assert_eq!(
                render(Show::Done("published"), &json!({"id": "a1"}), now),
                "published: id a1"
            );
            // Not a list: shown as JSON rather than lost.
            assert!(render(Show::Lines, &json!({"x": 1}), now).contains("\"x\": 1"));
        }
    }
}
