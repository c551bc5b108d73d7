//! The recursive-descent parsers for each parameter. Every function takes a
//! [`Cursor`] and either consumes what it recognises or fails with the
//! position of the first character it could not accept. Nothing panics on
//! any input: indexes only ever move over characters already seen.

use crate::ast::*;

/// Why a parameter did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse {parameter} ({value}) (line 1, column {column}): {expected}")]
pub struct ParseError {
    /// What was being parsed: `select parameter`, `filter`, `logic tree`, …
    pub parameter: String,
    /// The raw text of the parameter.
    pub value: String,
    /// 1-based column (in characters) of the first unexpected character.
    pub column: usize,
    /// What the parser expected there.
    pub expected: String,
}

/// How deeply `select=` embeds and logic trees may nest. The parsers
/// recurse once per level, and so do the planner and the printer after
/// them, so the limit keeps every walk over a parsed tree far from the end
/// of a thread's stack; and every embed level is a correlated subquery
/// whose planning time grows with the square of the depth (about 30 ms at
/// 16 levels, 360 ms at 64), all of it holding a database connection. No
/// real request comes near it: PostgREST's own examples nest three levels.
pub const MAX_DEPTH: usize = 16;

/// The most items one `select=` list (or embed) may name: PostgreSQL's own
/// limit on a target list, so a longer list is refused here with a 400
/// instead of failing in the database.
pub const MAX_SELECT_ITEMS: usize = 1664;

/// A position in the text being parsed.
pub(crate) struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    /// Open `(` of embeds or logic trees around the position.
    depth: usize,
}

type PResult<T> = Result<T, (usize, String)>;

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            text,
            pos: 0,
            depth: 0,
        }
    }

    /// Enters one level of nesting, refusing to go past [`MAX_DEPTH`].
    fn descend(&mut self, what: &str) -> PResult<()> {
        if self.depth >= MAX_DEPTH {
            return Err(self.fail(format!("{what} nested more than {MAX_DEPTH} levels deep")));
        }
        self.depth += 1;
        Ok(())
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> PResult<()> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.fail(format!("expected \"{token}\"")))
        }
    }

    fn fail(&self, expected: impl Into<String>) -> (usize, String) {
        (self.pos, expected.into())
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.bump();
        }
    }

    pub(crate) fn finish<T>(
        text: &str,
        parameter: &str,
        parse: impl FnOnce(&mut Cursor<'_>) -> PResult<T>,
    ) -> Result<T, ParseError> {
        let mut cursor = Cursor::new(text);
        let result = parse(&mut cursor).and_then(|value| {
            if cursor.at_end() {
                Ok(value)
            } else {
                Err(cursor.fail("expected end of input"))
            }
        });
        result.map_err(|(pos, expected)| ParseError {
            parameter: parameter.to_owned(),
            value: text.to_owned(),
            column: text[..pos.min(text.len())].chars().count() + 1,
            expected,
        })
    }
}

/// `"quoted \" name"`: backslash escapes any character.
fn quoted(c: &mut Cursor<'_>) -> PResult<String> {
    c.expect("\"")?;
    let mut out = String::new();
    loop {
        match c.bump() {
            None => return Err(c.fail("expected closing '\"'")),
            Some('"') => return Ok(out),
            Some('\\') => match c.bump() {
                Some(escaped) => out.push(escaped),
                None => return Err(c.fail("expected a character after '\\'")),
            },
            Some(other) => out.push(other),
        }
    }
}

fn is_ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_' || ch == '$' || ch == ' '
}

/// An unquoted identifier: letters, digits, `_`, `$`, spaces, and `-` when
/// it does not start `->`.
fn ident(c: &mut Cursor<'_>) -> PResult<String> {
    let start = c.pos;
    loop {
        match c.peek() {
            Some(ch) if is_ident_char(ch) => {
                c.bump();
            }
            Some('-') if !c.rest().starts_with("->") && c.pos > start => {
                c.bump();
            }
            _ => break,
        }
    }
    let text = c.text[start..c.pos].trim();
    if text.is_empty() {
        c.pos = start;
        return Err(c.fail("expected a name"));
    }
    Ok(text.to_owned())
}

/// A quoted or unquoted name.
fn name(c: &mut Cursor<'_>) -> PResult<String> {
    c.skip_spaces();
    if c.peek() == Some('"') {
        quoted(c)
    } else {
        ident(c)
    }
}

/// `->key`, `->>key`, `->0`, `->>-1`.
fn json_path(c: &mut Cursor<'_>) -> PResult<Vec<JsonOp>> {
    let mut path = Vec::new();
    loop {
        let as_text = if c.eat("->>") {
            true
        } else if c.eat("->") {
            false
        } else {
            return Ok(path);
        };
        let key = json_key(c)?;
        path.push(JsonOp { as_text, key });
    }
}

fn json_key(c: &mut Cursor<'_>) -> PResult<JsonKey> {
    // An index is digits followed by `->`, `::`, `.`, `,`, `)`, or the end.
    let rest = c.rest();
    let digits_start = usize::from(rest.starts_with('-'));
    let digits_len = rest[digits_start..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits_len > 0 {
        let after = &rest[digits_start + digits_len..];
        let ends = after.is_empty()
            || ["->", "::", ".", ",", ")", "="]
                .iter()
                .any(|end| after.starts_with(end));
        if ends && let Ok(index) = rest[..digits_start + digits_len].parse::<i64>() {
            c.pos += digits_start + digits_len;
            return Ok(JsonKey::Index(index));
        }
    }
    if c.peek() == Some('"') {
        return quoted(c).map(JsonKey::Key);
    }
    ident(c).map(JsonKey::Key)
}

fn field(c: &mut Cursor<'_>) -> PResult<Field> {
    let name = name(c)?;
    let json_path = json_path(c)?;
    Ok(Field { name, json_path })
}

/// `::type`, where a type is letters, digits, `_`, spaces and `[]`.
fn cast(c: &mut Cursor<'_>) -> PResult<Option<String>> {
    if !c.eat("::") {
        return Ok(None);
    }
    let start = c.pos;
    while matches!(c.peek(), Some(ch) if ch.is_alphanumeric() || ch == '_' || ch == ' ' || ch == '[' || ch == ']')
    {
        c.bump();
    }
    let text = c.text[start..c.pos].trim();
    if text.is_empty() {
        return Err(c.fail("expected a type name after '::'"));
    }
    Ok(Some(text.to_owned()))
}

/// `select=` items, up to a `)` or the end.
pub(crate) fn select_list(c: &mut Cursor<'_>) -> PResult<Vec<SelectItem>> {
    let mut items = Vec::new();
    c.skip_spaces();
    if c.at_end() || c.peek() == Some(')') {
        return Ok(items);
    }
    loop {
        c.skip_spaces();
        if items.len() == MAX_SELECT_ITEMS {
            return Err(c.fail(format!(
                "a select list names at most {MAX_SELECT_ITEMS} items"
            )));
        }
        items.push(select_item(c)?);
        c.skip_spaces();
        if !c.eat(",") {
            return Ok(items);
        }
    }
}

fn embed_modifiers(c: &mut Cursor<'_>) -> PResult<(Option<String>, Option<JoinType>)> {
    let mut hint = None;
    let mut join = None;
    for _ in 0..2 {
        if !c.eat("!") {
            break;
        }
        let word = name(c)?;
        match word.as_str() {
            "inner" if join.is_none() => join = Some(JoinType::Inner),
            "left" if join.is_none() => join = Some(JoinType::Left),
            _ if hint.is_none() => hint = Some(word),
            _ => return Err(c.fail("expected at most one hint and one join type")),
        }
    }
    Ok((hint, join))
}

fn embed_body(c: &mut Cursor<'_>) -> PResult<Vec<SelectItem>> {
    c.descend("embedded resources")?;
    c.expect("(")?;
    let select = select_list(c)?;
    c.skip_spaces();
    c.expect(")")?;
    c.depth -= 1;
    Ok(select)
}

fn select_item(c: &mut Cursor<'_>) -> PResult<SelectItem> {
    if c.eat("*") {
        return Ok(SelectItem::Star);
    }
    if c.eat("...") {
        let name = name(c)?;
        let (hint, join) = embed_modifiers(c)?;
        if c.peek() != Some('(') {
            return Err(c.fail("expected \"(\" after a spread's name"));
        }
        let select = embed_body(c)?;
        return Ok(SelectItem::Embed {
            alias: None,
            name,
            hint,
            join,
            spread: true,
            select,
        });
    }
    let first = name(c)?;
    // `alias:` uses one colon; `::` is a cast.
    let (alias, target_name) = if c.rest().starts_with(':') && !c.rest().starts_with("::") {
        c.bump();
        c.skip_spaces();
        if c.eat("...") {
            return Err(c.fail("a spread cannot have an alias"));
        }
        (Some(first), name(c)?)
    } else {
        (None, first)
    };
    if target_name == "count" && c.eat("()") {
        let cast = cast(c)?;
        return Ok(SelectItem::Count { alias, cast });
    }
    if target_name == "count" && c.peek() == Some('(') {
        return Err(c.fail("expected \"()\": count is the aggregate count(), not an embed"));
    }
    if matches!(c.peek(), Some('!' | '(')) {
        let (hint, join) = embed_modifiers(c)?;
        if c.peek() != Some('(') {
            return Err(c.fail("expected \"(\" after an embed's hints"));
        }
        let select = embed_body(c)?;
        return Ok(SelectItem::Embed {
            alias,
            name: target_name,
            hint,
            join,
            spread: false,
            select,
        });
    }
    let json_path = json_path(c)?;
    let field = Field {
        name: target_name,
        json_path,
    };
    let cast_before = cast(c)?;
    let aggregate = if c.rest().starts_with('.') {
        c.bump();
        let start = c.pos;
        let function_name = ident(c)?;
        let function = AggregateFn::from_name(&function_name).ok_or_else(|| {
            (
                start,
                "expected an aggregate: sum(), avg(), count(), max() or min()".to_owned(),
            )
        })?;
        c.expect("()")?;
        Some(Aggregate {
            function,
            cast: cast(c)?,
        })
    } else {
        None
    };
    Ok(SelectItem::Field {
        alias,
        field,
        cast: cast_before,
        aggregate,
    })
}

/// The operator and value of a filter: `[not.]op[(mod)].value`. In a logic
/// tree the value stops at a top-level `,` or `)`.
fn operation(c: &mut Cursor<'_>, in_tree: bool) -> PResult<(bool, Operation)> {
    let negated = c.eat("not.");
    let start = c.pos;
    let op_name: String = {
        let mut name = String::new();
        while let Some(ch) = c.peek().filter(char::is_ascii_alphabetic) {
            name.push(ch);
            c.bump();
        }
        name
    };
    let unknown = || {
        (
            start,
            "expected an operator: eq, neq, gt, gte, lt, lte, like, ilike, match, imatch, is, isdistinct, in, cs, cd, ov, sl, sr, nxr, nxl, adj, fts, plfts, phfts, wfts".to_owned(),
        )
    };
    let compare = match op_name.as_str() {
        "eq" => Some(CompareOp::Eq),
        "neq" => Some(CompareOp::Neq),
        "gt" => Some(CompareOp::Gt),
        "gte" => Some(CompareOp::Gte),
        "lt" => Some(CompareOp::Lt),
        "lte" => Some(CompareOp::Lte),
        "like" => Some(CompareOp::Like),
        "ilike" => Some(CompareOp::Ilike),
        "match" => Some(CompareOp::Match),
        "imatch" => Some(CompareOp::Imatch),
        _ => None,
    };
    if let Some(op) = compare {
        let quantifier = if c.eat("(any)") {
            Some(Quantifier::Any)
        } else if c.eat("(all)") {
            Some(Quantifier::All)
        } else {
            None
        };
        c.expect(".")?;
        let value = value(c, in_tree)?;
        return Ok((
            negated,
            Operation::Compare {
                op,
                quantifier,
                value,
            },
        ));
    }
    let range = match op_name.as_str() {
        "cs" => Some(RangeOp::Contains),
        "cd" => Some(RangeOp::Contained),
        "ov" => Some(RangeOp::Overlap),
        "sl" => Some(RangeOp::StrictlyLeft),
        "sr" => Some(RangeOp::StrictlyRight),
        "nxr" => Some(RangeOp::NotExtendRight),
        "nxl" => Some(RangeOp::NotExtendLeft),
        "adj" => Some(RangeOp::Adjacent),
        _ => None,
    };
    if let Some(op) = range {
        c.expect(".")?;
        return Ok((
            negated,
            Operation::Range {
                op,
                value: value(c, in_tree)?,
            },
        ));
    }
    let fts = match op_name.as_str() {
        "fts" => Some(FtsKind::Fts),
        "plfts" => Some(FtsKind::Plain),
        "phfts" => Some(FtsKind::Phrase),
        "wfts" => Some(FtsKind::Websearch),
        _ => None,
    };
    if let Some(kind) = fts {
        let language = if c.eat("(") {
            let lang = ident(c)?;
            c.expect(")")?;
            Some(lang)
        } else {
            None
        };
        c.expect(".")?;
        return Ok((
            negated,
            Operation::Fts {
                kind,
                language,
                value: value(c, in_tree)?,
            },
        ));
    }
    match op_name.as_str() {
        "is" => {
            c.expect(".")?;
            let start = c.pos;
            let word: String = {
                let mut word = String::new();
                while let Some(ch) = c.peek().filter(|ch| ch.is_ascii_alphabetic() || *ch == '_') {
                    word.push(ch);
                    c.bump();
                }
                word
            };
            let is = match word.to_ascii_lowercase().as_str() {
                "null" => IsValue::Null,
                "not_null" => IsValue::NotNull,
                "true" => IsValue::True,
                "false" => IsValue::False,
                "unknown" => IsValue::Unknown,
                _ => {
                    return Err((
                        start,
                        "expected null, not_null, true, false or unknown".to_owned(),
                    ));
                }
            };
            Ok((negated, Operation::Is(is)))
        }
        "isdistinct" => {
            c.expect(".")?;
            Ok((negated, Operation::IsDistinct(value(c, in_tree)?)))
        }
        "in" => {
            c.expect(".")?;
            Ok((negated, Operation::In(in_list(c)?)))
        }
        _ => Err(unknown()),
    }
}

/// A filter value. Outside a tree it is the rest of the text; inside, it is
/// a quoted string, a `{…}` array or the text up to a `,` or `)`.
fn value(c: &mut Cursor<'_>, in_tree: bool) -> PResult<String> {
    if !in_tree {
        let value = c.rest().to_owned();
        c.pos = c.text.len();
        return Ok(value);
    }
    match c.peek() {
        Some('"') => quoted(c),
        Some('{') => {
            let start = c.pos;
            while let Some(ch) = c.bump() {
                if ch == '}' {
                    return Ok(c.text[start..c.pos].to_owned());
                }
            }
            Err(c.fail("expected closing '}'"))
        }
        _ => {
            let start = c.pos;
            while !matches!(c.peek(), None | Some(',' | ')')) {
                c.bump();
            }
            Ok(c.text[start..c.pos].to_owned())
        }
    }
}

/// `(a,"b,c",d)`; `()` is the empty list.
fn in_list(c: &mut Cursor<'_>) -> PResult<Vec<String>> {
    c.expect("(")?;
    let mut items = Vec::new();
    if c.eat(")") {
        return Ok(items);
    }
    loop {
        let item = if c.peek() == Some('"') {
            quoted(c)?
        } else {
            let start = c.pos;
            while !matches!(c.peek(), None | Some(',' | ')')) {
                c.bump();
            }
            c.text[start..c.pos].to_owned()
        };
        items.push(item);
        if c.eat(",") {
            continue;
        }
        c.expect(")")?;
        return Ok(items);
    }
}

/// A whole filter value (the right-hand side of `col=`).
pub(crate) fn filter_value(c: &mut Cursor<'_>) -> PResult<(bool, Operation)> {
    operation(c, false)
}

/// `(term,term,…)` of a logic tree.
pub(crate) fn logic_children(c: &mut Cursor<'_>) -> PResult<Vec<LogicTree>> {
    c.descend("logic trees")?;
    c.expect("(")?;
    let mut children = Vec::new();
    loop {
        c.skip_spaces();
        children.push(logic_term(c)?);
        c.skip_spaces();
        if c.eat(",") {
            continue;
        }
        c.expect(")")?;
        c.depth -= 1;
        return Ok(children);
    }
}

fn logic_term(c: &mut Cursor<'_>) -> PResult<LogicTree> {
    let start = c.pos;
    let negated = c.eat("not.");
    for (word, op) in [("and(", LogicOp::And), ("or(", LogicOp::Or)] {
        if c.rest().starts_with(word) {
            c.pos += word.len() - 1;
            let children = logic_children(c)?;
            return Ok(LogicTree::Expr {
                negated,
                op,
                children,
            });
        }
    }
    c.pos = start;
    let field = field(c)?;
    c.expect(".")?;
    let (negated, operation) = operation(c, true)?;
    Ok(LogicTree::Filter(Filter {
        field,
        negated,
        operation,
    }))
}

/// `order=` terms.
pub(crate) fn order_terms(c: &mut Cursor<'_>) -> PResult<Vec<OrderTerm>> {
    let mut terms = Vec::new();
    loop {
        c.skip_spaces();
        let first = field(c)?;
        let (relation, field) = if first.json_path.is_empty() && c.eat("(") {
            let inner = field(c)?;
            c.expect(")")?;
            (Some(first.name), inner)
        } else {
            (None, first)
        };
        let mut direction = None;
        let mut nulls = None;
        while c.rest().starts_with('.') {
            let dot = c.pos;
            c.bump();
            let word = ident(c).map_err(|_| {
                (
                    dot + 1,
                    "expected asc, desc, nullsfirst or nullslast".to_owned(),
                )
            })?;
            match word.as_str() {
                "asc" if direction.is_none() && nulls.is_none() => direction = Some(Direction::Asc),
                "desc" if direction.is_none() && nulls.is_none() => {
                    direction = Some(Direction::Desc)
                }
                "nullsfirst" if nulls.is_none() => nulls = Some(Nulls::First),
                "nullslast" if nulls.is_none() => nulls = Some(Nulls::Last),
                _ => {
                    return Err((
                        dot + 1,
                        "expected asc, desc, nullsfirst or nullslast".to_owned(),
                    ));
                }
            }
        }
        terms.push(OrderTerm {
            relation,
            field,
            direction,
            nulls,
        });
        c.skip_spaces();
        if !c.eat(",") {
            return Ok(terms);
        }
    }
}

/// `columns=` and `on_conflict=`: names, possibly quoted, separated by `,`.
pub(crate) fn name_list(c: &mut Cursor<'_>) -> PResult<Vec<String>> {
    let mut names = Vec::new();
    loop {
        names.push(name(c)?);
        c.skip_spaces();
        if !c.eat(",") {
            return Ok(names);
        }
    }
}

/// A filter key: `col`, `col->a->>b`, `embed.col`, `a.b.col` (the path is
/// every segment but the last).
pub(crate) fn filter_key(c: &mut Cursor<'_>) -> PResult<(EmbedPath, Field)> {
    let mut path = Vec::new();
    loop {
        let segment = field(c)?;
        if segment.json_path.is_empty() && c.eat(".") {
            path.push(segment.name);
            continue;
        }
        return Ok((path, segment));
    }
}
