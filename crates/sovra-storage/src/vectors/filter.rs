//! The metadata filter of `QueryVectors`, S3 Vectors' filter language:
//!
//! ```text
//! filter   := { "$and": [filter, …] } | { "$or": [filter, …] } | fields
//! fields   := { key: primitive | { op: value, … }, … }        (all must hold)
//! op       := $eq | $ne (primitive) | $gt | $gte | $lt | $lte (number)
//!           | $in | $nin (non-empty array of primitives) | $exists (boolean)
//! primitive:= string | number | boolean
//! ```
//!
//! `$eq` on an array-valued key matches when the array holds the value;
//! `$ne`, `$nin` and `$exists: false` match vectors without the key; the
//! comparisons match numbers only. Parsing is pure and bounded
//! ([`MAX_DEPTH`] levels of `$and`/`$or`, [`MAX_CLAUSES`] conditions,
//! [`MAX_VALUES`] listed values); [`Filter::to_sql`] renders a condition on
//! `v.metadata` in which every key and value is a bound parameter.

use serde_json::Value;

use super::model::invalid;
use crate::StorageError;

/// Deepest nesting of `$and`/`$or`.
pub const MAX_DEPTH: usize = 8;
/// Most conditions in one filter.
pub const MAX_CLAUSES: usize = 64;
/// Most values in all `$in`/`$nin` lists of one filter together.
pub const MAX_VALUES: usize = 1000;

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Field { key: String, op: Op },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    Cmp(Cmp, f64),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
}

/// A bound value of the rendered condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Text(String),
    Json(Value),
    Float(f64),
}

struct Budget {
    clauses: usize,
    values: usize,
}

fn bad(why: impl std::fmt::Display) -> StorageError {
    invalid(format!("Invalid filter: {why}"))
}

impl Filter {
    /// Parses a filter; keys in `non_filterable` may not be used.
    pub fn parse(value: &Value, non_filterable: &[String]) -> Result<Filter, StorageError> {
        let mut budget = Budget {
            clauses: 0,
            values: 0,
        };
        parse(value, non_filterable, 0, &mut budget)
    }

    /// The SQL condition, its placeholders numbered from `first`.
    pub fn to_sql(&self, first: usize) -> (String, Vec<Param>) {
        let mut params = Vec::new();
        let mut sql = String::new();
        render(self, first, &mut sql, &mut params);
        (sql, params)
    }
}

fn parse(
    value: &Value,
    non_filterable: &[String],
    depth: usize,
    budget: &mut Budget,
) -> Result<Filter, StorageError> {
    if depth >= MAX_DEPTH {
        return Err(bad(format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let Value::Object(map) = value else {
        return Err(bad("a filter must be an object"));
    };
    if map.is_empty() {
        return Err(bad("a filter must contain at least one condition"));
    }
    if let Some(logical) = ["$and", "$or"].into_iter().find(|op| map.contains_key(*op)) {
        if map.len() != 1 {
            return Err(bad(format!("{logical} must be the only key of its object")));
        }
        let Some(Value::Array(items)) = map.get(logical) else {
            return Err(bad(format!("{logical} requires a non-empty array")));
        };
        if items.is_empty() {
            return Err(bad(format!("{logical} requires a non-empty array")));
        }
        let parts = items
            .iter()
            .map(|item| parse(item, non_filterable, depth + 1, budget))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if logical == "$and" {
            Filter::And(parts)
        } else {
            Filter::Or(parts)
        });
    }
    let mut parts = Vec::new();
    for (key, condition) in map {
        if key.starts_with('$') {
            return Err(bad(format!(
                "unknown operator {key} where a key was expected"
            )));
        }
        if key.is_empty() || key.contains('\0') {
            return Err(bad("metadata keys must be non-empty text"));
        }
        if non_filterable.iter().any(|k| k == key) {
            return Err(bad(format!("\"{key}\" is a non-filterable metadata key")));
        }
        match condition {
            Value::Object(ops) => {
                if ops.is_empty() {
                    return Err(bad(format!("empty operator object for \"{key}\"")));
                }
                for (op, operand) in ops {
                    parts.push(Filter::Field {
                        key: key.clone(),
                        op: parse_op(key, op, operand, budget)?,
                    });
                }
            }
            other => parts.push(Filter::Field {
                key: key.clone(),
                op: parse_op(key, "$eq", other, budget)?,
            }),
        }
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Filter::And(parts)
    })
}

fn primitive(key: &str, op: &str, value: &Value) -> Result<Value, StorageError> {
    match value {
        Value::String(_) | Value::Bool(_) | Value::Number(_) => Ok(value.clone()),
        _ => Err(bad(format!(
            "{op} for \"{key}\" requires a string, number or boolean"
        ))),
    }
}

fn parse_op(key: &str, op: &str, operand: &Value, budget: &mut Budget) -> Result<Op, StorageError> {
    budget.clauses += 1;
    if budget.clauses > MAX_CLAUSES {
        return Err(bad(format!("more than {MAX_CLAUSES} conditions")));
    }
    let number = |cmp| {
        operand
            .as_f64()
            .filter(|n| n.is_finite())
            .map(|n| Op::Cmp(cmp, n))
            .ok_or_else(|| bad(format!("{op} for \"{key}\" requires a number")))
    };
    let list = |budget: &mut Budget| -> Result<Vec<Value>, StorageError> {
        let Value::Array(items) = operand else {
            return Err(bad(format!(
                "{op} for \"{key}\" requires a non-empty array"
            )));
        };
        if items.is_empty() {
            return Err(bad(format!(
                "{op} for \"{key}\" requires a non-empty array"
            )));
        }
        budget.values += items.len();
        if budget.values > MAX_VALUES {
            return Err(bad(format!("more than {MAX_VALUES} listed values")));
        }
        items.iter().map(|v| primitive(key, op, v)).collect()
    };
    match op {
        "$eq" => Ok(Op::Eq(primitive(key, op, operand)?)),
        "$ne" => Ok(Op::Ne(primitive(key, op, operand)?)),
        "$gt" => number(Cmp::Gt),
        "$gte" => number(Cmp::Gte),
        "$lt" => number(Cmp::Lt),
        "$lte" => number(Cmp::Lte),
        "$in" => Ok(Op::In(list(budget)?)),
        "$nin" => Ok(Op::Nin(list(budget)?)),
        "$exists" => match operand {
            Value::Bool(b) => Ok(Op::Exists(*b)),
            _ => Err(bad(format!("$exists for \"{key}\" requires a boolean"))),
        },
        other => Err(bad(format!("unsupported operator {other}"))),
    }
}

fn render(filter: &Filter, first: usize, sql: &mut String, params: &mut Vec<Param>) {
    let bind = |param: Param, params: &mut Vec<Param>| {
        params.push(param);
        format!("${}", first + params.len() - 1)
    };
    match filter {
        Filter::And(parts) | Filter::Or(parts) => {
            let joiner = if matches!(filter, Filter::And(_)) {
                " and "
            } else {
                " or "
            };
            sql.push('(');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push_str(joiner);
                }
                render(part, first, sql, params);
            }
            sql.push(')');
        }
        Filter::Field { key, op } => {
            let k = bind(Param::Text(key.clone()), params);
            let field = format!("(v.metadata -> {k}::text)");
            let text = match op {
                Op::Eq(value) => {
                    let p = bind(Param::Json(value.clone()), params);
                    format!("coalesce({field} @> {p}::jsonb, false)")
                }
                Op::Ne(value) => {
                    let p = bind(Param::Json(value.clone()), params);
                    format!("not coalesce({field} @> {p}::jsonb, false)")
                }
                Op::Cmp(cmp, n) => {
                    let p = bind(Param::Float(*n), params);
                    let op = match cmp {
                        Cmp::Gt => ">",
                        Cmp::Gte => ">=",
                        Cmp::Lt => "<",
                        Cmp::Lte => "<=",
                    };
                    format!(
                        "(case when jsonb_typeof({field}) = 'number' then ({field})::text::float8 {op} {p}::float8 else false end)"
                    )
                }
                Op::In(values) | Op::Nin(values) => {
                    let p = bind(Param::Json(Value::Array(values.clone())), params);
                    let test = format!(
                        "exists (select 1 from jsonb_array_elements({p}::jsonb) as f(x) where {field} @> f.x)"
                    );
                    if matches!(op, Op::In(_)) {
                        format!("({test})")
                    } else {
                        format!("(not {test})")
                    }
                }
                Op::Exists(present) => {
                    let not = if *present { "" } else { "not " };
                    format!("({not}v.metadata ? {k}::text)")
                }
            };
            sql.push_str(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_ok(value: Value) -> Filter {
        Filter::parse(&value, &[]).unwrap()
    }

    #[test]
    fn shorthand_and_operators() {
        assert_eq!(
            parse_ok(json!({"genre": "doc"})),
            Filter::Field {
                key: "genre".into(),
                op: Op::Eq(json!("doc"))
            }
        );
        let f = parse_ok(json!({"year": {"$gte": 2000, "$lt": 2010}, "tag": {"$in": ["a", 1]}}));
        let Filter::And(parts) = f else {
            panic!("not an and")
        };
        assert_eq!(parts.len(), 3);
        let f =
            parse_ok(json!({"$or": [{"a": {"$exists": true}}, {"$and": [{"b": {"$ne": false}}]}]}));
        assert!(matches!(f, Filter::Or(_)));
    }

    #[test]
    fn refusals() {
        for bad in [
            json!([]),
            json!({}),
            json!({"$and": []}),
            json!({"$and": {}}),
            json!({"$and": [{"a": 1}], "b": 2}),
            json!({"$not": {"a": 1}}),
            json!({"a": {"$regex": "x"}}),
            json!({"a": {}}),
            json!({"a": null}),
            json!({"a": [1, 2]}),
            json!({"a": {"$eq": {"b": 1}}}),
            json!({"a": {"$gt": "1"}}),
            json!({"a": {"$in": []}}),
            json!({"a": {"$in": "x"}}),
            json!({"a": {"$nin": [[1]]}}),
            json!({"a": {"$exists": 1}}),
            json!({"": 1}),
        ] {
            let err = Filter::parse(&bad, &[]).unwrap_err();
            assert_eq!(err.code, "InvalidParameter", "{bad}");
            assert_eq!(err.http, Some(400));
        }
        let err = Filter::parse(&json!({"body": "x"}), &["body".to_owned()]).unwrap_err();
        assert!(err.message.contains("non-filterable"), "{}", err.message);
    }

    #[test]
    fn depth_clauses_and_values_are_bounded() {
        let mut deep = json!({"a": 1});
        for _ in 0..MAX_DEPTH {
            deep = json!({"$and": [deep]});
        }
        assert!(Filter::parse(&deep, &[]).is_err());
        let mut ok = json!({"a": 1});
        for _ in 0..MAX_DEPTH - 1 {
            ok = json!({"$or": [ok]});
        }
        assert!(Filter::parse(&ok, &[]).is_ok());
        let many: Vec<Value> = (0..=MAX_CLAUSES)
            .map(|i| json!({ format!("k{i}"): i }))
            .collect();
        assert!(Filter::parse(&json!({ "$and": many }), &[]).is_err());
        let values: Vec<Value> = (0..=MAX_VALUES).map(|i| json!(i)).collect();
        assert!(Filter::parse(&json!({"a": {"$in": values}}), &[]).is_err());
        // A hostile, very deep document is refused without recursion past the bound.
        let mut hostile = String::new();
        for _ in 0..10_000 {
            hostile.push_str("{\"$or\":[");
        }
        hostile.push_str("{\"a\":1}");
        for _ in 0..10_000 {
            hostile.push_str("]}");
        }
        // serde_json's own limit (128 levels) refuses it before the filter
        // parser sees it; the parser's own bound is checked above.
        assert!(serde_json::from_str::<Value>(&hostile).is_err());
    }

    #[test]
    fn sql_binds_every_key_and_value() {
        let f = parse_ok(json!({"$or": [
            {"genre": "doc"},
            {"year": {"$gt": 1999.5}},
            {"tag": {"$nin": ["x'; drop table t; --"]}},
            {"k'ey": {"$exists": false}}
        ]}));
        let (sql, params) = f.to_sql(4);
        assert_eq!(
            sql,
            "(coalesce((v.metadata -> $4::text) @> $5::jsonb, false) or \
             (case when jsonb_typeof((v.metadata -> $6::text)) = 'number' then ((v.metadata -> $6::text))::text::float8 > $7::float8 else false end) or \
             (not exists (select 1 from jsonb_array_elements($9::jsonb) as f(x) where (v.metadata -> $8::text) @> f.x)) or \
             (not v.metadata ? $10::text))"
        );
        assert_eq!(params.len(), 7);
        assert_eq!(params[0], Param::Text("genre".into()));
        assert_eq!(params[3], Param::Float(1999.5));
        assert_eq!(params[6], Param::Text("k'ey".into()));
        assert!(!sql.contains("drop"));
    }
}
