//! `postgres_changes` filters: `column=[not.]op.value`, several joined by
//! `,` (ANDed), ops `eq neq lt lte gt gte in is` and, as realtime-js's
//! filter builder writes them, `like ilike match imatch isdistinct`. Values
//! are compared after conversion to the column's type (numbers as numbers,
//! booleans as booleans, everything else as text); `like`/`ilike` patterns
//! and `match`/`imatch` regular expressions apply to the value's text.

/// The longest `like`/`ilike` pattern or `match`/`imatch` expression.
pub const MAX_PATTERN_CHARS: usize = 1000;

/// The most memory a compiled `match`/`imatch` expression may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One condition.
#[derive(Clone, Debug)]
pub struct Condition {
    pub column: String,
    pub negate: bool,
    pub op: Op,
    pub values: Vec<String>,
    /// The compiled expression of `match`/`imatch`.
    regex: Option<regex::Regex>,
}

impl PartialEq for Condition {
    fn eq(&self, other: &Condition) -> bool {
        self.column == other.column
            && self.negate == other.negate
            && self.op == other.op
            && self.values == other.values
    }
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
    /// SQL `LIKE` (`%` any text, `_` one character, `\\` escapes; `*` is
    /// `%` as in PostgREST).
    Like,
    /// `ILIKE`: `LIKE` ignoring case.
    ILike,
    /// `~`: a regular expression matches somewhere in the value.
    Match,
    /// `~*`: `match` ignoring case.
    IMatch,
    /// `IS DISTINCT FROM`: not equal, with null distinct from every value
    /// but null (`isdistinct.null`).
    IsDistinct,
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

/// Splits at commas outside parentheses and double quotes (inside
/// quotes, `\\` escapes the next character, as realtime-js's filter builder
/// and PostgREST write them).
fn split_top(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
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

/// A value without its double quotes, `\\x` read as `x` inside them.
fn unquote(value: &str) -> String {
    let value = value.trim();
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        let mut out = String::with_capacity(value.len());
        let mut chars = value[1..value.len() - 1].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next().unwrap_or('\\')),
                c => out.push(c),
            }
        }
        out
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
                "like" => Op::Like,
                "ilike" => Op::ILike,
                "match" => Op::Match,
                "imatch" => Op::IMatch,
                "isdistinct" => Op::IsDistinct,
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
                    "null" | "true" | "false" | "unknown"
                )
            {
                return Err(FilterError(
                    "is takes null, true, false or unknown".to_owned(),
                ));
            }
            if matches!(op, Op::Like | Op::ILike | Op::Match | Op::IMatch)
                && values[0].chars().count() > MAX_PATTERN_CHARS
            {
                return Err(FilterError(format!(
                    "a {} pattern may have at most {MAX_PATTERN_CHARS} characters",
                    op.name()
                )));
            }
            let regex = match op {
                Op::Match | Op::IMatch => Some(
                    regex::RegexBuilder::new(&values[0])
                        .case_insensitive(op == Op::IMatch)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .dfa_size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|err| {
                            FilterError(format!(
                                "invalid regular expression for {}: {}",
                                op.name(),
                                first_line(&err.to_string())
                            ))
                        })?,
                ),
                // A like pattern becomes the equivalent expression, whose
                // matcher is faster than walking the pattern per row (see
                // `benches/filter.rs`); [`like`] is its reference.
                Op::Like | Op::ILike => Some(
                    regex::RegexBuilder::new(&like_to_regex(&values[0]))
                        .case_insensitive(op == Op::ILike)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .dfa_size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|err| {
                            FilterError(format!(
                                "invalid pattern for {}: {}",
                                op.name(),
                                first_line(&err.to_string())
                            ))
                        })?,
                ),
                _ => None,
            };
            conditions.push(Condition {
                column: column.to_owned(),
                negate,
                op,
                values,
                regex,
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

impl Op {
    /// The operator as filters write it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Is => "is",
            Op::Like => "like",
            Op::ILike => "ilike",
            Op::Match => "match",
            Op::IMatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }
}

/// The last line of the regex crate's (multi-line) error: the reason.
fn first_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or(text)
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

/// A `like` pattern as a regular expression with the same meaning (`%`/`*`
/// any run, `_` one character, `\\` escapes): anchored at each end that
/// has no `%`, so that `%word%` is a plain substring search.
fn like_to_regex(pattern: &str) -> String {
    // `None`: any run; `Some(None)`: one character; `Some(Some(c))`: `c`.
    let mut tokens: Vec<Option<Option<char>>> = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '%' | '*' => None,
            '_' => Some(None),
            '\\' => Some(Some(chars.next().unwrap_or('\\'))),
            c => Some(Some(c)),
        });
    }
    let open_start = tokens.first().is_some_and(Option::is_none);
    let open_end = tokens.last().is_some_and(Option::is_none);
    let first = tokens
        .iter()
        .position(Option::is_some)
        .unwrap_or(tokens.len());
    let last = tokens
        .iter()
        .rposition(Option::is_some)
        .map_or(first, |i| i + 1);
    let mut out = String::from("(?s)");
    if !open_start {
        out.push('^');
    }
    for token in &tokens[first..last.max(first)] {
        match token {
            None => out.push_str(".*"),
            Some(None) => out.push('.'),
            Some(Some(c)) => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    if !open_end {
        out.push('$');
    }
    out
}

/// SQL `LIKE`: `%` (or `*`) matches any run of characters, `_` one
/// character, and `\\` makes the next character literal. Runs in
/// O(pattern × value) time at worst (no backtracking blow-up).
pub fn like(pattern: &str, value: &str, ignore_case: bool) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Any,
        One,
        Char(char),
    }
    let fold = |c: char| -> char {
        if ignore_case {
            c.to_lowercase().next().unwrap_or(c)
        } else {
            c
        }
    };
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '%' | '*' => Token::Any,
            '_' => Token::One,
            '\\' => Token::Char(fold(chars.next().unwrap_or('\\'))),
            c => Token::Char(fold(c)),
        });
    }
    let value: Vec<char> = value.chars().map(fold).collect();
    // Greedy matching that remembers the last `%`: linear in practice,
    // O(n·m) at worst.
    let (mut t, mut v) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match tokens.get(t) {
            Some(Token::Any) => {
                star = Some((t, v));
                t += 1;
            }
            Some(Token::One) => {
                t += 1;
                v += 1;
            }
            Some(Token::Char(c)) if *c == value[v] => {
                t += 1;
                v += 1;
            }
            _ => match star {
                Some((st, sv)) => {
                    t = st + 1;
                    v = sv + 1;
                    star = Some((st, sv + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|token| *token == Token::Any)
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
                // `IS UNKNOWN` is `IS NULL` for a boolean.
                ("null" | "unknown", v) => v.is_none(),
                (b, Some(v)) => typed("bool", v) == typed("bool", b),
                _ => false,
            };
        }
        if self.op == Op::IsDistinct {
            // null is distinct from every value but null; `isdistinct.null`
            // is `IS DISTINCT FROM NULL`.
            let want_null = self.values[0].eq_ignore_ascii_case("null");
            let Some(value) = value else {
                return !want_null;
            };
            if want_null {
                return true;
            }
            return typed(kind, value).partial_cmp(&typed(kind, &self.values[0]))
                != Some(std::cmp::Ordering::Equal);
        }
        // SQL semantics: comparisons with null are not true.
        let Some(value) = value else { return false };
        match self.op {
            Op::Like | Op::ILike | Op::Match | Op::IMatch => {
                return self.regex.as_ref().is_some_and(|re| re.is_match(value));
            }
            _ => {}
        }
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
            Op::Is | Op::Like | Op::ILike | Op::Match | Op::IMatch | Op::IsDistinct => false,
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
            "id=contains.x",
            "name=match.(",
            "name=imatch.a{99999999}",
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

    #[test]
    fn pattern_and_distinct_operators() {
        let cols = [
            ("name", Some("Alice Smith"), "text"),
            ("id", Some("10"), "int8"),
            ("gone", None, "text"),
            ("path", Some("a_b%c"), "text"),
        ];
        let r = row(&cols);
        let ok = |f: &str| Filter::parse(f).unwrap().matches(&r);
        // like: % and * for any run, _ for one character, case matters.
        assert!(ok("name=like.Alice%") && ok("name=like.*Smith") && ok("name=like.A_ice%"));
        assert!(!ok("name=like.alice%") && !ok("name=like.Alice") && !ok("name=like.Al_"));
        assert!(ok("name=not.like.Bob%") && !ok("name=not.like.%Smith"));
        // Escapes make % and _ literal.
        assert!(ok(r"path=like.a\_b\%c") && !ok(r"path=like.a\_bx%"));
        // ilike ignores case.
        assert!(ok("name=ilike.alice%") && ok("name=ilike.*SMITH") && !ok("name=ilike.bob%"));
        // match and imatch: regular expressions found anywhere in the text.
        assert!(ok("name=match.^Al") && ok("name=match.Sm.th$") && !ok("name=match.^al"));
        assert!(ok("name=imatch.^al") && ok("name=not.imatch.^bob"));
        // Numbers match on their text.
        assert!(ok("id=like.1%") && ok("id=match.^[0-9]+$"));
        // Null matches no pattern, and its negation (as `not.eq` does).
        assert!(!ok("gone=like.%") && !ok("gone=match.."));
        // isdistinct: not equal, null distinct from every value but null.
        assert!(ok("id=isdistinct.9") && !ok("id=isdistinct.10") && !ok("id=isdistinct.10.0"));
        assert!(ok("gone=isdistinct.x") && !ok("gone=isdistinct.null"));
        assert!(ok("name=isdistinct.null") && ok("id=not.isdistinct.10"));
        assert!(ok("gone=not.isdistinct.null"));
        // Refusals: a bad expression, an oversized pattern.
        for bad in ["name=match.(", "name=imatch.[a-", "name=match.a{99999999}"] {
            let err = Filter::parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("Error parsing `filter` params: invalid regular expression"),
                "{bad}: {err}"
            );
        }
        let long = format!("name=like.{}", "x".repeat(MAX_PATTERN_CHARS + 1));
        assert!(Filter::parse(&long).is_err());
        assert!(Filter::parse(&format!("name=like.{}", "x".repeat(MAX_PATTERN_CHARS))).is_ok());
    }

    #[test]
    fn quoted_values_as_realtime_js_writes_them() {
        // postgresChangesFilter().eq('name', 'a "b", c\\d').in('tag', ['x,y', 'z'])
        let f = Filter::parse(r#"name=eq."a \"b\", c\\d",tag=in.("x,y",z)"#).unwrap();
        assert_eq!(f.conditions.len(), 2);
        assert_eq!(f.conditions[0].values, [r#"a "b", c\d"#]);
        assert_eq!(f.conditions[1].values, ["x,y", "z"]);
        let cols = [
            ("flag", None, "bool"),
            ("name", Some(r#"a "b", c\d"#), "text"),
        ];
        let r = row(&cols);
        assert!(Filter::parse("flag=is.unknown").unwrap().matches(&r));
        assert!(
            Filter::parse(r#"name=eq."a \"b\", c\\d""#)
                .unwrap()
                .matches(&r)
        );
    }

    #[test]
    fn like_is_fast_on_hostile_patterns() {
        // A pattern that makes naive backtracking exponential.
        let pattern = "%a".repeat(100) + "b";
        let value = "a".repeat(2000);
        assert!(!like(&pattern, &value, false));
        assert!(like("%%%", "", false) && like("", "", false) && !like("", "x", false));
        assert!(like("_", "é", false) && like("É%", "été", true));
    }
}
