//! The control plane: a JSON-RPC 2.0 API on a Unix socket for the `busylamp` admin commands,
//! the dashboard, scripts and monitoring. It reaches into the services only through their
//! snapshots and the event bus (DESIGN.md: thin events, pulled snapshots).

pub mod api;
pub mod client;
pub mod follow;
pub mod metrics;
pub mod rpc;
pub mod server;

use rpc::RpcError;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// What a method call resolves to.
pub type Answer = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;

/// The methods the control socket serves ([`api::Api`] in the server; fakes in tests).
pub trait Methods: Send + Sync + 'static {
    /// One request: `method` with its `params` (an object, or `Null` when the request had
    /// none). Unknown methods answer [`rpc::METHOD_NOT_FOUND`].
    fn call(&self, method: &str, params: Value) -> Answer;
    /// The full state a `follow` stream starts with (and starts again with after a `resync`).
    fn snapshot(&self) -> Value;
}
