//! Password hashing and rules.
//!
//! New hashes are argon2id with OWASP's parameters (19 MiB, 2 passes, one
//! lane). Hashes imported from Supabase (bcrypt `$2a$`/`$2b$`/`$2y$`)
//! verify, and are replaced by argon2id at the next successful sign-in.
//!
//! Hashing runs on its own fixed set of threads (never tokio's blocking
//! pool, which file transfers use), each with one argon2 memory buffer it
//! keeps for its life: after any burst of sign-ins the process holds
//! `threads × 19 MiB` of hashing memory, not one 19 MiB block per hash
//! retained by the allocator. Work waits in a bounded queue; when the
//! threads and the queue are full a request is refused at once with 429
//! instead of waiting without bound. A place in the queue is given back only
//! when its hash has finished (or, for a request cancelled before its turn,
//! when a thread reaches it and skips it), so cancelling requests cannot
//! queue more work than the queue holds.
//!
//! Passwords longer than 72 bytes are refused everywhere, as GoTrue does.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

use crate::error::{AuthError, AuthResult};

/// OWASP (2023) argon2id: m = 19 MiB, t = 2, p = 1.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const OUTPUT_LEN: usize = 32;
const SALT_LEN: usize = 16;

/// GoTrue's limit (bcrypt's input size), in bytes.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Refuses a password longer than [`MAX_PASSWORD_BYTES`] with GoTrue's error
/// (400 `validation_failed`).
pub fn check_length(password: &str) -> AuthResult<()> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::validation(format!(
            "Password cannot be longer than {MAX_PASSWORD_BYTES} characters"
        )));
    }
    Ok(())
}

fn params() -> Params {
    Params::new(MEMORY_KIB, PASSES, LANES, Some(OUTPUT_LEN)).unwrap_or_default()
}

/// Blocks in each thread's buffer: what the current parameters need.
fn buffer_blocks() -> usize {
    params().block_count()
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

type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// Counters shared with the hashing threads.
#[derive(Debug)]
struct Shared {
    /// Jobs queued or running.
    in_flight: AtomicUsize,
    /// Threads plus queue length.
    capacity: usize,
    /// Memory buffers allocated so far (at most one per thread).
    buffers: AtomicUsize,
}

/// Hashes and verifies passwords on a fixed set of threads with a bounded
/// queue. Dropping every clone stops the threads.
#[derive(Debug, Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    /// A hash to verify against when there is no user, so that an unknown
    /// email takes as long as a wrong password.
    decoy: Arc<str>,
}

impl Hasher {
    /// `threads` hashing threads (0: one per core) and room for `queue`
    /// more requests waiting.
    pub fn new(threads: usize, queue: usize) -> Hasher {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            in_flight: AtomicUsize::new(0),
            capacity: threads.saturating_add(queue),
            buffers: AtomicUsize::new(0),
        });
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = receiver.clone();
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sovra-hash-{index}"))
                .spawn(move || worker(&receiver, &shared));
            if let Err(err) = spawned {
                tracing::error!(error = %err, "cannot start a password hashing thread");
            }
        }
        Hasher {
            jobs,
            shared,
            decoy: decoy_hash().into(),
        }
    }

    /// Requests queued or being hashed now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Memory buffers the threads have allocated (never more than there are
    /// threads, however many hashes ran).
    pub fn buffers_allocated(&self) -> usize {
        self.shared.buffers.load(Ordering::SeqCst)
    }

    /// Runs `job` on a hashing thread. Refused with 429 when the threads and
    /// the queue are full. The place is given back by the thread when the job
    /// has finished, never by the caller: a cancelled caller does not free
    /// it early.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut [Block]) -> T + Send + 'static,
    ) -> AuthResult<T> {
        let shared = &*self.shared;
        let reserved = shared
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < shared.capacity).then_some(n + 1)
            });
        if reserved.is_err() {
            tracing::info!("password hashing queue full");
            return Err(AuthError::rate_limited(
                "over_request_rate_limit",
                "Request rate limit reached",
                1,
            ));
        }
        // Gives the place back when dropped: on the hashing thread, once the
        // job has finished (or panicked, or was skipped).
        let place = Place(self.shared.clone());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let boxed: Job = Box::new(move |blocks: &mut [Block]| {
            // Its caller went away before its turn: nothing to compute.
            if sender.is_closed() {
                drop(place);
                return;
            }
            let out = job(blocks);
            // Finished: the place is free before the caller hears back.
            drop(place);
            let _ = sender.send(out);
        });
        if self.jobs.send(boxed).is_err() {
            return Err(AuthError::internal());
        }
        receiver.await.map_err(|_| AuthError::internal())
    }

    /// An argon2id hash (PHC string) of `password`.
    pub async fn hash(&self, password: &str) -> AuthResult<String> {
        check_length(password)?;
        let password = password.to_owned();
        self.run(move |blocks| hash_with(password.as_bytes(), blocks))
            .await?
            .ok_or_else(AuthError::internal)
    }

    /// Checks `password` against `stored` (argon2 PHC or bcrypt). With no
    /// stored hash, checks against a decoy and answers `Wrong`.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> AuthResult<Checked> {
        check_length(password)?;
        let password = password.to_owned();
        let (stored, real) = match stored.filter(|s| !s.is_empty()) {
            Some(s) => (s.to_owned(), true),
            None => (self.decoy.to_string(), false),
        };
        let checked = self
            .run(move |blocks| verify_with(password.as_bytes(), &stored, blocks))
            .await?;
        Ok(if real { checked } else { Checked::Wrong })
    }

    #[cfg(test)]
    async fn run_test<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> AuthResult<T> {
        self.run(move |_| job()).await
    }
}

/// A reserved place among the threads and the queue.
struct Place(Arc<Shared>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One hashing thread: takes jobs until every [`Hasher`] clone is gone,
/// with one memory buffer allocated on first use and kept.
fn worker(receiver: &Mutex<mpsc::Receiver<Job>>, shared: &Shared) {
    let mut blocks: Vec<Block> = Vec::new();
    loop {
        let job = {
            let Ok(receiver) = receiver.lock() else {
                return;
            };
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if blocks.is_empty() {
            blocks = vec![Block::default(); buffer_blocks()];
            shared.buffers.fetch_add(1, Ordering::SeqCst);
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut blocks)));
        if outcome.is_err() {
            tracing::error!("a password hashing job panicked");
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

fn phc(salt: &[u8], output: &[u8]) -> String {
    format!(
        "$argon2id$v=19$m={MEMORY_KIB},t={PASSES},p={LANES}${}${}",
        b64(salt),
        b64(output)
    )
}

/// A well-formed argon2id hash of nothing anyone knows: verifying against it
/// costs what a real hash costs, and never succeeds.
fn decoy_hash() -> String {
    let mut salt = [0u8; SALT_LEN];
    let mut output = [0u8; OUTPUT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut output);
    phc(&salt, &output)
}

fn hash_with(password: &[u8], blocks: &mut [Block]) -> Option<String> {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let mut output = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
        .hash_password_into_with_memory(password, &salt, &mut output, blocks)
        .ok()?;
    Some(phc(&salt, &output))
}

/// The highest bcrypt cost accepted (2^14 rounds, about a second of one
/// core): each step doubles the work, and a cost-31 hash would hold a
/// hashing thread for days. Supabase hashes at cost 10.
pub const MAX_BCRYPT_COST: u32 = 14;

/// Why an imported bcrypt hash is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BcryptHashError {
    Malformed,
    TooCostly(u32),
}

impl std::fmt::Display for BcryptHashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BcryptHashError::Malformed => write!(f, "Invalid password hash: not a bcrypt hash"),
            BcryptHashError::TooCostly(cost) => write!(
                f,
                "Invalid password hash: bcrypt cost {cost} is above the maximum of {MAX_BCRYPT_COST}"
            ),
        }
    }
}

/// The cost of a bcrypt hash (`$2a$`/`$2b$`/`$2y$`, two-digit cost, 53
/// characters of salt and hash), if it is one and within
/// [`MAX_BCRYPT_COST`].
pub fn bcrypt_cost(hash: &str) -> Result<u32, BcryptHashError> {
    let bytes = hash.as_bytes();
    let shaped = bytes.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/');
    if !shaped {
        return Err(BcryptHashError::Malformed);
    }
    let cost = u32::from(bytes[4] - b'0') * 10 + u32::from(bytes[5] - b'0');
    if !(4..=31).contains(&cost) {
        return Err(BcryptHashError::Malformed);
    }
    if cost > MAX_BCRYPT_COST {
        return Err(BcryptHashError::TooCostly(cost));
    }
    Ok(cost)
}

fn verify_with(password: &[u8], stored: &str, blocks: &mut [Block]) -> Checked {
    if stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$") {
        // A hash over the cost cap (written by SQL, say) is never checked.
        if let Err(err) = bcrypt_cost(stored) {
            tracing::warn!(error = %err, "a stored bcrypt hash cannot be verified");
            return Checked::Wrong;
        }
        return match bcrypt::verify(password, stored) {
            Ok(true) => Checked::RightRehash,
            _ => Checked::Wrong,
        };
    }
    let Some((right, current)) = verify_argon2(password, stored, blocks) else {
        return Checked::Wrong;
    };
    match (right, current) {
        (false, _) => Checked::Wrong,
        (true, true) => Checked::Right,
        (true, false) => Checked::RightRehash,
    }
}

/// `(right, current parameters)`, or `None` for a hash that cannot be
/// checked (malformed, or needing more memory than a thread's buffer).
fn verify_argon2(password: &[u8], stored: &str, blocks: &mut [Block]) -> Option<(bool, bool)> {
    let parsed = PasswordHash::new(stored).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::V0x13,
    };
    let params = Params::try_from(&parsed).ok()?;
    if params.block_count() > blocks.len() {
        tracing::warn!(
            m_cost = params.m_cost(),
            "a stored argon2 hash needs more memory than the hashing buffer; it cannot be verified"
        );
        return None;
    }
    let expected = parsed.hash?;
    let salt = parsed.salt?;
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).ok()?;
    let current = algorithm == Algorithm::Argon2id
        && params.m_cost() >= MEMORY_KIB
        && params.t_cost() >= PASSES;
    let mut output = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut output, blocks)
        .ok()?;
    let right = bool::from(output.as_slice().ct_eq(expected.as_bytes()));
    Some((right, current))
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

    #[test]
    fn bcrypt_costs_are_capped() {
        let hash = |cost: &str| {
            format!("$2b${cost}$9ts0ZMPlQ3ppfgRSbLP8D.u8LIdtcbXFAJOXZXgy9GeYyjAsyO6fC")
        };
        assert_eq!(bcrypt_cost(&hash("04")), Ok(4));
        assert_eq!(bcrypt_cost(&hash("14")), Ok(MAX_BCRYPT_COST));
        assert_eq!(
            bcrypt_cost(&hash("15")),
            Err(BcryptHashError::TooCostly(15))
        );
        assert_eq!(
            bcrypt_cost(&hash("31")),
            Err(BcryptHashError::TooCostly(31))
        );
        for bad in [
            hash("03"),
            hash("32"),
            hash("x4"),
            "$2b$04$short".to_owned(),
            "$1$04$".to_owned(),
        ] {
            assert_eq!(bcrypt_cost(&bad), Err(BcryptHashError::Malformed), "{bad}");
        }
        let mut blocks = vec![Block::default(); 8];
        assert!(matches!(
            verify_with(b"password", &hash("31"), &mut blocks),
            Checked::Wrong
        ));
    }

    #[tokio::test]
    async fn argon2_round_trip_and_bcrypt_import() {
        let hasher = Hasher::new(2, 4);
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(
            hasher.verify("correct horse", Some(&hash)).await.unwrap(),
            Checked::Right
        );
        assert_eq!(
            hasher.verify("wrong", Some(&hash)).await.unwrap(),
            Checked::Wrong
        );
        // The argon2 crate's own verifier accepts our PHC strings.
        use argon2::password_hash::PasswordVerifier as _;
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        // And we accept its hashes; weaker parameters ask for a rehash.
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert_eq!(
            hasher.verify("pw", Some(&weak)).await.unwrap(),
            Checked::RightRehash
        );
        // What pgcrypto's crypt('password123', gen_salt('bf')) yields.
        let bcrypt = bcrypt::hash("password123", 4).unwrap();
        assert_eq!(
            hasher.verify("password123", Some(&bcrypt)).await.unwrap(),
            Checked::RightRehash
        );
        assert_eq!(
            hasher.verify("nope", Some(&bcrypt)).await.unwrap(),
            Checked::Wrong
        );
        assert_eq!(hasher.verify("x", None).await.unwrap(), Checked::Wrong);
        assert_eq!(
            hasher.verify("x", Some("garbage")).await.unwrap(),
            Checked::Wrong
        );
        // A hash needing more memory than the buffer is not computed.
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        assert_eq!(
            hasher.verify("x", Some(huge)).await.unwrap(),
            Checked::Wrong
        );
    }

    #[tokio::test]
    async fn a_real_hash_needing_more_memory_than_the_buffer_is_refused() {
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let real = |m_cost: u32| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m_cost, PASSES, LANES, None).unwrap(),
            )
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string()
        };
        let hasher = Hasher::new(1, 2);
        // Exactly the buffer's size: verified.
        let fits = real(MEMORY_KIB);
        assert_eq!(
            hasher.verify("correct horse", Some(&fits)).await.unwrap(),
            Checked::Right
        );
        // One MiB more, with the right password: refused (answered as a
        // wrong password, never computed in a bigger allocation), and
        // the thread keeps its one buffer.
        let bigger = real(MEMORY_KIB + 1024);
        assert_eq!(
            hasher.verify("correct horse", Some(&bigger)).await.unwrap(),
            Checked::Wrong
        );
        let mut blocks = vec![Block::default(); buffer_blocks()];
        assert_eq!(
            verify_argon2(b"correct horse", &bigger, &mut blocks),
            None,
            "refused before hashing, not a mismatch"
        );
        assert_eq!(
            verify_argon2(b"correct horse", &fits, &mut blocks),
            Some((true, true))
        );
        assert_eq!(hasher.buffers_allocated(), 1);
        // The thread is still there for the next hash.
        assert_eq!(
            hasher.verify("correct horse", Some(&fits)).await.unwrap(),
            Checked::Right
        );
    }

    #[tokio::test]
    async fn passwords_over_72_bytes_are_refused() {
        let hasher = Hasher::new(1, 1);
        let long = "a".repeat(73);
        for err in [
            hasher.hash(&long).await.unwrap_err(),
            hasher.verify(&long, None).await.unwrap_err(),
            check_length(&"é".repeat(37)).unwrap_err(),
        ] {
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(err.code, "validation_failed");
            assert_eq!(err.message, "Password cannot be longer than 72 characters");
        }
        assert!(check_length(&"a".repeat(72)).is_ok());
        assert_eq!(hasher.in_flight(), 0);
    }

    #[tokio::test]
    async fn buffers_are_reused() {
        let hasher = Hasher::new(2, 16);
        let hash = hasher.hash("pw").await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..12 {
            let hasher = hasher.clone();
            let hash = hash.clone();
            tasks.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    hasher.hash("pw").await.map(|_| ())
                } else {
                    hasher.verify("pw", Some(&hash)).await.map(|_| ())
                }
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert!(hasher.buffers_allocated() >= 1);
        assert!(
            hasher.buffers_allocated() <= 2,
            "{} buffers for 2 threads",
            hasher.buffers_allocated()
        );
    }

    /// Waits (without asserting how long) until nothing is in flight.
    async fn drained(hasher: &Hasher) {
        for _ in 0..10_000 {
            if hasher.in_flight() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("the hasher never drained");
    }

    #[tokio::test]
    async fn full_queue_refuses_and_cancelling_frees_nothing_early() {
        // One thread, one place in the queue: two jobs at most.
        let hasher = Hasher::new(1, 1);
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let blocking = hasher.clone();
        let running = tokio::spawn(async move {
            blocking
                .run_test(move || {
                    let _ = started_tx.send(());
                    let _ = gate.recv();
                })
                .await
        });
        started.await.unwrap();
        // The second job waits in the queue; its caller gives up.
        let queued = hasher.clone();
        let waiting = tokio::spawn(async move { queued.hash("pw").await });
        while hasher.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        // The running job is cancelled too: its place stays taken.
        running.abort();
        let _ = running.await;
        assert_eq!(hasher.in_flight(), 2);
        let err = hasher.hash("pw").await.unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code, "over_request_rate_limit");
        assert_eq!(err.retry_after, Some(1));
        let err = hasher.verify("pw", None).await.unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        // Only when the running job ends do the places come back.
        release.send(()).unwrap();
        drained(&hasher).await;
        assert!(hasher.hash("pw").await.is_ok());
        assert_eq!(hasher.in_flight(), 0);
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
