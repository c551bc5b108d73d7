//! Manual identity linking (`auth.manual_linking_enabled`, GoTrue's
//! `GOTRUE_SECURITY_MANUAL_LINKING_ENABLED`): auth-js `linkIdentity` and
//! `unlinkIdentity` through the router, against an OpenID Connect issuer
//! served in the test (discovery, JWKS, and a token endpoint answering the
//! code exchange with an ID token signed by its P-256 key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePrivateKey as _;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sovra_config::ExternalProvider;
use sovra_test_support::TestApp;
use support::auth_client::{Auth, claims, config};

/// The issuer: its URL and the ID token its token endpoint hands out next.
struct Issuer {
    url: String,
    next_id_token: Arc<Mutex<String>>,
    signer: EncodingKey,
}

async fn issuer() -> Issuer {
    let signing = SigningKey::random(&mut rand::rngs::OsRng);
    let point = signing.verifying_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let public = json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
                        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let next_id_token = Arc::new(Mutex::new(String::new()));
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
            axum::routing::get(move || {
                let public = public.clone();
                async move { axum::Json(json!({"keys": [public]})) }
            }),
        )
        .route(
            "/token",
            axum::routing::post({
                let next = next_id_token.clone();
                move || {
                    let id_token = next.lock().unwrap().clone();
                    async move {
                        axum::Json(
                            json!({"access_token": "provider-access", "token_type": "Bearer",
                                          "id_token": id_token}),
                        )
                    }
                }
            }),
        );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Issuer {
        url,
        next_id_token,
        signer: EncodingKey::from_ec_der(signing.to_pkcs8_der().unwrap().as_bytes()),
    }
}

async fn setup(manual_linking: bool) -> (Auth, Issuer) {
    let issuer = issuer().await;
    let url = issuer.url.clone();
    let auth = Auth::with(config(move |c| {
        c.auth.manual_linking_enabled = manual_linking;
        c.auth.external.keycloak = ExternalProvider {
            enabled: true,
            client_id: "web-app".to_owned(),
            url,
            skip_nonce_check: false,
            secret: "test-client-secret".to_owned(),
        };
    }))
    .await;
    (auth, issuer)
}

fn param(url: &str, name: &str) -> Option<String> {
    let tail = url.split_once(['?', '#'])?.1;
    tail.split(['&', '#']).find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| sovra_auth::crypto::percent_decode(&v.replace('+', " ")))
    })
}

/// Starts linking `sub` for the holder of `access` and follows the
/// provider's callback: where the browser is sent back to.
async fn link(auth: &Auth, issuer: &Issuer, access: &str, sub: &str) -> String {
    let started = auth
        .call(
            Method::GET,
            "/user/identities/authorize?provider=keycloak&skip_http_redirect=true",
            Some(access),
            None,
        )
        .await;
    assert_eq!(started.status, StatusCode::OK, "{:?}", started.body);
    let to_provider = started.body["url"].as_str().unwrap().to_owned();
    assert!(to_provider.starts_with(&format!("{}/auth?", issuer.url)));
    let now = TestApp::now();
    let claims = json!({"iss": issuer.url, "sub": sub, "aud": "web-app", "iat": now, "exp": now + 300,
                        "email": format!("{sub}@id.example.com"), "email_verified": true,
                        "name": "Linked Ada", "nonce": param(&to_provider, "nonce").unwrap()});
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".to_owned());
    *issuer.next_id_token.lock().unwrap() =
        jsonwebtoken::encode(&header, &claims, &issuer.signer).unwrap();
    let state = param(&to_provider, "state").unwrap();
    let response = auth
        .http
        .get(format!(
            "{}/auth/v1/callback?code=provider-code&state={state}",
            auth.app.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn link_and_unlink_identities() {
    let (auth, issuer) = setup(true).await;
    let ada = auth.user_id("ada@example.com", "password1").await;
    let access = auth.access_token("ada@example.com", "password1").await;

    let back = link(&auth, &issuer, &access, "kc-ada").await;
    let token = param(&back, "access_token").expect(&back);
    // The session that comes back is Ada's, not a new user's.
    assert_eq!(claims(&token)["sub"], ada.as_str());
    let me = auth.call(Method::GET, "/user", Some(&token), None).await;
    let providers: Vec<&str> = me.body["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers.len(), 2, "{:?}", me.body);
    assert!(providers.contains(&"email") && providers.contains(&"keycloak"));
    assert_eq!(
        me.body["app_metadata"]["providers"],
        json!(["email", "keycloak"])
    );
    assert_eq!(
        auth.sql("select count(*) from auth.users").await[0].get::<_, i64>(0),
        1
    );

    // Someone else cannot take Ada's identity.
    auth.user("eve@example.com", "password1").await;
    let eve = auth.access_token("eve@example.com", "password1").await;
    let refused = link(&auth, &issuer, &eve, "kc-ada").await;
    assert_eq!(
        param(&refused, "error_code").as_deref(),
        Some("identity_already_exists"),
        "{refused}"
    );

    // Unlink: not someone else's identity, not the last one.
    let keycloak = me.body["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["provider"] == "keycloak")
        .unwrap()["identity_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let email_identity = me.body["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["provider"] == "email")
        .unwrap()["identity_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = auth
        .call(
            Method::DELETE,
            &format!("/user/identities/{keycloak}"),
            Some(&eve),
            None,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.code(), "identity_not_found");
    let unlinked = auth
        .call(
            Method::DELETE,
            &format!("/user/identities/{keycloak}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(unlinked.status, StatusCode::OK, "{:?}", unlinked.body);
    let me = auth.call(Method::GET, "/user", Some(&token), None).await;
    assert_eq!(me.body["app_metadata"]["providers"], json!(["email"]));
    assert_eq!(me.body["app_metadata"]["provider"], "email");
    let last = auth
        .call(
            Method::DELETE,
            &format!("/user/identities/{email_identity}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(last.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(last.code(), "single_identity_not_deletable");
    let bad = auth
        .call(
            Method::DELETE,
            "/user/identities/not-a-uuid",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(bad.code(), "identity_not_found");
    // Linking needs a session.
    let anonymous = auth
        .call(
            Method::GET,
            "/user/identities/authorize?provider=keycloak",
            None,
            None,
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn linking_off_answers_gotrues_error() {
    let (auth, _issuer) = setup(false).await;
    let access = auth.access_token_of("off@example.com").await;
    for (method, path) in [
        (
            Method::GET,
            "/user/identities/authorize?provider=keycloak".to_owned(),
        ),
        (
            Method::DELETE,
            format!("/user/identities/{}", uuid::Uuid::new_v4()),
        ),
    ] {
        let reply = auth.call(method, &path, Some(&access), None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.code(), "manual_linking_disabled");
    }
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
