//! Cost of evaluating one `postgres_changes` filter against a changed row,
//! per operator, beside `eq` (the reference, measured in the same rounds;
//! the rounds interleave the operators so that noise from other processes
//! spreads over all of them). The feed evaluates a channel's filters once
//! per change it may want.
//!
//!   cargo bench -p sovra-realtime-proto --bench filter

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::Instant;

use sovra_realtime_proto::filter::Filter;

fn per_op(iterations: u32, filter: &Filter, value: &str) -> f64 {
    let row = |_: &str| Some((Some(value), "text"));
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(black_box(filter).matches(row));
    }
    started.elapsed().as_secs_f64() * 1e9 / f64::from(iterations)
}

fn main() {
    // A 60-character value, as a title or a short message would be.
    let value = "Meeting notes: quarterly planning with the platform team 2026";
    let cases = [
        ("eq (reference)", "body=eq.Meeting notes"),
        ("like, prefix", "body=like.Meeting%"),
        ("like, infix", "body=like.%platform%"),
        ("ilike, infix", "body=ilike.%PLATFORM%"),
        ("match", "body=match.plat(form|ypus)"),
        ("imatch", "body=imatch.^meeting.*2026$"),
        ("isdistinct", "body=isdistinct.x"),
    ];
    let filters: Vec<Filter> = cases
        .iter()
        .map(|(_, f)| Filter::parse(f).unwrap())
        .collect();
    let (rounds, n) = (10, 100_000);
    let mut totals = vec![0.0; cases.len()];
    for filter in &filters {
        per_op(n / 10, filter, value); // warm up
    }
    for _ in 0..rounds {
        for (i, filter) in filters.iter().enumerate() {
            totals[i] += per_op(n, filter, value);
        }
    }
    println!(
        "| filter on a 60-character text ({rounds} interleaved rounds of {n}, one core) | ns per row |"
    );
    println!("|---|---|");
    for ((name, text), total) in cases.iter().zip(totals) {
        println!("| {name}: `{text}` | {:.0} |", total / f64::from(rounds));
    }
}
