//! A local HTTP receiver that records what it gets and answers as told.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Inner {
    seen: Vec<Seen>,
    /// Statuses to answer `/flaky` with before 200, in order.
    flaky: Vec<u16>,
    /// When set, `/fail` answers 200 instead of 503.
    healed: bool,
    /// `/gate/*` requests being answered now, and the most there were.
    in_flight: usize,
    max_in_flight: usize,
    /// `/gate/*` requests are held until this many are in flight together
    /// (or `gate_total` have arrived in all).
    gate_width: usize,
    gate_total: usize,
    gate_seen: usize,
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}"),
            port,
            inner,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn seen_path(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.uri.split('?').next() == Some(path))
            .collect()
    }

    pub fn set_flaky(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().flaky = statuses.to_vec();
    }

    pub fn heal(&self) {
        self.inner.lock().unwrap().healed = true;
    }

    /// Holds `/gate/*` requests until `width` are in flight together, or
    /// until `total` have arrived (the last, smaller group).
    pub fn set_gate(&self, width: usize, total: usize) {
        let mut inner = self.inner.lock().unwrap();
        inner.gate_width = width;
        inner.gate_total = total;
    }

    /// The most `/gate/*` requests that were in flight together.
    pub fn max_in_flight(&self) -> usize {
        self.inner.lock().unwrap().max_in_flight
    }
}

/// Answers a `/gate/*` request once the gate opens (see [`Receiver::set_gate`]).
async fn gate(inner: Arc<Mutex<Inner>>) -> Response {
    {
        let mut inner = inner.lock().unwrap();
        inner.in_flight += 1;
        inner.gate_seen += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
    }
    loop {
        {
            let inner = inner.lock().unwrap();
            if inner.max_in_flight >= inner.gate_width || inner.gate_seen >= inner.gate_total {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Answered after the others of its group saw the gate open.
    tokio::time::sleep(Duration::from_millis(20)).await;
    inner.lock().unwrap().in_flight -= 1;
    "through".into_response()
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let (flaky, healed) = {
        let mut inner = inner.lock().unwrap();
        inner.seen.push(Seen {
            method: method.to_string(),
            uri: uri.to_string(),
            headers,
            body,
        });
        let flaky = if path == "/flaky" && !inner.flaky.is_empty() {
            Some(inner.flaky.remove(0))
        } else {
            None
        };
        (flaky, inner.healed)
    };
    if path.starts_with("/gate/") {
        return gate(inner).await;
    }
    match path.as_str() {
        "/flaky" => match flaky {
            Some(status) => (
                StatusCode::from_u16(status).unwrap(),
                [("retry-after", "0")],
                "not yet",
            )
                .into_response(),
            None => (StatusCode::OK, "finally").into_response(),
        },
        "/fail" if !healed => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late".into_response()
        }
        "/big" => "x".repeat(4096).into_response(),
        "/redirect" => (
            StatusCode::FOUND,
            [("location", "http://169.254.169.254/")],
            "",
        )
            .into_response(),
        _ => (
            StatusCode::OK,
            [("content-type", "application/json"), ("x-answer", "42")],
            r#"{"ok":true}"#,
        )
            .into_response(),
    }
}

/// Polls `query` (one row, one column that is true when done) until it is
/// true; panics after a minute.
pub async fn wait_until(client: &sovra_pg::tokio_postgres::Client, query: &str) {
    for _ in 0..600 {
        let done: bool = client.query_one(query, &[]).await.unwrap().get(0);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not done in time: {query}");
}

/// Waits until `f` is true; panics after a minute.
pub async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met in time");
}
