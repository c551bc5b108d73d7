use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::tools::{Action, CallError, RestCall, call, catalogue, encode};
use super::*;

fn args(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[test]
fn parses_requests_notifications_and_responses() {
    let request = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).unwrap();
    assert_eq!(
        request,
        Message::Request {
            id: json!(7),
            method: "tools/list".to_owned(),
            params: Map::new()
        }
    );
    let request = parse(br#"{"jsonrpc":"2.0","id":"a","method":"x","params":{"k":1}}"#).unwrap();
    assert!(
        matches!(request, Message::Request { id, params, .. } if id == json!("a") && params["k"] == 1)
    );
    assert_eq!(
        parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
        Message::Notification {
            method: "notifications/initialized".to_owned()
        }
    );
    assert_eq!(
        parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap(),
        Message::Response
    );
}

#[test]
fn refuses_malformed_messages_with_jsonrpc_codes() {
    let cases: &[(&[u8], i64, Value)] = &[
        (b"{not json", PARSE_ERROR, Value::Null),
        (b"", PARSE_ERROR, Value::Null),
        (b"[]", INVALID_REQUEST, Value::Null),
        (
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            INVALID_REQUEST,
            Value::Null,
        ),
        (b"42", INVALID_REQUEST, Value::Null),
        (br#"{"id":1,"method":"ping"}"#, INVALID_REQUEST, json!(1)),
        (
            br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            INVALID_REQUEST,
            json!(1),
        ),
        (
            br#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            INVALID_REQUEST,
            json!(1),
        ),
        (
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#,
            INVALID_REQUEST,
            json!(1),
        ),
        (
            br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            INVALID_REQUEST,
            Value::Null,
        ),
        (
            br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            INVALID_REQUEST,
            Value::Null,
        ),
        (br#"{"jsonrpc":"2.0","id":1}"#, INVALID_REQUEST, json!(1)),
    ];
    for (body, code, id) in cases {
        let err = parse(body).unwrap_err();
        assert_eq!(
            (err.code, &err.id),
            (*code, id),
            "{}",
            String::from_utf8_lossy(body)
        );
        let response = err.to_json();
        assert_eq!(response["jsonrpc"], "2.0");
        assert_eq!(response["error"]["code"], *code);
    }
}

#[test]
fn negotiates_the_protocol_revision() {
    assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
    assert_eq!(negotiate(Some("2025-03-26")), "2025-03-26");
    assert_eq!(negotiate(Some("2024-11-05")), SUPPORTED_VERSIONS[0]);
    assert_eq!(negotiate(Some("bogus")), SUPPORTED_VERSIONS[0]);
    assert_eq!(negotiate(None), SUPPORTED_VERSIONS[0]);
    assert!(is_supported("2025-11-25") && !is_supported("2024-11-05"));
    assert!(is_supported(DEFAULT_VERSION));
    let init = initialize_result("2025-06-18", "hi");
    assert_eq!(init["protocolVersion"], "2025-06-18");
    assert_eq!(init["serverInfo"]["name"], "sovra");
    assert!(init["capabilities"]["tools"].is_object());
}

#[test]
fn origins() {
    let allowed = vec!["https://app.example".to_owned()];
    assert!(origin_allowed("https://app.example", None, &allowed));
    assert!(origin_allowed(
        "https://api.example",
        Some("https://api.example"),
        &[]
    ));
    assert!(!origin_allowed(
        "http://evil.example:8080",
        Some("https://api.example"),
        &allowed
    ));
    assert!(origin_allowed("http://anything", None, &["*".to_owned()]));
    assert!(!origin_allowed("null", None, &[]));
    assert_eq!(
        origin_of("https://api.example/t/x?y"),
        Some("https://api.example")
    );
    assert_eq!(
        origin_of("http://127.0.0.1:54321"),
        Some("http://127.0.0.1:54321")
    );
    assert_eq!(origin_of("nothing"), None);
}

#[test]
fn rate_limit_refills_over_a_minute() {
    let mut limit = RateLimit::default();
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(limit.hit("a", 3, start), Ok(()));
    }
    assert_eq!(limit.hit("a", 3, start), Err(20));
    assert_eq!(limit.hit("b", 3, start), Ok(()), "per caller");
    assert_eq!(limit.hit("a", 3, start + Duration::from_secs(20)), Ok(()));
    assert_eq!(limit.hit("a", 0, start), Ok(()), "0 is no limit");
}

#[test]
fn catalogue_lists_write_tools_only_when_enabled() {
    let names = |writes| -> Vec<String> {
        catalogue(writes)
            .iter()
            .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let read = names(false);
    assert_eq!(
        read,
        [
            "list_tables",
            "describe_table",
            "query",
            "rpc",
            "vector_search",
            "list_buckets",
            "list_objects",
            "read_object"
        ]
    );
    let all = names(true);
    assert_eq!(&all[8..], ["insert", "update", "delete"]);
    for tool in catalogue(true) {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert_eq!(tool["inputSchema"]["additionalProperties"], false);
        assert!(tool["description"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(
        call("insert", &args(json!({"table": "t", "rows": {}})), false),
        Err(CallError::UnknownTool("insert".to_owned()))
    );
    assert_eq!(
        call("drop_database", &Map::new(), true),
        Err(CallError::UnknownTool("drop_database".to_owned()))
    );
}

#[test]
fn query_becomes_a_rest_read() {
    let action = call(
        "query",
        &args(json!({
            "table": "notes",
            "schema": "app",
            "select": "id,body",
            "filters": {"done": "eq.false", "or": "(a.eq.1,b.eq.2)", "id": ["gt.1", "lt.9"]},
            "order": "id.desc",
            "limit": 5,
            "offset": 10,
        })),
        false,
    )
    .unwrap();
    let Action::Rest(rest) = action else {
        panic!("{action:?}")
    };
    assert_eq!(rest.method, "GET");
    assert_eq!(rest.path, "/notes");
    assert_eq!(rest.schema.as_deref(), Some("app"));
    assert_eq!(
        rest.query,
        "select=id%2Cbody&done=eq.false&id=gt.1&id=lt.9&or=%28a.eq.1%2Cb.eq.2%29&order=id.desc&limit=5&offset=10"
    );
    let Action::Rest(plain) = call("query", &args(json!({"table": "a b/c"})), false).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (plain.path.as_str(), plain.query.as_str()),
        ("/a%20b%2Fc", "limit=100")
    );
}

#[test]
fn bad_arguments_are_tool_errors() {
    let bad = |name: &str, value: Value| match call(name, &args(value), true) {
        Err(CallError::InvalidArguments(message)) => message,
        other => panic!("{name}: {other:?}"),
    };
    assert!(bad("query", json!({})).contains("`table`"));
    assert!(bad("query", json!({"table": 5})).contains("string"));
    assert!(bad("query", json!({"table": "t", "limit": 0})).contains("1 to 1000"));
    assert!(bad("query", json!({"table": "t", "limit": 1001})).contains("1 to 1000"));
    assert!(
        bad("query", json!({"table": "t", "filters": {"limit": "10"}})).contains("not a filter")
    );
    assert!(bad("query", json!({"table": "t", "filters": {"a": 1}})).contains("eq.value"));
    assert!(bad("query", json!({"table": "t", "filters": "a=eq.1"})).contains("object"));
    assert!(
        bad("query", json!({"table": "t", "sql": "drop table t"}))
            .contains("unknown argument `sql`")
    );
    assert!(
        bad(
            "vector_search",
            json!({"table": "t", "column": "e", "vector": []})
        )
        .contains("dimensions")
    );
    assert!(
        bad(
            "vector_search",
            json!({"table": "t", "column": "e", "vector": ["x"]})
        )
        .contains("finite")
    );
    assert!(
        bad(
            "vector_search",
            json!({"table": "t", "column": "e", "vector": [1], "k": 101})
        )
        .contains("1 to 100")
    );
    assert!(
        bad(
            "vector_search",
            json!({"table": "t", "column": "e", "vector": [1], "metric": "hamming"})
        )
        .contains("metric")
    );
    assert!(
        bad("update", json!({"table": "t", "values": {"a": 1}})).contains("at least one filter")
    );
    assert!(
        bad(
            "update",
            json!({"table": "t", "values": {}, "filters": {"id": "eq.1"}})
        )
        .contains("values")
    );
    assert!(bad("delete", json!({"table": "t", "filters": {}})).contains("at least one filter"));
    assert!(bad("insert", json!({"table": "t", "rows": []})).contains("rows"));
    assert!(bad("insert", json!({"table": "t", "rows": [1]})).contains("rows"));
    assert!(bad("rpc", json!({"function": "f", "args": [1]})).contains("object"));
    assert!(bad("list_buckets", json!({"x": 1})).contains("unknown argument"));
    assert!(bad("read_object", json!({"bucket": "b"})).contains("`path`"));
}

#[test]
fn other_tools_translate() {
    let Action::Nearest { call: rest, column, vector, metric } = call(
        "vector_search",
        &args(json!({"table": "docs", "column": "embedding", "vector": [0.5, -1, 2e-3], "k": 3, "filters": {"lang": "eq.en"}})),
        false,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(rest.query, "lang=eq.en&limit=3");
    assert_eq!(
        (column.as_str(), vector.as_str(), metric.as_str()),
        ("embedding", "[0.5,-1,0.002]", "cosine")
    );
    let call_f = call(
        "rpc",
        &args(json!({"function": "f", "args": {"n": 1}})),
        false,
    )
    .unwrap();
    assert_eq!(
        call_f,
        Action::Rest(RestCall {
            method: "POST",
            path: "/rpc/f".to_owned(),
            query: String::new(),
            body: Some(r#"{"n":1}"#.to_owned()),
            schema: None,
            prefer: None,
        })
    );
    let Action::ListObjects { bucket, body } = call(
        "list_objects",
        &args(json!({"bucket": "docs", "prefix": "a/", "search": "x"})),
        false,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(bucket, "docs");
    assert_eq!(body["prefix"], "a/");
    assert_eq!(body["search"], "x");
    assert_eq!(body["limit"], 100);
    let Action::Rest(delete) = call(
        "delete",
        &args(json!({"table": "t", "filters": {"id": "eq.1"}})),
        true,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        (delete.method, delete.query.as_str(), delete.prefer),
        ("DELETE", "id=eq.1", Some("return=representation"))
    );
    assert_eq!(encode("a/é~"), "a%2F%C3%A9~");
}

/// Cases per `fuzz_*` target: `SOVRA_FUZZ_CASES`, default 256.
fn fuzz_cases() -> u32 {
    std::env::var("SOVRA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: fuzz_cases(),
        ..proptest::prelude::ProptestConfig::default()
    })]

    #[test]
    fn fuzz_parse_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = parse(&body);
    }

    #[test]
    fn fuzz_calls_never_panic(name in "[a-z_]{0,16}", text in "\\PC{0,64}") {
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let mut map = Map::new();
        for key in ["table", "filters", "vector", "rows", "limit", "args", "select"] {
            map.insert(key.to_owned(), value.clone());
        }
        let _ = call(&name, &map, true);
    }
}
