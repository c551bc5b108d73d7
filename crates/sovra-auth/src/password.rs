//! Password hashing and rules.
//!
//! New hashes are argon2id with OWASP's parameters (19 MiB, 2 passes, one
//! lane). Hashes imported from Supabase (bcrypt `$2a$`/`$2b$`/`$2y$`)
//! verify, and are replaced by argon2id at the next successful sign-in.
//! Hashing runs on the blocking pool behind a semaphore, so a burst of
//! sign-ins waits its turn instead of taking every thread.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP (2023) argon2id: m = 19 MiB, t = 2, p = 1.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// What checking a password found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Wrong,
    Right,
    /// Right, and the stored hash should be replaced (bcrypt or weaker
    /// argon2 parameters).
    RightRehash,
}

/// Hashes and verifies passwords on a bounded pool.
#[derive(Debug, Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A hash to verify against when there is no user, so that an unknown
    /// email takes as long as a wrong password.
    decoy: Arc<str>,
}

impl Hasher {
    /// At most `concurrency` hashes at once (0: one per core).
    pub fn new(concurrency: usize) -> Hasher {
        let concurrency = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        } else {
            concurrency
        };
        Hasher {
            permits: Arc::new(Semaphore::new(concurrency)),
            decoy: hash_now(&crate::crypto::random_alnum(24))
                .unwrap_or_default()
                .into(),
        }
    }

    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(job).await.ok()
    }

    /// An argon2id hash (PHC string) of `password`.
    pub async fn hash(&self, password: &str) -> Option<String> {
        let password = password.to_owned();
        self.run(move || hash_now(&password)).await.flatten()
    }

    /// Checks `password` against `stored` (argon2 PHC or bcrypt). With no
    /// stored hash, checks against a decoy and answers `Wrong`.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Checked {
        let password = password.to_owned();
        let (stored, real) = match stored.filter(|s| !s.is_empty()) {
            Some(s) => (s.to_owned(), true),
            None => (self.decoy.to_string(), false),
        };
        let checked = self
            .run(move || verify_now(&password, &stored))
            .await
            .unwrap_or(Checked::Wrong);
        if real { checked } else { Checked::Wrong }
    }
}

fn hash_now(password: &str) -> Option<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

fn verify_now(password: &str, stored: &str) -> Checked {
    if stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$") {
        return match bcrypt::verify(password, stored) {
            Ok(true) => Checked::RightRehash,
            _ => Checked::Wrong,
        };
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Checked::Wrong;
    };
    // Verify with the parameters in the hash itself.
    if Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Checked::Wrong;
    }
    let current = parsed.algorithm.as_str() == "argon2id"
        && Params::try_from(&parsed)
            .is_ok_and(|p| p.m_cost() >= MEMORY_KIB && p.t_cost() >= PASSES);
    if current {
        Checked::Right
    } else {
        Checked::RightRehash
    }
}

/// Password rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub min_length: usize,
    /// Character classes that must all appear.
    pub required: Vec<CharClass>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharClass {
    Lower,
    Upper,
    Letter,
    Digit,
    Symbol,
}

impl CharClass {
    fn matches(self, c: char) -> bool {
        match self {
            CharClass::Lower => c.is_lowercase(),
            CharClass::Upper => c.is_uppercase(),
            CharClass::Letter => c.is_alphabetic(),
            CharClass::Digit => c.is_ascii_digit(),
            CharClass::Symbol => !c.is_alphanumeric() && !c.is_whitespace(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CharClass::Lower => "a lower-case letter",
            CharClass::Upper => "an upper-case letter",
            CharClass::Letter => "a letter",
            CharClass::Digit => "a digit",
            CharClass::Symbol => "a symbol",
        }
    }
}

impl Policy {
    /// Parses Supabase's dashboard choices: `""`, `letters_digits`,
    /// `lower_upper_letters_digits`, `lower_upper_letters_digits_symbols`.
    pub fn parse(min_length: usize, required: &str) -> Result<Policy, String> {
        let required = match required.trim() {
            "" => vec![],
            "letters_digits" => vec![CharClass::Letter, CharClass::Digit],
            "lower_upper_letters_digits" => {
                vec![CharClass::Lower, CharClass::Upper, CharClass::Digit]
            }
            "lower_upper_letters_digits_symbols" => vec![
                CharClass::Lower,
                CharClass::Upper,
                CharClass::Digit,
                CharClass::Symbol,
            ],
            other => return Err(format!("unknown password rule {other:?}")),
        };
        Ok(Policy {
            min_length: min_length.max(1),
            required,
        })
    }

    /// `Ok` or the message and the reasons (`length`, `characters`).
    pub fn check(&self, password: &str) -> Result<(), (String, Vec<&'static str>)> {
        let mut reasons = Vec::new();
        let mut messages = Vec::new();
        if password.chars().count() < self.min_length {
            reasons.push("length");
            messages.push(format!(
                "Password should be at least {} characters.",
                self.min_length
            ));
        }
        let missing: Vec<&str> = self
            .required
            .iter()
            .filter(|class| !password.chars().any(|c| class.matches(c)))
            .map(|class| class.describe())
            .collect();
        if !missing.is_empty() {
            reasons.push("characters");
            messages.push(format!("Password should contain {}.", missing.join(", ")));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err((messages.join(" "), reasons))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_round_trip_and_bcrypt_import() {
        let hasher = Hasher::new(2);
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(
            hasher.verify("correct horse", Some(&hash)).await,
            Checked::Right
        );
        assert_eq!(hasher.verify("wrong", Some(&hash)).await, Checked::Wrong);
        // What pgcrypto's crypt('password123', gen_salt('bf')) yields.
        let bcrypt = bcrypt::hash("password123", 4).unwrap();
        assert_eq!(
            hasher.verify("password123", Some(&bcrypt)).await,
            Checked::RightRehash
        );
        assert_eq!(hasher.verify("nope", Some(&bcrypt)).await, Checked::Wrong);
        assert_eq!(hasher.verify("x", None).await, Checked::Wrong);
        assert_eq!(hasher.verify("x", Some("garbage")).await, Checked::Wrong);
    }

    #[test]
    fn policy() {
        let p = Policy::parse(8, "lower_upper_letters_digits").unwrap();
        assert!(p.check("Abcdefg1").is_ok());
        let (msg, reasons) = p.check("abc").unwrap_err();
        assert_eq!(reasons, vec!["length", "characters"]);
        assert!(msg.contains("at least 8"));
        assert!(Policy::parse(6, "bogus").is_err());
        assert!(Policy::parse(6, "").unwrap().check("123456").is_ok());
    }
}
