//! The ES256 key ID tokens are signed with.
//!
//! Each tenant has its own, made on first use and kept in its database
//! (`sovra.oauth_signing_keys`): the private JWK sealed under Auth's
//! service key (AES-256-GCM, the row's `kid` as associated data), the
//! public JWK in the clear. Every instance of a tenant shares it through
//! the database; its public half is published in the tenant's JWK set
//! (`/auth/v1/.well-known/jwks.json`) beside the project's own keys. A key
//! that this instance cannot open (the service key changed) is replaced by
//! a new one; the old public key stays published so that tokens it signed
//! still verify until they expire.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::AuthService;
use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};

/// The loaded keys: the one that signs and every published public key.
pub struct Loaded {
    kid: String,
    key: EncodingKey,
    public: Vec<Value>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Loaded")
            .field("kid", &self.kid)
            .field("published", &self.public.len())
            .finish()
    }
}

/// The keys, loaded once per service.
#[derive(Debug, Default)]
pub struct KeyCache {
    loaded: tokio::sync::Mutex<Option<Arc<Loaded>>>,
}

/// A new P-256 key: its private JWK (with `d`) and its public JWK.
pub fn generate(kid: &str) -> (Value, Value) {
    let secret = loop {
        // A uniformly random scalar; the rare out-of-range value is drawn
        // again.
        if let Ok(secret) = p256::SecretKey::from_slice(&crate::crypto::random_bytes(32)) {
            break secret;
        }
    };
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let coordinate =
        |c: Option<&p256::FieldBytes>| c.map_or_else(String::new, |c| URL_SAFE_NO_PAD.encode(c));
    let public = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": coordinate(point.x()),
        "y": coordinate(point.y()),
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
        "key_ops": ["verify"],
    });
    let mut private = public.clone();
    if let Value::Object(map) = &mut private {
        map.insert(
            "d".to_owned(),
            Value::String(URL_SAFE_NO_PAD.encode(secret.to_bytes())),
        );
        map.remove("key_ops");
    }
    (private, public)
}

/// The signing key of a private JWK made by [`generate`].
fn encoding_key(private: &Value) -> Option<EncodingKey> {
    let d = URL_SAFE_NO_PAD.decode(private.get("d")?.as_str()?).ok()?;
    let secret = p256::SecretKey::from_slice(&d).ok()?;
    use p256::pkcs8::EncodePrivateKey as _;
    let der = secret.to_pkcs8_der().ok()?;
    Some(EncodingKey::from_ec_der(der.as_bytes()))
}

impl AuthService {
    /// The public JWKs of this tenant's ID-token keys (for the JWK set);
    /// empty when the database cannot be reached.
    pub async fn oauth_public_jwks(&self) -> Vec<Value> {
        match self.id_token_keys().await {
            Ok(loaded) => loaded.public.clone(),
            Err(_) => Vec::new(),
        }
    }

    async fn id_token_keys(&self) -> AuthResult<Arc<Loaded>> {
        let mut slot = self.id_keys.loaded.lock().await;
        if let Some(loaded) = slot.as_ref() {
            return Ok(loaded.clone());
        }
        let loaded = Arc::new(self.load_id_token_keys().await?);
        *slot = Some(loaded.clone());
        Ok(loaded)
    }

    async fn load_id_token_keys(&self) -> AuthResult<Loaded> {
        let db = self.pool.get().await?;
        for _ in 0..3 {
            let rows = db
                .c_query(
                    "select kid, sealed_jwk, public_jwk, active from sovra.oauth_signing_keys
                      order by created_at desc, kid",
                    &[],
                )
                .await?;
            let public: Vec<Value> = rows.iter().map(|r| r.get::<_, Value>(2)).collect();
            let active = rows.iter().find(|r| r.get::<_, bool>(3)).and_then(|row| {
                let kid: String = row.get(0);
                let sealed: String = row.get(1);
                let plain = self.key.open(&sealed, kid.as_bytes())?;
                let private: Value = serde_json::from_slice(&plain).ok()?;
                Some(Loaded {
                    key: encoding_key(&private)?,
                    kid,
                    public: public.clone(),
                })
            });
            if let Some(loaded) = active {
                return Ok(loaded);
            }
            // None yet, or one this instance cannot open: make a new one.
            // The partial unique index lets one instance win a race; the
            // others read its key on the next round.
            let kid = hex_kid();
            let (private, public_jwk) = generate(&kid);
            let sealed = self
                .key
                .seal(private.to_string().as_bytes(), kid.as_bytes())
                .ok_or_else(AuthError::internal)?;
            let had_active = rows.iter().any(|r| r.get::<_, bool>(3));
            let mut db = self.pool.get().await?;
            let tx = db.transaction().await?;
            if had_active {
                tracing::warn!(
                    "the OAuth ID-token key cannot be opened with this service key: a new one signs from now on"
                );
                tx.c_execute(
                    "update sovra.oauth_signing_keys set active = false where active",
                    &[],
                )
                .await?;
            }
            tx.c_execute(
                "insert into sovra.oauth_signing_keys (kid, sealed_jwk, public_jwk, active)
                 values ($1, $2, $3, true) on conflict do nothing",
                &[&kid, &sealed, &public_jwk],
            )
            .await?;
            tx.commit().await?;
        }
        Err(AuthError::internal())
    }

    /// Signs an ID token with the tenant's ES256 key (`kid` in the header).
    pub(crate) async fn sign_id_token(&self, claims: &Map<String, Value>) -> AuthResult<String> {
        let keys = self.id_token_keys().await?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(keys.kid.clone());
        jsonwebtoken::encode(&header, claims, &keys.key).map_err(|err| {
            tracing::error!(error = %err, "signing an ID token failed");
            AuthError::internal()
        })
    }
}

fn hex_kid() -> String {
    crate::crypto::random_bytes(8)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_tokens_their_public_half_verifies() {
        let (private, public) = generate("k1");
        assert!(public.get("d").is_none());
        assert_eq!(public["kid"], "k1");
        let key = encoding_key(&private).expect("signing key");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".to_owned());
        let token = jsonwebtoken::encode(&header, &json!({"sub": "x"}), &key).expect("sign");
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(
            public["x"].as_str().unwrap_or_default(),
            public["y"].as_str().unwrap_or_default(),
        )
        .expect("public key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).expect("verify");
        assert_eq!(data.claims["sub"], "x");
        // Another key's public half refuses it.
        let (_, other) = generate("k2");
        let other = jsonwebtoken::DecodingKey::from_ec_components(
            other["x"].as_str().unwrap_or_default(),
            other["y"].as_str().unwrap_or_default(),
        )
        .expect("public key");
        assert!(jsonwebtoken::decode::<Value>(&token, &other, &validation).is_err());
    }
}
