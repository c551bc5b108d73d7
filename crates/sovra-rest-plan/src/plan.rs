//! From a parsed request and the schema cache to one SQL statement.
//!
//! Every statement returns one row of three columns: the total count
//! (`bigint`, null unless asked for), the number of rows in the page
//! (`bigint`), and the JSON body (`text`), built by PostgreSQL itself;
//! most add two more, [`RESPONSE_SETTINGS`]: what the request's SQL set in
//! `response.headers` and `response.status`, read after the body was built.
//!
//! Identifiers come from the schema cache and are always quoted; values are
//! always bound parameters (all of type `text`, cast by PostgreSQL to the
//! column's type with its input function). Nothing from the request is
//! spliced into the SQL text.

use serde_json::Value;
use sovra_rest_grammar::{
    AggregateFn, CompareOp, CountPreference, Direction, Field, FtsKind, IsValue, JsonKey, LogicOp,
    LogicTree, Nulls, Operation, OrderTerm, Preferences, Quantifier, QueryParams, RangeHeader,
    RangeOp, Resolution, SelectItem,
};

use crate::error::ApiError;
use crate::schema::{Column, Relation, ReturnShape, Routine, SchemaCache, TypeName, quote_ident};

/// One parameterised statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    /// Bound as `text`.
    pub params: Vec<String>,
}

/// What the request does to its relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Insert,
    /// `PUT`: insert or replace the one row the URL's primary key names.
    Put,
    Update,
    Delete,
}

/// A request, as the planner needs it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub schema: &'a str,
    pub relation: &'a str,
    pub action: Action,
    pub query: &'a QueryParams,
    pub prefs: &'a Preferences,
    pub range: Option<RangeHeader>,
    /// The JSON body of a write.
    pub body: Option<&'a str>,
    /// `db-max-rows`: the most rows a read returns.
    pub max_rows: Option<i64>,
    /// Render the body as CSV instead of JSON.
    pub csv: bool,
    /// Render the body as a GeoJSON `FeatureCollection` (PostGIS's
    /// `ST_AsGeoJSON` of each row), for `Accept: application/geo+json`.
    pub geojson: bool,
    /// Drop null-valued keys from the JSON body (`nulls=stripped`).
    pub strip_nulls: bool,
}

/// The statement and what the response needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub statement: Statement,
    /// The first row offset of the page (for `Content-Range`).
    pub offset: i64,
    /// For `count=planned` and `count=estimated`: an `EXPLAIN (FORMAT JSON)`
    /// of the count, run with the statement's parameters; its top
    /// `Plan Rows` is the planner's estimate.
    pub planned_count: Option<String>,
    /// An upsert into a table: the statement's first column is the number
    /// of rows inserted (not updated), so that the response can answer
    /// `201` only when one was (PostgREST tells them apart the same way,
    /// by `xmax`).
    pub counts_inserted: bool,
}

pub(crate) struct Builder {
    pub(crate) params: Vec<String>,
}

impl Builder {
    /// The plan of `sql` with every value bound so far.
    pub(crate) fn finish(&mut self, sql: String, offset: i64) -> Plan {
        Plan {
            statement: Statement {
                sql,
                params: std::mem::take(&mut self.params),
            },
            offset,
            planned_count: None,
            counts_inserted: false,
        }
    }

    pub(crate) fn bind(&mut self, value: impl Into<String>) -> String {
        self.params.push(value.into());
        format!("${}", self.params.len())
    }
}

/// The distance a nearest-neighbour read orders by (pgvector's operators).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `<=>`: cosine distance.
    Cosine,
    /// `<->`: Euclidean (L2) distance.
    Euclidean,
    /// `<#>`: the negative inner product.
    InnerProduct,
    /// `<+>`: taxicab (L1) distance.
    L1,
}

impl Metric {
    /// From its name: `cosine`, `euclidean` (or `l2`), `inner_product`, `l1`.
    pub fn parse(name: &str) -> Option<Metric> {
        match name {
            "cosine" => Some(Metric::Cosine),
            "euclidean" | "l2" => Some(Metric::Euclidean),
            "inner_product" => Some(Metric::InnerProduct),
            "l1" => Some(Metric::L1),
            _ => None,
        }
    }

    fn operator(self) -> &'static str {
        match self {
            Metric::Cosine => "<=>",
            Metric::Euclidean => "<->",
            Metric::InnerProduct => "<#>",
            Metric::L1 => "<+>",
        }
    }
}

/// A read whose rows come nearest first to a query vector: ordered by the
/// distance between `column` (a pgvector `vector`, `halfvec` or
/// `sparsevec`) and `vector`, which is bound as a parameter; each row also
/// carries that distance as `_distance`.
#[derive(Clone, Copy, Debug)]
pub struct Nearest<'a> {
    pub column: &'a str,
    /// The query vector in pgvector's text form (`[1,2,3]`).
    pub vector: &'a str,
    pub metric: Metric,
}

/// Plans `request` against `cache`.
pub fn plan(cache: &SchemaCache, request: &Request<'_>) -> Result<Plan, ApiError> {
    plan_with(cache, request, None)
}

/// Plans a read of `request` whose rows are ordered by their distance to a
/// query vector first (then by the request's own `order`); its filters,
/// `select`, embeds and `limit` are those of any read.
pub fn plan_nearest(
    cache: &SchemaCache,
    request: &Request<'_>,
    nearest: &Nearest<'_>,
) -> Result<Plan, ApiError> {
    if request.action != Action::Read {
        return Err(ApiError::not_implemented(
            "a nearest-neighbour search is a read",
        ));
    }
    plan_with(cache, request, Some(nearest))
}

fn plan_with(
    cache: &SchemaCache,
    request: &Request<'_>,
    nearest: Option<&Nearest<'_>>,
) -> Result<Plan, ApiError> {
    let relation = cache
        .relation(request.schema, request.relation)
        .ok_or_else(|| {
            ApiError::unknown_relation(
                request.schema,
                request.relation,
                cache.suggest(request.schema, request.relation),
            )
        })?;
    let query = request.query;
    let select = query
        .select
        .clone()
        .unwrap_or_else(|| vec![SelectItem::Star]);
    check_supported(&select)?;
    check_paths(&select, query)?;

    let mut b = Builder { params: Vec::new() };
    let target = Target::new(relation, cache);
    let nearest = match nearest {
        Some(nearest) => Some(distance_expr(&target, nearest, &mut b)?),
        None => None,
    };
    let ctx = Ctx {
        cache,
        query,
        schema: request.schema,
        nearest,
    };
    let level = level(&ctx, &target, &select, &[], 1, &mut b)?;

    match request.action {
        Action::Read => plan_read(&ctx, &target, request, &level, &mut b),
        Action::Insert => plan_insert(&target, request, &level.items, &mut b),
        Action::Put => plan_put(&target, request, &level.items, &mut b),
        Action::Update => plan_update(&ctx, &target, request, &level, &mut b),
        Action::Delete => plan_delete(&ctx, &target, request, &level, &mut b),
    }
}

pub(crate) struct Ctx<'a> {
    pub(crate) cache: &'a SchemaCache,
    pub(crate) query: &'a QueryParams,
    /// The request's schema: embeds find their targets there.
    pub(crate) schema: &'a str,
    /// A nearest-neighbour read: the distance expression of the root's
    /// rows, which the read orders by first.
    pub(crate) nearest: Option<String>,
}

/// The distance of the root's row to the query vector, with the vector
/// bound and the operator qualified by the vector type's schema (so that
/// it resolves whatever the `search_path`).
fn distance_expr(
    target: &Target<'_>,
    nearest: &Nearest<'_>,
    b: &mut Builder,
) -> Result<String, ApiError> {
    let column = target.column(nearest.column)?;
    if !matches!(
        column.type_name.name.as_str(),
        "vector" | "halfvec" | "sparsevec"
    ) {
        return Err(ApiError::not_a_vector(
            &target.relation.name,
            &column.name,
            &column.type_name.name,
        ));
    }
    let vector = b.bind(nearest.vector);
    Ok(format!(
        "{}.{} OPERATOR({}.{}) {vector}::{}",
        target.alias,
        quote_ident(&column.name),
        quote_ident(&column.type_name.schema),
        nearest.metric.operator(),
        column.type_name.sql()
    ))
}

/// The relation being planned, with its SQL names.
pub(crate) struct Target<'a> {
    pub(crate) relation: &'a Relation,
    /// `"schema"."name"`, or a function call with its alias.
    pub(crate) qualified: String,
    /// `"name"`: how columns are qualified in the statement.
    pub(crate) alias: String,
    /// For computed fields (functions of the relation's row).
    pub(crate) cache: &'a SchemaCache,
}

impl<'a> Target<'a> {
    pub(crate) fn new(relation: &'a Relation, cache: &'a SchemaCache) -> Target<'a> {
        Target {
            relation,
            cache,
            qualified: format!(
                "{}.{}",
                quote_ident(&relation.schema),
                quote_ident(&relation.name)
            ),
            alias: quote_ident(&relation.name),
        }
    }

    /// An embedded relation, aliased `"<table>_<depth>"` as PostgREST does.
    fn embedded(relation: &'a Relation, cache: &'a SchemaCache, depth: usize) -> Target<'a> {
        let mut target = Target::new(relation, cache);
        target.alias = quote_ident(&format!("{}_{depth}", relation.name));
        target
    }

    fn column(&self, name: &str) -> Result<&'a Column, ApiError> {
        self.relation
            .column(name)
            .ok_or_else(|| ApiError::undefined_column(&self.relation.name, name))
    }

    /// This relation's row, typed as the relation's row type (a subquery's
    /// or a CTE's row is a plain record otherwise), for functions of it.
    pub(crate) fn row(&self) -> String {
        format!(
            "{}::{}",
            self.alias,
            TypeName::new(&self.relation.schema, &self.relation.name).sql()
        )
    }

    /// A column, or a computed field: `(sql, type, array type)`.
    fn field(&self, name: &str) -> Result<(String, TypeName, String), ApiError> {
        if let Some(column) = self.relation.column(name) {
            return Ok((
                format!("{}.{}", self.alias, quote_ident(&column.name)),
                column.type_name.clone(),
                column
                    .array_type
                    .as_ref()
                    .map_or_else(|| "text[]".to_owned(), TypeName::sql),
            ));
        }
        match self.cache.computed_field(self.relation, name) {
            Some(Routine {
                schema,
                name,
                returns: ReturnShape::Scalar(type_name),
                ..
            }) => Ok((
                format!(
                    "{}.{}({})",
                    quote_ident(schema),
                    quote_ident(name),
                    self.row()
                ),
                type_name.clone(),
                format!("{}[]", type_name.sql()),
            )),
            _ => Err(ApiError::undefined_column(&self.relation.name, name)),
        }
    }
}

/// Spreads are lifted into their parent, so they take no alias, and only
/// to-one or to-many embeds can be spread (checked when planned).
pub(crate) fn check_supported(select: &[SelectItem]) -> Result<(), ApiError> {
    for item in select {
        if let SelectItem::Embed { select, .. } = item {
            check_supported(select)?;
        }
    }
    Ok(())
}

/// Every embed path of `select`, by alias or name.
fn embed_paths(select: &[SelectItem], prefix: &[String], out: &mut Vec<Vec<String>>) {
    for item in select {
        if let SelectItem::Embed {
            alias,
            name,
            select,
            ..
        } = item
        {
            let mut path = prefix.to_vec();
            path.push(alias.clone().unwrap_or_else(|| name.clone()));
            embed_paths(select, &path, out);
            out.push(path);
        }
    }
}

/// Parameters scoped to an embed must name one the select has (PGRST108).
pub(crate) fn check_paths(select: &[SelectItem], query: &QueryParams) -> Result<(), ApiError> {
    let mut known = Vec::new();
    embed_paths(select, &[], &mut known);
    let scoped = query
        .filters
        .iter()
        .map(|(path, _)| path)
        .chain(query.logic.iter().map(|(path, _)| path))
        .chain(query.order.iter().map(|(path, _)| path))
        .chain(query.limits.iter().map(|(path, _)| path))
        .chain(query.offsets.iter().map(|(path, _)| path));
    for path in scoped {
        if !path.is_empty() && !known.contains(path) {
            let last = path.last().map_or("", String::as_str);
            return Err(ApiError::not_embedded(last));
        }
    }
    Ok(())
}

/// SQL for a type name the client wrote in a cast. Single words are quoted
/// identifiers; the multi-word SQL standard names are mapped to their
/// catalog names; `[]` suffixes make arrays. Nothing else is accepted.
pub(crate) fn cast_type(name: &str) -> Result<String, ApiError> {
    let trimmed = name.trim();
    let (base, dims) = {
        let mut base = trimmed;
        let mut dims = 0;
        while let Some(stripped) = base.strip_suffix("[]") {
            base = stripped.trim_end();
            dims += 1;
        }
        (base, dims)
    };
    let words: Vec<&str> = base.split_whitespace().collect();
    let lowered = words.join(" ").to_ascii_lowercase();
    let single = match lowered.as_str() {
        "timestamp with time zone" => "timestamptz".to_owned(),
        "timestamp without time zone" => "timestamp".to_owned(),
        "time with time zone" => "timetz".to_owned(),
        "time without time zone" => "time".to_owned(),
        "double precision" => "float8".to_owned(),
        "character varying" => "varchar".to_owned(),
        "bit varying" => "varbit".to_owned(),
        // SQL's keyword names for built-in types; quoted, they would name
        // nothing (or, for "char", another type).
        "int" | "integer" => "int4".to_owned(),
        "smallint" => "int2".to_owned(),
        "bigint" => "int8".to_owned(),
        "boolean" => "bool".to_owned(),
        "real" => "float4".to_owned(),
        "float" => "float8".to_owned(),
        "decimal" => "numeric".to_owned(),
        "char" | "character" => "bpchar".to_owned(),
        _ if words.len() == 1 && !words[0].contains('[') && !words[0].contains(']') => {
            words[0].to_owned()
        }
        _ => {
            return Err(ApiError::parse(&sovra_rest_grammar::ParseError {
                parameter: "select parameter".to_owned(),
                value: name.to_owned(),
                column: 1,
                expected: "expected a type name".to_owned(),
            }));
        }
    };
    Ok(format!("{}{}", quote_ident(&single), "[]".repeat(dims)))
}

/// A column reference with its JSON path, and the type of the result.
pub(crate) struct Expr {
    sql: String,
    /// What values compared with it are cast to.
    cast: String,
    /// The array type for `in` and quantified comparisons.
    array_cast: String,
    is_text: bool,
    is_tsvector: bool,
}

fn field_expr(target: &Target<'_>, field: &Field, b: &mut Builder) -> Result<Expr, ApiError> {
    let (mut sql, type_name, array_cast) = target.field(&field.name)?;
    if field.json_path.is_empty() {
        let is_text = matches!(
            type_name.name.as_str(),
            "text" | "varchar" | "bpchar" | "citext" | "name"
        );
        return Ok(Expr {
            sql,
            cast: type_name.sql(),
            array_cast,
            is_text,
            is_tsvector: type_name.name == "tsvector",
        });
    }
    // Composite and array columns are navigated as JSON.
    let is_json = matches!(type_name.name.as_str(), "json" | "jsonb");
    if !is_json {
        sql = format!("to_jsonb({sql})");
    }
    let json_type = if type_name.name == "json" {
        "json"
    } else {
        "jsonb"
    };
    let mut as_text = false;
    for op in &field.json_path {
        let key = match &op.key {
            JsonKey::Key(key) => format!("{}::text", b.bind(key.clone())),
            JsonKey::Index(index) => format!("{}::int", b.bind(index.to_string())),
        };
        sql = format!("{sql}{}{key}", if op.as_text { "->>" } else { "->" });
        as_text = op.as_text;
    }
    Ok(Expr {
        sql,
        cast: if as_text {
            "text".to_owned()
        } else {
            json_type.to_owned()
        },
        array_cast: if as_text {
            "text[]".to_owned()
        } else {
            format!("{json_type}[]")
        },
        is_text: as_text,
        is_tsvector: false,
    })
}

/// The JSON key a select item produces.
fn output_name(field: &Field, alias: Option<&String>) -> String {
    if let Some(alias) = alias {
        return alias.clone();
    }
    let mut name = field.name.clone();
    for op in &field.json_path {
        if let JsonKey::Key(key) = &op.key {
            name.clone_from(key);
        }
    }
    name
}

/// One level of the select tree: its output items and the conditions it
/// adds to its own relation's WHERE (inner joins and null filters on
/// embeds), and what its embeds are for ordering.
pub(crate) struct Level<'a> {
    // Fields are read within this module only.
    /// Output items, `expr AS "name"` (or `"t".*`).
    items: Vec<String>,
    /// Each output column as (expression, name), for spreads.
    columns: Vec<(String, String)>,
    /// Expressions of the items that are not aggregates.
    group_by: Vec<String>,
    /// Whether any item is an aggregate.
    aggregated: bool,
    conditions: Vec<String>,
    /// The to-one embeds, for `order=embed(col)`.
    to_one: Vec<ToOne<'a>>,
    /// The keys of the to-many embeds.
    to_many: Vec<String>,
    /// Each embed's `EXISTS (…)` test, for null filters in logic trees.
    exists: Vec<(String, String)>,
    /// Items computed by a subquery per row (embeds, spread columns):
    /// `(item index, sql, name, is json)`. When the level aggregates,
    /// they become grouping keys (json through its text, which has
    /// equality).
    subqueries: Vec<(usize, String, String, bool)>,
    /// The aggregate columns, for hoisting out of a spread:
    /// `(column index, function, argument, cast)`.
    aggregates: Vec<(usize, AggregateFn, String, Option<String>)>,
}

struct ToOne<'a> {
    key: String,
    relation: &'a Relation,
    alias: String,
    from: String,
    where_sql: String,
}

pub(crate) fn level<'a>(
    ctx: &Ctx<'a>,
    target: &Target<'_>,
    select: &[SelectItem],
    path: &[String],
    depth: usize,
    b: &mut Builder,
) -> Result<Level<'a>, ApiError> {
    let mut level = Level {
        items: Vec::new(),
        columns: Vec::new(),
        group_by: Vec::new(),
        aggregated: false,
        conditions: Vec::new(),
        to_one: Vec::new(),
        to_many: Vec::new(),
        exists: Vec::new(),
        subqueries: Vec::new(),
        aggregates: Vec::new(),
    };
    for item in select {
        match item {
            SelectItem::Star => {
                level.items.push(format!("{}.*", target.alias));
                for column in &target.relation.columns {
                    let expr = format!("{}.{}", target.alias, quote_ident(&column.name));
                    level.group_by.push(expr.clone());
                    level.columns.push((expr, column.name.clone()));
                }
            }
            // The legacy `embed(count)`: count() when no column has the name.
            SelectItem::Field {
                alias,
                field,
                cast: None,
                aggregate: None,
            } if field.name == "count"
                && field.json_path.is_empty()
                && depth > 1
                && target.relation.column("count").is_none() =>
            {
                level.aggregated = true;
                let name = alias.clone().unwrap_or_else(|| "count".to_owned());
                level
                    .items
                    .push(format!("count(*) AS {}", quote_ident(&name)));
                level.aggregates.push((
                    level.columns.len(),
                    AggregateFn::Count,
                    "*".to_owned(),
                    None,
                ));
                level.columns.push(("count(*)".to_owned(), name));
            }
            SelectItem::Count { alias, cast } => {
                level.aggregated = true;
                let mut expr = "count(*)".to_owned();
                let cast = cast.as_deref().map(cast_type).transpose()?;
                level.aggregates.push((
                    level.columns.len(),
                    AggregateFn::Count,
                    "*".to_owned(),
                    cast.clone(),
                ));
                if let Some(cast) = cast {
                    expr = format!("({expr})::{cast}");
                }
                let name = alias.clone().unwrap_or_else(|| "count".to_owned());
                level
                    .items
                    .push(format!("{expr} AS {}", quote_ident(&name)));
                level.columns.push((expr, name));
            }
            SelectItem::Field {
                alias,
                field,
                cast,
                aggregate,
            } => {
                let expr = field_expr(target, field, b)?;
                let mut sql = expr.sql;
                if let Some(cast) = cast {
                    sql = format!("({sql})::{}", cast_type(cast)?);
                }
                let name = match (alias, aggregate) {
                    (Some(alias), _) => alias.clone(),
                    (None, Some(aggregate)) => aggregate.function.name().to_owned(),
                    (None, None) => output_name(field, None),
                };
                match aggregate {
                    Some(aggregate) => {
                        level.aggregated = true;
                        let cast = aggregate.cast.as_deref().map(cast_type).transpose()?;
                        level.aggregates.push((
                            level.columns.len(),
                            aggregate.function,
                            sql.clone(),
                            cast.clone(),
                        ));
                        sql = format!("{}({sql})", aggregate.function.name());
                        if let Some(cast) = cast {
                            sql = format!("({sql})::{cast}");
                        }
                    }
                    None => level.group_by.push(sql.clone()),
                }
                level.items.push(format!("{sql} AS {}", quote_ident(&name)));
                level.columns.push((sql, name));
            }
            SelectItem::Embed {
                alias,
                name,
                hint,
                join,
                spread,
                select: child_select,
            } => {
                let relationship = crate::relationship::resolve(
                    ctx.cache,
                    target.relation,
                    ctx.schema,
                    name,
                    hint.as_deref(),
                )?;
                let key = alias.clone().unwrap_or_else(|| name.clone());
                let mut child_path = path.to_vec();
                child_path.push(key.clone());
                let child = Target::embedded(relationship.target(), ctx.cache, depth);
                let (from, join_condition) = join_sql(target, &child, &relationship, depth);
                let child_level =
                    self::level(ctx, &child, child_select, &child_path, depth + 1, b)?;
                let mut conditions = vec![join_condition.clone()];
                conditions.extend(child_level.conditions.iter().cloned());
                conditions.extend(conditions_at(ctx, &child, &child_path, &child_level, b)?);
                let where_sql = format!(" WHERE {}", conditions.join(" AND "));

                // Inner join, or a null filter on the embed's name.
                let null_filter = ctx.query.filters.iter().find(|(p, f)| {
                    p.as_slice() == path && f.field.name == key && f.field.json_path.is_empty()
                });
                let exists = format!("EXISTS (SELECT 1 FROM {from}{where_sql})");
                level.exists.push((key.clone(), exists.clone()));
                match null_filter {
                    Some((_, filter)) => match (&filter.operation, filter.negated) {
                        (Operation::Is(IsValue::Null), false)
                        | (Operation::Is(IsValue::NotNull), true) => {
                            level.conditions.push(format!("NOT {exists}"));
                        }
                        (Operation::Is(IsValue::NotNull), false)
                        | (Operation::Is(IsValue::Null), true) => {
                            level.conditions.push(exists.clone());
                        }
                        _ => return Err(ApiError::bad_embed_operator(&key)),
                    },
                    None if *join == Some(sovra_rest_grammar::JoinType::Inner) => {
                        level.conditions.push(exists.clone());
                    }
                    None => {}
                }

                if relationship.is_to_one() {
                    level.to_one.push(ToOne {
                        key: key.clone(),
                        relation: relationship.target(),
                        alias: child.alias.clone(),
                        from: from.clone(),
                        where_sql: where_sql.clone(),
                    });
                } else {
                    level.to_many.push(key.clone());
                }
                if child_select.is_empty() {
                    // `embed()`: for filtering only, no output.
                    continue;
                }
                let group = if child_level.aggregated && !child_level.group_by.is_empty() {
                    format!(" GROUP BY {}", child_level.group_by.join(", "))
                } else {
                    String::new()
                };
                if *spread {
                    // `...embed(a, b)`: the embed's columns lifted into the
                    // parent; for to-many, each becomes an array. Aggregates
                    // are hoisted into the parent, as PostgREST does: they
                    // aggregate the embedded rows of every parent row of a
                    // group, so the parent groups by its other columns.
                    for (index, (expr, name)) in child_level.columns.iter().enumerate() {
                        if let Some((_, function, arg, cast)) =
                            child_level.aggregates.iter().find(|a| a.0 == index)
                        {
                            let per_row =
                                |inner: &str| format!("(SELECT {inner} FROM {from}{where_sql})");
                            let mut sql = match function {
                                AggregateFn::Count => format!(
                                    "coalesce(sum({}), 0)::bigint",
                                    per_row(&format!("count({arg})"))
                                ),
                                AggregateFn::Avg => format!(
                                    "(sum({})::numeric / nullif(sum({}), 0))",
                                    per_row(&format!("sum({arg})")),
                                    per_row(&format!("count({arg})"))
                                ),
                                AggregateFn::Sum | AggregateFn::Max | AggregateFn::Min => {
                                    let f = function.name();
                                    format!("{f}({})", per_row(&format!("{f}({arg})")))
                                }
                            };
                            if let Some(cast) = cast {
                                sql = format!("({sql})::{cast}");
                            }
                            level.aggregated = true;
                            level.items.push(format!("{sql} AS {}", quote_ident(name)));
                            level.columns.push((sql, name.clone()));
                            continue;
                        }
                        let to_one = relationship.is_to_one();
                        let sql = if to_one {
                            format!("(SELECT {expr} FROM {from}{where_sql} LIMIT 1)")
                        } else {
                            let order = order_at(ctx, &child, &child_path, &child_level, b)?;
                            format!(
                                "(SELECT coalesce(json_agg({expr}{order}), '[]') FROM {from}{where_sql})"
                            )
                        };
                        level.subqueries.push((
                            level.items.len(),
                            sql.clone(),
                            name.clone(),
                            !to_one,
                        ));
                        level.items.push(format!("{sql} AS {}", quote_ident(name)));
                        level.columns.push((sql, name.clone()));
                    }
                    continue;
                }
                let list = child_level.items.join(", ");
                let sub = format!("_pgrst_e{depth}");
                let sql = if relationship.is_to_one() {
                    format!(
                        "(SELECT row_to_json({sub}) FROM (SELECT {list} FROM {from}{where_sql}{group} LIMIT 1) {sub})"
                    )
                } else {
                    let order = order_at(ctx, &child, &child_path, &child_level, b)?;
                    let (offset, limit) = page_at(ctx.query, &child_path);
                    let mut page = String::new();
                    if let Some(limit) = limit {
                        page.push_str(&format!(" LIMIT {}::bigint", b.bind(limit.to_string())));
                    }
                    if offset > 0 {
                        page.push_str(&format!(" OFFSET {}::bigint", b.bind(offset.to_string())));
                    }
                    format!(
                        "(SELECT coalesce(json_agg({sub}), '[]') FROM (SELECT {list} FROM {from}{where_sql}{group}{order}{page}) {sub})"
                    )
                };
                level
                    .subqueries
                    .push((level.items.len(), sql.clone(), key.clone(), true));
                level.items.push(format!("{sql} AS {}", quote_ident(&key)));
                level.columns.push((sql, key.clone()));
            }
        }
    }
    if level.aggregated {
        // Aggregates beside embeds: each embed is a grouping key, as the
        // subquery it is (PostgreSQL accepts an expression it groups by);
        // json has no equality, so it is grouped by its text.
        for (index, sql, name, json) in std::mem::take(&mut level.subqueries) {
            let key = if json {
                format!("({sql})::text")
            } else {
                sql.clone()
            };
            let value = if json {
                format!("({key})::json")
            } else {
                key.clone()
            };
            level.group_by.push(key);
            level.items[index] = format!("{value} AS {}", quote_ident(&name));
        }
    }
    Ok(level)
}

/// The FROM of an embedded relation and the condition that ties it to
/// its parent row.
fn join_sql(
    parent: &Target<'_>,
    child: &Target<'_>,
    relationship: &crate::relationship::Relationship<'_>,
    depth: usize,
) -> (String, String) {
    use crate::relationship::Relationship;
    let pairs = |left: &str, left_cols: &[String], right: &str, right_cols: &[String]| {
        left_cols
            .iter()
            .zip(right_cols)
            .map(|(l, r)| format!("{left}.{} = {right}.{}", quote_ident(l), quote_ident(r)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let from = format!("{} AS {}", child.qualified, child.alias);
    match relationship {
        // The function of the parent's row is the embedded relation.
        Relationship::Computed { routine, .. } => (
            format!(
                "{}.{}({}) AS {}",
                quote_ident(&routine.schema),
                quote_ident(&routine.name),
                parent.row(),
                child.alias
            ),
            "TRUE".to_owned(),
        ),
        Relationship::ManyToOne { fk, .. } => (
            from,
            pairs(&child.alias, &fk.ref_columns, &parent.alias, &fk.columns),
        ),
        Relationship::OneToMany { fk, .. } => (
            from,
            pairs(&child.alias, &fk.columns, &parent.alias, &fk.ref_columns),
        ),
        Relationship::ManyToMany {
            junction,
            origin_fk,
            target_fk,
            ..
        } => {
            let junction_alias = quote_ident(&format!("{}_{depth}", junction.name));
            let junction_from = format!(
                "{}.{} AS {junction_alias}",
                quote_ident(&junction.schema),
                quote_ident(&junction.name)
            );
            (
                format!(
                    "{from} JOIN {junction_from} ON {}",
                    pairs(
                        &junction_alias,
                        &target_fk.columns,
                        &child.alias,
                        &target_fk.ref_columns
                    )
                ),
                pairs(
                    &junction_alias,
                    &origin_fk.columns,
                    &parent.alias,
                    &origin_fk.ref_columns,
                ),
            )
        }
    }
}

fn array_literal(values: &[String]) -> String {
    let mut out = String::from("{");
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in value.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn condition(
    target: &Target<'_>,
    field: &Field,
    negated: bool,
    operation: &Operation,
    b: &mut Builder,
) -> Result<String, ApiError> {
    let expr = field_expr(target, field, b)?;
    let lhs = &expr.sql;
    let sql = match operation {
        Operation::Compare {
            op,
            quantifier,
            value,
        } => {
            let (symbol, pattern) = match op {
                CompareOp::Eq => ("=", false),
                CompareOp::Neq => ("<>", false),
                CompareOp::Gt => (">", false),
                CompareOp::Gte => (">=", false),
                CompareOp::Lt => ("<", false),
                CompareOp::Lte => ("<=", false),
                CompareOp::Like => ("LIKE", true),
                CompareOp::Ilike => ("ILIKE", true),
                CompareOp::Match => ("~", true),
                CompareOp::Imatch => ("~*", true),
            };
            let is_like = matches!(op, CompareOp::Like | CompareOp::Ilike);
            let convert = |v: &str| {
                if is_like {
                    v.replace('*', "%")
                } else {
                    v.to_owned()
                }
            };
            let text_lhs = if pattern && !expr.is_text {
                format!("({lhs})::text")
            } else {
                lhs.clone()
            };
            match quantifier {
                None if pattern => format!("{text_lhs} {symbol} {}::text", b.bind(convert(value))),
                None => format!("{lhs} {symbol} {}::{}", b.bind(value.clone()), expr.cast),
                Some(quantifier) => {
                    let word = match quantifier {
                        Quantifier::Any => "ANY",
                        Quantifier::All => "ALL",
                    };
                    if pattern {
                        format!(
                            "{text_lhs} {symbol} {word}({}::text[])",
                            b.bind(convert(value))
                        )
                    } else {
                        format!(
                            "{lhs} {symbol} {word}({}::{})",
                            b.bind(value.clone()),
                            expr.array_cast
                        )
                    }
                }
            }
        }
        Operation::Is(is) => format!(
            "{lhs} IS {}",
            match is {
                IsValue::Null => "NULL",
                IsValue::NotNull => "NOT NULL",
                IsValue::True => "TRUE",
                IsValue::False => "FALSE",
                IsValue::Unknown => "UNKNOWN",
            }
        ),
        Operation::IsDistinct(value) => format!(
            "{lhs} IS DISTINCT FROM {}::{}",
            b.bind(value.clone()),
            expr.cast
        ),
        Operation::In(values) => format!(
            "{lhs} = ANY({}::{})",
            b.bind(array_literal(values)),
            expr.array_cast
        ),
        Operation::Range { op, value } => {
            let symbol = match op {
                RangeOp::Contains => "@>",
                RangeOp::Contained => "<@",
                RangeOp::Overlap => "&&",
                RangeOp::StrictlyLeft => "<<",
                RangeOp::StrictlyRight => ">>",
                RangeOp::NotExtendRight => "&<",
                RangeOp::NotExtendLeft => "&>",
                RangeOp::Adjacent => "-|-",
            };
            format!("{lhs} {symbol} {}::{}", b.bind(value.clone()), expr.cast)
        }
        Operation::Fts {
            kind,
            language,
            value,
        } => {
            let function = match kind {
                FtsKind::Fts => "to_tsquery",
                FtsKind::Plain => "plainto_tsquery",
                FtsKind::Phrase => "phraseto_tsquery",
                FtsKind::Websearch => "websearch_to_tsquery",
            };
            let language = language
                .as_ref()
                .map(|lang| format!("{}::regconfig, ", b.bind(lang.clone())));
            let language = language.unwrap_or_default();
            let vector = if expr.is_tsvector {
                lhs.clone()
            } else {
                format!("to_tsvector({language}{lhs})")
            };
            format!(
                "{vector} @@ {function}({language}{}::text)",
                b.bind(value.clone())
            )
        }
    };
    Ok(if negated { format!("NOT ({sql})") } else { sql })
}

fn logic(
    target: &Target<'_>,
    tree: &LogicTree,
    level: &Level<'_>,
    b: &mut Builder,
) -> Result<String, ApiError> {
    match tree {
        // `embed.is.null` / `embed.not.is.null` inside a tree.
        LogicTree::Filter(filter)
            if filter.field.json_path.is_empty()
                && target.relation.column(&filter.field.name).is_none()
                && level
                    .exists
                    .iter()
                    .any(|(key, _)| key == &filter.field.name) =>
        {
            let exists = level
                .exists
                .iter()
                .find(|(key, _)| key == &filter.field.name)
                .map(|(_, sql)| sql.clone())
                .unwrap_or_default();
            match (&filter.operation, filter.negated) {
                (Operation::Is(IsValue::Null), false) | (Operation::Is(IsValue::NotNull), true) => {
                    Ok(format!("NOT {exists}"))
                }
                (Operation::Is(IsValue::NotNull), false) | (Operation::Is(IsValue::Null), true) => {
                    Ok(exists)
                }
                _ => Err(ApiError::bad_embed_operator(&filter.field.name)),
            }
        }
        LogicTree::Filter(filter) => {
            condition(target, &filter.field, filter.negated, &filter.operation, b)
        }
        LogicTree::Expr {
            negated,
            op,
            children,
        } => {
            let joiner = match op {
                LogicOp::And => " AND ",
                LogicOp::Or => " OR ",
            };
            let parts = children
                .iter()
                .map(|child| logic(target, child, level, b))
                .collect::<Result<Vec<_>, _>>()?;
            let sql = format!("({})", parts.join(joiner));
            Ok(if *negated { format!("NOT {sql}") } else { sql })
        }
    }
}

/// The filters and logic trees at `path`, except null filters on embeds
/// (which [`level`] turns into EXISTS conditions).
fn conditions_at(
    ctx: &Ctx<'_>,
    target: &Target<'_>,
    path: &[String],
    level: &Level,
    b: &mut Builder,
) -> Result<Vec<String>, ApiError> {
    let is_embed = |name: &str| {
        level.to_one.iter().any(|one| one.key == name) || level.to_many.iter().any(|k| k == name)
    };
    let mut conditions = Vec::new();
    for (p, filter) in &ctx.query.filters {
        if p.as_slice() != path
            || (filter.field.json_path.is_empty()
                && is_embed(&filter.field.name)
                && target.relation.column(&filter.field.name).is_none())
        {
            continue;
        }
        conditions.push(condition(
            target,
            &filter.field,
            filter.negated,
            &filter.operation,
            b,
        )?);
    }
    for (p, tree) in &ctx.query.logic {
        if p.as_slice() == path {
            conditions.push(logic(target, tree, level, b)?);
        }
    }
    Ok(conditions)
}

fn where_sql(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// `ORDER BY` for the relation at `path`; `embed(col)` orders by a to-one
/// embed's column.
fn order_at(
    ctx: &Ctx<'_>,
    target: &Target<'_>,
    path: &[String],
    level: &Level,
    b: &mut Builder,
) -> Result<String, ApiError> {
    let terms: Vec<&OrderTerm> = ctx
        .query
        .order
        .iter()
        .filter(|(p, _)| p.as_slice() == path)
        .flat_map(|(_, terms)| terms)
        .collect();
    if terms.is_empty() {
        return Ok(String::new());
    }
    let mut parts = Vec::new();
    for term in terms {
        let mut part = match &term.relation {
            Some(relation) => {
                let Some(one) = level.to_one.iter().find(|one| &one.key == relation) else {
                    if level.to_many.contains(relation) {
                        return Err(ApiError::related_order(&target.relation.name, relation));
                    }
                    return Err(ApiError::not_embedded(relation));
                };
                // A column or a computed field of the embedded row.
                let embedded = Target {
                    relation: one.relation,
                    qualified: one.from.clone(),
                    alias: one.alias.clone(),
                    cache: ctx.cache,
                };
                let (expr, _, _) = embedded.field(&term.field.name)?;
                format!("(SELECT {expr} FROM {}{} LIMIT 1)", one.from, one.where_sql)
            }
            None => field_expr(target, &term.field, b)?.sql,
        };
        match term.direction {
            Some(Direction::Asc) => part.push_str(" ASC"),
            Some(Direction::Desc) => part.push_str(" DESC"),
            None => {}
        }
        match term.nulls {
            Some(Nulls::First) => part.push_str(" NULLS FIRST"),
            Some(Nulls::Last) => part.push_str(" NULLS LAST"),
            None => {}
        }
        parts.push(part);
    }
    Ok(format!(" ORDER BY {}", parts.join(", ")))
}

/// The WHERE of a PATCH or DELETE. With `limit` (and `order`/`offset`),
/// only the rows that page selects are touched, chosen by `ctid` as
/// PostgREST does; the limit is never silently ignored.
fn mutation_where(
    ctx: &Ctx<'_>,
    target: &Target<'_>,
    level: &Level<'_>,
    b: &mut Builder,
) -> Result<String, ApiError> {
    let conditions = where_sql(&conditions_at(ctx, target, &[], level, b)?);
    let (offset, limit) = page_at(ctx.query, &[]);
    if limit.is_none() && offset == 0 {
        return Ok(conditions);
    }
    let order = order_at(ctx, target, &[], level, b)?;
    let mut page = String::new();
    if let Some(limit) = limit {
        page.push_str(&format!(" LIMIT {}::bigint", b.bind(limit.to_string())));
    }
    if offset > 0 {
        page.push_str(&format!(" OFFSET {}::bigint", b.bind(offset.to_string())));
    }
    Ok(format!(
        " WHERE {}.ctid = ANY(ARRAY(SELECT {}.ctid FROM {}{conditions}{order}{page}))",
        target.alias, target.alias, target.qualified
    ))
}

/// `embed.limit` and `embed.offset`.
fn page_at(query: &QueryParams, path: &[String]) -> (i64, Option<i64>) {
    let offset = query
        .offsets
        .iter()
        .find(|(p, _)| p.as_slice() == path)
        .map_or(0, |(_, n)| *n);
    let limit = query
        .limits
        .iter()
        .find(|(p, _)| p.as_slice() == path)
        .map(|(_, n)| *n);
    (offset, limit)
}

/// Offset and limit from `offset`/`limit`, the `Range` header and
/// `max_rows`, intersected.
pub(crate) fn page(request: &Request<'_>) -> (i64, Option<i64>) {
    let query = request.query;
    let q_offset = query
        .offsets
        .iter()
        .find(|(p, _)| p.is_empty())
        .map_or(0, |(_, n)| *n);
    let q_limit = query
        .limits
        .iter()
        .find(|(p, _)| p.is_empty())
        .map(|(_, n)| *n);
    let mut offset = q_offset;
    let mut end: Option<i64> = q_limit.map(|limit| q_offset.saturating_add(limit));
    if let Some(range) = request.range {
        offset = offset.max(range.from);
        if let Some(to) = range.to {
            let range_end = to.saturating_add(1);
            end = Some(end.map_or(range_end, |e| e.min(range_end)));
        }
    }
    let mut limit = end.map(|e| (e - offset).max(0));
    if let Some(max) = request.max_rows {
        limit = Some(limit.map_or(max, |l| l.min(max)));
    }
    (offset, limit)
}

fn count_expr(request: &Request<'_>, target: &Target<'_>, where_sql: &str) -> String {
    match request.prefs.count {
        Some(CountPreference::Exact) if request.action == Action::Read => {
            format!("(SELECT count(*) FROM {}{where_sql})", target.qualified)
        }
        // The planner's estimate comes from a separate EXPLAIN.
        Some(CountPreference::Planned) if request.action == Action::Read => {
            "NULL::bigint".to_owned()
        }
        // Exact up to max_rows (one more tells "more than"), then the
        // responder takes the larger of that and the planner's estimate.
        Some(CountPreference::Estimated) if request.action == Action::Read => {
            match request.max_rows {
                Some(max) => format!(
                    "(SELECT count(*) FROM (SELECT 1 FROM {}{where_sql} LIMIT {}) _pgrst_c)",
                    target.qualified,
                    max.saturating_add(1)
                ),
                None => format!("(SELECT count(*) FROM {}{where_sql})", target.qualified),
            }
        }
        Some(_) => "count(_pgrst_t)".to_owned(),
        None => "NULL::bigint".to_owned(),
    }
}

/// The response settings a function or trigger may set during the
/// statement (PostgREST's `response.headers` and `response.status`), as
/// the statement's fourth and fifth columns. They are evaluated after the
/// rest of the row, so they see what the statement's own work set.
pub const RESPONSE_SETTINGS: &str =
    "current_setting('response.headers', true), current_setting('response.status', true)";

/// How [`Plan::planned_count`] starts.
pub(crate) const EXPLAIN_PREFIX: &str = "EXPLAIN (FORMAT JSON) ";

fn planned_count(request: &Request<'_>, target: &Target<'_>, where_sql: &str) -> Option<String> {
    matches!(
        request.prefs.count,
        Some(CountPreference::Planned | CountPreference::Estimated)
    )
    .then(|| {
        format!(
            "{EXPLAIN_PREFIX}SELECT 1 FROM {}{where_sql}",
            target.qualified
        )
    })
}

fn wrap(
    total: &str,
    items: &[String],
    source: &str,
    alias: &str,
    media: (bool, bool, bool),
) -> String {
    let (csv, strip_nulls, geojson) = media;
    // An empty list selects rows without columns, rendered as `{}`.
    let list = items.join(", ");
    // CSV: a header from the first row's keys, then each row in
    // PostgreSQL's record text format (quoted as CSV quotes) without its
    // parentheses, as PostgREST renders it.
    let body = if csv {
        "coalesce((SELECT string_agg(_pgrst_k, ',') FROM json_object_keys(json_agg(_pgrst_t) -> 0) AS _pgrst_k), '') \
         || CASE WHEN count(_pgrst_t) > 0 THEN E'\\n' ELSE '' END \
         || coalesce(string_agg(substring(_pgrst_t::text, 2, length(_pgrst_t::text) - 2), E'\\n'), '')"
    } else if geojson {
        // PostGIS turns each row (its geometry column, the other columns as
        // properties) into a Feature.
        "json_build_object('type', 'FeatureCollection', 'features', \
         coalesce(json_agg(st_asgeojson(_pgrst_t)::json), '[]'))::text"
    } else if strip_nulls {
        "json_strip_nulls(coalesce(json_agg(_pgrst_t), '[]'))::text"
    } else {
        "coalesce(json_agg(_pgrst_t), '[]')::text"
    };
    format!(
        "SELECT {total}, count(_pgrst_t), {body}, {RESPONSE_SETTINGS} \
         FROM (SELECT {list} FROM {source} AS {alias}) _pgrst_t"
    )
}

pub(crate) fn plan_read(
    ctx: &Ctx<'_>,
    target: &Target<'_>,
    request: &Request<'_>,
    level: &Level<'_>,
    b: &mut Builder,
) -> Result<Plan, ApiError> {
    let mut conditions = level.conditions.clone();
    conditions.extend(conditions_at(ctx, target, &[], level, b)?);
    let where_sql = where_sql(&conditions);
    let mut order_sql = order_at(ctx, target, &[], level, b)?;
    let (offset, limit) = page(request);
    let aggregated = level.aggregated;
    let mut items = level.items.clone();
    if let Some(distance) = &ctx.nearest {
        if aggregated {
            return Err(ApiError::not_implemented(
                "aggregates in a nearest-neighbour search",
            ));
        }
        order_sql = match order_sql.strip_prefix(" ORDER BY ") {
            Some(rest) => format!(" ORDER BY {distance}, {rest}"),
            None => format!(" ORDER BY {distance}"),
        };
        items.push(format!("{distance} AS \"_distance\""));
    }
    let mut source = if aggregated {
        // Aggregates group the filtered rows; the page applies to groups.
        let group = if level.group_by.is_empty() {
            String::new()
        } else {
            format!(" GROUP BY {}", level.group_by.join(", "))
        };
        format!(
            "(SELECT {} FROM {}{where_sql}{group}{order_sql}",
            level.items.join(", "),
            target.qualified
        )
    } else {
        format!(
            "(SELECT {}.* FROM {}{where_sql}{order_sql}",
            target.alias, target.qualified
        )
    };
    if let Some(limit) = limit {
        source.push_str(&format!(" LIMIT {}::bigint", b.bind(limit.to_string())));
    }
    if offset > 0 {
        source.push_str(&format!(" OFFSET {}::bigint", b.bind(offset.to_string())));
    }
    source.push(')');
    let total = count_expr(request, target, &where_sql);
    let planned = planned_count(request, target, &where_sql);
    let sql = if aggregated {
        wrap(
            &total,
            &["*".to_owned()],
            &source,
            "_pgrst_g",
            (request.csv, request.strip_nulls, request.geojson),
        )
    } else {
        wrap(
            &total,
            &items,
            &source,
            &target.alias,
            (request.csv, request.strip_nulls, request.geojson),
        )
    };
    let mut plan = b.finish(sql, offset);
    plan.planned_count = planned;
    Ok(plan)
}

/// The objects of a write body and the columns they set.
struct Payload {
    json: String,
    columns: Vec<String>,
    is_array: bool,
}

fn payload(
    target: &Target<'_>,
    request: &Request<'_>,
    allow_array: bool,
) -> Result<Payload, ApiError> {
    let invalid = || ApiError::invalid_body("Empty or invalid json");
    let text = request.body.unwrap_or("").trim();
    if text.is_empty() {
        return Err(invalid());
    }
    let value: Value = serde_json::from_str(text).map_err(|_| invalid())?;
    let (objects, is_array) = match &value {
        Value::Object(object) => (vec![object], false),
        Value::Array(items) if allow_array => (
            items
                .iter()
                .map(|item| item.as_object().ok_or_else(invalid))
                .collect::<Result<Vec<_>, _>>()?,
            true,
        ),
        _ => return Err(invalid()),
    };
    let columns: Vec<String> = match &request.query.columns {
        Some(columns) => columns.clone(),
        None => {
            let first: Vec<String> = objects
                .first()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            for object in &objects {
                if object.len() != first.len() || !first.iter().all(|k| object.contains_key(k)) {
                    return Err(ApiError::invalid_body("All object keys must match"));
                }
            }
            first
        }
    };
    for column in &columns {
        if target.relation.column(column).is_none() {
            return Err(ApiError::unknown_column(column, &target.relation.name));
        }
    }
    Ok(Payload {
        json: text.to_owned(),
        columns,
        is_array,
    })
}

/// `PUT /t?pk=eq.v` with the whole row: an upsert on the primary key,
/// after checking that the URL and the body name the same row.
fn plan_put(
    target: &Target<'_>,
    request: &Request<'_>,
    items: &[String],
    b: &mut Builder,
) -> Result<Plan, ApiError> {
    let query = request.query;
    if !query.limits.is_empty() || !query.offsets.is_empty() {
        return Err(ApiError::put_limit());
    }
    let pk = &target.relation.primary_key;
    let mut url_values = Vec::new();
    for key in pk {
        let value = query.filters.iter().find_map(|(path, filter)| {
            match (&filter.operation, filter.negated) {
                (
                    sovra_rest_grammar::Operation::Compare {
                        op: CompareOp::Eq,
                        quantifier: None,
                        value,
                    },
                    false,
                ) if path.is_empty()
                    && filter.field.json_path.is_empty()
                    && &filter.field.name == key =>
                {
                    Some(value.clone())
                }
                _ => None,
            }
        });
        match value {
            Some(value) => url_values.push((key.clone(), value)),
            None => return Err(ApiError::put_filters()),
        }
    }
    if pk.is_empty() || query.filters.len() != pk.len() || !query.logic.is_empty() {
        return Err(ApiError::put_filters());
    }
    let body: Value = serde_json::from_str(request.body.unwrap_or(""))
        .map_err(|_| ApiError::invalid_body("Empty or invalid json"))?;
    let Value::Object(object) = &body else {
        return Err(ApiError::invalid_body("Empty or invalid json"));
    };
    for (key, url_value) in &url_values {
        let matches = match object.get(key) {
            Some(Value::String(text)) => text == url_value,
            Some(Value::Null) | None => false,
            Some(other) => &other.to_string() == url_value,
        };
        if !matches {
            return Err(ApiError::put_mismatch());
        }
    }
    let prefs = Preferences {
        resolution: Some(Resolution::MergeDuplicates),
        ..request.prefs.clone()
    };
    let query = QueryParams {
        on_conflict: Some(pk.clone()),
        ..query.clone()
    };
    let upsert = Request {
        prefs: &prefs,
        query: &query,
        ..*request
    };
    plan_insert(target, &upsert, items, b)
}

fn plan_insert(
    target: &Target<'_>,
    request: &Request<'_>,
    items: &[String],
    b: &mut Builder,
) -> Result<Plan, ApiError> {
    let payload = payload(target, request, true)?;
    let body = b.bind(if payload.is_array {
        payload.json
    } else {
        format!("[{}]", payload.json)
    });
    let columns: Vec<String> = payload.columns.iter().map(|c| quote_ident(c)).collect();
    let insert = if columns.is_empty() {
        format!(
            "INSERT INTO {} SELECT FROM json_array_elements({body}::json) _pgrst_body",
            target.qualified
        )
    } else if request.prefs.missing == Some(sovra_rest_grammar::Missing::Default) {
        // Keys absent from an object take the column's default, taken
        // from the catalog; present keys (even null) are used as given.
        let values: Vec<String> = payload
            .columns
            .iter()
            .map(|name| {
                let column = quote_ident(name);
                let default = target
                    .relation
                    .column(name)
                    .and_then(|c| c.default_expr.clone())
                    .unwrap_or_else(|| "NULL".to_owned());
                let key = b.bind(name.clone());
                format!(
                    "CASE WHEN _pgrst_elem::jsonb ? {key}::text THEN _pgrst_row.{column} ELSE {default} END"
                )
            })
            .collect();
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM json_array_elements({body}::json) _pgrst_elem, \
             LATERAL json_populate_record(NULL::{}, _pgrst_elem) _pgrst_row",
            target.qualified,
            columns.join(", "),
            values.join(", "),
            target.qualified
        )
    } else {
        let list = columns.join(", ");
        format!(
            "INSERT INTO {} ({list}) SELECT {list} FROM json_populate_recordset(NULL::{}, {body}::json) _pgrst_body",
            target.qualified, target.qualified
        )
    };
    let conflict = match request.prefs.resolution {
        None => String::new(),
        Some(resolution) => {
            let keys = match &request.query.on_conflict {
                Some(keys) => keys.clone(),
                None => target.relation.primary_key.clone(),
            };
            if keys.is_empty() {
                String::new()
            } else {
                for key in &keys {
                    target.column(key)?;
                }
                let keys_sql: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
                match resolution {
                    Resolution::IgnoreDuplicates => {
                        format!(" ON CONFLICT ({}) DO NOTHING", keys_sql.join(", "))
                    }
                    Resolution::MergeDuplicates if columns.is_empty() => {
                        format!(" ON CONFLICT ({}) DO NOTHING", keys_sql.join(", "))
                    }
                    Resolution::MergeDuplicates => format!(
                        " ON CONFLICT ({}) DO UPDATE SET {}",
                        keys_sql.join(", "),
                        columns
                            .iter()
                            .map(|c| format!("{c} = EXCLUDED.{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        }
    };
    // Upserts into tables tell inserted rows from updated ones by `xmax`
    // (zero for a row this statement inserted); views have no `xmax`.
    // As PostgREST, only merging upserts answer 200 when nothing was
    // inserted; ignored duplicates keep the insert's 201.
    let counts_inserted = request.prefs.resolution == Some(Resolution::MergeDuplicates)
        && matches!(
            target.relation.kind,
            crate::schema::RelationKind::Table | crate::schema::RelationKind::PartitionedTable
        );
    let sql = if counts_inserted {
        format!(
            "WITH _pgrst_written AS ({insert}{conflict} RETURNING {alias} AS _pgrst_row, {alias}.xmax = 0 AS _pgrst_inserted), \
             pgrst_source AS (SELECT (_pgrst_row).* FROM _pgrst_written) {}",
            wrap(
                "(SELECT count(*) FROM _pgrst_written WHERE _pgrst_inserted)",
                items,
                "pgrst_source",
                &target.alias,
                (request.csv, request.strip_nulls, request.geojson)
            ),
            alias = target.alias,
        )
    } else {
        format!(
            "WITH pgrst_source AS ({insert}{conflict} RETURNING {}.*) {}",
            target.alias,
            wrap(
                &count_expr(request, target, ""),
                items,
                "pgrst_source",
                &target.alias,
                (request.csv, request.strip_nulls, request.geojson)
            )
        )
    };
    let mut plan = b.finish(sql, 0);
    plan.counts_inserted = counts_inserted;
    Ok(plan)
}

fn plan_update(
    ctx: &Ctx<'_>,
    target: &Target<'_>,
    request: &Request<'_>,
    level: &Level<'_>,
    b: &mut Builder,
) -> Result<Plan, ApiError> {
    let items = &level.items;
    let payload = payload(target, request, false)?;
    if payload.columns.is_empty() {
        // Nothing to set: nothing changes, as in PostgREST.
        return Ok(b.finish("SELECT NULL::bigint, 0::bigint, '[]'::text".to_owned(), 0));
    }
    let body = b.bind(payload.json);
    let set: Vec<String> = payload
        .columns
        .iter()
        .map(|c| format!("{} = _pgrst_body.{}", quote_ident(c), quote_ident(c)))
        .collect();
    let where_sql = mutation_where(ctx, target, level, b)?;
    let sql = format!(
        "WITH pgrst_source AS (UPDATE {} SET {} FROM (SELECT * FROM json_populate_record(NULL::{}, {body}::json)) _pgrst_body{where_sql} RETURNING {}.*) {}",
        target.qualified,
        set.join(", "),
        target.qualified,
        target.alias,
        wrap(
            &count_expr(request, target, ""),
            items,
            "pgrst_source",
            &target.alias,
            (request.csv, request.strip_nulls, request.geojson)
        )
    );
    Ok(b.finish(sql, 0))
}

fn plan_delete(
    ctx: &Ctx<'_>,
    target: &Target<'_>,
    request: &Request<'_>,
    level: &Level<'_>,
    b: &mut Builder,
) -> Result<Plan, ApiError> {
    let items = &level.items;
    let where_sql = mutation_where(ctx, target, level, b)?;
    let sql = format!(
        "WITH pgrst_source AS (DELETE FROM {}{where_sql} RETURNING {}.*) {}",
        target.qualified,
        target.alias,
        wrap(
            &count_expr(request, target, ""),
            items,
            "pgrst_source",
            &target.alias,
            (request.csv, request.strip_nulls, request.geojson)
        )
    );
    Ok(b.finish(sql, 0))
}
