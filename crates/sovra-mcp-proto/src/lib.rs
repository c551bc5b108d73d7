//! The Model Context Protocol as Sovra's `/mcp` speaks it, without IO.
//!
//! - [`parse`] reads one JSON-RPC 2.0 message of a `POST` body into a
//!   [`Message`] (request, notification or a client's response), or the
//!   JSON-RPC error to answer ([`RpcError`]: parse error, invalid request).
//! - [`negotiate`] picks the protocol revision of a session
//!   ([`SUPPORTED_VERSIONS`], newest first), and [`is_supported`] checks a
//!   `MCP-Protocol-Version` header.
//! - [`tools`] is the tool catalogue (names, descriptions, JSON Schemas of
//!   their inputs) and turns a `tools/call` into the REST or Storage
//!   request that carries it out ([`tools::Action`]).
//! - [`RateLimit`] is a token bucket per caller, the clock passed in.
//!
//! The HTTP half (sessions, credentials, running the actions as the
//! caller) is `sovra-server`'s `mcp.rs`.

pub mod tools;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// Protocol revisions this server speaks, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];

/// The revision a request without `MCP-Protocol-Version` is taken to speak
/// (the streamable HTTP transport's rule).
pub const DEFAULT_VERSION: &str = "2025-03-26";

/// JSON-RPC's error codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// The revision to answer an `initialize` that asked for `requested`: the
/// same when supported, else the newest this server has (the client then
/// decides whether it can go on).
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|asked| SUPPORTED_VERSIONS.iter().find(|v| **v == asked))
        .copied()
        .unwrap_or(SUPPORTED_VERSIONS[0])
}

/// Whether a `MCP-Protocol-Version` header names a revision spoken here.
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// A JSON-RPC error, with the id of the request it answers (`null` when
/// the request's id could not be read).
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub id: Value,
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(id: Value, code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            id,
            code,
            message: message.into(),
        }
    }

    /// The error response object.
    pub fn to_json(&self) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": self.id,
            "error": {"code": self.code, "message": self.message},
        })
    }
}

/// One message a client sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Expects a response with the same `id` (a string or an integer).
    Request {
        id: Value,
        method: String,
        params: Map<String, Value>,
    },
    /// Expects nothing.
    Notification { method: String },
    /// A client's result or error for a server's request (this server
    /// sends none, so it is accepted and dropped).
    Response,
}

/// Reads one JSON-RPC message. Batches (JSON arrays) are refused: the
/// 2025-06-18 revision removed them, and no client of the newer revisions
/// sends them.
pub fn parse(body: &[u8]) -> Result<Message, RpcError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        RpcError::new(
            Value::Null,
            PARSE_ERROR,
            "Parse error: the body is not JSON",
        )
    })?;
    let Value::Object(object) = value else {
        let message = if value.is_array() {
            "Invalid Request: JSON-RPC batches are not supported"
        } else {
            "Invalid Request: a message is a JSON object"
        };
        return Err(RpcError::new(Value::Null, INVALID_REQUEST, message));
    };
    // The id, when it is one a response can carry back.
    let id = match object.get("id") {
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n.clone())),
        Some(_) => {
            return Err(RpcError::new(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: id must be a string or an integer",
            ));
        }
        None => None,
    };
    let invalid = |message: &str| {
        RpcError::new(
            id.clone().unwrap_or(Value::Null),
            INVALID_REQUEST,
            format!("Invalid Request: {message}"),
        )
    };
    if object.get("jsonrpc") != Some(&Value::String("2.0".to_owned())) {
        return Err(invalid("jsonrpc must be \"2.0\""));
    }
    match object.get("method") {
        Some(Value::String(method)) => {
            let params = match object.get("params") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(params)) => params.clone(),
                Some(_) => return Err(invalid("params must be an object")),
            };
            Ok(match id {
                Some(id) => Message::Request {
                    id,
                    method: method.clone(),
                    params,
                },
                None => Message::Notification {
                    method: method.clone(),
                },
            })
        }
        Some(_) => Err(invalid("method must be a string")),
        None if id.is_some() && (object.contains_key("result") || object.contains_key("error")) => {
            Ok(Message::Response)
        }
        None => Err(invalid("a request needs a method")),
    }
}

/// A successful response.
pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// The result of `initialize` for the negotiated `version`.
pub fn initialize_result(version: &str, instructions: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {
            "name": "sovra",
            "title": "Sovra",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "instructions": instructions,
    })
}

/// A `tools/call` result: one text item; `is_error` marks a refusal the
/// model should read (an MCP tool error), not a protocol failure.
pub fn tool_result(text: String, is_error: bool) -> Value {
    json!({
        "content": [{"type": "text", "text": text}],
        "isError": is_error,
    })
}

/// Whether a browser page from `origin` may call the endpoint (DNS
/// rebinding): its origin must be the server's own public origin or one
/// of `allowed` (`*` allows any). Requests without `Origin` (every
/// non-browser client) are not concerned.
pub fn origin_allowed(origin: &str, public_origin: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
        || public_origin.is_some_and(|p| p.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let end = rest
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| url.len() - rest.len() + i);
    Some(&url[..end])
}

/// Token buckets per caller: `max` calls, refilled at `max` per minute.
#[derive(Debug, Default)]
pub struct RateLimit {
    buckets: HashMap<String, (Instant, f64)>,
}

impl RateLimit {
    /// Takes a token for `key`: `Err(seconds to wait)` when none is left.
    /// `per_minute` 0 is no limit.
    pub fn hit(&mut self, key: &str, per_minute: u32, now: Instant) -> Result<(), u64> {
        if per_minute == 0 {
            return Ok(());
        }
        let max = f64::from(per_minute);
        let rate = max / Duration::from_secs(60).as_secs_f64();
        if self.buckets.len() > 100_000 {
            // Full buckets carry no state.
            self.buckets.retain(|_, (at, left)| {
                *left + now.saturating_duration_since(*at).as_secs_f64() * rate < max
            });
        }
        let (at, left) = self.buckets.entry(key.to_owned()).or_insert((now, max));
        *left = (*left + now.saturating_duration_since(*at).as_secs_f64() * rate).min(max);
        *at = now;
        if *left < 1.0 {
            let wait = (1.0 - *left) / rate - 1e-6;
            return Err((wait.ceil() as u64).max(1));
        }
        *left -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
