//! Fuzz targets of the schedule parser: arbitrary text and grammar-shaped
//! noise never panic, and for every schedule that parses, `next_after`
//! agrees with a second-by-second (or minute-by-minute) search through
//! `fires_at`.
//!
//! `SOVRA_FUZZ_CASES` sets the number of cases per target (default 256).

use proptest::prelude::*;

use crate::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces that schedules are made of, glued at random.
fn noise() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("*".to_owned()),
        Just("/".to_owned()),
        Just("-".to_owned()),
        Just(",".to_owned()),
        Just(" ".to_owned()),
        Just("\t".to_owned()),
        Just("$".to_owned()),
        Just("@daily".to_owned()),
        Just("seconds".to_owned()),
        Just("mon".to_owned()),
        Just("jan".to_owned()),
        (0u32..100).prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|parts| parts.concat())
}

/// A valid five-field schedule.
fn schedule() -> impl Strategy<Value = String> {
    fn item(low: u32, high: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            (1..=high.max(1)).prop_map(|s| format!("*/{s}")),
            (low..=high).prop_map(|v| v.to_string()),
            (low..=high, low..=high, 1u32..5).prop_map(|(a, b, s)| {
                let (a, b) = if a <= b { (a, b) } else { (b, a) };
                format!("{a}-{b}/{s}")
            }),
        ]
    }
    fn list(low: u32, high: u32) -> impl Strategy<Value = String> {
        prop::collection::vec(item(low, high), 1..3).prop_map(|items| items.join(","))
    }
    (
        list(0, 59),
        list(0, 23),
        list(1, 31),
        list(1, 12),
        list(0, 7),
    )
        .prop_map(|(a, b, c, d, e)| format!("{a} {b} {c} {d} {e}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_parse_never_panics(text in any::<String>()) {
        let _ = parse(&text);
    }

    #[test]
    fn fuzz_parse_noise(text in noise(), after in 0i64..4_000_000_000) {
        if let Ok(schedule) = parse(&text)
            && let Some(next) = schedule.next_after(after)
        {
            prop_assert!(next > after);
            prop_assert!(schedule.fires_at(next));
        }
    }

    #[test]
    fn fuzz_next_after_agrees_with_search(text in schedule(), after in 0i64..4_000_000_000) {
        let schedule = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let next = schedule.next_after(after);
        // Search minute by minute over three days.
        let mut t = (after.div_euclid(60) + 1) * 60;
        let mut found = None;
        while t <= after + 3 * 86_400 {
            if schedule.fires_at(t) {
                found = Some(t);
                break;
            }
            t += 60;
        }
        match found {
            Some(t) => prop_assert_eq!(next, Some(t), "{}", text),
            None => prop_assert!(next.is_none_or(|n| n > after + 3 * 86_400), "{}", text),
        }
    }

    #[test]
    fn fuzz_seconds_agree_with_search(n in 1u32..60, after in 0i64..4_000_000_000) {
        let schedule = parse(&format!("{n} seconds")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let next = schedule.next_after(after).ok_or_else(|| TestCaseError::fail("none"))?;
        let mut t = after + 1;
        while !schedule.fires_at(t) {
            t += 1;
        }
        prop_assert_eq!(next, t);
    }
}
