//! The event packages the presence server serves, each behind [`EventPackage`].

use super::package::EventPackage;

/// The package for an Event header value's key: `presence`, `dialog`, `dialog;sla`,
/// `message-summary`. `presence.winfo` is served by the core (its state is the watcher list,
/// not publications), so it is not here.
pub fn lookup(key: &str) -> Option<&'static dyn EventPackage> {
    let _ = key;
    None
}
