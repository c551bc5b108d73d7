//! The transactional outbox's publisher: events that `sovra.outbox_send`
//! wrote in committed transactions go to every destination of their topic
//! (`sovra.outbox_destinations`), then leave the outbox, all in one
//! transaction:
//!
//! - `realtime`: `realtime.send(payload, <topic>, <target>, <private>)`, so
//!   the broadcast reaches subscribers of the target topic through the
//!   change feed exactly when (and only if) the publishing transaction
//!   commits;
//! - `http`: a `POST` of `{"id","topic","payload"}` queued in
//!   `net.http_request_queue`, delivered (and retried) by the worker;
//! - `nats`: published to the subject (with a `Nats-Msg-Id` header of
//!   `<tenant>:<event id>:<destination id>`) and flushed before the
//!   transaction commits: at least once, a duplicate only if the commit
//!   fails after the flush.
//!
//! One publisher per database at a time (a transaction-level advisory
//! lock), events in id order; `sovra.outbox_send` serialises the senders
//! of one topic until they commit, so within a topic ids follow commit
//! order and so does publishing.

use std::sync::Arc;
use std::time::Duration;

use sovra_pg::tokio_postgres;
use tokio::sync::Notify;

use crate::NetSettings;

/// Events published per transaction.
const BATCH: i64 = 500;

/// The advisory lock of the publisher ("sovra_ob").
const LOCK_KEY: i64 = 0x736f_7672_615f_6f62;

const EVENTS: &str = "select id from sovra.outbox order by id limit $1";

const REALTIME: &str = "
    select count(*) from (
      select realtime.send(s.payload, s.topic, s.target, s.private) from (
        select o.payload, o.topic, d.target, d.private
          from sovra.outbox o
          join sovra.outbox_destinations d on d.topic = o.topic or d.topic = '*'
         where o.id = any($1) and d.kind = 'realtime'
         order by o.id, d.id) s) sent";

const HTTP: &str = "
    insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
    select 'POST', d.target, '{\"Content-Type\": \"application/json\"}'::jsonb || d.headers,
           convert_to(jsonb_build_object('id', o.id, 'topic', o.topic, 'payload', o.payload)::text, 'utf8'),
           5000
      from sovra.outbox o
      join sovra.outbox_destinations d on d.topic = o.topic or d.topic = '*'
     where o.id = any($1) and d.kind = 'http'
     order by o.id, d.id";

const NATS: &str = "
    select o.id, d.id, d.target,
           jsonb_build_object('id', o.id, 'topic', o.topic, 'payload', o.payload)::text
      from sovra.outbox o
      join sovra.outbox_destinations d on d.topic = o.topic or d.topic = '*'
     where o.id = any($1) and d.kind = 'nats'
     order by o.id, d.id";

const DELETE: &str = "delete from sovra.outbox where id = any($1)";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error("NATS: {0}")]
    Nats(String),
}

/// Publishes until the task is aborted, reconnecting after errors.
pub(crate) async fn run(settings: Arc<NetSettings>, admin: tokio_postgres::Config) {
    loop {
        if let Err(err) = serve(&settings, &admin).await {
            tracing::warn!(tenant = %settings.tenant, error = %err, "outbox: publishing failed; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve(settings: &NetSettings, admin: &tokio_postgres::Config) -> Result<(), OutboxError> {
    let notify = Arc::new(Notify::new());
    let mut client = sovra_pg::connect_listening(admin, &["sovra_outbox"], notify.clone()).await?;
    let mut nats = None;
    loop {
        if client.is_closed() {
            return Ok(());
        }
        let wait = match publish(&mut client, settings, &mut nats).await? {
            // Nothing pending: every insert notifies, so only a lost
            // notification needs the long look.
            None => IDLE_LOOK,
            Some(published) if published < BATCH as usize => settings.poll_interval,
            Some(_) => continue,
        };
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long the publisher waits, with nothing pending, before it looks
/// again without a notification.
const IDLE_LOOK: Duration = Duration::from_secs(60);

/// Publishes one batch; answers how many events it took, or `None` when
/// the outbox was empty (another publisher holding the lock, or events it
/// could not send, answer `Some(0)`: they are looked at again soon).
pub async fn publish(
    client: &mut tokio_postgres::Client,
    settings: &NetSettings,
    nats: &mut Option<async_nats::Client>,
) -> Result<Option<usize>, OutboxError> {
    // Outside a transaction first: an idle database sees no transaction
    // from the publisher.
    let pending: bool = client
        .query_one("select exists(select 1 from sovra.outbox)", &[])
        .await?
        .get(0);
    if !pending {
        return Ok(None);
    }
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one("select pg_try_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?
        .get(0);
    if !locked {
        return Ok(Some(0));
    }
    let ids: Vec<i64> = tx
        .query(EVENTS, &[&BATCH])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if ids.is_empty() {
        return Ok(Some(0));
    }
    tx.query_one(REALTIME, &[&ids]).await?;
    tx.execute(HTTP, &[&ids]).await?;
    let messages = tx.query(NATS, &[&ids]).await?;
    if !messages.is_empty() {
        match &settings.nats_url {
            Some(url) => {
                if nats.is_none() {
                    *nats = Some(
                        nats_options(url)
                            .connect(url.as_str())
                            .await
                            .map_err(|err| OutboxError::Nats(err.to_string()))?,
                    );
                }
                let Some(connection) = nats.as_ref() else {
                    return Ok(Some(0));
                };
                for row in &messages {
                    let (event, destination): (i64, i64) = (row.get(0), row.get(1));
                    let subject: String = row.get(2);
                    let body: String = row.get(3);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        "Nats-Msg-Id",
                        format!("{}:{event}:{destination}", settings.tenant).as_str(),
                    );
                    connection
                        .publish_with_headers(subject, headers, body.into())
                        .await
                        .map_err(|err| OutboxError::Nats(err.to_string()))?;
                }
                connection
                    .flush()
                    .await
                    .map_err(|err| OutboxError::Nats(err.to_string()))?;
            }
            None => tracing::warn!(
                tenant = %settings.tenant,
                events = messages.len(),
                "outbox: NATS destinations without realtime.nats_url; those messages are dropped"
            ),
        }
    }
    tx.execute(DELETE, &[&ids]).await?;
    tx.commit().await?;
    Ok(Some(ids.len()))
}

/// Connection options with the credentials written in `url`
/// ([`sovra_config::nats_url_credentials`], which the realtime bus reads
/// too): async-nats reads servers from a URL but not their credentials.
fn nats_options(url: &str) -> async_nats::ConnectOptions {
    match sovra_config::nats_url_credentials(url) {
        Some(sovra_config::NatsCredentials::Login { user, password }) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        Some(sovra_config::NatsCredentials::Token(token)) => {
            async_nats::ConnectOptions::with_token(token)
        }
        None => async_nats::ConnectOptions::new(),
    }
}
