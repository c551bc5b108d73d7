//! Integration tests of the embedded cluster, migrations and the request
//! transaction, against real PostgreSQL processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sovra_pg::{Cluster, ClusterError, ClusterOptions, ErrorKind, RequestContext};
use sovra_test_support::{TestDb, fast_settings, scratch_dir};

fn options(dir: &std::path::Path) -> ClusterOptions {
    let mut options = ClusterOptions::new(dir.join("pg"));
    options.settings = fast_settings();
    options
}

async fn query_one_i32(cluster: &Cluster, sql: &str) -> i32 {
    let client = sovra_pg::connect_one(&cluster.connect_config("postgres", "postgres"))
        .await
        .unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next())
        != Some("Z")
}

#[tokio::test]
async fn cluster_first_start_restart_and_stop() {
    let dir = scratch_dir();
    let cluster = Cluster::start(options(&dir)).await.unwrap();
    assert!(cluster.created());
    assert!(dir.join("pg/PG_VERSION").exists());
    assert_eq!(query_one_i32(&cluster, "select 1").await, 1);
    let client = sovra_pg::connect_one(&cluster.connect_config("postgres", "postgres"))
        .await
        .unwrap();
    let wal: String = client
        .query_one("show wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal, "logical");
    let listen: String = client
        .query_one("show listen_addresses", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(listen, "", "no TCP unless configured");
    client
        .batch_execute("create table kept(x int); insert into kept values (42)")
        .await
        .unwrap();
    drop(client);

    // The directory and the socket are private to the cluster's owner.
    let mode = std::fs::metadata(dir.join("pg")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);
    if nix::unistd::geteuid().is_root() {
        // PostgreSQL refuses root: it runs as the `postgres` system user,
        // which owns the cluster directory.
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        let meta = std::fs::metadata(dir.join("pg")).unwrap();
        assert_eq!(meta.uid(), postgres.uid.as_raw());
        let status = std::fs::read_to_string(format!("/proc/{}/status", cluster.pid())).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line.split_whitespace().nth(1) == Some(&postgres.uid.as_raw().to_string()),
            "{uid_line}"
        );
    }

    let pid = cluster.pid();
    cluster.stop(Duration::from_secs(30)).await;
    assert!(
        !process_alive(pid),
        "postgres {pid} still running after stop"
    );
    assert!(!dir.join("pg/postmaster.pid").exists());

    let cluster = Cluster::start(options(&dir)).await.unwrap();
    assert!(!cluster.created(), "restart must reuse the cluster");
    assert_eq!(query_one_i32(&cluster, "select x from kept").await, 42);
    cluster.stop(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn orphaned_postmaster_is_stopped_and_replaced() {
    let dir = scratch_dir();
    let first = Cluster::start(options(&dir)).await.unwrap();
    let orphan = first.pid();
    // Forget it as a crashed Sovra would: nothing stops it.
    std::mem::forget(first);
    assert!(process_alive(orphan));

    let second = Cluster::start(options(&dir)).await.unwrap();
    assert_ne!(second.pid(), orphan);
    assert!(!process_alive(orphan), "the orphan must be stopped");
    assert_eq!(query_one_i32(&second, "select 1").await, 1);
    second.stop(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn stale_pid_file_does_not_block_start() {
    let dir = scratch_dir();
    let cluster = Cluster::start(options(&dir)).await.unwrap();
    let pid_file = std::fs::read_to_string(dir.join("pg/postmaster.pid")).unwrap();
    cluster.stop(Duration::from_secs(30)).await;
    // A pid file naming a process that is gone, as after a power cut.
    let mut lines: Vec<String> = pid_file.lines().map(str::to_owned).collect();
    lines[0] = "999999".to_owned();
    std::fs::write(dir.join("pg/postmaster.pid"), lines.join("\n") + "\n").unwrap();
    let cluster = Cluster::start(options(&dir)).await.unwrap();
    assert_eq!(query_one_i32(&cluster, "select 1").await, 1);
    cluster.stop(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn wrong_binaries_and_versions_are_refused_with_advice() {
    let dir = scratch_dir();
    let mut opts = options(&dir);
    opts.bin_dir = Some("/nonexistent/bin".into());
    let err = Cluster::start(opts).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::BinariesNotFound { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("apt-get install postgresql"),
        "{err}"
    );

    std::fs::create_dir_all(dir.join("pg")).unwrap();
    std::fs::write(dir.join("pg/PG_VERSION"), "9\n").unwrap();
    let err = Cluster::start(options(&dir)).await.unwrap_err();
    assert!(matches!(err, ClusterError::VersionMismatch { .. }), "{err}");
    assert!(err.to_string().contains("embedded.bin_dir"), "{err}");
}

#[tokio::test]
async fn failed_start_reports_the_log() {
    let dir = scratch_dir();
    let mut opts = options(&dir);
    opts.settings
        .push(("shared_buffers".into(), "not-a-size".into()));
    let err = Cluster::start(opts).await.unwrap_err();
    assert!(matches!(err, ClusterError::Exited { .. }), "{err}");
    assert!(err.to_string().contains("shared_buffers"), "{err}");
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let snapshot = "select count(*)::int from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname in ('auth','storage','realtime','sovra','extensions')";
    let before: i32 = client.query_one(snapshot, &[]).await.unwrap().get(0);
    let report = sovra_pg::migrate(&mut client).await.unwrap();
    assert!(
        report.applied.is_empty(),
        "template was already migrated: {report:?}"
    );
    let again = sovra_pg::migrate(&mut client).await.unwrap();
    assert!(again.applied.is_empty());
    let after: i32 = client.query_one(snapshot, &[]).await.unwrap().get(0);
    assert_eq!(before, after);
    assert!(sovra_pg::migrate::is_current(&client).await.unwrap());
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let db = TestDb::new().await;
    // A database with nothing in it, created beside the test's own.
    let admin = db.client().await;
    let name = format!("{}_empty", db.name);
    admin
        .batch_execute(&format!("create database \"{name}\" template template0"))
        .await
        .unwrap();
    let mut config = db.config();
    config.dbname(&name);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = sovra_pg::connect_one(&config).await.unwrap();
            sovra_pg::migrate(&mut client).await
        }));
    }
    let mut applied = Vec::new();
    for task in tasks {
        applied.extend(task.await.unwrap().unwrap().applied);
    }
    applied.sort_unstable();
    let all: Vec<i32> = sovra_pg::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(
        applied, all,
        "each migration applied by exactly one instance"
    );
    let client = sovra_pg::connect_one(&config).await.unwrap();
    assert_eq!(
        sovra_pg::migrate::applied_versions(&client).await.unwrap(),
        all
    );
    drop(client);
    admin
        .batch_execute(&format!("drop database \"{name}\" with (force)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn edited_or_newer_migrations_are_refused() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    client
        .execute(
            "update sovra.schema_migrations set checksum = 'edited' where version = 2",
            &[],
        )
        .await
        .unwrap();
    let err = sovra_pg::migrate(&mut client).await.unwrap_err();
    assert!(
        matches!(err, sovra_pg::MigrateError::Changed { version: 2, .. }),
        "{err}"
    );

    let db = TestDb::new().await;
    let mut client = db.client().await;
    client
        .execute(
            "insert into sovra.schema_migrations (version, name, checksum) values (9999, 'future', 'x')",
            &[],
        )
        .await
        .unwrap();
    let err = sovra_pg::migrate(&mut client).await.unwrap_err();
    assert!(matches!(err, sovra_pg::MigrateError::TooNew(9999)), "{err}");
}

#[tokio::test]
async fn roles_schemas_and_extensions_exist() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let row = client
        .query_one(
            "select
               (select rolbypassrls from pg_roles where rolname = 'service_role'),
               (select rolcanlogin from pg_roles where rolname = 'authenticator'),
               (select rolcanlogin from pg_roles where rolname = 'anon'),
               pg_has_role('authenticator', 'anon', 'member'),
               pg_has_role('authenticator', 'authenticated', 'member'),
               pg_has_role('authenticator', 'service_role', 'member'),
               (select count(*)::int from pg_namespace where nspname in ('auth','storage','realtime','sovra','extensions')),
               exists (select 1 from pg_publication where pubname = 'supabase_realtime'),
               exists (select 1 from pg_extension where extname = 'pgcrypto')",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "service_role bypasses RLS");
    assert!(row.get::<_, bool>(1), "authenticator logs in");
    assert!(!row.get::<_, bool>(2), "anon cannot log in");
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4) && row.get::<_, bool>(5));
    assert_eq!(row.get::<_, i32>(6), 5);
    assert!(row.get::<_, bool>(7));
    assert!(row.get::<_, bool>(8));
    // pgvector is installed by scripts/setup.sh, which CI runs.
    let vector = client
        .query_opt("select 1 from pg_extension where extname = 'vector'", &[])
        .await
        .unwrap();
    let available = client
        .query_opt(
            "select 1 from pg_available_extensions where name = 'vector'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(vector.is_some(), available.is_some());
}

fn context(role: &str, claims: Value) -> RequestContext {
    let Value::Object(claims) = claims else {
        unreachable!()
    };
    let mut headers = Map::new();
    headers.insert("user-agent".into(), json!("test"));
    RequestContext {
        role: role.to_owned(),
        claims,
        method: "GET".to_owned(),
        path: "/todos".to_owned(),
        headers,
        search_path: None,
    }
}

#[tokio::test]
async fn request_transaction_sets_role_claims_and_helpers() {
    let db = TestDb::new().await;
    let mut client = sovra_pg::connect_one(&db.config_as("authenticator"))
        .await
        .unwrap();
    let uid = "4b8a1a2e-6a3f-4f0e-9a59-1f1f3f2e0a11";
    let ctx = context(
        "authenticated",
        json!({"sub": uid, "role": "authenticated", "email": "a@example.com", "aal": "aal1"}),
    );
    let tx = sovra_pg::begin_request(&mut client, &ctx, true)
        .await
        .unwrap();
    let row = tx
        .query_one(
            "select current_user::text, auth.uid()::text, auth.role(), auth.email(), auth.jwt() ->> 'aal',
                    current_setting('request.method'), current_setting('request.path'),
                    current_setting('request.headers')::jsonb ->> 'user-agent'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "authenticated");
    assert_eq!(row.get::<_, String>(1), uid);
    assert_eq!(row.get::<_, String>(2), "authenticated");
    assert_eq!(row.get::<_, String>(3), "a@example.com");
    assert_eq!(row.get::<_, String>(4), "aal1");
    assert_eq!(row.get::<_, String>(5), "GET");
    assert_eq!(row.get::<_, String>(6), "/todos");
    assert_eq!(row.get::<_, String>(7), "test");
    // Read-only for reads.
    let err = tx.batch_execute("create table t(x int)").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25006"));
    drop(tx);

    // Everything was transaction-local: the pooled connection is clean.
    let row = client
        .query_one(
            "select current_user::text, coalesce(current_setting('request.jwt.claims', true), '')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "authenticator");
    assert_eq!(row.get::<_, String>(1), "");
}

#[tokio::test]
async fn unknown_role_is_classified() {
    let db = TestDb::new().await;
    let mut client = sovra_pg::connect_one(&db.config_as("authenticator"))
        .await
        .unwrap();
    let ctx = context("no_such_role", json!({"role": "no_such_role"}));
    let Err(err) = sovra_pg::begin_request(&mut client, &ctx, true).await else {
        panic!("role switch must fail");
    };
    assert_eq!(sovra_pg::error_kind(&err), ErrorKind::InvalidParameterValue);
    // A role that exists but authenticator may not become.
    let ctx = context("postgres", json!({"role": "postgres"}));
    let Err(err) = sovra_pg::begin_request(&mut client, &ctx, true).await else {
        panic!("role switch must fail");
    };
    assert_eq!(sovra_pg::error_kind(&err), ErrorKind::InsufficientPrivilege);
}

#[tokio::test]
async fn rls_separates_users_and_service_role_bypasses_it() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "create table public.notes (id serial primary key, owner uuid not null, body text);
             alter table public.notes enable row level security;
             create policy own_rows on public.notes to authenticated
               using (owner = auth.uid()) with check (owner = auth.uid());
             insert into public.notes (owner, body) values
               ('00000000-0000-0000-0000-00000000000a', 'a1'),
               ('00000000-0000-0000-0000-00000000000b', 'b1');",
        )
        .await
        .unwrap();
    let mut client = sovra_pg::connect_one(&db.config_as("authenticator"))
        .await
        .unwrap();
    let user_a = context(
        "authenticated",
        json!({"sub": "00000000-0000-0000-0000-00000000000a", "role": "authenticated"}),
    );
    let tx = sovra_pg::begin_request(&mut client, &user_a, false)
        .await
        .unwrap();
    let bodies: Vec<String> = tx
        .query("select body from public.notes order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bodies, vec!["a1"]);
    let changed = tx
        .execute("update public.notes set body = 'hacked'", &[])
        .await
        .unwrap();
    assert_eq!(changed, 1, "only A's own row");
    let err = tx
        .execute(
            "insert into public.notes (owner, body) values ('00000000-0000-0000-0000-00000000000b', 'forged')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sovra_pg::error_kind(&err), ErrorKind::InsufficientPrivilege);
    drop(tx);

    let anon = context("anon", json!({"role": "anon"}));
    let tx = sovra_pg::begin_request(&mut client, &anon, true)
        .await
        .unwrap();
    let count: i64 = tx
        .query_one("select count(*) from public.notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "no policy for anon: nothing visible");
    drop(tx);

    let service = context("service_role", json!({"role": "service_role"}));
    let tx = sovra_pg::begin_request(&mut client, &service, true)
        .await
        .unwrap();
    let count: i64 = tx
        .query_one("select count(*) from public.notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2, "service_role sees all");
}

#[tokio::test]
async fn role_settings_apply_to_the_request_transaction() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    // Database-specific, so other tests on the cluster are unaffected.
    admin
        .batch_execute(&format!(
            "alter role anon in database \"{}\" set statement_timeout = '150ms'",
            db.name
        ))
        .await
        .unwrap();
    let mut client = sovra_pg::connect_one(&db.config_as("authenticator"))
        .await
        .unwrap();
    let anon = context("anon", json!({"role": "anon"}));
    let tx = sovra_pg::begin_request(&mut client, &anon, true)
        .await
        .unwrap();
    let timeout: String = tx
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "150ms");
    let err = tx.batch_execute("select pg_sleep(2)").await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("57014"),
        "canceled by the role's timeout"
    );
    drop(tx);
    // Another role keeps its own (global) setting.
    let user = context(
        "authenticated",
        json!({"role": "authenticated", "sub": "00000000-0000-0000-0000-00000000000a"}),
    );
    let tx = sovra_pg::begin_request(&mut client, &user, true)
        .await
        .unwrap();
    let timeout: String = tx
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "8s");
}

#[tokio::test]
async fn tcp_listener_when_asked_for_needs_the_password() {
    let dir = scratch_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = options(&dir);
    opts.tcp_port = Some(port);
    let cluster = Cluster::start(opts).await.unwrap();
    let mut tcp = sovra_pg::tokio_postgres::Config::new();
    tcp.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .password(cluster.password());
    let client = sovra_pg::connect_one(&tcp).await.unwrap();
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    tcp.password("wrong");
    assert!(
        sovra_pg::connect_one(&tcp).await.is_err(),
        "TCP requires the password"
    );
    cluster.stop(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn supabase_seeds_and_foreign_keys_to_auth_users_work() {
    let db = TestDb::new().await;
    let admin = db.client().await;
    // What a Supabase project's seed.sql and migrations do.
    admin
        .batch_execute(
            "insert into auth.users (instance_id, id, aud, role, email, encrypted_password,
                                     email_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                                     created_at, updated_at)
             values ('00000000-0000-0000-0000-000000000000', '11111111-1111-1111-1111-111111111111',
                     'authenticated', 'authenticated', 'seed@example.com',
                     crypt('password123', gen_salt('bf')), now(),
                     '{\"provider\":\"email\",\"providers\":[\"email\"]}', '{}', now(), now());
             create table public.profiles (id uuid primary key references auth.users on delete cascade, name text);
             insert into public.profiles values ('11111111-1111-1111-1111-111111111111', 'Seed');",
        )
        .await
        .unwrap();
    let row = admin
        .query_one(
            "select encrypted_password = crypt('password123', encrypted_password), confirmed_at is not null
             from auth.users where email = 'seed@example.com'",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "bcrypt from pgcrypto");
    assert!(row.get::<_, bool>(1), "confirmed_at is generated");
    // The API roles cannot read the auth tables; service_role can.
    let mut client = sovra_pg::connect_one(&db.config_as("authenticator"))
        .await
        .unwrap();
    for (role, allowed) in [
        ("anon", false),
        ("authenticated", false),
        ("service_role", true),
    ] {
        let ctx = context(role, json!({"role": role}));
        let tx = sovra_pg::begin_request(&mut client, &ctx, true)
            .await
            .unwrap();
        let result = tx.query("select email from auth.users", &[]).await;
        assert_eq!(result.is_ok(), allowed, "{role}");
    }
}
