//! The layers every request passes before the routes, as two hand-written
//! services around the CORS layer: [`Front`] outside it, [`Inner`] inside.
//!
//! They were ten tower layers and `from_fn` middlewares. Each of those
//! boxed and moved the request and its future again, and axum cloned a
//! boxed service per middleware per request: about a quarter of the server's
//! CPU on a REST read went there (profile in `bench/RESULTS.md`, "REST's
//! front layers as two services"). Here a request is boxed twice.
//!
//! In order, outermost first:
//! - [`Front`]: the request id (a client's `x-request-id` is kept only when
//!   it is one safe id, [`crate::is_safe_request_id`]; otherwise a fresh
//!   one; the response carries it), the request's span and its `response`
//!   log line, a plain `OPTIONS` disguised so that CORS lets it through
//!   ([`PLAIN_OPTIONS`]), and a TUS `OPTIONS` given its headers
//!   ([`routes::tus_options`]);
//! - CORS ([`crate::cors`]);
//! - [`Inner`]: the plain `OPTIONS` method restored, the body's idle timeout
//!   (`server.body_idle_timeout`), the tenant ([`tenants::route`]), and a
//!   413 of `/rest/v1` in PostgREST's shape ([`routes::rest_body_limit`]);
//! - the routes.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use tower::{Service, ServiceExt};
use tower_http::cors::Cors;
use tracing::Instrument;

use crate::{AppState, REQUEST_ID, body, is_safe_request_id, routes, tenants};

/// The method a plain `OPTIONS` (one without `Access-Control-Request-Method`,
/// so not a CORS preflight) travels under through the CORS layer, which
/// would otherwise answer every `OPTIONS` itself: the routes answer it
/// (PostgREST's `Allow` of a relation or function).
const PLAIN_OPTIONS: &[u8] = b"SOVRA-PLAIN-OPTIONS";

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// The service outside CORS (see the module's documentation): every
/// request's way in ([`crate::App`]).
#[derive(Clone)]
pub struct Front {
    state: AppState,
    cors: Cors<Inner>,
}

impl Front {
    /// Every request's way to `router`.
    pub(crate) fn new(state: AppState, router: Router) -> Front {
        let inner = Inner {
            state: state.clone(),
            router,
        };
        Front {
            state,
            cors: tower::Layer::layer(&crate::cors(), inner),
        }
    }
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // CORS and `Inner` are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> BoxFuture {
        let started = Instant::now();
        let request_id = request_id(&mut request);
        // The path only: query strings can carry keys.
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = %request_id.to_str().unwrap_or(""),
        );
        disguise_plain_options(&mut request);
        let response: BoxFuture = if is_tus_options(&request) {
            // Rare: the tenant is looked up before CORS answers.
            let state = self.state.clone();
            let cors = self.cors.clone();
            Box::pin(async move {
                Ok(routes::tus_options(&state, request, |request| async move {
                    cors.oneshot(request)
                        .await
                        .unwrap_or_else(|never| match never {})
                })
                .await)
            })
        } else {
            let _entered = span.enter();
            Box::pin(self.cors.call(request))
        };
        Box::pin(
            async move {
                let Ok(mut response) = response.await;
                tracing::info!(
                    status = response.status().as_u16(),
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "response"
                );
                if !response.headers().contains_key(REQUEST_ID) {
                    response.headers_mut().insert(REQUEST_ID, request_id);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The service inside CORS (see the module's documentation).
#[derive(Clone)]
pub(crate) struct Inner {
    state: AppState,
    router: Router,
}

impl Service<Request> for Inner {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> BoxFuture {
        if request.method().as_str().as_bytes() == PLAIN_OPTIONS {
            *request.method_mut() = Method::OPTIONS;
        }
        let is_rest = request.uri().path().contains("/rest/v1");
        let state = self.state.clone();
        let router = self.router.clone();
        Box::pin(async move {
            let response = body::with_idle_timeout(state.body_idle_timeout, request, |request| {
                tenants::route(&state, request, |request| async move {
                    router
                        .oneshot(request)
                        .await
                        .unwrap_or_else(|never| match never {})
                })
            })
            .await;
            Ok(routes::rest_body_limit(is_rest, response))
        })
    }
}

/// The request's id: the client's, when it sent exactly one that is safe
/// to log and echo; otherwise a fresh one, which replaces whatever it sent.
fn request_id(request: &mut Request) -> HeaderValue {
    let ids = request.headers().get_all(REQUEST_ID);
    let mut iter = ids.iter();
    if let (Some(id), None) = (iter.next(), iter.next())
        && is_safe_request_id(id.as_bytes())
    {
        return id.clone();
    }
    let fresh = fresh_request_id();
    // `insert` replaces every value the client sent.
    request.headers_mut().insert(REQUEST_ID, fresh.clone());
    fresh
}

thread_local! {
    /// Per thread: a random key (from the OS once) and a counter.
    static ID_STATE: Cell<(u64, u64)> = Cell::new({
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        (high ^ low.rotate_left(17), 0)
    });
}

/// A version 4 UUID that is unique without a system call per request: a
/// thread's random key and counter through a bijective mixer (SplitMix64),
/// so ids never repeat within a thread and collide across threads or
/// restarts with the odds of random UUIDs. Request ids identify, they are
/// not secrets.
fn fresh_request_id() -> HeaderValue {
    let (key, count) = ID_STATE.with(|state| {
        let (key, count) = state.get();
        state.set((key, count.wrapping_add(1)));
        (key, count)
    });
    let high = mix(key ^ count);
    let low = mix(high ^ key.rotate_left(32) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let id =
        uuid::Builder::from_random_bytes((u128::from(high) << 64 | u128::from(low)).to_be_bytes())
            .into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut text).as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// SplitMix64's finaliser: a bijection on `u64`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn disguise_plain_options(request: &mut Request) {
    if request.method() == Method::OPTIONS
        && !request
            .headers()
            .contains_key(axum::http::header::ACCESS_CONTROL_REQUEST_METHOD)
        // TUS answers its own `OPTIONS` (with the CORS layer's reply).
        && !request.uri().path().contains("/storage/v1/upload/resumable")
        && let Ok(method) = Method::from_bytes(PLAIN_OPTIONS)
    {
        *request.method_mut() = method;
    }
}

fn is_tus_options(request: &Request) -> bool {
    request.method() == Method::OPTIONS
        && request
            .uri()
            .path()
            .contains("/storage/v1/upload/resumable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_distinct_safe_v4_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = fresh_request_id();
            assert!(is_safe_request_id(id.as_bytes()));
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert!(seen.insert(id), "a request id repeated");
        }
    }

    #[test]
    fn a_client_id_is_kept_only_when_it_is_one_safe_id() {
        let with = |ids: &[&str]| {
            let mut builder = Request::builder();
            for id in ids {
                builder = builder.header(REQUEST_ID, *id);
            }
            let mut request = builder.body(axum::body::Body::empty()).unwrap();
            let id = request_id(&mut request);
            let sent: Vec<_> = request
                .headers()
                .get_all(REQUEST_ID)
                .iter()
                .cloned()
                .collect();
            assert_eq!(sent, vec![id.clone()], "the request carries exactly its id");
            id
        };
        assert_eq!(with(&["abc-123"]), "abc-123");
        for refused in [&["a b"][..], &["x", "y"], &[""], &["\u{e9}t\u{e9}"]] {
            let id = with(refused);
            assert!(
                uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok(),
                "{refused:?}"
            );
        }
        assert!(uuid::Uuid::parse_str(with(&[]).to_str().unwrap()).is_ok());
    }
}
