//! pg_net's API, database webhooks and the delivery worker against real
//! PostgreSQL and a local HTTP receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sovra_net::{NetService, NetSettings};
use sovra_test_support::TestDb;
use support::{Receiver, wait_for, wait_until};

/// Settings that let requests reach the receiver on 127.0.0.1 and retry
/// quickly.
fn local() -> NetSettings {
    let mut settings = NetSettings::default();
    settings.policy.allow_private = true;
    settings.retry_base = Duration::from_millis(20);
    settings.poll_interval = Duration::from_millis(100);
    settings
}

async fn response(client: &sovra_pg::tokio_postgres::Client, id: i64) -> Value {
    wait_until(
        client,
        &format!("select exists(select 1 from net._http_response where id = {id})"),
    )
    .await;
    client
        .query_one(
            "select to_jsonb(r) from net._http_response r where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn http_post_is_sent_after_commit_and_recorded() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let _net = NetService::start(local(), db.config());
    let client = db.client().await;

    let id: i64 = client
        .query_one(
            "select net.http_post($1, '{\"hello\": \"world\"}'::jsonb, '{\"a\": \"b c\", \"x\": \"ä\"}'::jsonb,
                                  '{\"X-Custom\": \"yes\"}'::jsonb)",
            &[&format!("{}/hook", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let recorded = response(&client, id).await;
    assert_eq!(recorded["status_code"], 200);
    assert_eq!(recorded["content"], r#"{"ok":true}"#);
    assert_eq!(recorded["content_type"], "application/json");
    assert_eq!(recorded["headers"]["x-answer"], "42");
    assert_eq!(recorded["timed_out"], false);
    assert_eq!(recorded["error_msg"], Value::Null);
    let seen = receiver.seen_path("/hook");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/hook?a=b%20c&x=%C3%A4");
    assert_eq!(seen[0].json(), json!({"hello": "world"}));
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert_eq!(seen[0].headers["x-custom"], "yes");
    // Delivered requests leave the queue.
    let queued: i64 = client
        .query_one("select count(*) from net.http_request_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);

    // GET and DELETE, with pg_net's defaults.
    let get: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/get", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let delete: i64 = client
        .query_one(
            "select net.http_delete($1, '{\"k\": \"v\"}')",
            &[&format!("{}/del", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(response(&client, get).await["status_code"], 200);
    assert_eq!(response(&client, delete).await["status_code"], 200);
    assert_eq!(receiver.seen_path("/get")[0].method, "GET");
    assert_eq!(receiver.seen_path("/del")[0].method, "DELETE");
    assert_eq!(receiver.seen_path("/del")[0].uri, "/del?k=v");
}

#[tokio::test]
async fn a_rolled_back_request_is_never_sent() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let _net = NetService::start(local(), db.config());
    let mut client = db.client().await;
    let tx = client.transaction().await.unwrap();
    tx.query_one(
        "select net.http_get($1)",
        &[&format!("{}/rolled-back", receiver.url)],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // A later committed request is delivered; the rolled-back one never.
    let id: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/committed", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    response(&client, id).await;
    assert_eq!(receiver.seen_path("/committed").len(), 1);
    assert!(receiver.seen_path("/rolled-back").is_empty());
}

#[tokio::test]
async fn bad_calls_raise_in_the_callers_transaction() {
    let db = TestDb::new().await;
    let client = db.client().await;
    for (sql, message) in [
        (
            "select net.http_get('ftp://example.com/')",
            "url must start with http",
        ),
        ("select net.http_get(null)", "url must not be null"),
        (
            "select net.http_get('https://example.com/', '[1]')",
            "params must be a JSON object",
        ),
        (
            "select net.http_get('https://example.com/', '{}', '\"x\"')",
            "headers must be a JSON object",
        ),
        (
            "select net.http_post('https://example.com/', '{}', '{}', '{\"Content-Type\": \"text/plain\"}')",
            "Content-Type header must be \"application/json\"",
        ),
        (
            "select net.http_get('https://example.com/', '{}', '{}', 0)",
            "timeout_milliseconds",
        ),
    ] {
        let err = client.query_one(sql, &[]).await.unwrap_err();
        let db_error = err.as_db_error().expect("a database error");
        assert!(
            db_error.message().contains(message)
                || db_error.constraint().is_some_and(|c| c.contains(message)),
            "{sql}: {db_error:?}"
        );
    }
}

#[tokio::test]
async fn api_roles_are_refused_and_the_service_role_is_not() {
    let db = TestDb::new().await;
    let client = db.client().await;
    for role in ["anon", "authenticated"] {
        for sql in [
            "select net.http_get('https://example.com/')",
            "select net.http_post('https://example.com/')",
            "select net.http_delete('https://example.com/')",
            "select count(*) from net._http_response",
            "select count(*) from net.http_request_queue",
            "select net.replay_dead_letters()",
            "select sovra.outbox_send('t', '{}')",
        ] {
            let err = client
                .batch_execute(&format!("begin; set local role {role}; {sql}; commit;"))
                .await
                .unwrap_err();
            client.batch_execute("rollback").await.unwrap();
            assert_eq!(
                err.as_db_error().map(|e| e.code().code()),
                Some("42501"),
                "{role}: {sql}: {err:?}"
            );
        }
    }
    client
        .batch_execute(
            "begin; set local role service_role;
             select net.http_get('https://example.com/');
             select count(*) from net._http_response;
             select sovra.outbox_send('t', '{}');
             rollback;",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let mut settings = local();
    settings.policy.allow_private = false;
    let _net = NetService::start(settings, db.config());
    let client = db.client().await;
    let mut ids = vec![];
    for url in [
        format!("{}/literal", receiver.url),
        format!("http://localhost:{}/by-name", receiver.port),
        format!("http://[::ffff:127.0.0.1]:{}/mapped", receiver.port),
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let id: i64 = client
            .query_one("select net.http_get($1)", &[&url])
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    for id in ids {
        let recorded = response(&client, id).await;
        assert_eq!(recorded["status_code"], Value::Null, "{recorded}");
        let error = recorded["error_msg"].as_str().unwrap();
        assert!(error.starts_with("refused:"), "{error}");
        assert!(error.contains("net.allow_private"), "{error}");
    }
    // Refusals are final: nothing left to retry, nothing dead-lettered.
    let left: i64 = client
        .query_one(
            "select (select count(*) from net.http_request_queue) + (select count(*) from net.http_request_dead)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert!(receiver.seen().is_empty());
}

#[tokio::test]
async fn an_allow_list_lets_one_host_through() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let mut settings = local();
    settings.policy.allow_private = false;
    settings.policy.allow_list = vec![sovra_net::addr::Allowed::parse("127.0.0.1").unwrap()];
    let _net = NetService::start(settings, db.config());
    let client = db.client().await;
    let id: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/listed", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(response(&client, id).await["status_code"], 200);
    assert_eq!(receiver.seen_path("/listed").len(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let _net = NetService::start(local(), db.config());
    let client = db.client().await;
    let id: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/redirect", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let recorded = response(&client, id).await;
    assert_eq!(recorded["status_code"], 302);
    assert_eq!(recorded["headers"]["location"], "http://169.254.169.254/");
}

#[tokio::test]
async fn retries_429_and_5xx_then_succeeds() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.set_flaky(&[429, 503, 500]);
    let _net = NetService::start(local(), db.config());
    let client = db.client().await;
    let id: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/flaky", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let recorded = response(&client, id).await;
    assert_eq!(recorded["status_code"], 200);
    assert_eq!(recorded["content"], "finally");
    assert_eq!(receiver.seen_path("/flaky").len(), 4);
}

#[tokio::test]
async fn exhausted_requests_are_dead_lettered_and_replayed() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let mut settings = local();
    settings.max_attempts = 3;
    let _net = NetService::start(settings, db.config());
    let client = db.client().await;
    let id: i64 = client
        .query_one(
            "select net.http_post($1, '{\"n\": 1}')",
            &[&format!("{}/fail", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let recorded = response(&client, id).await;
    assert_eq!(recorded["status_code"], 503);
    let (attempts, last_error): (i32, String) = {
        let row = client
            .query_one(
                "select attempts, last_error from net.http_request_dead where id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(attempts, 3);
    assert_eq!(last_error, "HTTP status 503");
    assert_eq!(receiver.seen_path("/fail").len(), 3);

    receiver.heal();
    let replayed: i64 = client
        .query_one("select net.replay_dead_letters(array[$1::bigint])", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(replayed, 1);
    wait_until(
        &client,
        &format!(
            "select exists(select 1 from net._http_response where id = {id} and status_code = 200)"
        ),
    )
    .await;
    let dead: i64 = client
        .query_one("select count(*) from net.http_request_dead", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0);
    let seen = receiver.seen_path("/fail");
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[3].json(), json!({"n": 1}));
    // Nothing to replay now.
    let none: i64 = client
        .query_one("select net.replay_dead_letters()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0);
}

#[tokio::test]
async fn timeouts_and_oversized_bodies_are_recorded() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let mut settings = local();
    settings.max_attempts = 1;
    settings.max_response_bytes = 1024;
    let _net = NetService::start(settings, db.config());
    let client = db.client().await;
    let slow: i64 = client
        .query_one(
            "select net.http_get($1, timeout_milliseconds => 200)",
            &[&format!("{}/slow", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let big: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/big", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let slow = response(&client, slow).await;
    assert_eq!(slow["timed_out"], true, "{slow}");
    assert_eq!(slow["status_code"], Value::Null);
    assert!(
        slow["error_msg"].as_str().unwrap().contains("Timeout"),
        "{slow}"
    );
    let big = response(&client, big).await;
    assert_eq!(big["status_code"], Value::Null);
    assert!(
        big["error_msg"]
            .as_str()
            .unwrap()
            .contains("net.max_response_size"),
        "{big}"
    );
}

#[tokio::test]
async fn database_webhooks_send_supabases_payload() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let _net = NetService::start(local(), db.config());
    let client = db.client().await;
    let url = format!("{}/webhook", receiver.url);
    client
        .batch_execute(&format!(
            "create table public.orders (id int primary key, item text);
             grant select, insert, update, delete on public.orders to authenticated;
             create trigger orders_hook after insert or update or delete on public.orders
               for each row execute function supabase_functions.http_request(
                 '{url}', 'POST', '{{\"Content-Type\":\"application/json\",\"X-Hook\":\"1\"}}', '{{\"source\":\"db\"}}', '1000');"
        ))
        .await
        .unwrap();
    // The trigger fires for an API role that may not call net.* itself.
    client
        .batch_execute(
            "begin; set local role authenticated;
             insert into public.orders values (1, 'tea');
             update public.orders set item = 'coffee' where id = 1;
             delete from public.orders where id = 1;
             commit;",
        )
        .await
        .unwrap();
    wait_for(|| receiver.seen_path("/webhook").len() == 3).await;
    let mut payloads: Vec<Value> = receiver
        .seen_path("/webhook")
        .iter()
        .map(|s| {
            assert_eq!(s.uri, "/webhook?source=db");
            assert_eq!(s.headers["x-hook"], "1");
            s.json()
        })
        .collect();
    payloads.sort_by_key(|p| {
        ["INSERT", "UPDATE", "DELETE"]
            .iter()
            .position(|t| p["type"] == *t)
    });
    assert_eq!(
        payloads,
        [
            json!({"type": "INSERT", "table": "orders", "schema": "public",
                   "record": {"id": 1, "item": "tea"}, "old_record": null}),
            json!({"type": "UPDATE", "table": "orders", "schema": "public",
                   "record": {"id": 1, "item": "coffee"}, "old_record": {"id": 1, "item": "tea"}}),
            json!({"type": "DELETE", "table": "orders", "schema": "public",
                   "record": null, "old_record": {"id": 1, "item": "coffee"}}),
        ]
    );
    let hooks: i64 = client
        .query_one(
            "select count(*) from supabase_functions.hooks where hook_name = 'orders_hook'
               and hook_table_id = 'public.orders'::regclass::oid::int and request_id is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hooks, 3);
    // A webhook without a URL raises in the writing transaction.
    client
        .batch_execute(
            "create table public.broken (id int);
             create trigger broken_hook after insert on public.broken
               for each row execute function supabase_functions.http_request();",
        )
        .await
        .unwrap();
    let err = client
        .batch_execute("insert into public.broken values (1)")
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("url argument is missing")
    );
}

#[tokio::test]
async fn signed_webhooks_verify_with_the_secret() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut settings = local();
    settings.tenant = "acme".to_owned();
    settings.secret = sovra_net::sign::Secret::parse(secret);
    let _net = NetService::start(settings, db.config());
    let client = db.client().await;
    let id: i64 = client
        .query_one(
            "select net.http_post($1, '{\"signed\": true}')",
            &[&format!("{}/signed", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    response(&client, id).await;
    let seen = &receiver.seen_path("/signed")[0];
    let header = |name: &str| seen.headers[name].to_str().unwrap().to_owned();
    let msg_id = header("webhook-id");
    assert_eq!(msg_id, format!("msg_acme_{id}"));
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - timestamp).abs() < 300, "a receiver's tolerance");
    // The receiver's side, computed independently of sovra-net.
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(&seen.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let signatures = header("webhook-signature");
    assert!(
        signatures.split(' ').any(|s| s == format!("v1,{expected}")),
        "{signatures} vs v1,{expected}"
    );
    // A tampered body does not verify.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{msg_id}.{timestamp}.{{\"signed\": false}}").as_bytes());
    let tampered = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_ne!(signatures, format!("v1,{tampered}"));
}

#[tokio::test]
async fn two_workers_on_one_database_deliver_every_request() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let _a = NetService::start(local(), db.config());
    let _b = NetService::start(local(), db.config());
    let client = db.client().await;
    client
        .query_one(
            "select count(net.http_get($1 || '/many/' || n)) from generate_series(1, 300) n",
            &[&receiver.url],
        )
        .await
        .unwrap();
    wait_until(&client, "select count(*) = 300 from net._http_response").await;
    let mut paths: Vec<String> = receiver.seen().into_iter().map(|s| s.uri).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 300);
    let ok: i64 = client
        .query_one(
            "select count(*) from net._http_response where status_code = 200",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, 300);
}

#[tokio::test]
async fn a_delayed_start_opens_no_connection_before_its_time_then_sends_what_was_queued() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let client = db.client().await;
    // Queued and committed before any worker runs (as in a tenant whose
    // delivery has not started yet).
    let id: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/queued", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let others = "select count(*) from pg_stat_activity
                  where datname = current_database() and pid <> pg_backend_pid()";
    let waiting = NetService::start_after(local(), db.config(), Duration::from_secs(3600));
    // Give its tasks every chance to run: they wait, holding no connection.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let connected: i64 = client.query_one(others, &[]).await.unwrap().get(0);
    assert_eq!(
        connected, 0,
        "no worker or publisher connection before the delay"
    );
    drop(waiting);
    let _net = NetService::start_after(local(), db.config(), Duration::from_millis(50));
    let recorded = response(&client, id).await;
    assert_eq!(recorded["status_code"], 200);
    assert_eq!(receiver.seen_path("/queued").len(), 1);
}

#[tokio::test]
async fn a_backlog_is_claimed_in_batches_with_at_most_concurrency_requests_in_flight() {
    const CONCURRENCY: usize = 16;
    const QUEUED: i64 = 400;
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    // The first CONCURRENCY requests are held until all of them are in
    // flight together: the worker must use every slot, and (checked below)
    // never more, while it claims the rest as slots free up.
    receiver.set_gate(CONCURRENCY, QUEUED as usize);
    let client = db.client().await;
    client
        .query_one(
            "select count(net.http_get($1 || '/gate/' || n)) from generate_series(1, $2::bigint) n",
            &[&receiver.url, &QUEUED],
        )
        .await
        .unwrap();
    let mut settings = local();
    settings.concurrency = CONCURRENCY;
    let _net = NetService::start(settings, db.config());
    wait_until(
        &client,
        &format!("select count(*) = {QUEUED} from net._http_response"),
    )
    .await;
    assert_eq!(receiver.max_in_flight(), CONCURRENCY);
    let mut paths: Vec<String> = receiver.seen().into_iter().map(|s| s.uri).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len() as i64, QUEUED, "every request arrived");
    assert_eq!(
        receiver.seen().len() as i64,
        QUEUED,
        "and none twice (no lease ran out)"
    );
    let (ok, queued): (i64, i64) = {
        let row = client
            .query_one(
                "select (select count(*) from net._http_response where status_code = 200),
                        (select count(*) from net.http_request_queue)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((ok, queued), (QUEUED, 0));
    // Fewer claims than requests: freed slots are claimed together. Each
    // claim counts one attempt per row, so the rows' attempts tell nothing;
    // the worker's own count does.
    let stats = _net.stats();
    assert_eq!(stats.claimed, QUEUED as u64);
    assert!(
        stats.claims < stats.claimed,
        "{} claims for {} requests",
        stats.claims,
        stats.claimed
    );
}

/// The worker's statements read the queue by index however large it grew
/// after their plans were made: generic plans made under the default
/// planner settings while the queue was small (and analyzed) scan all of
/// it on every claim and every batch of outcomes. This test fails with the
/// worker's `enable_*` settings taken out (its generic plans kept).
#[tokio::test]
async fn the_worker_reads_the_queue_by_index_after_it_grew() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let client = db.client().await;
    let queue_later = |n: i32| {
        format!(
            "insert into net.http_request_queue (method, url, headers, timeout_milliseconds, next_attempt_at) \
             select 'GET', 'http://127.0.0.1:9/later/' || g, '{{}}'::jsonb, 1000, now() + interval '1 day' \
             from generate_series(1, {n}) g"
        )
    };
    // A small queue, and statistics that say so (and keep saying so: an
    // automatic ANALYZE after the growth would make the plans anew).
    client
        .batch_execute("alter table net.http_request_queue set (autovacuum_enabled = off)")
        .await
        .unwrap();
    client.batch_execute(&queue_later(5)).await.unwrap();
    client
        .batch_execute("analyze net.http_request_queue")
        .await
        .unwrap();
    let _net = NetService::start(local(), db.config());
    let get = |path: &'static str| {
        let client = &client;
        let url = format!("{}/{path}", receiver.url);
        async move {
            let id: i64 = client
                .query_one("select net.http_get($1)", &[&url])
                .await
                .unwrap()
                .get(0);
            assert_eq!(response(client, id).await["status_code"], 200);
        }
    };
    // The worker's claims and outcomes make their plans now.
    for _ in 0..3 {
        get("small").await;
    }
    client.batch_execute(&queue_later(20_000)).await.unwrap();
    let scans = || async {
        let row = client
            .query_one(
                "select seq_scan, coalesce(idx_scan, 0) from pg_stat_user_tables \
                 where schemaname = 'net' and relname = 'http_request_queue'",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    // Backends report their counts within about ten seconds of going idle.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (seq_before, idx_before) = scans().await;
    get("large").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (seq, idx) = scans().await;
        if idx > idx_before {
            // Give the outcome's statement the same time to report.
            tokio::time::sleep(Duration::from_secs(11)).await;
            let (seq, _) = scans().await;
            assert_eq!(
                seq, seq_before,
                "the worker scanned all 20,000 queued requests"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no index read of the queue (sequential scans {seq_before} -> {seq})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_idle_worker_waits_for_the_queue_not_the_poll_interval() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    receiver.set_flaky(&[503]);
    let mut settings = local();
    settings.poll_interval = Duration::from_millis(100);
    settings.retry_base = Duration::from_millis(1_500);
    let _net = NetService::start(settings.clone(), db.config());
    let client = db.client().await;
    // An empty queue: the worker asked when the next row is due (none) and
    // then reads nothing, though its poll interval is 100 ms.
    let asked = "select query_start::text from pg_stat_activity
                 where datname = current_database() and pid <> pg_backend_pid()
                   and query like '%extract(epoch from (select next_attempt_at%'";
    wait_until(&client, &format!("select exists({asked})")).await;
    let before: String = client.query_one(asked, &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after: String = client.query_one(asked, &[]).await.unwrap().get(0);
    assert_eq!(before, after, "an idle worker read the queue again");
    drop(_net);

    // A poll interval longer than the test: a queued request is announced,
    // and its retry (about 1.5 s later) is taken when it falls due.
    settings.poll_interval = Duration::from_secs(60);
    let _net = NetService::start(settings, db.config());
    let started = std::time::Instant::now();
    let id: i64 = client
        .query_one(
            "select net.http_get($1)",
            &[&format!("{}/flaky", receiver.url)],
        )
        .await
        .unwrap()
        .get(0);
    let recorded = response(&client, id).await;
    assert_eq!(recorded["status_code"], 200);
    assert_eq!(receiver.seen_path("/flaky").len(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the retry waited for the poll interval: {:?}",
        started.elapsed()
    );
}
