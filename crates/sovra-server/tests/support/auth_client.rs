//! The `/auth/v1` client the auth tests share: calls through the real
//! router as auth-js makes them (with the anon key), the admin API with
//! the service_role key, sign-up and sign-in helpers, the local mailbox,
//! and the codes, links and claims in what comes back.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::TestApp;

/// A server and an HTTP client that does not follow redirects.
pub(crate) struct Auth {
    pub(crate) app: TestApp,
    pub(crate) http: reqwest::Client,
}

/// One answer: status, headers, and the body as JSON (a JSON string when
/// it is not JSON, `null` when empty).
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    /// The error code, in the legacy (`error_code`) or 2024 (`code`) shape.
    pub(crate) fn code(&self) -> &str {
        self.body
            .get("error_code")
            .or_else(|| self.body.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// The default configuration with `edit` applied.
pub(crate) fn config(edit: impl FnOnce(&mut sovra_config::Config)) -> sovra_config::Config {
    let mut config = sovra_config::Config::default();
    edit(&mut config);
    config
}

impl Auth {
    pub(crate) async fn new() -> Auth {
        Auth::with(config(|_| {})).await
    }

    pub(crate) async fn with(config: sovra_config::Config) -> Auth {
        // Server logs appear with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn")
            .try_init();
        Auth {
            app: TestApp::spawn_with(config).await,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}/auth/v1{path}", self.app.url))
            .header("apikey", &self.app.anon_key);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// [`Auth::call`] with a JSON body, as `(status, body)`.
    pub(crate) async fn call_pair(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let reply = self.call(method, path, token, Some(body)).await;
        (reply.status, reply.body)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, None, Some(body)).await
    }

    pub(crate) async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let key = self.app.service_role_key.clone();
        self.call(method, path, Some(&key), body).await
    }

    /// [`Auth::admin`] with a JSON body, as `(status, body)`.
    pub(crate) async fn admin_pair(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let reply = self.admin(method, path, Some(body)).await;
        (reply.status, reply.body)
    }

    /// A confirmed user made through the admin API.
    pub(crate) async fn user(&self, email: &str, password: &str) -> Value {
        let reply = self
            .admin(
                Method::POST,
                "/admin/users",
                Some(json!({"email": email, "password": password, "email_confirm": true})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply.body
    }

    /// [`Auth::user`]'s id.
    pub(crate) async fn user_id(&self, email: &str, password: &str) -> String {
        self.user(email, password).await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn sign_in(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/token?grant_type=password",
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// A signed-in session (the token response).
    pub(crate) async fn session(&self, email: &str, password: &str) -> Value {
        let reply = self.sign_in(email, password).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply.body
    }

    /// A signed-in session's access token.
    pub(crate) async fn access_token(&self, email: &str, password: &str) -> String {
        token(&self.session(email, password).await, "access_token")
    }

    pub(crate) async fn refresh(&self, refresh_token: &str) -> Reply {
        self.post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": refresh_token}),
        )
        .await
    }

    /// The latest message to `to`, from the mailbox.
    pub(crate) async fn mail(&self, to: &str) -> Value {
        let reply = self
            .admin(Method::GET, &format!("/admin/mailbox?to={to}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply
            .body
            .as_array()
            .unwrap()
            .last()
            .cloned()
            .expect("a message")
    }

    pub(crate) async fn mail_count(&self, to: &str) -> usize {
        let reply = self
            .admin(Method::GET, &format!("/admin/mailbox?to={to}"), None)
            .await;
        reply.body.as_array().unwrap().len()
    }

    pub(crate) async fn sql(&self, sql: &str) -> Vec<sovra_pg::tokio_postgres::Row> {
        self.app.db.client().await.query(sql, &[]).await.unwrap()
    }

    /// Follows a link from a mail; the `Location` it redirects to.
    pub(crate) async fn follow(&self, link: &str) -> String {
        let response = self.http.get(link).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        response.headers()["location"].to_str().unwrap().to_owned()
    }
}

/// The six-digit code in a message body.
pub(crate) fn code_in(message: &Value) -> String {
    let body = message["body"].as_str().unwrap();
    let at = body.find("code: ").expect("a code") + 6;
    body[at..at + 6].to_owned()
}

/// The verify link in a message body.
pub(crate) fn link_in(message: &Value) -> String {
    message["body"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .find(|w| w.contains("/auth/v1/verify?"))
        .expect("a link")
        .to_owned()
}

/// `link` with its `redirect_to` replaced.
pub(crate) fn redirect(link: &str, to: &str) -> String {
    let base = link.split("&redirect_to=").next().unwrap();
    format!(
        "{base}&redirect_to={}",
        sovra_auth::crypto::percent_encode(to)
    )
}

/// A string field of a token response.
pub(crate) fn token(session: &Value, key: &str) -> String {
    session[key].as_str().unwrap().to_owned()
}

/// The claims of an access token (not verified: the test only reads them).
pub(crate) fn claims(access_token: &str) -> Value {
    use base64::Engine as _;
    let payload = access_token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}
