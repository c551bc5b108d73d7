use sovra_rest_grammar::{Preferences, QueryParams, decode_query, parse_prefer, parse_query};

use super::*;

fn column(name: &str, ty: &str, array: &str) -> Column {
    Column {
        name: name.to_owned(),
        type_name: TypeName::new("pg_catalog", ty),
        array_type: Some(TypeName::new("pg_catalog", array)),
        nullable: true,
        has_default: false,
        default_expr: None,
    }
}

fn cache() -> SchemaCache {
    let mut cache = SchemaCache::default();
    let todos = Relation {
        schema: "public".to_owned(),
        name: "todos".to_owned(),
        kind: RelationKind::Table,
        columns: vec![
            column("id", "int8", "_int8"),
            column("task", "text", "_text"),
            column("done", "bool", "_bool"),
            column("data", "jsonb", "_jsonb"),
            column("tags", "_text", "_text"),
            column("during", "tstzrange", "_tstzrange"),
            column("doc", "tsvector", "_tsvector"),
        ],
        primary_key: vec!["id".to_owned()],
        unique_keys: vec![vec!["id".to_owned()]],
        insertable: true,
        updatable: true,
        deletable: true,
    };
    cache
        .relations
        .insert(("public".to_owned(), "todos".to_owned()), todos);
    cache
}

fn query(text: &str) -> QueryParams {
    parse_query(&decode_query(text), false).unwrap()
}

fn read(text: &str) -> Result<Plan, ApiError> {
    read_with(text, &Preferences::default())
}

fn read_with(text: &str, prefs: &Preferences) -> Result<Plan, ApiError> {
    let q = query(text);
    plan(
        &cache(),
        &Request {
            schema: "public",
            relation: "todos",
            action: Action::Read,
            query: &q,
            prefs,
            range: None,
            body: None,
            max_rows: Some(1000),
            csv: false,
            geojson: false,
            strip_nulls: false,
        },
    )
}

fn write(action: Action, text: &str, body: &str, prefs: &str) -> Result<Plan, ApiError> {
    let q = query(text);
    let prefs = parse_prefer([prefs]);
    plan(
        &cache(),
        &Request {
            schema: "public",
            relation: "todos",
            action,
            query: &q,
            prefs: &prefs,
            range: None,
            body: Some(body),
            max_rows: None,
            csv: false,
            geojson: false,
            strip_nulls: false,
        },
    )
}

fn show(plan: &Plan) -> String {
    format!(
        "{}\n-- params: {:?}",
        plan.statement.sql, plan.statement.params
    )
}

#[test]
fn read_statements() {
    insta::assert_snapshot!("read_star", show(&read("").unwrap()));
    insta::assert_snapshot!(
        "read_columns_filters_order_page",
        show(&read("select=id,title:task,data->>owner,n:data->n::int&done=is.false&id=in.(1,2,3)&task=like.*milk*&order=id.desc.nullslast&limit=10&offset=20").unwrap())
    );
    insta::assert_snapshot!(
        "read_logic_and_ranges",
        show(&read("or=(id.lt.5,and(tags.cs.{a,b},during.not.adj.\"[2024-01-01,2024-02-01)\"))&doc=wfts(english).cat or fat&task=not.ilike(any).{a*,b*}").unwrap())
    );
    insta::assert_snapshot!(
        "read_count_exact",
        show(&read_with("id=gt.1", &parse_prefer(["count=exact"])).unwrap())
    );
}

#[test]
fn aggregate_statement() {
    insta::assert_snapshot!(
        "read_aggregates",
        show(&read("select=done,n:count(),id.sum()::text&order=done").unwrap())
    );
}

#[test]
fn write_statements() {
    insta::assert_snapshot!(
        "insert_bulk",
        show(
            &write(
                Action::Insert,
                "columns=id,task",
                r#"[{"id":1,"task":"a"},{"id":2}]"#,
                "return=representation"
            )
            .unwrap()
        )
    );
    insta::assert_snapshot!(
        "upsert_merge",
        show(
            &write(
                Action::Insert,
                "select=id",
                r#"{"id":1,"task":"a"}"#,
                "resolution=merge-duplicates"
            )
            .unwrap()
        )
    );
    insta::assert_snapshot!(
        "update",
        show(&write(Action::Update, "id=eq.1", r#"{"done":true}"#, "").unwrap())
    );
    insta::assert_snapshot!(
        "delete",
        show(&write(Action::Delete, "done=is.true&select=id", "", "").unwrap())
    );
}

#[test]
fn hostile_names_and_values_stay_quoted_and_bound() {
    let plan = read("task=eq.x'); drop table todos; --&data->>\"a\\\"b\"=eq.1").unwrap();
    assert!(
        !plan.statement.sql.contains("drop table"),
        "{}",
        plan.statement.sql
    );
    assert!(
        plan.statement
            .params
            .iter()
            .any(|p| p.contains("drop table"))
    );
    assert!(
        !plan.statement.sql.contains("a\"b"),
        "JSON keys are bound too"
    );
    // The grammar admits no punctuation in a type name...
    assert!(parse_query(&decode_query("select=id::text;drop"), false).is_err());
    // ...and the planner admits only one word or a known SQL type name.
    let err = read("select=id::int4 or 1").unwrap_err();
    assert_eq!(err.code, "PGRST100");
    let plan = read("select=id::timestamp with time zone,task::text[]").unwrap();
    assert!(
        plan.statement.sql.contains("::\"timestamptz\""),
        "{}",
        plan.statement.sql
    );
    assert!(
        plan.statement.sql.contains("::\"text\"[]"),
        "{}",
        plan.statement.sql
    );
}

#[test]
fn refusals() {
    let q = QueryParams::default();
    let prefs = Preferences::default();
    let err = plan(
        &cache(),
        &Request {
            schema: "public",
            relation: "todo",
            action: Action::Read,
            query: &q,
            prefs: &prefs,
            range: None,
            body: None,
            max_rows: None,
            csv: false,
            geojson: false,
            strip_nulls: false,
        },
    )
    .unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (404, "PGRST205"));
    assert_eq!(
        err.hint.as_deref(),
        Some("Perhaps you meant the table 'public.todos'")
    );

    let err = read("select=nope").unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str(), err.message.as_str()),
        (400, "42703", "column todos.nope does not exist")
    );
    let err = read("nope=eq.1").unwrap_err();
    assert_eq!(err.code, "42703");
    let err = read("order=nope").unwrap_err();
    assert_eq!(err.code, "42703");
    let err = read("messages.id=eq.1").unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (400, "PGRST108"));
    let err = read("select=*,users(*)").unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (400, "PGRST200"));
    let err = read("select=*,...users(*)").unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (400, "PGRST200"));

    for (body, message) in [
        ("", "Empty or invalid json"),
        ("{", "Empty or invalid json"),
        ("5", "Empty or invalid json"),
        ("[1]", "Empty or invalid json"),
        (r#"[{"id":1},{"task":"x"}]"#, "All object keys must match"),
    ] {
        let err = write(Action::Insert, "", body, "").unwrap_err();
        assert_eq!(
            (err.status, err.code.as_str(), err.message.as_str()),
            (400, "PGRST102", message),
            "{body}"
        );
    }
    let err = write(Action::Insert, "", r#"{"nope":1}"#, "").unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.message.as_str()),
        (
            "PGRST204",
            "Could not find the 'nope' column of 'todos' in the schema cache"
        )
    );
    let err = write(Action::Update, "", r#"[{"id":1}]"#, "").unwrap_err();
    assert_eq!(err.code, "PGRST102");
}

#[test]
fn pages_intersect_limit_range_and_max_rows() {
    let q = query("limit=50&offset=5");
    let prefs = Preferences::default();
    let plan = plan(
        &cache(),
        &Request {
            schema: "public",
            relation: "todos",
            action: Action::Read,
            query: &q,
            prefs: &prefs,
            range: Some(sovra_rest_grammar::RangeHeader {
                from: 10,
                to: Some(19),
            }),
            body: None,
            max_rows: Some(8),
            csv: false,
            geojson: false,
            strip_nulls: false,
        },
    )
    .unwrap();
    assert_eq!(plan.offset, 10);
    assert!(
        plan.statement.params.contains(&"8".to_owned()),
        "{:?}",
        plan.statement.params
    );
}

#[test]
fn sqlstate_mapping() {
    for (code, message, anonymous, status) in [
        ("23505", "", false, 409),
        ("23503", "", false, 409),
        ("42501", "", true, 401),
        ("42501", "", false, 403),
        ("22023", "role \"ghost\" does not exist", false, 401),
        ("22023", "other", false, 400),
        ("25006", "", false, 405),
        ("P0001", "", false, 400),
        ("PT402", "", false, 402),
        ("42P01", "", false, 404),
        ("08006", "", false, 503),
        ("XX000", "", false, 500),
        ("22P02", "", false, 400),
        ("21000", "UPDATE requires a WHERE clause", false, 400),
    ] {
        assert_eq!(
            sqlstate_status(code, message, anonymous),
            status,
            "{code} {message}"
        );
    }
}

/// `channels` ← `messages` (fk `messages_channel_id_fkey`), a view of
/// `messages` with the same key, a self-referencing `people`, computed
/// fields and relationships, and overloads.
fn compat_cache() -> SchemaCache {
    let relation = |name: &str, kind: RelationKind, cols: &[&str]| Relation {
        schema: "public".to_owned(),
        name: name.to_owned(),
        kind,
        columns: cols.iter().map(|c| column(c, "int4", "_int4")).collect(),
        primary_key: vec!["id".to_owned()],
        unique_keys: vec![vec!["id".to_owned()]],
        insertable: true,
        updatable: true,
        deletable: true,
    };
    let fk = |name: &str, table: &str, col: &str, ref_table: &str| ForeignKey {
        name: name.to_owned(),
        schema: "public".to_owned(),
        table: table.to_owned(),
        columns: vec![col.to_owned()],
        ref_schema: "public".to_owned(),
        ref_table: ref_table.to_owned(),
        ref_columns: vec!["id".to_owned()],
    };
    let param = |name: &str, schema: &str, ty: &str, display: &str| RoutineParam {
        name: name.to_owned(),
        type_name: TypeName::new(schema, ty),
        type_display: display.to_owned(),
        has_default: false,
        variadic: false,
    };
    let routine =
        |name: &str, params: Vec<RoutineParam>, returns: ReturnShape, set: bool| Routine {
            schema: "public".to_owned(),
            name: name.to_owned(),
            params,
            return_type: match &returns {
                ReturnShape::Rows(_) => Some(TypeName::new("public", "messages")),
                _ => None,
            },
            returns,
            returns_set: set,
            single_row: false,
            volatility: Volatility::Stable,
        };
    let mut cache = SchemaCache::default();
    for r in [
        relation("channels", RelationKind::Table, &["id"]),
        relation("messages", RelationKind::Table, &["id", "channel_id"]),
        relation("messages_view", RelationKind::View, &["id", "channel_id"]),
        relation("people", RelationKind::Table, &["id", "boss_id"]),
    ] {
        cache
            .relations
            .insert((r.schema.clone(), r.name.clone()), r);
    }
    cache.foreign_keys = vec![
        fk(
            "messages_channel_id_fkey",
            "messages",
            "channel_id",
            "channels",
        ),
        fk(
            "messages_channel_id_fkey",
            "messages_view",
            "channel_id",
            "channels",
        ),
        fk("people_boss_id_fkey", "people", "boss_id", "people"),
    ];
    let rows = ReturnShape::Rows(vec![column("id", "int4", "_int4")]);
    cache.routines = vec![
        routine(
            "get_messages",
            vec![param("", "public", "channels", "channels")],
            rows,
            true,
        ),
        routine(
            "blurb",
            vec![param("", "public", "messages", "messages")],
            ReturnShape::Scalar(TypeName::new("pg_catalog", "text")),
            false,
        ),
        routine(
            "ov",
            vec![param("a", "pg_catalog", "text", "text")],
            ReturnShape::Scalar(TypeName::new("pg_catalog", "text")),
            false,
        ),
        routine(
            "ov",
            vec![param("a", "pg_catalog", "int4", "integer")],
            ReturnShape::Scalar(TypeName::new("pg_catalog", "text")),
            false,
        ),
        routine(
            "send",
            [
                param("queue_name", "pg_catalog", "text", "text"),
                param("message", "pg_catalog", "jsonb", "jsonb"),
                param("ratio", "pg_catalog", "float8", "double precision"),
            ]
            .into_iter()
            .map(|p| RoutineParam {
                has_default: true,
                ..p
            })
            .collect(),
            ReturnShape::Scalar(TypeName::new("pg_catalog", "int8")),
            false,
        ),
        routine(
            "raw",
            vec![param("", "pg_catalog", "text", "text")],
            ReturnShape::Scalar(TypeName::new("pg_catalog", "text")),
            false,
        ),
    ];
    cache
}

/// A `POST /rpc/{function}` of `compat_cache`'s `public` schema, planned.
fn compat_call(
    cache: &SchemaCache,
    function: &str,
    arguments: Arguments<'_>,
) -> Result<CallPlan, ApiError> {
    plan_call(
        cache,
        &CallRequest {
            schema: "public",
            function,
            arguments,
            is_get: false,
            query: &QueryParams::default(),
            prefs: &Preferences::default(),
            range: None,
            max_rows: None,
            strip_nulls: false,
            geojson: false,
        },
    )
}

fn compat_read(relation: &str, text: &str) -> Result<Plan, ApiError> {
    let q = query(text);
    plan(
        &compat_cache(),
        &Request {
            schema: "public",
            relation,
            action: Action::Read,
            query: &q,
            prefs: &Preferences::default(),
            range: None,
            body: None,
            max_rows: None,
            csv: false,
            geojson: false,
            strip_nulls: false,
        },
    )
}

#[test]
fn computed_fields_and_relationships_call_the_function_on_the_row() {
    let plan = compat_read("messages", "select=id,blurb&blurb=eq.x&order=blurb").unwrap();
    assert!(
        plan.statement
            .sql
            .contains(r#""public"."blurb"("messages"::"public"."messages")"#),
        "{}",
        plan.statement.sql
    );
    let plan = compat_read("channels", "select=id,get_messages(id)").unwrap();
    assert!(
        plan.statement.sql.contains(
            r#"FROM "public"."get_messages"("channels"::"public"."channels") AS "messages_1""#
        ),
        "{}",
        plan.statement.sql
    );
    // Neither a column nor a computed field.
    let err = compat_read("messages", "select=nope").unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (400, "42703"));
}

#[test]
fn embedding_follows_postgrest_find_rel() {
    // By constraint or column: the table, never the view with the same key.
    for text in [
        "select=id,messages_channel_id_fkey(id)",
        "select=id,messages_view(id)",
    ] {
        assert!(compat_read("channels", text).is_ok(), "{text}");
    }
    assert!(compat_read("messages", "select=id,channel_id(id)").is_ok());
    // Self-reference: column = parent, table = children, hint = children.
    for text in [
        "select=id,boss_id(id)",
        "select=id,people(id)",
        "select=id,people!boss_id(id)",
    ] {
        assert!(compat_read("people", text).is_ok(), "{text}");
    }
    let err = compat_read("channels", "select=id,messages!nope(id)").unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (400, "PGRST200"));
}

#[test]
fn overloads_are_chosen_and_listed_as_postgrest() {
    let cache = compat_cache();
    let call = |function: &str, arguments: Arguments<'_>| compat_call(&cache, function, arguments);
    let err = call("ov", Arguments::Json(r#"{"a": 1}"#)).unwrap_err();
    assert_eq!(err.code, "PGRST203");
    assert_eq!(
        err.message,
        "Could not choose the best candidate function between: public.ov(a => integer), public.ov(a => text)"
    );
    // A raw text body fills the single unnamed text parameter, positionally.
    let plan = call("raw", Arguments::Raw(RawMedia::Text, b"hi")).unwrap();
    assert!(
        plan.plan
            .statement
            .sql
            .contains(r#""public"."raw"($1::"pg_catalog"."text")"#),
        "{}",
        plan.plan.statement.sql
    );
    assert!(!plan.plan.statement.sql.contains(r#""""#));
    // Named arguments never name an unnamed parameter.
    let err = call("raw", Arguments::Json(r#"{"": "x"}"#)).unwrap_err();
    assert_eq!(err.code, "PGRST202");
}

fn nearest(text: &str, column: &str, metric: Metric) -> Result<Plan, ApiError> {
    let mut cache = cache();
    if let Some(todos) = cache
        .relations
        .get_mut(&("public".to_owned(), "todos".to_owned()))
    {
        todos.columns.push(Column {
            name: "embedding".to_owned(),
            type_name: TypeName::new("extensions", "vector"),
            array_type: Some(TypeName::new("extensions", "_vector")),
            nullable: true,
            has_default: false,
            default_expr: None,
        });
    }
    let q = query(text);
    plan_nearest(
        &cache,
        &Request {
            schema: "public",
            relation: "todos",
            action: Action::Read,
            query: &q,
            prefs: &Preferences::default(),
            range: None,
            body: None,
            max_rows: Some(1000),
            csv: false,
            geojson: false,
            strip_nulls: false,
        },
        &Nearest {
            column,
            vector: "[1,2,3]",
            metric,
        },
    )
}

#[test]
fn nearest_orders_by_a_bound_vector_with_the_types_schema_operator() {
    let plan = nearest(
        "select=id,task&done=eq.false&order=id&limit=5",
        "embedding",
        Metric::Cosine,
    )
    .unwrap();
    let sql = &plan.statement.sql;
    let distance =
        "\"todos\".\"embedding\" OPERATOR(\"extensions\".<=>) $1::\"extensions\".\"vector\"";
    assert!(
        sql.contains(&format!(" ORDER BY {distance}, \"todos\".\"id\"")),
        "{sql}"
    );
    assert!(
        sql.contains(&format!("{distance} AS \"_distance\"")),
        "{sql}"
    );
    assert_eq!(plan.statement.params[0], "[1,2,3]");
    assert!(plan.statement.params.contains(&"false".to_owned()));
    assert!(plan.statement.params.contains(&"5".to_owned()));
    for (metric, operator) in [
        (Metric::Euclidean, "<->"),
        (Metric::InnerProduct, "<#>"),
        (Metric::L1, "<+>"),
    ] {
        let sql = nearest("limit=3", "embedding", metric)
            .unwrap()
            .statement
            .sql;
        assert!(
            sql.contains(&format!("OPERATOR(\"extensions\".{operator})")),
            "{sql}"
        );
    }
    assert_eq!(Metric::parse("l2"), Some(Metric::Euclidean));
    assert_eq!(Metric::parse("hamming"), None);
}

#[test]
fn nearest_refuses_columns_that_are_no_vectors_and_aggregates() {
    let err = nearest("limit=3", "task", Metric::Cosine).unwrap_err();
    assert_eq!((err.status, err.code.as_str()), (400, "PGRST100"));
    assert!(
        err.message.contains("not a pgvector vector"),
        "{}",
        err.message
    );
    let err = nearest("limit=3", "missing", Metric::Cosine).unwrap_err();
    assert_eq!(err.code, "42703");
    let err = nearest("select=count()", "embedding", Metric::Cosine).unwrap_err();
    assert_eq!(err.status, 400);
    // A plain read plans as before.
    assert!(
        !read("select=id")
            .unwrap()
            .statement
            .sql
            .contains("_distance")
    );
}

#[test]
fn json_arguments_are_bound_directly_when_json_to_record_would_pass_them_as_they_are() {
    let cache = compat_cache();
    let call = |body: &str| {
        compat_call(&cache, "send", Arguments::Json(body))
            .unwrap()
            .plan
            .statement
    };
    let statement = call(r#"{"queue_name": "q", "message": {"n": 1}}"#);
    assert!(
        statement.sql.contains(
            r#""public"."send"("queue_name" => $1::"pg_catalog"."text", "message" => $2::"pg_catalog"."jsonb")"#
        ),
        "{}",
        statement.sql
    );
    assert_eq!(
        statement.params[..2],
        ["q".to_owned(), r#"{"n":1}"#.to_owned()]
    );
    // A fraction goes through `json_to_record` (its text is PostgreSQL's to
    // read), the others stay bound; the body is bound once.
    let statement = call(r#"{"queue_name": "q", "ratio": 0.5}"#);
    assert!(
        statement
            .sql
            .contains(r#""queue_name" => $1::"pg_catalog"."text""#),
        "{}",
        statement.sql
    );
    assert!(
        statement.sql.contains("json_to_record($2::json)"),
        "{}",
        statement.sql
    );
    assert_eq!(statement.sql.matches("json_to_record").count(), 1);
    // `null` and a number for a text parameter: a string stays direct, a
    // null does not.
    let statement = call(r#"{"queue_name": null, "message": null}"#);
    assert_eq!(
        statement.sql.matches("json_to_record").count(),
        2,
        "{}",
        statement.sql
    );
}
