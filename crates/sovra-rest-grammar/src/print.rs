//! Prints trees back in the URL grammar, so that `parse(print(x)) == x`
//! (checked by the property tests) and so that plans can name what they got.

use std::fmt::{self, Display, Formatter, Write as _};

use crate::ast::*;

/// A name as the grammar accepts it: bare when it is plain, quoted
/// otherwise.
pub fn print_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        && !name.chars().all(|c| c.is_ascii_digit());
    if plain {
        name.to_owned()
    } else {
        let mut out = String::from("\"");
        for c in name.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }
}

impl Display for Field {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(&print_name(&self.name))?;
        for op in &self.json_path {
            f.write_str(if op.as_text { "->>" } else { "->" })?;
            match &op.key {
                JsonKey::Index(i) => write!(f, "{i}")?,
                JsonKey::Key(k) => f.write_str(&print_name(k))?,
            }
        }
        Ok(())
    }
}

fn alias(f: &mut Formatter<'_>, alias: Option<&String>) -> fmt::Result {
    match alias {
        Some(alias) => write!(f, "{}:", print_name(alias)),
        None => Ok(()),
    }
}

impl Display for SelectItem {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            SelectItem::Star => f.write_char('*'),
            SelectItem::Field {
                alias: a,
                field,
                cast,
                aggregate,
            } => {
                alias(f, a.as_ref())?;
                write!(f, "{field}")?;
                if let Some(cast) = cast {
                    write!(f, "::{cast}")?;
                }
                if let Some(aggregate) = aggregate {
                    write!(f, ".{}()", aggregate.function.name())?;
                    if let Some(cast) = &aggregate.cast {
                        write!(f, "::{cast}")?;
                    }
                }
                Ok(())
            }
            SelectItem::Count { alias: a, cast } => {
                alias(f, a.as_ref())?;
                f.write_str("count()")?;
                if let Some(cast) = cast {
                    write!(f, "::{cast}")?;
                }
                Ok(())
            }
            SelectItem::Embed {
                alias: a,
                name,
                hint,
                join,
                spread,
                select,
            } => {
                if *spread {
                    f.write_str("...")?;
                } else {
                    alias(f, a.as_ref())?;
                }
                f.write_str(&print_name(name))?;
                if let Some(hint) = hint {
                    write!(f, "!{}", print_name(hint))?;
                }
                match join {
                    Some(JoinType::Inner) => f.write_str("!inner")?,
                    Some(JoinType::Left) => f.write_str("!left")?,
                    None => {}
                }
                f.write_char('(')?;
                write!(f, "{}", SelectList(select))?;
                f.write_char(')')
            }
        }
    }
}

/// A select list, comma-separated.
pub struct SelectList<'a>(pub &'a [SelectItem]);

impl Display for SelectList<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

impl CompareOp {
    pub fn name(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Neq => "neq",
            CompareOp::Gt => "gt",
            CompareOp::Gte => "gte",
            CompareOp::Lt => "lt",
            CompareOp::Lte => "lte",
            CompareOp::Like => "like",
            CompareOp::Ilike => "ilike",
            CompareOp::Match => "match",
            CompareOp::Imatch => "imatch",
        }
    }
}

impl RangeOp {
    pub fn name(self) -> &'static str {
        match self {
            RangeOp::Contains => "cs",
            RangeOp::Contained => "cd",
            RangeOp::Overlap => "ov",
            RangeOp::StrictlyLeft => "sl",
            RangeOp::StrictlyRight => "sr",
            RangeOp::NotExtendRight => "nxr",
            RangeOp::NotExtendLeft => "nxl",
            RangeOp::Adjacent => "adj",
        }
    }
}

impl FtsKind {
    pub fn name(self) -> &'static str {
        match self {
            FtsKind::Fts => "fts",
            FtsKind::Plain => "plfts",
            FtsKind::Phrase => "phfts",
            FtsKind::Websearch => "wfts",
        }
    }
}

fn quote_value(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Operation {
    /// The operation as it follows `col=` (`in_tree` quotes values so they
    /// survive inside `or=(…)`).
    pub fn print(&self, negated: bool, in_tree: bool) -> String {
        let mut out = String::new();
        if negated {
            out.push_str("not.");
        }
        let value = |v: &str| {
            if in_tree {
                quote_value(v)
            } else {
                v.to_owned()
            }
        };
        match self {
            Operation::Compare {
                op,
                quantifier,
                value: v,
            } => {
                out.push_str(op.name());
                match quantifier {
                    Some(Quantifier::Any) => out.push_str("(any)"),
                    Some(Quantifier::All) => out.push_str("(all)"),
                    None => {}
                }
                out.push('.');
                out.push_str(&value(v));
            }
            Operation::Is(is) => {
                out.push_str("is.");
                out.push_str(match is {
                    IsValue::Null => "null",
                    IsValue::NotNull => "not_null",
                    IsValue::True => "true",
                    IsValue::False => "false",
                    IsValue::Unknown => "unknown",
                });
            }
            Operation::IsDistinct(v) => {
                out.push_str("isdistinct.");
                out.push_str(&value(v));
            }
            Operation::In(items) => {
                out.push_str("in.(");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&quote_value(item));
                }
                out.push(')');
            }
            Operation::Range { op, value: v } => {
                out.push_str(op.name());
                out.push('.');
                out.push_str(&value(v));
            }
            Operation::Fts {
                kind,
                language,
                value: v,
            } => {
                out.push_str(kind.name());
                if let Some(language) = language {
                    out.push('(');
                    out.push_str(language);
                    out.push(')');
                }
                out.push('.');
                out.push_str(&value(v));
            }
        }
        out
    }
}

impl Display for LogicTree {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            LogicTree::Expr {
                negated,
                op,
                children,
            } => {
                if *negated {
                    f.write_str("not.")?;
                }
                f.write_str(match op {
                    LogicOp::And => "and",
                    LogicOp::Or => "or",
                })?;
                f.write_char('(')?;
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{child}")?;
                }
                f.write_char(')')
            }
            LogicTree::Filter(filter) => write!(
                f,
                "{}.{}",
                filter.field,
                filter.operation.print(filter.negated, true)
            ),
        }
    }
}

impl Display for OrderTerm {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match &self.relation {
            Some(relation) => write!(f, "{}({})", print_name(relation), self.field)?,
            None => write!(f, "{}", self.field)?,
        }
        match self.direction {
            Some(Direction::Asc) => f.write_str(".asc")?,
            Some(Direction::Desc) => f.write_str(".desc")?,
            None => {}
        }
        match self.nulls {
            Some(Nulls::First) => f.write_str(".nullsfirst"),
            Some(Nulls::Last) => f.write_str(".nullslast"),
            None => Ok(()),
        }
    }
}
