//! Relationship resolution for embeds (spec §2.3.1): from an origin
//! relation and `target!hint`, the one foreign-key path to follow.

use crate::error::ApiError;
use crate::schema::{ForeignKey, Relation, SchemaCache};

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
}

impl<'a> Relationship<'a> {
    pub(crate) fn target(&self) -> &'a Relation {
        match self {
            Relationship::ManyToOne { target, .. }
            | Relationship::OneToMany { target, .. }
            | Relationship::ManyToMany { target, .. } => target,
        }
    }

    /// Many-to-one, or one-to-one (the target's key columns are unique).
    pub(crate) fn is_to_one(&self) -> bool {
        match self {
            Relationship::ManyToOne { .. } => true,
            Relationship::OneToMany { fk, target } => target.is_unique(&fk.columns),
            Relationship::ManyToMany { .. } => false,
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
            Relationship::OneToMany { fk, .. } => (
                "one-to-many",
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
        }
    }
}

fn single_column(fk: &ForeignKey) -> Option<&str> {
    match fk.columns.as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

fn single_ref_column(fk: &ForeignKey) -> Option<&str> {
    match fk.ref_columns.as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

/// Finds the relationship `name!hint` names from `origin`.
pub(crate) fn resolve<'a>(
    cache: &'a SchemaCache,
    origin: &Relation,
    name: &str,
    hint: Option<&str>,
) -> Result<Relationship<'a>, ApiError> {
    let is_origin = |schema: &str, table: &str| schema == origin.schema && table == origin.name;
    let mut candidates: Vec<Relationship<'a>> = Vec::new();
    for fk in &cache.foreign_keys {
        // Many-to-one: the origin's key points at the target.
        if is_origin(&fk.schema, &fk.table)
            && let Some(target) = cache.relation(&fk.ref_schema, &fk.ref_table)
        {
            let by_name = target.name == name || fk.name == name || single_column(fk) == Some(name);
            let self_reference = is_origin(&fk.ref_schema, &fk.ref_table);
            // On a self-reference, the table's own name means its
            // children (one-to-many), the key column its parent.
            let by_name = by_name && !(self_reference && target.name == name && hint.is_none());
            let by_hint = hint.is_none_or(|h| {
                fk.name == h || single_column(fk) == Some(h) || single_ref_column(fk) == Some(h)
            });
            if by_name && by_hint {
                candidates.push(Relationship::ManyToOne { fk, target });
            }
        }
        // One-to-many: the target's key points at the origin.
        if is_origin(&fk.ref_schema, &fk.ref_table)
            && let Some(target) = cache.relation(&fk.schema, &fk.table)
        {
            let self_reference = is_origin(&fk.schema, &fk.table);
            let by_name = target.name == name || fk.name == name;
            let by_name = by_name && !(self_reference && fk.name == name && target.name != name);
            let by_hint = hint.is_none_or(|h| {
                fk.name == h || single_column(fk) == Some(h) || single_ref_column(fk) == Some(h)
            });
            if by_name && by_hint {
                candidates.push(Relationship::OneToMany { fk, target });
            }
        }
    }
    // Many-to-many through a junction whose key includes both foreign keys.
    for origin_fk in cache
        .foreign_keys
        .iter()
        .filter(|fk| is_origin(&fk.ref_schema, &fk.ref_table))
    {
        let Some(junction) = cache.relation(&origin_fk.schema, &origin_fk.table) else {
            continue;
        };
        if is_origin(&junction.schema, &junction.name) {
            continue;
        }
        for target_fk in cache.foreign_keys.iter().filter(|fk| {
            fk.schema == junction.schema && fk.table == junction.name && fk.name != origin_fk.name
        }) {
            let Some(target) = cache.relation(&target_fk.ref_schema, &target_fk.ref_table) else {
                continue;
            };
            let in_key =
                |fk: &ForeignKey| fk.columns.iter().all(|c| junction.primary_key.contains(c));
            if target.name != name || !in_key(origin_fk) || !in_key(target_fk) {
                continue;
            }
            if hint.is_none_or(|h| h == junction.name || h == target_fk.name || h == origin_fk.name)
            {
                candidates.push(Relationship::ManyToMany {
                    junction,
                    origin_fk,
                    target_fk,
                    target,
                });
            }
        }
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => {
            let searched = match hint {
                Some(hint) => format!(
                    "Searched for a foreign key relationship between '{}' and '{name}' using the hint '{hint}' in the schema '{}', but no matches were found.",
                    origin.name, origin.schema
                ),
                None => format!(
                    "Searched for a foreign key relationship between '{}' and '{name}' in the schema '{}', but no matches were found.",
                    origin.name, origin.schema
                ),
            };
            Err(ApiError::no_relationship(&origin.name, name).with_details(searched))
        }
        _ => {
            let details: Vec<serde_json::Value> = candidates
                .iter()
                .map(|c| {
                    let mut value = c.describe();
                    value["embedding"] = format!("{} with {name}", origin.name).into();
                    value
                })
                .collect();
            let options: Vec<String> = candidates
                .iter()
                .map(|c| format!("'{name}!{}'", c.constraint_name()))
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
