//! `POST /auth/v1/token?grant_type=id_token` (auth-js `signInWithIdToken`)
//! against an OpenID Connect issuer served in the test: its discovery
//! document and JWKS over HTTP, ID tokens signed with its P-256 key. The
//! user is made, found again, or linked by verified email as GoTrue does;
//! every refusal is GoTrue's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePrivateKey as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use sovra_config::ExternalProvider;
use sovra_test_support::TestApp;
use support::auth_client::{Auth, claims, config, token};

/// An issuer, serving its discovery document and its keys (JWKS).
struct Issuer {
    url: String,
}

struct Key {
    kid: String,
    signer: EncodingKey,
    public: Value,
}

fn new_key(kid: &str) -> Key {
    let signing = SigningKey::random(&mut rand::rngs::OsRng);
    let point = signing.verifying_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Key {
        kid: kid.to_owned(),
        signer: EncodingKey::from_ec_der(signing.to_pkcs8_der().unwrap().as_bytes()),
        public: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                       "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
    }
}

async fn issuer(keys: Vec<Value>) -> Issuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keys = Arc::new(Mutex::new(keys));
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get({
                let url = url.clone();
                move || async move {
                    axum::Json(json!({"issuer": url, "jwks_uri": format!("{url}/jwks"),
                        "authorization_endpoint": format!("{url}/auth"),
                        "token_endpoint": format!("{url}/token"),
                        "id_token_signing_alg_values_supported": ["ES256"]}))
                }
            }),
        )
        .route(
            "/jwks",
            axum::routing::get({
                let keys = keys.clone();
                move || {
                    let keys = keys.lock().unwrap().clone();
                    async move { axum::Json(json!({"keys": keys})) }
                }
            }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Issuer { url }
}

fn id_token(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.signer).unwrap()
}

fn nonce_hash(nonce: &str) -> String {
    Sha256::digest(nonce.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn setup() -> (Auth, Issuer, Key) {
    let key = new_key("k1");
    let issuer = issuer(vec![key.public.clone()]).await;
    let url = issuer.url.clone();
    let auth = Auth::with(config(move |c| {
        c.auth.external.keycloak = ExternalProvider {
            enabled: true,
            client_id: "web-app, ios-app".to_owned(),
            url,
            skip_nonce_check: false,
            secret: "test-client-secret".to_owned(),
        };
    }))
    .await;
    (auth, issuer, key)
}

fn standard(issuer: &Issuer, sub: &str, email: &str, verified: bool) -> Value {
    let now = TestApp::now();
    json!({"iss": issuer.url, "sub": sub, "aud": "ios-app", "iat": now, "exp": now + 300,
           "email": email, "email_verified": verified, "name": "Ada Lovelace",
           "picture": "https://example.com/ada.png", "nonce": nonce_hash("raw-nonce")})
}

async fn grant(auth: &Auth, body: Value) -> support::auth_client::Reply {
    auth.post("/token?grant_type=id_token", body).await
}

#[tokio::test]
async fn id_token_sign_in_makes_finds_and_links_users() {
    let (auth, issuer, key) = setup().await;
    let settings = auth.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["external"]["keycloak"], true);
    assert_eq!(settings.body["external"]["github"], false);

    let token_a = id_token(&key, &standard(&issuer, "kc-1", "Ada@Example.com", true));
    let first = grant(
        &auth,
        json!({"provider": "keycloak", "id_token": token_a, "nonce": "raw-nonce"}),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let user = &first.body["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert!(user["email_confirmed_at"].is_string());
    assert_eq!(user["app_metadata"]["provider"], "keycloak");
    assert_eq!(user["user_metadata"]["full_name"], "Ada Lovelace");
    assert_eq!(
        user["user_metadata"]["avatar_url"],
        "https://example.com/ada.png"
    );
    assert_eq!(user["identities"].as_array().unwrap().len(), 1);
    assert_eq!(user["identities"][0]["provider"], "keycloak");
    assert_eq!(user["identities"][0]["identity_data"]["sub"], "kc-1");
    let c = claims(&token(&first.body, "access_token"));
    assert_eq!(c["amr"][0]["method"], "oauth");
    assert_eq!(c["app_metadata"]["provider"], "keycloak");

    // The same identity again: the same user.
    let again = grant(
        &auth,
        json!({"provider": "keycloak", "id_token": token_a, "nonce": "raw-nonce"}),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["user"]["id"], user["id"]);

    // A password user with the same verified email gets the identity linked.
    let bob = auth.user("bob@example.com", "password1").await;
    let token_b = id_token(&key, &standard(&issuer, "kc-2", "bob@example.com", true));
    let linked = grant(
        &auth,
        json!({"provider": "keycloak", "id_token": token_b, "nonce": "raw-nonce"}),
    )
    .await;
    assert_eq!(linked.status, StatusCode::OK, "{:?}", linked.body);
    assert_eq!(linked.body["user"]["id"], bob["id"]);
    let providers: Vec<&str> = linked.body["user"]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provider"].as_str().unwrap())
        .collect();
    assert!(
        providers.contains(&"email") && providers.contains(&"keycloak"),
        "{providers:?}"
    );
    let app_providers = linked.body["user"]["app_metadata"]["providers"].clone();
    assert!(
        app_providers
            .as_array()
            .unwrap()
            .contains(&json!("keycloak")),
        "{app_providers}"
    );
    // Bob still signs in with his password.
    auth.session("bob@example.com", "password1").await;

    // An unverified email is never linked, and makes no user without
    // autoconfirm.
    let token_c = id_token(&key, &standard(&issuer, "kc-3", "carol@example.com", false));
    let unverified = grant(
        &auth,
        json!({"provider": "keycloak", "id_token": token_c, "nonce": "raw-nonce"}),
    )
    .await;
    assert_eq!(unverified.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unverified.code(), "provider_email_needs_verification");
    let taken = id_token(&key, &standard(&issuer, "kc-4", "bob@example.com", false));
    let refused = grant(
        &auth,
        json!({"provider": "keycloak", "id_token": taken, "nonce": "raw-nonce"}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let identities = auth
        .sql("select count(*) from auth.identities where provider = 'keycloak'")
        .await;
    assert_eq!(identities[0].get::<_, i64>(0), 2);
}

#[tokio::test]
async fn id_token_refusals_are_gotrues() {
    let (auth, issuer, key) = setup().await;
    let refuse = |body: Value, error: &'static str, description: &'static str| {
        let auth = &auth;
        async move {
            let reply = grant(auth, body.clone()).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{body}: {:?}",
                reply.body
            );
            assert_eq!(reply.body["error"], error, "{body}: {:?}", reply.body);
            assert_eq!(reply.body["error_description"], description, "{body}");
        }
    };
    let good = standard(&issuer, "kc-1", "ada@example.com", true);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        edit(&mut c);
        id_token(&key, &c)
    };
    refuse(
        json!({"provider": "keycloak", "id_token": with(&|c| c["aud"] = json!("someone-else")), "nonce": "raw-nonce"}),
        "invalid request",
        "Unacceptable audience in id_token",
    )
    .await;
    refuse(
        json!({"provider": "keycloak", "id_token": with(&|_| {}), "nonce": "other-nonce"}),
        "invalid nonce",
        "Nonces mismatch",
    )
    .await;
    refuse(
        json!({"provider": "keycloak", "id_token": with(&|_| {})}),
        "invalid request",
        "Passed nonce and nonce in id_token should either both exist or not.",
    )
    .await;
    refuse(
        json!({"provider": "keycloak", "id_token": with(&|c| c["exp"] = json!(TestApp::now() - 600)), "nonce": "raw-nonce"}),
        "invalid request",
        "Bad ID token",
    )
    .await;
    refuse(
        json!({"provider": "keycloak", "id_token": with(&|c| c["iss"] = json!("https://elsewhere.example.com")), "nonce": "raw-nonce"}),
        "invalid request",
        "Bad ID token",
    )
    .await;
    // Signed by a key the issuer does not publish (same kid, and unknown kid).
    let stranger = new_key("k1");
    refuse(
        json!({"provider": "keycloak", "id_token": id_token(&stranger, &good), "nonce": "raw-nonce"}),
        "invalid request",
        "Bad ID token",
    )
    .await;
    let unknown = new_key("k9");
    refuse(
        json!({"provider": "keycloak", "id_token": id_token(&unknown, &good), "nonce": "raw-nonce"}),
        "invalid request",
        "Bad ID token",
    )
    .await;
    refuse(
        json!({"provider": "keycloak", "id_token": "garbage", "nonce": "raw-nonce"}),
        "invalid request",
        "Bad ID token",
    )
    .await;
    refuse(
        json!({"provider": "keycloak", "id_token": with(&|c| c["sub"] = json!("")), "nonce": "raw-nonce"}),
        "invalid request",
        "Missing sub claim in id_token",
    )
    .await;
    // GoTrue's checks before any provider, and a provider not configured.
    refuse(
        json!({"provider": "keycloak"}),
        "invalid request",
        "id_token required",
    )
    .await;
    let google = grant(
        &auth,
        json!({"provider": "google", "id_token": with(&|_| {}), "nonce": "raw-nonce"}),
    )
    .await;
    assert_eq!(google.status, StatusCode::BAD_REQUEST);
    assert_eq!(google.code(), "provider_disabled");
    assert_eq!(
        auth.sql("select count(*) from auth.users").await[0].get::<_, i64>(0),
        0,
        "no refusal made a user"
    );
}

/// A query or fragment parameter of `url`.
fn param(url: &str, name: &str) -> Option<String> {
    let tail = url.split_once(['?', '#'])?.1;
    tail.split(['&', '#']).find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            let mut out = Vec::new();
            let bytes = v.replace('+', " ").into_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        })
    })
}

async fn location(auth: &Auth, url: &str) -> String {
    let response = auth.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND, "{url}");
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn redirect_flow_state_is_signed_single_use_and_expiring() {
    let (auth, issuer, _key) = setup().await;
    let base = format!("{}/auth/v1", auth.app.url);
    // Browsers open /authorize without the API key.
    let unknown = auth
        .http
        .get(format!("{base}/authorize?provider=github"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(
        body["msg"],
        "Unsupported provider: Provider github could not be found"
    );

    let start = |redirect_to: &str, pkce: bool| {
        let mut url = format!(
            "{base}/authorize?provider=keycloak&redirect_to={}&scopes=offline_access",
            sovra_auth::crypto::percent_encode(redirect_to)
        );
        if pkce {
            url.push_str("&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=s256");
        }
        let auth = &auth;
        async move { location(auth, &url).await }
    };
    let to_provider = start("https://evil.example.com/steal", true).await;
    assert!(
        to_provider.starts_with(&format!("{}/auth?", issuer.url)),
        "{to_provider}"
    );
    assert_eq!(param(&to_provider, "client_id").unwrap(), "web-app");
    assert_eq!(param(&to_provider, "response_type").unwrap(), "code");
    assert_eq!(
        param(&to_provider, "code_challenge_method").unwrap(),
        "S256"
    );
    assert_eq!(
        param(&to_provider, "redirect_uri").unwrap(),
        format!("{base}/callback")
    );
    assert!(
        param(&to_provider, "scope")
            .unwrap()
            .contains("offline_access")
    );
    assert_eq!(param(&to_provider, "nonce").unwrap().len(), 64);
    // A redirect_to outside the allow-list falls back to the site URL.
    let stored = auth.sql("select redirect_to from sovra.oauth_flows").await;
    assert_eq!(stored[0].get::<_, String>(0), auth.app.url);
    let state = param(&to_provider, "state").unwrap();

    // A state Sovra did not sign.
    let (id, _) = state.split_once('.').unwrap();
    let forged = format!("{id}.AAAA");
    let back = location(&auth, &format!("{base}/callback?code=x&state={forged}")).await;
    assert!(back.starts_with(&auth.app.url), "{back}");
    assert_eq!(param(&back, "error_code").unwrap(), "bad_oauth_state");
    // The provider's refusal goes back to the app, and uses the flow up.
    let back = location(
        &auth,
        &format!(
            "{base}/callback?error=access_denied&error_description=User+said+no&state={state}"
        ),
    )
    .await;
    assert_eq!(param(&back, "error_code").unwrap(), "bad_oauth_callback");
    assert_eq!(param(&back, "error_description").unwrap(), "User said no");
    let again = location(&auth, &format!("{base}/callback?code=x&state={state}")).await;
    assert_eq!(param(&again, "error_code").unwrap(), "bad_oauth_state");
    assert!(
        param(&again, "error_description")
            .unwrap()
            .contains("already used"),
        "{again}"
    );

    // An expired flow.
    let to_provider = start(&auth.app.url.clone(), false).await;
    let state = param(&to_provider, "state").unwrap();
    auth.sql("update sovra.oauth_flows set created_at = now() - interval '10 minutes'")
        .await;
    let back = location(&auth, &format!("{base}/callback?code=x&state={state}")).await;
    assert_eq!(param(&back, "error_code").unwrap(), "flow_state_expired");
    // Implicit flow errors travel in the fragment.
    assert!(back.contains('#'), "{back}");

    // A code the provider does not take (this issuer has no token
    // endpoint): the exchange fails, back to the app, nothing made.
    let to_provider = start(&auth.app.url.clone(), true).await;
    let state = param(&to_provider, "state").unwrap();
    let back = location(
        &auth,
        &format!("{base}/callback?code=made-up&state={state}"),
    )
    .await;
    assert_eq!(
        param(&back, "error_code").unwrap(),
        "bad_oauth_callback",
        "{back}"
    );
    assert_eq!(
        auth.sql("select count(*) from auth.users").await[0].get::<_, i64>(0),
        0
    );
    // POST (form_post) reaches the same callback.
    let posted = auth
        .http
        .post(format!("{base}/callback"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("state={forged}&code=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::FOUND);
    let back = posted.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(param(&back, "error_code").unwrap(), "bad_oauth_state");
}

#[tokio::test]
async fn github_sign_in_starts_at_the_configured_github() {
    let auth = Auth::with(config(|c| {
        c.auth.external.github = sovra_config::GithubOption {
            enabled: true,
            client_id: "Iv1.test".to_owned(),
            secret: "github-secret".to_owned(),
            url: "https://github.example.com".to_owned(),
            api_url: "https://github.example.com/api/v3".to_owned(),
        };
    }))
    .await;
    let settings = auth.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["external"]["github"], true);
    assert_eq!(settings.body["external"]["keycloak"], false);
    let base = format!("{}/auth/v1", auth.app.url);
    let to_github = location(
        &auth,
        &format!("{base}/authorize?provider=github&scopes=read:org"),
    )
    .await;
    assert!(
        to_github.starts_with("https://github.example.com/login/oauth/authorize?"),
        "{to_github}"
    );
    assert_eq!(param(&to_github, "client_id").unwrap(), "Iv1.test");
    assert_eq!(param(&to_github, "scope").unwrap(), "user:email read:org");
    assert!(!to_github.contains("github-secret"));
    let state = param(&to_github, "state").unwrap();
    // GitHub's refusal comes back to the app with the flow used up.
    let back = location(
        &auth,
        &format!("{base}/callback?error=access_denied&state={state}"),
    )
    .await;
    assert_eq!(param(&back, "error_code").unwrap(), "bad_oauth_callback");
    // Google is not configured here.
    let google = auth
        .http
        .get(format!("{base}/authorize?provider=google"))
        .send()
        .await
        .unwrap();
    assert_eq!(google.status(), StatusCode::BAD_REQUEST);
}
