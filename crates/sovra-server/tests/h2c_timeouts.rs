//! HTTP/2 without TLS (h2c, prior knowledge) gets the same header-read
//! timeout as HTTP/1: a connection that never completes a request's
//! headers, or sits idle between requests, is closed after
//! `header_read_timeout`. Driven with hand-written frames against
//! `serve_http` and a plain router; deadlines here only catch a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::routing::get;
use sovra_server::serve::{HttpOptions, serve_http};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET http://x{path}`: indexed `:method GET`, `:scheme http`,
/// then `:path` and `:authority` as literals with indexed names.
fn get_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b'x']);
    block
}

async fn server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        // A handler that takes two timeouts and more to answer, and a body
        // that takes as long to stream: both are in flight all along.
        .route(
            "/wait",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                "done"
            }),
        )
        .route(
            "/slow",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u8, |i| async move {
                    if i == 4 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    let chunk = bytes::Bytes::from(vec![b'a' + i]);
                    Some((Ok::<_, std::io::Error>(chunk), i + 1))
                });
                axum::body::Body::from_stream(chunks)
            }),
        );
    let options = HttpOptions {
        header_read_timeout: Duration::from_secs(1),
        per_client: None,
    };
    tokio::spawn(serve_http(listener, app, options, std::future::pending()));
    addr
}

async fn h2c(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    stream
}

/// Every frame the server sends until it closes the connection, as
/// (type, flags, stream, payload); fails if it is still open after a
/// minute (the timeout under test is one second).
async fn frames_until_closed(stream: &mut TcpStream) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the h2c connection open");
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let stream_id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        let end = (9 + len).min(rest.len());
        frames.push((rest[3], rest[4], stream_id, rest[9..end].to_vec()));
        rest = &rest[end..];
    }
    frames
}

#[tokio::test]
async fn an_h2c_connection_that_sends_no_request_is_closed() {
    let addr = server().await;
    let mut stream = h2c(&addr).await;
    let frames = frames_until_closed(&mut stream).await;
    assert!(
        !frames.iter().any(|f| f.0 == HEADERS),
        "no request, no response: {frames:?}"
    );
}

#[tokio::test]
async fn h2c_headers_that_never_end_are_closed() {
    let addr = server().await;
    let mut stream = h2c(&addr).await;
    // HEADERS without END_HEADERS: the CONTINUATION never comes.
    stream
        .write_all(&frame(HEADERS, 0, 1, &get_headers("/health")))
        .await
        .unwrap();
    let frames = frames_until_closed(&mut stream).await;
    assert!(!frames.iter().any(|f| f.0 == HEADERS), "{frames:?}");
}

#[tokio::test]
async fn h2c_requests_in_time_are_served_then_an_idle_connection_is_closed() {
    let addr = server().await;
    let mut stream = h2c(&addr).await;
    for id in [1, 3] {
        stream
            .write_all(&frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &get_headers("/health"),
            ))
            .await
            .unwrap();
    }
    let frames = frames_until_closed(&mut stream).await;
    for id in [1, 3] {
        // `:status 200` is entry 8 of HPACK's static table.
        assert!(
            frames
                .iter()
                .any(|f| f.0 == HEADERS && f.2 == id && f.3.first() == Some(&0x88)),
            "stream {id} answered 200: {frames:?}"
        );
    }
}

#[tokio::test]
async fn slow_h2c_answers_and_bodies_are_not_cut_off() {
    const DATA: u8 = 0x0;
    let addr = server().await;
    let mut stream = h2c(&addr).await;
    for (id, path) in [(1, "/wait"), (3, "/slow")] {
        stream
            .write_all(&frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &get_headers(path),
            ))
            .await
            .unwrap();
    }
    let frames = frames_until_closed(&mut stream).await;
    let body = |id: u32| {
        frames
            .iter()
            .filter(|f| f.0 == DATA && f.2 == id)
            .flat_map(|f| f.3.clone())
            .collect::<Vec<u8>>()
    };
    assert_eq!(body(1), b"done", "{frames:?}");
    assert_eq!(body(3), b"abcd", "{frames:?}");
}
