//! What the dashboard asks a tenant's database directly: the SQL editor's
//! statements and the catalog (tables with row counts, a table's columns,
//! key and policies). Everything runs on the tenant's own request pool
//! (its login may connect to its database only) inside the request
//! transaction as `service_role`, never as a superuser; PostgreSQL decides
//! what that role may do.

use serde::Serialize;
use serde_json::{Map, Value, json};
use sovra_pg::tokio_postgres::{self, SimpleQueryMessage};

/// Rows of one result set returned to the browser at most.
pub const MAX_ROWS: usize = 1000;

/// An error as the SQL editor shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SqlError {
    pub message: String,
    /// SQLSTATE, when PostgreSQL answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// 1-based character position in the statement text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl SqlError {
    pub fn other(message: impl Into<String>) -> SqlError {
        SqlError {
            message: message.into(),
            code: None,
            position: None,
            detail: None,
            hint: None,
        }
    }

    fn of(err: &tokio_postgres::Error) -> SqlError {
        match err.as_db_error() {
            Some(db) => SqlError {
                message: db.message().to_owned(),
                code: Some(db.code().code().to_owned()),
                position: match db.position() {
                    Some(tokio_postgres::error::ErrorPosition::Original(at)) => Some(*at),
                    _ => None,
                },
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
            },
            None => SqlError::other(err.to_string()),
        }
    }
}

/// One result set of the SQL editor.
#[derive(Debug, Default, Serialize)]
pub struct ResultSet {
    pub columns: Vec<String>,
    /// Values as PostgreSQL's text output (`null` for NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows the statement returned or affected.
    pub row_count: u64,
    /// More rows than [`MAX_ROWS`] were returned; the rest are not shown.
    pub truncated: bool,
}

fn context() -> sovra_pg::RequestContext {
    let mut claims = Map::new();
    claims.insert("role".to_owned(), json!("service_role"));
    sovra_pg::RequestContext {
        role: "service_role".to_owned(),
        claims,
        method: "POST".to_owned(),
        path: "/_/".to_owned(),
        headers: Map::new(),
        search_path: None,
    }
}

/// A connection of `pool` that is closed after use instead of going back
/// to the pool: the editor's SQL may change session state (`COMMIT`, `SET
/// SESSION`, `LISTEN`) that must not reach a later request.
async fn one_use(pool: &sovra_pg::Pool) -> Result<deadpool_postgres::Object, SqlError> {
    pool.get()
        .await
        .map_err(|err| SqlError::other(format!("no database connection: {err}")))
}

fn discard(conn: deadpool_postgres::Object) {
    drop(deadpool_postgres::Object::take(conn));
}

/// Runs `sql` (one or more statements) as `service_role` in one
/// transaction, committed when every statement succeeded and rolled back
/// otherwise.
pub async fn run(pool: &sovra_pg::Pool, sql: &str) -> Result<Vec<ResultSet>, SqlError> {
    let mut conn = one_use(pool).await?;
    let outcome = async {
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = sovra_pg::begin_request(client, &context(), false)
            .await
            .map_err(|err| SqlError::of(&err))?;
        tx.batch_execute("set local statement_timeout = '60s'")
            .await
            .map_err(|err| SqlError::of(&err))?;
        let messages = tx
            .simple_query(sql)
            .await
            .map_err(|err| SqlError::of(&err))?;
        tx.commit().await.map_err(|err| SqlError::of(&err))?;
        Ok(collect(messages))
    }
    .await;
    discard(conn);
    outcome
}

fn collect(messages: Vec<SimpleQueryMessage>) -> Vec<ResultSet> {
    let mut sets = Vec::new();
    let mut current: Option<ResultSet> = None;
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                current = Some(ResultSet {
                    columns: columns.iter().map(|c| c.name().to_owned()).collect(),
                    ..ResultSet::default()
                });
            }
            SimpleQueryMessage::Row(row) => {
                let set = current.get_or_insert_with(|| ResultSet {
                    columns: row.columns().iter().map(|c| c.name().to_owned()).collect(),
                    ..ResultSet::default()
                });
                if set.rows.len() < MAX_ROWS {
                    set.rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    );
                } else {
                    set.truncated = true;
                }
            }
            SimpleQueryMessage::CommandComplete(count) => {
                let mut set = current.take().unwrap_or_default();
                set.row_count = count;
                sets.push(set);
            }
            _ => {}
        }
    }
    sets
}

/// Runs one catalog query that returns a single JSON value, as
/// `service_role`, read-only.
async fn catalog(
    pool: &sovra_pg::Pool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Value, SqlError> {
    let mut conn = one_use(pool).await?;
    let outcome = async {
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = sovra_pg::begin_request(client, &context(), true)
            .await
            .map_err(|err| SqlError::of(&err))?;
        tx.batch_execute("set local statement_timeout = '15s'")
            .await
            .map_err(|err| SqlError::of(&err))?;
        let row = tx
            .query_one(sql, params)
            .await
            .map_err(|err| SqlError::of(&err))?;
        let value: Option<Value> = row.get(0);
        tx.rollback().await.map_err(|err| SqlError::of(&err))?;
        Ok(value.unwrap_or(Value::Null))
    }
    .await;
    discard(conn);
    outcome
}

/// Relations at most this big (by the planner's estimate) are counted
/// exactly; bigger ones show the estimate.
const EXACT_COUNT_UP_TO: f32 = 100_000.0;

const TABLES_SQL: &str = "select coalesce(json_agg(t order by t.schema, t.name), '[]'::json) from (
  select n.nspname as schema, c.relname as name,
         case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                        when 'f' then 'foreign table' else 'table' end as kind,
         c.relrowsecurity as rls,
         case when c.relkind not in ('r', 'p', 'm') or not has_table_privilege(c.oid, 'select') then null
              when c.reltuples > $1 then c.reltuples::bigint
              else (xpath('/row/n/text()', query_to_xml(
                      format('select count(*) as n from %I.%I', n.nspname, c.relname),
                      false, true, '')))[1]::text::bigint
         end as rows,
         c.relkind in ('r', 'p', 'm') and c.reltuples > $1 as estimated
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.relkind in ('r', 'p', 'v', 'm', 'f')
     and n.nspname not in ('pg_catalog', 'information_schema')
     and n.nspname not like 'pg\\_%'
     and has_schema_privilege(n.oid, 'usage')
) t";

/// The schemas, tables and views `service_role` may use, with row counts
/// (exact up to 100,000 rows; `null` for views and relations it may not
/// read).
pub async fn tables(pool: &sovra_pg::Pool) -> Result<Value, SqlError> {
    catalog(pool, TABLES_SQL, &[&EXACT_COUNT_UP_TO]).await
}

const TABLE_SQL: &str = "with rel as (
  select to_regclass(quote_ident($1) || '.' || quote_ident($2)) as oid
)
select case when rel.oid is null then null else json_build_object(
  'schema', $1::text, 'name', $2::text,
  'kind', (select case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                                 when 'f' then 'foreign table' else 'table' end
             from pg_catalog.pg_class c where c.oid = rel.oid),
  'rls', (select c.relrowsecurity from pg_catalog.pg_class c where c.oid = rel.oid),
  'columns', (select coalesce(json_agg(json_build_object(
       'name', a.attname,
       'type', format_type(a.atttypid, a.atttypmod),
       'base', coalesce(et.typname, t.typname),
       'array', t.typcategory = 'A',
       'nullable', not a.attnotnull,
       'default', pg_get_expr(d.adbin, d.adrelid),
       'identity', a.attidentity <> '',
       'generated', a.attgenerated <> '',
       'enum', (select json_agg(e.enumlabel order by e.enumsortorder)
                  from pg_catalog.pg_enum e where e.enumtypid = a.atttypid)
     ) order by a.attnum), '[]'::json)
     from pg_catalog.pg_attribute a
     join pg_catalog.pg_type t on t.oid = a.atttypid
     left join pg_catalog.pg_type et on et.oid = t.typelem and t.typcategory = 'A'
     left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where a.attrelid = rel.oid and a.attnum > 0 and not a.attisdropped),
  'primary_key', (select coalesce(json_agg(a.attname order by k.ord), '[]'::json)
     from pg_catalog.pg_index i
     cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
     join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = rel.oid and i.indisprimary),
  'policies', (select coalesce(json_agg(json_build_object(
       'name', p.policyname, 'command', p.cmd, 'permissive', p.permissive,
       'roles', p.roles, 'using', p.qual, 'check', p.with_check) order by p.policyname), '[]'::json)
     from pg_catalog.pg_policies p where p.schemaname = $1 and p.tablename = $2)
) end from rel";

/// Table `schema`.`name`: kind, columns with their types, defaults and
/// enum labels, primary key, whether RLS is on, and its policies; `Null`
/// when there is no such relation.
pub async fn table(pool: &sovra_pg::Pool, schema: &str, name: &str) -> Result<Value, SqlError> {
    catalog(pool, TABLE_SQL, &[&schema, &name]).await
}
