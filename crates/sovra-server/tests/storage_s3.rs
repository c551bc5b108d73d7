//! The S3 protocol at `/storage/v1/s3` through the real router on a real
//! database: requests signed here with SigV4 as S3 clients sign them
//! (headers, presigned URLs, `aws-chunked` bodies), with S3 access keys
//! (as the service) and session tokens (as a user, under RLS); objects
//! written over S3 are read through `/storage/v1/object` and the other
//! way round; every refusal in S3's XML error shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_storage::s3::{sigv4, xml};
use sovra_test_support::TestApp;

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    bytes: Bytes,
}

impl Reply {
    fn xml(&self) -> xml::Element {
        xml::parse(&self.bytes).unwrap_or_else(|err| {
            panic!(
                "not XML ({err:?}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }
    /// The `<Code>` of an S3 error.
    fn code(&self) -> String {
        let root = self.xml();
        assert_eq!(
            root.name,
            "Error",
            "{}",
            String::from_utf8_lossy(&self.bytes)
        );
        root.child_text("Code").unwrap_or("").to_owned()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A minimal S3 client: signs every request with SigV4.
#[derive(Clone)]
struct S3 {
    http: reqwest::Client,
    /// `http://127.0.0.1:port`.
    url: String,
    /// The path of the endpoint (`/storage/v1/s3`, or a tenant's).
    prefix: String,
    access: String,
    secret: String,
    token: Option<String>,
    region: String,
    /// Seconds added to the clock when signing.
    skew: i64,
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(sigv4::uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

impl S3 {
    fn host(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn raw_query(pairs: &[(String, String)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Sends a signed request for `path` (unencoded, `/bucket/key`).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
        payload_hash: Option<&str>,
    ) -> Reply {
        let uri = format!("{}{}", self.prefix, encode_path(path));
        let pairs = S3::pairs(query);
        let long_date = sigv4::format_long_date(TestApp::now() + self.skew);
        let hash = payload_hash.map_or_else(|| sigv4::sha256_hex(&body), str::to_owned);
        let host = self.host();
        let mut all: Vec<(String, String)> = vec![
            ("host".to_owned(), host),
            ("x-amz-date".to_owned(), long_date.clone()),
            ("x-amz-content-sha256".to_owned(), hash.clone()),
        ];
        if let Some(token) = &self.token {
            all.push(("x-amz-security-token".to_owned(), token.clone()));
        }
        for (name, value) in headers {
            all.push(((*name).to_ascii_lowercase(), (*value).to_owned()));
        }
        let signed: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
        let authorization = sigv4::authorization_header(
            &self.access,
            &self.secret,
            &self.region,
            &long_date,
            method.as_str(),
            &uri,
            &pairs,
            &signed,
            |name| {
                all.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .collect()
            },
            &hash,
        );
        let mut url = format!("{}{uri}", self.url);
        if !pairs.is_empty() {
            url = format!("{url}?{}", S3::raw_query(&pairs));
        }
        let mut request = self
            .http
            .request(method, url)
            .header("authorization", authorization);
        for (name, value) in all.iter().filter(|(n, _)| n != "host") {
            request = request.header(name.as_str(), value.as_str());
        }
        send(request.body(body)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.send_with(method, path, query, headers, body, None)
            .await
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, query, &[], Vec::new()).await
    }

    async fn put(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        self.send(Method::PUT, path, &[], headers, body.to_vec())
            .await
    }

    /// A presigned GET URL for `path`, valid `expires` seconds from `at`.
    fn presign(&self, path: &str, at: i64, expires: u64) -> String {
        let uri = format!("{}{}", self.prefix, encode_path(path));
        let long_date = sigv4::format_long_date(at);
        let mut pairs = sigv4::presign_pairs(
            &self.access,
            &self.region,
            &long_date,
            expires,
            self.token.as_deref(),
        );
        let credential = sigv4::Credential {
            access_key: self.access.clone(),
            date: long_date[..8].to_owned(),
            region: self.region.clone(),
            service: "s3".to_owned(),
        };
        let host = self.host();
        let canonical = sigv4::canonical_request(
            "GET",
            &uri,
            &sigv4::canonical_query(&pairs),
            &["host".to_owned()],
            |_| vec![host.as_str()],
            sigv4::UNSIGNED_PAYLOAD,
        );
        let signature = sigv4::sign(
            &sigv4::signing_key(&self.secret, &credential),
            &sigv4::string_to_sign(&long_date, &credential.scope(), &canonical),
        );
        pairs.push(("X-Amz-Signature".to_owned(), signature));
        format!("{}{uri}?{}", self.url, S3::raw_query(&pairs))
    }
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        bytes: response.bytes().await.unwrap(),
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
  insert into storage.buckets (id, name) values ('private', 'private');
";

struct Env {
    app: TestApp,
    http: reqwest::Client,
}

impl Env {
    async fn new() -> Env {
        init_logs();
        let app = TestApp::spawn().await;
        app.db.client().await.batch_execute(POLICIES).await.unwrap();
        Env {
            app,
            http: reqwest::Client::new(),
        }
    }

    fn storage(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/storage/v1{path}", self.app.url))
            .header("apikey", &self.app.anon_key)
            .bearer_auth(token)
    }

    /// Makes an S3 access key through the API.
    async fn access_key(&self) -> (String, String) {
        let reply = send(
            self.storage(Method::POST, "/s3-credentials", &self.app.service_role_key)
                .json(&json!({"description": "tests"})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body: Value = serde_json::from_slice(&reply.bytes).unwrap();
        (
            body["access_key"].as_str().unwrap().to_owned(),
            body["secret_key"].as_str().unwrap().to_owned(),
        )
    }

    fn client(&self, access: &str, secret: &str, token: Option<&str>) -> S3 {
        S3 {
            http: self.http.clone(),
            url: self.app.url.clone(),
            prefix: "/storage/v1/s3".to_owned(),
            access: access.to_owned(),
            secret: secret.to_owned(),
            token: token.map(str::to_owned),
            region: "local".to_owned(),
            skew: 0,
        }
    }

    async fn service_client(&self) -> S3 {
        let (access, secret) = self.access_key().await;
        self.client(&access, &secret, None)
    }

    /// A session-token client for a new user: its id and client.
    fn user_client(&self) -> (String, S3) {
        let id = uuid::Uuid::new_v4().to_string();
        let token = self.app.sign(Value::Object(TestApp::user_claims(&id)));
        let client = self.client("default", &self.app.anon_key, Some(&token));
        (id, client)
    }
}

fn keys_of(list: &xml::Element) -> Vec<String> {
    list.all("Contents")
        .filter_map(|c| c.child_text("Key").map(str::to_owned))
        .collect()
}

fn prefixes_of(list: &xml::Element) -> Vec<String> {
    list.all("CommonPrefixes")
        .filter_map(|c| c.child_text("Prefix").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn access_keys_are_made_by_the_service_role_and_shown_once() {
    let env = Env::new().await;
    let (access, secret) = env.access_key().await;
    assert!(access.starts_with("SV") && access.len() == 20, "{access}");
    assert_eq!(secret.len(), 40);
    // Listed without the secret.
    let list = send(env.storage(Method::GET, "/s3-credentials", &env.app.service_role_key)).await;
    assert_eq!(list.status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&list.bytes).unwrap();
    assert_eq!(body[0]["id"], access.as_str());
    assert_eq!(body[0]["description"], "tests");
    assert!(body[0].get("secret_key").is_none(), "{body}");
    assert!(!list.text().contains(&secret));
    // Nothing secret in the database.
    let rows = env
        .app
        .db
        .client()
        .await
        .query(
            "select row_to_json(k)::text from sovra.s3_access_keys k",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        assert!(!row.get::<_, String>(0).contains(&secret));
    }
    // Only the service role manages keys.
    let (_, user) = env.user_client();
    let token = user.token.clone().unwrap();
    for (method, path) in [
        (Method::GET, "/s3-credentials"),
        (Method::POST, "/s3-credentials"),
        (Method::DELETE, &*format!("/s3-credentials/{access}")),
    ] {
        let reply = send(env.storage(method, path, &token).json(&json!({}))).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.text()
        );
    }
    let reply = send(env.storage(Method::GET, "/s3-credentials", &env.app.anon_key)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = send(
        env.storage(Method::POST, "/s3-credentials", &env.app.service_role_key)
            .json(&json!({"description": 5})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // Revoked: its requests are refused.
    let s3 = env.client(&access, &secret, None);
    assert_eq!(s3.get("/", &[]).await.status, StatusCode::OK);
    let reply = send(env.storage(
        Method::DELETE,
        &format!("/s3-credentials/{access}"),
        &env.app.service_role_key,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = s3.get("/", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "InvalidAccessKeyId");
    let reply = send(env.storage(
        Method::DELETE,
        &format!("/s3-credentials/{access}"),
        &env.app.service_role_key,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn buckets_and_objects_round_trip_with_the_storage_api() {
    let env = Env::new().await;
    let s3 = env.service_client().await;
    // CreateBucket, HeadBucket, ListBuckets.
    let reply = s3.put("/photos", b"", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("location"), "/photos");
    let reply = s3.put("/photos", b"", &[]).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.code(), "BucketAlreadyExists");
    let reply = s3.send(Method::HEAD, "/photos", &[], &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-amz-bucket-region"), "local");
    let reply = s3.send(Method::HEAD, "/nope", &[], &[], Vec::new()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let list = s3.get("/", &[]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    let root = list.xml();
    assert_eq!(root.name, "ListAllMyBucketsResult");
    let names: Vec<&str> = root
        .child("Buckets")
        .unwrap()
        .all("Bucket")
        .filter_map(|b| b.child_text("Name"))
        .collect();
    assert_eq!(names, ["photos", "private"]);
    // The bucket is the Storage API's.
    let bucket = send(env.storage(Method::GET, "/bucket/photos", &env.app.service_role_key)).await;
    assert_eq!(bucket.status, StatusCode::OK);

    // PutObject with user metadata; GetObject over S3 and /object.
    let reply = s3
        .put(
            "/photos/a/b c.txt",
            b"hello world",
            &[
                ("content-type", "text/plain"),
                ("x-amz-meta-colour", "blue"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let etag = reply.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let reply = s3.get("/photos/a/b c.txt", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.bytes[..], b"hello world");
    assert_eq!(reply.header("etag"), etag);
    assert_eq!(reply.header("content-type"), "text/plain");
    assert_eq!(reply.header("x-amz-meta-colour"), "blue");
    let reply = send(env.storage(
        Method::GET,
        "/object/photos/a/b%20c.txt",
        &env.app.service_role_key,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&reply.bytes[..], b"hello world");
    let info = send(env.storage(
        Method::GET,
        "/object/info/photos/a/b%20c.txt",
        &env.app.service_role_key,
    ))
    .await;
    let info: Value = serde_json::from_slice(&info.bytes).unwrap();
    assert_eq!(info["metadata"], json!({"colour": "blue"}));
    // Written through /object, read through S3; ranges and HEAD.
    let reply = send(
        env.storage(
            Method::POST,
            "/object/photos/a/c.bin",
            &env.app.service_role_key,
        )
        .header("content-type", "application/octet-stream")
        .body(b"0123456789".to_vec()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = s3
        .send(
            Method::GET,
            "/photos/a/c.bin",
            &[],
            &[("range", "bytes=2-5")],
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&reply.bytes[..], b"2345");
    assert_eq!(reply.header("content-range"), "bytes 2-5/10");
    let reply = s3
        .send(
            Method::GET,
            "/photos/a/c.bin",
            &[],
            &[("range", "bytes=20-30")],
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(reply.code(), "InvalidRange");
    let reply = s3
        .send(Method::HEAD, "/photos/a/c.bin", &[], &[], Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-length"), "10");
    assert!(reply.bytes.is_empty());
    let reply = s3.get("/photos/missing", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "NoSuchKey");
    let reply = s3.get("/nope/x", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // Empty objects exist in S3 (files, folder markers).
    let reply = s3
        .put(
            "/photos/empty.txt",
            b"",
            &[("content-type", "text/plain"), ("x-amz-meta-e", "1")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = s3.get("/photos/empty.txt", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.bytes.is_empty());
    assert_eq!(reply.header("content-length"), "0");
    assert_eq!(reply.header("x-amz-meta-e"), "1");
    let reply = s3
        .send(Method::DELETE, "/photos/empty.txt", &[], &[], Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    // Replacing an object keeps one version.
    let reply = s3.put("/photos/a/c.bin", b"new", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(&s3.get("/photos/a/c.bin", &[]).await.bytes[..], b"new");

    // ListObjectsV2: prefix, delimiter, paging.
    for key in ["a/d/e.txt", "b.txt", "c/1", "c/2"] {
        assert_eq!(
            s3.put(&format!("/photos/{key}"), b"x", &[]).await.status,
            StatusCode::OK
        );
    }
    let list = s3.get("/photos", &[("list-type", "2")]).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    let root = list.xml();
    assert_eq!(root.name, "ListBucketResult");
    assert_eq!(
        keys_of(&root),
        ["a/b c.txt", "a/c.bin", "a/d/e.txt", "b.txt", "c/1", "c/2"]
    );
    assert_eq!(root.child_text("KeyCount"), Some("6"));
    let first = root.all("Contents").next().unwrap();
    assert_eq!(first.child_text("Size"), Some("11"));
    assert_eq!(first.child_text("ETag"), Some(etag.as_str()));
    let root = s3
        .get("/photos", &[("list-type", "2"), ("delimiter", "/")])
        .await
        .xml();
    assert_eq!(keys_of(&root), ["b.txt"]);
    assert_eq!(prefixes_of(&root), ["a/", "c/"]);
    let root = s3
        .get(
            "/photos",
            &[("list-type", "2"), ("delimiter", "/"), ("prefix", "a/")],
        )
        .await
        .xml();
    assert_eq!(keys_of(&root), ["a/b c.txt", "a/c.bin"]);
    assert_eq!(prefixes_of(&root), ["a/d/"]);
    // Pages of two, with continuation tokens.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![("list-type", "2"), ("max-keys", "2"), ("delimiter", "/")];
        if let Some(token) = &token {
            query.push(("continuation-token", token.as_str()));
        }
        let root = s3.get("/photos", &query).await.xml();
        seen.extend(keys_of(&root));
        seen.extend(prefixes_of(&root));
        match root.child_text("NextContinuationToken") {
            Some(next) => {
                assert_eq!(root.child_text("IsTruncated"), Some("true"));
                token = Some(next.to_owned());
            }
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["a/", "b.txt", "c/"]);
    let root = s3
        .get("/photos", &[("list-type", "2"), ("start-after", "b.txt")])
        .await
        .xml();
    assert_eq!(keys_of(&root), ["c/1", "c/2"]);
    // `encoding-type=url` (boto3 asks for it).
    let root = s3
        .get(
            "/photos",
            &[
                ("list-type", "2"),
                ("prefix", "a/b"),
                ("encoding-type", "url"),
            ],
        )
        .await
        .xml();
    assert_eq!(keys_of(&root), ["a/b%20c.txt"]);
    // ListObjects (v1) with a marker.
    let root = s3.get("/photos", &[("marker", "c/1")]).await.xml();
    assert_eq!(keys_of(&root), ["c/2"]);
    let reply = s3
        .get("/photos", &[("list-type", "2"), ("max-keys", "x")])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = s3
        .get(
            "/photos",
            &[("list-type", "2"), ("continuation-token", "!!")],
        )
        .await;
    assert_eq!(reply.code(), "InvalidArgument");

    // CopyObject: metadata copied, or replaced.
    let reply = s3
        .put(
            "/photos/copy.txt",
            b"",
            &[("x-amz-copy-source", "/photos/a/b%20c.txt")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.xml().name, "CopyObjectResult");
    let copy = s3.get("/photos/copy.txt", &[]).await;
    assert_eq!(&copy.bytes[..], b"hello world");
    assert_eq!(copy.header("x-amz-meta-colour"), "blue");
    assert_eq!(copy.header("content-type"), "text/plain");
    let reply = s3
        .put(
            "/photos/copy2.txt",
            b"",
            &[
                ("x-amz-copy-source", "photos/a/b%20c.txt"),
                ("x-amz-metadata-directive", "REPLACE"),
                ("content-type", "text/markdown"),
                ("x-amz-meta-shape", "round"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let copy = s3.get("/photos/copy2.txt", &[]).await;
    assert_eq!(copy.header("content-type"), "text/markdown");
    assert_eq!(copy.header("x-amz-meta-shape"), "round");
    assert_eq!(copy.header("x-amz-meta-colour"), "");
    let reply = s3
        .put(
            "/photos/copy3.txt",
            b"",
            &[("x-amz-copy-source", "/photos/none")],
        )
        .await;
    assert_eq!(reply.code(), "NoSuchKey");

    // DeleteObject, DeleteObjects, DeleteBucket.
    let reply = s3
        .send(Method::DELETE, "/photos/copy.txt", &[], &[], Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        s3.get("/photos/copy.txt", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = s3
        .send(Method::DELETE, "/photos/copy.txt", &[], &[], Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = s3
        .send(Method::DELETE, "/photos", &[], &[], Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.code(), "BucketNotEmpty");
    let mut keys: Vec<String> = keys_of(&s3.get("/photos", &[("list-type", "2")]).await.xml());
    keys.push("never-was".to_owned());
    let body = format!(
        "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{}</Delete>",
        keys.iter()
            .map(|k| format!("<Object><Key>{}</Key></Object>", xml::escape(k)))
            .collect::<String>()
    );
    let reply = s3
        .send(
            Method::POST,
            "/photos",
            &[("delete", "")],
            &[],
            body.into_bytes(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let root = reply.xml();
    assert_eq!(root.all("Deleted").count(), keys.len() - 1);
    let errors: Vec<&str> = root
        .all("Error")
        .filter_map(|e| e.child_text("Key"))
        .collect();
    assert_eq!(errors, ["never-was"]);
    assert!(keys_of(&s3.get("/photos", &[("list-type", "2")]).await.xml()).is_empty());
    // No stored bytes are left behind.
    let reply = s3
        .send(Method::DELETE, "/photos", &[], &[], Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    let reply = s3
        .send(Method::DELETE, "/photos", &[], &[], Vec::new())
        .await;
    assert_eq!(reply.code(), "NoSuchBucket");
}

#[tokio::test]
async fn bad_signatures_dates_regions_and_bodies_are_refused() {
    let env = Env::new().await;
    let s3 = env.service_client().await;
    assert_eq!(s3.put("/b", b"", &[]).await.status, StatusCode::OK);
    // Wrong secret.
    let mut wrong = s3.clone();
    wrong.secret.push('x');
    let reply = wrong.get("/", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "SignatureDoesNotMatch");
    // Unknown key.
    let stranger = env.client("SVNOSUCHKEY000000000", &s3.secret, None);
    let reply = stranger.get("/", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "InvalidAccessKeyId");
    // More than 15 minutes off.
    let mut late = s3.clone();
    late.skew = -16 * 60;
    let reply = late.get("/", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "RequestTimeTooSkewed");
    late.skew = 14 * 60;
    assert_eq!(late.get("/", &[]).await.status, StatusCode::OK);
    // Another region.
    let mut elsewhere = s3.clone();
    elsewhere.region = "us-east-1".to_owned();
    let reply = elsewhere.get("/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "AuthorizationHeaderMalformed");
    assert!(
        reply.text().contains("expecting &apos;local&apos;"),
        "{}",
        reply.text()
    );
    // No signature at all, or a bearer token.
    let reply = send(env.http.get(format!("{}/storage/v1/s3/", env.app.url))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "AccessDenied");
    let reply = send(
        env.http
            .get(format!("{}/storage/v1/s3/b", env.app.url))
            .bearer_auth(&env.app.service_role_key),
    )
    .await;
    assert_eq!(reply.code(), "AccessDenied");
    // A malformed Authorization header.
    let reply = send(
        env.http
            .get(format!("{}/storage/v1/s3/", env.app.url))
            .header("authorization", "AWS4-HMAC-SHA256 Credential=x")
            .header("x-amz-date", "20250101T000000Z"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "AuthorizationHeaderMalformed");
    // A body that is not what was signed: refused, nothing stored.
    let real = sigv4::sha256_hex(b"signed body");
    let reply = s3
        .send_with(
            Method::PUT,
            "/b/k",
            &[],
            &[],
            b"other body".to_vec(),
            Some(&real),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.code(), "XAmzContentSHA256Mismatch");
    assert_eq!(s3.get("/b/k", &[]).await.status, StatusCode::NOT_FOUND);
    // A tampered request: the signature covers the path and the query.
    let url = s3.presign("/b/k", TestApp::now(), 60);
    let tampered = url.replace("/b/k?", "/b/other?");
    let reply = send(env.http.get(tampered)).await;
    assert_eq!(reply.code(), "SignatureDoesNotMatch");
    // Bounded XML: too many keys, malformed, too large.
    let many = format!(
        "<Delete>{}</Delete>",
        "<Object><Key>k</Key></Object>".repeat(1001)
    );
    let reply = s3
        .send(
            Method::POST,
            "/b",
            &[("delete", "")],
            &[],
            many.into_bytes(),
        )
        .await;
    assert_eq!(reply.code(), "MalformedXML");
    let reply = s3
        .send(
            Method::POST,
            "/b",
            &[("delete", "")],
            &[],
            b"<Delete><Object>".to_vec(),
        )
        .await;
    assert_eq!(reply.code(), "MalformedXML");
    let reply = s3
        .send(
            Method::POST,
            "/b",
            &[("delete", "")],
            &[],
            b"<!DOCTYPE d [<!ENTITY e 'x'>]><Delete><Object><Key>&e;</Key></Object></Delete>"
                .to_vec(),
        )
        .await;
    assert_eq!(reply.code(), "MalformedXML");
    let huge = vec![b' '; 3 * 1024 * 1024];
    let reply = s3
        .send(Method::POST, "/b", &[("delete", "")], &[], huge)
        .await;
    assert_eq!(reply.code(), "MaxMessageLengthExceeded");
    // Bad names.
    let reply = s3.put("/b/a\\b", b"x", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.code(), "InvalidArgument");
    let reply = s3.put("/b%20b/x", b"x", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    // The bucket's size limit and MIME types apply.
    env.app
        .db
        .client()
        .await
        .batch_execute(
            "update storage.buckets set file_size_limit = 5, allowed_mime_types = '{text/plain}' where id = 'b'",
        )
        .await
        .unwrap();
    let reply = s3
        .put(
            "/b/big.txt",
            b"0123456789",
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.code(), "EntityTooLarge");
    let reply = s3
        .put("/b/x.png", b"0", &[("content-type", "image/png")])
        .await;
    assert_eq!(reply.code(), "InvalidArgument");
    assert!(reply.text().contains("image/png"), "{}", reply.text());
    assert_eq!(
        s3.put("/b/ok.txt", b"01234", &[("content-type", "text/plain")])
            .await
            .status,
        StatusCode::OK
    );
    // Operations Sovra does not have are 501 NotImplemented.
    let reply = s3.get("/b", &[("policy", "")]).await;
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(reply.code(), "NotImplemented");
}

#[tokio::test]
async fn presigned_urls_work_until_they_expire() {
    let env = Env::new().await;
    let s3 = env.service_client().await;
    assert_eq!(s3.put("/b", b"", &[]).await.status, StatusCode::OK);
    assert_eq!(
        s3.put("/b/file.txt", b"shared", &[]).await.status,
        StatusCode::OK
    );
    let url = s3.presign("/b/file.txt", TestApp::now(), 300);
    let reply = send(env.http.get(&url)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(&reply.bytes[..], b"shared");
    // Signed an hour ago for ten minutes: expired.
    let old = s3.presign("/b/file.txt", TestApp::now() - 3600, 600);
    let reply = send(env.http.get(&old)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "AccessDenied");
    assert!(reply.text().contains("expired"), "{}", reply.text());
    // Signed for the future.
    let future = s3.presign("/b/file.txt", TestApp::now() + 3600, 600);
    assert_eq!(send(env.http.get(&future)).await.code(), "AccessDenied");
    // Longer than seven days is malformed.
    let long = s3.presign("/b/file.txt", TestApp::now(), 604_801);
    assert_eq!(
        send(env.http.get(&long)).await.code(),
        "AuthorizationHeaderMalformed"
    );
    // A session token's presigned URL reads as its user.
    let (id, user) = env.user_client();
    assert_eq!(
        user.put(&format!("/private/{id}/mine.txt"), b"mine", &[])
            .await
            .status,
        StatusCode::OK
    );
    let url = user.presign(&format!("/private/{id}/mine.txt"), TestApp::now(), 60);
    assert_eq!(&send(env.http.get(&url)).await.bytes[..], b"mine");
}

#[tokio::test]
async fn session_tokens_act_as_the_user_under_rls() {
    let env = Env::new().await;
    let (alice_id, alice) = env.user_client();
    let (bob_id, bob) = env.user_client();
    // Alice writes in her folder, not in Bob's.
    let reply = alice
        .put(&format!("/private/{alice_id}/a.txt"), b"alice", &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = alice
        .put(&format!("/private/{bob_id}/evil.txt"), b"x", &[])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.code(), "AccessDenied");
    let reply = bob
        .put(&format!("/private/{bob_id}/b.txt"), b"bob", &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The owner is the user.
    let owner: Option<String> = env
        .app
        .db
        .client()
        .await
        .query_one(
            "select owner_id from storage.objects where name = $1",
            &[&format!("{alice_id}/a.txt")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner.as_deref(), Some(alice_id.as_str()));
    // Each sees only their own objects.
    let root = alice.get("/private", &[("list-type", "2")]).await.xml();
    assert_eq!(keys_of(&root), [format!("{alice_id}/a.txt")]);
    let reply = alice.get(&format!("/private/{bob_id}/b.txt"), &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "NoSuchKey");
    // Copying Bob's object or deleting it does nothing.
    let source = format!("/private/{bob_id}/b.txt");
    let reply = alice
        .put(
            &format!("/private/{alice_id}/stolen.txt"),
            b"",
            &[("x-amz-copy-source", &source)],
        )
        .await;
    assert_eq!(reply.code(), "NoSuchKey");
    let reply = alice
        .send(
            Method::DELETE,
            &format!("/private/{bob_id}/b.txt"),
            &[],
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let body = format!("<Delete><Object><Key>{bob_id}/b.txt</Key></Object></Delete>");
    let reply = alice
        .send(
            Method::POST,
            "/private",
            &[("delete", "")],
            &[],
            body.into_bytes(),
        )
        .await;
    let root = reply.xml();
    assert_eq!(root.all("Deleted").count(), 0);
    assert_eq!(
        root.child("Error").and_then(|e| e.child_text("Code")),
        Some("AccessDenied")
    );
    assert_eq!(
        &bob.get(&format!("/private/{bob_id}/b.txt"), &[])
            .await
            .bytes[..],
        b"bob"
    );
    // Users cannot make buckets (no policy allows it).
    let reply = alice.put("/mine", b"", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    // The project ref's own secret works too, as upstream.
    let mut by_ref = alice.clone();
    by_ref.secret = "default".to_owned();
    assert_eq!(
        by_ref.get("/private", &[("list-type", "2")]).await.status,
        StatusCode::OK
    );
    // Refusals: a forged token, another access key id, a wrong secret.
    let mut forged = alice.clone();
    forged.token = Some(format!("{}x", alice.token.clone().unwrap()));
    let reply = forged.get("/private", &[("list-type", "2")]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "AccessDenied");
    let mut other_ref = alice.clone();
    other_ref.access = "otherproject".to_owned();
    assert_eq!(
        other_ref
            .get("/private", &[("list-type", "2")])
            .await
            .code(),
        "InvalidAccessKeyId"
    );
    let mut wrong = alice.clone();
    wrong.secret = "not-the-anon-key".to_owned();
    assert_eq!(
        wrong.get("/private", &[("list-type", "2")]).await.code(),
        "SignatureDoesNotMatch"
    );
    // An expired token.
    let mut claims = TestApp::user_claims(&alice_id);
    claims.insert("exp".to_owned(), json!(TestApp::now() - 3600));
    let expired = env.app.sign(Value::Object(claims));
    let mut stale = alice.clone();
    stale.token = Some(expired);
    assert_eq!(
        stale.get("/private", &[("list-type", "2")]).await.code(),
        "AccessDenied"
    );
}

/// The parts of an upload on disk.
fn part_files(app: &TestApp) -> usize {
    fn walk(dir: &std::path::Path, count: &mut usize) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, count);
            } else if path.to_string_lossy().contains("/uploads/s3-") {
                *count += 1;
            }
        }
    }
    let mut count = 0;
    walk(&app.data_dir.join("storage"), &mut count);
    count
}

#[tokio::test]
async fn multipart_uploads_join_their_parts_and_clean_up() {
    let env = Env::new().await;
    let s3 = env.service_client().await;
    assert_eq!(s3.put("/big", b"", &[]).await.status, StatusCode::OK);
    let create = |s3: S3, key: &'static str| async move {
        let reply = s3
            .send(
                Method::POST,
                key,
                &[("uploads", "")],
                &[("content-type", "video/mp4"), ("x-amz-meta-take", "2")],
                Vec::new(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let root = reply.xml();
        assert_eq!(root.name, "InitiateMultipartUploadResult");
        root.child_text("UploadId").unwrap().to_owned()
    };
    let id = create(s3.clone(), "/big/movie.mp4").await;
    let first: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let upload_part = |n: &'static str, body: Vec<u8>| {
        let s3 = s3.clone();
        let id = id.clone();
        async move {
            let reply = s3
                .send(
                    Method::PUT,
                    "/big/movie.mp4",
                    &[("partNumber", n), ("uploadId", &id)],
                    &[],
                    body,
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.header("etag").to_owned()
        }
    };
    let e1 = upload_part("1", first.clone()).await;
    let e2 = upload_part("2", b"tail".to_vec()).await;
    // Sent again, a part replaces the earlier one.
    let e2 = {
        let again = upload_part("2", b"the end".to_vec()).await;
        assert_ne!(again, e2);
        again
    };
    // ListParts, ListMultipartUploads.
    let root = s3.get("/big/movie.mp4", &[("uploadId", &id)]).await.xml();
    let sizes: Vec<&str> = root
        .all("Part")
        .filter_map(|p| p.child_text("Size"))
        .collect();
    assert_eq!(sizes, ["5242880", "7"]);
    let root = s3.get("/big", &[("uploads", "")]).await.xml();
    let ids: Vec<&str> = root
        .all("Upload")
        .filter_map(|u| u.child_text("UploadId"))
        .collect();
    assert_eq!(ids, [id.as_str()]);
    // A stale ETag or a part out of order is refused.
    let complete = |parts: &[(&str, &str)]| {
        format!(
            "<CompleteMultipartUpload>{}</CompleteMultipartUpload>",
            parts
                .iter()
                .map(|(n, e)| format!(
                    "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                    xml::escape(e)
                ))
                .collect::<String>()
        )
    };
    let reply = s3
        .send(
            Method::POST,
            "/big/movie.mp4",
            &[("uploadId", &id)],
            &[],
            complete(&[("1", &e1), ("2", "\"stale\"")]).into_bytes(),
        )
        .await;
    assert_eq!(reply.code(), "InvalidPart");
    let reply = s3
        .send(
            Method::POST,
            "/big/movie.mp4",
            &[("uploadId", &id)],
            &[],
            complete(&[("2", &e2), ("1", &e1)]).into_bytes(),
        )
        .await;
    assert_eq!(reply.code(), "InvalidPartOrder");
    // Another user cannot touch it.
    let (_, user) = env.user_client();
    let reply = user
        .send(
            Method::PUT,
            "/big/movie.mp4",
            &[("partNumber", "3"), ("uploadId", &id)],
            &[],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(reply.code(), "NoSuchUpload");
    assert_eq!(part_files(&env.app), 2);
    // Complete: one object, the parts gone.
    let reply = s3
        .send(
            Method::POST,
            "/big/movie.mp4",
            &[("uploadId", &id)],
            &[],
            complete(&[("1", &e1), ("2", &e2)]).into_bytes(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let root = reply.xml();
    assert_eq!(root.name, "CompleteMultipartUploadResult");
    let object = s3.get("/big/movie.mp4", &[]).await;
    let mut expected = first.clone();
    expected.extend_from_slice(b"the end");
    assert_eq!(object.bytes.len(), expected.len());
    assert!(object.bytes[..] == expected[..]);
    assert_eq!(object.header("content-type"), "video/mp4");
    assert_eq!(object.header("x-amz-meta-take"), "2");
    assert_eq!(part_files(&env.app), 0);
    let reply = s3
        .send(
            Method::PUT,
            "/big/movie.mp4",
            &[("partNumber", "1"), ("uploadId", &id)],
            &[],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(reply.code(), "NoSuchUpload");
    // Through the Storage API too.
    let reply = send(env.storage(
        Method::GET,
        "/object/big/movie.mp4",
        &env.app.service_role_key,
    ))
    .await;
    assert_eq!(reply.bytes.len(), expected.len());

    // A small part that is not the last: EntityTooSmall. Abort cleans up.
    let id = create(s3.clone(), "/big/small.bin").await;
    for n in ["1", "2"] {
        let reply = s3
            .send(
                Method::PUT,
                "/big/small.bin",
                &[("partNumber", n), ("uploadId", &id)],
                &[],
                b"tiny".to_vec(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let body = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part><Part><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>".to_owned();
    let reply = s3
        .send(
            Method::POST,
            "/big/small.bin",
            &[("uploadId", &id)],
            &[],
            body.into_bytes(),
        )
        .await;
    assert_eq!(reply.code(), "EntityTooSmall");
    let reply = s3
        .send(
            Method::PUT,
            "/big/small.bin",
            &[("partNumber", "10001"), ("uploadId", &id)],
            &[],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(reply.code(), "InvalidArgument");
    assert_eq!(part_files(&env.app), 2);
    let reply = s3
        .send(
            Method::DELETE,
            "/big/small.bin",
            &[("uploadId", &id)],
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(part_files(&env.app), 0);
    assert_eq!(
        s3.get("/big/small.bin", &[("uploadId", &id)]).await.code(),
        "NoSuchUpload"
    );
    assert_eq!(s3.get("/big/small.bin", &[]).await.code(), "NoSuchKey");
    // A user may not start an upload RLS would refuse.
    let reply = user
        .send(Method::POST, "/big/x", &[("uploads", "")], &[], Vec::new())
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let reply = s3
        .send(Method::POST, "/nope/x", &[("uploads", "")], &[], Vec::new())
        .await;
    assert_eq!(reply.code(), "NoSuchBucket");
}

/// An `aws-chunked` body signed chunk by chunk, as the AWS SDKs stream
/// uploads.
fn chunked_body(
    secret: &str,
    access: &str,
    long_date: &str,
    seed: &str,
    chunks: &[&[u8]],
) -> Vec<u8> {
    let credential = sigv4::Credential {
        access_key: access.to_owned(),
        date: long_date[..8].to_owned(),
        region: "local".to_owned(),
        service: "s3".to_owned(),
    };
    let key = sigv4::signing_key(secret, &credential);
    let mut previous = seed.to_owned();
    let mut body = Vec::new();
    for chunk in chunks.iter().chain(std::iter::once(&&b""[..])) {
        let signature = sigv4::sign(
            &key,
            &sigv4::chunk_string_to_sign(
                long_date,
                &credential.scope(),
                &previous,
                &sigv4::sha256_hex(chunk),
            ),
        );
        body.extend_from_slice(
            format!("{:x};chunk-signature={signature}\r\n", chunk.len()).as_bytes(),
        );
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
        previous = signature;
    }
    body
}

#[tokio::test]
async fn chunked_uploads_are_checked_chunk_by_chunk() {
    let env = Env::new().await;
    let s3 = env.service_client().await;
    assert_eq!(s3.put("/b", b"", &[]).await.status, StatusCode::OK);
    let send_chunked = |tamper: bool, unsigned: bool| {
        let s3 = s3.clone();
        async move {
            let long_date = sigv4::format_long_date(TestApp::now());
            let uri = "/storage/v1/s3/b/chunked.txt";
            let algorithm = if unsigned {
                sigv4::STREAMING_UNSIGNED_TRAILER
            } else {
                sigv4::STREAMING_PAYLOAD
            };
            let headers = [
                ("content-encoding".to_owned(), "aws-chunked".to_owned()),
                ("host".to_owned(), s3.host()),
                ("x-amz-content-sha256".to_owned(), algorithm.to_owned()),
                ("x-amz-date".to_owned(), long_date.clone()),
                ("x-amz-decoded-content-length".to_owned(), "11".to_owned()),
            ];
            let signed: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
            let authorization = sigv4::authorization_header(
                &s3.access,
                &s3.secret,
                "local",
                &long_date,
                "PUT",
                uri,
                &[],
                &signed,
                |name| {
                    headers
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                        .collect()
                },
                algorithm,
            );
            let seed = authorization.rsplit('=').next().unwrap().to_owned();
            let mut body = if unsigned {
                b"6\r\nhello \r\n5\r\nworld\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n".to_vec()
            } else {
                chunked_body(
                    &s3.secret,
                    &s3.access,
                    &long_date,
                    &seed,
                    &[b"hello ", b"world"],
                )
            };
            if tamper {
                let at = body.iter().position(|b| *b == b'w').unwrap();
                body[at] = b'W';
            }
            let mut request = s3
                .http
                .put(format!("{}{uri}", s3.url))
                .header("authorization", authorization);
            for (name, value) in headers.iter().filter(|(n, _)| n != "host") {
                request = request.header(name.as_str(), value.as_str());
            }
            send(request.body(body)).await
        }
    };
    let reply = send_chunked(true, false).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.code(), "SignatureDoesNotMatch");
    assert_eq!(
        s3.get("/b/chunked.txt", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = send_chunked(false, false).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        &s3.get("/b/chunked.txt", &[]).await.bytes[..],
        b"hello world"
    );
    let reply = send_chunked(false, true).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        &s3.get("/b/chunked.txt", &[]).await.bytes[..],
        b"hello world"
    );
}

#[tokio::test]
async fn the_endpoint_can_be_disabled() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.storage.s3_protocol.enabled = false;
    let app = TestApp::spawn_with(config).await;
    let env = Env {
        app,
        http: reqwest::Client::new(),
    };
    let s3 = env.service_client().await;
    let reply = s3.get("/", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "AccessDenied");
}

/// Tenants: a key belongs to one tenant's storage; the endpoint of a
/// tenant addressed by path is signed with its `/t/{name}` prefix.
#[tokio::test]
async fn access_keys_belong_to_one_tenant() {
    init_logs();
    let db = sovra_test_support::TestDb::new().await;
    let mut config = sovra_config::Config::default();
    let data_dir = sovra_test_support::scratch_dir();
    config.data_dir = data_dir.clone();
    let keys = sovra_server::keys::load_or_create(&data_dir.join("keys.json"), &config).unwrap();
    let default_service = keys.api.service_role.clone();
    let default_anon = keys.api.anon.clone();
    let tenant = sovra_server::serve::build_tenant(
        &config,
        db.config_as("authenticator"),
        db.config(),
        keys,
    )
    .await
    .unwrap();
    let key = sovra_server::platform::load_or_create(&data_dir.join("platform.key"))
        .unwrap()
        .key;
    let platform =
        Arc::new(sovra_server::tenants::Platform::new(&config, db.config(), &key).unwrap());
    let resolver = sovra_server::TenantResolver::single(tenant);
    let state =
        sovra_server::AppState::from_config(resolver, &config).with_platform(platform.clone());
    let app = sovra_server::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    platform.set_public_url(&url);
    let options = sovra_server::serve::HttpOptions::from_config(&config);
    let _server = tokio::spawn(async move {
        let _ =
            sovra_server::serve::serve_http(listener, app, options, std::future::pending()).await;
    });
    let http = reqwest::Client::new();
    let name = format!("s3t-{:08x}", uuid::Uuid::new_v4().as_u128() as u32);
    let created: Value = http
        .post(format!("{url}/sovra/v1/tenants"))
        .bearer_auth(&key)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenant_service = created["service_role_key"].as_str().unwrap().to_owned();
    let make_key = |base: String, anon: String, service: String| {
        let http = http.clone();
        async move {
            let body: Value = http
                .post(format!("{base}/storage/v1/s3-credentials"))
                .header("apikey", anon)
                .bearer_auth(service)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                body["access_key"].as_str().unwrap().to_owned(),
                body["secret_key"].as_str().unwrap().to_owned(),
            )
        }
    };
    let tenant_base = format!("{url}/t/{name}");
    let tenant_anon = created["anon_key"].as_str().unwrap().to_owned();
    let (t_access, t_secret) =
        make_key(tenant_base.clone(), tenant_anon.clone(), tenant_service).await;
    let (d_access, d_secret) = make_key(url.clone(), default_anon, default_service).await;
    let client = |prefix: &str, access: &str, secret: &str| S3 {
        http: http.clone(),
        url: url.clone(),
        prefix: prefix.to_owned(),
        access: access.to_owned(),
        secret: secret.to_owned(),
        token: None,
        region: "local".to_owned(),
        skew: 0,
    };
    let tenant_prefix = format!("/t/{name}/storage/v1/s3");
    let own = client(&tenant_prefix, &t_access, &t_secret);
    let reply = own.put("/tb", b"", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        own.put("/tb/x", b"tenant", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(&own.get("/tb/x", &[]).await.bytes[..], b"tenant");
    // The tenant's key is unknown at the root, the root's at the tenant.
    let reply = client("/storage/v1/s3", &t_access, &t_secret)
        .get("/", &[])
        .await;
    assert_eq!(reply.code(), "InvalidAccessKeyId");
    let reply = client(&tenant_prefix, &d_access, &d_secret)
        .get("/", &[])
        .await;
    assert_eq!(reply.code(), "InvalidAccessKeyId");
    // The root's key sees the root's buckets only.
    let root = client("/storage/v1/s3", &d_access, &d_secret)
        .get("/", &[])
        .await
        .xml();
    assert_eq!(root.child("Buckets").unwrap().all("Bucket").count(), 0);
    // A session token of the tenant names the tenant as project ref.
    let user_token = {
        let id = uuid::Uuid::new_v4().to_string();
        let tenant = platform.tenant(&name).await.unwrap();
        tenant.keys.sign(&TestApp::user_claims(&id)).unwrap()
    };
    let mut session = client(&tenant_prefix, &name, &tenant_anon);
    session.token = Some(user_token.clone());
    assert_eq!(session.get("/", &[]).await.status, StatusCode::OK);
    // The tenant's user token is refused at the root.
    let mut foreign = client("/storage/v1/s3", "default", &tenant_anon);
    foreign.token = Some(user_token);
    assert_eq!(foreign.get("/", &[]).await.status, StatusCode::FORBIDDEN);
}

/// The Python interpreter with boto3: `SOVRA_TEST_PYTHON`, else `python3`
/// on the PATH (`scripts/test.sh` puts the project's virtual environment,
/// where setup installs boto3 with moto, first).
fn python() -> String {
    std::env::var("SOVRA_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// A real S3 client from the registries (boto3, from PyPI) against the
/// endpoint: buckets, single and multipart uploads, listing with paging,
/// ranged downloads, copies, deletes, errors, a session token under RLS,
/// and a presigned URL that curl then downloads.
#[tokio::test]
async fn boto3_drives_the_endpoint() {
    let env = Env::new().await;
    let (access, secret) = env.access_key().await;
    let user_id = uuid::Uuid::new_v4().to_string();
    let token = env.app.sign(Value::Object(TestApp::user_claims(&user_id)));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/boto3_client.py");
    let endpoint = format!("{}/storage/v1/s3", env.app.url);
    let output = tokio::process::Command::new(python())
        .arg(script)
        .args([
            endpoint.as_str(),
            &access,
            &secret,
            "default",
            &env.app.anon_key,
            &user_id,
            &token,
        ])
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .await
        .expect("python3 with boto3 (scripts/setup.sh test installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "boto3 failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["ok"], true);
    // What boto3 wrote is the Storage API's.
    let reply = send(env.storage(
        Method::GET,
        "/object/boto/dir/hello.txt",
        &env.app.service_role_key,
    ))
    .await;
    assert_eq!(&reply.bytes[..], b"hello boto");
    // The presigned URL, downloaded by curl.
    let presigned = result["presigned"].as_str().unwrap();
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "-f", presigned])
        .output()
        .await
        .expect("curl");
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(&curl.stdout[..], b"hello boto");
    let tampered = presigned.replace("hello.txt", "hello.txx");
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", &tampered])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&curl.stdout).contains("SignatureDoesNotMatch"));
}

/// Over HTTP/2 the host a client signed travels as the `:authority`, not
/// in a `Host` header.
#[tokio::test]
async fn http2_requests_verify_against_the_authority() {
    let env = Env::new().await;
    let mut s3 = env.service_client().await;
    s3.http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let reply = s3.put("/h2", b"", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        s3.put("/h2/k", b"over h2", &[]).await.status,
        StatusCode::OK
    );
    let reply = s3.get("/h2/k", &[]).await;
    assert_eq!(&reply.bytes[..], b"over h2");
    // The host as the client named it.
    let mut named = s3.clone();
    named.url = named.url.replace("127.0.0.1", "localhost");
    assert_eq!(named.get("/h2/k", &[]).await.status, StatusCode::OK);
    let mut other = s3.clone();
    other.secret.push('x');
    assert_eq!(
        other.get("/h2/k", &[]).await.code(),
        "SignatureDoesNotMatch"
    );
}

/// Unfinished multipart uploads expire: the sweeper deletes their rows
/// and their parts' bytes.
#[tokio::test]
async fn expired_multipart_uploads_are_swept_with_their_parts() {
    let env = Env::new().await;
    let s3 = env.service_client().await;
    assert_eq!(s3.put("/sweep", b"", &[]).await.status, StatusCode::OK);
    let mut ids = Vec::new();
    for key in ["/sweep/old.bin", "/sweep/live.bin"] {
        let reply = s3
            .send(Method::POST, key, &[("uploads", "")], &[], Vec::new())
            .await;
        let id = reply.xml().child_text("UploadId").unwrap().to_owned();
        for n in ["1", "2"] {
            let reply = s3
                .send(
                    Method::PUT,
                    key,
                    &[("partNumber", n), ("uploadId", &id)],
                    &[],
                    b"part".to_vec(),
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK);
        }
        ids.push(id);
    }
    assert_eq!(part_files(&env.app), 4);
    let old = uuid::Uuid::parse_str(&ids[0]).unwrap();
    env.app
        .db
        .client()
        .await
        .execute(
            "update sovra.s3_multipart_uploads set expires_at = now() - interval '1 minute' where id = $1",
            &[&old],
        )
        .await
        .unwrap();
    let swept = env
        .app
        .tenant
        .storage
        .sweep_expired_uploads()
        .await
        .unwrap();
    assert_eq!(swept, 1);
    assert_eq!(part_files(&env.app), 2);
    let left: i64 = env
        .app
        .db
        .client()
        .await
        .query_one("select count(*) from sovra.s3_multipart_parts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2);
    assert_eq!(
        s3.get("/sweep/old.bin", &[("uploadId", &ids[0])])
            .await
            .code(),
        "NoSuchUpload"
    );
    assert_eq!(
        s3.get("/sweep/live.bin", &[("uploadId", &ids[1])])
            .await
            .status,
        StatusCode::OK
    );
}
