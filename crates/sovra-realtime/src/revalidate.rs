//! Re-checking the credentials behind open sockets.
//!
//! A token is verified when a socket connects or a channel joins, but a
//! user who signs out, is banned or deleted, or an API key that is
//! revoked, must not keep receiving: every `realtime.revalidate_interval`
//! the service collects the credentials in use (the `session_id` claim of
//! a user's token, the `api_key_id` of a Sovra API key), asks the
//! [`Revalidator`] (the auth service, in the server crate) which of them
//! are no longer valid, in one call for all sockets, and closes every
//! socket that uses one, with a reason. Tokens without either claim (the
//! project's anon and service keys, tokens signed elsewhere) cannot be
//! revoked before they expire and are not re-checked.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::principal::Principal;

/// A credential that can be revoked before it expires.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Credential {
    /// The session behind a user's access token (`session_id` claim).
    Session(String),
    /// A Sovra API key (`api_key_id` claim).
    ApiKey(String),
}

impl Credential {
    /// The revocable credential behind a principal, if it has one.
    pub fn of(principal: &Principal) -> Option<Credential> {
        let claim = |name: &str| {
            principal
                .claims
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        claim("api_key_id")
            .map(Credential::ApiKey)
            .or_else(|| claim("session_id").map(Credential::Session))
    }

    /// The reason a socket using this credential is closed with.
    pub(crate) fn revoked_reason(&self) -> &'static str {
        match self {
            Credential::Session(_) => {
                "InvalidJWTToken: the session of this token has ended (signed out, banned or deleted)"
            }
            Credential::ApiKey(_) => "InvalidJWTToken: this API key has been revoked",
        }
    }
}

/// What [`Revalidator`] returns: the credentials that are no longer valid.
pub type RevalidateFuture =
    Pin<Box<dyn Future<Output = Result<HashSet<Credential>, String>> + Send>>;

/// Given the credentials in use, answers which are no longer valid.
pub type Revalidator = Arc<dyn Fn(Vec<Credential>) -> RevalidateFuture + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(claims: Value) -> Principal {
        Principal {
            role: "authenticated".to_owned(),
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn the_revocable_credential_of_a_principal() {
        assert_eq!(
            Credential::of(&principal(json!({"session_id": "s1", "sub": "u"}))),
            Some(Credential::Session("s1".to_owned()))
        );
        assert_eq!(
            Credential::of(&principal(json!({"api_key_id": "k1", "role": "x"}))),
            Some(Credential::ApiKey("k1".to_owned()))
        );
        assert_eq!(Credential::of(&principal(json!({"role": "anon"}))), None);
        assert_eq!(Credential::of(&principal(json!({"session_id": 5}))), None);
    }
}
