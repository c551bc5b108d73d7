//! Loading the schema cache from `pg_catalog`, and reloading it on
//! `NOTIFY pgrst, 'reload schema'` (which Sovra's DDL event trigger sends
//! after every schema change) or `NOTIFY pgrst, 'reload config'` (after a
//! role's settings change: `ALTER ROLE` fires no event trigger).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use sovra_pg::tokio_postgres;
use sovra_rest_plan::{
    Column, Relation, RelationKind, ReturnShape, Routine, RoutineParam, SchemaCache, TypeName,
    Volatility,
};

const LOAD_RELATIONS: &str = "
select n.nspname::text, c.relname::text, c.relkind::text,
       coalesce(json_agg(json_build_object(
           'name', a.attname, 'type_schema', tn.nspname, 'type_name', t.typname,
           'array_schema', an.nspname, 'array_name', at.typname,
           'nullable', not a.attnotnull, 'has_default', a.atthasdef,
           'default_expr', coalesce(pg_get_expr(d.adbin, d.adrelid),
             case when a.attidentity <> '' then
               format('nextval(%L::regclass)', pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname))
             end))
         order by a.attnum) filter (where a.attnum is not null), '[]')::text,
       coalesce((select json_agg(pa.attname order by array_position(i.indkey::int2[], pa.attnum))
                 from pg_index i
                 join pg_attribute pa on pa.attrelid = i.indrelid and pa.attnum = any(i.indkey)
                 where i.indrelid = c.oid and i.indisprimary), '[]')::text,
       pg_relation_is_updatable(c.oid, true),
       coalesce((select json_agg((select json_agg(ua.attname)
                                    from pg_attribute ua
                                    where ua.attrelid = ui.indrelid and ua.attnum = any(ui.indkey)))
                 from pg_index ui
                 where ui.indrelid = c.oid and ui.indisunique and ui.indpred is null), '[]')::text
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
left join pg_type t on t.oid = a.atttypid
left join pg_namespace tn on tn.oid = t.typnamespace
left join pg_type at on at.oid = t.typarray
left join pg_namespace an on an.oid = at.typnamespace
where n.nspname = any($1) and c.relkind in ('r', 'v', 'm', 'f', 'p')
group by n.nspname, c.relname, c.relkind, c.oid";

const LOAD_FOREIGN_KEYS: &str = "
select con.conname::text, ns.nspname::text, cl.relname::text,
       (select json_agg(a.attname order by k.ord)
          from unnest(con.conkey) with ordinality k(attnum, ord)
          join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.attnum)::text,
       fns.nspname::text, fcl.relname::text,
       (select json_agg(a.attname order by k.ord)
          from unnest(con.confkey) with ordinality k(attnum, ord)
          join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.attnum)::text
from pg_constraint con
join pg_class cl on cl.oid = con.conrelid
join pg_namespace ns on ns.oid = cl.relnamespace
join pg_class fcl on fcl.oid = con.confrelid
join pg_namespace fns on fns.oid = fcl.relnamespace
where con.contype = 'f' and ns.nspname = any($1) and fns.nspname = any($1)
order by ns.nspname, cl.relname, con.conname";

/// Which base-table columns each view (or materialized view) shows under
/// the same name: the lineage that lets views inherit relationships.
///
/// Written as two materialized steps (the views of the schemas, then the
/// base-table columns their rewrite rules depend on) rather than one join
/// of eight catalogues: PostgreSQL plans each step on its own, and on a
/// new connection planning the single join took 40 to 60 ms.
const LOAD_VIEW_COLUMNS: &str = "
with views as materialized (
  select v.oid, vn.nspname, v.relname
  from pg_class v
  join pg_namespace vn on vn.oid = v.relnamespace
  where v.relkind in ('v', 'm') and vn.nspname = any($1)
), deps as materialized (
  select distinct w.oid as view_oid, w.nspname, w.relname, d.refobjid, d.refobjsubid
  from views w
  join pg_rewrite r on r.ev_class = w.oid
  join pg_depend d on d.classid = 'pg_rewrite'::regclass and d.objid = r.oid
    and d.refclassid = 'pg_class'::regclass and d.refobjsubid > 0
  where d.refobjid <> w.oid
)
select distinct deps.nspname::text, deps.relname::text, tn.nspname::text, t.relname::text, a.attname::text
from deps
join pg_class t on t.oid = deps.refobjid
join pg_namespace tn on tn.oid = t.relnamespace
join pg_attribute a on a.attrelid = t.oid and a.attnum = deps.refobjsubid
join pg_attribute va on va.attrelid = deps.view_oid and va.attname = a.attname and not va.attisdropped";

/// One base-table column a view shows under the same name.
struct Lineage {
    view_schema: String,
    view: String,
    base_schema: String,
    base: String,
    column: String,
}

/// Views inherit the foreign keys of the base-table columns they show:
/// a key whose columns a view exposes is copied with the view in the
/// table's place (on either side), so embeds work through views.
fn inherit_view_keys(foreign_keys: &mut Vec<sovra_rest_plan::ForeignKey>, lineage: &[Lineage]) {
    use std::collections::BTreeMap;
    // (view schema, view) -> (base schema, base) -> columns
    type Name = (String, String);
    let mut views: BTreeMap<Name, BTreeMap<Name, Vec<String>>> = BTreeMap::new();
    for row in lineage {
        views
            .entry((row.view_schema.clone(), row.view.clone()))
            .or_default()
            .entry((row.base_schema.clone(), row.base.clone()))
            .or_default()
            .push(row.column.clone());
    }
    let originals = foreign_keys.clone();
    for ((view_schema, view), bases) in &views {
        for ((base_schema, base), columns) in bases {
            let shows = |cols: &[String]| cols.iter().all(|c| columns.contains(c));
            for fk in &originals {
                if &fk.schema == base_schema && &fk.table == base && shows(&fk.columns) {
                    let mut derived = fk.clone();
                    derived.schema.clone_from(view_schema);
                    derived.table.clone_from(view);
                    foreign_keys.push(derived);
                }
                if &fk.ref_schema == base_schema && &fk.ref_table == base && shows(&fk.ref_columns)
                {
                    let mut derived = fk.clone();
                    derived.ref_schema.clone_from(view_schema);
                    derived.ref_table.clone_from(view);
                    foreign_keys.push(derived);
                }
            }
        }
    }
}

const LOAD_ROUTINES: &str = "
select n.nspname::text, p.proname::text, p.provolatile::text, p.proretset, p.pronargdefaults::int,
       (select coalesce(json_agg(json_build_object(
                 'name', coalesce(p.proargnames[a.ord], ''),
                 'type_schema', tn.nspname, 'type_name', t.typname,
                 'type_display', format_type(t.oid, null),
                 'mode', coalesce(p.proargmodes[a.ord]::text, 'i')) order by a.ord), '[]')
          from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) with ordinality a(typ, ord)
          join pg_type t on t.oid = a.typ
          join pg_namespace tn on tn.oid = t.typnamespace)::text,
       rt.typname::text, rtn.nspname::text, rt.typtype::text,
       (select coalesce(json_agg(json_build_object(
                 'name', ca.attname, 'type_schema', ctn.nspname, 'type_name', ct.typname,
                 'array_schema', can.nspname, 'array_name', cat.typname)
               order by ca.attnum), '[]')
          from pg_attribute ca
          join pg_type ct on ct.oid = ca.atttypid
          join pg_namespace ctn on ctn.oid = ct.typnamespace
          left join pg_type cat on cat.oid = ct.typarray
          left join pg_namespace can on can.oid = cat.typnamespace
          where ca.attrelid = rt.typrelid and ca.attnum > 0 and not ca.attisdropped)::text,
       p.prorows = 1
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type rt on rt.oid = p.prorettype
join pg_namespace rtn on rtn.oid = rt.typnamespace
where n.nspname = any($1) and p.prokind = 'f'
  and rt.typname not in ('trigger', 'event_trigger')
order by p.oid";

fn column_of(c: &Value) -> Column {
    Column {
        name: text(c, "name"),
        type_name: TypeName::new(&text(c, "type_schema"), &text(c, "type_name")),
        array_type: c
            .get("array_name")
            .and_then(Value::as_str)
            .map(|array| TypeName::new(&text(c, "array_schema"), array)),
        nullable: c.get("nullable").and_then(Value::as_bool).unwrap_or(true),
        has_default: c
            .get("has_default")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        default_expr: c
            .get("default_expr")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

fn routine_of(row: &tokio_postgres::Row) -> Routine {
    let args: Vec<Value> = serde_json::from_str(&row.get::<_, String>(5)).unwrap_or_default();
    let defaults = usize::try_from(row.get::<_, i32>(4)).unwrap_or(0);
    let inputs: Vec<&Value> = args
        .iter()
        .filter(|a| matches!(a.get("mode").and_then(Value::as_str), Some("i" | "b" | "v")))
        .collect();
    let first_default = inputs.len().saturating_sub(defaults);
    let params = inputs
        .iter()
        .enumerate()
        .map(|(i, a)| RoutineParam {
            name: text(a, "name"),
            type_name: TypeName::new(&text(a, "type_schema"), &text(a, "type_name")),
            type_display: text(a, "type_display"),
            has_default: i >= first_default,
            variadic: a.get("mode").and_then(Value::as_str) == Some("v"),
        })
        .collect();
    let outputs: Vec<Column> = args
        .iter()
        .filter(|a| matches!(a.get("mode").and_then(Value::as_str), Some("o" | "b" | "t")))
        .map(column_of)
        .collect();
    let type_name: String = row.get(6);
    let type_schema: String = row.get(7);
    let type_type: String = row.get(8);
    let composite: Vec<Value> = serde_json::from_str(&row.get::<_, String>(9)).unwrap_or_default();
    let return_type = (type_type == "c").then(|| TypeName::new(&type_schema, &type_name));
    let returns = if type_name == "void" {
        ReturnShape::Void
    } else if type_type == "c" {
        ReturnShape::Rows(composite.iter().map(column_of).collect())
    } else if type_name == "record" && !outputs.is_empty() {
        ReturnShape::Rows(outputs)
    } else {
        ReturnShape::Scalar(TypeName::new(&type_schema, &type_name))
    };
    Routine {
        schema: row.get(0),
        name: row.get(1),
        params,
        returns,
        returns_set: row.get(3),
        return_type,
        single_row: row.get(10),
        volatility: match row.get::<_, String>(2).as_str() {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            _ => Volatility::Volatile,
        },
    }
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Reads every relation of `schemas`.
///
/// The relation, foreign key and routine queries go out at once (the
/// driver pipelines them on the one connection), so a cold tenant's first
/// load costs one round trip for their preparation and one for their rows
/// instead of six in a row. The view lineage query, by far the costliest to
/// plan on a new connection (an eight-way join of catalogues), runs only
/// when the schemas have a view or materialized view.
pub async fn load(
    client: &tokio_postgres::Client,
    schemas: &[String],
) -> Result<SchemaCache, tokio_postgres::Error> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&schemas];
    let (rows, key_rows, routine_rows, setting_rows) = tokio::try_join!(
        client.query(LOAD_RELATIONS, &params),
        client.query(LOAD_FOREIGN_KEYS, &params),
        client.query(LOAD_ROUTINES, &params),
        client.query(sovra_pg::ROLE_SETTINGS_SQL, &[]),
    )?;
    let mut relations = BTreeMap::new();
    for row in rows {
        let schema: String = row.get(0);
        let name: String = row.get(1);
        let kind = match row.get::<_, String>(2).as_str() {
            "v" => RelationKind::View,
            "m" => RelationKind::MaterializedView,
            "f" => RelationKind::ForeignTable,
            "p" => RelationKind::PartitionedTable,
            _ => RelationKind::Table,
        };
        let columns_json: Value =
            serde_json::from_str(&row.get::<_, String>(3)).unwrap_or_default();
        let columns = columns_json
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(column_of)
            .collect();
        let primary_key: Vec<String> =
            serde_json::from_str(&row.get::<_, String>(4)).unwrap_or_default();
        let updatable: i32 = row.get(5);
        let unique_keys: Vec<Vec<String>> =
            serde_json::from_str(&row.get::<_, String>(6)).unwrap_or_default();
        let relation = Relation {
            schema: schema.clone(),
            name: name.clone(),
            kind,
            columns,
            primary_key,
            unique_keys,
            insertable: updatable & 8 != 0,
            updatable: updatable & 4 != 0,
            deletable: updatable & 16 != 0,
        };
        relations.insert((schema, name), relation);
    }
    let foreign_keys: Vec<sovra_rest_plan::ForeignKey> = key_rows
        .iter()
        .map(|row| sovra_rest_plan::ForeignKey {
            name: row.get(0),
            schema: row.get(1),
            table: row.get(2),
            columns: serde_json::from_str(&row.get::<_, String>(3)).unwrap_or_default(),
            ref_schema: row.get(4),
            ref_table: row.get(5),
            ref_columns: serde_json::from_str(&row.get::<_, String>(6)).unwrap_or_default(),
        })
        .collect();
    let mut foreign_keys = foreign_keys;
    let has_views = relations.values().any(|relation: &Relation| {
        matches!(
            relation.kind,
            RelationKind::View | RelationKind::MaterializedView
        )
    });
    let lineage_rows = if has_views {
        client.query(LOAD_VIEW_COLUMNS, &params).await?
    } else {
        Vec::new()
    };
    let lineage: Vec<Lineage> = lineage_rows
        .iter()
        .map(|row| Lineage {
            view_schema: row.get(0),
            view: row.get(1),
            base_schema: row.get(2),
            base: row.get(3),
            column: row.get(4),
        })
        .collect();
    inherit_view_keys(&mut foreign_keys, &lineage);
    let routines = routine_rows.iter().map(routine_of).collect();
    Ok(SchemaCache {
        relations,
        foreign_keys,
        routines,
        role_settings: role_settings(
            setting_rows
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2))),
        ),
    })
}

/// Role settings by role from rows of [`sovra_pg::ROLE_SETTINGS_SQL`]
/// (role, setting, value; a later row replaces an earlier one's value).
fn role_settings<'a>(
    rows: impl Iterator<Item = (String, &'a str, String)>,
) -> BTreeMap<String, [Option<String>; 5]> {
    let mut settings: BTreeMap<String, [Option<String>; 5]> = BTreeMap::new();
    for (role, name, value) in rows {
        if let Some(at) = sovra_pg::ROLE_SETTING_NAMES.iter().position(|n| *n == name) {
            settings.entry(role).or_default()[at] = Some(value);
        }
    }
    settings
}

/// The current schema cache, swapped whole on reload so that requests in
/// flight keep the one they started with.
#[derive(Debug, Default)]
pub struct CacheCell {
    current: RwLock<Option<Arc<SchemaCache>>>,
}

impl CacheCell {
    pub fn get(&self) -> Option<Arc<SchemaCache>> {
        self.current.read().ok().and_then(|guard| guard.clone())
    }

    pub fn set(&self, cache: SchemaCache) {
        if let Ok(mut guard) = self.current.write() {
            *guard = Some(Arc::new(cache));
        }
    }
}

/// Loads the cache into `cell`, then listens for reload notifications for
/// as long as the task runs, reconnecting when the connection drops.
pub async fn keep_fresh(
    cell: Arc<CacheCell>,
    config: tokio_postgres::Config,
    schemas: Vec<String>,
    loaded: tokio::sync::watch::Sender<bool>,
) {
    loop {
        match listen_once(&cell, &config, &schemas, &loaded).await {
            Ok(()) => tracing::info!("schema cache listener closed; reconnecting"),
            Err(err) => tracing::warn!(error = %err, "schema cache listener failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(
    cell: &CacheCell,
    config: &tokio_postgres::Config,
    schemas: &[String],
    loaded: &tokio::sync::watch::Sender<bool>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(note))) => {
                    if tx.send(note.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    // Load after LISTEN, so that no change between the two is missed:
    // both go out at once, LISTEN first (the driver sends requests in the
    // order they are first polled, and PostgreSQL runs them in order).
    let ((), cache) =
        tokio::try_join!(client.batch_execute("LISTEN pgrst"), load(&client, schemas))?;
    tracing::info!(relations = cache.relations.len(), "schema cache loaded");
    cell.set(cache);
    let _ = loaded.send(true);
    while let Some(payload) = rx.recv().await {
        // `reload config` (what Supabase's docs send after `ALTER ROLE …
        // SET statement_timeout`): the role settings are part of the cache.
        if payload.is_empty() || payload == "reload schema" || payload == "reload config" {
            // Coalesce a burst of DDL into one reload.
            while rx.try_recv().is_ok() {}
            let cache = load(&client, schemas).await?;
            tracing::info!(relations = cache.relations.len(), "schema cache reloaded");
            cell.set(cache);
        }
    }
    driver.abort();
    Ok(())
}
