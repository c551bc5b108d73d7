//! A tenant's `requests_per_second` quota: a token bucket for the requests
//! it serves, and a pace for the ones it refuses.
//!
//! Refusing is cheap but not free: accepting, parsing and answering a
//! request takes CPU that every tenant on the server shares. A client that
//! retries in a tight loop, ignoring `Retry-After`, would turn each
//! refusal straight into the next request and take a core with nothing but
//! 429s. So refusals are paced as well: up to the quota's rate of them per
//! second are answered at once, later ones wait their turn (one every
//! `1 / rate` seconds, at most [`MAX_HOLD`] each), and a tenant holds at most
//! [`MAX_HELD`] waiting refusals; beyond that a refusal is answered at once
//! and its connection closed. A closed-loop flood is thereby slowed to about
//! twice the quota, whatever its number of connections up to [`MAX_HELD`];
//! a client slightly over its quota still gets its 429 at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest a refusal waits before it is answered.
pub(super) const MAX_HOLD: Duration = Duration::from_secs(1);

/// Waiting refusals one tenant may hold (bounds the memory a flood pins).
pub(super) const MAX_HELD: usize = 1024;

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub(super) enum Admission {
    /// Serve it.
    Serve,
    /// Refuse it after `delay`; `hold` (when set) counts it as waiting until
    /// dropped.
    Refuse { delay: Duration, hold: Option<Held> },
    /// Refuse it at once and close the connection: too many refusals wait.
    RefuseAndClose,
}

/// One waiting refusal, counted in its tenant's bucket until dropped.
#[derive(Debug)]
pub(super) struct Held(Arc<AtomicUsize>);

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The quota's state for one tenant.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// When the next refusal is due (the pace of refusals; in the past when
    /// refusals may be answered at once).
    refusal_due: Instant,
    held: Arc<AtomicUsize>,
}

impl Bucket {
    /// A full bucket for `rate` requests per second (`rate` ≥ 1).
    pub(super) fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1) as f64;
        Bucket {
            rate,
            tokens: rate,
            last: now,
            refusal_due: now.checked_sub(MAX_HOLD).unwrap_or(now),
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Refusals waiting now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Decides on one request arriving at `now`.
    pub(super) fn admit(&mut self, now: Instant) -> Admission {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Admission::Serve;
        }
        let step = Duration::from_secs_f64(1.0 / self.rate);
        // A second's worth of refusals may be answered at once.
        let burst_start = now.checked_sub(MAX_HOLD).unwrap_or(now);
        let due = self.refusal_due.max(burst_start) + step;
        let delay = due.saturating_duration_since(now);
        if delay.is_zero() {
            self.refusal_due = due;
            return Admission::Refuse { delay, hold: None };
        }
        if self.held.fetch_add(1, Ordering::Relaxed) >= MAX_HELD {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Admission::RefuseAndClose;
        }
        let hold = Some(Held(self.held.clone()));
        if delay <= MAX_HOLD {
            self.refusal_due = due;
            Admission::Refuse { delay, hold }
        } else {
            // The pace is full for the next second: wait the longest, and
            // leave the pace where it is.
            Admission::Refuse {
                delay: MAX_HOLD,
                hold,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(admission: &Admission) -> Option<Duration> {
        match admission {
            Admission::Refuse { delay, .. } => Some(*delay),
            _ => None,
        }
    }

    #[test]
    fn serves_the_rate_then_refuses() {
        let now = Instant::now();
        let mut bucket = Bucket::new(5, now);
        for _ in 0..5 {
            assert_eq!(bucket.admit(now), Admission::Serve);
        }
        assert!(matches!(bucket.admit(now), Admission::Refuse { .. }));
        // A token a fifth of a second later.
        let later = now + Duration::from_millis(200);
        assert_eq!(bucket.admit(later), Admission::Serve);
        assert!(matches!(bucket.admit(later), Admission::Refuse { .. }));
    }

    #[test]
    fn a_seconds_worth_of_refusals_is_answered_at_once_then_paced() {
        let now = Instant::now() + Duration::from_secs(5);
        let mut bucket = Bucket::new(10, now);
        for _ in 0..10 {
            assert_eq!(bucket.admit(now), Admission::Serve);
        }
        // Ten refusals at once (the quota's rate)...
        for n in 0..10 {
            let admission = bucket.admit(now);
            assert_eq!(delay(&admission), Some(Duration::ZERO), "refusal {n}");
        }
        // ...then one every tenth of a second, held while they wait.
        let mut held = Vec::new();
        for n in 1..=10u32 {
            let admission = bucket.admit(now);
            let wait = delay(&admission).unwrap();
            let expected = Duration::from_millis(100) * n;
            assert!(
                wait.abs_diff(expected) < Duration::from_millis(1),
                "{n}: {wait:?}"
            );
            held.push(admission);
        }
        assert_eq!(bucket.held(), 10);
        // Beyond a second of pace: the longest wait, pace unchanged.
        let admission = bucket.admit(now);
        assert_eq!(delay(&admission), Some(MAX_HOLD));
        assert_eq!(bucket.held(), 11);
        drop(admission);
        drop(held);
        assert_eq!(bucket.held(), 0);
    }

    #[test]
    fn too_many_waiting_refusals_close_the_connection() {
        let now = Instant::now() + Duration::from_secs(5);
        let mut bucket = Bucket::new(1, now);
        assert_eq!(bucket.admit(now), Admission::Serve);
        assert!(matches!(
            bucket.admit(now),
            Admission::Refuse { hold: None, .. }
        ));
        let mut held = Vec::new();
        for _ in 0..MAX_HELD {
            let admission = bucket.admit(now);
            assert!(matches!(admission, Admission::Refuse { hold: Some(_), .. }));
            held.push(admission);
        }
        assert_eq!(bucket.admit(now), Admission::RefuseAndClose);
        held.pop();
        assert!(matches!(bucket.admit(now), Admission::Refuse { .. }));
    }

    #[test]
    fn a_closed_loop_flood_is_answered_at_about_twice_the_rate() {
        // 32 clients, each sending again as soon as it has its answer, for
        // ten seconds of simulated time.
        let start = Instant::now() + Duration::from_secs(5);
        let mut bucket = Bucket::new(200, start);
        let mut next: Vec<Instant> = vec![start; 32];
        let end = start + Duration::from_secs(10);
        let (mut served, mut refused) = (0u32, 0u32);
        loop {
            let (i, at) = next
                .iter()
                .enumerate()
                .min_by_key(|(_, at)| **at)
                .map(|(i, at)| (i, *at))
                .unwrap();
            if at >= end {
                break;
            }
            match bucket.admit(at) {
                Admission::Serve => {
                    served += 1;
                    next[i] = at + Duration::from_micros(100);
                }
                Admission::Refuse { delay, hold } => {
                    refused += 1;
                    drop(hold);
                    next[i] = at + delay + Duration::from_micros(100);
                }
                Admission::RefuseAndClose => unreachable!(),
            }
        }
        // 200 a second plus the first second's bursts.
        assert!((2_000..=2_201).contains(&served), "served {served}");
        assert!((2_000..=2_233).contains(&refused), "refused {refused}");
    }
}
