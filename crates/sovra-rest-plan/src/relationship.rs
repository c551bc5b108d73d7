//! Relationship resolution for embeds (spec §2.3.1): from an origin
//! relation and `target!hint`, the one foreign-key path (or computed
//! relationship) to follow, chosen by PostgREST's rules (`findRel`): the
//! target lives in the request's schema; without a hint it is named by its
//! table, or (for tables only, never views) by the constraint or the
//! origin's single key column; with a hint the target is the table and the
//! hint names the constraint, a single key column on either side or the
//! junction; on a self-reference the table's name means its children and
//! the key column its parent, and a hint (the key column) picks children.
//! A function named like the target that takes the origin's row and
//! returns rows of a table is a computed relationship, and wins.

use crate::error::ApiError;
use crate::schema::{ForeignKey, Relation, RelationKind, Routine, SchemaCache};

/// How the embedded rows relate to the origin's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Relationship<'a> {
    /// The origin holds the key: one target row (or none).
    ManyToOne {
        fk: &'a ForeignKey,
        target: &'a Relation,
    },
    /// The target holds the key: many target rows.
    OneToMany {
        fk: &'a ForeignKey,
        target: &'a Relation,
    },
    /// A junction holds keys to both.
    ManyToMany {
        junction: &'a Relation,
        /// Junction → origin.
        origin_fk: &'a ForeignKey,
        /// Junction → target.
        target_fk: &'a ForeignKey,
        target: &'a Relation,
    },
    /// A function of the origin's row returning rows of the target.
    Computed {
        routine: &'a Routine,
        target: &'a Relation,
        /// Not `setof`, or declared `ROWS 1`.
        to_one: bool,
    },
}

impl<'a> Relationship<'a> {
    pub(crate) fn target(&self) -> &'a Relation {
        match self {
            Relationship::ManyToOne { target, .. }
            | Relationship::OneToMany { target, .. }
            | Relationship::ManyToMany { target, .. }
            | Relationship::Computed { target, .. } => target,
        }
    }

    /// Many-to-one, or one-to-one (the target's key columns are unique).
    pub(crate) fn is_to_one(&self) -> bool {
        match self {
            Relationship::ManyToOne { .. } => true,
            Relationship::OneToMany { fk, target } => target.is_unique(&fk.columns),
            Relationship::ManyToMany { .. } => false,
            Relationship::Computed { to_one, .. } => *to_one,
        }
    }

    fn describe(&self) -> serde_json::Value {
        let cols = |c: &[String]| c.join(", ");
        let (cardinality, relationship) = match self {
            Relationship::ManyToOne { fk, .. } => (
                "many-to-one",
                format!(
                    "{} using {}({}) and {}({})",
                    fk.name,
                    fk.table,
                    cols(&fk.columns),
                    fk.ref_table,
                    cols(&fk.ref_columns)
                ),
            ),
            Relationship::OneToMany { fk, target } => (
                if target.is_unique(&fk.columns) {
                    "one-to-one"
                } else {
                    "one-to-many"
                },
                format!(
                    "{} using {}({}) and {}({})",
                    fk.name,
                    fk.ref_table,
                    cols(&fk.ref_columns),
                    fk.table,
                    cols(&fk.columns)
                ),
            ),
            Relationship::ManyToMany {
                junction,
                origin_fk,
                target_fk,
                ..
            } => (
                "many-to-many",
                format!(
                    "{} using {}({}) and {}({})",
                    junction.name,
                    origin_fk.name,
                    cols(&origin_fk.columns),
                    target_fk.name,
                    cols(&target_fk.columns)
                ),
            ),
            // Never ambiguous: a computed relationship wins.
            Relationship::Computed { .. } => return serde_json::json!({}),
        };
        serde_json::json!({
            "cardinality": cardinality,
            "relationship": relationship,
        })
    }

    fn constraint_name(&self) -> &str {
        match self {
            Relationship::ManyToOne { fk, .. } | Relationship::OneToMany { fk, .. } => &fk.name,
            Relationship::ManyToMany { junction, .. } => &junction.name,
            Relationship::Computed { routine, .. } => &routine.name,
        }
    }
}

fn single(columns: &[String]) -> Option<&str> {
    match columns {
        [only] => Some(only),
        _ => None,
    }
}

fn is_view(relation: &Relation) -> bool {
    matches!(
        relation.kind,
        RelationKind::View | RelationKind::MaterializedView
    )
}

/// A candidate with what PostgREST's filter looks at.
struct Candidate<'a> {
    relationship: Relationship<'a>,
    /// The constraint's name (none for many-to-many).
    constraint: Option<&'a str>,
    /// The origin's and the target's key columns.
    origin_columns: &'a [String],
    target_columns: &'a [String],
    is_self: bool,
}

/// Every relationship from `origin` to a relation of `schema`.
fn candidates<'a>(cache: &'a SchemaCache, origin: &Relation, schema: &str) -> Vec<Candidate<'a>> {
    let is_origin = |s: &str, t: &str| s == origin.schema && t == origin.name;
    let mut out = Vec::new();
    for fk in &cache.foreign_keys {
        if is_origin(&fk.schema, &fk.table)
            && fk.ref_schema == schema
            && let Some(target) = cache.relation(&fk.ref_schema, &fk.ref_table)
        {
            out.push(Candidate {
                relationship: Relationship::ManyToOne { fk, target },
                constraint: Some(&fk.name),
                origin_columns: &fk.columns,
                target_columns: &fk.ref_columns,
                is_self: is_origin(&fk.ref_schema, &fk.ref_table),
            });
        }
        if is_origin(&fk.ref_schema, &fk.ref_table)
            && fk.schema == schema
            && let Some(target) = cache.relation(&fk.schema, &fk.table)
        {
            out.push(Candidate {
                relationship: Relationship::OneToMany { fk, target },
                constraint: Some(&fk.name),
                origin_columns: &fk.ref_columns,
                target_columns: &fk.columns,
                is_self: is_origin(&fk.schema, &fk.table),
            });
        }
    }
    // Many-to-many through a junction whose key includes both foreign keys.
    for origin_fk in cache
        .foreign_keys
        .iter()
        .filter(|fk| is_origin(&fk.ref_schema, &fk.ref_table) && fk.schema == schema)
    {
        let Some(junction) = cache.relation(&origin_fk.schema, &origin_fk.table) else {
            continue;
        };
        if is_origin(&junction.schema, &junction.name) {
            continue;
        }
        for target_fk in cache.foreign_keys.iter().filter(|fk| {
            fk.schema == junction.schema
                && fk.table == junction.name
                && fk.name != origin_fk.name
                && fk.ref_schema == schema
        }) {
            let Some(target) = cache.relation(&target_fk.ref_schema, &target_fk.ref_table) else {
                continue;
            };
            let in_key =
                |fk: &ForeignKey| fk.columns.iter().all(|c| junction.primary_key.contains(c));
            if !in_key(origin_fk) || !in_key(target_fk) {
                continue;
            }
            out.push(Candidate {
                relationship: Relationship::ManyToMany {
                    junction,
                    origin_fk,
                    target_fk,
                    target,
                },
                constraint: None,
                origin_columns: &[],
                target_columns: &[],
                is_self: false,
            });
        }
    }
    out
}

/// Whether `candidate` is what `name!hint` asks for (PostgREST's `findRel`).
fn matches(candidate: &Candidate<'_>, name: &str, hint: Option<&str>) -> bool {
    let target = candidate.relationship.target();
    let is_m2o = matches!(candidate.relationship, Relationship::ManyToOne { .. });
    let is_o2m = matches!(candidate.relationship, Relationship::OneToMany { .. });
    let origin_col = single(candidate.origin_columns);
    let target_col = single(candidate.target_columns);
    if candidate.is_self {
        return match hint {
            // `children:folders(*)` or `parent_id(*)`.
            None => (target.name == name && is_o2m) || (origin_col == Some(name) && is_m2o),
            // `children:folders!parent_id(*)`.
            Some(hint) => target.name == name && is_o2m && target_col == Some(hint),
        };
    }
    match hint {
        None => {
            target.name == name
                || (!is_view(target)
                    && (candidate.constraint == Some(name) || origin_col == Some(name)))
        }
        Some(hint) => {
            target.name == name
                && (candidate.constraint == Some(hint)
                    || origin_col == Some(hint)
                    || target_col == Some(hint)
                    || matches!(&candidate.relationship,
                        Relationship::ManyToMany { junction, .. } if junction.name == hint))
        }
    }
}

/// The computed relationship `name` of `origin`: a function of the
/// request's schema taking the origin's row and returning rows of a
/// relation of that schema.
fn computed<'a>(
    cache: &'a SchemaCache,
    origin: &Relation,
    schema: &str,
    name: &str,
) -> Option<Relationship<'a>> {
    cache.routines.iter().find_map(|routine| {
        if routine.name != name || routine.schema != schema || !routine.takes_row_of(origin) {
            return None;
        }
        let returned = routine.return_type.as_ref()?;
        let target = cache.relation(&returned.schema, &returned.name)?;
        (target.schema == schema).then_some(Relationship::Computed {
            routine,
            target,
            to_one: !routine.returns_set || routine.single_row,
        })
    })
}

/// Finds the relationship `name!hint` names from `origin`, among the
/// relations of `schema` (the request's).
pub(crate) fn resolve<'a>(
    cache: &'a SchemaCache,
    origin: &Relation,
    schema: &str,
    name: &str,
    hint: Option<&str>,
) -> Result<Relationship<'a>, ApiError> {
    if let Some(relationship) = computed(cache, origin, schema, name) {
        return Ok(relationship);
    }
    let all = candidates(cache, origin, schema);
    let targets: Vec<String> = all
        .iter()
        .map(|c| c.relationship.target().name.clone())
        .collect();
    let mut candidates: Vec<Relationship<'a>> = all
        .into_iter()
        .filter(|c| matches(c, name, hint))
        .map(|c| c.relationship)
        .collect();
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => {
            let searched = match hint {
                Some(hint) => format!(
                    "Searched for a foreign key relationship between '{}' and '{name}' using the hint '{hint}' in the schema '{schema}', but no matches were found.",
                    origin.name
                ),
                None => format!(
                    "Searched for a foreign key relationship between '{}' and '{name}' in the schema '{schema}', but no matches were found.",
                    origin.name
                ),
            };
            let mut err = ApiError::no_relationship(&origin.name, name).with_details(searched);
            if let Some(hint) = no_relationship_hint(cache, origin, schema, name, &targets) {
                err = err.with_hint(hint);
            }
            Err(err)
        }
        _ => {
            let details: Vec<serde_json::Value> = candidates
                .iter()
                .map(|c| {
                    let mut value = c.describe();
                    value["embedding"] = format!("{} with {}", origin.name, c.target().name).into();
                    value
                })
                .collect();
            let options: Vec<String> = candidates
                .iter()
                .map(|c| format!("'{}!{}'", c.target().name, c.constraint_name()))
                .collect();
            Err(ApiError::ambiguous_relationship(
                &origin.name,
                name,
                serde_json::Value::Array(details),
                format!(
                    "Try changing '{name}' to one of the following: {}. Find the desired relationship in the 'details' key.",
                    options.join(", ")
                ),
            ))
        }
    }
}

/// PostgREST's hint for a missing relationship: when the origin has
/// relationships, the closest other target name; otherwise the closest
/// relation of the schema that has relationships.
fn no_relationship_hint(
    cache: &SchemaCache,
    origin: &Relation,
    schema: &str,
    name: &str,
    targets: &[String],
) -> Option<String> {
    let closest = |names: &mut dyn Iterator<Item = &str>, wanted: &str| {
        names
            .filter(|n| *n != wanted)
            .map(|n| (crate::schema::similarity(n, wanted), n.to_owned()))
            .filter(|(score, _)| *score >= 0.55)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n)
    };
    if !targets.is_empty() {
        if targets.iter().any(|t| t == name) {
            return None;
        }
        let suggestion = closest(&mut targets.iter().map(String::as_str), name)?;
        return Some(format!(
            "Perhaps you meant '{suggestion}' instead of '{name}'."
        ));
    }
    let with_relationships: Vec<&str> = cache
        .relations
        .values()
        .filter(|r| r.schema == schema && r.name != origin.name)
        .filter(|r| !candidates(cache, r, schema).is_empty())
        .map(|r| r.name.as_str())
        .collect();
    let suggestion = closest(&mut with_relationships.into_iter(), &origin.name)?;
    Some(format!(
        "Perhaps you meant '{suggestion}' instead of '{}'.",
        origin.name
    ))
}
