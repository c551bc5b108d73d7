//! GitLab, Discord, Apple and Microsoft (Azure) sign-in through the real
//! router, against a provider served in the test that speaks each one's
//! protocol: GitLab's `/oauth/token` and `/api/v4/user`, Discord's
//! `/api/oauth2/token` and `/api/users/@me`, Apple's discovery, JWKS and
//! token endpoint (which checks the ES256 client secret JWT Sovra signs),
//! and a Microsoft authority whose issuer carries `{tenantid}`. Also
//! auth-js `linkIdentity({provider, token})`: `POST /token?grant_type=id_token`
//! with `link_identity` and the user's session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePrivateKey as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use sovra_config::{AppleOption, ExternalProvider, OAuthOption};
use sovra_test_support::TestApp;
use support::auth_client::{Auth, claims, config};

const APPLE_TEAM: &str = "TEAM123456";
const APPLE_KEY_ID: &str = "KEY7654321";
const SERVICES_ID: &str = "com.example.web";
const TENANT_A: &str = "11111111-2222-3333-4444-555555555555";
const TENANT_B: &str = "99999999-8888-7777-6666-555555555555";

/// What the provider answers next, and what it was sent last.
#[derive(Default)]
struct State {
    /// The `/user` (`/users/@me`) answer.
    profile: Value,
    /// The ID token the token endpoint hands out.
    id_token: String,
    /// The last token request's form and `Authorization` header.
    form: HashMap<String, String>,
    authorization: String,
    /// Whether the last Apple client secret verified.
    apple_secret_ok: Option<bool>,
}

/// A provider: its URL, state, the key its ID tokens are signed with, and
/// the public half of the Apple key Sovra signs client secrets with.
struct Fake {
    url: String,
    state: Arc<Mutex<State>>,
    signer: EncodingKey,
}

fn p256_key() -> (SigningKey, Value) {
    let signing = SigningKey::random(&mut rand::rngs::OsRng);
    let point = signing.verifying_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let public = json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
                        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
    (signing, public)
}

fn signer_of(key: &SigningKey) -> EncodingKey {
    EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes())
}

/// The `.p8` text of `key`, as Apple hands it out.
fn pem(key: &SigningKey) -> String {
    let der = key.to_pkcs8_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                sovra_auth::crypto::percent_decode(&k.replace('+', " ")),
                sovra_auth::crypto::percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Starts the provider. `apple_public` verifies the client secrets.
async fn fake(apple_public: Option<Value>) -> Fake {
    let (signing, public) = p256_key();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(State::default()));
    let token = {
        let state = state.clone();
        let url = url.clone();
        move |headers: axum::http::HeaderMap, body: String| {
            let state = state.clone();
            let url = url.clone();
            let apple_public = apple_public.clone();
            async move {
                let form = form(&body);
                let mut s = state.lock().unwrap();
                s.authorization = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                if let (Some(public), Some(secret)) = (&apple_public, form.get("client_secret")) {
                    let key: jsonwebtoken::jwk::Jwk =
                        serde_json::from_value(public.clone()).unwrap();
                    let mut v = Validation::new(Algorithm::ES256);
                    v.set_audience(&[url.as_str()]);
                    v.set_issuer(&[APPLE_TEAM]);
                    let verified = jsonwebtoken::decode::<Value>(
                        secret,
                        &DecodingKey::from_jwk(&key).unwrap(),
                        &v,
                    );
                    let ok = verified.is_ok_and(|d| {
                        d.claims["sub"] == SERVICES_ID
                            && d.header.kid.as_deref() == Some(APPLE_KEY_ID)
                    });
                    s.apple_secret_ok = Some(ok);
                }
                s.form = form.clone();
                if form.get("code").map(String::as_str) != Some("good-code")
                    || s.apple_secret_ok == Some(false)
                {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(json!({"error": "invalid_grant"})),
                    );
                }
                (
                    axum::http::StatusCode::OK,
                    axum::Json(
                        json!({"access_token": "provider-access", "token_type": "Bearer",
                                      "refresh_token": "provider-refresh", "id_token": s.id_token}),
                    ),
                )
            }
        }
    };
    let profile = {
        let state = state.clone();
        move |headers: axum::http::HeaderMap| {
            let state = state.clone();
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer provider-access")
                {
                    return (
                        axum::http::StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"message": "401 Unauthorized"})),
                    );
                }
                let profile = state.lock().unwrap().profile.clone();
                (axum::http::StatusCode::OK, axum::Json(profile))
            }
        }
    };
    let discovery = {
        let url = url.clone();
        move |axum::extract::Path(tenant): axum::extract::Path<String>| {
            let url = url.clone();
            async move {
                // Microsoft's multi-tenant authorities publish a template.
                let issuer = match tenant.as_str() {
                    "common" | "organizations" | "consumers" => {
                        format!("{url}/{{tenantid}}/v2.0")
                    }
                    tenant => format!("{url}/{tenant}/v2.0"),
                };
                axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{url}/jwks"),
                    "authorization_endpoint": format!("{url}/authorize"),
                    "token_endpoint": format!("{url}/token")}))
            }
        }
    };
    let root_discovery = {
        let url = url.clone();
        move || {
            let url = url.clone();
            async move {
                axum::Json(json!({"issuer": url, "jwks_uri": format!("{url}/jwks"),
                    "authorization_endpoint": format!("{url}/auth/authorize"),
                    "token_endpoint": format!("{url}/token")}))
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(root_discovery),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            axum::routing::get(discovery),
        )
        .route(
            "/jwks",
            axum::routing::get(move || {
                let public = public.clone();
                async move { axum::Json(json!({"keys": [public]})) }
            }),
        )
        .route("/token", axum::routing::post(token.clone()))
        .route("/oauth/token", axum::routing::post(token.clone()))
        .route("/api/oauth2/token", axum::routing::post(token))
        .route("/api/v4/user", axum::routing::get(profile.clone()))
        .route("/api/users/@me", axum::routing::get(profile));
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Fake {
        url,
        state,
        signer: signer_of(&signing),
    }
}

impl Fake {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, claims, &self.signer).unwrap()
    }

    fn next_id_token(&self, claims: &Value) {
        self.state.lock().unwrap().id_token = self.sign(claims);
    }

    fn profile(&self, profile: Value) {
        self.state.lock().unwrap().profile = profile;
    }

    fn form(&self) -> HashMap<String, String> {
        self.state.lock().unwrap().form.clone()
    }
}

fn param(url: &str, name: &str) -> Option<String> {
    let tail = url.split_once(['?', '#'])?.1;
    tail.split(['&', '#']).find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| sovra_auth::crypto::percent_decode(&v.replace('+', " ")))
    })
}

fn nonce_hash(nonce: &str) -> String {
    Sha256::digest(nonce.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `GET /authorize?provider=…` (implicit flow): where Sovra sends the browser.
async fn authorize(auth: &Auth, provider: &str) -> String {
    let response = auth
        .http
        .get(format!(
            "{}/auth/v1/authorize?provider={provider}",
            auth.app.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "{provider}");
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// The provider's redirect back to `GET /callback`: where Sovra sends the
/// browser then.
async fn callback(auth: &Auth, query: &str) -> String {
    let response = auth
        .http
        .get(format!("{}/auth/v1/callback?{query}", auth.app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// Apple's form_post to `POST /callback`.
async fn form_post(auth: &Auth, body: &str) -> String {
    let response = auth
        .http
        .post(format!("{}/auth/v1/callback", auth.app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// The user of the session in `back`'s fragment.
async fn user_of(auth: &Auth, back: &str) -> Value {
    let token = param(back, "access_token").unwrap_or_else(|| panic!("no session: {back}"));
    assert_eq!(param(back, "provider_token").unwrap(), "provider-access");
    let me = auth.call(Method::GET, "/user", Some(&token), None).await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.body);
    assert_eq!(claims(&token)["sub"], me.body["id"]);
    me.body
}

fn providers(user: &Value) -> Vec<String> {
    user["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provider"].as_str().unwrap().to_owned())
        .collect()
}

async fn user_count(auth: &Auth) -> i64 {
    auth.sql("select count(*) from auth.users").await[0].get(0)
}

#[tokio::test]
async fn gitlab_signs_in_links_by_confirmed_email_and_refuses() {
    let gitlab = fake(None).await;
    let url = gitlab.url.clone();
    let auth = Auth::with(config(move |c| {
        c.auth.external.gitlab = OAuthOption {
            enabled: true,
            client_id: "gl-app".to_owned(),
            secret: "gl-secret".to_owned(),
            url,
        };
    }))
    .await;
    let settings = auth.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["external"]["gitlab"], true);
    assert_eq!(settings.body["external"]["discord"], false);

    let bob = auth.user("bob@example.com", "password1").await;
    let to_gitlab = authorize(&auth, "gitlab").await;
    assert!(
        to_gitlab.starts_with(&format!("{}/oauth/authorize?", gitlab.url)),
        "{to_gitlab}"
    );
    assert_eq!(param(&to_gitlab, "client_id").unwrap(), "gl-app");
    assert_eq!(param(&to_gitlab, "scope").unwrap(), "read_user");
    assert_eq!(param(&to_gitlab, "code_challenge_method").unwrap(), "S256");
    assert!(!to_gitlab.contains("gl-secret"));
    gitlab.profile(json!({"id": 4242, "username": "bob", "name": "Bob Builder",
        "email": "Bob@Example.com", "confirmed_at": "2020-01-01T00:00:00Z",
        "avatar_url": "https://gitlab.example.com/bob.png"}));
    let state = param(&to_gitlab, "state").unwrap();
    let back = callback(&auth, &format!("code=good-code&state={state}")).await;
    let user = user_of(&auth, &back).await;
    // Linked to Bob by his confirmed email.
    assert_eq!(user["id"], bob["id"]);
    assert!(providers(&user).contains(&"gitlab".to_owned()), "{user}");
    let identity = user["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["provider"] == "gitlab")
        .unwrap();
    assert_eq!(identity["identity_data"]["sub"], "4242");
    assert_eq!(identity["identity_data"]["iss"], gitlab.url);
    assert_eq!(identity["identity_data"]["full_name"], "Bob Builder");
    let sent = gitlab.form();
    assert_eq!(sent["client_secret"], "gl-secret");
    assert_eq!(sent["grant_type"], "authorization_code");
    assert!(!sent["code_verifier"].is_empty());
    assert_eq!(
        sent["redirect_uri"],
        format!("{}/auth/v1/callback", auth.app.url)
    );

    // An unconfirmed email is not trusted: no link, no new user.
    gitlab.profile(json!({"id": 777, "username": "mallory", "name": "Mallory",
        "email": "carol@example.com", "confirmed_at": null}));
    let state = param(&authorize(&auth, "gitlab").await, "state").unwrap();
    let back = callback(&auth, &format!("code=good-code&state={state}")).await;
    assert_eq!(
        param(&back, "error_code").as_deref(),
        Some("provider_email_needs_verification"),
        "{back}"
    );
    // A code GitLab refuses, and a state Sovra did not sign.
    let state = param(&authorize(&auth, "gitlab").await, "state").unwrap();
    let back = callback(&auth, &format!("code=stolen&state={state}")).await;
    assert_eq!(param(&back, "error_code").unwrap(), "bad_oauth_callback");
    let (id, _) = state.split_once('.').unwrap();
    let back = callback(&auth, &format!("code=good-code&state={id}.AAAA")).await;
    assert_eq!(param(&back, "error_code").unwrap(), "bad_oauth_state");
    assert_eq!(user_count(&auth).await, 1);
}

#[tokio::test]
async fn discord_reads_users_me_with_its_avatar_and_verified_flag() {
    let discord = fake(None).await;
    let url = discord.url.clone();
    let auth = Auth::with(config(move |c| {
        c.auth.external.discord = OAuthOption {
            enabled: true,
            client_id: "dc-app".to_owned(),
            secret: "dc-secret".to_owned(),
            url,
        };
    }))
    .await;
    let settings = auth.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["external"]["discord"], true);
    let to_discord = authorize(&auth, "discord").await;
    assert!(
        to_discord.starts_with(&format!("{}/api/oauth2/authorize?", discord.url)),
        "{to_discord}"
    );
    assert_eq!(param(&to_discord, "scope").unwrap(), "email identify");
    discord.profile(json!({"id": "80351110224678912", "username": "nelly",
        "discriminator": "1337", "avatar": "a_8342729096ea3675442027381ff50dfe",
        "global_name": "Nelly", "email": "Nelly@Discord.com", "verified": true}));
    let state = param(&to_discord, "state").unwrap();
    let back = callback(&auth, &format!("code=good-code&state={state}")).await;
    let user = user_of(&auth, &back).await;
    assert_eq!(user["email"], "nelly@discord.com");
    assert!(user["email_confirmed_at"].is_string());
    assert_eq!(user["app_metadata"]["provider"], "discord");
    let meta = &user["user_metadata"];
    assert_eq!(meta["name"], "nelly#1337");
    assert_eq!(meta["full_name"], "nelly");
    assert_eq!(meta["custom_claims"]["global_name"], "Nelly");
    assert_eq!(
        meta["avatar_url"],
        "https://cdn.discordapp.com/avatars/80351110224678912/a_8342729096ea3675442027381ff50dfe.gif"
    );
    assert_eq!(discord.form()["client_secret"], "dc-secret");

    // Discord's `verified: false`: the email is not trusted.
    auth.user("victim@example.com", "password1").await;
    discord.profile(json!({"id": "1", "username": "eve", "discriminator": "0",
        "avatar": null, "email": "victim@example.com", "verified": false}));
    let state = param(&authorize(&auth, "discord").await, "state").unwrap();
    let back = callback(&auth, &format!("code=good-code&state={state}")).await;
    assert_eq!(
        param(&back, "error_code").as_deref(),
        Some("provider_email_needs_verification"),
        "{back}"
    );
    let victim = auth
        .sql("select count(*) from auth.identities i join auth.users u on u.id = i.user_id where u.email = 'victim@example.com'")
        .await;
    assert_eq!(victim[0].get::<_, i64>(0), 1, "only the email identity");
}

async fn apple_setup() -> (Auth, Fake) {
    let (apple_key, apple_public) = p256_key();
    let mut public = apple_public;
    public["kid"] = json!(APPLE_KEY_ID);
    let apple = fake(Some(public)).await;
    let url = apple.url.clone();
    let private_key = pem(&apple_key);
    let auth = Auth::with(config(move |c| {
        c.auth.external.apple = AppleOption {
            enabled: true,
            client_id: format!("{SERVICES_ID}, com.example.ios"),
            team_id: APPLE_TEAM.to_owned(),
            key_id: APPLE_KEY_ID.to_owned(),
            private_key,
            url,
            skip_nonce_check: false,
        };
    }))
    .await;
    (auth, apple)
}

#[tokio::test]
async fn apple_answers_with_form_post_and_a_signed_client_secret() {
    let (auth, apple) = apple_setup().await;
    let settings = auth.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["external"]["apple"], true);
    let to_apple = authorize(&auth, "apple").await;
    assert!(
        to_apple.starts_with(&format!("{}/auth/authorize?", apple.url)),
        "{to_apple}"
    );
    assert_eq!(param(&to_apple, "response_mode").unwrap(), "form_post");
    assert_eq!(param(&to_apple, "scope").unwrap(), "name email");
    assert_eq!(param(&to_apple, "client_id").unwrap(), SERVICES_ID);
    assert!(param(&to_apple, "code_challenge").is_none());
    let now = TestApp::now();
    apple.next_id_token(
        &json!({"iss": apple.url, "aud": SERVICES_ID, "sub": "001234.apple",
        "iat": now, "exp": now + 300, "email": "ada@privaterelay.appleid.com",
        "email_verified": "true", "is_private_email": "true",
        "nonce": param(&to_apple, "nonce").unwrap()}),
    );
    let state = param(&to_apple, "state").unwrap();
    // First sign-in: Apple posts the name as `user` JSON.
    let user_json = sovra_auth::crypto::percent_encode(
        r#"{"name":{"firstName":"Ada","lastName":"Lovelace"},"email":"ada@privaterelay.appleid.com"}"#,
    );
    let back = form_post(
        &auth,
        &format!("state={state}&code=good-code&user={user_json}"),
    )
    .await;
    let user = user_of(&auth, &back).await;
    assert_eq!(apple.state.lock().unwrap().apple_secret_ok, Some(true));
    let sent = apple.form();
    assert_eq!(sent["client_id"], SERVICES_ID);
    assert!(apple.state.lock().unwrap().authorization.is_empty());
    assert_eq!(user["email"], "ada@privaterelay.appleid.com");
    assert!(user["email_confirmed_at"].is_string());
    assert_eq!(user["user_metadata"]["full_name"], "Ada Lovelace");
    assert_eq!(user["app_metadata"]["provider"], "apple");

    // Later sign-ins carry no `user`: the same account, its name kept.
    let to_apple = authorize(&auth, "apple").await;
    apple.next_id_token(
        &json!({"iss": apple.url, "aud": SERVICES_ID, "sub": "001234.apple",
        "iat": now, "exp": now + 300, "email": "ada@privaterelay.appleid.com",
        "email_verified": "true", "nonce": param(&to_apple, "nonce").unwrap()}),
    );
    let state = param(&to_apple, "state").unwrap();
    let again = user_of(
        &auth,
        &form_post(&auth, &format!("state={state}&code=good-code")).await,
    )
    .await;
    assert_eq!(again["id"], user["id"]);
    assert_eq!(again["user_metadata"]["full_name"], "Ada Lovelace");

    // form_post without a state, or with a forged one.
    let back = form_post(&auth, "code=good-code").await;
    assert_eq!(param(&back, "error_code").unwrap(), "bad_oauth_state");
    // An ID token for another nonce, or signed by someone else.
    let to_apple = authorize(&auth, "apple").await;
    apple.next_id_token(
        &json!({"iss": apple.url, "aud": SERVICES_ID, "sub": "other.apple",
        "iat": now, "exp": now + 300, "email": "grace@example.com", "email_verified": "true",
        "nonce": nonce_hash("someone else's")}),
    );
    let state = param(&to_apple, "state").unwrap();
    let back = form_post(&auth, &format!("state={state}&code=good-code")).await;
    assert!(param(&back, "error").is_some(), "{back}");
    assert!(param(&back, "access_token").is_none(), "{back}");
    let to_apple = authorize(&auth, "apple").await;
    let (stranger, _) = p256_key();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".to_owned());
    apple.state.lock().unwrap().id_token = jsonwebtoken::encode(
        &header,
        &json!({"iss": apple.url, "aud": SERVICES_ID, "sub": "other.apple", "iat": now,
                "exp": now + 300, "nonce": param(&to_apple, "nonce").unwrap()}),
        &signer_of(&stranger),
    )
    .unwrap();
    let state = param(&to_apple, "state").unwrap();
    let back = form_post(&auth, &format!("state={state}&code=good-code")).await;
    assert_eq!(
        param(&back, "error_description").as_deref(),
        Some("Bad ID token"),
        "{back}"
    );
    assert_eq!(user_count(&auth).await, 1);
}

#[tokio::test]
async fn apple_native_id_tokens_are_verified_against_its_keys() {
    let (auth, apple) = apple_setup().await;
    let now = TestApp::now();
    let good = json!({"iss": apple.url, "aud": "com.example.ios", "sub": "native.apple",
        "iat": now, "exp": now + 300, "email": "native@example.com", "email_verified": "true",
        "nonce": nonce_hash("raw")});
    let grant = |token: String| {
        let auth = &auth;
        async move {
            auth.post(
                "/token?grant_type=id_token",
                json!({"provider": "apple", "id_token": token, "nonce": "raw"}),
            )
            .await
        }
    };
    let signed_in = grant(apple.sign(&good)).await;
    assert_eq!(signed_in.status, StatusCode::OK, "{:?}", signed_in.body);
    assert_eq!(signed_in.body["user"]["email"], "native@example.com");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://appleid.apple.com.evil.example");
    let refused = grant(apple.sign(&wrong_iss)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error_description"], "Bad ID token");
    let mut wrong_aud = good;
    wrong_aud["aud"] = json!("com.other.app");
    let refused = grant(apple.sign(&wrong_aud)).await;
    assert_eq!(
        refused.body["error_description"],
        "Unacceptable audience in id_token"
    );
}

async fn azure_setup(tenant: &'static str, manual_linking: bool) -> (Auth, Fake) {
    let azure = fake(None).await;
    let url = format!("{}/{tenant}/v2.0", azure.url);
    let auth = Auth::with(config(move |c| {
        c.auth.manual_linking_enabled = manual_linking;
        c.auth.external.azure = ExternalProvider {
            enabled: true,
            client_id: "az-app".to_owned(),
            url,
            skip_nonce_check: false,
            secret: "az-secret".to_owned(),
        };
    }))
    .await;
    (auth, azure)
}

fn azure_claims(
    azure: &Fake,
    iss_tenant: &str,
    tid: Option<&str>,
    sub: &str,
    email: &str,
) -> Value {
    let now = TestApp::now();
    let mut c = json!({"iss": format!("{}/{iss_tenant}/v2.0", azure.url), "aud": "az-app",
        "sub": sub, "oid": format!("oid-{sub}"), "iat": now, "exp": now + 300,
        "email": email, "name": "Azure User", "nonce": nonce_hash("raw")});
    if let Some(tid) = tid {
        c["tid"] = json!(tid);
    }
    c
}

async fn azure_grant(auth: &Auth, azure: &Fake, claims: &Value) -> support::auth_client::Reply {
    auth.post(
        "/token?grant_type=id_token",
        json!({"provider": "azure", "id_token": azure.sign(claims), "nonce": "raw"}),
    )
    .await
}

#[tokio::test]
async fn azure_multi_tenant_checks_the_issuer_against_the_tokens_tid() {
    let (auth, azure) = azure_setup("common", false).await;
    let settings = auth.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["external"]["azure"], true);
    // Users of two tenants sign in, each with its tenant's issuer.
    for (tenant, sub) in [(TENANT_A, "a-1"), (TENANT_B, "b-1")] {
        let claims = azure_claims(
            &azure,
            tenant,
            Some(tenant),
            sub,
            &format!("{sub}@example.com"),
        );
        let reply = azure_grant(&auth, &azure, &claims).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let identity = &reply.body["user"]["identities"][0]["identity_data"];
        assert_eq!(identity["tid"], tenant);
        assert_eq!(identity["iss"], format!("{}/{tenant}/v2.0", azure.url));
    }
    // A token whose issuer names another tenant than its tid, or no tid,
    // or the template itself.
    for claims in [
        azure_claims(&azure, TENANT_A, Some(TENANT_B), "x", "x@example.com"),
        azure_claims(&azure, TENANT_A, None, "x", "x@example.com"),
        azure_claims(
            &azure,
            "{tenantid}",
            Some("{tenantid}"),
            "x",
            "x@example.com",
        ),
        azure_claims(&azure, "common", Some("common/../x"), "x", "x@example.com"),
    ] {
        let reply = azure_grant(&auth, &azure, &claims).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{claims}");
        assert_eq!(reply.body["error_description"], "Bad ID token", "{claims}");
    }
    // xms_edov false: the email is not verified, so an existing account is
    // not linked.
    auth.user("victim@example.com", "password1").await;
    let mut unverified = azure_claims(
        &azure,
        TENANT_B,
        Some(TENANT_B),
        "b-2",
        "victim@example.com",
    );
    unverified["xms_edov"] = json!(false);
    let reply = azure_grant(&auth, &azure, &unverified).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.code(), "provider_email_needs_verification");
    // xms_edov "1": verified, linked.
    unverified["xms_edov"] = json!("1");
    let reply = azure_grant(&auth, &azure, &unverified).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["user"]["email"], "victim@example.com");
    assert_eq!(user_count(&auth).await, 3);

    // The redirect flow: discovery, PKCE, client_secret_basic.
    let to_azure = authorize(&auth, "azure").await;
    assert!(
        to_azure.starts_with(&format!("{}/authorize?", azure.url)),
        "{to_azure}"
    );
    assert_eq!(param(&to_azure, "client_id").unwrap(), "az-app");
    let mut claims = azure_claims(&azure, TENANT_A, Some(TENANT_A), "a-1", "a-1@example.com");
    claims["nonce"] = json!(param(&to_azure, "nonce").unwrap());
    azure.next_id_token(&claims);
    let state = param(&to_azure, "state").unwrap();
    let back = callback(&auth, &format!("code=good-code&state={state}")).await;
    let user = user_of(&auth, &back).await;
    assert_eq!(user["email"], "a-1@example.com");
    let basic = azure.state.lock().unwrap().authorization.clone();
    let expected = base64::engine::general_purpose::STANDARD.encode("az-app:az-secret");
    assert_eq!(basic, format!("Basic {expected}"));
    assert!(!azure.form()["code_verifier"].is_empty());
}

#[tokio::test]
async fn azure_single_tenant_takes_only_its_own_issuer() {
    let (auth, azure) = azure_setup(TENANT_A, false).await;
    let own = azure_claims(&azure, TENANT_A, Some(TENANT_A), "a-1", "a-1@example.com");
    let reply = azure_grant(&auth, &azure, &own).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let other = azure_claims(&azure, TENANT_B, Some(TENANT_B), "b-1", "b-1@example.com");
    let reply = azure_grant(&auth, &azure, &other).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error_description"], "Bad ID token");
}

/// auth-js 2.119.2 `linkIdentity({provider, token, nonce})`: `POST
/// /token?grant_type=id_token` with the session's access token and
/// `link_identity: true`.
async fn link_with_token(
    auth: &Auth,
    access: Option<&str>,
    id_token: &str,
) -> support::auth_client::Reply {
    auth.call(
        Method::POST,
        "/token?grant_type=id_token",
        access,
        Some(
            json!({"provider": "azure", "id_token": id_token, "nonce": "raw",
                    "link_identity": true, "gotrue_meta_security": {}}),
        ),
    )
    .await
}

#[tokio::test]
async fn link_identity_with_an_id_token() {
    let (auth, azure) = azure_setup("common", true).await;
    let ada = auth.user_id("ada@example.com", "password1").await;
    let access = auth.access_token("ada@example.com", "password1").await;
    // Another email than Ada's: manual linking does not need it to match.
    let token = azure.sign(&azure_claims(
        &azure,
        TENANT_A,
        Some(TENANT_A),
        "ada-ms",
        "ada@work.example.com",
    ));
    let linked = link_with_token(&auth, Some(&access), &token).await;
    assert_eq!(linked.status, StatusCode::OK, "{:?}", linked.body);
    assert_eq!(linked.body["user"]["id"], ada.as_str());
    assert_eq!(
        claims(linked.body["access_token"].as_str().unwrap())["sub"],
        ada.as_str()
    );
    let mut names = providers(&linked.body["user"]);
    names.sort();
    assert_eq!(names, ["azure", "email"]);
    assert_eq!(linked.body["user"]["email"], "ada@example.com");
    // Linking it again is harmless.
    let again = link_with_token(&auth, Some(&access), &token).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);

    // The identity is Ada's: Eve cannot take it.
    auth.user("eve@example.com", "password1").await;
    let eve = auth.access_token("eve@example.com", "password1").await;
    let refused = link_with_token(&auth, Some(&eve), &token).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.code(), "identity_already_exists");
    // Without a session, and with a bad token.
    let anonymous = link_with_token(&auth, None, &token).await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        anonymous.body
    );
    let forged = link_with_token(&auth, Some(&eve), "not.a.token").await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        auth.sql("select count(*) from auth.identities where provider = 'azure'")
            .await[0]
            .get::<_, i64>(0),
        1
    );
}

#[tokio::test]
async fn link_identity_with_an_id_token_needs_manual_linking() {
    let (auth, azure) = azure_setup("common", false).await;
    let access = auth.access_token_of("off@example.com").await;
    let token = azure.sign(&azure_claims(
        &azure,
        TENANT_A,
        Some(TENANT_A),
        "off-ms",
        "off@example.com",
    ));
    let refused = link_with_token(&auth, Some(&access), &token).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{:?}", refused.body);
    assert_eq!(refused.code(), "manual_linking_disabled");
    assert_eq!(
        auth.sql("select count(*) from auth.identities where provider = 'azure'")
            .await[0]
            .get::<_, i64>(0),
        0
    );
}

trait NewUser {
    async fn access_token_of(&self, email: &str) -> String;
}

impl NewUser for Auth {
    async fn access_token_of(&self, email: &str) -> String {
        self.user(email, "password1").await;
        self.access_token(email, "password1").await
    }
}
