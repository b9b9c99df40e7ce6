//! The presence server (RFC 6665 SUBSCRIBE/NOTIFY, RFC 3903 PUBLISH): presentities,
//! publications, subscriptions and NOTIFY generation.

pub mod package;
pub mod packages;
