//! The front end's files, embedded at compile time (`dashboard/dist`, or
//! the "not built" page when it was not built; see `build.rs`), served
//! with their content types, long caching for hashed assets, and a strict
//! content security policy.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};

static DIST: Dir<'static> = include_dir!("$DASHBOARD_DIST");

/// Everything the dashboard loads comes from Sovra itself: no inline
/// scripts, no other origin, not framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Whether the real front end was embedded (not the "not built" page).
pub fn built() -> bool {
    DIST.get_file("index.html")
        .is_some_and(|f| !String::from_utf8_lossy(f.contents()).contains("data-fallback"))
}

/// The content type of a file by its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, ext)| ext);
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Sets the headers every dashboard response carries.
pub fn secure_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// The file at `path` (relative to `/_/`): an asset by its name, and for
/// any other path without an extension the application's page (the front
/// end routes by path). Hashed assets (`assets/…`) are cached for a year;
/// the page is revalidated every time.
pub fn serve(path: &str) -> Response {
    let path = path.trim_start_matches('/');
    let (file, name) = match DIST.get_file(path) {
        Some(file) if !path.is_empty() => (Some(file), path),
        _ => {
            let last = path.rsplit('/').next().unwrap_or("");
            if path.starts_with("assets/") || last.contains('.') {
                (None, path)
            } else {
                (DIST.get_file("index.html"), "index.html")
            }
        }
    };
    let mut response = match file {
        Some(file) => {
            let cache = if name.starts_with("assets/") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            (
                [
                    (header::CONTENT_TYPE, content_type(name)),
                    (header::CACHE_CONTROL, cache),
                ],
                Body::from(file.contents()),
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found",
        )
            .into_response(),
    };
    secure_headers(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/app-1234.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type("assets/app-1234.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("logo.svg"), "image/svg+xml");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[test]
    fn the_page_is_served_for_routes_and_unknown_assets_are_not_found() {
        let page = serve("");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(page.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(serve("tables/public/items").status(), StatusCode::OK);
        assert_eq!(serve("assets/nope-0000.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("nope.png").status(), StatusCode::NOT_FOUND);
        assert!(CSP.contains("default-src 'self'"));
        assert!(!CSP.contains("unsafe-inline"));
    }

    #[test]
    fn hashed_assets_are_cached_for_a_year() {
        let asset = DIST
            .get_dir("assets")
            .and_then(|dir| dir.files().next())
            .map(|file| file.path().to_string_lossy().into_owned());
        // The "not built" page has no assets; the real build has some.
        if let Some(path) = asset {
            let response = serve(&path);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable"
            );
        } else {
            assert!(!built());
        }
    }
}
