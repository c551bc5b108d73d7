//! Requests per tenant over the last minutes, for the dashboard's usage
//! pictures: per tenant a ring of [`BUCKETS`] buckets of
//! [`BUCKET_SECONDS`] each (requests, 4xx, 5xx), counted by
//! `observe::track` for every request it sees. Time is passed in, so the
//! window is tested without waiting. A tenant takes about 1.5 KiB; one
//! that had no request for a whole window is dropped when the window is
//! read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Seconds per bucket.
pub const BUCKET_SECONDS: u64 = 10;
/// Buckets kept: a window of ten minutes.
pub const BUCKETS: usize = 60;

/// One bucket: its number (seconds / [`BUCKET_SECONDS`]) and its counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    number: u64,
    counts: Counts,
}

/// Requests, client errors (4xx) and server errors (5xx).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    pub client_errors: u64,
    pub server_errors: u64,
}

#[derive(Debug)]
struct Ring {
    buckets: [Bucket; BUCKETS],
    last: u64,
}

/// The requests of every tenant, per bucket.
#[derive(Debug, Default)]
pub struct Traffic {
    tenants: RwLock<HashMap<String, Arc<Mutex<Ring>>>>,
}

impl Traffic {
    /// Counts a request of `tenant` answered with `status` at `now`
    /// (seconds since the epoch).
    pub fn record(&self, tenant: &str, status: u16, now: u64) {
        let ring = self
            .tenants
            .read()
            .ok()
            .and_then(|tenants| tenants.get(tenant).cloned());
        let ring = match ring {
            Some(ring) => ring,
            None => match self.tenants.write() {
                Ok(mut tenants) => tenants
                    .entry(tenant.to_owned())
                    .or_insert_with(|| {
                        Arc::new(Mutex::new(Ring {
                            buckets: [Bucket::default(); BUCKETS],
                            last: now,
                        }))
                    })
                    .clone(),
                Err(_) => return,
            },
        };
        let number = now / BUCKET_SECONDS;
        let Ok(mut ring) = ring.lock() else {
            return;
        };
        ring.last = ring.last.max(now);
        let bucket = &mut ring.buckets[slot(number)];
        if bucket.number != number {
            *bucket = Bucket {
                number,
                counts: Counts::default(),
            };
        }
        bucket.counts.requests += 1;
        match status {
            400..=499 => bucket.counts.client_errors += 1,
            500.. => bucket.counts.server_errors += 1,
            _ => {}
        }
    }

    /// The window of `tenant` at `now`: [`BUCKETS`] counts, oldest first,
    /// the last one the bucket `now` is in (zeros where it had none).
    pub fn window(&self, tenant: &str, now: u64) -> Vec<Counts> {
        let current = now / BUCKET_SECONDS;
        let ring = self
            .tenants
            .read()
            .ok()
            .and_then(|tenants| tenants.get(tenant).cloned());
        let buckets = ring
            .and_then(|ring| ring.lock().ok().map(|ring| ring.buckets))
            .unwrap_or([Bucket::default(); BUCKETS]);
        (0..BUCKETS as u64)
            .rev()
            .map(|back| {
                let number = current.saturating_sub(back);
                let bucket = buckets[slot(number)];
                if bucket.number == number && current >= back {
                    bucket.counts
                } else {
                    Counts::default()
                }
            })
            .collect()
    }

    /// Forgets the tenants without a request in the window before `now`.
    pub fn sweep(&self, now: u64) {
        let span = BUCKET_SECONDS * BUCKETS as u64;
        if let Ok(mut tenants) = self.tenants.write() {
            tenants.retain(|_, ring| {
                ring.lock()
                    .is_ok_and(|ring| ring.last.saturating_add(span) > now)
            });
        }
    }

    /// Tenants held.
    pub fn len(&self) -> usize {
        self.tenants.read().map_or(0, |tenants| tenants.len())
    }

    /// Whether no tenant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn slot(number: u64) -> usize {
    usize::try_from(number % BUCKETS as u64).unwrap_or(0)
}

/// This process's traffic (every server in it shares it, as they share
/// the request log and the metrics).
pub fn traffic() -> &'static Traffic {
    static TRAFFIC: OnceLock<Traffic> = OnceLock::new();
    TRAFFIC.get_or_init(Traffic::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_per_tenant_and_bucket_over_the_window() {
        let traffic = Traffic::default();
        let start = 1_000_000;
        traffic.record("a", 200, start);
        traffic.record("a", 404, start + 1);
        traffic.record("a", 503, start + 2);
        traffic.record("a", 200, start + BUCKET_SECONDS);
        traffic.record("b", 500, start);
        let window = traffic.window("a", start + BUCKET_SECONDS);
        assert_eq!(window.len(), BUCKETS);
        assert_eq!(
            window[BUCKETS - 2],
            Counts {
                requests: 3,
                client_errors: 1,
                server_errors: 1
            }
        );
        assert_eq!(window[BUCKETS - 1].requests, 1);
        assert_eq!(window.iter().map(|c| c.requests).sum::<u64>(), 4);
        assert_eq!(traffic.window("b", start)[BUCKETS - 1].server_errors, 1);
        assert!(
            traffic
                .window("none", start)
                .iter()
                .all(|c| *c == Counts::default())
        );
        // A bucket's slot is reused a window later: the three requests of
        // `start`'s bucket are gone, the one 10 s after it is the oldest
        // bucket of the window.
        let later = start + BUCKET_SECONDS * BUCKETS as u64;
        traffic.record("a", 200, later);
        let window = traffic.window("a", later);
        assert_eq!(window[0].requests, 1);
        assert_eq!(window[BUCKETS - 1].requests, 1);
        assert_eq!(window.iter().map(|c| c.requests).sum::<u64>(), 2);
        // Read much later, nothing of it is in the window.
        let much_later = later + BUCKET_SECONDS * BUCKETS as u64 * 3;
        assert!(
            traffic
                .window("a", much_later)
                .iter()
                .all(|c| c.requests == 0)
        );
        // Idle tenants are swept.
        assert_eq!(traffic.len(), 2);
        traffic.sweep(later + 1);
        assert_eq!(traffic.len(), 1);
        traffic.sweep(much_later);
        assert!(traffic.is_empty());
    }
}
