//! The control plane: a JSON-RPC 2.0 API on a Unix socket for the `busylamp` admin commands,
//! the dashboard, scripts and monitoring.

pub mod rpc;
