//! Fuzz targets (proptest; no nightly here, so no cargo-fuzz) for the
//! parsers that see untrusted bytes: Phoenix frames from clients, pgoutput
//! messages from the replication slot (and, through the bus, from other
//! instances), and `postgres_changes` filters. Each takes arbitrary input
//! and near-valid input built from valid messages and then mutated; none
//! may panic, and valid messages round-trip. `SOVRA_FUZZ_CASES` sets the
//! number of cases (default 256).

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sovra_realtime_proto::filter::Filter;
use sovra_realtime_proto::frame::{self, FrameError, Message, Vsn};
use sovra_realtime_proto::pgoutput::{self, Column, Datum, Decoded, Relation};

fn fuzz_cases() -> u32 {
    std::env::var("SOVRA_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A byte-level mutation of a valid input.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Truncate(at) => bytes.truncate(at % (len + 1)),
            Mutation::Flip(at, b) if len > 0 => bytes[at % len] ^= b | 1,
            Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Mutation::Remove(at) if len > 0 => {
                bytes.remove(at % len);
            }
            _ => {}
        }
    }
    bytes
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Message> {
    (
        proptest::option::of("[0-9a-z]{0,6}"),
        proptest::option::of("[0-9a-z]{0,6}"),
        "\\PC{0,20}",
        prop_oneof![
            Just("phx_join".to_owned()),
            Just("heartbeat".to_owned()),
            Just("broadcast".to_owned()),
            "\\PC{0,10}"
        ],
        proptest::collection::btree_map("\\PC{0,6}", json_value(), 0..4),
    )
        .prop_map(|(join_ref, msg_ref, topic, event, payload)| Message {
            join_ref,
            msg_ref,
            topic,
            event,
            payload: Value::Object(payload.into_iter().collect::<Map<_, _>>()),
            binary: None,
        })
}

/// A kind-3 (client → server) binary broadcast frame.
fn kind3(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    json: bool,
    body: &[u8],
) -> Vec<u8> {
    let mut out = vec![
        3,
        join_ref.len() as u8,
        msg_ref.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        0,
        u8::from(json),
    ];
    for part in [join_ref, msg_ref, topic, event] {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(body);
    out
}

proptest! {
    #![proptest_config(config())]

    /// Phoenix frames: v1 JSON objects, v2 JSON arrays, binary kinds 3/4.
    #[test]
    fn fuzz_phoenix_frame(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        text in "\\PC{0,128}",
        message in message(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        raw in proptest::collection::vec(any::<u8>(), 0..64),
        fields in ("[a-z0-9]{0,5}", "[a-z0-9]{0,5}", "[a-z:]{0,30}", "[a-z]{0,10}"),
    ) {
        // Arbitrary input.
        for vsn in [Vsn::V1, Vsn::V2] {
            if let Err(err) = frame::decode_text(vsn, &text) {
                let reply = frame::malformed_reply(Some(&text), &err);
                prop_assert_eq!(reply.event.as_str(), "phx_reply");
            }
        }
        if let Err(err) = frame::decode_binary(&bytes) {
            frame::malformed_reply(None, &err);
        }

        // Valid messages round-trip in both versions.
        for vsn in [Vsn::V1, Vsn::V2] {
            let encoded = frame::encode_text(vsn, &message);
            prop_assert_eq!(&frame::decode_text(vsn, &encoded).unwrap(), &message);
            // Mutated, they are read or refused, never a panic.
            let mutated = mutate(encoded.into_bytes(), &mutations);
            let mutated = String::from_utf8_lossy(&mutated);
            if let Err(err) = frame::decode_text(vsn, &mutated) {
                frame::malformed_reply(Some(&mutated), &err);
            }
        }

        // Binary broadcasts: a valid kind 3 decodes to its fields.
        let (join_ref, msg_ref, topic, event) = fields;
        let frame3 = kind3(&join_ref, &msg_ref, &topic, &event, false, &raw);
        let decoded = frame::decode_binary(&frame3).unwrap();
        prop_assert_eq!(&decoded.topic, &topic);
        prop_assert_eq!(decoded.binary.as_deref(), Some(raw.as_slice()));
        prop_assert_eq!(decoded.msg_ref, (!msg_ref.is_empty()).then_some(msg_ref.clone()));
        let _ = frame::decode_binary(&mutate(frame3, &mutations));
        let frame3_json = kind3(&join_ref, &msg_ref, &topic, &event, true, &raw);
        let _ = frame::decode_binary(&frame3_json);
        // Kind 4 out: the header describes what follows.
        if let Some(frame4) = frame::encode_broadcast_binary(&topic, &event, None, &raw, false) {
            prop_assert_eq!(frame4[0], 4);
            prop_assert_eq!(frame4.len(), 5 + topic.len() + event.len() + raw.len());
        }
    }

    /// pgoutput messages: arbitrary bytes, and valid messages mutated.
    #[test]
    fn fuzz_pgoutput(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        rel in relation(),
        tuple in proptest::collection::vec(datum(), 0..6),
        old in proptest::option::of(proptest::collection::vec(datum(), 0..6)),
        lsns in (any::<u64>(), any::<u64>(), any::<i64>(), any::<u32>()),
        mutations in proptest::collection::vec(mutation(), 1..4),
        type_name in prop_oneof![Just("int4"), Just("bool"), Just("json"), Just("jsonb"), Just("_int4"), Just("float8"), Just("numeric"), Just("text")],
        text in "\\PC{0,40}",
    ) {
        let _ = pgoutput::decode(&bytes);
        let (lsn, end, time, xid) = lsns;
        let messages = [
            (encode_begin(lsn, time, xid), Decoded::Begin { final_lsn: lsn, commit_time: time, xid }),
            (encode_commit(lsn, end, time), Decoded::Commit { commit_lsn: lsn, end_lsn: end, commit_time: time }),
            (encode_relation(&rel), Decoded::Relation(rel.clone())),
            (encode_change(b'I', rel.oid, None, &tuple), Decoded::Insert { relation: rel.oid, new: tuple.clone() }),
            (encode_change(b'U', rel.oid, old.as_deref(), &tuple), Decoded::Update { relation: rel.oid, old: old.clone(), new: tuple.clone() }),
            (encode_change(b'D', rel.oid, Some(&tuple), &[]), Decoded::Delete { relation: rel.oid, old: tuple.clone() }),
        ];
        for (encoded, want) in messages {
            prop_assert_eq!(pgoutput::decode(&encoded).unwrap(), want);
            let _ = pgoutput::decode(&mutate(encoded, &mutations));
        }
        // Values of any type convert to JSON without a panic.
        let _ = pgoutput::json_value(type_name, &text);
        let _ = pgoutput::parse_timestamp(&text);
    }

    /// `postgres_changes` filters: arbitrary text, and near-valid filters
    /// evaluated against arbitrary rows.
    #[test]
    fn fuzz_filter(
        text in "\\PC{0,80}",
        parts in proptest::collection::vec(condition(), 1..5),
        mutations in proptest::collection::vec(mutation(), 0..3),
        value in proptest::option::of("\\PC{0,12}"),
        kind in prop_oneof![Just("int4"), Just("bool"), Just("text"), Just("float8"), Just("uuid")],
    ) {
        let row = |_: &str| Some((value.as_deref(), kind));
        if let Ok(filter) = Filter::parse(&text) {
            let _ = filter.matches(row);
        }
        let valid = parts.join(",");
        let filter = Filter::parse(&valid);
        prop_assert!(filter.is_ok(), "{valid}: {filter:?}");
        let filter = filter.unwrap();
        prop_assert_eq!(filter.conditions.len(), parts.len());
        let _ = filter.matches(row);
        let _ = filter.matches(|_| None);
        let mutated = String::from_utf8_lossy(&mutate(valid.into_bytes(), &mutations)).into_owned();
        if let Ok(filter) = Filter::parse(&mutated) {
            let _ = filter.matches(row);
        }
    }
}

/// A `like` pattern as a regular expression: the reference `like` is
/// checked against.
fn like_as_regex(pattern: &str) -> String {
    let mut out = String::from("(?s)^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' | '*' => out.push_str(".*"),
            '_' => out.push('.'),
            '\\' => out.push_str(&regex_escape(chars.next().unwrap_or('\\'))),
            c => out.push_str(&regex_escape(c)),
        }
    }
    out.push('$');
    out
}

fn regex_escape(c: char) -> String {
    let mut buf = [0u8; 4];
    let text: &str = c.encode_utf8(&mut buf);
    let mut out = String::new();
    for ch in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// A condition with a pattern operator (`like ilike match imatch`) or
/// `isdistinct`, valid by construction.
fn pattern_condition() -> impl Strategy<Value = String> {
    (
        "[a-z_][a-z0-9_]{0,8}",
        any::<bool>(),
        prop_oneof![
            ("like|ilike", "[a-zA-Z0-9%*_ .]{0,10}").prop_map(|(op, v)| (op, v)),
            (
                "match|imatch",
                "\\^?([a-zA-Z0-9 ]|\\.|\\[a-z\\]|[a-z][*+?]){0,6}\\$?"
            )
                .prop_map(|(op, v)| (op, v)),
            Just(("isdistinct".to_owned(), "null".to_owned())),
            ("isdistinct", "[a-z0-9.]{0,8}").prop_map(|(op, v)| (op, v)),
        ],
    )
        .prop_map(|(column, negate, (op, value))| {
            let not = if negate { "not." } else { "" };
            format!("{column}={not}{op}.{value}")
        })
}

proptest! {
    #![proptest_config(config())]

    /// Pattern operators: valid conditions parse and evaluate without a
    /// panic on any value; arbitrary patterns and expressions are read or
    /// refused, never a panic; `like` agrees with the same pattern as a
    /// regular expression.
    #[test]
    fn fuzz_filter_patterns(
        parts in proptest::collection::vec(pattern_condition(), 1..4),
        op in prop_oneof![Just("like"), Just("ilike"), Just("match"), Just("imatch"), Just("isdistinct")],
        raw in "\\PC{0,40}",
        value in proptest::option::of("\\PC{0,24}"),
        pattern in "[ab%_*\\\\]{0,12}",
        subject in "[ab%_*\\\\]{0,12}",
        kind in prop_oneof![Just("int4"), Just("text"), Just("float8")],
    ) {
        let row = |_: &str| Some((value.as_deref(), kind));
        let valid = parts.join(",");
        let filter = Filter::parse(&valid);
        prop_assert!(filter.is_ok(), "{valid}: {filter:?}");
        let filter = filter.unwrap();
        prop_assert_eq!(filter.conditions.len(), parts.len());
        let _ = filter.matches(row);
        if let Ok(filter) = Filter::parse(&format!("c={op}.{raw}")) {
            let _ = filter.matches(row);
        }
        // `like` (the reference), the same pattern as an expression, and the
        // filter (which compiles it) agree.
        let reference = regex::Regex::new(&like_as_regex(&pattern)).unwrap();
        let expected = sovra_realtime_proto::filter::like(&pattern, &subject, false);
        prop_assert_eq!(expected, reference.is_match(&subject), "like {:?} on {:?}", pattern, subject);
        let quoted = format!("\"{}\"", pattern.replace('\\', "\\\\").replace('"', "\\\""));
        let filter = Filter::parse(&format!("c=like.{quoted}")).unwrap();
        let row = |_: &str| Some((Some(subject.as_str()), "text"));
        prop_assert_eq!(filter.matches(row), expected, "filter like {:?} on {:?}", pattern, subject);
        let filter = Filter::parse(&format!("c=ilike.{quoted}")).unwrap();
        let upper = subject.to_uppercase();
        let row = |_: &str| Some((Some(upper.as_str()), "text"));
        prop_assert_eq!(filter.matches(row), expected, "filter ilike {:?} on {:?}", pattern, upper);
    }
}

fn condition() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[a-z0-9 ._-]{0,8}",
        "-?[0-9]{1,6}(\\.[0-9]{1,3})?",
        Just("\"quoted, with comma\"".to_owned()),
    ];
    (
        "[a-z_][a-z0-9_]{0,8}",
        any::<bool>(),
        prop_oneof![
            Just("eq"),
            Just("neq"),
            Just("lt"),
            Just("lte"),
            Just("gt"),
            Just("gte"),
            Just("in"),
            Just("is")
        ],
        proptest::collection::vec(value, 1..4),
        prop_oneof![Just("null"), Just("true"), Just("false")],
    )
        .prop_map(|(column, negate, op, values, is_value)| {
            let not = if negate { "not." } else { "" };
            let rhs = match op {
                "in" => format!("({})", values.join(",")),
                "is" => is_value.to_owned(),
                _ => values[0].clone(),
            };
            format!("{column}={not}{op}.{rhs}")
        })
}

fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::Unchanged),
        "\\PC{0,16}".prop_map(Datum::Text),
    ]
}

fn relation() -> impl Strategy<Value = Relation> {
    (
        any::<u32>(),
        "[a-z_]{1,8}",
        "[a-z_]{1,8}",
        prop_oneof![Just(b'd'), Just(b'n'), Just(b'f'), Just(b'i')],
        proptest::collection::vec((any::<bool>(), "[a-z_]{1,8}", any::<u32>()), 0..6),
    )
        .prop_map(|(oid, schema, name, replica_identity, columns)| Relation {
            oid,
            schema,
            name,
            replica_identity,
            columns: columns
                .into_iter()
                .map(|(key, name, type_oid)| Column {
                    key,
                    name,
                    type_oid,
                })
                .collect(),
        })
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn encode_begin(lsn: u64, time: i64, xid: u32) -> Vec<u8> {
    let mut out = vec![b'B'];
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(&xid.to_be_bytes());
    out
}

fn encode_commit(lsn: u64, end: u64, time: i64) -> Vec<u8> {
    let mut out = vec![b'C', 0];
    out.extend_from_slice(&lsn.to_be_bytes());
    out.extend_from_slice(&end.to_be_bytes());
    out.extend_from_slice(&time.to_be_bytes());
    out
}

fn encode_relation(rel: &Relation) -> Vec<u8> {
    let mut out = vec![b'R'];
    out.extend_from_slice(&rel.oid.to_be_bytes());
    cstr(&mut out, &rel.schema);
    cstr(&mut out, &rel.name);
    out.push(rel.replica_identity);
    out.extend_from_slice(&(rel.columns.len() as i16).to_be_bytes());
    for column in &rel.columns {
        out.push(u8::from(column.key));
        cstr(&mut out, &column.name);
        out.extend_from_slice(&column.type_oid.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
    }
    out
}

fn encode_tuple(out: &mut Vec<u8>, tuple: &[Datum]) {
    out.extend_from_slice(&(tuple.len() as i16).to_be_bytes());
    for datum in tuple {
        match datum {
            Datum::Null => out.push(b'n'),
            Datum::Unchanged => out.push(b'u'),
            Datum::Text(text) => {
                out.push(b't');
                out.extend_from_slice(&(text.len() as i32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// An insert (`I`: new), update (`U`: optional old, new) or delete (`D`:
/// `old` is the old tuple, `new` unused).
fn encode_change(tag: u8, relation: u32, old: Option<&[Datum]>, new: &[Datum]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&relation.to_be_bytes());
    match tag {
        b'D' => {
            out.push(b'O');
            encode_tuple(&mut out, old.unwrap_or(&[]));
        }
        _ => {
            if let Some(old) = old {
                out.push(b'O');
                encode_tuple(&mut out, old);
            }
            out.push(b'N');
            encode_tuple(&mut out, new);
        }
    }
    out
}

// Failures the targets find are kept below as plain regression tests
// (none so far: 30,000 cases per target ran clean).

#[test]
fn malformed_replies_name_the_topic_and_ref_when_they_can() {
    let reply = frame::malformed_reply(Some("42"), &FrameError::Shape);
    assert_eq!((reply.topic.as_str(), reply.msg_ref), ("phoenix", None));
    let reply = frame::malformed_reply(
        Some(r#"{"topic":"realtime:a","event":7,"ref":3}"#),
        &FrameError::Shape,
    );
    assert_eq!(reply.topic, "realtime:a");
    assert_eq!(reply.msg_ref.as_deref(), Some("3"));
    assert_eq!(reply.payload["status"], "error");
}
