//! busylamp: SIP registrar, edge proxy and presence server for desk phones, in one process.
//! The data flow and the module map (what each module owns) are in the README's
//! "Architecture" section; each module owns one thing.

pub mod auth;
pub mod bla;
pub mod clock;
pub mod config;
pub mod control;
pub mod deadline;
pub mod dialog;
pub mod domain;
pub mod drain;
pub mod events;
pub mod hashing;
pub mod ids;
pub mod logs;
pub mod presence;
pub mod proxy;
pub mod pua;
pub mod ratelimit;
pub mod registrar;
pub mod router;
pub mod sched;
pub mod server;
pub mod sip;
pub mod storage;
pub mod transaction;
pub mod transport;
pub mod tui;
