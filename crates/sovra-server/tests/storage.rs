//! `/storage/v1` through the real router on a real database, bytes on the
//! local disk (and, in `s3_backend`, in a real S3-compatible server): every
//! operation's successes and refusals, in the shapes storage-js reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

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
    /// The logical status of a storage error (`statusCode`).
    fn logical(&self) -> String {
        self.json()["statusCode"].as_str().unwrap_or("").to_owned()
    }
    /// The body as text (TUS refusals are plain text, as Supabase's).
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
}

const POLICIES: &str = "
  create policy own_select on storage.objects for select to authenticated
    using (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
  create policy own_insert on storage.objects for insert to authenticated
    with check (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
  create policy own_update on storage.objects for update to authenticated
    using (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text)
    with check (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
  create policy own_delete on storage.objects for delete to authenticated
    using (bucket_id = 'private' and (storage.foldername(name))[1] = auth.uid()::text);
  create policy see_buckets on storage.buckets for select to authenticated using (true);
";

impl St {
    async fn new() -> St {
        St::with(sovra_config::Config::default()).await
    }

    async fn with(config: sovra_config::Config) -> St {
        init_logs();
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
        st
    }

    fn service(&self) -> String {
        self.app.service_role_key.clone()
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

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Reply {
        let mut request = self.request(method, path, Some(token));
        if let Some(body) = body {
            request = request.json(&body);
        }
        St::send(request).await
    }

    async fn upload(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &'static [u8],
        mime: &str,
    ) -> Reply {
        St::send(
            self.request(method, &format!("/object/{path}"), Some(token))
                .header("content-type", mime)
                .body(body),
        )
        .await
    }

    async fn bucket(&self, id: &str, extra: Value) -> Reply {
        let mut body = json!({"id": id, "name": id});
        if let (Value::Object(map), Value::Object(more)) = (&mut body, extra) {
            map.extend(more);
        }
        self.call(Method::POST, "/bucket", &self.service(), Some(body))
            .await
    }

    /// A POST sent as raw HTTP/1.1, path untouched; returns the response.
    async fn raw_post(&self, path: &str, token: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.app.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Files under the storage directory (stored bytes and parts).
    fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.app.data_dir.join("storage"), &mut out);
        out
    }

    async fn count_rows(&self, sql: &str) -> i64 {
        self.app
            .db
            .client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

#[tokio::test]
async fn buckets_are_created_listed_updated_emptied_and_deleted() {
    let st = St::new().await;
    let service = st.service();
    let created = st
        .bucket(
            "avatars",
            json!({"public": false, "file_size_limit": "1mb", "allowed_mime_types": ["image/*"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.json());
    assert_eq!(created.json(), json!({"name": "avatars"}));

    let got = st
        .call(Method::GET, "/bucket/avatars", &service, None)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let bucket = got.json();
    assert_eq!(bucket["id"], "avatars");
    assert_eq!(bucket["public"], false);
    assert_eq!(bucket["file_size_limit"], 1_000_000);
    assert_eq!(bucket["allowed_mime_types"], json!(["image/*"]));
    assert_eq!(bucket["type"], "STANDARD");
    assert!(bucket["created_at"].is_string());

    st.bucket("docs", json!({"public": true})).await;
    let list = st
        .call(
            Method::GET,
            "/bucket?sortColumn=name&sortOrder=desc",
            &service,
            None,
        )
        .await;
    let names: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["docs", "avatars"]);
    let searched = st
        .call(Method::GET, "/bucket?search=av&limit=5", &service, None)
        .await;
    assert_eq!(searched.json().as_array().unwrap().len(), 1);

    let updated = st
        .call(
            Method::PUT,
            "/bucket/avatars",
            &service,
            Some(json!({"public": true, "file_size_limit": null, "allowed_mime_types": null})),
        )
        .await;
    assert_eq!(updated.json(), json!({"message": "Successfully updated"}));
    let got = st
        .call(Method::GET, "/bucket/avatars", &service, None)
        .await
        .json();
    assert_eq!(
        (got["public"].clone(), got["file_size_limit"].clone()),
        (json!(true), Value::Null)
    );

    // Refusals.
    let again = st.bucket("avatars", json!({})).await;
    assert_eq!(
        (again.status, again.logical()),
        (StatusCode::BAD_REQUEST, "409".to_owned())
    );
    assert_eq!(again.json()["message"], "The resource already exists");
    let bad_name = st.bucket("a/b", json!({})).await;
    assert_eq!(bad_name.logical(), "400");
    let bad_size = st.bucket("sized", json!({"file_size_limit": "lots"})).await;
    assert_eq!(
        bad_size.json()["message"],
        "Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B"
    );
    let missing = st.call(Method::GET, "/bucket/nope", &service, None).await;
    assert_eq!(
        (missing.status, missing.logical()),
        (StatusCode::BAD_REQUEST, "404".to_owned())
    );
    assert_eq!(missing.json()["error"], "Bucket not found");
    let missing_update = st
        .call(
            Method::PUT,
            "/bucket/nope",
            &service,
            Some(json!({"public": true})),
        )
        .await;
    assert_eq!(missing_update.logical(), "404");
    let (_, user) = st.user();
    let by_user = st
        .call(
            Method::POST,
            "/bucket",
            &user,
            Some(json!({"id": "mine", "name": "mine"})),
        )
        .await;
    assert_eq!(
        by_user.logical(),
        "403",
        "RLS refuses buckets to users: {:?}",
        by_user.json()
    );
    let anon_list = st
        .call(Method::GET, "/bucket", &st.app.anon_key, None)
        .await;
    assert_eq!(
        anon_list.json(),
        json!([]),
        "anon sees no bucket without a policy"
    );
    let user_list = st.call(Method::GET, "/bucket", &user, None).await;
    assert_eq!(
        user_list.json().as_array().unwrap().len(),
        2,
        "the policy lets users see buckets"
    );
    let bad_token = st.call(Method::GET, "/bucket", "not-a-jwt", None).await;
    assert_eq!(
        (bad_token.status, bad_token.logical()),
        (StatusCode::BAD_REQUEST, "403".to_owned())
    );

    // Delete: a bucket with objects is refused until emptied.
    st.upload(Method::POST, "docs/a.txt", &service, b"a", "text/plain")
        .await;
    st.upload(Method::POST, "docs/f/b.txt", &service, b"b", "text/plain")
        .await;
    let full = st
        .call(Method::DELETE, "/bucket/docs", &service, Some(json!({})))
        .await;
    assert_eq!(full.logical(), "409");
    assert_eq!(
        full.json()["message"],
        "The bucket you tried to delete is not empty"
    );
    let emptied = st
        .call(
            Method::POST,
            "/bucket/docs/empty",
            &service,
            Some(json!({})),
        )
        .await;
    assert_eq!(emptied.json(), json!({"message": "Successfully emptied"}));
    assert!(st.stored_files().is_empty(), "emptying deletes the bytes");
    let deleted = st
        .call(Method::DELETE, "/bucket/docs", &service, Some(json!({})))
        .await;
    assert_eq!(deleted.json(), json!({"message": "Successfully deleted"}));
    let gone = st
        .call(Method::DELETE, "/bucket/docs", &service, None)
        .await;
    assert_eq!(gone.logical(), "404");
    let empty_missing = st
        .call(Method::POST, "/bucket/docs/empty", &service, None)
        .await;
    assert_eq!(empty_missing.logical(), "404");
}

#[tokio::test]
async fn upload_download_and_http_semantics() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("files", json!({})).await;
    let up = st
        .upload(
            Method::POST,
            "files/dir/hello.txt",
            &service,
            b"hello world",
            "text/plain;charset=UTF-8",
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.json());
    assert_eq!(up.json()["Key"], "files/dir/hello.txt");
    assert!(up.json()["Id"].as_str().unwrap().len() == 36);

    let down =
        St::send(st.request(Method::GET, "/object/files/dir/hello.txt", Some(&service))).await;
    assert_eq!(down.status, StatusCode::OK);
    assert_eq!(&down.bytes[..], b"hello world");
    assert_eq!(down.header("content-type"), "text/plain;charset=UTF-8");
    assert_eq!(down.header("content-length"), "11");
    assert_eq!(down.header("cache-control"), "no-cache");
    assert_eq!(down.header("accept-ranges"), "bytes");
    let etag = down.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    assert!(!down.header("last-modified").is_empty());
    let authenticated = St::send(st.request(
        Method::GET,
        "/object/authenticated/files/dir/hello.txt",
        Some(&service),
    ))
    .await;
    assert_eq!(&authenticated.bytes[..], b"hello world");

    // Ranges, conditional requests, attachments, HEAD.
    let range = St::send(
        st.request(Method::GET, "/object/files/dir/hello.txt", Some(&service))
            .header("range", "bytes=6-"),
    )
    .await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&range.bytes[..], b"world");
    assert_eq!(range.header("content-range"), "bytes 6-10/11");
    let bad_range = St::send(
        st.request(Method::GET, "/object/files/dir/hello.txt", Some(&service))
            .header("range", "bytes=50-"),
    )
    .await;
    assert_eq!(bad_range.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(bad_range.header("content-range"), "bytes */11");
    let cached = St::send(
        st.request(Method::GET, "/object/files/dir/hello.txt", Some(&service))
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert!(cached.bytes.is_empty());
    let since = St::send(
        st.request(Method::GET, "/object/files/dir/hello.txt", Some(&service))
            .header("if-modified-since", down.header("last-modified")),
    )
    .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let attachment = St::send(st.request(
        Method::GET,
        "/object/files/dir/hello.txt?download=my%20file.txt",
        Some(&service),
    ))
    .await;
    assert_eq!(
        attachment.header("content-disposition"),
        "attachment; filename=my%20file.txt; filename*=UTF-8''my%20file.txt"
    );
    let head =
        St::send(st.request(Method::HEAD, "/object/files/dir/hello.txt", Some(&service))).await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (StatusCode::OK, "11")
    );
    let head_missing =
        St::send(st.request(Method::HEAD, "/object/files/nope.txt", Some(&service))).await;
    assert_eq!(head_missing.status, StatusCode::BAD_REQUEST);

    // Info.
    let info = st
        .call(
            Method::GET,
            "/object/info/files/dir/hello.txt",
            &service,
            None,
        )
        .await
        .json();
    assert_eq!(info["name"], "dir/hello.txt");
    assert_eq!(info["size"], 11);
    assert_eq!(info["content_type"], "text/plain;charset=UTF-8");
    assert_eq!(info["etag"], etag.as_str());

    // Create twice: 409 unless upsert; upsert replaces and deletes the old bytes.
    let again = st
        .upload(
            Method::POST,
            "files/dir/hello.txt",
            &service,
            b"x",
            "text/plain",
        )
        .await;
    assert_eq!(
        (again.status, again.logical()),
        (StatusCode::BAD_REQUEST, "409".to_owned())
    );
    assert_eq!(again.json()["message"], "The resource already exists");
    assert_eq!(
        st.stored_files().len(),
        1,
        "a refused upload leaves no bytes"
    );
    let upsert = St::send(
        st.request(Method::POST, "/object/files/dir/hello.txt", Some(&service))
            .header("x-upsert", "true")
            .header("content-type", "text/markdown")
            .header("cache-control", "max-age=60")
            .header("x-metadata", "eyJvd25lciI6Im1lIn0=")
            .body("# replaced"),
    )
    .await;
    assert_eq!(upsert.status, StatusCode::OK, "{:?}", upsert.json());
    assert_eq!(
        upsert.json()["Id"],
        up.json()["Id"],
        "upsert keeps the object id"
    );
    let replaced =
        St::send(st.request(Method::GET, "/object/files/dir/hello.txt", Some(&service))).await;
    assert_eq!(&replaced.bytes[..], b"# replaced");
    assert_eq!(replaced.header("content-type"), "text/markdown");
    assert_eq!(replaced.header("cache-control"), "max-age=60");
    assert_ne!(
        replaced.header("etag"),
        etag,
        "a new version has a new ETag"
    );
    assert_eq!(
        st.stored_files().len(),
        1,
        "the replaced version's bytes are deleted"
    );
    let info = st
        .call(
            Method::GET,
            "/object/info/files/dir/hello.txt",
            &service,
            None,
        )
        .await
        .json();
    assert_eq!(info["metadata"], json!({"owner": "me"}));

    // PUT updates an existing object, refuses a missing one.
    let put = st
        .upload(
            Method::PUT,
            "files/dir/hello.txt",
            &service,
            b"v3",
            "text/plain",
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let put_missing = st
        .upload(
            Method::PUT,
            "files/dir/missing.txt",
            &service,
            b"v3",
            "text/plain",
        )
        .await;
    assert_eq!(put_missing.logical(), "404");
    assert_eq!(put_missing.json()["message"], "Object not found");

    // Refusals of input.
    let empty = st
        .upload(Method::POST, "files/empty.txt", &service, b"", "text/plain")
        .await;
    assert_eq!(empty.json()["message"], "No content provided");
    let no_bucket = st
        .upload(Method::POST, "nobucket/a.txt", &service, b"x", "text/plain")
        .await;
    assert_eq!(no_bucket.logical(), "404");
    assert_eq!(no_bucket.json()["error"], "Bucket not found");
    // (A literal `..` is resolved away by the HTTP client; encoded, it reaches us.)
    for bad in [
        "files/a//b.txt",
        "files/a%00b",
        "files/a%0Ab",
        "files/a%5Cb",
    ] {
        let reply = st
            .upload(Method::POST, bad, &service, b"x", "text/plain")
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            reply.json()["code"],
            "InvalidKey",
            "{bad}: {:?}",
            reply.json()
        );
    }
    // Dot segments, sent raw so that no client normalises them away.
    for bad in [
        "/files/../../etc/passwd",
        "/files/a/%2E%2E/%2e%2e/b",
        "/files/./a",
    ] {
        let reply = st
            .raw_post(&format!("/storage/v1/object{bad}"), &service)
            .await;
        assert!(reply.contains("InvalidKey"), "{bad}: {reply}");
    }
    let bad_metadata = St::send(
        st.request(Method::POST, "/object/files/m.txt", Some(&service))
            .header("x-metadata", "not base64 json")
            .body("x"),
    )
    .await;
    assert_eq!(bad_metadata.logical(), "400");
    let missing = St::send(st.request(Method::GET, "/object/files/none.txt", Some(&service))).await;
    assert_eq!(
        (missing.status, missing.logical()),
        (StatusCode::BAD_REQUEST, "404".to_owned())
    );
    assert_eq!(missing.json()["code"], "NoSuchKey");
    assert_eq!(st.stored_files().len(), 1);
}

#[tokio::test]
async fn multipart_forms_and_large_objects_stream() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("media", json!({})).await;
    let form = reqwest::multipart::Form::new()
        .text("cacheControl", "3600")
        .text("metadata", r#"{"caption":"a cat"}"#)
        .part(
            "",
            reqwest::multipart::Part::bytes(b"\x89PNG fake".to_vec())
                .file_name("blob")
                .mime_str("image/png")
                .unwrap(),
        );
    let up = St::send(
        st.request(Method::POST, "/object/media/cat.png", Some(&service))
            .header("x-upsert", "false")
            .multipart(form),
    )
    .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.json());
    let down = St::send(st.request(Method::GET, "/object/media/cat.png", Some(&service))).await;
    assert_eq!(&down.bytes[..], b"\x89PNG fake");
    assert_eq!(down.header("content-type"), "image/png");
    assert_eq!(down.header("cache-control"), "max-age=3600");
    let info = st
        .call(Method::GET, "/object/info/media/cat.png", &service, None)
        .await
        .json();
    assert_eq!(info["metadata"], json!({"caption": "a cat"}));

    let no_file = St::send(
        st.request(Method::POST, "/object/media/none.png", Some(&service))
            .multipart(reqwest::multipart::Form::new().text("cacheControl", "10")),
    )
    .await;
    assert_eq!(no_file.json()["message"], "No content provided");

    // 20 MiB, streamed in chunks without a Content-Length: the multipart
    // path of the backend, read back whole and by range.
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let up = St::send(
        st.request(Method::POST, "/object/media/big.bin", Some(&service))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
    )
    .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.json());
    let down = St::send(st.request(Method::GET, "/object/media/big.bin", Some(&service))).await;
    assert_eq!(down.bytes.len(), big.len());
    assert!(down.bytes[..] == big[..]);
    let tail = St::send(
        st.request(Method::GET, "/object/media/big.bin", Some(&service))
            .header("range", "bytes=10485000-10486000"),
    )
    .await;
    assert_eq!(&tail.bytes[..], &big[10_485_000..=10_486_000]);
}

#[tokio::test]
async fn rls_keeps_each_user_in_their_folder() {
    let st = St::new().await;
    st.bucket("private", json!({})).await;
    let (alice, alice_token) = st.user();
    let (bob, bob_token) = st.user();

    let own = st
        .upload(
            Method::POST,
            &format!("private/{alice}/note.txt"),
            &alice_token,
            b"alice's",
            "text/plain",
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.json());
    let owner: String = st
        .app
        .db
        .client()
        .await
        .query_one(
            "select owner_id from storage.objects where name = $1",
            &[&format!("{alice}/note.txt")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, alice, "the uploader owns the object");

    // Bob cannot read, overwrite, list, sign, move or delete Alice's object.
    let read = St::send(st.request(
        Method::GET,
        &format!("/object/private/{alice}/note.txt"),
        Some(&bob_token),
    ))
    .await;
    assert_eq!(
        (read.status, read.logical()),
        (StatusCode::BAD_REQUEST, "404".to_owned())
    );
    let write = st
        .upload(
            Method::POST,
            &format!("private/{alice}/evil.txt"),
            &bob_token,
            b"x",
            "text/plain",
        )
        .await;
    assert_eq!(write.logical(), "403");
    assert_eq!(
        write.json()["message"],
        "new row violates row-level security policy"
    );
    let upsert = St::send(
        st.request(
            Method::POST,
            &format!("/object/private/{alice}/note.txt"),
            Some(&bob_token),
        )
        .header("x-upsert", "true")
        .body("overwrite"),
    )
    .await;
    assert_ne!(upsert.status, StatusCode::OK);
    let put = st
        .upload(
            Method::PUT,
            &format!("private/{alice}/note.txt"),
            &bob_token,
            b"x",
            "text/plain",
        )
        .await;
    assert_eq!(put.logical(), "404");
    let list = st
        .call(
            Method::POST,
            "/object/list/private",
            &bob_token,
            Some(json!({"prefix": alice})),
        )
        .await;
    assert_eq!(list.json(), json!([]));
    let sign = st
        .call(
            Method::POST,
            &format!("/object/sign/private/{alice}/note.txt"),
            &bob_token,
            Some(json!({"expiresIn": 60})),
        )
        .await;
    assert_eq!(sign.logical(), "404");
    let moved = st.call(Method::POST, "/object/move", &bob_token, Some(json!({"bucketId": "private", "sourceKey": format!("{alice}/note.txt"), "destinationKey": format!("{bob}/stolen.txt")}))).await;
    assert_eq!(moved.logical(), "404");
    let copied = st.call(Method::POST, "/object/copy", &bob_token, Some(json!({"bucketId": "private", "sourceKey": format!("{alice}/note.txt"), "destinationKey": format!("{bob}/stolen.txt")}))).await;
    assert_eq!(copied.logical(), "404");
    let deleted = st
        .call(
            Method::DELETE,
            "/object/private",
            &bob_token,
            Some(json!({"prefixes": [format!("{alice}/note.txt")]})),
        )
        .await;
    assert_eq!(deleted.json(), json!([]), "invisible rows are skipped");
    let info = st
        .call(
            Method::GET,
            &format!("/object/info/private/{alice}/note.txt"),
            &bob_token,
            None,
        )
        .await;
    assert_eq!(info.logical(), "404");
    // Anonymous callers get nothing either.
    let anon = st
        .upload(
            Method::POST,
            &format!("private/{alice}/anon.txt"),
            &st.app.anon_key.clone(),
            b"x",
            "text/plain",
        )
        .await;
    assert_eq!(anon.logical(), "403");
    let anon_read = St::send(st.request(
        Method::GET,
        &format!("/object/private/{alice}/note.txt"),
        None,
    ))
    .await;
    assert_eq!(anon_read.logical(), "404");
    // An expired or forged token is refused outright, even for one's own folder.
    let now = TestApp::now();
    let expired = st
        .app
        .sign(json!({"sub": alice, "role": "authenticated", "iat": now - 7200, "exp": now - 3600}));
    for token in [expired, format!("{alice_token}x")] {
        let refused = st
            .upload(
                Method::POST,
                &format!("private/{alice}/late.txt"),
                &token,
                b"x",
                "text/plain",
            )
            .await;
        assert_eq!(
            (refused.status, refused.logical()),
            (StatusCode::BAD_REQUEST, "403".to_owned())
        );
        assert_eq!(refused.json()["code"], "AccessDenied");
    }

    // Alice still has it, untouched, and can move it within her folder
    // but not into Bob's.
    let read = St::send(st.request(
        Method::GET,
        &format!("/object/private/{alice}/note.txt"),
        Some(&alice_token),
    ))
    .await;
    assert_eq!(&read.bytes[..], b"alice's");
    let into_bob = st.call(Method::POST, "/object/move", &alice_token, Some(json!({"bucketId": "private", "sourceKey": format!("{alice}/note.txt"), "destinationKey": format!("{bob}/gift.txt")}))).await;
    assert_eq!(into_bob.logical(), "403");
    let moved = st.call(Method::POST, "/object/move", &alice_token, Some(json!({"bucketId": "private", "sourceKey": format!("{alice}/note.txt"), "destinationKey": format!("{alice}/moved.txt")}))).await;
    assert_eq!(moved.json(), json!({"message": "Successfully moved"}));
    let list = st
        .call(
            Method::POST,
            "/object/list/private",
            &alice_token,
            Some(json!({"prefix": alice})),
        )
        .await;
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    assert_eq!(list.json()[0]["name"], "moved.txt");

    // Direct SQL deletes would orphan bytes: refused even to the owner role.
    let err = st
        .app
        .db
        .client()
        .await
        .execute("delete from storage.objects", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
}

#[tokio::test]
async fn size_and_mime_limits_are_enforced_while_streaming() {
    let mut config = sovra_config::Config::default();
    config.storage.file_size_limit = 64;
    let st = St::with(config).await;
    let service = st.service();
    st.bucket(
        "small",
        json!({"file_size_limit": 10, "allowed_mime_types": ["text/*", "application/json"]}),
    )
    .await;
    let ok = st
        .upload(
            Method::POST,
            "small/ok.txt",
            &service,
            b"0123456789",
            "text/plain",
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let big = st
        .upload(
            Method::POST,
            "small/big.txt",
            &service,
            b"0123456789X",
            "text/plain",
        )
        .await;
    assert_eq!(
        (big.status, big.logical()),
        (StatusCode::BAD_REQUEST, "413".to_owned())
    );
    assert_eq!(
        big.json()["message"],
        "The object exceeded the maximum allowed size"
    );
    // Without a Content-Length the limit is enforced as the bytes arrive.
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..4).map(|_| Ok(Bytes::from_static(b"abcd"))).collect();
    let streamed = St::send(
        st.request(Method::POST, "/object/small/streamed.txt", Some(&service))
            .header("content-type", "text/plain")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
    )
    .await;
    assert_eq!(streamed.logical(), "413");
    let mime = st
        .upload(Method::POST, "small/cat.png", &service, b"png", "image/png")
        .await;
    assert_eq!(mime.logical(), "415");
    assert_eq!(
        mime.json()["message"],
        "mime type image/png is not supported"
    );
    let json_ok = st
        .upload(
            Method::POST,
            "small/a.json",
            &service,
            b"{}",
            "application/json",
        )
        .await;
    assert_eq!(json_ok.status, StatusCode::OK);
    let placeholder = st
        .upload(
            Method::POST,
            "small/dir/.emptyFolderPlaceholder",
            &service,
            b"placeholder!",
            "application/octet-stream",
        )
        .await;
    assert_eq!(
        placeholder.status,
        StatusCode::OK,
        "placeholders are exempt"
    );
    // The global limit caps buckets without their own.
    st.bucket("open", json!({})).await;
    let over_global = st
        .upload(
            Method::POST,
            "open/x.bin",
            &service,
            &[7u8; 65],
            "application/octet-stream",
        )
        .await;
    assert_eq!(over_global.logical(), "413");
    assert_eq!(
        st.count_rows("select count(*) from storage.objects").await,
        3
    );
    assert_eq!(st.stored_files().len(), 3, "refused uploads leave no bytes");
}

#[tokio::test]
async fn an_interrupted_upload_leaves_neither_bytes_nor_metadata() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("b", json!({})).await;
    for size in [1024usize, 12 * 1024 * 1024] {
        let mut chunks: Vec<Result<Bytes, std::io::Error>> =
            std::iter::repeat_with(|| Ok(Bytes::from(vec![1u8; size / 4])))
                .take(4)
                .collect();
        chunks.push(Err(std::io::Error::other("connection dropped")));
        let result = st
            .request(Method::POST, "/object/b/broken.bin", Some(&service))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await;
        assert!(result.is_err() || !result.unwrap().status().is_success());
    }
    // The server notices the broken body and cleans up.
    for _ in 0..50 {
        if st.stored_files().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(st.stored_files().is_empty(), "{:?}", st.stored_files());
    assert_eq!(
        st.count_rows("select count(*) from storage.objects").await,
        0
    );
    let down = St::send(st.request(Method::GET, "/object/b/broken.bin", Some(&service))).await;
    assert_eq!(down.logical(), "404");
}

#[tokio::test]
async fn listing_folders_search_sort_and_pages() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("l", json!({})).await;
    for name in [
        "top.txt",
        "a/one.txt",
        "a/two.txt",
        "a/sub/deep.txt",
        "a/sub2/x.txt",
        "b/c.txt",
        "a_b/x.txt",
    ] {
        let reply = St::send(
            st.request(Method::POST, &format!("/object/l/{name}"), Some(&service))
                .body(name),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
    }
    let names = |reply: Reply| -> Vec<String> {
        reply
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let root = st.call(Method::POST, "/object/list/l", &service, Some(json!({"prefix": "", "limit": 100, "offset": 0, "sortBy": {"column": "name", "order": "asc"}}))).await;
    let entries = root.json();
    assert_eq!(names(root), ["a", "a_b", "b", "top.txt"]);
    assert_eq!(entries[0]["id"], Value::Null, "folders have no id");
    assert_eq!(entries[3]["metadata"]["size"], 7);
    assert_eq!(
        entries[3]["metadata"]["mimetype"],
        "application/octet-stream"
    );
    let folder = st
        .call(
            Method::POST,
            "/object/list/l",
            &service,
            Some(json!({"prefix": "a"})),
        )
        .await;
    assert_eq!(names(folder), ["sub", "sub2", "one.txt", "two.txt"]);
    let slash = st
        .call(
            Method::POST,
            "/object/list/l",
            &service,
            Some(json!({"prefix": "a/"})),
        )
        .await;
    assert_eq!(names(slash).len(), 4);
    let search = st
        .call(
            Method::POST,
            "/object/list/l",
            &service,
            Some(json!({"prefix": "a", "search": "T"})),
        )
        .await;
    assert_eq!(names(search), ["two.txt"]);
    let page = st.call(Method::POST, "/object/list/l", &service, Some(json!({"prefix": "a", "limit": 2, "offset": 1, "sortBy": {"column": "name", "order": "desc"}}))).await;
    assert_eq!(names(page), ["sub", "two.txt"]);
    let like_chars = st
        .call(
            Method::POST,
            "/object/list/l",
            &service,
            Some(json!({"prefix": "a_"})),
        )
        .await;
    assert_eq!(
        names(like_chars),
        Vec::<String>::new(),
        "`_` is not a wildcard"
    );
    let bad_sort = st
        .call(
            Method::POST,
            "/object/list/l",
            &service,
            Some(json!({"sortBy": {"column": "size; drop table x"}})),
        )
        .await;
    assert_eq!(bad_sort.logical(), "400");
}

/// `list-v2` as Supabase Storage answers it: full keys, a plain string
/// prefix, folders only with `with_delimiter`, keyset paging by `nextCursor`.
#[tokio::test]
async fn list_v2_pages_full_keys_by_cursor() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("l", json!({})).await;
    for name in [
        "top.txt",
        "a/one.txt",
        "a/two.txt",
        "a/sub/deep.txt",
        "a/sub2/x.txt",
        "b/c.txt",
        "a_b/x.txt",
    ] {
        let reply = St::send(
            st.request(Method::POST, &format!("/object/l/{name}"), Some(&service))
                .body(name),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
    }
    let list = |body: Value| st.call(Method::POST, "/object/list-v2/l", &service, Some(body));
    let names = |page: &Value, kind: &str| -> Vec<String> {
        page[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // Flat: every key under the string prefix, by name, paged.
    let first = list(json!({"prefix": "a/", "limit": 3})).await.json();
    assert_eq!(
        names(&first, "objects"),
        ["a/one.txt", "a/sub/deep.txt", "a/sub2/x.txt"]
    );
    assert_eq!(first["folders"], json!([]));
    assert_eq!(first["hasNext"], true);
    assert_eq!(first["nextCursorKey"], "a/sub2/x.txt");
    let object = first["objects"][0].as_object().unwrap();
    let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "created_at",
            "id",
            "last_accessed_at",
            "metadata",
            "name",
            "updated_at"
        ]
    );
    assert_eq!(object["metadata"]["size"], 9);
    let second = list(json!({"prefix": "a/", "limit": 3, "cursor": first["nextCursor"]}))
        .await
        .json();
    assert_eq!(names(&second, "objects"), ["a/two.txt"]);
    assert_eq!(second["hasNext"], false);
    assert!(second.get("nextCursor").is_none());
    // The prefix is a string prefix, not a folder.
    let loose = list(json!({"prefix": "a"})).await.json();
    assert_eq!(
        names(&loose, "objects"),
        [
            "a/one.txt",
            "a/sub/deep.txt",
            "a/sub2/x.txt",
            "a/two.txt",
            "a_b/x.txt"
        ]
    );
    // With the delimiter: folders named up to their `/`, objects by key.
    let root = list(json!({"with_delimiter": true})).await.json();
    assert_eq!(
        root["folders"],
        json!([{"id": null, "name": "a/"}, {"id": null, "name": "a_b/"}, {"id": null, "name": "b/"}])
    );
    assert_eq!(names(&root, "objects"), ["top.txt"]);
    let grouped = list(json!({"prefix": "a/", "with_delimiter": true, "limit": 2}))
        .await
        .json();
    assert_eq!(names(&grouped, "objects"), ["a/one.txt"]);
    assert_eq!(grouped["objects"][0]["key"], "one.txt");
    assert_eq!(names(&grouped, "folders"), ["a/sub/"]);
    let rest = list(json!({"prefix": "a/", "with_delimiter": true, "limit": 2, "cursor": grouped["nextCursor"]}))
        .await
        .json();
    assert_eq!(names(&rest, "folders"), ["a/sub2/"]);
    assert_eq!(names(&rest, "objects"), ["a/two.txt"]);
    assert_eq!(rest["hasNext"], false);
    let partial = list(json!({"prefix": "a/s", "with_delimiter": true}))
        .await
        .json();
    assert_eq!(names(&partial, "folders"), ["a/sub/", "a/sub2/"]);
    // By creation time, newest first, one per page, through every object.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let page = list(json!({"limit": 1, "cursor": cursor, "sortBy": {"column": "created_at", "order": "desc"}}))
            .await
            .json();
        seen.extend(names(&page, "objects"));
        if page["hasNext"] != true {
            break;
        }
        cursor = page["nextCursor"].clone();
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen[0], "a_b/x.txt", "newest first: {seen:?}");
    // `_` and `%` are no wildcards.
    assert_eq!(
        names(&list(json!({"prefix": "a_"})).await.json(), "objects"),
        ["a_b/x.txt"]
    );
    // Refusals.
    for (body, message) in [
        (
            json!({"cursor": "%%%"}),
            "Invalid Parameter continuation token",
        ),
        (
            json!({"cursor": "eDp5"}),
            "Invalid Parameter continuation token",
        ),
        (json!({"limit": 0}), "body/limit must be >= 1"),
        (
            json!({"with_delimiter": "yes"}),
            "body/with_delimiter must be boolean",
        ),
        (
            json!({"sortBy": {"column": "last_accessed_at"}}),
            "body/sortBy/column must be equal to one of the allowed values",
        ),
        (
            json!({"sortBy": {"column": "name", "order": "up"}}),
            "body/sortBy/order must be equal to one of the allowed values",
        ),
    ] {
        let refused = list(body.clone()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            (refused.logical(), refused.json()["message"].clone()),
            ("400".to_owned(), json!(message)),
            "{body}"
        );
    }
    // A cursor whose time is not one is refused, not a database error.
    let forged = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode("l:a\nc:created_at\na:2026-02-30T00:00:00.000Z")
    };
    assert_eq!(
        list(json!({"cursor": forged})).await.json()["message"],
        "Invalid Parameter continuation token"
    );
    // Under RLS: a user sees only the keys policies let them see.
    let (_, token) = st.user();
    let hidden = st
        .call(Method::POST, "/object/list-v2/l", &token, Some(json!({})))
        .await
        .json();
    assert_eq!(hidden["objects"], json!([]));
}

/// Item 14 and 13 of issue #16: TUS `OPTIONS`/`HEAD`/refusals as Supabase
/// serves them, `/version` and `/status`, `object/info`'s shape and
/// headers, bucket timestamps, bucket search, copy metadata from
/// `x-metadata`, and the refusal of a request with no credentials at all.
#[tokio::test]
async fn storage_answers_as_supabase_storage() {
    let st = St::new().await;
    let service = st.service();
    let url = |path: &str| format!("{}/storage/v1{path}", st.app.url);
    // TUS `OPTIONS`, plain and as a browser's CORS preflight.
    for preflight in [false, true] {
        let mut request = st.http.request(Method::OPTIONS, url("/upload/resumable"));
        if preflight {
            request = request
                .header("origin", "http://app.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "tus-resumable,upload-length",
                );
        }
        let options = St::send(request).await;
        assert_eq!(options.status, StatusCode::NO_CONTENT, "{preflight}");
        assert_eq!(options.header("tus-version"), "1.0.0");
        assert_eq!(options.header("tus-resumable"), "1.0.0");
        assert!(
            options
                .header("tus-extension")
                .contains("creation,creation-with-upload")
        );
        assert_eq!(options.header("tus-max-size"), (50u64 << 20).to_string());
        if preflight {
            assert_eq!(options.header("access-control-allow-origin"), "*");
        }
    }
    // Other preflights stay plain CORS answers.
    let rest_options = St::send(
        st.http
            .request(Method::OPTIONS, url("/bucket"))
            .header("origin", "http://app.example")
            .header("access-control-request-method", "GET"),
    )
    .await;
    assert!(rest_options.status.is_success());
    assert_eq!(rest_options.header("tus-version"), "");
    // `HEAD` of an upload that does not exist (or is no id) is 404.
    for id in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_owned()] {
        let head = St::send(
            st.request(
                Method::HEAD,
                &format!("/upload/resumable/{id}"),
                Some(&service),
            )
            .header("tus-resumable", "1.0.0"),
        )
        .await;
        assert_eq!(head.status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(head.header("tus-resumable"), "1.0.0");
    }
    // `/version` and `/status`.
    let version = St::send(st.http.get(url("/version"))).await;
    assert_eq!(version.status, StatusCode::OK);
    assert_eq!(version.text(), sovra_storage::VERSION);
    let status = St::send(st.http.get(url("/status"))).await;
    assert_eq!((status.status, status.bytes.len()), (StatusCode::OK, 0));

    // No `Authorization` and no `apikey`: Storage's JWT refusal.
    let bare = St::send(st.http.get(url("/bucket"))).await;
    assert_eq!(bare.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bare.json(),
        json!({"statusCode": "403", "error": "Unauthorized", "message": "Invalid Compact JWS", "code": "AccessDenied"})
    );
    // The anon key alone is a caller (anon), as before.
    let anon = St::send(
        st.http
            .get(url("/bucket"))
            .header("apikey", &st.app.anon_key),
    )
    .await;
    assert_eq!((anon.status, anon.json()), (StatusCode::OK, json!([])));

    // Buckets: Storage's timestamps, search by substring.
    st.bucket("photos-2026", json!({})).await;
    st.bucket("docs", json!({})).await;
    let bucket = st
        .call(Method::GET, "/bucket/docs", &service, None)
        .await
        .json();
    for field in ["created_at", "updated_at"] {
        assert!(
            is_storage_time(&bucket[field]),
            "{field}: {}",
            bucket[field]
        );
    }
    let found = st
        .call(Method::GET, "/bucket?search=2026", &service, None)
        .await
        .json();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["id"], "photos-2026");
    let found = st
        .call(Method::GET, "/bucket?search=OCS", &service, None)
        .await
        .json();
    assert_eq!(found[0]["id"], "docs");

    // `object/info`: Storage's fields, `metadata` `{}` when empty, headers.
    let up = st
        .upload(Method::POST, "docs/a.txt", &service, b"hello", "text/plain")
        .await;
    assert_eq!(up.status, StatusCode::OK);
    let info = st
        .call(Method::GET, "/object/info/docs/a.txt", &service, None)
        .await;
    let body = info.json();
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "cache_control",
            "content_type",
            "created_at",
            "etag",
            "id",
            "metadata",
            "name",
            "size",
            "version"
        ]
    );
    assert_eq!(body["metadata"], json!({}));
    assert!(
        is_storage_time(&body["created_at"]),
        "{}",
        body["created_at"]
    );
    assert_eq!(info.header("etag"), body["etag"].as_str().unwrap());
    assert_eq!(info.header("cache-control"), "no-cache");
    let head = St::send(st.request(
        Method::HEAD,
        "/object/info/authenticated/docs/a.txt",
        Some(&service),
    ))
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("etag"), body["etag"].as_str().unwrap());
    assert!(!head.header("last-modified").is_empty());
    let missing =
        St::send(st.request(Method::HEAD, "/object/info/docs/none.txt", Some(&service))).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);

    // Copy: with `copyMetadata: false`, user metadata from `x-metadata`
    // and `cacheControl`/`mimetype` from the body's `metadata`.
    use base64::Engine as _;
    let x_metadata = base64::engine::general_purpose::STANDARD.encode(r#"{"k":"v"}"#);
    let copied = St::send(
        st.request(Method::POST, "/object/copy", Some(&service))
            .header("x-metadata", &x_metadata)
            .json(&json!({"bucketId": "docs", "sourceKey": "a.txt", "destinationKey": "b.txt",
                "copyMetadata": false, "metadata": {"cacheControl": "60", "mimetype": "text/markdown"}})),
    )
    .await;
    assert_eq!(copied.status, StatusCode::OK, "{:?}", copied.json());
    let info = st
        .call(Method::GET, "/object/info/docs/b.txt", &service, None)
        .await
        .json();
    assert_eq!(info["metadata"], json!({"k": "v"}));
    assert_eq!(info["cache_control"], "max-age=60");
    assert_eq!(info["content_type"], "text/markdown");
    // With `copyMetadata` (the default) the source's metadata is kept and
    // `x-metadata` is ignored.
    let kept = St::send(
        st.request(Method::POST, "/object/copy", Some(&service))
            .header("x-metadata", &x_metadata)
            .json(&json!({"bucketId": "docs", "sourceKey": "a.txt", "destinationKey": "c.txt"})),
    )
    .await;
    assert_eq!(kept.status, StatusCode::OK);
    let info = st
        .call(Method::GET, "/object/info/docs/c.txt", &service, None)
        .await
        .json();
    assert_eq!(
        (info["metadata"].clone(), info["content_type"].clone()),
        (json!({}), json!("text/plain"))
    );
    for (header, body, message) in [
        (
            "%%%",
            json!({"copyMetadata": false}),
            "x-metadata must be base64-encoded JSON",
        ),
        (
            x_metadata.as_str(),
            json!({"copyMetadata": "no"}),
            "body/copyMetadata must be boolean",
        ),
        (
            x_metadata.as_str(),
            json!({"copyMetadata": false, "metadata": {"mimetype": 1}}),
            "body/metadata/mimetype must be string",
        ),
    ] {
        let mut request =
            json!({"bucketId": "docs", "sourceKey": "a.txt", "destinationKey": "d.txt"});
        request
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let refused = St::send(
            st.request(Method::POST, "/object/copy", Some(&service))
                .header("x-metadata", header)
                .json(&request),
        )
        .await;
        assert_eq!(
            (refused.logical(), refused.json()["message"].clone()),
            ("400".to_owned(), json!(message)),
            "{request}"
        );
    }
}

/// A timestamp as Supabase Storage writes it: `2026-01-05T10:11:12.345Z`.
fn is_storage_time(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    text.len() == 24
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && text.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn move_copy_and_delete() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("one", json!({})).await;
    st.bucket("two", json!({})).await;
    st.upload(
        Method::POST,
        "one/a.txt",
        &service,
        b"content a",
        "text/plain",
    )
    .await;
    st.upload(
        Method::POST,
        "one/b.txt",
        &service,
        b"content b",
        "text/plain",
    )
    .await;

    let copy = st.call(Method::POST, "/object/copy", &service, Some(json!({"bucketId": "one", "sourceKey": "a.txt", "destinationKey": "copy/a.txt", "destinationBucket": "two"}))).await;
    assert_eq!(copy.status, StatusCode::OK, "{:?}", copy.json());
    assert_eq!(copy.json()["Key"], "two/copy/a.txt");
    let copied = St::send(st.request(Method::GET, "/object/two/copy/a.txt", Some(&service))).await;
    assert_eq!(&copied.bytes[..], b"content a");
    assert_eq!(copied.header("content-type"), "text/plain");
    let exists = st
        .call(
            Method::POST,
            "/object/copy",
            &service,
            Some(json!({"bucketId": "one", "sourceKey": "a.txt", "destinationKey": "b.txt"})),
        )
        .await;
    assert_eq!(exists.logical(), "409");
    let missing = st
        .call(
            Method::POST,
            "/object/copy",
            &service,
            Some(json!({"bucketId": "one", "sourceKey": "zzz.txt", "destinationKey": "c.txt"})),
        )
        .await;
    assert_eq!(missing.logical(), "404");
    assert_eq!(st.stored_files().len(), 3);

    let moved = st.call(Method::POST, "/object/move", &service, Some(json!({"bucketId": "one", "sourceKey": "b.txt", "destinationKey": "moved/b.txt", "destinationBucket": "two"}))).await;
    assert_eq!(moved.json(), json!({"message": "Successfully moved"}));
    let at_new = St::send(st.request(Method::GET, "/object/two/moved/b.txt", Some(&service))).await;
    assert_eq!(&at_new.bytes[..], b"content b");
    let at_old = St::send(st.request(Method::GET, "/object/one/b.txt", Some(&service))).await;
    assert_eq!(at_old.logical(), "404");
    let onto = st.call(Method::POST, "/object/move", &service, Some(json!({"bucketId": "one", "sourceKey": "a.txt", "destinationKey": "copy/a.txt", "destinationBucket": "two"}))).await;
    assert_eq!(onto.logical(), "409");
    let to_nowhere = st.call(Method::POST, "/object/move", &service, Some(json!({"bucketId": "one", "sourceKey": "a.txt", "destinationKey": "x", "destinationBucket": "nope"}))).await;
    assert_eq!(to_nowhere.logical(), "404");
    let bad = st
        .call(
            Method::POST,
            "/object/move",
            &service,
            Some(json!({"bucketId": "one", "sourceKey": "a.txt", "destinationKey": "../x"})),
        )
        .await;
    assert_eq!(bad.json()["code"], "InvalidKey");

    let removed = st
        .call(
            Method::DELETE,
            "/object/two",
            &service,
            Some(json!({"prefixes": ["copy/a.txt", "not-there.txt"]})),
        )
        .await;
    let rows = removed.json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["name"], "copy/a.txt");
    assert_eq!(rows[0]["bucket_id"], "two");
    let one = st
        .call(Method::DELETE, "/object/two/moved/b.txt", &service, None)
        .await;
    assert_eq!(one.json(), json!({"message": "Successfully deleted"}));
    let again = st
        .call(Method::DELETE, "/object/two/moved/b.txt", &service, None)
        .await;
    assert_eq!(again.logical(), "404");
    let empty_list = st
        .call(
            Method::DELETE,
            "/object/two",
            &service,
            Some(json!({"prefixes": []})),
        )
        .await;
    assert_eq!(empty_list.logical(), "400");
    assert_eq!(st.stored_files().len(), 1, "deletes remove the bytes");
}

#[tokio::test]
async fn signed_download_and_upload_urls() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("private", json!({})).await;
    let (alice, alice_token) = st.user();
    st.upload(
        Method::POST,
        &format!("private/{alice}/pic.txt"),
        &alice_token,
        b"signed bytes",
        "text/plain",
    )
    .await;

    let signed = st
        .call(
            Method::POST,
            &format!("/object/sign/private/{alice}/pic.txt"),
            &alice_token,
            Some(json!({"expiresIn": 60})),
        )
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{:?}", signed.json());
    let url = signed.json()["signedURL"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("/object/sign/private/{alice}/pic.txt?token=")));
    let fetched = st
        .http
        .get(format!("{}/storage/v1{url}", st.app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert!(fetched.headers().get("expires").is_some());
    assert!(fetched.headers().get("cache-control").is_none());
    assert_eq!(&fetched.bytes().await.unwrap()[..], b"signed bytes");
    let with_download = st
        .http
        .get(format!("{}/storage/v1{url}&download=", st.app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        with_download.headers()["content-disposition"],
        "attachment;"
    );

    // Tampered, for another object, expired, or an upload token.
    let token = url.split("token=").nth(1).unwrap().to_owned();
    let tampered = St::send(st.http.get(format!(
        "{}/storage/v1/object/sign/private/{alice}/pic.txt?token={token}x",
        st.app.url
    )))
    .await;
    assert_eq!(
        (tampered.status, tampered.json()["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("InvalidJWT"))
    );
    st.upload(
        Method::POST,
        &format!("private/{alice}/other.txt"),
        &alice_token,
        b"other",
        "text/plain",
    )
    .await;
    let elsewhere = St::send(st.http.get(format!(
        "{}/storage/v1/object/sign/private/{alice}/other.txt?token={token}",
        st.app.url
    )))
    .await;
    assert_eq!(elsewhere.json()["error"], "InvalidSignature");
    let now = TestApp::now();
    let expired = st.app.sign(json!({"url": format!("private/{alice}/pic.txt"), "scope": "download", "iat": now - 20, "exp": now - 1}));
    let late = St::send(st.http.get(format!(
        "{}/storage/v1/object/sign/private/{alice}/pic.txt?token={expired}",
        st.app.url
    )))
    .await;
    assert_eq!(
        (late.status, late.json()["message"].clone()),
        (StatusCode::BAD_REQUEST, json!("jwt expired"))
    );
    let no_token = St::send(st.http.get(format!(
        "{}/storage/v1/object/sign/private/{alice}/pic.txt",
        st.app.url
    )))
    .await;
    assert_eq!(no_token.status, StatusCode::BAD_REQUEST);
    let zero = st
        .call(
            Method::POST,
            &format!("/object/sign/private/{alice}/pic.txt"),
            &alice_token,
            Some(json!({"expiresIn": 0})),
        )
        .await;
    assert_eq!(zero.logical(), "400");

    // Many at once: missing names get an error entry.
    let many = st.call(Method::POST, "/object/sign/private", &alice_token, Some(json!({"expiresIn": 60, "paths": [format!("{alice}/pic.txt"), format!("{alice}/missing.txt")]}))).await.json();
    assert!(many[0]["signedURL"].as_str().unwrap().contains("token="));
    assert_eq!(many[0]["error"], Value::Null);
    assert_eq!(many[1]["signedURL"], Value::Null);
    assert_eq!(
        many[1]["error"],
        "Either the object does not exist or you do not have access to it"
    );

    // Upload URLs: made by someone allowed to insert, used by anyone, once.
    let made = st
        .call(
            Method::POST,
            &format!("/object/upload/sign/private/{alice}/up.txt"),
            &alice_token,
            None,
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{:?}", made.json());
    let upload_url = made.json()["url"].as_str().unwrap().to_owned();
    let upload_token = made.json()["token"].as_str().unwrap().to_owned();
    assert!(upload_url.ends_with(&upload_token));
    let put = St::send(
        st.http
            .put(format!("{}/storage/v1{upload_url}", st.app.url))
            .header("content-type", "text/plain")
            .body("via signed url"),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.json());
    assert_eq!(put.json()["Key"], format!("private/{alice}/up.txt"));
    let owner: String = st
        .app
        .db
        .client()
        .await
        .query_one(
            "select owner_id from storage.objects where name = $1",
            &[&format!("{alice}/up.txt")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, alice, "the link's maker owns the object");
    let reuse = St::send(
        st.http
            .put(format!("{}/storage/v1{upload_url}", st.app.url))
            .body("again"),
    )
    .await;
    assert_eq!(reuse.logical(), "409");
    let download_token_for_upload = St::send(
        st.http
            .put(format!(
                "{}/storage/v1/object/upload/sign/private/{alice}/pic.txt?token={token}",
                st.app.url
            ))
            .body("x"),
    )
    .await;
    assert_eq!(
        download_token_for_upload.json()["error"],
        "InvalidSignature"
    );
    let (_, bob_token) = st.user();
    let bob_link = st
        .call(
            Method::POST,
            &format!("/object/upload/sign/private/{alice}/bob.txt"),
            &bob_token,
            None,
        )
        .await;
    assert_eq!(
        bob_link.logical(),
        "403",
        "a link needs insert permission when made"
    );
    let upsert_link = St::send(
        st.request(
            Method::POST,
            &format!("/object/upload/sign/private/{alice}/up.txt"),
            Some(&alice_token),
        )
        .header("x-upsert", "true"),
    )
    .await;
    assert_eq!(
        upsert_link.status,
        StatusCode::OK,
        "{:?}",
        upsert_link.json()
    );
    let url = upsert_link.json()["url"].as_str().unwrap().to_owned();
    let replaced = St::send(
        st.http
            .put(format!("{}/storage/v1{url}", st.app.url))
            .body("replaced"),
    )
    .await;
    assert_eq!(replaced.status, StatusCode::OK);
    let got = St::send(st.request(
        Method::GET,
        &format!("/object/private/{alice}/up.txt"),
        Some(&service),
    ))
    .await;
    assert_eq!(&got.bytes[..], b"replaced");
}

#[tokio::test]
async fn public_buckets_serve_without_credentials() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("pub", json!({"public": true})).await;
    st.bucket("priv", json!({"public": false})).await;
    st.upload(
        Method::POST,
        "pub/logo.svg",
        &service,
        b"<svg/>",
        "image/svg+xml",
    )
    .await;
    st.upload(
        Method::POST,
        "priv/logo.svg",
        &service,
        b"<svg/>",
        "image/svg+xml",
    )
    .await;
    let public = st
        .http
        .get(format!(
            "{}/storage/v1/object/public/pub/logo.svg",
            st.app.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::OK);
    assert_eq!(public.headers()["content-type"], "image/svg+xml");
    assert_eq!(&public.bytes().await.unwrap()[..], b"<svg/>");
    let info = St::send(st.http.get(format!(
        "{}/storage/v1/object/info/public/pub/logo.svg",
        st.app.url
    )))
    .await;
    assert_eq!(info.json()["size"], 6);
    let private = St::send(st.http.get(format!(
        "{}/storage/v1/object/public/priv/logo.svg",
        st.app.url
    )))
    .await;
    assert_eq!(
        (private.status, private.logical()),
        (StatusCode::BAD_REQUEST, "404".to_owned())
    );
    assert_eq!(private.json()["message"], "Bucket not found");
    let missing = St::send(st.http.get(format!(
        "{}/storage/v1/object/public/pub/none.svg",
        st.app.url
    )))
    .await;
    assert_eq!(missing.logical(), "404");
}

/// Sends one TUS chunk; `broken` makes the body fail after the bytes.
async fn tus_patch(
    st: &St,
    location: &str,
    token: &str,
    offset: u64,
    chunk: Vec<u8>,
    broken: bool,
) -> Result<Reply, reqwest::Error> {
    let mut parts: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from(chunk))];
    if broken {
        parts.push(Err(std::io::Error::other("network gone")));
    }
    let response = st
        .http
        .patch(format!("{}{location}", st.app.url))
        .header("apikey", &st.app.anon_key)
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await?;
    Ok(Reply {
        status: response.status(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.unwrap_or_default(),
    })
}

fn tus_metadata(bucket: &str, name: &str, mime: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "bucketName {},objectName {},contentType {},cacheControl {}",
        b64(bucket),
        b64(name),
        b64(mime),
        b64("3600")
    )
}

#[tokio::test]
async fn resumable_uploads_survive_a_dropped_connection() {
    let st = St::new().await;
    st.bucket("private", json!({})).await;
    let (alice, alice_token) = st.user();
    let (_, bob_token) = st.user();

    let data: Vec<u8> = (0..(13 * 1024 * 1024 + 123) as u32)
        .map(|i| (i % 253) as u8)
        .collect();
    let name = format!("{alice}/video.bin");
    let created = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&alice_token))
            .header("tus-resumable", "1.0.0")
            .header("upload-length", data.len().to_string())
            .header(
                "upload-metadata",
                tus_metadata("private", &name, "video/mp4"),
            ),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(created.header("tus-resumable"), "1.0.0");
    let location = created.header("location").to_owned();
    assert!(location.starts_with("/storage/v1/upload/resumable/"));

    let chunk = 6 * 1024 * 1024;
    let first = tus_patch(
        &st,
        &location,
        &alice_token,
        0,
        data[..chunk].to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    assert_eq!(first.header("upload-offset"), chunk.to_string());
    // The second chunk breaks off mid-way: nothing of it counts.
    let _ = tus_patch(
        &st,
        &location,
        &alice_token,
        chunk as u64,
        data[chunk..2 * chunk].to_vec(),
        true,
    )
    .await;
    let mut offset = String::new();
    let mut released = false;
    for _ in 0..50 {
        let head = St::send(
            st.http
                .head(format!("{}{location}", st.app.url))
                .bearer_auth(&alice_token)
                .header("tus-resumable", "1.0.0"),
        )
        .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("upload-length"), data.len().to_string());
        assert_eq!(head.header("cache-control"), "no-store");
        offset = head.header("upload-offset").to_owned();
        // The lease of the broken request is released once the server sees
        // the break: until then an empty chunk at the right offset is 409
        // ("being written by another request"), after it 204 (and the
        // offset does not move).
        let probe = tus_patch(&st, &location, &alice_token, chunk as u64, vec![], false)
            .await
            .unwrap();
        if probe.status == StatusCode::NO_CONTENT {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(released, "the broken request's lease was never released");
    assert_eq!(
        offset,
        chunk.to_string(),
        "the broken chunk did not move the offset"
    );
    // Someone else cannot see or continue it.
    let bob_head = St::send(
        st.http
            .head(format!("{}{location}", st.app.url))
            .bearer_auth(&bob_token),
    )
    .await;
    assert_eq!(bob_head.status, StatusCode::NOT_FOUND);
    let bob_patch = tus_patch(&st, &location, &bob_token, chunk as u64, vec![1], false)
        .await
        .unwrap();
    assert_ne!(bob_patch.status, StatusCode::NO_CONTENT);
    // Chunks must be sent as offset streams, to an upload that exists.
    let wrong_type = St::send(
        st.http
            .patch(format!("{}{location}", st.app.url))
            .bearer_auth(&alice_token)
            .header("upload-offset", chunk.to_string())
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let unknown = tus_patch(
        &st,
        &format!("/storage/v1/upload/resumable/{}", uuid::Uuid::new_v4()),
        &alice_token,
        0,
        vec![1],
        false,
    )
    .await
    .unwrap();
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
    // Resume, with a wrong offset first.
    let wrong = tus_patch(
        &st,
        &location,
        &alice_token,
        5,
        data[chunk..2 * chunk].to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, StatusCode::CONFLICT);
    let second = tus_patch(
        &st,
        &location,
        &alice_token,
        chunk as u64,
        data[chunk..2 * chunk].to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(second.status, StatusCode::NO_CONTENT);
    let not_yet = St::send(st.request(
        Method::GET,
        &format!("/object/private/{name}"),
        Some(&alice_token),
    ))
    .await;
    assert_eq!(not_yet.logical(), "404", "invisible until complete");
    let last = tus_patch(
        &st,
        &location,
        &alice_token,
        (2 * chunk) as u64,
        data[2 * chunk..].to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(last.status, StatusCode::NO_CONTENT, "{:?}", last.json());
    assert_eq!(last.header("upload-offset"), data.len().to_string());
    let down = St::send(st.request(
        Method::GET,
        &format!("/object/private/{name}"),
        Some(&alice_token),
    ))
    .await;
    assert_eq!(down.header("content-type"), "video/mp4");
    assert_eq!(down.header("cache-control"), "max-age=3600");
    assert!(down.bytes[..] == data[..]);
    assert_eq!(
        st.count_rows("select count(*) from sovra.storage_uploads")
            .await,
        0
    );
    assert_eq!(st.stored_files().len(), 1, "parts are deleted once joined");
    let after = St::send(
        st.http
            .head(format!("{}{location}", st.app.url))
            .bearer_auth(&alice_token),
    )
    .await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);

    // Refusals at creation: RLS (Bob in Alice's folder), size, names.
    let denied = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&bob_token))
            .header("upload-length", "10")
            .header(
                "upload-metadata",
                tus_metadata("private", &format!("{alice}/x.bin"), "text/plain"),
            ),
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.text(), "new row violates row-level security policy");
    let too_big = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&alice_token))
            .header("upload-length", (100u64 << 20).to_string())
            .header(
                "upload-metadata",
                tus_metadata("private", &format!("{alice}/huge.bin"), "text/plain"),
            ),
    )
    .await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_big.text(), "Maximum size exceeded");
    let bad_name = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&alice_token))
            .header("upload-length", "10")
            .header(
                "upload-metadata",
                tus_metadata("private", "../x", "text/plain"),
            ),
    )
    .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_name.text(), "Invalid key: ../x");

    // Every chunk but the last holds at least 1 MiB.
    const MIB: usize = 1024 * 1024;
    let small = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&alice_token))
            .header("upload-length", (3 * MIB).to_string())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-metadata",
                tus_metadata("private", &format!("{alice}/small.txt"), "text/plain"),
            )
            .body("01234"),
    )
    .await;
    assert_eq!(small.status, StatusCode::BAD_REQUEST, "{}", small.text());
    assert!(small.text().contains("at least 1048576 bytes"));
    st.app
        .db
        .client()
        .await
        .execute("delete from sovra.storage_uploads", &[])
        .await
        .unwrap();

    // Creation with upload, then termination.
    let with_body = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&alice_token))
            .header("upload-length", (MIB + 10).to_string())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-metadata",
                tus_metadata("private", &format!("{alice}/t.txt"), "text/plain"),
            )
            .body(vec![b'0'; MIB]),
    )
    .await;
    assert_eq!(
        with_body.status,
        StatusCode::CREATED,
        "{:?}",
        with_body.json()
    );
    assert_eq!(with_body.header("upload-offset"), MIB.to_string());
    let location = with_body.header("location").to_owned();
    let terminated = St::send(
        st.http
            .delete(format!("{}{location}", st.app.url))
            .bearer_auth(&alice_token),
    )
    .await;
    assert_eq!(terminated.status, StatusCode::NO_CONTENT);
    assert_eq!(
        st.count_rows("select count(*) from sovra.storage_uploads")
            .await,
        0
    );
    assert_eq!(st.stored_files().len(), 1);

    // Expired uploads are swept with their parts.
    let stale = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&alice_token))
            .header("upload-length", (MIB + 10).to_string())
            .header("content-type", "application/offset+octet-stream")
            .header(
                "upload-metadata",
                tus_metadata("private", &format!("{alice}/s.txt"), "text/plain"),
            )
            .body(vec![b'0'; MIB]),
    )
    .await;
    assert_eq!(stale.status, StatusCode::CREATED);
    assert_eq!(st.stored_files().len(), 2);
    st.app
        .db
        .client()
        .await
        .execute(
            "update sovra.storage_uploads set expires_at = now() - interval '1 s'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        st.app.tenant.storage.sweep_expired_uploads().await.unwrap(),
        1
    );
    assert_eq!(st.stored_files().len(), 1);
}

#[tokio::test]
async fn resumable_uploads_through_a_signed_upload_url() {
    let st = St::new().await;
    st.bucket("private", json!({})).await;
    let (alice, alice_token) = st.user();
    let name = format!("{alice}/signed.bin");
    let made = st
        .call(
            Method::POST,
            &format!("/object/upload/sign/private/{name}"),
            &alice_token,
            None,
        )
        .await;
    let token = made.json()["token"].as_str().unwrap().to_owned();
    // Without a valid signature for this object: refused.
    let forged = St::send(
        st.http
            .post(format!("{}/storage/v1/upload/resumable/sign", st.app.url))
            .header("x-signature", format!("{token}x"))
            .header("upload-length", "4")
            .header(
                "upload-metadata",
                tus_metadata("private", &name, "text/plain"),
            ),
    )
    .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST, "{}", forged.text());
    let other = St::send(
        st.http
            .post(format!("{}/storage/v1/upload/resumable/sign", st.app.url))
            .header("x-signature", &token)
            .header("upload-length", "4")
            .header(
                "upload-metadata",
                tus_metadata("private", &format!("{alice}/other.bin"), "text/plain"),
            ),
    )
    .await;
    assert_eq!(
        (other.status, other.text()),
        (StatusCode::BAD_REQUEST, "Invalid signature".to_owned())
    );
    // With it, no other credentials are needed, and Alice owns the result.
    let created = St::send(
        st.http
            .post(format!("{}/storage/v1/upload/resumable/sign", st.app.url))
            .header("x-signature", &token)
            .header("upload-length", "4")
            .header(
                "upload-metadata",
                tus_metadata("private", &name, "text/plain"),
            ),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    let location = created.header("location").to_owned();
    let done = St::send(
        st.http
            .patch(format!("{}{location}", st.app.url))
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body("data"),
    )
    .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{:?}", done.json());
    let down = St::send(st.request(
        Method::GET,
        &format!("/object/private/{name}"),
        Some(&alice_token),
    ))
    .await;
    assert_eq!(&down.bytes[..], b"data");
    let owner: String = st
        .app
        .db
        .client()
        .await
        .query_one(
            "select owner_id from storage.objects where name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, alice);
}

/// A real S3-compatible server (moto's server mode, from PyPI), started
/// for one test on a free port.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_s3() -> S3Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let binary = std::env::var("SOVRA_TEST_MOTO").unwrap_or_else(|_| "moto_server".to_owned());
    let child = std::process::Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {binary} ({err}); scripts/setup.sh installs it (pip install 'moto[server]')"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{endpoint}/")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // moto accepts unsigned bucket creation.
    let made = http
        .put(format!("{endpoint}/sovra-test"))
        .send()
        .await
        .unwrap();
    assert!(
        made.status().is_success(),
        "creating the S3 bucket: {}",
        made.status()
    );
    S3Server { child, endpoint }
}

#[tokio::test]
async fn s3_backend() {
    let s3 = start_s3().await;
    let mut config = sovra_config::Config::default();
    config.storage.backend = "s3".to_owned();
    config.storage.s3.endpoint = Some(s3.endpoint.clone());
    config.storage.s3.bucket = Some("sovra-test".to_owned());
    config.storage.s3.access_key_id = Some("testing".to_owned());
    config.storage.s3.secret_access_key = Some("testing".to_owned());
    config.storage.s3.force_path_style = true;
    let st = St::with(config).await;
    let service = st.service();
    st.bucket("private", json!({})).await;
    let (alice, alice_token) = st.user();
    let (_, bob_token) = st.user();

    let up = st
        .upload(
            Method::POST,
            &format!("private/{alice}/s3.txt"),
            &alice_token,
            b"bytes in s3",
            "text/plain",
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.json());
    let down = St::send(st.request(
        Method::GET,
        &format!("/object/private/{alice}/s3.txt"),
        Some(&alice_token),
    ))
    .await;
    assert_eq!(&down.bytes[..], b"bytes in s3");
    let range = St::send(
        st.request(
            Method::GET,
            &format!("/object/private/{alice}/s3.txt"),
            Some(&alice_token),
        )
        .header("range", "bytes=0-4"),
    )
    .await;
    assert_eq!(&range.bytes[..], b"bytes");
    let denied = St::send(st.request(
        Method::GET,
        &format!("/object/private/{alice}/s3.txt"),
        Some(&bob_token),
    ))
    .await;
    assert_eq!(denied.logical(), "404");

    // Large enough for a multipart upload to S3.
    let big: Vec<u8> = (0..(17 * 1024 * 1024) as u32)
        .map(|i| (i % 241) as u8)
        .collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let up = St::send(
        st.request(Method::POST, "/object/private/big.bin", Some(&service))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            ))),
    )
    .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.json());
    let down = St::send(st.request(Method::GET, "/object/private/big.bin", Some(&service))).await;
    assert!(down.bytes[..] == big[..]);

    let copy = st.call(Method::POST, "/object/copy", &service, Some(json!({"bucketId": "private", "sourceKey": "big.bin", "destinationKey": "big2.bin"}))).await;
    assert_eq!(copy.status, StatusCode::OK, "{:?}", copy.json());
    let copied =
        St::send(st.request(Method::GET, "/object/private/big2.bin", Some(&service))).await;
    assert_eq!(copied.bytes.len(), big.len());

    // A resumable upload joined from parts in S3.
    let data = vec![9u8; 7 * 1024 * 1024];
    let created = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&service))
            .header("upload-length", data.len().to_string())
            .header(
                "upload-metadata",
                tus_metadata("private", "tus.bin", "application/octet-stream"),
            ),
    )
    .await;
    let location = created.header("location").to_owned();
    let first = tus_patch(
        &st,
        &location,
        &service,
        0,
        data[..6 * 1024 * 1024].to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    let last = tus_patch(
        &st,
        &location,
        &service,
        6 * 1024 * 1024,
        data[6 * 1024 * 1024..].to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(last.status, StatusCode::NO_CONTENT, "{:?}", last.json());
    let down = St::send(st.request(Method::GET, "/object/private/tus.bin", Some(&service))).await;
    assert!(down.bytes[..] == data[..]);

    // Deletes remove the bytes from S3.
    let removed = st
        .call(
            Method::DELETE,
            "/object/private",
            &service,
            Some(
                json!({"prefixes": ["big.bin", "big2.bin", "tus.bin", format!("{alice}/s3.txt")]}),
            ),
        )
        .await;
    assert_eq!(removed.json().as_array().unwrap().len(), 4);
    let listing = reqwest::get(format!("{}/sovra-test?list-type=2", s3.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listing.contains("<Key>"),
        "S3 still holds objects: {listing}"
    );
}

/// Sends `head` (and `body`) as raw HTTP/1.1, then reads the answer
/// without sending anything more. The deadline only catches a hang.
async fn raw_exchange(st: &St, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = st.app.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            // The answer is whole once its JSON body has closed.
            if answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer while the body was held: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Keep the connection (and its unsent body) open until here.
    drop(stream);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn unauthorised_uploads_are_refused_before_their_body_is_read() {
    let st = St::new().await;
    st.bucket("private", json!({})).await;
    let (alice, _) = st.user();
    let (_, bob_token) = st.user();
    let addr = st.app.url.trim_start_matches("http://").to_owned();
    // Small enough that uploads used to stream before any check: the
    // answer now comes while most of the body is still unsent.
    let head = |path: &str, token: &str| {
        format!(
            "POST /storage/v1{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: text/plain\r\nContent-Length: 500000\r\n\r\n"
        )
    };
    // RLS: Bob in Alice's folder.
    let rls = raw_exchange(
        &st,
        &head(&format!("/object/private/{alice}/x.txt"), &bob_token),
        b"0123456789",
    )
    .await;
    assert!(rls.contains("\"statusCode\":\"403\""), "{rls}");
    // No such bucket.
    let missing = raw_exchange(
        &st,
        &head(&format!("/object/nope/{alice}/x.txt"), &bob_token),
        b"0123456789",
    )
    .await;
    assert!(missing.contains("\"statusCode\":\"404\""), "{missing}");
    // A token that does not verify.
    let forged = raw_exchange(
        &st,
        &head(&format!("/object/private/{alice}/x.txt"), "not.a.jwt"),
        b"0123456789",
    )
    .await;
    assert!(forged.contains("\"statusCode\":\"403\""), "{forged}");
    // Updates too: PUT of an object that does not exist.
    let put = raw_exchange(
        &st,
        &head(&format!("/object/private/{alice}/x.txt"), &bob_token).replacen("POST", "PUT", 1),
        b"0123456789",
    )
    .await;
    assert!(put.contains("\"statusCode\":\"4"), "{put}");
    assert!(st.stored_files().is_empty(), "nothing was written");
    // And an allowed upload still works.
    let (carol, carol_token) = st.user();
    let ok = st
        .upload(
            Method::POST,
            &format!("private/{carol}/a.txt"),
            &carol_token,
            b"hello",
            "text/plain",
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.json());
}

#[tokio::test]
async fn active_content_is_never_served_inline_and_content_types_are_strict() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("site", json!({"public": true})).await;
    st.bucket("images", json!({"allowed_mime_types": ["image/png"]}))
        .await;
    for (name, mime) in [
        ("page.html", "text/html"),
        ("logo.svg", "image/svg+xml"),
        ("feed.xml", "application/xml"),
        ("doc.xhtml", "application/xhtml+xml; charset=utf-8"),
    ] {
        let up = st
            .upload(
                Method::POST,
                &format!("site/{name}"),
                &service,
                b"<svg onload=alert(1)>",
                mime,
            )
            .await;
        assert_eq!(up.status, StatusCode::OK, "{:?}", up.json());
        for path in [
            format!("/object/site/{name}"),
            format!("/object/public/site/{name}"),
        ] {
            let down = St::send(st.request(Method::GET, &path, Some(&service))).await;
            assert_eq!(down.status, StatusCode::OK);
            assert_eq!(down.header("x-content-type-options"), "nosniff", "{path}");
            assert_eq!(
                down.header("content-security-policy"),
                "default-src 'none'; sandbox",
                "{path}"
            );
            assert_eq!(down.header("content-disposition"), "attachment;", "{path}");
        }
    }
    // Passive types are shown inline, but never sniffed or scripted.
    let png = st
        .upload(
            Method::POST,
            "site/a.png",
            &service,
            b"\x89PNG",
            "image/png",
        )
        .await;
    assert_eq!(png.status, StatusCode::OK);
    let down = St::send(st.request(Method::GET, "/object/public/site/a.png", None)).await;
    assert_eq!(down.header("x-content-type-options"), "nosniff");
    assert_eq!(
        down.header("content-security-policy"),
        "default-src 'none'; sandbox"
    );
    assert_eq!(down.header("content-disposition"), "");
    // `?download=` still names the file.
    let named = St::send(st.request(
        Method::GET,
        "/object/public/site/page.html?download=p.html",
        None,
    ))
    .await;
    assert_eq!(
        named.header("content-disposition"),
        "attachment; filename=p.html; filename*=UTF-8''p.html"
    );
    // PDFs get nosniff but no sandbox (browsers refuse to show a
    // sandboxed PDF).
    st.upload(
        Method::POST,
        "site/a.pdf",
        &service,
        b"%PDF-1.4",
        "application/pdf",
    )
    .await;
    let pdf = St::send(st.request(Method::GET, "/object/public/site/a.pdf", None)).await;
    assert_eq!(pdf.header("x-content-type-options"), "nosniff");
    assert_eq!(pdf.header("content-security-policy"), "");

    // A newline in a multipart contentType no longer passes the
    // allow-list (it used to, and then dropped the header).
    let form = reqwest::multipart::Form::new()
        .text("contentType", "image/png\r\nX-Evil: 1")
        .part(
            "",
            reqwest::multipart::Part::bytes(b"<script>".to_vec()).file_name("x"),
        );
    let multipart = St::send(
        st.request(Method::POST, "/object/images/x.png", Some(&service))
            .multipart(form),
    )
    .await;
    assert_eq!(
        multipart.json()["code"],
        "InvalidMimeType",
        "{:?}",
        multipart.json()
    );
    // A raw Content-Type that is not text (it used to become
    // application/octet-stream), or not type/subtype.
    for bad in [
        &b"text/pl\xe4in"[..],
        b"text/html, image/png",
        b"image/png;x",
    ] {
        let raw = St::send(
            st.request(Method::POST, "/object/site/bad.bin", Some(&service))
                .header(
                    "content-type",
                    reqwest::header::HeaderValue::from_bytes(bad).unwrap(),
                )
                .body("x"),
        )
        .await;
        assert_eq!(raw.json()["code"], "InvalidMimeType", "{bad:?}");
    }
    // Updates (PUT) check it too.
    let update = St::send(
        st.request(Method::PUT, "/object/site/a.png", Some(&service))
            .header("content-type", "image/png; x")
            .body("x"),
    )
    .await;
    assert_eq!(update.json()["code"], "InvalidMimeType");
    // And TUS metadata.
    let tus = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&service))
            .header("upload-length", "10")
            .header(
                "upload-metadata",
                tus_metadata("images", "t.png", "image/png\nX-Evil: 1"),
            ),
    )
    .await;
    assert_eq!(tus.status, StatusCode::BAD_REQUEST, "{}", tus.text());
    assert!(
        tus.text().starts_with("Invalid Content-Type"),
        "{}",
        tus.text()
    );
    assert_eq!(
        st.count_rows("select count(*) from storage.objects where name like 'bad%' or name in ('x.png', 't.png')")
            .await,
        0
    );
}

#[tokio::test]
async fn stored_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let st = St::new().await;
    let service = st.service();
    st.bucket("media", json!({})).await;
    let up = st
        .upload(
            Method::POST,
            "media/a.txt",
            &service,
            b"secret",
            "text/plain",
        )
        .await;
    assert_eq!(up.status, StatusCode::OK);
    let copy = st
        .call(
            Method::POST,
            "/object/copy",
            &service,
            Some(json!({"bucketId": "media", "sourceKey": "a.txt", "destinationKey": "b.txt"})),
        )
        .await;
    assert_eq!(copy.status, StatusCode::OK, "{:?}", copy.json());
    let files = st.stored_files();
    assert_eq!(files.len(), 2);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = st.app.data_dir.join("storage");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        let mut dir = file.parent().unwrap();
        while dir != root {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
            dir = dir.parent().unwrap();
        }
    }
}

#[tokio::test]
async fn move_and_copy_apply_the_destination_bucket_rules() {
    let st = St::new().await;
    let service = st.service();
    st.bucket("big", json!({})).await;
    st.bucket(
        "small",
        json!({"file_size_limit": 10, "allowed_mime_types": ["image/png"]}),
    )
    .await;
    st.upload(
        Method::POST,
        "big/long.png",
        &service,
        &[7u8; 100],
        "image/png",
    )
    .await;
    st.upload(
        Method::POST,
        "big/short.txt",
        &service,
        b"12345",
        "text/plain",
    )
    .await;
    st.upload(Method::POST, "big/ok.png", &service, b"12345", "image/png")
        .await;
    for op in ["/object/move", "/object/copy"] {
        let relocate = |source: &str, target: &str| {
            st.call(
                Method::POST,
                op,
                &service,
                Some(json!({"bucketId": "big", "sourceKey": source,
                            "destinationBucket": "small", "destinationKey": target})),
            )
        };
        let too_big = relocate("long.png", "long.png").await;
        assert_eq!(too_big.logical(), "413", "{op}: {:?}", too_big.json());
        let wrong_type = relocate("short.txt", "short.txt").await;
        assert_eq!(wrong_type.logical(), "415", "{op}: {:?}", wrong_type.json());
        let missing_bucket = st
            .call(
                Method::POST,
                op,
                &service,
                Some(json!({"bucketId": "big", "sourceKey": "ok.png",
                            "destinationBucket": "nope", "destinationKey": "x.png"})),
            )
            .await;
        assert_eq!(missing_bucket.logical(), "404");
    }
    assert_eq!(
        st.count_rows("select count(*) from storage.objects where bucket_id = 'small'")
            .await,
        0
    );
    // What fits is moved and copied as before.
    let copied = st
        .call(
            Method::POST,
            "/object/copy",
            &service,
            Some(json!({"bucketId": "big", "sourceKey": "ok.png",
                        "destinationBucket": "small", "destinationKey": "c.png"})),
        )
        .await;
    assert_eq!(copied.status, StatusCode::OK, "{:?}", copied.json());
    let moved = st
        .call(
            Method::POST,
            "/object/move",
            &service,
            Some(json!({"bucketId": "big", "sourceKey": "ok.png",
                        "destinationBucket": "small", "destinationKey": "m.png"})),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.json());
    assert_eq!(
        st.count_rows("select count(*) from storage.objects where bucket_id = 'small'")
            .await,
        2
    );
}

#[tokio::test]
async fn the_version_column_is_written_only_by_the_api() {
    let st = St::new().await;
    st.bucket("private", json!({})).await;
    let (alice, alice_token) = st.user();
    let up = st
        .upload(
            Method::POST,
            &format!("private/{alice}/a.txt"),
            &alice_token,
            b"mine",
            "text/plain",
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.json());
    let client = st.app.db.client().await;
    let claims = json!({"sub": alice, "role": "authenticated"}).to_string();
    let as_alice = |sql: &str| {
        format!(
            "begin; set local role authenticated; \
             select set_config('request.jwt.claims', '{claims}', true); {sql}; commit;"
        )
    };
    for sql in [
        "update storage.objects set version = 'someone-elses-version'".to_owned(),
        format!(
            "insert into storage.objects (bucket_id, name, version) values ('private', '{alice}/b.txt', 'someone-elses-version')"
        ),
    ] {
        let err = client.batch_execute(&as_alice(&sql)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&sovra_pg::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {err:?}"
        );
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("written only by the Storage API"),
            "{err:?}"
        );
        client.batch_execute("rollback").await.unwrap();
    }
    // Other columns stay writable under RLS, and the API still writes it.
    client
        .batch_execute(&as_alice(
            "update storage.objects set user_metadata = '{\"a\": 1}'",
        ))
        .await
        .unwrap();
    let again = st
        .upload(
            Method::PUT,
            &format!("private/{alice}/a.txt"),
            &alice_token,
            b"mine again",
            "text/plain",
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.json());
    let down = St::send(st.request(
        Method::GET,
        &format!("/object/private/{alice}/a.txt"),
        Some(&alice_token),
    ))
    .await;
    assert_eq!(&down.bytes[..], b"mine again");
}

#[tokio::test]
async fn resumable_uploads_of_callers_without_a_sub_are_not_shared() {
    let st = St::new().await;
    st.bucket("drop", json!({})).await;
    st.app
        .db
        .client()
        .await
        .batch_execute(
            "create policy anon_drop on storage.objects for insert to anon with check (bucket_id = 'drop');
             create policy anon_see on storage.objects for select to anon using (bucket_id = 'drop');",
        )
        .await
        .unwrap();
    let anon = st.app.anon_key.clone();
    // Another caller without a `sub`: an anon token with other claims.
    let other_anon = st.app.sign(json!({"role": "anon", "iss": "someone-else"}));
    let created = St::send(
        st.request(Method::POST, "/upload/resumable", Some(&anon))
            .header("upload-length", "10")
            .header(
                "upload-metadata",
                tus_metadata("drop", "a.bin", "text/plain"),
            ),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    let location = created.header("location").to_owned();
    let head = |token: String| {
        St::send(
            st.http
                .head(format!("{}{location}", st.app.url))
                .header("apikey", &st.app.anon_key)
                .bearer_auth(token)
                .header("tus-resumable", "1.0.0"),
        )
    };
    assert_eq!(head(other_anon.clone()).await.status, StatusCode::NOT_FOUND);
    let stranger = tus_patch(
        &st,
        &location,
        &other_anon,
        0,
        b"0123456789".to_vec(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        stranger.status,
        StatusCode::NOT_FOUND,
        "{}",
        stranger.text()
    );
    // The stranger took no lease: the creator continues at once.
    assert_eq!(head(anon.clone()).await.status, StatusCode::OK);
    let done = tus_patch(&st, &location, &anon, 0, b"0123456789".to_vec(), false)
        .await
        .unwrap();
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{:?}", done.json());
    assert_eq!(
        st.count_rows("select count(*) from storage.objects where bucket_id = 'drop'")
            .await,
        1
    );
}
