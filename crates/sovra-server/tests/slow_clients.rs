//! Slow and stalled clients against the real server: hundreds of uploads
//! trickling a byte at a time must not stop sign-ins, REST reads or
//! downloads; bodies that stall are answered 408 on every route; and
//! connections that never finish their headers are closed.
//!
//! The runtime is built by hand with a small blocking pool (64 threads)
//! so that the test needs only a few hundred sockets to show what used to
//! happen: each trickling upload pinned a blocking thread while it waited
//! for the client, and once they were all taken, downloads and password
//! hashing waited behind them. Deadlines here only catch a hang; nothing
//! asserts how long anything took.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_test_support::TestApp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const TRICKLES: usize = 300;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .unwrap()
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
}

async fn app(edit: impl FnOnce(&mut sovra_config::Config)) -> TestApp {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.auth.rate_limit.sign_in = 100_000;
    edit(&mut config);
    TestApp::spawn_with(config).await
}

fn addr(app: &TestApp) -> String {
    app.url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes the connection (or `deadline` passes,
/// which fails the test: it only catches a hang).
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> String {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open: {:?}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn hundreds_of_trickling_uploads_do_not_stop_other_requests() {
    runtime().block_on(async {
        let app = app(|c| c.server.body_idle_timeout = 3).await;
        let http = reqwest::Client::new();
        let service = app.service_role_key.clone();
        let storage = |path: &str| format!("{}/storage/v1{path}", app.url);
        // A bucket, a small object, a table anon may read, a user.
        let made = http
            .post(storage("/bucket"))
            .bearer_auth(&service)
            .json(&json!({"id": "up", "name": "up"}))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), StatusCode::OK);
        let small = http
            .post(storage("/object/up/small.txt"))
            .bearer_auth(&service)
            .header("content-type", "text/plain")
            .body("small")
            .send()
            .await
            .unwrap();
        assert_eq!(small.status(), StatusCode::OK);
        app.db
            .client()
            .await
            .batch_execute(
                "create table public.kv (k text primary key, v text);
                 insert into public.kv values ('a', 'b');
                 grant select on public.kv to anon;",
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while app
            .tenant
            .rest
            .cache()
            .get()
            .and_then(|c| c.relation("public", "kv").cloned())
            .is_none()
        {
            assert!(std::time::Instant::now() < deadline, "schema cache reload");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let user = http
            .post(format!("{}/auth/v1/admin/users", app.url))
            .header("apikey", &app.anon_key)
            .bearer_auth(&service)
            .json(&json!({
                "email": "ada@example.com",
                "password": "correct horse",
                "email_confirm": true
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), StatusCode::OK);

        // Hundreds of authorised uploads that send a byte now and then.
        let host = addr(&app);
        let mut trickles = Vec::with_capacity(TRICKLES);
        for i in 0..TRICKLES {
            let mut stream = TcpStream::connect(&host).await.unwrap();
            let head = format!(
                "POST /storage/v1/object/up/slow-{i}.bin HTTP/1.1\r\nHost: {host}\r\n\
                 Authorization: Bearer {service}\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: 500000\r\n\r\nx"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            trickles.push(stream);
        }
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let trickler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        for stream in &mut trickles {
                            let _ = stream.write_all(b"x").await;
                        }
                    }
                    _ = &mut stop_rx => return trickles,
                }
            }
        });
        // Let every trickle get past its authorisation and start its body.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Meanwhile, everything else keeps working.
        let work = async {
            for round in 0..6 {
                // Hashing is slow in debug builds: every other round.
                if round % 2 == 0 {
                    let sign_in = http
                        .post(format!("{}/auth/v1/token?grant_type=password", app.url))
                        .header("apikey", &app.anon_key)
                        .json(&json!({"email": "ada@example.com", "password": "correct horse"}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(sign_in.status(), StatusCode::OK, "sign-in {round}");
                    let body: Value = sign_in.json().await.unwrap();
                    assert!(body["access_token"].is_string());
                }
                let rest = http
                    .get(format!("{}/rest/v1/kv?select=k,v", app.url))
                    .header("apikey", &app.anon_key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(rest.status(), StatusCode::OK, "REST {round}");
                assert_eq!(
                    rest.json::<Value>().await.unwrap(),
                    json!([{"k": "a", "v": "b"}])
                );
                let down = http
                    .get(storage("/object/up/small.txt"))
                    .bearer_auth(&service)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(down.status(), StatusCode::OK, "download {round}");
                assert_eq!(down.text().await.unwrap(), "small");
                let upload = http
                    .post(storage(&format!("/object/up/quick-{round}.txt")))
                    .bearer_auth(&service)
                    .header("content-type", "text/plain")
                    .body("quick")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(upload.status(), StatusCode::OK, "upload {round}");
            }
        };
        tokio::time::timeout(Duration::from_secs(120), work)
            .await
            .expect("requests stalled behind the trickling uploads");

        // Then the trickles stop sending: each is answered 408 and closed.
        let _ = stop_tx.send(());
        let trickles = trickler.await.unwrap();
        let answers =
            futures_util::future::join_all(trickles.into_iter().map(|mut stream| async move {
                read_until_closed(&mut stream, Duration::from_secs(60)).await
            }))
            .await;
        for answer in &answers {
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(answer.contains("\"statusCode\":\"408\""), "{answer}");
            assert!(answer.contains("body_idle_timeout"), "{answer}");
        }
        // None of them left a row or a file.
        let rows: i64 = app
            .db
            .client()
            .await
            .query_one(
                "select count(*) from storage.objects where name like 'slow-%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0);
    });
}

#[test]
fn stalled_bodies_get_408_on_every_route() {
    runtime().block_on(async {
        let app = app(|c| c.server.body_idle_timeout = 1).await;
        let host = addr(&app);
        let service = app.service_role_key.clone();
        let anon = app.anon_key.clone();
        for (path, shape) in [
            ("/rest/v1/kv", "\"code\":\"PGRST000\""),
            (
                "/auth/v1/token?grant_type=password",
                "\"error_code\":\"request_timeout\"",
            ),
            ("/storage/v1/bucket", "\"statusCode\":\"408\""),
            ("/realtime/v1/api/broadcast", "\"message\""),
        ] {
            let mut stream = TcpStream::connect(&host).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\napikey: {anon}\r\n\
                 Authorization: Bearer {service}\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{\"a\":"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let answer = read_until_closed(&mut stream, Duration::from_secs(30)).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
            assert!(answer.contains(shape), "{path}: {answer}");
            assert!(
                answer.to_ascii_lowercase().contains("connection: close"),
                "{path}: {answer}"
            );
        }
    });
}

#[test]
fn connections_that_do_not_finish_their_headers_are_closed() {
    runtime().block_on(async {
        let app = app(|c| c.server.header_read_timeout = 1).await;
        let host = addr(&app);
        // Nothing at all.
        let mut silent = TcpStream::connect(&host).await.unwrap();
        let answer = read_until_closed(&mut silent, Duration::from_secs(30)).await;
        assert_eq!(answer, "");
        // Half a request line and a header, then nothing (slowloris); a
        // WebSocket handshake that stalls is the same.
        for partial in [
            "GET /rest/v1/kv HTTP/1.1\r\nHost: x\r\n".to_owned(),
            format!(
                "GET /realtime/v1/websocket?apikey={}&vsn=1.0.0 HTTP/1.1\r\n\
                 Host: x\r\nUpgrade: websocket\r\n",
                app.anon_key
            ),
        ] {
            let mut stream = TcpStream::connect(&host).await.unwrap();
            stream.write_all(partial.as_bytes()).await.unwrap();
            let answer = read_until_closed(&mut stream, Duration::from_secs(30)).await;
            assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
        }
        // A kept-alive connection that goes quiet after a request.
        let mut idle = TcpStream::connect(&host).await.unwrap();
        idle.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_until_closed(&mut idle, Duration::from_secs(30)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Requests that are sent in time are served as ever.
        let health = reqwest::get(format!("{}/health", app.url)).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    });
}
