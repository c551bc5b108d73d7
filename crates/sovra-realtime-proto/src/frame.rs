//! Phoenix channel frames.
//!
//! Every message has five fields: `join_ref`, `ref`, `topic`, `event` and
//! `payload`. vsn 1.0.0 sends them as a JSON object per text frame; vsn
//! 2.0.0 as a JSON array `[join_ref, ref, topic, event, payload]`, plus two
//! binary kinds for user broadcasts:
//!
//! ```text
//! kind 3 (client → server): u8 3 | u8 join_ref_len | u8 ref_len | u8 topic_len | u8 event_len
//!                           | u8 meta_len | u8 encoding | join_ref | ref | topic | event | meta | payload
//! kind 4 (server → client): u8 4 | u8 topic_len | u8 event_len | u8 meta_len | u8 encoding
//!                           | topic | event | meta | payload
//! encoding: 0 = raw bytes, 1 = JSON text
//! ```

use serde_json::{Map, Value, json};

/// The protocol version a socket speaks (`vsn` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// `1.0.0` or `2.0.0`; absent means 1.0.0.
    pub fn parse(text: Option<&str>) -> Option<Vsn> {
        match text {
            None | Some("1.0.0") | Some("1.0") => Some(Vsn::V1),
            Some("2.0.0") | Some("2.0") => Some(Vsn::V2),
            _ => None,
        }
    }
}

/// One channel message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
    /// The raw bytes of a binary broadcast (kind 3 with encoding 0); the
    /// payload's `payload` is then `null`.
    pub binary: Option<Vec<u8>>,
}

/// Why a frame could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame does not have the shape of a channel message")]
    Shape,
    #[error("binary frame is truncated or of an unknown kind")]
    Binary,
}

fn opt_string(value: Option<&Value>) -> Result<Option<String>, FrameError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(FrameError::Shape),
    }
}

fn payload(value: Option<&Value>) -> Value {
    match value {
        Some(Value::Object(map)) => Value::Object(map.clone()),
        _ => Value::Object(Map::new()),
    }
}

/// Reads a text frame.
pub fn decode_text(vsn: Vsn, text: &str) -> Result<Message, FrameError> {
    let value: Value =
        serde_json::from_str(text).map_err(|err| FrameError::Json(err.to_string()))?;
    match (vsn, &value) {
        (_, Value::Array(items)) if items.len() == 5 => {
            let topic = items[2].as_str().ok_or(FrameError::Shape)?.to_owned();
            let event = items[3].as_str().ok_or(FrameError::Shape)?.to_owned();
            Ok(Message {
                join_ref: opt_string(items.first())?,
                msg_ref: opt_string(items.get(1))?,
                topic,
                event,
                payload: payload(items.get(4)),
                binary: None,
            })
        }
        (_, Value::Object(map)) => {
            let topic = map
                .get("topic")
                .and_then(Value::as_str)
                .ok_or(FrameError::Shape)?
                .to_owned();
            let event = map
                .get("event")
                .and_then(Value::as_str)
                .ok_or(FrameError::Shape)?
                .to_owned();
            Ok(Message {
                join_ref: opt_string(map.get("join_ref"))?,
                msg_ref: opt_string(map.get("ref"))?,
                topic,
                event,
                payload: payload(map.get("payload")),
                binary: None,
            })
        }
        _ => Err(FrameError::Shape),
    }
}

/// Reads a binary frame (kind 3, a user broadcast) as the equivalent
/// `broadcast` message.
pub fn decode_binary(bytes: &[u8]) -> Result<Message, FrameError> {
    if bytes.len() < 7 || bytes[0] != 3 {
        return Err(FrameError::Binary);
    }
    let lens = [bytes[1], bytes[2], bytes[3], bytes[4], bytes[5]].map(usize::from);
    let encoding = bytes[6];
    let mut at: usize = 7;
    let mut field = |len: usize| -> Result<&[u8], FrameError> {
        let end = at.checked_add(len).ok_or(FrameError::Binary)?;
        let slice = bytes.get(at..end).ok_or(FrameError::Binary)?;
        at = end;
        Ok(slice)
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| FrameError::Binary);
    let join_ref = text(field(lens[0])?)?;
    let msg_ref = text(field(lens[1])?)?;
    let topic = text(field(lens[2])?)?;
    let user_event = text(field(lens[3])?)?;
    let meta = field(lens[4])?.to_vec();
    let rest = bytes.get(at..).ok_or(FrameError::Binary)?;
    let mut body = Map::new();
    body.insert("type".to_owned(), Value::String("broadcast".to_owned()));
    body.insert("event".to_owned(), Value::String(user_event));
    let mut binary = None;
    match encoding {
        1 => {
            let parsed: Value = if rest.is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_slice(rest).map_err(|err| FrameError::Json(err.to_string()))?
            };
            body.insert("payload".to_owned(), parsed);
        }
        0 => {
            body.insert("payload".to_owned(), Value::Null);
            binary = Some(rest.to_vec());
        }
        _ => return Err(FrameError::Binary),
    }
    if !meta.is_empty() {
        let meta: Value =
            serde_json::from_slice(&meta).map_err(|err| FrameError::Json(err.to_string()))?;
        body.insert("meta".to_owned(), meta);
    }
    let none_if_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Message {
        join_ref: none_if_empty(join_ref),
        msg_ref: none_if_empty(msg_ref),
        topic,
        event: "broadcast".to_owned(),
        payload: Value::Object(body),
        binary,
    })
}

/// Writes a message as a text frame.
pub fn encode_text(vsn: Vsn, message: &Message) -> String {
    let value = match vsn {
        Vsn::V1 => json!({
            "topic": message.topic,
            "event": message.event,
            "payload": message.payload,
            "ref": message.msg_ref,
            "join_ref": message.join_ref,
        }),
        Vsn::V2 => json!([
            message.join_ref,
            message.msg_ref,
            message.topic,
            message.event,
            message.payload
        ]),
    };
    value.to_string()
}

/// A kind-4 frame: a user broadcast with a raw (or JSON) payload for vsn 2
/// sockets. `None` when a header field is longer than 255 bytes.
pub fn encode_broadcast_binary(
    topic: &str,
    user_event: &str,
    meta: Option<&Value>,
    payload: &[u8],
    json_payload: bool,
) -> Option<Vec<u8>> {
    let meta = meta.map(Value::to_string).unwrap_or_default();
    let topic_len = u8::try_from(topic.len()).ok()?;
    let event_len = u8::try_from(user_event.len()).ok()?;
    let meta_len = u8::try_from(meta.len()).ok()?;
    let mut out =
        Vec::with_capacity(5 + topic.len() + user_event.len() + meta.len() + payload.len());
    out.extend_from_slice(&[4, topic_len, event_len, meta_len, u8::from(json_payload)]);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(user_event.as_bytes());
    out.extend_from_slice(meta.as_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

/// A `phx_reply`.
pub fn reply(request: &Message, status: &str, response: Value) -> Message {
    Message {
        join_ref: request.join_ref.clone(),
        msg_ref: request.msg_ref.clone(),
        topic: request.topic.clone(),
        event: "phx_reply".to_owned(),
        payload: json!({"status": status, "response": response}),
        binary: None,
    }
}

/// The `phx_reply` error for a frame that could not be read: on the
/// frame's topic and with its refs when they can be made out (so the
/// client's pending push gets its answer), else on topic `phoenix`.
/// `text` is the frame when it was a text frame.
pub fn malformed_reply(text: Option<&str>, err: &FrameError) -> Message {
    let value: Option<Value> = text.and_then(|t| serde_json::from_str(t).ok());
    let field = |index: usize, key: &str| -> Option<&Value> {
        match &value {
            Some(Value::Array(items)) => items.get(index),
            Some(Value::Object(map)) => map.get(key),
            _ => None,
        }
    };
    let text_of = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let request = Message {
        join_ref: text_of(field(0, "join_ref")),
        msg_ref: text_of(field(1, "ref")),
        topic: field(2, "topic")
            .and_then(Value::as_str)
            .unwrap_or("phoenix")
            .to_owned(),
        event: String::new(),
        payload: Value::Null,
        binary: None,
    };
    reply(
        &request,
        "error",
        json!({"reason": format!("malformed message: {err}")}),
    )
}

/// A server push (`ref` null) on `topic` for the channel joined as `join_ref`.
pub fn push(topic: &str, join_ref: Option<&str>, event: &str, payload: Value) -> Message {
    Message {
        join_ref: join_ref.map(str::to_owned),
        msg_ref: None,
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload,
        binary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_text_frames_round_trip() {
        let v1 = r#"{"topic":"realtime:room1","event":"phx_join","payload":{"config":{}},"ref":"1","join_ref":"1"}"#;
        let message = decode_text(Vsn::V1, v1).unwrap();
        assert_eq!(message.topic, "realtime:room1");
        assert_eq!(message.event, "phx_join");
        assert_eq!(message.msg_ref.as_deref(), Some("1"));
        assert_eq!(
            decode_text(Vsn::V1, &encode_text(Vsn::V1, &message)).unwrap(),
            message
        );
        let v2 = r#"[null,"12","phoenix","heartbeat",{}]"#;
        let message = decode_text(Vsn::V2, v2).unwrap();
        assert_eq!(message.join_ref, None);
        assert_eq!(message.msg_ref.as_deref(), Some("12"));
        assert_eq!(encode_text(Vsn::V2, &message), v2);
        let heartbeat_v1 = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3"}"#;
        assert_eq!(decode_text(Vsn::V1, heartbeat_v1).unwrap().join_ref, None);
    }

    #[test]
    fn bad_text_frames_are_refused() {
        assert!(matches!(
            decode_text(Vsn::V2, "nope"),
            Err(FrameError::Json(_))
        ));
        assert_eq!(decode_text(Vsn::V2, "[1,2,3]"), Err(FrameError::Shape));
        assert_eq!(
            decode_text(Vsn::V2, r#"[null,null,5,"e",{}]"#),
            Err(FrameError::Shape)
        );
        assert_eq!(
            decode_text(Vsn::V1, r#"{"event":"x"}"#),
            Err(FrameError::Shape)
        );
        assert_eq!(decode_text(Vsn::V1, "42"), Err(FrameError::Shape));
    }

    #[test]
    fn kind_3_binary_broadcasts_decode() {
        // Captured from realtime-js 2.109: ref "10", join_ref "8", JSON payload.
        let mut frame = vec![3, 1, 2, 14, 3, 0, 1];
        frame.extend_from_slice(b"8");
        frame.extend_from_slice(b"10");
        frame.extend_from_slice(b"realtime:room1");
        frame.extend_from_slice(b"cur");
        frame.extend_from_slice(br#"{"x":1}"#);
        let message = decode_binary(&frame).unwrap();
        assert_eq!(message.event, "broadcast");
        assert_eq!(message.join_ref.as_deref(), Some("8"));
        assert_eq!(message.msg_ref.as_deref(), Some("10"));
        assert_eq!(
            message.payload,
            json!({"type": "broadcast", "event": "cur", "payload": {"x": 1}})
        );
        let mut raw = vec![3, 0, 0, 1, 1, 0, 0];
        raw.extend_from_slice(b"te\x00\x01");
        let message = decode_binary(&raw).unwrap();
        assert_eq!(message.binary, Some(vec![0, 1]));
        assert_eq!(decode_binary(&[3, 9, 9]), Err(FrameError::Binary));
        assert_eq!(
            decode_binary(&[5, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::Binary)
        );
    }

    #[test]
    fn kind_4_frames_encode() {
        let frame = encode_broadcast_binary("realtime:a", "ev", None, b"\x01\x02", false).unwrap();
        assert_eq!(&frame[..5], &[4, 10, 2, 0, 0]);
        assert_eq!(&frame[5..], b"realtime:aev\x01\x02");
        assert!(encode_broadcast_binary(&"t".repeat(300), "e", None, b"", true).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64), text in "\\PC{0,64}") {
            let _ = decode_binary(&bytes);
            let _ = decode_text(Vsn::V1, &text);
            let _ = decode_text(Vsn::V2, &text);
        }
    }
}
