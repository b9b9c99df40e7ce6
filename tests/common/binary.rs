//! The real `busylamp` binary on a temp data dir and a free loopback port, for kill -9 and
//! restart tests. Killed and its directory removed on every path (Drop).

#![allow(dead_code)]

use super::answers_options_within;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port number free on 127.0.0.1 for both UDP and TCP.
pub fn free_udp_and_tcp_port() -> u16 {
    loop {
        let port = free_udp_port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The real binary on a temp data dir; killed and the dir removed on every path (Drop).
pub struct Busylamp {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pub addr: SocketAddr,
}

impl Busylamp {
    /// `extra_config` is TOML appended after `[server]` and `[auth]` (sections of its own).
    pub fn new(name: &str, extra_config: &str) -> Busylamp {
        Busylamp::listening(name, extra_config, false)
    }

    /// As [`Busylamp::new`], listening on TCP as well, at the same port number as UDP.
    pub fn with_tcp(name: &str, extra_config: &str) -> Busylamp {
        Busylamp::listening(name, extra_config, true)
    }

    fn listening(name: &str, extra_config: &str, tcp: bool) -> Busylamp {
        let dir =
            std::env::temp_dir().join(format!("busylamp-kill9-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = if tcp {
            free_udp_and_tcp_port()
        } else {
            free_udp_port()
        };
        let listen = if tcp {
            format!("\"udp:127.0.0.1:{port}\", \"tcp:127.0.0.1:{port}\"")
        } else {
            format!("\"udp:127.0.0.1:{port}\"")
        };
        // BUSYLAMP_TEST_BACKEND=sled|redb runs these tests on that database instead of the
        // default one (`[storage] backend`).
        let extra_config = match std::env::var("BUSYLAMP_TEST_BACKEND") {
            Ok(b) if !b.is_empty() => {
                let key = format!("backend = \"{b}\"");
                if extra_config.contains("[storage]") {
                    extra_config.replacen("[storage]", &format!("[storage]\n{key}"), 1)
                } else {
                    format!("{extra_config}\n[storage]\n{key}\n")
                }
            }
            _ => extra_config.to_string(),
        };
        let config = dir.join("busylamp.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
domain = "example.test"
listen = [{listen}]
data_dir = "{}"
log = "warn"
[auth]
trusted = ["127.0.0.0/8"]
trusted_for = ["calls", "register", "subscribe", "publish"]
{extra_config}
"#,
                dir.join("data").display()
            ),
        )
        .unwrap();
        let log = dir.join("serve.log");
        let mut b = Busylamp {
            child: None,
            dir,
            config,
            log,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        b.start();
        b
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_busylamp"))
                .arg("serve")
                .arg("--config")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start busylamp"),
        );
    }

    /// SIGKILL (std's `Child::kill` on Unix) to this child's pid, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            let _ = c.wait();
        }
    }

    /// SIGTERM to this child's pid (through the `kill` utility), then waits up to `within`
    /// for it to exit. `None` when it is still running (Drop kills it).
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", c.id());
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().expect("wait for busylamp") {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The config file it runs with (for the admin commands a test runs beside it).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub async fn wait_ready(&self) {
        assert!(
            answers_options_within(self.addr, Duration::from_secs(20)).await,
            "server did not come up within 20 s\n{}",
            self.log_text()
        );
    }
}

impl Drop for Busylamp {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
