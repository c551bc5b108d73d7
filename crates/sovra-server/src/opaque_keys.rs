//! Supabase's current API key format: opaque `sb_publishable_…` and
//! `sb_secret_…` keys (not JWTs) that stand for the anon and service_role
//! roles. Clients send them as `apikey`, and supabase-js forwards them as
//! `Authorization: Bearer` when no one is signed in; everywhere Sovra meets
//! one it stands in the project's own anon or service_role JWT for it, so
//! every service sees the role it always did.
//!
//! Only their SHA-256 digests are stored (in `keys.json`); the keys
//! themselves are shown once, by `sovra keys --rotate-opaque`, which makes
//! a new pair and drops the previous one. Presented keys are found by
//! comparing digests in constant time.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// The prefix of a publishable (anon) key.
pub const PUBLISHABLE_PREFIX: &str = "sb_publishable_";
/// The prefix of a secret (service_role) key.
pub const SECRET_PREFIX: &str = "sb_secret_";
/// Random characters after the prefix (base62, about 190 bits).
const RANDOM_CHARS: usize = 32;

/// One stored opaque key: its role and digest, never the key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpaqueKey {
    /// `anon` or `service_role`.
    pub role: String,
    /// SHA-256 of the key, hex.
    pub sha256: String,
    /// The key's first characters, to tell keys apart in listings.
    pub hint: String,
    pub created_at: i64,
}

/// A new pair as shown once to the operator, with what is stored of it.
#[derive(Clone, Debug)]
pub struct NewPair {
    pub publishable: String,
    pub secret: String,
    pub stored: Vec<OpaqueKey>,
}

/// Whether `value` has the shape of an opaque key (either prefix).
pub fn looks_opaque(value: &str) -> bool {
    value.starts_with(PUBLISHABLE_PREFIX) || value.starts_with(SECRET_PREFIX)
}

fn digest(key: &str) -> String {
    sovra_auth::crypto::sha256_hex(key)
}

fn random_key(prefix: &str) -> String {
    format!("{prefix}{}", sovra_auth::crypto::random_alnum(RANDOM_CHARS))
}

/// Makes a publishable and a secret key.
pub fn generate(now: i64) -> NewPair {
    let publishable = random_key(PUBLISHABLE_PREFIX);
    let secret = random_key(SECRET_PREFIX);
    let stored = [("anon", &publishable), ("service_role", &secret)]
        .into_iter()
        .map(|(role, key)| OpaqueKey {
            role: role.to_owned(),
            sha256: digest(key),
            hint: key.chars().take(key.len() - RANDOM_CHARS + 4).collect(),
            created_at: now,
        })
        .collect();
    NewPair {
        publishable,
        secret,
        stored,
    }
}

/// The role `key` stands for, if it is one of `stored` (and its prefix
/// matches that role). Every stored digest is compared, in constant time.
pub fn role_of<'a>(stored: &'a [OpaqueKey], key: &str) -> Option<&'a str> {
    if !looks_opaque(key) {
        return None;
    }
    let presented = digest(key);
    let mut found = None;
    for entry in stored {
        if bool::from(entry.sha256.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(entry.role.as_str());
        }
    }
    let expected = if key.starts_with(SECRET_PREFIX) {
        "service_role"
    } else {
        "anon"
    };
    found.filter(|role| *role == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_digest_and_role() {
        let pair = generate(1);
        assert!(pair.publishable.starts_with(PUBLISHABLE_PREFIX));
        assert!(pair.secret.starts_with(SECRET_PREFIX));
        assert_eq!(pair.publishable.len(), PUBLISHABLE_PREFIX.len() + 32);
        assert_eq!(role_of(&pair.stored, &pair.publishable), Some("anon"));
        assert_eq!(role_of(&pair.stored, &pair.secret), Some("service_role"));
        // Nothing stored holds a key.
        let stored = serde_json::to_string(&pair.stored).unwrap_or_default();
        assert!(!stored.contains(&pair.secret) && !stored.contains(&pair.publishable));
        // Another pair, a changed key, a swapped prefix: not found.
        let other = generate(2);
        assert_eq!(role_of(&pair.stored, &other.secret), None);
        let mut changed = pair.secret.clone();
        changed.pop();
        changed.push('!');
        assert_eq!(role_of(&pair.stored, &changed), None);
        let swapped = pair.secret.replacen(SECRET_PREFIX, PUBLISHABLE_PREFIX, 1);
        assert_eq!(role_of(&pair.stored, &swapped), None);
        assert_eq!(role_of(&pair.stored, "eyJhbGciOi"), None);
        assert_ne!(generate(3).secret, generate(3).secret);
    }
}
