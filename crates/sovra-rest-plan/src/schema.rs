//! The schema cache's types: what the planner knows about the exposed
//! relations. Loaded from `pg_catalog` by `sovra-rest`; built by hand in
//! tests.

use std::collections::BTreeMap;

/// A type as SQL can name it unambiguously: `"schema"."name"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeName {
    pub schema: String,
    pub name: String,
}

impl TypeName {
    pub fn new(schema: &str, name: &str) -> TypeName {
        TypeName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The quoted, qualified name for a cast.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// One column of a relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: TypeName,
    /// The array type of the column's type (for `in` and `(any)`), when
    /// it has one.
    pub array_type: Option<TypeName>,
    pub nullable: bool,
    pub has_default: bool,
    /// The column's default as SQL, from the catalog (`pg_get_expr`), for
    /// `Prefer: missing=default`.
    pub default_expr: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationKind {
    Table,
    View,
    MaterializedView,
    ForeignTable,
    PartitionedTable,
}

/// A table or view of an exposed schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub schema: String,
    pub name: String,
    pub kind: RelationKind,
    /// In table order.
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    /// Column sets of the primary key and every unique index.
    pub unique_keys: Vec<Vec<String>>,
    pub insertable: bool,
    pub updatable: bool,
    pub deletable: bool,
}

impl Relation {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether `columns` include a unique key (so at most one row has them).
    pub fn is_unique(&self, columns: &[String]) -> bool {
        self.unique_keys
            .iter()
            .any(|key| !key.is_empty() && key.iter().all(|c| columns.contains(c)))
    }
}

/// A foreign key between two relations of exposed schemas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignKey {
    /// The constraint's name.
    pub name: String,
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub ref_schema: String,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
}

/// A function parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutineParam {
    /// Empty for an unnamed parameter.
    pub name: String,
    pub type_name: TypeName,
    /// The type as PostgreSQL prints it (`format_type`: `integer`,
    /// `character varying`, `public.channels`), for messages.
    pub type_display: String,
    pub has_default: bool,
    pub variadic: bool,
}

/// What a function returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReturnShape {
    Void,
    /// A base, domain, enum, range or array type.
    Scalar(TypeName),
    /// Rows with these columns (a table's row type, a composite type, or
    /// `RETURNS TABLE`/OUT parameters).
    Rows(Vec<Column>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
}

/// A function callable at `/rpc/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routine {
    pub schema: String,
    pub name: String,
    /// Input parameters, in order.
    pub params: Vec<RoutineParam>,
    pub returns: ReturnShape,
    pub returns_set: bool,
    /// The composite type of [`ReturnShape::Rows`] when the function
    /// returns a named one (a table's or view's row type): what a
    /// computed relationship embeds.
    pub return_type: Option<TypeName>,
    /// Declared `ROWS 1`: a set-returning function PostgREST treats as
    /// to-one when embedded.
    pub single_row: bool,
    pub volatility: Volatility,
}

impl Routine {
    /// Whether the function takes exactly one parameter of `relation`'s
    /// row type: the shape of computed fields and relationships.
    pub fn takes_row_of(&self, relation: &Relation) -> bool {
        matches!(self.params.as_slice(), [only]
            if only.type_name.schema == relation.schema && only.type_name.name == relation.name)
    }
}

/// Everything the planner may use, for every exposed schema.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaCache {
    /// By (schema, name).
    pub relations: BTreeMap<(String, String), Relation>,
    pub foreign_keys: Vec<ForeignKey>,
    /// Overloads share a name.
    pub routines: Vec<Routine>,
    /// The settings of a role (`ALTER ROLE … SET`) that a request
    /// transaction applies when it switches to that role (PostgreSQL applies
    /// them only at login): by role name, values in the order of
    /// `sovra_pg::ROLE_SETTING_NAMES`. Not for the planner.
    pub role_settings: BTreeMap<String, [Option<String>; 5]>,
}

impl SchemaCache {
    pub fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.relations.get(&(schema.to_owned(), name.to_owned()))
    }

    /// The computed field `name` of `relation`: a function of the
    /// relation's schema taking one row of it and returning one scalar
    /// (PostgreSQL's `row.function` notation, as PostgREST uses it).
    pub fn computed_field(&self, relation: &Relation, name: &str) -> Option<&Routine> {
        self.routines.iter().find(|r| {
            r.name == name
                && r.schema == relation.schema
                && !r.returns_set
                && matches!(r.returns, ReturnShape::Scalar(_))
                && r.takes_row_of(relation)
        })
    }

    /// The most similar relation name in `schema` (for PGRST205 hints).
    pub fn suggest(&self, schema: &str, name: &str) -> Option<String> {
        self.relations
            .keys()
            .filter(|(s, _)| s == schema)
            .map(|(_, n)| (similarity(n, name), n))
            .filter(|(score, _)| *score >= 0.55)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n.clone())
    }
}

/// Dice coefficient over character bigrams, in `0.0..=1.0`.
pub(crate) fn similarity(a: &str, b: &str) -> f64 {
    let bigrams = |s: &str| -> Vec<(char, char)> {
        let chars: Vec<char> = s.to_lowercase().chars().collect();
        chars.windows(2).map(|w| (w[0], w[1])).collect()
    };
    let (x, mut y) = (bigrams(a), bigrams(b));
    if x.is_empty() || y.is_empty() {
        return if a.eq_ignore_ascii_case(b) { 1.0 } else { 0.0 };
    }
    let total = (x.len() + y.len()) as f64;
    let mut shared = 0usize;
    for pair in &x {
        if let Some(pos) = y.iter().position(|p| p == pair) {
            y.swap_remove(pos);
            shared += 1;
        }
    }
    2.0 * shared as f64 / total
}

/// A double-quoted SQL identifier (`"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
