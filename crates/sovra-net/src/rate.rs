//! A per-tenant rate limit on request starts (GCRA: a token bucket with
//! burst `rate`). Pure: the caller passes the time and sleeps itself.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    burst: Duration,
    /// The theoretical arrival time of the next request.
    tat: Option<Instant>,
}

impl RateLimit {
    /// `per_second` starts a second, at most `per_second` at once.
    pub fn new(per_second: u32) -> RateLimit {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        RateLimit {
            interval,
            burst: interval * (per_second - 1),
            tat: None,
        }
    }

    /// Takes a slot at `now`: how long to wait before starting.
    pub fn take(&mut self, now: Instant) -> Duration {
        let tat = self.tat.map_or(now, |tat| tat.max(now));
        let wait = tat
            .saturating_duration_since(now)
            .saturating_sub(self.burst);
        self.tat = Some(tat + self.interval);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_spaces_requests() {
        let now = Instant::now();
        let mut limit = RateLimit::new(4);
        for _ in 0..4 {
            assert_eq!(limit.take(now), Duration::ZERO);
        }
        assert_eq!(limit.take(now), Duration::from_millis(250));
        assert_eq!(limit.take(now), Duration::from_millis(500));
        // A second later the bucket has refilled (in part).
        let later = now + Duration::from_secs(2);
        assert_eq!(limit.take(later), Duration::ZERO);
    }

    #[test]
    fn one_per_second_has_no_burst() {
        let now = Instant::now();
        let mut limit = RateLimit::new(1);
        assert_eq!(limit.take(now), Duration::ZERO);
        assert_eq!(limit.take(now), Duration::from_secs(1));
    }
}
