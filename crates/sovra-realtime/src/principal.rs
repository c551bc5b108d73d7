//! Who a subscriber is: the role and claims of a verified token.

use std::sync::Arc;

use serde_json::{Map, Value};

/// A verified caller: role and claims of its token.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub role: String,
    pub claims: Map<String, Value>,
}

impl Principal {
    pub(crate) fn is_service(&self) -> bool {
        self.role == "service_role"
    }

    /// The token's expiry (seconds since the epoch), if it has one.
    pub fn exp(&self) -> Option<i64> {
        self.claims.get("exp").and_then(Value::as_i64)
    }

    /// A stable key for grouping subscribers with the same rights.
    pub(crate) fn rights_key(&self) -> String {
        format!("{}\u{0}{}", self.role, Value::Object(self.claims.clone()))
    }
}

/// Verifies a token (the tenant's keys live in the server crate).
pub type Verifier = Arc<dyn Fn(&str) -> Result<Principal, String> + Send + Sync>;
