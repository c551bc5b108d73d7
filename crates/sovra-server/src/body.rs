//! Request bodies that stop sending. Every request body is wrapped so
//! that a read which waits longer than `server.body_idle_timeout` for the
//! next bytes fails; the request is then answered with 408, in the error
//! shape of the service it was for, and its connection is closed. The
//! clock runs only while a handler waits for the client (not while it
//! works, say, on the database), and restarts with every chunk received,
//! so a slow but steady upload is never cut off, and a stalled one (an
//! authorised user's included) is.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use serde_json::json;

/// The error a stalled body's reader sees.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyIdle(pub Duration);

/// A body that fails when the client sends nothing for `timeout`.
pub struct IdleBody {
    inner: Body,
    timeout: Duration,
    /// Armed while a read waits; cleared by every frame.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    tripped: Arc<AtomicBool>,
}

impl IdleBody {
    pub fn new(inner: Body, timeout: Duration, tripped: Arc<AtomicBool>) -> IdleBody {
        IdleBody {
            inner,
            timeout,
            sleep: None,
            tripped,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(axum::Error::new(BodyIdle(this.timeout)))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.tripped.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new(BodyIdle(timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps the body, runs `next` with it, and answers 408 (closing the
/// connection) when the handler's read of it timed out. Part of the one
/// middleware inside the CORS layer (`front` in `lib.rs`).
pub(crate) async fn with_idle_timeout<F, Fut>(
    timeout: Duration,
    request: Request,
    next: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let tripped = Arc::new(AtomicBool::new(false));
    let path = request.uri().path().to_owned();
    let request = request.map(|body| Body::new(IdleBody::new(body, timeout, tripped.clone())));
    let response = next(request).await;
    if !tripped.load(Ordering::Relaxed) {
        return response;
    }
    tracing::info!(
        timeout_s = timeout.as_secs(),
        "request body idle: answered 408"
    );
    let message = format!(
        "The request body sent nothing for {} s (server.body_idle_timeout)",
        timeout.as_secs()
    );
    let body = if path.starts_with("/storage/") {
        json!({"statusCode": "408", "error": "request_timeout", "code": "RequestTimeout", "message": message})
    } else if path.starts_with("/auth/") {
        json!({"code": 408, "error_code": "request_timeout", "msg": message})
    } else if path.starts_with("/rest/") {
        json!({"code": "PGRST000", "details": null, "hint": null, "message": message})
    } else {
        json!({"message": message})
    };
    let mut response = (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    #[tokio::test]
    async fn a_body_that_stalls_fails_and_a_steady_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let tripped = Arc::new(AtomicBool::new(false));
        let body = IdleBody::new(
            Body::from_stream(stream),
            Duration::from_secs(2),
            tripped.clone(),
        );
        let mut data = Body::new(body).into_data_stream();
        // Chunks well within the timeout keep it alive, however long it
        // takes in total.
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
            assert_eq!(data.next().await.unwrap().unwrap(), "x");
        }
        assert!(!tripped.load(Ordering::Relaxed));
        // Then nothing: the read fails after the timeout.
        let err = data.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("sent nothing"), "{err}");
        assert!(tripped.load(Ordering::Relaxed));
        drop(tx);
    }
}
