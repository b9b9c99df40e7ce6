//! The presence user agent: in-process publishers that feed the presence server.

pub mod dialoginfo;
