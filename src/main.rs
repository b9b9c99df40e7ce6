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
    about = "SIP registrar, edge proxy and presence server for desk phones"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults without --config).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and say what is wrong with it.
    CheckConfig { file: PathBuf },
    /// Manage the users kept in the data directory (only HA1 hashes are stored).
    Users {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: UsersAction,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Add or replace a user. The password is read from --password or from standard input.
    Add {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    Remove {
        name: String,
    },
    List,
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                println!(
                    "{}: OK (domain {}, {} listen address(es), {} user(s), auth {:?})",
                    file.display(),
                    cfg.server.domain,
                    cfg.server.listen.len(),
                    cfg.users.len(),
                    cfg.auth.mode
                );
                for warning in cfg.warnings() {
                    eprintln!("warning: {warning}");
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        },
        Command::Users { config, action } => {
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
                        "user {name} stored for realm {realm} in {}",
                        file.path().display()
                    );
                }
                UsersAction::Remove { name } => {
                    if file.remove(&name)? {
                        println!("user {name} removed");
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
            let result = rt.block_on(serve(cfg));
            // A flush that overran the grace period must not hold the exit.
            rt.shutdown_timeout(Duration::from_millis(100));
            result
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
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
