//! HTTP from SQL survives `kill -9`: every request committed before Sovra
//! is killed mid-delivery arrives at least once after a restart, and none
//! from a rolled-back transaction ever arrives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A raw HTTP/1.1 receiver on 127.0.0.1 that counts arrivals per path and
/// answers each after a short delay (so deliveries are in flight when
/// Sovra is killed).
async fn receiver() -> (String, Arc<Mutex<HashMap<String, u32>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let header_end = loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buffer.len() < header_end + length {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                *counts.lock().unwrap().entry(path).or_insert(0) += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (url, seen)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &std::path::Path, database_url: &str) -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sovra"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SOVRA_") {
            command.env_remove(name);
        }
    }
    command
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("SOVRA_DATABASE_URL", database_url)
        .env("SOVRA_NET_ALLOW_PRIVATE", "true")
        .env("SOVRA_NET_CONCURRENCY", "4")
        .env("SOVRA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (
        Server(command.spawn().unwrap()),
        format!("http://127.0.0.1:{port}"),
    )
}

async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = client.get(format!("{url}/ready")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "sovra not ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn committed_requests_arrive_after_kill_9_and_rolled_back_ones_never() {
    let db = sovra_test_support::TestDb::new().await;
    let config = db.config();
    let host = match &config.get_hosts()[0] {
        sovra_pg::tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        sovra_pg::tokio_postgres::config::Host::Tcp(host) => host.clone(),
    };
    let database_url = format!(
        "host={host} port={} user={} dbname={}",
        config.get_ports()[0],
        config.get_user().unwrap(),
        db.name
    );
    let (receiver_url, seen) = receiver().await;
    let dir = sovra_test_support::scratch_dir().join("data");
    let (mut server, url) = start(&dir, &database_url);
    wait_ready(&url).await;

    let mut client = db.client().await;
    const COMMITTED: i64 = 200;
    client
        .query_one(
            "select count(net.http_post($1 || '/c/' || n, jsonb_build_object('n', n)))
               from generate_series(1, $2::bigint) n",
            &[&receiver_url, &COMMITTED],
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.query_one(
        "select count(net.http_get($1 || '/r/' || n)) from generate_series(1, 50) n",
        &[&receiver_url],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    // Kill Sovra once deliveries are under way, with most still queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "deliveries did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = server.0.wait();
    let before_restart = seen.lock().unwrap().len() as i64;
    assert!(before_restart < COMMITTED, "all delivered before the kill");
    drop(server);

    let (_server, url) = start(&dir, &database_url);
    wait_ready(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = client
            .query_one(
                "select count(*) from net._http_response where status_code = 200",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if done == COMMITTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {COMMITTED} delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    for n in 1..=COMMITTED {
        assert!(
            seen.get(&format!("/c/{n}")).is_some_and(|c| *c >= 1),
            "/c/{n} never arrived"
        );
    }
    assert!(
        !seen.keys().any(|path| path.starts_with("/r/")),
        "a rolled-back request arrived"
    );
    let queued: i64 = client
        .query_one("select count(*) from net.http_request_queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0);
}
