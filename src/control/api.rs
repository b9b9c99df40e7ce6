//! The control API's methods over the server's services (see the README's "Control API").

use super::rpc::{self, RpcError};
use super::{Answer, Methods};
use crate::server::Core;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct Api {
    core: Arc<Core>,
    started: tokio::time::Instant,
}

impl Api {
    pub fn new(core: Arc<Core>) -> Arc<Api> {
        Arc::new(Api {
            core,
            started: tokio::time::Instant::now(),
        })
    }

    fn status(&self) -> Value {
        json!({
            "api": rpc::API_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": self.started.elapsed().as_secs(),
            "counts": {
                "aors": self.core.registrar.aor_count(),
                "bindings": self.core.registrar.binding_count(),
                "publications": self.core.presence.publication_count(),
                "subscriptions": self.core.presence.subscription_count(),
                "shared_lines": self.core.bla.lines().len(),
            },
        })
    }
}

impl Methods for Api {
    fn call(&self, method: &str, _params: Value) -> Answer {
        let result = match method {
            "status" => Ok(self.status()),
            other => Err(RpcError::new(
                rpc::METHOD_NOT_FOUND,
                format!("unknown method {other:?}"),
            )),
        };
        Box::pin(async move { result })
    }

    fn snapshot(&self) -> Value {
        json!({ "status": self.status() })
    }
}
