//! Vector buckets (`/storage/v1/vector/*`) through the real router on a
//! real database with pgvector: every operation's successes and refusals
//! in the shapes storage-js's `storage.vectors` reads, access decided by
//! RLS, and HNSW answers checked against exact search.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_test_support::TestApp;

struct V {
    app: TestApp,
    http: reqwest::Client,
}

struct Reply {
    status: StatusCode,
    body: Value,
    len: usize,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
    /// A refusal: HTTP status, `statusCode` and `code` agree.
    fn refused(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(
            self.body["statusCode"],
            json!(status.to_string()),
            "{}",
            self.body
        );
        assert_eq!(self.code(), code, "{}", self.body);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    /// A mutation's answer: 200 with an empty body, as S3 Vectors.
    fn empty_ok(&self) {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        assert_eq!(self.len, 0);
    }
}

impl V {
    async fn new() -> V {
        V {
            app: TestApp::spawn().await,
            http: reqwest::Client::new(),
        }
    }

    fn service(&self) -> String {
        self.app.service_role_key.clone()
    }

    fn user(&self, id: &str) -> String {
        self.app.sign(Value::Object(TestApp::user_claims(id)))
    }

    async fn raw(&self, op: &str, token: &str, body: reqwest::Body) -> Reply {
        let response = self
            .http
            .post(format!("{}/storage/v1/vector/{op}", self.app.url))
            .header("apikey", &self.app.anon_key)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            len: bytes.len(),
        }
    }

    async fn call(&self, op: &str, token: &str, body: Value) -> Reply {
        self.raw(op, token, body.to_string().into()).await
    }

    async fn svc(&self, op: &str, body: Value) -> Reply {
        self.call(op, &self.service(), body).await
    }

    async fn sql(&self, sql: &str) {
        self.app.db.client().await.batch_execute(sql).await.unwrap();
    }

    /// A bucket `docs` with an index `idx` of dimension `dim`.
    async fn index(&self, dim: usize, metric: &str, extra: Value) {
        self.svc("CreateVectorBucket", json!({"vectorBucketName": "docs"}))
            .await
            .empty_ok();
        let mut body = json!({"vectorBucketName": "docs", "indexName": "idx",
            "dataType": "float32", "dimension": dim, "distanceMetric": metric});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        self.svc("CreateIndex", body).await.empty_ok();
    }
}

fn target() -> Value {
    json!({"vectorBucketName": "docs", "indexName": "idx"})
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
        base.extend(extra);
    }
    base
}

/// Deterministic pseudo-random vectors (xorshift).
fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.max(1);
    (0..n)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 2000) as f32 / 1000.0 - 1.0
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn buckets_create_get_list_delete() {
    let v = V::new().await;
    for name in ["alpha", "beta-1", "gamma"] {
        v.svc("CreateVectorBucket", json!({"vectorBucketName": name}))
            .await
            .empty_ok();
    }
    v.svc("CreateVectorBucket", json!({"vectorBucketName": "alpha"}))
        .await
        .refused(409, "ConflictException");
    let got = v
        .svc("GetVectorBucket", json!({"vectorBucketName": "alpha"}))
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["vectorBucket"]["vectorBucketName"], "alpha");
    assert!(got.body["vectorBucket"]["creationTime"].as_i64().unwrap() > 1_600_000_000);
    v.svc("GetVectorBucket", json!({"vectorBucketName": "nope"}))
        .await
        .refused(404, "NotFoundException");

    // Paging: two at a time, then the rest.
    let first = v.svc("ListVectorBuckets", json!({"maxResults": 2})).await;
    let names: Vec<&str> = first.body["vectorBuckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["vectorBucketName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta-1"]);
    let token = first.body["nextToken"].as_str().unwrap();
    let second = v
        .svc(
            "ListVectorBuckets",
            json!({"maxResults": 2, "nextToken": token}),
        )
        .await;
    assert_eq!(second.body["vectorBuckets"][0]["vectorBucketName"], "gamma");
    assert!(second.body.get("nextToken").is_none());
    let prefixed = v.svc("ListVectorBuckets", json!({"prefix": "be"})).await;
    assert_eq!(prefixed.body["vectorBuckets"].as_array().unwrap().len(), 1);
    v.svc("ListVectorBuckets", json!({"nextToken": "***"}))
        .await
        .refused(400, "InvalidParameter");
    v.svc("ListVectorBuckets", json!({"maxResults": 0}))
        .await
        .refused(400, "InvalidParameter");

    // Names as S3 Vectors has them.
    for bad in ["ab", "Upper", "-dash", "dot.ted", "under_score"] {
        v.svc("CreateVectorBucket", json!({"vectorBucketName": bad}))
            .await
            .refused(400, "InvalidParameter");
    }
    v.svc("CreateVectorBucket", json!({}))
        .await
        .refused(400, "MissingParameter");
    v.svc("CreateVectorBucket", json!({"vectorBucketName": 7}))
        .await
        .refused(400, "InvalidParameter");

    // A bucket with an index is not deleted.
    v.svc(
        "CreateIndex",
        json!({"vectorBucketName": "alpha", "indexName": "idx1",
        "dataType": "float32", "dimension": 3, "distanceMetric": "cosine"}),
    )
    .await
    .empty_ok();
    v.svc("DeleteVectorBucket", json!({"vectorBucketName": "alpha"}))
        .await
        .refused(400, "VectorBucketNotEmpty");
    v.svc(
        "DeleteIndex",
        json!({"vectorBucketName": "alpha", "indexName": "idx1"}),
    )
    .await
    .empty_ok();
    v.svc("DeleteVectorBucket", json!({"vectorBucketName": "alpha"}))
        .await
        .empty_ok();
    v.svc("DeleteVectorBucket", json!({"vectorBucketName": "alpha"}))
        .await
        .refused(404, "NotFoundException");
}

#[tokio::test]
async fn indexes_create_get_list_delete_and_refusals() {
    let v = V::new().await;
    v.index(
        4,
        "euclidean",
        json!({"metadataConfiguration": {"nonFilterableMetadataKeys": ["body"]}}),
    )
    .await;
    let got = v.svc("GetIndex", target()).await;
    assert_eq!(got.status, StatusCode::OK);
    let index = &got.body["index"];
    assert_eq!(index["indexName"], "idx");
    assert_eq!(index["vectorBucketName"], "docs");
    assert_eq!(index["dataType"], "float32");
    assert_eq!(index["dimension"], 4);
    assert_eq!(index["distanceMetric"], "euclidean");
    assert_eq!(
        index["metadataConfiguration"]["nonFilterableMetadataKeys"],
        json!(["body"])
    );

    let again = with(
        target(),
        json!({"dataType": "float32", "dimension": 4, "distanceMetric": "cosine"}),
    );
    v.svc("CreateIndex", again.clone())
        .await
        .refused(409, "ConflictException");
    v.svc(
        "CreateIndex",
        with(again.clone(), json!({"vectorBucketName": "nobucket"})),
    )
    .await
    .refused(404, "NotFoundException");
    for (field, value) in [
        ("dataType", json!("float16")),
        ("dimension", json!(0)),
        ("dimension", json!(4001)),
        ("dimension", json!(3.5)),
        ("distanceMetric", json!("dotproduct")),
        ("indexName", json!("x")),
        (
            "metadataConfiguration",
            json!({"nonFilterableMetadataKeys": []}),
        ),
        (
            "metadataConfiguration",
            json!({"nonFilterableMetadataKeys": ["a", "a"]}),
        ),
    ] {
        let body = with(again.clone(), json!({"indexName": "other", field: value}));
        v.svc("CreateIndex", body)
            .await
            .refused(400, "InvalidParameter");
    }
    v.svc(
        "CreateIndex",
        json!({"vectorBucketName": "docs", "indexName": "other"}),
    )
    .await
    .refused(400, "MissingParameter");

    for name in ["b.two", "c-three"] {
        v.svc(
            "CreateIndex",
            with(again.clone(), json!({"indexName": name})),
        )
        .await
        .empty_ok();
    }
    let listed = v
        .svc(
            "ListIndexes",
            json!({"vectorBucketName": "docs", "maxResults": 2}),
        )
        .await;
    let names: Vec<&str> = listed.body["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["indexName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.two", "c-three"]);
    let token = listed.body["nextToken"].as_str().unwrap();
    let rest = v
        .svc(
            "ListIndexes",
            json!({"vectorBucketName": "docs", "nextToken": token}),
        )
        .await;
    assert_eq!(rest.body["indexes"][0]["indexName"], "idx");
    assert!(rest.body.get("nextToken").is_none());
    v.svc("ListIndexes", json!({"vectorBucketName": "nobucket"}))
        .await
        .refused(404, "NotFoundException");

    v.svc("DeleteIndex", with(target(), json!({"indexName": "b.two"})))
        .await
        .empty_ok();
    v.svc("GetIndex", with(target(), json!({"indexName": "b.two"})))
        .await
        .refused(404, "NotFoundException");
    v.svc("DeleteIndex", with(target(), json!({"indexName": "b.two"})))
        .await
        .refused(404, "NotFoundException");
    // The partition went with it.
    let left: i64 = v
        .app
        .db
        .client()
        .await
        .query_one(
            "select count(*) from pg_inherits where inhparent = 'storage.vectors'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2);
}

#[tokio::test]
async fn put_get_list_query_delete() {
    let v = V::new().await;
    v.index(
        3,
        "cosine",
        json!({"metadataConfiguration": {"nonFilterableMetadataKeys": ["body"]}}),
    )
    .await;
    let put = with(
        target(),
        json!({"vectors": [
            {"key": "a", "data": {"float32": [1.0, 0.0, 0.0]}, "metadata": {"genre": "news", "year": 2020, "tags": ["x", "y"], "body": "long text"}},
            {"key": "b", "data": {"float32": [0.9, 0.1, 0.0]}, "metadata": {"genre": "blog", "year": 2021}},
            {"key": "c", "data": {"float32": [0.0, 1.0, 0.0]}, "metadata": {"genre": "news", "year": 1999, "tags": ["z"]}},
            {"key": "d", "data": {"float32": [0.0, 0.0, 1.0]}}
        ]}),
    );
    v.svc("PutVectors", put).await.empty_ok();

    // Nearest first, with distance and metadata when asked.
    let query = with(
        target(),
        json!({"queryVector": {"float32": [1.0, 0.0, 0.0]}, "topK": 2,
        "returnDistance": true, "returnMetadata": true}),
    );
    let hits = v.svc("QueryVectors", query.clone()).await;
    assert_eq!(hits.status, StatusCode::OK, "{}", hits.body);
    assert_eq!(hits.body["distanceMetric"], "cosine");
    let found = hits.body["vectors"].as_array().unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0]["key"], "a");
    assert!(found[0]["distance"].as_f64().unwrap().abs() < 1e-6);
    assert_eq!(found[0]["metadata"]["genre"], "news");
    assert_eq!(found[1]["key"], "b");
    // Without the flags: keys only.
    let bare = v
        .svc(
            "QueryVectors",
            with(
                query.clone(),
                json!({"returnDistance": false, "returnMetadata": false}),
            ),
        )
        .await;
    assert_eq!(bare.body["vectors"][0], json!({"key": "a"}));

    // Filters.
    let keys = |reply: &Reply| -> Vec<String> {
        reply.body["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["key"].as_str().unwrap().to_owned())
            .collect()
    };
    for (filter, expected) in [
        (json!({"genre": "news"}), vec!["a", "c"]),
        (json!({"genre": {"$ne": "news"}}), vec!["b", "d"]),
        (json!({"year": {"$gte": 2020}}), vec!["a", "b"]),
        (json!({"year": {"$lt": 2000}}), vec!["c"]),
        (json!({"tags": "y"}), vec!["a"]),
        (json!({"tags": {"$in": ["z", "q"]}}), vec!["c"]),
        (json!({"genre": {"$nin": ["news"]}}), vec!["b", "d"]),
        (json!({"tags": {"$exists": false}}), vec!["b", "d"]),
        (
            json!({"$or": [{"genre": "blog"}, {"year": 1999}]}),
            vec!["b", "c"],
        ),
        (
            json!({"$and": [{"genre": "news"}, {"year": {"$gt": 2000}}]}),
            vec!["a"],
        ),
        (json!({"year": "2020"}), vec![]),
    ] {
        let reply = v
            .svc(
                "QueryVectors",
                with(query.clone(), json!({"topK": 10, "filter": filter.clone()})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{filter}: {}", reply.body);
        let mut got = keys(&reply);
        got.sort();
        assert_eq!(got, expected, "{filter}");
    }
    v.svc(
        "QueryVectors",
        with(query.clone(), json!({"filter": {"body": "long text"}})),
    )
    .await
    .refused(400, "InvalidParameter");
    v.svc(
        "QueryVectors",
        with(query.clone(), json!({"filter": {"a": {"$regex": "x"}}})),
    )
    .await
    .refused(400, "InvalidParameter");

    // Get: only existing keys, data and metadata when asked.
    let got = v
        .svc(
            "GetVectors",
            with(
                target(),
                json!({"keys": ["a", "zz"], "returnData": true, "returnMetadata": true}),
            ),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["vectors"].as_array().unwrap().len(), 1);
    assert_eq!(
        got.body["vectors"][0]["data"]["float32"],
        json!([1.0, 0.0, 0.0])
    );
    assert_eq!(got.body["vectors"][0]["metadata"]["body"], "long text");
    let plain = v
        .svc("GetVectors", with(target(), json!({"keys": ["b"]})))
        .await;
    assert_eq!(plain.body["vectors"][0], json!({"key": "b"}));

    // Upsert replaces.
    v.svc(
        "PutVectors",
        with(
            target(),
            json!({"vectors": [
                {"key": "d", "data": {"float32": [1.0, 0.0, 0.0]}, "metadata": {"genre": "new"}}
            ]}),
        ),
    )
    .await
    .empty_ok();
    let got = v
        .svc(
            "GetVectors",
            with(target(), json!({"keys": ["d"], "returnMetadata": true})),
        )
        .await;
    assert_eq!(got.body["vectors"][0]["metadata"], json!({"genre": "new"}));

    // List with paging, and segments that split the keys.
    let page = v
        .svc("ListVectors", with(target(), json!({"maxResults": 3})))
        .await;
    assert_eq!(keys(&page), ["a", "b", "c"]);
    let token = page.body["nextToken"].as_str().unwrap().to_owned();
    let rest = v
        .svc(
            "ListVectors",
            with(
                target(),
                json!({"maxResults": 3, "nextToken": token, "returnData": true}),
            ),
        )
        .await;
    assert_eq!(keys(&rest), ["d"]);
    assert_eq!(
        rest.body["vectors"][0]["data"]["float32"],
        json!([1.0, 0.0, 0.0])
    );
    assert!(rest.body.get("nextToken").is_none());
    let mut all = Vec::new();
    for segment in 0..3 {
        let part = v
            .svc(
                "ListVectors",
                with(
                    target(),
                    json!({"segmentCount": 3, "segmentIndex": segment}),
                ),
            )
            .await;
        all.extend(keys(&part));
    }
    all.sort();
    assert_eq!(all, ["a", "b", "c", "d"]);
    v.svc("ListVectors", with(target(), json!({"segmentCount": 3})))
        .await
        .refused(400, "InvalidParameter");
    v.svc(
        "ListVectors",
        with(target(), json!({"segmentCount": 2, "segmentIndex": 2})),
    )
    .await
    .refused(400, "InvalidParameter");

    // Delete.
    v.svc(
        "DeleteVectors",
        with(target(), json!({"keys": ["a", "b", "nothing"]})),
    )
    .await
    .empty_ok();
    let page = v.svc("ListVectors", target()).await;
    assert_eq!(keys(&page), ["c", "d"]);
}

#[tokio::test]
async fn refusals_of_data_calls() {
    let v = V::new().await;
    v.index(3, "cosine", json!({})).await;
    let one = |key: Value, data: Value| json!({"key": key, "data": {"float32": data}});
    let put = |vectors: Value| with(target(), json!({"vectors": vectors}));
    for (vectors, code) in [
        (json!([]), "InvalidParameter"),
        (json!([one(json!("a"), json!([1, 2]))]), "InvalidParameter"),
        (
            json!([one(json!("a"), json!([1, 2, 3, 4]))]),
            "InvalidParameter",
        ),
        (
            json!([one(json!("a"), json!([1, 2, 1e39]))]),
            "InvalidParameter",
        ),
        (
            json!([one(json!("a"), json!([1, 2, "NaN"]))]),
            "InvalidParameter",
        ),
        (
            json!([one(json!("a"), json!([1, 2, null]))]),
            "InvalidParameter",
        ),
        (
            json!([one(json!(""), json!([1, 2, 3]))]),
            "InvalidParameter",
        ),
        (
            json!([one(json!("k".repeat(1025)), json!([1, 2, 3]))]),
            "InvalidParameter",
        ),
        (
            json!([
                one(json!("a"), json!([1, 2, 3])),
                one(json!("a"), json!([1, 2, 3]))
            ]),
            "InvalidParameter",
        ),
        (
            json!([{"data": {"float32": [1, 2, 3]}}]),
            "MissingParameter",
        ),
        (json!([{"key": "a"}]), "MissingParameter"),
        (
            json!([{"key": "a", "data": {"float32": [1, 2, 3]}, "metadata": {"nested": {"x": 1}}}]),
            "InvalidParameter",
        ),
        (
            json!([{"key": "a", "data": {"float32": [1, 2, 3]}, "metadata": {"big": "x".repeat(3000)}}]),
            "InvalidParameter",
        ),
    ] {
        v.svc("PutVectors", put(vectors.clone()))
            .await
            .refused(400, code);
    }
    let many: Vec<Value> = (0..501)
        .map(|i| one(json!(format!("k{i}")), json!([1, 2, 3])))
        .collect();
    v.svc("PutVectors", put(json!(many)))
        .await
        .refused(400, "InvalidParameter");
    let ok: Vec<Value> = (0..500)
        .map(|i| one(json!(format!("k{i}")), json!([1, 2, 3])))
        .collect();
    v.svc("PutVectors", put(json!(ok))).await.empty_ok();

    // Unknown bucket or index.
    let vectors = json!([one(json!("a"), json!([1, 2, 3]))]);
    v.svc(
        "PutVectors",
        with(put(vectors.clone()), json!({"indexName": "nope"})),
    )
    .await
    .refused(404, "NotFoundException");
    v.svc(
        "PutVectors",
        with(put(vectors), json!({"vectorBucketName": "nope"})),
    )
    .await
    .refused(404, "NotFoundException");

    // Query refusals.
    let query = with(
        target(),
        json!({"queryVector": {"float32": [1, 0, 0]}, "topK": 3}),
    );
    for (extra, code) in [
        (json!({"topK": 0}), "InvalidParameter"),
        (json!({"topK": 101}), "InvalidParameter"),
        (json!({"topK": null}), "MissingParameter"),
        (
            json!({"queryVector": {"float32": [1, 0]}}),
            "InvalidParameter",
        ),
        (json!({"queryVector": null}), "MissingParameter"),
        (json!({"filter": []}), "InvalidParameter"),
        (json!({"returnDistance": "yes"}), "InvalidParameter"),
    ] {
        v.svc("QueryVectors", with(query.clone(), extra.clone()))
            .await
            .refused(400, code);
    }
    let many_keys: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    v.svc("GetVectors", with(target(), json!({"keys": many_keys})))
        .await
        .refused(400, "InvalidParameter");
    v.svc("DeleteVectors", with(target(), json!({"keys": []})))
        .await
        .refused(400, "InvalidParameter");

    // Malformed bodies, oversize bodies, unknown operations, other methods.
    v.raw("QueryVectors", &v.service(), "{not json".into())
        .await
        .refused(400, "InvalidParameter");
    v.raw("QueryVectors", &v.service(), "[1]".into())
        .await
        .refused(400, "InvalidParameter");
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1024 * 1024 + 1));
    v.raw("QueryVectors", &v.service(), big.into())
        .await
        .refused(413, "EntityTooLarge");
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(20 * 1024 * 1024 + 1));
    v.raw("PutVectors", &v.service(), huge.into())
        .await
        .refused(413, "EntityTooLarge");
    let chunked = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(vec![b' '; 512 * 1024])),
    ));
    v.raw("GetVectors", &v.service(), chunked)
        .await
        .refused(413, "EntityTooLarge");
    let unknown = v.svc("DropEverything", json!({})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let get = v
        .http
        .get(format!("{}/storage/v1/vector/ListVectorBuckets", v.app.url))
        .header("apikey", &v.app.anon_key)
        .bearer_auth(v.service())
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    // A forged token.
    v.call("ListVectorBuckets", "not-a-token", json!({}))
        .await
        .refused(403, "AccessDenied");
}

#[tokio::test]
async fn anon_and_users_need_policies() {
    let v = V::new().await;
    v.index(3, "euclidean", json!({})).await;
    let alice_id = uuid::Uuid::new_v4().to_string();
    let bob_id = uuid::Uuid::new_v4().to_string();
    let (alice, bob) = (v.user(&alice_id), v.user(&bob_id));
    let anon = v.app.anon_key.clone();
    let put = |key: &str, owner: &str| {
        with(
            target(),
            json!({"vectors": [{"key": key, "data": {"float32": [1, 2, 3]}, "metadata": {"owner": owner}}]}),
        )
    };
    v.svc("PutVectors", put("svc", &alice_id)).await.empty_ok();

    // Without policies: nothing is visible, nothing may be made.
    for token in [&anon, &alice] {
        let listed = v.call("ListVectorBuckets", token, json!({})).await;
        assert_eq!(listed.body["vectorBuckets"], json!([]));
        v.call(
            "CreateVectorBucket",
            token,
            json!({"vectorBucketName": "mine"}),
        )
        .await
        .refused(403, "AccessDenied");
        v.call("GetIndex", token, target())
            .await
            .refused(404, "NotFoundException");
        v.call("PutVectors", token, put("x", &alice_id))
            .await
            .refused(404, "NotFoundException");
        v.call(
            "QueryVectors",
            token,
            with(
                target(),
                json!({"queryVector": {"float32": [1, 2, 3]}, "topK": 5}),
            ),
        )
        .await
        .refused(404, "NotFoundException");
    }

    // Policies: signed-in users see the bucket and its indexes, and read
    // and write the vectors whose metadata names them as owner.
    v.sql(
        "create policy see on storage.vector_buckets for select to authenticated using (true);
         create policy see on storage.vector_indexes for select to authenticated using (bucket_id = 'docs');
         create policy own_read on storage.vectors for select to authenticated
           using (bucket_id = 'docs' and metadata ->> 'owner' = auth.uid()::text);
         create policy own_write on storage.vectors for insert to authenticated
           with check (bucket_id = 'docs' and metadata ->> 'owner' = auth.uid()::text);
         create policy own_delete on storage.vectors for delete to authenticated
           using (metadata ->> 'owner' = auth.uid()::text);",
    )
    .await;
    v.call("PutVectors", &alice, put("alice-1", &alice_id))
        .await
        .empty_ok();
    v.call("PutVectors", &bob, put("bob-1", &bob_id))
        .await
        .empty_ok();
    v.call("PutVectors", &bob, put("bob-as-alice", &alice_id))
        .await
        .refused(403, "AccessDenied");
    let query = with(
        target(),
        json!({"queryVector": {"float32": [1, 2, 3]}, "topK": 10}),
    );
    let seen = |reply: Reply| -> Vec<String> {
        let mut keys: Vec<String> = reply.body["vectors"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", reply.body))
            .iter()
            .map(|v| v["key"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        seen(v.call("QueryVectors", &alice, query.clone()).await),
        ["alice-1", "svc"]
    );
    assert_eq!(
        seen(v.call("QueryVectors", &bob, query.clone()).await),
        ["bob-1"]
    );
    assert_eq!(seen(v.call("ListVectors", &bob, target()).await), ["bob-1"]);
    assert_eq!(
        seen(
            v.call(
                "GetVectors",
                &bob,
                with(target(), json!({"keys": ["alice-1", "bob-1"]}))
            )
            .await
        ),
        ["bob-1"]
    );
    // Bob's delete of Alice's vector removes nothing.
    v.call(
        "DeleteVectors",
        &bob,
        with(target(), json!({"keys": ["alice-1"]})),
    )
    .await
    .empty_ok();
    assert_eq!(
        seen(v.call("ListVectors", &alice, target()).await),
        ["alice-1", "svc"]
    );
    // Anon still sees nothing; users may not make indexes or buckets.
    v.call("QueryVectors", &anon, query)
        .await
        .refused(404, "NotFoundException");
    v.call(
        "CreateIndex",
        &alice,
        with(
            target(),
            json!({"indexName": "mine",
        "dataType": "float32", "dimension": 3, "distanceMetric": "cosine"}),
        ),
    )
    .await
    .refused(403, "AccessDenied");
    // The partitions are reachable only through storage.vectors.
    let direct = v
        .app
        .db
        .client()
        .await
        .batch_execute(
            "set role service_role; select count(*) from storage.vectors; \
             do $$ begin execute format('select 1 from storage.%I', \
               (select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid \
                where i.inhparent = 'storage.vectors'::regclass limit 1)); end $$;",
        )
        .await;
    assert!(direct.is_err());
}

#[tokio::test]
async fn hnsw_agrees_with_exact_search_and_stale_cache_recovers() {
    let v = V::new().await;
    let dim = 16;
    v.index(dim, "euclidean", json!({})).await;
    let data = vectors(1000, dim, 7);
    for (chunk_no, chunk) in data.chunks(500).enumerate() {
        let items: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, x)| {
                json!({"key": format!("v{:05}", chunk_no * 500 + i), "data": {"float32": x},
                "metadata": {"even": (chunk_no * 500 + i) % 2 == 0}})
            })
            .collect();
        v.svc("PutVectors", with(target(), json!({"vectors": items})))
            .await
            .empty_ok();
    }
    let queries = vectors(20, dim, 99);
    let mut hits = 0;
    for q in &queries {
        let reply = v
            .svc(
                "QueryVectors",
                with(
                    target(),
                    json!({"queryVector": {"float32": q}, "topK": 10, "returnDistance": true}),
                ),
            )
            .await;
        let got: Vec<String> = reply.body["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["key"].as_str().unwrap().to_owned())
            .collect();
        let mut exact: Vec<(f32, usize)> = data
            .iter()
            .enumerate()
            .map(|(i, x)| {
                (
                    x.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
                    i,
                )
            })
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        hits += exact[..10]
            .iter()
            .filter(|(_, i)| got.contains(&format!("v{i:05}")))
            .count();
        // Distances are Euclidean and ascending.
        let distances: Vec<f64> = reply.body["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["distance"].as_f64().unwrap())
            .collect();
        assert!(distances.windows(2).all(|w| w[0] <= w[1]));
        assert!((distances[0] - f64::from(exact[0].0.sqrt())).abs() < 1e-3);
        // A filter that drops half the candidates still fills topK.
        let even = v
            .svc(
                "QueryVectors",
                with(
                    target(),
                    json!({"queryVector": {"float32": q}, "topK": 10,
                "filter": {"even": true}, "returnMetadata": true}),
                ),
            )
            .await;
        let found = even.body["vectors"].as_array().unwrap();
        assert_eq!(found.len(), 10);
        assert!(found.iter().all(|v| v["metadata"]["even"] == json!(true)));
    }
    let recall = hits as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");

    // The index is dropped and made again (new id, new dimension) behind
    // the cache's back: the next call looks it up again.
    v.sql("delete from storage.vector_indexes where name = 'idx'")
        .await;
    v.svc(
        "CreateIndex",
        with(
            target(),
            json!({"dataType": "float32", "dimension": 2, "distanceMetric": "cosine"}),
        ),
    )
    .await
    .empty_ok();
    let reply = v
        .svc(
            "PutVectors",
            with(
                target(),
                json!({"vectors": [{"key": "n", "data": {"float32": [1, 1]}}]}),
            ),
        )
        .await;
    reply.empty_ok();
    let listed = v.svc("ListVectors", target()).await;
    assert_eq!(listed.body["vectors"], json!([{"key": "n"}]));
}

#[tokio::test]
async fn large_dimensions_use_halfvec_hnsw() {
    let v = V::new().await;
    v.index(3072, "cosine", json!({})).await;
    let data = vectors(3, 3072, 5);
    let items: Vec<Value> = data
        .iter()
        .enumerate()
        .map(|(i, x)| json!({"key": format!("k{i}"), "data": {"float32": x}}))
        .collect();
    v.svc("PutVectors", with(target(), json!({"vectors": items})))
        .await
        .empty_ok();
    let reply = v
        .svc(
            "QueryVectors",
            with(
                target(),
                json!({"queryVector": {"float32": data[1]}, "topK": 1}),
            ),
        )
        .await;
    assert_eq!(
        reply.body["vectors"],
        json!([{"key": "k1"}]),
        "{}",
        reply.body
    );
}
