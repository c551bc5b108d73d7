//! When to try a failed request again: exponential back-off with jitter,
//! and the `Retry-After` header. Pure: time and randomness are passed in.

use std::time::Duration;

/// The delay before attempt `attempt + 1` after `attempt` failed (1-based):
/// `base · 2^(attempt-1)`, capped at `cap`, of which the upper half is
/// random ("equal jitter": never less than half the step, so retries of
/// many requests spread out without ever coming at once). `jitter` is in
/// `[0, 1)`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let step = base.saturating_mul(1u32 << exp).min(cap);
    let half = step / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// `Retry-After`: delay-seconds or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), relative to `now` (seconds since
/// the Unix epoch). A date in the past is no delay; anything else, `None`.
pub fn parse_retry_after(value: &str, now: i64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = parse_imf_fixdate(value)?;
    Some(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
}

/// Seconds since the epoch of an IMF-fixdate.
fn parse_imf_fixdate(value: &str) -> Option<i64> {
    let parts: Vec<&str> = value.split(' ').collect();
    let [weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    if !["Mon,", "Tue,", "Wed,", "Thu,", "Fri,", "Sat,", "Sun,"].contains(weekday) {
        return None;
    }
    let number = |s: &str, len: usize| -> Option<i64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let day = number(day, 2)?;
    let year = number(year, 4)?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let clock: Vec<&str> = time.split(':').collect();
    let [h, m, s] = clock.as_slice() else {
        return None;
    };
    let (h, m, s) = (number(h, 2)?, number(m, 2)?, number(s, 2)?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What an attempt's outcome means for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Finished: record the response.
    Done,
    /// Worth another attempt (timeouts, connection errors, 429, 5xx).
    Retry,
}

/// The verdict on an HTTP status.
pub fn status_verdict(status: u16) -> Verdict {
    if status == 429 || (500..=599).contains(&status) {
        Verdict::Retry
    } else {
        Verdict::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(1, base, cap, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(2, base, cap, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(3, base, cap, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(10, base, cap, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(u32::MAX, base, cap, 0.5), Duration::from_secs(45));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        // 1994-11-06T08:49:37Z
        let now = 784_111_777;
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", 0),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Tue, 29 Feb 2000 00:00:10 GMT", 951_782_400),
            Some(Duration::from_secs(10))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn which_statuses_are_retried() {
        assert_eq!(status_verdict(200), Verdict::Done);
        assert_eq!(status_verdict(404), Verdict::Done);
        assert_eq!(status_verdict(429), Verdict::Retry);
        assert_eq!(status_verdict(500), Verdict::Retry);
        assert_eq!(status_verdict(503), Verdict::Retry);
        assert_eq!(status_verdict(302), Verdict::Done);
    }

    proptest! {
        #[test]
        fn backoff_stays_within_half_step_and_step(attempt in 1u32..64, jitter in 0.0f64..1.0) {
            let base = Duration::from_millis(250);
            let cap = Duration::from_secs(300);
            let step = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(30)).min(cap);
            let delay = backoff(attempt, base, cap, jitter);
            prop_assert!(delay >= step / 2 && delay <= step);
        }

        #[test]
        fn retry_after_never_panics(value in "\\PC{0,40}", now: i64) {
            let _ = parse_retry_after(&value, now);
        }
    }
}
