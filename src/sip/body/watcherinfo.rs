//! RFC 3858 watcherinfo documents (`application/watcherinfo+xml`). Placeholder renderer until
//! the body module lands.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherStatus {
    Pending,
    Active,
    Waiting,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherEvent {
    Subscribe,
    Approved,
    Deactivated,
    Probation,
    Rejected,
    Timeout,
    Giveup,
    Noresource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    pub id: String,
    pub status: WatcherStatus,
    pub event: WatcherEvent,
    pub uri: String,
    pub display_name: Option<String>,
    pub duration_subscribed: Option<u64>,
    pub expiration: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherInfo {
    pub version: u32,
    pub full: bool,
    pub resource: String,
    pub package: String,
    pub watchers: Vec<Watcher>,
}

pub fn render(_w: &WatcherInfo) -> String {
    String::new()
}
