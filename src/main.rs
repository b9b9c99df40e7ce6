//! `busylamp`: serve, check-config, users.

use anyhow::Context;
use busylamp::config::Config;
use busylamp::sip::digest::{self, Algorithm};
use busylamp::storage::{SledStore, UserFile, UserRecord};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "busylamp",
    version,
    about = "SIP registrar, edge proxy and presence server for desk phones",
    after_help = "Without --config, every command reads /etc/busylamp/busylamp.toml when it exists \
(the .deb's config), else the built-in defaults; the environment variable BUSYLAMP_CONFIG \
names another such default file."
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
    /// Write the man pages (busylamp.1, busylamp-users.1, ...) into a directory.
    #[command(hide = true)]
    Man { dir: PathBuf },
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Man { dir } => {
            use clap::CommandFactory;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))
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
    }
}

async fn serve(cfg: Config, config: Option<PathBuf>) -> anyhow::Result<()> {
    let store = SledStore::open_bounded(
        &cfg.server.data_dir,
        Duration::from_millis(cfg.storage.flush_interval_ms),
        cfg.storage.max_queued_writes,
    )?;
    let users = UserFile::new(&cfg.server.data_dir);
    let store = Arc::new(store);
    let stores = busylamp::server::Stores {
        bindings: store.clone(),
        presence: store.clone(),
        dialogs: store.clone(),
        users: Some(users),
        nonce_key: None,
    };
    let handle = busylamp::server::start(&cfg, stores).await?;
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
