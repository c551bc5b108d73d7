//! The typed tree a REST request's query string parses into. Names follow
//! PostgREST's `ApiRequest` types.

/// A column name with an optional JSON path (`data->a->>b`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub json_path: Vec<JsonOp>,
}

impl Field {
    pub fn column(name: impl Into<String>) -> Field {
        Field {
            name: name.into(),
            json_path: Vec::new(),
        }
    }
}

/// One step of a JSON path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonOp {
    /// `->>` (text) when true, `->` (json) when false.
    pub as_text: bool,
    pub key: JsonKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonKey {
    Key(String),
    Index(i64),
}

/// `sum`, `avg`, `count`, `max`, `min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateFn {
    Sum,
    Avg,
    Count,
    Max,
    Min,
}

impl AggregateFn {
    pub fn name(self) -> &'static str {
        match self {
            AggregateFn::Sum => "sum",
            AggregateFn::Avg => "avg",
            AggregateFn::Count => "count",
            AggregateFn::Max => "max",
            AggregateFn::Min => "min",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<AggregateFn> {
        Some(match name {
            "sum" => AggregateFn::Sum,
            "avg" => AggregateFn::Avg,
            "count" => AggregateFn::Count,
            "max" => AggregateFn::Max,
            "min" => AggregateFn::Min,
            _ => return None,
        })
    }
}

/// `col.sum()::int`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    pub function: AggregateFn,
    /// Cast applied to the aggregate's result.
    pub cast: Option<String>,
}

/// `!inner` or `!left`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinType {
    Inner,
    Left,
}

/// One item of `select=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectItem {
    /// `*`
    Star,
    /// `alias:col->a::type.sum()::type`
    Field {
        alias: Option<String>,
        field: Field,
        cast: Option<String>,
        aggregate: Option<Aggregate>,
    },
    /// `alias:count()::type`
    Count {
        alias: Option<String>,
        cast: Option<String>,
    },
    /// `alias:target!hint!inner(select)` or, with `spread`,
    /// `...target!hint(select)`.
    Embed {
        alias: Option<String>,
        name: String,
        hint: Option<String>,
        join: Option<JoinType>,
        spread: bool,
        select: Vec<SelectItem>,
    },
}

/// Comparison operators that take one value and may be quantified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Ilike,
    Match,
    Imatch,
}

/// Operators over ranges, arrays and JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOp {
    /// `cs`: `@>`
    Contains,
    /// `cd`: `<@`
    Contained,
    /// `ov`: `&&`
    Overlap,
    /// `sl`: `<<`
    StrictlyLeft,
    /// `sr`: `>>`
    StrictlyRight,
    /// `nxr`: `&<`
    NotExtendRight,
    /// `nxl`: `&>`
    NotExtendLeft,
    /// `adj`: `-|-`
    Adjacent,
}

/// `(any)` or `(all)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantifier {
    Any,
    All,
}

/// `is.<value>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsValue {
    Null,
    NotNull,
    True,
    False,
    Unknown,
}

/// The full-text search flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FtsKind {
    /// `fts`: `to_tsquery`
    Fts,
    /// `plfts`: `plainto_tsquery`
    Plain,
    /// `phfts`: `phraseto_tsquery`
    Phrase,
    /// `wfts`: `websearch_to_tsquery`
    Websearch,
}

/// What a filter does with its column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    Compare {
        op: CompareOp,
        quantifier: Option<Quantifier>,
        value: String,
    },
    Is(IsValue),
    IsDistinct(String),
    In(Vec<String>),
    Range {
        op: RangeOp,
        value: String,
    },
    Fts {
        kind: FtsKind,
        language: Option<String>,
        value: String,
    },
}

/// `field=[not.]operation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub field: Field,
    pub negated: bool,
    pub operation: Operation,
}

/// `and` or `or`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogicOp {
    And,
    Or,
}

/// `or=(…)`, `not.and=(…)` and their nested terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogicTree {
    Expr {
        negated: bool,
        op: LogicOp,
        children: Vec<LogicTree>,
    },
    Filter(Filter),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nulls {
    First,
    Last,
}

/// One term of `order=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderTerm {
    /// `Some(embed)` for `embed(field)`: order by a to-one embed's column.
    pub relation: Option<String>,
    pub field: Field,
    pub direction: Option<Direction>,
    pub nulls: Option<Nulls>,
}

/// The path of embeds a parameter applies to (`messages.order` →
/// `["messages"]`); empty for the top-level relation.
pub type EmbedPath = Vec<String>;

/// Everything the query string says, in PostgREST's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// `select=`; `None` when absent (the default is `*`).
    pub select: Option<Vec<SelectItem>>,
    pub filters: Vec<(EmbedPath, Filter)>,
    pub logic: Vec<(EmbedPath, LogicTree)>,
    pub order: Vec<(EmbedPath, Vec<OrderTerm>)>,
    pub limits: Vec<(EmbedPath, i64)>,
    pub offsets: Vec<(EmbedPath, i64)>,
    /// `columns=` for writes.
    pub columns: Option<Vec<String>>,
    /// `on_conflict=` for upserts.
    pub on_conflict: Option<Vec<String>>,
    /// For RPC: parameters that are not reserved and do not parse as a
    /// filter, in order (they are the function's arguments).
    pub arguments: Vec<(String, String)>,
}
