//! `storage.io_threads` and `storage.io_wait`: when every file IO slot of
//! the local disk stays taken for `io_wait`, uploads, downloads and copies
//! are answered 503 `SlowDown` (what storage-js shows as a retryable
//! error), and served again once a slot is free. The slot is held the way
//! a long blocking file call would hold it; the wait is one second, so no
//! test sleeps for the default 30 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_test_support::TestApp;

#[tokio::test]
async fn a_saturated_disk_answers_503_slow_down_until_a_slot_is_free() {
    let mut config = sovra_config::Config::default();
    config.storage.io_threads = 1;
    config.storage.io_wait = 1;
    let app = TestApp::spawn_with(config).await;
    let http = reqwest::Client::new();
    let service = app.service_role_key.clone();
    let request = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}/storage/v1/{path}", app.url))
            .header("apikey", &service)
            .bearer_auth(&service)
    };
    let bucket = request(reqwest::Method::POST, "bucket")
        .json(&json!({"name": "files"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bucket.status(), StatusCode::OK);
    let upload = |name: &'static str| {
        request(reqwest::Method::POST, &format!("object/files/{name}"))
            .header("content-type", "text/plain")
            .body("hello")
    };
    assert_eq!(
        upload("a.txt").send().await.unwrap().status(),
        StatusCode::OK
    );

    let slot = app
        .tenant
        .storage
        .backend()
        .hold_io_slot()
        .await
        .expect("the fs backend has IO slots");
    let refused = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["statusCode"], "503", "{body}");
        assert_eq!(body["error"], "SlowDown", "{body}");
        assert_eq!(body["message"], "The server is busy; retry later", "{body}");
    };
    refused(upload("b.txt").send().await.unwrap()).await;
    refused(
        request(reqwest::Method::GET, "object/files/a.txt")
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(
        request(reqwest::Method::POST, "object/copy")
            .json(&json!({"bucketId": "files", "sourceKey": "a.txt", "destinationKey": "c.txt"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The refused upload left no object behind.
    let list: Value = request(reqwest::Method::POST, "object/list/files")
        .json(&json!({"prefix": ""}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(names, ["a.txt"], "{list}");

    drop(slot);
    assert_eq!(
        upload("b.txt").send().await.unwrap().status(),
        StatusCode::OK
    );
    let read = request(reqwest::Method::GET, "object/files/a.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.text().await.unwrap(), "hello");
}
