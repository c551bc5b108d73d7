//! Sovra as an OAuth 2.1 / OpenID Connect provider through the real router
//! on a real database: client management (admin API and dynamic
//! registration), the authorization-code flow with PKCE and the consent
//! calls auth-js makes, the token endpoint's grants, userinfo, revocation,
//! ID tokens checked against the published JWK set, access tokens the rest
//! of Sovra accepts, and each refusal in GoTrue's (or OAuth's) shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::auth_client::{Auth, Reply, claims, config};

const REDIRECT: &str = "https://client.example.com/callback";

/// A server whose limits let one test make many requests.
async fn server(edit: impl FnOnce(&mut sovra_config::Config)) -> Auth {
    Auth::with(config(|c| {
        c.auth.rate_limit.sign_in = 100_000;
        c.auth.rate_limit.verify = 100_000;
        c.auth.rate_limit.token_refresh = 100_000;
        c.auth.site_url = Some("https://app.example.com".to_owned());
        edit(c);
    }))
    .await
}

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = sovra_auth::crypto::random_alnum(64);
    let challenge = sovra_auth::crypto::pkce_s256(&verifier);
    (verifier, challenge)
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", sovra_auth::crypto::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn reply(response: reqwest::Response) -> Reply {
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

/// A client made through the admin API (`body` merged into the defaults).
async fn client(auth: &Auth, body: Value) -> Value {
    let mut request = json!({"client_name": "Test app", "redirect_uris": [REDIRECT]});
    for (k, v) in body.as_object().unwrap() {
        request[k] = v.clone();
    }
    let (status, created) = auth
        .admin_pair(Method::POST, "/admin/oauth/clients", request)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

/// `GET /oauth/authorize` as a browser makes it (no API key).
async fn authorize(auth: &Auth, params: &[(&str, &str)]) -> Reply {
    let url = format!("{}/auth/v1/oauth/authorize?{}", auth.app.url, form(params));
    reply(auth.http.get(url).send().await.unwrap()).await
}

/// The `authorization_id` of a successful authorize redirect.
fn authorization_id(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::FOUND, "{:?}", reply.body);
    let location = reply.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://app.example.com/oauth/consent?authorization_id="),
        "{location}"
    );
    location
        .split("authorization_id=")
        .nth(1)
        .unwrap()
        .to_owned()
}

/// A query parameter of a URL.
fn param(url: &str, name: &str) -> Option<String> {
    sovra_auth::crypto::query_param(url.split_once('?').map(|(_, q)| q), name)
}

/// `POST /oauth/token` as an OAuth client library makes it.
async fn token(auth: &Auth, fields: &[(&str, &str)], basic: Option<(&str, &str)>) -> Reply {
    let mut request = auth
        .http
        .post(format!("{}/auth/v1/oauth/token", auth.app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(fields));
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    reply(request.send().await.unwrap()).await
}

/// Query parameters of an authorization request.
type Params<'a> = Vec<(&'a str, String)>;

/// [`token`] with owned fields.
async fn send(auth: &Auth, fields: Vec<(String, String)>, basic: Option<(&str, &str)>) -> Reply {
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    token(auth, &pairs, basic).await
}

struct Flow {
    client_id: String,
    secret: Option<String>,
    verifier: String,
    code: String,
}

/// Authorize, read the authorization as `user_token`, approve it: the code.
async fn approved_code(
    auth: &Auth,
    created: &Value,
    user_token: &str,
    scope: &str,
    nonce: Option<&str>,
) -> Flow {
    let client_id = created["client_id"].as_str().unwrap().to_owned();
    let (verifier, challenge) = pkce();
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st-123"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    if let Some(nonce) = nonce {
        params.push(("nonce", nonce));
    }
    let id = authorization_id(&authorize(auth, &params).await);
    let details = auth
        .call(
            Method::GET,
            &format!("/oauth/authorizations/{id}"),
            Some(user_token),
            None,
        )
        .await;
    assert_eq!(details.status, StatusCode::OK, "{:?}", details.body);
    // A consent given before approves at once; else the user approves.
    let redirect_url = match details.body.get("redirect_url") {
        Some(url) => url.as_str().unwrap().to_owned(),
        None => {
            assert_eq!(details.body["authorization_id"], id.as_str());
            let consent = auth
                .call(
                    Method::POST,
                    &format!("/oauth/authorizations/{id}/consent"),
                    Some(user_token),
                    Some(json!({"action": "approve"})),
                )
                .await;
            assert_eq!(consent.status, StatusCode::OK, "{:?}", consent.body);
            consent.body["redirect_url"].as_str().unwrap().to_owned()
        }
    };
    let redirect_url = redirect_url.as_str();
    assert!(redirect_url.starts_with(REDIRECT), "{redirect_url}");
    assert_eq!(param(redirect_url, "state").as_deref(), Some("st-123"));
    Flow {
        client_id,
        secret: created["client_secret"].as_str().map(str::to_owned),
        verifier,
        code: param(redirect_url, "code").expect("a code"),
    }
}

/// Exchanges a flow's code as its client (Basic auth when confidential).
async fn exchange(auth: &Auth, flow: &Flow) -> Reply {
    let basic = flow
        .secret
        .as_deref()
        .map(|secret| (flow.client_id.as_str(), secret));
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", flow.code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", flow.verifier.as_str()),
    ];
    if basic.is_none() {
        fields.push(("client_id", flow.client_id.as_str()));
    }
    token(auth, &fields, basic).await
}

#[tokio::test]
async fn admins_manage_clients_and_secrets_are_only_shown_once() {
    let auth = server(|_| {}).await;
    let confidential = client(&auth, json!({"client_uri": "https://client.example.com"})).await;
    let id = confidential["client_id"].as_str().unwrap();
    let secret = confidential["client_secret"].as_str().unwrap();
    assert_eq!(confidential["client_type"], "confidential");
    assert_eq!(
        confidential["token_endpoint_auth_method"],
        "client_secret_basic"
    );
    assert_eq!(confidential["registration_type"], "manual");
    assert_eq!(
        confidential["grant_types"],
        json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(confidential["response_types"], json!(["code"]));
    assert!(secret.len() >= 43);
    // Stored as a hash only.
    let stored: Option<String> = auth
        .sql(&format!(
            "select client_secret_hash from auth.oauth_clients where id = '{id}'"
        ))
        .await[0]
        .get(0);
    assert_eq!(stored.unwrap(), sovra_auth::crypto::sha256_hex(secret));

    let public = client(&auth, json!({"token_endpoint_auth_method": "none"})).await;
    assert_eq!(public["client_type"], "public");
    assert!(public.get("client_secret").is_none());

    let got = auth
        .admin(Method::GET, &format!("/admin/oauth/clients/{id}"), None)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["client_uri"], "https://client.example.com");
    assert!(got.body.get("client_secret").is_none(), "shown once");

    let list = auth.admin(Method::GET, "/admin/oauth/clients", None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["clients"].as_array().unwrap().len(), 2);
    assert_eq!(list.headers["x-total-count"], "2");
    let page = auth
        .admin(Method::GET, "/admin/oauth/clients?page=2&per_page=1", None)
        .await;
    assert_eq!(page.body["clients"].as_array().unwrap().len(), 1);

    let (status, updated) = auth
        .admin_pair(
            Method::PUT,
            &format!("/admin/oauth/clients/{id}"),
            json!({"redirect_uris": [REDIRECT, "http://localhost:3000/cb"], "client_name": "Renamed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["client_name"], "Renamed");
    assert_eq!(updated["redirect_uris"].as_array().unwrap().len(), 2);

    let (status, regenerated) = auth
        .admin_pair(
            Method::POST,
            &format!("/admin/oauth/clients/{id}/regenerate_secret"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let new_secret = regenerated["client_secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    // The old secret no longer authenticates; the new one does (the
    // request then fails on the grant, not on the client).
    let fields = [("grant_type", "refresh_token"), ("refresh_token", "nope")];
    let old = token(&auth, &fields, Some((id, secret))).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    assert_eq!(old.body["error"], "invalid_client");
    let new = token(&auth, &fields, Some((id, new_secret))).await;
    assert_eq!(new.status, StatusCode::BAD_REQUEST);
    assert_eq!(new.body["error"], "invalid_grant");

    let public_id = public["client_id"].as_str().unwrap();
    let refused = auth
        .admin(
            Method::POST,
            &format!("/admin/oauth/clients/{public_id}/regenerate_secret"),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.code(), "validation_failed");

    let deleted = auth
        .admin(Method::DELETE, &format!("/admin/oauth/clients/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = auth
        .admin(Method::GET, &format!("/admin/oauth/clients/{id}"), None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.code(), "oauth_client_not_found");
    let again = auth
        .admin(Method::DELETE, &format!("/admin/oauth/clients/{id}"), None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_client_registrations_are_refused() {
    let auth = server(|_| {}).await;
    for (body, message) in [
        (json!({"client_name": "x"}), "redirect_uris is required"),
        (json!({"redirect_uris": []}), "redirect_uris is required"),
        (
            json!({"redirect_uris": ["http://client.example.com/cb"]}),
            "HTTP scheme only allowed for localhost",
        ),
        (
            json!({"redirect_uris": ["javascript://x/y"]}),
            "not allowed",
        ),
        (
            json!({"redirect_uris": ["https://c.example.com/cb#f"]}),
            "fragment",
        ),
        (
            json!({"redirect_uris": [REDIRECT], "grant_types": ["password"]}),
            "grant_types",
        ),
        (
            json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}),
            "token_endpoint_auth_method",
        ),
        (
            json!({"redirect_uris": [REDIRECT], "client_type": "public", "token_endpoint_auth_method": "client_secret_post"}),
            "not valid for client_type",
        ),
        (
            json!({"redirect_uris": [REDIRECT], "scope": "openid admin"}),
            "unsupported scope",
        ),
        (
            json!({"redirect_uris": [REDIRECT], "client_uri": "not a url"}),
            "client_uri",
        ),
    ] {
        let (status, answer) = auth
            .admin_pair(Method::POST, "/admin/oauth/clients", body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error_code"], "validation_failed", "{body}");
        assert!(
            answer["msg"].as_str().unwrap().contains(message),
            "{body}: {answer}"
        );
    }
    // Not an admin.
    let user = auth
        .call(
            Method::POST,
            "/admin/oauth/clients",
            None,
            Some(json!({"redirect_uris": [REDIRECT]})),
        )
        .await;
    assert_eq!(user.status, StatusCode::UNAUTHORIZED);
    let token = auth.access_token_of_new_user("eve@example.com").await;
    let user = auth
        .call(Method::GET, "/admin/oauth/clients", Some(&token), None)
        .await;
    assert_eq!(user.status, StatusCode::FORBIDDEN);
    assert_eq!(user.code(), "not_admin");
    let bad_id = auth
        .admin(Method::GET, "/admin/oauth/clients/not-a-uuid", None)
        .await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    let created = client(&auth, json!({})).await;
    let id = created["client_id"].as_str().unwrap();
    let (status, answer) = auth
        .admin_pair(
            Method::PUT,
            &format!("/admin/oauth/clients/{id}"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _) = auth
        .admin_pair(
            Method::PUT,
            &format!("/admin/oauth/clients/{id}"),
            json!({"token_endpoint_auth_method": "none"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

impl Auth {
    async fn access_token_of_new_user(&self, email: &str) -> String {
        self.user(email, "password1").await;
        self.access_token(email, "password1").await
    }
}

#[tokio::test]
async fn dynamic_registration_is_off_by_default_and_open_when_enabled() {
    let off = server(|_| {}).await;
    let url = format!("{}/auth/v1/oauth/clients/register", off.app.url);
    let refused = reply(
        off.http
            .post(&url)
            .json(&json!({"redirect_uris": [REDIRECT]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.body["error_code"],
        "oauth_dynamic_client_registration_disabled"
    );
    let meta = reply(
        off.http
            .get(format!(
                "{}/auth/v1/.well-known/oauth-authorization-server",
                off.app.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(meta.body.get("registration_endpoint").is_none());

    let on = server(|c| c.auth.oauth_server.dynamic_registration = true).await;
    let url = format!("{}/auth/v1/oauth/clients/register", on.app.url);
    // No API key: MCP clients register themselves.
    let made = reply(
        on.http
            .post(&url)
            .json(&json!({"redirect_uris": ["http://127.0.0.1:33418/cb"], "client_name": "MCP", "token_endpoint_auth_method": "none"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    assert_eq!(made.body["registration_type"], "dynamic");
    assert_eq!(made.body["client_type"], "public");
    assert!(made.body["client_id_issued_at"].is_i64());
    let meta = reply(
        on.http
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                on.app.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        meta.body["registration_endpoint"],
        format!("{}/auth/v1/oauth/clients/register", on.app.url)
    );
    let bad = reply(
        on.http
            .post(&url)
            .json(&json!({"redirect_uris": ["http://evil.example.com/cb"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

/// The published JWK set's key for `kid`, as a decoding key.
async fn jwk(auth: &Auth, kid: &str) -> jsonwebtoken::DecodingKey {
    let set = reply(
        auth.http
            .get(format!("{}/auth/v1/.well-known/jwks.json", auth.app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key = set.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .expect("the ID token's key is published")
        .clone();
    assert_eq!(key["alg"], "ES256");
    assert!(key.get("d").is_none(), "no private part");
    jsonwebtoken::DecodingKey::from_ec_components(
        key["x"].as_str().unwrap(),
        key["y"].as_str().unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_code_flow_issues_tokens_the_rest_of_sovra_accepts() {
    let auth = server(|c| c.auth.refresh_token_reuse_interval = 0).await;
    let issuer = format!("{}/auth/v1", auth.app.url);
    // Discovery, under /auth/v1 and at the root.
    for path in [
        "/auth/v1/.well-known/openid-configuration",
        "/auth/v1/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/auth/v1",
        "/.well-known/openid-configuration",
    ] {
        let meta = reply(
            auth.http
                .get(format!("{}{path}", auth.app.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(meta.status, StatusCode::OK, "{path}");
        assert_eq!(meta.body["issuer"], issuer.as_str(), "{path}");
        assert_eq!(meta.body["token_endpoint"], format!("{issuer}/oauth/token"));
        assert_eq!(
            meta.body["code_challenge_methods_supported"],
            json!(["S256"])
        );
        assert_eq!(
            meta.body["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
    }

    let created = client(&auth, json!({})).await;
    let user_id = auth.user_id("ada@example.com", "password1").await;
    auth.sql(&format!(
        "update auth.users set raw_user_meta_data = '{{\"full_name\": \"Ada Lovelace\", \"avatar_url\": \"https://img.example.com/ada.png\"}}' where id = '{user_id}'"
    ))
    .await;
    let user_token = auth.access_token("ada@example.com", "password1").await;
    let flow = approved_code(
        &auth,
        &created,
        &user_token,
        "openid email profile offline_access",
        Some("n-0S6_WzA2Mj"),
    )
    .await;
    let tokens = exchange(&auth, &flow).await;
    assert_eq!(tokens.status, StatusCode::OK, "{:?}", tokens.body);
    assert_eq!(tokens.headers["cache-control"], "no-store");
    assert_eq!(tokens.body["token_type"], "bearer");
    assert_eq!(tokens.body["scope"], "openid email profile offline_access");
    assert!(tokens.body.get("user").is_none());

    // The ID token verifies against the published key set.
    let id_token = tokens.body["id_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let key = jwk(&auth, header.kid.as_deref().unwrap()).await;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[flow.client_id.as_str()]);
    validation.set_issuer(&[issuer.as_str()]);
    let id_claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(id_claims["sub"], user_id.as_str());
    assert_eq!(id_claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id_claims["email"], "ada@example.com");
    assert_eq!(id_claims["email_verified"], true);
    assert_eq!(id_claims["name"], "Ada Lovelace");
    assert_eq!(id_claims["picture"], "https://img.example.com/ada.png");
    assert!(id_claims.get("phone_number").is_none(), "phone not asked");

    // The access token is the project's JWT with the client's id.
    let access = tokens.body["access_token"].as_str().unwrap();
    let access_claims = claims(access);
    assert_eq!(access_claims["client_id"], flow.client_id.as_str());
    assert_eq!(access_claims["role"], "authenticated");
    assert_eq!(access_claims["iss"], issuer.as_str());
    assert_eq!(
        access_claims["amr"][0]["method"],
        "oauth_provider/authorization_code"
    );
    let db_view = reply(
        auth.http
            .get(format!("{}/sovra/v1/whoami/db", auth.app.url))
            .header("apikey", &auth.app.anon_key)
            .bearer_auth(access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(db_view.status, StatusCode::OK, "{:?}", db_view.body);
    assert_eq!(db_view.body["uid"], user_id.as_str());
    assert_eq!(db_view.body["jwt"]["client_id"], flow.client_id.as_str());
    assert_eq!(db_view.body["current_user"], "authenticated");

    // userinfo releases what the scopes allow.
    let info = reply(
        auth.http
            .get(format!("{issuer}/oauth/userinfo"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(info.status, StatusCode::OK, "{:?}", info.body);
    assert_eq!(info.body["sub"], user_id.as_str());
    assert_eq!(info.body["email"], "ada@example.com");
    assert_eq!(info.body["name"], "Ada Lovelace");
    assert!(info.body.get("phone_number").is_none());

    // Refresh rotates; the new access token still names the client.
    let secret = flow.secret.as_deref().unwrap();
    let first_refresh = tokens.body["refresh_token"].as_str().unwrap();
    let refreshed = token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first_refresh),
        ],
        Some((&flow.client_id, secret)),
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let second_refresh = refreshed.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        claims(refreshed.body["access_token"].as_str().unwrap())["client_id"],
        flow.client_id.as_str()
    );
    assert_eq!(
        refreshed.body["scope"],
        "openid email profile offline_access"
    );
    // Asking for more at refresh is refused.
    let wider = token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &second_refresh),
            ("scope", "openid phone"),
        ],
        Some((&flow.client_id, secret)),
    )
    .await;
    assert_eq!(wider.status, StatusCode::BAD_REQUEST);
    assert_eq!(wider.body["error"], "invalid_scope");
    // Reusing a rotated token ends the session (reuse detection).
    let reused = token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first_refresh),
        ],
        Some((&flow.client_id, secret)),
    )
    .await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST, "{:?}", reused.body);
    assert_eq!(reused.body["error"], "invalid_grant");
    let after = token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &second_refresh),
        ],
        Some((&flow.client_id, secret)),
    )
    .await;
    assert_eq!(after.body["error"], "invalid_grant", "{:?}", after.body);

    // A project session's refresh token does not refresh at the OAuth
    // endpoint.
    let own = auth.session("ada@example.com", "password1").await;
    let foreign = token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", own["refresh_token"].as_str().unwrap()),
        ],
        Some((&flow.client_id, secret)),
    )
    .await;
    assert_eq!(foreign.body["error"], "invalid_grant");

    // The user's grants, and revoking one.
    let grants = auth
        .call(Method::GET, "/user/oauth/grants", Some(&user_token), None)
        .await;
    assert_eq!(grants.status, StatusCode::OK);
    assert_eq!(grants.body[0]["client"]["id"], flow.client_id.as_str());
    assert_eq!(
        grants.body[0]["scopes"],
        json!(["openid", "email", "profile", "offline_access"])
    );
    let revoked = auth
        .call(
            Method::DELETE,
            &format!("/user/oauth/grants?client_id={}", flow.client_id),
            Some(&user_token),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{:?}", revoked.body);
    let none = auth
        .call(
            Method::DELETE,
            &format!("/user/oauth/grants?client_id={}", flow.client_id),
            Some(&user_token),
            None,
        )
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(none.code(), "oauth_consent_not_found");
}

#[tokio::test]
async fn revocation_and_sign_out_end_oauth_sessions() {
    let auth = server(|_| {}).await;
    let public = client(&auth, json!({"token_endpoint_auth_method": "none"})).await;
    auth.user("bo@example.com", "password1").await;
    let user_token = auth.access_token("bo@example.com", "password1").await;

    // A public client: PKCE, no secret.
    let flow = approved_code(&auth, &public, &user_token, "openid email", None).await;
    let tokens = exchange(&auth, &flow).await;
    assert_eq!(tokens.status, StatusCode::OK, "{:?}", tokens.body);
    assert!(
        claims(tokens.body["id_token"].as_str().unwrap())
            .get("nonce")
            .is_none()
    );
    let refresh = tokens.body["refresh_token"].as_str().unwrap().to_owned();
    let access = tokens.body["access_token"].as_str().unwrap().to_owned();
    // RFC 7009: revoking the refresh token ends the session.
    let revoke = reply(
        auth.http
            .post(format!("{}/auth/v1/oauth/revoke", auth.app.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("token", &refresh), ("client_id", &flow.client_id)]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(revoke.status, StatusCode::OK);
    let info = reply(
        auth.http
            .get(format!("{}/auth/v1/oauth/userinfo", auth.app.url))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(info.status, StatusCode::UNAUTHORIZED);
    assert_eq!(info.body["error"], "invalid_token");
    assert!(info.headers.contains_key("www-authenticate"));
    let dead = token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &flow.client_id),
        ],
        None,
    )
    .await;
    assert_eq!(dead.body["error"], "invalid_grant");

    // The user signing out everywhere ends the client's session too; the
    // consent stays, so the next authorization is approved at once.
    let second = auth.access_token("bo@example.com", "password1").await;
    let (verifier, challenge) = pkce();
    let id = authorization_id(
        &authorize(
            &auth,
            &[
                ("client_id", flow.client_id.as_str()),
                ("redirect_uri", REDIRECT),
                ("scope", "email"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .await,
    );
    let auto = auth
        .call(
            Method::GET,
            &format!("/oauth/authorizations/{id}"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(auto.status, StatusCode::OK);
    let redirect_url = auto.body["redirect_url"]
        .as_str()
        .expect("approved at once");
    let code = param(redirect_url, "code").unwrap();
    let tokens = token(
        &auth,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("client_id", &flow.client_id),
        ],
        None,
    )
    .await;
    assert_eq!(tokens.status, StatusCode::OK, "{:?}", tokens.body);
    assert!(tokens.body.get("id_token").is_none(), "no openid scope");
    let logout = auth
        .call(Method::POST, "/logout", Some(&second), None)
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after = token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                tokens.body["refresh_token"].as_str().unwrap(),
            ),
            ("client_id", &flow.client_id),
        ],
        None,
    )
    .await;
    assert_eq!(after.body["error"], "invalid_grant", "{:?}", after.body);
}

#[tokio::test]
async fn authorization_requests_are_checked_before_the_consent_page() {
    let auth = server(|_| {}).await;
    let created = client(&auth, json!({"scope": "openid email"})).await;
    let id = created["client_id"].as_str().unwrap();
    let (_, challenge) = pkce();
    let base = |extra: &[(&'static str, &'static str)]| {
        let mut params: Vec<(&str, String)> = vec![
            ("client_id", id.to_owned()),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".to_owned()),
        ];
        for (k, v) in extra {
            params.retain(|(name, _)| name != k);
            if !v.is_empty() {
                params.push((k, (*v).to_owned()));
            }
        }
        params
    };
    let cases: Vec<(Params, &str, &str)> = vec![
        (
            base(&[("redirect_uri", "https://client.example.com/other")]),
            "validation_failed",
            "invalid redirect_uri",
        ),
        (
            base(&[("redirect_uri", "https://client.example.com/callback/")]),
            "validation_failed",
            "invalid redirect_uri",
        ),
        (
            base(&[("client_id", "8d9e6d7e-0000-4000-8000-000000000000")]),
            "oauth_client_not_found",
            "invalid client_id",
        ),
        (
            base(&[("client_id", "nope")]),
            "oauth_client_not_found",
            "invalid client_id",
        ),
        (
            base(&[("client_id", "")]),
            "validation_failed",
            "client_id is required",
        ),
        (
            base(&[("code_challenge_method", "plain")]),
            "validation_failed",
            "S256",
        ),
        (base(&[("code_challenge", "")]), "validation_failed", "PKCE"),
        (
            base(&[("code_challenge", "short")]),
            "validation_failed",
            "43 and 128",
        ),
        (
            base(&[("response_type", "token")]),
            "validation_failed",
            "response_type=code",
        ),
        (
            base(&[("scope", "openid admin")]),
            "validation_failed",
            "unsupported scope",
        ),
        // Scope escalation: the client may ask for openid and email only.
        (
            base(&[("scope", "openid email phone")]),
            "validation_failed",
            "not allowed for this client",
        ),
    ];
    for (params, code, message) in cases {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = authorize(&auth, &pairs).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{pairs:?}: {:?}",
            answer.body
        );
        assert_eq!(answer.body["error_code"], code, "{pairs:?}");
        assert!(
            answer.body["msg"].as_str().unwrap().contains(message),
            "{pairs:?}: {:?}",
            answer.body
        );
    }
    // Within its scopes it passes; without a scope it is GoTrue's `email`.
    let plain = base(&[]);
    let pairs: Vec<(&str, &str)> = plain.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ok = authorize(&auth, &pairs).await;
    let authorization = authorization_id(&ok);
    let scope: String = auth
        .sql(&format!(
            "select scope from auth.oauth_authorizations where authorization_id = '{authorization}'"
        ))
        .await[0]
        .get(0);
    assert_eq!(scope, "email");
}

#[tokio::test]
async fn consent_is_the_signed_in_owners_and_can_be_denied() {
    let auth = server(|c| {
        c.auth.oauth_server.consent_url = "https://consent.example.com/approve".to_owned();
    })
    .await;
    let created = client(&auth, json!({})).await;
    let id = created["client_id"].as_str().unwrap();
    let alice = auth.access_token_of_new_user("alice@example.com").await;
    let mallory = auth.access_token_of_new_user("mallory@example.com").await;
    let (_, challenge) = pkce();
    let start = authorize(
        &auth,
        &[
            ("client_id", id),
            ("redirect_uri", REDIRECT),
            ("state", "xyz"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("scope", "openid email"),
        ],
    )
    .await;
    assert_eq!(start.status, StatusCode::FOUND);
    let location = start.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("https://consent.example.com/approve?authorization_id="));
    let authorization = param(&location, "authorization_id").unwrap();
    let path = format!("/oauth/authorizations/{authorization}");

    // Without a session: GoTrue's 401.
    let anonymous = auth.call(Method::GET, &path, None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let details = auth.call(Method::GET, &path, Some(&alice), None).await;
    assert_eq!(details.status, StatusCode::OK);
    assert_eq!(details.body["client"]["id"], id);
    assert_eq!(details.body["client"]["name"], "Test app");
    assert_eq!(details.body["user"]["email"], "alice@example.com");
    assert_eq!(details.body["scope"], "openid email");
    assert_eq!(details.body["redirect_uri"], REDIRECT);
    // Another user may neither read nor decide it.
    let other = auth.call(Method::GET, &path, Some(&mallory), None).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.code(), "oauth_authorization_not_found");
    let stolen = auth
        .call(
            Method::POST,
            &format!("{path}/consent"),
            Some(&mallory),
            Some(json!({"action": "approve"})),
        )
        .await;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND);
    let bad = auth
        .call(
            Method::POST,
            &format!("{path}/consent"),
            Some(&alice),
            Some(json!({"action": "maybe"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let denied = auth
        .call(
            Method::POST,
            &format!("{path}/consent"),
            Some(&alice),
            Some(json!({"action": "deny"})),
        )
        .await;
    assert_eq!(denied.status, StatusCode::OK);
    let url = denied.body["redirect_url"].as_str().unwrap();
    assert!(url.starts_with(REDIRECT));
    assert_eq!(param(url, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(url, "state").as_deref(), Some("xyz"));
    assert!(param(url, "code").is_none());
    // Decided once.
    let again = auth
        .call(
            Method::POST,
            &format!("{path}/consent"),
            Some(&alice),
            Some(json!({"action": "approve"})),
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    let unknown = auth
        .call(
            Method::GET,
            "/oauth/authorizations/nonesuch",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "oauth_authorization_not_found");
}

#[tokio::test]
async fn codes_are_single_use_short_lived_and_bound_to_client_redirect_and_verifier() {
    let auth = server(|_| {}).await;
    let created = client(&auth, json!({})).await;
    let other = client(&auth, json!({})).await;
    let user = auth.access_token_of_new_user("cy@example.com").await;
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    let id = created["client_id"].as_str().unwrap().to_owned();
    let basic = Some((id.as_str(), secret.as_str()));

    // A wrong verifier fails, and burns the code.
    let flow = approved_code(&auth, &created, &user, "email", None).await;
    let wrong = sovra_auth::crypto::random_alnum(64);
    let fields = |code: &str, verifier: &str, redirect: &str| {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.to_owned()),
            ("redirect_uri".to_owned(), redirect.to_owned()),
            ("code_verifier".to_owned(), verifier.to_owned()),
        ]
    };
    let bad = send(&auth, fields(&flow.code, &wrong, REDIRECT), basic).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"], "invalid_grant");
    assert!(
        bad.body["error_description"]
            .as_str()
            .unwrap()
            .contains("PKCE")
    );
    let burnt = send(&auth, fields(&flow.code, &flow.verifier, REDIRECT), basic).await;
    assert_eq!(burnt.body["error"], "invalid_grant");

    // A wrong redirect URI.
    let flow = approved_code(&auth, &created, &user, "email", None).await;
    let bad = send(
        &auth,
        fields(&flow.code, &flow.verifier, "http://localhost/cb"),
        basic,
    )
    .await;
    assert_eq!(bad.body["error"], "invalid_grant");
    assert!(
        bad.body["error_description"]
            .as_str()
            .unwrap()
            .contains("redirect_uri")
    );

    // Reuse of a code that worked.
    let flow = approved_code(&auth, &created, &user, "email", None).await;
    let good = send(&auth, fields(&flow.code, &flow.verifier, REDIRECT), basic).await;
    assert_eq!(good.status, StatusCode::OK, "{:?}", good.body);
    let reused = send(&auth, fields(&flow.code, &flow.verifier, REDIRECT), basic).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(reused.body["error"], "invalid_grant");

    // An expired code.
    let flow = approved_code(&auth, &created, &user, "email", None).await;
    auth.sql(&format!(
        "update auth.oauth_authorizations set expires_at = now() - interval '1 second'
          where authorization_code = '{}'",
        sovra_auth::crypto::sha256_hex(&flow.code)
    ))
    .await;
    let expired = send(&auth, fields(&flow.code, &flow.verifier, REDIRECT), basic).await;
    assert_eq!(expired.body["error"], "invalid_grant");
    assert!(
        expired.body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    // Another client's code.
    let flow = approved_code(&auth, &created, &user, "email", None).await;
    let theirs = send(
        &auth,
        fields(&flow.code, &flow.verifier, REDIRECT),
        Some((
            other["client_id"].as_str().unwrap(),
            other["client_secret"].as_str().unwrap(),
        )),
    )
    .await;
    assert_eq!(theirs.body["error"], "invalid_grant");

    // Client authentication.
    let flow = approved_code(&auth, &created, &user, "email", None).await;
    let wrong_secret = send(
        &auth,
        fields(&flow.code, &flow.verifier, REDIRECT),
        Some((&id, "not-it")),
    )
    .await;
    assert_eq!(wrong_secret.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_secret.body["error"], "invalid_client");
    let mut no_secret = fields(&flow.code, &flow.verifier, REDIRECT);
    no_secret.push(("client_id".to_owned(), id.clone()));
    let missing = send(&auth, no_secret, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    let mut post = fields(&flow.code, &flow.verifier, REDIRECT);
    post.push(("client_id".to_owned(), id.clone()));
    post.push(("client_secret".to_owned(), secret.clone()));
    // client_secret_post works too (the code was not burnt by a client
    // that failed to authenticate).
    let posted = send(&auth, post, None).await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    let unknown = send(
        &auth,
        fields("x", "y", REDIRECT),
        Some(("8d9e6d7e-0000-4000-8000-000000000000", "s")),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    let no_grant = token(&auth, &[("client_id", &id)], basic).await;
    assert_eq!(no_grant.body["error"], "invalid_request");
    let implicit = token(&auth, &[("grant_type", "password")], basic).await;
    assert_eq!(implicit.body["error"], "unsupported_grant_type");
    // A Basic header that is not base64.
    let garbled = reply(
        auth.http
            .post(format!("{}/auth/v1/oauth/token", auth.app.url))
            .header("authorization", "Basic %%%")
            .body("grant_type=authorization_code")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(garbled.status, StatusCode::UNAUTHORIZED);
}
