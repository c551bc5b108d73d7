//! Tests of the `sovra` binary as an operator runs it: the embedded
//! PostgreSQL lifecycle (first start, restart, restart after `kill -9`, a
//! second instance refused, root handling), the CLI's help and errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn sovra() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sovra"));
    // Only what the test sets: no SOVRA_* from the environment.
    for (name, _) in std::env::vars() {
        if name.starts_with("SOVRA_") {
            command.env_remove(name);
        }
    }
    command.env("SOVRA_LOG_LEVEL", "info");
    command
}

/// A scratch directory the `postgres` system user can reach when the tests
/// run as root; removed when dropped.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn data(&self) -> PathBuf {
        self.0.path().join("data")
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn sovra_dir() -> Scratch {
    use std::os::unix::fs::PermissionsExt as _;
    let root = std::env::temp_dir().join("sovra-cli-test");
    std::fs::create_dir_all(&root).unwrap();
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&root)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Scratch(dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    url: String,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
}

fn lines_of(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Server {
    start_on("127.0.0.1", dir, extra_env)
}

/// Starts `sovra serve` on `host` and a free port, with the data directory
/// `dir` and `extra_env` on top of a clean environment; its output lines
/// are collected for the test.
fn start_on(host: &str, dir: &Path, extra_env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let mut command = sovra();
    command
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("{host}:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        stdout,
        stderr,
    }
}

/// Runs `sovra ARGS --data-dir DIR` to completion.
fn run(args: &[&str], dir: &Path) -> std::process::Output {
    sovra()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// Stops a server with `signal` and asserts that it exited cleanly.
fn stop(server: &mut Server, signal: Signal) {
    kill(server.pid(), signal).unwrap();
    let status = server.wait_exit();
    assert!(status.success(), "{status}: {}", server.stderr_text());
}

impl Server {
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let err: Vec<String> = self.stderr.try_iter().collect();
                panic!("sovra exited with {status}: {}", err.join("\n"));
            }
            if let Ok(response) = client.get(format!("{}/ready", self.url)).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "sovra not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn stdout_text(&self) -> String {
        // The banner is printed before the server answers.
        std::thread::sleep(Duration::from_millis(100));
        self.stdout.try_iter().collect::<Vec<_>>().join("\n")
    }

    fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "sovra did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postmaster_pid(dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(dir.join("pg/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn embedded_lifecycle_first_start_restart_kill_and_second_instance() {
    let scratch = sovra_dir();
    let dir = scratch.data();

    // First start: initdb, migrations, keys printed with the URLs.
    let mut server = start(&dir, &[]);
    server.wait_ready().await;
    let out = server.stdout_text();
    assert!(
        out.contains(&format!("API URL       {}", server.url)),
        "{out}"
    );
    assert!(out.contains("anon key      ey"), "{out}");
    assert!(out.contains("service_role  ey"), "{out}");
    // Whether sign-ups need confirming, and where the mail goes.
    assert!(out.contains("Email confirm on"), "{out}");
    assert!(out.contains("SOVRA_AUTH_EMAIL_AUTOCONFIRM=true"), "{out}");
    assert!(out.contains("read it with `sovra mail`"), "{out}");
    let anon_key = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("anon key"))
        .unwrap()
        .trim()
        .to_owned();
    let health = reqwest::get(format!("{}/health", server.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let keys = std::fs::metadata(dir.join("keys.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&keys.permissions()) & 0o777,
        0o600
    );

    let postmaster = postmaster_pid(&dir).expect("postmaster running");
    if nix::unistd::geteuid().is_root() {
        let status = std::fs::read_to_string(format!("/proc/{postmaster}/status")).unwrap();
        let uid: u32 = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok())
            .unwrap();
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(uid, postgres.uid.as_raw(), "postgres must not run as root");
    }

    // A second Sovra on the same data directory is refused.
    let second = sovra()
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another Sovra"), "{err}");

    // Ctrl-C: Sovra and its PostgreSQL stop, nothing left running.
    kill(server.pid(), Signal::SIGINT).unwrap();
    let status = server.wait_exit();
    assert!(status.success(), "{status}: {}", server.stderr_text());
    wait_gone(postmaster);
    assert!(
        postmaster_pid(&dir).is_none(),
        "postmaster.pid removed by a clean shutdown"
    );
    drop(server);

    // Restart: same keys, not printed again.
    let mut server = start(&dir, &[]);
    server.wait_ready().await;
    let out = server.stdout_text();
    assert!(!out.contains("anon key      ey"), "{out}");
    assert!(out.contains("sovra keys"), "{out}");
    let whoami: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/sovra/v1/whoami/db", server.url))
        .header("apikey", &anon_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["current_user"], "anon", "{whoami}");

    // kill -9: the next start finds the orphaned or dying postmaster and
    // recovers.
    let postmaster = postmaster_pid(&dir).unwrap();
    kill(server.pid(), Signal::SIGKILL).unwrap();
    server.wait_exit();
    drop(server);
    let mut server = start(&dir, &[]);
    server.wait_ready().await;
    let new_postmaster = postmaster_pid(&dir).unwrap();
    assert_ne!(new_postmaster, postmaster);
    assert!(!alive(postmaster));

    // Logs never carry credentials.
    let token_marker = &anon_key[anon_key.len() - 20..];
    let _ = reqwest::Client::new()
        .get(format!("{}/sovra/v1/whoami?apikey={anon_key}", server.url))
        .header("authorization", format!("Bearer {anon_key}"))
        .send()
        .await
        .unwrap();
    stop(&mut server, Signal::SIGTERM);
    let logs = server.stderr_text();
    assert!(
        logs.contains("/sovra/v1/whoami"),
        "requests are logged: {logs}"
    );
    assert!(
        !logs.contains(token_marker),
        "a key leaked into the logs: {logs}"
    );
    wait_gone(new_postmaster);
}

#[tokio::test]
async fn json_logs_carry_request_ids() {
    let scratch = sovra_dir();
    let dir = scratch.data();
    let mut server = start(&dir, &[("SOVRA_LOG_FORMAT", "json")]);
    server.wait_ready().await;
    let response = reqwest::Client::new()
        .get(format!("{}/health", server.url))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    stop(&mut server, Signal::SIGINT);
    let logs = server.stderr_text();
    let line = logs
        .lines()
        .find(|l| l.contains("trace-me-123") && l.contains("\"status\":200"))
        .unwrap_or_else(|| panic!("no response log with the request id: {logs}"));
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(value["span"]["request_id"], "trace-me-123");
}

#[test]
fn help_explains_every_command() {
    let out = sovra().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "serve",
        "migrate",
        "keys",
        "doctor",
        "mail",
        "api-keys",
        "s3-keys",
        "--config",
        "--data-dir",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    for (command, word) in [
        ("serve", "--listen"),
        ("migrate", "advisory"),
        ("keys", "--rotate"),
        ("doctor", "pgvector"),
    ] {
        let out = sovra().args([command, "--help"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(word) || text.contains("instances"),
            "{command} --help: {text}"
        );
    }
}

#[test]
fn configuration_errors_name_the_option() {
    let scratch = sovra_dir();
    let dir = scratch.path();
    let out = sovra()
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .env("SOVRA_SERVER_LISTEN", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`server.listen`"), "{err}");

    let config = dir.join("sovra.toml");
    std::fs::write(&config, "[databse]\nurl = \"postgres://x\"\n").unwrap();
    let out = sovra()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`databse`"), "{err}");

    let out = sovra()
        .args(["serve", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = sovra()
        .arg("serve")
        .env("SOVRA_JWT_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`jwt.secret`"));
}

#[test]
fn keys_prints_rotates_and_retires() {
    let scratch = sovra_dir();
    let dir = scratch.data();
    let out = run(&["keys", "--json"], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(first["anon_key"].as_str().unwrap().starts_with("ey"));
    let out = run(&["keys", "--json"], &dir);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        first["anon_key"], again["anon_key"],
        "stable without --rotate"
    );

    let out = run(&["keys", "--rotate", "--json"], &dir);
    assert!(out.status.success());
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(first["anon_key"], rotated["anon_key"]);
    let previous = rotated["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["status"] == "previous")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let active = rotated["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["status"] == "active")
        .unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run(&["keys", "--retire", &active], &dir);
    assert!(!out.status.success(), "the active key cannot be retired");
    let out = run(&["keys", "--retire", &previous], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = run(&["keys"], &dir);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("(mode 0600)"), "{text}");
    assert!(!text.contains("\"secret\""), "{text}");
}

#[test]
fn migrate_and_doctor_on_a_fresh_directory() {
    let scratch = sovra_dir();
    let dir = scratch.data();
    let out = run(&["doctor"], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok    postgresql"), "{text}");
    assert!(text.contains("will be created on first start"), "{text}");

    let out = run(&["migrate"], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied migrations"));
    let out = run(&["migrate"], &dir);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
    // migrate stops the PostgreSQL it started.
    assert!(postmaster_pid(&dir).is_none());

    let out = run(&["doctor"], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cluster: PostgreSQL"), "{text}");

    let out = sovra()
        .args(["doctor", "--data-dir"])
        .arg(&dir)
        .env("SOVRA_EMBEDDED_BIN_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  postgresql") && text.contains("apt-get install postgresql"),
        "{text}"
    );
}

#[tokio::test]
async fn external_database_url_manages_nothing() {
    let db = sovra_test_support::TestDb::new().await;
    let config = db.config();
    let host = match &config.get_hosts()[0] {
        sovra_pg::tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        sovra_pg::tokio_postgres::config::Host::Tcp(host) => host.clone(),
    };
    let url = format!(
        "host={host} port={} user={} dbname={}",
        config.get_ports()[0],
        config.get_user().unwrap(),
        db.name
    );
    let scratch = sovra_dir();
    let dir = scratch.data();
    let mut server = start(&dir, &[("SOVRA_DATABASE_URL", url.as_str())]);
    server.wait_ready().await;
    assert!(
        !dir.join("pg").exists(),
        "no embedded cluster with a database URL"
    );
    let out = server.stdout_text();
    assert!(!out.contains("PostgreSQL    embedded"), "{out}");
    stop(&mut server, Signal::SIGINT);
    // The server's database was migrated and is still there.
    let client = db.client().await;
    assert!(sovra_pg::migrate::is_current(&client).await.unwrap());

    // An unreachable server is a clear start-up error, not a hang.
    let out = sovra()
        .args(["serve", "--data-dir"])
        .arg(scratch.path().join("other"))
        .args(["--database-url", "postgres://nobody@127.0.0.1:1/none"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to postgresql"), "{err}");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let scratch = sovra_dir();
    let dir = scratch.data();
    let mut server = start(&dir, &[]);
    server.wait_ready().await;
    // A function that takes a while, made over the embedded socket.
    let mut pg = sovra_pg::tokio_postgres::Config::new();
    pg.host_path(dir.join("pg"))
        .port(5432)
        .user("postgres")
        .dbname("postgres");
    let client = sovra_pg::connect_one(&pg).await.unwrap();
    client
        .batch_execute(
            "create function public.slow() returns int language sql volatile as $$ select 42 from pg_sleep(1) $$;
             notify pgrst, 'reload schema';",
        )
        .await
        .unwrap();
    drop(client);
    let http = reqwest::Client::new();
    let url = format!("{}/rest/v1/rpc/slow", server.url);
    // Wait until the schema cache has the function.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = http
            .post(&url)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "function never became callable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        async move { http.post(&url).json(&serde_json::json!({})).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(server.pid(), Signal::SIGINT).unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "42");
    assert!(server.wait_exit().success());
    // New connections are refused once it has stopped.
    assert!(
        http.get(format!("{}/health", server.url))
            .send()
            .await
            .is_err()
    );
}

/// SIGTERM with `server.drain_delay`: `/ready` turns 503 at once while
/// requests are still served, then realtime clients are closed with 1001
/// (they reconnect elsewhere) and the process exits cleanly.
#[tokio::test]
async fn drain_turns_ready_off_first_then_closes_realtime_clients() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let scratch = sovra_dir();
    let dir = scratch.data();
    let mut server = start(&dir, &[("SOVRA_SERVER_DRAIN_DELAY", "3")]);
    server.wait_ready().await;
    let keys = run(&["keys", "--json"], &dir);
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    let anon = keys["anon_key"].as_str().unwrap().to_owned();
    let ws_url = format!(
        "{}/realtime/v1/websocket?apikey={anon}&vsn=1.0.0",
        server.url.replace("http", "ws")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let join = serde_json::json!({
        "topic": "realtime:room", "event": "phx_join", "ref": "1", "join_ref": "1",
        "payload": {"config": {"broadcast": {"self": true}}}
    });
    ws.send(Message::Text(join.to_string().into()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reply.to_string().contains("\"ok\""), "{reply}");

    kill(server.pid(), Signal::SIGTERM).unwrap();
    let http = reqwest::Client::new();
    // Not ready, yet still serving.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let ready = http
            .get(format!("{}/ready", server.url))
            .send()
            .await
            .unwrap();
        if ready.status() == 503 {
            let body: serde_json::Value = ready.json().await.unwrap();
            assert_eq!(body["status"], "draining", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/ready never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = http
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let settings = http
        .get(format!("{}/auth/v1/settings", server.url))
        .header("apikey", &anon)
        .send()
        .await
        .unwrap();
    assert_eq!(settings.status(), 200);
    // The realtime client is still connected during the delay, then told
    // to go (1001).
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(Some(close))) => return Some(u16::from(close.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the realtime client is closed after the delay");
    assert_eq!(closed, Some(1001));
    let status = server.wait_exit();
    assert!(status.success(), "{status}: {}", server.stderr_text());
}

#[tokio::test]
async fn mail_lists_the_mailbox_and_api_keys_are_made_through_the_server() {
    let scratch = sovra_dir();
    let dir = scratch.data();
    let mut server = start(&dir, &[]);
    server.wait_ready().await;
    let keys = run(&["keys", "--json"], &dir);
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    let anon = keys["anon_key"].as_str().unwrap().to_owned();
    let signup = reqwest::Client::new()
        .post(format!("{}/auth/v1/signup", server.url))
        .header("apikey", &anon)
        .json(&serde_json::json!({"email": "cli@example.com", "password": "password1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 200);
    let out = run(&["mail"], &dir);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cli@example.com") && text.contains("confirmation"),
        "{text}"
    );
    let out = run(&["mail", "--last", "--to", "cli@example.com"], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/auth/v1/verify?token="), "{text}");

    let out = run(
        &["api-keys", "--url", &server.url, "create", "--name", "etl"],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key   "))
        .expect("the key is printed")
        .to_owned();
    let whoami: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/sovra/v1/whoami", server.url))
        .header("apikey", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["role"], "service_role");
    let out = run(&["api-keys", "--url", &server.url, "list"], &dir);
    assert!(String::from_utf8_lossy(&out.stdout).contains("etl"));
    // S3 access keys of /storage/v1/s3: made, listed and revoked.
    let out = run(
        &[
            "s3-keys",
            "--url",
            &server.url,
            "create",
            "--description",
            "backup",
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("access key id      "))
        .expect("the access key id is printed")
        .to_owned();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret access key  "))
        .expect("the secret is printed")
        .to_owned();
    assert_eq!(secret.len(), 40, "{text}");
    assert!(text.contains("/storage/v1/s3") && text.contains("region             local"));
    let out = run(&["s3-keys", "--url", &server.url, "list"], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id) && text.contains("backup") && !text.contains(&secret));
    let out = run(&["s3-keys", "--url", &server.url, "revoke", &id], &dir);
    assert!(out.status.success());
    let out = run(&["s3-keys", "--url", &server.url, "revoke", &id], &dir);
    assert!(!out.status.success());
    let out = run(&["s3-keys", "--url", &server.url, "list"], &dir);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no S3 access keys"));
    stop(&mut server, Signal::SIGINT);
    // Without a server the command says so.
    let out = run(&["api-keys", "--url", &server.url, "list"], &dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `sovra serve` running?"));
}

#[tokio::test]
async fn unknown_environment_variables_warn_and_open_metrics_are_flagged() {
    let scratch = sovra_dir();
    let dir = scratch.data();
    // People export SOVRA_URL for their own clients in the same shell.
    let mut server = start_on(
        "0.0.0.0",
        &dir,
        &[
            ("SOVRA_URL", "http://example.com/secret-value"),
            ("SOVRA_SERVER_LISEN", "127.0.0.1:1"),
        ],
    );
    server.wait_ready().await;
    let client = reqwest::Client::new();
    // No metrics.token: /metrics is open (and the start-up log said so).
    let response = client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A request id that would forge fields in a text log is replaced.
    let response = client
        .get(format!("{}/health", server.url))
        .header("x-request-id", "forged status=500 injected=yes")
        .send()
        .await
        .unwrap();
    let fresh = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(fresh.len(), 36, "{fresh}");
    stop(&mut server, Signal::SIGINT);
    let logs = server.stderr_text();
    assert!(
        logs.contains("ignoring environment variable SOVRA_URL: it names no option"),
        "{logs}"
    );
    assert!(
        logs.contains("ignoring environment variable SOVRA_SERVER_LISEN: it names no option; did you mean SOVRA_SERVER_LISTEN"),
        "{logs}"
    );
    assert!(!logs.contains("secret-value"), "{logs}");
    assert!(
        logs.contains("/metrics is open to every client that reaches 0.0.0.0:"),
        "{logs}"
    );
    assert!(!logs.contains("injected"), "{logs}");
    assert!(logs.contains(&fresh), "the fresh id is logged: {logs}");
    // Logs to a pipe or file carry no terminal colour codes.
    assert!(!logs.contains('\x1b'), "ANSI escapes in piped logs: {logs}");

    // With a token, /metrics needs it and there is no warning.
    let mut server = start(&dir, &[("SOVRA_METRICS_TOKEN", "scrape-token-0123456789")]);
    server.wait_ready().await;
    let response = client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .get(format!("{}/metrics", server.url))
        .bearer_auth("scrape-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    stop(&mut server, Signal::SIGINT);
    let logs = server.stderr_text();
    assert!(!logs.contains("/metrics is open"), "{logs}");
    assert!(!logs.contains("scrape-token-0123456789"), "{logs}");

    // An unknown key in the file still stops Sovra.
    let config = scratch.path().join("typo.toml");
    std::fs::write(&config, "[metrics]\ntokn = \"x\"\n").unwrap();
    let out = sovra()
        .args(["serve", "--config"])
        .arg(&config)
        .env("SOVRA_URL", "http://example.com")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`metrics.tokn`"));
}

#[test]
fn api_keys_refuses_plain_http_to_another_machine() {
    let scratch = sovra_dir();
    let dir = scratch.data();
    for url in ["http://api.example.com", "http://10.1.2.3:54321"] {
        let out = run(&["api-keys", "--url", url, "list"], &dir);
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to send the service_role key over plain http")
                && err.contains("--allow-http"),
            "{url}: {err}"
        );
        // Refused before anything is made in the data directory.
        assert!(!dir.join("keys.json").exists());
    }
    let out = run(&["api-keys", "--url", "ftp://localhost", "list"], &dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http:// or https://"));
    // With --allow-http the check passes and the command goes on to
    // send the request (0.0.0.1 is no server: it fails, differently).
    std::fs::create_dir_all(&dir).unwrap();
    let out = run(
        &[
            "api-keys",
            "--allow-http",
            "--url",
            "http://0.0.0.1:9",
            "list",
        ],
        &dir,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("refusing"), "{err}");
}

/// A directory closed to everyone but its owner, as `/root` is.
fn closed_dir(scratch: &Scratch) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let closed = scratch.path().join("home");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    closed
}

#[test]
fn doctor_checks_that_postgres_can_reach_the_real_data_dir() {
    let scratch = sovra_dir();
    let closed = closed_dir(&scratch);
    let doctor = |dir: &Path| {
        let out = sovra()
            .args(["doctor", "--data-dir"])
            .arg(dir)
            .env("SOVRA_SERVER_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = doctor(&closed.join("project/sovra-data"));
    if nix::unistd::geteuid().is_root() {
        // PostgreSQL runs as `postgres`, which cannot pass through.
        assert!(!ok, "{text}");
        assert!(
            text.contains("FAIL  data dir reach: `postgres`")
                && text.contains(&format!("cannot reach {}", closed.display()))
                && text.contains("/var/lib/sovra"),
            "{text}"
        );
        // The same when the data directory exists already.
        std::fs::create_dir_all(closed.join("project/sovra-data")).unwrap();
        let (ok, text) = doctor(&closed.join("project/sovra-data"));
        assert!(!ok && text.contains("FAIL  data dir reach"), "{text}");
        // And so `serve` fails, saying why once.
        let out = sovra()
            .args(["serve", "--data-dir"])
            .arg(closed.join("project/sovra-data"))
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("cannot reach").count(), 1, "{err}");
    } else {
        // Not root: PostgreSQL runs as this user, who owns the way there.
        assert!(ok, "{text}");
        assert!(!text.contains("data dir reach"), "{text}");
    }
    // A place it can reach.
    let (ok, text) = doctor(&scratch.data());
    assert!(ok, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    if nix::unistd::geteuid().is_root() {
        assert!(
            text.contains("ok    data dir reach: `postgres` can reach"),
            "{text}"
        );
    }
}

#[test]
fn the_default_data_dir_for_root_is_one_postgres_can_reach() {
    let scratch = sovra_dir();
    // Run where no ./sovra-data exists, with no data directory configured.
    let cwd = closed_dir(&scratch);
    let doctor = || {
        let out = sovra()
            .arg("doctor")
            .current_dir(&cwd)
            .env("SOVRA_SERVER_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = doctor();
    let root = nix::unistd::geteuid().is_root();
    if root {
        assert!(text.contains("data dir: /var/lib/sovra"), "{text}");
        assert!(!text.contains("FAIL  data dir reach"), "{text}");
    } else {
        assert!(text.contains("data dir: ./sovra-data"), "{text}");
    }
    // An existing project in ./sovra-data keeps its place (and its keys).
    let existing = cwd.join("sovra-data");
    std::fs::create_dir(&existing).unwrap();
    let keys = run(&["keys", "--json"], &existing);
    assert!(keys.status.success());
    let text = doctor();
    assert!(text.contains("data dir: ./sovra-data"), "{text}");
    // A configured one always wins.
    let out = sovra()
        .args(["doctor"])
        .current_dir(&cwd)
        .env("SOVRA_SERVER_LISTEN", "127.0.0.1:0")
        .env("SOVRA_DATA_DIR", scratch.data())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("data dir: {}", scratch.data().display())),
        "{text}"
    );
}

#[test]
fn an_unreachable_nats_is_named_without_its_credentials() {
    let dir = sovra_dir();
    // Nothing listens on a port just freed: NATS cannot be reached.
    let nats = format!("nats://bus-user:n4ts-s3cret@127.0.0.1:{}", free_port());
    let out = sovra()
        .args(["serve", "--data-dir"])
        .arg(dir.data())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("SOVRA_REALTIME_NATS_URL", &nats)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cannot connect to NATS"), "{text}");
    assert!(text.contains("nats://bus-user:***@127.0.0.1:"), "{text}");
    assert!(!text.contains("n4ts-s3cret"), "{text}");
}

#[tokio::test]
async fn a_joined_nats_bus_is_logged_without_its_credentials() {
    let nats =
        sovra_test_support::NatsServer::start_with_password("bus-user", "j0ined-s3cret").await;
    let dir = sovra_dir();
    let mut server = start(&dir.data(), &[("SOVRA_REALTIME_NATS_URL", &nats.url)]);
    server.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("joined the NATS bus") {
        assert!(Instant::now() < deadline, "no join logged: {seen}");
        seen.push_str(&server.stdout_text());
        seen.push_str(&server.stderr_text());
    }
    stop(&mut server, Signal::SIGINT);
    seen.push_str(&server.stdout_text());
    seen.push_str(&server.stderr_text());
    drop(nats);
    assert!(!seen.contains("j0ined-s3cret"), "{seen}");
}
