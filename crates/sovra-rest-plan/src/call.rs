//! Calls of `/rpc/<function>` (spec §2.12): choosing the overload by the
//! argument names supplied, binding the arguments, and shaping the result.
//! Functions that return rows reuse the read planner, so `select`,
//! filters, order, paging, counts and embeds work on their results.

use std::collections::BTreeSet;

use sovra_rest_grammar::{CountPreference, Preferences, QueryParams, RangeHeader, SelectItem};

use crate::error::ApiError;
use crate::plan::{
    Action, Builder, Ctx, EXPLAIN_PREFIX, Plan, RESPONSE_SETTINGS, Request, Target, check_paths,
    check_supported, level, page, plan_read,
};
use crate::schema::{
    Relation, RelationKind, ReturnShape, Routine, RoutineParam, SchemaCache, quote_ident,
};

/// How the response renders the statement's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutineResult {
    /// `204`, no body.
    Void,
    /// The body is one JSON value (a scalar, or `null`).
    Scalar,
    /// A JSON array (set-returning functions).
    Set,
    /// One JSON object (or `null`) from a one-row array.
    SingleRow,
}

/// A planned call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallPlan {
    pub plan: Plan,
    pub result: RoutineResult,
    /// Whether the call may run in a read-only transaction.
    pub read_only: bool,
    /// Whether the function is `STABLE` or `IMMUTABLE` (as `pg_proc` says):
    /// it may run on a read replica.
    pub stable: bool,
}

/// The arguments of a call.
#[derive(Clone, Copy, Debug)]
pub enum Arguments<'a> {
    /// `GET`: text values from the query string.
    Query(&'a [(String, String)]),
    /// `POST`: a JSON body (an object of named arguments, or anything for a
    /// single unnamed `json`/`jsonb` parameter).
    Json(&'a str),
    /// `POST` with a `text/plain`, `text/xml` or `application/octet-stream`
    /// body: the whole body is the one unnamed `text`, `xml` or `bytea`
    /// parameter (or the call takes no argument).
    Raw(RawMedia, &'a [u8]),
}

/// The media types of a raw `/rpc` body, and the parameter type each fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawMedia {
    /// `text/plain` → `text`.
    Text,
    /// `text/xml` → `xml`.
    Xml,
    /// `application/octet-stream` → `bytea`.
    Octet,
}

impl RawMedia {
    fn type_name(self) -> &'static str {
        match self {
            RawMedia::Text => "text",
            RawMedia::Xml => "xml",
            RawMedia::Octet => "bytea",
        }
    }
}

/// A call request.
#[derive(Clone, Copy, Debug)]
pub struct CallRequest<'a> {
    pub schema: &'a str,
    pub function: &'a str,
    pub arguments: Arguments<'a>,
    /// `GET`/`HEAD` (always read-only).
    pub is_get: bool,
    pub query: &'a QueryParams,
    pub prefs: &'a Preferences,
    pub range: Option<RangeHeader>,
    pub max_rows: Option<i64>,
    /// Drop null-valued keys from row results (`nulls=stripped`).
    pub strip_nulls: bool,
    /// Render rows as a GeoJSON `FeatureCollection` (only functions that
    /// return rows can).
    pub geojson: bool,
}

/// The parameter names of every overload of `function` (the query keys
/// that are arguments rather than filters).
pub fn parameter_names(cache: &SchemaCache, schema: &str, function: &str) -> BTreeSet<String> {
    cache
        .routines
        .iter()
        .filter(|r| r.schema == schema && r.name == function)
        .flat_map(|r| r.params.iter().map(|p| p.name.clone()))
        .filter(|name| !name.is_empty())
        .collect()
}

/// A single unnamed parameter that takes the whole body (PostgREST's
/// `hasSingleUnnamedParam`): `json`/`jsonb` for a JSON body, `text`,
/// `xml` or `bytea` for a raw one.
fn takes_whole_body(routine: &Routine, arguments: &Arguments<'_>) -> bool {
    let [only] = routine.params.as_slice() else {
        return false;
    };
    if !only.name.is_empty() || only.type_name.schema != "pg_catalog" {
        return false;
    }
    match arguments {
        Arguments::Json(_) => matches!(only.type_name.name.as_str(), "json" | "jsonb"),
        Arguments::Raw(media, _) => only.type_name.name == media.type_name(),
        Arguments::Query(_) => false,
    }
}

/// Whether the argument names fit the parameters (PostgREST's
/// `matchesParams`): every required parameter named, every name a
/// parameter. An unnamed parameter is never named by an argument.
fn fits(routine: &Routine, supplied: &BTreeSet<String>, arguments: &Arguments<'_>) -> bool {
    if routine.params.is_empty() {
        return supplied.is_empty() && !matches!(arguments, Arguments::Raw(..));
    }
    routine
        .params
        .iter()
        .all(|p| p.has_default || (!p.name.is_empty() && supplied.contains(&p.name)))
        && supplied.iter().all(|name| {
            routine
                .params
                .iter()
                .any(|p| !p.name.is_empty() && &p.name == name)
        })
}

/// `schema.name(a => integer, b => text)`, as PostgREST lists candidates.
fn signature(routine: &Routine) -> String {
    let params: Vec<String> = routine
        .params
        .iter()
        .map(|p| format!("{} => {}", p.name, p.type_display))
        .collect();
    format!("{}.{}({})", routine.schema, routine.name, params.join(", "))
}

/// `(a, b, c)`: parameter names sorted, as PostgREST's hints show them.
fn name_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    format!("({})", names.join(", "))
}

/// PostgREST's order of overloads: fewer parameters first, then by the
/// parameters' names and types.
fn overload_order(a: &&Routine, b: &&Routine) -> std::cmp::Ordering {
    let key = |r: &Routine| {
        r.params
            .iter()
            .map(|p| (p.name.clone(), p.type_display.clone()))
            .collect::<Vec<_>>()
    };
    a.params
        .len()
        .cmp(&b.params.len())
        .then_with(|| key(a).cmp(&key(b)))
}

/// Chooses the overload as PostgREST's `findProc` does: the overloads
/// whose parameters the supplied names fit; failing those, the one with a
/// single unnamed parameter that takes the whole body.
fn choose<'a>(
    cache: &'a SchemaCache,
    request: &CallRequest<'_>,
    supplied: &BTreeSet<String>,
) -> Result<(&'a Routine, bool), ApiError> {
    let mut overloads: Vec<&Routine> = cache
        .routines
        .iter()
        .filter(|r| r.schema == request.schema && r.name == request.function)
        .collect();
    overloads.sort_by(overload_order);
    let is_post = !request.is_get;
    let named: Vec<&Routine> = overloads
        .iter()
        .copied()
        .filter(|r| fits(r, supplied, &request.arguments))
        .collect();
    let whole_body: Vec<&Routine> = overloads
        .iter()
        .copied()
        .filter(|r| is_post && !fits(r, supplied, &request.arguments))
        .filter(|r| takes_whole_body(r, &request.arguments))
        .collect();
    match (named.as_slice(), whole_body.as_slice()) {
        ([one], _) => return Ok((one, false)),
        ([], [one]) => return Ok((one, true)),
        ([], []) => {}
        ([], many) => {
            let list: Vec<String> = many.iter().map(|r| signature(r)).collect();
            return Err(ApiError::ambiguous_function(&list));
        }
        (many, _) => {
            let list: Vec<String> = many.iter().map(|r| signature(r)).collect();
            return Err(ApiError::ambiguous_function(&list));
        }
    }
    let names: Vec<&str> = supplied.iter().map(String::as_str).collect();
    let raw = match request.arguments {
        Arguments::Raw(media, _) => Some(media.type_name()),
        _ => None,
    };
    // PostgREST's hint: the closest parameter list among the overloads,
    // or else the closest function name in the schema.
    let suggestion = if raw.is_some() {
        None
    } else if overloads.is_empty() {
        cache
            .routines
            .iter()
            .filter(|r| r.schema == request.schema)
            .map(|r| (crate::schema::similarity(&r.name, request.function), r))
            .filter(|(score, _)| *score >= 0.33)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, r)| format!("{}.{}", r.schema, r.name))
    } else {
        let wanted = name_list(names.iter().copied());
        overloads
            .iter()
            .map(|r| name_list(r.params.iter().map(|p| p.name.as_str())))
            .map(|list| (crate::schema::similarity(&list, &wanted), list))
            .filter(|(score, _)| *score >= 0.33)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, list)| format!("{}.{}{list}", request.schema, request.function))
    };
    Err(ApiError::unknown_function(
        request.schema,
        request.function,
        &names,
        matches!(request.arguments, Arguments::Json(_)),
        raw,
        suggestion,
    ))
}

/// A PostgreSQL array literal of `values`, each quoted.
fn array_literal(values: &[&String]) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", items.join(","))
}

/// The types whose argument [`direct_text`] may bind as text: base types of
/// `pg_catalog` whose input function reads what `json_to_record` would hand
/// it (no arrays, composites or domains, which `json_to_record` converts
/// from JSON structure).
const DIRECT_TYPES: &[&str] = &[
    "text",
    "varchar",
    "bpchar",
    "name",
    "int2",
    "int4",
    "int8",
    "numeric",
    "bool",
    "uuid",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "oid",
];

/// An argument of a JSON body as the text bound for `$n::type`, when that
/// is exactly what `json_to_record` would give the parameter: a string
/// (without NUL) or boolean for a scalar type, an integer as written, and
/// any value but `null` (or one with an escaped NUL) for `json` and `jsonb`
/// (its JSON text). Anything
/// else (`null`, fractions, arrays and objects for other types, variadic
/// parameters) goes through `json_to_record`, whose conversions PostgreSQL
/// owns. Binding directly spares PostgreSQL parsing the body once per
/// argument (about 10 µs each, `bench/RESULTS.md`).
fn direct_text(param: &RoutineParam, value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    if param.variadic || param.type_name.schema != "pg_catalog" {
        return None;
    }
    let name = param.type_name.name.as_str();
    if name == "json" || name == "jsonb" {
        // `json_to_record` refuses the escaped NUL that `json` would keep.
        let text = value.to_string();
        return (!value.is_null() && !text.contains("\\u0000")).then_some(text);
    }
    if !DIRECT_TYPES.contains(&name) {
        return None;
    }
    match value {
        Value::String(text) if !text.contains('\0') => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) if number.is_i64() || number.is_u64() => Some(number.to_string()),
        _ => None,
    }
}

/// Plans a call of `/rpc/<function>`.
pub fn plan_call(cache: &SchemaCache, request: &CallRequest<'_>) -> Result<CallPlan, ApiError> {
    let mut b = Builder { params: Vec::new() };
    let body_value: Option<serde_json::Value> = match request.arguments {
        Arguments::Json(text) if !text.trim().is_empty() => Some(
            serde_json::from_str(text)
                .map_err(|_| ApiError::invalid_body("Empty or invalid json"))?,
        ),
        _ => None,
    };
    let supplied: BTreeSet<String> = match (&request.arguments, &body_value) {
        (Arguments::Query(pairs), _) => pairs.iter().map(|(k, _)| k.clone()).collect(),
        (Arguments::Json(_), Some(serde_json::Value::Object(object))) => {
            object.keys().cloned().collect()
        }
        (Arguments::Json(_) | Arguments::Raw(..), _) => BTreeSet::new(),
    };
    let (routine, whole_body) = choose(cache, request, &supplied)?;
    if request.is_get && routine.volatility == crate::schema::Volatility::Volatile {
        return Err(
            ApiError::rpc_method("GET").with_details("the function is VOLATILE: call it with POST")
        );
    }

    // The argument list, values bound.
    let args: Vec<String> = if whole_body {
        // The one unnamed parameter, positionally (it has no name to use).
        let value = match request.arguments {
            Arguments::Json(text) => {
                format!("{}::{}", b.bind(text), routine.params[0].type_name.sql())
            }
            Arguments::Raw(RawMedia::Octet, bytes) => {
                // Parameters are bound as text: the bytes travel as hex.
                let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
                format!("decode({}, 'hex')", b.bind(hex))
            }
            Arguments::Raw(_, bytes) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| ApiError::invalid_body("The body is not valid UTF-8"))?;
                format!("{}::{}", b.bind(text), routine.params[0].type_name.sql())
            }
            Arguments::Query(_) => String::new(),
        };
        vec![value]
    } else {
        match request.arguments {
            Arguments::Query(pairs) => routine
                .params
                .iter()
                .filter(|param| !param.name.is_empty())
                .filter_map(|param| {
                    let values: Vec<&String> = pairs
                        .iter()
                        .filter(|(name, _)| name == &param.name)
                        .map(|(_, value)| value)
                        .collect();
                    let value = match values.as_slice() {
                        [] => return None,
                        // A variadic parameter takes its repeated keys as
                        // one array.
                        _ if param.variadic => array_literal(&values),
                        [one, ..] => (*one).clone(),
                    };
                    let keyword = if param.variadic { "VARIADIC " } else { "" };
                    Some(format!(
                        "{keyword}{} => {}::{}",
                        quote_ident(&param.name),
                        b.bind(value),
                        param.type_name.sql()
                    ))
                })
                .collect(),
            // No argument fits a raw body but the whole-body parameter;
            // the call takes its defaults.
            Arguments::Raw(..) => Vec::new(),
            Arguments::Json(_) => {
                let body = match &body_value {
                    Some(value @ serde_json::Value::Object(_)) => value.to_string(),
                    Some(_) => return Err(ApiError::invalid_body("Empty or invalid json")),
                    None => "{}".to_owned(),
                };
                let object = match &body_value {
                    Some(serde_json::Value::Object(object)) => Some(object),
                    _ => None,
                };
                let named: Vec<_> = routine
                    .params
                    .iter()
                    .filter(|p| !p.name.is_empty() && supplied.contains(&p.name))
                    .map(|p| {
                        (
                            p,
                            object
                                .and_then(|o| o.get(&p.name))
                                .and_then(|v| direct_text(p, v)),
                        )
                    })
                    .collect();
                // The body is bound once, and only when a parameter reads
                // it through `json_to_record`: a value the text does not use
                // would make the same text take a value here and none in
                // the call without a body.
                let mut bound_body: Option<String> = None;
                named
                    .into_iter()
                    .map(|(p, direct)| {
                        let name = quote_ident(&p.name);
                        let keyword = if p.variadic { "VARIADIC " } else { "" };
                        match direct {
                            Some(text) => {
                                format!("{keyword}{name} => {}::{}", b.bind(text), p.type_name.sql())
                            }
                            None => {
                                let body = bound_body.get_or_insert_with(|| b.bind(body.clone()));
                                format!(
                                    "{keyword}{name} => (SELECT _pgrst_args.{name} FROM json_to_record({body}::json) AS _pgrst_args({name} {}))",
                                    p.type_name.sql()
                                )
                            }
                        }
                    })
                    .collect()
            }
        }
    };
    let call = format!(
        "{}.{}({})",
        quote_ident(&routine.schema),
        quote_ident(&routine.name),
        args.join(", ")
    );
    let stable = routine.volatility != crate::schema::Volatility::Volatile;
    let read_only = request.is_get || stable;

    if request.geojson && !matches!(routine.returns, ReturnShape::Rows(_)) {
        return Err(ApiError::not_acceptable("application/geo+json"));
    }
    let (sql, result) = match &routine.returns {
        ReturnShape::Void => (
            format!(
                "SELECT NULL::bigint, 0::bigint, ''::text, {RESPONSE_SETTINGS} FROM (SELECT {call}) _pgrst_void"
            ),
            RoutineResult::Void,
        ),
        ReturnShape::Scalar(_) if !routine.returns_set => (
            format!(
                "SELECT {}, 1::bigint, coalesce(to_json({call}), 'null')::text, {RESPONSE_SETTINGS}",
                if request.prefs.count.is_some() {
                    "1::bigint"
                } else {
                    "NULL::bigint"
                }
            ),
            RoutineResult::Scalar,
        ),
        ReturnShape::Scalar(_) => {
            // `limit`, `offset`, `Range` and db-max-rows page the values; a
            // count reads the same materialised call, so the function runs
            // once.
            let read = Request {
                schema: request.schema,
                relation: &routine.name,
                action: Action::Read,
                query: request.query,
                prefs: request.prefs,
                range: request.range,
                body: None,
                max_rows: request.max_rows,
                csv: false,
                geojson: false,
                strip_nulls: false,
            };
            let (offset, limit) = page(&read);
            let mut paging = String::new();
            if let Some(limit) = limit {
                paging.push_str(&format!(" LIMIT {}::bigint", b.bind(limit.to_string())));
            }
            if offset > 0 {
                paging.push_str(&format!(" OFFSET {}::bigint", b.bind(offset.to_string())));
            }
            let values = format!("SELECT _pgrst_scalar AS _pgrst_v FROM {call} AS _pgrst_scalar");
            let sql = if request.prefs.count.is_some() {
                format!(
                    "WITH _pgrst_source AS MATERIALIZED ({values}) \
                     SELECT (SELECT count(*) FROM _pgrst_source), count(_pgrst_p), \
                     coalesce(json_agg(_pgrst_p._pgrst_v), '[]')::text, {RESPONSE_SETTINGS} \
                     FROM (SELECT _pgrst_v FROM _pgrst_source{paging}) _pgrst_p"
                )
            } else {
                format!(
                    "SELECT NULL::bigint, count(_pgrst_p), \
                     coalesce(json_agg(_pgrst_p._pgrst_v), '[]')::text, {RESPONSE_SETTINGS} \
                     FROM ({values}{paging}) _pgrst_p"
                )
            };
            return Ok(CallPlan {
                plan: b.finish(sql, offset),
                result: RoutineResult::Set,
                read_only,
                stable,
            });
        }
        ReturnShape::Rows(columns) => {
            // The result as a relation: a table's row type keeps the
            // table's name, so its relationships embed as the table's do.
            let identity = cache
                .relations
                .values()
                .find(|r| {
                    r.kind != RelationKind::View
                        && r.columns.len() == columns.len()
                        && r.columns
                            .iter()
                            .zip(columns)
                            .all(|(a, b)| a.name == b.name && a.type_name == b.type_name)
                })
                .map_or_else(
                    || (routine.schema.clone(), routine.name.clone()),
                    |r| (r.schema.clone(), r.name.clone()),
                );
            let relation = Relation {
                schema: identity.0,
                name: identity.1,
                kind: RelationKind::View,
                columns: columns.clone(),
                primary_key: Vec::new(),
                unique_keys: Vec::new(),
                insertable: false,
                updatable: false,
                deletable: false,
            };
            let select = request
                .query
                .select
                .clone()
                .unwrap_or_else(|| vec![SelectItem::Star]);
            check_supported(&select)?;
            check_paths(&select, request.query)?;
            // A count needs the rows twice (the page and the total), so the
            // call's result is materialised once and both read it: the
            // function runs once, side effects and all, as in PostgREST.
            let counted = matches!(
                request.prefs.count,
                Some(CountPreference::Exact | CountPreference::Estimated)
            );
            let mut target = Target::new(&relation, cache);
            target.qualified = if counted {
                format!("_pgrst_source AS {}", target.alias)
            } else {
                format!("{call} AS {}", target.alias)
            };
            let ctx = Ctx {
                cache,
                query: request.query,
                schema: request.schema,
                nearest: None,
            };
            let level = level(&ctx, &target, &select, &[], 1, &mut b)?;
            let read = Request {
                schema: request.schema,
                relation: &relation.name,
                action: Action::Read,
                query: request.query,
                prefs: request.prefs,
                range: request.range,
                body: None,
                max_rows: request.max_rows,
                csv: false,
                geojson: request.geojson,
                strip_nulls: request.strip_nulls,
            };
            let mut plan = plan_read(&ctx, &target, &read, &level, &mut b)?;
            if counted {
                let with = format!("WITH _pgrst_source AS MATERIALIZED (SELECT * FROM {call}) ");
                plan.statement.sql.insert_str(0, &with);
                if let Some(planned) = &mut plan.planned_count {
                    *planned =
                        planned.replacen(EXPLAIN_PREFIX, &format!("{EXPLAIN_PREFIX}{with}"), 1);
                }
            }
            let result = if routine.returns_set {
                RoutineResult::Set
            } else {
                RoutineResult::SingleRow
            };
            return Ok(CallPlan {
                plan,
                result,
                read_only,
                stable,
            });
        }
    };
    Ok(CallPlan {
        plan: b.finish(sql, 0),
        result,
        read_only,
        stable,
    })
}
