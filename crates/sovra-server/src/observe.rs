//! Observability: logs, the request id, per-request metrics and the
//! Prometheus endpoint's registry.
//!
//! Logs carry method, route and status, never headers, query strings (the
//! realtime socket puts its key there), tokens or bodies.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sovra_config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber: text or JSON lines on stderr.
pub fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a terminal: a log file or collector gets plain
    // text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true);
    let _ = match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder. Installed once; later calls (more
/// servers in one test process) share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case
            // ours still renders what it records.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Counts every request by method, matched route and status, records its
/// latency, and keeps it in the [`request_log`]: the layer every route
/// has (`Router::route_layer`), so that the matched route is known. A
/// hand-written service, not a `from_fn` middleware, which would box and
/// clone the route once more per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Track;

impl<S> tower::Layer<S> for Track {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner }
    }
}

/// A route under [`Track`].
#[derive(Clone, Debug)]
pub struct Tracked<S> {
    inner: S,
}

impl<S> tower::Service<Request> for Tracked<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = method_label(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
        let tenant = request
            .extensions()
            .get::<crate::tenants::RoutedTenant>()
            .map_or_else(|| "default".to_owned(), |routed| routed.0.id.clone());
        let path = request.uri().path().to_owned();
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = response.await;
            let elapsed = started.elapsed().as_secs_f64();
            let status = response.status().as_u16();
            let at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            crate::traffic::traffic().record(&tenant, status, at_ms / 1000);
            metrics::counter!(
                "sovra_http_requests_total",
                "method" => method,
                "route" => route.clone(),
                "status" => status_label(status)
            )
            .increment(1);
            metrics::histogram!(
                "sovra_http_request_duration_seconds",
                "method" => method,
                "route" => route.clone()
            )
            .record(elapsed);
            request_log().push(LoggedRequest {
                at_ms,
                tenant,
                method: method.to_owned(),
                route,
                path,
                status,
                latency_ms: elapsed * 1000.0,
                request_id,
            });
            Ok(response)
        })
    }
}

/// A method as a metric label and in the request log: the standard ones by
/// name, any other as `OTHER` (a client choosing methods must not mint
/// label values without bound).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// A status code as a metric label, without formatting the common ones.
fn status_label(status: u16) -> metrics::SharedString {
    match status {
        200 => "200".into(),
        201 => "201".into(),
        204 => "204".into(),
        206 => "206".into(),
        304 => "304".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        other => other.to_string().into(),
    }
}

/// One request as the dashboard's Logs page shows it: no query string,
/// header, body, token or key.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LoggedRequest {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub tenant: String,
    pub method: String,
    /// The matched route (`/rest/v1/{*path}`).
    pub route: String,
    /// The path without its query (keys travel there), cut to
    /// [`MAX_LOGGED_PATH`] bytes.
    pub path: String,
    pub status: u16,
    pub latency_ms: f64,
    pub request_id: String,
}

/// Longest path kept in [`LoggedRequest::path`].
pub const MAX_LOGGED_PATH: usize = 256;

impl LoggedRequest {
    /// Bytes it holds, as [`RequestLog`] counts them.
    fn size(&self) -> usize {
        std::mem::size_of::<LoggedRequest>()
            + self.tenant.len()
            + self.method.len()
            + self.route.len()
            + self.path.len()
            + self.request_id.len()
    }
}

/// The recent requests of this process, bounded by count and by bytes:
/// the oldest go first.
#[derive(Debug)]
pub struct RequestLog {
    max_entries: usize,
    max_bytes: usize,
    entries: Mutex<(VecDeque<LoggedRequest>, usize)>,
}

impl RequestLog {
    pub fn new(max_entries: usize, max_bytes: usize) -> RequestLog {
        RequestLog {
            max_entries,
            max_bytes,
            entries: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// Keeps `entry` (its path cut to [`MAX_LOGGED_PATH`] bytes), dropping
    /// the oldest entries over either bound.
    pub fn push(&self, mut entry: LoggedRequest) {
        if entry.path.len() > MAX_LOGGED_PATH {
            let mut cut = MAX_LOGGED_PATH;
            while !entry.path.is_char_boundary(cut) {
                cut -= 1;
            }
            entry.path.truncate(cut);
        }
        let Ok(mut guard) = self.entries.lock() else {
            return;
        };
        let (entries, bytes) = &mut *guard;
        *bytes += entry.size();
        entries.push_back(entry);
        while entries.len() > self.max_entries || (*bytes > self.max_bytes && !entries.is_empty()) {
            if let Some(old) = entries.pop_front() {
                *bytes -= old.size();
            }
        }
    }

    /// The last `limit` requests of `tenant` (every tenant's when `None`),
    /// newest first.
    pub fn recent(&self, tenant: Option<&str>, limit: usize) -> Vec<LoggedRequest> {
        let Ok(guard) = self.entries.lock() else {
            return Vec::new();
        };
        guard
            .0
            .iter()
            .rev()
            .filter(|e| tenant.is_none_or(|t| e.tenant == t))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        self.entries
            .lock()
            .map_or((0, 0), |guard| (guard.0.len(), guard.1))
    }
}

/// This process's request log (every server in it shares it, as they
/// share the metrics recorder): the last 2,000 requests, at most 1 MiB.
pub fn request_log() -> &'static RequestLog {
    static LOG: OnceLock<RequestLog> = OnceLock::new();
    LOG.get_or_init(|| RequestLog::new(2000, 1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> LoggedRequest {
        LoggedRequest {
            at_ms: 1,
            tenant: "default".to_owned(),
            method: "GET".to_owned(),
            route: "/rest/v1/{*path}".to_owned(),
            path: path.to_owned(),
            status: 200,
            latency_ms: 1.5,
            request_id: "id".to_owned(),
        }
    }

    #[test]
    fn the_request_log_is_bounded_by_count_and_bytes() {
        let log = RequestLog::new(3, 1 << 20);
        for i in 0..5 {
            log.push(entry(&format!("/rest/v1/t{i}")));
        }
        let recent = log.recent(None, 10);
        assert_eq!(
            recent.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["/rest/v1/t4", "/rest/v1/t3", "/rest/v1/t2"]
        );
        assert_eq!(log.recent(None, 1).len(), 1);
        assert!(log.recent(Some("other"), 10).is_empty());

        let one = entry("/x").size();
        let small = RequestLog::new(100, one * 2);
        for _ in 0..10 {
            small.push(entry("/x"));
        }
        assert_eq!(small.usage(), (2, one * 2));
        // One entry bigger than the bound is not kept.
        let tiny = RequestLog::new(100, 8);
        tiny.push(entry("/x"));
        assert_eq!(tiny.usage(), (0, 0));
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let log = RequestLog::new(10, 1 << 20);
        log.push(entry(&"é".repeat(300)));
        let path = &log.recent(None, 1)[0].path;
        assert!(path.len() <= MAX_LOGGED_PATH && path.len() >= MAX_LOGGED_PATH - 1);
        assert!(path.chars().all(|c| c == 'é'));
    }
}

#[cfg(test)]
mod track_tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for made_up in ["FOO", "BAR1", "SOVRA-PLAIN-OPTIONS"] {
            let method = Method::from_bytes(made_up.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "OTHER", "{made_up}");
        }
        assert_eq!(status_label(200).as_ref(), "200");
        assert_eq!(status_label(418).as_ref(), "418");
    }
}
