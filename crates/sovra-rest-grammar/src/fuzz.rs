//! Fuzz targets for every parser of untrusted request text: the query
//! string (decoding and every parameter kind), `Prefer` and `Range`. Each
//! feeds arbitrary bytes, grammar-shaped noise, near-valid input (printed
//! trees with one mutation) and generated deep nesting, and asserts that
//! nothing panics, that errors point inside the text, and that printed
//! trees within the nesting limit round-trip while deeper ones are refused.
//!
//! `SOVRA_FUZZ_CASES` sets the number of cases per target (default 256),
//! e.g. `SOVRA_FUZZ_CASES=20000 cargo test -p sovra-rest-grammar fuzz_`.

use proptest::prelude::*;

use crate::tests::{arb_cast, arb_field, arb_name, arb_operation};
use crate::*;

fn cases() -> u32 {
    std::env::var("SOVRA_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An error names the text it refused and a column inside it (or just past
/// its end).
fn check_error<T>(result: Result<T, ParseError>, text: &str) -> Result<(), TestCaseError> {
    if let Err(err) = result {
        prop_assert_eq!(&err.value, text);
        prop_assert!(err.column >= 1, "{}", err);
        prop_assert!(err.column <= text.chars().count() + 1, "{}", err);
        prop_assert!(!err.expected.is_empty());
    }
    Ok(())
}

/// Every parser over one text (and the text as a filter key).
fn parse_everything(text: &str) -> Result<(), TestCaseError> {
    check_error(parse_select(text), text)?;
    check_error(parse_order(text), text)?;
    check_error(parse_names("columns parameter", text), text)?;
    check_error(parse_logic(false, LogicOp::Or, text), text)?;
    check_error(parse_logic(true, LogicOp::And, text), text)?;
    let _ = parse_filter(text, "eq.1");
    let _ = parse_filter("c", text);
    for key in [
        "select", "order", "or", "not.and", "a.b.or", "limit", "col", "x.offset",
    ] {
        let _ = parse_query(&[(key.to_owned(), text.to_owned())], false);
        let _ = parse_query(&[(key.to_owned(), text.to_owned())], true);
    }
    let _ = parse_query(&decode_query(text), false);
    let _ = parse_prefer([text]);
    check_range(text)?;
    Ok(())
}

fn check_range(text: &str) -> Result<(), TestCaseError> {
    if let Ok(Some(range)) = parse_range(text) {
        prop_assert!(range.from >= 0);
        if let Some(to) = range.to {
            prop_assert!(to >= range.from);
        }
    }
    Ok(())
}

/// Replaces, inserts or deletes one character of `text`.
fn mutate(text: &str, at: usize, how: u8, with: char) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = if chars.is_empty() {
        0
    } else {
        at % chars.len()
    };
    match how % 3 {
        0 if !chars.is_empty() => chars[at] = with,
        1 => chars.insert(at, with),
        _ if !chars.is_empty() => {
            chars.remove(at);
        }
        _ => chars.push(with),
    }
    chars.into_iter().collect()
}

fn grammar_char() -> impl Strategy<Value = char> {
    prop::sample::select(
        "()(),,..:!*\"\\->{}[]aznot_ 0-9%&=+"
            .chars()
            .collect::<Vec<_>>(),
    )
}

/// Names from a fixed list (plain, quoted, unicode, digits): cheap to
/// generate, for the targets whose subject is structure, not names.
fn cheap_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a",
        "items",
        "x_1",
        "Été",
        "with space",
        "quo\"te",
        "dash-ed",
        "12",
        "back\\slash",
    ])
    .prop_map(str::to_owned)
}

fn cheap_field() -> impl Strategy<Value = Field> {
    (
        cheap_name(),
        prop::option::of((any::<bool>(), cheap_name())),
    )
        .prop_map(|(name, op)| Field {
            name,
            json_path: op
                .map(|(as_text, key)| JsonOp {
                    as_text,
                    key: JsonKey::Key(key),
                })
                .into_iter()
                .collect(),
        })
}

fn leaf_item() -> impl Strategy<Value = SelectItem> {
    prop_oneof![
        Just(SelectItem::Star),
        (prop::option::of(cheap_name()), cheap_field(), arb_cast()).prop_map(
            |(alias, field, cast)| SelectItem::Field {
                alias,
                field,
                cast,
                aggregate: None,
            }
        ),
        (prop::option::of(cheap_name()), arb_cast())
            .prop_map(|(alias, cast)| SelectItem::Count { alias, cast }),
    ]
}

/// One level of a nested select: the embed and its other items.
type SelectLevel = (
    Option<String>,
    String,
    Option<String>,
    Option<JoinType>,
    bool,
    Vec<SelectItem>,
);

fn select_level() -> impl Strategy<Value = SelectLevel> {
    (
        prop::option::of(cheap_name()),
        cheap_name(),
        prop::option::of(cheap_name()),
        prop::option::of(prop_oneof![Just(JoinType::Inner), Just(JoinType::Left)]),
        any::<bool>(),
        prop::collection::vec(leaf_item(), 0..3),
    )
}

/// A select whose embeds nest exactly `levels.len()` deep.
fn nest_select(levels: Vec<SelectLevel>, innermost: Vec<SelectItem>) -> Vec<SelectItem> {
    levels.into_iter().rev().fold(
        innermost,
        |inside, (alias, name, hint, join, spread, mut siblings)| {
            siblings.push(SelectItem::Embed {
                alias: if spread { None } else { alias },
                name,
                hint,
                join,
                spread,
                select: inside,
            });
            siblings
        },
    )
}

fn cheap_operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (cheap_name(), any::<bool>()).prop_map(|(value, any)| Operation::Compare {
            op: CompareOp::Eq,
            quantifier: any.then_some(Quantifier::Any),
            value,
        }),
        Just(Operation::Is(IsValue::Null)),
        prop::collection::vec(cheap_name(), 0..3).prop_map(Operation::In),
        (cheap_name(), prop::option::of(Just("english".to_owned()))).prop_map(
            |(value, language)| Operation::Fts {
                kind: FtsKind::Websearch,
                language,
                value,
            }
        ),
    ]
}

fn filter_leaf() -> impl Strategy<Value = LogicTree> {
    (cheap_field(), any::<bool>(), cheap_operation()).prop_map(|(field, negated, operation)| {
        LogicTree::Filter(Filter {
            field,
            negated,
            operation,
        })
    })
}

/// A logic tree of exactly `levels.len() + 1` nested expressions.
fn nest_logic(levels: Vec<(bool, LogicOp, Vec<LogicTree>)>, leaf: LogicTree) -> LogicTree {
    levels
        .into_iter()
        .rev()
        .fold(leaf, |inside, (negated, op, mut siblings)| {
            siblings.push(inside);
            LogicTree::Expr {
                negated,
                op,
                children: siblings,
            }
        })
}

fn logic_op() -> impl Strategy<Value = LogicOp> {
    prop_oneof![Just(LogicOp::And), Just(LogicOp::Or)]
}

fn prefer_item() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "return=minimal",
        "return=headers-only",
        "return=representation",
        "count=exact",
        "count=planned",
        "count=estimated",
        "resolution=merge-duplicates",
        "resolution=ignore-duplicates",
        "missing=default",
        "missing=null",
        "tx=commit",
        "tx=rollback",
        "handling=lenient",
        "handling=strict",
        "timezone=Europe/Paris",
        "max-affected=5",
        "max-affected=-1",
        "max-affected=99999999999999999999",
        "params=single-object",
        "=",
        "",
    ]);
    prop_oneof![
        known.clone().prop_map(str::to_owned),
        (known, "[ \t]{0,2}", "[ \t]{0,2}").prop_map(|(k, a, b)| format!("{a}{k}{b}")),
        ".{0,24}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        parse_everything(&text)?;
    }

    #[test]
    fn fuzz_grammar_noise(chars in prop::collection::vec(grammar_char(), 0..160)) {
        let text: String = chars.into_iter().collect();
        parse_everything(&text)?;
    }

    #[test]
    fn fuzz_query_string(
        pairs in prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(vec![
                        "select", "order", "limit", "offset", "or", "and", "not.or",
                        "not.and", "columns", "on_conflict", "a.order", "a.b.limit",
                        "a.or", "x.not.and", "col", "a.col->b", "%73elect", "",
                    ]).prop_map(str::to_owned),
                    "[a-z.%0-9+]{0,12}",
                ],
                "[a-z0-9().,:!*\"%+=-]{0,40}",
            ),
            0..8,
        ),
        is_rpc in any::<bool>(),
    ) {
        let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let raw = raw.join("&");
        let decoded = decode_query(&raw);
        prop_assert!(decoded.len() <= pairs.len());
        let _ = parse_query(&decoded, is_rpc);
    }

    #[test]
    fn fuzz_select_nesting(
        levels in prop::collection::vec(select_level(), 0..MAX_DEPTH + 8),
        innermost in prop::collection::vec(leaf_item(), 0..3),
    ) {
        let depth = levels.len();
        let select = nest_select(levels, innermost);
        let printed = SelectList(&select).to_string();
        let parsed = parse_select(&printed);
        if depth <= MAX_DEPTH {
            let parsed = parsed.map_err(|err| TestCaseError::fail(format!("{printed}: {err}")))?;
            prop_assert_eq!(parsed, select, "{}", printed);
        } else {
            let err = parsed.err().ok_or_else(|| TestCaseError::fail(format!("accepted {depth} levels: {printed}")))?;
            prop_assert!(err.expected.contains("nested more than"), "{}", err);
        }
    }

    #[test]
    fn fuzz_select_near_valid(
        levels in prop::collection::vec(select_level(), 0..6),
        innermost in prop::collection::vec(leaf_item(), 0..3),
        at in any::<usize>(), how in any::<u8>(), with in grammar_char(),
    ) {
        let printed = SelectList(&nest_select(levels, innermost)).to_string();
        let text = mutate(&printed, at, how, with);
        check_error(parse_select(&text), &text)?;
        let _ = parse_query(&[("select".to_owned(), text)], false);
    }

    #[test]
    fn fuzz_logic_nesting(
        levels in prop::collection::vec(
            (any::<bool>(), logic_op(), prop::collection::vec(filter_leaf(), 0..2)),
            0..MAX_DEPTH + 8,
        ),
        leaf in filter_leaf(),
        negated in any::<bool>(),
        op in logic_op(),
    ) {
        // The parameter's own parentheses are the first level.
        let depth = levels.len() + 1;
        let tree = LogicTree::Expr { negated, op, children: vec![nest_logic(levels, leaf)] };
        let printed = tree.to_string();
        let value = &printed[printed.find('(').unwrap_or(0)..];
        let parsed = parse_logic(negated, op, value);
        if depth <= MAX_DEPTH {
            let parsed = parsed.map_err(|err| TestCaseError::fail(format!("{printed}: {err}")))?;
            prop_assert_eq!(parsed, tree, "{}", printed);
        } else {
            let err = parsed.err().ok_or_else(|| TestCaseError::fail(format!("accepted {depth} levels: {printed}")))?;
            prop_assert!(err.expected.contains("nested more than"), "{}", err);
        }
    }

    #[test]
    fn fuzz_logic_near_valid(
        levels in prop::collection::vec(
            (any::<bool>(), logic_op(), prop::collection::vec(filter_leaf(), 0..2)),
            0..5,
        ),
        leaf in filter_leaf(),
        at in any::<usize>(), how in any::<u8>(), with in grammar_char(),
    ) {
        let tree = LogicTree::Expr { negated: false, op: LogicOp::Or, children: vec![nest_logic(levels, leaf)] };
        let printed = tree.to_string();
        let text = mutate(&printed[printed.find('(').unwrap_or(0)..], at, how, with);
        check_error(parse_logic(false, LogicOp::Or, &text), &text)?;
        let _ = parse_query(&[("or".to_owned(), text)], false);
    }

    #[test]
    fn fuzz_deep_wrappers(
        opener in prop::sample::select(vec!["a(", "...a(", "x:a!h!inner(", "and(", "not.or(", "(", "a->b(", "\"q\"("]),
        depth in 0usize..400,
        middle in prop::sample::select(vec!["", "x.eq.1", "*", "id", ")", "(", ","]),
        closers in 0usize..400,
    ) {
        let text = format!("{}{middle}{}", opener.repeat(depth), ")".repeat(closers));
        parse_everything(&text)?;
        let logic = format!("({text})");
        check_error(parse_logic(false, LogicOp::And, &logic), &logic)?;
    }

    #[test]
    fn fuzz_filters(
        field in arb_field(), negated in any::<bool>(), operation in arb_operation(),
        at in any::<usize>(), how in any::<u8>(), with in grammar_char(), mutate_key in any::<bool>(),
    ) {
        let key = field.to_string();
        let value = operation.print(negated, false);
        let (key, value) = if mutate_key {
            (mutate(&key, at, how, with), value)
        } else {
            (key, mutate(&value, at, how, with))
        };
        if let Err(err) = parse_filter(&key, &value) {
            prop_assert!(err.value == key || err.value == value, "{}", err);
        }
    }

    #[test]
    fn fuzz_order(
        terms in prop::collection::vec(
            (prop::option::of(arb_name()), arb_field(),
             prop::option::of(prop_oneof![Just(Direction::Asc), Just(Direction::Desc)]),
             prop::option::of(prop_oneof![Just(Nulls::First), Just(Nulls::Last)])),
            1..4,
        ),
        at in any::<usize>(), how in any::<u8>(), with in grammar_char(),
    ) {
        let terms: Vec<OrderTerm> = terms
            .into_iter()
            .map(|(relation, field, direction, nulls)| OrderTerm { relation, field, direction, nulls })
            .collect();
        let printed: Vec<String> = terms.iter().map(ToString::to_string).collect();
        let text = mutate(&printed.join(","), at, how, with);
        check_error(parse_order(&text), &text)?;
    }

    #[test]
    fn fuzz_prefer(
        headers in prop::collection::vec(
            prop::collection::vec(prefer_item(), 0..5).prop_map(|items| items.join(",")),
            0..3,
        ),
    ) {
        let prefs = parse_prefer(headers.iter().map(String::as_str));
        for invalid in &prefs.invalid {
            prop_assert!(!invalid.is_empty());
            prop_assert_eq!(invalid.trim(), invalid.as_str());
            prop_assert!(headers.iter().any(|h| h.contains(invalid.as_str())));
        }
        if let Some(max) = prefs.max_affected {
            prop_assert!(max >= 0);
        }
    }

    #[test]
    fn fuzz_range(
        prefix in prop::sample::select(vec!["", "items=", " items=", "bytes=", "items= "]),
        from in prop_oneof![any::<i64>(), -3i64..100],
        to in prop::option::of(prop_oneof![any::<i64>(), -3i64..100]),
        noise in "[ 0-9a-z=-]{0,6}",
        use_noise in any::<bool>(),
    ) {
        let text = match to {
            Some(to) => format!("{prefix}{from}-{to}"),
            None => format!("{prefix}{from}-"),
        };
        let text = if use_noise { format!("{text}{noise}") } else { text };
        check_range(&text)?;
    }
}
