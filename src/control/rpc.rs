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

/// A request (`id` given) or a notification (`id: None`: the sender wants no answer).
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// A string, a number or `null` as the client sent it, echoed in the answer.
    pub id: Option<Value>,
    pub method: String,
    /// An object, or `Null` when the request had no `params`.
    pub params: Value,
}

impl Incoming {
    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }
}

/// A line that is no usable request: the answer it gets (one line, see [`Refusal::line`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The request's id when it could be read, else `null` (JSON-RPC 2.0 §5).
    pub id: Value,
    pub error: RpcError,
}

impl Refusal {
    fn new(id: Value, code: i64, message: impl Into<String>) -> Refusal {
        Refusal {
            id,
            error: RpcError::new(code, message),
        }
    }

    pub fn line(&self) -> String {
        error_line(&self.id, &self.error)
    }
}

/// Members a request object may have; any other is refused (a typo such as `param` would
/// otherwise silently call the method without its parameters).
const REQUEST_MEMBERS: [&str; 4] = ["jsonrpc", "id", "method", "params"];

/// Reads one line (without its `\n`; a trailing `\r` is allowed) as a request. Batches (a
/// JSON array) are refused with [`INVALID_REQUEST`]: send one request per line. `params`
/// must be an object (the methods take named parameters): an array gets [`INVALID_PARAMS`].
pub fn parse_line(line: &[u8]) -> Result<Incoming, Refusal> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let null = || Value::Null;
    let text = std::str::from_utf8(line).map_err(|e| {
        Refusal::new(
            null(),
            PARSE_ERROR,
            format!("the line is not UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Refusal::new(
            null(),
            PARSE_ERROR,
            "empty line: send one JSON-RPC request per line",
        ));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(null(), PARSE_ERROR, format!("not JSON: {e}")))?;
    let obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(Refusal::new(
                null(),
                INVALID_REQUEST,
                "batch requests are not supported: send one request object per line",
            ))
        }
        other => {
            return Err(Refusal::new(
                null(),
                INVALID_REQUEST,
                format!(
                    "a request is a JSON object with \"jsonrpc\", \"method\", \"params\" and \"id\", not {}",
                    kind_of(&other)
                ),
            ))
        }
    };
    // The id first, so that every later refusal can name the request it answers.
    let id = match obj.get("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(v.clone()),
        Some(other) => {
            return Err(Refusal::new(
                null(),
                INVALID_REQUEST,
                format!(
                    "field \"id\" must be a string, a number or null, not {}",
                    kind_of(other)
                ),
            ))
        }
    };
    let answer_id = id.clone().unwrap_or(Value::Null);
    let refuse = |code, message: String| Refusal::new(answer_id.clone(), code, message);
    if let Some(unknown) = obj.keys().find(|k| !REQUEST_MEMBERS.contains(&k.as_str())) {
        return Err(refuse(
            INVALID_REQUEST,
            format!(
                "unknown field {unknown:?}: a request has \"jsonrpc\", \"id\", \"method\" and \"params\""
            ),
        ));
    }
    match obj.get("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        Some(other) => {
            return Err(refuse(
                INVALID_REQUEST,
                format!("field \"jsonrpc\" must be \"2.0\", not {other}"),
            ))
        }
        None => {
            return Err(refuse(
                INVALID_REQUEST,
                "field \"jsonrpc\" is missing: it must be \"2.0\"".into(),
            ))
        }
    }
    let method = match obj.get("method") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(Value::String(_)) => {
            return Err(refuse(INVALID_REQUEST, "field \"method\" is empty".into()))
        }
        Some(other) => {
            return Err(refuse(
                INVALID_REQUEST,
                format!("field \"method\" must be a string, not {}", kind_of(other)),
            ))
        }
        None => {
            return Err(refuse(
                INVALID_REQUEST,
                "field \"method\" is missing".into(),
            ))
        }
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(Value::Array(_)) => {
            return Err(refuse(
                INVALID_PARAMS,
                "field \"params\" must be an object of named parameters, not an array".into(),
            ))
        }
        Some(other) => {
            return Err(refuse(
                INVALID_REQUEST,
                format!("field \"params\" must be an object, not {}", kind_of(other)),
            ))
        }
    };
    Ok(Incoming { id, method, params })
}

/// How a refusal names a JSON value's type.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The line (with its `\n`) answering request `id` with `result`.
pub fn result_line(id: &Value, result: &Value) -> String {
    line(&serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result }))
}

/// The line (with its `\n`) answering request `id` (`null` when unknown) with `error`.
pub fn error_line(id: &Value, error: &RpcError) -> String {
    line(&serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": error.to_json() }))
}

/// A notification line (with its `\n`): the server's `snapshot`, `change` and `resync`.
pub fn notification_line(method: &str, params: Option<Value>) -> String {
    let mut n = serde_json::json!({ "jsonrpc": "2.0", "method": method });
    // Moved in, not cloned: a `follow` snapshot is megabytes (5,000 AORs and 10,000
    // watchers: 3.7 MB), and a deep copy of it cost as much as writing it.
    if let Some(p) = params {
        n["params"] = p;
    }
    line(&n)
}

/// A request line (with its `\n`), for clients.
pub fn request_line(id: u64, method: &str, params: &Value) -> String {
    let mut r = serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": method });
    if !params.is_null() {
        r["params"] = params.clone();
    }
    line(&r)
}

/// Compact JSON never holds a raw newline (strings escape it), so one value is one line.
fn line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// What a client reads from the server: an answer to one of its requests, or a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Answer {
        id: Value,
        result: Result<Value, RpcError>,
    },
    Notification {
        method: String,
        params: Value,
    },
}

/// Reads one line from the server (the client's side of [`result_line`], [`error_line`],
/// [`notification_line`]). The error says what is wrong with the line.
pub fn parse_reply(line: &[u8]) -> Result<Reply, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let v: Value =
        serde_json::from_slice(line).map_err(|e| format!("the server sent no JSON: {e}"))?;
    let Value::Object(mut o) = v else {
        return Err("the server sent a JSON value that is no object".into());
    };
    if let Some(Value::String(method)) = o.get("method") {
        return Ok(Reply::Notification {
            method: method.clone(),
            params: o.remove("params").unwrap_or(Value::Null),
        });
    }
    let id = o.remove("id").unwrap_or(Value::Null);
    if let Some(result) = o.remove("result") {
        return Ok(Reply::Answer {
            id,
            result: Ok(result),
        });
    }
    match o.remove("error") {
        Some(Value::Object(e)) => {
            let code = e
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(INTERNAL_ERROR);
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string();
            Ok(Reply::Answer {
                id,
                result: Err(RpcError {
                    code,
                    message,
                    data: e.get("data").cloned(),
                }),
            })
        }
        _ => Err("the server's answer has neither \"result\" nor \"error\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(line: &str) -> Refusal {
        parse_line(line.as_bytes()).expect_err(line)
    }

    #[test]
    fn requests_and_notifications_are_read() {
        let r = parse_line(br#"{"jsonrpc":"2.0","id":7,"method":"status"}"#).unwrap();
        assert_eq!(
            r,
            Incoming {
                id: Some(json!(7)),
                method: "status".into(),
                params: Value::Null
            }
        );
        let r = parse_line(
            b"{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"calls\",\"params\":{\"limit\":5}}\r",
        )
        .unwrap();
        assert_eq!(r.id, Some(json!("a")));
        assert_eq!(r.params, json!({"limit": 5}));
        let n = parse_line(br#"{"jsonrpc":"2.0","method":"status"}"#).unwrap();
        assert!(n.is_notification());
        let n = parse_line(br#"{"jsonrpc":"2.0","method":"status","id":null}"#).unwrap();
        assert_eq!(
            n.id,
            Some(Value::Null),
            "an id of null is a request, not a notification"
        );
    }

    #[test]
    fn bad_lines_get_the_code_and_a_message_naming_the_field() {
        for (line, code, id, words) in [
            ("", PARSE_ERROR, Value::Null, "empty line"),
            ("{\"jsonrpc\":", PARSE_ERROR, Value::Null, "not JSON"),
            ("[]", INVALID_REQUEST, Value::Null, "batch"),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"status"}]"#,
                INVALID_REQUEST,
                Value::Null,
                "batch",
            ),
            ("42", INVALID_REQUEST, Value::Null, "not a number"),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"status"}"#,
                INVALID_REQUEST,
                Value::Null,
                "\"id\"",
            ),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"status"}"#,
                INVALID_REQUEST,
                json!(1),
                "\"jsonrpc\"",
            ),
            (
                r#"{"id":1,"method":"status"}"#,
                INVALID_REQUEST,
                json!(1),
                "\"jsonrpc\" is missing",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1}"#,
                INVALID_REQUEST,
                json!(1),
                "\"method\" is missing",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":3}"#,
                INVALID_REQUEST,
                json!(1),
                "\"method\" must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":"x","method":"status","params":[1]}"#,
                INVALID_PARAMS,
                json!("x"),
                "\"params\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"status","params":"a"}"#,
                INVALID_REQUEST,
                json!(1),
                "\"params\" must be an object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"status","param":{}}"#,
                INVALID_REQUEST,
                json!(1),
                "unknown field \"param\"",
            ),
        ] {
            let r = refused(line);
            assert_eq!(r.error.code, code, "{line}: {r:?}");
            assert_eq!(r.id, id, "{line}");
            assert!(
                r.error.message.contains(words),
                "{line}: {}",
                r.error.message
            );
        }
        let r = parse_line(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!(r.error.code, PARSE_ERROR);
        assert!(r.error.message.contains("UTF-8"));
    }

    #[test]
    fn every_line_built_is_one_line_and_reads_back() {
        let id = json!(3);
        let tricky = json!({"text": "a\nb\r\n\u{2028}"});
        let l = result_line(&id, &tricky);
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.ends_with('\n'));
        assert_eq!(
            parse_reply(l.trim_end().as_bytes()).unwrap(),
            Reply::Answer {
                id: id.clone(),
                result: Ok(tricky)
            }
        );
        let e = RpcError::invalid_params("field \"limit\" must be at most 1000");
        let l = error_line(&id, &e);
        assert_eq!(l.matches('\n').count(), 1);
        assert_eq!(
            parse_reply(l.trim_end().as_bytes()).unwrap(),
            Reply::Answer { id, result: Err(e) }
        );
        let l = notification_line("resync", None);
        assert_eq!(l, "{\"jsonrpc\":\"2.0\",\"method\":\"resync\"}\n");
        assert_eq!(
            parse_reply(l.trim_end().as_bytes()).unwrap(),
            Reply::Notification {
                method: "resync".into(),
                params: Value::Null
            }
        );
        let l = request_line(9, "calls", &json!({"limit": 1}));
        let r = parse_line(l.trim_end().as_bytes()).unwrap();
        assert_eq!(r.id, Some(json!(9)));
        assert_eq!(r.params, json!({"limit": 1}));
        assert!(parse_line(
            request_line(1, "status", &Value::Null)
                .trim_end()
                .as_bytes()
        )
        .unwrap()
        .params
        .is_null());
    }

    #[test]
    fn replies_that_are_not_json_rpc_are_named() {
        assert!(parse_reply(b"nope").unwrap_err().contains("no JSON"));
        assert!(parse_reply(b"[1]").unwrap_err().contains("no object"));
        assert!(parse_reply(br#"{"id":1}"#).unwrap_err().contains("neither"));
    }
}
