//! Cost of verifying one token in process, beside the cost of signing one
//! (the reference measured in the same run).
//!
//!   cargo bench -p sovra-jwt --bench verify

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use serde_json::{Map, Value, json};
use sovra_jwt::{KeySet, KeyStore};

fn per_op(iterations: u32, mut op: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        op();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        op();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() {
    let now = 1_800_000_000;
    let store = KeyStore::generate(now);
    let set = KeySet::new(&store, None, Some("authenticated".to_owned())).unwrap();
    let Value::Object(claims) = json!({
        "sub": "4b8a1a2e-6a3f-4f0e-9a59-1f1f3f2e0a11", "role": "authenticated", "aud": "authenticated",
        "email": "someone@example.com", "iat": now, "exp": now + 3600, "aal": "aal1",
        "app_metadata": {"provider": "email"}, "user_metadata": {}, "session_id": "b1d5f0f2-3a7b-4f3e-8d2a-6c1e9f0a7b11"
    }) else {
        unreachable!()
    };
    let claims: Map<String, Value> = claims;
    let token = set.sign(&claims).unwrap();
    let n = 100_000;
    let sign = per_op(n, || {
        black_box(set.sign(black_box(&claims)).unwrap());
    });
    let verify = per_op(n, || {
        black_box(set.verify(black_box(&token), now).unwrap());
    });
    println!("| operation ({n} iterations, one core) | µs per op |");
    println!("|---|---|");
    println!("| sign an access token (HS256, reference) | {sign:.2} |");
    println!("| verify an access token (HS256, claims checked) | {verify:.2} |");
}
