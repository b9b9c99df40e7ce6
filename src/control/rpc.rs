//! JSON-RPC 2.0 (https://www.jsonrpc.org/specification) as the control socket speaks it: one
//! request, notification or answer per line. Pure: text in, typed values out.

use serde_json::Value;

/// The version of the control API, reported by `status` as `"api"`.
pub const API_VERSION: u32 = 1;

/// Standard JSON-RPC error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Application errors (JSON-RPC reserves -32000..-32099 for servers).
/// The thing named does not exist (a user, a subscription id, a rule).
pub const NOT_FOUND: i64 = -32004;
/// The server refused: a quota, a full table, storage busy.
pub const REFUSED: i64 = -32003;

/// A JSON-RPC error object; `message` names the bad field or the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn not_found(message: impl Into<String>) -> RpcError {
        RpcError::new(NOT_FOUND, message)
    }

    pub fn to_json(&self) -> Value {
        let mut e = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}
