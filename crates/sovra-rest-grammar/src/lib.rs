//! PostgREST's URL grammar, parsed into a typed tree ([`QueryParams`]) with
//! the position of the first bad character in every error. The stage is
//! PostgREST's `ApiRequest/QueryParams.hs` and `Preferences.hs`.
//!
//! This crate does no IO and depends on no async crate: it is pure, so it is
//! unit-tested, property-tested and fuzzable, and it never panics on any
//! input.
//!
//! The grammar (spec §2.3–§2.8; whitespace around items and commas is
//! tolerated):
//!
//! ```text
//! select      = item *( "," item )
//! item        = "*" | field | count | embed | spread
//! field       = [ alias ":" ] name *jsonop [ "::" type ] [ "." aggfn "()" [ "::" type ] ]
//! count       = [ alias ":" ] "count()" [ "::" type ]
//! embed       = [ alias ":" ] name *2( "!" hint-or-join ) "(" [ select ] ")"
//! spread      = "..." name *2( "!" hint-or-join ) "(" select ")"
//! jsonop      = ( "->" | "->>" ) ( key | [ "-" ] digits )
//! name        = quoted | ident *( "-" ident )          ; "-" not followed by ">"
//! filter      = [ path "." ] field "=" [ "not." ] op [ "(" ( "any" | "all" | lang ) ")" ] "." value
//! logic       = [ path "." ] [ "not." ] ( "or" | "and" ) "=" "(" term *( "," term ) ")"
//! term        = [ "not." ] ( "or" | "and" ) "(" term *( "," term ) ")" | field "." [ "not." ] op "." value
//! order       = oterm *( "," oterm )
//! oterm       = ( field | name "(" field ")" ) [ "." ( "asc" | "desc" ) ] [ "." ( "nullsfirst" | "nullslast" ) ]
//! ```
//!
//! Embeds and logic trees nest at most [`MAX_DEPTH`] levels (a logic
//! parameter's own parentheses are the first level): deeper input is a
//! parse error, so no tree that reaches the planner can exhaust a stack.

mod ast;
mod parse;
mod prefer;
mod print;

pub use print::{SelectList, print_name};

pub use ast::*;
pub use parse::{MAX_DEPTH, MAX_SELECT_ITEMS, ParseError};
pub use prefer::{
    CountPreference, Handling, Missing, Preferences, RangeHeader, Resolution, ReturnPreference,
    TxPreference, parse_prefer, parse_range,
};

use parse::Cursor;

/// Why a query string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// PGRST100: a parameter did not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// PGRST103: `limit` or `offset` is not a non-negative integer.
    #[error("{0}")]
    Range(String),
}

/// Parses a `select=` value.
pub fn parse_select(text: &str) -> Result<Vec<SelectItem>, ParseError> {
    Cursor::finish(text, "select parameter", parse::select_list)
}

/// Parses a filter: the key (`col`, `embed.col->a`) and the value
/// (`not.eq.5`).
pub fn parse_filter(key: &str, value: &str) -> Result<(EmbedPath, Filter), ParseError> {
    let (path, field) = Cursor::finish(key, "filter column", parse::filter_key)?;
    let (negated, operation) = Cursor::finish(value, "filter", parse::filter_value)?;
    Ok((
        path,
        Filter {
            field,
            negated,
            operation,
        },
    ))
}

/// Parses a logic tree value such as `(a.eq.1,and(b.gt.2,c.is.null))`.
pub fn parse_logic(negated: bool, op: LogicOp, value: &str) -> Result<LogicTree, ParseError> {
    let children = Cursor::finish(value, "logic tree", parse::logic_children)?;
    Ok(LogicTree::Expr {
        negated,
        op,
        children,
    })
}

/// Parses an `order=` value.
pub fn parse_order(text: &str) -> Result<Vec<OrderTerm>, ParseError> {
    Cursor::finish(text, "order parameter", parse::order_terms)
}

/// Parses `columns=` or `on_conflict=`.
pub fn parse_names(parameter: &str, text: &str) -> Result<Vec<String>, ParseError> {
    Cursor::finish(text, parameter, parse::name_list)
}

fn split_path(prefix: &str) -> EmbedPath {
    if prefix.is_empty() {
        Vec::new()
    } else {
        prefix.split('.').map(str::to_owned).collect()
    }
}

/// A reserved key with an optional embed path: `messages.order` →
/// `Some(["messages"])` for `word` = `order`.
fn reserved(key: &str, word: &str) -> Option<EmbedPath> {
    if key == word {
        return Some(Vec::new());
    }
    key.strip_suffix(word)
        .and_then(|prefix| prefix.strip_suffix('.'))
        .map(split_path)
}

fn parse_count(key: &str, value: &str) -> Result<i64, QueryError> {
    value.trim().parse::<i64>().map_err(|_| {
        QueryError::Parse(ParseError {
            parameter: key.to_owned(),
            value: value.to_owned(),
            column: 1,
            expected: "expected an integer".to_owned(),
        })
    })
}

/// Parses decoded query pairs. With `is_rpc`, a pair that is neither
/// reserved nor a valid filter is a function argument rather than an error.
pub fn parse_query(pairs: &[(String, String)], is_rpc: bool) -> Result<QueryParams, QueryError> {
    let mut params = QueryParams::default();
    for (key, value) in pairs {
        let key = key.as_str();
        if key == "select" {
            params.select = Some(parse_select(value)?);
        } else if key == "columns" {
            params.columns = Some(parse_names("columns parameter", value)?);
        } else if key == "on_conflict" {
            params.on_conflict = Some(parse_names("on_conflict parameter", value)?);
        } else if let Some(path) = reserved(key, "order") {
            params.order.push((path, parse_order(value)?));
        } else if let Some(path) = reserved(key, "limit") {
            let limit = parse_count(key, value)?;
            if limit < 0 {
                return Err(QueryError::Range(
                    "Limit should be greater than or equal to zero.".to_owned(),
                ));
            }
            params.limits.push((path, limit));
        } else if let Some(path) = reserved(key, "offset") {
            let offset = parse_count(key, value)?;
            if offset < 0 {
                return Err(QueryError::Range(
                    "Offset should be greater than or equal to zero.".to_owned(),
                ));
            }
            params.offsets.push((path, offset));
        } else if let Some((path, negated, op)) = logic_key(key) {
            params.logic.push((path, parse_logic(negated, op, value)?));
        } else {
            match parse_filter(key, value) {
                Ok(filter) => params.filters.push(filter),
                Err(_) if is_rpc => params.arguments.push((key.to_owned(), value.clone())),
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(params)
}

/// `or`, `and`, `not.or`, `not.and`, each with an optional embed path.
fn logic_key(key: &str) -> Option<(EmbedPath, bool, LogicOp)> {
    for (word, negated, op) in [
        ("not.or", true, LogicOp::Or),
        ("not.and", true, LogicOp::And),
        ("or", false, LogicOp::Or),
        ("and", false, LogicOp::And),
    ] {
        if let Some(path) = reserved(key, word) {
            // `x.not.or` must not also read as path `x.not` + `or`.
            if !negated && path.last().is_some_and(|last| last == "not") {
                continue;
            }
            return Some((path, negated, op));
        }
    }
    None
}

/// Splits a raw query string into decoded pairs: `+` is a space, `%XX` a
/// byte; invalid escapes are kept as they are. A key without `=` has an
/// empty value.
pub fn decode_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(key), decode_component(value))
        })
        .collect()
}

/// Percent-decodes one query component (`+` → space).
pub fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
