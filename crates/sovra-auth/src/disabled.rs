//! Features GoTrue has that Sovra does not offer yet (SAML SSO, manual
//! identity linking, Web3 and `id_token` sign-in), answered exactly as
//! GoTrue answers them when they are not configured, so that auth-js
//! callers get the error they would get from an unconfigured Supabase
//! project rather than a 404 of an unknown route.

use serde_json::Value;

use crate::error::{AuthError, AuthResult};
use crate::{AuthService, Ctx};

/// The issuer GoTrue names for an `id_token` provider it knows; `None` for
/// a provider it does not know. Azure's and Keycloak's come from the
/// request and the configuration, which Sovra does not have.
fn known_issuer(provider: &str, issuer: &str) -> Option<&'static str> {
    const KNOWN: [(&str, &str); 4] = [
        ("apple", "https://appleid.apple.com"),
        ("google", "https://accounts.google.com"),
        ("facebook", "https://www.facebook.com"),
        ("kakao", "https://kauth.kakao.com"),
    ];
    KNOWN
        .iter()
        .find(|(name, url)| *name == provider || *url == issuer)
        .map(|(_, url)| *url)
}

impl AuthService {
    /// `POST /sso`, `/sso/saml/*`: GoTrue with SAML off.
    pub(crate) fn sso_disabled(&self) -> AuthResult<axum::response::Response> {
        Err(AuthError::not_found(
            "saml_provider_disabled",
            "SAML 2.0 is disabled",
        ))
    }

    /// `GET /user/identities/authorize` and `DELETE /user/identities/{id}`:
    /// signed-in users only, then GoTrue's answer with manual linking off.
    pub(crate) async fn manual_linking_disabled(
        &self,
        ctx: &Ctx<'_>,
    ) -> AuthResult<axum::response::Response> {
        let client = self.pool.get().await?;
        self.current(ctx, &client).await?;
        Err(AuthError::not_found(
            "manual_linking_disabled",
            "Manual linking is disabled",
        ))
    }

    /// `POST /token?grant_type=web3`: no Web3 chain is enabled.
    pub(crate) fn web3_disabled(&self) -> AuthResult<axum::response::Response> {
        Err(AuthError::unprocessable(
            "web3_provider_disabled",
            "Web3 provider is disabled",
        ))
    }

    /// `POST /token?grant_type=id_token`: GoTrue's checks in its order;
    /// every provider is disabled.
    pub(crate) fn id_token_disabled(&self, ctx: &Ctx<'_>) -> AuthResult<axum::response::Response> {
        let body: Value = ctx.json()?;
        let text = |name: &str| {
            body.get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let (id_token, provider) = (text("id_token"), text("provider"));
        let (client_id, issuer) = (text("client_id"), text("issuer"));
        if id_token.is_empty() {
            return Err(AuthError::oauth("invalid request", "id_token required"));
        }
        if provider.is_empty() && (client_id.is_empty() || issuer.is_empty()) {
            return Err(AuthError::oauth(
                "invalid request",
                "provider or client_id and issuer required",
            ));
        }
        let issuer = match known_issuer(&provider, &issuer) {
            Some(known) => known.to_owned(),
            None if provider == "azure" && issuer.is_empty() => {
                return Err(AuthError::validation(
                    "Unable to detect issuer in ID token for Azure provider",
                ));
            }
            None if provider == "azure" => issuer,
            // Keycloak's issuer is its configured URL, and none is.
            None if provider == "keycloak" => String::new(),
            None => {
                return Err(AuthError::validation(format!(
                    "Custom OIDC provider {provider:?} not allowed"
                )));
            }
        };
        Err(AuthError::bad_request(
            "provider_disabled",
            format!("Provider (issuer {issuer:?}) is not enabled"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::known_issuer;

    #[test]
    fn issuers_by_provider_or_issuer() {
        assert_eq!(
            known_issuer("google", ""),
            Some("https://accounts.google.com")
        );
        assert_eq!(
            known_issuer("", "https://appleid.apple.com"),
            Some("https://appleid.apple.com")
        );
        assert_eq!(known_issuer("github", "https://example.com"), None);
    }
}
