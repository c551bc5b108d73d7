//! `server.max_connections_per_client`: one client holds at most that many
//! open connections; a connection beyond it is closed before anything is
//! read, others' connections are not affected, and a closed connection
//! gives its place back. Driven against `serve_http` and a plain router
//! (the test's clients are all on loopback, which the cap normally leaves
//! alone, so it counts loopback here); deadlines here only catch a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::routing::get;
use sovra_server::connections::ClientConnections;
use sovra_server::serve::{HttpOptions, serve_http};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn server(limit: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    // Open until the client goes.
                    while let Some(Ok(_)) = socket.recv().await {}
                })
            }),
        );
    let options = HttpOptions {
        header_read_timeout: Duration::from_secs(5),
        per_client: Some(ClientConnections::new(limit, Vec::new()).counting_loopback()),
    };
    tokio::spawn(serve_http(listener, app, options, std::future::pending()));
    addr
}

/// Sends `request` on `stream`: `Some(status line)` when it is answered,
/// `None` when the server closed the connection instead.
async fn send(stream: &mut TcpStream, request: &str) -> Option<String> {
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server neither answered nor closed")
        .unwrap_or(0);
    (n > 0).then(|| {
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    })
}

/// One keep-alive `GET /` on `stream` (see [`send`]).
async fn ask(stream: &mut TcpStream) -> Option<String> {
    send(stream, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await
}

/// A WebSocket handshake on `stream` (see [`send`]).
async fn upgrade(stream: &mut TcpStream) -> Option<String> {
    send(
        stream,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
}

/// Waits until a new connection to `addr` is served again: a closed
/// connection's place came back.
async fn place_comes_back(addr: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpStream::connect(addr).await.unwrap();
        if let Some(status) = ask(&mut again).await {
            assert_eq!(status, "HTTP/1.1 200 OK");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_beyond_its_connections_is_closed_and_gets_a_place_back() {
    let addr = server(2).await;
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(ask(&mut first).await.as_deref(), Some("HTTP/1.1 200 OK"));
    assert_eq!(ask(&mut second).await.as_deref(), Some("HTTP/1.1 200 OK"));

    let mut third = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(ask(&mut third).await, None, "a third connection was served");

    // The first two still work (keep-alive), and closing one frees a place.
    assert_eq!(ask(&mut first).await.as_deref(), Some("HTTP/1.1 200 OK"));
    drop(first);
    place_comes_back(&addr).await;
    assert_eq!(ask(&mut second).await.as_deref(), Some("HTTP/1.1 200 OK"));
}

/// A WebSocket keeps its client's place for as long as it is open, though
/// the HTTP connection that accepted it has handed its socket over.
#[tokio::test]
async fn websockets_count_until_they_close() {
    let addr = server(2).await;
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    let switching = Some("HTTP/1.1 101 Switching Protocols".to_owned());
    assert_eq!(upgrade(&mut first).await, switching);
    assert_eq!(upgrade(&mut second).await, switching);
    // Upgraded sockets still hold both places.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(
        ask(&mut third).await,
        None,
        "a third connection was served beside two WebSockets"
    );
    drop(first);
    place_comes_back(&addr).await;
    drop(second);
}
