//! `postgres_changes` filters: `column=[not.]op.value`, several joined by
//! `,` (ANDed), ops `eq neq lt lte gt gte in is`. Values are compared after
//! conversion to the column's type (numbers as numbers, booleans as
//! booleans, everything else as text).

/// One condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub column: String,
    pub negate: bool,
    pub op: Op,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Is,
}

/// A parsed filter: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

/// Why a filter could not be read (sent to the client in a `system` message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Error parsing `filter` params: {0}")]
pub struct FilterError(pub String);

/// Splits at commas outside parentheses and double quotes.
fn split_top(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        value[1..value.len() - 1].replace("\\\"", "\"")
    } else {
        value.to_owned()
    }
}

impl Filter {
    /// Parses a filter; empty or blank text is no filter.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut conditions = Vec::new();
        if text.trim().is_empty() {
            return Ok(Filter { conditions });
        }
        for part in split_top(text) {
            let part = part.trim();
            let (column, rest) = part
                .split_once('=')
                .ok_or_else(|| FilterError(format!("expected column=op.value, got {part:?}")))?;
            let column = column.trim();
            if column.is_empty() {
                return Err(FilterError("a column name is required".to_owned()));
            }
            let (negate, rest) = match rest.strip_prefix("not.") {
                Some(rest) => (true, rest),
                None => (false, rest),
            };
            let (op, value) = rest
                .split_once('.')
                .ok_or_else(|| FilterError(format!("expected op.value after {column}=")))?;
            let op = match op {
                "eq" => Op::Eq,
                "neq" => Op::Neq,
                "lt" => Op::Lt,
                "lte" => Op::Lte,
                "gt" => Op::Gt,
                "gte" => Op::Gte,
                "in" => Op::In,
                "is" => Op::Is,
                other => return Err(FilterError(format!("unsupported operator {other:?}"))),
            };
            let values = if op == Op::In {
                let inner = value
                    .trim()
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| FilterError("in needs a list like in.(1,2,3)".to_owned()))?;
                let items: Vec<String> = split_top(inner).into_iter().map(unquote).collect();
                if items.len() > 100 {
                    return Err(FilterError("in takes at most 100 values".to_owned()));
                }
                items
            } else {
                vec![unquote(value)]
            };
            if op == Op::Is
                && !matches!(
                    values[0].to_ascii_lowercase().as_str(),
                    "null" | "true" | "false"
                )
            {
                return Err(FilterError("is takes null, true or false".to_owned()));
            }
            conditions.push(Condition {
                column: column.to_owned(),
                negate,
                op,
                values,
            });
        }
        Ok(Filter { conditions })
    }

    /// Whether a row passes. `column` gives a column's text value (`None`
    /// for SQL null) and type name, or `None` when the row lacks it (a
    /// filter on an absent column never passes).
    pub fn matches<'a>(&self, column: impl Fn(&str) -> Option<(Option<&'a str>, &'a str)>) -> bool {
        self.conditions.iter().all(|condition| {
            let Some((value, kind)) = column(&condition.column) else {
                return false;
            };
            condition.holds(value, kind) != condition.negate
        })
    }

    /// The columns the filter reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().map(|c| c.column.as_str())
    }
}

#[derive(PartialEq, PartialOrd)]
enum Typed {
    Number(f64),
    Bool(bool),
    Text(String),
}

fn is_numeric(kind: &str) -> bool {
    matches!(
        kind,
        "int2" | "int4" | "int8" | "float4" | "float8" | "numeric" | "oid"
    )
}

fn typed(kind: &str, text: &str) -> Typed {
    if is_numeric(kind)
        && let Ok(n) = text.trim().parse::<f64>()
    {
        return Typed::Number(n);
    }
    if kind == "bool" {
        match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "yes" | "on" => return Typed::Bool(true),
            "f" | "false" | "0" | "no" | "off" => return Typed::Bool(false),
            _ => {}
        }
    }
    Typed::Text(text.to_owned())
}

impl Condition {
    fn holds(&self, value: Option<&str>, kind: &str) -> bool {
        if self.op == Op::Is {
            let want = self.values[0].to_ascii_lowercase();
            return match (want.as_str(), value) {
                ("null", v) => v.is_none(),
                (b, Some(v)) => typed("bool", v) == typed("bool", b),
                _ => false,
            };
        }
        // SQL semantics: comparisons with null are not true.
        let Some(value) = value else { return false };
        let actual = typed(kind, value);
        let compare = |want: &str| actual.partial_cmp(&typed(kind, want));
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self.op {
            Op::Eq => compare(&self.values[0]) == Some(Equal),
            Op::Neq => matches!(compare(&self.values[0]), Some(Less | Greater)),
            Op::Lt => compare(&self.values[0]) == Some(Less),
            Op::Lte => matches!(compare(&self.values[0]), Some(Less | Equal)),
            Op::Gt => compare(&self.values[0]) == Some(Greater),
            Op::Gte => matches!(compare(&self.values[0]), Some(Greater | Equal)),
            Op::In => self.values.iter().any(|v| compare(v) == Some(Equal)),
            Op::Is => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(
        cols: &'a [(&'a str, Option<&'a str>, &'a str)],
    ) -> impl Fn(&str) -> Option<(Option<&'a str>, &'a str)> {
        move |name| {
            cols.iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, v, t)| (*v, *t))
        }
    }

    #[test]
    fn parses_filters() {
        let f = Filter::parse("channel_id=eq.7").unwrap();
        assert_eq!(f.conditions[0].op, Op::Eq);
        assert_eq!(f.conditions[0].values, ["7"]);
        let f = Filter::parse(r#"id=in.(1,2,"a,b"),name=not.eq.x"#).unwrap();
        assert_eq!(f.conditions.len(), 2);
        assert_eq!(f.conditions[0].values, ["1", "2", "a,b"]);
        assert!(f.conditions[1].negate);
        assert_eq!(Filter::parse("  ").unwrap(), Filter::default());
        for bad in [
            "id",
            "id=7",
            "id=like.x",
            "=eq.1",
            "id=in.1,2",
            "id=is.maybe",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        let many = format!(
            "id=in.({})",
            (0..101)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(Filter::parse(&many).is_err());
    }

    #[test]
    fn matches_by_type() {
        let cols = [
            ("id", Some("10"), "int8"),
            ("name", Some("bob"), "text"),
            ("done", Some("t"), "bool"),
            ("gone", None, "text"),
        ];
        let r = row(&cols);
        let ok = |f: &str| Filter::parse(f).unwrap().matches(&r);
        assert!(ok("id=eq.10"));
        assert!(ok("id=eq.10.0"), "numbers compare as numbers");
        assert!(!ok("id=eq.9"));
        assert!(
            ok("id=gt.9") && ok("id=gte.10") && ok("id=lt.11") && ok("id=lte.10") && ok("id=neq.3")
        );
        assert!(ok("id=gt.9,name=eq.bob"));
        assert!(!ok("id=gt.9,name=eq.alice"));
        assert!(ok("name=in.(alice,bob)"));
        assert!(ok("name=not.in.(alice,carol)"));
        assert!(ok("done=eq.true"));
        assert!(ok("done=is.true"));
        assert!(ok("gone=is.null"));
        assert!(
            !ok("gone=eq.x") && !ok("gone=neq.x"),
            "null compares to nothing"
        );
        assert!(!ok("missing=eq.1"), "absent columns never match");
        assert!(ok("name=gt.alice"), "text compares as text");
    }
}
