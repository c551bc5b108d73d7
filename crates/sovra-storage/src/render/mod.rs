//! `/render/image/{public|authenticated|sign}/{bucket}/{key}`: image
//! transformations as Supabase Storage serves them (resize, quality,
//! format), done in process with the pure-Rust `image` crate instead of
//! an imgproxy beside the server.
//!
//! Who may read what is decided exactly as for downloads: public buckets
//! by anyone, `authenticated` as the caller under RLS, `sign` by a token
//! that also carries the transformation. Renderings run on blocking
//! threads, at most `storage.image.concurrency` at once, each on a source
//! of bounded size whose declared dimensions are checked before decoding;
//! results are kept in a disk cache with a size cap ([`cache`]).

mod cache;
pub mod transform;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::backend::WriteError;
use crate::error::StorageError;
use crate::object::{self, StoredObject};
use crate::{Ctx, Principal, bucket_key, names, not_allowed};
use transform::{Format, RenderError, Source, Transform};

/// Settings of image transformations.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    pub enabled: bool,
    /// Largest width or height asked for; larger ones are clamped.
    pub max_dimension: u32,
    /// Most pixels a source image may declare.
    pub max_pixels: u64,
    /// Largest source object, in bytes.
    pub max_source_size: u64,
    /// Renderings running at once (each on a blocking thread).
    pub concurrency: usize,
    /// Where renderings are cached; none: not cached.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the cache keeps (0: nothing).
    pub cache_size: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            enabled: true,
            max_dimension: 2500,
            max_pixels: 25_000_000,
            max_source_size: 25 * 1024 * 1024,
            concurrency: 2,
            cache_dir: None,
            cache_size: 0,
        }
    }
}

/// The rendering slots and the cache, shared by every tenant that uses
/// the same cache directory (that is: one server's tenants).
#[derive(Debug)]
pub(crate) struct Renderer {
    config: ImageConfig,
    slots: Arc<tokio::sync::Semaphore>,
    cache: Option<cache::DiskCache>,
    /// Renderings in progress, by cache key.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
}

/// The outcome of one rendering, shared by the requests that wait for it.
type Flight = tokio::sync::OnceCell<Result<(Bytes, transform::Output), StorageError>>;

type Registry = Mutex<HashMap<PathBuf, Weak<Renderer>>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Renderer {
    /// The renderer for `config`: the one already serving its cache
    /// directory, or a new one.
    pub(crate) fn shared(config: &ImageConfig) -> Arc<Renderer> {
        let make = || {
            let cache = config
                .cache_dir
                .as_ref()
                .filter(|_| config.cache_size > 0)
                .map(|dir| {
                    if let Err(err) = private_dir(dir) {
                        tracing::warn!(error = %err, dir = %dir.display(), "cannot create the image cache directory");
                    }
                    cache::DiskCache::new(dir.clone(), config.cache_size)
                });
            Arc::new(Renderer {
                config: config.clone(),
                slots: Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1))),
                cache,
                flights: Mutex::new(HashMap::new()),
            })
        };
        let Some(dir) = config.cache_dir.clone() else {
            return make();
        };
        let mut shared = registry()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.retain(|_, renderer| renderer.strong_count() > 0);
        if let Some(renderer) = shared.get(&dir).and_then(Weak::upgrade) {
            return renderer;
        }
        let renderer = make();
        shared.insert(dir, Arc::downgrade(&renderer));
        renderer
    }
}

impl Renderer {
    async fn cached(&self, key: &str) -> Option<(Vec<u8>, transform::Output)> {
        match &self.cache {
            Some(cache) => cache.get(key).await,
            None => None,
        }
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        self.flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rendering of `key` in progress, or a new one.
    fn flight(&self, key: &str) -> Arc<Flight> {
        self.flights()
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Flight::new()))
            .clone()
    }

    /// Forgets a finished rendering (later requests find the cache).
    fn land(&self, key: &str, flight: &Arc<Flight>) {
        let mut flights = self.flights();
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }
}

/// Forgets a rendering in progress when the request that waited for it
/// ends (answered or cancelled).
struct Landing<'a> {
    renderer: &'a Renderer,
    key: &'a str,
    flight: Arc<Flight>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.renderer.land(self.key, &self.flight);
    }
}

fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// `GET`/`HEAD /render/image/…`; `rest` is what follows `image`.
pub(crate) async fn route(ctx: &Ctx<'_>, rest: &[&str]) -> Result<Response, StorageError> {
    if *ctx.method != Method::GET && *ctx.method != Method::HEAD {
        return Err(not_allowed());
    }
    let renderer = &ctx.service.renderer;
    if !renderer.config.enabled {
        return Err(StorageError::feature_not_enabled("imageTransformation"));
    }
    let max = renderer.config.max_dimension;
    let Some((kind, path)) = rest.split_first() else {
        return Err(StorageError::route_not_found());
    };
    match *kind {
        "public" | "authenticated" => {
            let transform = Transform::from_pairs(
                ctx.query
                    .iter()
                    .map(|(k, v)| (k.as_str(), Value::String(v.clone()))),
                Source::Query,
                max,
            )
            .map_err(|err| StorageError::invalid(err.0))?;
            let (bucket, key) = bucket_key(path)?;
            let object = object::find_readable(ctx, &bucket, &key, *kind == "public").await?;
            respond(ctx, &object, &transform, None).await
        }
        "sign" => {
            let (bucket, key) = bucket_key(path)?;
            let url = format!("{bucket}/{key}");
            let (claims, exp) = crate::sign::verify(ctx, ctx.query("token"), &url, "download")?;
            let transform = Transform::from_signed(
                claims
                    .get("transformations")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                claims.get("format").and_then(Value::as_str),
                max,
            );
            let object = object::find(ctx, &Principal::service(), &bucket, &key).await?;
            respond(ctx, &object, &transform, Some(exp)).await
        }
        _ => Err(StorageError::route_not_found()),
    }
}

/// The transformation of a `createSignedUrl` body (`transform`), when
/// transformations are on and it asks for any: what goes into the token
/// (`transformations`, `format`).
pub(crate) fn signed_claims(
    ctx: &Ctx<'_>,
    body: &Value,
) -> Result<Option<(String, String)>, StorageError> {
    let renderer = &ctx.service.renderer;
    let Some(options) = body.get("transform").and_then(Value::as_object) else {
        return Ok(None);
    };
    if !renderer.config.enabled || options.is_empty() {
        return Ok(None);
    }
    let transform = Transform::from_pairs(
        options.iter().map(|(k, v)| (k.as_str(), v.clone())),
        Source::Body,
        renderer.config.max_dimension,
    )
    .map_err(|err| StorageError::invalid(err.0))?;
    let format = options
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // Storage renders only when the transformation says something
    // (`{format: "origin"}` alone signs a plain download URL).
    let transformations = transform.to_signed();
    if transformations.is_empty() {
        return Ok(None);
    }
    Ok(Some((transformations, format)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders (or finds in the cache) `object` transformed, with the
/// headers of a download: `Cache-Control` as stored (or `Expires` for a
/// signed URL), an `ETag` of this rendering, `Last-Modified` of the
/// object; `If-None-Match` gives 304 without rendering.
async fn respond(
    ctx: &Ctx<'_>,
    object: &StoredObject,
    transform: &Transform,
    expires: Option<i64>,
) -> Result<Response, StorageError> {
    use sha2::Digest as _;
    let renderer = &ctx.service.renderer;
    let negotiated = transform.format == Format::Auto;
    let accepts_webp = negotiated && transform::accepts_webp(ctx.header("accept"));
    let mut hash = sha2::Sha256::new();
    for part in [
        ctx.service.tenant.as_str(),
        object.version.as_str(),
        &transform.cache_text(),
        if accepts_webp { "webp" } else { "" },
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let key = hex(&hash.finalize());
    let etag = format!("\"{}\"", &key[..32]);
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(object.modified.max(0.0).floor() as u64);

    let mut headers = axum::http::HeaderMap::new();
    let mut put = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    match expires {
        Some(exp) => put(
            header::EXPIRES,
            &httpdate::fmt_http_date(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
            ),
        ),
        None => put(header::CACHE_CONTROL, &object.cache_control),
    }
    put(header::ETAG, &etag);
    put(header::LAST_MODIFIED, &httpdate::fmt_http_date(modified));
    if negotiated {
        put(header::VARY, "Accept");
    }
    let applied = transform.header();
    if !applied.is_empty() {
        put(
            header::HeaderName::from_static("x-transformations"),
            &applied,
        );
    }
    put(
        header::HeaderName::from_static("x-content-type-options"),
        "nosniff",
    );
    put(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox",
    );
    put(header::HeaderName::from_static("x-robots-tag"), "none");
    if let Some(name) = ctx.query("download") {
        put(
            header::CONTENT_DISPOSITION,
            &names::content_disposition(name),
        );
    }
    let not_modified = ctx.header("if-none-match").is_some_and(|tags| {
        tags.split(',').any(|t| {
            let t = t.trim().trim_start_matches("W/");
            t == "*" || t == etag
        })
    });
    if not_modified {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().extend(headers);
        return Ok(response);
    }

    let (bytes, format, hit) = match renderer.cached(&key).await {
        Some((bytes, format)) => (Bytes::from(bytes), format, true),
        None => {
            // One rendering per key at a time: requests that miss while
            // it runs wait for it and share its result.
            let flight = renderer.flight(&key);
            // Forgotten when this request ends, however it ends.
            let _landing = Landing {
                renderer,
                key: &key,
                flight: flight.clone(),
            };
            let mut rendered_here = false;
            let result = flight
                .get_or_init(|| async {
                    // It may have landed in the cache since we looked.
                    if let Some((bytes, format)) = renderer.cached(&key).await {
                        return Ok((Bytes::from(bytes), format));
                    }
                    rendered_here = true;
                    let rendered = render_object(ctx, object, transform, accepts_webp).await?;
                    if let Some(cache) = &renderer.cache {
                        cache.put(&key, rendered.format, &rendered.bytes).await;
                    }
                    Ok((Bytes::from(rendered.bytes), rendered.format))
                })
                .await
                .clone();
            let (bytes, format) = result?;
            (bytes, format, !rendered_here)
        }
    };
    put(header::CONTENT_TYPE, format.mime());
    put(header::CONTENT_LENGTH, &bytes.len().to_string());
    put(
        header::HeaderName::from_static("x-sovra-cache"),
        if hit { "hit" } else { "miss" },
    );
    let body = if *ctx.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().extend(headers);
    Ok(response)
}

/// Reads the object's bytes (bounded) and renders them on a blocking
/// thread, holding one of the rendering slots throughout.
async fn render_object(
    ctx: &Ctx<'_>,
    object: &StoredObject,
    transform: &Transform,
    accepts_webp: bool,
) -> Result<transform::Rendered, StorageError> {
    let renderer = &ctx.service.renderer;
    let limit = renderer.config.max_source_size;
    if object.size > limit {
        return Err(StorageError::image_processing(format!(
            "Source image file is too big (more than {limit} bytes)"
        )));
    }
    let wait = ctx.service.config.io_wait;
    let permit = tokio::time::timeout(wait, renderer.slots.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(StorageError::busy)?;
    let path = ctx.service.backend.object_path(&object.version);
    let download = ctx
        .service
        .backend
        .read(&path, None)
        .await
        .map_err(|err| match err {
            WriteError::Store(object_store::Error::NotFound { .. }) => {
                StorageError::object_not_found()
            }
            WriteError::Busy => StorageError::busy(),
            err => {
                tracing::error!(error = %err, "could not read stored bytes");
                StorageError::internal()
            }
        })?;
    let mut source = Vec::with_capacity(usize::try_from(download.size.min(limit)).unwrap_or(0));
    let mut stream = download.stream;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            tracing::error!(error = %err, "could not read stored bytes");
            StorageError::internal()
        })?;
        if (source.len() + chunk.len()) as u64 > limit {
            return Err(StorageError::image_processing(format!(
                "Source image file is too big (more than {limit} bytes)"
            )));
        }
        source.extend_from_slice(&chunk);
    }
    let transform = transform.clone();
    let limits = transform::Limits {
        max_pixels: renderer.config.max_pixels,
    };
    let result = tokio::task::spawn_blocking(move || {
        let result = transform::render(&source, &transform, accepts_webp, limits);
        drop(permit);
        result
    })
    .await
    .map_err(|err| {
        tracing::error!(error = %err, "an image rendering failed");
        StorageError::internal()
    })?;
    result.map_err(|err| match err {
        RenderError::Unsupported => {
            StorageError::image_processing("Source image type not supported")
        }
        RenderError::TooManyPixels => StorageError::image_processing(format!(
            "Source image resolution is too big (more than {} pixels)",
            renderer.config.max_pixels
        )),
        RenderError::Invalid(reason) => {
            tracing::debug!(%reason, "an image could not be decoded");
            StorageError::image_processing("Invalid source image")
        }
    })
}
