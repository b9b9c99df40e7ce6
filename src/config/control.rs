//! `[control]`: the control socket (JSON-RPC for the `busylamp` admin commands, scripts and
//! the dashboard) and the optional metrics endpoint.

use super::*;

/// `[control]`: where the control API listens and what one client may send.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Path of the control socket (absolute). Empty: `control.sock` in the data directory.
    /// Created with mode 0660 and the data directory's group, so the service user and its
    /// group reach it and nobody else does.
    pub socket: PathBuf,
    /// Most control clients connected at once; more are answered with an error and closed.
    pub max_clients: usize,
    /// Longest JSON line a control client may send, in bytes; a longer one is answered with
    /// an error and the connection is closed.
    pub max_line: usize,
    /// Address of the Prometheus endpoint (`/metrics`), e.g. "127.0.0.1:9464". Empty
    /// (`None`): no endpoint.
    #[serde(deserialize_with = "metrics_address")]
    pub metrics: Option<SocketAddr>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::new(),
            max_clients: 32,
            max_line: 65536,
            metrics: None,
        }
    }
}

/// The control socket's file name in the data directory when `[control] socket` is empty.
pub const DEFAULT_CONTROL_SOCKET: &str = "control.sock";

/// Longest path a Unix socket address holds on Linux (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

fn metrics_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    values::parsed(d, |s| {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<SocketAddr>().map(Some).map_err(|_| {
            BadValue::new(
                format!("{s:?} is not ADDRESS:PORT"),
                "write e.g. \"127.0.0.1:9464\" (IPv6: \"[::1]:9464\"), or \"\" for no metrics endpoint",
            )
        })
    })
}

impl Config {
    /// The control socket's path: `[control] socket`, or `control.sock` in the data
    /// directory.
    pub fn control_socket(&self) -> PathBuf {
        if self.control.socket.as_os_str().is_empty() {
            self.server.data_dir.join(DEFAULT_CONTROL_SOCKET)
        } else {
            self.control.socket.clone()
        }
    }

    pub(super) fn validate_control(
        &self,
        bad: &dyn Fn(&str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let c = &self.control;
        if !c.socket.as_os_str().is_empty() && !c.socket.is_absolute() {
            return Err(bad(
                "control.socket",
                format!("{:?} is a relative path", c.socket.display().to_string()),
                "use an absolute path, e.g. \"/run/busylamp/control.sock\", or \"\" for control.sock in the data directory",
            ));
        }
        let path = self.control_socket();
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            let key = if c.socket.as_os_str().is_empty() {
                "server.data_dir"
            } else {
                "control.socket"
            };
            return Err(bad(
                key,
                format!(
                    "the control socket {} is {len} bytes long, more than the {MAX_SOCKET_PATH} a Unix socket path may have",
                    path.display()
                ),
                "use a shorter path, or set [control] socket to a short absolute path",
            ));
        }
        if !(1..=1024).contains(&c.max_clients) {
            return Err(bad(
                "control.max_clients",
                format!("{} is out of range", c.max_clients),
                "use a number from 1 to 1024 (default 32)",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&c.max_line) {
            return Err(bad(
                "control.max_line",
                format!("{} is out of range", c.max_line),
                "use a byte count from 1024 to 16777216 (default 65536)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_put_the_socket_in_the_data_directory() {
        let c = Config::default();
        assert_eq!(
            c.control_socket(),
            PathBuf::from("/var/lib/busylamp/control.sock")
        );
        assert_eq!(c.control.max_clients, 32);
        assert_eq!(c.control.max_line, 65536);
        assert_eq!(c.control.metrics, None);
    }

    #[test]
    fn keys_are_read_and_checked() {
        let c = Config::from_toml(
            "[control]\nsocket = \"/run/b.sock\"\nmax_clients = 4\nmax_line = 2048\nmetrics = \"127.0.0.1:9464\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.control_socket(), PathBuf::from("/run/b.sock"));
        assert_eq!(c.control.max_clients, 4);
        assert_eq!(c.control.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        for (text, key) in [
            ("[control]\nsocket = \"rel.sock\"\n", "control.socket"),
            ("[control]\nmax_clients = 0\n", "control.max_clients"),
            ("[control]\nmax_line = 10\n", "control.max_line"),
            ("[control]\nmetrics = \"localhost\"\n", "control.metrics"),
            ("[control]\nsocke = \"/x\"\n", "socke"),
        ] {
            let e = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let long = format!("[server]\ndata_dir = \"/{}\"\n", "d".repeat(100));
        let e = Config::from_toml(&long, "t.toml").unwrap_err().to_string();
        assert!(e.contains("server.data_dir") && e.contains("107"), "{e}");
    }
}
