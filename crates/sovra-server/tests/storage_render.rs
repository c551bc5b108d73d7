//! `/storage/v1/render/image/…` through the real router on a real
//! database: each resize mode (output decoded and measured), quality,
//! WebP by `Accept`, who may render what (public buckets, RLS, signed
//! URLs carrying the transformation), refusals (bad options, a
//! decompression bomb, a non-image) and the disk cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::TestApp;

struct St {
    app: TestApp,
    http: reqwest::Client,
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    bytes: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// Whether a `Vary` header names `Accept` (the CORS layer adds its own).
    fn varies_by_accept(&self) -> bool {
        self.headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case("accept"))
    }
    /// Decodes the body as an image and returns its size.
    fn dimensions(&self) -> (u32, u32) {
        let image = image::load_from_memory(&self.bytes).unwrap_or_else(|err| {
            panic!(
                "not an image ({err}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        });
        (image.width(), image.height())
    }
    /// Asserts a storage error: HTTP 400, then its logical status and code.
    fn refused(&self, logical: &str, code: &str) {
        assert_eq!(self.status, StatusCode::BAD_REQUEST, "{:?}", self.json());
        assert_eq!(self.json()["statusCode"], logical, "{:?}", self.json());
        assert_eq!(self.json()["code"], code, "{:?}", self.json());
    }
}

const POLICIES: &str = "
  create policy own_select on storage.objects for select to authenticated
    using (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
  create policy own_insert on storage.objects for insert to authenticated
    with check (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
";

impl St {
    async fn new() -> St {
        St::with(sovra_config::Config::default()).await
    }

    async fn with(config: sovra_config::Config) -> St {
        let st = St {
            app: TestApp::spawn_with(config).await,
            http: reqwest::Client::new(),
        };
        st.app
            .db
            .client()
            .await
            .batch_execute(POLICIES)
            .await
            .unwrap();
        for (id, public) in [("pub", true), ("private", false)] {
            let reply = st
                .call(
                    Method::POST,
                    "/bucket",
                    Some(&st.app.service_role_key),
                    Some(json!({"id": id, "name": id, "public": public})),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        }
        st
    }

    fn user(&self) -> (String, String) {
        let id = uuid::Uuid::new_v4().to_string();
        let token = self.app.sign(Value::Object(TestApp::user_claims(&id)));
        (id, token)
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}/storage/v1{path}", self.app.url))
            .header("apikey", &self.app.anon_key);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn send(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.unwrap();
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            bytes: response.bytes().await.unwrap(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        St::send(request).await
    }

    async fn upload(&self, path: &str, token: &str, body: Vec<u8>, mime: &str) {
        let reply = St::send(
            self.request(Method::POST, &format!("/object/{path}"), Some(token))
                .header("content-type", mime)
                .header("x-upsert", "true")
                .header("cache-control", "max-age=600")
                .body(body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    }

    async fn get(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.request(Method::GET, path, token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        St::send(request).await
    }

    fn service(&self) -> String {
        self.app.service_role_key.clone()
    }
}

/// A PNG of `width` x `height` with a colour pattern (opaque).
fn png(width: u32, height: u32, tint: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, tint])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A JPEG of `width` x `height` with detail (so that quality matters).
fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let v = (x.wrapping_mul(7919) ^ y.wrapping_mul(104_729)).wrapping_mul(2_654_435_761);
        image::Rgb([(v >> 24) as u8, (v >> 16) as u8, ((x + y) % 256) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(&image)
        .unwrap();
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A valid PNG header claiming 50,000 x 50,000 RGBA pixels (10 GB
/// decoded) with almost no data: a decompression bomb's signature.
fn bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    out.extend(chunk(b"IHDR", &ihdr));
    // zlib stream of a few zero bytes.
    out.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    ));
    out.extend(chunk(b"IEND", &[]));
    out
}

#[tokio::test]
async fn each_resize_mode_gives_storage_dimensions() {
    let st = St::new().await;
    st.upload("pub/a.png", &st.service(), png(400, 300, 10), "image/png")
        .await;
    let base = "/render/image/public/pub/a.png";
    for (query, expected) in [
        // cover (the default): fill the box, crop the centre.
        ("width=100&height=100", (100, 100)),
        ("width=100&height=100&resize=cover", (100, 100)),
        // contain: fit inside the box.
        ("width=100&height=100&resize=contain", (100, 75)),
        // fill: stretch to the box.
        ("width=100&height=50&resize=fill", (100, 50)),
        // One side: the other keeps the aspect ratio.
        ("width=200", (200, 150)),
        ("height=60&resize=fill", (80, 60)),
        // Never enlarged (imgproxy's default, as Storage runs it).
        ("width=800", (400, 300)),
        ("width=800&height=100", (400, 100)),
        // Sizes above the limit are clamped, 0 means not given.
        ("width=99999&height=0", (400, 300)),
        // No size: the image as it is (re-encoded).
        ("quality=90", (400, 300)),
    ] {
        let reply = st.get(&format!("{base}?{query}"), None, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {:?}", reply.json());
        assert_eq!(reply.dimensions(), expected, "{query}");
        assert_eq!(reply.header("content-type"), "image/png", "{query}");
    }
    let reply = st
        .get(&format!("{base}?width=100&height=100"), None, &[])
        .await;
    assert_eq!(
        reply.header("x-transformations"),
        "height:100,width:100,resizing_type:fill"
    );
    assert_eq!(reply.header("cache-control"), "max-age=600");
    assert!(reply.header("etag").starts_with('"'));
    assert!(!reply.header("last-modified").is_empty());
    assert!(reply.varies_by_accept());
    assert_eq!(
        reply.header("content-length"),
        reply.bytes.len().to_string()
    );
    // `download` as for downloads; HEAD sends the headers alone.
    let reply = st
        .get(&format!("{base}?width=50&download=small.png"), None, &[])
        .await;
    assert!(
        reply
            .header("content-disposition")
            .starts_with("attachment")
    );
    let head = St::send(st.request(Method::HEAD, &format!("{base}?width=50"), None)).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.bytes.is_empty());
    assert_eq!(head.header("content-type"), "image/png");
}

#[tokio::test]
async fn quality_and_format_follow_the_options_and_accept() {
    let st = St::new().await;
    st.upload("pub/photo.jpg", &st.service(), jpeg(300, 200), "image/jpeg")
        .await;
    st.upload("pub/art.png", &st.service(), png(300, 200, 99), "image/png")
        .await;
    let photo = "/render/image/public/pub/photo.jpg?width=200";
    let low = st.get(&format!("{photo}&quality=20"), None, &[]).await;
    let high = st.get(&format!("{photo}&quality=95"), None, &[]).await;
    let default = st.get(photo, None, &[]).await;
    for reply in [&low, &high, &default] {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        assert_eq!(reply.header("content-type"), "image/jpeg");
        assert_eq!(reply.dimensions(), (200, 133));
    }
    assert!(
        low.bytes.len() < default.bytes.len() && default.bytes.len() < high.bytes.len(),
        "quality 20 {} < 80 {} < 95 {}",
        low.bytes.len(),
        default.bytes.len(),
        high.bytes.len()
    );
    let browser = [("accept", "image/avif,image/webp,image/apng,*/*;q=0.8")];
    // A PNG becomes WebP when the client accepts it ...
    let art = "/render/image/public/pub/art.png?width=150";
    let webp = st.get(art, None, &browser).await;
    assert_eq!(webp.header("content-type"), "image/webp");
    assert_eq!(
        image::guess_format(&webp.bytes).unwrap(),
        image::ImageFormat::WebP
    );
    assert_eq!(webp.dimensions(), (150, 100));
    // ... not without `Accept`, nor with `format=origin`.
    let plain = st.get(art, None, &[]).await;
    assert_eq!(plain.header("content-type"), "image/png");
    let origin = st
        .get(&format!("{art}&format=origin"), None, &browser)
        .await;
    assert_eq!(origin.header("content-type"), "image/png");
    assert!(!origin.varies_by_accept());
    assert!(webp.varies_by_accept());
    assert_ne!(origin.header("etag"), webp.header("etag"));
    // A JPEG stays JPEG by negotiation (the WebP encoder is lossless),
    // and becomes WebP when asked for; `avif` is served as WebP.
    let negotiated = st.get(photo, None, &browser).await;
    assert_eq!(negotiated.header("content-type"), "image/jpeg");
    for format in ["webp", "avif"] {
        let asked = st.get(&format!("{photo}&format={format}"), None, &[]).await;
        assert_eq!(asked.header("content-type"), "image/webp", "{format}");
        assert_eq!(asked.dimensions(), (200, 133));
    }
}

#[tokio::test]
async fn access_follows_buckets_and_rls() {
    let st = St::new().await;
    let (alice, alice_token) = st.user();
    let (_, bob_token) = st.user();
    let key = format!("private/{alice}/pic.png");
    st.upload(&key, &alice_token, png(120, 80, 1), "image/png")
        .await;
    // Public rendering of a private bucket: Storage's "Bucket not found".
    st.get(&format!("/render/image/public/{key}?width=10"), None, &[])
        .await
        .refused("404", "NoSuchBucket");
    // The owner renders it; RLS hides it from others and from anon.
    let path = format!("/render/image/authenticated/{key}?width=60");
    let own = st.get(&path, Some(&alice_token), &[]).await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.json());
    assert_eq!(own.dimensions(), (60, 40));
    st.get(&path, Some(&bob_token), &[])
        .await
        .refused("404", "NoSuchKey");
    st.get(&path, None, &[]).await.refused("404", "NoSuchKey");
    // Without any credential: Storage's JWT error.
    let bare = St::send(st.http.get(format!("{}/storage/v1{path}", st.app.url))).await;
    bare.refused("403", "AccessDenied");
    // Missing objects and buckets.
    st.get("/render/image/public/pub/none.png", None, &[])
        .await
        .refused("404", "NoSuchKey");
    st.get("/render/image/public/nobucket/x.png", None, &[])
        .await
        .refused("404", "NoSuchBucket");
    // Only GET and HEAD; unknown kinds are unknown routes.
    let post = st
        .call(Method::POST, &path, Some(&alice_token), Some(json!({})))
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    let other = st
        .get(&format!("/render/image/other/{key}"), None, &[])
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn signed_urls_carry_the_transformation() {
    let st = St::new().await;
    let (alice, alice_token) = st.user();
    let (_, bob_token) = st.user();
    let key = format!("{alice}/pic.png");
    st.upload(
        &format!("private/{key}"),
        &alice_token,
        png(400, 300, 7),
        "image/png",
    )
    .await;
    let sign = |token: String, body: Value| {
        let path = format!("/object/sign/private/{key}");
        let st = &st;
        async move { st.call(Method::POST, &path, Some(&token), Some(body)).await }
    };
    let made = sign(
        alice_token.clone(),
        json!({"expiresIn": 60, "transform": {"width": 50, "height": 50, "resize": "contain", "quality": 70}}),
    )
    .await;
    assert_eq!(made.status, StatusCode::OK, "{:?}", made.json());
    let url = made.json()["signedURL"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("/render/image/sign/private/{key}?token=")),
        "{url}"
    );
    // The transformation is in the token (Storage's claim format).
    let token = url.split("token=").nth(1).unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["transformations"],
        "height:50,width:50,resize:contain,quality:70"
    );
    assert_eq!(claims["url"], format!("private/{key}"));
    // Anyone with the URL gets the transformed image; query options
    // cannot change it.
    let rendered = st.get(&format!("{url}&width=10"), None, &[]).await;
    assert_eq!(rendered.status, StatusCode::OK, "{:?}", rendered.json());
    assert_eq!(rendered.dimensions(), (50, 38));
    assert!(!rendered.header("expires").is_empty());
    assert_eq!(rendered.header("cache-control"), "");
    // A tampered token (other options, same signature) is refused.
    let mut forged = claims.clone();
    forged["transformations"] = json!("height:300,width:400,resize:fill");
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&forged).unwrap());
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    st.get(
        &format!("/render/image/sign/private/{key}?token={tampered}"),
        None,
        &[],
    )
    .await
    .refused("400", "InvalidJWT");
    // The token is for that object only.
    st.get(
        &format!("/render/image/sign/private/{alice}/other.png?token={token}"),
        None,
        &[],
    )
    .await
    .refused("400", "InvalidSignature");
    st.get(&format!("/render/image/sign/private/{key}"), None, &[])
        .await
        .refused("400", "InvalidJWT");
    // Signing needs read access; bad options are refused at signing.
    let refused = sign(
        bob_token,
        json!({"expiresIn": 60, "transform": {"width": 50}}),
    )
    .await;
    assert_eq!(refused.json()["statusCode"], "404", "{:?}", refused.json());
    let bad = sign(
        alice_token.clone(),
        json!({"expiresIn": 60, "transform": {"quality": 5}}),
    )
    .await;
    bad.refused("400", "InvalidRequest");
    assert_eq!(
        bad.json()["message"],
        "body/transform/quality must be >= 20"
    );
    // Without a transformation (or with only `format: origin`, which
    // Storage does not sign into the token): a plain download URL.
    for transform in [json!({}), json!({"format": "origin"})] {
        let plain = sign(
            alice_token.clone(),
            json!({"expiresIn": 60, "transform": transform}),
        )
        .await;
        assert!(
            plain.json()["signedURL"]
                .as_str()
                .unwrap()
                .starts_with("/object/sign/"),
            "{:?}",
            plain.json()
        );
    }
}

#[tokio::test]
async fn bad_options_bombs_and_non_images_are_refused() {
    let st = St::new().await;
    st.upload("pub/a.png", &st.service(), png(40, 30, 3), "image/png")
        .await;
    for (query, message) in [
        ("quality=5", "querystring/quality must be >= 20"),
        ("quality=101", "querystring/quality must be <= 100"),
        ("width=-3", "querystring/width must be >= 0"),
        ("height=tall", "querystring/height must be integer"),
        (
            "resize=stretch",
            "querystring/resize must be equal to one of the allowed values",
        ),
        (
            "format=bmp",
            "querystring/format must be equal to one of the allowed values",
        ),
    ] {
        let reply = st
            .get(
                &format!("/render/image/public/pub/a.png?{query}"),
                None,
                &[],
            )
            .await;
        reply.refused("400", "InvalidRequest");
        assert_eq!(reply.json()["message"], message, "{query}");
    }
    // A tiny file that claims 50,000 x 50,000 pixels is refused from its
    // header, before any pixel buffer exists.
    st.upload("pub/bomb.png", &st.service(), bomb(), "image/png")
        .await;
    let reply = st
        .get("/render/image/public/pub/bomb.png?width=10", None, &[])
        .await;
    reply.refused("422", "InvalidRequest");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("Source image resolution is too big"),
        "{:?}",
        reply.json()
    );
    // Not an image (whatever its declared type says).
    st.upload(
        "pub/notes.png",
        &st.service(),
        b"just text".to_vec(),
        "image/png",
    )
    .await;
    let reply = st
        .get("/render/image/public/pub/notes.png?width=10", None, &[])
        .await;
    reply.refused("422", "InvalidRequest");
    assert_eq!(reply.json()["message"], "Source image type not supported");
    // A truncated image.
    let mut broken = png(40, 30, 3);
    broken.truncate(broken.len() / 2);
    st.upload("pub/broken.png", &st.service(), broken, "image/png")
        .await;
    st.get("/render/image/public/pub/broken.png?width=10", None, &[])
        .await
        .refused("422", "InvalidRequest");
    // The server still renders after all that.
    let reply = st
        .get("/render/image/public/pub/a.png?width=20", None, &[])
        .await;
    assert_eq!(reply.dimensions(), (20, 15));
}

#[tokio::test]
async fn renderings_are_cached_and_invalidated_by_updates() {
    let st = St::new().await;
    st.upload("pub/c.png", &st.service(), png(200, 100, 1), "image/png")
        .await;
    let path = "/render/image/public/pub/c.png?width=100";
    let first = st.get(path, None, &[]).await;
    assert_eq!(first.header("x-sovra-cache"), "miss");
    assert_eq!(first.dimensions(), (100, 50));
    let second = st.get(path, None, &[]).await;
    assert_eq!(second.header("x-sovra-cache"), "hit");
    assert_eq!(second.bytes, first.bytes);
    assert_eq!(second.header("etag"), first.header("etag"));
    assert_eq!(second.header("content-type"), "image/png");
    let cached = walk(&st.app.data_dir.join("cache").join("images"));
    assert_eq!(cached.len(), 1, "{cached:?}");
    // Another transformation is another entry.
    let other = st
        .get("/render/image/public/pub/c.png?width=40", None, &[])
        .await;
    assert_eq!(other.header("x-sovra-cache"), "miss");
    // A client holding the ETag gets 304 without a rendering.
    let etag = first.header("etag").to_owned();
    let revalidated = st.get(path, None, &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.bytes.is_empty());
    // Requests for a rendering not made yet, all at once: one renders,
    // the others wait for it (or find it in the cache).
    let path_40 = "/render/image/public/pub/c.png?width=30";
    let replies = futures_util::future::join_all((0..6).map(|_| st.get(path_40, None, &[]))).await;
    let misses = replies
        .iter()
        .filter(|r| r.header("x-sovra-cache") == "miss")
        .count();
    assert_eq!(misses, 1);
    for reply in &replies {
        assert_eq!(reply.dimensions(), (30, 15));
        assert_eq!(reply.bytes, replies[0].bytes);
    }
    // The object changes: the old rendering is never served again.
    st.upload("pub/c.png", &st.service(), png(100, 200, 2), "image/png")
        .await;
    let updated = st.get(path, None, &[]).await;
    assert_eq!(updated.header("x-sovra-cache"), "miss");
    assert_eq!(updated.dimensions(), (100, 200));
    assert_ne!(updated.header("etag"), etag);
    let stale = st.get(path, None, &[("if-none-match", &etag)]).await;
    assert_eq!(stale.status, StatusCode::OK);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn turned_off_transformations_answer_feature_not_enabled() {
    let mut config = sovra_config::Config::default();
    config.storage.image.enabled = false;
    let st = St::with(config).await;
    st.upload("pub/a.png", &st.service(), png(40, 30, 3), "image/png")
        .await;
    let reply = st
        .get("/render/image/public/pub/a.png?width=10", None, &[])
        .await;
    reply.refused("409", "FeatureNotEnabled");
    // Signed URLs then ignore `transform`, as Storage's do.
    let made = st
        .call(
            Method::POST,
            "/object/sign/pub/a.png",
            Some(&st.service()),
            Some(json!({"expiresIn": 60, "transform": {"width": 10}})),
        )
        .await;
    assert!(
        made.json()["signedURL"]
            .as_str()
            .unwrap()
            .starts_with("/object/sign/pub/a.png?token="),
        "{:?}",
        made.json()
    );
}
