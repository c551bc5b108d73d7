//! Calls of `/rpc/<function>` (spec §2.12): choosing the overload by the
//! argument names supplied, binding the arguments, and shaping the result.
//! Functions that return rows reuse the read planner, so `select`,
//! filters, order, paging, counts and embeds work on their results.

use std::collections::BTreeSet;

use sovra_rest_grammar::{CountPreference, Preferences, QueryParams, RangeHeader, SelectItem};

use crate::error::ApiError;
use crate::plan::{
    Action, Builder, Ctx, EXPLAIN_PREFIX, Plan, Request, Target, check_paths, check_supported,
    level, plan_read,
};
use crate::schema::{Relation, RelationKind, ReturnShape, Routine, SchemaCache, quote_ident};

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
}

/// The arguments of a call.
#[derive(Clone, Copy, Debug)]
pub enum Arguments<'a> {
    /// `GET`: text values from the query string.
    Query(&'a [(String, String)]),
    /// `POST`: a JSON body (an object of named arguments, or anything for a
    /// single unnamed `json`/`jsonb` parameter).
    Json(&'a str),
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

fn is_json_type(routine: &Routine) -> bool {
    matches!(routine.params.as_slice(), [only] if only.name.is_empty()
        && only.type_name.schema == "pg_catalog"
        && matches!(only.type_name.name.as_str(), "json" | "jsonb"))
}

fn signature(routine: &Routine) -> String {
    let params: Vec<String> = routine
        .params
        .iter()
        .map(|p| format!("{} => {}", p.name, p.type_name.name))
        .collect();
    format!("{}.{}({})", routine.schema, routine.name, params.join(", "))
}

/// Chooses the overload whose parameters the supplied names fit.
fn choose<'a>(
    cache: &'a SchemaCache,
    request: &CallRequest<'_>,
    supplied: &BTreeSet<String>,
) -> Result<(&'a Routine, bool), ApiError> {
    let overloads: Vec<&Routine> = cache
        .routines
        .iter()
        .filter(|r| r.schema == request.schema && r.name == request.function)
        .collect();
    let fits = |routine: &&Routine| {
        routine
            .params
            .iter()
            .all(|p| p.has_default || supplied.contains(&p.name))
            && supplied
                .iter()
                .all(|name| routine.params.iter().any(|p| &p.name == name))
    };
    let named: Vec<&Routine> = overloads
        .iter()
        .copied()
        .filter(|r| !is_json_type(r))
        .filter(fits)
        .collect();
    match named.as_slice() {
        [one] => return Ok((one, false)),
        [] => {}
        many => {
            let list: Vec<String> = many.iter().map(|r| signature(r)).collect();
            return Err(ApiError::ambiguous_function(&list));
        }
    }
    if matches!(request.arguments, Arguments::Json(_))
        && let Some(json_fn) = overloads.iter().find(|r| is_json_type(r))
    {
        return Ok((json_fn, true));
    }
    let names: Vec<&str> = supplied.iter().map(String::as_str).collect();
    let suggestion = overloads.first().map(|r| signature(r)).or_else(|| {
        cache
            .routines
            .iter()
            .filter(|r| r.schema == request.schema)
            .find(|r| r.name.eq_ignore_ascii_case(request.function))
            .map(signature)
    });
    Err(ApiError::unknown_function(
        request.schema,
        request.function,
        &names,
        matches!(request.arguments, Arguments::Json(_)),
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
        (Arguments::Json(_), _) => BTreeSet::new(),
    };
    let (routine, whole_body) = choose(cache, request, &supplied)?;
    if request.is_get && routine.volatility == crate::schema::Volatility::Volatile {
        return Err(
            ApiError::rpc_method("GET").with_details("the function is VOLATILE: call it with POST")
        );
    }

    // The argument list, values bound.
    let args: Vec<String> = if whole_body {
        let text = match request.arguments {
            Arguments::Json(text) => text.to_owned(),
            Arguments::Query(_) => String::new(),
        };
        vec![format!(
            "{}::{}",
            b.bind(text),
            routine.params[0].type_name.sql()
        )]
    } else {
        match request.arguments {
            Arguments::Query(pairs) => routine
                .params
                .iter()
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
            Arguments::Json(_) => {
                let body = match &body_value {
                    Some(value @ serde_json::Value::Object(_)) => value.to_string(),
                    Some(_) => return Err(ApiError::invalid_body("Empty or invalid json")),
                    None => "{}".to_owned(),
                };
                let body = b.bind(body);
                routine
                    .params
                    .iter()
                    .filter(|p| supplied.contains(&p.name))
                    .map(|p| {
                        let name = quote_ident(&p.name);
                        let keyword = if p.variadic { "VARIADIC " } else { "" };
                        format!(
                            "{keyword}{name} => (SELECT _pgrst_args.{name} FROM json_to_record({body}::json) AS _pgrst_args({name} {}))",
                            p.type_name.sql()
                        )
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
    let read_only = request.is_get || routine.volatility != crate::schema::Volatility::Volatile;

    let (sql, result) = match &routine.returns {
        ReturnShape::Void => (
            format!("SELECT NULL::bigint, 0::bigint, ''::text FROM (SELECT {call}) _pgrst_void"),
            RoutineResult::Void,
        ),
        ReturnShape::Scalar(_) if !routine.returns_set => (
            format!("SELECT NULL::bigint, 1::bigint, coalesce(to_json({call}), 'null')::text"),
            RoutineResult::Scalar,
        ),
        ReturnShape::Scalar(_) => (
            // The page is every row, so a count is the page's.
            format!(
                "SELECT {}, count(_pgrst_scalar), coalesce(json_agg(_pgrst_scalar), '[]')::text FROM {call} AS _pgrst_scalar",
                if request.prefs.count.is_some() {
                    "count(_pgrst_scalar)"
                } else {
                    "NULL::bigint"
                }
            ),
            RoutineResult::Set,
        ),
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
            let mut target = Target::new(&relation);
            target.qualified = if counted {
                format!("_pgrst_source AS {}", target.alias)
            } else {
                format!("{call} AS {}", target.alias)
            };
            let ctx = Ctx {
                cache,
                query: request.query,
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
            });
        }
    };
    Ok(CallPlan {
        plan: b.finish(sql, 0),
        result,
        read_only,
    })
}
