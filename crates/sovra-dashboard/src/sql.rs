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
    as_service_role(pool, sql, params, true).await
}

/// Runs one statement that returns a single JSON value, as `service_role`
/// in the request transaction: read-only and rolled back, or committed.
async fn as_service_role(
    pool: &sovra_pg::Pool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    read_only: bool,
) -> Result<Value, SqlError> {
    let mut conn = one_use(pool).await?;
    let outcome = async {
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = sovra_pg::begin_request(client, &context(), read_only)
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
        if read_only {
            tx.rollback().await
        } else {
            tx.commit().await
        }
        .map_err(|err| SqlError::of(&err))?;
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

/// What a change of a table's row-level security came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Owned {
    Done,
    /// There is no such table.
    NoTable,
}

/// Runs `statements` (DDL the dashboard built, see [`crate::ddl`]) on the
/// tenant's administrative login, in one transaction, as the owner of
/// `schema`.`table` (`SET LOCAL ROLE`): PostgreSQL decides what that role
/// may do, and a statement that names another table gets no more than
/// the owner may. Each statement goes through the extended protocol, so
/// one string is one statement.
pub async fn as_owner(
    admin: &tokio_postgres::Config,
    schema: &str,
    table: &str,
    statements: &[String],
) -> Result<Owned, SqlError> {
    let mut client = sovra_pg::connect_one(admin)
        .await
        .map_err(|err| SqlError::other(format!("no database connection: {err}")))?;
    let tx = client
        .transaction()
        .await
        .map_err(|err| SqlError::of(&err))?;
    let owner = tx
        .query_opt(
            "select pg_catalog.pg_get_userbyid(c.relowner)::text
               from pg_catalog.pg_class c
              where c.oid = pg_catalog.to_regclass(quote_ident($1) || '.' || quote_ident($2))",
            &[&schema, &table],
        )
        .await
        .map_err(|err| SqlError::of(&err))?;
    let Some(owner) = owner else {
        return Ok(Owned::NoTable);
    };
    let owner: String = owner.get(0);
    let role = crate::ddl::quote_ident(&owner).map_err(|err| SqlError::other(err.0))?;
    tx.batch_execute(&format!(
        "set local role {role}; set local statement_timeout = '15s'; set local lock_timeout = '5s'"
    ))
    .await
    .map_err(|err| SqlError::of(&err))?;
    for statement in statements {
        tx.execute(statement.as_str(), &[])
            .await
            .map_err(|err| SqlError::of(&err))?;
    }
    tx.commit().await.map_err(|err| SqlError::of(&err))?;
    Ok(Owned::Done)
}

/// The claims of user `id` as Auth puts them in an access token, read as
/// `service_role`; `Null` when there is no such (undeleted) user.
const USER_CLAIMS_SQL: &str = "select (select json_build_object(
    'sub', u.id,
    'aud', coalesce(nullif(u.aud, ''), 'authenticated'),
    'role', coalesce(nullif(u.role, ''), 'authenticated'),
    'email', coalesce(u.email, ''),
    'phone', coalesce(u.phone, ''),
    'app_metadata', coalesce(u.raw_app_meta_data, '{}'::jsonb),
    'user_metadata', coalesce(u.raw_user_meta_data, '{}'::jsonb),
    'is_anonymous', coalesce(u.is_anonymous, false))
  from auth.users u where u.id = $1 and u.deleted_at is null)";

/// Rows of a table "test as user" shows at most.
pub const AS_USER_ROWS: i64 = 100;

/// "Test as user": reads `schema`.`table` as user `id` would through
/// `/rest/v1`, in the same request transaction (the user's role and
/// claims, `request.jwt.claims`, read-only), so its policies decide which
/// rows come back. `None` when there is no such user.
pub async fn as_user(
    pool: &sovra_pg::Pool,
    schema: &str,
    table: &str,
    id: uuid::Uuid,
    now: u64,
) -> Result<Option<Value>, SqlError> {
    let select = crate::ddl::as_user_sql(schema, table).map_err(|err| SqlError::other(err.0))?;
    let Value::Object(mut claims) = catalog(pool, USER_CLAIMS_SQL, &[&id]).await? else {
        return Ok(None);
    };
    claims.insert("iat".to_owned(), json!(now));
    claims.insert("exp".to_owned(), json!(now + 60));
    claims.insert("aal".to_owned(), json!("aal1"));
    claims.insert(
        "amr".to_owned(),
        json!([{"method": "password", "timestamp": now}]),
    );
    let role = claims["role"]
        .as_str()
        .unwrap_or("authenticated")
        .to_owned();
    let context = sovra_pg::RequestContext {
        role,
        claims: claims.clone(),
        method: "GET".to_owned(),
        path: format!("/{table}"),
        headers: Map::new(),
        search_path: None,
    };
    let mut conn = one_use(pool).await?;
    let outcome = async {
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = sovra_pg::begin_request(client, &context, true)
            .await
            .map_err(|err| SqlError::of(&err))?;
        tx.batch_execute("set local statement_timeout = '15s'")
            .await
            .map_err(|err| SqlError::of(&err))?;
        let row = tx
            .query_one(select.as_str(), &[&AS_USER_ROWS])
            .await
            .map_err(|err| SqlError::of(&err))?;
        let mut value: Value = row.get(0);
        tx.rollback().await.map_err(|err| SqlError::of(&err))?;
        value["claims"] = Value::Object(claims);
        Ok(Some(value))
    }
    .await;
    discard(conn);
    outcome
}

const SESSIONS_SQL: &str = "select coalesce(json_agg(json_build_object(
    'id', s.id, 'created_at', s.created_at, 'updated_at', s.updated_at,
    'refreshed_at', s.refreshed_at, 'not_after', s.not_after, 'aal', s.aal,
    'user_agent', s.user_agent, 'ip', host(s.ip))
    order by s.created_at desc), '[]'::json)
  from auth.sessions s where s.user_id = $1";

/// The sessions of user `id`, newest first.
pub async fn sessions(pool: &sovra_pg::Pool, id: uuid::Uuid) -> Result<Value, SqlError> {
    catalog(pool, SESSIONS_SQL, &[&id]).await
}

const END_SESSIONS_SQL: &str = "with ended as (
    delete from auth.sessions where user_id = $1 and ($2::uuid is null or id = $2) returning 1)
  select to_json(count(*)) from ended";

/// Ends session `session` of user `id` (every session of the user when
/// `None`), as Auth's sign-out does: the session and its refresh tokens
/// are deleted. Returns how many ended.
pub async fn end_sessions(
    pool: &sovra_pg::Pool,
    id: uuid::Uuid,
    session: Option<uuid::Uuid>,
) -> Result<u64, SqlError> {
    let ended = as_service_role(pool, END_SESSIONS_SQL, &[&id, &session], false).await?;
    Ok(ended.as_u64().unwrap_or(0))
}

/// Runs one fixed statement that returns a single JSON value on the
/// tenant's administrative login, in a transaction that is committed:
/// the Jobs page's reads and actions, whose statements are constants of
/// this crate and whose values are all bound.
async fn as_admin(
    admin: &tokio_postgres::Config,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Value, SqlError> {
    let mut client = sovra_pg::connect_one(admin)
        .await
        .map_err(|err| SqlError::other(format!("no database connection: {err}")))?;
    let tx = client
        .transaction()
        .await
        .map_err(|err| SqlError::of(&err))?;
    tx.batch_execute("set local statement_timeout = '15s'; set local lock_timeout = '5s'")
        .await
        .map_err(|err| SqlError::of(&err))?;
    let row = tx
        .query_one(sql, params)
        .await
        .map_err(|err| SqlError::of(&err))?;
    let value: Option<Value> = row.get(0);
    tx.commit().await.map_err(|err| SqlError::of(&err))?;
    Ok(value.unwrap_or(Value::Null))
}

/// Queues with their metrics, cron jobs with their last runs, and the
/// webhooks' (pg_net's) queue, recent responses and dead letters.
const JOBS_SQL: &str = "select json_build_object(
  'queues', (select coalesce(json_agg(json_build_object(
       'name', q.queue_name, 'created_at', q.created_at,
       'length', m.queue_length, 'total', m.total_messages,
       'oldest_age', m.oldest_msg_age_sec, 'newest_age', m.newest_msg_age_sec)
       order by q.queue_name), '[]'::json)
     from pgmq.list_queues() q cross join lateral pgmq.metrics(q.queue_name) m),
  'cron', (select coalesce(json_agg(json_build_object(
       'jobid', j.jobid, 'jobname', j.jobname, 'schedule', j.schedule, 'command', j.command,
       'username', j.username, 'active', j.active,
       'runs', (select coalesce(json_agg(json_build_object(
                  'runid', d.runid, 'status', d.status, 'return_message', d.return_message,
                  'start_time', d.start_time, 'end_time', d.end_time) order by d.start_time desc), '[]'::json)
                  from (select * from cron.job_run_details d where d.jobid = j.jobid
                        order by d.start_time desc nulls last limit 5) d))
       order by j.jobid), '[]'::json)
     from cron.job j),
  'webhooks', json_build_object(
     'queued', (select count(*) from net.http_request_queue),
     'responses', (select coalesce(json_agg(json_build_object(
          'id', r.id, 'status_code', r.status_code, 'timed_out', r.timed_out,
          'error_msg', r.error_msg, 'created', r.created) order by r.created desc), '[]'::json)
        from (select * from net._http_response order by created desc limit 20) r),
     'dead', (select coalesce(json_agg(json_build_object(
          'id', d.id, 'method', d.method, 'url', d.url, 'attempts', d.attempts,
          'last_error', d.last_error, 'failed_at', d.failed_at) order by d.failed_at desc), '[]'::json)
        from (select * from net.http_request_dead order by failed_at desc limit 50) d)))";

/// What the Jobs page shows (see [`JOBS_SQL`]).
pub async fn jobs(admin: &tokio_postgres::Config) -> Result<Value, SqlError> {
    as_admin(admin, JOBS_SQL, &[]).await
}

/// Creates queue `name` (pgmq checks the name).
pub async fn create_queue(admin: &tokio_postgres::Config, name: &str) -> Result<Value, SqlError> {
    as_admin(
        admin,
        "select to_json($1::text) from pgmq.create($1)",
        &[&name],
    )
    .await
}

/// Sends `message` to queue `name`, visible after `delay` seconds; its id.
pub async fn send_message(
    admin: &tokio_postgres::Config,
    name: &str,
    message: &Value,
    delay: i32,
) -> Result<Value, SqlError> {
    as_admin(
        admin,
        "select to_json(id) from pgmq.send($1, $2::jsonb, $3) as t(id)",
        &[&name, &message, &delay],
    )
    .await
}

/// Reads up to `qty` messages of queue `name`, hiding them for `vt`
/// seconds (pgmq's read: they come back unless deleted).
pub async fn read_messages(
    admin: &tokio_postgres::Config,
    name: &str,
    vt: i32,
    qty: i32,
) -> Result<Value, SqlError> {
    as_admin(
        admin,
        "select coalesce(json_agg(r), '[]'::json) from pgmq.read($1, $2, $3) r",
        &[&name, &vt, &qty],
    )
    .await
}

/// Puts dead letters back in the webhooks' queue (all of them when `ids`
/// is `None`); how many.
pub async fn replay_dead_letters(
    admin: &tokio_postgres::Config,
    ids: Option<Vec<i64>>,
) -> Result<Value, SqlError> {
    as_admin(
        admin,
        "select to_json(net.replay_dead_letters($1))",
        &[&ids],
    )
    .await
}
