//! A committed change as the pipeline carries it from the slot to the
//! sockets, and the `postgres_changes` payload built from it.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sovra_realtime_proto::pgoutput::{self, Datum, Relation};

/// A relation with what delivery needs beyond the decoder's message.
pub(crate) struct RelInfo {
    pub(crate) rel: Relation,
    pub(crate) type_names: Vec<String>,
    /// `format_type` of each column, for casts in the visibility query.
    pub(crate) sql_types: Vec<String>,
    pub(crate) rls: bool,
    /// The primary key's columns (the replica identity's when there is no
    /// primary key but a unique index identity).
    pub(crate) keys: Vec<usize>,
    /// The table's qualified name, quoted, from this database's catalog.
    pub(crate) table_sql: String,
    /// Each column's name, quoted, from this database's catalog; `None`
    /// when it no longer exists here with the same type.
    pub(crate) column_sql: Vec<Option<String>>,
    /// Whether each column is an identity `GENERATED ALWAYS`.
    pub(crate) generated_always: Vec<bool>,
}

impl RelInfo {
    pub(crate) fn key_columns(&self) -> Vec<usize> {
        self.keys.clone()
    }
}

#[derive(Clone)]
pub(crate) struct Change {
    pub(crate) rel: Arc<RelInfo>,
    pub(crate) kind: &'static str,
    pub(crate) new: Option<Vec<Datum>>,
    pub(crate) old: Option<Vec<Datum>>,
}

/// What a change is counted as for memory limits: the bytes of its
/// values plus a fixed overhead per change and per value.
pub(crate) const CHANGE_OVERHEAD: usize = 64;

impl Change {
    /// The change's size for memory limits (feed batches, catch-up).
    pub(crate) fn size(&self) -> usize {
        let tuple = |t: &Option<Vec<Datum>>| {
            t.as_deref().map_or(0, |values| {
                values
                    .iter()
                    .map(|v| match v {
                        Datum::Text(text) => text.len() + 8,
                        Datum::Null | Datum::Unchanged => 8,
                    })
                    .sum()
            })
        };
        CHANGE_OVERHEAD + tuple(&self.new) + tuple(&self.old)
    }
}

/// An insert into `realtime.messages` (a broadcast from SQL).
pub(crate) fn is_message(change: &Change) -> bool {
    change.rel.rel.schema == "realtime" && change.rel.rel.name == "messages"
}

/// The `data` of a `postgres_changes` message, as realtime-js reads it.
/// `hidden` marks columns the receiver may not read (column privileges):
/// they are left out.
pub(crate) fn change_data(
    change: &Change,
    commit_timestamp: &str,
    hidden: Option<&[bool]>,
) -> Value {
    let rel = &change.rel;
    let is_hidden = |i: usize| hidden.is_some_and(|h| h.get(i).copied().unwrap_or(true));
    let columns: Vec<Value> = rel
        .rel
        .columns
        .iter()
        .zip(&rel.type_names)
        .enumerate()
        .filter(|(i, _)| !is_hidden(*i))
        .map(|(_, (c, t))| json!({"name": c.name, "type": t}))
        .collect();
    let record_of = |tuple: &Vec<Datum>, only: Option<&[usize]>| -> Value {
        let mut map = Map::new();
        for (i, column) in rel.rel.columns.iter().enumerate() {
            if only.is_some_and(|keys| !keys.contains(&i)) || is_hidden(i) {
                continue;
            }
            match tuple.get(i) {
                Some(Datum::Text(t)) => {
                    map.insert(
                        column.name.clone(),
                        pgoutput::json_value(&rel.type_names[i], t),
                    );
                }
                Some(Datum::Null) => {
                    map.insert(column.name.clone(), Value::Null);
                }
                Some(Datum::Unchanged) | None => {}
            }
        }
        Value::Object(map)
    };
    let keys = rel.key_columns();
    let mut errors = Value::Null;
    let mut data = Map::new();
    data.insert("schema".to_owned(), json!(rel.rel.schema));
    data.insert("table".to_owned(), json!(rel.rel.name));
    data.insert("commit_timestamp".to_owned(), json!(commit_timestamp));
    data.insert("type".to_owned(), json!(change.kind));
    data.insert("columns".to_owned(), Value::Array(columns));
    if keys.is_empty() {
        errors = json!(["Error 400: Bad Request, no primary key"]);
    }
    if let Some(new) = &change.new {
        let mut record = record_of(new, None);
        // Unchanged TOASTed values come from the old row when it was sent
        // whole (REPLICA IDENTITY FULL).
        if let (Value::Object(map), Some(old)) = (&mut record, &change.old) {
            for (i, column) in rel.rel.columns.iter().enumerate() {
                if matches!(new.get(i), Some(Datum::Unchanged))
                    && !is_hidden(i)
                    && let Some(Datum::Text(t)) = old.get(i)
                {
                    map.insert(
                        column.name.clone(),
                        pgoutput::json_value(&rel.type_names[i], t),
                    );
                }
            }
        }
        data.insert("record".to_owned(), record);
    }
    match (change.kind, &change.old) {
        ("UPDATE" | "DELETE", Some(old)) => {
            let full = rel.rel.replica_identity == b'f';
            // Under RLS the old row may have been invisible to the
            // receiver: only its key is sent (as Supabase does).
            let only = (!full || rel.rls).then_some(keys.as_slice());
            data.insert("old_record".to_owned(), record_of(old, only));
        }
        ("UPDATE", None) => {
            if let Some(new) = &change.new {
                data.insert("old_record".to_owned(), record_of(new, Some(&keys)));
            }
        }
        _ => {}
    }
    data.insert("errors".to_owned(), errors);
    Value::Object(data)
}
