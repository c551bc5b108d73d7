//! `sovra-load`: closed-loop load for the auth benchmarks. Each of
//! `--connections` tasks sends one request at a time for `--secs` seconds;
//! the report is one line: requests/s, p50 and p99 latency, errors.
//!
//! Modes:
//! - `refresh`: each task signs in once, then refreshes in a chain (every
//!   refresh presents the token the previous one returned), as a client
//!   keeping a session alive does;
//! - `user`: `GET /auth/v1/user` with each task's access token;
//! - `signin`: password sign-ins (bounded by the password hash);
//! - `hash`: the reference for `signin`: argon2id verifications per second
//!   on this machine with Sovra's parameters, no HTTP, no database;
//! - `put4k`: 4 KiB uploads to `/storage/v1/object/bench/…` (new names);
//! - `get4k`: downloads of 4 KiB objects uploaded beforehand;
//! - `rt-idle`: `--connections` WebSocket connections held open;
//! - `rt-broadcast`: `--connections` receivers, one sender at `--rate`
//!   messages/s, send-to-receipt latency;
//! - `rt-changes`: `--connections` users, each subscribed to INSERTs on
//!   `--table` (ids written to `--tokens FILE`), commit-to-receipt latency.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod realtime;

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Refresh,
    User,
    Signin,
    Hash,
    /// Print the pgbench reference scripts (the SQL Sovra runs).
    Sql,
    Put4k,
    Get4k,
    RtIdle,
    RtBroadcast,
    RtChanges,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(value_enum)]
    mode: Mode,
    #[arg(long, default_value = "http://127.0.0.1:54321")]
    url: String,
    #[arg(long, default_value = "")]
    anon_key: String,
    #[arg(long, default_value = "")]
    service_key: String,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// rt-broadcast: messages per second from the sender.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// rt-changes: the table to subscribe to.
    #[arg(long, default_value = "bench_changes")]
    table: String,
    /// rt-changes: where to write the subscribing users' ids, one per line.
    #[arg(long, default_value = "")]
    tokens: String,
}

struct Report {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Report {
    /// Waits for the closed-loop tasks and merges what they measured.
    async fn gather(
        tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, usize)>>,
        started: Instant,
    ) -> anyhow::Result<String> {
        let mut report = Report {
            latencies: Vec::new(),
            errors: 0,
            elapsed: Duration::ZERO,
        };
        for task in tasks {
            let (l, e) = task.await?;
            report.latencies.extend(l);
            report.errors += e;
        }
        report.elapsed = started.elapsed();
        Ok(report.line())
    }

    fn line(mut self) -> String {
        self.latencies.sort();
        let n = self.latencies.len();
        let pct = |p: f64| {
            if n == 0 {
                0.0
            } else {
                self.latencies[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1000.0
            }
        };
        format!(
            "{:.0} req/s, p50 {:.2}ms, p99 {:.2}ms{}",
            n as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            if self.errors > 0 {
                format!(", {} ERRORS", self.errors)
            } else {
                String::new()
            }
        )
    }
}

async fn post(
    client: &reqwest::Client,
    args: &Args,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let response = client
        .post(format!("{}/auth/v1{path}", args.url))
        .header("apikey", &args.anon_key)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let value: Value = response.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {value}");
    Ok(value)
}

/// Makes `n` confirmed users through the admin API; returns their emails.
async fn users(client: &reqwest::Client, args: &Args, n: usize) -> anyhow::Result<Vec<String>> {
    let stamp = Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id());
    let mut out = Vec::new();
    for i in 0..n {
        let email = format!("load{stamp}-{i}@example.com");
        let response = client
            .post(format!("{}/auth/v1/admin/users", args.url))
            .header("apikey", &args.service_key)
            .bearer_auth(&args.service_key)
            .json(&json!({"email": email, "password": "bench-password", "email_confirm": true}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "creating users: {}",
            response.status()
        );
        out.push(email);
    }
    Ok(out)
}

async fn run(args: Args) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 2)
        .build()?;
    let emails = users(&client, &args, args.connections).await?;
    let mut sessions = Vec::new();
    for email in &emails {
        sessions.push(
            post(
                &client,
                &args,
                "/token?grant_type=password",
                json!({"email": email, "password": "bench-password"}),
            )
            .await?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (email, session) in emails.into_iter().zip(sessions) {
        let client = client.clone();
        let url = args.url.clone();
        let anon = args.anon_key.clone();
        let mode = args.mode;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut refresh = session["refresh_token"].as_str().unwrap_or("").to_owned();
            let access = session["access_token"].as_str().unwrap_or("").to_owned();
            while Instant::now() < deadline {
                let t = Instant::now();
                let request = match mode {
                    Mode::Refresh => client
                        .post(format!("{url}/auth/v1/token?grant_type=refresh_token"))
                        .json(&json!({"refresh_token": refresh})),
                    Mode::User => client
                        .get(format!("{url}/auth/v1/user"))
                        .bearer_auth(&access),
                    Mode::Signin => client
                        .post(format!("{url}/auth/v1/token?grant_type=password"))
                        .json(&json!({"email": email, "password": "bench-password"})),
                    _ => unreachable!(),
                };
                match request.header("apikey", &anon).send().await {
                    Ok(response) if response.status().is_success() => {
                        let body: Value = response.json().await.unwrap_or_default();
                        latencies.push(t.elapsed());
                        if let Some(next) = body["refresh_token"].as_str() {
                            refresh = next.to_owned();
                        }
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    Report::gather(tasks, started).await
}

/// Small-object storage load: uploads of 4 KiB under new names, or
/// downloads of 4 KiB objects (one per connection, uploaded first), with
/// the service key into the bucket `bench` (made if missing).
async fn storage(args: Args) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections * 2)
        .build()?;
    let base = format!("{}/storage/v1", args.url);
    let key = args.service_key.clone();
    let _ = client
        .post(format!("{base}/bucket"))
        .bearer_auth(&key)
        .json(&json!({"id": "bench", "name": "bench"}))
        .send()
        .await?;
    let body = vec![b'x'; 4096];
    let run_id = std::process::id();
    if matches!(args.mode, Mode::Get4k) {
        for c in 0..args.connections {
            let response = client
                .post(format!("{base}/object/bench/get-{run_id}-{c}.bin"))
                .bearer_auth(&key)
                .header("content-type", "application/octet-stream")
                .body(body.clone())
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "seeding: {}",
                response.status()
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let client = client.clone();
        let base = base.clone();
        let key = key.clone();
        let body = body.clone();
        let mode = args.mode;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                n += 1;
                let request = match mode {
                    Mode::Put4k => client
                        .post(format!("{base}/object/bench/put-{run_id}-{c}-{n}.bin"))
                        .header("content-type", "application/octet-stream")
                        .body(body.clone()),
                    _ => client.get(format!("{base}/object/bench/get-{run_id}-{c}.bin")),
                };
                match request.bearer_auth(&key).send().await {
                    Ok(response) if response.status().is_success() => {
                        let bytes = response.bytes().await.unwrap_or_default();
                        if matches!(mode, Mode::Get4k) && bytes.len() != 4096 {
                            errors += 1;
                        } else {
                            latencies.push(t.elapsed());
                        }
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    Report::gather(tasks, started).await
}

/// argon2id verifications per second with Sovra's hasher, as many at once
/// as it allows (one per core).
async fn hash_rate(secs: u64) -> String {
    let hasher = sovra_auth::password::Hasher::new(0, 64);
    let stored = hasher.hash("bench-password").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let hasher = hasher.clone();
        let stored = stored.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                // A refusal (queue full) is not a verification.
                if hasher.verify("bench-password", Some(&stored)).await.is_ok() {
                    latencies.push(t.elapsed());
                }
            }
            latencies
        }));
    }
    let mut report = Report {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        report.latencies.extend(task.await.unwrap());
    }
    report.elapsed = started.elapsed();
    report.line().replace("req/s", "verifications/s")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let line = match args.mode {
        Mode::Hash => hash_rate(args.secs).await,
        Mode::Sql => pg_scripts(&args.url),
        Mode::Put4k | Mode::Get4k => storage(args).await?,
        Mode::RtIdle => {
            realtime::idle(&args.url, &args.anon_key, args.connections, args.secs).await?
        }
        Mode::RtBroadcast => {
            realtime::broadcast(
                &args.url,
                &args.anon_key,
                args.connections,
                args.rate,
                args.secs,
            )
            .await?
        }
        Mode::RtChanges => {
            realtime::changes(
                &args.url,
                &args.anon_key,
                &args.service_key,
                &args.table,
                args.connections,
                &args.tokens,
                args.secs,
            )
            .await?
        }
        _ => run(args).await?,
    };
    println!("{line}");
    Ok(())
}

/// Writes `<dir>/pg_user.sql` and `<dir>/pg_refresh.sql`: the very
/// statements of `GET /user` and of a token refresh (taken from
/// sovra-auth), parameters filled in for pgbench, on rows that
/// `<dir>/pg_setup.sql` seeds (32 users, one session and token each).
fn pg_scripts(dir: &str) -> String {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let uid = "md5('u' || CAST(:i AS int))::uuid";
    let sid = "md5('s' || CAST(:i AS int))::uuid";
    let token = "('bench-' || CAST(:i AS int))";
    let user_sql = format!(
        "\\set i random(1, 32)\n{};\n",
        one_line(sovra_auth::current_user_sql())
            .replace("$1", uid)
            .replace("$2", sid)
    );
    // pgbench presents the same token again and again: a reuse interval
    // of "forever" keeps it valid, so every transaction rotates. The new
    // token's hash is a per-transaction constant (a pgbench variable), as
    // the bound `$4` is, so that its lookups use the index.
    let refresh_sql = format!(
        "\\set i random(1, 32)\n\\set r random(1, 2000000000)\n{};\n",
        one_line(sovra_auth::session::refresh_sql())
            .replace("$1", token)
            .replace("$2", "1000000000")
            .replace("$3", "0")
            .replace("$4", "md5(CAST(:r AS text))")
    );
    let setup = "insert into auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at, raw_app_meta_data, raw_user_meta_data, created_at, updated_at) select '00000000-0000-0000-0000-000000000000', md5('u' || i)::uuid, 'authenticated', 'authenticated', 'pgbench' || i || '@example.com', '', now(), '{\"provider\":\"email\",\"providers\":[\"email\"]}', '{}', now(), now() from generate_series(1, 32) i;\n\
insert into auth.identities (provider_id, user_id, identity_data, provider, created_at, updated_at) select md5('u' || i)::uuid::text, md5('u' || i)::uuid, jsonb_build_object('sub', md5('u' || i)::uuid, 'email', 'pgbench' || i || '@example.com'), 'email', now(), now() from generate_series(1, 32) i;\n\
insert into auth.sessions (id, user_id, created_at, updated_at, aal) select md5('s' || i)::uuid, md5('u' || i)::uuid, now(), now(), 'aal1' from generate_series(1, 32) i;\n\
insert into auth.mfa_amr_claims (id, session_id, created_at, updated_at, authentication_method) select gen_random_uuid(), md5('s' || i)::uuid, now(), now(), 'password' from generate_series(1, 32) i;\n\
insert into auth.refresh_tokens (token, user_id, revoked, created_at, updated_at, session_id) select 'bench-' || i, md5('u' || i)::uuid::text, false, now(), now(), md5('s' || i)::uuid from generate_series(1, 32) i;\n";
    let dir = std::path::Path::new(dir);
    std::fs::write(dir.join("pg_user.sql"), user_sql).unwrap();
    std::fs::write(dir.join("pg_refresh.sql"), refresh_sql).unwrap();
    std::fs::write(dir.join("pg_setup.sql"), setup).unwrap();
    format!(
        "wrote pg_setup.sql, pg_user.sql, pg_refresh.sql to {}",
        dir.display()
    )
}
