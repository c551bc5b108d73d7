use proptest::prelude::*;

use super::*;

fn field(name: &str) -> Field {
    Field::column(name)
}

fn col(name: &str) -> SelectItem {
    SelectItem::Field {
        alias: None,
        field: field(name),
        cast: None,
        aggregate: None,
    }
}

#[track_caller]
fn check_select(input: &str, want: &str) {
    let items = parse_select(input).unwrap_or_else(|err| panic!("{input}: {err}"));
    assert_eq!(SelectList(&items).to_string(), want, "{input}");
}

#[track_caller]
fn check_select_error(input: &str, column: usize) {
    let err = parse_select(input).unwrap_err();
    assert_eq!(err.column, column, "{input}: {err}");
}

#[test]
fn select_columns_aliases_casts_and_json_paths() {
    assert_eq!(parse_select("*").unwrap(), vec![SelectItem::Star]);
    assert_eq!(
        parse_select("id,name").unwrap(),
        vec![col("id"), col("name")]
    );
    check_select(" id , name ", "id,name");
    check_select("alias:col::text", "alias:col::text");
    check_select("data->a->>b", "data->a->>b");
    check_select("data->0->>-1", "data->0->>-1");
    check_select("data->a::int", "data->a::int");
    check_select("\"Order Items\"", "\"Order Items\"");
    check_select("\"with \\\"quote\"", "\"with \\\"quote\"");
    check_select("first-name", "\"first-name\"");
    check_select(
        "ts::timestamp with time zone",
        "ts::timestamp with time zone",
    );
    check_select("tags::text[]", "tags::text[]");
    let items = parse_select("data->>name").unwrap();
    assert_eq!(
        items,
        vec![SelectItem::Field {
            alias: None,
            field: Field {
                name: "data".into(),
                json_path: vec![JsonOp {
                    as_text: true,
                    key: JsonKey::Key("name".into())
                }]
            },
            cast: None,
            aggregate: None
        }]
    );
}

#[test]
fn select_aggregates_and_count() {
    check_select("amount.sum()", "amount.sum()");
    check_select(
        "total:amount::numeric.avg()::int",
        "total:amount::numeric.avg()::int",
    );
    check_select("count()", "count()");
    check_select("n:count()::text", "n:count()::text");
    check_select("id.count(),name", "id.count(),name");
    check_select_error("amount.median()", 8);
    check_select_error("count(x)", 6);
}

#[test]
fn select_embeds_and_spreads() {
    check_select("*,users(*)", "*,users(*)");
    check_select(
        "id,author:users!author_id(name)",
        "id,author:users!author_id(name)",
    );
    check_select("users!inner(id)", "users!inner(id)");
    check_select("users!fk_name!inner(id)", "users!fk_name!inner(id)");
    check_select("users!left!fk_name(id)", "users!fk_name!left(id)");
    check_select("users()", "users()");
    check_select("...users(username,status)", "...users(username,status)");
    check_select(
        "id,messages(id,channels(slug),users!inner(username))",
        "id,messages(id,channels(slug),users!inner(username))",
    );
    check_select("messages(count)", "messages(count)");
    check_select("messages( id , text )", "messages(id,text)");
    let items = parse_select("a:b!h!inner(c)").unwrap();
    assert_eq!(
        items,
        vec![SelectItem::Embed {
            alias: Some("a".into()),
            name: "b".into(),
            hint: Some("h".into()),
            join: Some(JoinType::Inner),
            spread: false,
            select: vec![col("c")],
        }]
    );
}

#[test]
fn select_errors_point_at_the_problem() {
    check_select_error("id,", 4);
    check_select_error("users(id", 9);
    check_select_error("...users", 9);
    check_select_error("a!b!c!d(x)", 6);
    check_select_error("\"open", 6);
    check_select_error("id::", 5);
    check_select_error("id)", 3);
    let err = parse_select("id,,name").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to parse select parameter (id,,name) (line 1, column 4)"),
        "{err}"
    );
}

#[track_caller]
fn check_filter(key: &str, value: &str, want: &str) {
    let (path, filter) =
        parse_filter(key, value).unwrap_or_else(|err| panic!("{key}={value}: {err}"));
    let mut printed = path.join(".");
    if !printed.is_empty() {
        printed.push('.');
    }
    printed.push_str(&format!(
        "{}={}",
        filter.field,
        filter.operation.print(filter.negated, false)
    ));
    assert_eq!(printed, want);
}

#[test]
fn filters_every_operator() {
    check_filter("age", "gt.18", "age=gt.18");
    check_filter("age", "not.lte.18", "age=not.lte.18");
    for op in [
        "eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "match", "imatch",
    ] {
        check_filter("c", &format!("{op}.v"), &format!("c={op}.v"));
        check_filter(
            "c",
            &format!("{op}(any).{{a,b}}"),
            &format!("c={op}(any).{{a,b}}"),
        );
        check_filter(
            "c",
            &format!("{op}(all).{{a,b}}"),
            &format!("c={op}(all).{{a,b}}"),
        );
    }
    for op in ["cs", "cd", "ov", "sl", "sr", "nxr", "nxl", "adj"] {
        check_filter("r", &format!("{op}.[1,5)"), &format!("r={op}.[1,5)"));
    }
    check_filter("t", "fts.cat", "t=fts.cat");
    check_filter("t", "plfts(english).fat cat", "t=plfts(english).fat cat");
    check_filter(
        "t",
        "not.wfts(english).cat or fat",
        "t=not.wfts(english).cat or fat",
    );
    check_filter("t", "phfts.cat fat", "t=phfts.cat fat");
    check_filter("x", "is.null", "x=is.null");
    check_filter("x", "is.NULL", "x=is.null");
    check_filter("x", "is.not_null", "x=is.not_null");
    check_filter("x", "not.is.true", "x=not.is.true");
    check_filter("x", "isdistinct.5", "x=isdistinct.5");
    check_filter("id", "in.(1,2,3)", "id=in.(\"1\",\"2\",\"3\")");
    check_filter("name", "in.(\"a,b\",c)", "name=in.(\"a,b\",\"c\")");
    check_filter("name", "in.()", "name=in.()");
    check_filter("data->age", "gt.20", "data->age=gt.20");
    check_filter(
        "messages.username",
        "eq.supabot",
        "messages.username=eq.supabot",
    );
    check_filter("users.messages.id", "gt.3", "users.messages.id=gt.3");
    // Everything after the operator is the value, dots and all.
    check_filter("v", "eq.1.2.3,(x)", "v=eq.1.2.3,(x)");
    check_filter("v", "eq.", "v=eq.");
}

#[test]
fn filter_errors() {
    for (key, value, column) in [
        ("c", "eqq.5", 1),
        ("c", "eq5", 3),
        ("c", "is.maybe", 4),
        ("c", "in.1,2", 4),
        ("c", "in.(1,2", 8),
        ("c", "like(some).x", 5),
        ("c", "", 1),
        ("c", "not.", 5),
        ("c", "fts(english.x", 12),
    ] {
        let err = parse_filter(key, value).unwrap_err();
        assert_eq!(err.column, column, "{key}={value}: {err}");
        assert_eq!(err.parameter, "filter");
    }
    let err = parse_filter("col::text", "eq.x").unwrap_err();
    assert_eq!(err.parameter, "filter column");
}

#[track_caller]
fn check_logic(key: &str, value: &str, want: &str) {
    let params = parse_query(&[(key.to_owned(), value.to_owned())], false)
        .unwrap_or_else(|err| panic!("{key}={value}: {err}"));
    let (path, tree) = &params.logic[0];
    let mut printed = path.join(".");
    if !printed.is_empty() {
        printed.push('.');
    }
    printed.push_str(&tree.to_string());
    assert_eq!(printed, want);
}

#[test]
fn logic_trees() {
    check_logic(
        "or",
        "(age.lt.18,age.gt.21)",
        "or(age.lt.\"18\",age.gt.\"21\")",
    );
    check_logic(
        "or",
        "(id.eq.1,and(status.eq.ONLINE,username.like.*a*))",
        "or(id.eq.\"1\",and(status.eq.\"ONLINE\",username.like.\"*a*\"))",
    );
    check_logic(
        "not.and",
        "(a.gte.0,a.lte.100)",
        "not.and(a.gte.\"0\",a.lte.\"100\")",
    );
    check_logic(
        "messages.or",
        "(id.eq.1,id.eq.2)",
        "messages.or(id.eq.\"1\",id.eq.\"2\")",
    );
    check_logic(
        "messages.not.or",
        "(id.eq.1)",
        "messages.not.or(id.eq.\"1\")",
    );
    check_logic(
        "or",
        "(age_range.adj.\"[18,21)\",name.eq.\"a,b\")",
        "or(age_range.adj.\"[18,21)\",name.eq.\"a,b\")",
    );
    check_logic(
        "or",
        "(tags.cs.{a,b},id.in.(1,2))",
        "or(tags.cs.\"{a,b}\",id.in.(\"1\",\"2\"))",
    );
    check_logic(
        "or",
        "(users.not.is.null,channels.not.is.null)",
        "or(users.not.is.null,channels.not.is.null)",
    );
    check_logic(
        "and",
        "(data->>a.eq.x, not.or(b.is.null))",
        "and(data->>a.eq.\"x\",not.or(b.is.null))",
    );
    check_logic("or", "(t.fts(english).cat)", "or(t.fts(english).\"cat\")");
    for bad in [
        "",
        "()",
        "(a.eq.1",
        "(a.eqq.1)",
        "a.eq.1",
        "(a.eq.1,)",
        "(or(a.eq.1)",
    ] {
        assert!(
            parse_query(&[("or".to_owned(), bad.to_owned())], false).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn order_terms() {
    let terms = parse_order("age.desc,height.asc").unwrap();
    assert_eq!(terms.len(), 2);
    assert_eq!(terms[0].direction, Some(Direction::Desc));
    let printed: Vec<String> =
        parse_order("data->>age.desc.nullslast,users(username).desc,x.nullsfirst,y")
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
    assert_eq!(
        printed,
        [
            "data->>age.desc.nullslast",
            "users(username).desc",
            "x.nullsfirst",
            "y"
        ]
    );
    for bad in [
        "",
        "age.up",
        "age.desc.asc",
        "age.nullslast.desc",
        "users(x",
        "a,",
    ] {
        assert!(parse_order(bad).is_err(), "{bad}");
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn query_params_are_classified() {
    let params = parse_query(
        &pairs(&[
            ("select", "id,messages(id)"),
            ("id", "gt.1"),
            ("id", "lt.10"),
            ("messages.order", "id.desc"),
            ("order", "id"),
            ("limit", "5"),
            ("offset", "10"),
            ("messages.limit", "1"),
            ("or", "(id.eq.2,id.eq.3)"),
            ("columns", "\"a\",\"b c\""),
            ("on_conflict", "a,b"),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(params.select.as_ref().map(Vec::len), Some(2));
    assert_eq!(params.filters.len(), 2, "repeated filters are all kept");
    assert_eq!(params.order[0].0, vec!["messages".to_owned()]);
    assert_eq!(params.order[1].0, Vec::<String>::new());
    assert_eq!(
        params.limits,
        vec![(vec![], 5), (vec!["messages".to_owned()], 1)]
    );
    assert_eq!(params.offsets, vec![(vec![], 10)]);
    assert_eq!(params.columns, Some(vec!["a".to_owned(), "b c".to_owned()]));
    assert_eq!(
        params.on_conflict,
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(params.logic.len(), 1);

    assert_eq!(
        parse_query(&pairs(&[("limit", "-1")]), false),
        Err(QueryError::Range(
            "Limit should be greater than or equal to zero.".to_owned()
        ))
    );
    assert!(matches!(
        parse_query(&pairs(&[("limit", "ten")]), false),
        Err(QueryError::Parse(_))
    ));
    assert!(matches!(
        parse_query(&pairs(&[("name", "bogus")]), false),
        Err(QueryError::Parse(_))
    ));
}

#[test]
fn rpc_arguments_are_what_is_not_a_filter() {
    let params = parse_query(
        &pairs(&[
            ("name_param", "supabot"),
            ("status", "eq.ONLINE"),
            ("select", "status"),
        ]),
        true,
    )
    .unwrap();
    assert_eq!(params.arguments, pairs(&[("name_param", "supabot")]));
    assert_eq!(params.filters.len(), 1);
}

#[test]
fn query_decoding() {
    assert_eq!(
        decode_query("select=id%2Cname&name=eq.a+b&x=%ZZ&flag&&=v"),
        pairs(&[
            ("select", "id,name"),
            ("name", "eq.a b"),
            ("x", "%ZZ"),
            ("flag", ""),
            ("", "v")
        ])
    );
    assert_eq!(decode_component("%E2%9C%93"), "✓");
    assert_eq!(decode_component("%"), "%");
    assert_eq!(decode_component("%4"), "%4");
}

#[test]
fn prefer_header() {
    let prefs = parse_prefer([
        "resolution=merge-duplicates, count=exact, return=representation",
        "return=minimal,bogus,max-affected=5,handling=strict,timezone=UTC",
    ]);
    assert_eq!(prefs.resolution, Some(Resolution::MergeDuplicates));
    assert_eq!(prefs.count, Some(CountPreference::Exact));
    assert_eq!(
        prefs.return_,
        Some(ReturnPreference::Representation),
        "first wins"
    );
    assert_eq!(prefs.max_affected, Some(5));
    assert_eq!(prefs.handling, Some(Handling::Strict));
    assert_eq!(prefs.timezone.as_deref(), Some("UTC"));
    assert_eq!(prefs.invalid, vec!["bogus".to_owned()]);
    let prefs = parse_prefer([
        "tx=rollback",
        "missing=default",
        "max-affected=-1",
        "count=maybe",
    ]);
    assert_eq!(prefs.tx, Some(TxPreference::Rollback));
    assert_eq!(prefs.missing, Some(Missing::Default));
    assert_eq!(
        prefs.invalid,
        vec!["max-affected=-1".to_owned(), "count=maybe".to_owned()]
    );
}

#[test]
fn range_header() {
    assert_eq!(
        parse_range("0-9"),
        Ok(Some(RangeHeader {
            from: 0,
            to: Some(9)
        }))
    );
    assert_eq!(
        parse_range("items=10-"),
        Ok(Some(RangeHeader { from: 10, to: None }))
    );
    assert!(parse_range("5-1").is_err());
    assert_eq!(parse_range("bytes"), Ok(None));
    assert_eq!(parse_range("a-b"), Ok(None));
}

/// `a(a(…a()…))` with `levels` embeds.
fn nested_select(levels: usize) -> String {
    format!("{}{}", "a(".repeat(levels), ")".repeat(levels))
}

/// The value of `or=` holding `levels` trees in all: `(and(and(…x.eq.1…)))`.
fn nested_logic(levels: usize) -> String {
    let inner = levels.saturating_sub(1);
    format!("({}x.eq.1{})", "and(".repeat(inner), ")".repeat(inner))
}

#[test]
fn nesting_is_accepted_up_to_the_limit() {
    let select = parse_select(&nested_select(MAX_DEPTH)).unwrap();
    let mut depth = 0;
    let mut items = &select;
    while let [SelectItem::Embed { select, .. }] = items.as_slice() {
        depth += 1;
        items = select;
    }
    assert_eq!(depth, MAX_DEPTH);
    let tree = parse_logic(false, LogicOp::Or, &nested_logic(MAX_DEPTH)).unwrap();
    assert_eq!(tree_depth(&tree), MAX_DEPTH);
    // Side by side is not nested: many embeds at one level are fine.
    let wide = vec!["a()"; 500].join(",");
    assert_eq!(parse_select(&wide).unwrap().len(), 500);
}

fn tree_depth(tree: &LogicTree) -> usize {
    match tree {
        LogicTree::Filter(_) => 0,
        LogicTree::Expr { children, .. } => 1 + children.iter().map(tree_depth).max().unwrap_or(0),
    }
}

#[test]
fn nesting_past_the_limit_is_a_parse_error() {
    let err = parse_select(&nested_select(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!(err.parameter, "select parameter");
    // At the `(` that opens one level too many.
    assert_eq!(err.column, 2 * MAX_DEPTH + 2, "{err}");
    assert_eq!(
        err.expected,
        format!("embedded resources nested more than {MAX_DEPTH} levels deep")
    );
    let err = parse_logic(false, LogicOp::Or, &nested_logic(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!(err.parameter, "logic tree");
    assert_eq!(
        err.expected,
        format!("logic trees nested more than {MAX_DEPTH} levels deep")
    );
    // What once overflowed the stack: 3,000 levels of each, as parameters.
    let deep_or = nested_logic(3000);
    let deep_select = nested_select(3000);
    for (key, value) in [
        ("or", deep_or.as_str()),
        ("not.and", deep_or.as_str()),
        ("items.or", deep_or.as_str()),
        ("select", deep_select.as_str()),
    ] {
        let err = parse_query(&[(key.to_owned(), value.to_owned())], false).unwrap_err();
        assert!(matches!(err, QueryError::Parse(_)), "{key}: {err}");
    }
    // Spreads and aliased or hinted embeds count as levels too.
    let spreads = format!(
        "{}{}",
        "...a(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert!(parse_select(&spreads).is_err());
    let hinted = format!(
        "{}{}",
        "x:a!fk!inner(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert!(parse_select(&hinted).is_err());
    let hinted_ok = format!(
        "{}{}",
        "x:a!fk!inner(".repeat(MAX_DEPTH),
        ")".repeat(MAX_DEPTH)
    );
    assert!(parse_select(&hinted_ok).is_ok());
}

// Property tests: no input makes a parser panic, and printed trees parse
// back to themselves.

pub(crate) fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_][a-z0-9_]{0,8}", "[a-zA-Z0-9 ,.()\"\\\\:!>-]{1,8}",]
        .prop_filter("not a keyword", |n| {
            n != "count" && n != "inner" && n != "left"
        })
}

pub(crate) fn arb_field() -> impl Strategy<Value = Field> {
    (
        arb_name(),
        prop::collection::vec(
            (
                any::<bool>(),
                prop_oneof![
                    arb_name().prop_map(JsonKey::Key),
                    (-5i64..50).prop_map(JsonKey::Index)
                ],
            ),
            0..3,
        ),
    )
        .prop_map(|(name, ops)| Field {
            name,
            json_path: ops
                .into_iter()
                .map(|(as_text, key)| JsonOp { as_text, key })
                .collect(),
        })
}

pub(crate) fn arb_cast() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("text".to_owned()),
        Just("int4".to_owned()),
        Just("numeric".to_owned())
    ])
}

fn arb_select() -> impl Strategy<Value = Vec<SelectItem>> {
    let leaf = prop_oneof![
        Just(SelectItem::Star),
        (
            prop::option::of(arb_name()),
            arb_field(),
            arb_cast(),
            prop::option::of((
                prop_oneof![Just(AggregateFn::Sum), Just(AggregateFn::Max)],
                arb_cast()
            ))
        )
            .prop_map(|(alias, field, cast, aggregate)| SelectItem::Field {
                alias,
                field,
                cast,
                aggregate: aggregate.map(|(function, cast)| Aggregate { function, cast }),
            }),
        (prop::option::of(arb_name()), arb_cast())
            .prop_map(|(alias, cast)| SelectItem::Count { alias, cast }),
    ];
    let item = leaf.prop_recursive(3, 16, 4, |inner| {
        (
            prop::option::of(arb_name()),
            arb_name(),
            prop::option::of(arb_name()),
            prop::option::of(prop_oneof![Just(JoinType::Inner), Just(JoinType::Left)]),
            any::<bool>(),
            prop::collection::vec(inner, 0..4),
        )
            .prop_map(
                |(alias, name, hint, join, spread, select)| SelectItem::Embed {
                    alias: if spread { None } else { alias },
                    name,
                    hint,
                    join,
                    spread,
                    select,
                },
            )
    });
    prop::collection::vec(item, 1..5)
}

pub(crate) fn arb_operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        (
            prop_oneof![
                Just(CompareOp::Eq),
                Just(CompareOp::Like),
                Just(CompareOp::Gte)
            ],
            prop::option::of(prop_oneof![Just(Quantifier::Any), Just(Quantifier::All)]),
            ".{0,10}"
        )
            .prop_map(|(op, quantifier, value)| Operation::Compare {
                op,
                quantifier,
                value
            }),
        prop_oneof![
            Just(IsValue::Null),
            Just(IsValue::NotNull),
            Just(IsValue::True)
        ]
        .prop_map(Operation::Is),
        prop::collection::vec(".{0,6}", 0..4).prop_map(Operation::In),
        (
            prop_oneof![Just(RangeOp::Adjacent), Just(RangeOp::Contains)],
            ".{0,10}"
        )
            .prop_map(|(op, value)| Operation::Range { op, value }),
        (
            prop_oneof![Just(FtsKind::Fts), Just(FtsKind::Websearch)],
            prop::option::of("[a-z]{2,8}"),
            ".{0,10}"
        )
            .prop_map(|(kind, language, value)| Operation::Fts {
                kind,
                language,
                value
            }),
    ]
}

fn arb_tree() -> impl Strategy<Value = LogicTree> {
    let leaf =
        (arb_field(), any::<bool>(), arb_operation()).prop_map(|(field, negated, operation)| {
            LogicTree::Filter(Filter {
                field,
                negated,
                operation,
            })
        });
    leaf.prop_recursive(3, 12, 4, |inner| {
        (
            any::<bool>(),
            prop_oneof![Just(LogicOp::And), Just(LogicOp::Or)],
            prop::collection::vec(inner, 1..4),
        )
            .prop_map(|(negated, op, children)| LogicTree::Expr {
                negated,
                op,
                children,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(text in ".{0,64}", key in ".{0,16}") {
        let _ = parse_select(&text);
        let _ = parse_filter(&key, &text);
        let _ = parse_order(&text);
        let _ = parse_names("columns", &text);
        let _ = parse_logic(false, LogicOp::Or, &text);
        let _ = parse_query(&[(key.clone(), text.clone())], true);
        let _ = parse_prefer([text.as_str()]);
        let _ = parse_range(&text);
        let _ = decode_query(&text);
    }

    #[test]
    fn grammar_shaped_noise_never_panics(text in "[a-z*,.:()!\"\\\\>{}\\[\\]-]{0,48}") {
        let _ = parse_select(&text);
        let _ = parse_order(&text);
        let _ = parse_logic(true, LogicOp::And, &text);
        let _ = parse_filter("c", &text);
    }

    #[test]
    fn select_round_trips(select in arb_select()) {
        let printed = SelectList(&select).to_string();
        let parsed = parse_select(&printed).map_err(|err| TestCaseError::fail(format!("{printed}: {err}")))?;
        prop_assert_eq!(parsed, select, "{}", printed);
    }

    #[test]
    fn filters_round_trip(field in arb_field(), negated in any::<bool>(), operation in arb_operation()) {
        let key = field.to_string();
        let value = operation.print(negated, false);
        let (path, filter) = parse_filter(&key, &value).map_err(|err| TestCaseError::fail(format!("{key}={value}: {err}")))?;
        prop_assert!(path.is_empty());
        prop_assert_eq!(filter, Filter { field, negated, operation });
    }

    #[test]
    fn logic_trees_round_trip(tree in arb_tree()) {
        let LogicTree::Expr { negated, op, children } = &tree else {
            return Ok(());
        };
        let printed = tree.to_string();
        let value = &printed[printed.find('(').unwrap_or(0)..];
        let parsed = parse_logic(*negated, *op, value).map_err(|err| TestCaseError::fail(format!("{printed}: {err}")))?;
        prop_assert_eq!(&parsed, &tree, "{}", printed);
        let _ = children;
    }
}

#[test]
fn select_lists_past_postgresqls_target_list_limit_are_refused() {
    let list = |n: usize| vec!["id"; n].join(",");
    assert_eq!(
        parse_select(&list(MAX_SELECT_ITEMS)).unwrap().len(),
        MAX_SELECT_ITEMS
    );
    let err = parse_select(&list(MAX_SELECT_ITEMS + 1)).unwrap_err();
    assert_eq!(
        err.expected,
        format!("a select list names at most {MAX_SELECT_ITEMS} items")
    );
    // Inside an embed too.
    let err = parse_select(&format!("id,rel({})", list(20_000))).unwrap_err();
    assert_eq!(err.parameter, "select parameter");
}
