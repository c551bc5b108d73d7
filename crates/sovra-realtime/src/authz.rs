//! Private channels: RLS policies on `realtime.messages` decide, as on
//! Supabase. Every check runs in a transaction that is rolled back, with
//! `realtime.topic` set to the sub-topic (what `realtime.topic()` reads).
//!
//! - read: probe rows for each extension are inserted as `service_role`,
//!   then the caller's role selects them; the visible ones are readable;
//! - write: the caller's role inserts a row; success means allowed.

use serde_json::Map;
use sovra_pg::RequestContext;
use sovra_pg::tokio_postgres::types::{ToSql, Type};

use sovra_pg::Pool;

use crate::principal::Principal;

fn context(principal: &Principal, topic: &str) -> RequestContext {
    let mut headers = Map::new();
    headers.insert(
        "x-realtime-topic".to_owned(),
        serde_json::Value::String(topic.to_owned()),
    );
    RequestContext {
        role: principal.role.clone(),
        claims: principal.claims.clone(),
        method: "POST".to_owned(),
        path: "/realtime/v1".to_owned(),
        headers,
        search_path: None,
    }
}

/// Which of `extensions` (`broadcast`, `presence`) the caller may read
/// on `topic` (the sub-topic, without `realtime:`).
pub(crate) async fn can_read(
    pool: &Pool,
    principal: &Principal,
    topic: &str,
    extensions: &[&str],
) -> Result<Vec<String>, String> {
    if principal.is_service() {
        return Ok(extensions.iter().map(|e| (*e).to_owned()).collect());
    }
    let mut client = pool.get().await.map_err(|err| err.to_string())?;
    let service = Principal {
        role: "service_role".to_owned(),
        claims: {
            let mut claims = Map::new();
            claims.insert("role".to_owned(), "service_role".into());
            claims
        },
    };
    let tx = sovra_pg::begin_request(&mut client, &context(&service, topic), false)
        .await
        .map_err(|err| err.to_string())?;
    let extensions: Vec<String> = extensions.iter().map(|e| (*e).to_owned()).collect();
    let probes = tx
        .query(
            "insert into realtime.messages (topic, extension, event, private)
             select $1, e, 'sovra.authorization', true from unnest($2::text[]) e
             returning id",
            &[&topic, &extensions],
        )
        .await
        .map_err(|err| err.to_string())?;
    let ids: Vec<uuid::Uuid> = probes.iter().map(|r| r.get(0)).collect();
    let params = sovra_pg::prologue_params(&context(principal, topic));
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    tx.query_typed(sovra_pg::PROLOGUE_SQL, &typed)
        .await
        .map_err(|err| err.to_string())?;
    tx.execute("select set_config('realtime.topic', $1, true)", &[&topic])
        .await
        .map_err(|err| err.to_string())?;
    let visible = match tx
        .query(
            "select extension from realtime.messages where id = any($1)",
            &[&ids],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        Err(err) if err.code().map(|c| c.code()) == Some("42501") => Vec::new(),
        Err(err) => return Err(err.to_string()),
    };
    let _ = tx.rollback().await;
    Ok(visible)
}

/// Whether the caller may write `extension` messages to `topic`.
pub(crate) async fn can_write(
    pool: &Pool,
    principal: &Principal,
    topic: &str,
    extension: &str,
) -> Result<bool, String> {
    if principal.is_service() {
        return Ok(true);
    }
    let mut client = pool.get().await.map_err(|err| err.to_string())?;
    let tx = sovra_pg::begin_request(&mut client, &context(principal, topic), false)
        .await
        .map_err(|err| err.to_string())?;
    tx.execute("select set_config('realtime.topic', $1, true)", &[&topic])
        .await
        .map_err(|err| err.to_string())?;
    let allowed = match tx
        .execute(
            "insert into realtime.messages (topic, extension, event, private)
             values ($1, $2, 'sovra.authorization', true)",
            &[&topic, &extension],
        )
        .await
    {
        Ok(_) => true,
        Err(err) if err.code().map(|c| c.code()) == Some("42501") => false,
        Err(err) => return Err(err.to_string()),
    };
    let _ = tx.rollback().await;
    Ok(allowed)
}

/// A broadcast stored in `realtime.messages`, as a replay sends it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) id: String,
    pub(crate) event: String,
    /// The JSON payload (`realtime.send`), as text.
    pub(crate) payload: Option<String>,
    /// The raw payload (`realtime.send_binary`).
    pub(crate) binary: Option<Vec<u8>>,
}

/// The broadcasts stored for the private `topic` since `since_ms`
/// (milliseconds since the Unix epoch), the latest `limit`, oldest first:
/// what `config.broadcast.replay` sends, as Supabase does. Read as the
/// caller, with `realtime.topic()` set, so that the table's policies decide
/// row by row.
pub(crate) async fn replay(
    pool: &Pool,
    principal: &Principal,
    topic: &str,
    since_ms: i64,
    limit: i64,
) -> Result<Vec<Stored>, String> {
    let mut client = pool.get().await.map_err(|err| err.to_string())?;
    let tx = sovra_pg::begin_request(&mut client, &context(principal, topic), true)
        .await
        .map_err(|err| err.to_string())?;
    tx.execute("select set_config('realtime.topic', $1, true)", &[&topic])
        .await
        .map_err(|err| err.to_string())?;
    // `inserted_at` is a timestamp without time zone, written by now() in
    // the session's time zone.
    let since = since_ms as f64 / 1000.0;
    let rows = tx
        .query(
            "select id::text, coalesce(event, ''), payload::text, binary_payload from (
               select id, event, payload, binary_payload, inserted_at from realtime.messages
               where topic = $1 and private and extension = 'broadcast'
                 and inserted_at >= (to_timestamp($2) at time zone current_setting('TimeZone'))
               order by inserted_at desc limit $3) m
             order by inserted_at",
            &[&topic, &since, &limit],
        )
        .await
        .map_err(|err| err.to_string())?;
    let _ = tx.rollback().await;
    Ok(rows
        .iter()
        .map(|row| Stored {
            id: row.get(0),
            event: row.get(1),
            payload: row.get(2),
            binary: row.get(3),
        })
        .collect())
}
